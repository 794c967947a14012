#!/usr/bin/env python3
"""Verify a cpn evidence package, offline, without cpn: what a defence expert runs.

    python3 verify_evidence.py PACKAGE.json [--keeper KEEPER.json]

Written from docs/PROTOCOL.md (sections 2, 4, 5, 9 and 14), not from cpn's code: it
needs Python 3.11 and the `cryptography` package, nothing else. It prints each fact
the package proves and VERIFIED (exit 0), or NOT VERIFIED and the first thing that
fails (exit 1). `--keeper` pins the register keeper's public key (a file
`{"alg": "Ed25519", "kid", "public"}`); without it the package's own copy is used,
and the output says so.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "cpn-evidence/1"
ITEMS = ("messages", "audit", "rosters", "keeper")


class Failed(Exception):
    """The package does not prove what it says; the message names where."""


# -- the primitives (PROTOCOL sections 2 and 3) -----------------------------------------


def canonical(value: Any) -> bytes:
    """RFC 8785 for the values these documents hold (objects, arrays, strings, integers,
    booleans, null): members sorted, no spaces, strings as ECMAScript writes them."""
    if isinstance(value, float):
        raise Failed("a number that is not an integer: not a cpn document")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def b64url(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise Failed(f"{where}: not a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise Failed(f"{where}: not base64url") from None


def b64url_text(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def key_id(public: bytes) -> str:
    return b64url_text(sha256(public)[:12])


def check(public: bytes, signature: bytes, data: bytes, what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise Failed(f"{what}: the signature does not verify") from None


def when(ms: Any) -> str:
    if not isinstance(ms, int):
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise Failed(f"{where}: not JSON") from None


def member(doc: Any, key: str, kind: type, where: str) -> Any:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise Failed(f"{where}.{key}: missing or of the wrong type")
    return value


# -- rosters (section 4) ----------------------------------------------------------------


class Keys:
    """(node, kid) -> Ed25519 public key, for the nodes active in some roster."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], bytes] = {}

    def get(self, node: str, kid: str, where: str) -> bytes:
        if (node, kid) not in self.keys:
            raise Failed(f"{where}: no roster in the package holds {node}'s key {kid}")
        return self.keys[(node, kid)]

    def of(self, node: str) -> list[bytes]:
        return [k for (n, _), k in self.keys.items() if n == node]

    def nodes(self) -> list[str]:
        return sorted({n for n, _ in self.keys})


def rosters(doc: dict[str, Any], pinned: bytes | None, facts: list[str]) -> Keys:
    if pinned is None:
        keeper = member(doc, "keeper", dict, "package")
        pinned = b64url(keeper.get("public"), "keeper.public")
        if keeper.get("kid") != key_id(pinned):
            raise Failed("keeper.kid: not the key's id")
        how = "the package's own keeper key (not pinned)"
    else:
        how = "the keeper key you pinned"
    keys = Keys()
    for i, item in enumerate(member(doc, "rosters", list, "package")):
        where = f"rosters[{i}]"
        signed = parse(b64url(item, where), where)
        body = member(signed, "roster", dict, where)
        if member(body, "keeper", dict, where).get("kid") != key_id(pinned):
            raise Failed(f"{where}: signed by another keeper than {key_id(pinned)}")
        sig = b64url(signed.get("sig"), f"{where}.sig")
        check(pinned, sig, b"cpn/v1 roster\n" + canonical(body), f"{where} (keeper)")
        for card in member(body, "contact_points", list, where):
            if card.get("status", "active") == "active":
                public = b64url(card["signing_key"]["public"], f"{where}.signing_key")
                keys.keys[(card["id"], key_id(public))] = public
        facts.append(
            f"roster version {body.get('version')} (issued {when(body.get('issued'))}) is signed"
            f" by the register keeper {key_id(pinned)}, checked with {how}"
        )
    if not keys.keys:
        raise Failed("rosters: none in the package")
    return keys


# -- messages and receipts (section 5) --------------------------------------------------


