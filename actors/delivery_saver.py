"""Writing webhook deliveries for many coroutines at once.

Many lanes' attempts end close together, and many runs' events make
deliveries close together; each waits for its records to be written, and
one store write (one transaction, one sync) serves them all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from userflow.storage.deliveries import DeliveryStore

GATHER = 0.005  # seconds records wait for others to share their sync


class Saver:
    """Writes new deliveries and attempts' outcomes for many coroutines: one store write per batch."""

    def __init__(self, store: DeliveryStore) -> None:
        self._store = store
        self._new: list[tuple[list[dict[str, Any]], asyncio.Future[set[str]]]] = []
        self._outcomes: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="userflow-webhook-saver")

    async def create(self, records: list[dict[str, Any]]) -> set[str]:
        """Make these deliveries (those that do not exist yet); the ids made."""
        future: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        self._new.append((records, future))
        self._ready.set()
        return await future

    async def finish(self, outcome: dict[str, Any]) -> bool:
        """Keep an attempt's outcome (a record with its claim); whether the claim was still ours."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._outcomes.append((outcome, future))
        self._ready.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            # A few milliseconds' gathering: one sync for many lanes leaves the disk to the runs' own commits.
            await asyncio.sleep(GATHER)
            self._ready.clear()
            new, self._new = self._new, []
            outcomes, self._outcomes = self._outcomes, []
            records = [record for batch, _ in new for record in batch]
            try:
                made, kept = await asyncio.to_thread(self._store.write, records, [outcome for outcome, _ in outcomes])
            except Exception as exc:  # noqa: BLE001 - each waiter learns of it
                for future in [f for _, f in new] + [f for _, f in outcomes]:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for batch, made_future in new:
                if not made_future.done():
                    made_future.set_result({record["id"] for record in batch} & made)
            for outcome, kept_future in outcomes:
                if not kept_future.done():
                    kept_future.set_result(outcome["id"] in kept)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
