"""A real SMTP server (aiosmtpd) on 127.0.0.1 that records what it accepts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from email import message_from_bytes
from email.message import Message

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """The handler: keeps each accepted message; ``reply`` can refuse one."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[Envelope] = []
        self.reply: Callable[[Envelope], str | None] = lambda envelope: None
        self.received = threading.Condition()

    async def handle_DATA(self, server, session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        refusal = self.reply(envelope)
        if refusal:
            return refusal
        with self.received:
            self.envelopes.append(envelope)
            self.messages.append(message_from_bytes(envelope.original_content or envelope.content))
            self.received.notify_all()
        return "250 2.0.0 Ok: queued as TEST"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Message]:
        with self.received:
            if not self.received.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"expected {count} messages, got {len(self.messages)}")
            return list(self.messages)


class SmtpServer:
    def __init__(self, port: int | None = None, *, auth: tuple[str, str] | None = None) -> None:
        self.handler = Recorder()
        self.port = port or free_port()
        kwargs = {}
        if auth:
            expected = (auth[0].encode(), auth[1].encode())

            def authenticator(server, session, envelope, mechanism, data) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (data.login, data.password) == expected
                return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

            kwargs = {"authenticator": authenticator, "auth_require_tls": False, "auth_required": True}
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"
