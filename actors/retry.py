"""Retry policies: how many attempts a step gets and how long to wait between them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


def describe(error: BaseException) -> str:
    """How a failed attempt reads in the timeline: ``Type: message``."""
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}" if text else name


class PermanentError(Exception):
    """A step failure that retrying cannot fix (bad recipient, invalid input)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with proportional jitter, bounded by attempts or by time.

    After failed attempt ``n`` (1-based) the next attempt is due after
    ``initial_backoff * coefficient ** (n - 1)`` seconds, capped at
    ``max_backoff`` and spread by ``± jitter`` of itself. A retry is given
    while fewer than ``max_attempts`` attempts failed (None: no such bound)
    and, with ``retry_for``, while the next attempt would start within that
    many seconds of the first one.
    """

    max_attempts: int | None = 3
    initial_backoff: float = 0.5
    coefficient: float = 2.0
    max_backoff: float = 60.0
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = field(default=())
    retry_for: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is None and self.retry_for is None:
            raise ValueError("a policy needs max_attempts, retry_for or both")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.retry_for is not None and self.retry_for < 0:
            raise ValueError("retry_for cannot be negative")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoffs cannot be negative")
        if self.coefficient < 1:
            raise ValueError("coefficient must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    def is_permanent(self, error: BaseException) -> bool:
        return isinstance(error, PermanentError) or isinstance(error, self.non_retryable)

    def should_retry(self, attempt: int, error: BaseException, elapsed: float = 0.0, delay: float = 0.0) -> bool:
        """Whether failed attempt ``attempt`` (1-based) gets another try ``delay`` seconds
        from now, ``elapsed`` seconds after the first attempt started."""
        if self.is_permanent(error):
            return False
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return False
        return self.retry_for is None or elapsed + delay <= self.retry_for

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempts are numbered from 1")
        delay = self.max_backoff
        if self.initial_backoff == 0 or self.max_backoff == 0:
            delay = 0.0
        elif self.coefficient == 1 or (attempt - 1) * math.log(self.coefficient) < math.log(
            self.max_backoff / self.initial_backoff
        ):
            delay = min(self.max_backoff, self.initial_backoff * self.coefficient ** (attempt - 1))
        if self.jitter and delay:
            delay *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return min(delay, self.max_backoff)
