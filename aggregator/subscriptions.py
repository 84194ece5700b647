"""Subscribe, confirm, change preferences, unsubscribe (DESIGN §8, THREATS S).

Sign-up is double opt-in: the form stores a pending address and yields a confirmation
message; only the link in it (a signed, time-limited, single-use token) confirms.
Whatever state an address is in, the sign-up answer is the same; what differs is only
the mail its owner receives (a confirmation, or a note with their preferences link).
Messages are returned, not sent, so that the web layer can answer before SMTP does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as random_source
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from email_validator import EmailNotValidError, validate_email

from .backoff import exponential_backoff
from .config import Settings
from .errors import (
    InvalidSubscription,
    MailError,
    MailPermanentError,
    RateLimited,
    StoreLocked,
    TokenError,
)
from .mail import OutgoingMessage, Sender, parse_address
from .paths import public_path
from .render import environment, inline_css, line
from .selection import CADENCES, Cadence, Subscriber
from .store import Database, Store
from .store import digests as digest_rows
from .store import feeds as feed_rows
from .store import subscribers as rows
from .tokens import make_token, verify_token

# How long a confirmation link stays valid (it is also single-use).
CONFIRM_MAX_AGE = timedelta(days=2)
"""How long a confirmation link works (once)."""
PENDING_MAX_AGE = timedelta(days=7)
"""Unconfirmed addresses are forgotten after this."""
CLIENT_WINDOW = timedelta(hours=1)
"""The window ``CLIENT_LIMIT`` counts sign-up attempts in."""
CLIENT_LIMIT = 10
"""Sign-up (and lost-link) attempts per client per ``CLIENT_WINDOW`` (THREATS S)."""
ADDRESS_WINDOW = timedelta(hours=1)
"""At most one confirmation (or links) mail per address per window."""
MAIL_RETRY_BASE = timedelta(minutes=5)
"""Wait before the second attempt at a confirmation or welcome mail; each further one
doubles it (``backoff.exponential_backoff``), as for digests."""
MAIL_RETRY_CAP = timedelta(hours=1)
"""Longest wait between two attempts at a confirmation or welcome mail."""
MAX_MAIL_ATTEMPTS = 8
"""Attempts at one confirmation or welcome mail (about four hours of retries, well
inside ``CONFIRM_MAX_AGE``), then it is given up and listed as failed."""
MAX_ADDRESS_INPUT = 320
"""Longest address accepted from a form, in characters (RFC 5321 §4.5.3.1: 64 + 1 + 255)."""

# Token purpose of the double opt-in link (tokens of one purpose are refused for another).
PURPOSE_CONFIRM = "confirm"
"""Token purpose of the double opt-in link."""
PURPOSE_UNSUBSCRIBE = "unsubscribe"
"""Token purpose of the unsubscribe links (page, one-click POST, mailto)."""
PURPOSE_PREFERENCES = "preferences"
"""Token purpose of the preferences link."""
PURPOSE_ARCHIVE = "archive"
"""Token purpose of the subscriber's digest archive (page and Atom feed)."""
PURPOSE_DIGEST = "digest"
"""Token purpose of one digest's web copy (the token's subject is the digest id)."""

_DOT_ATOM_HOST = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


# --- links --------------------------------------------------------------------------


