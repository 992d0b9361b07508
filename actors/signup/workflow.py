"""The user-signup workflow, top to bottom as the business process reads.

1. create-user              persist the user, status PENDING
2. send-verification-email  one email with a link, never duplicated
3. wait-for-verification    durable wait for the email-verified signal
4. ai-risk-check            ALLOW or FLAG, with reasons and how it was decided
5. finalize-user            the user becomes ACTIVE or FLAGGED
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from userflow.actors.retry import RetryPolicy
from userflow.actors.signup.email import Mailer, verification_email
from userflow.actors.signup.records import EMAIL_VERIFIED, UserStatus, facets, keys, summary, user_of
from userflow.actors.signup.risk import Verdict, assess
from userflow.actors.signup.templates import EmailTemplates, builtin
from userflow.actors.signup.tokens import TokenSigner, token_hash
from userflow.actors.status import RunStatus
from userflow.actors.timeutil import iso, iso_now, now
from userflow.actors.workflow import Action, ActionRejected, Deadline, SignalRejected, Step, StepContext, Wait, Workflow

NAME = "user-signup"
class RiskChecker(Protocol):
    """Decides ALLOW or FLAG; may be a coroutine (a model behind the network)."""

    name: str

    def assess(self, email: str, name: str) -> Verdict | Awaitable[Verdict]: ...


@dataclass
class SignupServices:
    """The integrations the signup steps use, handed in at startup."""

    tokens: TokenSigner
    mailer: Mailer
    risk: RiskChecker
    public_url: str
    verify_ttl: float = 86400.0
    reminder_after: float = 3600.0
    resend_interval: float = 30.0
    max_resends: int = 5
    email_max_backoff: float = 300.0
    email_retry_for: float = 21600.0
    templates: EmailTemplates = field(default_factory=builtin)

    def link(self, run_id: str, send_no: int) -> str:
        return f"{self.public_url}/verify?token={self.tokens.token(run_id, send_no)}"


def stated_expiry(stated: str | None, emails: Iterable[Mapping[str, Any]], verify_ttl: float) -> str:
    """When a run's emails say its link stops working (ISO 8601).

    ``stated`` is what the first email said (``linkExpiresAt``); a run from
    before that was kept has it from its first email's send time, as the
    first email would have put it.
    """
    if stated:
        return stated
    first = next((e for e in emails if e.get("kind") == "verification" and e.get("sentAt")), None)
    start = datetime.fromisoformat(first["sentAt"]).timestamp() if first else now()
    return iso(start + verify_ttl)


# -- the steps ------------------------------------------------------------------------


def create_user(ctx: StepContext) -> dict[str, Any]:
    user = ctx.state.get("user")
    if user is None:  # idempotent: a repeated attempt finds the user made
        user = ctx.state["user"] = {
            "id": ctx.input["userId"],
            "email": ctx.input["email"],
            "name": ctx.input["name"],
            "status": UserStatus.PENDING,
            "risk": None,
            "createdAt": ctx.input["requestedAt"],
            "finishedAt": None,
        }
    ctx.emit("user.created", told(ctx))
    return {"userId": user["id"], "status": user["status"]}


def send_verification_email(ctx: StepContext) -> dict[str, Any]:
    services: SignupServices = ctx.services
    send_no = ctx.state.setdefault("sendNo", 1)
    token = services.tokens.token(ctx.run_id, send_no)
    digest = token_hash(token)
    hashes = ctx.state.setdefault("tokenHashes", [])
    if digest not in hashes:
        hashes.append(digest)
    ctx.state["tokenHash"] = digest
    return _send(ctx, "verification" if send_no == 1 else "resend", send_no)


def _link_expiry(ctx: StepContext, kind: str) -> str:
    """The expiry every email of the run states, the same in all of them.

    The run expires ``verify_ttl`` after its wait begins, which is just after
    the first email is sent; so the first email states its own send time plus
    ``verify_ttl`` (never later than the real deadline, and as close as can be
    known before the wait), and the reminder and the resends, which cannot
    move the deadline, repeat what it said.
    """
    services: SignupServices = ctx.services
    if kind == "verification":
        ctx.state["linkExpiresAt"] = iso(now() + services.verify_ttl)
    return stated_expiry(ctx.state.get("linkExpiresAt"), ctx.state.get("emails", ()), services.verify_ttl)


def _send(ctx: StepContext, kind: str, send_no: int) -> dict[str, Any]:
    services: SignupServices = ctx.services
    user = ctx.state["user"]  # always the stored address, whatever a request said
    email = verification_email(
        services.templates,
        run_id=ctx.run_id,
        kind=kind,
        send_no=send_no,
        to=user["email"],
        name=user["name"],
        link=services.link(ctx.run_id, send_no),
        expires_at=_link_expiry(ctx, kind),
    )
    return services.mailer.deliver(ctx, email, send_no)


def send_reminder(ctx: StepContext) -> dict[str, Any]:
    """The one reminder: the same link as the email it reminds of."""
    return _send(ctx, "reminder", ctx.state["sendNo"])


def expire_user(ctx: StepContext) -> None:
    user = ctx.state["user"]
    user["status"] = UserStatus.EXPIRED
    user["finishedAt"] = iso_now()
    ctx.state["tokenHash"] = None
    ctx.log(f"user {user['id']} is EXPIRED: the verification link was not used in time")
    ctx.emit("user.expired", told(ctx))


def cancel_user(ctx: StepContext) -> None:
    """A cancelled signup leaves no PENDING user behind (a new signup starts afresh).

    A signup whose address is verified cannot be cancelled: the click was
    answered "verified", so the user is on the way to ACTIVE or FLAGGED."""
    user = ctx.state.get("user")
    if (user and user.get("verifiedAt")) or EMAIL_VERIFIED in ctx.signals:
        raise ActionRejected("conflict", "the user has verified their address; the signup is completing and cannot be cancelled")
    if user is None:
        user = ctx.state["user"] = user_of({"id": ctx.run_id, "input": ctx.input, "state": {}, "steps": [], "signals": []})
        for key in ("verifiedAt", "workflowId"):
            user.pop(key, None)
    if user["status"] == UserStatus.PENDING:
        user["status"] = UserStatus.CANCELLED
        user["finishedAt"] = iso_now()
        ctx.emit("user.cancelled", told(ctx))
    ctx.state["tokenHash"] = None


def resend_verification(ctx: StepContext) -> None:
    """A fresh link by a new email; the old link stops working at once.

    The deadline stays where it was: a resend is not a way to keep a link
    alive forever. Resends are spaced and counted per user.
    """
    services: SignupServices = ctx.services
    user = ctx.state.get("user")
    if user is None or user["status"] != UserStatus.PENDING or ctx.outputs.get("wait-for-verification") or EMAIL_VERIFIED in ctx.signals:
        raise ActionRejected("conflict", "only a PENDING user who has not verified yet can get a new link")
    requests: list[float] = ctx.state.setdefault("resends", [])
    if len(requests) >= services.max_resends:
        raise ActionRejected("rate_limited", f"at most {services.max_resends} new links per signup")
    if requests and (wait := requests[-1] + services.resend_interval - now()) > 0:
        raise ActionRejected("rate_limited", f"a new link was sent moments ago; try again in {wait:.0f} s", wait)
    requests.append(now())
    ctx.state["sendNo"] = ctx.state.get("sendNo", 1) + 1
    ctx.state["tokenHash"] = None  # the old link answers 410 from now on
    by = ctx.args.get("by") or "an operator"
    ctx.log(f"new verification link requested by {by} ({len(requests)} of {services.max_resends})", "resend-requested")
    ctx.rewind_to("send-verification-email")


def accept_verification(run: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
    state = run["state"]
    digest = payload.get("tokenHash")
    if digest not in state.get("tokenHashes", ()):
        raise SignalRejected("unknown", "this verification link is not valid")
    if digest != state.get("tokenHash"):
        raise SignalRejected("expired", "this link was replaced by a newer email; use the latest link")


def verified(ctx: StepContext, signal: Mapping[str, Any]) -> None:
    """The wait ended by the click: the user has shown they own the address."""
    ctx.state["user"]["verifiedAt"] = signal["receivedAt"]
    ctx.emit("user.verified", told(ctx))


def ai_risk_check(ctx: StepContext) -> Any:
    services: SignupServices = ctx.services
    user = ctx.state["user"]
    verdict = services.risk.assess(user["email"], user["name"])
    if inspect.isawaitable(verdict):  # the model is asked on the event loop
        return _record_when_done(ctx, verdict)
    return _record_verdict(ctx, verdict)


async def _record_when_done(ctx: StepContext, pending: Awaitable[Verdict]) -> dict[str, Any]:
    return _record_verdict(ctx, await pending)


def _record_verdict(ctx: StepContext, verdict: Verdict) -> dict[str, Any]:
    record = verdict.as_record()
    record["attempts"] = ctx.attempt
    ctx.state["user"]["risk"] = record
    model = f", {record['model']}, {record['latencyMs']:.0f} ms" if record["model"] else ""
    ctx.log(f"risk decision {record['decision']} (score {record['score']}, {record['source']}{model})", "risk-decision")
    return record


def heuristic_fallback(ctx: StepContext, error: BaseException) -> dict[str, Any]:
    services: SignupServices = ctx.services
    user = ctx.state["user"]
    verdict = assess(user["email"], user["name"], source="heuristic-fallback").as_record()
    verdict["attempts"] = ctx.attempt
    verdict["model"] = getattr(services.risk, "model", None)
    verdict["reasons"].append(f"decided locally: the model gave no usable answer ({error})")
    user["risk"] = verdict
    ctx.log(f"risk decision {verdict['decision']} by the local heuristic after: {error}", "risk-decision")
    return verdict


def finalize_user(ctx: StepContext) -> dict[str, Any]:
    user = ctx.state["user"]
    decision = ctx.outputs["ai-risk-check"]["decision"]
    user["status"] = UserStatus.ACTIVE if decision == "ALLOW" else UserStatus.FLAGGED
    user["finishedAt"] = user["finishedAt"] or iso_now()
    ctx.log(f"user {user['id']} is {user['status']}")
    ctx.emit("user.active" if user["status"] == UserStatus.ACTIVE else "user.flagged", told(ctx))
    return {"userId": user["id"], "status": user["status"]}


def failed(ctx: StepContext, error: str) -> None:
    ctx.emit("workflow.failed", {**told(ctx), "error": {"step": ctx.step_id, "message": error}})


def erase(ctx: StepContext) -> dict[str, Any]:
    """Erasure: the person's address and name leave the user's record and the emails
    sent; the tokens go; the address's key is kept only as a keyed hash (so the
    same address signs up again as a new user); ``user.erased`` tells the product."""
    services: SignupServices = ctx.services
    user = ctx.state.get("user")
    if user is None:  # the run ended before create-user: the record as lists showed it
        user = ctx.state["user"] = user_of({"id": ctx.run_id, "input": ctx.input, "state": {}, "steps": [], "signals": []})
        for key in ("verifiedAt", "workflowId"):
            user.pop(key, None)
    user.update(email=None, name=None)
    for email in ctx.state.get("emails", ()):
        email.update(to=None, subject=None)
    ctx.state["tokenHashes"] = []
    ctx.state["tokenHash"] = None
    input = {**ctx.input, "email": None, "name": None, "emailKey": "erased:" + services.tokens.keyed("email", ctx.input["emailKey"])}
    ctx.emit("user.erased", {**told(ctx), "erasedAt": iso_now()})
    return input


def told(ctx: StepContext) -> dict[str, Any]:
    """The user record as events tell it (SPEC section 3's user, and its workflow)."""
    user = ctx.state.get("user") or {}
    risk = user.get("risk")
    return {
        "id": ctx.input["userId"],
        "email": user.get("email", ctx.input["email"]),
        "name": user.get("name", ctx.input["name"]),
        "status": user.get("status", UserStatus.PENDING),
        "risk": risk and {key: risk[key] for key in ("decision", "score", "reasons", "source")},
        "createdAt": user.get("createdAt", ctx.input["requestedAt"]),
        "verifiedAt": user.get("verifiedAt"),
        "finishedAt": user.get("finishedAt"),
        "workflowId": ctx.run_id,
    }


# -- how the engine indexes and summarises signup runs --------------------------------


def on_duplicate(existing: Mapping[str, Any]) -> str:
    """A signup for an email that already has a run."""
    if existing["user"]["status"] in (UserStatus.ACTIVE, UserStatus.FLAGGED):
        return "conflict"
    if existing["status"] == RunStatus.FAILED:
        return "resume"  # the person trying again gets their email after all
    if existing["status"] in (RunStatus.RUNNING, RunStatus.WAITING):
        return "reuse"  # idempotent: the same PENDING user, never a second one
    return "new"  # expired or cancelled: start afresh


def email_retries(services: SignupServices) -> RetryPolicy:
    """A mail provider's bad half hour must not cost a signup: transient failures are
    retried with backoff for ``email_retry_for`` seconds, never past the link's life."""
    return RetryPolicy(
        max_attempts=None,
        initial_backoff=0.5,
        coefficient=2.0,
        max_backoff=services.email_max_backoff,
        retry_for=min(services.email_retry_for, services.verify_ttl),
    )


def _reminder_after(services: SignupServices) -> float | None:
    """One reminder, if it comes before the link expires (0 turns it off)."""
    after = services.reminder_after
    return after if 0 < after < services.verify_ttl else None


SIGNUP = Workflow(
    name=NAME,
    steps=(
        Step("create-user", "Create user", create_user, RetryPolicy(max_attempts=3, initial_backoff=0.5)),
        Step("send-verification-email", "Send verification email", send_verification_email, email_retries),
        Wait(
            "wait-for-verification",
            "Wait for verification",
            EMAIL_VERIFIED,
            accept_verification,
            on_signal=verified,
            deadlines=(
                Deadline("reminder", after=_reminder_after, action=send_reminder),
                Deadline("expiry", after=lambda services: services.verify_ttl, action=expire_user, outcome="expired"),
            ),
        ),
        Step(
            "ai-risk-check",
            "AI risk check",
            ai_risk_check,
            RetryPolicy(max_attempts=3, initial_backoff=1.0, coefficient=2.0, max_backoff=10.0),
            fallback=heuristic_fallback,
        ),
        Step("finalize-user", "Finalize user", finalize_user, RetryPolicy(max_attempts=3, initial_backoff=0.5)),
    ),
    keys=keys,
    summary=summary,
    facets=facets,
    on_duplicate=on_duplicate,
    actions=(Action("resend-verification", resend_verification),),
    on_cancel=cancel_user,
    erase=erase,
    on_failed=failed,
)
