"""What every request handler shares: settings, the clock, templates, the store.

The process's one ``Store`` is passed in (the service shares its own with the web app)
or opened once when the app starts; each worker thread reads through a connection of
its own (see ``Store.db``). Handlers reach the context through ``web_context(request)``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Any

from jinja2 import Environment
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, NoMatchFound

from ..clock import Clock
from ..config import Settings
from ..store import Store
from ..subscriptions import Links, links_for
from ..throttle import FailureThrottle

PATH_CACHE_SIZE = 8192
"""Paths remembered by ``WebContext.url_path`` (a page links to the same few often)."""


class IdConvertor(Convertor[int]):
    """``{name:id}`` in a route: a row id, at most 18 digits, so it always fits SQLite's
    64-bit integer; anything longer does not match the route (404), rather than
    overflowing in the query (500)."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        """The path segment as an int."""
        return int(value)

    def to_string(self, value: int) -> str:
        """The id as a path segment."""
        return str(value)


# Registered on import: every route module imports this one before declaring routes.
register_url_convertor("id", IdConvertor())


class WebContext:
    """What every handler shares: ``settings``, the ``clock`` (aware UTC), the Jinja2
    environment (``templates``), the store, the subscription links and the admin
    throttle. One per app; safe to use from the worker threads."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        templates: Environment,
        store: Store | None = None,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.templates = templates
        self._store = store
        self._owns_store = store is None
        self._lock = threading.Lock()
        # Admin password failures, per process (see throttle.py and /metrics).
        self.admin_throttle = FailureThrottle()
        # The signed subscription links, made on first use (they need the store's secret).
        self._links: Links | None = None
        # Named routes, for building paths from names (url_path).
        self._routes = {
            name: route for route in routes if (name := getattr(route, "name", None)) is not None
        }
        self._path = lru_cache(maxsize=PATH_CACHE_SIZE)(self._build_path)

    @property
    def timezone(self) -> tzinfo:
        """The zone pages show times in (the digest's zone)."""
        return self.settings.digest.timezone

    def now(self) -> datetime:
        """The clock's reading: aware, UTC."""
        return self.clock()

    def store(self) -> Store:
        """The process's store (opened here on first use when none was passed in)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = Store.open(self.settings.database)
        return self._store

    def links(self) -> Links:
        """The subscription links (absolute URLs with signed tokens), made once from the
        store's token secret; the first call may write that secret."""
        if self._links is None:
            made = links_for(self.store(), self.settings)
            with self._lock:
                if self._links is None:
                    self._links = made
        return self._links

    def url_path(self, name: str, /, **params: Any) -> str:
        """The root-relative path of the route named ``name`` with ``params`` (Starlette's
        ``url_path_for``): ``url_path("entry", entry_id=3)`` is ``"/entries/3"``.
        ``NoMatchFound`` for a route the app does not have, or wrong parameters."""
        return self._path(name, tuple(params.items()))

    def has_route(self, name: str) -> bool:
        """Whether the app has a route named ``name``."""
        return name in self._routes

    def _build_path(self, name: str, params: tuple[tuple[str, Any], ...]) -> str:
        route = self._routes.get(name)
        if route is None:
            raise NoMatchFound(name, dict(params))
        return str(route.url_path_for(name, **dict(params)))

    def csrf_secret(self) -> bytes:
        """The key CSRF tokens are signed with (made and stored on first use)."""
        return self.store().secret("csrf")

    def close(self) -> None:
        """Close the store if this context opened it; a store passed in stays open."""
        with self._lock:
            store, self._store = self._store, (None if self._owns_store else self._store)
        if store is not None and self._owns_store:
            store.close()


def web_context(connection: HTTPConnection) -> WebContext:
    """The app's context, from any request or websocket of it."""
    context: WebContext = connection.app.state.web
    return context
