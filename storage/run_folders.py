"""Where a data dir keeps its run files: ``runs/XX/ID.json``.

Run files are spread over 256 folders, where ``XX`` is a hash of the id, so
no folder grows past a few thousand entries at a million runs (a folder of a
million entries makes every listing and lookup in it slow). Files of the
flat ``runs/ID.json`` layout of earlier releases are moved into their folder
when the store opens, one atomic rename each, so a start interrupted halfway
carries on at the next.
"""

from __future__ import annotations

import logging
import os
import zlib

from userflow.storage.atomic import sync_filesystem
from userflow.storage.port import valid_run_id

log = logging.getLogger(__name__)

SUFFIX = ".json"
TEMP = ".tmp"


def shard(run_id: str) -> str:
    """The folder of ``runs/`` a run's file is in: two hex digits, spread evenly whatever the ids."""
    return format(zlib.crc32(run_id.encode()) & 0xFF, "02x")


def run_file(data_dir: str, run_id: str) -> str:
    """Where a data dir keeps a run's file."""
    return os.path.join(data_dir, "runs", shard(run_id), run_id + SUFFIX)


class RunFolders:
    """The 256 folders of ``runs/``, made once (a commit never has to make one)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for number in range(256):
            os.makedirs(os.path.join(directory, format(number, "02x")), mode=0o700, exist_ok=True)
        self._move_flat_files()

    def path(self, run_id: str) -> str:
        if not valid_run_id(run_id):
            raise ValueError(f"invalid run id {run_id!r}")
        return os.path.join(self.directory, shard(run_id), run_id + SUFFIX)

    def folders(self) -> list[str]:
        with os.scandir(self.directory) as entries:
            return sorted(entry.path for entry in entries if len(entry.name) == 2 and entry.is_dir(follow_symlinks=False))

    @staticmethod
    def run_ids(folder: str) -> list[str]:
        """The ids of the run files in ``folder`` (by name; whether each is readable is the reader's to find)."""
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries]
        return [name[: -len(SUFFIX)] for name in names if name.endswith(SUFFIX) and valid_run_id(name[: -len(SUFFIX)])]

    def _move_flat_files(self) -> None:
        moved = 0
        with os.scandir(self.directory) as entries:
            flat = [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
        for name in flat:
            source = os.path.join(self.directory, name)
            if name.endswith(TEMP):
                os.unlink(source)  # a write that never reached its rename: the old file is intact
            elif name.endswith(SUFFIX) and valid_run_id(name[: -len(SUFFIX)]):
                os.replace(source, self.path(name[: -len(SUFFIX)]))
                moved += 1
        if moved:
            sync_filesystem(self.directory)
            log.info("moved %d run files into the folders of runs/", moved)
