"""The PostgreSQL run store against a real PostgreSQL: the same port the data dir
implements, group commit, durability across a crash of the database, and the
engine running on it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests import postgres
from tests.helpers import Runtimes, wait_for_status, wait_idle
from userflow.actors.run_model import new_run
from userflow.actors.workflow import Step, StepContext, Wait, Workflow
from userflow.storage import StorageError
from userflow.storage.postgres import migrate, open_pool
from userflow.storage.postgres.runs import PgRunStore


def noop(ctx: StepContext) -> dict[str, Any]:
    return {"step": ctx.step_id}


FLOW = Workflow("order", (Step("a", "A", noop), Wait("approval", "Approval", "approved"), Step("b", "B", noop)))


@pytest.fixture
def store(database_url: str) -> Iterator[PgRunStore]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        migrate(connection)
    pool = open_pool(database_url, timeout=3)
    made = PgRunStore(pool)
    try:
        yield made
    finally:
        made.close()
        pool.close()


def document(run_id: str, version: int, status: str = "RUNNING") -> dict[str, Any]:
    run = new_run(FLOW, run_id, {"n": 1})
    run.update(version=version, status=status)
    return run


def test_a_commit_is_read_back_whole_and_never_goes_back(store: PgRunStore) -> None:
    handle = store.open("wf_one")
    assert handle.load() is None
    entries = [{"seq": 1, "at": "2026-12-02T08:00:00.000Z", "type": "run-started", "step": None, "attempt": None, "message": "hi"}]
    handle.commit(document("wf_one", 1), entries)
    handle.commit(document("wf_one", 2, "WAITING"), [{**entries[0], "seq": 2, "message": "two"}])
    stored = store.read("wf_one")
    assert stored is not None and stored.run["status"] == "WAITING" and stored.run["version"] == 2
    assert [e["message"] for e in stored.timeline] == ["hi", "two"]
    handle.commit(document("wf_one", 1, "RUNNING"), [])  # an older document: a retried commit
    again = store.read("wf_one")
    assert again is not None and again.run["version"] == 2 and again.run["status"] == "WAITING"


def test_scan_pages_through_every_run_but_those_skipped(store: PgRunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("userflow.storage.postgres.runs.SCAN_BATCH", 3)
    for n in range(8):
        store.open(f"wf_{n}").commit(document(f"wf_{n}", 1), [])
    assert [run["id"] for run in store.scan(skip={"wf_2", "wf_5"})] == [f"wf_{n}" for n in (0, 1, 3, 4, 6, 7)]


def test_commits_from_many_threads_share_transactions(store: PgRunStore, database_url: str) -> None:
    def transactions() -> int:
        with psycopg.connect(database_url) as connection:
            return int(connection.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0])

    before = transactions()
    start = threading.Barrier(32)

    def writer(n: int) -> None:
        start.wait()
        for version in range(1, 11):
            store.open(f"wf_t{n}").commit(document(f"wf_t{n}", version), [])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all((store.read(f"wf_t{n}") or (None,))[0]["version"] == 10 for n in range(32))
    # Statistics are reported with a short delay; only fewer than one per commit is asserted.
    assert transactions() - before < 320, "commits were grouped"


def test_a_commit_survives_a_crash_of_the_database(store: PgRunStore, postgres_cluster: postgres.Cluster) -> None:
    store.open("wf_durable").commit(document("wf_durable", 1, "WAITING"), [])
    postgres_cluster.stop_immediately()
    with pytest.raises(StorageError):
        store.open("wf_lost").commit(document("wf_lost", 1), [])  # no database: refused, not hung
    postgres_cluster.start()
    stored = store.read("wf_durable")
    assert stored is not None and stored.run["status"] == "WAITING"
    store.open("wf_after").commit(document("wf_after", 1), [])  # the store carries on by itself
    assert store.read("wf_after") is not None


async def test_the_engine_runs_on_postgres_and_recovers_from_it(tmp_path: Any, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        migrate(connection)
    runtimes = Runtimes(str(tmp_path))
    pools = [open_pool(database_url, timeout=3) for _ in range(2)]
    try:
        first = await runtimes([FLOW], store=PgRunStore(pools[0]))
        started = await first.start_run("order", {"n": 1})
        await wait_for_status(first, started.run_id, "WAITING")
        await wait_idle()
        await asyncio.to_thread(first.stop)
        runtimes.made.remove(first)
        # A new engine on the same database: recovery finds the waiting run, the signal reaches it.
        second = await runtimes([FLOW], store=PgRunStore(pools[1]))
        await second.signal(started.run_id, "approved", {"by": "ann"})
        await wait_for_status(second, started.run_id, "COMPLETED")
        stored = await second.read(started.run_id)
        assert stored is not None and [s["status"] for s in stored.run["steps"]] == ["COMPLETED"] * 3
        assert [e["seq"] for e in stored.timeline] == list(range(1, len(stored.timeline) + 1))
    finally:
        await runtimes.close()
        for pool in pools:
            pool.close()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_every_lookup_key_is_in_the_database_and_follows_the_run(make_client: Any) -> None:
    from tests.http_helpers import waiting_signup, wait_run
    from userflow.actors.signup.tokens import token_hash
    from userflow.http.keys import STORES

    client = await make_client()
    accepted, token = await waiting_signup(client, "Ann.Lee@Example.com")
    run_id = accepted["workflowId"]
    resp = await client.post(f"/api/users/{accepted['userId']}/resend-verification")
    assert resp.status == 202, await resp.text()
    await wait_run(client, run_id, "WAITING")
    with client.server.app[STORES].pool.connection() as connection:
        rows = connection.execute("SELECT kind, key, run_id FROM lookup_keys ORDER BY kind, key").fetchall()
    by_kind: dict[str, set[str]] = {}
    for kind, key, owner in rows:
        assert owner == run_id
        by_kind.setdefault(kind, set()).add(key)
    assert by_kind["user"] == {accepted["userId"]}
    assert len(by_kind["email"]) == 1 and "ann.lee@example.com" in next(iter(by_kind["email"])).lower()
    assert token_hash(token) in by_kind["token"] and len(by_kind["token"]) == 2, "the resent link's hash is there too"
