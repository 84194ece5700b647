"""The one clock: the type every component takes, and the system clock that serves it.

Components never read the system time themselves; they take a :data:`Clock` (a
zero-argument callable returning an aware UTC :class:`~datetime.datetime`) so that tests
and replays can pass a fixed or stepping clock. Only this module reads the time
(``datetime.now``, ``time.time``): ruff's banned-api list in pyproject.toml, run by
``make check``, refuses those calls anywhere else in the package. Durations measured
with :func:`time.monotonic` are not readings of the time and stay where they are used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""A source of the current time: returns an aware datetime in UTC."""


def system_clock() -> datetime:
    """The system's current time as an aware UTC datetime (the production :data:`Clock`)."""
    return datetime.now(UTC)


def epoch_seconds() -> float:
    """The system's current time in seconds since the Unix epoch (for wall-time stamps
    that are stored or compared as numbers, such as write-health records)."""
    return time.time()
