"""The link protocol between two nodes, sans I/O: frames, the signed handshake, backoff.

Frames are binary WebSocket messages: one ASCII letter saying what follows,
then the payload. Envelopes and receipts travel as their exact bytes, so that
digests computed on either side agree.

    H  hello          canonical JSON {"v", "node", "to", "nonce", "roster"}
    A  auth           canonical JSON {"sig"}
    E  envelope       n (1 byte), the n relays it came through (3 bytes each), the envelope
    R  receipt        the receipt bytes (hop or end to end)
    N  announcement   a node's signed list of its live links (`routing`)
    S  roster         a roster document (the register keeper's signature decides)
    C  checkpoint     canonical JSON {"note", "from", "proof"}: our checkpoint, to witness
    K  cosignature    canonical JSON {"size", "cosignature" | "need_from"}: the answer
    Q  held?          canonical JSON {"nonce"}: "the newest checkpoint of my log you hold?"
    W  held           canonical JSON {"nonce", "note", "cosignature"}: that checkpoint as
                      the witness holds it, cosigned again now (both null: none held)

Version 2 adds, for a node restored from a backup (docs/PROTOCOL.md, "Restore"):

    G  give back      canonical JSON {"since", "after"}: "every envelope to me you hold my
                      accepted receipt for, the receipt dated at or after `since`, in id
                      order after `after`": at most RETURN_PAGE of them per ask
    B  returned       2-byte receipt length, our receipt, the envelope: one of them
    F  page end       canonical JSON {"next"}: the id to ask after, or null when done
    C  checkpoint     may carry "restored": {"entry", "index", "proof"}: the signed entry
                      in which the node explains that its log was restored to an earlier
                      size, with its inclusion proof into the checkpoint offered

The handshake (after TLS, where each end already presented the certificate
the roster lists for it):

    client -> server   H  client hello (fresh 32-byte nonce)
    server -> client   H  server hello (fresh nonce)
    client -> server   A  client's Ed25519 signature over the transcript
    server -> client   A  server's signature over the transcript

The transcript binds both ids, both nonces and both certificate
fingerprints, with the signer's role in the signed bytes, so a signature can
be neither replayed nor reflected. Each side checks the other's id against
the roster (present, active), the certificate it saw against the one the
roster pins for that id, and the signature against the roster's key. No
envelope may flow before both signatures verified.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from network.core.crypto import SigningKey
from network.core.envelope import MAX_ENVELOPE_BYTES, MAX_HOP_LIMIT, MAX_RECEIPT_BYTES
from network.core.errors import (
    BadSignatureError,
    HandshakeError,
    MalformedError,
    OversizeError,
)
from network.core.records import (
    PROTOCOL_VERSION,
    Fields,
    Json,
    NodeId,
    b64decode,
    b64encode,
    canonical,
    is_node_id,
    parse_canonical,
)
from network.core.roster import MAX_ROSTER_BYTES, Roster
from network.core.routing import MAX_ANNOUNCEMENT_BYTES

__all__ = [
    "FRAME_ANNOUNCE",
    "FRAME_AUTH",
    "FRAME_CHECKPOINT",
    "FRAME_COSIGNATURE",
    "FRAME_ENVELOPE",
    "FRAME_GIVE_BACK",
    "FRAME_HELD",
    "FRAME_HELD_QUERY",
    "FRAME_HELLO",
    "FRAME_LIMITS",
    "FRAME_PAGE_END",
    "FRAME_RECEIPT",
    "FRAME_RETURNED",
    "FRAME_ROSTER",
    "LINK_VERSIONS",
    "MAX_FRAME_BYTES",
    "GiveBack",
    "HandshakeError",
    "HeldCheckpoint",
    "HeldQuery",
    "LinkHandshake",
    "PageEnd",
    "RestoreNote",
    "Returned",
    "Role",
    "backoff_delays",
    "envelope_frame",
    "frame",
    "held_frame",
    "held_query_frame",
    "parse_held",
    "parse_held_query",
    "split_envelope",
    "split_frame",
]

# The link versions this node speaks. A hello offers the highest; the link speaks the
# lower of the two ends' highest (docs/PROTOCOL.md, "Versioning").
LINK_VERSIONS: Final = frozenset({PROTOCOL_VERSION, 2})
RESTORE_VERSION: Final = 2  # the link version that carries G, B, F and restored checkpoints

FRAME_HELLO: Final = b"H"
FRAME_AUTH: Final = b"A"
FRAME_ENVELOPE: Final = b"E"
FRAME_RECEIPT: Final = b"R"
FRAME_ANNOUNCE: Final = b"N"
FRAME_ROSTER: Final = b"S"
FRAME_CHECKPOINT: Final = b"C"  # our audit log's newest signed checkpoint, for witnessing
FRAME_COSIGNATURE: Final = b"K"  # a witness's answer: its cosignature, or the proof it needs
FRAME_HELD_QUERY: Final = b"Q"  # asked of a witness: the newest checkpoint of our log it holds?
FRAME_HELD: Final = b"W"  # the witness's answer: that checkpoint, cosigned
FRAME_GIVE_BACK: Final = b"G"  # v2: a restored node asks for what it receipted, again
FRAME_RETURNED: Final = b"B"  # v2: one envelope given back, with the receipt we had signed
FRAME_PAGE_END: Final = b"F"  # v2: the end of one page given back
RETURN_PAGE: Final = 32  # envelopes given back per ask
HELD_NONCE_BYTES: Final = 16
MAX_CHECKPOINT_FRAME_BYTES: Final = 16 * 1024
MAX_PROOF_HASHES: Final = 128  # a consistency proof is at most about 2 log2(size) hashes
_MAX_HANDSHAKE_BYTES: Final = 1024
FRAME_LIMITS: Final = {
    FRAME_HELLO: _MAX_HANDSHAKE_BYTES,
    FRAME_AUTH: _MAX_HANDSHAKE_BYTES,
    FRAME_ENVELOPE: 1 + 3 * MAX_HOP_LIMIT + MAX_ENVELOPE_BYTES,
    FRAME_RECEIPT: MAX_RECEIPT_BYTES,
    FRAME_ANNOUNCE: MAX_ANNOUNCEMENT_BYTES,
    FRAME_ROSTER: MAX_ROSTER_BYTES,
    FRAME_CHECKPOINT: MAX_CHECKPOINT_FRAME_BYTES,
    FRAME_COSIGNATURE: MAX_CHECKPOINT_FRAME_BYTES,
    FRAME_HELD_QUERY: _MAX_HANDSHAKE_BYTES,
    FRAME_HELD: MAX_CHECKPOINT_FRAME_BYTES,
    FRAME_GIVE_BACK: _MAX_HANDSHAKE_BYTES,
    FRAME_RETURNED: 2 + MAX_RECEIPT_BYTES + MAX_ENVELOPE_BYTES,
    FRAME_PAGE_END: _MAX_HANDSHAKE_BYTES,
}
# The frame kinds each link version adds: a link never carries a later version's kinds.
FRAME_SINCE: Final = {FRAME_GIVE_BACK: 2, FRAME_RETURNED: 2, FRAME_PAGE_END: 2}
MAX_FRAME_BYTES: Final = 1 + max(FRAME_LIMITS.values())


class Role(StrEnum):
    CLIENT = "client"
    SERVER = "server"


def frame(kind: bytes, payload: bytes) -> bytes:
    return kind + payload


def split_frame(data: bytes | str) -> tuple[bytes, bytes]:
    """(kind, payload) of a received frame; refuses text, unknown kinds and oversize frames."""
    if isinstance(data, str):
        raise MalformedError("text frame: links carry binary frames only")
    kind = data[:1]
    limit = FRAME_LIMITS.get(kind)
    if limit is None:
        raise MalformedError(f"unknown frame kind {kind!r}")
    if len(data) - 1 > limit:
        raise OversizeError(f"{kind.decode()} frame of {len(data)} bytes, over its limit {limit}")
    return kind, data[1:]


def envelope_frame(path: Sequence[NodeId], envelope: bytes) -> bytes:
    """An E frame: the relays so far, then the envelope bytes exactly."""
    return FRAME_ENVELOPE + bytes([len(path)]) + "".join(path).encode("ascii") + envelope


def split_envelope(payload: bytes) -> tuple[tuple[NodeId, ...], bytes]:
    """(path, envelope) of an E frame's payload."""
    if not payload:
        raise MalformedError("empty envelope frame")
    count = payload[0]
    if count > MAX_HOP_LIMIT:
        raise MalformedError(f"envelope frame claims {count} relays, over {MAX_HOP_LIMIT}")
    ids = payload[1 : 1 + 3 * count]
    try:
        text = ids.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedError("envelope frame path is not ASCII") from None
    path = tuple(NodeId(text[i : i + 3]) for i in range(0, len(text), 3))
    if len(path) != count or not all(is_node_id(n) for n in path):
        raise MalformedError("envelope frame path is not a list of node ids")
    return path, payload[1 + 3 * count :]


