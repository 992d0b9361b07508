"""A real SMTP server (aiosmtpd) on 127.0.0.1 that records what it accepts.

It also counts what a client does with its connections (opened, open now,
RSET, QUIT), so tests can see connections being kept and closed, and can cut
connections off: ``drop_open()`` closes every open one from the server's side,
``handler.drop_at_mail`` closes the next N at their MAIL command.

It can hold a message at its DATA command (``handler.hold`` picks which) and let
it go unaccepted later: a send in flight, for as long as a test needs one.

It can speak TLS with a certificate the test provides: implicit TLS
(``smtps://``) or STARTTLS, which it then requires before MAIL. Each
accepted message's TLS version (None for plaintext) is kept beside it, so a
test sees how the message travelled, not only that it arrived.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from email import message_from_bytes
from email.message import Message

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """The handler: keeps each accepted message; ``reply`` can refuse one."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[Envelope] = []
        self.tls_versions: list[str | None] = []  # per accepted message: "TLSv1.3", or None if plaintext
        self.reply: Callable[[Envelope], str | None] = lambda envelope: None
        self.received = threading.Condition()
        self.rsets = 0
        self.quits = 0
        self.drop_at_mail = 0  # close this many connections at their next MAIL command
        self.hang_quit = False  # never answer QUIT, as a hung server would not
        self.hold: Callable[[Envelope], bool] = lambda envelope: False  # keep this DATA unanswered until let_go()
        self._held: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    async def handle_MAIL(self, server, session, envelope: Envelope, address: str, options: list[str]) -> str:  # noqa: N802
        if self.drop_at_mail > 0:
            self.drop_at_mail -= 1
            server.transport.close()  # the client sees the connection end instead of a reply
            return "421 4.4.2 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope: Envelope) -> str:  # noqa: N802
        with self.received:
            self.rsets += 1
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope: Envelope) -> str:  # noqa: N802
        with self.received:
            self.quits += 1
        if self.hang_quit:
            await asyncio.get_running_loop().create_future()  # until the server stops
        return "221 Bye"

    async def handle_DATA(self, server, session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        if self.hold(envelope):
            loop = asyncio.get_running_loop()
            let_go: asyncio.Future[None] = loop.create_future()
            with self.received:
                self._held.append((loop, let_go))
                self.received.notify_all()
            await let_go
            return "451 4.3.0 held, then let go without accepting it"
        refusal = self.reply(envelope)
        if refusal:
            return refusal
        with self.received:
            self.envelopes.append(envelope)
            tls = server.transport.get_extra_info("ssl_object")  # after STARTTLS, the upgraded transport
            self.tls_versions.append(tls.version() if tls else None)
            self.messages.append(message_from_bytes(envelope.original_content or envelope.content))
            self.received.notify_all()
        return "250 2.0.0 Ok: queued as TEST"

    def wait_held(self, count: int = 1, timeout: float = 15.0) -> None:
        """Until ``count`` messages have been held at DATA (none of them accepted)."""
        with self.received:
            if not self.received.wait_for(lambda: len(self._held) >= count, timeout):
                raise TimeoutError(f"expected {count} held messages, got {len(self._held)}")

    def let_go(self) -> None:
        """Answer every held DATA with a 451 (to a client that may be gone by now)."""
        with self.received:
            held, self._held = self._held, []
        for loop, future in held:
            loop.call_soon_threadsafe(lambda f=future: f.done() or f.set_result(None))

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Message]:
        with self.received:
            if not self.received.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"expected {count} messages, got {len(self.messages)}")
            return list(self.messages)


class CountingSMTP(SMTP):
    """aiosmtpd's protocol, telling its server when a connection opens and closes."""

    def __init__(self, owner: SmtpServer, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.counted = False

    def connection_made(self, transport) -> None:
        if not self.counted:  # STARTTLS calls this again with the upgraded transport: the same connection
            self.counted = True
            self.owner.opened(self, transport)
        super().connection_made(transport)

    def connection_lost(self, error) -> None:
        super().connection_lost(error)
        self.owner.closed(self)


class CountingController(Controller):
    def __init__(self, owner: SmtpServer, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def factory(self) -> SMTP:
        return CountingSMTP(self.owner, self.handler, **self.SMTP_kwargs)


class SmtpServer:
    def __init__(
        self,
        port: int | None = None,
        *,
        auth: tuple[str, str] | None = None,
        smtputf8: bool = False,
        implicit_tls: ssl.SSLContext | None = None,
        starttls: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = Recorder()
        self.implicit_tls = implicit_tls is not None
        self.starttls = starttls is not None
        self.port = port or free_port()
        self.connections = 0  # opened so far
        self._open: dict[SMTP, object] = {}  # protocol -> transport, open now
        kwargs: dict[str, object] = {"enable_SMTPUTF8": smtputf8}
        if starttls:
            kwargs.update({"tls_context": starttls, "require_starttls": True})  # no MAIL in plaintext
        if auth:
            expected = (auth[0].encode(), auth[1].encode())

            def authenticator(server, session, envelope, mechanism, data) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (data.login, data.password) == expected
                return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

            kwargs.update({"authenticator": authenticator, "auth_require_tls": False, "auth_required": True})
        self.controller = CountingController(
            self, self.handler, hostname="127.0.0.1", port=self.port, ssl_context=implicit_tls, **kwargs
        )

    def opened(self, protocol: SMTP, transport: object) -> None:
        with self.handler.received:
            self.connections += 1
            self._open[protocol] = transport
            self.handler.received.notify_all()

    def closed(self, protocol: SMTP) -> None:
        with self.handler.received:
            self._open.pop(protocol, None)
            self.handler.received.notify_all()

    @property
    def open_connections(self) -> int:
        with self.handler.received:
            return len(self._open)

    def wait_open(self, count: int, timeout: float = 15.0) -> None:
        """Until exactly ``count`` connections are open (closes are seen as they happen)."""
        with self.handler.received:
            if not self.handler.received.wait_for(lambda: len(self._open) == count, timeout):
                raise TimeoutError(f"expected {count} open connections, have {len(self._open)}")

    def drop_open(self) -> None:
        """Close every open connection from the server's side, as a server restarting would."""
        loop = self.controller.loop
        with self.handler.received:
            transports = list(self._open.values())
        for transport in transports:
            loop.call_soon_threadsafe(transport.close)  # type: ignore[attr-defined]
        self.wait_open(0)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        self.wait_open(0)  # start() checks the server with a connection of its own: not a client's
        with self.handler.received:
            self.connections = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def url(self) -> str:
        """How userflow is pointed at this server, TLS included."""
        if self.implicit_tls:
            return f"smtps://127.0.0.1:{self.port}"
        return f"smtp://127.0.0.1:{self.port}" + ("?starttls=1" if self.starttls else "")
