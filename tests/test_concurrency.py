"""One database, many processes (DESIGN §6): the service beside everything users run.

`aggregator run` serves and polls loopback feeds that grow while it runs and mails
through a loopback SMTP server. At the same time, from other processes: CLI commands
(`status`, `feeds list`, `subscribers add/remove`, `poll`, `digest send --due`,
`backup`), the real `sqlite3` shell opening and closing the file (a count, a
`.backup`), and a Python reader; through the web app: sign-ups, confirmations,
preference changes and one-click unsubscribes.

Afterwards every write the web app acknowledged is visible from another process at once
and after a restart; every unsubscribe sticks (a full `digest send` mails no one who
left); no descriptor of the service points at a deleted file; `integrity_check` is ok;
every backup is a whole database.

The default run does a few rounds (well under a minute); ``pytest -m slow`` runs many
(``AGGREGATOR_CONCURRENCY_ROUNDS``, default 12) and SIGKILLs a CLI command (poll,
digest send, backup, status) at a random moment of each round and the service itself in
about half of them.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from feedfactory import Item, rss
from feedserver import FeedServer, Response
from smtpserver import SmtpServer

from aggregator.config import load
from aggregator.store import Store
from aggregator.subscriptions import links_for

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
TOKEN = re.compile(r'name="token" value="([^"]+)"')
SQLITE3 = shutil.which("sqlite3")
DEADLINE = 60.0  # seconds any one wait may take before the test fails


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GrowingFeed:
    """A feed that has one more entry every ``every`` seconds (so each poll writes)."""

    def __init__(self, name: str, every: float = 0.5) -> None:
        self.name = name
        self.every = every
        self.started = time.monotonic()

    def __call__(self) -> Response:
        count = 3 + int((time.monotonic() - self.started) / self.every)
        start = datetime(2026, 11, 1, tzinfo=UTC)
        items = [
            Item(
                f"{self.name} post {i}",
                link=f"https://{self.name}.test/{i}",
                guid=f"{self.name}-{i}",
                body=f"<p>{self.name} words {i}</p>",
                published=start + timedelta(minutes=i),
            )
            for i in range(count)
        ]
        return Response(body=rss(items, title=f"{self.name} blog"))


class Site:
    """A configured installation in ``folder``: config, database, service, clients."""

    def __init__(self, folder: Path, feeds: FeedServer, smtp: SmtpServer) -> None:
        self.folder = folder
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database = folder / "db.sqlite3"
        self.smtp = smtp
        for name in ("alpha", "beta"):
            feeds.add_handler(f"/{name}.xml", GrowingFeed(name))
        self.config = folder / "config.toml"
        self.config.write_text(
            'database = "db.sqlite3"\n'
            'log_level = "info"\n'
            "[fetch]\nallow_private_addresses = true\ntotal_timeout = 5.0\n"
            "[poll]\nparse_workers = 1\ninterval_minutes = 0.01\n"
            f'[web]\nhost = "127.0.0.1"\nport = {self.port}\nbase_url = "{self.base}"\n'
            '[mail]\nfrom = "Digest <digest@news.example.org>"\n'
            f'smtp_host = "127.0.0.1"\nsmtp_port = {smtp.port}\nsmtp_security = "none"\n'
            "[service]\npoll_tick_seconds = 0.3\ndigest_tick_seconds = 0.5\n"
            '[digest]\ntimezone = "UTC"\ndaily_at = "07:00"\n'
            + "".join(f'[[feeds]]\nurl = "{feeds.url(f"/{n}.xml")}"\n' for n in ("alpha", "beta"))
        )
        self.service: subprocess.Popen[bytes] | None = None
        self.log = folder / "service.log"

    # --- processes -----------------------------------------------------------------------

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.service = subprocess.Popen(
                [sys.executable, "-m", "aggregator", "--config", str(self.config), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
            )
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            assert self.service.poll() is None, self.log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"the service did not answer: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(sig)
            self.service.wait(timeout=DEADLINE)
        self.service = None

    def cli(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "aggregator", "--config", str(self.config), *args],
            capture_output=True,
            timeout=DEADLINE,
            cwd=self.folder,
        )
        output = (done.stdout + done.stderr).decode()
        assert done.returncode in ok, f"aggregator {' '.join(args)}: {output}"
        assert "Traceback" not in output, output
        return output

    def kill_midway(self, args: tuple[str, ...], *, after: float) -> None:
        """Start a CLI command and SIGKILL it ``after`` seconds in (if still running)."""
        process = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "--config", str(self.config), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.folder,
        )
        try:
            process.wait(timeout=after)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=DEADLINE)

    def shell(self, *commands: str) -> str:
        """The sqlite3 shell, as an operator would run it beside the service."""
        assert SQLITE3 is not None
        done = subprocess.run(
            [SQLITE3, "-bail", str(self.database), *commands],
            capture_output=True,
            timeout=DEADLINE,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    # --- the web, as a subscriber --------------------------------------------------------

    def sign_up_and_confirm(self, client: httpx.Client, email: str) -> None:
        form = client.get(f"{self.base}/subscribe")
        assert form.status_code == 200
        answer = client.post(
            f"{self.base}/subscribe",
            data={"csrf_token": CSRF.search(form.text)[1], "email": email, "cadence": "daily"},  # type: ignore[index]
        )
        assert answer.status_code == 200 and "Check your inbox" in answer.text, answer.text
        mail = self.mail_to(email)
        confirm = re.search(r"(http://127\.0\.0\.1:\d+/subscribe/confirm\?token=[\w.\-=%]+)", mail)
        assert confirm, mail
        page = client.get(confirm[1])
        assert page.status_code == 200, page.text
        done = client.post(
            f"{self.base}/subscribe/confirm",
            data={"csrf_token": CSRF.search(page.text)[1], "token": TOKEN.search(page.text)[1]},  # type: ignore[index]
        )
        assert done.status_code == 200 and "You are subscribed" in done.text, done.text

    def mail_to(self, email: str) -> str:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            for item in self.smtp.received():
                if email in item.rcpt_tos:
                    message = item.parse()
                    body = message.get_body(("plain",))
                    assert body is not None
                    return str(body.get_content())
            time.sleep(0.02)
        raise AssertionError(f"no mail to {email}")

    def change_preferences(self, client: httpx.Client, url: str) -> None:
        page = client.get(url)
        assert page.status_code == 200, page.text
        saved = client.post(
            f"{self.base}/preferences",
            data={
                "csrf_token": CSRF.search(page.text)[1],  # type: ignore[index]
                "token": TOKEN.search(page.text)[1],  # type: ignore[index]
                "cadence": "weekly",
            },
            follow_redirects=True,  # Save answers 303 back to the page with its token
        )
        assert saved.status_code == 200 and "Preferences saved" in saved.text, saved.text

    def one_click_unsubscribe(self, url: str) -> None:
        gone = httpx.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=DEADLINE)
        assert gone.status_code == 200 and "Unsubscribed" in gone.text, gone.text


def now() -> datetime:
    return datetime.now(UTC)


def ids_of(store: Store) -> dict[str, int]:
    return dict(store.conn.execute("SELECT email_key, id FROM subscribers").fetchall())


def statuses(database: Path) -> dict[str, str]:
    """Subscriber states as a separate process sees them (a plain sqlite3 connection)."""
    conn = sqlite3.connect(database)
    try:
        return dict(conn.execute("SELECT email_key, status FROM subscribers").fetchall())
    finally:
        conn.close()


def deleted_descriptors(pid: int) -> list[str]:
    """The service's open files that were deleted under it (the WAL split)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.endswith(" (deleted)"):
                found.append(target)
    return found


