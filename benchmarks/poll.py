"""Polling benchmark: our cold and warm poll against the floors and against the tools a
user would pick instead, all measured in one run on one corpus served on loopback.

    python -m benchmarks.poll            # 500 feeds x 20 entries (~77 MB)
    python -m benchmarks.poll --quick    # 100 feeds, a smoke run
    python -m benchmarks.poll --warm-matrix   # warm polls: 0/50 ms x own/one host x http/https
    python -m benchmarks.poll --only small   # only the one-shot small polls (2 and 20 feeds)

Every contender runs as a child process measured on its own (wall, CPU of its whole
process tree, peak memory); the loopback server counts what each one asked for. See
benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import REPO, ROOT, WORK
from .children import write_config
from .compare_env import ensure_env, env_python, installed_versions
from .corpus import DEFAULT_ENTRIES, DEFAULT_FEEDS, DEFAULT_SEED, QUICK_FEEDS, ensure_corpus
from .measure import Measured, become_subreaper, run_measured
from .server import Counters, FeedServer

COMPARE_VENV = ROOT / ".venv-compare"
OUR_FILES = frozenset(p.name for p in (REPO / "aggregator").rglob("*.py")) - {"__init__.py"}
RESULTS = WORK / "results-poll.json"

# Goals: cold poll within half the default-feedparser parse floor; warm poll
# within 1.2x the conditional-GET fetch floor, with only conditional requests; the
# event loop never blocked by parsing.
COLD_GOAL = 0.5
WARM_GOAL = 1.2
# A parse on the event loop would stall it for a whole feed's parse (tens to hundreds
# of ms). Scheduling noise alone reaches 30 to 70 ms on a busy 2-core machine: the fetch
# floor's own lag is printed beside ours for comparison.
LAG_GOAL_MS = 100.0

CONTENDERS = (
    "fetch-cold",
    "fetch-warm",
    "parse",
    "parse-light",
    "ours-cold",
    "ours-warm",
    "reader-cold",
    "reader-warm",
    "rss2email-cold",
    "rss2email-warm",
)
# Cheap and repeatable without changing state: run --repeat times, keep the fastest.
REPEATED = frozenset(
    {"fetch-cold", "fetch-warm", "ours-warm", "reader-warm", "ours-warm-4", "ours-warm-h1"}
)
LABELS = {
    "fetch-cold": "fetch floor (httpx, no parsing)",
    "fetch-warm": "warm fetch floor (conditional GET)",
    "parse": "parse floor (feedparser defaults)",
    "parse-light": "feedparser, no sanitise/resolve",
    "ours-cold": "ours: cold poll",
    "ours-warm": "ours: warm poll",
    "reader-cold": "reader: cold update",
    "reader-warm": "reader: warm update",
    "rss2email-cold": "rss2email: cold run",
    "rss2email-warm": "rss2email: warm run",
    "ours-warm-4": "ours: warm poll, max_per_host = 4 (the earlier default)",
    "ours-warm-h1": "ours: warm poll, http2 = false",
}


@dataclass
class Row:
    key: str
    measured: Measured | None
    traffic: Counters
    skipped: str | None = None
    all_phases: list[float] = field(default_factory=list)  # every repetition

    @property
    def phase(self) -> float:
        if self.measured is None:
            return math.nan
        return float(self.measured.report.get("phase_wall", self.measured.wall))


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(REPO)
    env["XDG_RUNTIME_DIR"] = str(WORK)  # rss2email's lock file
    env.pop("AGGREGATOR_CONFIG", None)
    # Installed packages run from bytecode; so do we (the repository's own modules would
    # otherwise be compiled again by every one-shot command).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


class Bench:
    def __init__(self, args: argparse.Namespace, server: FeedServer, work: Path) -> None:
        self.args = args
        self.server = server
        self.work = work
        self.env = child_env()
        self.rows: dict[str, Row] = {}

    def run(self, key: str, argv: Sequence[str], *, report: bool = True, show: bool = True) -> Row:
        """Run one contender; a cheap, repeatable one (REPEATED) runs ``--repeat`` times
        and the fastest run is kept, the least disturbed by the rest of the machine."""
        out = self.work / f"{key}.json" if report else None
        if out is not None:
            argv = [*argv, "--out", str(out)]
        if show:
            print(f"  {LABELS.get(key, key)} …", end="", flush=True)
        runs = []
        for _ in range(self.args.repeat if key in REPEATED else 1):
            before = self.server.counters()
            measured = run_measured(
                key,
                argv,
                env=self.env,
                cwd=REPO,
                log=self.work / f"{key}.log",
                report=out,
                timeout=self.args.timeout,
            )
            runs.append(Row(key, measured, self.server.counters() - before))
            if not measured.ok:
                break
        last = runs[-1].measured
        assert last is not None
        row = min(runs, key=lambda r: r.phase) if last.ok else runs[-1]
        row.all_phases = [r.phase for r in runs]
        if show:
            shown = " / ".join(f"{phase:.2f}" for phase in row.all_phases)
            failed = f"  FAILED (exit {last.returncode}, see {last.log})"
            print(f" {shown} s" + ("" if last.ok else failed))
            self.rows[key] = row
        elif not last.ok:
            print(f"  {key} failed (exit {last.returncode}), see {last.log}")
        return row

    def wanted(self, group: str) -> bool:
        only = {name.strip() for name in self.args.only.split(",") if name.strip()}
        return not only or group in only

    def run_group(self, group: str, *, setup: list[str], command: list[str]) -> None:
        """A setup step (not reported), then a cold and a warm run of ``command``."""
        done = self.run(f"{group}-setup", setup, report=False, show=False)
        for phase in ("cold", "warm"):
            key = f"{group}-{phase}"
            if done.measured is None or not done.measured.ok:
                self.skip(key, "setup failed")
            else:
                self.run(key, command)

    def skip(self, key: str, why: str) -> None:
        print(f"  {LABELS[key]}: skipped: {why}")
        self.rows[key] = Row(key, None, Counters(), skipped=why)


def ours_argv(*args: str) -> list[str]:
    """A contender of ours: ``python -m benchmarks.children ARGS`` with our Python."""
    return [sys.executable, "-m", "benchmarks.children", *args]


def ours(bench: Bench, corpus_root: Path) -> None:
    config = bench.work / "ours.toml"
    write_config(config, bench.work / "ours.sqlite3")
    port = str(bench.server.port)
    setup = bench.run(
        "ours-setup",
        ours_argv(
            "ours-setup", "--corpus", str(corpus_root), "--port", port, "--config", str(config)
        ),
        report=False,
        show=False,
    )
    if setup.measured is None or not setup.measured.ok:
        bench.skip("ours-cold", "setup failed")
        bench.skip("ours-warm", "setup failed")
        return
    for key in ("ours-cold", "ours-warm"):
        bench.run(key, ours_argv("ours-poll", "--config", str(config)))
    for count in pinned_workers(bench.args.parse_workers):
        pinned(bench, corpus_root, count)
    if bench.args.profile:
        profile_polls(bench, corpus_root, config)


def pinned_workers(spec: str) -> list[int]:
    """``--parse-workers 1,2`` -> [1, 2]."""
    return [int(part) for part in spec.split(",") if part.strip()]


def pinned_key(count: int) -> str:
    return f"ours-cold-w{count}"


def pinned(bench: Bench, corpus_root: Path, count: int) -> None:
    """A cold poll with the number of parse processes pinned (``[poll] parse_workers``),
    on a fresh database of its own: how the poll scales with the workers it may use."""
    key = pinned_key(count)
    LABELS[key] = f"ours: cold poll, {count} parse worker{'s' if count > 1 else ''}"
    config = bench.work / f"ours-w{count}.toml"
    write_config(config, bench.work / f"ours-w{count}.sqlite3", parse_workers=count)
    port = str(bench.server.port)
    setup = bench.run(
        f"{key}-setup",
        ours_argv(
            "ours-setup", "--corpus", str(corpus_root), "--port", port, "--config", str(config)
        ),
        report=False,
        show=False,
    )
    if setup.measured is None or not setup.measured.ok:
        bench.skip(key, "setup failed")
        return
    bench.run(key, ours_argv("ours-poll", "--config", str(config)))


def profile_polls(bench: Bench, corpus_root: Path, config: Path) -> None:
    """One more cold and warm poll under py-spy (all threads and worker processes), to
    find where the time goes; not part of the table. The output is collapsed stacks, which
    speedscope.app and flamegraph.pl read."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        print("  profile: skipped: py-spy is not installed (pip install py-spy)")
        return
    port = str(bench.server.port)
    setup = ("ours-setup", "--corpus", str(corpus_root), "--port", port, "--config", str(config))
    bench.run("ours-setup", ours_argv(*setup), report=False, show=False)
    spied = [str(spy), "record", "--format", "raw", "--threads", "--subprocesses", "--rate", "100"]
    for phase in ("cold", "warm"):
        out = bench.work / f"ours-{phase}-profile.txt"
        report = str(bench.work / f"profile-{phase}.json")
        poll = ours_argv("ours-poll", "--config", str(config), "--out", report)
        bench.run("profile", [*spied, "--output", str(out), "--", *poll], report=False, show=False)
        print(f"  profile of a {phase} poll (collapsed stacks): {out}")


