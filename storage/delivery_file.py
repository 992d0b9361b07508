"""The data dir's webhook deliveries: ``DATA/webhooks.sqlite``.

One row per delivery: the columns lists, lanes and the schedule read (status,
lane, number, when it is due, the order it was made in), its payload (the
body as signed, dropped once delivered), and the rest of its state as JSON.
Counts per status are kept by triggers in the transaction that changes a
status, so counting reads three rows however many deliveries there are.

Every write is one transaction, synced before it returns (WAL,
``synchronous=FULL``): an attempt's outcome is durable before its lane moves
on. ``secure_delete`` zeroes what a row no longer holds, and a scrub is
checkpointed at once, so an erased person's payload is left in no file. The
file and its log are owner-only. One server serves a data dir: claims are
kept in memory (an attempt whose outcome could not be written is claimable
again once its claim ends), and nothing claimed survives a restart.

A data dir written by an earlier release keeps its deliveries in the journal
``DATA/webhooks/``; the first open moves them here and removes it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from userflow.storage.deliveries import STATE_KEYS
from userflow.storage.journal import records

NODE = "data-dir"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (url TEXT PRIMARY KEY, since REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    seq     INTEGER PRIMARY KEY,
    id      TEXT NOT NULL UNIQUE,
    run_id  TEXT NOT NULL,
    url     TEXT NOT NULL,
    number  INTEGER NOT NULL,
    status  TEXT NOT NULL,
    next_at REAL,
    manual  INTEGER NOT NULL DEFAULT 0,
    payload TEXT,
    state   BLOB NOT NULL,
    UNIQUE (run_id, url, number)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, seq);
CREATE TABLE IF NOT EXISTS counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS counts_made AFTER INSERT ON deliveries BEGIN
    INSERT INTO counts VALUES (NEW.status, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS counts_changed AFTER UPDATE OF status ON deliveries WHEN OLD.status <> NEW.status BEGIN
    UPDATE counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO counts VALUES (NEW.status, 1) ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
"""
_COLUMNS = "id, run_id, url, number, status, next_at, manual, payload, state"
# A lane's head: no pending delivery of its lane has a lower number (an operator's retry stands apart).
_HEAD = """(d.manual OR NOT EXISTS (
    SELECT 1 FROM deliveries e WHERE e.run_id = d.run_id AND e.url = d.url AND e.number < d.number
    AND e.status = 'pending' AND NOT e.manual))"""
