"""Branded emails (SPEC section 8): the built-in templates, a directory replacing them, and the start-up check."""

from __future__ import annotations

import email
import logging
from datetime import datetime, timezone
from email import policy
from pathlib import Path

import pytest

from tests.helpers import epoch
from tests.http_helpers import MakeClient, get_json, outbox_of, signup, step_of, wait_for, wait_run
from tests.server import Server
from tests.smtp_server import SmtpServer
from tests.test_exposure import userflow
from userflow.actors.signup.templates import KINDS, SAMPLE, EmailTemplates, TemplateError, expiry_text


@pytest.fixture
def backend() -> str:
    """The data dir only: this module's subject is not what is stored, one store is enough."""
    return "files"

HOSTILE = "<img src=x onerror=alert(1)>"
VALUES = {"name": "Ann Lee", "email": "ann@example.com", "link": "https://signup.example.com/verify?token=T", "expiresAt": "3 December 2026, 14:05 UTC"}


@pytest.mark.parametrize("kind", KINDS)
def test_each_builtin_email_gives_product_person_link_and_expiry(kind: str) -> None:
    rendered = EmailTemplates("Acme").render(kind, **VALUES)
    assert "Acme" in rendered.subject and "\n" not in rendered.subject
    for part in (rendered.text, rendered.html):
        for value in ("Acme", "Ann Lee", "ann@example.com", VALUES["link"], VALUES["expiresAt"]):
            assert value in part, (kind, value)
    assert rendered.html.count(f'href="{VALUES["link"]}"') == 2  # the button and the plain link
    assert "<style" not in rendered.html and "<img" not in rendered.html and "src=" not in rendered.html


def test_html_escapes_every_value_and_plain_text_keeps_it_as_typed() -> None:
    rendered = EmailTemplates(f"{HOSTILE} & Co").render("verification", **{**VALUES, "name": HOSTILE})
    assert HOSTILE not in rendered.html
    assert "&lt;img src=x onerror=alert(1)&gt;" in rendered.html
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; Co" in rendered.html
    assert f"Hi {HOSTILE}," in rendered.text
    assert rendered.subject == f"Confirm your email address for {HOSTILE} & Co"


def test_a_file_in_the_directory_replaces_only_its_own_template(tmp_path: Path) -> None:
    (tmp_path / "reminder.subject.txt").write_text("Still there, {{ name }}?\n")
    (tmp_path / "verification.txt").write_text("Welcome to {{ product }}: {{ link }} (until {{ expiresAt }})\n")
    custom, builtin = EmailTemplates("Acme", tmp_path), EmailTemplates("Acme")
    reminder = custom.render("reminder", **VALUES)
    assert reminder.subject == "Still there, Ann Lee?"
    assert (reminder.text, reminder.html) == (builtin.render("reminder", **VALUES).text, builtin.render("reminder", **VALUES).html)
    verification = custom.render("verification", **VALUES)
    assert verification.text == f"Welcome to Acme: {VALUES['link']} (until {VALUES['expiresAt']})\n"
    assert verification.subject == builtin.render("verification", **VALUES).subject
    assert custom.render("resend", **VALUES) == builtin.render("resend", **VALUES)


def test_a_custom_template_may_extend_the_builtin_layout(tmp_path: Path) -> None:
    (tmp_path / "verification.html").write_text(
        '{% extends "_layout.html" %}{% block heading %}Welcome aboard{% endblock %}'
        "{% block intro %}One click for {{ name }}.{% endblock %}"
    )
    html = EmailTemplates("Acme", tmp_path).render("verification", **{**VALUES, "name": HOSTILE}).html
    assert "Welcome aboard" in html and "One click for &lt;img" in html and "Confirm my email address" in html


def test_a_subject_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "verification.subject.txt").write_text("Hello\n\n  {{ name }}\r\nBcc: eve@example.com\n")
    assert EmailTemplates(directory=tmp_path).render("verification", **VALUES).subject == "Hello Ann Lee Bcc: eve@example.com"


BROKEN = [
    pytest.param("verification.html", "<p>\n{% if name %}\n<b>{{ name }}</b>\n", 3, "Unexpected end of template", id="syntax"),
    pytest.param("reminder.txt", "Hi {{ name }},\n{{ nmae }}\n", 2, "'nmae' is undefined", id="undefined-variable"),
    pytest.param("resend.html", "<p>\n{{ name.__class__.__mro__ }}</p>\n", 2, "SecurityError", id="sandbox"),
    pytest.param("verification.txt", "one\ntwo\n{{ 1 // 0 }}\n", 3, "ZeroDivisionError", id="runtime-error"),
    pytest.param("resend.subject.txt", "{# nothing #}\n", None, "the subject is empty", id="empty-subject"),
    pytest.param("reminder.html", '{% include "missing.html" %}\n', None, "missing.html", id="include-missing"),
]


