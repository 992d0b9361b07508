"""Waiting runs at scale on both stores: start to ``/readyz`` and RSS.

    python -m tests.perf.waiting_stores --runs 10000 --repeat 3

The same N waiting runs are put in a data dir and in a database of a
throwaway PostgreSQL cluster (``tests/postgres.py``): a real server signs up
one user and the run file it leaves (a signup waiting for its click) is
copied N times with their own ids, user, address and token hash
(``waiting.py``); then each copy, its timeline and its lookup keys are
committed to the database through ``PgRunStore``, from several threads as
a server's actors commit (so the commits are grouped).

Each repetition starts the server on each store in turn and stops it with
SIGTERM: the data dir with no saved index (every run file read), the data
dir after that clean stop (the saved index serves every run), and the
database. It reports the median time until ``/readyz`` answers 200, the
server's RSS once ready, an empty server's RSS on each store, and from
those the KiB per waiting run.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.perf.loadgen import rss_mib
from tests.perf import waiting
from tests.perf.waiting import populate, template
from tests.postgres import Cluster
from userflow.actors.definitions import Definitions
from userflow.actors.signup import SIGNUP
from userflow.storage.postgres.connect import open_pool
from userflow.storage.postgres.runs import PgRunStore
from userflow.storage.postgres.schema import migrate


def serve(data_dir: str, database_url: str | None) -> tuple[subprocess.Popen[str], str, float]:
    return waiting.serve(data_dir, {"USERFLOW_DATABASE_URL": database_url} if database_url else None)


stop = waiting.stop


def waiting_count(url: str) -> float:
    for line in urllib.request.urlopen(url + "/metrics").read().decode().splitlines():
        if line.startswith('userflow_runs{status="WAITING"}'):
            return float(line.split()[-1])
    return 0.0


def copy_to_database(data_dir: str, database_url: str) -> float:
    """Commit every run file of the data dir to the database; the seconds it took."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        migrate(connection)
    pool = open_pool(database_url, min_size=2, max_size=4)
    store = PgRunStore(pool, Definitions([SIGNUP]).keys)
    runs_dir = os.path.join(data_dir, "runs")

    def commit(path: str) -> None:
        with open(path, "rb") as handle:
            document = json.load(handle)
        entries = [document["timeline"][seq] for seq in sorted(document.get("timeline", {}), key=int)]
        store.commit(document["run"]["1"], entries)

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(32) as threads:
            list(threads.map(commit, glob.glob(os.path.join(runs_dir, "*", "*.json"))))
    finally:
        store.close()
        pool.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="userflow-waiting-")
    populate(data_dir, template(data_dir), args.runs)
    cluster = Cluster().create()
    try:
        full_db, empty_db = cluster.url(cluster.create_database("waiting")), cluster.url(cluster.create_database("empty"))
        copy_seconds = copy_to_database(data_dir, full_db)
        empty_rss: dict[str, float | None] = {}
        for kind, url in (("dataDir", None), ("postgres", empty_db)):
            proc, _, _ = serve(tempfile.mkdtemp(prefix="userflow-empty-"), url)
            empty_rss[kind] = rss_mib(proc.pid)
            stop(proc)
        kinds = {"dataDirReadingEveryFile": None, "dataDirAfterCleanStop": None, "postgres": full_db}
        starts: dict[str, list[float]] = {kind: [] for kind in kinds}
        rss: dict[str, list[float]] = {kind: [] for kind in kinds}
        waiting: dict[str, float] = {}
        for _ in range(args.repeat):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(data_dir, "index.snapshot"))
            for kind, url in kinds.items():
                proc, server, seconds = serve(data_dir, url)
                starts[kind].append(round(seconds, 2))
                rss[kind].append(rss_mib(proc.pid) or 0.0)
                waiting[kind] = waiting_count(server)
                stop(proc)
    finally:
        cluster.remove()

    def per_run(kind: str) -> float | None:
        base = empty_rss["postgres" if kind == "postgres" else "dataDir"]
        return round((statistics.median(rss[kind]) - base) * 1024 / args.runs, 2) if base else None

    print(json.dumps({
        "waitingRuns": args.runs,
        "waitingSeenByServer": waiting,
        "secondsToCommitThemToTheDatabase": round(copy_seconds, 1),
        "startToReadySeconds": starts,
        "startToReadyMedianSeconds": {kind: statistics.median(values) for kind, values in starts.items()},
        "rssMiB": {kind: statistics.median(values) for kind, values in rss.items()},
        "emptyServerRssMiB": empty_rss,
        "kibPerWaitingRun": {kind: per_run(kind) for kind in kinds},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
