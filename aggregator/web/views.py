"""Reader pages: the merged timeline, an entry, a source with its health."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..clock import epoch_seconds
from ..errors import StoreError
from ..paths import PATHS
from ..store import feeds as feed_rows
from ..store import search, timeline
from ..store.codec import from_db
from ..store.search import RankedCursor
from ..store.timeline import Cursor, TimelineEntry
from ..urls import without_userinfo
from .context import WebContext, web_context
from .pages import int_param, render, str_param

# Entries on one timeline or source page.
PAGE_SIZE = 30


@dataclass(frozen=True, slots=True)
class Day:
    """A day heading of the timeline: its label ("Today", "Yesterday", a weekday and date),
    ISO date, and the entries published on it in the reader's time zone.
    """

    label: str
    iso: str
    entries: tuple[TimelineEntry, ...]


def group_by_day(entries: Sequence[TimelineEntry], web: WebContext) -> list[Day]:
    """Consecutive entries under the local day they were published on; a date-only
    entry under the calendar day its feed wrote, whatever the reader's zone."""
    today = web.now().astimezone(web.timezone).date()
    days: list[tuple[date, list[TimelineEntry]]] = []
    for entry in entries:
        day = entry.day or entry.published.astimezone(web.timezone).date()
        if days and days[-1][0] == day:
            days[-1][1].append(entry)
        else:
            days.append((day, [entry]))
    return [Day(_day_label(day, today), day.isoformat(), tuple(items)) for day, items in days]


def _day_label(day: date, today: date) -> str:
    if day == today:
        return "Today"
    if day == today - timedelta(days=1):
        return "Yesterday"
    pattern = "%A %-d %B" if day.year == today.year else "%A %-d %B %Y"
    return day.strftime(pattern)


def _cursor_param(request: Request, name: str) -> Cursor | None:
    value = str_param(request, name)
    if not value:
        return None
    try:
        return Cursor.parse(value)
    except ValueError:
        raise HTTPException(
            400, f"The “{name}” parameter is not a page position from this site."
        ) from None


def _page_link(
    path: str, params: dict[str, str | int | None], cursor: tuple[str, Cursor | RankedCursor]
) -> str:
    query = {key: str(value) for key, value in params.items() if value not in (None, "")}
    query[cursor[0]] = str(cursor[1])
    return f"{path}?{urlencode(query)}"


def _local(moment: datetime, web: WebContext) -> datetime:
    return moment.astimezone(web.timezone)


# Orders of search results: by relevance (BM25 with recency) or newest first; the first is
# the default.
ORDERS = ("relevance", "newest")


def _ranked_cursor_param(request: Request, name: str) -> RankedCursor | None:
    value = str_param(request, name)
    if not value:
        return None
    try:
        return RankedCursor.parse(value)
    except ValueError:
        raise HTTPException(
            400, f"The “{name}” parameter is not a result position from this site."
        ) from None


def timeline_view(request: Request) -> Response:
    """GET /: the timeline, newest first, grouped by day; ``source`` narrows it to one feed,
    ``q`` searches (``order`` relevance or newest), ``before``/``after``/``at`` page it
    (keyset cursors).

    400 for a malformed parameter or both ``before`` and ``after``; 404 for an unknown
    source.
    """
    web = web_context(request)
    source_id = int_param(request, "source")
    raw_query = (str_param(request, "q") or "").strip()
    order = str_param(request, "order") or ORDERS[0]
    if order not in ORDERS:
        raise HTTPException(400, "The “order” parameter is “relevance” or “newest”.")
    before = _cursor_param(request, "before")
    after = _cursor_param(request, "after")
    if before is not None and after is not None:
        raise HTTPException(400, "Ask for older or newer entries, not both at once.")
    at = _ranked_cursor_param(request, "at")
    db = web.store().db
    sources = timeline.source_links(db)
    source = next((s for s in sources if s.id == source_id), None)
    if source_id is not None and source is None:
        raise HTTPException(404, f"There is no source with id {source_id}.")
    query = search.parse_query(raw_query) if raw_query else None
    params: dict[str, str | int | None] = {"q": raw_query, "source": source_id}
    context: dict[str, object] = {
        "sources": sources,
        "source": source,
        "query": raw_query,
        "order": order,
        "paged": before is not None or after is not None or bool(at and at.start),
        "local": lambda moment: _local(moment, web),
        "days": [],
        "results": None,
        "nothing_to_find": query is not None and query.fts is None,
        "highlights": {},
        "total": None,
        "older_url": None,
        "newer_url": None,
        "next_url": None,
        "previous_url": None,
        "search_feed_url": (
            "/search.atom?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})
            if query is not None and query.fts is not None
            else None
        ),
    }
    if query is not None and query.fts is None:
        pass  # nothing to look for: the page says so
    elif query is not None and order == "relevance":
        ranked = search.ranked_page(
            db, query, feed_id=source_id, position=at, limit=PAGE_SIZE
        )  # fmt: skip
        total = ranked.matches
        ids = [entry.id for entry in ranked.entries]
        context.update(
            results=ranked.entries,
            highlights=search.highlights(db, query, ids),
            total=total.count,
            exact=total.exact,
            start=ranked.start,
            capped=ranked.capped,
            next_url=_page_link("/", params, ("at", ranked.next)) if ranked.next else None,
            previous_url=(
                _page_link("/", params, ("at", ranked.previous)) if ranked.previous else None
            ),
        )
    else:
        fts = query.fts if query is not None else None
        page = timeline.timeline_page(
            db, feed_id=source_id, search=fts, before=before, after=after, limit=PAGE_SIZE
        )
        if query is not None:
            params["order"] = order
            ids = [entry.id for entry in page.entries]
            matches = search.count_matches(db, query, feed_id=source_id, upto=search.newest_id(db))
            context.update(
                highlights=search.highlights(db, query, ids),
                total=matches.count,
                exact=matches.exact,
            )
        context.update(
            days=group_by_day(page.entries, web),
            older_url=_page_link("/", params, ("before", page.older)) if page.older else None,
            newer_url=_page_link("/", params, ("after", page.newer)) if page.newer else None,
        )
    return render(request, "timeline.html", context)