def competitors(bench: Bench, urls: Path) -> None:
    groups = [g for g in ("reader", "rss2email") if bench.wanted(g)]
    if not groups:
        return
    if bench.args.no_compare:
        for group in groups:
            bench.skip(f"{group}-cold", "--no-compare")
            bench.skip(f"{group}-warm", "--no-compare")
        return
    print(f"  preparing {COMPARE_VENV.name} (the first run installs reader and rss2email) …")
    why = ensure_env(COMPARE_VENV, getattr(sys, "_base_executable", sys.executable))
    if why is not None:
        for group in groups:
            bench.skip(f"{group}-cold", why)
            bench.skip(f"{group}-warm", why)
        return
    python = str(env_python(COMPARE_VENV))
    script = str(ROOT / "compare_env.py")
    work = bench.work
    if "reader" in groups:
        db = str(work / "reader.sqlite3")
        workers = str(bench.args.reader_workers)
        bench.run_group(
            "reader",
            setup=[python, script, "reader-setup", "--urls", str(urls), "--db", db],
            command=[python, script, "reader-update", "--db", db, "--workers", workers],
        )
    if "rss2email" in groups:
        config = str(work / "rss2email.cfg")
        data = str(work / "rss2email.json")
        bench.run_group(
            "rss2email",
            setup=[
                python,
                script,
                "r2e-setup",
                "--urls",
                str(urls),
                "--config",
                config,
                "--data",
                data,
            ],
            command=[python, script, "r2e-run", "--config", config, "--data", data],
        )


