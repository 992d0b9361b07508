"""The OpenAPI 3.1 description of the API, served at /api/openapi.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from userflow.http.errors import json_response
from userflow.http.openapi_schemas import (
    BODY_ERRORS,
    CURSOR,
    ID,
    LIMIT,
    NSTR,
    NTIME,
    SEARCH,
    SCHEMAS,
    STR,
    TIME,
    TOKEN,
    errors,
    json_body,
    obj,
    ref,
)


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
            operation["responses"].update({k: v for k, v in errors(*refusals).items() if k not in operation["responses"]})


def document(roles: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/api/signup": {
            "post": {
                "summary": "Sign up: start the user's workflow (idempotent per email while PENDING)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("SignupRequest")}}},
                "responses": {
                    "202": {**json_body(ref("SignupAccepted"), "accepted and durable"), "headers": {"Location": {"schema": STR}}},
                    **errors(400, 409, 413, 415, 429, 503),
                },
            }
        },
        "/api/verify": {
            "get": {
                "summary": "Verify an email address with the token from the link",
                "parameters": [TOKEN],
                "responses": {"200": json_body(ref("Verified"), "verified (repeating is harmless)"), **errors(400, 404, 410, 429, 503)},
            },
            "post": {
                "summary": "Verify an email address (for forms and clients)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("VerifyRequest")}}},
                "responses": {"200": json_body(ref("Verified"), "verified"), **errors(*BODY_ERRORS, 404, 410, 429)},
            },
        },
        "/api/overview": {
            "get": {
                "summary": "Counts over every stored run: the funnel, conversion, time to verify, the last hour and day",
                "responses": {"200": json_body(ref("Overview"), "the overview"), **errors(503)},
            }
        },
        "/api/workflows": {
            "get": {
                "summary": "Workflow runs, newest first; q finds one by email address, workflow id or user id",
                "parameters": [{"name": "status", "in": "query", "schema": STR}, SEARCH, LIMIT, CURSOR],
                "responses": {
                    "200": json_body(
                        obj(["workflows", "nextCursor"], workflows={"type": "array", "items": ref("WorkflowSummary")}, nextCursor=NSTR),
                        "one page",
                    ),
                    **errors(400, 503),
                },
            }
        },
        "/api/workflows/{id}": {
            "get": {
                "summary": "One run with its steps, attempts and timeline",
                "parameters": [ID],
                "responses": {"200": json_body(ref("WorkflowDetail"), "the run"), **errors(404, 503)},
            }
        },
        "/api/workflows/{id}/retry": {
            "post": {
                "summary": "Resume a FAILED run from its failed step, with a fresh attempt budget",
                "parameters": [ID],
                "responses": {"202": json_body(ref("ActionAccepted"), "resumed (durable)"), **errors(404, 409, 503)},
            }
        },
        "/api/workflows/failed/retry": {
            "post": {
                "summary": "Resume every FAILED run from its failed step (after an outage), each audited",
                "responses": {
                    "202": json_body(
                        obj(["retried", "workflowIds"], retried={"type": "integer"}, workflowIds={"type": "array", "items": STR}),
                        "the runs resumed",
                    ),
                    **errors(503),
                },
            }
        },
        "/api/workflows/{id}/cancel": {
            "post": {
                "summary": "Cancel a RUNNING or WAITING run: its timers are dropped and its link stops working",
                "parameters": [ID],
                "responses": {"200": json_body(ref("ActionAccepted"), "cancelled (durable)"), **errors(404, 409, 503)},
            }
        },
        "/api/users/{id}/resend-verification": {
            "post": {
                "summary": "A fresh link by a new email for a PENDING user; the old link answers 410; the deadline stays",
                "parameters": [ID],
                "responses": {"202": json_body(ref("ActionAccepted"), "the new email is on its way"), **errors(404, 409, 429, 503)},
            }
        },
        "/api/users": {
            "get": {
                "summary": "Users, newest first; q finds one by email address, user id or workflow id",
                "parameters": [{"name": "status", "in": "query", "schema": STR}, SEARCH, LIMIT, CURSOR],
                "responses": {
                    "200": json_body(obj(["users", "nextCursor"], users={"type": "array", "items": ref("User")}, nextCursor=NSTR), "one page"),
                    **errors(400, 503),
                },
            }
        },
        "/api/users/{id}": {
            "get": {"summary": "One user", "parameters": [ID], "responses": {"200": json_body(ref("User"), "the user"), **errors(404, 503)}},
            "delete": {
                "summary": "Erase the person: address and name gone from everything kept (a running signup is cancelled first)",
                "parameters": [ID],
                "responses": {
                    "200": json_body(
                        obj(["user", "workflowId", "erasedAt"], user=ref("User"), workflowId=STR, erasedAt=STR), "erased (durable); again: the same"
                    ),
                    **errors(404, 409, 503),
                },
            },
        },
        "/api/outbox": {
            "get": {
                "summary": "Emails kept in outbox mode, newest first (404 with SMTP)",
                "description": "The newest signups first, each one's emails newest first (resends and reminders"
                " beside the first email), paged through the catalog; an erased person's emails are never listed.",
                "parameters": [
                    LIMIT,
                    {"name": "cursor", "in": "query", "schema": STR,
                     "description": "the nextCursor of the previous page: the next page goes on where it stopped, within a run's emails too"},
                    {"name": "workflowId", "in": "query", "schema": STR, "description": "only this run's emails"},
                    {"name": "to", "in": "query", "schema": STR,
                     "description": "only the emails of the signup this address names now (as /api/users?q= finds it)"},
                ],  # fmt: skip
                "responses": {
                    "200": json_body(
                        obj(["emails", "nextCursor"], emails={"type": "array", "items": ref("OutboxEmail")}, nextCursor=NSTR),
                        "the outbox",
                    ),
                    **errors(400, 404, 503),
                },
            }
        },
        "/api/events": {
            "get": {
                "summary": "Server-Sent Events: `timeline` (one per entry), `run` (a run's new summary), `reset` (reload)",
                "description": "Ids are BOOT-SEQ; send Last-Event-ID (header, or ?lastEventId=) to get exactly the events missed. Heartbeat comments every 15 s.",
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "schema": STR},
                    {"name": "lastEventId", "in": "query", "schema": STR},
                ],
                "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {}}}, **errors(503)},
            }
        },
        "/api/nodes": {
            "get": {
                "summary": "The nodes sharing the store: alive or not, runs executing now, last heartbeat",
                "description": (
                    "On PostgreSQL every node of the database (alive: renewed within --node-timeout by the "
                    "database clock, and not stopped); on the data dir this process alone."
                ),
                "responses": {
                    "200": json_body(
                        obj(
                            ["node", "nodes"],
                            node=STR,
                            nodes={
                                "type": "array",
                                "items": obj(
                                    ["id", "alive", "executing", "self"],
                                    id=STR, address=NSTR, alive={"type": "boolean"}, executing={"type": "integer"},
                                    self={"type": "boolean"}, startedAt=TIME, heartbeatAt=TIME, stoppedAt=NTIME,
                                    heartbeatAgeSeconds={"type": "number"},
                                ),
                            },
                        ),
                        "the nodes, by id",
                    ),
                    **errors(503),
                },
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
                    LIMIT,
                    {"name": "cursor", "in": "query", "schema": STR},
                ],
                "responses": {
                    "200": json_body(
                        obj(
                            ["deliveries", "nextCursor", "configured"],
                            deliveries={"type": "array", "items": ref("Delivery")},
                            nextCursor=NSTR,
                            configured={"type": "boolean", "description": "whether the server has a webhook URL at all"},
                        ),
                        "one page",
                    ),
                    **errors(400, 503),
                },
            }
        },
        "/api/webhooks/deliveries/{id}/retry": {
            "post": {
                "summary": "Send a failed delivery again (one attempt), with the same webhook-id",
                "parameters": [ID],
                "responses": {"202": json_body(ref("Delivery"), "on its way"), **errors(404, 409, 503)},
            }
        },
        "/api/session": {
            "post": {
                "summary": "Sign in: exchange an operator token for a session cookie (for the dashboard)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("SessionRequest")}}},
                "responses": {
                    "204": {"description": "signed in; Set-Cookie carries the session", "headers": {"Set-Cookie": {"schema": STR}}},
                    **errors(*BODY_ERRORS, 401, 403, 429),
                },
            },
            "get": {
                "summary": "Who this request acts for",
                "responses": {"200": json_body(ref("Session"), "the signed-in account")},
            },
            "delete": {
                "summary": "Sign out: the session ends and its cookie is refused from now on",
                "responses": {"204": {"description": "signed out"}, **errors(403)},
            },
        },
        "/signin": {"get": {"summary": "The dashboard's sign-in page", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": json_body({"type": "object"}, "OpenAPI 3.1")}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": json_body(obj(["status"], status=STR), "alive")}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: 200 once recovery is done",
                "responses": {
                    "200": json_body(obj(["status", "node"], status=STR, node=STR, runs={"type": "integer"}), "ready"),
                    "503": json_body(obj(["status", "node"], status=STR, node=STR), "recovering, or the store is unavailable"),
                },
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
                "parameters": [{"name": "token", "in": "query", "schema": STR}],
                "responses": {str(c): {"description": "HTML page", "content": {"text/html": {}}} for c in (200, 400, 404, 410, 429, 503)},
            },
            "post": {
                "summary": "The page's form submission",
                "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": obj([], token=STR)}}},
                "responses": {str(c): {"description": "HTML result page", "content": {"text/html": {}}} for c in (200, 400, 404, 410, 503)},
            },
        },
        "/static/{name}": {
            "get": {
                "summary": "A file of the dashboard (its script, style sheet, pictures)",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": STR}],
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
                    **errors(404),
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
