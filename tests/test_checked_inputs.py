"""Settings and feed URLs are checked where they are given: the commands, run as the
operator runs them, stop with one line naming the file, the key (or the URL) and what is
wrong, before anything is stored."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import certifi
import pytest
from clikit import run_cli as run
from feedfactory import Item, rss
from feedserver import FeedServer

from aggregator.errors import FetchConnectError
from aggregator.fetch import FeedFetcher
from aggregator.fetch_settings import FetchSettings


def refused(*args: str, config: Path) -> str:
    """The one line a refused command prints (it must exit 1, without a traceback)."""
    result = run(*args, config=config, check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def site(tmp_path: Path, extra: str = "", *, fetch: str = "") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        'database = "db.sqlite3"\n[fetch]\nallow_private_addresses = true\n'
        + fetch
        + "[poll]\nparse_workers = 1\n"
        + extra,
        encoding="utf-8",
    )
    return path


def count(tmp_path: Path, table: str) -> int:
    database = tmp_path / "db.sqlite3"
    if not database.exists():
        return 0
    with sqlite3.connect(database) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_a_ca_file_that_is_missing_or_not_pem_stops_the_poll_before_it_starts(
    tmp_path: Path, feed_server: FeedServer, content: str | None
) -> None:
    if content is not None:
        (tmp_path / "ca.pem").write_text(content, encoding="utf-8")
    plain = feed_server.add("/a.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    cfg = site(
        tmp_path,
        f'[[feeds]]\nurl = "https://127.0.0.1:9/feed"\n[[feeds]]\nurl = "{plain}"\n',
        fetch='ca_file = "ca.pem"\n',
    )
    line = refused("poll", config=cfg)
    assert line.startswith(f"error: {cfg}: fetch.ca_file: ")
    assert str(tmp_path / "ca.pem") in line
    assert ("no such file" if content is None else "holds no PEM certificate") in line


def test_a_ca_file_gone_after_the_start_fails_only_the_https_feeds(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """The file is checked when the configuration is read; one removed later fails each
    https fetch with one line naming it, and the plain-http feeds are fetched."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(certifi.where()).read_bytes())
    plain = feed_server.add("/a.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    ca.unlink()

    async def both() -> list[object]:
        settings = FetchSettings(ca_file=str(ca), allow_private_addresses=True, total_timeout=10)
        async with FeedFetcher(settings) as fetcher:
            secure = await fetcher.fetch("https://127.0.0.1:9/feed.xml")
            again = await fetcher.fetch("https://127.0.0.1:9/other.xml")
            clear = await fetcher.fetch(plain)
        return [secure, again, clear]

    secure, again, clear = asyncio.run(both())
    for result in (secure, again):
        assert isinstance(result.error, FetchConnectError)  # type: ignore[attr-defined]
        message = str(result.error)  # type: ignore[attr-defined]
        assert "\n" not in message and str(ca) in message and "ca_file" in message
    assert clear.error is None and clear.status == 200  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('[mail]\nfrom = "Blog digest"\n', "mail.from: must be an email address"),
        ('[service]\ndemo_subscriber = "nobody"\n', "service.demo_subscriber: must be an email"),
    ],
)
def test_a_bad_address_setting_stops_subscribers_add_before_anything_is_stored(
    tmp_path: Path, extra: str, needle: str
) -> None:
    cfg = site(tmp_path, extra)
    line = refused("subscribers", "add", "ann@example.org", config=cfg)
    assert f"{cfg}: {needle}" in line
    assert refused("digest", "preview", config=cfg) == line
    assert count(tmp_path, "subscribers") == 0


def test_an_empty_database_setting_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_text('database = ""\n', encoding="utf-8")
    assert refused("status", config=cfg) == (
        f"error: {cfg}: database: must not be empty; name a file"
    )


def test_a_config_file_written_with_a_byte_order_mark_works(tmp_path: Path) -> None:
    cfg = tmp_path / "site.toml"
    cfg.write_bytes(b'\xef\xbb\xbfdatabase = "db.sqlite3"\n[mail]\noutbox = "outbox"\n')
    run("init", config=cfg)
    assert (tmp_path / "db.sqlite3").exists()


