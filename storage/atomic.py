"""A TinyDB storage that never leaves a torn file behind.

TinyDB's own JSONStorage truncates and rewrites its file in place, so a crash in
the middle of a write loses the whole database. This storage writes the new
content to a temporary file, fsyncs it, renames it over the old one and fsyncs
the directory: after a crash the file holds either the old or the new content.

It also opens the file only while reading or writing (no descriptor is held per
run), and can hand its writes to a sink (the journal) instead of the file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable
from typing import Any

import orjson
from tinydb.storages import Storage

from userflow.storage.faults import crash_point, io_error

FILE_MODE = 0o600


class StorageError(OSError):
    """Persisting failed (disk full, I/O error): nothing was made durable."""


class CorruptFileError(ValueError):
    """A stored file exists but cannot be parsed."""


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, payload: bytes, *, fault_point: bool = True, sync: bool = True) -> None:
    """Make ``payload`` the content of ``path``, all or nothing; durable too with ``sync``.

    Without ``sync`` the caller makes it durable later, many files at once
    (``sync_filesystem``): the rename still guarantees old-or-new content.
    """
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp"
    try:
        if fault_point:
            io_error("storage")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if fault_point:
            crash_point("storage", "before-rename")
        os.replace(tmp, path)
        if sync:
            fsync_dir(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(exc.errno, f"could not persist {os.path.basename(path)}: {exc.strerror}") from exc


_libc = None


def sync_filesystem(path: str) -> None:
    """Make every write so far on ``path``'s filesystem durable (one ``syncfs``)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if getattr(_libc, "syncfs", None) is None or _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def read_json(path: str) -> Any:
    """The parsed content of ``path``, or None if it does not exist."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorruptFileError(f"{path}: {exc}") from exc


class AtomicJSONStorage(Storage):
    """TinyDB storage: cached in memory, written atomically, fd-free at rest."""

    def __init__(
        self,
        path: str,
        sink: Callable[[bytes], None] | None = None,
        source: Callable[[], bytes | None] | None = None,
    ) -> None:
        self._path = path
        self._sink = sink  # where writes go instead of the file (the journal)
        self._source = source  # where the first read comes from instead of the file
        self._data: dict[str, dict[str, Any]] | None = None
        self._loaded = False

    def read(self) -> dict[str, dict[str, Any]] | None:
        if not self._loaded:
            if self._source is not None:
                raw = self._source()
                try:
                    data = orjson.loads(raw) if raw is not None else None
                except orjson.JSONDecodeError as exc:
                    raise CorruptFileError(f"{self._path}: {exc}") from exc
            else:
                data = read_json(self._path)
            if data is not None and not isinstance(data, dict):
                raise CorruptFileError(f"{self._path}: not a TinyDB document")
            self._data = data
            self._loaded = True
        return self._data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self._data = data
        self._loaded = True
        try:
            self._flush()
        except BaseException:  # not only StorageError: orjson raises TypeError for non-JSON values
            self._loaded = False  # the cache is ahead of the disk: drop it
            raise

    def _flush(self) -> None:
        payload = orjson.dumps(self._data or {})
        if self._sink is not None:
            self._sink(payload)
        else:
            write_atomic(self._path, payload)

    def close(self) -> None:
        """Nothing to close: the file is only open during a read or write."""
