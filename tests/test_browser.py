"""The dashboard in a real headless Chromium, against a real server process.

Playwright's sync API drives the browser from plain (non-async) tests, so it
never meets pytest-asyncio's event loop; the server is a child process
(tests/server.py). Every wait is on a condition in the page, with a timeout.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser_support import LAPTOP, PHONE, launch, missing, open_dashboard, run_card, snapshot, step, wait_same_snapshot
from tests.server import Server

_reason = missing()
if _reason:
    if os.environ.get("CI"):  # CI installs both: a skip there would hide a broken setup
        raise RuntimeError(f"browser tests need Chromium and Playwright: {_reason}")
    pytest.skip(f"browser tests need Chromium and Playwright: {_reason}", allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=10_000)

EMAIL_STEP = "send-verification-email"
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1"> Ann & <b>Lee</b>'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = launch(p)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile; any uncaught script error in any of its tabs fails the test."""
    ctx = browser.new_context(viewport=LAPTOP)
    errors: list[str] = []
    ctx.on("page", lambda page: page.on("pageerror", lambda exc: errors.append(str(exc))))
    yield ctx
    ctx.close()
    assert not errors, f"script errors in the dashboard: {errors}"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*args: str) -> Server:
        server = Server(str(tmp_path / f"data{len(servers)}"), *args).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.terminate()
        server.stop()


def mark(page: Page) -> float:
    """A value that survives only as long as the page is not reloaded."""
    return float(page.evaluate("() => (window.__uf_marker = Math.random())"))


def assert_not_reloaded(page: Page, marker: float) -> None:
    assert page.evaluate("() => window.__uf_marker") == marker
    assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1


def record_step_states(page: Page) -> None:
    """Remember every (step, status) the page ever shows, to prove intermediate states were rendered."""
    page.evaluate(
        """() => {
          window.__uf_seen = new Set();
          const note = () => document.querySelectorAll('#runs li.step').forEach(
            s => window.__uf_seen.add(s.dataset.step + ':' + s.dataset.status + (s.querySelector('[data-role=retry-at]') ? ':retry-at' : '')));
          note();
          new MutationObserver(note).observe(document.querySelector('#runs'), {subtree: true, childList: true, attributes: true});
        }"""
    )


def seen(page: Page) -> set[str]:
    return set(page.evaluate("() => [...window.__uf_seen]"))


def sign_up(page: Page, name: str, email: str) -> None:
    page.get_by_label("Name").fill(name)
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("#signup-msg")).to_contain_text(f"Signed up {email}")


def api_signup(server: Server, name: str, email: str) -> str:
    status, body = server.request("POST", "/api/signup", {"name": name, "email": email})
    assert status == 202, body
    return str(body["workflowId"])


def verify_by_api(server: Server, email: str) -> None:
    link = next(m["link"] for m in server.get("/api/outbox")["emails"] if m["to"] == email)
    status, body = server.request("POST", "/api/verify", {"token": link.split("token=", 1)[1]})
    assert status == 200, body


# -- 1. the whole lifecycle, live ------------------------------------------------------


