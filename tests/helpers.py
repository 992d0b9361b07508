"""Shared helpers for the userflow tests: polling with a deadline, never sleeping blind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pykka
import pytest

from userflow.actors.run_actor import RunActor
from userflow.actors.runtime import Runtime

_TICK = 0.005


def _attempt(predicate: Callable[[], Any], deadline: float, timeout: float, message: str) -> Any:
    """``predicate``'s value if truthy, else None; fails once ``deadline`` has passed."""
    value = predicate()
    if value:
        return value
    if time.monotonic() > deadline:
        raise AssertionError(message or f"condition not met within {timeout} s")
    return None


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, message: str = "") -> Any:
    """Poll ``predicate`` from a thread until it is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not (value := _attempt(predicate, deadline, timeout, message)):
        pause.wait(_TICK)
    return value


async def async_wait_until(predicate: Callable[[], Any], timeout: float = 5.0, message: str = "") -> Any:
    """Poll ``predicate`` from the event loop until it is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while not (value := _attempt(predicate, deadline, timeout, message)):
        await asyncio.sleep(_TICK)
    return value


async def wait_for_status(runtime: Runtime, run_id: str, *statuses: str, timeout: float = 5.0) -> dict[str, Any]:
    """The run's index summary once its status is one of ``statuses``."""

    def reached() -> dict[str, Any] | None:
        summary = runtime.index.get(run_id)
        return summary if summary is not None and summary["status"] in statuses else None

    try:
        return await async_wait_until(reached, timeout)
    except AssertionError:
        last = runtime.index.get(run_id)
        raise AssertionError(f"run {run_id} did not reach {statuses} in {timeout} s; last {last and last['status']}") from None


async def wait_idle(timeout: float = 5.0) -> None:
    """Until no run actor is alive (every run has been passivated or finished)."""
    await async_wait_until(lambda: not live_run_actors(), timeout, "run actors still alive")


def live_run_actors() -> list[pykka.ActorRef[Any]]:
    return pykka.ActorRegistry.get_by_class(RunActor)


