"""Atom and OPML exports: valid documents, conditional GET."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import timedelta

import feedparser
import pytest
from webdata import NOW, add_entry, record

from aggregator.opml import read_opml
from aggregator.store import Store

A = "{http://www.w3.org/2005/Atom}"


@pytest.fixture
def alpha_title() -> str:
    """The first feed's title in ``web_site``: markup in it must come out escaped."""
    return "Alpha & <Co>"


def fill(store: Store, alpha: int, beta: int) -> tuple[int, int, int]:
    story = add_entry(
        store,
        alpha,
        record(
            "Story <one> & more",
            published=NOW - timedelta(hours=2),
            link="https://alpha.test/one",
            author="Ann",
            body='<p>Hello <b>world</b> \x0b<img src="x" onerror="alert(1)"></p>',
        ),
    )
    copy = add_entry(
        store,
        beta,
        record(
            "Story <one> & more", published=NOW - timedelta(hours=1), link="https://beta.test/1"
        ),
        duplicate_of=story,
    )
    other = add_entry(store, beta, record("Second", published=NOW - timedelta(hours=3), link=None))
    return story, copy, other


def test_merged_atom_is_valid_and_lists_stories(web_site) -> None:
    store, client, alpha, beta = web_site
    story, _copy, other = fill(store, alpha, beta)
    response = client.get("/feed.atom")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"

    root = ET.fromstring(response.content)
    assert root.tag == f"{A}feed"
    for name in ("id", "title", "updated"):
        assert root.find(f"{A}{name}") is not None and root.findtext(f"{A}{name}"), name
    self_link = [link for link in root.findall(f"{A}link") if link.get("rel") == "self"]
    assert self_link and self_link[0].get("href") == "http://testserver/feed.atom"
    entries = root.findall(f"{A}entry")
    assert len(entries) == 2  # the cross-post is the story's copy, not a second entry
    ids = [entry.findtext(f"{A}id") for entry in entries]
    assert ids == [f"http://testserver/entries/{story}", f"http://testserver/entries/{other}"]
    first = entries[0]
    assert first.findtext(f"{A}title") == "Story <one> & more"
    assert first.find(f"{A}link").get("href") == "https://alpha.test/one"
    assert first.findtext(f"{A}updated") == "2026-11-28T10:00:00Z"
    assert first.findtext(f"{A}author/{A}name") == "Ann"
    content = first.find(f"{A}content")
    assert content is not None and content.get("type") == "html"
    assert "<b>world</b>" in (content.text or "")  # escaped HTML, parsed back
    assert "onerror" not in (content.text or "")
    # An entry without a link of its own links to its page here.
    assert entries[1].find(f"{A}link").get("href") == f"http://testserver/entries/{other}"

    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert [e.title for e in parsed.entries] == ["Story <one> & more", "Second"]
    assert parsed.entries[0].link == "https://alpha.test/one"
    assert parsed.feed.title == "Blog digest"


def test_source_atom_lists_that_source(web_site) -> None:
    store, client, alpha, beta = web_site
    _story, copy, other = fill(store, alpha, beta)
    parsed = feedparser.parse(client.get(f"/sources/{beta}/feed.atom").content)
    assert not parsed.bozo
    assert parsed.feed.title == "Beta blog"
    assert [e.id for e in parsed.entries] == [
        f"http://testserver/entries/{copy}",
        f"http://testserver/entries/{other}",
    ]
    assert parsed.feed.links[0].href == f"http://testserver/sources/{beta}/feed.atom"
    assert client.get("/sources/99/feed.atom").status_code == 404


def test_atom_conditional_get(web_site) -> None:
    store, client, alpha, beta = web_site
    fill(store, alpha, beta)
    first = client.get("/feed.atom")
    etag = first.headers["etag"]
    last_modified = first.headers["last-modified"]
    assert etag.startswith('"') and last_modified.endswith("GMT")

    again = client.get("/feed.atom", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert client.get("/feed.atom", headers={"if-none-match": f'"x", W/{etag}'}).status_code == 304
    assert client.get("/feed.atom", headers={"if-modified-since": last_modified}).status_code == 304
    # If-None-Match wins over If-Modified-Since when both are sent.
    both = {"if-none-match": '"other"', "if-modified-since": last_modified}
    assert client.get("/feed.atom", headers=both).status_code == 200
    stale = "Sat, 28 Nov 2026 11:00:00 GMT"
    assert client.get("/feed.atom", headers={"if-modified-since": stale}).status_code == 200
    assert client.get("/feed.atom", headers={"if-modified-since": "garbage"}).status_code == 200

    add_entry(store, alpha, record("New one", published=NOW), now=NOW + timedelta(minutes=5))
    changed = client.get("/feed.atom", headers={"if-none-match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert "New one" in changed.text
    assert client.get("/feed.atom", headers={"if-modified-since": last_modified}).status_code == 200


def test_empty_atom_is_valid(web_site) -> None:
    _, client, _, _ = web_site
    parsed = feedparser.parse(client.get("/feed.atom").content)
    assert not parsed.bozo and parsed.entries == []


def test_opml_export(web_site) -> None:
    _, client, _alpha, _beta = web_site
    response = client.get("/opml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/x-opml")
    sources = read_opml(response.content)
    assert [(s.url, s.title) for s in sources] == [
        ("https://alpha.test/feed", "Alpha & <Co>"),
        ("https://beta.test/feed", "Beta blog"),
    ]
