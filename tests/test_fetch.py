"""The fetch adapter against a real HTTP(S) server on loopback (threats H1-H10)."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import os
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from feedserver import FeedServer, Response

from aggregator import USER_AGENT
from aggregator import fetch as fetch_module
from aggregator.errors import (
    FetchConnectError,
    FetchError,
    FetchRefused,
    FetchStatusError,
    FetchTimeout,
    FetchTooLarge,
    FetchTooManyRedirects,
)
from aggregator.fetch import (
    DEFAULT_HOST_HOLD,
    HOST_DOWN_AFTER,
    MAX_HOST_HOLD,
    PER_HOST_START,
    AddressRefused,
    FeedFetcher,
    FetchSettings,
    GuardedTransport,
    HostDown,
    HostGate,
    is_public_address,
    retry_after_hold,
)
from aggregator.models import FetchResult
from aggregator.polling import parse_retry_after

RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
LAST_MODIFIED = "Tue, 02 Jan 2024 10:00:00 GMT"


def settings(**overrides: object) -> FetchSettings:
    """Test defaults: private addresses allowed (the server is on loopback), short limits."""
    values: dict[str, object] = {
        "allow_private_addresses": True,
        "connect_timeout": 5.0,
        "read_timeout": 10.0,
        "total_timeout": 10.0,
    }
    values.update(overrides)
    return FetchSettings(**values)  # type: ignore[arg-type]


async def fetch_one(url: str, **kwargs: object) -> FetchResult:
    conditional = {k: kwargs.pop(k) for k in ("etag", "last_modified") if k in kwargs}
    async with FeedFetcher(settings(**kwargs)) as fetcher:
        return await fetcher.fetch(url, **conditional)  # type: ignore[arg-type]


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed (about 1,000 : 1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(size // len(block))]
    return b"".join([*parts, packer.flush()])


# --- plain success and conditional GET -----------------------------------------------


async def test_200_returns_body_headers_and_validators(feed_server: FeedServer) -> None:
    url = feed_server.add(
        "/feed.xml",
        RSS,
        etag='"v1"',
        last_modified=LAST_MODIFIED,
        headers={"X-Extra": "yes"},
    )
    result = await fetch_one(url)

    assert result.ok and result.error is None
    assert result.status == 200
    assert result.content == RSS
    assert result.final_url == url and result.permanent_url is None
    assert result.etag == '"v1"' and result.last_modified == LAST_MODIFIED
    assert result.headers["content-type"] == "application/rss+xml; charset=utf-8"
    assert result.headers["etag"] == '"v1"'
    assert result.headers["last-modified"] == LAST_MODIFIED
    assert result.headers["x-extra"] == "yes"
    assert result.bytes_read == len(RSS)
    assert 0 < result.elapsed_seconds < 5

    sent = feed_server.requests_for("/feed.xml")[0].headers
    assert sent["user-agent"] == USER_AGENT
    assert sent["accept"].startswith("application/atom+xml, application/rss+xml")
    assert sent["accept-encoding"] == "gzip, deflate"
    assert "if-none-match" not in sent and "if-modified-since" not in sent


async def test_gzip_body_is_decompressed(feed_server: FeedServer) -> None:
    url = feed_server.add_raw(
        "/gz.xml", raw_body=gzip.compress(RSS * 100), headers={"content-encoding": "gzip"}
    )
    result = await fetch_one(url)
    assert result.content == RSS * 100 and result.bytes_read == len(RSS) * 100


async def test_concatenated_gzip_members_are_all_read(feed_server: FeedServer) -> None:
    body = gzip.compress(RSS[:20]) + gzip.compress(RSS[20:])
    url = feed_server.add_raw("/two.xml", raw_body=body, headers={"content-encoding": "gzip"})
    assert (await fetch_one(url)).content == RSS


@pytest.mark.parametrize("raw", [True, False], ids=["raw-deflate", "zlib-deflate"])
async def test_deflate_body_is_decompressed(feed_server: FeedServer, raw: bool) -> None:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    body = packer.compress(RSS * 50) + packer.flush()
    url = feed_server.add_raw("/d.xml", raw_body=body, headers={"content-encoding": "deflate"})
    result = await fetch_one(url)
    assert result.ok, result.error
    assert result.content == RSS * 50


async def test_conditional_get_with_etag_gives_304(feed_server: FeedServer) -> None:
    url = feed_server.add("/feed.xml", RSS, etag='"v1"', last_modified=LAST_MODIFIED)
    result = await fetch_one(url, etag='"v1"', last_modified=LAST_MODIFIED)

    assert result.status == 304 and result.not_modified and result.ok
    assert result.content is None
    assert result.etag == '"v1"' and result.last_modified == LAST_MODIFIED
    sent = feed_server.requests_for("/feed.xml")[0].headers
    assert sent["if-none-match"] == '"v1"'
    assert sent["if-modified-since"] == LAST_MODIFIED


async def test_conditional_get_with_last_modified_only_gives_304(
    feed_server: FeedServer,
) -> None:
    url = feed_server.add("/feed.xml", RSS, last_modified=LAST_MODIFIED)
    assert (await fetch_one(url, last_modified=LAST_MODIFIED)).not_modified
    changed = await fetch_one(url, last_modified="Mon, 01 Jan 2024 10:00:00 GMT")
    assert changed.status == 200 and changed.content == RSS


async def test_stale_etag_gets_the_new_body(feed_server: FeedServer) -> None:
    url = feed_server.add("/feed.xml", RSS, etag='"v2"')
    result = await fetch_one(url, etag='"v1"')
    assert result.status == 200 and not result.not_modified and result.etag == '"v2"'


# --- redirects (H3) -----------------------------------------------------------------


@pytest.mark.parametrize("statuses", [[301], [308], [301, 308, 301]])
async def test_h3_permanent_redirect_chain_sets_permanent_url(
    feed_server: FeedServer, statuses: list[int]
) -> None:
    final = feed_server.add("/final.xml", RSS)
    targets = [f"/hop{i}" for i in range(1, len(statuses))] + [final]
    for i, status in enumerate(statuses):
        feed_server.add_redirect(f"/hop{i}", targets[i], status=status)
    result = await fetch_one(feed_server.url("/hop0"))

    assert result.ok and result.content == RSS
    assert result.url == feed_server.url("/hop0")
    assert result.final_url == final
    assert result.permanent_url == final


@pytest.mark.parametrize("statuses", [[302], [307], [303], [301, 302], [307, 308]])
async def test_h3_temporary_hop_never_sets_permanent_url(
    feed_server: FeedServer, statuses: list[int]
) -> None:
    final = feed_server.add("/final.xml", RSS)
    targets = [f"/hop{i}" for i in range(1, len(statuses))] + ["/final.xml"]
    for i, status in enumerate(statuses):
        feed_server.add_redirect(f"/hop{i}", targets[i], status=status)
    result = await fetch_one(feed_server.url("/hop0"))

    assert result.ok and result.final_url == final
    assert result.permanent_url is None


async def test_h3_redirect_loop_is_stopped(feed_server: FeedServer) -> None:
    feed_server.add_redirect("/a", "/b", status=301)
    feed_server.add_redirect("/b", "/a", status=302)
    result = await fetch_one(feed_server.url("/a"), max_redirects=10)

    assert isinstance(result.error, FetchTooManyRedirects)
    assert "loop" in str(result.error)
    assert result.content is None and result.permanent_url is None
    assert len(feed_server.requests) == 2  # caught on the first repeat, not at the hop limit


async def test_h3_long_chain_is_stopped_at_the_hop_limit(feed_server: FeedServer) -> None:
    for i in range(20):
        feed_server.add_redirect(f"/r{i}", f"/r{i + 1}", status=301)
    result = await fetch_one(feed_server.url("/r0"), max_redirects=5)

    assert isinstance(result.error, FetchTooManyRedirects)
    assert "more than 5 redirects" in str(result.error)
    assert len(feed_server.requests) == 6


async def test_h3_chain_at_the_hop_limit_is_followed(feed_server: FeedServer) -> None:
    for i in range(5):
        feed_server.add_redirect(f"/r{i}", f"/r{i + 1}", status=301)
    feed_server.add("/r5", RSS)
    result = await fetch_one(feed_server.url("/r0"), max_redirects=5)
    assert result.ok and result.permanent_url == feed_server.url("/r5")


async def test_redirect_without_location_is_an_error(feed_server: FeedServer) -> None:
    url = feed_server.add("/nowhere", status=301, content_type=None)
    result = await fetch_one(url)
    assert isinstance(result.error, FetchStatusError) and result.error.status == 301


# --- status codes (410, 429/503, 5xx, empty 200) ------------------------------------


async def test_410_gone(feed_server: FeedServer) -> None:
    url = feed_server.add("/gone.xml", b"gone", status=410, content_type="text/plain")
    result = await fetch_one(url)

    assert result.status == 410 and result.gone
    assert isinstance(result.error, FetchStatusError) and result.error.status == 410
    assert "gone" in str(result.error)
    assert result.content is None


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("retry_after", ["120", "Wed, 21 Oct 2026 07:28:00 GMT", "soon!"])
async def test_h6_retry_after_is_captured_raw(
    feed_server: FeedServer, status: int, retry_after: str
) -> None:
    url = feed_server.add("/busy", b"busy", status=status, headers={"Retry-After": retry_after})
    result = await fetch_one(url)

    assert result.status == status
    assert isinstance(result.error, FetchStatusError) and result.error.status == status
    assert result.retry_after == retry_after
    assert result.headers["retry-after"] == retry_after
    assert len(feed_server.requests) == 1  # no retries of our own


async def test_retry_after_ignored_for_other_statuses(feed_server: FeedServer) -> None:
    url = feed_server.add("/x", b"x", status=500, headers={"Retry-After": "10"})
    assert (await fetch_one(url)).retry_after is None


@pytest.mark.parametrize("status", [500, 502, 404, 403])
async def test_error_statuses(feed_server: FeedServer, status: int) -> None:
    url = feed_server.add("/broken", b"oops", status=status, content_type="text/plain")
    result = await fetch_one(url)

    assert result.status == status and not result.ok
    assert isinstance(result.error, FetchStatusError) and result.error.status == status
    assert f"HTTP {status}" in str(result.error) and url in str(result.error)
    assert result.content is None


async def test_h9_empty_200_is_an_error(feed_server: FeedServer) -> None:
    url = feed_server.add("/empty.xml", b"", etag='"e"')
    result = await fetch_one(url)

    assert result.status == 200
    assert isinstance(result.error, FetchStatusError) and "empty body" in str(result.error)
    assert result.content is None and result.etag is None


async def test_sequence_recovers_after_failure(feed_server: FeedServer) -> None:
    url = feed_server.add_sequence("/flaky", [Response(status=503), Response(body=RSS)])
    async with FeedFetcher(settings()) as fetcher:
        first = await fetcher.fetch(url)
        second = await fetcher.fetch(url)
    assert first.status == 503 and not first.ok
    assert second.ok and second.content == RSS


# --- deadlines (H1) -----------------------------------------------------------------


async def _timed(fetcher: FeedFetcher, url: str) -> tuple[FetchResult, float]:
    started = time.monotonic()
    result = await fetcher.fetch(url)
    return result, time.monotonic() - started


async def test_h1_drip_and_hang_stopped_by_total_deadline_others_finish(
    feed_server: FeedServer,
) -> None:
    """Neither server trips a per-phase timeout; only the total deadline stops them."""
    drip = feed_server.add_drip("/drip", chunk=b"<", interval=0.1)
    hang = feed_server.add_hang("/hang")
    good = [feed_server.add(f"/ok{i}.xml", RSS, delay=0.05) for i in range(6)]
    config = settings(read_timeout=30.0, total_timeout=1.5, max_per_host=8)
    async with FeedFetcher(config) as fetcher:
        results = await asyncio.gather(*(_timed(fetcher, u) for u in [drip, hang, *good]))

        for result, took in results[:2]:
            assert isinstance(result.error, FetchTimeout), result.error
            assert "deadline" in str(result.error)
            assert result.content is None
            assert 1.4 < took < 3.0
        drip_result = results[0][0]
        assert drip_result.status == 200 and drip_result.bytes_read >= 5
        for result, took in results[2:]:
            assert result.ok and result.content == RSS
            assert took < 1.0  # did not wait for the stuck ones
        # The fetcher still works after the timeouts.
        again = await fetcher.fetch(good[0])
        assert again.ok


async def test_h1_a_host_that_never_answers_is_not_asked_by_every_feed_in_turn(
    feed_server: FeedServer,
) -> None:
    """Many feeds of one platform that has stopped answering: after a few requests without
    any answer the rest fail at once, instead of each waiting out its own timeout."""
    hangs = [feed_server.add_hang(f"/hang{i}") for i in range(12)]
    async with FeedFetcher(settings(read_timeout=0.3, total_timeout=5.0)) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(url) for url in hangs))
    asked = [r for r in feed_server.requests if r.path.startswith("/hang")]
    assert len(asked) == 6  # the first six slots; none after the host went down
    assert all(isinstance(r.error, FetchError) for r in results)
    skipped = [r for r in results if "not asked again" in str(r.error)]
    assert len(skipped) == 6 and all(isinstance(r.error, FetchConnectError) for r in skipped)


async def test_h1_a_host_that_answers_others_is_never_down(feed_server: FeedServer) -> None:
    """A few pages that never answer, on a host that answers the rest (slowly): only those
    pages fail; the host's other feeds are all fetched."""
    hangs = [feed_server.add_hang(f"/stuck{i}") for i in range(4)]
    live = [feed_server.add(f"/live{i}.xml", RSS, delay=0.2) for i in range(20)]
    config = settings(read_timeout=0.5, total_timeout=5.0, max_per_host=6)
    async with FeedFetcher(config) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(url) for url in [*hangs, *live]))
    assert all(isinstance(r.error, FetchTimeout) for r in results[:4])
    assert all(r.ok for r in results[4:]), [str(r.error) for r in results[4:] if not r.ok]


