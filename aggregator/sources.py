"""Managing feed sources: from the config file, the CLI, OPML files and the admin page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .config import Settings
from .errors import NotAFeed, ParseError, SourceError
from .models import Feed, FeedSource
from .store import Database, Store
from .store import feeds as feed_rows
from .text import clean_text
from .urls import (
    USERINFO_REFUSED,
    feed_url,
    has_userinfo,
    is_http_url,
    is_placeholder_title,
    without_userinfo,
)

if TYPE_CHECKING:
    from .fetch import FeedFetcher


def check_source_url(url: str) -> str:
    """A feed source as stored (``urls.feed_url``: scheme and host lower-cased): it must
    be an absolute http(s) URL (THREATS H5) without a user name or password (they would
    be shown on the public pages and exports). Raises SourceError naming the URL (its
    userinfo left out) and the reason.
    """
    cleaned = url.strip()
    if not is_http_url(cleaned):
        raise SourceError("only absolute http:// and https:// feed URLs can be added", url=cleaned)
    if has_userinfo(cleaned):
        raise SourceError(USERINFO_REFUSED, url=without_userinfo(cleaned))
    return feed_url(cleaned)


def source_title(title: str | None, url: str) -> str | None:
    """The name an operator gave a source, or None when it is empty or just a URL (the
    feed's own title then names it after the first successful poll)."""
    return None if is_placeholder_title(title, url) else clean_text(title or "") or None


def sync_configured_feeds(store: Store, settings: Settings, now: datetime) -> list[Feed]:
    """Add the feeds the config file lists and the store does not know yet.

    Takes the write lock only when there is one to add, and adds none to a read-only
    database (reading commands still work on one).
    """
    missing = [c for c in settings.feeds if feed_rows.feed_by_url(store.db, c.url) is None]
    if missing:  # perhaps stored in another case before URLs were normalised
        known = _known_urls(store.db)
        missing = [c for c in missing if c.url not in known]
    if not missing or store.readonly:
        return []
    added = []
    with store.write() as db:
        for configured in missing:
            feed, created = feed_rows.add_feed(
                db,
                url=configured.url,
                title=source_title(configured.title, configured.url),
                origin="config",
                now=now,
                interval_seconds=int(configured.interval.total_seconds())
                if configured.interval
                else None,
            )
            if created:
                added.append(feed)
    return added


def add_source(
    store: Store, source: FeedSource, *, origin: str, now: datetime
) -> tuple[Feed, bool]:
    """Add a feed source unless its URL is known; returns the feed and whether it is new.
    ``origin`` is one of ``store.feeds.FEED_ORIGINS``. Raises SourceError for a URL that
    is not absolute http(s) (THREATS H5); nothing is fetched.
    """
    url = check_source_url(source.url)
    with store.write() as db:
        known = feed_rows.feed_by_url(db, url) or _known_urls(db).get(url)
        if known is not None:
            return known, False
        return feed_rows.add_feed(
            db,
            url=url,
            title=source_title(source.title, url),
            origin=origin,
            now=now,
            interval_seconds=source.interval_seconds,
        )


def _known_urls(db: Database) -> dict[str, Feed]:
    """Every feed by its URL as ``feed_url`` writes it, so that one stored in another
    case (before feed URLs were normalised) is found too."""
    return {feed_url(feed.url): feed for feed in feed_rows.list_feeds(db)}


MAX_ID = 2**63 - 1
"""The largest id SQLite stores (a signed 64-bit integer): a larger number names nothing."""


def find_feed(store: Store, ident: str) -> Feed:
    """A feed by id or URL, or SourceError."""
    feed = None
    if ident.isdigit() and int(ident) <= MAX_ID:
        feed = feed_rows.get_feed(store.db, int(ident))
    if feed is None:
        feed = feed_rows.feed_by_url(store.db, ident.strip())
    if feed is None:  # as stored: scheme and host lower-cased
        feed = _known_urls(store.db).get(feed_url(ident))
    if feed is None:
        raise SourceError(f"no feed with id or URL {without_userinfo(ident.strip())!r}")
    return feed


def remove_source(store: Store, ident: str) -> Feed:
    """Delete the feed named by id or URL, with its entries; returns it. Raises SourceError
    when there is no such feed.
    """
    feed = find_feed(store, ident)
    with store.write() as db:
        feed_rows.remove_feed(db, feed.id)
    return feed


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an OPML import did: the feeds added, those already known, and one line per
    outline that could not be added.
    """

    added: tuple[Feed, ...]
    known: tuple[Feed, ...]
    problems: tuple[str, ...]


def import_opml(store: Store, data: bytes, *, name: str, now: datetime) -> ImportReport:
    """Add every feed an OPML file lists; a bad outline is reported, the rest still added."""
    from .opml import read_opml  # imported here: only imports need the OPML reader

    sources = read_opml(data, name=name)
    added: list[Feed] = []
    known: list[Feed] = []
    problems: list[str] = []
    with store.write() as db:
        stored = _known_urls(db)
        for source in sources:
            try:
                url = check_source_url(source.url)
            except SourceError as error:
                shown = without_userinfo(source.url.strip())
                if has_userinfo(source.url):
                    problems.append(f"{name}: {shown}: {error.reason}")
                else:
                    problems.append(f"{name}: {shown!r}: not an http(s) feed URL")
                continue
            if url in stored:
                known.append(stored[url])
                continue
            feed, created = feed_rows.add_feed(
                db,
                url=url,
                title=source_title(source.title, url),
                origin="opml",
                now=now,
            )
            stored[url] = feed
            (added if created else known).append(feed)
    return ImportReport(tuple(added), tuple(known), tuple(problems))


def export_opml(feeds: Sequence[Feed], *, now: datetime) -> str:
    """The feeds as an OPML 2.0 document (text), titled "Aggregated blogs" and dated
    ``now``.
    """
    from .opml import write_opml

    return write_opml(
        (FeedSource(url=without_userinfo(f.url), title=f.title or None) for f in feeds),
        title="Aggregated blogs",
        now=now,
    )


async def discover_feed_url(fetcher: FeedFetcher, url: str, settings: Settings) -> str:
    """The feed behind ``url``: itself when it is a feed, else the feed its page links.

    Raises SourceError (with the fetch or parse error's one line) when there is none.
    """
    from .parse import parse_feed  # imported here: polling alone never needs the parser

    url = check_source_url(url)
    result = await fetcher.fetch(url)
    if result.error is not None:
        raise SourceError(f"cannot fetch: {result.error.reason}", url=url)
    try:
        parse_feed(
            result.content or b"",
            url=result.final_url,
            headers=result.headers,
            limits=settings.parse,
        )
    except NotAFeed as error:
        if error.alternate and error.alternate != url:
            return check_source_url(error.alternate)
        raise SourceError(error.reason, url=url) from None
    except ParseError as error:
        raise SourceError(error.reason, url=url) from None
    if result.downgraded:  # a plain-http hop said where to go: keep what was given
        return url
    return result.permanent_url or url
