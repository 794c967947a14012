"""Identifiers (an IP address, an account, an e-mail address, a URL, a telephone number...)
in the one form they are matched in: "have we seen this identifier before?" must find
`2001:DB8::1` under `2001:db8:0:0:0:0:0:1` and `Alice@Example.org` under `alice@example.org`.
Pure: no I/O. The store keeps only a keyed digest of `kind:normalised`, never the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from network.core.bodies import IdentifierKind, ip_text

__all__ = ["match_keys", "normalise"]


def _ip(value: str) -> str | None:
    return ip_text(value.strip().strip("[]"))


def _email(value: str) -> str | None:
    text = value.strip().casefold()
    local, at, domain = text.partition("@")
    return text if at and local and domain and " " not in text else None


def _url(value: str) -> str | None:
    """Scheme and host in lower case (a scheme-less URL taken as http), no fragment, no
    trailing slash; the path and query as written (they may be case-sensitive)."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
    if not scheme.isascii() or not scheme.isalpha():
        return None
    authority, slash, tail = rest.split("#", 1)[0].partition("/")
    host = authority.rsplit("@", 1)[-1]  # user information is not part of the place
    if not host or any(c.isspace() for c in host):
        return None
    path, mark, query = (slash + tail).partition("?")
    return (
        f"{scheme.casefold()}://{host.casefold()}{path.rstrip('/')}{mark + query if query else ''}"
    )


def _phone(value: str) -> str | None:
    text = value.strip()
    digits = "".join(c for c in text if c.isdigit())
    if text.startswith("00"):
        digits = digits[2:]
    if len(digits) < 4:
        return None
    return ("+" if text.startswith(("+", "00")) else "") + digits


def _domain(value: str) -> str | None:
    text = value.strip().casefold().rstrip(".")
    return text if text and " " not in text and "/" not in text else None


def _text(value: str) -> str | None:
    text = " ".join(value.split()).casefold()
    return text or None


_NORMALISE: Final[dict[IdentifierKind, Callable[[str], str | None]]] = {
    IdentifierKind.IP_ADDRESS: _ip,
    IdentifierKind.EMAIL: _email,
    IdentifierKind.URL: _url,
    IdentifierKind.PHONE: _phone,
    IdentifierKind.DOMAIN: _domain,
    IdentifierKind.ACCOUNT: _text,
    IdentifierKind.DEVICE: _text,
    IdentifierKind.OTHER: _text,
}


def normalise(kind: IdentifierKind, value: str) -> str | None:
    """`value` as identifiers of `kind` are matched, or None when it cannot be one."""
    return _NORMALISE[kind](value)


def match_keys(value: str, kind: IdentifierKind | None = None) -> list[str]:
    """What an identifier is matched under (`kind:normalised`): for one kind, or for every
    kind the value can be (an officer pasting an IP address need not say it is one)."""
    kinds = [kind] if kind is not None else list(IdentifierKind)
    keys = []
    for each in kinds:
        normal = normalise(each, value)
        if normal is not None:
            keys.append(f"{each}:{normal}")
    return keys
