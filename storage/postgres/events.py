"""The event stream kept in the database: the table ``events``, so that an id
a client of ``/api/events`` holds stays valid when the server restarts.

Each frame is stored as the SSE text after its id line; the table's identity
column numbers them. The stream's name (the part of an id before the number)
is made once per database, so ids of one database are never taken for
another's. Old frames are pruned: a client further behind than ``KEEP``
frames is told to reload, as one behind the in-memory ring always was.
"""

from __future__ import annotations

import secrets

import orjson
import psycopg
from psycopg_pool import ConnectionPool

from userflow.storage.atomic import StorageError
from userflow.storage.postgres.connect import in_transaction, one_line

KEEP = 100_000  # frames kept for clients resuming; a few minutes of a busy server
PRUNE_EVERY = 1000  # appends between two prunes

# The frames as one JSON array of strings: one orjson call, not an array adapted element by element.
_APPEND = """
INSERT INTO events (frame)
SELECT frame FROM jsonb_array_elements_text(%s::jsonb) WITH ORDINALITY AS batch (frame, n) ORDER BY n
RETURNING seq
"""


class PgEventJournal:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._appends = 0
        self.stream = self._stream_name()

    def _stream_name(self) -> str:
        try:
            with self._pool.connection() as connection:
                connection.execute(
                    "INSERT INTO secrets (name, value) VALUES ('event-stream', %s) ON CONFLICT (name) DO NOTHING",
                    (secrets.token_bytes(4),),
                )
                row = connection.execute("SELECT value FROM secrets WHERE name = 'event-stream'").fetchone()
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"the event stream cannot be read from the database: {one_line(exc)}") from None
        assert row is not None
        return bytes(row[0]).hex()

    def append(self, frames: list[bytes]) -> list[int]:
        """Store the frames, in order; their numbers (blocking; StorageError if not stored)."""
        try:
            text = orjson.dumps([f.decode() for f in frames]).decode()
            # Repeated after a broken connection, frames may be stored twice; a client
            # then sees them twice, which a reload of the page settles.
            seqs = in_transaction(
                self._pool, lambda connection: sorted(seq for (seq,) in connection.execute(_APPEND, (text,)).fetchall())
            )
            self._appends += 1
            if self._appends % PRUNE_EVERY == 0 and seqs:
                in_transaction(self._pool, lambda connection: connection.execute("DELETE FROM events WHERE seq <= %s", (seqs[-1] - KEEP,)))
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"events cannot be stored in the database: {one_line(exc)}") from None
        return seqs

    def after(self, seq: int, count: int) -> list[tuple[int, bytes]]:
        try:
            with self._pool.connection() as connection:
                rows = connection.execute("SELECT seq, frame FROM events WHERE seq > %s ORDER BY seq LIMIT %s", (seq, count)).fetchall()
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"the event stream cannot be read from the database: {one_line(exc)}") from None
        return [(n, frame.encode()) for n, frame in rows]

    def forget(self, needle: str, instead: bytes) -> int:
        """Replace the frames that contain ``needle`` (a run's id, quoted: erasure) by
        ``instead``, keeping their numbers; how many."""
        try:
            return in_transaction(
                self._pool,
                lambda connection: connection.execute(
                    "UPDATE events SET frame = %s WHERE strpos(frame, %s) > 0", (instead.decode(), needle)
                ).rowcount,
            )
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"events cannot be removed from the database: {one_line(exc)}") from None

    def tail(self, count: int) -> list[tuple[int, bytes]]:
        """The newest ``count`` frames, oldest first."""
        try:
            with self._pool.connection() as connection:
                rows = connection.execute("SELECT seq, frame FROM events ORDER BY seq DESC LIMIT %s", (count,)).fetchall()
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"the event stream cannot be read from the database: {one_line(exc)}") from None
        return [(seq, frame.encode()) for seq, frame in reversed(rows)]
