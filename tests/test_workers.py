"""No process left behind: the fork server, the parse workers and multiprocessing's
resource tracker end within seconds of the process that started them, however it ends
(``kill -9`` of ``aggregator poll`` or ``aggregator run``, ``os._exit``, an unhandled
exception, a normal exit). Complements K1 and K8, which kill or stop the whole group.

Real processes throughout. The descendants of the command are read from
``/proc/<pid>/task/*/children`` while it runs (after the kill they belong to init or a
subreaper, so they are recorded first, by pid and start time), then the test waits,
with a deadline, until every one of them has ended.

The default run kills each command once while its workers wait for documents; ``pytest
-m slow`` also kills at seeded random moments, parse workers busy or still starting.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from feedfactory import Item, rss
from feedserver import FeedServer

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
GONE_WITHIN = 10.0  # seconds; in practice a fraction of one

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@dataclass(frozen=True)
class Proc:
    pid: int
    started: int  # start time in clock ticks since boot: tells a reused pid apart

    def running(self) -> bool:
        """Whether this very process still runs (a zombie awaiting its reaper does not)."""
        fields = _stat(self.pid)
        return fields is not None and int(fields[19]) == self.started and fields[0] != "Z"

    def describe(self) -> str:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            command = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return f"{self.pid} (gone)"
        rss = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")), "?"
        )
        return f"{self.pid} rss={rss}kB {command[:100].decode(errors='replace')}"


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc(pid: int) -> Proc | None:
    fields = _stat(pid)
    return None if fields is None else Proc(pid, int(fields[19]))


def children(pid: int) -> list[int]:
    found: list[int] = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            found.extend(int(child) for child in listing.read_text().split())
    return found


def descendants(pid: int) -> dict[Proc, int]:
    """Every running descendant of ``pid``, with its depth (1: a child)."""
    found: dict[Proc, int] = {}
    todo = [(child, 1) for child in children(pid)]
    while todo:
        child, depth = todo.pop()
        p = proc(child)
        if p is not None and p.running() and p not in found:
            found[p] = depth
            todo.extend((grandchild, depth + 1) for grandchild in children(child))
    return found


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(
    folder: Path,
    server: FeedServer,
    *,
    quick: int,
    slow: int,
    delay: float,
    in_process: str = "parse_in_process_kb = 0\n",
) -> Path:
    """``quick`` feeds answered at once (their documents start the parse workers) and
    ``slow`` feeds answered after ``delay`` seconds (they keep the poll going).
    ``in_process``: the setting that makes even small polls use the workers (tests of
    the pool), or "" for the default."""
    urls = []
    for n in range(quick + slow):
        items = [
            Item(
                f"Feed {n} post {i}",
                link=f"https://b{n}.test/{i}",
                guid=f"{n}-{i}",
                body="<p>x</p>",
            )
            for i in range(20)
        ]
        urls.append(server.add(f"/f{n}.xml", body=rss(items), delay=0.0 if n < quick else delay))
    feeds = "".join(f'[[feeds]]\nurl = "{url}"\n' for url in urls)
    config = folder / "config.toml"
    config.write_text(
        'database = "db.sqlite3"\n'
        "[fetch]\nallow_private_addresses = true\n"
        f"[poll]\nparse_workers = {WORKERS}\ninterval_minutes = 0.02\nmin_interval_minutes = 0.01\n"
        + in_process
        + f"[web]\nport = {free_port()}\n"
        "[service]\npoll_tick_seconds = 0.5\ndigest_tick_seconds = 60\n" + feeds,
        encoding="utf-8",
    )
    return config


@contextlib.contextmanager
def started(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The command in a session of its own; whatever of it is left is killed afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:  # its helpers inherited its process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def workers_running(pid: int) -> bool:
    """The fork server and the resource tracker (children) and the parse workers
    (children of the fork server) are all there."""
    tree = descendants(pid)
    return len(tree) >= 2 + WORKERS and sum(depth == 2 for depth in tree.values()) >= WORKERS


def assert_all_end(process: subprocess.Popen[bytes], tree: dict[Proc, int], log: Path) -> None:
    """Every recorded descendant, and any the fork server started meanwhile, ends."""
    everyone = set(tree)
    deadline = time.monotonic() + GONE_WITHIN
    while True:
        for p in list(everyone):  # a worker forked just before the kill is seen here
            everyone.update(descendants(p.pid) if p.running() else ())
        left = [p for p in everyone if p.running()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [p.describe() for p in left] == [], log.read_text(errors="replace")[-3000:]


def aggregator(config: Path, command: str) -> list[str]:
    return [sys.executable, "-m", "aggregator", "--config", str(config), command]


@pytest.mark.parametrize("command", ["poll", "run"])
def test_sigkill_of_the_command_leaves_no_process_behind(
    tmp_path: Path, feed_server: FeedServer, command: str
) -> None:
    """``kill -9`` of ``aggregator poll`` / ``aggregator run`` while its parse workers
    wait for documents: the fork server, the workers and the resource tracker end too."""
    config = write_config(tmp_path, feed_server, quick=2, slow=6, delay=60.0)
    log = tmp_path / "out.log"
    with started(aggregator(config, command), log) as process:
        wait_for(lambda: workers_running(process.pid), 20, "the parse workers")
        tree = descendants(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        assert_all_end(process, tree, log)


def test_a_poll_that_ends_normally_leaves_no_process_behind(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    config = write_config(tmp_path, feed_server, quick=2, slow=2, delay=3.0)
    log = tmp_path / "out.log"
    with started(aggregator(config, "poll"), log) as process:
        wait_for(lambda: workers_running(process.pid), 20, "the parse workers")
        tree = descendants(process.pid)
        assert process.wait(timeout=30) == 0, log.read_text()
        assert_all_end(process, tree, log)


# The pool on its own, in a process that ends in each of the ways a process ends. The
# pool is never closed here: nothing but the mechanisms of aggregator.workers ends it.
POOL_OWNER = f"""
import asyncio, os, signal, sys
from aggregator.workers import ParseWorkers

