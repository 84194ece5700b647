"""Digest benchmark: build and send digests for many subscribers to a loopback SMTP server.

    python -m benchmarks.digest [--quick] [--subscribers N] [--entries N] [--connections 1,4]
                                [--latency-ms MS] [--pipelining]

Seeds a database with N subscribers (daily and weekly; one source, the other, or every
source) and a batch of new entries (some cross-posted), then, in a process of its own
for each ``[mail] connections`` value given (1, the default, and 4):

- builds the digests (``build_pending``: selection, one transaction per subscriber),
  timed on its own;
- sends them in turns of 200 with the floor, so that both see the same machine load:
  ours is ``send_pending(limit=200)`` over the SMTP adapter, as ``aggregator digest
  send`` does (rendering from the stored digest, serialising, SMTP, marking each sent);
  the floor is as many pre-rendered messages (real digests, rendered and serialised
  before the clock starts) sent as ready bytes with smtplib over one connection;
- the same at a quarter of the subscribers, to show that memory stays flat.

Besides messages per second, both report their CPU time per message (all threads of
the process), which the machine's load moves much less than wall time.

The SMTP server (aiosmtpd, counting and discarding) runs in a process of its own; with
``--latency-ms`` it waits that long before it answers each DATA, as a relay that writes
the message to its queue on disk does (where several connections pay); with
``--pipelining`` it offers PIPELINING, which ours then uses (smtplib, the floor, never
does).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DEFAULT_SUBSCRIBERS = 10_000
DEFAULT_ENTRIES = 5_000
QUICK_SUBSCRIBERS = 1_000
QUICK_ENTRIES = 500
CROSS_POST_SHARE = 0.05
NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
BASE_URL = "https://digest.example.org"
SENDER = "Blog digest <digest@digest.example.org>"


# --- the SMTP sink ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _sink(port: int, count: Any, ready: Any, stop: Any, latency: float, pipelining: bool) -> None:
    import asyncio

    from aiosmtpd.controller import Controller

    class Counting:
        async def handle_EHLO(
            self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
        ) -> list[str]:
            session.host_name = hostname
            if pipelining:  # as Postfix and most relays offer (RFC 2920)
                return [*responses[:-1], "250-PIPELINING", responses[-1]]
            return responses

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            if latency:  # a relay that queues the message to disk before it answers
                await asyncio.sleep(latency)
            with count.get_lock():
                count.value += 1
            return "250 2.0.0 Accepted"

    controller = Controller(Counting(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


class Sink:
    """aiosmtpd in a process of its own, counting and discarding; ``latency`` seconds
    before each answer to DATA; PIPELINING offered with ``pipelining``."""

    def __init__(self, latency: float = 0.0, pipelining: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self.port = _free_port()
        self.count = context.Value("q", 0)
        self._ready = context.Event()
        self._stop = context.Event()
        self._process = context.Process(
            target=_sink,
            args=(self.port, self.count, self._ready, self._stop, latency, pipelining),
            daemon=True,
        )

    def __enter__(self) -> Sink:
        self._process.start()
        if not self._ready.wait(30):
            raise RuntimeError("SMTP sink did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)

    @property
    def received(self) -> int:
        return int(self.count.value)


# --- seeding ------------------------------------------------------------------------


def _settings(db_path: Path, port: int, connections: int = 1) -> Any:
    from aggregator.config import settings_from_mapping

    return settings_from_mapping(
        {
            "database": str(db_path),
            "web": {"base_url": BASE_URL},
            "mail": {
                "from": SENDER,
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "smtp_security": "none",
                "connections": connections,
            },
        },
        env={},
        path=db_path.parent / "config.toml",
    )


def seed(db_path: Path, subscribers: int, entries: int, rng: random.Random) -> None:
    from aggregator.store import Store
    from aggregator.store.codec import to_db

    store = Store.open(db_path)
    stamp = to_db(NOW - timedelta(days=1))
    with store.write() as db:
        feeds = []
        for index, title in enumerate(("Learning Layers project blog", "Cluster Performance Blog")):
            cursor = db.execute(
                "INSERT INTO feeds (url, title, site_url, origin, added_at, backlog_seq) "
                "VALUES (?, ?, ?, 'cli', ?, 0)",
                [f"https://blog{index}.test/feed", title, f"https://blog{index}.test/", stamp],
            )
            feeds.append(cursor.lastrowid)
        rows = []
        for i in range(subscribers):
            rows.append(
                (
                    f"reader{i}@example.org",
                    f"reader{i}@example.org",
                    "daily" if i % 2 else "weekly",
                    int(i % 3 == 0),
                    stamp,
                    stamp,
                    stamp,
                )
            )
        db.conn.executemany(
            "INSERT INTO subscribers (email, email_key, status, cadence, all_feeds, watermark, "
            "created_at, confirmed_at, status_changed_at) "
            "VALUES (?, ?, 'confirmed', ?, ?, 0, ?, ?, ?)",
            rows,
        )
        db.execute(
            "INSERT INTO subscriber_feeds (subscriber_id, feed_id) "
            "SELECT id, CASE WHEN id % 3 = 1 THEN ? ELSE ? END FROM subscribers "
            "WHERE all_feeds = 0",
            feeds,
        )
    words = [
        "cluster",
        "learning",
        "layers",
        "apprentices",
        "tools",
        "network",
        "scale",
        "innovation",
    ]
    with store.write() as db:
        story_ids: list[int] = []
        for i in range(entries):
            feed = feeds[i % 2]
            title = " ".join(rng.choice(words) for _ in range(6)).capitalize() + f" {i}"
            duplicate_of = None
            if story_ids and rng.random() < CROSS_POST_SHARE:
                duplicate_of = rng.choice(story_ids[-50:])
            body = "<p>" + " ".join(rng.choice(words) for _ in range(120)) + "</p>"
            published = to_db(NOW - timedelta(minutes=rng.randint(1, 60 * 24 * 14)))
            cursor = db.execute(
                "INSERT INTO entries (feed_id, key, link, title, norm_title, summary_html, "
                "content_html, text, content_hash, published, first_seen, last_changed, "
                "duplicate_of) VALUES (?, ?, ?, ?, ?, '', ?, '', ?, ?, ?, ?, ?)",
                [
                    feed,
                    f"k{i}",
                    f"https://blog{i % 2}.test/{i}",
                    title,
                    title.lower(),
                    body,
                    f"h{i}",
                    published,
                    stamp,
                    stamp,
                    duplicate_of,
                ],
            )
            if duplicate_of is None and cursor.lastrowid is not None:
                story_ids.append(cursor.lastrowid)
    store.close()


# --- contenders (each in a child process) ------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


ROUND = 200  # messages per round when ours and the floor take turns


def child_interleaved(db_path: Path, port: int, connections: int) -> dict[str, Any]:
    """Ours and the floor taking turns in rounds of ``ROUND`` messages in one process, so
    that both see the same machine load: ``send_pending(limit=ROUND)``, then as many
    pre-rendered messages as ready bytes over one smtplib connection, until nothing is
    pending. Building (``build_pending``) is timed on its own, before."""
    from aggregator.digests.build import build_pending
    from aggregator.digests.send import send_pending
    from aggregator.mail import SmtpSender

    settings = _settings(db_path, port, connections)
    store = _open_store(db_path)
    started = time.perf_counter()
    built = build_pending(store, settings, NOW, due_only=False)
    build_seconds = time.perf_counter() - started
    wire = _wire_messages(store, settings)
    assert settings.mail.smtp is not None
    sender = SmtpSender(settings.mail.smtp)
    ours_seconds = ours_cpu = floor_seconds = floor_cpu = 0.0
    sent = floor_sent = 0
    with smtplib.SMTP("127.0.0.1", port) as connection:
        while True:
            started, cpu = time.perf_counter(), time.process_time()
            report = send_pending(store, sender, settings, lambda: NOW, limit=ROUND)
            ours_seconds += time.perf_counter() - started
            ours_cpu += time.process_time() - cpu
            if report.handled == 0:
                break
            sent += report.sent
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(report.handled):
                mail_from, rcpt_to, data = wire[floor_sent % len(wire)]
                connection.sendmail(mail_from, [rcpt_to], data)
                floor_sent += 1
            floor_seconds += time.perf_counter() - started
            floor_cpu += time.process_time() - cpu
    sender.close()
    store.close()
    return {
        "built": built.built,
        "build_seconds": build_seconds,
        "sent": sent,
        "ours_seconds": ours_seconds,
        "ours_cpu": ours_cpu,
        "floor_sent": floor_sent,
        "floor_seconds": floor_seconds,
        "floor_cpu": floor_cpu,
        "mean_bytes": sum(len(w[2]) for w in wire) / len(wire),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _open_store(db_path: Path) -> Any:
    from aggregator.store import Store

    return Store.open(db_path)


def _wire_messages(store: Any, settings: Any) -> list[tuple[str, str, bytes]]:
    """Up to 60 of the stored digests, rendered and serialised: (from, to, bytes)."""
    from aggregator.digests.render import Renderer
    from aggregator.mail import envelope_addresses, message_bytes
    from aggregator.store import digests as digest_rows
    from aggregator.subscriptions import links_for

    renderer = Renderer(store, settings, links_for(store, settings))
    wire = []
    ids = [row[0] for row in store.conn.execute("SELECT id FROM digests ORDER BY id LIMIT 60")]
    for digest_id in ids:
        digest = digest_rows.get_digest(store.db, digest_id)
        assert digest is not None
        message = renderer.message(digest, date=NOW)
        assert message is not None
        mail_from, rcpt_to = envelope_addresses(message)
        wire.append((mail_from, rcpt_to, message_bytes(message)))
    return wire


def _run_child(*args: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    try:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.digest", "--child", *args, "--out", str(out)],
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return report
    finally:
        out.unlink(missing_ok=True)


# --- the run ------------------------------------------------------------------------


def run(
    subscribers: int,
    entries: int,
    seed_value: int,
    connections: list[int],
    latency: float,
    pipelining: bool,
) -> int:
    print(
        f"digest benchmark: {subscribers} subscribers, {entries} new entries, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"relay answers DATA after {latency * 1000:.0f} ms, "
        f"PIPELINING {'offered' if pipelining else 'not offered'}"
    )
    with (
        tempfile.TemporaryDirectory(prefix="digest-bench-") as tmp,
        Sink(latency, pipelining) as sink,
    ):
        full = Path(tmp) / "full.sqlite3"
        small = Path(tmp) / "small.sqlite3"
        started = time.perf_counter()
        seed(full, subscribers, entries, random.Random(seed_value))
        seed(small, max(subscribers // 4, 1), entries, random.Random(seed_value))
        copies = {}
        for count in connections[1:]:
            copies[count] = Path(tmp) / f"full-{count}.sqlite3"
            shutil.copyfile(full, copies[count])
        print(f"  seeded in {time.perf_counter() - started:.1f} s")

        # Ours and the floor take turns in one process (the machine's load moves during
        # a run; in turns both see the same); memory at a quarter of the subscribers.
        quarter = _run_child("interleaved", str(small), str(sink.port), str(connections[0]))
        ok = True
        runs: dict[int, dict[str, Any]] = {}
        for count in connections:
            before = sink.received
            got = _run_child(
                "interleaved", str(copies.get(count, full)), str(sink.port), str(count)
            )
            delivered = sink.received - before
            ok = ok and got["sent"] == got["built"] > 0
            ok = ok and delivered == got["sent"] + got["floor_sent"]
            runs[count] = got
            ours_rate = got["sent"] / got["ours_seconds"]
            floor_rate = got["floor_sent"] / got["floor_seconds"]
            with_building = got["sent"] / (got["ours_seconds"] + got["build_seconds"])
            plural = "s" if count > 1 else ""
            print(
                f"  {count} connection{plural}: {got['built']} digests built in "
                f"{got['build_seconds']:.1f} s; in turns of {ROUND}: ours sent {got['sent']} "
                f"in {got['ours_seconds']:.1f} s ({ours_rate:.0f} msgs/s, "
                f"{1000 * got['ours_cpu'] / got['sent']:.2f} ms CPU a message), the floor "
                f"(ready bytes, mean {got['mean_bytes'] / 1024:.1f} KB, smtplib over one "
                f"connection) {got['floor_sent']} in {got['floor_seconds']:.1f} s "
                f"({floor_rate:.0f} msgs/s, {1000 * got['floor_cpu'] / got['floor_sent']:.2f} "
                f"ms CPU a message); peak RSS {got['peak_rss_mb']:.0f} MB"
            )
            print(
                f"  result, {count} connection{plural}: floor/ours = "
                f"{floor_rate / ours_rate:.2f}x sending (goal: at most 1.5x), "
                f"{floor_rate / with_building:.2f}x with building"
            )
        first = runs[connections[0]]
        print(
            f"  memory: peak RSS {quarter['peak_rss_mb']:.0f} MB at "
            f"{max(subscribers // 4, 1)} subscribers, {first['peak_rss_mb']:.0f} MB at "
            f"{subscribers}"
        )
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.digest", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--subscribers", type=int, default=None)
    parser.add_argument("--entries", type=int, default=None)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="the SMTP sink waits this long before answering DATA (a relay's disk)",
    )
    parser.add_argument(
        "--pipelining",
        action="store_true",
        help="the SMTP sink offers PIPELINING (ours uses it; smtplib, the floor, does not)",
    )
    parser.add_argument(
        "--connections",
        default="1,4",
        help="comma-separated [mail] connections to measure (default 1,4; the first one "
        "also gives the memory rows)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        kind, db_path, port, *rest = args.child
        assert kind == "interleaved"
        report = child_interleaved(Path(db_path), int(port), int(rest[0]))
        Path(args.out).write_text(json.dumps(report), encoding="utf-8")
        return 0
    subscribers = args.subscribers or (QUICK_SUBSCRIBERS if args.quick else DEFAULT_SUBSCRIBERS)
    entries = args.entries or (QUICK_ENTRIES if args.quick else DEFAULT_ENTRIES)
    connections = [int(part) for part in args.connections.split(",") if part.strip()]
    return run(
        subscribers, entries, args.seed, connections, args.latency_ms / 1000, args.pipelining
    )


if __name__ == "__main__":
    sys.exit(main())
