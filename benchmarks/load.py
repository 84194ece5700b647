"""Load benchmarks (THREATS.md group L): each case against a baseline measured in the same run.

    python -m benchmarks.load                  # every case; about 10 minutes on 2 cores
    python -m benchmarks.load --quick          # smaller sizes; about 2 minutes
    python -m benchmarks.load --only L1,L3     # some cases
    python -m benchmarks.load --scale          # L1 at 10,000 feeds, L4 at 100,000 subscribers

- L1: 2,000 feeds on one loopback server (each on its own 127.0.x.y address), some slow
  and some failing (500s, hangs): one full ``poll_feeds`` cycle against the httpx fetch
  floor of the same feeds and against the same cycle over the healthy feeds alone; peak
  memory; the most TCP sockets open at once, counted in the polling process and by the
  server, against the configured connection limit.
- L2: one feed of 10,000 entries and ~15 MB, polled with raised parse limits, against
  ``feedparser.parse`` of the same bytes: time and peak memory.
- L3: a million stored entries: the timeline's first page, a deep keyset page, a source
  filter, a search and the digest candidate query, each with its query plan (a full scan
  of ``entries`` is flagged) and p50/p95 against a trivial indexed query.
- L4: 100,000 subscribers to the loopback SMTP server through ``aggregator digest send``:
  throughput against ready bytes over smtplib, the sender's memory at 25/50/100 %, and a
  run killed (SIGKILL) half way and restarted: every subscriber got exactly one message,
  at most one got two.
- L5: polling writes (new entries every cycle) while the web app under uvicorn serves
  steady read traffic: responses by status, 5xx and "database is locked" in the server
  log, latency p50/p95 against the same traffic with no writer.

Nothing is asserted: figures and ratios are printed and written to
``benchmarks/.work/results-load.json``. Everything listens on loopback only, is bounded
in count and time, and stops by itself. Measured work runs in child processes
(``--child``) so that memory figures are clean.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import platform
import random
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from html import escape
from pathlib import Path
from types import ModuleType
from typing import Any

from . import REPO, WORK
from .corpus import loopback_host
from .measure import Measured, become_subreaper, run_measured
from .server import Behaviour, FeedServer, ServedFeed

RESULTS = WORK / "results-load.json"
CASES = ("L1", "L2", "L3", "L4", "L5")
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SAMPLE_SECONDS = 0.01  # socket counting in the polling process
MB = 1e6


@dataclass(frozen=True)
class Sizes:
    feeds: int  # L1
    hang_timeout: float  # L1: read timeout that ends a hanging feed
    big_entries: int  # L2
    stored: int  # L3
    query_runs: int  # L3
    subscribers: int  # L4
    requests: int  # L5, per phase
    l5_feeds: int


FULL = Sizes(2000, 20.0, 10_000, 1_000_000, 100, 100_000, 1200, 20)
QUICK = Sizes(300, 8.0, 2_000, 100_000, 30, 2_000, 300, 10)
# The scale rows: L1 with 10,000 feeds, L4 with 100,000 subscribers (--scale).
SCALE = Sizes(10_000, 20.0, 10_000, 1_000_000, 100, 100_000, 1200, 20)

_TEXT = (
    "cluster learning layers network scale apprentices tools memory latency cache kernel "
    "scheduler thread queue workload benchmark profile compiler storage packet socket "
    "request response server client database index query planner project workshop "
    "teachers students partners research design prototype evaluation community practice "
    "knowledge scaffolding informal workplace healthcare construction training pilot "
    "study results report deliverable meeting review consortium feedback iteration "
    "release version upgrade measure faster slower regression improvement baseline "
    "median percentile variance noise warm cold startup shutdown restart failure recovery"
)
_WORDS = _TEXT.split()


# --- shared helpers -------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(REPO)
    env.pop("AGGREGATOR_CONFIG", None)
    return env


def hwm_mb() -> float:
    """Peak resident set of this process (VmHWM)."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    return math.nan


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return math.nan


def tests_module(name: str) -> ModuleType:
    """A helper module of the test suite (loopback feed and SMTP servers)."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module(name)


def run_child(
    kind: str, params: dict[str, Any], work: Path, label: str, timeout: float = 600.0
) -> Measured:
    """``python -m benchmarks.load --child KIND`` measured as a whole process tree."""
    params_file = work / f"{label}.params.json"
    params_file.write_text(json.dumps(params), encoding="utf-8")
    out = work / f"{label}.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.load",
        "--child",
        kind,
        "--params",
        str(params_file),
        "--out",
        str(out),
    ]
    measured = run_measured(
        label,
        argv,
        env=child_env(),
        cwd=REPO,
        log=work / f"{label}.log",
        report=out,
        timeout=timeout,
    )
    if not measured.ok:
        print(f"    {label} failed (exit {measured.returncode}); see {measured.log}")
    return measured


def phase(measured: Measured) -> float:
    return float(measured.report.get("phase_wall", math.nan))


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def rss_document(title: str, site: str, items: Sequence[tuple[str, str, str, datetime]]) -> bytes:
    """RSS 2.0: items are (guid, title, html, published)."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0">\n<channel>\n',
        f"<title>{escape(title)}</title>\n<link>{site}</link>\n",
        "<description>load benchmark</description>\n",
    ]
    for guid, item_title, html, published in items:
        parts.append(
            f"<item><title>{escape(item_title)}</title><link>{site}{guid}</link>"
            f'<guid isPermaLink="false">{guid}</guid>'
            f"<pubDate>{format_datetime(published)}</pubDate>"
            f"<description>{escape(html)}</description></item>\n"
        )
    parts.append("</channel>\n</rss>\n")
    return "".join(parts).encode("utf-8")


def paragraph(rng: random.Random, words: int) -> str:
    return "<p>" + " ".join(rng.choice(_WORDS) for _ in range(words)) + "</p>"


def fetch_config(
    db: Path, *, read_timeout: float | None = None, limits: dict[str, int] | None = None
) -> dict[str, Any]:
    fetch: dict[str, Any] = {"allow_private_addresses": True}
    if read_timeout is not None:
        fetch["read_timeout"] = read_timeout
    raw: dict[str, Any] = {"database": str(db), "fetch": fetch}
    if limits:
        raw["limits"] = limits
    return raw


# --- L1: a loopback server of many feeds, some slow, some failing ----------------------


