"""Hostile input and token security, written by hand.

Whatever a client sends, the answer is a clear 4xx with the one error shape
``{"error": {"code", "message"}}`` (SPEC.md section 3), never a 5xx, and a
rejected request changes nothing in the data dir. Verification tokens cannot
be guessed, probed or leaked through the page, a forged Host header or the
logs; email addresses are normalised and look-alikes kept apart; the rate
limits answer 429 with a Retry-After.

Everything runs in-process (the ``client``/``make_client`` fixtures) except the
malformed-HTTP tests, which read the logs of a real server process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import secrets
import socket
import string
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from tests.helpers import wait_idle
from tests.http_helpers import expect_error, outbox_email, signup, wait_for, waiting_signup
from tests.server import Server
from userflow.http.app import MAX_BODY
from userflow.http.keys import SETTINGS, STORES
from userflow.storage.stores import FileStores

JSON = {"Content-Type": "application/json"}
UNKNOWN_RUN_ID = "wf_000000000000aaaaaaaaaa"
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_"
JSON_POSTS = ["/api/signup", "/api/verify"]
GOOD_BODY = {"/api/signup": {"email": "ann@example.com", "name": "Ann Example"}, "/api/verify": {"token": "A" * 43}}


# -- helpers ------------------------------------------------------------------------------


async def run_status(client: TestClient, run_id: str) -> str:
    return (await (await client.get(f"/api/workflows/{run_id}")).json())["status"]


def data_dir_of(client: TestClient) -> Path:
    return Path(client.server.app[SETTINGS].data_dir)  # type: ignore[union-attr]


def stored(client: TestClient) -> dict[str, bytes | None]:
    """Everything the client's server has stored: the data dir's files, or every row of the database."""
    stores = client.server.app[STORES]  # type: ignore[union-attr]
    if isinstance(stores, FileStores):
        return snapshot(Path(stores.data_dir.path))
    found: dict[str, bytes | None] = {}
    with stores.pool.connection() as connection:
        tables = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        for (table,) in tables:
            for (row,) in connection.execute(f'SELECT to_jsonb(t)::text FROM "{table}" t').fetchall():
                found[f"{table}/{row}"] = row.encode()
    return found


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every directory (None) and file (its bytes) under ``root``, by relative path."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


def snapshot_diff(before: dict[str, bytes | None], after: dict[str, bytes | None]) -> list[str]:
    changes = [f"added {p}" for p in sorted(after.keys() - before.keys())]
    changes += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    changes += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return changes


# -- bodies that are not a JSON object ---------------------------------------------------------

NOT_AN_OBJECT = [
    pytest.param(b"", id="empty"),
    pytest.param(b"   \r\n ", id="whitespace"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"}", id="closing-brace"),
    pytest.param(b"{'email': 'ann@example.com'}", id="single-quotes"),
    pytest.param(b'{"email": "ann@example.com", "name": "Ann",}', id="trailing-comma"),
    pytest.param(b'{"email": "ann@example.com"} {"name": "Ann"}', id="two-documents"),
    pytest.param(b'{"email": "ann@example.com", "name": "Ann"} trailing', id="trailing-garbage"),
    pytest.param(b'{"email": "ann@example.com", "name": "Ann"', id="unclosed"),
    pytest.param(b"\xef\xbb\xbf" + b'{"email": "ann@example.com", "name": "Ann"}', id="utf8-bom"),
    pytest.param('{"email": "ann@example.com"}'.encode("utf-16"), id="utf-16"),
    pytest.param(b'{"email": "\xff\xfe@example.com", "name": "Ann"}', id="invalid-utf8"),
    pytest.param(b'{"email": "\\ud800@example.com", "name": "Ann"}', id="lone-surrogate-escape"),
    pytest.param(b'{"email": "\xed\xa0\x80@example.com", "name": "Ann"}', id="encoded-surrogate"),
    pytest.param(b"\x00", id="nul"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b'{"email": Infinity}', id="infinity"),
    pytest.param(b'{"email": 1e999}', id="overflowing-number"),
    pytest.param(b"null", id="null"),
    pytest.param(b"true", id="true"),
    pytest.param(b"42", id="number"),
    pytest.param(b'"ann@example.com"', id="string"),
    pytest.param(b"[]", id="empty-array"),
    pytest.param(b'[{"email": "ann@example.com", "name": "Ann", "token": "x"}]', id="array-of-the-object"),
    pytest.param(b"[" * 8000 + b"]" * 8000, id="8000-nested-arrays"),
    pytest.param(b'{"email": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="5000-nested-in-a-field"),
    pytest.param(b'{"a":' * 2000 + b"1" + b"}" * 2000, id="2000-nested-objects"),
    pytest.param(b'{"a":' * 1000 + b"1" + b"}" * 1000, id="1000-nested-objects"),
    pytest.param(b'{"email": "ann@example.com", "name": "Ann", "email": "eve@example.com"}', id="duplicate-key"),
    pytest.param(b'{"email": "ann@example.com", "name": "Ann", "e\\u006dail": "eve@example.com"}', id="duplicate-key-escaped"),
    pytest.param(b'{"token": "' + b"A" * 43 + b'", "token": "' + b"B" * 43 + b'"}', id="duplicate-token"),
]


@pytest.mark.parametrize("path", JSON_POSTS)
@pytest.mark.parametrize("raw", NOT_AN_OBJECT)
async def test_a_body_that_is_not_a_json_object_is_400(client: TestClient, path: str, raw: bytes) -> None:
    assert len(raw) <= MAX_BODY
    await expect_error(await client.post(path, data=raw, headers=JSON), 400, "invalid_json")


@pytest.mark.parametrize("path", JSON_POSTS)
async def test_100000_nested_arrays_are_413_not_a_crash(client: TestClient, path: str) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    await expect_error(await client.post(path, data=raw, headers=JSON), 413, "body_too_large")
    assert (await client.get("/healthz")).status == 200


WRONG_VALUES = [
    pytest.param(None, id="null"),
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(1.5, id="float"),
    pytest.param(18446744073709551615, id="u64-max"),
    pytest.param(2**70, id="bigger-than-u64"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param([], id="empty-list"),
    pytest.param(["ann@example.com"], id="list-of-string"),
    pytest.param({}, id="empty-object"),
    pytest.param({"$ne": None}, id="operator-object"),
    pytest.param("x" * 1001, id="string-over-1000"),
]


@pytest.mark.parametrize("field", ["email", "name"])
@pytest.mark.parametrize("value", WRONG_VALUES)
async def test_signup_with_a_wrong_type_in_any_field_is_400(client: TestClient, field: str, value: Any) -> None:
    body = {**GOOD_BODY["/api/signup"], field: value}
    await expect_error(await client.post("/api/signup", json=body), 400, "invalid_fields")


@pytest.mark.parametrize("value", WRONG_VALUES)
async def test_verify_with_a_wrong_token_type_is_400(client: TestClient, value: Any) -> None:
    await expect_error(await client.post("/api/verify", json={"token": value}), 400, "invalid_fields")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"email": "ann@example.com"}, id="missing-name"),
        pytest.param({"name": "Ann"}, id="missing-email"),
        pytest.param({"email": "ann@example.com", "name": "Ann", "status": "ACTIVE"}, id="extra-status"),
        pytest.param({"email": "ann@example.com", "name": "Ann", "__proto__": {"admin": True}}, id="proto"),
        pytest.param({"Email": "ann@example.com", "Name": "Ann"}, id="wrong-case-keys"),
        pytest.param({"token": "A" * 43}, id="a-verify-body"),
    ],
)
async def test_signup_with_missing_or_extra_fields_is_400(client: TestClient, body: dict[str, Any]) -> None:
    await expect_error(await client.post("/api/signup", json=body), 400, "invalid_fields")


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", JSON_POSTS)
async def test_a_body_over_16_kib_is_413_json(client: TestClient, path: str) -> None:
    raw = json.dumps({**GOOD_BODY[path], "pad": "x" * MAX_BODY}).encode()
    await expect_error(await client.post(path, data=raw, headers=JSON), 413, "body_too_large")


@pytest.mark.parametrize("path", JSON_POSTS)
async def test_a_chunked_body_over_16_kib_is_413_json(client: TestClient, path: str) -> None:
    async def chunks() -> Any:
        yield b'{"pad": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'

    await expect_error(await client.post(path, data=chunks(), headers=JSON), 413, "body_too_large")


async def test_the_verify_form_over_16_kib_is_413(client: TestClient) -> None:
    form = {"token": "A" * 43, "pad": "x" * MAX_BODY}
    await expect_error(await client.post("/verify", data=form), 413, "body_too_large")


@pytest.mark.parametrize(
    ("what", "headers", "path"),
    [
        pytest.param("100 KB header", {"X-Big": "a" * 100_000}, "/healthz", id="100kb-header"),
        pytest.param("9 KB header", {"X-Big": "a" * 9_000}, "/healthz", id="9kb-header"),
        pytest.param("100 KB cookie", {"Cookie": "c=" + "a" * 100_000}, "/healthz", id="100kb-cookie"),
        pytest.param("500 headers", {f"X-H{i}": "v" for i in range(500)}, "/healthz", id="500-headers"),
        pytest.param("20 KB URL", {}, "/api/workflows/" + "a" * 20_000, id="20kb-url"),
        pytest.param("20 KB query", {}, "/api/verify?token=" + "A" * 20_000, id="20kb-query"),
    ],
)
async def test_oversized_request_heads_are_4xx_and_the_server_keeps_working(
    client: TestClient, what: str, headers: dict[str, str], path: str
) -> None:
    """aiohttp's parser answers these itself (400 text/plain, not our JSON shape: see the report)."""
    resp = await client.get(path, headers=headers)
    assert 400 <= resp.status < 500, (what, resp.status)
    await resp.read()
    assert (await client.get("/healthz")).status == 200
    await expect_error(await client.get("/api/workflows/" + "a" * 5000), 404, "workflow_not_found")


