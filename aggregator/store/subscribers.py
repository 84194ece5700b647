"""Subscriber rows, their chosen sources, sign-up rate limits and used tokens."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Literal

from sqlite_utils import Database

from ..selection import Cadence, Subscriber, SubscriberStatus
from .codec import from_db, from_db_required, to_db

_COLUMNS = (
    "id, email, status, cadence, all_feeds, watermark, created_at, confirmed_at, "
    "last_digest_at, last_confirmation_at"
)


def _feed_ids(db: Database, subscriber_id: int) -> frozenset[int]:
    cursor = db.execute(
        "SELECT feed_id FROM subscriber_feeds WHERE subscriber_id = ?", [subscriber_id]
    )
    return frozenset(row[0] for row in cursor.fetchall())


def _subscriber(db: Database, row: Any) -> Subscriber:
    return Subscriber(
        id=row[0],
        email=row[1],
        status=row[2],
        cadence=row[3],
        feed_ids=None if row[4] else _feed_ids(db, row[0]),
        watermark=row[5],
        created_at=from_db_required(row[6]),
        confirmed_at=from_db(row[7]),
        last_digest_at=from_db(row[8]),
        last_confirmation_at=from_db(row[9]),
    )


def get(db: Database, subscriber_id: int) -> Subscriber | None:
    """The subscriber with this id (with their chosen feed ids), or None."""
    row = db.execute(f"SELECT {_COLUMNS} FROM subscribers WHERE id = ?", [subscriber_id]).fetchone()
    return _subscriber(db, row) if row else None


def by_key(db: Database, email_key: str) -> Subscriber | None:
    """The subscriber whose identity key (``subscriptions.normalise_email``: the address
    case-folded) is ``email_key``, or None.
    """
    row = db.execute(
        f"SELECT {_COLUMNS} FROM subscribers WHERE email_key = ?", [email_key]
    ).fetchone()
    return _subscriber(db, row) if row else None


def list_all(db: Database, status: SubscriberStatus | None = None) -> list[Subscriber]:
    """Every subscriber, or those in one ``status``, by id."""
    if status is None:
        cursor = db.execute(f"SELECT {_COLUMNS} FROM subscribers ORDER BY id")
    else:
        cursor = db.execute(
            f"SELECT {_COLUMNS} FROM subscribers WHERE status = ? ORDER BY id", [status]
        )
    return [_subscriber(db, row) for row in cursor.fetchall()]


def confirmed_ids(db: Database) -> list[int]:
    """Ids of the confirmed subscribers, ascending."""
    cursor = db.execute("SELECT id FROM subscribers WHERE status = 'confirmed' ORDER BY id")
    return [row[0] for row in cursor.fetchall()]


def iter_confirmed(db: Database, batch: int = 500) -> Iterator[Subscriber]:
    """Confirmed subscribers in id order, read a batch at a time (memory stays flat)."""
    after = 0
    while True:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM subscribers WHERE status = 'confirmed' AND id > ? "
            "ORDER BY id LIMIT ?",
            [after, batch],
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield _subscriber(db, row)
        after = rows[-1][0]


def insert(
    db: Database,
    *,
    email: str,
    email_key: str,
    status: SubscriberStatus,
    cadence: Cadence,
    feed_ids: frozenset[int] | None,
    now: datetime,
    watermark: int = 0,
) -> int:
    """Add a subscriber with their chosen feeds (None: every feed, now and later); returns
    the new id. ``confirmed_at`` is set when ``status`` is confirmed. The email key must
    be new (UNIQUE).
    """
    stamp = to_db(now)
    cursor = db.execute(
        "INSERT INTO subscribers (email, email_key, status, cadence, all_feeds, watermark, "
        "created_at, confirmed_at, status_changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            email,
            email_key,
            status,
            cadence,
            int(feed_ids is None),
            watermark,
            stamp,
            stamp if status == "confirmed" else None,
            stamp,
        ],
    )
    assert cursor.lastrowid is not None
    set_feeds(db, cursor.lastrowid, feed_ids)
    return cursor.lastrowid


def set_feeds(db: Database, subscriber_id: int, feed_ids: frozenset[int] | None) -> None:
    """Replace the subscriber's chosen feeds; None means every feed. Ids of feeds that no
    longer exist are dropped.
    """
    db.execute("DELETE FROM subscriber_feeds WHERE subscriber_id = ?", [subscriber_id])
    db.execute(
        "UPDATE subscribers SET all_feeds = ? WHERE id = ?", [int(feed_ids is None), subscriber_id]
    )
    if feed_ids:
        db.conn.executemany(
            "INSERT INTO subscriber_feeds (subscriber_id, feed_id) "
            "SELECT ?, id FROM feeds WHERE id = ?",
            [(subscriber_id, feed_id) for feed_id in sorted(feed_ids)],
        )


def set_preferences(
    db: Database, subscriber_id: int, *, cadence: Cadence, feed_ids: frozenset[int] | None
) -> None:
    """Set the cadence and the chosen feeds together (see ``set_feeds``)."""
    db.execute("UPDATE subscribers SET cadence = ? WHERE id = ?", [cadence, subscriber_id])
    set_feeds(db, subscriber_id, feed_ids)


def set_cadence(db: Database, subscriber_id: int, cadence: Cadence) -> None:
    """Set the cadence (daily or weekly) alone."""
    db.execute("UPDATE subscribers SET cadence = ? WHERE id = ?", [cadence, subscriber_id])


def set_status(
    db: Database,
    subscriber_id: int,
    status: SubscriberStatus,
    now: datetime,
    *,
    reason: str | None = None,
) -> None:
    """Move the subscriber to ``status`` at ``now``, keeping ``reason`` (a bounce or
    refusal, one line) or clearing it.
    """
    db.execute(
        "UPDATE subscribers SET status = ?, status_changed_at = ?, bounce_reason = ? WHERE id = ?",
        [status, to_db(now), reason, subscriber_id],
    )


def confirm(db: Database, subscriber_id: int, now: datetime, watermark: int) -> None:
    """Confirmed from now on; digests start after entry ``watermark``."""
    stamp = to_db(now)
    db.execute(
        "UPDATE subscribers SET status = 'confirmed', confirmed_at = ?, status_changed_at = ?, "
        "watermark = max(watermark, ?), last_digest_at = ?, bounce_reason = NULL WHERE id = ?",
        [stamp, stamp, watermark, stamp, subscriber_id],
    )


def mark_confirmation_sent(db: Database, subscriber_id: int, now: datetime) -> None:
    """Remember when the last confirmation mail went out (one per address per window,
    THREATS S6).
    """
    db.execute(
        "UPDATE subscribers SET last_confirmation_at = ? WHERE id = ?",
        [to_db(now), subscriber_id],
    )


def advance(db: Database, subscriber_id: int, watermark: int, now: datetime) -> None:
    """Record a digest run for the subscriber: watermark and time only ever move forward."""
    db.execute(
        "UPDATE subscribers SET watermark = max(watermark, ?), last_digest_at = ? WHERE id = ?",
        [watermark, to_db(now), subscriber_id],
    )


def raise_watermark(db: Database, subscriber_id: int, watermark: int) -> None:
    """Move the watermark forward only (entries up to it held nothing for them)."""
    db.execute(
        "UPDATE subscribers SET watermark = max(watermark, ?) WHERE id = ?",
        [watermark, subscriber_id],
    )


def delete(db: Database, subscriber_id: int) -> bool:
    """Forget the subscriber with their chosen feeds and digests (ON DELETE CASCADE); False
    when no such id.
    """
    return db.execute("DELETE FROM subscribers WHERE id = ?", [subscriber_id]).rowcount > 0


def expire_pending(db: Database, older_than: datetime) -> int:
    """Forget pending addresses that were never confirmed. Returns how many went."""
    cursor = db.execute(
        "DELETE FROM subscribers WHERE status = 'pending' AND status_changed_at < ?",
        [to_db(older_than)],
    )
    return cursor.rowcount


def counts(db: Database) -> dict[str, int]:
    """Subscribers per status: {'confirmed': 3, 'pending': 1, ...}; statuses with none are
    absent.
    """
    cursor = db.execute("SELECT status, count(*) FROM subscribers GROUP BY status")
    return {row[0]: row[1] for row in cursor.fetchall()}


# --- rate limits --------------------------------------------------------------------


def count_attempts(db: Database, key: str, since: datetime) -> int:
    """How many sign-up attempts were recorded under ``key`` (a client or address hash)
    since ``since``.
    """
    row = db.execute(
        "SELECT count(*) FROM signup_attempts WHERE key = ? AND at >= ?", [key, to_db(since)]
    ).fetchone()
    return int(row[0])


def record_attempts(db: Database, keys: Iterable[str], now: datetime) -> None:
    """Record one sign-up attempt at ``now`` under each key."""
    stamp = to_db(now)
    db.conn.executemany(
        "INSERT INTO signup_attempts (key, at) VALUES (?, ?)", [(key, stamp) for key in keys]
    )


def prune_attempts(db: Database, before: datetime) -> None:
    """Forget attempts older than ``before`` (outside every rate-limit window)."""
    db.execute("DELETE FROM signup_attempts WHERE at < ?", [to_db(before)])


# --- single-use tokens --------------------------------------------------------------


def use_token(db: Database, token_hash: str, now: datetime) -> bool:
    """Record a token as used; False when it was used before."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO used_tokens (token_hash, used_at) VALUES (?, ?)",
        [token_hash, to_db(now)],
    )
    return cursor.rowcount == 1


