"""Feed rows: sources, their polling state and their fetch records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from ..decide import FeedUpdate as FeedUpdate  # decided in the domain, written here
from ..decide import FetchRecord as FetchRecord
from ..models import Feed
from ..urls import is_placeholder_title
from .codec import from_db, from_db_required, to_db

# Where a feed row came from (feeds.origin): the configuration file, the command line, an
# OPML import, or the admin page.
FEED_ORIGINS = ("config", "cli", "opml", "admin")


def _feed(row: Any) -> Feed:
    return Feed(
        id=row["id"],
        url=row["url"],
        title=row["title"],
        site_url=row["site_url"],
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        etag=row["etag"],
        last_modified=row["last_modified"],
        error_count=row["error_count"],
        last_error=row["last_error"],
        next_poll_at=from_db(row["next_poll_at"]),
        last_polled_at=from_db(row["last_polled_at"]),
        last_success_at=from_db(row["last_success_at"]),
        interval_seconds=row["interval_seconds"],
        added_at=from_db_required(row["added_at"]),
        backlog_seq=row["backlog_seq"],
    )


def _rows(db: Database, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    cursor = db.execute(sql, list(params))
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def list_feeds(db: Database) -> list[Feed]:
    """Every feed, enabled or not, by id."""
    return [_feed(row) for row in _rows(db, "SELECT * FROM feeds ORDER BY id")]


def feed_ids(db: Database) -> frozenset[int]:
    """The ids of every feed, enabled or not."""
    return frozenset(row[0] for row in db.execute("SELECT id FROM feeds"))


def enabled_titles(db: Database) -> list[tuple[int, str]]:
    """(id, title or else URL) of every enabled feed, by id."""
    sql = "SELECT id, coalesce(nullif(title, ''), url) FROM feeds WHERE enabled = 1 ORDER BY id"
    return [(row[0], row[1]) for row in db.execute(sql)]


def get_feed(db: Database, feed_id: int) -> Feed | None:
    """The feed with this id, or None."""
    rows = _rows(db, "SELECT * FROM feeds WHERE id = ?", [feed_id])
    return _feed(rows[0]) if rows else None


def existing_feed_ids(db: Database, feed_ids: Iterable[int]) -> set[int]:
    """Which of ``feed_ids`` still have a row (a feed may be removed while it is polled);
    read inside the caller's transaction, so the answer holds until it commits."""
    wanted = sorted(set(feed_ids))
    found: set[int] = set()
    for start in range(0, len(wanted), 500):  # under SQLite's limit on parameters
        chunk = wanted[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found.update(
            row[0] for row in db.execute(f"SELECT id FROM feeds WHERE id IN ({marks})", chunk)
        )
    return found


def feed_by_url(db: Database, url: str) -> Feed | None:
    """The feed polled at exactly this URL (as stored, not canonicalised), or None."""
    rows = _rows(db, "SELECT * FROM feeds WHERE url = ?", [url])
    return _feed(rows[0]) if rows else None


def add_feed(
    db: Database,
    *,
    url: str,
    title: str | None,
    origin: str,
    now: datetime,
    interval_seconds: int | None = None,
) -> tuple[Feed, bool]:
    """Insert a feed unless its URL is known. Returns the feed and whether it is new."""
    existing = feed_by_url(db, url)
    if existing is not None:
        return existing, False
    db.execute(
        "INSERT INTO feeds (url, title, origin, added_at, interval_seconds) VALUES (?, ?, ?, ?, ?)",
        [url, title or "", origin, to_db(now), interval_seconds],
    )
    feed = feed_by_url(db, url)
    assert feed is not None
    return feed, True


def remove_feed(db: Database, feed_id: int) -> bool:
    """Delete a feed with its entries and fetch records (ON DELETE CASCADE); False when no
    such feed.
    """
    cursor = db.execute("DELETE FROM feeds WHERE id = ?", [feed_id])
    return cursor.rowcount > 0


def set_enabled(db: Database, feed_id: int, enabled: bool, reason: str | None = None) -> None:
    """Turn polling on or off. Enabling clears the error count, the reason and the next poll
    time (so it polls at the next tick); disabling keeps ``reason`` (one line) for the
    admin page.
    """
    db.execute(
        "UPDATE feeds SET enabled = ?, disabled_reason = ?, error_count = CASE WHEN ? THEN 0 "
        "ELSE error_count END, next_poll_at = CASE WHEN ? THEN NULL ELSE next_poll_at END "
        "WHERE id = ?",
        [int(enabled), None if enabled else reason, int(enabled), int(enabled), feed_id],
    )


def set_interval(db: Database, feed_id: int, interval_seconds: int | None) -> None:
    """Set the feed's own poll interval in seconds; None: the configured default."""
    db.execute("UPDATE feeds SET interval_seconds = ? WHERE id = ?", [interval_seconds, feed_id])


def due_feeds(db: Database, now: datetime) -> list[Feed]:
    """Enabled feeds whose next poll time is at or before ``now``: never-polled ones first,
    then the most overdue, then by id.
    """
    rows = _rows(
        db,
        "SELECT * FROM feeds WHERE enabled = 1 AND (next_poll_at IS NULL OR next_poll_at <= ?) "
        "ORDER BY next_poll_at IS NOT NULL, next_poll_at, id",
        [to_db(now)],
    )
    return [_feed(row) for row in rows]


def apply_feed_update(db: Database, feed: Feed, update: FeedUpdate) -> int | None:
    """Write one poll's outcome to the feed row, inside the caller's transaction.

    Success resets the error count and stores the validators (ETag, Last-Modified; RFC 9110
    section 8.8) and the feed's own title when the stored one is a placeholder; failure
    counts the error. A permanent redirect moves the URL unless another feed has it
    (the two are not merged); ``disable_reason`` turns polling off. Returns the id of
    that other feed when a move was not made for that reason, else None.
    """
    blocked: int | None = None
    values: dict[str, Any] = {
        "last_polled_at": to_db(update.polled_at),
        "next_poll_at": to_db(update.next_poll_at),
    }
    if update.succeeded:
        values.update(
            error_count=0,
            last_error=None,
            last_success_at=to_db(update.polled_at),
            etag=update.etag,
            last_modified=update.last_modified,
        )
        # The feed's own title replaces a placeholder (none, or a URL an OPML file or
        # an old version stored as the name); a name the operator typed stays.
        if update.title and is_placeholder_title(feed.title, feed.url):
            values["title"] = update.title
        if update.site_url:
            values["site_url"] = update.site_url
    else:
        values.update(error_count=feed.error_count + 1, last_error=update.error)
    if update.url and update.url != feed.url:
        holder = feed_by_url(db, update.url)
        if holder is None:
            values["url"] = update.url
        elif holder.id != feed.id:
            blocked = holder.id
    if update.disable_reason:
        values.update(enabled=0, disabled_reason=update.disable_reason)
    assignments = ", ".join(f"{name} = ?" for name in values)
    db.execute(f"UPDATE feeds SET {assignments} WHERE id = ?", [*values.values(), feed.id])
    return blocked


def mark_backlog(db: Database, feed_id: int) -> None:
    """Remember the feed's first batch as backlog: digests start after it."""
    db.execute(
        "UPDATE feeds SET backlog_seq = (SELECT coalesce(max(id), 0) FROM entries) "
        "WHERE id = ? AND backlog_seq IS NULL",
        [feed_id],
    )


_INSERT_FETCH = (
    "INSERT INTO fetches (feed_id, at, url, status, bytes, duration_ms, outcome, error_kind, "
    "error, new, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _fetch_values(record: FetchRecord) -> list[Any]:
    return [
        record.feed_id,
        to_db(record.at),
        record.url,
        record.status,
        record.bytes,
        record.duration_ms,
        record.outcome,
        record.error_kind,
        record.error,
        record.new,
        record.updated,
    ]


def record_fetch(db: Database, record: FetchRecord) -> None:
    """Append one fetch to the feed's history (the fetches table; the metrics and the admin
    page read it), inside the caller's transaction."""
    db.execute(_INSERT_FETCH, _fetch_values(record))


def record_fetches(db: Database, records: Sequence[FetchRecord]) -> None:
    """Add many lines to the fetch log in one statement (inside the caller's transaction)."""
    if records:
        db.conn.executemany(_INSERT_FETCH, [_fetch_values(r) for r in records])


def recent_fetches(db: Database, feed_id: int, limit: int = 20) -> list[dict[str, Any]]:
    """The feed's last ``limit`` fetch records, newest first, as column -> value dicts."""
    return _rows(
        db,
        "SELECT * FROM fetches WHERE feed_id = ? ORDER BY at DESC, id DESC LIMIT ?",
        [feed_id, limit],
    )


def set_next_poll(db: Database, feed_id: int, moment: datetime) -> None:
    """Set when the feed is next due (a timezone-aware moment)."""
    db.execute("UPDATE feeds SET next_poll_at = ? WHERE id = ?", [to_db(moment), feed_id])
