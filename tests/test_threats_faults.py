"""Faults of the machine around the product: a full disk, a database locked by another
process, and clocks that jump (THREATS K4, K6). Real SQLite files, a real feed server,
a real second process holding the lock."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from digestkit import add_entry, add_feed
from feedfactory import Item, rss
from feedserver import FeedServer
from lockkit import write_lock_held
from threatkit import Clock, add, make_settings, poll, rows, snapshot

from aggregator.digests.build import build_pending
from aggregator.errors import StoreError
from aggregator.selection import latest_slot
from aggregator.store import Store
from aggregator.store import feeds as feed_rows
from aggregator.subscriptions import add_by_operator, links_for


def big_feed(count: int, name: str = "big") -> bytes:
    return rss(
        [
            Item(
                f"{name} {i}",
                link=f"https://{name}.test/{i}",
                guid=f"{name}-{i}",
                body="<p>" + f"{name} text {i} " * 200 + "</p>",
                published=datetime(2026, 6, 1, tzinfo=UTC) + timedelta(hours=i),
            )
            for i in range(count)
        ]
    )


# --- K4: disk full -----------------------------------------------------------------------


def test_k4_disk_full_is_a_clear_error_without_damage_and_recovers(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """K4: a full disk (max_page_count just above the current size) in the middle of a
    poll: the feed whose write failed says "disk full" and names the database, no other
    feed is started, nothing is half written, the store reports failing writes (for
    /healthz); with room again, the next poll stores everything."""
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    clock = Clock()
    small = add(store, feed_server.add("/small.xml", body=big_feed(3, "small")))
    poll(settings, store, clock)  # the small feed is in; its entries must stay as they are
    big = add(store, feed_server.add("/big.xml", body=big_feed(300)))
    before = snapshot(store)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    full = Store.open(settings.database, pragmas={"max_page_count": pages + 8})

    clock.now += timedelta(hours=1)
    (summary,) = poll(settings, full, clock, feed_ids=[big])
    assert summary.status == "error" and summary.store_error is not None
    assert "disk full" in summary.store_error and "\n" not in summary.store_error
    assert str(settings.database) in (summary.error or "")
    assert full.health.failing and "disk full" in (full.health.failure or "")
    assert store.integrity_ok()
    assert snapshot(store) == before
    full.close()

    (summary,) = poll(settings, store, clock, feed_ids=[big])
    assert (summary.status, summary.new, summary.store_error) == ("ok", 300, None)
    assert rows(store, "SELECT feed_id, count(*) FROM entries GROUP BY feed_id") == [
        (small, 3),
        (big, 300),
    ]
    assert store.integrity_ok() and not store.health.failing
    store.close()


# --- K4: a database locked by another process --------------------------------------------


def test_k4_database_locked_by_another_process_is_a_clear_error_then_recovers(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """K4: another process holds BEGIN EXCLUSIVE: after the busy timeout the poll stops
    with a summary that says the database is locked; once the lock goes, the poll works."""
    settings = make_settings(tmp_path)
    store = Store.open(settings.database, pragmas={"busy_timeout": 300})
    clock = Clock()
    feed_id = add(store, feed_server.add("/a.xml", body=big_feed(5)))
    before = snapshot(store)

    with write_lock_held(settings.database):
        started = time.monotonic()
        (summary,) = poll(settings, store, clock)
        assert time.monotonic() - started < 10
        assert summary.store_error is not None and "locked" in summary.store_error
        assert str(settings.database) in (summary.error or "")
        with pytest.raises(StoreError, match="locked by another process"):
            feed_rows.set_interval(store.db, feed_id, 60)
    assert store.integrity_ok()
    assert snapshot(store) == before

    (summary,) = poll(settings, store, clock)
    assert (summary.feed_id, summary.status, summary.new) == (feed_id, "ok", 5)
    store.close()


# --- K6: clock jumps while polling -------------------------------------------------------


def test_k6_polling_across_clock_jumps_never_storms_and_catches_up_once(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """K6: back an hour, forward two days, three days of downtime: each due poll fetches
    each feed at most once, the next poll time is always ahead of the clock, and no
    entry is stored twice."""
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    clock = Clock()
    paths = [f"/feed{i}.xml" for i in range(3)]
    for path in paths:
        add(store, feed_server.add(path, body=big_feed(4, path.strip("/.xml"))))

    def due_poll() -> dict[str, int]:
        before = Counter(r.path for r in feed_server.requests)
        poll(settings, store, clock, due_only=True)
        after = Counter(r.path for r in feed_server.requests)
        polled = {path: after[path] - before[path] for path in paths}
        assert all(count <= 1 for count in polled.values()), polled
        for feed in feed_rows.list_feeds(store.db):
            assert feed.next_poll_at is not None and feed.next_poll_at > clock.now
        return polled

    assert set(due_poll().values()) == {1}
    first = clock.now
    clock.now = first - timedelta(hours=1)  # the clock goes back an hour
    assert set(due_poll().values()) == {0}
    clock.now = first - timedelta(minutes=20)
    assert set(due_poll().values()) == {0}
    clock.now = first + timedelta(minutes=40)  # past the interval of the first poll
    assert set(due_poll().values()) == {1}
    clock.now += timedelta(days=2)  # forward two days
    assert set(due_poll().values()) == {1}
    assert set(due_poll().values()) == {0}
    clock.now += timedelta(days=3)  # three days of downtime
    assert set(due_poll().values()) == {1}
    assert rows(store, "SELECT count(*), count(DISTINCT guid) FROM entries") == [(12, 12)]
    assert store.integrity_ok()
    store.close()


# --- K6: clock jumps around the digest schedule ------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")


def run_times() -> list[datetime]:
    """Hourly runs over a daylight-saving change, with the clock jumping about."""
    times: list[datetime] = []
    now = datetime(2026, 10, 23, 22, 0, tzinfo=UTC)
    for _ in range(36):  # across the change on 25 October, 03:00 local
        times.append(now)
        now += timedelta(hours=1)
    now -= timedelta(hours=1, minutes=30)  # back an hour (and a half)
    for _ in range(5):
        times.append(now)
        now += timedelta(hours=1)
    now += timedelta(days=2)  # forward two days
    for _ in range(3):
        times.append(now)
        now += timedelta(hours=1)
    now += timedelta(days=3)  # three days of downtime
    for _ in range(30):
        times.append(now)
        now += timedelta(minutes=53)
    return times


def local_day_served(moment: datetime) -> object:
    """The digest day a run at ``moment`` belongs to: local time minus the 07:00 start."""
    return (moment.astimezone(BERLIN).replace(tzinfo=None) - timedelta(hours=7)).date()


def test_k6_one_digest_per_period_over_clock_jumps_and_daylight_saving(tmp_path: Path) -> None:
    """K6 (digests): hourly runs over a daylight-saving change with the clock going back and
    jumping forward: one digest per daily period, a missed stretch coalesces into one
    catch-up, and every entry goes out exactly once."""
    settings = make_settings(
        tmp_path,
        digest={"timezone": "Europe/Berlin", "daily_at": "07:00", "max_entries_per_source": 1000},
    )
    store = Store.open(settings.database)
    feed = add_feed(store, "Clockwork Blog")
    times = run_times()
    subscriber, _ = add_by_operator(
        store,
        settings,
        links_for(store, settings),
        email="r@example.org",
        cadence="daily",
        now=times[0],
    )
    built_at: list[datetime] = []
    for n, moment in enumerate(times):
        add_entry(store, feed, f"Entry {n}", link=f"https://clock.test/{n}", published=moment)
        if build_pending(store, settings, moment, due_only=True).built:
            built_at.append(moment)

    served = [local_day_served(moment) for moment in built_at]
    assert len(served) == len(set(served)), f"two digests in one period: {built_at}"
    monotonic_days = set()
    latest = times[0]
    for moment in times:
        if moment >= latest:  # runs after a backward jump serve nothing new
            monotonic_days.add(local_day_served(moment))
            latest = moment
    # Confirming counts as served for the period it happens in: the first digest waits
    # for the next 07:00.
    monotonic_days.discard(local_day_served(times[0]))
    assert set(served) == monotonic_days
    assert len(served) >= 5
    for moment in built_at:
        slot = latest_slot("daily", moment, BERLIN, "07:00", "monday")
        assert slot.astimezone(BERLIN).hour == 7
    sent = rows(
        store,
        "SELECT de.entry_id FROM digest_entries de JOIN digests d ON d.id = de.digest_id "
        "WHERE d.subscriber_id = ?",
        subscriber.id,
    )
    sent_ids = [entry_id for (entry_id,) in sent]
    assert len(sent_ids) == len(set(sent_ids)), "an entry went out twice"
    last_upto = rows(store, "SELECT max(last_entry) FROM digests")[0][0]
    wanted = rows(
        store,
        "SELECT id FROM entries WHERE id <= ? AND id > (SELECT backlog_seq FROM feeds WHERE id = ?)",
        last_upto,
        feed,
    )
    assert sorted(sent_ids) == [entry_id for (entry_id,) in wanted]
    assert store.integrity_ok()
    store.close()


def test_k4_after_a_lock_failure_the_queued_writes_are_not_tried(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """K4: another process holds the write lock while many feeds are polled: the first
    write waits out the busy timeout and fails; the writes queued behind it are not tried
    (each would wait as long again), so the poll ends within about one busy timeout, every
    feed says why in one line, and nothing is half written."""
    busy_ms = 1500
    settings = make_settings(tmp_path)
    store = Store.open(settings.database, pragmas={"busy_timeout": busy_ms})
    clock = Clock()
    for i in range(16):
        add(store, feed_server.add(f"/f{i}.xml", body=big_feed(3, f"f{i}")))
    before = snapshot(store)
    with write_lock_held(settings.database):
        started = time.monotonic()
        summaries = poll(settings, store, clock)
        elapsed = time.monotonic() - started
    assert len(summaries) == 16
    assert all(s.store_error and "locked" in s.store_error for s in summaries)
    assert all(s.error and "\n" not in s.error for s in summaries)
    # One busy timeout, plus fetching and parsing 16 small feeds; a wait per queued write
    # would be several busy timeouts.
    assert elapsed < 2 * busy_ms / 1000 + 2.0, elapsed
    assert store.integrity_ok() and snapshot(store) == before
    store.close()