@dataclass(frozen=True)
class FeedSpec:
    kind: str  # ok, slow, error (HTTP 500) or hang (reads the request, never answers)
    delay: float
    body: bytes

    def served(self, host: str) -> ServedFeed:
        behaviour: Behaviour = "hang" if self.kind == "hang" else "ok"
        if self.kind == "error":
            behaviour = "error"
        return ServedFeed(
            host, "/feed.xml", self.body, "application/rss+xml", self.delay, behaviour=behaviour
        )


def l1_kind(index: int) -> str:
    if index % 100 == 37:
        return "hang"  # 1 %
    if index % 50 == 11:
        return "error"  # 2 %
    if index % 33 == 5:
        return "slow"  # 3 %
    return "ok"


def l1_specs(count: int) -> dict[str, FeedSpec]:
    specs = {}
    for index in range(count):
        rng = random.Random(f"L1:{index}")
        kind = l1_kind(index)
        delay = 2.0 + index % 4 if kind == "slow" else (20 + index * 7919 % 31) / 1000
        site = f"https://blog{index}.example/"
        items = [
            (
                f"p{index}-{n}",
                " ".join(rng.choice(_WORDS) for _ in range(5)).capitalize(),
                paragraph(rng, 80),
                NOW - timedelta(days=n, minutes=index),
            )
            for n in range(5)
        ]
        specs[loopback_host(index)] = FeedSpec(
            kind, delay, rss_document(f"Blog {index}", site, items)
        )
    return specs


class SocketWatch:
    """Counts the TCP sockets this process holds open, every SAMPLE_SECONDS: socket fds
    in /proc/self/fd, less the Unix sockets (asyncio's self-pipe, the parse workers')."""

    def __init__(self) -> None:
        self.peak = 0
        self.samples = 0
        self._kinds: dict[str, bool] = {}  # inode -> is TCP
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="socket-watch", daemon=True)

    def start(self) -> SocketWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, self.count())
            self.samples += 1

    def count(self) -> int:
        inodes = []
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{name}")
                if target.startswith("socket:["):
                    inodes.append(target[8:-1])
        unknown = [inode for inode in inodes if inode not in self._kinds]
        if unknown:
            unix = set()
            with open("/proc/self/net/unix", encoding="ascii") as table:
                next(table)
                for line in table:
                    fields = line.split()
                    if len(fields) > 6:
                        unix.add(fields[6])
            for inode in unknown:
                self._kinds[inode] = inode not in unix
        return sum(self._kinds[inode] for inode in inodes)


def child_l1_floor(params: dict[str, Any]) -> dict[str, Any]:
    """httpx alone: GET every feed with our fetcher's limits and timeouts, read the body."""
    import httpx

    from aggregator.fetch import FetchSettings

    s = FetchSettings(read_timeout=params["read_timeout"])
    statuses: Counter[str] = Counter()

    async def run() -> float:
        limits = httpx.Limits(
            max_connections=s.max_connections, max_keepalive_connections=s.max_connections
        )
        timeout = httpx.Timeout(
            connect=s.connect_timeout, read=s.read_timeout, write=s.read_timeout, pool=None
        )
        hosts: dict[str, asyncio.Semaphore] = {}
        gate = asyncio.Semaphore(s.max_connections)
        async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:

            async def one(url: str) -> None:
                host = hosts.setdefault(url.split("/")[2], asyncio.Semaphore(s.max_per_host))
                async with host, gate:
                    try:
                        async with asyncio.timeout(s.total_timeout):
                            response = await client.get(url)
                        statuses[str(response.status_code)] += 1
                    except (httpx.HTTPError, TimeoutError) as error:
                        statuses[type(error).__name__] += 1

            started = time.perf_counter()
            await asyncio.gather(*(one(url) for url in params["urls"]))
            return time.perf_counter() - started

    watch = SocketWatch().start()
    wall = asyncio.run(run())
    watch.stop()
    return {
        "phase_wall": wall,
        "statuses": dict(statuses),
        "socket_peak": watch.peak,
        "hwm_mb": hwm_mb(),
    }


def child_l1_ours(params: dict[str, Any]) -> dict[str, Any]:
    from aggregator.config import settings_from_mapping
    from aggregator.models import FeedSource
    from aggregator.pipeline import poll_feeds
    from aggregator.sources import add_source
    from aggregator.store import Store

    db = Path(params["db"])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    settings = settings_from_mapping(
        fetch_config(db, read_timeout=params["read_timeout"]), env={}, path=None
    )
    store = Store.open(db)
    now = datetime.now(UTC)
    for url in params["urls"]:
        add_source(store, FeedSource(url=url), origin="cli", now=now)
    healthy = set(params["healthy"])
    done: dict[str, float] = {}
    watch = SocketWatch().start()
    started = time.perf_counter()
    summaries = asyncio.run(
        poll_feeds(
            settings,
            store,
            on_result=lambda s: done.__setitem__(s.url, time.perf_counter() - started),
        )
    )
    wall = time.perf_counter() - started
    watch.stop()
    stored = store.conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    store.close()
    statuses = Counter(s.status for s in summaries)
    errors = Counter(re.sub(r"https?://\S+", "URL", s.error)[:80] for s in summaries if s.error)
    return {
        "phase_wall": wall,
        "statuses": dict(statuses),
        "errors": dict(errors.most_common(5)),
        "entries_stored": stored,
        "healthy_done_s": max((t for url, t in done.items() if url in healthy), default=0.0),
        "socket_peak": watch.peak,
        "socket_samples": watch.samples,
        "max_connections": settings.fetch.max_connections,
        "max_per_host": settings.fetch.max_per_host,
        "hwm_mb": hwm_mb(),
    }


