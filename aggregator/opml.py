"""OPML subscription lists: read (untrusted files, so defusedxml) and write."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from email.utils import format_datetime
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as safe_xml  # refuses entity expansion and external DTDs
from defusedxml import DefusedXmlException

from .errors import SourceError
from .models import FeedSource
from .parse import repair_markup
from .sanitize import xml_chars
from .text import clean_text
from .urls import is_placeholder_title

# Largest OPML document read, in bytes (5 MiB); a larger one is refused with SourceError.
MAX_OPML_BYTES = 5 * 1024 * 1024


def read_opml(data: bytes, *, name: str = "OPML file") -> list[FeedSource]:
    """The feeds an OPML document lists, nested folders included, each URL once.

    A source's title is the outline's ``title``, else its ``text`` (OPML 2.0: text is
    what is shown); one that is empty or a URL (many exporters write the feed URL
    there) is no title (None): the feed's own title is used once it is polled.

    A document that is not well-formed only because of the slips feeds make too (a
    bare ``&`` in a URL, an HTML entity such as ``&eacute;`` that no DTD declares,
    control characters) is repaired as a feed is (``parse.repair_markup``) and read
    again; defusedxml still refuses any DTD or entity declaration.
    """
    if len(data) > MAX_OPML_BYTES:
        raise SourceError(f"{name}: larger than {MAX_OPML_BYTES // (1024 * 1024)} MB")
    try:
        try:
            root = safe_xml.fromstring(data, forbid_dtd=True)
        except safe_xml.ParseError as error:
            repaired = repair_markup(data)
            if repaired == data:
                raise SourceError(f"{name}: not well-formed XML ({error})") from None
            try:
                root = safe_xml.fromstring(repaired, forbid_dtd=True)
            except safe_xml.ParseError:
                raise SourceError(f"{name}: not well-formed XML ({error})") from None
    except DefusedXmlException as error:
        raise SourceError(f"{name}: refused ({type(error).__name__}: entities or DTDs)") from None
    if root.tag != "opml":
        raise SourceError(f"{name}: not an OPML document (root element <{root.tag}>)")
    sources: list[FeedSource] = []
    seen: set[str] = set()
    for outline in root.iter("outline"):
        url = (outline.get("xmlUrl") or outline.get("xmlurl") or "").strip()
        if not url:
            continue  # a folder
        labels = (" ".join((outline.get(key) or "").split()) for key in ("title", "text"))
        title = next((label for label in labels if not is_placeholder_title(label, url)), None)
        if url in seen:
            continue
        seen.add(url)
        sources.append(FeedSource(url=url, title=title))
    return sources


def write_opml(feeds: Iterable[FeedSource], *, title: str, now: datetime) -> str:
    """An OPML 2.0 document (http://opml.org/spec2.opml) listing ``feeds`` as rss outlines
    (xmlUrl, and title/text), titled ``title`` and dated ``now`` (RFC 822 date in
    dateCreated); returns the XML text with its declaration.
    """
    root = Element("opml", version="2.0")
    head = SubElement(root, "head")
    SubElement(head, "title").text = title
    SubElement(head, "dateCreated").text = format_datetime(now)
    body = SubElement(root, "body")
    for feed in feeds:
        label = clean_text(feed.title or "") or feed.url
        SubElement(body, "outline", type="rss", text=label, title=label, xmlUrl=feed.url)
    document = tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + xml_chars(document) + "\n"
