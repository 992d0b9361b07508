"""Email over SMTP against a real SMTP server: delivery, Message-ID, retries, refusals."""

from __future__ import annotations

import asyncio

import pytest

from tests.http_helpers import MakeClient, signup_run, wait_for, wait_run
from tests.smtp_server import SmtpServer, free_port


@pytest.fixture
def backend() -> str:
    """The data dir only: this module's subject is not what is stored, one store is enough."""
    return "files"


@pytest.fixture
def start_app(make_client: MakeClient):
    async def start(smtp_url: str, failure_rate: float = 0.0):
        # Retries come quickly here: the tests wait for their outcome, not for the backoff.
        return await make_client(smtp_url=smtp_url, email_failure_rate=failure_rate, email_max_backoff=0.5)

    return start


def email_step(detail: dict) -> dict:
    return next(s for s in detail["steps"] if s["id"] == "send-verification-email")


async def test_verification_email_is_delivered_once_and_its_link_verifies(start_app):
    with SmtpServer() as smtp:
        client = await start_app(smtp.url)
        run_id = await signup_run(client)
        [message] = await asyncio.to_thread(smtp.handler.wait_for, 1)
        assert message["To"] == "ann@example.com"
        assert message["Message-ID"] == f"<{run_id}.verification.1@userflow>"
        parts = {part.get_content_type(): part.get_payload(decode=True).decode() for part in message.walk() if not part.is_multipart()}
        assert set(parts) == {"text/plain", "text/html"}
        link = next(word for word in parts["text/plain"].split() if word.startswith("http://public.example/verify?token="))
        await wait_run(client, run_id, "WAITING", timeout=20)
        token = link.split("token=")[1]
        assert (await client.get(f"/api/verify?token={token}")).status == 200
        detail = await wait_run(client, run_id, "COMPLETED", timeout=20)
        assert detail["user"]["status"] == "ACTIVE"
        assert email_step(detail)["output"]["receipt"].startswith("250")
        assert len(smtp.handler.messages) == 1
        assert (await client.get("/api/outbox")).status == 404


async def test_injected_failures_still_deliver_exactly_one_email_per_signup(start_app):
    with SmtpServer() as smtp:
        client = await start_app(smtp.url, failure_rate=0.5)
        # Sixteen first attempts that each fail half the time: all sixteen succeeding
        # (and nothing to retry) has odds of one in 65,536.
        runs = [await signup_run(client, f"user{i}@example.com") for i in range(16)]
        details = [await wait_run(client, r, "WAITING", "FAILED", timeout=20) for r in runs]
        delivered = [d for d in details if d["status"] == "WAITING"]
        ids = [m["Message-ID"] for m in smtp.handler.messages]
        assert len(ids) == len(set(ids)) == len(delivered)
        assert any(len(email_step(d)["attempts"]) > 1 for d in details), "no injected failure was retried"


async def test_refused_connection_is_retried_until_the_server_comes_up(start_app):
    port = free_port()
    client = await start_app(f"smtp://127.0.0.1:{port}")
    run_id = await signup_run(client)
    retried = lambda d: len([a for a in email_step(d)["attempts"] if a["error"]]) >= 2
    detail = await wait_for(client, f"/api/workflows/{run_id}", retried, timeout=20)
    assert "unreachable" in email_step(detail)["attempts"][0]["error"]
    with SmtpServer(port) as smtp:
        await wait_run(client, run_id, "WAITING", timeout=20)
        assert len(smtp.handler.messages) == 1


async def test_temporary_451_then_success(start_app):
    with SmtpServer() as smtp:
        refusals = iter(["451 4.3.0 try again later"])
        smtp.handler.reply = lambda envelope: next(refusals, None)
        client = await start_app(smtp.url)
        run_id = await signup_run(client)
        detail = await wait_run(client, run_id, "WAITING", timeout=20)
        attempts = email_step(detail)["attempts"]
        assert len(attempts) == 2 and "451" in attempts[0]["error"]
        assert len(smtp.handler.messages) == 1


async def test_permanent_550_fails_the_run_at_once_with_the_reason(start_app):
    with SmtpServer() as smtp:
        smtp.handler.reply = lambda envelope: "550 5.1.1 no such user here"
        client = await start_app(smtp.url)
        run_id = await signup_run(client)
        detail = await wait_run(client, run_id, "FAILED", timeout=20)
        attempts = email_step(detail)["attempts"]
        assert len(attempts) == 1
        assert "550 5.1.1 no such user here" in attempts[0]["error"]
        assert detail["error"]["step"] == "send-verification-email"
        assert any("not retryable" in e["message"] for e in detail["timeline"])


# aiosmtpd warns that AUTH without TLS is unsafe: true, and this is a loopback test.
AUTH_WITHOUT_TLS = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@AUTH_WITHOUT_TLS
async def test_smtp_authentication(start_app):
    with SmtpServer(auth=("mailer", "s3cret")) as smtp:
        client = await start_app(f"smtp://mailer:s3cret@127.0.0.1:{smtp.port}")
        await signup_run(client)
        await asyncio.to_thread(smtp.handler.wait_for, 1)


@AUTH_WITHOUT_TLS
async def test_wrong_smtp_password_is_a_permanent_failure(start_app):
    with SmtpServer(auth=("mailer", "s3cret")) as smtp:
        client = await start_app(f"smtp://mailer:wrong@127.0.0.1:{smtp.port}")
        run_id = await signup_run(client)
        detail = await wait_run(client, run_id, "FAILED", timeout=20)
        assert "535" in email_step(detail)["attempts"][-1]["error"]
        assert not smtp.handler.messages


async def test_signups_share_one_kept_connection_closed_at_shutdown(make_client):
    with SmtpServer() as smtp:
        client = await make_client(smtp_url=smtp.url)
        for n in range(4):
            await signup_run(client, f"user{n}@example.com")
            await asyncio.to_thread(smtp.handler.wait_for, n + 1)
        assert smtp.connections == 1
        assert smtp.open_connections == 1
        await client.close()  # the server stops: its kept connection is closed with QUIT
        await asyncio.to_thread(smtp.wait_open, 0)
        assert smtp.handler.quits == 1


def test_an_unusable_sender_address_refuses_to_start(tmp_path):
    from tests.test_exposure import userflow

    done = userflow("serve", "--port", "0", "--data-dir", str(tmp_path), "--smtp-url", "smtp://127.0.0.1:25", "--mail-from", "nobody")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].startswith("userflow: --mail-from 'nobody'"), done.stderr