def test_signup_retry_verify_live_without_reload(start_server: Callable[..., Server], context: BrowserContext) -> None:
    server = start_server("--email-failure-rate", "0.5")
    page = open_dashboard(context, server.url)
    marker = mark(page)
    record_step_states(page)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#runs-empty")).to_have_text("No runs yet: sign someone up.")

    # Sign up through the form until some run's email went out after at least one
    # failed attempt (each run: 1/2 for a first failure, 1/16 to then give up).
    emails: list[str] = []
    retried = page.locator(
        f'article.run[data-status="WAITING"]:has(li.step[data-step="{EMAIL_STEP}"][data-status="COMPLETED"] .attempt-error)'
    )
    for batch in range(3):
        for n in range(6):
            email = f"user{batch}x{n}@example.com"
            sign_up(page, HOSTILE_NAME if not emails else f"User {chr(65 + len(emails) % 26)} Example", email)
            emails.append(email)
        # The steps advance in the page as the runs do: each one leaves RUNNING.
        expect(page.locator("#runs article.run")).to_have_count(len(emails))
        expect(page.locator('#runs article.run[data-status="RUNNING"]')).to_have_count(0, timeout=20_000)
        if retried.count():
            break
    assert retried.count(), "no run needed a second email attempt in 18 signups at a failure rate of 0.5"

    run_id = retried.first.get_attribute("data-run-id")
    card = page.locator(f'article.run[data-run-id="{run_id}"]')  # pinned: the query above stops matching
    email = card.locator(".run-title .email").inner_text()
    email_step = step(card, EMAIL_STEP)
    expect(email_step.locator(".attempt-text").first).to_contain_text("TransientEmailError")
    attempts = int(email_step.locator("[data-role=attempts]").get_attribute("data-attempts") or 0)
    assert attempts >= 2
    expect(step(card, "create-user")).to_have_attribute("data-status", "COMPLETED")
    expect(step(card, "wait-for-verification")).to_have_attribute("data-status", "WAITING")
    expect(step(card, "wait-for-verification").locator("[data-role=deadlines]")).to_contain_text("expiry")
    # While the email step waited for its next attempt the page said so, with the time.
    assert f"{EMAIL_STEP}:RETRYING:retry-at" in seen(page)

    # A hostile name is text, never markup.
    first = run_card(page, emails[0])
    expect(first.locator(".run-title .who")).to_have_text(" ".join(HOSTILE_NAME.split()))
    assert page.locator("#runs img, #users img, #runs b").count() == 0
    assert page.evaluate("() => window.__pwned") is None

    # Verify by the outbox's button; the run finishes and the user gets a decision.
    mail = page.locator(f'#outbox li.mail[data-to="{email}"]').first
    expect(mail.locator(".mail-link")).to_contain_text("/verify?token=")
    mail.get_by_role("button", name="Verify email").click()
    expect(mail.locator(".mail-msg")).to_have_text("Verified: the run continues.")
    expect(card).to_have_attribute("data-status", "COMPLETED")
    for step_id in ("wait-for-verification", "ai-risk-check", "finalize-user"):
        expect(step(card, step_id)).to_have_attribute("data-status", "COMPLETED")
    row = page.locator(f'#users tbody tr[data-email="{email}"]')
    expect(row).to_have_attribute("data-status", re.compile("^(ACTIVE|FLAGGED)$"))
    expect(row.locator(".u-status")).to_have_text(re.compile("ACTIVE|FLAGGED"))
    expect(row.locator(".u-risk")).to_have_text(re.compile("ALLOW|FLAG"))
    expect(row.locator(".u-source")).to_have_text(re.compile(r"heuristic|gemini"))
    expect(row.locator(".u-reasons li").first).not_to_be_empty()
    expect(mail.get_by_role("button", name="Verified ✓")).to_be_disabled()
    assert {"wait-for-verification:WAITING", "ai-risk-check:COMPLETED", "finalize-user:COMPLETED"} <= seen(page)

    # The timeline is there, collapsed until asked for.
    timeline = card.locator("details.timeline")
    expect(timeline.locator(".timeline-list")).to_be_hidden()
    timeline.locator("summary").click()
    expect(timeline.locator(".timeline-list")).to_contain_text("attempt-failed")
    expect(timeline.locator(".timeline-list")).to_contain_text("run-completed")

    assert_not_reloaded(page, marker)


# -- 2. a tab opened later shows the same; actions in one tab show in the other ---------


def test_second_tab_shows_the_same_state(start_server: Callable[..., Server], context: BrowserContext) -> None:
    server = start_server("--email-failure-rate", "0")
    first = open_dashboard(context, server.url)
    marker = mark(first)
    done, waiting, cancelled = "done@example.com", "waiting@example.com", "cancel@example.com"
    run_ids = {email: api_signup(server, name, email) for name, email in
               [("Dana Done", done), ("Wes Waiting", waiting), ("Cal Cancel", cancelled)]}  # fmt: skip
    for email in run_ids:
        expect(run_card(first, email)).to_have_attribute("data-status", "WAITING")
    verify_by_api(server, done)
    assert server.request("POST", f"/api/workflows/{run_ids[cancelled]}/cancel")[0] == 200
    expect(run_card(first, done)).to_have_attribute("data-status", "COMPLETED")
    expect(run_card(first, cancelled)).to_have_attribute("data-status", "CANCELLED")
    expect(first.locator(f'#users tr[data-email="{done}"]')).to_have_attribute("data-status", "ACTIVE")

    second = open_dashboard(context, server.url)
    expect(run_card(second, done)).to_have_attribute("data-status", "COMPLETED")
    expect(second.locator("#runs li.step")).to_have_count(15)
    expect(second.locator("#users tbody tr")).to_have_count(3)
    expect(second.locator("#outbox li.mail")).to_have_count(3)
    expect(second.locator(f'#users tr[data-email="{done}"] .u-reasons li')).not_to_have_count(0)
    state = snapshot(second)
    assert [r["status"] for r in state["runs"]] == ["CANCELLED", "WAITING", "COMPLETED"]
    wait_same_snapshot(first, state)

    # An action taken in the new tab reaches the old one by the event stream.
    run_card(second, waiting).get_by_role("button", name="Resend link").click()
    expect(run_card(second, waiting).locator("[data-role=run-msg]")).to_contain_text("new link is on its way")
    expect(first.locator(f'#outbox li.mail[data-to="{waiting}"][data-kind="resend"]')).to_have_count(1)
    expect(first.locator(f'#outbox li.mail[data-to="{waiting}"][data-kind="verification"] .mail-note')).to_have_text(
        "replaced by a newer link"
    )
    assert_not_reloaded(first, marker)


