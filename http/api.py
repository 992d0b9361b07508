"""HTTP handlers of the JSON API: translate requests into engine calls and back."""

from __future__ import annotations

import asyncio
import hmac
import re
from enum import Enum
from collections.abc import Callable
from typing import Any

from aiohttp import web

from userflow.actors.signup import EMAIL_VERIFIED, NAME, SignupServices
from userflow.actors.signup.tokens import token_hash, well_formed
from userflow.actors.status import RunStatus
from userflow.actors.supervisor import DuplicateRun, new_run_id
from userflow.actors.timeutil import iso_now
from userflow.actors.workflow import ActionRejected, SignalRejected
from userflow.http import views
from userflow.http.errors import ApiError, json_response
from userflow.http.auth import PRINCIPAL
from userflow.http.keys import CLIENTS, RUNTIME, SERVICES, SIGNUP_LIMIT, VERIFY_LIMIT
from userflow.http.webhooks import WEBHOOKS
from userflow.http.validation import (
    SignupBody,
    VerifyBody,
    json_object,
    normalise_email,
    normalise_name,
    parse,
    query_cursor,
    query_limit,
)
from userflow.http.overview import USER_STATUSES
from userflow.storage import valid_run_id


# Where a page of the outbox stopped: the run, and the (sentAt, messageId) of its last email shown.
_OUTBOX_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,64}\|[0-9T:.Z-]{10,40}\|<[A-Za-z0-9_.-]{1,100}@userflow>")


def new_user_id() -> str:
    return "usr_" + new_run_id()[3:]


# -- signup and verification ------------------------------------------------------


def client_address(request: web.Request) -> str:
    return request.app[CLIENTS].address(request)


async def signup(request: web.Request) -> web.Response:
    body = parse(SignupBody, await json_object(request))
    assert isinstance(body, SignupBody)
    email, email_key = normalise_email(body.email)
    name = normalise_name(body.name)
    # Only a signup that could start a run counts against the limit: a person who
    # mistypes their address is told what to fix, not locked out.
    request.app[SIGNUP_LIMIT].check(client_address(request))
    runtime = request.app[RUNTIME]
    input = {"userId": new_user_id(), "email": email, "emailKey": email_key, "name": name, "requestedAt": iso_now()}
    try:
        result = await runtime.start_run(NAME, input, dedupe=("email", email_key))
    except DuplicateRun as exc:
        raise ApiError(
            409,
            "email_taken",
            f"{email} is already registered (user {exc.summary['user']['status']}); sign in instead",
        ) from None
    answer = {"workflowId": result.run_id, "userId": result.summary["userId"], "status": result.summary["status"]}
    if not result.created:
        # The signup already in progress answers: the same user, under the name given first
        # (an address not yet verified cannot rename anyone), and the answer says so.
        kept = result.summary["user"]["name"]
        answer["existing"] = True
        answer["name"] = kept
        if kept != name:
            answer["note"] = f"a signup for this address is already in progress under the name {kept!r}; that name is kept"
    return json_response(answer, status=202, headers={"Location": f"/api/workflows/{result.run_id}"})


async def verify_token(request: web.Request, token: Any) -> dict[str, str]:
    """Deliver the email-verified signal for ``token``; the shared core of both verify routes."""
    if not isinstance(token, str) or not well_formed(token):
        raise ApiError(400, "invalid_token", "token: expected the 43-character token from the verification link")
    request.app[VERIFY_LIMIT].check(client_address(request))  # what is counted: tries at guessing a token
    digest = token_hash(token)
    runtime = request.app[RUNTIME]
    run_id = runtime.index.lookup("token", digest)
    if run_id is None:
        raise ApiError(404, "unknown_token", "this verification link is not valid")
    try:
        await runtime.signal(run_id, EMAIL_VERIFIED, {"tokenHash": digest})
    except SignalRejected as exc:
        if exc.reason == "unknown":
            raise ApiError(404, "unknown_token", "this verification link is not valid") from None
        raise ApiError(410, "link_expired", f"this verification link no longer works: {exc.message}") from None
    return {"workflowId": run_id, "status": "verified"}


