"""Unsubscribes that came while another process held the database's write lock.

An RFC 8058 one-click unsubscribe is one POST that a mail provider sends once: answering
it 503 because a long write of another process (a sqlite3 shell in a transaction, a
migration, a stuck job) held the lock past the busy wait would lose it. Such an
unsubscribe is kept in a spool beside the database instead: a small SQLite file of its
own (``<database>-unsubscribes``, with its own lock, so that it can be written while the
database cannot), committed before the request is answered. Every write transaction of
the ``Store`` first applies what the spool holds, in the same transaction (so that no
digest is built or sent past it), and empties the spool once that has committed.

Applying twice changes nothing: an unsubscribe is not applied to a subscriber whose
status changed after it was asked for (one who subscribed again since). Spool ids are
never reused (AUTOINCREMENT), so emptying the spool up to the last id a process applied
never takes an unsubscribe that came after it.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from ..errors import StoreError
from .codec import from_db_required, to_db

SPOOL_SUFFIX = "-unsubscribes"
"""The spool's file name: the database's with this appended."""

WAIT_SECONDS = 5.0
"""How long a write to the spool waits for another writer of the spool (a few ms each)."""

_TABLE = (
    "CREATE TABLE IF NOT EXISTS unsubscribes "
    "(id INTEGER PRIMARY KEY AUTOINCREMENT, subscriber_id INTEGER NOT NULL, "
    "requested_at TEXT NOT NULL)"
)


def spool_path(database: Path) -> Path:
    """The spool of the database at ``database``."""
    return Path(f"{database}{SPOOL_SUFFIX}")


def record(database: Path, subscriber_id: int, requested_at: datetime) -> None:
    """Keep the unsubscribe of ``subscriber_id`` asked for at ``requested_at`` until the
    database's next write; durable when this returns (SQLite's default full sync of a
    rollback journal). Raises ``StoreError`` when the spool cannot be written either."""
    try:
        conn = sqlite3.connect(spool_path(database), timeout=WAIT_SECONDS)
        with closing(conn), conn:
            conn.execute(_TABLE)
            conn.execute(
                "INSERT INTO unsubscribes (subscriber_id, requested_at) VALUES (?, ?)",
                [subscriber_id, to_db(requested_at)],
            )
    except sqlite3.Error as error:
        raise StoreError(
            f"cannot keep an unsubscribe for later: {error}", path=str(spool_path(database))
        ) from None


def _read(database: Path, sql: str, params: list[Any]) -> list[Any]:
    """The rows ``sql`` selects from the spool; none without a spool, or from one that
    cannot be read (its unsubscribes wait for a later read)."""
    path = spool_path(database)
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(path, timeout=WAIT_SECONDS)) as conn:
            conn.execute(_TABLE)
            return conn.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []


def waiting(database: Path) -> int:
    """How many unsubscribes the spool holds."""
    return len(_read(database, "SELECT id FROM unsubscribes", []))


def holds(database: Path, subscriber_id: int) -> bool:
    """Whether an unsubscribe of ``subscriber_id`` waits in the spool."""
    sql = "SELECT 1 FROM unsubscribes WHERE subscriber_id = ? LIMIT 1"
    return bool(_read(database, sql, [subscriber_id]))


def apply(db: Database, database: Path) -> int | None:
    """Apply the spooled unsubscribes to ``db`` (inside the caller's write transaction);
    the id of the last one applied, to ``forget`` after the commit, or None when the
    spool is empty, absent or cannot be read (left for the next write)."""
    rows = _read(
        database, "SELECT id, subscriber_id, requested_at FROM unsubscribes ORDER BY id", []
    )
    if not rows:
        return None
    from .digests import close_pending  # here: every write checks, few find a spool
    from .subscribers import set_status

    for _, subscriber_id, requested_at in rows:
        at = from_db_required(requested_at)
        now = db.execute(
            "SELECT status, status_changed_at FROM subscribers WHERE id = ?", [subscriber_id]
        ).fetchone()
        if now and now[0] in ("confirmed", "pending") and from_db_required(now[1]) <= at:
            set_status(db, subscriber_id, "unsubscribed", at)
            close_pending(db, subscriber_id, "cancelled", "unsubscribed")
    return int(rows[-1][0])


def forget(database: Path, upto: int) -> None:
    """Drop the spooled unsubscribes up to id ``upto`` (applied and committed). A failure
    leaves them to be applied again, which changes nothing."""
    with suppress(sqlite3.Error), closing(sqlite3.connect(spool_path(database))) as conn, conn:
        conn.execute("DELETE FROM unsubscribes WHERE id <= ?", [upto])
