"""Run storage: one small TinyDB file per active run (``run_file.py``), finished runs packed.

A TinyDB file is rewritten whole on every write, so one shared file slows down
as runs accumulate (28 ms per update with 1,000 runs stored). One file per run
keeps every commit the same small size however many runs exist. Each file
holds two tables:

- ``run``: a single document, the run's snapshot (cursor, steps, attempts,
  timers, pending signals, workflow state);
- ``timeline``: one document per entry, keyed by its sequence number.

In a :class:`FileRunStore` a commit is first made durable in the journal
(``journal.py``: many commits behind one sync), and kept in memory as the
run's latest document; a checkpointer thread then writes each changed run's
file (atomically, unsynced), syncs the filesystem once, and only then drops
the journal segments those documents were in. At startup, documents found in
the journal that are newer than their run's stored copy are written back first.

Files live in the 256 folders of ``runs/`` (``run_folders.py``). Once a run
has finished, its file moves into the pack (``packs.py``, ``packer.py``):
compressed, one row among many. A run is read from memory if committed
since the last checkpoint, else from the newer of its file and its row (by
``version``), so a run caught in both places by a crash reads the same.

Nothing above this module knows that runs are files: it sees :class:`RunStore`
(open a run's handle, read one, scan all) and :class:`RunHandle` (commit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Container, Iterator, Mapping
from typing import Any

import orjson

from userflow.storage import codec
from userflow.storage.atomic import CorruptFileError, StorageError, read_json, sync_filesystem, write_atomic
from userflow.storage.journal import Journal, records
from userflow.storage.catalog import CatalogDamaged, DataDirCatalog, SqliteCatalog
from userflow.storage.packer import Packer
from userflow.storage.packs import FILE as PACK_FILE, Pack, PackRowDamaged
from userflow.storage.port import Describe, Entry, StoredRun, valid_run_id
from userflow.storage.quarantine import Quarantine
from userflow.storage.run_file import RunFile
from userflow.storage.run_folders import SUFFIX, TEMP, RunFolders, run_file, shard

__all__ = ["FileRunStore", "run_file", "shard"]

log = logging.getLogger(__name__)

_OLD_INDEX = "index.snapshot"  # what earlier releases kept instead of the catalog
_CATALOG = "catalog.sqlite"
_DESCRIBE_BATCH = 1000


class _Stale:
    """A commit made before the engine attached: its run is described at ``catalog``."""


STALE = _Stale()


class FileRunStore:
    """Runs under ``DATA/runs/`` and ``DATA/packs.sqlite``, commits through ``DATA/journal/``.

    Unreadable run files and pack rows are moved to ``DATA/quarantine/``.
    Finished runs are packed once the engine has attached (``catalog``).
    """

    def __init__(self, data_dir: str, checkpoint_every: float = 1.0) -> None:
        self._folders = RunFolders(os.path.join(data_dir, "runs"))
        self._dir = self._folders.directory
        self._quarantine = Quarantine(data_dir)
        self._pack = Pack(os.path.join(data_dir, PACK_FILE))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(data_dir, _OLD_INDEX))
        self._catalog = _open_catalog(os.path.join(data_dir, _CATALOG))
        self._describe: Describe | None = None  # until the engine attaches: changes are listed stale
        self._latest: dict[str, tuple[int, bytes]] = {}  # committed, not yet in the file
        self._lock = threading.Lock()
        self._checkpointing = threading.Lock()
        self._journal = Journal(os.path.join(data_dir, "journal"), on_durable=self._durable)
        self._replay()
        self._packer = Packer(self._pack, self._folders, self._checkpointing, self._committed, checkpoint_every)
        self._stop = threading.Event()
        self._every = checkpoint_every
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="userflow-checkpoint", daemon=True)
        self._checkpointer.start()

    def _path(self, run_id: str) -> str:
        return self._folders.path(run_id)

    def open(self, run_id: str) -> RunFile:
        return RunFile(
            self._path(run_id),
            sink=lambda version, document, note: self._journal.append(run_id, version, document, note),
            source=lambda: self._document(run_id),
            note_for=self._entry_of,
        )

    def claims(self) -> None:
        return None  # the data dir's lock: one process executes every run

    def read(self, run_id: str) -> StoredRun | None:
        if not valid_run_id(run_id):
            return None
        return RunFile(self._path(run_id), source=lambda: self._document(run_id)).load()

    def _committed(self, run_id: str) -> bool:
        """Whether the run has a commit its file does not have yet."""
        with self._lock:
            return run_id in self._latest

    def _document(self, run_id: str) -> bytes | None:
        """The run's latest committed document: in memory if newer than its file, else the
        newer of its file and its packed row. The file is read first: the packer deletes
        it only once the row is durable, so one of the two reads finds the run."""
        with self._lock:
            latest = self._latest.get(run_id)
        if latest is not None:
            return latest[1]
        try:
            with open(self._path(run_id), "rb") as handle:
                document: bytes | None = handle.read()
        except FileNotFoundError:
            document = None
        try:
            packed = self._pack.get(run_id)
        except PackRowDamaged as exc:
            if document is None:
                raise
            log.error("%s; its file is read instead", exc)
            packed = None
        if packed is None or (document is not None and _version(document, run_id) >= packed[0]):
            return document
        return packed[1]

    # -- commits and checkpoints -------------------------------------------------------

    def _entry_of(self, run: dict[str, Any]) -> Entry | None | _Stale:
        """A run's catalog entry as a commit carries it to ``_durable``: STALE until the
        engine has attached (described at the next ``catalog``)."""
        describe = self._describe
        return describe(run) if describe is not None else STALE

    def _durable(self, batch: list[tuple[str, int, bytes, Any]]) -> None:
        """(The journal's thread, once a batch is synced, before its writers return.)
        The documents become the runs' latest, and the catalog lists them; a segment
        switch waits for this, so a checkpoint taken after it sees every document of
        the segments it closes, and syncs the catalog before it drops them."""
        notes: dict[str, Any] = {}
        with self._lock:
            latest = self._latest
            for run_id, version, document, note in batch:
                if version >= latest.get(run_id, (-1, b""))[0]:
                    latest[run_id] = (version, document)
                    notes[run_id] = note
        entries = [note for note in notes.values() if isinstance(note, Entry)]
        gone = [run_id for run_id, note in notes.items() if note is None]
        stale = [run_id for run_id, note in notes.items() if note is STALE]
        try:
            self._catalog.put(entries, gone=gone, stale=stale)
        except sqlite3.Error as exc:
            raise StorageError(5, f"could not list the commit in the catalog: {exc}") from None

    def _describe_into_catalog(self, describe: Describe, runs: Mapping[str, dict[str, Any] | None]) -> None:
        entries, gone = [], []
        for run_id, run in runs.items():
            entry = describe(run) if run is not None else None
            if entry is None:
                gone.append(run_id)
            else:
                entries.append(entry)
        self._catalog.put(entries, gone=gone, fresh=runs)

    def checkpoint(self) -> int:
        """Write changed runs' files, sync once, drop the journal behind them; how many
        files it wrote."""
        with self._checkpointing:  # two at once could drop a segment the other still needs
            return len(self._checkpoint())

    def pack(self) -> int:
        """One pass of the packer now (it runs by itself once the engine attached); how
        many run files it looked at."""
        return self._packer.pack()

    def _checkpoint(self) -> list[str]:
        closed = self._journal.rotate()
        with self._lock:
            changed = dict(self._latest)
        if not changed and not closed:
            return []
        self._write_back(changed, closed)
        self._packer.written(changed)
        with self._lock:
            for run_id, entry in changed.items():
                if self._latest.get(run_id) is entry:
                    del self._latest[run_id]
        return list(changed)

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.checkpoint()
            except OSError as exc:
                log.error("checkpoint failed, the journal keeps everything meanwhile: %s", exc)

    def drop_old_copies(self) -> None:
        """Keep no copy of what runs had before their latest commits: write every
        run's file now (the journal segments holding older documents go), and empty
        the logs of the catalog and the pack; a packed run written since is packed
        again, so its older row goes. Erasure asks for it."""
        with self._checkpointing:
            self._checkpoint()
            try:
                self._packer.settle_packed()
                self._pack.drop_old_copies()
            except sqlite3.Error as exc:
                raise StorageError(5, f"could not drop the pack's old copies: {exc}") from None
        try:
            self._catalog.drop_old_copies()
        except sqlite3.Error as exc:
            raise StorageError(5, f"could not empty the catalog's log: {exc}") from None

    def close(self) -> None:
        """Final checkpoint, then stop: the next start finds an empty journal."""
        self._stop.set()
        self._packer.stop()
        self._checkpointer.join(timeout=10)
        try:
            self.checkpoint()
        except OSError as exc:
            log.error("final checkpoint failed; the journal will be replayed at start: %s", exc)
        self._journal.close()
        self._catalog.close()
        self._pack.close()

    def _replay(self) -> None:
        """Bring every run file up to the newest document the journal holds for it."""
        closed = [n for n in self._journal.segments() if n < self._journal.current]
        if not closed:
            return
        newest: dict[str, tuple[int, bytes]] = {}
        for number in closed:
            for run_id, version, document in records(self._journal.path(number)):
                if valid_run_id(run_id) and version >= newest.get(run_id, (-1, b""))[0]:
                    newest[run_id] = (version, document)
        self._catalog.put([], stale=newest)  # synced by the write-back, before the journal goes
        restored = self._write_back(newest, closed)
        log.info("journal replayed: %d runs brought up to date from %d segments", restored, len(closed))

    def _write_back(self, documents: dict[str, tuple[int, bytes]], segments: list[int]) -> int:
        """Write the documents newer than their files, sync once, then drop ``segments``."""
        written = 0
        for run_id, (version, document) in documents.items():
            if version > self._stored_version(run_id):  # never put an older document back
                write_atomic(self._path(run_id), document, sync=False)
                written += 1
        sync_filesystem(self._dir)
        try:
            self._catalog.sync()
        except sqlite3.Error as exc:
            raise StorageError(5, f"could not sync the catalog: {exc}") from None
        self._journal.delete(segments)
        return written

    def _stored_version(self, run_id: str) -> int:
        packed = self._pack.version(run_id)
        return max(self._file_version(run_id), -1 if packed is None else packed)

    def _file_version(self, run_id: str) -> int:
        try:
            return int(codec.run_of(read_json(self._path(run_id)), run_id)["version"])
        except (CorruptFileError, OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return -1

    def scan(self, skip: Container[str] = ()) -> Iterator[dict[str, Any]]:
        """Every stored run's snapshot but those in ``skip``, once: the packed ones, then
        the files, each run from the newer of its row and its file. A torn or foreign
        file, or a damaged row, is quarantined, not fatal. The packer waits meanwhile."""
        with self._packer.paused():
            yield from self._scan_pack(skip)
            yield from self._scan_files(skip)

    def _scan_pack(self, skip: Container[str]) -> Iterator[dict[str, Any]]:
        for run_id, version, document in self._pack.rows():
            if run_id in skip:
                continue
            run = _run(document, run_id) if document is not None else None
            if run is None or run["id"] != run_id or int(run.get("version", -1)) != version:
                self._move_row_aside(run_id)
            elif self._file_version(run_id) < version:  # else its file is as new: read with the files
                yield run

    def _scan_files(self, skip: Container[str]) -> Iterator[dict[str, Any]]:
        for folder in self._folders.folders():
            with os.scandir(folder) as entries:
                names = [entry.name for entry in entries]
            for name in names:
                path = os.path.join(folder, name)
                if name.endswith(TEMP):
                    # A write that never reached its rename: the old file is intact.
                    os.unlink(path)
                    continue
                if not name.endswith(SUFFIX) or name[: -len(SUFFIX)] in skip:
                    continue
                try:
                    run = codec.run_of(read_json(path), path)
                    if run["id"] + SUFFIX != name or shard(run["id"]) != os.path.basename(folder):
                        raise CorruptFileError(f"{path}: holds run {run['id']!r}")
                except (CorruptFileError, UnicodeDecodeError) as exc:
                    self._quarantine.move(path, exc)
                    continue
                except OSError as exc:
                    log.error("cannot read %s, skipped: %s", path, exc)
                    continue
                packed = self._pack.version(run["id"])
                if packed is None or packed <= int(run.get("version", -1)):  # else read with the pack
                    yield run

    # -- the catalog ----------------------------------------------------------------------

    def catalog(self, describe: Describe) -> DataDirCatalog:
        """Keep the catalog with ``describe`` from now on: first describe the runs listed
        stale (changed by a start's replay, or by a tool that could not describe them),
        or every run file if the catalog was never finished (new, lost or damaged)."""
        with self._lock:
            self._describe = describe
        if not self._catalog.built():
            self._rebuild(describe)
        else:
            stale = self._catalog.stale()
            for start in range(0, len(stale), _DESCRIBE_BATCH):
                ids = stale[start : start + _DESCRIBE_BATCH]
                self._describe_into_catalog(describe, {run_id: self._run(run_id) for run_id in ids})
            if stale:
                log.info("catalog: %d runs described again", len(stale))
        self._packer.start()
        return DataDirCatalog(self._catalog, self._run)

    def _rebuild(self, describe: Describe) -> None:
        started = time.perf_counter()
        self._catalog.close()
        self._catalog = SqliteCatalog.fresh(self._catalog.path)
        batch: dict[str, dict[str, Any] | None] = {}
        count = 0
        for run in self.scan():
            batch[run["id"]] = self._run(run["id"]) if run["id"] in self._latest else run
            count += 1
            if len(batch) == _DESCRIBE_BATCH:
                self._describe_into_catalog(describe, batch)
                batch = {}
        self._describe_into_catalog(describe, batch)
        self._catalog.mark_built()
        log.info("catalog made from %d stored runs in %.1f s", count, time.perf_counter() - started)

    def _run(self, run_id: str) -> dict[str, Any] | None:
        document = self._document(run_id)
        return _run(document, run_id) if document is not None else None

    def _move_row_aside(self, run_id: str) -> None:
        """A damaged row: its bytes to the quarantine, then out of the pack."""
        raw = self._pack.raw(run_id)
        if raw is not None:
            self._quarantine.keep(f"{run_id}.packed", raw)
            self._pack.delete(run_id)


def _open_catalog(path: str) -> SqliteCatalog:
    try:
        return SqliteCatalog(path)
    except CatalogDamaged as exc:
        log.warning("catalog unusable (%s); it is made again from the run files", exc)
        return SqliteCatalog.fresh(path)


def _version(document: bytes, run_id: str) -> int:
    """The version of a run file's content; -1 if it has none."""
    run = _run(document, run_id)
    return int(run.get("version", -1)) if run is not None else -1


def _run(document: bytes, run_id: str) -> dict[str, Any] | None:
    """The run snapshot of a committed document; None if it has none (left out of lists)."""
    try:
        return codec.run_of(orjson.loads(document), run_id)
    except (CorruptFileError, ValueError):
        return None
