"""Hostile feeds and servers through the whole pipeline: loopback server -> poll -> SQLite
-> web pages (THREATS H7, F5, F6), with an injected clock."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from feedfactory import Item, atom, rss
from feedserver import FeedServer, Response
from starlette.testclient import TestClient
from threatkit import ADMIN_PASSWORD, START, Clock, add, make_settings, poll, rows

from aggregator.config import Settings
from aggregator.errors import ParseError
from aggregator.limits import ParseLimits
from aggregator.prepare import prepare_feed
from aggregator.store import Store
from aggregator.store import feeds as feed_rows
from aggregator.web import create_app

ENTRY_TITLE = re.compile(r'<h3 class="entry-title"[^>]*><a [^>]*>([^<]*)</a>')


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Settings, Store, Clock]]:
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    yield settings, store, Clock()
    assert store.integrity_ok()
    store.close()


def client_for(settings: Settings, clock: Clock) -> TestClient:
    return TestClient(create_app(settings, clock=clock), base_url="https://news.example.org")


# --- H7: a 5xx storm over many cycles ----------------------------------------------------


def test_h7_5xx_storm_backs_off_to_the_cap_shows_on_health_pages_and_recovers(
    setup, feed_server: FeedServer
) -> None:
    """H7: a feed answering 503 (no Retry-After) and 500 for many cycles: the delay between
    polls doubles (with jitter) up to the cap, the feed is kept and its error shows on
    the source and admin pages; the first 200 restores the regular interval. A healthy
    feed on the same run keeps its own schedule."""
    settings, store, clock = setup
    policy = settings.poll.policy
    storm = [Response(status=503 if n % 2 else 500, body=b"down") for n in range(12)]
    ok = Response(body=rss([Item("Back again", link="https://storm.test/back", guid="b")]))
    url = feed_server.add_sequence("/storm.xml", [*storm, ok])
    feed_id = add(store, url)
    healthy = add(store, feed_server.add("/fine.xml", body=rss([Item("Fine", guid="f")])))

    delays: list[timedelta] = []
    for cycle in range(12):
        summaries = {s.feed_id: s for s in poll(settings, store, clock, due_only=True)}
        assert summaries[feed_id].status == "error"
        assert str(5) in (summaries[feed_id].error or "") and url in (
            summaries[feed_id].error or ""
        )
        feed = feed_rows.get_feed(store.db, feed_id)
        assert feed is not None and feed.enabled and feed.error_count == cycle + 1
        assert feed.next_poll_at is not None
        delays.append(feed.next_poll_at - clock.now)
        # Just before the time comes, nothing is fetched: the server counts no storm.
        clock.now = feed.next_poll_at - timedelta(seconds=1)
        before = len(feed_server.requests_for("/storm.xml"))
        poll(settings, store, clock, due_only=True)
        assert len(feed_server.requests_for("/storm.xml")) == before
        clock.now = feed.next_poll_at

    jitter = policy.jitter
    for n, delay in enumerate(delays):
        raw = min(policy.backoff_base * 2**n, policy.backoff_cap)
        assert raw * (1 - jitter) - timedelta(seconds=1) <= delay <= policy.backoff_cap
        assert delay >= policy.min_interval
    assert delays[-1] >= policy.backoff_cap * (1 - jitter)
    assert len(feed_server.requests_for("/storm.xml")) == 12
    assert rows(store, "SELECT count(*) FROM fetches WHERE feed_id = ?", feed_id) == [(12,)]

    with client_for(settings, clock) as client:
        source = client.get(f"/sources/{feed_id}")
        assert source.status_code == 200
        assert "Failing" in source.text and "HTTP 503" in source.text
        client.auth = ("admin", ADMIN_PASSWORD)
        admin = client.get("/admin")
        assert admin.status_code == 200 and "Failing" in admin.text and "503" in admin.text

    (summary,) = [s for s in poll(settings, store, clock, due_only=True) if s.feed_id == feed_id]
    assert (summary.status, summary.new) == ("ok", 1)
    feed = feed_rows.get_feed(store.db, feed_id)
    assert feed is not None and feed.error_count == 0 and feed.last_error is None
    assert feed.next_poll_at is not None
    back_to_normal = feed.next_poll_at - clock.now
    assert policy.interval * (1 - jitter) <= back_to_normal <= policy.interval * (1 + jitter)
    with client_for(settings, clock) as client:
        assert "Failing" not in client.get(f"/sources/{feed_id}").text
    healthy_feed = feed_rows.get_feed(store.db, healthy)
    assert healthy_feed is not None and healthy_feed.error_count == 0


# --- F5: absurd dates ----------------------------------------------------------------------


def raw_rss_items(items: list[tuple[str, str | None]]) -> bytes:
    """RSS with dates written verbatim (feedfactory only writes real dates)."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>',
        "<title>Dates</title><link>https://dates.test/</link><description>d</description>",
    ]
    for n, (title, date) in enumerate(items):
        parts.append(f"<item><title>{title}</title><link>https://dates.test/{n}</link>")
        parts.append(f"<guid>https://dates.test/{n}</guid>")
        if date is not None:
            parts.append(f"<pubDate>{date}</pubDate>")
        parts.append("<description>&lt;p&gt;Words.&lt;/p&gt;</description></item>")
    parts.append("</channel></rss>")
    return "".join(parts).encode()


