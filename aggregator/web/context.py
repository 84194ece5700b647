"""What every request handler shares: settings, the clock, templates, the store.

The process's one ``Store`` is passed in (the service shares its own with the web app)
or opened once when the app starts; each worker thread reads through a connection of
its own (see ``Store.db``). Handlers reach the context through ``web_context(request)``.
"""

from __future__ import annotations

import threading
from datetime import datetime, tzinfo

from jinja2 import Environment
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import HTTPConnection

from ..clock import Clock
from ..config import Settings
from ..store import Store
from ..throttle import FailureThrottle


class IdConvertor(Convertor[int]):
    """``{name:id}`` in a route: a row id, at most 18 digits, so it always fits SQLite's
    64-bit integer; anything longer does not match the route (404), rather than
    overflowing in the query (500)."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


# Registered on import: every route module imports this one before declaring routes.
register_url_convertor("id", IdConvertor())


class WebContext:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        templates: Environment,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.templates = templates
        self._store = store
        self._owns_store = store is None
        self._lock = threading.Lock()
        # Admin password failures, per process (see throttle.py and /metrics).
        self.admin_throttle = FailureThrottle()

    @property
    def timezone(self) -> tzinfo:
        return self.settings.digest.timezone

    def now(self) -> datetime:
        return self.clock()

    def store(self) -> Store:
        """The process's store (opened here on first use when none was passed in)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = Store.open(self.settings.database)
        return self._store

    def csrf_secret(self) -> bytes:
        return self.store().secret("csrf")

    def close(self) -> None:
        """Close the store if this context opened it; a store passed in stays open."""
        with self._lock:
            store, self._store = self._store, (None if self._owns_store else self._store)
        if store is not None and self._owns_store:
            store.close()


def web_context(connection: HTTPConnection) -> WebContext:
    context: WebContext = connection.app.state.web
    return context