class LinkHandshake:
    """One side of the signed handshake. Feed it frames; it returns frames to send.

    `done` turns True once the peer's signature verified; `peer` is then its
    authenticated id. Any violation raises HandshakeError (or another
    PeerError) saying what failed; the caller closes the link and records it.
    """

    def __init__(
        self,
        *,
        role: Role,
        me: NodeId,
        signing_key: SigningKey,
        roster: Roster,
        my_cert_sha256: bytes,
        peer_cert_sha256: bytes,
        nonce: bytes,
        expected_peer: NodeId | None = None,
    ) -> None:
        if role is Role.CLIENT and expected_peer is None:
            raise ValueError("a client knows which peer it dialled")
        self.role = role
        self.me = me
        self._key = signing_key
        self._roster = roster
        self._my_cert = my_cert_sha256
        self._peer_cert = peer_cert_sha256
        self._nonce = nonce
        self._peer_nonce: bytes | None = None
        self.peer: NodeId | None = expected_peer
        self.done = False
        self._sent_auth = False
        self.peer_roster_version = 0
        # The version this link speaks: the lower of the two ends' highest (`LINK_VERSIONS`).
        self.version: int | None = None

    def start(self) -> list[bytes]:
        """The frames to send first: the client speaks first."""
        return [self._hello()] if self.role is Role.CLIENT else []

    def receive(self, data: bytes | str) -> list[bytes]:
        """Take one frame; return the frames to send in answer."""
        if self.done:
            raise HandshakeError("handshake already complete")
        kind, payload = split_frame(data)
        if len(payload) > _MAX_HANDSHAKE_BYTES:
            raise HandshakeError("handshake frame too large")
        if kind == FRAME_HELLO and self._peer_nonce is None:
            self._take_hello(payload)
            if self.role is Role.SERVER:
                return [self._hello()]
            self._sent_auth = True
            return [self._auth()]
        if kind == FRAME_AUTH and self._peer_nonce is not None:
            if self.role is Role.SERVER and self._sent_auth:
                raise HandshakeError("second auth frame")
            self._take_auth(payload)
            self.done = True
            if self.role is Role.SERVER:
                self._sent_auth = True
                return [self._auth()]
            return []
        raise HandshakeError(f"unexpected {kind.decode()} frame during the handshake")

    def _hello(self) -> bytes:
        assert self.role is Role.CLIENT or self.peer is not None
        # The client offers the highest version it speaks; the server answers with the
        # version the link will speak (the lower of the two).
        v = max(LINK_VERSIONS) if self.role is Role.CLIENT else self.version
        hello = {
            "v": v,
            "node": self.me,
            "to": self.peer,
            "nonce": b64encode(self._nonce),
            "roster": self._roster.version,
        }
        return frame(FRAME_HELLO, canonical(hello))

    def _take_hello(self, payload: bytes) -> None:
        f = Fields(parse_canonical(payload, limit=_MAX_HANDSHAKE_BYTES, what="hello"), "hello")
        v = f.int("v")
        if self.role is Role.SERVER:
            if v < min(LINK_VERSIONS):
                raise HandshakeError(
                    f"hello.v: the peer speaks up to version {v}; we speak"
                    f" {min(LINK_VERSIONS)} to {max(LINK_VERSIONS)}",
                    reason="unsupported_version",
                )
            self.version = min(v, max(LINK_VERSIONS))
        else:  # the server's choice: one we offered, and speak
            if v not in LINK_VERSIONS:
                raise HandshakeError(
                    f"hello.v: the server chose version {v}; we offered up to {max(LINK_VERSIONS)}",
                    reason="unsupported_version",
                )
            self.version = v
        node = f.str("node", max_len=3)
        to = f.str("to", max_len=3)
        nonce = f.bytes("nonce")
        self.peer_roster_version = f.int("roster")
        if v <= max(LINK_VERSIONS):
            f.done()  # a later version's hello may carry fields we do not know: ignored
        if not is_node_id(node):
            raise HandshakeError(f"hello.node: {node!r} is not a node id")
        if len(nonce) != 32:
            raise HandshakeError("hello.nonce: must be 32 bytes")
        if to != self.me:
            raise HandshakeError(f"hello.to: peer meant to reach {to}, this is {self.me}")
        if self.peer is not None and node != self.peer:
            raise HandshakeError(f"dialled {self.peer} but {node} answered")
        if nonce == self._nonce:
            raise HandshakeError("hello.nonce: our own nonce reflected")
        card = self._roster.active_card(node)  # UnknownNodeError: unknown or revoked
        if card.tls_sha256 != self._peer_cert:
            raise HandshakeError(f"{node}'s TLS certificate is not the one the roster pins")
        self.peer = NodeId(node)
        self._peer_nonce = nonce

    def _transcript(self, signer: Role) -> bytes:
        assert self.peer is not None
        assert self._peer_nonce is not None
        mine = (self.me, self._nonce, self._my_cert)
        theirs = (self.peer, self._peer_nonce, self._peer_cert)
        client, server = (mine, theirs) if self.role is Role.CLIENT else (theirs, mine)
        transcript = {
            "purpose": "cpn/v1 link",
            "v": self.version,  # the version agreed: a downgrade breaks both signatures
            "client": client[0],
            "server": server[0],
            "client_nonce": b64encode(client[1]),
            "server_nonce": b64encode(server[1]),
            "client_cert": b64encode(client[2]),
            "server_cert": b64encode(server[2]),
        }
        return b"cpn/v1 link " + signer.encode() + b"\n" + canonical(transcript)

    def _auth(self) -> bytes:
        signature = self._key.sign(self._transcript(self.role))
        return frame(FRAME_AUTH, canonical({"sig": b64encode(signature)}))

    def _take_auth(self, payload: bytes) -> None:
        f = Fields(parse_canonical(payload, limit=_MAX_HANDSHAKE_BYTES, what="auth"), "auth")
        signature = f.bytes("sig")
        f.done()
        assert self.peer is not None
        peer_role = Role.SERVER if self.role is Role.CLIENT else Role.CLIENT
        key = self._roster.active_card(self.peer).signing_key
        try:
            key.verify(signature, self._transcript(peer_role), what=f"{self.peer}'s link signature")
        except BadSignatureError as exc:
            raise HandshakeError(str(exc), reason="bad_signature") from exc


