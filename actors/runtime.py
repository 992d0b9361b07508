"""The engine as the HTTP layer sees it: start runs, signal them, read them.

``Runtime`` wires the supervisor, the timer queue and the index together. Its
coroutines never block the event loop: a request travels to the supervisor
with ``tell`` and its answer comes back in a ``concurrent.futures.Future``
awaited through ``asyncio.wrap_future``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import pykka

from userflow.actors.index import RunIndex
from userflow.actors.messages import Command, Deliver, Delivered, Recover, RunsClaimed, Shutdown, StartResult, StartRun, TimerFired
from userflow.actors.recovery import RecoveryReport
from userflow.actors.parts import EngineParts
from userflow.actors.run_actor import RunActor
from userflow.actors.supervisor import Supervisor
from userflow.actors.takeover import ClaimPoller
from userflow.actors.timers import TimerQueue
from userflow.actors.definitions import Definitions
from userflow.actors.workflow import ActionRejected, SignalRejected, Workflow
from userflow.storage import RunStore, StoredRun
from userflow.storage.port import Claimed

DEFAULT_MAX_LIVE = 256


class Runtime:
    def __init__(
        self,
        store: RunStore,
        workflows: Mapping[str, Workflow] | list[Workflow],
        services: Any = None,
        *,
        max_live: int = DEFAULT_MAX_LIVE,
        loop: asyncio.AbstractEventLoop | None = None,
        request_timeout: float = 30.0,
        node_id: str = "",
        claim_every: float = 0.25,
    ) -> None:
        workflows = Definitions(workflows.values() if isinstance(workflows, Mapping) else workflows)
        self.index = RunIndex(workflows)
        self.timers = TimerQueue(self._timer_fired)
        claims = store.claims()
        self.parts = EngineParts(store, self.index, self.timers, workflows, services, loop, node_id, shared=claims is not None)
        self._poller = ClaimPoller(claims, self._claimed, claim_every) if claims is not None else None
        self.request_timeout = request_timeout
        self._starting: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}  # keys being started here, and by how many
        self._max_live = max_live
        self._supervisor: pykka.ActorRef[Supervisor] | None = None
        self.ready = False

    # -- life cycle (blocking: call from a thread, not the event loop) --------------

    def start(self) -> RecoveryReport:
        """Start the supervisor and timers, recover stored runs, and become ready."""
        self.timers.start()
        self.index.attach(self.parts.store.catalog(self.parts.workflows.describe))
        self._supervisor = Supervisor.start(self.parts, self._max_live)
        reply: Future[RecoveryReport] = Future()
        self._supervisor.tell(Recover(reply))
        report = reply.result()
        if self._poller is not None:
            self._poller.start()
        self.ready = True
        return report

    def stop(self, timeout: float = 30.0) -> None:
        """Stop timers, then every run actor after its current message, then the supervisor."""
        self.ready = False
        self.timers.stop()
        if self._poller is not None:
            self._poller.stop()
        if self._supervisor is None:
            return
        reply: Future[int] = Future()
        self._supervisor.tell(Shutdown(reply))
        reply.result(timeout=timeout)
        self._supervisor.stop(block=True, timeout=timeout)
        self._supervisor = None
        self.parts.store.close()  # the data dir: a last checkpoint, no journal to replay

    def _claimed(self, claimed: list[Claimed]) -> None:
        if self._supervisor is not None:
            try:
                self._supervisor.tell(RunsClaimed(tuple((c.run_id, c.due) for c in claimed)))
            except pykka.ActorDeadError:  # stopping: the node's stop frees what it claimed
                pass

    def _timer_fired(self, run_id: str, name: str, due: float) -> None:
        if self._supervisor is not None:
            self._supervisor.tell(TimerFired(run_id, name, due))

    # -- requests (coroutines) --------------------------------------------------------

    async def _ask(self, message_for: Any) -> Any:
        if self._supervisor is None:
            raise RuntimeError("the engine is not running")
        reply: Future[Any] = Future()
        self._supervisor.tell(message_for(reply))
        return await asyncio.wait_for(asyncio.wrap_future(reply), self.request_timeout)

    async def start_run(
        self, workflow: str, input: dict[str, Any], dedupe: tuple[str, str] | None = None
    ) -> StartResult:
        """Start a run; returns once its first snapshot is durable."""
        if dedupe is None:
            return await self._ask(lambda reply: StartRun(workflow, input, dedupe, reply, None))
        claims = self.parts.store.claims()
        if claims is None:
            stored = await asyncio.to_thread(self._stored, dedupe)
            return await self._ask(lambda reply: StartRun(workflow, input, dedupe, reply, stored))
        # On a shared store, one start of a key at a time across nodes: the catalog is read,
        # and the run made durable, before another start of the key looks (here, then there).
        here, users = self._starting.get(dedupe) or (asyncio.Lock(), 0)
        self._starting[dedupe] = (here, users + 1)
        try:
            async with here:
                deadline = asyncio.get_running_loop().time() + self.request_timeout
                while not await asyncio.to_thread(claims.try_lock_key, *dedupe):
                    if asyncio.get_running_loop().time() > deadline:
                        raise TimeoutError("another node kept starting a run for this key")
                    await asyncio.sleep(0.02)  # another node's start of the key: it ends with its first commit
                try:
                    stored = await asyncio.to_thread(self._stored, dedupe)
                    return await self._ask(lambda reply: StartRun(workflow, input, dedupe, reply, stored))
                finally:
                    await asyncio.to_thread(claims.unlock_key, *dedupe)
        finally:
            lock, users = self._starting[dedupe]
            if users == 1:
                del self._starting[dedupe]
            else:
                self._starting[dedupe] = (lock, users - 1)

    def _stored(self, dedupe: tuple[str, str]) -> tuple[str, dict[str, Any]] | None:
        run_id = self.index.lookup(*dedupe)
        summary = self.index.get(run_id) if run_id is not None else None
        return (run_id, summary) if run_id is not None and summary is not None else None

    def _refuse_unservable(self, run_id: str) -> None:
        """Raise if the stored run cannot be activated: its version is neither shipped nor
        migrated (it is listed, left as it is, never run on other steps)."""
        summary = self.index.get(run_id)
        if summary is None or self.parts.workflows.can_run(summary):
            return
        why = self.parts.workflows.why_not(summary)
        raise SignalRejected("unservable", why) if summary.get("status") == "WAITING" else ActionRejected("conflict", why)

    async def signal(self, run_id: str, name: str, payload: dict[str, Any]) -> Delivered:
        """Deliver a signal; returns once it is durably recorded (or was already)."""
        await asyncio.to_thread(self._refuse_unservable, run_id)
        return await self._ask(lambda reply: Deliver(run_id, name, payload, reply))

    async def command(self, run_id: str, name: str, args: dict[str, Any] | None = None) -> StartResult:
        """Run an operator action (retry, cancel, or a workflow action); returns once durable."""
        await asyncio.to_thread(self._refuse_unservable, run_id)
        return await self._ask(lambda reply: Command(run_id, name, args or {}, reply))

    def live_actors(self) -> int:
        """Run actors alive now (each holds one thread)."""
        return len(pykka.ActorRegistry.get_by_class(RunActor))

    async def read(self, run_id: str) -> StoredRun | None:
        """The run's last committed snapshot and timeline, read off the event loop."""
        return await asyncio.to_thread(self.parts.store.read, run_id)
