"""The command line, run as a user runs it: the installed `aggregator` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from feedfactory import Item, rss
from feedserver import FeedServer

AGGREGATOR = [sys.executable, "-m", "aggregator"]


def run(*args: str, config: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGGREGATOR_CONFIG": str(config), "COLUMNS": "200"}
    result = subprocess.run(
        [*AGGREGATOR, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        'database = "db.sqlite3"\n[fetch]\nallow_private_addresses = true\n'
        "[poll]\nparse_workers = 1\n" + extra
    )
    return path


def test_add_poll_list_export(tmp_path: Path, feed_server: FeedServer) -> None:
    cfg = config(tmp_path)
    url = feed_server.add("/a.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    assert "Added feed 1" in run("feeds", "add", url, config=cfg).stdout
    assert "Already there as feed 1" in run("feeds", "add", url, config=cfg).stdout
    polled = run("poll", config=cfg)
    assert "1 new" in polled.stdout and "Poll summary" in polled.stdout
    listing = run("feeds", "list", config=cfg).stdout
    assert url in listing and "Test blog" in listing
    exported = run("feeds", "export", config=cfg).stdout
    assert f'xmlUrl="{url}"' in exported


def test_add_discovers_the_feed_of_a_blog_home_page(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    cfg = config(tmp_path)
    feed_url = feed_server.add("/feed/", body=rss([Item("Hello", link="https://blog.test/hello")]))
    home = feed_server.add(
        "/",
        body=b'<!doctype html><html><head><link rel="alternate" type="application/rss+xml" '
        b'href="/feed/"></head><body>blog</body></html>',
        content_type="text/html; charset=utf-8",
    )
    out = run("feeds", "add", home, config=cfg).stdout
    assert feed_url in out


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    bad_scheme = run("feeds", "add", "--no-discover", "ftp://x.test/feed", config=cfg, check=False)
    assert bad_scheme.returncode == 1
    assert bad_scheme.stderr.strip().count("\n") == 0
    assert "only absolute http:// and https://" in bad_scheme.stderr
    missing = run("feeds", "remove", "99", config=cfg, check=False)
    assert missing.returncode == 1 and "no feed" in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text('database = "broken.sqlite3"\nfrobnicate = true\n')
    result = run("feeds", "list", config=broken, check=False)
    assert result.returncode == 1
    assert f"{broken}: frobnicate: unknown setting" in result.stderr
    assert not (tmp_path / "broken.sqlite3").exists()  # stopped before doing anything


def test_poll_exits_non_zero_when_every_feed_failed(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    cfg = config(tmp_path)
    url = feed_server.add("/down.xml", status=503, body=b"down")
    run("feeds", "add", "--no-discover", url, config=cfg)
    result = run("poll", config=cfg, check=False)
    assert result.returncode == 2
    assert "503" in result.stderr


def test_import_opml_file(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    opml = tmp_path / "subs.opml"
    opml.write_text(
        '<opml version="2.0"><body><outline xmlUrl="https://a.test/feed" text="A"/>'
        '<outline xmlUrl="gopher://b.test/feed" text="B"/></body></opml>'
    )
    result = run("feeds", "import", str(opml), config=cfg)
    assert "1 added" in result.stdout and "1 skipped" in result.stdout
    assert "gopher://b.test/feed" in result.stderr


def test_status_reports_health_and_digests(tmp_path: Path, feed_server: FeedServer) -> None:
    cfg = config(tmp_path)
    good = feed_server.add("/a.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    bad = feed_server.add("/b.xml", status=500, body=b"no")
    run("feeds", "add", "--no-discover", good, config=cfg)
    run("feeds", "add", "--no-discover", bad, config=cfg)
    run("poll", config=cfg)
    out = run("status", config=cfg).stdout
    assert "Feeds: 1 failing, 1 ok" in out
    assert "Entries: 1 (1 stories)" in out
    assert f"failing: feed 2 {bad}" in out and "500" in out


def test_status_on_a_read_only_and_a_damaged_database_is_one_line(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """`status` reads a database it cannot write and says so; on a damaged one it says
    "damaged" in one line, never a traceback."""
    import shutil

    cfg = config(tmp_path)
    url = feed_server.add("/a.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    run("feeds", "add", url, config=cfg)
    run("poll", config=cfg)
    database = tmp_path / "db.sqlite3"
    assert run("status", config=cfg).stdout.splitlines()[0] == f"Database: {database}: ok"

    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None
    database.chmod(0o444)
    if immutable:
        subprocess.run(["chattr", "+i", str(database)], check=True)
    try:
        if os.access(database, os.W_OK):
            return  # root without chattr: cannot make the file unwritable here
        status = run("status", config=cfg).stdout
        assert "read-only" in status.splitlines()[0] and "Entries: 1" in status
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(database)], check=True)
        database.chmod(0o644)

    data = bytearray(database.read_bytes())
    data[100:4096] = b"\xa5" * (4096 - 100)  # the first page's b-tree: sqlite_master
    database.write_bytes(bytes(data))
    damaged = run("status", config=cfg, check=False)
    assert damaged.returncode == 1 and "Traceback" not in damaged.stderr
    assert len(damaged.stderr.strip().splitlines()) == 1
    assert "damaged" in damaged.stderr or "not an SQLite database" in damaged.stderr


def test_commands_never_write_or_read_the_database_files_under_any_spelling(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """`feeds export --out`, `digest preview --out`, `backup` and `feeds import` refuse
    the database and its -wal/-shm, however the path is spelled (.., a symlink), with one
    line; the database is untouched."""
    cfg = config(tmp_path)
    url = feed_server.add("/a.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    run("feeds", "add", url, config=cfg)
    run("poll", config=cfg)
    database = tmp_path / "db.sqlite3"
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path)
    spellings = [
        str(database),
        f"{tmp_path}/sub/../db.sqlite3-wal",
        f"{tmp_path}/link/db.sqlite3",
        f"{tmp_path}/link/db.sqlite3-shm",
    ]
    before = run("feeds", "list", config=cfg).stdout
    for target in spellings:
        for args in (
            ("feeds", "export", "--out", target),
            ("digest", "preview", "--out", target),
            ("backup", target),
            ("feeds", "import", target),
        ):
            if args[1] == "import" and not Path(target).exists():
                continue
            refused = run(*args, config=cfg, check=False)
            assert refused.returncode == 1, (args, refused.stdout, refused.stderr)
            assert "refusing" in refused.stderr and "database" in refused.stderr, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1
    assert run("feeds", "list", config=cfg).stdout == before
    assert run("status", config=cfg).stdout.splitlines()[0].endswith(": ok")


def test_a_snapshot_that_is_the_database_is_a_configuration_error(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        '[[feeds]]\nurl = "https://blog.test/feed"\nsnapshot = "db.sqlite3-wal"\n',
    )
    refused = run("status", config=cfg, check=False)
    assert refused.returncode == 1 and "feeds[0].snapshot" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_run_with_an_unusable_jobs_lock_file_says_so_in_one_line(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "db.sqlite3.jobs.lock").mkdir()
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    failed = run("run", "--port", str(port), config=cfg, check=False)
    assert failed.returncode == 1, failed.stderr
    assert "jobs lock file" in failed.stderr and "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def test_search_prints_a_table_best_match_first(tmp_path: Path, feed_server: FeedServer) -> None:
    cfg = config(tmp_path)
    items = [
        Item(f"Weekly links {n}", link=f"https://blog.test/{n}", body="<p>zebra herds</p>")
        for n in range(5)
    ]
    items.append(Item("Zebra herds", link="https://blog.test/zebra", body="<p>Stripes.</p>"))
    url = feed_server.add("/z.xml", body=rss(items))
    run("feeds", "add", url, config=cfg)
    run("poll", config=cfg)
    found = run("search", "zebra", "herds", config=cfg).stdout
    assert "6 matching, best match first" in found
    rows = [line for line in found.splitlines() if "blog" in line.lower() and "│" in line]
    assert "Zebra herds" in rows[0]
    assert "newest first" in run("search", "--newest", "zebra", config=cfg).stdout
    refused = run("search", "--", "-zebra", config=cfg, check=False)
    assert refused.returncode != 0 and "at least one word" in refused.stderr
