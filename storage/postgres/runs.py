"""Runs in PostgreSQL: the :class:`~userflow.storage.port.RunStore` of a database.

A run is one row of ``runs`` (its document as jsonb, and the columns queries
filter on) and its timeline rows. Commits are grouped as the data dir's
journal groups them: actor threads hand their commits to one committer
thread, which writes every commit waiting for it in one transaction and
releases them together, so a commit costs a share of one round trip and one
WAL flush instead of one each. A commit returns only once its transaction
has committed: what the engine acknowledges is in the database.

Each commit also writes the run's lookup keys (its address, user id, token
hashes), given by the workflow, so that the run holding a key can be found
in the database; a key written once for a run is not written again while
the run is active.

A document never goes back: an upsert of an older version than the stored
one changes nothing, so a commit retried after its transaction's fate was
unknown (the connection dropped) is harmless.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Container, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from userflow.storage.atomic import StorageError
from userflow.storage.port import IndexCache, StoredRun
from userflow.storage.postgres.connect import in_transaction, one_line

log = logging.getLogger(__name__)

# The statements a run's commit is made of, shared with the import of a data dir
# (storage/transfer.py), so that both write a run the same way.
UPSERT_RUN = """
INSERT INTO runs (id, workflow, definition, format, status, document, version, next_wake_at, created_at, updated_at)
VALUES (%(id)s, %(workflow)s, %(definition)s, %(format)s, %(status)s, %(document)s, %(version)s, %(wake)s, %(created)s, %(updated)s)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status, document = excluded.document, version = excluded.version,
    definition = excluded.definition, format = excluded.format,
    next_wake_at = excluded.next_wake_at, updated_at = excluded.updated_at
WHERE runs.version < excluded.version
"""
INSERT_ENTRY = "INSERT INTO timeline (run_id, seq, entry) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
# A key names one run at a time: a later run takes it over, as in the engine's index.
PUT_KEY = """
INSERT INTO lookup_keys (kind, key, run_id) VALUES (%s, %s, %s)
ON CONFLICT (kind, key) DO UPDATE SET run_id = excluded.run_id WHERE lookup_keys.run_id <> excluded.run_id
"""
# The committer's forms of the same: one statement per table for a whole group of
# commits, its rows passed as one JSON array (orjson writes it in one call, where
# adapting arrays row by row costs Python time on every commit).
_UPSERT_RUNS = """
INSERT INTO runs (id, workflow, definition, format, status, document, version, next_wake_at, created_at, updated_at)
SELECT id, workflow, definition, format, status, document, version, to_timestamp(wake), created, updated
FROM jsonb_to_recordset(%s::jsonb) AS r (id text, workflow text, definition int, format int, status text,
     document jsonb, version bigint, wake float8, created timestamptz, updated timestamptz)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status, document = excluded.document, version = excluded.version,
    definition = excluded.definition, format = excluded.format,
    next_wake_at = excluded.next_wake_at, updated_at = excluded.updated_at
