"""Polling end to end against a real HTTP server on loopback and a real SQLite file."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from feedfactory import Item, atom, rss
from feedserver import FeedServer, Response

from aggregator.config import Settings, settings_from_mapping
from aggregator.models import FeedSource, PollSummary
from aggregator.pipeline import poll_feeds
from aggregator.sources import add_source
from aggregator.store import Store
from aggregator.store import feeds as feed_rows

START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


def make_settings(tmp_path: Path, **fetch: Any) -> Settings:
    raw: dict[str, Any] = {
        "database": str(tmp_path / "db.sqlite3"),
        "fetch": {"allow_private_addresses": True, "total_timeout": 5.0, **fetch},
        "poll": {"parse_workers": 1},
    }
    return settings_from_mapping(raw, env={}, path=tmp_path / "config.toml")


def poll(settings: Settings, store: Store, clock: Clock, **kwargs: Any) -> list[PollSummary]:
    return asyncio.run(poll_feeds(settings, store, clock=clock, **kwargs))


def add(store: Store, url: str) -> int:
    feed, _ = add_source(store, FeedSource(url=url), origin="cli", now=START)
    return feed.id


def rows(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return store.conn.execute(sql, params).fetchall()


@pytest.fixture
def setup(tmp_path: Path):
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    yield settings, store, Clock()
    assert store.integrity_ok()
    store.close()


ITEMS = [
    Item("First post", link="https://blog.test/first", guid="g1"),
    Item(
        "Second post",
        link="https://blog.test/second",
        guid="g2",
        published=datetime(2026, 11, 2, tzinfo=UTC),
    ),
]


def test_poll_stores_entries_and_summarises(setup, feed_server: FeedServer) -> None:
    settings, store, clock = setup
    feed_id = add(store, feed_server.add("/a.xml", body=rss(ITEMS), etag='"v1"'))
    (summary,) = poll(settings, store, clock)
    assert summary.status == "ok"
    assert summary.new == 2
    titles = [r[0] for r in rows(store, "SELECT title FROM entries ORDER BY id")]
    assert titles == ["First post", "Second post"]  # stored oldest first
    feed = feed_rows.get_feed(store.db, feed_id)
    assert feed is not None and feed.etag == '"v1"' and feed.title == "Test blog"
    assert feed.backlog_seq == 2
    assert rows(store, "SELECT outcome, status FROM fetches") == [("ok", 200)]


def test_second_poll_of_unchanged_feed_is_conditional_and_writes_no_entries(
    setup, feed_server: FeedServer
) -> None:
    settings, store, clock = setup
    add(
        store,
        feed_server.add(
            "/a.xml", body=rss(ITEMS), etag='"v1"', last_modified="Sun, 01 Nov 2026 12:00:00 GMT"
        ),
    )
    poll(settings, store, clock)
    changes_before = store.conn.total_changes
    entries_before = rows(store, "SELECT id, last_changed FROM entries")
    clock.now += timedelta(hours=1)
    (summary,) = poll(settings, store, clock)
    assert summary.status == "not_modified"
    second = feed_server.requests_for("/a.xml")[-1]
    assert second.headers.get("if-none-match") == '"v1"'
    assert second.headers.get("if-modified-since") == "Sun, 01 Nov 2026 12:00:00 GMT"
    assert rows(store, "SELECT id, last_changed FROM entries") == entries_before
    assert rows(store, "SELECT outcome FROM fetches ORDER BY id") == [("ok",), ("not_modified",)]
    assert store.conn.total_changes - changes_before <= 3  # feed row + fetch record only


def test_changed_entry_updates_in_place_and_is_not_new_again(
    setup, feed_server: FeedServer
) -> None:
    settings, store, clock = setup
    url = feed_server.add("/a.xml", body=rss(ITEMS))
    add(store, url)
    poll(settings, store, clock)
    ((first_id, first_seen),) = rows(
        store, "SELECT id, first_seen FROM entries WHERE key LIKE 'guid:%g1'"
    )
    edited = [Item("First post (edited)", link="https://blog.test/first", guid="g1"), ITEMS[1]]
    feed_server.add("/a.xml", body=rss(edited))
    clock.now += timedelta(hours=1)
    (summary,) = poll(settings, store, clock)
    assert (summary.new, summary.updated) == (0, 1)
    assert rows(store, "SELECT id, title, first_seen FROM entries WHERE id = ?", first_id) == [
        (first_id, "First post (edited)", first_seen)
    ]
    assert rows(store, "SELECT count(*) FROM entries") == [(2,)]


def test_cross_post_on_two_blogs_is_stored_once_as_a_story(setup, feed_server: FeedServer) -> None:
    settings, store, clock = setup
    body = "<p>" + " ".join(f"word{i}" for i in range(120)) + "</p>"
    a = feed_server.add(
        "/a.xml", body=rss([Item("Layers meets Agder", link="https://a.test/agder", body=body)])
    )
    b = feed_server.add(
        "/b.xml",
        body=atom(
            [
                Item(
                    "Layers meets Agder",
                    link="https://b.test/2026/11/agder.html?utm_source=x",
                    body=body + "<p>Cross-posted from the project blog.</p>",
                )
            ]
        ),
    )
    add(store, a)
    poll(settings, store, clock)
    add(store, b)
    clock.now += timedelta(minutes=5)
    summaries = poll(settings, store, clock)
    by_url = {s.url: s for s in summaries}
    assert by_url[b].duplicates == 1
    stored = rows(store, "SELECT id, duplicate_of FROM entries ORDER BY id")
    assert stored[0][1] is None and stored[1][1] == stored[0][0]


def test_errors_are_recorded_and_other_feeds_carry_on(setup, feed_server: FeedServer) -> None:
    settings, store, clock = setup
    good = feed_server.add("/good.xml", body=rss(ITEMS))
    broken = feed_server.add(
        "/broken.xml", body=b"<rss><channel><item><title>oops", content_type="text/xml"
    )
    failing = feed_server.add("/fail.xml", status=500, body=b"boom")
    html = feed_server.add(
        "/page",
        body=b'<html><head><link rel="alternate" type="application/rss+xml" href="/good.xml">'
        b"</head><body>hi</body></html>",
        content_type="text/html",
    )
    for url in (good, broken, failing, html):
        add(store, url)
    summaries = {s.url: s for s in poll(settings, store, clock)}
    assert summaries[good].status == "ok" and summaries[good].new == 2
    assert summaries[failing].status == "error" and "500" in (summaries[failing].error or "")
    assert summaries[html].status == "error"
    assert "HTML" in (summaries[html].error or "") and "good.xml" in (summaries[html].error or "")
    for summary in summaries.values():
        assert summary.error is None or "\n" not in summary.error
    failing_feed = feed_rows.feed_by_url(store.db, failing)
    assert failing_feed is not None and failing_feed.error_count == 1
    assert failing_feed.next_poll_at is not None and failing_feed.next_poll_at > clock.now


def test_h9_empty_200_leaves_earlier_entries_untouched(setup, feed_server: FeedServer) -> None:
    settings, store, clock = setup
    url = feed_server.add_sequence("/a.xml", [Response(body=rss(ITEMS)), Response(body=b"")])
    add(store, url)
    poll(settings, store, clock)
    before = rows(store, "SELECT * FROM entries ORDER BY id")
    clock.now += timedelta(hours=1)
    (summary,) = poll(settings, store, clock)
    assert summary.status == "error"
    assert rows(store, "SELECT * FROM entries ORDER BY id") == before


def test_h9_changing_etag_on_identical_body_creates_no_duplicates(
    setup, feed_server: FeedServer
) -> None:
    settings, store, clock = setup
    url = feed_server.add_sequence(
        "/a.xml", [Response(body=rss(ITEMS), etag=f'"v{n}"') for n in range(3)]
    )
    add(store, url)
    for _ in range(3):
        poll(settings, store, clock)
        clock.now += timedelta(hours=1)
    assert rows(store, "SELECT count(*) FROM entries") == [(2,)]


def test_410_disables_and_301_moves_the_feed(setup, feed_server: FeedServer) -> None:
    settings, store, clock = setup
    gone = feed_server.add("/gone.xml", status=410, body=b"gone")
    feed_server.add("/new.xml", body=rss(ITEMS))
    moved = feed_server.add_redirect("/old.xml", "/new.xml", status=301)
    temporary = feed_server.add_redirect("/tmp.xml", "/new.xml", status=302)
    gone_id, moved_id, temp_id = add(store, gone), add(store, moved), add(store, temporary)
    poll(settings, store, clock)
    gone_feed = feed_rows.get_feed(store.db, gone_id)
    assert (
        gone_feed is not None
        and not gone_feed.enabled
        and "410" in (gone_feed.disabled_reason or "")
    )
    moved_feed = feed_rows.get_feed(store.db, moved_id)
    assert moved_feed is not None and moved_feed.url == feed_server.url("/new.xml")
    temp_feed = feed_rows.get_feed(store.db, temp_id)
    assert temp_feed is not None and temp_feed.url == temporary


def test_h6_retry_after_defers_the_next_poll(setup, feed_server: FeedServer) -> None:
    settings, store, clock = setup
    url = feed_server.add(
        "/busy.xml", status=429, body=b"slow down", headers={"Retry-After": "7200"}
    )
    feed_id = add(store, url)
    poll(settings, store, clock)
    feed = feed_rows.get_feed(store.db, feed_id)
    assert feed is not None and feed.next_poll_at is not None
    assert feed.next_poll_at >= clock.now + timedelta(seconds=7200)
    # Due-only polling leaves it alone until then: the server sees no retry storm.
    clock.now += timedelta(hours=1)
    assert poll(settings, store, clock, due_only=True) == []
    assert len(feed_server.requests_for("/busy.xml")) == 1


def test_snapshots_are_read_instead_of_the_network(tmp_path: Path) -> None:
    snapshot = tmp_path / "blog.xml"
    snapshot.write_bytes(rss(ITEMS))
    (tmp_path / "config.toml").write_text(
        f'database = "db.sqlite3"\n[poll]\nuse_snapshots = true\nparse_workers = 1\n'
        f'[[feeds]]\nurl = "https://blog.invalid/feed/"\nsnapshot = "{snapshot.name}"\n'
    )
    from aggregator.config import load_settings
    from aggregator.sources import sync_configured_feeds

    settings = load_settings(tmp_path / "config.toml", {})
    store = Store.open(settings.database)
    sync_configured_feeds(store, settings, START)
    (summary,) = poll(settings, store, Clock())
    assert summary.status == "ok" and summary.new == 2
    assert summary.url == "https://blog.invalid/feed/"
    store.close()


def test_after_downtime_overdue_feeds_are_spread_not_polled_at_once(setup) -> None:
    """After three days of downtime, 40 overdue feeds get next-poll times spread over
    five minutes, most overdue first; a batch's worth would be left as they are."""
    from aggregator.pipeline import spread_catch_up

    _settings, store, clock = setup
    ids = [add(store, f"https://blog{n}.test/feed") for n in range(40)]
    with store.write() as db:
        for n, feed_id in enumerate(ids):
            feed_rows.set_next_poll(db, feed_id, START - timedelta(days=3, minutes=n))
    clock.now = START
    assert spread_catch_up(store, clock.now, batch=64, over=timedelta(minutes=5)) == 0
    assert spread_catch_up(store, clock.now, batch=10, over=timedelta(minutes=5)) == 40
    feeds = {f.id: f for f in feed_rows.list_feeds(store.db)}
    times = [feeds[i].next_poll_at for i in reversed(ids)]  # most overdue first
    assert all(t is not None for t in times)
    assert times == sorted(times)  # type: ignore[type-var]
    assert times[0] >= START and times[-1] <= START + timedelta(minutes=5)  # type: ignore[operator]
    due_now = feed_rows.due_feeds(store.db, START + timedelta(seconds=30))
    assert 0 < len(due_now) < 10  # a trickle, not all 40 at once


