"""The data dir's catalog (storage/catalog.py) at a million runs: how long it takes
to fill, how big it is, and how long the reads a dashboard makes take.

    python -m tests.perf.catalog_scale --runs 1000000

Runs are described as the signup workflow's are (a summary of about 600
bytes, two facets, three lookup keys) and put in batches as a checkpoint
would. Reads are timed as medians of 20: the first page of all runs, of
the users whose status is ACTIVE (a facet), a page deep into the list
(a cursor), a lookup by address, and the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from userflow.storage.catalog import Entry, SqliteCatalog

STATUSES = (("COMPLETED", "ACTIVE"), ("COMPLETED", "ACTIVE"), ("COMPLETED", "FLAGGED"), ("COMPLETED", "EXPIRED"), ("WAITING", "PENDING"))


def entry(n: int) -> Entry:
    run_id = f"wf_{n:022x}"
    status, user = STATUSES[n % len(STATUSES)]
    summary = {
        "id": run_id, "workflow": "user-signup", "status": status, "currentStep": None, "outcome": "active",
        "error": None, "createdAt": "2026-12-02T10:00:00.000Z", "updatedAt": "2026-12-02T10:00:01.000Z",
        "finishedAt": "2026-12-02T10:00:01.000Z", "definition": 1, "events": 3, "userId": f"usr_{n:022x}",
        "user": {"email": f"person{n}@example.com", "name": "Pat Example", "status": user, "createdAt": "2026-12-02T10:00:00.000Z",
                 "verifiedAt": "2026-12-02T10:00:01.000Z", "finishedAt": "2026-12-02T10:00:01.000Z",
                 "risk": {"decision": "allow", "score": 0.1, "reasons": ["ok"], "source": "heuristic"}},
    }  # fmt: skip
    return Entry(run_id, summary, {"status": status, "user": user}, {"email": [f"person{n}@example.com"], "user": [f"usr_{n:022x}"], "token": [f"{n:064x}"]})


def timed(call, times: int = 20) -> float:  # type: ignore[no-untyped-def]
    spent = []
    for _ in range(times):
        began = time.perf_counter()
        call()
        spent.append(time.perf_counter() - began)
    return round(statistics.median(spent) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "catalog.sqlite")
        catalog = SqliteCatalog(path)
        began = time.perf_counter()
        for start in range(0, args.runs, args.batch):
            catalog.put([entry(n) for n in range(start, min(start + args.batch, args.runs))])
        filled = time.perf_counter() - began
        deep = f"wf_{args.runs // 2:022x}"
        figures = {
            "runs": args.runs,
            "fillSeconds": round(filled, 1),
            "runsPerSecond": round(args.runs / filled),
            "bytesPerRun": round(sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root)) / args.runs),
            "firstPageMs": timed(lambda: catalog.page(limit=50)),
            "firstActivePageMs": timed(lambda: catalog.page(limit=50, facet=("user", "ACTIVE"))),
            "deepPageMs": timed(lambda: catalog.page(limit=50, cursor=deep, facet=("user", "ACTIVE"))),
            "lookupByEmailMs": timed(lambda: catalog.lookup("email", f"person{args.runs // 3}@example.com")),
            "countsMs": timed(lambda: catalog.counts("user")),
        }
        catalog.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
