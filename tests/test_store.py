"""The SQLite store: opening, refusing foreign files (K7), migrations, transactions."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lockkit import write_lock_held

from aggregator.errors import (
    IncompatibleDatabase,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreReadOnly,
)
from aggregator.store import Store
from aggregator.store import feeds as feed_rows
from aggregator.store.connection import connect

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_new_database_is_wal_with_foreign_keys_and_fts(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert "entries_fts" in store.db.table_names()
    assert store.integrity_ok()
    store.close()


def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    Store.open(path).close()
    store = Store.open(path)
    applied = store.conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0]
    from aggregator.store.schema import migrations

    assert applied == len(migrations._migrations)
    store.close()


def test_k7_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    conn.execute("INSERT INTO invoices (amount) VALUES (9.5)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(IncompatibleDatabase, match="another application"):
        Store.open(path)
    assert path.read_bytes() == before  # untouched


def test_k7_not_sqlite_and_truncated_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite3"
    text.write_text("just some notes\n")
    with pytest.raises(IncompatibleDatabase, match="not an SQLite database"):
        Store.open(text)
    good = tmp_path / "good.sqlite3"
    Store.open(good).close()
    truncated = tmp_path / "truncated.sqlite3"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(IncompatibleDatabase):
        Store.open(truncated)


def test_write_rolls_back_whole_on_error(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    with pytest.raises(RuntimeError), store.write() as db:
        feed_rows.add_feed(db, url="https://a.test/feed", title="A", origin="cli", now=NOW)
        raise RuntimeError("crash half way")
    assert feed_rows.list_feeds(store.db) == []
    with store.write() as db:
        feed_rows.add_feed(db, url="https://a.test/feed", title="A", origin="cli", now=NOW)
    assert [f.url for f in feed_rows.list_feeds(store.db)] == ["https://a.test/feed"]
    store.close()


def test_add_feed_is_idempotent_by_url(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    with store.write() as db:
        first, created = feed_rows.add_feed(
            db, url="https://a.test/f", title=None, origin="cli", now=NOW
        )
        again, created_again = feed_rows.add_feed(
            db, url="https://a.test/f", title="x", origin="cli", now=NOW
        )
    assert created and not created_again
    assert first.id == again.id
    store.close()


# --- the store boundary: each database failure, on reads and writes -----------------------


def test_locked_write_is_store_locked_naming_the_file_and_reads_go_on(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = Store.open(path, pragmas={"busy_timeout": 200})
    with store.write() as db:
        feed_rows.add_feed(db, url="https://a.test/f", title="A", origin="cli", now=NOW)
    with write_lock_held(path):
        with pytest.raises(StoreLocked) as caught, store.write() as db:
            feed_rows.add_feed(db, url="https://b.test/f", title="B", origin="cli", now=NOW)
        assert "locked by another process" in str(caught.value)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
        assert store.health.failing and "locked" in (store.health.failure or "")
        # WAL readers are not blocked by a writer in another process.
        assert [f.url for f in feed_rows.list_feeds(store.db)] == ["https://a.test/f"]
        with pytest.raises(StoreLocked):  # a bare statement outside write() too
            feed_rows.set_interval(store.db, 1, 60)
    with store.write() as db:
        feed_rows.add_feed(db, url="https://b.test/f", title="B", origin="cli", now=NOW)
    assert not store.health.failing
    store.close()


def test_full_disk_is_store_full_and_nothing_is_half_written(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    Store.open(path).close()
    probe = Store.open(path)
    pages = probe.conn.execute("PRAGMA page_count").fetchone()[0]
    probe.close()
    store = Store.open(path, pragmas={"max_page_count": pages + 1})
    with pytest.raises(StoreFull, match="disk full") as caught, store.write() as db:
        for i in range(2000):
            feed_rows.add_feed(
                db, url=f"https://a.test/{i}" + "x" * 200, title="A", origin="cli", now=NOW
            )
    assert str(path) in str(caught.value)
    assert feed_rows.list_feeds(store.db) == []
    assert store.integrity_ok()
    store.close()


@contextmanager
def _unwritable(path: Path) -> Iterator[None]:
    """``path`` made unwritable for this process: mode 0444, and for root (who may write
    any file) the immutable attribute as well."""
    immutable = os.geteuid() == 0
    if immutable and shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file unwritable")
    path.chmod(0o444)
    if immutable:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o644)


def test_read_only_file_opens_read_only_reads_work_writes_say_so(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = Store.open(path)
    with store.write() as db:
        feed_rows.add_feed(db, url="https://a.test/f", title="A", origin="cli", now=NOW)
    csrf = store.secret("csrf")
    store.close()
    with _unwritable(path):
        assert not os.access(path, os.W_OK)
        ro = Store.open(path)
        assert ro.readonly and ro.secret("csrf") == csrf
        assert [f.url for f in feed_rows.list_feeds(ro.db)] == ["https://a.test/f"]
        with pytest.raises(StoreReadOnly, match="read-only") as caught, ro.write() as db:
            feed_rows.add_feed(db, url="https://b.test/f", title="B", origin="cli", now=NOW)
        assert str(path) in str(caught.value)
        assert ro.check() == "read-only: pages can be read, nothing can be written"
        ro.close()


def test_read_only_connection_refuses_writes_as_store_read_only(tmp_path: Path) -> None:
    """The same translation as above, for a file root can write: a read-only connection."""
    path = tmp_path / "a.sqlite3"
    Store.open(path).close()
    conn = connect(path, readonly=True, pragmas={})
    try:
        with pytest.raises(StoreReadOnly, match="read-only"):
            conn.execute("INSERT INTO secrets (name, value) VALUES ('x', x'00')")
        assert conn.execute("SELECT count(*) FROM feeds").fetchone()[0] == 0
    finally:
        conn.close()


def test_damaged_file_is_reported_as_damaged_on_read(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = Store.open(path)
    with store.write() as db:
        for i in range(300):
            feed_rows.add_feed(
                db, url=f"https://a.test/{i}" + "x" * 300, title="A", origin="cli", now=NOW
            )
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(len(data) // 2 // page * page, len(data), page):  # the later pages
        data[offset : offset + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    damaged = Store.open(path)  # the header and schema still read
    with pytest.raises(IncompatibleDatabase, match="damaged") as caught:
        feed_rows.list_feeds(damaged.db)
    assert str(path) in str(caught.value) and "backup" in str(caught.value)
    problem = damaged.check()
    assert problem is not None and "damaged" in problem
    damaged.close()


def test_a_locked_database_at_open_is_not_called_unusable(tmp_path: Path) -> None:
    """Opening while another process migrates or holds the lock waits, then says
    "locked", never "not a usable SQLite database"."""
    path = tmp_path / "a.sqlite3"
    path.touch()  # empty: the first open must set it up, which needs the lock
    with write_lock_held(path), pytest.raises(StoreLocked, match="locked by another process"):
        Store.open(path, pragmas={"busy_timeout": 200})
    Store.open(path).close()


def test_two_processes_opening_a_new_database_at_once_agree(tmp_path: Path) -> None:
    """Migrations and secrets are made once, under one exclusive transaction."""
    path = tmp_path / "a.sqlite3"
    code = (
        "import sys; from aggregator.store import Store; "
        "s = Store.open(sys.argv[1]); print(s.secret('tokens').hex()); s.close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = {p.communicate(timeout=60)[0] for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outputs) == 1
    store = Store.open(path)
    from aggregator.store.schema import migrations

    applied = store.conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0]
    assert applied == len(migrations._migrations)
    store.close()


def test_store_never_opens_the_database_file_itself(tmp_path: Path) -> None:
    """Only SQLite touches the file: opening a store and using it from several threads
    opens no descriptor of the database beside SQLite's own (which stay open)."""
    path = tmp_path / "a.sqlite3"
    Store.open(path).close()
    store = Store.open(path)
    before = _descriptors_of(path)

    def use() -> int:
        return len(feed_rows.list_feeds(store.db))

    import threading

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with store.write():
        pass
    after = _descriptors_of(path)
    assert before <= after  # nothing SQLite opened was closed under it
    store.close()


