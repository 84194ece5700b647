"""Fidelity: real-world feeds lose no post and none is merged, misdated or mislinked.

Each input under tests/data/fidelity/ sits beside ``<name>.expected.json``: the entries
a reader must see, reviewed by hand. An input runs through the real path of a poll
(parse, sanitise, identity and date rules: ``prepare.prepare_feed``) with a fixed
clock; an OPML input runs through ``opml.read_opml`` and ``sources.source_title``.
An input named ``…-capN-…`` is read with an entry cap of N (``ParseLimits.max_entries``).

``UPDATE_GOLDEN=1 pytest tests/test_fidelity.py`` rewrites the expected files; review
every change by eye before committing it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aggregator.limits import ParseLimits
from aggregator.opml import read_opml
from aggregator.prepare import prepare_feed
from aggregator.sources import source_title

DATA = Path(__file__).resolve().parent / "data" / "fidelity"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
FEED_URL = "https://feeds.example.com/feed.xml"
INPUTS = sorted(p for p in DATA.iterdir() if not p.name.endswith(".expected.json"))
_CAP = re.compile(r"-cap(\d+)-")
_URL_ATTRIBUTE = re.compile(r'\b(?:href|src|cite)="([^"]*)"')


def _urls(html: str) -> list[str]:
    return _URL_ATTRIBUTE.findall(html)


def actual(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if path.suffix == ".opml":
        return {
            "sources": [
                {"url": s.url, "title": source_title(s.title, s.url)}
                for s in read_opml(data, name=path.name)
            ]
        }
    cap = _CAP.search(path.name)
    limits = ParseLimits(max_entries=int(cap.group(1))) if cap else ParseLimits()
    feed = prepare_feed(data, url=FEED_URL, headers={}, limits=limits, now=NOW)
    return {
        "feed": {"title": feed.title, "site_url": feed.site_url, "format": feed.format},
        **({"warnings": list(feed.warnings)} if feed.warnings else {}),
        "entries": [
            {
                "identity": r.key,
                "title": r.title,
                "link": r.link,
                "date": "unknown"
                if r.date_missing
                else r.published.date().isoformat() + " (day only)"
                if r.date_only
                else r.published.isoformat(),
                "content_urls": _urls(r.content_html),
                "summary_urls": _urls(r.summary_html),
                "text": r.text,
            }
            for r in feed.records
        ],
    }


def _expected_path(path: Path) -> Path:
    return path.with_name(path.name.rsplit(".", 1)[0] + ".expected.json")


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def test_every_input_has_its_expected_entries() -> None:
    assert len(INPUTS) >= 10
    missing = [p.name for p in INPUTS if not _expected_path(p).exists()]
    assert not missing or os.environ.get("UPDATE_GOLDEN") == "1", missing


@pytest.mark.parametrize("path", INPUTS, ids=[p.name for p in INPUTS])
def test_feed_reads_as_its_author_wrote_it(path: Path) -> None:
    got = _dump(actual(path))
    expected_path = _expected_path(path)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_path.write_text(got, encoding="utf-8")
        return
    expected = expected_path.read_text(encoding="utf-8")
    if got != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                got.splitlines(keepends=True),
                fromfile=f"{expected_path.name} (expected)",
                tofile=f"{path.name} (parsed now)",
            )
        )
        pytest.fail(f"{path.name} no longer reads as expected:\n{diff}", pytrace=False)


def test_a_document_that_breaks_off_keeps_its_whole_entries_and_drops_the_fragment() -> None:
    """A feed cut off mid-item: the complete items are kept, the fragment with nothing a
    reader could see (no title, link, text or media) is not stored as an empty post."""
    cut = (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>oops</title>'
        b"<item><title>Whole</title><link>https://blog.test/whole</link></item>"
        b"<item><title>x</ti"
    )
    prepared = prepare_feed(
        cut, url="https://blog.test/feed", headers={}, limits=ParseLimits(), now=NOW
    )
    assert [r.title for r in prepared.records] == ["Whole"]
    assert any("broke off" in w for w in prepared.warnings), prepared.warnings
    whole = cut.replace(
        b"<item><title>x</ti", b"<item><author>a@b.test</author></item></channel></rss>"
    )
    assert (
        len(
            prepare_feed(
                whole, url="https://blog.test/feed", headers={}, limits=ParseLimits(), now=NOW
            ).records
        )
        == 2
    )
