"""Erasure (``DELETE /api/users/{id}``): the person's address and name leave
everything userflow keeps, a running signup is cancelled first, the address may
sign up again as a new user, and a SIGKILL in the middle leaves each user whole
or erased, never half. On both stores, with real server processes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psycopg
import pytest

from tests.helpers import wait_until
from tests.server import Server
from tests.test_retention import completed_run, waiting_run

pytestmark = pytest.mark.timeout(120)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def kept_anywhere(stores_at, server: Server, needles: list[str]) -> list[str]:
    """Where any of ``needles`` is still kept: files of the data dir, or rows of the database."""
    found = []
    if stores_at.backend == "files":
        # What is written reaches the files with the next checkpoint (the journal empties).
        journal = Path(stores_at.path()) / "journal"
        wait_until(lambda: sum(_size(p) for p in journal.glob("*.log")) == 0, timeout=10)
        for folder, _, files in os.walk(stores_at.path()):
            for name in files:
                try:
                    data = (Path(folder) / name).read_bytes()
                except FileNotFoundError:
                    continue  # removed as it was listed (a journal segment, a packed run's file): it keeps nothing
                found += [f"{folder}/{name}: {n}" for n in needles if n.encode() in data]
    else:
        with psycopg.connect(stores_at.url()) as connection:
            for table in ("runs", "timeline", "lookup_keys", "run_facets", "events", "webhook_deliveries"):
                for needle in needles:
                    (count,) = connection.execute(f"SELECT count(*) FROM {table} t WHERE strpos(t::text, %s) > 0", (needle,)).fetchone()
                    if count:
                        found.append(f"{table}: {needle} x{count}")
    return found


def test_an_erased_user_is_gone_from_everything_kept_and_the_address_signs_up_anew(stores_at) -> None:
    server = stores_at.server("--email-failure-rate", "0").start()
    try:
        done = completed_run(server, "ann.lee@example.com")
        waiting = waiting_run(server, "bo.chen@example.com")
        kept = completed_run(server, "cy.kept@example.com")
        link = server.get(f"/api/outbox?workflowId={waiting['id']}")["emails"][0]["link"]

        for detail in (done, waiting):
            status, answer = server.request("DELETE", f"/api/users/{detail['userId']}")
            assert status == 200, answer
            assert answer["user"]["email"] is None and answer["user"]["name"] is None and answer["erasedAt"]
        first_answer = server.request("DELETE", f"/api/users/{done['userId']}")
        assert first_answer[0] == 200 and server.request("DELETE", f"/api/users/{done['userId']}") == first_answer  # again: the same
        assert server.request("DELETE", "/api/users/usr_nobody")[0] == 404

        ann = server.get(f"/api/users/{done['userId']}")
        assert ann["email"] is None and ann["name"] is None and ann["erasedAt"]
        assert ann["status"] == done["user"]["status"] and ann["risk"] == server.get(f"/api/users/{done['userId']}")["risk"]
        assert ann["risk"]["decision"] == done["user"]["risk"]["decision"]  # the decision stays
        detail = server.get(f"/api/workflows/{done['id']}")
        assert [e["type"] for e in detail["timeline"]] == ["erased"] and "local operator" in detail["timeline"][0]["message"]
        assert all(s["attempts"] == [] for s in detail["steps"])
        bo = server.get(f"/api/users/{waiting['userId']}")
        assert bo["status"] == "CANCELLED" and bo["email"] is None  # cancelled first, then erased
        status, _ = server.request("GET", f"/api/verify?token={link.split('token=', 1)[1]}")
        assert status in (404, 410)  # the old link finds nobody

        # The lists and search no longer know the address.
        assert server.get("/api/users?q=ann.lee%40example.com")["users"] == []
        assert all(u["email"] != "ann.lee@example.com" for u in server.get("/api/users?limit=200")["users"])
        listed = server.get("/api/outbox?limit=200")["emails"]
        assert {e["workflowId"] for e in listed} == {kept["id"]}  # an erased person's emails are not shown
        assert server.get(f"/api/outbox?workflowId={done['id']}")["emails"] == []
        # Someone else's record is untouched.
        assert server.get(f"/api/users/{kept['userId']}")["email"] == "cy.kept@example.com"

        # The same address signs up again: a new user, not the erased one.
        status, again = server.request("POST", "/api/signup", {"email": "ann.lee@example.com", "name": "Ann Lee"})
        assert status == 202 and again["userId"] != done["userId"]
        server.wait_for(f"/api/workflows/{again['workflowId']}", lambda d: d["status"] == "WAITING")
        assert [u["id"] for u in server.get("/api/users?q=ann.lee%40example.com")["users"]] == [again["userId"]]

        server.request("DELETE", f"/api/users/{again['userId']}")
        # The server's own log never had the addresses: its lines mask them.
        assert not any(a in line for line in server.stderr for a in ("ann.lee@example.com", "bo.chen@example.com"))
        assert any("…@example.com" in line for line in server.stderr)
        assert kept_anywhere(stores_at, server, ["ann.lee@example.com", "bo.chen@example.com", "Bo Chen"]) == []
        assert kept_anywhere(stores_at, server, ["cy.kept@example.com"])  # (the search itself can see)
    finally:
        server.stop()


def test_a_sigkill_while_erasing_leaves_each_user_whole_or_erased(stores_at) -> None:
    server = stores_at.server("--email-failure-rate", "0").start()
    try:
        before = {d["userId"]: d for d in (completed_run(server, f"k{n}@example.com") for n in range(12))}
    finally:
        server.stop()

    dying = stores_at.server().start()

    def erase_all() -> None:
        for user_id in before:
            try:
                dying.request("DELETE", f"/api/users/{user_id}")
            except OSError:
                return  # the server is gone

    eraser = threading.Thread(target=erase_all, daemon=True)
    eraser.start()
    wait_until(lambda: any(dying.get(f"/api/users/{u}")["erasedAt"] for u in list(before)[:3]), timeout=30)
    assert dying.kill() == -9
    eraser.join(timeout=20)

    looking = stores_at.server().start()
    try:
        for user_id, was in before.items():
            user = looking.get(f"/api/users/{user_id}")  # from the catalog
            detail = looking.get(f"/api/workflows/{was['id']}")  # from the run itself
            listed = looking.get(f"/api/users?q={user_id}")["users"]
            if user["erasedAt"]:
                assert user["email"] is None and detail["user"]["email"] is None and listed[0]["email"] is None
                assert [e["type"] for e in detail["timeline"]] == ["erased"]
            else:
                assert user["email"] == f"{was['user']['email']}" and detail["timeline"] == was["timeline"]
                assert detail["user"]["email"] == was["user"]["email"]
        assert any(looking.get(f"/api/users/{u}")["erasedAt"] for u in before), "nothing was erased before the kill"
    finally:
        looking.stop()
