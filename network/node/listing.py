"""The line an inbox shows of a request: its case reference and its summary's first line.

An officer triages a night's inbox from these lines; reading the whole body stays an
audited consultation (`opened`). The line reveals to whoever may list messages the case
reference and one line of summary, the least that tells requests apart, and no data
subject's identifiers (those are in `data`, never listed). It is sealed under the node's
storage key as a sent copy is (keyed to the message, so a line cannot be moved to
another), so the store holds no body text in clear; listings open it with the keyring.
"""

from __future__ import annotations

from network.core.bodies import Body, Request, parse_body
from network.core.crypto import Keyring, StorageKey
from network.core.envelope import open_from_self, read_plaintext, seal_to_self
from network.core.errors import CpnError
from network.core.records import canonical, parse_json
from network.node.evidence import opener_for
from network.node.keys import NodeKeys
from network.node.store import AuditEntry, Store
from network.node.tracking import identifier_tags

__all__ = ["MAX_SUMMARY_LINE", "open_line", "reindex", "seal_line"]

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


async def reindex(store: Store, keys: NodeKeys, *, actor: str, now: int) -> dict[str, int]:
    """Give every request stored before listing lines and the identifier index were kept
    (store schemas 11 and 12) its line and its identifiers' digests: a migration cannot,
    since it holds no key. Opens each with the node's keys; audited (`reindexed`).
    Returns the counts: requests read, lines made, identifier digests indexed."""
    opener = opener_for(keys.keyring)
    counts = {"requests": 0, "lines": 0, "identifiers": 0, "unreadable": 0}
    rows = await store.messages(limit=-1)
    async with store.transaction(now) as tx:
        for row in rows:
            if row.box not in ("in", "out") or row.type is None or row.deleted is not None:
                continue  # relayed (unreadable here), or its contents deleted (retention)
            try:
                plaintext = opener(str(row.box), row.envelope, row.self_sealed, row.id)
                kind, body = read_plaintext(plaintext)
                typed = parse_body(kind, body)
            except CpnError:
                counts["unreadable"] += 1  # its key purged: nothing to index it by
                continue
            if not isinstance(typed, Request):
                continue
            counts["requests"] += 1
            if row.listing is None:
                line = seal_line(typed, row.id, keys.keyring.storage)
                if line is not None:
                    tx.set_listing(row.id, line)
                    counts["lines"] += 1
            tags = identifier_tags(keys.keyring.storage, typed)
            tx.index_identifiers(row.id, tags)
            counts["identifiers"] += len(tags)
        tx.audit([AuditEntry(actor, "reindexed", detail=dict(counts))])
    return counts
