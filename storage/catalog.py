"""The data dir's catalog of runs: what lists, filters, counts and lookups read.

Keeping a summary of every run ever in memory makes a server's size and start
grow with every user it has had. The catalog keeps them in SQLite beside the
run files instead (``DATA/catalog.sqlite``), so memory follows the active
runs only. Per run it holds:

- its summary, as the engine describes it (what a list shows), as JSON, and
  when it last changed;
- its facets: the values lists filter and count by (``{"status": "WAITING",
  "user": "PENDING"}``), one row each, so "newest first with status S after
  cursor C" is a walk of one index however many runs there are;
- its lookup keys (an address, a user id, a token hash), each naming one run
  at a time: a later run takes a key over, as a new signup after an expired one does.

Counts per facet are kept as counters, changed in the transaction that changes
a run's facets, so counting a million runs reads a few rows.

The catalog is derived data: the run files and the journal are the truth.
The store writes it once the journal has made a change durable, in WAL mode
with ``synchronous=NORMAL`` (a crash may lose its last transactions, never
tear one), and makes it durable (``sync``) before it drops the journal
segments those changes came from: so whatever a crash took from the catalog,
the journal still holds, and the store puts it back at the next start. Runs
it must describe again are listed in ``stale`` (changed while nobody could
describe them). A catalog never finished (``built``) is made again from the
run files. Readers each have a connection of their own (WAL lets them read
while one writes).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from userflow.storage.port import ACTIVE, Entry

#: The layout of the catalog file; another is rebuilt, never read.
FORMAT = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, summary BLOB NOT NULL, changed REAL NOT NULL);
CREATE INDEX IF NOT EXISTS runs_changed ON runs (changed);
CREATE TABLE IF NOT EXISTS facets (
    name TEXT NOT NULL, value TEXT NOT NULL, run_id TEXT NOT NULL,
    PRIMARY KEY (name, value, run_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS facets_run ON facets (run_id);
CREATE TABLE IF NOT EXISTS counts (name TEXT NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (name, value)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (kind TEXT NOT NULL, key TEXT NOT NULL, run_id TEXT NOT NULL,
    PRIMARY KEY (kind, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_run ON keys (run_id);
CREATE TABLE IF NOT EXISTS stale (run_id TEXT PRIMARY KEY) WITHOUT ROWID;
"""

# ``runs`` is a rowid table: a summary of about a kilobyte fits whole in its leaf
# pages, where a WITHOUT ROWID table (an index b-tree) spills each into a page of its own.

_LAST = "\uffff"  # sorts after every run id


class CatalogDamaged(RuntimeError):
    """The catalog file cannot be used (another layout, or not SQLite): rebuild it."""


