"""SMTP connections kept open between sends, shared by the run actors' threads.

Opening a connection costs a TCP handshake, the server's greeting, EHLO and,
with TLS, a handshake and a login: more than sending one message. So up to
``size`` connections are kept. A thread takes one (or opens one if none is
idle), sends, and gives it back; one that went wrong is discarded. A
connection that waited in the pool is checked with RSET before it is used
(which also clears anything a refused transaction left behind), and one the
server dropped meanwhile is closed and the next taken or a new one opened.
Servers drop idle clients after a while anyway, so connections idle for
``idle_after`` seconds are closed (QUIT) by one helper thread, and all of
them at shutdown.

A connection is used by one thread at a time: ``smtplib.SMTP`` is not
thread-safe, and the pool only ever hands an idle one out once.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Connect = Callable[[], smtplib.SMTP]


class PoolBusy(Exception):
    """Every connection stayed busy for as long as a send may wait."""


@dataclass
class Lease:
    """A connection handed to one thread; ``reused`` if it had served an earlier send."""

    connection: smtplib.SMTP
    reused: bool


@dataclass(eq=False)  # kept connections are told apart by identity
class _Idle:
    connection: smtplib.SMTP
    since: float


QUIT_TIMEOUT = 2.0  # seconds to wait for QUIT's answer: a hung server must not hold up a shutdown


def quit_quietly(connection: smtplib.SMTP) -> None:
    """QUIT, or at least close the socket: the server may be gone already."""
    try:
        if connection.sock is not None:
            connection.sock.settimeout(min(QUIT_TIMEOUT, connection.timeout))
        connection.quit()
    except (smtplib.SMTPException, OSError):
        connection.close()


def usable(connection: smtplib.SMTP) -> bool:
    """Whether a kept connection still answers: RSET, which also ends any transaction left open."""
    try:
        return connection.rset()[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


class SmtpPool:
    def __init__(self, connect: Connect, *, size: int = 4, idle_after: float = 10.0, wait: float = 15.0) -> None:
        if size < 1:
            raise ValueError("an SMTP pool needs at least one connection")
        self._connect = connect
        self.size = size
        self.idle_after = idle_after
        self.wait = wait
        self._slots = threading.BoundedSemaphore(size)  # connections in use or idle, at most size
        self._changed = threading.Condition()
        self._idle: list[_Idle] = []  # oldest first; taken from the end, so warm ones serve
        self._reaper: threading.Thread | None = None
        self._closed = False

    def take(self) -> Lease:
        """A connection for one send: a kept one that answers RSET, else a new one."""
        if not self._slots.acquire(timeout=self.wait):
            raise PoolBusy(f"all {self.size} SMTP connections stayed busy for {self.wait:.0f} s")
        try:
            while True:
                with self._changed:
                    kept = self._idle.pop() if self._idle else None
                if kept is None:
                    return Lease(self._connect(), reused=False)
                if usable(kept.connection):
                    return Lease(kept.connection, reused=True)
                quit_quietly(kept.connection)  # dropped by the server meanwhile: try the next
        except BaseException:
            self._slots.release()
            raise

    def renew(self, lease: Lease) -> Lease:
        """The lease's connection broke: close it and open a new one in its place."""
        quit_quietly(lease.connection)
        try:
            return Lease(self._connect(), reused=False)
        except BaseException:
            self._slots.release()
            raise

    def give(self, lease: Lease) -> None:
        """The send is done and the connection is in order: keep it for the next one."""
        with self._changed:
            if self._closed:
                kept = None
            else:
                kept = _Idle(lease.connection, time.monotonic())
                self._idle.append(kept)
                self._changed.notify_all()
                if self._reaper is None:
                    self._reaper = threading.Thread(target=self._close_idle, name="smtp-pool-idle", daemon=True)
                    self._reaper.start()
        self._slots.release()
        if kept is None:
            quit_quietly(lease.connection)

    def discard(self, lease: Lease) -> None:
        """The connection is in an unknown state (dropped, timed out): close it."""
        quit_quietly(lease.connection)
        self._slots.release()

    def idle(self) -> int:
        with self._changed:
            return len(self._idle)

    def close(self) -> None:
        """Close every idle connection and stop keeping any (at shutdown)."""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            reaper = self._reaper
            self._changed.notify_all()
        for kept in idle:
            quit_quietly(kept.connection)
        if reaper is not None:
            reaper.join(timeout=self.wait)

    def _close_idle(self) -> None:
        """The helper thread: QUIT connections idle for ``idle_after`` s; ends when none is idle."""
        while True:
            with self._changed:
                expired: list[_Idle] = []
                while not expired:
                    if self._closed or not self._idle:
                        self._reaper = None
                        return
                    moment = time.monotonic()
                    expired = [k for k in self._idle if moment - k.since >= self.idle_after]
                    if not expired:
                        self._changed.wait(self._idle[0].since + self.idle_after - moment)
                self._idle = [k for k in self._idle if k not in expired]
            for kept in expired:
                quit_quietly(kept.connection)
