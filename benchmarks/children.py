"""Contenders that run in our own environment, one per child process.

    python -m benchmarks.children fetch-floor --corpus DIR --port P --mode cold|warm --out R
    python -m benchmarks.children parse-floor --corpus DIR --out R [--light]
    python -m benchmarks.children ours-setup --corpus DIR --port P --config C [--limit N]
    python -m benchmarks.children ours-poll --config C --out R

Each writes a JSON report with the wall time of its measured phase (the work itself,
without interpreter start-up and imports) and what it counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .corpus import Corpus

# Our fetcher's default global connection limit; the fetch floor uses the same.
FETCH_CONCURRENCY = 32
TICK_SECONDS = 0.005
STALL_SECONDS = 0.03  # a tick this late counts as a stall for StallWatch
WATCH_SECONDS = 0.01
STACK_DEPTH = 7
THREAD_CPU_SECONDS = 0.2
INSTRUMENT_THREADS = ("stall-watch", "thread-cpu")
STALL_PLACES = 8


def _write(out: Path, report: dict[str, Any]) -> None:
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")


# --- fetch floor: httpx, no parsing --------------------------------------------------


async def _fetch_all(
    corpus: Corpus, urls: dict[int, str], warm: bool, args: argparse.Namespace
) -> dict[str, Any]:
    import ssl

    import httpx

    concurrency = args.concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    statuses: dict[str, int] = {}
    versions: dict[str, int] = {}
    received = 0
    gate = asyncio.Semaphore(concurrency)
    verify: ssl.SSLContext | bool = True
    if args.ca_file:  # httpx's default trust (certifi) and the loopback server's CA
        verify = httpx.create_ssl_context(trust_env=False)
        verify.load_verify_locations(cafile=args.ca_file)
    async with httpx.AsyncClient(
        limits=limits, timeout=60.0, trust_env=False, verify=verify, http2=args.http2
    ) as client:

        async def one(url: str, headers: dict[str, str]) -> None:
            nonlocal received
            async with gate:
                response = await client.get(url, headers=headers)
            received += len(response.content)
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            versions[response.http_version] = versions.get(response.http_version, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(
            *(
                one(
                    urls[feed.index],
                    {"If-None-Match": feed.etag, "If-Modified-Since": feed.last_modified}
                    if warm
                    else {},
                )
                for feed in corpus.feeds
            )
        )
        phase = time.perf_counter() - started
    return {
        "phase_wall": phase,
        "statuses": statuses,
        "http_versions": versions,
        "body_bytes": received,
    }


def feed_urls(corpus: Corpus, args: argparse.Namespace) -> dict[int, str]:
    """Feed index -> URL: from ``--urls`` (a JSON object) when given, else each feed on
    its own loopback address at ``--port``."""
    if getattr(args, "urls", None):
        table = json.loads(Path(args.urls).read_text(encoding="utf-8"))
        return {int(index): url for index, url in table.items()}
    return {feed.index: feed.url(args.port) for feed in corpus.feeds}


def fetch_floor(args: argparse.Namespace) -> int:
    corpus = Corpus.load(Path(args.corpus))
    warm = args.mode == "warm"
    urls = feed_urls(corpus, args)
    report, _, timed_lags = asyncio.run(_with_ticker(lambda: _fetch_all(corpus, urls, warm, args)))
    report["concurrency"] = args.concurrency
    # The same ticker as in our poll: the lag that fetching alone causes, for comparison.
    report.update(_lag_stats([lag for lag, _ in timed_lags]))
    _write(Path(args.out), report)
    return 0


# --- parse floor: feedparser, no fetching --------------------------------------------


def parse_floor(args: argparse.Namespace) -> int:
    import feedparser

    corpus = Corpus.load(Path(args.corpus))
    documents = [corpus.body(feed) for feed in corpus.feeds]
    options = {"sanitize_html": False, "resolve_relative_uris": False} if args.light else {}
    entries = bozo = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    for document in documents:
        parsed = feedparser.parse(document, **options)
        entries += len(parsed.entries)
        bozo += bool(parsed.bozo)
    report = {
        "phase_wall": time.perf_counter() - started,
        "phase_cpu": time.process_time() - cpu_started,
        "entries": entries,
        "bozo": bozo,
        "options": options,
    }
    _write(Path(args.out), report)
    return 0


# --- our pipeline ------------------------------------------------------------------


def write_config(
    path: Path,
    database: Path,
    *,
    ca_file: Path | None = None,
    fetch: str = "",
    parse_workers: int = 0,
) -> None:
    """A config holding only what the benchmark needs; everything else is default.
    ``ca_file``: the loopback TLS server's self-signed certificate, trusted as a CA;
    ``fetch``: more lines for the ``[fetch]`` table (a variant to compare);
    ``parse_workers`` > 0 pins the number of parse processes (0: one per core)."""
    trust = f"ca_file = {json.dumps(str(ca_file))}\n" if ca_file else ""
    trust += fetch
    text = (
        f"database = {json.dumps(str(database))}\n\n[fetch]\nallow_private_addresses = true\n"
        + trust
    )
    if parse_workers:
        text += f"\n[poll]\nparse_workers = {parse_workers}\n"
    path.write_text(text, encoding="utf-8")


def ours_setup(args: argparse.Namespace) -> int:
    from aggregator.config import load_settings
    from aggregator.decide import FeedUpdate
    from aggregator.models import FeedSource
    from aggregator.sources import add_source
    from aggregator.store import Store
    from aggregator.store import feeds as feed_rows

    settings = load_settings(Path(args.config), env={})
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.database}{suffix}").unlink(missing_ok=True)
    corpus = Corpus.load(Path(args.corpus))
    store = Store.open(settings.database)
    now = datetime.now(UTC)
    try:
        urls = feed_urls(corpus, args)
        for feed in corpus.feeds[: args.limit or None]:
            added, _ = add_source(store, FeedSource(url=urls[feed.index]), origin="cli", now=now)
            if args.validators:  # as a cold poll leaves the feed row, without parsing
                update = FeedUpdate(
                    polled_at=now,
                    next_poll_at=now,
                    succeeded=True,
                    etag=feed.etag,
                    last_modified=feed.last_modified,
                )
                with store.write() as db:
                    feed_rows.apply_feed_update(db, added, update)
    finally:
        store.close()
    return 0


class ThreadCpu:
    """CPU seconds of each thread of this process (``/proc/self/task/*/stat``, Linux),
    read every THREAD_CPU_SECONDS and at the end, so that threads which end early (the
    process pool's feeder and manager threads end when the pool closes) are counted.
    Reported per thread name, numbers stripped: where the main process's CPU goes."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}  # native id -> (name, CPU s)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="thread-cpu", daemon=True)

    def start(self) -> ThreadCpu:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._read()
        totals: dict[str, float] = {}
        for name, cpu in self.seen.values():
            kind = name.rstrip("0123456789_-") or name
            totals[kind] = round(totals.get(kind, 0.0) + cpu, 2)
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def _watch(self) -> None:
        while not self._stop.wait(THREAD_CPU_SECONDS):
            self._read()

    def _read(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
        try:
            tasks = os.listdir("/proc/self/task")
        except OSError:
            return
        for task in tasks:
            try:
                with open(f"/proc/self/task/{task}/stat", encoding="ascii") as stat:
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:
                continue
            tid = int(task)
            cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
            known = self.seen.get(tid)
            name = names.get(tid) or (known[0] if known else f"thread {tid}")
            self.seen[tid] = (name, cpu)


class StallWatch:
    """Looks at the event-loop thread from another thread whenever the ticker is late by
    more than STALL_SECONDS, every WATCH_SECONDS while it stays late, and counts where
    that thread is: what holds the loop up (Python code on the loop, waiting for the
    GIL behind another thread, or the process not being scheduled at all)."""

    def __init__(self) -> None:
        self.loop_thread = threading.get_ident()
        self.last_tick = time.perf_counter()
        self.samples: Counter[tuple[str, ...]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)

    def start(self) -> StallWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            if time.perf_counter() - self.last_tick - TICK_SECONDS < STALL_SECONDS:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is None:
                continue
            places: list[str] = []
            for f in traceback.extract_stack(frame):
                if f.filename.startswith("<frozen importlib"):
                    # Import machinery: one marker instead of a dozen frames.
                    if not places or places[-1] != "(importing)":
                        places.append("(importing)")
                    continue
                places.append(f"{Path(f.filename).name}:{f.lineno} {f.name}")
            self.samples[tuple(places[-STACK_DEPTH:])] += 1

    def report(self) -> list[dict[str, Any]]:
        """The most frequent places, innermost frame last, each with its share."""
        total = sum(self.samples.values())
        return [
            {"samples": count, "share": round(count / total, 3), "stack": list(stack)}
            for stack, count in self.samples.most_common(STALL_PLACES)
        ]


async def _with_ticker(
    work: Callable[[], Awaitable[Any]], watch: StallWatch | None = None
) -> tuple[Any, float, list[tuple[float, float]]]:
    """Run ``work`` beside a task that sleeps TICK_SECONDS at a time and records how late
    each wake-up was (the event loop's lag), with when it happened (perf_counter)."""
    lags: list[tuple[float, float]] = []
    done = asyncio.Event()
    started = time.perf_counter()

    async def tick() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(TICK_SECONDS)
            now = time.perf_counter()
            if watch is not None:
                watch.last_tick = now
            lags.append((now - before - TICK_SECONDS, before))

    ticker = asyncio.create_task(tick())
    try:
        result = await work()
    finally:
        phase = time.perf_counter() - started
        done.set()
        await ticker
    return result, phase, lags


def _lag_stats(lags: list[float]) -> dict[str, Any]:
    lags = sorted(lags)
    return {
        "lag_max_ms": (lags[-1] if lags else 0.0) * 1000,
        "lag_p99_ms": (lags[int(len(lags) * 0.99)] if lags else 0.0) * 1000,
        "lag_median_ms": (statistics.median(lags) if lags else 0.0) * 1000,
        "lag_over_50ms": sum(lag > 0.05 for lag in lags),
        "ticks": len(lags),
    }


def ours_poll(args: argparse.Namespace) -> int:
    from aggregator.config import load_settings
    from aggregator.pipeline import poll_feeds
    from aggregator.store import Store

    settings = load_settings(Path(args.config), env={})
    store = Store.open(settings.database)
    finished: list[float] = []  # when each feed's summary came back
    watch = StallWatch().start()
    threads = ThreadCpu().start()
    try:
        started = time.perf_counter()
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        summaries, phase, timed_lags = asyncio.run(
            _with_ticker(
                lambda: poll_feeds(
                    settings, store, on_result=lambda _: finished.append(time.perf_counter())
                ),
                watch,
            )
        )
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
        thread_cpu = threads.stop()
        stored = store.db.execute("SELECT count(*) FROM entries").fetchone()[0]
    finally:
        watch.stop()
        store.close()
    statuses: dict[str, int] = {}
    for summary in summaries:
        statuses[summary.status] = statuses.get(summary.status, 0) + 1
    errors = sorted({s.error for s in summaries if s.error})[:5]
    worst = sorted(timed_lags, reverse=True)[:5]
    # Stalls before the first feed is done belong to start-up (opening the client,
    # starting the worker processes); the rest to the steady state of the poll.
    first = min(finished, default=started)
    steady = [lag for lag, at in timed_lags if at >= first]
    # CPU of this process alone (every thread: event loop, database writer, the pool's
    # manager thread), not of the parse workers: the serial part of a poll.
    main_user = usage_after.ru_utime - usage_before.ru_utime
    main_sys = usage_after.ru_stime - usage_before.ru_stime
    # The benchmark's own watchers are not the poll's work.
    instruments = sum(thread_cpu.get(name, 0.0) for name in INSTRUMENT_THREADS)
    new = sum(s.new for s in summaries)
    written = new + sum(s.duplicates + s.updated for s in summaries)
    report = {
        "phase_wall": phase,
        "main_cpu_user": main_user,
        "main_cpu_sys": main_sys,
        "entries_written": written,
        # CPU seconds per thread of this process, by thread name (start-up included).
        "main_cpu_by_thread": thread_cpu,
        "main_cpu_instruments": instruments,
        "main_cpu_per_1000_entries": (
            (main_user + main_sys - instruments) * 1000 / written if written else None
        ),
        "parse_workers": settings.poll.parse_workers or os.cpu_count() or 1,
        "statuses": statuses,
        "new": new,
        "updated": sum(s.updated for s in summaries),
        "duplicates": sum(s.duplicates for s in summaries),
        "entries_stored": stored,
        "errors": errors,
        **_lag_stats([lag for lag, _ in timed_lags]),
        # The five longest stalls: [seconds into the poll, lag in ms].
        "lag_worst": [[round(at - started, 3), round(lag * 1000, 1)] for lag, at in worst],
        "first_result_s": first - started,
        "lag_steady_max_ms": max(steady, default=0.0) * 1000,
        # Where the loop thread was while the ticker was late, sampled every 10 ms.
        "stall_places": watch.report(),
    }
    _write(Path(args.out), report)
    return 0 if not errors else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.children")
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch-floor")
    fetch.add_argument("--corpus", required=True)
    fetch.add_argument("--port", type=int, default=0)
    fetch.add_argument("--mode", choices=("cold", "warm"), default="cold")
    fetch.add_argument("--concurrency", type=int, default=FETCH_CONCURRENCY)
    fetch.add_argument("--urls", help="JSON object: feed index -> URL (instead of --port)")
    fetch.add_argument("--ca-file", help="PEM file of a CA to trust (the loopback TLS server)")
    fetch.add_argument("--http2", action="store_true", help="offer HTTP/2 to TLS servers")
    fetch.add_argument("--out", required=True)
    fetch.set_defaults(run=fetch_floor)

    parse = commands.add_parser("parse-floor")
    parse.add_argument("--corpus", required=True)
    parse.add_argument("--light", action="store_true", help="no sanitising, no URI resolution")
    parse.add_argument("--out", required=True)
    parse.set_defaults(run=parse_floor)

    setup = commands.add_parser("ours-setup")
    setup.add_argument("--corpus", required=True)
    setup.add_argument("--port", type=int, default=0)
    setup.add_argument("--urls", help="JSON object: feed index -> URL (instead of --port)")
    setup.add_argument(
        "--validators", action="store_true", help="store each feed's ETag and Last-Modified"
    )
    setup.add_argument("--config", required=True)
    setup.add_argument("--limit", type=int, default=0, help="only the first N feeds")
    setup.set_defaults(run=ours_setup)

    poll = commands.add_parser("ours-poll")
    poll.add_argument("--config", required=True)
    poll.add_argument("--out", required=True)
    poll.set_defaults(run=ours_poll)

    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