class LinkState(str, Enum):
    """What a verification link can do now, as the page explains it (nothing is changed to tell)."""

    MISSING = "missing"  # no token at all
    MALFORMED = "malformed"  # not a token: cut short or altered
    UNKNOWN = "unknown"  # well-formed, but no signup has it
    VERIFIED = "verified"  # its user has confirmed already
    REPLACED = "replaced"  # a newer email brought a newer link
    EXPIRED = "expired"  # not used in time
    CLOSED = "closed"  # the signup was cancelled or has ended otherwise
    READY = "ready"  # pressing the button verifies


def link_state(request: web.Request, token: Any, *, count: bool = True) -> LinkState:
    """A read-only look at ``token``: from the index, as ``verify_token`` would find it.

    A well-formed token counts against the verification rate limit (unless
    ``count`` is False: a verification just counted it), like a verification:
    otherwise the page would be a free oracle for guessed tokens. The answer
    speaks of the link, never of the address it was sent to.
    """
    if not isinstance(token, str) or not token:
        return LinkState.MISSING
    if not well_formed(token):
        return LinkState.MALFORMED
    if count:
        request.app[VERIFY_LIMIT].check(client_address(request))
    index = request.app[RUNTIME].index
    run_id = index.lookup("token", token_hash(token))
    summary = index.get(run_id) if run_id else None
    if summary is None:
        return LinkState.UNKNOWN
    user = summary["user"]
    if user.get("verifiedAt") or user["status"] in ("ACTIVE", "FLAGGED"):
        return LinkState.VERIFIED
    if user["status"] == "EXPIRED":
        return LinkState.EXPIRED
    if user["status"] == "CANCELLED" or summary["status"] in (RunStatus.COMPLETED, RunStatus.CANCELLED):
        return LinkState.CLOSED
    # Tokens are derived from the run and the send number: the newest email's is the only live one.
    newest = request.app[SERVICES].tokens.token(summary["id"], summary["sendNo"])
    return LinkState.READY if hmac.compare_digest(newest, token) else LinkState.REPLACED


async def verify_get(request: web.Request) -> web.Response:
    tokens = request.query.getall("token", [])
    return json_response(await verify_token(request, tokens[0] if len(tokens) == 1 else None))


async def verify_post(request: web.Request) -> web.Response:
    body = parse(VerifyBody, await json_object(request))
    assert isinstance(body, VerifyBody)
    return json_response(await verify_token(request, body.token))


# -- operator actions ---------------------------------------------------------------


async def _command(request: web.Request, run_id: str, name: str) -> Any:
    runtime = request.app[RUNTIME]
    if not valid_run_id(run_id) or runtime.index.get(run_id) is None:
        raise ApiError(404, "workflow_not_found", f"no workflow with id {run_id!r}")
    try:
        by = request[PRINCIPAL].describe(client_address(request))
        return await runtime.command(run_id, name, {"by": by})
    except ActionRejected as exc:
        if exc.reason == "rate_limited":
            # No Retry-After for a limit that waiting does not lift (the cap on resends).
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else {}
            raise ApiError(429, "rate_limited", exc.message, headers) from None
        raise ApiError(409, "conflict", exc.message) from None


async def retry_workflow(request: web.Request) -> web.Response:
    result = await _command(request, request.match_info["id"], "retry")
    return json_response(
        {"workflowId": result.run_id, "status": result.summary["status"]},
        status=202,
        headers={"Location": f"/api/workflows/{result.run_id}"},
    )


async def retry_failed(request: web.Request) -> web.Response:
    """Every FAILED run resumed from its failed step, e.g. once a mail outage is over."""
    runtime = request.app[RUNTIME]
    failed = await asyncio.to_thread(lambda: [s["id"] for s in runtime.index.each(("status", RunStatus.FAILED))])
    by = f"{request[PRINCIPAL].describe(client_address(request))} (retry of every failed run)"
    results = await asyncio.gather(*(runtime.command(run_id, "retry", {"by": by}) for run_id in failed), return_exceptions=True)
    # A run that left FAILED meanwhile (retried by someone else) is not counted.
    retried = [run_id for run_id, result in zip(failed, results) if not isinstance(result, BaseException)]
    return json_response({"retried": len(retried), "workflowIds": retried}, status=202)


