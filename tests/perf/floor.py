"""What the parts cost on their own: the floor under a run's CPU time.

    python -m tests.perf.floor

Measures, on this machine, with nothing of userflow in the way:

- an aiohttp server with one handler that parses a small JSON body and
  answers 202 (no engine behind it), driven by the load generator's client
  at 64 requests in flight: requests/s, in a process of its own;
- pykka: starting and stopping a ThreadingActor (a run's activation), and
  one ``tell`` from actor to actor (a routed message);
- the journal: 64 threads committing 4 KiB documents (each waits for its
  group's fdatasync).

A completed signup needs 3 HTTP requests (signup, click, and its share of
the event stream), 2 activations (before the wait and after the click),
about 20 actor messages and 9 commits; the printed ``floorMsPerRun`` adds
those up. It is a floor: the steps, the index, the event stream, metrics
and logs come on top.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import aiohttp
import pykka

from userflow.storage.journal import Journal

_SERVER = """
import socket, sys
from aiohttp import web
async def handle(request):
    body = await request.json()
    return web.json_response({"workflowId": "wf_" + body["email"]}, status=202)
app = web.Application()
app.router.add_post("/api/signup", handle)
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(1024)
print(sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, access_log=None)
"""


async def http_rate(requests: int = 20_000, concurrency: int = 64) -> float:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    url = f"http://127.0.0.1:{port}/api/signup"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            remaining = iter(range(requests))

            async def user() -> None:
                for n in remaining:
                    async with session.post(url, json={"email": f"u{n}@example.com", "name": "U"}) as response:
                        await response.read()

            started = time.perf_counter()
            await asyncio.gather(*(user() for _ in range(concurrency)))
            return requests / (time.perf_counter() - started)
    finally:
        proc.terminate()
        proc.wait()


class _Echo(pykka.ThreadingActor):
    def __init__(self, done: threading.Event, count: int) -> None:
        super().__init__()
        self.done, self.left = done, count

    def on_receive(self, message: object) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


def actor_starts(count: int = 2_000) -> float:
    started = time.perf_counter()
    for _ in range(count):
        _Echo.start(threading.Event(), 1).stop()
    return count / (time.perf_counter() - started)


def actor_tells(per: int = 1_000, senders: int = 64) -> float:
    done = threading.Event()
    count = per * senders
    target = _Echo.start(done, count)

    def send() -> None:
        for _ in range(per):
            target.tell("ping")

    threads = [threading.Thread(target=send) for _ in range(senders)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    assert done.wait(120), "the messages did not all arrive"
    elapsed = time.perf_counter() - started
    target.stop()
    return count / elapsed


def journal_commits(writers: int = 64, each: int = 200) -> float:
    directory = tempfile.mkdtemp(prefix="userflow-floor-")
    journal = Journal(directory)
    document = os.urandom(2048).hex().encode()  # 4 KiB

    def commit(n: int) -> None:
        for version in range(each):
            journal.append(f"run_{n}", version, document)

    threads = [threading.Thread(target=commit, args=(n,)) for n in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    journal.close()
    return writers * each / elapsed


def main() -> None:
    http = asyncio.run(http_rate())
    starts = actor_starts()
    tells = actor_tells()
    commits = journal_commits()
    floor = 3 * 1000 / http + 2 * 1000 / starts + 20 * 1000 / tells + 9 * 1000 / commits
    print(json.dumps({
        "httpRequestsPerSecond": round(http),
        "actorStartStopsPerSecond": round(starts),
        "actorTellsPerSecond": round(tells),
        "journalCommitsPerSecond": round(commits),
        "floorMsPerRun": round(floor, 2),
        "floorRunsPerSecond": round(1000 / floor),
    }))


if __name__ == "__main__":
    main()
