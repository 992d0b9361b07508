"""Recovery at startup: bring back the active runs and resume what was in flight.

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

Only the runs the store's catalog has as RUNNING or WAITING are read: a
finished run needs nothing from a start, however many there are.

On a store many nodes share, nothing is loaded: waiting runs belong to no
node, and every node's poller claims them when a timer is due. A start
claims back only the runs this node id was executing when its previous
process ended, and resumes them at once rather than after they would be
taken over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from userflow.actors.parts import EngineParts
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
    claimed: list[tuple[str, dict[str, float]]] = field(default_factory=list)  # shared store: run id, due timers

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
    claims = parts.store.claims()
    if claims is not None:
        report.claimed = [(c.run_id, c.due) for c in claims.claim_mine()]
        report.runs = len(report.claimed)
        report.seconds = time.perf_counter() - started
        log.info("node %s: claimed back %d runs it was executing", claims.node_id, report.runs)
        return report
    for run in parts.index.stored_active():
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
        "recovered %d active runs in %.2f s: %d resumed, %d timers re-armed, %d waiting",
        report.runs,
        report.seconds,
        len(report.resume),
        report.timers,
        report.waiting,
    )
    return report
