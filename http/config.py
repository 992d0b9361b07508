"""The command line: ``userflow serve``'s settings (each flag, its environment variable, its
default), and the flags of ``operators`` and ``import``."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from importlib import metadata

from userflow.actors.delivery import DEFAULT_SCHEDULE
from userflow.http import config_values as accepts


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./userflow-data"
    database_url: str | None = None  # PostgreSQL instead of the data dir (USERFLOW_DATABASE_URL)
    node_id: str | None = None  # None: host name and port
    node_timeout: float = 5.0  # seconds without a heartbeat before a node's runs are taken over
    public_url: str | None = None
    smtp_url: str | None = None
    mail_from: str = "userflow <no-reply@userflow.localhost>"
    product_name: str = "userflow"  # the name the emails give the product
    templates_dir: str | None = None  # Jinja2 email templates replacing the built-in ones
    email_failure_rate: float | None = None
    verify_ttl: float = 86400.0
    reminder_after: float = 3600.0
    email_max_backoff: float = 300.0  # the longest pause between two tries of an email
    email_retry_for: float = 21600.0  # how long an email is retried (never past the link's expiry)
    max_live_actors: int = 256
    retain_finished: float | None = None  # days a finished run keeps its step details; None = forever
    retention_every: float = 60.0  # seconds between two sweeps of retention
    log_level: str = "INFO"
    signup_rate: str = "20/60"  # per client address; "0" turns it off
    verify_rate: str = "60/60"
    gemini_api_key: str | None = None
    gemini_model: str = "gemini-2.5-flash"  # a current Flash model
    gemini_base_url: str | None = None
    gemini_timeout: float = 10.0
    trusted_proxies: tuple[str, ...] = ()  # CIDR ranges whose X-Forwarded-For / Forwarded are believed
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the public endpoints
    session_ttl: float = 43200.0  # seconds a dashboard sign-in lasts
    signin_rate: str = "10/300"  # failed sign-ins per client address
    operator_token: str | None = None  # USERFLOW_OPERATOR_TOKEN: the account "env" (never a flag)
    webhook_urls: tuple[str, ...] = ()
    webhook_secrets: tuple[str, ...] = ()  # USERFLOW_WEBHOOK_SECRET, space-separated (never a flag)
    webhook_timeout: float = 15.0
    webhook_schedule: tuple[float, ...] = DEFAULT_SCHEDULE

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


def version() -> str:
    try:
        return metadata.version("userflow")
    except metadata.PackageNotFoundError:
        return "unknown"


ENVIRONMENT = """\
environment only (never flags, which show in `ps`):
  USERFLOW_OPERATOR_TOKEN  a token for an operator account named "env", for automation
  USERFLOW_WEBHOOK_SECRET  the secret(s) webhooks are signed with: whsec_<base64>, several
                           separated by spaces (each signs every request, for rotation)
  GEMINI_API_KEY           enables the Gemini risk check; unset = the local heuristic
  GEMINI_MODEL             the model asked (default gemini-2.5-flash)
  GEMINI_BASE_URL          another endpoint: a proxy, a test double
  GEMINI_TIMEOUT           seconds per model call (default 10)

--smtp-url forms:
  smtp://[user:pass@]host:port             plain SMTP
  smtp://[user:pass@]host:587?starttls=1   upgraded with STARTTLS
  smtps://[user:pass@]host:465             implicit TLS

