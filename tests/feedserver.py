"""A scriptable HTTP(S) server on 127.0.0.1 for tests and benchmarks.

    server = FeedServer().start()
    server.add("/a.xml", body=b"<rss/>", etag='"v1"')      # answers 304 to a matching If-None-Match
    server.add_redirect("/old", "/a.xml", status=301)
    server.add_sequence("/flaky", [Response(status=503), Response(body=b"<rss/>")])
    server.add_drip("/drip", chunk=b"<", interval=2.0)     # one chunk every interval, forever
    server.add_hang("/hang")                               # reads the request, never answers
    server.add_endless("/endless")                         # chunked body that never ends
    server.add_raw("/bomb", raw_body=bomb, headers={"content-encoding": "gzip"})
    server.url("/a.xml"); server.requests; server.max_concurrent("/a")
    server.stop()

One thread per connection (HTTP/1.1 keep-alive). ``stop()`` wakes every handler that
waits (drip, hang, delay) and shuts its socket, so teardown never waits on a client.
Unknown paths answer 404.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FeedServer", "RequestRecord", "Response"]


@dataclass(frozen=True)
class Response:
    """One scripted answer. ``headers`` override everything, including Content-Length
    (so a test can make it lie)."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = "application/rss+xml; charset=utf-8"
    etag: str | None = None
    last_modified: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    # Streaming behaviours (body is ignored): "drip", "hang", "endless".
    mode: str = "plain"
    chunk: bytes = b"x"
    interval: float = 0.0


@dataclass(frozen=True)
class RequestRecord:
    path: str  # path and query as sent
    headers: Mapping[str, str]  # lower-case names
    started: float  # time.monotonic()
    ended: float | None  # None while still being answered


class _Route:
    def __init__(self, responses: list[Response]) -> None:
        self._responses = responses
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> Response:
        """The next scripted answer; the last one repeats."""
        with self._lock:
            response = self._responses[min(self._next, len(self._responses) - 1)]
            self._next += 1
            return response


