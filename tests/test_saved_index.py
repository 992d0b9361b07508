"""The index saved at a clean stop: a start from it must equal a start that reads every file."""

from __future__ import annotations

import asyncio
from pathlib import Path
import shutil
from typing import Any

import orjson
import pytest

from tests.helpers import Runtimes, wait_for_status
from userflow.actors import saved_index
from userflow.actors.retry import RetryPolicy
from userflow.actors.runtime import Runtime
from userflow.actors.workflow import Deadline, Step, StepContext, Wait, Workflow
from userflow.storage import FileRunStore
from userflow.storage.runs import run_file


def prepare(ctx: StepContext) -> dict[str, Any]:
    ctx.state["tag"] = f"tag-{ctx.input['email']}"
    return {"prepared": True}


def flaky(ctx: StepContext) -> dict[str, Any]:
    raise RuntimeError("dependency down")


WORKFLOWS = [
    Workflow(
        "approve",
        (
            Step("prepare", "Prepare", prepare),
            Wait("approval", "Approval", "approved", deadlines=(Deadline("expiry", lambda services: 3600, outcome="expired"),)),
            Step("after", "After", lambda ctx: {"done": True}),
        ),
        keys=lambda run: {"email": [run["input"]["email"]], "tag": [run["state"].get("tag", "")]},
        summary=lambda run: {"email": run["input"]["email"], "tag": run["state"].get("tag")},
    ),
    Workflow(
        "backoff",
        (Step("call", "Call", flaky, RetryPolicy(max_attempts=5, initial_backoff=600, jitter=0)),),
        keys=lambda run: {"email": [run["input"]["email"]]},
    ),
]


@pytest.fixture
async def engine(tmp_path):
    runtimes = Runtimes(str(tmp_path / "data"))
    yield runtimes
    await runtimes.close()


async def populated(engine: Runtimes) -> tuple[Runtime, list[str]]:
    """Three runs waiting (each with an expiry timer), one completed, one backing off."""
    runtime = await engine(WORKFLOWS)
    ids = [(await runtime.start_run("approve", {"email": f"w{n}@example.com"})).run_id for n in range(4)]
    ids.append((await runtime.start_run("backoff", {"email": "b@example.com"})).run_id)
    for run_id in ids[:4]:
        await wait_for_status(runtime, run_id, "WAITING")
    await runtime.signal(ids[3], "approved", {})
    await wait_for_status(runtime, ids[3], "COMPLETED")
    for _ in range(500):  # until the backoff's retry timer is committed
        if runtime.index.timers(ids[4]):
            break
        await asyncio.sleep(0.01)
    assert runtime.index.timers(ids[4])
    return runtime, ids


def state_of(runtime: Runtime, ids: list[str]) -> dict[str, Any]:
    """Everything a start rebuilds: summaries, lookups, timers (indexed and armed), order, counts."""
    index = runtime.index
    return {
        "summaries": {run_id: index.get(run_id) for run_id in ids},
        "emails": {f"w{n}@example.com": index.lookup("email", f"w{n}@example.com") for n in range(4)},
        "tags": {f"tag-w{n}@example.com": index.lookup("tag", f"tag-w{n}@example.com") for n in range(4)},
        "backoff": index.lookup("email", "b@example.com"),
        "timers": {run_id: index.timers(run_id) for run_id in ids},
        "armed": len(runtime.timers),
        "order": [summary["id"] for summary in index.newest()],
        "counts": index.counts(),
    }


async def test_a_start_after_a_clean_stop_rebuilds_what_a_full_scan_rebuilds(engine, tmp_path) -> None:
    first, ids = await populated(engine)
    before = state_of(first, ids)
    await asyncio.to_thread(first.stop)
    saved = tmp_path / "data" / "index.snapshot"
    assert saved.exists()
    shutil.copytree(tmp_path / "data", tmp_path / "scan")
    (tmp_path / "scan" / "index.snapshot").unlink()

    restored = await engine(WORKFLOWS)
    scanned = await engine(WORKFLOWS, path=str(tmp_path / "scan"))
    assert restored.report.from_index == 5 and restored.report.runs == 5
    assert scanned.report.from_index == 0 and scanned.report.runs == 5
    assert saved.exists()  # kept: after a crash, the runs unchanged since still come from it
    assert state_of(restored, ids) == state_of(scanned, ids) == before
    assert restored.report.waiting == scanned.report.waiting == 3
    assert restored.report.timers == scanned.report.timers == 4

    # The restored runs work: a signal finds its run, a duplicate key is still known.
    await restored.signal(ids[0], "approved", {})
    assert (await wait_for_status(restored, ids[0], "COMPLETED"))["tag"] == "tag-w0@example.com"


