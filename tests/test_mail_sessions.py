"""A relay that allows fewer sessions than ``[mail] connections``, and recipient-level
deferrals: neither may cost a digest an attempt for nothing or stop the run, against a
real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from digestkit import add_entry, add_feed, later, make_settings, rows
from smtpserver import SmtpServer

from aggregator.digests.build import build_pending
from aggregator.digests.send import MAX_CONSECUTIVE_TEMPORARY, send_pending
from aggregator.errors import MailDeferredError, MailPermanentError, MailTemporaryError
from aggregator.mail import OutgoingMessage, SmtpSender, SmtpSettings
from aggregator.store import Store
from aggregator.subscriptions import add_by_operator, links_for

NOW = datetime(2024, 5, 1, 7, 30, tzinfo=UTC)


@pytest.fixture(
    params=[(False, False), (True, False), (False, True)],
    ids=["421-at-greeting", "421-at-greeting-pipelining", "closed-at-once"],
)
def one_session_server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """A server that admits one session at a time and refuses any other one."""
    server = SmtpServer()
    server.pipelining, server.refuse_with_close = request.param
    server.max_sessions = 1
    server.start()
    try:
        yield server
    finally:
        server.stop()


def message(number: int, recipient: str = "reader@example.org") -> OutgoingMessage:
    return OutgoingMessage(
        message_id=f"<digest-{number}.1a2b3c@aggregator.localhost>",
        sender="Example News <news@example.org>",
        recipient=recipient,
        subject=f"Your digest #{number}",
        text=f"Digest {number}\n",
        html=None,
        date=NOW,
    )


def sender_for(server: SmtpServer, connections: int) -> SmtpSender:
    settings = SmtpSettings(host=server.host, port=server.port, security="none", timeout=5)
    return SmtpSender(dataclasses.replace(settings, connections=connections))


def test_refused_sessions_leave_the_pool_and_their_messages_go_through_another(
    one_session_server: SmtpServer,
) -> None:
    server = one_session_server
    with sender_for(server, 8) as sender, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: sender.send(message(n)), range(40)))  # raises if any failed
        live = sender.live_connections
    received = server.wait_for(40)
    assert sorted(r.parse()["Message-ID"] for r in received) == sorted(
        f"<digest-{n}.1a2b3c@aggregator.localhost>" for n in range(40)
    )
    assert server.refused >= 1 and server.peak_sessions == 1
    # Each refused connection left the pool once and was not tried again.
    assert live + server.refused == 8 and live >= 1


def test_the_last_connection_refused_is_a_temporary_failure(tmp_path: Path) -> None:
    server = SmtpServer()  # never started: every connection is refused
    with sender_for(server, 4) as sender:
        for number in range(3):
            with pytest.raises(MailTemporaryError, match="cannot connect"):
                sender.send(message(number))
        assert sender.live_connections == 1


# --- through send_pending -------------------------------------------------------------


def digests_for(tmp_path: Path, server: SmtpServer, addresses: list[str]) -> Store:
    settings = make_settings(tmp_path, smtp_port=server.port, max_entries_per_source=5)
    store = Store.open(settings.database)
    feed = add_feed(store, "Alpha Blog")
    for address in addresses:
        add_by_operator(store, settings, links_for(store, settings), email=address, now=later(0))
    add_entry(store, feed, "Post")
    build_pending(store, settings, later(1), due_only=False)
    return store


def test_a_relay_with_one_session_gets_every_digest_in_one_run(
    tmp_path: Path, one_session_server: SmtpServer
) -> None:
    server = one_session_server
    addresses = [f"r{i}@example.org" for i in range(30)]
    store = digests_for(tmp_path, server, addresses)
    settings = make_settings(tmp_path, smtp_port=server.port)
    with sender_for(server, 8) as sender:
        report = send_pending(store, sender, settings, lambda: later(1))
    assert report.stopped is None and report.errors == []
    assert (report.sent, report.retried, report.failed) == (30, 0, 0)
    # One attempt each: the one that delivered it.
    assert rows(store, "SELECT DISTINCT status, attempts FROM digests") == [("sent", 1)]
    assert Counter(r.rcpt_tos[0] for r in server.received()) == dict.fromkeys(addresses, 1)
    assert server.refused >= 1
    store.close()


def test_no_session_at_all_still_stops_the_run_as_server_away(tmp_path: Path) -> None:
    server = SmtpServer()  # not listening
    store = digests_for(tmp_path, server, [f"r{i}@example.org" for i in range(30)])
    settings = make_settings(tmp_path, smtp_port=server.port)
    with sender_for(server, 8) as sender:
        report = send_pending(store, sender, settings, lambda: later(1))
    assert report.stopped is not None and "unavailable" in report.stopped
    assert report.sent == 0 and report.failed == 0
    assert MAX_CONSECUTIVE_TEMPORARY <= report.retried < 30
    assert rows(store, "SELECT count(*) FROM digests WHERE status = 'pending'") == [(30,)]
    store.close()


# --- a recipient's 4xx is that recipient's --------------------------------------------


class Replying(SmtpServer):
    """Answers RCPT for the addresses in ``rcpt`` and MAIL FROM for the senders in
    ``mail`` with the reply given there."""

    def __init__(self) -> None:
        super().__init__()
        self.rcpt: dict[str, str] = {}
        self.mail: dict[str, str] = {}

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.mail:
            return self.mail[address]
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt:
            return self.rcpt[address]
        return await super().handle_RCPT(server, session, envelope, address, options)


@pytest.fixture(params=[False, True], ids=["one-command-at-a-time", "pipelining"])
def replying(request: pytest.FixtureRequest) -> Iterator[Replying]:
    server = Replying()
    server.pipelining = request.param
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("450 4.2.1 Greylisted, try again later", MailDeferredError),
        ("452 4.2.2 Mailbox full", MailDeferredError),
        ("552 5.2.2 Mailbox full", MailDeferredError),  # RFC 5321 4.5.3.1.10: read as 452
        ("421 4.3.2 Shutting down", MailTemporaryError),
        ("550 5.1.1 No such user", MailPermanentError),
    ],
)
def test_a_refused_recipient_is_classified_by_its_reply(
    replying: Replying, reply: str, kind: type[Exception]
) -> None:
    replying.rcpt["full@example.org"] = reply
    with sender_for(replying, 1) as sender:
        with pytest.raises(kind) as raised:
            sender.send(message(1, "full@example.org"))
        assert type(raised.value) is kind
        sender.send(message(2))  # the connection carries on
    assert [r.rcpt_tos for r in replying.wait_for(1)] == [("reader@example.org",)]


def test_a_refused_sender_is_the_servers_failure(replying: Replying) -> None:
    replying.mail["news@example.org"] = "451 4.3.0 Try again later"
    with sender_for(replying, 1) as sender, pytest.raises(MailTemporaryError) as raised:
        sender.send(message(1))
    assert not isinstance(raised.value, MailDeferredError)


def test_greylisted_recipients_are_retried_but_do_not_stop_the_run(
    tmp_path: Path, replying: Replying
) -> None:
    busy = [f"grey{i}@example.org" for i in range(3 * MAX_CONSECUTIVE_TEMPORARY)]
    ok = [f"ok{i}@example.org" for i in range(3)]
    for number, address in enumerate(busy):
        replying.rcpt[address] = "552 5.2.2 Mailbox full" if number % 2 else "450 4.2.1 Greylisted"
    store = digests_for(tmp_path, replying, busy + ok)  # the greylisted ones come first
    settings = make_settings(tmp_path, smtp_port=replying.port)
    with sender_for(replying, 1) as sender:
        report = send_pending(store, sender, settings, lambda: later(1))
    assert report.stopped is None
    assert (report.sent, report.retried, report.bounced) == (3, len(busy), 0)
    assert sorted(r.rcpt_tos[0] for r in replying.received()) == sorted(ok)
    # Each deferred digest spent its one attempt and waits for its backoff.
    assert rows(
        store,
        "SELECT DISTINCT d.attempts, d.status, s.status FROM digests d "
        "JOIN subscribers s ON s.id = d.subscriber_id WHERE s.email LIKE 'grey%'",
    ) == [(1, "pending", "confirmed")]
    store.close()


def test_deferrals_do_not_hide_a_server_that_is_going_away(
    tmp_path: Path, replying: Replying
) -> None:
    """Server failures in a row stop the run even with recipients' deferrals between."""
    addresses = [f"r{i:02}@example.org" for i in range(30)]
    for address in addresses[::2]:
        replying.rcpt[address] = "450 4.2.1 Greylisted"
    for address in addresses[1::2]:
        replying.rcpt[address] = "421 4.3.2 Shutting down"
    store = digests_for(tmp_path, replying, addresses)
    settings = make_settings(tmp_path, smtp_port=replying.port)
    with sender_for(replying, 1) as sender:
        report = send_pending(store, sender, settings, lambda: later(1))
    assert report.stopped is not None and "421" in report.stopped
    assert report.retried == 2 * MAX_CONSECUTIVE_TEMPORARY  # the fifth 421 ends it
    store.close()
