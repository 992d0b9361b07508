"""``userflow import``: a data dir's runs, users, token key and operator accounts into a database.

The copying is ``storage/transfer.py``'s; this is the command around it:
taking the data dir's lock and the database's (a server holding either is
to be stopped first), a progress bar while the runs go, and one line saying
what was copied. Everything is written to standard error; standard output
stays empty. The database is named by its URL without the password.

Exit status: 0 when everything was copied; 1 for what the person must
settle (a directory that is no data dir, an account the database has with
another token); 2 when a store cannot be used (the data dir busy, the
database unreachable, used by a server or holding another token key, a
failure midway: run it again to finish).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from typing import TextIO

from userflow.storage import DataDir, DataDirBusy, StorageError
from userflow.storage.postgres.connect import parse, where
from userflow.storage.transfer import BATCH, Imported, TokenKeyConflict, import_data_dir

#: What a data dir holds once a server has used it; a directory with none of these is not one.
DATA_DIR_MARKS = ("runs", "journal", "secret.key", "operators.json")


def run(args: argparse.Namespace) -> int:
    # What the stores log on the way (a damaged journal tail, a quarantined run
    # file) is worth reading; their routine progress is not.
    logging.basicConfig(level=logging.WARNING, format="userflow: %(message)s")
    path = os.path.abspath(args.data_dir)
    if not args.database_url:
        return _fail("import needs --database-url (or USERFLOW_DATABASE_URL): the database to copy into", 1)
    database = where(parse(args.database_url))
    if not os.path.isdir(path):
        return _fail(f"{path} is not a directory: nothing to import", 1)
    if not any(os.path.exists(os.path.join(path, mark)) for mark in DATA_DIR_MARKS):
        return _fail(f"{path} holds no userflow data (no runs, journal, secret.key or operators.json): nothing to import", 1)
    try:
        data_dir = DataDir(path).open()
    except DataDirBusy as exc:
        return _fail(f"a userflow server (pid {exc.holder}) is using {path}; stop it first, so that the copy is of a data dir nobody is changing", 2)
    except OSError as exc:
        return _fail(f"cannot use data dir {path}: {exc.strerror or exc}", 2)
    try:
        return _import(data_dir, args.database_url, database, args.batch or BATCH)
    finally:
        data_dir.close()


def _import(data_dir: DataDir, url: str, database: str, batch: int) -> int:
    from userflow.actors.definitions import Definitions
    from userflow.actors.signup import SIGNUP
    from userflow.storage.postgres import DatabaseUnavailable, SchemaBusy, SchemaTooNew
    from userflow.storage.postgres.stores import DatabaseBusy, PgStores

    try:
        stores = PgStores.open(url, max_connections=2)
    except (DatabaseUnavailable, SchemaTooNew, SchemaBusy) as exc:
        return _fail(str(exc), 2)
    try:
        # The lock a server holds on its database: none may be executing the runs
        # being copied, nor start on them halfway through.
        stores.claim()
    except (DatabaseBusy, DatabaseUnavailable) as exc:
        stores.close()
        return _fail(str(exc), 2)
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    started = time.monotonic()
    try:
        imported = import_data_dir(
            data_dir, stores.pool, Definitions([SIGNUP]).keys, batch=batch, progress=bar.show if bar else None
        )
    except TokenKeyConflict as exc:
        return _fail(f"refusing to import {data_dir.path} into {database}: {exc}", 2)
    except StorageError as exc:
        return _fail(f"the import of {data_dir.path} into {database} stopped: {exc.strerror or exc}; what was copied stays, run it again to finish", 2)
    finally:
        if bar is not None:
            bar.clear()
        stores.close()
    print(summary(imported, data_dir.path, database, time.monotonic() - started), file=sys.stderr, flush=True)
    for name in imported.accounts_conflicting:
        print(
            f"userflow: the account {name!r} was not imported: {database} has an account of that name with another "
            f"token or role, which stays; its token from the data dir does not sign in there",
            file=sys.stderr,
        )
    return 1 if imported.accounts_conflicting else 0


def summary(imported: Imported, source: str, database: str, seconds: float) -> str:
    """The one line said at the end: what was copied, what was there already."""
    runs = (
        f"{imported.runs:,} run{'s' if imported.runs != 1 else ''} ({imported.runs_new:,} new, "
        f"{imported.runs_updated:,} updated, {imported.runs_unchanged:,} unchanged)"
    )
    conflicting = f", {len(imported.accounts_conflicting)} not imported" if imported.accounts_conflicting else ""
    sessions = f" with {imported.sessions_new} open session{'s' if imported.sessions_new != 1 else ''}" if imported.sessions_new else ""
    accounts = (
        f"{imported.accounts} operator account{'s' if imported.accounts != 1 else ''} "
        f"({imported.accounts_new} new, {imported.accounts_unchanged} unchanged{conflicting}){sessions}"
        if imported.accounts
        else "no operator accounts"
    )
    key = {"new": "the token key (new)", "unchanged": "the token key (unchanged)", "none": "no token key (the data dir has none)"}[imported.token_key]
    return f"imported {runs}, {accounts}, {key}, from {source} into {database} in {seconds:.1f} s"


class ProgressBar:
    """One line on a terminal, rewritten in place (``\\r``) at most ten times a second."""

    EVERY = 0.1
    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._shown_at = 0.0
        self._length = 0

    def show(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._shown_at < self.EVERY:
            return
        self._shown_at = now
        filled = self.WIDTH * done // total if total else self.WIDTH
        rate = done / (now - self._started) if now > self._started else 0.0
        line = (
            f"importing runs [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done:,}/{total:,}"
            f" {100 * done // total if total else 100}% {rate:,.0f} runs/s"
        )
        line = line[: shutil.get_terminal_size().columns - 1]
        self._write("\r" + line.ljust(self._length))  # the padding covers a longer line before
        self._length = len(line)

    def clear(self) -> None:
        if self._length:
            self._write("\r" + " " * self._length + "\r")
            self._length = 0

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def _fail(message: str, status: int) -> int:
    print(f"userflow: {message}", file=sys.stderr)
    return status
