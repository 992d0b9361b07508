"""Who may do what (SPEC section 6), against real server processes over real HTTP.

The matrix of operator routes is generated from the application's own route
table, so a route added later is checked (and refused to strangers) without
anyone remembering to add it here.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import StoresAt
from tests.server import Server
from userflow.http.app import build_app
from userflow.http.auth import Access
from userflow.http.config import Settings
from userflow.storage import DataDir
from userflow.storage.stores import FileStores

FOREIGN = "https://evil.example"

# What SPEC section 6 makes public; every other route must be refused to strangers.
PUBLIC = {
    ("POST", "/api/signup"),
    ("GET", "/api/verify"),
    ("POST", "/api/verify"),
    ("GET", "/verify"),
    ("POST", "/verify"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/openapi.json"),
    ("GET", "/signin"),
    ("POST", "/api/session"),
    ("DELETE", "/api/session"),
    ("GET", "/static/{name}"),
}


# -- plumbing ---------------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        assert self.headers.get_content_type() == "application/json", (self.status, self.body[:200])
        error = self.json()["error"]
        assert set(error) == {"code", "message"} and error["message"], error
        return str(error["code"])


def call(server: Server, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None) -> Answer:
    """One request; an event stream answers with its status and headers only."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
    try:
        data = json.dumps(body).encode() if body is not None else None
        sent = dict(headers or {})
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        streaming = resp.getheader("Content-Type", "").startswith("text/event-stream")
        return Answer(resp.status, resp.headers, b"" if streaming or method == "HEAD" else resp.read())
    finally:
        conn.close()


