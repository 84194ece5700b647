"""Feed document bytes -> ParsedFeed. feedparser objects never leave this module.

Hostile documents are defused before any XML parser sees them (THREATS F1-F8):

* size is capped, the text is turned into UTF-8 here (a byte-order mark wins over
  every declaration, invalid bytes are replaced), and control characters are dropped;
* every declaration in the prolog (DOCTYPE with its internal subset, ENTITY, external
  SYSTEM/PUBLIC ids) is cut out, so no entity is ever expanded and no DTD fetched,
  whatever the XML parser underneath would do;
* documents with more items than we keep are cut before parsing;
* feedparser runs with its own sanitising and URI rewriting off (nh3 does the former
  later, we do the latter), which makes parsing about twice as fast.

HTML stays raw here: summary_html and content_html are cut to size, not sanitised.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import hashlib
import html
import html.entities
import io
import json
import re
import xml.sax
import xml.sax.expatreader
import xml.sax.handler
import xml.sax.xmlreader
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import feedparser.mixin
import feedparser.sanitizer as feedparser_sanitizer
import feedparser.urls as feedparser_urls
from feedparser.api import LooseFeedParser, StrictFeedParser
from feedparser.encodings import convert_to_utf8
from feedparser.util import FeedParserDict

from .dates import best_date, has_time_of_day, parse_date
from .errors import NotAFeed, ParseError
from .limits import ParseLimits
from .media import MAX_URL_CHARS, make_item, merge_media, parse_episode
from .models import MediaItem, ParsedEntry, ParsedFeed
from .text import CONTROL, clean_text
from .urls import absolute_http_url, clean_link, is_http_url

# feedparser maps the C1 range (0x80-0x9f) to windows-1252 with str.translate over a
# dict on every text field it pops; a dict table raises and swallows a KeyError per
# character, which made this one call a fifth of all parsing time. A 256-character
# string table maps every code point to the same result (checked over all of Unicode
# in tests/test_parse.py) at about half the cost.
_FEEDPARSER_CP1252 = dict(feedparser.mixin._cp1252)
# str.translate table: code points 0x80-0x9f as windows-1252 reads them, the rest as is.
CP1252_TABLE = "".join(_FEEDPARSER_CP1252.get(code, chr(code)) for code in range(256))
_feedparser_configured = False


def configure_feedparser() -> None:
    """Install CP1252_TABLE as feedparser's windows-1252 map (``feedparser.mixin._cp1252``).

    A process-wide change to feedparser, made on purpose and not on import: ``parse_feed``
    calls this before its first XML document, so a worker process or an in-process parse
    sets it up once; later calls do nothing. The results of feedparser are the same.
    """
    global _feedparser_configured
    if not _feedparser_configured:
        feedparser.mixin._cp1252 = CP1252_TABLE
        _feedparser_configured = True


__all__ = ["ParseLimits", "configure_feedparser", "parse_feed", "repair_markup"]

# GUIDs are stored and indexed: a longer one is stored as a digest of the whole.
MAX_GUID_CHARS = 2048


def parse_feed(
    content: bytes,
    *,
    url: str,
    headers: Mapping[str, str] | None = None,
    limits: ParseLimits = ParseLimits(),
) -> ParsedFeed:
    """Parse RSS, Atom, RDF or JSON Feed bytes.

    Raises ParseError (one line, saying what the document was) when nothing usable is
    in it, and NotAFeed for an HTML page (with the feed it links to, if any). The first
    XML document parsed in a process calls ``configure_feedparser()``.
    """
    if len(content) > limits.max_document_bytes:
        raise ParseError(
            f"document is {len(content)} bytes, over the limit of {limits.max_document_bytes}",
            url=url,
        )
    if not content.strip(b"\x00\t\n\r \xef\xbb\xbf\xfe\xff"):
        raise ParseError("empty document", url=url)
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    base = _document_base(url, lowered)
    if _looks_like_json(content, lowered.get("content-type", "")):
        return _parse_json_feed(content, url=url, base=base, limits=limits)
    configure_feedparser()
    return _parse_xml_feed(content, url=url, base=base, headers=lowered, limits=limits)


def _document_base(url: str, headers: Mapping[str, str]) -> str:
    location = absolute_http_url(headers.get("content-location"), url)
    return location or (url if is_http_url(url) else "")


# --- text helpers -------------------------------------------------------------------------
_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_NAMED_REFERENCE = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "html", "xhtml"})


def _known_entities_only(text: str) -> str:
    """``text`` with every ``&name;`` that is not a whole HTML entity name escaped, so
    that ``html.unescape`` leaves it as written: unescape would read ``&notanentity;``
    as the legacy ``&not`` followed by "anentity;"."""
    if "&" not in text:
        return text
    return _NAMED_REFERENCE.sub(_escape_unknown_entity, text)


def _escape_unknown_entity(match: re.Match[str]) -> str:
    if match.group(1) + ";" in html.entities.html5:
        return match.group(0)
    return "&amp;" + match.group(1) + ";"


class _TextOfHtml(HTMLParser):
    """The text of an HTML fragment: real tags dropped (``x < y and y > z`` has none),
    script and style contents dropped, character references decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self._skipping: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skipping = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == self._skipping:
            self._skipping = None

    def handle_data(self, data: str) -> None:
        if self._skipping is None:
            self.pieces.append(data)


def _html_text(markup: str) -> str:
    parser = _TextOfHtml()
    parser.feed(_known_entities_only(markup))
    parser.close()
    return "".join(parser.pieces)


def _plain(value: object, content_type: str | None, limit: int, *, atom: bool = False) -> str:
    """A plain-text field: markup (when the feed says it is HTML) and entities decoded.

    * HTML (Atom ``type="html"``/``"xhtml"``, RSS fields that feedparser sees as HTML):
      the text an HTML parser finds, so only real tags go (``x &lt; y and y &gt; z``
      keeps its words).
    * Atom text (RFC 4287 §3.1.1.1, ``type="text"`` or no type): the XML parser has
      already decoded it, it is the text: ``&amp;lt;div&amp;gt;`` reads ``&lt;div&gt;``.
    * Other plain text (RSS titles, often escaped twice by their publishers): entity
      references left in it are decoded once.
    In every case an ``&name;`` that is not a known entity stays as written.
    """
    if not isinstance(value, str) or not value:
        return ""
    raw = value[: limit * 4]  # headroom for markup and entities, and no more work than that
    if content_type in _HTML_TYPES:
        raw = _html_text(raw)
    elif not atom and "&" in raw and _ENTITY.search(raw):
        raw = html.unescape(_known_entities_only(raw))
    return clean_text(raw)[:limit].rstrip()


def _clean_html(value: str, limit: int) -> str:
    value = value[:limit]
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    return CONTROL.sub("", value)


