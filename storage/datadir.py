"""The data directory: the single place where everything durable lives.

It is guarded by an exclusive ``flock`` so that two servers never share one
directory; the kernel drops the lock when the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets

from userflow.storage.atomic import fsync_dir, write_atomic

_LOCK = "userflow.lock"
_SECRET = "secret.key"


class DataDirBusy(RuntimeError):
    """Another server holds this data directory."""

    def __init__(self, message: str, holder: str = "unknown") -> None:
        super().__init__(message)
        self.holder = holder  # the pid the lock file names


class DataDir:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._lock_fd: int | None = None

    def open(self) -> DataDir:
        """Create the directory if needed and take its lock, or raise DataDirBusy."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.path, _LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise DataDirBusy(
                    f"data dir {self.path} is in use by another userflow server (pid {holder}); "
                    "stop it or choose another --data-dir",
                    holder,
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def secret(self) -> bytes:
        """The key that tokens are derived from, created once and kept owner-only."""
        key = self.stored_secret()
        if key is not None:
            return key
        key = secrets.token_bytes(32)
        write_atomic(os.path.join(self.path, _SECRET), key, fault_point=False)  # the crash points are about runs
        fsync_dir(self.path)
        return key

    def stored_secret(self) -> bytes | None:
        """The token key if one was made, without making one (a server replaces a
        key of the wrong length, so such a key is none)."""
        try:
            with open(os.path.join(self.path, _SECRET), "rb") as handle:
                key = handle.read()
        except FileNotFoundError:
            return None
        return key if len(key) == 32 else None
