"""A stand-in for the Gemini REST API on 127.0.0.1, scripted answer by answer."""

from __future__ import annotations

import asyncio
import json
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
