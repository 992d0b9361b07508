"""The built-in verification email as a mail client shows it, and its picture in static/.

    python -m tests.email_screenshot                 # writes static/email-screenshot.png
    python -m tests.email_screenshot /tmp/mail.png   # or elsewhere

The HTML is taken from the message exactly as the SMTP transport writes it
(parsed back by the standard library), written to a file and opened in
Debian's Chromium, as a webmail client opens an email's HTML part.
"""

from __future__ import annotations

import email
import sys
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from tests.browser_support import CHROMIUM, LAUNCH_ARGS, ROOT, missing
from userflow.actors.signup.email import verification_email
from userflow.actors.signup.smtp import SmtpTransport
from userflow.actors.signup.templates import EmailTemplates

SAMPLE_LINK = "https://signup.example.com/verify?token=4d2JZ8qfY1c0x3QmP7rTn5sVwLk9aHbE6uGiRoXyD2s"
SAMPLE_EXPIRY = "2026-12-03T14:05:00.000Z"


def sent_message(templates: EmailTemplates, *, name: str, to: str, link: str = SAMPLE_LINK) -> EmailMessage:
    """The verification email as sent over SMTP, read back."""
    made = verification_email(
        templates, run_id="wf_sample", kind="verification", send_no=1, to=to, name=name, link=link, expires_at=SAMPLE_EXPIRY
    )
    data = SmtpTransport("smtp://127.0.0.1:25", "userflow <no-reply@userflow.localhost>").message(made)
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def html_part(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None, "no HTML part"
    return str(part.get_content())


def make_email_screenshot(path: str | Path = ROOT / "static" / "email-screenshot.png", browser: Any = None) -> Path:
    """A full-page PNG of the built-in verification email, 680 px wide; in ``browser`` if given."""
    target = Path(path)
    html = html_part(sent_message(EmailTemplates(), name="Ann Lee", to="ann.lee@example.com"))
    if browser is None:
        from playwright.sync_api import sync_playwright

        reason = missing()
        if reason:
            raise RuntimeError(reason)
        with sync_playwright() as p:
            own = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            try:
                return make_email_screenshot(target, own)
            finally:
                own.close()
    page = browser.new_page(viewport={"width": 680, "height": 600}, device_scale_factor=1, color_scheme="light")
    try:
        page.set_content(html, wait_until="load")
        page.screenshot(path=str(target), type="png", full_page=True)
    finally:
        page.close()
    return target


if __name__ == "__main__":
    print(make_email_screenshot(sys.argv[1] if len(sys.argv) > 1 else ROOT / "static" / "email-screenshot.png"))