# --- warm polls across network conditions ----------------------------------------------

SHARED_HOST = "127.0.0.1"  # the corpus's own addresses start at 127.0.1.1
RESULTS_WARM = WORK / "results-poll-warm.json"


@dataclass
class Scenario:
    latency_ms: float
    shared: bool  # every feed on one host (a blog platform) or each on its own
    tls: bool  # https from hypercorn, which offers HTTP/2; else plain HTTP/1.1

    @property
    def name(self) -> str:
        hosts = "one host" if self.shared else "own hosts"
        protocol = "https, h2 offered" if self.tls else "http/1.1"
        return f"{self.latency_ms:g} ms, {hosts}, {protocol}"


# Variants of our warm poll in the warm matrix: [fetch] lines, and when they apply.
VARIANTS: dict[str, tuple[str, Callable[[Scenario], bool]]] = {
    "ours-warm-4": ("max_per_host = 4\n", lambda s: s.shared and not s.tls),
    "ours-warm-h1": ("http2 = false\n", lambda s: s.tls),
}


VARIANT_NAMES = {"ours-warm-4": "4 per host", "ours-warm-h1": "no h2"}


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    latencies = [float(x) for x in args.latency.split(",") if x.strip()]
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    return [
        Scenario(latency, host == "shared", protocol == "https")
        for protocol in protocols
        for host in hosts
        for latency in latencies
    ]


def warm_matrix(args: argparse.Namespace, corpus: Any, work: Path) -> list[dict[str, Any]]:
    """Warm polls (every request conditional, every answer 304) against the warm fetch
    floor and reader's warm update, in each scenario: latency, hosts, protocol."""
    from .server import TLSFeedServer, fixed_latency

    results: list[dict[str, Any]] = []
    compare = None
    if not args.no_compare:
        why = ensure_env(COMPARE_VENV, getattr(sys, "_base_executable", sys.executable))
        if why is None:
            compare = str(env_python(COMPARE_VENV))
        else:
            print(f"  reader: skipped: {why}")
    for scenario in scenarios(args):
        print(f"  scenario: {scenario.name}")
        latency = fixed_latency(scenario.latency_ms / 1000)
        shared = SHARED_HOST if scenario.shared else None
        folder = work / ("tls-shared" if scenario.shared else "tls-own")
        server: Any = (
            TLSFeedServer(corpus, folder, latency, shared_host=shared)
            if scenario.tls
            else FeedServer(corpus, latency, shared_host=shared)
        )
        with server.start():
            urls = work / "urls.json"
            urls.write_text(
                json.dumps({str(f.index): server.url(f) for f in corpus.feeds}), encoding="utf-8"
            )
            cert = getattr(server, "cert", None)
            bench = Bench(args, server, work)
            if cert is not None:
                bench.env["REQUESTS_CA_BUNDLE"] = str(cert)  # reader (requests)
            root = str(corpus.root)
            floor = ["--corpus", root, "--urls", str(urls), "--mode", "warm"]
            if cert is not None:
                floor += ["--ca-file", str(cert), "--http2"]
            bench.run("fetch-warm", ours_argv("fetch-floor", *floor))
            config = work / "ours.toml"
            write_config(config, work / "ours.sqlite3", ca_file=cert)
            # The feed rows a cold poll would leave (validators stored), without parsing
            # 77 MB again for every scenario.
            setup = ("ours-setup", "--corpus", root, "--urls", str(urls), "--config", str(config))
            bench.run("ours-setup", ours_argv(*setup, "--validators"), report=False, show=False)
            before = dict(getattr(server, "versions", {}))
            bench.run("ours-warm", ours_argv("ours-poll", "--config", str(config)))
            versions = {k: v - before.get(k, 0) for k, v in getattr(server, "versions", {}).items()}
            for key, (extra, applies) in VARIANTS.items():
                if not applies(scenario):
                    continue
                variant = work / f"{key}.toml"
                write_config(variant, work / "ours.sqlite3", ca_file=cert, fetch=extra)
                bench.run(key, ours_argv("ours-poll", "--config", str(variant)))
            if compare is not None and not (args.reader_http_only and scenario.tls):
                lines = work / "urls.txt"
                lines.write_text(
                    "".join(server.url(f) + "\n" for f in corpus.feeds), encoding="utf-8"
                )
                db = str(work / "reader.sqlite3")
                script = str(ROOT / "compare_env.py")
                workers = str(args.reader_workers)
                update = [compare, script, "reader-update", "--db", db, "--workers", workers]
                bench.run(
                    "reader-setup",
                    [compare, script, "reader-setup", "--urls", str(lines), "--db", db],
                    report=False,
                    show=False,
                )
                bench.run("reader-cold", update, show=False)
                bench.run("reader-warm", update)
        rows = bench.rows
        floor_row, ours_row = rows.get("fetch-warm"), rows.get("ours-warm")
        reader_row = rows.get("reader-warm")
        results.append(
            {
                "scenario": scenario.name,
                "latency_ms": scenario.latency_ms,
                "shared_host": scenario.shared,
                "tls": scenario.tls,
                "floor_s": floor_row.phase if floor_row else math.nan,
                "ours_s": ours_row.phase if ours_row else math.nan,
                "ours_runs_s": ours_row.all_phases if ours_row else [],
                "ours_vs_floor": ratio(ours_row, floor_row),
                "floor_cpu_s": floor_row.measured.cpu
                if floor_row and floor_row.measured
                else math.nan,
                "ours_cpu_s": ours_row.measured.cpu if ours_row and ours_row.measured else math.nan,
                "variants_s": {
                    key: rows[key].phase for key in VARIANTS if rows.get(key) is not None
                },
                "reader_s": reader_row.phase if reader_row else math.nan,
                "reader_vs_ours": ratio(reader_row, ours_row),
                "ours_traffic": vars(ours_row.traffic) if ours_row else {},
                "ours_http_versions": versions,
                "floor_report": floor_row.measured.report
                if floor_row and floor_row.measured
                else {},
            }
        )
    return results


