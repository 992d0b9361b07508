"""One run's file: a TinyDB database of two tables, written whole at each commit.

- ``run``: a single document, the run's snapshot (cursor, steps, attempts,
  timers, pending signals, workflow state);
- ``timeline``: one document per entry, keyed by its sequence number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tinydb import TinyDB

from userflow.storage import codec
from userflow.storage.atomic import AtomicJSONStorage
from userflow.storage.port import StoredRun


class RunFile:
    """One run's TinyDB database, one durable write per commit.

    Alone it writes its file atomically; opened by a :class:`FileRunStore` it
    hands each write to the store's journal instead (``sink(version,
    document, note)``, where ``note`` is what ``note_for(run)`` made of the
    run before anything was written: its catalog entry), and first reads the
    store's latest document (``source``).
    """

    def __init__(
        self,
        path: str,
        sink: Callable[[int, bytes, object], None] | None = None,
        source: Callable[[], bytes | None] | None = None,
        note_for: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        self._version = 0
        self._note: object = None
        self._note_for = note_for
        to_sink = (lambda document: sink(self._version, document, self._note)) if sink is not None else None
        self._db = TinyDB(path, storage=AtomicJSONStorage, sink=to_sink, source=source)
        self._runs = self._db.table(codec.RUN_TABLE, cache_size=0)
        self._timeline = self._db.table(codec.TIMELINE_TABLE, cache_size=0)

    def load(self) -> StoredRun | None:
        run = self._runs.get(doc_id=int(codec.RUN_DOC))
        if run is None:
            return None
        entries = sorted(self._timeline.all(), key=lambda doc: doc.doc_id)
        return StoredRun(dict(run), [dict(entry) for entry in entries])

    def commit(self, run: dict[str, Any], new_entries: list[dict[str, Any]]) -> None:
        # The same document TinyDB's upserts would produce, written in place:
        # its table API rebuilds every table on each call, which on the hot path
        # cost more than the whole journal append.
        storage: AtomicJSONStorage = self._db.storage  # type: ignore[assignment]
        self._version = int(run.get("version", 0))
        # Described first: a hook that fails fails the commit before anything is durable.
        self._note = self._note_for(run) if self._note_for is not None else None
        storage.write(codec.committed(storage.read(), run, new_entries))

    def held(self) -> bool:
        return True  # one process per data dir: nobody else executes its runs

    def release(self) -> None:
        """Nothing to give up: the data dir's lock is the whole claim."""