def _text_to_html(text: str) -> str:
    paragraphs = (p.strip() for p in re.split(r"\n\s*\n", text))
    return "".join("<p>" + html.escape(p).replace("\n", "<br>") + "</p>" for p in paragraphs if p)


# --- JSON Feed ----------------------------------------------------------------------------
def _looks_like_json(content: bytes, content_type: str) -> bool:
    if "json" in content_type.lower():
        return True
    start = content[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    return start.startswith(b"{")


def _string(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _json_authors(*holders: Mapping[str, Any]) -> str | None:
    for holder in holders:
        authors = holder.get("authors")
        if not isinstance(authors, list):
            single = holder.get("author")
            authors = [single] if isinstance(single, dict) else []
        names = [
            a["name"] for a in authors if isinstance(a, dict) and isinstance(a.get("name"), str)
        ]
        if names:
            return ", ".join(names)
    return None


def _json_item_date(item: object) -> float | None:
    if not isinstance(item, dict):
        return None
    moment = best_date(
        parse_date(_string(item.get(key))) for key in ("date_published", "date_modified")
    )
    return moment.timestamp() if moment is not None else None


def _json_date_only(item: Mapping[str, Any]) -> bool:
    for key in ("date_published", "date_modified"):
        raw = _string(item.get(key))
        if parse_date(raw) is not None:
            return not has_time_of_day(raw)
    return False


def _parse_json_feed(content: bytes, *, url: str, base: str, limits: ParseLimits) -> ParsedFeed:
    try:
        document = json.loads(content)
    except RecursionError:
        raise ParseError("not a feed: JSON nested too deeply", url=url) from None
    except ValueError as exc:  # includes UnicodeDecodeError
        raise ParseError(f"not valid JSON: {exc}", url=url) from None
    version = document.get("version") if isinstance(document, dict) else None
    if not isinstance(version, str) or not version.startswith("https://jsonfeed.org/version/"):
        raise ParseError("JSON document is not a JSON Feed (no jsonfeed.org version)", url=url)
    assert isinstance(document, dict)
    feed_base = clean_link(_string(document.get("feed_url")), base) or base
    items = document.get("items")
    items = items if isinstance(items, list) else []
    warnings: list[str] = []
    if len(items) > limits.max_entries:
        dates = [_json_item_date(item) for item in items]
        kept = newest_positions(dates, limits.max_entries)
        warnings.append(_cap_warning(len(items), limits.max_entries))
        items = [items[i] for i in kept]
    entries = []
    for item in items:
        if not isinstance(item, dict):
            continue
        guid = _guid(_string(item.get("id")))
        content_html = _string(item.get("content_html"))
        if content_html is None:
            text = _string(item.get("content_text")) or ""
            content_html = _text_to_html(text[: limits.max_html_chars])
        summary = _string(item.get("summary")) or ""
        site_url = clean_link(_string(document.get("home_page_url")), feed_base)
        link = clean_link(_string(item.get("url")), site_url or feed_base)
        entries.append(
            ParsedEntry(
                guid=guid,
                link=link,
                title=_plain(_string(item.get("title")), None, limits.max_title_chars),
                author=_plain(_json_authors(item, document), None, limits.max_author_chars) or None,
                summary_html=_clean_html(
                    html.escape(summary[: limits.max_html_chars]), limits.max_html_chars
                ),
                content_html=_clean_html(content_html, limits.max_html_chars),
                published=best_date(
                    parse_date(_string(item.get(key)))
                    for key in ("date_published", "date_modified")
                ),
                updated=parse_date(_string(item.get("date_modified"))),
                base_url=link or site_url or feed_base or None,
                media=_capped_media(
                    _json_media(item, link or site_url or feed_base), limits, warnings, link
                ),
                date_only=_json_date_only(item),
                date_is_edit_time=parse_date(_string(item.get("date_published"))) is None
                and parse_date(_string(item.get("date_modified"))) is not None,
            )
        )
    return ParsedFeed(
        title=_plain(_string(document.get("title")), None, limits.max_title_chars) or None,
        site_url=clean_link(_string(document.get("home_page_url")), base),
        format="json",
        entries=tuple(entries),
        warnings=tuple(warnings),
    )


# --- encodings (F4) -------------------------------------------------------------------------
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
)
# "<" as the first character of a document without a byte-order mark.
_WIDE_STARTS: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00<", "utf-16-be"),
    (b"<\x00", "utf-16-le"),
)
_XML_DECLARATION = re.compile(rb"^<\?xml[^<>]*?\?>")
_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^<>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_UTF8_NAMES = frozenset({"utf-8", "utf8"})
_UTF8_DECLARATION = b"<?xml version='1.0' encoding='utf-8'?>"


def _with_utf8_declaration(data: bytes) -> bytes:
    if data.startswith(b"<?xml"):
        return _XML_DECLARATION.sub(_UTF8_DECLARATION, data, count=1)
    return data


def _decoded_by_bom(content: bytes) -> tuple[str, str] | None:
    for bom, codec in _BOMS:
        if content.startswith(bom):
            return content[len(bom) :].decode(codec, "replace"), codec
    for start, codec in _WIDE_STARTS:
        if content.startswith(start):
            return content.decode(codec, "replace"), codec
    return None


def _to_utf8(content: bytes, headers: Mapping[str, str]) -> tuple[bytes, list[str]]:
    """UTF-8 bytes of the document, following BOM > HTTP charset > XML declaration."""
    warnings: list[str] = []
    by_bom = _decoded_by_bom(content)
    if by_bom is not None:
        text, codec = by_bom
        if "\ufffd" in text:
            warnings.append(f"invalid {codec} bytes replaced")
        data = text.lstrip().encode("utf-8", "replace")
        return _with_utf8_declaration(data), warnings
    content = content.lstrip(b" \t\r\n")
    if not content.startswith(b"<"):
        start = content.find(b"<", 0, 4096)
        if start > 0:
            content = content[start:]
            warnings.append("text before the start of the XML ignored")
    charset = _CHARSET.search(headers.get("content-type", ""))
    declared = _DECLARED_ENCODING.match(content[:512])
    names = {charset.group(1).lower()} if charset else set()
    if declared:
        names.add(declared.group(1).decode("ascii").lower())
    if names <= _UTF8_NAMES:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            text = content.decode("utf-8", "replace")
            bad = text.count("\ufffd")
            valid = len(text) - len(text.encode("ascii", "ignore")) - bad
            if valid >= bad:  # UTF-8 with some broken bytes, not a legacy encoding
                warnings.append(f"{bad} invalid UTF-8 byte sequences replaced")
                return _with_utf8_declaration(text.encode("utf-8")), warnings
        else:
            return content, warnings
    result: dict[str, Any] = {}
    data = convert_to_utf8(dict(headers), content, result)
    if result.get("bozo"):
        warnings.append(f"encoding: {result.get('bozo_exception')}")
    return data, warnings


