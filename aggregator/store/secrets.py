"""Per-installation secrets, created on first use and kept in the database."""

from __future__ import annotations

import secrets as random_source

from sqlite_utils import Database


def get_or_create_secret(db: Database, name: str, *, size: int = 32) -> bytes:
    """The named secret; made (random, ``size`` bytes) the first time it is asked for.

    Call inside ``Store.write()`` so that two processes starting at once agree.
    """
    row = db.execute("SELECT value FROM secrets WHERE name = ?", [name]).fetchone()
    if row is not None:
        return bytes(row[0])
    value = random_source.token_bytes(size)
    db.execute("INSERT INTO secrets (name, value) VALUES (?, ?)", [name, value])
    return value
