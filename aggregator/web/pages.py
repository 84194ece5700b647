"""Rendering pages and error pages; reading query parameters.

Public helpers, for every page of the web app::

    render(request: Request, template_name: str, context: Mapping[str, Any],
           status_code: int = 200, headers: Mapping[str, str] | None = None) -> HTMLResponse
        Renders a template (extending ``base.html``) with the one Jinja2 environment.
        Every template also sees ``request``, ``csrf_token()`` (call it inside a form),
        ``csrf_field`` (the hidden field's name), ``nav``, ``site_title`` and
        ``url_for(name, **params)``: the root-relative path of a named route.
    int_param(request: Request, name: str) -> int | None
        A positive whole-number query parameter, or HTTPException(400).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..errors import StoreFull, StoreLocked, StoreReadOnly
from .context import web_context
from .security import FORM_FIELD, SECURITY_HEADERS, csrf_token

__all__ = ["SITE_TITLE", "NavItem", "int_param", "render", "str_param"]

# The site's name in page titles and the header.
SITE_TITLE = "Blog digest"
"""The site's name in page titles and the header."""
MAX_PARAM_CHARS = 200
"""Longest query parameter accepted, in characters (a longer one is answered with 400)."""
log = logging.getLogger("aggregator.web")
"""The web app's logger."""


@dataclass(frozen=True, slots=True)
class NavItem:
    """One item of the site menu: its path, label, whether it is the current page, and
    whether it is shown only on wide screens."""

    href: str
    label: str
    current: bool
    wide: bool = False


_NAV = (
    ("timeline", "Timeline"),
    ("subscribe", "Subscribe"),
    ("digest_archive", "Digests"),
    ("atom", "Atom feed"),
    ("admin", "Admin"),
)
"""The site menu: route name and label, in order."""


def _nav(request: Request) -> list[NavItem]:
    web = web_context(request)
    admin_on = bool(web.settings.web.admin_password)
    path = request.url.path
    items = []
    for name, label in _NAV:
        if not web.has_route(name) or (name == "admin" and not admin_on):
            continue  # switched off: a menu item would only lead to a refusal
        href = web.url_path(name)
        current = path == href if href == "/" else path.startswith(href)
        items.append(NavItem(href, label, current, wide=name == "atom"))
    return items


def render(
    request: Request,
    template_name: str,
    context: Mapping[str, Any],
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """The page ``template_name`` rendered with ``context`` (see the module docstring
    for what every template sees), with the security headers and ``headers``."""
    web = web_context(request)
    template = web.templates.get_template(template_name)
    html = template.render(
        {
            "request": request,
            "csrf_token": lambda: csrf_token(request),
            "csrf_field": FORM_FIELD,
            "nav": _nav(request),
            "url_for": web.url_path,
            "site_title": SITE_TITLE,
            **context,
        }
    )
    # Set here as well as by the middleware: error pages from the outermost layer
    # never pass through it.
    # Header names are case-insensitive: a page's own Referrer-Policy replaces the
    # default instead of going out beside it.
    all_headers = dict(SECURITY_HEADERS)
    all_headers.update({name.lower(): value for name, value in (headers or {}).items()})
    return HTMLResponse(html, status_code=status_code, headers=all_headers)


def str_param(request: Request, name: str) -> str | None:
    """Query parameter ``name``, or None; ``HTTPException(400)`` when longer than
    ``MAX_PARAM_CHARS``."""
    value = request.query_params.get(name)
    if value is None:
        return None
    if len(value) > MAX_PARAM_CHARS:
        raise HTTPException(
            400, f"The “{name}” parameter is too long (at most {MAX_PARAM_CHARS} characters)."
        )
    return value


def int_param(request: Request, name: str) -> int | None:
    """A positive whole-number query parameter (at most 18 digits), None when absent or
    empty; ``HTTPException(400)`` otherwise."""
    value = str_param(request, name)
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18 or int(value) < 1:
        raise HTTPException(400, f"The “{name}” parameter must be a positive whole number.")
    return int(value)


_TITLES = {
    400: "Bad request",
    401: "Sign-in needed",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    500: "Something went wrong",
    503: "Unavailable",
}


async def http_error(request: Request, exc: Exception) -> Response:
    """An ``HTTPException`` as the error page, with its status and headers."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.detail and exc.status_code != 500 else None
    if exc.status_code == 404 and detail == "Not Found":
        detail = "There is no page at this address."
    return render(
        request,
        "error.html",
        {
            "status": exc.status_code,
            "heading": _TITLES.get(exc.status_code, "Error"),
            "detail": detail,
        },
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _store_detail(exc: Exception) -> str:
    """What a reader can do about a database failure, in words (no paths)."""
    if isinstance(exc, StoreLocked):
        return "The site is busy saving other changes. Nothing was saved; try again in a minute."
    if isinstance(exc, StoreReadOnly | StoreFull):
        return "The site cannot save changes right now. Nothing was saved; try again later."
    return "The site's database cannot be used right now. Try again in a moment."


async def store_error(request: Request, exc: Exception) -> Response:
    """A ``StoreError`` as a 503 page saying what a reader can do (Retry-After: 30)."""
    log.error("database error serving %s: %s", request.url.path, exc)
    return render(
        request,
        "error.html",
        {
            "status": 503,
            "heading": _TITLES[503],
            "detail": _store_detail(exc),
        },
        status_code=503,
        headers={"retry-after": "30"},
    )


async def server_error(request: Request, exc: Exception) -> Response:
    """Any other error: logged, answered with a 500 page (a bare one if that fails)."""
    log.error("error serving %s %s", request.method, request.url.path, exc_info=exc)
    try:
        return render(
            request,
            "error.html",
            {
                "status": 500,
                "heading": _TITLES[500],
                "detail": "The server could not answer this request. Try again in a moment.",
            },
            status_code=500,
        )
    except Exception:  # the error page itself must not fail
        return HTMLResponse(
            "<!doctype html><title>Error</title><h1>Something went wrong</h1>",
            status_code=500,
            headers=dict(SECURITY_HEADERS),
        )