def test_feed_urls_with_a_password_are_refused_everywhere_and_never_echoed(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    cfg = site(tmp_path)
    good = feed_server.add("/a.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    secret = good.replace("http://", "http://ann:s3cret@")
    for args in (("feeds", "add", secret), ("feeds", "add", "--no-discover", secret)):
        line = refused(*args, config=cfg)
        assert "a user name or password in a feed URL is refused" in line
        assert "s3cret" not in line and good in line
    opml = tmp_path / "subs.opml"
    opml.write_text(
        f'<opml version="2.0"><body><outline xmlUrl="{secret}" text="Secret"/>'
        '<outline xmlUrl="https://b.test/feed" text="B"/></body></opml>',
        encoding="utf-8",
    )
    imported = run("feeds", "import", str(opml), config=cfg)
    assert "1 added" in imported.stdout and "1 skipped" in imported.stdout
    assert "user name or password" in imported.stderr and "s3cret" not in imported.stderr
    assert count(tmp_path, "feeds") == 1
    configured = site(tmp_path, f'[[feeds]]\nurl = "{secret}"\n')
    line = refused("feeds", "list", config=configured)
    assert "feeds[0].url" in line and "s3cret" not in line


def test_scheme_and_host_case_make_no_second_feed(tmp_path: Path, feed_server: FeedServer) -> None:
    """RFC 3986 section 6.2.2.1: scheme and host are case-insensitive; the path is not."""
    cfg = site(tmp_path)
    url = feed_server.add("/Feed.xml", body=rss([Item("Hello", link="https://blog.test/hello")]))
    shouted = url.replace("http://127.0.0.1", "HTTP://127.0.0.1")
    assert "Added feed 1" in run("feeds", "add", "--no-discover", shouted, config=cfg).stdout
    assert "Already there as feed 1" in run("feeds", "add", url, config=cfg).stdout
    listing = run("feeds", "list", config=cfg).stdout
    assert url in listing and "HTTP://" not in listing
    assert (
        "Removed" in run("feeds", "remove", shouted, config=cfg).stdout
        or count(tmp_path, "feeds") == 0
    )
    assert count(tmp_path, "feeds") == 0


def test_a_feed_stored_in_another_case_before_is_found_not_added_again(tmp_path: Path) -> None:
    """Rows written before feed URLs were normalised keep their spelling; adding the
    same feed from the CLI, an OPML file or the configuration finds them."""
    from datetime import UTC, datetime

    from aggregator.config import load_settings
    from aggregator.models import FeedSource
    from aggregator.sources import add_source, find_feed, import_opml, sync_configured_feeds
    from aggregator.store import Store
    from aggregator.store import feeds as feed_rows

    now = datetime(2026, 11, 30, tzinfo=UTC)
    cfg = site(tmp_path, '[[feeds]]\nurl = "https://BLOG.test/Feed"\n')
    settings = load_settings(cfg, {})
    store = Store.open(settings.database)
    try:
        with store.write() as db:
            old, _ = feed_rows.add_feed(
                db, url="HTTPS://Blog.Test/Feed", title="Old", origin="cli", now=now
            )
        assert sync_configured_feeds(store, settings, now) == []
        feed, created = add_source(
            store, FeedSource(url="https://blog.TEST/Feed"), origin="cli", now=now
        )
        assert (feed.id, created) == (old.id, False)
        opml = b'<opml version="2.0"><body><outline xmlUrl="https://blog.test/Feed"/></body></opml>'
        report = import_opml(store, opml, name="subs.opml", now=now)
        assert report.added == () and [f.id for f in report.known] == [old.id]
        assert find_feed(store, "https://blog.test/Feed").id == old.id
        # The path is case-sensitive: another feed.
        _, created = add_source(
            store, FeedSource(url="https://blog.test/feed"), origin="cli", now=now
        )
        assert created
    finally:
        store.close()
