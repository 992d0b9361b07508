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

Runs whose file has not changed since the index was last saved come from
the saved index (``saved_index``); only the others are read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from userflow.actors.parts import EngineParts
from userflow.actors.saved_index import SavedIndex
from userflow.actors.status import RunStatus
from userflow.actors.workflow import RETRY_TIMER

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    runs: int = 0
    resume: list[str] = field(default_factory=list)
    timers: int = 0
    waiting: int = 0
    from_index: int = 0
    seconds: float = 0.0

    def add(self, run_id: str, status: str, timers: Collection[str]) -> None:
        """Count a recovered run; ``timers`` are the names of its armed timers."""
        self.runs += 1
        self.timers += len(timers)
        if status == RunStatus.WAITING:
            self.waiting += 1
        elif status == RunStatus.RUNNING and RETRY_TIMER not in timers:
            self.resume.append(run_id)


def recover(parts: EngineParts) -> RecoveryReport:
    started = time.perf_counter()
    report = RecoveryReport()
    restored = SavedIndex(parts).restore()
    armed = []
    for run_id, status, flat in parts.index.armed(restored):
        report.add(run_id, status, flat[::2])
        if flat:
            armed.append((run_id, flat))
    parts.timers.schedule_many((run_id, flat[n], flat[n + 1]) for run_id, flat in armed for n in range(0, len(flat), 2))  # type: ignore[misc]
    report.from_index = len(restored)
    for run in parts.store.scan(skip=set(restored)):
        if run.get("workflow") not in parts.workflows:
            log.error("run %s belongs to unknown workflow %r; left untouched", run.get("id"), run.get("workflow"))
            continue
        if not parts.workflows.can_run(run):
            log.error("%s", parts.workflows.why_not(run))
            continue
        parts.index.put(run, notify=False)
        timers = run.get("timers", {})
        for name, due in timers.items():
            parts.timers.schedule(run["id"], name, due)
        report.add(run["id"], run["status"], timers)
    report.seconds = time.perf_counter() - started
    log.info(
        "recovered %d runs in %.2f s (%d from the saved index): %d resumed, %d timers re-armed, %d waiting",
        report.runs,
        report.seconds,
        report.from_index,
        len(report.resume),
        report.timers,
        report.waiting,
    )
    return report
