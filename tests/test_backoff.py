"""The one exponential backoff, shared by polling and digest sending."""

from __future__ import annotations

from datetime import timedelta

import pytest

from aggregator.backoff import exponential_backoff
from aggregator.digests.send import BACKOFF_BASE, BACKOFF_CAP, backoff

BASE = timedelta(minutes=5)
CAP = timedelta(hours=6)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        (-3, timedelta(0)),
        (0, timedelta(0)),
        (1, timedelta(minutes=5)),
        (2, timedelta(minutes=10)),
        (3, timedelta(minutes=20)),
        (7, timedelta(minutes=320)),
        (8, CAP),  # 640 minutes, capped
        (10**9, CAP),  # no overflow
    ],
)
def test_doubles_from_the_base_up_to_the_cap(failures: int, expected: timedelta) -> None:
    assert exponential_backoff(failures, base=BASE, cap=CAP) == expected


def test_digest_retries_wait_five_minutes_doubling_to_six_hours() -> None:
    assert (BACKOFF_BASE, BACKOFF_CAP) == (BASE, CAP)
    assert [backoff(n) for n in (1, 2, 3)] == [BASE, BASE * 2, BASE * 4]
    assert backoff(0) == BASE  # never "at once"
    assert backoff(100) == CAP
