"""The bytes of a sent email, read back by the standard library's parser."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from userflow.actors.signup import mime
from userflow.actors.signup.email import verification_email
from userflow.actors.signup.smtp import SmtpTransport
from userflow.actors.signup.templates import EmailTemplates

LINK = "https://signup.example.com/verify?token=" + "Ab_-" * 10 + "xyz"
HOSTILE = "<img src=x onerror=alert(1)>"


def transport(mail_from: str = "Example <no-reply@example.com>") -> SmtpTransport:
    return SmtpTransport("smtp://127.0.0.1:25", mail_from)  # connects only when sending


def sent(name: str, *, to: str = "ann@example.com", templates: EmailTemplates | None = None, kind: str = "verification", mail_from: str = "Example <no-reply@example.com>") -> tuple[bytes, EmailMessage, object]:
    """The bytes of one email, its parse (strict policy), and the email it was made from."""
    made = verification_email(
        templates or EmailTemplates(),
        run_id="wf_test",
        kind=kind,
        send_no=1,
        to=to,
        name=name,
        link=LINK,
        expires_at="2030-01-01T12:00:00.000Z",
    )
    data = transport(mail_from).message(made)
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return data, parsed, made


def parts(message: EmailMessage) -> dict[str, str]:
    """Each part's text as decoded, line ends as the templates wrote them (the wire has CRLF)."""
    return {part.get_content_type(): part.get_content().replace("\r\n", "\n") for part in message.iter_parts()}


def assert_wire_format(data: bytes) -> None:
    """CRLF line ends only, every line within SMTP's 998 octets (and ours within 78)."""
    assert data.endswith(b"\r\n")
    lines = data[:-2].split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines), "a bare CR or LF"
    assert max(len(line) for line in lines) <= 78


def test_headers_and_both_parts_read_back() -> None:
    data, message, made = sent("Ann Lee")
    assert_wire_format(data)
    assert message["From"] == "Example <no-reply@example.com>"
    assert message["To"] == "ann@example.com"
    assert message["Subject"] == made.subject == "Confirm your email address for userflow"
    assert message["Message-ID"] == "<wf_test.verification.1@userflow>"
    assert message["MIME-Version"] == "1.0"
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]  # preferred last
    assert all(p.get_content_charset() == "utf-8" for p in message.iter_parts())
    text = parts(message)
    assert text["text/plain"] == made.text
    assert text["text/html"] == made.html
    assert LINK in text["text/plain"]
    assert not message.defects and not any(p.defects for p in message.iter_parts())


def test_non_ascii_name_and_subject(tmp_path: Path) -> None:
    (tmp_path / "verification.subject.txt").write_text("{{ name }}, bienvenue chez {{ product }} !\n")
    templates = EmailTemplates("Café Ünïcode 東京データ", tmp_path)
    data, message, made = sent("Zoë Łukasz 山田太郎", templates=templates)
    assert_wire_format(data)
    assert data.isascii(), "without SMTPUTF8 every header is 7-bit"
    assert message["Subject"] == "Zoë Łukasz 山田太郎, bienvenue chez Café Ünïcode 東京データ !"
    text = parts(message)
    assert "Hi Zoë Łukasz 山田太郎," in text["text/plain"]
    assert "Café Ünïcode 東京データ" in text["text/html"]


def test_a_hostile_name_is_text_in_html_and_cannot_add_headers(tmp_path: Path) -> None:
    (tmp_path / "verification.subject.txt").write_text("Hello {{ name }}\n")
    data, message, _ = sent(f"{HOSTILE} =?utf-8?q?Bcc?= \r\nBcc: eve@example.com", templates=EmailTemplates(directory=tmp_path))
    assert_wire_format(data)
    assert message["Bcc"] is None
    assert message["Subject"] == f"Hello {HOSTILE} =?utf-8?q?Bcc?= Bcc: eve@example.com"  # one line, the text as typed
    html = parts(message)["text/html"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert HOSTILE in parts(message)["text/plain"]  # plain text is not HTML: shown as typed


def test_a_long_subject_is_folded_and_reads_back_whole(tmp_path: Path) -> None:
    words = " ".join(f"word{i}" for i in range(120)) + " " + "x" * 300
    (tmp_path / "verification.subject.txt").write_text(words + "\n")
    data, message, _ = sent("Ann", templates=EmailTemplates(directory=tmp_path))
    assert_wire_format(data)
    assert message["Subject"] == words


def test_mostly_non_latin_text_goes_as_base64_and_latin_as_quoted_printable(tmp_path: Path) -> None:
    (tmp_path / "verification.txt").write_text("Здравствуйте, {{ name }}! Подтвердите адрес: {{ link }}\n" * 3)
    data, message, made = sent("Анна Ли", templates=EmailTemplates(directory=tmp_path))
    assert_wire_format(data)
    text, html = message.iter_parts()
    assert text["Content-Transfer-Encoding"] == "base64"
    assert html["Content-Transfer-Encoding"] == "quoted-printable"
    assert parts(message)["text/plain"] == made.text


def test_the_boundary_never_occurs_inside_a_part() -> None:
    data, message, _ = sent("=_userflow_ Ann")
    boundary = message.get_boundary()
    assert boundary and boundary.startswith("=_")
    assert data.count(boundary.encode()) == 4  # the header, two delimiters and the closing one
    assert data.count(b'boundary="' + boundary.encode()) == 1


def test_an_internationalised_domain_goes_out_in_ascii() -> None:
    data, message, _ = sent("Ann", to="ann@пример.рф")
    assert data.isascii()
    assert message["To"] == "ann@xn--e1afmkfd.xn--p1ai"


def test_a_display_name_with_specials_and_accents_in_the_sender() -> None:
    data, message, _ = sent("Ann", mail_from='"Café, Inc." <no-reply@example.com>')
    assert data.isascii()
    [address] = message["From"].addresses
    assert (address.display_name, address.addr_spec) == ("Café, Inc.", "no-reply@example.com")


@pytest.mark.parametrize("mail_from", ["not an address", "", "a@b.example, c@d.example"])
def test_an_unusable_sender_is_refused_when_the_transport_is_made(mail_from: str) -> None:
    from userflow.actors.signup.smtp import SmtpSettingsError

    with pytest.raises(SmtpSettingsError, match="mail-from"):
        transport(mail_from)


def test_a_subject_header_is_one_line_of_text() -> None:
    assert mime.unstructured("Subject", "two\r\nlines\tand  blanks") == b"Subject: two lines and blanks\r\n"
    assert mime.unstructured("Subject", "=?utf-8?q?x?=").startswith(b"Subject: =?utf-8?b?")  # not read as a word
