"""Operator actions on runs (SPEC sections 2-3): retry a FAILED run, cancel, resend the link.

Everything runs in process against the real app on a temporary data dir. Waits
poll the API with a deadline; the only waits that are not for a condition are
the ones proving something does NOT happen, and those wait for a clock time
the run itself names (a deadline plus a margin).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient
from userflow.http.app import build_app
from userflow.http.config import Settings
from userflow.http.keys import RUNTIME
from userflow.storage import DataDir

PUBLIC_URL = "http://public.example"
UNKNOWN_RUN_ID = "wf_000000000000aaaaaaaaaa"
MALFORMED_RUN_IDS = ["not-a-run", "wf_", "WF_000000000000AAAAAAAAAA", "wf_000000000000aaaaaaaaaa%0A"]

pytestmark = pytest.mark.timeout(90)


# -- helpers ------------------------------------------------------------------------------


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def token_of(link: str) -> str:
    tokens = parse_qs(urlsplit(link).query)["token"]
    assert len(tokens) == 1
    return tokens[0]


def step_of(detail: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in detail["steps"] if s["id"] == step_id)


def entries(detail: dict[str, Any], type: str) -> list[dict[str, Any]]:
    return [e for e in detail["timeline"] if e["type"] == type]


async def until_clock(moment: float) -> None:
    """Until the wall clock has passed ``moment`` (epoch seconds)."""
    while time.time() <= moment:
        await asyncio.sleep(0.02)


async def wait_for(client: TestClient, path: str, predicate: Callable[[Any], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        resp = await client.get(path)
        if resp.status == 200:
            last = await resp.json()
            if predicate(last):
                return last
        else:
            last = (resp.status, await resp.text())
        if time.monotonic() > deadline:
            raise AssertionError(f"GET {path}: condition not met within {timeout} s; last answer {last!r}")
        await asyncio.sleep(0.02)


async def get_json(client: TestClient, path: str) -> Any:
    resp = await client.get(path)
    assert resp.status == 200, (path, resp.status, await resp.text())
    return await resp.json()


async def wait_run(
    client: TestClient, run_id: str, *statuses: str, timeout: float = 10.0, also: Callable[[Any], Any] = lambda d: True
) -> dict[str, Any]:
    """The run's detail once both the detail (file) and the listing (index) show one of ``statuses``."""
    detail = await wait_for(
        client, f"/api/workflows/{run_id}", lambda d: d["status"] in statuses and also(d), timeout
    )
    await wait_for(
        client,
        f"/api/workflows?status={detail['status']}&limit=200",
        lambda b: any(w["id"] == run_id for w in b["workflows"]),
        timeout,
    )
    return await get_json(client, f"/api/workflows/{run_id}")


async def outbox_of(client: TestClient, run_id: str) -> list[dict[str, Any]]:
    body = await get_json(client, "/api/outbox?limit=200")
    return [e for e in body["emails"] if e["workflowId"] == run_id]


async def signup(client: TestClient, email: str, name: str = "Ann Example") -> dict[str, Any]:
    resp = await client.post("/api/signup", json={"email": email, "name": name})
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def waiting_signup(client: TestClient, email: str, name: str = "Ann Example") -> tuple[dict[str, Any], dict[str, Any], str]:
    """Sign up and wait for the durable wait: (202 body, the WAITING detail, the link's token)."""
    accepted = await signup(client, email, name)
    detail = await wait_run(client, accepted["workflowId"], "WAITING")
    [email_entry] = await outbox_of(client, accepted["workflowId"])
    return accepted, detail, token_of(email_entry["link"])


async def verify(client: TestClient, token: str) -> None:
    resp = await client.get("/api/verify", params={"token": token})
    assert resp.status == 200, await resp.text()


