"""Server-Sent Events: every run change and timeline entry, as it happens.

Run actors publish after each commit (from their threads) into one bounded
ring of recent events; each SSE client only keeps a cursor into that ring,
so a slow or vanished client costs no memory and cannot slow anyone down.
Event ids are ``STREAM-SEQ``: a client reconnecting with ``Last-Event-ID``
gets exactly what it missed, or a ``reset`` event (reload everything) when
the id is from another stream or has left the ring. On the data dir a stream
lasts one server process. With a journal (the database keeps the events)
the stream is the database's, shared by every node: each node appends its
frames, and fills its ring by reading the journal back in order
(``event_tail``), so a client of any node sees every node's frames, and an
id resumes on any node and across restarts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from userflow.http import views
from userflow.http.event_keeper import EventKeeper
from userflow.http.event_tail import EventTail
from userflow.storage.port import EventJournal


RING = 20_000
ERASED = b"event: erased\ndata: {}\n\n"  # what a frame of an erased run becomes
HEARTBEAT = 15.0
RECHECK = 2.0  # seconds between looks at whether the client may still watch
WRITE_TIMEOUT = 10.0


class EventHub:
    """The ring of recent events, owned by the event loop thread.

    Actor threads only append to an inbox (a deque: thread-safe, no lock) and
    wake the loop once per burst; the loop numbers the events and fills the
    ring, so readers and writers of the ring never contend.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = RING, journal: EventJournal | None = None) -> None:
        self.boot = journal.stream if journal is not None else secrets.token_hex(4)
        self._journal = journal
        # The journal numbers frames in the order they were published; clients see them
        # as read back from it, with every other node's.
        self._keeper = EventKeeper(journal, self._appended) if journal is not None else None
        self._tail: EventTail | None = None
        self._loop = loop
        self._ring: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=capacity)
        self._inbox: collections.deque[list[tuple[str, Any]]] = collections.deque()
        self._seq = 0
        self._scheduled = False
        self._changed = asyncio.Event()
        self.clients = 0
        self.closing = False

    # -- publishing (any thread) --------------------------------------------------------

    def publish_run(self, run: Mapping[str, Any], summary: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        """The index listener: one ``timeline`` event per entry, then the run's new summary."""
        frames = [("timeline", {"workflowId": run["id"], **entry}) for entry in entries]
        frames.append(("run", views.workflow_summary(summary)))
        self.publish(frames)

    async def forget(self, run_id: str) -> None:
        """Erasure: the run's frames in the ring and the journal become ``erased`` frames
        of the same number (which the dashboard ignores); the run's erased summary
        follows as a new frame."""
        needle = orjson.dumps(run_id)
        boot = self.boot.encode()
        for n, (seq, frame) in enumerate(self._ring):
            if needle in frame:
                self._ring[n] = (seq, b"id: %s-%d\n%s" % (boot, seq, ERASED))
        if self._journal is not None:
            await asyncio.to_thread(self._journal.forget, needle.decode(), ERASED)

    def publish(self, frames: list[tuple[str, Any]]) -> None:
        self._inbox.append(frames)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop has closed: the server is gone
                pass

    def _drain(self) -> None:
        self._scheduled = False  # before draining: a later publish schedules again
        bodies = []
        while self._inbox:
            for kind, data in self._inbox.popleft():
                bodies.append(b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(data)))
        if not bodies:
            return
        if self._keeper is not None:
            self._keeper.put(bodies)
            return
        self._add([(self._seq + n, body) for n, body in enumerate(bodies, 1)])

    def _appended(self, numbered: list[tuple[int, bytes]]) -> None:
        """From the keeper's thread: this node's frames are stored; read them back now."""
        if self._tail is not None:
            self._tail.poke()

    def _numbered(self, numbered: list[tuple[int, bytes]]) -> None:
        """From the tail's thread: stored frames, in order, to show on the loop."""
        try:
            self._loop.call_soon_threadsafe(self._add, numbered)
        except RuntimeError:  # the loop has closed: the server is gone
            pass

    def _add(self, numbered: list[tuple[int, bytes]]) -> None:
        boot = self.boot.encode()
        for seq, body in numbered:
            self._ring.append((seq, b"id: %s-%d\n%s" % (boot, seq, body)))
        if numbered:
            self._seq = numbered[-1][0]
        self._changed.set()
        self._changed = asyncio.Event()

    async def load(self) -> None:
        """Start the ring from the journal's newest frames: a client resumes across a restart."""
        if self._journal is not None:
            self._add(await asyncio.to_thread(self._journal.tail, self._ring.maxlen or RING))
            self._tail = EventTail(self._journal, self._numbered, self._seq)
            self._tail.start()

    # -- reading (event loop) -----------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._seq

    def since(self, seq: int) -> tuple[list[bytes], int] | None:
        """Frames after ``seq`` and the new cursor; None if some have left the ring."""
        if not self._ring:
            return [], seq
        first = self._ring[0][0]
        if seq < first - 1:
            return None
        last = self._ring[-1][0]
        # From the right end: a live client wants the last few, never a walk of the ring.
        frames = [frame for _, frame in itertools.islice(reversed(self._ring), max(last - seq, 0))]
        frames.reverse()
        return frames, last

    def resume_point(self, last_event_id: str | None) -> int | None:
        """The cursor for a ``Last-Event-ID``: None means the client must start over."""
        if not last_event_id:
            return self.last_seq
        boot, _, seq = last_event_id.partition("-")
        if boot != self.boot or not (seq.isascii() and seq.isdigit() and len(seq) <= 18):
            return None
        return int(seq)

    def close(self) -> None:
        """Ask every stream to end (server shutdown): a stream would otherwise never finish."""
        self.closing = True
        self._changed.set()

    async def stop(self) -> None:
        """Once the engine has stopped: keep what it published last, then end the writer."""
        self._drain()
        if self._keeper is not None:
            await asyncio.to_thread(self._keeper.stop)
        if self._tail is not None:
            await asyncio.to_thread(self._tail.stop)

    async def changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


async def stream(request: web.Request, hub: EventHub, allowed: Callable[[], bool] = lambda: True) -> web.StreamResponse:
    """``GET /api/events``, for as long as ``allowed()`` holds (the session or account may end)."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    cursor = hub.resume_point(request.headers.get("Last-Event-ID") or request.query.get("lastEventId"))
    await response.prepare(request)
    hub.clients += 1
    try:
        await _write(response, b"retry: 2000\n\n")
        quiet = 0.0
        while not hub.closing and allowed():
            if cursor is None:
                cursor = hub.last_seq
                await _write(response, b"id: %s-%d\nevent: reset\ndata: {}\n\n" % (hub.boot.encode(), cursor))
            batch = hub.since(cursor)
            if batch is None:
                cursor = None  # fell behind the ring: tell the client to reload
                continue
            frames, cursor = batch
            if frames:
                quiet = 0.0
                await _write(response, b"".join(frames))
                continue
            started = asyncio.get_running_loop().time()
            await hub.changed(min(RECHECK, HEARTBEAT - quiet))
            quiet += asyncio.get_running_loop().time() - started
            if quiet >= HEARTBEAT and hub.since(cursor) == ([], cursor):
                quiet = 0.0
                await _write(response, b": heartbeat\n\n")
    except (ConnectionResetError, TimeoutError):
        pass  # the client went away or stopped reading
    finally:
        hub.clients -= 1
    return response


async def _write(response: web.StreamResponse, data: bytes) -> None:
    # A client that stops reading fills its socket buffer; give up on it then.
    await asyncio.wait_for(response.write(data), WRITE_TIMEOUT)
