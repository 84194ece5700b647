"""Test data for the web app: feeds and entries written through the real store functions."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.config import Settings, settings_from_mapping
from aggregator.models import EntryRecord, NewEntry, PollPlan
from aggregator.sanitize import html_to_text, sanitize_html
from aggregator.store import Store
from aggregator.store import entries as entry_rows
from aggregator.store import feeds as feed_rows
from aggregator.urls import canonical_url

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def make_settings(tmp_path: Path, *, admin_password: str | None = None, **fetch: Any) -> Settings:
    raw: dict[str, Any] = {
        "database": str(tmp_path / "db.sqlite3"),
        "fetch": {"allow_private_addresses": True, "total_timeout": 5.0, **fetch},
        "poll": {"parse_workers": 1},
        "web": {"base_url": "http://testserver"},
    }
    env = {"AGGREGATOR_ADMIN_PASSWORD": admin_password} if admin_password else {}
    return settings_from_mapping(raw, env=env, path=tmp_path / "config.toml")


def add_feed(store: Store, url: str, title: str = "") -> int:
    with store.write() as db:
        feed, _ = feed_rows.add_feed(db, url=url, title=title, origin="cli", now=NOW)
    return feed.id


def record(
    title: str,
    *,
    published: datetime,
    link: str | None = None,
    body: str = "<p>Body text.</p>",
    author: str | None = None,
    key: str | None = None,
) -> EntryRecord:
    html = sanitize_html(body)
    return EntryRecord(
        key=key or link or f"{title}|{published.isoformat()}",
        alias=key or link or f"{title}|{published.isoformat()}",
        link_key=link,
        guid=None,
        link=link,
        canonical_url=canonical_url(link),
        title=title,
        norm_title=" ".join(title.lower().split()),
        author=author,
        summary_html=html,
        content_html=html,
        text=html_to_text(html),
        content_hash=hashlib.sha256(html.encode()).hexdigest(),
        published=published,
        updated=None,
        date_missing=False,
    )


def add_entry(
    store: Store,
    feed_id: int,
    entry: EntryRecord,
    *,
    duplicate_of: int | None = None,
    now: datetime = NOW,
) -> int:
    plan = PollPlan(inserts=(NewEntry(record=entry, duplicate_of=duplicate_of),))
    with store.write() as db:
        (entry_id,) = entry_rows.apply_plan(db, feed_id, plan, now)
    return entry_id
