"""Web benchmark: the pages a reader loads, each against the bare SQL query it needs.

    python -m benchmarks.web            # 100,000 entries across 500 feeds
    python -m benchmarks.web --million  # 1,000,000 entries across 500 feeds
    python -m benchmarks.web --quick    # 5,000 entries across 50 feeds, a smoke run

Entries are generated deterministically and written through the store's insert path
(``store.entries.apply_plan``, FTS triggers included) into a database cached under
benchmarks/.work/. Each page is requested in-process through the ASGI app (Starlette's
test client: routing, the thread pool, queries, templates, middleware; no sockets), and
its bare query runs on its own connection in the same run. Printed per case: p50 and p95
of both, and the ratio of the p50s and p95s. Goal: every page within 3x of its
bare query, p95 under 50 ms.

Search: ``--search`` measures only search, at 100,000 and at 1,000,000
entries in one run (the million-entry database is generated the first time, about
5 minutes, and cached in benchmarks/.work/ by size, seed and generator version):

    python -m benchmarks.web --search             # both sizes, best of 3 rounds
    python -m benchmarks.web --search --repeat 5  # more rounds on a busy machine

Cases: a rare word, a word in about 15 % of the entries and a two-word phrase, each
ranked by relevance (the default). Per case, in the same run: the bare FTS5 query
(``SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? LIMIT 31``: the floor, the
baseline of the ratio), the bare query that ranks every match by bm25 (``ORDER BY
bm25(...) LIMIT 31``: what ranking without a cap costs), the store's calls a results
page makes (``ranked_page`` and ``highlights``: no HTTP, no template) and the page
itself through the ASGI app. Each round times every case ``--runs`` times; the round
with the lowest page p95 is printed (other people share the machine). Goal: page p95
under 50 ms at both sizes. The million entries are written in bulk (triggers off,
20,000 entries per transaction, then one FTS5 ``rebuild``): the same content
distribution as the insert path, without the hours it would take.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from aggregator.config import Settings, settings_from_mapping
from aggregator.models import EntryRecord, NewEntry, PollPlan
from aggregator.store import Store
from aggregator.store import entries as entry_rows
from aggregator.store import feeds as feed_rows
from aggregator.store import search as search_rows
from aggregator.store.codec import to_db
from aggregator.store.search import WEIGHTS, parse_query
from aggregator.store.timeline import fts_query
from aggregator.web import create_app

from . import WORK

SEED = 20261128
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
GOAL_RATIO = 3.0
GOAL_P95_MS = 50.0
PAGE = 30
ATOM = 50
BULK_ENTRIES = 20_000  # entries per transaction when generating in bulk
GENERATOR_VERSION = 2  # 2: entries_fts of migration m008 (source titles)


@dataclass(frozen=True)
class Size:
    feeds: int
    entries: int
    runs: int


FULL = Size(feeds=500, entries=100_000, runs=200)
# 500 feeds, as at 100,000 entries (and as benchmarks/load.py's L3): the pages list every
# source in a menu, and 5,000 of them cost a page more than its queries.
MILLION = Size(feeds=500, entries=1_000_000, runs=100)
QUICK = Size(feeds=50, entries=5_000, runs=40)


def vocabulary(rng: random.Random, count: int = 3000) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def generate(path: Path, size: Size) -> None:
    """Feeds and entries, the same for the same size on every run."""
    rng = random.Random(SEED)
    words = vocabulary(rng)
    # Zipf-like word use. Cumulative weights once: random.choices would otherwise sum
    # all 3,000 weights on each of its two million calls (the draws are the same).
    cumulative = list(accumulate(1 / (rank + 1) for rank in range(len(words))))
    bulk = size.entries > FULL.entries
    # Bulk: no fsync while generating (a half-written file is thrown away anyway).
    store = Store.open(path, pragmas={"synchronous": "OFF"} if bulk else None)
    started = time.perf_counter()
    with store.write() as db:
        feed_ids = [
            feed_rows.add_feed(
                db, url=f"https://blog{n}.test/feed", title=f"Blog {n}", origin="cli", now=NOW
            )[0].id
            for n in range(size.feeds)
        ]
    per_feed = size.entries // size.feeds
    span = timedelta(days=3 * 365)
    stories: list[tuple[int, int]] = []  # (entry id, feed id) to cross-post from
    if bulk:
        extras = _drop_entry_triggers(store)
    next_id = 1
    pending: list[tuple[int, list[int], list[NewEntry]]] = []
    for index, feed_id in enumerate(feed_ids):
        inserts = []
        for n in range(per_feed):
            title_words = rng.choices(words, cum_weights=cumulative, k=rng.randint(3, 8))
            body_words = rng.choices(words, cum_weights=cumulative, k=rng.randint(40, 120))
            html = "<p>" + " ".join(body_words) + "</p>"
            published = NOW - span * rng.random()
            link = f"https://blog{index}.test/{n}"
            record = EntryRecord(
                key=link,
                alias=link,
                link_key=link,
                guid=None,
                link=link,
                canonical_url=link,
                title=" ".join(title_words).capitalize(),
                norm_title=" ".join(title_words),
                author=f"Author {rng.randint(1, 40)}",
                summary_html=html,
                content_html=html,
                text=" ".join(body_words),
                content_hash=hashlib.sha256(html.encode()).hexdigest(),
                published=published,
                updated=None,
                date_missing=False,
            )
            duplicate_of = None
            if stories and rng.random() < 0.05:  # a cross-post of an earlier story
                story, story_feed = rng.choice(stories)
                if story_feed != feed_id:
                    duplicate_of = story
            inserts.append(NewEntry(record=record, duplicate_of=duplicate_of))
        if bulk:
            new_ids = list(range(next_id, next_id + len(inserts)))
            pending.append((feed_id, new_ids, inserts))
            next_id += len(inserts)
            if (
                sum(len(batch[1]) for batch in pending) >= BULK_ENTRIES
                or index == len(feed_ids) - 1
            ):
                with store.write() as db:  # one transaction per BULK_ENTRIES entries
                    for batch in pending:
                        _bulk_insert(db, *batch)
                pending.clear()
                print(f"  {next_id - 1} entries, {time.perf_counter() - started:.0f} s", flush=True)
        else:
            with store.write() as db:
                plan = PollPlan(inserts=tuple(inserts))
                new_ids = entry_rows.apply_plan(db, feed_id, plan, NOW)
        stories.extend((entry_id, feed_id) for entry_id in rng.sample(new_ids, 2))
    if bulk:
        with store.write() as db:
            for sql in extras:
                db.execute(sql)
            print(f"  indexes made, {time.perf_counter() - started:.0f} s", flush=True)
            db.execute("INSERT INTO entries_fts (entries_fts) VALUES ('rebuild')")
            print(f"  full-text index rebuilt, {time.perf_counter() - started:.0f} s", flush=True)
    store.conn.execute("PRAGMA optimize")
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all in the main file: renamed next
    store.close()
    print(f"generated {size.entries} entries in {time.perf_counter() - started:.1f} s")


def _drop_entry_triggers(store: Store) -> list[str]:
    """Drop the entries table's triggers and secondary indexes; their SQL, to remake."""
    with store.write() as db:
        extras = db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'entries' "
            "AND type IN ('index', 'trigger') AND sql IS NOT NULL"
        ).fetchall()
        for kind, name, _ in extras:
            db.execute(f"DROP {kind.upper()} {name}")
    return [sql for _, _, sql in extras]


