"""Per-client rate limits for signup and verification.

A token bucket per client address: ``limit`` requests, refilled evenly over
``period`` seconds. The table of buckets is bounded (least recently seen
addresses are forgotten first), so a flood of addresses cannot grow memory.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass

from userflow.http.errors import ApiError

MAX_CLIENTS = 100_000


@dataclass(frozen=True)
class Rate:
    limit: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """``"20/60"`` = 20 requests per 60 seconds; ``"0"`` or ``"off"`` = no limit."""
        text = text.strip().lower()
        if text in ("0", "off", "none"):
            return None
        count, _, seconds = text.partition("/")
        rate = cls(int(count), float(seconds or 60))
        if rate.limit < 1 or not 0 < rate.period <= 86400:
            raise ValueError(f"{text!r}: expected N/SECONDS, e.g. 20/60, or 0 for no limit")
        return rate

    def __str__(self) -> str:
        return f"{self.limit}/{self.period:g}"


class RateLimiter:
    def __init__(self, rate: Rate | None, what: str) -> None:
        self.rate = rate
        self.what = what
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def check(self, client: str) -> None:
        """Spend one token of ``client``'s bucket, or raise a 429 ApiError."""
        self._take(client, 1)

    def ensure(self, client: str) -> None:
        """Raise the 429 ``check`` would raise, spending nothing."""
        self._take(client, 0)

    def _take(self, client: str, cost: int) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        per_second = self.rate.limit / self.rate.period
        tokens, seen = self._buckets.pop(client, (float(self.rate.limit), now))
        tokens = min(float(self.rate.limit), tokens + (now - seen) * per_second)
        if tokens < 1:
            self._remember(client, tokens, now)
            wait = math.ceil((1 - tokens) / per_second)
            raise ApiError(
                429,
                "rate_limited",
                f"too many {self.what} requests from your address; retry in {wait} s",
                {"Retry-After": str(wait)},
            )
        self._remember(client, tokens - cost, now)

    def _remember(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