class Links:
    """Absolute URLs of the pages mail links to (paths from ``paths.PATHS`` under
    ``base_url``), with their signed tokens (``tokens``, keyed by ``secret``).

    ``host`` is the base URL's host name when it is a dot-atom (RFC 5322 §3.2.3),
    else "localhost": it ends Message-IDs and List-Ids.
    """

    def __init__(self, base_url: str, secret: bytes) -> None:
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        host = urlsplit(self.base_url).hostname or "localhost"
        self.host = host if _DOT_ATOM_HOST.fullmatch(host) else "localhost"

    def token(self, purpose: str, subject: int, issued_at: datetime) -> str:
        """A signed token for ``purpose`` (a ``PURPOSE_*``) about id ``subject``."""
        return make_token(self._secret, purpose, str(subject), issued_at=issued_at)

    def verify(
        self, purpose: str, token: str, *, now: datetime, max_age: timedelta | None = None
    ) -> int:
        """The id a token was made for; ``TokenError`` for anything else."""
        subject = verify_token(self._secret, token, purpose, now=now, max_age=max_age)
        if not subject.isdigit():
            raise TokenError("invalid or expired link")
        return int(subject)

    def _url(self, path: str, **query: Any) -> str:
        """``path`` (root-relative) under the base URL, with ``query`` encoded."""
        return f"{self.base_url}{path}" + (f"?{urlencode(query)}" if query else "")

    def subscribe(self) -> str:
        """The sign-up page."""
        return self._url(public_path("subscribe"))

    def confirm(self, subscriber_id: int, issued_at: datetime) -> str:
        """The double opt-in link (valid ``CONFIRM_MAX_AGE``, once)."""
        token = self.token(PURPOSE_CONFIRM, subscriber_id, issued_at)
        return self._url(public_path("confirm"), token=token)

    def unsubscribe(self, subscriber_id: int, issued_at: datetime) -> str:
        """The unsubscribe page (GET shows it, POST is the RFC 8058 one-click)."""
        token = self.token(PURPOSE_UNSUBSCRIBE, subscriber_id, issued_at)
        return self._url(public_path("unsubscribe"), token=token)

    def unsubscribe_mailto(self, sender: str, subscriber_id: int, issued_at: datetime) -> str:
        """The ``mailto:`` of List-Unsubscribe (RFC 2369): the token in the subject."""
        token = self.token(PURPOSE_UNSUBSCRIBE, subscriber_id, issued_at)
        address = parse_address(sender).addr_spec
        return f"mailto:{address}?subject={quote('unsubscribe ' + token)}"

    def preferences(self, subscriber_id: int, issued_at: datetime) -> str:
        """The subscriber's preferences page."""
        token = self.token(PURPOSE_PREFERENCES, subscriber_id, issued_at)
        return self._url(public_path("preferences"), token=token)

    def archive(self, subscriber_id: int, issued_at: datetime, *, atom: bool = False) -> str:
        """The subscriber's digest archive (its Atom feed with ``atom``)."""
        token = self.token(PURPOSE_ARCHIVE, subscriber_id, issued_at)
        return self._url(
            public_path("digest_archive_feed" if atom else "digest_archive"), token=token
        )

    def digest(self, digest_id: int, issued_at: datetime) -> str:
        """The web copy of one digest."""
        token = self.token(PURPOSE_DIGEST, digest_id, issued_at)
        return self._url(public_path("digest", digest_id=digest_id), token=token)

    def source(self, feed_id: int) -> str:
        """The timeline filtered to one source."""
        return self._url(public_path("timeline"), source=feed_id)

    def entry(self, entry_id: int) -> str:
        """The entry's page here: for entries without a link of their own."""
        return self._url(public_path("entry", entry_id=entry_id))

    def home(self) -> str:
        """The timeline: the site's front page."""
        return self._url(public_path("timeline"))

    def message_id(self, kind: str, ident: int | str) -> str:
        """``<kind-ident.signature@host>``: the same for the same ident, unguessable."""
        mac = hmac.new(self._secret, f"message-id:{kind}:{ident}".encode(), hashlib.sha256)
        return f"<{kind}-{ident}.{mac.hexdigest()[:16]}@{self.host}>"


def links_for(store: Store, settings: Settings) -> Links:
    """The instance's links: ``web.base_url`` and the token secret: derived from
    $AGGREGATOR_SECRET_KEY when it is set, else the store's (made on first use)."""
    if settings.secret_key:
        key = hashlib.sha256(b"aggregator-tokens:" + settings.secret_key.encode()).digest()
        return Links(settings.web.base_url, key)
    return Links(settings.web.base_url, store.secret("tokens"))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _key_hash(kind: str, value: str) -> str:
    return f"{kind}:{hashlib.sha256(value.encode('utf-8', 'replace')).hexdigest()[:32]}"


