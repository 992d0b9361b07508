"""The outbox (``GET /api/outbox``) pages through the catalog: the newest signups
first, each one's emails newest first, a cursor going on where a page stopped
(within a run's emails too), narrowed to a run by its id or its address; an
erased person's emails never appear. On both stores.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.http_helpers import expect_error, get_json, outbox_of, wait_for, waiting_signup
from userflow.http.keys import SERVICES


async def resend(client: TestClient, user_id: str, run_id: str, sends: int) -> None:
    """A new link for the user; until the run holds ``sends`` emails."""
    resp = await client.post(f"/api/users/{user_id}/resend-verification")
    assert resp.status == 202, await resp.text()
    await wait_for(client, f"/api/outbox?workflowId={run_id}", lambda b: len(b["emails"]) == sends)


async def people(client: TestClient, count: int) -> list[dict[str, Any]]:
    """``count`` signups waiting for their click, every third with one new link on top of
    the first (so some runs hold two emails); oldest first. The oldest's new link is
    asked for last, so it is the newest email of all."""
    client.app[SERVICES].resend_interval = 0  # the spacing of resends is another rule
    runs = [(await waiting_signup(client, f"person{i}@example.com", f"Person {i}"))[0] for i in range(count)]
    for i in [*range(3, count, 3), 0]:
        await resend(client, runs[i]["userId"], runs[i]["workflowId"], 2)
    return runs


async def every_page(client: TestClient, limit: int, **params: str) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        query = {"limit": str(limit), **params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get("/api/outbox", params=query)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert set(body) == {"emails", "nextCursor"}
        pages.append(body["emails"])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages
        assert len(body["emails"]) == limit  # only the last page is short


def expected_order(runs: list[dict[str, Any]], emails: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Message ids as the outbox lists them: newest signup first, its emails newest first."""
    return [e["messageId"] for run in reversed(runs) for e in emails[run["workflowId"]]]