async def test_h1_a_dead_port_does_not_take_down_the_live_port_of_the_same_machine(
    feed_server: FeedServer,
) -> None:
    with socket.socket() as held:  # bound, never listening: every connection is refused
        held.bind(("127.0.0.1", 0))
        dead_port = held.getsockname()[1]
        dead = [f"http://127.0.0.1:{dead_port}/f{i}.xml" for i in range(6)]
        live = [feed_server.add(f"/port{i}.xml", RSS) for i in range(12)]
        async with FeedFetcher(settings()) as fetcher:
            results = await asyncio.gather(*(fetcher.fetch(url) for url in [*dead, *live]))
    assert all(isinstance(r.error, FetchConnectError) for r in results[:6])
    assert all(r.ok for r in results[6:])


async def test_h1_slot_is_freed_after_the_deadline(feed_server: FeedServer) -> None:
    hang = feed_server.add_hang("/hang")
    good = feed_server.add("/ok.xml", RSS)
    config = settings(max_connections=1, max_per_host=1, total_timeout=0.8, read_timeout=30.0)
    async with FeedFetcher(config) as fetcher:
        stuck = asyncio.create_task(_timed(fetcher, hang))
        while not feed_server.requests_for("/hang"):  # noqa: ASYNC110 - the server is a thread
            await asyncio.sleep(0.005)
        # The hang holds the only slot now.
        result, took = await _timed(fetcher, good)
        hang_result, _ = await stuck

    assert isinstance(hang_result.error, FetchTimeout)
    assert result.ok and result.content == RSS
    assert 0.5 < took < 2.0  # waited for the slot, got it when the deadline freed it


