"""Retention: finished runs older than the kept period lose their step details.

A signup service keeps its users for years, but how each signup went (every
attempt, error and timeline entry) matters for days. With ``--retain-finished
DAYS`` a run finished longer ago than that keeps what it decided (the user's
record with its risk decision, each step's status and times) and drops the
rest, through its own actor like any change (``Run.drop_details``): one
commit, so a crash leaves the run whole or dropped, never half. The detail
then says when its details were dropped (``detailsDropped``).

Runs are taken a few at a time, oldest finished first, so a first sweep over
years of runs does not crowd out the live ones. The catalog lists the finished
runs that still have their details (``KEPT``), so a sweep reads those only.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from userflow.actors.run_commands import DROP_DETAILS
from userflow.actors.runtime import Runtime
from userflow.actors.definitions import KEPT
from userflow.actors.workflow import ActionRejected
from userflow.storage import StorageError

log = logging.getLogger(__name__)

#: Runs handed to their actors at once by a sweep.
BATCH = 16


def due(runtime: Runtime, days: float, now: datetime | None = None) -> list[str]:
    """The finished runs whose details are past the kept period, oldest finished first
    (blocking: it reads the catalog). The finished runs still with their details are
    walked oldest first, and the walk ends at the first created after the cutoff:
    that one, and every later one, finished after it too."""
    cutoff = ((now or datetime.now(timezone.utc)) - timedelta(days=days)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    found = []
    for summary in runtime.index.each(KEPT, oldest_first=True):
        if summary["createdAt"] >= cutoff:
            break
        if summary["finishedAt"] and summary["finishedAt"] < cutoff:
            found.append((summary["finishedAt"], summary["id"]))
    return [run_id for _, run_id in sorted(found)]


async def sweep(runtime: Runtime, days: float) -> int:
    """Drop the details of every run past the kept period; how many were dropped."""
    why = f"finished more than {days:g} days ago (--retain-finished)"
    dropped = 0
    runs = await asyncio.to_thread(due, runtime, days)
    for start in range(0, len(runs), BATCH):
        batch = runs[start : start + BATCH]
        results = await asyncio.gather(*(runtime.command(run_id, DROP_DETAILS, {"why": why}) for run_id in batch), return_exceptions=True)
        for run_id, result in zip(batch, results):
            if isinstance(result, (ActionRejected, StorageError)):
                log.debug("details of %s not dropped: %s", run_id, result)  # dropped meanwhile, or tried again next sweep
            elif isinstance(result, BaseException):
                raise result
            else:
                dropped += 1
    if dropped:
        log.info("retention: details of %d finished runs dropped", dropped)
    return dropped


async def keep_sweeping(runtime: Runtime, days: float, every: float) -> None:
    """Sweep every ``every`` seconds until cancelled."""
    while True:
        try:
            await sweep(runtime, days)
        except Exception:  # noqa: BLE001 - retention must never stop the server; the next sweep tries again
            log.exception("retention sweep failed")
        await asyncio.sleep(every)
