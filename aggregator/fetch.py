"""Fetch feeds over HTTP(S): conditional GET, bounded in time, size, redirects and concurrency.

The only module that talks to httpx. ``FeedFetcher.fetch`` never raises for network or
HTTP trouble: every outcome comes back as a ``FetchResult`` whose ``error`` is one of the
``aggregator.errors.FetchError`` classes.

Server-side request forgery is stopped where the socket is opened: a network backend
(``AddressGuard``) resolves the host, refuses the connection if any address is not
public, and connects to the address it checked, so a name cannot resolve differently
between check and use. It sits under an httpx transport of our own
(``GuardedTransport``) built on httpx's and httpcore's public interfaces only; a
``FeedFetcher`` takes any other transport in its place (``httpx.MockTransport`` in tests).

Politeness: each host gets a ``HostGate`` that starts at six requests at once, grows
while the host answers quickly and shrinks when it slows, fails or asks us to wait;
TLS servers that offer HTTP/2 carry a host's requests on one connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import ssl
import sys
import time
import typing
import zlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

# httpx's package imports its command-line client, which loads rich and pygments (15 to
# 30 ms of every start) wherever rich is installed; the product never runs it. None in
# sys.modules makes that import fail the way httpx expects when its "cli" extra is absent
# (Python language reference 5.3.1, "The module cache").
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpcore  # noqa: E402
import httpx  # noqa: E402

from .errors import (  # noqa: E402
    FetchConnectError,
    FetchError,
    FetchRefused,
    FetchStatusError,
    FetchTimeout,
    FetchTooLarge,
    FetchTooManyRedirects,
)
from .fetch_settings import FetchSettings as FetchSettings  # noqa: E402
from .models import FetchResult  # noqa: E402
from .polling import parse_retry_after  # noqa: E402

# Accept header of every request: feed types first (RFC 9110 section 12.5.1).
ACCEPT = (
    "application/atom+xml, application/rss+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
)
# Content codings we decode (bounded, see _Decoder); brotli is not offered.
ACCEPT_ENCODING = "gzip, deflate"
# Statuses followed as redirects (RFC 9110 section 15.4), by hand, hop by hop.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Redirects that move the stored feed URL when every hop is one (RFC 9110 15.4.2, 15.4.9).
PERMANENT_REDIRECTS = frozenset({301, 308})
# Statuses whose Retry-After is honoured (RFC 9110 section 10.2.3).
RETRY_AFTER_STATUSES = frozenset({429, 503})
_CHUNK = 64 * 1024  # largest piece a decoder may hand back at once

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- address policy -------------------------------------------------------------------

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def is_public_address(address: IPAddress) -> bool:
    """True when a feed may be fetched from ``address``: a global unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return is_public_address(embedded)
        if any(address in net for net in _NAT64):
            return False
    elif address in _CGNAT:
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


class AddressRefused(httpx.ConnectError):
    """The host resolves to an address the policy refuses (see ``is_public_address``), or
    the request asked for a Unix socket. Raised by ``GuardedTransport``; ``FeedFetcher``
    turns it into ``aggregator.errors.FetchRefused``."""


