"""Passivation at scale: ten thousand waiting runs, and never more actors than the cap."""

from __future__ import annotations

import asyncio
import threading
import time

import pykka
import pytest

from userflow.actors.run_actor import RunActor
from userflow.actors.runtime import Runtime
from userflow.actors.workflow import Step, Wait, Workflow
from userflow.storage import FileRunStore

RUNS = 10_000
CAP = 32

pytestmark = pytest.mark.timeout(300)


def record(ctx):
    return {"n": ctx.input["n"]}


WAITER = Workflow("waiter", (Step("record", "Record", record), Wait("wait", "Wait", "go")))


async def test_ten_thousand_waiting_runs_hold_no_more_actor_threads_than_the_cap(tmp_path):
    runtime = Runtime(FileRunStore(str(tmp_path)), [WAITER], max_live=CAP, loop=asyncio.get_running_loop())
    await asyncio.to_thread(runtime.start)
    baseline_threads = threading.active_count()
    peak_actors = peak_threads = 0
    sampling = True

    def sample() -> None:
        nonlocal peak_actors, peak_threads
        while sampling:
            peak_actors = max(peak_actors, len(pykka.ActorRegistry.get_by_class(RunActor)))
            peak_threads = max(peak_threads, threading.active_count())
            time.sleep(0.001)  # a sampling period, not a synchronisation

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for start in range(0, RUNS, 1000):
            await asyncio.gather(*(runtime.start_run("waiter", {"n": n}) for n in range(start, start + 1000)))
        deadline = time.monotonic() + 240
        while runtime.index.counts().get("WAITING", 0) < RUNS or runtime.live_actors():
            assert time.monotonic() < deadline, runtime.index.counts()
            await asyncio.sleep(0.05)
        final = runtime.index.counts()
    finally:
        sampling = False
        sampler.join()
        await asyncio.to_thread(runtime.stop)
    assert final == {"WAITING": RUNS}
    assert peak_actors <= CAP, f"{peak_actors} run actors alive at once"
    # the sampler itself is one thread; actors are the only ones that come and go
    assert peak_threads <= baseline_threads + 1 + CAP, (peak_threads, baseline_threads)
