"""The SQLite store: one database file, opened, migrated and guarded here.

All SQL lives in this package. A process opens its ``Store`` once (schema check,
migrations and the installation's secrets, under one exclusive transaction) and keeps
it: each thread that uses it gets a connection of its own, made on first use.
``Store.write()`` is the one way to change data: a ``BEGIN IMMEDIATE`` transaction, so
that writers queue at the start instead of failing half way. Reads never take a write
lock.

Many processes may share the file (the service, a second service, cron ``poll`` and
``digest send``, CLI commands, ``aggregator backup``, a sqlite3 shell): nothing here
opens, reads, copies or locks the database or its ``-wal``/``-shm`` with anything but
SQLite, because closing any descriptor of the file drops every POSIX lock the process
holds on it, and another process would then delete the WAL under live connections
(https://www.sqlite.org/howtocorrupt.html, section 2.2).

Every sqlite3 failure of the database itself, on reads and writes, arrives as a
``StoreError`` subclass that names the file and the cause (see ``connection.translate``).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlite_utils import Database as Database  # re-exported: the type of a connection

from ..clock import epoch_seconds, system_clock
from ..errors import IncompatibleDatabase, StoreError, StoreReadOnly
from . import spool
from .connection import BUSY_TIMEOUT_MS, Connection, connect
from .schema import APPLICATION_ID, migrations
from .secrets import SECRET_NAMES, create_missing_secrets, read_secrets

__all__ = ["BUSY_TIMEOUT_MS", "Store", "WriteHealth"]


@dataclass(frozen=True, slots=True)
class WriteHealth:
    """How this process's last writes went (wall-clock seconds since the epoch)."""

    last_success: float | None = None
    last_failure: float | None = None
    failure: str | None = None  # the reason of the last failure, one line

    @property
    def failing(self) -> bool:
        """The last write failed and none has succeeded since."""
        return self.last_failure is not None and (
            self.last_success is None or self.last_failure > self.last_success
        )