# -- ids ---------------------------------------------------------------------------------------------

HOSTILE_IDS = [
    pytest.param("..%2F..%2Fsecret.key", id="encoded-traversal"),
    pytest.param("..%2F..%2Fuserflow.lock", id="encoded-traversal-lock"),
    pytest.param("%2e%2e", id="encoded-dot-dot"),
    pytest.param("..%5C..%5Csecret.key", id="backslash-traversal"),
    pytest.param("secret.key", id="secret-file-name"),
    pytest.param("%00", id="nul"),
    pytest.param(UNKNOWN_RUN_ID + "%00", id="id-then-nul"),
    pytest.param(UNKNOWN_RUN_ID + "%0A", id="id-then-newline"),
    pytest.param(UNKNOWN_RUN_ID + ".json", id="with-suffix"),
    pytest.param("%C0%AE%C0%AE%C0%AF", id="overlong-utf8-dots"),
    pytest.param("%ED%A0%80", id="encoded-surrogate"),
    pytest.param("%FF%FE", id="invalid-utf8"),
    pytest.param(quote("ω̃\u202e"), id="unicode"),
    pytest.param("a" * 65, id="65-chars"),
    pytest.param("a" * 5000, id="5000-chars"),
]
ID_ROUTES = [
    ("GET", "/api/workflows/{}", "workflow_not_found"),
    ("POST", "/api/workflows/{}/retry", "workflow_not_found"),
    ("POST", "/api/workflows/{}/cancel", "workflow_not_found"),
    ("GET", "/api/users/{}", "user_not_found"),
    ("POST", "/api/users/{}/resend-verification", "user_not_found"),
]


