"""The server's stores in one PostgreSQL database: runs, lookup keys, accounts,
deliveries and the token key, over one pool of connections.

Opening checks the database (reachable, new enough), applies the schema's
migrations, and makes the token key if the database has none. Afterwards a
thread asks the database for ``SELECT 1`` every second: ``available`` is
what ``/readyz`` answers, and the log says once when the database goes away
and once when it is back. Nothing waits on that thread: a request that
needs the database while it is away gets its own error, a 503.
"""

from __future__ import annotations

import logging
import secrets
import threading

import psycopg
from psycopg_pool import ConnectionPool

from userflow.storage.atomic import StorageError
from userflow.storage.port import Describe
from userflow.storage.postgres.connect import APPLICATION_NAME, DatabaseUnavailable, one_line, open_pool, parse, where
from userflow.storage.postgres.deliveries import PgDeliveries
from userflow.storage.postgres.events import PgEventJournal
from userflow.storage.postgres.nodes import NodeLease, NodeView, nodes
from userflow.storage.postgres.operators import PgOperators
from userflow.storage.postgres.runs import PgRunStore
from userflow.storage.postgres.schema import migrate

log = logging.getLogger(__name__)

PROBE_EVERY = 1.0
#: The session-level advisory lock on a database ("uflow" + 1): every node holds it
#: shared, ``userflow import`` alone (exclusively), so that no node executes the runs
#: being copied.
SERVER_LOCK = 0x75666C6F78


class DatabaseBusy(RuntimeError):
    """Another process holds the database in a way that excludes this one; the message is one line."""
class PgStores:
    def __init__(self, pool: ConnectionPool, where: str, describe: Describe | None = None) -> None:
        self.pool = pool
        self.where = where
        self.operators = PgOperators(pool, where)
        self._describe = describe
        self._available = True
        self._stop = threading.Event()
        self._probe: threading.Thread | None = None
        self._url = ""
        self._lock: psycopg.Connection | None = None
        self._exclusive = False
        self.lease: NodeLease | None = None

    @classmethod
    def open(cls, url: str, describe: Describe | None = None, *, max_connections: int = 10) -> PgStores:
        """Connect, migrate, and start watching; DatabaseUnavailable, SchemaTooNew or SchemaBusy if not."""
        pool = open_pool(url, min_size=2, max_size=max_connections, timeout=5.0)
        try:
            with psycopg.connect(url, autocommit=True, application_name=APPLICATION_NAME) as connection:
                applied = migrate(connection)
        except BaseException:
            pool.close()
            raise
        stores = cls(pool, f"database {where(parse(url))}", describe)
        stores._url = url
        if applied:
            log.info("database schema migrated to version %d", applied[-1])
        return stores

    def run_store(self) -> PgRunStore:
        return PgRunStore(self.pool, self._describe, self.lease, self._url)

    def join(self, node_id: str, timeout: float, address: str | None = None) -> None:
        """Become a node of this database: hold the shared lock, take the node's row
        (NodeIdTaken if a live node keeps that id), and renew it from now on."""
        self.claim(exclusive=False)
        lease = NodeLease(self._url, self.pool, node_id, timeout, address)
        try:
            lease.register()
        except (psycopg.Error, OSError) as exc:
            raise DatabaseUnavailable(f"cannot use the {self.where}: {one_line(exc)}") from None
        lease.start()
        self.lease = lease

    def nodes(self) -> list[NodeView]:
        """The database's nodes, for the nodes panel (StorageError if it cannot be read)."""
        try:
            return nodes(self.pool, self.lease.timeout if self.lease is not None else 5.0)
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"the nodes cannot be read from the database: {one_line(exc)}") from None

    def deliveries(self, node_id: str | None = None) -> PgDeliveries:
        return PgDeliveries(self.pool, node_id)

    def event_journal(self) -> PgEventJournal:
        return PgEventJournal(self.pool)

    def secret(self) -> bytes:
        # Nodes starting together each offer a key; the first committed is everyone's.
        try:
            with self.pool.connection() as connection:
                connection.execute(
                    "INSERT INTO secrets (name, value) VALUES ('tokens', %s) ON CONFLICT (name) DO NOTHING",
                    (secrets.token_bytes(32),),
                )
                row = connection.execute("SELECT value FROM secrets WHERE name = 'tokens'").fetchone()
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"the token key cannot be read from the database: {one_line(exc)}") from None
        assert row is not None
        return bytes(row[0])

    # -- watching -----------------------------------------------------------------------

    def claim(self, exclusive: bool = True) -> None:
        """Hold the database's lock: shared by nodes, exclusive for an import, which must
        not copy runs while a node executes them. It lives with a connection of its
        own; DatabaseBusy if it cannot be had."""
        try:
            connection = psycopg.connect(self._url, autocommit=True, application_name=APPLICATION_NAME, connect_timeout=5)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"cannot use the {self.where}: {one_line(exc)}") from None
        self._exclusive = exclusive
        how = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
        taken = connection.execute(f"SELECT {how}(%s)", (SERVER_LOCK,)).fetchone()
        if not (taken and taken[0]):
            holder = connection.execute(
                "SELECT a.client_addr, a.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.objid = %s AND l.granted",
                (SERVER_LOCK & 0xFFFFFFFF,),
            ).fetchone()
            connection.close()
            by = f" (database process {holder[1]}, client {holder[0] or 'local'})" if holder else ""
            if not exclusive:
                raise DatabaseBusy(f"the {self.where} is being imported into by `userflow import`{by}; start once it has finished")
            raise DatabaseBusy(f"the {self.where} is in use by another userflow server{by}; stop it or use another database")
        self._lock = connection

    def watch(self) -> None:
        """Keep the accounts' copy fresh and the database's availability known (a server does this)."""
        self.operators.watch()
        self._probe = threading.Thread(target=self._watch, name="userflow-pg-probe", daemon=True)
        self._probe.start()

    def available(self) -> bool:
        return self._available

    def _watch(self) -> None:
        while not self._stop.wait(PROBE_EVERY):
            try:
                with self.pool.connection(timeout=2.0) as connection:
                    connection.execute("SELECT 1")
                error = None
            except Exception as exc:  # noqa: BLE001 - any failure means: not available
                error = one_line(exc) or type(exc).__name__
            if error is None:
                error = self._keep_claim()
            if error is not None and self._available:
                log.error("the %s cannot be reached: %s; requests that need it answer 503", self.where, error)
            elif error is None and not self._available:
                log.info("the %s is reachable again", self.where)
            self._available = error is None

    def _keep_claim(self) -> str | None:
        """A restart of the database ends the lock's connection: take the lock again."""
        if self._lock is None or not self._lock.closed and not self._lock.broken:
            return None
        try:
            self._lock.close()
            self.claim(self._exclusive)
        except DatabaseBusy as exc:
            log.critical("%s", exc)  # another server took over while the database restarted
            return str(exc)
        except DatabaseUnavailable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        self._stop.set()
        if self.lease is not None:
            self.lease.stop()
        self.operators.close()
        if self._probe is not None:
            self._probe.join(timeout=5)
        self.pool.close()
        if self._lock is not None:
            self._lock.close()

