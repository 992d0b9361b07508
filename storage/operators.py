"""Operator accounts and their sign-in sessions, in the data dir.

``DATA/operators.json`` holds every account and every open session, hashed:
a token or a session id is never stored, only its SHA-256 (both are 256-bit
random values, so a slow password hash would add nothing)::

    {"version": 1,
     "accounts": [{"name": "alice", "role": "operator", "tokenHash": "<hex>", "createdAt": "<iso>"}],
     "sessions": [{"idHash": "<hex>", "name": "alice", "expiresAt": <epoch seconds>}]}

``userflow operators add|remove`` change it while a server runs, so the
data dir's own lock (held by the server) cannot guard it: every change takes
``DATA/operators.lock`` (an ``flock``), reads the file again, and replaces it
atomically. A reader needs no lock: it sees the old file or the new one, and
notices a change by the file's stamp (a replace makes a new inode).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import orjson

from userflow.actors.timeutil import iso_now
from userflow.storage.atomic import StorageError, write_atomic

FILE = "operators.json"
LOCK = "operators.lock"
TOKEN_PREFIX = "uft_"
SESSIONS_PER_ACCOUNT = 20
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
RESERVED_NAMES = frozenset({"env", "local"})


class Role(StrEnum):
    VIEWER = "viewer"  # reads
    OPERATOR = "operator"  # reads and acts


class AccountError(ValueError):
    """An account change that cannot be made (bad name, taken, unknown)."""


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    token_hash: str
    created_at: str


@dataclass(frozen=True)
class Session:
    id_hash: str
    name: str
    expires_at: float


@dataclass(frozen=True)
class Operators:
    """Everything the file holds, as read at one instant."""

    accounts: tuple[Account, ...] = ()
    sessions: tuple[Session, ...] = ()

    def account(self, name: str) -> Account | None:
        return next((a for a in self.accounts if a.name == name), None)


class OperatorStore(Protocol):
    """Where accounts and sessions are kept: the data dir's file, or the database's tables."""

    where: str  # for messages: the data dir, or the database (no password)

    def stamp(self) -> object:
        """Changes whenever the accounts or sessions change (cheap: asked every second)."""
        ...

    def load(self) -> Operators: ...

    def add(self, name: str, role: Role) -> str: ...

    def remove(self, name: str) -> int: ...

    def open_session(self, name: str, ttl: float) -> tuple[str, Session]: ...

    def end_session(self, id_hash: str) -> bool: ...


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_session(name: str, ttl: float) -> tuple[str, Session]:
    """A session id (for the cookie, never kept) and the record kept of it."""
    session_id = secrets.token_urlsafe(32)
    return session_id, Session(digest(session_id), name, time.time() + ttl)


def new_token() -> str:
    """An operator token: a recognisable prefix (secret scanners find it) and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise AccountError(f"{name!r} is not an account name: lowercase letters, digits, '.', '_' or '-', at most 64")
    if name in RESERVED_NAMES:
        raise AccountError(f"{name!r} is reserved; choose another name")
    return name


class OperatorFile:
    """The accounts and sessions of one data dir."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.where = directory
        self.path = os.path.join(directory, FILE)

    # -- reading (no lock) ------------------------------------------------------------

    def stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever the file is replaced; None while there is no file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> Operators:
        try:
            with open(self.path, "rb") as handle:
                data = orjson.loads(handle.read())
            return Operators(
                tuple(Account(a["name"], Role(a["role"]), a["tokenHash"], a["createdAt"]) for a in data["accounts"]),
                tuple(Session(s["idHash"], s["name"], float(s["expiresAt"])) for s in data["sessions"]),
            )
        except FileNotFoundError:
            return Operators()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(getattr(exc, "errno", None) or 0, f"{self.path} cannot be read: {exc}") from exc

    # -- changing (under the lock) ----------------------------------------------------

    def add(self, name: str, role: Role) -> str:
        """Create the account; its token, which is not kept anywhere."""
        check_name(name)
        token = new_token()
        with self._changing() as current:
            if current.account(name):
                raise AccountError(f"an account named {name!r} already exists; remove it first to replace its token")
            account = Account(name, Role(role), digest(token), iso_now())
            self._write(Operators((*current.accounts, account), current.sessions))
        return token

    def remove(self, name: str) -> int:
        """Remove the account and end its sessions; how many sessions ended."""
        with self._changing() as current:
            if not current.account(name):
                raise AccountError(f"there is no account named {name!r}")
            ended = [s for s in current.sessions if s.name == name]
            self._write(
                Operators(
                    tuple(a for a in current.accounts if a.name != name),
                    tuple(s for s in current.sessions if s.name != name),
                )
            )
        return len(ended)

    def open_session(self, name: str, ttl: float) -> tuple[str, Session]:
        """A new session for the account: its id (for the cookie, not kept) and its record."""
        session_id, session = new_session(name, ttl)
        with self._changing() as current:
            # No check that the account exists: the one from USERFLOW_OPERATOR_TOKEN is not
            # stored, and a session is honoured only while its account exists anyway.
            live = [s for s in current.sessions if s.expires_at > time.time()]
            mine = [s for s in live if s.name == name]
            # The oldest sessions of a busy account make room: the file stays small.
            dropped = {s.id_hash for s in sorted(mine, key=lambda s: s.expires_at)[: max(0, len(mine) + 1 - SESSIONS_PER_ACCOUNT)]}
            kept = tuple(s for s in live if s.id_hash not in dropped)
            self._write(Operators(current.accounts, (*kept, session)))
        return session_id, session

    def end_session(self, id_hash: str) -> bool:
        with self._changing() as current:
            if not any(s.id_hash == id_hash for s in current.sessions):
                return False
            now = time.time()
            kept = tuple(s for s in current.sessions if s.id_hash != id_hash and s.expires_at > now)
            self._write(Operators(current.accounts, kept))
        return True

    @contextmanager
    def _changing(self) -> Iterator[Operators]:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load()
        finally:
            os.close(fd)  # closing drops the flock

    def _write(self, operators: Operators) -> None:
        document = {
            "version": 1,
            "accounts": [
                {"name": a.name, "role": a.role.value, "tokenHash": a.token_hash, "createdAt": a.created_at}
                for a in operators.accounts
            ],
            "sessions": [{"idHash": s.id_hash, "name": s.name, "expiresAt": s.expires_at} for s in operators.sessions],
        }
        write_atomic(self.path, orjson.dumps(document, option=orjson.OPT_INDENT_2), fault_point=False)
