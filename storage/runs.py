"""Run storage: one small TinyDB file per run.

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
the journal that are newer than their run's file are written back first.

Run files are spread over 256 folders, ``runs/XX/ID.json`` where ``XX`` is
a hash of the id, so no folder grows past a few thousand entries at a million
runs (a folder of a million entries makes every listing and lookup in it
slow). Files of the flat ``runs/ID.json`` layout of earlier releases are
moved into their folder when the store opens, one atomic rename each, so a
start interrupted halfway carries on at the next.

Nothing above this module knows that runs are files: it sees :class:`RunStore`
(open a run's handle, read one, scan all) and :class:`RunHandle` (commit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from typing import Any

import orjson
from tinydb import TinyDB

from userflow.storage import codec
from userflow.storage.atomic import AtomicJSONStorage, CorruptFileError, StorageError, read_json, sync_filesystem, write_atomic
from userflow.storage.journal import Journal, records
from userflow.storage.port import IndexCache, StoredRun, valid_run_id

log = logging.getLogger(__name__)

_SUFFIX = ".json"
_INDEX = "index.snapshot"
_TEMP = ".tmp"


def shard(run_id: str) -> str:
    """The folder of ``runs/`` a run's file is in: two hex digits, spread evenly whatever the ids."""
    return format(zlib.crc32(run_id.encode()) & 0xFF, "02x")


def run_file(data_dir: str, run_id: str) -> str:
    """Where a data dir keeps a run's file."""
    return os.path.join(data_dir, "runs", shard(run_id), run_id + _SUFFIX)


class RunFile:
    """One run's TinyDB database, one durable write per commit.

    Alone it writes its file atomically; opened by a :class:`FileRunStore` it
    hands each write to the store's journal instead (``sink(version,
    document)``) and first reads the store's latest document (``source``).
    """

    def __init__(
        self,
        path: str,
        sink: Callable[[int, bytes], None] | None = None,
        source: Callable[[], bytes | None] | None = None,
    ) -> None:
        self._version = 0
        to_sink = (lambda document: sink(self._version, document)) if sink is not None else None
        self._db = TinyDB(path, storage=AtomicJSONStorage, sink=to_sink, source=source)
        self._runs = self._db.table(codec.RUN_TABLE, cache_size=0)
        self._timeline = self._db.table(codec.TIMELINE_TABLE, cache_size=0)

    def load(self) -> StoredRun | None:
        run = self._runs.get(doc_id=int(codec.RUN_DOC))
        if run is None:
            return None
        entries = sorted(self._timeline.all(), key=lambda doc: doc.doc_id)
        return StoredRun(dict(run), [dict(entry) for entry in entries])

    def commit(self, run: dict[str, Any], new_entries: list[dict[str, Any]]) -> None:
        # The same document TinyDB's upserts would produce, written in place:
        # its table API rebuilds every table on each call, which on the hot path
        # cost more than the whole journal append.
        storage: AtomicJSONStorage = self._db.storage  # type: ignore[assignment]
        self._version = int(run.get("version", 0))
        storage.write(codec.committed(storage.read(), run, new_entries))


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _lines(data: memoryview, start: int) -> Iterator[memoryview]:
    """Each line of ``data`` from ``start``, without copying it."""
    raw: bytes = data.obj  # type: ignore[assignment]
    while start < len(data):
        end = raw.index(b"\n", start)
        yield data[start:end]
        start = end + 1


