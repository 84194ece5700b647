"""Writing a poll's plan: many entries per statement, ids in plan order, media kept,
and the full-text index holding each entry once, with its source's current title."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aggregator.decide import FeedUpdate
from aggregator.dedup import make_record, plan_entries
from aggregator.models import EntryRecord, MediaItem, ParsedEntry
from aggregator.store import Store
from aggregator.store import entries as entry_rows
from aggregator.store import feeds as feed_rows
from aggregator.store.codec import to_db

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
FEED = "https://blog.test/feed.xml"


def records(count: int, *, media_every: int = 0) -> list[EntryRecord]:
    found = []
    for n in range(count):
        media = (
            (MediaItem(url=f"https://blog.test/{n}.mp3", mime_type="audio/mpeg", length=n + 1),)
            if media_every and n % media_every == 0
            else ()
        )
        entry = ParsedEntry(
            guid=f"post-{n}",
            link=f"https://blog.test/{n}",
            title=f"Post number {n} about gardening",
            author="Ann",
            summary_html="",
            content_html=f"<p>Tomatoes and beans, entry {n}.</p>",
            published=NOW - timedelta(minutes=n),
            updated=None,
            media=media,
        )
        found.append(make_record(entry, feed_url=FEED, text=f"Tomatoes and beans {n}", now=NOW))
    return found


def write(store: Store, feed_id: int, batch: list[EntryRecord]) -> list[int]:
    with store.write() as db:
        plan = plan_entries(batch, existing=[], candidates=[])
        return entry_rows.apply_plan(db, feed_id, plan, NOW)


def new_feed(store: Store, title: str | None = None) -> int:
    with store.write() as db:
        feed, _ = feed_rows.add_feed(db, url=FEED, title=title, origin="cli", now=NOW)
    return feed.id


def test_many_entries_get_their_ids_in_plan_order_beyond_one_statement(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    # Few host parameters per statement: the inserts take several statements.
    store.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)
    feed_id = new_feed(store)
    batch = records(45, media_every=4)
    ids = write(store, feed_id, batch)
    plan = plan_entries(batch, existing=[], candidates=[])
    rows = store.conn.execute("SELECT id, key FROM entries ORDER BY id").fetchall()
    assert [key for _, key in rows] == [new.record.key for new in plan.inserts]
    assert ids == [entry_id for entry_id, _ in rows]
    media = store.conn.execute(
        "SELECT e.key, m.url, m.length FROM enclosures m JOIN entries e ON e.id = m.entry_id "
        "ORDER BY e.key"
    ).fetchall()
    expected = sorted((r.key, r.media[0].url, r.media[0].length) for r in batch if r.media)
    assert sorted(media) == expected
    store.close()


def test_entries_are_indexed_once_with_the_source_title_of_their_poll(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    feed_id = new_feed(store)
    feed = feed_rows.get_feed(store.db, feed_id)
    assert feed is not None
    update = FeedUpdate(
        polled_at=NOW, next_poll_at=NOW + timedelta(hours=1), succeeded=True, title="Garden Log"
    )
    with store.write() as db:
        # As a successful poll writes: the feed's row first, then its entries.
        feed_rows.apply_feed_update(db, feed, update)
        plan = plan_entries(records(30), existing=[], candidates=[])
        entry_rows.apply_plan(db, feed_id, plan, NOW)
    hits = store.conn.execute(
        "SELECT count(*) FROM entries_fts WHERE entries_fts MATCH 'source:garden AND tomatoes'"
    ).fetchone()[0]
    assert hits == 30
    integrity = "INSERT INTO entries_fts (entries_fts, rank) VALUES ('integrity-check', 1)"
    store.conn.execute(integrity)  # raises when the index disagrees with the entries
    assert store.conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 30
    store.close()


def test_updates_rewrite_columns_and_media_of_each_entry(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    feed_id = new_feed(store)
    first = records(5, media_every=1)
    write(store, feed_id, first)
    later = NOW + timedelta(hours=1)
    changed = [
        make_record(
            ParsedEntry(
                guid=f"post-{n}",
                link=f"https://blog.test/{n}",
                title=f"Post number {n}, edited",
                author="Ann",
                summary_html="",
                content_html=f"<p>Peppers, entry {n}.</p>",
                published=NOW - timedelta(minutes=n),
                updated=None,
            ),
            feed_url=FEED,
            text=f"Peppers {n}",
            now=later,
        )
        for n in range(5)
    ]
    with store.write() as db:
        existing = entry_rows.existing_for(
            db, feed_id, keys=(r.key for r in changed), link_keys=(), aliases=()
        )
        plan = plan_entries(changed, existing=existing, candidates=[])
        assert len(plan.updates) == 5 and not plan.inserts
        entry_rows.apply_plan(db, feed_id, plan, later)
    rows = store.conn.execute("SELECT title, last_changed FROM entries ORDER BY id").fetchall()
    assert [title for title, _ in rows] == [f"Post number {n}, edited" for n in range(5)][::-1]
    assert {changed_at for _, changed_at in rows} == {to_db(later)}
    assert store.conn.execute("SELECT count(*) FROM enclosures").fetchone()[0] == 0
    assert (
        store.conn.execute(
            "SELECT count(*) FROM entries_fts WHERE entries_fts MATCH 'peppers'"
        ).fetchone()[0]
        == 5
    )
    store.close()
