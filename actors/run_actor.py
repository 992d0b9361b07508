"""RunActor: the one actor that owns, executes and persists one run.

A run actor lives only while its run has work to do right now. It loads the
run's snapshot, executes the step at the cursor one attempt at a time,
commits after every transition, and reports ``Idle`` to the supervisor when
the run waits (for a signal or a retry timer), fails or finishes; the
supervisor then stops it. A waiting run therefore costs no thread.

Every commit happens before anything that depends on it is announced: a new
run is answered only after its first commit, a signal only after it is
recorded. Work is split into ``Advance`` messages the actor sends itself, so a
signal delivered mid-run is handled between two attempts, not after the run.

Deadlines of waits live in ``run_deadlines``, operator commands in
``run_commands``; this module holds the life cycle, the cursor and recording.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pykka

from userflow.actors.definitions import FORMAT, Definitions
from userflow.actors.index import RunIndex
from userflow.actors.messages import (
    ROUTED,
    ActorFailed,
    Advance,
    AwaitDurable,
    Bounce,
    Command,
    Deliver,
    Delivered,
    Idle,
    StartResult,
    Stopped,
    TimerFired,
    reject,
    resolve,
)
from userflow.actors.retry import PermanentError, describe
from userflow.actors.status import FINISHED, RunStatus, StepStatus
from userflow.actors.run_commands import CommandsMixin
from userflow.actors.run_deadlines import DeadlinesMixin
from userflow.actors.timers import TimerQueue
from userflow.actors.timeutil import epoch, iso, iso_now, now
from userflow.actors.workflow import RETRY_TIMER, SignalRejected, Step, StepContext, Wait, Workflow
from userflow.storage import RunHandle, RunStore, StorageError
from userflow.storage.faults import crash_point

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the server stopped during this attempt"


@dataclass
class EngineParts:
    """What every actor of the engine shares."""

    store: RunStore
    index: RunIndex
    timers: TimerQueue
    workflows: Definitions
    services: Any = None
    loop: asyncio.AbstractEventLoop | None = None


def storable(*values: Any) -> None:
    """Refuse what cannot be stored as JSON: a bug that retrying cannot fix."""
    try:
        orjson.dumps(values)
    except TypeError as exc:
        raise PermanentError(f"the step produced a value that cannot be stored: {exc}") from None


def new_run(workflow: Workflow, run_id: str, input: dict[str, Any]) -> dict[str, Any]:
    """The snapshot of a run that has not started its first step."""
    at = iso_now()
    return {
        "id": run_id,
        "format": FORMAT,
        "workflow": workflow.name,
        "definition": workflow.version,
        "status": RunStatus.RUNNING,
        "cursor": 0,
        "input": input,
        "state": {},
        "steps": [
            {
                "id": step.id,
                "name": step.name,
                "kind": step.kind,
                "status": StepStatus.PENDING,
                "attempts": [],
                "output": None,
                "startedAt": None,
                "finishedAt": None,
                "retryAt": None,
            }
            for step in workflow.steps
        ],
        "signals": [],
        "timers": {},
        "outcome": None,
        "error": None,
        "createdAt": at,
        "updatedAt": at,
        "finishedAt": None,
        "seq": 0,
        "version": 0,
    }


class RunActor(DeadlinesMixin, CommandsMixin, pykka.ThreadingActor):
    use_daemon_thread = True  # a stuck step must not keep a stopping server alive

    def __init__(
        self,
        parts: EngineParts,
        supervisor: pykka.ActorRef[Any],
        run_id: str,
        created: dict[str, Any] | None = None,
        created_reply: Any = None,
    ) -> None:
        super().__init__()
        self._parts = parts
        self._supervisor = supervisor
        self._run_id = run_id
        self._created = created
        self._created_reply = created_reply
        self._run: dict[str, Any] = {}
        self._workflow: Workflow | None = None
        self._handle: RunHandle | None = None
        self._pending: list[dict[str, Any]] = []
        self._handled = 0
        self._advancing = False  # an Advance message is queued
        self._due = False  # the cursor should move once the current message is handled
        self._closing = False
        self._unsaved = False  # a completed step waiting for the next commit

    # -- life cycle -----------------------------------------------------------

    def on_start(self) -> None:
        try:
            self._handle = self._parts.store.open(self._run_id)
            if self._created is not None:
                self._run = self._created
                self._workflow = self._parts.workflows[self._run["workflow"]]
                self._log("run-started", f"run started ({self._workflow.name})")
                self._commit()
                resolve(self._created_reply, self._start_result(created=True))
            else:
                stored = self._handle.load()
                if stored is None:
                    raise StorageError(2, f"run {self._run_id} has no stored snapshot")
                self._run = stored.run
                self._workflow, moved_from = self._parts.workflows.migrate(self._run)
                self._mark_interrupted()
                if moved_from is not None:
                    self._log("migrated", f"moved from version {moved_from} of {self._workflow.name} to version {self._workflow.version}")
                    self._commit()
        except Exception as exc:  # noqa: BLE001 - reported, the supervisor decides
            log.error("run %s could not be activated: %s", self._run_id, describe(exc))
            reject(self._created_reply, exc)
            self._fail(describe(exc))
            return
        self._queue_advance()

    def on_receive(self, message: Any) -> Any:
        if self._closing:
            self._bounce(message)
            return None
        try:
            if isinstance(message, Advance):
                self._advancing = False
                self._due = True
            else:
                self._handled += 1
                if isinstance(message, Deliver):
                    self._deliver(message)
                elif isinstance(message, TimerFired):
                    self._timer(message)
                elif isinstance(message, Command):
                    self._command(message)
                elif isinstance(message, AwaitDurable):
                    resolve(message.reply, self._start_result(created=False))
                else:
                    log.warning("run %s: unexpected message %r", self._run_id, message)
            self._run_due()
        except StorageError as exc:
            # The snapshot in memory is now ahead of the disk: drop it, the
            # supervisor reactivates the run from what was really committed.
            log.error("run %s: persisting failed, will retry: %s", self._run_id, exc)
            self._fail(describe(exc))
            return None
        if not self._advancing and not self._due and not self._closing:
            self._tell_supervisor(Idle(self._run_id, self.actor_urn, self._handled))
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # An unexpected exception stopped the actor: on_stop will not run.
        self._fail(describe(exception_value) if exception_value else "actor failed")
        self._tell_supervisor(Stopped(self.actor_urn))

    def _fail(self, reason: str) -> None:
        self._closing = True
        self._tell_supervisor(ActorFailed(self._run_id, self.actor_urn, reason, self._run.get("version", 0) > 0))
        self._drain_inbox()
        self.stop()

    def on_stop(self) -> None:
        if self._unsaved and not self._closing:
            try:  # stopped between a completed step and its commit: keep the work
                self._commit()
            except Exception as exc:  # noqa: BLE001 - the step runs again at the next start
                log.error("run %s: last commit before stopping failed: %s", self._run_id, describe(exc))
        self._drain_inbox()
        self._tell_supervisor(Stopped(self.actor_urn))

    def _tell_supervisor(self, message: Any) -> None:
        try:
            self._supervisor.tell(message)
        except pykka.ActorDeadError:
            pass  # the supervisor has stopped (shutdown): nobody is left to tell

    def _drain_inbox(self) -> None:
        """Hand routed messages still queued here back to the supervisor."""
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            if isinstance(envelope.message, ROUTED):
                self._bounce(envelope.message)

    def _bounce(self, message: Any) -> None:
        if isinstance(message, ROUTED):
            self._tell_supervisor(Bounce(self._run_id, message))

    # -- the cursor -----------------------------------------------------------

    def _advance_soon(self) -> None:
        self._due = True

    def _queue_advance(self) -> None:
        if not self._advancing:
            self._advancing = True
            self.actor_ref.tell(Advance())

    def _run_due(self) -> None:
        """Move the cursor step after step in this message while nothing else is
        waiting; a waiting message (a signal, a command) goes first, and the
        cursor moves on in an ``Advance`` queued behind it."""
        while self._due and not self._closing:
            if not self.actor_inbox.empty():
                self._due = False
                self._queue_advance()
                return
            self._due = False
            self._advance()

    def _advance(self) -> None:
        run = self._run
        assert self._workflow is not None
        if run["status"] != RunStatus.RUNNING:
            return
        cursor = run["cursor"]
        if cursor >= len(self._workflow.steps):
            self._finish()
            return
        spec = self._workflow.steps[cursor]
        step = run["steps"][cursor]
        if isinstance(spec, Wait):
            self._wait(spec, step)
        else:
            self._attempt(spec, step)

    def _attempt(self, spec: Step, step: dict[str, Any]) -> None:
        run = self._run
        due = run["timers"].get(RETRY_TIMER)
        if due is not None:
            if due > now():
                self._set_timer(RETRY_TIMER, due)  # re-armed as it was
                return
            del run["timers"][RETRY_TIMER]
        number = len(step["attempts"]) + 1
        attempt: dict[str, Any] = {"number": number, "startedAt": iso_now(), "finishedAt": None, "error": None}
        step["attempts"].append(attempt)
        step["status"] = StepStatus.RUNNING
        step["startedAt"] = step["startedAt"] or attempt["startedAt"]
        step["retryAt"] = None
        self._log("attempt-started", f"{spec.name}: attempt {number} started", spec.id, number)
        self._commit()
        crash_point(spec.id, "before-run")

        context = self._context(spec, number)
        started = time.perf_counter()
        try:
            output = self._call(spec.run, context)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none escapes
            self._attempt_failed(spec, step, attempt, context, exc)
            return
        try:
            storable(output, context.state)
        except PermanentError as exc:
            self._attempt_failed(spec, step, attempt, context, exc)
            return
        crash_point(spec.id, "before-commit")
        elapsed = (time.perf_counter() - started) * 1000
        self._complete(spec, step, attempt, context, output, f"{spec.name} completed in {elapsed:.0f} ms")

    def _call(self, function: Any, context: StepContext) -> Any:
        result = function(context)
        if asyncio.iscoroutine(result):
            loop = self._parts.loop
            if loop is None:  # no shared loop (scripts, tests): a private one
                return asyncio.run(result)
            return asyncio.run_coroutine_threadsafe(result, loop).result()
        return result

    def _context(self, spec: Step | Wait | str, attempt: int) -> StepContext:
        run = self._run
        outputs = {step["id"]: step["output"] for step in run["steps"] if step["status"] == StepStatus.COMPLETED}
        return StepContext(
            run_id=self._run_id,
            step_id=spec if isinstance(spec, str) else spec.id,
            attempt=attempt,
            input=run["input"],
            state=run["state"],
            outputs=outputs,
            services=self._parts.services,
            checkpoint=self._checkpoint,
            signals=tuple(signal["name"] for signal in run["signals"]),
        )

    def _checkpoint(self, context: StepContext) -> None:
        self._run["state"] = copy.deepcopy(context.state)
        self._take_entries(context)
        self._commit()

    def _keep(self, context: StepContext) -> None:
        """The work in ``context`` succeeded: its state becomes the run's, its log entries
        and events join (the events in the same commit as the state they tell of)."""
        self._run["state"] = context.state
        self._take_entries(context)
        self._take_events(context)

    def _take_events(self, context: StepContext) -> None:
        if not context.events:
            return
        events = self._run.setdefault("events", [])
        for type, data in context.events:
            number = len(events) + 1
            events.append({"id": f"evt_{self._run_id.partition('_')[2]}_{number}", "type": type, "timestamp": iso_now(), "data": data})
        context.events.clear()

    def _set_timer(self, name: str, due: float) -> None:
        """Arm timer ``name``; it is kept in the snapshot, so it is durable with the next commit."""
        self._run["timers"][name] = due
        self._parts.timers.schedule(self._run_id, name, due)

    def _drop_timer(self, name: str) -> None:
        if self._run["timers"].pop(name, None) is not None:
            self._parts.timers.cancel(self._run_id, name)

    def _take_entries(self, context: StepContext) -> None:
        for entry in context.entries:
            self._log(entry["type"], entry["message"], context.step_id, context.attempt, at=entry["at"])
        context.entries.clear()

    def _complete(
        self,
        spec: Step,
        step: dict[str, Any],
        attempt: dict[str, Any],
        context: StepContext,
        output: Any,
        message: str,
    ) -> None:
        attempt["finishedAt"] = iso_now()
        step["status"] = StepStatus.COMPLETED
        step["output"] = output
        step["finishedAt"] = attempt["finishedAt"]
        self._keep(context)
        self._log("step-completed", message, spec.id, attempt["number"])
        self._run["cursor"] += 1
        self._commit_with_next()

    def _attempt_failed(
        self,
        spec: Step,
        step: dict[str, Any],
        attempt: dict[str, Any],
        context: StepContext,
        error: BaseException,
    ) -> None:
        run = self._run
        number = attempt["number"]
        attempt["finishedAt"] = iso_now()
        attempt["error"] = describe(error)
        self._take_entries(context)
        budget = step["attempts"][step.get("attemptBase", 0) :]
        failures = sum(1 for a in budget if a["error"] and not a.get("interrupted"))
        policy = spec.policy(self._parts.services)
        delay = policy.backoff(failures)
        elapsed = now() - epoch(budget[0]["startedAt"])
        if policy.should_retry(failures, error, elapsed, delay):
            due = now() + delay
            step["status"] = StepStatus.RETRYING
            step["retryAt"] = iso(due)
            self._set_timer(RETRY_TIMER, due)
            self._log(
                "attempt-failed",
                f"{spec.name}: attempt {number} failed ({attempt['error']}); retrying in {delay:.1f} s",
                spec.id,
                number,
            )
            self._commit()
            return
        why = "not retryable" if policy.is_permanent(error) else f"{failures} failed attempts in {elapsed:.0f} s"
        self._log("attempt-failed", f"{spec.name}: attempt {number} failed ({attempt['error']}); {why}", spec.id, number)
        if spec.fallback is not None:
            fallback_context = self._context(spec, number)
            try:
                output = spec.fallback(fallback_context, error)
            except Exception as exc:  # noqa: BLE001
                error = exc
                attempt["error"] = f"{attempt['error']}; fallback failed: {describe(exc)}"
            else:
                self._complete(spec, step, attempt, fallback_context, output, f"{spec.name} completed by its fallback")
                return
        step["status"] = StepStatus.FAILED
        step["finishedAt"] = attempt["finishedAt"]
        run["status"] = RunStatus.FAILED
        run["error"] = {"step": spec.id, "message": attempt["error"]}
        self._log("run-failed", f"run failed at {spec.name}: {attempt['error']}", spec.id, number)
        assert self._workflow is not None
        if self._workflow.on_failed is not None:
            context = self._context(spec, number)
            self._workflow.on_failed(context, attempt["error"])
            self._keep(context)
        self._commit()

    def _wait(self, spec: Wait, step: dict[str, Any]) -> None:
        run = self._run
        signal = next((s for s in run["signals"] if s["name"] == spec.signal), None)
        if step["status"] != StepStatus.WAITING:
            crash_point(spec.id, "before-run")
            step["status"] = StepStatus.WAITING
            step["startedAt"] = step["startedAt"] or iso_now()
            if signal is None:
                self._log("waiting", f"{spec.name}: waiting for signal {spec.signal}{self._arm_deadlines(spec, step)}", spec.id)
        if signal is None:
            run["status"] = RunStatus.WAITING
            self._commit()
            return
        self._drop_deadlines(spec)
        run["signals"].remove(signal)
        if spec.on_signal is not None:
            context = self._context(spec, 1)
            spec.on_signal(context, signal)
            self._keep(context)
        step["status"] = StepStatus.COMPLETED
        step["output"] = {"signal": signal["name"], "payload": signal["payload"], "receivedAt": signal["receivedAt"]}
        step["finishedAt"] = iso_now()
        self._log("step-completed", f"{spec.name}: signal {spec.signal} received", spec.id)
        run["cursor"] += 1
        crash_point(spec.id, "before-commit")
        self._commit_with_next()

    def _commit_with_next(self) -> None:
        """Let a completed step ride on the next commit (the next attempt's start, a
        wait, the end), which follows at once: one sync fewer per step. Nothing was
        promised on it; a crash in between runs the step again, as steps allow."""
        self._unsaved = True
        self._advance_soon()

    def _end(self, status: RunStatus, outcome: str, message: str) -> None:
        """Close the run early: pending timers dropped, unfinished steps SKIPPED."""
        run = self._run
        for name in list(run["timers"]):
            self._drop_timer(name)
        for step in run["steps"]:
            if step["status"] != StepStatus.COMPLETED:
                step["status"] = StepStatus.SKIPPED
                step["retryAt"] = None
        run["status"] = status
        run["outcome"] = outcome
        run["finishedAt"] = iso_now()
        self._log("run-completed" if status == RunStatus.COMPLETED else "run-cancelled", message)
        self._commit()

    def _finish(self) -> None:
        run = self._run
        run["status"] = RunStatus.COMPLETED
        run["outcome"] = run.get("outcome") or "completed"
        run["finishedAt"] = iso_now()
        self._log("run-completed", f"run completed ({run['outcome']})")
        self._commit()

    # -- messages from outside -------------------------------------------------

    def _deliver(self, message: Deliver) -> None:
        run = self._run
        assert self._workflow is not None
        spec = self._workflow.wait_for(message.signal)
        try:
            if spec is None:
                raise SignalRejected("unknown_signal", f"this workflow does not wait for {message.signal!r}")
            if self._has_signal(spec, message.payload):
                resolve(message.reply, Delivered(self._run_id, duplicate=True))
                return
            if run["status"] in FINISHED:
                raise SignalRejected("closed", f"the run has ended ({run.get('outcome') or run['status'].lower()})")
            spec.accept(run, message.payload)
        except SignalRejected as exc:
            reject(message.reply, exc)
            return
        run["signals"].append({"name": message.signal, "payload": message.payload, "receivedAt": iso_now()})
        self._log("signal-received", f"signal {message.signal} received", spec.id)
        resume = run["status"] == RunStatus.WAITING and self._at(spec)
        if resume:
            # The wait ends in the very commit that records the signal: once the answer
            # says so, no cancel, deadline or resend can come between them.
            run["status"] = RunStatus.RUNNING
            self._wait(spec, run["steps"][run["cursor"]])
        try:
            self._commit()
        except StorageError as exc:
            reject(message.reply, exc)
            raise
        crash_point("signal", "after-commit")  # durable, not yet answered
        resolve(message.reply, Delivered(self._run_id, duplicate=False))
        if resume:
            self._advance_soon()

    def _has_signal(self, spec: Wait, payload: Mapping[str, Any]) -> bool:
        run = self._run
        if any(s["name"] == spec.signal and s["payload"] == payload for s in run["signals"]):
            return True
        for step in run["steps"]:
            if step["id"] == spec.id and step["status"] == StepStatus.COMPLETED:
                return bool(step["output"] and step["output"].get("payload") == payload)
        return False

    def _at(self, spec: Wait) -> bool:
        cursor = self._run["cursor"]
        return cursor < len(self._run["steps"]) and self._run["steps"][cursor]["id"] == spec.id

    def _timer(self, message: TimerFired) -> None:
        if self._run["timers"].get(message.name) != message.due:
            return  # replaced or already handled: a stale wake-up
        if message.name == RETRY_TIMER:
            self._advance_soon()
            return
        assert self._workflow is not None
        found = self._workflow.deadline(message.name)
        if found is None:
            log.warning("run %s: timer %r belongs to no deadline; dropped", self._run_id, message.name)
            del self._run["timers"][message.name]
            self._commit()
            return
        self._deadline(*found)

    # -- recording --------------------------------------------------------------

    def _mark_interrupted(self) -> None:
        """An attempt left open by a crash is closed as interrupted and run again."""
        run = self._run
        cursor = run["cursor"]
        if cursor >= len(run["steps"]):
            return
        step = run["steps"][cursor]
        if step["status"] == StepStatus.RUNNING and step["attempts"] and not step["attempts"][-1]["finishedAt"]:
            attempt = step["attempts"][-1]
            attempt["finishedAt"] = iso_now()
            attempt["error"] = INTERRUPTED
            attempt["interrupted"] = True
            self._log("attempt-interrupted", f"{step['name']}: attempt {attempt['number']} was interrupted; running it again", step["id"], attempt["number"])

    def _log(self, type: str, message: str, step: str | None = None, attempt: int | None = None, at: str | None = None) -> None:
        self._run["seq"] += 1
        self._pending.append(
            {"seq": self._run["seq"], "at": at or iso_now(), "type": type, "step": step, "attempt": attempt, "message": message}
        )

    def _commit(self) -> None:
        self._unsaved = False
        run = self._run
        run["updatedAt"] = iso_now()
        run["version"] += 1
        entries, self._pending = self._pending, []
        assert self._handle is not None
        try:
            self._handle.commit(run, entries)
        except Exception:
            run["version"] -= 1
            raise
        self._parts.index.put(run, entries)

    def _start_result(self, created: bool) -> StartResult:
        summary = self._parts.index.get(self._run_id) or self._parts.index.summarise(self._run)
        return StartResult(self._run_id, created, summary)
