"""Entry rows: lookups that identity decisions need, and writing a poll's plan."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from ..models import EntryRecord, MediaItem, PollPlan, StoredEntry
from .chunks import CHUNK, chunks
from .codec import from_db_required, to_db

_STORED_COLUMNS = (
    "id, feed_id, key, alias, link_key, canonical_url, norm_title, content_hash, text, "
    "published, first_seen, duplicate_of"
)


def _stored(row: Sequence[Any]) -> StoredEntry:
    return StoredEntry(
        id=row[0],
        feed_id=row[1],
        key=row[2],
        alias=row[3],
        link_key=row[4],
        canonical_url=row[5],
        norm_title=row[6],
        content_hash=row[7],
        text=row[8],
        published=from_db_required(row[9]),
        first_seen=from_db_required(row[10]),
        duplicate_of=row[11],
    )


def existing_for(
    db: Database,
    feed_id: int,
    keys: Iterable[str],
    link_keys: Iterable[str],
    aliases: Iterable[str] = (),
) -> list[StoredEntry]:
    """Entries of this feed that share a key, an alias or a link key with the records."""
    return _matching(
        db, "feed_id = ?", feed_id, {"key": keys, "alias": aliases, "link_key": link_keys}
    )


def cross_candidates(
    db: Database, feed_id: int, canonical_urls: Iterable[str], norm_titles: Iterable[str]
) -> list[StoredEntry]:
    """Entries of other feeds that may be the same story (same URL or same title), and
    the story entries those are copies of (to compare publication dates); by id.

    - A candidate's ``canonical_url`` is None when some feed (this one included) gives
      that URL to several of its entries: a home page or show page names no post, so
      it is no evidence of a cross-post (``dedup.plan_entries``).
    - Stories that already hold an entry of this feed, as story or copy, are left out
      with all their entries: a story has at most one entry of each feed.
    """
    urls = {url for url in canonical_urls if url}
    found = _matching(
        db, "feed_id != ?", feed_id, {"canonical_url": urls, "norm_title": norm_titles}
    )
    known = {entry.id for entry in found}
    roots = {e.duplicate_of for e in found if e.duplicate_of} - known
    for chunk in chunks(roots):
        cursor = db.execute(
            f"SELECT {_STORED_COLUMNS} FROM entries WHERE id IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        found.extend(_stored(row) for row in cursor.fetchall())
    stories = {e.duplicate_of if e.duplicate_of is not None else e.id for e in found}
    taken = _stories_holding(db, feed_id, stories)
    shared = _shared_urls(db, urls | {e.canonical_url for e in found if e.canonical_url})
    kept = [
        replace(entry, canonical_url=None) if entry.canonical_url in shared else entry
        for entry in found
        if (entry.duplicate_of if entry.duplicate_of is not None else entry.id) not in taken
    ]
    return sorted(kept, key=lambda entry: entry.id)


def _stories_holding(db: Database, feed_id: int, stories: Iterable[int]) -> set[int]:
    """Those of ``stories`` (root entry ids) that hold an entry of ``feed_id``."""
    taken: set[int] = set()
    for chunk in chunks(stories):
        marks = ", ".join("?" * len(chunk))
        cursor = db.execute(
            "SELECT coalesce(duplicate_of, id) FROM entries WHERE feed_id = ? "
            f"AND (id IN ({marks}) OR duplicate_of IN ({marks}))",
            [feed_id, *chunk, *chunk],
        )
        taken.update(row[0] for row in cursor.fetchall())
    return taken


def _shared_urls(db: Database, urls: Iterable[str]) -> set[str]:
    """Those of ``urls`` that one feed gives to several of its entries."""
    shared: set[str] = set()
    for chunk in chunks(urls):
        cursor = db.execute(
            "SELECT DISTINCT canonical_url FROM entries "
            f"WHERE canonical_url IN ({', '.join('?' * len(chunk))}) "
            "GROUP BY feed_id, canonical_url HAVING count(*) > 1",
            chunk,
        )
        shared.update(row[0] for row in cursor.fetchall())
    return shared


def _matching(
    db: Database, feed_clause: str, feed_id: int, wanted: dict[str, Iterable[str]]
) -> list[StoredEntry]:
    """Entries passing ``feed_clause`` whose column equals one of the wanted values.

    One statement for all the columns (a ``UNION ALL`` of one indexed lookup per column
    and chunk of values), as long as the parameter limit allows: a poll asks this for
    every feed, and statements cost more than the lookups themselves."""
    limit = db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    found: dict[int, StoredEntry] = {}
    parts: list[str] = []
    params: list[Any] = []

    def flush() -> None:
        if parts:
            for row in db.execute(" UNION ALL ".join(parts), params).fetchall():
                found[row[0]] = _stored(row)
            parts.clear()
            params.clear()

    for column, values in wanted.items():
        for chunk in chunks(v for v in values if v):
            if parts and len(params) + len(chunk) + 1 > limit:
                flush()
            parts.append(
                f"SELECT {_STORED_COLUMNS} FROM entries "
                f"WHERE {feed_clause} AND {column} IN ({', '.join('?' * len(chunk))})"
            )
            params.extend([feed_id, *chunk])
    flush()
    return sorted(found.values(), key=lambda entry: entry.id)


# The columns a record fills, in the order ``_values`` gives them.
_RECORD_COLUMNS = (
    "key", "alias", "link_key", "guid", "link", "canonical_url", "title", "norm_title",
    "author", "summary_html", "content_html", "text", "content_hash", "published", "updated",
    "date_missing", "date_only",
)  # fmt: skip
_INSERT_COLUMNS = (*_RECORD_COLUMNS, "feed_id", "first_seen", "last_changed", "duplicate_of")
_UPDATE_SQL = (
    "UPDATE entries SET "
    + ", ".join(f"{name} = ?" for name in (*_RECORD_COLUMNS, "last_changed"))
    + " WHERE id = ? AND feed_id = ?"
)


def _values(record: EntryRecord) -> tuple[Any, ...]:
    return (
        record.key,
        record.alias,
        record.link_key,
        record.guid,
        record.link,
        record.canonical_url,
        record.title,
        record.norm_title,
        record.author,
        record.summary_html,
        record.content_html,
        record.text,
        record.content_hash,
        to_db(record.published),
        to_db(record.updated),
        int(record.date_missing),
        int(record.date_only),
    )


def _insert_rows(db: Database, rows: Sequence[tuple[Any, ...]]) -> dict[str, int]:
    """Insert entry rows (``_INSERT_COLUMNS`` each), as few statements as the parameter
    limit allows; returns key -> new id (keys are unique within a feed).

    One statement for many rows rather than one per row: the full-text index's insert
    trigger then runs inside one statement, and FTS5 writes its pending terms once per
    statement instead of once per row (it flushes at every statement savepoint), which
    halves the cost of indexing a poll's entries.
    """
    width = len(_INSERT_COLUMNS)
    limit = db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per_statement = max(1, min(CHUNK, limit // width))
    row_marks = "(" + ", ".join("?" * width) + ")"
    head = f"INSERT INTO entries ({', '.join(_INSERT_COLUMNS)}) VALUES "
    ids: dict[str, int] = {}
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        cursor = db.execute(
            head + ", ".join([row_marks] * len(chunk)) + " RETURNING id, key",
            [value for row in chunk for value in row],
        )
        ids.update((key, entry_id) for entry_id, key in cursor.fetchall())
    return ids


def apply_plan(db: Database, feed_id: int, plan: PollPlan, now: datetime) -> list[int]:
    """Write a plan inside the caller's transaction. Returns the new entry ids in order."""
    stamp = to_db(now)
    ids = _insert_rows(
        db,
        [(*_values(new.record), feed_id, stamp, stamp, new.duplicate_of) for new in plan.inserts],
    )
    new_ids = [ids[new.record.key] for new in plan.inserts]
    _insert_media(
        db,
        [(new_id, new.record.media) for new, new_id in zip(plan.inserts, new_ids, strict=True)],
    )
    for new, new_id in zip(plan.inserts, new_ids, strict=True):
        if new.supersedes is not None:
            # The earlier-published copy is the story: the old story and its copies
            # point at it now (DESIGN §5.2).
            db.execute(
                "UPDATE entries SET duplicate_of = ? WHERE id = ? OR duplicate_of = ?",
                [new_id, new.supersedes, new.supersedes],
            )
    if plan.updates:
        db.conn.executemany(
            _UPDATE_SQL,
            [(*_values(u.record), stamp, u.entry_id, feed_id) for u in plan.updates],
        )
        db.conn.executemany(
            "DELETE FROM enclosures WHERE entry_id = ?", [(u.entry_id,) for u in plan.updates]
        )
        _insert_media(db, [(u.entry_id, u.record.media) for u in plan.updates])
    return new_ids


