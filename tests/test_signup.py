"""The signup workflow, end to end through the Runtime, and its pure parts."""

from __future__ import annotations

import asyncio
import copy
import random
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Runtimes, entries_of, wait_for_status, wait_idle
from userflow.actors.signup import EMAIL_VERIFIED, NAME, SIGNUP, SignupServices, UserStatus
from userflow.actors.signup.email import Email, Mailer, OutboxTransport, TransientEmailError, message_id
from userflow.actors.signup.risk import FLAG_AT, HeuristicRisk, assess
from userflow.actors.signup.tokens import TokenSigner, token_hash, well_formed
from userflow.actors.signup.workflow import accept_verification, create_user, on_duplicate
from userflow.actors.supervisor import DuplicateRun
from userflow.actors.timeutil import iso_now
from userflow.actors.workflow import SignalRejected, StepContext
from userflow.storage import DataDir, FileRunStore
from userflow.storage.runs import run_file

SECRET = bytes(range(32))


class CountingOutbox(OutboxTransport):
    """The outbox transport, counting what it was handed per Message-ID."""

    def __init__(self, fail_first: int = 0) -> None:
        self.sent: dict[str, int] = {}
        self._fail_first = fail_first

    def send(self, email: Email) -> str:
        if self._fail_first:
            self._fail_first -= 1
            raise TransientEmailError("relay timed out")
        self.sent[email.message_id] = self.sent.get(email.message_id, 0) + 1
        return super().send(email)


def services(transport: OutboxTransport | None = None, failure_rate: float = 0.0, rng=None, secret=SECRET):
    mailer = Mailer(transport or CountingOutbox(), failure_rate, rng)
    return SignupServices(TokenSigner(secret), mailer, HeuristicRisk(), "http://public.example")


def signup(n: int, email: str, name: str = "Ann Lee") -> dict[str, Any]:
    return {"userId": f"usr_{n}", "email": email, "emailKey": email.lower(), "name": name, "requestedAt": iso_now()}


def key(email: str) -> tuple[str, str]:
    return ("email", email.lower())


@pytest.fixture
async def engine(tmp_path):
    runtimes = Runtimes(str(tmp_path))
    yield runtimes
    await runtimes.close()


async def verify(runtime, svc: SignupServices, run_id: str, send_no: int = 1):
    return await runtime.signal(run_id, EMAIL_VERIFIED, {"tokenHash": token_hash(svc.tokens.token(run_id, send_no))})


# -- through the Runtime ------------------------------------------------------------------


async def test_signup_goes_to_active(engine, tmp_path) -> None:
    data = DataDir(str(tmp_path / "data")).open()
    try:
        svc = services(secret=data.secret())
        runtime = await engine([SIGNUP], services=svc, path=data.path)
        started = await runtime.start_run(NAME, signup(1, "Ann@Example.com"), key("Ann@Example.com"))
        assert started.created
        assert started.summary["user"]["status"] == UserStatus.PENDING

        summary = await wait_for_status(runtime, started.run_id, "WAITING")
        assert summary["currentStep"] == "wait-for-verification"
        assert summary["user"]["status"] == UserStatus.PENDING and summary["user"]["verifiedAt"] is None
        (email,) = summary["emails"]
        assert email["to"] == "Ann@Example.com" and email["sendNo"] == 1
        assert email["messageId"] == message_id(started.run_id, "verification", 1)
        assert svc.mailer.transport.sent == {email["messageId"]: 1}
        await wait_idle()  # a run waiting for its email holds no actor

        token = svc.tokens.token(started.run_id, 1)
        assert runtime.index.lookup("token", token_hash(token)) == started.run_id
        assert runtime.index.lookup("user", "usr_1") == started.run_id
        assert (await verify(runtime, svc, started.run_id)).duplicate is False
        assert (await verify(runtime, svc, started.run_id)).duplicate is True

        summary = await wait_for_status(runtime, started.run_id, "COMPLETED")
        user = summary["user"]
        assert user["status"] == UserStatus.ACTIVE
        assert user["risk"]["decision"] == "ALLOW" and user["risk"]["source"] == "heuristic"
        assert user["verifiedAt"] and user["finishedAt"] and summary["id"] == started.run_id

        stored = await runtime.read(started.run_id)
        assert [s["status"] for s in stored.run["steps"]] == ["COMPLETED"] * 5
        assert stored.run["steps"][-1]["output"] == {"userId": "usr_1", "status": UserStatus.ACTIVE}
        assert stored.run["state"]["tokenHash"] == token_hash(token)
        runtime.parts.store.checkpoint()  # the run's file, not only the journal
        assert token not in Path(run_file(str(tmp_path / "data"), started.run_id)).read_text()  # only its hash
        journal = tmp_path / "data" / "journal"
        assert all(token.encode() not in p.read_bytes() for p in journal.iterdir())
        types = [e["type"] for e in stored.timeline]
        assert types.index("email-sent") < types.index("waiting") < types.index("signal-received")
        assert types[-1] == "run-completed"
        assert len(entries_of(stored.timeline, "email-sent")) == 1
        await wait_idle()
    finally:
        data.close()


