from __future__ import annotations

import dataclasses
import email
import shutil
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from smtpserver import SmtpServer

from aggregator.errors import ConfigError, MailPermanentError, MailTemporaryError
from aggregator.mail import (
    MaildirSender,
    OutgoingMessage,
    SmtpSender,
    SmtpSettings,
    build_email,
    clean_header_value,
    open_sender,
    parse_address,
)

NOW = datetime(2024, 5, 1, 7, 30, tzinfo=UTC)
READER = "reader@example.org"
UNSUBSCRIBE_URL = "https://news.example.org/unsubscribe?token=" + "A" * 120
LIST_HEADERS = {
    "List-Id": "Example digest <digest.news.example.org>",
    "List-Unsubscribe": f"<{UNSUBSCRIBE_URL}>, <mailto:unsubscribe@news.example.org?subject=42>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    "Precedence": "bulk",
    "Auto-Submitted": "auto-generated",
}


@pytest.fixture(params=[False, True], ids=["one-command-at-a-time", "pipelining"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """Every delivery test twice: against a server without PIPELINING, and with it
    (MAIL, RCPT and DATA then go in one write, RFC 2920)."""
    server = SmtpServer()
    server.pipelining = request.param
    server.start()
    try:
        yield server
    finally:
        server.stop()


def outgoing(number: int = 1, **changes: Any) -> OutgoingMessage:
    message = OutgoingMessage(
        message_id=f"<digest-{number}.1a2b3c@aggregator.localhost>",
        sender="Example News <news@example.org>",
        recipient=READER,
        subject=f"Your digest #{number}",
        text=f"Plain text of digest {number}\nWith ünïcode.\n",
        html=f"<html><body><p style='color:#333'>Digest {number} ünïcode</p></body></html>",
        date=NOW,
        headers=LIST_HEADERS,
    )
    return dataclasses.replace(message, **changes)


def smtp(server: SmtpServer, **changes: Any) -> SmtpSender:
    settings = SmtpSettings(host=server.host, port=server.port, security="none", timeout=5)
    return SmtpSender(dataclasses.replace(settings, **changes))


def header_block(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line for line in head.split("\r\n") if line and not line[0].isspace()]


def header_names(raw: bytes) -> list[str]:
    return [line.split(":", 1)[0].lower() for line in header_block(raw)]


# --- structure and headers ----------------------------------------------------------


def test_multipart_alternative_text_then_html(smtp_server: SmtpServer) -> None:
    with smtp(smtp_server) as sender:
        sender.send(outgoing())
    [item] = smtp_server.wait_for(1)
    message = item.parse()
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert parts[0].get_content() == "Plain text of digest 1\nWith ünïcode.\n"
    assert "Digest 1 ünïcode" in parts[1].get_content()
    assert all(part.get_content_charset() == "utf-8" for part in parts)
    assert message["Message-ID"] == "<digest-1.1a2b3c@aggregator.localhost>"
    assert message["Date"].datetime == NOW
    assert message["From"].addresses[0].addr_spec == "news@example.org"
    assert message["From"].addresses[0].display_name == "Example News"
    names = Counter(header_names(item.data))
    for name in ("subject", "from", "to", "date", "message-id", "mime-version"):
        assert names[name] == 1, name


def test_text_only_when_no_html(smtp_server: SmtpServer) -> None:
    with smtp(smtp_server) as sender:
        sender.send(outgoing(html=None))
    [message] = [item.parse() for item in smtp_server.wait_for(1)]
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Plain text of digest 1\nWith ünïcode.\n"


def test_list_headers_pass_through_unencoded(smtp_server: SmtpServer) -> None:
    with smtp(smtp_server) as sender:
        sender.send(outgoing())
    [item] = smtp_server.wait_for(1)
    message = item.parse()
    for name, value in LIST_HEADERS.items():
        assert message[name] == value
    unsubscribe = message["List-Unsubscribe"]
    assert f"<{UNSUBSCRIBE_URL}>" in unsubscribe and "<mailto:" in unsubscribe
    # Clients read the raw header: no RFC 2047 encoding of the URL, lines within limits.
    raw_head = item.data.split(b"\r\n\r\n", 1)[0]
    assert b"=?" not in raw_head.split(b"List-Unsubscribe:", 1)[1].split(b"\r\nList-", 1)[0]
    assert all(len(line) <= 998 for line in raw_head.split(b"\r\n"))


def test_envelope_from_and_to_are_bare_addresses(smtp_server: SmtpServer) -> None:
    with smtp(smtp_server) as sender:
        sender.send(outgoing())
    [item] = smtp_server.wait_for(1)
    assert item.mail_from == "news@example.org"
    assert item.rcpt_tos == (READER,)


@pytest.mark.parametrize("evil", ["\r\n", "\n", "\r", "\u2028", "\u2029", "\0", "\x85", "\x0b"])
def test_header_injection_is_neutralised(smtp_server: SmtpServer, evil: str) -> None:
    message = outgoing(
        subject=f"Weekly{evil}Bcc: victim@evil.example{evil}{evil}Injected body",
        sender=f"News{evil}To: victim@evil.example <news@example.org>",
        headers={
            **LIST_HEADERS,
            "List-Id": f"Digest{evil}Bcc: victim@evil.example <digest.news.example.org>",
            "List-Unsubscribe": f"<{UNSUBSCRIBE_URL}>{evil}X-Injected: yes",
        },
    )
    with smtp(smtp_server) as sender:
        sender.send(message)
    [item] = smtp_server.wait_for(1)
    names = header_names(item.data)
    assert names.count("subject") == 1
    assert names.count("to") == 1 and names.count("from") == 1
    assert "bcc" not in names and "x-injected" not in names and "cc" not in names
    assert sorted(names) == sorted(
        ["from", "to", "subject", "date", "message-id", "mime-version", "content-type"]
        + [name.lower() for name in LIST_HEADERS]
    )
    parsed = item.parse()
    assert parsed["Subject"] == "Weekly Bcc: victim@evil.example Injected body"
    assert [a.addr_spec for a in parsed["To"].addresses] == [READER]
    assert [a.addr_spec for a in parsed["From"].addresses] == ["news@example.org"]
    assert smtp_server.rcpt_seen == [READER]
    assert item.rcpt_tos == (READER,)


@pytest.mark.parametrize(
    "recipient",
    [
        "reader@example.org\r\nRCPT TO:<victim@evil.example>",
        "reader@example.org, victim@evil.example",
        "Reader <victim@evil.example>",
        "not an address",
        "a" * 1001 + "@example.org",
        "reader@exa mple.org",
        "",
    ],
)
def test_unmailable_recipient_is_permanent_and_never_reaches_server(
    smtp_server: SmtpServer, recipient: str
) -> None:
    with smtp(smtp_server) as sender, pytest.raises(MailPermanentError) as caught:
        sender.send(outgoing(recipient=recipient))
    assert caught.value.address == recipient
    assert smtp_server.rcpt_seen == []


def test_non_ascii_subject_and_name_round_trip(smtp_server: SmtpServer) -> None:
    subject = "Résumé — 日本語のダイジェスト 🎉 " + "lange Überschrift " * 8
    subject = subject.strip()
    with smtp(smtp_server) as sender:
        sender.send(outgoing(subject=subject, sender="Zoë Ünïcode <news@example.org>"))
    [item] = smtp_server.wait_for(1)
    parsed = item.parse()
    assert parsed["Subject"] == subject
    assert parsed["From"].addresses[0].display_name == "Zoë Ünïcode"
    item.data.split(b"\r\n\r\n", 1)[0].decode("ascii")  # headers travel as 7-bit
    assert all(len(line) <= 78 for line in item.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[:3])


def test_internationalised_domain_goes_out_as_punycode(smtp_server: SmtpServer) -> None:
    with smtp(smtp_server) as sender:
        sender.send(outgoing(recipient="leser@bücher.example"))
    [item] = smtp_server.wait_for(1)
    assert item.rcpt_tos == ("leser@xn--bcher-kva.example",)


# --- SMTP failures (THREATS K3) -----------------------------------------------------


def test_4xx_is_temporary_with_address_and_connection_stays_usable(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.temp_fail.add("busy@example.org")
    with smtp(smtp_server) as sender:
        with pytest.raises(MailTemporaryError) as caught:
            sender.send(outgoing(recipient="busy@example.org"))
        sender.send(outgoing(2))
    assert caught.value.address == "busy@example.org"
    assert "450" in str(caught.value)
    [item] = smtp_server.wait_for(1)
    assert item.rcpt_tos == (READER,)


def test_5xx_is_permanent_with_address(smtp_server: SmtpServer) -> None:
    smtp_server.perm_fail.add("gone@example.org")
    with smtp(smtp_server) as sender:
        with pytest.raises(MailPermanentError) as caught:
            sender.send(outgoing(recipient="gone@example.org"))
        sender.send(outgoing(2))
    assert caught.value.address == "gone@example.org"
    assert "550" in str(caught.value)
    assert [item.rcpt_tos for item in smtp_server.wait_for(1)] == [(READER,)]


def test_5xx_after_data_is_permanent(smtp_server: SmtpServer) -> None:
    smtp_server.reject_data = lambda item: "554 5.7.1 Message refused"
    with smtp(smtp_server) as sender, pytest.raises(MailPermanentError) as caught:
        sender.send(outgoing())
    assert caught.value.address == READER and "554" in str(caught.value)
    assert smtp_server.received() == []


def test_server_down_is_temporary_and_sender_recovers(smtp_server: SmtpServer) -> None:
    sender = smtp(smtp_server)
    sender.send(outgoing(1))
    smtp_server.stop()
    started = time.monotonic()
    with pytest.raises(MailTemporaryError) as caught:
        sender.send(outgoing(2))
    assert time.monotonic() - started < 5
    assert caught.value.address == READER
    assert f"{smtp_server.host}:{smtp_server.port}" in str(caught.value)
    smtp_server.start()
    sender.send(outgoing(3))
    sender.close()
    ids = [message["Message-ID"] for message in smtp_server.messages()]
    assert ids == [f"<digest-{n}.1a2b3c@aggregator.localhost>" for n in (1, 3)]


def test_dropped_connections_reconnect_and_deliver_each_message_once(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.drop_every = 3
    with smtp(smtp_server) as sender:
        for number in range(1, 11):
            sender.send(outgoing(number))
    received = smtp_server.wait_for(10)
    ids = [item.parse()["Message-ID"] for item in received]
    assert ids == [f"<digest-{n}.1a2b3c@aggregator.localhost>" for n in range(1, 11)]
    assert len({item.connection for item in received}) == 4  # 3 + 3 + 3 + 1


def test_drop_before_reply_repeats_only_the_message_in_flight(smtp_server: SmtpServer) -> None:
    smtp_server.drop_every = 4
    smtp_server.drop_before_reply = True
    failed = []
    with smtp(smtp_server) as sender:
        for number in range(1, 11):
            try:
                sender.send(outgoing(number))
            except MailTemporaryError as error:
                assert "unknown" in str(error)
                failed.append(number)
                sender.send(outgoing(number))  # the caller's retry
    # Server counts retries too: accepted #4, #8 and #12 are messages 4, 7 and 10.
    assert failed == [4, 7, 10]
    counts = Counter(item.parse()["Message-ID"] for item in smtp_server.wait_for(13))
    assert len(counts) == 10 and sum(counts.values()) == 13
    twice = {int(key.split("-")[1].split(".")[0]) for key, n in counts.items() if n == 2}
    assert twice == set(failed)


def test_connection_reused_up_to_the_limit(smtp_server: SmtpServer) -> None:
    with smtp(smtp_server, max_messages_per_connection=2) as sender:
        for number in range(1, 6):
            sender.send(outgoing(number))
    connections = [item.connection for item in smtp_server.wait_for(5)]
    assert len(connections) == 5
    assert [connections.count(c) for c in dict.fromkeys(connections)] == [2, 2, 1]


# --- TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1"
    command += " -addext subjectAltName=IP:127.0.0.1"
    arguments = [*command.split(), "-keyout", str(key), "-out", str(cert)]
    subprocess.run(arguments, check=True, capture_output=True, timeout=60)
    return cert, key


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def test_starttls_verifies_the_certificate(certificate: tuple[Path, Path]) -> None:
    server = SmtpServer(starttls_context=server_context(certificate)).start()
    try:
        with (
            smtp(server, security="starttls") as untrusting,
            pytest.raises(MailTemporaryError) as e,
        ):
            untrusting.send(outgoing())
        assert "certificate" in str(e.value)
        assert server.received() == []
        trusting = SmtpSender(
            SmtpSettings(host=server.host, port=server.port, security="starttls", timeout=5),
            ssl_context=ssl.create_default_context(cafile=str(certificate[0])),
        )
        with trusting:
            trusting.send(outgoing())
        assert len(server.wait_for(1)) == 1
    finally:
        server.stop()


def test_implicit_tls_delivers_with_trusted_certificate(certificate: tuple[Path, Path]) -> None:
    server = SmtpServer(implicit_tls_context=server_context(certificate)).start()
    try:
        context = ssl.create_default_context(cafile=str(certificate[0]))
        settings = SmtpSettings(host=server.host, port=server.port, security="tls", timeout=5)
        with SmtpSender(settings, ssl_context=context) as sender:
            sender.send(outgoing())
        assert len(server.wait_for(1)) == 1
    finally:
        server.stop()


def test_starttls_required_but_not_offered(smtp_server: SmtpServer) -> None:
    with smtp(smtp_server, security="starttls") as sender, pytest.raises(MailTemporaryError) as e:
        sender.send(outgoing())
    assert "STARTTLS" in str(e.value)
    assert smtp_server.rcpt_seen == []


# --- Maildir outbox -----------------------------------------------------------------


def test_maildir_sender_creates_folder_and_writes_parseable_messages(tmp_path: Path) -> None:
    outbox = tmp_path / "var" / "outbox"
    sender = open_sender(None, outbox)
    assert isinstance(sender, MaildirSender)
    sender.send(outgoing(1))
    sender.send(outgoing(2, html=None))
    sender.close()
    assert {child.name for child in outbox.iterdir()} >= {"new", "cur", "tmp"}
    assert list((outbox / "tmp").iterdir()) == []
    files = sorted((outbox / "new").iterdir())
    assert len(files) == 2
    parsed = [email.message_from_bytes(f.read_bytes(), policy=default_policy) for f in files]
    assert all(isinstance(message, EmailMessage) for message in parsed)
    by_id = {message["Message-ID"]: message for message in parsed}
    first = by_id["<digest-1.1a2b3c@aggregator.localhost>"]
    assert first.get_content_type() == "multipart/alternative"
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert first["To"] == READER
    assert by_id["<digest-2.1a2b3c@aggregator.localhost>"].get_content_type() == "text/plain"


def test_maildir_sender_unwritable_path_is_temporary(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MailTemporaryError) as caught:
        MaildirSender(blocker / "outbox").send(outgoing())
    assert caught.value.address == READER


def test_open_sender_picks_smtp_when_configured(tmp_path: Path) -> None:
    sender = open_sender(SmtpSettings(host="127.0.0.1", port=2525), tmp_path / "outbox")
    assert isinstance(sender, SmtpSender)
    sender.close()
    assert not (tmp_path / "outbox").exists()


# --- building rules -----------------------------------------------------------------


def test_header_value_cleaning() -> None:
    assert clean_header_value("a\r\nb\u2028c\u2029d\0e\tf\x1bg  h") == "a b c d e f g h"


def test_message_id_is_normalised_or_refused() -> None:
    plain = build_email(outgoing(message_id="digest-7.x@aggregator.localhost"))
    assert plain["Message-ID"] == "<digest-7.x@aggregator.localhost>"
    for bad in ("no-at-sign", "<a@b>\r\nBcc: x@y", "a b@c", "<>"):
        with pytest.raises(ValueError):
            build_email(outgoing(message_id=bad))


@pytest.mark.parametrize("name", ["Bcc", "To", "subject", "Content-Type", "Resent-To", "X Bad"])
def test_callers_cannot_set_reserved_or_malformed_headers(name: str) -> None:
    with pytest.raises(ValueError):
        build_email(outgoing(headers={name: "x@evil.example"}))


def test_naive_date_is_refused() -> None:
    with pytest.raises(ValueError):
        build_email(outgoing(date=datetime(2024, 5, 1)))


def test_very_long_subject_is_capped() -> None:
    message = build_email(outgoing(subject="word " * 100_000))
    assert len(str(message["Subject"])) <= 500


def test_display_name_cannot_smuggle_an_address() -> None:
    address = parse_address('"a@evil.example, b@evil.example" <news@example.org>')
    assert address.addr_spec == "news@example.org"
    built = build_email(outgoing(sender='x@evil.example, "y" <news@example.org>'))
    assert [a.addr_spec for a in built["From"].addresses] == ["news@example.org"]


def test_settings_refuse_clear_text_credentials_and_hide_password() -> None:
    with pytest.raises(ConfigError):
        SmtpSettings(host="mail.example.org", security="none", username="u", password="p")
    settings = SmtpSettings(host="mail.example.org", username="u", password="hunter2")
    assert "hunter2" not in repr(settings)
