"""An email's bytes, written directly: one multipart/alternative, text and HTML in UTF-8.

The standard library's ``email`` package parses every header it is given
through its header registry and folds it again in its generator; for a
message of one fixed shape that was most of the cost of sending it. Here
the shape is written out once: the From line is encoded when the transport
is made, a subject line once per distinct subject (it depends only on the
template and the product unless a template puts the user in it), and each
part is encoded with ``binascii`` (quoted-printable, or base64 when that is
shorter). Every line ends in CRLF and stays far below SMTP's 998 octets:
header text is folded or split into RFC 2047 encoded words, and both body
encodings wrap at 76.

The boundary starts with ``=_``: quoted-printable writes every ``=`` as
``=3D`` and base64 has no ``_``, so the boundary cannot occur in a part.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate

CRLF = b"\r\n"
MAX_LINE = 78  # RFC 5322's recommended limit; 998 is the hard one
_ASCII = bytes(range(128))
_ENCODED_WORD_BYTES = 39  # -> 52 base64 characters: "Subject: =?utf-8?b?" + 52 + "?=" is 73 <= 78


def _lines(text: str) -> bytes:
    """``text`` in UTF-8 with every line ending (LF, CR or CRLF) made CRLF, ending in one."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    if not normalised.endswith("\n"):
        normalised += "\n"
    return normalised.replace("\n", "\r\n").encode("utf-8")


def encoded_words(text: str) -> list[bytes]:
    """``text`` as RFC 2047 'B' encoded words, each within 75 characters, never splitting a character."""
    words: list[bytes] = []
    chunk = bytearray()
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > _ENCODED_WORD_BYTES:
            words.append(b"=?utf-8?b?" + base64.b64encode(chunk) + b"?=")
            chunk.clear()
        chunk += data
    if chunk or not words:
        words.append(b"=?utf-8?b?" + base64.b64encode(chunk) + b"?=")
    return words


def _folded(name: bytes, words: list[bytes]) -> bytes:
    """``Name: word word ...``, folded (CRLF and a space) before a word that would pass ``MAX_LINE``."""
    out = bytearray(name + b":")
    width = len(out)
    for word in words:
        if width + 1 + len(word) > MAX_LINE and width > len(name) + 1:
            out += CRLF
            width = 0
        out += b" " + word
        width += 1 + len(word)
    return bytes(out + CRLF)


@functools.lru_cache(maxsize=256)
def unstructured(name: str, text: str) -> bytes:
    """A header of free text (a subject) on one logical line, folded, CRLF-terminated.

    Line breaks and runs of blanks become one space. Plain ASCII is folded
    between words; anything else (non-ASCII, a word too long to fold, text
    that could be read as an encoded word) is sent as encoded words.
    Cached: a subject that names no one is the same for every email.
    """
    collapsed = " ".join(text.split())
    words = collapsed.split(" ")
    if collapsed.isascii() and "=?" not in collapsed and all(len(w) <= MAX_LINE - len(name) - 2 for w in words):
        return _folded(name.encode(), [w.encode() for w in words if w])
    # Adjacent encoded words are joined without the space between them when
    # decoded, so the spaces travel inside the words.
    return _folded(name.encode(), encoded_words(collapsed))


def address_header(name: str, value: str | Address, utf8: bool = False) -> bytes:
    """A header of addresses (From), folded and encoded by the standard library: done once per transport."""
    chosen = policy.SMTPUTF8 if utf8 else policy.SMTP
    message = EmailMessage(policy=chosen)
    message[name] = value
    return chosen.fold_binary(name, message[name])


def body_part(subtype: str, text: str) -> bytes:
    """A text/``subtype`` part in UTF-8: quoted-printable, or base64 when that is shorter."""
    data = _lines(text)
    non_ascii = 0 if data.isascii() else len(data.translate(None, _ASCII))
    if non_ascii * 6 > len(data):  # mostly non-Latin text: base64 (4/3 the size) beats =XX per byte
        encoding, body = b"base64", _base64_lines(data)
    else:
        encoding, body = b"quoted-printable", binascii.b2a_qp(data, istext=True)
        if not body.endswith(CRLF):
            body += CRLF
    return (
        b"Content-Type: text/" + subtype.encode() + b'; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: " + encoding + CRLF + CRLF + body
    )


def _base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(encoded[i : i + 76] + CRLF for i in range(0, len(encoded), 76))


def new_boundary() -> bytes:
    return b"=_userflow_" + os.urandom(12).hex().encode()


def multipart_alternative(
    *,
    from_line: bytes,
    to_line: bytes,
    subject: str,
    message_id: str,
    text: str,
    html: str,
    date: str | None = None,
    boundary: bytes | None = None,
) -> bytes:
    """The whole message: headers, then the text part and the HTML part (the preferred one last)."""
    boundary = boundary or new_boundary()
    delimiter = b"--" + boundary
    return b"".join(
        (
            from_line,
            to_line,
            unstructured("Subject", subject),
            b"Date: " + (date or formatdate(usegmt=True)).encode() + CRLF,
            b"Message-ID: " + message_id.encode("ascii") + CRLF,
            b"MIME-Version: 1.0\r\n",
            b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n',
            CRLF,
            delimiter + CRLF,
            body_part("plain", text),
            CRLF,  # the line break before a delimiter belongs to it: this one keeps the part's last
            delimiter + CRLF,
            body_part("html", html),
            CRLF,
            delimiter + b"--" + CRLF,
        )
    )
