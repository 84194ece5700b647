"""Settings: read once from a TOML file and the environment into one frozen value.

No other module reads the environment. Every setting has a default, so a file holding
only ``database = "path/to/file.sqlite3"`` is valid; a wrong key, type or value stops the
program with one line naming the file, the key and what is wrong.

Relative paths in the file (database, outbox, feed snapshots) are relative to the
directory of the file itself, so a configuration works whatever the working directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import USER_AGENT
from .addresses import address_parts
from .errors import ConfigError
from .fetch_settings import FetchSettings
from .limits import ParseLimits
from .polling import PollPolicy
from .resources import is_checkout, resource_file
from .smtp_settings import MAX_CONNECTIONS, SmtpSettings
from .urls import USERINFO_REFUSED, feed_url, has_userinfo, is_http_url, without_userinfo

# Environment variable naming the configuration file when --config is not given.
ENV_CONFIG = "AGGREGATOR_CONFIG"
# Environment variable with the SMTP user name (secrets never live in the file; [mail]
# smtp_username may name a user too).
ENV_SMTP_USERNAME = "AGGREGATOR_SMTP_USERNAME"
ENV_SMTP_PASSWORD = "AGGREGATOR_SMTP_PASSWORD"  # noqa: S105 - a variable name, not a secret
ENV_ADMIN_PASSWORD = "AGGREGATOR_ADMIN_PASSWORD"  # noqa: S105
ENV_SECRET_KEY = "AGGREGATOR_SECRET_KEY"  # noqa: S105

# The bundled configuration: the two blogs from the snapshots in seeds/, the database
# and outbox in var/ beside config/. Only a checkout uses it when no file is named; an
# installed package has nowhere of its own to write, so it asks for a file instead.
DEFAULT_CONFIG = resource_file("config", "default.toml")
# The commented configuration ``aggregator init`` writes for a new site.
STARTER_CONFIG = resource_file("config", "starter.toml")

# Largest number any setting takes (1e6 minutes is about two years, 1e6 days 2,700
# years): larger ones overflow a time span.
MAX_NUMBER = 1e6
# Shortest $AGGREGATOR_SECRET_KEY accepted, in characters (a guessable key forges links).
MIN_SECRET_KEY_CHARS = 32
# Most parse worker processes ``[poll] parse_workers`` may ask for.
MAX_PARSE_WORKERS = 256

# Accepted values of ``log_level``, most verbose first (Python's level names, lower case).
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class ConfiguredFeed:
    """A ``[[feeds]]`` entry: the feed's http(s) URL, an optional title that replaces the
    feed's own, and its own poll interval (None: the policy's).
    """

    url: str
    title: str | None = None
    interval: timedelta | None = None
    # A local copy of the feed, fetched instead of ``url`` when snapshots are in use.
    snapshot: Path | None = None


PARSE_IN_PROCESS_BYTES = 1024 * 1024
"""Default of ``[poll] parse_in_process_kb`` (in bytes here): about where starting the
parse processes begins to pay on a 2-core machine (``python -m benchmarks.poll --only
crossover``: parsing in the command was as fast at 2 feeds, ~0.3 MB, and slower from 10
feeds, ~1.5 MB, on)."""


@dataclass(frozen=True, slots=True)
class PollSettings:
    """``[poll]``: the polling policy (intervals, backoff, Retry-After cap), parse worker
    processes (0: one per CPU core), the window within which the same story on two feeds
    is one story, and whether configured feeds are read from their local snapshots.
    """

    policy: PollPolicy = field(default_factory=PollPolicy)
    parse_workers: int = 0  # 0: one per CPU core
    # A one-shot poll parses this many bytes of documents itself before it starts the
    # parse processes (each costs ~0.3 s to start); the service always uses them.
    parse_in_process_bytes: int = PARSE_IN_PROCESS_BYTES
    cross_post_window: timedelta = timedelta(days=14)
    use_snapshots: bool = False


@dataclass(frozen=True, slots=True)
class WebSettings:
    """``[web]``: where the web app listens, the absolute public URL links in mails are
    built on (``base_url``), the admin password (from the environment only; None: admin
    pages off) and the reverse proxies whose forwarded headers are believed.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str = "http://127.0.0.1:8000"
    admin_password: str | None = None
    # Addresses (or networks) of reverse proxies whose X-Forwarded-For and
    # X-Forwarded-Proto are believed; none by default.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MailSettings:
    """``[mail]``: the From address (RFC 5322 mailbox), the Maildir outbox used when no SMTP
    server is configured, and the SMTP server (None: the outbox).
    """

    sender: str = "Blog digest <digest@localhost>"
    outbox: Path = Path("var/outbox")
    smtp: SmtpSettings | None = None


