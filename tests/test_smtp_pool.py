"""SMTP connections kept between sends, against a real SMTP server (aiosmtpd) that counts them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.smtp_server import SmtpServer
from userflow.actors.retry import PermanentError
from userflow.actors.signup.email import Email, TransientEmailError
from userflow.actors.signup.smtp import SmtpTransport
from userflow.actors.signup.smtp_pool import QUIT_TIMEOUT


def email(n: int, to: str = "ann@example.com") -> Email:
    return Email(f"<wf_{n}.verification.1@userflow>", "verification", to, "Confirm", f"text {n}\n", f"<p>html {n}</p>", "http://x/verify")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def transports() -> Iterator[list[SmtpTransport]]:
    made: list[SmtpTransport] = []
    yield made
    for transport in made:
        transport.close()


def transport_for(smtp: SmtpServer, made: list[SmtpTransport], **options: object) -> SmtpTransport:
    transport = SmtpTransport(smtp.url, "userflow <no-reply@userflow.localhost>", timeout=5, **options)  # type: ignore[arg-type]
    made.append(transport)
    return transport


def test_one_connection_carries_many_emails_each_checked_with_rset(smtp: SmtpServer, transports) -> None:
    transport = transport_for(smtp, transports)
    receipts = [transport.send(email(n)) for n in range(5)]
    assert all(r.startswith("250") for r in receipts)
    assert [m["Message-ID"] for m in smtp.handler.messages] == [f"<wf_{n}.verification.1@userflow>" for n in range(5)]
    assert smtp.connections == 1
    assert smtp.handler.rsets == 4  # before each reuse
    assert smtp.open_connections == 1


def test_a_connection_the_server_dropped_while_idle_is_replaced(smtp: SmtpServer, transports) -> None:
    transport = transport_for(smtp, transports)
    transport.send(email(1))
    smtp.drop_open()
    transport.send(email(2))
    assert len(smtp.handler.messages) == 2
    assert smtp.connections == 2


def test_a_kept_connection_cut_off_before_the_message_is_reconnected_once(smtp: SmtpServer, transports) -> None:
    transport = transport_for(smtp, transports)
    transport.send(email(1))
    smtp.handler.drop_at_mail = 1  # passes RSET, then ends at MAIL
    transport.send(email(2))
    assert [m["Message-ID"] for m in smtp.handler.messages] == ["<wf_1.verification.1@userflow>", "<wf_2.verification.1@userflow>"]
    assert smtp.connections == 2


def test_only_once_a_second_cut_is_a_transient_failure(smtp: SmtpServer, transports) -> None:
    transport = transport_for(smtp, transports)
    transport.send(email(1))
    smtp.handler.drop_at_mail = 2
    with pytest.raises(TransientEmailError, match="unreachable"):
        transport.send(email(2))
    assert len(smtp.handler.messages) == 1
    assert smtp.connections == 2
    transport.send(email(3))  # the pool recovers: a new connection
    assert len(smtp.handler.messages) == 2


def test_idle_connections_are_closed_with_quit(smtp: SmtpServer, transports) -> None:
    transport = transport_for(smtp, transports, idle_after=0.2)
    transport.send(email(1))
    smtp.wait_open(0)  # closed by the client, long before the server's own 300 s
    assert smtp.handler.quits == 1
    assert transport.pool.idle() == 0
    transport.send(email(2))
    assert smtp.connections == 2


def test_close_quits_every_kept_connection(smtp: SmtpServer) -> None:
    transport = SmtpTransport(smtp.url, "no-reply@example.com", idle_after=600)
    with ThreadPoolExecutor(3) as threads:
        list(threads.map(transport.send, [email(n) for n in range(9)]))
    assert smtp.open_connections >= 1
    transport.close()
    smtp.wait_open(0)
    assert smtp.handler.quits == smtp.connections


def test_threads_share_at_most_the_pool_size_of_connections(smtp: SmtpServer, transports) -> None:
    transport = transport_for(smtp, transports, pool_size=3)
    with ThreadPoolExecutor(8) as threads:
        receipts = list(threads.map(transport.send, [email(n) for n in range(40)]))
    assert len(receipts) == 40
    assert len({m["Message-ID"] for m in smtp.handler.messages}) == 40
    assert 1 <= smtp.connections <= 3


def test_a_refusal_keeps_the_connection_for_the_next_email(smtp: SmtpServer, transports) -> None:
    transport = transport_for(smtp, transports)
    refusals = iter(["550 5.1.1 no such user here", "451 4.3.0 try again later"])
    smtp.handler.reply = lambda envelope: next(refusals, None)
    with pytest.raises(PermanentError, match="550 5.1.1"):
        transport.send(email(1))
    with pytest.raises(TransientEmailError, match="451 4.3.0"):
        transport.send(email(2))
    transport.send(email(3))
    assert [m["Message-ID"] for m in smtp.handler.messages] == ["<wf_3.verification.1@userflow>"]
    assert smtp.connections == 1


def test_a_server_that_went_away_is_a_transient_failure(transports) -> None:
    with SmtpServer() as smtp:
        transport = transport_for(smtp, transports)
        transport.send(email(1))
    with pytest.raises(TransientEmailError, match="unreachable"):
        transport.send(email(2))


def test_an_internationalised_domain_is_sent_in_ascii(smtp: SmtpServer, transports) -> None:
    transport_for(smtp, transports).send(email(1, to="ann@пример.рф"))
    [envelope] = smtp.handler.envelopes
    assert envelope.rcpt_tos == ["ann@xn--e1afmkfd.xn--p1ai"]
    assert "SMTPUTF8" not in envelope.mail_options
    assert smtp.handler.messages[0]["To"] == "ann@xn--e1afmkfd.xn--p1ai"


def test_a_unicode_local_part_goes_by_smtputf8_when_the_server_offers_it(transports) -> None:
    with SmtpServer(smtputf8=True) as smtp:
        transport = transport_for(smtp, transports)
        transport.send(email(1, to="анна@example.com"))
        transport.send(email(2))  # the next transaction on the same connection is plain again
        first, second = smtp.handler.envelopes
        assert first.rcpt_tos == ["анна@example.com"] and "SMTPUTF8" in first.mail_options
        assert "SMTPUTF8" not in second.mail_options
        assert "To: анна@example.com\r\n".encode() in first.original_content  # RFC 6532: UTF-8 in the header
        assert smtp.connections == 1


def test_a_unicode_local_part_without_smtputf8_fails_at_once_and_says_why(smtp: SmtpServer, transports) -> None:
    transport = transport_for(smtp, transports)
    with pytest.raises(PermanentError, match="SMTPUTF8"):
        transport.send(email(1, to="анна@example.com"))
    transport.send(email(2))
    assert len(smtp.handler.messages) == 1 and smtp.connections == 1


def test_a_server_that_never_answers_quit_does_not_hold_up_shutdown(smtp: SmtpServer) -> None:
    transport = SmtpTransport(smtp.url, "no-reply@example.com", timeout=60, idle_after=600)
    transport.send(email(1))
    smtp.handler.hang_quit = True
    started = time.monotonic()
    transport.close()
    assert smtp.handler.quits == 1
    assert time.monotonic() - started < QUIT_TIMEOUT + 5  # not the 60 s the connection may wait otherwise
