"""Several userflow nodes on one PostgreSQL database, as real processes on 127.0.0.1."""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import threading
from collections.abc import Callable
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

from tests.server import Server
from tests.smtp_server import SmtpServer

NODE_TIMEOUT = 2.0


def run_of(message: Message) -> str:
    return message["Message-ID"].strip("<>").split(".", 1)[0]


def token_in(message: Message) -> str:
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    return next(word for word in text.split() if "/verify?token=" in word).split("token=", 1)[1]


class Nodes:
    """The nodes of one database: started, killed, paused and restarted by name."""

    def __init__(self, root: str, database_url: str, smtp: SmtpServer, *flags: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.database_url = database_url
        self.env = {**(env or {}), "USERFLOW_DATABASE_URL": database_url}
        self.flags = ("--smtp-url", smtp.url, "--email-failure-rate", "0", "--node-timeout", str(NODE_TIMEOUT), *flags)
        self.smtp = smtp
        self.nodes: dict[str, Server] = {}
        self.gone: list[Server] = []

    def start(self, name: str, *flags: str) -> Server:
        node = Server(os.path.join(self.root, name), "--node-id", name, *self.flags, *flags, env=self.env)
        self.nodes[name] = node.start()
        return node

    def kill(self, name: str) -> None:
        node = self.nodes.pop(name)
        assert node.kill() == -9
        self.gone.append(node)

    def pause(self, name: str) -> None:
        assert self.nodes[name].proc is not None
        self.nodes[name].proc.send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        assert self.nodes[name].proc is not None
        self.nodes[name].proc.send_signal(signal.SIGCONT)

    def alive(self) -> list[Server]:
        return list(self.nodes.values())

    def other(self, than: Server, rng: random.Random | None = None) -> Server:
        others = [node for node in self.nodes.values() if node is not than]
        return (rng or random).choice(others)

    def stop(self) -> None:
        for node in [*self.nodes.values(), *self.gone]:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
            node.stop()

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def received(smtp: SmtpServer) -> collections.Counter[str]:
    """How many times each Message-ID arrived at the SMTP server."""
    return collections.Counter(m["Message-ID"] for m in list(smtp.handler.messages))


def detail(node: Server, run_id: str) -> dict[str, Any]:
    return node.get(f"/api/workflows/{run_id}")


def attempts_by_node(run: dict[str, Any]) -> list[tuple[str, int, str | None, str, str | None]]:
    """Each attempt of the run: (step, number, node, startedAt, finishedAt)."""
    return [(s["id"], a["number"], a["node"], a["startedAt"], a["finishedAt"]) for s in run["steps"] for a in s["attempts"]]


def overlapping(run: dict[str, Any]) -> list[str]:
    """Attempts of one step that overlap in time (each must end before the next starts)."""
    found = []
    for step in run["steps"]:
        attempts = sorted(step["attempts"], key=lambda a: a["startedAt"])
        for earlier, later in zip(attempts, attempts[1:]):
            if earlier["finishedAt"] is None or earlier["finishedAt"] > later["startedAt"]:
                found.append(f"{step['id']}: attempt {earlier['number']} ({earlier['node']}) and {later['number']} ({later['node']})")
    return found


class EventReader:
    """A client of one node's ``/api/events``, reading in a thread of its own."""

    def __init__(self, node: Server, last_event_id: str | None = None) -> None:
        parts = urlsplit(node.url)
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self._connection.request("GET", "/api/events", headers=headers)
        self._response = self._connection.getresponse()
        assert self._response.status == 200, self._response.status
        self.frames: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        frame: dict[str, Any] = {}
        try:
            for raw in self._response:
                line = raw.decode().rstrip("\n")
                if line:
                    field, _, value = line.partition(": ")
                    frame[field] = json.loads(value) if field == "data" else value
                    continue
                if "id" in frame:
                    with self._changed:
                        self.frames.append(frame)
                        self._changed.notify_all()
                frame = {}
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # the socket was shut down by close()

    def until(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: predicate(self.frames), timeout), f"not seen in {timeout} s: {len(self.frames)} frames"

    def close(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self._connection.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        self._connection.close()


def completed_runs(frames: list[dict[str, Any]]) -> set[str]:
    return {f["data"]["id"] for f in frames if f.get("event") == "run" and f["data"].get("status") == "COMPLETED"}
