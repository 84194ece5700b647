"""OPML import and export: round trip, hostile files, bad outlines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.errors import SourceError
from aggregator.models import FeedSource
from aggregator.opml import read_opml, write_opml
from aggregator.sources import export_opml, import_opml
from aggregator.store import Store
from aggregator.store import feeds as feed_rows

NOW = datetime(2026, 11, 28, tzinfo=UTC)

NESTED = b"""<?xml version="1.0"?>
<opml version="2.0"><head><title>subs</title></head><body>
  <outline text="Research">
    <outline text="Learning Layers" type="rss" xmlUrl="https://project.learning-layers.eu/feed/"/>
    <outline text="Clusters" title="Cluster Performance Blog" type="rss" xmlUrl="https://clusters.test/feed"/>
  </outline>
  <outline text="dup" type="rss" xmlUrl="https://clusters.test/feed"/>
  <outline text="bad" type="rss" xmlUrl="javascript:alert(1)"/>
  <outline text="ftp" type="rss" xmlUrl="ftp://files.test/feed"/>
</body></opml>"""


def test_round_trip_keeps_urls_and_titles() -> None:
    feeds = [
        FeedSource(url="https://a.test/feed", title="A & <B>"),
        FeedSource(url="https://b.test/rss"),
    ]
    document = write_opml(feeds, title="mine", now=NOW)
    assert read_opml(document.encode()) == [
        FeedSource(url="https://a.test/feed", title="A & <B>"),
        # Written with its URL as the label (OPML needs a text); read back as no title.
        FeedSource(url="https://b.test/rss", title=None),
    ]


PLACEHOLDERS = b"""<?xml version="1.0"?>
<opml version="2.0"><head><title>subs</title></head><body>
  <outline text="" type="rss" xmlUrl="https://empty.test/feed"/>
  <outline text="https://url.test/feed.xml" type="rss" xmlUrl="https://url.test/feed.xml"/>
  <outline text="http://other.test/" type="rss" xmlUrl="https://other.test/rss"/>
  <outline text="bare.test/atom" type="rss" xmlUrl="https://bare.test/atom"/>
  <outline title="https://t.test/feed" text="Typed in text" type="rss" xmlUrl="https://t.test/feed"/>
  <outline text="  My   Blog " type="rss" xmlUrl="https://named.test/feed"/>
</body></opml>"""


def test_outline_titles_that_are_empty_or_urls_are_no_titles() -> None:
    titles = {source.url: source.title for source in read_opml(PLACEHOLDERS)}
    assert titles == {
        "https://empty.test/feed": None,
        "https://url.test/feed.xml": None,
        "https://other.test/rss": None,
        "https://bare.test/atom": None,
        "https://t.test/feed": "Typed in text",
        "https://named.test/feed": "My Blog",
    }


def test_import_adds_good_outlines_and_reports_bad_ones(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db.sqlite3")
    report = import_opml(store, NESTED, name="subs.opml", now=NOW)
    assert [f.url for f in report.added] == [
        "https://project.learning-layers.eu/feed/",
        "https://clusters.test/feed",
    ]
    assert len(report.problems) == 2
    assert all(p.startswith("subs.opml: ") and "\n" not in p for p in report.problems)
    again = import_opml(store, NESTED, name="subs.opml", now=NOW)
    assert again.added == () and len(again.known) == 2
    exported = export_opml(feed_rows.list_feeds(store.db), now=NOW)
    assert [s.url for s in read_opml(exported.encode())] == [f.url for f in report.added]
    store.close()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not well-formed"),
        (b"<rss><channel/></rss>", "not an OPML document"),
        (
            b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
            b'<opml><body><outline xmlUrl="https://x.test/&b;"/></body></opml>',
            "refused",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE opml SYSTEM "file:///etc/passwd"><opml><body/></opml>',
            "refused",
        ),
        # Repair never lets a DTD through: the entity is still refused, not expanded.
        (
            b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY a "x">]>'
            b'<opml><body><outline text="&eacute; & &a;" xmlUrl="https://x.test/"/></body></opml>',
            "refused",
        ),
        (b"<opml><body><outline text='unclosed></body></opml>", "not well-formed"),
    ],
)
def test_hostile_or_broken_opml_is_one_line_error(data: bytes, needle: str) -> None:
    with pytest.raises(SourceError) as caught:
        read_opml(data, name="in.opml")
    assert needle in str(caught.value)
    assert str(caught.value).startswith("in.opml: ")
