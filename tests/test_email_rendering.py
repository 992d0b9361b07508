"""The built-in verification email's HTML part in a real Chromium, as a webmail client shows it.

The email comes from a real server process sending to a real SMTP server
(aiosmtpd); its HTML part is written to a file under tmp_path and opened in
Debian's Chromium. The page must show the product and the person (a hostile
name as text, never as markup), and its button must lead to the server's
verify page, where confirming works.
"""

from __future__ import annotations

import email
import os
from email import policy
from pathlib import Path

import pytest

from tests.browser_support import missing
from tests.email_screenshot import html_part, make_email_screenshot
from tests.server import Server
from tests.smtp_server import SmtpServer

_reason = missing()
if _reason:
    if os.environ.get("CI"):  # CI installs both: a skip there would hide a broken setup
        raise RuntimeError(f"browser tests need Chromium and Playwright: {_reason}")
    pytest.skip(f"browser tests need Chromium and Playwright: {_reason}", allow_module_level=True)

from playwright.sync_api import Browser, expect  # noqa: E402

HOSTILE = "<img src=x onerror=alert(1)>"


def test_the_verification_email_shows_product_and_name_and_its_button_verifies(browser: Browser, tmp_path: Path) -> None:
    with SmtpServer() as smtp:
        server = Server(str(tmp_path / "data"), "--smtp-url", smtp.url, "--product-name", "Acme Cloud").start()
        try:
            status, accepted = server.request("POST", "/api/signup", {"email": "ann@example.com", "name": HOSTILE})
            assert status == 202, accepted
            smtp.handler.wait_for(1)
            [received] = smtp.handler.envelopes
            message = email.message_from_bytes(received.original_content, policy=policy.default)
            mail = tmp_path / "verification.html"
            mail.write_text(html_part(message), encoding="utf-8")  # type: ignore[arg-type]

            context = browser.new_context(viewport={"width": 680, "height": 900})
            page = context.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(mail.as_uri())
            expect(page.locator(".product")).to_have_text("Acme Cloud")
            expect(page.locator("h1")).to_have_text("Confirm your email address")
            expect(page.get_by_text(f"Hi {HOSTILE},")).to_be_visible()  # the name as text
            assert page.locator("img").count() == 0 and not dialogs, "the name became markup"
            expect(page.get_by_text("The link works until")).to_contain_text(" UTC")
            button = page.locator("a.button")
            expect(button).to_have_text("Confirm my email address")
            href = button.get_attribute("href")
            assert href and href.startswith(f"{server.url}/verify?token=")
            assert page.locator("a.plain-link").get_attribute("href") == href
            expect(page.locator("a.plain-link")).to_have_text(href)

            page.evaluate("document.querySelectorAll('a').forEach(a => a.removeAttribute('target'))")  # one tab
            button.click()
            page.wait_for_url(href)
            expect(page.locator("h1")).to_have_text("Confirm your email address")
            page.get_by_role("button", name="Confirm my email").click()
            expect(page.locator("h1")).to_have_text("Email confirmed")
            server.wait_for(f"/api/workflows/{accepted['workflowId']}", lambda d: d["status"] == "COMPLETED")
            context.close()
        finally:
            server.stop()


def test_the_screenshot_script_writes_a_picture_of_the_email(browser: Browser, tmp_path: Path) -> None:
    picture = make_email_screenshot(tmp_path / "email.png", browser)
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 680 and height > 400
