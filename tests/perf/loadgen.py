"""Load generator: signups, instant clicks, completion seen through /api/events.

    python -m tests.perf.loadgen --runs 2000 --concurrency 64          # closed loop
    python -m tests.perf.loadgen --rate 1000 --duration 5              # open loop
    python -m tests.perf.loadgen --repeat 3                            # and the medians of 3
    python -m tests.perf.loadgen --webhook                             # with one webhook URL
    python -m tests.perf.loadgen --smtp --repeat 3                     # the same, email sent over SMTP
    python -m tests.perf.loadgen --postgres --repeat 3                 # runs kept in PostgreSQL
    python -m tests.perf.loadgen --database-url postgresql://...       # ... in that database

By default it starts its own server (outbox mode, no injected failures, no
rate limits) on a fresh data dir and reports the server's RSS; ``--url``
points it at a running one instead. ``--database-url`` hands the started
server that database (as ``USERFLOW_DATABASE_URL``) instead of the data dir;
``--postgres`` makes a throwaway cluster (``tests/postgres.py``) and a fresh
database in it for each repetition, and adds PostgreSQL's transactions and
CPU time per completed run (``tests/perf/pg.py``). Each run is verified as soon as its
email exists: in outbox mode the link is read from ``/api/outbox``; with
``--smtp`` the load generator runs an SMTP server (aiosmtpd, on its own event
loop), hands the started server ``--smtp-url``, and takes each link from the
message it receives. It prints one JSON object: accepted signups/s, signup latency
p50/p99, signup-to-completed p50/p99, completed runs/s, errors, server RSS.

The closed loop keeps ``concurrency`` users in flight, each going through
the whole lifecycle; the open loop sends signups at a fixed arrival rate
whatever the answers, so queueing shows in the latency instead of hiding.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import email
import email.policy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.perf.pg import PgProbe
from tests.postgres import Cluster

LINK = re.compile(r"/verify\?token=([A-Za-z0-9_-]{43})")
MESSAGE_ID = re.compile(rb"^Message-ID: <(wf_[A-Za-z0-9_-]+)\.", re.MULTILINE | re.IGNORECASE)


class Mailbox:
    """The SMTP server's handler: each received message's link, by run id."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.connections = 0
        self.messages = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook
        content = envelope.original_content or b""
        run_id = MESSAGE_ID.search(content)
        # The parts are quoted-printable: undone on the whole message, the link reads plainly
        # (this process is the load, so it does not parse every message with the email package).
        found = LINK.search(binascii.a2b_qp(content).decode("utf-8", "replace")) or self.parsed_link(content)
        if run_id is None or found is None:
            return "550 5.6.0 no Message-ID or no verification link in this message"
        self.tokens[run_id.group(1).decode()] = found.group(1)
        self.messages += 1
        return "250 2.0.0 Ok"

    @staticmethod
    def parsed_link(content: bytes) -> re.Match[str] | None:
        """The link from the text part, decoded by the standard library (base64, say)."""
        message = email.message_from_bytes(content, policy=email.policy.compat32)
        text = next((p for p in message.walk() if p.get_content_type() == "text/plain"), None)
        return LINK.search((text.get_payload(decode=True) or b"").decode("utf-8", "replace")) if text else None


class CountingSMTP(SMTP):
    """aiosmtpd's server, counting connections (to show how many the server opens)."""

    def __init__(self, mailbox: Mailbox) -> None:
        super().__init__(mailbox, hostname="loadgen.localhost")  # a fixed name: no DNS look-up per connection
        self.mailbox = mailbox

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.mailbox.connections += 1
        super().connection_made(transport)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


