"""A run actor's operator commands: retry a failed run, cancel it, or run a
workflow action (which may rewind the run to an earlier step), or, for
retention, drop a finished run's step details. ``resume`` is
the retry a repeated start asks for: it retries a FAILED run and is a no-op
for any other (two such starts at once both succeed).

Commands arrive like every message, between two attempts, so they never
interrupt a step; each is committed before it is answered.
"""

from __future__ import annotations

from typing import Any

from userflow.actors.messages import Command, reject, resolve
from userflow.actors.status import FINISHED, RunStatus
from userflow.actors.workflow import RETRY_TIMER, ActionRejected
from userflow.storage import StorageError
from userflow.actors.run_control import RunControl

#: The command retention sends a finished run (actors/retention.py).
DROP_DETAILS = "drop-details"
#: The command that erases the person from a finished run (the workflow's ``erase`` hook).
ERASE = "erase"


class Commands:
    """A run's operator commands and workflow actions."""

    def __init__(self, control: RunControl) -> None:
        self._control = control

    def handle(self, message: Command) -> None:
        try:
            by = str(message.args.get("by") or "an operator")
            if message.name == "retry":
                self._retry_failed(by)
            elif message.name == "resume":
                if self._control.run.status == RunStatus.FAILED:
                    self._retry_failed(by)
            elif message.name == "cancel":
                self._cancel(by)
            elif message.name == DROP_DETAILS:
                self._drop_details(str(message.args.get("why") or "retention"))
            elif message.name == ERASE:
                self._erase(by)
            else:
                self._action(message.name, message.args)
        except ActionRejected as exc:
            reject(message.reply, exc)
            return
        except StorageError as exc:
            reject(message.reply, exc)
            raise
        resolve(message.reply, self._control.start_result(created=False))

    def _retry_failed(self, by: str) -> None:
        if self._control.run.status != RunStatus.FAILED:
            raise ActionRejected("conflict", f"only a FAILED run can be retried; this one is {self._control.run.status}")
        step = self._control.run.retry()
        self._control.run.log("operator-retry", f"retry requested by {by}: {step['name']} runs again with a fresh attempt budget", step["id"])
        self._control.commit()
        self._control.advance_soon()

    def _drop_details(self, why: str) -> None:
        run = self._control.run
        if run.status not in FINISHED or run.document.get("detailsDropped"):
            raise ActionRejected("conflict", f"only a finished run's details can be dropped, once; this one is {run.status}")
        run.drop_details(why)
        self._control.commit()

    def _erase(self, by: str) -> None:
        run, workflow = self._control.run, self._control.workflow
        assert workflow is not None
        if workflow.erase is None:
            raise ActionRejected("conflict", "this workflow keeps no personal data to erase")
        if run.status not in FINISHED or run.document.get("erasedAt"):
            raise ActionRejected("conflict", f"only a finished run can be erased, once; this one is {run.status}")
        context = self._control.context("erase", 1)
        input = workflow.erase(context)
        run.erase(input, by)
        self._control.keep(context)
        self._control.commit()

    def _cancel(self, by: str) -> None:
        if self._control.run.status not in (RunStatus.RUNNING, RunStatus.WAITING):
            raise ActionRejected("conflict", f"only a RUNNING or WAITING run can be cancelled; this one is {self._control.run.status}")
        assert self._control.workflow is not None
        if self._control.workflow.on_cancel is not None:
            context = self._control.context("cancel", 1)
            self._control.workflow.on_cancel(context)
            self._control.keep(context)
        self._control.end(RunStatus.CANCELLED, "cancelled", f"run cancelled by {by}")

    def _action(self, name: str, args: dict[str, Any]) -> None:
        assert self._control.workflow is not None
        spec = self._control.workflow.action(name)
        if spec is None:
            raise ActionRejected("unknown_action", f"this workflow has no action {name!r}")
        if self._control.run.status in FINISHED:
            raise ActionRejected("conflict", f"this run is {self._control.run.status}")
        context = self._control.context(name, 1)
        context.args = args
        self._control.call(spec.run, context)
        self._control.keep(context)
        if context.rewind is not None:
            self._rewind(context.rewind)
        self._control.commit()
        if context.rewind is not None:
            self._control.advance_soon()

    def _rewind(self, step_id: str) -> None:
        self._control.drop_timer(RETRY_TIMER)
        self._control.run.rewind(step_id)
        self._control.run.log("rewound", f"running again from {self._control.run.step(step_id)['name']}", step_id)