def backoff_delays(*, base: float, cap: float, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**n)), forever."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
    attempt = 0
    while True:
        yield rng.uniform(0, min(cap, base * 2**attempt))
        attempt = min(attempt + 1, 62)


# -- witnessing: checkpoints offered, cosignatures returned ------------------------------


@dataclass(frozen=True, slots=True)
class RestoreNote:
    """Why a checkpoint does not extend what a witness holds: the node's `restored` audit
    entry (its canonical bytes), at `index` of the checkpoint's tree, with the proof."""

    entry: bytes
    index: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CheckpointOffer:
    """A node's signed checkpoint, with a consistency proof from the size the witness holds
    (or, after a restore, the entry that explains why there is none: version 2)."""

    note: str
    proof_from: int
    proof: tuple[bytes, ...]
    restored: RestoreNote | None = None


@dataclass(frozen=True, slots=True)
class WitnessAnswer:
    """A witness's answer: its cosignature line for `size`, or the size it needs a proof from."""

    size: int
    cosignature: str | None = None
    need_from: int | None = None


def checkpoint_frame(offer: CheckpointOffer) -> bytes:
    body = {
        "note": offer.note,
        "from": offer.proof_from,
        "proof": [b64encode(h) for h in offer.proof],
    }
    if offer.restored is not None:
        body["restored"] = {
            "entry": b64encode(offer.restored.entry),
            "index": offer.restored.index,
            "proof": [b64encode(h) for h in offer.restored.proof],
        }
    return frame(FRAME_CHECKPOINT, canonical(body))


