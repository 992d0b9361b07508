"""A stand-in for the Gemini REST API on 127.0.0.1, scripted answer by answer."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web


def candidate(text: str) -> dict[str, Any]:
    """The body of a successful generateContent answer whose text is ``text``."""
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 10, "totalTokenCount": 20},
        "modelVersion": "gemini-2.5-flash",
    }


def verdict(decision: str, score: float, *reasons: str) -> dict[str, Any]:
    return candidate(json.dumps({"decision": decision, "score": score, "reasons": list(reasons) or ["ok"]}))


def error(code: int, status: str) -> tuple[int, dict[str, Any]]:
    return code, {"error": {"code": code, "message": f"simulated {status}", "status": status}}


HANG = "hang"


class FakeGemini:
    """``script`` is consumed one entry per request: a body, (status, body), or HANG."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/{version}/models/{call}", self._generate)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {"path": request.path, "headers": dict(request.headers), "body": await request.json()}
        )
        step = self.script.pop(0) if self.script else error(500, "INTERNAL")
        if step == HANG:
            await asyncio.sleep(3600)
        if isinstance(step, tuple):
            status, body = step
            return web.json_response(body, status=status)
        if isinstance(step, str):
            return web.Response(text=step, content_type="application/json")
        return web.json_response(step)


class ServedGemini:
    """A FakeGemini on 127.0.0.1 served by a thread of its own: for ``userflow serve``
    processes, which the test drives with blocking calls while the fake answers.

    ``env`` points a server process at it (a key, a model, the base URL)."""

    def __init__(self) -> None:
        self.fake = FakeGemini()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.fake.requests

    @property
    def script(self) -> list[Any]:
        return self.fake.script

    @script.setter
    def script(self, steps: list[Any]) -> None:
        self.fake.script = steps

    def env(self, model: str = "gemini-test") -> dict[str, str]:
        return {"GEMINI_API_KEY": "test-key", "GEMINI_MODEL": model, "GEMINI_BASE_URL": self.url}

    async def _start(self) -> str:
        self._runner = web.AppRunner(self.fake.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        return f"http://{host}:{port}/"

    def __enter__(self) -> ServedGemini:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
