"""A release that changes a workflow's steps strands nothing in flight: a run keeps the
definition it started with, unless a migration the release ships moves it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.helpers import runtimes_on, Runtimes, wait_for_status, wait_idle
from userflow.actors.definitions import Definitions
from userflow.actors.workflow import Migration, SignalRejected, Step, StepContext, Wait, Workflow

RAN: list[str] = []


def step(ctx: StepContext) -> dict[str, Any]:
    RAN.append(ctx.step_id)
    return {"step": ctx.step_id}


V1 = Workflow("order", (Step("a", "A", step), Wait("approval", "Approval", "approved"), Step("b", "B", step)))
# Version 2 adds a step before the wait: its cursor indexes would send a v1 run to the wrong step.
V2 = Workflow(
    "order",
    (Step("a", "A", step), Step("x", "X", step), Wait("approval", "Approval", "approved"), Step("b", "B", step)),
    version=2,
)


def insert_x(run: dict[str, Any]) -> None:
    """v1 -> v2: step x did not exist when the run passed that point; it is recorded as skipped."""
    record = {k: None for k in ("output", "startedAt", "finishedAt", "retryAt")}
    run["steps"].insert(1, {"id": "x", "name": "X", "kind": "task", "status": "SKIPPED", "attempts": [], **record})
    if run["cursor"] >= 1:
        run["cursor"] += 1


V2_MIGRATING = Workflow(V2.name, V2.steps, version=2, migrations=(Migration(1, insert_x),))


@pytest.fixture(params=["files", "postgres"])
async def engine(request, tmp_path):
    runtimes = runtimes_on(request.param, request, str(tmp_path))
    RAN.clear()
    yield runtimes
    await runtimes.close()


async def waiting_v1_run(engine: Runtimes) -> str:
    runtime = await engine([V1])
    started = await runtime.start_run("order", {})
    await wait_for_status(runtime, started.run_id, "WAITING")
    stored = await runtime.read(started.run_id)
    assert stored is not None and stored.run["definition"] == 1 and stored.run["format"] == 1
    await wait_idle()
    await asyncio.to_thread(runtime.stop)
    engine.made.remove(runtime)
    return started.run_id


async def test_a_run_keeps_its_version_while_the_release_ships_it(engine: Runtimes) -> None:
    run_id = await waiting_v1_run(engine)
    runtime = await engine([V1, V2])
    await runtime.signal(run_id, "approved", {})
    await wait_for_status(runtime, run_id, "COMPLETED")
    stored = await runtime.read(run_id)
    assert stored is not None
    assert [s["id"] for s in stored.run["steps"]] == ["a", "approval", "b"] and stored.run["definition"] == 1
    assert RAN == ["a", "b"], "step x of version 2 never ran for a version 1 run"
    fresh = await runtime.start_run("order", {})
    await wait_for_status(runtime, fresh.run_id, "WAITING")
    new = await runtime.read(fresh.run_id)
    assert new is not None and new.run["definition"] == 2 and [s["id"] for s in new.run["steps"]] == ["a", "x", "approval", "b"]


async def test_a_migration_moves_a_run_explicitly(engine: Runtimes) -> None:
    run_id = await waiting_v1_run(engine)
    runtime = await engine([V2_MIGRATING])
    await runtime.signal(run_id, "approved", {})
    await wait_for_status(runtime, run_id, "COMPLETED")
    stored = await runtime.read(run_id)
    assert stored is not None and stored.run["definition"] == 2
    assert [(s["id"], s["status"]) for s in stored.run["steps"]] == [
        ("a", "COMPLETED"),
        ("x", "SKIPPED"),
        ("approval", "COMPLETED"),
        ("b", "COMPLETED"),
    ]
    assert any(e["type"] == "migrated" and "version 1" in e["message"] for e in stored.timeline)
    assert RAN == ["a", "b"]


async def test_a_version_neither_shipped_nor_migrated_is_left_untouched(engine: Runtimes, caplog: pytest.LogCaptureFixture) -> None:
    run_id = await waiting_v1_run(engine)
    with caplog.at_level(logging.ERROR):
        runtime = await engine([V2])
    assert runtime.index.get(run_id)["definition"] == 1  # listed as it is
    assert any(run_id in r.getMessage() and "neither ships" in r.getMessage() for r in caplog.records)
    with pytest.raises(SignalRejected, match="neither ships"):  # not served on steps it did not start with
        await runtime.signal(run_id, "approved", {})
    stored = await runtime.read(run_id)
    assert stored is not None and stored.run["status"] == "WAITING" and stored.run["definition"] == 1


def test_versions_are_given_once() -> None:
    with pytest.raises(ValueError, match="given twice"):
        Definitions([V1, V1])
    assert Definitions([V2, V1])["order"] is V2