def _descriptors_of(path: Path) -> set[str]:
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(path)):
            found.add(f"{fd.name}:{target}")
    return found


def test_backup_is_a_whole_checked_copy_and_refuses_the_database_itself(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = Store.open(path)
    with store.write() as db:
        feed_rows.add_feed(db, url="https://a.test/f", title="A", origin="cli", now=NOW)
    target = tmp_path / "copy.sqlite3"
    size = store.backup(target)
    assert size == target.stat().st_size > 0
    assert not list(tmp_path.glob(".copy.sqlite3.*"))
    copy = Store.open(target)
    assert [f.url for f in feed_rows.list_feeds(copy.db)] == ["https://a.test/f"]
    assert copy.secret("tokens") == store.secret("tokens")
    copy.close()
    store.backup(target)  # over an older backup
    for wrong in (path, Path(f"{path}-wal")):
        with pytest.raises(StoreError, match="refusing to back up onto .* the database"):
            store.backup(wrong)
    with pytest.raises(StoreError, match="folder"):
        store.backup(tmp_path)
    store.close()


def test_a_database_copied_back_in_rollback_mode_is_switched_to_wal(tmp_path: Path) -> None:
    """A restored copy (or any file in another journal mode) opens in WAL, so readers
    never wait for writers; backups are made in WAL mode too."""
    path = tmp_path / "a.sqlite3"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    store = Store.open(path)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.backup(tmp_path / "copy.sqlite3")
    store.close()
    copy = sqlite3.connect(tmp_path / "copy.sqlite3")
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    copy.close()


def test_backup_errors_name_the_target_and_leftovers_of_a_killed_backup_go(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "a.sqlite3")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StoreError) as caught:
        store.backup(tmp_path / "a-file" / "copy.sqlite3")
    assert str(tmp_path / "a-file" / "copy.sqlite3") in str(caught.value)
    assert store.backup(tmp_path / "new" / "folder" / "copy.sqlite3") > 0
    assert str(tmp_path / "a.sqlite3") + ":" not in str(caught.value)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(dead.stdout)
    stale = tmp_path / f".copy.sqlite3.{pid}.partial"
    stale.write_bytes(b"half a copy")
    Path(f"{stale}-journal").write_bytes(b"x")
    yesterday = tmp_path / f".backup-2026-11-29.sqlite3.{pid}.partial"  # a dated name
    yesterday.write_bytes(b"half a copy")
    mine = tmp_path / f".other.sqlite3.{os.getpid()}.partial"  # a backup still running
    mine.write_bytes(b"in progress")
    store.backup(tmp_path / "copy.sqlite3")
    assert not stale.exists() and not Path(f"{stale}-journal").exists()
    assert not yesterday.exists() and mine.exists()
    store.close()


