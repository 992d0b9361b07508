"""Many nodes on one PostgreSQL database: takeover after SIGKILL, runs/s with 1-3 nodes, a click on another node.

    python -m tests.perf.cluster --only takeover --kills 10 --click-delay 1                     # node timeout 5 s (the default)
    python -m tests.perf.cluster --only takeover --kills 10 --click-delay 1 --node-timeout 2
    python -m tests.perf.cluster --only throughput --nodes 1 2 3 --duration 20                  # instant clicks
    python -m tests.perf.cluster --only throughput --nodes 1 2 3 --duration 20 --concurrency 200 --click-delay 1
    python -m tests.perf.cluster --only latency --latency-rate 10 --latency-duration 20 [--click-delay 1]
    python -m tests.perf.cluster                                                                # all three

Everything runs here: a throwaway PostgreSQL cluster (``tests.postgres.Cluster``,
``fsync`` on), the real SMTP server of the tests (``tests.smtp_server``), and
each node a ``userflow serve`` process (``tests.cluster.Nodes``) with
``--email-failure-rate 0``, email over SMTP and the heuristic risk check (no
Gemini key). A link is taken from the message the SMTP server received and
clicked on another node than the one that took the signup (when there is
more than one), at once or ``--click-delay`` seconds after the message
arrived (a person reads the email first). It prints one JSON object per
measurement, with the warnings and errors of every node's log counted by
message; each node's whole log is written beside its data dir.

- **takeover**: three nodes under an open loop of signups and clicks on random
  nodes. At a random moment a random node gets SIGKILL (the wall time noted);
  the runs it was executing are those whose ``owner`` is that node a moment
  after the kill (a waiting run has no owner, and a click on it starts it on
  the clicked node at once: that is no takeover). A run's takeover time is its
  earliest attempt or timeline entry by another node, minus the kill time; a
  kill's is the earliest of its runs (the first step of a moved run on a
  survivor), beside the latest (all its runs moved). Once every run has moved,
  the killed node is started again under a new ``--node-id``. A kill that
  finds no run executing is noted and not counted. At the end every run
  accepted is clicked (again, if its click went to a node that died) and must
  reach COMPLETED.
- **throughput**: for each node count, a fresh database and fresh nodes, a
  closed loop (``--concurrency`` users, each signing up, clicking and waiting
  for COMPLETED on ``/api/events`` of the first node before the next signup)
  and, after ``--warmup`` seconds, ``--duration`` seconds measured: completed
  runs/s, and CPU (``/proc/PID/stat`` utime+stime) per completed run of each
  node process, of every process of the PostgreSQL cluster (with those that
  ended, through the postmaster's cutime/cstime) and of this process (the load
  and the SMTP server). ``runsPerCore`` is 1 / (nodes' + PostgreSQL's CPU
  seconds per run): what a core spent on userflow and its database completes.
- **latency**: three nodes, an open loop at ``--latency-rate`` signups/s; each
  link is clicked on another node than the signup's. From the click's request
  to COMPLETED: as seen on ``/api/events`` of the first node (the event
  stream reads the shared journal), and by the run's own ``finishedAt`` (the
  same machine's clock) read back from ``/api/workflows/{id}`` afterwards.
  The throughput runs report the same click-to-completed latency under full load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import statistics
import tempfile
import threading
import time
from datetime import datetime
from typing import Any

import aiohttp
import psycopg

from tests.cluster import Nodes, run_of, token_in
from tests.perf.loadgen import sse_frames
from tests.postgres import Cluster
from tests.server import Server
from tests.smtp_server import SmtpServer

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RUN_ID = re.compile(r"wf_[0-9a-f]+")


def percentile(values: list[float], q: float, scale: float = 1000.0) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale, 1)


def process_cpu(pid: int) -> float:
    """User and system CPU seconds of one process so far; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wall(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class Mail:
    """Each run's verification link as the SMTP server receives it, handed to the event loop."""

    def __init__(self, smtp: SmtpServer, loop: asyncio.AbstractEventLoop) -> None:
        self.smtp, self.loop = smtp, loop
        self.tokens: dict[str, str] = {}
        self.waiters: dict[str, asyncio.Future[str]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="mail", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        handler, seen = self.smtp.handler, 0
        while not self.stop.is_set():
            with handler.received:
                handler.received.wait_for(lambda: len(handler.messages) > seen, timeout=0.2)
                arrived = handler.messages[seen:]
            seen += len(arrived)
            found = [(run_of(m), token_in(m)) for m in arrived if ".verification." in m["Message-ID"]]
            if found:
                self.loop.call_soon_threadsafe(self._arrived, found)

    def _arrived(self, found: list[tuple[str, str]]) -> None:
        for run_id, token in found:
            self.tokens.setdefault(run_id, token)
            waiter = self.waiters.pop(run_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(token)

    async def token(self, run_id: str, timeout: float = 60.0) -> str:
        if run_id in self.tokens:
            return self.tokens[run_id]
        waiter = self.waiters.setdefault(run_id, self.loop.create_future())
        return await asyncio.wait_for(asyncio.shield(waiter), timeout)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class Completions:
    """``/api/events`` of one node: when each run's COMPLETED arrived here (perf_counter)."""

    def __init__(self, session: aiohttp.ClientSession, node: Server) -> None:
        self.session, self.node = session, node
        self.at: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready = asyncio.Event()
        self.task = asyncio.ensure_future(self._read(ready))
        await asyncio.wait_for(ready.wait(), 30)

    async def _read(self, ready: asyncio.Event) -> None:
        async with self.session.get(f"{self.node.url}/api/events", timeout=aiohttp.ClientTimeout(total=None)) as response:
            ready.set()
            async for event, body in sse_frames(response):
                if event == "run" and body.get("status") == "COMPLETED" and body["id"] not in self.at:
                    self.at[body["id"]] = time.perf_counter()
                    waiter = self.waiters.pop(body["id"], None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(self.at[body["id"]])

    async def wait(self, run_id: str, timeout: float) -> float:
        if run_id in self.at:
            return self.at[run_id]
        waiter = self.waiters.setdefault(run_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(waiter), timeout)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self.task


class Client:
    """Signups and clicks on the live nodes, with what went wrong counted."""

    def __init__(self, session: aiohttp.ClientSession, nodes: Nodes, mail: Mail, rng: random.Random, click_delay: float) -> None:
        self.session, self.nodes, self.mail, self.rng = session, nodes, mail, rng
        self.click_delay = click_delay
        self.errors: dict[str, int] = {}
        self.accepted: dict[str, str] = {}  # run id -> node that took the signup
        self.clicked: set[str] = set()
        self.seq = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def pick(self, avoid: Server | None = None) -> Server:
        live = self.nodes.alive()
        others = [node for node in live if node is not avoid]
        return self.rng.choice(others or live)

    async def signup(self) -> tuple[str, Server] | None:
        self.seq += 1
        node = self.pick()
        body = {"email": f"load{self.seq}-{os.getpid()}@example.com", "name": "Load Test"}
        try:
            async with self.session.post(f"{node.url}/api/signup", json=body) as response:
                answer = await response.json(content_type=None)
                if response.status != 202:
                    self.error(f"signup {response.status}")
                    return None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.error(f"signup {type(exc).__name__}")
            return None
        self.accepted[answer["workflowId"]] = node.args[node.args.index("--node-id") + 1]
        return answer["workflowId"], node

    async def click(self, run_id: str, signed_up_on: Server | None, tries: int = 5) -> tuple[float, float] | None:
        """Click the run's link on another node than ``signed_up_on``; the (perf, wall) time of
        the request that answered 200. A node that dies under the click: another is tried."""
        try:
            token = await self.mail.token(run_id)
        except TimeoutError:
            self.error("no email in 60 s")  # its run's send step died with a node, or the run is stuck
            return None
        if self.click_delay:
            await asyncio.sleep(self.click_delay)  # a person reads the email before clicking
        for _ in range(tries):
            node = self.pick(avoid=signed_up_on)
            sent, sent_wall = time.perf_counter(), time.time()
            try:
                async with self.session.get(f"{node.url}/api/verify", params={"token": token}) as response:
                    await response.read()
                    if response.status == 200:
                        self.clicked.add(run_id)
                        return sent, sent_wall
                    self.error(f"verify {response.status}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.error(f"verify {type(exc).__name__}")
            await asyncio.sleep(0.2)
        return None


def node_log_problems(nodes: Nodes, limit: int = 8) -> dict[str, Any]:
    """Warnings and errors in every node's log (the killed ones' too), counted by node, level
    and message, with the end of the first traceback of each message. Every node's whole log
    is written beside its data dir (``NAME.log``)."""
    counts: dict[str, int] = {}
    samples: dict[str, str] = {}
    for node in [*nodes.nodes.values(), *nodes.gone]:
        name = node.args[node.args.index("--node-id") + 1]
        lines = list(node.stderr)
        with open(os.path.join(nodes.root, f"{name}.log"), "w", encoding="utf-8") as log:
            log.writelines(lines)
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"level": "unparsed", "msg": line.strip()[:200]}
            if record.get("level") not in ("warning", "error", "critical", "unparsed"):
                continue
            message = RUN_ID.sub("wf_…", str(record.get("msg", "")))[:200]
            key = f"{name} {record['level']}: {message}"
            counts[key] = counts.get(key, 0) + 1
            general = f"{record['level']}: {message}"
            if general not in samples and len(samples) < limit:
                samples[general] = f"{name} {record.get('ts')}: " + "\n".join(str(record.get("error", "")).splitlines()[-6:])
    return {"logs": nodes.root, "counts": counts, "samples": samples}


def node_flags(timeout: float) -> tuple[str, ...]:
    return ("--node-timeout", str(timeout))


async def start_nodes(nodes: Nodes, names: list[str], timeout: float) -> list[Server]:
    return list(await asyncio.gather(*(asyncio.to_thread(nodes.start, name, *node_flags(timeout)) for name in names)))


# -- takeover after SIGKILL ------------------------------------------------------------


async def takeover(args: argparse.Namespace, cluster: Cluster, smtp: SmtpServer, node_timeout: float) -> dict[str, Any]:
    rng = random.Random(args.seed)
    database = cluster.create_database(f"takeover {node_timeout}")
    url = cluster.url(database)
    loop = asyncio.get_running_loop()
    mail = Mail(smtp, loop)
    root = tempfile.mkdtemp(prefix="userflow-cluster-")
    kills: list[dict[str, Any]] = []
    empty_kills = 0
    with Nodes(root, url, smtp) as nodes:
        await start_nodes(nodes, ["a", "b", "c"], node_timeout)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
            client = Client(session, nodes, mail, rng, args.click_delay)
            stop = asyncio.Event()
            tasks: set[asyncio.Task[Any]] = set()

            async def one_user() -> None:
                signed = await client.signup()
                if signed is not None:
                    await client.click(signed[0], signed[1])

            async def arrivals() -> None:
                began, n = time.perf_counter(), 0
                while not stop.is_set():
                    n += 1
                    await asyncio.sleep(max(0.0, began + n / args.takeover_rate - time.perf_counter()))
                    task = asyncio.ensure_future(one_user())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

            load = asyncio.ensure_future(arrivals())
            restarts = 0
            with psycopg.connect(url, autocommit=True) as db:
                attempts = 0
                while len(kills) < args.kills and attempts < 3 * args.kills:
                    attempts += 1
                    await asyncio.sleep(rng.uniform(2.0, 5.0))  # a random moment, not a synchronisation
                    victim = rng.choice(sorted(nodes.nodes))
                    killed_at = time.time()
                    nodes.kill(victim)
                    await asyncio.sleep(0.3)  # commits the node sent before it died are applied by now
                    owned = [row[0] for row in db.execute("SELECT id FROM runs WHERE owner = %s", (victim,))]
                    if not owned:
                        empty_kills += 1
                    else:
                        kills.append(await moved(session, nodes, victim, killed_at, owned, node_timeout + 15.0))
                        if kills[-1]["notMoved"]:
                            kills[-1]["notMovedNow"] = db.execute(
                                "SELECT owner, status, count(*) FROM runs WHERE id = ANY(%s) GROUP BY 1, 2", (kills[-1]["notMoved"],)
                            ).fetchall()
                    restart_began = time.perf_counter()
                    restarts += 1
                    await asyncio.to_thread(nodes.start, f"{victim.rstrip('0123456789')}{restarts}", *node_flags(node_timeout))
                    if kills and owned:
                        kills[-1]["restartSeconds"] = round(time.perf_counter() - restart_began, 2)
                        print(json.dumps({"kill": kills[-1]}), flush=True)
            stop.set()
            await load
            await asyncio.gather(*list(tasks), return_exceptions=True)
            stuck = await complete_every_run(session, client, db_url=url, timeout=60.0)
        problems = node_log_problems(nodes)
    mail.close()
    cluster.drop_database(database)
    first = [k["firstSeconds"] for k in kills if k["firstSeconds"] is not None]
    last = [k["allSeconds"] for k in kills if k["allSeconds"] is not None]
    return {
        "measure": "takeover after SIGKILL",
        "nodeTimeoutSeconds": node_timeout,
        "offeredSignupsPerSecond": args.takeover_rate,
        "kills": len(kills),
        "killsWithNoRunExecuting": empty_kills,
        "firstMovedStepSeconds": {"p50": round(statistics.median(first), 2) if first else None, "max": round(max(first), 2) if first else None},
        "allRunsMovedSeconds": {"p50": round(statistics.median(last), 2) if last else None, "max": round(max(last), 2) if last else None},
        "goalSeconds": node_timeout + 1,
        "runsMovedPerKill": [k["runs"] for k in kills],
        "runsNeverMoved": [r for k in kills for r in k["notMoved"]],
        "clickDelaySeconds": args.click_delay,
        "acceptedSignups": len(client.accepted),
        "notCompleted": stuck,
        "clientErrors": client.errors,
        "nodeLog": problems,
    }


async def moved(session: aiohttp.ClientSession, nodes: Nodes, victim: str, killed_at: float, owned: list[str], within: float) -> dict[str, Any]:
    """Until each run the victim was executing shows an attempt or entry by another node."""
    first_by: dict[str, float] = {}
    deadline = time.monotonic() + within
    while len(first_by) < len(owned) and time.monotonic() < deadline:
        for run_id in [r for r in owned if r not in first_by]:
            node = random.choice(nodes.alive())
            try:
                async with session.get(f"{node.url}/api/workflows/{run_id}") as response:
                    run = await response.json(content_type=None)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                continue
            times = [wall(a["startedAt"]) for s in run.get("steps", []) for a in s["attempts"] if a["node"] not in (None, victim)]
            times += [wall(e["at"]) for e in run.get("timeline", []) if e["node"] not in (None, victim)]
            later = [t for t in times if t >= killed_at]
            if later:
                first_by[run_id] = min(later) - killed_at
        await asyncio.sleep(0.25)  # polling the run details; what they say decides
    return {
        "victim": victim,
        "runs": len(owned),
        "firstSeconds": round(min(first_by.values()), 3) if first_by else None,
        "allSeconds": round(max(first_by.values()), 3) if len(first_by) == len(owned) else None,
        "notMoved": [r for r in owned if r not in first_by],
    }


async def complete_every_run(session: aiohttp.ClientSession, client: Client, db_url: str, timeout: float) -> list[dict[str, Any]]:
    """Click what was not clicked (its click died with a node), then wait for every accepted
    run to be COMPLETED; those that are not, with status and owner."""
    client.click_delay = 0.0
    unclicked = [r for r in client.accepted if r not in client.clicked]
    await asyncio.gather(*(client.click(run_id, None) for run_id in unclicked))
    deadline = time.monotonic() + timeout
    with psycopg.connect(db_url, autocommit=True) as db:
        while True:
            rows = db.execute("SELECT id, status, owner FROM runs WHERE status <> 'COMPLETED'").fetchall()
            left = [{"id": i, "status": s, "owner": o} for i, s, o in rows if i in client.accepted]
            if not left or time.monotonic() >= deadline:
                return left
            await asyncio.sleep(0.5)


# -- completed runs/s with 1, 2 and 3 nodes --------------------------------------------


async def throughput(args: argparse.Namespace, cluster: Cluster, smtp: SmtpServer, count: int) -> dict[str, Any]:
    rng = random.Random(args.seed + count)
    database = cluster.create_database(f"throughput {count}")
    loop = asyncio.get_running_loop()
    mail = Mail(smtp, loop)
    root = tempfile.mkdtemp(prefix="userflow-cluster-")
    with Nodes(root, cluster.url(database), smtp) as nodes:
        started = await start_nodes(nodes, [chr(ord("a") + i) for i in range(count)], args.node_timeout)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            client = Client(session, nodes, mail, rng, args.click_delay)
            completions = Completions(session, started[0])
            await completions.start()
            measuring = False
            window: list[str] = []
            click_to_done: list[float] = []
            signup_to_done: list[float] = []
            stop = asyncio.Event()

            async def user() -> None:
                while not stop.is_set():
                    began = time.perf_counter()
                    signed = await client.signup()
                    if signed is None:
                        await asyncio.sleep(0.1)
                        continue
                    clicked = await client.click(signed[0], signed[1] if count > 1 else None)
                    if clicked is None:
                        continue
                    try:
                        done = await completions.wait(signed[0], 60.0)
                    except TimeoutError:
                        client.error("not COMPLETED in 60 s")
                        continue
                    if measuring and began >= window_began:
                        window.append(signed[0])
                        click_to_done.append(done - clicked[0])
                        signup_to_done.append(done - began)

            window_began = float("inf")
            users = [asyncio.ensure_future(user()) for _ in range(args.concurrency)]
            await asyncio.sleep(args.warmup)
            pids = [node.proc.pid for node in started if node.proc is not None]
            node_cpu, pg_cpu, bench_cpu = [process_cpu(p) for p in pids], cluster.cpu_seconds(), own_cpu()
            completed_before = len(completions.at)
            window_began, measuring = time.perf_counter(), True
            await asyncio.sleep(args.duration)
            elapsed = time.perf_counter() - window_began
            completed = len(completions.at) - completed_before
            node_cpu = [process_cpu(p) - before for p, before in zip(pids, node_cpu)]
            pg_cpu, bench_cpu = cluster.cpu_seconds() - pg_cpu, own_cpu() - bench_cpu
            stop.set()
            await asyncio.gather(*users, return_exceptions=True)
            await completions.close()
        problems = node_log_problems(nodes)
    mail.close()
    cluster.drop_database(database)
    per_run = (lambda seconds: round(seconds * 1000 / completed, 2) if completed else None)
    userflow_ms = sum(node_cpu) * 1000 / completed if completed else None
    pg_ms = pg_cpu * 1000 / completed if completed else None
    return {
        "measure": "completed runs/s",
        "nodes": count,
        "concurrency": args.concurrency,
        "clickDelaySeconds": args.click_delay,
        "durationSeconds": round(elapsed, 1),
        "completedRuns": completed,
        "completedRunsPerSecond": round(completed / elapsed, 1),
        "clickToCompletedMs": {"p50": percentile(click_to_done, 0.5), "p99": percentile(click_to_done, 0.99)},
        "signupToCompletedMs": {"p50": percentile(signup_to_done, 0.5), "p99": percentile(signup_to_done, 0.99)},
        "nodeCpuMsPerRun": [per_run(s) for s in node_cpu],
        "nodesCpuMsPerRun": round(userflow_ms, 2) if userflow_ms else None,
        "postgresCpuMsPerRun": round(pg_ms, 2) if pg_ms else None,
        "loadAndSmtpCpuMsPerRun": per_run(bench_cpu),
        "nodesAndPostgresCpuUtilisation": round((sum(node_cpu) + pg_cpu) / elapsed, 2),
        "runsPerCore": round(1000 / (userflow_ms + pg_ms), 1) if userflow_ms and pg_ms else None,
        "clientErrors": client.errors,
        "nodeLog": problems,
    }


# -- a click on another node, to COMPLETED ---------------------------------------------


async def latency(args: argparse.Namespace, cluster: Cluster, smtp: SmtpServer) -> dict[str, Any]:
    rng = random.Random(args.seed + 100)
    database = cluster.create_database("latency")
    mail = Mail(smtp, asyncio.get_running_loop())
    root = tempfile.mkdtemp(prefix="userflow-cluster-")
    with Nodes(root, cluster.url(database), smtp) as nodes:
        started = await start_nodes(nodes, ["a", "b", "c"], args.node_timeout)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            client = Client(session, nodes, mail, rng, args.click_delay)
            completions = Completions(session, started[0])
            await completions.start()
            seen: list[float] = []
            clicks: dict[str, float] = {}

            async def one() -> None:
                signed = await client.signup()
                if signed is None:
                    return
                clicked = await client.click(signed[0], signed[1], tries=1)
                if clicked is None:
                    return
                clicks[signed[0]] = clicked[1]
                try:
                    seen.append(await completions.wait(signed[0], 60.0) - clicked[0])
                except TimeoutError:
                    client.error("not COMPLETED in 60 s")

            began, pending = time.perf_counter(), []
            for n in range(int(args.latency_rate * args.latency_duration)):
                await asyncio.sleep(max(0.0, began + n / args.latency_rate - time.perf_counter()))
                pending.append(asyncio.ensure_future(one()))
            await asyncio.gather(*pending)
            await completions.close()
            by_finished: list[float] = []
            for run_id, sent in clicks.items():
                async with session.get(f"{started[0].url}/api/workflows/{run_id}") as response:
                    run = await response.json()
                if run.get("finishedAt"):
                    by_finished.append(wall(run["finishedAt"]) - sent)
        problems = node_log_problems(nodes)
    mail.close()
    cluster.drop_database(database)
    return {
        "measure": "click on another node to COMPLETED",
        "nodes": 3,
        "offeredSignupsPerSecond": args.latency_rate,
        "clickDelaySeconds": args.click_delay,
        "runs": len(seen),
        "seenOnEventsMs": {"p50": percentile(seen, 0.5), "p99": percentile(seen, 0.99)},
        "byFinishedAtMs": {"p50": percentile(by_finished, 0.5), "p99": percentile(by_finished, 0.99)},
        "clientErrors": client.errors,
        "nodeLog": problems,
    }


def medians(results: list[dict[str, Any]]) -> dict[str, Any]:
    def median_of(key: str) -> float | None:
        values = [r[key] for r in results if r.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    return {
        "measure": "completed runs/s, medians",
        "nodes": results[0]["nodes"],
        "medianOf": len(results),
        **{key: median_of(key) for key in ("completedRunsPerSecond", "nodesCpuMsPerRun", "postgresCpuMsPerRun", "loadAndSmtpCpuMsPerRun", "runsPerCore")},
        "clickToCompletedMsP50": round(statistics.median(r["clickToCompletedMs"]["p50"] for r in results), 1),
        "clickToCompletedMsP99": round(statistics.median(r["clickToCompletedMs"]["p99"] for r in results), 1),
    }


async def main(args: argparse.Namespace) -> None:
    for name in ("GEMINI_API_KEY", "GEMINI_BASE_URL", "USERFLOW_FAULTS"):
        os.environ.pop(name, None)  # the heuristic risk check, no injected faults
    cluster = Cluster().create()
    try:
        with SmtpServer() as smtp:
            if args.only in (None, "takeover"):
                for timeout in args.takeover_timeouts or [args.node_timeout]:
                    print(json.dumps(await takeover(args, cluster, smtp, timeout)), flush=True)
            if args.only in (None, "throughput"):
                for round_ in range(args.repeat):
                    for count in args.nodes:  # the node counts take turns: a drift of the machine hits each
                        result = await throughput(args, cluster, smtp, count)
                        results_by_count.setdefault(count, []).append(result)
                        print(json.dumps(result), flush=True)
                if args.repeat > 1:
                    for count in args.nodes:
                        print(json.dumps(medians(results_by_count[count])), flush=True)
            if args.only in (None, "latency"):
                print(json.dumps(await latency(args, cluster, smtp)), flush=True)
    finally:
        cluster.remove()


results_by_count: dict[int, list[dict[str, Any]]] = {}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("takeover", "throughput", "latency"), help="one measurement (default: all three)")
    parser.add_argument("--node-timeout", type=float, default=5.0, help="--node-timeout of every node")
    parser.add_argument("--takeover-timeouts", type=float, nargs="*", help="takeover: one round per node timeout (default: --node-timeout)")
    parser.add_argument("--kills", type=int, default=10, help="takeover: kills that found runs executing")
    parser.add_argument("--takeover-rate", type=float, default=40.0, help="takeover: signups/s offered while nodes are killed")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3], help="throughput: node counts")
    parser.add_argument("--concurrency", type=int, default=64, help="throughput: users in flight")
    parser.add_argument("--warmup", type=float, default=5.0, help="throughput: seconds before the measured window")
    parser.add_argument("--duration", type=float, default=30.0, help="throughput: seconds measured")
    parser.add_argument("--repeat", type=int, default=1, help="throughput: rounds (each node count once per round), and medians")
    parser.add_argument("--latency-rate", type=float, default=10.0, help="latency: signups/s offered")
    parser.add_argument("--latency-duration", type=float, default=30.0, help="latency: seconds of arrivals")
    parser.add_argument("--click-delay", type=float, default=0.0, help="seconds from an email's arrival to its click")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
