"""A run actor's deadlines: the reminders and expiries of its waits.

A deadline is an absolute due time kept in the run's snapshot (``timers``)
and armed in the timer queue; it is set once per run when its wait first
starts, so neither a restart nor a rewind moves it.
"""

from __future__ import annotations


from userflow.actors.retry import describe
from userflow.actors.run_model import StepRecord
from userflow.actors.status import FINISHED, RunStatus, StepStatus
from userflow.actors.timeutil import iso, now
from userflow.actors.workflow import Deadline, Wait
from userflow.actors.run_control import RunControl


class Deadlines:
    """The deadlines of a run's waits: set when a wait first starts, fired once each."""

    def __init__(self, control: RunControl) -> None:
        self._control = control

    def arm(self, spec: Wait, step: StepRecord) -> str:
        """Set the wait's deadlines once per run (a rewind does not move them)."""
        if step.get("deadlines") is not None:
            return ""
        started = now()
        step["deadlines"] = {}
        for deadline in spec.deadlines:
            after = deadline.after(self._control.parts.services)
            if after is None:
                continue
            due = started + after
            step["deadlines"][deadline.name] = iso(due)
            self._control.set_timer(deadline.name, due)
        return "".join(f"; {name} at {at}" for name, at in step["deadlines"].items())

    def drop(self, spec: Wait) -> None:
        for deadline in spec.deadlines:
            self._control.drop_timer(deadline.name)

    def reached(self, wait: Wait, deadline: Deadline) -> None:
        run = self._control.run
        due = run.timers.pop(deadline.name)
        step = run.step(wait.id)
        if run.status in FINISHED or step["status"] == StepStatus.COMPLETED:
            return
        if deadline.outcome is None and step["status"] != StepStatus.WAITING:
            run.log("deadline", f"{wait.name}: {deadline.name} skipped, the run is not waiting", wait.id)
            self._control.commit()
            return
        if deadline.outcome is None and any(
            d.outcome is not None and run.timers.get(d.name, float("inf")) <= now() for d in wait.deadlines
        ):
            # Both overdue (the server was down): a reminder for a link that ends now helps no one.
            run.log("deadline", f"{wait.name}: {deadline.name} skipped, a later deadline has passed too", wait.id)
            self._control.commit()
            return
        tries = step.setdefault("deadlineTries", {})
        number = tries[deadline.name] = tries.get(deadline.name, 0) + 1
        if deadline.action is not None:
            context = self._control.context(wait, number)
            # Armed in the snapshot while the action runs: an action cut off by a crash (a
            # reminder's send in flight, its intent already committed) runs again after the
            # restart, as an interrupted step does, instead of being lost with the process.
            run.timers[deadline.name] = due
            try:
                self._control.call(deadline.action, context)
            except Exception as exc:  # noqa: BLE001 - recorded, retried or given up
                del run.timers[deadline.name]
                self._control.take_entries(context)
                if deadline.retry.should_retry(number, exc):
                    delay = deadline.retry.backoff(number)
                    self._control.set_timer(deadline.name, now() + delay)
                    run.log("deadline-failed", f"{deadline.name} failed ({describe(exc)}); retrying in {delay:.1f} s", wait.id, number)
                    self._control.commit()
                    return
                run.log("deadline-failed", f"{deadline.name} failed ({describe(exc)}); given up", wait.id, number)
                if deadline.outcome is None:
                    self._control.commit()
                    return
            else:
                del run.timers[deadline.name]
                self._control.keep(context)
        run.log("deadline", f"{wait.name}: {deadline.name} deadline reached", wait.id)
        if deadline.outcome is not None:
            self.drop(wait)
            run.end_wait(step, deadline.name)
            self._control.end(RunStatus.COMPLETED, deadline.outcome, f"run completed ({deadline.outcome})")
            return
        self._control.commit()
