"""Migrations: applied once, in one transaction, safely by processes starting together."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from typing import Any

import psycopg
import pytest

from tests.helpers import wait_until
from userflow.storage.postgres import MIGRATIONS, Migration, SchemaBusy, SchemaTooNew, migrate
from userflow.storage.postgres.schema import MIGRATION_LOCK

TABLES = {
    "schema_migrations",
    "nodes",
    "runs",
    "timeline",
    "lookup_keys",
    "secrets",
    "operator_accounts",
    "operator_sessions",
    "webhook_urls",
    "webhook_deliveries",
    "events",
    "run_facets",
    "run_counts",
}


def tables(connection: psycopg.Connection) -> set[str]:
    rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {name for (name,) in rows}


def shape(connection: psycopg.Connection) -> list[Any]:
    """Every column and index of the public schema, to compare before and after."""
    columns = connection.execute(
        """SELECT table_name, column_name, data_type, is_nullable, column_default
           FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"""
    ).fetchall()
    indexes = connection.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall()
    return [columns, indexes]


def recorded(connection: psycopg.Connection) -> list[tuple[int, str, Any]]:
    return connection.execute("SELECT version, description, applied_at FROM schema_migrations ORDER BY version").fetchall()


def test_the_migrations_are_numbered_in_order_from_one() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert all(m.description and m.sql.strip() for m in MIGRATIONS)


def test_an_empty_database_gets_every_table_and_records_each_version(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        assert migrate(connection) == [m.version for m in MIGRATIONS]
        assert tables(connection) == TABLES
        assert [(v, d) for v, d, _ in recorded(connection)] == [(m.version, m.description) for m in MIGRATIONS]
        releases = connection.execute("SELECT DISTINCT release FROM schema_migrations").fetchall()
        assert releases == [(metadata.version("userflow"),)]


def test_migrating_again_changes_nothing(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        migrate(connection)
        before = shape(connection), recorded(connection)
        assert migrate(connection) == []
        assert (shape(connection), recorded(connection)) == before


def test_a_later_release_applies_only_its_new_migration(database_url: str) -> None:
    later = (*MIGRATIONS, Migration(MIGRATIONS[-1].version + 1, "a later column", "ALTER TABLE nodes ADD COLUMN url text"))
    with psycopg.connect(database_url, autocommit=True) as connection:
        migrate(connection)
        assert migrate(connection, later) == [later[-1].version]
        assert [v for v, _, _ in recorded(connection)] == [m.version for m in later]
        assert connection.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'nodes' AND column_name = 'url'").fetchone() == (1,)


def test_a_failing_migration_leaves_nothing_behind(database_url: str) -> None:
    broken = (*MIGRATIONS, Migration(MIGRATIONS[-1].version + 1, "broken", "CREATE TABLE half (id int); SELECT no_such_column FROM runs"))
    with psycopg.connect(database_url, autocommit=True) as connection:
        with pytest.raises(psycopg.errors.UndefinedColumn):
            migrate(connection, broken)
        # Everything was one transaction: not even the first migration or schema_migrations stayed.
        assert tables(connection) == set()
        assert migrate(connection) == [m.version for m in MIGRATIONS]


def test_a_database_with_a_newer_schema_is_refused_and_left_as_it_is(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        migrate(connection)
        future = MIGRATIONS[-1].version + 1
        with connection.transaction():
            connection.execute(
                "INSERT INTO schema_migrations (version, description, release) VALUES (%s, 'from the future', '9.0.0')", (future,)
            )
        before = shape(connection), recorded(connection)
        with pytest.raises(SchemaTooNew) as refused:
            migrate(connection)
        message = str(refused.value)
        assert "\n" not in message
        assert f"schema is at version {future} (applied by userflow 9.0.0)" in message
        assert f"knows versions up to {MIGRATIONS[-1].version}" in message
        assert (shape(connection), recorded(connection)) == before


# Repeatable read: a snapshot taken before the lock was granted would miss what the
# first process committed; migrate must read after the lock whatever the default.
MIGRATE_IN_A_CHILD = """
import sys, psycopg
from userflow.storage.postgres import migrate
with psycopg.connect(sys.argv[1]) as connection:
    connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    print(migrate(connection))
"""


def test_two_processes_migrating_at_once_both_succeed_and_each_migration_is_applied_once(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as holder:
        # Hold the migration lock so that both children are surely waiting on it at
        # the same moment, then let them race for it.
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        children = [
            subprocess.Popen([sys.executable, "-c", MIGRATE_IN_A_CHILD, database_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        try:
            waiting = """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
            wait_until(lambda: holder.execute(waiting).fetchone() == (2,), timeout=30, message="both children waiting for the lock")
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            outcomes = [child.communicate(timeout=60) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        assert [child.returncode for child in children] == [0, 0], [err for _, err in outcomes]
        applied = sorted(out.strip() for out, _ in outcomes)
        assert applied == sorted(["[]", str([m.version for m in MIGRATIONS])])  # one applied all, the other none
        counts = holder.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version").fetchall()
        assert counts == [(m.version, 1) for m in MIGRATIONS]


def test_migrate_refuses_a_connection_inside_a_transaction(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        connection.execute("SELECT 1")  # opens a transaction (not in autocommit)
        with pytest.raises(ValueError, match="outside any transaction"):
            migrate(connection)


def test_a_lock_held_too_long_is_reported_in_one_line(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as holder, psycopg.connect(database_url, autocommit=True) as connection:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        with pytest.raises(SchemaBusy, match=r"^another process has been migrating the schema for 0.2 s; is it stuck\?$"):
            migrate(connection, lock_timeout=0.2)
        assert tables(connection) == set()
