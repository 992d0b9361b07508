"""A mail provider's bad half hour: a real SMTP server refuses everyone with 451, then
recovers. No signup made meanwhile is lost, and nobody has to act for its email."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.http_helpers import MakeClient, signup, wait_for, wait_run
from tests.smtp_server import SmtpServer

REFUSAL = "451 4.3.0 mail system temporarily unavailable"


class Outage:
    """The SMTP server's answer: refusing while ``on``."""

    def __init__(self) -> None:
        self.on = True

    def __call__(self, envelope: Any) -> str | None:
        return REFUSAL if self.on else None


def email_attempts(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return next(s for s in detail["steps"] if s["id"] == "send-verification-email")["attempts"]


async def test_signups_during_an_outage_get_their_email_once_it_is_over(make_client: MakeClient) -> None:
    with SmtpServer() as smtp:
        outage = smtp.handler.reply = Outage()
        client = await make_client(smtp_url=smtp.url, email_max_backoff=0.5)
        runs = [(await signup(client, f"user{n}@example.com"))["workflowId"] for n in range(5)]
        for run_id in runs:
            detail = await wait_for(client, f"/api/workflows/{run_id}", lambda d: len([a for a in email_attempts(d) if a["error"]]) >= 3)
            step = next(s for s in detail["steps"] if s["id"] == "send-verification-email")
            assert detail["status"] == "RUNNING" and step["status"] == "RETRYING" and step["retryAt"], "still trying, with the next attempt's time"
            assert "451" in email_attempts(detail)[0]["error"]
        outage.on = False
        for run_id in runs:
            await wait_run(client, run_id, "WAITING", timeout=20)
        messages = await asyncio.to_thread(smtp.handler.wait_for, len(runs))
        assert sorted(m["Message-ID"] for m in messages) == sorted(f"<{r}.verification.1@userflow>" for r in runs)


async def test_a_run_failed_by_a_long_outage_is_resumed_by_signing_up_again(make_client: MakeClient) -> None:
    with SmtpServer() as smtp:
        outage = smtp.handler.reply = Outage()
        client = await make_client(smtp_url=smtp.url, email_max_backoff=0.3, email_retry_for=1.0)
        first = await signup(client, "ann@example.com", "Ann Lee")
        failed = await wait_run(client, first["workflowId"], "FAILED", timeout=20)
        assert "451" in failed["error"]["message"]
        outage.on = False
        again = await signup(client, "ann@example.com", "Ann Lee")
        assert (again["workflowId"], again["userId"]) == (first["workflowId"], first["userId"]), "the same run, not a second user"
        waiting = await wait_run(client, first["workflowId"], "WAITING", timeout=20)
        assert any("a new signup for the same address" in e["message"] for e in waiting["timeline"] if e["type"] == "operator-retry")
        [message] = await asyncio.to_thread(smtp.handler.wait_for, 1)
        assert message["Message-ID"] == f"<{first['workflowId']}.verification.1@userflow>"


async def test_the_operator_resumes_every_failed_run_at_once(make_client: MakeClient) -> None:
    with SmtpServer() as smtp:
        outage = smtp.handler.reply = Outage()
        client = await make_client(smtp_url=smtp.url, email_max_backoff=0.3, email_retry_for=1.0)
        runs = [(await signup(client, f"user{n}@example.com"))["workflowId"] for n in range(3)]
        for run_id in runs:
            await wait_run(client, run_id, "FAILED", timeout=20)
        outage.on = False
        resp = await client.post("/api/workflows/failed/retry")
        assert resp.status == 202, await resp.text()
        body = await resp.json()
        assert body["retried"] == 3 and sorted(body["workflowIds"]) == sorted(runs)
        for run_id in runs:
            detail = await wait_run(client, run_id, "WAITING", timeout=20)
            [entry] = [e for e in detail["timeline"] if e["type"] == "operator-retry"]
            assert "retry of every failed run" in entry["message"]
        assert len(await asyncio.to_thread(smtp.handler.wait_for, 3)) == 3
        again = await (await client.post("/api/workflows/failed/retry")).json()
        assert again == {"retried": 0, "workflowIds": []}
