"""The one error shape of the API, and the middleware that guarantees it.

Every error is ``{"error": {"code", "message"}}`` with a fitting status. Input
can only produce a 4xx; a 5xx means the server itself could not do its job
(storage unavailable, shutting down), never that a request was odd.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from userflow.actors.supervisor import ShuttingDown
from userflow.storage import StorageError

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no such resource: {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: "the request body is too large",
        }.get(exc.status, exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, _CODES.get(exc.status, "http_error"), message, headers)
    except (ConnectionResetError, RequestPayloadError):
        # The client went away mid-body (or sent a broken chunked body): its fault, and
        # no one is left to read the answer. Not an error of the server's.
        return error_response(400, "incomplete_body", "the request body ended before it was complete; send it again")
    except StorageError:
        log.exception("storage failure while handling %s %s", request.method, request.path)
        return error_response(503, "storage_unavailable", "the server cannot persist right now; nothing was changed, retry later", {"Retry-After": "5"})
    except ShuttingDown:
        return error_response(503, "shutting_down", "the server is shutting down; retry shortly", {"Retry-After": "2"})
    except TimeoutError:
        return error_response(503, "busy", "the server did not answer in time; retry later", {"Retry-After": "2"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the server failed to handle this request")