@pytest.mark.parametrize(("name", "source", "line", "why"), BROKEN)
def test_a_broken_template_is_refused_naming_its_file_and_line(tmp_path: Path, name: str, source: str, line: int | None, why: str) -> None:
    (tmp_path / name).write_text(source)
    with pytest.raises(TemplateError) as refused:
        EmailTemplates(directory=tmp_path)
    message = str(refused.value)
    assert str(tmp_path / name) in message and why in message, message
    if line is not None:
        assert f"line {line}:" in message, message


def test_a_templates_path_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="is not a directory"):
        EmailTemplates(directory=tmp_path / "nowhere")


def test_a_misspelt_file_name_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "verfication.html").write_text("<p>typo</p>")
    (tmp_path / "_footer.html").write_text("<p>a partial</p>")
    with caplog.at_level(logging.INFO, logger="userflow.actors.signup.templates"):
        EmailTemplates(directory=tmp_path)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "verfication.html is not a template name" in warned[0]


def test_the_sample_values_are_hostile() -> None:
    assert "<" in SAMPLE["name"] and "&" in SAMPLE["name"]  # so the start-up check exercises escaping


def test_expiry_reads_in_utc_to_the_minute() -> None:
    moment = datetime(2026, 12, 3, 14, 5, 59, tzinfo=timezone.utc)
    assert expiry_text(moment) == "3 December 2026, 14:05 UTC"


# -- the server ----------------------------------------------------------------------------------


def test_serve_refuses_a_broken_template_in_one_line_with_exit_2(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "verification.html").write_text("<p>Hi {{ name }}</p>\n<p>{{ link }</p>\n")
    for done in (
        userflow("serve", "--port", "0", "--data-dir", str(tmp_path / "d1"), "--templates", str(templates)),
        userflow("serve", "--port", "0", "--data-dir", str(tmp_path / "d2"), env={"USERFLOW_TEMPLATES": str(templates)}),
    ):
        assert done.returncode == 2, done
        lines = done.stderr.splitlines()
        assert "Traceback" not in done.stderr and lines[-1].startswith("userflow: "), done.stderr
        assert [line for line in lines if line.startswith("userflow: ")] == lines[-1:]
        assert f"{templates / 'verification.html'}, line 2" in lines[-1], lines[-1]
    missing = userflow("serve", "--port", "0", "--data-dir", str(tmp_path / "d3"), "--templates", str(tmp_path / "none"))
    assert missing.returncode == 2 and missing.stderr.splitlines()[-1].startswith("userflow: templates: "), missing.stderr


def test_serve_sends_branded_email_from_the_templates_directory(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "verification.subject.txt").write_text("{{ name }}, welcome to {{ product }}\n")
    with SmtpServer() as smtp:
        server = Server(
            str(tmp_path / "data"), "--smtp-url", smtp.url, "--templates", str(templates), env={"USERFLOW_PRODUCT_NAME": "Acme Café"}
        ).start()
        try:
            status, _ = server.request("POST", "/api/signup", {"email": "zoe@example.com", "name": "Zoë Łukasz"})
            assert status == 202
            [received] = smtp.handler.wait_for(1)
        finally:
            server.stop()
    message = email.message_from_bytes(received.as_bytes(), policy=policy.default)
    assert message["Subject"] == "Zoë Łukasz, welcome to Acme Café"
    text, html = (part.get_content() for part in message.iter_parts())
    assert "Thanks for signing up for Acme Café" in text and "Acme Café" in html


async def test_every_email_of_a_run_states_one_expiry_no_later_than_its_deadline(make_client: MakeClient) -> None:
    client = await make_client(verify_ttl=3600, reminder_after=1, product_name="Acme")
    accepted = await signup(client, "ann@example.com", "Ann Lee")
    run_id, user_id = accepted["workflowId"], accepted["userId"]
    waiting = await wait_run(client, run_id, "WAITING")
    deadline = epoch(step_of(waiting, "wait-for-verification")["deadlines"]["expiry"])
    await wait_for(client, f"/api/outbox?workflowId={run_id}", lambda b: len(b["emails"]) == 2)
    resent = await client.post(f"/api/users/{user_id}/resend-verification")
    assert resent.status == 202, await resent.text()
    emails = await wait_for(client, f"/api/outbox?workflowId={run_id}", lambda b: len(b["emails"]) == 3)
    assert sorted(e["kind"] for e in emails["emails"]) == ["reminder", "resend", "verification"]
    stated = {expiry_phrase(e["text"]) for e in emails["emails"]}
    assert len(stated) == 1, stated
    [text] = stated
    moment = datetime.strptime(text, "%d %B %Y, %H:%M UTC").replace(tzinfo=timezone.utc).timestamp()
    assert deadline - 120 < moment <= deadline  # to the minute, never later than the link really works
    detail = await get_json(client, f"/api/workflows/{run_id}")
    assert epoch(step_of(detail, "wait-for-verification")["deadlines"]["expiry"]) == deadline  # a resend moves nothing
    assert all("Acme" in e["text"] for e in (await outbox_of(client, run_id)))


def expiry_phrase(text: str) -> str:
    """The '3 December 2026, 14:05 UTC' an email's plain text states."""
    flat = " ".join(text.split())
    return flat.split("until ", 1)[1].split(" UTC", 1)[0] + " UTC"
