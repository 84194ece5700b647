"""Identities and choices the product must neither reuse nor forget: feed ids (never given
out twice, across the upgrade too), the configured demo subscriber (added once, ever),
confirmation and welcome mails (owed until delivered), and URLs in Atom attributes."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from clikit import AGGREGATOR, run_cli
from digestkit import T0, make_settings
from smtpserver import SmtpServer
from sqlite_utils import Database
from starlette.testclient import TestClient
from webdata import NOW, add_entry, record

from aggregator.digests.send import send_welcomes
from aggregator.mail import open_sender
from aggregator.models import MediaItem
from aggregator.store import Store, schema
from aggregator.store import feeds as feed_rows
from aggregator.store import subscribers as subscriber_rows
from aggregator.subscriptions import (
    MAX_MAIL_ATTEMPTS,
    add_or_update_by_operator,
    confirm,
    links_for,
    mail_retry_delay,
    remove_by_operator,
    request_signup,
    seed_configured_subscriber,
    send_signup_mail,
    unsubscribe_id,
)

ATOM = "{http://www.w3.org/2005/Atom}"
BEFORE = "m011_feed_ids_never_reused"  # the first migration of this version


def cli(*args: str, config: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, config=config, check=check, columns=250)


def cli_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        'database = "db.sqlite3"\n[fetch]\nallow_private_addresses = true\n'
        '[web]\nbase_url = "https://news.example.org"\n'
        '[mail]\nfrom = "Blog digest <digest@news.example.org>"\noutbox = "outbox"\n' + extra
    )
    return path


# --- 1. feed ids ----------------------------------------------------------------------


def test_a_removed_feeds_id_is_never_given_to_the_next_feed(tmp_path: Path) -> None:
    """Through the real command: remove the feed with the highest id, add another one."""
    cfg = cli_config(tmp_path)
    assert (
        "Added feed 1"
        in cli("feeds", "add", "--no-discover", "https://a.test/f", config=cfg).stdout
    )
    assert (
        "Added feed 2"
        in cli("feeds", "add", "--no-discover", "https://b.test/f", config=cfg).stdout
    )
    assert "Removed feed 2 and its posts" in cli("feeds", "remove", "2", config=cfg).stdout
    added = cli("feeds", "add", "--no-discover", "https://c.test/f", config=cfg).stdout
    assert "Added feed 3" in added, added
    # The old id names nothing now: a link or a saved choice naming it finds no feed.
    assert cli("feeds", "remove", "2", config=cfg, check=False).returncode != 0


@pytest.mark.parametrize("table", ["feeds", "entries", "subscribers", "digests"])
def test_every_id_that_leaves_the_database_is_never_reused(tmp_path: Path, table: str) -> None:
    """Links (/sources/N, /entries/N, tokens naming a subscriber or a digest), Message-IDs
    and saved choices carry these ids: each table hands out ids past every one used."""
    store = Store.open(tmp_path / "db.sqlite3")
    try:
        sql = store.conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", [table]
        ).fetchone()[0]
        assert "INTEGER PRIMARY KEY AUTOINCREMENT" in sql
    finally:
        store.close()


def _old_database(path: Path) -> None:
    """A database as the previous version left it (every migration before this version's),
    with a row in every table, and feed 9 removed long ago: only its digest lines and a
    digest's "more" count remember it."""
    db = Database(str(path))
    schema.migrations.apply(db, stop_before=BEFORE)
    at = "2026-01-01T00:00:00.000000Z"
    db.executescript(
        f"""
        INSERT INTO feeds (id, url, title, added_at, backlog_seq)
            VALUES (1, 'https://alpha.test/feed', 'Alpha Blog', '{at}', 0),
                   (2, 'https://beta.test/feed', '', '{at}', 0),
                   (5, 'https://gamma.test/feed', 'Gamma', '{at}', 0);
        INSERT INTO entries (id, feed_id, key, title, norm_title, summary_html, content_html,
                             text, content_hash, published, first_seen, last_changed, alias)
            VALUES (1, 1, 'k1', 'Otters swim', 'otters swim', '', '<p>x</p>', 'otters', 'h1',
                    '{at}', '{at}', '{at}', 'k1'),
                   (2, 2, 'k2', 'Badgers dig', 'badgers dig', '', '', 'badgers', 'h2',
                    '{at}', '{at}', '{at}', 'k2'),
                   (3, 5, 'k3', 'Gamma rays', 'gamma rays', '', '', 'rays', 'h3',
                    '{at}', '{at}', '{at}', 'k3');
        UPDATE entries SET duplicate_of = 1 WHERE id = 2;
        INSERT INTO enclosures (entry_id, position, role, url)
            VALUES (1, 0, 'enclosure', 'https://alpha.test/otter.mp3');
        INSERT INTO fetches (feed_id, at, url, outcome) VALUES (1, '{at}', 'https://alpha.test/feed', 'ok');
        INSERT INTO subscribers (id, email, email_key, status, cadence, all_feeds, created_at,
                                 status_changed_at)
            VALUES (1, 'ann@example.org', 'ann@example.org', 'confirmed', 'daily', 0, '{at}', '{at}');
        INSERT INTO subscriber_feeds (subscriber_id, feed_id) VALUES (1, 1), (1, 5);
        INSERT INTO digests (id, subscriber_id, status, created_at, next_attempt_at,
                             first_entry, last_entry, entry_count, more)
            VALUES (1, 1, 'sent', '{at}', '{at}', 1, 3, 2, '{{"9": 4, "1": 0}}');
        INSERT INTO digest_entries (digest_id, position, entry_id, feed_id) VALUES (1, 0, 1, 9);
        INSERT INTO digest_entries (digest_id, position, entry_id, feed_id) VALUES (1, 1, 3, 5);
        CREATE INDEX feeds_by_title ON feeds(title);  -- an operator's own index is kept too
        """
    )
    db.conn.commit()
    db.conn.close()


# What this version adds beside the tables it rebuilds.
NEW = ("seeded_addresses", "mail_owed", "mail_owed_due")


def _snapshot(path: Path) -> dict[str, Any]:
    """Every row, schema object and foreign key, but the feeds table's own SQL (rebuilt)
    and what this version adds."""
    conn = sqlite3.connect(path)
    try:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT IN ('sqlite_sequence', '_sqlite_migrations', 'secrets')"
            )
            if name not in NEW
        ]
        return {
            "rows": {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables},
            "schema": sorted(
                row
                for row in conn.execute(
                    "SELECT type, name, tbl_name, sql FROM sqlite_master "
                    "WHERE name NOT IN ('feeds', 'sqlite_sequence', '_sqlite_migrations')"
                )
                if row[1] not in NEW
            ),
            "foreign_keys": {
                t: sorted(conn.execute(f"PRAGMA foreign_key_list('{t}')")) for t in tables
            },
            "feed_columns": list(conn.execute("PRAGMA table_info(feeds)")),
        }
    finally:
        conn.close()