@pytest.mark.timeout(120)
async def test_paging_returns_every_email_once_newest_signup_first(client: TestClient) -> None:
    runs = await people(client, 7)
    emails = {run["workflowId"]: await outbox_of(client, run["workflowId"]) for run in runs}
    for run_id, kept in emails.items():
        sent = [(e["sentAt"], e["messageId"]) for e in kept]
        assert sent == sorted(sent, reverse=True), run_id  # one run's emails: newest first
    wanted = expected_order(runs, emails)
    assert len(wanted) == 7 + 3  # runs 0, 3 and 6 hold two emails

    for limit in (1, 2, 3, 4, 200):
        pages = await every_page(client, limit)
        listed = [e["messageId"] for page in pages for e in page]
        assert listed == wanted, limit  # each once, in order, with pages that stop within a run's emails
        assert len(pages) == -(-len(wanted) // limit)
    # The shape of an entry is what it was before paging.
    first = (await get_json(client, "/api/outbox?limit=1"))["emails"][0]
    assert set(first) == {"to", "subject", "kind", "link", "messageId", "sentAt", "current", "text", "workflowId", "userId"}
    assert first["workflowId"] == runs[-1]["workflowId"] and first["kind"] == "resend" and first["current"] is True


@pytest.mark.timeout(120)
async def test_a_cursor_goes_on_where_its_page_stopped_whatever_came_since(client: TestClient) -> None:
    runs = await people(client, 4)  # runs 3 and 0 hold two emails each
    r0, r1, r2, r3 = (run["workflowId"] for run in runs)

    def seen(emails: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(e["workflowId"], e["kind"]) for e in emails]

    first = await get_json(client, "/api/outbox?limit=1")
    assert seen(first["emails"]) == [(r3, "resend")]
    page = await client.get("/api/outbox", params={"limit": "3", "cursor": first["nextCursor"]})
    assert seen((await page.json())["emails"]) == [(r3, "verification"), (r2, "verification"), (r1, "verification")]

    # A newer signup is before the cursor: not shown again. A new email of a run past it is shown in its place.
    await waiting_signup(client, "later@example.com", "Later Person")
    await resend(client, runs[1]["userId"], r1, 2)
    page = await client.get("/api/outbox", params={"limit": "3", "cursor": first["nextCursor"]})
    after = await page.json()
    assert seen(after["emails"]) == [(r3, "verification"), (r2, "verification"), (r1, "resend")]
    rest = await every_page(client, 200, cursor=after["nextCursor"])
    assert seen(rest[0]) == [(r1, "verification"), (r0, "resend"), (r0, "verification")]
    assert len(rest) == 1


@pytest.mark.timeout(120)
async def test_narrowed_by_address_or_run_and_refusing_what_is_not_a_parameter(client: TestClient) -> None:
    runs = await people(client, 4)
    theirs = await outbox_of(client, runs[3]["workflowId"])
    assert len(theirs) == 2
    for query in ("to=person3@example.com", "to=person3@EXAMPLE.com", f"workflowId={runs[3]['workflowId']}",
                  f"to=person3@example.com&workflowId={runs[3]['workflowId']}"):  # fmt: skip
        body = await get_json(client, f"/api/outbox?{query}")
        assert body == {"emails": theirs, "nextCursor": None}, query
    # One email a page within the one run: its two emails, then nothing more.
    pages = await every_page(client, 1, to="person3@example.com")
    assert [e["messageId"] for page in pages for e in page] == [e["messageId"] for e in theirs]
    for query in ("to=nobody@example.com", f"to=person2@example.com&workflowId={runs[3]['workflowId']}", "workflowId=wf_nobody"):
        assert (await get_json(client, f"/api/outbox?{query}"))["emails"] == [], query

    for params, code in [
        ({"to": "not an address"}, "invalid_to"),
        ({"to": "ann@exa\u0430mple.com"}, "invalid_to"),
        ({"workflowId": "../etc"}, "invalid_workflowId"),
        ({"limit": "201"}, "invalid_limit"),
        ({"limit": "-1"}, "invalid_limit"),
        ({"cursor": "nonsense"}, "invalid_cursor"),
        ({"cursor": "2024-01-01T00:00:00.000000Z|<wf_x.verification.1@userflow>"}, "invalid_cursor"),  # no run in it
        ({"cursor": "wf_x|2024-01-01T00:00:00Z|<a b@userflow>"}, "invalid_cursor"),
        ({"cursor": "wf_x/..|2024-01-01T00:00:00Z|<wf_x.verification.1@userflow>"}, "invalid_cursor"),
    ]:
        error = await expect_error(await client.get("/api/outbox", params=params), 400, code)
        assert next(iter(params)) in error["error"]["message"], error


@pytest.mark.timeout(120)
async def test_an_erased_persons_emails_never_appear(client: TestClient) -> None:
    runs = await people(client, 4)  # run 3 holds two emails: a page of one stops within them
    first = await get_json(client, "/api/outbox?limit=1")
    assert first["emails"][0]["workflowId"] == runs[3]["workflowId"]
    erased = await client.delete(f"/api/users/{runs[3]['userId']}")
    assert erased.status == 200, await erased.text()
    erased = await client.delete(f"/api/users/{runs[1]['userId']}")
    assert erased.status == 200, await erased.text()

    kept = {runs[i]["workflowId"] for i in (0, 2)}
    for limit in (1, 2, 200):
        listed = [e for page in await every_page(client, limit) for e in page]
        assert {e["workflowId"] for e in listed} == kept, limit
        assert not any(e["to"] in ("person1@example.com", "person3@example.com") for e in listed)
    # The cursor that stopped within the erased run goes on without the rest of its emails.
    rest = [e for page in await every_page(client, 200, cursor=first["nextCursor"]) for e in page]
    assert {e["workflowId"] for e in rest} == kept
    for run in (runs[1], runs[3]):
        for query in (f"workflowId={run['workflowId']}", f"to=person{runs.index(run)}@example.com"):
            assert (await get_json(client, f"/api/outbox?{query}"))["emails"] == [], query