def case_l1(sizes: Sizes, work: Path) -> dict[str, Any]:
    """L1: 2,000 feeds (10,000 with --scale) on one loopback server, some slow and some
    failing: one cycle within budget; open sockets within the concurrency limit."""
    specs = l1_specs(sizes.feeds)
    kinds = Counter(spec.kind for spec in specs.values())
    print(
        f"  {sizes.feeds} feeds: {kinds['ok']} healthy (20-50 ms), {kinds['slow']} slow (2-5 s), "
        f"{kinds['error']} answering 500, {kinds['hang']} hanging "
        f"(cut by the {sizes.hang_timeout:g} s read timeout)"
    )
    feeds = {host: spec.served(host) for host, spec in specs.items()}
    with FeedServer(feeds.values()).start() as server:
        urls = [server.url(feed) for feed in feeds.values()]
        healthy = [server.url(feeds[h]) for h, spec in specs.items() if spec.kind == "ok"]
        base = {"read_timeout": sizes.hang_timeout}
        runs: dict[str, tuple[Measured, dict[str, Any]]] = {}
        plan = [
            ("floor", "l1-floor", {**base, "urls": urls}),
            ("ours", "l1-ours", {**base, "urls": urls, "healthy": healthy}),
            ("healthy-only", "l1-ours", {**base, "urls": healthy, "healthy": healthy}),
        ]
        for name, kind, params in plan:
            if kind == "l1-ours":
                params["db"] = str(work / f"l1-{name}.sqlite3")
            measured = run_child(kind, params, work, f"l1-{name}")
            seen = server.traffic
            requests: Counter[str] = Counter()
            for host, count in seen.requests.items():
                requests[specs[host].kind if host in specs else "missing"] += count
            traffic = {
                "connections": seen.connections,
                "open_peak": seen.open_peak,
                "per_host_peak": seen.per_host_peak,
                "requests": dict(requests),
                "answered": {str(k): v for k, v in seen.answered.items()},
            }
            runs[name] = (measured, traffic)
            server.idle()
    floor, ours, alone = (runs[n][0] for n in ("floor", "ours", "healthy-only"))
    report = ours.report
    limit = int(report.get("max_connections", 0))
    rows = []
    for name, (m, traffic) in runs.items():
        rows.append(
            f"    {name:<13} wall {phase(m):6.2f} s  CPU {m.cpu:6.1f} s  peak PSS "
            f"{m.peak_pss_mb:5.0f} MB  maxRSS {m.max_rss_mb:5.0f} MB  sockets "
            f"{m.report.get('socket_peak', '—')} (client) / {traffic['open_peak']} (server), "
            f"per host {traffic['per_host_peak']}"
        )
    print("\n".join(rows))
    print(
        f"    ours: {report.get('statuses')}, {report.get('entries_stored')} entries; "
        f"errors {report.get('errors')}"
    )
    print(
        f"    healthy feeds all done {report.get('healthy_done_s', math.nan):.2f} s into the mixed "
        f"cycle vs {alone.report.get('healthy_done_s', math.nan):.2f} s with no slow or failing "
        f"feed"
    )
    result = {
        "feeds": sizes.feeds,
        "kinds": dict(kinds),
        "runs": {n: measured_json(m) | {"server": t} for n, (m, t) in runs.items()},
        "ours_over_floor": ratio(phase(ours), phase(floor)),
        "ours_over_healthy_only": ratio(phase(ours), phase(alone)),
        "socket_limit": limit,
        "per_host_limit": report.get("max_per_host"),
    }
    summary = [
        (
            "L1",
            f"{sizes.feeds} feeds, one cycle (mixed)",
            f"{phase(ours):.1f} s",
            f"httpx floor {phase(floor):.1f} s; healthy-only {phase(alone):.1f} s",
            f"{result['ours_over_floor']:.2f}x / {result['ours_over_healthy_only']:.2f}x",
        ),
        (
            "L1",
            "peak memory (PSS, whole tree)",
            f"{ours.peak_pss_mb:.0f} MB",
            f"httpx floor {floor.peak_pss_mb:.0f} MB",
            f"{ratio(ours.peak_pss_mb, floor.peak_pss_mb):.2f}x",
        ),
        (
            "L1",
            "TCP sockets open at once",
            f"{report.get('socket_peak')} client / {runs['ours'][1]['open_peak']} server",
            f"limit {limit} (per host {report.get('max_per_host')}; "
            f"seen {runs['ours'][1]['per_host_peak']})",
            "within" if int(report.get("socket_peak", 0)) <= limit else "OVER",
        ),
    ]
    result["summary"] = summary
    return result


def measured_json(m: Measured) -> dict[str, Any]:
    return {
        "ok": m.ok,
        "phase_wall_s": phase(m),
        "process_wall_s": m.wall,
        "cpu_s": m.cpu,
        "peak_pss_mb": m.peak_pss_mb,
        "max_rss_mb": m.max_rss_mb,
        "report": m.report,
        "log": m.log,
    }


# --- L2: one huge feed ----------------------------------------------------------------


def l2_document(entries: int) -> bytes:
    """``entries`` items of ~1.5 KB each: about 15 MB at 10,000."""
    rng = random.Random(f"L2:{entries}")
    items = [
        (
            f"big-{n}",
            " ".join(rng.choice(_WORDS) for _ in range(6)).capitalize() + f" {n}",
            paragraph(rng, 90) + paragraph(rng, 60),
            NOW - timedelta(minutes=7 * n),
        )
        for n in range(entries)
    ]
    return rss_document("A very long feed", "https://big.example/", items)


def child_l2_parse(params: dict[str, Any]) -> dict[str, Any]:
    import feedparser

    data = Path(params["file"]).read_bytes()
    started = time.perf_counter()
    parsed = feedparser.parse(data)
    return {
        "phase_wall": time.perf_counter() - started,
        "entries": len(parsed.entries),
        "bozo": bool(parsed.bozo),
        "hwm_mb": hwm_mb(),
    }


def child_l2_poll(params: dict[str, Any]) -> dict[str, Any]:
    from aggregator.config import settings_from_mapping
    from aggregator.models import FeedSource
    from aggregator.pipeline import poll_feeds
    from aggregator.sources import add_source
    from aggregator.store import Store

    db = Path(params["db"])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    raw = fetch_config(db, limits=params["limits"])
    settings = settings_from_mapping(raw, env={}, path=None)
    store = Store.open(db)
    add_source(store, FeedSource(url=params["url"]), origin="cli", now=datetime.now(UTC))
    started = time.perf_counter()
    summaries = asyncio.run(poll_feeds(settings, store))
    wall = time.perf_counter() - started
    stored = store.conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    store.close()
    return {
        "phase_wall": wall,
        "status": summaries[0].status if summaries else None,
        "error": summaries[0].error if summaries else None,
        "entries_stored": stored,
        "hwm_mb": hwm_mb(),
    }


