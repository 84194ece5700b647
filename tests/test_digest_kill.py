"""Exactly once across kill -9: a real `aggregator digest send` process, killed part-way.

After every kill the command is started again until it finishes. Then the SMTP server's
log must hold every subscriber's digest, and a digest twice at most once per kill (the
one in flight), always with the same Message-ID (THREATS K2).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from digestkit import T0, add_entry, add_feed, rows
from smtpserver import Received, SmtpServer

from aggregator.config import settings_from_mapping
from aggregator.store import Store
from aggregator.subscriptions import add_by_operator, links_for

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIBERS = 40


def write_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""database = "db.sqlite3"
[web]
base_url = "https://news.example.org"
[mail]
from = "Blog digest <digest@news.example.org>"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_security = "none"
""",
        encoding="utf-8",
    )
    return config


def seed(config: Path) -> list[str]:
    settings = settings_from_mapping(
        {
            "database": "db.sqlite3",
            "web": {"base_url": "https://news.example.org"},
        },
        env={},
        path=config,
    )
    store = Store.open(settings.database)
    links = links_for(store, settings)
    alpha = add_feed(store, "Alpha Blog")
    beta = add_feed(store, "Beta Notes")
    emails = [f"reader{i}@example.org" for i in range(SUBSCRIBERS)]
    for email in emails:
        add_by_operator(store, settings, links, email=email, now=T0)
    first = add_entry(store, alpha, "A story on both blogs", link="https://alpha.test/1")
    add_entry(store, beta, "A story on both blogs", link="https://beta.test/1", duplicate_of=first)
    for i in range(5):
        add_entry(store, alpha if i % 2 else beta, f"Post {i}", link=f"https://x.test/{i}")
    store.close()
    return emails


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aggregator", "--config", str(config), "digest", "send"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120"},
    )


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)  # reaped: its pid is gone, so its sending lease can be taken over


def finish(config: Path) -> None:
    process = start(config)
    stdout, stderr = process.communicate(timeout=90)
    assert process.returncode == 0, stderr.decode()
    assert b"Sent" in stdout


def check(server: SmtpServer, emails: list[str], kills: int, config: Path) -> None:
    received = server.received()
    counts = Counter(item.rcpt_tos[0] for item in received)
    assert set(counts) == set(emails), "somebody was skipped"
    extra = sum(counts.values()) - len(emails)
    assert extra <= kills, f"{extra} repeats after {kills} kills: {counts.most_common(3)}"
    ids: dict[str, set[str]] = {}
    for item in received:
        ids.setdefault(item.rcpt_tos[0], set()).add(item.parse()["Message-ID"])
    assert all(len(found) == 1 for found in ids.values())
    store = Store.open(config.parent / "db.sqlite3")
    try:
        assert store.integrity_ok()
        assert rows(store, "SELECT status, count(*) FROM digests GROUP BY status") == [
            ("sent", len(emails))
        ]
    finally:
        store.close()


def kill_when_received(server: SmtpServer, process: subprocess.Popen[bytes], count: int) -> None:
    deadline = time.monotonic() + 60
    while len(server.received()) < count and process.poll() is None:
        assert time.monotonic() < deadline, "the sending run never got that far"
        time.sleep(0.002)
    kill(process)


def kill_inside_data(server: SmtpServer, process: subprocess.Popen[bytes], count: int) -> None:
    """Kill the sender while the server holds message ``count``, before it answers 250."""
    seen = len(server.received())

    def hook(item: Received) -> str | None:
        nonlocal seen
        seen += 1
        if seen == count and process.poll() is None:
            process.send_signal(signal.SIGKILL)
        return None

    server.reject_data = hook
    try:
        process.wait(timeout=60)
    finally:
        server.reject_data = None
    kill(process)


def stop_inside_data(
    server: SmtpServer, process: subprocess.Popen[bytes], count: int
) -> tuple[bytes, bytes]:
    """SIGTERM to ``process`` while the server holds message ``count`` (before its 250,
    for long enough that the signal arrives while the message is open); then its output."""

    def hook(item: Received) -> str | None:
        if len(server.received()) + 1 == count and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            time.sleep(0.4)
        return None

    server.reject_data = hook
    try:
        return process.communicate(timeout=60)
    finally:
        server.reject_data = None


