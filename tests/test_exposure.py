"""Facing a network: the loopback rule, proxies, CORS, and how ``serve`` starts or refuses to.

Real server processes, real HTTP; the start-up failures are real commands
whose exit status and standard error are read as a person would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.server import Server
from tests.test_access import add_account, bearer, call


def userflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "userflow.http.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("USERFLOW_")}, **(env or {})},
    )


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No account at all: the local demo."""
    server = Server(str(tmp_path_factory.mktemp("open") / "data")).start()
    try:
        yield server
    finally:
        server.stop()


# -- with no account: loopback only ----------------------------------------------------------


def test_with_no_account_a_direct_loopback_client_may_operate(open_server: Server) -> None:
    me = call(open_server, "GET", "/api/session")
    assert me.status == 200 and me.json()["via"] == "loopback" and me.json()["role"] == "operator"
    assert call(open_server, "GET", "/api/workflows").status == 200
    # Written before the listening line; read from the pipe by another thread, so awaited.
    wait_until(lambda: any("answer only local clients" in line for line in open_server.stderr), message="the start-up output says so")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Forwarded-For": "203.0.113.9"}, id="x-forwarded-for"),
        pytest.param({"X-Forwarded-For": "127.0.0.1"}, id="x-forwarded-for-loopback"),
        pytest.param({"Forwarded": "for=203.0.113.9"}, id="forwarded"),
        pytest.param({"Host": "rebound.evil.example"}, id="dns-rebinding-host"),
    ],
)
def test_with_no_account_a_proxied_or_rebound_request_is_refused(open_server: Server, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/api/workflows"), ("GET", "/api/events"), ("GET", "/metrics"), ("POST", "/api/workflows/wf_x/cancel")):
        answer = call(open_server, method, path, headers)
        assert answer.status == 401 and answer.error_code() == "local_only", (method, path, answer.status)
        assert "userflow operators add" in answer.json()["error"]["message"]
    assert call(open_server, "POST", "/api/signup", headers, {"email": "pub@example.com", "name": "Pub"}).status == 202


def test_with_no_account_another_sites_page_cannot_act_through_a_local_browser(open_server: Server) -> None:
    answer = call(open_server, "POST", "/api/workflows/wf_x/cancel", {"Origin": "https://evil.example"})
    assert answer.status == 403 and answer.error_code() == "cross_origin"
    assert call(open_server, "POST", "/api/workflows/wf_x/cancel", {"Origin": open_server.url}).status == 404


def test_a_non_loopback_address_with_no_account_refuses_to_start(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    for host in ("0.0.0.0", "::"):
        done = userflow("serve", "--host", host, "--port", "0", "--data-dir", data_dir)
        assert done.returncode == 2, done
        _one_line_failure(done, "no operator account", "userflow operators add")
    token = add_account(data_dir, "alice", "operator")
    server = Server(data_dir, "--host", "0.0.0.0").start()
    try:
        server.url = server.url.replace("0.0.0.0", "127.0.0.1")
        assert call(server, "GET", "/api/workflows", bearer(token)).status == 200
        assert call(server, "GET", "/api/workflows").status == 401
    finally:
        server.stop()


# -- trusted proxies ----------------------------------------------------------------------------


def test_the_forwarded_address_counts_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    def burst(server: Server, headers_for: list[dict[str, str]]) -> list[int]:
        return [
            call(server, "POST", "/api/signup", headers, {"email": f"u{n}@example.com", "name": "Ann"}).status
            for n, headers in enumerate(headers_for)
        ]

    alternating = [{"X-Forwarded-For": f"203.0.113.{n % 2 + 1}"} for n in range(5)]
    behind = Server(str(tmp_path / "proxied"), "--signup-rate-limit", "2/60", "--trusted-proxy", "127.0.0.0/8").start()
    try:
        # Two clients behind the proxy, two signups each; the fifth is the first client's third.
        assert burst(behind, alternating) == [202, 202, 202, 202, 429]
        # The rightmost untrusted hop is the client: a forged address at the left changes nothing.
        forged = [{"X-Forwarded-For": f"198.51.100.{n}, 203.0.113.7"} for n in range(3)]
        assert burst(behind, forged) == [202, 202, 429]
        assert burst(behind, [{"Forwarded": 'for="[2001:db8::5]:4711"'}] * 3) == [202, 202, 429]
    finally:
        behind.stop()
    direct = Server(str(tmp_path / "direct"), "--signup-rate-limit", "2/60").start()
    try:
        # Not trusted: every forwarded address is ignored; all five come from 127.0.0.1.
        assert burst(direct, alternating) == [202, 202, 429, 429, 429]
    finally:
        direct.stop()


# -- CORS --------------------------------------------------------------------------------------------


def test_cors_only_for_the_listed_origins_and_only_on_public_endpoints(tmp_path: Path) -> None:
    shop = "https://shop.example"
    data_dir = str(tmp_path / "data")
    token = add_account(data_dir, "alice", "operator")
    server = Server(data_dir, "--cors-origin", shop).start()
    try:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        ok = call(server, "OPTIONS", "/api/signup", {"Origin": shop, **preflight})
        assert ok.status == 200 and ok.headers["Access-Control-Allow-Origin"] == shop
        assert "content-type" in ok.headers["Access-Control-Allow-Headers"].lower()
        other = call(server, "OPTIONS", "/api/signup", {"Origin": "https://evil.example", **preflight})
        assert "Access-Control-Allow-Origin" not in other.headers and other.status >= 400
        signed = call(server, "POST", "/api/signup", {"Origin": shop}, {"email": "c@example.com", "name": "Cy"})
        assert signed.status == 202 and signed.headers["Access-Control-Allow-Origin"] == shop
        assert "Location" in signed.headers["Access-Control-Expose-Headers"]
        stranger = call(server, "POST", "/api/signup", {"Origin": "https://evil.example"}, {"email": "d@example.com", "name": "Di"})
        assert "Access-Control-Allow-Origin" not in stranger.headers
        verify = call(server, "OPTIONS", "/api/verify", {"Origin": shop, **preflight})
        assert verify.headers["Access-Control-Allow-Origin"] == shop
        for method, path in (("GET", "/api/workflows"), ("GET", "/api/users"), ("GET", "/api/session"), ("GET", "/metrics")):
            read = call(server, method, path, {"Origin": shop, **bearer(token)})
            assert read.status == 200 and "Access-Control-Allow-Origin" not in read.headers, path
            pre = call(server, "OPTIONS", path, {"Origin": shop, "Access-Control-Request-Method": "GET"})
            assert "Access-Control-Allow-Origin" not in pre.headers and pre.status >= 400, path
        session = call(server, "OPTIONS", "/api/session", {"Origin": shop, **preflight})
        assert "Access-Control-Allow-Origin" not in session.headers, "signing in is not for other sites"
    finally:
        server.stop()


# -- starting, or saying in one line why not ------------------------------------------------------


def _one_line_failure(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and '"level":"error"' not in done.stderr, done.stderr
    # One line says why, the last; what came before is the ordinary start-up log.
    assert [line for line in lines if line.startswith("userflow: ")] == lines[-1:], done.stderr
    for word in words:
        assert word in lines[-1], (word, done.stderr)


def test_start_up_failures_are_one_line_and_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    _one_line_failure(userflow("serve", "--port", "0", "--data-dir", str(a_file)), "data dir", str(a_file), "not a directory")
    _one_line_failure(userflow("serve", "--port", "0", "--data-dir", "/proc/nope/x"), "data dir", "/proc/nope/x")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "runs").write_text("a file where a directory belongs")
    _one_line_failure(userflow("serve", "--port", "0", "--data-dir", str(blocked)), "data dir", "runs is not a directory")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        _one_line_failure(userflow("serve", "--port", port, "--data-dir", str(tmp_path / "d2")), "cannot listen on", port, "in use")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "operators.json").write_text("{not json")
    _one_line_failure(userflow("serve", "--port", "0", "--data-dir", str(damaged)), "operator accounts")


def test_a_database_that_cannot_be_used_is_one_line_and_exit_2_without_its_password(database_url: str) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once the socket closes
    refused = userflow("serve", "--port", "0", "--database-url", f"postgresql://app:s3cret@127.0.0.1:{port}/userflow")
    _one_line_failure(refused, "cannot use the database postgresql://app@127.0.0.1", str(port))
    assert "s3cret" not in refused.stderr
    unknown = database_url.rsplit("/", 1)[0] + "/no_such_database"
    _one_line_failure(userflow("serve", "--port", "0", "--database-url", unknown), "no_such_database", "does not exist")
    bad = userflow("serve", "--port", "0", "--database-url", "mysql://app:s3cret@db/userflow")
    assert bad.returncode == 2 and "must start with postgresql://" in bad.stderr and "s3cret" not in bad.stderr, bad.stderr
    first = subprocess.Popen(
        [sys.executable, "-m", "userflow.http.cli", "serve", "--port", "0", "--database-url", database_url, "--node-id", "twin"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert first.stdout is not None and "listening on" in first.stdout.readline()
        twin = userflow("serve", "--port", "0", "--database-url", database_url, "--node-id", "twin", "--node-timeout", "1")
        _one_line_failure(twin, "node id 'twin' is in use by a live node")
    finally:
        first.terminate()
        first.communicate(timeout=20)


def test_help_says_every_default_and_the_environment() -> None:
    done = userflow("serve", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "default None" not in text
    for words in ("default http://HOST:PORT", "0.2 in outbox mode, 0 with SMTP", "GEMINI_API_KEY", "GEMINI_MODEL",
                  "GEMINI_BASE_URL", "USERFLOW_OPERATOR_TOKEN", "smtps://", "?starttls=1", "--trusted-proxy", "--cors-origin"):  # fmt: skip
        assert words in text, words
    version = userflow("--version")
    assert version.returncode == 0 and version.stdout.startswith("userflow ") and version.stdout.split()[1][0].isdigit()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("serve", "--port", "abc"), "'abc' is not a TCP port"),
        (("serve", "--verify-ttl", "soon"), "'soon' is not a number of seconds"),
        (("serve", "--max-live-actors", "many"), "'many' is not a whole number"),
        (("serve", "--trusted-proxy", "10.0.0.0/33"), "not an IP address or CIDR range"),
        (("serve", "--cors-origin", "https://shop.example/path"), "is not an origin"),
    ],
)
def test_bad_flags_name_the_value_and_what_it_should_be(args: tuple[str, ...], words: str) -> None:
    done = userflow(*args)
    assert done.returncode == 2 and words in done.stderr and "_port" not in done.stderr, done.stderr
