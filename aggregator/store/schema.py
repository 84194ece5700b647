"""Numbered schema migrations (sqlite-utils), applied once at open under one exclusive
transaction (see ``Store.open``); never edit one that has shipped, add the next."""

from __future__ import annotations

from sqlite_utils import Database, Migrations

# "AGGR" — marks the file as ours, so another application's database is refused.
APPLICATION_ID = 0x41474752

migrations = Migrations("aggregator")


@migrations()
def m001_feeds_entries_fetches(db: Database) -> None:
    """The first schema: feeds, entries (with their timeline and identity indexes) and fetch
    records, and the file's application id (``PRAGMA application_id``) that marks it as ours.
    """
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.executescript(
        """
        CREATE TABLE feeds (
            id INTEGER PRIMARY KEY,
            url TEXT NOT NULL UNIQUE,
            title TEXT NOT NULL DEFAULT '',
            site_url TEXT,
            origin TEXT NOT NULL DEFAULT 'cli',
            enabled INTEGER NOT NULL DEFAULT 1,
            disabled_reason TEXT,
            etag TEXT,
            last_modified TEXT,
            error_count INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            next_poll_at TEXT,
            last_polled_at TEXT,
            last_success_at TEXT,
            interval_seconds INTEGER,
            snapshot TEXT,
            added_at TEXT NOT NULL,
            backlog_seq INTEGER
        );
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the monotonic ingest sequence
            feed_id INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            link_key TEXT,
            guid TEXT,
            link TEXT,
            canonical_url TEXT,
            title TEXT NOT NULL,
            norm_title TEXT NOT NULL,
            author TEXT,
            summary_html TEXT NOT NULL,
            content_html TEXT NOT NULL,
            text TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            published TEXT NOT NULL,
            updated TEXT,
            date_missing INTEGER NOT NULL DEFAULT 0,
            first_seen TEXT NOT NULL,
            last_changed TEXT NOT NULL,
            duplicate_of INTEGER REFERENCES entries(id) ON DELETE SET NULL,
            UNIQUE (feed_id, key)
        );
        CREATE INDEX entries_feed_link ON entries(feed_id, link_key);
        CREATE INDEX entries_canonical ON entries(canonical_url);
        CREATE INDEX entries_norm_title ON entries(norm_title);
        CREATE INDEX entries_timeline ON entries(published DESC, id DESC);
        CREATE INDEX entries_feed_timeline ON entries(feed_id, published DESC, id DESC);
        CREATE INDEX entries_duplicate_of ON entries(duplicate_of);
        CREATE TABLE fetches (
            id INTEGER PRIMARY KEY,
            feed_id INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
            at TEXT NOT NULL,
            url TEXT NOT NULL,
            status INTEGER,
            bytes INTEGER NOT NULL DEFAULT 0,
            duration_ms INTEGER NOT NULL DEFAULT 0,
            outcome TEXT NOT NULL,
            error_kind TEXT,
            error TEXT,
            new INTEGER NOT NULL DEFAULT 0,
            updated INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX fetches_feed_at ON fetches(feed_id, at DESC);
        """
    )
    db.table("entries").enable_fts(
        ["title", "author", "text"], create_triggers=True, tokenize="porter unicode61"
    )


@migrations()
def m002_instance_secrets(db: Database) -> None:
    """Secrets made at first start (link tokens, CSRF): in the database, never the repo."""
    db.execute("CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)")


