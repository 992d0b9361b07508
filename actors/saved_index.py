"""The index kept on disk, so that a start reads only the run files changed since.

Reading every run file is most of a start (10,000 files: about 0.8 s here).
So after a checkpoint, at most every ``every`` seconds and at the final one
of a clean stop, the saved index is brought up to date: each run whose file's
stamp (inode, size, modification and change times) changed since the last
save is described again (summary, lookup keys, timers), from the file itself
when a checkpoint wrote it since (see ``refresh``). This runs under the
store's checkpoint lock, so no file changes meanwhile and every line matches
the file whose stamp it is saved with.

A start then takes from it every run whose file still has its stamp, and
reads only the others: after a clean stop, none; after a crash, the runs
changed in the last ``every`` seconds and those the journal replay wrote.
The saved index is a cache: it is ignored if the engine's code changed, a
damaged line costs only that run, and without it every file is read.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator

import orjson

from userflow.actors.parts import EngineParts

log = logging.getLogger(__name__)

EVERY = 30.0


@functools.cache
def code_fingerprint() -> str:
    """A digest of the engine's and the workflows' source: summaries saved by other
    code may have another shape, so the saved index is only used by the same code.
    Taken once per process: recovery and the saves share it."""
    digest = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                digest.update(name.encode())
                with open(os.path.join(folder, name), "rb") as handle:
                    digest.update(handle.read())
    return digest.hexdigest()


def _line_id(line: memoryview) -> str:
    """The run id a run line starts with: ``["wf_...",`` (ids need no escaping)."""
    raw = bytes(line[: 2 + 64 + 1])
    return raw[2 : raw.index(b'"', 2)].decode()


class SavedIndex:
    def __init__(self, parts: EngineParts, every: float = EVERY) -> None:
        self._parts = parts
        self._cache = parts.store.index_cache()
        self._every = every
        self._last = time.monotonic()
        self._dirty = True  # files may differ from the last save until one is made here
        self._written: set[str] = set()  # runs whose file a checkpoint wrote since the last save
        self.fingerprint = code_fingerprint()


    # -- at a start ---------------------------------------------------------------

    def restore(self) -> list[str]:
        """Put every run the saved index is still right about into the index; their ids."""
        if self._cache is None:
            return []
        saved = self._cache.read_index(self.fingerprint)
        if saved is None:
            return []
        stamps, lines = saved
        current = self._cache.stamps()
        unchanged = {run_id for run_id, stamp in stamps.items() if current.get(run_id) == stamp}
        try:
            return self._parts.index.restore(lines, unchanged)
        except (ValueError, TypeError, AttributeError) as exc:  # unreadable keys: nothing was restored
            log.warning("saved index not used: %s", exc)
            return []

    # -- after checkpoints ----------------------------------------------------------

    def attach(self) -> None:
        """Refresh after the store's checkpoints."""
        if self._cache is not None:
            self._cache.after_checkpoint(self.refresh)

    def refresh(self, final: bool = False, written: Iterable[str] = ()) -> None:
        """(Under the store's checkpoint lock.) Describe again the runs whose file changed.

        A run whose file a checkpoint wrote since the last save is read from that
        file: the index may not have its commit yet. Any other changed run (read
        at the start, or replayed there) is taken from the index, which holds
        its file's content or a newer commit; a newer one is in the journal and
        will rewrite the file, so its stamp cannot match a save it was not in."""
        self._written.update(written)
        self._dirty = self._dirty or bool(self._written)
        now = time.monotonic()
        if not self._dirty or (not final and now - self._last < self._every):
            return
        self._last = now
        started = time.perf_counter()
        store = self._cache
        assert store is not None
        current = store.stamps()
        saved = store.read_index(self.fingerprint)
        if saved is not None and saved[0] == current:
            self._dirty = False
            self._written.clear()
            return  # nothing changed since the last save
        saved_stamps, keys, lines = self._parse(saved)
        kept = {run_id: stamp for run_id, stamp in saved_stamps.items() if current.get(run_id) == stamp and run_id in lines}
        keys = {kind: {value: run_id for value, run_id in table.items() if run_id in kept} for kind, table in keys.items()}
        body: list[bytes | memoryview] = [lines[run_id] for run_id in kept]
        stamps = dict(kept)
        described = 0
        from_index = self._parts.index.saved_lines(
            [run_id for run_id in current if run_id not in kept and run_id not in self._written]
        )
        for run_id in current:
            if run_id in kept:
                continue
            indexed = from_index.get(run_id)
            found = (indexed[0], indexed[1], current[run_id]) if indexed is not None else self._describe(run_id)
            if found is None:
                continue  # unreadable or foreign: the next start reads it, and says why
            line, run_keys, stamps[run_id] = found
            body.append(line)
            for kind, values in run_keys.items():
                table = keys.setdefault(kind, {})
                for value in values:
                    table[value] = run_id
            described += 1
        try:
            store.save_index([orjson.dumps({"keys": keys}), *body], self.fingerprint, stamps)
        except OSError as exc:
            log.warning("index not saved (%s); the next start reads the runs changed since the last save", exc)
            return
        self._dirty = False
        self._written.clear()
        log.debug("index saved: %d runs, %d described again, in %.2f s", len(stamps), described, time.perf_counter() - started)

    def _parse(
        self, saved: tuple[dict[str, list[int]], Iterator[memoryview]] | None
    ) -> tuple[dict[str, list[int]], dict[str, dict[str, str]], dict[str, memoryview]]:
        """The last save: stamps, key tables, run lines by id (empty if unusable)."""
        if saved is None:
            return {}, {}, {}
        stamps, lines = saved
        try:
            keys = orjson.loads(next(lines, b"null"))["keys"]
            if not all(isinstance(table, dict) for table in keys.values()):
                raise TypeError("key tables are not objects")
            by_id = {_line_id(line): line for line in lines}
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            log.warning("saved index unreadable (%s); describing every run again", exc)
            return {}, {}, {}
        return stamps, keys, by_id

    def _describe(self, run_id: str) -> tuple[bytes, dict[str, list[str]], list[int]] | None:
        assert self._cache is not None
        found = self._cache.read_document(run_id)
        if found is None:
            return None
        run, stamp = found
        try:
            if run["id"] != run_id:
                return None
            described = self._parts.index.line_for(run)
        except (ValueError, TypeError, KeyError):
            return None
        if described is None:
            return None
        line, keys = described
        return line, keys, stamp
