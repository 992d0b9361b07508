"""The shapes of the API's bodies, for the OpenAPI document (``openapi.py``), and the
small builders both use to write JSON Schema without repeating its boilerplate."""

from __future__ import annotations

from typing import Any

STR = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
NTIME = {"type": ["string", "null"], "format": "date-time"}
NSTR = {"type": ["string", "null"]}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*codes: int) -> dict[str, Any]:
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
    return {str(code): json_body(ref("Error"), text[code]) for code in codes}


LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}}
CURSOR = {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
SEARCH = {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 320}}
TOKEN = {"name": "token", "in": "query", "required": True, "schema": {"type": "string"}}
ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
BODY_ERRORS = (400, 413, 415, 503)

SCHEMAS: dict[str, Any] = {
    "Error": obj(["error"], error=obj(["code", "message"], code=STR, message=STR)),
    "SignupRequest": {
        **obj(["email", "name"], email={"type": "string", "maxLength": 254}, name={"type": "string", "maxLength": 100}),
        "additionalProperties": False,
    },
    "SignupAccepted": obj(
        ["workflowId", "userId", "status"],
        workflowId=STR,
        userId=STR,
        status=STR,
        existing={"type": "boolean", "description": "true when a signup for this address was already in progress: the same run answers"},
        name={"type": "string", "description": "(existing only) the name on record: the one given first"},
        note={"type": "string", "description": "(existing only) why the name given now was not taken"},
    ),
    "ActionAccepted": obj(["workflowId", "status"], workflowId=STR, userId=STR, status=STR),
    "VerifyRequest": {**obj(["token"], token=STR), "additionalProperties": False},
    "Delivery": obj(
        ["id", "eventId", "type", "url", "userId", "workflowId", "status", "attempts"],
        id=STR,
        eventId={"type": "string", "description": "the webhook-id header, the same on every attempt"},
        type={"enum": ["user.created", "user.verified", "user.active", "user.flagged", "user.expired", "user.cancelled", "user.erased", "workflow.failed"]},
        url=STR,
        userId=NSTR,
        workflowId=STR,
        status={"enum": ["pending", "delivered", "failed"]},
        attempts={
            "type": "array",
            "items": obj(
                ["at", "status", "error", "durationMs"],
                at=TIME,
                status={"type": ["integer", "null"], "description": "the receiver's HTTP status, if it answered"},
                error=NSTR,
                durationMs={"type": "number"},
            ),
        },
        nextAttemptAt=NTIME,
        createdAt=TIME,
        resent={"type": "array", "items": obj(["at", "by"], at=TIME, by=STR)},
    ),
    "SessionRequest": {**obj(["token"], token={"type": "string", "minLength": 1, "maxLength": 200}), "additionalProperties": False},
    "Session": obj(
        ["name", "role", "via", "expiresAt"],
        name=STR,
        role={"enum": ["viewer", "operator"]},
        via={"enum": ["token", "session", "loopback"], "description": "loopback: no account exists and the client is local"},
        expiresAt=NTIME,
    ),
    "Verified": obj(["workflowId", "status"], workflowId=STR, status={"const": "verified"}),
    "Risk": {
        "type": ["object", "null"],
        "properties": {
            "decision": {"enum": ["ALLOW", "FLAG"]},
            "score": {"type": "number"},
            "reasons": {"type": "array", "items": STR},
            "source": {"enum": ["gemini", "heuristic", "heuristic-fallback"]},
            "model": NSTR,
            "attempts": {"type": ["integer", "null"]},
            "latencyMs": {"type": ["number", "null"]},
        },
    },
    "Overview": obj(
        ["runs", "users", "funnel", "conversion", "timeToVerify", "lastHour", "lastDay"],
        runs={"type": "object", "additionalProperties": {"type": "integer"}},
        users={"type": "object", "additionalProperties": {"type": "integer"}},
        funnel=obj(
            ["signedUp", "verified", "active", "flagged", "expired", "cancelled"],
            **{k: {"type": "integer"} for k in ("signedUp", "verified", "active", "flagged", "expired", "cancelled")},
        ),
        conversion=obj(["verified", "active"], verified={"type": ["number", "null"]}, active={"type": ["number", "null"]}),
        timeToVerify=obj(
            ["buckets", "medianUpTo"],
            buckets={"type": "array", "items": obj(["upTo", "count"], upTo={"type": ["integer", "null"]}, count={"type": "integer"})},
            medianUpTo={"type": ["integer", "null"]},
        ),
        lastHour={"type": "array", "items": {"$ref": "#/components/schemas/CountsAt"}},
        lastDay={"type": "array", "items": {"$ref": "#/components/schemas/CountsAt"}},
    ),
    "CountsAt": obj(
        ["at", "signups", "verified", "failures"],
        at=STR,
        signups={"type": "integer"},
        verified={"type": "integer"},
        failures={"type": "integer"},
    ),
    "User": obj(
        ["id", "email", "name", "status", "risk", "createdAt", "verifiedAt", "finishedAt"],
        id=STR,
        email=NSTR,
        name=NSTR,
        status={"enum": ["PENDING", "ACTIVE", "FLAGGED", "EXPIRED", "CANCELLED"]},
        risk=ref("Risk"),
        workflowId=STR,
        erasedAt=NTIME,
        createdAt=TIME,
        verifiedAt=NTIME,
        finishedAt=NTIME,
    ),
    "WorkflowSummary": obj(
        ["id", "workflow", "status", "currentStep", "userId", "createdAt", "updatedAt"],
        id=STR,
        workflow=STR,
        status={"enum": ["RUNNING", "WAITING", "COMPLETED", "FAILED", "CANCELLED"]},
        currentStep=NSTR,
        userId=STR,
        email=NSTR,
        userStatus=STR,
        outcome=NSTR,
        error={"type": ["object", "null"]},
        createdAt=TIME,
        updatedAt=TIME,
        finishedAt=NTIME,
    ),
    "Attempt": obj(["number", "startedAt", "finishedAt", "error"], number={"type": "integer"}, startedAt=TIME, finishedAt=NTIME, error=NSTR),
    "Step": obj(
        ["id", "name", "status", "attempts", "output"],
        id=STR,
        name=STR,
        kind={"enum": ["task", "wait"]},
        status={"enum": ["PENDING", "RUNNING", "RETRYING", "WAITING", "COMPLETED", "FAILED", "SKIPPED"]},
        attempts={"type": "array", "items": ref("Attempt")},
        output={},
        startedAt=NTIME,
        finishedAt=NTIME,
        durationMs={"type": ["integer", "null"]},
        retryAt=NTIME,
        deadlines={"type": ["object", "null"], "additionalProperties": TIME, "description": "a wait's deadlines, e.g. reminder and expiry"},
    ),
    "TimelineEntry": obj(
        ["at", "type", "step", "attempt", "message"],
        seq={"type": ["integer", "null"], "description": "null for webhook attempts, which are not the run's own records"},
        at=TIME,
        type=STR,
        step=NSTR,
        attempt={"type": ["integer", "null"]},
        message=STR,
    ),
    "WorkflowDetail": {
        "allOf": [
            ref("WorkflowSummary"),
            obj(
                ["steps", "timeline"],
                user=ref("User"),
                steps={"type": "array", "items": ref("Step")},
                timeline={"type": "array", "items": ref("TimelineEntry")},
                webhooks={"type": "array", "items": ref("Delivery")},
                detailsDropped={
                    **NTIME,
                    "description": "when retention (--retain-finished) dropped the steps' attempts and outputs and the timeline; null while they are kept",
                },
            ),
        ]
    },
    "OutboxEmail": obj(
        ["to", "subject", "kind", "link", "messageId", "sentAt"],
        to=STR,
        subject=STR,
        kind={"enum": ["verification", "reminder", "resend"]},
        link=STR,
        messageId=STR,
        sentAt=TIME,
        current={"type": "boolean", "description": "whether this email's link still verifies"},
        text=STR,
        workflowId=STR,
        userId=STR,
    ),
}