@dataclass(frozen=True, slots=True)
class DigestSettings:
    """``[digest]``: the time zone digests are scheduled and dated in, the local send time
    (HH:MM, 24-hour), the weekday of weekly digests, and how many stories one source may
    show in one digest.
    """

    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    daily_at: str = "07:00"
    weekly_day: str = "monday"
    max_entries_per_source: int = 20


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How often the long-running service looks for work (``aggregator run``)."""

    poll_tick: timedelta = timedelta(seconds=30)
    digest_tick: timedelta = timedelta(seconds=60)
    poll_batch: int = 64
    # Added as a confirmed subscriber at start, so a fresh install shows a digest at once.
    demo_subscriber: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process is configured with: one frozen value read once at start
    (``load``). ``config_path`` is the file it came from (None: built in code); paths in
    it are absolute.
    """

    config_path: Path | None
    database: Path
    log_level: str = "info"
    feeds: tuple[ConfiguredFeed, ...] = ()
    fetch: FetchSettings = field(default_factory=lambda: FetchSettings(user_agent=USER_AGENT))
    parse: ParseLimits = field(default_factory=ParseLimits)
    poll: PollSettings = field(default_factory=PollSettings)
    web: WebSettings = field(default_factory=WebSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    digest: DigestSettings = field(default_factory=DigestSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    secret_key: str | None = None


def config_path_from(
    explicit: str | Path | None, env: Mapping[str, str], *, checkout: bool | None = None
) -> Path:
    """The config file to use: the one named, else $AGGREGATOR_CONFIG, else (in a
    checkout) the bundled one."""
    if explicit:
        return Path(explicit)
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    if checkout is None:
        checkout = is_checkout()
    if not checkout:
        raise ConfigError(
            f"no configuration file: pass --config PATH or set {ENV_CONFIG}; "
            "`aggregator init --config PATH` writes a starter one"
        )
    return DEFAULT_CONFIG


def config_path(explicit: str | Path | None = None) -> Path:
    """The config file this process would use (see ``config_path_from``)."""
    return config_path_from(explicit, os.environ)


def write_starter(path: Path) -> None:
    """Write the commented starter configuration to ``path``, which must not exist yet.

    Its relative paths (database, outbox) are relative to the file, so the new site's
    data lands beside it.
    """
    text = STARTER_CONFIG.read_text(encoding="utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise ConfigError("already exists; not overwritten", path=str(path)) from None
    except OSError as error:
        raise ConfigError(f"cannot write: {error.strerror}", path=str(path)) from None


def _optional_text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def load_settings(path: Path, env: Mapping[str, str]) -> Settings:
    """Read the TOML file at ``path`` and the secrets in ``env`` into Settings.

    Raises ConfigError naming the file, the setting and what is wrong: no such file,
    unreadable, not TOML (TOML 1.0), or a setting missing, unknown, of the wrong type or out
    of range. A UTF-8 byte order mark at the start of the file is ignored.
    """
    try:
        # "utf-8-sig": a byte order mark some editors write first is not a TOML statement.
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(
            f"no such file (`aggregator init --config {path}` writes a starter one)",
            path=str(path),
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read: {error}", path=str(path)) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML: {error}", path=str(path)) from None
    return settings_from_mapping(raw, env=env, path=path)


def settings_from_mapping(
    raw: Mapping[str, Any], *, env: Mapping[str, str], path: Path | None = None
) -> Settings:
    """Settings from an already-parsed configuration (the TOML document as a mapping) and
    ``env``; relative paths are resolved against the directory of ``path`` (the current
    directory when None). Raises ConfigError as ``load_settings`` does.
    """
    reader = _Reader(raw, path=str(path) if path else "<config>")
    base_dir = path.resolve().parent if path else Path.cwd()

    database = reader.path("database", base_dir, required=True)
    if database.is_dir():
        raise ConfigError(
            f"is a folder; name the database file in it: {database}",
            path=reader.path_name,
            key="database",
        )
    log_level = reader.choice("log_level", LOG_LEVELS, "info")
    secret_key = env.get(ENV_SECRET_KEY) or None
    if secret_key is not None and len(secret_key.strip()) < MIN_SECRET_KEY_CHARS:
        raise ConfigError(
            f"must be at least {MIN_SECRET_KEY_CHARS} characters (it signs the links in "
            "emails); unset it to use the secret kept in the database",
            key=ENV_SECRET_KEY,
        )

    fetch_table = reader.table("fetch")
    defaults = FetchSettings(user_agent=USER_AGENT)
    fetch = FetchSettings(
        user_agent=_header_text(fetch_table, "user_agent", defaults.user_agent),
        connect_timeout=fetch_table.number("connect_timeout", defaults.connect_timeout, low=0.1),
        read_timeout=fetch_table.number("read_timeout", defaults.read_timeout, low=0.1),
        total_timeout=fetch_table.number("total_timeout", defaults.total_timeout, low=0.1),
        max_body_bytes=fetch_table.integer("max_body_bytes", defaults.max_body_bytes, low=1024),
        max_redirects=fetch_table.integer("max_redirects", defaults.max_redirects, low=0),
        max_connections=fetch_table.integer("max_connections", defaults.max_connections, low=1),
        max_per_host=fetch_table.integer("max_per_host", defaults.max_per_host, low=1),
        http2=fetch_table.boolean("http2", defaults.http2),
        ca_file=_optional_text(_ca_file(fetch_table, base_dir)),
        allow_private_addresses=fetch_table.boolean(
            "allow_private_addresses", defaults.allow_private_addresses
        ),
        allow_file_urls=fetch_table.boolean("allow_file_urls", defaults.allow_file_urls),
    )
    fetch_table.done()

    poll_table = reader.table("poll")
    policy_defaults = PollPolicy()
    policy = PollPolicy(
        interval=poll_table.minutes("interval_minutes", policy_defaults.interval),
        min_interval=poll_table.minutes("min_interval_minutes", policy_defaults.min_interval),
        backoff_base=poll_table.minutes("backoff_base_minutes", policy_defaults.backoff_base),
        backoff_cap=poll_table.minutes("backoff_cap_minutes", policy_defaults.backoff_cap),
        retry_after_cap=poll_table.minutes(
            "retry_after_cap_minutes", policy_defaults.retry_after_cap
        ),
    )
    poll = PollSettings(
        policy=policy,
        parse_workers=poll_table.integer("parse_workers", 0, low=0, high=MAX_PARSE_WORKERS),
        parse_in_process_bytes=1024
        * poll_table.integer("parse_in_process_kb", PARSE_IN_PROCESS_BYTES // 1024, low=0),
        cross_post_window=timedelta(
            days=poll_table.number("cross_post_window_days", 14.0, low=0.0)
        ),
        use_snapshots=poll_table.boolean("use_snapshots", False),
    )
    poll_table.done()

    limits_table = reader.table("limits")
    limit_defaults = ParseLimits()
    parse = ParseLimits(
        max_document_bytes=limits_table.integer(
            "max_document_bytes", limit_defaults.max_document_bytes, low=1024
        ),
        max_entries=limits_table.integer("max_entries", limit_defaults.max_entries, low=1),
        max_title_chars=limits_table.integer(
            "max_title_chars", limit_defaults.max_title_chars, low=10
        ),
        max_author_chars=limits_table.integer(
            "max_author_chars", limit_defaults.max_author_chars, low=10
        ),
        max_html_chars=limits_table.integer(
            "max_html_chars", limit_defaults.max_html_chars, low=100
        ),
    )
    limits_table.done()

    feeds = tuple(_read_feed(item, base_dir=base_dir) for item in reader.table_list("feeds"))
    seen: set[str] = set()
    for index, feed in enumerate(feeds):
        if feed.url in seen:  # normalised (``feed_url``): HTTP://Host/x is http://host/x
            raise ConfigError(
                f"{feed.url} is listed twice", path=reader.path_name, key=f"feeds[{index}].url"
            )
        seen.add(feed.url)
        if feed.snapshot is not None and _is_database_file(feed.snapshot, database):
            raise ConfigError(
                "is the database or one of its files; only SQLite may read those",
                path=reader.path_name,
                key=f"feeds[{index}].snapshot",
            )
        if poll.use_snapshots and feed.snapshot is not None and not feed.snapshot.is_file():
            raise ConfigError(
                f"no such file: {feed.snapshot} (snapshots are in use: [poll] use_snapshots)",
                path=reader.path_name,
                key=f"feeds[{index}].snapshot",
            )
    if poll.use_snapshots and any(feed.snapshot for feed in feeds):
        # Snapshots are local files: reading them needs file URLs.
        fetch = replace(fetch, allow_file_urls=True)

    web_table = reader.table("web")
    host = web_table.string("host", "127.0.0.1").strip()
    if not host or any(char.isspace() or char in "/@" for char in host):
        raise ConfigError(
            f"must be a host name or IP address to listen on, not {host!r}",
            path=reader.path_name,
            key="web.host",
        )
    port = web_table.integer("port", 8000, low=1, high=65535)
    netloc_host = f"[{host}]" if ":" in host else host  # an IPv6 address (RFC 3986 3.2.2)
    base_url = web_table.string("base_url", f"http://{netloc_host}:{port}").rstrip("/")
    if not is_http_url(base_url):
        raise ConfigError(
            "must be an absolute http(s) URL", path=reader.path_name, key="web.base_url"
        )
    if "@" in urlsplit(base_url).netloc:
        raise ConfigError(
            "must not hold a user name or password (it is written into every mail)",
            path=reader.path_name,
            key="web.base_url",
        )
    if urlsplit(base_url).path or urlsplit(base_url).query or urlsplit(base_url).fragment:
        # Pages link root-relative (/entries/1), so a prefix would only reach mail links.
        raise ConfigError(
            "must be the root of a host, without a path (the web pages are served from /); "
            f"got {base_url}",
            path=reader.path_name,
            key="web.base_url",
        )
    web = WebSettings(
        host=host,
        port=port,
        base_url=base_url,
        admin_password=env.get(ENV_ADMIN_PASSWORD) or None,
        trusted_proxies=_proxies(web_table),
    )
    web_table.done()

    mail_table = reader.table("mail")
    sender = mail_table.string("from", MailSettings().sender).strip()
    try:
        address_parts(sender)
    except ValueError:
        raise ConfigError(
            f'must be an email address, alone or as "Name <address>", not {sender!r}',
            path=reader.path_name,
            key="mail.from",
        ) from None
    outbox = mail_table.path("outbox", base_dir, default=Path("var/outbox"))
    smtp_host = mail_table.string("smtp_host", "").strip()
    if any(char.isspace() or char in "/@:" for char in smtp_host):
        raise ConfigError(
            f"must be a host name or IP address (the port is smtp_port), not {smtp_host!r}",
            path=reader.path_name,
            key="mail.smtp_host",
        )
    smtp: SmtpSettings | None = None
    security = mail_table.choice("smtp_security", ("starttls", "tls", "none"), "starttls")
    default_port = {"starttls": 587, "tls": 465, "none": 25}[security]
    smtp_port = mail_table.integer("smtp_port", default_port, low=1, high=65535)
    username = mail_table.string("smtp_username", "") or env.get(ENV_SMTP_USERNAME) or None
    connections = mail_table.integer("connections", 1, low=1, high=MAX_CONNECTIONS)
    if smtp_host:
        try:
            smtp = SmtpSettings(
                host=smtp_host,
                port=smtp_port,
                security=security,  # type: ignore[arg-type]
                username=username,
                password=env.get(ENV_SMTP_PASSWORD) or None,
                connections=connections,
            )
        except ConfigError as error:
            # SmtpSettings names its fields (smtp.host); the file names them mail.smtp_host.
            key = f"mail.{(error.key or 'smtp.host').replace('.', '_')}"
            raise ConfigError(error.reason, path=reader.path_name, key=key) from None
    mail_table.done()
    mail = MailSettings(sender=sender, outbox=outbox, smtp=smtp)

    digest_table = reader.table("digest")
    zone_name = digest_table.string("timezone", "UTC").strip()
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {zone_name!r}", path=reader.path_name, key="digest.timezone"
        ) from None
    daily_at = digest_table.string("daily_at", "07:00").strip()
    if not _is_clock_time(daily_at):
        raise ConfigError(
            f"{daily_at!r} is not a time of day like 07:00",
            path=reader.path_name,
            key="digest.daily_at",
        )
    digest = DigestSettings(
        timezone=zone,
        daily_at=daily_at,
        weekly_day=digest_table.choice(
            "weekly_day",
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
            "monday",
        ),
        max_entries_per_source=digest_table.integer("max_entries_per_source", 20, low=1),
    )
    digest_table.done()

    service_table = reader.table("service")
    service = ServiceSettings(
        poll_tick=timedelta(seconds=service_table.number("poll_tick_seconds", 30.0, low=0.05)),
        digest_tick=timedelta(seconds=service_table.number("digest_tick_seconds", 60.0, low=0.05)),
        poll_batch=service_table.integer("poll_batch", 64, low=1),
        demo_subscriber=_bare_address(service_table, "demo_subscriber"),
    )
    service_table.done()

    reader.done()
    return Settings(
        config_path=Path(reader.path_name) if path else None,
        database=database,
        log_level=log_level,
        feeds=feeds,
        fetch=fetch,
        parse=parse,
        poll=poll,
        web=web,
        mail=mail,
        digest=digest,
        service=service,
        secret_key=secret_key,
    )


def _proxies(reader: _Reader) -> tuple[str, ...]:
    """``[web] trusted_proxies``: IP addresses or networks, checked here, not at the first
    request."""
    values = reader._get("trusted_proxies", (list,), "a list of IP addresses", [], False)
    proxies = []
    for value in values:
        try:
            if not isinstance(value, str):
                raise ValueError
            text = value.strip()
            if "/" in text:
                proxies.append(str(ipaddress.ip_network(text, strict=False)))
            else:
                proxies.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise ConfigError(
                f"{value!r} is not an IP address or network",
                path=reader.path_name,
                key=reader.key("trusted_proxies"),
            ) from None
    return tuple(proxies)


def _header_text(reader: _Reader, name: str, default: str) -> str:
    """A string sent as an HTTP header value: not empty, printable ASCII (RFC 9110
    section 5.5: no control characters, which would end the header)."""
    value = reader.string(name, default).strip()
    if not value or not value.isascii() or not value.isprintable():
        raise reader._error(name, f"must be printable ASCII text, not {value!r}")
    return value


def _bare_address(reader: _Reader, name: str) -> str | None:
    """An optional email address without a display name (``""``: none)."""
    value = reader.string(name, "").strip()
    if not value:
        return None
    try:
        address_parts(value, allow_name=False)
    except ValueError:
        raise reader._error(
            name, f"must be an email address like ann@example.org, not {value!r}"
        ) from None
    return value


def _ca_file(reader: _Reader, base_dir: Path) -> Path | None:
    """``[fetch] ca_file``: a readable file of PEM certificates, checked now rather than
    at the first https feed (where it would fail every poll)."""
    path: Path | None = reader.path("ca_file", base_dir)
    if path is None:
        return None
    import ssl  # here: only a configuration naming a CA file pays for it

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise reader._error("ca_file", f"no such file: {path}") from None
    except IsADirectoryError:
        raise reader._error("ca_file", f"is a folder, not a PEM file: {path}") from None
    except (ssl.SSLError, ValueError):  # SSLError is an OSError: first
        raise reader._error(
            "ca_file", f"holds no PEM certificate (-----BEGIN CERTIFICATE-----): {path}"
        ) from None
    except OSError as error:
        raise reader._error("ca_file", f"cannot read {path}: {error.strerror}") from None
    return path


def _is_clock_time(value: str) -> bool:
    hours, _, minutes = value.partition(":")
    return (
        hours.isascii()
        and hours.isdigit()
        and minutes.isascii()
        and minutes.isdigit()
        and len(minutes) == 2
        and 0 <= int(hours) < 24
        and 0 <= int(minutes) < 60
    )


def _is_database_file(path: Path, database: Path) -> bool:
    sides = ("-wal", "-shm", "-journal", ".jobs.lock")
    names = [database, *(Path(f"{database}{side}") for side in sides)]
    return path.resolve() in {name.resolve() for name in names}


def _read_feed(reader: _Reader, *, base_dir: Path) -> ConfiguredFeed:
    written = reader.string("url", "", required=True).strip()
    if not is_http_url(written):
        raise ConfigError(
            f"{written!r} is not an absolute http(s) URL",
            path=reader.path_name,
            key=reader.key("url"),
        )
    if has_userinfo(written):
        raise ConfigError(
            f"{without_userinfo(written)}: {USERINFO_REFUSED}",
            path=reader.path_name,
            key=reader.key("url"),
        )
    url = feed_url(written)
    title = reader.string("title", "").strip() or None
    interval_minutes = reader.number("interval_minutes", 0.0, low=0.0)
    snapshot = reader.path("snapshot", base_dir, default=None)
    reader.done()
    return ConfiguredFeed(
        url=url,
        title=title,
        interval=timedelta(minutes=interval_minutes) if interval_minutes else None,
        snapshot=snapshot,
    )


T = TypeVar("T")


class _Reader:
    """Reads one TOML table, checking types and refusing unknown keys."""

    def __init__(self, raw: Mapping[str, Any], *, path: str, prefix: str = "") -> None:
        self.raw = raw
        self.path_name = path
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _error(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, path=self.path_name, key=self.key(name))

    def _get(
        self, name: str, kind: tuple[type, ...], kind_name: str, default: T, required: bool
    ) -> Any:
        self.used.add(name)
        if name not in self.raw:
            if required:
                # A misspelling of this key is the likelier mistake: name that.
                typo = difflib.get_close_matches(name, [str(k) for k in self.raw], n=1)
                if typo:
                    raise self._unknown(typo[0], name)
                raise self._error(name, "is required")
            return default
        value = self.raw[name]
        if isinstance(value, bool) and bool not in kind:
            raise self._error(name, f"must be {kind_name}, not {value!r}")
        if not isinstance(value, kind):
            raise self._error(name, f"must be {kind_name}, not {value!r}")
        return value

    def string(self, name: str, default: str, *, required: bool = False) -> str:
        return str(self._get(name, (str,), "a string", default, required))

    def boolean(self, name: str, default: bool) -> bool:
        return bool(self._get(name, (bool,), "true or false", default, False))

    def integer(
        self, name: str, default: int, *, low: int | None = None, high: int | None = None
    ) -> int:
        value = int(self._get(name, (int,), "a whole number", default, False))
        self._check_range(name, value, low, high)
        return value

    def number(self, name: str, default: float, *, low: float | None = None) -> float:
        value = float(self._get(name, (int, float), "a number", default, False))
        if not math.isfinite(value) or value > MAX_NUMBER:
            raise self._error(name, f"must be a number up to {MAX_NUMBER:.0e}, not {value!r}")
        self._check_range(name, value, low, None)
        return value

    def minutes(self, name: str, default: timedelta) -> timedelta:
        value = self.number(name, default.total_seconds() / 60, low=0.0)
        return timedelta(minutes=value)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(name, default).lower()
        if value not in options:
            raise self._error(name, f"must be one of {', '.join(options)}, not {value!r}")
        return value

    def path(
        self,
        name: str,
        base_dir: Path,
        *,
        default: Path | None = None,
        required: bool = False,
    ) -> Any:
        if name in self.raw and not str(self.raw[name]).strip():
            # An empty path would be the configuration's own folder: say so instead.
            hint = "leave the setting out for the default" if not required else "name a file"
            raise self._error(name, f"must not be empty; {hint}")
        value = self.string(name, "", required=required).strip()
        if not value:
            return (base_dir / default) if default is not None else None
        if "\0" in value:
            raise self._error(name, "must not hold a NUL character")
        return (base_dir / Path(value).expanduser()).resolve()

    def _check_range(self, name: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            raise self._error(name, f"must be at least {_number(low)}, not {_number(value)}")
        if high is not None and value > high:
            raise self._error(name, f"must be at most {_number(high)}, not {_number(value)}")

    def table(self, name: str) -> _Reader:
        value = self._get(name, (dict,), "a table", {}, False)
        return _Reader(value, path=self.path_name, prefix=f"{self.key(name)}.")

    def table_list(self, name: str) -> list[_Reader]:
        value = self._get(name, (list,), "an array of tables ([[feeds]])", [], False)
        readers = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self._error(name, f"item {index + 1} must be a table")
            readers.append(_Reader(item, path=self.path_name, prefix=f"{self.key(name)}[{index}]."))
        return readers

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            nearest = difflib.get_close_matches(unknown[0], sorted(self.used), n=1)
            raise self._unknown(unknown[0], nearest[0] if nearest else None)

    def _unknown(self, name: str, nearest: str | None) -> ConfigError:
        hint = f"; did you mean {self.key(nearest)!r}?" if nearest else ""
        return self._error(name, f"unknown setting{hint}")


def _number(value: float) -> str:
    """Whole numbers as whole numbers: 0, not 0.0; 2.5 stays 2.5."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load(explicit: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings for a process: the file named, else $AGGREGATOR_CONFIG, else the default.

    ``env`` defaults to the process environment; this is the one place it is read.
    """
    environment = os.environ if env is None else env
    return load_settings(config_path_from(explicit, environment), environment)