def _hashes(value: Json, what: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOF_HASHES:
        raise MalformedError(f"{what}: expected a list of at most {MAX_PROOF_HASHES}")
    hashes = tuple(b64decode(h, field=what) for h in value)
    if any(len(h) != 32 for h in hashes):
        raise MalformedError(f"{what}: every hash must be 32 bytes")
    return hashes


def parse_checkpoint_offer(payload: bytes, version: int = PROTOCOL_VERSION) -> CheckpointOffer:
    """A C frame's payload on a link of `version` (`restored` only from version 2)."""
    f = Fields(
        parse_canonical(payload, limit=MAX_CHECKPOINT_FRAME_BYTES, what="checkpoint"), "checkpoint"
    )
    note = f.str("note", max_len=MAX_CHECKPOINT_FRAME_BYTES)
    proof_from = f.int("from", low=0)
    hashes = _hashes(f.any("proof"), "checkpoint.proof")
    restored = None
    if version >= RESTORE_VERSION and f.has("restored"):
        r = Fields(f.any("restored"), "checkpoint.restored")
        entry = r.bytes("entry")
        if len(entry) > MAX_CHECKPOINT_FRAME_BYTES // 2:
            raise MalformedError("checkpoint.restored.entry: too long")
        index = r.int("index", low=0)
        proof = _hashes(r.any("proof"), "checkpoint.restored.proof")
        r.done()
        restored = RestoreNote(entry, index, proof)
    f.done()
    return CheckpointOffer(note, proof_from, hashes, restored)


def witness_frame(answer: WitnessAnswer) -> bytes:
    body: dict[str, Json] = {"size": answer.size}
    if answer.cosignature is not None:
        body["cosignature"] = answer.cosignature
    if answer.need_from is not None:
        body["need_from"] = answer.need_from
    return frame(FRAME_COSIGNATURE, canonical(body))


def parse_witness_answer(payload: bytes) -> WitnessAnswer:
    f = Fields(
        parse_canonical(payload, limit=MAX_CHECKPOINT_FRAME_BYTES, what="cosignature"),
        "cosignature",
    )
    size = f.int("size", low=0)
    line = f.str("cosignature", max_len=1024) if f.has("cosignature") else None
    need = f.int("need_from", low=0) if f.has("need_from") else None
    f.done()
    if (line is None) == (need is None):
        raise MalformedError("cosignature: expected exactly one of cosignature and need_from")
    return WitnessAnswer(size, line, need)


# -- asking a witness what it holds of our log ------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldQuery:
    """Asked of a witness: the newest checkpoint of the asker's log it holds. `nonce` pairs
    the answer with the question."""

    nonce: bytes


@dataclass(frozen=True, slots=True)
class HeldCheckpoint:
    """A witness's answer to a `HeldQuery`: the checkpoint note of the asker's log it holds
    and its cosignature line over it, made when asked (both None: it holds none)."""

    nonce: bytes
    note: str | None = None
    cosignature: str | None = None


def held_query_frame(query: HeldQuery) -> bytes:
    return frame(FRAME_HELD_QUERY, canonical({"nonce": b64encode(query.nonce)}))


def _nonce(f: Fields, what: str) -> bytes:
    nonce = f.bytes("nonce")
    if len(nonce) != HELD_NONCE_BYTES:
        raise MalformedError(f"{what}.nonce: expected {HELD_NONCE_BYTES} bytes")
    return nonce


def parse_held_query(payload: bytes) -> HeldQuery:
    """A Q frame's payload; raises MalformedError or OversizeError."""
    f = Fields(parse_canonical(payload, limit=_MAX_HANDSHAKE_BYTES, what="held?"), "held?")
    nonce = _nonce(f, "held?")
    f.done()
    return HeldQuery(nonce)


def held_frame(answer: HeldCheckpoint) -> bytes:
    body: dict[str, Json] = {
        "nonce": b64encode(answer.nonce),
        "note": answer.note,
        "cosignature": answer.cosignature,
    }
    return frame(FRAME_HELD, canonical(body))


def parse_held(payload: bytes) -> HeldCheckpoint:
    """A W frame's payload; raises MalformedError or OversizeError (the note and the
    cosignature are checked by whoever asked, against the keys it trusts)."""
    f = Fields(parse_canonical(payload, limit=MAX_CHECKPOINT_FRAME_BYTES, what="held"), "held")
    nonce = _nonce(f, "held")
    note = None if f.any("note") is None else f.str("note", max_len=MAX_CHECKPOINT_FRAME_BYTES)
    line = None if f.any("cosignature") is None else f.str("cosignature", max_len=1024)
    f.done()
    if (note is None) != (line is None):
        raise MalformedError("held: expected a note with its cosignature, or neither")
    return HeldCheckpoint(nonce, note, line)


# -- giving back to a restored node what it had receipted (version 2) ----------------------


@dataclass(frozen=True, slots=True)
class GiveBack:
    """A restored node asks: the envelopes to it that the peer holds its accepted receipt
    for, dated at or after `since` (ms), in id order after `after`."""

    since: int
    after: str | None = None


@dataclass(frozen=True, slots=True)
class Returned:
    """One envelope given back, exactly as sent, with the receipt its recipient signed."""

    receipt: bytes
    envelope: bytes


@dataclass(frozen=True, slots=True)
class PageEnd:
    """The end of one page given back: the id to ask after next, None when all is given."""

    next: str | None


def give_back_frame(ask: GiveBack) -> bytes:
    return frame(FRAME_GIVE_BACK, canonical({"since": ask.since, "after": ask.after}))


def parse_give_back(payload: bytes) -> GiveBack:
    f = Fields(parse_canonical(payload, limit=_MAX_HANDSHAKE_BYTES, what="give back"), "give back")
    since = f.int("since", low=0)
    after = None if f.any("after") is None else f.str("after", max_len=64)
    f.done()
    return GiveBack(since, after)


def returned_frame(item: Returned) -> bytes:
    return frame(
        FRAME_RETURNED, len(item.receipt).to_bytes(2, "big") + item.receipt + item.envelope
    )


def parse_returned(payload: bytes) -> Returned:
    if len(payload) < 2:
        raise MalformedError("returned: too short")
    length = int.from_bytes(payload[:2], "big")
    if length > MAX_RECEIPT_BYTES or len(payload) - 2 - length > MAX_ENVELOPE_BYTES:
        raise OversizeError("returned: a receipt or an envelope over its limit")
    if len(payload) <= 2 + length:
        raise MalformedError("returned: no envelope after the receipt")
    return Returned(payload[2 : 2 + length], payload[2 + length :])


def page_end_frame(end: PageEnd) -> bytes:
    return frame(FRAME_PAGE_END, canonical({"next": end.next}))


def parse_page_end(payload: bytes) -> PageEnd:
    f = Fields(parse_canonical(payload, limit=_MAX_HANDSHAKE_BYTES, what="page end"), "page end")
    after = None if f.any("next") is None else f.str("next", max_len=64)
    f.done()
    return PageEnd(after)
