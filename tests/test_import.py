"""``userflow import``: a data dir moved into PostgreSQL carries on there (SPEC: runs, users,
secrets and operator accounts copied; running it twice changes nothing).

The data dir is made by real servers: one stopped cleanly with runs waiting,
completed and cancelled and an operator account, then one that dies at its
first checkpoint (as after a SIGKILL: its last signup is only in the journal).
Every import is the real command in a child process; every check of the
result is a real server started on the database, or the database's tables.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pty
import re
import select
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from userflow.storage.journal import records
from tests.helpers import wait_until
from tests.server import Server

pytestmark = pytest.mark.timeout(180)

FIXTURES = Path(__file__).parent / "fixtures" / "release-0.1"
SUMMARY = re.compile(
    r"imported (?P<runs>[\d,]+) runs \((?P<new>[\d,]+) new, (?P<updated>[\d,]+) updated, (?P<unchanged>[\d,]+) unchanged\), "
    r"(?P<accounts>.+?), (?P<key>the token key \((new|unchanged)\)|no token key \(the data dir has none\)), "
    r"from (?P<source>\S+) into (?P<into>\S+) in [\d.]+ s"
)
TABLES = {
    "runs": "SELECT id, workflow, definition, format, status, document, version, next_wake_at, created_at, updated_at FROM runs ORDER BY id",
    "timeline": "SELECT run_id, seq, entry FROM timeline ORDER BY run_id, seq",
    "lookup_keys": "SELECT kind, key, run_id FROM lookup_keys ORDER BY kind, key",
    "secrets": "SELECT name, value, created_at FROM secrets ORDER BY name",
    "operator_accounts": "SELECT name, role, token_hash, created_at FROM operator_accounts ORDER BY name",
    "operator_sessions": "SELECT id_hash, name, expires_at FROM operator_sessions ORDER BY id_hash",
}


# -- the commands ---------------------------------------------------------------------------


def userflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "userflow.http.cli", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def import_into(data_dir: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return userflow("import", "--data-dir", str(data_dir), "--database-url", url, *args)


def summary_of(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The one line an import says, parsed; it says nothing else and prints nothing on stdout."""
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    match = SUMMARY.fullmatch(lines[0])
    assert match, lines[0]
    return match.groupdict()


def tables(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as connection:
        return {name: connection.execute(query).fetchall() for name, query in TABLES.items()}


def with_password(url: str, password: str) -> str:
    """The cluster trusts local connections: a password in the URL is accepted and never needed."""
    return url.replace("postgres@", f"postgres:{password}@", 1)


def token_of(link: str) -> str:
    return link.split("token=", 1)[1]


def serve_database(request: pytest.FixtureRequest, tmp_path: Path, url: str, token: str | None = None) -> Server:
    """A server on the database alone: its data dir is empty, so whatever it knows came from the import."""
    server = Server(str(tmp_path / "unused-data-dir"), "--email-failure-rate", "0", env={"USERFLOW_DATABASE_URL": url}).start()
    request.addfinalizer(server.stop)
    server.token = token
    return server


def packed_versions(data_dir: Path) -> dict[str, int]:
    """The versions of the runs in the data dir's pack (finished runs, out of their files)."""
    if not (data_dir / "packs.sqlite").exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'packs.sqlite'}?mode=ro", uri=True)) as connection:
        return dict(connection.execute("SELECT id, version FROM packed").fetchall())


def run_files(data_dir: Path) -> set[str]:
    return {path.stem for path in (data_dir / "runs").rglob("*.json")}


def newest_versions(data_dir: Path) -> dict[str, int]:
    """Each run's newest committed version, from its file or its packed row and the journal
    as the disk holds them."""
    versions = packed_versions(data_dir)
    for path in (data_dir / "runs").rglob("*.json"):
        run = orjson.loads(path.read_bytes())["run"]["1"]
        versions[run["id"]] = max(int(run["version"]), versions.get(run["id"], -1))
    for segment in sorted((data_dir / "journal").glob("*.log")):
        for run_id, version, _ in records(str(segment)):
            versions[run_id] = max(version, versions.get(run_id, -1))
    return versions