@migrations()
def m003_subscribers(db: Database) -> None:
    """Subscribers, their sources, sign-up rate limits and used confirmation tokens."""
    db.executescript(
        """
        CREATE TABLE subscribers (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: links carry it
            email TEXT NOT NULL,
            email_key TEXT NOT NULL UNIQUE,  -- normalised, case-folded: one row per address
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'confirmed', 'unsubscribed', 'bounced')),
            cadence TEXT NOT NULL CHECK (cadence IN ('daily', 'weekly')),
            all_feeds INTEGER NOT NULL DEFAULT 1,
            watermark INTEGER NOT NULL DEFAULT 0,  -- highest entry id considered for a digest
            created_at TEXT NOT NULL,
            confirmed_at TEXT,
            status_changed_at TEXT NOT NULL,
            last_confirmation_at TEXT,
            last_digest_at TEXT,
            bounce_reason TEXT
        );
        CREATE INDEX subscribers_status ON subscribers(status, created_at);
        CREATE TABLE subscriber_feeds (
            subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
            feed_id INTEGER NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
            PRIMARY KEY (subscriber_id, feed_id)
        ) WITHOUT ROWID;
        CREATE INDEX subscriber_feeds_feed ON subscriber_feeds(feed_id);
        CREATE TABLE signup_attempts (
            key TEXT NOT NULL,  -- "client:<hash>" or "address:<hash>"
            at TEXT NOT NULL
        );
        CREATE INDEX signup_attempts_key_at ON signup_attempts(key, at);
        CREATE INDEX signup_attempts_at ON signup_attempts(at);
        CREATE TABLE used_tokens (
            token_hash TEXT PRIMARY KEY,
            used_at TEXT NOT NULL
        ) WITHOUT ROWID;
        """
    )


@migrations()
def m004_digests(db: Database) -> None:
    """Digests built per subscriber, the entries of each, and the sending lease."""
    db.executescript(
        """
        CREATE TABLE digests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: Message-IDs derive from it
            subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
            status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
            created_at TEXT NOT NULL,
            sent_at TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            last_error TEXT,
            message_id TEXT,  -- set when sent; derived from the id, so the same on resends
            first_entry INTEGER NOT NULL,
            last_entry INTEGER NOT NULL,
            entry_count INTEGER NOT NULL,
            more TEXT NOT NULL DEFAULT '{}'  -- JSON: feed id -> stories left out by the cap
        );
        CREATE INDEX digests_outbox ON digests(status, next_attempt_at, id);
        CREATE INDEX digests_subscriber ON digests(subscriber_id, id);
        CREATE TABLE digest_entries (
            digest_id INTEGER NOT NULL REFERENCES digests(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
            feed_id INTEGER NOT NULL,
            also_on TEXT NOT NULL DEFAULT '',  -- comma-separated entry ids of other copies
            PRIMARY KEY (digest_id, position)
        ) WITHOUT ROWID;
        CREATE INDEX digest_entries_entry ON digest_entries(entry_id);
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at TEXT NOT NULL
        ) WITHOUT ROWID;
        """
    )


@migrations()
def m005_entry_alias(db: Database) -> None:
    """Exact entry keys beside churn-tolerant aliases (DESIGN §5.1).

    Keys used to be the canonical URL of a GUID with its fragment dropped, which merged
    distinct entries (``?p=77#comment-401`` and ``#comment-402``). Now ``key`` is the
    GUID exactly as written and ``alias`` the canonical form. Existing rows keep their
    old key as alias, and a GUID row takes its stored GUID as key where that is unique
    in its feed; every other row is re-keyed by its next poll (matched by alias or link).

    The full-text index is kept up to date only when an indexed column changes, so that
    re-keying here (and re-pointing stories later) rewrites no index entries.
    """
    db.executescript(
        """
        DROP TRIGGER IF EXISTS entries_au;
        CREATE TRIGGER entries_au AFTER UPDATE OF title, author, text ON entries BEGIN
          INSERT INTO entries_fts (entries_fts, rowid, title, author, text)
            VALUES ('delete', old.rowid, old.title, old.author, old.text);
          INSERT INTO entries_fts (rowid, title, author, text)
            VALUES (new.rowid, new.title, new.author, new.text);
        END;
        ALTER TABLE entries ADD COLUMN alias TEXT NOT NULL DEFAULT '';
        UPDATE entries SET alias = key;
        CREATE INDEX entries_feed_alias ON entries(feed_id, alias);
        CREATE TEMP TABLE m005_rekey AS
            SELECT id, feed_id, 'guid:' || guid AS new_key FROM entries
            WHERE key LIKE 'guid:%' AND guid IS NOT NULL AND guid != ''
              AND guid = trim(guid) AND length(guid) <= 2048 AND key != 'guid:' || guid;
        DELETE FROM m005_rekey WHERE (feed_id, new_key) IN (
            SELECT feed_id, new_key FROM m005_rekey GROUP BY feed_id, new_key
            HAVING count(*) > 1
        );
        DELETE FROM m005_rekey WHERE EXISTS (
            SELECT 1 FROM entries e
            WHERE e.feed_id = m005_rekey.feed_id AND e.key = m005_rekey.new_key
        );
        UPDATE entries SET key = (SELECT new_key FROM m005_rekey r WHERE r.id = entries.id)
            WHERE id IN (SELECT id FROM m005_rekey);
        DROP TABLE m005_rekey;
        """
    )


