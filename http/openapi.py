"""The OpenAPI 3.1 description of the API, served at /api/openapi.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from userflow.http.errors import json_response

_STR = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_NTIME = {"type": ["string", "null"], "format": "date-time"}
_NSTR = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid input",
        404: "not found",
        409: "conflict with the current state",
        410: "no longer valid",
        413: "body too large",
        415: "body is not JSON",
        401: "not signed in, or the token or session is not valid (WWW-Authenticate: Bearer)",
        403: "a viewer acting, or a browser request from another site's page",
        429: "too many requests; see Retry-After",
        503: "starting, shutting down or storage unavailable",
    }
    return {str(code): _json(_ref("Error"), text[code]) for code in codes}


_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}}
_CURSOR = {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
_TOKEN = {"name": "token", "in": "query", "required": True, "schema": {"type": "string"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_BODY_ERRORS = (400, 413, 415, 503)

SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error=_obj(["code", "message"], code=_STR, message=_STR)),
    "SignupRequest": {
        **_obj(["email", "name"], email={"type": "string", "maxLength": 254}, name={"type": "string", "maxLength": 100}),
        "additionalProperties": False,
    },
    "SignupAccepted": _obj(
        ["workflowId", "userId", "status"],
        workflowId=_STR,
        userId=_STR,
        status=_STR,
        existing={"type": "boolean", "description": "true when a signup for this address was already in progress: the same run answers"},
        name={"type": "string", "description": "(existing only) the name on record: the one given first"},
        note={"type": "string", "description": "(existing only) why the name given now was not taken"},
    ),
    "ActionAccepted": _obj(["workflowId", "status"], workflowId=_STR, userId=_STR, status=_STR),
    "VerifyRequest": {**_obj(["token"], token=_STR), "additionalProperties": False},
    "Delivery": _obj(
        ["id", "eventId", "type", "url", "userId", "workflowId", "status", "attempts"],
        id=_STR,
        eventId={"type": "string", "description": "the webhook-id header, the same on every attempt"},
        type={"enum": ["user.created", "user.verified", "user.active", "user.flagged", "user.expired", "user.cancelled", "workflow.failed"]},
        url=_STR,
        userId=_NSTR,
        workflowId=_STR,
        status={"enum": ["pending", "delivered", "failed"]},
        attempts={
            "type": "array",
            "items": _obj(
                ["at", "status", "error", "durationMs"],
                at=_TIME,
                status={"type": ["integer", "null"], "description": "the receiver's HTTP status, if it answered"},
                error=_NSTR,
                durationMs={"type": "number"},
            ),
        },
        nextAttemptAt=_NTIME,
        createdAt=_TIME,
        resent={"type": "array", "items": _obj(["at", "by"], at=_TIME, by=_STR)},
    ),
    "SessionRequest": {**_obj(["token"], token={"type": "string", "minLength": 1, "maxLength": 200}), "additionalProperties": False},
    "Session": _obj(
        ["name", "role", "via", "expiresAt"],
        name=_STR,
        role={"enum": ["viewer", "operator"]},
        via={"enum": ["token", "session", "loopback"], "description": "loopback: no account exists and the client is local"},
        expiresAt=_NTIME,
    ),
    "Verified": _obj(["workflowId", "status"], workflowId=_STR, status={"const": "verified"}),
    "Risk": {
        "type": ["object", "null"],
        "properties": {
            "decision": {"enum": ["ALLOW", "FLAG"]},
            "score": {"type": "number"},
            "reasons": {"type": "array", "items": _STR},
            "source": {"enum": ["gemini", "heuristic", "heuristic-fallback"]},
            "model": _NSTR,
            "attempts": {"type": ["integer", "null"]},
            "latencyMs": {"type": ["number", "null"]},
        },
    },
    "User": _obj(
        ["id", "email", "name", "status", "risk", "createdAt", "verifiedAt", "finishedAt"],
        id=_STR,
        email=_STR,
        name=_STR,
        status={"enum": ["PENDING", "ACTIVE", "FLAGGED", "EXPIRED", "CANCELLED"]},
        risk=_ref("Risk"),
        workflowId=_STR,
        createdAt=_TIME,
        verifiedAt=_NTIME,
        finishedAt=_NTIME,
    ),
    "WorkflowSummary": _obj(
        ["id", "workflow", "status", "currentStep", "userId", "createdAt", "updatedAt"],
        id=_STR,
        workflow=_STR,
        status={"enum": ["RUNNING", "WAITING", "COMPLETED", "FAILED", "CANCELLED"]},
        currentStep=_NSTR,
        userId=_STR,
        email=_STR,
        userStatus=_STR,
        outcome=_NSTR,
        error={"type": ["object", "null"]},
        createdAt=_TIME,
        updatedAt=_TIME,
        finishedAt=_NTIME,
    ),
    "Attempt": _obj(["number", "startedAt", "finishedAt", "error"], number={"type": "integer"}, startedAt=_TIME, finishedAt=_NTIME, error=_NSTR),
    "Step": _obj(
        ["id", "name", "status", "attempts", "output"],
        id=_STR,
        name=_STR,
        kind={"enum": ["task", "wait"]},
        status={"enum": ["PENDING", "RUNNING", "RETRYING", "WAITING", "COMPLETED", "FAILED", "SKIPPED"]},
        attempts={"type": "array", "items": _ref("Attempt")},
        output={},
        startedAt=_NTIME,
        finishedAt=_NTIME,
        durationMs={"type": ["integer", "null"]},
        retryAt=_NTIME,
        deadlines={"type": ["object", "null"], "additionalProperties": _TIME, "description": "a wait's deadlines, e.g. reminder and expiry"},
    ),
    "TimelineEntry": _obj(
        ["at", "type", "step", "attempt", "message"],
        seq={"type": ["integer", "null"], "description": "null for webhook attempts, which are not the run's own records"},
        at=_TIME,
        type=_STR,
        step=_NSTR,
        attempt={"type": ["integer", "null"]},
        message=_STR,
    ),
    "WorkflowDetail": {
        "allOf": [
            _ref("WorkflowSummary"),
            _obj(
                ["steps", "timeline"],
                user=_ref("User"),
                steps={"type": "array", "items": _ref("Step")},
                timeline={"type": "array", "items": _ref("TimelineEntry")},
                webhooks={"type": "array", "items": _ref("Delivery")},
            ),
        ]
    },
    "OutboxEmail": _obj(
        ["to", "subject", "kind", "link", "messageId", "sentAt"],
        to=_STR,
        subject=_STR,
        kind={"enum": ["verification", "reminder", "resend"]},
        link=_STR,
        messageId=_STR,
        sentAt=_TIME,
        current={"type": "boolean", "description": "whether this email's link still verifies"},
        text=_STR,
        workflowId=_STR,
        userId=_STR,
    ),
}


SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "an operator token (`userflow operators add NAME --role ROLE` prints it, or USERFLOW_OPERATOR_TOKEN)",
    },
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "userflow_session",
        "description": "the dashboard's session, from POST /api/session; a state-changing request with it must come from this server's own origin",
    },
}
ROLE_TEXT = {
    "public": "Public: anyone may call it.",
    "viewer": "Needs an operator account of role viewer or operator.",
    "operator": "Needs an operator account of role operator.",
}


def _secure(paths: dict[str, Any], roles: Mapping[tuple[str, str], str]) -> None:
    """Each operation gets the role it needs, its security requirement and its refusals."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            role = roles.get((method.upper(), path), "operator")
            operation["x-required-role"] = role
            operation["description"] = (operation.get("description", "") + " " + ROLE_TEXT[role]).strip()
            if role == "public":
                operation["security"] = []
                continue
            operation["security"] = [{"bearerAuth": []}, {"sessionCookie": []}]
            refusals = (401, 403) if role == "operator" else (401,)
            operation["responses"].update({k: v for k, v in _errors(*refusals).items() if k not in operation["responses"]})


