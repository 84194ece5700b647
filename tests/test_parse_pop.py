"""parse drives feedparser with its own ``pop`` (the end of every element): the same
results as feedparser's, over feedparser's own test corpus (tests/data/feedparser/) and
the cases that take the branches it rewrote (windows-1252 characters, base64, XHTML).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import feedparser.mixin
import pytest

from aggregator import parse as parse_module

DATA = Path(__file__).parent / "data" / "feedparser"
EXTRA = [
    # C1 characters, raw and as references: windows-1252 reads them as printable.
    b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>\xc2\x93T'
    b"\xc2\x94</title><link>https://e.example/?a=1&amp;b=2</link><item><title>&#147;q&#148;"
    b"</title><description>a\xc2\x80b &#150; c</description><link>https://e.example/p?x=1"
    b"&amp;y=2</link><category>c\xc2\x99</category></item></channel></rss>",
    # base64 content, XHTML content with and without a lone wrapping <div>.
    b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title type="xhtml">'
    b'<div xmlns="http://www.w3.org/1999/xhtml">T <b>x</b></div></title><entry><id>i</id>'
    b'<content type="application/octet-stream" mode="base64">aGVsbG8=</content>'
    b'<summary type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"> <p>a</p> </div>'
    b'<div xmlns="http://www.w3.org/1999/xhtml">b</div></summary></entry><entry><id>j</id>'
    b'<content type="xhtml">\n <div xmlns="http://www.w3.org/1999/xhtml"><div>x</div>'
    b"<br/>\x80</div>\n</content><title type='text'>&lt;b&gt;</title></entry></feed>",
    # Not well-formed: the lenient parser runs, with the same pop.
    b"<rss><channel><title>T &amp; <b>x</channel><item><title>a&#150;b</title><link>"
    b"http://e.example/?a=1&b=2</link><description>&lt;p&gt;x</item></rss>",
]


def _documents() -> Iterator[tuple[str, bytes]]:
    for name in ("wellformed.tar.xz", "sanitize.tar.xz"):
        with tarfile.open(DATA / name) as archive:
            for member in sorted(archive.getmembers(), key=lambda m: m.name):
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is not None:
                    yield member.name, handle.read()
    for index, data in enumerate(EXTRA):
        yield f"extra-{index}", data


def _results(data: bytes) -> tuple[Any, ...]:
    try:
        handler, malformed = parse_module._run_feedparser(data)
    except Exception as error:  # a failure must be the same failure
        return ("raised", type(error).__name__)
    return (
        handler.version,
        handler.feeddata,
        handler.entries,
        handler.namespaces_in_use,
        malformed,
    )


def test_pop_gives_what_feedparser_pop_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    parse_module.configure_feedparser()
    documents = list(_documents())
    assert len(documents) > 1700
    ours = [_results(data) for _, data in documents]
    monkeypatch.setattr(parse_module._Fixes, "pop", feedparser.mixin._FeedParserMixin.pop)
    theirs = [_results(data) for _, data in documents]
    differ = [name for (name, _), a, b in zip(documents, ours, theirs, strict=True) if a != b]
    assert not differ, differ[:10]
    assert any("\u201c" in str(result) for result in ours[-3:])  # the C1 cases were read
