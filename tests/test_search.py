"""Search by relevance: the query language, ranking on a fixed corpus,
snippets that stay inert with hostile text, counts, stable pages, the search Atom feed.
"""

from __future__ import annotations

import html
import re
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import feedparser
import pytest
from starlette.testclient import TestClient
from webdata import NOW, add_entry, add_feed, make_settings, record

from aggregator.dedup import normalise_title
from aggregator.sanitize import html_to_text, sanitize_html
from aggregator.store import Store, search
from aggregator.store.search import RankedCursor, parse_query, ranked_page
from aggregator.web import create_app

SANITIZE = Path(__file__).parent / "data" / "feedparser" / "sanitize.tar.xz"
TARGET = "Kubernetes tuning notes for small clusters"


@pytest.mark.parametrize(
    ("text", "fts"),
    [
        ("kubernetes tuning", '("kubernetes") AND ("tuning")'),
        ('"garbage collection"', '("garbage collection")'),
        ("clust*", '("clust" *)'),
        ("c*", '("c")'),  # one letter is too short a prefix: taken as the word
        ("tuning -kubernetes", '("tuning") NOT ("kubernetes")'),
        ('tuning -"small clusters"', '("tuning") NOT ("small clusters")'),
        ("source:alpha notes", '(source : "alpha") AND ("notes")'),
        ('source:"alpha blog"', '(source : "alpha blog")'),
        ("e-mail", '("e mail")'),
        ('"NEAR( * OR', '("NEAR") AND ("OR")'),
        ("title:foo ^bar {x}", '(title : "foo") AND ("bar") AND ("x")'),
        ('Author:"Zeppelin Crew"', '(author : "Zeppelin Crew")'),
        ("text:foo 10:30", '("text foo") AND ("10 30")'),  # not a filter: taken literally
        ("-only -exclusions", None),
        ('"" * - ( )', None),
        ("*", None),
        ("^", None),
        ('"unterminated', '("unterminated")'),
        ('"kubernetes notes', '("kubernetes") AND ("notes")'),  # a quote never closed
        ('x "a b" "c d', '("x") AND ("a b") AND ("c") AND ("d")'),
        ("NEAR(", '("NEAR")'),
        ("NEAR(a b, 2)", '("NEAR a") AND ("b") AND ("2")'),
        ("((a) b", '("a") AND ("b")'),
        ("a)) OR (b", '("a") AND ("OR") AND ("b")'),
        ("a\x00b\x00", '("a") AND ("b")'),  # control characters separate words
        ("source:nowhere", '(source : "nowhere")'),
    ],
)
def test_query_language(text: str, fts: str | None) -> None:
    assert parse_query(text).fts == fts


def test_long_queries_keep_their_first_words() -> None:
    many = parse_query(" ".join(f"w{n}" for n in range(500)))
    assert many.fts is not None and many.fts.count(" AND ") == search.MAX_PARTS - 1
    one_phrase = parse_query("-".join(f"w{n}" for n in range(500)))
    assert len(one_phrase.words) == search.MAX_WORDS
    assert parse_query("x" * 100_000).words == ("x" * 100_000,)


