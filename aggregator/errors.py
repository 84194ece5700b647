"""The product's errors: one root, a subclass per stage, each carrying what it concerns.

    AggregatorError            reason, kind        root: anything the product refuses on purpose
    ├── ConfigError            path, key           a bad setting; nothing has run yet
    ├── MissingResource        path                the install lacks its data files
    ├── FetchError             url, reason         no usable answer from a feed server
    │   ├── FetchRefused                           scheme or address not allowed (SSRF guard)
    │   ├── FetchTimeout                           connect/read timeout or the total deadline
    │   ├── FetchConnectError                      refused, unknown host, TLS failure
    │   ├── FetchTooLarge                          body over the (decompressed) size cap
    │   ├── FetchTooManyRedirects                  redirect loop or chain past the hop limit
    │   └── FetchStatusError   status              unusable status (4xx, 5xx, empty 200)
    ├── SourceError            url                 a feed source that cannot be added (scheme, OPML)
    ├── ParseError             url, reason         the bytes are not a usable feed
    │   └── NotAFeed           alternate           an HTML page (and the feed it links, if any)
    ├── StoreError             path, reason        the database cannot be used
    │   ├── StoreLocked                            another process held the lock past the wait
    │   ├── StoreFull                              the disk (or the size limit) is full
    │   ├── StoreReadOnly                          the file or its folder cannot be written
    │   └── IncompatibleDatabase                   not SQLite, another application's, or damaged
    ├── MailError              address             a message could not be handed over
    │   ├── MailTemporaryError                     4xx, connection lost: try again later
    │   │   └── MailDeferredError                  4xx for this recipient alone (greylisting)
    │   └── MailPermanentError                     5xx: the address is refused
    ├── TokenError             purpose             a signed link token is invalid or expired
    ├── SubscriptionError                          a sign-up or change cannot be carried out
    │   ├── InvalidSubscription field, value       the form was filled in wrongly
    │   └── RateLimited        client              too many requests from one client
    ├── NotFound               what, key           a named subscriber or digest does not exist
    └── UsageError             argument            arguments that do not fit together

Every error's ``reason`` is its own words without the place; ``str(error)`` is always one
line, ``"<where>: <reason>"`` when the error knows where (a path, a URL, a setting, an
address), so one handler (the CLI's ``error:`` line, a web page's message) shows any of
them without special cases. ``kind`` is a short stable name for the class of failure,
stored with a failed fetch (``"timeout"``, ``"status"``, ``"parse"``, ...).

Library errors (httpx, sqlite3, smtplib, feedparser) are wrapped at the module that
calls the library; nothing above an adapter sees them. Errors pickle with their
attributes (parsing runs in a process pool).
"""

from __future__ import annotations

from typing import Any, ClassVar


