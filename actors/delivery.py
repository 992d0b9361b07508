"""A webhook delivery: one event to one URL, what became of it, and the settings
every delivery follows (URLs, signing secrets, timeout, retry schedule).

``Delivery.record()`` is its durable state (a ``storage.deliveries`` store keeps it);
``Delivery.view()`` is how the API and the dashboard show it. The sending
itself is ``actors.webhooks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from standardwebhooks.webhooks import Webhook

from userflow.actors.timeutil import iso

DEFAULT_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class WebhookSettings:
    urls: tuple[str, ...]
    secrets: tuple[str, ...]  # whsec_<base64>, every one signs every request
    timeout: float = 15.0
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE

    def __post_init__(self) -> None:
        if self.urls and not self.secrets:
            raise ValueError("webhooks need USERFLOW_WEBHOOK_SECRET (whsec_...) to sign their requests")
        for secret in self.secrets:
            check_secret(secret)


def check_secret(secret: str) -> Webhook:
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret looks like whsec_<base64>")
    try:
        return Webhook(secret)
    except Exception:  # noqa: BLE001 - the library raises several kinds for a bad secret
        raise ValueError("a webhook secret looks like whsec_<base64>; this one does not decode") from None


class Delivery:
    """One event to one URL, and what became of it."""

    __slots__ = ("id", "event_id", "number", "run_id", "user_id", "type", "url", "status", "attempts", "next_at", "created_at", "payload", "manual", "resent", "claim")

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.id: str = record["id"]
        self.event_id: str = record["eventId"]
        self.number: int = record["number"]
        self.run_id: str = record["workflowId"]
        self.user_id: str | None = record.get("userId")
        self.type: str = record["type"]
        self.url: str = record["url"]
        self.status: str = record["status"]
        self.attempts: list[dict[str, Any]] = list(record.get("attempts", ()))
        self.next_at: float | None = record.get("nextAt")
        self.created_at: str = record["createdAt"]
        self.payload: bytes | None = record["payload"].encode() if record.get("payload") else None
        self.manual: bool = bool(record.get("manual"))
        self.resent: list[dict[str, Any]] = list(record.get("resent", ()))  # {at, by} of each operator's retry
        self.claim: int = record.get("claim", 0)  # the store's claim this node attempts it under

    @property
    def lane(self) -> tuple[str, str]:
        return (self.run_id, self.url)

    def record(self) -> dict[str, Any]:
        """The durable state (the payload only while it may still be sent)."""
        return {
            "id": self.id,
            "eventId": self.event_id,
            "number": self.number,
            "workflowId": self.run_id,
            "userId": self.user_id,
            "type": self.type,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "nextAt": self.next_at,
            "createdAt": self.created_at,
            "payload": self.payload.decode() if self.payload is not None and self.status != DELIVERED else None,
            "manual": self.manual,
            "resent": self.resent,
        }

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "eventId": self.event_id,
            "type": self.type,
            "url": self.url,
            "userId": self.user_id,
            "workflowId": self.run_id,
            "status": self.status,
            "attempts": self.attempts,
            "nextAttemptAt": iso(self.next_at) if self.next_at is not None and self.status == PENDING else None,
            "createdAt": self.created_at,
            "resent": self.resent,
        }
