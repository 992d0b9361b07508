"""Copying a data dir into a PostgreSQL database (``userflow import``).

What moves is what a server needs to carry on where the data dir's server
stopped: every run (its document, its timeline, its lookup keys), the key
verification tokens are derived from, and the operator accounts with their
open sessions. Webhook delivery states are not copied: a server on the
database starts its own deliveries' bookkeeping.

The data dir must be held (``DataDir.open``): its server is stopped, so the
copy is of one consistent state. Opening the run store replays its journal,
so a data dir left by a SIGKILL gives each run's last committed document,
exactly what its server would have read at its next start.

Running it again changes nothing, and an interrupted import is finished by
running it again:

- the token key is written only if the database has none; a database with a
  different key is refused before anything is written (:class:`TokenKeyConflict`),
  since the links the data dir's emails carry would no longer verify;
- runs go in id order (creation order), a batch per transaction, with the
  statements a server's commit uses: a run's row is replaced only by a newer
  version, timeline entries already there stay, and a lookup key held by
  two runs ends with the later one, as in a server's index;
- an account already in the database is left as it is; one with the same
  name but another token or role is reported (its token from the data dir
  would not sign in), and its sessions are not copied.

The command holds the database's server lock too, so no server executes
runs while they are copied. Were one writing, the copy would be safe for
the runs it does not have; for those it has, the newer version is kept,
whichever side it came from, and a lookup key both sides hold (one address
signed up on each) would go to the imported run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb, set_json_dumps
from psycopg_pool import ConnectionPool

from userflow.storage.atomic import StorageError
from userflow.storage.datadir import DataDir
from userflow.storage.operators import Operators, OperatorFile
from userflow.storage.port import StoredRun
from userflow.storage.postgres.connect import one_line
from userflow.storage.postgres.run_sql import INSERT_ENTRY, PUT_KEY, UPSERT_RUN, run_row
from userflow.storage.runs import FileRunStore

BATCH = 500  # runs per transaction: large enough to amortise round trips, small enough to redo
KeysOf = Callable[[Mapping[str, Any]], dict[str, list[str]]]
Progress = Callable[[int, int], None]  # (runs done, runs in all)


class TokenKeyConflict(RuntimeError):
    """The database already has another token key; the message is one line."""


@dataclass
class Imported:
    """What an import found and what it changed."""

    runs_new: int = 0
    runs_updated: int = 0
    runs_unchanged: int = 0
    token_key: str = "none"  # "new", "unchanged", or "none" (the data dir has no key)
    accounts_new: int = 0
    accounts_unchanged: int = 0
    accounts_conflicting: list[str] = field(default_factory=list)  # same name, another token or role
    sessions_new: int = 0

    @property
    def runs(self) -> int:
        return self.runs_new + self.runs_updated + self.runs_unchanged

    @property
    def accounts(self) -> int:
        return self.accounts_new + self.accounts_unchanged + len(self.accounts_conflicting)


def import_data_dir(
    data_dir: DataDir,
    pool: ConnectionPool,
    keys_of: KeysOf,
    *,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> Imported:
    """Copy the held ``data_dir`` into the database of ``pool`` (migrated already).

    Raises TokenKeyConflict before writing anything if the keys differ, and
    StorageError if the data dir cannot be read or the database fails midway
    (what was committed stays; running it again finishes the copy).
    """
    imported = Imported()
    try:
        imported.token_key = copy_token_key(data_dir.stored_secret(), pool)
        copy_operators(OperatorFile(data_dir.path).load(), pool, imported)
        store = FileRunStore(data_dir.path, checkpoint_every=3600.0)  # nothing commits: no checkpoints meanwhile
        try:
            copy_runs(store, pool, keys_of, imported, batch=batch, progress=progress)
        finally:
            store.close()
    except psycopg.Error as exc:
        raise StorageError(5, f"the database failed: {one_line(exc)}") from None
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(exc.errno or 5, f"cannot read {exc.filename or data_dir.path}: {exc.strerror or exc}") from None
    return imported


# -- the token key ------------------------------------------------------------------------


def copy_token_key(key: bytes | None, pool: ConnectionPool) -> str:
    """Give the database the data dir's key: "new", "unchanged", or "none" if there is no key."""
    if key is None:
        return "none"
    with pool.connection() as connection, connection.transaction():
        inserted = connection.execute(
            "INSERT INTO secrets (name, value) VALUES ('tokens', %s) ON CONFLICT (name) DO NOTHING", (key,)
        ).rowcount
        if inserted:
            return "new"
        row = connection.execute("SELECT value FROM secrets WHERE name = 'tokens'").fetchone()
    if row is None or bytes(row[0]) != key:
        raise TokenKeyConflict(
            "the database already has a token key, not the data dir's: the verification links its emails "
            "carry would stop verifying. Import into a database of its own (no userflow server has used it)"
        )
    return "unchanged"


