"""Pages for people: the dashboard and the email-verification page.

``GET /verify`` only shows a button; verifying takes a POST, so the link
scanners of mail providers, which prefetch every link with GET, verify no one.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from aiohttp import web

from userflow.http.api import verify_token
from userflow.http.errors import ApiError

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
<title>{title} · userflow</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;background:#f6f7f9;color:#1d2330;display:grid;place-items:center;min-height:100vh;margin:0}}
main{{background:#fff;border-radius:12px;box-shadow:0 2px 12px #0002;padding:2rem 2.5rem;max-width:28rem;text-align:center}}
h1{{font-size:1.4rem;margin:0 0 .5rem}} .ok{{color:#137333}} .bad{{color:#b3261e}}
button{{font:inherit;background:#1a73e8;color:#fff;border:0;border-radius:8px;padding:.7rem 1.4rem;cursor:pointer}}
button:focus-visible{{outline:3px solid #174ea6;outline-offset:2px}}
</style></head>
<body><main>{body}</main></body></html>"""


def page(title: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body),
        status=status,
        content_type="text/html",
        headers={**_HEADERS, **(headers or {})},
    )


async def verify_page(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    return page(
        "Confirm your email",
        "<h1>Confirm your email address</h1>"
        "<p>Press the button to finish signing up.</p>"
        '<form method="post" action="/verify">'
        f'<input type="hidden" name="token" value="{html.escape(token, quote=True)}">'
        '<button type="submit" autofocus>Confirm my email</button></form>',
    )


async def verify_submit(request: web.Request) -> web.Response:
    form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
    token = form.get("token")
    try:
        await verify_token(request, token)
    except ApiError as exc:
        title = {410: "Link expired", 404: "Unknown link", 400: "Broken link", 429: "Too many tries"}.get(exc.status, "Not verified")
        body = f'<h1 class="bad">{html.escape(title)}</h1><p>{html.escape(exc.message)}.</p>'
        return page(title, body, exc.status, exc.headers)
    return page("Email confirmed", '<h1 class="ok">Email confirmed</h1><p>Thank you, you can close this page.</p>')


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
