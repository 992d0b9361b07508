"""Recovery at startup: rebuild the index and resume what was in flight.

Re-running is safe because every step attempt is recorded before it runs and
its result only after it finished: a run found RUNNING resumes at its cursor,
whose step either never started, or was interrupted and runs again. Steps are
written to be idempotent by run (an effect already recorded is not redone;
an email records its Message-ID before it is sent), so running an interrupted
attempt again repeats at most the one outside effect that was in flight.

Timers are absolute due times in the snapshot; they are re-armed as they are,
so a backoff keeps its original deadline, and one that passed during the
downtime fires at once. Waiting runs get no actor: they stay on disk until a
signal or a timer needs them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from userflow.actors.run_actor import EngineParts
from userflow.actors.status import RunStatus
from userflow.actors.workflow import RETRY_TIMER

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    runs: int = 0
    resume: list[str] = field(default_factory=list)
    timers: int = 0
    waiting: int = 0
    seconds: float = 0.0


def recover(parts: EngineParts) -> RecoveryReport:
    started = time.perf_counter()
    report = RecoveryReport()
    for run in parts.store.scan():
        if run.get("workflow") not in parts.workflows:
            log.error("run %s belongs to unknown workflow %r; left untouched", run.get("id"), run.get("workflow"))
            continue
        parts.index.put(run, notify=False)
        report.runs += 1
        for name, due in run.get("timers", {}).items():
            parts.timers.schedule(run["id"], name, due)
            report.timers += 1
        if run["status"] == RunStatus.WAITING:
            report.waiting += 1
        elif run["status"] == RunStatus.RUNNING and RETRY_TIMER not in run.get("timers", {}):
            report.resume.append(run["id"])
    report.seconds = time.perf_counter() - started
    log.info(
        "recovered %d runs in %.2f s: %d resumed, %d timers re-armed, %d waiting",
        report.runs,
        report.seconds,
        len(report.resume),
        report.timers,
        report.waiting,
    )
    return report