def run_scenario(tmp_path: Path, server: SmtpServer, rng: random.Random) -> None:
    config = write_config(tmp_path, server.port)
    emails = seed(config)
    kills = 0
    for _ in range(rng.randint(1, 3)):
        process = start(config)
        done = len(server.received())
        how = rng.choice(["time", "received", "data"])
        if how == "time":  # anywhere: while importing, building, connecting or sending
            time.sleep(rng.uniform(0.2, 2.5))
            kill(process)
        elif how == "received":
            kill_when_received(server, process, done + rng.randint(1, 12))
        else:
            kill_inside_data(server, process, done + rng.randint(1, 12))
        kills += 1
        if len(server.received()) >= SUBSCRIBERS:
            break
    finish(config)
    check(server, emails, kills, config)


@pytest.mark.parametrize("seed_value", [1, 2, 3])
def test_k2_killed_sender_delivers_everything_once(tmp_path: Path, smtp_server, seed_value) -> None:
    run_scenario(tmp_path, smtp_server, random.Random(seed_value))


@pytest.mark.slow
@pytest.mark.parametrize("seed_value", range(100, 120))
def test_k2_killed_sender_delivers_everything_once_many_seeds(
    tmp_path: Path, smtp_server, seed_value
) -> None:
    run_scenario(tmp_path, smtp_server, random.Random(seed_value))


def test_smtp_down_during_the_run_then_back(tmp_path: Path, smtp_server: SmtpServer) -> None:
    config = write_config(tmp_path, smtp_server.port)
    emails = seed(config)
    smtp_server.stop()
    process = start(config)
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == 2 and b"mail server unavailable" in stderr
    smtp_server.start()
    # Retries wait for their backoff; the digests never tried go out at once.
    finish(config)
    store = Store.open(tmp_path / "db.sqlite3")
    with store.write() as db:
        db.execute("UPDATE digests SET next_attempt_at = '2000-01-01T00:00:00.000000Z'")
    store.close()
    finish(config)
    check(smtp_server, emails, 0, config)


def test_sigterm_finishes_the_message_in_flight_then_stops(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """SIGTERM while the server holds a message: that message is handed over and recorded,
    no other is started, the command exits 0 saying so, and the next run sends the rest,
    each exactly once."""
    config = write_config(tmp_path, smtp_server.port)
    emails = seed(config)
    process = start(config)
    stop_at = 5
    _, stderr = stop_inside_data(smtp_server, process, stop_at)
    assert process.returncode == 0, stderr.decode()
    assert b"stopped by a signal" in stderr
    assert len(smtp_server.received()) == stop_at
    store = Store.open(tmp_path / "db.sqlite3")
    try:
        assert dict(rows(store, "SELECT status, count(*) FROM digests GROUP BY status")) == {
            "sent": stop_at,
            "pending": SUBSCRIBERS - stop_at,
        }
    finally:
        store.close()
    finish(config)
    check(smtp_server, emails, 0, config)


@pytest.mark.parametrize("mail", ["digests", "welcomes"])
def test_the_service_stopped_mid_send_records_the_message_in_flight(
    tmp_path: Path, smtp_server: SmtpServer, mail: str
) -> None:
    """SIGTERM to `aggregator run` while its digest job (or its welcome mails) has a
    message on the wire: the service waits for that message, records it, sends no other
    and exits 0; the next run sends the rest, each exactly once."""
    import socket

    from aggregator.digests.build import build_pending

    config = write_config(tmp_path, smtp_server.port)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = config.read_text(encoding="utf-8").replace("[web]\n", f"[web]\nport = {port}\n")
    config.write_text(text + "[service]\ndigest_tick_seconds = 0.2\n", encoding="utf-8")
    emails = seed(config)
    store = Store.open(tmp_path / "db.sqlite3")
    settings = settings_from_mapping(
        {"database": "db.sqlite3", "web": {"base_url": "https://news.example.org"}},
        env={},
        path=config,
    )
    assert build_pending(store, settings, T0, due_only=False).built == len(emails)
    if mail == "digests":
        with store.write() as db:  # as if their welcomes had gone out already
            db.execute("UPDATE subscribers SET welcome_due = 0")
    store.close()
    service = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "--config", str(config), "run"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stop_at = 3
    log, _ = stop_inside_data(smtp_server, service, stop_at)
    assert service.returncode == 0, log.decode()
    assert len(smtp_server.received()) == stop_at, log.decode()
    if mail == "welcomes":
        store = Store.open(tmp_path / "db.sqlite3")
        try:  # the others are still owed, to be sent by the next run
            assert rows(store, "SELECT count(*) FROM mail_owed WHERE kind = 'welcome'") == [
                (len(emails) - stop_at,)
            ]
        finally:
            store.close()
        return
    finish(config)
    check(smtp_server, emails, 0, config)