async def test_runs_changed_added_or_removed_after_the_stop_come_from_their_files(engine, tmp_path) -> None:
    first, ids = await populated(engine)
    await asyncio.to_thread(first.stop)
    data = tmp_path / "data"

    store = FileRunStore(str(data))  # an operator's tool writing while the server is down
    changed = store.read(ids[1])
    changed.run["input"]["email"] = "changed@example.com"
    changed.run["version"] += 1
    store.open(ids[1]).commit(changed.run, [])
    added = store.read(ids[2])
    added.run["id"] = "wf_added"
    store.open("wf_added").commit(added.run, [])
    store.close()
    Path(run_file(str(data), ids[0])).unlink()

    second = await engine(WORKFLOWS)
    assert second.report.from_index == 3  # ids 2, 3, 4: untouched
    assert second.report.runs == 5
    assert second.index.get(ids[0]) is None
    assert second.index.lookup("email", "w0@example.com") is None
    assert second.index.get(ids[1])["email"] == "changed@example.com"
    assert second.index.lookup("email", "changed@example.com") == ids[1]
    assert second.index.get("wf_added")["status"] == "WAITING"
    assert second.index.timers("wf_added") == second.index.timers(ids[2])


@pytest.mark.parametrize("damage", ["other code", "truncated", "garbage", "a bad line"])
async def test_a_saved_index_from_other_code_or_damaged_is_not_used(engine, tmp_path, monkeypatch, damage) -> None:
    first, ids = await populated(engine)
    before = state_of(first, ids)
    await asyncio.to_thread(first.stop)
    saved = tmp_path / "data" / "index.snapshot"
    raw = saved.read_bytes()
    if damage == "other code":
        monkeypatch.setattr(saved_index, "code_fingerprint", lambda: "another version")
    elif damage == "truncated":
        saved.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        saved.write_bytes(b"\x00not json\n" * 10)
    else:
        lines = raw.split(b"\n")
        lines[2] = b'["wf_x", 12, '  # one run's line cut short: that run is read from its file
        saved.write_bytes(b"\n".join(lines))

    second = await engine(WORKFLOWS)
    assert second.report.runs == 5
    assert second.report.from_index == (4 if damage == "a bad line" else 0)
    assert state_of(second, ids) == before
    assert saved.exists() == (damage == "a bad line")  # unusable as a whole: dropped


def test_a_run_store_keeps_its_saved_index_with_the_stamps_given(tmp_path) -> None:
    store = FileRunStore(str(tmp_path))
    for n in range(3):
        store.open(f"run_{n}").commit({"id": f"run_{n}", "workflow": "demo", "status": "WAITING", "version": 1}, [])
    store.close()
    stamps = store.stamps()
    assert sorted(stamps) == ["run_0", "run_1", "run_2"]
    found = store.read_document("run_1")
    assert found is not None
    run, stamp = found
    assert run["id"] == "run_1" and stamp == stamps["run_1"]
    assert store.index_cache() is store
    store.save_index([orjson.dumps(["line", n]) for n in range(3)], "code-1", stamps)
    assert (tmp_path / "index.snapshot").stat().st_mode & 0o777 == 0o600

    store = FileRunStore(str(tmp_path))
    store.open("run_1").commit({"id": "run_1", "workflow": "demo", "status": "RUNNING", "version": 2}, [])
    store.close()
    edited = Path(run_file(str(tmp_path), "run_2"))
    edited.write_bytes(edited.read_bytes() + b" ")  # by hand, in place: same inode
    saved, lines = store.read_index("code-1")
    assert saved == stamps
    assert [orjson.loads(line) for line in lines] == [["line", 0], ["line", 1], ["line", 2]]
    current = store.stamps()
    assert {run_id for run_id in saved if current[run_id] == saved[run_id]} == {"run_0"}
    assert store.read_index("code-1") is not None  # kept for the start after a crash
    assert store.read_index("code-2") is None  # other code: dropped
    assert not (tmp_path / "index.snapshot").exists()


async def test_the_index_saved_while_running_serves_the_start_after_a_crash(engine, tmp_path) -> None:
    first, ids = await populated(engine)
    await first.signal(ids[0], "approved", {})
    await wait_for_status(first, ids[0], "COMPLETED")
    saved = tmp_path / "data" / "index.snapshot"
    assert not saved.exists()  # not yet: the first save waits for --index-save-every
    await asyncio.to_thread(first.parts.store.checkpoint, True)  # as the periodic save does
    before = state_of(first, ids)

    # A crash: the first runtime is simply abandoned; another starts on its files.
    second = await engine(WORKFLOWS)
    assert second.report.from_index == 5 and second.report.runs == 5
    assert state_of(second, ids) == before
    assert second.index.get(ids[0])["status"] == "COMPLETED"


async def test_runs_read_at_a_start_are_saved_from_the_index_without_reading_them_again(engine, tmp_path, monkeypatch) -> None:
    first, ids = await populated(engine)
    before = state_of(first, ids)
    await asyncio.to_thread(first.stop)
    (tmp_path / "data" / "index.snapshot").unlink()

    second = await engine(WORKFLOWS)  # reads every file
    assert second.report.from_index == 0
    reads: list[str] = []
    original = FileRunStore.read_document
    monkeypatch.setattr(FileRunStore, "read_document", lambda self, run_id: reads.append(run_id) or original(self, run_id))
    await asyncio.to_thread(second.parts.store.checkpoint, True)
    assert reads == []  # nothing was written since the start: every line came from the index

    third = await engine(WORKFLOWS)  # as after a crash of the second
    assert third.report.from_index == 5
    assert state_of(third, ids) == before
