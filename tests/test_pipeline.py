"""Polling end to end against a real HTTP server on loopback and a real SQLite file."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from feedfactory import Item, atom, rss
from feedserver import FeedServer, Response

from aggregator.config import Settings, settings_from_mapping
from aggregator.decide import DOWNGRADE_WARNING
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


RSS_TYPE = {"content-type": "application/rss+xml; charset=utf-8"}


def scripted(
    answers: dict[str, list[httpx.Response]],
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A network for tests of what the poll decides: URL -> its answers in turn (the
    last one repeats); every request is kept. Tests of the real network path use the
    loopback server instead."""
    seen: list[httpx.Request] = []
    given = {url: list(responses) for url, responses in answers.items()}

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        queue = given.get(str(request.url))
        if not queue:
            return httpx.Response(404, content=b"not found")
        next_one = queue.pop(0) if len(queue) > 1 else queue[0]
        return httpx.Response(
            next_one.status_code, headers=next_one.headers, content=next_one.content
        )

    return httpx.MockTransport(answer), seen


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


def test_errors_are_recorded_and_other_feeds_carry_on(setup) -> None:
    settings, store, clock = setup
    good, broken = "https://blog.test/good.xml", "https://blog.test/broken.xml"
    failing, html = "https://blog.test/fail.xml", "https://blog.test/page"
    transport, _ = scripted(
        {
            good: [httpx.Response(200, content=rss(ITEMS), headers=RSS_TYPE)],
            broken: [
                httpx.Response(
                    200,
                    content=b"<rss><channel><item><title>oops",
                    headers={"content-type": "text/xml"},
                )
            ],
            failing: [httpx.Response(500, content=b"boom")],
            html: [
                httpx.Response(
                    200,
                    content=b'<html><head><link rel="alternate" type="application/rss+xml"'
                    b' href="/good.xml"></head><body>hi</body></html>',
                    headers={"content-type": "text/html"},
                )
            ],
        }
    )
    for url in (good, broken, failing, html):
        add(store, url)
    summaries = {s.url: s for s in poll(settings, store, clock, transport=transport)}
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


def test_410_disables_and_301_moves_the_feed(setup) -> None:
    settings, store, clock = setup
    gone, new = "https://blog.test/gone.xml", "https://blog.test/new.xml"
    moved, temporary = "https://blog.test/old.xml", "https://blog.test/tmp.xml"
    transport, _ = scripted(
        {
            gone: [httpx.Response(410, content=b"gone")],
            new: [httpx.Response(200, content=rss(ITEMS), headers=RSS_TYPE)],
            moved: [httpx.Response(301, headers={"location": "/new.xml"})],
            temporary: [httpx.Response(302, headers={"location": "/new.xml"})],
        }
    )
    gone_id, moved_id, temp_id = add(store, gone), add(store, moved), add(store, temporary)
    poll(settings, store, clock, transport=transport)
    gone_feed = feed_rows.get_feed(store.db, gone_id)
    assert (
        gone_feed is not None
        and not gone_feed.enabled
        and "410" in (gone_feed.disabled_reason or "")
    )
    moved_feed = feed_rows.get_feed(store.db, moved_id)
    assert moved_feed is not None and moved_feed.url == new
    temp_feed = feed_rows.get_feed(store.db, temp_id)
    assert temp_feed is not None and temp_feed.url == temporary


def test_h6_retry_after_defers_the_next_poll(setup) -> None:
    settings, store, clock = setup
    url = "https://blog.test/busy.xml"
    transport, seen = scripted(
        {url: [httpx.Response(429, content=b"slow down", headers={"Retry-After": "7200"})]}
    )
    feed_id = add(store, url)
    poll(settings, store, clock, transport=transport)
    feed = feed_rows.get_feed(store.db, feed_id)
    assert feed is not None and feed.next_poll_at is not None
    assert feed.next_poll_at >= clock.now + timedelta(seconds=7200)
    # Due-only polling leaves it alone until then: the server sees no retry storm.
    clock.now += timedelta(hours=1)
    assert poll(settings, store, clock, due_only=True, transport=transport) == []
    assert len(seen) == 1


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
            while not multiprocessing.active_children():  # noqa: ASYNC110 - started on a thread
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


