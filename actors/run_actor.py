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

What each move does to the run is ``run_model``'s; deadlines of waits live in
``run_deadlines``, signals and timers from outside in ``run_signals``,
operator commands in ``run_commands``, step attempts in ``run_steps``; this
module holds the life cycle, the mailbox, the cursor loop and the commit.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import pykka

from userflow.actors.messages import (
    ROUTED,
    ActorFailed,
    Advance,
    AwaitDurable,
    Bounce,
    Command,
    Deliver,
    Idle,
    StartResult,
    Stopped,
    TimerFired,
    reject,
    resolve,
)
from userflow.actors.retry import describe
from userflow.actors.parts import EngineParts
from userflow.actors.run_model import INTERRUPTED, Run, StepRecord
from userflow.actors.status import RunStatus, StepStatus
from userflow.actors.run_commands import Commands
from userflow.actors.run_deadlines import Deadlines
from userflow.actors.run_signals import Signals
from userflow.actors.run_steps import Steps
from userflow.actors.workflow import RETRY_TIMER, Step, StepContext, Wait, Workflow
from userflow.storage import RunHandle, RunMoved, StorageError
from userflow.storage.faults import crash_point

log = logging.getLogger(__name__)

__all__ = ["INTERRUPTED", "RETRY_TIMER", "RunActor"]


