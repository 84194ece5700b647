"""The command line, run as a user runs it: the installed `aggregator` command."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clikit import AGGREGATOR
from clikit import run_cli as run
from feedfactory import Item, rss
from feedserver import FeedServer


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


def test_poll_lists_feeds_with_news_and_counts_the_rest(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    cfg = config(tmp_path)
    fresh = feed_server.add("/fresh.xml", body=rss([Item("Hello", link="https://blog.test/a")]))
    quiet = feed_server.add("/quiet.xml", body=rss([Item("Same", link="https://blog.test/b")]))
    for url in (fresh, quiet):
        run("feeds", "add", url, config=cfg)
    first = run("poll", config=cfg).stdout
    assert "2 feeds: 2 new" in first and "nothing new" not in first, first
    feed_server.add(
        "/fresh.xml",
        body=rss(
            [Item("Hello", link="https://blog.test/a"), Item("Next", link="https://blog.test/c")]
        ),
    )
    second = run("poll", config=cfg).stdout
    rows = [line for line in second.splitlines() if line.startswith("│ ")]
    assert [row.split("│")[1].strip() for row in rows] == ["1"], second
    assert "2 feeds: 1 new" in second and "1 with nothing new (aggregator poll --all" in second
    missing = run("poll", "--feed", "999", config=cfg, check=False)
    assert missing.returncode == 1 and "no feed 999" in missing.stderr
    every = run("poll", "--all", config=cfg).stdout
    listed = [line.split("│")[1].strip() for line in every.splitlines() if line.startswith("│ ")]
    assert listed == ["1", "2"] and "nothing new" not in every, every


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


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("serve", "--port", "99999"), "'--port': 99999 is not in the range 1<=x<=65535"),
        (("run", "--port", "-5"), "'--port': -5 is not in the range 1<=x<=65535"),
        (("serve", "--host", "999.1.1.1"), "web.host: cannot listen on 999.1.1.1:"),
        (("run", "--host", "no-such-host.invalid"), "web.host: cannot listen on no-such-host"),
    ],
)
def test_a_bad_address_to_listen_on_is_one_line(
    tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    """An out-of-range port or a host that does not resolve, given on the command line,
    is one line naming it (a port past 65535 used to end in a traceback)."""
    failed = run(*args, config=config(tmp_path), check=False)
    assert failed.returncode in (1, 2) and failed.stderr.startswith("error: ")
    assert failed.stderr.count("\n") == 1 and said in failed.stderr, failed.stderr


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
    assert result.stderr == (f"skipped: {opml}: 'gopher://b.test/feed': not an http(s) feed URL\n")


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
    line = damaged.stdout.strip()  # the status line, as for a healthy database
    assert len(line.splitlines()) == 1 and line.startswith(f"Database: {database}: ")
    assert "damaged" in line or "not an SQLite database" in line
    (tmp_path / "elsewhere").mkdir()
    for command in (["status"], ["feeds", "list"], ["search", "x"], ["subscribers", "list"]):
        missing = run(*command, config=config(tmp_path / "elsewhere"), check=False)
        assert missing.returncode == 1 and "no database at" in missing.stderr
        assert not (tmp_path / "elsewhere" / "db.sqlite3").exists()  # read-only: none made


def test_commands_never_write_or_read_the_database_files_under_any_spelling(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """`feeds export --out`, `digest preview --out`, `backup` and `feeds import` refuse
    the database, its -wal/-shm and the service's jobs lock, however the path is spelled (.., a symlink), with one
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
        f"{tmp_path}/sub/../db.sqlite3.jobs.lock",  # the service's lock: a second one would run
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
    for nothing in (["--", "-zebra"], ["*"]):  # as the web page: nothing found, no error
        assert "No words to look for" in run("search", *nothing, config=cfg).stdout
    # "-word" excludes without "--", also words that start like the command's options
    assert "Usage:" in run("search", "-h", config=cfg).stdout
    mistyped = run("search", "zebra", "--limt", "5", config=cfg, check=False)
    assert mistyped.returncode == 2 and "no such option: --limt" in mistyped.stderr
    excluded = run("search", "zebra", "-weekly", "-hello", config=cfg).stdout
    assert "1 matching" in excluded and "Zebra herds" in excluded
    assert run("search", "okapi", config=cfg).stdout == "No stored post matches.\n"