def messages(
    doc: dict[str, Any], keys: Keys, facts: list[str], deleted: dict[str, bytes]
) -> set[str]:
    """The ids of the messages, each envelope and receipt checked; the digests of those
    whose contents were deleted under a retention rule go into `deleted`."""
    ids = set()
    for i, item in enumerate(member(doc, "messages", list, "package")):
        where = f"messages[{i}]"
        if isinstance(item, dict) and "deleted" in item:
            ids.add(deleted_message(item, keys, facts, deleted, where))
            continue
        raw = b64url(member(item, "envelope", str, where), f"{where}.envelope")
        envelope = parse(raw, f"{where}.envelope")
        header = member(envelope, "header", dict, f"{where}.envelope")
        sender, kid = header.get("from"), header.get("kid")
        public = keys.get(str(sender), str(kid), f"{where}.envelope")
        signed = canonical({"header": header, "sealed": envelope.get("sealed")})
        sig = b64url(envelope.get("sig"), f"{where}.envelope.sig")
        check(public, sig, b"cpn/v1 outer\n" + signed, f"{where}.envelope (outer)")
        if set(envelope) != {"header", "sealed", "sig"} or item.get("id") != header.get("id"):
            raise Failed(f"{where}: the id or the envelope's members are not as signed")
        digest = sha256(raw)
        ids.add(header["id"])
        facts.append(
            f"{sender}'s key {kid} signed message {header['id']} to {header.get('to')} at"
            f" {when(header.get('created'))} ({header.get('priority')}); its bytes have"
            f" SHA-256 {b64url_text(digest)}"
        )
        if "plaintext" in item:
            plain = parse(b64url(item["plaintext"], f"{where}.plaintext"), f"{where}.plaintext")
            inner = canonical(
                {"body": plain.get("body"), "header": header, "type": plain.get("type")}
            )
            sig = b64url(plain.get("sig"), f"{where}.plaintext.sig")
            check(public, sig, b"cpn/v1 inner\n" + inner, f"{where}.plaintext (inner)")
            facts.append(
                f"the disclosed body of {header['id']} is a {plain.get('type')}, signed by {sender}"
            )
        for j, value in enumerate(member(item, "receipts", list, where)):
            facts.append(receipt(value, header, digest, keys, f"{where}.receipts[{j}]"))
    return ids


def deleted_message(
    item: dict[str, Any], keys: Keys, facts: list[str], deleted: dict[str, bytes], where: str
) -> str:
    """Contents deleted under a retention rule (section 14): no envelope; the digest and
    parties remain, which the receipts must name, and the log must record the deletion."""
    if "envelope" in item or "plaintext" in item:
        raise Failed(f"{where}: a deleted message carries no envelope or plaintext")
    info = member(item, "deleted", dict, where)
    message_id = member(item, "id", str, where)
    digest = b64url(info.get("digest"), f"{where}.deleted.digest")
    header = {"id": message_id, "from": info.get("from"), "to": info.get("to")}
    deleted[message_id] = digest
    facts.append(
        f"the contents of message {message_id} from {header['from']} to {header['to']} were"
        f" deleted under retention rule {info.get('rule')}; its envelope's SHA-256"
        f" {b64url_text(digest)} remains"
    )
    for j, value in enumerate(member(item, "receipts", list, where)):
        facts.append(receipt(value, header, digest, keys, f"{where}.receipts[{j}]"))
    return message_id