# --- input --------------------------------------------------------------------------


def normalise_email(text: str) -> tuple[str, str]:
    """(address to mail, key that identifies it) or ``InvalidSubscription``.

    Syntax only (no DNS look-ups). The domain is lower-cased and IDNA-encoded for the
    key; the local part keeps its case for mailing but not for identity, as almost
    every mail system ignores it.
    """
    text = (text or "").strip()
    if not text or len(text) > MAX_ADDRESS_INPUT or any(ord(c) < 32 for c in text):
        raise _invalid_address(text)
    if "=?" in text:
        # An RFC 2047 encoded-word: mail libraries decode it in the To: header, so the
        # header would name another address than the one the message is sent to.
        raise _invalid_address(text)
    try:
        valid = validate_email(text, check_deliverability=False)
    except EmailNotValidError:
        raise _invalid_address(text) from None
    address = f"{valid.local_part}@{valid.ascii_domain}" if valid.ascii_domain else valid.email
    try:
        parse_address(address, allow_name=False)  # what the mailer will accept
    except ValueError:
        raise _invalid_address(text) from None
    return address, address.casefold()


def _invalid_address(text: str) -> InvalidSubscription:
    return InvalidSubscription("Please enter a valid email address.", field="email", value=text)


def parse_cadence(value: str | None) -> Cadence:
    """``value`` as a cadence ("daily" or "weekly"); ``InvalidSubscription`` otherwise."""
    for cadence in CADENCES:
        if value == cadence:
            return cadence
    raise InvalidSubscription("Please choose daily or weekly.", field="cadence", value=str(value))


SOURCE_GONE = (
    "One of the sources you chose is no longer offered (it was removed after the page "
    "was loaded). The list below is the current one: please choose again."
)
"""The answer to a form choosing a source id that no feed has."""
NO_SOURCE = "Please tick at least one source (every box ticked: all of them, later ones too)."
"""The answer to a form that offered sources and had every box cleared."""


def choose_feeds(
    store: Store, wanted: Iterable[int] | None, *, offered: Iterable[int] | None = None
) -> frozenset[int] | None:
    """The feeds a form's ticked boxes choose; None means every feed, later ones included.

    ``wanted``: the ticked ids (None: no box was ticked, or the form had none);
    ``offered``: the ids of the boxes the form showed (None: not known, the enabled
    feeds are taken). Every box offered left ticked is None; so is a form without boxes.
    Raises ``InvalidSubscription`` (field "source") for an id no feed has, and for no box
    ticked on a form that offered some; nothing is changed then.
    """
    if wanted is None:
        if offered is not None and set(offered) & feed_rows.feed_ids(store.db):
            raise InvalidSubscription(NO_SOURCE, field="source", value="")
        return None
    chosen = frozenset(wanted)
    ids = feed_rows.feed_ids(store.db)
    if not chosen <= ids:
        gone = min(chosen - ids)
        raise InvalidSubscription(SOURCE_GONE, field="source", value=str(gone))
    enabled = {ident for ident, _ in feed_rows.enabled_titles(store.db)}
    shown = set(offered) & ids if offered is not None else enabled
    if chosen >= shown or chosen >= enabled:
        return None
    return chosen


# --- signing up -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signup:
    """The outcome of a sign-up form: always the same answer to the person at the form."""

    message: OutgoingMessage | None  # for the address's owner; send after answering
    # (subscriber id, "confirm") when the message is a confirmation owed until delivered:
    # ``send_signup_mail`` forgets it once it goes, the service retries it otherwise.
    owed: tuple[int, rows.MailKind] | None = None


