"""Identity: the same entry inside one feed, the same story across feeds (DESIGN §5)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.dedup import (
    EARLIEST_PLAUSIBLE,
    _digest,
    content_hash,
    entry_alias,
    entry_key,
    link_key,
    make_record,
    normalise_title,
    plan_entries,
    text_similarity,
    titles_agree,
)
from aggregator.models import EntryRecord, ParsedEntry, StoredEntry

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
FEED = "https://blog.example/feed.xml"
OTHER_FEED = "https://other.example/atom.xml"

STORY = (
    "We rewrote the ingest path so that every poll commits in a single transaction. "
    "The old code wrote entries one at a time and a crash could leave half a batch. "
    "Now the batch is all there or not at all, and the next poll completes it."
)
OTHER_STORY = (
    "Our garden had a great year: tomatoes, beans and far too many courgettes. "
    "Next spring we plant fewer courgettes and more peppers along the south wall."
)


def parsed(
    *,
    guid: str | None = None,
    link: str | None = None,
    title: str = "A post",
    content: str = "<p>Body</p>",
    published: datetime | None = NOW - timedelta(hours=2),
    updated: datetime | None = None,
    author: str | None = "Ann",
) -> ParsedEntry:
    return ParsedEntry(
        guid=guid,
        link=link,
        title=title,
        author=author,
        summary_html="",
        content_html=content,
        published=published,
        updated=updated,
    )


def record(
    *,
    feed_url: str = FEED,
    text: str = STORY,
    now: datetime = NOW,
    **fields: object,
) -> EntryRecord:
    return make_record(parsed(**fields), feed_url=feed_url, text=text, now=now)  # type: ignore[arg-type]


def stored_from(
    rec: EntryRecord,
    *,
    id: int,
    feed_id: int = 1,
    first_seen: datetime = NOW - timedelta(days=1),
    duplicate_of: int | None = None,
) -> StoredEntry:
    return StoredEntry(
        id=id,
        feed_id=feed_id,
        key=rec.key,
        alias=rec.alias,
        link_key=rec.link_key,
        canonical_url=rec.canonical_url,
        norm_title=rec.norm_title,
        content_hash=rec.content_hash,
        text=rec.text,
        published=rec.published,
        first_seen=first_seen,
        duplicate_of=duplicate_of,
    )


# --- titles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Hello, World!", "hello world"),
        ("“Smart” quotes — and dashes", '"Smart" quotes - and dashes'),
        ("Re: Shipping v2", "Shipping v2"),
        ("Cross-post: Shipping v2", "Shipping v2"),
        ("Crossposted: Shipping v2", "Shipping v2"),
        ("[x-post] Shipping v2", "Shipping v2"),
        ("RE: Fwd: Shipping v2", "Shipping v2"),
        ("ＦＵＬＬＷＩＤＴＨ title", "fullwidth title"),
        ("Straße", "STRASSE"),
        ("  spaced\t\nout  ", "spaced out"),
        ("Ünïcödé", "ünïcödé"),
    ],
)
def test_normalise_title_folds_spellings(one: str, other: str) -> None:
    assert normalise_title(one) == normalise_title(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("[Video] Shipping v2", "Shipping v2"),  # a tag is a word: it tells posts apart
        ("Shipping v2", "Shipping v3"),
        ("Part 1", "Part 2"),
    ],
)
def test_normalise_title_keeps_words(one: str, other: str) -> None:
    assert normalise_title(one) != normalise_title(other)


def test_normalise_title_of_huge_title_is_cheap() -> None:
    started = time.perf_counter()
    assert normalise_title("word " * 1_000_000).startswith("word word")
    assert time.perf_counter() - started < 1.0


# --- keys inside one feed -----------------------------------------------------------


def _link_key(url: str, title: str = "Title", date: str = "") -> str:
    return "link:" + url + " " + _digest(normalise_title(title), date)[:24]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"guid": "tag:blog.example,2024:post-1"}, "guid:tag:blog.example,2024:post-1"),
        ({"guid": "  urn:uuid:1234  "}, "guid:urn:uuid:1234"),
        ({"guid": "42", "link": "https://blog.example/42"}, "guid:42"),
        # The key is the GUID as written (RFC 4287 §4.2.6.1: compared character by character).
        (
            {"guid": "http://www.blog.example/p/1/?utm_source=rss"},
            "guid:http://www.blog.example/p/1/?utm_source=rss",
        ),
        ({"guid": "/p/1"}, "guid:/p/1"),
        ({"guid": "?p=77#comment-401"}, "guid:?p=77#comment-401"),
        (
            {"guid": "   ", "link": "https://blog.example/p/1/"},
            _link_key("https://blog.example/p/1"),
        ),
        ({"link": "http://blog.example/p/1#x"}, _link_key("https://blog.example/p/1#x")),
        ({"link": "http://blog.example/p/1#utm_source=x"}, _link_key("https://blog.example/p/1")),
    ],
)
def test_entry_key_table(kwargs: dict[str, str], expected: str) -> None:
    key = entry_key(kwargs.get("guid"), kwargs.get("link"), "Title", None, feed_url=FEED)
    assert key == expected


@pytest.mark.parametrize(
    ("guid", "expected"),
    [
        ("tag:blog.example,2024:post-1", "guid:tag:blog.example,2024:post-1"),
        ("http://www.blog.example/p/1/?utm_source=rss", "guid:https://blog.example/p/1"),
        ("HTTP://Blog.Example:80/p/1#utm_medium=feed", "guid:https://blog.example/p/1"),
        ("/p/1", "guid:https://blog.example/p/1"),
        ("?p=12", "guid:https://blog.example/feed.xml?p=12"),
        ("http://blog.example/?p=77#comment-401", "guid:https://blog.example/?p=77#comment-401"),
        (
            "http://blog.example/now.html#2026-02-16",
            "guid:https://blog.example/now.html#2026-02-16",
        ),
        ("http://blog.example/p#more-12", "guid:https://blog.example/p"),
    ],
)
def test_entry_alias_table(guid: str, expected: str) -> None:
    assert entry_alias(guid, None, "Title", None, feed_url=FEED) == expected


# Distinct entries of one document (each group): their keys differ, and so do their
# aliases where they have a GUID or link, so neither the document nor the churn
# matching can merge them.
DISTINCT_IN_ONE_DOCUMENT = {
    "WordPress comment feed": [
        {"guid": "https://blog.example.org/?p=77#comment-401"},
        {"guid": "https://blog.example.org/?p=77#comment-402"},
        {"guid": "https://blog.example.org/?p=78#comment-403"},
    ],
    "one-page site anchoring each entry": [
        {"guid": "https://site.example/now.html#2026-02-16"},
        {"guid": "https://site.example/now.html#2026-02-17"},
        {"guid": "/now.html#2026-02-18"},
    ],
    "RSS 2.0 specification sample (backissues anchors)": [
        {"guid": "http://archive.scripting.com/2002/09/29#When:6:56:02PM"},
        {"guid": "http://archive.scripting.com/2002/09/29#When:8:32:51PM"},
        {"guid": "http://archive.scripting.com/2002/09/30#When:12:28:52AM"},
    ],
    "no GUID, one link, different titles": [
        {"link": "https://blog.example/", "title": "Monday notes"},
        {"link": "https://blog.example/", "title": "Tuesday notes"},
    ],
    "no GUID, one link and title, different dates": [
        {"link": "https://blog.example/links", "title": "Links", "published": NOW},
        {"link": "https://blog.example/links", "title": "Links", "published": NOW - timedelta(1)},
    ],
    "no GUID, anchored links": [
        {"link": "https://site.example/now.html#a"},
        {"link": "https://site.example/now.html#b"},
    ],
    "neither GUID nor link: same title and date, different text": [
        {"title": "Status", "text": "Deployed the new parser."},
        {"title": "Status", "text": "Rolled the parser back."},
    ],
    "neither GUID nor link nor title: description only": [
        {"title": "", "published": None, "text": "First note."},
        {"title": "", "published": None, "text": "Second note."},
    ],
}


@pytest.mark.parametrize("entries", DISTINCT_IN_ONE_DOCUMENT.values(), ids=DISTINCT_IN_ONE_DOCUMENT)
def test_distinct_entries_of_one_document_keep_distinct_identities(
    entries: list[dict[str, object]],
) -> None:
    def args(fields: dict[str, object]) -> tuple[object, ...]:
        return (
            fields.get("guid"),
            fields.get("link"),
            fields.get("title", "Title"),
            fields.get("published"),
        )

    keys = {entry_key(*args(f), feed_url=FEED, text=str(f.get("text", ""))) for f in entries}  # type: ignore[arg-type]
    aliases = {entry_alias(*args(f), feed_url=FEED, text=str(f.get("text", ""))) for f in entries}  # type: ignore[arg-type]
    assert len(keys) == len(entries)
    if not all(key.startswith("hash:") for key in keys):
        assert len(aliases) == len(entries)
    # Entries without GUID and link share an alias when they share a title (and date),
    # so that an edit of the text is an update; an alias that several records of one
    # document carry joins nothing, as the plans below show.
    recs = [
        record(
            guid=f.get("guid"),
            link=f.get("link"),
            title=f.get("title", "Title"),
            published=f.get("published", NOW - timedelta(hours=2)),
            text=str(f.get("text", STORY)),
        )  # type: ignore[arg-type]
        for f in entries
    ]
    plan = plan_entries(recs, existing=[], candidates=[])
    assert len(plan.inserts) == len(entries) and plan.skipped_in_document == 0
    # Stored, then polled again: each matches itself, nothing new, nothing merged.
    stored = [stored_from(new.record, id=i + 1) for i, new in enumerate(plan.inserts)]
    again = plan_entries(recs, existing=stored, candidates=[])
    assert (again.inserts, again.updates, again.unchanged) == ((), (), len(entries))


# GUID churn between polls (THREATS F6): each group is one entry spelled several ways.
CHURN = [
    [
        "http://blog.example/2024/05/post",
        "https://blog.example/2024/05/post",
        "https://www.blog.example/2024/05/post/",
        "https://blog.example/2024/05/post?utm_source=feed&utm_medium=rss",
        "https://BLOG.example/2024/05/post#comments",
        "https://blog.example:443/2024/05/post#utm_source=rss",
        "/2024/05/post",
        " /2024/05/post/ ",
    ],
    [
        "http://blog.example.org/?p=77#comment-401",
        "https://www.blog.example.org/?p=77&utm_source=rss#comment-401",
    ],
    ["tag:blog.example,2024:1", " tag:blog.example,2024:1\n"],
]


@pytest.mark.parametrize("spellings", CHURN)
def test_entry_alias_is_stable_under_guid_churn(spellings: list[str]) -> None:
    aliases = {entry_alias(guid, None, "T", None, feed_url=FEED) for guid in spellings}
    assert len(aliases) == 1


@pytest.mark.parametrize("spellings", CHURN)
def test_churned_guid_updates_the_one_stored_entry(spellings: list[str]) -> None:
    first = record(guid=spellings[0])
    stored = [stored_from(first, id=1)]
    for spelling in spellings[1:]:
        plan = plan_entries([record(guid=spelling)], existing=stored, candidates=[])
        assert plan.inserts == ()
        assert [u.entry_id for u in plan.updates] == [1] or plan.unchanged == 1


def test_entry_key_hash_fallback_uses_title_and_feed_date() -> None:
    day = datetime(2024, 5, 1, tzinfo=UTC)
    key = entry_key(None, None, "Hello, world", day, feed_url=FEED)
    assert key.startswith("hash:")
    assert key == entry_key(None, "javascript:alert(1)", "hello world!", day, feed_url=FEED)
    assert key != entry_key(None, None, "Hello, world", day + timedelta(days=1), feed_url=FEED)
    assert key != entry_key(None, None, "Goodbye", day, feed_url=FEED)
    # The same instant in another offset is the same date.
    shifted = day.astimezone(timezone(timedelta(hours=2)))
    assert key == entry_key(None, None, "Hello, world", shifted, feed_url=FEED)
    # Without GUID and link the text tells entries apart, and an edit keeps the alias.
    noted = entry_key(None, None, "Hello, world", day, feed_url=FEED, text="one")
    assert noted != entry_key(None, None, "Hello, world", day, feed_url=FEED, text="two")
    assert entry_alias(None, None, "Hello, world", day, feed_url=FEED, text="one") == (
        entry_alias(None, None, "Hello, world", day, feed_url=FEED, text="two")
    )


def test_huge_guid_gives_a_bounded_key() -> None:
    key = entry_key("x" * 5_000_000, None, "T", None, feed_url=FEED)
    assert len(key) < 100
    assert key != entry_key("x" * 4_999_999, None, "T", None, feed_url=FEED)


def test_link_key() -> None:
    assert link_key("http://www.blog.example/p/?utm_source=x") == "https://blog.example/p"
    assert link_key(None) is None
    assert link_key("mailto:a@b") is None


def test_content_hash_sees_every_field_and_field_boundaries() -> None:
    base = content_hash("t", "s", "c", "https://l", "a")
    assert base == content_hash("t", "s", "c", "https://l", "a")
    variants = [
        content_hash("T", "s", "c", "https://l", "a"),
        content_hash("t", "S", "c", "https://l", "a"),
        content_hash("t", "s", "C", "https://l", "a"),
        content_hash("t", "s", "c", "https://m", "a"),
        content_hash("t", "s", "c", "https://l", None),
        content_hash("ts", "", "c", "https://l", "a"),
    ]
    assert len({base, *variants}) == len(variants) + 1


# --- dates (THREATS F5) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("published", "effective", "missing"),
    [
        (datetime(2025, 5, 30, tzinfo=UTC), datetime(2025, 5, 30, tzinfo=UTC), False),
        (NOW + timedelta(hours=23), NOW + timedelta(hours=23), False),  # skewed server
        (NOW + timedelta(days=2), NOW, True),
        (datetime(2999, 1, 1, tzinfo=UTC), NOW, True),
        (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), NOW, True),
        (datetime(1900, 1, 1, tzinfo=UTC), NOW, True),
        (datetime(1, 1, 1, tzinfo=UTC), NOW, True),
        (EARLIEST_PLAUSIBLE - timedelta(seconds=1), NOW, True),
        (EARLIEST_PLAUSIBLE, EARLIEST_PLAUSIBLE, False),
        (None, NOW, True),
        (datetime(2025, 5, 30), datetime(2025, 5, 30, tzinfo=UTC), False),  # naive: read as UTC
    ],
)
def test_effective_published_date(
    published: datetime | None, effective: datetime, missing: bool
) -> None:
    rec = record(guid="g", published=published)
    assert rec.published == effective
    assert rec.published.tzinfo is not None
    assert rec.date_missing is missing


@pytest.mark.parametrize(
    ("updated", "expected"),
    [
        (datetime(2025, 5, 31, tzinfo=UTC), datetime(2025, 5, 31, tzinfo=UTC)),
        (datetime(2999, 1, 1, tzinfo=UTC), None),
        (datetime(1900, 1, 1, tzinfo=UTC), None),
        (None, None),
    ],
)
def test_effective_updated_date(updated: datetime | None, expected: datetime | None) -> None:
    assert record(guid="g", updated=updated).updated == expected


def test_absurd_date_never_sorts_above_real_posts() -> None:
    real = record(guid="real", published=NOW - timedelta(minutes=5))
    future = record(guid="future", published=datetime(2999, 1, 1, tzinfo=UTC))
    plan = plan_entries([future, real], existing=[], candidates=[])
    assert [new.record.key for new in plan.inserts] == ["guid:real", "guid:future"]
    assert future.published <= NOW


def test_record_key_does_not_depend_on_now() -> None:
    one = record(title="Dateless", published=None, now=NOW)
    two = record(title="Dateless", published=None, now=NOW + timedelta(days=3))
    assert one.key == two.key
    assert one.published != two.published


def test_make_record_fields() -> None:
    rec = record(
        guid="g1",
        link="http://www.blog.example/p/1?utm_source=rss",
        title="Re: Hello — World",
        author="Ann",
    )
    assert rec.key == "guid:g1"
    assert rec.link_key == "https://blog.example/p/1"
    assert rec.canonical_url == "https://blog.example/p/1"
    assert rec.link == "http://www.blog.example/p/1?utm_source=rss"
    assert rec.norm_title == "hello world"
    assert rec.title == "Re: Hello — World"
    assert rec.text == STORY
    assert rec.content_hash == content_hash(
        rec.title, rec.summary_html, rec.content_html, rec.link, rec.author
    )


# --- planning one poll: same feed ---------------------------------------------------


def test_first_poll_inserts_everything_oldest_first() -> None:
    newest = record(guid="c", published=NOW - timedelta(hours=1))
    middle = record(guid="b", published=NOW - timedelta(hours=2))
    oldest = record(guid="a", published=NOW - timedelta(hours=3))
    plan = plan_entries([newest, middle, oldest], existing=[], candidates=[])
    assert [new.record.key for new in plan.inserts] == ["guid:a", "guid:b", "guid:c"]
    assert plan.updates == () and plan.unchanged == 0 and plan.duplicates == 0


def test_dateless_entries_keep_reverse_document_order() -> None:
    # Feeds list the newest first: the last in the document is the oldest.
    recs = [record(guid=g, published=None) for g in ("newest", "middle", "oldest")]
    plan = plan_entries(recs, existing=[], candidates=[])
    assert [new.record.key for new in plan.inserts] == [
        "guid:oldest",
        "guid:middle",
        "guid:newest",
    ]


def test_unchanged_entry_is_counted_not_written() -> None:
    rec = record(guid="a")
    plan = plan_entries([rec], existing=[stored_from(rec, id=7)], candidates=[])
    assert plan.inserts == () and plan.updates == ()
    assert plan.unchanged == 1


def test_changed_content_is_an_update_in_place() -> None:
    old = record(guid="a", content="<p>first draft</p>")
    new = record(guid="a", content="<p>fixed a typo</p>")
    plan = plan_entries([new], existing=[stored_from(old, id=7)], candidates=[])
    assert plan.inserts == ()
    assert len(plan.updates) == 1
    assert plan.updates[0].entry_id == 7
    assert plan.updates[0].record == new


def test_dateless_update_keeps_its_first_seen_date() -> None:
    first_poll = datetime(2025, 5, 1, tzinfo=UTC)
    old = record(guid="a", published=None, content="<p>v1</p>", now=first_poll)
    new = record(guid="a", published=None, content="<p>v2</p>", now=NOW)
    plan = plan_entries([new], existing=[stored_from(old, id=3)], candidates=[])
    assert plan.updates[0].record.published == first_poll
    assert plan.updates[0].record.date_missing


def test_dated_update_takes_the_feeds_corrected_date() -> None:
    old = record(guid="a", published=datetime(2025, 5, 1, tzinfo=UTC), content="<p>v1</p>")
    new = record(guid="a", published=datetime(2025, 5, 2, tzinfo=UTC), content="<p>v2</p>")
    plan = plan_entries([new], existing=[stored_from(old, id=3)], candidates=[])
    assert plan.updates[0].record.published == datetime(2025, 5, 2, tzinfo=UTC)


def test_duplicate_guids_in_one_document_first_wins() -> None:
    first = record(guid="dup", title="First")
    second = record(guid="dup", title="Second")
    third = record(guid=" dup ", title="Third")
    plan = plan_entries([first, second, third], existing=[], candidates=[])
    assert [new.record.title for new in plan.inserts] == ["First"]
    assert plan.skipped_in_document == 2


def test_guids_that_differ_only_in_spelling_are_two_entries_in_one_document() -> None:
    # Inside one document distinct GUIDs are distinct entries, however alike.
    docs = [
        record(guid=g, title=g) for g in ("http://blog.example/p", "https://www.blog.example/p/")
    ]
    plan = plan_entries(docs, existing=[], candidates=[])
    assert len(plan.inserts) == 2 and plan.skipped_in_document == 0
    # A later poll with one spelling only cannot tell which one it is: a new entry
    # rather than a guess, unless the title says which.
    stored = [stored_from(new.record, id=i + 1) for i, new in enumerate(plan.inserts)]
    ambiguous = plan_entries(
        [record(guid="HTTP://blog.example/p", title="x")], existing=stored, candidates=[]
    )
    assert len(ambiguous.inserts) == 1
    told = plan_entries(
        [record(guid="HTTP://blog.example/p", title="http://blog.example/p")],
        existing=stored,
        candidates=[],
    )
    wanted = next(e.id for e in stored if e.key == "guid:http://blog.example/p")
    assert told.inserts == () and [u.entry_id for u in told.updates] == [wanted]


def test_comment_feed_polls_keep_every_comment() -> None:
    """A WordPress comment feed: each poll brings newer comments, older ones fall off."""
    base = "https://blog.example.org/?p=77#comment-"
    first = [record(guid=f"{base}{n}", title=f"Comment {n}", text=f"text {n}") for n in (402, 401)]
    plan = plan_entries(first, existing=[], candidates=[])
    stored = [stored_from(new.record, id=i + 1) for i, new in enumerate(plan.inserts)]
    second = [record(guid=f"{base}{n}", title=f"Comment {n}", text=f"text {n}") for n in (403, 402)]
    plan = plan_entries(second, existing=stored, candidates=[])
    assert [new.record.title for new in plan.inserts] == ["Comment 403"]
    assert plan.unchanged == 1 and plan.updates == ()


def test_new_guid_on_a_shared_link_is_a_new_entry_unless_title_and_text_agree() -> None:
    link = "https://blog.example/daily"
    old = record(guid="day-1", link=link, title="Daily links", content="<p>a b</p>", text="a b")
    new = record(guid="day-2", link=link, title="Daily links", content="<p>c d</p>", text="c d")
    plan = plan_entries([new], existing=[stored_from(old, id=1)], candidates=[])
    assert len(plan.inserts) == 1 and plan.updates == ()
    # The same post re-numbered by a CMS migration: title and text agree, so it is updated.
    moved = record(
        guid="cms-2-9f", link=link, title="Daily links", content="<p>a b</p>", text="a b"
    )
    plan = plan_entries([moved], existing=[stored_from(old, id=1)], candidates=[])
    assert plan.inserts == () and [u.entry_id for u in plan.updates] == [1]


def test_guid_churn_with_stable_link_updates_the_stored_entry() -> None:
    # A CMS migration changed every GUID; the links stayed.
    old = record(guid="wp-123", link="https://blog.example/hello", title="Hello")
    new = record(guid="ghost-9f8e", link="https://blog.example/hello/", title="Hello")
    plan = plan_entries([new], existing=[stored_from(old, id=5)], candidates=[])
    assert plan.inserts == ()
    assert [u.entry_id for u in plan.updates] == [5]
    assert plan.updates[0].record.key == "guid:ghost-9f8e"  # the next poll matches by key


def test_link_gained_a_guid_matches_by_link() -> None:
    old = record(guid=None, link="https://blog.example/hello", title="Hello")
    new = record(
        guid="tag:blog.example,2025:hello", link="https://blog.example/hello", title="Hello"
    )
    plan = plan_entries([new], existing=[stored_from(old, id=5)], candidates=[])
    assert [u.entry_id for u in plan.updates] == [5]


def test_shared_home_page_link_does_not_merge_distinct_entries() -> None:
    home = "https://blog.example/"
    older = record(guid="1", link=home, title="Monday notes")
    newer = record(guid="2", link=home, title="Tuesday notes")
    # The older entry fell out of the feed; only the new one is in the document.
    plan = plan_entries([newer], existing=[stored_from(older, id=1)], candidates=[])
    assert [new.record.key for new in plan.inserts] == ["guid:2"]
    assert plan.updates == ()


def test_link_shared_inside_the_document_does_not_identify() -> None:
    home = "https://blog.example/"
    stored = [stored_from(record(guid=str(i), link=home, title="Links"), id=i) for i in (1, 2)]
    doc = [record(guid=g, link=home, title="Links") for g in ("2", "3")]
    plan = plan_entries(doc, existing=stored, candidates=[])
    assert [new.record.key for new in plan.inserts] == ["guid:3"]
    assert plan.unchanged == 1


def test_one_stored_entry_is_matched_at_most_once() -> None:
    stored = stored_from(record(guid="old", link="https://blog.example/p", title="P"), id=1)
    doc = [
        record(guid="old", link="https://blog.example/p", title="P"),
        record(guid="new", link="https://blog.example/p", title="P"),
    ]
    plan = plan_entries(doc, existing=[stored], candidates=[])
    assert plan.unchanged == 1
    assert [new.record.key for new in plan.inserts] == ["guid:new"]


DAY_1 = datetime(2024, 3, 4, 10, tzinfo=UTC)
DAY_2 = datetime(2024, 3, 5, 10, tzinfo=UTC)
BOILERPLATE = "<p>A new episode of our podcast is out. Listen now!</p>"


@pytest.mark.parametrize(
    ("old", "new", "same_entry"),
    [
        # One side without GUID, sharing one link: an edit keeps its title or its date.
        pytest.param(
            {"title": "Episode 1: Cats", "published": DAY_1, "content": BOILERPLATE},
            {"title": "Episode 2: Dogs", "published": DAY_2, "content": BOILERPLATE},
            False,
            id="new-title-new-date-same-boilerplate-is-a-new-entry",
        ),
        pytest.param(
            {"title": "Cats", "published": DAY_1, "content": "<p>v1</p>"},
            {"title": "Dogs", "published": DAY_2, "content": "<p>v2</p>"},
            False,
            id="everything-new-is-a-new-entry",
        ),
        pytest.param(
            {"title": "Cats", "published": DAY_1, "content": "<p>v1</p>"},
            {"title": "Cats", "published": DAY_1, "content": "<p>v2, typo fixed</p>"},
            True,
            id="text-edit",
        ),
        pytest.param(
            {"title": "Cats", "published": DAY_1, "content": "<p>v1</p>"},
            {"title": "Cats", "published": DAY_2, "content": "<p>v2</p>"},
            True,
            id="same-title-redated-and-edited",
        ),
        pytest.param(
            {"title": "Cats", "published": DAY_1, "content": BOILERPLATE},
            {"title": "Cats and a dog", "published": DAY_1, "content": BOILERPLATE},
            True,
            id="title-edit-same-date-same-text",
        ),
        pytest.param(
            {"title": "Cats", "published": DAY_1, "content": "<p>v1</p>"},
            {"title": "Dogs", "published": DAY_1, "content": "<p>v2</p>"},
            False,
            id="title-and-text-changed-same-date-is-a-new-entry",
        ),
        pytest.param(
            {"title": "Cats", "published": DAY_1, "content": BOILERPLATE},
            {"title": "Dogs", "published": None, "content": BOILERPLATE},
            False,
            id="new-title-and-no-date-is-a-new-entry",
        ),
        pytest.param(
            {"guid": None, "title": "Hello", "published": DAY_1},
            {"guid": "tag:blog.example,2025:hello", "title": "Hello", "published": DAY_1},
            True,
            id="link-gained-a-guid",
        ),
    ],
)
def test_link_step_rule_without_guid_on_one_side(
    old: dict[str, object], new: dict[str, object], same_entry: bool
) -> None:
    link = "https://podcast.example/"
    before = record(link=link, text=str(old.get("content", "")), **old)
    after = record(link=link, text=str(new.get("content", "")), **new)
    plan = plan_entries([after], existing=[stored_from(before, id=1)], candidates=[])
    if same_entry:
        assert plan.inserts == () and [u.entry_id for u in plan.updates] == [1]
    else:
        assert len(plan.inserts) == 1 and plan.updates == ()


def test_entry_dated_only_by_its_edit_time_keeps_its_first_date() -> None:
    """Atom <updated> (RFC 4287 §4.2.15) is the last edit: an edit moves it, but the
    entry keeps the date it was first stored with. A real publication date follows
    the feed's correction (test_dated_update_takes_the_feeds_corrected_date)."""
    first = datetime(2024, 2, 1, tzinfo=UTC)
    old = make_record(
        replace(
            parsed(guid="v1.0", published=first, content="<p>notes</p>"), date_is_edit_time=True
        ),
        feed_url=FEED,
        text="notes",
        now=NOW,
    )
    edited = make_record(
        replace(
            parsed(
                guid="v1.0", published=datetime(2024, 11, 20, tzinfo=UTC), content="<p>fixed</p>"
            ),
            date_is_edit_time=True,
        ),
        feed_url=FEED,
        text="fixed",
        now=NOW,
    )
    plan = plan_entries([edited], existing=[stored_from(old, id=4)], candidates=[])
    assert [u.entry_id for u in plan.updates] == [4]
    assert plan.updates[0].record.published == first