operator accounts: `userflow operators add NAME --role operator|viewer` prints the
token once; with no account, the operator surface answers only local clients."""


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="userflow", description="The user lifecycle as one durable workflow per user.")
    main.add_argument("--version", action="version", version=f"userflow {version()}")
    commands = main.add_subparsers(dest="command", required=True, metavar="{serve,operators,import}")
    serve = commands.add_parser(
        "serve",
        help="run the server (API, dashboard, workflows)",
        description="Run the server: the public API (signup, verify), the operator API and dashboard, and the workflows.",
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Settings()

    def option(flag: str, env: str, kind, default, help: str, shown: object = None, repeat: bool = False) -> None:  # type: ignore[no-untyped-def]
        raw = _env(env)
        try:
            if repeat:
                value = [kind(part) for part in raw.split(",") if part.strip()] if raw is not None else list(default)
            else:
                value = kind(raw) if raw is not None else default
        except (ValueError, argparse.ArgumentTypeError) as exc:
            main.error(f"{env}={raw!r}: {exc}")
        text = f"{help} (env {env}{', comma-separated' if repeat else ''}; default {shown if shown is not None else default})"
        if repeat:
            serve.add_argument(flag, type=kind, action="append", default=None, help=text)
            serve.set_defaults(**{flag.lstrip("-").replace("-", "_") + "_env": value})
        else:
            serve.add_argument(flag, type=kind, default=value, help=text)

    option("--host", "USERFLOW_HOST", str, d.host, "address to listen on; another than loopback needs an operator account")
    option("--port", "USERFLOW_PORT", accepts.port, d.port, "port to listen on, 0 for a free one")
    option("--data-dir", "USERFLOW_DATA_DIR", str, d.data_dir, "where everything durable lives")
    option("--database-url", "USERFLOW_DATABASE_URL", accepts.database_url, None, "keep everything in this PostgreSQL database (14 or newer) instead of the data dir: postgresql://USER:PASSWORD@HOST:PORT/DATABASE; prefer the environment variable, which `ps` does not show", "unset = the data dir")
    option("--node-id", "USERFLOW_NODE_ID", accepts.node_id, None, "this node's name among the nodes of one database, in timelines, run details, the dashboard and /readyz; unique per node", "HOSTNAME:PORT")
    option("--node-timeout", "USERFLOW_NODE_TIMEOUT", accepts.node_timeout, d.node_timeout, "seconds without a heartbeat after which a node's runs continue on the other nodes of the database; a node that cannot renew stops its steps before then")
    option("--public-url", "USERFLOW_PUBLIC_URL", accepts.url(("http", "https")), None, "base URL of links in emails and of the dashboard", "http://HOST:PORT")
    option("--smtp-url", "USERFLOW_SMTP_URL", accepts.url(("smtp", "smtps")), None, "SMTP server (forms below)", "unset = outbox mode: emails kept in the data dir")
    option("--mail-from", "USERFLOW_MAIL_FROM", str, d.mail_from, "sender address of emails")
    option("--product-name", "USERFLOW_PRODUCT_NAME", accepts.product, d.product_name, "the product's name, as the emails give it")
    option("--templates", "USERFLOW_TEMPLATES", str, None, "a directory of Jinja2 email templates replacing the built-in ones (KIND.subject.txt, KIND.txt, KIND.html)", "the built-in ones")
    option("--email-failure-rate", "USERFLOW_EMAIL_FAILURE_RATE", accepts.fraction, None, "injected transient email failures, to watch retries", "0.2 in outbox mode, 0 with SMTP")
    option("--verify-ttl", "USERFLOW_VERIFY_TTL", accepts.seconds, d.verify_ttl, "seconds a verification link stays valid")
    option("--reminder-after", "USERFLOW_REMINDER_AFTER", accepts.seconds, d.reminder_after, "seconds before one reminder email, 0 = never")
    option("--email-max-backoff", "USERFLOW_EMAIL_MAX_BACKOFF", accepts.some_seconds, d.email_max_backoff, "longest pause between two tries of an email after a transient failure")
    option("--email-retry-for", "USERFLOW_EMAIL_RETRY_FOR", accepts.seconds, d.email_retry_for, "seconds an email is retried after transient failures (never past the link's expiry); then the run is FAILED")
    option("--signup-rate-limit", "USERFLOW_SIGNUP_RATE_LIMIT", accepts.rate, d.signup_rate, "accepted signups per client address, N/SECONDS, 0 = off")
    option("--verify-rate-limit", "USERFLOW_VERIFY_RATE_LIMIT", accepts.rate, d.verify_rate, "verifications per client address, N/SECONDS, 0 = off")
    option("--signin-rate-limit", "USERFLOW_SIGNIN_RATE_LIMIT", accepts.rate, d.signin_rate, "failed dashboard sign-ins per client address, N/SECONDS, 0 = off")
    option("--session-ttl", "USERFLOW_SESSION_TTL", accepts.positive_seconds, d.session_ttl, "seconds a dashboard sign-in lasts")
    option("--trusted-proxy", "USERFLOW_TRUSTED_PROXIES", accepts.network, (), "a reverse proxy's address or CIDR range, whose X-Forwarded-For and Forwarded are believed; repeatable", "none", repeat=True)
    option("--cors-origin", "USERFLOW_CORS_ORIGINS", accepts.origin, (), "an origin whose pages may call signup and verify from a browser; repeatable", "none", repeat=True)
    option("--webhook-url", "USERFLOW_WEBHOOK_URLS", accepts.url(("http", "https")), (), "a URL every lifecycle event is POSTed to, signed with USERFLOW_WEBHOOK_SECRET; repeatable", "none", repeat=True)
    option("--webhook-timeout", "USERFLOW_WEBHOOK_TIMEOUT", accepts.some_seconds, d.webhook_timeout, "seconds a webhook receiver has to answer")
    option("--webhook-retry-schedule", "USERFLOW_WEBHOOK_RETRY_SCHEDULE", accepts.schedule, d.webhook_schedule, "seconds before each new attempt of a failed webhook delivery, comma-separated; then it is failed", ",".join(f"{d:g}" for d in DEFAULT_SCHEDULE))
    option("--log-level", "USERFLOW_LOG_LEVEL", accepts.level, d.log_level, "DEBUG, INFO, WARNING or ERROR")
    option("--max-live-actors", "USERFLOW_MAX_LIVE_ACTORS", accepts.count, d.max_live_actors, "cap on run actors alive at once")
    option("--retain-finished", "USERFLOW_RETAIN_FINISHED", accepts.days, None, "days a finished run keeps its step details and timeline; then only the user's record, its risk decision and each step's status and times are kept", "keep")
    option("--retention-every", "USERFLOW_RETENTION_EVERY", accepts.some_seconds, d.retention_every, "seconds between two sweeps of --retain-finished")

    operators = commands.add_parser(
        "operators",
        help="operator accounts: add, list, remove",
        description="Operator accounts of a data dir or a database; changes apply to running servers within seconds.",
    )
    actions = operators.add_subparsers(dest="action", required=True, metavar="{add,list,remove}")
    data_dir = _env("USERFLOW_DATA_DIR") or d.data_dir
    add = actions.add_parser("add", help="add an account and print its token, once, alone on standard output")
    add.add_argument("name", help="the account name: lowercase letters, digits, '.', '_' or '-'")
    add.add_argument("--role", required=True, choices=("viewer", "operator"), help="viewer reads; operator reads and acts")
    listing = actions.add_parser("list", help="list the accounts and their open sessions")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    remove = actions.add_parser("remove", help="remove an account; its token and sessions stop working")
    remove.add_argument("name")
    database_url = _env("USERFLOW_DATABASE_URL")
    for sub in (add, listing, remove):
        sub.add_argument("--data-dir", default=data_dir, help=f"the server's data dir (env USERFLOW_DATA_DIR; default {data_dir})")
        sub.add_argument("--database-url", type=accepts.database_url, default=database_url, help="the server's database, when it keeps everything in PostgreSQL (env USERFLOW_DATABASE_URL)")

    importing = commands.add_parser(
        "import",
        help="copy a data dir into a PostgreSQL database",
        description=(
            "Copy a data dir's runs, users, token key and operator accounts into a PostgreSQL database, "
            "for a server started with --database-url to carry on. Stop the data dir's server first. "
            "Running it again changes nothing; an interrupted import is finished by running it again."
        ),
    )
    importing.add_argument("--data-dir", default=data_dir, help=f"the data dir to copy (env USERFLOW_DATA_DIR; default {data_dir})")
    importing.add_argument("--database-url", type=accepts.database_url, default=database_url, help="the database to copy into, postgresql://USER:PASSWORD@HOST:PORT/DATABASE (env USERFLOW_DATABASE_URL, which `ps` does not show; required)")
    importing.add_argument("--batch", type=accepts.batch, default=None, help="runs per transaction (default 500)")
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


def _webhook_secrets(needed: bool) -> tuple[str, ...]:
    from userflow.actors.delivery import check_secret

    secrets = tuple((_env("USERFLOW_WEBHOOK_SECRET") or "").split())
    if needed and not secrets:
        parser().error("--webhook-url needs USERFLOW_WEBHOOK_SECRET (whsec_<base64>) in the environment, to sign the requests")
    for secret in secrets:
        try:
            check_secret(secret)
        except ValueError as exc:
            parser().error(f"USERFLOW_WEBHOOK_SECRET: {exc}")
    return secrets


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        database_url=args.database_url,
        node_id=args.node_id,
        node_timeout=args.node_timeout,
        public_url=args.public_url,
        smtp_url=args.smtp_url,
        mail_from=args.mail_from,
        product_name=args.product_name,
        templates_dir=args.templates,
        email_failure_rate=args.email_failure_rate,
        verify_ttl=args.verify_ttl,
        reminder_after=args.reminder_after,
        email_max_backoff=args.email_max_backoff,
        email_retry_for=args.email_retry_for,
        max_live_actors=max(1, args.max_live_actors),
        retain_finished=args.retain_finished,
        retention_every=args.retention_every,
        log_level=args.log_level,
        signup_rate=args.signup_rate_limit,
        verify_rate=args.verify_rate_limit,
        signin_rate=args.signin_rate_limit,
        session_ttl=args.session_ttl,
        trusted_proxies=tuple(args.trusted_proxy if args.trusted_proxy is not None else args.trusted_proxy_env),
        cors_origins=tuple(args.cors_origin if args.cors_origin is not None else args.cors_origin_env),
        operator_token=_env("USERFLOW_OPERATOR_TOKEN"),
        webhook_urls=tuple(args.webhook_url if args.webhook_url is not None else args.webhook_url_env),
        webhook_secrets=_webhook_secrets(bool(args.webhook_url or args.webhook_url_env)),
        webhook_timeout=args.webhook_timeout,
        webhook_schedule=args.webhook_retry_schedule,
        gemini_api_key=_env("GEMINI_API_KEY"),
        gemini_model=_env("GEMINI_MODEL") or Settings.gemini_model,
        gemini_base_url=_env("GEMINI_BASE_URL"),
        gemini_timeout=_gemini_timeout(),
    )


def load(argv: list[str] | None = None) -> tuple[str, Settings]:
    """``userflow serve`` arguments as settings (the command is always ``serve``)."""
    args = parser().parse_args(argv)
    if args.command != "serve":
        parser().error("expected the serve command")
    return args.command, settings_from(args)
