"""Digest rows: candidates for a subscriber, built digests, their sending state, the lease."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlite_utils import Database

from ..models import MediaItem
from ..selection import Candidate, DigestPlan, StoryMember, Subscriber
from .chunks import chunks
from .codec import from_db, from_db_required, to_db
from .entries import media_for

DigestStatus = Literal["pending", "sent", "failed", "cancelled"]


# --- what a subscriber has not seen yet -----------------------------------------------


def candidates(db: Database, subscriber: Subscriber, upto: int) -> list[Candidate]:
    """Entries after the watermark, up to ``upto``, past their feed's backlog, in the
    subscriber's sources.

    A subscriber whose watermark is 0 joined a fresh installation, before anything was
    stored: backlog entries are candidates for them (marked, so that the first digest
    keeps only the recently published ones). For everyone else a newly added feed's old
    posts stay on the timeline.
    """
    sql = (
        "SELECT e.id, e.feed_id, coalesce(e.duplicate_of, e.id), e.published, "
        "e.id <= coalesce(f.backlog_seq, 0) "
        "FROM entries e JOIN feeds f ON f.id = e.feed_id "
        "WHERE e.id > ? AND e.id <= ? AND (? = 0 OR e.id > coalesce(f.backlog_seq, 0))"
    )
    params: list[Any] = [subscriber.watermark, upto, subscriber.watermark]
    if subscriber.feed_ids is not None:
        if not subscriber.feed_ids:
            return []
        marks = ", ".join("?" * len(subscriber.feed_ids))
        sql += f" AND e.feed_id IN ({marks})"
        params.extend(sorted(subscriber.feed_ids))
    cursor = db.execute(sql + " ORDER BY e.id", params)
    return [
        Candidate(
            id=row[0],
            feed_id=row[1],
            story_id=row[2],
            published=from_db_required(row[3]),
            backlog=bool(row[4]),
        )
        for row in cursor.fetchall()
    ]


def story_members(db: Database, story_ids: Iterable[int]) -> dict[int, list[StoryMember]]:
    """Every copy of each story (the story's own entry included), by story id."""
    found: dict[int, list[StoryMember]] = {}
    for chunk in chunks(story_ids):
        marks = ", ".join("?" * len(chunk))
        cursor = db.execute(
            f"SELECT id, feed_id, coalesce(duplicate_of, id) FROM entries "
            f"WHERE id IN ({marks}) OR duplicate_of IN ({marks}) ORDER BY id",
            [*chunk, *chunk],
        )
        for entry_id, feed_id, story_id in cursor.fetchall():
            found.setdefault(story_id, []).append(StoryMember(id=entry_id, feed_id=feed_id))
    return found


# --- building -----------------------------------------------------------------------


def insert_digest(db: Database, subscriber_id: int, plan: DigestPlan, now: datetime) -> int:
    """Store a built digest as pending, due at ``now``, with its entries in reading order
    (section by section) and each section's count of stories left out; returns the digest
    id. Inside the caller's transaction.
    """
    stamp = to_db(now)
    more = {str(s.feed_id): s.more for s in plan.sections if s.more}
    cursor = db.execute(
        "INSERT INTO digests (subscriber_id, status, created_at, next_attempt_at, first_entry, "
        "last_entry, entry_count, more) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?)",
        [
            subscriber_id,
            stamp,
            stamp,
            plan.first_entry,
            plan.last_entry,
            plan.entry_count,
            json.dumps(more, sort_keys=True),
        ],
    )
    digest_id = cursor.lastrowid
    assert digest_id is not None
    rows = []
    position = 0
    for section in plan.sections:
        for item in section.items:
            also_on = ",".join(str(entry_id) for entry_id in item.also_on)
            rows.append((digest_id, position, item.entry_id, section.feed_id, also_on))
            position += 1
    db.conn.executemany(
        "INSERT INTO digest_entries (digest_id, position, entry_id, feed_id, also_on) "
        "VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    return digest_id


# --- reading a stored digest ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestRow:
    """A stored digest with its subscriber's address and status. ``first_entry`` to
    ``last_entry`` is the range of entry ids it covers (the subscriber's watermark moves
    to ``last_entry`` once sent); ``more`` is, per feed id, how many stories were left
    out of its section.
    """

    id: int
    subscriber_id: int
    email: str
    subscriber_status: str
    status: DigestStatus
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    message_id: str | None
    first_entry: int
    last_entry: int
    entry_count: int
    more: dict[int, int]


_DIGEST_COLUMNS = (
    "d.id, d.subscriber_id, s.email, s.status, d.status, d.created_at, d.sent_at, d.attempts, "
    "d.next_attempt_at, d.last_error, d.message_id, d.first_entry, d.last_entry, "
    "d.entry_count, d.more"
)


def _digest(row: Sequence[Any]) -> DigestRow:
    return DigestRow(
        id=row[0],
        subscriber_id=row[1],
        email=row[2],
        subscriber_status=row[3],
        status=row[4],
        created_at=from_db_required(row[5]),
        sent_at=from_db(row[6]),
        attempts=row[7],
        next_attempt_at=from_db_required(row[8]),
        last_error=row[9],
        message_id=row[10],
        first_entry=row[11],
        last_entry=row[12],
        entry_count=row[13],
        more={int(k): int(v) for k, v in json.loads(row[14] or "{}").items()},
    )


def get_digest(db: Database, digest_id: int) -> DigestRow | None:
    """The digest with this id, with its subscriber's address and status, or None."""
    row = db.execute(
        f"SELECT {_DIGEST_COLUMNS} FROM digests d JOIN subscribers s ON s.id = d.subscriber_id "
        "WHERE d.id = ?",
        [digest_id],
    ).fetchone()
    return _digest(row) if row else None


def due_batch(db: Database, now: datetime, *, after_id: int, limit: int) -> list[DigestRow]:
    """Pending digests whose next attempt has come, in id order, after ``after_id``."""
    cursor = db.execute(
        f"SELECT {_DIGEST_COLUMNS} FROM digests d JOIN subscribers s ON s.id = d.subscriber_id "
        "WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND d.id > ? "
        "ORDER BY d.id LIMIT ?",
        [to_db(now), after_id, limit],
    )
    return [_digest(row) for row in cursor.fetchall()]


def for_subscriber(db: Database, subscriber_id: int, *, limit: int = 50) -> list[DigestRow]:
    """The subscriber's last ``limit`` sent digests, newest first (their archive page)."""
    cursor = db.execute(
        f"SELECT {_DIGEST_COLUMNS} FROM digests d JOIN subscribers s ON s.id = d.subscriber_id "
        "WHERE d.subscriber_id = ? AND d.status = 'sent' ORDER BY d.id DESC LIMIT ?",
        [subscriber_id, limit],
    )
    return [_digest(row) for row in cursor.fetchall()]


def last_sent_times(db: Database) -> dict[int, datetime]:
    """When each subscriber was last sent a digest; absent: never."""
    cursor = db.execute(
        "SELECT subscriber_id, max(sent_at) FROM digests WHERE status = 'sent' "
        "AND sent_at IS NOT NULL GROUP BY subscriber_id"
    )
    return {row[0]: from_db_required(row[1]) for row in cursor.fetchall()}


@dataclass(frozen=True, slots=True)
class EntryView:
    """An entry as a digest shows it."""

    id: int
    feed_id: int
    feed_title: str
    feed_url: str
    site_url: str | None
    title: str
    link: str | None
    author: str | None
    published: datetime
    summary_html: str
    content_html: str
    media: tuple[MediaItem, ...] = ()


@dataclass(frozen=True, slots=True)
class DigestLine:
    """One story of a stored digest, in reading order: its entry, the section (feed) it is
    shown under, and the copies of it on other feeds.
    """

    entry: EntryView
    section_feed_id: int
    also_on: tuple[EntryView, ...]


_ENTRY_COLUMNS = (
    "e.id, e.feed_id, f.title, f.url, f.site_url, e.title, e.link, e.author, e.published, "
    "e.summary_html, e.content_html"
)


def _entry(row: Sequence[Any]) -> EntryView:
    return EntryView(
        id=row[0],
        feed_id=row[1],
        feed_title=row[2],
        feed_url=row[3],
        site_url=row[4],
        title=row[5],
        link=row[6],
        author=row[7],
        published=from_db_required(row[8]),
        summary_html=row[9],
        content_html=row[10],
    )


def entries_by_id(db: Database, ids: Iterable[int]) -> dict[int, EntryView]:
    """The entries with these ids, with their feed's title and their media, by id; ids that
    no longer exist are absent. Reads in chunks under SQLite's bound-parameter limit.
    """
    found: dict[int, EntryView] = {}
    for chunk in chunks(ids):
        marks = ", ".join("?" * len(chunk))
        cursor = db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries e JOIN feeds f ON f.id = e.feed_id "
            f"WHERE e.id IN ({marks})",
            chunk,
        )
        for row in cursor.fetchall():
            found[row[0]] = _entry(row)
    for entry_id, media in media_for(db, found).items():
        found[entry_id] = replace(found[entry_id], media=media)
    return found


Layout = tuple[tuple[int, int, str], ...]  # (entry id, section feed id, "also,on,ids")


def digest_layout(db: Database, digest_id: int) -> Layout:
    """The stored digest's rows in order: which entries, in which sections, with which
    copies. Digests with the same layout show the same stories."""
    rows = db.execute(
        "SELECT entry_id, feed_id, also_on FROM digest_entries WHERE digest_id = ? "
        "ORDER BY position",
        [digest_id],
    ).fetchall()
    return tuple((row[0], row[1], row[2]) for row in rows)


def layout_lines(db: Database, layout: Layout) -> list[DigestLine]:
    """The entries of a layout with their "also on" copies; an entry deleted since (its
    feed was removed) drops out."""
    also = {row[0]: tuple(int(part) for part in row[2].split(",") if part) for row in layout}
    views = entries_by_id(
        db, [row[0] for row in layout] + [i for ids in also.values() for i in ids]
    )
    lines = []
    for entry_id, feed_id, _ in layout:
        if entry_id in views:
            copies = tuple(views[i] for i in also[entry_id] if i in views)
            lines.append(DigestLine(entry=views[entry_id], section_feed_id=feed_id, also_on=copies))
    return lines


def digest_lines(db: Database, digest_id: int) -> list[DigestLine]:
    """The stored digest's entries in order, with their "also on" copies.

    An entry deleted since (its feed was removed) drops out of the digest.
    """
    return layout_lines(db, digest_layout(db, digest_id))


def feed_titles(db: Database, feed_ids: Iterable[int]) -> dict[int, tuple[str, str, str | None]]:
    """Feed id -> (title, url, site url)."""
    ids = sorted(set(feed_ids))
    if not ids:
        return {}
    marks = ", ".join("?" * len(ids))
    cursor = db.execute(f"SELECT id, title, url, site_url FROM feeds WHERE id IN ({marks})", ids)
    return {row[0]: (row[1], row[2], row[3]) for row in cursor.fetchall()}


# --- sending state ------------------------------------------------------------------


def still_pending(db: Database, digest_id: int) -> bool:
    """Whether the digest is still to be sent (not cancelled by an unsubscribe, not sent
    by another run) and its subscriber still confirmed."""
    row = db.execute(
        "SELECT 1 FROM digests d JOIN subscribers s ON s.id = d.subscriber_id "
        "WHERE d.id = ? AND d.status = 'pending' AND s.status = 'confirmed'",
        [digest_id],
    ).fetchone()
    return row is not None


def mark_sent(db: Database, digest_id: int, message_id: str, now: datetime) -> bool:
    """Sent; False when it was no longer pending (another run got there first)."""
    cursor = db.execute(
        "UPDATE digests SET status = 'sent', sent_at = ?, message_id = ?, "
        "attempts = attempts + 1, last_error = NULL WHERE id = ? AND status = 'pending'",
        [to_db(now), message_id, digest_id],
    )
    return cursor.rowcount == 1


def mark_retry(db: Database, digest_id: int, error: str, next_attempt_at: datetime) -> None:
    """Count a failed attempt of a pending digest and set its next one (``error``: one
    line); a digest no longer pending is left alone.
    """
    db.execute(
        "UPDATE digests SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
        "WHERE id = ? AND status = 'pending'",
        [error, to_db(next_attempt_at), digest_id],
    )


def mark_failed(db: Database, digest_id: int, error: str) -> None:
    """Give up on a pending digest: failed, with ``error`` (one line) kept for the status
    command.
    """
    db.execute(
        "UPDATE digests SET status = 'failed', attempts = attempts + 1, last_error = ? "
        "WHERE id = ? AND status = 'pending'",
        [error, digest_id],
    )


def close_pending(db: Database, subscriber_id: int, status: DigestStatus, reason: str) -> int:
    """End every pending digest of a subscriber (unsubscribed, bounced)."""
    cursor = db.execute(
        "UPDATE digests SET status = ?, last_error = ? "
        "WHERE subscriber_id = ? AND status = 'pending'",
        [status, reason, subscriber_id],
    )
    return cursor.rowcount


def count_by_status(db: Database) -> dict[str, int]:
    """Digests per status: {'sent': 10, 'pending': 1, ...}; statuses with none are absent."""
    cursor = db.execute("SELECT status, count(*) FROM digests GROUP BY status")
    return {row[0]: row[1] for row in cursor.fetchall()}


# --- the sending lease: one sending run at a time ------------------------------------


def take_lease(db: Database, name: str, owner: str, now: datetime, until: datetime) -> bool:
    """Hold ``name`` until ``until`` unless someone else holds it unexpired."""
    cursor = db.execute(
        "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
        "expires_at = excluded.expires_at "
        "WHERE leases.owner = excluded.owner OR leases.expires_at <= ?",
        [name, owner, to_db(until), to_db(now)],
    )
    return cursor.rowcount == 1


def release_lease(db: Database, name: str, owner: str) -> None:
    """Let go of ``name`` if ``owner`` still holds it."""
    db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", [name, owner])


def lease_owner(db: Database, name: str) -> str | None:
    """Who holds ``name`` (expired or not), or None."""
    row = db.execute("SELECT owner FROM leases WHERE name = ?", [name]).fetchone()
    return str(row[0]) if row else None


def hand_over_lease(db: Database, name: str, owner: str, until: datetime) -> None:
    """Give ``name`` to ``owner`` whoever holds it (its holder is known to be dead)."""
    db.execute(
        "UPDATE leases SET owner = ?, expires_at = ? WHERE name = ?", [owner, to_db(until), name]
    )


def count_due(db: Database, now: datetime) -> int:
    """Pending digests whose next attempt is due at ``now``."""
    row = db.execute(
        "SELECT count(*) FROM digests WHERE status = 'pending' AND next_attempt_at <= ?",
        [to_db(now)],
    ).fetchone()
    return int(row[0])


# --- what the public pages and the welcome mail show ----------------------------------


def latest_stories(
    db: Database,
    feed_ids: Iterable[int] | None,
    limit: int,
    *,
    upto: int | None = None,
    backlog_before: datetime | None = None,
    not_mailed_to: int | None = None,
) -> list[EntryView]:
    """The most recently published stories (first copies only) of the given feeds, at
    most ``limit``. With ``upto`` (an entry id), only entries up to it, and with
    ``backlog_before`` also the entries of a feed's first poll (its backlog) published
    before that time: what no digest carries to a subscriber with that watermark (see
    ``candidates`` and ``selection.first_digest_since``). With ``not_mailed_to`` (a
    subscriber id), none that a digest of theirs, sent or pending, already carries."""
    sql = (
        f"SELECT {_ENTRY_COLUMNS} FROM entries e JOIN feeds f ON f.id = e.feed_id "
        "WHERE e.duplicate_of IS NULL AND f.enabled = 1"
    )
    params: list[Any] = []
    if not_mailed_to is not None:
        sql += (
            " AND e.id NOT IN (SELECT coalesce(x.duplicate_of, x.id) FROM digests d "
            "JOIN digest_entries de ON de.digest_id = d.id JOIN entries x ON x.id = de.entry_id "
            "WHERE d.subscriber_id = ? AND d.status IN ('sent', 'pending'))"
        )
        params.append(not_mailed_to)
    if upto is not None and backlog_before is None:
        sql += " AND e.id <= ?"
        params.append(upto)
    elif upto is not None:
        sql += " AND (e.id <= ? OR (e.id <= coalesce(f.backlog_seq, 0) AND e.published < ?))"
        params += [upto, to_db(backlog_before)]
    if feed_ids is not None:
        ids = sorted(set(feed_ids))
        if not ids:
            return []
        sql += f" AND e.feed_id IN ({', '.join('?' * len(ids))})"
        params.extend(ids)
    cursor = db.execute(sql + " ORDER BY e.published DESC, e.id DESC LIMIT ?", [*params, limit])
    return [_entry(row) for row in cursor.fetchall()]


def sent_times(db: Database, since: datetime, limit: int = 500) -> list[datetime]:
    """When digests were sent since ``since`` (to the hour, newest first): the editions."""
    cursor = db.execute(
        "SELECT DISTINCT substr(created_at, 1, 13) FROM digests "
        "WHERE status = 'sent' AND created_at >= ? ORDER BY 1 DESC LIMIT ?",
        [to_db(since), limit],
    )
    return [from_db_required(row[0] + ":00:00.000000Z") for row in cursor.fetchall()]


def sent_entry_ids(db: Database, since: datetime, until: datetime, limit: int = 200) -> list[int]:
    """The entries that went out in any digest built in [since, until)."""
    cursor = db.execute(
        "SELECT DISTINCT de.entry_id FROM digests d "
        "JOIN digest_entries de ON de.digest_id = d.id "
        "WHERE d.status = 'sent' AND d.created_at >= ? AND d.created_at < ? "
        "ORDER BY de.entry_id DESC LIMIT ?",
        [to_db(since), to_db(until), limit],
    )
    return [row[0] for row in cursor.fetchall()]
