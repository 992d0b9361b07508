"""Named crash points and injected I/O errors, for proving the durability guarantees.

``USERFLOW_FAULTS`` is a comma-separated list of points such as
``crash:send-verification-email:after-send`` or ``crash:storage:before-rename``.
When the running code reaches a listed point the process ends at once with
``os._exit(137)``, the same status a ``kill -9`` leaves, skipping every
``finally`` and buffer flush. Unset, every point costs one set lookup.
"""

from __future__ import annotations

import errno
import os
import sys

_ENV = "USERFLOW_FAULTS"


def _parse(value: str) -> frozenset[str]:
    return frozenset(part.strip() for part in value.split(",") if part.strip())


_armed: frozenset[str] = _parse(os.environ.get(_ENV, ""))


def arm(value: str) -> None:
    """Replace the armed points (tests arm them in the child's environment instead)."""
    global _armed
    _armed = _parse(value)


def crash_point(scope: str, point: str) -> None:
    """Exit with status 137 if ``crash:{scope}:{point}`` is armed."""
    if _armed and f"crash:{scope}:{point}" in _armed:
        sys.stderr.write(f"userflow: fault injected at crash:{scope}:{point}\n")
        sys.stderr.flush()
        os._exit(137)


def io_error(scope: str) -> None:
    """Raise ENOSPC if ``ioerror:{scope}`` is armed: a full disk, on demand."""
    if _armed and f"ioerror:{scope}" in _armed:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