@migrations()
def m006_heartbeat(db: Database) -> None:
    """One row that write probes (``status``, ``/healthz``) rewrite: a write that commits
    proves the database takes writes now (a lock, a full disk, a read-only file fail it)."""
    db.execute("CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL)")


@migrations()
def m008_search(db: Database) -> None:
    """Source titles searchable beside titles, authors and text.

    ``entries_fts`` becomes an external-content FTS5 table over the view
    ``entries_search`` (an entry's title, author, text and its source's title or else
    URL), so ``snippet()`` and ``highlight()`` read the current text
    (https://www.sqlite.org/fts5.html#external_content_tables). The index is rebuilt
    once here. Triggers keep it in step: on an entry's insert, delete and change of an
    indexed column; on a source's change of title or URL (its entries are re-indexed);
    and before a source is deleted (its entries' index rows go first, while the source
    title they were indexed with can still be read; the cascaded entry deletes then
    find no source and touch the index no more).
    """
    db.executescript(
        """
        DROP TRIGGER IF EXISTS entries_ai;
        DROP TRIGGER IF EXISTS entries_ad;
        DROP TRIGGER IF EXISTS entries_au;
        DROP TABLE IF EXISTS entries_fts;
        CREATE VIEW entries_search AS
            SELECT e.id AS id, e.title AS title, e.author AS author, e.text AS text,
                   coalesce(nullif(f.title, ''), f.url) AS source
            FROM entries e JOIN feeds f ON f.id = e.feed_id;
        CREATE VIRTUAL TABLE entries_fts USING fts5(
            title, author, text, source,
            content = 'entries_search', content_rowid = 'id', tokenize = 'porter unicode61'
        );
        INSERT INTO entries_fts (entries_fts) VALUES ('rebuild');
        CREATE TRIGGER entries_ai AFTER INSERT ON entries BEGIN
          INSERT INTO entries_fts (rowid, title, author, text, source)
            SELECT new.id, new.title, new.author, new.text,
                   coalesce(nullif(f.title, ''), f.url) FROM feeds f WHERE f.id = new.feed_id;
        END;
        CREATE TRIGGER entries_ad AFTER DELETE ON entries BEGIN
          INSERT INTO entries_fts (entries_fts, rowid, title, author, text, source)
            SELECT 'delete', old.id, old.title, old.author, old.text,
                   coalesce(nullif(f.title, ''), f.url) FROM feeds f WHERE f.id = old.feed_id;
        END;
        CREATE TRIGGER entries_au AFTER UPDATE OF title, author, text, feed_id ON entries BEGIN
          INSERT INTO entries_fts (entries_fts, rowid, title, author, text, source)
            SELECT 'delete', old.id, old.title, old.author, old.text,
                   coalesce(nullif(f.title, ''), f.url) FROM feeds f WHERE f.id = old.feed_id;
          INSERT INTO entries_fts (rowid, title, author, text, source)
            SELECT new.id, new.title, new.author, new.text,
                   coalesce(nullif(f.title, ''), f.url) FROM feeds f WHERE f.id = new.feed_id;
        END;
        CREATE TRIGGER feeds_search_au AFTER UPDATE OF title, url ON feeds
        WHEN coalesce(nullif(old.title, ''), old.url)
             IS NOT coalesce(nullif(new.title, ''), new.url)
        BEGIN
          INSERT INTO entries_fts (entries_fts, rowid, title, author, text, source)
            SELECT 'delete', e.id, e.title, e.author, e.text,
                   coalesce(nullif(old.title, ''), old.url) FROM entries e WHERE e.feed_id = old.id;
          INSERT INTO entries_fts (rowid, title, author, text, source)
            SELECT e.id, e.title, e.author, e.text, coalesce(nullif(new.title, ''), new.url)
            FROM entries e WHERE e.feed_id = new.id;
        END;
        CREATE TRIGGER feeds_search_bd BEFORE DELETE ON feeds BEGIN
          INSERT INTO entries_fts (entries_fts, rowid, title, author, text, source)
            SELECT 'delete', e.id, e.title, e.author, e.text,
                   coalesce(nullif(old.title, ''), old.url) FROM entries e WHERE e.feed_id = old.id;
        END;
        """
    )


