"""Sending webhook deliveries: claim what is due from the store, attempt it, keep the outcome.

The store is the queue: it says which deliveries are due (a lane's head whose
time has come, or an operator's retry) and hands each to one sender at a
time, under a claim. So memory holds the attempts in flight and nothing
else, and several nodes on one database share the work without sending an
event twice at once. A sender looks again when it is told (a new delivery, an
attempt ended, an operator's retry), when the next retry is due, and, where
other nodes make deliveries too, every ``poll_every`` seconds.

An outcome is kept only under the claim it was attempted with: a sender that
was paused past its claim, while another took the delivery over, records
nothing, and the other's outcome stands. A claim lasts the attempt's timeout
and a margin, so a live sender always writes within it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import aiohttp

from userflow.actors.delivery import DELIVERED, FAILED, Delivery, WebhookSettings, check_secret
from userflow.actors.delivery_saver import Saver
from userflow.actors.timeutil import iso
from userflow.storage.deliveries import DeliveryStore

log = logging.getLogger(__name__)

IN_FLIGHT = 64  # attempts at once, all lanes together
CLAIM_MARGIN = 30.0  # seconds a claim outlasts an attempt's timeout: time to write its outcome
STORE_RETRY = 1.0  # seconds before the store is asked again after it failed


class Sender:
    """Claims due deliveries and attempts them, ``in_flight`` at most at once."""

    def __init__(
        self,
        settings: WebhookSettings,
        store: DeliveryStore,
        saver: Saver,
        tell: Callable[[Delivery, dict[str, Any] | None], None],
        claim_seconds: float | None = None,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        self.settings = settings
        self._store = store
        self._saver = saver
        self._tell = tell
        self.claim_seconds = claim_seconds if claim_seconds is not None else settings.timeout + CLAIM_MARGIN
        self._most_in_flight = in_flight
        self._signers = [check_secret(secret) for secret in settings.secrets]
        self._wake = asyncio.Event()
        self._in_flight = 0
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._stopping = False

    def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": "userflow-webhooks"})
        self._worker = asyncio.create_task(self._work(), name="userflow-webhooks")

    def wake(self) -> None:
        """Something may have become due: look now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop sending; an attempt cut off now is made again (its claim is given up)."""
        self._stopping = True
        self._wake.set()
        tasks = [t for t in [self._worker, *self._attempts] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _work(self) -> None:
        while not self._stopping:
            self._wake.clear()
            wait = self._store.poll_every
            room = self._most_in_flight - self._in_flight
            if room > 0:
                try:
                    claimed, due_in = await asyncio.to_thread(self._store.claim, room, self.claim_seconds)
                except Exception as exc:  # noqa: BLE001 - a store away for a while must not end sending
                    log.warning("webhooks: due deliveries cannot be claimed now (%s); trying again", exc)
                    claimed, due_in = [], STORE_RETRY
                for record in claimed:
                    self._in_flight += 1
                    task = asyncio.create_task(self._attempt(record))
                    self._attempts.add(task)
                    task.add_done_callback(self._attempts.discard)
                if due_in is not None:
                    wait = due_in if wait is None else min(wait, due_in)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _attempt(self, record: dict[str, Any]) -> None:
        try:
            delivery = Delivery(record)
            attempt = await self._post(delivery)
            delivery.attempts.append(attempt)
            self._settle(delivery, attempt)
            if await self._saver.finish({**delivery.record(), "claim": delivery.claim}):
                self._tell(delivery, attempt)
            else:
                log.warning("webhooks: the claim on delivery %s ended before its attempt did; the attempt is not recorded", delivery.id)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug here must not stop every other lane
            log.exception("webhooks: delivery %s could not be recorded; it is tried again once its claim ends", record["id"])
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

    def _settle(self, delivery: Delivery, attempt: dict[str, Any]) -> None:
        """Record the attempt's outcome: delivered, failed (given up), or due again later."""
        if attempt["error"] is None:
            delivery.status, delivery.next_at, delivery.manual = DELIVERED, None, False
            return
        failures = len(delivery.attempts)
        if delivery.manual or failures > len(self.settings.schedule):
            delivery.status, delivery.next_at, delivery.manual = FAILED, None, False
            return
        delivery.next_at = time.time() + self.settings.schedule[failures - 1]
