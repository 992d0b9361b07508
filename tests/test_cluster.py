"""Three nodes on one PostgreSQL database: any node answers, a dead node's runs carry on.

Real node processes on 127.0.0.1, one throwaway PostgreSQL cluster, the real SMTP
server counting what arrives; every loop bounded.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.error

import psycopg
import pytest

from tests.cluster import EventReader, Nodes, attempts_by_node, completed_runs, detail, overlapping, received, run_of, token_in
from tests.helpers import wait_until
from userflow.actors.timeutil import epoch
from tests.smtp_server import SmtpServer
from tests.webhook_receiver import Receiver, flaky, new_secret

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def smtp():
    with SmtpServer() as server:
        yield server


@pytest.fixture
def nodes(tmp_path, database_url, smtp):
    with Nodes(str(tmp_path), database_url, smtp) as made:
        yield made


def test_signups_on_every_node_and_clicks_on_another_all_complete_with_one_email_each(nodes, smtp):
    a, b, c = (nodes.start(name) for name in ("a", "b", "c"))
    ring = [a, b, c]
    runs = {}
    for n in range(30):
        status, body = ring[n % 3].request("POST", "/api/signup", {"email": f"spread{n}@example.com", "name": "Spread Out"})
        assert status == 202, body
        runs[body["workflowId"]] = n % 3
    messages = smtp.handler.wait_for(30, timeout=60)
    ids = list(runs)
    cancelled, resent = ids[:2], ids[2:4]
    for run_id in cancelled:  # an operator's action on another node than the run's
        status, body = ring[(runs[run_id] + 1) % 3].request("POST", f"/api/workflows/{run_id}/cancel")
        assert status == 200 and body["status"] == "CANCELLED", body
    for run_id in resent:
        user_id = a.get(f"/api/workflows/{run_id}")["userId"]
        status, body = ring[(runs[run_id] + 2) % 3].request("POST", f"/api/users/{user_id}/resend-verification")
        assert status == 202, body
    messages = smtp.handler.wait_for(32, timeout=60)
    newest = {run_of(m): m for m in messages}  # the resent link replaces the first
    for run_id, message in newest.items():
        if run_id in cancelled:
            continue
        clicked_on = ring[(runs[run_id] + 1) % 3]  # never the node that took the signup
        status, body = clicked_on.request("GET", "/api/verify?token=" + token_in(message))
        assert status == 200, body
    for run_id in runs:
        wanted = "CANCELLED" if run_id in cancelled else "COMPLETED"
        done = a.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == wanted, timeout=30)
        if run_id not in cancelled:
            assert done["user"]["status"] in ("ACTIVE", "FLAGGED")
        assert all(node in ("a", "b", "c") for _, _, node, _, _ in attempts_by_node(done))
    counts = received(smtp)
    assert set(counts.values()) == {1}, "an email was sent twice"
    assert len(counts) == 32 and all(any(m.startswith(f"<{run_id}.resend.") for m in counts) for run_id in resent), sorted(counts)
    # Any node answers with the same result.
    for node in ring:
        assert {w["id"] for w in node.get("/api/workflows?limit=100")["workflows"]} == set(runs)
    panel = b.get("/api/nodes")
    assert panel["node"] == "b" and {n["id"]: n["alive"] for n in panel["nodes"]} == {"a": True, "b": True, "c": True}
    assert c.get("/readyz")["node"] == "c"


def test_one_address_signed_up_on_every_node_at_once_is_one_user_with_one_email(nodes, smtp):
    ring = [nodes.start(name) for name in ("a", "b", "c")]
    start = threading.Barrier(6)
    answers = []

    def sign_up(node) -> None:
        start.wait()
        answers.append(node.request("POST", "/api/signup", {"email": "twice@example.com", "name": "Double Click"}))

    workers = [threading.Thread(target=sign_up, args=(ring[n % 3],)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert [status for status, _ in answers] == [202] * 6, answers
    assert len({body["workflowId"] for _, body in answers}) == 1, answers
    [run_id] = {body["workflowId"] for _, body in answers}
    ring[1].wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING", timeout=30)
    assert len(ring[2].get("/api/users?q=twice@example.com")["users"]) == 1
    assert received(smtp) == {f"<{run_id}.verification.1@userflow>": 1}


def test_a_click_on_another_node_while_the_signup_node_still_executes_the_run_waits_for_it(nodes, smtp):
    a, b = nodes.start("a"), nodes.start("b")
    runs = set()
    for n in range(20):
        status, body = a.request("POST", "/api/signup", {"email": f"eager{n}@example.com", "name": "Eager Clicker"})
        assert status == 202, body
        runs.add(body["workflowId"])
    clicked: set[str] = set()
    seen = 0
    deadline = time.monotonic() + 60
    while clicked != runs and time.monotonic() < deadline:
        arrived = list(smtp.handler.messages)
        for message in arrived[seen:]:  # at once: node A is still finishing the email's step
            status, body = b.request("GET", "/api/verify?token=" + token_in(message))
            assert status == 200, body
            clicked.add(run_of(message))
        seen = len(arrived)
        with smtp.handler.received:  # until the next email arrives
            smtp.handler.received.wait_for(lambda: len(smtp.handler.messages) > seen or clicked == runs, timeout=1)
    assert clicked == runs
    for run_id in runs:
        b.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED", timeout=30)
    for node in (a, b):
        node.log_marker()
        assert not any("Unhandled exception" in line or "Traceback" in line for line in node.stderr), "".join(node.stderr[-30:])


class Traffic:
    """Signups on random live nodes, and each email's click on another random node."""

    def __init__(self, nodes: Nodes, smtp: SmtpServer, rng: random.Random) -> None:
        self.nodes, self.smtp, self.rng = nodes, smtp, rng
        self.accepted: dict[str, str] = {}  # run id -> node that answered 202
        self.verified: set[str] = set()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def call(self, method: str, path: str, body=None, avoid=None):
        with self.lock:
            live = [node for node in self.nodes.alive() if node is not avoid] or self.nodes.alive()
            node = self.rng.choice(live)
        try:
            return node, *node.request(method, path, body)
        except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
            self.stop.wait(0.05)  # that node died under us: another is tried next time
            return node, None, None

    def signups(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            node, status, body = self.call("POST", "/api/signup", {"email": f"k{worker}n{n}@example.com", "name": "Load Test"})
            if status == 202:
                with self.lock:
                    self.accepted[body["workflowId"]] = node.node_id

    def under_kills(self, rounds: int, signup_workers: int, down: tuple[float, float]) -> list[tuple[str, float]]:
        """Run the traffic while a random node is SIGKILLed ``rounds`` times, each replaced,
        after ``down`` seconds, by a new node (the survivors must take the dead one's runs);
        the traffic stopped, the kills: (node, time)."""
        threads = [threading.Thread(target=self.signups, args=(w,), daemon=True) for w in range(signup_workers)]
        threads.append(threading.Thread(target=self.clicks, daemon=True))
        for thread in threads:
            thread.start()
        kills: list[tuple[str, float]] = []
        try:
            for round in range(rounds):
                time.sleep(self.rng.uniform(0.5, 1.5))  # chaos timing: a random moment, not a synchronisation
                with self.lock:
                    victim = self.rng.choice(sorted(self.nodes.nodes))
                    self.nodes.kill(victim)
                kills.append((victim, time.time()))
                time.sleep(self.rng.uniform(*down))
                with self.lock:
                    self.nodes.start(f"{victim}{round}")
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=20)
        return kills

    def clicks(self) -> None:
        seen = 0
        while not self.stop.is_set():
            arrived = list(self.smtp.handler.messages)
            for message in arrived[seen:]:
                if run_of(message) in self.verified:
                    continue
                _, status, _ = self.call("GET", "/api/verify?token=" + token_in(message))
                if status == 200:
                    with self.lock:
                        self.verified.add(run_of(message))
            seen = len(arrived)
            self.stop.wait(0.02)  # polling the mailbox; what arrived decides


