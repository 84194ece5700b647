"""Messages written by ``message_bytes`` against the email package's own, and several
SMTP connections at once against a real aiosmtpd server on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from digestkit import T0, add_entry, add_feed, later, make_settings, rows
from hypothesis import given, settings
from hypothesis import strategies as st
from smtpserver import SmtpServer

from aggregator.digests.build import build_pending
from aggregator.digests.send import send_pending
from aggregator.errors import ConfigError
from aggregator.mail import (
    SMTP_POLICY,
    OutgoingMessage,
    SmtpSender,
    SmtpSettings,
    build_email,
    message_bytes,
)
from aggregator.store import Store
from aggregator.subscriptions import add_by_operator, links_for

NOW = datetime(2024, 5, 1, 7, 30, tzinfo=UTC)
BASE = OutgoingMessage(
    message_id="<digest-1.1a2b3c@aggregator.localhost>",
    sender="Example News <news@example.org>",
    recipient="reader@example.org",
    subject="Your digest",
    text="Plain text\n",
    html="<p>HTML</p>",
    date=NOW,
    headers={
        "List-Id": "Example digest <digest.news.example.org>",
        "List-Unsubscribe": "<https://news.example.org/u?t=" + "A" * 120 + ">, <mailto:u@x.org>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    },
)


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def contents(message: EmailMessage) -> list[tuple[str, str]]:
    return [
        (part.get_content_type(), "" if part.is_multipart() else part.get_content())
        for part in message.walk()
    ]


def assert_same(message: OutgoingMessage) -> None:
    """Same header values in the same order and the same decoded parts as build_email
    (the boundary is random; quoted-printable or base64 may be chosen differently at the
    margin, where the two encoders break lines differently)."""
    ours_bytes = message_bytes(message)
    theirs = parsed(build_email(message).as_bytes(policy=SMTP_POLICY))
    ours = parsed(ours_bytes)
    mime = ("Content-Type", "Content-Transfer-Encoding")
    assert [(k, str(v)) for k, v in ours.items() if k not in mime] == [
        (k, str(v)) for k, v in theirs.items() if k not in mime
    ]
    assert contents(ours) == contents(theirs)
    assert not ours.defects and all(not p.defects for p in ours.walk())
    lines = ours_bytes.split(b"\r\n")
    assert lines[-1] == b"" and all(b"\n" not in line and b"\r" not in line for line in lines)
    assert all(len(line) <= 998 for line in lines)  # RFC 5322 2.1.1
    assert ours_bytes.isascii()


CASES = {
    "plain ASCII, both parts": BASE,
    "text only": dataclasses.replace(BASE, html=None),
    "empty bodies": dataclasses.replace(BASE, text="", html=""),
    "non-ASCII everywhere": dataclasses.replace(
        BASE,
        subject="Hello – wörld " * 20,
        sender='Jörg "the" Blog, Inc <d@x.org>',
        text="é" * 500 + "\n\nabc = def\t \n.\nFrom x\n",
        html="<p>" + "ж" * 3000 + "</p>",
    ),
    "mostly Cyrillic (base64)": dataclasses.replace(BASE, text="Привет мир\n" * 20),
    "quoted local part, encoded-word lookalike header": dataclasses.replace(
        BASE,
        recipient='"a b"@example.org',
        headers={"List-Id": "Blög <x.y>", "X-Note": "=?utf-8?q?x?="},
    ),
    "long lines, CR and CRLF, offset date": dataclasses.replace(
        BASE,
        text="x" * 200 + "\n" + "y " * 100,
        html="a\r\nb\rc\n" + "word " * 50,
        date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ),
    "encoded-word subject, IDN domain": dataclasses.replace(
        BASE, subject="=?utf-8?q?evil?= x", recipient="a@bü.example"
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_message_bytes_match_the_email_package(name: str) -> None:
    assert_same(CASES[name])
    ours = parsed(message_bytes(CASES[name]))
    theirs = build_email(CASES[name])
    assert [p["Content-Transfer-Encoding"] for p in ours.walk()] == [
        p["Content-Transfer-Encoding"] for p in theirs.walk()
    ]


@settings(max_examples=60, deadline=None)
@given(
    subject=st.text(max_size=120),
    name=st.text(max_size=40),
    text=st.text(max_size=400),
    html=st.one_of(st.none(), st.text(max_size=400)),
)
def test_message_bytes_match_for_any_text(
    subject: str, name: str, text: str, html: str | None
) -> None:
    sender = f'"{name.replace(chr(92), "").replace(chr(34), "")}" <news@example.org>'
    assert_same(dataclasses.replace(BASE, subject=subject, sender=sender, text=text, html=html))


@pytest.mark.parametrize(
    "changes",
    [
        {"message_id": "no-at-sign"},
        {"headers": {"Bcc": "x@evil.example"}},
        {"date": datetime(2024, 5, 1)},
    ],
)
def test_message_bytes_refuse_what_build_email_refuses(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        message_bytes(dataclasses.replace(BASE, **changes))


# --- several connections ----------------------------------------------------------------


class Gathering(SmtpServer):
    """Holds each DATA until ``expected`` sessions are inside DATA at once (or 5 s pass)
    and counts the most that ever were."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.inside = 0
        self.peak = 0
        self._all_in = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        if self.inside >= self.expected:
            self._all_in.set()
        try:
            await asyncio.wait_for(self._all_in.wait(), 5)
        except TimeoutError:
            pass
        finally:
            self.inside -= 1
        reply: str = await super().handle_DATA(server, session, envelope)
        return reply


