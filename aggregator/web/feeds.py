"""Machine-readable exports: the merged and per-source Atom feeds, and OPML.

Atom answers carry an ETag and a Last-Modified derived from the entries they list, so
a reader polling with If-None-Match / If-Modified-Since gets a 304 without the feed
being rendered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..sanitize import xml_chars
from ..sources import export_opml
from ..store import feeds as feed_rows
from ..store import search, timeline
from ..store.timeline import TimelineEntry
from ..urls import without_userinfo
from .context import web_context
from .pages import SITE_TITLE, int_param, str_param

# Entries in each Atom feed we serve, newest first.
FEED_SIZE = 50
# Media type of the Atom feeds we serve (RFC 4287 section 7).
ATOM_TYPE = "application/atom+xml; charset=utf-8"
# Bump when the Atom template changes, so that cached copies are not kept.
_FORMAT_VERSION = "atom-2"  # 2: enclosure links
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _validators(entries: Sequence[TimelineEntry], scope: str) -> tuple[str, datetime]:
    digest = hashlib.sha256(f"{_FORMAT_VERSION}\x00{scope}".encode())
    for entry in entries:
        digest.update(f"\x00{entry.id}\x00{entry.last_changed}\x00{entry.feed_title}".encode())
    changed = max((entry.last_changed for entry in entries), default=_EPOCH)
    return f'"{digest.hexdigest()[:32]}"', changed.replace(microsecond=0)


def _not_modified(request: Request, etag: str, last_modified: datetime) -> bool:
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return etag in tags or "*" in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError, IndexError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return last_modified <= since
    return False


def _atom(request: Request, feed_id: int | None) -> Response:
    web = web_context(request)
    db = web.store().db
    base = web.settings.web.base_url
    if feed_id is None:
        title, path, alternate = SITE_TITLE, "/feed.atom", f"{base}/"
    else:
        feed = feed_rows.get_feed(db, feed_id)
        if feed is None:
            raise HTTPException(404, f"There is no source with id {feed_id}.")
        title = feed.title or without_userinfo(feed.url)
        path = f"/sources/{feed_id}/feed.atom"
        alternate = f"{base}/sources/{feed_id}"
    entries = timeline.latest_entries(db, feed_id=feed_id, limit=FEED_SIZE)
    return _atom_response(request, entries, title=title, path=path, alternate=alternate)


def _atom_response(
    request: Request,
    entries: Sequence[TimelineEntry],
    *,
    title: str,
    path: str,
    alternate: str,
) -> Response:
    web = web_context(request)
    base = web.settings.web.base_url
    etag, changed = _validators(entries, f"{base}{path}\x00{title}")
    headers = {"etag": etag, "cache-control": "no-cache"}
    if entries:  # an empty feed has no date of change: the ETag alone validates it
        headers["last-modified"] = format_datetime(changed, usegmt=True)
    if _not_modified(request, etag, changed):
        return Response(status_code=304, headers=headers)
    # atom:updated (RFC 4287 section 4.2.15): the newest entry's date; with no entries,
    # the time of the request (the feed as it stands now).
    updated = max((e.updated or e.published for e in entries), default=None) or web.now()
    body = web.templates.get_template("feed.atom").render(
        title=title,
        feed_url=f"{base}{path}",
        alternate=alternate,
        base_url=base,
        updated=updated,
        entries=entries,
    )
    return Response(xml_chars(body), media_type=ATOM_TYPE, headers=headers)


def merged_atom(request: Request) -> Response:
    """GET /feed.atom: the newest stories of every source as Atom 1.0 (RFC 4287), with ETag
    and Last-Modified; 304 when the reader's copy is current (RFC 9110 section 13.1).
    """
    return _atom(request, None)


def source_atom(request: Request) -> Response:
    """GET /sources/{feed_id}/feed.atom: the newest entries of one source as Atom 1.0,
    cached like ``merged_atom``; 404 for an unknown source.
    """
    return _atom(request, request.path_params["feed_id"])


def search_atom(request: Request) -> Response:
    """The newest posts matching ``q`` (the search page's query language), optionally
    of one ``source``: a reader follows a topic with it. 400 without ``q``; a query
    that can find nothing (``-word`` alone) is an empty feed, as on the search page."""
    web = web_context(request)
    db = web.store().db
    raw_query = (str_param(request, "q") or "").strip()
    source_id = int_param(request, "source")
    if not raw_query:
        raise HTTPException(400, "Give the words to follow in the “q” parameter.")
    query = search.parse_query(raw_query)
    title = f"{SITE_TITLE}: posts matching “{raw_query}”"
    if source_id is not None:
        feed = feed_rows.get_feed(db, source_id)
        if feed is None:
            raise HTTPException(404, f"There is no source with id {source_id}.")
        title += f" on {feed.title or without_userinfo(feed.url)}"
    params: dict[str, str | int] = {"q": raw_query}
    if source_id is not None:
        params["source"] = source_id
    query_string = urlencode(params)
    # A query with nothing to find (only exclusions, only punctuation) is an empty
    # feed, as the search page shows no results for it.
    entries: Sequence[TimelineEntry] = ()
    if query.fts is not None:
        entries = timeline.timeline_page(
            db, feed_id=source_id, search=query.fts, limit=FEED_SIZE
        ).entries
    base = web.settings.web.base_url
    return _atom_response(
        request,
        entries,
        title=title,
        path=f"/search.atom?{query_string}",
        alternate=f"{base}/?{urlencode({**params, 'order': 'newest'})}",
    )


def opml(request: Request) -> Response:
    """GET /opml: every source as an OPML 2.0 document (text/x-opml), for another reader to
    import.
    """
    web = web_context(request)
    document = export_opml(feed_rows.list_feeds(web.store().db), now=web.now())
    return Response(
        document,
        media_type="text/x-opml; charset=utf-8",
        headers={"content-disposition": 'inline; filename="feeds.opml"'},
    )


routes = [
    Route("/feed.atom", merged_atom, name="atom"),
    Route("/sources/{feed_id:id}/feed.atom", source_atom, name="source_atom"),
    Route("/search.atom", search_atom, name="search_atom"),
    Route("/opml", opml, name="opml"),
]