def request_signup(
    store: Store,
    settings: Settings,
    links: Links,
    *,
    email: str,
    cadence: str,
    feed_ids: Iterable[int] | None,
    client: str,
    now: datetime,
    offered_ids: Iterable[int] | None = None,
) -> Signup:
    """Record a sign-up and say what mail (if any) goes out; ``feed_ids`` and
    ``offered_ids`` are the sources ticked and shown (``choose_feeds``).

    Raises ``InvalidSubscription`` for a bad form and ``RateLimited`` when ``client``
    tried too often; neither depends on whether the address is known (THREATS S6).
    """
    address, key = normalise_email(email)
    chosen_cadence = parse_cadence(cadence)
    chosen = choose_feeds(store, feed_ids, offered=offered_ids)
    client_key = _key_hash("client", client)
    address_key = _key_hash("address", key)
    with store.write() as db:
        rows.prune_attempts(db, now - max(CLIENT_WINDOW, ADDRESS_WINDOW))
        rows.expire_pending(db, now - PENDING_MAX_AGE)
        if rows.count_attempts(db, client_key, now - CLIENT_WINDOW) >= CLIENT_LIMIT:
            raise RateLimited(client)
        rows.record_attempts(db, [client_key, address_key], now)
        existing = rows.by_key(db, key)
        if existing is None:
            subscriber_id = rows.insert(
                db,
                email=address,
                email_key=key,
                status="pending",
                cadence=chosen_cadence,
                feed_ids=chosen,
                now=now,
            )
            kind = "confirm"
        elif existing.status == "confirmed":
            subscriber_id, kind = existing.id, "already"
        else:
            subscriber_id, kind = existing.id, "confirm"
            rows.set_preferences(db, subscriber_id, cadence=chosen_cadence, feed_ids=chosen)
            if existing.status != "pending":
                rows.set_status(db, subscriber_id, "pending", now)
        last = existing.last_confirmation_at if existing else None
        if last is not None and now - ADDRESS_WINDOW < last <= now:
            return Signup(message=None)
        rows.mark_confirmation_sent(db, subscriber_id, now)
        if kind == "confirm":
            owe_first_attempt(db, subscriber_id, "confirm", now)
    if kind == "confirm":
        return Signup(
            message=confirmation_message(settings, links, subscriber_id, address, now),
            owed=(subscriber_id, "confirm"),
        )
    return Signup(message=reminder_message(settings, links, subscriber_id, address, now))


def request_links(
    store: Store,
    settings: Settings,
    links: Links,
    *,
    email: str,
    client: str,
    now: datetime,
) -> Signup:
    """ "Lost your link?": mail the address its links, if it has any.

    The answer to the visitor is the same whatever the address's state (THREATS S6);
    the limits are those of sign-up (per client, and one mail per address per hour). A
    confirmed address gets its preferences and unsubscribe links, a pending one a fresh
    confirmation link, any other address nothing.
    """
    address, key = normalise_email(email)
    client_key = _key_hash("client", client)
    address_key = _key_hash("address", key)
    with store.write() as db:
        rows.prune_attempts(db, now - max(CLIENT_WINDOW, ADDRESS_WINDOW))
        if rows.count_attempts(db, client_key, now - CLIENT_WINDOW) >= CLIENT_LIMIT:
            raise RateLimited(client)
        rows.record_attempts(db, [client_key, address_key], now)
        existing = rows.by_key(db, key)
        if existing is None or existing.status not in ("confirmed", "pending"):
            return Signup(message=None)
        last = existing.last_confirmation_at
        if last is not None and now - ADDRESS_WINDOW < last <= now:
            return Signup(message=None)
        rows.mark_confirmation_sent(db, existing.id, now)
        if existing.status == "pending":
            owe_first_attempt(db, existing.id, "confirm", now)
    if existing.status == "pending":
        return Signup(
            message=confirmation_message(settings, links, existing.id, address, now),
            owed=(existing.id, "confirm"),
        )
    return Signup(message=links_message(settings, links, existing.id, existing.email, now))


