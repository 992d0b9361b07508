"""Pages for people: the dashboard and the email-verification page.

``GET /verify`` only shows a button; verifying takes a POST, so the link
scanners of mail providers, which prefetch every link with GET, verify no one.
A link that cannot verify (already used, replaced by a newer email, expired,
cut short) gets no button but a page that says what happened and what to do,
from a read-only look at the link; neither page names the address.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from aiohttp import web

from userflow.http.api import LinkState, link_state, verify_token
from userflow.http.errors import ApiError
from userflow.http.keys import SERVICES

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {product}</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;background:#f6f7f9;color:#1d2330;display:grid;place-items:center;min-height:100vh;margin:0}}
main{{background:#fff;border-radius:12px;box-shadow:0 2px 12px #0002;padding:2rem 2.5rem;max-width:28rem;text-align:center}}
h1{{font-size:1.4rem;margin:0 0 .5rem}} .ok{{color:#137333}} .bad{{color:#b3261e}}
button{{font:inherit;background:#1a73e8;color:#fff;border:0;border-radius:8px;padding:.7rem 1.4rem;cursor:pointer}}
button:focus-visible{{outline:3px solid #174ea6;outline-offset:2px}}
</style></head>
<body><main>{body}</main></body></html>"""


def page(
    request: web.Request, title: str, body: str, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    product = request.app[SERVICES].templates.product if SERVICES in request.app else "userflow"
    return web.Response(
        text=_PAGE.format(title=html.escape(title), product=html.escape(product), body=body),
        status=status,
        content_type="text/html",
        headers={**_HEADERS, **(headers or {})},
    )


# Each state of a link that cannot verify: the status, a title, and what to do.
_OPEN_AGAIN = "Open the link from the email again. If you copied it, copy all of it: it ends with a long code."
_NEWEST = "Open the link in the newest email we sent you, or sign up again to get a new one."
EXPLAINED: dict[LinkState, tuple[int, str, str, str]] = {
    LinkState.MISSING: (400, "Link incomplete", "This link is incomplete", f"It has no confirmation code. {_OPEN_AGAIN}"),
    LinkState.MALFORMED: (400, "Link incomplete", "This link is incomplete or damaged", f"Its confirmation code is cut short or changed. {_OPEN_AGAIN}"),
    LinkState.UNKNOWN: (404, "Unknown link", "This link is not valid", f"It may be mistyped or come from an old email. {_NEWEST}"),
    LinkState.VERIFIED: (200, "Already confirmed", "Your email address is already confirmed", "There is nothing more to do. You can close this page."),
    LinkState.REPLACED: (410, "Link replaced", "This link was replaced by a newer one", f"A newer email brought a new link, and only the newest works. {_NEWEST}"),
    LinkState.EXPIRED: (410, "Link expired", "This link has expired", "Confirmation links work for a limited time. Sign up again to get a new one."),
    LinkState.CLOSED: (410, "Link closed", "This link no longer works", "This signup was closed. Sign up again to get a new link."),
}


def explained(request: web.Request, state: LinkState) -> web.Response:
    status, title, heading, advice = EXPLAINED[state]
    mood = "ok" if status == 200 else "bad"
    body = f'<h1 class="{mood}" data-state="{state.value}">{html.escape(heading)}</h1><p>{html.escape(advice)}</p>'
    return page(request, title, body, status)


def too_many_tries(request: web.Request, exc: ApiError) -> web.Response:
    body = f'<h1 class="bad" data-state="rate-limited">Too many tries</h1><p>{html.escape(exc.message)}.</p>'
    return page(request, "Too many tries", body, exc.status, exc.headers)


async def verify_page(request: web.Request) -> web.Response:
    tokens = request.query.getall("token", [])
    token = tokens[0] if len(tokens) == 1 else ("" if not tokens else None)
    try:
        state = link_state(request, token) if token is not None else LinkState.MALFORMED
    except ApiError as exc:  # rate-limited
        return too_many_tries(request, exc)
    if state != LinkState.READY:
        return explained(request, state)
    return page(
        request,
        "Confirm your email",
        '<h1 data-state="ready">Confirm your email address</h1>'
        "<p>Press the button to finish signing up.</p>"
        '<form method="post" action="/verify">'
        f'<input type="hidden" name="token" value="{html.escape(token or "", quote=True)}">'
        '<button type="submit" autofocus>Confirm my email</button></form>',
    )


async def verify_submit(request: web.Request) -> web.Response:
    form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
    token = form.get("token")
    try:
        await verify_token(request, token)
    except ApiError as exc:
        if exc.status == 429:
            return too_many_tries(request, exc)
        if exc.status == 410:  # replaced, expired, closed, or confirmed by another link: the index tells
            state = link_state(request, token, count=False)
            return explained(request, LinkState.CLOSED if state == LinkState.READY else state)
        return explained(request, {400: LinkState.MALFORMED, 404: LinkState.UNKNOWN}.get(exc.status, LinkState.CLOSED))
    return page(request, "Email confirmed", '<h1 class="ok">Email confirmed</h1><p>Thank you, you can close this page.</p>')


DASHBOARD_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}


_STATIC_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.(?:css|js|png|svg|ico|html)")


async def static_file(request: web.Request) -> web.FileResponse:
    """A file of the dashboard; anything else is a JSON 404, never a directory listing."""
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if not _STATIC_NAME.fullmatch(name) or not path.is_file():
        raise ApiError(404, "not_found", f"no such file: /static/{name}")
    return web.FileResponse(path)


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=DASHBOARD_HEADERS)


@web.middleware
async def static_headers(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Static files: revalidated on every load, so an upgrade never runs stale JS."""
    response = await handler(request)
    if request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response
