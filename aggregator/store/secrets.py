"""Per-installation secrets, made once when the store is first opened.

``tokens`` signs the links in mails (confirm, preferences, unsubscribe); ``csrf`` signs
the form tokens of the web pages. They are made in the same exclusive transaction as
the migrations and read plainly afterwards, so no page needs a write lock to get them.
"""

from __future__ import annotations

import secrets as random_source

from sqlite_utils import Database

# The secrets every database holds, one random key each.
SECRET_NAMES = ("tokens", "csrf")
# Length of each secret in bytes (256 bits, the HMAC-SHA256 key size; RFC 2104 section 3).
SECRET_BYTES = 32


def read_secrets(db: Database) -> dict[str, bytes]:
    """The secrets the database holds (none before its ``secrets`` table exists)."""
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'secrets'"
    ).fetchone()
    if not exists:
        return {}
    return {
        str(name): bytes(value) for name, value in db.execute("SELECT name, value FROM secrets")
    }


def create_missing_secrets(db: Database) -> None:
    """Make each of ``SECRET_NAMES`` that does not exist yet (inside a write)."""
    for name in SECRET_NAMES:
        db.execute(
            "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
            [name, random_source.token_bytes(SECRET_BYTES)],
        )