async def expect_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The documented error shape ``{"error": {"code", "message"}}`` with ``status`` and ``code``."""
    text = await resp.text()
    assert resp.status == status, f"expected {status}, got {resp.status}: {text}"
    assert resp.content_type == "application/json", text
    body = json.loads(text)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].strip(), body
    return body


async def expect_gone(client: TestClient, token: str) -> None:
    await expect_error(await client.get("/api/verify", params={"token": token}), 410, "link_expired")
    await expect_error(await client.post("/api/verify", json={"token": token}), 410, "link_expired")


MakeApp = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_app(tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[MakeApp]:
    """Apps on fresh data dirs; keyword arguments override Settings (no email failures by default)."""
    opened: list[tuple[TestClient, DataDir]] = []

    async def make(**overrides: Any) -> TestClient:
        path = tmp_path / f"data{len(opened)}"
        fields: dict[str, Any] = {"data_dir": str(path), "email_failure_rate": 0.0}
        fields.update(overrides)
        data_dir = DataDir(str(path)).open()
        try:
            client = await aiohttp_client(build_app(Settings(**fields), data_dir, PUBLIC_URL))
        except BaseException:
            data_dir.close()
            raise
        opened.append((client, data_dir))
        return client

    yield make
    for client, data_dir in reversed(opened):
        try:
            await client.close()
        finally:
            data_dir.close()


# -- retry ------------------------------------------------------------------------------------


async def test_retry_resumes_a_failed_run_with_a_fresh_attempt_budget(tmp_path: Path, aiohttp_client: Any) -> None:
    path = str(tmp_path / "data")

    # 1. Every email attempt fails: the run is FAILED after 5 attempts, the error visible.
    data_dir = DataDir(path).open()
    try:
        client = await aiohttp_client(build_app(Settings(data_dir=path, email_failure_rate=1.0), data_dir, PUBLIC_URL))
        try:
            accepted = await signup(client, "ann@example.com")
            run_id = accepted["workflowId"]
            failed = await wait_run(client, run_id, "FAILED", timeout=25)
        finally:
            await client.close()  # the engine stops with the app
    finally:
        data_dir.close()
    email_step = step_of(failed, "send-verification-email")
    assert email_step["status"] == "FAILED"
    assert [a["number"] for a in email_step["attempts"]] == [1, 2, 3, 4, 5]
    assert all("injected failure" in (a["error"] or "") for a in email_step["attempts"])
    assert failed["error"]["step"] == "send-verification-email"
    assert "injected failure" in failed["error"]["message"]
    assert failed["currentStep"] == "send-verification-email"

    # 2. The same data dir, emails working again: the operator retries.
    data_dir = DataDir(path).open()
    try:
        client = await aiohttp_client(build_app(Settings(data_dir=path, email_failure_rate=0.0), data_dir, PUBLIC_URL))
        try:
            recovered = await wait_run(client, run_id, "FAILED")
            assert step_of(recovered, "send-verification-email")["attempts"] == email_step["attempts"]

            resp = await client.post(f"/api/workflows/{run_id}/retry")
            assert resp.status == 202, await resp.text()
            assert resp.headers["Location"] == f"/api/workflows/{run_id}"
            body = await resp.json()
            assert body["workflowId"] == run_id
            assert body["status"] in ("RUNNING", "WAITING")

            # Retrying again while it runs or waits: 409 either way.
            await expect_error(await client.post(f"/api/workflows/{run_id}/retry"), 409, "conflict")

            waiting = await wait_run(client, run_id, "WAITING")
            attempts = step_of(waiting, "send-verification-email")["attempts"]
            assert [a["number"] for a in attempts] == [1, 2, 3, 4, 5, 6]
            assert attempts[-1]["error"] is None and attempts[-1]["finishedAt"]
            assert all(a["error"] for a in attempts[:-1])
            assert step_of(waiting, "send-verification-email")["status"] == "COMPLETED"
            assert waiting["error"] is None
            [retried] = entries(waiting, "operator-retry")
            assert retried["step"] == "send-verification-email"
            assert retried["seq"] > entries(waiting, "run-failed")[-1]["seq"]

            [email] = await outbox_of(client, run_id)
            assert email["kind"] == "verification"
            await expect_error(await client.post(f"/api/workflows/{run_id}/retry"), 409, "conflict")  # WAITING

            await verify(client, token_of(email["link"]))
            await wait_run(client, run_id, "COMPLETED")
            await expect_error(await client.post(f"/api/workflows/{run_id}/retry"), 409, "conflict")  # COMPLETED
            await expect_error(await client.post(f"/api/workflows/{UNKNOWN_RUN_ID}/retry"), 404, "workflow_not_found")
            for bad in MALFORMED_RUN_IDS:
                await expect_error(await client.post(f"/api/workflows/{bad}/retry"), 404, "workflow_not_found")
        finally:
            await client.close()
    finally:
        data_dir.close()


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_a_waiting_run(make_app: MakeApp) -> None:
    client = await make_app(verify_ttl=2, reminder_after=1)
    runtime = client.server.app[RUNTIME]
    accepted, waiting, token = await waiting_signup(client, "bob@example.com", "Bob Stone")
    run_id = accepted["workflowId"]
    deadlines = step_of(waiting, "wait-for-verification")["deadlines"]
    assert set(deadlines) == {"reminder", "expiry"}

    resp = await client.post(f"/api/workflows/{run_id}/cancel")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"workflowId": run_id, "status": "CANCELLED"}
    assert time.time() < epoch(deadlines["reminder"]), "cancelled too late for this test to mean anything"

    detail = await wait_run(client, run_id, "CANCELLED")
    assert detail["outcome"] == "cancelled"
    assert detail["finishedAt"]
    assert [s["status"] for s in detail["steps"]] == ["COMPLETED", "COMPLETED", "SKIPPED", "SKIPPED", "SKIPPED"]
    assert [e["message"] for e in entries(detail, "run-cancelled")] == ["run cancelled by an operator"]
    assert len(runtime.timers) == 0, "a cancelled run still has timers armed"

    # The link is dead, in the documented error shape.
    await expect_gone(client, token)

    # Past both deadlines: no reminder, no expiry, nothing changed.
    await until_clock(epoch(deadlines["expiry"]) + 0.5)
    assert [e["kind"] for e in await outbox_of(client, run_id)] == ["verification"]
    after = await get_json(client, f"/api/workflows/{run_id}")
    assert after["status"] == "CANCELLED" and after["outcome"] == "cancelled"
    assert after["timeline"] == detail["timeline"]
    assert (await get_json(client, f"/api/users/{accepted['userId']}"))["status"] != "EXPIRED"

    # Cancelling again, or resending for it: 409.
    await expect_error(await client.post(f"/api/workflows/{run_id}/cancel"), 409, "conflict")
    await expect_error(await client.post(f"/api/users/{accepted['userId']}/resend-verification"), 409, "conflict")
    await expect_error(await client.post(f"/api/workflows/{run_id}/retry"), 409, "conflict")

    # A new signup with that email starts a new run, with a new PENDING user.
    again = await signup(client, "bob@example.com", "Bob Stone")
    assert again["workflowId"] != run_id
    assert again["userId"] != accepted["userId"]
    await wait_run(client, again["workflowId"], "WAITING")
    assert (await get_json(client, f"/api/users/{again['userId']}"))["status"] == "PENDING"
    # The cancelled signup left no PENDING user behind: one PENDING user for this email.
    assert (await get_json(client, f"/api/users/{accepted['userId']}"))["status"] == "CANCELLED"
    pending = (await get_json(client, "/api/users?status=PENDING"))["users"]
    assert [u["id"] for u in pending if u["email"] == "bob@example.com"] == [again["userId"]]
    await expect_gone(client, token)  # the old link stays dead


async def test_cancel_conflicts_and_unknown_runs(make_app: MakeApp) -> None:
    client = await make_app()
    accepted, _, token = await waiting_signup(client, "cy@example.com", "Cy Young")
    await verify(client, token)
    done = await wait_run(client, accepted["workflowId"], "COMPLETED")
    await expect_error(await client.post(f"/api/workflows/{accepted['workflowId']}/cancel"), 409, "conflict")
    after = await get_json(client, f"/api/workflows/{accepted['workflowId']}")
    assert after["status"] == "COMPLETED" and after["timeline"] == done["timeline"]

    await expect_error(await client.post(f"/api/workflows/{UNKNOWN_RUN_ID}/cancel"), 404, "workflow_not_found")
    for bad in MALFORMED_RUN_IDS:
        await expect_error(await client.post(f"/api/workflows/{bad}/cancel"), 404, "workflow_not_found")


# -- resend -----------------------------------------------------------------------------------


async def test_resend_gives_a_new_link_and_kills_the_old_one(make_app: MakeApp) -> None:
    client = await make_app()
    accepted, waiting, old_token = await waiting_signup(client, "dee@example.com", "Dee Dee")
    run_id, user_id = accepted["workflowId"], accepted["userId"]
    deadlines = step_of(waiting, "wait-for-verification")["deadlines"]
    assert set(deadlines) == {"reminder", "expiry"}
    [first] = await outbox_of(client, run_id)

    resp = await client.post(f"/api/users/{user_id}/resend-verification")
    assert resp.status == 202, await resp.text()
    assert resp.headers["Location"] == f"/api/workflows/{run_id}"
    body = await resp.json()
    assert body["workflowId"] == run_id and body["userId"] == user_id

    again = await wait_run(
        client,
        run_id,
        "WAITING",
        also=lambda d: len(step_of(d, "send-verification-email")["attempts"]) == 2
        and step_of(d, "send-verification-email")["status"] == "COMPLETED",
    )
    emails = await outbox_of(client, run_id)
    assert sorted(e["kind"] for e in emails) == ["resend", "verification"]
    [resent] = [e for e in emails if e["kind"] == "resend"]
    assert resent["messageId"] == f"<{run_id}.resend.2@userflow>"
    assert resent["link"] != first["link"]
    assert resent["to"] == "dee@example.com"
    new_token = token_of(resent["link"])

    # The wait keeps its deadlines: a resend does not extend the link's life.
    assert step_of(again, "wait-for-verification")["deadlines"] == deadlines
    assert entries(again, "resend-requested")

    # The old link is dead, in the documented error shape.
    await expect_gone(client, old_token)

    # A second resend within 30 s: 429 with Retry-After.
    resp = await client.post(f"/api/users/{user_id}/resend-verification")
    await expect_error(resp, 429, "rate_limited")
    retry_after = resp.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and 1 <= int(retry_after) <= 30, retry_after
    assert len(await outbox_of(client, run_id)) == 2

    # The new link verifies; the run completes.
    await verify(client, new_token)
    done = await wait_run(client, run_id, "COMPLETED")
    assert done["outcome"] == "completed"
    user = await get_json(client, f"/api/users/{user_id}")
    assert user["status"] in ("ACTIVE", "FLAGGED") and user["verifiedAt"]
    await expect_gone(client, old_token)

    # No resend for an ACTIVE user, nor for an unknown one.
    await expect_error(await client.post(f"/api/users/{user_id}/resend-verification"), 409, "conflict")
    await expect_error(await client.post("/api/users/usr_000000000000aaaaaaaaaa/resend-verification"), 404, "user_not_found")
    await expect_error(await client.post("/api/users/nobody/resend-verification"), 404, "user_not_found")
    assert len(await outbox_of(client, run_id)) == 2