class RunActor(pykka.ThreadingActor):
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
        self.parts = parts
        self._supervisor = supervisor
        self.run_id = run_id
        self._created = created
        self._created_reply = created_reply
        self.run = Run({"id": run_id, "status": None, "cursor": 0, "steps": [], "seq": 0, "version": 0})
        self.workflow: Workflow | None = None
        self._handle: RunHandle | None = None
        self._handled = 0
        self._advancing = False  # an Advance message is queued
        self._due = False  # the cursor should move once the current message is handled
        self._closing = False
        self._unsaved = False  # a completed step waiting for the next commit
        self._missing = False  # activated for a run the store does not have
        self._deadlines = Deadlines(self)
        self._signals = Signals(self, self._deadlines)
        self._commands = Commands(self)
        self._steps = Steps(self)

    # -- life cycle -----------------------------------------------------------

    def on_start(self) -> None:
        try:
            self._handle = self.parts.store.open(self.run_id)
            if self._created is not None:
                self.run = Run(self._created, self.parts.node_id)
                self.workflow = self.parts.workflows[self._created["workflow"]]
                self.run.log("run-started", f"run started ({self.workflow.name})")
                self.commit()
                resolve(self._created_reply, self.start_result(created=True))
            else:
                stored = self._handle.load()
                if stored is None:
                    self._missing = True
                    raise StorageError(2, f"run {self.run_id} has no stored snapshot")
                self.run = Run(stored.run, self.parts.node_id)
                self.workflow, moved_from = self.parts.workflows.migrate(stored.run)
                attempt = self.run.interrupt()
                if attempt is not None:
                    step = self.run.current()
                    assert step is not None
                    self.run.log("attempt-interrupted", f"{step['name']}: attempt {attempt['number']} was interrupted; running it again", step["id"], attempt["number"])
                if moved_from is not None:
                    self.run.log("migrated", f"moved from version {moved_from} of {self.workflow.name} to version {self.workflow.version}")
                    self.commit()
        except RunMoved as exc:
            log.debug("run %s: %s", self.run_id, exc.strerror)
            reject(self._created_reply, exc)
            self._fail(str(exc.strerror), moved=True)
            return
        except Exception as exc:  # noqa: BLE001 - reported, the supervisor decides
            log.error("run %s could not be activated: %s", self.run_id, describe(exc))
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
                    self._signals.deliver(message)
                elif isinstance(message, TimerFired):
                    self._signals.timer(message)
                elif isinstance(message, Command):
                    self._commands.handle(message)
                elif isinstance(message, AwaitDurable):
                    resolve(message.reply, self.start_result(created=False))
                else:
                    log.warning("run %s: unexpected message %r", self.run_id, message)
            self._run_due()
        except RunMoved as exc:
            log.warning("run %s: %s; this node stops executing it", self.run_id, exc.strerror)
            self._fail(str(exc.strerror), moved=True)
            return None
        except StorageError as exc:
            # The snapshot in memory is now ahead of the disk: drop it, the
            # supervisor reactivates the run from what was really committed.
            log.error("run %s: persisting failed, will retry: %s", self.run_id, exc)
            self._fail(describe(exc))
            return None
        if not self._advancing and not self._due and not self._closing:
            self._tell_supervisor(Idle(self.run_id, self.actor_urn, self._handled))
        return None

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # An unexpected exception stopped the actor: on_stop will not run.
        self._fail(describe(exception_value) if exception_value else "actor failed")
        self._tell_supervisor(Stopped(self.actor_urn))

    def _fail(self, reason: str, moved: bool = False) -> None:
        self._closing = True
        # A stored run stays known when it could not be read (the store is away): it is
        # activated again later. Only a run never committed, or not stored at all, is forgotten.
        stored = self.run.document.get("version", 0) > 0 or (self._created is None and not self._missing)
        self._tell_supervisor(ActorFailed(self.run_id, self.actor_urn, reason, stored, moved))
        self._drain_inbox()
        self.stop()

    def on_stop(self) -> None:
        if self._unsaved and not self._closing:
            try:  # stopped between a completed step and its commit: keep the work
                self.commit()
            except Exception as exc:  # noqa: BLE001 - the step runs again at the next start
                log.error("run %s: last commit before stopping failed: %s", self.run_id, describe(exc))
        if self._handle is not None:
            self._handle.release()
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
            self._tell_supervisor(Bounce(self.run_id, message))

    # -- the cursor -----------------------------------------------------------

    def advance_soon(self) -> None:
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
        run = self.run
        assert self.workflow is not None
        if run.status != RunStatus.RUNNING:
            return
        step = run.current()
        if step is None:
            run.finish()
            run.log("run-completed", f"run completed ({run.document['outcome']})")
            self.commit()
            return
        spec = self.workflow.steps[run.cursor]
        if isinstance(spec, Wait):
            self.wait(spec, step)
        else:
            self._steps.attempt(spec, step)

    def call(self, function: Any, context: StepContext) -> Any:
        result = function(context)
        if asyncio.iscoroutine(result):
            loop = self.parts.loop
            if loop is None:  # no shared loop (scripts, tests): a private one
                return asyncio.run(result)
            return asyncio.run_coroutine_threadsafe(result, loop).result()
        return result

    def context(self, spec: Step | Wait | str, attempt: int) -> StepContext:
        run = self.run
        return StepContext(
            run_id=self.run_id,
            step_id=spec if isinstance(spec, str) else spec.id,
            attempt=attempt,
            input=run.document["input"],
            state=run.document["state"],
            outputs=run.outputs(),
            services=self.parts.services,
            checkpoint=self._checkpoint,
            signals=tuple(signal["name"] for signal in run.document["signals"]),
        )

    def _checkpoint(self, context: StepContext) -> None:
        self.run.document["state"] = copy.deepcopy(context.state)
        self.take_entries(context)
        self.commit()

    def keep(self, context: StepContext) -> None:
        """The work in ``context`` succeeded: its state becomes the run's, its log entries
        and events join (the events in the same commit as the state they tell of)."""
        self.take_entries(context)
        self.run.keep(context.state, context.events)
        context.events.clear()

    def set_timer(self, name: str, due: float) -> None:
        """Arm timer ``name``; it is kept in the snapshot, so it is durable with the next commit."""
        self.run.timers[name] = due
        if not self.parts.shared:  # shared: the store is the schedule, every node's poller its clock
            self.parts.timers.schedule(self.run_id, name, due)

    def drop_timer(self, name: str) -> None:
        if self.run.timers.pop(name, None) is not None:
            self.parts.timers.cancel(self.run_id, name)

    def take_entries(self, context: StepContext) -> None:
        for entry in context.entries:
            self.run.log(entry["type"], entry["message"], context.step_id, context.attempt, at=entry["at"])
        context.entries.clear()

    def wait(self, spec: Wait, step: StepRecord) -> None:
        run = self.run
        signal = run.signal(spec.signal)
        if step["status"] != StepStatus.WAITING:
            crash_point(spec.id, "before-run")
            run.start_waiting(step)
            if signal is None:
                run.log("waiting", f"{spec.name}: waiting for signal {spec.signal}{self._deadlines.arm(spec, step)}", spec.id)
        if signal is None:
            run.park()
            self.commit()
            return
        self._deadlines.drop(spec)
        if spec.on_signal is not None:
            context = self.context(spec, 1)
            spec.on_signal(context, signal)
            self.keep(context)
        run.consume(step, signal)
        run.log("step-completed", f"{spec.name}: signal {spec.signal} received", spec.id)
        crash_point(spec.id, "before-commit")
        self.commit_with_next()

    def held(self) -> bool:
        assert self._handle is not None
        return self._handle.held()

    def commit_with_next(self) -> None:
        """Let a completed step ride on the next commit (the next attempt's start, a
        wait, the end), which follows at once: one sync fewer per step. Nothing was
        promised on it; a crash in between runs the step again, as steps allow."""
        self._unsaved = True
        self.advance_soon()

    def end(self, status: RunStatus, outcome: str, message: str) -> None:
        """Close the run early: pending timers dropped, unfinished steps SKIPPED."""
        for name in list(self.run.timers):
            self.drop_timer(name)
        self.run.end(status, outcome)
        self.run.log("run-completed" if status == RunStatus.COMPLETED else "run-cancelled", message)
        self.commit()

    # -- the commit ---------------------------------------------------------------

    def commit(self) -> None:
        self._unsaved = False
        entries = self.run.stamp()
        assert self._handle is not None
        try:
            self._handle.commit(self.run.document, entries)
        except Exception:
            self.run.unstamp(entries)
            raise
        self.parts.index.put(self.run.document, entries)

    def start_result(self, created: bool) -> StartResult:
        summary = self.parts.index.get(self.run_id) or self.parts.index.summarise(self.run.document)
        return StartResult(self.run_id, created, summary)