def test_date_only_entry_is_filed_at_noon_of_its_day_with_identity_unchanged() -> None:
    day = datetime(2024, 3, 4, tzinfo=UTC)
    dated = make_record(
        replace(parsed(link="https://blog.example/p", published=day), date_only=True),
        feed_url=FEED,
        text="",
        now=NOW,
    )
    timed = make_record(
        parsed(link="https://blog.example/p", published=day), feed_url=FEED, text="", now=NOW
    )
    assert dated.date_only and not timed.date_only
    assert dated.published == day + timedelta(hours=12) and timed.published == day
    assert dated.key == timed.key and dated.alias == timed.alias


# --- cross-posts ---------------------------------------------------------------------


def other_feed_entry(
    *,
    id: int,
    link: str | None = "https://other.example/shipping-v2",
    title: str = "Shipping v2",
    text: str = STORY,
    published: datetime = NOW - timedelta(days=1),
    duplicate_of: int | None = None,
) -> StoredEntry:
    rec = record(
        feed_url=OTHER_FEED, guid=f"o{id}", link=link, title=title, text=text, published=published
    )
    return stored_from(rec, id=id, feed_id=2, duplicate_of=duplicate_of)


CROSS_POST_CASES = [
    # (description, our record's fields, candidate fields, expected duplicate_of)
    (
        "same canonical URL with tracking parameters",
        {"link": "http://www.other.example/shipping-v2/?utm_source=blog", "title": "Different"},
        {"id": 10},
        10,
    ),
    (
        "same title, near-identical text, inside the window",
        {"link": "https://blog.example/v2", "title": "Cross-post: Shipping V2!", "text": STORY},
        {"id": 11},
        11,
    ),
    (
        "same title, different text",
        {"link": "https://blog.example/v2", "title": "Shipping v2", "text": OTHER_STORY},
        {"id": 12},
        None,
    ),
    (
        "same title and text, far apart in time",
        {
            "link": "https://blog.example/v2",
            "title": "Shipping v2",
            "published": NOW - timedelta(days=60),
        },
        {"id": 13},
        None,
    ),
    (
        "different title, same text",
        {"link": "https://blog.example/v2", "title": "Version two is out"},
        {"id": 14},
        None,
    ),
    (
        "empty titles never match on title",
        {"link": "https://blog.example/v2", "title": ""},
        {"id": 15, "title": ""},
        None,
    ),
    (
        "empty texts never match on title",
        {"link": "https://blog.example/v2", "text": ""},
        {"id": 16, "text": ""},
        None,
    ),
    (
        "same URL, title containing the other's",
        {"link": "https://other.example/shipping-v2", "title": "Shipping v2 is out", "text": ""},
        {"id": 20},
        20,
    ),
    (
        "same URL, title a few characters apart",
        {"link": "https://other.example/shipping-v2", "title": "Shiping v2", "text": ""},
        {"id": 21},
        21,
    ),
    (
        "same URL, different title and text (two posts linking one page)",
        {"link": "https://other.example/shipping-v2", "title": "My notes", "text": OTHER_STORY},
        {"id": 22},
        None,
    ),
    (
        "same URL, titles apart only in their numbers",
        {"link": "https://other.example/shipping-v2", "title": "Episode 11", "text": ""},
        {"id": 23, "title": "Episode 10"},
        None,
    ),
    (
        "same URL, different title, the same one-line text",
        {"link": "https://other.example/shipping-v2", "title": "Mon", "text": "Listen now!"},
        {"id": 24, "title": "Tue", "text": "Listen now!"},
        None,
    ),
    (
        "same title, the same one-line boilerplate text",
        {"link": "https://blog.example/e12", "title": "Episode 12", "text": "Out now. Listen!"},
        {"id": 25, "title": "Episode 12", "text": "Out now. Listen!"},
        None,
    ),
    (
        "candidate that is itself a copy points at the root story",
        {"link": "https://other.example/shipping-v2"},
        {"id": 17, "duplicate_of": 4},
        4,
    ),
]


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [case[1:] for case in CROSS_POST_CASES],
    ids=[case[0] for case in CROSS_POST_CASES],
)
def test_cross_post_detection(
    ours: dict[str, object], theirs: dict[str, object], expected: int | None
) -> None:
    fields: dict[str, object] = {"guid": "ours", "title": "Shipping v2", **ours}
    rec = record(**fields)  # type: ignore[arg-type]
    candidate = other_feed_entry(**theirs)  # type: ignore[arg-type]
    plan = plan_entries([rec], existing=[], candidates=[candidate])
    assert len(plan.inserts) == 1
    assert plan.inserts[0].duplicate_of == expected
    assert plan.duplicates == (0 if expected is None else 1)


