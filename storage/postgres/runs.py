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
from collections.abc import Container, Iterator
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from userflow.storage.atomic import StorageError
from userflow.storage.port import ACTIVE, Describe, Entry, StoredRun
from userflow.storage.postgres.catalog import PgCatalog
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
ON CONFLICT (kind, key) DO UPDATE SET run_id = excluded.run_id WHERE lookup_keys.run_id < excluded.run_id
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
# Only a later run takes a key over (ids sort by creation): an old run's commit
# (retention, erasure) must not take back its address from a newer signup.
_PUT_KEYS = """
INSERT INTO lookup_keys (kind, key, run_id)
SELECT k, v, r FROM jsonb_to_recordset(%s::jsonb) AS t (k text, v text, r text)
ON CONFLICT (kind, key) DO UPDATE SET run_id = excluded.run_id WHERE lookup_keys.run_id < excluded.run_id
"""
# A finished run's keys are exactly its own: those its entry no longer names go (erasure).
_DROP_KEYS = """
DELETE FROM lookup_keys l USING jsonb_to_recordset(%s::jsonb) AS t (r text, k text, v jsonb)
WHERE l.run_id = t.r AND l.kind = t.k AND NOT (t.v ? l.key)
"""
# Retention: a document naming the first entry it keeps (timelineFrom) drops the older ones
# in the commit that says so.
_TRIM_TIMELINES = """
DELETE FROM timeline USING jsonb_to_recordset(%s::jsonb) AS t (r text, f int)
WHERE timeline.run_id = t.r AND timeline.seq < t.f
"""
# The catalog's part of a commit: each run's summary, and its facets made exactly
# the given ones (a trigger keeps run_counts in step).
_PUT_SUMMARIES = """
UPDATE runs SET summary = t.s FROM jsonb_to_recordset(%s::jsonb) AS t (r text, s jsonb) WHERE runs.id = t.r
"""
_DROP_FACETS = """
WITH new AS (SELECT r, n, v FROM jsonb_to_recordset(%s::jsonb) AS t (r text, n text, v text))
DELETE FROM run_facets f WHERE f.run_id IN (SELECT r FROM new)
    AND (f.run_id, f.name, f.value) NOT IN (SELECT r, n, v FROM new)
"""
_PUT_FACETS = """
INSERT INTO run_facets (name, value, run_id)
SELECT n, v, r FROM jsonb_to_recordset(%s::jsonb) AS t (r text, n text, v text)
ON CONFLICT DO NOTHING
"""
_FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
SCAN_BATCH = 1000


class _Commit:
    __slots__ = ("run", "entries", "entry", "done", "error")

    def __init__(self, run: dict[str, Any], entries: list[dict[str, Any]], entry: Entry | None) -> None:
        self.run, self.entries, self.entry = run, entries, entry
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
    def __init__(self, pool: ConnectionPool, describe: Describe | None = None) -> None:
        self._pool = pool
        self._describe = describe
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

    def drop_old_copies(self) -> None:
        """Nothing to do: a row's old versions are the database's to reclaim (VACUUM)."""

    # -- the catalog ----------------------------------------------------------------------

    def catalog(self, describe: Describe) -> PgCatalog:
        """Keep the catalog with ``describe`` from now on; first describe the runs that
        have no summary yet (imported, or stored before the catalog existed)."""
        self._describe = describe
        described = 0
        while True:
            rows = PgCatalog(self._pool).rows("SELECT document FROM runs WHERE summary IS NULL ORDER BY id LIMIT %s", (SCAN_BATCH,))
            if not rows:
                break
            runs = [document for (document,) in rows]
            entries = [entry for entry in map(describe, runs) if entry is not None]
            # A run no workflow here describes gets an empty summary: listed nowhere, never asked again.
            blank = [{"r": run["id"], "s": {}} for run in runs if run["id"] not in {e.id for e in entries}]

            def write(connection: psycopg.Connection) -> None:
                _write_catalog(connection, entries)
                if blank:
                    connection.execute(_PUT_SUMMARIES, (_json(blank),))
                if entries:
                    connection.execute(_PUT_KEYS, (_json(_key_rows(entries)),))

            try:
                in_transaction(self._pool, write)
            except (psycopg.Error, OSError) as exc:
                raise _unavailable("describe the runs of", exc) from None
            described += len(runs)
        if described:
            log.info("catalog: %d runs described", described)
        return PgCatalog(self._pool)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._committer.join(timeout=10)

    # -- group commit -------------------------------------------------------------------

    def commit(self, run: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        """Return once the run's document and entries are committed; StorageError if not."""
        # The actor goes on changing its run after this returns: the committer gets a copy.
        # Described here: a hook that fails fails this commit alone, not its group's.
        entry = self._describe(run) if self._describe is not None else None
        item = _Commit(orjson.loads(orjson.dumps(run)), list(entries), entry)
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
            described: dict[str, Entry] = {}
            for item in batch:
                held = newest.get(item.run["id"])
                if held is None or held["version"] < item.run["version"]:
                    newest[item.run["id"]] = item.run
                    if item.entry is not None:
                        described[item.run["id"]] = item.entry
            rows = [_json_row(run) for run in newest.values()]
            entries = [{"r": item.run["id"], "e": entry} for item in batch for entry in item.entries]
            trims = [{"r": run["id"], "f": run["timelineFrom"]} for run in newest.values() if run.get("timelineFrom") is not None]
            # Likewise a key: two runs of one address in a group, the later takes it.
            keys = list({(kind, key): {"k": kind, "v": key, "r": run_id} for kind, key, run_id in self._new_keys(list(described.values()))}.values())
            exact = [
                {"r": e.id, "k": kind, "v": list(values)} for e in described.values() if ACTIVE[0] not in e.facets for kind, values in e.keys.items()
            ]

            def write(connection: psycopg.Connection) -> None:  # safe to repeat: nothing goes back
                connection.execute(_UPSERT_RUNS, (_json(rows),))
                _write_catalog(connection, list(described.values()))
                if entries:
                    connection.execute(_INSERT_ENTRIES, (_json(entries),))
                if keys:
                    connection.execute(_PUT_KEYS, (_json(keys),))
                if exact:
                    connection.execute(_DROP_KEYS, (_json(exact),))
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

    def _new_keys(self, entries: list[Entry]) -> list[tuple[str, str, str]]:
        """The keys of the described runs this store has not written yet (a run's keys
        only grow: its newest entry has them all)."""
        new: list[tuple[str, str, str]] = []
        for entry in entries:
            written = self._written_keys.setdefault(entry.id, set())
            for kind, values in entry.keys.items():
                for value in values:
                    if (kind, value) not in written:
                        written.add((kind, value))
                        new.append((kind, value, entry.id))
        return new


def _write_catalog(connection: psycopg.Connection, entries: list[Entry]) -> None:
    """The catalog's part of a commit: the summaries and facets of the described runs."""
    if not entries:
        return
    connection.execute(_PUT_SUMMARIES, (_json([{"r": e.id, "s": e.summary} for e in entries]),))
    facets = [{"r": e.id, "n": name, "v": value} for e in entries for name, value in e.facets.items()]
    connection.execute(_DROP_FACETS, (_json(facets),))
    connection.execute(_PUT_FACETS, (_json(facets),))


def _key_rows(entries: list[Entry]) -> list[dict[str, str]]:
    return list({(kind, key): {"k": kind, "v": key, "r": e.id} for e in entries for kind, keys in e.keys.items() for key in keys}.values())


def _unavailable(doing: str, exc: BaseException) -> StorageError:
    return StorageError(5, f"could not {doing} the database: {one_line(exc)}")