class Store:
    """The database of one process; see the module docstring for the rules.

    ``pragmas`` are applied to every connection (after the store's own: a busy timeout
    of ``BUSY_TIMEOUT_MS``, ``synchronous = NORMAL``, foreign keys on).
    """

    def __init__(
        self,
        path: Path,
        first: Connection,
        *,
        readonly: bool,
        secrets: Mapping[str, bytes],
        pragmas: Mapping[str, int | str],
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.health = WriteHealth()
        self._secrets = dict(secrets)
        self._pragmas = dict(pragmas)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Connection] = []
        self._closed = False
        self._adopt(first)

    @classmethod
    def open(cls, path: Path, *, pragmas: Mapping[str, int | str] | None = None) -> Store:
        """Open (creating if needed) and migrate the database at ``path``.

        A file that cannot be written (permissions) is opened read-only: reading works,
        writes raise ``StoreReadOnly``. Raises ``IncompatibleDatabase`` for a file that
        is not SQLite, belongs to another application or is damaged, ``StoreLocked``
        when another process holds the lock past the busy timeout, and the other
        ``StoreError`` subclasses for the other failures, each one line naming the file.
        """
        path = Path(path)
        pragmas = dict(pragmas or {})
        exists = path.exists()
        # SQLite writes beside the file (-wal, -shm): a folder it cannot write in makes
        # the database read-only too.
        readonly = exists and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))
        if not exists:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot create its folder: {error}", path=str(path)) from None
        conn = connect(path, readonly=readonly, pragmas=pragmas)
        try:
            secrets = _prepare(conn, path, readonly=readonly)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, readonly=readonly, secrets=secrets, pragmas=pragmas)

    # --- connections ---------------------------------------------------------------------

    def _adopt(self, conn: Connection) -> Database:
        db = _database(conn)
        self._local.db = db
        with self._lock:
            self._connections.append(conn)
        return db

    @property
    def db(self) -> Database:
        """This thread's database handle (its own connection, made on first use)."""
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise StoreError("the store is closed", path=str(self.path))
            db = self._adopt(connect(self.path, readonly=self.readonly, pragmas=self._pragmas))
        return db

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's sqlite3 connection (the one under ``db``)."""
        return self.db.conn

    def close_thread(self) -> None:
        """Close this thread's connection, if it made one (a worker thread that ends)."""
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        with self._lock:
            if db.conn in self._connections:
                self._connections.remove(db.conn)
        db.conn.close()

    def close(self) -> None:
        """Close every connection of every thread; the store cannot be used after."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._closed = True
        for conn in connections:
            conn.close()
        self._local = threading.local()

    # --- secrets -------------------------------------------------------------------------

    def secret(self, name: str) -> bytes:
        """The installation's secret ``name`` (one of ``SECRET_NAMES``), made at first open.

        Raises ``StoreReadOnly`` for a read-only database made before the secret existed.
        """
        try:
            return self._secrets[name]
        except KeyError:
            raise StoreReadOnly(
                f"has no {name!r} secret yet and is read-only", path=str(self.path)
            ) from None

    # --- writing -------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Database]:
        """One write transaction: all of it lands, or none of it. Unsubscribes kept in
        the spool while the database was locked are applied first, in the same
        transaction (``spool``).

        Raises a ``StoreError`` subclass (locked, full, read-only, damaged) on failure;
        the outcome is kept in ``health`` for ``/healthz`` and ``status``.
        """
        db = self.db
        conn = db.conn
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                raise StoreError(f"cannot start a write: {error}", path=str(self.path)) from None
            try:
                spooled = spool.apply(db, self.path)
                yield db
            except sqlite3.Error as error:
                # A constraint or a statement error: the whole transaction goes, and the
                # caller gets one clear error instead of a driver exception.
                _rollback(conn)
                raise StoreError(f"write failed: {error}", path=str(self.path)) from error
            except BaseException:
                _rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except StoreError as error:
            self.health = WriteHealth(self.health.last_success, epoch_seconds(), error.reason)
            raise
        self.health = WriteHealth(epoch_seconds(), self.health.last_failure, self.health.failure)
        if spooled is not None:
            spool.forget(self.path, spooled)

    def spool_unsubscribe(self, subscriber_id: int, requested_at: datetime) -> None:
        """Keep an unsubscribe that cannot be written now (the database is locked) for the
        next write of any process, durably (see ``spool``). Raises ``StoreError`` when
        even the spool cannot be written."""
        spool.record(self.path, subscriber_id, requested_at)

    def unsubscribe_waits(self, subscriber_id: int) -> bool:
        """Whether an unsubscribe of ``subscriber_id`` waits in the spool (so no mail may
        go to them, though the database does not say so yet)."""
        return spool.holds(self.path, subscriber_id)

    def spooled_unsubscribes(self) -> int:
        """How many unsubscribes wait in the spool for the database's next write."""
        return spool.waiting(self.path)

    # --- checks and copies ---------------------------------------------------------------

    def integrity_ok(self) -> bool:
        """Whether SQLite's ``PRAGMA integrity_check`` finds the file whole (reads all of
        it: slow on a big database).
        """
        row = self.conn.execute("PRAGMA integrity_check").fetchone()
        return bool(row and row[0] == "ok")

    def probe_write(self, *, wait_ms: int) -> None:
        """Commit one tiny write (the ``heartbeat`` row), waiting at most ``wait_ms`` for
        the lock; raises the ``StoreError`` that says why it cannot. Updates ``health``."""
        conn = self.conn
        conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
        try:
            with self.write() as db:
                db.execute(
                    "INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, ?)",
                    [system_clock().isoformat(timespec="seconds")],
                )
        finally:
            busy = self._pragmas.get("busy_timeout", BUSY_TIMEOUT_MS)
            conn.execute(f"PRAGMA busy_timeout = {busy}")

    def check(self, *, probe_ms: int = 2_000) -> str | None:
        """What is wrong with the database, in one line, or ``None`` when it is usable.

        Reads the whole file once (``PRAGMA quick_check``) and commits one tiny write,
        waiting at most ``probe_ms`` for the lock (``probe_write``).
        """
        try:
            row = self.conn.execute("PRAGMA quick_check").fetchone()
            if not row or row[0] != "ok":
                detail = row[0] if row else "no answer"
                return f"damaged ({detail}); restore it from a backup (see the README)"
            if self.readonly:
                return "read-only: pages can be read, nothing can be written"
            self.probe_write(wait_ms=probe_ms)
        except StoreError as error:
            return error.reason
        return None

    def owns(self, other: Path) -> bool:
        """Whether ``other`` names the database, one of its ``-wal``, ``-shm`` or
        ``-journal`` files, the service's ``.jobs.lock`` or the unsubscribe spool
        (``spool``) beside it, however it is spelled (``..``, symlinks, hard links).

        Commands that write or read a file the user names check this first: only SQLite
        may touch those files (see the module docstring), and replacing the lock file
        would let a second service run the jobs.
        """
        other = Path(other)
        sides = (
            *_SIDE,
            JOBS_LOCK_SUFFIX,
            spool.SPOOL_SUFFIX,
            *(spool.SPOOL_SUFFIX + s for s in _SIDE),
        )
        mine = [self.path, *(Path(f"{self.path}{side}") for side in sides)]
        resolved = other.resolve()
        return any(resolved == path.resolve() or _same_file(other, path) for path in mine)

    def refuse_own(self, other: Path, doing: str) -> None:
        """Raise ``StoreError`` when ``other`` is one of the database's files (``owns``)."""
        if self.owns(other):
            raise StoreError(
                f"refusing to {doing} {other}: it is the database or one of its files "
                "(the service's jobs lock included)",
                path=str(self.path),
            )

    def backup(self, target: Path) -> int:
        """Write a consistent copy of the database to ``target``; its size in bytes.

        Safe while other processes read and write (``VACUUM INTO`` reads one snapshot;
        https://www.sqlite.org/lang_vacuum.html#vacuuminto). The copy is made beside
        ``target`` under a temporary name, set to WAL mode like the original, checked
        with ``PRAGMA integrity_check``, then renamed into place, so ``target`` is never
        half written (temporary files of a backup that was killed are removed by the
        next one). Missing folders of ``target`` are made. A symbolic link is followed
        (the file it names is replaced, the link stays). Raises ``StoreError`` naming
        ``target`` when it is the database itself, not a regular file (a folder, device,
        FIFO or socket) or cannot be written.
        """
        target = Path(target).absolute()
        if target.is_symlink():
            target = target.resolve()
        self.refuse_own(target, "back up onto")
        if target.is_dir():
            raise StoreError("is a folder, not a file name", path=str(target))
        if target.exists() and not target.is_file():
            raise StoreError(
                "is not a regular file (a device, FIFO or socket): refusing to replace it",
                path=str(target),
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"cannot make its folder: {error.strerror}", path=str(target)
            ) from None
        _remove_stale_partials(target)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        try:
            self.conn.execute("VACUUM INTO ?", [str(partial)])
            copy = sqlite3.connect(partial, isolation_level=None)
            try:
                copy.execute("PRAGMA journal_mode = WAL")
                row = copy.execute("PRAGMA integrity_check").fetchone()
            finally:
                copy.close()
            if not row or row[0] != "ok":
                raise StoreError(f"the copy failed its integrity check: {row}", path=str(target))
            partial.replace(target)
        except StoreError as error:
            if error.path == str(target):
                raise
            raise StoreError(f"cannot write the backup: {error.reason}", path=str(target)) from None
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot write the backup: {error}", path=str(target)) from None
        finally:
            for leftover in (partial, *(Path(f"{partial}{side}") for side in _SIDE)):
                leftover.unlink(missing_ok=True)
        return target.stat().st_size


