"""The live side: Server-Sent Events, Prometheus metrics and log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from tests.http_helpers import signup_run
from userflow.http import events as events_module


class Stream:
    """An SSE reader on top of an aiohttp response."""

    def __init__(self, response) -> None:
        self.response = response
        self.events: list[dict] = []
        self.comments: list[str] = []

    async def next(self, timeout: float = 10.0) -> dict:
        event: dict = {}
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise ConnectionError("stream closed")
                line = raw.decode().rstrip("\n")
                if line == "":
                    if "event" in event or "data" in event:
                        self.events.append(event)
                        return event
                    continue
                if line.startswith(":"):
                    self.comments.append(line)
                    continue
                field, _, value = line.partition(": ")
                event[field] = json.loads(value) if field == "data" else value

    async def until(self, predicate, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.1, deadline - time.monotonic()))
            if predicate(event):
                return event


async def open_stream(client, **headers) -> Stream:
    response = await client.get("/api/events", headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return Stream(response)


def run_is(status: str, run_id: str | None = None):
    return lambda e: e.get("event") == "run" and e["data"]["status"] == status and (run_id is None or e["data"]["id"] == run_id)


async def test_events_show_every_timeline_entry_and_run_change(client):
    stream = await open_stream(client)
    run_id = await signup_run(client, "ann@example.com")
    await stream.until(run_is("WAITING", run_id))
    types = [e["data"]["type"] for e in stream.events if e["event"] == "timeline"]
    assert types[0] == "run-started" and "email-sent" in types and types[-1] == "waiting"
    detail = await (await client.get(f"/api/workflows/{run_id}")).json()
    assert [e["type"] for e in detail["timeline"]] == types  # the stream missed nothing
    ids = [e["id"] for e in stream.events]
    assert len(set(ids)) == len(ids)


async def test_reconnecting_with_last_event_id_gets_exactly_the_missed_events(client):
    watcher = await open_stream(client)  # stays connected: the reference
    first = await open_stream(client)
    run_a = await signup_run(client, "ann@example.com")
    seen = await first.until(run_is("WAITING", run_a))
    first.response.close()  # the page goes away...

    run_b = await signup_run(client, "bob@example.com")  # ...while this happens
    await watcher.until(run_is("WAITING", run_b))

    again = await open_stream(client, **{"Last-Event-ID": seen["id"]})
    await again.until(run_is("WAITING", run_b))
    reference = [e for e in watcher.events]
    position = next(i for i, e in enumerate(reference) if e["id"] == seen["id"])
    assert [e["id"] for e in again.events] == [e["id"] for e in reference[position + 1 :]]
    assert [e["data"] for e in again.events] == [e["data"] for e in reference[position + 1 :]]


async def test_an_id_from_another_server_process_asks_for_a_reset(client):
    stream = await open_stream(client, **{"Last-Event-ID": "deadbeef-12"})
    event = await stream.next()
    assert event["event"] == "reset"


async def test_a_client_too_far_behind_gets_a_reset_not_a_backlog(client, monkeypatch):
    from userflow.http.keys import EVENTS

    hub = client.app[EVENTS]
    cursor = hub.last_seq
    hub.publish([("timeline", {"n": i}) for i in range(events_module.RING + 10)])
    while hub.last_seq < cursor + events_module.RING + 10:  # the loop numbers them next
        await asyncio.sleep(0.01)
    assert hub.since(cursor) is None
    stream = await open_stream(client, **{"Last-Event-ID": f"{hub.boot}-{cursor}"})
    assert (await stream.next())["event"] == "reset"


async def test_heartbeats_keep_an_idle_stream_alive(client, monkeypatch):
    monkeypatch.setattr(events_module, "HEARTBEAT", 0.05)
    stream = await open_stream(client)
    task = asyncio.ensure_future(stream.next(timeout=0.5))
    with pytest.raises(TimeoutError):
        await task
    assert any(c.startswith(": heartbeat") for c in stream.comments)


async def test_metrics_count_runs_steps_and_clients(client):
    stream = await open_stream(client)
    run_id = await signup_run(client, "ann@example.com")
    await stream.until(run_is("WAITING", run_id))
    deadline = time.monotonic() + 10
    while True:  # the actor stops just after its last commit: wait for that
        text = await (await client.get("/metrics")).text()
        lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}
        if lines["userflow_live_actors"] == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    assert lines['userflow_runs_started_total{workflow="user-signup"}'] == 1
    assert lines['userflow_step_attempts_total{step="create-user",workflow="user-signup"}'] == 1
    assert lines['userflow_runs{status="WAITING"}'] == 1
    assert lines["userflow_waiting_runs"] == 1
    assert lines["userflow_sse_clients"] == 1
    assert lines["userflow_live_actors"] == 0  # a waiting run holds no actor
    assert lines['userflow_step_duration_seconds_count{step="send-verification-email",workflow="user-signup"}'] == 1
    assert lines['userflow_http_requests_total{method="POST",route="/api/signup",status="202"}'] == 1


async def test_every_timeline_entry_is_logged_with_its_run_and_no_token(client, caplog):
    caplog.set_level(logging.DEBUG, logger="userflow.run")
    stream = await open_stream(client)
    run_id = await signup_run(client, "ann@example.com")
    await stream.until(run_is("WAITING", run_id))
    outbox = await (await client.get("/api/outbox")).json()
    token = outbox["emails"][0]["link"].split("token=")[1]
    assert (await client.get(f"/api/verify?token={token}")).status == 200
    await stream.until(run_is("COMPLETED", run_id))
    detail = await (await client.get(f"/api/workflows/{run_id}")).json()
    deadline = time.monotonic() + 5
    while len([r for r in caplog.records if r.name == "userflow.run"]) < len(detail["timeline"]):
        assert time.monotonic() < deadline  # the log listener runs just after the event is published
        await asyncio.sleep(0.01)
    records = [r for r in caplog.records if r.name == "userflow.run"]
    assert len(records) == len(detail["timeline"])
    assert all(r.runId == run_id for r in records)
    assert any(r.step == "send-verification-email" and r.attempt == 1 for r in records)
    assert all(token not in r.getMessage() for r in caplog.records)


def test_json_log_lines_carry_run_step_and_attempt():
    from userflow.http.logs import JsonFormatter

    record = logging.LogRecord("userflow.run", logging.INFO, __file__, 1, "attempt %d failed", (2,), None)
    record.runId, record.step, record.attempt, record.event = "wf_1", "send-verification-email", 2, "attempt-failed"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "attempt 2 failed" and line["runId"] == "wf_1" and line["attempt"] == 2
    assert line["level"] == "info" and line["ts"].endswith("Z")


async def test_an_id_resumes_across_a_restart_on_postgresql_and_resets_on_the_data_dir(stores_at, aiohttp_client):
    from tests.http_helpers import PUBLIC_URL
    from userflow.http.app import build_app
    from userflow.http.config import Settings

    settings = Settings(data_dir=stores_at.path(), email_failure_rate=0.0)
    stores = stores_at.open()
    client = await aiohttp_client(build_app(settings, stores, PUBLIC_URL))
    reference = await open_stream(client)
    run_a = await signup_run(client, "ann@example.com")
    await reference.until(run_is("WAITING", run_a))
    started = next(e for e in reference.events if e["event"] == "timeline" and e["data"]["type"] == "run-started")
    await client.close()
    stores_at.close(stores)

    stores = stores_at.open()  # the server restarts on the same store
    client = await aiohttp_client(build_app(settings, stores, PUBLIC_URL))
    resumed = await open_stream(client, **{"Last-Event-ID": started["id"]})
    if stores_at.backend == "files":
        assert (await resumed.next())["event"] == "reset"  # a data dir's stream ends with its process
        return
    missed = reference.events[reference.events.index(started) + 1 :]
    for _ in missed:
        await resumed.next()
    assert [(e["id"], e["data"]) for e in resumed.events] == [(e["id"], e["data"]) for e in missed]
    run_b = await signup_run(client, "bob@example.com")
    await resumed.until(run_is("WAITING", run_b))
    numbers = [int(e["id"].rsplit("-", 1)[1]) for e in resumed.events]
    assert numbers == sorted(set(numbers)), "ids go on rising across the restart"
    assert all(e["event"] != "reset" for e in resumed.events)
    await client.close()
