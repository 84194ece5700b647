"""Configuration: defaults, validation with one-line errors, environment secrets."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

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
