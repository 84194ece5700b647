"""Subscription pages: sign up, confirm, preferences, unsubscribe, digest copies and archive.

GET and HEAD never change anything (THREATS S3): a link from an email opens a page with
a button, and only the button's POST acts. The one exception to CSRF checks is the
RFC 8058 one-click unsubscribe, a POST of ``List-Unsubscribe=One-Click`` whose signed
token is the capability (S5). Every refused link gets the same answer (S4), and the
sign-up answer does not depend on what is known about the address (S6).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..digests.render import Renderer, SectionView, story_count
from ..digests.send import send_welcomes
from ..errors import InvalidSubscription, RateLimited, StoreError, TokenError
from ..mail import open_sender
from ..paths import PATHS
from ..sanitize import xml_chars
from ..selection import Subscriber
from ..store import digests as digest_rows
from ..store import feeds as feed_rows
from ..store.digests import DigestLine, DigestRow
from ..subscriptions import (
    PURPOSE_ARCHIVE,
    PURPOSE_DIGEST,
    PURPOSE_PREFERENCES,
    PURPOSE_UNSUBSCRIBE,
    Signup,
    check_confirm_token,
    confirm,
    request_links,
    request_signup,
    send_signup_mail,
    subscriber_for,
    unsubscribe,
    update_preferences,
)
from ..urls import without_userinfo
from .context import WebContext, web_context
from .pages import render
from .security import check_csrf

__all__ = ["routes"]

log = logging.getLogger("aggregator.web.subscribe")
"""This module's logger."""
T = TypeVar("T")
"""What a piece of database work returns (``_db``)."""
MAX_TOKEN_CHARS = 1024
"""Longest token accepted, in characters; a longer one is refused unread."""
REFUSED = (
    "This link is not valid: it may be incomplete, too old, or already used. "
    "Links in our emails work as they are; if you copied one, check that it is whole."
)
"""The one answer to every bad link, whatever was wrong with it (THREATS S)."""


async def _db(work: Callable[[], T]) -> T:
    return await run_in_threadpool(work)


def _has_token(request: Request) -> bool:
    return "token" in request.query_params


def _token(request: Request, form: FormData | None = None) -> str:
    value = (form.get("token") if form is not None else None) or request.query_params.get("token")
    if not isinstance(value, str) or not value or len(value) > MAX_TOKEN_CHARS:
        raise TokenError("invalid or expired link")
    return value


async def _form(request: Request, *, csrf: bool = True) -> FormData:
    try:
        form = await request.form(max_files=0, max_fields=100, max_part_size=64 * 1024)
    except HTTPException:
        raise
    except ValueError as error:
        raise HTTPException(400, f"The form could not be read: {error}") from None
    if csrf:
        check_csrf(request, form)
    return form


def _refused(request: Request) -> Response:
    return render(
        request,
        "subscribe/message.html",
        {
            "heading": "This link does not work",
            "lines": [REFUSED],
            "link": (web_context(request).url_path("subscribe"), "Subscribe again"),
        },
        status_code=400,
    )


def _sources(web: WebContext) -> list[tuple[int, str]]:
    # A feed without a title is named by its URL: never with a user name or password.
    titles = feed_rows.enabled_titles(web.store().db)
    return [(ident, without_userinfo(name)) for ident, name in titles]


def _chosen_feeds(form: FormData) -> list[int] | None:
    """The ticked source ids (None: none ticked); a value that is no id at all becomes
    -1, which no feed has, so that it is refused with the form shown again."""
    ids = []
    for value in form.getlist("source"):
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 12:
            ids.append(int(value))
        else:
            ids.append(-1)
    return ids or None


def _offered_feeds(form: FormData) -> list[int] | None:
    """The source ids the form showed (its hidden ``offered`` field); None when the post
    did not come from our form."""
    value = form.get("offered")
    if not isinstance(value, str):
        return None
    parts = value.split(",")[:1000]
    ids = [int(part) for part in parts if part.isascii() and part.isdigit() and len(part) < 12]
    return ids or None


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --- sign up ------------------------------------------------------------------------