def receipt(value: Any, header: dict[str, Any], digest: bytes, keys: Keys, where: str) -> str:
    signed = parse(b64url(value, where), where)
    statement = member(signed, "receipt", dict, where)
    public = keys.get(str(statement.get("from")), str(statement.get("kid")), where)
    sig = b64url(signed.get("sig"), f"{where}.sig")
    check(public, sig, b"cpn/v1 receipt\n" + canonical(statement), where)
    if statement.get("for") != header.get("id"):
        raise Failed(f"{where}: a receipt for another message ({statement.get('for')})")
    if b64url(statement.get("digest"), f"{where}.digest") != digest:
        raise Failed(f"{where}: a receipt for other bytes than this envelope")
    end_to_end = statement.get("scope") == "end_to_end"
    if end_to_end and (statement.get("to"), statement.get("from")) != (
        header.get("from"),
        header.get("to"),
    ):
        raise Failed(f"{where}: an end-to-end receipt between other parties")
    path = statement.get("path") or []
    return (
        f"{statement.get('from')}'s node signed that it"
        f" {'received' if end_to_end else 'took on (as a relay)'} exactly these bytes of"
        f" {header['id']} at {when(statement.get('received'))}: {statement.get('outcome')}"
        + (f", path via {', '.join(path)}" if path else "")
    )


# -- the audit log (section 9) -----------------------------------------------------------


def note_parts(note: str, where: str) -> tuple[str, list[tuple[str, bytes]]]:
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise Failed(f"{where}: not a signed note")
    lines = []
    for line in note[split + 2 : -1].split("\n"):
        if not line.startswith("\u2014 "):
            raise Failed(f"{where}: a signature line without its em dash")
        name, _, blob = line[2:].partition(" ")
        try:
            lines.append((name, base64.b64decode(blob, validate=True)))
        except ValueError:
            raise Failed(f"{where}: a signature line that is not base64") from None
    return note[: split + 1], lines


def note_key_id(name: str, kind: int, public: bytes) -> bytes:
    return sha256(name.encode() + b"\n" + bytes([kind]) + public)[:4]


