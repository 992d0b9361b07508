"""PostgreSQL itself crashes while signups flow: every process of the database is
killed at once (``pg_ctl stop -m immediate``) and started again, recovering
from its WAL, while userflow keeps running.

What was answered 202 must survive and complete, with one verification email
per run delivered to a real SMTP server (a send repeated because its record
could not be committed carries the same Message-ID). While the database is
away, requests that need it answer 503 with Retry-After, ``/readyz`` answers
503, and the server carries on by itself once the database is back.
"""

from __future__ import annotations

import threading
import time
import urllib.error
from collections import Counter

import pytest

from tests.postgres import Cluster
from tests.server import Server
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.timeout(240)


def link_in(message) -> str:
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    return next(word for word in text.split() if "/verify?token=" in word)


class Signups:
    """A client thread signing people up, remembering what was promised and what was refused."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.accepted: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                status, body = self.server.request("POST", "/api/signup", {"email": f"p{n}@example.com", "name": "Pat Doe"})
            except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
                status, body = 0, None
            self.statuses[status] += 1
            if status == 202:
                self.accepted.add(body["workflowId"])
            elif status == 503:
                self.stop.wait(0.05)  # as a client told Retry-After would, only sooner

    def wait_accepted(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"only {len(self.accepted)} signups accepted"
            time.sleep(0.02)  # polling the client thread; the count decides


def readyz(server: Server) -> int:
    return server.request("GET", "/readyz")[0]


def wait_until(condition, what: str, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} never held"
        time.sleep(0.05)  # polling; the condition decides


def test_postgres_crashing_under_signups_loses_nothing_acknowledged(postgres_cluster: Cluster, database_url: str, tmp_path) -> None:
    with SmtpServer() as smtp:
        server = Server(str(tmp_path), "--smtp-url", smtp.url, "--email-failure-rate", "0", env={"USERFLOW_DATABASE_URL": database_url})
        server.start()
        traffic = Signups(server)
        try:
            traffic.thread.start()
            traffic.wait_accepted(20)

            postgres_cluster.stop_immediately()
            wait_until(lambda: readyz(server) == 503, "/readyz answering 503 while the database is down")
            status, body = server.request("POST", "/api/signup", {"email": "during@example.com", "name": "Dee Ring"})
            assert status == 503, (status, body)
            assert body["error"]["code"] in ("storage_unavailable", "busy"), body
            refused = traffic.statuses[503]
            wait_until(lambda: traffic.statuses[503] > refused, "the client being refused while the database is down")

            postgres_cluster.start()
            wait_until(lambda: readyz(server) == 200, "/readyz answering 200 once the database is back")
            before = len(traffic.accepted)
            traffic.wait_accepted(before + 20)
        finally:
            traffic.stop.set()
            traffic.thread.join(timeout=30)

        try:
            accepted = traffic.accepted
            for run_id in accepted:
                server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING", timeout=60)
            messages = smtp.handler.wait_for(len(accepted), timeout=60)
            links = {m["Message-ID"]: link_in(m) for m in messages}
            for message_id, link in links.items():
                status, _ = server.request("GET", "/api/verify?token=" + link.split("token=")[1])
                assert status == 200, (message_id, status)
            for run_id in accepted:
                detail = server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED", timeout=60)
                assert detail["user"]["status"] in ("ACTIVE", "FLAGGED")
            ids = Counter(m["Message-ID"] for m in smtp.handler.messages)
            assert set(ids) == {f"<{run_id}.verification.1@userflow>" for run_id in accepted}, "a run lost or gained a different email"
            repeated = {message_id: n for message_id, n in ids.items() if n > 1}
            print(
                f"\npostgres outage: {len(accepted)} signups accepted, {traffic.statuses[503]} refused with 503 while down, "
                f"{len(repeated)} sends repeated with the same Message-ID"
            )
            users = server.get("/api/users?limit=200")["users"]
            assert len(users) == len(accepted) and all(u["status"] in ("ACTIVE", "FLAGGED") for u in users)
        finally:
            server.stop()