WHERE runs.version < excluded.version
"""
_INSERT_ENTRIES = """
INSERT INTO timeline (run_id, seq, entry)
SELECT r, (e ->> 'seq')::int, e FROM jsonb_to_recordset(%s::jsonb) AS t (r text, e jsonb)
ON CONFLICT DO NOTHING
"""
_PUT_KEYS = """
INSERT INTO lookup_keys (kind, key, run_id)
SELECT k, v, r FROM jsonb_to_recordset(%s::jsonb) AS t (k text, v text, r text)
ON CONFLICT (kind, key) DO UPDATE SET run_id = excluded.run_id WHERE lookup_keys.run_id <> excluded.run_id
"""
# Retention: a document naming the first entry it keeps (timelineFrom) drops the older ones
# in the commit that says so.
_TRIM_TIMELINES = """
DELETE FROM timeline USING jsonb_to_recordset(%s::jsonb) AS t (r text, f int)
WHERE timeline.run_id = t.r AND timeline.seq < t.f
"""
_FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
KeysOf = Callable[[Mapping[str, Any]], dict[str, list[str]]]
SCAN_BATCH = 1000


class _Commit:
    __slots__ = ("run", "entries", "done", "error")

    def __init__(self, run: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        self.run, self.entries = run, entries
        self.done = threading.Event()
        self.error: BaseException | None = None


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _json(rows: list[dict[str, Any]]) -> Jsonb:
    return Jsonb(rows)  # dumped by the connection's orjson


def _json_row(run: dict[str, Any]) -> dict[str, Any]:
    """A run's row for _UPSERT_RUNS (times as JSON gives them; the earliest timer in epoch seconds)."""
    timers = run.get("timers") or {}
    return {
        "id": run["id"],
        "workflow": run["workflow"],
        "definition": int(run.get("definition", 1)),
        "format": int(run.get("format", 1)),
        "status": run["status"],
        "document": run,
        "version": int(run["version"]),
        "wake": min(timers.values()) if timers else None,
        "created": run["createdAt"],
        "updated": run["updatedAt"],
    }


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """The parameters of UPSERT_RUN for a run's document: _json_row's, as typed values."""
    row = _json_row(run)
    wake = row["wake"]
    return {
        **row,
        "document": Jsonb(run),
        "wake": datetime.fromtimestamp(wake, tz=timezone.utc) if wake is not None else None,
        "created": _time(row["created"]),
        "updated": _time(row["updated"]),
    }


class PgRunHandle:
    def __init__(self, store: PgRunStore, run_id: str) -> None:
        self._store = store
        self._run_id = run_id

    def load(self) -> StoredRun | None:
        return self._store.read(self._run_id)

    def commit(self, run: dict[str, Any], new_entries: list[dict[str, Any]]) -> None:
        self._store.commit(run, new_entries)