def _insert_media(db: Database, entries: Iterable[tuple[int, Sequence[MediaItem]]]) -> None:
    """The media of each (entry id, media) pair, in the feed's order; one statement."""
    rows = [
        (entry_id, position, item.role, item.url, item.mime_type, item.medium,
         item.length, item.duration, item.episode)
        for entry_id, media in entries
        for position, item in enumerate(media)
    ]  # fmt: skip
    if rows:
        db.conn.executemany(
            "INSERT INTO enclosures (entry_id, position, role, url, mime_type, medium, "
            "length, duration, episode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def media_for(db: Database, entry_ids: Iterable[int]) -> dict[int, tuple[MediaItem, ...]]:
    """The stored media of these entries, in the feed's order; entries without media
    are absent from the answer."""
    found: dict[int, list[MediaItem]] = {}
    for chunk in chunks(entry_ids):
        cursor = db.execute(
            "SELECT entry_id, role, url, mime_type, medium, length, duration, episode "
            f"FROM enclosures WHERE entry_id IN ({', '.join('?' * len(chunk))}) "
            "ORDER BY entry_id, position",
            chunk,
        )
        for entry_id, role, url, mime, medium, length, duration, episode in cursor.fetchall():
            found.setdefault(entry_id, []).append(
                MediaItem(url, role, mime, medium, length, duration, episode)
            )
    return {entry_id: tuple(items) for entry_id, items in found.items()}


def count_entries(db: Database, feed_id: int | None = None) -> int:
    """How many entries are stored, in one feed or (None) in all, copies included."""
    if feed_id is None:
        row = db.execute("SELECT count(*) FROM entries").fetchone()
    else:
        row = db.execute("SELECT count(*) FROM entries WHERE feed_id = ?", [feed_id]).fetchone()
    return int(row[0])
