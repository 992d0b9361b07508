"""Waiting runs at scale: memory per waiting run, and time from start to /readyz.

    python -m tests.perf.waiting --runs 100000          # RSS with that many waiting
    python -m tests.perf.waiting --runs 10000 --repeat 3 # start-to-ready, median of 3

It signs up one real user on a real server, takes that run's file (a signup
waiting for its click) as a template, writes N copies with their own ids,
user, address and token hash, then starts the server on them and reports
the time until ``/readyz`` answers 200 and the server's RSS once ready: for
a start with no saved index (every run file is read), one after a clean
stop (the index saved at the stop serves every unchanged run) and one after
a SIGKILL that followed it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request

from tests.perf.loadgen import rss_mib, start_server
from userflow.storage.runs import run_file


def serve(data_dir: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, float]:
    started = time.perf_counter()
    proc, url = start_server(data_dir, ["--log-level", "WARNING"], env)
    while True:  # /readyz is the contract; the listening line comes at the same moment
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return proc, url, time.perf_counter() - started
        except OSError:
            time.sleep(0.01)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=120)


def template(data_dir: str) -> dict:
    proc, url, _ = serve(data_dir)
    try:
        body = json.dumps({"email": "template@example.com", "name": "Tem Plate"}).encode()
        request = urllib.request.Request(url + "/api/signup", data=body, headers={"Content-Type": "application/json"})
        run_id = json.load(urllib.request.urlopen(request))["workflowId"]
        while json.load(urllib.request.urlopen(f"{url}/api/workflows/{run_id}"))["status"] != "WAITING":
            time.sleep(0.02)
    finally:
        stop(proc)
    with open(run_file(data_dir, run_id), "rb") as handle:
        return json.load(handle)


def populate(data_dir: str, document: dict, runs: int) -> None:
    text = json.dumps(document)
    run_id = document["run"]["1"]["id"]
    user_id = document["run"]["1"]["input"]["userId"]
    digest = document["run"]["1"]["state"]["tokenHash"]
    for n in range(runs):
        new_id = f"wf_{n:012x}{os.urandom(5).hex()}"
        copy = (
            text.replace(run_id, new_id)
            .replace(user_id, f"usr_{n:012x}{os.urandom(5).hex()}")
            .replace("template@example.com", f"user{n}@example.com")
            .replace(digest, hashlib.sha256(new_id.encode()).hexdigest())
        )
        with open(run_file(data_dir, new_id), "w") as handle:
            handle.write(copy)
    os.remove(run_file(data_dir, run_id))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="userflow-waiting-")
    populate(data_dir, template(data_dir), args.runs)
    empty = tempfile.mkdtemp(prefix="userflow-empty-")
    proc, _, _ = serve(empty)
    base_rss = rss_mib(proc.pid)
    stop(proc)
    # Each round: a start that reads every run file (no saved index), a clean
    # stop (which saves the index), a start from it, a SIGKILL, and a start
    # after that crash (the saved index still serves every unchanged run).
    kinds = ("readingEveryFile", "afterCleanStop", "afterCrash")
    starts: dict[str, list[float]] = {kind: [] for kind in kinds}
    rss: dict[str, list[float]] = {kind: [] for kind in kinds}
    counts: dict[str, float] = {}
    for _ in range(args.repeat):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(data_dir, "index.snapshot"))
        for kind in kinds:
            proc, url, seconds = serve(data_dir)
            starts[kind].append(round(seconds, 2))
            rss[kind].append(rss_mib(proc.pid) or 0.0)
            counts = {line.split("}")[0].split('"')[1]: float(line.split()[-1]) for line in
                      urllib.request.urlopen(url + "/metrics").read().decode().splitlines() if line.startswith("userflow_runs{")}  # fmt: skip
            if kind == "afterCleanStop":
                proc.kill()
                proc.wait(timeout=60)
            else:
                stop(proc)
    print(json.dumps({
        "waitingRuns": args.runs,
        "runsByStatus": counts,
        "startToReadySeconds": starts,
        "startToReadyMedianSeconds": {kind: statistics.median(values) for kind, values in starts.items()},
        "rssMiB": {kind: statistics.median(values) for kind, values in rss.items()},
        "emptyServerRssMiB": base_rss,
        "kibPerWaitingRun": {
            kind: round((statistics.median(values) - base_rss) * 1024 / args.runs, 2) if base_rss else None
            for kind, values in rss.items()
        },
    }))


if __name__ == "__main__":
    main()