# -- 3. validation -----------------------------------------------------------------------


def test_invalid_signup_shows_the_message_and_creates_nothing(start_server: Callable[..., Server], context: BrowserContext) -> None:
    server = start_server("--email-failure-rate", "0")
    page = open_dashboard(context, server.url)
    name, email, message = page.get_by_label("Name"), page.get_by_label("Email"), page.locator("#signup-msg")

    # Client-side first: both fields are required, and focus goes to the first bad one.
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("#signup-name-err")).to_have_text("Enter a name.")
    expect(page.locator("#signup-email-err")).to_have_text("Enter an email address.")
    expect(name).to_be_focused()
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(message).to_have_text("Please fix the highlighted fields.")

    # With the keyboard only: type, Tab, type, Enter.
    name.focus()
    page.keyboard.type("Ann Lee")
    expect(page.locator("#signup-name-err")).to_be_hidden()
    page.keyboard.press("Tab")
    expect(email).to_be_focused()
    page.keyboard.type("not-an-email")
    page.keyboard.press("Enter")
    expect(page.locator("#signup-email-err")).to_have_text("Enter an email address like ann@example.com.")
    expect(email).to_be_focused()

    # What only the server can tell: its own message, shown as it is.
    status, body = server.request("POST", "/api/signup", {"name": "Ann Lee", "email": "ann@example"})
    assert status == 400
    email.fill("ann@example")
    page.keyboard.press("Enter")
    expect(message).to_have_text(body["error"]["message"])
    expect(message).to_have_class(re.compile(r"\berror\b"))
    expect(email).to_have_attribute("aria-invalid", "true")

    assert server.get("/api/workflows")["workflows"] == []
    assert server.get("/api/users")["users"] == []
    expect(page.locator("#runs article.run")).to_have_count(0)
    expect(page.locator("#users tbody tr")).to_have_count(0)


# -- 4. operator actions -------------------------------------------------------------------


def test_failed_run_can_be_retried_and_cancelled(start_server: Callable[..., Server], context: BrowserContext) -> None:
    server = start_server("--email-failure-rate", "1")
    page = open_dashboard(context, server.url)
    marker = mark(page)
    email = "unlucky@example.com"
    sign_up(page, "Una Lucky", email)
    card = run_card(page, email)
    email_step = step(card, EMAIL_STEP)

    expect(email_step).to_have_attribute("data-status", "RETRYING")
    expect(email_step.locator("[data-role=retry-at]")).to_contain_text("retry in")
    expect(email_step.locator(".attempt-text").first).to_have_text("TransientEmailError: injected failure (email failure rate)")
    expect(card.get_by_role("button", name="Cancel")).to_be_visible()
    expect(card.get_by_role("button", name="Retry")).to_have_count(0)

    # Five attempts, 0.5 + 1 + 2 + 4 s of backoff: then the run is FAILED.
    expect(card).to_have_attribute("data-status", "FAILED", timeout=25_000)
    expect(email_step).to_have_attribute("data-status", "FAILED")
    expect(email_step.locator(".attempt-error")).to_have_attribute("data-attempts", "1,2,3,4,5")
    expect(card.locator("[data-role=run-error]")).to_contain_text("TransientEmailError")
    expect(card.get_by_role("button", name="Cancel")).to_have_count(0)
    retry = card.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()

    # A second tab that hears no events keeps showing the old state...
    stale = context.new_page()
    stale.route("**/api/events*", lambda route: route.abort())
    stale.goto(server.url)
    expect(stale.locator("#conn")).not_to_have_attribute("data-state", "live")
    stale_card = run_card(stale, email)
    expect(stale_card).to_have_attribute("data-status", "FAILED")

    retry.click()
    expect(card.locator("[data-role=run-msg]")).to_have_text("Retry accepted: the failed step runs again.")
    expect(card).to_have_attribute("data-status", "RUNNING")
    expect(card.get_by_role("button", name="Retry")).to_have_count(0)
    expect(card.locator("details.timeline .timeline-list")).to_contain_text("operator-retry")

    # ...so its Retry is refused with the server's 409 message, and it catches up.
    stale_card.get_by_role("button", name="Retry").click()
    expect(stale_card.locator("[data-role=run-msg]")).to_have_text(
        "409: only a FAILED run can be retried; this one is RUNNING"
    )
    expect(stale_card).to_have_attribute("data-status", "RUNNING")
    stale.close()

    card.get_by_role("button", name="Cancel").click()
    expect(card).to_have_attribute("data-status", "CANCELLED")
    expect(card.locator(".actions button")).to_have_count(0)
    expect(page.get_by_role("button", name="Cancelled 1")).to_be_visible()
    assert_not_reloaded(page, marker)


