"""Erasure: ``DELETE /api/users/{id}`` removes the person from everything userflow keeps.

A running signup is cancelled first; the finished run is then erased by its own
actor in one commit (``erase``): all or nothing, whatever the moment of a crash.
The address and name leave the run, its timeline (all but the entry saying who
erased it, and when), its emails, the catalog (its summary; the address's key
and the tokens' hashes; the address's key stays only as a keyed hash), the
payloads of webhooks still to be sent, and the event stream kept for
reconnecting clients. The product hears of it as ``user.erased``. The user's id,
status, times and risk decision stay: they say what happened, not who it was.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from userflow.actors.definitions import ACTIVE_STATUSES
from userflow.actors.run_commands import ERASE
from userflow.actors.workflow import ActionRejected
from userflow.http import views
from userflow.http.auth import PRINCIPAL
from userflow.http.errors import ApiError, json_response
from userflow.http.keys import CLIENTS, EVENTS, RUNTIME
from userflow.http.webhooks import WEBHOOKS

log = logging.getLogger(__name__)


async def erase_user(request: web.Request) -> web.Response:
    user_id = request.match_info["id"]
    runtime = request.app[RUNTIME]
    run_id = await asyncio.to_thread(runtime.index.lookup, "user", user_id)
    summary = await asyncio.to_thread(runtime.index.get, run_id) if run_id else None
    if run_id is None or summary is None:
        raise ApiError(404, "user_not_found", f"no user with id {user_id!r}")
    by = request[PRINCIPAL].describe(request.app[CLIENTS].address(request))
    if summary.get("erasedAt"):
        return json_response(_answer(summary))  # erased already: the same answer, nothing changes
    try:
        if summary["status"] in ACTIVE_STATUSES:
            await runtime.command(run_id, "cancel", {"by": f"{by} (to erase the user)"})
        result = await runtime.command(run_id, ERASE, {"by": by})
    except ActionRejected as exc:
        raise ApiError(409, "conflict", f"the user cannot be erased now: {exc.message}") from None
    hooks = request.app.get(WEBHOOKS)
    if hooks is not None:
        await hooks.erase(run_id)
    await request.app[EVENTS].forget(run_id)
    await asyncio.to_thread(runtime.parts.store.drop_old_copies)
    log.info("user %s (run %s) erased by %s", user_id, run_id, by)
    return json_response(_answer(result.summary))


def _answer(summary: dict) -> dict:
    return {"user": views.user(summary), "workflowId": summary["id"], "erasedAt": summary.get("erasedAt")}
