"""Who may do what: the public surface, and the operator surface behind accounts.

Each route is registered with the access it needs (:class:`Access`); a route
registered without one is operator-only, so a route added later cannot be
open by accident. An operator request is authenticated, in this order, by
``Authorization: Bearer TOKEN``, by the session cookie of the dashboard, or,
only while no account exists at all, by being a direct loopback client (the
local demo). A viewer reads; acting needs the ``operator`` role.

A state-changing request carried by the browser's own credentials (the cookie,
or the loopback rule) must come from a page of this server: its ``Origin`` is
compared with the server's own, so no other site can make a signed-in browser
act. Bearer tokens are never sent by a browser on its own, so they need no
such check.
"""

from __future__ import annotations

import enum
import hmac
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from userflow.http.clients import Clients, host_of, is_loopback_host
from userflow.http.errors import ApiError, Handler
from userflow.storage import StorageError
from userflow.storage.operators import Operators, OperatorStore, Role, Session, digest

log = logging.getLogger(__name__)

COOKIE = "userflow_session"
RELOAD_EVERY = 1.0  # seconds between looks at the accounts file: changes apply within this
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ENV_ACCOUNT = "env"


class Access(enum.Enum):
    PUBLIC = "public"
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for; ``via`` is how that was established."""

    name: str
    role: Role
    via: str  # "token", "session" or "loopback"
    session: Session | None = None

    def describe(self, address: str) -> str:
        """The name the timeline gives the actor."""
        return f"local operator at {address}" if self.via == "loopback" else self.name


PRINCIPAL = web.RequestKey("principal", Principal)


class Authenticator:
    """Accounts and sessions as the store holds them, re-read when they change."""

    def __init__(self, store: OperatorStore, env_token: str | None = None) -> None:
        self.store = store
        self._env_hash = digest(env_token) if env_token else None
        self._operators = Operators()
        self._sessions: dict[str, Session] = {}
        self._damaged = False
        self._stamp: object = object()
        self._checked = float("-inf")
        self.refresh(force=True)

    # -- the accounts -------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_EVERY:
            return
        self._checked = now
        stamp = self.store.stamp()
        if stamp == self._stamp and not force:
            return
        try:
            operators = self.store.load()
        except StorageError as exc:
            # Fail closed: a damaged file must not read as "no accounts" (the open local mode).
            if not self._damaged:
                log.error("operator accounts unreadable, only USERFLOW_OPERATOR_TOKEN is accepted: %s", exc)
            self._damaged, self._stamp = True, stamp
            self._operators, self._sessions = Operators(), {}
            return
        self._damaged, self._stamp = False, stamp
        self._operators = operators
        self._sessions = {s.id_hash: s for s in operators.sessions}

    @property
    def has_accounts(self) -> bool:
        self.refresh()
        return bool(self._operators.accounts) or self._env_hash is not None or self._damaged

    def account_names(self) -> list[str]:
        names = [a.name for a in self._operators.accounts]
        return names + [ENV_ACCOUNT] if self._env_hash else names

    def by_token(self, token: str) -> Principal | None:
        """The account whose token this is; every hash is compared, in constant time."""
        self.refresh()
        presented = digest(token)
        found: Principal | None = None
        for account in self._operators.accounts:
            if hmac.compare_digest(presented, account.token_hash):
                found = Principal(account.name, account.role, "token")
        if self._env_hash is not None and hmac.compare_digest(presented, self._env_hash):
            found = Principal(ENV_ACCOUNT, Role.OPERATOR, "token")
        return found

    def by_session(self, session_id: str) -> Principal | None:
        self.refresh()
        session = self._sessions.get(digest(session_id))
        if session is None or session.expires_at <= time.time():
            return None
        role = self._role_of(session.name)
        return Principal(session.name, role, "session", session) if role else None

    def _role_of(self, name: str) -> Role | None:
        if name == ENV_ACCOUNT:
            return Role.OPERATOR if self._env_hash is not None else None
        account = self._operators.account(name)
        return account.role if account else None

    def still_valid(self, principal: Principal) -> bool:
        """For long requests (the event stream): has the account or session gone since?"""
        self.refresh()
        if principal.via == "loopback":
            return not self.has_accounts
        if principal.session is not None:
            live = self._sessions.get(principal.session.id_hash)
            if live is None or live.expires_at <= time.time():
                return False
        return self._role_of(principal.name) == principal.role

    # -- sessions ------------------------------------------------------------------------

    def open_session(self, principal: Principal, ttl: float) -> tuple[str, Session]:
        """Blocking (a durable write): call it off the event loop."""
        session_id, session = self.store.open_session(principal.name, ttl)
        self.refresh(force=True)
        return session_id, session

    def end_session(self, session: Session) -> None:
        self.store.end_session(session.id_hash)
        self.refresh(force=True)


# -- the checks of one request -------------------------------------------------------------


def own_origins(request: web.Request, clients: Clients, public_url: str) -> set[str]:
    """The origins of this server's own pages: the public URL's, and the one the request was sent to."""
    public = urlsplit(public_url)
    return {f"{public.scheme}://{public.netloc}".lower(), f"{clients.scheme(request)}://{request.host}".lower()}


def check_origin(request: web.Request, clients: Clients, public_url: str, *, required: bool) -> None:
    """Refuse a request that another site's page made (403); ``required``: one with no Origin too."""
    origin = request.headers.get("Origin")
    if origin is None and not required:
        return
    if origin is None or origin.lower() not in own_origins(request, clients, public_url):
        raise ApiError(
            403,
            "cross_origin",
            "this request came from another site's page; act from the dashboard, or send Authorization: Bearer TOKEN",
        )


