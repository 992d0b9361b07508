"""Webhooks: every event a run records, POSTed to every configured URL, signed.

A run's events are written in the commit that changes it (``StepContext.emit``),
so none is lost to a crash; this module makes a delivery of each for each URL,
and ``actors.delivery_sender`` delivers them:

- each (user, URL) pair is a lane, delivered in order: a user's event is not
  sent before that user's earlier events are delivered or given up;
- a 2xx answer is delivered; anything else, a timeout or a refused connection
  is tried again after each delay of the schedule, then the delivery is
  ``failed`` (an operator may send it again: one more attempt);
- every attempt is signed as the Standard Webhooks specification says, with
  each configured secret (so a receiver can rotate without downtime), and
  carries the event's id as ``webhook-id``, the same on every attempt;
- each attempt's outcome is durable before the lane moves on, so a crash
  repeats at most the attempt in flight. Deliveries are made in the store a
  few milliseconds after their events' commit: one a crash cut off is made
  again at start, from the run's events, because its lane's highest event
  number in the store is below the run's count of events. Making one twice
  (two nodes noticing one event) makes it once;
- a URL is sent only the events from when it was first configured on.

The store is the truth for everything listed: memory holds the deliveries
being made or attempted, never every delivery ever made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from userflow.actors.definitions import ACTIVE_STATUSES
from userflow.actors.delivery import PENDING, Delivery, WebhookSettings
from userflow.actors.delivery_saver import Saver
from userflow.actors.delivery_sender import IN_FLIGHT, STORE_RETRY, Sender
from userflow.actors.timeutil import epoch, iso
from userflow.storage.deliveries import DeliveryStore

__all__ = ["IN_FLIGHT", "Webhooks"]

log = logging.getLogger(__name__)

COUNTS_EVERY = 1.0  # seconds a count of the deliveries by status is shown before it is read again
Listener = Callable[[Delivery, dict[str, Any] | None], None]


def scrubbed(payload: str) -> str:
    """A payload without the person (address and name)."""
    body = orjson.loads(payload)
    if isinstance(body.get("data"), dict):
        body["data"].update(email=None, name=None)
    return orjson.dumps(body).decode()


class Webhooks:
    """The deliveries of this node: making them, reading them, and an operator's retry."""

    def __init__(
        self,
        settings: WebhookSettings,
        store: DeliveryStore,
        loop: asyncio.AbstractEventLoop,
        *,
        claim_seconds: float | None = None,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        self.settings = settings
        self._store = store
        self._loop = loop
        self._saver = Saver(store)
        self._sender = Sender(settings, store, self._saver, self._tell, claim_seconds, in_flight)
        self._seen: dict[str, int] = {}  # run id -> events handed over (actor threads), while the run is active
        self._since: dict[str, float] = {}  # url -> when it was first configured
        self._unmade: list[dict[str, Any]] = []  # deliveries of committed events, not yet in the store
        self._to_make = asyncio.Event()
        self._making = asyncio.Lock()
        self._maker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        self._counts: dict[str, int] = {"pending": 0, "delivered": 0, "failed": 0}
        self._counted = 0.0
        self._stopping = False

    @property
    def node_id(self) -> str:
        return self._store.node_id

    # -- starting and stopping -------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """``listener(delivery, attempt)`` after each change (``attempt`` None when made or retried)."""
        self._listeners.append(listener)

    async def load(self) -> None:
        """Learn when each URL began, give up this node's claims of before (before the engine
        starts, so that events committed by runs resuming at start are made at once)."""
        self._since = await asyncio.to_thread(self._store.since, self.settings.urls, time.time())
        await asyncio.to_thread(self._store.release)
        self._counts = await asyncio.to_thread(self._store.counts)
        self._saver.start()
        self._maker = asyncio.create_task(self._make(), name="userflow-webhook-maker")

    async def start(
        self,
        changed_since: Callable[[float], Iterable[Mapping[str, Any]]],
        read_events: Callable[[str], list[dict[str, Any]]],
        sweep_every: float | None = None,
    ) -> None:
        """Make the deliveries of events recorded but not yet made (a crash fell in between), start sending.

        ``changed_since(when)`` gives the summaries of the runs changed since
        (epoch seconds), with how many events each has told of (blocking);
        ``read_events(run_id)`` reads a run's events (blocking). With
        ``sweep_every`` (a store other nodes share), the runs changed lately are
        looked at again that often: a node that died between a commit and its
        deliveries leaves them to be made by the others, not by its restart."""
        oldest = min((self._since[url] for url in self.settings.urls), default=0.0)
        await self._make_behind(changed_since, read_events, oldest)
        self._sender.start()
        if sweep_every is not None:
            self._sweeper = asyncio.create_task(self._sweep(changed_since, read_events, sweep_every), name="userflow-webhook-sweep")

    async def _make_behind(
        self, changed_since: Callable[[float], Iterable[Mapping[str, Any]]], read_events: Callable[[str], list[dict[str, Any]]], since: float
    ) -> None:
        def runs_behind() -> list[str]:
            told = {summary["id"]: summary["events"] for summary in changed_since(since) if summary.get("events")}
            highest = self._store.highest(list(told))
            return [run_id for run_id, events in told.items() if any(events > highest.get((run_id, url), 0) for url in self.settings.urls)]

        behind = await asyncio.to_thread(runs_behind)
        for run_id in behind:
            self.events_committed(run_id, await asyncio.to_thread(read_events, run_id))
        if behind:
            log.info("webhooks: events of %d runs found recorded but not yet made into deliveries; made now", len(behind))

    async def _sweep(
        self, changed_since: Callable[[float], Iterable[Mapping[str, Any]]], read_events: Callable[[str], list[dict[str, Any]]], every: float
    ) -> None:
        while not self._stopping:
            started = time.time()
            await asyncio.sleep(every)
            try:
                # Back past the last sweep by as much again: a commit is listed a moment after its time.
                await self._make_behind(changed_since, read_events, started - every)
            except Exception as exc:  # noqa: BLE001 - the store is away: the next sweep looks again
                log.warning("webhooks: could not look for events without deliveries: %s", exc)

    async def stop(self) -> None:
        """Stop sending; an attempt cut off now is made again (here at the next start, or by another node)."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await self._sender.stop()
        if self._maker is not None:
            self._maker.cancel()
            await asyncio.gather(self._maker, return_exceptions=True)
        await self._saver.stop()
        try:
            await asyncio.to_thread(self._store.release)
        except Exception as exc:  # noqa: BLE001 - the claims end by themselves
            log.warning("webhooks: this node's claims could not be given up (%s); they end by themselves", exc)
        await asyncio.to_thread(self._store.close)

    # -- new events (any thread) ------------------------------------------------------

    def on_commit(self, run: Mapping[str, Any], summary: Mapping[str, Any], entries: list[dict[str, Any]]) -> None:
        """The index listener: hand the run's new events to the event loop."""
        events = run.get("events")
        if not events:
            return
        run_id = run["id"]
        seen = self._seen.get(run_id, 0)
        if summary.get("status") in ACTIVE_STATUSES:
            self._seen[run_id] = len(events)
        else:
            self._seen.pop(run_id, None)  # handing a finished run's events again makes nothing twice
        if len(events) > seen:
            self._loop.call_soon_threadsafe(self.events_committed, run_id, list(events[seen:]))

    def events_committed(self, run_id: str, events: list[dict[str, Any]]) -> None:
        """(Event loop.) Deliveries for the events, to be made in the store in order."""
        if self._stopping:
            return
        now = time.time()
        for event in events:
            number = int(event["id"].rpartition("_")[2])
            at = epoch(event["timestamp"])
            payload: str | None = None
            for k, url in enumerate(self.settings.urls, 1):
                if at < self._since[url]:
                    continue
                payload = payload or orjson.dumps({"type": event["type"], "timestamp": event["timestamp"], "data": event["data"]}).decode()
                self._unmade.append(
                    {
                        "id": f"dlv_{event['id'][4:]}_{k}",
                        "eventId": event["id"],
                        "number": number,
                        "workflowId": run_id,
                        "userId": (event.get("data") or {}).get("id"),
                        "type": event["type"],
                        "url": url,
                        "status": PENDING,
                        "nextAt": now,
                        "createdAt": event["timestamp"],
                        "payload": payload,
                    }
                )
        self._to_make.set()

    async def _make(self) -> None:
        """Make the deliveries handed over, in order: a lane's later event never before an earlier one."""
        while True:
            await self._to_make.wait()
            self._to_make.clear()
            async with self._making:
                batch = self._unmade[:]
                try:
                    made = await self._saver.create(batch)
                except Exception as exc:  # noqa: BLE001 - kept, and written again in a moment
                    log.warning("webhooks: %d deliveries cannot be made in the store now (%s); trying again", len(batch), exc)
                    await asyncio.sleep(STORE_RETRY)
                    self._to_make.set()
                    continue
                del self._unmade[: len(batch)]
            if made:
                self._sender.wake()
            for record in batch:
                if record["id"] in made:
                    self._tell(Delivery(record), None)

    # -- reading ---------------------------------------------------------------------------

    async def get(self, delivery_id: str) -> Delivery | None:
        record = await asyncio.to_thread(self._store.get, delivery_id)
        return None if record is None else Delivery(record)

    async def of_run(self, run_id: str) -> list[Delivery]:
        return [Delivery(record) for record in await asyncio.to_thread(self._store.of_run, run_id)]

    async def page(self, status: str | None, limit: int, before: str | None) -> tuple[list[Delivery], str | None]:
        """Newest first, strictly older than ``before``."""
        records, next_cursor = await asyncio.to_thread(self._store.page, status, limit, before)
        return [Delivery(record) for record in records], next_cursor

    def counts(self) -> dict[str, int]:
        """The deliveries by status, as last read from the store (read again in the background)."""
        if time.monotonic() - self._counted > COUNTS_EVERY and not self._stopping:
            self._counted = time.monotonic()
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._count()))
        return dict(self._counts)

    async def _count(self) -> None:
        try:
            self._counts = await asyncio.to_thread(self._store.counts)
        except Exception as exc:  # noqa: BLE001 - the last count stands
            log.warning("webhooks: deliveries cannot be counted now: %s", exc)

    # -- erasure ---------------------------------------------------------------------------

    async def erase(self, run_id: str) -> int:
        """The run's payloads still to be sent lose the person (address and name), and the
        store keeps no earlier copy; how many were rewritten."""
        async with self._making:  # none of the run's deliveries is being made meanwhile
            waiting = [record for record in self._unmade if record["workflowId"] == run_id]
            for record in waiting:
                record["payload"] = scrubbed(record["payload"])
            return len(waiting) + await asyncio.to_thread(self._store.scrub, run_id, scrubbed)

    # -- an operator's retry ---------------------------------------------------------------

    async def retry(self, delivery_id: str, by: str) -> Delivery:
        """Send a failed delivery again (one attempt), with the same webhook-id.
        KeyError if there is none, ValueError if it is not failed."""
        now = time.time()
        delivery = Delivery(await asyncio.to_thread(self._store.resend, delivery_id, {"at": iso(now), "by": by}, now))
        self._sender.wake()
        self._tell(delivery, None)
        return delivery

    def _tell(self, delivery: Delivery, attempt: dict[str, Any] | None) -> None:
        for listener in self._listeners:
            try:
                listener(delivery, attempt)
            except Exception:  # noqa: BLE001 - an observer must not stop deliveries
                log.exception("webhooks: a listener failed")