# --- commands that say what they did -------------------------------------------------


def mail_config(tmp_path: Path) -> Path:
    return config(
        tmp_path,
        '[web]\nbase_url = "https://news.example.org"\n'
        '[mail]\nfrom = "Blog digest <digest@news.example.org>"\noutbox = "outbox"\n',
    )


def test_digest_preview_always_shows_something_labelled(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """Before the first digest: the next one. After it, with nothing new: the last one,
    labelled as such. `--last`: the last one sent. Nothing is sent or moved."""
    cfg = mail_config(tmp_path)
    news = Item("First post", link="https://blog.test/1", published=datetime.now(UTC))
    url = feed_server.add("/a.xml", body=rss([news]))
    run("feeds", "add", "--no-discover", url, config=cfg)
    run("subscribers", "add", "ann@example.org", "--now", config=cfg)
    never = run(
        "digest", "preview", "--subscriber", "ann@example.org", "--last", config=cfg, check=False
    )
    assert never.returncode == 1
    assert never.stderr.startswith("error: no digest was sent to ann@example.org yet")
    run("poll", config=cfg)
    upcoming = run("digest", "preview", "--subscriber", "ann@example.org", config=cfg).stdout
    assert upcoming.startswith("# The next digest for ann@example.org") and "First post" in upcoming
    sent = run("digest", "send", config=cfg).stdout
    assert "Sent 1" in sent and "Built 1 digest (" in sent

    after = run("digest", "preview", "--subscriber", "ann@example.org", config=cfg).stdout
    first = after.splitlines()[0]
    assert "Nothing new for ann@example.org since their last digest" in first
    assert "the last digest sent to ann@example.org, on" in first
    assert "First post" in after and "Nothing new:" not in after
    last = run("digest", "preview", "--subscriber", "ann@example.org", "--last", config=cfg)
    assert last.stdout.startswith("# The last digest sent to ann@example.org")
    assert "First post" in last.stdout
    html = tmp_path / "last.html"
    written = run(
        "digest", "preview", "--subscriber", "ann@example.org", "--out", str(html), config=cfg
    )
    assert "Nothing new for ann@example.org" in written.stderr
    assert "First post" in html.read_text()
    # Previews moved nothing: the next send still has nothing new to send.
    assert "Sent 0" in run("digest", "send", config=cfg).stdout
    sent = [m.read_bytes() for m in (tmp_path / "outbox" / "new").iterdir()]
    assert sum(b"Subject: Welcome" not in m for m in sent) == 1  # the one digest, no more

    run("subscribers", "add", "bob@example.org", config=cfg)  # after the post: nothing new
    bob = run("digest", "preview", "--subscriber", "bob@example.org", config=cfg).stdout
    assert bob.startswith("# Nothing new for bob@example.org and no digest sent yet")
    assert "everything stored in their sources" in bob and "First post" in bob
    nobody = run("digest", "preview", "--last", config=cfg, check=False)
    assert nobody.returncode == 1 and nobody.stderr.startswith("error: --last needs --subscriber")

    # The feed is removed: the digest sent stays sent, and says where its posts went.
    other = feed_server.add("/b.xml", body=rss([Item("Older post", link="https://blog.test/b")]))
    run("feeds", "add", "--no-discover", other, config=cfg)
    run("poll", config=cfg)  # its posts are its backlog: in no digest
    run("feeds", "remove", url, config=cfg)
    instead = run("digest", "preview", "--subscriber", "ann@example.org", config=cfg).stdout
    assert "no digest sent yet" not in instead.splitlines()[0]
    assert "all from sources removed since" in instead.splitlines()[0], instead
    gone = run(
        "digest", "preview", "--subscriber", "ann@example.org", "--last", config=cfg, check=False
    )
    assert gone.returncode == 1
    assert "the last digest sent to ann@example.org (on" in gone.stderr
    assert "held 1 post, all from sources removed since" in gone.stderr


def test_preview_with_no_posts_at_all_says_what_to_do(tmp_path: Path) -> None:
    cfg = mail_config(tmp_path)
    empty = run("digest", "preview", config=cfg).stdout
    assert "Nothing to preview: no posts stored" in empty and "aggregator poll" in empty


def test_re_adding_a_subscriber_changes_only_what_is_named_and_says_so(tmp_path: Path) -> None:
    cfg = mail_config(tmp_path)
    first = run("subscribers", "add", "ann@example.org", "--cadence", "daily", config=cfg).stdout
    assert "is confirmed, daily" in first and "Already" not in first
    again = run("subscribers", "add", "ann@example.org", config=cfg).stdout
    assert "Already subscriber 1: ann@example.org: nothing changed" in again
    assert "confirmed, daily" in again  # no silent change to weekly
    changed = run("subscribers", "add", "ann@example.org", "--cadence", "weekly", config=cfg)
    assert "cadence daily -> weekly" in changed.stdout
    new = run("subscribers", "add", "bob@example.org", config=cfg).stdout
    assert "is confirmed, weekly" in new  # the README's default for a new address


def test_subscribers_list_shows_no_last_digest_before_one_was_sent(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    cfg = mail_config(tmp_path)
    fresh = Item("A post", link="https://blog.test/1", published=datetime.now(UTC))  # news
    url = feed_server.add("/a.xml", body=rss([fresh]))
    run("feeds", "add", "--no-discover", url, config=cfg)
    run("subscribers", "add", "ann@example.org", "--now", config=cfg)
    run("subscribers", "add", "bob@example.org", config=cfg)
    listing = run("subscribers", "list", config=cfg).stdout
    rows = {line.split("│")[2].strip(): line for line in listing.splitlines() if "@" in line}
    assert rows["ann@example.org"].rstrip(" │").endswith("—")
    assert rows["bob@example.org"].rstrip(" │").endswith("—")
    run("poll", config=cfg)
    run("digest", "send", "--due", config=cfg)  # ann is due at once; bob at the next slot
    listing = run("subscribers", "list", config=cfg).stdout
    rows = {line.split("│")[2].strip(): line for line in listing.splitlines() if "@" in line}
    assert not rows["ann@example.org"].rstrip(" │").endswith("—")
    assert rows["bob@example.org"].rstrip(" │").endswith("—")
    assert listing.startswith("2 subscribers")
    # Chosen sources are named, with their ids (as feeds list shows them).
    from aggregator.config import load
    from aggregator.store import Store
    from aggregator.store import subscribers as subscriber_rows

    store = Store.open(load(cfg).database)
    with store.write() as db:
        bob = subscriber_rows.by_key(db, "bob@example.org")
        assert bob is not None
        subscriber_rows.set_feeds(db, bob.id, frozenset({1}))
    store.close()
    listing = run("subscribers", "list", config=cfg, columns=250).stdout
    assert "Test blog (1)" in listing, listing


def run_at_width(*args: str, config: Path, columns: int | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    result = subprocess.run(
        [*AGGREGATOR, *args],
        capture_output=True,
        text=True,
        env={**env, "AGGREGATOR_CONFIG": str(config)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_tables_never_break_urls_or_addresses(tmp_path: Path, feed_server: FeedServer) -> None:
    """At 80 columns, narrower, and piped (no COLUMNS), every URL and address is whole
    on one line: other columns fold, or each record is printed as a block."""
    cfg = mail_config(tmp_path)
    long_path = "/a-rather-long-feed-path/that-goes-on-and-on/and-on/feed.xml"
    url = feed_server.add(long_path, body=rss([Item("A post", link="https://blog.test/1")]))
    run(
        "feeds",
        "add",
        "--no-discover",
        url,
        "--title",
        "A blog with a title long enough to fold",
        config=cfg,
    )
    address = "unsubscribe.me.please.with.a.long.local.part@subdomain.example.org"
    run("subscribers", "add", address, config=cfg)
    for columns in (200, 80, 50, None):
        feeds_out = run_at_width("feeds", "list", config=cfg, columns=columns).stdout
        assert any(url in line for line in feeds_out.splitlines()), (columns, feeds_out)
        subs = run_at_width("subscribers", "list", config=cfg, columns=columns).stdout
        assert any(address in line for line in subs.splitlines()), (columns, subs)
        assert feeds_out.startswith("1 feed\n") and subs.startswith("1 subscriber\n")
    narrow = run_at_width("subscribers", "list", config=cfg, columns=50).stdout
    assert f"email: {address}" in narrow  # one record per block
    # No word of any cell or header is cut either ("ena / ble / d", "las / t / pol / l").
    for columns in (80, None):
        listing = run_at_width("feeds", "list", config=cfg, columns=columns).stdout
        for word in ("enabled", "title", "errors", "poll", "fold"):
            assert any(
                word in line.split() or f"{word}:" in line for line in listing.splitlines()
            ), (
                word,
                listing,
            )


def test_error_lines_start_with_error_and_exit_non_zero(tmp_path: Path) -> None:
    cfg = mail_config(tmp_path)
    missing = run("subscribers", "remove", "nobody@example.org", config=cfg, check=False)
    assert missing.returncode == 1
    assert missing.stderr == (
        "error: no subscriber nobody@example.org "
        "(give an address or an id from `subscribers list`)\n"
    )
    unknown = run(
        "digest", "preview", "--subscriber", "nobody@example.org", config=cfg, check=False
    )
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: no subscriber")
    bad = run("subscribers", "add", "not an address", config=cfg, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: 'not an address'")
    ready = run("init", config=cfg).stdout
    assert "(0 feeds)" in ready


def test_usage_and_config_mistakes_are_error_lines_too(tmp_path: Path) -> None:
    cfg = mail_config(tmp_path)
    unknown = run("feeds", "frob", config=cfg, check=False)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: No such command 'frob'")
    assert len(unknown.stderr.strip().splitlines()) == 1
    typo = tmp_path / "typo.toml"
    typo.write_text('datbase = "db.sqlite3"\n[fetch]\nmax_redirects = -5\n')
    result = run("status", config=typo, check=False)
    assert result.returncode == 1
    assert result.stderr == (f"error: {typo}: datbase: unknown setting; did you mean 'database'?\n")
    typo.write_text('database = "db.sqlite3"\n[fetch]\nmax_redirects = -5\n')
    result = run("status", config=typo, check=False)
    assert result.stderr == f"error: {typo}: fetch.max_redirects: must be at least 0, not -5\n"
    bare = run("feeds", config=cfg, check=False)
    assert bare.returncode == 2 and bare.stderr.startswith("Usage: aggregator feeds")
    assert "error:" not in bare.stderr
    missing = tmp_path / "nope.toml"
    gone = run("status", config=missing, check=False)
    assert gone.stderr == (
        f"error: {missing}: no such file (`aggregator init --config {missing}` writes a "
        "starter one)\n"
    )


LONE_SURROGATE_FEED = (
    b'{"version":"https://jsonfeed.org/version/1.1","title":"Odd",'
    b'"items":[{"id":"1","url":"\\ud800"}]}'
)


def test_a_feed_whose_document_trips_a_helper_fails_alone_and_the_poll_goes_on(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """A JSON Feed item whose url is a lone surrogate (escaped in JSON, which no encoder
    takes): the surrogate is dropped, every feed is stored, no traceback, exit 0, and
    every feed has its next poll."""
    cfg = config(tmp_path)
    good = [
        feed_server.add(f"/good{i}.xml", body=rss([Item(f"Post {i}", link=f"https://b.test/{i}")]))
        for i in range(3)
    ]
    odd = feed_server.add(
        "/odd.json", body=LONE_SURROGATE_FEED, content_type="application/feed+json"
    )
    for url in [*good, odd]:
        run("feeds", "add", url, config=cfg)
    polled = run("poll", config=cfg, check=False)
    assert polled.returncode == 0, polled.stderr
    assert "Traceback" not in polled.stderr
    assert "4 feeds: 4 new" in polled.stdout and "0 failed" in polled.stdout
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM feeds WHERE next_poll_at IS NULL").fetchone() == (
            0,
        )


def test_commands_import_only_what_they_use(tmp_path: Path, feed_server: FeedServer) -> None:
    """A command that fetches nothing loads no HTTP stack, one that sends nothing no mail
    stack, a poll that parses nothing (every feed answers 304) no parser, and one that
    prints no table or progress bar no rich: each of these is from 20 ms to a tenth of a
    second of a one-shot command's start."""
    cfg = config(tmp_path)
    url = feed_server.add(
        "/a.xml", body=rss([Item("Hello", link="https://blog.test/hello")]), etag='"v1"'
    )
    run("feeds", "add", url, config=cfg)
    run("poll", config=cfg)
    probe = (
        "import sys\n"
        "from aggregator.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "finally:\n"
        "    heavy = ('httpx', 'asyncio', 'smtplib', 'feedparser', 'jinja2', 'starlette', 'rich',\n"
        "             'multiprocessing')\n"
        "    print('LOADED', *sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "AGGREGATOR_CONFIG": str(cfg)}

    def loaded(*args: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        line = next(x for x in done.stdout.splitlines() if x.startswith("LOADED"))
        return set(line.split()[1:])

    assert loaded("feeds", "list") == {"rich"}  # a table
    assert loaded("subscribers", "list") == set()  # none yet: one line
    assert loaded("search", "anything") == set()
    # The feed answers 304: nothing to parse, and one line to print.
    assert loaded("poll") == {"httpx", "asyncio"}
    assert "if-none-match" in feed_server.requests[-1].headers  # it was a conditional GET


def test_a_long_table_is_plain_columns_one_line_a_row(tmp_path: Path) -> None:
    """Past a few hundred rows (a big site's subscribers) a table is laid out as aligned
    columns, one line a row, every address whole; too wide, one record per block."""
    from aggregator.config import load
    from aggregator.store import Store
    from aggregator.subscriptions import add_by_operator, links_for

    cfg = mail_config(tmp_path)
    run("init", config=cfg)
    settings = load(cfg)
    store = Store.open(settings.database)
    links = links_for(store, settings)
    emails = [f"reader{i}@example.org" for i in range(250)]
    for email in emails:
        add_by_operator(store, settings, links, email=email, now=datetime(2026, 1, 1, tzinfo=UTC))
    store.close()
    wide = run_at_width("subscribers", "list", config=cfg, columns=200).stdout.splitlines()
    assert wide[0] == "250 subscribers" and wide[1].split()[:3] == ["id", "email", "status"]
    assert [line.split()[1] for line in wide[2:]] == emails
    narrow = run_at_width("subscribers", "list", config=cfg, columns=40).stdout
    assert [line for line in narrow.splitlines() if line.startswith("email: ")] == [
        f"email: {email}" for email in emails
    ]


def test_a_configured_feed_that_moved_stays_one_feed(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """The configuration file names a feed that answers 301: polls read it at its new
    address and say so, and it stays one feed under the file's URL (moving it made the
    next command add the old URL again, and every entry twice)."""
    new = feed_server.add("/new.xml", body=rss([Item("Hello", link="https://blog.test/a")]))
    old = feed_server.add("/old.xml", body=b"", status=301, headers={"Location": new})
    cfg = config(tmp_path, f'[[feeds]]\nurl = "{old}"\n')
    polled = run("poll", config=cfg)
    first = polled.stdout
    assert "1 new" in first and new in first and "configuration file" in first, first
    # What the log says beside the summary is a labelled line, not a bare message.
    assert all(line.startswith("warning: ") for line in polled.stderr.splitlines()), polled
    second = run("poll", config=cfg).stdout
    assert "1 feed:" in second and "0 new" in second, second
    listing = run("feeds", "list", config=cfg).stdout
    assert listing.startswith("1 feed\n") and old in listing, listing


def test_sigterm_drops_a_fetch_still_waiting_and_exits_at_once(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """A one-shot poll stopped while one server has not answered: that fetch is dropped
    (the feed is polled next time), what was fetched is written, exit status 0, without
    waiting out the read timeout."""
    import signal
    import time

    cfg = config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[fetch]\n", "[fetch]\nread_timeout = 60\n"))
    hang = feed_server.add_hang("/hang.xml")
    fine = feed_server.add("/fine.xml", body=rss([Item("Hello", link="https://blog.test/a")]))
    run("feeds", "add", "--no-discover", hang, config=cfg)
    run("feeds", "add", "--no-discover", fine, config=cfg)
    poll = subprocess.Popen(
        [*AGGREGATOR, "poll"],
        env={**os.environ, "AGGREGATOR_CONFIG": str(cfg), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (feed_server.requests_for("/hang.xml") and feed_server.requests_for("/fine.xml")):
        assert time.monotonic() < deadline, "the poll never asked both servers"
        time.sleep(0.01)
    signalled = time.monotonic()
    poll.send_signal(signal.SIGTERM)
    stdout, stderr = poll.communicate(timeout=30)
    assert poll.returncode == 0, stderr
    assert time.monotonic() - signalled < 10  # not the 60 s read timeout
    assert "skipped" in stdout and "failed" in stdout, stdout


MARKUP_TITLE = "Notes [/x] [bold]loud[/bold] :coffee: [link=https://evil.test]here[/link]"


def test_feed_text_is_shown_as_text_never_as_markup(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """Titles and URLs come from feeds and servers: whatever brackets or emoji codes they
    hold are printed as they are, in every table and line (a title with ``[/x]`` used to
    stop the poll with a traceback after storing its posts)."""
    cfg = config(tmp_path)
    body = rss([Item("Post [/i] :smile:", link="https://blog.test/1")], title=MARKUP_TITLE)
    url = feed_server.add("/f[b]x.xml", body=body)
    assert "[b]" in url
    added = run("feeds", "add", url, config=cfg).stdout
    assert added.strip() == f"Added feed 1: {url}"
    polled = run("poll", config=cfg, columns=400)
    assert "Traceback" not in polled.stderr
    assert MARKUP_TITLE in polled.stdout and "1 new" in polled.stdout
    listing = run("feeds", "list", config=cfg, columns=400).stdout
    assert MARKUP_TITLE in listing and url in listing
    found = run("search", "post", config=cfg, columns=400).stdout
    assert "Post [/i] :smile:" in found and "😄" not in found and "☕" not in listing


def test_control_characters_never_reach_the_terminal(tmp_path: Path) -> None:
    """An escape sequence in anything shown (here a URL echoed in an error) is replaced,
    so that nothing shown can restyle or clear the user's terminal."""
    cfg = config(tmp_path)
    sneaky = "http://127.0.0.1:9/\x1b[2J\x1b]0;owned\x07feed\x9b31m.xml"
    failed = run("feeds", "add", sneaky, config=cfg, check=False)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
    assert not any(ch in failed.stderr for ch in "\x1b\x07\x9b")
    assert "%1B[2J" in failed.stderr  # the URL's normal form (RFC 3987 section 4.1)


def test_shown_text_keeps_lines_and_tabs_and_replaces_every_other_control() -> None:
    from aggregator.terminal import shown

    assert shown("a\x1b[2J\u202eb\nc\td\x9b\x07\ud800") == (
        "a\ufffd[2J\ufffdb\nc\td\ufffd\ufffd\ufffd"
    )


def test_the_progress_bar_on_a_terminal_shows_titles_as_text(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """On a terminal the poll draws a progress bar naming each feed as it finishes: a
    title that looks like markup is drawn as text, and the poll ends normally."""
    import pty

    cfg = config(tmp_path)
    url = feed_server.add(
        "/a.xml", body=rss([Item("Hello", link="https://b.test/1")], title="[/x]")
    )
    run("feeds", "add", url, config=cfg)
    leader, follower = pty.openpty()
    env = {**os.environ, "AGGREGATOR_CONFIG": str(cfg), "COLUMNS": "120", "TERM": "xterm"}
    with subprocess.Popen(
        [*AGGREGATOR, "poll"], stdout=subprocess.PIPE, stderr=follower, env=env
    ) as child:
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            drawn += chunk
        output = child.stdout.read() if child.stdout else b""
        assert child.wait(timeout=60) == 0, drawn.decode(errors="replace")
    os.close(leader)
    assert b"Traceback" not in drawn and b"MarkupError" not in drawn
    assert b"1 new" in output


def test_bidirectional_controls_never_reach_the_terminal(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """A redirect to a URL holding a right-to-left override (raw UTF-8 in Location): the
    feed's stored address has it percent-encoded (RFC 3987 section 4.1), and no command
    shows it raw."""
    cfg = config(tmp_path)
    target = feed_server.add("/plain.xml", body=rss([Item("Hello", link="https://b.test/1")]))
    sneaky = "/plain.xml?\u202egpj.exe"
    moved = feed_server.add(
        "/moved.xml", body=b"", status=301, headers={"Location": sneaky.encode().decode("latin-1")}
    )
    feed_server.add(
        sneaky.replace("\u202e", "%E2%80%AE"), body=rss([Item("Hello", link="https://b.test/1")])
    )
    run("feeds", "add", "--no-discover", moved, config=cfg)
    shown = [
        run(*args, config=cfg, check=False) for args in (("poll",), ("feeds", "list"), ("status",))
    ]
    for result in shown:
        assert "\u202e" not in result.stdout + result.stderr, result
    assert target  # the plain feed is there to move to


def test_output_that_cannot_be_written_is_never_a_success(tmp_path: Path) -> None:
    """Standard output on a full disk: the command says so on standard error and exits
    non-zero, with or without Python's own buffering (it used to exit 0)."""
    cfg = mail_config(tmp_path)
    run("init", config=cfg)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["AGGREGATOR_CONFIG"] = str(cfg)
    for args in (("feeds", "list"), ("status",), ("subscribers", "list"), ("--version",)):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [*AGGREGATOR, *args], stdout=full, stderr=subprocess.PIPE, env=env, timeout=60
            )
        assert done.returncode != 0, args
        assert b"No space left on device" in done.stderr, (args, done.stderr)
        assert b"Traceback" not in done.stderr, done.stderr


def test_a_closed_standard_error_changes_no_exit_status(tmp_path: Path) -> None:
    """Started with standard error closed (``2>&-``, as some cron lines do): a command
    that succeeds exits 0, one that fails exits non-zero, and nothing goes to stdout
    instead."""
    cfg = mail_config(tmp_path)
    run("init", config=cfg)
    env = {**os.environ, "AGGREGATOR_CONFIG": str(cfg)}
    command = " ".join([*AGGREGATOR, "status"])
    ok = subprocess.run(["sh", "-c", f"{command} 2>&-"], capture_output=True, env=env, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith(b"Database: ")
    failing = " ".join([*AGGREGATOR, "feeds", "remove", "99"])
    bad = subprocess.run(["sh", "-c", f"{failing} 2>&-"], capture_output=True, env=env, timeout=60)
    assert bad.returncode == 1 and bad.stdout == b""


def test_an_argument_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """Bytes the system cannot decode as UTF-8 in an argument: one line naming it (it
    was a UnicodeEncodeError traceback from deep in the command)."""
    cfg = mail_config(tmp_path)
    run("init", config=cfg)
    env = {**os.environ, "AGGREGATOR_CONFIG": str(cfg)}
    for args in ([b"feeds", b"remove", b"\xff"], [b"backup", b"x-\xff.sqlite3"]):
        done = subprocess.run(
            [*AGGREGATOR, *args], capture_output=True, env=env, timeout=60, cwd=tmp_path
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(b"error: argument ") and done.stderr.count(b"\n") == 1
        assert b"not valid UTF-8" in done.stderr


def test_backup_follows_a_link_and_never_replaces_a_device_or_fifo(tmp_path: Path) -> None:
    cfg = mail_config(tmp_path)
    run("init", config=cfg)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused = run("backup", str(fifo), config=cfg, check=False)
    assert refused.returncode == 1 and "not a regular file" in refused.stderr
    assert fifo.is_fifo()
    real = tmp_path / "real.sqlite3"
    link = tmp_path / "link.sqlite3"
    link.symlink_to(real)
    run("backup", str(link), config=cfg)
    assert link.is_symlink() and real.is_file()
    assert sqlite3.connect(real).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_digest_send_beside_a_run_that_is_sending_is_not_an_error(tmp_path: Path) -> None:
    """A cron `digest send --due` while the service's own job holds the sending lease:
    it sends nothing, says why, and exits 0 (a non-zero exit would mail cron's owner for
    something that is as it should be)."""
    from aggregator.clock import system_clock
    from aggregator.config import load
    from aggregator.digests.lease import SendLease
    from aggregator.store import Store

    cfg = mail_config(tmp_path)
    run("init", config=cfg)
    store = Store.open(load(cfg).database)
    try:
        assert SendLease(store, system_clock).take()
        done = run("digest", "send", "--due", config=cfg, check=False)
    finally:
        store.close()
    assert done.returncode == 0, done.stderr
    assert done.stderr == "another run is sending digests\n"
