import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from tinydb import TinyDB

from tests.helpers import python
from userflow.storage import CorruptFileError, DataDir, DataDirBusy, FileRunStore, StorageError, valid_run_id
from userflow.storage.atomic import AtomicJSONStorage, read_json, write_atomic
from userflow.storage.runs import run_file, shard

CRASH_BEFORE_RENAME = "crash:storage:before-rename"


def mode(path: os.PathLike | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def snapshot(run_id: str, version: int = 1, **extra) -> dict:
    return {"id": run_id, "workflow": "demo", "status": "RUNNING", "version": version, **extra}


def entry(seq: int, message: str) -> dict:
    return {"seq": seq, "at": "2024-01-01T00:00:00.000Z", "type": "info", "step": None, "attempt": None, "message": message}


# -- write_atomic ---------------------------------------------------------------------


def test_write_atomic_replaces_content_and_leaves_no_temp(tmp_path) -> None:
    path = tmp_path / "data.json"
    write_atomic(str(path), b'{"v": 1}')
    write_atomic(str(path), b'{"v": 2}')
    assert path.read_bytes() == b'{"v": 2}'
    assert os.listdir(tmp_path) == ["data.json"]
    assert mode(path) == 0o600


def test_write_atomic_crash_before_rename_keeps_old_content(tmp_path) -> None:
    path = tmp_path / "data.json"
    write_atomic(str(path), b"old content")
    code = f"from userflow.storage.atomic import write_atomic\nwrite_atomic({str(path)!r}, b'new content')\nprint('survived')"
    result = python(code, cwd=str(tmp_path), faults=CRASH_BEFORE_RENAME)
    assert result.returncode == 137, result.stderr
    assert "survived" not in result.stdout
    assert "crash:storage:before-rename" in result.stderr
    assert path.read_bytes() == b"old content"
    # the new content reached only the temporary file, which never replaced the old one
    assert (tmp_path / "data.json.tmp").read_bytes() == b"new content"


def test_write_atomic_without_faults_in_a_child_process_succeeds(tmp_path) -> None:
    path = tmp_path / "data.json"
    write_atomic(str(path), b"old content")
    code = f"from userflow.storage.atomic import write_atomic\nwrite_atomic({str(path)!r}, b'new content')"
    result = python(code, cwd=str(tmp_path), faults="crash:storage:some-other-point")
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == b"new content"


def test_write_atomic_failure_raises_storage_error_and_cleans_up(tmp_path) -> None:
    missing = tmp_path / "no-such-dir" / "data.json"
    with pytest.raises(StorageError) as info:
        write_atomic(str(missing), b"x")
    assert isinstance(info.value, OSError)
    assert "data.json" in str(info.value)
    # a target that is a directory: the temp file is written, the rename fails, the temp is removed
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(StorageError):
        write_atomic(str(target), b"x")
    assert not (tmp_path / "occupied.tmp").exists()


def test_read_json(tmp_path) -> None:
    assert read_json(str(tmp_path / "missing.json")) is None
    (tmp_path / "ok.json").write_bytes(b'{"a": [1, 2]}')
    assert read_json(str(tmp_path / "ok.json")) == {"a": [1, 2]}
    (tmp_path / "torn.json").write_bytes(b'{"a": [1, ')
    with pytest.raises(CorruptFileError):
        read_json(str(tmp_path / "torn.json"))


# -- RunFile / FileRunStore -----------------------------------------------------------


def test_run_file_commit_and_load_round_trip(tmp_path) -> None:
    store = FileRunStore(str(tmp_path))
    handle = store.open("run_1")
    assert handle.load() is None
    handle.commit(snapshot("run_1", 1, state={"n": 1}), [entry(1, "first"), entry(2, "second")])
    handle.commit(snapshot("run_1", 2, state={"n": 2}), [entry(3, "third")])

    for loaded in (handle.load(), store.read("run_1"), FileRunStore(str(tmp_path)).open("run_1").load()):
        assert loaded is not None
        assert loaded.run == snapshot("run_1", 2, state={"n": 2})
        assert [e["seq"] for e in loaded.timeline] == [1, 2, 3]
        assert [e["message"] for e in loaded.timeline] == ["first", "second", "third"]
    path = Path(run_file(str(tmp_path), "run_1"))
    assert mode(path) == 0o600
    assert mode(tmp_path / "runs") == 0o700
    # one file, two tables: the snapshot and one document per timeline entry
    raw = orjson.loads(path.read_bytes())
    assert set(raw) == {"run", "timeline"}
    assert set(raw["timeline"]) == {"1", "2", "3"}


def test_timeline_is_ordered_by_sequence_number(tmp_path) -> None:
    handle = FileRunStore(str(tmp_path)).open("run_1")
    for seq in (1, 2, 3, 10, 11):
        handle.commit(snapshot("run_1", seq), [entry(seq, f"m{seq}")])
    loaded = FileRunStore(str(tmp_path)).read("run_1")
    assert [e["seq"] for e in loaded.timeline] == [1, 2, 3, 10, 11]


def test_a_crash_during_a_checkpoint_loses_nothing_the_journal_holds(tmp_path) -> None:
    store = FileRunStore(str(tmp_path))
    store.open("run_1").commit(snapshot("run_1", 1), [entry(1, "first")])
    store.checkpoint()
    code = (
        "from userflow.storage import FileRunStore\n"
        f"s = FileRunStore({str(tmp_path)!r})\n"
        "h = s.open('run_1')\n"
        "h.load()\n"
        "h.commit({'id': 'run_1', 'workflow': 'demo', 'status': 'RUNNING', 'version': 2}, "
        "[{'seq': 2, 'message': 'second'}])\n"
        "print('acknowledged', flush=True)\n"
        "s.checkpoint()\n"  # dies between the temp file and the rename
    )
    result = python(code, cwd=str(tmp_path), faults=CRASH_BEFORE_RENAME)
    assert result.returncode == 137, result.stderr
    assert "acknowledged" in result.stdout
    path = Path(run_file(str(tmp_path), "run_1"))
    assert path.with_name("run_1.json.tmp").exists()
    # The file still holds the first commit, intact; the journal the second.
    assert orjson.loads(path.read_bytes())["run"]["1"]["version"] == 1
    reopened = FileRunStore(str(tmp_path))  # replays the journal into the file
    loaded = reopened.read("run_1")
    assert loaded.run["version"] == 2
    assert [e["message"] for e in loaded.timeline] == ["first", "second"]
    assert [run["id"] for run in reopened.scan()] == ["run_1"]
    assert not path.with_name("run_1.json.tmp").exists()
    assert orjson.loads(path.read_bytes())["run"]["1"]["version"] == 2


def test_an_acknowledged_commit_survives_sigkill_before_any_checkpoint(tmp_path) -> None:
    code = (
        "import os\n"
        "from userflow.storage import FileRunStore\n"
        f"s = FileRunStore({str(tmp_path)!r}, checkpoint_every=3600)\n"
        "for n in range(1, 51):\n"
        "    s.open(f'run_{n}').commit({'id': f'run_{n}', 'workflow': 'demo', 'status': 'RUNNING', 'version': 1}, "
        "[{'seq': 1, 'message': 'hello'}])\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = python(code, cwd=str(tmp_path))
    assert result.returncode == -9
    assert not list((tmp_path / "runs").rglob("*.json"))  # nothing reached a run file...
    store = FileRunStore(str(tmp_path))  # ...the journal had it all
    assert sorted(run["id"] for run in store.scan()) == sorted(f"run_{n}" for n in range(1, 51))
    assert len(list((tmp_path / "journal").iterdir())) == 1  # replayed segments are gone


def test_a_torn_journal_tail_is_ignored_and_the_rest_replayed(tmp_path) -> None:
    store = FileRunStore(str(tmp_path), checkpoint_every=3600)
    for n in (1, 2):
        store.open(f"run_{n}").commit(snapshot(f"run_{n}", 1), [entry(1, "x")])
    [segment] = list((tmp_path / "journal").iterdir())
    with open(segment, "ab") as handle:
        handle.write(b"UF\x00\x00\x10\x00garbage")  # a record cut short by a crash
    reopened = FileRunStore(str(tmp_path))
    assert sorted(run["id"] for run in reopened.scan()) == ["run_1", "run_2"]


def test_a_failed_journal_write_raises_and_later_commits_still_replay(tmp_path) -> None:
    from userflow.storage import StorageError, faults

    store = FileRunStore(str(tmp_path), checkpoint_every=3600)
    store.open("run_1").commit(snapshot("run_1", 1), [entry(1, "x")])
    faults.arm("ioerror:storage")
    try:
        with pytest.raises(StorageError):
            store.open("run_2").commit(snapshot("run_2", 1), [entry(1, "x")])
    finally:
        faults.arm("")
    store.open("run_3").commit(snapshot("run_3", 1), [entry(1, "x")])
    reopened = FileRunStore(str(tmp_path))
    assert sorted(run["id"] for run in reopened.scan()) == ["run_1", "run_3"]


def test_failed_commit_leaves_disk_and_next_load_untouched(tmp_path) -> None:
    store = FileRunStore(str(tmp_path))
    handle = store.open("run_1")
    handle.commit(snapshot("run_1", 1), [entry(1, "first")])
    bad = snapshot("run_1", 2, payload=object())  # orjson cannot serialise it
    with pytest.raises(TypeError):
        handle.commit(bad, [entry(2, "second")])
    assert store.read("run_1").run["version"] == 1
    # the handle dropped its cache: it sees what is really on disk
    reloaded = handle.load()
    assert reloaded.run["version"] == 1
    assert [e["seq"] for e in reloaded.timeline] == [1]


def test_unbatched_write_failure_does_not_leave_the_cache_ahead_of_the_disk(tmp_path) -> None:
    db = TinyDB(str(tmp_path / "db.json"), storage=AtomicJSONStorage)
    table = db.table("t", cache_size=0)
    table.insert({"n": 1})
    with pytest.raises(TypeError):
        table.insert({"n": object()})
    assert table.all() == [{"n": 1}]
    assert orjson.loads((tmp_path / "db.json").read_bytes()) == {"t": {"1": {"n": 1}}}


def test_scan_quarantines_unreadable_files_and_yields_good_ones(tmp_path, caplog) -> None:
    store = FileRunStore(str(tmp_path))
    runs = tmp_path / "runs"
    for run_id in ("good_a", "good_b"):
        store.open(run_id).commit(snapshot(run_id), [entry(1, "x")])
    store.checkpoint()  # the commits reach their files
    full = Path(run_file(str(tmp_path), "good_a")).read_bytes()

    def put(name: str, content: bytes) -> None:
        Path(run_file(str(tmp_path), name.split(".")[0])).with_name(name).write_bytes(content)

    put("torn.json", full[: len(full) // 2])  # a torn write
    put("garbage.json", b"\x00\xff\xfe not json at all")
    put("empty.json", b"")
    put("list.json", b"[1, 2, 3]")
    put("nosnap.json", b'{"timeline": {}}')
    put("wrongname.json", orjson.dumps({"run": {"1": snapshot("someone_else")}}))
    (runs / shard("good_a") / "misplaced.json").write_bytes(orjson.dumps({"run": {"1": snapshot("misplaced")}}))
    put("leftover.json.tmp", b"half a write")
    put("README.txt", b"not a run")
    bad = {"torn.json", "garbage.json", "empty.json", "list.json", "nosnap.json", "wrongname.json"}
    if shard("misplaced") != shard("good_a"):  # a run in another's folder is not where a read would look
        bad.add("misplaced.json")

    with caplog.at_level(logging.ERROR, logger="userflow.storage.runs"):
        found = sorted(run["id"] for run in store.scan())

    assert found == ["good_a", "good_b"]
    assert sorted(p.name for p in runs.rglob("*") if p.is_file()) == ["README.txt", "good_a.json", "good_b.json"]
    quarantined = os.listdir(tmp_path / "quarantine")
    assert {name.rsplit(".", 1)[0] for name in quarantined} == bad
    assert (tmp_path / "quarantine" / next(q for q in quarantined if q.startswith("torn.json"))).read_bytes() == full[
        : len(full) // 2
    ]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for name in bad:
        assert any(name in m and "quarantine" in m for m in messages), name
    # a second scan is clean and finds the same runs
    assert sorted(run["id"] for run in store.scan()) == ["good_a", "good_b"]


def test_run_files_are_spread_over_256_folders_and_flat_ones_are_moved_there(tmp_path) -> None:
    store = FileRunStore(str(tmp_path))
    for n in range(200):
        store.open(f"run_{n}").commit(snapshot(f"run_{n}"), [entry(1, "x")])
    store.close()
    runs = tmp_path / "runs"
    folders = sorted(p.name for p in runs.iterdir())
    assert folders == [format(n, "02x") for n in range(256)]
    used = {p.parent.name for p in runs.rglob("*.json")}
    assert len(used) > 100  # 200 runs over 256 folders: spread, not piled in a few
    # The flat layout of earlier releases: its files are moved where reads look.
    for n in range(0, 200, 2):
        Path(run_file(str(tmp_path), f"run_{n}")).rename(runs / f"run_{n}.json")
    (runs / "run_0.json.tmp").write_bytes(b"half a write")
    reopened = FileRunStore(str(tmp_path))
    assert sorted(run["id"] for run in reopened.scan()) == sorted(f"run_{n}" for n in range(200))
    assert [p.name for p in runs.iterdir() if p.is_file()] == []
    assert reopened.read("run_4").run == snapshot("run_4")


@pytest.mark.parametrize(
    "run_id",
    ["../x", "..", "a/b", "/etc/passwd", "x\\y", "", "a" * 65, "run 1", "run.1", "run_1\n", "\nrun_1", "ru\x00n"],
)
def test_invalid_run_ids_are_rejected(tmp_path, run_id: str) -> None:
    store = FileRunStore(str(tmp_path))
    assert not valid_run_id(run_id)
    with pytest.raises(ValueError):
        store.open(run_id)
    assert store.read(run_id) is None
    assert [p for p in (tmp_path / "runs").rglob("*") if p.is_file()] == []


def test_path_traversal_cannot_reach_outside_files(tmp_path) -> None:
    store = FileRunStore(str(tmp_path / "data"))
    outside = snapshot("x")
    (tmp_path / "data" / "x.json").write_bytes(orjson.dumps({"run": {"1": outside}}))
    assert store.read("../x") is None
    with pytest.raises(ValueError):
        store.open("../x").commit(snapshot("x"), [])


@pytest.mark.parametrize("run_id", ["a", "wf_01a21c10eb952fd82a8722", "A-b_9", "a" * 64])
def test_valid_run_ids(run_id: str) -> None:
    assert valid_run_id(run_id)


# -- DataDir --------------------------------------------------------------------------

HOLD = """
import sys
from userflow.storage import DataDir
DataDir(sys.argv[1]).open()
print("locked", flush=True)
sys.stdin.read()  # hold the lock until killed
"""

CONTEND = """
import os, sys
from userflow.storage import DataDir, DataDirBusy
try:
    DataDir(sys.argv[1]).open()
except DataDirBusy as exc:
    print("BUSY", exc)
    sys.exit(3)
print("OPENED", os.getpid())
"""


def contend(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CONTEND, str(path)], capture_output=True, text=True, timeout=30, cwd=str(path)
    )


def test_data_dir_lock_excludes_a_second_process_until_the_holder_dies(tmp_path) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "USERFLOW_FAULTS"}
    with subprocess.Popen(
        [sys.executable, "-c", HOLD, str(data)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(tmp_path),
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "locked"

            busy = contend(data)
            assert busy.returncode == 3, busy.stderr
            assert busy.stdout.startswith("BUSY")
            assert f"pid {holder.pid}" in busy.stdout

            with pytest.raises(DataDirBusy):  # and from this process too
                DataDir(str(data)).open()

            holder.send_signal(signal.SIGKILL)
            assert holder.wait(timeout=10) == -signal.SIGKILL
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()

    # the kernel released the lock with the dead process
    free = contend(data)
    assert free.returncode == 0, free.stdout + free.stderr
    assert free.stdout.startswith("OPENED")
    # and it records the new holder's pid
    assert (data / "userflow.lock").read_text().strip() == free.stdout.split()[1]


def test_data_dir_open_creates_private_dir_and_close_releases(tmp_path) -> None:
    data = tmp_path / "a" / "data"
    first = DataDir(str(data)).open()
    assert mode(data) == 0o700
    assert mode(data / "userflow.lock") == 0o600
    assert (data / "userflow.lock").read_text().strip() == str(os.getpid())
    with pytest.raises(DataDirBusy) as info:
        DataDir(str(data)).open()
    assert str(os.getpid()) in str(info.value)
    first.close()
    first.close()  # idempotent
    second = DataDir(str(data)).open()
    second.close()


def test_secret_is_32_bytes_private_and_stable_across_reopen(tmp_path) -> None:
    data = DataDir(str(tmp_path / "data")).open()
    key = data.secret()
    assert isinstance(key, bytes) and len(key) == 32
    assert data.secret() == key
    assert mode(tmp_path / "data" / "secret.key") == 0o600
    data.close()
    reopened = DataDir(str(tmp_path / "data")).open()
    assert reopened.secret() == key
    reopened.close()
    other = DataDir(str(tmp_path / "other")).open()
    assert other.secret() != key
    other.close()


def test_secret_of_wrong_length_is_replaced(tmp_path) -> None:
    data = DataDir(str(tmp_path)).open()
    (tmp_path / "secret.key").write_bytes(b"short")
    key = data.secret()
    assert len(key) == 32 and key != b"short"
    assert (tmp_path / "secret.key").read_bytes() == key
    data.close()
