"""Effects that must happen once across a crash, counted where they land.

A real ``userflow serve`` dies at a crash point (``USERFLOW_FAULTS``) or by
SIGKILL, a second one on the same data dir finishes the run, and the effect is
counted outside the process: requests at the fake Gemini (faked at the HTTP
layer only), messages at a real SMTP server, by Message-ID.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.fake_gemini import ServedGemini, verdict
from tests.server import Server
from tests.smtp_server import SmtpServer
from tests.test_crash_points import link_in, try_request

pytestmark = pytest.mark.timeout(60)

ANN = {"email": "ann.risk@example.com", "name": "Ann Lee"}


def token_of(link: str) -> str:
    return link.split("token=", 1)[1]


def step(detail: dict, step_id: str) -> dict:
    return next(s for s in detail["steps"] if s["id"] == step_id)


# -- the risk model is asked once -------------------------------------------------------------


@pytest.mark.parametrize("point", ["finalize-user:before-run", "finalize-user:before-commit"])
def test_a_restart_after_the_risk_verdict_never_asks_the_model_again(tmp_path, point):
    with ServedGemini() as gemini:
        # FLAG, which the heuristic would never say of this signup: the user's final
        # status shows whose verdict it was. A second request would find the script
        # empty and get 500s, then the heuristic's ALLOW.
        gemini.script = [verdict("FLAG", 0.9, "the model's own reason")]
        flags = ("--email-failure-rate", "0")
        doomed = Server(str(tmp_path), *flags, env={**gemini.env(), "USERFLOW_FAULTS": f"crash:{point}"})
        survivor = Server(str(tmp_path), *flags, env=gemini.env())
        try:
            doomed.start()
            status, accepted = doomed.request("POST", "/api/signup", ANN)
            assert status == 202, accepted
            run_id = accepted["workflowId"]
            doomed.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING")
            [email] = doomed.get("/api/outbox")["emails"]
            status, _ = try_request(doomed, "GET", f"/api/verify?token={token_of(email['link'])}")
            assert status in (200, None)  # None: the process died before the answer left
            assert doomed.wait_exit(30) == 137
            assert f"fault injected at crash:{point}" in "".join(doomed.stderr)
            assert len(gemini.requests) == 1  # the verdict was in hand when the process died

            survivor.start()
            detail = survivor.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] in ("COMPLETED", "FAILED"))
            assert detail["status"] == "COMPLETED", detail
            assert len(gemini.requests) == 1, [r["body"] for r in gemini.requests]
            # The crash fell inside finalize-user: its first attempt was cut off and ran again.
            finalize = step(detail, "finalize-user")
            assert [bool(a["error"] and a["error"].startswith("interrupted")) for a in finalize["attempts"]] == [True, False], finalize
            assert ANN["email"] in str(gemini.requests[0]["body"])
            risk = step(detail, "ai-risk-check")
            assert len(risk["attempts"]) == 1 and risk["attempts"][0]["error"] is None
            assert detail["user"]["status"] == "FLAGGED"
            assert (detail["user"]["risk"]["source"], detail["user"]["risk"]["reasons"]) == ("gemini", ["the model's own reason"])
        finally:
            doomed.stop()
            survivor.stop()


# -- emails, counted at a real SMTP server ------------------------------------------------------


def delivered(smtp: SmtpServer) -> Counter:
    """How many times the SMTP server accepted each Message-ID."""
    return Counter(m["Message-ID"] for m in smtp.handler.messages)


def waiting_signup(server: Server, smtp: SmtpServer) -> dict:
    status, accepted = server.request("POST", "/api/signup", ANN)
    assert status == 202, accepted
    server.wait_for(f"/api/workflows/{accepted['workflowId']}", lambda d: d["status"] == "WAITING")
    smtp.handler.wait_for(1)
    return accepted


def verify_and_finish(server: Server, smtp: SmtpServer, run_id: str, message_id: str) -> dict:
    """Click the link of the email ``message_id`` (the newest with it); the COMPLETED run."""
    message = [m for m in smtp.handler.messages if m["Message-ID"] == message_id][-1]
    status, answer = server.request("GET", f"/api/verify?token={token_of(link_in(message))}")
    assert status == 200, answer
    detail = server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "COMPLETED")
    assert detail["user"]["status"] == "ACTIVE"
    return detail


# after-send: the SMTP server had accepted the resend, the record of it was lost, so the
# one send in flight is repeated, with the same Message-ID. before-commit: the send was
# recorded, only the step's completion was lost: nothing is sent again.
@pytest.mark.parametrize("point,copies", [("after-send", 2), ("before-commit", 1)])
def test_a_resend_across_a_crash_is_sent_once_more_at_most(tmp_path, point, copies):
    with SmtpServer() as smtp:
        flags = ("--smtp-url", smtp.url)
        first = Server(str(tmp_path), *flags)
        # Armed only once the first email is out: the same points would fire at its send.
        doomed = Server(str(tmp_path), *flags, env={"USERFLOW_FAULTS": f"crash:send-verification-email:{point}"})
        survivor = Server(str(tmp_path), *flags)
        try:
            first.start()
            accepted = waiting_signup(first, smtp)
            run_id, user_id = accepted["workflowId"], accepted["userId"]
            assert first.terminate() == 0

            doomed.start()
            status, _ = try_request(doomed, "POST", f"/api/users/{user_id}/resend-verification")
            assert status in (202, None)  # None: the process died before the answer left
            assert doomed.wait_exit(30) == 137
            assert f"fault injected at crash:send-verification-email:{point}" in "".join(doomed.stderr)
            resend = f"<{run_id}.resend.2@userflow>"
            assert delivered(smtp)[resend] == 1  # accepted before the crash, at both points

            survivor.start()
            detail = survivor.wait_for(
                f"/api/workflows/{run_id}",
                lambda d: d["status"] == "WAITING" and step(d, "send-verification-email")["status"] == "COMPLETED",
            )
            attempts = step(detail, "send-verification-email")["attempts"]
            assert attempts[-2]["error"].startswith("interrupted") and attempts[-1]["error"] is None, attempts
            done = verify_and_finish(survivor, smtp, run_id, resend)
            assert delivered(smtp) == {f"<{run_id}.verification.1@userflow>": 1, resend: copies}
            assert [u["id"] for u in survivor.get("/api/users")["users"]] == [user_id]
            assert done["outcome"] == "completed"
        finally:
            for server in (first, doomed, survivor):
                server.stop()


REMINDER_FLAGS = ("--reminder-after", "1", "--verify-ttl", "600")


def test_a_reminder_cut_off_by_a_kill_is_sent_after_the_restart(tmp_path):
    with SmtpServer() as smtp:
        flags = ("--smtp-url", smtp.url, *REMINDER_FLAGS)
        doomed = Server(str(tmp_path), *flags)
        survivor = Server(str(tmp_path), *flags)
        try:
            smtp.handler.hold = lambda envelope: b".reminder.1@userflow" in (envelope.original_content or envelope.content)
            doomed.start()
            run_id = waiting_signup(doomed, smtp)["workflowId"]
            reminder = f"<{run_id}.reminder.1@userflow>"
            smtp.handler.wait_held(1)  # the reminder is in flight: at DATA, not accepted
            assert doomed.kill() == -9
            smtp.handler.hold = lambda envelope: False
            smtp.handler.let_go()
            assert delivered(smtp)[reminder] == 0

            survivor.start()
            # Its deadline passed while the server was down: it is due at once.
            smtp.handler.wait_for(2)
            verify_and_finish(survivor, smtp, run_id, f"<{run_id}.verification.1@userflow>")
            assert delivered(smtp) == {f"<{run_id}.verification.1@userflow>": 1, reminder: 1}
        finally:
            doomed.stop()
            survivor.stop()


def test_a_reminder_accepted_just_before_a_crash_is_sent_once_more_at_most(tmp_path):
    with SmtpServer() as smtp:
        flags = ("--smtp-url", smtp.url, *REMINDER_FLAGS)
        # The reminder's send belongs to the wait: its point is the wait's after-send.
        doomed = Server(str(tmp_path), *flags, env={"USERFLOW_FAULTS": "crash:wait-for-verification:after-send"})
        survivor = Server(str(tmp_path), *flags)
        try:
            doomed.start()
            run_id = waiting_signup(doomed, smtp)["workflowId"]
            assert doomed.wait_exit(30) == 137
            assert "fault injected at crash:wait-for-verification:after-send" in "".join(doomed.stderr)
            reminder = f"<{run_id}.reminder.1@userflow>"
            assert delivered(smtp)[reminder] == 1

            survivor.start()
            # The reminder is due at once, sent again before the click: a click first would
            # rightly leave it unsent (the run no longer waits), which is not this test's case.
            smtp.handler.wait_for(3)
            done = verify_and_finish(survivor, smtp, run_id, f"<{run_id}.verification.1@userflow>")
            assert delivered(smtp) == {f"<{run_id}.verification.1@userflow>": 1, reminder: 2}
            reached = [e for e in done["timeline"] if e["type"] == "deadline" and "reminder" in e["message"]]
            assert len(reached) == 1, reached
        finally:
            doomed.stop()
            survivor.stop()
