"""The dashboard in Chromium, and verification links, on a store of a million users.

    python -m tests.perf.million_browser --store DIR --finished 1000000 --waiting 10000 [--database-url URL | --postgres]

The store is the one ``tests.perf.million`` generates (copies of a real
server's runs, written straight into the store). ``--store DIR`` keeps it:
the first run generates it there (and, with ``--database-url``, in that
empty database), later runs with the same counts reuse it. Without
``--store`` it is made in a temporary directory (with ``--postgres``, on a
throwaway PostgreSQL cluster) and removed at the end.

Each of ``--repeat`` rounds starts the server on the store and opens the
dashboard in a new Chromium context (Debian's, as the browser tests use it),
and prints, from the moment the page is asked for: when the overview shows
its numbers, when the table's first page is drawn (50 rows); then, from
pressing Enter, when a search by a finished user's address shows that one
row, and from the click on the row, when its run's card shows its steps.
Then ``--links`` verification links of users still waiting (each a different
user, each link used once): the time from GET of the link to the page's
answer, and of the verification (``POST /api/verify`` with its token) to
its answer; a waiting run is active, so its token is found in memory. And
as many links of finished users: the page says they are verified already,
from the catalog's token index. Every figure printed last is the median over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any

from tests.browser_support import LAPTOP, launch, missing
from tests.perf.million import copy_names, generate, get, post, serve, stop

ROWS = 50  # the dashboard's page of runs
MARKER = "million-store.json"


def ensure_store(store: str, database_url: str | None, finished: int, waiting: int) -> str:
    """The data dir of the store kept in ``store``, generated there first if it is not yet."""
    marker = os.path.join(store, MARKER)
    wanted = {"finished": finished, "waiting": waiting, "database": database_url is not None}
    if os.path.exists(marker):
        with open(marker) as handle:
            kept = json.load(handle)
        if {key: kept.get(key) for key in wanted} != wanted:
            raise SystemExit(f"{store} holds another store ({kept}); pass its counts, or another directory")
        return os.path.join(store, "data")
    if os.path.exists(store) and os.listdir(store):
        raise SystemExit(f"{store} is neither empty nor a store this made")
    data_dir = os.path.join(store, "data")
    os.makedirs(data_dir)
    seconds = generate(data_dir, database_url, finished, waiting)
    with open(marker, "w") as handle:
        json.dump({**wanted, "generatedSeconds": seconds}, handle)
    return data_dir


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def dashboard_round(browser: Any, url: str, email: str) -> dict[str, float]:
    context = browser.new_context(viewport=LAPTOP)
    try:
        page = context.new_page()
        started = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.wait_for_selector('#overview[data-loaded=true] #funnel li[data-stage="signedUp"] [data-role=n]', state="attached", timeout=120_000)
        overview = ms_since(started)
        page.wait_for_function("rows => document.querySelectorAll('#runs tr.run-row').length === rows", arg=ROWS, timeout=120_000, polling="raf")
        table = ms_since(started)
        signed_up = page.locator('#funnel li[data-stage="signedUp"] [data-role=n]').inner_text()

        search = page.locator("#runs-q")
        search.fill(email)
        started = time.perf_counter()
        search.press("Enter")
        found = f"#runs tr.run-row[data-email={json.dumps(email)}]"
        page.wait_for_function(
            "found => document.querySelectorAll('#runs tr.run-row').length === 1 && !!document.querySelector(found)",
            arg=found,
            timeout=60_000,
            polling="raf",
        )
        search_ms = ms_since(started)

        started = time.perf_counter()
        page.locator(found).click()
        card = page.locator("article.run").filter(has=page.locator(".run-title .email", has_text=email))
        card.locator("li.step").nth(4).wait_for(timeout=60_000)
        opened = ms_since(started)
        steps = card.locator("li.step").evaluate_all("steps => steps.map(s => s.dataset.status)")
        assert steps == ["COMPLETED"] * 5, steps
        return {"overviewMs": overview, "firstPageMs": table, "searchMs": search_ms, "openRunMs": opened, "signedUp": signed_up}
    finally:
        context.close()


def verification_links(url: str, count: int) -> list[dict[str, float]]:
    """``count`` waiting users' links, each opened (GET of the page) and then used (POST)."""
    waiting = get(f"{url}/api/workflows?status=WAITING&limit=200")["workflows"]
    step = max(1, len(waiting) // count)
    chosen = waiting[::step][:count]
    assert len(chosen) == count, f"only {len(waiting)} waiting runs left"
    timings = []
    for run in chosen:
        (email,) = get(f"{url}/api/outbox?workflowId={run['id']}")["emails"]
        link = urllib.parse.urlsplit(email["link"])
        token = urllib.parse.parse_qs(link.query)["token"][0]
        started = time.perf_counter()
        with urllib.request.urlopen(f"{url}{link.path}?{link.query}", timeout=30) as response:
            page = response.read().decode()
            assert response.status == 200
        opened = ms_since(started)
        assert "verif" in page.lower(), page[:200]
        started = time.perf_counter()
        answer = post(url + "/api/verify", {"token": token})
        used = ms_since(started)
        assert answer == {"workflowId": run["id"], "status": "verified"}, answer
        timings.append({"linkPageMs": opened, "verifyMs": used})
    return timings


def finished_links(url: str, finished: int, count: int, round_no: int) -> list[float]:
    """GET of the links of ``count`` finished users (already verified): their tokens are
    found in the catalog, not among the active runs in memory."""
    timings = []
    for k in range(count):
        run_id = copy_names("f", (k * finished // count + 7919 * round_no) % finished)[0]
        (email,) = get(f"{url}/api/outbox?workflowId={run_id}")["emails"]
        link = urllib.parse.urlsplit(email["link"])
        started = time.perf_counter()
        with urllib.request.urlopen(f"{url}{link.path}?{link.query}", timeout=30) as response:
            page = response.read().decode()
        timings.append(ms_since(started))
        assert "already" in page.lower(), page[:300]
    return timings


def measure(args: argparse.Namespace, data_dir: str, database_url: str | None) -> None:
    from playwright.sync_api import sync_playwright

    env = {"USERFLOW_DATABASE_URL": database_url} if database_url else {}
    rounds, links, done_links = [], [], []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for round_no in range(args.repeat):
                proc, url, _ = serve(data_dir, env)
                try:
                    # A different finished user each round, spread over the store.
                    email = copy_names("f", (round_no + 1) * args.finished // (args.repeat + 1))[2]
                    rounds.append(dashboard_round(browser, url, email))
                    round_links = verification_links(url, args.links)
                    links.extend(round_links)
                    done_links.extend(finished_links(url, args.finished, args.links, round_no))
                finally:
                    stop(proc)
                print(json.dumps({"round": round_no, **rounds[-1],
                                  "linkPageMs": round(statistics.median(t["linkPageMs"] for t in round_links), 2),
                                  "verifyMs": round(statistics.median(t["verifyMs"] for t in round_links), 2)}), flush=True)  # fmt: skip
        finally:
            browser.close()
    median = {key: statistics.median(r[key] for r in rounds) for key in ("overviewMs", "firstPageMs", "searchMs", "openRunMs")}
    print(json.dumps({
        "store": "postgres" if database_url else "data dir", "finished": args.finished, "waiting": args.waiting,
        "rounds": args.repeat, **median,
        "linkPageMs": statistics.median(t["linkPageMs"] for t in links),
        "verifyMs": statistics.median(t["verifyMs"] for t in links), "links": len(links),
        "finishedLinkPageMs": statistics.median(done_links),
    }, indent=1), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--links", type=int, default=20, help="waiting users whose links each round opens and uses")
    parser.add_argument("--store", help="a directory to keep the store in (and to reuse it from); else a temporary one")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="the store on this database (empty the first time; kept)")
    where.add_argument("--postgres", action="store_true", help="the store on a throwaway PostgreSQL cluster (Debian's)")
    args = parser.parse_args()
    if args.postgres and args.store:
        parser.error("--postgres makes a throwaway database: keep a store with --store and --database-url")
    reason = missing()
    if reason:
        raise SystemExit(reason)
    store = args.store or tempfile.mkdtemp(prefix="userflow-million-browser-")
    database_url, cluster = args.database_url, None
    try:
        if args.postgres:
            from tests.postgres import Cluster

            cluster = Cluster().create()
            database_url = cluster.url(cluster.create_database("million"))
        data_dir = ensure_store(store, database_url, args.finished, args.waiting)
        measure(args, data_dir, database_url)
    finally:
        if cluster is not None:
            cluster.remove()
        if args.store is None:
            with contextlib.suppress(OSError):
                shutil.rmtree(store)


if __name__ == "__main__":
    main()