class AddressGuard(httpcore.AsyncNetworkBackend):
    """httpcore network backend that resolves host names itself, refuses the connection
    when any address is not public (unless private addresses are allowed), and connects
    to an address it checked, so a name cannot resolve differently between the check and
    the connection (DNS rebinding). Raises ``AddressRefused``; httpcore's ConnectError or
    ConnectTimeout when the name does not resolve or no address answers."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, *, allow_private: bool) -> None:
        self._inner = inner
        self._allow_private = allow_private

    async def _resolve(self, host: str, port: int, seconds: float | None) -> list[str]:
        try:  # an address already: no resolver round trip (a worker thread each)
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = await self._lookup(host, port, seconds)
        if not self._allow_private:
            for text in addresses:
                if not is_public_address(ipaddress.ip_address(text.split("%", 1)[0])):
                    raise AddressRefused(
                        f"host {host!r} resolves to non-public address {text}"
                        " (private addresses are not allowed; [fetch]"
                        " allow_private_addresses = true allows feeds on your own network)"
                    )
        return addresses

    @staticmethod
    async def _lookup(host: str, port: int, seconds: float | None) -> list[str]:
        """The addresses ``host`` resolves to, each once, in the resolver's order."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"unknown host {host!r}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise httpcore.ConnectError(f"unknown host {host!r}")
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A stream to the first address of ``host`` that accepts, after every address
        passed the policy. ``timeout`` (seconds) bounds resolving and each attempt."""
        addresses = await self._resolve(host, port, timeout)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Always refused: feeds are fetched over TCP only."""
        raise AddressRefused("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        """The inner backend's sleep (httpcore's interface)."""
        await self._inner.sleep(seconds)


# httpcore's errors as httpx's, most specific first (httpx's transports do the same).
_MAPPED_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    """Re-raise httpcore's errors as the matching httpx error (cause kept)."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except Exception as exc:
        for source, target in _MAPPED_ERRORS:
            if isinstance(exc, source):
                raise target(str(exc), request=request) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    """An httpcore response body as httpx reads it, its errors mapped."""

    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _httpx_errors(self._request):
                await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx transport over httpcore's connection pools whose sockets are opened by
    ``AddressGuard``: the server-side request forgery guard (THREATS H4) sits where the
    connection is made, through httpx's and httpcore's public interfaces only.

    ``http2`` lets a TLS server that offers HTTP/2 (ALPN ``h2``) carry many requests on
    one connection. The TLS context is made once, on the first https request (loading
    the CA bundle takes 60 to 110 ms), in a worker thread, unless ``ssl_context`` is
    given; ``ca_file`` (PEM) adds authorities to trust beside the default bundle.
    ``max_connections`` bounds the pool of each scheme; ``keepalive_expiry`` is in
    seconds. Raises httpx's transport errors, ``AddressRefused`` among them.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        http2: bool = False,
        max_connections: int = 32,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | None = None,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._guard = AddressGuard(backend or httpcore.AnyIOBackend(), allow_private=allow_private)
        self._http2 = http2
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._ca_file = ca_file
        self._plain = self._pool(None)
        self._tls: httpcore.AsyncConnectionPool | None = None
        self._tls_lock = asyncio.Lock()

    def _pool(self, context: ssl.SSLContext | None) -> httpcore.AsyncConnectionPool:
        return httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=self._max_connections,
            max_keepalive_connections=self._max_connections,
            keepalive_expiry=self._keepalive_expiry,
            http1=True,
            http2=self._http2 and context is not None,
            network_backend=self._guard,
        )

    async def _tls_pool(self) -> httpcore.AsyncConnectionPool:
        if self._tls is None:
            async with self._tls_lock:
                if self._tls is None:
                    context = self._ssl_context or await asyncio.to_thread(
                        tls_context, self._ca_file
                    )
                    self._tls = self._pool(context)
        return self._tls

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection of its scheme; the answer's body
        streams. Raises httpx's transport errors (``AddressRefused`` among them)."""
        url = request.url
        pool = self._plain
        if url.scheme == "https":
            try:
                pool = await self._tls_pool()
            except (OSError, ValueError) as error:  # ca_file gone or damaged since start
                raise httpx.ConnectError(
                    f"no TLS context: [fetch] ca_file {self._ca_file}: {error}", request=request
                ) from None
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            answer = await pool.handle_async_request(core)
        assert isinstance(answer.stream, AsyncIterable)
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_ResponseStream(answer.stream, request),
            extensions=answer.extensions,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._plain.aclose()
        if self._tls is not None:
            await self._tls.aclose()


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies certificates and host names against the CA
    bundle httpx uses (certifi), plus the authorities in ``ca_file`` (PEM) when given.
    Raises OSError or ssl.SSLError when ``ca_file`` cannot be read."""
    context = httpx.create_ssl_context(trust_env=False)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


# --- per-host politeness ---------------------------------------------------------------

PER_HOST_START = 6  # requests at once to a host not yet heard from: what browsers open
MAX_HOST_HOLD = 3600.0  # seconds: longest a Retry-After keeps a host at one request
DEFAULT_HOST_HOLD = 60.0  # seconds, when a Retry-After cannot be read
HOST_DOWN_AFTER = 3  # requests in a row without any answer before a host counts as down
HOST_DOWN_SECONDS = 300.0  # how long a host that is down is not asked (then tried again)
# Answers that halve a host's slots: too many requests, or the server failing.
OVERLOAD_STATUSES = frozenset({429, 500, 502, 503, 504})


class HostDown(Exception):
    """The host gave no answer to ``unanswered`` requests in a row; it is not asked
    again for ``seconds``."""

    def __init__(self, unanswered: int, seconds: float) -> None:
        super().__init__(unanswered, seconds)
        self.unanswered = unanswered
        self.seconds = seconds

    def __str__(self) -> str:
        return (
            f"the host gave no answer to {self.unanswered} requests in a row; "
            f"not asked again for {math.ceil(self.seconds)} s"
        )


class HostGate:
    """How many requests one host gets at once, adapting to how it answers.

    A host starts at ``start`` slots (``PER_HOST_START``, browsers' per-host limit). An
    answer whose time to first byte is within twice the host's quickest (plus 10 ms),
    while other requests wait for a slot, adds one slot, up to ``ceiling``; an answer
    slower than four times its quickest (plus 250 ms) takes one away. A sign of
    overload (429, 5xx, a timeout, a refused or failed connection) halves the slots,
    and a 429 or 503 that carries Retry-After (RFC 9110 section 10.2.3) drops them to
    one and keeps them there for the delay it asks (at most ``MAX_HOST_HOLD``); never
    fewer than one. Slots are handed to waiters in arrival order. Once the
    host answers over HTTP/2, where requests are streams of one connection instead of
    connections of their own, the ceiling becomes ``multiplexed_ceiling`` (when higher).

    A host that gives no answer at all to ``HOST_DOWN_AFTER`` requests in a row (the
    connection fails or times out before any header arrives), while nothing else it
    was asked was answered either, is down for ``HOST_DOWN_SECONDS``: ``acquire``
    raises ``HostDown`` at once, for the requests waiting too, instead of letting each
    of a platform's many feeds wait out its own timeout one after the other. A host that
    answers some requests (a few slow pages, a slow server taking one at a time) is
    never down; any answer clears the count and ends a pause.
    """

    def __init__(self, start: int, ceiling: int, *, multiplexed_ceiling: int = 0) -> None:
        self.ceiling = max(1, ceiling)
        self.multiplexed_ceiling = multiplexed_ceiling
        self.limit = float(min(max(1, start), self.ceiling))
        self.in_flight = 0
        self.quickest = math.inf
        self.hold_until = 0.0  # event-loop time before which the slots do not grow
        self.unanswered = 0  # requests in a row that got no answer at all
        self.last_answer = -math.inf  # event-loop time of the host's last answer
        self.down_until = 0.0  # event-loop time before which the host is not asked
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Wait for a slot (cancellable; a slot handed over meanwhile is given back).
        Raises HostDown while the host is down (see the class docstring)."""
        self._check_up()
        if self.in_flight < int(self.limit) and not self._waiters:
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_flight -= 1
                self._hand_over()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _check_up(self) -> None:
        if not self.down_until:
            return
        left = self.down_until - asyncio.get_running_loop().time()
        if left > 0:
            raise HostDown(self.unanswered, left)
        self.down_until, self.unanswered = 0.0, 0  # the pause is over: ask again

    def release(
        self,
        seconds: float | None,
        *,
        overloaded: bool = False,
        slow_down: bool = False,
        multiplexed: bool = False,
        hold: float = 0.0,
        waited: float = 0.0,
    ) -> None:
        """Give the slot back. ``seconds``: time to the answer's headers (None when
        there was no answer); ``overloaded``: the answer or failure says the host is
        struggling; ``slow_down``: it asked us to wait (Retry-After) for ``hold``
        seconds; ``multiplexed``: the answer came over HTTP/2; ``waited``: how long
        the request was out, for one without an answer."""
        self.in_flight -= 1
        now = asyncio.get_running_loop().time()
        if seconds is not None:
            self.unanswered, self.down_until, self.last_answer = 0, 0.0, now
        elif overloaded and now - self.last_answer >= waited:
            # Nothing was answered while this request was out: the host says nothing.
            self.unanswered += 1
            if self.unanswered >= HOST_DOWN_AFTER and now >= self.down_until:
                self.down_until = now + HOST_DOWN_SECONDS
                down = HostDown(self.unanswered, HOST_DOWN_SECONDS)
                while self._waiters:
                    waiter = self._waiters.popleft()
                    if not waiter.done():
                        waiter.set_exception(down)
        if multiplexed:
            self.ceiling = max(self.ceiling, self.multiplexed_ceiling)
        if slow_down:
            self.limit = 1.0
            self.hold_until = max(self.hold_until, now + min(max(hold, 0.0), MAX_HOST_HOLD))
        elif overloaded:
            self.limit = max(1.0, self.limit / 2)
        elif seconds is not None:
            self.quickest = min(self.quickest, seconds)
            if seconds <= 2 * self.quickest + 0.01:
                if self._waiters and now >= self.hold_until:
                    self.limit = min(float(self.ceiling), self.limit + 1)
            elif seconds > 4 * self.quickest + 0.25:
                self.limit = max(1.0, self.limit - 1)
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self.in_flight < int(self.limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


# --- bounded decompression ----------------------------------------------------------


class _Decoder:
    """Content-Encoding decoder that never returns more than ``_CHUNK`` bytes per step,
    so a compression bomb is stopped by the size cap before it fills memory."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._gzip = encoding in ("gzip", "x-gzip")
        self._received = False
        self._pending = b""
        # zlib's decompress object has no public type. For deflate it is made once the
        # first two bytes show whether the stream is zlib-wrapped (correct) or raw
        # (a common server mistake).
        self._obj: typing.Any = zlib.decompressobj(16 + zlib.MAX_WBITS) if self._gzip else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decompress ``data`` piece by piece (raises zlib.error on corrupt input)."""
        self._received = self._received or bool(data)
        self._pending += data
        if self._obj is None:
            if len(self._pending) < 2:
                return
            wbits = zlib.MAX_WBITS if _zlib_header(self._pending) else -zlib.MAX_WBITS
            self._obj = zlib.decompressobj(wbits)
        while self._pending:
            if self._obj.eof:
                if not self._gzip or not self._pending.strip(b"\0"):
                    self._pending = b""  # trailing bytes after the stream: ignored
                    return
                self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member
            out = self._obj.decompress(self._pending, _CHUNK)
            self._pending = self._obj.unconsumed_tail or (
                self._obj.unused_data if self._obj.eof else b""
            )
            if out:
                yield out
        while not self._obj.eof:  # output zlib holds back beyond _CHUNK
            out = self._obj.decompress(b"", _CHUNK)
            if not out:
                break
            yield out

    @property
    def started(self) -> bool:
        return self._received

    @property
    def complete(self) -> bool:
        return self._obj is not None and bool(self._obj.eof)


def _zlib_header(data: bytes) -> bool:
    cmf, flg = data[0], data[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0


def _decoder_for(content_encoding: str) -> _Decoder | None:
    """None for identity; raises ValueError for an encoding we do not speak."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Decoder(codings[0])
    raise ValueError(f"unsupported content-encoding {content_encoding!r}")


# --- the fetcher --------------------------------------------------------------------


@dataclass(slots=True)
class _Hop:
    """What one request/response exchange produced."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes | None = None
    location: str | None = None
    bytes_read: int = 0


@dataclass(slots=True)
class _Timing:
    """How one exchange went, for the host's gate."""

    seconds: float | None = None  # to the answer's headers
    overloaded: bool = False
    slow_down: bool = False
    multiplexed: bool = False  # answered over HTTP/2
    hold: float = 0.0  # seconds the host asked us to wait (Retry-After)


@dataclass(slots=True)
class _Progress:
    """Mutable state of one fetch, so errors can report how far it got."""

    final_url: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    bytes_read: int = 0


class FeedFetcher:
    """One per process: owns the HTTP client, the concurrency slots and the limits.

    ``transport`` replaces the network (as httpx's ``AsyncClient(transport=)``): by
    default a ``GuardedTransport`` built from the settings, which refuses private
    addresses unless allowed; a given transport (``httpx.MockTransport`` in tests) is
    used as it is, the address policy then being its own affair. It is closed with the
    fetcher.
    """

    def __init__(
        self, settings: FetchSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._global = asyncio.Semaphore(settings.max_connections)
        self._hosts: dict[str, HostGate] = {}

    async def __aenter__(self) -> FeedFetcher:
        s = self.settings
        transport = self._transport or GuardedTransport(
            allow_private=s.allow_private_addresses,
            http2=s.http2,
            max_connections=s.max_connections,
            ca_file=s.ca_file,
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(
                connect=s.connect_timeout,
                read=s.read_timeout,
                write=s.read_timeout,
                pool=s.total_timeout,
            ),
            follow_redirects=False,
            trust_env=False,
            headers={
                "User-Agent": s.user_agent,
                "Accept": ACCEPT,
                "Accept-Encoding": ACCEPT_ENCODING,
            },
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def fetch(
        self, url: str, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        """Conditional GET of ``url``; every failure is returned in ``error``."""
        started = time.perf_counter()
        url = url.strip()
        progress = _Progress(final_url=url)
        try:
            result = await self._fetch(url, etag, last_modified, progress)
        except FetchError as error:
            result = FetchResult(
                url=url,
                final_url=progress.final_url,
                status=progress.status,
                headers=progress.headers,
                bytes_read=progress.bytes_read,
                retry_after=(
                    progress.headers.get("retry-after")
                    if progress.status in RETRY_AFTER_STATUSES
                    else None
                ),
                error=error,
            )
        elapsed = time.perf_counter() - started
        return _with_elapsed(result, elapsed)

    async def _fetch(
        self, url: str, etag: str | None, last_modified: str | None, progress: _Progress
    ) -> FetchResult:
        scheme = _scheme_of(url)
        if scheme == "file":
            if not self.settings.allow_file_urls:
                raise FetchRefused("file URLs are not allowed", url=url)
            return await self._fetch_file(url, last_modified, progress)
        _check_http_url(url, url)
        return await self._fetch_http(url, etag, last_modified, progress)

    # --- http ---

    async def _fetch_http(
        self, url: str, etag: str | None, last_modified: str | None, progress: _Progress
    ) -> FetchResult:
        s = self.settings
        conditional: dict[str, str] = {}
        if etag:
            conditional["If-None-Match"] = etag
        if last_modified:
            conditional["If-Modified-Since"] = last_modified
        current = url
        seen = {url}
        secure = _scheme_of(url) == "https"
        downgraded = False
        permanent = True
        redirects = 0
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            progress.final_url, progress.status, progress.headers = current, None, {}
            host = _host_key(current, url)
            # Per-host slot first, so waiters for one busy host never hold global slots.
            gate = self._host_gate(host)
            try:
                await gate.acquire()
            except HostDown as down:
                raise FetchConnectError(str(down), url=current) from None
            timing = _Timing()
            sent = loop.time()
            try:
                async with self._global:
                    if deadline is None:
                        deadline = loop.time() + s.total_timeout
                    try:
                        async with asyncio.timeout_at(deadline):
                            hop = await self._exchange(current, conditional, progress, timing)
                    except TimeoutError:
                        timing.overloaded = True
                        raise FetchTimeout(
                            f"no complete answer within the {s.total_timeout:g} s deadline",
                            url=current,
                        ) from None
            finally:
                gate.release(
                    timing.seconds,
                    overloaded=timing.overloaded,
                    slow_down=timing.slow_down,
                    multiplexed=timing.multiplexed,
                    hold=timing.hold,
                    waited=loop.time() - sent,
                )
            if hop.location is None:
                break
            redirects += 1
            permanent = permanent and hop.status in PERMANENT_REDIRECTS
            try:
                target = urljoin(current, hop.location.strip())
            except ValueError:
                raise FetchRefused(f"invalid redirect to {hop.location!r}", url=url) from None
            if redirects > s.max_redirects:
                raise FetchTooManyRedirects(
                    f"more than {s.max_redirects} redirects (last to {target})", url=url
                )
            if target in seen:
                raise FetchTooManyRedirects(f"redirect loop back to {target}", url=url)
            _check_http_url(target, url, what="redirect to ")
            seen.add(target)
            current = target
            downgraded = downgraded or (secure and _scheme_of(current) == "http")

        not_modified = hop.status == 304
        if not_modified:
            # Keep the validators we sent unless the server replaced them.
            etag = hop.headers.get("etag", etag)
            last_modified = hop.headers.get("last-modified", last_modified)
        else:
            etag = hop.headers.get("etag")
            last_modified = hop.headers.get("last-modified")
        return FetchResult(
            url=url,
            final_url=current,
            status=hop.status,
            content=hop.body,
            headers=hop.headers,
            not_modified=not_modified,
            etag=etag,
            last_modified=last_modified,
            permanent_url=current if redirects and permanent else None,
            downgraded=downgraded,
            bytes_read=hop.bytes_read,
        )

    def _host_gate(self, host: str) -> HostGate:
        gate = self._hosts.get(host)
        if gate is None:
            s = self.settings
            gate = self._hosts[host] = HostGate(
                PER_HOST_START, s.max_per_host, multiplexed_ceiling=s.max_connections
            )
        return gate

    async def _exchange(
        self, url: str, headers: dict[str, str], progress: _Progress, timing: _Timing
    ) -> _Hop:
        """One request; reads the body only for a 2xx answer. Raises FetchError."""
        assert self._client is not None, "use FeedFetcher as an async context manager"
        started = time.perf_counter()
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                timing.seconds = time.perf_counter() - started
                timing.multiplexed = response.http_version == "HTTP/2"
                hop = _Hop(
                    url=url,
                    status=response.status_code,
                    headers={k.lower(): v for k, v in response.headers.items()},
                )
                progress.status = hop.status
                progress.headers = hop.headers
                timing.overloaded = hop.status in OVERLOAD_STATUSES
                timing.slow_down = (
                    hop.status in RETRY_AFTER_STATUSES and "retry-after" in hop.headers
                )
                if timing.slow_down:
                    timing.hold = retry_after_hold(hop.headers)
                self._check_status(hop)
                if hop.status in REDIRECT_STATUSES:
                    return hop
                if hop.status == 304:
                    return hop
                hop.body = await self._read_body(response, hop, progress)
                return hop
        except FetchError:
            raise
        except AddressRefused as exc:
            raise FetchRefused(str(exc), url=url) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise FetchRefused(f"invalid URL: {exc}", url=url) from None
        except httpx.TimeoutException as exc:
            timing.overloaded = True
            phase = type(exc).__name__.removesuffix("Timeout").lower() or "request"
            raise FetchTimeout(f"{phase} timed out", url=url) from None
        except httpx.ConnectError as exc:
            timing.overloaded = True
            raise FetchConnectError(_connect_message(exc), url=url) from None
        except httpx.DecodingError as exc:
            raise FetchError(f"cannot decode body: {exc}", url=url) from None
        except httpx.HTTPError as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}", url=url) from None

    def _check_status(self, hop: _Hop) -> None:
        status = hop.status
        if status in REDIRECT_STATUSES:
            hop.location = hop.headers.get("location")
            if not hop.location:
                raise FetchStatusError(
                    f"HTTP {status} redirect without Location", url=hop.url, status=status
                )
            return
        if status == 304 or 200 <= status < 300:
            return
        if status == 410:
            raise FetchStatusError("gone (HTTP 410)", url=hop.url, status=status)
        detail = ""
        if status in RETRY_AFTER_STATUSES and "retry-after" in hop.headers:
            detail = f", Retry-After {hop.headers['retry-after'][:64]!r}"
        raise FetchStatusError(f"HTTP {status}{detail}", url=hop.url, status=status)

    async def _read_body(self, response: httpx.Response, hop: _Hop, progress: _Progress) -> bytes:
        cap = self.settings.max_body_bytes
        declared = hop.headers.get("content-length", "").strip()
        # Compressed data is smaller than what it expands to, so this holds for any encoding.
        if declared.isdigit() and int(declared) > cap:
            raise FetchTooLarge(
                f"Content-Length {declared} is over the {cap}-byte limit", url=hop.url
            )
        try:
            decoder = _decoder_for(hop.headers.get("content-encoding", ""))
        except ValueError as exc:
            raise FetchError(str(exc), url=hop.url) from None
        raw = response.aiter_raw
        if response.is_stream_consumed:
            # A transport that hands bodies over whole (httpx.MockTransport): httpx has
            # read and decoded it already.
            decoder, raw = None, partial(_whole, response.content)
        body = bytearray()
        async for piece in _decoded(raw(), decoder, hop.url):
            body += piece
            hop.bytes_read = progress.bytes_read = len(body)
            if len(body) > cap:
                raise FetchTooLarge(
                    f"body over the {cap}-byte limit (after decompression)", url=hop.url
                )
        if decoder is not None and decoder.started and not decoder.complete:
            raise FetchError(f"truncated {decoder.encoding} body", url=hop.url)
        if not body:
            raise FetchStatusError("empty body", url=hop.url, status=hop.status)
        return bytes(body)

    # --- file ---

    async def _fetch_file(
        self, url: str, last_modified: str | None, progress: _Progress
    ) -> FetchResult:
        parts = urlsplit(url.strip())
        if parts.netloc not in ("", "localhost"):
            raise FetchRefused(f"file URL on another host {parts.netloc!r}", url=url)
        path = Path(url2pathname(unquote(parts.path)))
        if not path.is_absolute():
            raise FetchRefused("file URL without an absolute path", url=url)
        cap = self.settings.max_body_bytes
        try:
            async with asyncio.timeout(self.settings.total_timeout):
                mtime, content = await asyncio.to_thread(_read_file, path, cap, last_modified)
        except TimeoutError:
            raise FetchTimeout("reading the file timed out", url=url) from None
        except FileNotFoundError:
            progress.status = 404
            raise FetchStatusError("file not found", url=url, status=404) from None
        except OSError as exc:
            raise FetchError(f"cannot read file: {exc.strerror or exc}", url=url) from None
        if content is None:
            return FetchResult(
                url=url, final_url=url, status=304, not_modified=True, last_modified=mtime
            )
        progress.bytes_read = len(content)
        if len(content) > cap:
            raise FetchTooLarge(f"file over the {cap}-byte limit", url=url)
        if not content:
            raise FetchStatusError("empty file", url=url, status=200)
        return FetchResult(
            url=url,
            final_url=url,
            status=200,
            content=content,
            headers={"last-modified": mtime},
            last_modified=mtime,
            bytes_read=len(content),
        )


def _read_file(path: Path, cap: int, last_modified: str | None) -> tuple[str, bytes | None]:
    """(Last-Modified of the file, its content or None when unchanged); reads cap+1 at most."""
    with path.open("rb") as handle:
        stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(microsecond=0)
        mtime = format_datetime(stamp, usegmt=True)
        if last_modified and _not_after(stamp, last_modified):
            return mtime, None
        return mtime, handle.read(cap + 1)


def _not_after(stamp: datetime, http_date: str) -> bool:
    try:
        since = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return stamp <= since


async def _decoded(
    raw: AsyncIterator[bytes], decoder: _Decoder | None, url: str
) -> AsyncIterator[bytes]:
    async for chunk in raw:
        if decoder is None:
            yield chunk
            continue
        try:
            for piece in decoder.feed(chunk):
                yield piece
        except zlib.error as exc:
            raise FetchError(f"corrupt {decoder.encoding} body: {exc}", url=url) from None


async def _whole(content: bytes) -> AsyncIterator[bytes]:
    yield content


def _scheme_of(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def _check_http_url(target: str, url: str, *, what: str = "") -> None:
    """Raise FetchRefused unless ``target`` is an http(s) URL with a host and valid port."""
    try:
        parts = urlsplit(target)
        scheme, host, _ = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError as exc:
        raise FetchRefused(f"{what}invalid URL {target!r}: {exc}", url=url) from None
    if scheme not in ("http", "https"):
        raise FetchRefused(
            f"{what}{target!r}: scheme {scheme or '(none)'!r} is not allowed", url=url
        )
    if not host:
        raise FetchRefused(f"{what}{target!r}: no host", url=url)


def _host_key(url: str, fallback: str) -> str:
    """``host:port`` of ``url`` (the default port of its scheme when none is given), as
    browsers group connections: two servers on one machine are two hosts."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return fallback
    return f"{host}:{port}" if host else fallback


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and members of exception groups."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _connect_message(exc: httpx.ConnectError) -> str:
    text = str(exc) or type(exc).__name__
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or "verification failed"
            return f"TLS certificate not trusted: {reason}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, httpcore.ConnectError) and "unknown host" in str(cause):
            return str(cause)
    return f"cannot connect: {text}"


def retry_after_hold(headers: dict[str, str]) -> float:
    """How long (seconds) an answer's Retry-After keeps its host at one request (see
    HostGate): read by ``polling.parse_retry_after``, the same reading as for the feed's
    next poll, capped at ``MAX_HOST_HOLD``. A date is read against the answer's own
    Date header, so no clock of ours is consulted. ``headers``: lower-case names.
    Missing or unreadable (a date without a Date header too): ``DEFAULT_HOST_HOLD``."""
    try:
        now: datetime | None = parsedate_to_datetime(headers.get("date", ""))
    except (TypeError, ValueError, IndexError, OverflowError):
        now = None  # seconds need no "now"; a date without one is unreadable
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    delay = parse_retry_after(
        headers.get("retry-after"), now=now, cap=timedelta(seconds=MAX_HOST_HOLD)
    )
    return DEFAULT_HOST_HOLD if delay is None else delay.total_seconds()


def _with_elapsed(result: FetchResult, elapsed: float) -> FetchResult:
    return replace(result, elapsed_seconds=round(elapsed, 6))
