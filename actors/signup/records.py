"""What a signup's run says of its user, and what lists show of it and find it by.

The user record (``user_of``) is derived from the run: its input until
create-user has run, the stored record after, and the time of the click.
``summary``, ``facets`` and ``keys`` are the workflow's hooks for the store's
catalog: what a list shows, what lists filter and count by, and the keys
that find the run (its address, its user id, its tokens' hashes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from userflow.actors.timeutil import bucket, epoch

EMAIL_VERIFIED = "email-verified"


class UserStatus:
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    FLAGGED = "FLAGGED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"  # an operator cancelled the signup before it finished


def _verified_at(run: Mapping[str, Any]) -> str | None:
    for step in run["steps"]:
        if step["id"] == "wait-for-verification" and step["output"]:
            return step["output"].get("receivedAt")  # None if the wait ended by a deadline
    for signal in run["signals"]:
        if signal["name"] == EMAIL_VERIFIED:
            return signal["receivedAt"]
    return None


def user_of(run: Mapping[str, Any]) -> dict[str, Any]:
    """The user record, also before create-user has run (then PENDING, from the input)."""
    stored = run["state"].get("user")
    given = run["input"]
    user = {
        "id": given["userId"],
        "email": given["email"],
        "name": given["name"],
        "status": UserStatus.PENDING,
        "risk": None,
        "createdAt": given["requestedAt"],
        "finishedAt": None,
    }
    if stored:
        user.update(stored)
    user["verifiedAt"] = _verified_at(run)
    user["workflowId"] = run["id"]
    return user


def summary(run: Mapping[str, Any]) -> dict[str, Any]:
    emails = [
        {key: e[key] for key in ("messageId", "kind", "to", "subject", "sendNo", "sentAt")}
        for e in run["state"].get("emails", ())
        if e["status"] == "sent"
    ]
    # The user's id and workflow id are the summary's own: not kept twice.
    user = {key: value for key, value in user_of(run).items() if key not in ("id", "workflowId")}
    return {
        "userId": run["input"]["userId"],
        "user": user,
        "emails": emails,
        "sendNo": run["state"].get("sendNo", 1),
        "linkExpiresAt": run["state"].get("linkExpiresAt"),  # what the emails say, for the outbox to say it again
    }


#: The upper bounds (seconds) of the buckets time to verify is counted in; the last is open.
VERIFY_BUCKETS = (60, 300, 900, 3600, 6 * 3600, 24 * 3600)


def facets(run: Mapping[str, Any]) -> dict[str, str]:
    """What the users list filters by, the outbox lists and the overview counts."""
    user = user_of(run)
    found = {"user": user["status"]}
    if run["input"]["email"] is not None and any(e["status"] == "sent" for e in run["state"].get("emails", ())):
        found["emails"] = "sent"  # the outbox lists them (an erased person's, never)
    if user["verifiedAt"]:
        found["verified"] = bucket(user["verifiedAt"])
        took = epoch(user["verifiedAt"]) - epoch(run["createdAt"])
        found["verify-time"] = str(next((upper for upper in VERIFY_BUCKETS if took <= upper), "more"))
    return found


def keys(run: Mapping[str, Any]) -> dict[str, list[str]]:
    return {
        "email": [run["input"]["emailKey"]],
        "user": [run["input"]["userId"]],
        "token": list(run["state"].get("tokenHashes", ())),
    }