def test_near_identical_text_counts_as_the_same_story() -> None:
    edited = STORY.replace("single transaction", "single SQLite transaction") + " Thanks!"
    assert text_similarity(STORY, edited) >= 0.8
    rec = record(guid="ours", link="https://blog.example/v2", title="Shipping v2", text=edited)
    plan = plan_entries([rec], existing=[], candidates=[other_feed_entry(id=3)])
    assert plan.inserts[0].duplicate_of == 3


def test_earliest_candidate_is_preferred() -> None:
    later = other_feed_entry(id=1, published=NOW - timedelta(days=1))
    earlier = other_feed_entry(id=2, published=NOW - timedelta(days=3))
    rec = record(guid="ours", link="https://blog.example/v2", title="Shipping v2")
    plan = plan_entries([rec], existing=[], candidates=[later, earlier])
    assert plan.inserts[0].duplicate_of == 2


def test_window_is_configurable() -> None:
    candidate = other_feed_entry(id=1, published=NOW - timedelta(days=3))
    rec = record(guid="ours", link="https://blog.example/v2", title="Shipping v2")
    narrow = plan_entries([rec], existing=[], candidates=[candidate], window=timedelta(days=1))
    wide = plan_entries([rec], existing=[], candidates=[candidate])
    assert narrow.inserts[0].duplicate_of is None
    assert wide.inserts[0].duplicate_of == 1