@pytest.mark.parametrize(("method", "template", "code"), ID_ROUTES, ids=[r[1] for r in ID_ROUTES])
@pytest.mark.parametrize("raw_id", HOSTILE_IDS)
async def test_hostile_ids_are_404_json(client: TestClient, method: str, template: str, code: str, raw_id: str) -> None:
    resp = await client.request(method, URL(template.format(raw_id), encoded=True))
    # A traversal that aiohttp resolves into another path is an unknown route instead.
    await expect_error(resp, 404, (code, "not_found"))


@pytest.mark.parametrize(
    "path",
    ["/static/..%2F..%2Fpyproject.toml", "/static/%2e%2e/http/app.py", "/static/../http/app.py", "/static/..%2Fsecret.key", "/static/%00"],
)
async def test_static_traversal_is_404_json(client: TestClient, path: str) -> None:
    resp = await client.get(URL(path, encoded=True))
    await expect_error(resp, 404, "not_found")


async def test_a_missing_static_file_is_404_json(client: TestClient) -> None:
    await expect_error(await client.get("/static/no-such-file.css"), 404, "not_found")


# -- tokens -----------------------------------------------------------------------------------------

ODD_TOKENS = [
    pytest.param("", id="empty"),
    pytest.param("A" * 42, id="42-chars"),
    pytest.param("A" * 44, id="44-chars"),
    pytest.param("A" * 42 + "+", id="plus"),
    pytest.param("A" * 42 + "/", id="slash"),
    pytest.param("A" * 42 + "=", id="padding"),
    pytest.param("A" * 42 + ".", id="dot"),
    pytest.param("A" * 42 + "\x00", id="nul"),
    pytest.param("A" * 42 + "\n", id="trailing-newline-in-43"),
    pytest.param("A" * 43 + "\n", id="token-then-newline"),
    pytest.param(" " + "A" * 43, id="leading-space"),
    pytest.param("A" * 43 + " ", id="trailing-space"),
    pytest.param("é" * 43, id="43-accented"),
    pytest.param("Ａ" * 43, id="43-fullwidth"),
    pytest.param("٣" * 43, id="43-arabic-digits"),
    pytest.param("A" * 42 + "\u200b", id="zero-width"),
    pytest.param("A" * 1000, id="1000-chars"),
]


@pytest.mark.parametrize("token", ODD_TOKENS)
async def test_odd_tokens_are_400_on_the_api(client: TestClient, token: str) -> None:
    await expect_error(await client.get("/api/verify", params={"token": token}), 400, "invalid_token")
    await expect_error(await client.post("/api/verify", json={"token": token}), 400, "invalid_token")


@pytest.mark.parametrize("token", ODD_TOKENS)
async def test_odd_tokens_are_a_400_page_on_the_form(client: TestClient, token: str) -> None:
    resp = await client.post("/verify", data={"token": token})
    assert resp.status == 400 and resp.content_type == "text/html", (resp.status, await resp.text())


@pytest.mark.parametrize(
    "query",
    ["", "?token", "?token=", "?TOKEN=" + "A" * 43, "?token%00=" + "A" * 43, "?token=%00", "?token=" + "A" * 42 + "%00", "?token=%ED%A0%80", "?token=%FF" * 43],
)
async def test_odd_verify_queries_are_400(client: TestClient, query: str) -> None:
    await expect_error(await client.get(URL("/api/verify" + query, encoded=True)), 400, "invalid_token")


async def test_1000_guessed_tokens_all_get_the_same_404(make_client: Any) -> None:
    client = await make_client(verify_rate="0")
    await waiting_signup(client, "ann@example.com")  # one real token in the index
    rng = random.Random(20240611)
    answers: set[tuple[int, bytes, str]] = set()
    for _ in range(1000):
        guess = "".join(rng.choice(TOKEN_ALPHABET) for _ in range(43))
        resp = await client.get("/api/verify", params={"token": guess})
        answers.add((resp.status, await resp.read(), resp.headers.get("Content-Type", "")))
    assert len(answers) == 1, answers
    status, body, _ = answers.pop()
    assert status == 404
    assert json.loads(body)["error"]["code"] == "unknown_token"
    by_post = await client.post("/api/verify", json={"token": "".join(rng.choice(TOKEN_ALPHABET) for _ in range(43))})
    assert (by_post.status, await by_post.read()) == (404, body), "POST must answer exactly like GET"


async def test_the_verify_page_verifies_no_one_and_leaks_no_referrer(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, "ann@example.com")
    for method in ("GET", "HEAD"):
        resp = await client.request(method, "/verify", params={"token": token})
        assert resp.status == 200, method
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        await resp.read()
    page = await (await client.get("/verify", params={"token": token})).text()
    assert 'method="post"' in page
    # Nothing on the page is fetched from anywhere, so the token cannot leave in a request for it.
    assert not any(marker in page for marker in ("src=", "href=", "http://", "https://", "url(")), page
    await wait_idle()
    assert await run_status(client, accepted["workflowId"]) == "WAITING"
    user = await (await client.get(f"/api/users/{accepted['userId']}")).json()
    assert user["status"] == "PENDING" and user["verifiedAt"] is None


