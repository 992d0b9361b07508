"""Request bodies and what makes them acceptable.

Pydantic checks shape and types; email-validator checks the address and
normalises it (surrounding space trimmed, domain lowercased, ``+tag`` kept).
Everything rejected here is a 400 with a message that says what to fix.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable

import orjson
from aiohttp import web
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from userflow.http import lookalike
from userflow.http.errors import ApiError

MAX_LIMIT = 200  # items in one page of a listing
MAX_EMAIL = 254
MAX_NAME = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class SignupBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    email: str = Field(max_length=1000)
    name: str = Field(max_length=1000)


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(max_length=1000)


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        what = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {what}")
    return "; ".join(parts)


async def json_object(request: web.Request) -> dict[str, object]:
    """The request's JSON object body, or a 415/400/413 ApiError."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as JSON with Content-Type: application/json")
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    duplicate = _duplicate_key(raw)
    if duplicate is not None:
        # Parsers disagree on which of two values wins; a proxy or a log may have seen the other.
        raise ApiError(400, "invalid_json", f"the body names {duplicate!r} more than once; send each field once")
    return data


class _Duplicate(Exception):
    pass


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen.add(key)
    return dict(pairs)


def _duplicate_key(raw: bytes) -> str | None:
    """The first key an object of the body repeats (orjson, like most parsers, keeps the last)."""
    try:
        json.loads(raw, object_pairs_hook=_pairs)
    except _Duplicate as exc:
        return str(exc.args[0])
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body nests too deeply; send a flat JSON object") from None
    return None


def query_limit(request: web.Request, default: int = 50) -> int:
    """A listing's ``limit``: a whole number from 1 to MAX_LIMIT (400 otherwise)."""
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit: a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def query_cursor(request: web.Request, valid: Callable[[str], object]) -> str | None:
    """A listing's ``cursor``, which ``valid`` must accept (400 otherwise)."""
    raw = request.query.get("cursor")
    if raw is not None and not valid(raw):
        raise ApiError(400, "invalid_cursor", "cursor: pass back the nextCursor of the previous page")
    return raw


def parse(model: type[BaseModel], data: dict[str, object]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, "invalid_fields", _explain(exc)) from None


def normalise_email(raw: str) -> tuple[str, str]:
    """The address to store and send to, and the key that identifies its owner."""
    email = raw.strip()
    if not email:
        raise ApiError(400, "invalid_email", "email: an email address is required")
    if _CONTROL.search(email):
        raise ApiError(400, "invalid_email", "email: control characters and line breaks are not allowed")
    if len(email) > MAX_EMAIL:
        raise ApiError(400, "invalid_email", f"email: at most {MAX_EMAIL} characters")
    if any(unicodedata.category(c) in ("Cf", "Co", "Cn") for c in email):
        raise ApiError(400, "invalid_email", "email: contains invisible or unassigned characters; type the address plainly")
    if unicodedata.normalize("NFKC", email) != email:
        # e.g. the Kelvin sign, which normalises to "K", or the ligature "ﬁ": a look-alike of another address.
        raise ApiError(400, "invalid_email", f"email: {lookalike.problem(email, '', '')}")
    try:
        result = validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ApiError(400, "invalid_email", f"email: {exc}") from None
    normalized = result.normalized
    why = lookalike.problem(email, result.local_part, result.domain)
    if why:
        raise ApiError(400, "invalid_email", f"email: {why}")
    if len(normalized) > MAX_EMAIL:
        raise ApiError(400, "invalid_email", f"email: at most {MAX_EMAIL} characters")
    local, _, domain = normalized.rpartition("@")
    if len(local) > 64:
        raise ApiError(400, "invalid_email", "email: the part before @ can have at most 64 characters")
    if not _visible(local):
        raise ApiError(400, "invalid_email", "email: the part before @ shows no visible letter or digit")
    # Only ASCII case is folded for the key: Unicode look-alikes stay distinct.
    return normalized, f"{local.translate(_ASCII_UPPER)}@{domain.lower()}"


def normalise_name(raw: str) -> str:
    name = unicodedata.normalize("NFC", " ".join(raw.split()))
    if not name:
        raise ApiError(400, "invalid_fields", "name: a name is required")
    if _CONTROL.search(name) or any(unicodedata.category(c) in ("Cf", "Cs", "Co", "Cn") for c in name):
        raise ApiError(400, "invalid_fields", "name: control or invisible characters are not allowed")
    if len(name) > MAX_NAME:
        raise ApiError(400, "invalid_fields", f"name: at most {MAX_NAME} characters")
    if not _visible(name):
        raise ApiError(400, "invalid_fields", "name: it must show at least one letter or digit")
    return name


# Letters that render as nothing (Hangul fillers, Braille blank and the like).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e\u17b4\u17b5")


def _visible(text: str) -> bool:
    """Whether ``text`` shows at least one letter or digit a person can see."""
    return any(
        unicodedata.category(c)[0] in ("L", "N") and c not in _BLANK_LETTERS and not c.isspace() for c in text
    )
