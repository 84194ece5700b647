"""The SQLite store: one database file, opened, migrated and guarded here.

All SQL lives in this package. ``Store.write()`` is the one way to change data: a
``BEGIN IMMEDIATE`` transaction, so that writers queue at the start instead of failing
half way. sqlite3 errors are wrapped into ``StoreError`` at this edge.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from ..errors import IncompatibleDatabase, StoreError
from .schema import APPLICATION_ID, apply_migrations

__all__ = ["Store"]

BUSY_TIMEOUT_MS = 15_000
_SQLITE_HEADER = b"SQLite format 3\x00"


class Store:
    def __init__(self, db: Database, path: Path) -> None:
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating if needed) and migrate the database at ``path``.

        Refuses a file that is not SQLite, a database of another application, or a
        damaged one, with one line that says which.
        """
        path = Path(path)
        _check_file(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                str(path),
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise IncompatibleDatabase(
                f"not a usable SQLite database ({error})", path=str(path)
            ) from None
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            conn.close()
            raise IncompatibleDatabase(
                "belongs to another application (unknown tables or application id); "
                "refusing to touch it",
                path=str(path),
            )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            db = Database(conn)
            apply_migrations(db)
        except sqlite3.DatabaseError as error:
            conn.close()
            raise IncompatibleDatabase(f"cannot be opened: {error}", path=str(path)) from None
        return cls(db, path)

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def write(self) -> Iterator[Database]:
        """One write transaction: all of it lands, or none of it."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise StoreError(f"cannot start a write: {error}", path=str(self.path)) from None
        try:
            yield self.db
        except sqlite3.Error as error:
            # Disk full, a damaged page, a constraint: the whole transaction goes, and the
            # caller gets one clear error instead of a driver exception.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"write failed: {error}", path=str(self.path)) from error
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"write failed: {error}", path=str(self.path)) from None

    def integrity_ok(self) -> bool:
        row = self.conn.execute("PRAGMA integrity_check").fetchone()
        return bool(row and row[0] == "ok")


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    except OSError as error:
        raise StoreError(f"cannot read: {error}", path=str(path)) from None
    if size == 0:
        return
    with path.open("rb") as handle:
        header = handle.read(len(_SQLITE_HEADER))
    if header != _SQLITE_HEADER:
        raise IncompatibleDatabase("is not an SQLite database", path=str(path))
    if size < 512 or size % 512:
        raise IncompatibleDatabase("is truncated or damaged", path=str(path))
