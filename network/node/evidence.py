"""Evidence packages: everything that proves one message's exchange, in one JSON document
that anyone verifies offline, trusting no node (issue 16).

One JSON document rather than a zip: it is canonical JSON throughout (RFC 8785), so
every byte that was signed is carried as it was (base64url), a reader needs nothing
but a JSON parser and Ed25519, and two exports of the same facts compare equal.

What a package holds (docs/PROTOCOL.md, section 14):

- `messages`: the message and its thread (acknowledgements, responses, follow-ups),
  each as the envelope bytes exactly as sent or received, every receipt for it (hop
  and end to end) as signed, and, when the exporter discloses it, the plaintext that
  the sender's inner signature covers;
- `audit`: the exporting node's log entries about those messages, each with an RFC
  9162 inclusion proof into a signed checkpoint and that checkpoint's cosignatures
  by peers, and a consistency proof from it to the newest checkpoint;
- `rosters`: the signed roster versions that held the keys that signed;
- `manifest`: who exported what and when, and the SHA-256 of each of the above,
  signed by the exporting node (`sig`): a package from which anything was removed
  or to which anything was added no longer matches it.

`verify_package` checks each item's own signatures and proofs first, so that a
change is named by what it broke (an envelope's signature, a receipt's digest, an
inclusion proof, a cosignature, the keeper's signature), and the manifest last.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from network.core.auditlog import (
    checkpoint_origin,
    checkpoint_time,
    stored_entry_bytes,
    witness_name,
)
from network.core.crypto import Keyring, SigningKey, VerifyKey, sha256
from network.core.envelope import (
    Envelope,
    Header,
    Receipt,
    ReceiptScope,
    check_receipt_for,
    check_receipt_matches,
    open_from_self,
    read_stored,
    verify_plaintext,
    verify_receipt,
    verify_signed,
)
from network.core.errors import CpnError, EvidenceError, UnknownSignerError
from network.core.records import (
    MAX_SAFE_INTEGER,
    Json,
    b64decode,
    b64encode,
    canonical,
    parse_json,
)
from network.core.roster import Roster
from network.core.tlog import (
    Checkpoint,
    leaf_hash,
    open_checkpoint,
    verify_consistency,
    verify_cosignature,
    verify_inclusion,
)
from network.node.alerts import rfc3339
from network.node.auditfile import messages_with_envelopes, snapshot, stored_tree
from network.node.verify import roster_as_issued

__all__ = [
    "FORMAT",
    "MAX_PACKAGE_BYTES",
    "Fact",
    "collect_package",
    "export_package",
    "opener_for",
    "sign_package",
    "verify_package",
]

FORMAT: Final = "cpn-evidence/1"
MANIFEST_CONTEXT: Final = b"cpn/v1 evidence\n"
MAX_PACKAGE_BYTES: Final = 64 * 1024 * 1024
_ITEMS: Final = ("messages", "audit", "rosters", "keeper")
# What each item proves, said in the manifest for whoever opens the package.
_PROVES: Final = {
    "messages": "who signed each message of the thread, its bytes, and which node signed"
    " receipt of exactly those bytes, when (and, when disclosed, what it said)",
    "audit": "what the exporting node recorded about them, in its log, unchanged since the"
    " signed and cosigned checkpoint that holds each entry",
    "rosters": "which keys belonged to which contact point, as the register keeper signed",
    "keeper": "the register keeper's key the exporting node pins (pin your own to be sure)",
}
# Opens a stored message's plaintext for disclosure: (box, envelope, self_sealed, id).
Opener = Callable[[str, bytes, bytes | None, str], bytes]


@dataclass(frozen=True, slots=True)
class Fact:
    """One verified statement, in plain language, and what it rests on."""

    statement: str
    rests_on: str


# -- export ----------------------------------------------------------------------------


def export_package(
    path: Path,
    message_id: str,
    *,
    node_id: str,
    signing: SigningKey,
    keeper: VerifyKey,
    now: int,
    opener: Opener | None = None,
) -> dict[str, Json]:
    """The evidence package of `message_id` from the store at `path` (read-only), signed
    by `signing` (the node's key), with the register `keeper`'s key the node pins (for a
    verifier who has not pinned one); with `opener`, the plaintexts disclosed.

    Raises EvidenceError when the store does not hold the message.
    """
    package = collect_package(
        path, message_id, node_id=node_id, kid=signing.kid, keeper=keeper, now=now, opener=opener
    )
    return sign_package(package, signing)


def collect_package(
    path: Path,
    message_id: str,
    *,
    node_id: str,
    kid: str,
    keeper: VerifyKey,
    now: int,
    opener: Opener | None = None,
) -> dict[str, Json]:
    """`export_package` but the signature: what a thread may do while the signing key (in
    a hardware module, perhaps) stays with its caller."""
    with snapshot(path) as db:
        first = db.execute(
            "SELECT id FROM messages WHERE id = ? AND box IN ('in', 'out')", (message_id,)
        ).fetchone()
        if first is None:
            raise EvidenceError(f"message {message_id}: not a message sent or received here")
        source = messages_with_envelopes(db)
        query = (
            "SELECT id, box, peer, envelope, self_sealed, digest, deleted, deleted_at"  # noqa: S608
            f" FROM {source} WHERE (id = ? OR in_reply_to = ?) AND box IN ('in', 'out')"
            " AND attachment IS NULL ORDER BY created, id"
        )
        rows = db.execute(query, (message_id, message_id)).fetchall()
        messages: list[Json] = []
        for mid, box, peer, envelope, self_sealed, digest, rule, deleted_at in rows:
            receipts = db.execute(
                "SELECT raw FROM receipts WHERE message_id = ? ORDER BY time, id", (mid,)
            ).fetchall()
            item: dict[str, Json] = {"id": mid, "box": box}
            if rule is not None:
                # Deleted under a retention rule: the digest its receipts name stays, and
                # the log's `deleted` entry (in `audit`) says when and under which rule.
                sender, recipient = (peer, node_id) if box == "in" else (node_id, peer)
                item["deleted"] = {
                    "rule": rule,
                    "at": deleted_at,
                    "digest": b64encode(bytes(digest)),
                    "from": sender,
                    "to": recipient,
                }
            elif envelope is None:
                raise EvidenceError(f"message {mid}: the store holds no envelope for it")
            else:
                item["envelope"] = b64encode(bytes(envelope))
                if opener is not None:
                    sealed = bytes(self_sealed) if self_sealed is not None else None
                    item["plaintext"] = b64encode(opener(box, bytes(envelope), sealed, mid))
            item["receipts"] = [b64encode(bytes(raw)) for (raw,) in receipts]
            messages.append(item)
        audit = _audit_item(db, [m[0] for m in rows])
        rosters = [
            b64encode(bytes(raw))
            for (raw,) in db.execute("SELECT raw FROM rosters ORDER BY version")
        ]
    items: dict[str, Json] = {
        "messages": messages,
        "audit": audit,
        "rosters": rosters,
        "keeper": {"alg": "Ed25519", "kid": keeper.kid, "public": b64encode(keeper.public_raw)},
    }
    manifest: dict[str, Json] = {
        "format": FORMAT,
        "node": node_id,
        "message": message_id,
        "exported": now,
        "disclosed": opener is not None,
        "kid": kid,
        "items": {name: b64encode(sha256(canonical(items[name]))) for name in _ITEMS},
        "proves": dict(_PROVES),
    }
    return {"format": FORMAT, "manifest": manifest, **items}


def sign_package(package: dict[str, Json], signing: SigningKey) -> dict[str, Json]:
    """The package with the node's signature over its manifest."""
    signature = signing.sign(MANIFEST_CONTEXT + canonical(package["manifest"]))
    return {**package, "sig": b64encode(signature)}


def opener_for(keyring: Keyring) -> Opener:
    """Opens what a node stored: a received envelope with its HPKE keys, a sent message's
    own sealed copy with its storage keys."""

    def open_stored(box: str, envelope: bytes, self_sealed: bytes | None, message_id: str) -> bytes:
        if box == "out" and self_sealed is not None:
            return open_from_self(self_sealed, message_id, keyring)
        return read_stored(envelope, keyring)[2]

    return open_stored


def _audit_item(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, Json]:
    """The entries about `ids`, proven into the newest cosigned checkpoint that covers them
    (else the newest), and that checkpoint proven consistent with the newest one."""
    tree = stored_tree(db)
    marks = ",".join("?" * len(ids))
    found = db.execute(
        f"SELECT seq, time, actor, action, message_id, detail FROM audit"  # noqa: S608
        f" WHERE message_id IN ({marks}) ORDER BY seq",
        tuple(ids),
    ).fetchall()
    checkpoints = db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC").fetchall()
    last = max((seq for seq, *_ in found), default=0)
    covering = [(size, note) for size, note in checkpoints if size >= last and size <= tree.size]
    if not covering:
        return {"entries": [], "uncovered": len(found), "checkpoint": None, "newest": None}
    cosigned = [
        (size, note)
        for size, note in covering
        if db.execute("SELECT 1 FROM cosignatures WHERE size = ?", (size,)).fetchone()
    ]
    size, note = (cosigned or covering)[-1]  # the oldest such: the most witnesses have seen it
    lines = db.execute(
        "SELECT line FROM cosignatures WHERE size = ? ORDER BY witness", (size,)
    ).fetchall()
    newest_size, newest_note = covering[0]
    entries: list[Json] = []
    for seq, time, actor, action, mid, detail in found:
        stored = detail if isinstance(detail, bytes) else str(detail).encode()
        raw = stored_entry_bytes(time, actor, action, mid, stored)
        entries.append(
            {
                "index": seq - 1,
                "entry": b64encode(raw),
                "proof": [b64encode(h) for h in tree.inclusion_proof(seq - 1, size)],
            }
        )
    return {
        "entries": entries,
        "uncovered": 0,
        "checkpoint": str(note) + "".join(str(line) for (line,) in lines),
        "newest": {
            "checkpoint": str(newest_note),
            "consistency": [b64encode(h) for h in tree.consistency_proof(size, newest_size)],
        },
    }


# -- verification ----------------------------------------------------------------------


class _Keys:
    """Every signing key the package's rosters give each node, newest roster first."""

    def __init__(self, rosters: Sequence[Roster]) -> None:
        self.rosters = sorted(rosters, key=lambda r: r.version, reverse=True)

    def roster_with(self, node: str, kid: str, what: str) -> Roster:
        for roster in self.rosters:
            entry = roster.entries.get(node)  # type: ignore[call-overload]
            if entry is not None and entry.card.signing_key.kid == kid:
                return roster
        raise EvidenceError(f"{what}: no roster in the package holds {node}'s key {kid}")

    def of(self, node: str) -> list[VerifyKey]:
        keys: dict[str, VerifyKey] = {}
        for roster in self.rosters:
            entry = roster.entries.get(node)  # type: ignore[call-overload]
            if entry is not None:
                keys.setdefault(entry.card.signing_key.kid, entry.card.signing_key)
        return list(keys.values())


def verify_package(raw: bytes, *, keeper: VerifyKey | None = None) -> list[Fact]:
    """Check an evidence package offline; the facts it proves, in order.

    `keeper`: the register keeper's key, pinned by the verifier; without it, the
    rosters' own claim of their keeper is taken and said so. Raises EvidenceError
    naming the first item that fails and why.
    """
    try:
        doc = parse_json(raw, limit=MAX_PACKAGE_BYTES, what="evidence package")
    except CpnError as exc:
        raise EvidenceError(f"package: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise EvidenceError(f"format: not a {FORMAT} package")
    manifest = _object(doc, "manifest")
    facts: list[Fact] = []
    keys = _Keys(_rosters(doc, keeper, facts))
    node = _text(manifest, "node", "manifest")
    message_id = _text(manifest, "message", "manifest")
    envelopes, deleted = _messages(doc, keys, facts)
    if message_id not in envelopes and message_id not in deleted:
        raise EvidenceError(f"messages: the package holds no envelope of message {message_id}")
    _audit(doc, node, set(envelopes) | set(deleted), deleted, keys, facts)
    _manifest(doc, manifest, node, keys, facts)
    return facts


def _object(doc: Any, key: str, where: str = "package") -> dict[str, Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, dict):
        raise EvidenceError(f"{where}.{key}: missing or not an object")
    return value


def _list(doc: Any, key: str, where: str = "package") -> list[Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, list):
        raise EvidenceError(f"{where}.{key}: missing or not an array")
    return value


def _text(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise EvidenceError(f"{where}.{key}: missing or not a string")
    return value


def _bytes(value: Any, where: str) -> bytes:
    try:
        return b64decode(value, field=where)
    except CpnError as exc:
        raise EvidenceError(str(exc)) from None


def _rosters(doc: dict[str, Any], keeper: VerifyKey | None, facts: list[Fact]) -> list[Roster]:
    signer = keeper or _claimed_keeper(doc)
    pinned = "the keeper key you pinned" if keeper else "the package's own keeper key (not pinned)"
    rosters = []
    for i, item in enumerate(_list(doc, "rosters")):
        data = _bytes(item, f"rosters[{i}]")
        try:
            roster = roster_as_issued(data, signer)
        except CpnError as exc:
            raise EvidenceError(f"rosters[{i}]: {exc}") from None
        rosters.append(roster)
        facts.append(
            Fact(
                f"roster version {roster.version} (issued {rfc3339(roster.issued)}) is signed by"
                f" the register keeper {roster.keeper_kid}, checked with {pinned}",
                f"rosters[{i}]",
            )
        )
    if not rosters:
        raise EvidenceError("rosters: the package holds no roster to check signatures with")
    return rosters


def _claimed_keeper(doc: dict[str, Any]) -> VerifyKey:
    """The keeper key the package carries, for a verifier who pinned none (said so)."""
    keeper = _object(doc, "keeper")
    key = VerifyKey(_bytes(keeper.get("public"), "keeper.public"))
    if keeper.get("kid") != key.kid:
        raise EvidenceError(f"keeper.kid: {keeper.get('kid')} is not the key's ({key.kid})")
    return key


def _messages(
    doc: dict[str, Any], keys: _Keys, facts: list[Fact]
) -> tuple[dict[str, Envelope], dict[str, bytes]]:
    """The envelopes by id, and the digests of the messages whose contents were deleted."""
    envelopes: dict[str, Envelope] = {}
    deleted: dict[str, bytes] = {}
    for i, item in enumerate(_list(doc, "messages")):
        where = f"messages[{i}]"
        if isinstance(item, dict) and "deleted" in item:
            message_id, digest = _deleted(item, keys, facts, where)
            deleted[message_id] = digest
            continue
        raw = _bytes(item.get("envelope") if isinstance(item, dict) else None, f"{where}.envelope")
        envelope = _envelope(raw, keys, where)
        header = envelope.header
        if item.get("id") != header.id:
            raise EvidenceError(f"{where}.id: {item.get('id')} is not the envelope's {header.id}")
        envelopes[header.id] = envelope
        facts.append(
            Fact(
                f"{header.sender}'s key {header.kid} signed message {header.id} to"
                f" {header.recipient} at {rfc3339(header.created)} ({header.priority});"
                f" its bytes have SHA-256 {b64encode(envelope.digest)}",
                f"{where}.envelope",
            )
        )
        if "plaintext" in item:
            facts.append(_plaintext(item["plaintext"], header, keys, where))
        for j, value in enumerate(_list(item, "receipts", where)):
            facts.append(_receipt(value, envelope, keys, f"{where}.receipts[{j}]"))
    return envelopes, deleted


def _deleted(item: dict[str, Any], keys: _Keys, facts: list[Fact], where: str) -> tuple[str, bytes]:
    """A message whose contents were deleted under a retention rule: its receipts still
    name its envelope's digest (the log's `deleted` entry is checked with the audit)."""
    if "envelope" in item or "plaintext" in item:
        raise EvidenceError(f"{where}: a deleted message carries no envelope or plaintext")
    deleted = _object(item, "deleted", where)
    message_id = _text(item, "id", where)
    rule = _text(deleted, "rule", f"{where}.deleted")
    sender = _text(deleted, "from", f"{where}.deleted")
    recipient = _text(deleted, "to", f"{where}.deleted")
    digest = _bytes(deleted.get("digest"), f"{where}.deleted.digest")
    at = deleted.get("at")
    facts.append(
        Fact(
            f"the contents of message {message_id} from {sender} to {recipient} were deleted"
            f" under retention rule {rule}"
            + (f" at {rfc3339(at)}" if isinstance(at, int) else "")
            + f"; its envelope's SHA-256 {b64encode(digest)} remains",
            f"{where}.deleted",
        )
    )
    for j, value in enumerate(_list(item, "receipts", where)):
        facts.append(
            _receipt(
                value,
                (message_id, sender, recipient, digest),
                keys,
                f"{where}.receipts[{j}]",
            )
        )
    return message_id, digest


def _envelope(raw: bytes, keys: _Keys, where: str) -> Envelope:
    """The envelope, its outer signature checked with the roster that held its signer's key."""
    last: CpnError | None = None
    for roster in keys.rosters:
        try:
            return verify_signed(raw, roster=roster)
        except UnknownSignerError as exc:
            last = exc
        except CpnError as exc:
            raise EvidenceError(f"{where}.envelope: {exc}") from None
    raise EvidenceError(f"{where}.envelope: {last}")


def _plaintext(value: Any, header: Header, keys: _Keys, where: str) -> Fact:
    plaintext = _bytes(value, f"{where}.plaintext")
    roster = keys.roster_with(header.sender, header.kid, f"{where}.plaintext")
    try:
        kind, _, _ = verify_plaintext(
            plaintext, header, roster.verify_key(header.sender, header.kid)
        )
    except CpnError as exc:
        raise EvidenceError(f"{where}.plaintext: {exc}") from None
    return Fact(
        f"the disclosed body of {header.id} is a message of type {kind}, signed by {header.sender}"
        f" under this header (inner signature)",
        f"{where}.plaintext",
    )


def _receipt(
    value: Any, envelope: Envelope | tuple[str, str, str, bytes], keys: _Keys, where: str
) -> Fact:
    """A receipt's signature, and that it answers exactly `envelope` (or, for deleted
    contents, the message id, parties and digest that remain)."""
    raw = _bytes(value, where)
    receipt: Receipt | None = None
    problem: CpnError | None = None
    for roster in keys.rosters:
        try:
            receipt = verify_receipt(raw, roster=roster, now=MAX_SAFE_INTEGER)
            break
        except UnknownSignerError as exc:
            problem = exc
        except CpnError as exc:
            raise EvidenceError(f"{where}: {exc}") from None
    if receipt is None:
        raise EvidenceError(f"{where}: {problem}")
    try:
        if isinstance(envelope, Envelope):
            check_receipt_for(receipt, envelope)
        else:
            message_id, sender, recipient, digest = envelope
            check_receipt_matches(
                receipt, message_id=message_id, sender=sender, recipient=recipient, digest=digest
            )
    except CpnError as exc:
        raise EvidenceError(f"{where}: {exc}") from None
    what = "received" if receipt.scope is ReceiptScope.END_TO_END else "took on (as a relay)"
    via = f", path via {', '.join(receipt.path)}" if receipt.path else ""
    return Fact(
        f"{receipt.sender}'s node signed that it {what} exactly these bytes of"
        f" {receipt.message_id} at {rfc3339(receipt.received)}: {receipt.outcome}{via}",
        where,
    )


def _audit(
    doc: dict[str, Any],
    node: str,
    ids: set[str],
    deleted: dict[str, bytes],
    keys: _Keys,
    facts: list[Fact],
) -> None:
    audit = _object(doc, "audit")
    entries = _list(audit, "entries", "audit")
    if not entries:
        uncovered = audit.get("uncovered")
        facts.append(
            Fact(
                f"{uncovered} entries of {node}'s log about this message are not yet covered"
                " by a signed checkpoint: export again later to prove them"
                + (" (and the deletions above)" if deleted else ""),
                "audit",
            )
        )
        return
    unproven = dict(deleted)  # each deletion needs its entry in the log
    origin = checkpoint_origin(node)
    checkpoint = _checkpoint(_text(audit, "checkpoint", "audit"), origin, keys.of(node), "audit")
    witnesses = _cosigners(audit["checkpoint"], node, keys)
    for i, item in enumerate(entries):
        where = f"audit.entries[{i}]"
        entry = _bytes(item.get("entry") if isinstance(item, dict) else None, f"{where}.entry")
        index = item.get("index")
        proof = [_bytes(h, f"{where}.proof") for h in _list(item, "proof", where)]
        if not isinstance(index, int):
            raise EvidenceError(f"{where}.index: missing or not an integer")
        try:
            verify_inclusion(leaf_hash(entry), index, checkpoint.size, proof, checkpoint.root)
        except CpnError as exc:
            raise EvidenceError(f"{where}: {exc}") from None
        content = json.loads(entry)
        if content.get("message") not in ids:
            raise EvidenceError(f"{where}: is about {content.get('message')}, not this thread")
        if content.get("action") == "deleted" and content.get("message") in unproven:
            detail = content.get("detail")
            named = detail.get("digest") if isinstance(detail, dict) else None
            if named != b64encode(unproven[content["message"]]):
                raise EvidenceError(
                    f"{where}: the deletion names another digest than the message's"
                )
            del unproven[content["message"]]
        facts.append(
            Fact(
                f"{node}'s log holds, at position {index}, '{content.get('action')}' by"
                f" {content.get('actor')} about {content.get('message')} at"
                f" {rfc3339(int(content.get('time', 0)))}, in a tree of {checkpoint.size}"
                f" entries signed by {node}"
                + (f" and cosigned by {', '.join(witnesses)}" if witnesses else ""),
                where,
            )
        )
    if unproven:
        raise EvidenceError(
            f"audit: the log holds no deletion of message {min(unproven)}, whose contents the"
            " package says were deleted"
        )
    newest = _object(audit, "newest", "audit")
    latest = _checkpoint(
        _text(newest, "checkpoint", "audit.newest"), origin, keys.of(node), "audit.newest"
    )
    consistency = [
        _bytes(h, "audit.newest.consistency") for h in _list(newest, "consistency", "audit.newest")
    ]
    try:
        verify_consistency(checkpoint.size, latest.size, checkpoint.root, latest.root, consistency)
    except CpnError as exc:
        raise EvidenceError(f"audit.newest: {exc}") from None
    when = checkpoint_time(latest)
    facts.append(
        Fact(
            f"{node}'s newest checkpoint ({latest.size} entries"
            + (f", {rfc3339(when)}" if when is not None else "")
            + ") extends the one above: nothing in it was changed since",
            "audit.newest",
        )
    )


def _checkpoint(note: str, origin: str, keys: Iterable[VerifyKey], where: str) -> Checkpoint:
    last: CpnError | None = None
    for key in keys:
        try:
            return open_checkpoint(note, origin, {origin: key})
        except UnknownSignerError as exc:
            last = exc
        except CpnError as exc:
            raise EvidenceError(f"{where}.checkpoint: {exc}") from None
    raise EvidenceError(f"{where}.checkpoint: not signed by a key of {origin}: {last}")


def _cosigners(note: str, node: str, keys: _Keys) -> list[str]:
    """The peers whose cosignature on the note verifies; any cosignature line by a known
    peer that does not verify fails the package."""
    found: list[str] = []
    peers = sorted({n for roster in keys.rosters for n in roster.entries if n != node})
    for peer in peers:
        name = witness_name(peer)
        if f"\u2014 {name} " not in note:
            continue
        for key in keys.of(peer):
            try:
                verify_cosignature(note, name, key)
            except UnknownSignerError:
                continue
            except CpnError as exc:
                raise EvidenceError(f"audit.checkpoint: cosignature by {peer}: {exc}") from None
            found.append(peer)
            break
        else:
            raise EvidenceError(f"audit.checkpoint: cosignature by {peer} with no key of {peer}")
    return found


def _manifest(
    doc: dict[str, Any], manifest: dict[str, Any], node: str, keys: _Keys, facts: list[Fact]
) -> None:
    kid = _text(manifest, "kid", "manifest")
    roster = keys.roster_with(node, kid, "manifest")
    signature = _bytes(doc.get("sig"), "sig")
    try:
        roster.verify_key(node, kid).verify(
            signature, MANIFEST_CONTEXT + canonical(manifest), what="manifest signature"
        )
    except CpnError as exc:
        raise EvidenceError(f"manifest: {exc}") from None
    digests = _object(manifest, "items", "manifest")
    for name in _ITEMS:
        if digests.get(name) != b64encode(sha256(canonical(doc.get(name)))):
            raise EvidenceError(
                f"{name}: not what {node} exported (an item was removed, added or changed)"
            )
    extra = sorted(set(doc) - {"format", "manifest", "sig", *_ITEMS})
    if extra:
        raise EvidenceError(f"{extra[0]}: not part of what {node} exported")
    exported = manifest.get("exported")
    facts.append(
        Fact(
            f"{node}'s node exported this package"
            + (f" at {rfc3339(exported)}" if isinstance(exported, int) else "")
            + f", whole, {'with' if manifest.get('disclosed') else 'without'} the bodies",
            "manifest",
        )
    )
