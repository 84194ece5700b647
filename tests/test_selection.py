"""What goes into whose digest, and when: pure decisions, table-tested."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.selection import (
    Candidate,
    StoryMember,
    Subscriber,
    is_due,
    latest_slot,
    select_digest,
)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
A, B, C = 1, 2, 3


def subscriber(feeds: set[int] | None = None, watermark: int = 0) -> Subscriber:
    return Subscriber(
        id=7,
        email="r@example.org",
        status="confirmed",
        cadence="daily",
        feed_ids=None if feeds is None else frozenset(feeds),
        watermark=watermark,
        created_at=T0,
    )


def cand(entry_id: int, feed_id: int, story: int | None = None, hours: int = 0) -> Candidate:
    return Candidate(
        id=entry_id,
        feed_id=feed_id,
        story_id=story or entry_id,
        published=T0 + timedelta(hours=hours or entry_id),
    )


def stories(*members: tuple[int, int, int]) -> dict[int, list[StoryMember]]:
    """(story id, entry id, feed id) triples."""
    found: dict[int, list[StoryMember]] = {}
    for story, entry, feed in members:
        found.setdefault(story, []).append(StoryMember(entry, feed))
    return found


def shown(plan) -> dict[int, list[int]]:
    return {s.feed_id: [i.entry_id for i in s.items] for s in plan.sections}


def test_nothing_new_is_no_digest() -> None:
    assert select_digest(subscriber(), [], {}, upto=10, max_per_source=5) is None


def test_sections_per_source_newest_first_and_watermark_is_upto() -> None:
    plan = select_digest(
        subscriber(),
        [cand(11, A), cand(12, B), cand(13, A)],
        stories((11, 11, A), (12, 12, B), (13, 13, A)),
        upto=20,
        max_per_source=5,
    )
    assert plan is not None
    assert shown(plan) == {A: [13, 11], B: [12]}
    assert (plan.first_entry, plan.last_entry, plan.entry_count) == (11, 20, 3)


def test_only_the_subscribers_sources_and_only_past_the_watermark() -> None:
    plan = select_digest(
        subscriber({B}, watermark=11),
        [cand(11, B), cand(12, A), cand(13, B)],
        stories((11, 11, B), (12, 12, A), (13, 13, B)),
        upto=13,
        max_per_source=5,
    )
    assert plan is not None and shown(plan) == {B: [13]}


def test_cross_post_in_both_sources_appears_once_with_also_on() -> None:
    plan = select_digest(
        subscriber(),
        [cand(11, A), cand(12, B, story=11)],
        stories((11, 11, A), (11, 12, B)),
        upto=12,
        max_per_source=5,
    )
    assert plan is not None
    assert shown(plan) == {A: [11]}
    assert plan.sections[0].items[0].also_on == (12,)


def test_cross_post_for_a_reader_of_the_copy_only_shows_the_copy() -> None:
    plan = select_digest(
        subscriber({B}),
        [cand(12, B, story=11)],
        stories((11, 11, A), (11, 12, B)),
        upto=12,
        max_per_source=5,
    )
    assert plan is not None
    assert shown(plan) == {B: [12]}
    assert plan.sections[0].items[0].also_on == (11,)


def test_copy_of_a_story_already_sent_is_not_sent_again() -> None:
    # Story 11 (feed A) went out in the last digest; its copy on B arrives later.
    plan = select_digest(
        subscriber(watermark=11),
        [cand(12, B, story=11)],
        stories((11, 11, A), (11, 12, B)),
        upto=12,
        max_per_source=5,
    )
    assert plan is None


def test_copy_arriving_after_the_run_snapshot_does_not_hide_the_story() -> None:
    plan = select_digest(
        subscriber(),
        [cand(11, A)],
        stories((11, 11, A), (11, 30, B)),
        upto=20,
        max_per_source=5,
    )
    assert plan is not None and shown(plan) == {A: [11]}


def test_flood_is_capped_per_source_keeping_the_newest_and_counting_the_rest() -> None:
    # A feed migration re-emits 100 old posts; one real new post on A, one on B.
    old = [cand(100 + i, A, hours=-1000 - i) for i in range(100)]
    real = cand(300, A, hours=5)
    other = cand(301, B, hours=4)
    members = stories(*((c.id, c.id, c.feed_id) for c in [*old, real, other]))
    plan = select_digest(subscriber(), [*old, real, other], members, upto=301, max_per_source=10)
    assert plan is not None
    section_a, section_b = plan.sections
    assert section_a.items[0].entry_id == 300
    assert len(section_a.items) == 10 and section_a.more == 91
    assert [i.entry_id for i in section_b.items] == [301] and section_b.more == 0
    assert plan.story_count == 102


def test_a_subscriber_with_no_sources_left_gets_nothing() -> None:
    assert (
        select_digest(
            subscriber(set()), [cand(11, A)], stories((11, 11, A)), upto=11, max_per_source=5
        )
        is None
    )


@given(
    st.lists(
        st.tuples(st.integers(1, 3), st.integers(0, 5), st.integers(-50, 50)),
        min_size=0,
        max_size=40,
    ),
    st.integers(0, 45),
    st.integers(1, 6),
)
def test_every_new_story_in_the_sources_is_shown_or_counted_once(rows, watermark, cap) -> None:
    # rows: (feed, index of an earlier entry this copies or 0, hour offset)
    candidates = []
    members: dict[int, list[StoryMember]] = {}
    for index, (feed, copies, hours) in enumerate(rows, start=1):
        story = index - copies if 0 < copies < index else index
        story = candidates[story - 1].story_id if story != index else index
        candidates.append(cand(index, feed, story=story, hours=hours))
        members.setdefault(story, []).append(StoryMember(index, feed))
    sub = subscriber({1, 2}, watermark=watermark)
    plan = select_digest(sub, candidates, members, upto=len(rows), max_per_source=cap)
    new = [c for c in candidates if c.id > watermark and c.feed_id in (1, 2)]
    expected_stories = {
        c.story_id
        for c in new
        if all(m.id in {n.id for n in new} for m in members[c.story_id] if m.feed_id in (1, 2))
    }
    if plan is None:
        assert not expected_stories
        return
    shown_ids = [i.entry_id for s in plan.sections for i in s.items]
    assert len(shown_ids) == len(set(shown_ids))
    by_id = {c.id: c for c in candidates}
    assert len({by_id[i].story_id for i in shown_ids}) == len(shown_ids)
    assert plan.story_count == len(expected_stories)
    assert all(len(s.items) <= cap for s in plan.sections)


# --- due-ness -----------------------------------------------------------------------

OSLO = ZoneInfo("Europe/Oslo")


def at(text: str, tz=OSLO) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)


@pytest.mark.parametrize(
    ("cadence", "last", "now", "due"),
    [
        ("daily", None, "2026-11-02 06:00", True),
        ("daily", "2026-11-01 07:00", "2026-11-02 06:59", False),
        ("daily", "2026-11-01 07:00", "2026-11-02 07:00", True),
        ("daily", "2026-11-02 07:00", "2026-11-02 23:00", False),
        # three days of downtime: one digest, then not again until the next slot
        ("daily", "2026-11-01 07:00", "2026-11-04 15:00", True),
        ("daily", "2026-11-04 15:00", "2026-11-04 16:00", False),
        # the clock went back an hour after a run
        ("daily", "2026-11-02 07:30", "2026-11-02 06:30", False),
        # weekly on Mondays (2 November 2026 is a Monday)
        ("weekly", "2026-10-26 07:00", "2026-11-01 23:00", False),
        ("weekly", "2026-10-26 07:00", "2026-11-02 07:00", True),
        ("weekly", "2026-11-02 07:05", "2026-11-08 23:59", False),
        ("weekly", "2026-11-02 07:05", "2026-11-20 10:00", True),
    ],
)
def test_is_due(cadence, last, now, due) -> None:
    last_sent = at(last) if last else None
    assert is_due(cadence, last_sent, at(now), OSLO, "07:00", "monday") is due


def test_daily_slot_across_daylight_saving_change() -> None:
    # Oslo leaves summer time on 25 October 2026: 07:00 local is 06:00 UTC after it.
    before = latest_slot("daily", datetime(2026, 10, 24, 12, tzinfo=UTC), OSLO, "07:00", "monday")
    after = latest_slot("daily", datetime(2026, 10, 25, 12, tzinfo=UTC), OSLO, "07:00", "monday")
    assert before.astimezone(UTC).hour == 5 and after.astimezone(UTC).hour == 6
    assert after.astimezone(UTC) - before.astimezone(UTC) == timedelta(hours=25)


def test_one_digest_per_period_over_a_week_of_hourly_runs_with_clock_jumps() -> None:
    now = at("2026-11-02 00:30")
    last: datetime | None = at("2026-11-01 07:00")
    runs = 0
    for hour in range(24 * 7):
        moment = now + timedelta(hours=hour)
        if hour == 50:
            moment -= timedelta(hours=1)  # a jump back
        if last is not None and is_due("daily", last, moment, OSLO, "07:00", "monday"):
            runs += 1
            last = moment
    assert runs == 7
