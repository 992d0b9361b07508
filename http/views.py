"""JSON shapes of runs, users and outbox emails, as the API documents them."""

from __future__ import annotations

import heapq
from datetime import datetime
from typing import Any

from userflow.actors.signup import SignupServices
from userflow.actors.delivery import FAILED, Delivery
from userflow.actors.signup.templates import expiry_text
from userflow.actors.signup.workflow import stated_expiry
from userflow.storage import StoredRun


def _ms_between(start: str | None, end: str | None) -> int | None:
    if not start or not end:
        return None
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return round(delta.total_seconds() * 1000)


def user(summary: dict[str, Any]) -> dict[str, Any]:
    u = summary["user"]
    risk = u.get("risk")
    return {
        "id": summary["userId"],
        "email": u["email"],
        "name": u["name"],
        "status": u["status"],
        "risk": risk
        and {
            "decision": risk["decision"],
            "score": risk["score"],
            "reasons": risk["reasons"],
            "source": risk["source"],
            "model": risk.get("model"),
            "attempts": risk.get("attempts"),
            "latencyMs": risk.get("latencyMs"),
        },
        "workflowId": summary["id"],
        "erasedAt": summary.get("erasedAt"),
        "createdAt": u["createdAt"],
        "verifiedAt": u["verifiedAt"],
        "finishedAt": u["finishedAt"],
    }


def workflow_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": summary["id"],
        "workflow": summary["workflow"],
        "status": summary["status"],
        "currentStep": summary["currentStep"],
        "userId": summary["userId"],
        "email": summary["user"]["email"],
        "userStatus": summary["user"]["status"],
        "outcome": summary["outcome"],
        "error": summary["error"],
        "createdAt": summary["createdAt"],
        "updatedAt": summary["updatedAt"],
        "finishedAt": summary["finishedAt"],
    }


def _step_output(step: dict[str, Any]) -> Any:
    output = step["output"]
    if step["kind"] == "wait" and output:
        # The signal's payload holds a token hash: it is no one's business.
        return {key: value for key, value in output.items() if key != "payload"}
    return output


def workflow_detail(stored: StoredRun, summary: dict[str, Any], deliveries: list[Delivery] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    run = stored.run
    steps = [
        {
            "id": step["id"],
            "name": step["name"],
            "kind": step["kind"],
            "status": step["status"],
            "attempts": [
                {"number": a["number"], "startedAt": a["startedAt"], "finishedAt": a["finishedAt"], "error": a["error"], "node": a.get("node")}
                for a in step["attempts"]
            ],
            "output": _step_output(step),
            "startedAt": step["startedAt"],
            "finishedAt": step["finishedAt"],
            "durationMs": _ms_between(step["startedAt"], step["finishedAt"]),
            "retryAt": step["retryAt"],
            "deadlines": step.get("deadlines"),
        }
        for step in run["steps"]
    ]
    detail = workflow_summary(summary)
    detail.update(
        {
            "status": run["status"],
            "currentStep": run["steps"][run["cursor"]]["id"] if run["cursor"] < len(run["steps"]) else None,
            "updatedAt": run["updatedAt"],
            "node": run.get("node"),  # the node executing it, or that did last
            "user": user(summary),
            "steps": steps,
            # The run's own entries in their order, its webhook attempts among them by time.
            "timeline": list(
                heapq.merge(
                    [
                        {
                            "seq": e["seq"],
                            "at": e["at"],
                            "type": e["type"],
                            "step": e["step"],
                            "attempt": e["attempt"],
                            "message": e["message"],
                            "node": e.get("node"),
                        }
                        for e in stored.timeline
                    ],
                    sorted(webhook_timeline(list(deliveries)), key=lambda e: e["at"]),
                    key=lambda e: e["at"],
                )
            ),
            "webhooks": [d.view() for d in deliveries],
            "detailsDropped": run.get("detailsDropped"),
        }
    )
    return detail


def webhook_timeline(deliveries: list[Delivery]) -> list[dict[str, Any]]:
    """Each attempt of the run's deliveries as a timeline entry (they are not the run's
    own records: another writer keeps them). An attempt after which the delivery was
    given up stays marked so, even when an operator sent it again later."""
    entries = []
    for delivery in deliveries:
        resends = [r["at"] for r in delivery.resent]
        for number, attempt in enumerate(delivery.attempts, 1):
            later = delivery.attempts[number]["at"] if number < len(delivery.attempts) else None
            gave_up = (later is None and delivery.status == FAILED) or any(
                attempt["at"] <= at and (later is None or at <= later) for at in resends
            )
            if attempt["error"] is None:
                kind, outcome = "webhook-delivered", f"delivered (HTTP {attempt['status']}, {attempt['durationMs']:.0f} ms)"
            elif gave_up:
                kind, outcome = "webhook-failed", f"failed: {attempt['error']}; given up"
            else:
                kind, outcome = "webhook-retrying", f"attempt failed: {attempt['error']}"
            message = f"webhook {delivery.type} to {delivery.url}: {outcome}"
            entries.append({"seq": None, "at": attempt["at"], "type": kind, "step": None, "attempt": number, "message": message, "node": None})
        for resend in delivery.resent:
            message = f"webhook {delivery.type} to {delivery.url}: sent again by {resend['by']}"
            entries.append({"seq": None, "at": resend["at"], "type": "webhook-resent", "step": None, "attempt": None, "message": message, "node": None})
    return entries


def outbox_email(summary: dict[str, Any], email: dict[str, Any], services: SignupServices) -> dict[str, Any]:
    """An outbox entry; the link is derived again, the token was never stored."""
    link = services.link(summary["id"], email["sendNo"])
    expires_at = stated_expiry(summary.get("linkExpiresAt"), summary["emails"], services.verify_ttl)
    text = services.templates.text(  # the same words as the email, from the same templates
        email["kind"],
        name=summary["user"]["name"],
        email=email["to"],
        link=link,
        expiresAt=expiry_text(datetime.fromisoformat(expires_at)),
    )
    return {
        "to": email["to"],
        "subject": email["subject"],
        "kind": email["kind"],
        "link": link,
        "messageId": email["messageId"],
        "sentAt": email["sentAt"],
        "current": email["sendNo"] == summary["sendNo"] and summary["status"] not in ("COMPLETED", "CANCELLED"),
        "text": text,
        "workflowId": summary["id"],
        "userId": summary["userId"],
    }
