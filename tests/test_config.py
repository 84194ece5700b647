"""Configuration: defaults, validation with one-line errors, environment secrets."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import certifi
import pytest

from aggregator.config import DEFAULT_CONFIG, config_path_from, load_settings
from aggregator.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aggregator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_database_alone_is_a_valid_config(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, 'database = "data/x.sqlite3"'), {})
    assert settings.database == (tmp_path / "data" / "x.sqlite3").resolve()
    assert settings.feeds == ()
    assert settings.fetch.allow_private_addresses is False  # SSRF guard on by default
    assert settings.mail.smtp is None  # no SMTP server: the outbox
    assert settings.mail.outbox == tmp_path / "var" / "outbox"


def test_fetch_defaults_and_the_http2_and_ca_file_keys(tmp_path: Path) -> None:
    defaults = load_settings(write(tmp_path, 'database = "x"'), {}).fetch
    assert defaults.http2 is True and defaults.ca_file is None and defaults.max_per_host == 16
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(Path(certifi.where()).read_bytes())
    text = 'database = "x"\n[fetch]\nhttp2 = false\nca_file = "certs/ca.pem"\nmax_per_host = 4\n'
    fetch = load_settings(write(tmp_path, text), {}).fetch
    assert fetch.http2 is False and fetch.max_per_host == 4
    assert fetch.ca_file == str((tmp_path / "certs" / "ca.pem").resolve())


def test_bundled_default_lists_both_blogs_with_snapshots() -> None:
    settings = load_settings(DEFAULT_CONFIG, {})
    urls = [feed.url for feed in settings.feeds]
    assert "https://project.learning-layers.eu/feed/" in urls
    assert len(urls) == 2
    assert settings.poll.use_snapshots
    assert all(feed.snapshot is not None and feed.snapshot.exists() for feed in settings.feeds)
    assert settings.fetch.allow_file_urls  # snapshots need file URLs


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('database = "x"\nbogus = 1', "bogus: unknown setting"),
        ("database = 5", "database: must be a string"),
        ("", "database: is required"),
        ('datbase = "x"', "datbase: unknown setting; did you mean 'database'?"),
        (
            'database = "x"\n[fetch]\nmax_redirect = 3',
            "fetch.max_redirect: unknown setting; did you mean 'fetch.max_redirects'?",
        ),
        ('database = "x"\nfrobnicate = true', "frobnicate: unknown setting\n"),
        ('database = "x"\n[fetch]\nmax_redirects = -5', "must be at least 0, not -5\n"),
        ('database = "x"\n[poll]\ninterval_minutes = -5', "must be at least 0, not -5\n"),
        ('database = "x"\n[poll]\ninterval_minutes = -2.5', "must be at least 0, not -2.5\n"),
        ('database = "x"\n[fetch]\nread_timeout = 0', "must be at least 0.1, not 0\n"),
        (
            'database = "x"\n[fetch]\nmax_redirects = "five"',
            "fetch.max_redirects: must be a whole number",
        ),
        (
            'database = "x"\n[fetch]\nallow_private_addresses = "yes"',
            "fetch.allow_private_addresses: must be true or false",
        ),
        ('database = "x"\n[fetch]\ntimeout = 3', "fetch.timeout: unknown setting"),
        (
            'database = "x"\n[[feeds]]\nurl = "ftp://example.org/feed"',
            "feeds[0].url: 'ftp://example.org/feed' is not an absolute http(s) URL",
        ),
        ('database = "x"\n[[feeds]]\nurl = "javascript:alert(1)"', "feeds[0].url"),
        ('database = "x"\n[[feeds]]\ntitle = "no url"', "feeds[0].url: is required"),
        (
            'database = "x"\n[[feeds]]\nurl = "https://a.test/f"\n[[feeds]]\nurl = "https://a.test/f"',
            "listed twice",
        ),
        ('database = "x"\n[web]\nport = 70000', "web.port: must be at most 65535"),
        (
            'database = "x"\n[digest]\ntimezone = "Mars/Olympus"',
            "digest.timezone: unknown time zone",
        ),
        ('database = "x"\n[digest]\ndaily_at = "25:00"', "digest.daily_at"),
        ('database = "x"\n[mail]\nsmtp_security = "ssl3"', "mail.smtp_security: must be one of"),
        ('database = "x"\nlog_level = "loud"', "log_level: must be one of"),
        (
            'database = "x"\n[web]\nbase_url = "https://news.example.org/digest/"',
            "web.base_url: must be the root of a host",
        ),
        ("database = [unclosed", "not valid TOML"),
        ('database = ""', "database: must not be empty; name a file"),
        ('database = "  "', "database: must not be empty"),
        ('database = "."', "database: is a folder; name the database file in it"),
        ('database = "x"\n[mail]\noutbox = ""', "mail.outbox: must not be empty"),
        ('database = "x"\n[fetch]\nca_file = "nope.pem"', "fetch.ca_file: no such file: "),
        ('database = "x"\n[fetch]\nca_file = "."', "fetch.ca_file: is a folder, not a PEM file"),
        ('database = "x"\n[fetch]\nca_file = ""', "fetch.ca_file: must not be empty"),
        (
            'database = "x"\n[mail]\nfrom = "Blog digest"',
            "mail.from: must be an email address, alone or as \"Name <address>\", not 'Blog digest'",
        ),
        ('database = "x"\n[mail]\nfrom = ""', "mail.from: must be an email address"),
        ('database = "x"\n[mail]\nfrom = "Digest <a@b c>"', "mail.from: must be an email"),
        (
            'database = "x"\n[service]\ndemo_subscriber = "Ann <ann@example.org>"',
            "service.demo_subscriber: must be an email address like ann@example.org",
        ),
        ('database = "x"\n[fetch]\nuser_agent = ""', "fetch.user_agent: must be printable"),
        (
            'database = "x"\n[fetch]\nuser_agent = "bot\\r\\nX-Evil: 1"',
            "fetch.user_agent: must be printable ASCII",
        ),
        ('database = "x"\n[fetch]\nconnect_timeout = nan', "fetch.connect_timeout: must be a"),
        ('database = "x"\n[poll]\ninterval_minutes = inf', "poll.interval_minutes: must be"),
        ('database = "x"\n[poll]\ncross_post_window_days = 1e300', "cross_post_window_days"),
        ('database = "x"\n[poll]\nparse_workers = 100000', "poll.parse_workers: must be at"),
        ('database = "x"\n[web]\nhost = ""', "web.host: must be a host name or IP address"),
        (
            'database = "x"\n[web]\nbase_url = "https://u:p@news.example.org"',
            "web.base_url: must not hold a user name or password",
        ),
        (
            'database = "x"\n[mail]\nsmtp_host = "smtp.example.org:587"',
            "mail.smtp_host: must be a host name or IP address (the port is smtp_port)",
        ),
        ('database = "x"\n[digest]\ntimezone = ""', "digest.timezone: unknown time zone ''"),
        (
            'database = "x"\n[[feeds]]\nurl = "http://ann:s3cret@blog.test/feed"',
            "feeds[0].url: http://blog.test/feed: a user name or password in a feed URL is refused",
        ),
        (
            'database = "x"\n[[feeds]]\nurl = "HTTP://Blog.Test/f"\n[[feeds]]\nurl = "http://blog.test/f"',
            "feeds[1].url: http://blog.test/f is listed twice",
        ),
        (
            'database = "x"\n[poll]\nuse_snapshots = true\n'
            '[[feeds]]\nurl = "https://a.test/f"\nsnapshot = "gone.xml"',
            "feeds[0].snapshot: no such file",
        ),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert needle in message + "\n"  # a needle ending in a newline: the end of the message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "nope.toml", {})


def test_secrets_come_from_the_environment_only(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'database = "x"\n[mail]\nsmtp_host = "mail.test"\nsmtp_security = "tls"\n',
    )
    settings = load_settings(
        path,
        {
            "AGGREGATOR_SMTP_USERNAME": "digest",
            "AGGREGATOR_SMTP_PASSWORD": "s3cret",
            "AGGREGATOR_ADMIN_PASSWORD": "adm",
        },
    )
    assert settings.mail.smtp is not None
    assert settings.mail.smtp.password == "s3cret"
    assert settings.mail.smtp.port == 465
    assert settings.web.admin_password == "adm"
    # A password without a user name is a mistake, named like any other.
    with pytest.raises(ConfigError, match=r"mail\.smtp_username: a password needs a username"):
        load_settings(path, {"AGGREGATOR_SMTP_PASSWORD": "s3cret"})
    # A password key in the file is not a setting at all.
    with pytest.raises(ConfigError, match="mail.smtp_password: unknown setting"):
        load_settings(write(tmp_path, 'database = "x"\n[mail]\nsmtp_password = "p"\n'), {})


def test_feed_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'database = "x"\n[[feeds]]\nurl = "https://a.test/feed"\ntitle = "A"\n'
        'interval_minutes = 90\nsnapshot = "a.xml"\n',
    )
    (feed,) = load_settings(path, {}).feeds
    assert feed.title == "A"
    assert feed.interval == timedelta(minutes=90)
    assert feed.snapshot == tmp_path / "a.xml"


def test_config_path_resolution(tmp_path: Path) -> None:
    assert config_path_from("x.toml", {"AGGREGATOR_CONFIG": "y.toml"}) == Path("x.toml")
    assert config_path_from(None, {"AGGREGATOR_CONFIG": "y.toml"}) == Path("y.toml")
    assert config_path_from(None, {}) == DEFAULT_CONFIG


def test_documented_production_example_is_valid() -> None:
    path = Path(__file__).resolve().parent.parent / "deploy" / "production.toml"
    settings = load_settings(path, {"AGGREGATOR_SMTP_PASSWORD": "secret"})
    assert settings.mail.smtp is not None and settings.mail.smtp.password == "secret"
    assert not settings.poll.use_snapshots and not settings.fetch.allow_private_addresses
    assert settings.web.base_url.startswith("https://")


def test_a_ca_file_that_is_not_pem_is_refused_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n", encoding="utf-8")
    path = write(tmp_path, 'database = "x"\n[fetch]\nca_file = "ca.pem"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert str(caught.value) == (
        f"{path}: fetch.ca_file: holds no PEM certificate (-----BEGIN CERTIFICATE-----): "
        f"{(tmp_path / 'ca.pem').resolve()}"
    )


def test_a_password_in_a_feed_url_is_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, 'database = "x"\n[[feeds]]\nurl = "https://ann:s3cret@blog.test/f"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert "s3cret" not in str(caught.value) and "ann" not in str(caught.value)


def test_a_byte_order_mark_before_the_first_setting_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b'\xef\xbb\xbfdatabase = "db.sqlite3"\n[mail]\nfrom = "D <d@example.org>"\n')
    settings = load_settings(path, {})
    assert settings.database == (tmp_path / "db.sqlite3").resolve()
    assert settings.mail.sender == "D <d@example.org>"


def test_configured_feed_urls_are_stored_with_scheme_and_host_in_lower_case(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path, 'database = "x"\n[[feeds]]\nurl = "HTTPS://Blog.Example:443/Feed/Atom"\n'
    )
    (feed,) = load_settings(path, {}).feeds
    assert feed.url == "https://blog.example/Feed/Atom"  # the path keeps its case


@pytest.mark.parametrize(
    "text",
    [
        '[mail]\nfrom = "digest@example.org"',
        '[mail]\nfrom = "\\"Blog, digest\\" <digest@bücher.example>"',
        '[service]\ndemo_subscriber = "demo@example.org"',
        '[fetch]\nuser_agent = "my-bot/1.0 (+https://example.org/bot)"',
        '[web]\nhost = "::1"',
        '[digest]\ntimezone = "Europe/Tallinn"',
    ],
)
def test_good_values_of_the_checked_settings_are_accepted(tmp_path: Path, text: str) -> None:
    load_settings(write(tmp_path, f'database = "x"\n{text}\n'), {})


def test_a_short_secret_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'database = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {"AGGREGATOR_SECRET_KEY": "hunter2"})
    assert str(caught.value).startswith("AGGREGATOR_SECRET_KEY: must be at least 32 characters")
    assert load_settings(path, {"AGGREGATOR_SECRET_KEY": "k" * 32}).secret_key == "k" * 32


def test_the_secret_key_signs_the_links_whatever_the_database(tmp_path: Path) -> None:
    """$AGGREGATOR_SECRET_KEY is the token secret when set: a link made with one database
    is good with another (a restored or moved site); without it each keeps its own."""
    from datetime import UTC, datetime

    from aggregator.errors import TokenError
    from aggregator.store import Store
    from aggregator.subscriptions import PURPOSE_PREFERENCES, links_for

    now = datetime(2026, 11, 30, tzinfo=UTC)
    env = {"AGGREGATOR_SECRET_KEY": "s" * 40}
    one = load_settings(write(tmp_path, 'database = "one.sqlite3"\n'), env)
    two = load_settings(write(tmp_path, 'database = "two.sqlite3"\n'), env)
    first, second = Store.open(one.database), Store.open(two.database)
    try:
        token = links_for(first, one).token(PURPOSE_PREFERENCES, 7, now)
        assert links_for(second, two).verify(PURPOSE_PREFERENCES, token, now=now) == 7
        plain_one = load_settings(write(tmp_path, 'database = "one.sqlite3"\n'), {})
        plain_two = load_settings(write(tmp_path, 'database = "two.sqlite3"\n'), {})
        own = links_for(first, plain_one).token(PURPOSE_PREFERENCES, 7, now)
        with pytest.raises(TokenError):
            links_for(second, plain_two).verify(PURPOSE_PREFERENCES, own, now=now)
    finally:
        first.close()
        second.close()
