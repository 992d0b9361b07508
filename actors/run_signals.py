"""A run actor's messages from outside: a signal for one of its waits, a timer due.

A signal that reaches its waiting run ends the wait in the very commit that
records it, so the answer the caller gets ("verified") can never be
contradicted by a cancel, a deadline or a resend handled after it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from userflow.actors.messages import Deliver, Delivered, TimerFired, reject, resolve
from userflow.actors.status import FINISHED, RunStatus, StepStatus
from userflow.actors.workflow import RETRY_TIMER, SignalRejected, Wait
from userflow.storage import StorageError
from userflow.storage.faults import crash_point
from userflow.actors.run_control import RunControl
from userflow.actors.run_deadlines import Deadlines

log = logging.getLogger(__name__)


class Signals:
    """A run's signals and timers."""

    def __init__(self, control: RunControl, deadlines: Deadlines) -> None:
        self._control = control
        self._deadlines = deadlines

    def deliver(self, message: Deliver) -> None:
        run = self._control.run
        assert self._control.workflow is not None
        spec = self._control.workflow.wait_for(message.signal)
        try:
            if spec is None:
                raise SignalRejected("unknown_signal", f"this workflow does not wait for {message.signal!r}")
            if self._has_signal(spec, message.payload):
                resolve(message.reply, Delivered(self._control.run_id, duplicate=True))
                return
            if run.status in FINISHED:
                raise SignalRejected("closed", f"the run has ended ({run.document.get('outcome') or run.status.lower()})")
            spec.accept(run.document, message.payload)
        except SignalRejected as exc:
            reject(message.reply, exc)
            return
        run.record_signal(message.signal, message.payload)
        run.log("signal-received", f"signal {message.signal} received", spec.id)
        step = run.current()
        resume = run.status == RunStatus.WAITING and step is not None and step["id"] == spec.id
        if resume:
            # The wait ends in the very commit that records the signal: once the answer
            # says so, no cancel, deadline or resend can come between them.
            assert step is not None
            run.wake()
            self._control.wait(spec, step)
        try:
            self._control.commit()
        except StorageError as exc:
            reject(message.reply, exc)
            raise
        crash_point("signal", "after-commit")  # durable, not yet answered
        resolve(message.reply, Delivered(self._control.run_id, duplicate=False))
        if resume:
            self._control.advance_soon()

    def _has_signal(self, spec: Wait, payload: Mapping[str, Any]) -> bool:
        run = self._control.run
        if any(s["name"] == spec.signal and s["payload"] == payload for s in run.document["signals"]):
            return True
        step = run.step(spec.id)
        return step["status"] == StepStatus.COMPLETED and bool(step["output"] and step["output"].get("payload") == payload)

    def timer(self, message: TimerFired) -> None:
        if self._control.run.timers.get(message.name) != message.due:
            return  # replaced or already handled: a stale wake-up
        if message.name == RETRY_TIMER:
            self._control.advance_soon()
            return
        assert self._control.workflow is not None
        found = self._control.workflow.deadline(message.name)
        if found is None:
            log.warning("run %s: timer %r belongs to no deadline; dropped", self._control.run_id, message.name)
            del self._control.run.timers[message.name]
            self._control.commit()
            return
        self._deadlines.reached(*found)
