"""Packing finished runs on a real server process killed with SIGKILL: nothing lost, every
run reads back the same, and after the next pass each run is in exactly one place.

The data dir is an earlier release's, at scale: a real server makes a completed and a
waiting signup, and thousands of copies of them are written as run files (as
``tests.perf.million`` does), so the server has a backlog to pack after its start.
"""

from __future__ import annotations

import os
import random
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import wait_until
from tests.perf.million import fill_data_dir
from tests.server import Server
from tests.test_retention import completed_run, waiting_run
from userflow.storage import FileRunStore
from userflow.storage.packer import BATCH

pytestmark = pytest.mark.timeout(300)

FINISHED_COPIES = 3000
WAITING_COPIES = 20


def on_disk(data_dir: Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every copy of every run the disk holds, read without the store: (place, document)."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for folder in sorted((data_dir / "runs").iterdir()):
        for path in folder.glob("*.json"):
            found.setdefault(path.stem, []).append(("file", orjson.loads(path.read_bytes())))
    with sqlite3.connect(data_dir / "packs.sqlite") as connection:
        for run_id, document in connection.execute("SELECT id, document FROM packed"):
            found.setdefault(run_id, []).append(("pack", orjson.loads(zlib.decompress(document))))
    return found


def newest(copies: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return max((document for _, document in copies), key=lambda document: document["run"]["1"]["version"])


def stored(document: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A document as the store reads it: the snapshot, and the timeline by sequence number."""
    return document["run"]["1"], sorted(document["timeline"].values(), key=lambda entry: entry["seq"])


def run_files(data_dir: Path) -> int:
    return sum(len(os.listdir(folder)) for folder in (data_dir / "runs").iterdir())


@pytest.fixture
def backlog(tmp_path: Path) -> tuple[Path, dict[str, Any], list[str]]:
    """A data dir of finished runs in files, what each run holds, and some finished runs' ids."""
    data_dir = tmp_path / "data"
    server = Server(str(data_dir), "--email-failure-rate", "0").start()
    try:
        done = completed_run(server, "tpl.done@example.com")["id"]
        waiting = waiting_run(server, "tpl.wait@example.com")["id"]
    finally:
        assert server.terminate() == 0
    fill_data_dir(str(data_dir), [(done, FINISHED_COPIES, "f"), (waiting, WAITING_COPIES, "w")], packed=False)
    expected = {run_id: newest(copies) for run_id, copies in on_disk(data_dir).items()}
    assert len(expected) == FINISHED_COPIES + WAITING_COPIES + 2
    finished = [run_id for run_id, document in expected.items() if document["run"]["1"]["status"] == "COMPLETED"]
    return data_dir, expected, finished


def assert_each_run_once_and_the_same(data_dir: Path, expected: dict[str, Any]) -> None:
    found = on_disk(data_dir)
    assert set(found) == set(expected), "a run was lost"
    twice = [run_id for run_id, copies in found.items() if len(copies) > 1]
    assert twice == [], f"{len(twice)} runs in two places"
    active = {run_id for run_id, copies in found.items() if copies[0][0] == "file"}
    assert active == {run_id for run_id, document in expected.items() if document["run"]["1"]["status"] == "WAITING"}
    store = FileRunStore(str(data_dir), checkpoint_every=3600)
    try:
        for run_id, document in expected.items():
            assert found[run_id][0][1] == document
            assert tuple(store.read(run_id)) == stored(document)
        assert sorted(run["id"] for run in store.scan()) == sorted(expected)
    finally:
        store.close()


def test_sigkills_while_packing_lose_nothing_and_leave_each_run_in_one_place(backlog) -> None:
    data_dir, expected, finished = backlog
    active = WAITING_COPIES + 1
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    remaining = run_files(data_dir)
    kills = 0
    while kills < 8 and remaining > active + 50:
        server = Server(str(data_dir), "--email-failure-rate", "0").start()
        threshold = max(active + 1, remaining - chance.randint(1, BATCH))  # somewhere in its next pass
        wait_until(lambda: run_files(data_dir) <= threshold, timeout=60, message=f"seed {seed}: no packing")
        assert server.kill() == -9
        kills += 1
        # Whatever the moment, every run is still on the disk, whole, its newest copy unchanged.
        found = on_disk(data_dir)
        assert set(found) == set(expected), f"seed {seed}: a run was lost"
        assert all(newest(copies) == expected[run_id] for run_id, copies in found.items()), f"seed {seed}"
        remaining = run_files(data_dir)
    assert kills >= 3, f"seed {seed}: the backlog was packed before the kills"

    last = Server(str(data_dir), "--email-failure-rate", "0").start()
    try:
        sample = chance.sample(finished, 20)
        for run_id in sample:  # read through the server, wherever each run is now
            assert last.get(f"/api/workflows/{run_id}")["status"] == "COMPLETED"
        wait_until(lambda: run_files(data_dir) == active, timeout=60, message=f"seed {seed}: packing never finished")
        assert last.get("/readyz")["runs"] == len(expected)
        user = expected[sample[0]]["run"]["1"]["input"]
        assert [u["id"] for u in last.get(f"/api/users?q={user['email']}")["users"]] == [user["userId"]]
    finally:
        assert last.terminate() == 0
    assert_each_run_once_and_the_same(data_dir, expected)


def test_a_server_killed_between_its_rows_and_the_deletions_reads_the_same_and_settles(backlog) -> None:
    data_dir, expected, finished = backlog
    dying = Server(str(data_dir), env={"USERFLOW_FAULTS": "crash:storage:after-pack"}).start()
    assert dying.wait_exit(timeout=60) == 137  # its first batch is in the pack, and still in files
    found = on_disk(data_dir)
    both = [run_id for run_id, copies in found.items() if len(copies) == 2]
    assert len(both) > 100 and all(copies[0][1] == copies[1][1] for copies in (found[b] for b in both))

    again = Server(str(data_dir), "--email-failure-rate", "0").start()
    try:
        for run_id in both[:20]:
            detail = again.get(f"/api/workflows/{run_id}")
            assert (detail["status"], detail["user"]["email"]) == ("COMPLETED", expected[run_id]["run"]["1"]["input"]["email"])
        wait_until(lambda: run_files(data_dir) == WAITING_COPIES + 1, timeout=60, message="packing never finished")
    finally:
        assert again.terminate() == 0
    assert_each_run_once_and_the_same(data_dir, expected)
