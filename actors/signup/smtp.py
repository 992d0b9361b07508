"""Sending email over SMTP with the standard library, in the run actor's thread.

``smtp://host:port`` (``?starttls=1`` to upgrade), ``smtps://`` for implicit
TLS, credentials in the URL's user part. Temporary failures (connection
refused, timeouts, 4xx replies) raise :class:`TransientEmailError` and are
retried by the step's policy; 5xx replies (bad recipient, rejected content,
failed login) raise :class:`PermanentError` and fail the run at once.
"""

from __future__ import annotations

import smtplib
import ssl
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlsplit

from userflow.actors.retry import PermanentError
from userflow.actors.signup.email import Email, TransientEmailError


class SmtpTransport:
    name = "smtp"

    def __init__(self, url: str, mail_from: str, timeout: float = 15.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"not an SMTP URL: {url!r}")
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.implicit_tls else 25)
        query = parse_qs(parts.query)
        self.starttls = query.get("starttls", ["0"])[0].lower() in ("1", "true", "yes")
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.mail_from = mail_from
        self.timeout = timeout
        self.tls_context = ssl.create_default_context()

    def message(self, email: Email) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = email.to
        message["Subject"] = email.subject
        message["Message-ID"] = email.message_id
        message["Date"] = formatdate(usegmt=True)
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        return message

    def send(self, email: Email) -> str:
        message = self.message(email)
        sender = message["From"].addresses[0].addr_spec
        try:
            client = (
                smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.tls_context)
                if self.implicit_tls
                else smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            )
            with client as smtp:
                if self.starttls:
                    smtp.starttls(context=self.tls_context)
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.ehlo_or_helo_if_needed()
                code, reply = smtp.mail(sender)
                if code != 250:
                    raise smtplib.SMTPSenderRefused(code, reply, sender)
                code, reply = smtp.rcpt(email.to)
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({email.to: (code, reply)})
                code, reply = smtp.data(message.as_bytes(policy=policy.SMTP))  # CRLF line ends
                if code != 250:
                    raise smtplib.SMTPDataError(code, reply)
                return f"{code} {reply.decode(errors='replace')}"
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise _classify(code, reply, f"recipient {email.to} refused") from None
        except smtplib.SMTPResponseException as exc:
            raise _classify(exc.smtp_code, exc.smtp_error, "SMTP server refused") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientEmailError(f"SMTP {self.host}:{self.port} unreachable: {exc}") from None


def _classify(code: int, reply: bytes | str, what: str) -> Exception:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    error = f"{what}: {code} {text}"
    return PermanentError(error) if 500 <= code < 600 else TransientEmailError(error)
