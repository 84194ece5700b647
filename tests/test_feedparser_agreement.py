"""Agreement with feedparser over its own test corpus (tests/data/feedparser/).

For every well-formed document of feedparser's test suite: the entries we store equal
the distinct entries feedparser finds in it. Each document goes through our real path
(parse, sanitise, identity, plan, write) into one real SQLite file. Every difference
must be one of the named rules below; the test says which document broke which rule.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser
import pytest

from aggregator.config import PollSettings
from aggregator.errors import ParseError
from aggregator.limits import ParseLimits
from aggregator.models import FeedSource
from aggregator.pipeline import plan_poll
from aggregator.prepare import prepare_feed
from aggregator.sources import add_source
from aggregator.store import Store
from aggregator.store import entries as entry_rows

ARCHIVE = Path(__file__).parent / "data" / "feedparser" / "wellformed.tar.xz"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

# Why a stored count may differ from the number of <item>/<entry> elements feedparser
# reports. Nothing else may.
SAME_ID = "same id: entries with one GUID / atom:id are one entry (RSS 2.0 guid, RFC 4287 4.1.1)"
NOTHING_TO_IDENTIFY = (
    "nothing to identify it: no id, link, title, date or text, so all such entries of a "
    "document are one"
)
SAME_LINK_TITLE_DATE = "no id, and the same link, title and date as another entry: a repeat"
SAME_TITLE_DATE_TEXT = "no id or link, and the same title, date and text: a repeat"
# A whole document may be refused only for this reason (reported in one line to the
# operator, never silently): Microsoft's Channel Definition Format of 1997, a <CHANNEL>
# root, is not RSS, Atom or RDF.
CDF_NOT_READ = "CDF (Channel Definition Format) is not a format we read"


def _documents() -> Iterator[tuple[str, bytes]]:
    with tarfile.open(ARCHIVE) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            if member.isfile() and member.name.endswith(".xml"):
                handle = archive.extractfile(member)
                assert handle is not None
                yield member.name, handle.read()


def _text(entry: Mapping[str, Any]) -> str:
    contents = entry.get("content") or []
    value = contents[0].get("value", "") if contents else entry.get("summary", "")
    return " ".join(str(value).split())


def _date(entry: Mapping[str, Any]) -> object:
    return entry.get("published_parsed") or entry.get("updated_parsed")


def _feedparser(data: bytes) -> Any:
    return feedparser.parse(data, resolve_relative_uris=False, sanitize_html=False)


def expected_entries(data: bytes) -> tuple[int, dict[str, int]]:
    """Distinct entries by feedparser's reading, and how many each rule folded."""
    parsed = _feedparser(data)
    seen: set[tuple[object, ...]] = set()
    folded: dict[str, int] = {}
    for entry in parsed.entries:
        guid = " ".join(str(entry.get("id") or "").split())
        link = entry.get("link") or ""
        title = " ".join(str(entry.get("title") or "").split()).casefold()
        if guid:
            identity: tuple[object, ...] = ("id", guid)
            rule = SAME_ID
        elif link:
            identity = ("link", link, title, _date(entry))
            rule = SAME_LINK_TITLE_DATE
        elif title or _date(entry) or _text(entry):
            identity = ("text", title, _date(entry), _text(entry))
            rule = SAME_TITLE_DATE_TEXT
        else:
            identity = ("nothing",)
            rule = NOTHING_TO_IDENTIFY
        if identity in seen:
            folded[rule] = folded.get(rule, 0) + 1
        seen.add(identity)
    return len(seen), folded


def test_corpus_is_there_and_large() -> None:
    names = [name for name, _ in _documents()]
    assert len(names) > 900
    assert any("/rss/" in n for n in names) and any("/atom10/" in n for n in names)
    assert (ARCHIVE.parent / "LICENSE").read_text().count("BSD") + (
        ARCHIVE.parent / "LICENSE"
    ).read_text().count("Redistribution") >= 1


@pytest.mark.timeout(60)
def test_every_wellformed_feed_stores_each_distinct_entry_once(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "corpus.sqlite3")
    mismatches: list[str] = []
    folded_total: dict[str, int] = {}
    documents = stored_total = 0
    try:
        for number, (name, data) in enumerate(_documents()):
            url = f"https://feeds.example/{number}/{name.rsplit('/', 1)[-1]}"
            expected, folded = expected_entries(data)
            try:
                prepared = prepare_feed(data, url=url, headers={}, limits=ParseLimits(), now=NOW)
            except ParseError as error:
                if b"<CHANNEL" in data and "root element <CHANNEL>" in str(error):
                    folded_total[CDF_NOT_READ] = folded_total.get(CDF_NOT_READ, 0) + expected
                elif expected:
                    mismatches.append(f"{name}: {expected} entries, but refused: {error}")
                continue
            feed, _ = add_source(store, FeedSource(url=url), origin="cli", now=NOW)
            records = prepared.records
            with store.write() as db:
                plan = plan_poll(db, feed.id, records, window=PollSettings().cross_post_window)
                entry_rows.apply_plan(db, feed.id, plan, NOW)
            stored = entry_rows.count_entries(store.db, feed.id)
            documents += 1
            stored_total += stored
            for rule, count in folded.items():
                folded_total[rule] = folded_total.get(rule, 0) + count
            if stored != expected:
                mismatches.append(f"{name}: feedparser finds {expected} distinct, stored {stored}")
        assert store.integrity_ok()
    finally:
        store.close()
    assert mismatches == [], "\n".join(mismatches)
    assert documents > 900 and stored_total > 500
    # The rules the corpus exercises, and how often (a change here is worth a look).
    assert folded_total == {
        CDF_NOT_READ: 8,
        SAME_ID: 1,
        SAME_TITLE_DATE_TEXT: 2,
        NOTHING_TO_IDENTIFY: 1,
    }, folded_total
