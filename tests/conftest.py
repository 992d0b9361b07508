"""Fixtures shared by the HTTP API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from userflow.http.app import build_app
from userflow.http.config import Settings
from tests.http_helpers import PUBLIC_URL, MakeClient
from userflow.storage import DataDir


@pytest.fixture
async def make_client(tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[MakeClient]:
    """A factory of test clients, each on an app with its own fresh data dir.

    Keyword arguments override the test defaults of ``Settings`` (no injected
    email failures). Clients are closed, so engines stop, before data dirs close.
    """
    opened: list[tuple[TestClient, DataDir]] = []

    async def make(**overrides: Any) -> TestClient:
        path = tmp_path / f"data{len(opened)}"
        fields: dict[str, Any] = {"data_dir": str(path), "email_failure_rate": 0.0}
        fields.update(overrides)
        settings = Settings(**fields)
        data_dir = DataDir(str(path)).open()
        try:
            client = await aiohttp_client(build_app(settings, data_dir, PUBLIC_URL))
        except BaseException:
            data_dir.close()
            raise
        opened.append((client, data_dir))
        return client

    yield make
    for client, data_dir in reversed(opened):
        try:
            await client.close()
        finally:
            data_dir.close()


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient:
    """A client on an outbox-mode app with no injected email failures."""
    return await make_client()
