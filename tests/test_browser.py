"""The dashboard in a real headless Chromium, against a real server process.

Playwright's sync API drives the browser from plain (non-async) tests, so it
never meets pytest-asyncio's event loop; the server is a child process
(tests/server.py). Every wait is on a condition in the page, with a timeout.

Each test runs on both stores where the store shows through the page (live
updates, sign-in and accounts, deliveries, retrying every failed run); the
others (layout, validation, what a viewer is offered) on the data dir only.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.browser_support import (
    LAPTOP,
    PHONE,
    add_operator,
    call,
    missing,
    open_dashboard,
    other_site,
    remove_operator,
    run_card,
    run_row,
    snapshot,
    step,
    wait_same_snapshot,
)
from tests.cluster import NODE_TIMEOUT, Nodes, attempts_by_node, detail, run_of, token_in
from tests.helpers import ONE_STORE, StoresAt
from tests.server import Server
from tests.smtp_server import SmtpServer
from tests.webhook_receiver import Receiver, new_secret

_reason = missing()
if _reason:
    if os.environ.get("CI"):  # CI installs both: a skip there would hide a broken setup
        raise RuntimeError(f"browser tests need Chromium and Playwright: {_reason}")
    pytest.skip(f"browser tests need Chromium and Playwright: {_reason}", allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Page, expect  # noqa: E402

expect.set_options(timeout=10_000)

EMAIL_STEP = "send-verification-email"
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1"> Ann & <b>Lee</b>'


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
def servers() -> Iterator[list[Server]]:
    """The servers a test started; stopped after it."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.terminate()
        server.stop()


@pytest.fixture
def start_server(stores_at: StoresAt, servers: list[Server]) -> Callable[..., Server]:
    """A server with no operator account: its operator surface answers loopback clients only."""

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = stores_at.server(*args, name=f"data{len(servers)}", env=env).start()
        servers.append(server)
        return server

    return start


@dataclass
class Site:
    """A server with operator accounts, and their tokens by name."""

    server: Server
    data_dir: list[str]  # how `userflow operators` finds its accounts: the data dir or the database
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, as_: str) -> Any:
        status, body = call(self.url, "GET", path, token=self.tokens[as_])
        assert status == 200, (path, status, body)
        return body


@pytest.fixture
def start_site(stores_at: StoresAt, servers: list[Server]) -> Callable[..., Site]:
    """A server started with the given accounts ({name: role}), made by the CLI beforehand."""

    def start(accounts: dict[str, str], *args: str, env: dict[str, str] | None = None) -> Site:
        name = f"data{len(servers)}"
        data_dir = stores_at.cli_args(name)
        tokens = {account: add_operator(data_dir, account, role) for account, role in accounts.items()}
        server = stores_at.server(*args, name=name, env=env).start()
        servers.append(server)
        return Site(server, data_dir, tokens)

    return start


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
    # Emails are retried for 10 s, so a run whose first five attempts fail is FAILED at about 7.5 s.
    server = start_server("--email-failure-rate", "0.5", "--email-retry-for", "10")
    page = open_dashboard(context, server.url)
    marker = mark(page)
    record_step_states(page)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#runs-empty")).to_have_text("No runs yet: sign someone up.")

    # Sign up through the form until some run's email went out after at least one
    # failed attempt (each run: 1/2 for a first failure, 1/32 to then give up). Each
    # run is opened as it appears: an open run's detail follows it live.
    emails: list[str] = []
    retried = page.locator(
        f'article.run[data-status="WAITING"]:has(li.step[data-step="{EMAIL_STEP}"][data-status="COMPLETED"] .attempt-error)'
    )
    for batch in range(3):
        for n in range(6):
            email = f"user{batch}x{n}@example.com"
            sign_up(page, HOSTILE_NAME if not emails else f"User {chr(65 + len(emails) % 26)} Example", email)
            run_card(page, email)
            emails.append(email)
        # The steps advance in the page as the runs do: each one leaves RUNNING.
        expect(page.locator("#runs tr.run-row")).to_have_count(len(emails))
        expect(page.locator("#runs article.run")).to_have_count(len(emails))
        expect(page.locator('#runs article.run[data-status="RUNNING"]')).to_have_count(0, timeout=20_000)
        expect(page.locator('#runs tr.run-row[data-status="RUNNING"]')).to_have_count(0)
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
    expect(run_row(page, emails[0]).locator(".c-person .who")).to_have_text(" ".join(HOSTILE_NAME.split()))
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
    expect(run_row(page, email).locator("[data-role=progress]")).to_have_attribute("data-steps", " ".join(["COMPLETED"] * 5))
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


@ONE_STORE
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

    # No account exists: the page says it acts as the local operator, with nothing to sign out of.
    expect(first.locator("#who-name")).to_have_text("local (no accounts)")
    expect(first.locator("#who-role")).to_be_hidden()
    expect(first.locator("#sign-out")).to_be_hidden()

    second = open_dashboard(context, server.url)
    for email in run_ids:
        run_card(second, email)
    expect(run_card(second, done)).to_have_attribute("data-status", "COMPLETED")
    expect(second.locator("#runs li.step")).to_have_count(15)
    expect(second.locator("#users tbody tr")).to_have_count(3)
    expect(second.locator("#outbox li.mail")).to_have_count(3)
    expect(second.locator(f'#users tr[data-email="{done}"] .u-reasons li')).not_to_have_count(0)
    state = snapshot(second)
    assert [r["status"] for r in state["runs"]] == ["CANCELLED", "WAITING", "COMPLETED"]
    assert [r[1] for r in state["rows"]] == ["CANCELLED", "WAITING", "COMPLETED"]
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


@ONE_STORE
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
    expect(page.locator("#runs tr.run-row")).to_have_count(0)
    expect(page.locator("#users tbody tr")).to_have_count(0)


# -- 4. operator actions -------------------------------------------------------------------


@ONE_STORE
def test_failed_run_can_be_retried_and_cancelled(start_server: Callable[..., Server], context: BrowserContext) -> None:
    # Emails are retried for 10 s: attempts start at about 0, 0.5, 1.5, 3.5 and 7.5 s (backoff
    # 0.5 s doubling, ± 10 %); the sixth would start after 10 s, so the run fails instead.
    server = start_server("--email-failure-rate", "1", "--email-retry-for", "10")
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

    # Five attempts, 0.5 + 1 + 2 + 4 s of backoff: then the run is FAILED (the next would be past 10 s).
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


@ONE_STORE
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
    expect(page.locator("#runs tr.run-row")).to_have_count(0)
    expect(page.locator("#runs-empty")).to_have_text("No waiting runs.")
    page.get_by_role("button", name=re.compile("^Cancelled")).click()
    expect(page.locator("#runs tr.run-row")).to_have_count(1)
    expect(card).to_be_visible()  # still open: the filter shows its row again
    page.set_viewport_size(PHONE)
    page.get_by_role("button", name=re.compile("^All")).click()
    expect(card).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate("() => getComputedStyle(document.querySelector('.steps')).gridTemplateColumns.split(' ').length") == 1


@ONE_STORE
def test_dashboard_asks_for_nothing_but_its_own_files(start_server: Callable[..., Server], context: BrowserContext) -> None:
    """No framework, no CDN: every request the page makes goes to the server itself."""
    server = start_server("--email-failure-rate", "0")
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    open_dashboard(context, server.url)
    assert requests and all(url.startswith(server.url) or url.startswith("data:") for url in requests), requests