def authenticate(request: web.Request, auth: Authenticator, public_url: str) -> Principal:
    """The principal of an operator request, or a 401 ApiError."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        principal = auth.by_token(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if principal is None:
            raise unauthorized("invalid_token", "this token is not valid: check it, or ask for a new one")
        return principal
    cookie = request.cookies.get(COOKIE)
    if cookie:
        principal = auth.by_session(cookie)
        if principal is None:
            raise unauthorized("session_expired", "your session has ended; sign in again")
        return principal
    if not auth.has_accounts:
        if Clients.is_direct_loopback(request) and _loopback_host(request, public_url):
            return Principal("local", Role.OPERATOR, "loopback")
        raise unauthorized(
            "local_only",
            "no operator account exists, so the operator surface answers only local clients; "
            "add one with `userflow operators add NAME --role operator`",
        )
    raise unauthorized("authentication_required", "sign in at /signin, or send Authorization: Bearer TOKEN")


def _loopback_host(request: web.Request, public_url: str) -> bool:
    # A page on another site whose name was re-pointed at 127.0.0.1 (DNS rebinding)
    # reaches a loopback server with its own name in Host: only loopback names pass.
    host = host_of(request.host)
    return is_loopback_host(host) or host == (urlsplit(public_url).hostname or "")


def unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, {"WWW-Authenticate": 'Bearer realm="userflow"'})


def forbidden_role(principal: Principal) -> ApiError:
    return ApiError(403, "forbidden", f"{principal.name} is a viewer: this needs the operator role")


def wants_page(request: web.Request) -> bool:
    """A browser opening a page (not the API): sent to the sign-in page instead of a JSON 401."""
    return (
        request.method == "GET"
        and not request.path.startswith("/api/")
        and "text/html" in request.headers.get("Accept", "")
    )


def middleware(access_of: dict[web.AbstractRoute, Access], auth: Authenticator, clients: Clients, public_url: str):  # type: ignore[no-untyped-def]
    """Let public routes through; authenticate and authorise every other one."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        match = request.match_info
        if match.http_exception is not None:
            return await handler(request)  # no such route: its 404 or 405
        access = access_of.get(match.route, Access.OPERATOR)
        if access is Access.PUBLIC:
            return await handler(request)
        try:
            principal = authenticate(request, auth, public_url)
        except ApiError:
            if wants_page(request):
                raise web.HTTPSeeOther("/signin") from None
            raise
        if access is Access.OPERATOR and principal.role is not Role.OPERATOR:
            raise forbidden_role(principal)
        if request.method not in SAFE_METHODS and principal.via != "token":
            check_origin(request, clients, public_url, required=principal.via == "session")
        request[PRINCIPAL] = principal
        return await handler(request)

    return check
