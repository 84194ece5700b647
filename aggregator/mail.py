"""Outgoing mail: building safe messages and handing them to SMTP or a Maildir outbox.

Callers (digests, subscriptions) describe a message as an ``OutgoingMessage``; this
module turns it into RFC 5322 bytes and delivers it. Every header value is cleaned of
line breaks and control characters and addresses are built from parts, so text from
feeds or forms can never add a header or a recipient (THREATS C5). The SMTP envelope
recipient is exactly the message's one recipient, never read back from headers.

Delivery failures come out as ``MailTemporaryError`` (try again later: 4xx, connection
refused, lost or timed out, TLS or login trouble) or ``MailPermanentError`` (a 5xx for
this recipient or this message, or an address that cannot be mailed); both carry
``.address``. A failure while the message body is being transferred leaves its fate
unknown: it is reported as temporary, so a retry may deliver it a second time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import mailbox
import random
import re
import smtplib
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol

from .addresses import DOT_ATOM
from .addresses import MAX_ADDRESS_CHARS as MAX_ADDRESS_CHARS
from .addresses import clean_header_value as clean_header_value
from .addresses import parse_address as parse_address
from .errors import MailDeferredError, MailPermanentError, MailTemporaryError
from .smtp_settings import MAX_CONNECTIONS as MAX_CONNECTIONS
from .smtp_settings import Security as Security
from .smtp_settings import SmtpSettings as SmtpSettings


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message for one recipient, with its bodies already rendered."""

    message_id: str  # deterministic, chosen by the caller: "<digest-42.1a2b3c@host>"
    sender: str  # "Name <addr>" or "addr"
    recipient: str  # one bare address ("addr"); also the envelope recipient
    subject: str
    text: str
    html: str | None  # rendered, CSS inlined; None sends text/plain only
    date: datetime  # timezone-aware
    # List-Id, List-Unsubscribe, List-Unsubscribe-Post, Precedence, Auto-Submitted …
    headers: Mapping[str, str] = field(default_factory=dict)


# --- building -----------------------------------------------------------------------

# Longest subject kept, in characters; a longer one is cut with an ellipsis.
MAX_SUBJECT_CHARS = 500
# Longest value of an extra header, in characters.
MAX_HEADER_VALUE_CHARS = 4000
_FOLD_AT = 78
_HARD_LINE_LIMIT = 998

# Headers this module sets itself or that would change who receives the message.
_RESERVED_HEADERS = frozenset(
    {
        "subject",
        "from",
        "to",
        "cc",
        "bcc",
        "sender",
        "reply-to",
        "message-id",
        "date",
        "mime-version",
        "return-path",
        "received",
    }
)
_RESERVED_PREFIXES = ("content-", "resent-")
# Address and subject headers need the email package's own encoding (RFC 2047, quoting).
_ENCODED_HEADERS = frozenset({"subject", "from", "to", "mime-version"})
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # printable ASCII without ':' (RFC 5322 2.2)


class _MailPolicy(EmailPolicy):
    """SMTP policy that leaves ASCII list headers readable.

    The stock policy turns a long unbreakable value (an unsubscribe URL) into RFC 2047
    encoded words, which mail clients then fail to parse as a List-Unsubscribe link.
    Extra headers in plain ASCII are folded at spaces only.
    """

    def fold(self, name: str, value: Any) -> str:
        verbatim = _fold_own(name, str(value), self.linesep)
        return verbatim if verbatim is not None else super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        verbatim = _fold_own(name, str(value), self.linesep)
        if verbatim is not None:
            return verbatim.encode("ascii")
        return super().fold_binary(name, value)


# How messages are serialised for SMTP: CRLF line ends (RFC 5321 section 2.3.8), 7-bit
# transfer encodings, ASCII list headers folded at spaces only.
SMTP_POLICY = _MailPolicy(linesep="\r\n", cte_type="7bit")
# ``SMTP_POLICY`` with LF line ends, for Maildir files and previews.
FILE_POLICY = _MailPolicy(linesep="\n", cte_type="7bit")


def _fold_own(name: str, value: str, linesep: str) -> str | None:
    """The header as this module folds it, or None to leave it to the email package."""
    if name.lower() == "subject" and _needs_encoding(value):
        return fold_encoded(name, value, linesep)
    return _fold_verbatim(name, value, linesep)


