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

Reading every run file is most of a start (10,000 files: about 0.6 s here),
so a clean stop saves the index (each run's summary, keys and timers, with
each run file's stamp) and later starts, after a crash too, take from it
every run whose file has not changed since, and read only the others. The
saved index is a cache: it is ignored if the code changed, and without it
every file is read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Collection
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


def code_fingerprint() -> str:
    """A digest of the engine's and the workflows' source: summaries saved by other
    code may have another shape, so the saved index is only used by the same code."""
    digest = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                digest.update(name.encode())
                with open(os.path.join(folder, name), "rb") as handle:
                    digest.update(handle.read())
    return digest.hexdigest()


def recover(parts: EngineParts) -> RecoveryReport:
    started = time.perf_counter()
    report = RecoveryReport()
    restored = _restore_index(parts)
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


def _restore_index(parts: EngineParts) -> list[str]:
    load = getattr(parts.store, "load_index", None)
    if load is None:
        return []
    try:
        saved = load(code_fingerprint())
        if saved is None:
            return []
        unchanged, lines = saved
        return parts.index.restore(lines, unchanged)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # unreadable keys: nothing was restored
        log.warning("saved index not used: %s", exc)
        return []


def save_index(parts: EngineParts) -> None:
    """At a clean stop, once no run can change: keep the index for the next start."""
    save = getattr(parts.store, "save_index", None)
    if save is None:
        return
    try:
        save(parts.index.export(), code_fingerprint())
    except OSError as exc:
        log.warning("index not saved, the next start reads every run file: %s", exc)
