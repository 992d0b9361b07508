"""The SQL of a run's commit, shared by the store's committer and the import of a
data dir (``storage/transfer.py``), so that both write a run the same way; and
how a run's document becomes the row those statements take.

The committer's statements take a whole group of commits at once, their rows
passed as one JSON array (orjson writes it in one call, where adapting arrays
row by row costs Python time on every commit).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from psycopg.types.json import Jsonb

# The statements a run's commit is made of, shared with the import of a data dir
# (storage/transfer.py), so that both write a run the same way.
UPSERT_RUN = """
INSERT INTO runs (id, workflow, definition, format, status, document, version, next_wake_at, created_at, updated_at)
VALUES (%(id)s, %(workflow)s, %(definition)s, %(format)s, %(status)s, %(document)s, %(version)s, %(wake)s, %(created)s, %(updated)s)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status, document = excluded.document, version = excluded.version,
    definition = excluded.definition, format = excluded.format,
    next_wake_at = excluded.next_wake_at, updated_at = excluded.updated_at
WHERE runs.version < excluded.version
"""
INSERT_ENTRY = "INSERT INTO timeline (run_id, seq, entry) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
# A key names one run at a time: a later run takes it over, as in the engine's index.
PUT_KEY = """
INSERT INTO lookup_keys (kind, key, run_id) VALUES (%s, %s, %s)
ON CONFLICT (kind, key) DO UPDATE SET run_id = excluded.run_id WHERE lookup_keys.run_id < excluded.run_id
"""
# The committer's forms of the same: one statement per table for a whole group of commits.
# Fenced by the claim: a commit changes the row only while it is still this claim's
# (epoch -1: a store without a lease, one process, nothing to fence). The same
# version may be written again (a retry of a transaction whose fate was unknown),
# so every commit that stands is RETURNed, and one that is not, was fenced off.
UPSERT_RUNS = """
INSERT INTO runs (id, workflow, definition, format, status, document, version, next_wake_at, created_at, updated_at, owner, epoch)
SELECT id, workflow, definition, format, status, document, version, to_timestamp(wake), created, updated, owner, greatest(epoch, 0)
FROM jsonb_to_recordset(%s::jsonb) AS r (id text, workflow text, definition int, format int, status text,
     document jsonb, version bigint, wake float8, created timestamptz, updated timestamptz, owner text, epoch bigint)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status, document = excluded.document, version = excluded.version,
    definition = excluded.definition, format = excluded.format,
    next_wake_at = excluded.next_wake_at, updated_at = excluded.updated_at
WHERE runs.version <= excluded.version
    AND (excluded.epoch = 0 AND excluded.owner IS NULL OR runs.owner = excluded.owner AND runs.epoch = excluded.epoch)
RETURNING runs.id
"""
RELEASE = """
UPDATE runs SET owner = NULL FROM jsonb_to_recordset(%s::jsonb) AS t (r text, e bigint)
WHERE runs.id = t.r AND runs.owner = %s AND runs.epoch = t.e
"""
INSERT_ENTRIES = """
INSERT INTO timeline (run_id, seq, entry)
SELECT r, (e ->> 'seq')::int, e FROM jsonb_to_recordset(%s::jsonb) AS t (r text, e jsonb)
ON CONFLICT DO NOTHING
"""
# Only a later run takes a key over (ids sort by creation): an old run's commit
# (retention, erasure) must not take back its address from a newer signup.
PUT_KEYS = """
INSERT INTO lookup_keys (kind, key, run_id)
SELECT k, v, r FROM jsonb_to_recordset(%s::jsonb) AS t (k text, v text, r text)
ON CONFLICT (kind, key) DO UPDATE SET run_id = excluded.run_id WHERE lookup_keys.run_id < excluded.run_id
"""
# A finished run's keys are exactly its own: those its entry no longer names go (erasure).
DROP_KEYS = """
DELETE FROM lookup_keys l USING jsonb_to_recordset(%s::jsonb) AS t (r text, k text, v jsonb)
WHERE l.run_id = t.r AND l.kind = t.k AND NOT (t.v ? l.key)
"""
# Retention: a document naming the first entry it keeps (timelineFrom) drops the older ones
# in the commit that says so.
TRIM_TIMELINES = """
DELETE FROM timeline USING jsonb_to_recordset(%s::jsonb) AS t (r text, f int)
WHERE timeline.run_id = t.r AND timeline.seq < t.f
"""
# The catalog's part of a commit: each run's summary, and its facets made exactly
# the given ones, with run_counts changed by what was dropped and added, in one
# statement and in (name, value) order, so concurrent commits never deadlock on a count.
PUT_SUMMARIES = """
UPDATE runs SET summary = t.s FROM jsonb_to_recordset(%s::jsonb) AS t (r text, s jsonb) WHERE runs.id = t.r
"""
PUT_FACETS = """
WITH new AS (SELECT r, n, v FROM jsonb_to_recordset(%s::jsonb) AS t (r text, n text, v text)),
gone AS (
    DELETE FROM run_facets f WHERE f.run_id IN (SELECT r FROM new)
        AND (f.run_id, f.name, f.value) NOT IN (SELECT r, n, v FROM new)
    RETURNING f.name, f.value),
added AS (
    INSERT INTO run_facets (name, value, run_id) SELECT n, v, r FROM new
    ON CONFLICT DO NOTHING RETURNING name, value),
delta AS (
    SELECT name, value, sum(d)::bigint AS d FROM (
        SELECT name, value, -1 AS d FROM gone UNION ALL SELECT name, value, 1 FROM added) AS changes
    GROUP BY name, value HAVING sum(d) <> 0)
INSERT INTO run_counts (name, value, n) SELECT name, value, d FROM delta ORDER BY name, value
ON CONFLICT (name, value) DO UPDATE SET n = run_counts.n + excluded.n
"""

def time_of(text: str) -> datetime:
    return datetime.fromisoformat(text)


def as_json(rows: list[dict[str, Any]]) -> Jsonb:
    return Jsonb(rows)  # dumped by the connection's orjson


def json_row(run: dict[str, Any]) -> dict[str, Any]:
    """A run's row for UPSERT_RUNS (times as JSON gives them; when to wake it in epoch seconds)."""
    timers = run.get("timers") or {}
    if timers:
        wake: float | None = min(timers.values())
    elif run["status"] == "RUNNING":
        # Due now: a RUNNING run nobody executes (imported, or let go by a node that
        # failed to run it) is taken by the next poller; while owned, pollers skip it.
        wake = datetime.fromisoformat(run["updatedAt"]).timestamp()
    else:
        wake = None
    return {
        "id": run["id"],
        "workflow": run["workflow"],
        "definition": int(run.get("definition", 1)),
        "format": int(run.get("format", 1)),
        "status": run["status"],
        "document": run,
        "version": int(run["version"]),
        "wake": wake,
        "created": run["createdAt"],
        "updated": run["updatedAt"],
    }


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """The parameters of UPSERT_RUN for a run's document: json_row's, as typed values."""
    row = json_row(run)
    wake = row["wake"]
    return {
        **row,
        "document": Jsonb(run),
        "wake": datetime.fromtimestamp(wake, tz=timezone.utc) if wake is not None else None,
        "created": time_of(row["created"]),
        "updated": time_of(row["updated"]),
    }