def test_updates_are_never_marked_as_cross_posts() -> None:
    old = record(guid="a", link="https://other.example/shipping-v2", content="<p>1</p>")
    new = record(guid="a", link="https://other.example/shipping-v2", content="<p>2</p>")
    plan = plan_entries(
        [new], existing=[stored_from(old, id=1)], candidates=[other_feed_entry(id=9)]
    )
    assert plan.inserts == () and len(plan.updates) == 1


# --- text similarity ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "low", "high"),
    [
        (STORY, STORY, 1.0, 1.0),
        (STORY, STORY.upper(), 1.0, 1.0),
        (STORY, OTHER_STORY, 0.0, 0.05),
        ("", "", 0.0, 0.0),
        (STORY, "", 0.0, 0.0),
        ("one two", "one two", 1.0, 1.0),
        ("one two", "one three", 0.0, 0.0),
        ("a b c d e", "a b c d x", 0.4, 0.8),
    ],
)
def test_text_similarity_table(a: str, b: str, low: float, high: float) -> None:
    assert low <= text_similarity(a, b) <= high


def test_text_similarity_of_huge_texts_is_cheap_and_capped() -> None:
    huge = " ".join(f"w{i}" for i in range(400_000))
    started = time.perf_counter()
    assert text_similarity(huge, huge + " tail words differ") == 1.0  # beyond the cap
    assert time.perf_counter() - started < 2.0


