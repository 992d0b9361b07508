"""Webhook deliveries in the database: the :class:`~userflow.storage.deliveries.DeliveryStore`
on the tables ``webhook_deliveries`` (one row per delivery, its whole state)
and ``webhook_urls`` (when each URL began to be sent events).

A save writes every state it is given in one transaction; a state never goes
back to one it has left, because the sender only ever saves a delivery's
newest state, in order. Compacting has nothing to rewrite: a row already is
the live state, so only the URLs' marks are written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from userflow.actors.timeutil import iso
from userflow.storage.atomic import StorageError
from userflow.storage.postgres.connect import one_line

_UPSERT = """
INSERT INTO webhook_deliveries
    (id, event_id, run_id, url, number, user_id, type, status, attempts, next_at, created_at, payload, manual, resent)
VALUES (%(id)s, %(eventId)s, %(workflowId)s, %(url)s, %(number)s, %(userId)s, %(type)s, %(status)s,
        %(attempts)s, %(nextAt)s, %(createdAt)s, %(payload)s, %(manual)s, %(resent)s)
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, next_at = excluded.next_at,
    payload = excluded.payload, manual = excluded.manual, resent = excluded.resent
"""
_SINCE = "INSERT INTO webhook_urls (url, since) VALUES (%s, %s) ON CONFLICT (url) DO NOTHING"
_LOAD = """
SELECT id, event_id, run_id, url, number, user_id, type, status, attempts,
       extract(epoch FROM next_at)::float8, created_at, payload, manual, resent
FROM webhook_deliveries WHERE id > %s ORDER BY id LIMIT %s
"""
BATCH = 5000


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


class PgDeliveries:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def load(self) -> Iterator[dict[str, Any]]:
        try:
            with self._pool.connection() as connection:
                for url, since in connection.execute("SELECT url, extract(epoch FROM since)::float8 FROM webhook_urls").fetchall():
                    yield {"mark": "since", "url": url, "at": since}
            after = ""
            while True:
                with self._pool.connection() as connection:
                    rows = connection.execute(_LOAD, (after, BATCH)).fetchall()
                if not rows:
                    return
                for row in rows:
                    yield _record(row)
                after = rows[-1][0]
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"the webhook deliveries cannot be read from the database: {one_line(exc)}") from None

    def save(self, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        marks = [(item["url"], _time(item["at"])) for item in items if item.get("mark") == "since"]
        # The sender may hand several states of one delivery in a batch: the last one counts.
        states = {item["id"]: item for item in items if "mark" not in item}
        try:
            with self._pool.connection() as connection, connection.transaction(), connection.cursor() as cursor:
                if marks:
                    cursor.executemany(_SINCE, marks)
                if states:
                    cursor.executemany(_UPSERT, [_params(record) for record in states.values()])
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"the webhook deliveries cannot be saved to the database: {one_line(exc)}") from None

    def compact(self, items: Iterable[dict[str, Any]]) -> None:
        self.save([item for item in items if item.get("mark") == "since"])

    def close(self) -> None:
        pass  # the pool is the server's


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    id_, event_id, run_id, url, number, user_id, type_, status, attempts, next_at, created_at, payload, manual, resent = row
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
    }

