"""The line an inbox shows of a request: its case reference and its summary's first line.

An officer triages a night's inbox from these lines; reading the whole body stays an
audited consultation (`opened`). The line reveals to whoever may list messages the case
reference and one line of summary, the least that tells requests apart, and no data
subject's identifiers (those are in `data`, never listed). It is sealed under the node's
storage key as a sent copy is (keyed to the message, so a line cannot be moved to
another), so the store holds no body text in clear; listings open it with the keyring.
"""

from __future__ import annotations

from network.core.bodies import Body, Request
from network.core.crypto import Keyring, StorageKey
from network.core.envelope import open_from_self, seal_to_self
from network.core.errors import CpnError
from network.core.records import canonical, parse_json

__all__ = ["MAX_SUMMARY_LINE", "open_line", "seal_line"]

MAX_SUMMARY_LINE = 160  # characters of the summary's first line


def seal_line(typed: Body, message_id: str, key: StorageKey) -> bytes | None:
    """The sealed listing line of a request (None for what is not a request)."""
    if not isinstance(typed, Request):
        return None
    first = typed.summary.strip().splitlines()[0] if typed.summary.strip() else ""
    if len(first) > MAX_SUMMARY_LINE:
        first = first[: MAX_SUMMARY_LINE - 1] + "…"
    line = canonical({"case_ref": typed.case_ref, "summary": first})
    return seal_to_self(line, _context(message_id), key)


def open_line(sealed: bytes | None, message_id: str, keyring: Keyring) -> dict[str, str]:
    """The listing line's fields, empty when there is none (a message stored before lines
    were kept) or it does not open (its storage key purged)."""
    if sealed is None:
        return {}
    try:
        plain = open_from_self(sealed, _context(message_id), keyring)
        value = parse_json(plain, limit=4096, what="listing line")
    except CpnError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if k in ("case_ref", "summary") and isinstance(v, str)}


def _context(message_id: str) -> str:
    return f"{message_id}/listing"
