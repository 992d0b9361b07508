"""Verification tokens: 256 bits, URL-safe, derived rather than stored.

A token is the HMAC-SHA256 of the data dir's secret key with the run id and
the send number, so the same email sent again (a retry after a crash) carries
the same link without the token ever being written down. Runs keep only the
SHA-256 of their tokens; the index maps those hashes to runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 bytes")
        self._secret = secret

    def token(self, run_id: str, send_no: int) -> str:
        digest = hmac.new(self._secret, f"verify:{run_id}:{send_no}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


    def keyed(self, purpose: str, value: str) -> str:
        """A keyed hash of ``value``: the same for the same value, not to be reversed or
        guessed from a list of addresses without the secret."""
        return hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def well_formed(token: str) -> bool:
    return bool(TOKEN_PATTERN.fullmatch(token))
