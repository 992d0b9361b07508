"""The catalog of runs on disk: what lists, filters, counts and lookups read, for the data dir.

Keeping a summary of every run ever in memory makes a server's size and start
grow with every user it has had. The catalog keeps them in SQLite beside the
run files instead (``DATA/catalog.sqlite``), so memory follows the active
runs only. Per run it holds:

- its summary, as the engine describes it (what a list shows), as JSON;
- its facets: the values lists filter and count by (``{"status": "WAITING",
  "user": "PENDING"}``), one row each, so "newest first with status S after
  cursor C" is a walk of one index however many runs there are;
- its lookup keys (an address, a user id, a token hash), each naming one run
  at a time: a later run takes a key over, as a new signup after an expired one does.

Counts per facet are kept as counters, changed in the transaction that changes
a run's facets, so counting a million runs reads a few rows.

The catalog is derived data: the run files and the journal are the truth.
It is written after the journal has made a change durable; SQLite's WAL
mode with ``synchronous=NORMAL`` keeps it consistent through a crash (it may
lose its last transactions, never be torn), and ``applied`` records how far
it got, for the caller to bring it up to date from the run files. Readers
each have a connection of their own (WAL lets them read while one writes).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

#: The layout of the catalog file; another is rebuilt, never read.
FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, summary BLOB NOT NULL) WITHOUT ROWID;
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
"""


class CatalogDamaged(RuntimeError):
    """The catalog file cannot be used (another layout, or not SQLite): rebuild it."""


@dataclass(frozen=True)
class Entry:
    """A run as the catalog keeps it."""

    id: str
    summary: Mapping[str, Any]
    facets: Mapping[str, str] = field(default_factory=dict)
    keys: Mapping[str, Iterable[str]] = field(default_factory=dict)


class SqliteCatalog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            connection = self._connection()
            connection.executescript(_SCHEMA)
            found = connection.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if found is None:
                with connection:
                    connection.execute("INSERT INTO meta VALUES ('format', ?)", (str(FORMAT),))
            elif found[0] != str(FORMAT):
                raise CatalogDamaged(f"{path} has layout {found[0]}, this release reads {FORMAT}")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise CatalogDamaged(f"{path} cannot be read: {exc}") from None

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # Autocommit at the driver; transactions are opened explicitly where wanted.
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    # -- writing ----------------------------------------------------------------------

    def put(self, entries: Iterable[Entry], applied: str | None = None) -> None:
        """Keep these runs' newest descriptions, and ``applied`` (how far the source was read), at once."""
        connection = self._connection()
        with self._write_lock:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for entry in entries:
                    self._put(connection, entry)
                if applied is not None:
                    connection.execute("INSERT OR REPLACE INTO meta VALUES ('applied', ?)", (applied,))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def _put(self, connection: sqlite3.Connection, entry: Entry) -> None:
        connection.execute("INSERT OR REPLACE INTO runs VALUES (?, ?)", (entry.id, orjson.dumps(entry.summary)))
        old = dict(connection.execute("SELECT name, value FROM facets WHERE run_id = ?", (entry.id,)).fetchall())
        for name, value in old.items():
            if entry.facets.get(name) != value:
                connection.execute("DELETE FROM facets WHERE name = ? AND value = ? AND run_id = ?", (name, value, entry.id))
                connection.execute("UPDATE counts SET n = n - 1 WHERE name = ? AND value = ?", (name, value))
        for name, value in entry.facets.items():
            if old.get(name) != value:
                connection.execute("INSERT INTO facets VALUES (?, ?, ?)", (name, value, entry.id))
                connection.execute(
                    "INSERT INTO counts VALUES (?, ?, 1) ON CONFLICT (name, value) DO UPDATE SET n = n + 1", (name, value)
                )
        for kind, values in entry.keys.items():
            for value in values:
                connection.execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?)", (kind, value, entry.id))

    # -- reading ----------------------------------------------------------------------

    def applied(self) -> str | None:
        row = self._connection().execute("SELECT value FROM meta WHERE name = 'applied'").fetchone()
        return row[0] if row else None

    def get(self, run_id: str) -> dict[str, Any] | None:
        row = self._connection().execute("SELECT summary FROM runs WHERE id = ?", (run_id,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def lookup(self, kind: str, key: str) -> str | None:
        row = self._connection().execute("SELECT run_id FROM keys WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return row[0] if row else None

    def page(
        self, *, limit: int, before: str | None = None, facet: tuple[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Summaries newest first (ids sort by creation), strictly older than ``before``,
        with ``facet`` (name, value) if given; and the cursor of the next page, if any."""
        connection = self._connection()
        bound = before if before is not None else "\uffff"
        if facet is None:
            rows = connection.execute(
                "SELECT id, summary FROM runs WHERE id < ? ORDER BY id DESC LIMIT ?", (bound, limit + 1)
            ).fetchall()
        else:
            rows = connection.execute(
                """SELECT runs.id, runs.summary FROM facets JOIN runs ON runs.id = facets.run_id
                   WHERE facets.name = ? AND facets.value = ? AND facets.run_id < ?
                   ORDER BY facets.run_id DESC LIMIT ?""",
                (facet[0], facet[1], bound, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [orjson.loads(summary) for _, summary in rows], (rows[-1][0] if more and rows else None)

    def counts(self, name: str) -> dict[str, int]:
        """How many runs have each value of the facet ``name`` (values no run has left out)."""
        rows = self._connection().execute("SELECT value, n FROM counts WHERE name = ? AND n > 0", (name,)).fetchall()
        return dict(rows)

    def __len__(self) -> int:
        row = self._connection().execute("SELECT count(*) FROM runs").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
