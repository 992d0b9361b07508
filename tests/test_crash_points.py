"""Every crash point, for real: the server kills itself there, restarts, and the run ends right.

For each point a server starts with ``USERFLOW_FAULTS`` naming it, a user signs
up (and verifies, for points after the wait), the process dies with status
137 at that point, and a server without the fault on the same data dir must
finish the run (on each store): user ACTIVE, one user, and exactly one verification email
delivered to a real SMTP server -- two with the same Message-ID only when the
crash fell between the SMTP server's acceptance and the record of it.
"""

from __future__ import annotations

import urllib.error

import pytest

from tests.server import Server
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.timeout(120)

BEFORE_WAIT = "before-wait"  # the process dies before the user can click
AFTER_VERIFY = "after-verify"  # the user clicks, then the process dies

POINTS = [
    ("create-user:before-run", BEFORE_WAIT, 1),
    ("create-user:before-commit", BEFORE_WAIT, 1),
    ("send-verification-email:before-run", BEFORE_WAIT, 1),
    ("send-verification-email:after-send", BEFORE_WAIT, 2),
    ("send-verification-email:before-commit", BEFORE_WAIT, 1),
    ("wait-for-verification:before-run", BEFORE_WAIT, 1),
    ("signal:after-commit", AFTER_VERIFY, 1),
    ("wait-for-verification:before-commit", AFTER_VERIFY, 1),
    ("ai-risk-check:before-run", AFTER_VERIFY, 1),
    ("ai-risk-check:before-commit", AFTER_VERIFY, 1),
    ("finalize-user:before-run", AFTER_VERIFY, 1),
    ("finalize-user:before-commit", AFTER_VERIFY, 1),
]
TASKS = ("create-user", "send-verification-email", "ai-risk-check", "finalize-user")


def link_in(message) -> str:
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    return next(word for word in text.split() if "/verify?token=" in word)


def try_request(server: Server, method: str, path: str, body=None):
    """A request to a server that may die while answering it."""
    try:
        return server.request(method, path, body)
    except (urllib.error.URLError, ConnectionError, OSError):
        return None, None


@pytest.mark.parametrize("point,phase,expected_sends", POINTS, ids=[p[0] for p in POINTS])
def test_crash_point(stores_at, point, phase, expected_sends):
    scope, where = point.split(":")
    with SmtpServer() as smtp:
        flags = ("--smtp-url", smtp.url, "--email-failure-rate", "0")
        doomed = stores_at.server(*flags, env={"USERFLOW_FAULTS": f"crash:{point}"})
        survivor = stores_at.server(*flags)
        try:
            doomed.start()
            status, answer = try_request(doomed, "POST", "/api/signup", {"email": "ann@example.com", "name": "Ann Lee"})
            # None: the first step's crash point came before the 202 left (nothing was promised).
            assert status == 202 or (status is None and phase == BEFORE_WAIT)
            if phase == AFTER_VERIFY:
                run_id = answer["workflowId"]
                [message] = smtp.handler.wait_for(1)
                doomed.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING")
                status, _ = try_request(doomed, "GET", "/api/verify?token=" + link_in(message).split("token=")[1])
                assert status in (200, None)  # None: the process died before the answer left
            assert doomed.wait_exit(30) == 137
            assert f"fault injected at crash:{point}" in "".join(doomed.stderr)

            survivor.start()
            if answer is None:  # the person signs up again, as anyone would: the same run answers
                status, answer = survivor.request("POST", "/api/signup", {"email": "ann@example.com", "name": "Ann Lee"})
                assert status == 202
            run_id = answer["workflowId"]
            if phase == AFTER_VERIFY and status is None:
                # No answer was given to the click, so nothing was promised: the person clicks
                # again, and a click that was recorded after all answers the same 200.
                survivor.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] in ("WAITING", "RUNNING", "COMPLETED"))
                status, _ = survivor.request("GET", "/api/verify?token=" + link_in(message).split("token=")[1])
                assert status == 200
            if phase == BEFORE_WAIT:
                survivor.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING")
                message = smtp.handler.wait_for(1)[-1]
                status, _ = survivor.request("GET", "/api/verify?token=" + link_in(message).split("token=")[1])
                assert status == 200
            # After the click, nothing more is asked of the user: the signal was durable.
            detail = survivor.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED")
            assert detail["user"]["status"] == "ACTIVE"
            assert [u["id"] for u in survivor.get("/api/users")["users"]] == [answer["userId"]]

            ids = [m["Message-ID"] for m in smtp.handler.messages]
            assert len(ids) == expected_sends, ids
            assert set(ids) == {f"<{run_id}.verification.1@userflow>"}

            if scope in TASKS:
                step = next(s for s in detail["steps"] if s["id"] == scope)
                assert step["attempts"][0]["error"].startswith("interrupted")
                assert any(e["type"] == "attempt-interrupted" and e["step"] == scope for e in detail["timeline"])
        finally:
            doomed.stop()
            survivor.stop()


def test_crash_before_the_journal_sync_breaks_no_promise(tmp_path):
    doomed = Server(str(tmp_path), "--email-failure-rate", "0", env={"USERFLOW_FAULTS": "crash:storage:before-sync"})
    survivor = Server(str(tmp_path), "--email-failure-rate", "0")
    try:
        doomed.start()
        status, _ = try_request(doomed, "POST", "/api/signup", {"email": "ann@example.com", "name": "Ann Lee"})
        assert status is None  # never answered 202: nothing was promised
        assert doomed.wait_exit(30) == 137
        survivor.start()
        # The record may have reached the disk or not; either way the signup can
        # be sent again and ends in one run, one user, one email.
        status, answer = survivor.request("POST", "/api/signup", {"email": "ann@example.com", "name": "Ann Lee"})
        assert status == 202
        survivor.wait_for(f"/api/workflows/{answer['workflowId']}", lambda d: d["status"] == "WAITING")
        assert len(survivor.get("/api/users")["users"]) == 1
        assert len(survivor.get("/api/outbox")["emails"]) == 1
    finally:
        doomed.stop()
        survivor.stop()


def test_crash_during_a_checkpoint_loses_nothing_acknowledged(tmp_path):
    doomed = Server(str(tmp_path), "--email-failure-rate", "0", env={"USERFLOW_FAULTS": "crash:storage:before-rename"})
    survivor = Server(str(tmp_path), "--email-failure-rate", "0")
    try:
        doomed.start()
        status, answer = doomed.request("POST", "/api/signup", {"email": "ann@example.com", "name": "Ann Lee"})
        assert status == 202  # durable in the journal
        assert doomed.wait_exit(30) == 137  # the first checkpoint dies before its rename
        assert "fault injected at crash:storage:before-rename" in "".join(doomed.stderr)
        survivor.start()
        survivor.wait_for(f"/api/workflows/{answer['workflowId']}", lambda d: d["status"] == "WAITING")
        assert not list((tmp_path / "runs").rglob("*.tmp")), "the torn temp file was not cleaned up"
        assert len(survivor.get("/api/outbox")["emails"]) == 1
    finally:
        doomed.stop()
        survivor.stop()
