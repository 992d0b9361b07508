"""A crash loop: signups and clicks keep coming while the server is killed again and again.

At random moments the server gets SIGKILL and is started again on the same
data dir or database. Whatever was answered 202 (a signup) or 200 (a click) must end as a
completed run. Emails go to a real SMTP server, which counts what it received: each
run's verification email arrives, and arrives again only if a kill fell while it was
being sent (at most once per kill). Bounded for CI; a longer soak by hand:

    USERFLOW_SOAK_KILLS=30 python -m pytest tests/test_crash_loop.py -s
"""

from __future__ import annotations

import collections
import inspect
import os
import random
import threading
import time
import urllib.error

import pytest

from tests.helpers import wait_until
from tests.server import Server
from tests.smtp_server import SmtpServer
from userflow.actors.signup.smtp import SmtpTransport

KILLS = int(os.environ.get("USERFLOW_SOAK_KILLS", "3"))
pytestmark = pytest.mark.timeout(60 + 15 * KILLS)


class Traffic:
    """Client threads that remember exactly what the server promised them."""

    def __init__(self, server: Server, smtp: SmtpServer) -> None:
        self.server = server
        self.smtp = smtp
        self.accepted: set[str] = set()
        self.verified: set[str] = set()
        self.refused = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.count = 0

    def call(self, method: str, path: str, body=None):
        try:
            return self.server.request(method, path, body)
        except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
            with self.lock:
                self.refused += 1
            self.stop.wait(0.05)  # the server is down or dying: try again shortly
            return None, None

    def signups(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            status, body = self.call("POST", "/api/signup", {"email": f"w{worker}n{n}@example.com", "name": "Load Test"})
            if status == 202:
                with self.lock:
                    self.accepted.add(body["workflowId"])

    def clicks(self) -> None:
        seen = 0
        while not self.stop.is_set():
            arrived = list(self.smtp.handler.messages)
            if len(arrived) == seen:
                self.stop.wait(0.02)  # polling the mailbox; what arrived decides
                continue
            for message in arrived[seen:]:
                run_id = run_of(message)
                if run_id in self.verified or self.stop.is_set():
                    continue
                status, _ = self.call("GET", "/api/verify?token=" + token_in(message))
                if status == 200:
                    with self.lock:
                        self.verified.add(run_id)
            seen = len(arrived)


def run_of(message) -> str:
    return message["Message-ID"].strip("<>").split(".", 1)[0]


def token_in(message) -> str:
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    return next(word for word in text.split() if "/verify?token=" in word).split("token=", 1)[1]


def test_kill_9_at_random_moments_loses_nothing_promised(stores_at):
    rng = random.Random(os.environ.get("USERFLOW_SOAK_SEED", "7"))
    smtp = SmtpServer().__enter__()
    flags = ("--email-failure-rate", "0.2", "--smtp-url", smtp.url)
    server = stores_at.server(*flags).start()
    traffic = Traffic(server, smtp)
    threads = [threading.Thread(target=traffic.signups, args=(w,), daemon=True) for w in range(3)]
    threads.append(threading.Thread(target=traffic.clicks, daemon=True))
    for thread in threads:
        thread.start()
    servers = [server]
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.4, 1.5))  # chaos timing: a random moment, not a synchronisation
            assert server.kill() == -9
            server = stores_at.server(*flags).start()
            servers.append(server)
            traffic.server = server
        time.sleep(rng.uniform(0.4, 1.0))
        traffic.stop.set()
        for thread in threads:
            thread.join(timeout=20)

        assert traffic.accepted and traffic.verified, "the traffic never got through"
        missing = traffic.accepted - set(_all_runs(server))
        assert not missing, f"signups answered 202 but lost: {missing}"
        for run_id in traffic.verified:
            server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED", timeout=30)
        # The rest were promised too: they wait for their click, then complete.
        for run_id in traffic.accepted - traffic.verified:
            settled = ("WAITING", "COMPLETED", "FAILED")
            detail = server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] in settled, timeout=30)
            for _ in range(3):
                if detail["status"] != "FAILED":
                    break
                # Injected failures until the retry budget ran out: the operator retries.
                assert "injected failure" in detail["error"]["message"], detail["error"]
                assert server.request("POST", f"/api/workflows/{run_id}/retry")[0] == 202
                detail = server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] in settled, timeout=30)
            assert detail["status"] != "FAILED", f"run {run_id} still FAILED after three retries: {detail['error']}"
            if detail["status"] == "WAITING":
                wanted = f"<{run_id}.verification.1@userflow>"
                mailbox = traffic.smtp.handler.messages
                wait_until(lambda: any(m["Message-ID"] == wanted for m in list(mailbox)), timeout=30)
                message = next(m for m in list(mailbox) if m["Message-ID"] == wanted)
                assert server.request("GET", "/api/verify?token=" + token_in(message))[0] == 200
                server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED", timeout=30)
        # Counted where emails arrive, not from the runs' own records: one verification
        # email per run, repeated only by a kill that fell while it was being sent.
        received = collections.Counter(m["Message-ID"] for m in traffic.smtp.handler.messages)
        expected = {f"<{run_id}.verification.1@userflow>" for run_id in traffic.accepted}
        assert expected <= set(received), expected - set(received)
        # (A signup killed between its commit and its answer has a run, and an email, too.)
        stored = {f"<{run_id}.verification.1@userflow>" for run_id in _all_runs(server)}
        assert set(received) <= stored, set(received) - stored
        repeated = {message_id: n for message_id, n in received.items() if n > 1}
        assert all(n <= 1 + KILLS for n in repeated.values()), repeated
        # A kill repeats at most the sends in flight, one per SMTP connection of the pool.
        in_flight = inspect.signature(SmtpTransport).parameters["pool_size"].default
        assert sum(n - 1 for n in repeated.values()) <= KILLS * in_flight, repeated
        print(
            f"\ncrash loop: {KILLS} kills, {len(traffic.accepted)} signups accepted, "
            f"{len(traffic.verified)} clicks accepted, {traffic.refused} requests refused while down, "
            f"{sum(n - 1 for n in repeated.values())} emails received twice"
        )
    finally:
        traffic.stop.set()
        for s in servers:
            s.stop()
        smtp.__exit__(None, None, None)


def _all_runs(server: Server) -> list[str]:
    ids: list[str] = []
    cursor = ""
    while True:
        page = server.get(f"/api/workflows?limit=200{cursor}")
        ids.extend(w["id"] for w in page["workflows"])
        if not page["nextCursor"]:
            return ids
        cursor = f"&cursor={page['nextCursor']}"
