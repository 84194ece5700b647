"""A lean HTTP/1.1 server on loopback for the benchmark corpus.

One asyncio loop on a thread of its own; every feed listens on its own loopback address
(same port for all), the bodies are held in memory and written whole, so the server costs
little CPU next to the contenders. Each answer waits a deterministic latency first (20 to
50 ms by default, fixed per feed), honours If-None-Match (and If-Modified-Since when no
ETag is sent) with 304, keeps connections alive unless asked not to, and counts requests,
conditional requests, statuses and bytes. It also tracks connections (in all, open at
once overall and per host), requests per host and answers by status.

    with FeedServer(corpus).start() as server:
        server.url(feed); before = server.counters(); …; server.counters() - before

Feeds made elsewhere are served as given, each with a behaviour of its own (a slow feed
is an "ok" one with a long latency):

    with FeedServer([ServedFeed(host, "/feed.xml", body, "application/rss+xml", 2.0,
                                behaviour="error")]).start() as server: …
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from .corpus import Corpus, CorpusFeed

MAX_HEAD_BYTES = 64 * 1024

# "ok": the feed after its latency; "error": 500 after its latency; "hang": reads the
# request and never answers
Behaviour = Literal["ok", "error", "hang"]


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


def fixed_latency(seconds: float) -> Callable[[CorpusFeed], float]:
    """The same latency for every feed."""
    return lambda feed: seconds


def served_feed(
    corpus: Corpus, feed: CorpusFeed, latency: float, shared_host: str | None = None
) -> ServedFeed:
    """A corpus feed as served: on its own address, or at ``/f{index}{path}`` of
    ``shared_host``."""
    item = ServedFeed.of(corpus, feed, latency)
    if shared_host is None:
        return item
    return replace(item, host=shared_host, path=f"/f{feed.index}{feed.path}")


@dataclass
class Traffic:
    """Connections and answers since the start or the last ``FeedServer.idle()``."""

    connections: int = 0
    open_now: int = 0
    open_peak: int = 0
    per_host_peak: int = 0
    per_host: Counter[str] = field(default_factory=Counter)  # open now
    requests: Counter[str] = field(default_factory=Counter)  # per host
    answered: Counter[int] = field(default_factory=Counter)  # per status


@dataclass(frozen=True)
class ServedFeed:
    host: str  # a loopback address of its own
    path: str
    body: bytes
    content_type: str
    latency: float  # seconds before the answer
    etag: str | None = None
    last_modified: str | None = None  # HTTP date
    behaviour: Behaviour = "ok"

    @classmethod
    def of(cls, corpus: Corpus, feed: CorpusFeed, latency: float) -> ServedFeed:
        return cls(
            feed.host,
            feed.path,
            corpus.body(feed),
            feed.content_type,
            latency,
            feed.etag,
            feed.last_modified,
        )


class _Connection(asyncio.Protocol):
    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self.buffer = b""
        self.busy = False
        self.closing = False
        self.transport: asyncio.Transport | None = None
        self.host = ""
        self.paths: dict[str, ServedFeed] = {}
        self.resource: ServedFeed | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.host = transport.get_extra_info("sockname")[0]
        self.paths = self.server.resources.get(self.host, {})
        traffic = self.server.traffic
        traffic.connections += 1
        traffic.open_now += 1
        traffic.open_peak = max(traffic.open_peak, traffic.open_now)
        traffic.per_host[self.host] += 1
        traffic.per_host_peak = max(traffic.per_host_peak, traffic.per_host[self.host])

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
        path = target.split("?")[0]
        self.resource = self.paths.get(path)
        answer = self._answer(method, path, headers)
        if answer is None:
            return  # hangs: stays busy, never answers
        delay = self.resource.latency if self.resource else 0.0
        asyncio.get_running_loop().call_later(delay, self._send, *answer, keep_alive)

    def _answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes] | None:
        counters = self.server.totals
        counters.requests += 1
        self.server.traffic.requests[self.host] += 1
        conditional = "if-none-match" in headers or "if-modified-since" in headers
        counters.conditional += conditional
        feed = self.resource
        if feed is None or path != feed.path or method not in ("GET", "HEAD"):
            counters.other += 1
            body = b"not found\n"
            return 404, _head(404, "Not Found", "text/plain", len(body), ()) + body
        if feed.behaviour == "hang":
            return None
        if feed.behaviour == "error":
            counters.other += 1
            body = b"server error\n"
            head = _head(500, "Internal Server Error", "text/plain", len(body), ())
            return 500, head + body
        validators = tuple(
            (name, value)
            for name, value in (("ETag", feed.etag), ("Last-Modified", feed.last_modified))
            if value is not None
        )
        if _not_modified(headers, feed):
            counters.not_modified += 1
            return 304, _head(304, "Not Modified", None, None, validators)
        counters.ok += 1
        head = _head(200, "OK", feed.content_type, len(feed.body), validators)
        if method == "HEAD":
            return 200, head
        counters.body_bytes += len(feed.body)
        return 200, head + feed.body

    def _send(self, status: int, answer: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.server.totals.bytes += len(answer)
        self.server.traffic.answered[status] += 1
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
        self.server.traffic.open_now -= 1
        self.server.traffic.per_host[self.host] -= 1


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


def _not_modified(headers: dict[str, str], feed: ServedFeed) -> bool:
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if feed.etag is None:
            return False
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return "*" in tags or feed.etag in tags
    since = headers.get("if-modified-since")
    if since and feed.last_modified is not None:
        try:
            return parsedate_to_datetime(since) >= parsedate_to_datetime(feed.last_modified)
        except (TypeError, ValueError):
            return False
    return False


class FeedServer:
    def __init__(
        self,
        feeds: Corpus | Iterable[ServedFeed],
        latency: Callable[[CorpusFeed], float] = default_latency,
        *,
        shared_host: str | None = None,
    ) -> None:
        """A corpus's feeds, each after ``latency(feed)``; or the given feeds as they are.

        ``shared_host``: serve every feed of the corpus from that one address (paths
        ``/f{index}{path}``), as a blog platform hosts many blogs, instead of each feed
        on a loopback address of its own."""
        served = (
            [served_feed(feeds, feed, latency(feed), shared_host) for feed in feeds.feeds]
            if isinstance(feeds, Corpus)
            else list(feeds)
        )
        self.resources: dict[str, dict[str, ServedFeed]] = {}
        for feed in served:
            self.resources.setdefault(feed.host, {})[feed.path] = feed
        self.by_index = (
            {feed.index: item for feed, item in zip(feeds.feeds, served, strict=True)}
            if isinstance(feeds, Corpus)
            else {}
        )
        self.totals = Counters()
        self.traffic = Traffic()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []

    def url(self, feed: CorpusFeed | ServedFeed) -> str:
        if isinstance(feed, CorpusFeed) and feed.index in self.by_index:
            feed = self.by_index[feed.index]
        return f"http://{feed.host}:{self.port}{feed.path}"

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

    def idle(self, timeout: float = 10.0) -> None:
        """Wait until the last client's connections are gone, then start a new ``traffic``."""
        deadline = time.monotonic() + timeout
        while self.traffic.open_now > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self._loop is not None
        done = threading.Event()

        def reset() -> None:
            self.traffic = Traffic()
            done.set()

        self._loop.call_soon_threadsafe(reset)
        done.wait(5)

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