ABSURD = [
    ("Year 2999", "Tue, 01 Jan 2999 00:00:00 GMT"),
    ("Year 1900", "Mon, 01 Jan 1900 00:00:00 GMT"),
    ("Thirtieth of February", "Mon, 30 Feb 2026 10:00:00 GMT"),
    ("Offset past a day", "Fri, 27 Nov 2026 10:00:00 +9900"),
    ("Garbage date", "yesterday-ish"),
    ("No date at all", None),
]
REAL = [
    ("Real post yesterday", "Fri, 27 Nov 2026 09:00:00 GMT"),
    ("Real post this morning", "Sat, 28 Nov 2026 08:00:00 GMT"),
]


def test_f5_absurd_dates_neither_crash_nor_pin_the_timeline_nor_repeat(
    setup, feed_server: FeedServer
) -> None:
    """F5: entries dated 2999, 1900, 30 February, +99:00, garbage or nothing are stored with
    their first-seen time (never a date in the future), keep it across polls, are never
    new twice, and a real post published later sits above them on the page and in the
    Atom feed."""
    settings, store, clock = setup
    later_post = ("Real post later", "Sat, 28 Nov 2026 14:00:00 GMT")
    url = feed_server.add_sequence(
        "/dates.xml",
        [
            Response(body=raw_rss_items(ABSURD + REAL)),
            Response(body=raw_rss_items([*ABSURD, *REAL, later_post])),
        ],
    )
    add(store, url)
    (first,) = poll(settings, store, clock)
    assert first.status == "ok" and first.new == len(ABSURD) + len(REAL)
    stored = dict(rows(store, "SELECT title, published FROM entries"))
    first_seen = START.strftime("%Y-%m-%dT%H:%M:%S")
    for title, _ in ABSURD[:3] + ABSURD[4:]:
        assert stored[title].startswith(first_seen), (title, stored[title])
    assert all(published[:19] <= first_seen for published in stored.values())

    later = Clock(START + timedelta(hours=3))
    (second,) = poll(settings, store, later)
    assert (second.new, second.updated) == (1, 0)
    again = dict(rows(store, "SELECT title, published FROM entries"))
    assert {title: again[title] for title in stored} == stored  # first-seen dates kept
    with client_for(settings, later) as client:
        page = client.get("/")
        assert page.status_code == 200
        titles = ENTRY_TITLE.findall(page.text)
        assert sorted(titles) == sorted(t for t, _ in [*ABSURD, *REAL, later_post])
        assert titles[0] == "Real post later"
        feed = client.get("/feed.atom")
        assert feed.status_code == 200 and "2999-" not in feed.text and "1900-" not in feed.text
        atom_titles = re.findall(r"<entry>.*?<title[^>]*>([^<]*)</title>", feed.text, re.S)
        assert atom_titles[0] == "Real post later"


# --- F6: GUIDs that churn between polls ----------------------------------------------------

CHURN = [
    # One post per column; each poll spells its id differently.
    ["http://churn.test/?p=1", "https://churn.test/?p=1", "https://churn.test/?p=1&utm_source=x"],
    ["http://churn.test/?p=2", "https://CHURN.test/?p=2#top", "https://churn.test:443/?p=2"],
    ["/?p=3", "https://churn.test/?p=3", "http://churn.test/?p=3&fbclid=abc"],
]


def churned(poll_number: int, *, duplicate: bool = False) -> bytes:
    items = [
        Item(
            f"Post {n + 1}",
            link=f"https://churn.test/posts/{n + 1}",
            guid=spellings[poll_number],
            published=datetime(2026, 11, 20 + n, tzinfo=UTC),
        )
        for n, spellings in enumerate(CHURN)
    ]
    if duplicate:  # the same id twice inside one document
        items.append(
            Item(
                "Post 1 again",
                link="https://churn.test/posts/1",
                guid=CHURN[0][poll_number],
                published=datetime(2026, 11, 20, tzinfo=UTC),
            )
        )
    return rss(items, link="https://churn.test/")


