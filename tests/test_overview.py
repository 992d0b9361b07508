"""The overview and the search of the lists, answered by the store's catalog (both stores)."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.http_helpers import expect_error, get_json, wait_listed, waiting_signup
from tests.test_api import verified_signup


async def test_the_overview_counts_every_run_by_how_it_went(client: TestClient) -> None:
    verified = [await verified_signup(client, f"v{n}@example.com") for n in range(2)]
    waiting = [(await waiting_signup(client, f"w{n}@example.com"))[0] for n in range(3)]
    resp = await client.post(f"/api/workflows/{waiting[0]['workflowId']}/cancel")
    assert resp.status == 200, await resp.text()
    await wait_listed(client, waiting[0]["workflowId"], "CANCELLED")

    overview = await get_json(client, "/api/overview")
    finished = sum(overview["users"][s] for s in ("ACTIVE", "FLAGGED"))
    assert finished == 2 and overview["users"]["PENDING"] == 2 and overview["users"]["CANCELLED"] == 1
    assert overview["runs"] == {"RUNNING": 0, "WAITING": 2, "COMPLETED": 2, "FAILED": 0, "CANCELLED": 1}
    funnel = overview["funnel"]
    assert funnel["signedUp"] == 5 and funnel["verified"] == 2 and funnel["cancelled"] == 1
    assert funnel["active"] + funnel["flagged"] == 2 and funnel["expired"] == 0
    assert overview["conversion"]["verified"] == 2 / 5
    # Verified within seconds of signing up: both in the first bucket, and so is the median.
    assert overview["timeToVerify"]["buckets"][0] == {"upTo": 60, "count": 2}
    assert overview["timeToVerify"]["medianUpTo"] == 60
    for series, length in (("lastHour", 12), ("lastDay", 24)):
        points = overview[series]
        assert len(points) == length and [p["at"] for p in points] == sorted(p["at"] for p in points)
        assert sum(p["signups"] for p in points) == 5 and sum(p["verified"] for p in points) == 2
        assert sum(p["failures"] for p in points) == 0
    assert overview["lastHour"][-1]["signups"] + overview["lastHour"][-2]["signups"] >= 1  # now is in the last bucket
    assert verified  # (kept for the names above)


async def test_q_finds_one_run_by_email_workflow_id_or_user_id(client: TestClient) -> None:
    ann = (await waiting_signup(client, "Ann.Lee@Example.com"))[0]
    bob = await verified_signup(client, "bob@example.com")
    for q in ("Ann.Lee@Example.com", "ANN.LEE@example.COM", ann["workflowId"], ann["userId"], f"  {ann['userId']} "):
        found = await get_json(client, f"/api/workflows?q={q.replace('@', '%40')}")
        assert [w["id"] for w in found["workflows"]] == [ann["workflowId"]] and found["nextCursor"] is None, q
        users = await get_json(client, f"/api/users?q={q.replace('@', '%40')}")
        assert [u["id"] for u in users["users"]] == [ann["userId"]], q
    # A finished run is found the same way, from the catalog.
    assert [u["id"] for u in (await get_json(client, "/api/users?q=bob%40example.com"))["users"]] == [bob["userId"]]
    # With a status: found only if it has it.
    assert (await get_json(client, "/api/users?q=bob%40example.com&status=PENDING"))["users"] == []
    assert len((await get_json(client, "/api/workflows?q=bob%40example.com&status=COMPLETED"))["workflows"]) == 1
    for nobody in ("carol%40example.com", "wf_000000000000aaaaaaaaaa", "usr_nobody", "not an address@", "%40%40"):
        assert (await get_json(client, f"/api/workflows?q={nobody}"))["workflows"] == [], nobody
    await expect_error(await client.get("/api/users", params={"q": "x" * 321}), 400, "invalid_q")
    await expect_error(await client.get("/api/users", params={"q": "ann@example.com", "status": "SLEEPING"}), 400, "invalid_status")


async def test_lists_and_filters_page_over_the_catalog_without_repeats(client: TestClient) -> None:
    made = [(await waiting_signup(client, f"p{n}@example.com"))[0]["workflowId"] for n in range(7)]
    seen, cursor = [], None
    while True:
        page = await get_json(client, "/api/workflows?status=WAITING&limit=3" + (f"&cursor={cursor}" if cursor else ""))
        assert len(page["workflows"]) <= 3
        seen += [w["id"] for w in page["workflows"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == sorted(made, reverse=True)
    pending = await get_json(client, "/api/users?status=PENDING&limit=200")
    assert [u["workflowId"] for u in pending["users"]] == sorted(made, reverse=True)
    assert (await get_json(client, "/api/users?status=ACTIVE"))["users"] == []
