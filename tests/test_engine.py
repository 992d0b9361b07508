"""The generic engine, driven through Runtime with small workflows written for the tests."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pykka
import pytest

from tests.helpers import runtimes_on, async_wait_until, entries_of, epoch, live_run_actors, wait_for_status, wait_idle
from userflow.actors.retry import PermanentError, RetryPolicy
from userflow.actors.run_actor import INTERRUPTED, RETRY_TIMER
from userflow.actors.run_model import new_run
from userflow.actors.runtime import Runtime
from userflow.actors.supervisor import DuplicateRun, ShuttingDown, Supervisor
from userflow.actors.timeutil import iso_now
from userflow.actors.workflow import SignalRejected, Step, StepContext, Wait, Workflow
from userflow.storage import FileRunStore

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.02, coefficient=2.0, jitter=0)


def noop(ctx: StepContext) -> dict[str, Any]:
    return {"step": ctx.step_id}


@pytest.fixture(params=["files", "postgres"])
async def engine(request, tmp_path):
    """Start Runtimes on tmp_path (or another dir), or on a fresh PostgreSQL database:
    every test here runs on both stores. All are stopped, and gates opened, at teardown."""
    runtimes = runtimes_on(request.param, request, str(tmp_path))
    yield runtimes
    await runtimes.close()


async def completed(runtime: Runtime, run_id: str, timeout: float = 5.0):
    await wait_for_status(runtime, run_id, "COMPLETED", "FAILED", timeout=timeout)
    stored = await runtime.read(run_id)
    assert stored is not None
    return stored


def assert_timeline_consistent(stored) -> None:
    seqs = [e["seq"] for e in stored.timeline]
    assert seqs == list(range(1, len(seqs) + 1))
    assert stored.run["seq"] == len(seqs)


# -- retries, permanent failures, fallbacks -------------------------------------------


async def test_step_failing_twice_is_retried_and_recorded(engine) -> None:
    calls: list[tuple[int, float]] = []

    def flaky(ctx: StepContext) -> dict[str, Any]:
        calls.append((ctx.attempt, time.time()))
        ctx.state["attempts_seen"] = ctx.attempt
        if ctx.attempt < 3:
            ctx.state["half_written"] = True  # discarded: a failed attempt leaves no state behind
            ctx.log(f"trying {ctx.attempt}")
            raise RuntimeError(f"boom {ctx.attempt}")
        ctx.log("third time lucky")
        return {"ok": ctx.attempt}

    def after(ctx: StepContext) -> dict[str, Any]:
        return {"saw": ctx.outputs["flaky"], "state": dict(ctx.state)}

    workflow = Workflow("flaky", (Step("flaky", "Flaky step", flaky, FAST), Step("after", "After", after)))
    runtime = await engine([workflow])
    result = await runtime.start_run("flaky", {"x": 1})
    assert result.created
    stored = await completed(runtime, result.run_id)

    run = stored.run
    assert run["status"] == "COMPLETED" and run["outcome"] == "completed" and run["error"] is None
    step = run["steps"][0]
    assert step["status"] == "COMPLETED"
    assert step["output"] == {"ok": 3}
    assert [a["number"] for a in step["attempts"]] == [1, 2, 3]
    assert [a["error"] for a in step["attempts"]] == ["RuntimeError: boom 1", "RuntimeError: boom 2", None]
    assert all(a["finishedAt"] for a in step["attempts"])
    assert step["retryAt"] is None and run["timers"] == {}
    assert run["state"] == {"attempts_seen": 3}
    assert run["steps"][1]["output"] == {"saw": {"ok": 3}, "state": {"attempts_seen": 3}}

    # the backoff was honoured: 20 ms then 40 ms
    assert [n for n, _ in calls] == [1, 2, 3]
    assert calls[1][1] - calls[0][1] >= 0.02
    assert calls[2][1] - calls[1][1] >= 0.04

    failed = entries_of(stored.timeline, "attempt-failed", "flaky")
    assert [e["attempt"] for e in failed] == [1, 2]
    assert "boom 1" in failed[0]["message"] and "retrying" in failed[0]["message"]
    assert "boom 2" in failed[1]["message"]
    assert [e["attempt"] for e in entries_of(stored.timeline, "attempt-started", "flaky")] == [1, 2, 3]
    logs = [(e["attempt"], e["message"]) for e in entries_of(stored.timeline, "info", "flaky")]
    assert logs == [(1, "trying 1"), (2, "trying 2"), (3, "third time lucky")]
    assert stored.timeline[-1]["type"] == "run-completed"
    assert_timeline_consistent(stored)


class Declined(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "policy", "expected"),
    [
        (PermanentError("card declined"), RetryPolicy(max_attempts=5, initial_backoff=0.01), "PermanentError: card declined"),
        (Declined("nope"), RetryPolicy(max_attempts=5, initial_backoff=0.01, non_retryable=(Declined,)), "Declined: nope"),
    ],
)
async def test_permanent_error_fails_the_run_at_once(engine, error, policy, expected) -> None:
    calls: list[int] = []

    def charge(ctx: StepContext) -> None:
        calls.append(ctx.attempt)
        raise error

    workflow = Workflow("charge", (Step("charge", "Charge", charge, policy), Step("ship", "Ship", noop)))
    runtime = await engine([workflow])
    result = await runtime.start_run("charge", {})
    stored = await completed(runtime, result.run_id)

    assert calls == [1]
    run = stored.run
    assert run["status"] == "FAILED"
    assert run["error"] == {"step": "charge", "message": expected}
    assert run["steps"][0]["status"] == "FAILED" and len(run["steps"][0]["attempts"]) == 1
    assert run["steps"][1]["status"] == "PENDING" and run["steps"][1]["attempts"] == []
    assert run["timers"] == {}
    failed = entries_of(stored.timeline, "attempt-failed")
    assert len(failed) == 1 and "not retryable" in failed[0]["message"]
    assert stored.timeline[-1]["type"] == "run-failed"
    summary = runtime.index.get(result.run_id)
    assert summary["status"] == "FAILED" and summary["error"]["step"] == "charge"
    await wait_idle()


async def test_exhausted_retries_fail_the_run(engine) -> None:
    def always(ctx: StepContext) -> None:
        raise TimeoutError("slow")

    workflow = Workflow("always", (Step("always", "Always fails", always, FAST),))
    runtime = await engine([workflow])
    stored = await completed(runtime, (await runtime.start_run("always", {})).run_id)
    assert stored.run["status"] == "FAILED"
    assert len(stored.run["steps"][0]["attempts"]) == 3
    assert "3 failed attempts" in entries_of(stored.timeline, "attempt-failed")[-1]["message"]


async def test_fallback_completes_a_step_after_retries_are_exhausted(engine) -> None:
    seen: list[tuple[int, str]] = []

    def model(ctx: StepContext) -> None:
        raise ConnectionError(f"model down ({ctx.attempt})")

    def fallback(ctx: StepContext, error: BaseException) -> dict[str, Any]:
        seen.append((ctx.attempt, str(error)))
        ctx.state["decided_by"] = "fallback"
        return {"decision": "ALLOW", "source": "fallback"}

    def use(ctx: StepContext) -> dict[str, Any]:
        return {"got": ctx.outputs["model"], "by": ctx.state["decided_by"]}

    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, jitter=0)
    workflow = Workflow("fb", (Step("model", "Model", model, policy, fallback=fallback), Step("use", "Use", use)))
    runtime = await engine([workflow])
    stored = await completed(runtime, (await runtime.start_run("fb", {})).run_id)

    assert seen == [(2, "model down (2)")]
    run = stored.run
    assert run["status"] == "COMPLETED" and run["error"] is None
    step = run["steps"][0]
    assert step["status"] == "COMPLETED"
    assert step["output"] == {"decision": "ALLOW", "source": "fallback"}
    assert [a["error"] for a in step["attempts"]] == ["ConnectionError: model down (1)", "ConnectionError: model down (2)"]
    assert run["steps"][1]["output"] == {"got": {"decision": "ALLOW", "source": "fallback"}, "by": "fallback"}
    assert any("fallback" in e["message"] for e in entries_of(stored.timeline, "step-completed", "model"))


async def test_failing_fallback_fails_the_run(engine) -> None:
    def model(ctx: StepContext) -> None:
        raise PermanentError("bad input")

    def fallback(ctx: StepContext, error: BaseException) -> None:
        raise ValueError("no fallback either")

    workflow = Workflow("fb2", (Step("model", "Model", model, FAST, fallback=fallback),))
    runtime = await engine([workflow])
    stored = await completed(runtime, (await runtime.start_run("fb2", {})).run_id)
    assert stored.run["status"] == "FAILED"
    message = stored.run["error"]["message"]
    assert "PermanentError: bad input" in message and "fallback failed: ValueError: no fallback either" in message


async def test_checkpointed_state_survives_a_failed_attempt(engine) -> None:
    seen: list[Any] = []

    def effect(ctx: StepContext) -> dict[str, Any]:
        seen.append(ctx.state.get("intent"))
        if "intent" not in ctx.state:
            ctx.state["intent"] = "msg-1"
            ctx.log("intent recorded")
            ctx.checkpoint()
            raise RuntimeError("transport timeout")
        return {"sent": ctx.state["intent"]}

    workflow = Workflow("ckpt", (Step("effect", "Effect", effect, FAST),))
    runtime = await engine([workflow])
    stored = await completed(runtime, (await runtime.start_run("ckpt", {})).run_id)
    assert seen == [None, "msg-1"]
    assert stored.run["state"] == {"intent": "msg-1"}
    assert stored.run["steps"][0]["output"] == {"sent": "msg-1"}
    assert entries_of(stored.timeline, "info", "effect")[0]["attempt"] == 1
    assert_timeline_consistent(stored)


async def test_async_step_runs_on_the_event_loop(engine) -> None:
    loop = asyncio.get_running_loop()

    async def fetch(ctx: StepContext) -> dict[str, Any]:
        assert asyncio.get_running_loop() is loop
        await asyncio.sleep(0)
        return {"fetched": ctx.input["url"]}

    workflow = Workflow("async", (Step("fetch", "Fetch", fetch),))
    runtime = await engine([workflow])
    stored = await completed(runtime, (await runtime.start_run("async", {"url": "u"})).run_id)
    assert stored.run["status"] == "COMPLETED"
    assert stored.run["steps"][0]["output"] == {"fetched": "u"}


# -- signals -----------------------------------------------------------------------------


def approval_workflow(prepare, accept=None) -> Workflow:
    def after(ctx: StepContext) -> dict[str, Any]:
        return {"approval": ctx.outputs["approval"]["payload"]}

    wait = Wait("approval", "Approval", "approved", accept) if accept else Wait("approval", "Approval", "approved")
    return Workflow("approve", (Step("prepare", "Prepare", prepare), wait, Step("after", "After", after)))


async def test_signal_before_the_wait_is_recorded_and_consumed_when_the_wait_starts(engine) -> None:
    gate = engine.gate()
    runtime = await engine([approval_workflow(gate)])
    statuses: list[str] = []
    runtime.index.subscribe(lambda run, summary, entries: statuses.append(summary["status"]))

    result = await runtime.start_run("approve", {})
    await async_wait_until(lambda: gate.waiting == 1)
    (actor,) = live_run_actors()

    delivery = asyncio.create_task(runtime.signal(result.run_id, "approved", {"by": "ann"}))
    # the signal is queued behind the blocked step, not lost and not answered yet
    await async_wait_until(lambda: actor.actor_inbox.qsize() >= 1)
    assert not delivery.done()
    gate.release.set()
    delivered = await asyncio.wait_for(delivery, 5)
    assert delivered.run_id == result.run_id and delivered.duplicate is False

    stored = await completed(runtime, result.run_id)
    assert stored.run["status"] == "COMPLETED"
    assert "WAITING" not in statuses  # the wait found its signal already there
    (received,) = entries_of(stored.timeline, "signal-received")
    (prepared,) = entries_of(stored.timeline, "step-completed", "prepare")
    (consumed,) = entries_of(stored.timeline, "step-completed", "approval")
    # recorded after the earlier step finished and before the wait began
    assert prepared["seq"] < received["seq"] < consumed["seq"]
    assert all(e["seq"] > received["seq"] for e in entries_of(stored.timeline, "waiting"))
    assert stored.run["signals"] == []  # consumed
    wait_step = stored.run["steps"][1]
    assert wait_step["status"] == "COMPLETED"
    assert wait_step["output"]["signal"] == "approved" and wait_step["output"]["payload"] == {"by": "ann"}
    assert stored.run["steps"][2]["output"] == {"approval": {"by": "ann"}}
    # once consumed, the same signal is a duplicate
    again = await runtime.signal(result.run_id, "approved", {"by": "ann"})
    assert again.duplicate is True


async def test_duplicate_signal_is_reported_not_recorded_twice(engine) -> None:
    runtime = await engine([approval_workflow(noop)])
    result = await runtime.start_run("approve", {})
    await wait_for_status(runtime, result.run_id, "WAITING")

    first = await runtime.signal(result.run_id, "approved", {"by": "bob"})
    assert first.duplicate is False
    await wait_for_status(runtime, result.run_id, "COMPLETED")
    second = await runtime.signal(result.run_id, "approved", {"by": "bob"})
    assert second.duplicate is True
    stored = await runtime.read(result.run_id)
    assert len(entries_of(stored.timeline, "signal-received")) == 1
    assert stored.run["steps"][2]["output"] == {"approval": {"by": "bob"}}
    # a different payload to a finished run is refused, not a duplicate
    with pytest.raises(SignalRejected) as info:
        await runtime.signal(result.run_id, "approved", {"by": "eve"})
    assert info.value.reason == "closed"


async def test_duplicate_of_a_pending_signal(engine) -> None:
    gate = engine.gate()
    runtime = await engine([approval_workflow(gate)])
    result = await runtime.start_run("approve", {})
    await async_wait_until(lambda: gate.waiting == 1)
    deliveries = [asyncio.create_task(runtime.signal(result.run_id, "approved", {"n": 1})) for _ in range(2)]
    (actor,) = live_run_actors()
    await async_wait_until(lambda: actor.actor_inbox.qsize() >= 2)
    gate.release.set()
    answers = await asyncio.gather(*deliveries)
    assert [a.duplicate for a in answers] == [False, True]
    stored = await completed(runtime, result.run_id)
    assert len(entries_of(stored.timeline, "signal-received")) == 1


async def test_rejected_signal_raises_to_the_caller_and_changes_nothing(engine) -> None:
    def accept(run, payload) -> None:
        if payload.get("code") != "1234":
            raise SignalRejected("bad_code", "that code is wrong")

    runtime = await engine([approval_workflow(noop, accept)])
    result = await runtime.start_run("approve", {})
    await wait_for_status(runtime, result.run_id, "WAITING")
    before = await runtime.read(result.run_id)

    with pytest.raises(SignalRejected) as info:
        await runtime.signal(result.run_id, "approved", {"code": "0000"})
    assert info.value.reason == "bad_code" and info.value.message == "that code is wrong"
    with pytest.raises(SignalRejected) as unknown:
        await runtime.signal(result.run_id, "no-such-signal", {})
    assert unknown.value.reason == "unknown_signal"

    after = await runtime.read(result.run_id)
    assert after.run["version"] == before.run["version"]
    assert after.run["signals"] == [] and after.run["status"] == "WAITING"
    assert runtime.index.get(result.run_id)["status"] == "WAITING"

    assert (await runtime.signal(result.run_id, "approved", {"code": "1234"})).duplicate is False
    stored = await completed(runtime, result.run_id)
    assert stored.run["status"] == "COMPLETED"


async def test_waiting_runs_hold_no_live_actor(engine) -> None:
    runtime = await engine([approval_workflow(noop)])
    ids = [(await runtime.start_run("approve", {"n": n})).run_id for n in range(10)]
    for run_id in ids:
        await wait_for_status(runtime, run_id, "WAITING")
    await wait_idle()
    assert pykka.ActorRegistry.get_by_class(Supervisor)  # only the supervisor remains
    stored = await runtime.read(ids[0])
    assert stored.run["status"] == "WAITING" and stored.run["steps"][1]["status"] == "WAITING"

    # a signal brings one run back to life, and it is passivated again when done
    await runtime.signal(ids[0], "approved", {"ok": True})
    await wait_for_status(runtime, ids[0], "COMPLETED")
    await wait_idle()
    assert [runtime.index.get(i)["status"] for i in ids[1:]] == ["WAITING"] * 9


class LiveRunActorsPeak:
    """The most run actors ever registered at once, seen at every change rather than sampled.

    pykka registers an actor when it starts and unregisters it when it stops, each through
    ActorRegistry.register / unregister. Both are wrapped to count, under one lock, right after
    the change: no change can come between the registry's and the count's, so no moment above
    the cap can be missed, and nothing polls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.peak = 0
        self._lock = threading.Lock()
        for name in ("register", "unregister"):
            monkeypatch.setattr(pykka.ActorRegistry, name, self._counting(getattr(pykka.ActorRegistry, name)))

    def _counting(self, change: Any) -> Any:
        def changed(actor_ref: pykka.ActorRef[Any]) -> None:
            with self._lock:
                change(actor_ref)
                self.peak = max(self.peak, len(live_run_actors()))

        return changed


