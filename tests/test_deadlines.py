"""Durable deadlines of the verification wait: one reminder, then expiry (SPEC sections 2-3).

In-process tests build the real app on a temporary data dir; the restart tests
run a real server process and kill it with SIGKILL. Every wait polls with a
deadline; the only waits that are not for a condition are the ones that prove
something does NOT happen, and those wait for a clock time named by the run
itself (a deadline plus a margin), never for a guessed pause.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from userflow.http.app import build_app
from userflow.http.config import Settings

from tests.helpers import StoresAt, epoch
from tests.http_helpers import (
    PUBLIC_URL,
    MakeClient,
    entries,
    expect_gone,
    get_json,
    outbox_of,
    signup,
    skip_unless_before_the_reminder,
    step_of,
    token_of,
    until_clock,
    wait_for,
    wait_run,
)
from tests.server import Server

LATER_STEPS = ["ai-risk-check", "finalize-user"]

pytestmark = pytest.mark.timeout(90)


# -- in process -----------------------------------------------------------------------------


async def test_reminder_then_expiry(make_client: MakeClient) -> None:
    client = await make_client(verify_ttl=3, reminder_after=1)
    accepted = await signup(client, "ann@example.com")
    run_id, user_id = accepted["workflowId"], accepted["userId"]

    waiting = await wait_run(client, run_id, "WAITING")
    wait_step = step_of(waiting, "wait-for-verification")
    assert wait_step["status"] == "WAITING"
    deadlines = wait_step["deadlines"]
    assert set(deadlines) == {"reminder", "expiry"}, deadlines
    began = epoch(wait_step["startedAt"])
    assert epoch(deadlines["reminder"]) - began == pytest.approx(1.0, abs=0.2)
    assert epoch(deadlines["expiry"]) - began == pytest.approx(3.0, abs=0.2)

    [first] = await outbox_of(client, run_id)
    assert first["kind"] == "verification"
    token = token_of(first["link"])

    # The reminder: its own Message-ID, the same link.
    await wait_for(client, "/api/outbox?limit=200", lambda b: any(e["kind"] == "reminder" for e in b["emails"]))
    [reminder] = [e for e in await outbox_of(client, run_id) if e["kind"] == "reminder"]
    assert reminder["messageId"] == f"<{run_id}.reminder.1@userflow>"
    assert reminder["messageId"] != first["messageId"]
    assert reminder["link"] == first["link"]
    assert reminder["to"] == "ann@example.com"
    assert epoch(reminder["sentAt"]) >= epoch(deadlines["reminder"])
    assert epoch(reminder["sentAt"]) < epoch(deadlines["expiry"])

    # The expiry.
    done = await wait_run(client, run_id, "COMPLETED", timeout=10)
    assert done["outcome"] == "expired"
    assert epoch(done["finishedAt"]) >= epoch(deadlines["expiry"])
    assert step_of(done, "wait-for-verification")["status"] == "COMPLETED"
    assert step_of(done, "wait-for-verification")["deadlines"] == deadlines
    assert [step_of(done, s)["status"] for s in LATER_STEPS] == ["SKIPPED", "SKIPPED"]
    assert [step_of(done, s)["attempts"] for s in LATER_STEPS] == [[], []]

    user = await get_json(client, f"/api/users/{user_id}")
    assert user["status"] == "EXPIRED"
    assert user["verifiedAt"] is None and user["finishedAt"]
    assert done["user"]["status"] == "EXPIRED"

    # The timeline: the reminder (sent, then its deadline), then the expiry, then the end.
    reached = entries(done, "deadline", "wait-for-verification")
    assert [("reminder" in e["message"], "expiry" in e["message"]) for e in reached] == [(True, False), (False, True)]
    sent = [e for e in entries(done, "email-sent") if "reminder" in e["message"]]
    assert len(sent) == 1 and sent[0]["step"] == "wait-for-verification"
    [completed] = entries(done, "run-completed")
    assert "expired" in completed["message"]
    assert sent[0]["seq"] < reached[0]["seq"] < reached[1]["seq"] < completed["seq"]
    assert not entries(done, "deadline-failed")

    await expect_gone(client, token)

    # Exactly one reminder, and nothing else ever sent.
    emails = await outbox_of(client, run_id)
    assert sorted(e["kind"] for e in emails) == ["reminder", "verification"]
    assert len({e["messageId"] for e in emails}) == 2


@pytest.mark.parametrize(
    ("reminder_after", "verify_ttl"),
    [
        pytest.param(0, 1.5, id="reminder-off"),
        pytest.param(1.5, 1.5, id="reminder-at-ttl"),
        pytest.param(2, 1.5, id="reminder-after-ttl"),
    ],
)
async def test_no_reminder_when_off_or_not_before_expiry(make_client: MakeClient, reminder_after: float, verify_ttl: float) -> None:
    client = await make_client(verify_ttl=verify_ttl, reminder_after=reminder_after)
    accepted = await signup(client, "bob@example.com", "Bob Stone")
    run_id = accepted["workflowId"]
    waiting = await wait_run(client, run_id, "WAITING")
    deadlines = step_of(waiting, "wait-for-verification")["deadlines"]
    assert set(deadlines) == {"expiry"}, deadlines  # no reminder timer is even armed

    done = await wait_run(client, run_id, "COMPLETED", timeout=10)
    assert done["outcome"] == "expired"
    # Past the time a reminder would have been due (if it would ever be): still one email.
    await until_clock(epoch(deadlines["expiry"]) + max(0.0, reminder_after - verify_ttl) + 0.3)
    emails = await outbox_of(client, run_id)
    assert [e["kind"] for e in emails] == ["verification"]
    detail = await get_json(client, f"/api/workflows/{run_id}")
    assert not any("reminder" in e["message"] for e in detail["timeline"])


async def test_verification_before_the_reminder_cancels_reminder_and_expiry(make_client: MakeClient) -> None:
    # Two seconds to click: enough for a slow machine, and the timeline says if it was not.
    client = await make_client(verify_ttl=2.5, reminder_after=2)
    accepted = await signup(client, "cy@example.com", "Cy Young")
    run_id, user_id = accepted["workflowId"], accepted["userId"]
    waiting = await wait_run(client, run_id, "WAITING")
    deadlines = step_of(waiting, "wait-for-verification")["deadlines"]
    [email] = [e for e in await outbox_of(client, run_id) if e["kind"] == "verification"]  # a slow machine may have a reminder too

    resp = await client.get("/api/verify", params={"token": token_of(email["link"])})
    assert resp.status == 200, await resp.text()
    done = await wait_run(client, run_id, "COMPLETED")
    skip_unless_before_the_reminder(done, "signal-received", "the click")
    assert done["outcome"] == "completed"
    user = await get_json(client, f"/api/users/{user_id}")
    assert user["status"] in ("ACTIVE", "FLAGGED")

    # Well past the expiry: no reminder, no expiry, nothing changed.
    await until_clock(epoch(deadlines["expiry"]) + 0.5)
    emails = await outbox_of(client, run_id)
    assert [e["kind"] for e in emails] == ["verification"]
    after = await get_json(client, f"/api/workflows/{run_id}")
    assert after["status"] == "COMPLETED" and after["outcome"] == "completed"
    assert after["timeline"] == done["timeline"]
    assert not entries(after, "deadline") and not entries(after, "deadline-failed")
    assert (await get_json(client, f"/api/users/{user_id}"))["status"] == user["status"]


async def test_signup_after_expiry_starts_a_new_run(make_client: MakeClient) -> None:
    client = await make_client(verify_ttl=1, reminder_after=0)
    first = await signup(client, "dee@example.com", "Dee Dee")
    done = await wait_run(client, first["workflowId"], "COMPLETED", timeout=10)
    assert done["outcome"] == "expired"
    assert (await get_json(client, f"/api/users/{first['userId']}"))["status"] == "EXPIRED"

    second = await signup(client, "dee@example.com", "Dee Dee")
    assert second["workflowId"] != first["workflowId"]
    assert second["userId"] != first["userId"]
    await wait_run(client, second["workflowId"], "WAITING")
    assert (await get_json(client, f"/api/users/{second['userId']}"))["status"] == "PENDING"
    assert (await get_json(client, f"/api/users/{first['userId']}"))["status"] == "EXPIRED"
    # The old link stays dead; the new run has its own.
    [old] = await outbox_of(client, first["workflowId"])
    [new] = await outbox_of(client, second["workflowId"])
    assert old["link"] != new["link"]
    await expect_gone(client, token_of(old["link"]))


# -- a real process, killed -----------------------------------------------------------------

FLAGS = ("--email-failure-rate", "0", "--verify-ttl", "4", "--reminder-after", "2")


@pytest.fixture
def servers(stores_at):
    """Server processes on the test backend's stores (the data dir given, or the test's database)."""
    started: list[Server] = []

    def make(data_dir: Any, *args: str) -> Server:
        server = Server(str(data_dir), *args, env=stores_at.env())
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


def waiting_run(server: Server) -> tuple[dict[str, Any], dict[str, str], str]:
    """Sign up and wait for the durable wait: (202 body, the wait's deadlines, the link's token)."""
    status, accepted = server.request("POST", "/api/signup", {"email": "eve@example.com", "name": "Eve Adams"})
    assert status == 202, accepted
    detail = server.wait_for(f"/api/workflows/{accepted['workflowId']}", lambda d: d["status"] == "WAITING")
    deadlines = step_of(detail, "wait-for-verification")["deadlines"]
    assert set(deadlines) == {"reminder", "expiry"}, deadlines
    outbox = server.wait_for("/api/outbox", lambda b: len(b["emails"]) == 1)
    return accepted, deadlines, token_of(outbox["emails"][0]["link"])


def check_expired(server: Server, run_id: str, token: str) -> dict[str, Any]:
    done = server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED", timeout=15)
    assert done["outcome"] == "expired"
    assert done["user"]["status"] == "EXPIRED"
    assert [step_of(done, s)["status"] for s in LATER_STEPS] == ["SKIPPED", "SKIPPED"]
    for method, path, body in (("GET", f"/api/verify?token={token}", None), ("POST", "/api/verify", {"token": token})):
        status, answer = server.request(method, path, body)
        assert status == 410 and answer["error"]["code"] == "link_expired", (method, status, answer)
    return done


def test_kill_during_the_wait_keeps_the_deadlines(servers, tmp_path) -> None:
    first = servers(tmp_path, *FLAGS)
    accepted, deadlines, token = waiting_run(first)
    run_id = accepted["workflowId"]
    assert first.kill() == -9
    # Dead now: if the reminder was not due yet, only the restarted server can send it.
    if time.time() >= epoch(deadlines["reminder"]):
        pytest.skip("the server was killed after the reminder was due: the machine was too slow to kill it during the wait")

    again = servers(tmp_path, *FLAGS)
    detail = again.get(f"/api/workflows/{run_id}")
    assert step_of(detail, "wait-for-verification")["deadlines"] == deadlines  # the same ISO strings

    done = check_expired(again, run_id, token)
    expiry = epoch(deadlines["expiry"])
    [completed] = entries(done, "run-completed")
    assert epoch(completed["at"]) >= expiry and epoch(done["finishedAt"]) >= expiry
    assert step_of(done, "wait-for-verification")["deadlines"] == deadlines
    # Each deadline reached in its turn, by the run's own record: the reminder, then the expiry.
    reached = entries(done, "deadline", "wait-for-verification")
    assert [("reminder" in e["message"], "expiry" in e["message"]) for e in reached] == [(True, False), (False, True)]
    assert all("deadline reached" in e["message"] for e in reached), reached
    assert epoch(deadlines["reminder"]) <= epoch(reached[0]["at"]) < expiry <= epoch(reached[1]["at"])
    assert reached[1]["seq"] < completed["seq"]

    emails = again.get("/api/outbox?limit=200")["emails"]
    reminders = [e for e in emails if e["kind"] == "reminder"]
    assert len(reminders) == 1 and len(emails) == 2, emails
    assert reminders[0]["messageId"] == f"<{run_id}.reminder.1@userflow>"
    assert epoch(deadlines["reminder"]) <= epoch(reminders[0]["sentAt"]) < expiry  # sent in its window, not late


def test_expiry_that_passed_while_down_fires_at_once_after_restart(servers, tmp_path) -> None:
    first = servers(tmp_path, *FLAGS)
    accepted, deadlines, token = waiting_run(first)
    run_id = accepted["workflowId"]
    assert first.kill() == -9
    killed_at = time.time()

    expiry = epoch(deadlines["expiry"])
    deadline = time.monotonic() + 10
    while time.time() <= expiry + 0.2:  # the server is down until the expiry has passed
        assert time.monotonic() < deadline
        time.sleep(0.05)

    again = servers(tmp_path, *FLAGS)
    # A fresh signup on the restarted server: its reminder is due 2 s after it, so "at once"
    # means before that reminder. Both are the same timers' work on the same machine, so a
    # slow machine delays both; only an overdue expiry left waiting (or armed again) comes after.
    status, probe = again.request("POST", "/api/signup", {"email": "pat@example.com", "name": "Pat Probe"})
    assert status == 202, probe
    done = check_expired(again, run_id, token)
    finished = epoch(done["finishedAt"])
    assert finished >= expiry
    reminded = again.wait_for(
        "/api/outbox?limit=200",
        lambda b: any(e["kind"] == "reminder" and e["workflowId"] == probe["workflowId"] for e in b["emails"]),
    )
    [probe_reminder] = [e for e in reminded["emails"] if e["kind"] == "reminder" and e["workflowId"] == probe["workflowId"]]
    assert finished < epoch(probe_reminder["sentAt"]), ("the overdue expiry did not fire at once after the restart", done["finishedAt"], probe_reminder["sentAt"])
    assert step_of(done, "wait-for-verification")["deadlines"] == deadlines
    # The promise test_no_reminder_for_a_link_that_expired_while_the_server_was_down makes too:
    # once the expiry has passed, the overdue reminder is skipped, never sent. (Only a reminder
    # the first server sent before the kill, on a slow machine, can be in the outbox.)
    reminders = [e for e in again.get("/api/outbox?limit=200")["emails"] if e["kind"] == "reminder" and e["workflowId"] == run_id]
    assert [e for e in reminders if epoch(e["sentAt"]) >= killed_at] == [], "a reminder for a link that had expired"


# -- in process, across a restart ------------------------------------------------------------


async def test_no_reminder_for_a_link_that_expired_while_the_server_was_down(stores_at: StoresAt, aiohttp_client: Any) -> None:
    path = stores_at.path()
    settings = Settings(data_dir=path, email_failure_rate=0.0, verify_ttl=1.5, reminder_after=0.7)

    stores = stores_at.open()
    try:
        client = await aiohttp_client(build_app(settings, stores, PUBLIC_URL))
        try:
            accepted = await signup(client, "fay@example.com", "Fay Wray")
            run_id = accepted["workflowId"]
            waiting = await wait_run(client, run_id, "WAITING")
        finally:
            await client.close()
    finally:
        stores_at.close(stores)
    deadlines = step_of(waiting, "wait-for-verification")["deadlines"]
    assert set(deadlines) == {"reminder", "expiry"}

    await until_clock(epoch(deadlines["expiry"]) + 0.2)  # down until both deadlines have passed

    stores = stores_at.open()
    try:
        client = await aiohttp_client(build_app(settings, stores, PUBLIC_URL))
        try:
            done = await wait_run(client, run_id, "COMPLETED")
            assert done["outcome"] == "expired"
            assert step_of(done, "wait-for-verification")["deadlines"] == deadlines
            kinds = [e["kind"] for e in await outbox_of(client, run_id)]
            assert kinds == ["verification"], f"a reminder was sent for a link that had already expired: {kinds}"
        finally:
            await client.close()
    finally:
        stores_at.close(stores)
