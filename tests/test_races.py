"""Transitions that race agree with their answers: whatever wins, no answer contradicts
how the run ends. Each pair is sent at the same moment, many times."""

from __future__ import annotations

import asyncio
import random

from aiohttp.test_utils import TestClient

from tests.http_helpers import MakeClient, outbox_of, signup, token_of, wait_run, waiting_signup

TRIES = 20


async def click(client: TestClient, token: str) -> int:
    return (await client.post("/api/verify", json={"token": token})).status


async def test_a_click_and_a_cancel_at_once(make_client: MakeClient) -> None:
    client = await make_client()
    outcomes = set()
    for n in range(TRIES):
        accepted, token = await waiting_signup(client, f"race{n}@example.com")
        run_id = accepted["workflowId"]
        verified, cancelled = await asyncio.gather(click(client, token), client.post(f"/api/workflows/{run_id}/cancel"))
        done = await wait_run(client, run_id, "COMPLETED", "CANCELLED")
        if verified == 200:
            assert cancelled.status == 409, "a click answered 200 has ended the wait: no cancel after it"
            assert done["status"] == "COMPLETED" and done["user"]["status"] in ("ACTIVE", "FLAGGED")
        else:
            assert (verified, cancelled.status) == (410, 200)
            assert done["status"] == "CANCELLED" and done["user"]["status"] == "CANCELLED"
        outcomes.add(verified)
    assert outcomes, outcomes


async def test_a_click_and_a_resend_at_once(make_client: MakeClient) -> None:
    client = await make_client()
    for n in range(TRIES):
        accepted, token = await waiting_signup(client, f"race{n}@example.com")
        run_id, user_id = accepted["workflowId"], accepted["userId"]
        verified, resent = await asyncio.gather(click(client, token), client.post(f"/api/users/{user_id}/resend-verification"))
        if verified == 200:
            assert resent.status == 409, "no new link for a user who has just verified"
            done = await wait_run(client, run_id, "COMPLETED")
            assert done["user"]["status"] in ("ACTIVE", "FLAGGED")
            assert [e["kind"] for e in await outbox_of(client, run_id)] == ["verification"], "no 'new link' email"
        else:
            assert (verified, resent.status) == (410, 202), "the old link died with the resend"
            await wait_run(client, run_id, "WAITING", also=lambda d: len(d["steps"][1]["attempts"]) == 2)
            newest = (await outbox_of(client, run_id))[0]
            assert newest["kind"] == "resend"
            assert await click(client, token_of(newest["link"])) == 200


async def test_a_click_and_the_expiry_at_once(make_client: MakeClient) -> None:
    client = await make_client(verify_ttl=0.6, reminder_after=0)
    rng = random.Random(3)
    for n in range(TRIES // 2):
        accepted = await signup(client, f"race{n}@example.com")
        run_id = accepted["workflowId"]
        detail = await wait_run(client, run_id, "WAITING", "COMPLETED")
        emails = await outbox_of(client, run_id)
        if not emails:
            continue
        await asyncio.sleep(rng.uniform(0.3, 0.8))  # aim the click at the expiry, sometimes before, sometimes after
        verified = await click(client, token_of(emails[0]["link"]))
        done = await wait_run(client, run_id, "COMPLETED")
        if verified == 200:
            assert done["outcome"] == "completed" and done["user"]["status"] in ("ACTIVE", "FLAGGED"), detail
        else:
            assert verified == 410 and done["outcome"] == "expired" and done["user"]["status"] == "EXPIRED"