async def sse_frames(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Each ``event:``/``data:`` frame of an ``/api/events`` response, as (event, decoded data)."""
    event = data = None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and event and data:
            yield event, json.loads(data)
            event = data = None


class Load:
    def __init__(self, url: str, session: aiohttp.ClientSession, mailbox: Mailbox | None = None) -> None:
        self.url = url
        self.session = session
        self.mailbox = mailbox
        self.signup_latency: list[float] = []
        self.lifecycle: list[float] = []
        self.started: dict[str, float] = {}
        self.done: dict[str, asyncio.Future[float]] = {}
        self.errors: dict[str, int] = {}
        self.completed = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.emailed: set[str] = set()
        self.seq = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    async def listen(self, ready: asyncio.Event) -> None:
        """Follow /api/events: click each link when its email is sent, note each completion."""
        async with self.session.get(f"{self.url}/api/events", timeout=aiohttp.ClientTimeout(total=None)) as response:
            ready.set()
            async for event, data in sse_frames(response):
                self.on_event(event, data)

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "timeline" and data["type"] == "email-sent":
            if data["workflowId"] in self.started:
                self.click_soon(data["workflowId"])
            else:  # the event can overtake the signup's own answer
                self.emailed.add(data["workflowId"])
        elif event == "run" and data["status"] == "COMPLETED" and data["id"] in self.started:
            future = self.done.get(data["id"])
            if future is not None and not future.done():
                elapsed = time.perf_counter() - self.started[data["id"]]
                self.lifecycle.append(elapsed)
                self.completed += 1
                future.set_result(elapsed)

    def click_soon(self, run_id: str) -> None:
        task = asyncio.ensure_future(self.click(run_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def token(self, run_id: str) -> str:
        """The link's token: from the received message (SMTP), else from the outbox."""
        if self.mailbox is not None:
            return self.mailbox.tokens.pop(run_id)  # received before the server told of the send
        async with self.session.get(f"{self.url}/api/outbox", params={"workflowId": run_id}) as response:
            emails = (await response.json())["emails"]
        return str(emails[0]["link"].split("token=")[1])

    async def click(self, run_id: str) -> None:
        try:
            token = await self.token(run_id)
            async with self.session.get(f"{self.url}/api/verify", params={"token": token}) as response:
                if response.status != 200:
                    self.error(f"verify {response.status}")
        except (aiohttp.ClientError, KeyError, IndexError) as exc:
            self.error(f"verify {type(exc).__name__}")

    async def signup(self) -> str | None:
        self.seq += 1
        body = {"email": f"load{self.seq}-{os.getpid()}@example.com", "name": "Load Test"}
        started = time.perf_counter()
        try:
            async with self.session.post(f"{self.url}/api/signup", json=body) as response:
                answer = await response.json()
                if response.status != 202:
                    self.error(f"signup {response.status}")
                    return None
        except aiohttp.ClientError as exc:
            self.error(f"signup {type(exc).__name__}")
            return None
        self.signup_latency.append(time.perf_counter() - started)
        run_id = answer["workflowId"]
        self.started[run_id] = started
        self.done[run_id] = asyncio.get_running_loop().create_future()
        if run_id in self.emailed:
            self.emailed.discard(run_id)
            self.click_soon(run_id)
        return run_id


async def closed_loop(load: Load, runs: int, concurrency: int, timeout: float) -> float:
    remaining = runs

    async def user() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            run_id = await load.signup()
            if run_id is not None:
                try:
                    await asyncio.wait_for(load.done[run_id], timeout)
                except TimeoutError:
                    load.error("not completed in time")

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return time.perf_counter() - started


async def open_loop(load: Load, rate: float, duration: float, timeout: float) -> float:
    started = time.perf_counter()
    total = int(rate * duration)
    pending: list[asyncio.Task[str | None]] = []
    for i in range(total):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.ensure_future(load.signup()))
    run_ids = [r for r in await asyncio.gather(*pending) if r]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(load.done[r] for r in run_ids)), timeout)
    return time.perf_counter() - started