# --- identity: distinct entries of one document stay distinct (DESIGN §5.1) -----------


def _rss_items(items: list[str], title: str = "Blog") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>'
        f"<title>{title}</title><link>https://blog.example.org/</link>"
        "<description>d</description>" + "".join(items) + "</channel></rss>"
    ).encode()


def _comment(n: int, post: int = 77) -> str:
    return (
        f"<item><title>Comment on Hello by reader {n}</title>"
        f"<link>https://blog.example.org/?p={post}#comment-{n}</link>"
        f'<guid isPermaLink="false">https://blog.example.org/?p={post}#comment-{n}</guid>'
        f"<pubDate>Mon, 16 Feb 2026 10:{n % 60:02d}:00 +0000</pubDate>"
        f"<description>Comment number {n}.</description></item>"
    )


# The RSS 2.0 specification's sample (Scripting News): items without titles, each
# identified by an anchor into one archive page per day.
SCRIPTING_NEWS_GUIDS = [
    "http://archive.scripting.com/2002/09/30#When:12:28:52AM",
    "http://archive.scripting.com/2002/09/29#When:8:32:51PM",
    "http://archive.scripting.com/2002/09/29#When:6:56:02PM",
    "http://archive.scripting.com/2002/09/29#When:6:50:11PM",
    "http://archive.scripting.com/2002/09/29#When:6:31:07PM",
    "http://archive.scripting.com/2002/09/29#When:4:52:53PM",
    "http://archive.scripting.com/2002/09/28#When:11:30:27PM",
    "http://archive.scripting.com/2002/09/28#When:3:47:16PM",
    "http://archive.scripting.com/2002/09/28#When:3:24:34PM",
]


def _stored_titles(store: Store, feed_id: int) -> list[str]:
    return [
        r[0]
        for r in rows(store, "SELECT title FROM entries WHERE feed_id = ? ORDER BY id", feed_id)
    ]


def test_wordpress_comment_feed_keeps_every_comment_across_polls(
    setup, feed_server: FeedServer
) -> None:
    settings, store, clock = setup
    url = feed_server.add_sequence(
        "/comments.xml",
        [
            Response(body=_rss_items([_comment(403), _comment(402), _comment(401)])),
            Response(body=_rss_items([_comment(405), _comment(404), _comment(403)])),
        ],
    )
    feed_id = add(store, url)
    (first,) = poll(settings, store, clock)
    assert first.new == 3
    clock.now += timedelta(hours=1)
    (second,) = poll(settings, store, clock)
    assert (second.new, second.updated) == (2, 0)
    assert sorted(_stored_titles(store, feed_id)) == [
        f"Comment on Hello by reader {n}" for n in range(401, 406)
    ]


def test_rss_spec_sample_with_anchored_guids_stores_nine_entries(
    setup, feed_server: FeedServer
) -> None:
    settings, store, clock = setup
    items = [
        f"<item><description>Item {n}: a note from Scripting News.</description>"
        f"<pubDate>Sun, 29 Sep 2002 {10 + n}:00:00 GMT</pubDate><guid>{guid}</guid></item>"
        for n, guid in enumerate(SCRIPTING_NEWS_GUIDS)
    ]
    feed_id = add(store, feed_server.add("/scripting.xml", body=_rss_items(items)))
    (summary,) = poll(settings, store, clock)
    assert summary.new == 9
    guids = {r[0] for r in rows(store, "SELECT guid FROM entries WHERE feed_id = ?", feed_id)}
    assert guids == set(SCRIPTING_NEWS_GUIDS)