def sign_in(server: Server, token: str) -> str:
    """The dashboard's session cookie for ``token``."""
    request = urllib.request.Request(
        server.url + "/api/session", data=orjson.dumps({"token": token}), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 204
        return response.headers["Set-Cookie"].split(";", 1)[0]


def signed_in_as(server: Server, cookie: str) -> tuple[int, Any]:
    request = urllib.request.Request(server.url + "/api/session", headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, None


# -- the data dir -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A data dir as its servers left it, and what they said about it; copied by each test."""
    data_dir = tmp_path_factory.mktemp("made") / "data"
    added = userflow("operators", "add", "ops", "--role", "operator", "--data-dir", str(data_dir))
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()

    server = Server(str(data_dir), "--email-failure-rate", "0").start()
    server.token = token
    try:
        runs: dict[str, dict[str, Any]] = {}
        for key in ("waiting", "completed", "cancelled"):
            status, accepted = server.request("POST", "/api/signup", {"email": f"{key}@example.com", "name": f"{key.title()} User"})
            assert status == 202, accepted
            server.wait_for(f"/api/workflows/{accepted['workflowId']}", lambda d: d["status"] == "WAITING")
            emails = server.get(f"/api/outbox?workflowId={accepted['workflowId']}")["emails"]
            runs[key] = {**accepted, "link": emails[0]["link"]}
        assert server.request("GET", f"/api/verify?token={token_of(runs['completed']['link'])}")[0] == 200
        server.wait_for(f"/api/workflows/{runs['completed']['workflowId']}", lambda d: d["status"] == "COMPLETED")
        assert server.request("POST", f"/api/workflows/{runs['cancelled']['workflowId']}/cancel")[0] == 200
        server.wait_for(f"/api/workflows/{runs['cancelled']['workflowId']}", lambda d: d["status"] == "CANCELLED")
        for made_run in runs.values():
            made_run["detail"] = server.get(f"/api/workflows/{made_run['workflowId']}")
            made_run["user"] = server.get(f"/api/users/{made_run['userId']}")
        session = sign_in(server, token)
        finished = {runs[key]["workflowId"] for key in ("completed", "cancelled")}
        # The finished runs leave their files for the pack: the import reads them there.
        wait_until(lambda: not finished & run_files(data_dir) and finished <= set(packed_versions(data_dir)), timeout=20)
    finally:
        assert server.terminate() == 0

    # The next server dies at its first checkpoint, as a SIGKILL would leave it: the
    # late signup's commits are acknowledged and in the journal, not in any run file.
    dying = Server(str(data_dir), "--email-failure-rate", "0", env={"USERFLOW_FAULTS": "crash:storage:before-rename"}).start()
    try:
        dying.request("POST", "/api/signup", {"email": "late@example.com", "name": "Late User"})
    except (urllib.error.URLError, ConnectionError):
        pass  # the checkpoint may end the process before it answers; the commit was durable before
    assert dying.wait_exit() == 137
    journal_only = set(newest_versions(data_dir)) - run_files(data_dir) - set(packed_versions(data_dir))
    assert len(journal_only) == 1, journal_only
    return {"data_dir": data_dir, "token": token, "session": session, "runs": runs, "late": journal_only.pop()}


@pytest.fixture
def data_dir(made: dict[str, Any], tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(made["data_dir"], copy)
    return copy


# -- the tests ----------------------------------------------------------------------------


def test_an_imported_data_dir_carries_on_from_the_database(
    made: dict[str, Any], data_dir: Path, database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    expected = newest_versions(data_dir)
    done = import_into(data_dir, with_password(database_url, "hunter2"))
    summary = summary_of(done)
    assert "hunter2" not in done.stderr
    assert summary["runs"] == summary["new"] == "4" and summary["updated"] == summary["unchanged"] == "0"
    assert summary["accounts"] == "1 operator account (1 new, 0 unchanged) with 1 open session"
    assert summary["key"] == "the token key (new)"
    assert summary["source"] == str(data_dir) and summary["into"] == database_url

    # Every run at its newest committed version, the journal's included.
    copied = tables(database_url)
    assert {row[0]: row[6] for row in copied["runs"]} == expected
    assert {row[2] for row in copied["lookup_keys"]} == set(expected)
    assert bytes(copied["secrets"][0][1]) == (data_dir / "secret.key").read_bytes()

    server = serve_database(request, tmp_path, database_url, token=made["token"])
    # The same runs and users, as the data dir's server showed them.
    for run in made["runs"].values():
        assert server.get(f"/api/workflows/{run['workflowId']}") == run["detail"]
        assert server.get(f"/api/users/{run['userId']}") == run["user"]
    # The operator's token signs in there, and the dashboard session stays open; a wrong token does not.
    assert server.request("GET", "/api/workflows", token="uft_" + "x" * 43)[0] == 401
    status, whoami = signed_in_as(server, made["session"])
    assert status == 200 and (whoami["name"], whoami["via"]) == ("ops", "session")

    # The link the waiting user was mailed before the move verifies after it.
    waiting = made["runs"]["waiting"]
    assert server.request("GET", f"/api/verify?token={token_of(waiting['link'])}")[0] == 200
    done_run = server.wait_for(f"/api/workflows/{waiting['workflowId']}", lambda d: d["status"] == "COMPLETED")
    assert done_run["user"]["status"] in ("ACTIVE", "FLAGGED")
    # A finished run's link stays dead, and its address stays taken.
    assert server.request("GET", f"/api/verify?token={token_of(made['runs']['cancelled']['link'])}")[0] == 410
    assert server.request("POST", "/api/signup", {"email": "completed@example.com", "name": "Again"})[0] == 409

    # The signup that was only in the journal carries on: mailed, then verified.
    late = server.wait_for(f"/api/workflows/{made['late']}", lambda d: d["status"] == "WAITING")
    emails = server.wait_for(f"/api/outbox?workflowId={made['late']}", lambda b: len(b["emails"]) >= 1)["emails"]
    assert server.request("POST", "/api/verify", {"token": token_of(emails[0]["link"])})[0] == 200
    server.wait_for(f"/api/users/{late['user']['id']}", lambda u: u["status"] in ("ACTIVE", "FLAGGED"))


def test_importing_twice_changes_nothing(data_dir: Path, database_url: str) -> None:
    summary_of(import_into(data_dir, database_url))
    first = tables(database_url)
    again = summary_of(import_into(data_dir, database_url))
    assert (again["runs"], again["new"], again["updated"], again["unchanged"]) == ("4", "0", "0", "4")
    assert again["accounts"] == "1 operator account (0 new, 1 unchanged)"
    assert again["key"] == "the token key (unchanged)"
    assert tables(database_url) == first


def test_a_run_the_data_dir_has_newer_is_updated_and_an_older_one_left(data_dir: Path, database_url: str) -> None:
    summary_of(import_into(data_dir, database_url))
    with psycopg.connect(database_url) as connection:
        # One run as an earlier import left it (older), one as a server moved it on (newer).
        older, newer = [row[0] for row in connection.execute("SELECT id FROM runs ORDER BY id LIMIT 2")]
        connection.execute("UPDATE runs SET version = version - 1 WHERE id = %s", (older,))
        connection.execute("UPDATE runs SET version = version + 100 WHERE id = %s", (newer,))
    summary = summary_of(import_into(data_dir, database_url))
    assert (summary["new"], summary["updated"], summary["unchanged"]) == ("0", "1", "3")
    with psycopg.connect(database_url) as connection:
        versions = dict(connection.execute("SELECT id, version FROM runs").fetchall())
    expected = newest_versions(data_dir)
    assert versions[older] == expected[older] and versions[newer] == expected[newer] + 100


def test_a_data_dir_a_server_holds_is_refused(data_dir: Path, database_url: str, request: pytest.FixtureRequest) -> None:
    server = Server(str(data_dir)).start()
    request.addfinalizer(server.stop)
    done = import_into(data_dir, database_url)
    assert done.returncode == 2
    assert done.stderr == f"userflow: a userflow server (pid {server.proc.pid}) is using {data_dir}; stop it first, so that the copy is of a data dir nobody is changing\n"
    with psycopg.connect(database_url) as connection:  # the database was not even opened
        assert connection.execute("SELECT to_regclass('runs')").fetchone() == (None,)


def test_a_database_a_server_uses_is_refused(
    data_dir: Path, database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    serve_database(request, tmp_path, database_url)
    before = tables(database_url)
    done = import_into(data_dir, database_url)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("userflow: the database ") and "in use by another userflow server" in line, line
    assert tables(database_url) == before and before["runs"] == []


def test_a_database_with_another_token_key_is_refused(
    data_dir: Path, database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    serve_database(request, tmp_path, database_url).terminate()  # a server made the database its own key
    before = tables(database_url)
    done = import_into(data_dir, database_url)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"userflow: refusing to import {data_dir} into {database_url}: the database already has a token key")
    assert tables(database_url) == before


def test_an_account_the_database_has_with_another_token_is_reported(
    made: dict[str, Any], data_dir: Path, database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    added = userflow("operators", "add", "ops", "--role", "viewer", "--database-url", database_url)
    assert added.returncode == 0, added.stderr
    done = import_into(data_dir, database_url)
    assert done.returncode == 1
    summary, warning = done.stderr.splitlines()
    assert "4 runs (4 new, 0 updated, 0 unchanged), 1 operator account (0 new, 0 unchanged, 1 not imported)" in summary
    assert warning.startswith("userflow: the account 'ops' was not imported")
    server = serve_database(request, tmp_path, database_url)
    assert server.request("GET", "/api/workflows", token=made["token"])[0] == 401  # the data dir's token
    assert server.request("GET", "/api/workflows", token=added.stdout.strip())[0] == 200  # the database's own


@pytest.mark.parametrize("which", ["clean", "killed"])
def test_the_data_dirs_of_release_0_1_import_and_carry_on(
    which: str, database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(FIXTURES / which, data_dir)
    links = orjson.loads((data_dir / "links.json").read_bytes())
    summary = summary_of(import_into(data_dir, database_url))
    assert summary["new"] == str(len(links)) and summary["accounts"] == "no operator accounts"

    server = serve_database(request, tmp_path, database_url)
    status_of = {key: server.get(f"/api/workflows/{run['workflowId']}")["status"] for key, run in links.items() if key != "late"}
    assert status_of == {"waiting": "WAITING", "completed": "COMPLETED", "cancelled": "CANCELLED", "resent": "WAITING"}
    waiting = links["waiting"]
    assert server.request("GET", f"/api/verify?token={token_of(waiting['links'][0])}")[0] == 200
    server.wait_for(f"/api/workflows/{waiting['workflowId']}", lambda d: d["status"] == "COMPLETED")
    newest, replaced = links["resent"]["links"][0], links["resent"]["links"][-1]
    assert server.request("GET", f"/api/verify?token={token_of(replaced)}")[0] == 410
    assert server.request("POST", "/api/verify", {"token": token_of(newest)})[0] == 200
    if "late" in links:  # the killed one's signup that only its journal held
        late = links["late"]
        server.wait_for(f"/api/workflows/{late['workflowId']}", lambda d: d["status"] == "WAITING")
        emails = server.wait_for(f"/api/outbox?workflowId={late['workflowId']}", lambda b: len(b["emails"]) == 1)["emails"]
        assert server.request("GET", f"/api/verify?token={token_of(emails[0]['link'])}")[0] == 200


def test_on_a_terminal_a_progress_bar_then_the_summary(data_dir: Path, database_url: str) -> None:
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "userflow.http.cli", "import", "--data-dir", str(data_dir), "--database-url", database_url, "--batch", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
        try:
            chunk = os.read(controller, 4096) if ready else b""
        except OSError as exc:  # EIO: every writer of the terminal has closed it
            if exc.errno != errno.EIO:
                raise
            chunk = b""
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == b""
    text = seen.decode()
    assert "\rimporting runs [" in text and "4/4 100%" in text
    last = text.replace("\r\n", "\n").rsplit("\r", 1)[-1]  # what stays on the screen
    assert SUMMARY.fullmatch(last.strip()), text


def test_what_is_no_data_dir_or_no_database_is_refused(tmp_path: Path, database_url: str) -> None:
    missing = import_into(tmp_path / "missing", database_url)
    assert (missing.returncode, missing.stderr) == (1, f"userflow: {tmp_path / 'missing'} is not a directory: nothing to import\n")
    (tmp_path / "empty").mkdir()
    empty = import_into(tmp_path / "empty", database_url)
    assert empty.returncode == 1 and "holds no userflow data" in empty.stderr
    assert list((tmp_path / "empty").iterdir()) == []  # nothing made in it
    env = {name: value for name, value in os.environ.items() if name != "USERFLOW_DATABASE_URL"}
    no_url = subprocess.run(
        [sys.executable, "-m", "userflow.http.cli", "import", "--data-dir", str(tmp_path / "empty")],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert no_url.returncode == 1 and "needs --database-url" in no_url.stderr
    shutil.copytree(FIXTURES / "clean", tmp_path / "data")
    unreachable = import_into(tmp_path / "data", with_password(database_url.rsplit("/", 1)[0] + "/no_such_database", "hunter2"))
    assert unreachable.returncode == 2 and "no_such_database" in unreachable.stderr and "hunter2" not in unreachable.stderr
