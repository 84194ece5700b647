"""What a poll writes to its feed's row, as a table: one row per answer a server can give.

``decide_poll`` is pure: each case gives the stored feed, the fetch result, the parse
outcome, the time and a random number, and checks the decision against the rule it
implements (see aggregator/decide.py).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from aggregator.decide import DOWNGRADE_WARNING, GONE_REASON, Parsed, ParseOutcome, decide_poll
from aggregator.errors import (
    AggregatorError,
    FetchConnectError,
    FetchError,
    FetchRefused,
    FetchStatusError,
    FetchTimeout,
    FetchTooLarge,
    FetchTooManyRedirects,
    NotAFeed,
    ParseError,
)
from aggregator.models import Feed, FetchResult
from aggregator.polling import PollPolicy

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
URL = "https://blog.example/feed.xml"
NEW_URL = "https://blog.example/atom.xml"
HTTP_URL = "http://blog.example/atom.xml"
POLICY = PollPolicy()  # 30 min interval, 5 min floor, backoff 5 min doubling to 12 h, ±10 %
MIDDLE = 0.5  # the random number that makes the jitter zero


def feed(**changes: Any) -> Feed:
    base = Feed(
        id=7,
        url=URL,
        title="A blog",
        site_url="https://blog.example/",
        enabled=True,
        disabled_reason=None,
        etag='"v1"',
        last_modified="Sat, 28 Feb 2026 10:00:00 GMT",
        error_count=0,
        last_error=None,
        next_poll_at=None,
        last_polled_at=None,
        last_success_at=None,
        interval_seconds=None,
        added_at=NOW - timedelta(days=30),
    )
    return replace(base, **changes)


def fetched(status: int | None = 200, **changes: Any) -> FetchResult:
    body = b"<rss/>" if status == 200 else None
    base = FetchResult(
        url=URL,
        final_url=URL,
        status=status,
        content=body,
        not_modified=status == 304,
        elapsed_seconds=0.25,
        bytes_read=len(body or b""),
    )
    return replace(base, **changes)


def failed(error: FetchError, status: int | None = None, **changes: Any) -> FetchResult:
    return fetched(status, content=None, error=error, **changes)


def status_error(status: int) -> FetchError:
    return FetchStatusError(f"HTTP {status}", url=URL, status=status)


PARSED = Parsed(title="A blog, retitled", site_url="https://blog.example/home")
MINUTES = timedelta(minutes=1)
HOURS = timedelta(hours=1)


# (id, feed, fetch result, parse outcome, rand, outcome, status, succeeded,
#  error count after, delay until the next poll)
CASES: list[tuple[str, Feed, FetchResult, ParseOutcome, float, str, str, bool, int, timedelta]] = [
    # --- successes: the regular interval, jittered by ±10 % ---
    ("200 parsed", feed(), fetched(200), PARSED, MIDDLE, "ok", "ok", True, 0, 30 * MINUTES),
    ("200 jitter low", feed(), fetched(200), PARSED, 0.0, "ok", "ok", True, 0, 27 * MINUTES),
    ("200 jitter high", feed(), fetched(200), PARSED, 0.75, "ok", "ok", True, 0, 31.5 * MINUTES),
    (
        "200 resets failures",
        feed(error_count=6, last_error="boom"),
        fetched(200),
        PARSED,
        MIDDLE,
        "ok",
        "ok",
        True,
        0,
        30 * MINUTES,
    ),
    (
        "200 own interval",
        feed(interval_seconds=7200),
        fetched(200),
        PARSED,
        MIDDLE,
        "ok",
        "ok",
        True,
        0,
        2 * HOURS,
    ),
    (
        "200 interval below the floor",
        feed(interval_seconds=60),
        fetched(200),
        PARSED,
        MIDDLE,
        "ok",
        "ok",
        True,
        0,
        5 * MINUTES,
    ),
    ("200 no title", feed(), fetched(200), Parsed(), MIDDLE, "ok", "ok", True, 0, 30 * MINUTES),
    # --- 304: a success without a body ---
    (
        "304",
        feed(),
        fetched(304),
        None,
        MIDDLE,
        "not_modified",
        "not_modified",
        True,
        0,
        30 * MINUTES,
    ),
    (
        "304 after failures",
        feed(error_count=3),
        fetched(304),
        None,
        MIDDLE,
        "not_modified",
        "not_modified",
        True,
        0,
        30 * MINUTES,
    ),
    (
        "304 own interval, jitter",
        feed(interval_seconds=3600),
        fetched(304),
        None,
        0.0,
        "not_modified",
        "not_modified",
        True,
        0,
        54 * MINUTES,
    ),
    # --- failures: exponential backoff 5 min, 10, 20, … capped at 12 h ---
    *[
        (
            f"{name} failure #{count + 1}",
            feed(error_count=count),
            result,
            None,
            MIDDLE,
            "error",
            "error",
            False,
            count + 1,
            delay,
        )
        for name, result in [
            ("404", failed(status_error(404), 404)),
            ("500", failed(status_error(500), 500)),
            ("503", failed(status_error(503), 503)),
            ("timeout", failed(FetchTimeout("timed out after 30 s", url=URL))),
            ("connect", failed(FetchConnectError("connection refused", url=URL))),
            ("refused address", failed(FetchRefused("private address", url=URL))),
            ("too large", failed(FetchTooLarge("over 20 MB", url=URL), 200)),
            ("redirect loop", failed(FetchTooManyRedirects("more than 5 hops", url=URL), 302)),
        ]
        for count, delay in [(0, 5 * MINUTES), (1, 10 * MINUTES), (3, 40 * MINUTES)]
    ],
    (
        "backoff reaches the cap",
        feed(error_count=8),
        failed(status_error(500), 500),
        None,
        MIDDLE,
        "error",
        "error",
        False,
        9,
        12 * HOURS,
    ),
    (
        "backoff stays at the cap",
        feed(error_count=500),
        failed(status_error(500), 500),
        None,
        MIDDLE,
        "error",
        "error",
        False,
        501,
        12 * HOURS,
    ),
    (
        "jitter never lifts the cap",
        feed(error_count=20),
        failed(status_error(500), 500),
        None,
        0.99,
        "error",
        "error",
        False,
        21,
        12 * HOURS,
    ),
    (
        "jitter lowers the backoff",
        feed(error_count=1),
        failed(status_error(500), 500),
        None,
        0.0,
        "error",
        "error",
        False,
        2,
        9 * MINUTES,
    ),
    (
        "jitter never goes under the floor",
        feed(),
        failed(status_error(500), 500),
        None,
        0.0,
        "error",
        "error",
        False,
        1,
        5 * MINUTES,
    ),
    (
        "rand out of range is clamped",
        feed(error_count=1),
        failed(status_error(500), 500),
        None,
        float("nan"),
        "error",
        "error",
        False,
        2,
        9 * MINUTES,
    ),
    # --- Retry-After: honoured when longer than the backoff, capped at 24 h ---
    (
        "429 Retry-After seconds",
        feed(),
        failed(status_error(429), 429, retry_after="7200"),
        None,
        MIDDLE,
        "error",
        "error",
        False,
        1,
        2 * HOURS,
    ),
    (
        "503 Retry-After date",
        feed(),
        failed(status_error(503), 503, retry_after="Sun, 01 Mar 2026 15:00:00 GMT"),
        None,
        MIDDLE,
        "error",
        "error",
        False,
        1,
        3 * HOURS,
    ),
    (
        "Retry-After shorter than the backoff",
        feed(error_count=4),
        failed(status_error(503), 503, retry_after="60"),
        None,
        MIDDLE,
        "error",
        "error",
        False,
        5,
        80 * MINUTES,
    ),
    (
        "Retry-After absurd",
        feed(),
        failed(status_error(429), 429, retry_after="99999999999"),
        None,
        MIDDLE,
        "error",
        "error",
        False,
        1,
        24 * HOURS,
    ),
    (
        "Retry-After garbage",
        feed(),
        failed(status_error(429), 429, retry_after="soon, please"),
        None,
        MIDDLE,
        "error",
        "error",
        False,
        1,
        5 * MINUTES,
    ),
    # --- parse errors count as failures of the feed ---
    (
        "200 not a feed",
        feed(),
        fetched(200),
        NotAFeed("an HTML page", url=URL),
        MIDDLE,
        "error",
        "error",
        False,
        1,
        5 * MINUTES,
    ),
    (
        "200 unreadable",
        feed(error_count=2),
        fetched(200),
        ParseError("not well-formed", url=URL),
        MIDDLE,
        "error",
        "error",
        False,
        3,
        20 * MINUTES,
    ),
    (
        "200 parser died",
        feed(),
        fetched(200),
        ParseError("the parsing process died", url=URL),
        MIDDLE,
        "error",
        "error",
        False,
        1,
        5 * MINUTES,
    ),
    # --- 410 Gone disables the feed ---
    (
        "410",
        feed(),
        failed(status_error(410), 410),
        None,
        MIDDLE,
        "error",
        "disabled",
        False,
        1,
        5 * MINUTES,
    ),
    (
        "410 after failures",
        feed(error_count=2),
        failed(status_error(410), 410),
        None,
        MIDDLE,
        "error",
        "disabled",
        False,
        3,
        20 * MINUTES,
    ),
]


@pytest.mark.parametrize(
    ("known", "result", "parsed", "rand", "outcome", "status", "succeeded", "errors", "delay"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decision_table(
    known: Feed,
    result: FetchResult,
    parsed: ParseOutcome,
    rand: float,
    outcome: str,
    status: str,
    succeeded: bool,
    errors: int,
    delay: timedelta,
) -> None:
    decision = decide_poll(known, result, parsed, now=NOW, rand=rand, policy=POLICY)
    assert (decision.outcome, decision.status) == (outcome, status)
    assert decision.update.succeeded is succeeded
    assert decision.update.polled_at == NOW
    assert decision.update.next_poll_at - NOW == delay
    assert decision.store_entries is (outcome == "ok")
    # The fetch record says the same, with the fetch's own figures.
    record = decision.fetch
    assert (record.feed_id, record.at, record.outcome) == (known.id, NOW, outcome)
    assert (record.status, record.bytes, record.duration_ms) == (
        result.status,
        result.bytes_read,
        250,
    )
    if succeeded:
        assert decision.error is None and decision.update.error is None
        assert record.error is None and record.error_kind is None
        # the error count after a success is zero (apply_feed_update resets it)
        assert errors == 0
    else:
        cause = result.error or parsed
        assert isinstance(cause, AggregatorError)
        assert decision.error == decision.update.error == record.error == str(cause)
        assert record.error_kind == getattr(cause, "kind", "error")
        assert errors == known.error_count + 1
    assert decision.update.disable_reason == (GONE_REASON if status == "disabled" else None)


@pytest.mark.parametrize(
    ("result", "etag", "last_modified"),
    [
        (
            fetched(200, etag='"v2"', last_modified="Sun, 01 Mar 2026 11:00:00 GMT"),
            '"v2"',
            "Sun, 01 Mar 2026 11:00:00 GMT",
        ),
        (fetched(200), None, None),  # a 200 without validators has none (RFC 9110 §8.8)
        (fetched(304), '"v1"', "Sat, 28 Feb 2026 10:00:00 GMT"),  # kept from the feed row
        (fetched(304, etag='"v3"'), '"v3"', "Sat, 28 Feb 2026 10:00:00 GMT"),
        (fetched(304, last_modified="x"), '"v1"', "x"),
        (failed(status_error(500), 500, etag='"zz"'), None, None),  # a failure keeps the row's
    ],
    ids=["200 new", "200 none", "304 keeps", "304 new etag", "304 new date", "500"],
)
def test_validators(result: FetchResult, etag: str | None, last_modified: str | None) -> None:
    parsed = PARSED if result.content is not None else None
    decision = decide_poll(feed(), result, parsed, now=NOW, rand=MIDDLE, policy=POLICY)
    assert (decision.update.etag, decision.update.last_modified) == (etag, last_modified)


@pytest.mark.parametrize(
    ("result", "follow", "moved"),
    [
        (fetched(200, final_url=NEW_URL, permanent_url=NEW_URL), True, NEW_URL),
        (fetched(304, final_url=NEW_URL, permanent_url=NEW_URL), True, NEW_URL),
        (fetched(200, final_url=NEW_URL), True, None),  # a temporary redirect: no move
        (fetched(200, final_url=NEW_URL, permanent_url=NEW_URL), False, None),  # a snapshot
        (fetched(200, permanent_url=URL), True, None),  # moved to where it is
        (failed(status_error(500), 500, permanent_url=NEW_URL), True, None),  # no move on failure
        (failed(status_error(410), 410, permanent_url=NEW_URL), True, None),
        (fetched(200, final_url=HTTP_URL, permanent_url=HTTP_URL), True, None),  # downgrade
        (fetched(304, final_url=HTTP_URL, permanent_url=HTTP_URL), True, None),
        (fetched(200, final_url=NEW_URL, permanent_url=NEW_URL, downgraded=True), True, None),
        (
            fetched(200, final_url=HTTP_URL.upper(), permanent_url="HTTP://Blog.example/x"),
            True,
            None,
        ),
    ],
    ids=[
        "301 200",
        "301 304",
        "302",
        "snapshot",
        "same url",
        "301 500",
        "301 410",
        "https to http 200",
        "https to http 304",
        "through plain http",
        "https to HTTP",
    ],
)
def test_moves(result: FetchResult, follow: bool, moved: str | None) -> None:
    """Permanent moves are stored, except to where the feed is, on failure, for a snapshot,
    and from https to plain http (a downgrade is followed, not stored, and said)."""
    parsed = PARSED if result.content is not None else None
    decision = decide_poll(
        feed(), result, parsed, now=NOW, rand=MIDDLE, policy=POLICY, follow_moves=follow
    )
    assert decision.update.url == moved
    downgraded = result.error is None and (
        result.downgraded or result.final_url.lower().startswith("http:")
    )
    assert decision.warnings == ((DOWNGRADE_WARNING,) if downgraded else ())


def test_parsed_title_and_site_go_to_the_update() -> None:
    decision = decide_poll(feed(), fetched(200), PARSED, now=NOW, rand=MIDDLE, policy=POLICY)
    assert (decision.update.title, decision.update.site_url) == (PARSED.title, PARSED.site_url)


@pytest.mark.parametrize(
    ("own", "configured", "delay"),
    [
        (None, None, 30 * MINUTES),
        (None, 2 * HOURS, 2 * HOURS),
        (3600, 2 * HOURS, HOURS),  # the feed's own interval (CLI, admin) comes first
        (None, MINUTES, 5 * MINUTES),  # never below the floor
    ],
)
def test_intervals(own: int | None, configured: timedelta | None, delay: timedelta) -> None:
    decision = decide_poll(
        feed(interval_seconds=own),
        fetched(304),
        None,
        now=NOW,
        rand=MIDDLE,
        policy=POLICY,
        interval=configured,
    )
    assert decision.update.next_poll_at - NOW == delay


@pytest.mark.parametrize(
    ("result", "parsed"),
    [(fetched(304), None), (fetched(200), PARSED), (failed(status_error(410), 410), None)],
    ids=["304", "200", "410"],
)
def test_a_disabled_feed_is_never_enabled_by_a_poll(
    result: FetchResult, parsed: ParseOutcome
) -> None:
    known = feed(enabled=False, disabled_reason="by the operator")
    decision = decide_poll(known, result, parsed, now=NOW, rand=MIDDLE, policy=POLICY)
    # The update carries no "enable"; a 410 only restates the reason.
    assert decision.update.disable_reason in (None, GONE_REASON)


def test_a_body_without_a_parse_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="feed 7"):
        decide_poll(feed(), fetched(200), None, now=NOW, rand=MIDDLE, policy=POLICY)


def test_the_same_inputs_give_the_same_decision() -> None:
    args = (feed(error_count=2), failed(status_error(503), 503, retry_after="120"), None)
    first = decide_poll(*args, now=NOW, rand=0.3, policy=POLICY)
    assert decide_poll(*args, now=NOW, rand=0.3, policy=POLICY) == first


def test_a_configured_feed_is_not_moved_and_says_where_it_went() -> None:
    """The configuration file names the feed: a permanent move is followed, said, and not
    stored (the next start would add the old URL again, and every entry twice)."""
    result = fetched(200, final_url=NEW_URL, permanent_url=NEW_URL)
    decision = decide_poll(
        feed(), result, PARSED, now=NOW, rand=MIDDLE, policy=POLICY, configured=True
    )
    assert decision.update.url is None and decision.status == "ok"
    (note,) = decision.warnings
    assert NEW_URL in note and "configuration file" in note


def test_a_move_is_stored_in_feed_url_form_and_never_with_a_password() -> None:
    moved = fetched(
        200, final_url="HTTPS://Blog.Example:443/New", permanent_url="HTTPS://Blog.Example:443/New"
    )
    decision = decide_poll(feed(), moved, PARSED, now=NOW, rand=MIDDLE, policy=POLICY)
    assert decision.update.url == "https://blog.example/New"
    secret = "https://user:pw@blog.example/x"
    with_password = fetched(200, final_url=secret, permanent_url=secret)
    decision = decide_poll(feed(), with_password, PARSED, now=NOW, rand=MIDDLE, policy=POLICY)
    assert decision.update.url is None


def test_a_configured_feed_moved_to_a_url_with_a_password_never_shows_it() -> None:
    secret = "https://user:s3cret@blog.example/a.xml"
    result = fetched(200, final_url=secret, permanent_url=secret)
    decision = decide_poll(
        feed(), result, PARSED, now=NOW, rand=MIDDLE, policy=POLICY, configured=True
    )
    (note,) = decision.warnings
    assert "s3cret" not in note and "https://blog.example/a.xml" in note