class FileRunStore:
    """Runs under ``DATA/runs/``, commits through ``DATA/journal/``.

    Unreadable run files are moved to ``DATA/quarantine/``.
    """

    def __init__(self, data_dir: str, checkpoint_every: float = 1.0) -> None:
        self._dir = os.path.join(data_dir, "runs")
        self._index = os.path.join(data_dir, _INDEX)
        self._quarantine = os.path.join(data_dir, "quarantine")
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
        self._move_flat_files()
        self._latest: dict[str, tuple[int, bytes]] = {}  # committed, not yet in the file
        self._lock = threading.Lock()
        self._checkpointing = threading.Lock()
        self._after_checkpoint: Callable[[bool, list[str]], None] | None = None
        self._journal = Journal(os.path.join(data_dir, "journal"), on_durable=self._durable)
        self._replay()
        self._stop = threading.Event()
        self._every = checkpoint_every
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="userflow-checkpoint", daemon=True)
        self._checkpointer.start()

    def _path(self, run_id: str) -> str:
        if not valid_run_id(run_id):
            raise ValueError(f"invalid run id {run_id!r}")
        return os.path.join(self._dir, shard(run_id), run_id + _SUFFIX)

    def _folders(self) -> list[str]:
        with os.scandir(self._dir) as entries:
            return sorted(entry.path for entry in entries if len(entry.name) == 2 and entry.is_dir(follow_symlinks=False))

    def _move_flat_files(self) -> None:
        """Files of the flat layout into their folders (made once, all 256: a commit
        never has to make one)."""
        for number in range(256):
            os.makedirs(os.path.join(self._dir, format(number, "02x")), mode=0o700, exist_ok=True)
        moved = 0
        with os.scandir(self._dir) as entries:
            flat = [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
        for name in flat:
            source = os.path.join(self._dir, name)
            if name.endswith(_TEMP):
                os.unlink(source)  # a write that never reached its rename: the old file is intact
            elif name.endswith(_SUFFIX) and valid_run_id(name[: -len(_SUFFIX)]):
                os.replace(source, self._path(name[: -len(_SUFFIX)]))
                moved += 1
        if moved:
            sync_filesystem(self._dir)
            log.info("moved %d run files into the folders of runs/", moved)

    def open(self, run_id: str) -> RunFile:
        return RunFile(
            self._path(run_id),
            sink=lambda version, document: self._commit(run_id, version, document),
            source=lambda: self._document(run_id),
        )

    def read(self, run_id: str) -> StoredRun | None:
        if not valid_run_id(run_id):
            return None
        return RunFile(self._path(run_id), source=lambda: self._document(run_id)).load()

    def _document(self, run_id: str) -> bytes | None:
        """The run's latest committed document: in memory if newer than its file."""
        with self._lock:
            latest = self._latest.get(run_id)
        if latest is not None:
            return latest[1]
        try:
            with open(self._path(run_id), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    # -- commits and checkpoints -------------------------------------------------------

    def _commit(self, run_id: str, version: int, document: bytes) -> None:
        self._journal.append(run_id, version, document)

    def _durable(self, batch: list[tuple[str, int, bytes]]) -> None:
        """(The journal's thread, once a batch is synced.) The documents become the
        runs' latest; a segment switch waits for this, so a checkpoint taken after
        it sees every document of the segments it closes."""
        with self._lock:
            latest = self._latest
            for run_id, version, document in batch:
                if version >= latest.get(run_id, (-1, b""))[0]:
                    latest[run_id] = (version, document)

    def checkpoint(self, final: bool = False) -> int:
        """Write changed runs' files, sync once, drop the journal behind them; then
        call the hook set by ``after_checkpoint`` (no file changes meanwhile)."""
        with self._checkpointing:  # two at once could drop a segment the other still needs
            written = self._checkpoint()
            if self._after_checkpoint is not None:
                try:
                    self._after_checkpoint(final, written)
                except Exception:  # the hook keeps a cache: the checkpoint itself stands
                    log.exception("after-checkpoint hook failed")
            return len(written)

    def after_checkpoint(self, hook: Callable[[bool, list[str]], None]) -> None:
        """Call ``hook(final, written)`` after every checkpoint: ``final`` for the one at
        close, ``written`` the ids of the runs whose file it wrote."""
        self._after_checkpoint = hook

    def _checkpoint(self) -> list[str]:
        closed = self._journal.rotate()
        with self._lock:
            changed = dict(self._latest)
        if not changed and not closed:
            return []
        self._write_back(changed, closed)
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

    def close(self) -> None:
        """Final checkpoint, then stop: the next start finds an empty journal."""
        self._stop.set()
        self._checkpointer.join(timeout=10)
        try:
            self.checkpoint(final=True)
        except OSError as exc:
            log.error("final checkpoint failed; the journal will be replayed at start: %s", exc)
        self._journal.close()

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
        restored = self._write_back(newest, closed)
        log.info("journal replayed: %d runs brought up to date from %d segments", restored, len(closed))

    def _write_back(self, documents: dict[str, tuple[int, bytes]], segments: list[int]) -> int:
        """Write the documents newer than their files, sync once, then drop ``segments``."""
        written = 0
        for run_id, (version, document) in documents.items():
            if version > self._file_version(run_id):  # never put an older document back
                write_atomic(self._path(run_id), document, sync=False)
                written += 1
        sync_filesystem(self._dir)
        self._journal.delete(segments)
        return written

    def _file_version(self, run_id: str) -> int:
        try:
            return int(codec.run_of(read_json(self._path(run_id)), run_id)["version"])
        except (CorruptFileError, OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return -1

    def scan(self, skip: Container[str] = ()) -> Iterator[dict[str, Any]]:
        """Every stored run's snapshot but those in ``skip``. A torn or foreign file is
        quarantined, not fatal."""
        for folder in self._folders():
            with os.scandir(folder) as entries:
                names = [entry.name for entry in entries]
            for name in names:
                path = os.path.join(folder, name)
                if name.endswith(_TEMP):
                    # A write that never reached its rename: the old file is intact.
                    os.unlink(path)
                    continue
                if not name.endswith(_SUFFIX) or name[: -len(_SUFFIX)] in skip:
                    continue
                try:
                    run = codec.run_of(read_json(path), path)
                    if run["id"] + _SUFFIX != name or shard(run["id"]) != os.path.basename(folder):
                        raise CorruptFileError(f"{path}: holds run {run['id']!r}")
                except (CorruptFileError, UnicodeDecodeError) as exc:
                    self._move_aside(path, exc)
                    continue
                except OSError as exc:
                    log.error("cannot read %s, skipped: %s", path, exc)
                    continue
                yield run

    # -- the saved index --------------------------------------------------------------

    def stamps(self) -> dict[str, list[int]]:
        """Each run file's inode, size, modification and change times. Every write by
        this store renames a new inode into place (fresh change time, which nothing
        can set back), so a rewritten file never keeps its stamp."""
        stamps = {}
        cut = -len(_SUFFIX)
        for folder in self._folders():
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = entry.name
                    if name.endswith(_SUFFIX):
                        try:
                            stat = entry.stat()
                        except FileNotFoundError:
                            continue
                        stamps[name[:cut]] = _stamp(stat)
        return stamps

    def index_cache(self) -> IndexCache:
        return self

    def read_document(self, run_id: str) -> tuple[dict[str, Any], list[int]] | None:
        """A run file's snapshot and the stamp of that very file (one open); None if
        it is missing or unreadable (the next start reads it, and says why)."""
        try:
            with open(self._path(run_id), "rb") as handle:
                raw, stamp = handle.read(), _stamp(os.fstat(handle.fileno()))
            return codec.run_of(orjson.loads(raw), run_id), stamp
        except (FileNotFoundError, ValueError, CorruptFileError):
            return None

    def save_index(self, lines: Iterable[bytes], fingerprint: str, stamps: Mapping[str, list[int]]) -> None:
        """Keep ``lines`` (one JSON value each) with the stamps of the run files they
        were made from; call it with no checkpoint running (``after_checkpoint``)."""
        body = list(lines)
        header = {"fingerprint": fingerprint, "lines": len(body), "stamps": stamps}
        write_atomic(self._index, b"\n".join([orjson.dumps(header), *body, b""]), fault_point=False)

    def read_index(self, fingerprint: str) -> tuple[dict[str, list[int]], Iterator[memoryview]] | None:
        """The saved stamps and lines, if saved by the same code and whole; an index
        that is not is removed."""
        try:
            with open(self._index, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return None
        try:
            end = raw.index(b"\n")
            header = orjson.loads(raw[:end])
            if header["fingerprint"] != fingerprint:
                log.info("saved index is from other code; scanning every run file")
                self._drop_index()
                return None
            if raw.count(b"\n") != header["lines"] + 1 or not isinstance(header["stamps"], dict):
                raise ValueError("incomplete")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("saved index unreadable (%s); scanning every run file", exc)
            self._drop_index()
            return None
        return header["stamps"], _lines(memoryview(raw), end + 1)

    def _drop_index(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._index)

    def _move_aside(self, path: str, reason: Exception) -> None:
        os.makedirs(self._quarantine, mode=0o700, exist_ok=True)
        target = os.path.join(self._quarantine, f"{os.path.basename(path)}.{time.time_ns()}")
        try:
            os.replace(path, target)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot quarantine {path}: {exc.strerror}") from exc
        log.error("unreadable run file moved to %s: %s", target, reason)
