"""Email address syntax: what the mailer accepts in From and To (RFC 5322 section 3.4).

Kept apart from ``mail`` so that the configuration can check ``[mail] from`` without
importing smtplib: most commands send nothing.
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from email.headerregistry import Address

# Longest address accepted, in characters (RFC 5321 section 4.5.3.1: a 256-octet path less
# the angle brackets).
MAX_ADDRESS_CHARS = 254

_ATOM_CHARS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
DOT_ATOM = re.compile(rf"{_ATOM_CHARS}+(?:\.{_ATOM_CHARS}+)*")
"""An RFC 5322 section 3.2.3 dot-atom (a local part or a Message-ID half as it is)."""
_QUOTED_LOCAL = re.compile(r'"([ !#-\[\]-~]{1,62})"')  # printable ASCII but '"' and '\'
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NAME_AND_ADDRESS = re.compile(r"(?P<name>.*?)\s*<(?P<address>[^<>]*)>")


def clean_header_value(value: str) -> str:
    """One line of text: control characters and line/paragraph separators become spaces.

    Runs of whitespace collapse to one space, so nothing can start a new header line.
    """
    if value.isascii() and value.isprintable():  # the common case: nothing to replace
        return " ".join(value.split())
    chars = [
        " " if unicodedata.category(char) in ("Cc", "Zl", "Zp") else char
        for char in value.replace("\r\n", " ")
    ]
    return " ".join("".join(chars).split())


def parse_address(value: str, *, allow_name: bool = True) -> Address:
    """``"addr"`` or ``"Name <addr>"`` as an ``Address``; ``ValueError`` if not mailable
    (the rules are ``address_parts``')."""
    from email.headerregistry import Address  # only where mail is made: 5 ms a start

    name, username, domain = address_parts(value, allow_name=allow_name)
    return Address(display_name=name, username=username, domain=domain)


def address_parts(value: str, *, allow_name: bool = True) -> tuple[str, str, str]:
    """``"addr"`` or ``"Name <addr>"`` as (display name, local part, domain); raises
    ``ValueError`` if not mailable.

    The domain is converted to its ASCII (IDNA) form; local parts must be ASCII (dot-atom
    or quoted). The display name can hold anything: it is quoted or encoded on output.
    With ``allow_name`` false only a bare address is accepted, exactly as given.
    """
    text = clean_header_value(value)
    if not allow_name and text != value:
        raise ValueError("address contains spaces or control characters")
    name = ""
    matched = _NAME_AND_ADDRESS.fullmatch(text) if allow_name else None
    if matched:
        name, text = matched["name"].strip(), matched["address"].strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if len(text) > MAX_ADDRESS_CHARS:
        raise ValueError("address too long")
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an email address: {text!r}")
    quoted = _QUOTED_LOCAL.fullmatch(local)
    if quoted:
        username = quoted[1]
    elif DOT_ATOM.fullmatch(local) and len(local) <= 64:
        username = local
    else:
        raise ValueError(f"unsupported local part: {local!r}")
    return name, username, _ascii_domain(domain)


def _ascii_domain(domain: str) -> str:
    try:
        ascii_domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError as error:
        raise ValueError(f"not a mail domain: {domain!r}") from error
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a mail domain: {domain!r}")
    return ascii_domain