def test_sigkill_of_random_nodes_under_load_every_202_completes_on_the_survivors(nodes, smtp):
    rng = random.Random(11)
    for name in ("a", "b", "c"):
        nodes.start(name)
    traffic = Traffic(nodes, smtp, rng)
    kills = traffic.under_kills(3, signup_workers=3, down=(0.5, 1.0))
    assert traffic.accepted, "the traffic never got through"
    survivor = nodes.alive()[0]
    for run_id in traffic.accepted:
        run = survivor.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] in ("WAITING", "COMPLETED"), timeout=60)
        if run["status"] == "WAITING":
            wanted = f"<{run_id}.verification.1@userflow>"
            wait_until(lambda: wanted in received(smtp), timeout=30)
            message = next(m for m in list(smtp.handler.messages) if m["Message-ID"] == wanted)
            assert nodes.other(survivor).request("GET", "/api/verify?token=" + token_in(message))[0] == 200
        survivor.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED", timeout=60)
    counts = received(smtp)
    expected = {f"<{run_id}.verification.1@userflow>" for run_id in traffic.accepted}
    assert expected <= set(counts), expected - set(counts)
    repeated = {message_id: n for message_id, n in counts.items() if n > 1}
    # A kill repeats at most the sends in flight on the dead node (one per SMTP
    # connection of its pool), each with the Message-ID of the first.
    assert sum(n - 1 for n in repeated.values()) <= 16 * len(kills), repeated
    moved = [
        run for run in (detail(survivor, run_id) for run_id in traffic.accepted)
        if any(node in {victim for victim, _ in kills} for _, _, node, _, _ in attempts_by_node(run))
        and any(node not in {victim for victim, _ in kills} for _, _, node, _, _ in attempts_by_node(run))
    ]  # fmt: skip
    for run in moved:
        assert not overlapping(run), overlapping(run)
    print(f"\ncluster kills: {len(kills)} kills, {len(traffic.accepted)} signups, {len(moved)} runs moved between nodes, "
          f"{sum(n - 1 for n in repeated.values())} emails received twice")  # fmt: skip