# --- properties ---------------------------------------------------------------------

_path = st.lists(st.from_regex(r"[a-z0-9-]{1,8}", fullmatch=True), min_size=1, max_size=4).map(
    "/".join
)


@given(
    _path,
    st.sampled_from(["http://", "https://"]),
    st.sampled_from(["", "www.", "WWW."]),
    st.sampled_from(["", "/"]),
    st.sampled_from(["", "?utm_source=rss", "?fbclid=x&utm_medium=feed"]),
    st.sampled_from(["", "#c", "#comment-401", "#utm_source=x"]),
)
def test_aliases_stable_under_guid_churn(
    path: str, scheme: str, www: str, slash: str, tail: str, anchor: str
) -> None:
    reference = entry_alias(f"https://blog.example/{path}{anchor}", None, "T", None, feed_url=FEED)
    churned = entry_alias(
        f"{scheme}{www}blog.example/{path}{slash}{tail}{anchor}", None, "T", None, feed_url=FEED
    )
    relative = entry_alias(f"/{path}{slash}{tail}{anchor}", None, "T", None, feed_url=FEED)
    assert churned == reference == relative
    bare = entry_alias(f"https://blog.example/{path}", None, "T", None, feed_url=FEED)
    # An identifying fragment is never folded away; a tracking one always is.
    assert (reference == bare) == (anchor in ("", "#utm_source=x"))