def _subscribe_page(
    request: Request,
    *,
    status_code: int = 200,
    error: str | None = None,
    email: str = "",
    cadence: str = "weekly",
    chosen: list[int] | None = None,
    none_ticked: bool = False,
) -> Response:
    web = web_context(request)
    sources = _sources(web)
    return render(
        request,
        "subscribe/form.html",
        {
            "sources": sources,
            "offered": ",".join(str(ident) for ident, _ in sources),
            "none_ticked": none_ticked,
            "chosen": set(chosen or ()),
            "cadence": cadence if cadence in ("daily", "weekly") else "weekly",
            "email": email[:320],
            "error": error,
            "digest": web.settings.digest,
        },
        status_code=status_code,
    )


def subscribe_form(request: Request) -> Response:
    """GET /subscribe: the sign-up form."""
    return _subscribe_page(request)


async def subscribe_post(request: Request) -> Response:
    """POST /subscribe: record a sign-up; the same answer whatever the address's state
    (THREATS S6); the mail goes out after the answer."""
    form = await _form(request)
    web = web_context(request)
    email = form.get("email")
    cadence = form.get("cadence")
    email_text = email if isinstance(email, str) else ""
    cadence_text = cadence if isinstance(cadence, str) else ""
    chosen = _chosen_feeds(form)
    offered = _offered_feeds(form)
    try:
        signup = await _db(
            lambda: request_signup(
                web.store(),
                web.settings,
                web.links(),
                email=email_text,
                cadence=cadence_text,
                feed_ids=chosen,
                client=_client(request),
                now=web.now(),
                offered_ids=offered,
            ),
        )
    except InvalidSubscription as error:
        message = error.reason
        return await _db(
            lambda: _subscribe_page(
                request,
                status_code=400,
                error=message,
                email=email_text,
                cadence=cadence_text,
                chosen=chosen,
                none_ticked=chosen is None and offered is not None,
            ),
        )
    except RateLimited:
        return render(
            request,
            "subscribe/message.html",
            {
                "heading": "Too many sign-ups",
                "lines": [
                    "Too many sign-ups came from your network in the last hour. "
                    "Please try again later."
                ],
                "link": None,
            },
            status_code=429,
            headers={"Retry-After": "3600"},
        )
    task = BackgroundTask(_send, web, signup) if signup.message else None
    response = render(
        request,
        "subscribe/message.html",
        {
            "heading": "Check your inbox",
            "lines": [
                "If the address can receive the digest, a message is on its way to it. "
                "Open the link in that message to confirm the subscription.",
                "Nothing arrives until the subscription is confirmed. The link works for two days.",
            ],
            "link": (web.url_path("timeline"), "Back to the timeline"),
        },
    )
    response.background = task
    return response


def _send(web: WebContext, signup: Signup) -> None:
    # A confirmation that fails stays owed: the service's mail job retries it.
    sender = open_sender(web.settings.mail.smtp, web.settings.mail.outbox)
    try:
        problem = send_signup_mail(web.store(), sender, signup)
    except StoreError as error:
        problem = f"its outcome could not be recorded: {error}"
    finally:
        sender.close()
    if problem:
        log.warning("sign-up mail not sent: %s", problem)


# --- confirm ------------------------------------------------------------------------


def confirm_page(request: Request) -> Response:
    """GET /subscribe/confirm: a button to confirm (GET changes nothing)."""
    web = web_context(request)
    try:
        token = _token(request)
        check_confirm_token(web.store(), web.links(), token, web.now())
    except TokenError:
        return _refused(request)
    return render(
        request,
        "subscribe/confirm.html",
        {"token": token},
        headers={"Cache-Control": "no-store"},
    )