def test_webhooks_deliver_every_event_of_every_run_in_order_while_nodes_are_killed(tmp_path, database_url, smtp):
    rng = random.Random(5)
    secret = new_secret()
    with Receiver(secret) as receiver:
        receiver.answer = flaky(0.2)
        flags = ("--webhook-url", receiver.url, "--webhook-retry-schedule", "0.2,0.5,1,2,4")
        with Nodes(str(tmp_path), database_url, smtp, *flags, env={"USERFLOW_WEBHOOK_SECRET": secret}) as nodes:
            for name in ("a", "b", "c"):
                nodes.start(name)
            traffic = Traffic(nodes, smtp, rng)
            traffic.under_kills(2, signup_workers=2, down=(0.3, 0.8))
            survivor = nodes.alive()[0]
            for run_id in traffic.accepted:
                survivor.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] in ("WAITING", "COMPLETED"), timeout=60)
            with psycopg.connect(database_url) as connection:
                events = {
                    run_id: [e["id"] for e in found or []]
                    for run_id, found in connection.execute("SELECT id, document -> 'events' FROM runs").fetchall()
                }
            promised = {event for run_events in events.values() for event in run_events}
            assert promised, "no event was recorded"
            receiver.wait_until(lambda got: promised <= {r.id for r in got if 200 <= r.answered < 300}, timeout=90)
            delivered = receiver.delivered()
            assert all(all(r.verified.values()) for r in receiver.received), "a request was not signed with the secret"
            first_delivery = {}
            for n, r in enumerate(delivered):
                first_delivery.setdefault(r.id, n)
            for run_events in events.values():  # each user's events delivered in the order they happened
                order = [first_delivery[event] for event in run_events]
                assert order == sorted(order), run_events
            repeats = len(delivered) - len({r.id for r in delivered})
            print(f"\nwebhooks under kills: {len(promised)} events, {repeats} delivered twice")


def test_a_paused_node_loses_its_runs_and_executes_nothing_of_theirs_when_it_wakes(nodes, smtp):
    a, b, c = (nodes.start(name) for name in ("a", "b", "c"))
    first_try: set[str] = set()

    def hold_first_send(envelope) -> bool:  # B's sends stay in flight; a later one goes through
        to = envelope.rcpt_tos[0]
        if to.startswith("paused") and to not in first_try:
            first_try.add(to)
            return True
        return False

    smtp.handler.hold = hold_first_send
    runs = [b.request("POST", "/api/signup", {"email": f"paused{n}@example.com", "name": "Paused Node"})[1]["workflowId"] for n in range(3)]
    smtp.handler.wait_held(3, timeout=30)
    nodes.pause("b")
    paused_at = time.time()
    try:
        for run_id in runs:  # taken over by A or C once B's heartbeat is older than the timeout
            a.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING", timeout=30)
        taken_at = time.time()
        smtp.handler.let_go()
    finally:
        nodes.resume("b")
    b.log_marker(timeout=30)  # B runs again and has logged what it did on waking
    assert any("lease" in line for line in b.stderr), "the node that woke did not notice it had lost its lease"
    for run_id in runs:
        run = detail(c, run_id)
        attempts = attempts_by_node(run)
        assert attempts[0][2] == "b" and any(node in ("a", "c") for _, _, node, _, _ in attempts), attempts
        assert not overlapping(run), overlapping(run)
        late = [e for e in run["timeline"] if e["node"] == "b" and epoch(e["at"]) > paused_at]
        assert not late, f"the paused node recorded work on a run it no longer had: {late}"
        assert run["node"] in ("a", "c")
    # The woken node is a node again: it takes signups and executes them.
    status, body = b.request("POST", "/api/signup", {"email": "awake@example.com", "name": "Awake Again"})
    assert status == 202
    a.wait_for(f"/api/workflows/{body['workflowId']}", lambda d: d["status"] == "WAITING", timeout=30)
    print(f"\npaused node: runs moved {taken_at - paused_at:.1f} s after SIGSTOP")


