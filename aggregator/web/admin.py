"""The operator's pages: feeds with their health; add, remove, disable, import OPML;
search the stored posts (``?q=``, the search page's query language, best match first).

Behind the admin password (HTTP Basic, see ``security.require_admin``); every form
carries a CSRF token. Changes answer with a redirect back to ``/admin`` (so reloading
does not repeat them) and a short notice chosen from a fixed list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..errors import AggregatorError
from ..fetch import FeedFetcher
from ..models import FeedSource
from ..opml import MAX_OPML_BYTES
from ..sources import add_source, discover_feed_url, import_opml, remove_source
from ..store import feeds as feed_rows
from ..store import search, timeline
from ..store.entries import count_entries
from ..urls import without_userinfo
from .context import WebContext, web_context
from .pages import render, str_param
from .security import check_csrf, require_admin

# Longest feed or page URL accepted from the add form, in characters.
MAX_URL_CHARS = 2000
# Most entries an admin search lists.
SEARCH_LIMIT = 50
_NOTICES = {
    "added": "Feed added. Its entries appear after its first poll.",
    "known": "That feed was already there.",
    "removed": "Feed removed, with its entries.",
    "enabled": "Feed enabled; it is polled again.",
    "disabled": "Feed disabled; it is no longer polled.",
    "imported": "OPML imported.",
}


def _admin_page(
    request: Request,
    *,
    status_code: int = 200,
    error: str | None = None,
    form: Mapping[str, str] | None = None,
) -> Response:
    web = web_context(request)
    db = web.store().db
    # A user name or password in a feed URL is never shown (refused when a feed is added).
    feeds = [replace(feed, url=without_userinfo(feed.url)) for feed in feed_rows.list_feeds(db)]
    health = timeline.feed_health(db)
    done = request.query_params.get("done")
    counts = {
        name: request.query_params.get(name, "") for name in ("feed", "added", "known", "skipped")
    }
    raw_query = (str_param(request, "q") or "").strip()  # 400 when too long, as elsewhere
    found: search.RankedPage | None = None
    highlights: dict[int, search.Highlight] = {}
    if raw_query:  # the same search as the timeline's and the CLI's, best match first
        query = search.parse_query(raw_query)
        found = search.ranked_page(db, query, limit=SEARCH_LIMIT)
        highlights = search.highlights(db, query, [entry.id for entry in found.entries])
    return render(
        request,
        "admin.html",
        {
            "query": raw_query,
            "found": found,
            "highlights": highlights,
            "feeds": feeds,
            "health": health,
            "notice": _NOTICES.get(done or ""),
            "done": done,
            "counts": {k: int(v) for k, v in counts.items() if v.isascii() and v.isdigit()},
            "error": error,
            "form": form or {},
            "local": lambda moment: moment.astimezone(web.timezone),
        },
        status_code=status_code,
    )


def admin_view(request: Request) -> Response:
    """GET /admin: the feeds with their health, the add and import forms, and an entry
    search (``q``). Needs the admin password (``require_admin``).
    """
    require_admin(request)
    return _admin_page(request)


def _redirect(done: str, **counts: int) -> Response:
    query = urlencode({"done": done, **{k: str(v) for k, v in counts.items()}})
    return RedirectResponse(f"/admin?{query}", status_code=303)


async def _form(request: Request) -> FormData:
    require_admin(request)
    try:
        form = await request.form(max_files=1, max_fields=10, max_part_size=MAX_OPML_BYTES + 1)
    except HTTPException:
        raise
    except ValueError as error:
        raise HTTPException(400, f"The form could not be read: {error}") from None
    check_csrf(request, form)
    return form


def _text_field(form: FormData, name: str, limit: int) -> str:
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    return value.strip()[:limit]


async def add_feed(request: Request) -> Response:
    """POST /admin/feeds: add the feed at the form's ``url``, or the feed that page links to
    (discovered with one fetch, under the fetch settings' guards and timeouts), then
    redirect (303) to /admin. A page that cannot be fetched or holds no feed is a 400
    page saying why, the form kept. Admin and CSRF checked.
    """
    form = await _form(request)
    web = web_context(request)
    url = _text_field(form, "url", MAX_URL_CHARS)
    title = _text_field(form, "title", 200) or None
    if not url:
        return await run_in_threadpool(
            _admin_page, request, status_code=400, error="Enter the address of a feed or blog."
        )
    try:
        async with FeedFetcher(web.settings.fetch) as fetcher:
            feed_url = await discover_feed_url(fetcher, url, web.settings)
        feed, created = await run_in_threadpool(_add, web, feed_url, title)
    except AggregatorError as error:
        return await run_in_threadpool(
            _admin_page,
            request,
            status_code=400,
            error=f"Could not add that feed: {error}",
            form={"url": without_userinfo(url), "title": title or ""},
        )
    return _redirect("added" if created else "known", feed=feed.id)


def _add(web: WebContext, url: str, title: str | None) -> tuple[Any, bool]:
    return add_source(web.store(), FeedSource(url=url, title=title), origin="admin", now=web.now())


def _feed_id(request: Request) -> int:
    feed_id: int = request.path_params["feed_id"]
    return feed_id


async def remove_feed(request: Request) -> Response:
    """POST /admin/feeds/{feed_id}/remove: first a page that names the feed and how many
    posts go with it; with ``confirm=1`` (that page's button), delete the feed and its
    entries, then redirect (303). 404 for an unknown id. Admin and CSRF checked.
    """
    form = await _form(request)
    web = web_context(request)
    feed_id = _feed_id(request)
    if form.get("confirm") != "1":
        feed, posts = await run_in_threadpool(_feed_and_posts, web, feed_id)
        if feed is None:
            raise HTTPException(404, f"There is no feed with id {feed_id}.")
        return render(request, "admin_remove.html", {"feed": feed, "posts": posts})
    try:
        await run_in_threadpool(remove_source, web.store(), str(feed_id))
    except AggregatorError:
        raise HTTPException(404, f"There is no feed with id {feed_id}.") from None
    return _redirect("removed")


def _feed_and_posts(web: WebContext, feed_id: int) -> tuple[Any, int]:
    db = web.store().db
    return feed_rows.get_feed(db, feed_id), count_entries(db, feed_id)


async def set_feed_enabled(request: Request) -> Response:
    """POST /admin/feeds/{feed_id}/enabled: the form's ``enabled`` ("1" or not) turns
    polling on or off, then redirect (303); 404 for an unknown id. Admin and CSRF
    checked.
    """
    form = await _form(request)
    web = web_context(request)
    feed_id = _feed_id(request)
    enabled = form.get("enabled") == "1"

    def change() -> bool:
        store = web.store()
        if feed_rows.get_feed(store.db, feed_id) is None:
            return False
        with store.write() as db:
            feed_rows.set_enabled(db, feed_id, enabled, reason="disabled by the operator")
        return True

    if not await run_in_threadpool(change):
        raise HTTPException(404, f"There is no feed with id {feed_id}.")
    return _redirect("enabled" if enabled else "disabled", feed=feed_id)


async def import_feeds(request: Request) -> Response:
    """POST /admin/opml: add every feed of an uploaded OPML file (at most
    ``MAX_OPML_BYTES``), then redirect (303) with the counts; an unreadable file is a 400
    page saying why. Admin and CSRF checked.
    """
    form = await _form(request)
    web = web_context(request)
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return await run_in_threadpool(
            _admin_page, request, status_code=400, error="Choose an OPML file to import."
        )
    data = await upload.read(MAX_OPML_BYTES + 1)
    try:
        report = await run_in_threadpool(
            lambda: import_opml(web.store(), data, name="the uploaded file", now=web.now())
        )
    except AggregatorError as error:
        return await run_in_threadpool(
            _admin_page, request, status_code=400, error=f"Could not import: {error}"
        )
    return _redirect(
        "imported",
        added=len(report.added),
        known=len(report.known),
        skipped=len(report.problems),
    )


routes = [
    Route("/admin", admin_view, name="admin"),
    Route("/admin/feeds", add_feed, methods=["POST"], name="admin_add"),
    Route("/admin/feeds/{feed_id:id}/remove", remove_feed, methods=["POST"], name="admin_remove"),
    Route(
        "/admin/feeds/{feed_id:id}/enabled",
        set_feed_enabled,
        methods=["POST"],
        name="admin_enabled",
    ),
    Route("/admin/opml", import_feeds, methods=["POST"], name="admin_import"),
]
