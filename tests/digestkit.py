"""Builders for digest and subscription tests: settings, feeds and entries in a real SQLite file."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aggregator.config import Settings, settings_from_mapping
from aggregator.store import Store
from aggregator.store.codec import to_db

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
BASE_URL = "https://news.example.org"


def make_settings(tmp_path: Path, *, smtp_port: int | None = None, **digest: Any) -> Settings:
    mail: dict[str, Any] = {
        "from": "Blog digest <digest@news.example.org>",
        "outbox": str(tmp_path / "outbox"),
    }
    if smtp_port is not None:
        mail.update(smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_security="none")
    raw: dict[str, Any] = {
        "database": str(tmp_path / "db.sqlite3"),
        "web": {"base_url": BASE_URL},
        "mail": mail,
        "digest": {"timezone": "UTC", "daily_at": "07:00", **digest},
    }
    return settings_from_mapping(raw, env={}, path=tmp_path / "config.toml")


def add_feed(store: Store, title: str, *, site: str | None = None, backlog: bool = False) -> int:
    """A feed whose first poll is over; ``backlog`` False means no entries predate it."""
    slug = hashlib.sha1(title.encode()).hexdigest()[:8]
    with store.write() as db:
        cursor = db.execute(
            "INSERT INTO feeds (url, title, site_url, origin, added_at) VALUES (?, ?, ?, 'cli', ?)",
            [f"https://{slug}.test/feed", title, site or f"https://{slug}.test/", to_db(T0)],
        )
        feed_id = cursor.lastrowid
        assert feed_id is not None
        if not backlog:
            db.execute(
                "UPDATE feeds SET backlog_seq = (SELECT coalesce(max(id), 0) FROM entries) "
                "WHERE id = ?",
                [feed_id],
            )
    return feed_id


def mark_backlog(store: Store, feed_id: int) -> None:
    with store.write() as db:
        db.execute(
            "UPDATE feeds SET backlog_seq = (SELECT coalesce(max(id), 0) FROM entries) "
            "WHERE id = ?",
            [feed_id],
        )


def add_entry(
    store: Store,
    feed_id: int,
    title: str,
    *,
    link: str | None = None,
    body: str = "<p>Some words about the post.</p>",
    published: datetime | None = None,
    duplicate_of: int | None = None,
    author: str | None = None,
) -> int:
    published = published or T0
    key = hashlib.sha1(f"{feed_id}:{title}:{link}:{published}".encode()).hexdigest()
    with store.write() as db:
        cursor = db.execute(
            "INSERT INTO entries (feed_id, key, link, title, norm_title, author, summary_html, "
            "content_html, text, content_hash, published, first_seen, last_changed, duplicate_of) "
            "VALUES (?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?)",
            [
                feed_id,
                key,
                link,
                title,
                title.lower(),
                author,
                body,
                body,
                key,
                to_db(published),
                to_db(T0),
                to_db(T0),
                duplicate_of,
            ],
        )
        entry_id = cursor.lastrowid
    assert entry_id is not None
    return entry_id


def rows(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return store.conn.execute(sql, params).fetchall()


def later(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)