async def confirm_post(request: Request) -> Response:
    """POST /subscribe/confirm: confirm the address (the token works once)."""
    form = await _form(request)
    web = web_context(request)
    try:
        token = _token(request, form)
        subscriber = await _db(lambda: confirm(web.store(), web.links(), token, web.now()))
    except TokenError:
        return _refused(request)
    links = web.links()
    now = web.now()
    response = render(
        request,
        "subscribe/message.html",
        {
            "heading": "You are subscribed",
            "lines": [
                f"The {subscriber.cadence} digest will come to this address, "
                "with everything new since now.",
                "A welcome mail with the latest posts of your sources is on its way.",
                "Every mail has links to change the cadence and sources or to unsubscribe.",
            ],
            "link": (links.preferences(subscriber.id, now), "Change preferences"),
        },
    )
    response.background = BackgroundTask(_welcome, web, subscriber.id)
    return response


def _welcome(web: WebContext, subscriber_id: int) -> None:
    sender = open_sender(web.settings.mail.smtp, web.settings.mail.outbox)
    try:
        problems = send_welcomes(
            web.store(), sender, web.settings, web.now(), subscriber_ids=[subscriber_id]
        )
    finally:
        sender.close()
    for problem in problems:
        log.warning("welcome mail not sent: %s", problem)


# --- preferences --------------------------------------------------------------------