def test_one_page_site_and_shared_links_keep_distinct_entries(
    setup, feed_server: FeedServer
) -> None:
    """Three ways a publisher tells entries apart without distinct pages: anchors in
    Atom ids, titles of items sharing one link, and texts of items with neither GUID
    nor link."""
    settings, store, clock = setup
    now_page = atom(
        [
            Item(
                f"Now {day}",
                link=f"https://site.test/now.html#{day}",
                guid=f"https://site.test/now.html#{day}",
            )
            for day in ("2026-02-16", "2026-02-17", "2026-02-18")
        ]
    )
    shared_link = _rss_items(
        [
            f"<item><title>{t}</title><link>https://blog.example.org/</link>"
            f"<description>{t} text</description></item>"
            for t in ("Monday notes", "Tuesday notes", "Wednesday notes")
        ]
    )
    bare = _rss_items(
        [
            f"<item><title>Status</title><pubDate>Mon, 16 Feb 2026 10:00:00 +0000</pubDate>"
            f"<description>{text}</description></item>"
            for text in ("Deployed the parser.", "Rolled the parser back.")
        ]
    )
    ids = [
        add(store, feed_server.add("/now.xml", body=now_page)),
        add(store, feed_server.add("/shared.xml", body=shared_link)),
        add(store, feed_server.add("/bare.xml", body=bare)),
    ]
    poll(settings, store, clock)
    clock.now += timedelta(hours=1)
    summaries = poll(settings, store, clock)  # the same documents again: nothing new
    assert all(s.new == 0 and s.updated == 0 for s in summaries)
    assert sorted(_stored_titles(store, ids[0])) == [
        "Now 2026-02-16",
        "Now 2026-02-17",
        "Now 2026-02-18",
    ]
    assert sorted(_stored_titles(store, ids[1])) == [
        "Monday notes",
        "Tuesday notes",
        "Wednesday notes",
    ]
    texts = rows(store, "SELECT text FROM entries WHERE feed_id = ? ORDER BY text", ids[2])
    assert texts == [("Deployed the parser.",), ("Rolled the parser back.",)]


def test_guid_moving_to_https_updates_the_entry_instead_of_adding_one(
    setup, feed_server: FeedServer
) -> None:
    settings, store, clock = setup
    old = [Item("Hello", link="http://blog.test/hello", guid="http://blog.test/?p=12")]
    new = [Item("Hello", link="https://blog.test/hello", guid="https://www.blog.test/?p=12")]
    url = feed_server.add_sequence("/a.xml", [Response(body=rss(old)), Response(body=rss(new))])
    feed_id = add(store, url)
    poll(settings, store, clock)
    clock.now += timedelta(hours=1)
    (summary,) = poll(settings, store, clock)
    assert (summary.new, summary.updated) == (0, 1)
    assert rows(store, "SELECT guid FROM entries WHERE feed_id = ?", feed_id) == [
        ("https://www.blog.test/?p=12",)
    ]