async def test_live_actors_are_capped(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = engine.gate()
    workflow = Workflow("capped", (Step("block", "Block", gate), Step("done", "Done", noop)))
    runtime = await engine([workflow], max_live=4)
    live = LiveRunActorsPeak(monkeypatch)

    starts = asyncio.gather(*(runtime.start_run("capped", {"n": n}) for n in range(50)))
    await async_wait_until(lambda: gate.waiting == 4)
    await async_wait_until(lambda: runtime.index.active() == 50)  # all accepted and indexed
    assert not starts.done()  # the queued ones are not durable yet, so not answered
    assert len(live_run_actors()) == 4
    gate.release.set()
    results = await asyncio.wait_for(starts, 15)
    assert all(r.created for r in results) and len({r.run_id for r in results}) == 50
    for r in results:
        await wait_for_status(runtime, r.run_id, "COMPLETED", timeout=10)
    await wait_idle()
    assert gate.passed == 50
    assert gate.peak == 4
    assert live.peak == 4, f"{live.peak} run actors were alive at once"


# -- dedupe ---------------------------------------------------------------------------------


def dedupe_workflow() -> Workflow:
    def finish(ctx: StepContext) -> dict[str, Any]:
        if ctx.outputs["go"]["payload"].get("fail"):
            raise PermanentError("asked to fail")
        return {}

    def on_duplicate(summary) -> str:
        if summary["status"] in ("RUNNING", "WAITING"):
            return "reuse"
        if summary["status"] == "COMPLETED":
            return "conflict"
        return "new"

    return Workflow(
        "dedupe",
        (Wait("go", "Go", "go"), Step("finish", "Finish", finish)),
        keys=lambda run: {"email": [run["input"]["email"]]},
        summary=lambda run: {"email": run["input"]["email"]},
        on_duplicate=on_duplicate,
    )


async def test_dedupe_reuse_conflict_and_new(engine) -> None:
    runtime = await engine([dedupe_workflow()])
    key = ("email", "a@example.com")

    one, other = await asyncio.gather(
        runtime.start_run("dedupe", {"email": "a@example.com"}, key),
        runtime.start_run("dedupe", {"email": "a@example.com"}, key),
    )
    # Either may reach the supervisor first: exactly one starts the run, the other gets it.
    assert sorted([one.created, other.created]) == [False, True]
    assert one.run_id == other.run_id
    first = one if one.created else other
    await wait_for_status(runtime, first.run_id, "WAITING")

    reused = await runtime.start_run("dedupe", {"email": "a@example.com"}, key)
    assert reused.run_id == first.run_id and not reused.created
    assert reused.summary["status"] == "WAITING" and reused.summary["email"] == "a@example.com"
    assert len(runtime.index) == 1

    await runtime.signal(first.run_id, "go", {})
    await wait_for_status(runtime, first.run_id, "COMPLETED")
    with pytest.raises(DuplicateRun) as info:
        await runtime.start_run("dedupe", {"email": "a@example.com"}, key)
    assert info.value.run_id == first.run_id
    assert info.value.summary["status"] == "COMPLETED"

    # no dedupe key: always a new run
    other = await runtime.start_run("dedupe", {"email": "a@example.com"})
    assert other.created and other.run_id != first.run_id

    # a failed run lets a new one take its key
    key_b = ("email", "b@example.com")
    failing = await runtime.start_run("dedupe", {"email": "b@example.com"}, key_b)
    await wait_for_status(runtime, failing.run_id, "WAITING")
    await runtime.signal(failing.run_id, "go", {"fail": True})
    await wait_for_status(runtime, failing.run_id, "FAILED")
    fresh = await runtime.start_run("dedupe", {"email": "b@example.com"}, key_b)
    assert fresh.created and fresh.run_id != failing.run_id
    assert runtime.index.lookup(*key_b) == fresh.run_id
    assert len(runtime.index) == 4


# -- recovery --------------------------------------------------------------------------------


async def test_recovery_keeps_waiting_runs_parked_and_backoff_due_times(engine, tmp_path) -> None:
    calls: list[tuple[int, float]] = []

    def once_broken(ctx: StepContext) -> dict[str, Any]:
        calls.append((ctx.attempt, time.time()))
        if ctx.attempt == 1:
            raise RuntimeError("dependency down")
        return {"attempt": ctx.attempt}

    workflows = [
        approval_workflow(noop),
        Workflow(
            "backoff",
            # 1.2 s of backoff: time enough to stop the first runtime before the retry is due.
            (Step("call", "Call", once_broken, RetryPolicy(max_attempts=3, initial_backoff=1.2, jitter=0)),),
        ),
    ]
    first = await engine(workflows)
    waiting = await first.start_run("approve", {})
    backing_off = await first.start_run("backoff", {})
    await wait_for_status(first, waiting.run_id, "WAITING")

    async def retry_due() -> float:
        stored = await first.read(backing_off.run_id)
        return stored.run["timers"].get(RETRY_TIMER) if stored else None

    due = None
    deadline = time.monotonic() + 5
    while due is None and time.monotonic() < deadline:
        due = await retry_due()
    assert due is not None
    await asyncio.to_thread(first.stop)
    if time.time() >= due:
        pytest.skip("the first runtime stopped after the retry was due: the machine was too slow for this test's premise")
    stored = await first.read(backing_off.run_id)
    assert stored.run["status"] == "RUNNING" and stored.run["steps"][0]["status"] == "RETRYING"
    assert epoch(stored.run["steps"][0]["retryAt"]) == pytest.approx(due, abs=0.002)

    second = await engine(workflows)
    report = second.report
    assert report.runs == 2 and report.waiting == 1 and report.timers == 1 and report.resume == []
    assert second.index.get(waiting.run_id)["status"] == "WAITING"
    assert second.index.get(backing_off.run_id)["status"] == "RUNNING"
    assert live_run_actors() == []  # nothing is due yet: no actor for either run

    await wait_for_status(second, backing_off.run_id, "COMPLETED", timeout=5)
    assert [n for n, _ in calls] == [1, 2]
    assert calls[1][1] >= due  # the original due time was kept, not restarted nor skipped
    stored = await second.read(backing_off.run_id)
    attempts = stored.run["steps"][0]["attempts"]
    assert epoch(attempts[1]["startedAt"]) >= due - 0.001  # ISO times keep milliseconds
    assert stored.run["timers"] == {}

    await wait_idle()
    assert second.index.get(waiting.run_id)["status"] == "WAITING"
    assert (await second.signal(waiting.run_id, "approved", {"late": True})).duplicate is False
    done = await completed(second, waiting.run_id)
    assert done.run["status"] == "COMPLETED"
    assert done.run["steps"][2]["output"] == {"approval": {"late": True}}


async def test_backoff_that_expired_during_downtime_fires_at_once(engine, tmp_path) -> None:
    workflow = Workflow("late", (Step("call", "Call", noop, RetryPolicy(max_attempts=2, initial_backoff=0.01)),))
    run = new_run(workflow, "wf_late", {})
    step = run["steps"][0]
    step["status"] = "RETRYING"
    step["attempts"] = [{"number": 1, "startedAt": iso_now(), "finishedAt": iso_now(), "error": "RuntimeError: x"}]
    run["timers"] = {RETRY_TIMER: time.time() - 3600}
    run["version"] = 1
    engine.store().open("wf_late").commit(run, [])

    runtime = await engine([workflow])
    assert runtime.report.timers == 1 and runtime.report.resume == []
    stored = await completed(runtime, "wf_late")
    assert stored.run["status"] == "COMPLETED"
    assert [a["number"] for a in stored.run["steps"][0]["attempts"]] == [1, 2]


async def test_interrupted_attempt_is_marked_and_run_again(engine, tmp_path) -> None:
    calls: list[int] = []

    def effect(ctx: StepContext) -> dict[str, Any]:
        calls.append(ctx.attempt)
        return {"attempt": ctx.attempt}

    # one attempt allowed: an interrupted attempt is not a failure and must not use it up
    workflow = Workflow("crashy", (Step("effect", "Effect", effect, RetryPolicy(max_attempts=1)), Step("b", "B", noop)))
    run_id = "wf_interrupted"
    run = new_run(workflow, run_id, {"k": "v"})
    started = iso_now()
    run["steps"][0].update(
        status="RUNNING",
        startedAt=started,
        attempts=[{"number": 1, "startedAt": started, "finishedAt": None, "error": None}],
    )
    run["seq"], run["version"] = 2, 2
    entries = [
        {"seq": 1, "at": started, "type": "run-started", "step": None, "attempt": None, "message": "run started"},
        {"seq": 2, "at": started, "type": "attempt-started", "step": "effect", "attempt": 1, "message": "attempt 1"},
    ]
    engine.store().open(run_id).commit(run, entries)

    runtime = await engine([workflow])
    assert runtime.report.resume == [run_id]
    stored = await completed(runtime, run_id)

    assert calls == [2]
    assert stored.run["status"] == "COMPLETED"
    step = stored.run["steps"][0]
    first, second = step["attempts"]
    assert first["interrupted"] is True and first["error"] == INTERRUPTED and first["finishedAt"]
    assert second["number"] == 2 and second["error"] is None and "interrupted" not in second
    assert step["output"] == {"attempt": 2}
    interrupted = entries_of(stored.timeline, "attempt-interrupted", "effect")
    assert len(interrupted) == 1 and interrupted[0]["attempt"] == 1 and interrupted[0]["seq"] == 3
    assert_timeline_consistent(stored)


async def test_unknown_workflow_files_are_left_alone(engine, tmp_path) -> None:
    known = Workflow("known", (Step("a", "A", noop),))
    stranger = Workflow("stranger", (Step("a", "A", noop),))
    run = new_run(stranger, "wf_stranger", {})
    run["version"] = 1
    engine.store().open("wf_stranger").commit(run, [])
    runtime = await engine([known])
    assert runtime.report.runs == 0
    assert runtime.index.get("wf_stranger") is None
    assert await runtime.read("wf_stranger") is not None, "left as it was"


# -- shutdown ----------------------------------------------------------------------------------


async def test_stop_waits_for_the_current_step_only_and_the_run_resumes_after(engine, tmp_path, caplog) -> None:
    gate = engine.gate()
    workflow = Workflow("two", (Step("a", "A", gate), Step("b", "B", noop)))
    first = await engine([workflow])
    result = await first.start_run("two", {})
    await async_wait_until(lambda: gate.waiting == 1)
    (actor,) = live_run_actors()

    stopping = asyncio.create_task(asyncio.to_thread(first.stop))
    await async_wait_until(lambda: actor.actor_inbox.qsize() >= 1)  # the stop request, behind the step
    assert not stopping.done(), "stop did not wait for the step"
    gate.release.set()
    await asyncio.wait_for(stopping, 30)
    # A stop that gave up on the actor says so; one that waited for the step has nothing to say.
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()], "stop waited out a timeout instead of the step"
    assert actor.actor_stopped.is_set()
    assert live_run_actors() == []
    with pytest.raises(RuntimeError):
        await first.start_run("two", {})

    stored = await first.read(result.run_id)
    assert stored.run["status"] == "RUNNING" and stored.run["cursor"] == 1
    assert stored.run["steps"][0]["status"] == "COMPLETED"

    second = await engine([workflow])
    assert second.report.resume == [result.run_id]
    done = await completed(second, result.run_id)
    assert done.run["status"] == "COMPLETED"
    assert len(done.run["steps"][0]["attempts"]) == 1  # the finished step is not run again
    assert gate.passed == 1


