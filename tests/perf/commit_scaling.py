"""Does a step commit cost more when many runs are stored? (It should not.)

    python -m tests.perf.commit_scaling --stored 10 10000 --commits 2000 --repeat 3

For each size it stores that many runs (committed and checkpointed), then
times commits of one more run, each through the journal, one writer at a
time (the latency of one commit, sync included); prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from userflow.storage import FileRunStore


def snapshot(run_id: str, version: int) -> dict:
    return {"id": run_id, "workflow": "demo", "status": "RUNNING", "version": version, "steps": [], "pad": "x" * 2000}


def measure(stored: int, commits: int) -> float:
    store = FileRunStore(tempfile.mkdtemp(prefix="userflow-commits-"), checkpoint_every=3600)
    for n in range(stored):
        store.open(f"run_{n}").commit(snapshot(f"run_{n}", 1), [{"seq": 1, "message": "stored"}])
    store.checkpoint()
    handle = store.open("probe")
    started = time.perf_counter()
    for version in range(1, commits + 1):
        handle.commit(snapshot("probe", version), [{"seq": version, "message": "step"}])
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed / commits * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stored", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    medians = {n: statistics.median(measure(n, args.commits) for _ in range(args.repeat)) for n in args.stored}
    low, high = min(args.stored), max(args.stored)
    print(json.dumps({
        "microsecondsPerCommit": {str(n): round(us, 1) for n, us in medians.items()},
        "ratio": round(medians[high] / medians[low], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
