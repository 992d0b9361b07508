"""Where webhook deliveries are kept, and what a sender asks of that place.

An event itself is stored with its run, in the commit that made it (the
transactional outbox); a delivery store keeps what became of each delivery of
it, and is the sender's queue: memory holds only the attempts in flight, so a
server's size and start follow the deliveries still to make, never every one
ever made. Listing, counting and a run's deliveries are read from the store.

A lane is a (run, URL) pair, delivered in order by event number: only a lane's
lowest pending number may be claimed (an operator's retry of a failed one
stands apart from its lane). A sender claims due deliveries, attempts them,
and writes each outcome with its claim: the store keeps the outcome only if
the claim is still the sender's (on a database shared by several nodes,
another node may have taken over a claim that expired).

The data dir's store is :class:`~userflow.storage.delivery_file.DeliveryFile`;
the database's is :class:`~userflow.storage.postgres.deliveries.PgDeliveries`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

#: States a record carries besides its columns: what a list shows and an attempt appends to.
STATE_KEYS = ("eventId", "userId", "type", "createdAt", "attempts", "resent")


class DeliveryStore(Protocol):
    node_id: str
    #: Seconds between looks for work this node did not make (other nodes' deliveries,
    #: claims of a node that died); None when every delivery is this node's.
    poll_every: float | None

    def since(self, urls: Iterable[str], now: float) -> dict[str, float]:
        """When each URL began to be sent events (``now`` for one new here), every URL known."""
        ...

    def highest(self, run_ids: list[str]) -> dict[tuple[str, str], int]:
        """The highest event number with a delivery, per lane of these runs."""
        ...

    def release(self) -> None:
        """Give up the claims this node held before it (re)started: attempts cut off."""
        ...

    def claim(self, limit: int, seconds: float) -> tuple[list[dict[str, Any]], float | None]:
        """Up to ``limit`` due lane heads, claimed for ``seconds``, each record with its
        ``claim``; and in how many seconds the next one not yet due will be (None: none)."""
        ...

    def write(self, new: list[dict[str, Any]], outcomes: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
        """In one durable transaction: make the ``new`` deliveries that do not exist yet (by id,
        or by lane and number) and keep each outcome (a record with its ``claim``) whose claim
        is still ours; the ids made, and the ids whose outcome was kept."""
        ...

    def resend(self, delivery_id: str, by: dict[str, Any], at: float) -> dict[str, Any]:
        """Make a failed delivery pending again (one attempt, apart from its lane).
        KeyError if there is none, ValueError (the message says why) if it is not failed."""
        ...

    def scrub(self, run_id: str, scrub: Any) -> int:
        """Rewrite the payloads the run's deliveries still keep with ``scrub(payload) -> payload``,
        leaving no earlier copy in the store; how many were rewritten."""
        ...

    def get(self, delivery_id: str) -> dict[str, Any] | None: ...

    def of_run(self, run_id: str) -> list[dict[str, Any]]:
        """The run's deliveries, oldest first."""
        ...

    def page(self, status: str | None, limit: int, before: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, strictly older than the delivery ``before``; the cursor of the next page."""
        ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...
