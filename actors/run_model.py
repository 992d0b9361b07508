"""The life of a run: its record, and every move it can make.

A run is stored as one JSON document (``Run.document``, the shape below) and
changed only through the methods of :class:`Run`, each one transition that
changes one place and refuses a move the run's state does not allow
(:class:`IllegalMove`). The run actor decides *when* to move (its mailbox,
its cursor loop, its commits); this module says *what* a move is.

    run      id, format, workflow, definition, status, cursor, input, state, steps,
             signals, timers, events, outcome, error, createdAt, updatedAt,
             finishedAt, seq (last timeline entry), version (last commit);
             detailsDropped and timelineFrom (the first entry kept) once
             retention dropped its details; node (the node executing it, or
             that did last)
    step     id, name, kind, status, attempts, output, startedAt, finishedAt,
             retryAt; attemptBase (attempts before a retry or rewind, not
             counted against the policy), deadlines and deadlineTries (waits)
    attempt  number, startedAt, finishedAt, error; interrupted (a crash cut it off);
             node (the node that ran it)
    entry    seq, at, type, step, attempt, message; node (where it happened)
    signal   name, payload, receivedAt
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import orjson

from userflow.actors.retry import PermanentError
from userflow.actors.status import FINISHED, RunStatus, StepStatus
from userflow.actors.timeutil import iso_now

#: The layout of a stored run document; raised when it changes, read by migrations of it.
FORMAT = 1
INTERRUPTED = "interrupted: the server stopped during this attempt"


class Attempt(TypedDict):
    number: int
    startedAt: str
    finishedAt: str | None
    error: str | None
    interrupted: NotRequired[bool]
    node: NotRequired[str]


class StepRecord(TypedDict):
    id: str
    name: str
    kind: str
    status: str
    attempts: list[Attempt]
    output: Any
    startedAt: str | None
    finishedAt: str | None
    retryAt: str | None
    attemptBase: NotRequired[int]
    deadlines: NotRequired[dict[str, str] | None]
    deadlineTries: NotRequired[dict[str, int]]


class Signal(TypedDict):
    name: str
    payload: dict[str, Any]
    receivedAt: str


def new_run(workflow: Any, run_id: str, input: dict[str, Any]) -> dict[str, Any]:
    """The document of a run that has not started its first step."""
    return Run.new(run_id, workflow, input).document


def storable(*values: Any) -> None:
    """Refuse what cannot be stored as JSON: a bug that retrying cannot fix."""
    try:
        orjson.dumps(values)
    except TypeError as exc:
        raise PermanentError(f"the step produced a value that cannot be stored: {exc}") from None


class IllegalMove(RuntimeError):
    """A transition the run's state does not allow: a bug in whoever asked for it."""