def server_env() -> dict[str, str]:
    """Compiled bytecode, kept outside the repository, as an installed wheel has it;
    without it every start compiles the package again."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "userflow-bench-pycache")
    return env


def start_server(data_dir: str, extra: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "userflow.http.cli", "serve", "--port", "0", "--data-dir", data_dir,
         "--email-failure-rate", "0", "--signup-rate-limit", "0", "--verify-rate-limit", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**server_env(), **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"listening on (\S+)", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("the server did not start")


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user and system) the process has used so far."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


class InstantReceiver:
    """A webhook receiver that answers 204 at once and counts what it got."""

    def __init__(self) -> None:
        self.received = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.received += 1
        return web.Response(status=204)

    async def __aenter__(self) -> InstantReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def main(args: argparse.Namespace, probe: PgProbe | None = None) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(InstantReceiver()) if args.webhook else None
        result = await measure(args, receiver, probe)
        if receiver is not None:
            result["webhooksReceived"] = receiver.received
        return result


async def measure(args: argparse.Namespace, receiver: InstantReceiver | None, probe: PgProbe | None = None) -> dict[str, Any]:
    proc = None
    url = args.url
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="userflow-load-")
    mailbox = smtp_server = None
    server_args = list(args.server_arg)
    if args.smtp:
        mailbox = Mailbox()
        smtp_server = await asyncio.get_running_loop().create_server(lambda: CountingSMTP(mailbox), "127.0.0.1", 0)
        server_args += ["--smtp-url", f"smtp://127.0.0.1:{smtp_server.sockets[0].getsockname()[1]}"]
    if url is None:
        extra, env = server_args, {}
        if receiver is not None:
            extra += ["--webhook-url", receiver.url]
            env["USERFLOW_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        if args.database_url:
            env["USERFLOW_DATABASE_URL"] = args.database_url
        proc, url = start_server(data_dir, extra, env)
    cpu_at_start = cpu_seconds(proc.pid) if proc else None
    if probe is not None:
        probe.begin()
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            load = Load(url.rstrip("/"), session, mailbox)
            ready = asyncio.Event()
            listener = asyncio.ensure_future(load.listen(ready))
            await ready.wait()
            if args.rate:
                elapsed = await open_loop(load, args.rate, args.duration, args.timeout)
                mode = {"mode": "open", "offeredPerSecond": args.rate, "durationSeconds": args.duration}
            else:
                elapsed = await closed_loop(load, args.runs, args.concurrency, args.timeout)
                mode = {"mode": "closed", "runs": args.runs, "concurrency": args.concurrency}
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await listener
        cpu_at_end = cpu_seconds(proc.pid) if proc else None
        cpu_ms = (cpu_at_end - cpu_at_start) * 1000 if cpu_at_start is not None and cpu_at_end is not None else None
        result = {
            **mode,
            "store": "postgres" if args.database_url else "data dir",
            "elapsedSeconds": round(elapsed, 2),
            "acceptedSignups": len(load.signup_latency),
            "acceptedSignupsPerSecond": round(len(load.signup_latency) / elapsed, 1),
            "signupMs": {"p50": percentile(load.signup_latency, 0.5), "p99": percentile(load.signup_latency, 0.99)},
            "signupToCompletedMs": {"p50": percentile(load.lifecycle, 0.5), "p99": percentile(load.lifecycle, 0.99)},
            "completedRuns": load.completed,
            "completedRunsPerSecond": round(load.completed / elapsed, 1),
            "errors": load.errors,
            "serverRssMiB": rss_mib(proc.pid) if proc else None,
            "serverCpuMsPerCompletedRun": round(cpu_ms / load.completed, 2) if cpu_ms and load.completed else None,
            **({"smtpMessages": mailbox.messages, "smtpConnections": mailbox.connections} if mailbox else {}),
        }
    finally:
        if proc is not None:
            proc.terminate()
            # Waited for off the loop: the SMTP server on it answers the QUITs of the server's shutdown.
            await asyncio.to_thread(proc.wait, 60)
        if smtp_server is not None:
            smtp_server.close()
    if probe is not None:
        result.update(await asyncio.to_thread(probe.end, result["completedRuns"]))
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server; default: start one")
    parser.add_argument("--data-dir", help="data dir for the started server (default: a new temp dir)")
    parser.add_argument("--database-url", help="PostgreSQL for the started server (USERFLOW_DATABASE_URL) instead of the data dir")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL cluster, a fresh database per repetition")
    parser.add_argument("--runs", type=int, default=2000, help="closed loop: number of signups")
    parser.add_argument("--concurrency", type=int, default=64, help="closed loop: users in flight")
    parser.add_argument("--rate", type=float, help="open loop: signups per second offered")
    parser.add_argument("--duration", type=float, default=5.0, help="open loop: seconds of arrivals")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a run may take to complete")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the started server")
    parser.add_argument("--smtp", action="store_true", help="send email over SMTP to a server run here; links from the messages")
    parser.add_argument("--repeat", type=int, default=1, help="measure N times (a fresh server each) and add the medians")
    parser.add_argument("--webhook", action="store_true", help="give the server one webhook URL: a receiver here that answers 204 at once")
    return parser.parse_args(argv)


def medians(results: list[dict[str, Any]]) -> dict[str, Any]:
    def median_of(pick: Any) -> float | None:
        values = [v for v in map(pick, results) if v is not None]
        return round(statistics.median(values), 2) if values else None

    return {
        "medianOf": len(results),
        "mode": "smtp" if "smtpMessages" in results[0] else "outbox",
        "completedRunsPerSecond": median_of(lambda r: r["completedRunsPerSecond"]),
        "acceptedSignupsPerSecond": median_of(lambda r: r["acceptedSignupsPerSecond"]),
        "signupMs": {q: median_of(lambda r, q=q: r["signupMs"][q]) for q in ("p50", "p99")},
        "signupToCompletedMs": {q: median_of(lambda r, q=q: r["signupToCompletedMs"][q]) for q in ("p50", "p99")},
        "serverCpuMsPerCompletedRun": median_of(lambda r: r["serverCpuMsPerCompletedRun"]),
        **({name: median_of(lambda r, name=name: r[name]) for name in ("pgTransactionsPerCompletedRun", "pgCpuMsPerCompletedRun")}
           if "pgCpuMsPerCompletedRun" in results[0] else {}),
        "errors": sum(sum(r["errors"].values()) for r in results),
    }


def repeat(arguments: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    cluster = Cluster().create() if arguments.postgres else None
    try:
        for _ in range(max(1, arguments.repeat)):
            probe = None
            if cluster is not None:
                database = cluster.create_database("loadgen")
                arguments.database_url, probe = cluster.url(database), PgProbe(cluster, database)
            results.append(asyncio.run(main(arguments, probe)))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if cluster is not None:
            cluster.remove()
    return results


if __name__ == "__main__":
    all_results = repeat(parse())
    if len(all_results) > 1:
        print(json.dumps(medians(all_results)))
