"""The thread that reads the stored event stream in order, whoever appended it.

Every node appends its runs' frames to one journal (the database), which
numbers them; each node's clients must see every node's frames, in that
order, so what a node shows comes from reading the journal back, never
from its own appends. Numbers are taken when a transaction inserts and become
visible when it commits, so a later number can be visible before an earlier
one: the reader stops at a gap and waits for it, for ``GAP_WAIT`` seconds at
most (a number whose transaction rolled back never appears). It reads again
every ``EVERY`` seconds, or at once when told this node appended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from userflow.storage.port import EventJournal

log = logging.getLogger(__name__)

EVERY = 0.1
GAP_WAIT = 1.0
BATCH = 2000


class EventTail:
    def __init__(self, journal: EventJournal, deliver: Callable[[list[tuple[int, bytes]]], None], after: int) -> None:
        self._journal = journal
        self._deliver = deliver
        self.cursor = after
        self._gap: tuple[int, float] | None = None  # (the number missing, since when)
        self._wake = threading.Event()
        self._stopping = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="userflow-event-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """Frames were appended here: read now rather than at the next round."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def read(self) -> int:
        """One read: deliver the frames that follow the cursor without a gap; how many read."""
        rows = self._journal.after(self.cursor, BATCH)
        taken: list[tuple[int, bytes]] = []
        expected = self.cursor + 1
        for seq, frame in rows:
            if seq != expected and not self._gap_expired(expected):
                break
            taken.append((seq, frame))
            expected = seq + 1
        if taken:
            self.cursor = taken[-1][0]
            self._deliver(taken)
        return len(rows)

    def _gap_expired(self, missing: int) -> bool:
        now = time.monotonic()
        if self._gap is None or self._gap[0] != missing:
            self._gap = (missing, now)
        if now - self._gap[1] < GAP_WAIT:
            return False
        self._gap = None
        return True

    def _run(self) -> None:
        while not self._stopping:
            try:
                full = self.read() >= BATCH
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - the store is away: read again later
                if not self._failing:
                    log.warning("the event stream cannot be read: %s", exc)
                self._failing, full = True, False
            if not full:
                self._wake.wait(GAP_WAIT / 4 if self._gap is not None else EVERY)
                self._wake.clear()
