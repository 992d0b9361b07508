"""What each command-line option accepts: a parser per kind of value, each raising
``argparse.ArgumentTypeError`` with a message that says what was expected."""

from __future__ import annotations

import argparse
import re
from urllib.parse import urlsplit


def number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value != value:  # NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def fraction(text: str) -> float:
    value = number(text, "a fraction between 0 and 1")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def seconds(text: str) -> float:
    value = number(text, "a number of seconds")
    if not 0 <= value < 10**9:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds")
    return value


def days(text: str) -> float:
    value = number(text, "a number of days")
    if not 0 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{text} is not a number of days (0 to 100000; fractions allowed)")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1 second")
    return value


def some_seconds(text: str) -> float:
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: more than 0 seconds")
    return value


def node_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,62}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: up to 63 letters, digits, '.', '_', ':' or '-', starting with a letter or digit")
    return text


def node_timeout(text: str) -> float:
    value = seconds(text)
    if not 1 <= value <= 300:
        raise argparse.ArgumentTypeError(f"{text}: between 1 and 300 seconds")
    return value


def count(text: str) -> int:
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def rate(text: str) -> str:
    from userflow.http.ratelimit import Rate

    try:
        Rate.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def level(text: str) -> str:
    if text.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"{text!r} is not DEBUG, INFO, WARNING or ERROR")
    return text.upper()


def product(text: str) -> str:
    name = " ".join(text.split())
    if not name or len(name) > 100 or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        raise argparse.ArgumentTypeError(f"{text!r} is not a product name (1 to 100 printable characters)")
    return name


def port(text: str) -> int:
    if not (text.strip().isascii() and text.strip().isdigit()) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return int(text)


def url(schemes: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def check(text: str) -> str:
        try:
            parts = urlsplit(text)
            ok = parts.scheme in schemes and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {' or '.join(schemes)} URL")
        return text

    return check


def network(text: str) -> str:
    from userflow.http.clients import parse_networks

    try:
        parse_networks([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def origin(text: str) -> str:
    text = text.strip()
    if text == "*":
        return text
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/") and not parts.query
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} is not an origin such as https://www.example.com (or *)")
    return f"{parts.scheme}://{parts.netloc}".lower()


def schedule(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        delays = (-1.0,)
    if not delays or any(not 0 <= d < 10**7 or d != d for d in delays):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of seconds such as 5,300,1800")
    return delays


def batch(text: str) -> int:
    value = count(text)
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{text}: between 1 and 100000 runs")
    return value


def database_url(text: str) -> str:
    from userflow.storage.postgres.connect import DatabaseUnavailable, parse

    try:
        parse(text)
    except DatabaseUnavailable as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
