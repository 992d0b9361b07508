"""Webhooks: every event a run records, POSTed to every configured URL, signed.

A run's events are written in the commit that changes it (``StepContext.emit``),
so none is lost to a crash; this module delivers them, on the event loop:

- each (user, URL) pair is a lane, delivered in order: a user's event is not
  sent before that user's earlier events are delivered or given up;
- a 2xx answer is delivered; anything else, a timeout or a refused connection
  is tried again after each delay of the schedule, then the delivery is
  ``failed`` (an operator may send it again: one more attempt);
- every attempt is signed as the Standard Webhooks specification says, with
  each configured secret (so a receiver can rotate without downtime), and
  carries the event's id as ``webhook-id``, the same on every attempt;
- each attempt's outcome is durable (``storage.deliveries``) before the lane
  moves on, so a crash repeats at most the attempt in flight. A delivery is
  written first with its first attempt: one created but not yet tried when a
  crash comes is made again at start, from the run's events, because its
  lane's highest kept event number is below the run's count of events;
- a URL is sent only the events from when it was first configured on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import aiohttp
import orjson

from userflow.actors.delivery import DELIVERED, FAILED, PENDING, Delivery, WebhookSettings, check_secret
from userflow.actors.delivery_saver import Saver
from userflow.actors.timeutil import epoch, iso
from userflow.storage.deliveries import DeliveryStore

log = logging.getLogger(__name__)

IN_FLIGHT = 64  # attempts at once, all lanes together
Listener = Callable[[Delivery, dict[str, Any] | None], None]


class Webhooks:
    """The deliveries of this node: lanes, a schedule, and one HTTP client."""

    def __init__(self, settings: WebhookSettings, store: DeliveryStore, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self._store = store
        self._loop = loop
        self._signers = [check_secret(secret) for secret in settings.secrets]
        self._deliveries: dict[str, Delivery] = {}
        self._order: list[str] = []  # delivery ids as they were made: the listing reads it backwards
        self._position: dict[str, int] = {}
        self._by_run: dict[str, list[Delivery]] = {}
        self._lanes: dict[tuple[str, str], deque[Delivery]] = {}
        self._due: list[tuple[float, int, str]] = []  # (when, tiebreak, delivery id) of lane heads
        self._tiebreak = itertools.count()
        self._queued: dict[tuple[str, str], int] = {}  # lane -> highest event number with a delivery
        self._seen: dict[str, int] = {}  # run id -> events handed over (actor threads)
        self._since: dict[str, float] = {}  # url -> when it was first configured
        self._listeners: list[Listener] = []
        self._wake = asyncio.Event()
        self._in_flight = 0
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._saver = Saver(store)
        self._stopping = False

    # -- starting and stopping -------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """``listener(delivery, attempt)`` after each change (``attempt`` None when queued or retried)."""
        self._listeners.append(listener)

    async def load(self) -> None:
        """Load the deliveries and marks kept (before the engine starts, so that events
        committed by runs resuming at start are told apart from those queued before)."""
        records = await asyncio.to_thread(lambda: list(self._store.load()))
        for record in records:
            if record.get("mark") == "since":
                self._since[record["url"]] = float(record["at"])
            else:
                self._remember(Delivery(record))
        for delivery in self._deliveries.values():
            self._queued[delivery.lane] = max(self._queued.get(delivery.lane, 0), delivery.number)
        for url in self.settings.urls:
            self._since.setdefault(url, time.time())  # a new URL gets the events from now on
        await asyncio.to_thread(self._store.compact, self._live_records())
        for delivery in sorted(self._deliveries.values(), key=lambda d: (d.run_id, d.url, d.number)):
            if delivery.status == PENDING:
                self._enqueue(delivery)

    async def start(
        self,
        changed_since: Callable[[float], Iterable[Mapping[str, Any]]],
        read_events: Callable[[str], list[dict[str, Any]]],
    ) -> None:
        """Queue the events recorded but not yet queued (a crash fell in between), start sending.

        ``changed_since(when)`` gives the summaries of the runs changed since
        (epoch seconds), with how many events each has told of (blocking);
        ``read_events(run_id)`` reads a run's events (blocking)."""
        oldest = min(self._since.values(), default=0.0)

        def runs_behind() -> list[str]:
            return [
                summary["id"]
                for summary in changed_since(oldest)
                if summary.get("events")
                and any(summary["events"] > self._queued.get((summary["id"], url), 0) for url in self.settings.urls)
            ]

        behind = await asyncio.to_thread(runs_behind)
        for run_id in behind:
            self.events_committed(run_id, await asyncio.to_thread(read_events, run_id))
        if behind:
            log.info("webhooks: events of %d runs found recorded but not yet queued; queued now", len(behind))
        self._session = aiohttp.ClientSession(headers={"User-Agent": "userflow-webhooks"})
        self._worker = asyncio.create_task(self._work(), name="userflow-webhooks")
        self._saver.start()

    async def stop(self) -> None:
        """Stop sending; an attempt cut off now is made again at the next start."""
        self._stopping = True
        self._wake.set()
        for task in [self._worker, *self._attempts]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._worker, *self._attempts] if t is not None), return_exceptions=True)
        await self._saver.stop()
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self._store.close)

    def _live_records(self) -> list[dict[str, Any]]:
        marks = [{"mark": "since", "url": url, "at": at} for url, at in self._since.items()]
        return marks + [d.record() for d in self._deliveries.values()]

    # -- new events (any thread) ------------------------------------------------------

    def on_commit(self, run: Mapping[str, Any], summary: Mapping[str, Any], entries: list[dict[str, Any]]) -> None:
        """The index listener: hand the run's new events to the event loop."""
        events = run.get("events")
        if not events:
            return
        run_id = run["id"]
        seen = self._seen.get(run_id, 0)
        if len(events) <= seen:
            return
        self._seen[run_id] = len(events)
        self._loop.call_soon_threadsafe(self.events_committed, run_id, list(events[seen:]))

    def events_committed(self, run_id: str, events: list[dict[str, Any]]) -> None:
        """(Event loop.) Deliveries for the events each lane has not had yet, in order."""
        if self._stopping:
            return
        for event in events:
            number = int(event["id"].rpartition("_")[2])
            at = epoch(event["timestamp"])
            payload: bytes | None = None
            for k, url in enumerate(self.settings.urls, 1):
                lane = (run_id, url)
                if number <= self._queued.get(lane, 0) or at < self._since[url]:
                    continue
                self._queued[lane] = number
                payload = payload or orjson.dumps({"type": event["type"], "timestamp": event["timestamp"], "data": event["data"]})
                delivery = Delivery(
                    {
                        "id": f"dlv_{event['id'][4:]}_{k}",
                        "eventId": event["id"],
                        "number": number,
                        "workflowId": run_id,
                        "userId": (event.get("data") or {}).get("id"),
                        "type": event["type"],
                        "url": url,
                        "status": PENDING,
                        "createdAt": event["timestamp"],
                        "payload": payload.decode(),
                    }
                )
                self._remember(delivery)
                self._enqueue(delivery)
                self._tell(delivery, None)

    # -- reading ---------------------------------------------------------------------------

    def get(self, delivery_id: str) -> Delivery | None:
        return self._deliveries.get(delivery_id)

    def of_run(self, run_id: str) -> list[Delivery]:
        return list(self._by_run.get(run_id, ()))

    def page(self, status: str | None, limit: int, before: str | None) -> tuple[list[Delivery], str | None]:
        """Newest first, strictly older than ``before``; walks back only as far as the page needs."""
        end = len(self._order) if before is None else self._position.get(before)
        if end is None:
            return [], None
        chosen: list[Delivery] = []
        for index in range(end - 1, -1, -1):
            delivery = self._deliveries[self._order[index]]
            if status is None or delivery.status == status:
                if len(chosen) == limit:
                    return chosen, chosen[-1].id
                chosen.append(delivery)
        return chosen, None

    def counts(self) -> dict[str, int]:
        counts = {PENDING: 0, DELIVERED: 0, FAILED: 0}
        for delivery in self._deliveries.values():
            counts[delivery.status] += 1
        return counts

    # -- erasure ---------------------------------------------------------------------------

    async def erase(self, run_id: str) -> int:
        """The run's payloads still to be sent lose the person (address and name), and the
        store keeps no earlier copy; how many were rewritten."""
        changed = []
        for delivery in self._by_run.get(run_id, ()):
            if delivery.payload is None:
                continue
            body = orjson.loads(delivery.payload)
            if isinstance(body.get("data"), dict):
                body["data"].update(email=None, name=None)
            delivery.payload = orjson.dumps(body)
            changed.append(delivery.record())
        if changed:
            await self._saver.save(changed)
        await self._saver.compact(self._live_records)
        return len(changed)

    # -- an operator's retry ---------------------------------------------------------------

    async def retry(self, delivery_id: str, by: str) -> Delivery:
        """Send a failed delivery again (one attempt), with the same webhook-id."""
        delivery = self._deliveries[delivery_id]
        if delivery.status != FAILED:
            raise ValueError(f"only a failed delivery can be sent again; this one is {delivery.status}")
        delivery.status, delivery.manual, delivery.next_at = PENDING, True, time.time()
        delivery.resent.append({"at": iso(delivery.next_at), "by": by})
        await self._saver.save([delivery.record()])
        self._schedule(delivery)
        self._tell(delivery, None)
        return delivery

    # -- sending ------------------------------------------------------------------------------

    def _remember(self, delivery: Delivery) -> None:
        known = self._deliveries.get(delivery.id)
        self._deliveries[delivery.id] = delivery
        if delivery.id not in self._position:
            self._position[delivery.id] = len(self._order)
            self._order.append(delivery.id)
        runs = self._by_run.setdefault(delivery.run_id, [])
        if known is not None:
            runs.remove(known)
        runs.append(delivery)

    def _enqueue(self, delivery: Delivery) -> None:
        lane = self._lanes.setdefault(delivery.lane, deque())
        lane.append(delivery)
        if len(lane) == 1:
            self._schedule(delivery)

    def _schedule(self, delivery: Delivery) -> None:
        if delivery.next_at is None:
            delivery.next_at = time.time()
        heapq.heappush(self._due, (delivery.next_at, next(self._tiebreak), delivery.id))
        self._wake.set()

    async def _work(self) -> None:
        while not self._stopping:
            now = time.time()
            while self._due and self._due[0][0] <= now and self._in_flight < IN_FLIGHT:
                when, _, delivery_id = heapq.heappop(self._due)
                delivery = self._deliveries.get(delivery_id)
                if delivery is None or delivery.status != PENDING or delivery.next_at != when:
                    continue  # replaced by a later schedule
                self._in_flight += 1
                task = asyncio.create_task(self._attempt(delivery))
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)
            self._wake.clear()
            wait = None if not self._due or self._in_flight >= IN_FLIGHT else max(0.0, self._due[0][0] - time.time())
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            attempt = await self._post(delivery)
            delivery.attempts.append(attempt)
            finished = self._settle(delivery, attempt)
            await self._saver.save([delivery.record()])
            self._tell(delivery, attempt)
            if finished:
                self._next_in_lane(delivery)
            else:
                self._schedule(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug here must not stop every other lane
            log.exception("webhooks: delivery %s could not be recorded; it is tried again at the next start", delivery.id)
        finally:
            self._in_flight -= 1
            self._wake.set()

    async def _post(self, delivery: Delivery) -> dict[str, Any]:
        assert self._session is not None and delivery.payload is not None
        started = time.time()
        timestamp = datetime.fromtimestamp(int(started), tz=timezone.utc)
        body = delivery.payload.decode()
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(started)),
            "webhook-signature": " ".join(signer.sign(delivery.event_id, timestamp, body) for signer in self._signers),
        }
        status: int | None = None
        error: str | None = None
        clock = time.perf_counter()
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
            async with self._session.post(delivery.url, data=delivery.payload, headers=headers, allow_redirects=False, timeout=timeout) as response:
                status = response.status
                await response.content.read(65536)  # a receiver's long answer is not ours to keep
            if not 200 <= status < 300:
                error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        except TimeoutError:
            error = f"no answer within {self.settings.timeout:g} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        return {"at": iso(started), "status": status, "error": error, "durationMs": round((time.perf_counter() - clock) * 1000, 1)}

    def _settle(self, delivery: Delivery, attempt: dict[str, Any]) -> bool:
        """Record the attempt's outcome; whether the delivery is finished."""
        if attempt["error"] is None:
            delivery.status, delivery.next_at = DELIVERED, None
            return True
        failures = len(delivery.attempts)
        if delivery.manual or failures > len(self.settings.schedule):
            delivery.status, delivery.next_at = FAILED, None
            return True
        delivery.next_at = time.time() + self.settings.schedule[failures - 1]
        return False

    def _next_in_lane(self, delivery: Delivery) -> None:
        if delivery.manual:
            delivery.manual = False
            return  # sent again on its own: it is not the head of a lane
        lane = self._lanes.get(delivery.lane)
        if lane and lane[0] is delivery:
            lane.popleft()
            if lane:
                self._schedule(lane[0])
            else:
                del self._lanes[delivery.lane]

    def _tell(self, delivery: Delivery, attempt: dict[str, Any] | None) -> None:
        for listener in self._listeners:
            try:
                listener(delivery, attempt)
            except Exception:  # noqa: BLE001 - an observer must not stop deliveries
                log.exception("webhooks: a listener failed")