def _preferences_page(
    request: Request,
    subscriber: Subscriber,
    token: str,
    *,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
    entered: tuple[str, list[int] | None] | None = None,
) -> Response:
    """The preferences form; ``entered`` (cadence, ticked ids) shows what a refused post
    held instead of what is saved."""
    web = web_context(request)
    links = web.links()
    sources = _sources(web)
    chosen = (
        {feed_id for feed_id, _ in sources}
        if subscriber.feed_ids is None
        else set(subscriber.feed_ids)
    )
    if entered is not None:
        cadence, ticked = entered
        chosen = set(ticked or ())
        if cadence == "daily":
            subscriber = replace(subscriber, cadence="daily")
        elif cadence == "weekly":
            subscriber = replace(subscriber, cadence="weekly")
    now = web.now()
    return render(
        request,
        "subscribe/preferences.html",
        {
            "subscriber": subscriber,
            "token": token,
            "sources": sources,
            "offered": ",".join(str(ident) for ident, _ in sources),
            "chosen": chosen,
            "notice": notice,
            "error": error,
            "unsubscribe_url": links.unsubscribe(subscriber.id, now),
            "archive_url": links.archive(subscriber.id, now),
            "digest": web.settings.digest,
        },
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


def preferences_page(request: Request) -> Response:
    """GET /preferences: the subscriber's cadence and sources (without a token: how to
    get a link)."""
    if not _has_token(request):
        return _lost_link_page(request, "preferences")
    web = web_context(request)
    try:
        token = _token(request)
        subscriber = subscriber_for(web.store(), web.links(), PURPOSE_PREFERENCES, token, web.now())
    except TokenError:
        return _refused(request)
    saved = request.query_params.get("saved") == "1"
    return _preferences_page(
        request, subscriber, token, notice="Preferences saved." if saved else None
    )


async def preferences_post(request: Request) -> Response:
    """POST /preferences: save cadence and sources, then back to the page (303)."""
    form = await _form(request)
    web = web_context(request)
    cadence = form.get("cadence")
    cadence_text = cadence if isinstance(cadence, str) else ""
    chosen = _chosen_feeds(form)
    offered = _offered_feeds(form)
    try:
        token = _token(request, form)
        subscriber = await _db(
            lambda: update_preferences(
                web.store(),
                web.links(),
                token,
                web.now(),
                cadence=cadence_text,
                feed_ids=chosen,
                offered_ids=offered,
            ),
        )
    except TokenError:
        return _refused(request)
    except InvalidSubscription as error:
        message = error.reason
        current = await _db(
            lambda: subscriber_for(web.store(), web.links(), PURPOSE_PREFERENCES, token, web.now())
        )
        return await _db(
            lambda: _preferences_page(
                request,
                current,
                token,
                error=message,
                status_code=400,
                entered=(cadence_text, chosen),
            )
        )
    # Back to the page with its token, so the address bar holds a link that still works.
    del subscriber
    return RedirectResponse(
        f"{web.url_path('preferences')}?{urlencode({'token': token, 'saved': '1'})}",
        status_code=303,
    )


# --- unsubscribe --------------------------------------------------------------------


def unsubscribe_page(request: Request) -> Response:
    """GET /unsubscribe: a button to unsubscribe (GET changes nothing)."""
    if not _has_token(request):
        return _lost_link_page(request, "unsubscribe")
    web = web_context(request)
    try:
        token = _token(request)
        subscriber = subscriber_for(web.store(), web.links(), PURPOSE_UNSUBSCRIBE, token, web.now())
    except TokenError:
        return _refused(request)
    return render(
        request,
        "subscribe/unsubscribe.html",
        {"token": token, "subscribed": subscriber.status in ("confirmed", "pending")},
        headers={"Cache-Control": "no-store"},
    )


async def unsubscribe_post(request: Request) -> Response:
    """POST /unsubscribe: unsubscribe the address the token names, from the page or as
    an RFC 8058 one-click POST.

    A ``List-Unsubscribe=One-Click`` body (RFC 8058 section 3.2: mail providers POST it
    to the header's URL, once) needs no CSRF token and gets a plain-text answer (400 for
    a bad token); any other POST is CSRF checked and gets a page. Either is answered as
    done when the database was locked too: the unsubscribe is then kept in the spool
    (``subscriptions.unsubscribe``).
    """
    raw = await _form(request, csrf=False)
    one_click = raw.get("List-Unsubscribe") == "One-Click"
    if not one_click:
        check_csrf(request, raw)
    web = web_context(request)
    try:
        token = _token(request, raw)
        await _db(lambda: unsubscribe(web.store(), web.links(), token, web.now()))
    except TokenError:
        if one_click:
            return PlainTextResponse(REFUSED, status_code=400)
        return _refused(request)
    if one_click:
        return PlainTextResponse("Unsubscribed. No more digests will be sent to this address.\n")
    return render(
        request,
        "subscribe/message.html",
        {
            "heading": "You are unsubscribed",
            "lines": ["No more digests will be sent to this address."],
            "link": (web.url_path("subscribe"), "Subscribe again"),
        },
    )


# --- digest copies and the archive --------------------------------------------------


def _web_copy(web: WebContext, digest: DigestRow) -> tuple[str, list[SectionView]]:
    return Renderer(web.store(), web.settings, web.links()).web_html(digest)


def digest_page(request: Request) -> Response:
    """GET /digests/{id}: the web copy of one digest (its token names that digest)."""
    web = web_context(request)
    digest_id: int = request.path_params["digest_id"]
    try:
        token = _token(request)
        if web.links().verify(PURPOSE_DIGEST, token, now=web.now()) != digest_id:
            raise TokenError("invalid or expired link")
    except TokenError:
        return _refused(request)
    digest = digest_rows.get_digest(web.store().db, digest_id)
    if digest is None:
        return _refused(request)
    subject, sections = _web_copy(web, digest)
    links = web.links()
    return render(
        request,
        "subscribe/digest.html",
        {
            "subject": subject,
            "sections": sections,
            "removed": Renderer.removed(digest, sections),
            "digest": digest,
            "date": digest.created_at.astimezone(web.settings.digest.timezone),
            "archive_url": links.archive(digest.subscriber_id, digest.created_at),
            "preferences_url": links.preferences(digest.subscriber_id, digest.created_at),
        },
        headers={"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"},
    )


def _archive(request: Request) -> tuple[Subscriber, list[dict[str, Any]], str] | None:
    web = web_context(request)
    try:
        token = _token(request)
        subscriber = subscriber_for(web.store(), web.links(), PURPOSE_ARCHIVE, token, web.now())
    except TokenError:
        return None
    links = web.links()
    renderer = Renderer(web.store(), web.settings, links)
    items = []
    for digest in digest_rows.for_subscriber(web.store().db, subscriber.id, limit=50):
        subject, sections = renderer.web_html(digest)
        items.append(
            {
                "digest": digest,
                "subject": subject,
                "sections": sections,
                "url": links.digest(digest.id, digest.created_at),
                "when": digest.sent_at or digest.created_at,
            }
        )
    return subscriber, items, token


def archive_page(request: Request) -> Response:
    """GET /digests: with a token, the subscriber's digests; without, the public page
    (recent editions, sign-up, lost link)."""
    if not _has_token(request):
        return _public_archive(request)
    found = _archive(request)
    if found is None:
        return _refused(request)
    subscriber, items, _ = found
    web = web_context(request)
    links = web.links()
    now = web.now()
    return render(
        request,
        "subscribe/archive.html",
        {
            "items": items,
            "feed_url": links.archive(subscriber.id, now, atom=True),
            "preferences_url": links.preferences(subscriber.id, now),
            "tz": web.settings.digest.timezone,
        },
        headers={"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"},
    )


def archive_feed(request: Request) -> Response:
    """GET /digests/feed.atom: the subscriber's digests as an Atom feed (token needed)."""
    found = _archive(request)
    if found is None:
        return PlainTextResponse(REFUSED, status_code=400)
    subscriber, items, _ = found
    web = web_context(request)
    links = web.links()
    now = web.now()
    updated: datetime = items[0]["when"] if items else subscriber.created_at
    body = web.templates.get_template("subscribe/archive.atom").render(
        {
            "items": items,
            "self_url": links.archive(subscriber.id, now, atom=True),
            "page_url": links.archive(subscriber.id, now),
            "feed_id": f"tag:{links.host},2026:digests:{subscriber.id}",
            "updated": updated,
            "title": "Your digests",
        }
    )
    return Response(
        xml_chars(body),
        media_type="application/atom+xml; charset=utf-8",
        headers={"Cache-Control": "private, no-store"},
    )


# --- the public pages: editions, lost links ---------------------------------------------

# How far back, in days, the lost-link page lists the public editions.
EDITION_DAYS = 30
"""How many days back the public page lists editions."""
_LOST = {
    "digests": ("Lost your link?", None),
    "preferences": (
        "Your digest preferences",
        "Cadence and sources are changed through the personal link at the foot of every "
        "digest. Lost it? Enter your address and we mail you a new one.",
    ),
    "unsubscribe": (
        "Unsubscribe",
        "Every digest has a one-click unsubscribe link at its foot. Lost it? Enter your "
        "address and we mail you your links, unsubscribe included.",
    ),
}


def _editions(web: WebContext) -> list[dict[str, Any]]:
    tz = web.settings.digest.timezone
    since = web.now() - timedelta(days=EDITION_DAYS)
    days: list[date] = []
    for moment in digest_rows.sent_times(web.store().db, since):
        day = moment.astimezone(tz).date()
        if day not in days:
            days.append(day)
    return [
        {"day": day, "url": web.url_path("digest_edition", day=day.isoformat())} for day in days
    ]


def _public_archive(request: Request, *, status_code: int = 200, **extra: Any) -> Response:
    web = web_context(request)
    sources = _sources(web)
    return render(
        request,
        "subscribe/public.html",
        {
            "editions": _editions(web),
            "sources": sources,
            "offered": ",".join(str(ident) for ident, _ in sources),
            "none_ticked": False,
            "chosen": set(),
            "cadence": "weekly",
            "email": "",
            "error": None,
            "digest": web.settings.digest,
            "lost_error": None,
            "lost_email": "",
            **extra,
        },
        status_code=status_code,
    )


def _lost_link_page(
    request: Request,
    page: str,
    *,
    error: str | None = None,
    email: str = "",
    status_code: int = 200,
) -> Response:
    heading, lede = _LOST[page]
    return render(
        request,
        "subscribe/lost.html",
        {"heading": heading, "lede": lede, "lost_error": error, "lost_email": email[:320]},
        status_code=status_code,
    )


def lost_link_page(request: Request) -> Response:
    """GET /digests/lost-link: the "lost your link?" form."""
    return _lost_link_page(request, "digests")


async def lost_link_post(request: Request) -> Response:
    """POST /digests/lost-link: mail the address its links, if it has any; the same
    answer whatever its state (THREATS S6)."""
    form = await _form(request)
    web = web_context(request)
    email = form.get("email")
    email_text = email if isinstance(email, str) else ""
    try:
        answer = await _db(
            lambda: request_links(
                web.store(),
                web.settings,
                web.links(),
                email=email_text,
                client=_client(request),
                now=web.now(),
            )
        )
    except InvalidSubscription as error:
        return _lost_link_page(
            request, "digests", error=error.reason, email=email_text, status_code=400
        )
    except RateLimited:
        return render(
            request,
            "subscribe/message.html",
            {
                "heading": "Too many requests",
                "lines": [
                    "Too many requests came from your network in the last hour. "
                    "Please try again later."
                ],
                "link": None,
            },
            status_code=429,
            headers={"Retry-After": "3600"},
        )
    response = render(
        request,
        "subscribe/message.html",
        {
            "heading": "Check your inbox",
            "lines": [
                "If the address is subscribed, a message with its links is on its way to it.",
                "Nothing arrives for an address that is not subscribed; you can sign up again.",
            ],
            "link": (web.url_path("digest_archive"), "Back to the digests"),
        },
    )
    if answer.message:
        response.background = BackgroundTask(_send, web, answer)
    return response


def edition_page(request: Request) -> Response:
    """GET /digests/editions/{day}: every post sent in a digest on that day (in the
    digest's time zone); 404 for a day without one."""
    web = web_context(request)
    try:
        day = date.fromisoformat(request.path_params["day"])
    except ValueError:
        raise HTTPException(404, "There is no edition for this date.") from None
    tz = web.settings.digest.timezone
    if day >= date.max:  # no day after it to end the edition
        raise HTTPException(404, "There is no edition for this date.")
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    store = web.store()
    ids = digest_rows.sent_entry_ids(store.db, start, end)
    if not ids:
        raise HTTPException(404, "No digest went out on this date.")
    views = digest_rows.entries_by_id(store.db, ids)
    ordered = sorted(views.values(), key=lambda e: (e.feed_id, -e.published.timestamp()))
    lines = [DigestLine(entry, entry.feed_id, ()) for entry in ordered]
    renderer = Renderer(store, web.settings, web.links())
    sections = renderer.sections(lines, {})
    total = story_count(sections)
    return render(
        request,
        "subscribe/edition.html",
        {
            "subject": f"{total} {'post' if total == 1 else 'posts'} sent on {day:%-d %B %Y}",
            "sections": sections,
            "date": start,
        },
    )


routes: list[BaseRoute] = [
    Route(PATHS["subscribe"], subscribe_form, methods=["GET"], name="subscribe"),
    Route(PATHS["subscribe"], subscribe_post, methods=["POST"], name="subscribe_post"),
    Route(PATHS["confirm"], confirm_page, methods=["GET"], name="confirm"),
    Route(PATHS["confirm"], confirm_post, methods=["POST"], name="confirm_post"),
    Route(PATHS["preferences"], preferences_page, methods=["GET"], name="preferences"),
    Route(PATHS["preferences"], preferences_post, methods=["POST"], name="preferences_post"),
    Route(PATHS["unsubscribe"], unsubscribe_page, methods=["GET"], name="unsubscribe"),
    Route(PATHS["unsubscribe"], unsubscribe_post, methods=["POST"], name="unsubscribe_post"),
    Route(PATHS["digest_archive"], archive_page, methods=["GET"], name="digest_archive"),
    Route(PATHS["digest_archive_feed"], archive_feed, methods=["GET"], name="digest_archive_feed"),
    Route("/digests/lost-link", lost_link_page, methods=["GET"], name="lost_link"),
    Route("/digests/lost-link", lost_link_post, methods=["POST"], name="lost_link_post"),
    Route("/digests/editions/{day}", edition_page, methods=["GET"], name="digest_edition"),
    Route(PATHS["digest"], digest_page, methods=["GET"], name="digest"),
]
"""The subscription pages' routes (paths from ``paths.PATHS`` where mail links to them)."""
