"""A server's size and start with many webhook deliveries already made, and its first page of them.

    python -m tests.perf.webhook_stored --deliveries 100000

For 0 and then ``--deliveries`` delivered deliveries kept in a data dir's
store, starts a server with one webhook URL, and measures the time until it
is ready (``/readyz``), its resident memory (RSS) once ready, and the time of
the first page of ``GET /api/webhooks/deliveries`` (all, and
``status=delivered``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from typing import Any

from tests.perf.loadgen import WEBHOOK_SECRET, rss_mib, start_server
from userflow.storage import deliveries as delivery_stores

HOOK = "http://127.0.0.1:9/hook"  # never called: every delivery kept is delivered already
BATCH = 5000


def delivered(n: int, now: float) -> dict[str, Any]:
    run = f"01stored{n:010d}"
    return {
        "id": f"dlv_{run}_1_1", "eventId": f"evt_{run}_1", "number": 1, "workflowId": f"wf_{run}", "userId": f"usr_{run}",
        "type": "user.created", "url": HOOK, "status": "delivered", "nextAt": None, "createdAt": "2026-01-01T00:00:00.000Z",
        "payload": None, "manual": False, "resent": [],
        "attempts": [{"at": "2026-01-01T00:00:00.100Z", "status": 204, "error": None, "durationMs": 3.1}],
    }  # fmt: skip


def keep(data_dir: str, count: int) -> None:
    now = time.time() - 60
    if hasattr(delivery_stores, "DeliveryLog"):  # the journal ``DATA/webhooks/`` of releases before webhooks.sqlite
        log = delivery_stores.DeliveryLog(data_dir)
        log.save([{"mark": "since", "url": HOOK, "at": now}])
        for start in range(0, count, BATCH):
            log.save([delivered(n, now) for n in range(start, min(count, start + BATCH))])
        log.close()
        return
    from userflow.storage.delivery_file import DeliveryFile

    store = DeliveryFile(data_dir)
    store.since([HOOK], now)
    for start in range(0, count, BATCH):
        store.write([delivered(n, now) for n in range(start, min(count, start + BATCH))], [])
    store.close()


def timed_get(url: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = json.loads(response.read())
    return round((time.perf_counter() - started) * 1000, 1), body


def measure(count: int) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix="userflow-stored-")
    keep(data_dir, count)
    started = time.perf_counter()
    proc, url = start_server(data_dir, ["--webhook-url", HOOK], {"USERFLOW_WEBHOOK_SECRET": WEBHOOK_SECRET})
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server never became ready")
            time.sleep(0.02)  # polling interval: /readyz decides
        ready = time.perf_counter() - started
        first_ms, first = timed_get(f"{url}/api/webhooks/deliveries?limit=50")
        filtered_ms, _ = timed_get(f"{url}/api/webhooks/deliveries?limit=50&status=delivered")
        assert len(first["deliveries"]) == min(50, count)
        return {
            "deliveries": count,
            "readySeconds": round(ready, 2),
            "rssMiB": rss_mib(proc.pid),
            "firstPageMs": first_ms,
            "firstDeliveredPageMs": filtered_ms,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=100000)
    args = parser.parse_args()
    print(json.dumps({"runs": [measure(0), measure(args.deliveries)]}))