def checkpoint(note: str, node: str, keys: Keys, where: str) -> tuple[int, bytes, list[str]]:
    """(size, root, cosigners) of a checkpoint note signed by one of `node`'s keys."""
    text, lines = note_parts(note, where)
    origin = f"cpn/audit/{node}"
    signed = False
    for name, blob in lines:
        if name != origin:
            continue
        for public in keys.of(node):
            if blob[:4] == note_key_id(origin, 0x01, public):
                check(public, blob[4:], text.encode(), f"{where} (signed by {node})")
                signed = True
    if not signed:
        raise Failed(f"{where}: not signed by a key of {node}")
    first, size_text, root_text, *_ = [*text[:-1].split("\n"), "", ""]
    if first != origin or not size_text.isdigit():
        raise Failed(f"{where}: not a checkpoint of {origin}")
    cosigners = []
    for peer in keys.nodes():
        name = f"cpn/witness/{peer}"
        for line_name, blob in lines:
            if line_name != name:
                continue
            public = next(
                (k for k in keys.of(peer) if blob[:4] == note_key_id(name, 0x04, k)), None
            )
            if public is None or len(blob) != 4 + 8 + 64:
                raise Failed(f"{where}: cosignature by {peer} with no key of {peer}")
            stamp = int.from_bytes(blob[4:12], "big")
            message = f"cosignature/v1\ntime {stamp}\n{text}".encode()
            check(public, blob[12:], message, f"{where}: cosignature by {peer}")
            cosigners.append(peer)
    return int(size_text), base64.b64decode(root_text), cosigners


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistent(m: int, n: int, old: bytes, new: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2 (equal sizes: equal roots and no proof)."""
    if m == n:
        return old == new and not proof
    if not 0 < m < n or not proof:
        return False
    path = list(proof)
    if m & (m - 1) == 0:  # a power of two: the old root starts the path
        path.insert(0, old)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old and sr == new


def audit(
    doc: dict[str, Any],
    node: str,
    ids: set[str],
    deleted: dict[str, bytes],
    keys: Keys,
    facts: list[str],
) -> None:
    log = member(doc, "audit", dict, "package")
    entries = member(log, "entries", list, "audit")
    if not entries:
        facts.append(
            f"{log.get('uncovered')} entries of {node}'s log are not yet covered by a checkpoint"
        )
        return
    size, root, cosigners = checkpoint(
        member(log, "checkpoint", str, "audit"), node, keys, "audit.checkpoint"
    )
    witnessed = f" and cosigned by {', '.join(cosigners)}" if cosigners else ""
    unproven = dict(deleted)
    for i, item in enumerate(entries):
        where = f"audit.entries[{i}]"
        entry = b64url(member(item, "entry", str, where), f"{where}.entry")
        index = member(item, "index", int, where)
        proof = [b64url(h, f"{where}.proof") for h in member(item, "proof", list, where)]
        if not inclusion(sha256(b"\x00" + entry), index, size, proof, root):
            raise Failed(f"{where}: not in {node}'s signed tree of {size} entries")
        content = parse(entry, where)
        if content.get("message") not in ids:
            raise Failed(f"{where}: about {content.get('message')}, not this package's messages")
        if content.get("action") == "deleted" and content.get("message") in unproven:
            detail = content.get("detail") or {}
            if detail.get("digest") != b64url_text(unproven.pop(content["message"])):
                raise Failed(f"{where}: a deletion of other bytes than the message's")
        facts.append(
            f"{node}'s log holds, at position {index}, '{content.get('action')}' by"
            f" {content.get('actor')} about {content.get('message')} at"
            f" {when(content.get('time'))},"
            f" in a tree of {size} entries signed by {node}{witnessed}"
        )
    if unproven:
        raise Failed(f"audit: no deletion of {min(unproven)} in the log, yet its contents are gone")
    newest = member(log, "newest", dict, "audit")
    new_size, new_root, _ = checkpoint(
        member(newest, "checkpoint", str, "audit.newest"), node, keys, "audit.newest"
    )
    proof = [
        b64url(h, "audit.newest.consistency")
        for h in member(newest, "consistency", list, "audit.newest")
    ]
    if not consistent(size, new_size, root, new_root, proof):
        raise Failed(f"audit.newest: the tree of {new_size} does not extend the tree of {size}")
    facts.append(f"{node}'s newest checkpoint ({new_size} entries) extends the one above")


# -- the package (section 14) ------------------------------------------------------------


def verify(raw: bytes, pinned: bytes | None) -> list[str]:
    doc = parse(raw, "package")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise Failed(f"format: not a {FORMAT} package")
    manifest = member(doc, "manifest", dict, "package")
    node = member(manifest, "node", str, "manifest")
    facts: list[str] = []
    keys = rosters(doc, pinned, facts)
    deleted: dict[str, bytes] = {}
    ids = messages(doc, keys, facts, deleted)
    if manifest.get("message") not in ids:
        raise Failed(f"messages: no envelope of message {manifest.get('message')}")
    audit(doc, node, ids, deleted, keys, facts)
    public = keys.get(node, str(manifest.get("kid")), "manifest")
    sig = b64url(doc.get("sig"), "sig")
    check(public, sig, b"cpn/v1 evidence\n" + canonical(manifest), "manifest")
    digests = member(manifest, "items", dict, "manifest")
    for name in ITEMS:
        if digests.get(name) != b64url_text(sha256(canonical(doc.get(name)))):
            raise Failed(f"{name}: not what {node} exported (removed, added or changed)")
    if set(doc) != {"format", "manifest", "sig", *ITEMS}:
        raise Failed(
            f"package: {sorted(set(doc) - {'format', 'manifest', 'sig', *ITEMS})} not exported"
        )
    facts.append(f"{node}'s node exported this package at {when(manifest.get('exported'))}, whole")
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package")
    parser.add_argument("--keeper", help="the register keeper's public key file, pinned")
    args = parser.parse_args(argv)
    pinned = None
    if args.keeper:
        with open(args.keeper, "rb") as f:
            keeper = json.loads(f.read())
        pinned = b64url(keeper.get("public"), "--keeper")
    with open(args.package, "rb") as f:
        raw = f.read()
    try:
        facts = verify(raw, pinned)
    except (Failed, KeyError, TypeError, AttributeError, IndexError) as exc:
        print(f"NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    for fact in facts:
        print(f"- {fact}")
    print("VERIFIED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