def _restore(cls: type[AggregatorError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class AggregatorError(Exception):
    """Root of every error the product raises on purpose.

    ``reason`` is the message on its own, whitespace collapsed to one line; ``where``
    (a path, URL, setting name or address), when given, prefixes it in ``str(error)``.
    """

    kind: ClassVar[str] = "error"

    def __init__(self, reason: str, *, where: str | None = None) -> None:
        self.reason = " ".join(reason.split())  # always one line
        super().__init__(f"{where}: {self.reason}" if where else self.reason)

    @property
    def message(self) -> str:
        """The whole one-line message, place included (the same as ``str(error)``)."""
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (parsing runs in a process pool); the default
        # pickling calls cls(*args), which keyword-only arguments such as url= break.
        return (_restore, (type(self), self.args, dict(self.__dict__)))


class ConfigError(AggregatorError):
    """A setting is missing, misspelt, of the wrong type or out of range.

    ``path`` is the configuration file (None for the embedded default or a setting not
    read from a file), ``key`` the setting's dotted name as written in the file
    (``mail.smtp_host``, ``feeds[2].url``).
    """

    kind = "config"

    def __init__(self, reason: str, *, path: str | None = None, key: str | None = None) -> None:
        super().__init__(reason, where=": ".join(part for part in (path, key) if part) or None)
        self.path = path
        self.key = key


class MissingResource(AggregatorError):
    """The package was installed without its data files (templates, static files): a broken
    build. ``path`` is where the folder was looked for last."""

    kind = "install"

    def __init__(self, reason: str, *, path: str | None = None) -> None:
        super().__init__(reason)
        self.path = path


class FetchError(AggregatorError):
    """No usable answer for ``url`` (the address asked, or the redirect hop that failed)."""

    kind = "fetch"

    def __init__(self, reason: str, *, url: str) -> None:
        super().__init__(reason, where=url)
        self.url = url


class FetchRefused(FetchError):
    """The URL's scheme, port or resolved address is not allowed (THREATS: SSRF guard)."""

    kind = "refused"


class FetchTimeout(FetchError):
    """A connect or read timeout, or the total deadline of the fetch, ran out."""

    kind = "timeout"


class FetchConnectError(FetchError):
    """The connection failed: refused, unknown host, or a TLS handshake failure."""

    kind = "connect"


class FetchTooLarge(FetchError):
    """The body, after decompression, passed the size cap."""

    kind = "too_large"


class FetchTooManyRedirects(FetchError):
    """A redirect loop, or a chain longer than the hop limit."""

    kind = "redirects"


class FetchStatusError(FetchError):
    """The server answered with an unusable HTTP ``status`` (4xx, 5xx, or an empty 200)."""

    kind = "status"

    def __init__(self, reason: str, *, url: str, status: int) -> None:
        super().__init__(reason, url=url)
        self.status = status


class SourceError(AggregatorError):
    """A feed source cannot be added: not an http(s) URL, no feed there, unreadable OPML.

    ``url`` is the source as given (None when the problem is the file holding it).
    """

    kind = "source"

    def __init__(self, reason: str, *, url: str | None = None) -> None:
        super().__init__(reason, where=url)
        self.url = url


class ParseError(AggregatorError):
    """The bytes fetched from ``url`` are not a usable feed."""

    kind = "parse"

    def __init__(self, reason: str, *, url: str) -> None:
        super().__init__(reason, where=url)
        self.url = url


class NotAFeed(ParseError):
    """``url`` answered an HTML page; ``alternate`` is the feed it links to, if any
    (``<link rel="alternate">``, HTML Living Standard 4.6.7.1)."""

    kind = "not_a_feed"

    def __init__(self, reason: str, *, url: str, alternate: str | None = None) -> None:
        super().__init__(reason, url=url)
        self.alternate = alternate


class StoreError(AggregatorError):
    """The database at ``path`` cannot be used (None when no file is concerned)."""

    kind = "store"

    def __init__(self, reason: str, *, path: str | None = None) -> None:
        super().__init__(reason, where=path)
        self.path = path


class StoreLocked(StoreError):
    """Another process held the write lock past the busy wait."""


class StoreFull(StoreError):
    """The disk, or SQLite's size limit, is full (SQLITE_FULL)."""


class StoreReadOnly(StoreError):
    """The database file, or the folder holding it, cannot be written."""


class IncompatibleDatabase(StoreError):
    """Not an SQLite file, another application's database, a newer schema, or damaged."""


class MailError(AggregatorError):
    """A message for ``address`` (None: the connection, not one recipient) was not handed
    over to the SMTP server."""

    kind = "mail"

    def __init__(self, reason: str, *, address: str | None = None) -> None:
        super().__init__(reason, where=address)
        self.address = address


class MailTemporaryError(MailError):
    """A 4xx reply or a lost connection (RFC 5321 section 4.2.1): try again later."""


class MailDeferredError(MailTemporaryError):
    """A 4xx other than 421 to RCPT or DATA, for this one recipient's message (450
    greylisting, 452 mailbox full; a 552 to RCPT read as 452, RFC 5321 section
    4.5.3.1.10): try it again later. The server answered, so it says nothing about the
    server being away."""


class MailPermanentError(MailError):
    """A 5xx reply (RFC 5321 section 4.2.1) or an address that cannot be mailed: give up."""


class TokenError(AggregatorError):
    """A signed link token is malformed, forged, for another ``purpose``, or expired.

    The reason is the same for every case, so a visitor learns nothing from it.
    """

    kind = "token"

    def __init__(self, reason: str, *, purpose: str | None = None) -> None:
        super().__init__(reason)
        self.purpose = purpose


class SubscriptionError(AggregatorError):
    """A sign-up, or a change to a subscription, cannot be carried out."""

    kind = "subscription"


class InvalidSubscription(SubscriptionError):
    """The form was filled in wrongly: ``field`` (``"email"``, ``"cadence"``) held ``value``.

    The reason is written for the visitor ("Please enter a valid email address.") and does
    not echo the value; ``str(error)`` names the value for the operator's command line.
    """

    kind = "invalid"

    def __init__(self, reason: str, *, field: str, value: str) -> None:
        shown = value if len(value) <= 80 else value[:79] + "…"
        super().__init__(reason, where=repr(shown))
        self.field = field
        self.value = value


class RateLimited(SubscriptionError):
    """Too many requests from ``client`` (its address) within the window: come back later."""

    kind = "rate_limited"

    def __init__(self, client: str, *, window: str = "the last hour") -> None:
        super().__init__(f"too many requests in {window}; try again later", where=client)
        self.client = client


class NotFound(AggregatorError):
    """A named ``what`` (``"subscriber"``, ``"digest"``) identified by ``key`` does not exist."""

    kind = "not_found"

    def __init__(self, reason: str, *, what: str, key: str) -> None:
        super().__init__(reason)
        self.what = what
        self.key = key


class UsageError(AggregatorError):
    """The arguments given do not fit together; ``argument`` is the one that needs another."""

    kind = "usage"

    def __init__(self, reason: str, *, argument: str) -> None:
        super().__init__(reason)
        self.argument = argument
