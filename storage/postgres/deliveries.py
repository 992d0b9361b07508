"""Webhook deliveries in the database: the :class:`~userflow.storage.deliveries.DeliveryStore`
on the tables ``webhook_deliveries`` (one row per delivery, its whole state,
and who has it claimed) and ``webhook_urls`` (when each URL began to be sent
events), shared by every node of the database.

A node claims due lane heads with ``FOR UPDATE SKIP LOCKED`` (two nodes never
claim one row; a row another node is claiming is skipped, not waited for),
for a while judged by the database's clock, and writes each outcome fenced
by its claim (schema migration 3 tells how). Creating a delivery is
idempotent (``ON CONFLICT DO NOTHING``: the id, or the lane and number), so
nodes noticing the same event make it once.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from userflow.actors.timeutil import iso
from userflow.storage.atomic import StorageError
from userflow.storage.postgres.connect import one_line

_COLUMNS = """d.id, d.event_id, d.run_id, d.url, d.number, d.user_id, d.type, d.status, d.attempts,
    extract(epoch FROM d.next_at)::float8, d.created_at, d.payload, d.manual, d.resent, d.claim"""
_INSERT = """
INSERT INTO webhook_deliveries
    (id, event_id, run_id, url, number, user_id, type, status, attempts, next_at, created_at, payload, manual, resent)
VALUES (%(id)s, %(eventId)s, %(workflowId)s, %(url)s, %(number)s, %(userId)s, %(type)s, %(status)s,
        %(attempts)s, %(nextAt)s, %(createdAt)s, %(payload)s, %(manual)s, %(resent)s)
