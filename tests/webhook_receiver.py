"""A real webhook receiver (aiohttp on 127.0.0.1, in its own thread) that checks every
request with the ``standardwebhooks`` library, as a product's receiver would."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class Received:
    id: str
    timestamp: str
    signature: str
    body: dict[str, Any]
    verified: dict[str, bool]  # secret -> did it verify
    answered: int
    at: float = field(default_factory=time.time)


class Receiver:
    """``answer(request_number)`` picks each answer: a status, ``"timeout"`` (never
    answers in time) or ``"redirect"``; the default is 204."""

    def __init__(self, *secrets: str) -> None:
        self.secrets = secrets
        self.received: list[Received] = []
        self.answer: Callable[[int], int | str] = lambda n: 204
        self.changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = ""
        self.hang = 30.0

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10), "the receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        leftover = asyncio.all_tasks(self._loop)
        for task in leftover:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified = {}
        for secret in self.secrets:
            try:
                Webhook(secret).verify(raw, headers)
                verified[secret] = True
            except WebhookVerificationError:
                verified[secret] = False
        with self.changed:
            number = len(self.received) + 1
            answer = self.answer(number)
            status = answer if isinstance(answer, int) else 302 if answer == "redirect" else 0
            self.received.append(
                Received(headers.get("webhook-id", ""), headers.get("webhook-timestamp", ""), headers.get("webhook-signature", ""), json.loads(raw), verified, status)
            )
            self.changed.notify_all()
        if answer == "timeout":
            # A receiver that does not answer in time (until it is stopped).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.hang)
            return web.Response(status=204)
        if answer == "redirect":
            return web.Response(status=302, headers={"Location": self.url + "?moved"})
        return web.Response(status=int(answer))

    def wait_until(self, condition: Callable[[list[Received]], bool], timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not condition(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the receiver never saw what was expected; it has {len(self.received)} requests")
                self.changed.wait(left)
            return list(self.received)

    def delivered(self) -> list[Received]:
        """The requests it answered with a 2xx."""
        return [r for r in self.received if 200 <= r.answered < 300]


def flaky(rate: float, seed: int = 7) -> Callable[[int], int]:
    """Answer 500 to a ``rate`` share of requests, 204 to the rest."""
    rng = random.Random(seed)
    return lambda n: 500 if rng.random() < rate else 204
