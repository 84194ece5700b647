"""The date rule (aggregator/dates.py) as a table: raw string -> moment in UTC, or unknown."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aggregator.dates import date_agrees_with_text, has_time_of_day, parse_date


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


UNKNOWN = None

TABLE: list[tuple[str, datetime | None]] = [
    # RFC 822 / RFC 2822 (RSS pubDate)
    ("Fri, 21 Jul 2017 09:15:02 GMT", utc(2017, 7, 21, 9, 15, 2)),
    ("Fri, 21 Jul 2017 09:15:02 +0200", utc(2017, 7, 21, 7, 15, 2)),
    ("Fri, 21 Jul 2017 09:15 +0200", utc(2017, 7, 21, 7, 15)),  # no seconds
    ("21 Jul 2017 09:15:02 -0700", utc(2017, 7, 21, 16, 15, 2)),  # no day name
    ("Mon, 21 Jul 2017 09:15:02 GMT", utc(2017, 7, 21, 9, 15, 2)),  # wrong day name
    ("Fri, 21 Jul 17 09:15:02 EST", utc(2017, 7, 21, 14, 15, 2)),  # two-digit year
    ("Wed, 21 Jul 99 09:15:02 GMT", utc(1999, 7, 21, 9, 15, 2)),  # RFC 2822 §4.3: 50-99
    ("Fri, 21 Jul 2017 09:15:02 PDT", utc(2017, 7, 21, 16, 15, 2)),
    ("Fri, 21 Jul 2017 09:15:02 CEST", utc(2017, 7, 21, 7, 15, 2)),
    ("Fri, 21 Jul 2017 09:15:02 CET", utc(2017, 7, 21, 8, 15, 2)),
    ("Fri, 21 Jul 2017 09:15:02 +0000 (UTC)", utc(2017, 7, 21, 9, 15, 2)),
    ("Fri, 21 Jul 2017 09:15:02 XYZ", utc(2017, 7, 21, 9, 15, 2)),  # unknown zone: UTC
    ("21 Jul 2017", utc(2017, 7, 21)),
    # Localised day and month abbreviations; a zone name after the offset (the offset counts)
    ("lun., 04 mars 2024 10:00:00 +0100", utc(2024, 3, 4, 9)),
    ("mar., 05 mars 2024 10:00:00 +0100", utc(2024, 3, 5, 9)),  # "mar" the day, "mars" the month
    ("Mo, 04 Mär 2024 10:00:00 +0100", utc(2024, 3, 4, 9)),
    ("Do, 07 Mrz 2024 10:00:00 +0100", utc(2024, 3, 7, 9)),
    ("mié, 06 mar 2024 10:00:00 +0100", utc(2024, 3, 6, 9)),
    ("gio, 07 mag 2024 10:00:00 +0200", utc(2024, 5, 7, 8)),
    ("04 Mar 2024 10:00:00 +0100 CET", utc(2024, 3, 4, 9)),
    ("Tue, 05 Mar 2024 10:00:00 -0500 EST", utc(2024, 3, 5, 15)),
    ("Di, 05 Mär 2024 10:00:00 +0100 MEZ", utc(2024, 3, 5, 9)),  # unknown name, known offset
    ("21-Jul-2017", utc(2017, 7, 21)),
    # RFC 3339 / ISO 8601 (Atom, JSON Feed)
    ("2017-07-21T09:15:02Z", utc(2017, 7, 21, 9, 15, 2)),
    ("2017-07-21T09:15:02.123+02:00", utc(2017, 7, 21, 7, 15, 2)),
    ("2017-07-21T09:15+02:00", utc(2017, 7, 21, 7, 15)),
    ("2017-07-21T09:15:02", utc(2017, 7, 21, 9, 15, 2)),  # no offset: UTC
    ("2017-07-21 09:15:02", utc(2017, 7, 21, 9, 15, 2)),
    ("2017-07-21", utc(2017, 7, 21)),
    ("20170721T091502Z", utc(2017, 7, 21, 9, 15, 2)),
    ("2016-12-31T23:59:60Z", utc(2016, 12, 31, 23, 59, 59)),  # leap second
    # Forms seen in the wild
    ("2017/7/21 09:15:02", utc(2017, 7, 21, 9, 15, 2)),  # feedparser: 1 November 2017
    ("2017.07.21", utc(2017, 7, 21)),
    ("21.07.2017", utc(2017, 7, 21)),
    ("21/07/2017 10:00", utc(2017, 7, 21, 10)),  # 21 cannot be a month
    ("7/21/2017", utc(2017, 7, 21)),
    ("Jul 21, 2017", utc(2017, 7, 21)),
    ("July 21, 2017 9:15 pm", utc(2017, 7, 21, 21, 15)),
    ("Friday, July 21, 2017 - 09:15", utc(2017, 7, 21, 9, 15)),
    ("Fri Jul 21 09:15:02 UTC 2017", utc(2017, 7, 21, 9, 15, 2)),  # ctime
    (
        "Fri Jul 21 2017 09:15:02 GMT+0200 (Central European Summer Time)",
        utc(2017, 7, 21, 7, 15, 2),
    ),
    # Localised month names
    ("21 juillet 2017 09:15", utc(2017, 7, 21, 9, 15)),
    ("Freitag, 21. Juli 2017 09:15:02 +0200", utc(2017, 7, 21, 7, 15, 2)),
    ("21 de julio de 2017", utc(2017, 7, 21)),
    ("21 agosto 2017", utc(2017, 8, 21)),
    ("3 décembre 2017", utc(2017, 12, 3)),
    # Unknown: never a made-up date
    ("2017-13-45", UNKNOWN),  # feedparser: 1 January 2018
    ("Fri, 31 Feb 2017 09:15:02 GMT", UNKNOWN),
    ("Sat, 21 Jul 2017 25:15:02 GMT", UNKNOWN),
    ("0000-00-00 00:00:00", UNKNOWN),
    ("07/08/2017", UNKNOWN),  # 7 August or 8 July: the text does not say
    ("July 2017", UNKNOWN),  # no day
    ("2017", UNKNOWN),
    ("yesterday", UNKNOWN),
    ("", UNKNOWN),
    ("   ", UNKNOWN),
]


@pytest.mark.parametrize(("raw", "expected"), TABLE, ids=[raw or "empty" for raw, _ in TABLE])
def test_date_rule(raw: str, expected: datetime | None) -> None:
    moment = parse_date(raw)
    assert moment == expected
    if moment is not None:
        assert moment.tzinfo is UTC


def test_none_is_unknown() -> None:
    assert parse_date(None) is None


@pytest.mark.parametrize(
    ("fallback", "raw", "expected"),
    [
        # Another parser's reading is used only when it agrees with the digits written.
        (utc(2017, 7, 21, 9), "21 x 7 x 2017 x", utc(2017, 7, 21, 9)),
        (utc(2017, 11, 1), "2017/7/21 bogus words", None),
        (utc(2018, 1, 1), "2017-13-45 bogus", None),
    ],
)
def test_fallback_reading_must_agree_with_the_text(
    fallback: datetime, raw: str, expected: datetime | None
) -> None:
    assert parse_date(raw, fallback=fallback) == expected


@pytest.mark.parametrize(
    ("moment", "text", "agrees"),
    [
        (utc(2017, 7, 21), "2017/7/21", True),
        (utc(2017, 11, 1), "2017/7/21 09:15:02", False),
        (utc(2017, 7, 21), "21 Jul 2017", True),
        (utc(2017, 7, 21), "Jul 21 17", True),
        (utc(2017, 7, 21), "2017 21 7", False),  # year, day, month: no such order
        (utc(2017, 7, 9), "09:15 on 2017", False),  # a time is no day
        (utc(2017, 7, 8), "07/08/2017", False),  # could be 7 August
        (utc(2017, 7, 7), "07/07/2017", True),  # either way the same day
    ],
)
def test_agreement_with_the_digits(moment: datetime, text: str, agrees: bool) -> None:
    assert date_agrees_with_text(moment, text) is agrees


@pytest.mark.parametrize(
    ("raw", "timed"),
    [
        ("2024-03-04", False),
        ("Mon, 04 Mar 2024", False),
        ("4 March 2024", False),
        ("2017/7/21", False),
        ("2024-03-04T10:00:00Z", True),
        ("20240304T100000Z", True),
        ("Mon, 04 Mar 2024 00:00:00 GMT", True),  # midnight written out is a time
        ("July 21, 2017 9 pm", True),
        ("July 21, 2017 9:15 pm", True),
        (None, False),
        ("", False),
    ],
)
def test_has_time_of_day(raw: str | None, timed: bool) -> None:
    assert has_time_of_day(raw) is timed
