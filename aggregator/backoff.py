"""Exponential backoff: how long to wait after failures in a row. Pure arithmetic.

Shared by feed polling (``polling.backoff_delay``, which adds jitter) and digest
sending (``digests.send``), so both double the same way and cap the same way.
"""

from __future__ import annotations

from datetime import timedelta

MAX_DOUBLINGS = 40
"""Doubling past this many times exceeds any sensible cap; stops the arithmetic growing."""


def exponential_backoff(failures: int, *, base: timedelta, cap: timedelta) -> timedelta:
    """The wait after ``failures`` failures in a row: ``base * 2**(failures - 1)``,
    at most ``cap``. Zero (or fewer) failures: no wait. Never raises (a huge count
    is the cap, not an overflow)."""
    if failures <= 0:
        return timedelta(0)
    doublings = min(failures - 1, MAX_DOUBLINGS)
    seconds = base.total_seconds() * 2.0**doublings
    return timedelta(seconds=min(seconds, cap.total_seconds()))
