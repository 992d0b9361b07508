"""The two stores under the same load: the data dir against PostgreSQL.

    python -m tests.perf.stores --runs 2000 --concurrency 64 --repeat 3

Each repetition runs the load generator's closed loop (``loadgen.py``) twice,
one store after the other, so that whatever else the machine does falls on
both alike: first on a fresh data dir, then on a fresh database of one
throwaway PostgreSQL cluster (``tests/postgres.py``). It prints each
measurement as it ends, then one JSON object with the medians per store and
the ratio of PostgreSQL to the data dir: completed runs/s, userflow's CPU ms
per completed run, and PostgreSQL's transactions and CPU ms per completed
run (``pg.py`` says how they are counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from typing import Any

from tests.perf import loadgen
from tests.perf.pg import PgProbe
from tests.postgres import Cluster

FIGURES = ("completedRunsPerSecond", "serverCpuMsPerCompletedRun", "serverRssMiB", "pgTransactionsPerCompletedRun", "pgCpuMsPerCompletedRun")


def median(results: list[dict[str, Any]], name: str) -> float | None:
    values = [r[name] for r in results if r.get(name) is not None]
    return round(statistics.median(values), 2) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for both servers")
    args = parser.parse_args()
    load_args = loadgen.parse(["--runs", str(args.runs), "--concurrency", str(args.concurrency),
                               *(f"--server-arg={flag}" for flag in args.server_arg)])  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {"dataDir": [], "postgres": []}
    cluster = Cluster().create()
    try:
        for _ in range(args.repeat):
            load_args.database_url = None
            results["dataDir"].append(asyncio.run(loadgen.main(load_args)))
            print(json.dumps(results["dataDir"][-1]), flush=True)
            database = cluster.create_database("stores")
            load_args.database_url = cluster.url(database)
            results["postgres"].append(asyncio.run(loadgen.main(load_args, PgProbe(cluster, database))))
            print(json.dumps(results["postgres"][-1]), flush=True)
            cluster.drop_database(database)
    finally:
        cluster.remove()
    medians = {store: {name: median(runs, name) for name in FIGURES} for store, runs in results.items()}
    dir_rate, pg_rate = medians["dataDir"]["completedRunsPerSecond"], medians["postgres"]["completedRunsPerSecond"]
    print(json.dumps({
        "medianOf": args.repeat,
        "runs": args.runs,
        "concurrency": args.concurrency,
        "dataDir": {k: v for k, v in medians["dataDir"].items() if v is not None},
        "postgres": medians["postgres"],
        "postgresToDataDirRunsPerSecond": round(pg_rate / dir_rate, 2) if pg_rate and dir_rate else None,
        "ratiosPerRepetition": [round(p["completedRunsPerSecond"] / d["completedRunsPerSecond"], 2)
                                for d, p in zip(results["dataDir"], results["postgres"])],
        "errors": sum(sum(r["errors"].values()) for runs in results.values() for r in runs),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