def mail_retry_delay(attempts: int) -> timedelta:
    """Wait after ``attempts`` attempts at a confirmation or welcome mail before the next:
    doubling from ``MAIL_RETRY_BASE``, at most ``MAIL_RETRY_CAP``."""
    return exponential_backoff(max(attempts, 1), base=MAIL_RETRY_BASE, cap=MAIL_RETRY_CAP)


def owe_first_attempt(db: Database, subscriber_id: int, kind: rows.MailKind, now: datetime) -> None:
    """Inside the transaction that decides a mail: it is owed until it is delivered,
    the attempt about to be made counted, the next one due after ``mail_retry_delay``
    should this one fail or its process die before it reports back."""
    rows.owe_mail(db, subscriber_id, kind, attempts=1, retry_at=now + mail_retry_delay(1))


def deliver_owed(
    store: Store,
    sender: Sender,
    message: OutgoingMessage,
    subscriber_id: int,
    kind: rows.MailKind,
) -> str | None:
    """Send a mail owed (see ``owe_first_attempt``) and record how it went: delivered,
    forgotten; refused for now, retried when due; refused for good (5xx) or out of
    attempts (``MAX_MAIL_ATTEMPTS``), given up. The failure as one line, never raised;
    a database that fails to record it is logged by the caller through ``StoreError``.
    """
    try:
        sender.send(message)
    except MailError as error:
        with store.write() as db:
            rows.mail_failed(
                db,
                subscriber_id,
                kind,
                str(error),
                permanent=isinstance(error, MailPermanentError),
                max_attempts=MAX_MAIL_ATTEMPTS,
            )
        return str(error)
    with store.write() as db:
        rows.mail_delivered(db, subscriber_id, kind)
    return None


def send_signup_mail(store: Store, sender: Sender, signup: Signup) -> str | None:
    """Send a sign-up's mail, if any; a confirmation that fails stays owed and the
    service's mail job retries it (``digests.send.send_welcomes``). The failure as one
    line, never raised to a visitor."""
    if signup.message is None:
        return None
    if signup.owed is None:
        return send_quietly(sender, signup.message)
    subscriber_id, kind = signup.owed
    return deliver_owed(store, sender, signup.message, subscriber_id, kind)


def send_quietly(sender: Sender, message: OutgoingMessage | None) -> str | None:
    """Send a sign-up mail; a failure is returned as one line, never raised to a visitor."""
    if message is None:
        return None
    try:
        sender.send(message)
    except MailError as error:
        return str(error)
    return None


def _message(
    settings: Settings,
    links: Links,
    *,
    template: str,
    subject: str,
    recipient: str,
    context: dict[str, Any],
    now: datetime,
) -> OutgoingMessage:
    env = environment()
    context = {"product": product_name(settings), "home_url": links.home(), **context}
    return OutgoingMessage(
        message_id=links.message_id(template, random_source.token_hex(8)),
        sender=settings.mail.sender,
        recipient=recipient,
        subject=subject,
        text=env.get_template(f"email/{template}.txt").render(context),
        html=inline_css(env.get_template(f"email/{template}.html").render(context)),
        date=now,
        headers={"Auto-Submitted": "auto-generated", "X-Auto-Response-Suppress": "All"},
    )


