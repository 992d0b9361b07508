"""Operator accounts and sessions in the database: the tables ``operator_accounts``
and ``operator_sessions``, with the same rules as the data dir's file.

A server asks for the accounts on every request, and must not wait on the
database to answer even a sign-in check; so once ``watch`` is called, a
thread reads both tables every second and the server reads that copy.
While the database is unreachable the last copy stays in force (accounts
neither appear nor vanish); a change made by ``userflow operators`` on any
machine is seen within the second after it commits.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import datetime, timezone

import psycopg
from psycopg_pool import ConnectionPool

from userflow.actors.timeutil import iso
from userflow.storage.atomic import StorageError
from userflow.storage.operators import (
    SESSIONS_PER_ACCOUNT,
    Account,
    AccountError,
    Operators,
    Role,
    Session,
    check_name,
    digest,
    new_session,
    new_token,
)
from userflow.storage.postgres.connect import one_line

log = logging.getLogger(__name__)

REFRESH_EVERY = 1.0


def _unavailable(exc: BaseException) -> StorageError:
    return StorageError(5, f"the operator accounts cannot be reached in the database: {one_line(exc)}")


class PgOperators:
    def __init__(self, pool: ConnectionPool, where: str) -> None:
        self._pool = pool
        self.where = where
        self._copy: Operators | None = None
        self._version = ""
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- reading ------------------------------------------------------------------------

    def _read(self) -> Operators:
        try:
            with self._pool.connection() as connection:
                accounts = connection.execute(
                    "SELECT name, role, token_hash, created_at FROM operator_accounts ORDER BY created_at, name"
                ).fetchall()
                sessions = connection.execute(
                    "SELECT id_hash, name, extract(epoch FROM expires_at)::float8 FROM operator_sessions "
                    "WHERE expires_at > now() ORDER BY expires_at"
                ).fetchall()
        except (psycopg.Error, OSError) as exc:
            raise _unavailable(exc) from None
        return Operators(
            tuple(Account(name, Role(role), token_hash, iso(created.timestamp())) for name, role, token_hash, created in accounts),
            tuple(Session(id_hash, name, expires) for id_hash, name, expires in sessions),
        )

    def load(self) -> Operators:
        if self._copy is not None:
            return self._copy
        return self._read()

    def stamp(self) -> object:
        if self._copy is not None:
            return self._version
        return _fingerprint(self._read())

    def watch(self) -> None:
        """Read the tables now and then every second in a thread; ``load`` answers from that copy."""
        self._refresh()
        self._watcher = threading.Thread(target=self._watch, name="userflow-pg-operators", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                self._refresh()
            except StorageError as exc:
                log.debug("operator accounts not refreshed: %s", exc)

    def _refresh(self) -> None:
        operators = self._read()
        self._copy, self._version = operators, _fingerprint(operators)

    # -- changing -----------------------------------------------------------------------

    def add(self, name: str, role: Role) -> str:
        check_name(name)
        token = new_token()
        try:
            with self._pool.connection() as connection:
                inserted = connection.execute(
                    "INSERT INTO operator_accounts (name, role, token_hash, created_at) VALUES (%s, %s, %s, now()) "
                    "ON CONFLICT (name) DO NOTHING",
                    (name, Role(role).value, digest(token)),
                ).rowcount
        except (psycopg.Error, OSError) as exc:
            raise _unavailable(exc) from None
        if not inserted:
            raise AccountError(f"an account named {name!r} already exists; remove it first to replace its token")
        self._after_change()
        return token

    def remove(self, name: str) -> int:
        try:
            with self._pool.connection() as connection, connection.transaction():
                removed = connection.execute("DELETE FROM operator_accounts WHERE name = %s", (name,)).rowcount
                ended = connection.execute(
                    "DELETE FROM operator_sessions WHERE name = %s AND expires_at > now()", (name,)
                ).rowcount
                connection.execute("DELETE FROM operator_sessions WHERE name = %s", (name,))
        except (psycopg.Error, OSError) as exc:
            raise _unavailable(exc) from None
        if not removed:
            raise AccountError(f"there is no account named {name!r}")
        self._after_change()
        return ended

    def open_session(self, name: str, ttl: float) -> tuple[str, Session]:
        session_id, session = new_session(name, ttl)
        try:
            with self._pool.connection() as connection, connection.transaction():
                connection.execute(
                    "INSERT INTO operator_sessions (id_hash, name, expires_at) VALUES (%s, %s, %s)",
                    (session.id_hash, name, datetime.fromtimestamp(session.expires_at, tz=timezone.utc)),
                )
                # The oldest sessions of a busy account make room, and the expired go.
                connection.execute(
                    """DELETE FROM operator_sessions WHERE expires_at <= now() OR id_hash IN (
                           SELECT id_hash FROM operator_sessions WHERE name = %s
                           ORDER BY expires_at DESC OFFSET %s)""",
                    (name, SESSIONS_PER_ACCOUNT),
                )
        except (psycopg.Error, OSError) as exc:
            raise _unavailable(exc) from None
        self._after_change()
        return session_id, session

    def end_session(self, id_hash: str) -> bool:
        try:
            with self._pool.connection() as connection:
                ended = connection.execute("DELETE FROM operator_sessions WHERE id_hash = %s", (id_hash,)).rowcount
        except (psycopg.Error, OSError) as exc:
            raise _unavailable(exc) from None
        self._after_change()
        return bool(ended)

    def _after_change(self) -> None:
        if self._copy is not None:  # the server's own change is in force at once
            try:
                self._refresh()
            except StorageError:
                pass


def _fingerprint(operators: Operators) -> str:
    text = repr((operators.accounts, [(s.id_hash, s.name, s.expires_at) for s in operators.sessions]))
    return hashlib.sha256(text.encode()).hexdigest()

