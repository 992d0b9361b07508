"""The database's catalog of runs: what lists, filters, counts and lookups read.

The run store writes it in each commit's transaction (a run's ``summary``,
its ``run_facets``, its ``lookup_keys``; each commit keeps ``run_counts``);
this reads it, so no node keeps every run in memory. Pages walk an index
newest (or oldest) first past a cursor; ``active`` pages through the runs
a start brings back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from userflow.storage.atomic import StorageError
from userflow.storage.port import ACTIVE
from userflow.storage.postgres.connect import one_line

PAGE_MAX = 1000
ACTIVE_BATCH = 1000


class PgCatalog:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as connection:
                return connection.execute(sql, params).fetchall()
        except (psycopg.Error, OSError) as exc:
            raise StorageError(5, f"could not read from the database: {one_line(exc)}") from None

    def get(self, run_id: str) -> dict[str, Any] | None:
        if "\x00" in run_id:
            return None  # text in PostgreSQL cannot hold one: no run has it
        rows = self.rows("SELECT summary FROM runs WHERE id = %s AND summary <> '{}'", (run_id,))
        return rows[0][0] if rows and rows[0][0] is not None else None

    def lookup(self, kind: str, key: str) -> str | None:
        """The run holding a lookup key, as the database has it."""
        if "\x00" in key:
            return None  # text in PostgreSQL cannot hold one: no key has it
        rows = self.rows("SELECT run_id FROM lookup_keys WHERE kind = %s AND key = %s", (kind, key))
        return rows[0][0] if rows else None

    def page(
        self, *, limit: int, cursor: str | None = None, facet: tuple[str, str] | None = None, oldest_first: bool = False
    ) -> tuple[list[dict[str, Any]], str | None]:
        compare, order = (">", "ASC") if oldest_first else ("<", "DESC")
        limit = min(limit, PAGE_MAX)
        # No bound without a cursor: a sentinel id would sort by the database's collation.
        past = (f"AND {{column}} {compare} %s", (cursor,)) if cursor is not None else ("", ())
        if facet is None:
            rows = self.rows(
                f"SELECT id, summary FROM runs WHERE summary <> '{{}}' {past[0].format(column='id')} ORDER BY id {order} LIMIT %s",
                (*past[1], limit + 1),
            )
        else:
            rows = self.rows(
                f"""SELECT runs.id, runs.summary FROM run_facets f JOIN runs ON runs.id = f.run_id
                    WHERE f.name = %s AND f.value = %s {past[0].format(column='f.run_id')}
                    ORDER BY f.run_id {order} LIMIT %s""",
                (facet[0], facet[1], *past[1], limit + 1),
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return [summary for _, summary in rows], (rows[-1][0] if more and rows else None)

    def counts(self, name: str, since: str | None = None) -> dict[str, int]:
        return dict(self.rows("SELECT value, n FROM run_counts WHERE name = %s AND value >= %s AND n > 0", (name, since or "")))

    def changed_since(self, when: float) -> Iterator[dict[str, Any]]:
        rows = self.rows(
            "SELECT summary FROM runs WHERE updated_at >= to_timestamp(%s) AND summary <> '{}' ORDER BY updated_at", (when,)
        )
        return iter([summary for (summary,) in rows])

    def active(self) -> Iterator[dict[str, Any]]:
        after = ""
        while True:
            rows = self.rows(
                """SELECT runs.id, runs.document FROM run_facets f JOIN runs ON runs.id = f.run_id
                   WHERE f.name = %s AND f.value = %s AND f.run_id > %s ORDER BY f.run_id LIMIT %s""",
                (*ACTIVE, after, ACTIVE_BATCH),
            )
            if not rows:
                return
            for _, document in rows:
                yield document
            after = rows[-1][0]

