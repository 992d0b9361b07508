"""What the engine asks of storage: the port every backend implements in full.

A :class:`RunStore` keeps runs: each one's document and timeline, committed
all or nothing through the :class:`RunHandle` of the one actor that owns the
run. Every store keeps a :class:`Catalog` of its runs, which lists, filters,
counts and lookups read, so the engine holds only the runs it still has
work for. The engine never probes a store for what it can do: it asks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from userflow.storage.atomic import StorageError

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def valid_run_id(run_id: str) -> bool:
    return bool(_RUN_ID.fullmatch(run_id))  # not match: "$" also matches before a final newline


class StoredRun(NamedTuple):
    """A run as persisted: its snapshot and its timeline, oldest entry first."""

    run: dict[str, Any]
    timeline: list[dict[str, Any]]


class RunMoved(StorageError):
    """The run executes on another node: it was there when claimed, or it was taken over
    since (the claim's lease ended, or a later claim fenced this one off)."""

    def __init__(self, run_id: str, why: str) -> None:
        super().__init__(16, f"run {run_id} {why}")  # EBUSY


class RunHandle(Protocol):
    """Write access to one run, held by the one actor that owns the run.

    Where several nodes share the store, ``load`` claims the run for this node
    (RunMoved if another live node executes it), every commit is fenced by that
    claim (RunMoved once the run was taken over), and ``release`` gives it up."""

    def load(self) -> StoredRun | None: ...

    def commit(self, run: dict[str, Any], new_entries: list[dict[str, Any]]) -> None:
        """Durably store the snapshot and append the timeline entries, all or nothing."""
        ...

    def held(self) -> bool:
        """Whether this node may still execute the run (asked before each step runs)."""
        ...

    def release(self) -> None:
        """The actor stops: another node may claim the run (not waited for)."""
        ...


@dataclass(frozen=True)
class Entry:
    """A run as lists, filters, counts and lookups see it, made by the engine (``Describe``).

    ``summary`` is what a list shows; ``facets`` the values lists filter and count
    by (``{"status": "WAITING", "user": "PENDING"}``); ``keys`` the lookup keys that
    name this run (an address, a user id, token hashes); ``changed`` its last
    change, in epoch seconds."""

    id: str
    summary: Mapping[str, Any]
    facets: Mapping[str, str] = field(default_factory=dict)
    keys: Mapping[str, Iterable[str]] = field(default_factory=dict)
    changed: float = 0.0


#: How the engine describes a run for the catalog; None for a run it cannot describe
#: (a workflow this release does not ship), which is then left out of every list.
Describe = Callable[[Mapping[str, Any]], "Entry | None"]

#: The facet every catalog has: the runs the engine still has work for, which a start reads.
ACTIVE = ("active", "yes")


class Catalog(Protocol):
    """Every stored run's entry, kept by the store in the same commit as the run, so
    that a commit is listed when it returns; reads never need the runs in memory."""

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The run's summary, or None if there is no such run."""
        ...

    def lookup(self, kind: str, key: str) -> str | None:
        """The run holding the key, the latest to take it."""
        ...

    def page(
        self, *, limit: int, cursor: str | None = None, facet: tuple[str, str] | None = None, oldest_first: bool = False
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Summaries newest first (oldest first if asked; ids sort by creation), after
        ``cursor``, with ``facet`` if given; and the cursor of the next page, if any."""
        ...

    def counts(self, name: str, since: str | None = None) -> dict[str, int]:
        """How many runs have each value of the facet ``name`` (values no run has left
        out), only the values from ``since`` on if given (time buckets sort as times)."""
        ...

    def changed_since(self, when: float) -> Iterator[dict[str, Any]]:
        """The summaries of the runs changed at or after ``when`` (epoch seconds)."""
        ...

    def active(self) -> Iterator[dict[str, Any]]:
        """The documents of the runs with the facet ``ACTIVE``: what a start brings back."""
        ...


class Claimed(NamedTuple):
    """A run claimed for this node by a poller, and which of its timers are due."""

    run_id: str
    due: dict[str, float]


class Claims(Protocol):
    """How a node of a store shared by many takes the runs nobody executes."""

    node_id: str

    def claim_due(self, limit: int) -> list[Claimed]:
        """Up to ``limit`` unowned runs whose earliest timer is due."""
        ...

    def claim_orphans(self, limit: int) -> list[Claimed]:
        """Up to ``limit`` runs of nodes whose heartbeat lapsed."""
        ...

    def claim_mine(self) -> list[Claimed]:
        """The runs this node id held when its previous process ended."""
        ...

    def try_lock_key(self, kind: str, value: str) -> bool:
        """Hold the lookup key against starts on other nodes, if none holds it now (never waits)."""
        ...

    def unlock_key(self, kind: str, value: str) -> None: ...


class RunStore(Protocol):
    def open(self, run_id: str) -> RunHandle: ...

    def claims(self) -> Claims | None:
        """The claims of a store many nodes share; None where one process holds the store."""
        ...

    def read(self, run_id: str) -> StoredRun | None: ...

    def scan(self, skip: Container[str] = ()) -> Iterator[dict[str, Any]]:
        """Every stored run's document but those in ``skip``."""
        ...

    def catalog(self, describe: Describe) -> Catalog:
        """The catalog of the stored runs, kept with ``describe`` from now on (once, at
        the engine's start: a store brings it up to date first, and rebuilds it if it
        was lost)."""
        ...

    def drop_old_copies(self) -> None:
        """Keep no copy of what runs had before their latest commits (erasure; blocking)."""
        ...

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

    def after(self, seq: int, count: int) -> list[tuple[int, bytes]]:
        """Up to ``count`` frames numbered after ``seq``, oldest first (blocking): what every
        process appended, so a client of any of them sees them all."""
        ...

    def forget(self, needle: str, instead: bytes) -> int:
        """Replace the frames that contain ``needle`` by ``instead`` (blocking); how many."""
        ...