def confirmation_message(
    settings: Settings, links: Links, subscriber_id: int, address: str, now: datetime
) -> OutgoingMessage:
    """The double opt-in mail. Carries no text from the form (THREATS C6)."""
    return _message(
        settings,
        links,
        template="confirm",
        subject=f"Confirm your subscription to {product_name(settings)}",
        recipient=address,
        context={
            "confirm_url": links.confirm(subscriber_id, now),
            "valid_hours": int(CONFIRM_MAX_AGE.total_seconds() // 3600),
        },
        now=now,
    )


def reminder_message(
    settings: Settings, links: Links, subscriber_id: int, address: str, now: datetime
) -> OutgoingMessage:
    """For a sign-up of an address that is already subscribed: where its settings are."""
    return _message(
        settings,
        links,
        template="already",
        subject=f"You are already subscribed to {product_name(settings)}",
        recipient=address,
        context={
            "preferences_url": links.preferences(subscriber_id, now),
            "unsubscribe_url": links.unsubscribe(subscriber_id, now),
        },
        now=now,
    )


def links_message(
    settings: Settings, links: Links, subscriber_id: int, address: str, now: datetime
) -> OutgoingMessage:
    """The answer to "lost your link?" for a subscribed address."""
    return _message(
        settings,
        links,
        template="links",
        subject=f"Your links for {product_name(settings)}",
        recipient=address,
        context={
            "preferences_url": links.preferences(subscriber_id, now),
            "archive_url": links.archive(subscriber_id, now),
            "unsubscribe_url": links.unsubscribe(subscriber_id, now),
        },
        now=now,
    )


PRODUCT_NAME = "Blog digest"
"""The product's name in mail when the sender address has no display name."""
# Longest product name used in mail, in characters; a longer display name is cut.
MAX_PRODUCT_NAME_CHARS = 60
"""Longest product name taken from the sender's display name, in characters."""


def product_name(settings: Settings) -> str:
    """The name mail goes out under: the display name of ``mail.sender`` (one line,
    at most ``MAX_PRODUCT_NAME_CHARS``), else ``PRODUCT_NAME``."""
    try:
        return line(parse_address(settings.mail.sender).display_name, MAX_PRODUCT_NAME_CHARS) or (
            PRODUCT_NAME
        )
    except ValueError:
        return PRODUCT_NAME


# --- links followed -----------------------------------------------------------------


def confirm(store: Store, links: Links, token: str, now: datetime) -> Subscriber:
    """Confirm the address a confirmation token was made for. Works once, then expires.

    ``TokenError`` (one message for every cause) for a forged, expired, reused token or
    an address that is no longer pending.
    """
    subscriber_id = links.verify(PURPOSE_CONFIRM, token, now=now, max_age=CONFIRM_MAX_AGE)
    with store.write() as db:
        subscriber = rows.get(db, subscriber_id)
        if subscriber is None or subscriber.status != "pending":
            raise TokenError("invalid or expired link")
        if not rows.use_token(db, _token_hash(token), now):
            raise TokenError("invalid or expired link")
        rows.prune_tokens(db, now - CONFIRM_MAX_AGE * 2)
        rows.confirm(db, subscriber_id, now, rows.high_water(db))
        rows.mark_welcome_due(db, subscriber_id)
        confirmed = rows.get(db, subscriber_id)
    assert confirmed is not None
    return confirmed


def check_confirm_token(store: Store, links: Links, token: str, now: datetime) -> Subscriber:
    """Read-only check behind the confirmation page (GET changes nothing)."""
    subscriber_id = links.verify(PURPOSE_CONFIRM, token, now=now, max_age=CONFIRM_MAX_AGE)
    subscriber = rows.get(store.db, subscriber_id)
    if subscriber is None or subscriber.status != "pending":
        raise TokenError("invalid or expired link")
    return subscriber


def subscriber_for(
    store: Store, links: Links, purpose: str, token: str, now: datetime
) -> Subscriber:
    """The subscriber a long-lived link (preferences, unsubscribe, archive) was made for."""
    subscriber_id = links.verify(purpose, token, now=now)
    subscriber = rows.get(store.db, subscriber_id)
    if subscriber is None:
        raise TokenError("invalid or expired link")
    return subscriber


def unsubscribe(store: Store, links: Links, token: str, now: datetime) -> Subscriber | None:
    """Stop every digest to the address; pending ones are cancelled. Idempotent.

    ``TokenError`` for a bad link. When another process holds the database's write lock
    past the wait, the unsubscribe is kept durably in the store's spool and applied by
    its next write, before any digest is built or sent (an RFC 8058 one-click POST is
    sent once and must not be lost): then None. ``StoreError`` only when neither works.
    """
    subscriber_id = links.verify(PURPOSE_UNSUBSCRIBE, token, now=now)
    try:
        return unsubscribe_id(store, subscriber_id, now)
    except StoreLocked:
        store.spool_unsubscribe(subscriber_id, now)
        return None


def unsubscribe_id(store: Store, subscriber_id: int, now: datetime) -> Subscriber:
    """Unsubscribe a subscriber by id (pending digests cancelled); idempotent.
    ``TokenError`` when there is no such subscriber."""
    with store.write() as db:
        subscriber = rows.get(db, subscriber_id)
        if subscriber is None:
            raise TokenError("invalid or expired link")
        if subscriber.status in ("confirmed", "pending"):
            rows.set_status(db, subscriber_id, "unsubscribed", now)
        digest_rows.close_pending(db, subscriber_id, "cancelled", "unsubscribed")
        changed = rows.get(db, subscriber_id)
    assert changed is not None
    return changed


def update_preferences(
    store: Store,
    links: Links,
    token: str,
    now: datetime,
    *,
    cadence: str,
    feed_ids: Iterable[int] | None,
    offered_ids: Iterable[int] | None = None,
) -> Subscriber:
    """Change cadence and sources through a preferences link (sources as ``choose_feeds``
    reads them). ``TokenError`` for a bad link or a subscriber gone,
    ``InvalidSubscription`` for an unknown cadence or source; nothing changes then."""
    subscriber_id = links.verify(PURPOSE_PREFERENCES, token, now=now)
    chosen_cadence = parse_cadence(cadence)
    chosen = choose_feeds(store, feed_ids, offered=offered_ids)
    with store.write() as db:
        subscriber = rows.get(db, subscriber_id)
        if subscriber is None:
            raise TokenError("invalid or expired link")
        rows.set_preferences(db, subscriber_id, cadence=chosen_cadence, feed_ids=chosen)
        changed = rows.get(db, subscriber_id)
    assert changed is not None
    return changed


# --- the operator's commands --------------------------------------------------------


DEFAULT_CADENCE: Cadence = "weekly"
"""A new subscriber's cadence unless one is named."""


@dataclass(frozen=True, slots=True)
class OperatorAdd:
    """What ``subscribers add`` did: the subscriber as it now is, whether it was new,
    what changed for one already there (empty: nothing), and a confirmation to send."""

    subscriber: Subscriber
    created: bool
    changes: tuple[str, ...]
    message: OutgoingMessage | None


def add_by_operator(
    store: Store,
    settings: Settings,
    links: Links,
    *,
    email: str,
    cadence: str | None = None,
    pending: bool = False,
    first_digest_now: bool = False,
    now: datetime,
) -> tuple[Subscriber, OutgoingMessage | None]:
    """Add an address the operator vouches for; see ``add_or_update_by_operator``."""
    done = add_or_update_by_operator(
        store,
        settings,
        links,
        email=email,
        cadence=cadence,
        pending=pending,
        first_digest_now=first_digest_now,
        now=now,
    )
    return done.subscriber, done.message


def add_or_update_by_operator(
    store: Store,
    settings: Settings,
    links: Links,
    *,
    email: str,
    cadence: str | None = None,
    pending: bool = False,
    first_digest_now: bool = False,
    now: datetime,
) -> OperatorAdd:
    """Add an address the operator vouches for (confirmed), or a pending one with a
    confirmation message to send.

    Like a reader who confirms, a confirmed address gets its first digest at the next
    scheduled time; ``first_digest_now`` makes it due at once instead (the first run
    that finds something new sends it). A new address gets ``DEFAULT_CADENCE`` unless
    ``cadence`` names one. For an address already there only what the call names
    changes: its cadence when ``cadence`` is given, its state when it is not confirmed
    (confirmed, or pending again with ``pending``); its sources never.
    """
    address, key = normalise_email(email)
    chosen_cadence = parse_cadence(cadence) if cadence is not None else None
    changes: list[str] = []
    with store.write() as db:
        subscriber, created = _operator_add(
            db,
            address=address,
            key=key,
            cadence=chosen_cadence,
            pending=pending,
            first_digest_now=first_digest_now,
            changes=changes,
            now=now,
        )
    message = None
    if pending and subscriber.status == "pending":
        message = confirmation_message(settings, links, subscriber.id, subscriber.email, now)
    return OperatorAdd(subscriber, created, tuple(changes), message)


def _operator_add(
    db: Database,
    *,
    address: str,
    key: str,
    cadence: Cadence | None,
    pending: bool,
    first_digest_now: bool,
    changes: list[str],
    now: datetime,
) -> tuple[Subscriber, bool]:
    existing = rows.by_key(db, key)
    created = existing is None
    if existing is None:
        subscriber_id = rows.insert(
            db,
            email=address,
            email_key=key,
            status="pending" if pending else "confirmed",
            cadence=cadence or DEFAULT_CADENCE,
            feed_ids=None,
            now=now,
            watermark=rows.high_water(db),
        )
        if not pending and not first_digest_now:
            rows.advance(db, subscriber_id, rows.high_water(db), now)
        if not pending:
            rows.mark_welcome_due(db, subscriber_id)
    else:
        subscriber_id = existing.id
        if cadence is not None and cadence != existing.cadence:
            rows.set_cadence(db, subscriber_id, cadence)
            changes.append(f"cadence {existing.cadence} -> {cadence}")
        if pending and existing.status != "confirmed":
            if existing.status != "pending":
                rows.set_status(db, subscriber_id, "pending", now)
                changes.append(f"status {existing.status} -> pending")
        elif not pending and existing.status != "confirmed":
            rows.confirm(db, subscriber_id, now, rows.high_water(db))
            rows.mark_welcome_due(db, subscriber_id)
            changes.append(f"status {existing.status} -> confirmed")
    if pending:
        rows.mark_confirmation_sent(db, subscriber_id, now)
    subscriber = rows.get(db, subscriber_id)
    assert subscriber is not None
    if pending and subscriber.status == "pending":
        owe_first_attempt(db, subscriber_id, "confirm", now)
    return subscriber, created


def seed_configured_subscriber(store: Store, *, email: str, now: datetime) -> Subscriber | None:
    """Add the address the configuration names (``[service] demo_subscriber``) as a
    confirmed daily subscriber whose first digest is due at once, the first time the
    configuration names it, and never again: the database remembers it
    (``seeded_addresses``), so an address removed (``subscribers remove``) or
    unsubscribed stays so across restarts. An address already subscribed is only
    remembered. The subscriber added, or None. Raises ``InvalidSubscription`` for an
    address that is not one."""
    address, key = normalise_email(email)
    with store.write() as db:
        if rows.was_seeded(db, key):
            return None
        rows.remember_seeded(db, key, now)
        if rows.by_key(db, key) is not None:
            return None
        subscriber, _ = _operator_add(
            db,
            address=address,
            key=key,
            cadence="daily",
            pending=False,
            first_digest_now=True,
            changes=[],
            now=now,
        )
    return subscriber


def remove_by_operator(store: Store, who: str) -> str | None:
    """Forget a subscriber entirely (their digests too), named by address or by the id
    ``subscribers list`` shows; the address removed, or None when there is no such
    subscriber."""
    if who.strip().isdigit():
        lookup = int(who)
        key = None
    else:
        try:
            _, key = normalise_email(who)
        except InvalidSubscription:
            key = who.strip().casefold()
    with store.write() as db:
        subscriber = rows.by_key(db, key) if key is not None else rows.get(db, lookup)
        if subscriber is None or not rows.delete(db, subscriber.id):
            return None
        return subscriber.email