def replay_failures(seed: int, runs: int, rate: float = 0.5) -> list[int]:
    """Failed sends per run, when runs draw one number per attempt, one run after another."""
    rng = random.Random(seed)
    failures = []
    for _ in range(runs):
        n = 0
        while rng.random() < rate:
            n += 1
        failures.append(n)
    return failures


async def test_exactly_one_email_per_run_with_injected_failures(engine) -> None:
    seed, runs = 11, 4
    expected = replay_failures(seed, runs)
    assert sum(expected) >= 2 and max(expected) <= 2  # the seed exercises retries, and quickly
    transport = CountingOutbox()
    svc = services(transport, failure_rate=0.5, rng=random.Random(seed))
    runtime = await engine([SIGNUP], services=svc)

    ids = []
    for n in range(runs):  # one after another, so the seeded draws fall to known runs
        email = f"user{n}@example.com"
        result = await runtime.start_run(NAME, signup(n, email), key(email))
        await wait_for_status(runtime, result.run_id, "WAITING", timeout=10)
        ids.append(result.run_id)

    failed_per_run = []
    for run_id in ids:
        stored = await runtime.read(run_id)
        (record,) = stored.run["state"]["emails"]
        assert record["status"] == "sent" and record["tries"] == 1
        assert transport.sent[record["messageId"]] == 1
        failed = entries_of(stored.timeline, "attempt-failed", "send-verification-email")
        assert all("injected failure" in e["message"] and "retrying" in e["message"] for e in failed)
        step = stored.run["steps"][1]
        assert len(step["attempts"]) == len(failed) + 1 and step["status"] == "COMPLETED"
        assert len(entries_of(stored.timeline, "email-sent")) == 1
        assert len(runtime.index.get(run_id)["emails"]) == 1
        failed_per_run.append(len(failed))
    assert failed_per_run == expected
    assert sum(transport.sent.values()) == runs


async def test_transport_failure_is_retried_without_a_second_email(engine) -> None:
    transport = CountingOutbox(fail_first=1)
    svc = services(transport)
    runtime = await engine([SIGNUP], services=svc)
    result = await runtime.start_run(NAME, signup(1, "eve@example.com"), key("eve@example.com"))
    await wait_for_status(runtime, result.run_id, "WAITING", timeout=10)
    stored = await runtime.read(result.run_id)
    (record,) = stored.run["state"]["emails"]
    # the intent was recorded before the failed try, and the retry reused it
    assert record["status"] == "sent" and record["tries"] == 2
    assert transport.sent == {record["messageId"]: 1}
    (failed,) = entries_of(stored.timeline, "attempt-failed")
    assert "relay timed out" in failed["message"]


async def test_suspicious_signup_is_flagged_with_reasons(engine) -> None:
    svc = services()
    runtime = await engine([SIGNUP], services=svc)
    result = await runtime.start_run(NAME, signup(7, "bob@mailinator.com", "12345"), key("bob@mailinator.com"))
    await wait_for_status(runtime, result.run_id, "WAITING")
    await verify(runtime, svc, result.run_id)
    summary = await wait_for_status(runtime, result.run_id, "COMPLETED")

    user = summary["user"]
    assert user["status"] == UserStatus.FLAGGED
    risk = user["risk"]
    assert risk["decision"] == "FLAG" and risk["score"] >= FLAG_AT
    assert "disposable email domain (mailinator.com)" in risk["reasons"]
    assert "the name has no letters" in risk["reasons"]
    stored = await runtime.read(result.run_id)
    (decision,) = entries_of(stored.timeline, "risk-decision")
    assert "FLAG" in decision["message"]
    assert stored.run["status"] == "COMPLETED"  # flagging is an outcome, not a failure

    # a finished signup refuses a second one for the same email
    with pytest.raises(DuplicateRun):
        await runtime.start_run(NAME, signup(8, "bob@mailinator.com"), key("bob@mailinator.com"))