_records = st.builds(
    lambda guid, link, title, days: record(
        guid=guid,
        link=link,
        title=title,
        published=None if days is None else NOW - timedelta(days=days),
    ),
    guid=st.one_of(st.none(), st.sampled_from(["1", "2", "http://blog.example/1", "/1", "/2"])),
    link=st.one_of(
        st.none(), st.sampled_from(["https://blog.example/1", "https://blog.example/2"])
    ),
    title=st.sampled_from(["Shipping v2", "Other", ""]),
    days=st.one_of(st.none(), st.integers(0, 30)),
)


@st.composite
def _stored_world(draw: st.DrawFn) -> tuple[list[StoredEntry], list[StoredEntry]]:
    existing = [
        stored_from(rec, id=i + 1) for i, rec in enumerate(draw(st.lists(_records, max_size=4)))
    ]
    candidates: list[StoredEntry] = []
    roots: list[int] = []
    for i in range(draw(st.integers(0, 5))):
        entry_id = 100 + i
        point_at_root = bool(roots) and draw(st.booleans())
        candidates.append(
            other_feed_entry(
                id=entry_id,
                link=draw(st.sampled_from(["https://blog.example/1", "https://other.example/x"])),
                published=NOW - timedelta(days=draw(st.integers(0, 20))),
                duplicate_of=draw(st.sampled_from(roots)) if point_at_root else None,
            )
        )
        if not point_at_root:
            roots.append(entry_id)
    return existing, candidates


