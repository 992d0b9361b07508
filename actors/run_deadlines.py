"""A run actor's deadlines: the reminders and expiries of its waits.

A deadline is an absolute due time kept in the run's snapshot (``timers``)
and armed in the timer queue; it is set once per run when its wait first
starts, so neither a restart nor a rewind moves it.
"""

from __future__ import annotations

from typing import Any

from userflow.actors.retry import describe
from userflow.actors.run_model import Run, StepRecord
from userflow.actors.status import FINISHED, RunStatus, StepStatus
from userflow.actors.timeutil import iso, now
from userflow.actors.workflow import Deadline, Wait


class DeadlinesMixin:
    """Part of :class:`~userflow.actors.run_actor.RunActor`; uses its run and recording."""

    _run: Run
    _run_id: str
    _parts: Any

    def _arm_deadlines(self, spec: Wait, step: StepRecord) -> str:
        """Set the wait's deadlines once per run (a rewind does not move them)."""
        if step.get("deadlines") is not None:
            return ""
        started = now()
        step["deadlines"] = {}
        for deadline in spec.deadlines:
            after = deadline.after(self._parts.services)
            if after is None:
                continue
            due = started + after
            step["deadlines"][deadline.name] = iso(due)
            self._set_timer(deadline.name, due)
        return "".join(f"; {name} at {at}" for name, at in step["deadlines"].items())

    def _drop_deadlines(self, spec: Wait) -> None:
        for deadline in spec.deadlines:
            self._drop_timer(deadline.name)

    def _deadline(self, wait: Wait, deadline: Deadline) -> None:
        run = self._run
        del run.timers[deadline.name]
        step = run.step(wait.id)
        if run.status in FINISHED or step["status"] == StepStatus.COMPLETED:
            return
        if deadline.outcome is None and step["status"] != StepStatus.WAITING:
            run.log("deadline", f"{wait.name}: {deadline.name} skipped, the run is not waiting", wait.id)
            self._commit()
            return
        if deadline.outcome is None and any(
            d.outcome is not None and run.timers.get(d.name, float("inf")) <= now() for d in wait.deadlines
        ):
            # Both overdue (the server was down): a reminder for a link that ends now helps no one.
            run.log("deadline", f"{wait.name}: {deadline.name} skipped, a later deadline has passed too", wait.id)
            self._commit()
            return
        tries = step.setdefault("deadlineTries", {})
        number = tries[deadline.name] = tries.get(deadline.name, 0) + 1
        if deadline.action is not None:
            context = self._context(wait, number)
            try:
                self._call(deadline.action, context)
            except Exception as exc:  # noqa: BLE001 - recorded, retried or given up
                self._take_entries(context)
                if deadline.retry.should_retry(number, exc):
                    delay = deadline.retry.backoff(number)
                    self._set_timer(deadline.name, now() + delay)
                    run.log("deadline-failed", f"{deadline.name} failed ({describe(exc)}); retrying in {delay:.1f} s", wait.id, number)
                    self._commit()
                    return
                run.log("deadline-failed", f"{deadline.name} failed ({describe(exc)}); given up", wait.id, number)
                if deadline.outcome is None:
                    self._commit()
                    return
            else:
                self._keep(context)
        run.log("deadline", f"{wait.name}: {deadline.name} deadline reached", wait.id)
        if deadline.outcome is not None:
            self._drop_deadlines(wait)
            run.end_wait(step, deadline.name)
            self._end(RunStatus.COMPLETED, deadline.outcome, f"run completed ({deadline.outcome})")
            return
        self._commit()