# C0 controls other than tab, newline and carriage return: never allowed in XML 1.0.
_XML_FORBIDDEN_BYTES = bytes(b for b in range(0x20) if b not in (0x09, 0x0A, 0x0D))


# --- the prolog: declarations out (F1, F2), root element found ------------------------------
@dataclass(slots=True)
class _Prolog:
    data: bytes
    root: str | None = None  # name of the first element, as written
    doctype: str | None = None  # name given in <!DOCTYPE …>
    netscape: bool = False  # the RSS 0.91 Netscape DTD was declared
    warnings: list[str] = field(default_factory=list)


_SPACE = re.compile(rb"[ \t\r\n]*")
_DECLARATION_TOKEN = re.compile(rb"""["'\[\]>]|<!--""")
_NAME = re.compile(rb"<([^\s/>!?]+)")
_DOCTYPE_NAME = re.compile(rb"<!DOCTYPE\s+([^\s\[>]+)", re.IGNORECASE)


def _declaration_end(data: bytes, start: int) -> int:
    """End of a ``<!…>`` declaration, skipping quoted strings, comments and ``[…]``."""
    position, depth = start + 2, 0
    while True:
        match = _DECLARATION_TOKEN.search(data, position)
        if match is None:
            return len(data)
        token, position = match.group(), match.end()
        if token in (b'"', b"'"):
            close = data.find(token, position)
            if close < 0:
                return len(data)
            position = close + 1
        elif token == b"<!--":
            close = data.find(b"-->", position)
            if close < 0:
                return len(data)
            position = close + 3
        elif token == b"[":
            depth += 1
        elif token == b"]":
            depth = max(depth - 1, 0)
        elif depth == 0:  # ">"
            return position


def _scan_prolog(data: bytes) -> _Prolog:
    """Find the root element; cut out every <!…> declaration that precedes it.

    Whatever the XML parser underneath would do with a DOCTYPE, it never gets one: no
    internal subset (so no entity is defined, let alone expanded) and no external id
    (so nothing is fetched or read).
    """
    prolog = _Prolog(data)
    cuts: list[tuple[int, int]] = []
    position, size = 0, len(data)
    while position < size:
        match = _SPACE.match(data, position)
        position = match.end() if match else position
        if position >= size:
            break
        if data[position] != 0x3C:  # "<": stray text in the prolog
            position = data.find(b"<", position)
            if position < 0:
                break
            continue
        if data.startswith(b"<?", position):
            end = data.find(b"?>", position + 2)
            position = size if end < 0 else end + 2
        elif data.startswith(b"<!--", position):
            end = data.find(b"-->", position + 4)
            position = size if end < 0 else end + 3
        elif data.startswith(b"<!", position):
            end = _declaration_end(data, position)
            declaration = data[position:end]
            name = _DOCTYPE_NAME.match(declaration)
            if name:
                prolog.doctype = name.group(1).decode("utf-8", "replace")
            if b"netscape" in declaration.lower():
                prolog.netscape = True
            if b"<!ENTITY" in declaration.upper():
                prolog.warnings.append("entity declarations removed, entities not expanded")
            cuts.append((position, end))
            position = end
        else:
            root = _NAME.match(data, position)
            if root:
                prolog.root = root.group(1).decode("utf-8", "replace")
            break
    if cuts:
        pieces, last = [], 0
        for start, end in cuts:
            pieces.append(data[last:start])
            last = end
        pieces.append(data[last:])
        prolog.data = b"".join(pieces)
    return prolog


# --- HTML instead of a feed (F7) -------------------------------------------------------------
_HTML_ROOTS = frozenset({"html", "head", "body"})
_FEED_ROOTS = frozenset({"rss", "feed", "rdf", "channel"})
_LINK_TAG = re.compile(r"<(link|base)\b([^<>]*)>", re.IGNORECASE)
_HTML_ATTRIBUTE = re.compile(r"""([^\s=/>]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""")
_FEED_TYPES = frozenset({"application/rss+xml", "application/atom+xml", "application/feed+json"})


def _local_name(name: str | None) -> str:
    return (name or "").rsplit(":", 1)[-1].lower()


def _is_html(prolog: _Prolog, content_type: str) -> bool:
    """A document is judged by its root element: an Atom ``<feed>`` after a stray
    ``<!DOCTYPE html>`` (or a BOM, comments, processing instructions) is a feed."""
    root = _local_name(prolog.root)
    if root in _FEED_ROOTS:
        return False
    if root in _HTML_ROOTS or (prolog.doctype or "").lower() == "html":
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in ("text/html", "application/xhtml+xml") and (
        _local_name(prolog.root) not in _FEED_ROOTS
    )


def _feed_link_of_page(page: str, url: str) -> str | None:
    """The first <link rel="alternate"> to an RSS/Atom/JSON feed, absolute, or None."""
    base = url
    for match in _LINK_TAG.finditer(page):
        attributes = {
            name.lower(): html.unescape(value.strip("\"'")) if value else ""
            for name, value in _HTML_ATTRIBUTE.findall(match.group(2))
        }
        if match.group(1).lower() == "base":
            base = absolute_http_url(attributes.get("href"), url) or base
            continue
        rels = attributes.get("rel", "").lower().split()
        if "alternate" in rels and attributes.get("type", "").strip().lower() in _FEED_TYPES:
            link = absolute_http_url(attributes.get("href"), base)
            if link:
                return link
    return None


def _not_a_feed(data: bytes, url: str) -> NotAFeed:
    page = data[: 512 * 1024].decode("utf-8", "replace")
    head_end = page.lower().find("<body")
    alternate = _feed_link_of_page(page if head_end < 0 else page[:head_end], url)
    if alternate:
        message = f"is an HTML page, not a feed; it links to a feed at {alternate}"
    else:
        message = "is an HTML page, not a feed, and links to none"
    return NotAFeed(message, url=url, alternate=alternate)


# --- what precedes the root ---------------------------------------------------------------
# An XML declaration that is not at the start (after a PHP warning, an HTML comment, a
# blank line and a BOM) starts the document: XML 1.0 §2.8 allows nothing before it.
# Only junk *before the root element* is cut: a "<?xml " after the root's start tag,
# in a CDATA section or in a comment is text of the document (a post about XML that
# shows ``<pre><?xml version="1.0"?></pre>``), never its start.
_LATE_DECLARATION = re.compile(
    rb"(?P<declaration><\?xml[ \t\r\n])|<!--.*?(?:-->|\Z)|(?P<body><!\[CDATA\[|"
    rb"<(?:[A-Za-z_][\w.-]*:)?(?:rss|feed|rdf|channel)[\s>/])",
    re.DOTALL | re.IGNORECASE,
)
_LATE_DECLARATION_WINDOW = 64 * 1024


