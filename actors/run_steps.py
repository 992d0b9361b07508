"""A run actor's step attempts: start one, run the step, record its outcome.

An attempt is committed as started before its step runs, and its outcome
after: a crash in between leaves an attempt the next activation marks
interrupted and runs again. A failure is retried after the policy's backoff
(a timer), or ends the run FAILED, unless the step has a fallback.
"""

from __future__ import annotations

import time
from typing import Any

from userflow.actors.retry import PermanentError, describe
from userflow.actors.run_control import RunControl
from userflow.actors.run_model import Attempt, StepRecord, storable
from userflow.actors.timeutil import epoch, iso, now
from userflow.actors.workflow import RETRY_TIMER, Step, StepContext
from userflow.storage import RunMoved
from userflow.storage.faults import crash_point


class Steps:
    """A run's step attempts."""

    def __init__(self, control: RunControl) -> None:
        self._control = control

    def attempt(self, spec: Step, step: StepRecord) -> None:
        control = self._control
        run = control.run
        due = run.timers.get(RETRY_TIMER)
        if due is not None:
            if due > now():
                control.set_timer(RETRY_TIMER, due)  # re-armed as it was
                return
            del run.timers[RETRY_TIMER]
        attempt = run.start_attempt(step)
        number = attempt["number"]
        run.log("attempt-started", f"{spec.name}: attempt {number} started", spec.id, number)
        control.commit()
        crash_point(spec.id, "before-run")

        context = control.context(spec, number)
        if not control.held():  # the lease lapsed while the attempt's start was written
            raise RunMoved(control.run_id, "may have been taken over: this node's lease lapsed")
        started = time.perf_counter()
        try:
            output = control.call(spec.run, context)
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

    def _complete(self, spec: Step, step: StepRecord, attempt: Attempt, context: StepContext, output: Any, message: str) -> None:
        control = self._control
        control.keep(context)
        control.run.complete(step, output, attempt)
        control.run.log("step-completed", message, spec.id, attempt["number"])
        control.commit_with_next()

    def _attempt_failed(self, spec: Step, step: StepRecord, attempt: Attempt, context: StepContext, error: BaseException) -> None:
        control = self._control
        run = control.run
        number = attempt["number"]
        run.fail_attempt(attempt, describe(error))
        control.take_entries(context)
        budget = run.budget(step)
        failures = sum(1 for a in budget if a["error"] and not a.get("interrupted"))
        policy = spec.policy(control.parts.services)
        delay = policy.backoff(failures)
        elapsed = now() - epoch(budget[0]["startedAt"])
        if policy.should_retry(failures, error, elapsed, delay):
            due = now() + delay
            run.retry_later(step, iso(due))
            control.set_timer(RETRY_TIMER, due)
            run.log("attempt-failed", f"{spec.name}: attempt {number} failed ({attempt['error']}); retrying in {delay:.1f} s", spec.id, number)
            control.commit()
            return
        why = "not retryable" if policy.is_permanent(error) else f"{failures} failed attempts in {elapsed:.0f} s"
        run.log("attempt-failed", f"{spec.name}: attempt {number} failed ({attempt['error']}); {why}", spec.id, number)
        if spec.fallback is not None:
            fallback_context = control.context(spec, number)
            try:
                output = spec.fallback(fallback_context, error)
            except Exception as exc:  # noqa: BLE001
                attempt["error"] = f"{attempt['error']}; fallback failed: {describe(exc)}"
            else:
                self._complete(spec, step, attempt, fallback_context, output, f"{spec.name} completed by its fallback")
                return
        message = attempt["error"] or describe(error)
        run.fail(step, message)
        run.log("run-failed", f"run failed at {spec.name}: {message}", spec.id, number)
        assert control.workflow is not None
        if control.workflow.on_failed is not None:
            context = control.context(spec, number)
            control.workflow.on_failed(context, message)
            control.keep(context)
        control.commit()
