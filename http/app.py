"""The aiohttp application: routes, middlewares, and the engine's life cycle."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp_cors
from aiohttp import web

from userflow.actors import retention
from userflow.actors.runtime import Runtime
from userflow.actors.signup import SIGNUP, SignupServices
from userflow.actors.signup.email import Mailer, OutboxTransport
from userflow.actors.signup.risk import HeuristicRisk
from userflow.actors.signup.smtp import SmtpTransport
from userflow.actors.signup.templates import EmailTemplates
from userflow.actors.signup.tokens import TokenSigner
from userflow.actors.signup.workflow import RiskChecker
from userflow.http.erasure import erase_user
from userflow.http.overview import get_overview
from userflow.http import api, auth, health, pages, signin, webhooks
from userflow.http.webhooks import WEBHOOKS
from userflow.http.auth import Access, Authenticator
from userflow.http.clients import Clients, parse_networks
from userflow.http.config import Settings
from userflow.http.errors import error_middleware, error_response
from userflow.http.events import EventHub, stream
from userflow.http.keys import (
    AUTH,
    CLIENTS,
    EVENTS,
    METRICS,
    PUBLIC_URL,
    RETENTION,
    RUNTIME,
    SERVICES,
    SETTINGS,
    SIGNIN_LIMIT,
    SIGNUP_LIMIT,
    STORES,
    VERIFY_LIMIT,
)
from userflow.http.logs import log_entries, quiet_bad_requests
from userflow.http.metrics import Metrics
from userflow.http.ratelimit import Rate, RateLimiter
from userflow.http.openapi import ROLES, openapi
from userflow.storage.stores import Stores

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024


def risk_checker(settings: Settings) -> RiskChecker:
    """Gemini when a key is set, else the local heuristic (say which, at startup)."""
    if not settings.gemini_api_key:
        log.info("risk check: local heuristic (set GEMINI_API_KEY to ask Gemini)")
        return HeuristicRisk()
    from userflow.actors.signup.gemini import GeminiRisk  # the SDK takes most of a second to import

    log.info("risk check: Gemini model %s%s", settings.gemini_model, f" at {settings.gemini_base_url}" if settings.gemini_base_url else "")
    return GeminiRisk(settings.gemini_api_key, settings.gemini_model, settings.gemini_base_url, settings.gemini_timeout)


def make_services(settings: Settings, stores: Stores, public_url: str) -> SignupServices:
    """The signup steps' integrations; raises ``TemplateError`` for an email template that
    does not compile or render (each is tried with sample values here, at start)."""
    templates = EmailTemplates(settings.product_name, settings.templates_dir)
    transport = OutboxTransport() if settings.outbox_mode else SmtpTransport(settings.smtp_url or "", settings.mail_from)
    return SignupServices(
        tokens=TokenSigner(stores.secret()),
        mailer=Mailer(transport, settings.failure_rate),
        risk=risk_checker(settings),
        public_url=public_url,
        verify_ttl=settings.verify_ttl,
        reminder_after=settings.reminder_after,
        email_max_backoff=settings.email_max_backoff,
        email_retry_for=settings.email_retry_for,
        templates=templates,
    )


@web.middleware
async def readiness_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Until recovery has rebuilt the index, the API would answer from half the truth."""
    if request.path.startswith("/api/") or request.path == "/verify":
        runtime = request.app.get(RUNTIME)
        if runtime is None or not runtime.ready:
            return error_response(503, "starting", "the server is recovering its runs; retry in a moment", {"Retry-After": "1"})
    return await handler(request)


