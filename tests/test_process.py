"""The durability guarantees, proven on a real server process killed with SIGKILL."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from tests.helpers import wait_until
from tests.helpers import DATA_DIR_ONLY
from tests.server import Server

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def servers(stores_at):
    """Server processes on the test backend's stores (the data dir given, or the test's database)."""
    started: list[Server] = []

    def make(data_dir, *args, **kwargs) -> Server:
        env = {**stores_at.env(), **kwargs.pop("env", {})}
        server = Server(str(data_dir), *args, env=env, **kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


def token_of(link: str) -> str:
    return link.split("token=", 1)[1]


def outbox_by_run(server: Server) -> dict[str, list[dict]]:
    by_run: dict[str, list[dict]] = collections.defaultdict(list)
    for email in server.get("/api/outbox?limit=200")["emails"]:
        by_run[email["workflowId"]].append(email)
    return by_run


def step(detail: dict, step_id: str) -> dict:
    return next(s for s in detail["steps"] if s["id"] == step_id)


def test_kill_while_waiting_and_while_retrying_then_everything_completes(servers, tmp_path):
    # 1. A run that reaches its durable wait.
    first = servers(tmp_path, "--email-failure-rate", "0")
    status, a = first.request("POST", "/api/signup", {"email": "ann@example.com", "name": "Ann Lee"})
    assert status == 202
    first.wait_for(f"/api/workflows/{a['workflowId']}", lambda d: d["status"] == "WAITING")
    first.terminate()

    # 2. On the same data dir, every email attempt fails: a second run is retrying.
    second = servers(tmp_path, "--email-failure-rate", "1")
    status, b = second.request("POST", "/api/signup", {"email": "bob@example.com", "name": "Bob Stone"})
    assert status == 202
    detail = second.wait_for(
        f"/api/workflows/{b['workflowId']}",
        lambda d: step(d, "send-verification-email")["status"] == "RETRYING"
        and len(step(d, "send-verification-email")["attempts"]) >= 2,
    )
    retry_at = datetime.fromisoformat(step(detail, "send-verification-email")["retryAt"])
    assert second.get(f"/api/workflows/{a['workflowId']}")["status"] == "WAITING"
    assert second.kill() == -9

    # 3. Restart without failures: the backoff keeps its deadline, both runs finish.
    third = servers(tmp_path, "--email-failure-rate", "0")
    detail = third.wait_for(f"/api/workflows/{b['workflowId']}", lambda d: d["status"] == "WAITING")
    email_step = step(detail, "send-verification-email")
    resumed = email_step["attempts"][-1]
    assert resumed["error"] is None
    assert datetime.fromisoformat(resumed["startedAt"]) >= retry_at
    assert all(att["error"] for att in email_step["attempts"][:-1])

    outbox = outbox_by_run(third)
    assert len(outbox[a["workflowId"]]) == 1 and len(outbox[b["workflowId"]]) == 1
    for run in (a, b):
        status, body = third.request("GET", f"/api/verify?token={token_of(outbox[run['workflowId']][0]['link'])}")
        assert (status, body) == (200, {"workflowId": run["workflowId"], "status": "verified"})
    for run in (a, b):
        done = third.wait_for(f"/api/workflows/{run['workflowId']}", lambda d: d["status"] == "COMPLETED")
        assert done["user"]["status"] in ("ACTIVE", "FLAGGED")

    users = third.get("/api/users")["users"]
    assert sorted(u["email"] for u in users) == ["ann@example.com", "bob@example.com"]
    assert all(len(emails) == 1 for emails in outbox_by_run(third).values())


def test_accepted_signups_and_verifications_survive_an_immediate_kill(servers, tmp_path):
    server = servers(tmp_path, "--email-failure-rate", "0")
    emails = [f"user{i}@example.com" for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda e: server.request("POST", "/api/signup", {"email": e, "name": "Test User"}), emails))
    assert all(status == 202 for status, _ in answers)
    # Verify half of them as soon as their email exists, then kill at once.
    accepted = {body["workflowId"] for _, body in answers}
    by_run = server.wait_for("/api/outbox?limit=200", lambda o: len(o["emails"]) >= 12)
    verified = set()
    for email in by_run["emails"][:12]:
        status, body = server.request("GET", f"/api/verify?token={token_of(email['link'])}")
        assert status == 200
        verified.add(body["workflowId"])
    assert server.kill() == -9

    again = servers(tmp_path, "--email-failure-rate", "0")
    runs = {w["id"]: w for w in again.get("/api/workflows?limit=200")["workflows"]}
    assert accepted <= set(runs), "a signup answered 202 was lost"
    for run_id in verified:
        done = again.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED")
        assert done["user"]["verifiedAt"] is not None
    for run_id in accepted - verified:
        again.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING")
    outbox = outbox_by_run(again)
    assert set(outbox) == accepted
    assert all(len({e["messageId"] for e in emails}) == 1 for emails in outbox.values())
    assert len(again.get("/api/users?limit=200")["users"]) == len(emails)


def test_second_server_on_the_same_store_refuses_to_start(servers, stores_at, tmp_path):
    """A data dir has one server; a database has nodes, each with its own id."""
    first = servers(tmp_path)
    rival = Server(str(tmp_path), "--node-timeout", "1", env=stores_at.env())
    with pytest.raises(RuntimeError) as excinfo:
        rival.start()
    assert rival.proc is not None and rival.proc.returncode == 2
    if stores_at.backend == "files":
        assert "in use by another userflow server" in str(excinfo.value)
        return
    assert f"node id {first.node_id!r} is in use by a live node" in str(excinfo.value)
    second = servers(tmp_path, "--node-id", "second")
    assert second.get("/readyz")["node"] == "second" and first.get("/readyz")["node"] == first.node_id


def test_sigterm_stops_cleanly_and_the_run_resumes(servers, tmp_path):
    server = servers(tmp_path, "--email-failure-rate", "0")
    status, run = server.request("POST", "/api/signup", {"email": "cy@example.com", "name": "Cy Young"})
    assert status == 202
    assert server.terminate() == 0
    assert "Traceback" not in "".join(server.stderr)

    again = servers(tmp_path, "--email-failure-rate", "0")
    again.wait_for(f"/api/workflows/{run['workflowId']}", lambda d: d["status"] == "WAITING")
    assert len(outbox_by_run(again)[run["workflowId"]]) == 1


def answers(server: Server, runs: list[dict]) -> dict:
    """What lists, counts and lookups say about these runs."""
    return {
        "workflows": server.get("/api/workflows?limit=100")["workflows"],
        "completed": server.get("/api/workflows?status=COMPLETED&limit=100")["workflows"],
        "waiting": server.get("/api/workflows?status=WAITING&limit=3")["workflows"],
        "users": [server.get(f"/api/users/{run['userId']}") for run in runs],
        "pending": server.get("/api/users?status=PENDING&limit=100")["users"],
        "runs": server.get("/readyz")["runs"],
    }


def test_a_start_reads_only_the_active_runs_and_a_kill_loses_nothing_listed(servers, stores_at, tmp_path):
    first = servers(tmp_path, "--email-failure-rate", "0")
    runs = [first.request("POST", "/api/signup", {"email": f"ix{n}@example.com", "name": "Ix"})[1] for n in range(5)]
    for run in runs:
        first.wait_for(f"/api/workflows/{run['workflowId']}", lambda d: d["status"] == "WAITING")
    links = {run_id: emails[0]["link"] for run_id, emails in outbox_by_run(first).items()}
    verified = runs[0]["workflowId"]
    assert first.request("GET", f"/api/verify?token={token_of(links[verified])}")[0] == 200
    first.wait_for(f"/api/workflows/{verified}", lambda d: d["status"] == "COMPLETED")
    before = answers(first, runs)
    assert first.kill() == -9  # straight after the commits: the catalog had them when they were answered

    second = servers(tmp_path, "--email-failure-rate", "0")
    # A database's waiting runs belong to no node: a start claims back only what it was executing.
    started = "recovered 4 active runs" if stores_at.backend == "files" else "claimed back 0 runs"
    wait_until(lambda: any(started in line for line in second.stderr))
    assert answers(second, runs) == before
    assert second.get(f"/api/workflows/{verified}")["status"] == "COMPLETED"
    assert second.request("GET", f"/api/verify?token={token_of(links[runs[1]['workflowId']])}")[0] == 200
    second.wait_for(f"/api/workflows/{runs[1]['workflowId']}", lambda d: d["status"] == "COMPLETED")
    status, again = second.request("POST", "/api/signup", {"email": "ix2@example.com", "name": "Ix"})
    assert status == 202 and again["workflowId"] == runs[2]["workflowId"]  # the same PENDING user
    status, taken = second.request("POST", "/api/signup", {"email": "ix0@example.com", "name": "Ix"})
    assert status == 409, taken  # the address of a user who finished: found in the catalog


@DATA_DIR_ONLY
@pytest.mark.parametrize("harm", ["lost", "damaged", "truncated"])
def test_a_lost_or_damaged_catalog_is_made_again_with_the_same_answers(servers, tmp_path, harm):
    first = servers(tmp_path, "--email-failure-rate", "0")
    runs = [first.request("POST", "/api/signup", {"email": f"cx{n}@example.com", "name": "Cx"})[1] for n in range(6)]
    for run in runs:
        first.wait_for(f"/api/workflows/{run['workflowId']}", lambda d: d["status"] == "WAITING")
    links = {run_id: emails[0]["link"] for run_id, emails in outbox_by_run(first).items()}
    for run in runs[:2]:
        assert first.request("GET", f"/api/verify?token={token_of(links[run['workflowId']])}")[0] == 200
        first.wait_for(f"/api/workflows/{run['workflowId']}", lambda d: d["status"] == "COMPLETED")
    before = answers(first, runs)
    assert first.terminate() == 0

    catalog = tmp_path / "catalog.sqlite"
    if harm == "lost":
        catalog.unlink()
    elif harm == "damaged":
        catalog.write_bytes(b"not a catalog at all " * 500)
    else:
        catalog.write_bytes(catalog.read_bytes()[:5000])
    second = servers(tmp_path, "--email-failure-rate", "0")
    wait_until(lambda: any("catalog made from 6 stored runs" in line for line in second.stderr))
    assert answers(second, runs) == before
    waiting = runs[3]["workflowId"]
    assert second.request("GET", f"/api/verify?token={token_of(links[waiting])}")[0] == 200  # token lookups too
    second.wait_for(f"/api/workflows/{waiting}", lambda d: d["status"] == "COMPLETED")
