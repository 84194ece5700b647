"""What goes into whose digest, and when a digest is due (DESIGN §7, THREATS K6).

Pure functions over plain data; standard library only. The store hands in the
candidate entries of one subscriber (stored after their watermark, outside any feed's
backlog, in their sources) and the members of each candidate's story; this module
decides the digest's shape. Nothing here reads the clock: ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal

Cadence = Literal["daily", "weekly"]
# How often a subscriber may get a digest.
CADENCES: tuple[Cadence, ...] = ("daily", "weekly")
SubscriberStatus = Literal["pending", "confirmed", "unsubscribed", "bounced"]
# Day names accepted by ``[digest] weekly_day``, Monday first (``datetime.weekday()``
# order).
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A digest subscriber: address, status, cadence and chosen feeds (None: every feed,
    including ones added later). Times are UTC.

    ``watermark`` is the highest entry id already considered for a digest: only entries
    above it can be sent, which keeps sending exactly once across crashes (THREATS K2, K6).
    """

    id: int
    email: str
    status: SubscriberStatus
    cadence: Cadence
    feed_ids: frozenset[int] | None  # None: every feed, including ones added later
    watermark: int  # highest entry id already considered for a digest
    created_at: datetime
    confirmed_at: datetime | None = None
    last_digest_at: datetime | None = None  # when a digest run last looked at them
    last_confirmation_at: datetime | None = None

    def follows(self, feed_id: int) -> bool:
        """Whether entries of feed ``feed_id`` go into this subscriber's digests."""
        return self.feed_ids is None or feed_id in self.feed_ids


@dataclass(frozen=True, slots=True)
class Candidate:
    """A new entry in one of the subscriber's sources."""

    id: int
    feed_id: int
    story_id: int  # the entry's ``duplicate_of``, or its own id when it is the story
    published: datetime
    backlog: bool = False  # stored by its feed's first poll (only a fresh install sees it)


@dataclass(frozen=True, slots=True)
class StoryMember:
    """One copy of a story (the story's first entry included), in whatever feed."""

    id: int
    feed_id: int


@dataclass(frozen=True, slots=True)
class DigestItem:
    """One story in a digest: its entry id, and the ids of the same story on other feeds."""

    entry_id: int
    also_on: tuple[int, ...] = ()  # entry ids of the same story in other feeds


@dataclass(frozen=True, slots=True)
class DigestSection:
    """The stories of one source in a digest, and how many more the per-source cap left
    out."""

    feed_id: int
    items: tuple[DigestItem, ...]
    more: int = 0  # new stories of this source left out by the per-source cap


@dataclass(frozen=True, slots=True)
class DigestPlan:
    """What a digest holds, decided purely by ``select_digest``: its sections, and the range
    of entry ids it covers (``last_entry`` becomes the subscriber's watermark once sent).
    """

    sections: tuple[DigestSection, ...]
    first_entry: int  # lowest entry id the digest covers
    last_entry: int  # highest entry id it covers: the subscriber's next watermark

    @property
    def entry_count(self) -> int:
        """Stories shown in the digest (those left out by the cap not counted)."""
        return sum(len(section.items) for section in self.sections)

    @property
    def story_count(self) -> int:
        """Stories announced, shown or counted in an "and N more"."""
        return sum(len(section.items) + section.more for section in self.sections)