def build_app(settings: Settings, stores: Stores, public_url: str, *, autostart: bool = True) -> web.Application:
    """The application; with ``autostart`` the engine starts (and recovers) at app startup."""
    quiet_bad_requests()
    metrics = Metrics()
    authenticator = Authenticator(stores.operators, settings.operator_token)
    clients = Clients(parse_networks(settings.trusted_proxies))
    access: dict[web.AbstractRoute, Access] = {}
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[
            metrics.middleware(),
            error_middleware,
            pages.static_headers,
            auth.middleware(access, authenticator, clients, public_url),
            readiness_middleware,
        ],
    )
    app[SETTINGS] = settings
    app[PUBLIC_URL] = public_url
    app[STORES] = stores
    app[SERVICES] = make_services(settings, stores, public_url)
    app[METRICS] = metrics
    app[AUTH] = authenticator
    app[CLIENTS] = clients
    app[SIGNUP_LIMIT] = RateLimiter(Rate.parse(settings.signup_rate), "signup")
    app[VERIFY_LIMIT] = RateLimiter(Rate.parse(settings.verify_rate), "verification")
    app[SIGNIN_LIMIT] = RateLimiter(Rate.parse(settings.signin_rate), "failed sign-in")

    async def engine(app: web.Application) -> AsyncIterator[None]:
        runtime = Runtime(
            stores.run_store(),
            [SIGNUP],
            app[SERVICES],
            max_live=settings.max_live_actors,
            loop=asyncio.get_running_loop(),
            node_id=settings.node_id or "",
        )
        app[RUNTIME] = runtime
        hub = app[EVENTS] = EventHub(asyncio.get_running_loop(), journal=await asyncio.to_thread(stores.event_journal))
        runtime.index.subscribe(hub.publish_run)
        runtime.index.subscribe(metrics.observe)
        runtime.index.subscribe(log_entries)
        metrics.add_gauges(runtime, lambda: hub.clients)
        webhooks.attach(app, settings, stores, runtime, hub, metrics)
        if autostart:
            await start_engine(app)
        yield
        if RETENTION in app:
            app[RETENTION].cancel()
        if WEBHOOKS in app:
            await app[WEBHOOKS].stop()
        await asyncio.to_thread(runtime.stop)
        await hub.stop()
        await asyncio.to_thread(app[SERVICES].mailer.close)  # SMTP connections kept open between sends

    async def close_streams(app: web.Application) -> None:
        if EVENTS in app:
            app[EVENTS].close()

    app.cleanup_ctx.append(engine)
    app.on_shutdown.append(close_streams)
    access.update(add_routes(app))
    access.update(allow_cross_origin(app, settings.cors_origins, access))
    app[ROLES] = {(r.method, r.resource.canonical): a.value for r, a in access.items() if r.resource is not None}
    return app


async def start_engine(app: web.Application) -> None:
    # Recovery builds one long-lived summary per run: collecting while they are
    # made only rescans them (a third of the time to ready with 10,000 runs).
    # Once ready, the modules and the recovered index move to the permanent
    # generation, where later collections no longer walk them.
    runtime = app[RUNTIME]
    settings = app[SETTINGS]
    await app[EVENTS].load()  # before runs resume: a client resuming gets the frames before and after
    hooks = app.get(WEBHOOKS)
    if hooks is not None:
        await hooks.load()  # before runs resume and commit new events
    gc.disable()
    try:
        report = await asyncio.to_thread(runtime.start)
    finally:
        gc.freeze()
        gc.enable()
    if hooks is not None:

        def events_of(run_id: str) -> list[dict[str, Any]]:
            stored = runtime.parts.store.read(run_id)
            return list(stored.run.get("events", ())) if stored else []

        shared = runtime.parts.shared  # other nodes' deaths leave events to this one
        await hooks.start(runtime.index.changed_since, events_of, settings.node_timeout if shared else None)
    log.info("ready: %d runs recovered, %d resumed", report.runs, len(report.resume))
    if settings.retain_finished is not None:
        app[RETENTION] = asyncio.create_task(retention.keep_sweeping(runtime, settings.retain_finished, settings.retention_every))


async def events_stream(request: web.Request) -> web.StreamResponse:
    principal = request[auth.PRINCIPAL]
    return await stream(request, request.app[EVENTS], lambda: request.app[AUTH].still_valid(principal))


