"""What a workflow is: an ordered list of steps, described as data.

The engine knows nothing about any particular workflow. A workflow is a
:class:`Workflow` holding :class:`Step` (run a function, with a retry policy)
and :class:`Wait` (park durably until a named signal arrives) items, plus a few
hooks that let the engine index and summarise its runs without understanding
them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from userflow.actors.retry import RetryPolicy
from userflow.actors.timeutil import iso_now


class ActionRejected(Exception):
    """An operator action that does not apply now: ``reason`` is ``conflict`` or ``rate_limited``."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class SignalRejected(Exception):
    """A signal the run refuses: ``reason`` is a short code such as ``expired``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class StepContext:
    """What a step function sees: its run, its attempt, and the run's state.

    ``state`` is a private copy: it becomes the run's state only if the step
    succeeds, so a failed attempt leaves nothing half-written. ``checkpoint()``
    makes the copy durable at once, for steps that must record an intent before
    an outside effect (an email's Message-ID before it is sent).
    """

    def __init__(
        self,
        *,
        run_id: str,
        step_id: str,
        attempt: int,
        input: Mapping[str, Any],
        state: dict[str, Any],
        outputs: Mapping[str, Any],
        services: Any,
        checkpoint: Callable[[StepContext], None],
        signals: tuple[str, ...] = (),
    ) -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.attempt = attempt
        self.input = input
        self.state = copy.deepcopy(state)
        self.outputs = outputs
        self.services = services
        self.signals = signals  # received, not yet consumed by their wait
        self.entries: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.args: Mapping[str, Any] = {}
        self.rewind: str | None = None
        self._checkpoint = checkpoint

    def log(self, message: str, type: str = "info") -> None:
        """Add a timeline entry, recorded with the step's next commit."""
        self.entries.append({"at": iso_now(), "type": type, "message": message})

    def emit(self, type: str, data: dict[str, Any]) -> None:
        """Tell the outside world (webhooks): recorded in the same commit as the step's
        success, so an event is never lost nor told of a change that did not happen."""
        self.events.append((type, data))

    def checkpoint(self) -> None:
        """Durably record the state and log entries so far, before going on."""
        self._checkpoint(self)

    def rewind_to(self, step_id: str) -> None:
        """(Actions only) run again from ``step_id``, with fresh attempt budgets."""
        self.rewind = step_id


StepFunction = Callable[[StepContext], Any]
Fallback = Callable[[StepContext, BaseException], Any]


@dataclass(frozen=True)
class Step:
    """Run ``run(context)``; its return value (JSON-able) is the step's output.

    ``run`` may be a plain or an ``async`` function. When retries are exhausted
    and ``fallback`` is set, the fallback's return value completes the step
    instead of failing the run. ``retry`` is a policy, or a function of the
    services that makes one (a policy set by the server's configuration).
    """

    id: str
    name: str
    run: StepFunction
    retry: RetryPolicy | Callable[[Any], RetryPolicy] = field(default_factory=RetryPolicy)
    fallback: Fallback | None = None
    kind: Literal["task"] = "task"

    def policy(self, services: Any) -> RetryPolicy:
        return self.retry if isinstance(self.retry, RetryPolicy) else self.retry(services)


#: The timer the engine itself uses for retry backoffs; deadlines take other names.
RETRY_TIMER = "retry"


@dataclass(frozen=True)
class Deadline:
    """What happens if a wait is still open ``after(services)`` seconds after it began.

    ``after`` returning None means no such deadline for this run. ``action``
    runs then, like a step (it may send an email); a failed action is retried
    by ``retry`` and then given up, with every try in the timeline. With
    ``outcome`` set the run ends there: COMPLETED with that outcome, the
    remaining steps SKIPPED. The due time is absolute and kept in the run's
    snapshot, so a restart does not move it.
    """

    name: str
    after: Callable[[Any], float | None]
    action: StepFunction | None = None
    outcome: str | None = None
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_attempts=3, initial_backoff=2.0))


SignalCheck = Callable[[Mapping[str, Any], Mapping[str, Any]], None]


