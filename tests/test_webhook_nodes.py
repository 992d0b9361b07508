"""Webhook senders of several nodes sharing one PostgreSQL database (SPEC section 9:
"webhook deliveries fire once across all nodes"), against a real database and a
real receiver that checks every request with the ``standardwebhooks`` library.

Each node is a :class:`~userflow.actors.webhooks.Webhooks` on an event loop of
its own thread, with its own pool and node id, as separate processes would be.
A paused node is a loop that is frozen: nothing of it runs until it is thawed.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest

from tests.helpers import wait_until
from tests.webhook_receiver import Receiver, flaky, new_secret
from userflow.actors.delivery import WebhookSettings
from userflow.actors.timeutil import iso
from userflow.actors.webhooks import Webhooks
from userflow.storage.postgres.connect import open_pool
from userflow.storage.postgres.deliveries import PgDeliveries
from userflow.storage.postgres.schema import migrate

TYPES = ("user.created", "user.verified", "user.active", "user.expired")


class Node:
    """One node's sender, on an event loop of its own thread."""

    def __init__(self, url: str, node_id: str, settings: WebhookSettings, **options: Any) -> None:
        self.node_id = node_id
        self.recorded: list[tuple[str, str | None]] = []  # (delivery id, attempt error) of each outcome it kept
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"node-{node_id}", daemon=True)
        self._thread.start()
        self._pool = open_pool(url, min_size=1, max_size=4, timeout=5.0)
        self.webhooks: Webhooks = self.call(self._made(settings, options))
        self.call(self.webhooks.load())
        self.call(self.webhooks.start(lambda since: [], lambda run_id: []))
        self._thaw: threading.Event | None = None

    async def _made(self, settings: WebhookSettings, options: dict[str, Any]) -> Webhooks:
        webhooks = Webhooks(settings, PgDeliveries(self._pool, self.node_id), asyncio.get_running_loop(), **options)
        webhooks.subscribe(lambda delivery, attempt: attempt is not None and self.recorded.append((delivery.id, attempt["error"])))
        return webhooks

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def commit(self, run_id: str, events: list[dict[str, Any]]) -> None:
        """The run's events committed on this node (as the index listener hands them over)."""
        self._loop.call_soon_threadsafe(self.webhooks.events_committed, run_id, events)

    def freeze(self) -> None:
        """Pause the node: its loop stops at once, mid-attempt, until ``thaw``."""
        self._thaw = threading.Event()
        frozen = threading.Event()
        self._loop.call_soon_threadsafe(lambda: (frozen.set(), self._thaw.wait(60)))  # type: ignore[union-attr]
        assert frozen.wait(10)

    def thaw(self) -> None:
        assert self._thaw is not None
        self._thaw.set()

    def close(self) -> None:
        if self._thaw is not None:
            self._thaw.set()
        try:
            self.call(self.webhooks.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._pool.close()


def make_runs(url: str, count: int) -> list[str]:
    """Runs rows for the deliveries to belong to (the table's foreign key)."""
    run_ids = [f"wf_nodes{n:04d}" for n in range(count)]
    now = datetime.now(timezone.utc)
    with psycopg.connect(url) as connection:
        connection.cursor().executemany(
            "INSERT INTO runs (id, workflow, definition, format, status, document, version, created_at, updated_at) "
            "VALUES (%s, 'user-signup', 1, 1, 'COMPLETED', '{}', 1, %s, %s)",
            [(run_id, now, now) for run_id in run_ids],
        )
    return run_ids


def events_of(run_id: str, count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"evt_{run_id[3:]}_{n}", "type": TYPES[n - 1], "timestamp": iso(datetime.now(timezone.utc).timestamp()), "data": {"id": f"usr_{run_id[3:]}", "n": n}}
        for n in range(1, count + 1)
    ]


