"""``DATA/quarantine/``: where what a store cannot read is moved, not deleted.

A run file that does not parse, or a pack row that does not decompress, would
stop every start if kept in place, and would lose a run if deleted: it is
moved here, named after what it was and when (``ID.json.NS``,
``ID.packed.NS``), for an operator to look at.
"""

from __future__ import annotations

import logging
import os
import time

from userflow.storage.atomic import StorageError, write_atomic

log = logging.getLogger(__name__)


class Quarantine:
    def __init__(self, data_dir: str) -> None:
        self.directory = os.path.join(data_dir, "quarantine")

    def _target(self, name: str) -> str:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        return os.path.join(self.directory, f"{name}.{time.time_ns()}")

    def move(self, path: str, reason: Exception) -> None:
        """An unreadable file, moved here."""
        target = self._target(os.path.basename(path))
        try:
            os.replace(path, target)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot quarantine {path}: {exc.strerror}") from exc
        log.error("unreadable run file moved to %s: %s", target, reason)

    def keep(self, name: str, raw: bytes) -> None:
        """Unreadable bytes of a record, kept here as a file (before the record is deleted)."""
        target = self._target(name)
        write_atomic(target, raw, fault_point=False)
        log.error("unreadable packed run moved to %s", target)
