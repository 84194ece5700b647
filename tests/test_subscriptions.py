"""Subscribing, confirming and leaving, on a real SQLite file; the CLI as a real process."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from digestkit import T0, add_entry, add_feed, make_settings, rows

from aggregator.errors import InvalidSubscription, RateLimited, TokenError
from aggregator.store import Store
from aggregator.subscriptions import (
    CLIENT_LIMIT,
    add_by_operator,
    confirm,
    links_for,
    normalise_email,
    remove_by_operator,
    request_signup,
    unsubscribe,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path: Path):
    settings = make_settings(tmp_path)
    store = Store.open(settings.database)
    yield settings, store, links_for(store, settings)
    assert store.integrity_ok()
    store.close()


@pytest.mark.parametrize(
    ("given", "address", "key"),
    [
        ("Reader@Example.ORG", "Reader@example.org", "reader@example.org"),
        ("  reader@example.org ", "reader@example.org", "reader@example.org"),
        ("reader@bücher.example", "reader@xn--bcher-kva.example", "reader@xn--bcher-kva.example"),
        ("first.last+tag@example.org", "first.last+tag@example.org", "first.last+tag@example.org"),
    ],
)
def test_addresses_are_normalised(given, address, key) -> None:
    assert normalise_email(given) == (address, key)


@pytest.mark.parametrize(
    "given",
    [
        "",
        "no-at",
        "a@b",
        "x" * 1001 + "@example.org",
        "reader@example.org\r\nBcc: victim@example.org",
        "read\u2028er@example.org",
        '"quoted"@example.org',
        "Reader <reader@example.org>",
        "reader@@example.org",
        "=?utf-8?b?PHNjcmlwdD4=?=@example.org",  # the To: header would read <script>@…
    ],
)
def test_bad_addresses_are_refused(given) -> None:
    with pytest.raises(InvalidSubscription):
        normalise_email(given)


def signup(env, email: str, *, client: str = "203.0.113.9", at=T0, **kwargs):
    settings, store, links = env
    return request_signup(
        store,
        settings,
        links,
        email=email,
        cadence=kwargs.pop("cadence", "daily"),
        feed_ids=kwargs.pop("feed_ids", None),
        client=client,
        now=at,
    )


def confirm_token(message) -> str:
    url = next(line for line in message.text.splitlines() if "/subscribe/confirm?token=" in line)
    return url.split("token=", 1)[1].strip()


def test_double_opt_in_confirms_once_and_starts_after_existing_entries(env) -> None:
    _, store, links = env
    feed = add_feed(store, "Alpha Blog")
    old = add_entry(store, feed, "Before subscribing")
    result = signup(env, "reader@example.org")
    assert result.message is not None and result.message.recipient == "reader@example.org"
    assert rows(store, "SELECT status FROM subscribers") == [("pending",)]
    token = confirm_token(result.message)
    subscriber = confirm(store, links, token, T0 + timedelta(hours=1))
    assert subscriber.status == "confirmed" and subscriber.watermark == old
    with pytest.raises(TokenError):
        confirm(store, links, token, T0 + timedelta(hours=1))


def test_confirmation_expires(env) -> None:
    _, store, links = env
    token = confirm_token(signup(env, "reader@example.org").message)
    with pytest.raises(TokenError):
        confirm(store, links, token, T0 + timedelta(days=3))
    assert rows(store, "SELECT status FROM subscribers") == [("pending",)]


def test_client_and_address_limits(env) -> None:
    mails = [signup(env, "target@example.org").message for _ in range(CLIENT_LIMIT)]
    assert sum(m is not None for m in mails) == 1
    with pytest.raises(RateLimited):
        signup(env, "other@example.org")
    # Another client is not limited; the address window still is.
    assert signup(env, "target@example.org", client="198.51.100.7").message is None
    later = T0 + timedelta(hours=2)
    assert signup(env, "target@example.org", client="198.51.100.7", at=later).message is not None


def test_unsubscribe_is_idempotent_and_resubscribing_needs_confirmation(env) -> None:
    settings, store, links = env
    subscriber, _ = add_by_operator(store, settings, links, email="reader@example.org", now=T0)
    token = links.token("unsubscribe", subscriber.id, T0)
    assert unsubscribe(store, links, token, T0).status == "unsubscribed"
    assert unsubscribe(store, links, token, T0).status == "unsubscribed"
    again = signup(env, "reader@example.org", at=T0 + timedelta(hours=2))
    assert again.message is not None and "Confirm" in again.message.subject
    assert rows(store, "SELECT status FROM subscribers") == [("pending",)]


def test_a_spooled_unsubscribe_is_applied_by_any_write_and_never_undoes_a_later_return(
    env,
) -> None:
    """An unsubscribe kept while the database was locked lands with the next write of
    any kind; applied again (a crash before the spool was emptied) it changes nothing,
    not even for someone who subscribed again since."""
    import sqlite3

    from aggregator.store import subscribers as subscriber_rows
    from aggregator.store.spool import spool_path

    settings, store, links = env
    subscriber, _ = add_by_operator(store, settings, links, email="reader@example.org", now=T0)
    asked = T0 + timedelta(hours=1)
    store.spool_unsubscribe(subscriber.id, asked)
    assert rows(store, "SELECT status FROM subscribers") == [("confirmed",)]
    with store.write():
        pass
    assert rows(store, "SELECT status, status_changed_at FROM subscribers") == [
        ("unsubscribed", "2026-11-02T09:00:00.000000Z")
    ]
    with store.write() as db:
        subscriber_rows.confirm(db, subscriber.id, T0 + timedelta(hours=3), 0)
    store.spool_unsubscribe(subscriber.id, asked)
    with store.write():
        pass
    assert rows(store, "SELECT status FROM subscribers") == [("confirmed",)]
    with sqlite3.connect(spool_path(settings.database)) as spool:
        assert spool.execute("SELECT count(*) FROM unsubscribes").fetchone() == (0,)


def test_operator_adds_confirmed_or_pending_and_removes(env) -> None:
    settings, store, links = env
    confirmed, message = add_by_operator(store, settings, links, email="a@example.org", now=T0)
    assert confirmed.status == "confirmed" and message is None
    pending, message = add_by_operator(
        store, settings, links, email="b@example.org", pending=True, now=T0
    )
    assert pending.status == "pending" and message is not None
    assert remove_by_operator(store, "A@example.org") == "a@example.org"
    assert remove_by_operator(store, "nobody@example.org") is None
    assert rows(store, "SELECT email FROM subscribers") == [("b@example.org",)]
    # By the id `subscribers list` shows, too.
    assert remove_by_operator(store, "999") is None
    assert remove_by_operator(store, str(pending.id)) == "b@example.org"
    assert rows(store, "SELECT email FROM subscribers") == []


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_subscribers_and_digest_commands(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'database = "db.sqlite3"\n[web]\nbase_url = "https://news.example.org"\n'
        '[mail]\nfrom = "Blog digest <digest@news.example.org>"\noutbox = "outbox"\n',
        encoding="utf-8",
    )
    assert (
        cli(config, "subscribers", "add", "Reader@Example.org", "--cadence", "daily").returncode
        == 0
    )
    added = cli(config, "subscribers", "add", "later@example.org", "--pending")
    assert added.returncode == 0 and "Confirmation sent" in added.stdout
    # The confirmed address got its welcome, the pending one its confirmation link.
    outbox = sorted((tmp_path / "outbox" / "new").iterdir())
    subjects = sorted(
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["Subject"]
        for path in outbox
    )
    assert subjects == [
        "Confirm your subscription to Blog digest",
        "Welcome to the Blog digest",
    ]
    listing = cli(config, "subscribers", "list")
    assert "Reader@example.org" in listing.stdout and "pending" in listing.stdout
    bad = cli(config, "subscribers", "add", "not an address")
    assert bad.returncode == 1 and "valid email address" in bad.stderr

    store = Store.open(tmp_path / "db.sqlite3")
    # Published just now: a first digest on a fresh installation holds one period only.
    add_entry(
        store, add_feed(store, "Alpha Blog"), "Hello from the CLI", published=datetime.now(UTC)
    )
    store.close()
    preview = cli(
        config,
        "digest",
        "preview",
        "--subscriber",
        "reader@example.org",
        "--out",
        str(tmp_path / "p.html"),
    )
    assert preview.returncode == 0 and "Hello from the CLI" in (tmp_path / "p.html").read_text()
    dry = cli(config, "digest", "send", "--dry-run")
    assert "Would build 1 digest (" in dry.stdout
    sent = cli(config, "digest", "send")
    assert sent.returncode == 0 and "Sent 1" in sent.stdout, sent.stderr
    assert len(list((tmp_path / "outbox" / "new").iterdir())) == 3
    assert "Sent 0" in cli(config, "digest", "send").stdout
    again = cli(config, "digest", "send", "--dry-run").stdout
    assert again.startswith("Would build 0 digests (0 stories; 1 with nothing new)"), again
    assert cli(config, "subscribers", "remove", "reader@example.org").returncode == 0
    assert cli(config, "subscribers", "remove", "reader@example.org").returncode == 1


def test_emptying_the_spool_never_takes_an_unsubscribe_that_came_after(env) -> None:
    """Two processes drain the spool back to back; a new unsubscribe arrives between the
    first's read and its clearing: it must survive (ids are never reused)."""
    from aggregator.store import spool

    settings, store, links = env
    first, _ = add_by_operator(store, settings, links, email="s1@example.org", now=T0)
    second, _ = add_by_operator(store, settings, links, email="s2@example.org", now=T0)
    later = T0 + timedelta(hours=1)
    store.spool_unsubscribe(first.id, later)
    with store.write() as db:  # a process applies id 1, and has not cleared it yet
        applied = spool.apply(db, settings.database)
    assert applied is not None
    with store.write():  # another process applies and clears it
        pass
    store.spool_unsubscribe(second.id, later)  # a new one, after the spool was emptied
    spool.forget(settings.database, applied)  # the first process clears what it applied
    assert store.spooled_unsubscribes() == 1
    with store.write():
        pass
    assert rows(store, "SELECT email, status FROM subscribers ORDER BY id") == [
        ("s1@example.org", "unsubscribed"),
        ("s2@example.org", "unsubscribed"),
    ]
