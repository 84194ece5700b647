"""What one poll does to its feed's row: a pure decision, carried out by the pipeline.

``decide_poll`` takes the feed as stored, what the fetch brought, what parsing made of
it, the time and a random number, and returns a ``PollDecision``: the feed-row update
(next poll time, validators, a move, a disable), the fetch record for the log, and the
status the poll reports. Nothing here reads the clock, the network or the database,
so every rule is a row in a table test (tests/test_decide.py).

Rules and their sources:

- 200 with a parsed document: success; the new validators replace the old ones
  (RFC 9110 §8.8: an answer without ``ETag`` has none).
- 304 Not Modified: success without a body; validators the 304 repeats or updates are
  kept, those it leaves out stay as they were (RFC 9110 §15.4.5).
- Every hop a permanent redirect (301/308, RFC 9110 §15.4.2, §15.4.9): the feed moves
  to the final URL, unless it is read from a local snapshot, and unless the move would
  take an https feed to plain http (a downgrade is followed for this fetch, never
  stored: one redirect, perhaps from a network in the middle, must not strip TLS from
  every later poll; RFC 9110 §4.2.2). Such a poll, moved or not, carries a warning.
- 410 Gone (RFC 9110 §15.5.11): the feed is disabled, with the reason.
- Any other failure (a 404 or 5xx, a timeout, a refused address, a document that is
  no feed, a parser that died): one more failure in a row, polled again after the
  exponential backoff, or after the server's Retry-After when that is longer
  (RFC 9110 §10.2.3; THREATS H6, H7). See ``polling.next_poll_at``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .errors import AggregatorError
from .models import Feed, FetchResult
from .polling import PollPolicy, next_poll_at, parse_retry_after
from .urls import feed_url, has_userinfo, without_userinfo

Outcome = Literal["ok", "not_modified", "error"]
Status = Literal["ok", "not_modified", "error", "disabled"]

GONE_REASON = "gone (HTTP 410): the server says the feed was removed"
"""Why a feed is disabled after HTTP 410 Gone (RFC 9110 section 15.5.11: the resource is
removed and the removal is likely permanent)."""


@dataclass(frozen=True, slots=True)
class FeedUpdate:
    """The feed-row side of one poll's outcome (written by ``store.feeds.apply_feed_update``).

    ``succeeded`` resets the failure count and stores the validators; otherwise the
    count grows by one and ``error`` is kept as the last error. ``url`` is set when a
    permanent redirect moved the feed; ``disable_reason`` when the feed is switched off.
    """

    polled_at: datetime
    next_poll_at: datetime
    succeeded: bool
    url: str | None = None  # a permanent redirect moved the feed here
    title: str | None = None
    site_url: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None
    disable_reason: str | None = None  # e.g. 410 Gone


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """One line of a feed's fetch log: when, what answered, how long (ms), what came of it.

    ``outcome`` is ``ok``, ``not_modified`` or ``error``; ``error_kind`` is the error's
    ``kind`` (``timeout``, ``status``, ``parse`` …); ``new``/``updated`` count entries.
    ``bytes`` is the decompressed body size.
    """

    feed_id: int
    at: datetime
    url: str
    status: int | None
    bytes: int
    duration_ms: int
    outcome: str  # ok, not_modified, error
    error_kind: str | None = None
    error: str | None = None
    new: int = 0
    updated: int = 0


@dataclass(frozen=True, slots=True)
class Parsed:
    """What the pipeline needs to know of a parsed document to decide: its title and
    site link (either may be None). The entries themselves go to ``dedup``."""

    title: str | None = None
    site_url: str | None = None


ParseOutcome = Parsed | AggregatorError | None
"""A parsed document, the error that stopped parsing, or None when nothing was parsed
(the fetch failed or the server answered 304)."""


@dataclass(frozen=True, slots=True)
class PollDecision:
    """What to write for one poll: the feed row's ``update``, the ``fetch`` record, and
    whether the parsed entries are stored (``store_entries``, only for ``ok``).

    ``status`` is what the poll reports (``disabled`` is an error that switched the
    feed off); ``error`` its one-line message, if any.
    """

    outcome: Outcome
    status: Status
    update: FeedUpdate
    fetch: FetchRecord
    error: str | None = None
    warnings: tuple[str, ...] = ()  # for the poll's summary and the log

    @property
    def store_entries(self) -> bool:
        """Whether the parsed entries are written with this decision."""
        return self.outcome == "ok"


def feed_interval(feed: Feed, configured: timedelta | None) -> timedelta | None:
    """The feed's own interval (set from the CLI or admin, seconds), else the one its
    configuration entry gives, else None (the policy's default applies)."""
    if feed.interval_seconds:
        return timedelta(seconds=feed.interval_seconds)
    return configured


def decide_poll(
    feed: Feed,
    fetched: FetchResult,
    parsed: ParseOutcome,
    *,
    now: datetime,
    rand: float,
    policy: PollPolicy,
    interval: timedelta | None = None,
    follow_moves: bool = True,
    configured: bool = False,
) -> PollDecision:
    """Decide what one poll of ``feed`` writes (see the module docstring for the rules).

    ``fetched`` is the fetch's result; ``parsed`` what parsing made of its body (None
    when there was no body to parse). ``now`` is the time of the decision (aware UTC),
    ``rand`` a number in [0, 1) for the jitter, ``policy`` the backoff rules,
    ``interval`` the configured interval of this feed (None: the policy's), and
    ``follow_moves`` False for a feed read from a local snapshot (a snapshot's URL is
    not the feed's), ``configured`` True for a feed the configuration file names (its
    URL is the file's: a permanent move is followed and said, not stored, or the next
    start would add the old URL again). Raises ``ValueError`` when a body arrived but
    ``parsed`` is None.
    """
    if fetched.error is not None:
        return _failure(feed, fetched, fetched.error, now, rand, policy, interval)
    if fetched.not_modified or fetched.content is None:
        update = FeedUpdate(
            polled_at=now,
            next_poll_at=_next(now, policy, feed, interval, 0, None, rand),
            succeeded=True,
            url=_moved_to(feed, fetched, follow_moves and not configured),
            etag=fetched.etag or feed.etag,
            last_modified=fetched.last_modified or feed.last_modified,
        )
        return PollDecision(
            "not_modified",
            "not_modified",
            update,
            _record(feed, fetched, now, "not_modified"),
            warnings=_notes(feed, fetched, configured),
        )
    if parsed is None:
        raise ValueError(f"feed {feed.id}: a document arrived but no parse outcome was given")
    if isinstance(parsed, AggregatorError):
        return _failure(feed, fetched, parsed, now, rand, policy, interval)
    update = FeedUpdate(
        polled_at=now,
        next_poll_at=_next(now, policy, feed, interval, 0, None, rand),
        succeeded=True,
        url=_moved_to(feed, fetched, follow_moves and not configured),
        title=parsed.title,
        site_url=parsed.site_url,
        etag=fetched.etag,
        last_modified=fetched.last_modified,
    )
    return PollDecision(
        "ok",
        "ok",
        update,
        _record(feed, fetched, now, "ok"),
        warnings=_notes(feed, fetched, configured),
    )


DOWNGRADE_WARNING = (
    "redirected from https through plain http: read this time, unencrypted; the stored "
    "URL stays as it is"
)
"""The warning of a poll of an https feed answered over plain http, or through a
plain-http hop, after a redirect."""


def _notes(feed: Feed, fetched: FetchResult, configured: bool) -> tuple[str, ...]:
    if _insecure(feed, fetched):
        return (DOWNGRADE_WARNING,)
    target = feed_url(fetched.permanent_url) if fetched.permanent_url else None
    if configured and target and target != feed.url:
        return (
            f"moved permanently to {without_userinfo(target)}; the configuration file names "
            "this feed: polled at the old address until the file names the new one",
        )
    return ()


def _failure(
    feed: Feed,
    fetched: FetchResult,
    error: AggregatorError,
    now: datetime,
    rand: float,
    policy: PollPolicy,
    interval: timedelta | None,
) -> PollDecision:
    retry_after = parse_retry_after(fetched.retry_after, now=now, cap=policy.retry_after_cap)
    disable = GONE_REASON if fetched.gone else None
    message = str(error)
    update = FeedUpdate(
        polled_at=now,
        next_poll_at=_next(now, policy, feed, interval, feed.error_count + 1, retry_after, rand),
        succeeded=False,
        error=message,
        disable_reason=disable,
    )
    kind = error.kind
    record = _record(feed, fetched, now, "error", error=message, kind=kind)
    return PollDecision("error", "disabled" if disable else "error", update, record, message)


def _next(
    now: datetime,
    policy: PollPolicy,
    feed: Feed,
    interval: timedelta | None,
    error_count: int,
    retry_after: timedelta | None,
    rand: float,
) -> datetime:
    return next_poll_at(
        now=now,
        policy=policy,
        interval=feed_interval(feed, interval),
        error_count=error_count,
        retry_after=retry_after,
        rand=rand,
    )


def _moved_to(feed: Feed, fetched: FetchResult, follow_moves: bool) -> str | None:
    target = feed_url(fetched.permanent_url) if fetched.permanent_url else None
    if not follow_moves or not target or target == feed.url:
        return None
    if _insecure(feed, fetched):
        return None  # a downgrade: followed for this fetch, not stored
    if has_userinfo(target):
        return None  # a password in a feed's URL is refused wherever it comes from
    return target


def _insecure(feed: Feed, fetched: FetchResult) -> bool:
    """Whether an https feed was answered over plain http, or through a plain-http hop
    whose redirect anyone on the path could have written."""
    return _scheme(feed.url) == "https" and (
        fetched.downgraded or _scheme(fetched.final_url) == "http"
    )


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].strip().lower() if ":" in url else ""


def _record(
    feed: Feed,
    fetched: FetchResult,
    now: datetime,
    outcome: Outcome,
    *,
    error: str | None = None,
    kind: str | None = None,
) -> FetchRecord:
    return FetchRecord(
        feed_id=feed.id,
        at=now,
        url=fetched.url,
        status=fetched.status,
        bytes=fetched.bytes_read,
        duration_ms=round(fetched.elapsed_seconds * 1000),
        outcome=outcome,
        error_kind=kind,
        error=error,
    )
