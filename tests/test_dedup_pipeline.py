"""Distinct posts are never merged, real cross-posts are: polled end to end from a real
HTTP server on loopback into a real SQLite file (DESIGN §5)."""

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
from aggregator.store import Store, search, timeline

START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HOME = "http://example.net/"
# A story long enough to count as evidence (dedup.MIN_EVIDENCE_WORDS).
STORY = "<p>" + " ".join(f"word{i}" for i in range(60)) + "</p>"


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def setup(tmp_path: Path):
    raw: dict[str, Any] = {
        "database": str(tmp_path / "db.sqlite3"),
        "fetch": {"allow_private_addresses": True, "total_timeout": 5.0},
        "poll": {"parse_workers": 1},
    }
    settings = settings_from_mapping(raw, env={}, path=tmp_path / "config.toml")
    store = Store.open(settings.database)
    yield settings, store, Clock()
    assert store.integrity_ok()
    store.close()


def poll(settings: Settings, store: Store, clock: Clock, *feed_ids: int) -> list[PollSummary]:
    chosen = list(feed_ids) if feed_ids else None
    return asyncio.run(poll_feeds(settings, store, clock=clock, feed_ids=chosen))


def add(store: Store, url: str) -> int:
    feed, _ = add_source(store, FeedSource(url=url), origin="cli", now=START)
    return feed.id


def entries(store: Store) -> dict[str, tuple[int, int | None]]:
    """title -> (feed id, title of the story it is a copy of, or None)."""
    found = store.conn.execute(
        "SELECT e.title, e.feed_id, s.title FROM entries e "
        "LEFT JOIN entries s ON s.id = e.duplicate_of ORDER BY e.id"
    ).fetchall()
    return {title: (feed_id, story) for title, feed_id, story in found}


def at(minute: int) -> datetime:
    return datetime(2026, 11, 30, 0, minute, tzinfo=UTC)


def same_link_posts(count: int) -> list[Item]:
    """A blog whose every post links its home page, newest first."""
    return [
        Item(
            f"Same-link post {i}",
            link=HOME,
            guid=f"s-{i}",
            body=f"<p>Distinct body number {i} about topic {i * 7}</p>",
            published=at(10 + i),
        )
        for i in reversed(range(count))
    ]


def test_posts_sharing_the_home_page_link_stay_distinct_stories(
    setup, feed_server: FeedServer
) -> None:
    """Four posts of one blog link its home page, as does a post of another blog,
    polled first. None is a copy of another: the timeline and search show all five,
    and the first stored keeps its place."""
    settings, store, clock = setup
    other = feed_server.add(
        "/t.xml",
        body=rss(
            [
                Item(
                    "Unrelated post on T",
                    link=HOME,
                    guid="t-1",
                    body="<p>Completely different text on T</p>",
                    published=at(20),
                )
            ],
            title="T blog",
        ),
    )
    same = feed_server.add_sequence(
        "/samelink.xml",
        [
            Response(body=rss(same_link_posts(4), title="Same link blog")),
            Response(body=rss(same_link_posts(5), title="Same link blog")),
        ],
    )
    other_id, same_id = add(store, other), add(store, same)
    poll(settings, store, clock, other_id)
    clock.now += timedelta(minutes=5)
    (summary,) = poll(settings, store, clock, same_id)
    assert (summary.new, summary.duplicates) == (4, 0)
    clock.now += timedelta(hours=1)
    (summary,) = poll(settings, store, clock, same_id)  # a fifth post, a poll later
    assert (summary.new, summary.duplicates) == (1, 0)

    stored = entries(store)
    assert len(stored) == 6
    assert all(story is None for _, story in stored.values())
    assert len(timeline.latest_entries(store.db)) == 6
    upto = search.newest_id(store.db)
    found = search.count_matches(store.db, search.parse_query("distinct"), feed_id=None, upto=upto)
    assert found.count == 5
    found = search.count_matches(store.db, search.parse_query("unrelated"), feed_id=None, upto=upto)
    assert found.count == 1