@ONE_STORE
def test_outbox_panel_is_hidden_when_mail_goes_over_smtp(start_server: Callable[..., Server], context: BrowserContext) -> None:
    server = start_server("--smtp-url", "smtp://127.0.0.1:9")  # nothing listens there: sends fail, harmlessly
    assert server.request("GET", "/api/outbox")[0] == 404
    page = open_dashboard(context, server.url)
    expect(page.locator("#outbox-card")).to_be_hidden()
    expect(page.locator("#signup-form")).to_be_visible()


# -- 5. operator accounts: sign-in, roles, other sites -----------------------------------------


def session_cookie(context: BrowserContext) -> dict[str, Any]:
    cookies = [c for c in context.cookies() if c["name"] == "userflow_session"]
    assert len(cookies) == 1, cookies
    return dict(cookies[0])


def sign_in(context: BrowserContext, site: Site, name: str) -> Page:
    """A new tab signed in as ``name`` through the sign-in page, on the live, loaded dashboard."""
    page = context.new_page()
    page.goto(f"{site.url}/signin")
    page.get_by_label("Token").fill(site.tokens[name])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{site.url}/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    page.wait_for_selector("body[data-loaded=true]", state="attached")
    expect(page.locator("#who-name")).to_have_text(name)
    return page


def test_operator_signs_in_watches_acts_and_signs_out(start_site: Callable[..., Site], context: BrowserContext) -> None:
    site = start_site({"alice": "operator"}, "--email-failure-rate", "0")
    url = site.url

    # Not signed in: the dashboard sends the browser to the sign-in page, the API answers 401.
    page = context.new_page()
    page.goto(url)
    expect(page).to_have_url(f"{url}/signin")
    assert call(url, "GET", "/api/workflows")[0] == 401
    token = page.get_by_label("Token")
    expect(token).to_be_focused()
    page.keyboard.insert_text(site.tokens["alice"])  # what a paste does: one insertion
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(f"{url}/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    page.wait_for_selector("body[data-loaded=true]", state="attached")
    expect(page.locator("#who-name")).to_have_text("alice")
    expect(page.locator("#who-role")).to_have_text("operator")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page.locator("#read-only")).to_be_hidden()
    cookie = session_cookie(context)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "userflow_session" not in page.evaluate("() => document.cookie")
    marker = mark(page)
    record_step_states(page)

    # A signup made elsewhere appears and advances without a reload: the event stream runs on the cookie.
    email = "wendy@example.com"
    run_id = api_signup(site.server, "Wendy Watch", email)
    card = run_card(page, email)
    expect(card).to_have_attribute("data-status", "WAITING")
    expect(step(card, EMAIL_STEP)).to_have_attribute("data-status", "COMPLETED")
    expect(step(card, "wait-for-verification").locator("[data-role=deadlines]")).to_contain_text("expiry")
    assert {"create-user:COMPLETED", f"{EMAIL_STEP}:COMPLETED", "wait-for-verification:WAITING"} <= seen(page)

    # Acting: the timeline names the account.
    message = card.locator("[data-role=run-msg]")
    card.get_by_role("button", name="Resend link").click()
    expect(message).to_have_text("A new link is on its way; the old one no longer works.")
    expect(page.locator(f'#outbox li.mail[data-to="{email}"][data-kind="resend"]')).to_have_count(1)
    card.get_by_role("button", name="Cancel").click()
    expect(card).to_have_attribute("data-status", "CANCELLED")
    expect(message).to_have_text("Cancelled.")
    timeline = card.locator("details.timeline")
    timeline.locator("summary").click()
    expect(timeline.locator(".timeline-list")).to_contain_text("new verification link requested by alice")
    expect(timeline.locator(".timeline-list li.t-run-cancelled")).to_contain_text("run cancelled by alice")
    messages = [e["message"] for e in site.get(f"/api/workflows/{run_id}", as_="alice")["timeline"]]
    assert "run cancelled by alice" in messages
    assert_not_reloaded(page, marker)

    # Signing out ends the session: its cookie is refused from then on, wherever it comes from.
    assert call(url, "GET", "/api/session", cookie=cookie["value"])[0] == 200
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{url}/signin?reason=signed-out")
    expect(page.locator("#signin-notice")).to_have_text("You are signed out.")
    status, body = call(url, "GET", "/api/session", cookie=cookie["value"])
    assert (status, body["error"]["code"]) == (401, "session_expired")
    assert call(url, "GET", "/api/workflows", cookie=cookie["value"])[0] == 401
    page.goto(url)
    expect(page).to_have_url(f"{url}/signin")


@ONE_STORE
def test_wrong_token_shows_the_servers_message(start_site: Callable[..., Site], context: BrowserContext) -> None:
    site = start_site({"alice": "operator"})
    page = context.new_page()
    page.goto(f"{site.url}/signin")
    message = page.locator("#signin-msg")
    token = page.get_by_label("Token")

    page.get_by_role("button", name="Sign in").click()
    expect(message).to_have_text("Paste your token first.")
    expect(token).to_be_focused()

    status, body = call(site.url, "POST", "/api/session", {"token": "uft_not-a-real-token"})
    assert status == 401
    token.fill("uft_not-a-real-token")
    page.keyboard.press("Enter")
    expect(message).to_have_text(body["error"]["message"])
    expect(message).to_have_class(re.compile(r"\berror\b"))
    expect(token).to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url(f"{site.url}/signin")
    assert not [c for c in context.cookies() if c["name"] == "userflow_session"]

    # The right one, pasted with a stray space, then signs in.
    token.fill(f" {site.tokens['alice']} ")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{site.url}/")
    expect(page.locator("#who-name")).to_have_text("alice")