@migrations()
def m007_enclosures(db: Database) -> None:
    """Media an entry carries (RSS enclosures, Atom rel="enclosure" links, Media RSS
    content and thumbnails, Apple podcast images), in the feed's order, each URL once
    per entry. Rewritten with the entry's other columns whenever the entry changes; the
    parser keeps at most ``media.MAX_MEDIA_PER_ENTRY`` per entry. URLs are absolute
    http(s); sizes (bytes) and durations (seconds) are positive integers or NULL."""
    db.executescript(
        """
        CREATE TABLE enclosures (
            entry_id INTEGER NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
            position INTEGER NOT NULL CHECK (position >= 0),
            role TEXT NOT NULL CHECK (role IN ('enclosure', 'thumbnail')),
            url TEXT NOT NULL
                CHECK (substr(url, 1, 7) = 'http://' OR substr(url, 1, 8) = 'https://'),
            mime_type TEXT,
            medium TEXT,
            length INTEGER CHECK (length IS NULL OR (typeof(length) = 'integer' AND length > 0)),
            duration INTEGER
                CHECK (duration IS NULL OR (typeof(duration) = 'integer' AND duration > 0)),
            episode INTEGER CHECK (episode IS NULL OR typeof(episode) = 'integer'),
            PRIMARY KEY (entry_id, position)
        ) WITHOUT ROWID;
        """
    )


@migrations()
def m009_pages(db: Database) -> None:
    """A welcome mail owed to a newly confirmed subscriber; the service sends it once."""
    db.execute("ALTER TABLE subscribers ADD COLUMN welcome_due INTEGER NOT NULL DEFAULT 0")


@migrations()
def m010_date_precision(db: Database) -> None:
    """``entries.date_only``: the feed wrote a calendar day without a time of day
    (``<dc:date>2024-03-04</dc:date>``). ``published`` is then noon UTC of that day
    (``dedup.make_record``); pages show that day in every zone and no time (never 19:00
    the day before). Entries stored before this migration keep date_only = 0."""
    db.execute("ALTER TABLE entries ADD COLUMN date_only INTEGER NOT NULL DEFAULT 0")


# The feeds table as m001 made it, with AUTOINCREMENT; ``m011_feed_ids_never_reused``.
_FEEDS_AUTOINCREMENT = """
CREATE TABLE feeds_m011 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: links, filters and choices carry it
    url TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL DEFAULT '',
    site_url TEXT,
    origin TEXT NOT NULL DEFAULT 'cli',
    enabled INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    etag TEXT,
    last_modified TEXT,
    error_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_poll_at TEXT,
    last_polled_at TEXT,
    last_success_at TEXT,
    interval_seconds INTEGER,
    snapshot TEXT,
    added_at TEXT NOT NULL,
    backlog_seq INTEGER
)
"""
_FEED_COLUMNS = (
    "id, url, title, site_url, origin, enabled, disabled_reason, etag, last_modified, "
    "error_count, last_error, next_poll_at, last_polled_at, last_success_at, "
    "interval_seconds, snapshot, added_at, backlog_seq"
)


