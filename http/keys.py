"""Typed keys of the application's shared state."""

import asyncio

from aiohttp import web

from userflow.actors.runtime import Runtime
from userflow.actors.signup import SignupServices
from userflow.http.auth import Authenticator
from userflow.http.clients import Clients
from userflow.http.config import Settings
from userflow.http.events import EventHub
from userflow.http.metrics import Metrics
from userflow.http.ratelimit import RateLimiter
from userflow.storage.stores import Stores

SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)
SERVICES = web.AppKey("services", SignupServices)
EVENTS = web.AppKey("events", EventHub)
METRICS = web.AppKey("metrics", Metrics)
RETENTION = web.AppKey("retention", asyncio.Task)  # the sweep of --retain-finished, while it runs
SIGNUP_LIMIT = web.AppKey("signup_limit", RateLimiter)
VERIFY_LIMIT = web.AppKey("verify_limit", RateLimiter)
SIGNIN_LIMIT = web.AppKey("signin_limit", RateLimiter)
AUTH = web.AppKey("auth", Authenticator)
CLIENTS = web.AppKey("clients", Clients)
PUBLIC_URL = web.AppKey("public_url", str)
STORES = web.AppKey("stores", Stores)