@ONE_STORE
def test_viewer_is_offered_no_action_and_cannot_force_one(
    start_site: Callable[..., Site], context: BrowserContext, browser: Browser
) -> None:
    site = start_site({"vera": "viewer", "olga": "operator"}, "--email-failure-rate", "0")
    email = "pat@example.com"
    run_id = api_signup(site.server, "Pat Pending", email)

    # The operator is offered resend and cancel on this run, and the outbox's verify button.
    operator_context = browser.new_context(viewport=LAPTOP)
    try:
        operator = sign_in(operator_context, site, "olga")
        op_card = run_card(operator, email)
        expect(op_card).to_have_attribute("data-status", "WAITING")
        expect(op_card.locator(".actions button")).to_have_text(["Resend link", "Cancel"])
        expect(operator.locator("#outbox .verify-btn")).to_have_count(1)

        # An action the server refuses (403) says why in the run's message area: here the
        # request goes out with the viewer's token, as if olga had lost the operator role.
        def as_viewer(route: Any) -> None:
            route.continue_(headers={**route.request.headers, "authorization": f"Bearer {site.tokens['vera']}"})

        operator.route("**/api/workflows/*/cancel", as_viewer)
        op_card.get_by_role("button", name="Cancel").click()
        expect(op_card.locator("[data-role=run-msg]")).to_have_text("403: vera is a viewer: this needs the operator role")
        expect(op_card).to_have_attribute("data-status", "WAITING")
    finally:
        operator_context.close()

    # The viewer reads everything, and is offered no action anywhere.
    page = sign_in(context, site, "vera")
    expect(page.locator("#who-role")).to_have_text("viewer")
    expect(page.locator("#read-only")).to_be_visible()
    card = run_card(page, email)
    expect(card).to_have_attribute("data-status", "WAITING")
    expect(step(card, "wait-for-verification")).to_have_attribute("data-status", "WAITING")
    expect(page.locator(f'#outbox li.mail[data-to="{email}"] .mail-state')).to_have_text("not verified yet")
    expect(page.locator("#outbox-card .hint")).to_have_text(
        "Outbox mode: emails are kept here instead of being sent.", use_inner_text=True
    )
    expect(page.locator(f'#users tbody tr[data-email="{email}"]')).to_have_attribute("data-status", "PENDING")
    card.locator("details.timeline summary").click()
    expect(card.locator(".timeline-list")).to_contain_text("waiting")
    assert page.locator("[data-action], .actions button, .verify-btn").count() == 0
    assert page.get_by_role("button", name=re.compile("^(Retry|Cancel|Resend link|Verify email)$")).count() == 0

    # Forcing actions from the page, with the viewer's cookie: 403, and nothing happens.
    user_id = site.get(f"/api/workflows/{run_id}", as_="olga")["userId"]
    for path in (f"/api/workflows/{run_id}/cancel", f"/api/users/{user_id}/resend-verification"):
        answer = page.evaluate(
            """async (path) => {
              const r = await fetch(path, {method: 'POST', credentials: 'include'});
              return {status: r.status, body: await r.json()};
            }""",
            path,
        )
        assert answer["status"] == 403, (path, answer)
        assert answer["body"]["error"]["code"] == "forbidden"
    detail = site.get(f"/api/workflows/{run_id}", as_="olga")
    assert (detail["status"], detail["userStatus"]) == ("WAITING", "PENDING")
    assert not [e for e in detail["timeline"] if "cancel" in e["type"] or "resend" in e["type"]], detail["timeline"]
    assert [m["kind"] for m in site.get("/api/outbox", as_="olga")["emails"]] == ["verification"]
    expect(card).to_have_attribute("data-status", "WAITING")
    assert page.locator("[data-action], .actions button, .verify-btn").count() == 0


ATTACK_PAGE = """<!doctype html>
<meta charset="utf-8"><title>You won a prize</title>
<form id="claim" method="post" action="{target}"><input type="hidden" name="prize" value="1"></form>
<script>
  // Fetches with the browser's credentials (the answer readable, then opaque), then a plain
  // form post: all at the dashboard's API.
  const post = (mode) => fetch({target_js}, {{method: "POST", credentials: "include", mode}}).catch(() => null);
  post("cors").then(() => post("no-cors")).finally(() => document.getElementById("claim").submit());
</script>
"""


@ONE_STORE
def test_another_site_cannot_act_with_the_operators_cookie(start_site: Callable[..., Site], context: BrowserContext) -> None:
    site = start_site({"alice": "operator"}, "--email-failure-rate", "0")
    email = "target@example.com"
    run_id = api_signup(site.server, "Tara Target", email)
    dashboard = sign_in(context, site, "alice")
    card = run_card(dashboard, email)
    expect(card).to_have_attribute("data-status", "WAITING")
    target = f"{site.url}/api/workflows/{run_id}/cancel"
    page = {"/": ATTACK_PAGE.format(target=target, target_js=json.dumps(target))}

    # 127.0.0.1 on another port: another origin but the same site, so SameSite=Strict lets the
    # cookie go along, and the server's Origin check must refuse: 403 cross_origin (which only a
    # request the cookie authenticated can get: without it the answer is a 401).
    # localhost: another site, so the browser does not even send the cookie: 401.
    for host, status, code in (("127.0.0.1", 403, "cross_origin"), ("localhost", 401, "authentication_required")):
        with other_site(page, host) as evil:
            attacker = context.new_page()
            posts: list[Any] = []
            attacker.on("request", lambda r, posts=posts: posts.append(r) if r.method == "POST" else None)
            attacker.goto(f"{evil}/")
            attacker.wait_for_url(target)  # the form's post was answered: its body is on screen
            expect(attacker.locator("body")).to_contain_text(f'"code":"{code}"')
            assert [r.url for r in posts] == [target] * 3
            cors, opaque, form = (r.response() for r in posts)
            assert cors is None and posts[0].failure is not None  # the browser withholds the answer: no CORS headers
            assert opaque is not None and opaque.status == status, host
            assert form is not None and form.status == status, host
            attacker.close()

    detail = site.get(f"/api/workflows/{run_id}", as_="alice")
    assert detail["status"] == "WAITING"
    assert not [e for e in detail["timeline"] if "cancel" in e["type"] or "cancel" in e["message"]], detail["timeline"]
    expect(card).to_have_attribute("data-status", "WAITING")

    # The same cookie acts from the dashboard itself.
    card.get_by_role("button", name="Cancel").click()
    expect(card).to_have_attribute("data-status", "CANCELLED")
    assert site.get(f"/api/workflows/{run_id}", as_="alice")["timeline"][-1]["message"] == "run cancelled by alice"


def test_local_dashboard_goes_to_signin_once_an_account_exists(
    start_server: Callable[..., Server], context: BrowserContext
) -> None:
    server = start_server("--email-failure-rate", "0")
    page = open_dashboard(context, server.url)
    expect(page.locator("#who-name")).to_have_text("local (no accounts)")
    token = add_operator(server.stores_args, "alice", "operator")
    expect(page).to_have_url(f"{server.url}/signin?reason=accounts", timeout=8_000)
    expect(page.locator("#signin-notice")).to_have_text("This server has operator accounts now: sign in with your token.")
    page.get_by_label("Token").fill(token)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server.url}/")
    expect(page.locator("#who-name")).to_have_text("alice")


def test_removed_account_is_sent_to_signin(start_site: Callable[..., Site], context: BrowserContext) -> None:
    site = start_site({"alice": "operator"}, "--email-failure-rate", "0")
    page = sign_in(context, site, "alice")
    cookie = session_cookie(context)
    remove_operator(site.data_dir, "alice")
    expect(page).to_have_url(f"{site.url}/signin?reason=ended", timeout=8_000)
    expect(page.locator("#signin-notice")).to_contain_text("Your session has ended")
    assert call(site.url, "GET", "/api/session", cookie=cookie["value"])[0] == 401


def test_expired_session_is_sent_to_signin(start_site: Callable[..., Site], context: BrowserContext) -> None:
    site = start_site({"alice": "operator"}, "--email-failure-rate", "0", "--session-ttl", "3")
    page = sign_in(context, site, "alice")
    expect(page).to_have_url(f"{site.url}/signin?reason=ended", timeout=8_000)
    expect(page.locator("#signin-notice")).to_contain_text("Your session has ended")


# -- 6. webhook deliveries, and retrying every failed run ----------------------------------------


def webhook_args(*urls: str, schedule: str = "1,1") -> list[str]:
    """Flags for a server that POSTs every event to ``urls``: a short retry schedule, a short timeout."""
    flags = [item for url in urls for item in ("--webhook-url", url)]
    return [*flags, "--webhook-retry-schedule", schedule, "--webhook-timeout", "1"]