def operators(target: str | list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``userflow operators ARGS`` on a data dir (a path) or a database (``["--database-url", URL]``)."""
    where = ["--data-dir", target] if isinstance(target, str) else target
    return subprocess.run(
        [sys.executable, "-m", "userflow.http.cli", "operators", *args, *where],
        capture_output=True,
        text=True,
        timeout=30,
    )


def add_account(target: str | list[str], name: str, role: str) -> str:
    done = operators(target, "add", name, "--role", role)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and token.startswith("uft_") and len(token) > 40
    return token


def sign_in(server: Server, token: str) -> str:
    answer = call(server, "POST", "/api/session", {"Origin": server.url}, {"token": token})
    assert answer.status == 204, answer.body
    cookie = SimpleCookie(answer.headers["Set-Cookie"])["userflow_session"]
    return cookie.value


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def session(cookie: str, origin: str | None = None) -> dict[str, str]:
    headers = {"Cookie": f"userflow_session={cookie}"}
    if origin:
        headers["Origin"] = origin
    return headers


def until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} never held"
        time.sleep(0.02)  # polling; the condition decides


def route_table(tmp: Path) -> list[tuple[str, str, Access]]:
    """(method, path, access) of every route the application registers."""
    data_dir = DataDir(str(tmp / "routes")).open()
    try:
        app = build_app(Settings(data_dir=data_dir.path), FileStores(data_dir), "http://127.0.0.1:1", autostart=False)
        from userflow.http.openapi import ROLES

        return sorted((method, path, Access(role)) for (method, path), role in app[ROLES].items())
    finally:
        data_dir.close()


# -- the servers ---------------------------------------------------------------------------


class Fleet:
    """A server with a viewer and an operator, and a seeded waiting run."""

    def __init__(self, root: Path) -> None:
        self.data_dir = str(root / "data")
        self.viewer = add_account(self.data_dir, "vera", "viewer")
        self.operator = add_account(self.data_dir, "alice", "operator")
        self.server = Server(self.data_dir, "--email-failure-rate", "0").start()
        self.server.token = self.operator
        status, body = self.server.request("POST", "/api/signup", {"email": "ann@example.com", "name": "Ann Lee"})
        assert status == 202, body
        self.run_id, self.user_id = body["workflowId"], body["userId"]
        self.server.wait_for(f"/api/workflows/{self.run_id}", lambda d: d["status"] == "WAITING")

    def path(self, template: str) -> str:
        return (
            template.replace("/workflows/{id}", f"/workflows/{self.run_id}")
            .replace("/users/{id}", f"/users/{self.user_id}")
            .replace("/deliveries/{id}", "/deliveries/dlv_none_1_1")
            .replace("{name}", "dashboard.js")
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    made = Fleet(tmp_path_factory.mktemp("access"))
    try:
        yield made
    finally:
        made.server.stop()


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, Access]]:
    return route_table(tmp_path_factory.mktemp("routes"))


# -- the matrix ------------------------------------------------------------------------------


def test_the_route_table_matches_the_public_surface_of_the_spec(routes: list[tuple[str, str, Access]]) -> None:
    public = {(m, p) for m, p, a in routes if a is Access.PUBLIC and m != "HEAD"}
    assert public == PUBLIC
    acting = {(m, p) for m, p, a in routes if a is Access.OPERATOR}
    assert acting == {
        ("POST", "/api/workflows/failed/retry"),
        ("POST", "/api/workflows/{id}/retry"),
        ("POST", "/api/workflows/{id}/cancel"),
        ("POST", "/api/users/{id}/resend-verification"),
        ("DELETE", "/api/users/{id}"),
        ("POST", "/api/webhooks/deliveries/{id}/retry"),
    }


def operator_routes(routes: list[tuple[str, str, Access]]) -> list[tuple[str, str, Access]]:
    return [(m, p, a) for m, p, a in routes if a is not Access.PUBLIC]


def test_strangers_get_401_on_every_operator_route(fleet: Fleet, routes: list[tuple[str, str, Access]]) -> None:
    for method, path, _ in operator_routes(routes):
        for headers, code in (
            ({}, "authentication_required"),
            (bearer("uft_" + "x" * 43), "invalid_token"),
            (bearer(fleet.viewer + "x"), "invalid_token"),
            ({"Authorization": f"Basic {fleet.operator}"}, "invalid_token"),
            (session("made-up-session-id"), "session_expired"),
        ):
            answer = call(fleet.server, method, fleet.path(path), headers)
            assert answer.status == 401, (method, path, headers, answer.status, answer.body[:200])
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            if method != "HEAD":
                assert answer.error_code() == code, (method, path)


def test_viewers_read_and_are_refused_every_action(fleet: Fleet, routes: list[tuple[str, str, Access]]) -> None:
    for method, path, access in operator_routes(routes):
        answer = call(fleet.server, method, fleet.path(path), bearer(fleet.viewer))
        if access is Access.OPERATOR:
            assert answer.status == 403 and answer.error_code() == "forbidden", (method, path, answer.status)
        else:
            assert answer.status == 200, (method, path, answer.status, answer.body[:200])
    assert fleet.server.get(f"/api/workflows/{fleet.run_id}")["status"] == "WAITING", "no refused action changed anything"


def test_operators_pass_on_every_operator_route_by_token_and_by_cookie(fleet: Fleet, routes: list[tuple[str, str, Access]]) -> None:
    cookie = sign_in(fleet.server, fleet.operator)
    for method, path, _ in operator_routes(routes):
        # Actions go to a run that does not exist: past the checks, the answer is the handler's own 404.
        target = path.replace("{id}", "wf_nothing") if method in ("POST", "DELETE") else fleet.path(path)
        for headers in (bearer(fleet.operator), session(cookie, fleet.server.url)):
            answer = call(fleet.server, method, target, headers)
            assert answer.status not in (401, 403), (method, path, answer.status, answer.body[:200])
            expected = 200 if method in ("GET", "HEAD") else 404 if "{id}" in path else 202
            assert answer.status == expected, (method, path, answer.status)


def test_a_cookie_from_another_origin_cannot_act_but_the_same_origin_can(
    fleet: Fleet, routes: list[tuple[str, str, Access]]
) -> None:
    cookie = sign_in(fleet.server, fleet.operator)
    for method, path, access in operator_routes(routes):
        if method in ("GET", "HEAD"):
            # Reading with a cookie from another page: the answer carries no CORS header, so that page cannot read it.
            answer = call(fleet.server, method, fleet.path(path), session(cookie, FOREIGN))
            assert answer.status == 200 and "Access-Control-Allow-Origin" not in answer.headers, (method, path)
            continue
        for origin in (FOREIGN, None, "null", fleet.server.url + ".evil.example"):
            answer = call(fleet.server, method, fleet.path(path), session(cookie, origin))
            assert answer.status == 403 and answer.error_code() == "cross_origin", (method, path, origin, answer.status)
    detail = fleet.server.get(f"/api/workflows/{fleet.run_id}")
    assert detail["status"] == "WAITING" and not [e for e in detail["timeline"] if e["type"] == "run-cancelled"]
    answer = call(fleet.server, "POST", f"/api/users/{fleet.user_id}/resend-verification", session(cookie, fleet.server.url))
    assert answer.status == 202, answer.body


def test_operators_act_and_the_timeline_names_them(stores_at: StoresAt) -> None:
    token = add_account(stores_at.cli_args(), "alice", "operator")
    server = stores_at.server("--email-failure-rate", "0").start()
    try:
        server.token = token
        status, body = server.request("POST", "/api/signup", {"email": "bo@example.com", "name": "Bo Day"})
        assert status == 202
        server.wait_for(f"/api/workflows/{body['workflowId']}", lambda d: d["status"] == "WAITING")
        answer = call(server, "POST", f"/api/workflows/{body['workflowId']}/cancel", bearer(token))
        assert answer.status == 200, answer.body
        detail = server.get(f"/api/workflows/{body['workflowId']}")
        assert [e["message"] for e in detail["timeline"] if e["type"] == "run-cancelled"] == ["run cancelled by alice"]
        end = server.log_marker()
        assert token not in "".join(server.stderr[:end]), "a token never reaches the log"
    finally:
        server.stop()


def test_an_expired_session_is_refused_everywhere(stores_at: StoresAt, routes: list[tuple[str, str, Access]]) -> None:
    token = add_account(stores_at.cli_args(), "alice", "operator")
    server = stores_at.server("--session-ttl", "1").start()
    try:
        cookie = sign_in(server, token)
        whoami = call(server, "GET", "/api/session", session(cookie))
        assert whoami.status == 200 and whoami.json()["name"] == "alice"
        expires = whoami.json()["expiresAt"]
        until(lambda: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) > expires, what="the session's expiry")
        for method, path, _ in operator_routes(routes):
            answer = call(server, method, path.replace("{id}", "wf_x"), session(cookie, server.url))
            assert answer.status == 401, (method, path, answer.status)
            if method != "HEAD":
                assert answer.error_code() == "session_expired"
    finally:
        server.stop()


# -- signing in and out -----------------------------------------------------------------------


def test_sign_in_sets_a_strict_http_only_expiring_cookie_and_sign_out_ends_it(fleet: Fleet) -> None:
    server = fleet.server
    wrong = call(server, "POST", "/api/session", {"Origin": server.url}, {"token": "uft_wrong"})
    assert wrong.status == 401 and wrong.error_code() == "invalid_token" and "Set-Cookie" not in wrong.headers
    answer = call(server, "POST", "/api/session", {"Origin": server.url}, {"token": fleet.viewer})
    assert answer.status == 204
    cookie = SimpleCookie(answer.headers["Set-Cookie"])["userflow_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert int(cookie["max-age"]) == 43200 and not cookie["secure"], "plain http: no Secure flag"
    me = call(server, "GET", "/api/session", session(cookie.value))
    assert me.status == 200
    assert me.json()["name"] == "vera" and me.json()["role"] == "viewer" and me.json()["via"] == "session"
    # Signing in from another site's page is refused too (no one is signed in behind the person's back).
    assert call(server, "POST", "/api/session", {"Origin": FOREIGN}, {"token": fleet.viewer}).status == 403
    out = call(server, "DELETE", "/api/session", session(cookie.value, server.url))
    assert out.status == 204 and "Max-Age=0" in out.headers["Set-Cookie"]
    after = call(server, "GET", "/api/workflows", session(cookie.value))
    assert after.status == 401 and after.error_code() == "session_expired"


def test_the_dashboard_sends_a_browser_to_the_sign_in_page(fleet: Fleet) -> None:
    answer = call(fleet.server, "GET", "/", {"Accept": "text/html,application/xhtml+xml"})
    assert answer.status == 303 and answer.headers["Location"] == "/signin"
    page = call(fleet.server, "GET", "/signin", {"Accept": "text/html"})
    assert page.status == 200 and b"signin.js" in page.body
    assert call(fleet.server, "GET", "/", {"Accept": "text/html", **bearer(fleet.viewer)}).status == 200


def test_failed_sign_ins_are_rate_limited_per_address(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    token = add_account(data_dir, "alice", "operator")
    server = Server(data_dir, "--signin-rate-limit", "3/60").start()
    try:
        for _ in range(3):
            assert call(server, "POST", "/api/session", {}, {"token": "uft_guess"}).status == 401
        limited = call(server, "POST", "/api/session", {}, {"token": token})
        assert limited.status == 429 and limited.error_code() == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    finally:
        server.stop()


def test_secure_cookies_when_the_public_url_is_https(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    token = add_account(data_dir, "alice", "operator")
    server = Server(data_dir, "--public-url", "https://signup.example.com").start()
    try:
        answer = call(server, "POST", "/api/session", {"Origin": "https://signup.example.com"}, {"token": token})
        assert answer.status == 204
        assert SimpleCookie(answer.headers["Set-Cookie"])["userflow_session"]["secure"]
    finally:
        server.stop()


# -- accounts change while the server runs --------------------------------------------------


def test_accounts_added_and_removed_while_serving_apply_within_seconds(stores_at: StoresAt) -> None:
    data_dir = stores_at.cli_args()  # where `userflow operators` finds the accounts: the data dir or the database
    first = add_account(data_dir, "alice", "operator")
    server = stores_at.server().start()
    try:
        bob = add_account(data_dir, "bob", "viewer")
        until(lambda: call(server, "GET", "/api/workflows", bearer(bob)).status == 200, what="bob's token working")
        cookie = sign_in(server, bob)
        listing = operators(data_dir, "list", "--json")
        assert listing.returncode == 0
        rows = {row["name"]: row for row in json.loads(listing.stdout)["accounts"]}
        assert rows["bob"]["role"] == "viewer" and rows["bob"]["sessions"] == 1 and rows["alice"]["role"] == "operator"
        assert bob not in listing.stdout and first not in listing.stdout
        # An open event stream of bob's session ends when bob is removed.
        parts = urlsplit(server.url)
        stream = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=20)
        stream.request("GET", "/api/events", headers=session(cookie))
        events = stream.getresponse()
        assert events.status == 200
        removed = operators(data_dir, "remove", "bob")
        assert removed.returncode == 0 and "1 session" in removed.stderr
        until(lambda: call(server, "GET", "/api/workflows", bearer(bob)).status == 401, what="bob's token refused")
        assert call(server, "GET", "/api/workflows", session(cookie)).status == 401, "bob's session ended with him"
        assert events.read() is not None  # returns once the server ends the stream
        stream.close()
        assert call(server, "GET", "/api/workflows", bearer(first)).status == 200
    finally:
        server.stop()


def test_the_operators_command_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    add_account(data_dir, "alice", "operator")
    for args, words in (
        (("add", "alice", "--role", "viewer"), "already exists"),
        (("add", "Alice!", "--role", "viewer"), "not an account name"),
        (("add", "env", "--role", "viewer"), "reserved"),
        (("remove", "nobody"), "no account named"),
    ):
        done = operators(data_dir, *args)
        assert done.returncode == 1 and words in done.stderr and done.stdout == "", (args, done)
    bad_role = operators(data_dir, "add", "bob", "--role", "admin")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    empty = operators(str(tmp_path / "empty"), "list")
    assert empty.returncode == 0 and "no operator accounts" in empty.stderr


def test_the_environment_token_is_an_operator_named_env(tmp_path: Path) -> None:
    token = "uft_" + "e" * 43
    server = Server(str(tmp_path / "data"), env={"USERFLOW_OPERATOR_TOKEN": token}).start()
    try:
        assert call(server, "GET", "/api/workflows").status == 401, "an account exists: loopback alone is not enough"
        me = call(server, "GET", "/api/session", bearer(token))
        assert me.status == 200 and me.json()["name"] == "env" and me.json()["role"] == "operator"
        assert token not in " ".join(server.proc.args if server.proc else []), "never a flag"
    finally:
        server.stop()
