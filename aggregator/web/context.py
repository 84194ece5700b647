"""What every request handler shares: settings, the clock, templates, database access.

The SQLite connection of a ``Store`` must not be used by two threads at once, so each
worker thread gets its own ``Store`` (opened on first use, closed when the app stops).
Handlers reach the context through ``web_context(request)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from jinja2 import Environment
from starlette.requests import HTTPConnection

from ..config import Settings
from ..store import Store
from ..store.secrets import get_or_create_secret

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class WebContext:
    def __init__(self, settings: Settings, *, clock: Clock, templates: Environment) -> None:
        self.settings = settings
        self.clock = clock
        self.templates = templates
        self._local = threading.local()
        self._stores: list[Store] = []
        self._lock = threading.RLock()
        self._csrf_secret: bytes | None = None

    @property
    def timezone(self) -> tzinfo:
        return self.settings.digest.timezone

    def now(self) -> datetime:
        return self.clock()

    def store(self) -> Store:
        """This thread's store."""
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = Store.open(self.settings.database)
            self._local.store = store
            with self._lock:
                self._stores.append(store)
        return store

    def csrf_secret(self) -> bytes:
        if self._csrf_secret is None:
            with self._lock:
                if self._csrf_secret is None:
                    with self.store().write() as db:
                        self._csrf_secret = get_or_create_secret(db, "csrf")
        return self._csrf_secret

    def close(self) -> None:
        with self._lock:
            stores, self._stores = self._stores, []
        for store in stores:
            store.close()
        self._local = threading.local()


def web_context(connection: HTTPConnection) -> WebContext:
    context: WebContext = connection.app.state.web
    return context
