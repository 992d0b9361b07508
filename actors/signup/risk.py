"""The local risk heuristic: deterministic, explained, no network.

Each rule that fires adds to a score between 0 and 1 and says why; a score of
0.5 or more flags the signup. It decides when no model is configured, and is
the recorded fallback when the model cannot answer.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

from userflow.actors.signup.disposable import DISPOSABLE_DOMAINS

FLAG_AT = 0.5

ROLE_LOCAL_PARTS = frozenset(
    {
        "abuse", "admin", "administrator", "billing", "contact", "help", "hostmaster", "info",
        "mailer-daemon", "marketing", "no-reply", "noc", "noreply", "office", "postmaster",
        "root", "sales", "security", "support", "sysadmin", "webmaster",
    }
)  # fmt: skip

_URL = re.compile(r"(https?://|www\.|\.(com|net|org|io|ru|xyz)\b)", re.IGNORECASE)
_VOWELS = set("aeiouy")


@dataclass(frozen=True)
class Verdict:
    decision: str  # ALLOW or FLAG
    score: float
    reasons: list[str]
    source: str
    model: str | None = None
    attempts: int = 0
    latency_ms: float = 0.0

    def as_record(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "score": self.score,
            "reasons": self.reasons,
            "source": self.source,
            "model": self.model,
            "attempts": self.attempts,
            "latencyMs": round(self.latency_ms, 1),
        }


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _looks_random(local: str) -> bool:
    letters = [c for c in local.lower() if c.isalpha()]
    if len(local) < 10 or not letters:
        return False
    vowel_share = sum(c in _VOWELS for c in letters) / len(letters)
    longest_consonants = max((len(run) for run in re.findall(r"[bcdfghjklmnpqrstvwxz]+", local.lower())), default=0)
    return vowel_share < 0.2 or longest_consonants >= 6 or (len(local) >= 16 and _entropy(local) > 3.8)


def _name_problem(name: str) -> str | None:
    letters = [c for c in name if unicodedata.category(c).startswith("L")]
    if not letters:
        return "the name has no letters"
    if any(c.isdigit() for c in name):
        return "the name contains digits"
    if "@" in name or _URL.search(name):
        return "the name looks like an address or a link"
    if len(set(name.lower().replace(" ", ""))) <= 2 and len(name) >= 3:
        return "the name repeats one or two characters"
    if len(name.split()) > 6:
        return "the name has more than six words"
    return None


def assess(email: str, name: str, source: str = "heuristic") -> Verdict:
    started = time.perf_counter()
    local, _, domain = email.rpartition("@")
    local = local.split("+", 1)[0]
    domain = domain.lower()
    score = 0.0
    reasons: list[str] = []

    if domain in DISPOSABLE_DOMAINS or any(domain.endswith("." + d) for d in DISPOSABLE_DOMAINS):
        score += 0.6
        reasons.append(f"disposable email domain ({domain})")
    if local.lower() in ROLE_LOCAL_PARTS:
        score += 0.3
        reasons.append(f"role address ({local.lower()}@), not a person")
    digits = sum(c.isdigit() for c in local)
    if digits >= 5 or (local and digits / len(local) >= 0.5):
        score += 0.3
        reasons.append(f"digit-heavy local part ({digits} of {len(local)} characters)")
    if _looks_random(local):
        score += 0.3
        reasons.append("random-looking local part")
    problem = _name_problem(name)
    if problem:
        score += 0.3
        reasons.append(problem)

    score = round(min(score, 1.0), 2)
    decision = "FLAG" if score >= FLAG_AT else "ALLOW"
    if not reasons:
        reasons.append("no risk signals found")
    return Verdict(decision, score, reasons, source, None, 0, (time.perf_counter() - started) * 1000)


class HeuristicRisk:
    """The risk checker used when no model is configured."""

    name = "heuristic"

    def assess(self, email: str, name: str) -> Verdict:
        return assess(email, name)
