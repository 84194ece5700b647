"""The SMTP relay settings (``[mail]``), read by the configuration.

Kept apart from ``mail`` so that reading the configuration does not import smtplib and
the email package: only the commands that send mail need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError

Security = Literal["starttls", "tls", "none"]
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_CONNECTIONS = 32  # concurrent SMTP sessions one sender may open


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """An SMTP server to hand mail to: host and port, ``starttls`` (RFC 3207), implicit
    ``tls`` (RFC 8314) or ``none``, optional credentials (refused unencrypted except to
    loopback), the per-operation timeout in seconds, the HELO name, and how many messages
    one connection carries. Raises ConfigError (key ``smtp.<field>``) for an invalid
    combination.
    """

    host: str
    port: int = 587
    security: Security = "starttls"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0  # seconds, per network operation
    helo: str | None = None  # name we greet with; the local host name when None
    max_messages_per_connection: int = 100
    # Messages sent at once, each over a connection of its own; raise it only as far
    # as the relay accepts concurrent sessions from one client.
    connections: int = 1

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("an SMTP host is required", key="smtp.host")
        if not 0 < self.port < 65536:
            raise ConfigError(f"invalid port {self.port}", key="smtp.port")
        if self.security not in ("starttls", "tls", "none"):
            raise ConfigError(f"unknown security {self.security!r}", key="smtp.security")
        if self.timeout <= 0:
            raise ConfigError("timeout must be positive", key="smtp.timeout")
        if self.max_messages_per_connection < 1:
            raise ConfigError("must be at least 1", key="smtp.max_messages_per_connection")
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise ConfigError(f"must be 1 to {MAX_CONNECTIONS}", key="smtp.connections")
        if self.password is not None and self.username is None:
            raise ConfigError("a password needs a username", key="smtp.username")
        if self.username and self.security == "none" and self.host not in _LOOPBACK_HOSTS:
            raise ConfigError(
                "refusing to send credentials unencrypted; use starttls or tls",
                key="smtp.security",
            )

    def __repr__(self) -> str:  # never show the password in logs
        secret = "***" if self.password else None
        return (
            f"SmtpSettings(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={self.username!r}, password={secret!r})"
        )