async def cancel_workflow(request: web.Request) -> web.Response:
    result = await _command(request, request.match_info["id"], "cancel")
    return json_response({"workflowId": result.run_id, "status": result.summary["status"]})


async def resend_verification(request: web.Request) -> web.Response:
    user_id = request.match_info["id"]
    run_id = request.app[RUNTIME].index.lookup("user", user_id)
    if run_id is None:
        raise ApiError(404, "user_not_found", f"no user with id {user_id!r}")
    result = await _command(request, run_id, "resend-verification")
    return json_response(
        {"workflowId": result.run_id, "userId": user_id, "status": "sending"},
        status=202,
        headers={"Location": f"/api/workflows/{result.run_id}"},
    )


# -- reading ----------------------------------------------------------------------


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw.upper() not in allowed:
        raise ApiError(400, f"invalid_{name}", f"{name}: one of {', '.join(allowed)}")
    return raw.upper()


def _found(request: web.Request) -> list[dict[str, Any]] | None:
    """The run ``q`` names, exactly (an email address, a workflow id or a user id), as a
    page of at most one; None without ``q``."""
    query = request.query.get("q", "").strip()
    if not query:
        return None
    if len(query) > 320:
        raise ApiError(400, "invalid_q", "q: an email address, a workflow id or a user id (at most 320 characters)")
    index = request.app[RUNTIME].index
    run_id: str | None = None
    if "@" in query:
        try:
            run_id = index.lookup("email", normalise_email(query)[1])
        except ApiError:
            run_id = None  # not an address anyone could have signed up with: nobody found
    elif query.startswith("usr_"):
        run_id = index.lookup("user", query)
    elif valid_run_id(query):
        run_id = query
    summary = index.get(run_id) if run_id else None
    return [summary] if summary else []


def _facet_and_found(
    request: web.Request, name: str, allowed: tuple[str, ...], field: Callable[[dict[str, Any]], str]
) -> tuple[list[dict[str, Any]], str | None]:
    """A list's page: ``q``'s run if asked for (and of the status asked, if any), or one page of the facet."""
    status = _choice(request, "status", allowed)
    limit, cursor = query_limit(request), query_cursor(request, valid_run_id)
    found = _found(request)
    if found is not None:
        return [s for s in found if status is None or field(s) == status], None
    facet = (name, status) if status else None
    return request.app[RUNTIME].index.page(limit=limit, before=cursor, facet=facet)


async def list_workflows(request: web.Request) -> web.Response:
    items, next_cursor = await asyncio.to_thread(_facet_and_found, request, "status", tuple(RunStatus), lambda s: s["status"])
    return json_response({"workflows": [views.workflow_summary(s) for s in items], "nextCursor": next_cursor})


async def get_workflow(request: web.Request) -> web.Response:
    run_id = request.match_info["id"]
    runtime = request.app[RUNTIME]
    known = valid_run_id(run_id) and runtime.index.get(run_id) is not None
    stored = await runtime.read(run_id) if known else None
    if stored is None:
        raise ApiError(404, "workflow_not_found", f"no workflow with id {run_id!r}")
    # Everything from the one committed snapshot, never half file and half index.
    hooks = request.app.get(WEBHOOKS)
    deliveries = await hooks.of_run(run_id) if hooks is not None else []
    return json_response(views.workflow_detail(stored, runtime.index.summarise(stored.run), deliveries))


async def list_users(request: web.Request) -> web.Response:
    items, next_cursor = await asyncio.to_thread(_facet_and_found, request, "user", USER_STATUSES, lambda s: s["user"]["status"])
    return json_response({"users": [views.user(s) for s in items], "nextCursor": next_cursor})


