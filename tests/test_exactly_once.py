"""Effects that must happen once across a crash, counted where they land.

A real ``userflow serve`` dies at a crash point (``USERFLOW_FAULTS``) or by
SIGKILL, a second one on the same data dir finishes the run, and the effect is
counted outside the process: requests at the fake Gemini (faked at the HTTP
layer only), messages at a real SMTP server, by Message-ID.
"""

from __future__ import annotations

import pytest

from tests.fake_gemini import ServedGemini, verdict
from tests.server import Server
from tests.test_crash_points import try_request

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