def test_real_cross_posts_still_merge_and_the_first_stored_stays_the_story(
    setup, feed_server: FeedServer
) -> None:
    """The same article on three blogs: one URL (tracking parameters, http/https apart)
    with a title that agrees, or the same title and text under a blog's own URL."""
    settings, store, clock = setup
    first = feed_server.add(
        "/t.xml",
        body=rss(
            [
                Item(
                    "Shared story",
                    link="https://example.org/story?utm_source=rss",
                    guid="t-2",
                    body=STORY,
                    published=at(21),
                )
            ]
        ),
    )
    by_url = feed_server.add(
        "/u.xml",
        body=atom(
            [
                Item(
                    "Cross-post: Shared story (U version)",
                    link="http://example.org/story",
                    guid="u-1",
                    body="<p>Rewritten intro.</p>",
                    published=at(22),
                )
            ]
        ),
    )
    by_text = feed_server.add(
        "/v.xml",
        body=rss(
            [
                Item(
                    "Shared Story!",
                    link="https://v.example/2026/11/shared",
                    guid="v-1",
                    body=STORY + "<p>Cross-posted from T.</p>",
                    published=at(23),
                )
            ]
        ),
    )
    ids = [add(store, url) for url in (first, by_url, by_text)]
    for feed_id in ids:
        poll(settings, store, clock, feed_id)
        clock.now += timedelta(minutes=5)
    assert entries(store) == {
        "Shared story": (ids[0], None),
        "Cross-post: Shared story (U version)": (ids[1], "Shared story"),
        "Shared Story!": (ids[2], "Shared story"),
    }
    (shown,) = timeline.latest_entries(store.db)
    assert shown.title == "Shared story"
    assert sorted(copy.feed_id for copy in shown.also_on) == ids[1:]


def test_one_url_with_another_title_and_text_is_not_a_cross_post(
    setup, feed_server: FeedServer
) -> None:
    """Two blogs link one page (a product page, a talk) from posts of their own."""
    settings, store, clock = setup
    page = "https://conf.example/talks/42"
    a = feed_server.add(
        "/a.xml", body=rss([Item("My notes on talk 42", link=page, guid="a", body=STORY)])
    )
    b = feed_server.add(
        "/b.xml",
        body=rss([Item("Why I skipped the keynote", link=page, guid="b", body="<p>Other.</p>")]),
    )
    a_id, b_id = add(store, a), add(store, b)
    poll(settings, store, clock, a_id)
    poll(settings, store, clock, b_id)
    assert [story for _, story in entries(store).values()] == [None, None]


def _numbered(items: list[tuple[str, str]], site: str) -> bytes:
    """RSS whose GUIDs are bare numbers without isPermaLink (so "permalinks")."""
    body = "".join(
        f"<item><guid>{guid}</guid><title>{title}</title>"
        f"<description>{title}: a short note.</description>"
        "<pubDate>Mon, 30 Nov 2026 00:10:00 GMT</pubDate></item>"
        for guid, title in items
    )
    return (
        f'<?xml version="1.0"?><rss version="2.0"><channel><title>{site}</title>'
        f"<link>https://{site}.example/</link><description>d</description>{body}"
        "</channel></rss>"
    ).encode()


def test_numeric_guids_of_two_feeds_on_one_host_stay_apart(setup, feed_server: FeedServer) -> None:
    """GUIDs "1" and "2" are unique only inside their feed; two feeds served by one
    host use them for different posts."""
    settings, store, clock = setup
    a = feed_server.add("/a.xml", body=_numbered([("1", "Apples"), ("2", "Pears")], "a"))
    b = feed_server.add("/b.xml", body=_numbered([("1", "Boats"), ("2", "Trains")], "b"))
    a_id, b_id = add(store, a), add(store, b)
    poll(settings, store, clock, a_id)
    poll(settings, store, clock, b_id)
    stored = entries(store)
    assert len(stored) == 4 and all(story is None for _, story in stored.values())


def test_one_feed_never_holds_two_copies_of_a_story(setup, feed_server: FeedServer) -> None:
    """Blog A carries B's story; a later, distinct post of A with the same title and
    text (a re-run, dated earlier) is a post of its own, never a copy, and never takes
    the story from B."""
    settings, store, clock = setup
    b = feed_server.add(
        "/b.xml",
        body=rss([Item("Weekly notes", link="https://b.example/w", guid="b1", body=STORY)]),
    )
    original = Item("Weekly notes", link="https://a.example/w1", guid="a1", body=STORY)
    rerun = Item(
        "Weekly notes",
        link="https://a.example/w2",
        guid="a2",
        body=STORY,
        published=datetime(2026, 10, 30, tzinfo=UTC),
    )
    a = feed_server.add_sequence(
        "/a.xml", [Response(body=rss([original])), Response(body=rss([rerun, original]))]
    )
    b_id, a_id = add(store, b), add(store, a)
    poll(settings, store, clock, b_id)
    poll(settings, store, clock, a_id)
    clock.now += timedelta(hours=1)
    (summary,) = poll(settings, store, clock, a_id)
    assert (summary.new, summary.duplicates) == (1, 0)
    rows = store.conn.execute("SELECT feed_id, guid, duplicate_of FROM entries ORDER BY id")
    (b_entry, a1, a2) = rows.fetchall()
    assert b_entry == (b_id, "b1", None)
    assert a1 == (a_id, "a1", 1)
    assert a2 == (a_id, "a2", None)