def document(roles: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/api/signup": {
            "post": {
                "summary": "Sign up: start the user's workflow (idempotent per email while PENDING)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SignupRequest")}}},
                "responses": {
                    "202": {**_json(_ref("SignupAccepted"), "accepted and durable"), "headers": {"Location": {"schema": _STR}}},
                    **_errors(400, 409, 413, 415, 429, 503),
                },
            }
        },
        "/api/verify": {
            "get": {
                "summary": "Verify an email address with the token from the link",
                "parameters": [_TOKEN],
                "responses": {"200": _json(_ref("Verified"), "verified (repeating is harmless)"), **_errors(400, 404, 410, 429, 503)},
            },
            "post": {
                "summary": "Verify an email address (for forms and clients)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("VerifyRequest")}}},
                "responses": {"200": _json(_ref("Verified"), "verified"), **_errors(*_BODY_ERRORS, 404, 410, 429)},
            },
        },
        "/api/workflows": {
            "get": {
                "summary": "Workflow runs, newest first",
                "parameters": [{"name": "status", "in": "query", "schema": _STR}, _LIMIT, _CURSOR],
                "responses": {
                    "200": _json(
                        _obj(["workflows", "nextCursor"], workflows={"type": "array", "items": _ref("WorkflowSummary")}, nextCursor=_NSTR),
                        "one page",
                    ),
                    **_errors(400, 503),
                },
            }
        },
        "/api/workflows/{id}": {
            "get": {
                "summary": "One run with its steps, attempts and timeline",
                "parameters": [_ID],
                "responses": {"200": _json(_ref("WorkflowDetail"), "the run"), **_errors(404, 503)},
            }
        },
        "/api/workflows/{id}/retry": {
            "post": {
                "summary": "Resume a FAILED run from its failed step, with a fresh attempt budget",
                "parameters": [_ID],
                "responses": {"202": _json(_ref("ActionAccepted"), "resumed (durable)"), **_errors(404, 409, 503)},
            }
        },
        "/api/workflows/failed/retry": {
            "post": {
                "summary": "Resume every FAILED run from its failed step (after an outage), each audited",
                "responses": {
                    "202": _json(
                        _obj(["retried", "workflowIds"], retried={"type": "integer"}, workflowIds={"type": "array", "items": _STR}),
                        "the runs resumed",
                    ),
                    **_errors(503),
                },
            }
        },
        "/api/workflows/{id}/cancel": {
            "post": {
                "summary": "Cancel a RUNNING or WAITING run: its timers are dropped and its link stops working",
                "parameters": [_ID],
                "responses": {"200": _json(_ref("ActionAccepted"), "cancelled (durable)"), **_errors(404, 409, 503)},
            }
        },
        "/api/users/{id}/resend-verification": {
            "post": {
                "summary": "A fresh link by a new email for a PENDING user; the old link answers 410; the deadline stays",
                "parameters": [_ID],
                "responses": {"202": _json(_ref("ActionAccepted"), "the new email is on its way"), **_errors(404, 409, 429, 503)},
            }
        },
        "/api/users": {
            "get": {
                "summary": "Users, newest first",
                "parameters": [{"name": "status", "in": "query", "schema": _STR}, _LIMIT, _CURSOR],
                "responses": {
                    "200": _json(_obj(["users", "nextCursor"], users={"type": "array", "items": _ref("User")}, nextCursor=_NSTR), "one page"),
                    **_errors(400, 503),
                },
            }
        },
        "/api/users/{id}": {
            "get": {"summary": "One user", "parameters": [_ID], "responses": {"200": _json(_ref("User"), "the user"), **_errors(404, 503)}}
        },
        "/api/outbox": {
            "get": {
                "summary": "Emails kept in outbox mode, newest first (404 with SMTP)",
                "parameters": [
                    _LIMIT,
                    {"name": "cursor", "in": "query", "schema": _STR},
                    {"name": "workflowId", "in": "query", "schema": _STR},
                ],
                "responses": {
                    "200": _json(
                        _obj(["emails", "nextCursor"], emails={"type": "array", "items": _ref("OutboxEmail")}, nextCursor=_NSTR),
                        "the outbox",
                    ),
                    **_errors(400, 404, 503),
                },
            }
        },
        "/api/events": {
            "get": {
                "summary": "Server-Sent Events: `timeline` (one per entry), `run` (a run's new summary), `reset` (reload)",
                "description": "Ids are BOOT-SEQ; send Last-Event-ID (header, or ?lastEventId=) to get exactly the events missed. Heartbeat comments every 15 s.",
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "schema": _STR},
                    {"name": "lastEventId", "in": "query", "schema": _STR},
                ],
                "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {}}}, **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
            }
        },
        "/api/webhooks/deliveries": {
            "get": {
                "summary": "Webhook deliveries, newest first: one per event and URL, with every attempt",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"enum": ["pending", "delivered", "failed"]}},
                    _LIMIT,
                    {"name": "cursor", "in": "query", "schema": _STR},
                ],
                "responses": {
                    "200": _json(
                        _obj(
                            ["deliveries", "nextCursor", "configured"],
                            deliveries={"type": "array", "items": _ref("Delivery")},
                            nextCursor=_NSTR,
                            configured={"type": "boolean", "description": "whether the server has a webhook URL at all"},
                        ),
                        "one page",
                    ),
                    **_errors(400, 503),
                },
            }
        },
        "/api/webhooks/deliveries/{id}/retry": {
            "post": {
                "summary": "Send a failed delivery again (one attempt), with the same webhook-id",
                "parameters": [_ID],
                "responses": {"202": _json(_ref("Delivery"), "on its way"), **_errors(404, 409, 503)},
            }
        },
        "/api/session": {
            "post": {
                "summary": "Sign in: exchange an operator token for a session cookie (for the dashboard)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SessionRequest")}}},
                "responses": {
                    "204": {"description": "signed in; Set-Cookie carries the session", "headers": {"Set-Cookie": {"schema": _STR}}},
                    **_errors(*_BODY_ERRORS, 401, 403, 429),
                },
            },
            "get": {
                "summary": "Who this request acts for",
                "responses": {"200": _json(_ref("Session"), "the signed-in account")},
            },
            "delete": {
                "summary": "Sign out: the session ends and its cookie is refused from now on",
                "responses": {"204": {"description": "signed out"}, **_errors(403)},
            },
        },
        "/signin": {"get": {"summary": "The dashboard's sign-in page", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(_obj(["status"], status=_STR), "alive")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: 200 once recovery is done",
                "responses": {"200": _json(_obj(["status"], status=_STR), "ready"), "503": _json(_obj(["status"], status=_STR), "recovering")},
            }
        },
        "/verify": {
            "get": {
                "summary": "Page with a button that confirms the email (GET alone verifies no one)",
                "description": (
                    "200 with the button for a link that can verify, or saying the address is already "
                    "confirmed; otherwise a page that says what is wrong with the link and what to do: "
                    "400 incomplete or damaged, 404 unknown, 410 replaced by a newer email, expired or closed"
                ),
                "parameters": [{"name": "token", "in": "query", "schema": _STR}],
                "responses": {str(c): {"description": "HTML page", "content": {"text/html": {}}} for c in (200, 400, 404, 410, 429, 503)},
            },
            "post": {
                "summary": "The page's form submission",
                "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": _obj([], token=_STR)}}},
                "responses": {str(c): {"description": "HTML result page", "content": {"text/html": {}}} for c in (200, 400, 404, 410, 503)},
            },
        },
        "/static/{name}": {
            "get": {
                "summary": "A file of the dashboard (its script, style sheet, pictures)",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": _STR}],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            t: {}
                            for t in (
                                "text/css",
                                "text/javascript",
                                "application/javascript",
                                "text/html",
                                "image/png",
                                "image/svg+xml",
                                "image/vnd.microsoft.icon",
                                "image/x-icon",
                            )
                        },
                    },
                    **_errors(404),
                },
            }
        },
        "/": {"get": {"summary": "The dashboard", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
    }
    _secure(paths, roles)
    return {
        "openapi": "3.1.0",
        "info": {"title": "userflow", "version": "0.1.0", "description": "The user lifecycle as one durable workflow per user."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


ROLES = web.AppKey("roles", dict)


async def openapi(request: web.Request) -> web.Response:
    return json_response(document(request.app[ROLES]))
