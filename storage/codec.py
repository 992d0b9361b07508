"""How a run is laid out in its file: the one place that knows.

A run file is a TinyDB database with two tables: ``run``, whose document 1
is the run's snapshot, and ``timeline``, one document per entry keyed by its
sequence number. The journal carries the same whole document, so replaying
it needs no other format.
"""

from __future__ import annotations

from typing import Any

from userflow.storage.atomic import CorruptFileError

RUN_TABLE = "run"
TIMELINE_TABLE = "timeline"
RUN_DOC = "1"


def run_of(data: Any, where: str) -> dict[str, Any]:
    """The run snapshot of a file's parsed content; CorruptFileError if it has none."""
    try:
        run = data[RUN_TABLE][RUN_DOC]
    except (KeyError, TypeError) as exc:
        raise CorruptFileError(f"{where}: no run snapshot") from exc
    if not isinstance(run, dict) or not isinstance(run.get("id"), str):
        raise CorruptFileError(f"{where}: malformed run snapshot")
    return run


def committed(data: dict[str, Any] | None, run: dict[str, Any], new_entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The file's content after a commit of ``run`` with ``new_entries`` appended."""
    data = data or {}
    data[RUN_TABLE] = {RUN_DOC: run}
    timeline = data.setdefault(TIMELINE_TABLE, {})
    keep_from = run.get("timelineFrom")
    if keep_from is not None:  # retention: the older entries go in this very commit
        timeline = data[TIMELINE_TABLE] = {seq: e for seq, e in timeline.items() if int(seq) >= keep_from}
    for entry in new_entries:
        timeline[str(entry["seq"])] = entry
    return data
