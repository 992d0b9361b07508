"""The page a verification link opens (GET /verify): a button only for a link that can verify,
otherwise what is wrong and what to do; never verifying on GET, never naming the address."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.http_helpers import MakeClient, outbox_email, signup, token_of, wait_for, wait_run, wait_user, waiting_signup


@pytest.fixture
def backend() -> str:
    """The data dir only: this module's subject is not what is stored, one store is enough."""
    return "files"

EMAIL, NAME = "ann.page@example.com", "Ann Page"


async def shown(client: TestClient, query: str) -> tuple[int, str, Any]:
    """GET /verify with ``query``: status, page, and the response (for its headers)."""
    resp = await client.get("/verify" + query)
    assert resp.content_type == "text/html"
    assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["Cache-Control"] == "no-store"
    return resp.status, await resp.text(), resp


def assert_explains(page: str, state: str, *advice: str) -> None:
    """A page for a link that cannot verify: its state, its advice, no button, no address or name."""
    assert f'data-state="{state}"' in page, page
    for words in advice:
        assert words in page, (words, page)
    assert "<form" not in page and "<button" not in page
    assert EMAIL not in page and NAME not in page  # a link's page never tells whose it is


async def test_a_link_that_can_verify_shows_the_button_and_verifies_no_one(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, EMAIL, NAME)
    status, page, _ = await shown(client, f"?token={token}")
    assert status == 200 and 'data-state="ready"' in page
    assert '<form method="post" action="/verify">' in page and f'value="{token}"' in page and "Confirm my email" in page
    assert EMAIL not in page and NAME not in page
    user = await (await client.get(f"/api/users/{accepted['userId']}")).json()
    assert user["status"] == "PENDING" and user["verifiedAt"] is None


@pytest.mark.parametrize("query", ["", "?token=", "?other=1"])
async def test_a_link_without_its_code_says_to_open_the_email_again(client: TestClient, query: str) -> None:
    status, page, _ = await shown(client, query)
    assert status == 400
    assert_explains(page, "missing", "This link is incomplete", "Open the link from the email again")


@pytest.mark.parametrize("token", ["short", "A" * 42, "A" * 44, "A" * 42 + "!", "a%20b"])
async def test_a_cut_or_changed_link_says_to_open_the_email_again(client: TestClient, token: str) -> None:
    status, page, _ = await shown(client, f"?token={token}")
    assert status == 400
    assert_explains(page, "malformed", "incomplete or damaged", "Open the link from the email again")


async def test_two_codes_in_one_link_are_a_damaged_link(client: TestClient) -> None:
    _, token = await waiting_signup(client, EMAIL, NAME)
    status, page, _ = await shown(client, f"?token={token}&token={token}")
    assert status == 400 and 'data-state="malformed"' in page


async def test_an_unknown_link_says_to_use_the_newest_email_or_sign_up_again(client: TestClient) -> None:
    status, page, _ = await shown(client, "?token=" + "A" * 43)
    assert status == 404
    assert_explains(page, "unknown", "This link is not valid", "newest email", "sign up again")


async def test_a_used_link_says_the_address_is_confirmed_and_the_page_can_be_closed(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, EMAIL, NAME)
    assert (await client.post("/api/verify", json={"token": token})).status == 200
    status, page, _ = await shown(client, f"?token={token}")  # at once, while the run goes on
    assert status == 200
    assert_explains(page, "verified", "already confirmed", "You can close this page")
    await wait_user(client, accepted["userId"], "ACTIVE")
    status, page, _ = await shown(client, f"?token={token}")  # and once it has ended
    assert status == 200
    assert_explains(page, "verified", "already confirmed", "You can close this page")


async def test_a_replaced_link_says_to_use_the_newest_email(client: TestClient) -> None:
    accepted, old = await waiting_signup(client, EMAIL, NAME)
    assert (await client.post(f"/api/users/{accepted['userId']}/resend-verification")).status == 202
    newest = await wait_for(client, f"/api/outbox?workflowId={accepted['workflowId']}", lambda b: b["emails"][0]["kind"] == "resend")
    new = token_of(newest["emails"][0]["link"])
    status, page, _ = await shown(client, f"?token={old}")
    assert status == 410
    assert_explains(page, "replaced", "replaced by a newer one", "newest email", "sign up again")
    status, page, _ = await shown(client, f"?token={new}")
    assert status == 200 and 'data-state="ready"' in page
    # Pressed anyway (a page opened before the resend): the same explanation, nothing verified.
    resp = await client.post("/verify", data={"token": old})
    assert resp.status == 410 and 'data-state="replaced"' in await resp.text()
    # Once the newest link has confirmed the address, the old one says so too.
    assert (await client.post("/verify", data={"token": new})).status == 200
    status, page, _ = await shown(client, f"?token={old}")
    assert status == 200 and 'data-state="verified"' in page


async def test_an_expired_link_says_to_sign_up_again(make_client: MakeClient) -> None:
    client = await make_client(verify_ttl=1, reminder_after=0)
    accepted = await signup(client, EMAIL, NAME)
    token = token_of((await outbox_email(client, accepted["workflowId"]))["link"])
    await wait_run(client, accepted["workflowId"], "COMPLETED", also=lambda d: d["outcome"] == "expired")
    status, page, _ = await shown(client, f"?token={token}")
    assert status == 410
    assert_explains(page, "expired", "This link has expired", "Sign up again")
    resp = await client.post("/verify", data={"token": token})
    assert resp.status == 410 and 'data-state="expired"' in await resp.text()


async def test_a_cancelled_signups_link_says_it_no_longer_works(client: TestClient) -> None:
    accepted, token = await waiting_signup(client, EMAIL, NAME)
    assert (await client.post(f"/api/workflows/{accepted['workflowId']}/cancel")).status == 200
    status, page, _ = await shown(client, f"?token={token}")
    assert status == 410
    assert_explains(page, "closed", "no longer works", "Sign up again")


async def test_looking_at_links_counts_as_trying_them(make_client: MakeClient) -> None:
    client = await make_client(verify_rate="2/60")
    for _ in range(3):
        assert (await shown(client, "?token=short"))[0] == 400  # not a token: not counted
    assert (await shown(client, "?token=" + "A" * 43))[0] == 404
    assert (await shown(client, "?token=" + "B" * 43))[0] == 404
    status, page, resp = await shown(client, "?token=" + "C" * 43)
    assert status == 429 and 'data-state="rate-limited"' in page and int(resp.headers["Retry-After"]) >= 1


async def test_the_page_names_the_product(make_client: MakeClient) -> None:
    client = await make_client(product_name="Acme & Co")
    _, page, _ = await shown(client, "")
    assert "<title>Link incomplete · Acme &amp; Co</title>" in page
