"""Prometheus metrics, derived from what the engine already publishes.

Counters and histograms are fed by the index listener (the same stream of
commits that feeds the dashboard), so the engine carries no metrics code;
gauges (runs by status, live actors, SSE clients) are read at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from userflow.actors.runtime import Runtime

disable_created_metrics()  # the *_created series only double the scrape size

_FINISHED_TYPES = {"run-completed", "run-failed", "run-cancelled"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds
        self.runs_started = Counter("userflow_runs_started", "Runs started", ["workflow"], registry=r)
        self.runs_finished = Counter(
            "userflow_runs_finished", "Runs that ended, by final status and outcome", ["workflow", "status", "outcome"], registry=r
        )
        self.attempts = Counter("userflow_step_attempts", "Step attempts started", ["workflow", "step"], registry=r)
        self.failures = Counter("userflow_step_failures", "Step attempts that failed", ["workflow", "step"], registry=r)
        self.step_seconds = Histogram(
            "userflow_step_duration_seconds",
            "Time from a step's first attempt to its completion, backoffs included",
            ["workflow", "step"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.webhook_attempts = Counter(
            "userflow_webhook_attempts", "Webhook delivery attempts, by event type and outcome", ["type", "outcome"], registry=r
        )
        self.webhook_deliveries = Counter(
            "userflow_webhook_deliveries", "Webhook deliveries finished: delivered or failed (given up)", ["type", "status"], registry=r
        )
        self.webhook_seconds = Histogram(
            "userflow_webhook_attempt_duration_seconds",
            "Time a webhook receiver took to answer (or to fail)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
            registry=r,
        )
        self.http_requests = Counter("userflow_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.http_seconds = Histogram(
            "userflow_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )

    def observe_delivery(self, delivery: Any, attempt: dict[str, Any] | None) -> None:
        """The webhooks listener: each attempt, and each delivery's end."""
        if attempt is None:
            return
        self.webhook_attempts.labels(delivery.type, "ok" if attempt["error"] is None else "error").inc()
        self.webhook_seconds.observe(attempt["durationMs"] / 1000)
        if delivery.status in ("delivered", "failed"):
            self.webhook_deliveries.labels(delivery.type, delivery.status).inc()

    def add_delivery_gauge(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_DeliveryGauge(counts))

    def observe(self, run: Mapping[str, Any], summary: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        """The index listener."""
        workflow = run["workflow"]
        for entry in entries:
            kind = entry["type"]
            if kind == "run-started":
                self.runs_started.labels(workflow).inc()
            elif kind == "attempt-started":
                self.attempts.labels(workflow, entry["step"]).inc()
            elif kind == "attempt-failed":
                self.failures.labels(workflow, entry["step"]).inc()
            elif kind == "step-completed":
                step = next((s for s in run["steps"] if s["id"] == entry["step"]), None)
                if step and step["kind"] == "task" and step["startedAt"] and step["finishedAt"]:
                    seconds = (datetime.fromisoformat(step["finishedAt"]) - datetime.fromisoformat(step["startedAt"])).total_seconds()
                    self.step_seconds.labels(workflow, entry["step"]).observe(max(seconds, 0.0))
            elif kind in _FINISHED_TYPES:
                self.runs_finished.labels(workflow, run["status"], run.get("outcome") or "failed").inc()

    def add_gauges(self, runtime: Runtime, sse_clients: Callable[[], int]) -> None:
        self.registry.register(_Gauges(runtime, sse_clients))

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def count(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            started = time.perf_counter()
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.http_requests.labels(route, request.method, str(status)).inc()
                self.http_seconds.labels(route).observe(time.perf_counter() - started)

        return count

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Gauges(Collector):
    def __init__(self, runtime: Runtime, sse_clients: Callable[[], int]) -> None:
        self._runtime = runtime
        self._sse_clients = sse_clients

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runs = GaugeMetricFamily("userflow_runs", "Runs stored, by status", labels=["status"])
        counts = self._runtime.index.counts()
        for status in ("RUNNING", "WAITING", "COMPLETED", "FAILED", "CANCELLED"):
            runs.add_metric([status], counts.get(status, 0))
        yield runs
        yield GaugeMetricFamily("userflow_waiting_runs", "Runs waiting for a signal or deadline", value=counts.get("WAITING", 0))
        yield GaugeMetricFamily("userflow_live_actors", "Run actors alive (each one thread)", value=self._runtime.live_actors())
        yield GaugeMetricFamily("userflow_timers", "Timers armed", value=len(self._runtime.timers))
        yield GaugeMetricFamily("userflow_sse_clients", "Connected event-stream clients", value=self._sse_clients())


class _DeliveryGauge(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("userflow_webhook_deliveries_by_status", "Webhook deliveries kept, by status", labels=["status"])
        for status, count in self._counts().items():
            family.add_metric([status], count)
        yield family
