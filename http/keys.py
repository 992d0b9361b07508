"""Typed keys of the application's shared state."""

from aiohttp import web

from userflow.actors.runtime import Runtime
from userflow.actors.signup import SignupServices
from userflow.http.config import Settings
from userflow.http.events import EventHub
from userflow.http.metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)
SERVICES = web.AppKey("services", SignupServices)
EVENTS = web.AppKey("events", EventHub)
METRICS = web.AppKey("metrics", Metrics)
