"""Settings of ``userflow serve``: each flag, its environment variable, its default."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./userflow-data"
    public_url: str | None = None
    smtp_url: str | None = None
    mail_from: str = "userflow <no-reply@userflow.localhost>"
    email_failure_rate: float | None = None
    verify_ttl: float = 86400.0
    reminder_after: float = 3600.0
    max_live_actors: int = 256
    index_save_every: float = 30.0
    log_level: str = "INFO"
    signup_rate: str = "20/60"  # per client address; "0" turns it off
    verify_rate: str = "60/60"
    gemini_api_key: str | None = None
    gemini_model: str = "gemini-2.5-flash"  # a current Flash model
    gemini_base_url: str | None = None
    gemini_timeout: float = 10.0

    @property
    def outbox_mode(self) -> bool:
        return not self.smtp_url

    @property
    def failure_rate(self) -> float:
        """Injected email failures: 20% in outbox mode unless set, none with SMTP."""
        if self.email_failure_rate is not None:
            return self.email_failure_rate
        return 0.2 if self.outbox_mode else 0.0

    def base_url(self, port: int) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < 10**9:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds")
    return value


def _rate(text: str) -> str:
    from userflow.http.ratelimit import Rate

    try:
        Rate.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _level(text: str) -> str:
    if text.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"{text!r} is not DEBUG, INFO, WARNING or ERROR")
    return text.upper()


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (0-65535)")
    return value


def _url(schemes: tuple[str, ...]):
    def check(text: str) -> str:
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.hostname:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {' or '.join(schemes)} URL")
        return text

    return check


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="userflow", description="The user lifecycle as one durable workflow per user.")
    commands = main.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (API, dashboard, workflows)")
    d = Settings()

    def option(flag: str, env: str, kind, default, help: str) -> None:
        raw = _env(env)
        try:
            value = kind(raw) if raw is not None else default
        except (ValueError, argparse.ArgumentTypeError) as exc:
            main.error(f"{env}={raw!r}: {exc}")
        serve.add_argument(flag, type=kind, default=value, help=f"{help} (env {env}; default {default})")

    option("--host", "USERFLOW_HOST", str, d.host, "address to listen on")
    option("--port", "USERFLOW_PORT", _port, d.port, "port to listen on, 0 for a free one")
    option("--data-dir", "USERFLOW_DATA_DIR", str, d.data_dir, "where everything durable lives")
    option("--public-url", "USERFLOW_PUBLIC_URL", _url(("http", "https")), None, "base URL of links in emails")
    option("--smtp-url", "USERFLOW_SMTP_URL", _url(("smtp", "smtps")), None, "smtp://[user:pass@]host:port; unset = outbox mode")
    option("--mail-from", "USERFLOW_MAIL_FROM", str, d.mail_from, "sender address of emails")
    option("--email-failure-rate", "USERFLOW_EMAIL_FAILURE_RATE", _fraction, None, "injected transient email failures (0.2 in outbox mode, 0 with SMTP)")
    option("--verify-ttl", "USERFLOW_VERIFY_TTL", _seconds, d.verify_ttl, "seconds a verification link stays valid")
    option("--reminder-after", "USERFLOW_REMINDER_AFTER", _seconds, d.reminder_after, "seconds before one reminder email, 0 = never")
    option("--signup-rate-limit", "USERFLOW_SIGNUP_RATE_LIMIT", _rate, d.signup_rate, "signups per client address, N/SECONDS, 0 = off")
    option("--verify-rate-limit", "USERFLOW_VERIFY_RATE_LIMIT", _rate, d.verify_rate, "verifications per client address, N/SECONDS, 0 = off")
    option("--log-level", "USERFLOW_LOG_LEVEL", _level, d.log_level, "DEBUG, INFO, WARNING or ERROR")
    option("--max-live-actors", "USERFLOW_MAX_LIVE_ACTORS", int, d.max_live_actors, "cap on run actors alive at once")
    option("--index-save-every", "USERFLOW_INDEX_SAVE_EVERY", _seconds, d.index_save_every, "seconds between saves of the index (a start after a crash reads the runs changed since)")
    return main


def _gemini_timeout() -> float:
    raw = _env("GEMINI_TIMEOUT")
    try:
        value = float(raw) if raw else Settings.gemini_timeout
    except ValueError:
        value = -1
    if not 0 < value <= 300:
        parser().error(f"GEMINI_TIMEOUT={raw!r}: seconds between 0 and 300")
    return value


def load(argv: list[str] | None = None) -> tuple[str, Settings]:
    args = parser().parse_args(argv)
    settings = Settings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        public_url=args.public_url,
        smtp_url=args.smtp_url,
        mail_from=args.mail_from,
        email_failure_rate=args.email_failure_rate,
        verify_ttl=args.verify_ttl,
        reminder_after=args.reminder_after,
        max_live_actors=max(1, args.max_live_actors),
        index_save_every=args.index_save_every,
        log_level=args.log_level,
        signup_rate=args.signup_rate_limit,
        verify_rate=args.verify_rate_limit,
        gemini_api_key=_env("GEMINI_API_KEY"),
        gemini_model=_env("GEMINI_MODEL") or Settings.gemini_model,
        gemini_base_url=_env("GEMINI_BASE_URL"),
        gemini_timeout=_gemini_timeout(),
    )
    return args.command, settings
