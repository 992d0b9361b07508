"""Run storage: one small TinyDB file per run.

A TinyDB file is rewritten whole on every write, so one shared file slows down
as runs accumulate (28 ms per update with 1,000 runs stored). One file per run
keeps every commit the same small size however many runs exist. Each file
holds two tables:

- ``run``: a single document, the run's snapshot (cursor, steps, attempts,
  timers, pending signals, workflow state);
- ``timeline``: one document per entry, keyed by its sequence number.

Nothing above this module knows that runs are files: it sees :class:`RunStore`
(open a run's handle, read one, scan all) and :class:`RunHandle` (commit).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

from tinydb import TinyDB
from tinydb.table import Document

from userflow.storage.atomic import AtomicJSONStorage, CorruptFileError, StorageError, read_json

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUFFIX = ".json"


class StoredRun(NamedTuple):
    """A run as persisted: its snapshot and its timeline, oldest entry first."""

    run: dict[str, Any]
    timeline: list[dict[str, Any]]


class RunHandle(Protocol):
    """Write access to one run, held by the one actor that owns the run."""

    def load(self) -> StoredRun | None: ...

    def commit(self, run: dict[str, Any], new_entries: list[dict[str, Any]]) -> None:
        """Durably store the snapshot and append the timeline entries, all or nothing."""
        ...


class RunStore(Protocol):
    def open(self, run_id: str) -> RunHandle: ...

    def read(self, run_id: str) -> StoredRun | None: ...

    def scan(self) -> Iterator[dict[str, Any]]: ...


def valid_run_id(run_id: str) -> bool:
    return bool(_RUN_ID.fullmatch(run_id))  # not match: "$" also matches before a final newline


class RunFile:
    """One run's TinyDB database, written atomically, one write per commit."""

    def __init__(self, path: str) -> None:
        self._db = TinyDB(path, storage=AtomicJSONStorage)
        self._runs = self._db.table("run", cache_size=0)
        self._timeline = self._db.table("timeline", cache_size=0)

    def load(self) -> StoredRun | None:
        run = self._runs.get(doc_id=1)
        if run is None:
            return None
        entries = sorted(self._timeline.all(), key=lambda doc: doc.doc_id)
        return StoredRun(dict(run), [dict(entry) for entry in entries])

    def commit(self, run: dict[str, Any], new_entries: list[dict[str, Any]]) -> None:
        storage: AtomicJSONStorage = self._db.storage  # type: ignore[assignment]
        with storage.batch():
            self._runs.upsert(Document(run, doc_id=1))
            for entry in new_entries:
                self._timeline.upsert(Document(entry, doc_id=entry["seq"]))


def _run_of(data: Any, path: str) -> dict[str, Any]:
    try:
        run = data["run"]["1"]
    except (KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path}: no run snapshot") from exc
    if not isinstance(run, dict) or not isinstance(run.get("id"), str):
        raise CorruptFileError(f"{path}: malformed run snapshot")
    return run


class FileRunStore:
    """Runs under ``DATA/runs/``; unreadable files are moved to ``DATA/quarantine/``."""

    def __init__(self, data_dir: str) -> None:
        self._dir = os.path.join(data_dir, "runs")
        self._quarantine = os.path.join(data_dir, "quarantine")
        os.makedirs(self._dir, mode=0o700, exist_ok=True)

    def _path(self, run_id: str) -> str:
        if not valid_run_id(run_id):
            raise ValueError(f"invalid run id {run_id!r}")
        return os.path.join(self._dir, run_id + _SUFFIX)

    def open(self, run_id: str) -> RunFile:
        return RunFile(self._path(run_id))

    def read(self, run_id: str) -> StoredRun | None:
        if not valid_run_id(run_id):
            return None
        return RunFile(self._path(run_id)).load()

    def scan(self) -> Iterator[dict[str, Any]]:
        """Every stored run's snapshot. A torn or foreign file is quarantined, not fatal."""
        with os.scandir(self._dir) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            path = os.path.join(self._dir, name)
            if name.endswith(".tmp"):
                # A write that never reached its rename: the old file is intact.
                os.unlink(path)
                continue
            if not name.endswith(_SUFFIX):
                continue
            try:
                run = _run_of(read_json(path), path)
                if run["id"] + _SUFFIX != name:
                    raise CorruptFileError(f"{path}: holds run {run['id']!r}")
            except (CorruptFileError, UnicodeDecodeError) as exc:
                self._move_aside(path, exc)
                continue
            except OSError as exc:
                log.error("cannot read %s, skipped: %s", path, exc)
                continue
            yield run

    def _move_aside(self, path: str, reason: Exception) -> None:
        os.makedirs(self._quarantine, mode=0o700, exist_ok=True)
        target = os.path.join(self._quarantine, f"{os.path.basename(path)}.{time.time_ns()}")
        try:
            os.replace(path, target)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot quarantine {path}: {exc.strerror}") from exc
        log.error("unreadable run file moved to %s: %s", target, reason)