def case_l2(sizes: Sizes, work: Path) -> dict[str, Any]:
    """L2: one feed of 10,000 entries and 15 MB: bounded time and memory."""
    path = work / f"l2-{sizes.big_entries}.xml"
    if not path.exists():
        path.write_bytes(l2_document(sizes.big_entries))
    data = path.read_bytes()
    size = len(data)
    print(f"  one feed: {sizes.big_entries} entries, {size / MB:.1f} MB")
    server = tests_module("feedserver").FeedServer().start()
    try:
        url = server.add("/big.xml", data, etag='"big-1"')
        limits = {
            "max_entries": sizes.big_entries,
            "max_document_bytes": max(size * 2, 32 * 1024 * 1024),
        }
        parse = run_child("l2-parse", {"file": str(path)}, work, "l2-parse")
        poll = run_child(
            "l2-poll",
            {"db": str(work / "l2.sqlite3"), "url": url, "limits": limits},
            work,
            "l2-poll",
        )
    finally:
        server.stop()
    for name, m in (("feedparser.parse", parse), ("ours: poll", poll)):
        print(
            f"    {name:<17} wall {phase(m):6.2f} s  CPU {m.cpu:6.1f} s  peak PSS "
            f"{m.peak_pss_mb:5.0f} MB  maxRSS {m.max_rss_mb:5.0f} MB"
        )
    print(
        f"    ours: {poll.report.get('status')}, {poll.report.get('entries_stored')} entries "
        f"stored (feedparser found {parse.report.get('entries')})"
        + (f"; error: {poll.report['error']}" if poll.report.get("error") else "")
    )
    time_ratio = ratio(phase(poll), phase(parse))
    memory_ratio = ratio(poll.peak_pss_mb, parse.peak_pss_mb)
    return {
        "entries": sizes.big_entries,
        "bytes": size,
        "limits": limits,
        "parse": measured_json(parse),
        "poll": measured_json(poll),
        "time_ratio": time_ratio,
        "memory_ratio": memory_ratio,
        "summary": [
            (
                "L2",
                f"poll of one {size / MB:.0f} MB feed, {sizes.big_entries} entries",
                f"{phase(poll):.1f} s",
                f"feedparser.parse {phase(parse):.1f} s",
                f"{time_ratio:.2f}x",
            ),
            (
                "L2",
                "peak memory (PSS, whole tree)",
                f"{poll.peak_pss_mb:.0f} MB",
                f"feedparser.parse {parse.peak_pss_mb:.0f} MB",
                f"{memory_ratio:.2f}x",
            ),
        ],
    }


# --- L3: a million stored entries -----------------------------------------------------

L3_FEEDS = 500
L3_VERSION = 1