ON CONFLICT DO NOTHING
RETURNING id
"""
# A lane's head: no pending delivery of its lane has a lower number (an operator's retry stands apart).
_HEAD = """(d.manual OR NOT EXISTS (
    SELECT 1 FROM webhook_deliveries e
    WHERE e.run_id = d.run_id AND e.url = d.url AND e.number < d.number AND e.status = 'pending' AND NOT e.manual))"""
_FREE = "(d.claimed_until IS NULL OR d.claimed_until < now())"
CLAIM = f"""
WITH due AS (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.status = 'pending' AND d.next_at <= now() AND {_FREE} AND {_HEAD}
    ORDER BY d.next_at
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d
SET claimed_by = %(node)s, claim = d.claim + 1, claimed_until = now() + make_interval(secs => %(seconds)s)
FROM due WHERE d.id = due.id
RETURNING {_COLUMNS}
"""
_NEXT = f"""
SELECT extract(epoch FROM min(d.next_at) - now())::float8 FROM webhook_deliveries d
WHERE d.status = 'pending' AND d.next_at > now() AND {_FREE} AND {_HEAD}
"""
OUTCOME = """
UPDATE webhook_deliveries
SET status = %(status)s, attempts = %(attempts)s, next_at = %(nextAt)s, manual = %(manual)s,
    payload = CASE WHEN %(status)s = 'delivered' THEN NULL ELSE payload END, claimed_until = NULL
WHERE id = %(id)s AND claimed_by = %(node)s AND claim = %(claim)s
RETURNING id
"""
_RELEASE = """
UPDATE webhook_deliveries SET claimed_until = NULL, claim = claim + 1
WHERE claimed_by = %s AND status = 'pending' AND claimed_until IS NOT NULL
"""
_RESEND = f"""
UPDATE webhook_deliveries d
SET status = 'pending', manual = true, next_at = %(at)s, resent = d.resent || %(by)s, claimed_until = NULL
WHERE d.id = %(id)s AND d.status = 'failed'
RETURNING {_COLUMNS}
"""


def default_node_id() -> str:
    """The host name and a random suffix: two processes on one host are two nodes."""
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


def _params(record: dict[str, Any]) -> dict[str, Any]:
    return {
        **record,
        "attempts": Jsonb(record.get("attempts", [])),
        "resent": Jsonb(record.get("resent", [])),
        "nextAt": _time(record.get("nextAt")),
        "createdAt": datetime.fromisoformat(record["createdAt"]),
        "manual": bool(record.get("manual")),
    }


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    id_, event_id, run_id, url, number, user_id, type_, status, attempts, next_at, created_at, payload, manual, resent, claim = row
    return {
        "id": id_,
        "eventId": event_id,
        "number": number,
        "workflowId": run_id,
        "userId": user_id,
        "type": type_,
        "url": url,
        "status": status,
        "attempts": attempts,
        "nextAt": next_at,
        "createdAt": iso(created_at.timestamp()),
        "payload": payload,
        "manual": manual,
        "resent": resent,
        "claim": claim,
    }


class PgDeliveries:
    #: Other nodes make deliveries and leave claims behind: look for them this often.
    poll_every: float | None = 1.0

    def __init__(self, pool: ConnectionPool, node_id: str | None = None) -> None:
        self._pool = pool
        self.node_id = node_id or default_node_id()

    def _run(self, what: str, work: Callable[[psycopg.Cursor[Any]], Any]) -> Any:
        try:
            with self._pool.connection() as connection, connection.transaction(), connection.cursor() as cursor:
                return work(cursor)
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"the webhook deliveries cannot be {what} the database: {one_line(exc)}") from None

    # -- the sender's ----------------------------------------------------------------------

    def since(self, urls: Iterable[str], now: float) -> dict[str, float]:
        def work(cursor: psycopg.Cursor[Any]) -> dict[str, float]:
            cursor.executemany("INSERT INTO webhook_urls (url, since) VALUES (%s, %s) ON CONFLICT (url) DO NOTHING", [(url, _time(now)) for url in urls])
            return dict(cursor.execute("SELECT url, extract(epoch FROM since)::float8 FROM webhook_urls").fetchall())

        return self._run("saved to", work)

    def highest(self, run_ids: list[str]) -> dict[tuple[str, str], int]:
        def work(cursor: psycopg.Cursor[Any]) -> dict[tuple[str, str], int]:
            sql = "SELECT run_id, url, max(number) FROM webhook_deliveries WHERE run_id = ANY(%s) GROUP BY run_id, url"
            found = {}
            for start in range(0, len(run_ids), 1000):
                found.update(((r, u), n) for r, u, n in cursor.execute(sql, (run_ids[start : start + 1000],)).fetchall())
            return found

        return self._run("read from", work)

    def release(self) -> None:
        self._run("saved to", lambda cursor: cursor.execute(_RELEASE, (self.node_id,)))

    def claim(self, limit: int, seconds: float) -> tuple[list[dict[str, Any]], float | None]:
        def work(cursor: psycopg.Cursor[Any]) -> tuple[list[dict[str, Any]], float | None]:
            rows = cursor.execute(CLAIM, {"limit": limit, "node": self.node_id, "seconds": seconds}).fetchall()
            (due_in,) = cursor.execute(_NEXT).fetchone() or (None,)
            return [_record(row) for row in rows], None if due_in is None else max(0.0, due_in)

        return self._run("claimed in", work)

    def write(self, new: list[dict[str, Any]], outcomes: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
        def work(cursor: psycopg.Cursor[Any]) -> tuple[set[str], set[str]]:
            made: set[str] = set()
            kept: set[str] = set()
            for record in new:
                made.update(row[0] for row in cursor.execute(_INSERT, _params(record)).fetchall())
            for record in outcomes:
                params = {**_params(record), "node": self.node_id, "claim": record["claim"]}
                kept.update(row[0] for row in cursor.execute(OUTCOME, params).fetchall())
            return made, kept

        return self._run("saved to", work)

    # -- an operator's ------------------------------------------------------------------------

    def resend(self, delivery_id: str, by: dict[str, Any], at: float) -> dict[str, Any]:
        def work(cursor: psycopg.Cursor[Any]) -> dict[str, Any] | str | None:
            row = cursor.execute(_RESEND, {"id": delivery_id, "by": Jsonb([by]), "at": _time(at)}).fetchone()
            if row is not None:
                return _record(row)
            found = cursor.execute("SELECT status FROM webhook_deliveries WHERE id = %s", (delivery_id,)).fetchone()
            return None if found is None else found[0]

        result = self._run("saved to", work)
        if result is None:
            raise KeyError(delivery_id)
        if isinstance(result, str):
            raise ValueError(f"only a failed delivery can be sent again; this one is {result}")
        return result

    def scrub(self, run_id: str, scrub: Any) -> int:
        def work(cursor: psycopg.Cursor[Any]) -> int:
            rows = cursor.execute("SELECT id, payload FROM webhook_deliveries WHERE run_id = %s AND payload IS NOT NULL FOR UPDATE", (run_id,)).fetchall()
            cursor.executemany("UPDATE webhook_deliveries SET payload = %s WHERE id = %s", [(scrub(payload), id_) for id_, payload in rows])
            return len(rows)

        return self._run("saved to", work)

    # -- reading ---------------------------------------------------------------------------------

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        row = self._run("read from", lambda c: c.execute(f"SELECT {_COLUMNS} FROM webhook_deliveries d WHERE d.id = %s", (delivery_id,)).fetchone())
        return None if row is None else _record(row)

    def of_run(self, run_id: str) -> list[dict[str, Any]]:
        sql = f"SELECT {_COLUMNS} FROM webhook_deliveries d WHERE d.run_id = %s ORDER BY d.seq"
        return [_record(row) for row in self._run("read from", lambda c: c.execute(sql, (run_id,)).fetchall())]

    def page(self, status: str | None, limit: int, before: str | None) -> tuple[list[dict[str, Any]], str | None]:
        def work(cursor: psycopg.Cursor[Any]) -> list[tuple[Any, ...]] | None:
            end = 2**62
            if before is not None:
                found = cursor.execute("SELECT seq FROM webhook_deliveries WHERE id = %s", (before,)).fetchone()
                if found is None:
                    return None
                end = found[0]
            where = "d.seq < %s" if status is None else "d.status = %s AND d.seq < %s"
            params = (end, limit + 1) if status is None else (status, end, limit + 1)
            return cursor.execute(f"SELECT {_COLUMNS} FROM webhook_deliveries d WHERE {where} ORDER BY d.seq DESC LIMIT %s", params).fetchall()

        rows = self._run("read from", work)
        if rows is None:
            return [], None
        chosen = [_record(row) for row in rows[:limit]]
        return chosen, chosen[-1]["id"] if len(rows) > limit else None

    def counts(self) -> dict[str, int]:
        rows = self._run("read from", lambda c: c.execute("SELECT status, count(*) FROM webhook_deliveries GROUP BY status").fetchall())
        return {"pending": 0, "delivered": 0, "failed": 0, **dict(rows)}

    def close(self) -> None:
        pass  # the pool is the server's
