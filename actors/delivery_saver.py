"""Saving webhook deliveries' states for many coroutines at once.

Many lanes' attempts end close together; each waits for its record to be
saved, and one blocking save (one sync) serves them all. A compaction runs
between two saves, so no save races the rewrite.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from userflow.storage.deliveries import DeliveryStore

GATHER = 0.005  # seconds attempts' records wait for others to share their sync


class Saver:
    """Saves records for many coroutines at once: one blocking save (one sync) per batch."""

    def __init__(self, store: DeliveryStore) -> None:
        self._store = store
        self._batch: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        self._compactions: list[tuple[Callable[[], list[dict[str, Any]]], asyncio.Future[None]]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="userflow-webhook-saver")

    async def save(self, items: list[dict[str, Any]]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.append((items, future))
        self._ready.set()
        await future

    async def compact(self, live: Callable[[], list[dict[str, Any]]]) -> None:
        """Keep only ``live()`` (every state now), between two saves: earlier copies of
        a record (an erased person's payloads) leave the store."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._compactions.append((live, future))
        self._ready.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            # A few milliseconds' gathering: many lanes' attempts end close together, and
            # one sync for all of them leaves the disk to the runs' own commits.
            await asyncio.sleep(GATHER)
            self._ready.clear()
            batch, self._batch = self._batch, []
            if batch:
                await self._settle(batch, lambda: self._store.save([item for items, _ in batch for item in items]))
            compactions, self._compactions = self._compactions, []
            for live, future in compactions:
                await self._settle([([], future)], lambda live=live: self._store.compact(live()))

    async def _settle(self, waiters: list[tuple[list[dict[str, Any]], asyncio.Future[None]]], work: Callable[[], None]) -> None:
        try:
            await asyncio.to_thread(work)
        except Exception as exc:  # noqa: BLE001 - each waiter learns of it
            for _, future in waiters:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in waiters:
            if not future.done():
                future.set_result(None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
