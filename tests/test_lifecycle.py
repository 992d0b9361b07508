"""A real server's start and stop: not ready until recovery has ended, and a signal
stops it cleanly, finishing the request in flight (SPEC sections 1 and 3).

Recovery is held for real: the one run's file is a named pipe, so the start
blocks reading it, exactly as on a disk that is slow to answer, until the test
writes the file's bytes into it. What the test sees meanwhile is the state it
waited for, not a moment it guessed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import wait_until
from tests.server import Server
from tests.smtp_server import free_port

pytestmark = pytest.mark.timeout(60)

FLAGS = ("--email-failure-rate", "0")


def token_of(link: str) -> str:
    return link.split("token=", 1)[1]


def waiting_run(server: Server, email: str = "ann@example.com") -> dict:
    status, accepted = server.request("POST", "/api/signup", {"email": email, "name": "Ann Lee"})
    assert status == 202, accepted
    server.wait_for(f"/api/workflows/{accepted['workflowId']}", lambda d: d["status"] == "WAITING")
    return accepted


def reader_waiting(fifo: str) -> int | None:
    """A writing end of ``fifo`` once something has opened it for reading, else None."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nobody reads it yet
            return None
        raise


def test_readyz_answers_503_until_recovery_has_ended(tmp_path):
    first = Server(str(tmp_path), *FLAGS).start()
    try:
        run_id = waiting_run(first)["workflowId"]
        [email] = first.get("/api/outbox")["emails"]
        assert first.terminate() == 0
    finally:
        first.stop()
    # The start reads the waiting run's file, which becomes a pipe nobody writes yet.
    [path] = (tmp_path / "runs").rglob(f"{run_id}.json")
    content = path.read_bytes()
    path.unlink()
    os.mkfifo(path)

    port = free_port()
    second = Server(str(tmp_path), *FLAGS, "--port", str(port))  # the last --port wins: known before it is ready
    second.url = f"http://127.0.0.1:{port}"
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(second.start)
        try:
            writer = wait_until(lambda: reader_waiting(str(path)), timeout=20, message="recovery never opened the run's file")
            # Recovery is inside the run's file and cannot end before the test writes it.
            assert second.request("GET", "/readyz") == (503, {"status": "starting", "node": second.node_id})
            with urllib.request.urlopen(second.url + "/healthz", timeout=5) as resp:
                assert resp.status == 200  # alive, only not ready
            for method, path_, body in (("GET", f"/api/workflows/{run_id}", None), ("POST", "/api/signup", {"email": "bo@example.com", "name": "Bo"})):
                status, answer = second.request(method, path_, body)
                assert (status, answer["error"]["code"]) == (503, "starting"), (method, path_, answer)
            assert not started.done()

            # The file is a file again for whoever opens it next; the reader gets its bytes.
            spare = path.with_suffix(".fifo-spare")
            spare.write_bytes(content)
            os.replace(spare, path)
            with os.fdopen(writer, "wb") as pipe:
                pipe.write(content)
            started.result(timeout=30)
        finally:
            if not started.done():
                second.stop()
    try:
        assert second.request("GET", "/readyz") == (200, {"status": "ready", "node": second.node_id, "runs": 1})
        assert second.request("GET", f"/api/verify?token={token_of(email['link'])}")[0] == 200
        done = second.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED")
        assert done["user"]["status"] in ("ACTIVE", "FLAGGED")
    finally:
        second.stop()


def send_headers(server: Server, method: str, path: str, length: int) -> socket.socket:
    """A request's head with ``Expect: 100-continue``, once the server has answered 100
    Continue: the request is read and routed, and its handler waits for the body."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=15)
    conn.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        chunk = conn.recv(1)
        assert chunk, f"the connection closed before 100 Continue: {interim!r}"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
    return conn


def refused(server: Server) -> bool:
    """Whether the server no longer takes new connections."""
    host, port = server.url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def read_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    with conn.makefile("rb") as stream:
        line = stream.readline()
        assert line, "the connection was closed with no answer"
        status = int(line.split()[1])
        headers = {}
        while (line := stream.readline().rstrip(b"\r\n")):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers, stream.read(int(headers["content-length"]))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_the_request_in_flight_then_exits_0_with_it_durable(tmp_path, signum):
    server = Server(str(tmp_path), *FLAGS).start()
    again = Server(str(tmp_path), *FLAGS)
    try:
        earlier = waiting_run(server, "ann@example.com")
        body = json.dumps({"email": "cy@example.com", "name": "Cy Young"}).encode()
        conn = send_headers(server, "POST", "/api/signup", len(body))
        with conn:
            server.proc.send_signal(signum)
            wait_until(lambda: "stopping: finishing requests in flight" in "".join(server.stderr), timeout=10)
            wait_until(lambda: refused(server), timeout=10, message="still taking new connections")
            conn.sendall(body)  # the rest of the request in flight, while the server stops
            status, headers, answer = read_response(conn)
        assert status == 202, answer
        accepted = json.loads(answer)
        assert server.wait_exit(20) == 0
        assert "Traceback" not in "".join(server.stderr)

        again.start()
        for run in (earlier, accepted):  # what was accepted, also while stopping, is there
            again.wait_for(f"/api/workflows/{run['workflowId']}", lambda d: d["status"] == "WAITING")
        assert sorted(u["email"] for u in again.get("/api/users")["users"]) == ["ann@example.com", "cy@example.com"]
        assert sorted(e["to"] for e in again.get("/api/outbox")["emails"]) == ["ann@example.com", "cy@example.com"]
    finally:
        server.stop()
        again.stop()
