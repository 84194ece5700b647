"""The ``aggregator`` command: a thin skin over the library.

Every command takes ``--config PATH`` (or $AGGREGATOR_CONFIG). Errors the product
raises on purpose end the command with one line on stderr and exit status 1.
"""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__
from .clock import system_clock as now
from .config import Settings, config_path, load, write_starter
from .errors import AggregatorError, InvalidSubscription, NotFound, SourceError, StoreError
from .store import Store
from .store import feeds as feed_rows
from .terminal import OutputError, Terminal, WarningLines

# Each command imports what only it uses (the poll pipeline, search, OPML, the web
# stack) where it runs: `aggregator poll` should not pay for `aggregator search`.
if TYPE_CHECKING:
    from .models import PollSummary

ID = click.IntRange(1, 2**63 - 1)  # what SQLite can hold as an id (a signed 64-bit integer)
out = Terminal()
err = Terminal(stderr=True)


class App:
    """What a command needs: the settings, loaded from the --config option on first use
    (a read), and the database, opened explicitly by ``open_store()`` (a write)."""

    def __init__(self, config: str | None) -> None:
        self.config = config
        self._settings: Settings | None = None
        self._store: Store | None = None
        self.log_format = "text"

    def use_config(self, config: str) -> None:
        """A --config given after the command name, before anything was loaded."""
        assert self._settings is None
        self.config = config

    @property
    def settings(self) -> Settings:
        """The settings, read on first use from the --config file (else $AGGREGATOR_CONFIG,
        else the bundled one); raises ConfigError naming the file and setting.
        """
        if self._settings is None:
            self._settings = load(self.config)
        return self._settings

    def open_store(self, *, create: bool = True) -> Store:
        """The site's database, opened on the first call: created or migrated, and the
        feeds named in the configuration added to it (a write). Later calls return the
        same Store. Raises StoreError when the database cannot be opened, and NotFound
        when it does not exist yet and ``create`` is false (commands that only read:
        a mistyped path must not look like a healthy, empty site)."""
        if self._store is None:
            path = self.settings.database
            if not create and not path.exists():
                raise NotFound(
                    f"no database at {path} yet (aggregator init or aggregator run creates it)",
                    what="database",
                    key=str(path),
                )
            from .sources import sync_configured_feeds

            self._store = Store.open(self.settings.database)
            try:
                sync_configured_feeds(self._store, self.settings, now())
            except StoreError as error:  # the command may not need them: go on, say so
                err.error(f"configured feeds not added: {error}", label="warning")
        return self._store

    def close(self) -> None:
        """Close the database if a command opened it (called when the command ends)."""
        if self._store is not None:
            self._store.close()


def _read_file(app: App, path: Path) -> bytes:
    """A file the user named; never the database's own (only SQLite touches those)."""
    app.open_store().refuse_own(path, "read")
    try:
        return path.read_bytes()
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error.strerror}") from None


def _write_file(app: App, path: Path, data: bytes) -> None:
    """Write a file the user named; never over the database or its -wal/-shm."""
    app.open_store().refuse_own(path, "write")
    try:
        path.write_bytes(data)
    except OSError as error:
        raise AggregatorError(f"cannot write {path}: {error.strerror}") from None


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """While the block runs, SIGTERM or SIGINT calls ``stop`` (the work in flight
    finishes, the rest is left) instead of ending the process; a second one acts as it
    would have."""
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    before = {signum: signal.getsignal(signum) for signum in stop_signals}

    def requested(signum: int, frame: object) -> None:
        for number, handler in before.items():
            signal.signal(number, handler)
        stop()

    for signum in stop_signals:
        signal.signal(signum, requested)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except AggregatorError as error:
        _fail(str(error))


def _fail(message: str, status: int = 1) -> NoReturn:
    """One error line on stderr, then a non-zero exit."""
    err.error(message)
    sys.exit(status)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 feed``, ``2 feeds``, ``0 feeds``."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Configuration file (default: $AGGREGATOR_CONFIG; in a checkout, config/default.toml).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="The service log (run, serve): one text line per event, or one JSON object.",
)
@click.version_option(__version__, prog_name="aggregator")
@click.pass_context
def cli(ctx: click.Context, config: str | None, log_format: str) -> None:
    """Cross-blog aggregator and digest mailer."""
    app = App(config)
    app.log_format = log_format
    ctx.obj = app
    ctx.call_on_close(app.close)