async def test_old_and_unknown_tokens_are_rejected(engine, tmp_path) -> None:
    svc = services()
    first = await engine([SIGNUP], services=svc)
    result = await first.start_run(NAME, signup(1, "ann@example.com"), key("ann@example.com"))
    run_id = result.run_id
    await wait_for_status(first, run_id, "WAITING")
    await asyncio.to_thread(first.stop)

    # a second email went out (send 2): its token replaces the first one
    handle = FileRunStore(str(tmp_path)).open(run_id)
    stored = handle.load()
    run = stored.run
    old_hash = token_hash(svc.tokens.token(run_id, 1))
    new_hash = token_hash(svc.tokens.token(run_id, 2))
    assert run["state"]["tokenHashes"] == [old_hash] and run["state"]["tokenHash"] == old_hash
    run["state"]["sendNo"] = 2
    run["state"]["tokenHashes"].append(new_hash)
    run["state"]["tokenHash"] = new_hash
    run["version"] += 1
    handle.commit(run, [])

    runtime = await engine([SIGNUP], services=svc)
    assert runtime.index.lookup("token", old_hash) == run_id
    assert runtime.index.lookup("token", new_hash) == run_id

    with pytest.raises(SignalRejected) as expired:
        await verify(runtime, svc, run_id, send_no=1)
    assert expired.value.reason == "expired"
    with pytest.raises(SignalRejected) as unknown:
        await runtime.signal(run_id, EMAIL_VERIFIED, {"tokenHash": "0" * 64})
    assert unknown.value.reason == "unknown"
    with pytest.raises(SignalRejected) as missing:
        await runtime.signal(run_id, EMAIL_VERIFIED, {})
    assert missing.value.reason == "unknown"
    with pytest.raises(SignalRejected) as foreign:  # a token of another run
        await runtime.signal(run_id, EMAIL_VERIFIED, {"tokenHash": token_hash(svc.tokens.token("wf_other", 1))})
    assert foreign.value.reason == "unknown"
    assert runtime.index.get(run_id)["status"] == "WAITING"
    stored = await runtime.read(run_id)
    assert stored.run["signals"] == [] and stored.run["version"] == run["version"]  # nothing was recorded

    assert (await verify(runtime, svc, run_id, send_no=2)).duplicate is False
    summary = await wait_for_status(runtime, run_id, "COMPLETED")
    assert summary["user"]["status"] == UserStatus.ACTIVE


async def test_repeated_signup_reuses_the_pending_run(engine) -> None:
    svc = services()
    runtime = await engine([SIGNUP], services=svc)
    first = await runtime.start_run(NAME, signup(1, "kim@example.com"), key("kim@example.com"))
    again = await runtime.start_run(NAME, signup(2, "kim@example.com", "Other Name"), key("kim@example.com"))
    assert again.run_id == first.run_id and not again.created
    summary = await wait_for_status(runtime, first.run_id, "WAITING")
    assert summary["userId"] == "usr_1" and summary["user"]["name"] == "Ann Lee"
    assert len(runtime.index) == 1 and len(summary["emails"]) == 1
    assert runtime.index.lookup("user", "usr_2") is None
    stored = await runtime.read(first.run_id)
    assert stored.run["steps"][0]["output"] == {"userId": "usr_1", "status": UserStatus.PENDING}


# -- pure parts -----------------------------------------------------------------------------


def context(state: dict[str, Any] | None = None, **input: Any) -> tuple[StepContext, list[dict[str, Any]]]:
    checkpoints: list[dict[str, Any]] = []
    ctx = StepContext(
        run_id="wf_test",
        step_id="create-user",
        attempt=1,
        input={**signup(1, "ann@example.com"), **input},
        state=state or {},
        outputs={},
        services=services(),
        checkpoint=lambda c: checkpoints.append(copy.deepcopy(c.state)),
    )
    return ctx, checkpoints