async def main(how):
    workers = ParseWorkers({WORKERS}, preload=["aggregator.prepare"])
    await workers.run(os.getpid)
    print("ready", flush=True)
    sys.stdin.readline()
    if how == "exception":
        raise RuntimeError("an unhandled exception")
    if how == "exit":
        os._exit(3)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("how", ["normal", "exception", "exit", "sigkill"])
def test_the_pool_ends_with_its_owner_however_the_owner_ends(tmp_path: Path, how: str) -> None:
    log = tmp_path / "out.log"
    with started([sys.executable, "-c", POOL_OWNER, how], log) as process:
        wait_for(lambda: "ready" in log.read_text(), 20, "the pool")
        wait_for(lambda: workers_running(process.pid), 10, "the parse workers")
        tree = descendants(process.pid)
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.flush()
        process.wait(timeout=20)
        assert_all_end(process, tree, log)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["poll", "run"])
def test_sigkill_at_random_moments_leaves_no_process_behind(
    tmp_path: Path, feed_server: FeedServer, command: str
) -> None:
    """Seeded kills from start-up to the middle of parsing large documents: while the
    fork server starts, while workers are forked, while they parse."""
    runs = int(os.environ.get("AGGREGATOR_KILL_RUNS", "10"))
    rng = random.Random(f"workers-{command}")
    big = [
        Item(
            f"Long {i}",
            link=f"https://big.test/{i}",
            guid=f"big-{i}",
            body="<p>" + "word " * 3000 + "</p>",
        )
        for i in range(300)
    ]
    for n in range(WORKERS * 2):
        feed_server.add(f"/big{n}.xml", body=rss(big))
    config = write_config(tmp_path, feed_server, quick=0, slow=2, delay=60.0)
    text = config.read_text()
    config.write_text(
        text
        + "".join(
            f'[[feeds]]\nurl = "{feed_server.url(f"/big{n}.xml")}"\n' for n in range(WORKERS * 2)
        )
        + "[limits]\nmax_entries = 300\n",
        encoding="utf-8",
    )
    for run in range(runs):
        log = tmp_path / f"out-{run}.log"
        with started(aggregator(config, command), log) as process:
            time.sleep(rng.uniform(0.3, 4.0))
            tree = descendants(process.pid)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            assert_all_end(process, tree, log)


