"""The long-running service: one job runner per database (K5), end to end, SIGTERM (K8)."""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from feedfactory import Item, rss
from feedserver import FeedServer
from smtpserver import SmtpServer

from aggregator.scheduler import JobLock

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_k5_only_one_process_holds_the_job_lock(tmp_path: Path) -> None:
    lock_path = tmp_path / "db.sqlite3.jobs.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from pathlib import Path; from aggregator.scheduler import JobLock;"
            f"lock = JobLock(Path({str(lock_path)!r})); print(lock.acquire(), flush=True);"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "True"
        second = JobLock(lock_path)
        assert second.acquire() is False  # the other process runs the jobs
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        assert second.acquire() is True  # a dead holder's lock is free at once
        second.release()
    finally:
        holder.kill()
        holder.wait(timeout=10)


def service_config(tmp_path: Path, feed_url: str, smtp_port: int, web_port: int) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
database = "db.sqlite3"
[fetch]
allow_private_addresses = true
[poll]
interval_minutes = 0.02
min_interval_minutes = 0.01
parse_workers = 1
[[feeds]]
url = "{feed_url}"
title = "Loopback blog"
[web]
port = {web_port}
base_url = "http://127.0.0.1:{web_port}"
[mail]
from = "Digest <digest@example.org>"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_security = "none"
[service]
poll_tick_seconds = 0.5
digest_tick_seconds = 0.5
"""
    )
    return config


def start_service(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AGGREGATOR_CONFIG": str(config)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_service_end_to_end_new_entry_reaches_timeline_then_digest_and_sigterm_is_clean(
    tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer
) -> None:
    first = Item("Opening post", link="https://blog.test/opening", guid="p1")
    feed_url = feed_server.add("/feed.xml", body=rss([first]))
    web_port = free_port()
    config = service_config(tmp_path, feed_url, smtp_server.port, web_port)
    env = {**os.environ, "AGGREGATOR_CONFIG": str(config)}
    # An installation that already has entries, and a subscriber: nothing is due yet.
    subprocess.run(
        [sys.executable, "-m", "aggregator", "run", "--once"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aggregator",
            "subscribers",
            "add",
            "reader@example.org",
            "--cadence",
            "daily",
            "--now",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    log = tmp_path / "service.log"
    service = start_service(config, log)
    base = f"http://127.0.0.1:{web_port}"
    try:

        def page_has(text: str) -> bool:
            try:
                return text in httpx.get(base + "/", timeout=2).text
            except httpx.HTTPError:
                return False

        wait_until(lambda: page_has("Opening post"), 30, "the first entry on the timeline")
        time.sleep(1.5)  # digest runs come and go: nothing new for the subscriber yet
        # Only the welcome mail, sent when the operator added the address.
        (welcome,) = smtp_server.messages()
        assert welcome["Subject"].startswith("Welcome to the ")
        assert "Opening post" in welcome.get_body(("plain",)).get_content()
        # A new post appears on the blog: the service polls it, shows it, mails it.
        second = Item(
            "Fresh news",
            link="https://blog.test/fresh",
            guid="p2",
            published=first.published.replace(day=2) if first.published else None,
        )
        feed_server.add("/feed.xml", body=rss([second, first]))
        wait_until(lambda: page_has("Fresh news"), 30, "the new entry on the timeline")
        wait_until(lambda: len(smtp_server.received()) >= 2, 30, "a digest email")
        (_, message) = [m for m in smtp_server.messages()]
        assert message["To"] == "reader@example.org"
        body = message.get_body(("plain",))
        assert body is not None and "Fresh news" in body.get_content()
        assert "Opening post" not in body.get_content()  # sent before the subscriber came
        # SIGTERM: a clean stop with status 0 and a whole database.
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0, log.read_text()
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(timeout=10)
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 2
    conn.close()
    text = log.read_text()
    assert "poll feed=1 status=ok" in text and "service stopped" in text
    assert "poll cycle feeds=1 new=1" in text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_k8_stop_signal_during_polling_exits_zero_and_restart_carries_on(
    tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer, sig: signal.Signals
) -> None:
    # A slow feed keeps a poll in flight when the signal arrives.
    items = [Item(f"Post {n}", link=f"https://blog.test/{n}", guid=f"g{n}") for n in range(30)]
    feed_url = feed_server.add("/slow.xml", body=rss(items), delay=1.5)
    config = service_config(tmp_path, feed_url, smtp_server.port, free_port())
    log = tmp_path / "service.log"
    service = start_service(config, log)
    try:
        wait_until(lambda: len(feed_server.requests_for("/slow.xml")) >= 1, 30, "a poll to start")
        service.send_signal(sig)
        assert service.wait(timeout=30) == 0, log.read_text()
    finally:
        if service.poll() is None:
            service.kill()
            service.wait(timeout=10)
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    assert stored in (0, 30)  # the feed's batch is all there or not at all
    conn.close()
    # A restart carries on: the feed ends up complete, without duplicates.
    restarted = subprocess.run(
        [sys.executable, "-m", "aggregator", "run", "--once"],
        cwd=REPO,
        env={**os.environ, "AGGREGATOR_CONFIG": str(config)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert restarted.returncode == 0, restarted.stderr
    conn = sqlite3.connect(tmp_path / "db.sqlite3")
    assert conn.execute("SELECT count(*), count(DISTINCT key) FROM entries").fetchone() == (30, 30)
    conn.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_k8_stop_signal_to_the_whole_process_group_leaves_no_process_behind(
    tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer, sig: signal.Signals
) -> None:
    """K8: systemd and `timeout` signal the whole group, Ctrl-C does too: the service,
    its parse workers and the fork server are all gone afterwards, the exit is clean."""
    items = [Item(f"Post {n}", link=f"https://blog.test/{n}", guid=f"g{n}") for n in range(30)]
    feed_url = feed_server.add("/feed.xml", body=rss(items))
    config = service_config(tmp_path, feed_url, smtp_server.port, free_port())
    log = tmp_path / "service.log"
    env = {**os.environ, "AGGREGATOR_CONFIG": str(config)}
    with log.open("wb") as out:
        service = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "run"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    group = service.pid
    try:
        wait_until(lambda: "poll cycle feeds=1 new=30" in log.read_text(), 30, "a first poll")

        def members() -> list[int]:
            found = []
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        if os.getpgid(int(entry.name)) == group:
                            found.append(int(entry.name))
                    except ProcessLookupError:
                        continue
            return found

        assert len(members()) >= 3  # the service, the fork server, parse workers
        os.killpg(group, sig)
        assert service.wait(timeout=30) == 0, log.read_text()
        wait_until(lambda: members() == [], 10, "every process of the group to end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        service.wait(timeout=10)


@pytest.mark.parametrize("command", ["run", "serve"])
def test_web_port_in_use_is_one_line_and_nothing_starts(
    tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer, command: str
) -> None:
    feed_url = feed_server.add("/feed.xml", body=rss([Item("Post", link="https://blog.test/p")]))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = service_config(tmp_path, feed_url, smtp_server.port, port)
        result = subprocess.run(
            [sys.executable, "-m", "aggregator", command],
            cwd=REPO,
            env={**os.environ, "AGGREGATOR_CONFIG": str(config)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: web.port: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert feed_server.requests_for("/feed.xml") == []  # no poll started
    assert "Starting" not in result.stdout  # nothing said to start either
    assert not (tmp_path / "db.sqlite3").exists() or command == "serve"


def test_serve_logs_one_line_events_as_run_does_or_json(tmp_path: Path) -> None:
    """`serve` logs in the service's one-line format (not uvicorn's), requests as
    ``request … path=… status=…`` with tokens redacted; `--log-format json` makes each
    line a JSON object."""
    import json
    import re
    import urllib.error
    import urllib.request

    for log_format in ("text", "json"):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = tmp_path / f"{log_format}.toml"
        config.write_text(f'database = "db.sqlite3"\n[web]\nport = {port}\n')
        log = tmp_path / f"{log_format}.log"
        with log.open("wb") as out:
            service = subprocess.Popen(
                [sys.executable, "-m", "aggregator", "--log-format", log_format, "serve"],
                cwd=REPO,
                env={**os.environ, "AGGREGATOR_CONFIG": str(config)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda log=log: "startup complete" in log.read_text(), 30, "the server")
            for path in ("/", "/unsubscribe?token=secret.value"):
                with contextlib.suppress(urllib.error.HTTPError):
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).read()
            wait_until(lambda log=log: "unsubscribe" in log.read_text(), 10, "the access line")
        finally:
            service.send_signal(signal.SIGTERM)
            assert service.wait(timeout=30) == 0
        lines = log.read_text().splitlines()[1:]  # after the "Serving …" banner
        assert "secret.value" not in log.read_text()
        if log_format == "text":
            stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (INFO|WARNING|ERROR) \S+ "
            assert lines and all(re.match(stamp, line) for line in lines), lines
            assert any(
                re.search(r"request client=\S+ method=GET path=/ status=200", x) for x in lines
            )
        else:
            events = [json.loads(line) for line in lines]
            requests = [e for e in events if e.get("event") == "request"]
            assert {e["path"] for e in requests} == {"/", "/unsubscribe?token=REDACTED"}
            assert all({"time", "level", "logger", "message"} <= set(e) for e in events)


def test_http_client_request_lines_only_when_debugging() -> None:
    import logging

    from aggregator.scheduler import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info")
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert logging.getLogger("aggregator.poll").isEnabledFor(logging.INFO)
        configure_logging("debug")
        assert logging.getLogger("httpx").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        configure_logging("info")  # leave the libraries quiet for the tests after this one
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_a_failing_job_is_one_log_line_not_a_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import json
    import logging

    from apscheduler.events import EVENT_JOB_ERROR
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from aggregator.scheduler import configure_logging, job_failed

    async def broken() -> None:
        raise RuntimeError("disk on fire\nsecond line")

    async def main() -> None:
        scheduler = AsyncIOScheduler()
        failed = asyncio.Event()
        scheduler.add_listener(job_failed, EVENT_JOB_ERROR)
        scheduler.add_listener(lambda _: failed.set(), EVENT_JOB_ERROR)  # after job_failed
        scheduler.add_job(broken, id="digests")
        scheduler.start()
        await asyncio.wait_for(failed.wait(), 10)
        scheduler.shutdown(wait=False)

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        for log_format in ("text", "json"):
            configure_logging("info", log_format)
            asyncio.run(main())
            lines = capfd.readouterr().err.strip().splitlines()
            failed = [line for line in lines if "job failed" in line]
            assert len(failed) == 1, lines
            assert "Traceback" not in "\n".join(lines)
            if log_format == "text":
                assert "ERROR aggregator.service job failed job=digests scheduled=" in failed[0]
                assert "cause='RuntimeError: disk on fire second line'" in failed[0]
            else:
                event = json.loads(failed[0])
                assert event["event"] == "job" and event["job"] == "digests"
                assert event["cause"] == "RuntimeError: disk on fire second line"
                assert event["level"] == "ERROR"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_quick_start_welcome_lists_the_blogs_latest_posts_and_no_digest_repeats_them(
    tmp_path: Path,
) -> None:
    """`make run` on the embedded default: the demo subscriber joins an empty database,
    the first poll stores both blogs' archives, and the welcome in the outbox lists the
    latest of them (as the README says); they are older than one cadence period, so no
    digest carries them: `digest send` then builds none."""
    text = (REPO / "config" / "default.toml").read_text(encoding="utf-8")
    text = text.replace('"../seeds/', f'"{REPO}/seeds/').replace('"../var/', f'"{tmp_path}/')
    text = text.replace("port = 8000", f"port = {free_port()}")
    config = tmp_path / "default.toml"
    config.write_text(text, encoding="utf-8")
    outbox = tmp_path / "outbox" / "new"
    service = start_service(config, tmp_path / "service.log")
    try:
        deadline = time.monotonic() + 60
        while not (outbox.exists() and any(outbox.iterdir())):
            assert service.poll() is None, (tmp_path / "service.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "service.log").read_text()
            time.sleep(0.1)
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=30) == 0
    (welcome,) = outbox.iterdir()
    message = email.message_from_bytes(welcome.read_bytes(), policy=email.policy.default)
    assert message["To"] == "reader@example.org" and "Welcome to" in message["Subject"]
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "RECENT POSTS" in body
    titles = sqlite3.connect(tmp_path / "aggregator.sqlite3").execute(
        "SELECT title FROM entries WHERE duplicate_of IS NULL ORDER BY published DESC LIMIT 2"
    )
    assert all(title in body for (title,) in titles)
    env = {**os.environ, "AGGREGATOR_CONFIG": str(config)}
    sent = subprocess.run(
        [sys.executable, "-m", "aggregator", "digest", "send"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert sent.stdout.startswith("Built 0 digests"), sent.stdout


def test_log_lines_escape_what_servers_and_feeds_said() -> None:
    """A relay's refusal with escape sequences, a window-title command and a bidi
    override (logged when a sign-up mail fails): the log line shows them as escapes,
    one line, in the text and the JSON format alike."""
    import json
    import logging

    from aggregator.scheduler import JsonFormatter, OneLineFormatter
    from aggregator.text import UNSHOWABLE

    said = "451 \x1b[2J\x1b[31mRED\x1b]0;PWNED\x07 \u202eevil\x85 \u2028next"
    record = logging.LogRecord(
        "aggregator.web.subscribe", logging.WARNING, __file__, 1, "mail not sent: %s", (said,), None
    )
    line = OneLineFormatter().format(record)
    assert not UNSHOWABLE.search(line) and "\n" not in line
    assert "\\x1b[2J\\x1b[31mRED\\x1b]0;PWNED\\x07 \\u202eevil\\x85 \\u2028next" in line
    event = json.loads(JsonFormatter().format(record))
    assert not UNSHOWABLE.search(event["message"]) and "\\u202eevil" in event["message"]
