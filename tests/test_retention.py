"""Retention (``--retain-finished DAYS``): a finished run past the kept period loses
its step details and timeline, keeps the user's record and its risk decision,
and says so in its detail; a run still going is untouched. Dropping is one
commit: a server killed with SIGKILL while it drops leaves each run whole or
dropped, never half. On both stores, with real server processes.

Runs are finished by a first server without retention; a second, with
``--retain-finished 0``, finds them all past the period at once, so nothing
here waits out a period.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import wait_until
from tests.server import Server

pytestmark = pytest.mark.timeout(120)

RETAIN_NOW = ("--retain-finished", "0", "--retention-every", "0.1")


def completed_run(server: Server, email: str) -> dict[str, Any]:
    accepted = server.request("POST", "/api/signup", {"email": email, "name": "Ann Lee"})[1]
    run_id = accepted["workflowId"]
    emails = server.wait_for(f"/api/outbox?workflowId={run_id}", lambda b: len(b["emails"]) == 1)["emails"]
    assert server.request("POST", "/api/verify", {"token": emails[0]["link"].split("token=", 1)[1]})[0] == 200
    return server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED")


def waiting_run(server: Server, email: str) -> dict[str, Any]:
    run_id = server.request("POST", "/api/signup", {"email": email, "name": "Bo Chen"})[1]["workflowId"]
    return server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING")


def is_dropped(detail: dict[str, Any]) -> bool:
    return detail["detailsDropped"] is not None


def assert_dropped_keeping_the_decision(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["detailsDropped"] >= before["finishedAt"]
    assert [(s["id"], s["status"], s["startedAt"], s["finishedAt"]) for s in after["steps"]] == [
        (s["id"], s["status"], s["startedAt"], s["finishedAt"]) for s in before["steps"]
    ]
    assert all(s["attempts"] == [] for s in after["steps"])
    # Outputs go, but how a wait ended (the click's time, or the deadline that ended it).
    assert [s["output"] for s in after["steps"]] == [s["output"] if s["kind"] == "wait" else None for s in before["steps"]]
    assert [e["type"] for e in after["timeline"]] == ["details-dropped"]
    assert "--retain-finished" in after["timeline"][0]["message"]
    assert after["user"] == before["user"]  # the record, its risk decision and its times
    assert after["status"] == before["status"] and after["outcome"] == before["outcome"]


def assert_whole(before: dict[str, Any], now: dict[str, Any]) -> None:
    assert now["detailsDropped"] is None
    assert now["steps"] == before["steps"]
    assert now["timeline"] == before["timeline"]


def test_finished_runs_lose_their_details_and_keep_the_user_and_decision(stores_at) -> None:
    first = stores_at.server("--email-failure-rate", "0").start()
    try:
        done = completed_run(first, "ann@example.com")
        waiting = waiting_run(first, "bo@example.com")
        cancelled_id = waiting_run(first, "cy@example.com")["id"]
        assert first.request("POST", f"/api/workflows/{cancelled_id}/cancel")[0] == 200
        cancelled = first.wait_for(f"/api/workflows/{cancelled_id}", lambda d: d["status"] == "CANCELLED")
        assert len(done["timeline"]) > 5 and all(s["attempts"] for s in done["steps"] if s["kind"] != "wait")
        assert done["user"]["risk"]["decision"] in ("ALLOW", "FLAG")
    finally:
        first.stop()

    second = stores_at.server("--email-failure-rate", "0", *RETAIN_NOW).start()
    try:
        after = second.wait_for(f"/api/workflows/{done['id']}", is_dropped)
        assert_dropped_keeping_the_decision(done, after)
        assert second.get(f"/api/users/{done['userId']}") == done["user"]
        assert_dropped_keeping_the_decision(cancelled, second.wait_for(f"/api/workflows/{cancelled_id}", is_dropped))

        # A run still waiting keeps everything, and still verifies; once it ends, it is dropped in turn.
        assert_whole(waiting, second.get(f"/api/workflows/{waiting['id']}"))
        link = second.get(f"/api/outbox?workflowId={waiting['id']}")["emails"][0]["link"]
        assert second.request("POST", "/api/verify", {"token": link.split("token=", 1)[1]})[0] == 200
        finished = second.wait_for(f"/api/workflows/{waiting['id']}", is_dropped)
        assert finished["status"] == "COMPLETED" and finished["user"]["status"] in ("ACTIVE", "FLAGGED")
        assert finished["user"]["risk"] is not None
        # Dropped once: a later sweep leaves it as it is.
        assert second.get(f"/api/workflows/{done['id']}") == after
    finally:
        second.stop()


def test_a_sigkill_while_dropping_leaves_each_run_whole_or_dropped(stores_at) -> None:
    first = stores_at.server("--email-failure-rate", "0").start()
    try:
        before = {d["id"]: d for d in (completed_run(first, f"u{n}@example.com") for n in range(24))}
    finally:
        first.stop()

    dying = stores_at.server(*RETAIN_NOW).start()
    # Killed as soon as any run is seen dropped: the sweep is then halfway through its batches.
    wait_until(lambda: any(is_dropped(dying.get(f"/api/workflows/{run_id}")) for run_id in list(before)[:4]), timeout=30)
    assert dying.kill() == -9

    looking = stores_at.server().start()  # no retention: what the kill left
    try:
        now = {run_id: looking.get(f"/api/workflows/{run_id}") for run_id in before}
    finally:
        looking.stop()
    dropped = [run_id for run_id, detail in now.items() if is_dropped(detail)]
    assert dropped, "the kill came before any run was dropped"
    for run_id, detail in now.items():
        if is_dropped(detail):
            assert_dropped_keeping_the_decision(before[run_id], detail)
        else:
            assert_whole(before[run_id], detail)

    again = stores_at.server(*RETAIN_NOW).start()  # the next sweep finishes the work
    try:
        for run_id, detail in before.items():
            assert_dropped_keeping_the_decision(detail, again.wait_for(f"/api/workflows/{run_id}", is_dropped))
    finally:
        again.stop()
