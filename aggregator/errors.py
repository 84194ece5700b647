"""The product's errors: one root, a subclass per stage, each carrying what it concerns.

    AggregatorError
    ├── ConfigError            path, key           a bad setting; nothing has run yet
    ├── FetchError             url                 no usable answer from a feed server
    │   ├── FetchRefused                           scheme or address not allowed (SSRF guard)
    │   ├── FetchTimeout                           connect/read timeout or the total deadline
    │   ├── FetchConnectError                      refused, unknown host, TLS failure
    │   ├── FetchTooLarge                          body over the (decompressed) size cap
    │   ├── FetchTooManyRedirects                  redirect loop or chain past the hop limit
    │   └── FetchStatusError   status              unusable status (4xx, 5xx, empty 200)
    ├── SourceError            url                 a feed source that cannot be added (scheme, OPML)
    ├── ParseError             url                 the bytes are not a usable feed
    │   └── NotAFeed           alternate           an HTML page (and the feed it links, if any)
    ├── StoreError             path, reason        the database cannot be used
    │   ├── StoreLocked                            another process held the lock past the wait
    │   ├── StoreFull                              the disk (or the size limit) is full
    │   ├── StoreReadOnly                          the file or its folder cannot be written
    │   └── IncompatibleDatabase                   not SQLite, another application's, or damaged
    ├── MailError              address             a message could not be handed over
    │   ├── MailTemporaryError                     4xx, connection lost: try again later
    │   └── MailPermanentError                     5xx: the address is refused
    └── TokenError                                 a signed link token is invalid or expired

Library errors (httpx, sqlite3, smtplib, feedparser) are wrapped at the module that
calls the library; nothing above an adapter sees them. ``str(error)`` is always one
line saying what went wrong and where.
"""

from __future__ import annotations

from typing import Any


def _restore(cls: type[AggregatorError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class AggregatorError(Exception):
    """Root of every error the product raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # always one line

    @property
    def message(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (parsing runs in a process pool); the default
        # pickling calls cls(*args), which keyword-only arguments such as url= break.
        return (_restore, (type(self), self.args, dict(self.__dict__)))


class ConfigError(AggregatorError):
    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.key = key


class FetchError(AggregatorError):
    kind = "fetch"

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(f"{url}: {message}")
        self.url = url
        self.reason = " ".join(message.split())


class FetchRefused(FetchError):
    kind = "refused"


class FetchTimeout(FetchError):
    kind = "timeout"


class FetchConnectError(FetchError):
    kind = "connect"


class FetchTooLarge(FetchError):
    kind = "too_large"


class FetchTooManyRedirects(FetchError):
    kind = "redirects"


class FetchStatusError(FetchError):
    kind = "status"

    def __init__(self, message: str, *, url: str, status: int) -> None:
        super().__init__(message, url=url)
        self.status = status


class SourceError(AggregatorError):
    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(f"{url}: {message}" if url else message)
        self.url = url


class ParseError(AggregatorError):
    kind = "parse"

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(f"{url}: {message}")
        self.url = url
        self.reason = " ".join(message.split())


class NotAFeed(ParseError):
    kind = "not_a_feed"

    def __init__(self, message: str, *, url: str, alternate: str | None = None) -> None:
        super().__init__(message, url=url)
        self.alternate = alternate


class StoreError(AggregatorError):
    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.reason = " ".join(message.split())


class StoreLocked(StoreError):
    pass


class StoreFull(StoreError):
    pass


class StoreReadOnly(StoreError):
    pass


class IncompatibleDatabase(StoreError):
    pass


class MailError(AggregatorError):
    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(f"{address}: {message}" if address else message)
        self.address = address


class MailTemporaryError(MailError):
    pass


class MailPermanentError(MailError):
    pass


class TokenError(AggregatorError):
    pass