def _from_late_declaration(content: bytes) -> tuple[bytes, list[str]]:
    """The document from its XML declaration on, when junk precedes it.

    The declaration counts only when it comes before the feed's root element and
    outside comments and CDATA sections (which cannot stand in a prolog).
    """
    if content.startswith(b"<?xml") or content[:4] in (b"\x00\x00\x00<", b"<\x00\x00\x00"):
        return content, []
    window = content[:_LATE_DECLARATION_WINDOW]
    match = next((m for m in _LATE_DECLARATION.finditer(window) if m.lastgroup is not None), None)
    if match is None or match.lastgroup == "body" or match.start() == 0:
        return content, []
    before = content[: match.start()]
    if not before.strip(b"\t\n\r \xef\xbb\xbf"):
        return content[match.start() :], []
    return content[match.start() :], ["text before the XML declaration ignored"]


# --- RSS 1.1 --------------------------------------------------------------------------------
# RSS 1.1 (http://inamidst.com/rss1.1/) is RSS 1.0 with the root <Channel> in its own
# namespace and items in <items rdf:parseType="Collection">; its full text is
# <p:payload rdf:parseType="Literal"> XHTML. feedparser knows none of it, so the
# namespaces are mapped: RSS 1.1 to RSS 1.0 (whose elements feedparser reads wherever
# they stand), the payload to an XHTML <body> (feedparser's xhtml:body content).
_RSS11_NAMESPACE = re.compile(rb"""(["'])http://purl\.org/net/rss1\.1#\1""")
_RSS11_PAYLOAD_PREFIX = re.compile(
    rb"""xmlns:([A-Za-z_][\w.-]*)\s*=\s*(["'])http://purl\.org/net/rss1\.1/payload#\2"""
)


def _rss11_as_rss10(data: bytes) -> bytes | None:
    """An RSS 1.1 document rewritten so feedparser reads it as RSS 1.0, or None."""
    if _RSS11_NAMESPACE.search(data, 0, 4096) is None:
        return None
    data = _RSS11_NAMESPACE.sub(rb"\1http://purl.org/rss/1.0/\1", data)
    prefix = _RSS11_PAYLOAD_PREFIX.search(data)
    if prefix is not None:
        name = re.escape(prefix.group(1))
        data = _RSS11_PAYLOAD_PREFIX.sub(
            rb"xmlns:\1=\2http://www.w3.org/1999/xhtml\2", data, count=1
        )
        data = re.sub(
            rb"<(/?)" + name + rb":payload\b", rb"<\1" + prefix.group(1) + rb":body", data
        )
    return data


# --- common breakage: bare "&", HTML entities, invalid references ---------------------------
# Outside CDATA sections and comments, where "&" is just a character.
# The sections are written as unrolled loops ("no ']' or a ']' not closing"), which
# Python's engine runs several times faster than a lazy ".*?" over long CDATA.
_CDATA = rb"<!\[CDATA\[[^\]]*(?:\](?!\]>)[^\]]*)*(?:\]\]>|\Z)"
_COMMENT = rb"<!--[^-]*(?:-(?!->)[^-]*)*(?:-->|\Z)"
_AMPERSAND = re.compile(
    _CDATA
    + rb"|"
    + _COMMENT
    # The five XML entities are left as they are, so they are not matched at all.
    + rb"|&(?!(?:amp|lt|gt|quot|apos);)"
    + rb"(?:#([0-9]{1,10});|#[xX]([0-9a-fA-F]{1,8});|([A-Za-z][A-Za-z0-9]{0,31});)?"
)
_XML_ENTITIES = frozenset({b"amp", b"lt", b"gt", b"quot", b"apos"})
_NEEDS_REPAIR = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos);)")