def test_the_upgrade_keeps_every_row_index_trigger_and_key_and_reuses_no_old_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite3"
    _old_database(path)
    before = _snapshot(path)
    store = Store.open(path)
    try:
        after = _snapshot(path)
        assert after == before  # every row, index, trigger, view, FTS table and foreign key
        feeds_sql = store.conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'feeds'"
        ).fetchone()[0]
        assert "AUTOINCREMENT" in feeds_sql
        assert store.integrity_ok()
        assert store.conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        # The search index still answers by source title, and follows a renamed source.
        search = "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? ORDER BY rowid"
        assert store.conn.execute(search, ["source:alpha"]).fetchall() == [(1,)]
        with store.write() as db:
            db.execute("UPDATE feeds SET title = 'Otter Weekly' WHERE id = 1")
        assert store.conn.execute(search, ["source:otter"]).fetchall() == [(1,)]
        # Removing a feed still takes its entries, fetches and choices with it.
        with store.write() as db:
            assert feed_rows.remove_feed(db, 5)
        assert store.conn.execute("SELECT id FROM entries ORDER BY id").fetchall() == [(1,), (2,)]
        assert store.conn.execute("SELECT feed_id FROM subscriber_feeds").fetchall() == [(1,)]
        # Neither 5 (removed just now) nor 9 (removed before the upgrade) comes back.
        with store.write() as db:
            feed, created = feed_rows.add_feed(
                db, url="https://delta.test/feed", title=None, origin="cli", now=T0
            )
        assert created and feed.id == 10
    finally:
        store.close()


def test_the_rebuild_refuses_a_connection_with_foreign_keys_on(tmp_path: Path) -> None:
    """With foreign keys on, dropping the old table would delete every entry: refused."""
    path = tmp_path / "db.sqlite3"
    _old_database(path)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    db = Database(conn)
    with pytest.raises(RuntimeError, match="foreign_keys"):
        schema.migrations.apply(db)
    assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 3
    conn.close()


# --- 2. the configured subscriber -------------------------------------------------------


