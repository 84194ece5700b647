"""The web app: merged timeline, entry and source pages, Atom and OPML, admin.

``create_app(settings, clock=..., store=..., env=...)`` builds a Starlette app from
settings passed in; it reads nothing from the environment. A process that already has
its ``Store`` (the service) passes it in; otherwise the app opens one when it starts.
Pages render with the one Jinja2 environment (``render.environment()`` unless ``env``
is given). Routes are declared in one list below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from jinja2 import Environment
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ..clock import Clock, system_clock
from ..config import Settings
from ..errors import StoreError
from ..render import environment
from ..resources import resource_dir
from ..store import Store
from . import admin, feeds, metrics, subscribe, views
from .context import WebContext
from .pages import http_error, server_error, store_error
from .security import SecurityHeadersMiddleware

__all__ = ["create_app"]

STATIC = resource_dir("static")
"""The static files' directory, served under /static."""
MAX_BODY_BYTES = 6 * 1024 * 1024
"""Largest request body, in bytes: enough for an OPML upload (5 MB, sources.import_opml)."""


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    env: Environment | None = None,
) -> Starlette:
    """The web app for ``settings``: ``clock`` gives aware UTC times (the system clock
    if omitted), ``store`` is shared when given (else opened at startup and closed at
    shutdown), ``env`` is the Jinja2 environment pages render with (the process's one
    from ``render.environment()`` if omitted; it needs that module's filters)."""
    routes: list[BaseRoute] = [
        *views.routes,
        *feeds.routes,
        *admin.routes,
        *subscribe.routes,
        *metrics.routes,
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    web = WebContext(
        settings,
        clock=clock or system_clock,
        templates=env if env is not None else environment(),
        store=store,
        routes=routes,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Open (and migrate) before the first request, not inside one; an unusable
        # database is not fatal: each page answers 503 saying why until it is fixed.
        with suppress(StoreError):
            web.store()
        try:
            yield
        finally:
            web.close()

    middleware = [
        Middleware(
            SecurityHeadersMiddleware,
            secure_cookies=settings.web.base_url.startswith("https:"),
        )
    ]
    if settings.web.trusted_proxies:
        # X-Forwarded-For and -Proto are believed only from the proxies the operator
        # named; the client address that results keys the rate limits. The server's own
        # proxy handling is off (uvicorn would trust any loopback client).
        middleware.insert(
            0,
            Middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.web.trusted_proxies)),
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: http_error, StoreError: store_error, 500: server_error},
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    app.state.web = web
    return app