def entry_view(request: Request) -> Response:
    """GET /entries/{entry_id}: one entry in full (sanitised HTML), with the story it is a
    copy of and the other feeds that carried it; 404 for an unknown id.
    """
    web = web_context(request)
    entry_id: int = request.path_params["entry_id"]
    db = web.store().db
    entry = timeline.get_entry(db, entry_id)
    if entry is None:
        raise HTTPException(404, f"There is no entry with id {entry_id}.")
    story = None
    if entry.duplicate_of is not None:
        story = timeline.get_entry(db, entry.duplicate_of)
    return render(
        request,
        "entry.html",
        {"entry": entry, "story": story, "local": lambda moment: _local(moment, web)},
    )


def source_view(request: Request) -> Response:
    """GET /sources/{feed_id}: one feed's entries, newest first, paged by
    ``before``/``after``, with its health and last fetches; 404 for an unknown feed, 400
    for both cursors at once.
    """
    web = web_context(request)
    feed_id: int = request.path_params["feed_id"]
    before = _cursor_param(request, "before")
    after = _cursor_param(request, "after")
    if before is not None and after is not None:
        raise HTTPException(400, "Ask for older or newer entries, not both at once.")
    db = web.store().db
    feed = feed_rows.get_feed(db, feed_id)
    if feed is None:
        raise HTTPException(404, f"There is no source with id {feed_id}.")
    health = timeline.feed_health(db, [feed_id]).get(feed_id)
    fetches = feed_rows.recent_fetches(db, feed_id, limit=10)
    page = timeline.timeline_page(db, feed_id=feed_id, before=before, after=after, limit=PAGE_SIZE)
    path = f"/sources/{feed_id}"
    return render(
        request,
        "source.html",
        {
            "feed": replace(feed, url=without_userinfo(feed.url)),
            "health": health,
            "fetches": [_fetch_row(row) for row in fetches],
            "days": group_by_day(page.entries, web),
            "older_url": _page_link(path, {}, ("before", page.older)) if page.older else None,
            "newer_url": _page_link(path, {}, ("after", page.newer)) if page.newer else None,
            "local": lambda moment: _local(moment, web),
        },
    )


@dataclass(frozen=True, slots=True)
class FetchRow:
    """One fetch as the source page lists it: when (UTC), HTTP status, outcome, entries
    added and changed, duration in milliseconds, and the error line.
    """

    at: datetime | None
    status: int | None
    outcome: str
    new: int
    updated: int
    duration_ms: int
    error: str | None


def _fetch_row(row: dict[str, object]) -> FetchRow:
    return FetchRow(
        at=from_db(str(row["at"])) if row["at"] else None,
        status=row["status"] if isinstance(row["status"], int) else None,
        outcome=str(row["outcome"]),
        new=int(str(row["new"])),
        updated=int(str(row["updated"])),
        duration_ms=int(str(row["duration_ms"])),
        error=str(row["error"]) if row["error"] else None,
    )


# While writes are failing, /healthz tries a write again at most this often, in seconds.
HEALTH_RETRY_SECONDS = 5.0


def healthz(request: Request) -> Response:
    """200 while the database reads and this process's last write succeeded; else 503
    with the reason (a failing write is reported until a write succeeds again)."""
    web = web_context(request)
    try:
        store = web.store()
        count = timeline.entry_count(store.db)
    except StoreError as error:
        return JSONResponse({"status": "error", "database": error.reason}, status_code=503)
    health = store.health
    if health.failing and epoch_seconds() - (health.last_failure or 0) >= HEALTH_RETRY_SECONDS:
        # The failure may have passed (a lock released, space freed): try a write now.
        with suppress(StoreError):
            store.probe_write(wait_ms=500)
        health = store.health
    if health.failing:
        since = datetime.fromtimestamp(health.last_failure or 0, UTC).isoformat(timespec="seconds")
        return JSONResponse(
            {"status": "error", "database": f"writes failing: {health.failure}", "since": since},
            status_code=503,
        )
    state = "read-only" if store.readonly else "ok"
    return JSONResponse({"status": "ok", "database": state, "entries": count})


routes = [
    Route(PATHS["timeline"], timeline_view, name="timeline"),
    Route(PATHS["entry"], entry_view, name="entry"),
    Route("/sources/{feed_id:id}", source_view, name="source"),
    Route("/healthz", healthz, name="healthz"),
]