def prune_tokens(db: Database, before: datetime) -> None:
    """Forget used-token records older than ``before`` (those tokens have expired anyway)."""
    db.execute("DELETE FROM used_tokens WHERE used_at < ?", [to_db(before)])


def high_water(db: Database) -> int:
    """The highest entry id stored so far (0 for none)."""
    row = db.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()
    return int(row[0])


def mark_welcome_due(db: Database, subscriber_id: int) -> None:
    """Flag the subscriber for a welcome mail; ``claim_welcomes`` takes the flag."""
    db.execute("UPDATE subscribers SET welcome_due = 1 WHERE id = ?", [subscriber_id])


def claim_welcomes(
    db: Database, subscriber_ids: Iterable[int] | None, limit: int = 100
) -> list[int]:
    """Take the welcome mails owed (to the given subscribers, or anyone): each is claimed
    once, so two processes never both send it."""
    sql = "UPDATE subscribers SET welcome_due = 0 WHERE welcome_due = 1 AND status = 'confirmed'"
    params: list[Any] = []
    if subscriber_ids is not None:
        ids = sorted(set(subscriber_ids))
        if not ids:
            return []
        sql += f" AND id IN ({', '.join('?' * len(ids))})"
        params.extend(ids)
    sql += f" AND id IN (SELECT id FROM subscribers WHERE welcome_due = 1 LIMIT {int(limit)})"
    return sorted(row[0] for row in db.execute(sql + " RETURNING id", params).fetchall())


