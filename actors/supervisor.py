"""Supervisor: starts runs, routes messages to run actors, passivates them.

It is the only sender of messages to run actors, which is what makes
passivation safe: it counts what it routed to each live actor, and stops an
actor that reports ``Idle`` only when the actor has handled all of it. A
message for a run with no live actor activates one (from the run's snapshot)
and is handed over in order. Live actors are capped; runs beyond the cap wait
in an activation queue with their messages, holding no thread.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import pykka

from userflow.actors import recovery
from userflow.actors.messages import (
    ROUTED,
    ActorFailed,
    AwaitDurable,
    Bounce,
    Command,
    Idle,
    Recover,
    RunsClaimed,
    Shutdown,
    StartResult,
    Stopped,
    StartRun,
    TimerFired,
    reject,
    resolve,
)
from userflow.actors.parts import EngineParts
from userflow.actors.run_actor import RunActor
from userflow.actors.run_model import new_run
from userflow.actors.timeutil import now

log = logging.getLogger(__name__)

ACTIVATE_TIMER = "activate"


class DuplicateRun(Exception):
    """The dedupe key belongs to a run that forbids a new one."""

    def __init__(self, run_id: str, summary: dict[str, Any]) -> None:
        super().__init__(f"run {run_id} already holds this key")
        self.run_id = run_id
        self.summary = summary


class ShuttingDown(Exception):
    """The server is stopping and accepts no new work."""


def new_run_id() -> str:
    """Ids sort by creation time (milliseconds), then by 40 random bits."""
    return f"wf_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(5)}"


@dataclass
class _Live:
    ref: pykka.ActorRef[Any]
    urn: str
    routed: int = 0


@dataclass
class _Queued:
    messages: list[Any] = field(default_factory=list)
    created: dict[str, Any] | None = None
    created_reply: Any = None


class Supervisor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(self, parts: EngineParts, max_live: int) -> None:
        super().__init__()
        self._parts = parts
        self._max_live = max_live
        self._live: dict[str, _Live] = {}
        self._queued: OrderedDict[str, _Queued] = OrderedDict()
        self._parked: set[str] = set()  # runs whose actor failed, waiting for their reactivation timer
        self._failures: dict[str, int] = {}  # run id -> consecutive failures, kept across reactivations
        self._draining: dict[str, str] = {}  # urn -> run id: actors told to stop that have not reported Stopped
        self._elsewhere: set[str] = set()  # parked because another node executes them
        self._stopping = False

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ROUTED):
            if message.run_id in self._parked and isinstance(message, TimerFired) and message.name == ACTIVATE_TIMER:
                self._reactivate(message.run_id)
            else:
                self._route(message.run_id, message)
        elif isinstance(message, StartRun):
            self._start(message)
        elif isinstance(message, Idle):
            self._idle(message)
        elif isinstance(message, Bounce):
            self._route(message.run_id, message.message)
        elif isinstance(message, Stopped):
            run_id = self._draining.pop(message.urn, None)
            if self._parts.shared and run_id is not None and run_id not in self._live:
                self._parts.index.forget(run_id)  # its last commit may have come after Idle
            self._activate_queued()
        elif isinstance(message, ActorFailed):
            self._failed(message)
        elif isinstance(message, RunsClaimed):
            self._claimed(message)
        elif isinstance(message, Recover):
            self._recover(message)
        elif isinstance(message, Shutdown):
            self._shutdown(message)
        else:
            log.warning("supervisor: unexpected message %r", message)
        return None

    # -- starting runs ------------------------------------------------------------

    def _start(self, message: StartRun) -> None:
        if self._stopping:
            reject(message.reply, ShuttingDown("the server is shutting down"))
            return
        workflow = self._parts.workflows[message.workflow]
        index = self._parts.index
        if message.dedupe is not None:
            existing = index.lookup_active(*message.dedupe)
            summary = index.get_active(existing) if existing else None
            if summary is None and message.stored is not None:
                existing, summary = message.stored
            if existing and summary is not None:
                decision = workflow.on_duplicate(summary)
                if decision == "conflict":
                    reject(message.reply, DuplicateRun(existing, summary))
                    return
                if decision == "resume":
                    # The same run, resumed from its failed step if it is still FAILED
                    # once the command reaches it (a second such start finds it running).
                    self._route(existing, Command(existing, "resume", {"by": "a new signup for the same address"}, message.reply))
                    return
                if decision == "reuse":
                    # Answer only once the first start is durable: through the
                    # actor if it is still live, at once otherwise.
                    if existing in self._live or existing in self._queued:
                        self._route(existing, AwaitDurable(existing, message.reply))
                    else:
                        resolve(message.reply, StartResult(existing, False, summary))
                    return
        run_id = new_run_id()
        run = new_run(workflow, run_id, message.input)
        index.put(run)
        if message.dedupe is not None:
            index.reserve(*message.dedupe, run_id)
        self._queued[run_id] = _Queued(created=run, created_reply=message.reply)
        self._activate_queued()

    # -- routing and passivation ------------------------------------------------

    def _route(self, run_id: str, message: Any) -> None:
        live = self._live.get(run_id)
        if live is not None:
            try:
                live.ref.tell(message)
                live.routed += 1
                return
            except pykka.ActorDeadError:
                self._hold_for_failure(run_id)  # its ActorFailed is on its way: the message waits for it
        if self._stopping:
            if hasattr(message, "reply"):
                reject(message.reply, ShuttingDown("the server is shutting down"))
            return
        queued = self._queued.get(run_id)
        if queued is None:
            queued = self._queued[run_id] = _Queued()
        queued.messages.append(message)
        self._activate_queued()

    def _activate_queued(self) -> None:
        while self._queued and len(self._live) + len(self._draining) < self._max_live and not self._stopping:
            run_id = next((rid for rid in self._queued if rid not in self._parked), None)
            if run_id is None:
                return
            queued = self._queued.pop(run_id)
            ref = RunActor.start(self._parts, self.actor_ref, run_id, queued.created, queued.created_reply)
            live = self._live[run_id] = _Live(ref, ref.actor_urn)
            for n, message in enumerate(queued.messages):
                try:
                    ref.tell(message)
                except pykka.ActorDeadError:  # its start failed at once: the rest wait for its ActorFailed
                    self._hold_for_failure(run_id)
                    self._queued.setdefault(run_id, _Queued()).messages[:0] = queued.messages[n:]
                    break
                live.routed += 1

    def _hold_for_failure(self, run_id: str) -> None:
        """The run's actor stopped on an error and has not said so yet: what is routed to the
        run waits, parked, until its ActorFailed decides when it is activated again."""
        self._live.pop(run_id, None)
        self._parked.add(run_id)
        self._queued.setdefault(run_id, _Queued())

    def _idle(self, message: Idle) -> None:
        live = self._live.get(message.run_id)
        if live is None or live.urn != message.urn or live.routed != message.handled:
            return  # stale: the actor has more to handle and will report again
        del self._live[message.run_id]
        self._parked.discard(message.run_id)
        self._failures.pop(message.run_id, None)
        if self._parts.shared:
            self._parts.index.forget(message.run_id)  # released: from now on other nodes may change it
        # Until it reports Stopped it still holds a thread: it counts under the
        # cap, but the supervisor does not wait for it.
        self._draining[live.urn] = message.run_id
        live.ref.stop(block=False)

    def _failed(self, message: ActorFailed) -> None:
        live = self._live.get(message.run_id)
        if live is not None and live.urn == message.urn:
            del self._live[message.run_id]
            self._draining[live.urn] = message.run_id  # it stops itself and reports Stopped
        if not message.created:
            # The run never became durable: the caller got the error, forget it.
            self._parts.index.forget(message.run_id)
            self._queued.pop(message.run_id, None)
            self._activate_queued()
            return
        if message.moved:
            self._moved(message.run_id)
            return
        # Not counted in _parked: reactivation removes the run from it, which
        # would restart the backoff at 0.5 s after every failure.
        failures = self._failures.get(message.run_id, 0) + 1
        self._failures[message.run_id] = failures
        self._parked.add(message.run_id)
        delay = min(60.0, 0.5 * 2 ** (failures - 1))
        log.error("run %s stopped (%s); reactivating in %.1f s", message.run_id, message.reason, delay)
        self._queued.setdefault(message.run_id, _Queued())
        self._parts.timers.schedule(message.run_id, ACTIVATE_TIMER, now() + delay)
        self._activate_queued()

    def _moved(self, run_id: str) -> None:
        """Another node executes the run. What was asked of it here (a click, a command)
        is asked again shortly, while its callers wait: that node releases the run once
        its step is done, or stops renewing and the run is taken over."""
        self._parts.index.forget(run_id)
        self._elsewhere.add(run_id)
        failures = self._failures.get(run_id, 0) + 1
        self._failures[run_id] = failures
        self._parked.add(run_id)
        self._queued.setdefault(run_id, _Queued())
        self._parts.timers.schedule(run_id, ACTIVATE_TIMER, now() + min(0.5, 0.02 * 2**failures))
        self._activate_queued()

    def _reactivate(self, run_id: str) -> None:
        self._parked.discard(run_id)
        queued = self._queued.setdefault(run_id, _Queued())
        if run_id in self._elsewhere:
            self._elsewhere.discard(run_id)
            # Only what someone still waits for: a caller that gave up, or a timer (the
            # node executing the run fires its own), is not worth claiming the run for.
            queued.messages = [m for m in queued.messages if getattr(m, "reply", None) is not None and not m.reply.done()]
            if not queued.messages:
                del self._queued[run_id]
                self._failures.pop(run_id, None)
        self._activate_queued()

    def _claimed(self, message: RunsClaimed) -> None:
        for run_id, due in message.runs:
            if run_id in self._elsewhere:  # this node holds it now: no more waiting for another
                self._elsewhere.discard(run_id)
                self._parked.discard(run_id)
                self._failures.pop(run_id, None)
            if run_id not in self._live:
                self._queued.setdefault(run_id, _Queued())
            for name, at in sorted(due.items(), key=lambda timer: timer[1]):
                self._route(run_id, TimerFired(run_id, name, at))
        self._activate_queued()

    # -- start and stop -----------------------------------------------------------

    def _recover(self, message: Recover) -> None:
        try:
            report = recovery.recover(self._parts)
        except Exception as exc:  # noqa: BLE001
            reject(message.reply, exc)
            return
        for run_id in report.resume:
            self._queued.setdefault(run_id, _Queued())
        self._claimed(RunsClaimed(tuple(report.claimed)))
        resolve(message.reply, report)

    def _shutdown(self, message: Shutdown) -> None:
        self._stopping = True
        refs = [live.ref for live in self._live.values()]
        self._live.clear()
        for ref in refs:
            ref.stop(block=False)
        for ref in refs:
            # Not a second stop(block=True): RunActor.on_stop drains its inbox,
            # which would swallow that stop's reply and wait out the timeout.
            if not ref.actor_stopped.wait(timeout=10):
                log.warning("a run actor did not stop within 10 s")
        for queued in self._queued.values():
            reject(queued.created_reply, ShuttingDown("the server is shutting down"))
            for pending in queued.messages:
                if hasattr(pending, "reply"):
                    reject(pending.reply, ShuttingDown("the server is shutting down"))
        self._queued.clear()
        resolve(message.reply, len(refs))
