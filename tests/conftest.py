"""Fixtures shared by the tests: HTTP API clients, a PostgreSQL cluster and its databases."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from userflow.http.app import build_app
from userflow.http.config import Settings
from tests import postgres
from tests.helpers import StoresAt
from tests.http_helpers import PUBLIC_URL, MakeClient


@pytest.fixture(params=["files", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The store a test runs on: the data dir, or PostgreSQL (a database of the test's own)."""
    return request.param


@pytest.fixture
def stores_at(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StoresAt]:
    """Opens the test backend's stores by name (reopening is a restart); closes them at the end."""
    if backend == "postgres":
        cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
        made: list[str] = []

        def make_database(name: str) -> str:
            made.append(cluster.create_database(f"{request.node.name}_{name}"))
            return cluster.url(made[-1])

        opener = StoresAt(str(tmp_path), make_database)
    else:
        opener = StoresAt(str(tmp_path))
    try:
        yield opener
    finally:
        opener.close_all()
        if backend == "postgres":
            if not cluster.running:
                cluster.start()
            for name in made:
                cluster.drop_database(name)


@pytest.fixture
async def make_client(stores_at: StoresAt, aiohttp_client: Any) -> AsyncIterator[MakeClient]:
    """A factory of test clients, each on an app with fresh stores of the test's backend.

    Keyword arguments override the test defaults of ``Settings`` (no injected
    email failures). Clients are closed, so engines stop, before stores close.
    """
    opened: list[tuple[TestClient, Any]] = []

    async def make(**overrides: Any) -> TestClient:
        name = f"data{len(opened)}"
        fields: dict[str, Any] = {"data_dir": stores_at.path(name), "email_failure_rate": 0.0}
        fields.update(overrides)
        settings = Settings(**fields)
        stores = stores_at.open(name)
        try:
            client = await aiohttp_client(build_app(settings, stores, PUBLIC_URL))
        except BaseException:
            stores_at.close(stores)
            raise
        opened.append((client, stores))
        return client

    yield make
    for client, stores in reversed(opened):
        try:
            await client.close()
        finally:
            stores_at.close(stores)


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient:
    """A client on an outbox-mode app with no injected email failures."""
    return await make_client()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    """One throwaway PostgreSQL cluster for the session, removed at its end whatever happened."""
    reason = postgres.missing()
    if reason:
        if os.environ.get("CI"):  # CI installs PostgreSQL: a skip there would hide a broken setup
            pytest.fail(f"PostgreSQL tests cannot run: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL tests need a server: {reason}")
    cluster = postgres.Cluster().create()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def database_url(postgres_cluster: postgres.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, empty database of its own for this test; dropped after it."""
    name = postgres_cluster.create_database(request.node.name)
    try:
        yield postgres_cluster.url(name)
    finally:
        if not postgres_cluster.running:  # a test that stopped the server and failed before starting it
            postgres_cluster.start()
        postgres_cluster.drop_database(name)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for a test module (the browser tests skip themselves where it is missing)."""
    from playwright.sync_api import sync_playwright

    from tests.browser_support import launch

    with sync_playwright() as p:
        chromium = launch(p)
        try:
            yield chromium
        finally:
            chromium.close()
