"""A lean HTTP/1.1 server on loopback for the benchmark corpus.

One asyncio loop on a thread of its own; every feed listens on its own loopback address
(same port for all), the bodies are held in memory and written whole, so the server costs
little CPU next to the contenders. Each answer waits a deterministic latency first (20 to
50 ms by default, fixed per feed), honours If-None-Match (and If-Modified-Since when no
ETag is sent) with 304, keeps connections alive unless asked not to, and counts requests,
conditional requests, statuses and bytes.

    with FeedServer(corpus).start() as server:
        server.url(feed); before = server.counters(); …; server.counters() - before
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from email.utils import formatdate, parsedate_to_datetime
from types import TracebackType

from .corpus import Corpus, CorpusFeed

MAX_HEAD_BYTES = 64 * 1024


@dataclass
class Counters:
    requests: int = 0
    conditional: int = 0  # carried If-None-Match or If-Modified-Since
    ok: int = 0
    not_modified: int = 0
    other: int = 0
    body_bytes: int = 0
    bytes: int = 0  # headers and bodies

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )

    def copy(self) -> Counters:
        return self - Counters()


def default_latency(feed: CorpusFeed) -> float:
    """20 to 50 ms, fixed per feed."""
    return (20 + (feed.index * 7919) % 31) / 1000


@dataclass(frozen=True)
class _Resource:
    feed: CorpusFeed
    body: bytes
    latency: float


class _Connection(asyncio.Protocol):
    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self.buffer = b""
        self.busy = False
        self.closing = False
        self.transport: asyncio.Transport | None = None
        self.resource: _Resource | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host = transport.get_extra_info("sockname")[0]
        self.resource = self.server.resources.get(host)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_HEAD_BYTES and b"\r\n\r\n" not in self.buffer:
            self._close()
            return
        self._next()

    def _next(self) -> None:
        if self.busy or self.closing:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        self.busy = True
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            self._close()
            return
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = (version == "HTTP/1.1" and connection != "close") or connection == (
            "keep-alive"
        )
        answer = self._answer(method, target.split("?")[0], headers)
        delay = self.resource.latency if self.resource else 0.0
        asyncio.get_running_loop().call_later(delay, self._send, answer, keep_alive)

    def _answer(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        counters = self.server.totals
        counters.requests += 1
        conditional = "if-none-match" in headers or "if-modified-since" in headers
        counters.conditional += conditional
        resource = self.resource
        if resource is None or path != resource.feed.path or method not in ("GET", "HEAD"):
            counters.other += 1
            body = b"not found\n"
            head = _head(404, "Not Found", "text/plain", len(body), ())
            return head + body
        feed = resource.feed
        validators = (("ETag", feed.etag), ("Last-Modified", feed.last_modified))
        if _not_modified(headers, feed):
            counters.not_modified += 1
            return _head(304, "Not Modified", None, None, validators)
        counters.ok += 1
        head = _head(200, "OK", feed.content_type, len(resource.body), validators)
        if method == "HEAD":
            return head
        counters.body_bytes += len(resource.body)
        return head + resource.body

    def _send(self, answer: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.server.totals.bytes += len(answer)
        self.transport.write(answer)
        self.busy = False
        if not keep_alive:
            self._close()
            return
        self._next()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _head(
    status: int,
    reason: str,
    content_type: str | None,
    length: int | None,
    extra: tuple[tuple[str, str], ...],
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Date: {formatdate(usegmt=True)}", "Server: bench"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _not_modified(headers: dict[str, str], feed: CorpusFeed) -> bool:
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return "*" in tags or feed.etag in tags
    since = headers.get("if-modified-since")
    if since:
        try:
            return parsedate_to_datetime(since) >= parsedate_to_datetime(feed.last_modified)
        except (TypeError, ValueError):
            return False
    return False


class FeedServer:
    def __init__(
        self, corpus: Corpus, latency: Callable[[CorpusFeed], float] = default_latency
    ) -> None:
        self.corpus = corpus
        self.resources = {
            feed.host: _Resource(feed, corpus.body(feed), latency(feed)) for feed in corpus.feeds
        }
        self.totals = Counters()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []

    def url(self, feed: CorpusFeed) -> str:
        return feed.url(self.port)

    def counters(self) -> Counters:
        return self.totals.copy()

    def start(self) -> FeedServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except OSError as error:
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            for server in self._servers:
                server.close()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="bench-feed-server", daemon=True)
        self._thread.start()
        ready.wait(60)
        if failure:
            raise failure[0]
        return self

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        hosts = list(self.resources)
        for _attempt in range(10):
            first = await loop.create_server(
                lambda: _Connection(self), host=hosts[0], port=0, backlog=256
            )
            port = first.sockets[0].getsockname()[1]
            servers = [first]
            try:
                for host in hosts[1:]:
                    servers.append(
                        await loop.create_server(
                            lambda: _Connection(self), host=host, port=port, backlog=256
                        )
                    )
            except OSError:
                for server in servers:
                    server.close()
                continue
            self.port = port
            self._servers = servers
            return
        raise OSError("no port free on every loopback address of the corpus")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> FeedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