def test_a_small_poll_parses_in_its_own_process_and_starts_no_workers(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """With the default ``parse_in_process_kb``, ``aggregator poll`` of a few small feeds
    parses them itself: no fork server, no worker, no resource tracker is ever started,
    and the entries are stored."""
    config = write_config(tmp_path, feed_server, quick=2, slow=1, delay=1.0, in_process="")
    log = tmp_path / "out.log"
    seen: dict[Proc, int] = {}
    with started(aggregator(config, "poll"), log) as process:
        while process.poll() is None:
            seen.update(descendants(process.pid))
            time.sleep(0.02)
        assert process.returncode == 0, log.read_text()
    assert [p.describe() for p in seen] == []
    with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM entries").fetchone() == (60,)  # 3 feeds x 20


POOL_BUDGET = f"""
import asyncio, os
from aggregator.workers import ParseWorkers

async def main():
    workers = ParseWorkers({WORKERS}, preload=["aggregator.prepare"], inline_bytes=100)
    pids = [await workers.run(os.getpid, size=60)]
    pids.append(await workers.run(os.getpid, size=30))
    print(workers.started, flush=True)
    pids.append(await workers.run(os.getpid, size=20))  # 110 bytes: past the budget
    pids.append(await workers.run(os.getpid, size=1))  # once started, always the workers
    print(workers.started, workers.inline_spent, flush=True)
    print(" ".join("here" if pid == os.getpid() else "worker" for pid in pids), flush=True)
    workers.close()

asyncio.run(main())
"""


def test_work_runs_in_process_until_the_budget_is_spent_then_in_the_workers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", POOL_BUDGET], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["False", "True 90", "here here worker worker"]


DOCUMENT_BOUND = f"""
import asyncio, os
from aggregator.workers import ParseWorkers

async def main():
    workers = ParseWorkers(
        {WORKERS}, preload=["aggregator.prepare"], inline_bytes=1000, inline_document_bytes=100
    )
    pids = [await workers.run(os.getpid, size=100)]
    pids.append(await workers.run(os.getpid, size=101))  # under the budget, over the bound
    pids.append(await workers.run(os.getpid, size=1))  # once started, always the workers
    print(workers.inline_spent, flush=True)
    print(" ".join("here" if pid == os.getpid() else "worker" for pid in pids), flush=True)
    workers.close()

asyncio.run(main())
"""


def test_a_document_over_the_in_process_bound_goes_to_a_worker_even_within_the_budget() -> None:
    """Only small documents are parsed in the owner's process: a bigger one (perhaps
    built to be slow to parse) costs a worker, even while the total budget has room."""
    done = subprocess.run(
        [sys.executable, "-c", DOCUMENT_BOUND], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["100", "here worker worker"]


def test_a_poll_sends_a_document_over_the_bound_to_a_worker_not_its_own_process(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """``aggregator poll`` with the default budget (1 MB) and one 0.6 MB document of
    200,000 unclosed tags (a parse of it here would block the other feeds' parses): a
    worker is started for it, the poll ends, and the other feeds are stored."""
    config = write_config(tmp_path, feed_server, quick=2, slow=0, delay=0.0, in_process="")
    hostile = b"<rss version='2.0'><channel><title>t</title><item><description>" + b"<a>" * 200_000
    url = feed_server.add("/hostile.xml", body=hostile)
    with config.open("a") as extra:
        extra.write(f'[[feeds]]\nurl = "{url}"\n')
    log = tmp_path / "out.log"
    seen: dict[Proc, int] = {}
    with started(aggregator(config, "poll"), log) as process:
        while process.poll() is None:
            seen.update(descendants(process.pid))
            time.sleep(0.02)
        assert process.returncode == 0, log.read_text()
    assert seen  # the fork server and a worker (a small poll starts none, see above)
    with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as db:
        others = "SELECT count(*) FROM entries WHERE title LIKE 'Feed %'"
        assert db.execute(others).fetchone() == (40,)  # 2 feeds x 20


DEADLINE = """
import asyncio, os, time
from functools import partial
from aggregator.workers import ParseWorkers, WorkerDied, WorkTimedOut

async def main():
    workers = ParseWorkers(1, deadline=0.5)
    first = await workers.run(os.getpid)
    started = time.monotonic()
    try:
        await workers.run(partial(time.sleep, 30))  # Python code: the alarm stops it
    except WorkTimedOut as error:
        quick = time.monotonic() - started < 10  # not the 30 s the work asked for
        print("timed out", "quickly" if quick else "slowly", error, flush=True)
    print("same worker" if await workers.run(os.getpid) == first else "new worker", flush=True)
    try:  # stuck in C (one call of a builtin): the alarm cannot stop it, the CPU limit can
        await workers.run(partial(sum, range(10**12)))
    except WorkerDied:
        print("died", flush=True)
    print("same worker" if await workers.run(os.getpid) == first else "new worker", flush=True)
    workers.close()

asyncio.run(main())
"""


def test_work_past_its_deadline_in_a_worker_is_stopped_and_the_pool_goes_on() -> None:
    """A piece of work over its deadline stops with WorkTimedOut and the worker stays;
    work stuck where the alarm cannot reach ends its worker (WorkerDied) and a new
    worker takes the next piece of work."""
    done = subprocess.run(
        [sys.executable, "-c", DEADLINE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == [
        "timed out quickly stopped after 0.5 s",
        "same worker",
        "died",
        "new worker",
    ]


def test_only_the_fork_server_ignores_sigterm() -> None:
    """The fork server's first preloaded module ignores SIGTERM there alone: imported in
    any other process (a tool importing every module) it changes nothing, since an
    ignored SIGTERM passes on to every program that process starts."""
    import subprocess
    import sys

    probe = (
        "import signal, aggregator.forkserver_signals as f\n"
        "print(f.in_fork_server(), signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "True"]