def _app(ctx: click.Context) -> App:
    app = ctx.find_object(App)
    assert app is not None
    return app


@cli.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The site's configuration file (same as the --config before the command).",
)
@click.pass_context
def init(ctx: click.Context, config_file: Path | None) -> None:
    """Set up a site: write a commented starter configuration if the file does not exist
    yet, then create or migrate its database and add the configured feeds."""
    with _one_line_errors():
        app = _app(ctx)
        if config_file is not None:
            app.use_config(str(config_file))
        path = config_path(app.config)
        if not path.exists():
            write_starter(path)
            out.line(f"Wrote a starter configuration to {path}; edit it to add feeds.")
        store = app.open_store()
        problem = store.check()
        if problem:
            raise StoreError(problem, path=str(store.path))
        count = len(feed_rows.list_feeds(store.db))
        out.line(f"Database ready: {store.path} ({plural(count, 'feed')})")


# --- feeds ---------------------------------------------------------------------------


@cli.group()
def feeds() -> None:
    """List, add, remove, import and export feed sources."""


@feeds.command("list")
@click.pass_context
def feeds_list(ctx: click.Context) -> None:
    """Show every feed with its health."""
    with _one_line_errors():
        rows = feed_rows.list_feeds(_app(ctx).open_store(create=False).db)
        cells = []
        for feed in rows:
            state = "enabled" if feed.enabled else f"disabled: {feed.disabled_reason or ''}"
            if feed.enabled and feed.last_error:
                state = f"failing: {feed.last_error}"
            cells.append(
                (
                    str(feed.id),
                    feed.title or "—",
                    feed.url,
                    state,
                    _when(feed.last_polled_at),
                    str(feed.error_count),
                    _when(feed.next_poll_at),
                )
            )
        out.table(
            plural(len(rows), "feed"),
            [
                ("id", "id"),
                ("title", "text"),
                ("url", "id"),
                ("state", "text"),
                ("last poll", "text"),
                ("errors", "num"),
                ("next poll", "text"),
            ],
            cells,
        )


