"""A node's lease: its row in ``nodes``, renewed every second, judged by the database clock.

Several nodes share one database; a run executes on the node that claimed it
(``runs.owner``), and another node takes it over once the owner's heartbeat
is older than ``timeout`` seconds by the database's ``now()``. So that no two
nodes run one step at once, a node must stop its steps before that happens,
on its own, even when it cannot reach the database (partitioned, or paused:
a SIGSTOP, a long GC, a stalled VM). It knows how long it is safe without
asking anyone: a heartbeat sent at local monotonic instant ``t`` was stamped
by the database no earlier than ``t``, so no other node may take over before
``t + timeout``. The lease holds until ``t + timeout - margin``; past that,
every claim made under it is void (its *generation* ends) even if a later
heartbeat succeeds, because another node may already have taken those runs.

A process that finds its node id held by a live node (the same id given
twice, or a restart within ``timeout`` of a kill) waits for that heartbeat
to lapse, unless the holder's own connection is gone: each lease renews
over a connection of its own, named after its incarnation, which the
database drops within milliseconds of the process dying, so a node
restarted after a crash carries on at once. A node whose renewal finds
another incarnation in its row has lost its id and never holds its lease
again.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from userflow.storage.postgres.connect import one_line

log = logging.getLogger(__name__)

RENEW_EVERY = 1.0

# A node is alive while renewed within the timeout by the database clock, and not stopped.
_REGISTER = """
INSERT INTO nodes AS n (id, incarnation, address, started_at, heartbeat_at, stopped_at)
VALUES (%(id)s, %(incarnation)s, %(address)s, now(), now(), NULL)
ON CONFLICT (id) DO UPDATE SET incarnation = excluded.incarnation, address = excluded.address,
    started_at = now(), heartbeat_at = now(), stopped_at = NULL
WHERE NOT (n.heartbeat_at > now() - make_interval(secs => %(timeout)s) AND n.stopped_at IS NULL
           AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = 'userflow-node ' || n.incarnation))