HOSTILE_QUERIES = [
    '"NEAR( * OR',
    "NEAR(a b, 2)",
    "a OR b AND NOT c",
    "title:kubernetes",
    "{title author}: x",
    "^kubernetes",
    "kubernetes*+*",
    '"""',
    "-",
    "*",
    "'; DROP TABLE entries; --",
    "\x00\x02\x03",
    "source:",
    "source:*",
    "ü" * 150,
    '"unterminated',
    "NEAR(",
    "((a b",
    "a))",
    "source:nosuchsource",
    "author:",
    "a\x00b",
    "x" * 200,
    "w " * 100,
    "-a-" * 66,
]


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Store, dict[str, int]]]:
    tmp_path = tmp_path_factory.mktemp("ranking")
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    alpha = add_feed(store, "https://alpha.test/feed", "Alpha blog")
    beta = add_feed(store, "https://beta.test/feed", "Beta notebook")
    ids: dict[str, int] = {}

    def put(
        name: str, feed: int, title: str, *, days: float, body: str, author: str | None = None
    ) -> None:
        entry = record(
            title, published=NOW - timedelta(days=days), body=body, author=author, key=name
        )
        entry = replace(entry, norm_title=normalise_title(title))
        ids[name] = add_entry(store, feed, entry)

    # The post searched for by its exact title: old, and 40 newer posts share its words.
    put("target", alpha, TARGET, days=300, body="<p>What we changed and why.</p>")
    for n in range(40):
        put(
            f"noise{n}",
            beta if n % 2 else alpha,
            f"Weekly links {n}",
            days=n,
            body="<p>Kubernetes tuning notes, small clusters, for clusters big and small.</p>",
        )
    put("title", alpha, "Zeppelin maintenance", days=50, body="<p>Airships.</p>")
    put(
        "author",
        alpha,
        "Field report",
        days=50,
        body="<p>Nothing here.</p>",
        author="Zeppelin Crew",
    )
    put("text", alpha, "Other news", days=50, body="<p>A zeppelin flew by.</p>")
    put("phrase", beta, "Memory", days=10, body="<p>Notes on garbage collection in practice.</p>")
    put("reversed", beta, "Memory again", days=9, body="<p>A collection of garbage.</p>")
    put("prefix", beta, "Clustering", days=8, body="<p>Clustered and clusterable things.</p>")
    put("old", alpha, "Quokka facts", days=900, body="<p>quokka quokka</p>")
    put("new", alpha, "Quokka facts", days=1, body="<p>quokka quokka</p>")
    put(
        "hostile",
        beta,
        '<script>alert("quasar")</script>',
        days=2,
        body="<p>&lt;img src=x onerror=alert(1)&gt; quasar &lt;b&gt;bold&lt;/b&gt;</p>",
    )
    yield settings.database, store, ids
    store.close()


def ranked_ids(store: Store, text: str, **kwargs: object) -> list[int]:
    page = ranked_page(store.db, parse_query(text), limit=100, **kwargs)  # type: ignore[arg-type]
    return [entry.id for entry in page.entries]


def test_exact_title_is_first_though_newer_posts_share_its_words(corpus) -> None:
    _, store, ids = corpus
    found = ranked_ids(store, TARGET.lower())
    assert found[0] == ids["target"]
    assert ranked_ids(store, "Kubernetes tuning notes for small clusters!")[0] == ids["target"]


def test_title_above_author_above_text(corpus) -> None:
    _, store, ids = corpus
    assert ranked_ids(store, "zeppelin") == [ids["title"], ids["author"], ids["text"]]


def test_phrase_prefix_and_exclusion(corpus) -> None:
    _, store, ids = corpus
    assert ranked_ids(store, '"garbage collection"') == [ids["phrase"]]
    assert set(ranked_ids(store, "garbage collection")) == {ids["phrase"], ids["reversed"]}
    # Prefixes match the indexed (Porter-stemmed) words: "Clustering" is "cluster".
    assert ids["prefix"] in ranked_ids(store, "clust*")
    assert ranked_ids(store, "clust") == []
    assert set(ranked_ids(store, "garbage -practice")) == {ids["reversed"]}
    assert ranked_ids(store, "-garbage") == []


def test_source_titles_are_searchable_and_filter(corpus) -> None:
    _, store, ids = corpus
    notebook = ranked_ids(store, "notebook")
    assert ids["phrase"] in notebook and ids["title"] not in notebook
    assert set(ranked_ids(store, "source:notebook garbage")) == {ids["phrase"], ids["reversed"]}
    assert ranked_ids(store, "source:alpha garbage") == []


def test_recency_breaks_ties(corpus) -> None:
    _, store, ids = corpus
    assert ranked_ids(store, "quokka") == [ids["new"], ids["old"]]


def test_pages_stay_stable_while_posts_arrive(corpus) -> None:
    _, store, _ = corpus
    query = parse_query("clusters")
    first = ranked_page(store.db, query, limit=7)
    seen = [entry.id for entry in first.entries]
    feed = add_feed(store, "https://gamma.test/feed", "Gamma")
    position = first.next
    arrived = []
    while position is not None:
        arrived.append(
            add_entry(
                store,
                feed,
                record(f"clusters {len(arrived)}", published=NOW, key=f"g{len(arrived)}"),
            )
        )
        page = ranked_page(store.db, query, position=position, limit=7)
        seen += [entry.id for entry in page.entries]
        position = page.next
    # The target, the 40 noise posts and "Clustering" (stemmed to "cluster").
    assert len(seen) == len(set(seen)) == 42
    assert not set(arrived) & set(seen)
    assert ranked_page(store.db, query, limit=7).upto > first.upto