def _bulk_insert(db: Any, feed_id: int, ids: list[int], inserts: list[NewEntry]) -> None:
    stamp = to_db(NOW)
    db.conn.executemany(
        "INSERT INTO entries (id, feed_id, key, alias, link_key, link, canonical_url, title, "
        "norm_title, author, summary_html, content_html, text, content_hash, published, "
        "first_seen, last_changed, duplicate_of) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                entry_id,
                feed_id,
                r.key,
                r.alias,
                r.link_key,
                r.link,
                r.canonical_url,
                r.title,
                r.norm_title,
                r.author,
                r.summary_html,
                r.content_html,
                r.text,
                r.content_hash,
                to_db(r.published),
                stamp,
                stamp,
                new.duplicate_of,
            )
            for entry_id, new in zip(ids, inserts, strict=True)
            for r in (new.record,)
        ],
    )


def database(size: Size) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"web-{size.feeds}x{size.entries}-s{SEED}-v{GENERATOR_VERSION}.sqlite3"
    if not path.exists():
        partial = path.with_suffix(".partial")
        for leftover in WORK.glob(partial.name + "*"):
            leftover.unlink()
        generate(partial, size)
        partial.rename(path)
    return path


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed(action: Callable[[], Any], runs: int) -> list[float]:
    for _ in range(max(3, runs // 10)):
        action()  # warm caches, compile templates
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


_TIMELINE_SQL = (
    "SELECT e.id, e.feed_id, f.title, e.title, e.link, e.author, e.summary_html, "
    "e.content_html, e.text, e.published, e.updated, e.last_changed, e.duplicate_of "
    "FROM {source} JOIN feeds f ON f.id = e.feed_id WHERE {where} "
    "ORDER BY e.published DESC, e.id DESC LIMIT ?"
)


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    sql: str
    params: tuple[Any, ...]


def cases(conn: sqlite3.Connection, words: list[str]) -> list[Case]:
    count = conn.execute("SELECT count(*) FROM entries WHERE duplicate_of IS NULL").fetchone()[0]
    deep = conn.execute(
        "SELECT published, id FROM entries WHERE duplicate_of IS NULL "
        "ORDER BY published DESC, id DESC LIMIT 1 OFFSET ?",
        [int(count * 0.8)],
    ).fetchone()
    term = words[60]  # a word of middling frequency
    plain = _TIMELINE_SQL.format(source="entries e", where="+e.duplicate_of IS NULL")
    keyset = _TIMELINE_SQL.format(
        source="entries e", where="+e.duplicate_of IS NULL AND (e.published, e.id) < (?, ?)"
    )
    search = _TIMELINE_SQL.format(
        source="entries e",
        where="e.id IN (SELECT e.id FROM entries_fts JOIN entries e ON e.id = entries_fts.rowid "
        "WHERE entries_fts MATCH ? AND +e.duplicate_of IS NULL "
        "ORDER BY e.published DESC, e.id DESC LIMIT ?)",
    )
    return [
        Case("first page", "/", plain, (PAGE + 1,)),
        Case(
            "deep page (80%)",
            f"/?before={deep[0]}|{deep[1]}",
            keyset,
            (deep[0], deep[1], PAGE + 1),
        ),
        Case(f"search {term!r}", f"/?q={term}", search, (fts_query(term), PAGE + 1, PAGE + 1)),
        Case("/feed.atom", "/feed.atom", plain, (ATOM,)),
    ]


_BARE_RANKED = (
    "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? "
    f"ORDER BY bm25(entries_fts, {', '.join(str(w) for w in WEIGHTS)}) LIMIT ?"
)


def _share(conn: sqlite3.Connection, fts: str, entries: int) -> float:
    sql = "SELECT count(*) FROM entries_fts WHERE entries_fts MATCH ?"
    return int(conn.execute(sql, [fts]).fetchone()[0]) / entries


def search_cases(conn: sqlite3.Connection, words: list[str]) -> list[Case]:
    """Ranked searches (the default order): a rare word, a word in about 15 % of the
    entries and a two-word phrase, each beside the bare bm25-ordered FTS5 query."""
    entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    rare = words[-1]
    common = min(words[30:120], key=lambda word: abs(_share(conn, f'"{word}"', entries) - 0.15))
    phrase = f"{words[5]} {words[6]}"
    found = []
    for label, text in (("rare", rare), ("15 %", common), ("phrase", f'"{phrase}"')):
        fts = parse_query(text).fts
        found.append(
            Case(f"ranked {label} {text!r}", f"/?{urlencode({'q': text})}", _BARE_RANKED, (fts, 31))
        )
    return found


_BARE_MATCH = "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? LIMIT ?"


@dataclass(frozen=True)
class SearchFigures:
    """One case's best round: p50 and p95 (ms) of each thing timed."""

    case: str
    hits: int
    bare: tuple[float, float]
    ranked_all: tuple[float, float]
    store: tuple[float, float]
    page: tuple[float, float]


def _store_search(db: Any, text: str) -> object:
    """What the results page asks of the store: one ranked page and its snippets."""
    query = parse_query(text)
    page = search_rows.ranked_page(db, query, limit=PAGE)
    return search_rows.highlights(db, query, [entry.id for entry in page.entries])


def _p(samples: list[float]) -> tuple[float, float]:
    return percentile(samples, 0.5), percentile(samples, 0.95)


def search_figures(
    size: Size, runs: int, repeat: int
) -> tuple[list[SearchFigures], tuple[float, float]]:
    """The search cases at ``size``, each the best of ``repeat`` rounds (lowest page p95),
    and the timeline's first page (no search) the same way, for reference."""
    path = database(size)
    words = vocabulary(random.Random(SEED))
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    store = Store.open(path)
    best: dict[str, SearchFigures] = {}
    chosen = search_cases(conn, words)
    slow = max(20, runs // 5)  # ranking every match: a reference, up to 600 ms a run
    first_page = (float("inf"), float("inf"))
    with TestClient(create_app(settings_for(path), clock=lambda: NOW)) as client:
        for _ in range(repeat):
            plain = _p(timed(partial(_page, client, "/"), runs))
            first_page = min(first_page, plain, key=lambda pair: pair[1])
            for case in chosen:
                fts = case.params[0]
                text = dict(parse_qsl(case.path.split("?", 1)[1]))["q"]
                client.get(case.path).raise_for_status()
                hits = conn.execute(
                    "SELECT count(*) FROM entries_fts WHERE entries_fts MATCH ?", [fts]
                ).fetchone()[0]
                figures = SearchFigures(
                    case=case.name,
                    hits=hits,
                    bare=_p(timed(partial(_query, conn, _BARE_MATCH, (fts, PAGE + 1)), runs)),
                    ranked_all=_p(timed(partial(_query, conn, case.sql, case.params), slow)),
                    store=_p(timed(partial(_store_search, store.db, text), runs)),
                    page=_p(timed(partial(_page, client, case.path), runs)),
                )
                kept = best.get(case.name)
                if kept is None or figures.page[1] < kept.page[1]:
                    best[case.name] = figures
    store.close()
    conn.close()
    return [best[case.name] for case in chosen], first_page


def search_main(sizes: Sequence[Size], runs: int | None, repeat: int) -> int:
    """``--search``: the search cases at each of ``sizes``; 1 when a page misses the goal."""
    failed = False
    with open("/proc/loadavg") as load:
        print(f"load average at the start: {load.read().split()[0]}")
    for size in sizes:
        figures, first_page = search_figures(size, runs or size.runs, repeat)
        print(
            f"\n{size.entries:,} entries, {size.feeds} feeds; {runs or size.runs} runs per case, "
            f"best of {repeat} rounds"
        )
        print(
            f"{'case':<26} {'hits':>7} {'bare p95':>9} {'bm25-all p95':>13} {'store p95':>10} "
            f"{'page p50':>9} {'page p95':>9} {'page/bare p95':>14}"
        )
        for f in figures:
            print(
                f"{f.case:<26} {f.hits:>7} {f.bare[1]:>8.2f}m {f.ranked_all[1]:>12.2f}m "
                f"{f.store[1]:>9.2f}m {f.page[0]:>8.2f}m {f.page[1]:>8.2f}m "
                f"{f.page[1] / f.bare[1]:>13.1f}x"
            )
            if f.page[1] > GOAL_P95_MS:
                print(f"  over the p95 goal of {GOAL_P95_MS:.0f} ms")
                failed = True
        print(
            f"{'first page, no search':<26} {'':>7} {'':>9} {'':>13} {'':>10} "
            f"{first_page[0]:>8.2f}m {first_page[1]:>8.2f}m"
        )
    with open("/proc/loadavg") as load:
        print(f"\nload average at the end: {load.read().split()[0]}")
    print(
        "m = milliseconds. bare: MATCH ... LIMIT 31 (the baseline); bm25-all: every match "
        "ranked by bm25, LIMIT 31 (a fifth of the runs); store: ranked_page + highlights; "
        "page: GET through the app"
    )
    return 1 if failed else 0


def settings_for(path: Path) -> Settings:
    settings = settings_from_mapping({"database": str(path)}, env={}, path=None)
    return replace(settings, database=path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--million", action="store_true", help="1,000,000 entries")
    parser.add_argument("--runs", type=int, default=None, help="requests per case")
    parser.add_argument("--search-only", action="store_true", help="only the search cases")
    parser.add_argument(
        "--search", action="store_true", help="search at 100,000 and 1,000,000 entries"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds of --search (best kept)")
    args = parser.parse_args(argv)
    if args.search:
        sizes = [QUICK] if args.quick else [FULL, MILLION]
        return search_main(sizes, args.runs, args.repeat)
    size = QUICK if args.quick else MILLION if args.million else FULL
    runs = args.runs or size.runs
    path = database(size)
    words = vocabulary(random.Random(SEED))
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    print(f"database: {path.name}: {entries} entries, {size.feeds} feeds; {runs} runs per case")
    failed = False
    floor_app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    with TestClient(floor_app) as floor_client:
        floor = timed(lambda: floor_client.get("/").raise_for_status(), runs)
    print(
        f"ASGI floor (a one-line sync route, same client): p50 {percentile(floor, 0.5):.2f} ms, "
        f"p95 {percentile(floor, 0.95):.2f} ms"
    )
    with TestClient(create_app(settings_for(path), clock=lambda: NOW)) as client:
        print(
            f"{'case':<22} {'bare p50':>9} {'bare p95':>9} {'page p50':>9} {'page p95':>9} "
            f"{'x p50':>6} {'x p95':>6}  rows/hits"
        )
        chosen = search_cases(conn, words)
        if not args.search_only:
            chosen = cases(conn, words) + chosen
        for case in chosen:
            response = client.get(case.path)
            if response.status_code != 200:
                print(f"{case.name}: HTTP {response.status_code}")
                failed = True
                continue
            rows = conn.execute(case.sql, case.params).fetchall()
            bare = timed(partial(_query, conn, case.sql, case.params), runs)
            page = timed(partial(_page, client, case.path), runs)
            bare50, bare95 = percentile(bare, 0.5), percentile(bare, 0.95)
            page50, page95 = percentile(page, 0.5), percentile(page, 0.95)
            ratio50, ratio95 = page50 / bare50, page95 / bare95
            hits = len(rows)
            if case.name.startswith(("search", "ranked")):
                hits = conn.execute(
                    "SELECT count(*) FROM entries_fts WHERE entries_fts MATCH ?", case.params[:1]
                ).fetchone()[0]
            print(
                f"{case.name:<22} {bare50:>8.2f}m {bare95:>8.2f}m {page50:>8.2f}m "
                f"{page95:>8.2f}m {ratio50:>5.1f}x {ratio95:>5.1f}x  {hits}"
            )
            if page95 > GOAL_P95_MS:
                print(f"  over the p95 goal of {GOAL_P95_MS:.0f} ms")
            if ratio50 > GOAL_RATIO:
                print(f"  over the goal of {GOAL_RATIO:.0f}x the bare query (p50)")
    print("m = milliseconds; x = page / bare query")
    if not args.search_only:
        threaded_cases(path, runs)
    conn.close()
    return 1 if failed else 0


THREADS = (1, 8, 32)


def threaded_cases(path: Path, runs: int) -> None:
    """The first page requested by many clients at once: one event loop and its
    worker threads sharing the process's one Store (a connection per thread).
    Baseline: the same load on a one-line route."""
    floor_app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    store = Store.open(path)
    app = create_app(settings_for(path), clock=lambda: NOW, store=store)
    print(f"{'clients':<8} {'floor p95':>10} {'page p50':>9} {'page p95':>9} {'req/s':>7} {'x':>5}")
    for clients in THREADS:
        per_client = max(runs // clients, 5)
        floor, _ = _concurrent(floor_app, clients, per_client)
        page, rate = _concurrent(app, clients, per_client)
        floor95, page95 = percentile(floor, 0.95), percentile(page, 0.95)
        print(
            f"{clients:<8} {floor95:>9.2f}m {percentile(page, 0.5):>8.2f}m {page95:>8.2f}m "
            f"{rate:>7.0f} {page95 / floor95:>4.1f}x"
        )
    store.close()


def _concurrent(app: Starlette, clients: int, per_client: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``clients`` threads each making ``per_client`` requests for "/"
    to one app (one event loop and its worker threads, as one server process), and the
    requests per second."""
    from concurrent.futures import ThreadPoolExecutor

    with TestClient(app) as session, ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(lambda _: session.get("/").raise_for_status(), range(clients * 4)))
        started = time.perf_counter()
        results = list(
            pool.map(lambda _: timed(partial(_page, session, "/"), per_client), range(clients))
        )
        elapsed = time.perf_counter() - started
    latencies = [value for result in results for value in result]
    return latencies, len(latencies) / elapsed


def _query(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> object:
    return conn.execute(sql, params).fetchall()


def _page(client: TestClient, path: str) -> object:
    return client.get(path).raise_for_status()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