async def test_signal_arriving_during_shutdown_is_refused_not_lost(engine) -> None:
    gate = engine.gate()
    runtime = await engine([approval_workflow(gate)])
    result = await runtime.start_run("approve", {})
    await async_wait_until(lambda: gate.waiting == 1)
    (actor,) = live_run_actors()
    (supervisor,) = pykka.ActorRegistry.get_by_class(Supervisor)
    stopping = asyncio.create_task(asyncio.to_thread(runtime.stop))
    await async_wait_until(lambda: actor.actor_inbox.qsize() >= 1)  # shutdown has begun
    delivery = asyncio.create_task(runtime.signal(result.run_id, "approved", {"late": True}))
    # the request waits in the supervisor's inbox while it stops the actor
    await async_wait_until(lambda: supervisor.actor_inbox.qsize() >= 1)
    gate.release.set()
    await asyncio.wait_for(stopping, 5)
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(delivery, 5)
    stored = await runtime.read(result.run_id)
    assert stored.run["signals"] == []


async def test_a_run_whose_actor_keeps_failing_is_reactivated_with_growing_delays(engine) -> None:
    calls: list[float] = []

    def failing_summary(run: Any) -> dict[str, Any]:
        # A bug in the workflow's summary hook: it fails once the step is running,
        # which fails that commit and stops the actor, every time it is activated.
        if run["steps"][0]["status"] == "RUNNING":
            calls.append(time.monotonic())
            raise RuntimeError("summary bug")
        return {}

    workflow = Workflow("crashing", (Step("a", "A", lambda ctx: None),), summary=failing_summary)
    runtime = await engine([workflow])
    result = await runtime.start_run("crashing", {})
    await async_wait_until(lambda: len(calls) >= 3, timeout=6)
    # reactivated from its last commit after 0.5 s, then 1 s: the backoff grows
    assert calls[1] - calls[0] >= 0.45
    assert calls[2] - calls[1] >= 0.95
    stored = await runtime.read(result.run_id)
    assert stored.run["steps"][0]["status"] == "PENDING"  # the commit that failed was not kept
    assert stored.run["steps"][0]["output"] is None