_DUE = f"SELECT {_COLUMNS} FROM deliveries d WHERE status = 'pending' AND next_at <= ? AND {_HEAD} ORDER BY next_at LIMIT ?"
_NEXT = f"SELECT min(next_at) FROM deliveries d WHERE status = 'pending' AND next_at > ? AND {_HEAD}"
_INSERT = f"INSERT OR IGNORE INTO deliveries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_OUTCOME = """UPDATE deliveries SET status = ?, next_at = ?, manual = ?, state = ?,
    payload = CASE WHEN ? = 'delivered' THEN NULL ELSE payload END WHERE id = ?"""


def _state(record: dict[str, Any]) -> bytes:
    return orjson.dumps({**{key: record.get(key) for key in STATE_KEYS}, "attempts": record.get("attempts") or [], "resent": record.get("resent") or []})


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    id_, run_id, url, number, status, next_at, manual, payload, state = row
    return {
        **orjson.loads(state),
        "id": id_,
        "workflowId": run_id,
        "url": url,
        "number": number,
        "status": status,
        "nextAt": next_at,
        "manual": bool(manual),
        "payload": payload,
    }


class DeliveryFile:
    """The data dir's delivery store (one server: claims live in memory)."""

    node_id = NODE
    poll_every: float | None = None

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, "webhooks.sqlite")
        self._lock = threading.Lock()
        self._claims: dict[str, tuple[int, float]] = {}  # delivery id -> its claim and when it ends
        self._claim_numbers = itertools.count(1)
        # Made owner-only before SQLite opens it: its log and shared-memory files take its mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.executescript(_SCHEMA)
        self._move_journal(os.path.join(data_dir, "webhooks"))

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return result

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # -- the sender's ----------------------------------------------------------------------

    def since(self, urls: Iterable[str], now: float) -> dict[str, float]:
        self._transaction(lambda db: db.executemany("INSERT OR IGNORE INTO urls VALUES (?, ?)", ((url, now) for url in urls)))
        return dict(self._read("SELECT url, since FROM urls"))

    def highest(self, run_ids: list[str]) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT run_id, url, max(number) FROM deliveries WHERE run_id IN ({marks}) GROUP BY run_id, url"
            found.update(((run_id, url), number) for run_id, url, number in self._read(sql, chunk))
        return found

    def release(self) -> None:
        with self._lock:
            self._claims.clear()

    def claim(self, limit: int, seconds: float) -> tuple[list[dict[str, Any]], float | None]:
        now = time.time()
        with self._lock:
            held = {id_ for id_, (_, until) in self._claims.items() if until > now}
            rows = self._db.execute(_DUE, (now, limit + len(held))).fetchall()
            chosen = [_record(row) for row in rows if row[0] not in held][:limit]
            for record in chosen:
                record["claim"] = next(self._claim_numbers)
                self._claims[record["id"]] = (record["claim"], now + seconds)
            (next_at,) = self._db.execute(_NEXT, (now,)).fetchone()
        return chosen, None if next_at is None else max(0.0, next_at - now)

    def write(self, new: list[dict[str, Any]], outcomes: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
        def work(db: sqlite3.Connection) -> tuple[set[str], set[str]]:
            made = set()
            for r in new:
                row = (r["id"], r["workflowId"], r["url"], r["number"], r["status"], r.get("nextAt"), int(bool(r.get("manual"))), r.get("payload"), _state(r))
                if db.execute(_INSERT, row).rowcount:
                    made.add(r["id"])
            kept = set()
            for r in outcomes:
                if self._claims.get(r["id"], (None,))[0] != r["claim"]:
                    continue  # claimed again since (this attempt outlasted its claim)
                db.execute(_OUTCOME, (r["status"], r.get("nextAt"), int(bool(r.get("manual"))), _state(r), r["status"], r["id"]))
                kept.add(r["id"])
            return made, kept

        made, kept = self._transaction(work)
        with self._lock:
            for delivery_id in kept:
                self._claims.pop(delivery_id, None)
        return made, kept

    # -- an operator's ------------------------------------------------------------------------

    def resend(self, delivery_id: str, by: dict[str, Any], at: float) -> dict[str, Any]:
        def work(db: sqlite3.Connection) -> dict[str, Any]:
            row = db.execute(f"SELECT {_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None:
                raise KeyError(delivery_id)
            record = _record(row)
            if record["status"] != "failed":
                raise ValueError(f"only a failed delivery can be sent again; this one is {record['status']}")
            record.update(status="pending", manual=True, nextAt=at, resent=[*record["resent"], by])
            db.execute("UPDATE deliveries SET status = 'pending', manual = 1, next_at = ?, state = ? WHERE id = ?", (at, _state(record), delivery_id))
            return record

        return self._transaction(work)

    def scrub(self, run_id: str, scrub: Any) -> int:
        def work(db: sqlite3.Connection) -> int:
            rows = db.execute("SELECT id, payload FROM deliveries WHERE run_id = ? AND payload IS NOT NULL", (run_id,)).fetchall()
            db.executemany("UPDATE deliveries SET payload = ? WHERE id = ?", [(scrub(payload), id_) for id_, payload in rows])
            return len(rows)

        changed = self._transaction(work)
        with self._lock:
            # The log's copies of the old pages go now, not at the next automatic checkpoint.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return changed

    # -- reading ---------------------------------------------------------------------------------

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,))
        return _record(rows[0]) if rows else None

    def of_run(self, run_id: str) -> list[dict[str, Any]]:
        return [_record(row) for row in self._read(f"SELECT {_COLUMNS} FROM deliveries WHERE run_id = ? ORDER BY seq", (run_id,))]

    def page(self, status: str | None, limit: int, before: str | None) -> tuple[list[dict[str, Any]], str | None]:
        end = 2**62
        if before is not None:
            found = self._read("SELECT seq FROM deliveries WHERE id = ?", (before,))
            if not found:
                return [], None
            end = found[0][0]
        if status is None:
            rows = self._read(f"SELECT {_COLUMNS} FROM deliveries WHERE seq < ? ORDER BY seq DESC LIMIT ?", (end, limit + 1))
        else:
            sql = f"SELECT {_COLUMNS} FROM deliveries WHERE status = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
            rows = self._read(sql, (status, end, limit + 1))
        chosen = [_record(row) for row in rows[:limit]]
        return chosen, chosen[-1]["id"] if len(rows) > limit else None

    def counts(self) -> dict[str, int]:
        return {"pending": 0, "delivered": 0, "failed": 0, **dict(self._read("SELECT status, n FROM counts"))}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- from an earlier release ----------------------------------------------------------------

    def _move_journal(self, directory: str) -> None:
        if not os.path.isdir(directory):
            return
        states: dict[str, dict[str, Any]] = {}
        marks: dict[str, float] = {}
        for name in sorted(n for n in os.listdir(directory) if n.endswith(".log")):
            for _, _, document in records(os.path.join(directory, name)):
                for item in orjson.loads(document):
                    if item.get("mark") == "since":
                        marks[item["url"]] = float(item["at"])
                    elif "mark" not in item:
                        states[item["id"]] = item
        self._transaction(lambda db: db.executemany("INSERT OR IGNORE INTO urls VALUES (?, ?)", marks.items()))
        ordered = sorted(states.values(), key=lambda r: (r["createdAt"], r["workflowId"], r["number"]))
        for start in range(0, len(ordered), 1000):
            self.write(ordered[start : start + 1000], [])
        shutil.rmtree(directory)