def matrix_table(results: list[dict[str, Any]]) -> str:
    header = (
        "scenario",
        "floor s",
        "ours s",
        "ours/floor",
        "CPU s floor / ours",
        "ours, variant s",
        "reader s",
        "reader/ours",
    )
    lines = [header] + [
        (
            r["scenario"],
            _fmt(r["floor_s"]),
            _fmt(r["ours_s"]),
            _fmt(r["ours_vs_floor"]),
            f"{_fmt(r['floor_cpu_s'])} / {_fmt(r['ours_cpu_s'])}",
            "; ".join(
                f"{VARIANT_NAMES[key]} {_fmt(value)}" for key, value in r["variants_s"].items()
            ),
            _fmt(r["reader_s"]),
            _fmt(r["reader_vs_ours"]),
        )
        for r in results
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        out.append("| " + " | ".join(cells) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


# --- small polls: the one-shot commands a user runs ---------------------------------

SMALL_SIZES = (2, 20)
SMALL_RUNS = 5
SMALL_PHASES = ("cold", "warm")
SMALL_GOAL = 1.0  # ours no slower than reader's one-shot update, cold and warm
# What the product adds to the floor of its own libraries (benchmarks/small_floor.py).
FLOOR_GOAL = 1.15
# Where parsing in the command itself stops paying: [poll] parse_in_process_kb.
# A fresh start for the library floor: its state database (and -wal, -shm) removed.
FORGET = (
    "import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
    "[f.unlink() for f in p.parent.glob(p.name + '*')]"
)
CROSSOVER = {"in-process": "parse_in_process_kb = 1000000", "processes": "parse_in_process_kb = 0"}


@dataclass
class SmallRun:
    """One run of a one-shot command: wall time of the process (start-up, imports and
    exit included, as a user waits for it) and the CPU of it and its children."""

    wall: float
    cpu: float
    ok: bool


def _timed(argv: Sequence[str], env: dict[str, str], log: Path, timeout: float) -> SmallRun:
    """Run ``argv`` to its end; its wall time and the CPU of it and its children, exact
    (``os.wait4``: ``subprocess.run`` with a timeout polls the child every 50 ms)."""
    started = time.perf_counter()
    with log.open("ab") as out:
        child = subprocess.Popen(list(argv), cwd=REPO, env=env, stdout=out, stderr=out)
        killer = threading.Timer(timeout, child.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            killer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    return SmallRun(wall, usage.ru_utime + usage.ru_stime, child.returncode == 0)


def small_polls(
    bench: Bench,
    corpus_root: Path,
    urls: list[str],
    reader: tuple[str, str] | None,
    *,
    sizes: Sequence[int],
    variants: dict[str, str] | None = None,
) -> dict[str, list[SmallRun]]:
    """``aggregator poll`` as a user runs it (a subprocess: interpreter start-up, imports,
    the poll, exit) against reader's one-shot update, at 2 and 20 feeds of the corpus,
    cold (a fresh database) then warm (every feed answers 304), SMALL_RUNS times each,
    ours and reader's runs interleaved so that both see the same machine.

    ``variants`` (name -> lines of our config's [poll] table) runs ours once per variant
    instead of once with the defaults: the crossover rows compare parsing in-process
    with starting the parse processes at once."""
    found: dict[str, list[SmallRun]] = {}
    port = str(bench.server.port)
    timeout = bench.args.timeout
    for size in sizes:
        work = bench.work / f"small-{size}"
        work.mkdir(parents=True, exist_ok=True)
        feed_urls = work / "urls.txt"
        feed_urls.write_text("".join(u + "\n" for u in urls[:size]), encoding="utf-8")
        contenders: dict[str, tuple[list[str], list[str]]] = {}
        for name, poll_table in (variants or {"ours": ""}).items():
            config = work / f"{name}.toml"
            write_config(config, work / f"{name}.sqlite3")
            if poll_table:
                with config.open("a", encoding="utf-8") as extra:
                    extra.write(f"\n[poll]\n{poll_table}\n")
            contenders[name] = (
                ours_argv(
                    "ours-setup",
                    "--corpus",
                    str(corpus_root),
                    "--port",
                    port,
                    "--config",
                    str(config),
                    "--limit",
                    str(size),
                ),
                [sys.executable, "-m", "aggregator", "--config", str(config), "poll"],
            )
        if variants is None:
            state = work / "floor.sqlite3"
            floor = [sys.executable, str(ROOT / "small_floor.py"), "--urls", str(feed_urls)]
            contenders["floor"] = (
                [sys.executable, "-c", FORGET, str(state)],
                [*floor, "--db", str(state)],
            )
        if reader is not None:
            python, script = reader
            db = str(work / "reader.sqlite3")
            contenders["reader"] = (
                [python, script, "reader-setup", "--urls", str(feed_urls), "--db", db],
                [
                    python,
                    script,
                    "reader-update",
                    "--db",
                    db,
                    "--workers",
                    str(bench.args.reader_workers),
                    "--out",
                    str(work / "reader-report.json"),
                ],
            )
        print(f"  {size} feeds, one-shot commands ({SMALL_RUNS} runs, cold then warm) …")
        for _ in range(SMALL_RUNS):
            for name, (setup, command) in contenders.items():
                log = work / f"{name}.log"
                if not _timed(setup, bench.env, log, timeout).ok:
                    print(f"    {name} setup failed, see {log}")
                    continue
                for phase in SMALL_PHASES:
                    run = _timed(command, bench.env, log, timeout)
                    found.setdefault(f"{name}-{size}-{phase}", []).append(run)
    for key, runs in found.items():
        shown = " / ".join(f"{r.wall:.2f}" + ("" if r.ok else " FAILED") for r in runs)
        print(f"    {key:<18} {shown} s")
    return found


def small_median(runs: list[SmallRun] | None) -> float:
    good = [r.wall for r in runs or [] if r.ok]
    return statistics.median(good) if good else math.nan


def small_table(small: dict[str, list[SmallRun]], *names: str) -> str:
    """Median wall time (and each run) of each contender in ``names`` (those measured),
    per size and phase, and the first one's ratio to each of the others."""
    shown = [name for name in names if any(key.startswith(f"{name}-") for key in small)]
    first, others = shown[0], shown[1:]
    lines = [
        "| feeds | poll | "
        + " | ".join(f"{name} s" for name in shown)
        + "".join(f" | {first} / {name}" for name in others)
        + " |",
        "|---|---" + "|---" * (len(shown) + len(others)) + "|",
    ]
    for size in sorted({int(k.split("-")[-2]) for k in small}):
        for phase in SMALL_PHASES:
            runs = {name: small.get(f"{name}-{size}-{phase}") for name in shown}
            medians = {name: small_median(runs[name]) for name in shown}
            cells = [f"{_fmt(medians[name])} ({_runs(runs[name])})" for name in shown]
            cells += [
                _fmt(medians[first] / medians[name]) if medians[name] > 0 else "—"
                for name in others
            ]
            lines.append(f"| {size} | {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _runs(runs: list[SmallRun] | None) -> str:
    return " / ".join(f"{r.wall:.2f}" for r in runs or []) or "—"


def small_goals(small: dict[str, list[SmallRun]]) -> list[dict[str, Any]]:
    found = []
    for size in sorted({int(k.split("-")[-2]) for k in small}):
        for phase in SMALL_PHASES:
            ours_s = small_median(small.get(f"ours-{size}-{phase}"))
            reader_s = small_median(small.get(f"reader-{size}-{phase}"))
            value = ours_s / reader_s if reader_s > 0 else math.nan
            found.append(
                {
                    "goal": f"{phase} poll of {size} feeds (one-shot) <= {SMALL_GOAL} x reader",
                    "value": value,
                    "pass": value <= SMALL_GOAL,
                }
            )
            floor_s = small_median(small.get(f"floor-{size}-{phase}"))
            over = ours_s / floor_s if floor_s > 0 else math.nan
            found.append(
                {
                    "goal": f"{phase} poll of {size} feeds (one-shot) <= {FLOOR_GOAL} x "
                    "library floor",
                    "value": over,
                    "pass": over <= FLOOR_GOAL,
                }
            )
    return found


def reader_command(bench: Bench) -> tuple[str, str] | None:
    """(python, script) of the comparison environment, made on first use; None when it
    cannot be made (no network) or --no-compare."""
    if bench.args.no_compare:
        return None
    why = ensure_env(COMPARE_VENV, getattr(sys, "_base_executable", sys.executable))
    if why is not None:
        print(f"  reader: skipped: {why}")
        return None
    return str(env_python(COMPARE_VENV)), str(ROOT / "compare_env.py")


# --- results -----------------------------------------------------------------------


def ratio(a: Row | None, b: Row | None) -> float:
    if a is None or b is None or a.measured is None or b.measured is None:
        return math.nan
    if not (a.measured.ok and b.measured.ok) or b.phase <= 0:
        return math.nan
    return a.phase / b.phase


def cpu_ratio(a: Row | None, b: Row | None) -> float:
    """Of the CPU time of the whole process trees (start-up included): steadier than wall
    time when other work shares the machine."""
    if a is None or b is None or a.measured is None or b.measured is None:
        return math.nan
    if not (a.measured.ok and b.measured.ok) or b.measured.cpu <= 0:
        return math.nan
    return a.measured.cpu / b.measured.cpu


def goals(rows: dict[str, Row]) -> list[dict[str, Any]]:
    cold = ratio(rows.get("ours-cold"), rows.get("parse"))
    warm = ratio(rows.get("ours-warm"), rows.get("fetch-warm"))
    found: list[dict[str, Any]] = [
        {
            "goal": f"cold poll <= {COLD_GOAL} x parse floor",
            "value": cold,
            "pass": cold <= COLD_GOAL,
        },
        {
            "goal": f"warm poll <= {WARM_GOAL} x warm fetch floor",
            "value": warm,
            "pass": warm <= WARM_GOAL,
        },
    ]
    warm_row = rows.get("ours-warm")
    if warm_row is not None and warm_row.measured is not None:
        t = warm_row.traffic
        only_conditional = t.requests > 0 and t.conditional == t.requests and t.ok == 0
        found.append(
            {
                "goal": "warm poll sends only conditional requests (all answered 304)",
                "value": f"{t.conditional}/{t.requests} conditional, {t.not_modified} x 304",
                "pass": only_conditional and t.not_modified == t.requests,
            }
        )
    cold_row = rows.get("ours-cold")
    if cold_row is not None and cold_row.measured is not None:
        report = cold_row.measured.report
        lag = float(report.get("lag_max_ms", math.nan))
        found.append(
            {
                "goal": f"event loop lag during cold poll < {LAG_GOAL_MS:g} ms",
                "value": (
                    f"max {lag:.0f} ms (before the first feed was done, "
                    f"{float(report.get('first_result_s', math.nan)):.2f} s in: start-up; "
                    f"after: max {float(report.get('lag_steady_max_ms', math.nan)):.0f} ms), "
                    f"p99 {float(report.get('lag_p99_ms', math.nan)):.0f} ms"
                    + _control_lag(rows.get("fetch-cold"))
                ),
                "pass": lag < LAG_GOAL_MS,
            }
        )
    return found


def _control_lag(row: Row | None) -> str:
    """The lag the fetch floor alone shows (httpx, no parsing, no database)."""
    if row is None or row.measured is None or "lag_max_ms" not in row.measured.report:
        return ""
    return f"; fetch floor alone: max {float(row.measured.report['lag_max_ms']):.0f} ms"


def _fmt(value: float, digits: int = 2) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def table(rows: dict[str, Row]) -> str:
    header = (
        "contender",
        "wall s",
        "proc s",
        "CPU s",
        "main CPU s/1k",
        "peak MB",
        "maxRSS MB",
        "requests",
        "304",
        "MB sent",
    )
    lines = [header]
    for key in [*CONTENDERS, *sorted(k for k in rows if k not in CONTENDERS)]:
        row = rows.get(key)
        if row is None:
            continue
        m = row.measured
        if m is None:
            lines.append((LABELS[key], "skipped", "", "", "", "", "", "", "", ""))
            continue
        t = row.traffic
        failed = "" if m.ok else " (failed)"
        lines.append(
            (
                LABELS[key] + failed,
                _fmt(row.phase),
                _fmt(m.wall),
                _fmt(m.cpu),
                _fmt(main_cpu_per_1000(row), 2),
                _fmt(m.peak_pss_mb, 0),
                _fmt(m.max_rss_mb, 0),
                str(t.requests) if t.requests else "",
                str(t.not_modified) if t.requests else "",
                _fmt(t.bytes / 1e6, 1) if t.requests else "",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        out.append("| " + " | ".join(cells) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main_cpu_per_1000(row: Row | None) -> float:
    """CPU seconds (user + system) of our poll's own process, without its parse
    workers, per 1,000 entries written: the serial part of a poll."""
    if row is None or row.measured is None:
        return math.nan
    value = row.measured.report.get("main_cpu_per_1000_entries")
    return math.nan if value is None else float(value)


def _main_threads(row: Row | None) -> str:
    """The main process's CPU by thread (event loop, database writer, the process
    pool's feeder and manager threads), as the child counted it."""
    if row is None or row.measured is None:
        return ""
    threads = row.measured.report.get("main_cpu_by_thread") or {}
    return ", ".join(f"{name} {cpu:.2f}" for name, cpu in threads.items() if cpu >= 0.05)


def ratios(rows: dict[str, Row]) -> list[tuple[str, float]]:
    pinned_rows = sorted(
        (k for k in rows if k.startswith("ours-cold-w")), key=lambda k: int(k[11:])
    )
    return [
        ("cold poll / parse floor", ratio(rows.get("ours-cold"), rows.get("parse"))),
        *(
            (f"{LABELS[k][6:]} / parse floor", ratio(rows.get(k), rows.get("parse")))
            for k in pinned_rows
        ),
        ("cold poll / parse floor, CPU", cpu_ratio(rows.get("ours-cold"), rows.get("parse"))),
        ("cold poll / fetch floor", ratio(rows.get("ours-cold"), rows.get("fetch-cold"))),
        ("warm poll / warm fetch floor", ratio(rows.get("ours-warm"), rows.get("fetch-warm"))),
        ("reader cold / our cold", ratio(rows.get("reader-cold"), rows.get("ours-cold"))),
        ("reader warm / our warm", ratio(rows.get("reader-warm"), rows.get("ours-warm"))),
        ("rss2email cold / our cold", ratio(rows.get("rss2email-cold"), rows.get("ours-cold"))),
        ("rss2email warm / our warm", ratio(rows.get("rss2email-warm"), rows.get("ours-warm"))),
    ]


def _finite(value: Any) -> Any:
    """NaN (not measured) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def row_json(row: Row) -> dict[str, Any]:
    m = row.measured
    result: dict[str, Any] = {"label": LABELS.get(row.key, row.key), "skipped": row.skipped}
    if m is not None:
        result.update(
            {
                "ok": m.ok,
                "returncode": m.returncode,
                "phase_wall_s": row.phase,
                "phase_wall_all_s": row.all_phases,
                "process_wall_s": m.wall,
                "cpu_user_s": m.cpu_user,
                "cpu_sys_s": m.cpu_sys,
                "peak_pss_mb": m.peak_pss_mb,
                "max_rss_mb": m.max_rss_mb,
                "traffic": vars(row.traffic),
                "report": m.report,
                "log": m.log,
            }
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.poll", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FEEDS} feeds, smoke run")
    parser.add_argument("--feeds", type=int, default=None)
    parser.add_argument("--entries", type=int, default=DEFAULT_ENTRIES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--reader-workers", type=int, default=8)
    parser.add_argument(
        "--crossover-sizes",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[2, 5, 10, 20, 40],
        help="feed counts of the in-process/processes crossover rows (group 'crossover')",
    )
    parser.add_argument(
        "--small-sizes",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=list(SMALL_SIZES),
        help="feed counts of the one-shot small-poll rows (group 'small'), e.g. 2,20",
    )
    parser.add_argument("--no-compare", action="store_true", help="skip reader and rss2email")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated groups to run: fetch, parse, ours, reader, rss2email, small "
        "(and crossover, only when named)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one cold poll with py-spy"
    )
    parser.add_argument(
        "--parse-workers",
        default="",
        metavar="N[,M…]",
        help="also a cold poll with each of these numbers of parse processes, e.g. 1,2",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the cheap contenders (fastest kept)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per contender, seconds")
    parser.add_argument(
        "--warm-matrix",
        action="store_true",
        help="only warm polls, against the warm fetch floor and reader, in each scenario of "
        "--latency x --hosts x --protocols",
    )
    parser.add_argument("--latency", default="0,50", help="ms per answer, comma-separated")
    parser.add_argument(
        "--reader-everywhere",
        dest="reader_http_only",
        action="store_false",
        help="run reader in the https scenarios too (it speaks HTTP/1.1 only; a cold update "
        "per scenario parses the whole corpus)",
    )
    parser.add_argument("--hosts", default="own,shared", help="own (a host per feed), shared")
    parser.add_argument(
        "--protocols", default="http,https", help="http (HTTP/1.1), https (TLS, h2 offered)"
    )
    args = parser.parse_args(argv)
    feeds = args.feeds or (QUICK_FEEDS if args.quick else DEFAULT_FEEDS)
    if args.warm_matrix:
        return main_warm_matrix(args, feeds)

    load_start = os.getloadavg()
    subreaper = become_subreaper()
    started = time.perf_counter()
    corpus = ensure_corpus(feeds, args.entries, args.seed)
    print(
        f"poll benchmark: {len(corpus.feeds)} feeds x {args.entries} entries, "
        f"{corpus.total_bytes / 1e6:.1f} MB ({corpus.root.name}), "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load_start[0]:.2f}"
    )
    if not subreaper:
        print("  note: cannot become a child subreaper; CPU of orphaned workers is not counted")
    work = WORK / "poll"
    work.mkdir(parents=True, exist_ok=True)
    with FeedServer(corpus).start() as server:
        urls = work / "urls.txt"
        urls.write_text("".join(server.url(f) + "\n" for f in corpus.feeds), encoding="utf-8")
        bench = Bench(args, server, work)
        root = str(corpus.root)
        port = str(server.port)
        if bench.wanted("fetch"):
            for mode in ("cold", "warm"):
                options = ("--corpus", root, "--port", port, "--mode", mode)
                bench.run(f"fetch-{mode}", ours_argv("fetch-floor", *options))
        if bench.wanted("parse"):
            bench.run("parse", ours_argv("parse-floor", "--corpus", root))
            bench.run("parse-light", ours_argv("parse-floor", "--corpus", root, "--light"))
        if bench.wanted("ours"):
            ours(bench, corpus.root)
        competitors(bench, urls)
        small: dict[str, list[SmallRun]] = {}
        crossover: dict[str, list[SmallRun]] = {}
        feed_urls = [server.url(f) for f in corpus.feeds]
        if bench.wanted("small"):
            small = small_polls(
                bench, corpus.root, feed_urls, reader_command(bench), sizes=args.small_sizes
            )
        if "crossover" in args.only.split(","):  # not part of the default run
            crossover = small_polls(
                bench, corpus.root, feed_urls, None, sizes=args.crossover_sizes, variants=CROSSOVER
            )
    rows = bench.rows

    print()
    print(table(rows))
    print()
    for name, value in ratios(rows):
        print(f"  {name:<42} {_fmt(value)}")
    print()
    if small:
        print(small_table(small, "ours", "floor", "reader"))
        print()
    if crossover:
        print("parse in-process (always) against parse processes (always), cold and warm:")
        print(small_table(crossover, "in-process", "processes"))
        print()
    checked = goals(rows) + small_goals(small)
    for goal in checked:
        value = goal["value"]
        measured = not (isinstance(value, float) and math.isnan(value))
        if not measured:
            goal["pass"] = None
        shown = _fmt(value) if isinstance(value, float) else value
        verdict = "n/a " if not measured else "PASS" if goal["pass"] else "MISS"
        print(f"  {verdict}  {goal['goal']}: {shown}")
    cold = rows.get("ours-cold")
    if cold is not None and cold.measured is not None:
        report = cold.measured.report
        places = report.get("stall_places") or []
        if places:
            print("  where the cold poll's event loop was while it was late (share of samples):")
        for place in places[:4]:
            stack = place["stack"]
            ours_frame = next((f for f in reversed(stack) if f.split(":")[0] in OUR_FILES), "")
            via = f" (from {ours_frame})" if ours_frame and ours_frame != stack[-1] else ""
            print(f"    {place['share']:4.0%}  {stack[-1]}{via}")
        for key in ("ours-cold", *sorted(k for k in rows if k.startswith("ours-cold-w"))):
            by_thread = _main_threads(rows.get(key))
            if by_thread:
                print(f"  {LABELS[key]}: main process CPU s by thread: {by_thread}")
        print(
            f"  ours cold: {report.get('entries_stored')} entries stored, "
            f"{report.get('duplicates')} cross-post duplicates, statuses {report.get('statuses')}"
        )
    total = time.perf_counter() - started
    print(
        f"  whole run {total:.0f} s, load average {os.getloadavg()[0]:.2f} at the end "
        f"(others' work on the machine skews every figure); results in {RESULTS}"
    )

    RESULTS.write_text(
        json.dumps(
            _finite(
                {
                    "corpus": {
                        "feeds": len(corpus.feeds),
                        "entries": corpus.total_entries,
                        "bytes": corpus.total_bytes,
                        "seed": corpus.seed,
                        "dir": str(corpus.root),
                    },
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "platform": platform.platform(),
                    },
                    "competitors": installed_versions(COMPARE_VENV),
                    "contenders": {key: row_json(row) for key, row in rows.items()},
                    "ratios": dict(ratios(rows)),
                    "goals": checked,
                    "small_polls": {
                        key: [vars(run) for run in runs]
                        for key, runs in (small | crossover).items()
                    },
                    "run_seconds": total,
                    "load_average": {"start": load_start, "end": os.getloadavg()},
                }
            ),
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    ours_ok = all(
        rows[k].measured is not None and rows[k].measured.ok  # type: ignore[union-attr]
        for k in ("ours-cold", "ours-warm")
        if k in rows
    )
    return 0 if ours_ok else 1


def main_warm_matrix(args: argparse.Namespace, feeds: int) -> int:
    load_start = os.getloadavg()
    become_subreaper()
    started = time.perf_counter()
    corpus = ensure_corpus(feeds, args.entries, args.seed)
    print(
        f"warm poll matrix: {len(corpus.feeds)} feeds x {args.entries} entries, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load_start[0]:.2f}"
    )
    work = WORK / "poll-warm"
    work.mkdir(parents=True, exist_ok=True)
    results = warm_matrix(args, corpus, work)
    print()
    print(matrix_table(results))
    total = time.perf_counter() - started
    print(
        f"  whole run {total:.0f} s, load average {os.getloadavg()[0]:.2f} at the end; "
        f"results in {RESULTS_WARM}"
    )
    RESULTS_WARM.write_text(
        json.dumps(
            _finite(
                {
                    "feeds": len(corpus.feeds),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "competitors": installed_versions(COMPARE_VENV),
                    "scenarios": results,
                    "run_seconds": total,
                    "load_average": {"start": load_start, "end": os.getloadavg()},
                }
            ),
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
