"""The HTTP server's own answers in the API's error shape.

aiohttp answers malformed HTTP (an unknown method, a request line over 8,190
bytes, a broken header) before any route or middleware runs, in plain text
that echoes the request line. Its request handler is swapped for one whose
error answers are the JSON error of every other refusal, and say nothing of
what was sent. aiohttp has no public hook for this: ``_make_server`` and the
``Server`` it returns are the narrowest place, and
``tests/test_hostile.py`` fails if an upgrade of aiohttp moves them.

The same ``Server`` lets a request in flight at a stop finish: aiohttp closes
every connection as it begins to stop, and a closing connection drops what it
receives, so a request whose body was still arriving waited for it in vain
until the shutdown timeout cancelled it, unanswered. Its connection now stays
open until the request has finished (``tests/test_lifecycle.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from http import HTTPStatus

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

_CODES = {400: "malformed_request", 413: "request_too_large", 431: "headers_too_large", 501: "not_implemented"}


class _JsonErrors(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs, and refuses once a response started
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        if status >= 500:
            text = "the server failed to handle this request"
        else:
            text = f"the request is not valid HTTP ({phrase.lower()}); nothing was done"
        body = {"error": {"code": _CODES.get(status, "internal_error" if status >= 500 else "bad_request"), "message": text}}
        response = web.Response(status=plain.status, body=orjson.dumps(body), content_type="application/json")
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)

    def pre_shutdown(self) -> None:
        # The listening socket is closed: idle connections close now, busy ones once done.
        for conn in self._connections:
            if not conn._request_in_progress:
                conn.close()

    async def shutdown(self, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while any(conn._request_in_progress for conn in self._connections):
                    await asyncio.sleep(0.02)
        for conn in self._connections:
            conn.close()
        # aiohttp's own wait, then the cancel of what is left; never 0, which it reads as no limit.
        await super().shutdown(None if deadline is None else max(1.0, deadline - loop.time()))


class Runner(web.AppRunner):
    """An ``AppRunner`` whose connections answer malformed HTTP in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
