"""What a run's handlers may ask of the actor executing the run.

The actor keeps the mailbox, the cursor loop and the commit; what arrives
from outside (signals and timers, operator commands, deadlines) is handled
by classes of their own, which reach the run only through this protocol:
the run itself, and the few moves that must go through the actor because
they touch its loop, its timers or the store.
"""

from __future__ import annotations

from typing import Any, Protocol

from userflow.actors.messages import StartResult
from userflow.actors.parts import EngineParts
from userflow.actors.run_model import Run, StepRecord
from userflow.actors.status import RunStatus
from userflow.actors.workflow import Step, StepContext, Wait, Workflow


class RunControl(Protocol):
    @property
    def run(self) -> Run: ...

    @property
    def run_id(self) -> str: ...

    @property
    def parts(self) -> EngineParts: ...

    @property
    def workflow(self) -> Workflow | None: ...

    def commit(self) -> None:
        """Store the run as it is now (raises StorageError; the actor then restarts from the store)."""
        ...

    def advance_soon(self) -> None:
        """Move the cursor once the current message is handled."""
        ...

    def context(self, spec: Step | Wait | str, attempt: int) -> StepContext: ...

    def call(self, function: Any, context: StepContext) -> Any:
        """Run workflow code (a step, an action, a deadline's action) with its context."""
        ...

    def keep(self, context: StepContext) -> None:
        """Take what the code recorded (timeline entries, events, state) into the run."""
        ...

    def take_entries(self, context: StepContext) -> None:
        """Take only the timeline entries (the code failed: its state is not kept)."""
        ...

    def held(self) -> bool:
        """Whether this node may still execute the run (a shared store's claim holds)."""
        ...

    def commit_with_next(self) -> None:
        """Let a completed step ride on the next commit, which follows at once."""
        ...

    def set_timer(self, name: str, due: float) -> None: ...

    def drop_timer(self, name: str) -> None: ...

    def wait(self, spec: Wait, step: StepRecord) -> None:
        """Start or resume the wait ``spec`` (a signal already there ends it)."""
        ...

    def end(self, status: RunStatus, outcome: str, message: str) -> None:
        """Close the run early and commit: timers dropped, unfinished steps SKIPPED."""
        ...

    def start_result(self, created: bool) -> StartResult: ...
