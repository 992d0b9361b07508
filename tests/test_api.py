"""The HTTP API against SPEC.md section 3, through a real app with a real engine.

Runs progress in actor threads, so every wait polls the API with a deadline;
nothing here sleeps blind to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.http_helpers import (
    expect_error,
    outbox_email,
    signup,
    token_of,
    wait_listed,
    wait_run,
    wait_user,
    waiting_signup,
)
from userflow.actors.signup.tokens import token_hash

STEP_IDS = ["create-user", "send-verification-email", "wait-for-verification", "ai-risk-check", "finalize-user"]
UNKNOWN_TOKEN = "A" * 43
UNKNOWN_RUN_ID = "wf_000000000000aaaaaaaaaa"
JSON = {"Content-Type": "application/json"}


# -- helpers ------------------------------------------------------------------------------


async def verified_signup(client: TestClient, email: str, name: str = "Ann Example") -> dict[str, Any]:
    accepted, token = await waiting_signup(client, email, name)
    resp = await client.get("/api/verify", params={"token": token})
    assert resp.status == 200, await resp.text()
    await wait_listed(client, accepted["workflowId"], "COMPLETED")
    return accepted


# -- POST /api/signup ---------------------------------------------------------------------


async def test_signup_is_accepted_and_the_run_waits_for_verification(client: TestClient) -> None:
    resp = await client.post("/api/signup", json={"email": "ann@example.com", "name": "Ann Example"})
    assert resp.status == 202, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"workflowId", "userId", "status"}
    assert body["workflowId"].startswith("wf_") and body["userId"].startswith("usr_")
    assert body["status"] in ("RUNNING", "WAITING")
    assert resp.headers["Location"] == f"/api/workflows/{body['workflowId']}"

    detail = await wait_run(client, body["workflowId"], "WAITING")
    assert detail["currentStep"] == "wait-for-verification"
    assert detail["userId"] == body["userId"]
    user = (await (await client.get(f"/api/users/{body['userId']}")).json())
    assert user["status"] == "PENDING"
    assert user["email"] == "ann@example.com" and user["name"] == "Ann Example"


LONG_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + ".com"  # 260 characters


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(b"{", "invalid_json", id="truncated-json"),
        pytest.param(b"", "invalid_json", id="empty-body"),
        pytest.param(b'{"email": "ann@example.com", "name": "Ann",}', "invalid_json", id="trailing-comma"),
        pytest.param(b"\xff\xfe{}", "invalid_json", id="not-utf8"),
        pytest.param(b"[" * 2000 + b"]" * 2000, "invalid_json", id="deep-nesting"),
        pytest.param(b"[]", "invalid_json", id="array"),
        pytest.param(b'"ann@example.com"', "invalid_json", id="string"),
        pytest.param(b"null", "invalid_json", id="null"),
        pytest.param(b"42", "invalid_json", id="number"),
        pytest.param(b'{"email": "ann@example.com", "name": "\\ud800"}', "invalid_json", id="lone-surrogate"),
    ],
)
async def test_signup_rejects_bodies_that_are_not_a_json_object(client: TestClient, raw: bytes, code: str) -> None:
    resp = await client.post("/api/signup", data=raw, headers=JSON)
    await expect_error(resp, 400, code)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param({}, "invalid_fields", id="empty-object"),
        pytest.param({"name": "Ann"}, "invalid_fields", id="missing-email"),
        pytest.param({"email": "ann@example.com"}, "invalid_fields", id="missing-name"),
        pytest.param({"email": 42, "name": "Ann"}, "invalid_fields", id="number-email"),
        pytest.param({"email": None, "name": "Ann"}, "invalid_fields", id="null-email"),
        pytest.param({"email": ["ann@example.com"], "name": "Ann"}, "invalid_fields", id="list-email"),
        pytest.param({"email": "ann@example.com", "name": 7}, "invalid_fields", id="number-name"),
        pytest.param({"email": "ann@example.com", "name": True}, "invalid_fields", id="bool-name"),
        pytest.param({"email": "ann@example.com", "name": "Ann", "admin": True}, "invalid_fields", id="extra-field"),
        pytest.param({"email": "not-an-email", "name": "Ann"}, "invalid_email", id="no-at"),
        pytest.param({"email": "ann@", "name": "Ann"}, "invalid_email", id="no-domain"),
        pytest.param({"email": "@example.com", "name": "Ann"}, "invalid_email", id="no-local"),
        pytest.param({"email": "ann@@example.com", "name": "Ann"}, "invalid_email", id="double-at"),
        pytest.param({"email": "ann smith@example.com", "name": "Ann"}, "invalid_email", id="space-inside"),
        pytest.param({"email": "ann@localhost", "name": "Ann"}, "invalid_email", id="no-dot-domain"),
        pytest.param({"email": "ann@[127.0.0.1]", "name": "Ann"}, "invalid_email", id="ip-literal"),
        pytest.param({"email": "ann@example.com.", "name": "Ann"}, "invalid_email", id="trailing-dot"),
        pytest.param({"email": "", "name": "Ann"}, "invalid_email", id="empty-email"),
        pytest.param({"email": "   ", "name": "Ann"}, "invalid_email", id="blank-email"),
        pytest.param({"email": LONG_EMAIL, "name": "Ann"}, "invalid_email", id="email-over-254"),
        pytest.param({"email": "ann@example.com\r\nBcc: eve@example.com", "name": "Ann"}, "invalid_email", id="crlf-email"),
        pytest.param({"email": "ann@exa\nmple.com", "name": "Ann"}, "invalid_email", id="lf-inside-email"),
        pytest.param({"email": "ann\r@example.com", "name": "Ann"}, "invalid_email", id="cr-inside-email"),
        pytest.param({"email": "ann\x00@example.com", "name": "Ann"}, "invalid_email", id="nul-email"),
        pytest.param({"email": "ann@example.com", "name": ""}, "invalid_fields", id="empty-name"),
        pytest.param({"email": "ann@example.com", "name": " \t  "}, "invalid_fields", id="whitespace-name"),
        pytest.param({"email": "ann@example.com", "name": "x" * 101}, "invalid_fields", id="name-over-100"),
        pytest.param({"email": "ann@example.com", "name": "x" * 5000}, "invalid_fields", id="name-huge"),
        pytest.param({"email": "ann@example.com", "name": "Ann\x00"}, "invalid_fields", id="nul-name"),
        pytest.param({"email": "ann@example.com", "name": "Ann\u200bSmith"}, "invalid_fields", id="zero-width-name"),
        pytest.param({"email": "ann@example.com", "name": "Ann\u202eSmith"}, "invalid_fields", id="bidi-override-name"),
    ],
)
async def test_signup_rejects_invalid_fields(client: TestClient, body: dict[str, Any], code: str) -> None:
    resp = await client.post("/api/signup", json=body)
    await expect_error(resp, 400, code)
    users = await (await client.get("/api/users")).json()
    assert users["users"] == []


async def test_signup_accepts_the_boundary_lengths(client: TestClient) -> None:
    email = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    assert len(email) == 254
    accepted = await signup(client, email, "x" * 100)
    user = await (await client.get(f"/api/users/{accepted['userId']}")).json()
    assert user["email"] == email and user["name"] == "x" * 100


async def test_signup_normalises_the_name(client: TestClient) -> None:
    accepted = await signup(client, "ann@example.com", "  Ann \t  Example ")
    user = await (await client.get(f"/api/users/{accepted['userId']}")).json()
    assert user["name"] == "Ann Example"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", None],
)
async def test_signup_needs_a_json_content_type(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if content_type == "application/x-www-form-urlencoded":
        data: Any = "email=ann%40example.com&name=Ann"
    else:
        data = json.dumps({"email": "ann@example.com", "name": "Ann"})
    resp = await client.post("/api/signup", data=data.encode(), headers=headers, skip_auto_headers=["Content-Type"])
    await expect_error(resp, 415, "unsupported_media_type")


async def test_signup_accepts_json_with_a_charset_parameter(client: TestClient) -> None:
    resp = await client.post(
        "/api/signup",
        data=json.dumps({"email": "ann@example.com", "name": "Ann"}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status == 202, await resp.text()


async def test_signup_body_over_16_kib_is_413(client: TestClient) -> None:
    body = json.dumps({"email": "ann@example.com", "name": "Ann", "pad": "x" * (16 * 1024)}).encode()
    assert len(body) > 16 * 1024
    resp = await client.post("/api/signup", data=body, headers=JSON)
    await expect_error(resp, 413, "body_too_large")
    users = await (await client.get("/api/users")).json()
    assert users["users"] == []


async def test_repeated_signup_for_a_pending_email_is_idempotent(client: TestClient) -> None:
    first = await signup(client, "ann@example.com", "Ann Example")
    for variant in ("ann@example.com", "ann@EXAMPLE.COM", "  ann@Example.com  ", "\tann@example.com\t"):
        again = await signup(client, variant, "Ann Example")
        assert (again["workflowId"], again["userId"]) == (first["workflowId"], first["userId"]), variant
    await wait_run(client, first["workflowId"], "WAITING")
    again = await signup(client, "ANN@example.com", "Someone Else")  # also once it waits; ASCII case folded
    assert (again["workflowId"], again["userId"]) == (first["workflowId"], first["userId"])

    users = await (await client.get("/api/users")).json()
    assert [u["id"] for u in users["users"]] == [first["userId"]]
    runs = await (await client.get("/api/workflows")).json()
    assert [w["id"] for w in runs["workflows"]] == [first["workflowId"]]
    outbox = await (await client.get("/api/outbox")).json()
    assert len(outbox["emails"]) == 1


async def test_concurrent_signups_for_one_email_make_one_user(client: TestClient) -> None:
    answers = await asyncio.gather(
        *(client.post("/api/signup", json={"email": "bob@example.com", "name": "Bob"}) for _ in range(8))
    )
    bodies = []
    for resp in answers:
        assert resp.status == 202, await resp.text()
        bodies.append(await resp.json())
    assert len({(b["workflowId"], b["userId"]) for b in bodies}) == 1
    users = await (await client.get("/api/users")).json()
    assert len(users["users"]) == 1


async def test_a_look_alike_email_is_refused(client: TestClient) -> None:
    await signup(client, "ann@example.com")
    for look_alike in ("x@ex\u0430mple.com", "\ufb01x@example.com", "\u0430nn@example.com"):
        resp = await client.post("/api/signup", json={"email": look_alike, "name": "Ann"})
        await expect_error(resp, 400, "invalid_email")
    users = await (await client.get("/api/users")).json()
    assert [u["email"] for u in users["users"]] == ["ann@example.com"]


async def test_signup_for_an_active_email_is_409(client: TestClient) -> None:
    accepted = await verified_signup(client, "ann@example.com")
    await wait_user(client, accepted["userId"], "ACTIVE")
    for variant in ("ann@example.com", " Ann@EXAMPLE.com "):
        resp = await client.post("/api/signup", json={"email": variant, "name": "Ann"})
        await expect_error(resp, 409, "email_taken")
    users = await (await client.get("/api/users")).json()
    assert len(users["users"]) == 1


async def test_signup_for_a_flagged_email_is_409(client: TestClient) -> None:
    accepted = await verified_signup(client, "x12345@mailinator.com", "12345")
    await wait_user(client, accepted["userId"], "FLAGGED")
    resp = await client.post("/api/signup", json={"email": "x12345@mailinator.com", "name": "Real Name"})
    await expect_error(resp, 409, "email_taken")


# -- verification --------------------------------------------------------------------------


async def test_verify_by_get_activates_the_user(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, "ann@example.com")
    resp = await client.get("/api/verify", params={"token": token})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    expected = {"workflowId": accepted["workflowId"], "status": "verified"}
    assert await resp.json() == expected

    again = await client.get("/api/verify", params={"token": token})
    assert again.status == 200 and await again.json() == expected
    by_post = await client.post("/api/verify", json={"token": token})
    assert by_post.status == 200 and await by_post.json() == expected

    detail = await wait_run(client, accepted["workflowId"], "COMPLETED")
    assert detail["currentStep"] is None
    assert [s["status"] for s in detail["steps"]] == ["COMPLETED"] * 5
    user = await wait_user(client, accepted["userId"], "ACTIVE")
    assert user["verifiedAt"] and user["finishedAt"]
    risk = user["risk"]
    assert risk["decision"] == "ALLOW" and risk["source"] == "heuristic"
    assert isinstance(risk["score"], (int, float)) and 0 <= risk["score"] < 0.5
    assert isinstance(risk["reasons"], list) and risk["reasons"]

    # still harmless once the run has completed
    late = await client.get("/api/verify", params={"token": token})
    assert late.status == 200 and await late.json() == expected


async def test_verify_by_post_activates_the_user(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, "ann@example.com")
    resp = await client.post("/api/verify", json={"token": token})
    assert resp.status == 200, await resp.text()
    expected = {"workflowId": accepted["workflowId"], "status": "verified"}
    assert await resp.json() == expected
    again = await client.post("/api/verify", json={"token": token})
    assert again.status == 200 and await again.json() == expected
    await wait_user(client, accepted["userId"], "ACTIVE")


async def test_a_risky_signup_is_flagged_with_reasons(client: TestClient) -> None:
    accepted = await verified_signup(client, "x12345@mailinator.com", "12345")
    user = await wait_user(client, accepted["userId"], "FLAGGED")
    risk = user["risk"]
    assert risk["decision"] == "FLAG" and risk["source"] == "heuristic"
    assert risk["score"] >= 0.5
    assert any("disposable" in r for r in risk["reasons"]), risk["reasons"]
    assert len(risk["reasons"]) >= 2
    detail = await (await client.get(f"/api/workflows/{accepted['workflowId']}")).json()
    assert detail["outcome"] is None or isinstance(detail["outcome"], str)
    finalize = detail["steps"][4]
    assert finalize["output"]["status"] == "FLAGGED"


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"token": "abc"}, id="too-short"),
        pytest.param({"token": "A" * 42}, id="42-chars"),
        pytest.param({"token": "A" * 44}, id="44-chars"),
        pytest.param({"token": "A" * 42 + "!"}, id="bad-char"),
        pytest.param({"token": "A" * 42 + "="}, id="padding-char"),
        pytest.param({"token": "A" * 42 + "."}, id="dot"),
        pytest.param({"token": "A" * 42 + "\n"}, id="newline-as-43rd"),
        pytest.param({"token": UNKNOWN_TOKEN + "\n"}, id="trailing-newline"),
        pytest.param({"token": " " + UNKNOWN_TOKEN}, id="leading-space"),
        pytest.param({"token": "\u00c4" * 43}, id="non-ascii"),
        pytest.param({"token": ""}, id="empty"),
        pytest.param({}, id="missing"),
        pytest.param([("token", UNKNOWN_TOKEN), ("token", UNKNOWN_TOKEN)], id="two-tokens"),
    ],
)
async def test_verify_get_rejects_malformed_tokens(client: TestClient, query: Any) -> None:
    resp = await client.get("/api/verify", params=query)
    await expect_error(resp, 400, "invalid_token")


async def test_verify_with_two_tokens_is_400_even_if_one_is_real(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, "ann@example.com")
    resp = await client.get("/api/verify", params=[("token", token), ("token", UNKNOWN_TOKEN)])
    await expect_error(resp, 400, "invalid_token")
    detail = await (await client.get(f"/api/workflows/{accepted['workflowId']}")).json()
    assert detail["status"] == "WAITING"


@pytest.mark.parametrize("token", [UNKNOWN_TOKEN, "abcdefghijklmnopqrstuvwxyz_-0123456789ABCDE"])
async def test_verify_unknown_well_formed_token_is_404(client: TestClient, token: str) -> None:
    assert len(token) == 43
    await waiting_signup(client, "ann@example.com")  # an index that is not empty
    await expect_error(await client.get("/api/verify", params={"token": token}), 404, "unknown_token")
    await expect_error(await client.post("/api/verify", json={"token": token}), 404, "unknown_token")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param({"token": "short"}, "invalid_token", id="too-short"),
        pytest.param({"token": "A" * 42 + "!"}, "invalid_token", id="bad-char"),
        pytest.param({"token": 12345}, "invalid_fields", id="number"),
        pytest.param({"token": None}, "invalid_fields", id="null"),
        pytest.param({}, "invalid_fields", id="missing"),
        pytest.param({"token": UNKNOWN_TOKEN, "extra": 1}, "invalid_fields", id="extra-field"),
    ],
)
async def test_verify_post_rejects_bad_bodies(client: TestClient, body: dict[str, Any], code: str) -> None:
    await expect_error(await client.post("/api/verify", json=body), 400, code)


async def test_verify_post_rejects_invalid_json(client: TestClient) -> None:
    await expect_error(await client.post("/api/verify", data=b"{", headers=JSON), 400, "invalid_json")
    await expect_error(await client.post("/api/verify", data=b'["x"]', headers=JSON), 400, "invalid_json")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_verify_post_needs_json(client: TestClient, content_type: str) -> None:
    resp = await client.post("/api/verify", data=f"token={UNKNOWN_TOKEN}".encode(), headers={"Content-Type": content_type})
    await expect_error(resp, 415, "unsupported_media_type")


async def test_verify_post_body_over_16_kib_is_413(client: TestClient) -> None:
    body = json.dumps({"token": "x" * (17 * 1024)}).encode()
    await expect_error(await client.post("/api/verify", data=body, headers=JSON), 413, "body_too_large")


# -- the verification page -----------------------------------------------------------------


async def test_verify_page_shows_a_post_form_and_verifies_no_one(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, "ann@example.com")
    resp = await client.get("/verify", params={"token": token})
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    page = await resp.text()
    assert 'method="post"' in page.lower()
    assert 'action="/verify"' in page
    assert f'name="token" value="{token}"' in page

    # A later signup that reaches its wait proves time passed after the GET.
    other, _ = await waiting_signup(client, "other@example.com")
    detail = await (await client.get(f"/api/workflows/{accepted['workflowId']}")).json()
    assert detail["status"] == "WAITING"
    assert detail["currentStep"] == "wait-for-verification"
    assert detail["steps"][2]["output"] is None
    user = await (await client.get(f"/api/users/{accepted['userId']}")).json()
    assert user["status"] == "PENDING" and user["verifiedAt"] is None


async def test_verify_page_escapes_the_token(client: TestClient) -> None:
    resp = await client.get("/verify", params={"token": '"><script>alert(1)</script>'})
    assert resp.status == 400  # not a token: a page that says so, which never echoes it
    page = await resp.text()
    assert "<script>" not in page and "alert(1)" not in page


async def test_verify_page_form_post_verifies(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, "ann@example.com")
    resp = await client.post("/verify", data={"token": token})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/html"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "confirmed" in (await resp.text()).lower()
    await wait_user(client, accepted["userId"], "ACTIVE")
    again = await client.post("/verify", data={"token": token})
    assert again.status == 200


async def test_verify_page_form_post_with_unknown_token_is_404_html(client: TestClient) -> None:
    resp = await client.post("/verify", data={"token": UNKNOWN_TOKEN})
    assert resp.status == 404
    assert resp.content_type == "text/html"
    assert "<html" in (await resp.text()).lower()


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"data": {"token": "short"}}, id="malformed"),
        pytest.param({"data": {}}, id="no-token"),
        pytest.param({"json": {"token": UNKNOWN_TOKEN}}, id="json-body"),
    ],
)
async def test_verify_page_form_post_with_a_broken_token_is_400_html(client: TestClient, kwargs: dict[str, Any]) -> None:
    resp = await client.post("/verify", **kwargs)
    assert resp.status == 400
    assert resp.content_type == "text/html"


# -- links in emails ------------------------------------------------------------------------


async def test_links_use_the_public_url_even_with_forged_host_headers(client: TestClient) -> None:
    forged = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Forwarded": "host=evil.example;proto=https",
    }
    accepted = await signup(client, "ann@example.com", headers=forged)
    email = await outbox_email(client, accepted["workflowId"])
    link = email["link"]
    assert link.startswith("http://public.example/verify?token="), link
    assert "evil" not in link
    assert len(token_of(link)) == 43
    assert link in email["text"]


# -- GET /api/workflows ----------------------------------------------------------------------


async def test_workflow_list_is_newest_first_and_pages_cover_every_run_once(client: TestClient) -> None:
    created = []
    for n in range(5):
        accepted = await signup(client, f"user{n}@example.com", f"User {chr(65 + n)}")
        await wait_run(client, accepted["workflowId"], "WAITING")  # also keeps creation times apart
        created.append(accepted["workflowId"])
    newest_first = list(reversed(created))

    everything = await (await client.get("/api/workflows")).json()
    assert set(everything) == {"workflows", "nextCursor"}
    assert [w["id"] for w in everything["workflows"]] == newest_first
    assert everything["nextCursor"] is None
    summary = everything["workflows"][0]
    for key in ("id", "workflow", "status", "currentStep", "userId", "createdAt", "updatedAt"):
        assert key in summary
    assert summary["workflow"] == "user-signup"

    seen, pages, cursor = [], [], None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = await (await client.get("/api/workflows", params=params)).json()
        pages.append(len(page["workflows"]))
        seen.extend(w["id"] for w in page["workflows"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
        assert len(pages) < 10
    assert seen == newest_first
    assert pages == [2, 2, 1]


async def test_workflow_list_filters_by_status(client: TestClient) -> None:
    done = await verified_signup(client, "done@example.com")
    waiting, _ = await waiting_signup(client, "waiting@example.com")
    completed = await (await client.get("/api/workflows", params={"status": "COMPLETED"})).json()
    assert [w["id"] for w in completed["workflows"]] == [done["workflowId"]]
    waits = await (await client.get("/api/workflows", params={"status": "waiting"})).json()
    assert [w["id"] for w in waits["workflows"]] == [waiting["workflowId"]]
    failed = await (await client.get("/api/workflows", params={"status": "FAILED"})).json()
    assert failed == {"workflows": [], "nextCursor": None}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        pytest.param({"limit": "0"}, "invalid_limit", id="limit-0"),
        pytest.param({"limit": "201"}, "invalid_limit", id="limit-201"),
        pytest.param({"limit": "abc"}, "invalid_limit", id="limit-abc"),
        pytest.param({"limit": "-1"}, "invalid_limit", id="limit-negative"),
        pytest.param({"limit": "1.5"}, "invalid_limit", id="limit-fraction"),
        pytest.param({"limit": ""}, "invalid_limit", id="limit-empty"),
        pytest.param({"limit": "9" * 400}, "invalid_limit", id="limit-huge"),
        pytest.param({"status": "BOGUS"}, "invalid_status", id="bad-status"),
        pytest.param({"status": "PENDING"}, "invalid_status", id="user-status"),
        pytest.param({"cursor": "../x"}, "invalid_cursor", id="cursor-traversal"),
        pytest.param({"cursor": "wf_1/../../etc"}, "invalid_cursor", id="cursor-slash"),
        pytest.param({"cursor": "x" * 500}, "invalid_cursor", id="cursor-long"),
    ],
)
async def test_workflow_list_rejects_bad_parameters(client: TestClient, params: dict[str, str], code: str) -> None:
    await expect_error(await client.get("/api/workflows", params=params), 400, code)



@pytest.mark.parametrize("path", ["/api/workflows", "/api/users", "/api/outbox"])
async def test_a_unicode_digit_limit_is_400_not_500(client: TestClient, path: str) -> None:
    await expect_error(await client.get(f"{path}?limit=%C2%B2"), 400, "invalid_limit")


async def test_workflow_list_accepts_the_limit_bounds(client: TestClient) -> None:
    for limit in ("1", "200"):
        resp = await client.get("/api/workflows", params={"limit": limit})
        assert resp.status == 200, await resp.text()


# -- GET /api/workflows/{id} ----------------------------------------------------------------


async def test_workflow_detail_has_the_documented_shape(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, "ann@example.com")
    resp = await client.post("/api/verify", json={"token": token})
    assert resp.status == 200
    detail = await wait_run(client, accepted["workflowId"], "COMPLETED")

    for key in ("id", "workflow", "status", "currentStep", "userId", "createdAt", "updatedAt", "steps", "timeline"):
        assert key in detail, key
    assert detail["id"] == accepted["workflowId"]
    assert detail["userId"] == accepted["userId"]
    assert detail["workflow"] == "user-signup"
    assert [s["id"] for s in detail["steps"]] == STEP_IDS
    for step in detail["steps"]:
        for key in ("id", "name", "status", "attempts", "output"):
            assert key in step, (step["id"], key)
        assert isinstance(step["name"], str) and step["name"]
        for attempt in step["attempts"]:
            assert set(attempt) >= {"number", "startedAt", "finishedAt", "error"}
            assert attempt["error"] is None
            assert attempt["startedAt"] and attempt["finishedAt"]
    task_steps = [s for s in detail["steps"] if s["id"] != "wait-for-verification"]
    assert all([a["number"] for a in s["attempts"]] == [1] for s in task_steps)
    assert detail["steps"][0]["output"]["userId"] == accepted["userId"]

    assert detail["timeline"], "the timeline is empty"
    for entry in detail["timeline"]:
        assert set(entry) >= {"at", "type", "step", "attempt", "message"}
        assert isinstance(entry["message"], str)
        assert entry["step"] is None or entry["step"] in STEP_IDS
    ats = [entry["at"] for entry in detail["timeline"]]
    assert ats == sorted(ats)
    for stamp in (detail["createdAt"], detail["updatedAt"], *ats):
        assert stamp.endswith("Z") or stamp.endswith("+00:00"), stamp

    wait_output = detail["steps"][2]["output"]
    assert wait_output and wait_output.get("receivedAt")
    raw = await (await client.get(f"/api/workflows/{accepted['workflowId']}")).text()
    assert token_hash(token) not in raw
    assert token not in raw
    assert "tokenHash" not in json.dumps(wait_output)



async def test_workflow_detail_is_one_consistent_snapshot(client: TestClient) -> None:
    for n in range(8):
        accepted, token = await waiting_signup(client, f"user{n}@example.com", "Ann Example")
        resp = await client.post("/api/verify", json={"token": token})
        assert resp.status == 200
        deadline = time.monotonic() + 10
        while True:  # poll as fast as the API answers, to catch the moment of completion
            detail = await (await client.get(f"/api/workflows/{accepted['workflowId']}")).json()
            if detail["status"] == "COMPLETED":
                break
            assert time.monotonic() < deadline, "the run did not complete"
        assert detail["finishedAt"] is not None, detail
        assert detail["userStatus"] == "ACTIVE" and detail["user"]["status"] == "ACTIVE", detail


@pytest.mark.parametrize(
    "run_id",
    [
        UNKNOWN_RUN_ID,
        "nope",
        "..",
        "...",
        "..%2F..%2Fetc%2Fpasswd",
        "..%5C..%5Cwindows",
        "%2E%2E",
        "wf_%00",
        "wf_abc%0A",
        ".secret",
        "a" * 300,
    ],
)
async def test_unknown_workflow_is_404(client: TestClient, run_id: str) -> None:
    await waiting_signup(client, "ann@example.com")
    resp = await client.get(f"/api/workflows/{run_id}")
    await expect_error(resp, 404, ("workflow_not_found", "not_found"))


# -- users ------------------------------------------------------------------------------------


async def test_users_list_and_detail(client: TestClient) -> None:
    first = await signup(client, "ann@example.com", "Ann Example")
    await wait_run(client, first["workflowId"], "WAITING")
    second = await signup(client, "bob@example.com", "Bob Example")
    await wait_run(client, second["workflowId"], "WAITING")

    listing = await (await client.get("/api/users")).json()
    assert set(listing) >= {"users"}
    assert [u["id"] for u in listing["users"]] == [second["userId"], first["userId"]]
    for user in listing["users"]:
        for key in ("id", "email", "name", "status", "risk", "createdAt", "verifiedAt", "finishedAt"):
            assert key in user, key
        assert user["status"] == "PENDING" and user["risk"] is None and user["verifiedAt"] is None

    resp = await client.get(f"/api/users/{first['userId']}")
    assert resp.status == 200
    one = await resp.json()
    assert one["id"] == first["userId"] and one["email"] == "ann@example.com" and one["name"] == "Ann Example"

    pending = await (await client.get("/api/users", params={"status": "pending"})).json()
    assert len(pending["users"]) == 2
    active = await (await client.get("/api/users", params={"status": "ACTIVE"})).json()
    assert active["users"] == []


@pytest.mark.parametrize("user_id", ["usr_nope", "usr_000000000000aaaaaaaaaa", "..", "%2E%2E%2Fx"])
async def test_unknown_user_is_404(client: TestClient, user_id: str) -> None:
    await signup(client, "ann@example.com")
    await expect_error(await client.get(f"/api/users/{user_id}"), 404, ("user_not_found", "not_found"))


@pytest.mark.parametrize(
    ("params", "code"),
    [({"status": "WAITING"}, "invalid_status"), ({"limit": "0"}, "invalid_limit"), ({"cursor": "../x"}, "invalid_cursor")],
)
async def test_users_list_rejects_bad_parameters(client: TestClient, params: dict[str, str], code: str) -> None:
    await expect_error(await client.get("/api/users", params=params), 400, code)


# -- outbox -----------------------------------------------------------------------------------


async def test_outbox_lists_emails_newest_first(client: TestClient) -> None:
    empty = await client.get("/api/outbox")
    assert empty.status == 200 and await empty.json() == {"emails": [], "nextCursor": None}

    first, _ = await waiting_signup(client, "ann@example.com", "Ann Example")
    second, _ = await waiting_signup(client, "bob@example.com", "Bob Example")
    body = await (await client.get("/api/outbox")).json()
    emails = body["emails"]
    assert [e["workflowId"] for e in emails] == [second["workflowId"], first["workflowId"]]
    assert [e["to"] for e in emails] == ["bob@example.com", "ann@example.com"]
    sent = [e["sentAt"] for e in emails]
    assert sent == sorted(sent, reverse=True)
    for email in emails:
        for key in ("to", "subject", "kind", "link", "messageId", "sentAt"):
            assert key in email, key
        assert email["kind"] == "verification"
        assert email["subject"]
        assert email["messageId"].startswith("<") and email["messageId"].endswith(">")
        assert email["link"].startswith("http://public.example/verify?token=")
    assert emails[0]["link"] != emails[1]["link"]
    assert emails[0]["messageId"] != emails[1]["messageId"]


async def test_outbox_limit_is_validated(client: TestClient) -> None:
    await expect_error(await client.get("/api/outbox", params={"limit": "0"}), 400, "invalid_limit")


async def test_outbox_is_404_with_smtp(make_client: Any) -> None:
    client = await make_client(smtp_url="smtp://127.0.0.1:1", email_failure_rate=None)
    await expect_error(await client.get("/api/outbox"), 404, "outbox_disabled")


# -- health, OpenAPI, routing -------------------------------------------------------------------


async def test_health_and_readiness(client: TestClient) -> None:
    health = await client.get("/healthz")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"


async def test_openapi_describes_every_route(client: TestClient) -> None:
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"]
    paths = doc["paths"]

    app: web.Application = client.server.app  # type: ignore[assignment]
    checked = set()
    for route in app.router.routes():
        if route.method == "HEAD" or isinstance(route.resource, web.StaticResource):
            continue
        assert route.resource is not None
        path = route.resource.canonical
        assert path in paths, f"{route.method} {path} is not in the OpenAPI paths"
        assert route.method.lower() in paths[path], f"{route.method} {path} is not described"
        checked.add((route.method, path))
    assert ("POST", "/api/signup") in checked and ("GET", "/api/workflows/{id}") in checked
    assert "Error" in doc["components"]["schemas"]


async def test_unknown_route_is_404_json(client: TestClient) -> None:
    for path in ("/api/nope", "/nope", "/api/workflows/x/y", "/static/../pyproject.toml"):
        await expect_error(await client.get(path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/signup"), ("DELETE", "/api/signup"), ("PUT", "/api/verify"), ("POST", "/api/workflows"), ("POST", "/api/users"), ("DELETE", "/healthz")],
)
async def test_wrong_method_is_405_json(client: TestClient, method: str, path: str) -> None:
    resp = await client.request(method, path)
    await expect_error(resp, 405, "method_not_allowed")
    assert "Allow" in resp.headers


LIFECYCLE_ROUTES = [
    ("POST", "/api/workflows/{id}/retry"),
    ("POST", "/api/workflows/{id}/cancel"),
    ("POST", "/api/users/{id}/resend-verification"),
    ("GET", "/api/events"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), LIFECYCLE_ROUTES)
async def test_the_other_spec_endpoints_are_routed(client: TestClient, method: str, path: str) -> None:
    """Documented in SPEC.md section 3; their behaviour is beyond these tests, only that they are served."""
    app: web.Application = client.server.app  # type: ignore[assignment]
    routed = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    assert (method, path) in routed


async def test_dashboard_is_html(client: TestClient) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "<html" in (await resp.text()).lower()


# -- injected email failures ---------------------------------------------------------------------


async def test_email_failures_are_retried_then_the_run_fails(make_client: Any) -> None:
    client = await make_client(email_failure_rate=1.0, email_retry_for=2.0, email_max_backoff=0.5)
    accepted = await signup(client, "ann@example.com")
    await wait_run(client, accepted["workflowId"], "FAILED", timeout=25)
    await wait_listed(client, accepted["workflowId"], "FAILED")  # the index is updated just after the file
    detail = await (await client.get(f"/api/workflows/{accepted['workflowId']}")).json()
    assert detail["status"] == "FAILED"

    email_step = detail["steps"][1]
    assert email_step["id"] == "send-verification-email"
    assert email_step["status"] == "FAILED"
    attempts = email_step["attempts"]
    assert len(attempts) >= 3 and [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
    for attempt in attempts:
        assert attempt["error"] and "injected failure" in attempt["error"], attempt
        assert attempt["startedAt"] and attempt["finishedAt"]
    assert detail["error"] and detail["error"]["step"] == "send-verification-email"
    assert "injected failure" in detail["error"]["message"]
    assert [s["status"] for s in detail["steps"][2:]] == ["PENDING"] * 3
    assert detail["currentStep"] == "send-verification-email"

    summary = (await (await client.get("/api/workflows", params={"status": "FAILED"})).json())["workflows"]
    assert [w["id"] for w in summary] == [accepted["workflowId"]]
    assert summary[0]["error"]["step"] == "send-verification-email"
    user = await (await client.get(f"/api/users/{accepted['userId']}")).json()
    assert user["status"] == "PENDING"
    assert (await (await client.get("/api/outbox")).json())["emails"] == []
    retries = [e for e in detail["timeline"] if e["step"] == "send-verification-email" and e["attempt"]]
    # Every attempt is in the timeline. How many fit in the 2 s depends on the jittered
    # backoffs and the machine's speed (4 or 5 here), so the count is not pinned.
    assert {e["attempt"] for e in retries} == set(range(1, len(attempts) + 1))


async def test_outbox_pages_with_a_cursor_and_filters_by_run(client: TestClient) -> None:
    runs = [(await waiting_signup(client, f"user{i}@example.com", "Ann Example"))[0] for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/outbox", params=params)).json()
        seen.extend(e["workflowId"] for e in page["emails"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed([r["workflowId"] for r in runs]))
    one = await (await client.get("/api/outbox", params={"workflowId": runs[2]["workflowId"]})).json()
    assert [e["workflowId"] for e in one["emails"]] == [runs[2]["workflowId"]]
    await expect_error(await client.get("/api/outbox", params={"cursor": "nonsense"}), 400, "invalid_cursor")


async def test_a_second_signup_with_another_name_keeps_the_first_and_says_so(client: TestClient) -> None:
    first = await signup(client, "ann@example.com", "Ann Lee")
    assert "existing" not in first
    same = await signup(client, "ann@example.com", "Ann Lee")
    assert same["existing"] is True and same["name"] == "Ann Lee" and "note" not in same
    other = await signup(client, "ANN@example.com", "Mallory")
    assert (other["workflowId"], other["userId"]) == (first["workflowId"], first["userId"])
    assert other["name"] == "Ann Lee" and "Ann Lee" in other["note"]
    user = await (await client.get(f"/api/users/{first['userId']}")).json()
    assert user["name"] == "Ann Lee"
