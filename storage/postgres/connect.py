"""Opening the database: a URL, checked at once, becomes a pool of connections.

A server that cannot reach its database must say so in one line and stop,
not retry silently in the background as a pool does on its own; so a single
connection is made first, and its error (refused, unknown database, wrong
password, a server older than userflow supports) is the one reported. Only
then is the pool opened. The URL's password never appears in a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

T = TypeVar("T")
RECONNECT_FOR = 2.0

#: The oldest PostgreSQL userflow supports (SPEC section 9).
OLDEST_SERVER = 14
APPLICATION_NAME = "userflow"  # how the connections show in pg_stat_activity


class DatabaseUnavailable(RuntimeError):
    """The database cannot be used (a malformed URL, unreachable, refused, too old); the message is one line."""


def one_line(error: BaseException) -> str:
    """libpq's messages span lines (a hint, a tab-indented detail): a log line and a CLI error need one."""
    return " ".join(str(error).split())


def parse(url: str) -> dict[str, str]:
    """The URL's connection parameters, or DatabaseUnavailable saying what is wrong with it."""
    if not url.startswith(("postgresql://", "postgres://")):
        # libpq would read it as "key=value" pairs and quote it whole, password included.
        raise DatabaseUnavailable("the database URL must start with postgresql:// (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)")
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise DatabaseUnavailable(f"the database URL cannot be read: {one_line(exc)}") from None
    return {name: str(value) for name, value in params.items()}


def where(params: dict[str, str]) -> str:
    """The database a URL names, for messages: user, host, port and name, no password."""
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{params.get('host') or 'localhost'}{port}/{params.get('dbname', '')}"


def check_reachable(url: str, timeout: float = 10.0) -> None:
    """Connect once, or raise DatabaseUnavailable with the reason; also refuse a server too old."""
    params = parse(url)
    try:
        # libpq counts connect_timeout in whole seconds and treats 1 as 2.
        with psycopg.connect(url, connect_timeout=max(2, round(timeout)), application_name=APPLICATION_NAME) as connection:
            version = connection.info.server_version
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"cannot use the database {where(params)}: {one_line(exc)}") from None
    if version < OLDEST_SERVER * 10_000:
        raise DatabaseUnavailable(
            f"the database {where(params)} runs PostgreSQL {version // 10_000}, "
            f"userflow needs {OLDEST_SERVER} or newer"
        )


def use_orjson(connection: psycopg.Connection) -> None:
    """JSON to and from the database through orjson, as the data dir writes it: the
    standard library's json costs several times more CPU per document, on every
    commit (each run's whole document) and on the scan at start."""
    set_json_dumps(orjson.dumps, connection)
    set_json_loads(orjson.loads, connection)


class _Checks:
    """Which connections to check as they are handed out: those idle a while.

    A connection broken by a restart of the database must be replaced before a
    statement fails on it; but checking one costs a round trip, and one used a
    moment ago is as good as checked. The pool calls ``returned`` as each comes back."""

    FRESH = 2.0  # seconds a returned connection is taken as sound

    def __init__(self) -> None:
        self._back: dict[int, float] = {}

    def returned(self, connection: psycopg.Connection) -> None:
        self._back[id(connection)] = time.monotonic()

    def check(self, connection: psycopg.Connection) -> None:
        if time.monotonic() - self._back.get(id(connection), float("-inf")) > self.FRESH:
            ConnectionPool.check_connection(connection)


def in_transaction(pool: ConnectionPool, work: Callable[[psycopg.Connection], T]) -> T:
    """``work(connection)`` in one transaction; once more, on another connection, if the
    first was found broken (the database restarted while it sat in the pool and had
    been used too recently to be checked). ``work`` must be safe to repeat: its
    first transaction may have committed before the connection broke."""
    for attempt in (1, 2):
        connection: psycopg.Connection | None = None
        try:
            with pool.connection() as connection, connection.transaction():
                return work(connection)
        except psycopg.OperationalError:
            if attempt == 2 or connection is None or not connection.broken:
                raise
    raise AssertionError("unreachable")


def open_pool(url: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 10.0) -> ConnectionPool:
    """A pool of connections to ``url``, open and filled to ``min_size``; DatabaseUnavailable if it cannot be.

    ``timeout`` bounds the first connection and the pool's filling; later it is
    how long ``pool.connection()`` waits for a free connection. A connection
    idle for a while is checked as it is handed out, so one broken by a restart
    of the database is replaced rather than failing the first statement sent on it.
    """
    check_reachable(url, timeout)
    params = parse(url)
    extra = {} if "application_name" in params else {"application_name": APPLICATION_NAME}
    checks = _Checks()
    pool = ConnectionPool(
        url,
        kwargs=extra,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        open=False,
        check=checks.check,
        reset=checks.returned,
        # The pool retries a failed connection with a delay that doubles for as long
        # as this: after an outage of a minute it would wait as long again once the
        # database is back. Giving up soon lets the next request try at once.
        reconnect_timeout=RECONNECT_FOR,
        configure=use_orjson,
        name=APPLICATION_NAME,
    )
    try:
        pool.open(wait=True, timeout=timeout)
    except PoolTimeout:
        pool.close()
        raise DatabaseUnavailable(f"cannot open {min_size} connections to the database {where(params)} within {timeout:g} s") from None
    return pool