@pytest.fixture
def site(tmp_path: Path, feed_server: FeedServer, smtp_server: SmtpServer) -> Iterator[Site]:
    site = Site(tmp_path, feed_server, smtp_server)
    try:
        yield site
    finally:
        site.stop(signal.SIGKILL)


def run_rounds(site: Site, rounds: int, *, kills: bool, seed: int) -> None:
    rng = random.Random(seed)
    settings = load(str(site.config))
    acknowledged: dict[str, str] = {}  # address -> the state the web app answered
    backups: list[Path] = []
    site.start()
    store = Store.open(site.database)  # this process too: another reader and writer
    links = links_for(store, settings)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for round_ in range(rounds):
            # CLI commands and the sqlite3 shell, all at once, beside the web traffic.
            backup = site.folder / f"backup-{round_}.sqlite3"
            backups.append(backup)
            operator = f"operator{round_}@example.org"
            side = [
                pool.submit(site.cli, "status"),
                pool.submit(site.cli, "feeds", "list"),
                pool.submit(site.cli, "poll", ok=(0, 1)),
                # "another run is sending digests" (exit 0): the service's digest job
                # holds the sending lease at that moment, as it should.
                pool.submit(site.cli, "digest", "send", "--due"),
                pool.submit(site.cli, "backup", str(backup)),
                pool.submit(site.cli, "subscribers", "add", operator, "--cadence", "daily"),
            ]
            if SQLITE3:
                side.append(pool.submit(site.shell, "SELECT count(*) FROM entries;"))
                side.append(
                    pool.submit(site.shell, f".backup '{site.folder}/shell-{round_}.sqlite3'")
                )
            staying = f"stay{round_}@example.org"
            leaving = f"leave{round_}@example.org"
            # Each round's readers come from their own loopback address: sign-ups are
            # rate limited per client (10 an hour).
            reader = httpx.Client(
                timeout=DEADLINE,
                transport=httpx.HTTPTransport(local_address=f"127.0.0.{2 + round_ % 250}"),
            )
            with reader:
                for email in (staying, leaving):
                    site.sign_up_and_confirm(reader, email)
                    acknowledged[email] = "confirmed"
                # Visible from another process at once.
                seen = statuses(site.database)
                assert seen[staying] == seen[leaving] == "confirmed"
                site.change_preferences(reader, links.preferences(ids_of(store)[staying], now()))
            site.one_click_unsubscribe(links.unsubscribe(ids_of(store)[leaving], now()))
            acknowledged[leaving] = "unsubscribed"
            assert statuses(site.database)[leaving] == "unsubscribed"
            for future in side:
                future.result(timeout=DEADLINE)
            site.cli("subscribers", "remove", operator)
            if kills:
                victim = rng.choice(
                    [("poll",), ("digest", "send"), ("backup", str(backup)), ("status",)]
                )
                site.kill_midway(victim, after=rng.uniform(0.1, 1.5))
            if kills and rng.random() < 0.5:
                assert site.service is not None
                site.service.kill()
                site.service.wait(timeout=DEADLINE)
                site.service = None
                site.start()
            assert site.service is not None
            assert deleted_descriptors(site.service.pid) == []

    # Everything acknowledged is there, from another process and after a restart.
    site.stop()
    assert site.service is None
    store.close()
    seen = statuses(site.database)
    for email, state in acknowledged.items():
        assert seen[email] == state, (email, seen.get(email))
    assert not any(key.startswith("operator") for key in seen)

    # Unsubscribes stick: a full send now mails only those who stayed.
    site.smtp.clear()
    site.start()
    deadline = time.monotonic() + DEADLINE
    while "another run is sending digests" in site.cli("digest", "send"):
        assert time.monotonic() < deadline, "the sending lease was never free"
        time.sleep(0.2)
    mailed = {address for item in site.smtp.received() for address in item.rcpt_tos}
    left = {email for email, state in acknowledged.items() if state == "unsubscribed"}
    assert mailed, "the staying subscribers get a digest"
    assert not mailed & left, mailed & left
    assert deleted_descriptors(site.service.pid) == []  # type: ignore[union-attr]
    status = site.cli("status")
    assert status.splitlines()[0].endswith(": ok"), status
    site.stop()

    for path in [site.database, *backups, *site.folder.glob("shell-*.sqlite3")]:
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", path
            assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] > 0, path
        finally:
            conn.close()


def test_service_cli_shell_and_web_share_one_database(site: Site) -> None:
    run_rounds(site, rounds=2, kills=False, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_many_rounds_with_random_kills(site: Site) -> None:
    rounds = int(os.environ.get("AGGREGATOR_CONCURRENCY_ROUNDS", "12"))
    run_rounds(site, rounds=rounds, kills=True, seed=int(time.time()))
