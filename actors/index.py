"""The in-memory index of all runs: summaries for listings and lookup keys.

It is the read side of the engine. Run actors update it after every commit;
HTTP handlers read it directly (under its lock) without a round trip through
an actor. Recovery rebuilds it from the run files, or for the runs whose file
has not changed since it was saved, from the saved index (``line_for``,
``restore``; see ``saved_index``).
"""

from __future__ import annotations

import bisect
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from userflow.actors.definitions import Definitions, UnknownDefinition
from userflow.actors.workflow import Workflow

#: Called after every commit with the run's snapshot, its summary and the new timeline entries.
log = logging.getLogger(__name__)

Listener = Callable[[Mapping[str, Any], dict[str, Any], list[dict[str, Any]]], None]


def current_step(run: Mapping[str, Any]) -> str | None:
    steps = run["steps"]
    cursor = run["cursor"]
    return steps[cursor]["id"] if cursor < len(steps) else None


def _flat(timers: Iterable[tuple[str, float]]) -> tuple[str | float, ...]:
    """``(name, due, name, due, ...)``: the smallest shape for what every waiting run holds."""
    flat: list[str | float] = []
    for name, due in timers:  # a loop, not a generator: this runs at every commit
        flat += (sys.intern(name), float(due))
    return tuple(flat)


def _restored_timers(timers: list[Any]) -> tuple[str | float, ...]:
    """An exported ``(name, due, ...)`` list back as ``_flat`` makes it, checked."""
    timers[0::2] = map(sys.intern, timers[0::2])  # TypeError unless every name is a string
    if len(timers) % 2 or not all(type(due) is float for due in timers[1::2]):
        raise ValueError(f"malformed timers {timers!r}")
    return tuple(timers)


def _saved_line(run_id: str, summary: Mapping[str, Any], timers: tuple[str | float, ...]) -> bytes:
    """A run's line in the saved index, as ``restore`` reads it back."""
    return orjson.dumps([run_id, summary, timers])