def stored(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT id, status, attempts, claimed_by FROM webhook_deliveries").fetchall()
    return {id_: {"status": status, "attempts": attempts, "claimedBy": by} for id_, status, attempts, by in rows}


def all_delivered(url: str) -> dict[str, dict[str, Any]] | None:
    rows = stored(url)
    return rows if rows and all(row["status"] == "delivered" for row in rows.values()) else None


@pytest.fixture
def database(database_url: str) -> Iterator[str]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        migrate(connection)
    yield database_url


def test_three_nodes_deliver_each_event_once_and_each_lane_in_order(database: str) -> None:
    secret = new_secret()
    with Receiver(secret) as receiver:
        receiver.answer = flaky(0.25)
        settings = WebhookSettings((receiver.url,), (secret,), timeout=5.0, schedule=(0.05, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2))
        nodes = [Node(database, f"node-{k}", settings, in_flight=4) for k in range(3)]
        try:
            run_ids = make_runs(database, 24)
            events = {run_id: events_of(run_id, 4) for run_id in run_ids}
            for k, run_id in enumerate(run_ids):
                nodes[k % 3].commit(run_id, events[run_id])  # the node that ran the step
            wait_until(lambda: len(stored(database)) == 4 * len(run_ids), timeout=10)
            for k, run_id in enumerate(run_ids):
                # The other nodes notice the same events too (as a takeover, or a start's catching up, would).
                for node in nodes[k % 3 + 1 :] + nodes[: k % 3]:
                    node.commit(run_id, events[run_id])
            want = {f"evt_{run_id[3:]}_{n}" for run_id in run_ids for n in range(1, 5)}
            got = receiver.wait_until(lambda rs: {r.id for r in rs if 200 <= r.answered < 300} >= want, timeout=60)
            rows = wait_until(lambda: all_delivered(database), timeout=10)
        finally:
            for node in nodes:
                node.close()
    assert len(rows) == len(want), "one delivery per event, however many nodes noticed it"
    answered = collections.Counter(r.id for r in got if 200 <= r.answered < 300)
    assert set(answered) == want and set(answered.values()) == {1}, "each event delivered exactly once"
    assert all(r.verified[secret] for r in got)
    sent = collections.Counter(r.id for r in got)
    for delivery_id, row in rows.items():
        event_id = "evt_" + delivery_id[4:].rpartition("_")[0]
        assert sent[event_id] == len(row["attempts"]), "every request made is an attempt recorded: no node sent one unrecorded"
    for run_id in run_ids:
        mine = [(i, r) for i, r in enumerate(got) if r.body["data"]["id"] == f"usr_{run_id[3:]}"]
        first_sent = {r.body["data"]["n"]: min(i for i, s in mine if s.body["data"]["n"] == r.body["data"]["n"]) for _, r in mine}
        first_ok = {n: min(i for i, r in mine if r.body["data"]["n"] == n and 200 <= r.answered < 300) for n in first_sent}
        assert all(first_sent[n + 1] > first_ok[n] for n in range(1, 4)), (run_id, first_sent, first_ok)
    outcomes = {node.node_id: len(node.recorded) for node in nodes}
    assert all(outcomes.values()), f"every node took part: {outcomes}"
    assert sum(outcomes.values()) == sum(sent.values())


def test_a_paused_node_whose_claim_ran_out_records_nothing_and_another_node_delivers(database: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = new_secret()
    with Receiver(secret) as receiver:
        settings = WebhookSettings((receiver.url,), (secret,), timeout=30.0, schedule=(0.1,))
        receiver.answer = lambda n: "timeout" if n == 1 else 204
        receiver.hang = 3.0  # the paused node's request is answered (204) after its claim ran out
        paused = Node(database, "paused", settings, claim_seconds=1.0)
        other: Node | None = None
        (run_id,) = make_runs(database, 1)
        first, second = f"dlv_{run_id[3:]}_1_1", f"dlv_{run_id[3:]}_2_1"
        try:
            # The node claims the lane's first event, sends it, and is paused before its answer comes.
            paused.commit(run_id, events_of(run_id, 2))
            receiver.wait_until(lambda rs: len(rs) >= 1)
            paused.freeze()
            assert stored(database)[first]["claimedBy"] == "paused"
            # Its claim runs out (by the database's clock); another node takes the delivery over,
            # and the lane's next event follows it.
            other = Node(database, "other", settings)
            got = receiver.wait_until(lambda rs: len(rs) >= 3, timeout=20)
            assert [r.id for r in got] == [f"evt_{run_id[3:]}_1", f"evt_{run_id[3:]}_1", f"evt_{run_id[3:]}_2"]
            wait_until(lambda: [d for d, _ in other.recorded] == [first, second], timeout=10)
            taken_over = stored(database)[first]
            assert taken_over["status"] == "delivered" and taken_over["claimedBy"] == "other" and len(taken_over["attempts"]) == 1
            # The paused node wakes up to its answer: the claim is no longer its own, it records nothing.
            paused.thaw()
            wait_until(lambda: any("claim on delivery" in r.getMessage() and first in r.getMessage() for r in caplog.records), timeout=40)
            assert stored(database)[first] == taken_over
            assert paused.recorded == [], "a fenced outcome is not told to the node's listeners"
        finally:
            paused.close()
            if other is not None:
                other.close()