def send_from_threads(sender: SmtpSender, count: int, threads: int) -> None:
    numbers = iter(range(count))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            sender.send(
                dataclasses.replace(
                    BASE,
                    message_id=f"<digest-{number}.x@aggregator.localhost>",
                    recipient=f"r{number}@example.org",
                )
            )

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)


def test_connections_setting_sends_that_many_at_once_and_never_more() -> None:
    server = Gathering(expected=3)
    server.start()
    try:
        settings_ = SmtpSettings(
            host=server.host, port=server.port, security="none", timeout=10, connections=3
        )
        with SmtpSender(settings_) as sender:
            send_from_threads(sender, count=12, threads=5)
        received = server.received()
        assert sorted(r.rcpt_tos[0] for r in received) == sorted(
            f"r{n}@example.org" for n in range(12)
        )
        assert server.peak == 3
        assert len({r.connection for r in received}) == 3  # each kept open, none more
    finally:
        server.stop()


def test_one_connection_by_default_reused_across_messages() -> None:
    server = Gathering(expected=2)
    server.start()
    try:
        with SmtpSender(SmtpSettings(host=server.host, port=server.port, security="none")) as s:
            assert s.connections == 1
            server._all_in.set()  # nothing to wait for: one at a time
            send_from_threads(s, count=6, threads=3)
        assert server.peak == 1
        assert len({r.connection for r in server.received()}) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("value", [0, 33, "two"])
def test_connections_out_of_range_is_a_configuration_error(tmp_path: Path, value: Any) -> None:
    from aggregator.config import settings_from_mapping

    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(
            {"database": "db.sqlite3", "mail": {"smtp_host": "127.0.0.1", "connections": value}},
            env={},
            path=tmp_path / "site.toml",
        )
    assert "mail.connections" in str(caught.value)


def test_digests_over_three_connections_each_go_once_and_are_marked_sent(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    settings_ = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings_.database)
    try:
        feed = add_feed(store, "Alpha Blog")
        links = links_for(store, settings_)
        emails = [f"reader{i}@example.org" for i in range(25)]
        for email in emails:
            add_by_operator(store, settings_, links, email=email, now=T0)
        add_entry(store, feed, "A post")
        assert build_pending(store, settings_, later(1), due_only=False).built == 25
        smtp = SmtpSettings(host="127.0.0.1", port=smtp_server.port, security="none")
        with SmtpSender(dataclasses.replace(smtp, connections=3)) as sender:
            report = send_pending(store, sender, settings_, lambda: later(1))
        assert (report.sent, report.retried, report.stopped) == (25, 0, None)
        received = smtp_server.received()
        assert sorted(r.rcpt_tos[0] for r in received) == sorted(emails)
        assert len({r.connection for r in received}) <= 3
        assert rows(store, "SELECT status, count(*) FROM digests GROUP BY status") == [("sent", 25)]
    finally:
        store.close()


def open_files(path: Path) -> int:
    """File descriptors of this process open on ``path``."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            if Path(fd.readlink()) == path:
                count += 1
        except OSError:
            continue
    return count


def test_sending_threads_close_their_database_connections(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """The service sends every minute: each run's threads must not leave a connection."""
    settings_ = make_settings(tmp_path, smtp_port=smtp_server.port)
    store = Store.open(settings_.database)
    try:
        feed = add_feed(store, "Alpha Blog")
        links = links_for(store, settings_)
        add_by_operator(store, settings_, links, email="reader@example.org", now=T0)
        smtp = SmtpSettings(host="127.0.0.1", port=smtp_server.port, security="none")
        counts = []
        with SmtpSender(dataclasses.replace(smtp, connections=3)) as sender:
            for run in range(5):
                add_entry(store, feed, f"Post {run}")
                at = later(run + 1)
                build_pending(store, settings_, at, due_only=False)
                assert send_pending(store, sender, settings_, lambda at=at: at).sent == 1
                counts.append(open_files(settings_.database.resolve()))
        # SQLite may keep one descriptor of a closed connection for reuse (its POSIX
        # lock rules); what matters is that runs do not add any.
        assert counts[0] >= 1 and counts == [counts[0]] * 5
        assert len(smtp_server.received()) == 5
    finally:
        store.close()