def test_database_from_before_exact_keys_upgrades_without_duplicates(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """A database whose keys are canonical GUIDs with the fragment dropped: the upgrade
    re-keys it from the stored GUIDs, and the next poll finds every entry again."""
    from sqlite_utils import Database

    from aggregator.dedup import make_record
    from aggregator.models import ParsedEntry
    from aggregator.store import schema

    settings = make_settings(tmp_path)
    url = feed_server.add("/comments.xml", body=_rss_items([_comment(402), _comment(401)]))
    old = Database(str(settings.database))
    schema.migrations.apply(old, stop_before="m005_entry_alias")
    old.execute(
        "INSERT INTO feeds (id, url, added_at, backlog_seq) VALUES (1, ?, '2026-01-01T00:00:00.000000Z', 0)",
        [url],
    )
    # The old code stored comment 402 under the fragment-less key (401 was merged into it).
    parsed = ParsedEntry(
        guid="https://blog.example.org/?p=77#comment-402",
        link="https://blog.example.org/?p=77#comment-402",
        title="Comment on Hello by reader 402",
        author=None,
        summary_html="<p>Comment number 402.</p>",
        content_html="<p>Comment number 402.</p>",
        published=datetime(2026, 2, 16, 10, 42, tzinfo=UTC),
        updated=None,
    )
    rec = make_record(parsed, feed_url=url, text="Comment number 402.", now=START)
    old.execute(
        "INSERT INTO entries (feed_id, key, link_key, guid, link, canonical_url, title, norm_title, "
        "summary_html, content_html, text, content_hash, published, first_seen, last_changed) "
        "VALUES (1, 'guid:https://blog.example.org/?p=77', ?, ?, ?, ?, ?, ?, '', '', ?, ?, ?, ?, ?)",
        [
            "https://blog.example.org/?p=77",
            rec.guid,
            rec.link,
            "https://blog.example.org/?p=77",
            rec.title,
            rec.norm_title,
            rec.text,
            "old-hash",
            "2026-02-16T10:42:00.000000Z",
            "2026-02-16T11:00:00.000000Z",
            "2026-02-16T11:00:00.000000Z",
        ],
    )
    old.conn.commit()
    old.close()

    store = Store.open(settings.database)
    try:
        assert rows(store, "SELECT key, alias FROM entries") == [
            (
                "guid:https://blog.example.org/?p=77#comment-402",
                "guid:https://blog.example.org/?p=77",
            )
        ]
        (summary,) = poll(settings, store, Clock())
        assert (summary.new, summary.updated) == (1, 1)  # 401 is new; 402 refreshed
        assert sorted(_stored_titles(store, 1)) == [
            "Comment on Hello by reader 401",
            "Comment on Hello by reader 402",
        ]
        assert store.integrity_ok()
        # The full-text index still finds the re-keyed entry.
        assert rows(store, "SELECT rowid FROM entries_fts WHERE entries_fts MATCH '402'") != []
    finally:
        store.close()


# --- the entry cap keeps the newest (DESIGN §5.3) ----------------------------------------


def _archive(last: int) -> bytes:
    """A mailing-list archive listed oldest first: Message 0001 … Message <last>."""
    items = [
        Item(
            f"Message {n:04d}",
            link=f"https://lists.test/archive/{n}",
            guid=f"https://lists.test/archive/{n}",
            published=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=n),
        )
        for n in range(1, last + 1)
    ]
    return rss(items, title="Archive")


