"""Claims: which node executes a run, on a database many nodes share.

A run is executed only by the node that claimed it: ``owner`` names the node,
and each claim raises ``epoch``, so a commit fenced by an older claim (the
store's committer checks owner and epoch) changes nothing. A node may claim
a run nobody executes, one its own id held before a restart, or one of a
node whose heartbeat lapsed (``nodes.py``). Activating a run claims it alone;
every node's poller (``actors/takeover.py``) claims in batches the unowned
runs whose earliest timer is due, and the runs of dead nodes, locking each
row it takes and skipping those another node has locked, so each goes to
one node.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from userflow.storage.atomic import StorageError
from userflow.storage.port import Claimed, RunMoved
from userflow.storage.postgres.connect import in_transaction, one_line
from userflow.storage.postgres.nodes import NodeLease

# A node may claim a run nobody executes, one of its own (a restart), or a dead node's.
_CLAIM = """
UPDATE runs SET owner = %(me)s, epoch = epoch + 1
WHERE id = %(id)s AND (owner IS NULL OR owner = %(me)s OR NOT EXISTS (
    SELECT 1 FROM nodes n WHERE n.id = runs.owner
    AND n.heartbeat_at > now() - make_interval(secs => %(timeout)s) AND n.stopped_at IS NULL))
RETURNING document, epoch
"""
# The pollers' claims: what they return is each run's id and its timers due by the database clock.
_CLAIMED = "RETURNING runs.id, runs.document -> 'timers', extract(epoch FROM now())::float8"
_CLAIM_DUE = f"""
WITH due AS (
    SELECT id FROM runs WHERE owner IS NULL AND next_wake_at <= now()
    ORDER BY next_wake_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
UPDATE runs SET owner = %(me)s, epoch = runs.epoch + 1 FROM due WHERE runs.id = due.id
{_CLAIMED}
"""
_CLAIM_ORPHANS = f"""
WITH orphans AS (
    SELECT id FROM runs r WHERE r.owner IS NOT NULL AND r.owner <> %(me)s AND NOT EXISTS (
        SELECT 1 FROM nodes n WHERE n.id = r.owner
        AND n.heartbeat_at > now() - make_interval(secs => %(timeout)s) AND n.stopped_at IS NULL)
    LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
UPDATE runs SET owner = %(me)s, epoch = runs.epoch + 1 FROM orphans WHERE runs.id = orphans.id
{_CLAIMED}
"""
_CLAIM_MINE = f"""
UPDATE runs SET epoch = epoch + 1 WHERE owner = %(me)s
{_CLAIMED}
"""


# Starts of one lookup key (an address) are one at a time across nodes: two
# signups of one address reaching two nodes together would each find no run and
# start one. A key's lock is an advisory lock in a space of its own (two int4 keys).
KEY_LOCKS = 0x75660001
KEY_LOCK_CONNECTIONS = 8


class KeyLock:
    """A held lock on a lookup key: ``release`` it once the start it guards is durable."""

    def __init__(self, pool: ConnectionPool, connection: psycopg.Connection, key: str) -> None:
        self._pool, self._connection, self._key = pool, connection, key

    def release(self) -> None:
        try:
            self._connection.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (KEY_LOCKS, self._key))
        except (psycopg.Error, OSError):
            self._connection.close()  # a closed session holds no lock
        finally:
            self._pool.putconn(self._connection)


class PgClaims:
    def __init__(self, pool: ConnectionPool, lease: NodeLease, key_pool: ConnectionPool) -> None:
        self._pool = pool
        self._lease = lease
        self._key_pool = key_pool  # apart: a start holds its lock while its first commit uses the main pool
        self.node_id = lease.node_id

    def lock_key(self, kind: str, value: str) -> KeyLock:
        """Wait until no other start of the key is under way on any node, and hold it."""
        key = f"{kind}:{value}"
        try:
            connection = self._key_pool.getconn()
        except Exception as exc:  # noqa: BLE001 - psycopg_pool's PoolTimeout, a failed connect
            raise _unavailable("lock a key in", exc) from None
        try:
            connection.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (KEY_LOCKS, key))
        except (psycopg.Error, OSError) as exc:
            self._key_pool.putconn(connection)
            raise _unavailable("lock a key in", exc) from None
        return KeyLock(self._key_pool, connection, key)

    def close(self) -> None:
        self._key_pool.close()

    def _claim_params(self, **more: Any) -> dict[str, Any]:
        return {"me": self.node_id, "timeout": self._lease.timeout, **more}

    def claim(self, run_id: str) -> tuple[dict[str, Any], int] | None:
        """Claim the run for this node: its document and the claim's epoch; None if there
        is no such run; RunMoved if another live node executes it."""
        found = None
        try:
            with self._pool.connection() as connection:
                row = connection.execute(_CLAIM, self._claim_params(id=run_id)).fetchone()
                if row is None:
                    found = connection.execute("SELECT owner FROM runs WHERE id = %s", (run_id,)).fetchone()
        except (psycopg.Error, OSError) as exc:
            raise _unavailable("claim a run in", exc) from None
        if row is not None:
            return row[0], int(row[1])
        if found is None:
            return None
        raise RunMoved(run_id, f"executes on node {found[0]}")  # outside the try: RunMoved is an OSError too

    def claim_due(self, limit: int) -> list[Claimed]:
        """Claim up to ``limit`` runs nobody executes whose earliest timer is due."""
        return self._claim_many(_CLAIM_DUE, limit)

    def claim_orphans(self, limit: int) -> list[Claimed]:
        """Claim up to ``limit`` runs of nodes whose heartbeat lapsed (takeover)."""
        return self._claim_many(_CLAIM_ORPHANS, limit)

    def claim_mine(self) -> list[Claimed]:
        """Claim again the runs this node id held when its last process ended (a start)."""
        return self._claim_many(_CLAIM_MINE, 0)

    def _claim_many(self, sql: str, limit: int) -> list[Claimed]:
        try:
            rows = in_transaction(self._pool, lambda connection: connection.execute(sql, self._claim_params(limit=limit)).fetchall())
        except (psycopg.Error, OSError) as exc:
            raise _unavailable("claim runs in", exc) from None
        return [Claimed(run_id, {name: due for name, due in (timers or {}).items() if due <= clock}) for run_id, timers, clock in rows]


def _unavailable(doing: str, exc: BaseException) -> StorageError:
    return StorageError(5, f"could not {doing} the database: {one_line(exc)}")