# --- HTTP/2 over TLS --------------------------------------------------------------------


def self_signed_certificate(folder: Path, hosts: Iterable[str]) -> tuple[Path, Path]:
    """A certificate (and its key) for the given loopback addresses, made with openssl;
    a client trusts it by naming the certificate file as a CA file."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    names = ",".join(f"IP:{host}" for host in dict.fromkeys(hosts))
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"),
            *("-keyout", str(key), "-out", str(cert), "-days", "2"),
            *("-subj", "/CN=aggregator benchmark", "-addext", f"subjectAltName={names}"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return cert, key


class TLSFeedServer:
    """The same feeds over TLS from hypercorn, which offers HTTP/2 (ALPN h2) beside
    HTTP/1.1, on a thread of its own; counts what ``FeedServer`` counts (connections as
    distinct client ports). Needs the ``hypercorn`` package (benchmarks only).

        with TLSFeedServer(corpus, folder, shared_host="127.0.0.1").start() as server: …
    """

    def __init__(
        self,
        corpus: Corpus,
        folder: Path,
        latency: Callable[[CorpusFeed], float] = default_latency,
        *,
        shared_host: str | None = None,
    ) -> None:
        served = [served_feed(corpus, feed, latency(feed), shared_host) for feed in corpus.feeds]
        self.by_index = {feed.index: item for feed, item in zip(corpus.feeds, served, strict=True)}
        self.resources: dict[str, dict[str, ServedFeed]] = {}
        for item in served:
            self.resources.setdefault(item.host, {})[item.path] = item
        self.folder = folder
        self.cert: Path | None = None
        self.totals = Counters()
        self.traffic = Traffic()
        self.clients: set[tuple[str, int]] = set()
        self.versions: Counter[str] = Counter()
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def url(self, feed: CorpusFeed) -> str:
        item = self.by_index[feed.index]
        return f"https://{item.host}:{self.port}{item.path}"

    def counters(self) -> Counters:
        return self.totals.copy()

    def start(self) -> TLSFeedServer:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        self.cert, key = self_signed_certificate(self.folder, self.resources)
        with contextlib.closing(socket.socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = Config()
        config.bind = [f"{host}:{self.port}" for host in self.resources]
        config.certfile, config.keyfile = str(self.cert), str(key)
        config.alpn_protocols = ["h2", "http/1.1"]
        config.accesslog = None
        config.errorlog = None
        config.keep_alive_timeout = 60
        config.backlog = 256
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            stop = self._stop

            async def main() -> None:
                loop.call_soon(ready.set)
                await serve(self._app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

            loop.run_until_complete(main())
            loop.close()

        self._thread = threading.Thread(target=run, name="bench-tls-server", daemon=True)
        self._thread.start()
        ready.wait(60)
        time.sleep(0.5)  # hypercorn binds after the loop starts; give it the moment
        return self

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        host = scope["server"][0]
        client = scope.get("client") or ("", 0)
        if (client[0], client[1]) not in self.clients:
            self.clients.add((client[0], client[1]))
            self.traffic.connections += 1
        self.versions[scope.get("http_version", "?")] += 1
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        counters = self.totals
        counters.requests += 1
        self.traffic.requests[host] += 1
        counters.conditional += "if-none-match" in headers or "if-modified-since" in headers
        feed = self.resources.get(host, {}).get(scope["path"])
        extra: list[tuple[bytes, bytes]] = []
        if feed is None:
            counters.other += 1
            status, body = 404, b"not found\n"
        else:
            await asyncio.sleep(feed.latency)
            extra = [
                (name, value.encode("latin-1"))
                for name, value in ((b"etag", feed.etag), (b"last-modified", feed.last_modified))
                if value is not None
            ]
            if _not_modified(headers, feed):
                counters.not_modified += 1
                status, body = 304, b""
            else:
                counters.ok += 1
                counters.body_bytes += len(feed.body)
                status, body = 200, feed.body
                extra.append((b"content-type", feed.content_type.encode("latin-1")))
        self.traffic.answered[status] += 1
        counters.bytes += len(body) + 100
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": body})

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> TLSFeedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
