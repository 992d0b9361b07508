"""Whether a node is alive and ready, and which nodes share its store."""

from __future__ import annotations

import asyncio

from aiohttp import web

from userflow.http.errors import json_response
from userflow.http.keys import PUBLIC_URL, RUNTIME, SETTINGS, STORES


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app.get(RUNTIME)
    node = request.app[SETTINGS].node_id
    if runtime is None or not runtime.ready:
        return json_response({"status": "starting", "node": node}, status=503, headers={"Retry-After": "1"})
    if not request.app[STORES].available():
        return json_response({"status": "storage_unavailable", "node": node}, status=503, headers={"Retry-After": "2"})
    return json_response({"status": "ready", "node": node, "runs": await asyncio.to_thread(len, runtime.index)})


async def list_nodes(request: web.Request) -> web.Response:
    """The nodes sharing the store: alive or not, runs executing, last heartbeat."""
    me = request.app[SETTINGS].node_id
    found = await asyncio.to_thread(request.app[STORES].nodes)
    if found is None:  # the data dir: this process alone
        runtime = request.app[RUNTIME]
        nodes = [{"id": me, "address": request.app[PUBLIC_URL], "alive": True, "executing": runtime.live_actors(), "self": True}]
    else:
        nodes = [{**node.view(), "self": node.id == me} for node in found]
    return json_response({"node": me, "nodes": nodes})
