"""The pack (``storage/packs.py``, ``storage/packer.py``): finished runs leave their files
for compressed rows of ``DATA/packs.sqlite``, read back the same, in exactly one place
(newest wins), damaged rows quarantined, erased data gone from every file."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import orjson
import pytest

from tests.helpers import python, wait_until
from userflow.storage import CorruptFileError, FileRunStore
from userflow.storage.journal import encode
from userflow.storage.packs import Pack
from userflow.storage.port import Entry

AFTER_PACK = "crash:storage:after-pack"


def snapshot(run_id: str, version: int, status: str = "COMPLETED", **extra) -> dict:
    return {"id": run_id, "workflow": "demo", "status": status, "version": version, **extra}


def entry(seq: int, message: str) -> dict:
    return {"seq": seq, "at": "2024-01-01T00:00:00.000Z", "type": "info", "step": None, "attempt": None, "message": message}


def describe(run) -> Entry:
    return Entry(run["id"], {"id": run["id"], "status": run["status"], "version": run["version"]}, {"status": run["status"]})


def files(data_dir: Path) -> set[str]:
    return {path.stem for path in (data_dir / "runs").rglob("*.json")}


def packed(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / "packs.sqlite") as connection:
        return dict(connection.execute("SELECT id, version FROM packed").fetchall())


def finished_store(data_dir: Path, count: int = 5, **snapshot_extra) -> FileRunStore:
    """A store with ``count`` finished runs of two commits each, their files written."""
    store = FileRunStore(str(data_dir), checkpoint_every=3600)
    for n in range(count):
        handle = store.open(f"run_{n}")
        handle.commit(snapshot(f"run_{n}", 1, "RUNNING"), [entry(1, "started")])
        handle.commit(snapshot(f"run_{n}", 2, ["COMPLETED", "FAILED", "CANCELLED"][n % 3], **snapshot_extra), [entry(2, "done")])
    store.checkpoint()
    return store


def everything(store: FileRunStore, run_ids) -> dict:
    return {run_id: store.read(run_id) for run_id in run_ids}


def test_finished_runs_move_into_the_pack_and_read_back_the_same(tmp_path) -> None:
    store = finished_store(tmp_path)
    store.open("active").commit(snapshot("active", 1, "WAITING"), [entry(1, "waiting")])
    store.checkpoint()
    ids = [f"run_{n}" for n in range(5)] + ["active"]
    before = everything(store, ids)
    loaded_before = store.open("run_1").load()

    assert store.pack() == 6
    assert files(tmp_path) == {"active"}  # the active run stays a file
    assert packed(tmp_path) == {f"run_{n}": 2 for n in range(5)}
    for reopen in (False, True):
        if reopen:
            store.close()
            store = FileRunStore(str(tmp_path))
        assert everything(store, ids) == before
        assert store.open("run_1").load() == loaded_before
        scanned = [run["id"] for run in store.scan()]
        assert sorted(scanned) == sorted(ids)  # each once
        assert sorted(run["id"] for run in store.scan(skip={"run_0", "active"})) == sorted(ids[1:5])
    assert before["run_1"].timeline == [entry(1, "started"), entry(2, "done")]
    for name in ("packs.sqlite", "packs.sqlite-wal"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600


def test_a_packed_run_committed_again_ends_in_one_place_the_newest(tmp_path) -> None:
    store = finished_store(tmp_path, 3)
    store.pack()
    # Retention rewrites a finished run; a retry makes a failed one active again.
    store.open("run_0").commit(snapshot("run_0", 3, timelineFrom=3), [entry(3, "details-dropped")])
    store.open("run_1").commit(snapshot("run_1", 3, "RUNNING"), [entry(3, "retried")])
    store.checkpoint()
    assert files(tmp_path) == {"run_0", "run_1"} and set(packed(tmp_path)) == {"run_0", "run_1", "run_2"}
    newest = everything(store, ["run_0", "run_1", "run_2"])
    assert newest["run_0"].run["version"] == 3 and newest["run_0"].timeline == [entry(3, "details-dropped")]
    assert newest["run_1"].run["status"] == "RUNNING"
    assert sorted(run["version"] for run in store.scan()) == [2, 3, 3]  # the newer copy, once

    store.pack()
    assert files(tmp_path) == {"run_1"}  # active again: a file, its older row gone
    assert packed(tmp_path) == {"run_0": 3, "run_2": 2}
    assert everything(FileRunStore(str(tmp_path)), ["run_0", "run_1", "run_2"]) == newest


def test_a_kill_between_the_rows_and_the_deletions_leaves_both_and_the_next_pass_settles(tmp_path) -> None:
    store = finished_store(tmp_path)
    before = everything(store, [f"run_{n}" for n in range(5)])
    store.close()
    code = f"from userflow.storage import FileRunStore\nFileRunStore({str(tmp_path)!r}, checkpoint_every=3600).pack()"
    result = python(code, cwd=str(tmp_path), faults=AFTER_PACK)
    assert result.returncode == 137, result.stderr
    assert files(tmp_path) == set(before) and set(packed(tmp_path)) == set(before)  # in both places
    reopened = FileRunStore(str(tmp_path))
    assert everything(reopened, before) == before
    assert sorted(run["id"] for run in reopened.scan()) == sorted(before)
    reopened.pack()
    assert files(tmp_path) == set() and set(packed(tmp_path)) == set(before)
    assert everything(reopened, before) == before


def test_an_older_commit_replayed_from_the_journal_never_hides_a_newer_packed_run(tmp_path) -> None:
    store = finished_store(tmp_path, 1)
    store.pack()
    store.close()
    older = orjson.dumps({"run": {"1": snapshot("run_0", 1, "RUNNING")}, "timeline": {"1": entry(1, "started")}})
    (tmp_path / "journal" / "00000001.log").write_bytes(encode("run_0", 1, older))
    reopened = FileRunStore(str(tmp_path))
    assert reopened.read("run_0").run["version"] == 2
    assert files(tmp_path) == set()


def damage(data_dir: Path, run_id: str) -> None:
    with sqlite3.connect(data_dir / "packs.sqlite") as connection:
        (blob,) = connection.execute("SELECT document FROM packed WHERE id = ?", (run_id,)).fetchone()
        broken = blob[:20] + bytes(b ^ 0xFF for b in blob[20:40]) + blob[40:]
        connection.execute("UPDATE packed SET document = ? WHERE id = ?", (broken, run_id))


def test_a_damaged_row_is_an_error_to_read_and_quarantined_by_a_scan(tmp_path) -> None:
    store = finished_store(tmp_path, 3)
    store.pack()
    damage(tmp_path, "run_1")
    reopened = FileRunStore(str(tmp_path))
    with pytest.raises(CorruptFileError):
        reopened.read("run_1")
    assert reopened.read("run_0").run["version"] == 2
    assert sorted(run["id"] for run in reopened.scan()) == ["run_0", "run_2"]
    [quarantined] = os.listdir(tmp_path / "quarantine")
    assert quarantined.startswith("run_1.packed.")
    assert set(packed(tmp_path)) == {"run_0", "run_2"}
    assert reopened.read("run_1") is None


def test_a_damaged_row_beside_its_file_is_read_from_the_file_and_packed_again(tmp_path) -> None:
    store = finished_store(tmp_path, 2)
    before = everything(store, ["run_0", "run_1"])
    store.close()
    python(f"from userflow.storage import FileRunStore\nFileRunStore({str(tmp_path)!r}).pack()", cwd=str(tmp_path), faults=AFTER_PACK)
    damage(tmp_path, "run_0")  # both places, the row damaged
    reopened = FileRunStore(str(tmp_path))
    assert everything(reopened, ["run_0", "run_1"]) == before
    reopened.pack()
    assert files(tmp_path) == set() and set(packed(tmp_path)) == {"run_0", "run_1"}
    assert everything(FileRunStore(str(tmp_path)), ["run_0", "run_1"]) == before


def test_a_lost_catalog_is_made_again_from_the_pack_too(tmp_path) -> None:
    store = finished_store(tmp_path, 4)
    store.open("active").commit(snapshot("active", 1, "WAITING"), [entry(1, "waiting")])
    store.checkpoint()
    store.pack()
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    reopened = FileRunStore(str(tmp_path))
    catalog = reopened.catalog(describe)
    assert catalog.counts("status") == {"COMPLETED": 2, "FAILED": 1, "CANCELLED": 1, "WAITING": 1}
    assert catalog.get("run_3") == {"id": "run_3", "status": "COMPLETED", "version": 2}
    reopened.close()


def test_once_attached_a_backlog_of_finished_files_is_packed_in_the_background(tmp_path) -> None:
    store = finished_store(tmp_path, 1200)  # more than one pass
    before = everything(store, [f"run_{n}" for n in range(0, 1200, 97)])
    store.close()
    reopened = FileRunStore(str(tmp_path), checkpoint_every=0.05)
    reopened.catalog(describe)  # the engine attaches: the packer sweeps every folder
    wait_until(lambda: not files(tmp_path), timeout=60, message="the backlog was never packed")
    assert len(packed(tmp_path)) == 1200
    assert everything(reopened, before) == before
    reopened.close()


def test_erasing_a_packed_run_leaves_no_copy_of_the_old_row_in_any_file(tmp_path) -> None:
    store = finished_store(tmp_path, 30)
    store.open("run_7").commit(snapshot("run_7", 3, input={"email": "ann.lee@example.com", "name": "Ann Lee"}), [entry(3, "x")])
    store.checkpoint()
    store.pack()
    with sqlite3.connect(tmp_path / "packs.sqlite") as connection:
        (old_row,) = connection.execute("SELECT document FROM packed WHERE id = 'run_7'").fetchone()
    # The erasure's commit: the address and the name out, the timeline down to one entry.
    store.open("run_7").commit(snapshot("run_7", 4, input={"email": None, "name": None}, timelineFrom=4), [entry(4, "erased")])
    store.drop_old_copies()
    assert store.read("run_7").run["input"] == {"email": None, "name": None}
    assert "run_7" not in files(tmp_path)
    pack = Pack(str(tmp_path / "packs.sqlite"))
    assert b"ann.lee" not in pack.get("run_7")[1]
    pack.close()
    pieces = [old_row[at : at + 32] for at in range(16, len(old_row) - 32, 32)] + [old_row[-32:]]  # the end: its checksum
    for folder, _, names in os.walk(tmp_path):
        for name in names:
            data = (Path(folder) / name).read_bytes()
            kept = [piece for piece in pieces if piece in data]
            assert not kept, f"{folder}/{name} keeps {len(kept)} pieces of the erased row"
    store.close()