def l3_database(entries: int) -> Path:
    """Entries written with executemany into a Store-created database; cached."""
    path = WORK / f"load-l3-{entries}-v{L3_VERSION}.sqlite3"
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    for leftover in WORK.glob(partial.name + "*"):
        leftover.unlink()
    started = time.perf_counter()
    from aggregator.store import Store
    from aggregator.store.codec import to_db

    Store.open(partial).close()
    conn = sqlite3.connect(partial, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA synchronous = OFF")
    extras = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'entries' "
        "AND type IN ('index', 'trigger') AND sql IS NOT NULL"
    ).fetchall()
    conn.execute("BEGIN")
    for kind, name, _ in extras:
        conn.execute(f"DROP {kind.upper()} {name}")
    stamp = to_db(NOW - timedelta(days=1))
    conn.executemany(
        "INSERT INTO feeds (id, url, title, origin, added_at, backlog_seq) "
        "VALUES (?, ?, ?, 'cli', ?, 0)",
        [(n, f"https://blog{n}.test/feed", f"Blog {n}", stamp) for n in range(1, L3_FEEDS + 1)],
    )
    rng = random.Random(f"L3:{entries}")
    vocabulary = sorted({a + b for a in _WORDS for b in ("", "s", "ed", "ing")})
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    span = 3 * 365 * 24 * 3600
    oldest = NOW - timedelta(seconds=span)

    def rows() -> Iterator[tuple[Any, ...]]:
        for n in range(1, entries + 1):
            feed = rng.randint(1, L3_FEEDS)
            words = rng.choices(vocabulary, weights, k=16)
            title = " ".join(words[:5]).capitalize()
            text = " ".join(words)
            html = f"<p>{text}</p>"
            # Ingest order follows time, with feeds backdating by up to two days.
            published = to_db(oldest + timedelta(seconds=span * n / entries - rng.random() * 2e5))
            link = f"https://blog{feed}.test/{n}"
            duplicate_of = rng.randint(max(1, n - 5000), n - 1) if n > 1 and n % 20 == 0 else None
            yield (
                feed, link, link, link, link, title, title.lower(), html, html, text,
                f"h{n}", published, published, published, duplicate_of,
            )  # fmt: skip

    conn.executemany(
        "INSERT INTO entries (feed_id, key, link_key, link, canonical_url, title, norm_title, "
        "summary_html, content_html, text, content_hash, published, first_seen, last_changed, "
        "duplicate_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    for _, _, sql in extras:
        conn.execute(sql)
    conn.execute("INSERT INTO entries_fts (entries_fts) VALUES ('rebuild')")
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    partial.rename(path)
    print(f"  generated {entries} entries in {time.perf_counter() - started:.0f} s: {path.name}")
    return path


def full_scans(plan: Sequence[str]) -> list[str]:
    """Plan lines that read the whole entries table (no index, no rowid range)."""
    return [
        line
        for line in plan
        if re.match(r"SCAN (e|entries)\b", line.strip()) and "USING" not in line
    ]


def case_l3(sizes: Sizes, work: Path) -> dict[str, Any]:
    """L3: a million stored entries: timeline and digest queries use their indexes."""
    from aggregator.store import Store, timeline
    from aggregator.store import digests as digest_rows
    from aggregator.store import subscribers as subscriber_rows
    from aggregator.store.codec import to_db

    path = l3_database(sizes.stored)
    store = Store.open(path)
    conn = store.conn
    top = conn.execute("SELECT max(id) FROM entries").fetchone()[0]
    stories = conn.execute("SELECT count(*) FROM entries WHERE duplicate_of IS NULL").fetchone()[0]
    deep = conn.execute(
        "SELECT published, id FROM entries WHERE +duplicate_of IS NULL "
        "ORDER BY published DESC, id DESC LIMIT 1 OFFSET ?",
        [int(stories * 0.8)],
    ).fetchone()
    busiest = conn.execute(
        "SELECT feed_id FROM entries GROUP BY feed_id ORDER BY count(*) DESC LIMIT 1"
    ).fetchone()[0]
    term = sorted({a + b for a in _WORDS for b in ("", "s", "ed", "ing")})[60]
    hits = conn.execute(
        "SELECT count(*) FROM entries_fts WHERE entries_fts MATCH ?", [f'"{term}"']
    ).fetchone()[0]
    stamp = to_db(NOW)
    with store.write() as db:
        db.execute("DELETE FROM subscribers WHERE email_key LIKE 'load-l3-%'")
        ids: list[int] = []
        for n, all_feeds in enumerate((1, 0)):
            cursor = db.execute(
                "INSERT INTO subscribers (email, email_key, status, cadence, all_feeds, "
                "watermark, created_at, confirmed_at, status_changed_at) "
                "VALUES (?, ?, 'confirmed', 'daily', ?, ?, ?, ?, ?)",
                [f"load-l3-{n}@example.org", f"load-l3-{n}", all_feeds, top - 5000] + [stamp] * 3,
            )
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
        db.conn.executemany(
            "INSERT INTO subscriber_feeds (subscriber_id, feed_id) VALUES (?, ?)",
            [(ids[1], feed) for feed in (1, 2, 3, busiest)],
        )
    everyone = subscriber_rows.get(store.db, ids[0])
    some = subscriber_rows.get(store.db, ids[1])
    assert everyone is not None and some is not None
    before = timeline.Cursor(deep[0], deep[1])
    search = timeline.fts_query(term)
    baseline_sql = f"SELECT id FROM entries WHERE id > {top - 50} ORDER BY id DESC"
    cases: list[tuple[str, Callable[[], object]]] = [
        ("baseline: 50 newest ids", lambda: conn.execute(baseline_sql).fetchall()),
        ("timeline first page", lambda: timeline.timeline_page(store.db)),
        ("deep keyset page (80%)", lambda: timeline.timeline_page(store.db, before=before)),
        (f"source filter (feed {busiest})",
         lambda: timeline.timeline_page(store.db, feed_id=busiest)),
        (f"search {term!r} ({hits} hits)", lambda: timeline.timeline_page(store.db, search=search)),
        ("digest candidates, all sources", lambda: digest_rows.candidates(store.db, everyone, top)),
        ("digest candidates, 4 sources", lambda: digest_rows.candidates(store.db, some, top)),
    ]  # fmt: skip
    print(
        f"  {sizes.stored} entries ({stories} stories) across {L3_FEEDS} feeds; "
        f"{sizes.query_runs} runs per query; subscribers' watermark 5,000 entries back"
    )
    results: list[dict[str, Any]] = []
    flagged_total = 0
    base50 = base95 = math.nan
    for name, action in cases:
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        action()
        conn.set_trace_callback(None)
        plans = []
        for sql in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            plans.append({"sql": sql[:300], "plan": plan, "full_scans": full_scans(plan)})
        for _ in range(max(3, sizes.query_runs // 10)):
            action()
        samples = []
        for _ in range(sizes.query_runs):
            started = time.perf_counter()
            action()
            samples.append((time.perf_counter() - started) * 1000)
        p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
        if name.startswith("baseline"):
            base50, base95 = p50, p95
        flagged = [line for p in plans for line in p["full_scans"]]
        flagged_total += len(flagged) if not name.startswith("baseline") else 0
        results.append(
            {"case": name, "p50_ms": p50, "p95_ms": p95, "x_p50": ratio(p50, base50),
             "x_p95": ratio(p95, base95), "plans": plans, "full_scans": flagged}
        )  # fmt: skip
        print(
            f"    {name:<34} p50 {p50:8.2f} ms  p95 {p95:8.2f} ms  "
            f"x{ratio(p50, base50):7.1f} / x{ratio(p95, base95):7.1f}"
            + ("  FULL SCAN: " + "; ".join(flagged) if flagged else "")
        )
        for p in plans:
            print("      plan: " + " | ".join(p["plan"]))
    with store.write() as db:
        db.execute("DELETE FROM subscribers WHERE email_key LIKE 'load-l3-%'")
    store.close()
    slowest = max(results[1:], key=lambda r: r["p95_ms"])
    return {
        "entries": sizes.stored,
        "database": str(path),
        "queries": results,
        "full_scans": flagged_total,
        "summary": [
            (
                "L3",
                f"{len(results) - 1} queries over {sizes.stored:,} entries: full scans of entries",
                str(flagged_total),
                "—",
                "indexed" if flagged_total == 0 else "SCAN",
            ),
            (
                "L3",
                f"slowest p95: {slowest['case']}",
                f"{slowest['p95_ms']:.1f} ms",
                f"50 newest ids {base95:.2f} ms",
                f"{slowest['x_p95']:.0f}x",
            ),
        ]
        + [
            (
                "L3",
                r["case"],
                f"{r['p50_ms']:.2f} / {r['p95_ms']:.2f} ms",
                f"{base50:.2f} / {base95:.2f} ms",
                f"{r['x_p50']:.0f}x / {r['x_p95']:.0f}x",
            )
            for r in results[1:]
        ],
    }


# --- L4: 100,000 subscribers, a kill half way -----------------------------------------


def counting_smtp_server() -> Any:
    """The test suite's SMTP server, keeping only each message's recipient and Message-ID
    (and the first message whole, for the baseline)."""
    base = tests_module("smtpserver").SmtpServer
    message_id = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)

    class Counting(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.log: list[tuple[str, str]] = []
            self.sample: bytes | None = None
            self.times: list[float] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            data = envelope.original_content or b""
            head = data.split(b"\r\n\r\n", 1)[0]
            found = message_id.search(head)
            if self.sample is None:
                self.sample = data
            with self._lock:
                for rcpt in envelope.rcpt_tos:
                    self.log.append((rcpt, found.group(1).decode() if found else ""))
                self.times.append(time.perf_counter())
            return "250 2.0.0 Accepted"

        def count(self) -> int:
            return len(self.log)

    return Counting()


def l4_config(work: Path, name: str, seed_db: Path, port: int) -> Path:
    db = work / f"l4-{name}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    source = sqlite3.connect(seed_db)
    target = sqlite3.connect(db)
    source.backup(target)
    source.close()
    target.close()
    config = work / f"l4-{name}.toml"
    config.write_text(
        f'database = "{db}"\n[web]\nbase_url = "https://digest.example.org"\n'
        f'[mail]\nfrom = "Blog digest <digest@digest.example.org>"\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {port}\nsmtp_security = "none"\n',
        encoding="utf-8",
    )
    return config


def run_sender(
    config: Path, server: Any, log: Path, *, kill_at: int | None = None, timeout: float = 600
) -> dict[str, Any]:
    """``aggregator digest send`` as a process; its RSS sampled against the count arrived."""
    argv = [sys.executable, "-m", "aggregator", "--config", str(config), "digest", "send"]
    before = server.count()
    started = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=out, stderr=out)
        samples: list[tuple[int, float]] = []
        killed = False
        deadline = started + timeout
        while proc.poll() is None:
            arrived = server.count() - before
            samples.append((arrived, rss_mb(proc.pid)))
            if kill_at is not None and arrived >= kill_at:
                proc.send_signal(signal.SIGKILL)
                killed = True
                proc.wait()
                break
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.05)
    return {
        "returncode": proc.returncode,
        "killed": killed,
        "wall": time.perf_counter() - started,
        "arrived": server.count() - before,
        "samples": samples,
    }


def rss_at(samples: Sequence[tuple[int, float]], total: int, fraction: float) -> float:
    """The sender's RSS when ``fraction`` of the messages had arrived (the last sample for
    100 %, taken just before the process ended)."""
    good = [(n, r) for n, r in samples if not math.isnan(r)]
    if fraction >= 1:
        return good[-1][1] if good else math.nan
    return next((r for n, r in good if n >= total * fraction), math.nan)


def wire_baseline(port: int, sample: bytes, recipients: Sequence[str]) -> float:
    """Messages per second: the same bytes, sent with smtplib over one connection."""
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as connection:
        for rcpt in recipients:
            connection.sendmail("digest@digest.example.org", [rcpt], sample)
    return len(recipients) / (time.perf_counter() - started)


def case_l4(sizes: Sizes, work: Path) -> dict[str, Any]:
    """L4: 100,000 subscribers (--quick: 2,000) to the loopback SMTP server in one digest
    run: time, throughput, flat memory; a kill (SIGKILL) half way, then a restart that
    delivers the rest with no loss and at most one repeat."""
    from .digest import seed

    count = sizes.subscribers
    timeout = max(600.0, count / 20)  # seconds: 20 messages a second at the very least
    seed_db = work / f"l4-seed-{count}.sqlite3"
    if not seed_db.exists():
        partial = seed_db.with_suffix(".partial")
        for leftover in work.glob(partial.name + "*"):
            leftover.unlink()
        seed(partial, count, 500, random.Random(4))
        conn = sqlite3.connect(partial)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        partial.rename(seed_db)
    print(f"  {count} confirmed subscribers, 500 new entries on two sources")
    server = counting_smtp_server().start()
    try:
        config = l4_config(work, "run", seed_db, server.port)
        log = work / "l4-run.log"
        log.unlink(missing_ok=True)
        server.times.clear()
        run = run_sender(config, server, log, timeout=timeout)
        arrived = run["arrived"]
        times = list(server.times)
        send_rate = (arrived - 1) / (times[-1] - times[0]) if len(times) > 1 else math.nan
        memory = {f"{int(f * 100)}%": rss_at(run["samples"], arrived, f) for f in (0.25, 0.5, 1.0)}
        per_address = Counter(rcpt for rcpt, _ in server.log)
        complete = len(per_address) == count and max(per_address.values(), default=0) == 1
        wire_count = min(count, 2000)
        sample = server.sample or b""
        wire = wire_baseline(
            server.port, sample, [f"wire{n}@example.org" for n in range(wire_count)]
        )
        print(
            f"    one run: {arrived} messages in {run['wall']:.1f} s (exit {run['returncode']}): "
            f"{arrived / run['wall']:.0f} msgs/s end to end (build included), "
            f"{send_rate:.0f} msgs/s while sending; each subscriber once: {complete}"
        )
        print(
            f"    baseline: {wire_count} ready messages of the same size "
            f"({len(sample) / 1024:.1f} KB) with smtplib over one connection: {wire:.0f} msgs/s"
        )
        print(
            "    sender RSS at "
            + ", ".join(f"{k} {v:.0f} MB" for k, v in memory.items())
            + " of the messages"
        )

        server.log.clear()
        config = l4_config(work, "kill", seed_db, server.port)
        log = work / "l4-kill.log"
        log.unlink(missing_ok=True)
        first = run_sender(config, server, log, kill_at=count // 2, timeout=timeout)
        second = run_sender(config, server, log, timeout=timeout)
        per_address = Counter(rcpt for rcpt, _ in server.log)
        ids: dict[str, set[str]] = {}
        for rcpt, mid in server.log:
            ids.setdefault(rcpt, set()).add(mid)
        twice = sorted(a for a, n in per_address.items() if n > 1)
        missing = count - len(per_address)
        same_id = all(len(ids[a]) == 1 for a in twice)
        resumed_ok = missing == 0 and len(twice) <= 1 and max(per_address.values(), default=0) <= 2
        print(
            f"    killed (SIGKILL) after {first['arrived']} of {count} arrived, restarted: "
            f"{second['arrived']} more (exit {second['returncode']}); "
            f"{len(per_address)} subscribers got it, {missing} missing, {len(twice)} twice"
            + (f" ({', '.join(twice[:3])}, same Message-ID: {same_id})" if twice else "")
        )
    finally:
        server.stop()
    ratio_wire = ratio(wire, send_rate)
    memory_growth = ratio(memory["100%"], memory["25%"])
    return {
        "subscribers": count,
        "run": {k: v for k, v in run.items() if k != "samples"},
        "send_rate": send_rate,
        "end_to_end_rate": arrived / run["wall"],
        "wire_rate": wire,
        "memory_mb": memory,
        "each_once": complete,
        "kill": {
            "first": {k: v for k, v in first.items() if k != "samples"},
            "second": {k: v for k, v in second.items() if k != "samples"},
            "missing": missing,
            "twice": twice,
            "same_message_id": same_id,
            "ok": resumed_ok,
        },
        "summary": [
            (
                "L4",
                f"{count:,} digests through `digest send`",
                f"{send_rate:.0f} msgs/s sending ({arrived / run['wall']:.0f} end to end)",
                f"ready bytes via smtplib {wire:.0f} msgs/s",
                f"{ratio_wire:.1f}x slower",
            ),
            (
                "L4",
                "sender RSS at 25 / 50 / 100 %",
                " / ".join(f"{v:.0f}" for v in memory.values()) + " MB",
                "its own 25 % point",
                f"{memory_growth:.2f}x",
            ),
            (
                "L4",
                "SIGKILL half way, restart",
                f"{missing} missing, {len(twice)} twice",
                "at most 1 twice, 0 missing",
                "ok" if resumed_ok else "FAILED",
            ),
        ],
    }


# --- L5: polling writes beside web reads ----------------------------------------------


READ_RATE = 40.0  # requests per second, steady


def l5_feed_body(feed: int, cycle: int) -> bytes:
    """The feed as seen on its ``cycle``-th request: three entries newer than before."""
    rng = random.Random(f"L5:{feed}:{cycle}")
    newest = 3 * cycle + 10
    items = [
        (
            f"f{feed}-{n}",
            f"Post {n} of blog {feed}: " + " ".join(rng.choice(_WORDS) for _ in range(4)),
            paragraph(rng, 120),
            NOW + timedelta(minutes=n),
        )
        for n in range(newest, newest - 10, -1)
    ]
    return rss_document(f"Busy blog {feed}", f"https://busy{feed}.example/", items)


def child_l5_writer(params: dict[str, Any]) -> dict[str, Any]:
    """Serve ``feeds`` feeds that grow on every request and poll them until told to stop."""
    from aggregator.config import settings_from_mapping
    from aggregator.models import FeedSource
    from aggregator.pipeline import open_poller
    from aggregator.sources import add_source
    from aggregator.store import Store

    feedserver = tests_module("feedserver")
    server = feedserver.FeedServer().start()
    requests: Counter[int] = Counter()
    lock = threading.Lock()

    def handler(feed: int) -> Callable[[], Any]:
        def make() -> Any:
            with lock:
                requests[feed] += 1
                cycle = requests[feed]
            return feedserver.Response(body=l5_feed_body(feed, cycle))

        return make

    db = Path(params["db"])
    settings = settings_from_mapping(fetch_config(db), env={}, path=None)
    store = Store.open(db)
    ours: list[int] = []  # the database's other feeds are not polled
    for feed in range(params["feeds"]):
        server.add_handler(f"/busy/{feed}.xml", handler(feed))
        added, _ = add_source(
            store,
            FeedSource(url=server.url(f"/busy/{feed}.xml")),
            origin="cli",
            now=datetime.now(UTC),
        )
        ours.append(added.id)
    before = store.conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    stop = Path(params["stop"])
    ready = Path(params["ready"])

    def stopped() -> bool:
        return stop.exists()

    def signal_ready() -> None:
        ready.touch()

    cycles: list[float] = []
    statuses: Counter[str] = Counter()

    async def run() -> None:
        async with open_poller(settings, store) as poller:
            deadline = time.monotonic() + params["max_seconds"]
            while not stopped() and time.monotonic() < deadline:
                started = time.perf_counter()
                feeds = await poller.choose(feed_ids=ours)
                for summary in await poller.poll_many(feeds):
                    statuses[summary.status] += 1
                cycles.append(time.perf_counter() - started)
                signal_ready()

    try:
        asyncio.run(run())
    finally:
        server.stop()
    after = store.conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    store.close()
    return {
        "cycles": len(cycles),
        "cycle_p50_s": percentile(cycles, 0.5),
        "statuses": dict(statuses),
        "new_entries": after - before,
        "writes": sum(statuses.values()),
    }


def l5_database(work: Path, quick: bool) -> Path:
    """A copy of the web benchmark's database (100,000 entries; 5,000 with --quick)."""
    with warnings.catch_warnings():  # the web benchmark's test client import
        warnings.simplefilter("ignore")
        from . import web

    size = web.QUICK if quick else web.FULL
    source_path = web.database(size)
    db = work / "l5.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    target = sqlite3.connect(db)
    source.backup(target)
    source.close()
    target.execute("PRAGMA journal_mode = WAL")
    target.close()
    return db


def read_traffic(base: str, paths: Sequence[str], workers: int, rate: float) -> dict[str, Any]:
    """GET each path, the n-th at ``n / rate`` seconds from the start (or as soon as a
    worker is free, when the app falls behind)."""
    import httpx

    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    local = threading.local()

    def one(slot: tuple[int, str]) -> None:
        index, path = slot
        time.sleep(max(0.0, begin + index / rate - time.perf_counter()))
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=base, timeout=30.0, trust_env=False)
        started = time.perf_counter()
        try:
            status = str(client.get(path).status_code)
        except httpx.HTTPError as error:
            status = type(error).__name__
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            statuses[status] += 1
            latencies.append(elapsed)

    begin = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, enumerate(paths)))
    wall = time.perf_counter() - begin
    return {
        "requests": len(paths),
        "wall_s": wall,
        "rate": len(paths) / wall,
        "statuses": dict(statuses),
        "p50_ms": percentile(latencies, 0.5),
        "p95_ms": percentile(latencies, 0.95),
        "max_ms": max(latencies, default=math.nan),
    }