@migrations()
def m011_feed_ids_never_reused(db: Database) -> None:
    """Feed ids are never given out twice (``AUTOINCREMENT``,
    https://www.sqlite.org/autoinc.html): a removed feed's id used to go to the next feed
    added when it was the highest, and subscribers' chosen sources, /sources/N links and
    saved filters then named another feed. Entries, subscribers and digests already had
    AUTOINCREMENT; fetch ids never leave the database.

    SQLite cannot add AUTOINCREMENT in place, so the table is rebuilt as
    https://www.sqlite.org/lang_altertable.html section 7 says: with foreign keys off
    (``Store.open`` turns them off around its migrations; a connection that has them on
    is refused here, since dropping ``feeds`` would then cascade to every entry), the
    views and triggers that name ``feeds`` are set aside, a new table is filled, the old
    one dropped, the new one renamed, the views and triggers made again from their own
    SQL, and ``PRAGMA foreign_key_check`` must find nothing. Every row keeps its id;
    entries' full-text index is untouched (its rowids are entry ids).

    The sequence starts above every feed id the database still remembers, including
    those of feeds removed before this migration: ``digest_entries.feed_id`` and the
    feed ids in ``digests.more`` outlive a removed feed. Ids removed without such a
    trace cannot be known and may be given out once more.
    """
    if db.execute("PRAGMA foreign_keys").fetchone()[0]:
        raise RuntimeError("m011 rebuilds feeds and needs PRAGMA foreign_keys = OFF")
    dependents = [
        (kind, name, sql)
        for kind, name, sql in db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger') "
            "AND sql IS NOT NULL AND (tbl_name = 'feeds' OR sql LIKE '%feeds%') ORDER BY rowid"
        ).fetchall()
    ]
    indexes = [
        sql
        for (sql,) in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'feeds' "
            "AND sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
    ]
    for kind, name, _ in reversed(dependents):
        db.execute(f'DROP {kind.upper()} "{name}"')
    db.execute(_FEEDS_AUTOINCREMENT)
    db.execute(f"INSERT INTO feeds_m011 ({_FEED_COLUMNS}) SELECT {_FEED_COLUMNS} FROM feeds")
    db.execute("DROP TABLE feeds")
    db.execute("ALTER TABLE feeds_m011 RENAME TO feeds")
    for sql in indexes:
        db.execute(sql)
    for _, _, sql in dependents:
        db.execute(sql)
    seen = db.execute(
        """
        SELECT max(coalesce(max(id), 0),
                   coalesce((SELECT max(feed_id) FROM entries), 0),
                   coalesce((SELECT max(feed_id) FROM fetches), 0),
                   coalesce((SELECT max(feed_id) FROM subscriber_feeds), 0),
                   coalesce((SELECT max(feed_id) FROM digest_entries), 0),
                   coalesce((SELECT max(CAST(j.key AS INTEGER))
                             FROM digests d, json_each(d.more) j
                             WHERE json_valid(d.more) AND json_type(d.more) = 'object'), 0))
        FROM feeds
        """
    ).fetchone()[0]
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'feeds'")
    if seen:
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('feeds', ?)", [seen])
    problems = db.execute("PRAGMA foreign_key_check").fetchall()
    if problems:
        raise RuntimeError(f"m011: foreign keys broken after the rebuild: {problems[:5]}")


@migrations()
def m012_seeded_addresses(db: Database) -> None:
    """Addresses the configuration file has added (``[service] demo_subscriber``), each
    remembered once added, so that one the operator removed or that unsubscribed is never
    added again by a later start. Subscribers already present are remembered as added
    when the configuration next names them (``subscriptions.seed_configured_subscriber``)."""
    db.execute(
        "CREATE TABLE seeded_addresses ("
        "email_key TEXT PRIMARY KEY, "  # subscriptions.normalise_email's key
        "seeded_at TEXT NOT NULL"
        ") WITHOUT ROWID"
    )


@migrations()
def m013_mail_owed(db: Database) -> None:
    """Confirmation and welcome mails not yet delivered, retried with backoff by the
    service's digest job until they go or ``attempts`` reaches the limit
    (``digests.send.MAX_MAIL_ATTEMPTS``); ``next_attempt_at`` NULL means given up.
    A row goes with its subscriber."""
    db.executescript(
        """
        CREATE TABLE mail_owed (
            subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('confirm', 'welcome')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            last_error TEXT,
            PRIMARY KEY (subscriber_id, kind)
        ) WITHOUT ROWID;
        CREATE INDEX mail_owed_due ON mail_owed(next_attempt_at);
        """
    )