def _not_modified(request_headers: Mapping[str, str], response: Response) -> bool:
    if_none_match = request_headers.get("if-none-match")
    if if_none_match is not None:
        if response.etag is None:
            return False
        tags = [tag.strip() for tag in if_none_match.split(",")]
        return "*" in tags or response.etag in tags
    since = request_headers.get("if-modified-since")
    if since is None or response.last_modified is None:
        return False
    try:
        return parsedate_to_datetime(response.last_modified) <= parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is dropped after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        feed = self.server.feed
        headers = {k.lower(): v for k, v in self.headers.items()}
        record_index = feed._record_start(self.path, headers)
        try:
            self._answer(feed, headers)
        except OSError:
            self.close_connection = True  # the client went away or the server stopped
        finally:
            feed._record_end(record_index)

    do_HEAD = do_GET

    def _answer(self, feed: FeedServer, headers: Mapping[str, str]) -> None:
        route = feed._route(self.path)
        if route is None:
            self._send(Response(status=404, body=b"not found", content_type="text/plain"))
            return
        response = route.take()
        if response.delay and feed._stopping.wait(response.delay):
            self.close_connection = True
            return
        if response.mode == "hang":
            feed._stopping.wait()
            self.close_connection = True
            return
        if response.status == 200 and _not_modified(headers, response):
            self._send(
                Response(
                    status=304,
                    content_type=None,
                    etag=response.etag,
                    last_modified=response.last_modified,
                )
            )
            return
        if response.mode == "drip":
            self._start(response, {"connection": "close"})
            self.close_connection = True
            while not feed._stopping.wait(response.interval):
                self.wfile.write(response.chunk)
                self.wfile.flush()
            return
        if response.mode == "endless":
            self._start(response, {"transfer-encoding": "chunked"})
            self.close_connection = True
            frame = b"%x\r\n%s\r\n" % (len(response.chunk), response.chunk)
            while not feed._stopping.is_set():
                self.wfile.write(frame)
            return
        self._send(response)

    def _start(self, response: Response, extra: Mapping[str, str]) -> None:
        self.send_response(response.status)
        merged: dict[str, str] = {}
        if response.content_type:
            merged["content-type"] = response.content_type
        if response.etag:
            merged["etag"] = response.etag
        if response.last_modified:
            merged["last-modified"] = response.last_modified
        merged.update(extra)
        merged.update({k.lower(): v for k, v in response.headers.items()})
        for name, value in merged.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, response: Response) -> None:
        body = b"" if response.status in (204, 304) else response.body
        extra = {} if response.status in (204, 304) else {"content-length": str(len(body))}
        self._start(response, extra)
        if self.command != "HEAD" and body:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256

    def __init__(self, feed: FeedServer, host: str, tls: ssl.SSLContext | None) -> None:
        self.feed = feed
        self.tls = tls
        super().__init__((host, 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        self.feed._track(sock)
        try:
            if self.tls is not None:
                sock.settimeout(10)
                self.feed._untrack(sock)
                sock = self.tls.wrap_socket(sock, server_side=True)  # detaches `request`
                self.feed._track(sock)
            super().finish_request(sock, client_address)
        except OSError:
            pass  # TLS handshake refused by the client, connection reset …
        finally:
            self.feed._untrack(sock)
            if sock is not request:
                sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a test's client dropping a connection is not news


class FeedServer:
    """See the module docstring. Thread-safe: routes may be added while serving."""

    def __init__(self, host: str = "127.0.0.1", *, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.tls = tls
        self._routes: dict[str, _Route] = {}
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    def start(self) -> FeedServer:
        self._server = _Server(self, self.host, self.tls)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                open_sockets = list(self._sockets)
            for sock in open_sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # --- scripting ---

    def add(
        self,
        path: str,
        body: bytes = b"",
        *,
        content_type: str | None = "application/rss+xml; charset=utf-8",
        etag: str | None = None,
        last_modified: str | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> str:
        """Serve one fixed answer at ``path``; returns its URL."""
        response = Response(
            body=body,
            status=status,
            content_type=content_type,
            etag=etag,
            last_modified=last_modified,
            headers=dict(headers or {}),
            delay=delay,
        )
        return self.add_sequence(path, [response])

    def add_sequence(self, path: str, responses: Iterable[Response]) -> str:
        """Successive answers at ``path``; the last one repeats."""
        answers = list(responses)
        if not answers:
            raise ValueError("at least one response")
        with self._lock:
            self._routes[path] = _Route(answers)
        return self.url(path)

    def add_redirect(self, path: str, target: str, *, status: int = 301) -> str:
        """Redirect ``path`` to ``target`` (a path on this server or an absolute URL)."""
        return self.add(path, status=status, content_type=None, headers={"location": target})

    def add_raw(
        self, path: str, *, raw_body: bytes, headers: Mapping[str, str], status: int = 200
    ) -> str:
        """Send ``raw_body`` byte for byte with exactly these extra headers."""
        return self.add(path, raw_body, status=status, content_type=None, headers=headers)

    def add_drip(self, path: str, *, chunk: bytes = b"<", interval: float = 2.0) -> str:
        """Headers at once, then ``chunk`` every ``interval`` seconds until stopped."""
        return self.add_sequence(path, [Response(mode="drip", chunk=chunk, interval=interval)])

    def add_hang(self, path: str) -> str:
        """Read the request, then never answer."""
        return self.add_sequence(path, [Response(mode="hang")])

    def add_endless(self, path: str, *, chunk: bytes = b"x" * 65536) -> str:
        """A chunked body that never ends."""
        return self.add_sequence(path, [Response(mode="endless", chunk=chunk)])

    def add_handler(self, path: str, make: Callable[[], Response]) -> None:
        """Compute each answer when it is asked for (for load scripts)."""

        class _Computed(_Route):
            def take(self) -> Response:
                return make()

        with self._lock:
            self._routes[path] = _Computed([Response()])

    # --- observation ---

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def requests_for(self, path: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.path == path]

    def max_concurrent(self, path_prefix: str = "/") -> int:
        """Peak number of requests under ``path_prefix`` being answered at once."""
        events: list[tuple[float, int]] = []
        for record in self.requests:
            if record.path.startswith(path_prefix):
                events.append((record.started, 1))
                events.append((record.ended if record.ended is not None else float("inf"), -1))
        peak = current = 0
        for _, step in sorted(events):  # at equal times the end (-1) sorts first
            current += step
            peak = max(peak, current)
        return peak

    # --- used by the handler ---

    def _route(self, path: str) -> _Route | None:
        with self._lock:
            return self._routes.get(path) or self._routes.get(path.split("?", 1)[0])

    def _record_start(self, path: str, headers: Mapping[str, str]) -> int:
        with self._lock:
            self._records.append(RequestRecord(path, headers, time.monotonic(), None))
            return len(self._records) - 1

    def _record_end(self, index: int) -> None:
        with self._lock:
            record = self._records[index]
            self._records[index] = RequestRecord(
                record.path, record.headers, record.started, time.monotonic()
            )

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
