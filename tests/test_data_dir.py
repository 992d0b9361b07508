"""The data directory under stress: a full disk, owner-only files, look-alike addresses."""

from __future__ import annotations

import os
import stat

import pytest

from tests.helpers import DATA_DIR_ONLY
from tests.http_helpers import wait_run, waiting_signup
from userflow.storage import faults


@pytest.fixture
def full_disk():
    """Turn the injected ENOSPC on and off; always off after the test."""

    class Switch:
        def on(self) -> None:
            faults.arm("ioerror:storage")

        def off(self) -> None:
            faults.arm("")

    yield Switch()
    faults.arm("")


@DATA_DIR_ONLY
async def test_a_full_disk_answers_503_loses_nothing_accepted_and_recovers(client, full_disk, tmp_path):
    accepted, token_a = await waiting_signup(client, "ann@example.com", "Ann Lee")
    run_a = accepted["workflowId"]
    runs_dir = next(p for p in tmp_path.rglob("runs") if p.is_dir())
    files_before = sorted(str(p.relative_to(runs_dir)) for p in runs_dir.rglob("*"))

    full_disk.on()
    response = await client.post("/api/signup", json={"email": "bob@example.com", "name": "Bob Stone"})
    assert response.status == 503
    body = await response.json()
    assert body["error"]["code"] == "storage_unavailable" and response.headers["Retry-After"]
    response = await client.post("/api/verify", json={"token": token_a})
    assert response.status == 503
    assert sorted(str(p.relative_to(runs_dir)) for p in runs_dir.rglob("*")) == files_before  # nothing half-written
    listed = await (await client.get("/api/workflows")).json()
    assert [w["id"] for w in listed["workflows"]] == [run_a]  # the refused signup left no trace
    assert listed["workflows"][0]["status"] == "WAITING"

    full_disk.off()  # space is back
    response = await client.post("/api/signup", json={"email": "bob@example.com", "name": "Bob Stone"})
    assert response.status == 202
    response = await client.post("/api/verify", json={"token": token_a})
    assert response.status == 200
    done = await wait_run(client, run_a, "COMPLETED", timeout=15)
    assert done["user"]["status"] == "ACTIVE"


@DATA_DIR_ONLY
async def test_everything_in_the_data_dir_is_owner_only(client, tmp_path):
    await waiting_signup(client, "ann@example.com", "Ann Lee")
    checked = 0
    for path in tmp_path.rglob("*"):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
        checked += 1
    assert checked >= 4  # lock, secret, runs/, a run file


async def test_a_look_alike_address_never_reaches_an_existing_account(client):
    await waiting_signup(client, "kelvin@example.com", "Ann Lee")
    response = await client.post("/api/signup", json={"email": "\u212aelvin@example.com", "name": "Kelvin"})
    assert response.status == 400  # the Kelvin sign, which Unicode normalisation turns into K
    response = await client.post("/api/signup", json={"email": "k\u0435lvin@example.com", "name": "Kelvin"})
    assert response.status == 400  # a Cyrillic е among Latin letters: it could pass for the first
    users = (await (await client.get("/api/users")).json())["users"]
    assert len(users) == 1