class RunIndex:
    def __init__(self, workflows: Mapping[str, Workflow]) -> None:
        self._workflows = workflows
        self._lock = threading.Lock()
        self._summaries: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []  # run ids ascending; ids sort by creation time
        self._keys: dict[str, dict[str, str]] = {}
        self._timers: dict[str, tuple[str | float, ...]] = {}  # armed timers, name, due, ...: for export
        self._listeners: list[Listener] = []

    def _definition(self, run: Mapping[str, Any]) -> Workflow:
        """The version the run follows, or its workflow's newest if not shipped."""
        if isinstance(self._workflows, Definitions):
            try:
                return self._workflows.of(run)
            except UnknownDefinition:
                pass
        return self._workflows[run["workflow"]]

    def summarise(self, run: Mapping[str, Any]) -> dict[str, Any]:
        workflow = self._definition(run)
        summary = {
            "id": run["id"],
            "workflow": run["workflow"],
            "status": run["status"],
            "currentStep": current_step(run),
            "outcome": run.get("outcome"),
            "error": run.get("error"),
            "createdAt": run["createdAt"],
            "updatedAt": run["updatedAt"],
            "finishedAt": run.get("finishedAt"),
            "definition": run.get("definition", 1),
            "events": len(run.get("events", ())),  # how many the run has told of (webhooks)
            "detailsDropped": run.get("detailsDropped"),  # by retention
        }
        summary.update(workflow.summary(run))
        return summary

    def put(
        self, run: Mapping[str, Any], entries: list[dict[str, Any]] | None = None, *, notify: bool = True
    ) -> dict[str, Any]:
        """Record the run's latest committed snapshot; tell listeners what changed (unless
        ``notify`` is False: recovery loads what is already known, nothing changed)."""
        summary = self.summarise(run)
        keys = self._definition(run).keys(run)
        timers = _flat(run.get("timers", {}).items())
        run_id = run["id"]
        with self._lock:
            if run_id not in self._summaries:
                bisect.insort(self._order, run_id)
            self._summaries[run_id] = summary
            if timers:
                self._timers[run_id] = timers
            else:
                self._timers.pop(run_id, None)
            for kind, values in keys.items():
                table = self._keys.setdefault(kind, {})
                for value in values:
                    table[value] = run_id
            listeners = list(self._listeners) if notify else []
        for listener in listeners:
            try:
                listener(run, summary, entries or [])
            except Exception:  # an observer must never break the run it observes
                log.exception("index listener failed")
        return summary

    def line_for(self, run: Mapping[str, Any]) -> tuple[bytes, dict[str, list[str]]] | None:
        """A run as the saved index keeps it: its line for ``restore`` and its keys
        (which go in the key tables, the first line); None for an unknown workflow."""
        workflow = self._workflows.get(run.get("workflow", ""))
        if workflow is None:
            return None
        return _saved_line(run["id"], self.summarise(run), _flat(run.get("timers", {}).items())), workflow.keys(run)

    def saved_lines(self, run_ids: list[str]) -> dict[str, tuple[bytes, dict[str, list[str]]]]:
        """``line_for`` of each indexed run in ``run_ids``, from what the index holds."""
        wanted = set(run_ids)
        keys: dict[str, dict[str, list[str]]] = {}
        lines: dict[str, tuple[bytes, dict[str, list[str]]]] = {}
        with self._lock:
            if wanted:
                for kind, table in self._keys.items():
                    for value, run_id in table.items():
                        if run_id in wanted:
                            keys.setdefault(run_id, {}).setdefault(kind, []).append(value)
            for run_id in run_ids:
                summary = self._summaries.get(run_id)
                if summary is not None:
                    lines[run_id] = (_saved_line(run_id, summary, self._timers.get(run_id, ())), keys.get(run_id, {}))
        return lines

    def restore(self, lines: Iterable[bytes | memoryview], runs: Iterable[str]) -> list[str]:
        """Add the saved runs that are in ``runs`` (listeners are not told); return
        their ids. A damaged run line is skipped (the caller reads that run from
        storage); damaged keys raise before any run is added. Parsed one line at a
        time: the whole export parsed at once left memory scattered."""
        lines = iter(lines)
        first = orjson.loads(next(lines, b"null"))
        if not (isinstance(first, dict) and isinstance(first.get("keys"), dict)):
            raise ValueError("the saved index does not start with its keys")
        same = {run_id: run_id for run_id in runs}  # one string object per id, shared by every table
        restored: list[str] = []
        with self._lock:
            for kind, table in first["keys"].items():
                stale = [value for value, run_id in table.items() if run_id not in same]
                for value in stale:
                    del table[value]
                for value, run_id in table.items():
                    table[value] = same[run_id]
                if kind in self._keys:
                    self._keys[kind].update(table)
                else:
                    self._keys[kind] = table  # as parsed: a copy would leave the parsed one's memory in holes
            try:
                for line in lines:
                    try:
                        run_id, summary, flat = self._restored_run(line, same)
                    except (ValueError, TypeError, KeyError):  # JSONDecodeError is a ValueError
                        continue
                    if run_id not in self._summaries:
                        self._order.append(run_id)
                    self._summaries[run_id] = summary
                    if flat:
                        self._timers[run_id] = flat
                    restored.append(run_id)
            finally:
                self._order.sort()
        return restored

    def _restored_run(self, line: bytes | memoryview, same: Mapping[str, str]) -> tuple[str, dict[str, Any], tuple[str | float, ...]]:
        """One saved run line, checked: raises if it is not what ``line_for`` writes."""
        exported_id, summary, timers = orjson.loads(line)
        run_id = same[exported_id]
        if not isinstance(summary, dict) or summary.get("id") != run_id or summary.get("workflow") not in self._workflows:
            raise ValueError(f"not a saved run: {exported_id!r}")
        if isinstance(self._workflows, Definitions) and not self._workflows.can_run(summary):
            raise ValueError(f"run {run_id}: its definition is not shipped; read from its file")
        return run_id, summary, _restored_timers(timers)

    def armed(self, run_ids: Iterable[str]) -> Iterator[tuple[str, str, tuple[str | float, ...]]]:
        """Each run's id, status and timers as ``(name, due, name, due, ...)``."""
        for run_id in run_ids:
            summary = self._summaries.get(run_id)
            if summary is not None:
                yield run_id, summary["status"], self._timers.get(run_id, ())

    def timers(self, run_id: str) -> dict[str, float]:
        """The run's armed timers as of its last commit."""
        with self._lock:
            flat = self._timers.get(run_id, ())
        return dict(zip(flat[::2], flat[1::2], strict=True))  # type: ignore[arg-type]

    def forget(self, run_id: str) -> None:
        """Drop a run that never became durable."""
        with self._lock:
            self._timers.pop(run_id, None)
            if self._summaries.pop(run_id, None) is None:
                return
            index = bisect.bisect_left(self._order, run_id)
            if index < len(self._order) and self._order[index] == run_id:
                del self._order[index]
            for table in self._keys.values():
                for value in [v for v, rid in table.items() if rid == run_id]:
                    del table[value]

    def reserve(self, kind: str, value: str, run_id: str) -> None:
        """Claim a key before the run's first commit, so a racing duplicate sees it."""
        with self._lock:
            self._keys.setdefault(kind, {})[value] = run_id

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._summaries.get(run_id)

    def lookup(self, kind: str, value: str) -> str | None:
        with self._lock:
            return self._keys.get(kind, {}).get(value)

    def __len__(self) -> int:
        with self._lock:
            return len(self._summaries)

    def counts(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for summary in self._summaries.values():
                counts[summary["status"]] = counts.get(summary["status"], 0) + 1
            return counts

    def newest(
        self,
        *,
        before: str | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Summaries newest first, strictly older than run ``before`` if given."""
        with self._lock:
            end = bisect.bisect_left(self._order, before) if before else len(self._order)
            ids = self._order[:end]
        # Iterate outside the lock: a slow consumer must not stall the actors.
        for run_id in reversed(ids):
            summary = self._summaries.get(run_id)
            if summary is not None and (where is None or where(summary)):
                yield summary

    def page(
        self,
        *,
        limit: int,
        before: str | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of summaries, newest first, and the cursor of the next page."""
        items: list[dict[str, Any]] = []
        more = False
        for summary in self.newest(before=before, where=where):
            if len(items) == limit:
                more = True
                break
            items.append(summary)
        return items, (items[-1]["id"] if more and items else None)
