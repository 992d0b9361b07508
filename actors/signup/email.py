"""Emails of the signup workflow, sent at most once per Message-ID.

Every email has a Message-ID derived from its run and purpose. The run's state
keeps an outbox record per Message-ID, written durably as ``sending`` before
the transport is called and as ``sent`` (with the transport's receipt) after.
A retry finds ``sent`` and sends nothing; only a crash between the
transport's acceptance and the ``sent`` record can repeat that one send, with
the same Message-ID, so the receiving side can tell it is the same message.

In outbox mode the transport only keeps the email: the ``sent`` record in the
run's file is the mailbox, listed by ``GET /api/outbox``. The token is not
stored: the link is derived again from the run id and send number, and the
words again from the templates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from userflow.actors.signup.templates import EmailTemplates, expiry_text
from userflow.actors.timeutil import iso_now
from userflow.actors.workflow import StepContext
from userflow.storage.faults import crash_point


class TransientEmailError(Exception):
    """Sending failed in a way a later attempt may not (timeout, 4xx, injected failure)."""


@dataclass(frozen=True)
class Email:
    message_id: str
    kind: str  # verification, reminder, resend
    to: str
    subject: str
    text: str
    html: str
    link: str


class Transport(Protocol):
    name: str

    def send(self, email: Email) -> str:
        """Deliver ``email``; return the receiving side's receipt, or raise."""
        ...

    def close(self) -> None:
        """Let go of connections kept open between sends (at shutdown)."""
        ...


class OutboxTransport:
    """Outbox mode: the email is kept in the data dir, nothing leaves the machine."""

    name = "outbox"

    def send(self, email: Email) -> str:
        return "kept in outbox"

    def close(self) -> None:
        return None


def message_id(run_id: str, kind: str, send_no: int) -> str:
    return f"<{run_id}.{kind}.{send_no}@userflow>"


def verification_email(
    templates: EmailTemplates, *, run_id: str, kind: str, send_no: int, to: str, name: str, link: str, expires_at: str
) -> Email:
    """One email of ``kind`` (verification, reminder, resend), its words from ``templates``;
    ``expires_at`` (ISO 8601) is when its link stops working."""
    rendered = templates.render(
        kind, name=name, email=to, link=link, expiresAt=expiry_text(datetime.fromisoformat(expires_at))
    )
    return Email(message_id(run_id, kind, send_no), kind, to, rendered.subject, rendered.text, rendered.html, link)


class Mailer:
    """Sends emails through a transport, once per Message-ID, recording each send."""

    def __init__(self, transport: Transport, failure_rate: float = 0.0, rng: random.Random | None = None) -> None:
        if not 0 <= failure_rate <= 1:
            raise ValueError("the email failure rate is a fraction between 0 and 1")
        self.transport = transport
        self.failure_rate = failure_rate
        self._rng = rng or random.Random()

    @property
    def outbox_mode(self) -> bool:
        return isinstance(self.transport, OutboxTransport)

    def close(self) -> None:
        self.transport.close()

    def deliver(self, ctx: StepContext, email: Email, send_no: int) -> dict[str, Any]:
        outbox: list[dict[str, Any]] = ctx.state.setdefault("emails", [])
        record = next((r for r in outbox if r["messageId"] == email.message_id), None)
        if record is not None and record["status"] == "sent":
            ctx.log(f"{email.kind} email {email.message_id} was already sent; not sending it again")
            return self._receipt(record)
        if self._rng.random() < self.failure_rate:
            raise TransientEmailError("injected failure (email failure rate)")
        if record is None:
            record = {
                "messageId": email.message_id,
                "kind": email.kind,
                "to": email.to,
                "subject": email.subject,
                "sendNo": send_no,
                "status": "sending",
                "tries": 0,
                "createdAt": iso_now(),
                "sentAt": None,
                "receipt": None,
            }
            outbox.append(record)
        record["status"] = "sending"
        record["tries"] += 1
        ctx.checkpoint()  # durable intent before the outside effect
        receipt = self.transport.send(email)
        crash_point(ctx.step_id, "after-send")
        record["status"] = "sent"
        record["sentAt"] = iso_now()
        record["receipt"] = receipt
        ctx.log(f"{email.kind} email sent to {email.to} ({email.message_id}, {self.transport.name})", "email-sent")
        ctx.checkpoint()  # durable receipt: from here on, no crash can send it again
        return self._receipt(record)

    @staticmethod
    def _receipt(record: dict[str, Any]) -> dict[str, Any]:
        return {"messageId": record["messageId"], "to": record["to"], "sentAt": record["sentAt"], "receipt": record["receipt"]}