def test_reminders_and_expiries_fire_once_each_across_three_nodes(tmp_path, database_url, smtp):
    with Nodes(str(tmp_path), database_url, smtp, "--reminder-after", "1", "--verify-ttl", "3") as nodes:
        ring = [nodes.start(name) for name in ("a", "b", "c")]
        runs = []
        for n in range(200):
            status, body = ring[n % 3].request("POST", "/api/signup", {"email": f"late{n}@example.com", "name": "Never Clicks"})
            assert status == 202, body
            runs.append(body["workflowId"])
        for run_id in runs:
            ring[0].wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED", timeout=120)
        counts = received(smtp)
        for run_id in runs:
            assert counts[f"<{run_id}.verification.1@userflow>"] == 1
            reminders = {m: n for m, n in counts.items() if m.startswith(f"<{run_id}.reminder")}
            assert list(reminders.values()) == [1], f"{run_id}: reminders {reminders}"
            run = detail(ring[0], run_id)
            assert run["user"]["status"] == "EXPIRED"
            reached = [e["message"] for e in run["timeline"] if e["type"] == "deadline"]
            assert sorted(reached) == sorted({m for m in reached}), f"{run_id}: a deadline fired twice: {reached}"
            assert sum("is EXPIRED" in e["message"] for e in run["timeline"]) == 1


def signup_and_click(first, second, smtp, emails: list[str]) -> list[str]:
    """Sign each address up on ``first`` and click its link on ``second``; the run ids."""
    runs = [first.request("POST", "/api/signup", {"email": email, "name": "Event Watcher"})[1]["workflowId"] for email in emails]
    for run_id in runs:
        wanted = f"<{run_id}.verification.1@userflow>"
        wait_until(lambda: wanted in received(smtp), timeout=30)
        message = next(m for m in list(smtp.handler.messages) if m["Message-ID"] == wanted)
        assert second.request("GET", "/api/verify?token=" + token_in(message))[0] == 200
    return runs


def test_one_event_stream_shows_every_node_and_resumes_on_another_without_a_gap_or_a_repeat(nodes, smtp, database_url):
    a, b, c = (nodes.start(name) for name in ("a", "b", "c"))
    on_c = EventReader(c)
    try:
        runs = signup_and_click(a, b, smtp, [f"sse-a{n}@example.com" for n in range(8)])
        runs += signup_and_click(b, a, smtp, [f"sse-b{n}@example.com" for n in range(8)])
        on_c.until(lambda frames: set(runs) <= completed_runs(frames))
    finally:
        on_c.close()
    seen_on_c = list(on_c.frames)
    later = signup_and_click(a, b, smtp, [f"sse-later{n}@example.com" for n in range(6)])  # while no client watches
    on_a = EventReader(a, last_event_id=seen_on_c[-1]["id"])
    try:
        on_a.until(lambda frames: set(later) <= completed_runs(frames))
    finally:
        on_a.close()
    ids = [frame["id"] for frame in seen_on_c + on_a.frames]
    assert len(ids) == len(set(ids)), "a frame was sent twice"
    numbers = [int(i.rsplit("-", 1)[1]) for i in ids]
    assert numbers == sorted(numbers), "frames out of order"
    with psycopg.connect(database_url) as connection:
        stored = [seq for (seq,) in connection.execute("SELECT seq FROM events WHERE seq BETWEEN %s AND %s ORDER BY seq", (numbers[0], numbers[-1]))]
    assert numbers == stored, "frames stored in the database were not streamed"