@cli.command(
    "search",
    # "-word" excludes a word, so single-dash words are query text (click would read
    # "-hello" as -h); "--word" is a mistyped option.
    context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]},
)
@click.argument("words", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--newest", is_flag=True, help="Newest first instead of best match first.")
@click.option("--source", "source_id", type=ID, default=None, help="Only this feed id.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.pass_context
def search_command(
    ctx: click.Context, words: Sequence[str], newest: bool, source_id: int | None, limit: int
) -> None:
    """Search the stored posts, as the web page does: plain words all match, "a phrase",
    prefix*, -exclude, source:word."""
    from .store import search, timeline

    if list(words) == ["-h"]:  # alone, as in every other command: the help
        click.echo(ctx.get_help())
        ctx.exit()
    # Words after a literal "--" are text to search for, whatever they look like.
    checked = words if "--" not in sys.argv else words[: max(0, len(words) - _after_dashes())]
    mistyped = next((word for word in checked if word.startswith("--")), None)
    if mistyped is not None:
        raise click.UsageError(
            f"no such option: {mistyped} (the options are --newest, --source, --limit)", ctx
        )
    with _one_line_errors():
        db = _app(ctx).open_store(create=False).db
        query = search.parse_query(" ".join(words))
        if query.fts is None:  # as the web page: not an error, nothing to look for
            out.line("No words to look for (only exclusions or symbols): nothing found.")
            return
        if newest:
            upto = search.newest_id(db)
            matches = search.count_matches(db, query, feed_id=source_id, upto=upto)
            found = timeline.timeline_page(db, feed_id=source_id, search=query.fts, limit=limit)
            entries = found.entries
        else:
            ranked = search.ranked_page(db, query, feed_id=source_id, limit=limit)
            matches, entries = ranked.matches, ranked.entries
        if not entries:
            out.line("No stored post matches.")
            return
        about = "" if matches.exact else "about "
        order = "newest first" if newest else "best match first"
        out.table(
            f"{about}{matches.count} matching, {order}",
            [("id", "id"), ("published", "text"), ("source", "text"), ("title", "text")],
            [(str(e.id), _when(e.published), e.feed_title, e.title or "—") for e in entries],
        )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "—"


@feeds.command("add")
@click.argument("url")
@click.option("--title", default=None, help="Name to show instead of the feed's own title.")
@click.option(
    "--discover/--no-discover",
    default=True,
    help="Fetch the URL first; for a web page, add the feed it links (default on).",
)
@click.pass_context
def feeds_add(ctx: click.Context, url: str, title: str | None, discover: bool) -> None:
    """Add a feed by URL (a blog's home page works too)."""
    from .models import FeedSource
    from .sources import add_source

    with _one_line_errors():
        app = _app(ctx)
        if discover:
            import asyncio

            url = asyncio.run(_discover(app.settings, url))
        feed, created = add_source(
            app.open_store(), FeedSource(url=url, title=title), origin="cli", now=now()
        )
        if created:
            out.line(f"Added feed {feed.id}: {feed.url}")
        else:
            out.line(f"Already there as feed {feed.id}: {feed.url}")


async def _discover(settings: Settings, url: str) -> str:
    from .fetch import FeedFetcher
    from .sources import discover_feed_url

    async with FeedFetcher(settings.fetch) as fetcher:
        return await discover_feed_url(fetcher, url, settings)


@feeds.command("remove")
@click.argument("feed")
@click.pass_context
def feeds_remove(ctx: click.Context, feed: str) -> None:
    """Remove a feed (by id or URL) and its entries."""
    from .sources import remove_source

    with _one_line_errors():
        app = _app(ctx)
        removed = remove_source(app.open_store(), feed)
        out.line(f"Removed feed {removed.id} and its posts: {removed.url}")
        if removed.url in {f.url for f in app.settings.feeds}:
            err.line(
                "note: this feed is listed in the config file and comes back at the next start "
                "unless it is removed there too"
            )


@feeds.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def feeds_import(ctx: click.Context, file: Path) -> None:
    """Add every feed an OPML file lists."""
    from .sources import import_opml

    with _one_line_errors():
        app = _app(ctx)
        report = import_opml(app.open_store(), _read_file(app, file), name=str(file), now=now())
        for problem in report.problems:
            err.line(f"skipped: {problem}")
        out.line(
            f"Imported {file}: {len(report.added)} added, {len(report.known)} already there, "
            f"{len(report.problems)} skipped"
        )


@feeds.command("export")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_context
def feeds_export(ctx: click.Context, out_file: Path | None) -> None:
    """Write the feed list as OPML (to stdout, or --out FILE)."""
    from .sources import export_opml

    with _one_line_errors():
        app = _app(ctx)
        document = export_opml(feed_rows.list_feeds(app.open_store(create=False).db), now=now())
        if out_file is None:
            click.echo(document, nl=False)
        else:
            _write_file(app, out_file, document.encode("utf-8"))
            err.line(f"Wrote {out_file}")


# --- polling -------------------------------------------------------------------------


@cli.command()
@click.option("--due", is_flag=True, help="Only the feeds whose next poll time has come.")
@click.option("--feed", "feed_ids", multiple=True, type=ID, help="Only this feed id (repeatable).")
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="List every feed polled, also those with nothing new (by default only counted).",
)
@click.pass_context
def poll(ctx: click.Context, due: bool, feed_ids: Sequence[int], every: bool) -> None:
    """Poll the feeds once and print a summary: a row for each feed with new, updated or
    cross-posted entries, an error or a warning, then the totals."""
    with _one_line_errors():
        app = _app(ctx)
        unknown = [i for i in feed_ids if feed_rows.get_feed(app.open_store().db, i) is None]
        if unknown:
            raise NotFound(
                f"no feed {', '.join(map(str, unknown))} (aggregator feeds list shows them)",
                what="feed",
                key=str(unknown[0]),
            )
        summaries = _poll(app, due=due, feed_ids=list(feed_ids) or None, every=every)
        _exit_for(summaries)


def _poll(
    app: App, *, due: bool, feed_ids: list[int] | None, every: bool = False
) -> list[PollSummary]:
    import asyncio

    from .pipeline import poll_feeds

    store = app.open_store()
    with err.progress("polling") as progress:

        def started(total: int) -> None:
            progress.update(total=total)

        def finished(summary: PollSummary) -> None:
            progress.update(advance=1, item=summary.title)

        summaries = asyncio.run(
            poll_feeds(
                app.settings,
                store,
                feed_ids=feed_ids,
                due_only=due,
                on_start=started,
                on_result=finished,
            )
        )
    _print_summary(summaries, every=every)
    return summaries


def _has_news(summary: PollSummary) -> bool:
    """Whether a poll did more than find its feed as it was (a row of the summary)."""
    quiet = summary.status == "not_modified" or (
        summary.status == "ok" and not (summary.new or summary.updated or summary.duplicates)
    )
    return not quiet or bool(summary.error or summary.warnings)


def _after_dashes() -> int:
    """How many command-line words follow the first literal ``--``."""
    return len(sys.argv) - sys.argv.index("--") - 1


def _print_summary(summaries: list[PollSummary], *, every: bool) -> None:
    """The poll's table (every feed, or those with news: see ``_has_news``), the totals,
    and each error again on stderr."""
    if not summaries:
        out.line("No feeds to poll.")
        return
    listed = summaries if every else [s for s in summaries if _has_news(s)]
    cells = [
        (
            str(summary.feed_id),
            summary.title,
            _status_label(summary.status),
            str(summary.new),
            str(summary.updated),
            str(summary.duplicates),
            "; ".join(note for note in (summary.error, *summary.warnings) if note),
        )
        for summary in sorted(listed, key=lambda s: s.feed_id)
    ]
    if cells:
        out.table(
            "Poll summary",
            [
                ("feed", "id"),
                ("title", "text"),
                ("status", "text"),
                ("new", "num"),
                ("updated", "num"),
                ("cross-posts", "num"),
                ("errors and warnings", "text"),
            ],
            cells,
        )
    totals = {
        "new": sum(s.new for s in summaries),
        "updated": sum(s.updated for s in summaries),
        "duplicates": sum(s.duplicates for s in summaries),
        "failed": sum(1 for s in summaries if s.status in ("error", "disabled")),
    }
    unlisted = len(summaries) - len(listed)
    out.line(
        f"{plural(len(summaries), 'feed')}: {totals['new']} new, {totals['updated']} updated, "
        f"{plural(totals['duplicates'], 'cross-post')}, {totals['failed']} failed"
        + (f"; {unlisted} with nothing new (aggregator poll --all lists them)" if unlisted else "")
    )
    for summary in summaries:
        if summary.error:
            err.error(summary.error)


def _status_label(status: str) -> str:
    return {"not_modified": "not modified"}.get(status, status)


def _exit_for(summaries: list[PollSummary]) -> None:
    failure = next((s.store_error for s in summaries if s.store_error), None)
    if failure:
        err.error(f"poll stopped, the database failed: {failure}")
        sys.exit(1)
    if summaries and all(s.status in ("error", "disabled") for s in summaries):
        sys.exit(2)


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: web.host).")
@click.option(
    "--port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Port to listen on (default: web.port).",
)
@click.option("--once", is_flag=True, help="Poll every feed once, print the summary and exit.")
@click.pass_context
def run(ctx: click.Context, host: str | None, port: int | None, once: bool) -> None:
    """Run the service: poll feeds and send digests on schedule, beside the web app.

    SIGTERM or Ctrl-C stop it: the unit of work in flight completes, the exit status is 0.
    """
    from .scheduler import listen, run_service  # here: the other commands need no web stack

    with _one_line_errors():
        app = _app(ctx)
        settings = app.settings
        # Bound before anything is said, added or started: a port in use is one line.
        listener = None if once else listen(host or settings.web.host, port or settings.web.port)
        out.line(f"Database: {app.open_store().path}")
        if listener is None:
            _exit_for(_poll(app, due=False, feed_ids=None))
            return
        if settings.service.demo_subscriber:
            _add_demo_subscriber(app)
        app.close()
        where = f"http://{host or settings.web.host}:{port or settings.web.port}/"
        mail = (
            f"SMTP {settings.mail.smtp.host}"
            if settings.mail.smtp
            else f"the outbox {settings.mail.outbox}"
        )
        out.line(f"Starting: the timeline at {where}; digests go to {mail}. Ctrl-C stops.")
        run_service(settings, listener=listener, log_format=app.log_format)


