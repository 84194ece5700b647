"""Shared pieces of the threat tests: settings, a settable clock, polling, queries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.config import Settings, settings_from_mapping
from aggregator.models import FeedSource, PollSummary
from aggregator.pipeline import poll_feeds
from aggregator.sources import add_source
from aggregator.store import Store

START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
BASE_URL = "https://news.example.org"
ADMIN_PASSWORD = "correct horse battery"


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


def make_settings(
    tmp_path: Path, *, smtp_port: int | None = None, **sections: dict[str, Any]
) -> Settings:
    """Loopback-friendly settings for a database in ``tmp_path``; tables override."""
    mail: dict[str, Any] = {
        "from": "Blog digest <digest@news.example.org>",
        "outbox": str(tmp_path / "outbox"),
    }
    if smtp_port is not None:
        mail.update(smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_security="none")
    raw: dict[str, Any] = {
        "database": str(tmp_path / "db.sqlite3"),
        "fetch": {"allow_private_addresses": True, "total_timeout": 5.0},
        "poll": {"parse_workers": 1},
        "web": {"base_url": BASE_URL},
        "mail": mail,
        "digest": {"timezone": "UTC", "daily_at": "07:00"},
    }
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table}
    return settings_from_mapping(
        raw, env={"AGGREGATOR_ADMIN_PASSWORD": ADMIN_PASSWORD}, path=tmp_path / "config.toml"
    )


def poll(settings: Settings, store: Store, clock: Clock, **kwargs: Any) -> list[PollSummary]:
    return asyncio.run(poll_feeds(settings, store, clock=clock, **kwargs))


def add(store: Store, url: str, now: datetime = START) -> int:
    feed, _ = add_source(store, FeedSource(url=url), origin="cli", now=now)
    return feed.id


def rows(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return store.conn.execute(sql, params).fetchall()


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables a poll writes, to show that nothing else changed."""
    return {
        table: rows(store, f"SELECT * FROM {table} ORDER BY rowid")
        for table in ("feeds", "entries", "fetches")
    }