def test_waiting_run_resend_link_and_cancel(start_server: Callable[..., Server], context: BrowserContext) -> None:
    server = start_server("--email-failure-rate", "0")
    email = "wanda@example.com"
    api_signup(server, "Wanda Wait", email)
    server.wait_for("/api/workflows", lambda b: b["workflows"][0]["status"] == "WAITING")
    page = open_dashboard(context, server.url)
    card = run_card(page, email)
    expect(card).to_have_attribute("data-status", "WAITING")
    wait = step(card, "wait-for-verification")
    expect(wait.locator("[data-role=deadlines]")).to_contain_text(re.compile(r"reminder\s*in 59 min"))
    expect(wait.locator("[data-role=deadlines]")).to_contain_text(re.compile(r"expiry\s*in 23 h"))
    expect(card.get_by_role("button", name="Retry")).to_have_count(0)

    resend = card.get_by_role("button", name="Resend link")
    resend.click()
    message = card.locator("[data-role=run-msg]")
    expect(message).to_have_text("A new link is on its way; the old one no longer works.")
    expect(page.locator(f'#outbox li.mail[data-to="{email}"][data-kind="resend"]')).to_have_count(1)
    old_mail = page.locator(f'#outbox li.mail[data-to="{email}"][data-kind="verification"]')
    expect(old_mail.locator(".mail-note")).to_have_text("replaced by a newer link")

    # Too soon for another: the server's 429 message.
    card.get_by_role("button", name="Resend link").click()
    expect(message).to_contain_text(re.compile(r"^429: a new link was sent moments ago; try again in \d+ s$"))

    # The old link is refused with the server's 410 message.
    old_mail.get_by_role("button", name="Verify email").click()
    expect(old_mail.locator(".mail-msg")).to_contain_text("410: this verification link no longer works")

    card.get_by_role("button", name="Cancel").click()
    expect(card).to_have_attribute("data-status", "CANCELLED")
    expect(card.locator(".actions button")).to_have_count(0)
    expect(message).to_have_text("Cancelled.")

    # Filtering by status, and the phone layout: nothing wider than the screen.
    page.get_by_role("button", name=re.compile("^Waiting")).click()
    expect(page.locator("#runs article.run")).to_have_count(0)
    expect(page.locator("#runs-empty")).to_have_text("No waiting runs.")
    page.get_by_role("button", name=re.compile("^Cancelled")).click()
    expect(page.locator("#runs article.run")).to_have_count(1)
    page.set_viewport_size(PHONE)
    page.get_by_role("button", name=re.compile("^All")).click()
    expect(card).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate("() => getComputedStyle(document.querySelector('.steps')).gridTemplateColumns.split(' ').length") == 1


def test_dashboard_asks_for_nothing_but_its_own_files(start_server: Callable[..., Server], context: BrowserContext) -> None:
    """No framework, no CDN: every request the page makes goes to the server itself."""
    server = start_server("--email-failure-rate", "0")
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    open_dashboard(context, server.url)
    assert requests and all(url.startswith(server.url) or url.startswith("data:") for url in requests), requests


def test_outbox_panel_is_hidden_when_mail_goes_over_smtp(start_server: Callable[..., Server], context: BrowserContext) -> None:
    server = start_server("--smtp-url", "smtp://127.0.0.1:9")  # nothing listens there: sends fail, harmlessly
    assert server.request("GET", "/api/outbox")[0] == 404
    page = open_dashboard(context, server.url)
    expect(page.locator("#outbox-card")).to_be_hidden()
    expect(page.locator("#signup-form")).to_be_visible()