def test_a_parsing_process_that_dies_fails_its_feed_only_and_parsing_goes_on(
    setup, feed_server: FeedServer
) -> None:
    """A worker killed mid-document (out of memory, OOM killer, a crash in a library):
    that feed gets a one-line error and keeps its entries; the next document is parsed
    by a fresh process."""
    import multiprocessing
    import os
    import signal

    from aggregator.pipeline import open_poller

    settings, store, clock = setup
    body = "<p>" + "word " * 6000 + "</p>"
    big_items = [Item(f"Long {n}", link=f"https://big.test/{n}", body=body) for n in range(450)]
    big = feed_server.add("/big.xml", body=rss(big_items))
    small = feed_server.add("/small.xml", body=rss(ITEMS))
    big_id, small_id = add(store, big), add(store, small)

    async def scenario() -> tuple[PollSummary, PollSummary]:
        async with open_poller(settings, store, clock=clock) as poller:
            feeds = {f.id: f for f in await poller.choose()}
            task = asyncio.create_task(poller.poll(feeds[big_id]))
            while not any(r.ended for r in feed_server.requests_for("/big.xml")):  # noqa: ASYNC110 - the server is another thread
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # the worker is reading the document now
            for child in multiprocessing.active_children():
                os.kill(child.pid or 0, signal.SIGKILL)
            broken = await task
            after = await poller.poll(feeds[small_id])
            return broken, after

    broken, after = asyncio.run(scenario())
    assert broken.status == "error"
    assert broken.error is not None and "parsing process died" in broken.error
    assert "\n" not in broken.error
    assert after.status == "ok" and after.new == 2
    assert rows(store, "SELECT count(*) FROM entries WHERE feed_id = ?", big_id) == [(0,)]
    big_feed = feed_rows.get_feed(store.db, big_id)
    assert big_feed is not None and big_feed.enabled and big_feed.error_count == 1


