"""CSRF protection, admin authentication and the security headers of every answer.

Public helpers, for every page with a form::

    csrf_token(request: Request) -> str
        The token to put in a hidden ``csrf_token`` field of a form (FORM_FIELD).
    check_csrf(request: Request, form: Mapping[str, Any]) -> None
        Raises HTTPException(403) unless the form carries the right token and the
        request comes from this site (Origin, else Referer, when the browser sends one).
    require_admin(request: Request) -> None
        Raises HTTPException(403) when admin is off (no password configured) and
        HTTPException(401) with a Basic challenge unless the request carries it.

A token is an HMAC, under the installation's ``csrf`` secret, of a random value kept in
a cookie (HttpOnly, SameSite=Lax): another site can neither read the token nor set the
cookie, and tokens stay valid across page loads and restarts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import web_context

__all__ = [
    "CSRF_COOKIE",
    "FORM_FIELD",
    "SECURITY_HEADERS",
    "RedactTokens",
    "SecurityHeadersMiddleware",
    "check_csrf",
    "csrf_token",
    "redact_tokens",
    "require_admin",
]

log = logging.getLogger("aggregator.web.security")

# Name of the hidden form field that carries the CSRF token.
FORM_FIELD = "csrf_token"
# Name of the cookie holding the random value the CSRF token signs (HttpOnly, SameSite=Lax).
CSRF_COOKIE = "aggregator_csrf"
_NEW_NONCE = "aggregator.csrf_nonce"  # scope key: a nonce the answer must set as cookie
_NONCE_BYTES = 18

CONTENT_SECURITY_POLICY = (
    # media-src: an entry's podcast or video plays from where the feed says it lives
    # (preload="none": only when the reader presses play).
    "default-src 'none'; style-src 'self'; img-src https: http: data:; media-src https: http:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Headers added to every answer: CSP (W3C CSP Level 3), nosniff, referrer policy, no framing
# (RFC 7034) and an isolated opener (HTML Living Standard 7.1.3).
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
)
# The WWW-Authenticate challenge of the admin pages: Basic, with UTF-8 passwords (RFC 7617
# sections 2 and 2.1).
ADMIN_REALM = 'Basic realm="aggregator admin", charset="UTF-8"'


def _nonce_of(connection: HTTPConnection) -> str | None:
    nonce = connection.scope.get(_NEW_NONCE) or connection.cookies.get(CSRF_COOKIE)
    if not nonce or len(nonce) > 64:
        return None
    return str(nonce)


def _sign(secret: bytes, nonce: str) -> str:
    digest = hmac.new(secret, b"csrf\x00" + nonce.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_token(request: HTTPConnection) -> str:
    """The CSRF token for this visitor's forms: an HMAC-SHA256, under the installation's
    csrf secret, of the random value in their cookie (a new value, set as the cookie by
    the middleware, when they have none).
    """
    nonce = _nonce_of(request)
    if nonce is None:
        nonce = secrets.token_urlsafe(_NONCE_BYTES)
        request.scope[_NEW_NONCE] = nonce
    return _sign(web_context(request).csrf_secret(), nonce)


def _origin(url: str) -> tuple[str, str] | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return parts.scheme.lower(), parts.netloc.lower()


def _same_site(request: Request) -> bool:
    """False when the browser says the form was sent from another site."""
    claimed = request.headers.get("origin")
    if claimed is None:
        referer = request.headers.get("referer")
        if referer is None:
            return True  # nothing to check; the token still has to match
        claimed = referer
    origin = _origin(claimed)
    if origin is None:
        return False  # includes Origin: null (sandboxed frames, some redirects)
    ours = {_origin(web_context(request).settings.web.base_url), _origin(str(request.url))}
    return origin in ours


def check_csrf(request: Request, form: Mapping[str, Any]) -> None:
    """Accept a form POST only from this site with a matching token.

    Raises HTTPException(403) when Origin (else Referer) names another site (Origin: null
    included), or the token is missing or does not match the cookie's value. Compared in
    constant time.
    """
    if not _same_site(request):
        raise HTTPException(
            403,
            "This form was sent from another site, so it was refused. Reload the page "
            "on this site and send it again.",
        )
    sent = form.get(FORM_FIELD)
    nonce = request.cookies.get(CSRF_COOKIE)
    if not isinstance(sent, str) or not nonce or len(nonce) > 64:
        raise HTTPException(
            403,
            "The form's security token is missing (cookies may be blocked). Reload the "
            "page and send the form again.",
        )
    expected = _sign(web_context(request).csrf_secret(), nonce)
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(
            403,
            "The form's security token does not match. Reload the page and send the form again.",
        )


def require_admin(request: HTTPConnection) -> None:
    """Let the request through only with the admin password (HTTP Basic, RFC 7617, any user
    name).

    Raises HTTPException(403) when admin is switched off (no password configured), 429 with
    Retry-After (seconds) while the client is throttled after wrong passwords, and 401 with
    the Basic challenge otherwise. Compared in constant time; a refused password counts
    against the client.
    """
    password = web_context(request).settings.web.admin_password
    if not password:
        raise HTTPException(
            403,
            "Administration is switched off on this server: no admin password is set. "
            "Set AGGREGATOR_ADMIN_PASSWORD in the server's environment and restart it.",
        )
    web = web_context(request)
    client = request.client.host if request.client else "unknown"
    now = web.now()
    throttle = web.admin_throttle
    wait = throttle.wait(client, now)
    if wait is not None:
        seconds = max(1, math.ceil(wait.total_seconds()))
        raise HTTPException(
            429,
            "Too many wrong admin passwords. Wait a little, then try again.",
            headers={"Retry-After": str(seconds)},
        )
    header = request.headers.get("authorization", "")
    given = _basic_password(header)
    if given is None or not hmac.compare_digest(given.encode(), password.encode()):
        if header:  # a browser's first request carries no password: not a failure
            failures = throttle.failed(client, now)
            log.warning("admin password refused client=%s failures=%d", client, failures)
        raise HTTPException(
            401,
            "Administration needs the admin password (any user name).",
            headers={"WWW-Authenticate": ADMIN_REALM},
        )
    throttle.succeeded(client)


def _basic_password(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value or len(value) > 4096:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = decoded.partition(":")
    return password if colon else None


# A capability token in a link's query: ?token=... (confirm, preferences, unsubscribe,
# digest archive and digest pages).
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&#\s]*")


def redact_tokens(path: str) -> str:
    """The path with the value of every token parameter replaced by ``REDACTED``."""
    return _TOKEN_IN_QUERY.sub(r"\1REDACTED", path)


class RedactTokens(logging.Filter):
    """A logging filter for uvicorn's access log: no capability token in any line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_tokens(arg) if isinstance(arg, str) and "=" in arg else arg
                for arg in record.args
            )
        return True


class SecurityHeadersMiddleware:
    """Adds the security headers to every answer, and the CSRF cookie when one was made."""

    def __init__(self, app: ASGIApp, *, secure_cookies: bool = False) -> None:
        self.app = app
        self.secure_cookies = secure_cookies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name not in headers:
                        headers[name] = value
                nonce = scope.get(_NEW_NONCE)
                if nonce:
                    headers.append("set-cookie", self._cookie(nonce))
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _cookie(self, nonce: str) -> str:
        secure = "; Secure" if self.secure_cookies else ""
        return f"{CSRF_COOKIE}={nonce}; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000{secure}"
