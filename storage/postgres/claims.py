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

import threading
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
# start one. A key's lock is a session advisory lock in a space of its own (two
# int4 keys), all of a node's held on one connection: taking one never waits
# (pg_try_advisory_lock), so no thread or pooled connection is held while a
# start waits for another node's.
KEY_LOCKS = 0x75660001


class PgClaims:
    def __init__(self, pool: ConnectionPool, lease: NodeLease, url: str) -> None:
        self._pool = pool
        self._lease = lease
        self._url = url
        self._keys: psycopg.Connection | None = None
        self._keys_lock = threading.Lock()
        self.node_id = lease.node_id

    def try_lock_key(self, kind: str, value: str) -> bool:
        """Hold the key against starts on every node, if no other node holds it now.
        (The session's locks are reentrant: the caller keeps one start per key in this process.)"""
        return bool(self._on_keys("SELECT pg_try_advisory_lock(%s, hashtext(%s))", f"{kind}:{value}"))

    def unlock_key(self, kind: str, value: str) -> None:
        self._on_keys("SELECT pg_advisory_unlock(%s, hashtext(%s))", f"{kind}:{value}")

    def _on_keys(self, sql: str, key: str) -> Any:
        with self._keys_lock:
            try:
                if self._keys is None or self._keys.closed or self._keys.broken:
                    # A new session holds none of the old one's locks: they ended with it.
                    self._keys = psycopg.connect(self._url, autocommit=True, connect_timeout=5, application_name=f"userflow-keys {self.node_id}")
                row = self._keys.execute(sql, (KEY_LOCKS, key)).fetchone()
            except (psycopg.Error, OSError) as exc:
                raise _unavailable("lock a key in", exc) from None
        return row[0] if row else None

    def close(self) -> None:
        with self._keys_lock:
            if self._keys is not None:
                self._keys.close()

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