RETURNING id
"""
_RENEW = "UPDATE nodes SET heartbeat_at = now() WHERE id = %s AND incarnation = %s AND stopped_at IS NULL RETURNING id"


class NodeIdTaken(RuntimeError):
    """Another live process holds this node id; the message is one line."""


@dataclass(frozen=True)
class NodeView:
    """A node as the nodes panel shows it."""

    id: str
    address: str | None
    alive: bool
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    executing: int
    heartbeat_age: float  # seconds, by the database clock

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "alive": self.alive,
            "startedAt": self.started_at.isoformat(),
            "heartbeatAt": self.heartbeat_at.isoformat(),
            "stoppedAt": self.stopped_at.isoformat() if self.stopped_at else None,
            "executing": self.executing,
            "heartbeatAgeSeconds": round(self.heartbeat_age, 3),
        }


class NodeLease:
    def __init__(self, url: str, pool: ConnectionPool, node_id: str, timeout: float, address: str | None = None) -> None:
        if timeout <= 0:
            raise ValueError("the node timeout must be positive")
        self._url = url
        self._connection: psycopg.Connection | None = None
        self._pool = pool
        self.node_id = node_id
        self.timeout = timeout
        self.margin = min(1.0, timeout / 4)
        self.address = address
        self._incarnation = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._valid_until = 0.0  # local monotonic seconds
        self._generation = 0
        self._lapsed = True
        self._lost = False  # another process took the id: never again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- registering and renewing -------------------------------------------------------

    def register(self, wait: float | None = None) -> None:
        """Take the node's row; wait up to ``wait`` seconds (default: the timeout and a
        second) for a live holder of the same id to lapse; NodeIdTaken if it does not."""
        deadline = time.monotonic() + (self.timeout + 1.0 if wait is None else wait)
        while True:
            sent = time.monotonic()
            row = self._execute(
                _REGISTER, {"id": self.node_id, "incarnation": self._incarnation, "address": self.address, "timeout": self.timeout}
            )
            if row is not None:
                self._renewed(sent)
                return
            if time.monotonic() >= deadline:
                raise NodeIdTaken(
                    f"node id {self.node_id!r} is in use by a live node of this database; give each node its own --node-id"
                )
            time.sleep(0.2)  # the holder's heartbeat lapses on the database's clock: nothing to wait on here

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="userflow-node-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        # Several renewals within the lease: one late under load does not end it.
        every = min(RENEW_EVERY, (self.timeout - self.margin) / 3)
        while not self._stop.wait(every):
            self.renew()

    def renew(self) -> bool:
        """One heartbeat; whether the database took it."""
        if self._lost:
            return False
        sent = time.monotonic()
        try:
            row = self._execute(_RENEW, (self.node_id, self._incarnation))
        except Exception as exc:  # noqa: BLE001 - any failure is a missed heartbeat
            if self.holds(self.generation):
                log.warning("node %s: heartbeat failed: %s", self.node_id, one_line(exc) or type(exc).__name__)
            return False
        if row is None:
            with self._lock:
                self._lost, self._lapsed = True, True
                self._generation += 1
            log.critical("node %s: another process has taken this node id; this one executes nothing more", self.node_id)
            return False
        self._renewed(sent)
        return True

    def _execute(self, sql: str, params: Any) -> tuple[Any, ...] | None:
        """One statement on the lease's own connection, made again if it broke."""
        if self._connection is None or self._connection.closed or self._connection.broken:
            if self._connection is not None:
                self._connection.close()
            self._connection = psycopg.connect(
                self._url, autocommit=True, connect_timeout=max(1, int(self.timeout - self.margin)),
                application_name=f"userflow-node {self._incarnation}",
            )  # fmt: skip
        return self._connection.execute(sql, params).fetchone()

    def _renewed(self, sent: float) -> None:
        with self._lock:
            self._check()
            self._valid_until = sent + self.timeout - self.margin
            if self._lapsed:
                self._lapsed = False
                log.info("node %s: lease held (generation %d)", self.node_id, self._generation)

    def _check(self) -> None:
        """(Under the lock.) A lease past its time ends its generation, once."""
        if not self._lapsed and time.monotonic() >= self._valid_until:
            self._lapsed = True
            self._generation += 1
            log.error("node %s: could not renew its lease in time; its runs may be taken over, its steps stop", self.node_id)

    # -- what claims ask ---------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The generation a claim made now belongs to."""
        with self._lock:
            self._check()
            return self._generation

    def holds(self, generation: int) -> bool:
        """Whether a claim made in ``generation`` may still execute."""
        with self._lock:
            self._check()
            return not self._lapsed and generation == self._generation

    def stop(self) -> None:
        """A clean stop: the node's row says so, and other nodes take its runs at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._lapsed, self._lost = True, True
            self._generation += 1
        try:
            self._execute("UPDATE nodes SET stopped_at = now() WHERE id = %s AND incarnation = %s RETURNING id", (self.node_id, self._incarnation))
        except Exception as exc:  # noqa: BLE001 - the heartbeat lapses by itself
            log.warning("node %s: could not record its stop: %s", self.node_id, one_line(exc))
        if self._connection is not None:
            self._connection.close()


def nodes(pool: ConnectionPool, timeout: float) -> list[NodeView]:
    """Every node of the database, with how many runs each executes now."""
    with pool.connection() as connection:
        rows = connection.execute(
            """SELECT n.id, n.address, (n.heartbeat_at > now() - make_interval(secs => %(timeout)s) AND n.stopped_at IS NULL), n.started_at, n.heartbeat_at, n.stopped_at,
                       (SELECT count(*) FROM runs WHERE runs.owner = n.id),
                       extract(epoch FROM now() - n.heartbeat_at)::float8
                FROM nodes n ORDER BY n.id""",
            {"timeout": timeout},
        ).fetchall()
    return [NodeView(*row) for row in rows]
