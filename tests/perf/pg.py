"""PostgreSQL's share of a measurement: its transactions and its CPU time.

Used by the load generator (``--postgres``) and the store comparisons; the
database is one of a throwaway :class:`tests.postgres.Cluster`'s.

- Transactions: the ``xact_commit`` delta of that database in
  ``pg_stat_database``. A backend publishes its counts when it ends (and
  now and then while idle), so the end is read once userflow has stopped
  and its backends are gone. The counts include what the server does on
  its own while the load runs (the availability probe, 1 a second).
- CPU: user and system time of the postmaster and every process it
  started, from ``/proc``; a process that ended in between (autovacuum
  workers, the pool's backends at the server's stop) is counted through
  the postmaster's ``cutime``/``cstime`` (``Cluster.cpu_seconds``). The
  whole cluster is counted, background writers included.
"""

from __future__ import annotations

import time

from tests.postgres import Cluster


class PgProbe:
    def __init__(self, cluster: Cluster, database: str) -> None:
        self.cluster = cluster
        self.database = database
        self._xacts = 0
        self._cpu = 0.0

    def commits(self) -> int:
        with self.cluster.admin() as connection:
            row = connection.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.database,)).fetchone()
        return int(row[0]) if row else 0

    def wait_for_no_backends(self, timeout: float = 30.0) -> None:
        """Until no session uses the database (its backends have ended and published their counts)."""
        deadline = time.monotonic() + timeout
        with self.cluster.admin() as connection:
            while time.monotonic() < deadline:
                row = connection.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,)).fetchone()
                if row and row[0] == 0:
                    break
                time.sleep(0.05)
        time.sleep(0.2)  # the last backend's exit, reaped by the postmaster (its CPU time moves to cutime)

    def begin(self) -> None:
        self._xacts = self.commits()
        self._cpu = self.cluster.cpu_seconds()

    def end(self, completed: int) -> dict[str, float | None]:
        """Call once the userflow server has stopped: per completed run, transactions and CPU ms."""
        self.wait_for_no_backends()
        cpu_ms = (self.cluster.cpu_seconds() - self._cpu) * 1000
        xacts = self.commits() - self._xacts
        return {
            "pgTransactions": xacts,
            "pgTransactionsPerCompletedRun": round(xacts / completed, 2) if completed else None,
            "pgCpuMs": round(cpu_ms),
            "pgCpuMsPerCompletedRun": round(cpu_ms / completed, 3) if completed else None,
        }