@pytest.mark.parametrize("kind", ["rss", "atom"])
def test_f6_guid_churn_and_duplicate_guids_make_no_duplicates(
    setup, feed_server: FeedServer, kind: str
) -> None:
    """F6: ids that change between polls (http->https, relative, tracking parameters, host
    case, default port, fragments) and an id repeated inside one document: three posts
    stay three entries over many polls, and the page shows each once."""
    settings, store, clock = setup
    if kind == "rss":
        bodies = [churned(n, duplicate=n == 1) for n in range(3)]
    else:
        bodies = [
            atom(
                [
                    Item(f"Post {n + 1}", link=f"https://churn.test/posts/{n + 1}", guid=s[p])
                    for n, s in enumerate(CHURN)
                ],
                link="https://churn.test/",
            )
            for p in range(3)
        ]
    url = feed_server.add_sequence("/churn.xml", [Response(body=b) for b in [*bodies, *bodies]])
    add(store, url)
    news = []
    for _ in range(6):
        (summary,) = poll(settings, store, clock)
        assert summary.status == "ok", summary.error
        news.append(summary.new)
        clock.now += timedelta(hours=1)
    assert news[0] == 3 and sum(news[1:]) == 0
    assert rows(store, "SELECT count(*) FROM entries") == [(3,)]
    with client_for(settings, clock) as client:
        titles = ENTRY_TITLE.findall(client.get("/").text)
    assert sorted(titles) == ["Post 1", "Post 2", "Post 3"]


# --- One document cannot end the poll: prepare_feed raises ParseError or nothing ----------

_ODD_VALUES = [
    '"\\ud800"',
    '"\\udfff\\ud800x"',
    '"https://a.test/p\\ud800?q=\\udc00&utm_source=\\ud800#\\ud800"',
    '"http://[::1"',
    '"//\\ud800/x"',
    "1e999",
    "-1e999",
    "123456789012345678901234567890123456789012345678901234567890",
    "null",
    "true",
    "[]",
    '[{"a": 1}]',
    "{}",
    '{"url": "\\ud800"}',
    '""',
    '"' + "x" * 5000 + '"',
]
_JSON_FIELDS = [
    "id", "url", "external_url", "title", "content_html", "content_text", "summary",
    "image", "banner_image", "date_published", "date_modified", "authors", "author",
    "tags", "language", "attachments",
]  # fmt: skip
_XML_VALUES = [
    "&#xD800;", "\U0001f600", "1e999", "99999999999999999999", "http://[::1",
    "https://a.test/\u200b?utm_x=1", "<![CDATA[\x00]]>", "&undefined;", "%ZZ%ff%",
    "javascript:alert(1)",
]  # fmt: skip
_XML_FIELDS = ["title", "link", "guid", "pubDate", "description", "author", "category"]


def _odd_json(rng: random.Random) -> bytes:
    item = {name: rng.choice(_ODD_VALUES) for name in rng.sample(_JSON_FIELDS, rng.randint(1, 8))}
    items = ",".join(f'"{k}": {v}' for k, v in item.items())
    top = rng.choice(['"title": "t"', '"title": "\\ud800"', '"home_page_url": "\\udbff"'])
    return (
        f'{{"version": "https://jsonfeed.org/version/1.1", {top}, "items": [{{{items}}}]}}'
    ).encode("utf-8", "surrogatepass")


def _odd_xml(rng: random.Random) -> bytes:
    fields = rng.sample(_XML_FIELDS, rng.randint(1, len(_XML_FIELDS)))
    item = "".join(f"<{f}>{rng.choice(_XML_VALUES)}</{f}>" for f in fields)
    if rng.random() < 0.5:
        return f"<rss version='2.0'><channel><title>t</title><item>{item}</item></channel></rss>".encode()
    entry = item.replace("<link>", "<link href='").replace("</link>", "'/>")
    return f"<feed xmlns='http://www.w3.org/2005/Atom'><entry>{entry}</entry></feed>".encode()


def test_odd_documents_end_in_records_or_one_parse_error_never_another_exception() -> None:
    """Seeded mutations of JSON Feed and RSS/Atom documents (lone surrogates, huge and
    infinite numbers, values of the wrong type, broken URLs): ``prepare_feed`` returns
    records or raises ParseError (NotAFeed included), whose message is one line naming
    the feed; no other exception escapes to end a poll, and none needs the safety net."""
    rng = random.Random(20261129)
    url = "https://odd.test/feed"
    for n in range(400):
        document = _odd_json(rng) if n % 2 else _odd_xml(rng)
        try:
            prepared = prepare_feed(document, url=url, headers={}, limits=ParseLimits(), now=START)
        except ParseError as error:
            assert url in str(error) and "\n" not in str(error), document
            # The safety net caught nothing: the helpers themselves take such values.
            assert "while preparing" not in str(error), (document, str(error))
        else:
            for record in prepared.records:
                for value in (record.link, record.canonical_url, record.title, record.text):
                    if value is not None:
                        value.encode("utf-8")  # storable: no lone surrogate left


def test_an_unexpected_exception_while_preparing_becomes_the_feeds_parse_error() -> None:
    """Whatever fails inside ``prepare_feed`` is that feed's ParseError: one line with the
    feed's URL and the exception's type."""
    with pytest.raises(ParseError) as caught:
        prepare_feed(
            b"<rss/>",
            url="https://odd.test/feed",
            headers={},
            limits=None,
            now=START,  # type: ignore[arg-type]
        )
    message = str(caught.value)
    assert message.startswith("https://odd.test/feed: ") and "AttributeError" in message
    assert "\n" not in message
