"""A throwaway PostgreSQL cluster for the tests: made at the start, removed at the end.

The tests use a real server, never a mock: what is tested is how userflow
behaves against PostgreSQL itself (its locks, its crash recovery). The
cluster lives in a temporary directory, listens on a free port of 127.0.0.1
and on a unix socket in that directory, and trusts every local connection
(nothing else can reach it).

``initdb`` and ``postgres`` refuse to run as root, and CI runs as root: then
they run as Debian's ``postgres`` user (``runuser``) in a directory that user
owns. The binaries are Debian's (``/usr/lib/postgresql/VERSION/bin``, not on
PATH); ``USERFLOW_PG_BIN`` names another directory.

``fsync`` stays on: durability tests stop the server with ``pg_ctl stop -m
immediate`` (every server process killed at once, as by a crash) and check
what it kept.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import psycopg

OWNER = "postgres"  # the system user Debian's package creates, and the database superuser
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def binaries() -> str | None:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres``: the newest Debian install."""
    chosen = os.environ.get("USERFLOW_PG_BIN")
    if chosen:
        return chosen if os.path.exists(os.path.join(chosen, "initdb")) else None
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda path: int(re.sub(r"\D", "", path.split("/")[4]) or 0))
        return os.path.dirname(newest)
    on_path = shutil.which("initdb")
    return os.path.dirname(on_path) if on_path else None


def missing() -> str | None:
    """Why a cluster cannot be made here, or None if it can."""
    if binaries() is None:
        return "no PostgreSQL binaries (apt-get install postgresql, or set USERFLOW_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            return f"running as root needs the {OWNER!r} user to run the server (Debian's postgresql package creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """One PostgreSQL cluster in a temporary directory; see the module docstring."""

    def __init__(self) -> None:
        bindir = binaries()
        if bindir is None:
            raise RuntimeError(missing())
        self.bindir = bindir
        self.directory = tempfile.mkdtemp(prefix="userflow-pg-")
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "server.log")
        self.port = 0
        self.started_in = 0.0  # seconds from nothing to accepting connections (initdb included)
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam(OWNER)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", OWNER, "--"]
        self._databases = 0

    # -- lifecycle --------------------------------------------------------------------

    def create(self) -> Cluster:
        """initdb and start; the directory is removed again if either fails."""
        began = time.perf_counter()
        try:
            self._run(
                "initdb", "-D", self.data, "--auth=trust", f"--username={OWNER}", "--encoding=UTF8",
                # The C locale: the same sort order on every machine, and the fastest initdb.
                "--locale=C",
                # initdb's own final sync only guards against the machine losing power
                # before the tests end; the server's fsync stays on.
                "--no-sync", "--no-instructions",
            )  # fmt: skip
            self._start(new_port=True)
        except BaseException:
            self.remove()
            raise
        self.started_in = time.perf_counter() - began
        return self

    def _start(self, new_port: bool) -> None:
        # Another process may take the free port between the probe and the bind: try anew.
        for attempt in range(3):
            if new_port or not self.port:
                self.port = _free_port()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.directory}'",
                "fsync": "on",
            }
            options = " ".join(f"-c {name}={value}" for name, value in settings.items())
            done = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, "start", check=False)
            if done.returncode == 0:
                return
            if "could not bind" not in self.log_tail() or attempt == 2:
                raise RuntimeError(f"PostgreSQL did not start ({done.returncode}): {done.stderr.strip()}\n{self.log_tail()}")
            new_port = True

    def start(self) -> None:
        """Start it again after ``stop_immediately`` (same port: URLs handed out stay valid)."""
        self._start(new_port=False)

    def stop_immediately(self) -> None:
        """Every server process killed at once: the next start recovers from the WAL, as after a crash."""
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    @property
    def running(self) -> bool:
        return self._run("pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def remove(self) -> None:
        """Stop the server (if it runs) and delete everything it had."""
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self._as_owner, os.path.join(self.bindir, program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{self.log_tail()}")
        return done

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- databases --------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{OWNER}@127.0.0.1:{self.port}/{database}"

    @contextlib.contextmanager
    def admin(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            yield connection

    def create_database(self, purpose: str) -> str:
        """A new empty database, named after ``purpose`` (a test's name) and unique."""
        self._databases += 1
        stem = re.sub(r"[^a-z0-9]+", "_", purpose.lower()).strip("_")[:40]
        name = f"{stem}_{self._databases}"
        with self.admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop it, ending any connection a test left open."""
        with self.admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- the server's processes -------------------------------------------------------

    def postmaster_pid(self) -> int:
        with open(os.path.join(self.data, "postmaster.pid")) as handle:
            return int(handle.readline())

    def server_pids(self) -> list[int]:
        """The postmaster and every process it started (backends, writers, WAL, autovacuum)."""
        parent = self.postmaster_pid()
        pids = [parent]
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _stat(int(entry)).get("ppid") == parent:
                pids.append(int(entry))
        return pids

    def cpu_seconds(self) -> float:
        """CPU time (user and system) the server has used: its live processes and
        those that have ended (the postmaster collects their time as it reaps them)."""
        total = 0.0
        parent = self.postmaster_pid()
        for pid in self.server_pids():
            fields = _stat(pid)
            total += fields.get("utime", 0) + fields.get("stime", 0)
            if pid == parent:
                total += fields.get("cutime", 0) + fields.get("cstime", 0)
        return total / _CLOCK_TICKS


def _stat(pid: int) -> dict[str, int]:
    """The fields of ``/proc/PID/stat`` the helpers read; empty if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    # The command name is in parentheses and may hold spaces: split after its last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return {"ppid": int(fields[1]), "utime": int(fields[11]), "stime": int(fields[12]), "cutime": int(fields[13]), "cstime": int(fields[14])}
