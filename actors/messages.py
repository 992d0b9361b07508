"""Messages between the HTTP layer, the supervisor and the run actors.

Small immutable tuples, as pykka's own messages. Only ``tell`` is used between
actors (an actor asking another can deadlock); answers to the HTTP layer travel
in a ``concurrent.futures.Future`` that the asking coroutine awaits through
``asyncio.wrap_future``, so the event loop never blocks on an actor.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, NamedTuple


class StartRun(NamedTuple):
    """Start a run of ``workflow`` unless ``dedupe`` names a run that should answer instead.
    ``stored`` is the run the store's catalog had with that key, and its summary, read
    before asking (the supervisor itself never waits on the store); an active run
    holding the key in memory comes first."""

    workflow: str
    input: dict[str, Any]
    dedupe: tuple[str, str] | None
    reply: Future[Any]
    stored: tuple[str, dict[str, Any]] | None = None


class Deliver(NamedTuple):
    """Deliver signal ``signal`` to run ``run_id``; the reply says whether it was new."""

    run_id: str
    signal: str
    payload: dict[str, Any]
    reply: Future[Any]


class TimerFired(NamedTuple):
    """The run's timer ``name`` set for ``due`` (epoch seconds) is due."""

    run_id: str
    name: str
    due: float


class Command(NamedTuple):
    """An operator action on run ``run_id``: ``retry``, ``cancel`` or one of its workflow's actions."""

    run_id: str
    name: str
    args: dict[str, Any]
    reply: Future[Any]


class AwaitDurable(NamedTuple):
    """Answer ``reply`` with the run's id once its creation is durable."""

    run_id: str
    reply: Future[Any]


class Advance(NamedTuple):
    """A run actor's note to itself: do the next piece of work."""


class Idle(NamedTuple):
    """A run actor has nothing to do after handling ``handled`` routed messages."""

    run_id: str
    urn: str
    handled: int


class Stopped(NamedTuple):
    """A run actor's thread is done: its place under the cap is free."""

    urn: str


class ActorFailed(NamedTuple):
    """A run actor stopped on an error; ``created`` is False if the run never became durable,
    ``moved`` True if another node executes the run (it was claimed there, or taken over)."""

    run_id: str
    urn: str
    reason: str
    created: bool
    moved: bool = False


class RunsClaimed(NamedTuple):
    """Runs this node claimed from the shared store (timers due, a dead node's runs): activate
    each, and fire its due timers (``(run id, {timer: due})``)."""

    runs: tuple[tuple[str, dict[str, float]], ...]


class Bounce(NamedTuple):
    """A routed message that reached an actor after it had stopped: route it again."""

    run_id: str
    message: Any


class Recover(NamedTuple):
    """Rebuild the index from storage and resume every unfinished run."""

    reply: Future[Any]


class Shutdown(NamedTuple):
    """Stop every run actor after its current message, then answer."""

    reply: Future[Any]


class StartResult(NamedTuple):
    run_id: str
    created: bool
    summary: dict[str, Any]


class Delivered(NamedTuple):
    run_id: str
    duplicate: bool


#: Messages the supervisor routes to a run's actor, activating it if needed.
ROUTED = (Deliver, TimerFired, AwaitDurable, Command)


def resolve(reply: Future[Any] | None, value: Any) -> None:
    """Answer a waiting caller, unless it has given up already."""
    if reply is not None and not reply.done():
        try:
            reply.set_result(value)
        except Exception:  # noqa: BLE001 - cancelled concurrently: nobody is listening
            pass


def reject(reply: Future[Any] | None, error: BaseException) -> None:
    if reply is not None and not reply.done():
        try:
            reply.set_exception(error)
        except Exception:  # noqa: BLE001
            pass