def _fold_verbatim(name: str, value: str, linesep: str) -> str | None:
    lowered = name.lower()
    if lowered.startswith("content-") or not value.isascii():
        return None
    # An ASCII Subject is folded here too: the stock folder moves a long one to the next
    # line whole ("Subject:" CRLF SP text), which parsers read with a leading space
    # (RFC 5322 2.2.3 folds only where needed). One that spells an encoded word goes
    # to ``fold_encoded``, which encodes it so that no reader decodes feed text.
    if lowered == "subject":
        if _needs_encoding(value):
            return None
    elif lowered in _ENCODED_HEADERS:
        return None
    lines = [f"{name}:"]
    for word in value.split():
        if len(lines[-1]) + 1 + len(word) > _FOLD_AT and lines[-1].strip() != f"{name}:":
            lines.append("")
        lines[-1] += " " + word
    if any(len(line) > _HARD_LINE_LIMIT for line in lines):
        return None
    return linesep.join(lines) + linesep


# RFC 2047 section 2: an encoded word is at most 75 characters, "=?utf-8?q?" and "?="
# included; section 5 (3): these characters stand for themselves in a "Q" word anywhere.
_ENCODED_WORD_MAX = 75
_ENCODED_WORD_OVERHEAD = len("=?utf-8?q??=")
_Q_LITERAL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_BYTES = ["_" if b == 0x20 else chr(b) if b in _Q_LITERAL else f"={b:02X}" for b in range(256)]


def _needs_encoding(value: str) -> bool:
    return not value.isascii() or "=?" in value


def _plain_word(word: str) -> bool:
    """Whether a word may stand in a header as it is: printable ASCII, short enough for one
    line, and not mistakable for an encoded word (RFC 2047 section 5)."""
    return word.isascii() and "=?" not in word and len(word) <= _FOLD_AT - 2


def fold_encoded(name: str, value: str, linesep: str) -> str:
    """``Name: value`` + ``linesep`` in ASCII, lines at most 78 characters (RFC 5322
    2.1.1), that every RFC 2047 decoder reads back as exactly ``value`` (one line of
    text, single spaces, as ``clean_header_value`` leaves it).

    Plain ASCII words stand as they are; each run of other words (non-ASCII, too long,
    or spelling ``=?``: RFC 2047 section 5 says such text must itself be encoded) is
    written as UTF-8 encoded words with the spaces between its words encoded inside
    them. Folding happens only between words, where the whitespace either is a real
    space (next to a plain word) or is dropped by decoders between two encoded words
    of one run (RFC 2047 section 6.2), which carry their spaces inside.
    """
    head = f"{name}:"
    lines = [head]

    def room() -> int:
        return _FOLD_AT - len(lines[-1]) - 1

    words = value.split(" ")
    index = 0
    while index < len(words):
        word = words[index]
        if _plain_word(word):
            if lines[-1] != head and len(word) > room():
                lines.append("")
            lines[-1] += " " + word
            index += 1
            continue
        end = index + 1
        while end < len(words) and not _plain_word(words[end]):
            end += 1
        for encoded in _encoded_words(" ".join(words[index:end]), room, lines, head):
            lines[-1] += " " + encoded
        index = end
    return linesep.join(lines) + linesep