def wait_http(url: str, timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                return True
        time.sleep(0.2)
    return False


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def case_l5(sizes: Sizes, work: Path, quick: bool) -> dict[str, Any]:
    """L5: polling writes while the web serves steady traffic: reads never see "database is
    locked"."""
    db = l5_database(work, quick)
    port = free_port()
    config = work / "l5.toml"
    config.write_text(
        f'database = "{db}"\nlog_level = "info"\n[web]\nport = {port}\n', encoding="utf-8"
    )
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    stories = conn.execute("SELECT count(*) FROM entries WHERE duplicate_of IS NULL").fetchone()[0]
    deep = conn.execute(
        "SELECT published, id FROM entries WHERE +duplicate_of IS NULL "
        "ORDER BY published DESC, id DESC LIMIT 1 OFFSET ?",
        [stories // 2],
    ).fetchone()
    conn.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from .web import SEED, vocabulary

    term = vocabulary(random.Random(SEED))[60]
    mix = ["/", f"/?before={deep[0]}|{deep[1]}", f"/?q={term}", "/?source=1", "/feed.atom"]
    paths = [mix[n % len(mix)] for n in range(sizes.requests)]
    server_log = work / "l5-server.log"
    print(
        f"  web app under uvicorn on 127.0.0.1 over {stories} stories; {sizes.requests} requests "
        f"per phase at {READ_RATE:g}/s from 4 threads ({', '.join(mix)}); "
        f"writer polls {sizes.l5_feeds} feeds, 3 new entries each per cycle"
    )
    with server_log.open("wb") as out:
        web = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(config), "serve"],
            cwd=REPO,
            env=child_env(),
            stdout=out,
            stderr=out,
        )
    writer: subprocess.Popen[bytes] | None = None
    stop = work / "l5.stop"
    ready = work / "l5.ready"
    writer_out = work / "l5-writer.json"
    try:
        base = f"http://127.0.0.1:{port}"
        if not wait_http(base + "/healthz", 60):
            raise RuntimeError(f"web app did not start; see {server_log}")
        read_traffic(base, mix * 4, 4, 1000.0)  # warm up: templates, caches
        alone = read_traffic(base, paths, 4, READ_RATE)
        for leftover in (stop, ready, writer_out):
            leftover.unlink(missing_ok=True)
        params = {
            "db": str(db),
            "feeds": sizes.l5_feeds,
            "stop": str(stop),
            "ready": str(ready),
            "max_seconds": 300,
        }
        params_file = work / "l5-writer.params.json"
        params_file.write_text(json.dumps(params), encoding="utf-8")
        with (work / "l5-writer.log").open("wb") as out:
            writer = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.load", "--child", "l5-writer", "--params",
                 str(params_file), "--out", str(writer_out)],
                cwd=REPO, env=child_env(), stdout=out, stderr=out,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while not ready.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        busy = read_traffic(base, paths, 4, READ_RATE)
        stop.touch()
        writer.wait(120)
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(30)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait()
    written = json.loads(writer_out.read_text(encoding="utf-8")) if writer_out.exists() else {}
    text = server_log.read_text(encoding="utf-8", errors="replace")
    locked = text.lower().count("database is locked")
    server_errors = len(re.findall(r'" 5\d\d\b', text))
    for name, figures in (("no writer", alone), ("with writer", busy)):
        print(
            f"    {name:<12} {figures['requests']} requests in {figures['wall_s']:.1f} s: "
            f"statuses {figures['statuses']}, p50 {figures['p50_ms']:.1f} ms, "
            f"p95 {figures['p95_ms']:.1f} ms, max {figures['max_ms']:.0f} ms"
        )
    print(
        f"    writer: {written.get('cycles')} poll cycles (p50 {written.get('cycle_p50_s', 0):.2f} "
        f"s), {written.get('writes')} feed writes, {written.get('new_entries')} new entries, "
        f"statuses {written.get('statuses')}"
    )
    print(f"    server log: {server_errors} 5xx responses, {locked} 'database is locked'")
    bad = sum(v for k, v in busy["statuses"].items() if k != "200")
    return {
        "requests": sizes.requests,
        "alone": alone,
        "busy": busy,
        "writer": written,
        "log_5xx": server_errors,
        "log_locked": locked,
        "server_log": str(server_log),
        "summary": [
            (
                "L5",
                f"reads while polling writes ({written.get('new_entries')} new entries)",
                f"{busy['statuses']}",
                f"no writer: {alone['statuses']}",
                f"{bad} not 200; log: {server_errors} 5xx, {locked} locked",
            ),
            (
                "L5",
                "read latency p50 / p95",
                f"{busy['p50_ms']:.1f} / {busy['p95_ms']:.1f} ms",
                f"no writer {alone['p50_ms']:.1f} / {alone['p95_ms']:.1f} ms",
                f"{ratio(busy['p50_ms'], alone['p50_ms']):.2f}x / "
                f"{ratio(busy['p95_ms'], alone['p95_ms']):.2f}x",
            ),
        ],
    }