def _xml_char_allowed(code: int) -> bool:
    """XML 1.0 §2.2 Char."""
    return (
        code in (0x9, 0xA, 0xD)
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


def _repair_reference(match: re.Match[bytes]) -> bytes:
    whole = match.group(0)
    if not whole.startswith(b"&"):
        return whole  # CDATA or comment
    decimal, hexadecimal, name = match.groups()
    if decimal is not None or hexadecimal is not None:
        code = int(decimal) if decimal is not None else int(hexadecimal, 16)
        return whole if _xml_char_allowed(code) else b""
    if name is None:
        return b"&amp;"  # a bare ampersand: the author meant the character
    if name in _XML_ENTITIES:
        return whole
    text = html.entities.html5.get(name.decode("ascii") + ";")
    if text is None:
        return b"&amp;" + name + b";"
    return "".join(f"&#{ord(char)};" for char in text).encode("ascii")


def _repair_markup(data: bytes) -> bytes:
    """XML the way its author meant it, where the usual slips would make it malformed.

    XML 1.0 §4.1 only knows five named entities and §2.2 forbids references to some
    characters. A bare ``&`` (``D&D``) becomes ``&amp;``, an HTML entity (``&eacute;``,
    ``&nbsp;``; the DTD that declared it is never read) becomes its character
    reference, a reference to a character XML forbids (``&#1;``) is dropped, and an
    unknown entity stays as written text. CDATA sections and comments are left alone.
    """
    if _NEEDS_REPAIR.search(data) is None:
        return data  # only the five XML entities: the common case, no callback per "&"
    return _AMPERSAND.sub(_repair_reference, data)


def repair_markup(content: bytes) -> bytes:
    """UTF-8 (or ASCII-compatible) XML bytes with the usual slips repaired: control
    characters XML forbids dropped, then ``_repair_markup`` (bare ``&``, HTML entities,
    references to forbidden characters). Used for OPML files as for feeds."""
    return _repair_markup(content.translate(None, _XML_FORBIDDEN_BYTES))


# --- too many items (F3) ----------------------------------------------------------------------
# A document longer than the cap keeps its newest entries by date, never the first ones
# in document order (DESIGN §5.3): an archive listed oldest first must still show its
# latest post and pick up the next one.


def _cap_warning(total: int, keep: int) -> str:
    return (
        f"{total} entries, over the cap of {keep}: kept the newest {keep}, "
        f"skipped {total - keep} older ones"
    )


def newest_positions(dates: Sequence[float | None], keep: int) -> list[int]:
    """Positions of the ``keep`` newest items, in document order.

    Items are ranked by date (a timestamp). An item without one stands where the
    document puts it: it takes the date of its nearest dated neighbour on the older
    side (before it when the document runs oldest first, after it when newest first)
    and ranks just above that neighbour. A document without any date keeps its first
    ``keep`` items, since feeds list their newest first.
    """
    total = len(dates)
    if total <= keep:
        return list(range(total))
    known = [d for d in dates if d is not None]
    if not known:
        return list(range(keep))
    ascending = known[0] < known[-1]
    filled = list(dates)
    older_first = range(total) if ascending else range(total - 1, -1, -1)
    for order in (older_first, reversed(older_first)):
        last: float | None = None
        for position in order:
            if filled[position] is None:
                filled[position] = last
            else:
                last = filled[position]
    # Equal dates: the later position is newer in an ascending document, else the earlier.
    ranked = sorted(
        range(total),
        key=lambda i: (filled[i] or 0.0, i if ascending else -i),
        reverse=True,
    )
    return sorted(ranked[:keep])


# Item boundaries, outside CDATA sections and comments (where "<item>" is only text:
# a post showing RSS markup). Only matches with the ``tag`` group are boundaries.
_SKIPPED = _CDATA + rb"|" + _COMMENT
_ITEM_START = re.compile(_SKIPPED + rb"|(?P<tag><(?:[A-Za-z_][\w.-]*:)?(?:item|entry)[\s>/])")
_ITEM_END = re.compile(_SKIPPED + rb"|(?P<tag></(?:[A-Za-z_][\w.-]*:)?(?:item|entry)\s*>)")
_PUBLISHED_ELEMENT = re.compile(
    rb"<(?:[A-Za-z_][\w.-]*:)?(?:pubDate|published|issued|date|created)(?:\s[^>]*)?>"
    rb"\s*(?:<!\[CDATA\[)?([^<\]]{4,100})"
)
_UPDATED_ELEMENT = re.compile(
    rb"<(?:[A-Za-z_][\w.-]*:)?(?:updated|modified)(?:\s[^>]*)?>\s*(?:<!\[CDATA\[)?([^<\]]{4,100})"
)


def _tags(pattern: re.Pattern[bytes], data: bytes, start: int = 0) -> Iterator[re.Match[bytes]]:
    return (m for m in pattern.finditer(data, start) if m.lastgroup == "tag")


def _cheap_date(item: bytes) -> float | None:
    """An item's publication (else update) date from a regular expression, no parse.

    Read by the product's own rule (``dates.parse_date``), as the entry's date will be:
    an unreadable or impossible date is unknown (the item then ranks by position),
    never a date feedparser made up.
    """
    for element in (_PUBLISHED_ELEMENT, _UPDATED_ELEMENT):
        match = element.search(item)
        if match is not None:
            moment = parse_date(match.group(1).decode("utf-8", "replace").strip())
            if moment is not None:
                return moment.timestamp()
    return None


def _cut_items(data: bytes, root: str | None, keep: int) -> tuple[bytes, int] | None:
    """The document with only its ``keep`` newest items, and how many it had; None
    when it has no more than ``keep``.

    Parsing 100,000 items to keep a few thousand would cost the whole poll; a scan for
    item boundaries and a date in each is cheap. An item runs to the start of the next
    one; the last one to its closing tag (the rest of the document follows unchanged).
    Item tags inside CDATA sections and comments are text, not boundaries.
    """
    # Every item tag holds one of these words, so their count bounds the items' count:
    # the scan below is needed only when it is over ``keep``.
    if data.count(b"item") + data.count(b"entry") <= keep:
        return None
    starts = [match.start() for match in _tags(_ITEM_START, data)]
    if len(starts) <= keep:
        return None
    last_end = next(_tags(_ITEM_END, data, starts[-1]), None)
    if last_end is not None:
        tail = data[last_end.end() :]
        ends = [*starts[1:], last_end.end()]
    else:  # cut off inside the last item: close the document again
        tail = b"</channel>" if _local_name(root) == "rss" else b""
        tail += b"</" + root.encode("utf-8") + b">" if root else b""
        ends = [*starts[1:], len(data)]
    items = [data[start:end] for start, end in zip(starts, ends, strict=True)]
    kept = newest_positions([_cheap_date(item) for item in items], keep)
    return data[: starts[0]] + b"".join(items[i] for i in kept) + tail, len(starts)


# --- feedparser -------------------------------------------------------------------------------
# The characters CP1252_TABLE changes: C1 controls, which windows-1252 reads as printable.
_C1_CONTROL = re.compile("[\x80-\x9f]")
# feedparser finds e-mail addresses in author names with a regular expression that
# needs time quadratic in the name's length (a 20,000-character name takes seconds).
_AUTHOR_SCAN_CHARS = 1024


# HTML attributes holding a URL, as the sanitiser resolves them.
_URL_ATTRIBUTES = frozenset({"href", "src", "cite", "poster", "longdesc", "background", "action"})


class _Fixes:
    # An id is an identifier, not a reference (RSS 2.0 <guid>, RFC 4287 §4.2.6): it is
    # never resolved against xml:base; only an absolute http(s) permalink GUID may
    # stand in for a missing link (see ``_entry``).
    can_be_relative_uri = feedparser.mixin._FeedParserMixin.can_be_relative_uri - {"id"}

    def _start_media_description(self, attrs_d: dict[str, str]) -> None:
        """Media RSS ``<media:description>`` describes a media object (an image's alt
        text on Mastodon), not the entry: feedparser makes it the entry's summary or
        content, replacing the post. It is read and dropped."""
        self.push("media_description", 0)  # type: ignore[attr-defined]

    def _end_media_description(self) -> None:
        self.pop("media_description")

    def _sync_author_detail(self, key: str = "author") -> None:
        context = self._get_context()  # type: ignore[attr-defined]
        value = context.get(key)
        if isinstance(value, str) and len(value) > _AUTHOR_SCAN_CHARS:
            context[key] = value[:_AUTHOR_SCAN_CHARS]
        super()._sync_author_detail(key)  # type: ignore[misc]

    def pop(self, element: str, strip_whitespace: int = 1) -> Any:
        """feedparser's own ``pop``, but for one costly step done only where it does
        something (see ``_pop``)."""
        return _pop(self, element, strip_whitespace)

    def unknown_starttag(self, tag: str, attrs: list[tuple[str, str]]) -> None:
        """Inside XHTML content (RFC 4287 §3.1.1.3), an ``xml:base`` on the wrapping
        ``<div>`` or on any element within applies to the URLs of that element and its
        descendants (XML Base §4.2). feedparser drops the wrapper with its xml:base and
        leaves the others as attributes nobody reads, so the URL attributes under one
        are resolved here against it (itself resolved against any xml:base around it;
        what stays relative resolves later against the content's base)."""
        bases: list[str | None] = self.__dict__.setdefault("_xhtml_bases", [])
        outer = bases[-1] if bases else None  # the base in scope inside content, if any
        if self.incontent and self.contentparams.get("type") == "application/xhtml+xml":  # type: ignore[attr-defined]
            declared = next((v for k, v in attrs if k == "xml:base"), None)
            current = urljoin(outer or "", declared) if declared is not None else outer
            if current:
                attrs = [
                    (k, urljoin(current, v.strip()) if k in _URL_ATTRIBUTES else v)
                    for k, v in attrs
                    if k != "xml:base"
                ]
            bases.append(current)
        else:
            bases.append(None)
        super().unknown_starttag(tag, attrs)  # type: ignore[misc]

    def unknown_endtag(self, tag: str) -> None:
        """Leaving an element leaves its xml:base (XML Base §4.2) even when no xml:base
        is in scope outside it: feedparser only restores a non-empty outer base, so one
        entry's xml:base leaked into the entries after it."""
        bases = self.__dict__.get("_xhtml_bases")
        if bases:
            bases.pop()
        super().unknown_endtag(tag)  # type: ignore[misc]
        stack = self.basestack  # type: ignore[attr-defined]
        if stack and not stack[-1]:
            self.baseuri = stack[-1]


def _pop(parser: Any, element: str, strip_whitespace: int) -> Any:
    """feedparser's ``_FeedParserMixin.pop`` (the same from 6.0.11 to 6.0.14), with one
    change: the windows-1252 map, a ``str.translate`` that looks up every character
    (7 % of all the parsing of a blog's feed), runs only on text holding a character it
    maps (U+0080 to U+009F, see ``CP1252_TABLE``); elsewhere it changes nothing."""
    stack = parser.elementstack
    if not stack or stack[-1][0] != element:
        return None
    element, expecting_text, pieces = stack.pop()
    pieces = [v.decode("utf-8") if isinstance(v, bytes) else v for v in pieces]
    params = parser.contentparams
    if parser.version == "atom10" and params.get("type", "text") == "application/xhtml+xml":
        pieces = _without_wrapping_div(pieces)
    output = "".join(pieces)
    if strip_whitespace:
        output = output.strip()
    if not expecting_text:
        return output
    if params.get("base64", 0):
        with contextlib.suppress(binascii.Error, binascii.Incomplete, UnicodeDecodeError):
            output = base64.decodebytes(output.encode("utf8")).decode("utf8")
    if element in parser.can_be_relative_uri and output and (element != "id" or parser.guidislink):
        output = parser.resolve_uri(output)
    if not params.get("base64", 0):
        output = parser.decode_entities(element, output)
    if (
        not parser.version.startswith("atom")
        and params.get("type") == "text/plain"
        and parser.looks_like_html(output)
    ):
        params["type"] = "text/html"
    params.pop("mode", None)
    params.pop("base64", None)
    content_type = params.get("type", "text/html")
    is_htmlish = parser.map_content_type(content_type) in parser.html_types
    if is_htmlish and parser.resolve_relative_uris and element in parser.can_contain_relative_uris:
        output = feedparser_urls.resolve_relative_uris(
            output, parser.baseuri, parser.encoding, content_type
        )
    if is_htmlish and parser.sanitize_html and element in parser.can_contain_dangerous_markup:
        output = feedparser_sanitizer._sanitize_html(output, parser.encoding, content_type)
    if parser.encoding and isinstance(output, bytes):
        output = output.decode(parser.encoding, "ignore")
    # Text that is UTF-8 read as ISO-8859-1, a common publishing error, read again. Both
    # steps leave ASCII text as it is (str.isascii() costs nothing: CPython knows it).
    if (
        parser.encoding in ("utf-8", "utf-8_INVALID_PYTHON_3")
        and isinstance(output, str)
        and not output.isascii()
    ):
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            output = output.encode("iso-8859-1").decode("utf-8")
    if isinstance(output, str) and not output.isascii() and _C1_CONTROL.search(output):
        output = output.translate(CP1252_TABLE)
    if element in ("category", "tags", "itunes_keywords"):
        return output
    if element == "title" and -1 < parser.title_depth <= parser.depth:
        return output
    return _store_popped(parser, element, output)


def _without_wrapping_div(pieces: list[str]) -> list[str]:
    """Atom XHTML content without its enclosing <div>, when all the rest is inside it."""
    while pieces and len(pieces) > 1 and not pieces[-1].strip():
        del pieces[-1]
    while pieces and len(pieces) > 1 and not pieces[0].strip():
        del pieces[0]
    if (
        pieces
        and (pieces[0] == "<div>" or pieces[0].startswith("<div "))
        and pieces[-1] == "</div>"
    ):
        depth = 0
        for piece in pieces[:-1]:
            if piece.startswith("</"):
                depth -= 1
                if depth == 0:
                    break
            elif piece.startswith("<") and not piece.endswith("/>"):
                depth += 1
        else:
            pieces = pieces[1:-1]
    return pieces


def _store_popped(parser: Any, element: str, output: str) -> str:
    """The end of ``_pop``: ``output`` stored where feedparser 6.0 stores it. Its content
    parameters are copied as a new dict of the same (immutable) values: feedparser's
    ``copy.deepcopy`` gives the same dict at several times the cost."""
    if parser.inentry and not parser.insource:
        entry = parser.entries[-1]
        if element == "content":
            entry.setdefault(element, [])
            contentparams = FeedParserDict(parser.contentparams)
            contentparams["value"] = output
            entry[element].append(contentparams)
        elif element == "link":
            if not parser.inimage:
                # ?a=1&b=2 read as a reference (&b;): feedparser's repair.
                output = output.replace("&amp;", "&")
                output = re.sub("&([A-Za-z0-9_]+);", r"&\g<1>", output)
                entry[element] = output
                if output:
                    entry["links"][-1]["href"] = output
        else:
            if element == "description":
                element = "summary"
            depths = parser.property_depth_map.setdefault(entry, {})
            old_value_depth = depths.get(element)
            if old_value_depth is None or parser.depth <= old_value_depth:
                depths[element] = parser.depth
                entry[element] = output
            if parser.incontent:
                contentparams = FeedParserDict(parser.contentparams)
                contentparams["value"] = output
                entry[element + "_detail"] = contentparams
    elif parser.infeed or parser.insource:
        context = parser._get_context()
        if element == "description":
            element = "subtitle"
        context[element] = output
        if element == "link":
            output = re.sub("&([A-Za-z0-9_]+);", r"&\g<1>", output)
            context[element] = output
            context["links"][-1]["href"] = output
        elif parser.incontent:
            contentparams = FeedParserDict(parser.contentparams)
            contentparams["value"] = output
            context[element + "_detail"] = contentparams
    return output


class _StrictParser(_Fixes, StrictFeedParser):  # type: ignore[misc]
    pass


class _LooseParser(_Fixes, LooseFeedParser):  # type: ignore[misc]
    pass


def _describe_xml_error(error: BaseException) -> str:
    if isinstance(error, xml.sax.SAXParseException):
        return (
            f"line {error.getLineNumber()}, column {error.getColumnNumber()}: {error.getMessage()}"
        )
    return str(error) or type(error).__name__


class _BufferedExpatReader(xml.sax.expatreader.ExpatParser):
    """The standard library's SAX reader over expat, with expat's own text buffering on
    (``buffer_text``): a run of character data reaches the handler in one call instead
    of one per line and per reference. feedparser appends each call's text to a list
    that it joins, so the result is the same, with a tenth of the calls."""

    def reset(self) -> None:
        super().reset()
        parser = self._parser  # type: ignore[attr-defined]  # set by reset(), per document
        parser.buffer_text = True
        parser.buffer_size = _TEXT_BUFFER_CHARS


_TEXT_BUFFER_CHARS = 64 * 1024


def _run_feedparser(data: bytes) -> tuple[Any, str | None]:
    """Parse strictly (expat, no DTD left to act on); fall back to the lenient parser.

    Returns feedparser's handler and, when the document was not well-formed, why.
    feedparser gets no base URL: it applies xml:base and leaves ids as given (with a
    base it would rewrite permalink guids); links are resolved here afterwards.
    """
    strict = _StrictParser("", None, "utf-8")
    strict.resolve_relative_uris = False
    strict.sanitize_html = False
    # Safe without defusedxml: _scan_prolog removed every DOCTYPE and entity declaration.
    reader = _BufferedExpatReader()
    reader.setFeature(xml.sax.handler.feature_namespaces, True)
    reader.setFeature(xml.sax.handler.feature_external_ges, False)
    reader.setFeature(xml.sax.handler.feature_external_pes, False)
    reader.setContentHandler(strict)
    reader.setErrorHandler(strict)
    source = xml.sax.xmlreader.InputSource()
    source.setByteStream(io.BytesIO(data))
    try:
        reader.parse(source)
    except xml.sax.SAXException as exc:
        reason = _describe_xml_error(strict.exc or exc)
    else:
        return strict, None
    loose = _LooseParser("", None, "utf-8", {})
    loose.resolve_relative_uris = False
    loose.sanitize_html = False
    loose.feed(data.decode("utf-8", "replace"))
    return loose, reason


def _parse_xml_feed(
    content: bytes, *, url: str, base: str, headers: Mapping[str, str], limits: ParseLimits
) -> ParsedFeed:
    content, warnings = _from_late_declaration(content)
    data, encoding_warnings = _to_utf8(content, headers)
    warnings.extend(encoding_warnings)
    data = _repair_markup(data.translate(None, _XML_FORBIDDEN_BYTES))
    prolog = _scan_prolog(data)
    warnings.extend(prolog.warnings)
    if _is_html(prolog, headers.get("content-type", "")):
        raise _not_a_feed(prolog.data, url)
    if prolog.root is None:
        raise ParseError("not a feed: no XML element found", url=url)
    data = prolog.data
    rss11 = _rss11_as_rss10(data) if _local_name(prolog.root) == "channel" else None
    if rss11 is not None:
        data = rss11
    cut = _cut_items(data, prolog.root, limits.max_entries)
    if cut is not None:
        data, total = cut
        warnings.append(_cap_warning(total, limits.max_entries))
    try:
        handler, malformed = _run_feedparser(data)
    except RecursionError:
        raise ParseError("not a feed: nested too deeply", url=url) from None
    except Exception as exc:  # feedparser is not hardened against every hostile input
        raise ParseError(f"feed parser failed: {type(exc).__name__}: {exc}", url=url) from exc
    raw_entries: list[Any] = handler.entries
    version: str = handler.version or ""
    if prolog.netscape and version.startswith("rss09"):
        version = "rss091n"
    if rss11 is not None and version == "rss10":
        version = "rss11"
    if malformed is not None:
        if not raw_entries:
            raise ParseError(f"not well-formed XML: {malformed}", url=url)
        warnings.append(f"not well-formed XML ({malformed}); kept what could be read")
    elif not version:
        raise ParseError(
            f"not a feed: the XML root element <{prolog.root}> is not RSS, Atom or RDF", url=url
        )
    if len(raw_entries) > limits.max_entries:
        dates = [_raw_entry_date(raw) for raw in raw_entries]
        kept = newest_positions(dates, limits.max_entries)
        if cut is None:
            warnings.append(_cap_warning(len(raw_entries), limits.max_entries))
        raw_entries = [raw_entries[i] for i in kept]
    feed = handler.feeddata
    site_url = clean_link(_str_or_none(feed.get("link")), base)
    atom = version.startswith("atom")
    entries = tuple(_entry(raw, base, site_url, limits, warnings, atom=atom) for raw in raw_entries)
    return ParsedFeed(
        title=_plain(
            feed.get("title"), _type_of(feed, "title_detail"), limits.max_title_chars, atom=atom
        )
        or None,
        site_url=site_url,
        format=version or "unknown",
        entries=entries,
        warnings=tuple(dict.fromkeys(warnings)),
        complete=malformed is None,
    )


def _raw_entry_date(raw: dict[str, Any]) -> float | None:
    """The date an entry is ranked by for the cap: the one it will be stored with."""
    moment = best_date(_date(raw, key) for key in _DATE_KEYS)
    return moment.timestamp() if moment is not None else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _type_of(holder: Mapping[str, Any], key: str) -> str | None:
    detail = holder.get(key)
    return detail.get("type") if isinstance(detail, Mapping) else None


def _utc(value: Any) -> datetime | None:
    """feedparser's *_parsed struct_time (always UTC) as an aware datetime."""
    if value is None:
        return None
    try:
        year, month, day, hour, minute, second = value[:6]
        return datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


# feedparser's names for an entry's date elements, best first: published (RSS pubDate,
# Atom published, dcterms:issued, Atom 0.3 issued), updated (Atom updated, RFC 4287
# §4.2.15, the one date an Atom entry must carry; dc:date, dcterms:modified, Atom 0.3
# modified), created (dcterms:created, Atom 0.3 created).
_DATE_KEYS = ("published", "updated", "created")


def _date(raw: dict[str, Any], key: str) -> datetime | None:
    """One date element, read by ``dates.parse_date`` from the text the feed wrote.

    feedparser's own reading is only a fallback that must agree with the digits
    written: it makes up dates (``2017/7/21`` -> 1 November 2017).
    """
    # dict.get: FeedParserDict maps a missing "updated" to "published" (with a warning).
    return parse_date(
        _str_or_none(dict.get(raw, key)), fallback=_utc(dict.get(raw, f"{key}_parsed"))
    )


def _xml_base(detail: object, base: str) -> str | None:
    """The xml:base in scope of a feedparser detail (XML Base: relative ones resolved
    against the document's URI), if it is http(s)."""
    if not isinstance(detail, Mapping):
        return None
    return absolute_http_url(_str_or_none(detail.get("base")), base or None)


def _html_of(detail: Mapping[str, Any], limit: int) -> str:
    value = detail.get("value")
    if not isinstance(value, str):
        return ""
    if detail.get("type") in _HTML_TYPES:
        return _clean_html(value, limit)
    return _clean_html(html.escape(value[:limit], quote=False), limit)


def _guid(value: object) -> str | None:
    """A GUID fit to store: one line; one over MAX_GUID_CHARS is replaced by a digest of
    the whole, so two that differ only after that many characters stay two."""
    if not isinstance(value, str):
        return None
    guid = clean_text(value)
    if len(guid) > MAX_GUID_CHARS:
        return "sha256:" + hashlib.sha256(guid.encode("utf-8", "surrogatepass")).hexdigest()
    return guid or None


def _link_of(raw: dict[str, Any]) -> str | None:
    """The entry's link as written. feedparser makes a permalink GUID (RSS 2.0 <guid>
    without isPermaLink="false", and any Atom <id>) the link of an entry without one;
    only an absolute http(s) URL may stand in for a link that way. ``12345``,
    ``Buzzsprout-987``, a UUID or ``1`` is an identifier: resolved against the feed it
    would be a link to a page that does not exist."""
    link = _str_or_none(raw.get("link"))
    if link is not None and dict.get(raw, "guidislink") and link == raw.get("id"):
        return link if is_http_url(link) else None
    return link


def _entry(
    raw: dict[str, Any],
    base: str,
    site_url: str | None,
    limits: ParseLimits,
    warnings: list[str],
    *,
    atom: bool,
) -> ParsedEntry:
    """One entry. Relative URLs resolve against, in order: the xml:base in scope (XML
    Base, RFC 4287 §2), the entry's link (where a reader sees the post on the web: RSS
    has no xml:base), the feed's link, the feed's URL. The entry's date is the best one
    it carries (see ``_DATE_KEYS``); None only when it carries none that is known."""
    # feedparser applied any xml:base in scope to the link; a link still relative
    # resolves against the feed's link, then the feed's URL.
    link = clean_link(_link_of(raw), site_url or base or None)
    fallback_base = link or site_url or base
    summary_detail = raw.get("summary_detail")
    summary_html = (
        _html_of(summary_detail, limits.max_html_chars)
        if isinstance(summary_detail, Mapping)
        else ""
    )
    contents = [c for c in raw.get("content") or () if isinstance(c, Mapping)]
    # WordPress sends the excerpt as <description> and the post as <content:encoded>.
    preferred = next((c for c in contents if c.get("type") in _HTML_TYPES), None)
    chosen = preferred or (contents[0] if contents else None)
    content_html = _html_of(chosen, limits.max_html_chars) if chosen else summary_html
    summary_base = _xml_base(summary_detail, base) or fallback_base
    content_base = (_xml_base(chosen, base) or fallback_base) if chosen else summary_base
    author_detail = raw.get("author_detail")
    author = (author_detail.get("name") if isinstance(author_detail, Mapping) else None) or raw.get(
        "author"
    )
    guid = _str_or_none(raw.get("id"))
    media = _xml_media(raw, fallback_base)
    dates = {key: _date(raw, key) for key in _DATE_KEYS}  # each element read once
    dated_by = next((key for key in _DATE_KEYS if dates[key] is not None), None)
    return ParsedEntry(
        guid=_guid(raw.get("id")),
        link=link,
        title=_plain(
            raw.get("title"), _type_of(raw, "title_detail"), limits.max_title_chars, atom=atom
        ),
        author=_plain(author, None, limits.max_author_chars) or None,
        summary_html=summary_html,
        content_html=content_html,
        published=best_date(dates[key] for key in _DATE_KEYS),
        updated=dates["updated"],
        base_url=content_base or None,
        summary_base_url=summary_base or None,
        media=_capped_media(media, limits, warnings, link or guid),
        date_only=dated_by is not None and not has_time_of_day(_str_or_none(raw.get(dated_by))),
        # RFC 4287 §4.2.15: <updated> is when the entry was last modified; feedparser
        # also files RSS dc:date there, which is a publication date.
        date_is_edit_time=atom and dated_by == "updated",
    )


# --- media (see aggregator.media for the sources of each rule) ----------------------


def _media_url(value: object, base: str | None) -> str | None:
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        return None
    url = absolute_http_url(value.strip(), base or None)
    return url if url is not None and len(url) <= MAX_URL_CHARS else None


def _xml_media(raw: dict[str, Any], base: str | None) -> list[MediaItem]:
    """RSS <enclosure> and Atom rel="enclosure" (feedparser lists both as links),
    media:content (also inside media:group), media:thumbnail and the Apple podcast
    tags, each URL once; only absolute http(s) URLs (relative ones resolve against
    ``base``)."""
    links = dict.get(raw, "links")
    contents = dict.get(raw, "media_content")
    thumbnails = dict.get(raw, "media_thumbnail")
    image = dict.get(raw, "image")
    if not (contents or thumbnails or image) and not (
        links and any(_is_enclosure(link) for link in links)
    ):
        return []  # the common case: a blog post without media
    duration = dict.get(raw, "itunes_duration")
    episode = parse_episode(dict.get(raw, "itunes_episode"))
    items: list[MediaItem] = []
    for link in links or ():
        url = _media_url(link.get("href"), base) if _is_enclosure(link) else None
        if url is not None:
            items.append(
                make_item(url, role="enclosure", mime_type=link.get("type"),
                          length=link.get("length"), duration=duration, episode=episode)
            )  # fmt: skip
    for content in contents if isinstance(contents, list) else ():
        url = _media_url(content.get("url"), base) if isinstance(content, Mapping) else None
        if url is not None:
            items.append(
                make_item(url, role="enclosure", mime_type=content.get("type"),
                          medium=content.get("medium"), length=content.get("filesize"),
                          duration=content.get("duration") or duration, episode=episode)
            )  # fmt: skip
    pictures = [t.get("url") for t in thumbnails or () if isinstance(t, Mapping)]
    if isinstance(image, Mapping):
        pictures.append(image.get("href"))
    for picture in pictures:
        url = _media_url(picture, base)
        if url is not None:
            items.append(make_item(url, role="thumbnail", medium="image"))
    return merge_media(items)


def _is_enclosure(link: object) -> bool:
    return isinstance(link, Mapping) and link.get("rel") == "enclosure"


def _json_media(item: Mapping[str, Any], base: str | None) -> list[MediaItem]:
    """JSON Feed 1.1 ``attachments`` (url, mime_type, size_in_bytes,
    duration_in_seconds) and ``image``."""
    items: list[MediaItem] = []
    attachments = item.get("attachments")
    for attachment in attachments if isinstance(attachments, list) else ():
        if isinstance(attachment, dict):
            url = _media_url(attachment.get("url"), base)
            if url is not None:
                items.append(
                    make_item(
                        url,
                        role="enclosure",
                        mime_type=attachment.get("mime_type"),
                        length=attachment.get("size_in_bytes"),
                        duration=attachment.get("duration_in_seconds"),
                    )
                )
    image = _media_url(item.get("image"), base)
    if image is not None:
        items.append(make_item(image, role="thumbnail", medium="image"))
    return merge_media(items)


def _capped_media(
    items: list[MediaItem], limits: ParseLimits, warnings: list[str], name: str | None
) -> tuple[MediaItem, ...]:
    if len(items) <= limits.max_media:
        return tuple(items)
    warnings.append(
        f"entry {clean_text((name or '(no link)')[:200])} has {len(items)} media items, "
        f"over the cap of {limits.max_media}: kept the first {limits.max_media}"
    )
    return tuple(items[: limits.max_media])
