"""The webhooks of the server: wiring the sender to the engine, and its two routes.

``GET /api/webhooks/deliveries`` lists deliveries, newest first;
``POST /api/webhooks/deliveries/{id}/retry`` sends a failed one again, with
the same ``webhook-id``. Every change of a delivery is published on the event
stream (``delivery`` events), counted in the metrics and logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiohttp import web

from userflow.actors.runtime import Runtime
from userflow.actors.delivery import DELIVERED, FAILED, PENDING, Delivery, WebhookSettings
from userflow.actors.webhooks import Webhooks
from userflow.http.auth import PRINCIPAL
from userflow.http.config import Settings
from userflow.http.errors import ApiError, json_response
from userflow.http.events import EventHub
from userflow.http.keys import CLIENTS
from userflow.http.metrics import Metrics
from userflow.http.validation import query_cursor, query_limit
from userflow.storage.stores import Stores

log = logging.getLogger(__name__)

WEBHOOKS = web.AppKey("webhooks", Webhooks)
_DELIVERY_ID = re.compile(r"dlv_[A-Za-z0-9]{1,64}_[0-9]{1,6}_[0-9]{1,3}")
STATUSES = (PENDING, DELIVERED, FAILED)


def attach(app: web.Application, settings: Settings, stores: Stores, runtime: Runtime, hub: EventHub, metrics: Metrics) -> None:
    """Deliver the engine's events, when a webhook URL is configured."""
    if not settings.webhook_urls:
        return
    webhooks = Webhooks(
        WebhookSettings(settings.webhook_urls, settings.webhook_secrets, settings.webhook_timeout, settings.webhook_schedule),
        stores.deliveries(settings.node_id),
        asyncio.get_running_loop(),
    )
    runtime.index.subscribe(webhooks.on_commit)
    webhooks.subscribe(lambda delivery, attempt: _publish(hub, delivery, attempt))
    webhooks.subscribe(metrics.observe_delivery)
    webhooks.subscribe(_log)
    metrics.add_delivery_gauge(webhooks.counts)
    app[WEBHOOKS] = webhooks


def _publish(hub: EventHub, delivery: Delivery, attempt: dict[str, Any] | None) -> None:
    """A delivery's attempts and an operator's retry of it; not its creation, which its
    first attempt follows at once (half the frames for every watching dashboard)."""
    if attempt is not None or delivery.manual:
        hub.publish([("delivery", delivery.view())])


def _log(delivery: Delivery, attempt: dict[str, Any] | None) -> None:
    if attempt is None:
        return
    extra = {"runId": delivery.run_id, "event": "webhook"}
    if delivery.status == FAILED:
        log.warning("webhook %s to %s failed after %d attempts: %s", delivery.type, delivery.url, len(delivery.attempts), attempt["error"], extra=extra)
    elif attempt["error"]:
        log.info("webhook %s to %s: attempt %d failed (%s); next at %s", delivery.type, delivery.url, len(delivery.attempts), attempt["error"], delivery.view()["nextAttemptAt"], extra=extra)
    else:
        log.debug("webhook %s delivered to %s", delivery.type, delivery.url, extra=extra)


async def list_deliveries(request: web.Request) -> web.Response:
    raw = request.query.get("status") or None
    if raw is not None and raw.lower() not in STATUSES:
        raise ApiError(400, "invalid_status", f"status: one of {', '.join(STATUSES)}")
    limit = query_limit(request)
    cursor = query_cursor(request, _DELIVERY_ID.fullmatch)
    webhooks = request.app.get(WEBHOOKS)
    if webhooks is None:
        return json_response({"deliveries": [], "nextCursor": None, "configured": False})
    page, next_cursor = await webhooks.page(raw.lower() if raw else None, limit, cursor)
    return json_response({"deliveries": [d.view() for d in page], "nextCursor": next_cursor, "configured": True})


async def retry_delivery(request: web.Request) -> web.Response:
    delivery_id = request.match_info["id"]
    webhooks = request.app.get(WEBHOOKS)
    missing = ApiError(404, "delivery_not_found", f"no webhook delivery with id {delivery_id!r}")
    if webhooks is None or not _DELIVERY_ID.fullmatch(delivery_id):
        raise missing
    by = request[PRINCIPAL].describe(request.app[CLIENTS].address(request))
    try:
        delivery = await webhooks.retry(delivery_id, by)
    except KeyError:
        raise missing from None
    except ValueError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    log.info("webhook %s to %s sent again by %s", delivery.type, delivery.url, by, extra={"runId": delivery.run_id, "event": "webhook"})
    return json_response(delivery.view(), status=202)