def record_delivery_states(page: Page) -> None:
    """Remember every (url, status) the deliveries panel ever shows, with a next attempt time or not."""
    page.evaluate(
        """() => {
          window.__uf_deliveries = new Set();
          const note = () => document.querySelectorAll('#deliveries li.delivery').forEach(
            d => window.__uf_deliveries.add(d.dataset.url + ' ' + d.dataset.status + (d.querySelector('[data-role=next-attempt]') ? ' next-attempt' : '')));
          note();
          new MutationObserver(note).observe(document.querySelector('#deliveries'), {subtree: true, childList: true});
        }"""
    )


def delivery_states(page: Page) -> set[str]:
    return set(page.evaluate("() => [...window.__uf_deliveries]"))


def test_deliveries_show_live_and_an_operator_sends_a_failed_one_again(
    start_site: Callable[..., Site], context: BrowserContext
) -> None:
    secret = new_secret()
    with Receiver(secret) as good, Receiver(secret) as bad:
        bad.answer = lambda n: 500
        site = start_site({"alice": "operator"}, "--email-failure-rate", "0", *webhook_args(good.url, bad.url),
                          env={"USERFLOW_WEBHOOK_SECRET": secret})  # fmt: skip
        page = sign_in(context, site, "alice")
        marker = mark(page)
        panel = page.locator("#webhooks-card")
        expect(panel).to_be_hidden()  # nothing delivered yet: nothing to show
        record_delivery_states(page)

        # One signup: user.created goes to both URLs; one answers 204, the other 500 three times.
        email = "hana@example.com"
        api_signup(site.server, "Hana Hook", email)
        expect(panel).to_be_visible()
        delivered = page.locator(f'#deliveries li.delivery[data-url="{good.url}"]')
        failed = page.locator(f'#deliveries li.delivery[data-url="{bad.url}"]')
        expect(delivered).to_have_attribute("data-status", "delivered")
        expect(delivered.locator(".dl-type")).to_have_text("user.created")
        expect(delivered.locator(".dl-user")).to_have_text(f"for {email}")
        expect(delivered.locator(".dl-url")).to_have_text(f"to {good.url}")
        expect(delivered.locator("[data-role=attempts]")).to_have_text("1 attempt")
        expect(delivered.locator("[data-role=last-error]")).to_have_count(0)
        expect(failed).to_have_attribute("data-status", "failed", timeout=15_000)
        expect(failed.locator(".dl-user")).to_have_text(f"for {email}")
        expect(failed.locator("[data-role=attempts]")).to_have_text("3 attempts")
        expect(failed.locator("[data-role=last-error]")).to_have_text("last error: HTTP 500")
        expect(failed.locator("[data-role=delivery-status]")).to_have_text("failed")
        # Meanwhile it was pending, with the time of its next attempt.
        assert f"{bad.url} pending next-attempt" in delivery_states(page)
        expect(page.locator("#deliveries li.delivery")).to_have_count(2)
        expect(page.locator("#deliveries-count")).to_have_text("(2)")

        # The run's timeline has the deliveries' attempts among its own entries (from its detail).
        card = run_card(page, email)
        card.locator("details.timeline summary").click()
        timeline = card.locator(".timeline-list")
        expect(timeline.locator("li.t-webhook-failed")).to_have_text(
            re.compile(rf"webhook-failed\s*webhook user.created to {re.escape(bad.url)}: failed: HTTP 500; given up$")
        )
        expect(timeline.locator("li.t-webhook-retrying")).to_have_count(2)
        expect(timeline.locator("li.t-webhook-delivered")).to_have_count(1)
        expect(timeline.locator("li.t-webhook-delivered")).to_contain_text(f"webhook user.created to {good.url}: delivered (HTTP 204,")
        expect(timeline.locator("li.t-waiting")).to_be_visible()

        # The status filter.
        only_failed = page.get_by_role("button", name=re.compile("^Failed deliveries"))
        expect(only_failed.locator(".n")).to_have_text("1")
        only_failed.click()
        expect(only_failed).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#deliveries li.delivery")).to_have_count(1)
        expect(failed).to_be_visible()
        page.get_by_role("button", name=re.compile("^Pending deliveries")).click()
        expect(page.locator("#deliveries li.delivery")).to_have_count(0)
        expect(page.locator("#deliveries-empty")).to_have_text("No pending deliveries.")
        page.get_by_role("button", name=re.compile("^All deliveries")).click()
        expect(page.locator("#deliveries li.delivery")).to_have_count(2)

        # The receiver is back: Send again delivers, with the same webhook-id, and says so.
        bad.answer = lambda n: 204
        expect(delivered.get_by_role("button", name="Send again")).to_have_count(0)
        failed.get_by_role("button", name="Send again").click()
        expect(failed).to_have_attribute("data-status", "delivered")
        expect(failed.locator("[data-role=delivery-msg]")).to_have_text("Sent again and delivered (HTTP 204).")
        expect(failed.locator("[data-role=attempts]")).to_have_text("4 attempts")
        expect(failed.locator(".dl-meta")).to_contain_text("sent again by alice")
        expect(failed.locator("[data-role=last-error]")).to_have_text("earlier error: HTTP 500")
        expect(failed.get_by_role("button", name="Send again")).to_have_count(0)
        expect(failed).to_be_focused()  # the button went; the keyboard stays on its delivery
        expect(page.locator("#deliveries-live")).to_have_text(f"user.created to {bad.url}: Sent again and delivered (HTTP 204).")
        got = bad.wait_until(lambda rs: any(r.answered == 204 for r in rs))
        assert [r.answered for r in got] == [500, 500, 500, 204]
        assert len({r.id for r in got}) == 1 and all(r.verified[secret] for r in got)
        listed = site.get("/api/webhooks/deliveries", as_="alice")["deliveries"]
        assert sorted(d["status"] for d in listed) == ["delivered", "delivered"]

        # The timeline, still open, has the resend and its delivery; the attempt that gave up stays marked so.
        expect(timeline.locator("li.t-webhook-resent")).to_contain_text(f"webhook user.created to {bad.url}: sent again by alice")
        expect(timeline.locator("li.t-webhook-delivered")).to_have_count(2)
        expect(timeline.locator("li.t-webhook-retrying")).to_have_count(2)
        expect(timeline.locator("li.t-webhook-failed")).to_have_count(1)
        expect(timeline.locator("li.t-webhook")).to_have_count(6)
        expect(timeline).to_be_visible()
        assert_not_reloaded(page, marker)


