"""The on-disk catalog of runs (storage/catalog.py): lists, filters, counts and lookups from SQLite."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from userflow.storage.catalog import CatalogDamaged, Entry, SqliteCatalog


def entry(n: int, status: str = "WAITING", user: str = "PENDING", email: str | None = None) -> Entry:
    run_id = f"wf_{n:08d}"
    return Entry(
        run_id,
        {"id": run_id, "status": status, "user": {"status": user}},
        {"status": status, "user": user},
        {"email": [email or f"u{n}@example.com"], "user": [f"usr_{n}"]},
    )


@pytest.fixture
def catalog(tmp_path: Path):
    made = SqliteCatalog(str(tmp_path / "catalog.sqlite"))
    yield made
    made.close()


def test_a_run_is_found_by_id_and_by_each_key(catalog: SqliteCatalog) -> None:
    catalog.put([entry(1), entry(2)])
    assert catalog.get("wf_00000001") == {"id": "wf_00000001", "status": "WAITING", "user": {"status": "PENDING"}}
    assert catalog.lookup("email", "u2@example.com") == "wf_00000002"
    assert catalog.lookup("user", "usr_1") == "wf_00000001"
    assert catalog.lookup("email", "nobody@example.com") is None and catalog.get("wf_x") is None


def test_pages_go_newest_first_and_a_cursor_continues_exactly(catalog: SqliteCatalog) -> None:
    catalog.put([entry(n, status="COMPLETED" if n % 3 == 0 else "WAITING") for n in range(1, 26)])
    seen, cursor = [], None
    while True:
        items, cursor = catalog.page(limit=10, cursor=cursor)
        seen += [s["id"] for s in items]
        if cursor is None:
            break
    assert seen == [f"wf_{n:08d}" for n in range(25, 0, -1)]
    done, cursor = catalog.page(limit=4, facet=("status", "COMPLETED"))
    assert [s["id"] for s in done] == [f"wf_{n:08d}" for n in (24, 21, 18, 15)] and cursor == "wf_00000015"
    rest, cursor = catalog.page(limit=4, cursor=cursor, facet=("status", "COMPLETED"))
    assert [s["id"] for s in rest] == [f"wf_{n:08d}" for n in (12, 9, 6, 3)] and cursor is None


def test_counts_follow_each_change_of_a_facet(catalog: SqliteCatalog) -> None:
    catalog.put([entry(n) for n in range(1, 6)])
    assert catalog.counts("status") == {"WAITING": 5} and catalog.counts("user") == {"PENDING": 5}
    catalog.put([entry(1, "COMPLETED", "ACTIVE"), entry(2, "COMPLETED", "FLAGGED")])
    catalog.put([entry(1, "COMPLETED", "ACTIVE")])  # the same again changes nothing
    assert catalog.counts("status") == {"WAITING": 3, "COMPLETED": 2}
    assert catalog.counts("user") == {"PENDING": 3, "ACTIVE": 1, "FLAGGED": 1}
    assert [s["id"] for s in catalog.page(limit=10, facet=("user", "ACTIVE"))[0]] == ["wf_00000001"]
    assert catalog.page(limit=10, facet=("user", "PENDING"))[0][-1]["id"] == "wf_00000003"
    assert len(catalog) == 5


def test_a_later_run_takes_a_key_over(catalog: SqliteCatalog) -> None:
    catalog.put([entry(1, "COMPLETED", "EXPIRED", email="ann@example.com")])
    catalog.put([entry(2, email="ann@example.com")])
    assert catalog.lookup("email", "ann@example.com") == "wf_00000002"


def test_a_transaction_is_all_or_nothing_and_survives_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "catalog.sqlite")
    first = SqliteCatalog(path)
    assert not first.built() and first.stale() == []
    first.put([entry(1)], stale=["wf_00000009"])
    with pytest.raises(TypeError):
        first.put([entry(2), Entry("wf_bad", {"x": object()})], stale=["wf_00000008"])  # cannot be written: nothing is
    first.mark_built()
    first.close()
    again = SqliteCatalog(path)
    try:
        assert again.built() and again.stale() == ["wf_00000009"]
        assert again.get("wf_00000001") is not None and again.get("wf_00000002") is None
        assert again.counts("status") == {"WAITING": 1}
        again.put([entry(9)], fresh=["wf_00000009"])
        assert again.stale() == []
    finally:
        again.close()


def test_a_run_gone_leaves_every_list_count_and_key(catalog: SqliteCatalog) -> None:
    catalog.put([entry(1), entry(2, "COMPLETED", "ACTIVE")])
    catalog.put([], gone=["wf_00000002"])
    assert catalog.get("wf_00000002") is None and catalog.lookup("user", "usr_2") is None
    assert catalog.counts("status") == {"WAITING": 1} and catalog.counts("user") == {"PENDING": 1}
    assert [s["id"] for s in catalog.page(limit=10)[0]] == ["wf_00000001"]


def test_oldest_first_and_changed_since(catalog: SqliteCatalog) -> None:
    catalog.put([Entry(f"wf_{n:08d}", {"id": f"wf_{n:08d}"}, {"status": "COMPLETED"}, {}, float(n)) for n in range(1, 8)])
    first, cursor = catalog.page(limit=3, oldest_first=True, facet=("status", "COMPLETED"))
    rest, end = catalog.page(limit=10, cursor=cursor, oldest_first=True, facet=("status", "COMPLETED"))
    assert [s["id"] for s in first + rest] == [f"wf_{n:08d}" for n in range(1, 8)] and end is None
    assert [s["id"] for s in catalog.changed_since(5.0)] == ["wf_00000005", "wf_00000006", "wf_00000007"]
    assert catalog.ids(("status", "COMPLETED"))[:2] == ["wf_00000001", "wf_00000002"]


def test_a_file_that_is_no_catalog_is_refused_not_read(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(CatalogDamaged):
        SqliteCatalog(str(path))


def test_readers_on_other_threads_see_whole_commits_while_one_writes(catalog: SqliteCatalog) -> None:
    catalog.put([entry(n) for n in range(1, 101)])
    torn: list[dict[str, int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            counts = catalog.counts("status")
            if sum(counts.values()) != 100:
                torn.append(counts)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for n in range(1, 101):
        catalog.put([entry(n, "COMPLETED", "ACTIVE")])  # one run changes status per commit
    stop.set()
    for reader in readers:
        reader.join()
    assert not torn, torn[:3]
    assert catalog.counts("status") == {"COMPLETED": 100}
