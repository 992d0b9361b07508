"""The data dir's delivery store (``storage.delivery_file``), on a real file: a data dir
of an earlier release moves its journal of deliveries in, and the file is owner-only."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import orjson

from userflow.storage.delivery_file import DeliveryFile
from userflow.storage.journal import Journal


def record(run: str, number: int, status: str, **more: object) -> dict:
    return {
        "id": f"dlv_{run}_{number}_1", "eventId": f"evt_{run}_{number}", "number": number, "workflowId": f"wf_{run}",
        "userId": f"usr_{run}", "type": "user.created", "url": "http://hook", "status": status, "attempts": [],
        "nextAt": time.time(), "createdAt": f"2026-01-01T00:00:0{number}Z", "payload": "{}", "manual": False, "resent": [],
        **more,
    }  # fmt: skip


def test_an_earlier_releases_journal_is_moved_in_and_removed(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "webhooks"))
    journal.append("deliveries", 0, orjson.dumps([{"mark": "since", "url": "http://hook", "at": 100.0}, record("a", 1, "pending")]))
    journal.append("deliveries", 0, orjson.dumps([record("a", 1, "delivered", payload=None), record("a", 2, "pending"), record("b", 1, "failed")]))
    journal.close()
    store = DeliveryFile(str(tmp_path))
    try:
        assert not (tmp_path / "webhooks").exists()
        assert store.since([], 0.0) == {"http://hook": 100.0}
        assert store.counts() == {"pending": 1, "delivered": 1, "failed": 1}
        assert store.get("dlv_a_1_1")["status"] == "delivered"  # the last state of each
        claimed, _ = store.claim(10, 30.0)
        assert [r["id"] for r in claimed] == ["dlv_a_2_1"]
        assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    finally:
        store.close()


def test_only_a_lanes_head_is_claimed_and_an_outcome_needs_its_claim(tmp_path: Path) -> None:
    store = DeliveryFile(str(tmp_path))
    try:
        made, _ = store.write([record("a", 1, "pending"), record("a", 2, "pending"), record("b", 1, "pending")], [])
        assert made == {"dlv_a_1_1", "dlv_a_2_1", "dlv_b_1_1"}
        assert store.write([record("a", 1, "pending")], [])[0] == set(), "made once"
        claimed, _ = store.claim(10, 0.0)  # claims that end at once
        assert sorted(r["id"] for r in claimed) == ["dlv_a_1_1", "dlv_b_1_1"]
        again, _ = store.claim(10, 30.0)
        assert sorted(r["id"] for r in again) == ["dlv_a_1_1", "dlv_b_1_1"], "an ended claim is claimed again"
        stale = {**claimed[0], "status": "delivered"}
        assert store.write([], [stale])[1] == set(), "the earlier claim's outcome is not kept"
        current = next(r for r in again if r["id"] == stale["id"])
        assert store.write([], [{**current, "status": "delivered"}])[1] == {current["id"]}
    finally:
        store.close()