def _add_demo_subscriber(app: App) -> None:
    """The configured demo address, confirmed, so a fresh install shows a digest at once.

    Added once per address, ever (the database remembers it): one that was removed or
    unsubscribed keeps the state it chose across restarts, and a read-only database or
    a lock held elsewhere only costs the demo address, not the start."""
    from .subscriptions import seed_configured_subscriber

    store = app.open_store()
    email = app.settings.service.demo_subscriber
    assert email is not None
    if store.readonly:
        return
    try:
        added = seed_configured_subscriber(store, email=email, now=now())
    except (StoreError, InvalidSubscription) as error:
        err.error(f"demo subscriber {email} not added: {error}", label="warning")
        return
    if added is not None:
        out.line(f"Demo subscriber: {email} (a daily digest; a welcome mail in the outbox)")


@cli.command()
@click.option("--host", default=None, help="Address to listen on (default: web.host).")
@click.option(
    "--port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Port to listen on (default: web.port).",
)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the web timeline, Atom feed and admin pages."""
    import uvicorn  # imported here: the other commands need no web stack

    from .scheduler import configure_logging, keep_signals_for_graceful_exit, listen
    from .web import create_app
    from .web.security import RedactTokens

    with _one_line_errors():
        app = _app(ctx)
        settings = app.settings
        store = app.open_store()
        host = host or settings.web.host
        port = port or settings.web.port
        listener = listen(host, port)  # a port in use is one line, before anything starts
        admin = "on" if settings.web.admin_password else "off: set AGGREGATOR_ADMIN_PASSWORD"
        err.line(f"Serving {settings.database} on http://{host}:{port}/ (admin {admin})")
        if store.readonly:
            err.line(
                "The database is read-only: pages are served; sign-ups, preference changes "
                "and admin changes answer with an error."
            )
        # The same one-line events as `run` (or JSON with --log-format json), not
        # uvicorn's own format.
        configure_logging(settings.log_level, app.log_format)
        config = uvicorn.Config(
            create_app(settings, store=store),
            host=host,
            port=port,
            log_config=None,
            log_level=settings.log_level,
            server_header=False,
            proxy_headers=False,  # the app trusts [web] trusted_proxies only
        )
        # Capability tokens (confirm, preferences, unsubscribe, archive links) stay out
        # of the access log.
        logging.getLogger("uvicorn.access").addFilter(RedactTokens())
        # SIGTERM and Ctrl-C are a requested stop: uvicorn drains, then exit status 0.
        keep_signals_for_graceful_exit()
        uvicorn.Server(config).run(sockets=[listener])


# --- subscribers and digests ---------------------------------------------------------


@cli.group()
def subscribers() -> None:
    """List, add and remove digest subscribers."""


@subscribers.command("list")
@click.pass_context
def subscribers_list(ctx: click.Context) -> None:
    """Show every subscriber with their state, cadence and sources."""
    from .store import digests as digest_rows
    from .store import subscribers as subscriber_rows

    with _one_line_errors():
        db = _app(ctx).open_store(create=False).db
        rows = subscriber_rows.list_all(db)
        # A digest actually sent, not when a digest run last looked at them (which a
        # confirmation sets too): "—" for one who never received a digest.
        last_sent = digest_rows.last_sent_times(db)
        owed = subscriber_rows.owed_mail(db)
        cells = []
        # A column for the confirmation and welcome mails still owed, when there are any.
        shown = {row.id for row in rows} & set(owed)
        names = {feed.id: feed.title or feed.url for feed in feed_rows.list_feeds(db)}
        for row in rows:
            sources = (
                "all"
                if row.feed_ids is None
                else ", ".join(
                    f"{names[i]} ({i})" if i in names else str(i) for i in sorted(row.feed_ids)
                )
            )
            cell = [
                str(row.id),
                row.email,
                row.status,
                row.cadence,
                sources or "none",
                _when(row.confirmed_at or row.created_at),
                _when(last_sent.get(row.id)),
            ]
            if shown:
                cell.append("; ".join(_owed_words(*m) for m in owed.get(row.id, [])) or "—")
            cells.append(cell)
        columns = [
            ("id", "id"),
            ("email", "id"),
            ("status", "text"),
            ("cadence", "text"),
            ("sources", "text"),
            ("since", "text"),
            ("last digest", "text"),
        ]
        out.table(
            plural(len(rows), "subscriber"),
            [*columns, ("mail owed", "text")] if shown else columns,
            cells,
        )


def _owed_words(kind: str, attempts: int, retry_at: datetime | None, error: str | None) -> str:
    """ "confirmation pending (1 attempt, next 2026-05-03 07:05)", or "... failed: why"."""
    what = {"confirm": "confirmation", "welcome": "welcome"}.get(kind, kind)
    tries = plural(attempts, "attempt")
    if retry_at is None:
        return f"{what} failed ({tries}): {error or 'unknown error'}"
    return f"{what} pending ({tries}, next {_when(retry_at)})"


@subscribers.command("add")
@click.argument("email")
@click.option("--pending", is_flag=True, help="Send a confirmation link instead of confirming now.")
@click.option(
    "--cadence",
    type=click.Choice(["daily", "weekly"]),
    default=None,
    help="How often digests go out. A new address gets weekly unless named; an address "
    "already there keeps its cadence unless named.",
)
@click.option(
    "--now",
    "first_digest_now",
    is_flag=True,
    help="First digest at the next run that finds something new, not the next scheduled time.",
)
@click.pass_context
def subscribers_add(
    ctx: click.Context, email: str, pending: bool, cadence: str | None, first_digest_now: bool
) -> None:
    """Add an address. Confirmed at once (you vouch for it) unless --pending.

    Adding an address already there changes only what the command names (its cadence
    with --cadence; confirms it unless --pending) and says what changed."""
    from .digests.send import send_welcomes
    from .mail import open_sender
    from .subscriptions import add_or_update_by_operator, deliver_owed, links_for

    with _one_line_errors():
        app = _app(ctx)
        store, settings = app.open_store(), app.settings
        done = add_or_update_by_operator(
            store,
            settings,
            links_for(store, settings),
            email=email,
            cadence=cadence,
            pending=pending,
            first_digest_now=first_digest_now,
            now=now(),
        )
        subscriber = done.subscriber
        if not done.created:
            what = "; ".join(done.changes) if done.changes else "nothing changed"
            out.line(f"Already subscriber {subscriber.id}: {subscriber.email}: {what}")
        problems: list[str] = []
        sender = open_sender(settings.mail.smtp, settings.mail.outbox)
        try:
            if done.message is not None:
                problem = deliver_owed(store, sender, done.message, subscriber.id, "confirm")
                if problem:
                    _fail(f"confirmation to {subscriber.email} not sent (retried later): {problem}")
            else:
                problems = send_welcomes(
                    store, sender, settings, now(), subscriber_ids=[subscriber.id]
                )
        finally:
            sender.close()
        if done.message is not None:
            out.line(f"Confirmation sent to {subscriber.email} (subscriber {subscriber.id})")
        else:
            out.line(
                f"Subscriber {subscriber.id}: {subscriber.email} is {subscriber.status}, "
                f"{subscriber.cadence}"
            )
            for problem in problems:
                err.error(f"welcome mail not sent: {problem}", label="warning")


@subscribers.command("remove")
@click.argument("who", metavar="EMAIL_OR_ID")
@click.pass_context
def subscribers_remove(ctx: click.Context, who: str) -> None:
    """Forget a subscriber (an address, or the id `subscribers list` shows) and their
    digests."""
    from .subscriptions import remove_by_operator

    with _one_line_errors():
        removed = remove_by_operator(_app(ctx).open_store(), who)
        if removed is None:
            _fail(f"no subscriber {who} (give an address or an id from `subscribers list`)")
        out.line(f"Removed {removed}")


@cli.group()
def digest() -> None:
    """Preview and send the email digests."""


@digest.command("preview")
@click.option("--subscriber", "email", default=None, help="Whose digest (default: every source).")
@click.option(
    "--last",
    is_flag=True,
    help="The last digest that subscriber was sent (needs --subscriber).",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to FILE: .html the HTML part, .txt the text part, else the whole message.",
)
@click.pass_context
def digest_preview(
    ctx: click.Context, email: str | None, last: bool, out_file: Path | None
) -> None:
    """Render the digest that would go out now, without sending or moving anything.

    When nothing is new since the subscriber's last digest, shows that last digest
    instead (or, if none was sent yet, a digest of everything stored in their
    sources), with a line that says which it is. --last shows the last one sent."""
    from .digests.preview import preview_for
    from .mail import message_bytes

    with _one_line_errors():
        app = _app(ctx)
        shown = preview_for(app.open_store(), app.settings, now(), email=email, last=last)
        if shown is None:
            whose = f"{email}'s sources" if email else "any source"
            out.line(
                f"Nothing to preview: no posts stored in {whose} yet "
                "(`aggregator poll` fetches them). Nothing was sent or changed."
            )
            return
        message = shown.message
        if out_file is None:
            out.line(f"# {shown.note}\n\nSubject: {message.subject}\n")
            out.line(message.text.removesuffix("\n"))
            return
        suffix = out_file.suffix.lower()
        if suffix in (".html", ".htm"):
            data = (message.html or "").encode("utf-8")
        elif suffix == ".txt":
            data = message.text.encode("utf-8")
        else:
            data = message_bytes(message, linesep="\n")
        _write_file(app, out_file, data)
        err.line(f"{shown.note}\nWrote {out_file}: {message.subject}")


@digest.command("send")
@click.option("--due", is_flag=True, help="Only subscribers whose cadence says it is time.")
@click.option("--dry-run", is_flag=True, help="Say what would be sent; send and change nothing.")
@click.pass_context
def digest_send(ctx: click.Context, due: bool, dry_run: bool) -> None:
    """Build the digests of what is new and send every pending one."""
    from .digests.build import build_pending, plan_all
    from .digests.send import ANOTHER_SENDER, STOPPED_BY_SIGNAL, SendProgress, send_pending
    from .mail import open_sender

    with _one_line_errors():
        app = _app(ctx)
        store, settings = app.open_store(), app.settings
        if dry_run:
            count = stories = empty = 0
            for _, plan in plan_all(store, settings, now(), due_only=due):
                if plan is None:
                    empty += 1
                else:
                    count += 1
                    stories += plan.story_count
            out.line(
                f"Would build {plural(count, 'digest')} ({plural(stories, 'story', 'stories')}"
                f"; {empty} with nothing new); nothing was changed."
            )
            return
        built = build_pending(store, settings, now(), due_only=due)
        sender = open_sender(settings.mail.smtp, settings.mail.outbox)
        try:
            with err.progress("sending") as progress:

                def advance(event: SendProgress) -> None:
                    progress.update(total=event.total, completed=event.done, item=event.outcome)

                stop = threading.Event()
                with _stop_on_signals(stop.set):
                    report = send_pending(store, sender, settings, now, advance, stop=stop)
        finally:
            sender.close()
        where = (
            f"{settings.mail.smtp.host}:{settings.mail.smtp.port}"
            if settings.mail.smtp
            else str(settings.mail.outbox)
        )
        out.line(
            f"Built {plural(built.built, 'digest')} ({built.empty} with nothing new"
            + (f", {built.not_due} not due" if due else "")
            + f"). Sent {report.sent} to {where}; {report.retried} to retry, "
            f"{report.bounced} bounced, {report.failed} failed."
        )
        for problem in report.errors[-5:]:
            err.error(problem)
        if report.stopped in (STOPPED_BY_SIGNAL, ANOTHER_SENDER):
            # Asked for, or the service's job is sending right now (a cron `digest send
            # --due` beside it): not an error.
            err.line(report.stopped)
        elif report.stopped:
            err.error(f"stopped: {report.stopped}")
            sys.exit(2)


@cli.command()
@click.argument("target", type=click.Path(dir_okay=False, writable=True, path_type=Path))
@click.pass_context
def backup(ctx: click.Context, target: Path) -> None:
    """Write a consistent copy of the database to TARGET, safe while the service runs.

    The copy is checked (integrity_check) and then renamed into place, so TARGET is
    never half written. Restore by stopping the service and copying TARGET back.
    """
    with _one_line_errors():
        store = _app(ctx).open_store(create=False)
        size = store.backup(target)
        out.line(f"Backed up {store.path} to {target} ({size:,} bytes)")


@cli.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """What is due next, feed health and pending digests."""
    from .store.metrics import snapshot

    with _one_line_errors():
        app = _app(ctx)
        try:
            store = app.open_store(create=False)
        except StoreError as error:  # damaged, not SQLite, unreadable: the status line says so
            out.line(f"Database: {app.settings.database}: {error.reason}")
            ctx.exit(1)
        db = store.db
        problem = store.check()
        out.line(f"Database: {store.path}: {problem or 'ok'}")
        data = snapshot(db)
        feeds_state = ", ".join(f"{n} {state}" for state, n in sorted(data.feeds.items()))
        out.line(f"Feeds: {feeds_state or 'none'}")
        out.line(f"Entries: {data.entries} ({data.stories} stories)")
        out.line(f"Last successful poll: {_when(data.last_successful_poll)}")
        out.line(f"Next poll due: {_when(data.next_poll) if data.next_poll else 'now'}")
        subs = ", ".join(f"{n} {state}" for state, n in sorted(data.subscribers.items()))
        out.line(f"Subscribers: {subs or 'none'}")
        waiting = store.spooled_unsubscribes()
        if waiting:  # the database could not be written: kept, applied by the next write
            out.line(f"Unsubscribes kept for the next write: {waiting}")
        pending = data.digests.get("pending", 0)
        out.line(
            f"Digests: {data.digests.get('sent', 0)} sent, {pending} pending, "
            f"{data.digests.get('failed', 0)} failed; last sent {_when(data.last_digest_sent)}"
        )
        if pending:
            out.line(f"Next send attempt: {_when(data.next_digest_attempt)}")
        failing = [f for f in feed_rows.list_feeds(db) if f.enabled and f.error_count]
        for feed in failing:
            reason = feed.last_error or ""
            said = reason if reason.startswith(f"{feed.url}: ") else f"{feed.url}: {reason}"
            out.line(f"failing: feed {feed.id} {said}")


_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG})
"""Why writing the output can fail where the command itself went well."""


def main(argv: list[str] | None = None) -> Any:
    """The command, with click's own errors (unknown option, missing argument) also one
    ``error:`` line and a non-zero exit, like the product's."""
    args = sys.argv[1:] if argv is None else argv
    for position, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes the system could not decode (surrogateescape)
            err.error(f"argument {position} is not valid UTF-8 text: {arg!a}")
            sys.exit(2)
    root = logging.getLogger()
    if not root.handlers:  # `run` and `serve` replace it with the service log
        root.addHandler(WarningLines(err))
    try:
        result = cli.main(args=args, prog_name="aggregator", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as error:  # `aggregator feeds`: its help
        assert error.ctx is not None
        err.line(error.ctx.get_help())
        sys.exit(2)
    except click.ClickException as error:
        hint = ""
        if isinstance(error, click.UsageError) and error.ctx is not None:
            hint = f" (see '{error.ctx.command_path} --help')"
        err.error(f"{error.format_message()}{hint}")
        sys.exit(error.exit_code or 1)
    except (click.Abort, KeyboardInterrupt, EOFError):
        err.error("interrupted")
        sys.exit(130)
    except BrokenPipeError:  # `aggregator feeds list | head`: the reader left
        if sys.stderr is not None:
            sys.stderr.close()
        sys.exit(1)
    except OutputError as error:  # the work may be done, but what it said is lost
        with suppress(OutputError, BrokenPipeError):
            err.error(str(error))
        sys.exit(1)
    except OSError as error:  # click's own output (--help, --version) on a full disk
        if error.errno not in _OUTPUT_ERRNOS:
            raise
        with suppress(OutputError, BrokenPipeError):
            err.error(f"cannot write to standard output: {error.strerror}")
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)


def script_main() -> NoReturn:
    """The ``aggregator`` command itself (the console script, ``python -m aggregator``):
    ``main``, then the end of the process.

    A one-shot command spends 40 to 60 ms after its work is done tearing down the
    interpreter's 400-odd modules. Nothing of that is needed once the command has
    returned: its database is closed (``App.close``), so after the output streams are
    flushed and the exit handlers have run (``logging``'s, ``multiprocessing``'s), the
    process ends at once with the command's status. While a thread of the command still
    runs, the interpreter exits as usual, waiting for it. In-process callers use ``main``.
    """
    try:
        main()
    except SystemExit as done:
        status = done.code
    else:
        status = 0
    if not isinstance(status, int) or _threads_left():
        sys.exit(status)
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started closed
            continue
        try:
            stream.flush()
        except BrokenPipeError:  # the reader left: main() has said so with the status
            pass
        except (OSError, ValueError):  # output lost: never a success (as Python exits)
            status = status or 120
    os._exit(status)


def _threads_left() -> bool:
    """Whether a thread the interpreter would wait for at exit is still running."""
    main_thread = threading.main_thread()
    return any(
        t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()
    )
