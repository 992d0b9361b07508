"""The pack: finished runs' documents, compressed, in one SQLite file (``DATA/packs.sqlite``).

A finished run (COMPLETED, FAILED, CANCELLED) is read now and then and
rewritten rarely (retention, erasure, a retry), yet as a file of its own it
costs a directory entry, an inode and whole blocks of uncompressed JSON. In
the pack it is one row, compressed, beside thousands of others in the same
pages. Active runs stay files: they are rewritten at every step.

A row is ``packed(id, version, document)``:

- ``id``: the run's id (unique);
- ``version``: the run's ``version`` in that document, so "which copy is
  newer" is answered without decompressing anything;
- ``document``: the run file's whole content (the TinyDB database of its
  snapshot and timeline, as ``codec.py`` lays it out), compressed with zlib.
  zlib's checksum of the uncompressed bytes tells a damaged row from a good
  one (:class:`PackRowDamaged`).

The pack is part of the truth, like the run files and the journal (the
catalog is not: it is made again from both). So it lives in a file of its
own rather than beside the catalog, which is synced lazily and thrown away
when damaged; every transaction here is synced before it returns (WAL,
``synchronous=FULL``), since run files are deleted only once their rows are
durable. ``secure_delete`` zeroes what a replaced or deleted row held, and
``drop_old_copies`` empties the write-ahead log, which keeps the pages as
they were before (an erased address).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator

from userflow.storage.atomic import CorruptFileError, StorageError

FILE = "packs.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packed (id TEXT NOT NULL UNIQUE, version INTEGER NOT NULL, document BLOB NOT NULL);
"""
# A rowid table, not WITHOUT ROWID: its leaf pages hold rows of a few KiB
# whole, where an index b-tree would spill each into an overflow page.
_PAGE_SIZE = 16384  # a row is a kilobyte or two: few bytes of each page left over
_CONNECTIONS = 4  # shared by every thread; a read takes a millisecond
_LEVEL = 6


class PackRowDamaged(CorruptFileError):
    """A row of the pack does not decompress to its run's document."""


def compress(document: bytes) -> bytes:
    return zlib.compress(document, _LEVEL)


class Pack:
    """The pack at ``path``; every thread reads through a connection of its own."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._write_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(_CONNECTIONS)
        # Made owner-only before SQLite opens it: its log and shared-memory files take its mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            with self._connection() as connection:
                connection.executescript(_SCHEMA)
                connection.execute("SELECT count(*) FROM packed WHERE id = ''").fetchone()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StorageError(
                5, f"{path} cannot be read ({exc}): it holds finished runs; restore it, or move it aside to start without them"
            ) from None

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # takes on a new file only, before WAL
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")  # a row is durable before its file goes
        connection.execute("PRAGMA secure_delete = ON")
        return connection

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of the few shared by every thread: each run actor is a thread of
        its own, and a connection per thread would hold files open for every one."""
        self._slots.acquire()
        with self._connections_lock:
            connection = self._idle.pop() if self._idle else None
        try:
            if connection is None:
                connection = self._open()
            yield connection
        finally:
            with self._connections_lock:
                if connection is not None:
                    self._idle.append(connection)
            self._slots.release()

    # -- reading ----------------------------------------------------------------------

    def version(self, run_id: str) -> int | None:
        """The packed version of the run, or None if it has no row."""
        with self._connection() as connection:
            row = connection.execute("SELECT version FROM packed WHERE id = ?", (run_id,)).fetchone()
        return int(row[0]) if row else None

    def get(self, run_id: str) -> tuple[int, bytes] | None:
        """The run's (version, document), or None; PackRowDamaged if its row is."""
        with self._connection() as connection:
            row = connection.execute("SELECT version, document FROM packed WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        return int(row[0]), _decompressed(run_id, row[1])

    def rows(self, batch: int = 1000) -> Iterator[tuple[str, int, bytes | None]]:
        """Every row in id order as (id, version, document), the document None if damaged;
        read a batch at a time (no transaction stays open between batches)."""
        after = ""
        while True:
            with self._connection() as connection:
                found = connection.execute(
                    "SELECT id, version, document FROM packed WHERE id > ? ORDER BY id LIMIT ?", (after, batch)
                ).fetchall()
            for run_id, version, document in found:
                try:
                    yield run_id, int(version), _decompressed(run_id, document)
                except PackRowDamaged:
                    yield run_id, int(version), None
            if len(found) < batch:
                return
            after = found[-1][0]

    def raw(self, run_id: str) -> bytes | None:
        """The row's compressed bytes as stored (what a damaged row is quarantined as)."""
        with self._connection() as connection:
            row = connection.execute("SELECT document FROM packed WHERE id = ?", (run_id,)).fetchone()
        return bytes(row[0]) if row else None

    def __len__(self) -> int:
        with self._connection() as connection:
            return int(connection.execute("SELECT count(*) FROM packed").fetchone()[0])

    # -- writing ----------------------------------------------------------------------

    def put(self, rows: Iterable[tuple[str, int, bytes]], *, gone: Iterable[tuple[str, int]] = ()) -> None:
        """In one synced transaction: keep these (id, version, compressed document) rows
        where the pack has none or one no newer (an equal one may be damaged), and delete the rows of ``gone`` (id,
        version) that are older than that version (their files are newer)."""
        with self._write_lock, self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(
                    "INSERT INTO packed VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE"
                    " SET version = excluded.version, document = excluded.document WHERE excluded.version >= packed.version",
                    rows,
                )
                connection.executemany("DELETE FROM packed WHERE id = ? AND version < ?", gone)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def delete(self, run_id: str) -> None:
        with self._write_lock, self._connection() as connection, connection:
            connection.execute("DELETE FROM packed WHERE id = ?", (run_id,))

    def drop_old_copies(self) -> None:
        """Empty the write-ahead log into the file and truncate it: the log still holds
        the pages as they were before the latest changes."""
        with self._write_lock, self._connection() as connection:
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise sqlite3.OperationalError("readers kept the pack's log from being emptied")

    def close(self) -> None:
        with self._connections_lock:
            connections, self._idle = self._idle, []
        for connection in connections:
            connection.close()  # one borrowed now goes back to the idle list: a read after close still works


def _decompressed(run_id: str, document: bytes) -> bytes:
    try:
        return zlib.decompress(document)
    except zlib.error as exc:
        raise PackRowDamaged(f"packed run {run_id}: {exc}") from None