async def test_forged_host_headers_never_change_the_link(client: TestClient) -> None:
    forged = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Server": "evil.example",
        "X-Original-Host": "evil.example",
        "Forwarded": 'for=1.2.3.4;host="evil.example";proto=https',
    }
    accepted = await signup(client, "ann@example.com", headers=forged)
    email = await outbox_email(client, accepted["workflowId"])
    assert email["link"].startswith("http://public.example/verify?token="), email["link"]
    assert "evil" not in email["link"] and "evil" not in email["text"]

    # The absolute form of the request target names a host too.
    body = json.dumps({"email": "bob@example.com", "name": "Bob"}).encode()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST http://evil.example/api/signup HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert raw.startswith(b"HTTP/1.1 202"), raw[:200]
    run_id = json.loads(raw.split(b"\r\n\r\n", 1)[1])["workflowId"]
    link = (await outbox_email(client, run_id))["link"]
    assert link.startswith("http://public.example/verify?token=") and "evil" not in link, link


# -- emails and names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        pytest.param("  Ann.Example+news@EXAMPLE.Com \t", "Ann.Example+news@example.com", id="trim-lowercase-domain-keep-tag"),
        pytest.param("\r\nann@example.com\r\n", "ann@example.com", id="surrounding-crlf-is-whitespace"),
        pytest.param("ann@BÜCHER.DE", "ann@bücher.de", id="idn-domain-lowercased"),
        pytest.param("ann@xn--bcher-kva.de", "ann@bücher.de", id="punycode-domain"),
        pytest.param("δοκιμή@παράδειγμα.δοκιμή", "δοκιμή@παράδειγμα.δοκιμή", id="unicode-address"),
    ],
)
async def test_the_email_is_normalised_and_mail_goes_to_the_stored_address(client: TestClient, raw: str, stored: str) -> None:
    accepted = await signup(client, raw)
    user = await (await client.get(f"/api/users/{accepted['userId']}")).json()
    assert user["email"] == stored
    email = await outbox_email(client, accepted["workflowId"])
    assert email["to"] == stored


async def test_tags_and_ascii_case_are_one_key_each(client: TestClient) -> None:
    plain = await signup(client, "ann@example.com")
    tagged = await signup(client, "ann+news@example.com")
    assert tagged["workflowId"] != plain["workflowId"], "+tag is part of the address"
    upper = await signup(client, "ANN+news@Example.com")
    assert upper["workflowId"] == tagged["workflowId"], "ASCII case is folded for the key"


async def test_an_all_cyrillic_address_is_a_different_account(client: TestClient) -> None:
    latin = await signup(client, "anna@example.com")
    cyrillic = await signup(client, "\u0430\u043d\u043d\u0430@example.com")  # анна: one script, not a look-alike
    assert (cyrillic["workflowId"], cyrillic["userId"]) != (latin["workflowId"], latin["userId"])
    user = await (await client.get(f"/api/users/{cyrillic['userId']}")).json()
    assert user["email"] == "\u0430\u043d\u043d\u0430@example.com"
    assert (await outbox_email(client, cyrillic["workflowId"]))["to"] == "\u0430\u043d\u043d\u0430@example.com"
    assert (await outbox_email(client, latin["workflowId"]))["to"] == "anna@example.com"


LOCAL_64 = "a" * 64
REJECTED_EMAILS = [
    pytest.param("ann@example.com\r\nBcc: eve@example.com", id="crlf-header-injection"),
    pytest.param("ann@example.com\nBcc: eve@example.com", id="lf-header-injection"),
    pytest.param("ann\r\n@example.com", id="crlf-in-local"),
    pytest.param("ann@exa\rmple.com", id="cr-in-domain"),
    pytest.param("ann\t@example.com", id="tab-inside"),
    pytest.param("ann\x00@example.com", id="nul"),
    pytest.param("ann\x1b[31m@example.com", id="escape-sequence"),
    pytest.param("ann\x85@example.com", id="nel"),
    pytest.param("ann\u2028@example.com", id="line-separator"),
    pytest.param("ann\u200b@example.com", id="zero-width-space"),
    pytest.param("ann\u202e@example.com", id="bidi-override"),
    pytest.param("ann@example.com, eve@example.com", id="second-recipient-comma"),
    pytest.param("ann@example.com;eve@example.com", id="second-recipient-semicolon"),
    pytest.param("Ann <ann@example.com>", id="display-name"),
    pytest.param('"ann smith"@example.com', id="quoted-local"),
    pytest.param("\u212aelvin@example.com", id="kelvin-sign"),
    pytest.param("ann@\u212aelvin.example.com", id="kelvin-sign-domain"),
    pytest.param("a\u0301nn@example.com", id="decomposed-accent"),
    pytest.param(LOCAL_64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".com", id="255-plus-chars"),
    pytest.param("a" * 300 + "@example.com", id="300-chars"),
    pytest.param("ann@" + "b" * 64 + ".com", id="64-char-label"),
    pytest.param("ann@example.invalid", id="reserved-tld"),
]


@pytest.mark.parametrize("raw", REJECTED_EMAILS)
async def test_dangerous_or_overlong_emails_are_400(client: TestClient, raw: str) -> None:
    await expect_error(await client.post("/api/signup", json={"email": raw, "name": "Ann"}), 400, ("invalid_email", "invalid_fields"))
    assert (await (await client.get("/api/users")).json())["users"] == []


@pytest.mark.parametrize("local", ["a" * 65, "a" * 200], ids=["65", "200"])
async def test_a_local_part_over_64_characters_is_400(client: TestClient, local: str) -> None:
    resp = await client.post("/api/signup", json={"email": local + "@example.com", "name": "Ann"})
    await expect_error(resp, 400, "invalid_email")