async def test_a_step_output_that_cannot_be_stored_fails_the_run_instead_of_looping(tmp_path):
    from userflow.actors.runtime import Runtime
    from userflow.actors.workflow import Step, Workflow

    workflow = Workflow("bad-output", (Step("make-set", "Make a set", lambda ctx: {1, 2}),))
    runtime = Runtime(FileRunStore(str(tmp_path)), [workflow], loop=asyncio.get_running_loop())
    await asyncio.to_thread(runtime.start)
    try:
        started = await runtime.start_run("bad-output", {})
        deadline = asyncio.get_running_loop().time() + 10
        while runtime.index.get(started.run_id)["status"] != "FAILED":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        stored = await runtime.read(started.run_id)
        [attempt] = stored.run["steps"][0]["attempts"]
        assert "cannot be stored" in attempt["error"]
    finally:
        await asyncio.to_thread(runtime.stop)


@pytest.mark.parametrize(
    "epoch",
    [0.0, 1.0005, 1_800_000_000.9999995, 1_800_000_000.0004999, 1_800_083_491.8009994, 4_102_444_799.9999999, 1_799_999_999.999],
)
def test_iso_times_read_as_datetime_writes_them(epoch) -> None:
    from datetime import UTC, datetime

    from userflow.actors.timeutil import iso

    expected = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert iso(epoch) == expected
    assert iso(epoch + 1) != expected  # the cached second is not reused for the next one
