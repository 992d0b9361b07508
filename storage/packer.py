"""Moving finished runs from their files into the pack (``packs.py``), in the background.

A run file is looked at when the checkpointer has written it (the store
names it here), and once by a sweep of every folder of ``runs/`` after each
start: that finds what a crash kept from being packed, and a data dir of
earlier releases, whose finished runs are all files. Either way, a batch at
a time on a thread of its own, never on a request's path, and a start never
waits for it.

For each file looked at, the newer of it and the run's row wins and the
other goes:

- the file is newer and the run finished: its row is written (or replaced),
  then the file deleted;
- the file is newer and the run active (a retry, or an older row left by a
  crash): the row is deleted, the file stays;
- the row is as new as the file (a crash came between the row and the
  file's deletion) or newer: the file is deleted.

Order is what makes a SIGKILL at any instant safe: a batch's rows are
written in one transaction, synced, before any of its files is deleted, so
a run is always whole in at least one place; a row is deleted only for a
file that is newer and synced. Whatever a kill interrupts, the next pass
finds the run in both places and settles it as above. A run committed but
not yet written to its file is left alone: the checkpoint that writes it
names it again.

The packer works under the store's checkpoint lock, so no file is written
while it decides about it; a store's ``scan`` pauses it (``paused``), so no
run moves from one place to the other between the two halves of a scan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator

import orjson

from userflow.storage import codec
from userflow.storage.atomic import CorruptFileError, sync_filesystem
from userflow.storage.faults import crash_point
from userflow.storage.packs import Pack, PackRowDamaged, compress
from userflow.storage.run_folders import RunFolders

log = logging.getLogger(__name__)

#: The statuses of a run that is finished, as its document spells them.
FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
BATCH = 500  # files looked at per pass: one transaction each
_PAUSE = 0.02  # between two passes of a backlog: room for the requests meanwhile


class Packer:
    """Packs the finished runs of ``folders`` into ``pack``; ``pending(run_id)`` says
    whether a run has a commit its file does not have yet."""

    def __init__(
        self, pack: Pack, folders: RunFolders, lock: threading.Lock, pending: Callable[[str], bool], every: float = 1.0
    ) -> None:
        self._pack = pack
        self._folders = folders
        self._lock = lock
        self._pending = pending
        self._every = every
        self._written: set[str] = set()  # named by the checkpointer since the last pass
        self._written_lock = threading.Lock()
        self._sweep: list[str] | None = folders.folders()  # the folders not swept yet; None once all were
        self._swept: list[str] = []  # the run ids of the folder being swept, not looked at yet
        self._scans = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def written(self, run_ids: Iterable[str]) -> None:
        """The checkpointer wrote these runs' files."""
        with self._written_lock:
            self._written.update(run_ids)

    def start(self) -> None:
        """Sweep every folder, then pack what the checkpointer writes, from now on."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="userflow-pack", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No pass runs inside (one under way is finished first)."""
        with self._lock:
            self._scans += 1
        try:
            yield
        finally:
            with self._lock:
                self._scans -= 1

    def _loop(self) -> None:
        backlog = False
        while not self._stop.wait(_PAUSE if backlog else self._every):
            try:
                self.pack()
                backlog = self._sweep is not None or len(self._written) >= BATCH
            except (OSError, sqlite3.Error) as exc:
                log.error("packing finished runs failed, their files stay meanwhile: %s", exc)
                backlog = False

    def pack(self, batch: int = BATCH) -> int:
        """One pass: up to ``batch`` files, those the checkpointer wrote first, then the
        sweep's; how many it looked at."""
        with self._lock:
            if self._scans:
                return 0
            with self._written_lock:
                run_ids = [self._written.pop() for _ in range(min(batch, len(self._written)))]
            run_ids += self._swept_ids(batch - len(run_ids))
            run_ids = list(dict.fromkeys(run_ids))  # a file written since the sweep listed it
            self._settle(run_ids)
            return len(run_ids)

    def settle_packed(self) -> None:
        """(Under the store's checkpoint lock.) Settle now every run the checkpointer wrote
        that has a row too, so the row's older copy is gone (erasure)."""
        with self._written_lock:
            named = list(self._written)
        both = [run_id for run_id in named if self._pack.version(run_id) is not None]
        self._settle(both)
        with self._written_lock:
            self._written.difference_update(both)

    def _swept_ids(self, wanted: int) -> list[str]:
        run_ids: list[str] = []
        while len(run_ids) < wanted and self._sweep is not None:
            if not self._swept:
                if not self._sweep:
                    self._sweep = None
                    log.info("every folder of runs/ swept for finished runs to pack")
                    break
                self._swept = self._folders.run_ids(self._sweep.pop(0))
            take = self._swept[: wanted - len(run_ids)]
            del self._swept[: len(take)]
            run_ids += take
        return run_ids

    def _settle(self, run_ids: list[str]) -> None:
        rows: list[tuple[str, int, bytes]] = []
        gone: list[tuple[str, int]] = []
        delete: list[str] = []
        for run_id in run_ids:
            if self._pending(run_id):
                continue
            path = self._folders.path(run_id)
            try:
                with open(path, "rb") as handle:
                    document = handle.read()
                run = codec.run_of(orjson.loads(document), path)
                version = int(run["version"])
            except FileNotFoundError:
                continue
            except (CorruptFileError, ValueError, KeyError, TypeError) as exc:
                log.debug("not packed, left to the scan's quarantine: %s", exc)
                continue
            packed = self._pack.version(run_id)
            if packed is not None and packed >= version and self._intact(run_id):
                delete.append(path)  # the pack has it, as new or newer
            elif packed is not None and packed > version:
                log.error("packed run %s is damaged and newer than its file: both kept", run_id)
            elif run.get("status") in FINISHED and run["id"] == run_id:
                rows.append((run_id, version, compress(document)))
                delete.append(path)
            elif packed is not None:
                gone.append((run_id, version))
        if gone:
            sync_filesystem(self._folders.directory)  # the newer files are durable before the older rows go
        if rows or gone:
            self._pack.put(rows, gone=gone)
            crash_point("storage", "after-pack")
        for path in delete:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _intact(self, run_id: str) -> bool:
        try:
            return self._pack.get(run_id) is not None
        except PackRowDamaged:
            return False