def test_the_configured_subscriber_is_added_once_and_its_removal_or_unsubscribe_sticks(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    try:
        added = seed_configured_subscriber(store, email="Reader@Example.org", now=T0)
        assert added is not None and added.status == "confirmed" and added.cadence == "daily"
        assert seed_configured_subscriber(store, email="reader@example.org", now=T0) is None
        assert remove_by_operator(store, "reader@example.org")
        assert seed_configured_subscriber(store, email="reader@example.org", now=T0) is None
        assert subscriber_rows.by_key(store.db, "reader@example.org") is None
        # An address the configuration names later that already subscribed keeps its state.
        links = links_for(store, settings)
        bob = add_or_update_by_operator(store, settings, links, email="bob@example.org", now=T0)
        unsubscribe_id(store, bob.subscriber.id, T0)
        assert seed_configured_subscriber(store, email="bob@example.org", now=T0) is None
        assert remove_by_operator(store, "bob@example.org")
        assert seed_configured_subscriber(store, email="bob@example.org", now=T0) is None
    finally:
        store.close()


def _run_service_until_started(cfg: Path, port: int) -> str:
    """Start ``aggregator run``, wait for its start line, stop it with SIGTERM; its output."""
    env = {**os.environ, "AGGREGATOR_CONFIG": str(cfg), "COLUMNS": "250"}
    service = subprocess.Popen(
        [*AGGREGATOR, "run", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        assert service.stdout is not None
        for line in service.stdout:
            lines.append(line)
            if line.startswith("Starting:"):
                break
    finally:
        service.terminate()
        rest, _ = service.communicate(timeout=60)
    return "".join(lines) + rest


def test_a_removed_demo_subscriber_stays_removed_across_restarts(tmp_path: Path) -> None:
    """The real service, started three times: the demo address comes once."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = cli_config(tmp_path, '[service]\ndemo_subscriber = "reader@example.org"\n')
    first = _run_service_until_started(cfg, port)
    assert "Demo subscriber: reader@example.org" in first, first
    assert "reader@example.org" in cli("subscribers", "list", config=cfg).stdout
    cli("subscribers", "remove", "reader@example.org", config=cfg)
    again = _run_service_until_started(cfg, port)
    assert "Demo subscriber" not in again, again
    assert "0 subscribers" in cli("subscribers", "list", config=cfg).stdout
    cli("feeds", "list", config=cfg)  # any other command opening the store adds nobody
    _run_service_until_started(cfg, port)
    assert "0 subscribers" in cli("subscribers", "list", config=cfg).stdout


# --- 3. confirmation and welcome mails owed -----------------------------------------------


def _owed(store: Store) -> list[tuple[Any, ...]]:
    return store.conn.execute(
        "SELECT subscriber_id, kind, attempts, next_attempt_at IS NULL, last_error "
        "FROM mail_owed ORDER BY subscriber_id, kind"
    ).fetchall()


def test_a_confirmation_the_relay_refused_is_retried_with_backoff_and_then_confirms(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings.database)
    links = links_for(store, settings)
    try:
        smtp_server.stop()  # the relay is down at sign-up time
        signup = request_signup(
            store,
            settings,
            links,
            email="carol@example.org",
            cadence="daily",
            feed_ids=None,
            client="198.51.100.7",
            now=T0,
        )
        sender = open_sender(settings.mail.smtp, settings.mail.outbox)
        try:
            problem = send_signup_mail(store, sender, signup)
        finally:
            sender.close()
        assert problem
        ((_, kind, attempts, given_up, error),) = _owed(store)
        assert (kind, attempts, given_up) == ("confirm", 1, 0) and error
        # Visible to the operator, from the real command.
        cfg = cli_config(tmp_path)
        listing = cli("subscribers", "list", config=cfg).stdout
        assert "confirmation pending (1 attempt" in listing, listing
        smtp_server.start()
        sender = open_sender(settings.mail.smtp, settings.mail.outbox)
        try:
            # Not before its time has come; then once, with a link that works.
            assert send_welcomes(store, sender, settings, T0 + timedelta(minutes=1)) == []
            assert smtp_server.messages() == []
            later = T0 + mail_retry_delay(1)
            assert send_welcomes(store, sender, settings, later) == []
        finally:
            sender.close()
        (mail,) = smtp_server.messages()
        assert mail["To"] == "carol@example.org"
        assert _owed(store) == []
        body = mail.get_body(("plain",))
        assert body is not None
        found = re.search(r"/confirm\?token=([A-Za-z0-9_.~%-]+)", body.get_content())
        assert found, body.get_content()
        assert confirm(store, links, unquote(found[1]), later).status == "confirmed"
        assert "mail owed" not in cli("subscribers", "list", config=cfg).stdout
    finally:
        store.close()


def test_retries_are_bounded_and_a_permanent_refusal_is_given_up_at_once(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings.database)
    links = links_for(store, settings)
    smtp_server.temp_fail.add("dan@example.org")
    smtp_server.perm_fail.add("eve@example.org")
    sender = open_sender(settings.mail.smtp, settings.mail.outbox)
    try:
        for email in ("dan@example.org", "eve@example.org"):
            add_or_update_by_operator(store, settings, links, email=email, now=T0)
        problems = send_welcomes(store, sender, settings, T0)
        assert len(problems) == 2
        owed = {row[0]: row for row in _owed(store)}
        dan_id, eve_id = sorted(owed)
        assert owed[dan_id][1:4] == ("welcome", 1, 0)  # 4xx: retried later
        assert owed[eve_id][1:4] == ("welcome", 1, 1)  # 5xx: given up
        now = T0
        for attempt in range(2, MAX_MAIL_ATTEMPTS + 1):
            now += mail_retry_delay(attempt - 1)
            assert len(send_welcomes(store, sender, settings, now)) == 1
            assert _owed(store)[0][2] == attempt
        assert _owed(store)[0][3] == 1  # out of attempts: given up, kept for the listing
        now += timedelta(days=2)
        assert send_welcomes(store, sender, settings, now) == []
        listing = cli("subscribers", "list", config=cli_config(tmp_path)).stdout
        assert f"welcome failed ({MAX_MAIL_ATTEMPTS} attempts)" in listing, listing
        assert "welcome failed (1 attempt): " in listing
        assert smtp_server.messages() == []
        assert smtp_server.rcpt_seen.count("dan@example.org") == MAX_MAIL_ATTEMPTS
        assert smtp_server.rcpt_seen.count("eve@example.org") == 1
    finally:
        sender.close()
        store.close()


def test_a_welcome_that_failed_goes_out_on_a_later_run_and_only_to_the_confirmed(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings.database)
    links = links_for(store, settings)
    smtp_server.temp_fail.update({"fay@example.org", "gus@example.org"})
    sender = open_sender(settings.mail.smtp, settings.mail.outbox)
    try:
        fay = add_or_update_by_operator(store, settings, links, email="fay@example.org", now=T0)
        gus = add_or_update_by_operator(store, settings, links, email="gus@example.org", now=T0)
        assert len(send_welcomes(store, sender, settings, T0)) == 2
        unsubscribe_id(store, gus.subscriber.id, T0)  # no welcome for one who left
        smtp_server.temp_fail.clear()
        assert send_welcomes(store, sender, settings, T0 + mail_retry_delay(1)) == []
        (mail,) = smtp_server.messages()
        assert mail["To"] == "fay@example.org" and fay.subscriber.id
        assert _owed(store) == []
    finally:
        sender.close()
        store.close()


# --- 4. URLs in Atom attributes ---------------------------------------------------------


def test_atom_attributes_carry_urls_percent_encoded(
    web_site: tuple[Store, TestClient, int, int],
) -> None:
    store, client, alpha, _ = web_site
    hostile = 'https://alpha.test/a"b<c>d e.mp3?x=1&y=%zz'
    entry = replace(
        record(
            "Hostile media",
            published=NOW - timedelta(hours=1),
            link='https://alpha.test/post"onmouseover="x<y>',
        ),
        media=(MediaItem(url=hostile, mime_type="audio/mpeg"),),
    )
    add_entry(store, alpha, entry)
    for path in ("/feed.atom", "/search.atom?q=hostile", f"/sources/{alpha}/feed.atom"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert b'"b<c>' not in response.content and b'onmouseover="' not in response.content
        root = ET.fromstring(response.content)
        (item,) = root.findall(f"{ATOM}entry")
        hrefs = {link.get("rel"): link.get("href") for link in item.findall(f"{ATOM}link")}
        assert hrefs["enclosure"] == "https://alpha.test/a%22b%3Cc%3Ed%20e.mp3?x=1&y=%25zz"
        assert hrefs["alternate"] == "https://alpha.test/post%22onmouseover=%22x%3Cy%3E"


def test_a_sign_up_while_the_relay_is_down_gets_its_confirmation_later(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """Through the web form: the relay is down when the visitor signs up; the service's
    mail job sends the confirmation once the relay is back and its retry time has come."""
    from aggregator.web import create_app

    settings = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings.database)
    clock = [T0]
    smtp_server.stop()
    try:
        with TestClient(
            create_app(settings, clock=lambda: clock[0]), base_url="https://news.example.org"
        ) as client:
            form = client.get("/subscribe")
            found = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert found, form.text
            data = {"csrf_token": found[1], "email": "hal@example.org", "cadence": "daily"}
            answer = client.post("/subscribe", data=data)
            assert answer.status_code == 200 and "Check your inbox" in answer.text
        ((_, kind, attempts, given_up, error),) = _owed(store)
        assert (kind, attempts, given_up) == ("confirm", 1, 0) and error
        smtp_server.start()
        sender = open_sender(settings.mail.smtp, settings.mail.outbox)
        try:
            assert send_welcomes(store, sender, settings, T0 + mail_retry_delay(1)) == []
        finally:
            sender.close()
        (mail,) = smtp_server.messages()
        assert mail["To"] == "hal@example.org" and "Confirm" in str(mail["Subject"])
        assert _owed(store) == []
    finally:
        store.close()
