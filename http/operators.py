"""``userflow operators add|list|remove``: operator accounts, also while the server runs.

``add`` prints the new token alone on standard output, so that
``TOKEN=$(userflow operators add alice --role operator)`` works; everything
else a person should read goes to standard error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import orjson

from userflow.storage import StorageError
from userflow.storage.operators import AccountError, OperatorFile, OperatorStore, Role


def run(args: argparse.Namespace) -> int:
    if args.database_url:
        return _on_database(args)
    return _on(OperatorFile(os.path.abspath(args.data_dir)), args)


def _on_database(args: argparse.Namespace) -> int:
    from userflow.storage.postgres import DatabaseUnavailable, SchemaBusy, SchemaTooNew
    from userflow.storage.postgres.stores import PgStores

    try:
        stores = PgStores.open(args.database_url, max_connections=2)
    except (DatabaseUnavailable, SchemaTooNew, SchemaBusy) as exc:
        print(f"userflow: {exc}", file=sys.stderr)
        return 2
    try:
        return _on(stores.operators, args)
    finally:
        stores.close()


def _on(store: OperatorStore, args: argparse.Namespace) -> int:
    try:
        if args.action == "add":
            token = store.add(args.name, Role(args.role))
            print(token, flush=True)
            print(
                f"added {args.name} ({args.role}) to {store.where}; this token is shown once, keep it secret",
                file=sys.stderr,
            )
        elif args.action == "remove":
            ended = store.remove(args.name)
            print(f"removed {args.name}; {ended} session(s) ended", file=sys.stderr)
        else:
            _list(store, args.json)
    except AccountError as exc:
        print(f"userflow: {exc}", file=sys.stderr)
        return 1
    except (StorageError, OSError) as exc:
        print(f"userflow: cannot use the accounts of {store.where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


def _list(store: OperatorStore, as_json: bool) -> None:
    operators = store.load()
    now = time.time()
    rows = [
        {
            "name": a.name,
            "role": a.role.value,
            "createdAt": a.created_at,
            "sessions": sum(1 for s in operators.sessions if s.name == a.name and s.expires_at > now),
        }
        for a in operators.accounts
    ]
    if as_json:
        print(orjson.dumps({"accounts": rows}).decode())
        return
    if not rows:
        print("no operator accounts: the operator surface answers only local clients", file=sys.stderr)
        return
    width = max(len(r["name"]) for r in rows)
    print(f"{'NAME':<{width}}  ROLE      CREATED                   SESSIONS")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['role']:<8}  {r['createdAt']:<24}  {r['sessions']}")
