"""When a feed is polled next: Retry-After (H6), backoff (H7), intervals, catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.polling import (
    PollPolicy,
    backoff_delay,
    is_due,
    next_poll_at,
    parse_retry_after,
    spread_overdue,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CAP = timedelta(hours=24)
POLICY = PollPolicy()
NO_JITTER = PollPolicy(jitter=0.0)


# --- Retry-After (THREATS H6) -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", timedelta(seconds=120)),
        (" 120 ", timedelta(seconds=120)),
        ("0", timedelta(0)),
        ("1.5", None),  # delay-seconds is 1*DIGIT (RFC 9110 section 10.2.3)
        ("-5", None),
        ("+7200", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits are not DIGIT
        ("007", timedelta(seconds=7)),
        ("1000000000", CAP),
        ("9" * 5000, CAP),
        ("Sun, 01 Jun 2025 12:10:00 GMT", timedelta(minutes=10)),
        ("Sunday, 01-Jun-25 12:10:00 GMT", timedelta(minutes=10)),  # RFC 850
        ("Sun Jun  1 12:10:00 2025", timedelta(minutes=10)),  # asctime
        ("Sun, 01 Jun 2025 14:10:00 +0200", timedelta(minutes=10)),
        ("Sun, 01 Jun 2025 11:00:00 GMT", timedelta(0)),  # in the past
        ("Thu, 01 Jan 1970 00:00:00 GMT", timedelta(0)),
        ("Fri, 01 Jan 2999 00:00:00 GMT", CAP),
        ("Fri, 31 Dec 9999 23:59:59 GMT", CAP),
        (None, None),
        ("", None),
        ("soon", None),
        ("12 minutes", None),
        ("0x10", None),
        ("1e9", None),
        ("NaN", None),
        ("Sun, 32 Jun 2025 12:10:00 GMT", None),
        ("Sun, 30 Feb 2025 12:10:00 GMT", None),
        ("\x00\r\n120", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: timedelta | None) -> None:
    assert parse_retry_after(value, now=NOW, cap=CAP) == expected


@given(st.text(max_size=100))
def test_parse_retry_after_never_crashes_and_stays_in_bounds(value: str) -> None:
    result = parse_retry_after(value, now=NOW, cap=CAP)
    assert result is None or timedelta(0) <= result <= CAP


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_retry_after_seconds_are_clamped(seconds: int) -> None:
    if seconds < 0:
        expected = None  # "-5" is not delay-seconds
    else:
        expected = CAP if seconds >= CAP.total_seconds() else timedelta(seconds=seconds)
    assert parse_retry_after(str(seconds), now=NOW, cap=CAP) == expected


# --- backoff (THREATS H7) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (0, timedelta(0)),
        (-3, timedelta(0)),
        (1, timedelta(minutes=5)),
        (2, timedelta(minutes=10)),
        (3, timedelta(minutes=20)),
        (4, timedelta(minutes=40)),
        (8, timedelta(minutes=640)),
        (9, timedelta(hours=12)),  # 1280 minutes, capped
        (50, timedelta(hours=12)),
        (10_000, timedelta(hours=12)),
    ],
)
def test_backoff_grows_then_caps(errors: int, expected: timedelta) -> None:
    assert backoff_delay(errors, policy=NO_JITTER, rand=0.7) == expected


@given(st.integers(1, 200), st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_jitter_bounds(errors: int, rand: float) -> None:
    plain = backoff_delay(errors, policy=NO_JITTER, rand=0.5)
    jittered = backoff_delay(errors, policy=POLICY, rand=rand)
    assert plain * 0.9 - timedelta(microseconds=1) <= jittered
    assert jittered <= min(plain * 1.1, POLICY.backoff_cap) + timedelta(microseconds=1)
    assert jittered <= POLICY.backoff_cap


def test_backoff_jitter_spreads_feeds_failing_together() -> None:
    delays = {backoff_delay(3, policy=POLICY, rand=r / 10) for r in range(10)}
    assert len(delays) == 10
    assert min(delays) == timedelta(minutes=18)  # 20 minutes - 10 %
    assert max(delays) < timedelta(minutes=22)


def test_backoff_at_the_cap_still_spreads_below_it() -> None:
    delays = {backoff_delay(30, policy=POLICY, rand=r / 10) for r in range(10)}
    assert max(delays) == POLICY.backoff_cap
    assert min(delays) == POLICY.backoff_cap * 0.9


@pytest.mark.parametrize("rand", [-1.0, 1.0, 5.0, float("nan"), float("inf")])
def test_backoff_survives_out_of_range_rand(rand: float) -> None:
    delay = backoff_delay(2, policy=POLICY, rand=rand)
    assert timedelta(minutes=9) <= delay <= timedelta(minutes=11)


def test_backoff_is_monotonic_without_jitter() -> None:
    delays = [backoff_delay(n, policy=NO_JITTER, rand=0.0) for n in range(1, 40)]
    assert delays == sorted(delays)


# --- next poll ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "errors", "retry_after", "expected"),
    [
        # success: the feed's interval, or the policy's
        (None, 0, None, timedelta(minutes=30)),
        (timedelta(hours=2), 0, None, timedelta(hours=2)),
        (timedelta(minutes=1), 0, None, timedelta(minutes=5)),  # never below min_interval
        (timedelta(0), 0, None, timedelta(minutes=5)),
        # failure: backoff, or Retry-After when longer
        (None, 1, None, timedelta(minutes=5)),
        (None, 3, None, timedelta(minutes=20)),
        (None, 20, None, timedelta(hours=12)),
        (None, 1, timedelta(hours=3), timedelta(hours=3)),
        (None, 6, timedelta(minutes=1), timedelta(minutes=160)),
        (None, 1, timedelta(0), timedelta(minutes=5)),
        (None, 1, timedelta(seconds=10), timedelta(minutes=5)),  # min_interval floor
        (None, 1, timedelta(hours=24), timedelta(hours=24)),  # a capped Retry-After
        # a Retry-After on a success is honoured too
        (None, 0, timedelta(hours=1), timedelta(hours=1)),
    ],
)
def test_next_poll_at_rules(
    interval: timedelta | None,
    errors: int,
    retry_after: timedelta | None,
    expected: timedelta,
) -> None:
    at = next_poll_at(
        now=NOW,
        policy=NO_JITTER,
        interval=interval,
        error_count=errors,
        retry_after=retry_after,
        rand=0.3,
    )
    assert at - NOW == expected


@given(
    st.one_of(st.none(), st.timedeltas(timedelta(0), timedelta(days=2))),
    st.integers(0, 100),
    st.one_of(st.none(), st.timedeltas(timedelta(0), CAP)),
    st.floats(0.0, 1.0, exclude_max=True),
)
def test_next_poll_at_bounds(
    interval: timedelta | None, errors: int, retry_after: timedelta | None, rand: float
) -> None:
    at = next_poll_at(
        now=NOW,
        policy=POLICY,
        interval=interval,
        error_count=errors,
        retry_after=retry_after,
        rand=rand,
    )
    assert at - NOW >= POLICY.min_interval
    if retry_after is not None:
        assert at - NOW >= retry_after
    upper = max(
        max(POLICY.interval if interval is None else interval, POLICY.min_interval) * 1.1
        if errors == 0
        else POLICY.backoff_cap,
        retry_after or timedelta(0),
        POLICY.min_interval,
    )
    assert at - NOW <= upper + timedelta(microseconds=1)


def test_success_jitter_is_small() -> None:
    times = [
        next_poll_at(
            now=NOW, policy=POLICY, interval=None, error_count=0, retry_after=None, rand=r / 4
        )
        - NOW
        for r in range(4)
    ]
    assert len(set(times)) == 4
    assert all(timedelta(minutes=27) <= t < timedelta(minutes=33) for t in times)


def test_first_success_after_a_storm_restores_normal_polling() -> None:
    storm = next_poll_at(
        now=NOW, policy=NO_JITTER, interval=None, error_count=12, retry_after=None, rand=0.0
    )
    restored = next_poll_at(
        now=NOW, policy=NO_JITTER, interval=None, error_count=0, retry_after=None, rand=0.0
    )
    assert storm - NOW == timedelta(hours=12)
    assert restored - NOW == timedelta(minutes=30)


# --- due and catch-up ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "due"),
    [
        (None, True),
        (NOW - timedelta(days=3), True),
        (NOW, True),
        (NOW + timedelta(seconds=1), False),
    ],
)
def test_is_due(at: datetime | None, due: bool) -> None:
    assert is_due(at, NOW) is due


def test_spread_overdue_evenly() -> None:
    times = spread_overdue([7, 3, 9, 1], now=NOW, over=timedelta(minutes=20))
    assert times == {
        7: NOW,
        3: NOW + timedelta(minutes=5),
        9: NOW + timedelta(minutes=10),
        1: NOW + timedelta(minutes=15),
    }


@pytest.mark.parametrize(
    ("ids", "over", "expected"),
    [
        ([], timedelta(minutes=10), {}),
        ([5], timedelta(minutes=10), {5: NOW}),
        ([5, 5, 6], timedelta(minutes=10), {5: NOW, 6: NOW + timedelta(minutes=5)}),
        ([1, 2], timedelta(0), {1: NOW, 2: NOW}),
        ([1, 2], timedelta(minutes=-5), {1: NOW, 2: NOW}),
    ],
)
def test_spread_overdue_edges(
    ids: list[int], over: timedelta, expected: dict[int, datetime]
) -> None:
    assert spread_overdue(ids, now=NOW, over=over) == expected


@given(
    st.lists(st.integers(0, 10_000), max_size=300), st.timedeltas(timedelta(0), timedelta(hours=6))
)
def test_spread_overdue_properties(ids: list[int], over: timedelta) -> None:
    times = spread_overdue(ids, now=NOW, over=over)
    assert set(times) == set(ids)
    assert all(NOW <= at <= NOW + over for at in times.values())
    assert times == spread_overdue(ids, now=NOW, over=over)  # deterministic
    ordered = [times[i] for i in dict.fromkeys(ids)]
    assert ordered == sorted(ordered)
    if len(times) > 1 and over > timedelta(0):
        gaps = {b - a for a, b in pairwise(ordered)}
        assert max(gaps) - min(gaps) <= timedelta(microseconds=1)
