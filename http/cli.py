"""``userflow``: ``serve`` (bind, recover, serve, stop cleanly on SIGINT/SIGTERM), ``operators`` and ``import``.

Every reason ``serve`` cannot start is one line on standard error naming the
cause, and exit status 2; a traceback is for bugs, not for a busy port or a
data dir that is not a directory.
"""

from __future__ import annotations

import gc

# Importing the server creates its long-lived objects (modules, classes, tables):
# collecting while they are made only rescans them, about 5% of a start.
gc.disable()

import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

from aiohttp import web  # noqa: E402

from userflow.actors.signup.smtp import SmtpSettingsError  # noqa: E402
from userflow.actors.signup.templates import TemplateError  # noqa: E402
from userflow.http import logs  # noqa: E402
from userflow.http.app import build_app, start_engine  # noqa: E402
from userflow.http.clients import is_loopback_host  # noqa: E402
from userflow.http.config import Settings, parser, settings_from  # noqa: E402
from userflow.http.protocol import Runner  # noqa: E402
from userflow.storage import DataDir, DataDirBusy, StorageError  # noqa: E402
from userflow.storage.stores import FileStores, Stores  # noqa: E402

gc.enable()

log = logging.getLogger("userflow")


class StartupError(Exception):
    """Why the server cannot start, in one line for the person who started it."""


def reason(exc: OSError) -> str:
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename:
        return f"{exc.filename} is not a directory"
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc.strerror or exc)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def open_data_dir(settings: Settings) -> DataDir:
    try:
        return DataDir(settings.data_dir).open()
    except DataDirBusy as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot use data dir {settings.data_dir}: {reason(exc)}") from None


def open_stores(settings: Settings) -> Stores:
    """The database when a URL is given (connected, migrated, watched), else the data dir."""
    if not settings.database_url:
        return FileStores(open_data_dir(settings))
    from userflow.actors.definitions import Definitions
    from userflow.actors.signup import SIGNUP
    from userflow.storage.postgres import DatabaseUnavailable, SchemaBusy, SchemaTooNew
    from userflow.storage.postgres.stores import DatabaseBusy, PgStores

    try:
        stores = PgStores.open(settings.database_url, Definitions([SIGNUP]).describe)
    except (DatabaseUnavailable, SchemaTooNew, SchemaBusy) as exc:
        raise StartupError(str(exc)) from None
    try:
        stores.watch()
    except (DatabaseBusy, DatabaseUnavailable) as exc:
        stores.close()
        raise StartupError(str(exc)) from None
    except StorageError as exc:
        stores.close()
        raise StartupError(str(exc.strerror or exc)) from None
    return stores


def check_exposure(settings: Settings, stores: Stores) -> bool:
    """Whether operator accounts exist; refuse a non-loopback address without one."""
    try:
        accounts = bool(stores.operators.load().accounts)
    except StorageError as exc:
        raise StartupError(f"cannot read the operator accounts: {exc.strerror or exc}") from None
    accounts = accounts or bool(settings.operator_token)
    if not accounts and not is_loopback_host(settings.host):
        where = "--database-url \"$USERFLOW_DATABASE_URL\"" if settings.database_url else f"--data-dir {settings.data_dir}"
        raise StartupError(
            f"refusing to listen on {settings.host} with no operator account: anyone who reaches it could "
            f"read and act on every user. Add one with `userflow operators add NAME --role operator "
            f"{where}` (or set USERFLOW_OPERATOR_TOKEN), or listen on 127.0.0.1"
        )
    return accounts


async def serve(settings: Settings, stores: Stores, accounts: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    # Bind first: with --port 0 the real port is part of the links in emails, and of the node's id.
    sock = _bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    settings = dataclasses.replace(settings, node_id=settings.node_id or f"{socket.gethostname()}:{port}")
    try:
        await asyncio.to_thread(stores.join, settings.node_id, settings.node_timeout, settings.base_url(port))
    except Exception as exc:  # NodeIdTaken, DatabaseBusy (an import under way), DatabaseUnavailable
        sock.close()
        raise StartupError(str(exc)) from None
    try:
        app = build_app(settings, stores, settings.base_url(port), autostart=False)
    except (TemplateError, SmtpSettingsError, StorageError) as exc:  # a template, the sender address, the token key
        sock.close()
        raise StartupError(getattr(exc, "strerror", None) or str(exc)) from None
    runner = Runner(app, handle_signals=False, shutdown_timeout=10, access_log=None)
    try:
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
            await start_engine(app)  # /healthz answers meanwhile; /readyz once this is done
        except (OSError, StorageError) as exc:
            raise StartupError(f"cannot use {stores.where}: {reason(exc)}") from None
        if not accounts:
            log.warning("no operator account: the dashboard and operator API answer only local clients (127.0.0.1, ::1)")
        logs.flush()  # the start-up log is out before anyone is told the server listens
        print(f"userflow listening on http://{host}:{port}", flush=True)
        await stop.wait()
        log.info("stopping: finishing requests in flight, then the runs' current steps")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "operators":
        from userflow.http import operators

        return operators.run(args)
    if args.command == "import":
        from userflow.http import importer

        return importer.run(args)
    settings = settings_from(args)
    logs.configure(settings.log_level)
    try:
        stores = open_stores(settings)
    except StartupError as exc:
        logs.flush()
        print(f"userflow: {exc}", file=sys.stderr)
        return 2
    try:
        accounts = check_exposure(settings, stores)
        asyncio.run(serve(settings, stores, accounts))
    except StartupError as exc:
        logs.flush()
        print(f"userflow: {exc}", file=sys.stderr)
        return 2
    finally:
        stores.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