# -- operator accounts --------------------------------------------------------------------


def copy_operators(operators: Operators, pool: ConnectionPool, imported: Imported) -> None:
    """Add the accounts the database lacks, and the open sessions of the accounts both agree on."""
    if not operators.accounts:
        return
    names = [account.name for account in operators.accounts]
    with pool.connection() as connection, connection.transaction():
        present = {
            name: (role, token_hash)
            for name, role, token_hash in connection.execute(
                "SELECT name, role, token_hash FROM operator_accounts WHERE name = ANY(%s)", (names,)
            ).fetchall()
        }
        agreed: set[str] = set()
        for account in operators.accounts:
            mine = (account.role.value, account.token_hash)
            if account.name in present:
                if present[account.name] == mine:
                    imported.accounts_unchanged += 1
                    agreed.add(account.name)
                else:
                    imported.accounts_conflicting.append(account.name)
                continue
            # No conflict target: a token hash another name holds is as much a conflict as the name.
            inserted = connection.execute(
                "INSERT INTO operator_accounts (name, role, token_hash, created_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (account.name, account.role.value, account.token_hash, datetime.fromisoformat(account.created_at)),
            ).rowcount
            if inserted:
                imported.accounts_new += 1
                agreed.add(account.name)
            else:
                imported.accounts_conflicting.append(account.name)
        now = time.time()
        for session in operators.sessions:
            if session.name in agreed and session.expires_at > now:
                imported.sessions_new += connection.execute(
                    "INSERT INTO operator_sessions (id_hash, name, expires_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (id_hash) DO NOTHING",
                    (session.id_hash, session.name, datetime.fromtimestamp(session.expires_at, tz=timezone.utc)),
                ).rowcount


# -- runs ---------------------------------------------------------------------------------


def copy_runs(
    store: FileRunStore,
    pool: ConnectionPool,
    keys_of: KeysOf,
    imported: Imported,
    *,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> None:
    """Every run of ``store``, oldest first, ``batch`` runs per transaction."""
    run_ids = sorted(run["id"] for run in store.scan())
    if progress is not None:
        progress(0, len(run_ids))
    for start in range(0, len(run_ids), batch):
        stored = [found for found in map(store.read, run_ids[start : start + batch]) if found is not None]
        with pool.connection() as connection, connection.transaction():
            # orjson writes the documents several times faster than the json module,
            # which is most of an import's own time; the same JSON either way.
            set_json_dumps(orjson.dumps, connection)
            _copy_batch(connection, stored, keys_of, imported)
        if progress is not None:
            progress(min(start + batch, len(run_ids)), len(run_ids))


def _copy_batch(connection: psycopg.Connection, stored: list[StoredRun], keys_of: KeysOf, imported: Imported) -> None:
    # Ask first which runs the database already has as new or newer: a second
    # import then sends no document at all.
    have = dict(
        connection.execute(
            "SELECT id, version FROM runs WHERE id = ANY(%s)", ([item.run["id"] for item in stored],)
        ).fetchall()
    )
    newer = [item for item in stored if have.get(item.run["id"], -1) < int(item.run["version"])]
    imported.runs_unchanged += len(stored) - len(newer)
    if not newer:
        return
    with connection.cursor() as cursor:
        # RETURNING says which rows were written, and whether as new (xmax is 0
        # for a row this transaction inserted); a run a server moved on meanwhile is not.
        cursor.executemany(UPSERT_RUN + " RETURNING id, xmax = 0", [run_row(item.run) for item in newer], returning=True)
        written: dict[str, bool] = {}
        for result in cursor.results():
            row = result.fetchone()
            if row is not None:
                written[row[0]] = row[1]
        imported.runs_new += sum(written.values())
        imported.runs_updated += len(written) - sum(written.values())
        imported.runs_unchanged += len(newer) - len(written)
        copied = [item for item in newer if item.run["id"] in written]
        entries = [(item.run["id"], entry["seq"], Jsonb(entry)) for item in copied for entry in item.timeline]
        if entries:
            cursor.executemany(INSERT_ENTRY, entries)
        keys = list(_keys(copied, keys_of))
        if keys:
            cursor.executemany(PUT_KEY, keys)


def _keys(copied: list[StoredRun], keys_of: KeysOf) -> Iterable[tuple[str, str, str]]:
    for item in copied:
        try:
            kinds = keys_of(item.run)
        except LookupError:  # a workflow this release does not ship: its run is kept, findable by id only
            continue
        for kind, values in kinds.items():
            for value in values:
                yield kind, value, item.run["id"]