@ONE_STORE
def test_viewer_sees_deliveries_and_is_offered_no_send_again(start_site: Callable[..., Site], context: BrowserContext) -> None:
    secret = new_secret()
    with Receiver(secret) as bad:
        bad.answer = lambda n: 500
        site = start_site({"vera": "viewer"}, "--email-failure-rate", "0", *webhook_args(bad.url, schedule="0.2"),
                          env={"USERFLOW_WEBHOOK_SECRET": secret})  # fmt: skip
        page = sign_in(context, site, "vera")
        expect(page.locator("#read-only")).to_contain_text("sending webhooks again")
        email = "val@example.com"
        api_signup(site.server, "Val View", email)
        item = page.locator("#deliveries li.delivery")
        expect(item).to_have_attribute("data-status", "failed")
        expect(item.locator(".dl-user")).to_have_text(f"for {email}")
        expect(item.locator("[data-role=attempts]")).to_have_text("2 attempts")
        expect(item.locator("[data-role=last-error]")).to_have_text("last error: HTTP 500")
        expect(page.locator("#webhooks-card .hint").first).to_have_text(
            "Every lifecycle event is POSTed, signed, to each webhook URL, and tried again on the retry schedule before it is given up as failed.",
            use_inner_text=True,
        )
        assert page.get_by_role("button", name="Send again").count() == 0
        assert page.locator("#deliveries button, [data-action]").count() == 0

        # Forced from the page with the viewer's cookie: 403, and it stays failed.
        delivery_id = item.get_attribute("data-delivery-id")
        answer = page.evaluate(
            "async (path) => { const r = await fetch(path, {method: 'POST'}); return {status: r.status, body: await r.json()}; }",
            f"/api/webhooks/deliveries/{delivery_id}/retry",
        )
        assert (answer["status"], answer["body"]["error"]["code"]) == (403, "forbidden"), answer
        assert [d["status"] for d in site.get("/api/webhooks/deliveries", as_="vera")["deliveries"]] == ["failed"]
        assert len(bad.received) == 2
        expect(item).to_have_attribute("data-status", "failed")


REFUSAL = "451 4.3.0 mail system temporarily unavailable"


def test_retry_all_failed_asks_first_then_resumes_every_failed_run(
    start_site: Callable[..., Site], context: BrowserContext, browser: Browser
) -> None:
    with SmtpServer() as smtp:
        outage = {"on": False}
        smtp.handler.reply = lambda envelope: REFUSAL if outage["on"] else None
        site = start_site({"alice": "operator", "vera": "viewer"}, "--smtp-url", smtp.url, "--email-retry-for", "2",
                          "--email-max-backoff", "0.5")  # fmt: skip
        page = sign_in(context, site, "alice")
        marker = mark(page)
        bulk, confirm, message = page.locator("#bulk"), page.locator("#retry-failed-confirm"), page.locator("#bulk-msg")
        expect(page.locator("#webhooks-card")).to_be_hidden()  # no webhook URL: no deliveries panel

        # One run gets its email; then the mail server refuses everything and two runs fail.
        waiting = "wes@example.com"
        api_signup(site.server, "Wes Waiting", waiting)
        expect(run_card(page, waiting)).to_have_attribute("data-status", "WAITING")
        expect(bulk).to_be_hidden()
        outage["on"] = True
        unlucky = ["una@example.com", "ulf@example.com"]
        for n, email in enumerate(unlucky):
            api_signup(site.server, f"Unlucky {n}", email)
        for email in unlucky:
            card = run_card(page, email)
            expect(card).to_have_attribute("data-status", "FAILED", timeout=20_000)
            expect(card.locator("[data-role=run-error]")).to_contain_text("451")
        expect(bulk).to_be_visible()
        expect(page.locator("#retry-failed-note")).to_have_text("2 runs failed")

        # A viewer sees the same failed runs, and no Retry all failed.
        viewer_context = browser.new_context(viewport=LAPTOP)
        try:
            viewer = sign_in(viewer_context, site, "vera")
            expect(viewer.locator('#runs tr.run-row[data-status="FAILED"]')).to_have_count(2)
            expect(viewer.locator("#bulk")).to_be_hidden()
            assert viewer.get_by_role("button", name=re.compile("Retry")).count() == 0
        finally:
            viewer_context.close()

        # The first click only asks; Escape and "Keep them" leave the runs as they are.
        retry_all = page.get_by_role("button", name="Retry all failed")
        retry_all.click()
        expect(confirm).to_be_visible()
        expect(confirm).to_contain_text("Retry all 2 failed runs, each from the step it failed at?")
        expect(page.get_by_role("button", name="Yes, retry them")).to_be_focused()
        page.keyboard.press("Escape")
        expect(confirm).to_be_hidden()
        expect(retry_all).to_be_focused()
        retry_all.click()
        page.get_by_role("button", name="Keep them").click()
        expect(confirm).to_be_hidden()
        expect(retry_all).to_be_visible()
        assert [w["status"] for w in site.get("/api/workflows", as_="alice")["workflows"]] == ["FAILED", "FAILED", "WAITING"]

        # The outage is over: retry them all, with the keyboard.
        outage["on"] = False
        retry_all.focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("button", name="Yes, retry them")).to_be_focused()
        page.keyboard.press("Enter")
        expect(message).to_have_text("Retried 2 failed runs: each runs again from the step it failed at.")
        expect(message).to_be_focused()
        for email in unlucky:
            card = run_card(page, email)
            expect(card).to_have_attribute("data-status", "WAITING", timeout=20_000)
            expect(step(card, EMAIL_STEP)).to_have_attribute("data-status", "COMPLETED")
            expect(card.locator(".timeline-list li.t-operator-retry")).to_contain_text(
                "retry requested by alice (retry of every failed run)"
            )
        expect(bulk).to_be_hidden()  # no failed run left
        expect(run_card(page, waiting).locator(".timeline-list li.t-operator-retry")).to_have_count(0)
        assert len(smtp.handler.wait_for(3)) == 3
        assert_not_reloaded(page, marker)


@ONE_STORE
def test_an_expired_runs_email_says_its_link_expired(start_server: Callable[..., Server], context: BrowserContext) -> None:
    server = start_server("--email-failure-rate", "0", "--verify-ttl", "1", "--reminder-after", "0")
    run_id = api_signup(server, "Exa Pired", "expired@example.com")
    server.wait_for(f"/api/workflows/{run_id}", lambda d: d["outcome"] == "expired")
    page = open_dashboard(context, server.url)
    expect(page.locator('#outbox li.mail[data-to="expired@example.com"] .mail-note')).to_have_text("link expired")


# -- 7. the nodes: which node did what, and which nodes are alive ---------------------------

NODES_EVERY_S = 3.0  # how often the page asks GET /api/nodes (NODES_EVERY_MS in dashboard.js)

# Counts the page's requests to /api/nodes as it makes them, synchronously, so a count
# read after the page's timers ran is exact.
COUNT_NODE_POLLS = """(() => {
  window.__uf_node_polls = 0;
  const fetch = window.fetch.bind(window);
  window.fetch = (input, init) => {
    if (String(input).startsWith('/api/nodes')) window.__uf_node_polls += 1;
    return fetch(input, init);
  };
})()"""


def node_item(page: Page, node_id: str) -> Any:
    return page.locator(f"#nodes li.node[data-node-id={json.dumps(node_id)}]")


def set_page_hidden(page: Page, hidden: bool) -> None:
    """As a browser does for a tab in the background (or back in front)."""
    page.evaluate(
        """hidden => {
          Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
          Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => hidden ? 'hidden' : 'visible'});
          document.dispatchEvent(new Event('visibilitychange'));
        }""",
        hidden,
    )


def node_polls(page: Page) -> int:
    return int(page.evaluate("() => window.__uf_node_polls"))