async def test_the_longest_local_part_is_accepted(client: TestClient) -> None:
    accepted = await signup(client, LOCAL_64 + "@example.com")
    assert (await outbox_email(client, accepted["workflowId"]))["to"] == LOCAL_64 + "@example.com"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("مريم الأحمد", id="arabic"),
        pytest.param("שרה כהן", id="hebrew"),
        pytest.param("Zoë O'Brien-Łukasiewicz", id="latin-extended"),
        pytest.param("李小龍", id="cjk"),
    ],
)
async def test_rtl_and_other_scripts_are_kept_as_typed(client: TestClient, name: str) -> None:
    accepted = await signup(client, "ann@example.com", name)
    assert (await (await client.get(f"/api/users/{accepted['userId']}")).json())["name"] == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Ann\u202eevil", id="rlo"),
        pytest.param("Ann\u202bSmith", id="rle"),
        pytest.param("Ann\u2067Smith\u2069", id="rli-pdi"),
        pytest.param("Ann\u200fSmith", id="rlm"),
        pytest.param("Ann\u200eSmith", id="lrm"),
        pytest.param("Ann\u061cSmith", id="arabic-letter-mark"),
        pytest.param("Ann\u200bSmith", id="zwsp"),
        pytest.param("Ann\u200cSmith", id="zwnj"),
        pytest.param("Ann\u200dSmith", id="zwj"),
        pytest.param("Ann\u2060Smith", id="word-joiner"),
        pytest.param("Ann\ufeffSmith", id="bom"),
        pytest.param("Ann\u00adSmith", id="soft-hyphen"),
        pytest.param("\u200b", id="only-zero-width"),
        pytest.param("Ann\x00", id="nul"),
        pytest.param("Ann\x07", id="bell"),
        pytest.param("Ann\x1b[2J", id="ansi-escape"),
        pytest.param("Ann\x7f", id="del"),
        pytest.param("Ann\x9b", id="c1-csi"),
        pytest.param("Ann\ue000", id="private-use"),
        pytest.param("Ann\U000e0041", id="tag-character"),
    ],
)
async def test_bidi_zero_width_and_control_characters_in_names_are_400(client: TestClient, name: str) -> None:
    await expect_error(await client.post("/api/signup", json={"email": "ann@example.com", "name": name}), 400, "invalid_fields")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Ann\r\nBcc: eve@example.com", id="crlf"),
        pytest.param("Ann\nSmith", id="lf"),
        pytest.param("Ann\x85Smith", id="nel"),
        pytest.param("Ann\u2028Smith", id="line-separator"),
        pytest.param("Ann\x1cSmith", id="file-separator"),
        pytest.param("Ann\tSmith", id="tab"),
    ],
)
async def test_line_breaks_in_names_never_reach_storage_or_mail(client: TestClient, name: str) -> None:
    """Python counts these as whitespace: collapsed to one space (accepted) or refused, never kept."""
    resp = await client.post("/api/signup", json={"email": "ann@example.com", "name": name})
    if resp.status == 400:
        await expect_error(resp, 400, "invalid_fields")
        return
    assert resp.status == 202, await resp.text()
    accepted = await resp.json()
    stored = (await (await client.get(f"/api/users/{accepted['userId']}")).json())["name"]
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in stored), repr(stored)
    text = (await outbox_email(client, accepted["workflowId"]))["text"]
    assert not any(line.startswith("Bcc:") for line in text.splitlines()), text


@pytest.mark.parametrize(
    "name",
    ["\u3164", "\u2800", "\u115f", "\uffa0", "\u0301", "\u3164\u3164 \u2800"],
    ids=["hangul-filler", "braille-blank", "choseong-filler", "halfwidth-filler", "lone-combining-acute", "mixed"],
)
async def test_a_name_that_renders_as_nothing_is_400(client: TestClient, name: str) -> None:
    await expect_error(await client.post("/api/signup", json={"email": "ann@example.com", "name": name}), 400, "invalid_fields")


# -- methods and content types ------------------------------------------------------------------


def _routes(app: web.Application) -> Iterator[tuple[str, set[str]]]:
    """Each routed path (ids filled in) and the methods it allows."""
    allowed: dict[str, set[str]] = {}
    for route in app.router.routes():
        resource = route.resource
        if resource is None:
            continue
        if isinstance(resource, web.StaticResource):
            path = "/static/index.html"
        else:
            path = resource.canonical.replace("{id}", UNKNOWN_RUN_ID).replace("{name}", "dashboard.js")
        allowed.setdefault(path, set()).add(route.method)
    yield from sorted(allowed.items())


async def test_every_route_answers_wrong_methods_with_405_json_and_allow(client: TestClient) -> None:
    routes = list(_routes(client.server.app))  # type: ignore[arg-type]
    assert len(routes) >= 18, routes
    checked = 0
    for path, allowed in routes:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            if method in allowed:
                continue
            resp = await client.request(method, path, data=b"{}", headers=JSON)
            await expect_error(resp, 405, "method_not_allowed")
            assert set(resp.headers["Allow"].split(",")) == allowed, (method, path, resp.headers["Allow"])
            checked += 1
        if "HEAD" not in allowed:
            resp = await client.head(path)
            assert resp.status == 405 and set(resp.headers["Allow"].split(",")) == allowed, (path, resp.status)
    assert checked >= 100, checked


