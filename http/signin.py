"""Signing in to the dashboard: a token pasted once becomes a session cookie.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's
page sends it), Secure when the server is reached over https, and expires;
the session behind it is stored (hashed) with the accounts, so it survives a
restart, and ends at sign-out or when its account is removed.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from userflow.actors.timeutil import iso
from userflow.http.auth import COOKIE, PRINCIPAL, check_origin, unauthorized
from userflow.http.errors import json_response
from userflow.http.keys import AUTH, CLIENTS, PUBLIC_URL, SETTINGS, SIGNIN_LIMIT
from userflow.http.pages import DASHBOARD_HEADERS, STATIC_DIR
from userflow.http.validation import json_object, parse

log = logging.getLogger(__name__)


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(min_length=1, max_length=200)


def _secure(request: web.Request) -> bool:
    return request.app[CLIENTS].scheme(request) == "https" or request.app[PUBLIC_URL].startswith("https:")


async def sign_in(request: web.Request) -> web.Response:
    """``POST /api/session {"token"}``: 204 and the cookie, or 401."""
    clients, auth, limiter = request.app[CLIENTS], request.app[AUTH], request.app[SIGNIN_LIMIT]
    settings = request.app[SETTINGS]
    address = clients.address(request)
    limiter.ensure(address)
    check_origin(request, clients, request.app[PUBLIC_URL], required=False)
    body = parse(SessionBody, await json_object(request))
    assert isinstance(body, SessionBody)
    principal = auth.by_token(body.token)
    if principal is None:
        limiter.check(address)  # only failures count: an operator signing in often is not an attack
        log.warning("failed sign-in from %s", address)
        raise unauthorized("invalid_token", "this token is not valid: paste the token `userflow operators add` printed")
    session_id, session = await asyncio.to_thread(auth.open_session, principal, settings.session_ttl)
    log.info("%s signed in from %s", principal.name, address)
    response = web.Response(status=204)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(settings.session_ttl),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=_secure(request),
    )
    return response


async def whoami(request: web.Request) -> web.Response:
    """``GET /api/session``: who this request acts for."""
    principal = request[PRINCIPAL]
    session = principal.session
    return json_response(
        {
            "name": principal.name,
            "role": principal.role.value,
            "via": principal.via,
            "expiresAt": iso(session.expires_at) if session else None,
        }
    )


async def sign_out(request: web.Request) -> web.Response:
    """``DELETE /api/session``: the session ends; its cookie is refused from now on."""
    auth = request.app[AUTH]
    cookie = request.cookies.get(COOKIE)
    principal = auth.by_session(cookie) if cookie else None
    if principal is not None and principal.session is not None:
        check_origin(request, request.app[CLIENTS], request.app[PUBLIC_URL], required=True)
        await asyncio.to_thread(auth.end_session, principal.session)
        log.info("%s signed out", principal.name)
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=_secure(request))
    return response


async def signin_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "signin.html", headers=DASHBOARD_HEADERS)
