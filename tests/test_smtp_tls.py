"""Email over TLS, end to end: a real ``userflow serve`` and a real aiosmtpd server.

The SMTP server's certificate is issued by a throwaway CA (trustme). userflow
has no setting of its own for a CA file: it checks the server's certificate
and name with Python's default context, which reads ``SSL_CERT_FILE``, so the
server process is given the throwaway CA that way, as an operator with a
private CA would give theirs. One test leaves it out, to show the
certificate really is checked.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trustme

from tests.server import Server
from tests.smtp_server import SmtpServer

SENDER = "Example Sign-ups <no-reply@example.com>"
DELIVERY_TIMEOUT = 8.0  # seconds: well above a delivery on loopback, well below the SMTP client's 15 s timeout

StartServe = Callable[..., Server]
StartSmtp = Callable[..., SmtpServer]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certificate(ca: trustme.CA) -> ssl.SSLContext:
    """The SMTP server's side: a certificate for 127.0.0.1, where userflow connects."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def start_smtp() -> Iterator[StartSmtp]:
    """Starts SMTP servers, stopped at the end, after every userflow server (``serve`` needs this fixture)."""
    with ExitStack() as running:
        yield lambda **options: running.enter_context(SmtpServer(**options))


@pytest.fixture
def serve(tmp_path: Path, ca: trustme.CA, start_smtp: StartSmtp) -> Iterator[StartServe]:
    """Starts ``userflow serve`` sending through an SMTP URL; each is stopped at the end.

    Stopped before the SMTP servers, so they hang up on their kept connections
    (QUIT) first, as at any shutdown, and the SMTP server has none left open.
    """
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    started: list[Server] = []

    def start(smtp_url: str, *args: str, trust_ca: bool = True) -> Server:
        server = Server(
            str(tmp_path / f"data{len(started)}"),
            "--smtp-url", smtp_url, "--email-failure-rate", "0", "--email-max-backoff", "0.5", *args,
            env={"SSL_CERT_FILE": str(ca_file)} if trust_ca else {},
        )  # fmt: skip
        if not trust_ca:
            server.env.pop("SSL_CERT_FILE", None)  # the machine's own bundle does not hold the throwaway CA either
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.terminate()


def sign_up(server: Server, email: str = "ann@example.com") -> str:
    status, body = server.request("POST", "/api/signup", {"email": email, "name": "Ann Lee"})
    assert status == 202, body
    return body["workflowId"]


def email_step(detail: dict) -> dict:
    return next(s for s in detail["steps"] if s["id"] == "send-verification-email")


def test_smtps_delivers_the_verification_email_over_implicit_tls(
    serve: StartServe, start_smtp: StartSmtp, certificate: ssl.SSLContext
):
    smtp = start_smtp(implicit_tls=certificate)
    server = serve(smtp.url)
    run_id = sign_up(server)
    [message] = smtp.handler.wait_for(1, timeout=DELIVERY_TIMEOUT)
    assert message["Message-ID"] == f"<{run_id}.verification.1@userflow>"
    assert smtp.handler.tls_versions[0] in ("TLSv1.2", "TLSv1.3")
    detail = server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "WAITING", DELIVERY_TIMEOUT)
    assert email_step(detail)["output"]["receipt"].startswith("250")


def test_starttls_upgrades_before_the_verification_email_is_sent(
    serve: StartServe, start_smtp: StartSmtp, certificate: ssl.SSLContext
):
    # The server refuses MAIL until STARTTLS (530), so a plaintext send could not be delivered.
    smtp = start_smtp(starttls=certificate)
    assert smtp.url.endswith("?starttls=1")
    server = serve(smtp.url)
    run_id = sign_up(server)
    [message] = smtp.handler.wait_for(1, timeout=DELIVERY_TIMEOUT)
    assert message["Message-ID"] == f"<{run_id}.verification.1@userflow>"
    assert smtp.handler.tls_versions[0] in ("TLSv1.2", "TLSv1.3")


def test_starttls_asked_of_a_server_without_it_fails_the_send_instead_of_sending_in_plaintext(
    serve: StartServe, start_smtp: StartSmtp
):
    smtp = start_smtp()  # plaintext only: its EHLO does not offer STARTTLS
    server = serve(f"{smtp.url}?starttls=1")
    run_id = sign_up(server)
    settled = lambda d: d["status"] in ("FAILED", "WAITING")  # WAITING: the email went out
    detail = server.wait_for(f"/api/workflows/{run_id}", settled, DELIVERY_TIMEOUT)
    assert detail["status"] == "FAILED", "sent without the TLS the URL asks for"
    # Permanent, at once: no retry can make the server offer STARTTLS.
    assert len(email_step(detail)["attempts"]) == 1
    assert detail["error"]["step"] == "send-verification-email"
    assert smtp.handler.messages == []
    assert smtp.connections == 1  # it reached the server: what failed is the missing STARTTLS


def test_a_server_without_starttls_is_named_as_the_reason(serve: StartServe, start_smtp: StartSmtp):
    smtp = start_smtp()
    server = serve(f"{smtp.url}?starttls=1")
    run_id = sign_up(server)
    detail = server.wait_for(f"/api/workflows/{run_id}", lambda d: d["status"] == "FAILED", DELIVERY_TIMEOUT)
    assert "STARTTLS" in email_step(detail)["attempts"][0]["error"]


def test_an_untrusted_certificate_is_refused(
    serve: StartServe, start_smtp: StartSmtp, certificate: ssl.SSLContext
):
    smtp = start_smtp(implicit_tls=certificate)
    server = serve(smtp.url, trust_ca=False)
    run_id = sign_up(server)
    refused = lambda d: any(a["error"] for a in email_step(d)["attempts"])
    detail = server.wait_for(f"/api/workflows/{run_id}", refused, DELIVERY_TIMEOUT)
    assert "CERTIFICATE_VERIFY_FAILED" in email_step(detail)["attempts"][0]["error"]
    assert smtp.handler.messages == []


def test_the_from_header_is_exactly_the_mail_from_setting(
    serve: StartServe, start_smtp: StartSmtp, certificate: ssl.SSLContext
):
    smtp = start_smtp(implicit_tls=certificate)
    server = serve(smtp.url, "--mail-from", SENDER)
    sign_up(server)
    [message] = smtp.handler.wait_for(1, timeout=DELIVERY_TIMEOUT)
    assert message["From"] == SENDER
    assert smtp.handler.envelopes[0].mail_from == "no-reply@example.com"