async def get_user(request: web.Request) -> web.Response:
    user_id = request.match_info["id"]
    index = request.app[RUNTIME].index
    run_id = index.lookup("user", user_id)
    summary = index.get(run_id) if run_id else None
    if summary is None:
        raise ApiError(404, "user_not_found", f"no user with id {user_id!r}")
    return json_response(views.user(summary))


def _email_key(email: dict[str, Any]) -> tuple[str, str]:
    return email["sentAt"], email["messageId"]


def _newest_first(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's kept emails, newest first; (sentAt, messageId) orders them, resends and reminders included."""
    return sorted(summary["emails"], key=_email_key, reverse=True)


def _outbox_cursor(raw: str) -> bool:
    return _OUTBOX_CURSOR.fullmatch(raw) is not None


def _outbox_only(request: web.Request) -> list[dict[str, Any]] | None:
    """The one run ``workflowId`` or ``to`` names (both: the run they both name), or None for every run."""
    index = request.app[RUNTIME].index
    run_ids: set[str] = set()
    run_id = request.query.get("workflowId")
    if run_id is not None:
        if not valid_run_id(run_id):
            raise ApiError(400, "invalid_workflowId", "workflowId: a workflow id, as wf_…")
        run_ids.add(run_id)
    to = request.query.get("to")
    if to is not None:
        try:
            email_key = normalise_email(to)[1]
        except ApiError as exc:
            raise ApiError(400, "invalid_to", f"to: an email address ({exc.message})") from None
        # The signup that holds the address now, as search finds it (an erased one holds it no longer).
        run_ids.add(index.lookup("email", email_key) or "")
    if not run_ids:
        return None
    summary = index.get(run_ids.pop()) if len(run_ids) == 1 and "" not in run_ids else None
    return [summary] if summary else []


def _outbox_page(
    request: web.Request, limit: int, cursor: str | None
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], str | None]:
    """One page of (summary, email): the newest signups first, each one's emails newest
    first, strictly past ``cursor``; and the next page's cursor. Runs come from the
    catalog a page at a time, so a page reads about as many runs as it shows."""
    index = request.app[RUNTIME].index
    after_run, after_email = None, None
    if cursor:
        after_run, sent_at, message_id = cursor.split("|")
        after_email = (sent_at, message_id)
    picked: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def take(summary: dict[str, Any]) -> None:
        if summary.get("erasedAt"):
            return  # an erased person's emails are gone from the outbox, whatever the catalog still lists
        past = after_email if summary["id"] == after_run else None
        picked.extend((summary, e) for e in _newest_first(summary) if past is None or _email_key(e) < past)

    only = _outbox_only(request)
    if only is not None:
        for summary in only:
            if after_run is None or summary["id"] <= after_run:
                take(summary)
    else:
        if after_run is not None:
            rest = index.get(after_run)
            if rest is not None:
                take(rest)  # the emails of the run the last page stopped within
        before = after_run
        while len(picked) <= limit:
            # Each listed run kept at least one email: this many runs fill the page and tell if there is more.
            summaries, before = index.page(limit=limit + 1 - len(picked), before=before, facet=("emails", "sent"))
            for summary in summaries:
                take(summary)
            if before is None:
                break
    page = picked[:limit]
    if len(picked) <= limit:
        return page, None
    summary, email = page[-1]
    return page, f"{summary['id']}|{email['sentAt']}|{email['messageId']}"


async def outbox(request: web.Request) -> web.Response:
    """Kept emails: the newest signups first, each one's emails newest first; ``workflowId``
    or ``to`` (an address) narrows to one run, ``cursor`` pages."""
    services: SignupServices = request.app[SERVICES]
    if not services.mailer.outbox_mode:
        raise ApiError(404, "outbox_disabled", "emails are sent over SMTP; there is no outbox to show")
    limit = query_limit(request, default=100)
    cursor = query_cursor(request, _outbox_cursor)
    page, next_cursor = await asyncio.to_thread(_outbox_page, request, limit, cursor)
    emails = [views.outbox_email(summary, e, services) for summary, e in page]
    return json_response({"emails": emails, "nextCursor": next_cursor})


# -- health -----------------------------------------------------------------------