def select_digest(
    subscriber: Subscriber,
    candidates: Iterable[Candidate],
    stories: Mapping[int, Sequence[StoryMember]],
    *,
    upto: int,
    max_per_source: int,
    published_since: datetime | None = None,
) -> DigestPlan | None:
    """The digest for ``subscriber`` over entries up to ``upto``; None when nothing is new.

    A story appears once, in the section of its earliest new copy, with "also on" links
    to its copies in other feeds. A story that already reached the subscriber through
    one of their sources (a copy at or below their watermark, or in a backlog) is left
    out. Each section keeps the ``max_per_source`` most recently published stories and
    counts the rest, so a feed that re-emits a hundred old posts buries nothing.
    With ``published_since`` (see ``first_digest_since``) backlog posts published
    before it are left out: a feed's archive is not news.
    """
    if max_per_source < 1:
        raise ValueError("max_per_source must be at least 1")
    mine = [
        c
        for c in candidates
        if c.id > subscriber.watermark
        and subscriber.follows(c.feed_id)
        and (published_since is None or not c.backlog or c.published >= published_since)
    ]
    if not mine:
        return None
    new_ids = {c.id for c in mine}
    by_story: dict[int, list[Candidate]] = {}
    for candidate in sorted(mine, key=lambda c: c.id):
        by_story.setdefault(candidate.story_id, []).append(candidate)

    chosen: dict[int, list[tuple[Candidate, DigestItem]]] = {}
    for story_id, copies in by_story.items():
        # Copies stored after ``upto`` belong to a later run; they do not hide this one.
        members = [m for m in stories.get(story_id, ()) if m.id <= upto]
        seen_elsewhere = any(subscriber.follows(m.feed_id) and m.id not in new_ids for m in members)
        if seen_elsewhere:
            continue
        shown = next((c for c in copies if c.id == story_id), copies[0])
        also_on: list[int] = []
        feeds_named = {shown.feed_id}
        for member in sorted(members, key=lambda m: m.id):
            if member.feed_id not in feeds_named:
                feeds_named.add(member.feed_id)
                also_on.append(member.id)
        item = DigestItem(entry_id=shown.id, also_on=tuple(also_on))
        chosen.setdefault(shown.feed_id, []).append((shown, item))

    sections = []
    for feed_id in sorted(chosen):
        ranked = sorted(chosen[feed_id], key=lambda pair: (pair[0].published, pair[0].id))
        ranked.reverse()  # newest first
        kept = ranked[:max_per_source]
        sections.append(
            DigestSection(
                feed_id=feed_id,
                items=tuple(item for _, item in kept),
                more=len(ranked) - len(kept),
            )
        )
    if not sections:
        return None
    return DigestPlan(sections=tuple(sections), first_entry=min(new_ids), last_entry=upto)


def cadence_period(cadence: Cadence) -> timedelta:
    """The time between two digests of a cadence: one day or one week."""
    return timedelta(days=1) if cadence == "daily" else timedelta(weeks=1)


def first_digest_since(subscriber: Subscriber, now: datetime) -> datetime | None:
    """The oldest publication time a subscriber's first digest on a fresh installation
    may hold: one cadence period before ``now``; None when the watermark already decides.

    A watermark of 0 means they joined before anything was stored, so every post of
    each feed's first poll (its backlog, its archive) would be "new" to them; only what
    of it was published in the last period is news.
    """
    if subscriber.watermark > 0:
        return None
    return now - cadence_period(subscriber.cadence)


# --- when a digest is due -----------------------------------------------------------


def latest_slot(
    cadence: Cadence, now: datetime, tz: tzinfo, daily_at: str, weekly_day: str
) -> datetime:
    """The most recent scheduled digest time at or before ``now`` (aware, in ``tz``)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    at = _clock_time(daily_at)
    local_now = now.astimezone(tz)
    day = local_now.date()
    slot = _local(day, at, tz)
    if slot > now:
        day -= timedelta(days=1)
        slot = _local(day, at, tz)
    if cadence == "weekly":
        wanted = WEEKDAYS.index(weekly_day.lower())
        day -= timedelta(days=(day.weekday() - wanted) % 7)
        slot = _local(day, at, tz)
    return slot


def is_due(
    cadence: Cadence,
    last_sent: datetime | None,
    now: datetime,
    tz: tzinfo,
    daily_at: str,
    weekly_day: str,
) -> bool:
    """Whether a subscriber last served at ``last_sent`` is due for a digest at ``now``.

    Due when a scheduled time has passed since ``last_sent``. However many slots were
    missed (downtime), one run serves them all: the caller records ``now`` as the new
    ``last_sent``. A clock that went back (``last_sent`` after ``now``) is not due.
    """
    if last_sent is None:
        return True
    return last_sent < latest_slot(cadence, now, tz, daily_at, weekly_day)


def _clock_time(text: str) -> time:
    hours, _, minutes = text.partition(":")
    return time(int(hours), int(minutes))


def _local(day: date, at: time, tz: tzinfo) -> datetime:
    # A wall time skipped by a daylight-saving change resolves to the instant after it.
    return datetime.combine(day, at, tzinfo=tz)