class SqliteCatalog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # Made owner-only before SQLite opens it: its log and shared-memory files take its mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            connection = self._connection()
            connection.executescript(_SCHEMA)
            found = connection.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if found is None:
                with connection:
                    connection.execute("INSERT INTO meta VALUES ('format', ?)", (str(FORMAT),))
            elif found[0] != str(FORMAT):
                raise CatalogDamaged(f"{path} has layout {found[0]}, this release reads {FORMAT}")
            pages, size = connection.execute("PRAGMA page_count").fetchone()[0], connection.execute("PRAGMA page_size").fetchone()[0]
            if os.path.getsize(path) < pages * size and not os.path.exists(path + "-wal"):
                raise CatalogDamaged(f"{path} is cut short: {os.path.getsize(path)} bytes of {pages * size}")
            connection.execute("SELECT count(*) FROM counts").fetchone()  # a damaged page fails here, not later
        except CatalogDamaged:
            self.close()
            raise
        except sqlite3.DatabaseError as exc:
            self.close()
            raise CatalogDamaged(f"{path} cannot be read: {exc}") from None

    @classmethod
    def fresh(cls, path: str) -> SqliteCatalog:
        """An empty catalog at ``path``, whatever was there."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass
        return cls(path)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # Autocommit at the driver; transactions are opened explicitly where wanted.
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute("PRAGMA secure_delete = ON")  # what a run no longer has (an erased address) is zeroed
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    # -- writing ----------------------------------------------------------------------

    def put(self, entries: Iterable[Entry], *, gone: Iterable[str] = (), stale: Iterable[str] = (), fresh: Iterable[str] = ()) -> None:
        """In one transaction: keep these runs' newest entries, leave out the runs ``gone``,
        list the runs ``stale`` (to describe again) and strike the ``fresh`` ones off it."""
        connection = self._connection()
        with self._write_lock:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for entry in entries:
                    self._put(connection, entry)
                for run_id in gone:
                    self._remove(connection, run_id)
                connection.executemany("INSERT OR IGNORE INTO stale VALUES (?)", ((run_id,) for run_id in stale))
                connection.executemany("DELETE FROM stale WHERE run_id = ?", ((run_id,) for run_id in fresh))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def _put(self, connection: sqlite3.Connection, entry: Entry) -> None:
        connection.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", (entry.id, orjson.dumps(entry.summary), entry.changed))
        old = dict(connection.execute("SELECT name, value FROM facets WHERE run_id = ?", (entry.id,)).fetchall())
        for name, value in old.items():
            if entry.facets.get(name) != value:
                self._drop_facet(connection, name, value, entry.id)
        for name, value in entry.facets.items():
            if old.get(name) != value:
                connection.execute("INSERT INTO facets VALUES (?, ?, ?)", (name, value, entry.id))
                connection.execute(
                    "INSERT INTO counts VALUES (?, ?, 1) ON CONFLICT (name, value) DO UPDATE SET n = n + 1", (name, value)
                )
        for kind, values in entry.keys.items():
            values = list(values)
            for value in values:
                # Only a later run takes a key over (ids sort by creation): an old run's
                # commit (retention, erasure) must not take back its address from a newer signup.
                connection.execute(
                    "INSERT INTO keys VALUES (?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET run_id = excluded.run_id"
                    " WHERE excluded.run_id > keys.run_id",
                    (kind, value, entry.id),
                )
            if ACTIVE[0] not in entry.facets:  # a finished run's keys are exactly its own (erasure drops some)
                held = [key for (key,) in connection.execute("SELECT key FROM keys WHERE run_id = ? AND kind = ?", (entry.id, kind))]
                for key in set(held) - set(values):
                    connection.execute("DELETE FROM keys WHERE kind = ? AND key = ? AND run_id = ?", (kind, key, entry.id))

    def _remove(self, connection: sqlite3.Connection, run_id: str) -> None:
        for name, value in connection.execute("SELECT name, value FROM facets WHERE run_id = ?", (run_id,)).fetchall():
            self._drop_facet(connection, name, value, run_id)
        connection.execute("DELETE FROM keys WHERE run_id = ?", (run_id,))
        connection.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    @staticmethod
    def _drop_facet(connection: sqlite3.Connection, name: str, value: str, run_id: str) -> None:
        connection.execute("DELETE FROM facets WHERE name = ? AND value = ? AND run_id = ?", (name, value, run_id))
        connection.execute("UPDATE counts SET n = n - 1 WHERE name = ? AND value = ?", (name, value))

    def mark_built(self) -> None:
        """Say that every run file is described (a rebuild that finished)."""
        connection = self._connection()
        with self._write_lock, connection:
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('built', 'yes')")
        self.sync()

    def sync(self) -> None:
        """Make every transaction so far durable: one synced commit syncs the WAL before it."""
        connection = self._connection()
        with self._write_lock:
            connection.execute("PRAGMA synchronous = FULL")
            try:
                with connection:
                    connection.execute("INSERT OR REPLACE INTO meta VALUES ('synced', 'yes')")
            finally:
                connection.execute("PRAGMA synchronous = NORMAL")

    def drop_old_copies(self) -> None:
        """Empty the write-ahead log into the file and truncate it: the log still holds
        the pages as they were before the latest changes (an erased address)."""
        connection = self._connection()
        with self._write_lock:
            busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise sqlite3.OperationalError("readers kept the catalog's log from being emptied")

    # -- reading ----------------------------------------------------------------------

    def built(self) -> bool:
        return self._connection().execute("SELECT 1 FROM meta WHERE name = 'built'").fetchone() is not None

    def stale(self) -> list[str]:
        return [run_id for (run_id,) in self._connection().execute("SELECT run_id FROM stale").fetchall()]

    def get(self, run_id: str) -> dict[str, Any] | None:
        row = self._connection().execute("SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def lookup(self, kind: str, key: str) -> str | None:
        row = self._connection().execute("SELECT run_id FROM keys WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return row[0] if row else None

    def page(
        self, *, limit: int, cursor: str | None = None, facet: tuple[str, str] | None = None, oldest_first: bool = False
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Summaries newest first (ids sort by creation), or oldest first, strictly past
        ``cursor``, with ``facet`` (name, value) if given; and the cursor of the next page."""
        connection = self._connection()
        compare, order = (">", "ASC") if oldest_first else ("<", "DESC")
        bound = cursor if cursor is not None else ("" if oldest_first else _LAST)
        if facet is None:
            rows = connection.execute(
                f"SELECT id, summary FROM runs WHERE id {compare} ? ORDER BY id {order} LIMIT ?", (bound, limit + 1)
            ).fetchall()
        else:
            rows = connection.execute(
                f"""SELECT runs.id, runs.summary FROM facets JOIN runs ON runs.id = facets.run_id
                   WHERE facets.name = ? AND facets.value = ? AND facets.run_id {compare} ?
                   ORDER BY facets.run_id {order} LIMIT ?""",
                (facet[0], facet[1], bound, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [orjson.loads(summary) for _, summary in rows], (rows[-1][0] if more and rows else None)

    def ids(self, facet: tuple[str, str]) -> list[str]:
        """Every run with the facet, oldest first."""
        rows = self._connection().execute(
            "SELECT run_id FROM facets WHERE name = ? AND value = ? ORDER BY run_id", facet
        ).fetchall()
        return [run_id for (run_id,) in rows]

    def changed_since(self, when: float) -> Iterator[dict[str, Any]]:
        rows = self._connection().execute("SELECT summary FROM runs WHERE changed >= ? ORDER BY changed", (when,)).fetchall()
        for (summary,) in rows:
            yield orjson.loads(summary)

    def counts(self, name: str, since: str | None = None) -> dict[str, int]:
        rows = self._connection().execute(
            "SELECT value, n FROM counts WHERE name = ? AND value >= ? AND n > 0", (name, since or "")
        ).fetchall()
        return dict(rows)

    def __len__(self) -> int:
        row = self._connection().execute("SELECT count(*) FROM runs").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()


class DataDirCatalog:
    """The data dir's :class:`~userflow.storage.port.Catalog`: the SQLite catalog's
    answers, and the active runs' documents read as the store has them (``read``:
    newer than its file if committed since the last checkpoint)."""

    def __init__(self, catalog: SqliteCatalog, read: Callable[[str], dict[str, Any] | None]) -> None:
        self._catalog = catalog
        self._read = read

    def get(self, run_id: str) -> dict[str, Any] | None:
        return self._catalog.get(run_id)

    def lookup(self, kind: str, key: str) -> str | None:
        return self._catalog.lookup(kind, key)

    def page(
        self, *, limit: int, cursor: str | None = None, facet: tuple[str, str] | None = None, oldest_first: bool = False
    ) -> tuple[list[dict[str, Any]], str | None]:
        return self._catalog.page(limit=limit, cursor=cursor, facet=facet, oldest_first=oldest_first)

    def counts(self, name: str, since: str | None = None) -> dict[str, int]:
        return self._catalog.counts(name, since)

    def changed_since(self, when: float) -> Iterator[dict[str, Any]]:
        return self._catalog.changed_since(when)

    def active(self) -> Iterator[dict[str, Any]]:
        for run_id in self._catalog.ids(ACTIVE):
            run = self._read(run_id)
            if run is not None:
                yield run
