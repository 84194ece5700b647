"""Search results page through in exact timeline order, for rare and common words alike.

A real SQLite file filled through the store holds a few thousand entries whose ids do
not follow their dates (a backlog arrives last with old dates, several entries share a
date, cross-posts match too). Every search is paged to its end and back, and compared
with the order worked out here from the data itself.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from webdata import NOW, add_feed, make_settings, record

from aggregator.config import Settings
from aggregator.models import NewEntry, PollPlan
from aggregator.store import Store, timeline
from aggregator.store import entries as entry_rows
from aggregator.store.codec import to_db
from aggregator.store.timeline import fts_query, timeline_page
from aggregator.web import create_app
from aggregator.web.views import PAGE_SIZE

ENTRIES = 2600
ENTRY_ID = re.compile(r'<article aria-labelledby="entry-(\d+)">')


@dataclass(frozen=True)
class Stored:
    id: int
    feed_id: int
    published: str
    duplicate_of: int | None
    words: frozenset[str]


@dataclass(frozen=True)
class Corpus:
    settings: Settings
    store: Store
    feeds: tuple[int, ...]
    entries: tuple[Stored, ...]


def words_for(n: int, rng: random.Random) -> set[str]:
    words = {"filler"}
    if n % 5:
        words.add("common")  # 4 in 5: above the rare-word threshold on its own
    if n % 29 == 0:
        words.add("scarce")
    if rng.random() < 0.3:
        words.add("middling")
    return words


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    tmp_path: Path = tmp_path_factory.mktemp("search")
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    feeds = tuple(add_feed(store, f"https://blog{n}.test/feed", f"Blog {n}") for n in range(3))
    rng = random.Random(7)
    stored: list[Stored] = []
    for batch in range(4):
        plans: dict[int, list[tuple[NewEntry, set[str], str]]] = {feed: [] for feed in feeds}
        for n in range(batch * ENTRIES // 4, (batch + 1) * ENTRIES // 4):
            words = words_for(n, rng)
            if batch == 3:
                # A backlog: the newest ids carry the oldest dates, and only they say
                # "ancient", a word common in count but absent from recent pages.
                published = NOW - timedelta(days=4000 + n)
                words.add("ancient")
            else:
                # Three entries to a timestamp: the id breaks the tie.
                published = NOW - timedelta(hours=n // 3, minutes=rng.randint(0, 90))
            earlier = [entry for entry in stored if entry.duplicate_of is None]
            duplicate_of = earlier[-rng.randint(1, 40)].id if n % 13 == 0 and earlier else None
            body = "<p>" + " ".join(sorted(words)) + "</p>"
            item = NewEntry(
                record=record(f"Post {n}", published=published, body=body, key=f"k{n}"),
                duplicate_of=duplicate_of,
            )
            plans[feeds[rng.randrange(len(feeds))]].append((item, words, to_db(published) or ""))
        for feed, items in plans.items():
            plan = PollPlan(inserts=tuple(item for item, _, _ in items))
            with store.write() as db:
                ids = entry_rows.apply_plan(db, feed, plan, NOW)
            for entry_id, (item, words, published_text) in zip(ids, items, strict=True):
                stored.append(
                    Stored(entry_id, feed, published_text, item.duplicate_of, frozenset(words))
                )
    yield Corpus(settings, store, feeds, tuple(stored))
    assert store.integrity_ok()
    store.close()


def expected(corpus: Corpus, word: str, feed_id: int | None) -> list[int]:
    chosen = [
        entry
        for entry in corpus.entries
        if word in entry.words
        and (entry.feed_id == feed_id if feed_id is not None else entry.duplicate_of is None)
    ]
    chosen.sort(key=lambda entry: (entry.published, entry.id), reverse=True)
    return [entry.id for entry in chosen]


def page_ids(page: timeline.TimelinePage) -> list[int]:
    return [entry.id for entry in page.entries]


def walk(corpus: Corpus, word: str, feed_id: int | None, limit: int) -> list[list[int]]:
    """Every page from the top to the end by "older", then back up by "newer"."""
    db = corpus.store.db
    search = fts_query(word)
    pages = [timeline_page(db, search=search, feed_id=feed_id, limit=limit)]
    assert pages[0].newer is None
    while pages[-1].older is not None:
        assert len(pages) < 1000
        pages.append(
            timeline_page(db, search=search, feed_id=feed_id, before=pages[-1].older, limit=limit)
        )
    for above, below in itertools.pairwise(pages):
        assert len(page_ids(above)) == limit
        assert below.newer == below.entries[0].cursor
        back = timeline_page(db, search=search, feed_id=feed_id, after=below.newer, limit=limit)
        assert page_ids(back) == page_ids(above)
    return [page_ids(page) for page in pages]


THRESHOLDS = {
    "as shipped": {},
    # Small enough that every word takes the index walk, in one-row first chunks, and
    # "ancient" runs out of walk budget long before its matches start.
    "tiny": {"RARE_MATCHES": 5, "_FIRST_CHUNK": 1, "_WALK_BUDGET": 300},
}


@pytest.mark.parametrize("thresholds", list(THRESHOLDS))
@pytest.mark.parametrize("word", ["common", "middling", "scarce", "ancient"])
@pytest.mark.parametrize("by_feed", [False, True])
def test_search_pages_follow_timeline_order(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch, thresholds: str, word: str, by_feed: bool
) -> None:
    for name, value in THRESHOLDS[thresholds].items():
        monkeypatch.setattr(timeline, name, value)
    feed_id = corpus.feeds[1] if by_feed else None
    want = expected(corpus, word, feed_id)
    assert len(want) > 2 * 13  # several pages at the smaller size
    for limit in (13, 50):
        pages = walk(corpus, word, feed_id, limit)
        flat = [entry_id for page in pages for entry_id in page]
        assert flat == want, f"{word} by {limit}: order, gap or repeat"


def test_common_word_walks_the_index_and_rare_word_sorts(corpus: Corpus) -> None:
    def matches(word: str) -> int:
        return sum(word in entry.words for entry in corpus.entries)

    assert matches("common") >= timeline.RARE_MATCHES > matches("scarce")
    db = corpus.store.db
    for word, walks in (("common", True), ("scarce", False)):
        statements: list[str] = []
        corpus.store.conn.set_trace_callback(statements.append)
        try:
            timeline_page(db, search=fts_query(word), limit=50)
        finally:
            corpus.store.conn.set_trace_callback(None)
        assert any("rowid BETWEEN" in sql for sql in statements) == walks, word


def test_search_pages_through_the_web(corpus: Corpus) -> None:
    want = expected(corpus, "common", None)
    seen: list[int] = []
    with TestClient(create_app(corpus.settings, clock=lambda: NOW)) as client:
        url: str | None = "/?q=common&order=newest"
        for _ in range(4):
            assert url is not None
            html = client.get(url).text
            ids = [int(found) for found in ENTRY_ID.findall(html)]
            assert len(ids) == PAGE_SIZE
            seen += ids
            match = re.search(
                r'<a class="button" href="([^"]+)"[^>]*>(?:<span[^>]*>.</span> )?Older', html
            )
            url = match.group(1).replace("&amp;", "&") if match else None
            assert url is None or "q=common" in url
    assert seen == want[: len(seen)]
