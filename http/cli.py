"""``userflow serve``: bind, recover, serve, and stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import gc

# Importing the server creates its long-lived objects (modules, classes, tables):
# collecting while they are made only rescans them, about 5% of a start.
gc.disable()

import asyncio  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

from aiohttp import web  # noqa: E402

from userflow.http import logs  # noqa: E402
from userflow.http.app import build_app, start_engine  # noqa: E402
from userflow.http.config import Settings, load  # noqa: E402
from userflow.storage import DataDir, DataDirBusy  # noqa: E402

gc.enable()

log = logging.getLogger("userflow")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, data_dir: DataDir) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    # Bind first: with --port 0 the real port is part of the links in emails.
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    app = build_app(settings, data_dir, settings.base_url(port), autostart=False)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=10, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        await start_engine(app)  # /healthz answers meanwhile; /readyz once this is done
        print(f"userflow listening on http://{host}:{port}", flush=True)
        await stop.wait()
        log.info("stopping: finishing requests in flight, then the runs' current steps")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    command, settings = load(argv)
    logs.configure(settings.log_level)
    if command != "serve":
        return 2
    try:
        data_dir = DataDir(settings.data_dir).open()
    except DataDirBusy as exc:
        print(f"userflow: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(settings, data_dir))
    except OSError as exc:
        print(f"userflow: cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        data_dir.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