async def metrics_page(request: web.Request) -> web.Response:
    return await request.app[METRICS].handler(request)


PUBLIC, VIEWER, OPERATOR = Access.PUBLIC, Access.VIEWER, Access.OPERATOR

# Every route with the access it needs (SPEC section 6): the middleware lets a
# route through only as this table says, and a route missing here is operator-only.
ROUTES = (
    ("POST", "/api/signup", api.signup, PUBLIC),
    ("GET", "/api/verify", api.verify_get, PUBLIC),
    ("POST", "/api/verify", api.verify_post, PUBLIC),
    ("GET", "/verify", pages.verify_page, PUBLIC),
    ("POST", "/verify", pages.verify_submit, PUBLIC),
    ("GET", "/api/openapi.json", openapi, PUBLIC),
    ("GET", "/healthz", health.healthz, PUBLIC),
    ("GET", "/readyz", health.readyz, PUBLIC),
    ("GET", "/signin", signin.signin_page, PUBLIC),
    ("POST", "/api/session", signin.sign_in, PUBLIC),
    ("DELETE", "/api/session", signin.sign_out, PUBLIC),
    ("GET", "/static/{name}", pages.static_file, PUBLIC),
    ("GET", "/api/session", signin.whoami, VIEWER),
    ("GET", "/", pages.dashboard, VIEWER),
    ("GET", "/api/overview", get_overview, VIEWER),
    ("GET", "/api/workflows", api.list_workflows, VIEWER),
    ("GET", "/api/workflows/{id}", api.get_workflow, VIEWER),
    ("POST", "/api/workflows/failed/retry", api.retry_failed, OPERATOR),
    ("POST", "/api/workflows/{id}/retry", api.retry_workflow, OPERATOR),
    ("POST", "/api/workflows/{id}/cancel", api.cancel_workflow, OPERATOR),
    ("GET", "/api/users", api.list_users, VIEWER),
    ("GET", "/api/users/{id}", api.get_user, VIEWER),
    ("DELETE", "/api/users/{id}", erase_user, OPERATOR),
    ("POST", "/api/users/{id}/resend-verification", api.resend_verification, OPERATOR),
    ("GET", "/api/outbox", api.outbox, VIEWER),
    ("GET", "/api/events", events_stream, VIEWER),
    ("GET", "/metrics", metrics_page, VIEWER),
    ("GET", "/api/nodes", health.list_nodes, VIEWER),
    ("GET", "/api/webhooks/deliveries", webhooks.list_deliveries, VIEWER),
    ("POST", "/api/webhooks/deliveries/{id}/retry", webhooks.retry_delivery, OPERATOR),
)

# The public endpoints a product's own pages may call from a browser (--cors-origin).
CROSS_ORIGIN = frozenset({"/api/signup", "/api/verify"})


def add_routes(app: web.Application) -> dict[web.AbstractRoute, Access]:
    access = {}
    for method, path, handler, needs in ROUTES:
        for each in ("HEAD", "GET") if method == "GET" else (method,):  # HEAD as aiohttp's add_get gives it
            access[app.router.add_route(each, path, handler)] = needs
    return access


def allow_cross_origin(
    app: web.Application, origins: tuple[str, ...], access: dict[web.AbstractRoute, Access]
) -> dict[web.AbstractRoute, Access]:
    """CORS for the cross-origin public endpoints only; their preflights are public too."""
    if not origins:
        return {}
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False, allow_headers=("Content-Type",), expose_headers=("Location", "Retry-After"), max_age=600
    )
    cors = aiohttp_cors.setup(app, defaults={})
    for route in [r for r in access if r.resource is not None and r.resource.canonical in CROSS_ORIGIN]:
        cors.add(route, {origin: options for origin in origins})
    return {
        route: Access.PUBLIC
        for route in app.router.routes()
        if route.method == "OPTIONS" and route.resource is not None and route.resource.canonical in CROSS_ORIGIN
    }