class Run:
    """One run's document and its pending timeline entries (written with the next commit)."""

    def __init__(self, document: dict[str, Any], node: str = "") -> None:
        self.document = document
        self.entries: list[dict[str, Any]] = []
        self.node = node  # the node executing the run: named in its attempts and entries
        if node:
            document["node"] = node

    @classmethod
    def new(cls, run_id: str, workflow: Any, input: dict[str, Any]) -> Run:
        """A run that has not started its first step (``workflow`` is a Workflow)."""
        at = iso_now()
        steps = [
            StepRecord(id=s.id, name=s.name, kind=s.kind, status=StepStatus.PENDING, attempts=[], output=None, startedAt=None, finishedAt=None, retryAt=None)
            for s in workflow.steps
        ]
        return cls(
            {
                "id": run_id, "format": FORMAT, "workflow": workflow.name, "definition": workflow.version,
                "status": RunStatus.RUNNING, "cursor": 0, "input": input, "state": {}, "steps": steps,
                "signals": [], "timers": {}, "outcome": None, "error": None,
                "createdAt": at, "updatedAt": at, "finishedAt": None, "seq": 0, "version": 0,
            }
        )  # fmt: skip

    # -- reading -----------------------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self.document["id"])

    @property
    def status(self) -> str:
        return str(self.document["status"])

    @property
    def cursor(self) -> int:
        return int(self.document["cursor"])

    @property
    def steps(self) -> list[StepRecord]:
        return self.document["steps"]

    @property
    def timers(self) -> dict[str, float]:
        return self.document["timers"]

    def current(self) -> StepRecord | None:
        """The step at the cursor; None once past the last one."""
        return self.steps[self.cursor] if self.cursor < len(self.steps) else None

    def step(self, step_id: str) -> StepRecord:
        return next(s for s in self.steps if s["id"] == step_id)

    def outputs(self) -> dict[str, Any]:
        return {s["id"]: s["output"] for s in self.steps if s["status"] == StepStatus.COMPLETED}

    def signal(self, name: str) -> Signal | None:
        return next((s for s in self.document["signals"] if s["name"] == name), None)

    def budget(self, step: StepRecord) -> list[Attempt]:
        """The attempts that count against the step's retry policy."""
        return step["attempts"][step.get("attemptBase", 0) :]

    # -- the timeline ------------------------------------------------------------------

    def log(self, type: str, message: str, step: str | None = None, attempt: int | None = None, at: str | None = None) -> None:
        self.document["seq"] += 1
        entry = {"seq": self.document["seq"], "at": at or iso_now(), "type": type, "step": step, "attempt": attempt, "message": message}
        if self.node:
            entry["node"] = self.node
        self.entries.append(entry)

    # -- running steps ------------------------------------------------------------------

    def start_attempt(self, step: StepRecord) -> Attempt:
        self._require(self.status == RunStatus.RUNNING and step is self.current(), f"start an attempt of {step['id']}")
        attempt = Attempt(number=len(step["attempts"]) + 1, startedAt=iso_now(), finishedAt=None, error=None)
        if self.node:
            attempt["node"] = self.node
        step["attempts"].append(attempt)
        step["status"] = StepStatus.RUNNING
        step["startedAt"] = step["startedAt"] or attempt["startedAt"]
        step["retryAt"] = None
        return attempt

    def complete(self, step: StepRecord, output: Any, attempt: Attempt | None = None) -> None:
        """The step at the cursor is done; the cursor moves on."""
        self._require(step is self.current() and step["status"] != StepStatus.COMPLETED, f"complete {step['id']}")
        at = iso_now()
        if attempt is not None:
            attempt["finishedAt"] = at
        step["status"] = StepStatus.COMPLETED
        step["output"] = output
        step["finishedAt"] = at
        self.document["cursor"] += 1

    def fail_attempt(self, attempt: Attempt, error: str) -> None:
        attempt["finishedAt"] = iso_now()
        attempt["error"] = error

    def retry_later(self, step: StepRecord, due_iso: str) -> None:
        step["status"] = StepStatus.RETRYING
        step["retryAt"] = due_iso

    def fail(self, step: StepRecord, error: str) -> None:
        """The step gave up: the run is FAILED there, until retried."""
        step["status"] = StepStatus.FAILED
        step["finishedAt"] = step["attempts"][-1]["finishedAt"] if step["attempts"] else iso_now()
        self.document["status"] = RunStatus.FAILED
        self.document["error"] = {"step": step["id"], "message": error}

    def interrupt(self) -> Attempt | None:
        """Close an attempt a crash left open; it runs again."""
        step = self.current()
        if step is None or step["status"] != StepStatus.RUNNING or not step["attempts"] or step["attempts"][-1]["finishedAt"]:
            return None
        attempt = step["attempts"][-1]
        attempt["finishedAt"] = iso_now()
        attempt["error"] = INTERRUPTED
        attempt["interrupted"] = True
        return attempt

    # -- waiting for signals ------------------------------------------------------------

    def start_waiting(self, step: StepRecord) -> None:
        self._require(step is self.current() and step["kind"] == "wait", f"wait at {step['id']}")
        step["status"] = StepStatus.WAITING
        step["startedAt"] = step["startedAt"] or iso_now()

    def park(self) -> None:
        """Nothing to do until a signal or a timer: the run holds no thread meanwhile."""
        self._require(self.status == RunStatus.RUNNING, "park")
        self.document["status"] = RunStatus.WAITING

    def record_signal(self, name: str, payload: dict[str, Any]) -> Signal:
        self._require(self.status not in FINISHED, f"record signal {name}")
        signal = Signal(name=name, payload=payload, receivedAt=iso_now())
        self.document["signals"].append(signal)
        return signal

    def wake(self) -> None:
        self._require(self.status == RunStatus.WAITING, "wake")
        self.document["status"] = RunStatus.RUNNING

    def consume(self, step: StepRecord, signal: Signal) -> None:
        """The wait at the cursor ends by its signal."""
        self.document["signals"].remove(signal)
        self.complete(step, {"signal": signal["name"], "payload": signal["payload"], "receivedAt": signal["receivedAt"]})

    def end_wait(self, step: StepRecord, deadline: str) -> None:
        """The wait at the cursor ends by a deadline."""
        at = iso_now()
        step["status"] = StepStatus.COMPLETED
        step["output"] = {"deadline": deadline, "at": at}
        step["finishedAt"] = at

    # -- ending, retrying, rewinding ------------------------------------------------------

    def finish(self) -> None:
        self.document["status"] = RunStatus.COMPLETED
        self.document["outcome"] = self.document.get("outcome") or "completed"
        self.document["finishedAt"] = iso_now()

    def end(self, status: RunStatus, outcome: str) -> None:
        """Close the run early: unfinished steps SKIPPED (timers are the caller's to drop)."""
        self._require(self.status not in FINISHED, f"end as {status}")
        for step in self.steps:
            if step["status"] != StepStatus.COMPLETED:
                step["status"] = StepStatus.SKIPPED
                step["retryAt"] = None
        self.document.update(status=status, outcome=outcome, finishedAt=iso_now())

    def drop_details(self, why: str) -> None:
        """Retention: a finished run keeps what it decided (its state, the user's record,
        each step's status and times, how a wait ended) and drops how (attempts, the
        steps' outputs, the timeline but the one entry saying so). ``timelineFrom``
        tells the store which entries go."""
        self._require(self.status in FINISHED and not self.document.get("detailsDropped"), "drop its details")
        self._strip()
        self.document["detailsDropped"] = iso_now()
        self.log("details-dropped", f"step details and timeline dropped: {why}")
        self.document["timelineFrom"] = self.document["seq"]

    def erase(self, input: dict[str, Any], by: str) -> None:
        """Erasure: a finished run loses how it went, as with retention, and the data its
        events told; ``input`` (the workflow's, without the person) replaces its input.
        The workflow's hook has removed the person from its state."""
        self._require(self.status in FINISHED and not self.document.get("erasedAt"), "be erased")
        self._strip()
        for event in self.document.get("events", ()):
            event["data"] = {}
        at = iso_now()
        self.document["input"] = input
        self.document["detailsDropped"] = self.document.get("detailsDropped") or at
        self.document["erasedAt"] = at
        self.log("erased", f"personal data erased at the request of {by}")
        self.document["timelineFrom"] = self.document["seq"]

    def _strip(self) -> None:
        """Each step's attempts and outputs, and the signals, go; how a wait ended stays."""
        for step in self.steps:
            step["attempts"] = []
            step["attemptBase"] = 0
            ended = step["output"] if step["kind"] == "wait" and isinstance(step["output"], dict) else None
            step["output"] = ended and {key: value for key, value in ended.items() if key != "payload"}
            step.pop("deadlines", None)
            step.pop("deadlineTries", None)
        self.document["signals"] = []

    def retry(self) -> StepRecord:
        """A FAILED run runs its failed step again, with a fresh attempt budget."""
        self._require(self.status == RunStatus.FAILED, "retry")
        step = self.steps[self.cursor]
        self.reset(step)
        self.document.update(status=RunStatus.RUNNING, error=None)
        return step

    def rewind(self, step_id: str) -> None:
        index = next(i for i, s in enumerate(self.steps) if s["id"] == step_id)
        self._require(index <= self.cursor, f"rewind forward to {step_id}")
        for step in self.steps[index : self.cursor + 1]:
            self.reset(step)
        self.document.update(cursor=index, status=RunStatus.RUNNING, error=None)

    @staticmethod
    def reset(step: StepRecord) -> None:
        step["status"] = StepStatus.PENDING
        step["attemptBase"] = len(step["attempts"])
        step["output"] = None
        step["startedAt"] = None  # its duration is the new run's of it, not since the first
        step["finishedAt"] = None
        step["retryAt"] = None

    # -- what a step produced, and the commit --------------------------------------------

    def keep(self, state: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> None:
        """A step's work succeeded: its state becomes the run's, its events join it."""
        self.document["state"] = state
        if events:
            recorded = self.document.setdefault("events", [])
            for type, data in events:
                number = len(recorded) + 1
                recorded.append({"id": f"evt_{self.id.partition('_')[2]}_{number}", "type": type, "timestamp": iso_now(), "data": data})

    def stamp(self) -> list[dict[str, Any]]:
        """Ready the document for a commit; the timeline entries it carries."""
        self.document["updatedAt"] = iso_now()
        self.document["version"] += 1
        entries, self.entries = self.entries, []
        return entries

    def unstamp(self, entries: list[dict[str, Any]]) -> None:
        """The commit failed: as it was before ``stamp``."""
        self.document["version"] -= 1
        self.entries = entries + self.entries

    def _require(self, allowed: bool, move: str) -> None:
        if not allowed:
            raise IllegalMove(f"run {self.id} ({self.status}, cursor {self.cursor}) cannot {move}")
