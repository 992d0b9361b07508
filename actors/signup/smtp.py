"""Sending email over SMTP with the standard library, in the run actor's thread.

``smtp://host:port`` (``?starttls=1`` to upgrade), ``smtps://`` for implicit
TLS, credentials in the URL's user part. Temporary failures (connection
refused, timeouts, 4xx replies) raise :class:`TransientEmailError` and are
retried by the step's policy; 5xx replies (bad recipient, rejected content,
failed login) raise :class:`PermanentError` and fail the run at once.

Connections stay open between sends (:mod:`smtp_pool`) and messages are
written directly as bytes (:mod:`mime`): together they make a sent email
cost little more than one kept in the outbox.

Addresses with an internationalised domain go out with its ASCII form
(``xn--…``), which every server accepts; one whose local part is not ASCII
needs a server offering SMTPUTF8 (RFC 6531), and without it the send fails
as permanent, since no retry can change what the server supports.
"""

from __future__ import annotations

import smtplib
import ssl
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

import idna

from userflow.actors.retry import PermanentError
from userflow.actors.signup import mime
from userflow.actors.signup.email import Email, TransientEmailError
from userflow.actors.signup.smtp_pool import Lease, PoolBusy, SmtpPool

SMTPUTF8_OPTIONS = ("SMTPUTF8", "BODY=8BITMIME")


class SmtpSettingsError(ValueError):
    """An SMTP URL or sender address that cannot work: refused at start."""


class _DroppedBeforeData(Exception):
    """A kept connection failed before the message was handed over: sending again is safe."""


def ascii_domain(domain: str) -> str:
    """The domain as every SMTP server takes it: IDNA (``пример.рф`` -> ``xn--e1afmkfd.xn--p1ai``)."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return domain.encode("idna").decode("ascii")  # IDNA 2003, more lenient


def mailbox(address: str) -> tuple[str, bool]:
    """``address`` as the envelope and the To header give it, and whether it needs SMTPUTF8."""
    if address.isascii():
        return address, False
    local, _, domain = address.rpartition("@")
    if local.isascii():
        try:
            return f"{local}@{ascii_domain(domain)}", False
        except UnicodeError:
            pass
    return address, True


class SmtpTransport:
    name = "smtp"

    def __init__(
        self, url: str, mail_from: str, timeout: float = 15.0, *, pool_size: int = 16, idle_after: float = 10.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise SmtpSettingsError(f"not an SMTP URL: {url!r}")
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
        self.sender, self.sender_needs_utf8, self.from_line = self._sender(mail_from)
        self.pool = SmtpPool(self._connect, size=pool_size, idle_after=idle_after, wait=timeout)

    @staticmethod
    def _sender(mail_from: str) -> tuple[str, bool, bytes]:
        """The envelope sender and the From line, encoded once for every message."""
        message = EmailMessage(policy=policy.SMTP)
        try:
            message["From"] = mail_from
            addresses = message["From"].addresses
        except (ValueError, IndexError) as exc:
            raise SmtpSettingsError(f"--mail-from {mail_from!r} is not an email address: {exc}") from None
        if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
            raise SmtpSettingsError(f"--mail-from {mail_from!r}: expected one address, such as 'Example <no-reply@example.com>'")
        sender, needs_utf8 = mailbox(addresses[0].addr_spec)
        header = Address(display_name=addresses[0].display_name, addr_spec=sender)
        return sender, needs_utf8, mime.address_header("From", header, utf8=needs_utf8)

    def message(self, email: Email, recipient: str | None = None) -> bytes:
        """The message as sent: headers and both parts, CRLF line ends."""
        recipient = recipient or mailbox(email.to)[0]
        return mime.multipart_alternative(
            from_line=self.from_line,
            to_line=b"To: " + recipient.encode("utf-8") + mime.CRLF,
            subject=email.subject,
            message_id=email.message_id,
            text=email.text,
            html=email.html,
        )

    def send(self, email: Email) -> str:
        recipient, needs_utf8 = mailbox(email.to)
        data = self.message(email, recipient)
        options = SMTPUTF8_OPTIONS if needs_utf8 or self.sender_needs_utf8 else ()
        try:
            return self._deliver(recipient, options, data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise _classify(code, reply, f"recipient {email.to} refused") from None
        except smtplib.SMTPNotSupportedError:
            raise PermanentError(
                f"the SMTP server {self.host}:{self.port} does not take internationalised addresses (no SMTPUTF8), "
                f"so it cannot deliver to {email.to}"
            ) from None
        except smtplib.SMTPResponseException as exc:
            raise _classify(exc.smtp_code, exc.smtp_error, "SMTP server refused") from None
        except (smtplib.SMTPException, OSError, PoolBusy) as exc:
            raise TransientEmailError(f"SMTP {self.host}:{self.port} unreachable: {exc}") from None

    def close(self) -> None:
        self.pool.close()

    def _connect(self) -> smtplib.SMTP:
        client = (
            smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.tls_context)
            if self.implicit_tls
            else smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        )
        try:
            if self.starttls:
                client.ehlo_or_helo_if_needed()
                if not client.has_extn("starttls"):  # never on in plaintext: the URL asks for TLS
                    raise PermanentError(
                        f"the SMTP server {self.host}:{self.port} does not offer STARTTLS, which the SMTP URL asks for "
                        "(?starttls=1); nothing was sent"
                    )
                client.starttls(context=self.tls_context)
            if self.username:
                client.login(self.username, self.password or "")
            client.ehlo_or_helo_if_needed()
        except BaseException:
            client.close()
            raise
        return client

    def _deliver(self, recipient: str, options: tuple[str, ...], data: bytes) -> str:
        """One transaction on a pooled connection; once more on a new one if a kept one broke early."""
        lease = self.pool.take()
        last_try = not lease.reused
        while True:
            try:
                receipt = self._transaction(lease, recipient, options, data)
            except _DroppedBeforeData as dropped:
                if last_try:
                    self.pool.discard(lease)
                    raise dropped.__cause__ or dropped from None
                lease, last_try = self.pool.renew(lease), True  # renew gives the slot up if it cannot connect
                continue
            except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused, smtplib.SMTPNotSupportedError):
                self.pool.give(lease)  # a refusal leaves the connection in order (RSET before its next use)
                raise
            except BaseException:
                self.pool.discard(lease)  # cut off mid-transaction: its state is unknown
                raise
            self.pool.give(lease)
            return receipt

    def _transaction(self, lease: Lease, recipient: str, options: tuple[str, ...], data: bytes) -> str:
        smtp = lease.connection
        try:
            code, reply = smtp.mail(self.sender, list(options))
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, self.sender)
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            raise _DroppedBeforeData() from exc
        code, reply = smtp.data(data)  # a drop from here on may follow acceptance: never sent twice here
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        return f"{code} {reply.decode(errors='replace')}"


def _classify(code: int, reply: bytes | str, what: str) -> Exception:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    error = f"{what}: {code} {text}"
    return PermanentError(error) if 500 <= code < 600 else TransientEmailError(error)