@ONE_STORE
def test_data_dir_shows_its_one_node_and_asks_nothing_while_hidden(start_server: Callable[..., Server], context: BrowserContext) -> None:
    server = start_server("--email-failure-rate", "0")
    run_id = api_signup(server, "Nod Solo", "solo@example.com")
    server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING")
    page = context.new_page()
    # The page's timers run on a clock the test moves: time passes without a sleep.
    page.clock.install()
    page.add_init_script(COUNT_NODE_POLLS)
    page.goto(server.url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#nodes-card")).to_have_attribute("data-loaded", "true")

    # One node, this one, alive, with what it executes and where it answers; no heartbeat on a data dir.
    panel = page.get_by_role("region", name=re.compile("^Nodes"))
    expect(panel.get_by_role("heading", level=2)).to_have_text("Nodes (1 alive)")
    expect(page.locator("#nodes li.node")).to_have_count(1)
    solo = node_item(page, server.node_id)
    expect(solo).to_have_attribute("data-alive", "true")
    expect(solo.locator("[data-role=node-state]")).to_have_text("alive")
    expect(solo.locator("[data-role=self]")).to_have_text("this node")
    expect(solo.locator("dt")).to_have_text(["Runs executing", "Address"])
    expect(solo.locator("[data-role=executing]")).to_have_text(re.compile(r"^\d+$"))
    expect(solo.locator(".node-address")).to_have_text(server.get("/api/nodes")["nodes"][0]["address"])
    expect(page.locator("#nodes-scope")).to_have_text("One server, on its data dir.")

    # The run's card says the node, of the run and beside its steps' attempts and timeline entries.
    card = run_card(page, "solo@example.com")
    page.clock.run_for(100)  # the card is drawn at the next animation frame
    expect(card.locator("[data-role=run-node]")).to_have_text(f"node {server.node_id}")
    for step_id in ("create-user", EMAIL_STEP):
        expect(step(card, step_id).locator("[data-role=attempt-nodes] .node-tag")).to_have_attribute("data-node", server.node_id)
    entries = card.locator(".timeline-list li")
    expect(entries.first).to_be_attached()
    assert entries.count() == card.locator(f'.timeline-list li .t-node[data-node="{server.node_id}"]').count()

    # Asked again every few seconds while shown...
    page.clock.pause_at(int(page.evaluate("() => Date.now()")) + 1000)
    page.wait_for_function("() => window.__uf_node_polls >= 1")
    asked = node_polls(page)
    page.clock.run_for(int(NODES_EVERY_S * 1000) + 100)
    page.wait_for_function("asked => window.__uf_node_polls > asked", arg=asked)
    # ...never while hidden, however long...
    set_page_hidden(page, True)
    asked = node_polls(page)
    page.clock.run_for(60_000)
    assert node_polls(page) == asked, "the page asked for the nodes while it was hidden"
    # ...and at once when shown again.
    set_page_hidden(page, False)
    page.clock.run_for(10)
    assert node_polls(page) == asked + 1


def test_nodes_on_one_database_the_panel_sees_a_node_die_and_a_card_shows_both_nodes(
    tmp_path: Any, database_url: str, context: BrowserContext
) -> None:
    with SmtpServer() as smtp, Nodes(str(tmp_path), database_url, smtp) as nodes:
        a, b = nodes.start("a"), nodes.start("b")
        page = open_dashboard(context, a.url)
        expect(page.locator("#nodes-h")).to_have_text("Nodes (2 alive)")
        expect(page.locator("#nodes li.node")).to_have_count(2)
        for name, node, is_self in (("a", a, "true"), ("b", b, "false")):
            item = node_item(page, name)
            expect(item).to_have_attribute("data-alive", "true")
            expect(item).to_have_attribute("data-self", is_self)
            expect(item.locator("[data-role=node-state]")).to_have_text("alive")
            expect(item.locator("[data-role=heartbeat]")).to_have_text(re.compile(r"ago$"))
            expect(item.locator(".node-address")).to_have_text(node.url)
        expect(node_item(page, "a").locator("[data-role=self]")).to_have_text("this node")
        expect(node_item(page, "b").locator("[data-role=self]")).to_have_count(0)

        # Signed up on A (the page's node), clicked on B: the card shows attempts by both.
        email = "two.nodes@example.com"
        sign_up(page, "Twyla Nodes", email)
        message = smtp.handler.wait_for(1, timeout=30)[0]
        assert b.request("GET", "/api/verify?token=" + token_in(message))[0] == 200
        card = run_card(page, email)
        expect(card).to_have_attribute("data-status", "COMPLETED", timeout=30_000)
        run = detail(a, run_of(message))
        by_node = {node for _, _, node, _, _ in attempts_by_node(run)}
        assert by_node == {"a", "b"}, attempts_by_node(run)
        for step_data in run["steps"]:
            tags = step(card, step_data["id"]).locator("[data-role=attempt-nodes] .node-tag")
            if step_data["attempts"]:  # each step ran once here, on one node
                expect(tags).to_have_attribute("data-node", step_data["attempts"][-1]["node"])
            else:
                expect(tags).to_have_count(0)
        shown = set(card.locator("[data-role=attempt-nodes] .node-tag").evaluate_all("tags => tags.map(t => t.dataset.node)"))
        assert shown == {"a", "b"}
        expect(card.locator("[data-role=run-node]")).to_have_text(f"node {run['node']}")
        recorded_by = {e["node"] for e in run["timeline"] if e["node"]}
        expect(card.locator(".timeline-list .t-node[data-node]")).to_have_count(sum(1 for e in run["timeline"] if e["node"]))
        assert set(card.locator(".timeline-list .t-node[data-node]").evaluate_all("tags => tags.map(t => t.dataset.node)")) == recorded_by

        # A run signed up on B whose email B is sending when it dies: A takes it over.
        taken_over = "taken.over@example.com"
        held: list[str] = []

        def hold_first_send(envelope: Any) -> bool:  # B's send stays in flight; A's goes through
            if envelope.rcpt_tos == [taken_over] and not held:
                held.append(taken_over)
                return True
            return False

        smtp.handler.hold = hold_first_send
        assert b.request("POST", "/api/signup", {"name": "Tak Over", "email": taken_over})[0] == 202
        smtp.handler.wait_held(1, timeout=30)

        # B dies: the panel says so, in words, once B's heartbeat is older than the node
        # timeout, at the page's next look; A stays alive.
        killed_at = time.monotonic()
        nodes.kill("b")
        down_within = NODE_TIMEOUT + NODES_EVERY_S + 3.0  # the timeout, one poll, and slack for a busy machine
        expect(node_item(page, "b")).to_have_attribute("data-alive", "false", timeout=down_within * 1000)
        assert time.monotonic() - killed_at < down_within
        expect(node_item(page, "b").locator("[data-role=node-state]")).to_have_text("down")
        expect(page.locator("#nodes-h")).to_have_text("Nodes (1 alive, 1 down)")
        expect(page.locator("#nodes-live")).to_have_text("Node b is down.")
        expect(node_item(page, "a").locator("[data-role=node-state]")).to_have_text("alive")

        # The step B was in the middle of shows each attempt's node: the first B's, the next A's.
        card = run_card(page, taken_over)
        expect(card).to_have_attribute("data-status", "WAITING", timeout=30_000)
        tags = step(card, EMAIL_STEP).locator("[data-role=attempt-nodes] .node-tag")
        expect(tags).to_have_count(2)
        assert [(tags.nth(i).get_attribute("data-attempts"), tags.nth(i).get_attribute("data-node")) for i in range(2)] == [("1", "b"), ("2", "a")]
        seen_text = "t => [...t.childNodes].filter(n => !(n.classList && n.classList.contains('visually-hidden'))).map(n => n.textContent).join('')"
        assert tags.evaluate_all(f"tags => tags.map({seen_text})") == ["#1 b", "#2 a"]
        expect(tags.locator(".visually-hidden")).to_have_text(["attempt 1 on node ", "attempt 2 on node "])  # what is read out
        smtp.handler.let_go()


# -- 8. a store larger than a page: the overview, the table of runs, search, paging ----------
#
# One server per store for these tests, seeded once with a known mix of 60 runs: the
# table's page is 50. They read it in order; only the last one adds runs.

SCALE_PAGE = 50
SCALE_VERIFIED = (5, 20, 40, 59)  # the last one's user is FLAGGED, the others ACTIVE
SCALE_CANCELLED = 30


@dataclass
class Seeded:
    server: Server
    runs: list[tuple[str, str, str]]  # (workflow id, name, email), oldest first

    @property
    def newest_first(self) -> list[str]:
        return [run_id for run_id, _, _ in reversed(self.runs)]


@pytest.fixture(scope="module", params=["files", "postgres"])
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """60 signups: 55 waiting for their click, 4 verified (3 ACTIVE, 1 FLAGGED), 1 cancelled."""
    env: dict[str, str] = {}
    database = None
    if request.param == "postgres":
        cluster = request.getfixturevalue("postgres_cluster")
        database = cluster.create_database("browser_seeded")
        env["USERFLOW_DATABASE_URL"] = cluster.url(database)
    server = Server(str(tmp_path_factory.mktemp("seeded") / "data"), "--email-failure-rate", "0", env=env).start()
    try:
        people = [(f"Scale {chr(65 + i // 26)}{chr(97 + i % 26)}", f"scale{i:02d}@example.com") for i in range(59)]
        people.append(("Support Team", "support@mailinator.com"))  # a disposable domain and a role address: FLAG
        runs = [(api_signup(server, name, email), name, email) for name, email in people]
        server.wait_for("/api/overview", lambda o: o["runs"]["WAITING"] == len(runs))
        for i in SCALE_VERIFIED:
            verify_by_api(server, runs[i][2])
        assert server.request("POST", f"/api/workflows/{runs[SCALE_CANCELLED][0]}/cancel")[0] == 200
        server.wait_for("/api/overview", lambda o: o["runs"]["COMPLETED"] == len(SCALE_VERIFIED) and o["runs"]["CANCELLED"] == 1)
        yield Seeded(server, runs)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.terminate()
        server.stop()
        if database is not None:
            request.getfixturevalue("postgres_cluster").drop_database(database)


def row_ids(page: Page) -> list[str]:
    return list(page.locator("#runs tr.run-row").evaluate_all("rows => rows.map(r => r.dataset.runId)"))


def filter_button(page: Page, label: str, n: int) -> Any:
    return page.locator("#filters").get_by_role("button", name=f"{label} {n}", exact=True)


def test_overview_counts_the_whole_store(seeded: Seeded, context: BrowserContext) -> None:
    overview = seeded.server.get("/api/overview")
    assert overview["funnel"] == {"signedUp": 60, "verified": 4, "active": 3, "flagged": 1, "expired": 0, "cancelled": 1}
    page = open_dashboard(context, seeded.server.url)
    funnel = page.locator("#funnel")
    for stage, n, share in [("signedUp", "60", ""), ("verified", "4", "6.7%"), ("active", "3", "5%"),
                            ("flagged", "1", "1.7%"), ("expired", "0", "0%"), ("cancelled", "1", "1.7%")]:  # fmt: skip
        item = funnel.locator(f'li[data-stage="{stage}"]')
        expect(item.locator("[data-role=n]")).to_have_text(n)
        expect(item.locator("[data-role=pct]")).to_have_text(f"{share} of signups" if share else "")
    expect(page.locator("#funnel-note")).to_have_text("55 still pending: not verified yet, or being checked.")

    # Every click came within a minute: the median and the whole histogram are in the first bucket.
    expect(page.locator("#ttv-median")).to_have_text("≤ 1 min")
    bars = page.locator("#ttv-chart li")
    expect(bars).to_have_count(7)
    assert bars.evaluate_all("cols => cols.map(c => [c.dataset.upTo, c.dataset.count])") == [
        ["60", "4"], ["300", "0"], ["900", "0"], ["3600", "0"], ["21600", "0"], ["86400", "0"], ["more", "0"]
    ]
    expect(page.locator("#ttv-chart li.is-median")).to_have_attribute("data-up-to", "60")

    for box, buckets in (("#activity-hour", 12), ("#activity-day", 24)):
        for series, total in (("signups", "60"), ("verified", "4"), ("failures", "0")):
            chart = page.locator(f'{box} [data-series="{series}"]')
            expect(chart.locator("[data-role=total]")).to_have_text(total)
            expect(chart.locator("svg rect")).to_have_count(buckets)
        expect(page.locator(f'{box} [data-series="signups"] svg')).to_have_attribute("aria-label", re.compile(r"^Signups over the last .*: 60;"))


def test_runs_table_shows_one_page_with_counts_over_the_store(seeded: Seeded, context: BrowserContext) -> None:
    page = open_dashboard(context, seeded.server.url)
    rows = page.locator("#runs tr.run-row")
    expect(rows).to_have_count(SCALE_PAGE)
    for label, n in (("All", 60), ("Running", 0), ("Waiting", 55), ("Completed", 4), ("Failed", 0), ("Cancelled", 1)):
        expect(filter_button(page, label, n)).to_be_visible()
    expect(page.locator("#runs-range")).to_have_text("1–50 of 60")
    newest = seeded.newest_first
    assert row_ids(page) == newest[:SCALE_PAGE]
    # Compact: a row is a line, not a card (50 cards used to make a page 19,000 px tall).
    assert page.locator("#runs-table").evaluate("t => t.getBoundingClientRect().height") < SCALE_PAGE * 45
    assert page.locator("#runs article.run").count() == 0  # no detail until asked for

    # Each row says where its run is, from its summary alone.
    runs = seeded.runs
    for i, status, user, steps in [
        (59, "COMPLETED", "FLAGGED", ["COMPLETED"] * 5),
        (58, "WAITING", "PENDING", ["COMPLETED", "COMPLETED", "WAITING", "PENDING", "PENDING"]),
        (SCALE_CANCELLED, "CANCELLED", "CANCELLED", ["COMPLETED", "COMPLETED", "SKIPPED", "SKIPPED", "SKIPPED"]),
    ]:
        row = run_row(page, runs[i][2])
        expect(row).to_have_attribute("data-status", status)
        expect(row.locator("[data-role=row-user-status]")).to_have_text(user)
        expect(row.locator("[data-role=progress]")).to_have_attribute("data-steps", " ".join(steps))
        expect(row.locator(".c-person .who")).to_have_text(runs[i][1])
    expect(run_row(page, runs[58][2]).locator(".prog-text")).to_have_text("Wait for verification")

    # One Tab stop for the whole table, from the Cancelled filter; the arrow keys move between rows.
    expect(page.locator('#runs tr.run-row[tabindex="0"]')).to_have_count(1)
    page.locator("#filters button").last.focus()
    page.keyboard.press("Tab")
    expect(rows.first).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(rows.nth(1)).to_be_focused()
    page.keyboard.press("End")
    expect(rows.last).to_be_focused()
    page.keyboard.press("Home")
    expect(rows.first).to_be_focused()

    # The next page: the older runs, none of the first page's again; and back.
    page.get_by_role("button", name="Older →").click()
    expect(rows).to_have_count(60 - SCALE_PAGE)
    assert row_ids(page) == newest[SCALE_PAGE:]
    expect(page.locator("#runs-range")).to_have_text("51–60 of 60")
    expect(page.get_by_role("button", name="Older →")).to_be_disabled()
    page.get_by_role("button", name="← Newer").click()
    expect(rows).to_have_count(SCALE_PAGE)
    assert row_ids(page) == newest[:SCALE_PAGE]
    expect(page.get_by_role("button", name="← Newer")).to_be_disabled()

    # A filter pages through its own runs: 55 waiting, 50 and then 5.
    filter_button(page, "Waiting", 55).click()
    expect(rows.first).to_have_attribute("data-run-id", newest[1])
    expect(rows).to_have_count(SCALE_PAGE)
    waiting = row_ids(page)
    page.get_by_role("button", name="Older →").click()
    expect(page.locator("#runs-range")).to_have_text("51–55 of 55")
    waiting += row_ids(page)
    expected = [run_id for run_id in newest if run_id not in {runs[i][0] for i in (*SCALE_VERIFIED, SCALE_CANCELLED)}]
    assert waiting == expected
    filter_button(page, "Completed", 4).click()
    expect(rows).to_have_count(4)
    expect(page.locator("#pager")).to_be_hidden()
    assert row_ids(page) == [runs[i][0] for i in reversed(SCALE_VERIFIED)]


def test_search_by_address_or_id_finds_the_run_and_its_row_opens_it(seeded: Seeded, context: BrowserContext) -> None:
    run_id, name, email = seeded.runs[SCALE_VERIFIED[0]]  # an old run, on the second page
    user_id = seeded.server.get(f"/api/workflows/{run_id}")["userId"]
    page = open_dashboard(context, seeded.server.url)
    rows = page.locator("#runs tr.run-row")
    expect(rows).to_have_count(SCALE_PAGE)
    search = page.get_by_role("searchbox", name=re.compile("^Find a run"))
    search.fill(email)
    search.press("Enter")
    expect(rows).to_have_count(1)
    row = run_row(page, email)
    expect(row).to_have_attribute("data-status", "COMPLETED")
    expect(row.locator(".c-person .who")).to_have_text(name)
    expect(page.locator("#pager")).to_be_hidden()
    expect(page.locator("#runs-live")).to_have_text(f"Found the run for {email}.")

    # Enter on the row opens its detail: steps, risk decision, timeline.
    row.focus()
    page.keyboard.press("Enter")
    expect(row).to_have_attribute("aria-expanded", "true")
    card = page.locator("#runs article.run")
    expect(card.locator(".run-title .email")).to_have_text(email)
    expect(card.locator("li.step")).to_have_count(5)
    expect(step(card, "finalize-user")).to_have_attribute("data-status", "COMPLETED")
    expect(step(card, "ai-risk-check").locator("[data-role=risk]")).to_contain_text("ALLOW")
    expect(card.locator("details.timeline summary")).to_contain_text("Timeline")
    # Escape in the detail closes it, back on its row.
    card.locator("details.timeline summary").focus()
    page.keyboard.press("Escape")
    expect(card).to_have_count(0)
    expect(row).to_be_focused()
    expect(row).to_have_attribute("aria-expanded", "false")

    # The same run by its workflow id and by its user id; nobody by an address no one signed up with.
    for query in (run_id, user_id):
        search.fill(query)
        search.press("Enter")
        expect(page.locator("#runs-live")).to_have_text(f"Found the run for {query}.")
        assert row_ids(page) == [run_id]
    search.fill("nobody@example.com")
    search.press("Enter")
    expect(rows).to_have_count(0)
    expect(page.locator("#runs-empty")).to_have_text("No run matches “nobody@example.com”.")

    # Cleared: the list again.
    search.fill("")
    expect(rows).to_have_count(SCALE_PAGE)
    assert row_ids(page) == seeded.newest_first[:SCALE_PAGE]


def test_live_runs_update_their_rows_and_a_new_one_goes_on_top(seeded: Seeded, context: BrowserContext) -> None:
    """(Last of these tests: it adds runs to the seeded store.)"""
    server, runs = seeded.server, seeded.runs
    page = open_dashboard(context, server.url)
    rows = page.locator("#runs tr.run-row")
    expect(rows).to_have_count(SCALE_PAGE)
    marker = mark(page)
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/api/workflows" in r.url else None)

    # A change to a run on the page changes its row, the same element, in place.
    changed = run_row(page, runs[58][2])
    changed.evaluate("row => { row.__uf_same = true; }")
    assert server.request("POST", f"/api/workflows/{runs[58][0]}/cancel")[0] == 200
    expect(changed).to_have_attribute("data-status", "CANCELLED")
    expect(changed.locator("[data-role=progress]")).to_have_attribute("data-steps", "COMPLETED COMPLETED SKIPPED SKIPPED SKIPPED")
    assert changed.evaluate("row => row.__uf_same === true")
    expect(filter_button(page, "Cancelled", 2)).to_be_visible()

    # A signup elsewhere goes on top, with its name; the page stays one page long. Frames
    # come late, as on a busy machine: the run's first events arrive before its row is drawn.
    page.evaluate("""() => {
      const raf = window.requestAnimationFrame.bind(window);
      window.requestAnimationFrame = (draw) => raf(() => setTimeout(() => raf(draw), 400));
    }""")
    email = "live.signup@example.com"
    new_id = api_signup(server, "Liv Live", email)
    expect(rows.first).to_have_attribute("data-run-id", new_id)
    expect(rows.first.locator(".c-person .who")).to_have_text("Liv Live")
    expect(rows.first).to_have_attribute("data-status", "WAITING")
    expect(rows).to_have_count(SCALE_PAGE)
    expect(filter_button(page, "All", 61)).to_be_visible()
    expect(page.locator('#funnel li[data-stage="signedUp"] [data-role=n]')).to_have_text("61")
    expect(page.locator("#runs-range")).to_have_text("1–50 of 61")
    # None of that fetched a list or a detail: the events carry the rows.
    assert fetched == [], fetched

    # The run that left the first page is on the next one: nothing lost, nothing twice.
    first_page = row_ids(page)
    page.get_by_role("button", name="Older →").click()
    expect(rows).to_have_count(61 - SCALE_PAGE)
    assert first_page + row_ids(page) == [new_id, *seeded.newest_first]

    # A filter that excludes a new run keeps it out.
    filter_button(page, "Completed", 4).click()
    expect(rows).to_have_count(4)
    api_signup(server, "Nel Notshown", "not.shown@example.com")
    expect(filter_button(page, "All", 62)).to_be_visible()  # the event has come
    expect(rows).to_have_count(4)
    assert run_row(page, "not.shown@example.com").count() == 0
    assert_not_reloaded(page, marker)