@settings(max_examples=150, deadline=None)
@given(st.lists(_records, max_size=8), _stored_world())
def test_plan_entries_invariants(
    records: list[EntryRecord], world: tuple[list[StoredEntry], list[StoredEntry]]
) -> None:
    existing, candidates = world
    plan = plan_entries(records, existing=existing, candidates=candidates)

    insert_keys = [new.record.key for new in plan.inserts]
    assert len(insert_keys) == len(set(insert_keys))

    roots = {c.id for c in candidates if c.duplicate_of is None}
    published = {c.id: c.published for c in candidates}
    for new in plan.inserts:
        assert new.duplicate_of is None or new.duplicate_of in roots
        assert new.duplicate_of is None or new.supersedes is None
        if new.supersedes is not None:  # only an earlier, dated copy takes the credit
            assert new.supersedes in roots and not new.record.date_missing
            assert new.record.published < published[new.supersedes]
    superseded = [new.supersedes for new in plan.inserts if new.supersedes is not None]
    assert len(superseded) == len(set(superseded))

    updated_ids = [update.entry_id for update in plan.updates]
    assert len(updated_ids) == len(set(updated_ids))
    assert set(updated_ids) <= {e.id for e in existing}

    unique = len({r.key for r in records})
    assert len(plan.inserts) + len(plan.updates) + plan.unchanged == unique
    assert plan.skipped_in_document == len(records) - unique

    published = [new.record.published for new in plan.inserts]
    assert published == sorted(published)


@settings(max_examples=100, deadline=None)
@given(st.lists(_records, max_size=8))
def test_second_identical_poll_writes_nothing(records: list[EntryRecord]) -> None:
    first = plan_entries(records, existing=[], candidates=[])
    stored = [stored_from(new.record, id=i + 1) for i, new in enumerate(first.inserts)]
    again = plan_entries(records, existing=stored, candidates=[])
    assert again.inserts == () and again.updates == ()
    assert again.unchanged == len(first.inserts)


@given(st.text(max_size=200), st.text(max_size=200))
def test_text_similarity_is_symmetric_and_bounded(a: str, b: str) -> None:
    score = text_similarity(a, b)
    assert 0.0 <= score <= 1.0
    assert score == text_similarity(b, a)


@given(st.text(max_size=200))
def test_normalise_title_is_idempotent(title: str) -> None:
    once = normalise_title(title)
    assert normalise_title(once) == once


# --- cross-post credit: the earliest-published copy is the story (DESIGN §5.2) --------


def test_earlier_published_copy_becomes_the_story() -> None:
    story = other_feed_entry(id=10, published=NOW - timedelta(hours=1))
    rec = record(
        guid="ours", link="https://other.example/shipping-v2", published=NOW - timedelta(hours=5)
    )
    plan = plan_entries([rec], existing=[], candidates=[story])
    (new,) = plan.inserts
    assert (new.duplicate_of, new.supersedes) == (None, 10)
    assert plan.duplicates == 0


