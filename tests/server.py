"""A real userflow server in a child process, for restart and kill -9 tests."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

LISTENING = re.compile(r"listening on (http://\S+)")


class Server:
    def __init__(self, data_dir: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.stores_args = ["--data-dir", data_dir]  # how a command such as `userflow operators` finds its stores
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if "USERFLOW_FAULTS" not in (env or {}):
            self.env.pop("USERFLOW_FAULTS", None)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stderr: list[str] = []
        self._read = threading.Condition()  # notified by the reader for every line it appends to stderr
        self.token: str | None = None  # sent with every request() when set (an operator account's)
        self.node_id = "node-" + hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:8]

    def start(self, timeout: float = 30.0) -> Server:
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "userflow.http.cli", "serve", "--port", "0", "--data-dir", self.data_dir,
                # Tests send bursts from one address; a test of the limits passes its own.
                "--signup-rate-limit", "0", "--verify-rate-limit", "0", "--signin-rate-limit", "0",
                # The same node after a restart (the port changes), as a service manager keeps it.
                *([] if "--node-id" in self.args else ["--node-id", self.node_id]),
                *self.args,
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                code = self._reap(10)
                raise RuntimeError(f"server exited ({code}): {''.join(self.stderr[-20:])}")
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
                return self
        raise TimeoutError("server did not print its listening line")

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._read:
                self.stderr.append(line)
                self._read.notify_all()

    def kill(self) -> int:
        """SIGKILL: no cleanup, no flush, exactly like a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self._reap(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def wait_exit(self, timeout: float = 20.0) -> int:
        return self._reap(timeout)

    def _reap(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None or self.token is not None:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body)
        return body

    def wait_for(self, path: str, predicate: Callable[[Any], bool], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        body = None
        while time.monotonic() < deadline:
            status, body = self.request("GET", path)
            if status == 200 and predicate(body):
                return body
            time.sleep(0.02)  # polling interval, not synchronisation: the predicate decides
        raise TimeoutError(f"{path} never satisfied the condition; last: {body}")

    def log_marker(self, timeout: float = 10.0) -> int:
        """Put a line in the server's log and wait until the reader has it: every line logged
        before this call is in ``self.stderr`` afterwards. The index of that line.

        The line is a failed sign-in from an address of its own: the request comes from a
        random source address in 127.0.0.0/8 (all of it is loopback on Linux), and the server
        logs that address. Only this request can have written that line, so a failed sign-in
        logged earlier, still on its way through the pipe, is never taken for the marker."""
        source = f"127.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(2, 255)}"
        parts = urlsplit(self.url)
        assert parts.hostname and parts.port
        with self._read:
            unseen = len(self.stderr)  # the marker is read after every line already here
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15, source_address=(source, 0))
        try:
            body = json.dumps({"token": "log-marker"})
            conn.request("POST", "/api/session", body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 401, answer.status
        finally:
            conn.close()
        marker = f"failed sign-in from {source}"

        def marker_read() -> bool:
            nonlocal unseen
            while unseen < len(self.stderr):
                if marker in self.stderr[unseen]:
                    return True
                unseen += 1
            return False

        with self._read:
            assert self._read.wait_for(marker_read, timeout), f"the marker {marker!r} never reached the log"
            return unseen

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self._reap(10)