def _bare(text: str) -> bytes:
    """One item with neither GUID, link nor date."""
    return (
        '<?xml version="1.0"?><rss version="2.0"><channel><title>Bare</title>'
        "<link>https://bare.example/</link><description>d</description>"
        f"<item><title>Status</title><description>{text}</description></item>"
        "</channel></rss>"
    ).encode()


def test_body_edit_of_an_entry_without_guid_link_or_date_updates_it(
    setup, feed_server: FeedServer
) -> None:
    settings, store, clock = setup
    url = feed_server.add_sequence(
        "/bare.xml",
        [Response(body=_bare("Deployed the new parser.")), Response(body=_bare("Deployed it."))],
    )
    feed_id = add(store, url)
    (first,) = poll(settings, store, clock, feed_id)
    clock.now += timedelta(hours=1)
    (second,) = poll(settings, store, clock, feed_id)
    assert (first.new, second.new, second.updated) == (1, 0, 1)
    assert store.conn.execute("SELECT text FROM entries").fetchall() == [("Deployed it.",)]


def _episode(show: str, title: str, audio: str) -> str:
    return (
        f"<item><guid>{show}-{audio}</guid><title>{title}</title>"
        f"<link>https://{show}.example/</link>"
        "<description>A new episode of our podcast is out. Listen now!</description>"
        f'<enclosure url="https://{show}.example/{audio}.mp3" type="audio/mpeg" length="1"/>'
        "<pubDate>Mon, 30 Nov 2026 00:10:00 GMT</pubDate></item>"
    )


def test_podcasts_with_one_episode_title_and_boilerplate_stay_apart(
    setup, feed_server: FeedServer
) -> None:
    """Two shows publish "Episode 12" the same day with the stock description: the same
    title and a one-line text are no evidence of one story."""
    settings, store, clock = setup

    def show(name: str) -> bytes:
        return (
            f'<?xml version="1.0"?><rss version="2.0"><channel><title>{name}</title>'
            f"<link>https://{name}.example/</link><description>d</description>"
            + _episode(name, "Episode 12", "e12")
            + _episode(name, "Episode 11", "e11")
            + "</channel></rss>"
        ).encode()

    ids = [add(store, feed_server.add(f"/{name}.xml", body=show(name))) for name in ("x", "y")]
    for feed_id in ids:
        poll(settings, store, clock, feed_id)
    found = store.conn.execute("SELECT feed_id, duplicate_of FROM entries").fetchall()
    assert len(found) == 4 and all(story is None for _, story in found)


def test_a_post_in_the_main_feed_and_a_category_feed_of_one_blog_is_one_story(
    setup, feed_server: FeedServer
) -> None:
    """The same post (one GUID, URL and title; the category feed gives an excerpt)
    reached through two subscriptions of one blog is stored once as a story."""
    settings, store, clock = setup
    post = Item(
        "Tuning SQLite for many writers",
        link="https://blog.example/2026/11/sqlite",
        guid="https://blog.example/?p=77",
        body=STORY,
    )
    excerpt = Item(post.title, link=post.link, guid=post.guid, body="<p>word0 word1 …</p>")
    main_id = add(store, feed_server.add("/feed.xml", body=rss([post])))
    category_id = add(store, feed_server.add("/category/db/feed.xml", body=rss([excerpt])))
    poll(settings, store, clock, main_id)
    (summary,) = poll(settings, store, clock, category_id)
    assert summary.duplicates == 1
    found = store.conn.execute("SELECT id, feed_id, duplicate_of FROM entries ORDER BY id")
    assert found.fetchall() == [(1, main_id, None), (2, category_id, 1)]