def test_earlier_copy_supersedes_the_root_of_a_matched_copy() -> None:
    root = other_feed_entry(
        id=4, link="https://third.example/v2", published=NOW - timedelta(hours=3)
    )
    copy = other_feed_entry(id=17, duplicate_of=4, published=NOW - timedelta(hours=1))
    rec = record(
        guid="ours", link="https://other.example/shipping-v2", published=NOW - timedelta(hours=9)
    )
    plan = plan_entries([rec], existing=[], candidates=[copy, root])
    assert (plan.inserts[0].duplicate_of, plan.inserts[0].supersedes) == (None, 4)


@pytest.mark.parametrize(
    ("published", "expected"),
    [
        (NOW - timedelta(hours=1), (10, None)),  # later than the story: a copy
        (NOW - timedelta(hours=3), (10, None)),  # the same moment: the stored story stays
        (None, (10, None)),  # no believable date: never credited
    ],
)
def test_later_or_undated_copy_stays_a_copy(
    published: datetime | None, expected: tuple[int | None, int | None]
) -> None:
    story = other_feed_entry(id=10, published=NOW - timedelta(hours=3))
    rec = record(guid="ours", link="https://other.example/shipping-v2", published=published)
    plan = plan_entries([rec], existing=[], candidates=[story])
    assert (plan.inserts[0].duplicate_of, plan.inserts[0].supersedes) == expected


def test_of_several_earlier_copies_in_one_document_the_earliest_is_the_story() -> None:
    """Two posts of one feed that both read as the story: the earliest-published joins
    it (and takes the credit); the other stays a post of its own, since two entries of
    one feed are never copies of each other."""
    story = other_feed_entry(id=10, published=NOW - timedelta(hours=1))
    early = record(
        guid="a",
        link="https://blog.example/a",
        title="Shipping v2",
        published=NOW - timedelta(hours=4),
    )
    earliest = record(
        guid="b",
        link="https://blog.example/b",
        title="Shipping v2",
        published=NOW - timedelta(hours=8),
    )
    plan = plan_entries([early, earliest], existing=[], candidates=[story])
    by_key = {new.record.key: (new.duplicate_of, new.supersedes) for new in plan.inserts}
    assert by_key == {"guid:b": (None, 10), "guid:a": (None, None)}


# --- distinct posts are never merged ---------------------------------------------------


TITLE_AGREEMENT = [
    ("shipping v2", "shipping v2", True),
    ("shipping v2", "shipping v2 is out", True),
    ("shipping v2", "shiping v2", True),
    ("episode 10", "episode 11", False),
    ("part 1 of the series", "part 2 of the series", False),
    ("notes", "notes on rust", False),  # one word contained is too little
    ("monday notes", "tuesday notes", False),
    ("", "", False),
    ("", "shipping v2", False),
]


@pytest.mark.parametrize(("a", "b", "expected"), TITLE_AGREEMENT)
def test_titles_agree(a: str, b: str, expected: bool) -> None:
    assert titles_agree(a, b) is expected
    assert titles_agree(b, a) is expected


def test_a_url_several_records_of_the_document_share_is_no_evidence() -> None:
    """Posts of one blog all linking its home page; a post of another blog linking it
    with the same title: no record joins it on the URL."""
    home = "https://other.example/"
    candidate = other_feed_entry(id=10, link=home, title="Weekly", text=OTHER_STORY)
    recs = [record(guid=f"p{i}", link=home, title="Weekly", text=f"post {i}") for i in range(3)]
    plan = plan_entries(recs, existing=[], candidates=[candidate], feed_id=1)
    assert [new.duplicate_of for new in plan.inserts] == [None, None, None]


def test_a_url_a_stored_entry_of_this_feed_has_is_no_evidence() -> None:
    """The feed gave the URL to an earlier post: the new post at that URL is another."""
    home = "https://other.example/"
    older = stored_from(record(guid="old", link=home, title="Older", text=""), id=5)
    candidate = other_feed_entry(id=10, link=home, title="Weekly", text="")
    rec = record(guid="new", link=home, title="Weekly", text="")
    plan = plan_entries([rec], existing=[older], candidates=[candidate], feed_id=1)
    assert plan.inserts[0].duplicate_of is None


def test_a_url_two_entries_of_the_candidate_feed_share_is_no_evidence() -> None:
    home = "https://other.example/"
    first = other_feed_entry(id=10, link=home, title="Weekly", text="")
    second = other_feed_entry(id=11, link=home, title="Monthly", text="")
    rec = record(guid="ours", link=home, title="Weekly", text="")
    plan = plan_entries([rec], existing=[], candidates=[first, second], feed_id=1)
    assert plan.inserts[0].duplicate_of is None


def test_stories_holding_an_entry_of_this_feed_are_not_joined() -> None:
    """A story whose root or a copy is an entry of the polled feed (id 1)."""
    root_here = stored_from(record(guid="r", link="https://blog.example/r"), id=3)
    copy_elsewhere = other_feed_entry(id=10, duplicate_of=3)
    copy_here = replace(other_feed_entry(id=12, duplicate_of=11), feed_id=1)
    rec = record(guid="ours", link="https://other.example/shipping-v2", title="Shipping v2")
    for candidates in ([root_here, copy_elsewhere], [other_feed_entry(id=11), copy_here]):
        blocked = plan_entries([rec], existing=[], candidates=candidates, feed_id=1)
        assert blocked.inserts[0].duplicate_of is None
    # Without the feed's id, the plan cannot tell (the store leaves such stories out).
    unknown = plan_entries([rec], existing=[], candidates=[root_here, copy_elsewhere])
    assert unknown.inserts[0].duplicate_of == 3


def test_undated_entry_without_guid_or_link_is_updated_when_its_body_changes() -> None:
    first = record(title="Status", text="Deployed the parser.", published=None)
    edited = record(title="Status", text="Deployed it.", published=None)
    assert first.key != edited.key and first.alias == edited.alias
    plan = plan_entries([edited], existing=[stored_from(first, id=1)], candidates=[])
    assert plan.inserts == () and [u.entry_id for u in plan.updates] == [1]