def test_create_user_is_idempotent() -> None:
    ctx, _ = context()
    assert create_user(ctx) == {"userId": "usr_1", "status": UserStatus.PENDING}
    user = ctx.state["user"]
    assert user["email"] == "ann@example.com" and user["name"] == "Ann Lee" and user["status"] == "PENDING"

    # a repeated attempt (after a crash) finds the user made and changes nothing
    again, _ = context(state=ctx.state, name="Changed", userId="usr_other")
    assert create_user(again) == {"userId": "usr_1", "status": UserStatus.PENDING}
    assert again.state["user"] == user


def test_mailer_does_not_send_an_email_recorded_as_sent() -> None:
    transport = CountingOutbox()
    mailer = Mailer(transport)
    ctx, checkpoints = context()
    email = Email(message_id("wf_test", "verification", 1), "verification", "a@b.c", "s", "t", "h", "l")
    first = mailer.deliver(ctx, email, 1)
    assert transport.sent == {email.message_id: 1}
    assert checkpoints and checkpoints[0]["emails"][0]["status"] == "sending"  # intent durable before the send
    second = mailer.deliver(ctx, email, 1)
    assert transport.sent == {email.message_id: 1}
    assert second == first and first["receipt"] == "kept in outbox"
    assert "already sent" in ctx.entries[-1]["message"]


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_mailer_rejects_bad_failure_rates(rate: float) -> None:
    with pytest.raises(ValueError):
        Mailer(OutboxTransport(), rate)


def test_accept_verification() -> None:
    h1, h2 = token_hash("one"), token_hash("two")
    run = {"state": {"tokenHashes": [h1, h2], "tokenHash": h2}}
    accept_verification(run, {"tokenHash": h2})
    with pytest.raises(SignalRejected) as expired:
        accept_verification(run, {"tokenHash": h1})
    assert expired.value.reason == "expired"
    with pytest.raises(SignalRejected) as unknown:
        accept_verification(run, {"tokenHash": token_hash("three")})
    assert unknown.value.reason == "unknown"
    with pytest.raises(SignalRejected):
        accept_verification({"state": {}}, {"tokenHash": h1})


@pytest.mark.parametrize(
    ("user_status", "run_status", "decision"),
    [
        ("ACTIVE", "COMPLETED", "conflict"),
        ("FLAGGED", "COMPLETED", "conflict"),
        ("PENDING", "RUNNING", "reuse"),
        ("PENDING", "WAITING", "reuse"),
        ("PENDING", "FAILED", "resume"),
        ("EXPIRED", "COMPLETED", "new"),
        ("PENDING", "CANCELLED", "new"),
    ],
)
def test_on_duplicate(user_status: str, run_status: str, decision: str) -> None:
    assert on_duplicate({"status": run_status, "user": {"status": user_status}}) == decision


# risk ----------------------------------------------------------------------------------------