@pytest.mark.parametrize("path", JSON_POSTS)
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
        "application/json-patch+json",
        "application/ld+json",
        "application/octet-stream",
        "application",
        ";;;",
        None,
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(client: TestClient, path: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    raw = json.dumps(GOOD_BODY[path]).encode()
    resp = await client.post(path, data=raw, headers=headers, skip_auto_headers=["Content-Type"])
    await expect_error(resp, 415, "unsupported_media_type")


async def test_hostile_paths_do_not_grow_the_metrics(client: TestClient) -> None:
    """Metrics are labelled by route template, so random paths and ids cannot blow up their cardinality."""
    rng = random.Random(7)
    for _ in range(50):
        junk = "".join(rng.choice(TOKEN_ALPHABET) for _ in range(20))
        await client.get(f"/{junk}")
        await client.get(f"/api/workflows/{junk}")
        await client.post(f"/api/users/{junk}/resend-verification")
    text = await (await client.get("/metrics")).text()
    routes = {line.split('route="', 1)[1].split('"', 1)[0] for line in text.splitlines() if line.startswith("userflow_http_requests_total{")}
    assert {"unmatched", "/api/workflows/{id}"} <= routes, routes
    assert routes <= {"unmatched", "/metrics", "/api/workflows/{id}", "/api/users/{id}/resend-verification"}, routes
    assert len(text) < 100_000


# -- numbers too long to parse ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/workflows", "/api/users", "/api/outbox"])
async def test_a_limit_with_thousands_of_digits_is_400(client: TestClient, path: str) -> None:
    await expect_error(await client.get(path, params={"limit": "1" * 5000}), 400, "invalid_limit")


async def _first_frames(resp: aiohttp.ClientResponse, timeout: float = 2.0) -> bytes:
    """What an event stream sent within ``timeout`` (it never ends by itself)."""
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while b"event: reset" not in out:
                chunk = await resp.content.readany()
                if not chunk:
                    break
                out += chunk
    except TimeoutError:
        pass
    return out


async def _boot_id(client: TestClient) -> str:
    resp = await client.get("/api/events", headers={"Last-Event-ID": "not-ours"})
    frames = await _first_frames(resp)
    resp.close()
    return frames.split(b"id: ", 1)[1].split(b"-", 1)[0].decode()


@pytest.mark.parametrize("seq", ["", "x", "-1", "1.5", "٣", "99999999999999999999"])
async def test_odd_last_event_ids_open_a_normal_stream(client: TestClient, seq: str) -> None:
    boot = await _boot_id(client)
    for headers, params in (({"Last-Event-ID": f"{boot}-{seq}".encode().decode("latin-1")}, {}), ({}, {"lastEventId": f"{boot}-{seq}"})):
        resp = await client.get("/api/events", headers=headers, params=params)
        assert resp.status == 200
        frames = await _first_frames(resp, timeout=0.5)
        resp.close()
        assert frames.startswith(b"retry:"), frames
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize("seq", ["\u00b2", "1" * 5000], ids=["superscript-two", "5000-digits"])
async def test_a_last_event_id_int_cannot_parse_is_no_server_error(client: TestClient, seq: str) -> None:
    boot = await _boot_id(client)
    try:
        resp = await client.get("/api/events", params={"lastEventId": f"{boot}-{seq}"})
        frames = await _first_frames(resp, timeout=1.0)
        resp.close()
    except aiohttp.ClientError as exc:
        pytest.fail(f"the event stream broke: {exc!r}")
    assert resp.status in (200, 400)
    assert resp.status == 400 or b"event: reset" in frames, frames


# -- nothing is written for a rejected request -------------------------------------------------


async def test_rejected_requests_change_nothing_in_the_data_dir(make_client: Any) -> None:
    client = await make_client(signup_rate="0", verify_rate="0")
    active, active_token = await waiting_signup(client, "active@example.com")
    assert (await client.get("/api/verify", params={"token": active_token})).status == 200
    cancelled, cancelled_token = await waiting_signup(client, "cancelled@example.com")
    assert (await client.post(f"/api/workflows/{cancelled['workflowId']}/cancel")).status == 200
    pending, _ = await waiting_signup(client, "pending@example.com")
    await wait_for(client, f"/api/users/{active['userId']}", lambda u: u["status"] == "ACTIVE")
    await wait_for(client, f"/api/workflows/{cancelled['workflowId']}", lambda d: d["status"] == "CANCELLED")
    await wait_idle(timeout=10)
    before = stored(client)
    runs_stored = [p for p, data in before.items() if data and p not in ("secret.key", "userflow.lock")]
    assert runs_stored, f"the seeded runs are not stored: {sorted(before)}"

    deep = b"[" * 8000 + b"]" * 8000
    barrage: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/api/signup", {"data": raw, "headers": JSON}, 400) for raw in (b"", b"{", b"null", b"[]", deep, b"\xff")
    ]
    barrage += [
        ("POST", "/api/signup", {"data": b"[" * 100_000 + b"]" * 100_000, "headers": JSON}, 413),
        ("POST", "/api/signup", {"data": json.dumps({"pad": "x" * MAX_BODY}).encode(), "headers": JSON}, 413),
        ("POST", "/api/signup", {"data": b'{"email": "x@example.com", "name": "X"}', "headers": {"Content-Type": "text/plain"}}, 415),
        ("POST", "/api/signup", {"json": {"email": "x@example.com"}}, 400),
        ("POST", "/api/signup", {"json": {"email": None, "name": "X"}}, 400),
        ("POST", "/api/signup", {"json": {"email": "x@example.com", "name": "X", "admin": True}}, 400),
        ("POST", "/api/signup", {"json": {"email": "x@example.com\r\nBcc: e@example.com", "name": "X"}}, 400),
        ("POST", "/api/signup", {"json": {"email": "\u212aelvin@example.com", "name": "X"}}, 400),
        ("POST", "/api/signup", {"json": {"email": "a" * 255 + "@example.com", "name": "X"}}, 400),
        ("POST", "/api/signup", {"json": {"email": "x@example.com", "name": "X\u202e"}}, 400),
        ("POST", "/api/signup", {"json": {"email": "active@example.com", "name": "Again"}}, 409),
        ("POST", "/api/signup", {"json": {"email": "ACTIVE@Example.com", "name": "Again"}}, 409),
        ("GET", "/api/verify", {"params": {"token": "A" * 42}}, 400),
        ("GET", "/api/verify", {"params": {"token": "A" * 43}}, 404),
        ("GET", "/api/verify", {"params": {"token": cancelled_token}}, 410),
        ("POST", "/api/verify", {"json": {"token": cancelled_token}}, 410),
        ("POST", "/api/verify", {"json": {"token": 42}}, 400),
        ("POST", "/api/verify", {"data": b"{", "headers": JSON}, 400),
        ("POST", "/verify", {"data": {"token": "A" * 43}}, 404),
        ("POST", "/verify", {"data": {"token": cancelled_token}}, 410),
        ("POST", f"/api/workflows/{active['workflowId']}/cancel", {}, 409),
        ("POST", f"/api/workflows/{active['workflowId']}/retry", {}, 409),
        ("POST", f"/api/workflows/{cancelled['workflowId']}/cancel", {}, 409),
        ("POST", f"/api/workflows/{pending['workflowId']}/retry", {}, 409),
        ("POST", f"/api/users/{active['userId']}/resend-verification", {}, 409),
        ("POST", f"/api/users/{cancelled['userId']}/resend-verification", {}, 409),
        ("POST", f"/api/workflows/{UNKNOWN_RUN_ID}/cancel", {}, 404),
        ("POST", URL("/api/workflows/..%2F..%2Fsecret.key/retry", encoded=True), {}, 404),
        ("POST", URL("/api/users/..%2Fuserflow.lock/resend-verification", encoded=True), {}, 404),
        ("GET", URL("/api/workflows/..%2Fsecret.key", encoded=True), {}, 404),
        ("GET", "/api/workflows", {"params": {"limit": "0"}}, 400),
        ("GET", "/api/users", {"params": {"cursor": "../x"}}, 400),
        ("DELETE", f"/api/workflows/{active['workflowId']}", {}, 405),
        ("PUT", "/api/signup", {"json": {"email": "x@example.com", "name": "X"}}, 405),
        ("GET", URL("/static/..%2Fsecret.key", encoded=True), {}, 404),
        ("POST", "/nope", {}, 404),
    ]
    for method, path, kwargs, status in barrage:
        resp = await client.request(method, path, **kwargs)
        assert resp.status == status, (method, path, resp.status, await resp.text())
        await resp.read()
    await wait_idle(timeout=10)
    assert snapshot_diff(before, stored(client)) == [], "a rejected request changed what is stored"


# -- rate limits --------------------------------------------------------------------------------


def _retry_after(resp: aiohttp.ClientResponse, period: float) -> int:
    value = resp.headers.get("Retry-After", "")
    assert value.isdigit(), f"Retry-After must be a number of seconds, got {value!r}"
    assert 1 <= int(value) <= period, value
    return int(value)


async def test_the_fourth_signup_in_a_burst_is_429(make_client: Any) -> None:
    client = await make_client(signup_rate="3/60")
    for n in range(3):
        await signup(client, f"user{n}@example.com")
    await wait_idle(timeout=10)
    before = stored(client)
    resp = await client.post("/api/signup", json={"email": "user3@example.com", "name": "Ann"})
    await expect_error(resp, 429, "rate_limited")
    _retry_after(resp, 60)
    # A forged client address does not get around it (no proxy is trusted).
    spoofed = {"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7", "Forwarded": "for=203.0.113.7"}
    await expect_error(await client.post("/api/signup", json={"email": "user4@example.com", "name": "Ann"}, headers=spoofed), 429)
    # A bad body is still told what is wrong with it: only signups that could start a run count.
    await expect_error(await client.post("/api/signup", data=b"{", headers=JSON), 400, "invalid_json")
    await wait_idle(timeout=10)
    assert snapshot_diff(before, stored(client)) == []
    # the other limiter is separate
    await expect_error(await client.get("/api/verify", params={"token": "A" * 43}), 404, "unknown_token")


async def test_the_fourth_verification_in_a_burst_is_429(make_client: Any) -> None:
    client = await make_client(verify_rate="3/60")
    for _ in range(3):
        await expect_error(await client.get("/api/verify", params={"token": "A" * 43}), 404)
    for attempt in (
        client.get("/api/verify", params={"token": "A" * 43}),
        client.post("/api/verify", json={"token": "A" * 43}),
    ):
        resp = await attempt
        await expect_error(resp, 429, "rate_limited")
        _retry_after(resp, 60)
    # A malformed token cannot be a guess at a real one: told what is wrong, not counted.
    await expect_error(await client.get("/api/verify", params={"token": "bad"}), 400, "invalid_token")
    await signup(client, "ann@example.com")  # the signup limiter is separate


async def test_the_verify_form_is_limited_too(make_client: Any) -> None:
    client = await make_client(verify_rate="2/60")
    for _ in range(2):
        assert (await client.post("/verify", data={"token": "A" * 43})).status == 404
    resp = await client.post("/verify", data={"token": "A" * 43})
    assert resp.status == 429 and resp.content_type == "text/html"


async def test_the_verify_form_429_has_a_retry_after(make_client: Any) -> None:
    client = await make_client(verify_rate="1/60")
    assert (await client.post("/verify", data={"token": "A" * 43})).status == 404
    resp = await client.post("/verify", data={"token": "A" * 43})
    assert resp.status == 429
    _retry_after(resp, 60)


async def test_the_default_limits_allow_20_signups_a_minute(make_client: Any) -> None:
    client = await make_client()
    for n in range(20):
        await signup(client, f"user{n}@example.com")
    resp = await client.post("/api/signup", json={"email": "ann@example.com", "name": "Ann"})
    await expect_error(resp, 429, "rate_limited")
    _retry_after(resp, 60)


async def test_mistyped_signups_do_not_count_against_the_limit(make_client: Any) -> None:
    """A person who mistypes 20 times in a minute is told what to fix each time, and still gets in."""
    client = await make_client(signup_rate="3/60")
    for n in range(20):
        await expect_error(await client.post("/api/signup", json={"email": f"ann{n}@", "name": "Ann"}), 400, "invalid_email")
        await expect_error(await client.post("/api/signup", json={"email": "ann@example.com"}), 400, "invalid_fields")
    accepted = await signup(client, "ann@example.com")
    assert accepted["workflowId"].startswith("wf_")


async def test_the_default_limits_allow_60_verifications_a_minute(make_client: Any) -> None:
    client = await make_client()
    for _ in range(60):
        await expect_error(await client.get("/api/verify", params={"token": "A" * 43}), 404)
    resp = await client.get("/api/verify", params={"token": "A" * 43})
    await expect_error(resp, 429, "rate_limited")
    _retry_after(resp, 60)


async def test_zero_turns_the_limits_off(make_client: Any) -> None:
    client = await make_client(signup_rate="0", verify_rate="0")
    for n in range(30):
        await expect_error(await client.post("/api/signup", json={"email": f"bad{n}", "name": "Ann"}), 400, "invalid_email")
    await signup(client, "ann@example.com")
    for _ in range(100):
        await expect_error(await client.get("/api/verify", params={"token": "A" * 43}), 404)


# -- malformed HTTP, below the application (a real server process) ---------------------------------


@pytest.fixture(scope="module")
def raw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(str(tmp_path_factory.mktemp("hostile") / "data"), "--email-failure-rate", "0").start()
    try:
        yield srv
    finally:
        srv.stop()


def send_raw(server: Server, data: bytes) -> bytes:
    """One connection, ``data`` as is, everything the server answers until it closes."""
    parts = urlsplit(server.url)
    assert parts.hostname and parts.port
    out = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(data)
        try:
            while chunk := conn.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def malformed_requests(token: str) -> list[bytes]:
    return [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        f"GET /verify?token={token}&pad={'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET /verify?token={token} HTTP/1.1\r\nHost: x\r\nX-Bad\x01: y\r\n\r\n".encode(),
        f"POST /api/verify?token={token} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".encode(),
        b"POST /api/signup HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBREW /coffee HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS hello on the plain port
    ]


def test_malformed_http_is_a_4xx_and_the_server_keeps_serving(raw_server: Server) -> None:
    for data in malformed_requests("A" * 43):
        answer = send_raw(raw_server, data)
        statuses = [int(s) for s in re.findall(rb"(?m)^HTTP/1\.[01] (\d{3}) ", answer)]
        # The TLS hello may just be dropped; the pipelined pair answers 200 then 400.
        assert statuses == [] or (statuses[-1] // 100 == 4 and all(s < 500 for s in statuses)), (data[:60], answer[:300])
    assert raw_server.proc is not None and raw_server.proc.poll() is None
    assert raw_server.get("/healthz") == {"status": "ok"}
    assert raw_server.request("POST", "/api/signup", {"email": "ann@example.com", "name": "Ann"})[0] == 202


def _logs_after(server: Server, data: list[bytes]) -> str:
    start = server.log_marker() + 1  # what earlier tests logged is all before this line
    for item in data:
        send_raw(server, item)
    assert server.get("/healthz") == {"status": "ok"}
    end = server.log_marker()  # everything logged while handling them is before this line
    return "".join(server.stderr[start:end])


def test_malformed_http_logs_no_traceback(raw_server: Server) -> None:
    logs = _logs_after(raw_server, malformed_requests("A" * 43))
    assert "Traceback" not in logs, logs[:2000]


def test_a_token_in_a_malformed_request_never_reaches_the_logs(raw_server: Server) -> None:
    token = secrets.token_urlsafe(32)
    logs = _logs_after(raw_server, malformed_requests(token))
    assert token not in logs, logs[:2000]


MALFORMED_BELOW_THE_APP = [
    pytest.param(b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", id="unknown-method"),
    pytest.param(b"GET /verify?token=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="request-line-over-8190"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", id="header-over-8190"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad\x01: y\r\n\r\n", id="bad-header-name"),
    pytest.param(b"POST /api/signup HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", id="bad-content-length"),
]


@pytest.mark.parametrize("data", MALFORMED_BELOW_THE_APP)
def test_malformed_http_is_answered_in_the_json_error_shape(raw_server: Server, data: bytes) -> None:
    answer = send_raw(raw_server, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
    assert re.search(rb"(?mi)^content-type: application/json", head), head
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["code"] and error["message"]
    assert b"aaaaaaaa" not in body and b"X-Bad" not in body, "the answer never echoes the request"


def _metrics(server: Server) -> dict[tuple[str, str, str], float]:
    status, _ = server.request("GET", "/healthz")
    assert status == 200
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = {}
    for method, route, code, value in re.findall(
        r'userflow_http_requests_total\{method="([^"]+)",route="([^"]+)",status="(\d+)"\} (\S+)', text
    ):
        found[(method, route, code)] = float(value)
    return found


def test_a_client_gone_mid_body_is_no_error_and_no_5xx(raw_server: Server) -> None:
    """curl --max-time 2 -X POST .../api/signup -H 'Content-Length: 5000' -d '{}': the client leaves mid-body."""
    parts = urlsplit(raw_server.url)
    assert parts.hostname and parts.port
    key = ("POST", "/api/signup", "400")
    before = _metrics(raw_server).get(key, 0)
    start = raw_server.log_marker() + 1
    for _ in range(3):
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
            conn.sendall(b"POST /api/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{}")
    deadline = time.monotonic() + 10
    while _metrics(raw_server).get(key, 0) < before + 3:
        assert time.monotonic() < deadline, "the server never counted the abandoned requests"
        time.sleep(0.02)  # polling the metrics; the count decides
    end = raw_server.log_marker()
    logs = "".join(raw_server.stderr[start:end])
    assert "Traceback" not in logs and '"level":"error"' not in logs, logs[:2000]
    assert not [k for k in _metrics(raw_server) if k[2].startswith("5")], "no 5xx is ever counted"
