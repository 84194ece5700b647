"""Signed link tokens for confirmation, unsubscribe and preferences links.

A token is ``<payload>.<signature>``, both unpadded URL-safe base64. The payload holds
the issue time (whole seconds since the epoch, UTC) and the subject (a subscriber id or
an address). The signature is HMAC-SHA256 over a version tag, the purpose and the
payload, so a token made for one purpose never verifies for another.

Tokens are capabilities, not secrets: the subject is readable by whoever holds the link.
Verification only proves that we issued the token, for this purpose, recently enough.
That a confirmation token works once is enforced by the store (confirming an address
that is already confirmed changes nothing), not here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta

from .errors import TokenError

_VERSION = b"aggregator-token-v1"
_PURPOSE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_MAX_TOKEN_LENGTH = 2048
_SIGNATURE_BYTES = 32
# One message for every cause, so a caller cannot tell forged from expired.
_INVALID = "invalid or expired link"


def new_secret() -> bytes:
    """32 random bytes for signing tokens; created once and kept outside the repository."""
    return secrets.token_bytes(32)


def make_token(secret: bytes, purpose: str, subject: str, *, issued_at: datetime) -> str:
    """A URL-safe token binding ``purpose`` and ``subject``, issued at ``issued_at``."""
    _check_secret(secret)
    _check_purpose(purpose)
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must be timezone-aware")
    seconds = int(issued_at.timestamp())
    if seconds < 0:
        raise ValueError("issued_at must be after 1970")
    payload = f"{seconds}:{subject}".encode()
    return f"{_encode(payload)}.{_encode(_sign(secret, purpose, payload))}"


def verify_token(
    secret: bytes, token: str, purpose: str, *, now: datetime, max_age: timedelta | None
) -> str:
    """Return the token's subject, or raise ``TokenError`` with one message for every cause.

    ``max_age`` None accepts any age (unsubscribe links keep working). A token issued
    after ``now`` (the clock went back) counts as fresh.
    """
    _check_secret(secret)
    _check_purpose(purpose)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    payload = _authentic_payload(secret, token, purpose)
    seconds_text, _, subject = payload.partition(b":")
    try:
        issued_at = datetime.fromtimestamp(int(seconds_text), UTC)
        text = subject.decode("utf-8")
    except (ValueError, OverflowError, OSError) as error:
        # Only reachable if we once signed such a payload; still refuse it uniformly.
        raise TokenError(_INVALID) from error
    if max_age is not None and now - issued_at > max_age:
        raise TokenError(_INVALID)
    return text


def _authentic_payload(secret: bytes, token: str, purpose: str) -> bytes:
    """The payload when the signature matches; everything else is the same refusal."""
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_LENGTH:
        raise TokenError(_INVALID)
    payload_text, dot, signature_text = token.partition(".")
    if not dot:
        raise TokenError(_INVALID)
    payload = _decode(payload_text)
    signature = _decode(signature_text)
    if payload is None or signature is None:
        raise TokenError(_INVALID)
    if not hmac.compare_digest(signature, _sign(secret, purpose, payload)):
        raise TokenError(_INVALID)
    return payload


def _sign(secret: bytes, purpose: str, payload: bytes) -> bytes:
    message = b"\0".join((_VERSION, purpose.encode("ascii"), payload))
    return hmac.new(secret, message, hashlib.sha256).digest()


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes | None:
    """Strict unpadded base64url: only the one canonical spelling of each byte string."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Unused low bits in the last character would give several spellings of one token.
    return data if _encode(data) == text else None


def _check_secret(secret: bytes) -> None:
    if len(secret) < 16:
        raise ValueError("token secret must be at least 16 bytes")


def _check_purpose(purpose: str) -> None:
    if not _PURPOSE.fullmatch(purpose):
        raise ValueError(f"invalid token purpose: {purpose!r}")