async def test_read_timeout_per_phase(feed_server: FeedServer) -> None:
    url = feed_server.add("/slow.xml", RSS, delay=2.0)
    result = await fetch_one(url, read_timeout=0.3, total_timeout=10.0)
    assert isinstance(result.error, FetchTimeout) and "read timed out" in str(result.error)
    assert result.elapsed_seconds < 1.5


# --- connection failures (H2) -------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_h2_connection_refused() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/feed.xml"
    result = await fetch_one(url)

    assert isinstance(result.error, FetchConnectError)
    assert "refused" in str(result.error).lower()
    assert result.status is None and result.content is None


async def test_h2_refused_after_a_redirect_reports_no_status(feed_server: FeedServer) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}/feed.xml"
    url = feed_server.add_redirect("/moved", dead, status=301)
    result = await fetch_one(url)
    assert isinstance(result.error, FetchConnectError)
    assert result.final_url == dead and result.status is None and result.permanent_url is None


async def test_h2_unknown_host() -> None:
    result = await fetch_one("http://no-such-host.invalid/feed.xml", connect_timeout=3.0)
    assert isinstance(result.error, FetchConnectError | FetchTimeout)
    assert "no-such-host.invalid" in str(result.error)
    assert result.status is None


@pytest.fixture(scope="module")
def self_signed_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A freshly made self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"),
                *("-keyout", str(key), "-out", str(cert), "-days", "2"),
                *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a certificate with openssl: {exc}")
    return cert, key


