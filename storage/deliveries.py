"""Where webhook deliveries are kept: ``DATA/webhooks/``, a journal of their states.

An event itself is stored with its run, in the commit that made it (the
transactional outbox); this store keeps what became of each delivery of it.
Every record is a delivery's whole state as JSON (``{"id", ..., "status",
"attempts", "nextAt"}``), or a mark (``{"mark": "queued", "runId", "count"}``:
how many of a run's events have deliveries; ``{"mark": "since", "at"}``: when
deliveries began, so that turning webhooks on does not send every old
event). Records are appended through the journal (many behind one sync), so
replaying keeps the last state of each; ``compact`` rewrites the live states
alone into a new segment and drops the old ones, so a crash in the middle
leaves old and new, which replay to the same states.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import orjson

from userflow.storage.journal import Journal, records

_KEY = "deliveries"


class DeliveryStore(Protocol):
    def load(self) -> Iterator[dict[str, Any]]:
        """Every record, oldest first (the last state of a delivery wins)."""
        ...

    def save(self, items: list[dict[str, Any]]) -> None:
        """Durably keep these states and marks (blocking: call it off the event loop)."""
        ...

    def compact(self, items: Iterable[dict[str, Any]]) -> None:
        """Keep only ``items``: the live state of everything (at start, before any save)."""
        ...

    def close(self) -> None: ...


class DeliveryLog:
    """The data dir's delivery store."""

    def __init__(self, data_dir: str) -> None:
        self.directory = os.path.join(data_dir, "webhooks")
        self._journal = Journal(self.directory)

    def load(self) -> Iterator[dict[str, Any]]:
        for number in self._journal.segments():
            if number == self._journal.current:
                continue  # opened empty by this process
            for _, _, document in records(self._journal.path(number)):
                yield from orjson.loads(document)

    def save(self, items: list[dict[str, Any]]) -> None:
        if items:
            self._journal.append(_KEY, 0, orjson.dumps(items))

    def compact(self, items: Iterable[dict[str, Any]]) -> None:
        old = self._journal.rotate()
        kept = list(items)
        # One record per chunk keeps a record well under the journal's size limits.
        for start in range(0, len(kept), 1000):
            self.save(kept[start : start + 1000])
        self._journal.delete(old)

    def close(self) -> None:
        self._journal.close()
