"""A real server's start and stop: not ready until recovery has ended, and a signal
stops it cleanly, finishing the request in flight (SPEC sections 1 and 3).

Recovery is held for real: the one run's file is a named pipe, so the start
blocks reading it, exactly as on a disk that is slow to answer, until the test
writes the file's bytes into it. What the test sees meanwhile is the state it
waited for, not a moment it guessed.
"""

from __future__ import annotations

import errno
import os
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
    # No saved index: the start reads the run's file, which becomes a pipe nobody writes yet.
    (tmp_path / "index.snapshot").unlink()
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
            assert second.request("GET", "/readyz") == (503, {"status": "starting"})
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
        assert second.request("GET", "/readyz") == (200, {"status": "ready", "runs": 1})
        assert second.request("GET", f"/api/verify?token={token_of(email['link'])}")[0] == 200
        done = second.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED")
        assert done["user"]["status"] in ("ACTIVE", "FLAGGED")
    finally:
        second.stop()
