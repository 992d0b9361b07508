"""Time as the engine records it: epoch seconds for due times, ISO 8601 UTC for people."""

from __future__ import annotations

import math
import time
from datetime import datetime

_second: tuple[int, str] = (-1, "")  # the last whole second formatted, shared by every thread


def now() -> float:
    return time.time()


def iso(epoch: float) -> str:
    """``2026-11-27T10:11:20.123Z``: what ``datetime.isoformat(timespec="milliseconds")``
    gives, at a fraction of the cost, since each commit stamps several of them."""
    global _second
    fraction, whole = math.modf(epoch)  # rounded as datetime.fromtimestamp rounds
    seconds, micros = int(whole), round(fraction * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    cached, prefix = _second
    if cached != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, prefix)
    return f"{prefix}.{micros // 1000:03d}Z"


def iso_now() -> str:
    return iso(time.time())


def epoch(text: str) -> float:
    """Epoch seconds of an ISO 8601 time as ``iso`` writes it."""
    return datetime.fromisoformat(text).timestamp()


#: The width of the time buckets the catalog counts runs in (signups, failures): five minutes.
BUCKET = 300


def bucket(text: str) -> str:
    """The start of the five-minute bucket an ISO 8601 time falls in, ``2026-11-27T10:10Z``:
    strings that sort as times do, for the catalog's counts."""
    start = int(epoch(text)) // BUCKET * BUCKET
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(start))