@pytest.fixture(scope="module")
def self_signed(self_signed_files: tuple[Path, Path]) -> ssl.SSLContext:
    """A server TLS context with the self-signed certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed_files)
    return context


@pytest.fixture
def tls_server(self_signed: ssl.SSLContext) -> Iterator[FeedServer]:
    server = FeedServer(tls=self_signed).start()
    try:
        yield server
    finally:
        server.stop()


async def test_h2_self_signed_certificate_is_refused(tls_server: FeedServer) -> None:
    url = tls_server.add("/feed.xml", RSS)
    assert url.startswith("https://")
    result = await fetch_one(url)

    assert isinstance(result.error, FetchConnectError)
    assert "TLS certificate not trusted" in str(result.error)
    assert "self-signed" in str(result.error)
    assert result.content is None
    assert tls_server.requests == []  # no HTTP request went over the untrusted channel


# --- size caps and compression abuse (H8) --------------------------------------------

CAP = 2 * 1024 * 1024


async def test_h8_gzip_bomb_is_capped_and_memory_stays_near_the_cap(
    feed_server: FeedServer,
) -> None:
    bomb = gzip_bomb(512 * 1024 * 1024)  # 512 MiB of zeros in about half a megabyte
    assert len(bomb) < 1024 * 1024
    url = feed_server.add_raw("/bomb.xml", raw_body=bomb, headers={"content-encoding": "gzip"})
    async with FeedFetcher(settings(max_body_bytes=CAP)) as fetcher:
        tracemalloc.start()
        try:
            result = await fetcher.fetch(url)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    assert isinstance(result.error, FetchTooLarge), result.error
    assert "after decompression" in str(result.error)
    assert result.content is None
    assert CAP < result.bytes_read <= CAP + 64 * 1024
    assert peak < 3 * CAP, f"peak {peak} bytes"


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
async def test_h8_deflate_bomb_is_capped(feed_server: FeedServer, wbits: int) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = bytes(1024 * 1024)
    bomb = b"".join(packer.compress(block) for _ in range(64)) + packer.flush()
    url = feed_server.add_raw("/bomb", raw_body=bomb, headers={"content-encoding": "deflate"})
    result = await fetch_one(url, max_body_bytes=CAP)
    assert isinstance(result.error, FetchTooLarge)
    assert result.bytes_read <= CAP + 64 * 1024


async def test_h8_endless_chunked_body_is_capped(feed_server: FeedServer) -> None:
    url = feed_server.add_endless("/endless.xml")
    result = await fetch_one(url, max_body_bytes=CAP, total_timeout=20.0)

    assert isinstance(result.error, FetchTooLarge)
    assert result.content is None
    assert CAP < result.bytes_read <= CAP + 64 * 1024
    assert result.elapsed_seconds < 10


async def test_h8_content_length_over_the_cap_is_refused_up_front(
    feed_server: FeedServer,
) -> None:
    url = feed_server.add_raw(
        "/big", raw_body=RSS, headers={"content-length": str(CAP + 1), "connection": "close"}
    )
    result = await fetch_one(url, max_body_bytes=CAP)
    assert isinstance(result.error, FetchTooLarge) and "Content-Length" in str(result.error)
    assert result.bytes_read == 0


async def test_h8_content_length_that_lies_low_does_not_lift_the_cap(
    feed_server: FeedServer,
) -> None:
    """A small, honest-looking Content-Length says nothing about the decompressed size."""
    bomb = gzip_bomb(64 * 1024 * 1024)
    url = feed_server.add_raw("/bomb", raw_body=bomb, headers={"content-encoding": "gzip"})
    result = await fetch_one(url, max_body_bytes=CAP)
    assert int(result.headers["content-length"]) < CAP
    assert isinstance(result.error, FetchTooLarge)


async def test_h8_content_length_that_lies_high_gives_no_partial_body(
    feed_server: FeedServer,
) -> None:
    url = feed_server.add_raw(
        "/short", raw_body=RSS, headers={"content-length": "100000", "connection": "close"}
    )
    result = await fetch_one(url)
    assert isinstance(result.error, FetchError) and result.content is None


async def test_h8_truncated_gzip_stream_is_an_error(feed_server: FeedServer) -> None:
    whole = gzip.compress(os.urandom(50_000))
    url = feed_server.add_raw(
        "/cut.xml", raw_body=whole[: len(whole) // 2], headers={"content-encoding": "gzip"}
    )
    result = await fetch_one(url)
    assert type(result.error) is FetchError and "truncated gzip" in str(result.error)
    assert result.content is None


async def test_h8_gzip_header_on_plain_bytes_is_an_error(feed_server: FeedServer) -> None:
    url = feed_server.add_raw("/liar.xml", raw_body=RSS, headers={"content-encoding": "gzip"})
    result = await fetch_one(url)
    assert isinstance(result.error, FetchError) and "corrupt gzip" in str(result.error)
    assert result.content is None


async def test_unknown_content_encoding_is_an_error(feed_server: FeedServer) -> None:
    url = feed_server.add_raw("/br.xml", raw_body=RSS, headers={"content-encoding": "br"})
    result = await fetch_one(url)
    assert isinstance(result.error, FetchError) and "content-encoding" in str(result.error)


# --- concurrency (H10) --------------------------------------------------------------


async def test_h10_per_host_limit_holds(feed_server: FeedServer) -> None:
    urls = [feed_server.add(f"/many/{i}.xml", RSS, delay=0.15) for i in range(12)]
    async with FeedFetcher(settings(max_per_host=3, max_connections=32)) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(u) for u in urls))
    assert all(r.ok for r in results)
    assert feed_server.max_concurrent("/many/") == 3


async def test_global_limit_holds_across_hosts(feed_server: FeedServer) -> None:
    """127.0.0.1 and localhost are two hosts to the per-host limit; the global one binds."""
    paths = [f"/g/{i}.xml" for i in range(8)]
    for path in paths:
        feed_server.add(path, RSS, delay=0.15)
    urls = [
        feed_server.url(p) if i % 2 else f"http://localhost:{feed_server.port}{p}"
        for i, p in enumerate(paths)
    ]
    async with FeedFetcher(settings(max_per_host=4, max_connections=2)) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(u) for u in urls))
    assert all(r.ok for r in results), [r.error for r in results]
    assert feed_server.max_concurrent("/g/") == 2


# --- server-side request forgery (H4) -----------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "2130706433",  # decimal
        "0177.0.0.1",  # octal
        "0x7f.1",  # hex, short form
        "127.1",
        "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
        "[::1]",
        "0.0.0.0",
        "10.0.0.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
        "[fe80::1]",
    ],
)
async def test_h4_private_addresses_refused_when_guard_is_on(
    feed_server: FeedServer, host: str
) -> None:
    feed_server.add("/feed.xml", RSS)
    url = f"http://{host}:{feed_server.port}/feed.xml"
    result = await fetch_one(url, allow_private_addresses=False, connect_timeout=2.0)

    assert isinstance(result.error, FetchRefused), result.error
    assert result.content is None and result.status is None
    assert feed_server.requests == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.1.1", False),
        ("100.64.0.1", False),
        ("100.127.255.255", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:93.184.216.34", True),
        ("64:ff9b::a00:1", False),
        ("64:ff9b:1::1", False),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
    ],
)
def test_h4_address_policy(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.fixture
def second_host() -> Iterator[FeedServer]:
    """A server on 127.0.0.2, which the tests below treat as a public address."""
    server = FeedServer(host="127.0.0.2").start()
    try:
        yield server
    finally:
        server.stop()


async def test_h4_redirect_hop_to_loopback_is_refused(
    feed_server: FeedServer, second_host: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_policy = is_public_address
    monkeypatch.setattr(
        fetch_module,
        "is_public_address",
        lambda address: str(address) == "127.0.0.2" or real_policy(address),
    )
    internal = feed_server.add("/secret", b"internal data")
    start = second_host.add_redirect("/feed.xml", internal, status=302)
    second_host.add("/ok.xml", RSS)

    async with FeedFetcher(settings(allow_private_addresses=False)) as fetcher:
        allowed = await fetcher.fetch(second_host.url("/ok.xml"))
        result = await fetcher.fetch(start)

    assert allowed.ok and allowed.content == RSS  # the guard lets allowed addresses through
    assert isinstance(result.error, FetchRefused), result.error
    assert "127.0.0.1" in str(result.error)
    assert result.content is None
    assert feed_server.requests == []  # nothing reached the internal server


# --- schemes and file URLs (H5) -----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.org/feed.xml",
        "gopher://example.org/",
        "javascript:alert(1)",
        "data:text/xml,<rss/>",
        "feed.xml",
        "",
        "file:///etc/passwd",
        "http:///no-host.xml",
        "http://[::1/feed.xml",
        "http://example.org:port/feed.xml",
        "http://exa\x00mple.org/",
    ],
)
async def test_h5_other_schemes_and_malformed_urls_refused(url: str) -> None:
    result = await fetch_one(url)
    assert isinstance(result.error, FetchRefused)
    assert result.content is None


async def test_h5_redirect_to_file_url_refused_even_when_files_are_allowed(
    feed_server: FeedServer, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.xml"
    secret.write_bytes(RSS)
    url = feed_server.add_redirect("/feed.xml", secret.as_uri(), status=301)
    result = await fetch_one(url, allow_file_urls=True)
    assert isinstance(result.error, FetchRefused) and result.content is None


async def test_file_urls_when_enabled(tmp_path: Path) -> None:
    snapshot = tmp_path / "snap shot.xml"
    snapshot.write_bytes(RSS)
    url = snapshot.as_uri()
    async with FeedFetcher(settings(allow_file_urls=True, max_body_bytes=1000)) as fetcher:
        first = await fetcher.fetch(url)
        again = await fetcher.fetch(url, last_modified=first.last_modified)
        snapshot.write_bytes(RSS * 100)
        bigger = await fetcher.fetch(url)
        missing = await fetcher.fetch((tmp_path / "nope.xml").as_uri())

    assert first.ok and first.status == 200 and first.content == RSS
    assert first.last_modified and first.last_modified.endswith("GMT")
    assert first.bytes_read == len(RSS)
    assert again.not_modified and again.ok and again.content is None
    assert isinstance(bigger.error, FetchTooLarge)
    assert isinstance(missing.error, FetchStatusError) and "not found" in str(missing.error)


async def test_file_urls_refused_by_default(tmp_path: Path) -> None:
    snapshot = tmp_path / "feed.xml"
    snapshot.write_bytes(RSS)
    result = await fetch_one(snapshot.as_uri())
    assert isinstance(result.error, FetchRefused) and "file URLs are not allowed" in str(
        result.error
    )


# --- per-host politeness that adapts (H10, H6) ----------------------------------------


async def _gate_with_waiter(gate: HostGate) -> asyncio.Task[None]:
    """Fill the gate, then queue one more request; returns the waiting one."""
    while gate.in_flight < int(gate.limit):
        await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)  # the task is queued now
    return waiter


async def test_host_gate_starts_at_six_and_grows_on_quick_answers_while_others_wait() -> None:
    gate = HostGate(PER_HOST_START, 8)
    assert gate.limit == PER_HOST_START == 6
    waiter = await _gate_with_waiter(gate)
    gate.release(0.05)  # the first answer sets the quickest time
    await waiter
    assert gate.limit == 7
    waiter = await _gate_with_waiter(gate)
    gate.release(0.06)  # as quick: one more slot
    await waiter
    assert gate.limit == 8
    waiter = await _gate_with_waiter(gate)
    gate.release(0.05)
    await waiter
    assert gate.limit == 8  # the ceiling
    gate.release(0.05)  # nobody waits: no growth needed
    assert gate.limit == 8


async def test_host_gate_shrinks_on_slow_answers_overload_and_retry_after() -> None:
    gate = HostGate(6, 16)
    for _ in range(3):
        await gate.acquire()
    gate.release(0.05)
    gate.release(0.5)  # ten times the quickest: one slot fewer
    assert gate.limit == 5
    gate.release(None, overloaded=True)  # a 5xx, a timeout, a refused connection
    assert gate.limit == 2.5 and int(gate.limit) == 2
    for _ in range(2):
        await gate.acquire()
    gate.release(0.05, overloaded=True, slow_down=True, hold=30.0)  # 429 + Retry-After: 30
    assert gate.limit == 1
    waiter = await _gate_with_waiter(gate)
    gate.release(0.05)  # quick, and someone waits, but the host asked for 30 s
    await waiter
    assert gate.limit == 1
    gate.release(0.05)
    assert gate.in_flight == 0


async def test_host_gate_down_after_requests_without_answer_and_up_again() -> None:
    gate = HostGate(6, 16)
    for _ in range(HOST_DOWN_AFTER - 1):
        await gate.acquire()
        gate.release(None, overloaded=True)
    await gate.acquire()
    gate.release(0.05)  # an answer clears the count
    for _ in range(HOST_DOWN_AFTER - 1):
        await gate.acquire()
        gate.release(None, overloaded=True)
    await gate.acquire()  # still up
    waiter = await _gate_with_waiter(gate)
    gate.release(None, overloaded=True)  # the third in a row
    with pytest.raises(HostDown):
        await waiter  # those waiting fail at once
    with pytest.raises(HostDown, match="not asked again"):
        await gate.acquire()
    gate.down_until = asyncio.get_running_loop().time()  # the pause is over
    await gate.acquire()


async def test_host_gate_counts_only_silence_and_asks_again_after_the_pause() -> None:
    gate = HostGate(6, 16)
    for _ in range(HOST_DOWN_AFTER - 1):
        await gate.acquire()
        gate.release(None, overloaded=True, waited=1.0)
    await gate.acquire()
    gate.release(0.05)  # an answer...
    await gate.acquire()
    gate.release(None, overloaded=True, waited=1.0)  # ...came while this one was out
    assert gate.unanswered == 0
    for _ in range(HOST_DOWN_AFTER):
        await gate.acquire()
        gate.last_answer -= 10  # long ago
        gate.release(None, overloaded=True, waited=1.0)
    with pytest.raises(HostDown):
        await gate.acquire()
    gate.down_until = asyncio.get_running_loop().time()  # the pause is over
    await gate.acquire()
    assert gate.unanswered == 0  # one more failure does not pause it again at once
    gate.release(None, overloaded=True, waited=20.0)
    await gate.acquire()


async def test_host_gate_over_http2_may_pass_max_per_host() -> None:
    gate = HostGate(6, 4, multiplexed_ceiling=32)
    assert gate.limit == 4
    await gate.acquire()
    gate.release(0.05, multiplexed=True)
    assert gate.ceiling == 32
    waiter = await _gate_with_waiter(gate)
    gate.release(0.05)
    await waiter
    assert gate.limit == 5


async def test_host_gate_cancelled_waiter_gives_its_slot_back() -> None:
    gate = HostGate(1, 1)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    first.cancel()
    gate.release(0.01)  # handed to the first waiter, which is cancelled: passes on
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert gate.in_flight == 1
    gate.release(0.01)
    assert gate.in_flight == 0


async def test_h10_a_host_not_yet_heard_from_gets_six_requests_at_once(
    feed_server: FeedServer,
) -> None:
    urls = [feed_server.add(f"/new/{i}.xml", RSS, delay=0.3) for i in range(12)]
    async with FeedFetcher(settings(max_per_host=16)) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(u) for u in urls))
    assert all(r.ok for r in results)
    records = sorted(feed_server.requests, key=lambda r: r.started)
    first_done = min(r.ended for r in records[:6] if r.ended is not None)
    assert records[6].started >= first_done  # the seventh waited for an answer


async def test_h10_a_quick_host_gets_more_than_six_never_more_than_max_per_host(
    feed_server: FeedServer,
) -> None:
    urls = [feed_server.add(f"/quick/{i}.xml", RSS, delay=0.1) for i in range(60)]
    async with FeedFetcher(settings(max_per_host=10, max_connections=32)) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(u) for u in urls))
    assert all(r.ok for r in results)
    assert feed_server.max_concurrent("/quick/") == 10


async def test_h6_retry_after_keeps_the_host_at_one_request_at_a_time(
    feed_server: FeedServer,
) -> None:
    busy = feed_server.add("/busy/0.xml", b"", status=429, headers={"Retry-After": "120"})
    others = [feed_server.add(f"/busy/{i}.xml", RSS, delay=0.05) for i in range(1, 9)]
    async with FeedFetcher(settings(max_per_host=8)) as fetcher:
        first = await fetcher.fetch(busy)
        results = await asyncio.gather(*(fetcher.fetch(u) for u in others))
    assert first.status == 429 and first.retry_after == "120"
    assert all(r.ok for r in results)
    assert feed_server.max_concurrent("/busy/") == 1


# --- the transport seam ------------------------------------------------------------


async def test_h4_guarded_transport_refuses_loopback_through_plain_httpx(
    feed_server: FeedServer,
) -> None:
    url = feed_server.add("/feed.xml", RSS)
    async with httpx.AsyncClient(transport=GuardedTransport()) as client:
        with pytest.raises(AddressRefused, match="non-public address 127.0.0.1"):
            await client.get(url)
    assert feed_server.requests == []


async def test_h4_dns_rebinding_connects_to_the_address_that_was_checked(
    feed_server: FeedServer, second_host: FeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once per connection: first to an allowed address, then (a
    rebinding resolver) to loopback. The connection goes to the first, checked one."""
    real_policy = is_public_address
    monkeypatch.setattr(
        fetch_module,
        "is_public_address",
        lambda address: str(address) == "127.0.0.2" or real_policy(address),
    )
    second_host.add("/ok.xml", RSS)
    feed_server.add("/ok.xml", b"internal data")
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo
    lookups: list[str] = []

    async def rebinding(host: object, port: object, *args: object, **kwargs: object) -> object:
        if host == "feeds.example":
            lookups.append(host)
            address = "127.0.0.2" if len(lookups) == 1 else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return await real_getaddrinfo(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    url = f"http://feeds.example:{second_host.port}/ok.xml"
    async with FeedFetcher(settings(allow_private_addresses=False)) as fetcher:
        result = await fetcher.fetch(url)
    assert result.ok and result.content == RSS
    assert lookups == ["feeds.example"]  # never resolved again after the check
    assert feed_server.requests == [] and len(second_host.requests) == 1


async def test_a_mock_transport_replaces_the_network() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(304, headers={"ETag": '"v2"'})

    transport = httpx.MockTransport(answer)
    async with FeedFetcher(settings(), transport=transport) as fetcher:
        result = await fetcher.fetch("https://blog.example/feed.xml", etag='"v1"')
    assert result.not_modified and result.etag == '"v2"'
    assert seen[0].headers["if-none-match"] == '"v1"'
    assert seen[0].headers["user-agent"] == USER_AGENT


async def test_an_https_chain_through_plain_http_is_marked_and_never_a_move(
    tls_server: FeedServer, feed_server: FeedServer, self_signed_files: tuple[Path, Path]
) -> None:
    """https -> 301 -> plain http -> 301 -> https: the answer is read, but the chain went
    through a hop anyone on the path could have written, so it is marked and discovery
    keeps the address it was given."""
    from aggregator.config import settings_from_mapping
    from aggregator.sources import discover_feed_url

    cert, _ = self_signed_files
    final = tls_server.add("/final.xml", RSS)
    middle = feed_server.add("/middle", b"", status=301, headers={"Location": final})
    start = tls_server.add("/start", b"", status=301, headers={"Location": middle})
    plain = tls_server.add(
        "/plain", b"", status=301, headers={"Location": feed_server.add("/p.xml", RSS)}
    )
    async with FeedFetcher(settings(ca_file=str(cert))) as fetcher:
        chained = await fetcher.fetch(start)
        clean = await fetcher.fetch(
            tls_server.add("/direct", b"", status=301, headers={"Location": final})
        )
        site = settings_from_mapping(
            {"database": "x.sqlite3", "fetch": {"allow_private_addresses": True}}, env={}
        )
        assert await discover_feed_url(fetcher, plain, site) == plain
        assert await discover_feed_url(fetcher, start, site) == start
    assert chained.ok and chained.final_url == final and chained.downgraded
    assert not clean.downgraded and clean.permanent_url == final


async def test_h2_ca_file_trusts_a_private_authority(
    tls_server: FeedServer, self_signed_files: tuple[Path, Path]
) -> None:
    url = tls_server.add("/feed.xml", RSS)
    cert, _ = self_signed_files
    result = await fetch_one(url, ca_file=str(cert))
    assert result.ok and result.content == RSS


@pytest.fixture
def http2_server(self_signed_files: tuple[Path, Path]) -> Iterator[tuple[str, list[str]]]:
    """hypercorn over TLS on 127.0.0.1, offering HTTP/2: (base URL, what it saw: one
    "HTTP-version client-port" line per request)."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    cert, key = self_signed_files
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(f"{scope['http_version']} {scope['client'][1]}")
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": RSS})

    config = Config()
    port = _closed_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = str(cert), str(key)
    config.accesslog = config.errorlog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()

    async def run() -> None:
        loop.call_soon(started.set)
        await serve(app, config, shutdown_trigger=stop.wait, mode="asgi")  # type: ignore[arg-type]

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    started.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until it listens
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}", seen
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


@pytest.mark.parametrize("http2", [True, False], ids=["http2", "http1.1"])
async def test_http2_carries_many_requests_on_one_connection(
    http2_server: tuple[str, list[str]], self_signed_files: tuple[Path, Path], http2: bool
) -> None:
    base, seen = http2_server
    cert, _ = self_signed_files
    urls = [f"{base}/feed/{i}.xml" for i in range(20)]
    async with FeedFetcher(settings(ca_file=str(cert), http2=http2)) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(u) for u in urls))
    assert all(r.ok and r.content == RSS for r in results), [r.error for r in results]
    versions = {line.split()[0] for line in seen}
    connections = {line.split()[1] for line in seen}
    if http2:
        assert versions == {"2"} and len(connections) == 1
    else:
        assert versions == {"1.1"} and 1 < len(connections) <= PER_HOST_START + 20


_DATE = "Sun, 01 Jun 2025 12:00:00 GMT"


@pytest.mark.parametrize(
    ("retry_after", "date", "hold", "poll_delay"),
    [
        ("120", None, 120.0, timedelta(seconds=120)),
        ("0", None, 0.0, timedelta(0)),
        ("+7200", None, DEFAULT_HOST_HOLD, None),  # delay-seconds = 1*DIGIT
        ("1.5", None, DEFAULT_HOST_HOLD, None),
        ("-5", None, DEFAULT_HOST_HOLD, None),
        ("soon", _DATE, DEFAULT_HOST_HOLD, None),
        ("9" * 500, None, MAX_HOST_HOLD, timedelta(hours=24)),
        ("Sun, 01 Jun 2025 12:10:00 GMT", _DATE, 600.0, timedelta(minutes=10)),
        ("Sun, 01 Jun 2025 12:10:00 GMT", None, DEFAULT_HOST_HOLD, timedelta(minutes=10)),
    ],
)
def test_retry_after_is_read_one_way_by_the_host_gate_and_the_poll(
    retry_after: str, date: str | None, hold: float, poll_delay: timedelta | None
) -> None:
    """One reading of Retry-After (RFC 9110 section 10.2.3) for the fetcher's per-host
    hold and the feed's next poll: what one cannot read, the other cannot either (the
    gate then holds ``DEFAULT_HOST_HOLD``); a date needs a time to be read against (the
    answer's Date for the gate, the poll's clock for the feed)."""
    headers = {"retry-after": retry_after, **({"date": date} if date else {})}
    assert retry_after_hold(headers) == hold
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after(retry_after, now=now, cap=timedelta(hours=24)) == poll_delay
