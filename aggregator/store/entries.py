"""Entry rows: lookups that identity decisions need, and writing a poll's plan."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from ..models import EntryRecord, MediaItem, PollPlan, StoredEntry
from .chunks import chunks
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
    the story entries those are copies of (to compare publication dates)."""
    found = _matching(
        db, "feed_id != ?", feed_id, {"canonical_url": canonical_urls, "norm_title": norm_titles}
    )
    known = {entry.id for entry in found}
    roots = {e.duplicate_of for e in found if e.duplicate_of} - known
    for chunk in chunks(roots):
        cursor = db.execute(
            f"SELECT {_STORED_COLUMNS} FROM entries WHERE id IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        found.extend(_stored(row) for row in cursor.fetchall())
    return sorted(found, key=lambda entry: entry.id)


def _matching(
    db: Database, feed_clause: str, feed_id: int, wanted: dict[str, Iterable[str]]
) -> list[StoredEntry]:
    """Entries passing ``feed_clause`` whose column equals one of the wanted values."""
    found: dict[int, StoredEntry] = {}
    for column, values in wanted.items():
        for chunk in chunks(v for v in values if v):
            marks = ", ".join("?" * len(chunk))
            cursor = db.execute(
                f"SELECT {_STORED_COLUMNS} FROM entries "
                f"WHERE {feed_clause} AND {column} IN ({marks})",
                [feed_id, *chunk],
            )
            for row in cursor.fetchall():
                found[row[0]] = _stored(row)
    return sorted(found.values(), key=lambda entry: entry.id)


def _columns(record: EntryRecord) -> dict[str, Any]:
    return {
        "key": record.key,
        "alias": record.alias,
        "link_key": record.link_key,
        "guid": record.guid,
        "link": record.link,
        "canonical_url": record.canonical_url,
        "title": record.title,
        "norm_title": record.norm_title,
        "author": record.author,
        "summary_html": record.summary_html,
        "content_html": record.content_html,
        "text": record.text,
        "content_hash": record.content_hash,
        "published": to_db(record.published),
        "updated": to_db(record.updated),
        "date_missing": int(record.date_missing),
        "date_only": int(record.date_only),
    }


def apply_plan(db: Database, feed_id: int, plan: PollPlan, now: datetime) -> list[int]:
    """Write a plan inside the caller's transaction. Returns the new entry ids in order."""
    stamp = to_db(now)
    new_ids: list[int] = []
    for new in plan.inserts:
        values = _columns(new.record)
        values.update(
            feed_id=feed_id, first_seen=stamp, last_changed=stamp, duplicate_of=new.duplicate_of
        )
        names = ", ".join(values)
        marks = ", ".join("?" * len(values))
        cursor = db.execute(
            f"INSERT INTO entries ({names}) VALUES ({marks})", list(values.values())
        )
        assert cursor.lastrowid is not None
        new_ids.append(cursor.lastrowid)
    for new, new_id in zip(plan.inserts, new_ids, strict=True):
        if new.record.media:
            _insert_media(db, new_id, new.record.media)
        if new.supersedes is not None:
            # The earlier-published copy is the story: the old story and its copies
            # point at it now (DESIGN §5.2).
            db.execute(
                "UPDATE entries SET duplicate_of = ? WHERE id = ? OR duplicate_of = ?",
                [new_id, new.supersedes, new.supersedes],
            )
    for update in plan.updates:
        values = _columns(update.record)
        values["last_changed"] = stamp
        assignments = ", ".join(f"{name} = ?" for name in values)
        db.execute(
            f"UPDATE entries SET {assignments} WHERE id = ? AND feed_id = ?",
            [*values.values(), update.entry_id, feed_id],
        )
        db.execute("DELETE FROM enclosures WHERE entry_id = ?", [update.entry_id])
        if update.record.media:
            _insert_media(db, update.entry_id, update.record.media)
    return new_ids


def _insert_media(db: Database, entry_id: int, media: Sequence[MediaItem]) -> None:
    db.conn.executemany(
        "INSERT INTO enclosures (entry_id, position, role, url, mime_type, medium, length, "
        "duration, episode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (entry_id, position, item.role, item.url, item.mime_type, item.medium,
             item.length, item.duration, item.episode)
            for position, item in enumerate(media)
        ],
    )  # fmt: skip


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
