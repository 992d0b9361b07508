"""The write-ahead journal: where commits become durable, many behind one sync.

Writing each run's file atomically costs a file creation, a rename and two
fsyncs per commit (about 1.5 ms here); appending to one open file costs a
few microseconds, and one ``fdatasync`` (about 0.4 ms) makes every record
appended before it durable. So a commit is appended here and its caller
waits for the next group sync; the per-run TinyDB files are written later,
in the background, as checkpoints (see ``runs.FileRunStore``).

A record is ``UF | length | crc32 | run id | version | document``; replay
stops at the first torn or corrupt record, which can only be one whose sync
never finished, so whose commit was never acknowledged. Segments are
numbered files; a segment is deleted only once every document in it has
reached its run's file and those files are synced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator

from userflow.storage.atomic import StorageError, fsync_dir
from userflow.storage.faults import crash_point, io_error

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">2sII")  # magic, body length, crc32 of body
_MAGIC = b"UF"
_SUFFIX = ".log"


class _Batch:
    """The records appended between two syncs; every writer in it waits on one event."""

    __slots__ = ("frames", "records", "done", "error")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.records: list[tuple[str, int, bytes, object]] = []
        self.done = threading.Event()
        self.error: BaseException | None = None


def encode(run_id: str, version: int, document: bytes) -> bytes:
    key = run_id.encode()
    body = bytes([len(key)]) + key + version.to_bytes(8, "big") + document
    return _HEAD.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def records(path: str) -> Iterator[tuple[str, int, bytes]]:
    """(run id, version, document) of each intact record, up to the first damaged one."""
    with open(path, "rb") as handle:
        data = handle.read()
    offset = 0
    while offset + _HEAD.size <= len(data):
        magic, length, crc = _HEAD.unpack_from(data, offset)
        body = data[offset + _HEAD.size : offset + _HEAD.size + length]
        if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
            log.warning("journal %s: damaged record at byte %d, the rest is ignored", path, offset)
            return
        key_length = body[0]
        run_id = body[1 : 1 + key_length].decode()
        version = int.from_bytes(body[1 + key_length : 9 + key_length], "big")
        yield run_id, version, body[9 + key_length :]
        offset += _HEAD.size + length


#: Told of each synced batch: (run id, version, document, the note its writer gave) per record.
Durable = Callable[[list[tuple[str, int, bytes, object]]], None]


class Journal:
    """Append-only segments; ``on_durable`` sees each batch of records once it is
    synced, before any of its writers returns, and before the next segment switch."""

    def __init__(self, directory: str, on_durable: Durable | None = None) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._on_durable = on_durable
        self._cond = threading.Condition()
        self._batch = _Batch()
        self._stopped = False
        self._rotate_to: int | None = None
        self._number = max(self.segments(), default=0) + 1
        self._fd, self._size = self._open(self._number), 0
        self._thread = threading.Thread(target=self._write_loop, name="userflow-journal", daemon=True)
        self._thread.start()

    def segments(self) -> list[int]:
        return sorted(int(name[: -len(_SUFFIX)]) for name in os.listdir(self.directory) if name.endswith(_SUFFIX))

    def path(self, number: int) -> str:
        return os.path.join(self.directory, f"{number:08d}{_SUFFIX}")

    def _open(self, number: int) -> int:
        fd = os.open(self.path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_dir(self.directory)
        return fd

    @property
    def current(self) -> int:
        """The number of the segment being appended to."""
        return self._number

    def append(self, run_id: str, version: int, document: bytes, note: object = None) -> None:
        """Return once the record is durable; raise StorageError if it cannot be.
        ``note`` is not written: ``on_durable`` gets it back with the record."""
        frame = encode(run_id, version, document)
        with self._cond:
            if self._stopped:
                raise StorageError(5, "the journal is closed")
            batch = self._batch
            batch.frames.append(frame)
            batch.records.append((run_id, version, document, note))
            self._cond.notify()
        batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def rotate(self) -> list[int]:
        """Start a new segment; return the numbers of the segments now closed."""
        with self._cond:
            self._rotate_to = self._number + 1
            self._cond.notify()
            while self._rotate_to is not None and not self._stopped:
                self._cond.wait()
            return [n for n in self.segments() if n < self._number]

    def delete(self, numbers: list[int]) -> None:
        for number in numbers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(number))
        if numbers:
            fsync_dir(self.directory)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._batch.frames and self._rotate_to is None and not self._stopped:
                    self._cond.wait()
                if self._rotate_to is not None:
                    self._switch_segment()
                    continue
                batch, self._batch = self._batch, _Batch()
                if not batch.frames and self._stopped:
                    return
            self._write(batch)

    def _switch_segment(self) -> None:
        """(Under the lock, between batches.) Close the current segment, open the next."""
        try:
            fd = self._open(self._rotate_to or self._number + 1)
        except OSError as exc:
            log.error("journal: cannot start a new segment, keeping the current one: %s", exc)
        else:
            os.close(self._fd)
            self._fd, self._size, self._number = fd, 0, self._rotate_to or self._number + 1
        self._rotate_to = None
        self._cond.notify_all()

    def _write(self, batch: _Batch) -> None:
        data = b"".join(batch.frames)
        try:
            io_error("storage")
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            crash_point("storage", "before-sync")
            os.fdatasync(self._fd)
        except OSError as exc:
            # Take back the partial append so later records follow an intact one.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            batch.error = StorageError(exc.errno, f"could not persist: {exc.strerror}")
        else:
            self._size += len(data)
            if self._on_durable is not None:
                try:
                    self._on_durable(batch.records)
                except Exception as exc:  # noqa: BLE001 - the writers must still be released
                    log.exception("journal: recording a durable batch failed")
                    batch.error = StorageError(5, f"could not record the commit: {exc}")
        batch.done.set()