def test_archive_over_the_cap_keeps_its_newest_and_picks_up_the_next(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    raw: dict[str, Any] = {
        "database": str(tmp_path / "db.sqlite3"),
        "fetch": {"allow_private_addresses": True, "total_timeout": 5.0},
        "poll": {"parse_workers": 1},
        "limits": {"max_entries": 500},
    }
    settings = settings_from_mapping(raw, env={}, path=tmp_path / "config.toml")
    store = Store.open(settings.database)
    clock = Clock()
    try:
        url = feed_server.add_sequence(
            "/archive.xml", [Response(body=_archive(1200)), Response(body=_archive(1201))]
        )
        feed_id = add(store, url)
        (first,) = poll(settings, store, clock)
        assert first.new == 500
        assert first.warnings == (
            "1200 entries, over the cap of 500: kept the newest 500, skipped 700 older ones",
        )
        titles = _stored_titles(store, feed_id)
        assert sorted(titles) == [f"Message {n:04d}" for n in range(701, 1201)]
        ((latest,),) = rows(
            store,
            "SELECT title FROM entries WHERE feed_id = ? ORDER BY published DESC LIMIT 1",
            feed_id,
        )
        assert latest == "Message 1200"
        clock.now += timedelta(hours=1)
        (second,) = poll(settings, store, clock)
        assert (second.new, second.updated) == (1, 0)
        ((latest,),) = rows(
            store, "SELECT title FROM entries WHERE feed_id = ? ORDER BY id DESC LIMIT 1", feed_id
        )
        assert latest == "Message 1201"
    finally:
        store.close()


# --- cross-post credit: the earliest-published copy is the story (DESIGN §5.2) --------

_STORY_BODY = "<p>" + " ".join(f"word{i}" for i in range(120)) + "</p>"


def _copy(published: datetime) -> list[Item]:
    return [Item("Layers meets Agder", link=None, guid=None, body=_STORY_BODY, published=published)]


def test_cross_post_in_one_poll_credits_the_copy_published_first(
    setup, feed_server: FeedServer
) -> None:
    """Both blogs carry the story in the same poll; the later copy happens to be written
    first (its server answers faster). The earlier-published copy is still the story."""
    from aggregator.store import timeline

    settings, store, clock = setup
    early = feed_server.add(
        "/early.xml", body=rss(_copy(datetime(2026, 11, 20, 9, 0, tzinfo=UTC))), delay=0.5
    )
    late = feed_server.add("/late.xml", body=atom(_copy(datetime(2026, 11, 20, 15, 0, tzinfo=UTC))))
    early_id, late_id = add(store, early), add(store, late)
    summaries = {s.url: s for s in poll(settings, store, clock)}
    assert summaries[late].new == 1 and summaries[early].new == 1  # written second, yet the story
    stored = dict(rows(store, "SELECT feed_id, duplicate_of FROM entries"))
    ((early_entry,),) = rows(store, "SELECT id FROM entries WHERE feed_id = ?", early_id)
    assert stored == {early_id: None, late_id: early_entry}
    (shown,) = timeline.latest_entries(store.db)
    assert shown.feed_id == early_id
    assert [copy.feed_id for copy in shown.also_on] == [late_id]


def test_earlier_copy_arriving_in_a_later_poll_becomes_the_story_without_a_second_digest(
    setup, feed_server: FeedServer
) -> None:
    """The later copy was stored (and mailed) first; the original turns up a poll later.
    It becomes the story and the old one a copy of it, and a subscriber who already got
    the story is not sent it again."""
    from aggregator.selection import Subscriber, select_digest
    from aggregator.store import digests as digest_rows
    from aggregator.store import timeline

    settings, store, clock = setup
    add(
        store,
        feed_server.add("/late.xml", body=atom(_copy(datetime(2026, 11, 20, 15, 0, tzinfo=UTC)))),
    )
    poll(settings, store, clock)
    ((late_entry,),) = rows(store, "SELECT id FROM entries")
    early_url = feed_server.add(
        "/early.xml", body=rss(_copy(datetime(2026, 11, 20, 9, 0, tzinfo=UTC)))
    )
    early_id = add(store, early_url)
    clock.now += timedelta(hours=1)
    poll(settings, store, clock, feed_ids=[early_id])
    ((early_entry,),) = rows(store, "SELECT id FROM entries WHERE feed_id = ?", early_id)
    assert dict(rows(store, "SELECT id, duplicate_of FROM entries")) == {
        late_entry: early_entry,
        early_entry: None,
    }
    (shown,) = timeline.latest_entries(store.db)
    assert (shown.id, [c.entry_id for c in shown.also_on]) == (early_entry, [late_entry])

    def digest_for(watermark: int) -> list[int] | None:
        subscriber = Subscriber(
            id=1,
            email="a@example.org",
            status="confirmed",
            cadence="daily",
            feed_ids=None,
            watermark=watermark,
            created_at=START,
        )
        upto = early_entry
        found = digest_rows.candidates(store.db, subscriber, upto)
        stories = digest_rows.story_members(store.db, {c.story_id for c in found})
        plan = select_digest(subscriber, found, stories, upto=upto, max_per_source=20)
        return None if plan is None else [i.entry_id for s in plan.sections for i in s.items]

    assert digest_for(watermark=late_entry) is None  # already had it through the late copy
    assert digest_for(watermark=0) == [early_entry]  # a fresh reader gets the story once


def _episode(title: str, day: int) -> str:
    return (
        f"<item><title>{title}</title><link>https://podcast.example.org/</link>"
        f"<pubDate>{day:02d} Mar 2024 10:00:00 +0000</pubDate>"
        "<description>A new episode of our podcast is out. Listen now!</description></item>"
    )


def test_guidless_daily_item_on_the_home_link_is_a_new_entry_each_day(
    setup, feed_server: FeedServer
) -> None:
    """A podcast feed whose one item links to the home page, with a new title and date
    and the same body every day: each day's item is an entry of its own, while an edit
    that keeps the title (here a corrected date) stays one entry."""
    settings, store, clock = setup
    url = feed_server.add_sequence(
        "/podcast.xml",
        [
            Response(body=_rss_items([_episode("Episode 1: Cats", 4)])),
            Response(body=_rss_items([_episode("Episode 2: Dogs", 5)])),
            Response(body=_rss_items([_episode("Episode 2: Dogs", 6)])),
        ],
    )
    feed_id = add(store, url)
    summaries = []
    for _ in range(3):
        (summary,) = poll(settings, store, clock)
        summaries.append((summary.new, summary.updated))
        clock.now += timedelta(days=1)
    assert summaries == [(1, 0), (1, 0), (0, 1)]
    assert _stored_titles(store, feed_id) == ["Episode 1: Cats", "Episode 2: Dogs"]


def _release(version: str, updated: str, notes: str) -> str:
    return (
        f"<entry><id>tag:github.com,2008:Repository/1/{version}</id><title>{version}</title>"
        f'<link rel="alternate" href="https://github.example/o/r/releases/tag/{version}"/>'
        f'<updated>{updated}</updated><content type="html">{notes}</content></entry>'
    )


def _releases(*entries: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        '<title>Releases</title><link href="https://github.example/o/r/releases"/>'
        "<id>tag:github.com,2008:releases</id><updated>2026-11-20T00:00:00Z</updated>"
        + "".join(entries)
        + "</feed>"
    ).encode()


def test_atom_entry_dated_by_updated_only_keeps_its_first_date_when_edited(
    setup, feed_server: FeedServer
) -> None:
    """RFC 4287 §4.2.15: <updated> is the last edit. A release edited months later is
    updated in place and stays under the day it was first stored with; an entry with
    <published> takes the feed's correction as before."""
    settings, store, clock = setup
    url = feed_server.add_sequence(
        "/releases.atom",
        [
            Response(body=_releases(_release("v1.0", "2026-02-01T00:00:00Z", "notes"))),
            Response(body=_releases(_release("v1.0", "2026-11-20T00:00:00Z", "notes, fixed"))),
        ],
    )
    feed_id = add(store, url)
    poll(settings, store, clock)
    clock.now += timedelta(hours=1)
    (second,) = poll(settings, store, clock)
    assert (second.new, second.updated) == (0, 1)
    assert rows(store, "SELECT published, date_only FROM entries WHERE feed_id = ?", feed_id) == [
        ("2026-02-01T00:00:00.000000Z", 0)
    ]


def test_date_only_entry_is_stored_with_its_day_and_flag(setup, feed_server: FeedServer) -> None:
    settings, store, clock = setup
    body = _rss_items(
        [
            "<item><title>Day only</title><link>https://blog.example.org/d</link>"
            "<pubDate>Mon, 16 Nov 2026</pubDate></item>",
            "<item><title>Timed</title><link>https://blog.example.org/t</link>"
            "<pubDate>Mon, 16 Nov 2026 23:30:00 -0500</pubDate></item>",
        ]
    )
    feed_id = add(store, feed_server.add("/days.xml", body=body))
    poll(settings, store, clock)
    assert rows(
        store,
        "SELECT title, published, date_only FROM entries WHERE feed_id = ? ORDER BY title",
        feed_id,
    ) == [
        ("Day only", "2026-11-16T12:00:00.000000Z", 1),
        ("Timed", "2026-11-17T04:30:00.000000Z", 0),
    ]


def test_a_warm_poll_writes_its_bookkeeping_in_few_transactions(
    setup, feed_server: FeedServer
) -> None:
    """Polls that store no entries (304s, failures) share transactions: 40 unchanged
    feeds and 10 failing ones are recorded in far fewer than 50 commits, and every one
    of them has its fetch record and feed row, as if written one by one."""
    settings, store, clock = setup
    unchanged = [
        add(store, feed_server.add(f"/u{n}.xml", body=rss(ITEMS), etag=f'"u{n}"'))
        for n in range(40)
    ]
    failing = [add(store, feed_server.add(f"/f{n}.xml", status=500)) for n in range(10)]
    poll(settings, store, clock)
    clock.now += timedelta(hours=1)
    commits: list[str] = []

    def count_commits(sql: str) -> None:
        if sql.strip().upper() == "COMMIT":
            commits.append(sql)

    async def warm_poll() -> list[PollSummary]:
        from aggregator.pipeline import open_poller

        async with open_poller(settings, store, clock=clock) as poller:
            # the poller writes through its database thread's own connection
            await poller.db(lambda: store.conn.set_trace_callback(count_commits))
            try:
                return await poller.poll_many(await poller.choose())
            finally:
                await poller.db(lambda: store.conn.set_trace_callback(None))

    summaries = asyncio.run(warm_poll())
    statuses = {s.feed_id: s.status for s in summaries}
    assert {statuses[i] for i in unchanged} == {"not_modified"}
    assert {statuses[i] for i in failing} == {"error"}
    assert 1 <= len(commits) <= 10, len(commits)
    counts = dict(rows(store, "SELECT outcome, count(*) FROM fetches GROUP BY outcome"))
    assert counts == {"ok": 40, "error": 20, "not_modified": 40}
    for feed_id in failing:
        feed = feed_rows.get_feed(store.db, feed_id)
        assert feed is not None and feed.error_count == 2
        assert feed.next_poll_at is not None and feed.next_poll_at > clock.now
    for feed_id in unchanged:
        feed = feed_rows.get_feed(store.db, feed_id)
        assert feed is not None and feed.error_count == 0 and feed.last_polled_at == clock.now


def test_a_feed_removed_during_the_poll_is_skipped_and_the_others_are_stored(setup) -> None:
    """Another connection deletes feeds while their answers are in flight (between fetch
    and write): one with entries to store, one whose poll only books a 304 and one a
    failure, sharing the bookkeeping transaction with feeds that stay. The removed ones
    say so and write nothing; every other feed is stored; nobody reports a store error."""
    settings, store, clock = setup
    urls = {
        name: f"https://blog.test/{name}.xml"
        for name in ("keep", "gone_ok", "gone_304", "gone_err", "keep_304", "keep_err")
    }
    ids = {name: add(store, url) for name, url in urls.items()}
    other = Store.open(settings.database)
    removed: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        name = str(request.url).rsplit("/", 1)[-1].removesuffix(".xml")
        if name.startswith("gone"):  # a real delete, from another connection, mid-poll
            with other.write() as db:
                assert feed_rows.remove_feed(db, ids[name])
            removed.append(ids[name])
        if name.endswith("_304"):
            return httpx.Response(304)
        if name.endswith("_err"):
            return httpx.Response(500, content=b"boom")
        return httpx.Response(200, content=rss(ITEMS), headers=RSS_TYPE)

    summaries = {
        s.feed_id: s for s in poll(settings, store, clock, transport=httpx.MockTransport(answer))
    }
    other.close()
    assert sorted(removed) == sorted(ids[n] for n in ("gone_ok", "gone_304", "gone_err"))
    assert all(s.store_error is None for s in summaries.values())
    for name in ("gone_ok", "gone_304", "gone_err"):
        summary = summaries[ids[name]]
        assert summary.status == "skipped" and "removed during the poll" in summary.warnings[0]
    assert (summaries[ids["keep"]].status, summaries[ids["keep"]].new) == ("ok", 2)
    assert summaries[ids["keep_304"]].status == "not_modified"
    assert summaries[ids["keep_err"]].status == "error"
    assert rows(store, "SELECT DISTINCT feed_id FROM entries") == [(ids["keep"],)]
    assert sorted(r[0] for r in rows(store, "SELECT feed_id FROM fetches")) == sorted(
        ids[n] for n in ("keep", "keep_304", "keep_err")
    )
    assert rows(store, "SELECT count(*) FROM feeds WHERE next_poll_at IS NOT NULL") == [(3,)]


def test_a_move_to_a_url_another_feed_has_is_not_made_and_says_so(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    """Two feeds are permanently redirected (one to a document, one to a 304) to a URL
    that a third feed already polls: they are not moved or merged, and the poll's summary
    and a log warning name both feeds, so the operator sees it."""
    settings, store, clock = setup
    target = "https://blog.test/new.xml"
    moved, moved_304 = "https://blog.test/old.xml", "https://blog.test/older.xml"
    transport, _ = scripted(
        {
            target: [httpx.Response(200, content=rss(ITEMS), headers=RSS_TYPE)],
            moved: [httpx.Response(301, headers={"location": "/new.xml"})],
            moved_304: [httpx.Response(308, headers={"location": "/new304.xml"})],
            "https://blog.test/new304.xml": [httpx.Response(304)],
        }
    )
    holder_id, moved_id = add(store, target), add(store, moved)
    holder_304 = add(store, "https://blog.test/new304.xml")
    moved_304_id = add(store, moved_304)
    with caplog.at_level("WARNING", logger="aggregator.poll"):
        summaries = {s.feed_id: s for s in poll(settings, store, clock, transport=transport)}
    for feed_id, holder in ((moved_id, holder_id), (moved_304_id, holder_304)):
        summary = summaries[feed_id]
        assert summary.status in ("ok", "not_modified") and summary.store_error is None
        (note,) = summary.warnings
        assert f"feed {holder} already has" in note and "not moved" in note
        assert any(
            f"feed {feed_id} " in r.getMessage() and f"feed {holder} " in r.getMessage()
            for r in caplog.records
        )
    assert summaries[moved_id].new + summaries[moved_id].duplicates == 2
    moved_feed = feed_rows.get_feed(store.db, moved_id)
    assert moved_feed is not None and moved_feed.url == moved
    moved_304_feed = feed_rows.get_feed(store.db, moved_304_id)
    assert moved_304_feed is not None and moved_304_feed.url == moved_304


def test_an_https_feed_answered_over_plain_http_is_read_kept_https_and_said(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    """A redirect from https to plain http (permanent or not, to a document or to a 304)
    is followed for this poll, never stored, and every such poll says so."""
    settings, store, clock = setup
    moved, bounced = "https://blog.test/a.xml", "https://blog.test/b.xml"
    transport, _ = scripted(
        {
            moved: [httpx.Response(301, headers={"location": "http://blog.test/a.xml"})] * 2,
            "http://blog.test/a.xml": [httpx.Response(200, content=rss(ITEMS), headers=RSS_TYPE)],
            bounced: [httpx.Response(302, headers={"location": "http://blog.test/b.xml"})],
            "http://blog.test/b.xml": [httpx.Response(304)],
        }
    )
    moved_id, bounced_id = add(store, moved), add(store, bounced)
    with caplog.at_level("WARNING", logger="aggregator.poll"):
        summaries = {s.feed_id: s for s in poll(settings, store, clock, transport=transport)}
    assert summaries[moved_id].status == "ok" and summaries[moved_id].new == 2
    assert summaries[bounced_id].status == "not_modified"
    for feed_id, url in ((moved_id, moved), (bounced_id, bounced)):
        assert DOWNGRADE_WARNING in summaries[feed_id].warnings
        stored = feed_rows.get_feed(store.db, feed_id)
        assert stored is not None and stored.url == url
        assert any(
            f"feed {feed_id} " in r.getMessage() and "plain http" in r.getMessage()
            for r in caplog.records
        )