def _accept_all(run: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class Wait:
    """Park the run until signal ``signal`` arrives; no thread is held meanwhile.

    ``accept(run, payload)`` vets a signal when it is delivered (raising
    :class:`SignalRejected`), which can be before the run reaches this wait: an
    accepted signal is recorded at once and consumed when the wait starts.
    ``on_signal(context, signal)`` runs as the wait ends by its signal (the
    signal's ``name``, ``payload`` and ``receivedAt``), in the same commit.
    """

    id: str
    name: str
    signal: str
    accept: SignalCheck = _accept_all
    deadlines: tuple[Deadline, ...] = ()
    on_signal: Callable[[StepContext, Mapping[str, Any]], None] | None = None
    kind: Literal["wait"] = "wait"


@dataclass(frozen=True)
class Action:
    """An operator action a workflow offers besides retry and cancel.

    ``run(context)`` executes inside the run's actor, between two attempts,
    with the run's state in ``context.state`` and the request's arguments in
    ``context.args``. It may raise :class:`ActionRejected`, and may call
    ``context.rewind_to(step_id)`` to run part of the workflow again.
    """

    name: str
    run: StepFunction


Duplicate = Literal["reuse", "resume", "conflict", "new"]


def _no_keys(run: Mapping[str, Any]) -> dict[str, list[str]]:
    return {}


def _no_summary(run: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _no_facets(run: Mapping[str, Any]) -> dict[str, str]:
    return {}


def _always_new(summary: Mapping[str, Any]) -> Duplicate:
    return "new"


@dataclass(frozen=True)
class Migration:
    """Moves a run stored under version ``from_version`` of a workflow to the version
    that ships it: ``run(document)`` changes the stored run in place (adds or removes
    step records, moves the cursor). Without one, a run keeps its own version."""

    from_version: int
    run: Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Workflow:
    """An ordered list of steps and the hooks the engine needs to serve its runs.

    - ``keys(run)``: lookup keys for a run, e.g. ``{"email": [...]}``, kept in
      the store's catalog;
    - ``summary(run)``: small extra fields for listings;
    - ``facets(run)``: values lists filter and count runs by, e.g. ``{"user": "ACTIVE"}``;
    - ``on_duplicate(summary)``: what a start with the same dedupe key does when
      a run already holds it: return that run (``reuse``), return it resumed
      from its failed step if it failed (``resume``), refuse (``conflict``), or
      start a new one (``new``);
    - ``actions``: operator actions beyond retry and cancel;
    - ``on_cancel(context)``: bring the workflow's state to an end when cancelled;
    - ``on_failed(context, error)``: the run has just FAILED (to emit an event);
    - ``erase(context)``: remove the person from a finished run's state, and return
      its input without them (the engine drops the rest: details, events' data);
    - ``version``: recorded by every run it starts; a release that adds, moves or
      removes a step ships a new version beside the old one (runs in flight keep
      theirs) or a ``Migration`` that moves them.
    """

    name: str
    steps: tuple[Step | Wait, ...]
    keys: Callable[[Mapping[str, Any]], dict[str, list[str]]] = _no_keys
    summary: Callable[[Mapping[str, Any]], dict[str, Any]] = _no_summary
    facets: Callable[[Mapping[str, Any]], dict[str, str]] = _no_facets
    on_duplicate: Callable[[Mapping[str, Any]], Duplicate] = _always_new
    actions: tuple[Action, ...] = ()
    on_cancel: StepFunction | None = None
    on_failed: Callable[[StepContext, str], None] | None = None
    erase: Callable[[StepContext], dict[str, Any]] | None = None
    version: int = 1
    migrations: tuple[Migration, ...] = ()

    def __post_init__(self) -> None:
        ids = [step.id for step in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError(f"workflow {self.name}: step ids must be unique")
        signals = [step.signal for step in self.steps if isinstance(step, Wait)]
        if len(set(signals)) != len(signals):
            raise ValueError(f"workflow {self.name}: one wait per signal")
        timers = [d.name for step in self.steps if isinstance(step, Wait) for d in step.deadlines]
        if len(set(timers)) != len(timers) or RETRY_TIMER in timers:
            raise ValueError(f"workflow {self.name}: deadline names must be unique and not {RETRY_TIMER!r}")

    def action(self, name: str) -> Action | None:
        return next((action for action in self.actions if action.name == name), None)

    def deadline(self, name: str) -> tuple[Wait, Deadline] | None:
        for step in self.steps:
            if isinstance(step, Wait):
                for deadline in step.deadlines:
                    if deadline.name == name:
                        return step, deadline
        return None

    def wait_for(self, signal: str) -> Wait | None:
        for step in self.steps:
            if isinstance(step, Wait) and step.signal == signal:
                return step
        return None
