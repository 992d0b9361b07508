"""Opening the database: a pool when it can be used, one clear line when it cannot."""

from __future__ import annotations

import socket

import pytest

from tests.postgres import Cluster
from userflow.storage.postgres.connect import in_transaction
from userflow.storage.postgres import DatabaseUnavailable, open_pool


def refusing_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def refusal(url: str) -> str:
    with pytest.raises(DatabaseUnavailable) as refused:
        open_pool(url, timeout=5)
    message = str(refused.value)
    assert "\n" not in message and "secret-pw" not in message, message
    return message


def test_a_pool_is_opened_filled_and_usable(database_url: str) -> None:
    pool = open_pool(database_url, min_size=2, max_size=4)
    try:
        assert pool.get_stats()["pool_size"] == 2
        with pool.connection() as connection:
            assert connection.execute("SELECT current_setting('application_name')").fetchone() == ("userflow",)
    finally:
        pool.close()


def test_a_pool_replaces_connections_broken_by_a_database_restart(postgres_cluster: Cluster, database_url: str) -> None:
    pool = open_pool(database_url, min_size=1, max_size=1)
    try:
        with pool.connection() as connection:
            first = connection.info.backend_pid
        postgres_cluster.stop_immediately()
        postgres_cluster.start()
        # Used a moment ago, the broken connection is handed out unchecked; the
        # statement is made again on a new one, not failed.
        pid = in_transaction(pool, lambda connection: connection.execute("SELECT pg_backend_pid()").fetchone())
        assert pid is not None and pid[0] != first
        with pool.connection() as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_an_unreachable_database_is_one_line_naming_it_without_its_password() -> None:
    port = refusing_port()
    message = refusal(f"postgresql://app:secret-pw@127.0.0.1:{port}/userflow")
    assert message.startswith(f"cannot use the database postgresql://app@127.0.0.1:{port}/userflow: ")
    assert "refused" in message


def test_a_database_that_does_not_exist_is_named(postgres_cluster: Cluster) -> None:
    message = refusal(postgres_cluster.url("no_such_database").replace("postgres@", "postgres:secret-pw@"))
    assert 'database "no_such_database" does not exist' in message


@pytest.mark.parametrize(
    "url, expected",
    [
        ("mysql://app:secret-pw@db/userflow", "must start with postgresql://"),
        ("host=db password=secret-pw", "must start with postgresql://"),
        ("postgresql://app:secret-pw@db/userflow?colour=blue", "cannot be read: invalid URI query parameter"),
    ],
)
def test_a_url_that_is_not_a_postgresql_url_is_refused_before_connecting(url: str, expected: str) -> None:
    assert expected in refusal(url)

