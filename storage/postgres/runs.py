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

With a node's lease (many nodes on one database), a run is executed only by
the node that claimed it. Activating a run claims it (``owner`` set to this
node, ``epoch`` raised) unless another live node holds it; every commit is
fenced by that claim (the upsert changes the row only while owner and epoch
are still this claim's, and whatever the commit would have added for a
fenced run is left out of the transaction); stopping the actor releases it.
Waiting runs are unowned, so a dead node leaves behind only the runs it was
executing (``claims.py``). The statements are ``run_sql.py``'s.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Container, Iterator
from typing import Any

import orjson
import psycopg
from psycopg_pool import ConnectionPool

from userflow.storage.atomic import StorageError
from userflow.storage.port import ACTIVE, Describe, Entry, RunMoved, StoredRun
from userflow.storage.postgres.catalog import PgCatalog
from userflow.storage.postgres.claims import PgClaims
from userflow.storage.postgres.connect import in_transaction, one_line
from userflow.storage.postgres.nodes import NodeLease
from userflow.storage.postgres.run_sql import (
    DROP_KEYS,
    INSERT_ENTRIES,
    PUT_FACETS,
    PUT_KEYS,
    PUT_SUMMARIES,
    RELEASE,
    TRIM_TIMELINES,
    UPSERT_RUNS,
    as_json,
    json_row,
)

log = logging.getLogger(__name__)

_FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
SCAN_BATCH = 1000


class _Commit:
    __slots__ = ("run", "entries", "entry", "owner", "epoch", "done", "error")

    def __init__(self, run: dict[str, Any], entries: list[dict[str, Any]], entry: Entry | None, owner: str | None, epoch: int) -> None:
        self.run, self.entries, self.entry = run, entries, entry
        self.owner, self.epoch = owner, epoch
        self.done = threading.Event()
        self.error: BaseException | None = None


class PgRunHandle:
    def __init__(self, store: PgRunStore, run_id: str, lease: NodeLease | None) -> None:
        self._store = store
        self._run_id = run_id
        self._lease = lease
        self._epoch = 0  # none yet: a run created here is claimed by its first commit, as epoch 1
        self._generation = lease.generation if lease is not None else 0

    def load(self) -> StoredRun | None:
        if self._lease is None:
            return self._store.read(self._run_id)
        self._generation = self._lease.generation
        claimed = self._store.claim(self._run_id)
        if claimed is None:
            return None
        document, self._epoch = claimed
        return StoredRun(document, [])  # an actor executes from the document; the timeline is for readers

    def commit(self, run: dict[str, Any], new_entries: list[dict[str, Any]]) -> None:
        if self._lease is None:
            self._store.commit(run, new_entries)
            return
        if not self.held():
            raise RunMoved(self._run_id, "is no longer this node's: its lease lapsed")
        if self._epoch == 0:
            self._epoch = 1
        self._store.commit(run, new_entries, self._lease.node_id, self._epoch)

    def held(self) -> bool:
        return self._lease is None or self._lease.holds(self._generation)

    def release(self) -> None:
        if self._lease is not None and self._epoch:
            self._store.release(self._run_id, self._epoch)


