"""Shared helpers for the HTTP API tests: requests, the error shape, and polling the API with a deadline.

Runs progress in actor threads, so every wait polls the API until a condition
holds or its deadline passes; nothing here sleeps blind to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import entries_of

PUBLIC_URL = "http://public.example"

MakeClient = Callable[..., Awaitable[TestClient]]


# -- reading answers --------------------------------------------------------------------------


def token_of(link: str) -> str:
    tokens = parse_qs(urlsplit(link).query)["token"]
    assert len(tokens) == 1
    return tokens[0]


def step_of(detail: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in detail["steps"] if s["id"] == step_id)


def entries(detail: dict[str, Any], type: str, step: str | None = None) -> list[dict[str, Any]]:
    return entries_of(detail["timeline"], type, step)


async def get_json(client: TestClient, path: str) -> Any:
    resp = await client.get(path)
    assert resp.status == 200, (path, resp.status, await resp.text())
    return await resp.json()


async def outbox_of(client: TestClient, run_id: str) -> list[dict[str, Any]]:
    """The run's emails kept so far, newest first."""
    body = await get_json(client, f"/api/outbox?workflowId={run_id}&limit=200")
    return [e for e in body["emails"] if e["workflowId"] == run_id]


async def expect_error(
    resp: aiohttp.ClientResponse, status: int | tuple[int, ...], code: str | tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The documented error shape ``{"error": {"code", "message"}}`` with ``status`` (and ``code``, when given)."""
    text = await resp.text()
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status in statuses, f"{resp.method} {resp.url.path_qs[:120]}: expected {statuses}, got {resp.status}: {text[:300]}"
    assert resp.content_type == "application/json", f"{resp.status} {resp.content_type}: {text[:300]!r}"
    body = json.loads(text)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].strip(), body
    if code is not None:
        codes = (code,) if isinstance(code, str) else code
        assert body["error"]["code"] in codes, body
    return body


async def expect_gone(client: TestClient, token: str) -> None:
    """The link answers 410 by GET and by POST, in the documented error shape."""
    await expect_error(await client.get("/api/verify", params={"token": token}), 410, "link_expired")
    await expect_error(await client.post("/api/verify", json={"token": token}), 410, "link_expired")


# -- waiting ----------------------------------------------------------------------------------


async def until_clock(moment: float) -> None:
    """Until the wall clock has passed ``moment`` (epoch seconds): waiting for a time, not a guess."""
    while time.time() <= moment:
        await asyncio.sleep(0.02)


async def wait_for(client: TestClient, path: str, predicate: Callable[[Any], Any], timeout: float = 10.0) -> Any:
    """GET ``path`` every 20 ms until it answers 200 with a body for which ``predicate`` holds; the body."""
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


async def wait_listed(client: TestClient, run_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    """Until the listing (the engine's index) shows ``run_id`` with ``status``; its summary."""
    path = f"/api/workflows?status={status}&limit=200"
    body = await wait_for(client, path, lambda b: any(w["id"] == run_id for w in b["workflows"]), timeout)
    return next(w for w in body["workflows"] if w["id"] == run_id)


async def wait_run(
    client: TestClient, run_id: str, *statuses: str, timeout: float = 10.0, also: Callable[[Any], Any] = lambda d: True
) -> dict[str, Any]:
    """Until the run's detail and the listing both show one of ``statuses``; the detail, read again.

    The detail reads the run's file, the listing the engine's index, which is
    updated just after the file: waiting for both keeps later reads of either
    consistent (only stable statuses are awaited). ``also`` is a further
    condition on the detail.
    """
    detail = await wait_for(
        client, f"/api/workflows/{run_id}", lambda d: d["status"] in statuses and also(d), timeout
    )
    await wait_listed(client, run_id, detail["status"], timeout)
    return await get_json(client, f"/api/workflows/{run_id}")


async def wait_user(client: TestClient, user_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
    return await wait_for(client, f"/api/users/{user_id}", lambda u: u["status"] in statuses, timeout)


async def outbox_email(client: TestClient, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The run's (newest) email, once the outbox, narrowed to the run, has one."""
    path = f"/api/outbox?workflowId={run_id}"
    body = await wait_for(client, path, lambda b: any(e["workflowId"] == run_id for e in b["emails"]), timeout)
    return next(e for e in body["emails"] if e["workflowId"] == run_id)


# -- signing up -------------------------------------------------------------------------------


async def signup(client: TestClient, email: str, name: str = "Ann Example", **kwargs: Any) -> dict[str, Any]:
    """POST /api/signup, which must answer 202; the body."""
    resp = await client.post("/api/signup", json={"email": email, "name": name}, **kwargs)
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def signup_run(client: TestClient, email: str = "ann@example.com", name: str = "Ann Lee") -> str:
    """A signup, which must be accepted; the new run's id."""
    return (await signup(client, email, name))["workflowId"]


async def waiting_signup(client: TestClient, email: str, name: str = "Ann Example") -> tuple[dict[str, Any], str]:
    """Sign up and wait until the run waits for the click: the 202 body and the token of its one email's link."""
    accepted = await signup(client, email, name)
    await wait_run(client, accepted["workflowId"], "WAITING")
    [email_entry] = [e for e in await outbox_of(client, accepted["workflowId"]) if e["kind"] == "verification"]
    return accepted, token_of(email_entry["link"])


def skip_unless_before_the_reminder(detail: dict[str, Any], type: str, what: str) -> None:
    """The test's premise is that ``what`` (the run's first ``type`` entry) came before the
    reminder. The run's own timeline says whether it did: a reminder recorded before it means
    the machine was too slow to arrange that, which is no finding about the product. A reminder
    recorded after it is one, and the test's own assertions fail on it."""
    [came] = entries(detail, type)[:1] or [None]
    assert came is not None, f"no {type} entry: {detail['timeline']}"
    reminded = [e for e in entries(detail, "deadline") if "reminder" in e["message"] and e["seq"] < came["seq"]]
    if reminded:
        pytest.skip(f"the reminder ({reminded[0]['at']}) came before {what} ({came['at']}): the machine was too slow")