_SIDE = ("-wal", "-shm", "-journal")
JOBS_LOCK_SUFFIX = ".jobs.lock"
"""The service's jobs lock is the database's path with this added (``aggregator run``
holds it while it runs the poll and digest jobs)."""


_PARTIAL = re.compile(r"\..+\.(?P<pid>\d+)\.partial(?:-wal|-shm|-journal)?")
"""A backup's temporary copy: ``.NAME.PID.partial`` (and SQLite's files beside it)."""


def _remove_stale_partials(target: Path) -> None:
    """Remove the temporary copies that killed backups left in ``target``'s folder,
    whatever name they were for (dated backups change name every day), once the process
    that made each one is gone."""
    for leftover in target.parent.glob(".*.partial*"):
        found = _PARTIAL.fullmatch(leftover.name)
        if found and not _alive(int(found["pid"])):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _rollback(conn: sqlite3.Connection) -> None:
    # The failure that ended the transaction is the one to report, not the rollback's.
    if conn.in_transaction:
        with suppress(sqlite3.Error, StoreError):
            conn.execute("ROLLBACK")


def _database(conn: Connection) -> Database:
    """sqlite-utils over ``conn``, without its plugins: it would look them up in every
    installed package's metadata (17 ms of each command's start) and let any it found run
    code on the product's connections (its ``prepare_connection`` hook)."""
    return Database(conn, execute_plugins=False)


def _prepare(conn: Connection, path: Path, *, readonly: bool) -> dict[str, bytes]:
    """Check the file is ours, migrate it and make its secrets; the secrets.

    Work that writes runs once, under ``BEGIN EXCLUSIVE``, so two processes starting
    together neither migrate twice nor make two different secrets.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    if app_id != APPLICATION_ID and (app_id != 0 or tables):
        raise IncompatibleDatabase(
            "belongs to another application (unknown tables or application id); "
            "refusing to touch it",
            path=str(path),
        )
    db = _database(conn)
    if not readonly and conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        # New, or copied back from a backup made in another mode: readers must never
        # wait for writers (https://www.sqlite.org/wal.html).
        conn.execute("PRAGMA journal_mode = WAL")
    if _needs_setup(db):
        if readonly:
            raise StoreReadOnly(
                "is read-only and needs its schema upgraded: open it once with write access",
                path=str(path),
            )
        # Foreign keys are off while migrations run (they cannot change inside a
        # transaction): a migration that rebuilds a table drops the old one, which with
        # them on would cascade to every row that refers to it
        # (https://www.sqlite.org/lang_altertable.html section 7). Each such migration
        # checks ``PRAGMA foreign_key_check`` before it ends.
        foreign_keys = int(conn.execute("PRAGMA foreign_keys").fetchone()[0])
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("BEGIN EXCLUSIVE")
        try:
            migrations.apply(db)
            create_missing_secrets(db)
            conn.execute("COMMIT")
        except (sqlite3.Error, RuntimeError) as error:
            _rollback(conn)
            raise IncompatibleDatabase(f"cannot be set up: {error}", path=str(path)) from None
        except BaseException:
            _rollback(conn)
            raise
        finally:
            conn.execute(f"PRAGMA foreign_keys = {foreign_keys}")
    return read_secrets(db)


def _needs_setup(db: Database) -> bool:
    return bool(migrations.pending(db)) or set(read_secrets(db)) != set(SECRET_NAMES)