class PgRunStore:
    def __init__(self, pool: ConnectionPool, describe: Describe | None = None, lease: NodeLease | None = None, url: str = "") -> None:
        self._pool = pool
        self._describe = describe
        self.lease = lease
        self._claims = PgClaims(pool, lease, url) if lease is not None else None
        self._written_keys: dict[str, set[tuple[str, str]]] = {}  # per active run, touched by the committer only
        self._queue: list[_Commit] = []
        self._releases: list[dict[str, Any]] = []
        self._keys_written: list[dict[str, str]] = []  # the committer's: keys of the transaction under way
        self._cond = threading.Condition()
        self._stopped = False
        self._committer = threading.Thread(target=self._commit_loop, name="userflow-pg-commit", daemon=True)
        self._committer.start()

    # -- the port ---------------------------------------------------------------------

    def open(self, run_id: str) -> PgRunHandle:
        return PgRunHandle(self, run_id, self.lease)

    def claims(self) -> PgClaims | None:
        return self._claims

    def claim(self, run_id: str) -> tuple[dict[str, Any], int] | None:
        assert self._claims is not None
        return self._claims.claim(run_id)

    def release(self, run_id: str, epoch: int) -> None:
        """Give the run up (written with the next group of commits; not waited for)."""
        with self._cond:
            self._releases.append({"r": run_id, "e": epoch})
            self._cond.notify()

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
                    connection.execute(PUT_SUMMARIES, (as_json(blank),))
                if entries:
                    connection.execute(PUT_KEYS, (as_json(_key_rows(entries)),))

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
        if self._claims is not None:
            self._claims.close()

    # -- group commit -------------------------------------------------------------------

    def commit(self, run: dict[str, Any], entries: list[dict[str, Any]], owner: str | None = None, epoch: int = 0) -> None:
        """Return once the run's document and entries are committed; StorageError if not,
        RunMoved if the claim (``owner``, ``epoch``) no longer holds the run."""
        # The actor goes on changing its run after this returns: the committer gets a copy.
        # Described here: a hook that fails fails this commit alone, not its group's.
        entry = self._describe(run) if self._describe is not None else None
        item = _Commit(orjson.loads(orjson.dumps(run)), list(entries), entry, owner, epoch)
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
                while not self._queue and not self._releases and not self._stopped:
                    self._cond.wait()
                batch, self._queue = self._queue, []
                releases, self._releases = self._releases, []
                if not batch and not releases and self._stopped:
                    return
            self._write(batch, releases)

    def _write(self, batch: list[_Commit], releases: list[dict[str, Any]] | None = None) -> None:
        fenced: set[str] = set()
        try:
            # An upsert cannot touch one row twice: of two commits of one run, the later
            # claim's, then the newer.
            newest: dict[str, _Commit] = {}
            for item in batch:
                held = newest.get(item.run["id"])
                if held is None or (held.epoch, held.run["version"]) < (item.epoch, item.run["version"]):
                    newest[item.run["id"]] = item
            rows = [{**json_row(item.run), "owner": item.owner, "epoch": item.epoch if item.owner else -1} for item in newest.values()]

            def write(connection: psycopg.Connection) -> None:  # safe to repeat: nothing goes back
                written = {run_id for (run_id,) in connection.execute(UPSERT_RUNS, (as_json(rows),)).fetchall()} if rows else set()
                fenced.clear()
                fenced.update(self._fenced(connection, [item for run_id, item in newest.items() if run_id not in written]))
                kept = [item for item in batch if item.run["id"] not in fenced and item.epoch == newest[item.run["id"]].epoch]
                self._write_rest(connection, [newest[run_id] for run_id in written], kept)
                if releases:
                    owner = self.lease.node_id if self.lease is not None else None
                    connection.execute(RELEASE, (as_json(releases), owner))

            in_transaction(self._pool, write)
            for key in self._keys_written:
                self._written_keys.setdefault(key["r"], set()).add((key["k"], key["v"]))
        except Exception as exc:  # noqa: BLE001 - every waiter learns of it
            log.error("run commit failed (%d runs): %s", len(batch), one_line(exc))
            error = _unavailable("persist to", exc)
            for item in batch:
                item.error = error
                self._written_keys.pop(item.run["id"], None)  # not known to be written: write them again
            with self._cond:
                self._releases[:0] = releases or []  # given up with the next group
        for item in batch:
            if item.error is None and (item.run["id"] in fenced or item.epoch != newest[item.run["id"]].epoch):
                item.error = RunMoved(item.run["id"], "was taken over by another node")
                self._written_keys.pop(item.run["id"], None)
            if item.run["status"] in _FINISHED:
                self._written_keys.pop(item.run["id"], None)
            item.done.set()

    @staticmethod
    def _fenced(connection: psycopg.Connection, unwritten: list[_Commit]) -> set[str]:
        """Of the commits the upsert did not write, those whose claim no longer holds the
        run; the others were older than the stored version (a retried commit): harmless."""
        claimed = {item.run["id"]: (item.owner, item.epoch) for item in unwritten if item.owner is not None}
        if not claimed:
            return set()
        rows = connection.execute("SELECT id, owner, epoch FROM runs WHERE id = ANY(%s)", (list(claimed),)).fetchall()
        return {run_id for run_id, owner, epoch in rows if (owner, epoch) != claimed[run_id]}

    def _write_rest(self, connection: psycopg.Connection, newest: list[_Commit], kept: list[_Commit]) -> None:
        """What the commits that stand add besides the runs' rows: timeline entries, the
        catalog, lookup keys, trimmed timelines."""
        described = {item.run["id"]: item.entry for item in newest if item.entry is not None}
        entries = [{"r": item.run["id"], "e": entry} for item in kept for entry in item.entries]
        trims = [{"r": item.run["id"], "f": item.run["timelineFrom"]} for item in newest if item.run.get("timelineFrom") is not None]
        # Likewise a key: two runs of one address in a group, the later takes it.
        keys = list({(kind, key): {"k": kind, "v": key, "r": run_id} for kind, key, run_id in self._new_keys(list(described.values()))}.values())
        self._keys_written = keys
        exact = [
            {"r": e.id, "k": kind, "v": list(values)} for e in described.values() if ACTIVE[0] not in e.facets for kind, values in e.keys.items()
        ]
        _write_catalog(connection, list(described.values()))
        if entries:
            connection.execute(INSERT_ENTRIES, (as_json(entries),))
        if keys:
            connection.execute(PUT_KEYS, (as_json(keys),))
        if exact:
            connection.execute(DROP_KEYS, (as_json(exact),))
        if trims:
            connection.execute(TRIM_TIMELINES, (as_json(trims),))

    def _new_keys(self, entries: list[Entry]) -> list[tuple[str, str, str]]:
        """The keys of the described runs this store has not written yet (a run's keys
        only grow: its newest entry has them all)."""
        new: list[tuple[str, str, str]] = []
        for entry in entries:
            written = self._written_keys.get(entry.id, ())
            for kind, values in entry.keys.items():
                for value in values:
                    if (kind, value) not in written:
                        new.append((kind, value, entry.id))
        return new


def _write_catalog(connection: psycopg.Connection, entries: list[Entry]) -> None:
    """The catalog's part of a commit: the summaries and facets of the described runs."""
    if not entries:
        return
    connection.execute(PUT_SUMMARIES, (as_json([{"r": e.id, "s": e.summary} for e in entries]),))
    facets = [{"r": e.id, "n": name, "v": value} for e in entries for name, value in e.facets.items()]
    connection.execute(PUT_FACETS, (as_json(facets),))


def _key_rows(entries: list[Entry]) -> list[dict[str, str]]:
    return list({(kind, key): {"k": kind, "v": key, "r": e.id} for e in entries for kind, keys in e.keys.items() for key in keys}.values())


def _unavailable(doing: str, exc: BaseException) -> StorageError:
    return StorageError(5, f"could not {doing} the database: {one_line(exc)}")
