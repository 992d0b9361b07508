"""Durable storage for userflow: per-run TinyDB files written atomically."""

from userflow.storage.atomic import CorruptFileError, StorageError
from userflow.storage.datadir import DataDir, DataDirBusy
from userflow.storage.port import ACTIVE, Catalog, Describe, Entry, RunHandle, RunMoved, RunStore, StoredRun, valid_run_id
from userflow.storage.runs import FileRunStore

__all__ = [
    "CorruptFileError",
    "DataDir",
    "DataDirBusy",
    "FileRunStore",
    "ACTIVE",
    "Catalog",
    "Describe",
    "Entry",
    "RunHandle",
    "RunMoved",
    "RunStore",
    "StorageError",
    "StoredRun",
    "valid_run_id",
]