def test_healthz_retries_a_write_once_the_failure_may_have_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held elsewhere made a write fail; once it is released /healthz (retrying
    one small write) is ok again without any other write of the service."""
    from starlette.testclient import TestClient

    from aggregator.config import settings_from_mapping
    from aggregator.web import create_app, views

    path = tmp_path / "a.sqlite3"
    store = Store.open(path, pragmas={"busy_timeout": 200})
    settings = settings_from_mapping({"database": str(path)}, env={}, path=None)
    with write_lock_held(path), pytest.raises(StoreLocked), store.write():
        pass
    with TestClient(create_app(settings, store=store)) as client:
        assert client.get("/healthz").status_code == 503  # within the retry interval
        monkeypatch.setattr(views, "HEALTH_RETRY_SECONDS", 0.0)
        health = client.get("/healthz")
        assert health.status_code == 200, health.json()
    store.close()


def test_a_statement_that_failed_on_a_lock_is_finalised_at_once(tmp_path: Path) -> None:
    """The cursor of a statement that waited out another process's lock is closed where
    it failed. Left to the garbage collector, it was freed in some other thread, which
    then waited for this connection while holding the GIL: a service froze whole (every
    page, /healthz too) for as long as a sqlite3 shell held its transaction."""
    import sqlite3 as sqlite

    path = tmp_path / "a.sqlite3"
    store = Store.open(path, pragmas={"busy_timeout": 100})
    cursor = store.conn.cursor()
    with write_lock_held(path), pytest.raises(StoreLocked):
        cursor.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite.ProgrammingError, match="closed cursor"):
        cursor.execute("SELECT 1")
    store.close()