def test_clean_signup_is_allowed() -> None:
    verdict = assess("ann.lee@example.com", "Ann Lee")
    assert verdict.decision == "ALLOW" and verdict.score == 0.0
    assert verdict.reasons == ["no risk signals found"] and verdict.source == "heuristic"
    assert assess("ann+news123456@example.com", "Ann Lee").decision == "ALLOW"  # the tag is ignored
    assert assess("josé@example.com", "José Álvarez-Núñez").decision == "ALLOW"


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("ann@mailinator.com", "disposable email domain (mailinator.com)"),
        ("ann@MAILINATOR.COM", "disposable email domain (mailinator.com)"),
        ("ann@eu.yopmail.com", "disposable email domain (eu.yopmail.com)"),
        ("admin@example.com", "role address (admin@), not a person"),
        ("Support@example.com", "role address (support@), not a person"),
        ("john12345@example.com", "digit-heavy local part (5 of 9 characters)"),
        ("a12@example.com", "digit-heavy local part (2 of 3 characters)"),
        ("xkqzvbnmtrpl@example.com", "random-looking local part"),
        ("qwrtypsdfghjk@example.com", "random-looking local part"),
    ],
)
def test_email_risk_signals(email: str, reason: str) -> None:
    verdict = assess(email, "Ann Lee")
    assert reason in verdict.reasons
    assert verdict.score > 0


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("12345", "the name has no letters"),
        ("!!!", "the name has no letters"),
        ("Ann 2nd", "the name contains digits"),
        ("visit www.spam.example", "the name looks like an address or a link"),
        ("http://x.io", "the name looks like an address or a link"),
        ("me@home", "the name looks like an address or a link"),
        ("aaaa", "the name repeats one or two characters"),
        ("ab ab ab", "the name repeats one or two characters"),
        ("a b c d e f g", "the name has more than six words"),
    ],
)
def test_bad_names(name: str, reason: str) -> None:
    clean = assess("ann@example.com", "Ann Lee")
    verdict = assess("ann@example.com", name)
    assert verdict.reasons == [reason]
    # A bad name alone raises the score but does not flag: it is one signal, and one
    # signal of this weight is no proof. Every name problem weighs the same as any other.
    assert clean.score < verdict.score < FLAG_AT and verdict.decision == "ALLOW"
    assert verdict.score == assess("ann@example.com", "12345").score
    # With a second signal of the same weight, it flags.
    both = assess("admin@example.com", name)
    assert both.decision == "FLAG" and both.score >= FLAG_AT
    assert set(both.reasons) == {reason, "role address (admin@), not a person"}


def test_signals_add_up_to_a_flag() -> None:
    one = assess("admin@example.com", "Ann Lee")
    two = assess("admin@example.com", "12345")
    three = assess("admin@mailinator.com", "12345")
    assert [v.decision for v in (one, two, three)] == ["ALLOW", "FLAG", "FLAG"]
    assert [len(v.reasons) for v in (one, two, three)] == [1, 2, 3]
    assert one.score < two.score < three.score <= 1.0  # each signal adds; the score stays a fraction
    everything = assess("x9k2q8z7w1v4@mailinator.com", "12345")  # four signals: more than the scale holds
    assert len(everything.reasons) == 4 and three.score <= everything.score <= 1.0


def test_assess_is_deterministic() -> None:
    cases = [("x9k2q8z7w1v4@mailinator.com", "12345"), ("ann@example.com", "Ann Lee"), ("root@example.com", "aa")]
    for email, name in cases:
        results = {(v.decision, v.score, tuple(v.reasons)) for v in (assess(email, name) for _ in range(20))}
        assert len(results) == 1
    assert HeuristicRisk().assess("ann@example.com", "Ann Lee").as_record()["decision"] == "ALLOW"
    record = assess("ann@mailinator.com", "Ann").as_record()
    assert set(record) == {"decision", "score", "reasons", "source", "model", "attempts", "latencyMs"}


# tokens ---------------------------------------------------------------------------------------

URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def test_tokens_are_43_url_safe_characters() -> None:
    signer = TokenSigner(SECRET)
    for run_id, send_no in [("wf_a", 1), ("wf_b", 2), ("wf_" + "x" * 60, 99)]:
        token = signer.token(run_id, send_no)
        assert len(token) == 43 and URL_SAFE.match(token) and "=" not in token
        assert well_formed(token)


def test_tokens_are_deterministic_per_run_and_send() -> None:
    signer = TokenSigner(SECRET)
    assert signer.token("wf_a", 1) == signer.token("wf_a", 1) == TokenSigner(bytes(SECRET)).token("wf_a", 1)
    tokens = {signer.token(run_id, send_no) for run_id in ("wf_a", "wf_b") for send_no in (1, 2, 3)}
    assert len(tokens) == 6  # different per send and per run
    assert TokenSigner(b"\xff" * 32).token("wf_a", 1) != signer.token("wf_a", 1)  # and per secret


def test_token_hash() -> None:
    token = TokenSigner(SECRET).token("wf_a", 1)
    digest = token_hash(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == token_hash(token) and digest != token_hash(TokenSigner(SECRET).token("wf_a", 2))


@pytest.mark.parametrize(
    "candidate",
    ["", "a" * 42, "a" * 44, "a" * 42 + "=", "a" * 42 + "+", "a" * 42 + "/", "a" * 42 + " ", "a" * 43 + "\n"],
)
def test_malformed_tokens(candidate: str) -> None:
    assert not well_formed(candidate)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenSigner(b"x" * 31)
