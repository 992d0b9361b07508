"""What the engine asks of storage: the port every backend implements in full.

A :class:`RunStore` keeps runs: each one's document and timeline, committed
all or nothing through the :class:`RunHandle` of the one actor that owns the
run. A store that keeps a copy of the engine's index between starts (the data
dir does: reading every run file at a start is slow) offers it as an
:class:`IndexCache`; a store that can answer lookups itself (a database) has
none. The engine never probes a store for what it can do: it asks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_run_id(run_id: str) -> bool:
    return bool(_RUN_ID.fullmatch(run_id))  # not match: "$" also matches before a final newline


class StoredRun(NamedTuple):
    """A run as persisted: its snapshot and its timeline, oldest entry first."""

    run: dict[str, Any]
    timeline: list[dict[str, Any]]


class RunHandle(Protocol):
    """Write access to one run, held by the one actor that owns the run."""

    def load(self) -> StoredRun | None: ...

    def commit(self, run: dict[str, Any], new_entries: list[dict[str, Any]]) -> None:
        """Durably store the snapshot and append the timeline entries, all or nothing."""
        ...


class IndexCache(Protocol):
    """The engine's index kept between starts, with the stamp of each run it describes."""

    def save_index(self, lines: Iterable[bytes], fingerprint: str, stamps: Mapping[str, list[int]]) -> None:
        """Keep the engine's index until it is saved again (a cache: losing it costs a scan)."""
        ...

    def read_index(self, fingerprint: str) -> tuple[dict[str, list[int]], Iterator[memoryview]] | None:
        """The saved index: each run's stamp when it was saved, and its lines."""
        ...

    def stamps(self) -> dict[str, list[int]]:
        """Each stored run's stamp now: a changed run never keeps its stamp."""
        ...

    def read_document(self, run_id: str) -> tuple[dict[str, Any], list[int]] | None:
        """A run's document and the stamp of what it was read from."""
        ...

    def after_checkpoint(self, hook: Callable[[bool, list[str]], None]) -> None:
        """Call ``hook(final, written)`` after each checkpoint (no run changes meanwhile)."""
        ...


class RunStore(Protocol):
    def open(self, run_id: str) -> RunHandle: ...

    def read(self, run_id: str) -> StoredRun | None: ...

    def scan(self, skip: Container[str] = ()) -> Iterator[dict[str, Any]]:
        """Every stored run's document but those in ``skip``."""
        ...

    def index_cache(self) -> IndexCache | None: ...

    def close(self) -> None:
        """Make everything committed durable where it belongs; stop background work."""
        ...


class EventJournal(Protocol):
    """Where the event stream (``/api/events``) is kept, numbered, so an id outlives a process."""

    stream: str  # the ids' prefix, the same for every process using the journal

    def append(self, frames: list[bytes]) -> list[int]:
        """Keep the frames in order; their numbers, ascending (blocking)."""
        ...

    def tail(self, count: int) -> list[tuple[int, bytes]]:
        """The newest ``count`` frames and their numbers, oldest first (blocking)."""
        ...
