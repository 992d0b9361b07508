"""The aiohttp application: routes, middlewares, and the engine's life cycle."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from userflow.actors.runtime import Runtime
from userflow.actors.signup import SIGNUP, SignupServices
from userflow.actors.signup.email import Mailer, OutboxTransport
from userflow.actors.signup.risk import HeuristicRisk
from userflow.actors.signup.smtp import SmtpTransport
from userflow.actors.signup.tokens import TokenSigner
from userflow.actors.signup.workflow import RiskChecker
from userflow.http import api, pages
from userflow.http.config import Settings
from userflow.http.errors import error_middleware, error_response
from userflow.http.events import EventHub, stream
from userflow.http.keys import EVENTS, METRICS, RUNTIME, SERVICES, SETTINGS, SIGNUP_LIMIT, VERIFY_LIMIT
from userflow.http.logs import log_entries, quiet_bad_requests
from userflow.http.metrics import Metrics
from userflow.http.ratelimit import Rate, RateLimiter
from userflow.http.openapi import openapi
from userflow.storage import DataDir, FileRunStore

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


def make_services(settings: Settings, data_dir: DataDir, public_url: str) -> SignupServices:
    transport = OutboxTransport() if settings.outbox_mode else SmtpTransport(settings.smtp_url or "", settings.mail_from)
    return SignupServices(
        tokens=TokenSigner(data_dir.secret()),
        mailer=Mailer(transport, settings.failure_rate),
        risk=risk_checker(settings),
        public_url=public_url,
        verify_ttl=settings.verify_ttl,
        reminder_after=settings.reminder_after,
    )


@web.middleware
async def readiness_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Until recovery has rebuilt the index, the API would answer from half the truth."""
    if request.path.startswith("/api/") or request.path == "/verify":
        runtime = request.app.get(RUNTIME)
        if runtime is None or not runtime.ready:
            return error_response(503, "starting", "the server is recovering its runs; retry in a moment", {"Retry-After": "1"})
    return await handler(request)


def build_app(settings: Settings, data_dir: DataDir, public_url: str, *, autostart: bool = True) -> web.Application:
    """The application; with ``autostart`` the engine starts (and recovers) at app startup."""
    quiet_bad_requests()
    metrics = Metrics()
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[metrics.middleware(), error_middleware, pages.static_headers, readiness_middleware],
    )
    app[SETTINGS] = settings
    app[SERVICES] = make_services(settings, data_dir, public_url)
    app[METRICS] = metrics
    app[SIGNUP_LIMIT] = RateLimiter(Rate.parse(settings.signup_rate), "signup")
    app[VERIFY_LIMIT] = RateLimiter(Rate.parse(settings.verify_rate), "verification")

    async def engine(app: web.Application) -> AsyncIterator[None]:
        runtime = Runtime(
            FileRunStore(data_dir.path),
            [SIGNUP],
            app[SERVICES],
            max_live=settings.max_live_actors,
            index_every=settings.index_save_every,
            loop=asyncio.get_running_loop(),
        )
        app[RUNTIME] = runtime
        hub = app[EVENTS] = EventHub(asyncio.get_running_loop())
        runtime.index.subscribe(hub.publish_run)
        runtime.index.subscribe(metrics.observe)
        runtime.index.subscribe(log_entries)
        metrics.add_gauges(runtime, lambda: hub.clients)
        if autostart:
            await start_engine(app)
        yield
        await asyncio.to_thread(runtime.stop)

    async def close_streams(app: web.Application) -> None:
        if EVENTS in app:
            app[EVENTS].close()

    app.cleanup_ctx.append(engine)
    app.on_shutdown.append(close_streams)
    add_routes(app)
    return app


async def start_engine(app: web.Application) -> None:
    # Recovery builds one long-lived summary per run: collecting while they are
    # made only rescans them (a third of the time to ready with 10,000 runs).
    # Once ready, the modules and the recovered index move to the permanent
    # generation, where later collections no longer walk them.
    gc.disable()
    try:
        report = await asyncio.to_thread(app[RUNTIME].start)
    finally:
        gc.freeze()
        gc.enable()
    log.info("ready: %d runs recovered, %d resumed", report.runs, len(report.resume))


async def events_stream(request: web.Request) -> web.StreamResponse:
    return await stream(request, request.app[EVENTS])


async def metrics_page(request: web.Request) -> web.Response:
    return await request.app[METRICS].handler(request)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/signup", api.signup)
    app.router.add_get("/api/verify", api.verify_get)
    app.router.add_post("/api/verify", api.verify_post)
    app.router.add_get("/api/workflows", api.list_workflows)
    app.router.add_get("/api/workflows/{id}", api.get_workflow)
    app.router.add_post("/api/workflows/{id}/retry", api.retry_workflow)
    app.router.add_post("/api/workflows/{id}/cancel", api.cancel_workflow)
    app.router.add_post("/api/users/{id}/resend-verification", api.resend_verification)
    app.router.add_get("/api/users", api.list_users)
    app.router.add_get("/api/users/{id}", api.get_user)
    app.router.add_get("/api/outbox", api.outbox)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/events", events_stream)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/verify", pages.verify_page)
    app.router.add_post("/verify", pages.verify_submit)
    app.router.add_get("/", pages.dashboard)
    app.router.add_get("/static/{name}", pages.static_file)
