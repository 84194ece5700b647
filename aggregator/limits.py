"""What one document may cost to parse: the ``[limits]`` settings.

Kept apart from ``parse`` so that reading the configuration does not import the
parser (feedparser and its helpers): a poll where every feed answers 304 parses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .media import MAX_MEDIA_PER_ENTRY


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """``[limits]``: caps on what one document may cost. ``max_document_bytes`` in bytes
    (over it: ParseError); ``max_html_chars`` in characters per summary or content field;
    titles and authors cut to their character caps; at most ``max_entries`` entries per
    document and ``max_media`` media items per entry (the rest dropped with a warning)."""

    max_document_bytes: int = 16 * 1024 * 1024
    # The newest by date are kept (DESIGN §5.3). Parsing and sanitising 5,000 entries
    # of ~1.2 KB (6 MB) peaks at 22 MB traced, 60 MB resident for the whole worker
    # (27 MB of it the interpreter); 10,000 at 43 MB / 95 MB. Memory follows document
    # bytes (max_document_bytes) more than the entry count.
    max_entries: int = 5000
    max_title_chars: int = 500
    max_author_chars: int = 200
    max_html_chars: int = 512 * 1024  # per summary/content field, cut before sanitising
    # Media items (enclosures, media:content, thumbnails) kept per entry; an entry with
    # more keeps its first ones and the poll reports it.
    max_media: int = MAX_MEDIA_PER_ENTRY