# --- addresses added by the configuration file ----------------------------------------


def was_seeded(db: Database, email_key: str) -> bool:
    """Whether the configuration file has ever added this address (``seeded_addresses``)."""
    row = db.execute("SELECT 1 FROM seeded_addresses WHERE email_key = ?", [email_key]).fetchone()
    return row is not None


def remember_seeded(db: Database, email_key: str, now: datetime) -> bool:
    """Remember that the configuration file added this address; False when it already
    had (the first time is kept)."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO seeded_addresses (email_key, seeded_at) VALUES (?, ?)",
        [email_key, to_db(now)],
    )
    return cursor.rowcount == 1


# --- confirmation and welcome mails owed ----------------------------------------------

MailKind = Literal["confirm", "welcome"]
"""What a mail owed is: the double opt-in link, or the welcome of a confirmed address."""


def owe_mail(
    db: Database, subscriber_id: int, kind: MailKind, *, attempts: int, retry_at: datetime
) -> None:
    """Record that ``kind`` is owed to the subscriber, with ``attempts`` made (the one
    about to be made included) and the next due at ``retry_at`` unless it is delivered
    first. Replaces an earlier row of the same kind (a fresh sign-up starts afresh)."""
    db.execute(
        "INSERT INTO mail_owed (subscriber_id, kind, attempts, next_attempt_at, last_error) "
        "VALUES (?, ?, ?, ?, NULL) ON CONFLICT (subscriber_id, kind) DO UPDATE SET "
        "attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at, "
        "last_error = NULL",
        [subscriber_id, kind, attempts, to_db(retry_at)],
    )


def mail_delivered(db: Database, subscriber_id: int, kind: MailKind) -> None:
    """The mail owed went out: forget it."""
    db.execute("DELETE FROM mail_owed WHERE subscriber_id = ? AND kind = ?", [subscriber_id, kind])


def mail_failed(
    db: Database,
    subscriber_id: int,
    kind: MailKind,
    error: str,
    *,
    permanent: bool,
    max_attempts: int,
) -> bool:
    """An attempt failed with ``error`` (one line). It stays due at the time set when it
    was taken, unless the refusal was ``permanent`` or ``max_attempts`` are spent: then
    it is given up (``next_attempt_at`` NULL, the row kept for the listing). True when
    given up."""
    row = db.execute(
        "UPDATE mail_owed SET last_error = ?, next_attempt_at = CASE WHEN ? OR attempts >= ? "
        "THEN NULL ELSE next_attempt_at END WHERE subscriber_id = ? AND kind = ? "
        "RETURNING next_attempt_at IS NULL",
        [error, int(permanent), int(max_attempts), subscriber_id, kind],
    ).fetchone()
    return bool(row and row[0])


def retry_later(
    db: Database, subscriber_id: int, kind: MailKind, *, attempts: int, retry_at: datetime
) -> None:
    """Take a mail owed for another attempt: ``attempts`` made counting this one, and the
    next at ``retry_at`` should this one not get through (nor report back)."""
    db.execute(
        "UPDATE mail_owed SET attempts = ?, next_attempt_at = ? "
        "WHERE subscriber_id = ? AND kind = ?",
        [attempts, to_db(retry_at), subscriber_id, kind],
    )


def due_mail(db: Database, now: datetime, limit: int = 100) -> list[tuple[int, MailKind, int]]:
    """(subscriber id, kind, attempts made) of the mails owed whose retry time has come,
    oldest due first."""
    cursor = db.execute(
        "SELECT subscriber_id, kind, attempts FROM mail_owed "
        "WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ? "
        "ORDER BY next_attempt_at, subscriber_id LIMIT ?",
        [to_db(now), int(limit)],
    )
    return [(row[0], row[1], row[2]) for row in cursor.fetchall()]


def owed_mail(db: Database) -> dict[int, list[tuple[MailKind, int, datetime | None, str | None]]]:
    """Every mail owed, by subscriber id: (kind, attempts made, next attempt or None when
    given up, last error)."""
    owed: dict[int, list[tuple[MailKind, int, datetime | None, str | None]]] = {}
    cursor = db.execute(
        "SELECT subscriber_id, kind, attempts, next_attempt_at, last_error FROM mail_owed "
        "ORDER BY subscriber_id, kind"
    )
    for row in cursor.fetchall():
        owed.setdefault(row[0], []).append((row[1], row[2], from_db(row[3]), row[4]))
    return owed
