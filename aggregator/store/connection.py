"""SQLite connections whose storage failures arrive as ``StoreError``.

Every connection of the store is made here, with a connection and cursor class that
translate the sqlite3 errors that describe the *database* (locked, full, read-only,
damaged, not a database, I/O) into the ``StoreError`` subclass that says so in words,
naming the file. Errors that describe a *statement* (a constraint, a missing column, a
savepoint still in use) stay sqlite3 errors: they are the caller's logic, and
sqlite-utils relies on catching some of them.

SQLite result codes: https://www.sqlite.org/rescode.html
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import IncompatibleDatabase, StoreError, StoreFull, StoreLocked, StoreReadOnly

# How long, in milliseconds, a statement waits for another process's lock before SQLite
# answers SQLITE_BUSY (then StoreLocked).
BUSY_TIMEOUT_MS = 15_000

# Primary result codes (the low byte of an extended code).
_BUSY, _LOCKED, _NOMEM, _READONLY, _IOERR, _CORRUPT = 5, 6, 7, 8, 10, 11
_FULL, _CANTOPEN, _PROTOCOL, _NOTADB, _PERM = 13, 14, 15, 26, 3


def translate(error: sqlite3.Error, path: str) -> StoreError | None:
    """The ``StoreError`` for a failure of the database itself, else ``None``.

    ``busy`` and ``locked`` that concern a savepoint or a statement in progress are the
    caller's logic, not another process, and are left alone.
    """
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    detail = str(error)
    if primary in (_BUSY, _LOCKED):
        if "savepoint" in detail or "in progress" in detail:
            return None
        return StoreLocked(f"locked by another process: {detail}", path=path)
    if primary == _FULL:
        return StoreFull(f"disk full, nothing was written: {detail}", path=path)
    if primary in (_READONLY, _PERM):
        return StoreReadOnly(f"read-only, cannot write: {detail}", path=path)
    if primary == _CORRUPT:
        return IncompatibleDatabase(
            f"damaged ({detail}); restore it from a backup (see the README)",
            path=path,
        )
    if primary == _NOTADB:
        return IncompatibleDatabase("is not an SQLite database", path=path)
    if primary == _CANTOPEN:
        return StoreError(f"cannot open (missing folder or no permission): {detail}", path=path)
    if primary == _IOERR:
        return StoreError(f"disk I/O error: {detail}", path=path)
    if primary == _NOMEM:
        return StoreError(f"out of memory: {detail}", path=path)
    if primary == _PROTOCOL:
        return StoreLocked(f"locking protocol failed, try again: {detail}", path=path)
    return None


class _Translating:
    """Mixin: run a sqlite3 call, raising a StoreError for database failures."""

    store_path: str

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except sqlite3.Error as error:
            failure = translate(error, self.store_path)
            if failure is None:
                raise
            if isinstance(self, sqlite3.Cursor):
                # Finalise its statement here and now. Left to the garbage collector (the
                # exception's traceback keeps the cursor), it would be freed in whichever
                # thread collects, which then waits for this connection's mutex while
                # holding the GIL: if this thread is waiting for a lock held by another
                # process, every thread of the process stops until that lock goes.
                with contextlib.suppress(sqlite3.Error):
                    self.close()
            raise failure from error


class Cursor(_Translating, sqlite3.Cursor):
    """A sqlite3 cursor whose database failures are raised as StoreError subclasses
    (``translate``), naming the file.
    """

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        self._call(super().execute, sql, parameters)
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Cursor:
        self._call(super().executemany, sql, seq_of_parameters)
        return self

    def executescript(self, sql_script: str, /) -> Cursor:
        self._call(super().executescript, sql_script)
        return self

    def fetchone(self) -> Any:
        return self._call(super().fetchone)

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        result: list[Any] = self._call(super().fetchmany, size)
        return result

    def fetchall(self) -> list[Any]:
        result: list[Any] = self._call(super().fetchall)
        return result

    def __iter__(self) -> Cursor:
        return self

    def __next__(self) -> Any:
        return self._call(super().__next__)


class Connection(_Translating, sqlite3.Connection):
    """A connection whose cursors translate database failures (see ``translate``).

    ``executescript`` inside an open transaction runs the script statement by
    statement: sqlite3's own ``executescript`` commits first, which would end a
    migration's exclusive transaction half way.
    """

    def cursor(self, factory: Any = Cursor) -> Any:
        cursor = super().cursor(factory)
        cursor.store_path = self.store_path
        return cursor

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        cursor: Cursor = self.cursor()
        return cursor.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor:
        cursor: Cursor = self.cursor()
        return cursor.executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> Cursor:
        cursor: Cursor = self.cursor()
        if not self.in_transaction:
            return cursor.executescript(sql_script)
        for statement in split_statements(sql_script):
            cursor.execute(statement)
        return cursor


def split_statements(script: str) -> Iterator[str]:
    """The complete SQL statements of ``script``, in order (triggers stay whole)."""
    start = 0
    position = script.find(";")
    while position != -1:
        candidate = script[start : position + 1]
        if sqlite3.complete_statement(candidate):
            if candidate.strip(" \t\r\n;"):
                yield candidate
            start = position + 1
        position = script.find(";", position + 1)
    rest = script[start:]
    if rest.strip():
        yield rest


def connect(path: Path, *, readonly: bool, pragmas: Mapping[str, int | str]) -> Connection:
    """A new connection to ``path`` with the store's per-connection settings.

    Raises the ``StoreError`` that names the failure. Opening never creates or touches
    anything but what SQLite itself does (no other file IO on the database: closing any
    descriptor of the file would drop this process's POSIX locks, see
    https://www.sqlite.org/howtocorrupt.html section 2.2).

    A read-only WAL database whose ``-shm`` cannot be made (the folder is not writable
    either) is opened ``immutable``: readable, on the promise that nobody writes it.
    """
    if not readonly:
        return _connect(path, str(path), uri=False, pragmas=pragmas)
    target = f"file:{quote(path.as_posix())}?mode=ro"
    try:
        conn = _connect(path, target, uri=True, pragmas=pragmas)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except BaseException:
            conn.close()
            raise
    except StoreError as error:
        if getattr(error.__cause__, "sqlite_errorcode", 0) & 0xFF != _CANTOPEN:
            raise
        return _connect(path, target + "&immutable=1", uri=True, pragmas=pragmas)
    return conn


def _connect(path: Path, target: str, *, uri: bool, pragmas: Mapping[str, int | str]) -> Connection:
    try:
        conn = sqlite3.connect(
            target,
            uri=uri,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
            factory=Connection,
        )
    except sqlite3.Error as error:
        raise (translate(error, str(path)) or StoreError(str(error), path=str(path))) from None
    conn.store_path = str(path)
    settings: dict[str, int | str] = {
        "busy_timeout": BUSY_TIMEOUT_MS,
        "synchronous": "NORMAL",
        "foreign_keys": "ON",
        **pragmas,
    }
    try:
        for name, value in settings.items():
            conn.execute(f"PRAGMA {name} = {value}")
    except BaseException:
        conn.close()
        raise
    return conn
