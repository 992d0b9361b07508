"""Upgrades strand nothing (SPEC section 2): data dirs written by release 0.1 (the
first), after a clean stop and after a SIGKILL, are served by this code and their
runs carry on; links already sent still verify.

The data dirs were made by ``tests/fixtures/make_release_datadir.py`` with that
release installed; they are copied for each test and never changed in place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.server import Server

FIXTURES = Path(__file__).parent / "fixtures" / "release-0.1"


def token(link: str) -> str:
    return link.split("token=", 1)[1]


def serve(request: pytest.FixtureRequest, tmp_path: Path, which: str) -> tuple[Server, dict[str, Any]]:
    data_dir = tmp_path / "data"
    shutil.copytree(FIXTURES / which, data_dir)
    links = json.loads((data_dir / "links.json").read_text())
    server = Server(str(data_dir), "--email-failure-rate", "0").start()
    request.addfinalizer(server.stop)
    return server, links


@pytest.fixture(params=["clean", "killed"])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Server, dict[str, Any]]:
    return serve(request, tmp_path, request.param)


def test_the_runs_of_the_release_before_carry_on(upgraded: tuple[Server, dict[str, Any]]) -> None:
    server, links = upgraded
    status_of = {key: server.get(f"/api/workflows/{made['workflowId']}")["status"] for key, made in links.items() if key != "late"}
    assert status_of == {"waiting": "WAITING", "completed": "COMPLETED", "cancelled": "CANCELLED", "resent": "WAITING"}

    # The link the waiting user was sent before the upgrade verifies after it.
    waiting = links["waiting"]
    assert server.request("GET", f"/api/verify?token={token(waiting['links'][0])}")[0] == 200
    done = server.wait_for(f"/api/workflows/{waiting['workflowId']}", lambda d: d["status"] == "COMPLETED")
    assert done["user"]["status"] in ("ACTIVE", "FLAGGED") and done["outcome"] == "completed"

    # The resent user: the replaced link is dead, the newest one works.
    resent = links["resent"]
    newest, replaced = resent["links"][0], resent["links"][-1]
    assert server.request("GET", f"/api/verify?token={token(replaced)}")[0] == 410
    assert server.request("POST", "/api/verify", {"token": token(newest)})[0] == 200
    server.wait_for(f"/api/workflows/{resent['workflowId']}", lambda d: d["status"] == "COMPLETED")

    # Finished runs stay as they were: a repeated click is harmless, a cancelled link is gone.
    assert server.request("GET", f"/api/verify?token={token(links['completed']['links'][0])}")[0] == 200
    assert server.request("GET", f"/api/verify?token={token(links['cancelled']['links'][0])}")[0] == 410
    assert server.get(f"/api/users/{links['cancelled']['userId']}")["status"] == "CANCELLED"

    # An address of the old release is still taken by its user; a new one signs up.
    status, body = server.request("POST", "/api/signup", {"email": "completed@example.com", "name": "Again"})
    assert status == 409, body
    status, body = server.request("POST", "/api/signup", {"email": "new@example.com", "name": "New User"})
    assert status == 202
    server.wait_for(f"/api/workflows/{body['workflowId']}", lambda d: d["status"] == "WAITING")


def test_a_signup_the_release_before_had_only_in_its_journal_carries_on(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server, links = serve(request, tmp_path, "killed")
    late = links["late"]
    server.wait_for(f"/api/workflows/{late['workflowId']}", lambda d: d["status"] == "WAITING")
    emails = server.wait_for(f"/api/outbox?workflowId={late['workflowId']}", lambda b: len(b["emails"]) == 1)["emails"]
    assert server.request("GET", f"/api/verify?token={token(emails[0]['link'])}")[0] == 200
    server.wait_for(f"/api/users/{late['userId']}", lambda u: u["status"] in ("ACTIVE", "FLAGGED"))
