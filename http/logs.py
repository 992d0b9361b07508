"""Logging: one line per event, JSON when not on a terminal, never a secret.

Every timeline entry of every run is logged with its run id, step and
attempt: failures as warnings; a run's start, end, deadlines, operator
commands and interruptions as info; the routine progress in between (an
attempt started, a step completed, a wait begun, a signal received) as
debug, so ``--log-level debug`` shows a run's whole timeline and the default
stays a few lines per run.

Tokens never reach a log line: runs hold only their hashes, timeline messages
never include them, and no request line (whose query may hold a token) is
logged.
"""

from __future__ import annotations

import atexit
import logging
import re
import logging.handlers
import queue
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

_FIELDS = ("runId", "step", "attempt", "event")
run_log = logging.getLogger("userflow.run")
_listener: logging.handlers.QueueListener | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in _FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{f}={getattr(record, f)}" for f in _FIELDS[:3] if getattr(record, f, None) is not None)
        return f"{text} [{context}]" if context else text


class QuietBadRequests(logging.Filter):
    """Malformed HTTP (oversized lines, bad headers) is the client's fault: one short
    warning, no traceback, and no echo of the request line, which may hold a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "malformed HTTP request refused (%s)", (type(error).__name__,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _Enqueue(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The listener formats: no copy and no formatting on the caller's thread.
        return record


def configure(level: str = "INFO", json_lines: bool | None = None) -> None:
    json_lines = not sys.stderr.isatty() if json_lines is None else json_lines
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.Formatter.converter = time.gmtime  # UTC timestamps everywhere
    # Run actors log from many threads: they only enqueue; one thread formats
    # and writes, so no actor ever waits on the stream's lock.
    global _listener
    if _listener is not None:
        _listener.stop()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=False)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(level)
    quiet_bad_requests()


def flush() -> None:
    """Write out every record logged so far: before a line printed to standard error
    directly, which must come after them (a start-up failure's reason is the last line)."""
    if _listener is not None:
        _listener.stop()  # drains the queue and waits for the writer
        _listener.start()


def quiet_bad_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietBadRequests) for f in server_log.filters):
        server_log.addFilter(QuietBadRequests())


_WARNING = frozenset({"attempt-failed", "run-failed", "deadline-failed"})
_ROUTINE = frozenset({"attempt-started", "step-completed", "waiting", "signal-received"})


def entry_level(type: str) -> int:
    if type in _WARNING:
        return logging.WARNING
    return logging.DEBUG if type in _ROUTINE else logging.INFO


# An address starts after a space or punctuation, not after "<" (a Message-ID is no one's).
_ADDRESS = re.compile(r"(?<![^\s(\[,;:\"'])[^\s@<>()\[\],;:\"']+@([^\s@<>()\[\],;:\"']+)")


def masked(message: str) -> str:
    """A timeline message as the log shows it: addresses masked (``…@example.com``),
    because a log line outlives erasure (it is the operator's, not ours, to delete)."""
    return _ADDRESS.sub(lambda found: "…@" + found.group(1), message)


def log_entries(run: Mapping[str, Any], summary: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """The index listener: one log line per timeline entry, at its entry's level."""
    for entry in entries:
        level = entry_level(entry["type"])
        if not run_log.isEnabledFor(level):
            continue
        run_log.log(
            level,
            masked(entry["message"]),
            extra={"runId": run["id"], "step": entry["step"], "attempt": entry["attempt"], "event": entry["type"]},
        )
