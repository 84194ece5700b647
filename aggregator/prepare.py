"""Bytes of a feed document -> records ready for identity decisions.

This is the CPU-heavy part of a poll (parse, sanitise, derive keys), so it is one
picklable function the pipeline runs in worker processes, keeping the event loop free.
Pure: no IO, the clock comes in as ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from .dedup import make_record
from .errors import ParseError
from .limits import ParseLimits
from .models import EntryRecord
from .parse import parse_feed
from .sanitize import sanitize


@dataclass(frozen=True, slots=True)
class PreparedFeed:
    """A parsed feed made ready to store (the result of ``prepare_feed``, picklable across
    processes): its title, site URL and format, its entries as records with sanitised
    HTML and identity keys, and the parser's warnings.
    """

    title: str | None
    site_url: str | None
    format: str
    records: tuple[EntryRecord, ...]
    warnings: tuple[str, ...]


def prepare_feed(
    content: bytes,
    *,
    url: str,
    headers: Mapping[str, str],
    limits: ParseLimits,
    now: datetime,
) -> PreparedFeed:
    """Parse, sanitise and derive identity. Raises ParseError for unusable documents.

    This is where a document becomes records, so it is also where a fault of ours
    stops: any other exception (a library or helper that chokes on a value we did not
    foresee) becomes a ParseError naming the feed and the exception's type, so that one
    feed fails and backs off while the rest of the poll goes on.
    """
    try:
        return _prepare(content, url=url, headers=headers, limits=limits, now=now)
    except ParseError:
        raise
    except Exception as error:  # the boundary: one feed fails, not the poll
        raise ParseError(
            f"the document could not be read ({type(error).__name__} while preparing "
            "its entries); it is tried again at the next poll",
            url=url,
        ) from None


def _prepare(
    content: bytes,
    *,
    url: str,
    headers: Mapping[str, str],
    limits: ParseLimits,
    now: datetime,
) -> PreparedFeed:
    parsed = parse_feed(content, url=url, headers=headers, limits=limits)
    records = []
    empty = 0
    for entry in parsed.entries:
        base = entry.base_url or entry.link or parsed.site_url or url
        summary_base = entry.summary_base_url or base
        safe_content = sanitize(entry.content_html, base_url=base)
        safe_summary = (
            sanitize(entry.summary_html, base_url=summary_base)
            if entry.summary_html != entry.content_html or summary_base != base
            else safe_content
        )
        clean = replace(entry, content_html=safe_content.html, summary_html=safe_summary.html)
        # The text of the sanitised HTML, read without parsing it again (SanitizedHtml).
        text = (safe_content if safe_content.html else safe_summary).text()
        if not parsed.complete and not (
            entry.title.strip() or entry.link or text.strip() or entry.media
        ):
            empty += 1  # nothing a reader could see, in a document that broke off
            continue
        records.append(make_record(clean, feed_url=url, text=text, now=now))
    warnings = parsed.warnings
    if empty:
        warnings = (
            *warnings,
            f"{empty} {'entry' if empty == 1 else 'entries'} with no "
            "title, link, text or media skipped (the document broke off)",
        )
    return PreparedFeed(
        title=parsed.title,
        site_url=parsed.site_url,
        format=parsed.format,
        records=tuple(records),
        warnings=warnings,
    )
