"""Numbered schema migrations, applied at open in their own transactions (sqlite-utils)."""

from __future__ import annotations

from sqlite_utils import Database, Migrations

# "AGGR" — marks the file as ours, so another application's database is refused.
APPLICATION_ID = 0x41474752

migrations = Migrations("aggregator")


@migrations()
def m001_feeds_entries_fetches(db: Database) -> None:
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.executescript(
        """
        CREATE TABLE feeds (
            id INTEGER PRIMARY KEY,
            url TEXT NOT NULL UNIQUE,
            title TEXT NOT NULL DEFAULT '',
            site_url TEXT,
            origin TEXT NOT NULL DEFAULT 'cli',
            enabled INTEGER NOT NULL DEFAULT 1,
            disabled_reason TEXT,
            etag TEXT,
            last_modified TEXT,
            error_count INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            next_poll_at TEXT,
            last_polled_at TEXT,
            last_success_at TEXT,
            interval_seconds INTEGER,
            snapshot TEXT,
            added_at TEXT NOT NULL,
            backlog_seq INTEGER
        );
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the monotonic ingest sequence
            feed_id INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            link_key TEXT,
            guid TEXT,
            link TEXT,
            canonical_url TEXT,
            title TEXT NOT NULL,
            norm_title TEXT NOT NULL,
            author TEXT,
            summary_html TEXT NOT NULL,
            content_html TEXT NOT NULL,
            text TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            published TEXT NOT NULL,
            updated TEXT,
            date_missing INTEGER NOT NULL DEFAULT 0,
            first_seen TEXT NOT NULL,
            last_changed TEXT NOT NULL,
            duplicate_of INTEGER REFERENCES entries(id) ON DELETE SET NULL,
            UNIQUE (feed_id, key)
        );
        CREATE INDEX entries_feed_link ON entries(feed_id, link_key);
        CREATE INDEX entries_canonical ON entries(canonical_url);
        CREATE INDEX entries_norm_title ON entries(norm_title);
        CREATE INDEX entries_timeline ON entries(published DESC, id DESC);
        CREATE INDEX entries_feed_timeline ON entries(feed_id, published DESC, id DESC);
        CREATE INDEX entries_duplicate_of ON entries(duplicate_of);
        CREATE TABLE fetches (
            id INTEGER PRIMARY KEY,
            feed_id INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
            at TEXT NOT NULL,
            url TEXT NOT NULL,
            status INTEGER,
            bytes INTEGER NOT NULL DEFAULT 0,
            duration_ms INTEGER NOT NULL DEFAULT 0,
            outcome TEXT NOT NULL,
            error_kind TEXT,
            error TEXT,
            new INTEGER NOT NULL DEFAULT 0,
            updated INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX fetches_feed_at ON fetches(feed_id, at DESC);
        """
    )
    db.table("entries").enable_fts(
        ["title", "author", "text"], create_triggers=True, tokenize="porter unicode61"
    )


@migrations()
def m002_instance_secrets(db: Database) -> None:
    """Secrets made at first start (link tokens, CSRF): in the database, never the repo."""
    db.execute("CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)")


def apply_migrations(db: Database) -> None:
    migrations.apply(db)
