"""The test cluster itself: what later tests rely on when they kill the database."""

from __future__ import annotations

import psycopg
import pytest

from tests.helpers import wait_until
from tests.postgres import Cluster


def test_each_test_gets_an_empty_database_of_its_own(postgres_cluster: Cluster, database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        name = connection.execute("SELECT current_database()").fetchone()
        user_tables = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert name is not None and name[0].startswith("test_each_test_gets_an_empty_database")
    assert user_tables == (0,)
    with postgres_cluster.admin() as admin:
        assert admin.execute("SHOW fsync").fetchone() == ("on",)  # durability tests kill it


def test_a_committed_row_survives_an_immediate_stop_and_an_uncommitted_one_does_not(
    postgres_cluster: Cluster, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        connection.execute("INSERT INTO kept VALUES (1)")
    pending = psycopg.connect(database_url)
    pending.execute("INSERT INTO kept VALUES (2)")  # its transaction is still open when the server dies
    old_postmaster = postgres_cluster.postmaster_pid()

    postgres_cluster.stop_immediately()
    assert not postgres_cluster.running
    with pytest.raises(psycopg.OperationalError):
        pending.execute("COMMIT")
    pending.close()
    postgres_cluster.start()

    assert postgres_cluster.running and postgres_cluster.postmaster_pid() != old_postmaster
    with psycopg.connect(database_url) as connection:  # the same URL: the port is kept
        assert connection.execute("SELECT id FROM kept ORDER BY id").fetchall() == [(1,)]


def test_the_server_processes_and_their_cpu_time_are_found(postgres_cluster: Cluster, database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        backend = connection.info.backend_pid
        pids = postgres_cluster.server_pids()
        assert pids[0] == postgres_cluster.postmaster_pid()
        assert backend in pids
        before = postgres_cluster.cpu_seconds()
        connection.execute("SELECT count(*) FROM generate_series(1, 1000000)").fetchone()
        during = postgres_cluster.cpu_seconds()
    assert during - before > 0.05  # that query takes well over the clock's 10 ms tick

    # Once the backend has ended and been collected, its time is still counted.
    wait_until(lambda: backend not in postgres_cluster.server_pids(), message="the backend ended")
    assert postgres_cluster.cpu_seconds() >= during