# --- the run --------------------------------------------------------------------------

CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "l1-floor": child_l1_floor,
    "l1-ours": child_l1_ours,
    "l2-parse": child_l2_parse,
    "l2-poll": child_l2_poll,
    "l5-writer": child_l5_writer,
}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def table(rows: Sequence[Sequence[str]]) -> str:
    header = ("case", "what", "ours", "baseline (same run)", "ratio / verdict")
    lines = [tuple(header), *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a smoke run")
    parser.add_argument("--only", default="", help="comma-separated cases: L1,L2,L3,L4,L5")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="the scale rows: L1 with 10,000 feeds and L4 with 100,000 subscribers",
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        params = json.loads(Path(args.params).read_text(encoding="utf-8"))
        report = CHILDREN[args.child](params)
        Path(args.out).write_text(json.dumps(_finite(report), indent=1), encoding="utf-8")
        return 0

    chosen = [c.strip().upper() for c in args.only.split(",") if c.strip()] or (
        ["L1", "L4"] if args.scale else list(CASES)
    )
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; cases: {', '.join(CASES)}")
    sizes = SCALE if args.scale else QUICK if args.quick else FULL
    work = WORK / ("load-scale" if args.scale else "load-quick" if args.quick else "load")
    work.mkdir(parents=True, exist_ok=True)
    become_subreaper()
    load_start = os.getloadavg()
    print(
        f"load benchmark ({'scale' if args.scale else 'quick' if args.quick else 'full'}): "
        f"{', '.join(chosen)}; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load_start[0]:.2f}"
    )
    started = time.perf_counter()
    results_file = RESULTS.with_name("results-load-scale.json") if args.scale else RESULTS
    results: dict[str, Any] = {}
    failed = []
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "L1": lambda: case_l1(sizes, work),
        "L2": lambda: case_l2(sizes, work),
        "L3": lambda: case_l3(sizes, work),
        "L4": lambda: case_l4(sizes, work),
        "L5": lambda: case_l5(sizes, work, args.quick),
    }
    for case in chosen:
        print(f"{case}: {(runners_doc(case) or '').strip()}", flush=True)
        case_started = time.perf_counter()
        try:
            results[case] = runners[case]()
        except Exception as error:  # one broken case must not stop the others
            import traceback

            traceback.print_exc()
            summary = [(case, "failed", repr(error), "", "")]
            results[case] = {"error": repr(error), "summary": summary}
            failed.append(case)
        results[case]["seconds"] = time.perf_counter() - case_started
        print(f"  ({results[case]['seconds']:.0f} s)\n", flush=True)
    rows = [row for case in chosen for row in results[case].get("summary", [])]
    print(table(rows))
    total = time.perf_counter() - started
    print(
        f"whole run {total:.0f} s, load average {os.getloadavg()[0]:.2f} at the end; "
        f"results in {results_file}"
    )
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(
        json.dumps(
            _finite(
                {
                    "quick": args.quick,
                    "sizes": asdict(sizes),
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "platform": platform.platform(),
                    },
                    "cases": results,
                    "table": table(rows),
                    "run_seconds": total,
                    "load_average": {"start": load_start, "end": os.getloadavg()},
                }
            ),
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    return 1 if failed else 0


def runners_doc(case: str) -> str | None:
    return {
        "L1": case_l1.__doc__,
        "L2": case_l2.__doc__,
        "L3": case_l3.__doc__,
        "L4": case_l4.__doc__,
        "L5": case_l5.__doc__,
    }[case]


if __name__ == "__main__":
    sys.exit(main())
