"""The overview a product owner reads at a glance, counted by the store's catalog.

Every figure here is a read of the catalog's counters, never of the runs:
the funnel (signed up, verified, and how the users ended), conversion, time
to verify as a histogram, and signups, verifications and failures over the
last hour (five-minute buckets) and the last day (hours). The counters are
kept in the transaction of each commit, so the overview of a million users
costs what the overview of ten does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from userflow.actors.index import RunIndex
from userflow.actors.signup.records import VERIFY_BUCKETS
from userflow.actors.status import RunStatus
from userflow.actors.timeutil import BUCKET
from userflow.http.errors import json_response
from userflow.http.keys import RUNTIME

USER_STATUSES = ("PENDING", "ACTIVE", "FLAGGED", "EXPIRED", "CANCELLED")
_HOUR, _DAY = 3600, 86400


def _label(start: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(start))


def _series(counts: dict[str, dict[str, int]], start: int, width: int, n: int) -> list[dict[str, Any]]:
    """``n`` buckets of ``width`` seconds from ``start``, each the sum of the
    five-minute buckets it covers, for each counted facet."""
    series = []
    for k in range(n):
        lower, upper = _label(start + k * width), _label(start + (k + 1) * width)
        point: dict[str, Any] = {"at": lower}
        for name, values in counts.items():
            point[name] = sum(v for at, v in values.items() if lower <= at < upper)
        series.append(point)
    return series


def _median_bucket(buckets: list[dict[str, Any]]) -> int | None:
    """The upper bound of the bucket the median falls in (None: none verified, or
    the median is past the last bound)."""
    total = sum(b["count"] for b in buckets)
    seen = 0
    for each in buckets:
        seen += each["count"]
        if total and seen * 2 >= total:
            return each["upTo"]
    return None


def overview(index: RunIndex, now: float | None = None) -> dict[str, Any]:
    """(Blocking: it reads the catalog.)"""
    now = time.time() if now is None else now
    day_start = (int(now) // _HOUR + 1) * _HOUR - _DAY  # the 24 hours ending with this one
    hour_start = (int(now) // BUCKET + 1) * BUCKET - _HOUR
    since = _label(day_start)
    counted = {
        "signups": index.counts("started", since),
        "verified": index.counts("verified", since),
        "failures": index.counts("failed", since),
    }
    runs = index.counts("status")
    users = index.counts("user")
    times = index.counts("verify-time")
    buckets = [{"upTo": upper, "count": times.get(str(upper), 0)} for upper in VERIFY_BUCKETS]
    buckets.append({"upTo": None, "count": times.get("more", 0)})
    signed_up = sum(users.get(status, 0) for status in USER_STATUSES)
    verified = sum(b["count"] for b in buckets)
    return {
        "runs": {status.value: runs.get(status.value, 0) for status in RunStatus},
        "users": {status: users.get(status, 0) for status in USER_STATUSES},
        "funnel": {
            "signedUp": signed_up,
            "verified": verified,
            "active": users.get("ACTIVE", 0),
            "flagged": users.get("FLAGGED", 0),
            "expired": users.get("EXPIRED", 0),
            "cancelled": users.get("CANCELLED", 0),
        },
        "conversion": {
            "verified": verified / signed_up if signed_up else None,
            "active": users.get("ACTIVE", 0) / signed_up if signed_up else None,
        },
        "timeToVerify": {"buckets": buckets, "medianUpTo": _median_bucket(buckets)},
        "lastHour": _series(counted, hour_start, BUCKET, _HOUR // BUCKET),
        "lastDay": _series(counted, day_start, _HOUR, _DAY // _HOUR),
    }


async def get_overview(request: web.Request) -> web.Response:
    return json_response(await asyncio.to_thread(overview, request.app[RUNTIME].index))