class PgRunStore:
    def __init__(self, pool: ConnectionPool, keys: KeysOf | None = None) -> None:
        self._pool = pool
        self._keys_of = keys
        self._written_keys: dict[str, set[tuple[str, str]]] = {}  # per active run, touched by the committer only
        self._queue: list[_Commit] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._committer = threading.Thread(target=self._commit_loop, name="userflow-pg-commit", daemon=True)
        self._committer.start()

    # -- the port ---------------------------------------------------------------------

    def open(self, run_id: str) -> PgRunHandle:
        return PgRunHandle(self, run_id)

    def read(self, run_id: str) -> StoredRun | None:
        try:
            with self._pool.connection() as connection:
                row = connection.execute("SELECT document FROM runs WHERE id = %s", (run_id,)).fetchone()
                if row is None:
                    return None
                entries = connection.execute("SELECT entry FROM timeline WHERE run_id = %s ORDER BY seq", (run_id,)).fetchall()
        except (psycopg.Error, OSError) as exc:
            raise _unavailable("read from", exc) from None
        return StoredRun(row[0], [entry for (entry,) in entries])

    def lookup(self, kind: str, key: str) -> str | None:
        """The run holding a lookup key, as the database has it."""
        try:
            with self._pool.connection() as connection:
                row = connection.execute("SELECT run_id FROM lookup_keys WHERE kind = %s AND key = %s", (kind, key)).fetchone()
        except (psycopg.Error, OSError) as exc:
            raise _unavailable("read from", exc) from None
        return row[0] if row else None

    def scan(self, skip: Container[str] = ()) -> Iterator[dict[str, Any]]:
        """Every run's document, in id order, a batch at a time (keyset paging: no long
        transaction). The next batch is fetched while this one is handed out: the
        database's reading overlaps the engine's describing of the runs at a start."""
        batches: queue.Queue[list[tuple[str, dict[str, Any]]] | BaseException] = queue.Queue(maxsize=2)
        stop = threading.Event()

        def fetch() -> None:
            after = ""
            try:
                while not stop.is_set():
                    with self._pool.connection() as connection:
                        rows = connection.execute(
                            "SELECT id, document FROM runs WHERE id > %s ORDER BY id LIMIT %s", (after, SCAN_BATCH)
                        ).fetchall()
                    batches.put(rows)
                    if not rows:
                        return
                    after = rows[-1][0]
            except (psycopg.Error, OSError) as exc:
                batches.put(_unavailable("read from", exc))

        fetcher = threading.Thread(target=fetch, name="userflow-pg-scan", daemon=True)
        fetcher.start()
        try:
            while True:
                batch = batches.get()
                if isinstance(batch, BaseException):
                    raise batch
                if not batch:
                    return
                for run_id, document in batch:
                    if run_id not in skip:
                        yield document
        finally:
            stop.set()
            while fetcher.is_alive():  # a consumer that stopped early: let the fetcher finish its put
                try:
                    batches.get(timeout=0.1)
                except queue.Empty:
                    pass

    def index_cache(self) -> IndexCache | None:
        return None  # the database answers from its tables; nothing to keep between starts

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._committer.join(timeout=10)

    # -- group commit -------------------------------------------------------------------

    def commit(self, run: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        """Return once the run's document and entries are committed; StorageError if not."""
        # The actor goes on changing its run after this returns: the committer gets a copy.
        item = _Commit(orjson.loads(orjson.dumps(run)), list(entries))
        with self._cond:
            if self._stopped:
                raise StorageError(5, "the run store is closed")
            self._queue.append(item)
            self._cond.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error

    def _commit_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                batch, self._queue = self._queue, []
                if not batch and self._stopped:
                    return
            self._write(batch)

    def _write(self, batch: list[_Commit]) -> None:
        try:
            # An upsert cannot touch one row twice: of two commits of one run, the newer.
            newest: dict[str, dict[str, Any]] = {}
            for item in batch:
                held = newest.get(item.run["id"])
                if held is None or held["version"] < item.run["version"]:
                    newest[item.run["id"]] = item.run
            rows = [_json_row(run) for run in newest.values()]
            entries = [{"r": item.run["id"], "e": entry} for item in batch for entry in item.entries]
            # Likewise a key: two runs of one address in a group, the later takes it.
            keys = list({(kind, key): {"k": kind, "v": key, "r": run_id} for kind, key, run_id in self._new_keys(batch)}.values())
            trims = [{"r": run["id"], "f": run["timelineFrom"]} for run in newest.values() if run.get("timelineFrom") is not None]

            def write(connection: psycopg.Connection) -> None:  # safe to repeat: nothing goes back
                connection.execute(_UPSERT_RUNS, (_json(rows),))
                if entries:
                    connection.execute(_INSERT_ENTRIES, (_json(entries),))
                if keys:
                    connection.execute(_PUT_KEYS, (_json(keys),))
                if trims:
                    connection.execute(_TRIM_TIMELINES, (_json(trims),))

            in_transaction(self._pool, write)
        except Exception as exc:  # noqa: BLE001 - every waiter learns of it
            log.error("run commit failed (%d runs): %s", len(batch), one_line(exc))
            error = _unavailable("persist to", exc)
            for item in batch:
                item.error = error
                self._written_keys.pop(item.run["id"], None)  # not known to be written: write them again
        for item in batch:
            if item.run["status"] in _FINISHED:
                self._written_keys.pop(item.run["id"], None)
            item.done.set()

    def _new_keys(self, batch: list[_Commit]) -> list[tuple[str, str, str]]:
        if self._keys_of is None:
            return []
        new: list[tuple[str, str, str]] = []
        for item in batch:
            run_id = item.run["id"]
            written = self._written_keys.setdefault(run_id, set())
            for kind, values in self._keys_of(item.run).items():
                for value in values:
                    if (kind, value) not in written:
                        written.add((kind, value))
                        new.append((kind, value, run_id))
        return new


def _unavailable(doing: str, exc: BaseException) -> StorageError:
    return StorageError(5, f"could not {doing} the database: {one_line(exc)}")
