"""The emails' words: Jinja2 templates, built in or from ``--templates DIR``.

Each kind of email (``verification``, ``reminder``, ``resend``) has three
templates: ``KIND.subject.txt``, ``KIND.txt`` and ``KIND.html``. A file in the
operator's directory replaces the built-in one of the same name; a file it
lacks falls back to the built-in one (the search path is that directory,
then the package's ``templates/``, so a custom template may also include or
extend the built-in ``_layout.html``, or a replacement of it).

Templates see only ``product``, ``name``, ``email``, ``link`` and
``expiresAt``; any other name is an error, not an empty string. They run in
Jinja2's sandbox, and HTML templates escape every value unless marked safe,
so a name like ``<img src=x onerror=...>`` shows as text. Every template is
compiled and rendered with sample values when the server starts: a broken
one stops the start with its file and line, instead of failing the first
signup hours later.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "templates"
KINDS = ("verification", "reminder", "resend")
PARTS = ("subject.txt", "txt", "html")
DEFAULT_PRODUCT = "userflow"

#: What every template is rendered with at start; hostile on purpose, so that
#: the check also exercises escaping.
SAMPLE = {
    "name": "Ann <Sample> O'Neil & Co",
    "email": "ann.sample@example.com",
    "link": "https://signup.example.com/verify?token=" + "A" * 43,
    "expiresAt": "1 January 2030, 12:00 UTC",
}


class TemplateError(ValueError):
    """A template that cannot be used: the message names the file and line."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def expiry_text(moment: datetime) -> str:
    """How an email states when its link stops working: ``3 December 2026, 14:05 UTC``."""
    utc = moment.astimezone(timezone.utc)
    return f"{utc.day} {utc:%B %Y}, {utc:%H:%M} UTC"


def one_line(text: str) -> str:
    """A subject as one line: line breaks and runs of blanks become one space."""
    return " ".join(text.split())


class EmailTemplates:
    """The nine templates, compiled and checked once; ``render`` fills one kind of email."""

    def __init__(self, product: str = DEFAULT_PRODUCT, directory: str | Path | None = None) -> None:
        self.product = product
        self.directory = Path(directory) if directory else None
        search = [BUILTIN_DIR]
        if self.directory is not None:
            if not self.directory.is_dir():
                raise TemplateError(f"templates: {self.directory} is not a directory")
            search.insert(0, self.directory)
        self._env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(path) for path in search]),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,  # a misspelt variable fails the start-up check
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # read once at start: an edit takes effect at the next start, checked
        )
        self._templates = {(kind, part): self._load(f"{kind}.{part}") for kind in KINDS for part in PARTS}
        for kind in KINDS:
            self._check(kind)
        self._note_strays()

    def _path(self, name: str) -> Path:
        if self.directory is not None and (self.directory / name).is_file():
            return self.directory / name
        return BUILTIN_DIR / name

    def _load(self, name: str) -> jinja2.Template:
        try:
            return self._env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template {exc.filename or self._path(name)}, line {exc.lineno}: {exc.message}") from None
        except jinja2.TemplateNotFound as exc:  # an {% include %} or {% extends %} of a missing file
            raise TemplateError(f"template {self._path(name)}: no template named {exc.name!r}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"template {self._path(name)}: cannot read it ({exc})") from None

    def _check(self, kind: str) -> None:
        rendered = self.render(kind, **SAMPLE)
        if not rendered.subject:
            raise TemplateError(f"template {self._path(f'{kind}.subject.txt')}: the subject is empty")

    def _note_strays(self) -> None:
        """A misspelt file name would be silently unused: say so in the log."""
        if self.directory is None:
            return
        expected = {f"{kind}.{part}" for kind in KINDS for part in PARTS}
        custom = sorted(p.name for p in self.directory.iterdir() if p.is_file())
        used = [name for name in custom if name in expected]
        log.info("email templates: %d of %d from %s, the rest built in", len(used), len(expected), self.directory)
        for name in custom:
            if name not in expected and not name.startswith("_"):
                log.warning("email templates: %s is not a template name (KIND.subject.txt, KIND.txt or KIND.html "
                            "for %s); it is used only if another template includes it", name, ", ".join(KINDS))

    def render(self, kind: str, *, name: str, email: str, link: str, expiresAt: str) -> Rendered:  # noqa: N803 - the templates' name
        values = {"product": self.product, "name": name, "email": email, "link": link, "expiresAt": expiresAt}
        subject, text, html = (self._render(kind, part, values) for part in PARTS)
        return Rendered(one_line(subject), text, html)

    def text(self, kind: str, *, name: str, email: str, link: str, expiresAt: str) -> str:  # noqa: N803
        """The plain-text part alone (the outbox shows it)."""
        values = {"product": self.product, "name": name, "email": email, "link": link, "expiresAt": expiresAt}
        return self._render(kind, "txt", values)

    def _render(self, kind: str, part: str, values: Mapping[str, Any]) -> str:
        template = self._templates[(kind, part)]
        try:
            return template.render(values)
        except Exception as exc:  # noqa: BLE001 - any failure names its template and line
            raise TemplateError(f"template {_where(exc, template)}: {type(exc).__name__}: {exc}") from None


def _where(exc: BaseException, template: jinja2.Template) -> str:
    """The template file and line where ``exc`` arose (Jinja2 rewrites tracebacks to template lines)."""
    if isinstance(exc, jinja2.TemplateSyntaxError) and exc.filename:
        return f"{exc.filename}, line {exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith((".txt", ".html"))]
    if frames:
        return f"{frames[-1].filename}, line {frames[-1].lineno}"
    return str(template.filename)


_BUILTIN: EmailTemplates | None = None


def builtin() -> EmailTemplates:
    """The built-in templates for the default product, compiled once per process."""
    global _BUILTIN
    if _BUILTIN is None:
        _BUILTIN = EmailTemplates()
    return _BUILTIN