def test_count_and_cap(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    _, store, ids = corpus
    upto = search.newest_id(store.db)
    matches = search.count_matches(store.db, parse_query("kubernetes"), feed_id=None, upto=upto)
    assert matches.exact and matches.count == 41
    monkeypatch.setattr(search, "RANK_ALL", 10)
    capped = search.count_matches(store.db, parse_query("kubernetes"), feed_id=None, upto=upto)
    assert not capped.exact and capped.low > 0
    page = ranked_page(store.db, parse_query(TARGET), limit=100)
    assert page.capped and page.matches == search.count_matches(
        store.db, parse_query(TARGET), feed_id=None, upto=upto
    )
    # The exact title match still comes first though it is older than the ranked set.
    assert page.entries[0].id == ids["target"]
    assert len(page.entries) <= 11


def test_past_the_cap_tiers_rank_title_then_author_then_text_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(tmp_path / "db.sqlite3")
    feed = add_feed(store, "https://a.test/feed", "A blog")
    made: dict[str, int] = {}
    for name, title, author, body in [
        ("old title", "Ferret", None, "<p>care</p>"),  # outside the newest 4
        ("text 1", "One", None, "<p>ferret food</p>"),
        ("text 2", "Two", None, "<p>ferret toys</p>"),
        ("author", "Three", "Ferret Fan", "<p>a ferret</p>"),
        ("text 3", "Four", None, "<p>ferret again</p>"),
        ("title", "Ferret food facts", None, "<p>the ferret</p>"),
        ("some title", "Food for thought", None, "<p>ferret</p>"),
    ]:
        entry = record(title, published=NOW - timedelta(days=1), body=body, author=author, key=name)
        made[name] = add_entry(store, feed, replace(entry, norm_title=normalise_title(title)))

    def order(text: str, cap: int = 4) -> list[str]:
        monkeypatch.setattr(search, "RANK_ALL", cap)
        page = ranked_page(store.db, parse_query(text), limit=10)
        assert page.capped and not page.matches.exact
        names = {entry_id: name for name, entry_id in made.items()}
        return [names[entry.id] for entry in page.entries]

    # ferret: the exact title first, from anywhere (older than the ranked set); then
    # the newest four matches: title, then author, then text, newest first.
    assert order("ferret") == ["old title", "title", "author", "some title", "text 3"]
    # Two words (three posts hold both; the newest two are ranked): every word in the
    # title first, then some of them in the title.
    assert order("ferret food", cap=2) == ["title", "some title"]
    # Exclusions and filters hold in every tier.
    assert "title" not in order("ferret -facts")
    store.close()


def test_snippets_mark_only_matched_words(corpus) -> None:
    _, store, ids = corpus
    query = parse_query("small clusters")
    found = search.highlights(store.db, query, [ids["noise3"]])[ids["noise3"]]
    hits = {fragment.text.lower() for fragment in found.snippet if fragment.hit}
    assert hits == {"small", "clusters"}
    assert "".join(fragment.text for fragment in found.snippet) == (
        "Kubernetes tuning notes, small clusters, for clusters big and small."
    )


def _fixtures() -> Iterator[tuple[str, str]]:
    with tarfile.open(SANITIZE) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            handle = archive.extractfile(member)
            assert handle is not None
            parsed = feedparser.parse(handle.read(), sanitize_html=False)
            for entry in parsed.entries or [parsed.feed]:
                contents = entry.get("content") or []
                value = contents[0].get("value") if contents else entry.get("summary")
                if value:
                    yield member.name, str(value)


SNIPPET = re.compile(r'<p class="excerpt snippet">(.*?)</p>', re.S)
TITLE = re.compile(r'<h3 class="entry-title"[^>]*><a href="[^"]*">(.*?)</a></h3>', re.S)


def test_feedparser_sanitizer_fixtures_stay_inert_through_snippets(tmp_path: Path) -> None:
    """Every sanitizer case of feedparser's suite, stored raw (the worst case: markup
    as text) and as our pipeline stores it, searched for its own words: the page's
    titles and snippets hold no markup but <mark>, and say the text."""
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    feed = add_feed(store, "https://hostile.test/feed", "Hostile")
    cases = list(_fixtures())
    assert len(cases) > 500
    words: dict[str, str] = {}
    for n, (_, raw) in enumerate(cases):
        tag = f"fx{n}x"
        for variant, text in (("raw", raw), ("clean", html_to_text(sanitize_html(raw)))):
            entry = record(
                f"{raw[:120]} {tag}", published=NOW - timedelta(minutes=n), key=f"{variant}{n}"
            )
            entry = replace(entry, text=f"{text} {tag}")
            add_entry(store, feed, entry)
        found = re.findall(r"[A-Za-z]{4,}", raw)
        words[tag] = found[0] if found else tag
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        checked = 0
        for tag, word in list(words.items())[::3]:
            page = client.get("/", params={"q": f"{tag} {word}", "source": feed})
            assert page.status_code == 200
            parts = SNIPPET.findall(page.text) + TITLE.findall(page.text)
            assert parts, tag
            for part in parts:
                bare = part.replace("<mark>", "").replace("</mark>", "")
                assert "<" not in bare and ">" not in bare, (tag, part)
                assert "&lt;" in bare or "<" not in html.unescape(bare)
            checked += 1
        assert checked > 150
    for query in HOSTILE_QUERIES:
        search.highlights(store.db, parse_query(query), [1, 2, 3])
    store.close()


def test_hostile_entry_and_queries_through_the_web(corpus) -> None:
    path, _, _ = corpus
    settings = make_settings(path.parent)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        page = client.get("/", params={"q": "quasar"})
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<img" not in page.text
        assert "<mark>quasar</mark>" in page.text
        assert "1 post matches" in page.text
        for query in HOSTILE_QUERIES:
            for order in ("relevance", "newest"):
                answer = client.get("/", params={"q": query, "order": order})
                assert answer.status_code == 200, (query, order)
            feed = client.get("/search.atom", params={"q": query})
            assert feed.status_code == 200, query
            assert not feedparser.parse(feed.content).bozo, query
        assert client.get("/", params={"q": "x", "order": "bogus"}).status_code == 400
        assert client.get("/", params={"q": "x", "at": "nonsense"}).status_code == 400


def test_ranked_and_newest_pages_through_the_web(corpus) -> None:
    path, _, ids = corpus
    settings = make_settings(path.parent)
    entry = re.compile(r'<article aria-labelledby="entry-(\d+)">')
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        ranked = client.get("/", params={"q": TARGET}).text
        assert int(entry.findall(ranked)[0]) == ids["target"]
        assert "41 posts match, best match first" in ranked and "About 41" not in ranked
        newest = client.get("/", params={"q": TARGET, "order": "newest"}).text
        assert int(entry.findall(newest)[0]) != ids["target"]
        more = re.search(r'href="([^"]+)" rel="next">More results', ranked)
        assert more is not None
        second = client.get(html.unescape(more.group(1))).text
        assert not set(entry.findall(ranked)) & set(entry.findall(second))
        assert ranked_cursor(html.unescape(more.group(1))).start == 30


def ranked_cursor(url: str) -> RankedCursor:
    return RankedCursor.parse(re.search(r"at=([\d.]+)", url).group(1))


def test_search_atom_follows_a_topic(corpus) -> None:
    path, _, _ = corpus
    settings = make_settings(path.parent)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        answer = client.get("/search.atom", params={"q": "garbage"})
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/atom+xml")
        parsed = feedparser.parse(answer.content)
        assert not parsed.bozo
        assert [e.title for e in parsed.entries] == ["Memory again", "Memory"]
        assert "garbage" in parsed.feed.title
        website = client.get(parsed.feed.link.replace(settings.web.base_url, ""))
        assert website.status_code == 200 and "Memory again" in website.text
        assert client.get("/search.atom", params={"q": ""}).status_code == 400
        assert client.get("/search.atom").status_code == 400
        again = client.get(
            "/search.atom",
            params={"q": "garbage"},
            headers={"if-none-match": answer.headers["etag"]},
        )
        assert again.status_code == 304


def test_queries_past_the_length_limit_are_refused_alike(corpus) -> None:
    path, _, _ = corpus
    settings = make_settings(path.parent)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        for query in ("x" * 5000, "w " * 2000):
            for url in ("/", "/search.atom"):
                answer = client.get(url, params={"q": query})
                assert answer.status_code == 400
                assert "too long" in answer.text


def test_only_exclusions_find_nothing_alike_on_the_page_and_the_feed(corpus) -> None:
    path, _, _ = corpus
    settings = make_settings(path.parent)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        for query in ("-kubernetes", '-"garbage collection" -zeppelin', "*"):
            page = client.get("/", params={"q": query})
            assert page.status_code == 200
            assert "has no words to look for" in page.text
            assert '<article aria-labelledby="entry-' not in page.text
            feed = client.get("/search.atom", params={"q": query})
            assert feed.status_code == 200
            assert feedparser.parse(feed.content).entries == []


def test_an_empty_search_feed_is_dated_by_the_clock(corpus) -> None:
    path, _, _ = corpus
    settings = make_settings(path.parent)
    with TestClient(create_app(settings, clock=lambda: NOW)) as client:
        feed = client.get("/search.atom", params={"q": "nothingmatchesthis"})
        assert feed.status_code == 200
        parsed = feedparser.parse(feed.content)
        assert parsed.entries == [] and not parsed.bozo
        assert parsed.feed.updated == NOW.isoformat().replace("+00:00", "Z")
        assert "last-modified" not in feed.headers
        again = client.get(
            "/search.atom",
            params={"q": "nothingmatchesthis"},
            headers={"if-none-match": feed.headers["etag"]},
        )
        assert again.status_code == 304
        full = client.get("/search.atom", params={"q": "garbage"})
        newest = feedparser.parse(full.content)
        assert newest.feed.updated == newest.entries[0].updated


def test_unterminated_quotes_and_column_filters_find_what_they_say(corpus) -> None:
    _, store, ids = corpus
    assert ranked_ids(store, '"kubernetes notes')[0] == ids["target"]
    assert ranked_ids(store, '"zeppelin') == ranked_ids(store, "zeppelin")
    assert ranked_ids(store, "title:zeppelin") == [ids["title"]]
    assert ranked_ids(store, "author:zeppelin") == [ids["author"]]
    assert ranked_ids(store, "source:nowhere") == []
    assert set(ranked_ids(store, "zeppelin -title:zeppelin")) == {ids["author"], ids["text"]}


def test_index_follows_source_renames_and_deletes(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db.sqlite3")
    feed = add_feed(store, "https://a.test/feed", "Old name")
    add_entry(store, feed, record("Some post", published=NOW))
    with store.write() as db:
        db.execute("UPDATE feeds SET title = 'Brand new' WHERE id = ?", [feed])
    assert ranked_ids(store, "brand") and not ranked_ids(store, "old")
    store.conn.execute("INSERT INTO entries_fts (entries_fts) VALUES ('integrity-check')")
    with store.write() as db:
        db.execute("DELETE FROM feeds WHERE id = ?", [feed])
    store.conn.execute("INSERT INTO entries_fts (entries_fts) VALUES ('integrity-check')")
    assert ranked_ids(store, "brand") == []
    store.close()


def test_the_count_is_of_stories_as_the_results_list_them(tmp_path: Path) -> None:
    """A story cross-posted on two blogs is one result, and counted once."""
    import digestkit

    store = Store.open(tmp_path / "db.sqlite3")
    alpha = digestkit.add_feed(store, "Alpha")
    beta = digestkit.add_feed(store, "Beta")
    story = digestkit.add_entry(store, alpha, "Scheduler notes", link="https://a.test/s")
    digestkit.add_entry(store, beta, "Scheduler notes", link="https://b.test/s", duplicate_of=story)
    digestkit.add_entry(store, beta, "Another scheduler post", link="https://b.test/t")
    page = ranked_page(store.db, parse_query("scheduler"))
    assert len(page.entries) == 2
    assert (page.matches.count, page.matches.exact) == (2, True)
    counted = search.count_matches(store.db, parse_query("scheduler"), feed_id=None, upto=10)
    assert (counted.count, counted.exact) == (2, True)
    store.close()
