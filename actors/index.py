"""The read side of the engine: the active runs in memory, every other run in the store's catalog.

Run actors ``put`` each committed snapshot here; HTTP handlers read without a
round trip through an actor. Memory holds what only the running engine needs
(the summaries, lookup keys and armed timers of the runs still RUNNING or
WAITING, and the keys reserved by runs not yet committed); lists, counts and
every finished run come from the catalog, which the store keeps in the same
commit. So a server's size follows its active runs, not every user it has had.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from userflow.actors.definitions import ACTIVE_STATUSES, Definitions
from userflow.storage.port import Catalog

log = logging.getLogger(__name__)

#: Called after every commit with the run's snapshot, its summary and the new timeline entries.
Listener = Callable[[Mapping[str, Any], dict[str, Any], list[dict[str, Any]]], None]

_PAGE = 500  # runs per catalog read when walking every run of a facet


def _flat(timers: Iterable[tuple[str, float]]) -> tuple[str | float, ...]:
    """``(name, due, name, due, ...)``: the smallest shape for what every waiting run holds."""
    flat: list[str | float] = []
    for name, due in timers:  # a loop, not a generator: this runs at every commit
        flat += (sys.intern(name), float(due))
    return tuple(flat)


class CatalogMissing(RuntimeError):
    """The index was read before the engine attached the store's catalog."""


class _NoCatalog:
    def __getattr__(self, name: str) -> Any:
        raise CatalogMissing("the engine has not started: no catalog yet")


class RunIndex:
    def __init__(self, workflows: Definitions) -> None:
        self._workflows = workflows
        self._lock = threading.Lock()
        self._summaries: dict[str, dict[str, Any]] = {}  # active runs only
        self._keys: dict[str, dict[str, str]] = {}  # kind -> key -> run: active runs' keys and reservations
        self._held: dict[str, list[tuple[str, str]]] = {}  # run -> the keys it holds in _keys
        self._timers: dict[str, tuple[str | float, ...]] = {}  # armed timers, name, due, ...
        self._listeners: list[Listener] = []
        self._catalog: Catalog = _NoCatalog()  # type: ignore[assignment]

    def attach(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def summarise(self, run: Mapping[str, Any]) -> dict[str, Any]:
        return self._workflows.summary(run)

    def put(
        self, run: Mapping[str, Any], entries: list[dict[str, Any]] | None = None, *, notify: bool = True
    ) -> dict[str, Any]:
        """Record the run's latest committed snapshot (the catalog already has it); tell
        listeners what changed (unless ``notify`` is False: recovery loads what is
        already known, nothing changed)."""
        summary = self.summarise(run)
        run_id = run["id"]
        with self._lock:
            if run["status"] in ACTIVE_STATUSES:
                self._summaries[run_id] = summary
                timers = _flat(run.get("timers", {}).items())
                if timers:
                    self._timers[run_id] = timers
                else:
                    self._timers.pop(run_id, None)
                for kind, values in self._workflows.keys(run).items():
                    for value in values:
                        self._hold(kind, value, run_id)
            else:
                self._drop(run_id)
            listeners = list(self._listeners) if notify else []
        for listener in listeners:
            try:
                listener(run, summary, entries or [])
            except Exception:  # an observer must never break the run it observes
                log.exception("index listener failed")
        return summary

    def _hold(self, kind: str, value: str, run_id: str) -> None:
        table = self._keys.setdefault(kind, {})
        if table.get(value) != run_id:
            table[value] = run_id
            self._held.setdefault(run_id, []).append((kind, value))

    def _drop(self, run_id: str) -> None:
        """(Under the lock.) Forget the run: from now on the catalog answers for it."""
        self._summaries.pop(run_id, None)
        self._timers.pop(run_id, None)
        for kind, value in self._held.pop(run_id, ()):
            table = self._keys.get(kind, {})
            if table.get(value) == run_id:  # not taken over by a later run meanwhile
                del table[value]

    def forget(self, run_id: str) -> None:
        """Drop a run from memory: it never became durable, or (on a shared store) this node
        no longer executes it, and the catalog answers for it."""
        with self._lock:
            self._drop(run_id)

    def reserve(self, kind: str, value: str, run_id: str) -> None:
        """Claim a key before the run's first commit, so a racing duplicate sees it."""
        with self._lock:
            self._hold(kind, value, run_id)

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # -- the active runs ------------------------------------------------------------------

    def timers(self, run_id: str) -> dict[str, float]:
        """The run's armed timers as of its last commit."""
        with self._lock:
            flat = self._timers.get(run_id, ())
        return dict(zip(flat[::2], flat[1::2], strict=True))  # type: ignore[arg-type]

    def active(self) -> int:
        """How many runs are RUNNING or WAITING."""
        with self._lock:
            return len(self._summaries)

    def lookup_active(self, kind: str, value: str) -> str | None:
        """The run holding the key in memory (an active run, or a reservation), or None."""
        with self._lock:
            return self._keys.get(kind, {}).get(value)

    def get_active(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._summaries.get(run_id)

    # -- every run (the catalog) ------------------------------------------------------------

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            summary = self._summaries.get(run_id)
        return summary if summary is not None else self._catalog.get(run_id)

    def lookup(self, kind: str, value: str) -> str | None:
        with self._lock:
            run_id = self._keys.get(kind, {}).get(value)
        return run_id if run_id is not None else self._catalog.lookup(kind, value)

    def page(
        self, *, limit: int, before: str | None = None, facet: tuple[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of summaries, newest first, and the cursor of the next page."""
        return self._catalog.page(limit=limit, cursor=before, facet=facet)

    def each(self, facet: tuple[str, str] | None = None, *, oldest_first: bool = False) -> Iterator[dict[str, Any]]:
        """Every run's summary (with ``facet``), newest first unless asked, a page at a time."""
        cursor = None
        while True:
            items, cursor = self._catalog.page(limit=_PAGE, cursor=cursor, facet=facet, oldest_first=oldest_first)
            yield from items
            if cursor is None:
                return

    def counts(self, name: str = "status", since: str | None = None) -> dict[str, int]:
        """How many runs have each value of the facet ``name``, over the whole store."""
        return self._catalog.counts(name, since)

    def __len__(self) -> int:
        return sum(self._catalog.counts("status").values())

    def changed_since(self, when: float) -> Iterator[dict[str, Any]]:
        return self._catalog.changed_since(when)

    def stored_active(self) -> Iterator[dict[str, Any]]:
        """The documents of the runs the store has as RUNNING or WAITING (for recovery)."""
        return self._catalog.active()
