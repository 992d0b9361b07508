"""Webhook deliveries per second when a backlog is released at once.

    python -m tests.perf.webhook_backlog --users 10000

Starts a server with one webhook URL pointing at a receiver here that holds
every request without answering (a receiver that is down but accepts
connections), signs ``--users`` people up (one ``user.created`` event each,
so one delivery each, every one in its own lane), waits until the server has
its full complement of requests in flight, then lets the receiver answer
everything with 204 and times how long the backlog takes to arrive. Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from typing import Any

import aiohttp
from aiohttp import web

from tests.perf.loadgen import WEBHOOK_SECRET, start_server


class HoldingReceiver:
    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.waiting = 0
        self.answered = 0
        self.done = asyncio.Event()
        self.target = 0

    async def hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.waiting += 1
        await self.released.wait()
        self.answered += 1
        if self.answered >= self.target:
            self.done.set()
        return web.Response(status=204)


async def signups(url: str, users: int, concurrency: int = 64) -> None:
    counter = iter(range(users))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for n in counter:
                async with session.post(f"{url}/api/signup", json={"email": f"backlog{n}@example.com", "name": "Back Log"}) as resp:
                    assert resp.status == 202, await resp.text()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    receiver = HoldingReceiver()
    receiver.target = args.users
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    hook_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    data_dir = tempfile.mkdtemp(prefix="userflow-backlog-")
    proc, url = start_server(
        data_dir,
        ["--webhook-url", hook_url, "--webhook-timeout", "3600", "--email-failure-rate", "0", "--verify-ttl", "86400"],
        {"USERFLOW_WEBHOOK_SECRET": WEBHOOK_SECRET},
    )
    try:
        made = time.perf_counter()
        await signups(url, args.users)
        signup_seconds = time.perf_counter() - made
        while receiver.waiting < min(args.users, 64):  # the server's attempts in flight are all held
            await asyncio.sleep(0.05)
        started = time.perf_counter()
        receiver.released.set()
        await asyncio.wait_for(receiver.done.wait(), args.timeout)
        elapsed = time.perf_counter() - started
        return {
            "users": args.users,
            "signupSeconds": round(signup_seconds, 1),
            "releasedToAllDeliveredSeconds": round(elapsed, 2),
            "deliveriesPerSecond": round(args.users / elapsed, 1),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=600.0)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