def epoch(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


def entries_of(timeline: list[dict[str, Any]], type: str, step: str | None = None) -> list[dict[str, Any]]:
    return [e for e in timeline if e["type"] == type and (step is None or e["step"] == step)]


def python(code: str, *, cwd: str, faults: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (the venv's), optionally with crash points armed."""
    env = dict(os.environ)
    env.pop("USERFLOW_FAULTS", None)
    if faults:
        env["USERFLOW_FAULTS"] = faults
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )



class Gate:
    """A step function that blocks on a threading.Event, counting who is waiting at it."""

    def __init__(self, output: Any = None) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._output = {"gated": True} if output is None else output
        self.waiting = 0
        self.peak = 0
        self.passed = 0

    def __call__(self, ctx: Any) -> Any:
        with self._lock:
            self.waiting += 1
            self.peak = max(self.peak, self.waiting)
        try:
            if not self.release.wait(timeout=30):
                raise TimeoutError("gate never opened")
        finally:
            with self._lock:
                self.waiting -= 1
                self.passed += 1
        return self._output


class Runtimes:
    """Starts Runtimes for one test and stops them all (gates opened first) at teardown.

    Each runtime gets a store of the test's backend: the data dir at ``default_path``
    (or ``path``), or, given ``database_url``, that PostgreSQL database."""

    def __init__(self, default_path: str, database_url: str | None = None) -> None:
        self.default_path = default_path
        self.database_url = database_url
        self.made: list[Runtime] = []
        self.gates: list[Gate] = []
        self._pools: list[Any] = []

    def store(self, path: str | None = None) -> Any:
        """A new store on the test's storage, e.g. to plant a run before a start."""
        if self.database_url is None:
            from userflow.storage import FileRunStore

            return FileRunStore(str(path or self.default_path))
        from userflow.storage.postgres import open_pool
        from userflow.storage.postgres.runs import PgRunStore

        self._pools.append(open_pool(self.database_url, timeout=5))
        return PgRunStore(self._pools[-1])

    async def __call__(
        self, workflows: Any, *, path: str | None = None, max_live: int = 256, services: Any = None, store: Any = None
    ) -> Runtime:
        runtime = Runtime(
            store or self.store(path),
            workflows,
            services,
            max_live=max_live,
            loop=asyncio.get_running_loop(),
            request_timeout=20,
        )
        runtime.report = await asyncio.to_thread(runtime.start)  # type: ignore[attr-defined]
        self.made.append(runtime)
        return runtime

    def gate(self) -> Gate:
        self.gates.append(Gate())
        return self.gates[-1]

    async def close(self) -> None:
        from userflow.actors.supervisor import Supervisor

        for gate in self.gates:
            gate.release.set()
        for runtime in self.made:
            await asyncio.to_thread(runtime.stop)
        leftovers = pykka.ActorRegistry.get_by_class(Supervisor) + live_run_actors()
        pykka.ActorRegistry.stop_all()
        for pool in self._pools:
            pool.close()
        assert not leftovers, f"actors left running: {leftovers}"


def runtimes_on(backend: str, request: Any, path: str) -> Runtimes:
    """Runtimes on the data dir at ``path``, or on a fresh PostgreSQL database (``backend``
    "postgres", from the test's ``database_url`` fixture, its schema applied)."""
    if backend != "postgres":
        return Runtimes(path)
    import psycopg

    from userflow.storage.postgres import migrate

    database_url = request.getfixturevalue("database_url")
    with psycopg.connect(database_url, autocommit=True) as connection:
        migrate(connection)
    return Runtimes(path, database_url)


#: For a test of the data dir itself (its files, its disk): not run on PostgreSQL.
DATA_DIR_ONLY = pytest.mark.parametrize("backend", ["files"])
#: For a test whose subject is not what is stored (the risk check, an email's
#: rendering, SMTP): the store is a bystander, and one store is enough.
ONE_STORE = pytest.mark.parametrize("backend", ["files"])


class StoresAt:
    """The stores of a test's backend, opened and reopened (a restart) by name, closed at teardown.

    On the data dir, each name is a directory under ``root``; on PostgreSQL, a
    database of its own, made on first use (``make_database``) and kept for the test."""

    def __init__(self, root: str, make_database: Callable[[str], str] | None = None) -> None:
        self.root = root
        self._make_database = make_database
        self._urls: dict[str, str] = {}
        self._open: list[Any] = []

    @property
    def backend(self) -> str:
        return "files" if self._make_database is None else "postgres"

    def url(self, name: str = "data") -> str:
        assert self._make_database is not None, "the data dir has no database URL"
        if name not in self._urls:
            self._urls[name] = self._make_database(name)
        return self._urls[name]

    def path(self, name: str = "data") -> str:
        return os.path.join(self.root, name)

    def env(self, name: str = "data") -> dict[str, str]:
        """The environment that points a server process at the stores ``name``."""
        return {} if self._make_database is None else {"USERFLOW_DATABASE_URL": self.url(name)}

    def cli_args(self, name: str = "data") -> list[str]:
        """How a command such as ``userflow operators`` is pointed at the stores ``name``."""
        return ["--data-dir", self.path(name)] if self._make_database is None else ["--database-url", self.url(name)]

    def server(self, *args: str, name: str = "data", env: dict[str, str] | None = None) -> Any:
        """A server process (not started) on the stores ``name``."""
        from tests.server import Server

        server = Server(self.path(name), *args, env={**self.env(name), **(env or {})})
        server.stores_args = self.cli_args(name)
        return server

    def open(self, name: str = "data") -> Any:
        """Open the stores ``name`` (they must not be open already)."""
        if self._make_database is None:
            from userflow.storage import DataDir
            from userflow.storage.stores import FileStores

            stores: Any = FileStores(DataDir(self.path(name)).open())
        else:
            from userflow.actors.definitions import Definitions
            from userflow.actors.signup import SIGNUP
            from userflow.storage.postgres.stores import PgStores

            stores = PgStores.open(self.url(name), Definitions([SIGNUP]).describe, max_connections=4)
            stores.claim()
            stores.watch()
        self._open.append(stores)
        return stores

    def close(self, stores: Any) -> None:
        if stores in self._open:
            self._open.remove(stores)
            stores.close()

    def close_all(self) -> None:
        while self._open:
            self._open.pop().close()
