"""Shared helpers for the userflow tests: polling with a deadline, never sleeping blind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pykka

from userflow.actors.run_actor import RunActor
from userflow.actors.runtime import Runtime

_TICK = 0.005


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, message: str = "") -> Any:
    """Poll ``predicate`` from a thread until it is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        pause.wait(_TICK)


async def async_wait_until(predicate: Callable[[], Any], timeout: float = 5.0, message: str = "") -> Any:
    """Poll ``predicate`` from the event loop until it is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        await asyncio.sleep(_TICK)


async def wait_for_status(runtime: Runtime, run_id: str, *statuses: str, timeout: float = 5.0) -> dict[str, Any]:
    """The run's index summary once its status is one of ``statuses``."""

    def reached() -> dict[str, Any] | None:
        summary = runtime.index.get(run_id)
        return summary if summary is not None and summary["status"] in statuses else None

    try:
        return await async_wait_until(reached, timeout)
    except AssertionError:
        last = runtime.index.get(run_id)
        raise AssertionError(f"run {run_id} did not reach {statuses} in {timeout} s; last {last and last['status']}") from None


async def wait_idle(timeout: float = 5.0) -> None:
    """Until no run actor is alive (every run has been passivated or finished)."""
    await async_wait_until(lambda: not live_run_actors(), timeout, "run actors still alive")


def live_run_actors() -> list[pykka.ActorRef[Any]]:
    return pykka.ActorRegistry.get_by_class(RunActor)


async def run_in_thread(function: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


def epoch(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


def entries_of(timeline: list[dict[str, Any]], type: str, step: str | None = None) -> list[dict[str, Any]]:
    return [e for e in timeline if e["type"] == type and (step is None or e["step"] == step)]


def python(code: str, *, cwd: str, faults: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (the venv's), optionally with crash points armed."""
    env = dict(os.environ)
    env.pop("USERFLOW_FAULTS", None)
    if faults:
        env["USERFLOW_FAULTS"] = faults
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )

