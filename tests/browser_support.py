"""Helpers for the browser tests: a headless Chromium driven by Playwright's sync API.

The browser is Debian's Chromium at /usr/bin/chromium (Playwright never
downloads one here). ``make_screenshot`` regenerates static/screenshot.png:

    python -m tests.browser_support            # from the repository root
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("USERFLOW_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
ROOT = Path(__file__).resolve().parent.parent


def missing() -> str | None:
    """Why the browser tests cannot run here, or None if they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not os.path.exists(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)


def open_dashboard(context: Any, url: str) -> Any:
    """A new tab on the dashboard, once it is live and has loaded its lists."""
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#conn[data-state=live]")
    page.wait_for_selector("body[data-loaded=true]", state="attached")
    return page


def run_row(page: Any, email: str) -> Any:
    """The row of the (only) run for ``email`` in the table of runs."""
    return page.locator(f"#runs tr.run-row[data-email={json.dumps(email)}]")


def run_card(page: Any, email: str) -> Any:
    """The detail of the (only) run for ``email``: its row is opened first if it is not open
    (once the row is there: a run signed up a moment ago may still be on its way)."""
    row = run_row(page, email)
    row.wait_for()
    if row.get_attribute("aria-expanded") != "true":
        row.click()
    return page.locator("article.run").filter(has=page.locator(".run-title .email", has_text=email))


def step(card: Any, step_id: str) -> Any:
    return card.locator(f'li.step[data-step="{step_id}"]')


# -- operator accounts and the API as an operator ------------------------------------


def operators_cli(target: str | list[str], *args: str) -> str:
    """``userflow operators ARGS`` on a data dir (a path) or a database (``["--database-url", URL]``); its standard output."""
    where = ["--data-dir", target] if isinstance(target, str) else target
    done = subprocess.run(
        [sys.executable, "-m", "userflow.http.cli", "operators", *args, *where],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, (args, done.returncode, done.stderr)
    return done.stdout


def add_operator(data_dir: str | list[str], name: str, role: str) -> str:
    """A new account; its token (printed alone on standard output)."""
    token = operators_cli(data_dir, "add", name, "--role", role).strip()
    assert token and "\n" not in token, token
    return token


def remove_operator(data_dir: str | list[str], name: str) -> None:
    operators_cli(data_dir, "remove", name)


def call(
    url: str, method: str, path: str, body: Any = None, *, token: str | None = None, cookie: str | None = None
) -> tuple[int, Any]:
    """One API request with a Bearer token or a session cookie (or neither); (status, JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if cookie is not None:
        request.add_header("Cookie", f"userflow_session={cookie}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read() or b"null")


@contextlib.contextmanager
def other_site(pages: dict[str, str], host: str = "127.0.0.1") -> Iterator[str]:
    """A second web server (another origin) serving ``pages`` (path -> HTML); yields its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = pages.get(self.path.split("?", 1)[0])
            body = (page or "not found").encode()
            self.send_response(200 if page is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet test output

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# Everything the page shows that must not depend on when it was opened:
# relative times ("3 s ago") are left out, statuses and counts are kept.
SNAPSHOT_JS = """() => ({
  rows: [...document.querySelectorAll('#runs tr.run-row')].map(r => [r.dataset.runId, r.dataset.status, r.dataset.userStatus,
    r.getAttribute('aria-expanded'), r.querySelector('[data-role=progress]').dataset.steps, r.querySelector('.c-person').textContent]),
  filters: [...document.querySelectorAll('#filters button')].map(b => b.textContent),
  funnel: [...document.querySelectorAll('#funnel li')].map(li => li.textContent),
  runs: [...document.querySelectorAll('#runs article.run')].map(a => ({
    id: a.dataset.runId, status: a.dataset.status, user: a.dataset.userStatus,
    actions: [...a.querySelectorAll('.actions button')].map(b => b.textContent),
    steps: [...a.querySelectorAll('li.step')].map(s => [s.dataset.step, s.dataset.status,
      (s.querySelector('[data-role=attempts]') || {}).dataset?.attempts || null,
      [...s.querySelectorAll('.attempt-text')].map(e => e.textContent).join('|')]),
    timeline: a.querySelectorAll('.timeline-list li').length,
  })),
  users: [...document.querySelectorAll('#users tbody tr')].map(r =>
    [...r.querySelectorAll('td')].map(td => td.textContent)),
  outbox: [...document.querySelectorAll('#outbox li.mail')].map(m => [m.dataset.to, m.dataset.kind,
    (m.querySelector('.verify-btn, .mail-state') || {}).textContent || '', (m.querySelector('.mail-note') || {}).textContent || '']),
})"""


def snapshot(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(SNAPSHOT_JS)
    return result


def wait_same_snapshot(page: Any, expected: dict[str, Any], timeout: float = 10_000) -> None:
    """Until ``page`` shows exactly ``expected`` (polled by the browser, on animation frames)."""
    try:
        page.wait_for_function(
            f"expected => JSON.stringify(({SNAPSHOT_JS})()) === expected",
            arg=json.dumps(expected, separators=(",", ":"), ensure_ascii=False),
            timeout=timeout,
            polling=100,  # a background tab gets no animation frames
        )
    except Exception:
        assert snapshot(page) == expected  # shows the difference
        raise


# -- the screenshot in static/ --------------------------------------------------------

PEOPLE = [
    ("Ann Lee", "ann.lee@example.com"),  # verified: ALLOW
    ("Bruno Díaz", "bruno@example.org"),  # left waiting for the click
    ("Support Team 24", "support@mailinator.com"),  # verified: FLAG (disposable domain, role address, digits)
    ("Chen Wei", "chen.wei@example.net"),  # signed up last, caught while its email is retried
]


def make_screenshot(path: str | Path = ROOT / "static" / "screenshot.png") -> Path:
    """The dashboard mid-run: the overview, and the runs retrying, waiting, and completed, two of them open.

    Deterministic: the first three signups run on a server with no email
    failures; it is then restarted on the same data dir with every email
    failing, so the last signup is caught retrying.
    """
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from tests.server import Server

    reason = missing()
    if reason:
        raise RuntimeError(reason)
    data = tempfile.mkdtemp(prefix="userflow-shot-")
    data_dir = os.path.join(data, "data")
    target = Path(path)
    server = Server(data_dir, "--email-failure-rate", "0").start()
    try:
        runs = {}
        for name, email in PEOPLE[:3]:
            status, body = server.request("POST", "/api/signup", {"name": name, "email": email})
            assert status == 202, body
            runs[email] = body["workflowId"]
            server.wait_for(f"/api/workflows/{runs[email]}", lambda d: d["status"] == "WAITING")
        for email in (PEOPLE[0][1], PEOPLE[2][1]):
            link = next(m["link"] for m in server.get("/api/outbox")["emails"] if m["to"] == email)
            assert server.request("POST", "/api/verify", {"token": link.split("token=", 1)[1]})[0] == 200
            server.wait_for(f"/api/workflows/{runs[email]}", lambda d: d["status"] == "COMPLETED")
        server.terminate()

        server = Server(data_dir, "--email-failure-rate", "1").start()
        with sync_playwright() as p:
            browser = launch(p)
            try:
                # Taller than LAPTOP: the overview, the table and two open runs.
                context = browser.new_context(viewport={"width": 1280, "height": 1180}, device_scale_factor=1, color_scheme="light")
                page = open_dashboard(context, server.url)
                name, email = PEOPLE[3]
                assert server.request("POST", "/api/signup", {"name": name, "email": email})[0] == 202
                page.wait_for_selector("#overview[data-loaded=true]", state="attached")
                run_card(page, PEOPLE[2][1])  # flagged, with its reasons
                run_card(page, email)
                # Two attempts failed, the third is due: the step shows its errors and retry time.
                page.wait_for_selector('li.step[data-status="RETRYING"]:has(.attempt-error[data-attempts="1,2"])')
                page.mouse.move(0, 0)
                page.screenshot(path=str(target), type="png")
                context.close()
            finally:
                browser.close()
        return target
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    print(make_screenshot(sys.argv[1] if len(sys.argv) > 1 else ROOT / "static" / "screenshot.png"))