def _encoded_words(
    text: str, room: Callable[[], int], lines: list[str], head: str
) -> Iterator[str]:
    """``text`` as UTF-8 encoded words ("Q" or "B", whichever is shorter), each as long as
    the current line allows (a new line is started when little room is left), never
    splitting a character (RFC 2047 section 5)."""
    chars = [char.encode("utf-8", "replace") for char in text]
    q_sizes = [sum(len(_Q_BYTES[b]) for b in data) for data in chars]
    total = sum(map(len, chars))
    method = "q" if sum(q_sizes) <= 4 * -(-total // 3) else "b"
    start = 0
    while start < len(chars):
        if room() < _ENCODED_WORD_OVERHEAD + 12 and lines[-1] != head:
            lines.append("")
        limit = min(_ENCODED_WORD_MAX, room()) - _ENCODED_WORD_OVERHEAD
        end, size, octets = start, 0, 0
        while end < len(chars):
            if method == "q":
                grown = size + q_sizes[end]
            else:
                grown = 4 * -(-(octets + len(chars[end])) // 3)
            if grown > limit and end > start:
                break
            size, octets, end = grown, octets + len(chars[end]), end + 1
        data = b"".join(chars[start:end])
        if method == "q":
            payload = "".join(_Q_BYTES[b] for b in data)
        else:
            payload = base64.b64encode(data).decode("ascii")
        yield f"=?utf-8?{method}?{payload}?="
        start = end


def clean_message_id(value: str) -> str:
    """``<left@right>`` with nothing else; ``ValueError`` for anything else."""
    text = clean_header_value(value).strip("<> ")
    left, at, right = text.partition("@")
    if not (at and DOT_ATOM.fullmatch(left) and DOT_ATOM.fullmatch(right)) or len(text) > 250:
        raise ValueError(f"not a Message-ID: {value!r}")
    return f"<{text}>"


def envelope_addresses(message: OutgoingMessage) -> tuple[str, str]:
    """(MAIL FROM, RCPT TO) for the message: the sender's and recipient's bare addresses."""
    return _sender_address(message.sender).addr_spec, _recipient(message).addr_spec


@functools.lru_cache(maxsize=64)
def _sender_address(value: str) -> Address:
    """``parse_address`` for the sender, which is the same for every message of a run."""
    return parse_address(value)


def _recipient(message: OutgoingMessage) -> Address:
    try:
        return parse_address(message.recipient, allow_name=False)
    except ValueError as error:
        raise MailPermanentError(f"cannot be mailed: {error}", address=message.recipient) from error


def build_email(message: OutgoingMessage) -> EmailMessage:
    """The message as MIME: text/plain, or multipart/alternative with text then HTML.

    Raises ``MailPermanentError`` when the recipient cannot be mailed, ``ValueError``
    for a sender, Message-ID, date or extra header that the caller got wrong.
    """
    recipient = _recipient(message)
    if message.date.tzinfo is None:
        raise ValueError("message date must be timezone-aware")
    subject = clean_header_value(message.subject)
    if len(subject) > MAX_SUBJECT_CHARS:
        subject = subject[: MAX_SUBJECT_CHARS - 1].rstrip() + "…"

    email = EmailMessage(policy=SMTP_POLICY)
    email["From"] = parse_address(message.sender)
    email["To"] = recipient
    # Stored as its encoded words: the email package parses what it is given, and would
    # decode feed text that spells an encoded word ("=?utf-8?b?SGk=?=" as "Hi").
    email["Subject"] = _stored_value("Subject", subject)
    email["Date"] = message.date
    email["Message-ID"] = clean_message_id(message.message_id)
    for name, value in message.headers.items():
        email[_extra_header_name(name)] = clean_header_value(value)[:MAX_HEADER_VALUE_CHARS]
    email.set_content(message.text, subtype="plain", charset="utf-8")
    if message.html is not None:
        email.add_alternative(message.html, subtype="html", charset="utf-8")
        for part in email.iter_parts():
            del part["MIME-Version"]  # the email package repeats it on each part
    return email


def _stored_value(name: str, value: str) -> str:
    """``value`` as header text that the email package parses back into ``value``."""
    if not _needs_encoding(value):
        return value
    folded = fold_encoded(name, value, "\n")
    return " ".join(folded[len(name) + 1 :].split())


def _extra_header_name(name: str) -> str:
    lowered = name.lower()
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"not a header name: {name!r}")
    if lowered in _RESERVED_HEADERS or lowered.startswith(_RESERVED_PREFIXES):
        raise ValueError(f"header {name!r} is set by the mailer, not by callers")
    return name


# --- serialising without the email package's generator ------------------------------
#
# ``build_email(...).as_bytes()`` spends most of its time in the email package's header
# registry and its pure-Python quoted-printable encoder. ``message_bytes`` writes the
# same message (the same headers, the same decoded bodies) directly: the shared headers
# (From, Subject) are folded by the email package once per distinct value, the
# per-recipient ones that are plain ASCII are written as they are, and bodies are
# encoded by ``binascii``. Anything unusual falls back to the email package's folding.

_MAX_LINE = 78  # RFC 5322 2.1.1 "SHOULD"; the email package's max_line_length
_SNIFF_LINES = 10  # as the email package decides between quoted-printable and base64


@functools.lru_cache(maxsize=512)
def _folded(linesep: str, name: str, value: str) -> bytes:
    """One header as the email package writes it (encoded words, quoting, folding)."""
    policy = SMTP_POLICY if linesep == "\r\n" else FILE_POLICY
    header = policy.header_store_parse(name, value)[1]
    return policy.fold_binary(name, header)


@functools.lru_cache(maxsize=512)
def _subject_header(linesep: str, subject: str) -> bytes:
    """The Subject line(s): encoded by ``fold_encoded`` when it is not plain ASCII."""
    if _needs_encoding(subject):
        return fold_encoded("Subject", subject, linesep).encode("ascii")
    return _folded(linesep, "Subject", subject)


def _plain_header(name: str, value: str, linesep: str) -> bytes:
    """``Name: value`` when it is one short ASCII line, else the email package's fold."""
    line = f"{name}: {value}"
    if len(line) <= _MAX_LINE and line.isascii() and "=?" not in value:
        return (line + linesep).encode("ascii")
    return _folded(linesep, name, value)


def _extra_header(name: str, value: str, linesep: str) -> bytes:
    if value.isascii() and "=?" not in value:
        verbatim = _fold_verbatim(name, value, linesep)
        if verbatim is not None:
            return verbatim.encode("ascii")
    return _folded(linesep, name, value)


def _text_part(text: str, subtype: str, linesep: str) -> tuple[bytes, bytes]:
    """(Content-* header lines, encoded body) of one text part, charset UTF-8.

    7bit when every line is ASCII and at most 78 octets, else quoted-printable or, when
    the first lines come out shorter that way, base64 (RFC 2045 6.7, 6.8), as the email
    package's ``set_content`` chooses.
    """
    sep = linesep.encode("ascii")
    data = text.encode("utf-8")
    lines = data.splitlines()
    if data.isascii() and max(map(len, lines), default=0) <= _MAX_LINE:
        cte, body = "7bit", sep.join(lines) + sep
    else:
        first = lines[:_SNIFF_LINES]
        sniff_qp = binascii.b2a_qp(b"\n".join(first) + b"\n", istext=True)
        if len(sniff_qp) > len(binascii.b2a_base64(sep.join(first) + sep)):
            cte = "base64"
            body = base64.encodebytes(sep.join(lines) + sep).replace(b"\n", sep)
        else:
            cte = "quoted-printable"
            body = b"\n".join(map(_qp_line, lines)) + b"\n"
            if sep != b"\n":  # soft line breaks too
                body = body.replace(b"\n", sep)
    headers = (
        f'Content-Type: text/{subtype}; charset="utf-8"{linesep}'
        f"Content-Transfer-Encoding: {cte}{linesep}"
    )
    return headers.encode("ascii"), body


_QP_CACHE_LINES = 5_000  # about fifteen distinct digests' worth; a few MB at the most
_QP_CACHE_LONGEST = 1_000  # octets; longer lines are encoded every time
_qp_lines: dict[bytes, bytes] = {}


def _qp_line(line: bytes) -> bytes:
    """One line quoted-printable (RFC 2045 6.7), soft breaks ("=" LF) included, no
    line end.

    Each line encodes on its own, so the lines that digests of the same stories share
    are encoded once (a bounded cache); only the lines with personal links are new.
    """
    encoded = _qp_lines.get(line)
    if encoded is None:
        encoded = binascii.b2a_qp(line + b"\n", istext=True)[:-1]
        if len(line) <= _QP_CACHE_LONGEST:
            if len(_qp_lines) >= _QP_CACHE_LINES:
                _qp_lines.clear()
            _qp_lines[line] = encoded
    return encoded


def message_bytes(message: OutgoingMessage, *, linesep: str = "\r\n") -> bytes:
    """The message as RFC 5322 bytes, lines ending in ``linesep`` (CRLF for SMTP).

    The same message as ``build_email(message).as_bytes(policy)``: the same header
    values and the same decoded bodies (the MIME boundary is random either way, and
    quoted-printable lines may break elsewhere), at a fraction of the cost. Raises as
    ``build_email`` does.
    """
    recipient = _recipient(message)
    if message.date.tzinfo is None:
        raise ValueError("message date must be timezone-aware")
    subject = clean_header_value(message.subject)
    if len(subject) > MAX_SUBJECT_CHARS:
        subject = subject[: MAX_SUBJECT_CHARS - 1].rstrip() + "…"
    sender = str(_sender_address(message.sender))
    if recipient.display_name == "" and DOT_ATOM.fullmatch(recipient.username):
        to = _plain_header("To", recipient.addr_spec, linesep)
    else:
        to = _folded(linesep, "To", str(recipient))
    parts = [
        _folded(linesep, "From", sender),
        to,
        _subject_header(linesep, subject),
        _plain_header("Date", format_datetime(message.date), linesep),
        _plain_header("Message-ID", clean_message_id(message.message_id), linesep),
    ]
    for name, value in message.headers.items():
        parts.append(
            _extra_header(
                _extra_header_name(name),
                clean_header_value(value)[:MAX_HEADER_VALUE_CHARS],
                linesep,
            )
        )
    sep = linesep.encode("ascii")
    text_headers, text_body = _text_part(message.text, "plain", linesep)
    if message.html is None:
        parts += [text_headers, b"MIME-Version: 1.0", sep, sep, text_body]
        return b"".join(parts)
    html_headers, html_body = _text_part(message.html, "html", linesep)
    boundary = _boundary(text_body, html_body)
    delimiter = b"--" + boundary
    parts += [
        b"MIME-Version: 1.0" + sep,
        b"Content-Type: multipart/alternative;" + sep,
        b' boundary="' + boundary + b'"' + sep,
        sep,
        delimiter + sep,
        text_headers + sep + text_body + sep,
        delimiter + sep,
        html_headers + sep + html_body + sep,
        delimiter + b"--" + sep,
    ]
    return b"".join(parts)


def _boundary(*bodies: bytes) -> bytes:
    """A MIME boundary in the email package's style that no body contains (RFC 2046 5.1.1)."""
    while True:
        token = f"==============={random.randrange(10**18, 10**19)}==".encode("ascii")
        if not any(token in body for body in bodies):
            return token


# --- delivery -----------------------------------------------------------------------

_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


class Sender(Protocol):
    """Where digests and sign-up mail go: an SMTP server or a Maildir outbox.
    ``connections`` messages may be handed over at once, from as many threads."""

    connections: int

    def send(self, message: OutgoingMessage) -> None:
        """Hand the message over, or raise MailTemporaryError / MailPermanentError."""
        ...

    def close(self) -> None:
        """Release the connection or the folder."""
        ...


class _StaleConnection(Exception):
    """A reused connection failed before the message was transferred: safe to retry."""


class _SessionRefused(Exception):
    """The server refused a new session (connection refused or reset, closed or a non-220
    reply such as 421 at the greeting, 421 to EHLO): nothing was sent. ``error`` is the
    MailTemporaryError to raise when no other connection can take the message."""

    def __init__(self, error: MailTemporaryError) -> None:
        super().__init__(str(error))
        self.error = error


class SmtpSender:
    """Delivers over up to ``settings.connections`` SMTP connections, each kept open
    (one EHLO) for up to ``max_messages_per_connection`` messages and reopened when the
    server drops it.

    Synchronous: callers run it in worker threads. Each concurrent ``send`` takes a
    connection of its own; past ``connections`` callers wait for one to come free.
    A connection whose session the server refuses (a relay that allows fewer sessions
    than configured) leaves the pool for the sender's lifetime and its message goes to
    another connection; only when the last one is refused does ``send`` fail.
    TLS certificates are always verified; ``ssl_context`` may trust a private CA.
    """

    def __init__(self, settings: SmtpSettings, *, ssl_context: ssl.SSLContext | None = None):
        self.settings = settings
        self.connections = settings.connections
        context = ssl_context or ssl.create_default_context()
        self._pool = threading.Condition()
        # Last in, first out: a lone caller keeps reusing the one open connection.
        self._idle: list[_Channel] = [_Channel(settings, context) for _ in range(self.connections)]
        self._live = self.connections  # channels in the pool, idle or in use

    @property
    def where(self) -> str:
        """``host:port`` of the server, for log lines and errors."""
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def live_connections(self) -> int:
        """Connections still in the pool: ``connections`` less those whose session the
        server refused."""
        with self._pool:
            return self._live

    def send(self, message: OutgoingMessage) -> None:
        """Hand the message over on an idle connection of the pool (reconnecting once if a
        reused connection went stale before any data was sent). A connection whose new
        session is refused leaves the pool and the message waits for another one; the
        last connection is kept and its refusal raised. Raises MailTemporaryError (4xx,
        connection or TLS failure: try later; ``MailDeferredError`` when the 4xx concerns
        the recipient alone) or MailPermanentError (5xx, or an address that cannot be
        mailed); RFC 5321 section 4.2.1.
        """
        sender, recipient = envelope_addresses(message)
        data = message_bytes(message)
        while True:
            channel = self._take()
            try:
                channel.send(sender, recipient, data, address=message.recipient)
            except _SessionRefused as refused:
                if self._retire(channel):
                    continue  # another connection takes the message
                self._give(channel)
                raise refused.error from refused
            except BaseException:
                self._give(channel)
                raise
            self._give(channel)
            return

    def _take(self) -> _Channel:
        with self._pool:
            while not self._idle:
                self._pool.wait()
            return self._idle.pop()

    def _give(self, channel: _Channel) -> None:
        with self._pool:
            self._idle.append(channel)
            self._pool.notify_all()

    def _retire(self, channel: _Channel) -> bool:
        """Drop a refused channel from the pool unless it is the last one; True if dropped."""
        with self._pool:
            if self._live <= 1:
                return False
            self._live -= 1
            self._pool.notify_all()
        channel.disconnect(polite=False)
        return True

    def close(self) -> None:
        """Quit every connection, once the messages in flight are through."""
        with self._pool:
            while len(self._idle) < self._live:
                self._pool.wait()
            channels, self._idle = self._idle, []
        try:
            for channel in channels:
                channel.disconnect(polite=True)
        finally:
            with self._pool:
                self._idle.extend(channels)
                self._pool.notify_all()

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Channel:
    """One SMTP connection, opened on first use; one transaction at a time."""

    def __init__(self, settings: SmtpSettings, context: ssl.SSLContext) -> None:
        self.settings = settings
        self._context = context
        self._connection: smtplib.SMTP | None = None
        self._used = 0  # transactions on the current connection

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def send(self, sender: str, recipient: str, data: bytes, *, address: str) -> None:
        try:
            self._send_once(sender, recipient, data, address=address)
        except _StaleConnection:
            # The server closed an idle or used-up connection: nothing was transferred.
            self._send_once(sender, recipient, data, address=address, retry=False)

    # -- one transaction -------------------------------------------------------------

    def _send_once(
        self, sender: str, recipient: str, data: bytes, *, address: str, retry: bool = True
    ) -> None:
        if self._connection is not None and self._used >= self.settings.max_messages_per_connection:
            self.disconnect(polite=True)
        reused = self._connection is not None
        connection = self._connection or self._connect(address)
        self._used += 1
        if connection.has_extn("pipelining"):
            self._send_pipelined(
                connection, sender, recipient, data, address=address, stale=reused and retry
            )
            return
        stage = "sender"
        try:
            code, reply = connection.mail(sender)
            if code == 250:
                stage = "recipient"
                code, reply = connection.rcpt(recipient)
        except OSError as error:  # includes SMTPServerDisconnected
            self.disconnect(polite=False)
            if reused and retry:
                raise _StaleConnection from error
            raise MailTemporaryError(
                f"connection to {self.where} lost: {_describe(error)}", address=address
            ) from error
        if code not in (250, 251):
            self._after_refusal(code)
            if code == 421 and reused and retry:
                raise _StaleConnection
            raise _refusal(code, reply, stage, address, self.where)
        try:
            code, reply = connection.data(data)
        except smtplib.SMTPResponseException as error:  # DATA itself refused: nothing sent
            self._after_refusal(error.smtp_code)
            raise _refusal(
                error.smtp_code, error.smtp_error, "data", address, self.where
            ) from error
        except OSError as error:
            raise self._lost_in_transfer(error, address) from error
        if code != 250:
            self._after_refusal(code)
            raise _refusal(code, reply, "data", address, self.where)

    def _send_pipelined(
        self,
        connection: smtplib.SMTP,
        sender: str,
        recipient: str,
        data: bytes,
        *,
        address: str,
        stale: bool,
    ) -> None:
        """MAIL, RCPT and DATA in one write and their three replies in one wait, then the
        message once DATA was answered 354 (RFC 2920 3.1): one round trip instead of
        three before the message. The same outcomes as one command at a time."""
        commands = (
            f"MAIL FROM:{smtplib.quoteaddr(sender)}\r\n"
            f"RCPT TO:{smtplib.quoteaddr(recipient)}\r\nDATA\r\n"
        )
        try:
            connection.send(commands.encode("ascii"))
            mail, rcpt, start = (connection.getreply() for _ in range(3))
        except OSError as error:  # includes SMTPServerDisconnected: nothing was transferred
            self.disconnect(polite=False)
            if stale:
                raise _StaleConnection from error
            raise MailTemporaryError(
                f"connection to {self.where} lost: {_describe(error)}", address=address
            ) from error
        refused: tuple[str, tuple[int, bytes]] | None = None
        if mail[0] != 250:
            refused = ("sender", mail)
        elif rcpt[0] not in (250, 251):
            refused = ("recipient", rcpt)
        elif start[0] != 354:
            refused = ("data", start)
        if refused is not None:
            if start[0] == 354:  # a server that takes DATA without a recipient: end it empty
                with contextlib.suppress(OSError):
                    connection.send(b".\r\n")
                    connection.getreply()
            stage, (code, reply) = refused
            self._after_refusal(code)
            if code == 421 and stale and stage != "data":
                raise _StaleConnection
            raise _refusal(code, reply, stage, address, self.where)
        body = _LEADING_DOT.sub(b"..", data)  # dot-stuffing, RFC 5321 4.5.2
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        try:
            connection.send(body + b".\r\n")
            code, reply = connection.getreply()
        except OSError as error:
            raise self._lost_in_transfer(error, address) from error
        if code != 250:
            self._after_refusal(code)
            raise _refusal(code, reply, "data", address, self.where)

    def _lost_in_transfer(self, error: OSError, address: str) -> MailTemporaryError:
        """The connection broke after the message started: drop it; whether the server
        kept the message is unknown, so it is tried again later."""
        self.disconnect(polite=False)
        return MailTemporaryError(
            f"connection to {self.where} lost during transfer, delivery unknown: "
            f"{_describe(error)}",
            address=address,
        )

    def _after_refusal(self, code: int) -> None:
        if code == 421:  # the server is closing the connection
            self.disconnect(polite=False)
        else:
            self._reset()

    # -- connection ------------------------------------------------------------------

    def _connect(self, address: str) -> smtplib.SMTP:
        """A new session, greeted and logged in. Raises ``_SessionRefused`` when the server
        refuses the session itself (RFC 5321 section 3.1: 421 or a closed connection
        instead of the 220 greeting, or 421 to EHLO; or the connection is refused or
        reset), MailTemporaryError for any other failure."""
        settings = self.settings
        connection: smtplib.SMTP | None = None
        try:
            try:
                if settings.security == "tls":
                    connection = smtplib.SMTP_SSL(
                        settings.host,
                        settings.port,
                        local_hostname=settings.helo,
                        timeout=settings.timeout,
                        context=self._context,
                    )
                else:
                    connection = smtplib.SMTP(
                        settings.host,
                        settings.port,
                        local_hostname=settings.helo,
                        timeout=settings.timeout,
                    )
                connection.ehlo_or_helo_if_needed()
            except (
                smtplib.SMTPConnectError,
                smtplib.SMTPServerDisconnected,
                ConnectionError,
            ) as error:
                _abandon(connection)
                raise _SessionRefused(
                    MailTemporaryError(
                        f"cannot connect to {self.where}: {_describe(error)}", address=address
                    )
                ) from error
            except smtplib.SMTPHeloError as error:
                if error.smtp_code != 421:
                    raise
                _abandon(connection)
                raise _SessionRefused(
                    MailTemporaryError(
                        f"{self.where} refused the session: {_describe(error)}", address=address
                    )
                ) from error
            if settings.security == "starttls":
                if not connection.has_extn("starttls"):
                    raise MailTemporaryError(
                        f"{self.where} does not offer STARTTLS; not sending in clear text",
                        address=address,
                    )
                connection.starttls(context=self._context)
                connection.ehlo()
            if settings.username is not None:
                connection.login(settings.username, settings.password or "")
        except (MailTemporaryError, _SessionRefused):
            _abandon(connection)
            raise
        except ssl.SSLCertVerificationError as error:
            _abandon(connection)
            raise MailTemporaryError(
                f"TLS certificate of {self.where} not trusted: {error.verify_message}",
                address=address,
            ) from error
        except smtplib.SMTPAuthenticationError as error:
            _abandon(connection)
            raise MailTemporaryError(
                f"login to {self.where} refused ({error.smtp_code})", address=address
            ) from error
        except (smtplib.SMTPException, OSError) as error:
            _abandon(connection)
            raise MailTemporaryError(
                f"cannot connect to {self.where}: {_describe(error)}",
                address=address,
            ) from error
        self._connection = connection
        self._used = 0
        return connection

    def _reset(self) -> None:
        """Abort a refused transaction so the connection can carry the next one."""
        if self._connection is None:
            return
        try:
            code, _ = self._connection.rset()
        except (smtplib.SMTPException, OSError):
            code = 0
        if code != 250:
            self.disconnect(polite=False)

    def disconnect(self, *, polite: bool) -> None:
        connection, self._connection = self._connection, None
        self._used = 0
        if connection is None:
            return
        if polite:
            try:
                connection.quit()
                return
            except (smtplib.SMTPException, OSError):
                pass
        _abandon(connection)


def _abandon(connection: smtplib.SMTP | None) -> None:
    if connection is not None:
        with contextlib.suppress(OSError):
            connection.close()


def _refusal(
    code: int, reply: bytes | str, stage: str, address: str, where: str
) -> MailTemporaryError | MailPermanentError:
    """The error for a refused command at ``stage`` (sender, recipient or data).

    A 4xx other than 421 to RCPT or DATA concerns this one recipient's transaction
    (``MailDeferredError``: the server answered), and so does a 552 to RCPT, which RFC
    5321 section 4.5.3.1.10 says to treat as 452. A 4xx to MAIL and a 421 anywhere are
    the server's (``MailTemporaryError``); a 5xx for the sender is our configuration,
    not this recipient: temporary too.
    """
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    message = f"{where} refused the {stage}: {code} {text}"
    deferred = stage != "sender" and 400 <= code < 500 and code != 421
    if deferred or (stage == "recipient" and code == 552):
        return MailDeferredError(message, address=address)
    if 500 <= code < 600 and stage != "sender":
        return MailPermanentError(message, address=address)
    return MailTemporaryError(message, address=address)


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


class MaildirSender:
    """Writes each message into a Maildir (``new/``); the outbox when there is no SMTP.

    The folder and its parents are created on first use. ``mailbox`` writes into
    ``tmp/`` and then moves the file into ``new/``, so readers never see half a message.
    """

    connections = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._box: mailbox.Maildir | None = None
        self._lock = threading.Lock()

    def send(self, message: OutgoingMessage) -> None:
        """Write the message as one file into the Maildir's ``new/`` (through ``tmp/``);
        raises MailTemporaryError when the folder cannot be written.
        """
        data = message_bytes(message, linesep="\n")
        with self._lock:
            try:
                if self._box is None:
                    # Maildir(create=True) makes tmp/new/cur only when the folder is new.
                    for sub in ("tmp", "new", "cur"):
                        (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
                    self._box = mailbox.Maildir(self.path, create=True)
                self._box.add(data)
            except OSError as error:
                raise MailTemporaryError(
                    f"cannot write to outbox {self.path}: {error.strerror or error}",
                    address=message.recipient,
                ) from error

    def close(self) -> None:
        """Close the Maildir handle, if one is open."""
        with self._lock:
            if self._box is not None:
                self._box.close()
                self._box = None

    def __enter__(self) -> MaildirSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_sender(smtp: SmtpSettings | None, outbox: Path) -> Sender:
    """SMTP when a server is configured, else the Maildir outbox."""
    return SmtpSender(smtp) if smtp is not None else MaildirSender(outbox)
