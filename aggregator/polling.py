"""When a feed is polled next: interval, exponential backoff, Retry-After (DESIGN §4, §9).

Pure functions; the caller passes ``now`` and a random number in [0, 1), so every
decision can be replayed in a test.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from .backoff import exponential_backoff

# An HTTP-date is about 30 characters; anything much longer is not one.
_MAX_RETRY_AFTER_CHARS = 64
_SECONDS = re.compile(r"[0-9]+")  # delay-seconds = 1*DIGIT (RFC 9110 section 10.2.3)


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How often feeds are polled: the default interval and the shortest one allowed (a
    feed's own configured interval included), the exponential backoff after failures (base
    doubled per consecutive failure, up to the cap), the longest Retry-After believed
    (RFC 9110 section 10.2.3), and the random jitter, a fraction of the delay either way."""

    interval: timedelta = timedelta(minutes=30)
    min_interval: timedelta = timedelta(minutes=5)
    backoff_base: timedelta = timedelta(minutes=5)
    backoff_cap: timedelta = timedelta(hours=12)
    retry_after_cap: timedelta = timedelta(hours=24)
    jitter: float = 0.1  # fraction of the delay, either way


def _clamp_rand(rand: float) -> float:
    return min(max(rand, 0.0), math.nextafter(1.0, 0.0)) if math.isfinite(rand) else 0.0


def _jittered(delay: timedelta, jitter: float, rand: float) -> timedelta:
    spread = min(max(jitter, 0.0), 1.0)
    return delay * (1.0 + spread * (2.0 * _clamp_rand(rand) - 1.0))


def parse_retry_after(
    value: str | None, *, now: datetime | None, cap: timedelta
) -> timedelta | None:
    """The wait a Retry-After header asks for (RFC 9110 section 10.2.3; THREATS H6): the
    one reading of that header, for the poll's next time and the fetcher's per-host gate.

    ``Retry-After = HTTP-date / delay-seconds``, ``delay-seconds = 1*DIGIT``: ASCII
    digits only, so ``+7200``, ``-5``, ``1.5`` and ``1e9`` are unreadable, like any
    other text. A date is read against ``now`` (None: no time to read it against, so a
    date is unreadable). Missing or unreadable: None. A date in the past: zero. More
    than ``cap`` (a billion seconds, a date in 2999): ``cap``.
    """
    if value is None:
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        seconds = float(text)  # a thousand digits is inf here, never a huge int
        return cap if seconds >= cap.total_seconds() else timedelta(seconds=seconds)
    if now is None or not text or len(text) > _MAX_RETRY_AFTER_CHARS:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC without a claim about local time
        when = when.replace(tzinfo=UTC)
    try:
        delta = when - now
    except OverflowError:
        return cap
    if delta <= timedelta(0):
        return timedelta(0)
    return min(delta, cap)


def backoff_delay(error_count: int, *, policy: PollPolicy, rand: float) -> timedelta:
    """Exponential backoff after ``error_count`` failures in a row (THREATS H7).

    ``backoff_base * 2**(error_count - 1)``, capped at ``backoff_cap``, then spread by
    ± ``jitter`` so that feeds failing together do not retry together. The jitter never
    lifts a delay above the cap. Zero failures: no delay.
    """
    delay = exponential_backoff(error_count, base=policy.backoff_base, cap=policy.backoff_cap)
    return min(_jittered(delay, policy.jitter, rand), policy.backoff_cap)


def next_poll_at(
    *,
    now: datetime,
    policy: PollPolicy,
    interval: timedelta | None,
    error_count: int,
    retry_after: timedelta | None,
    rand: float,
) -> datetime:
    """When to poll a feed again, given the outcome of the poll that just ended.

    Success (``error_count == 0``): after the feed's interval (or the policy's), with
    a small jitter. Failure: after the backoff delay, or the server's Retry-After when
    that is longer. A Retry-After is honoured on success too. Never sooner than
    ``min_interval``.
    """
    if error_count <= 0:
        regular = max(interval if interval is not None else policy.interval, policy.min_interval)
        delay = _jittered(regular, policy.jitter, rand)
    else:
        delay = backoff_delay(error_count, policy=policy, rand=rand)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return now + max(delay, policy.min_interval)


def is_due(next_poll_at: datetime | None, now: datetime) -> bool:
    """A feed never polled, or whose time has come, is due."""
    return next_poll_at is None or next_poll_at <= now


def spread_overdue(
    feed_ids: Sequence[int], *, now: datetime, over: timedelta
) -> dict[int, datetime]:
    """Times for feeds that fell due during downtime, evenly spaced across ``over``.

    Feed number i of n (in the order given, so callers can put the most overdue first)
    gets ``now + over * i / n``: the first runs now, none later than ``now + over``.
    A repeated id keeps its first place.
    """
    unique = list(dict.fromkeys(feed_ids))
    if not unique:
        return {}
    step = max(over, timedelta(0)) / len(unique)
    return {feed_id: now + step * index for index, feed_id in enumerate(unique)}
