"""The thread that keeps the event stream in its journal (the database), in order.

Frames wait in one list; the thread takes every frame waiting at once and
stores them in one append, so under load a transaction carries hundreds of
frames rather than one burst's few: the stream costs the database a handful
of transactions a second, not one per change. Frames are shown to clients
(``deliver``) only once stored, with the numbers the journal gave them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from userflow.storage.port import EventJournal

log = logging.getLogger(__name__)

MAX_BATCH = 5000  # frames per append: a bounded statement however far behind


class EventKeeper:
    def __init__(self, journal: EventJournal, deliver: Callable[[list[tuple[int, bytes]]], None]) -> None:
        self._journal = journal
        self._deliver = deliver
        self._pending: list[bytes] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="userflow-events", daemon=True)
        self._thread.start()

    def put(self, frames: list[bytes]) -> None:
        with self._cond:
            self._pending.extend(frames)
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Store what is waiting (while the journal answers), then end the thread (blocking)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = 0.1
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                frames = self._pending[:MAX_BATCH]
            try:
                numbers = self._journal.append(frames)
            except Exception as exc:  # noqa: BLE001 - the store is away: the frames wait, in order
                if self._stopping:
                    log.warning("%d events not stored at shutdown: %s", len(frames), exc)
                    return
                log.warning("events not stored yet, trying again in %.1f s: %s", delay, exc)
                with self._cond:
                    self._cond.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            with self._cond:
                del self._pending[: len(frames)]
            self._deliver(list(zip(numbers, frames)))