def test_opml_placeholder_titles_give_way_to_the_feeds_own_title(
    setup, feed_server: FeedServer
) -> None:
    """An outline whose text is empty or the feed URL names nothing: the first successful
    poll names the source after the feed; a name the operator typed stays."""
    from aggregator.sources import import_opml

    settings, store, clock = setup
    as_url = feed_server.add("/as-url.xml", body=rss(ITEMS, title="Blog Named In Its Feed"))
    empty = feed_server.add("/empty.xml", body=atom(ITEMS, title="Atom & Its Title"))
    typed = feed_server.add("/typed.xml", body=rss(ITEMS, title="The Feed's Own Title"))
    legacy = feed_server.add("/legacy.xml", body=rss(ITEMS, title="Legacy Feed Title"))
    opml = (
        '<?xml version="1.0"?><opml version="2.0"><head><title>s</title></head><body>'
        f'<outline type="rss" text="{as_url}" xmlUrl="{as_url}"/>'
        f'<outline type="rss" text="" xmlUrl="{empty}"/>'
        f'<outline type="rss" text="Operator Name" xmlUrl="{typed}"/>'
        "</body></opml>"
    ).encode()
    report = import_opml(store, opml, name="subs.opml", now=START)
    assert len(report.added) == 3
    # A row stored by an earlier version with the URL as its name is mended too.
    with store.write() as db:
        feed_rows.add_feed(db, url=legacy, title=legacy, origin="opml", now=START)
    before = {feed.url: feed.title for feed in feed_rows.list_feeds(store.db)}
    assert before == {as_url: "", empty: "", typed: "Operator Name", legacy: legacy}

    summaries = poll(settings, store, clock)
    assert {s.status for s in summaries} == {"ok"}
    titles = {feed.url: feed.title for feed in feed_rows.list_feeds(store.db)}
    assert titles == {
        as_url: "Blog Named In Its Feed",
        empty: "Atom & Its Title",
        typed: "Operator Name",
        legacy: "Legacy Feed Title",
    }
    named = {s.url: s.title for s in summaries}
    assert named[as_url] == "Blog Named In Its Feed" and named[legacy] == "Legacy Feed Title"

    # Later polls keep the name (the feed retitling itself does not rename the source).
    feed_server.add("/as-url.xml", body=rss(ITEMS, title="Renamed Later"), etag='"v2"')
    clock.now += timedelta(days=1)
    poll(settings, store, clock)
    assert feed_rows.feed_by_url(store.db, as_url).title == "Blog Named In Its Feed"
