"""Subjects (and other feed text in headers) read back exactly as they were written:
spaces between words survive folding (RFC 2047 section 6.2 drops whitespace between
encoded words), and feed text that spells an encoded word is not decoded (section 5).
Each message is parsed by Python's ``email`` package and by ``fast-mail-parser``."""

from __future__ import annotations

import email
import email.policy
import random
from datetime import UTC, datetime

import fast_mail_parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smtpserver import SmtpServer

from aggregator.mail import (
    SMTP_POLICY,
    OutgoingMessage,
    SmtpSender,
    SmtpSettings,
    build_email,
    message_bytes,
)

NOW = datetime(2024, 5, 1, 7, 30, tzinfo=UTC)
WORDS = {
    "ascii": ["new", "posts", "from", "and", "Layers", "Blog", "Notes", "of", "3", "more", "—"],
    "latin": ["über", "ünïcode", "Grüße", "Ærø", "façade", "naïve", "Résumé", "Łódź"],
    "greek": ["Ελληνικά", "Καλημέρα", "ειδήσεις"],
    "cyrillic": ["Привет", "новости", "блог"],
    "cjk": ["中文", "日本語のダイジェスト", "한국어", "新しい投稿"],
    "rtl": ["עברית", "العربية"],
    "emoji": ["🎉", "👩‍💻", "🇺🇦", "❤️"],
    "lookalike": ["=?utf-8?b?SGk=?=", "=?utf-8?q?=C3=BC?=", "=?", "?=", "=?x?q?y?="],
    "long": ["Donaudampfschifffahrtsgesellschaftskapitänswitwe", "x" * 90, "ü" * 60],
}
ALL_WORDS = [word for words in WORDS.values() for word in words]


def outgoing(subject: str) -> OutgoingMessage:
    return OutgoingMessage(
        message_id="<digest-1.1a2b3c@aggregator.localhost>",
        sender="Blog digest <digest@news.example.org>",
        recipient="reader@example.org",
        subject=subject,
        text="Hello\n",
        html=None,
        date=NOW,
    )


def assert_reads_back(data: bytes, subject: str) -> None:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Subject"] == subject
    assert fast_mail_parser.parse_email(data).subject == subject
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    lines = head.split(b"\r\n")
    subject_at = next(i for i, line in enumerate(lines) if line.startswith(b"Subject:"))
    subject_lines = [lines[subject_at]]
    for line in lines[subject_at + 1 :]:
        if not line.startswith(b" "):
            break
        subject_lines.append(line)
    # RFC 5322 2.1.1: 78 is a SHOULD; only an all-ASCII subject with a word too long for
    # a line keeps that word whole on a longer one.
    unbreakable = subject.isascii() and max(map(len, subject.split())) > 70
    assert unbreakable or all(len(line) <= 78 for line in subject_lines), subject_lines
    assert all(len(line) <= 998 for line in lines)
    assert subject_lines[0] != b"Subject:"  # no empty first line


def both_ways(subject: str) -> list[bytes]:
    message = outgoing(subject)
    return [message_bytes(message), build_email(message).as_bytes(policy=SMTP_POLICY)]


@pytest.mark.parametrize(
    "subject",
    [
        "27 new posts from Ελληνικά Layers and über ünïcode 中文",
        "Résumé — 日本語のダイジェスト 🎉 " + " ".join(["lange Überschrift"] * 8),
        "3 new posts from Alpha Blog and Beta Notes",
    ],
)
def test_subject_keeps_every_space(subject: str) -> None:
    for data in both_ways(subject):
        assert_reads_back(data, subject)


def test_generated_subjects_read_back_exactly() -> None:
    """Realistic digest subjects: a count, then feed titles mixing scripts."""
    generator = random.Random(20261129)
    for _ in range(400):
        titles = [
            " ".join(generator.choice(ALL_WORDS) for _ in range(generator.randint(1, 5)))
            for _ in range(generator.randint(1, 4))
        ]
        subject = f"{generator.randint(1, 99)} new posts from " + " and ".join(titles)
        subject = subject[:500]  # as the mailer caps it
        for data in both_ways(subject):
            assert_reads_back(data, subject)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ALL_WORDS) | st.text(min_size=1, max_size=12), max_size=40))
def test_any_words_read_back_exactly(words: list[str]) -> None:
    subject = " ".join(" ".join(words).split())[:400]  # one line, single spaces
    if not subject.isprintable():
        subject = "".join(char for char in subject if char.isprintable())
        subject = " ".join(subject.split())
    subject = subject or "x"
    for data in both_ways(subject):
        assert_reads_back(data, subject)


def test_subject_reads_back_through_a_real_smtp_server() -> None:
    subject = "27 new posts from Ελληνικά Layers and über ünïcode 中文 " + "Ærø " * 20
    subject = subject.strip()
    server = SmtpServer().start()
    try:
        settings = SmtpSettings(host=server.host, port=server.port, security="none", timeout=5)
        with SmtpSender(settings) as sender:
            sender.send(outgoing(subject))
        [item] = server.wait_for(1)
    finally:
        server.stop()
    assert_reads_back(item.data, subject)


@pytest.mark.parametrize(
    "subject",
    [
        "3 new posts from =?utf-8?b?SGk=?= Beta Notes",
        "=?utf-8?q?evil?= x",
        "=?utf-8?b?QQ0KQmNjOiB2aWN0aW1AZXZpbC5leGFtcGxl?=",  # "A\r\nBcc: victim@evil.example"
        "=?utf-8?q?a=0D=0AX-Injected:_yes?= and über =?iso-8859-1?q?=E9?=",
        "a=?b ?= =? ?=",
    ],
)
def test_subject_that_spells_an_encoded_word_reads_literally(subject: str) -> None:
    for data in both_ways(subject):
        assert_reads_back(data, subject)
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert "Bcc" not in parsed and "X-Injected" not in parsed
