"""The SQLite store: opening, refusing foreign files (K7), migrations, transactions."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.errors import IncompatibleDatabase
from aggregator.store import Store
from aggregator.store import feeds as feed_rows

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_new_database_is_wal_with_foreign_keys_and_fts(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert "entries_fts" in store.db.table_names()
    assert store.integrity_ok()
    store.close()


def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    Store.open(path).close()
    store = Store.open(path)
    applied = store.conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0]
    from aggregator.store.schema import migrations

    assert applied == len(migrations._migrations)
    store.close()


def test_k7_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    conn.execute("INSERT INTO invoices (amount) VALUES (9.5)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(IncompatibleDatabase, match="another application"):
        Store.open(path)
    assert path.read_bytes() == before  # untouched


def test_k7_not_sqlite_and_truncated_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite3"
    text.write_text("just some notes\n")
    with pytest.raises(IncompatibleDatabase, match="not an SQLite database"):
        Store.open(text)
    good = tmp_path / "good.sqlite3"
    Store.open(good).close()
    truncated = tmp_path / "truncated.sqlite3"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(IncompatibleDatabase):
        Store.open(truncated)


def test_write_rolls_back_whole_on_error(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    with pytest.raises(RuntimeError), store.write() as db:
        feed_rows.add_feed(db, url="https://a.test/feed", title="A", origin="cli", now=NOW)
        raise RuntimeError("crash half way")
    assert feed_rows.list_feeds(store.db) == []
    with store.write() as db:
        feed_rows.add_feed(db, url="https://a.test/feed", title="A", origin="cli", now=NOW)
    assert [f.url for f in feed_rows.list_feeds(store.db)] == ["https://a.test/feed"]
    store.close()


def test_add_feed_is_idempotent_by_url(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    with store.write() as db:
        first, created = feed_rows.add_feed(
            db, url="https://a.test/f", title=None, origin="cli", now=NOW
        )
        again, created_again = feed_rows.add_feed(
            db, url="https://a.test/f", title="x", origin="cli", now=NOW
        )
    assert created and not created_again
    assert first.id == again.id
    store.close()
