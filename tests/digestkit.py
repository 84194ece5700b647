"""Builders for digest and subscription tests: settings, feeds and entries in a real SQLite file."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aggregator.config import Settings, settings_from_mapping
from aggregator.models import EntryRecord, NewEntry, PollPlan
from aggregator.store import Store
from aggregator.store import entries as entry_rows
from aggregator.store import feeds as feed_rows

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
    """A feed whose first poll is over, written through the store's own functions;
    ``backlog`` False means no entries predate it (else call ``mark_backlog`` after
    adding the entries of its first poll)."""
    slug = hashlib.sha1(title.encode()).hexdigest()[:8]
    with store.write() as db:
        feed, _ = feed_rows.add_feed(
            db, url=f"https://{slug}.test/feed", title=title, origin="cli", now=T0
        )
        update = feed_rows.FeedUpdate(
            polled_at=T0,
            next_poll_at=T0,
            succeeded=True,
            site_url=site or f"https://{slug}.test/",
        )
        feed_rows.apply_feed_update(db, feed, update)
        if not backlog:
            feed_rows.mark_backlog(db, feed.id)
    return feed.id


def mark_backlog(store: Store, feed_id: int) -> None:
    """The feed's first poll is stored: every entry so far is backlog."""
    with store.write() as db:
        feed_rows.mark_backlog(db, feed_id)


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
    """An entry first seen at T0, inserted as a poll would (``store.entries.apply_plan``)."""
    published = published or T0
    key = hashlib.sha1(f"{feed_id}:{title}:{link}:{published}".encode()).hexdigest()
    record = EntryRecord(
        key=key,
        alias=key,
        link_key=None,
        guid=None,
        link=link,
        canonical_url=None,
        title=title,
        norm_title=title.lower(),
        author=author,
        summary_html="",
        content_html=body,
        text=body,
        content_hash=key,
        published=published,
        updated=None,
        date_missing=False,
    )
    plan = PollPlan(inserts=(NewEntry(record=record, duplicate_of=duplicate_of),))
    with store.write() as db:
        (entry_id,) = entry_rows.apply_plan(db, feed_id, plan, T0)
    return entry_id


def rows(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return store.conn.execute(sql, params).fetchall()


def later(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)
