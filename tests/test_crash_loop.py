"""A crash loop: signups and clicks keep coming while the server is killed again and again.

At random moments the server gets SIGKILL and is started again on the same
data dir or database. Whatever was answered 202 (a signup) or 200 (a click) must end as a
completed run. Bounded for CI; a longer soak by hand:

    USERFLOW_SOAK_KILLS=30 python -m pytest tests/test_crash_loop.py -s
"""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.error

import pytest

from tests.server import Server

KILLS = int(os.environ.get("USERFLOW_SOAK_KILLS", "3"))
pytestmark = pytest.mark.timeout(60 + 15 * KILLS)


class Traffic:
    """Client threads that remember exactly what the server promised them."""

    def __init__(self, server: Server) -> None:
        self.server = server
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
        while not self.stop.is_set():
            status, outbox = self.call("GET", "/api/outbox?limit=50")
            if status != 200:
                continue
            for email in outbox["emails"]:
                if email["workflowId"] in self.verified or self.stop.is_set():
                    continue
                status, _ = self.call("GET", "/api/verify?token=" + email["link"].split("token=")[1])
                if status == 200:
                    with self.lock:
                        self.verified.add(email["workflowId"])


def test_kill_9_at_random_moments_loses_nothing_promised(stores_at):
    rng = random.Random(os.environ.get("USERFLOW_SOAK_SEED", "7"))
    # The index is saved often, so kills also land during and between its saves
    # and most restarts take runs from it.
    flags = ("--email-failure-rate", "0.2")
    server = stores_at.server(*flags).start()
    traffic = Traffic(server)
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
                # Five injected failures in a row (1 in 3,125 at rate 0.2): the operator retries.
                assert "injected failure" in detail["error"]["message"], detail["error"]
                assert server.request("POST", f"/api/workflows/{run_id}/retry")[0] == 202
                detail = server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] in settled, timeout=30)
            if detail["status"] == "WAITING":
                [email] = server.get(f"/api/outbox?workflowId={run_id}")["emails"]
                link = email["link"]
                assert server.request("GET", "/api/verify?token=" + link.split("token=")[1])[0] == 200
                server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED", timeout=30)
        for run_id in traffic.accepted:
            emails = server.get(f"/api/outbox?workflowId={run_id}")["emails"]
            assert len(emails) == 1, f"run {run_id} has {len(emails)} verification emails"
        print(
            f"\ncrash loop: {KILLS} kills, {len(traffic.accepted)} signups accepted, "
            f"{len(traffic.verified)} clicks accepted, {traffic.refused} requests refused while down"
        )
    finally:
        traffic.stop.set()
        for s in servers:
            s.stop()


def _all_runs(server: Server) -> list[str]:
    ids: list[str] = []
    cursor = ""
    while True:
        page = server.get(f"/api/workflows?limit=200{cursor}")
        ids.extend(w["id"] for w in page["workflows"])
        if not page["nextCursor"]:
            return ids
        cursor = f"&cursor={page['nextCursor']}"
