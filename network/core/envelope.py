"""The sealed, doubly signed envelope and the signed receipt. Pure: no I/O.

Wire form of an envelope (canonical JSON, RFC 8785)::

    {"header": {...}, "sealed": b64url(HPKE enc ‖ ciphertext), "sig": b64url(outer)}

- The header travels in clear because relays need it: protocol version `v`,
  message `id` (UUIDv7), `from`, `to`, `created` and `expires` (ms since the
  epoch), `priority`, `kind`, `hop_limit`, the signature `alg` and the
  sender's key id `kid`, and the recipient's HPKE `suite` and key id `rkid`.
- The plaintext sealed to the recipient (HPKE base mode, RFC 9180) is
  ``{"body": ..., "sig": b64url(inner), "type": ...}``. The HPKE `info` binds
  the protocol version, the recipient key id and SHA-256 of the canonical
  header, since the library offers no `aad`.
- Inner signature: Ed25519 over ``cpn/v1 inner\\n`` ‖ canonical
  {"body", "header", "type"}: it survives decryption, so an auditor holding the
  body can prove who wrote it.
- Outer signature: Ed25519 over ``cpn/v1 outer\\n`` ‖ canonical
  {"header", "sealed"}: any relay can refuse a forgery without decrypting.

A receipt is a signed statement by the node that received an envelope:
the message id, SHA-256 of the envelope bytes exactly as received, the time,
and the outcome (`accepted`, `duplicate`, `rejected` with a reason)::

    {"receipt": {...}, "sig": b64url(Ed25519 over "cpn/v1 receipt\\n" ‖ canonical receipt)}

Checks on receipt, in order, each with its own error: size, JSON and
canonical form, protocol version, header fields, signer known to the roster,
outer signature, clock skew and expiry; then, at the recipient only:
recipient, decryption, inner signature, body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeVar

from network.core.bodies import BODY_TYPES, Body, body_to_json, body_type, parse_body
from network.core.crypto import (
    HpkePrivateKey,
    HpkePublicKey,
    HpkeSuite,
    Keyring,
    SigningKey,
    StorageKey,
    VerifyKey,
    sha256,
)
from network.core.errors import (
    BodyError,
    ClockSkewError,
    DecryptError,
    DigestMismatchError,
    ExpiredError,
    MalformedError,
    UnsupportedVersionError,
    WrongRecipientError,
)
from network.core.records import (
    PROTOCOL_VERSION,
    Fields,
    Json,
    MessageId,
    MessageKind,
    MessageType,
    NodeId,
    Outcome,
    Priority,
    b64decode,
    b64encode,
    canonical,
    canonical_object,
    canonical_trusted,
    is_node_id,
    message_id_problem,
    new_message_id,
    parse_canonical,
)
from network.core.roster import Roster

__all__ = [
    "DEFAULT_HOP_LIMIT",
    "DEFAULT_SKEW_MS",
    "DEFAULT_TTL_MS",
    "MAX_BODY_BYTES",
    "MAX_ENVELOPE_BYTES",
    "MAX_HOP_LIMIT",
    "MAX_RECEIPT_BYTES",
    "Envelope",
    "Header",
    "OpenedMessage",
    "Receipt",
    "ReceiptScope",
    "Unsealed",
    "check_receipt_for",
    "check_receipt_matches",
    "check_times",
    "make_receipt",
    "open_envelope",
    "open_from_self",
    "read_plaintext",
    "read_stored",
    "seal",
    "seal_to_self",
    "self_sealed_kid",
    "stored_rkid",
    "unseal",
    "verify_envelope",
    "verify_plaintext",
    "verify_receipt",
    "verify_signed",
]

MAX_BODY_BYTES: Final = 64 * 1024
# base64 of the largest body plus the hybrid KEM output, the inner signature and the header.
MAX_ENVELOPE_BYTES: Final = 96 * 1024
MAX_RECEIPT_BYTES: Final = 8 * 1024
MAX_CHECKPOINT_NOTE: Final = 2 * 1024  # a checkpoint and a few signatures
MAX_TTL_MS: Final = 30 * 24 * 3600 * 1000  # bounds how long seen ids must be kept
DEFAULT_SKEW_MS: Final = 5 * 60 * 1000
DEFAULT_HOP_LIMIT: Final = 8
MAX_HOP_LIMIT: Final = 32
DEFAULT_TTL_MS: Final = {
    Priority.FLASH: 24 * 3600 * 1000,
    Priority.URGENT: 3 * 24 * 3600 * 1000,
    Priority.ROUTINE: 14 * 24 * 3600 * 1000,
}

_INNER: Final = b"cpn/v1 inner\n"
_OUTER: Final = b"cpn/v1 outer\n"
_SEAL: Final = b"cpn/v1 seal\n"
_RECEIPT: Final = b"cpn/v1 receipt\n"
_SELF: Final = b"cpn/v1 self\n"
_ALG: Final = "Ed25519"

E = TypeVar("E", bound=StrEnum)
_BODY_CLASSES = tuple(BODY_TYPES.values())


def _node_id(f: Fields, key: str, path: str) -> NodeId:
    value = f.str(key, max_len=3)
    if not is_node_id(value):
        raise MalformedError(f"{path}.{key}: {value!r} is not an ISO 3166-1 alpha-3 code")
    return NodeId(value)


def _message_id(f: Fields, key: str, path: str) -> MessageId:
    value = f.str(key, max_len=36)
    problem = message_id_problem(value)
    if problem is not None:
        raise MalformedError(f"{path}.{key}: {problem}")
    return MessageId(value)


def _enum(f: Fields, key: str, path: str, enum: type[E]) -> E:
    value = f.str(key)
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise MalformedError(f"{path}.{key}: {value!r} is not one of {allowed}") from None


@dataclass(frozen=True, slots=True)
class Header:
    """The clear header of an envelope; signed inside and out, bound into the seal."""

    id: MessageId
    sender: NodeId
    recipient: NodeId
    created: int
    expires: int
    priority: Priority
    kid: str
    suite: HpkeSuite
    rkid: str
    hop_limit: int = DEFAULT_HOP_LIMIT
    kind: MessageKind = MessageKind.MESSAGE
    v: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, Json]:
        return {
            "v": self.v,
            "id": self.id,
            "from": self.sender,
            "to": self.recipient,
            "created": self.created,
            "expires": self.expires,
            "priority": str(self.priority),
            "kind": str(self.kind),
            "hop_limit": self.hop_limit,
            "alg": _ALG,
            "kid": self.kid,
            "suite": str(self.suite),
            "rkid": self.rkid,
        }

    @classmethod
    def from_json(cls, value: Json) -> Header:
        """Parse an untrusted header; MalformedError names the field, version checked first."""
        p = "header"
        f = Fields(value, p)
        v = f.int("v")
        if v != PROTOCOL_VERSION:
            raise UnsupportedVersionError(
                f"header.v: protocol version {v} is not supported (we speak {PROTOCOL_VERSION})"
            )
        if f.str("alg") != _ALG:
            raise UnsupportedVersionError("header.alg: only Ed25519 signatures are supported")
        suite = f.str("suite")
        try:
            hpke_suite = HpkeSuite(suite)
        except ValueError:
            raise UnsupportedVersionError(f"header.suite: unknown HPKE suite {suite!r}") from None
        header = cls(
            id=_message_id(f, "id", p),
            sender=_node_id(f, "from", p),
            recipient=_node_id(f, "to", p),
            created=f.int("created"),
            expires=f.int("expires"),
            priority=_enum(f, "priority", p, Priority),
            kind=_enum(f, "kind", p, MessageKind),
            hop_limit=f.int("hop_limit", low=1, high=MAX_HOP_LIMIT),
            kid=f.str("kid", max_len=64),
            suite=hpke_suite,
            rkid=f.str("rkid", max_len=64),
            v=v,
        )
        f.done()
        if header.kind is not MessageKind.MESSAGE:
            raise MalformedError("header.kind: an envelope must be of kind message")
        if not header.created < header.expires <= header.created + MAX_TTL_MS:
            raise MalformedError("header.expires: must be after created, within 30 days")
        return header

    def encoded(self) -> bytes:
        return canonical_trusted(self.to_json())


@dataclass(frozen=True, slots=True)
class Envelope:
    """An envelope whose outer signature holds. `raw` is the exact bytes; `digest` their SHA-256."""

    header: Header
    sealed_text: str = field(repr=False)  # base64url, decoded only by the recipient
    signature: bytes = field(repr=False)
    raw: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    plaintext: bytes | None = field(default=None, repr=False)  # known to the composer only

    @property
    def sealed(self) -> bytes:
        """HPKE enc ‖ ciphertext. Relays never need it, so it is decoded on demand."""
        return b64decode(self.sealed_text, field="envelope.sealed")


@dataclass(frozen=True, slots=True)
class OpenedMessage:
    """An envelope opened by its recipient, both signatures checked."""

    envelope: Envelope
    message_type: MessageType
    body: Body
    plaintext: bytes = field(repr=False)  # what the inner signature covers, for auditors
    inner_signature: bytes = field(repr=False)

    @property
    def header(self) -> Header:
        return self.envelope.header


def _seal_info(header_bytes: bytes, rkid: str) -> bytes:
    # RFC 9180 §5.1: `info` is the application's context; it also stands in for aad here.
    return _SEAL + b"%d\n%s\n" % (PROTOCOL_VERSION, rkid.encode()) + sha256(header_bytes)


def seal(
    *,
    sender: NodeId,
    recipient: NodeId,
    message_type: MessageType | str,
    body: Body | Json,
    priority: Priority,
    now: int,
    random_bytes: bytes,
    signing_key: SigningKey,
    recipient_key: HpkePublicKey,
    ttl_ms: int | None = None,
    hop_limit: int = DEFAULT_HOP_LIMIT,
) -> Envelope:
    """Validate, sign, seal and sign a message. Nothing leaves here unvalidated.

    `body` is a typed Body or its JSON (validated here). Raises BodyError
    naming the field, before anything is signed.
    """
    typed = body if isinstance(body, _BODY_CLASSES) else parse_body(message_type, body)
    kind = body_type(typed)
    if str(message_type) != kind:
        raise BodyError("type", f"body is a {kind}, not a {message_type}")
    body_bytes = canonical_trusted(body_to_json(typed))
    if len(body_bytes) > MAX_BODY_BYTES:
        raise BodyError("body", f"{len(body_bytes)} bytes, over the limit of {MAX_BODY_BYTES}")
    ttl = DEFAULT_TTL_MS[priority] if ttl_ms is None else ttl_ms
    if not 0 < ttl <= MAX_TTL_MS:
        raise BodyError("ttl", "must be between 1 ms and 30 days")
    header = Header(
        id=new_message_id(now, random_bytes),
        sender=sender,
        recipient=recipient,
        created=now,
        expires=now + ttl,
        priority=priority,
        kid=signing_key.kid,
        suite=recipient_key.suite,
        rkid=recipient_key.kid,
        hop_limit=hop_limit,
    )
    header_bytes = header.encoded()
    type_bytes = b'"%s"' % kind.encode()
    inner = {"body": body_bytes, "header": header_bytes, "type": type_bytes}
    inner_sig = signing_key.sign(_INNER + canonical_object(inner))
    plaintext = canonical_object(
        {"body": body_bytes, "sig": b'"%s"' % b64encode(inner_sig).encode(), "type": type_bytes}
    )
    sealed = recipient_key.seal(plaintext, _seal_info(header_bytes, recipient_key.kid))
    sealed_text = b64encode(sealed)
    outer = {"header": header_bytes, "sealed": b'"%s"' % sealed_text.encode()}
    outer_sig = signing_key.sign(_OUTER + canonical_object(outer))
    raw = canonical_object({**outer, "sig": b'"%s"' % b64encode(outer_sig).encode()})
    return Envelope(header, sealed_text, outer_sig, raw, sha256(raw), plaintext)


def verify_envelope(
    raw: bytes, *, roster: Roster, now: int, skew_ms: int = DEFAULT_SKEW_MS
) -> Envelope:
    """The checks anyone can make (a relay too): form, signer, outer signature, time.

    Raises OversizeError, MalformedError, UnsupportedVersionError,
    UnknownSignerError, BadSignatureError, ClockSkewError or ExpiredError.
    """
    envelope = verify_signed(raw, roster=roster)
    check_times(envelope.header, now=now, skew_ms=skew_ms)
    return envelope


def verify_signed(raw: bytes, *, roster: Roster) -> Envelope:
    """Form, signer and outer signature: who sent these bytes, without asking when.

    A receiver looks an id up after this and before `check_times`, so that a
    late resend of a message it holds gets its original receipt, not `expired`.
    Raises OversizeError, MalformedError, UnsupportedVersionError,
    UnknownSignerError or BadSignatureError.
    """
    doc = Fields(parse_canonical(raw, limit=MAX_ENVELOPE_BYTES, what="envelope"), "envelope")
    header_value = doc.any("header")
    header = Header.from_json(header_value)
    sealed_text = doc.str("sealed", max_len=MAX_ENVELOPE_BYTES)
    signature = doc.bytes("sig")
    doc.done()
    key = roster.verify_key(header.sender, header.kid)
    signed = canonical_object(
        {"header": canonical_trusted(header_value), "sealed": canonical_trusted(sealed_text)}
    )
    key.verify(signature, _OUTER + signed, what="outer signature")
    return Envelope(header, sealed_text, signature, raw, sha256(raw))


def check_times(header: Header, *, now: int, skew_ms: int = DEFAULT_SKEW_MS) -> None:
    """Refuse a message created too far ahead of `now` (ClockSkewError) or past its
    expiry (ExpiredError)."""
    if header.created > now + skew_ms:
        raise ClockSkewError(
            f"created {header.created - now} ms ahead of our clock (allowed skew {skew_ms} ms)"
        )
    if now > header.expires:
        raise ExpiredError(f"message {header.id} expired {now - header.expires} ms ago")


@dataclass(frozen=True, slots=True)
class Unsealed:
    """The plaintext of an envelope, both signatures checked, body not yet typed."""

    envelope: Envelope
    message_type: MessageType
    body_json: Json = field(repr=False)
    plaintext: bytes = field(repr=False)  # what the inner signature covers, for auditors
    inner_signature: bytes = field(repr=False)


def _key_for(header: Header, keys: HpkePrivateKey | Keyring) -> HpkePrivateKey:
    """The HPKE key an envelope names (`rkid`): ours now, or one we retired."""
    key = keys.hpke(header.rkid) if isinstance(keys, Keyring) else keys
    if key is None or key.public.kid != header.rkid or header.suite is not key.suite:
        ours = keys.current.public.kid if isinstance(keys, Keyring) else keys.public.kid
        raise WrongRecipientError(
            f"message {header.id} is sealed to key {header.rkid}, ours is {ours}"
        )
    return key


def unseal(
    envelope: Envelope, *, me: NodeId, hpke_key: HpkePrivateKey | Keyring, roster: Roster
) -> Unsealed:
    """The recipient's envelope checks: addressed to us, opens with our key, inner signature.

    `hpke_key` is our key, or our keyring: the header's `rkid` then picks the
    current key or a retired one (a peer may seal to our old key until it has
    the roster that carries the new one).

    Raises WrongRecipientError, DecryptError, MalformedError, BadSignatureError
    or UnknownSignerError.
    """
    header = envelope.header
    if header.recipient != me:
        raise WrongRecipientError(f"message {header.id} is for {header.recipient}, not {me}")
    hpke_key = _key_for(header, hpke_key)
    plaintext = hpke_key.open(envelope.sealed, _seal_info(header.encoded(), header.rkid))
    key = roster.verify_key(header.sender, header.kid)
    message_type, body_value, inner_sig = verify_plaintext(plaintext, header, key)
    return Unsealed(envelope, message_type, body_value, plaintext, inner_sig)


def verify_plaintext(
    plaintext: bytes, header: Header, key: VerifyKey
) -> tuple[MessageType, Json, bytes]:
    """The inner signature: `key` (the sender's) signed this type and body under `header`.
    What a recipient checks on opening, and anyone shown the plaintext later (an evidence
    package). Returns (type, body JSON, signature); raises MalformedError or
    BadSignatureError."""
    inner = Fields(parse_canonical(plaintext, limit=MAX_BODY_BYTES * 2, what="plaintext"), "plain")
    type_name = inner.str("type")
    body_value = inner.any("body")
    inner_sig = inner.bytes("sig")
    inner.done()
    try:
        message_type = MessageType(type_name)
    except ValueError:
        raise MalformedError(f"plain.type: unknown message type {type_name!r}") from None
    body_bytes = canonical_trusted(body_value)  # checked by parse_canonical above
    signed = canonical_object(
        {"body": body_bytes, "header": header.encoded(), "type": canonical_trusted(type_name)}
    )
    key.verify(inner_sig, _INNER + signed, what="inner signature")
    return message_type, body_value, inner_sig


def open_envelope(
    envelope: Envelope, *, me: NodeId, hpke_key: HpkePrivateKey | Keyring, roster: Roster
) -> OpenedMessage:
    """`unseal`, then type the body.

    Raises what `unseal` raises; a body that fails validation is a
    MalformedError naming the field (the sender's node should never have sealed it).
    """
    unsealed = unseal(envelope, me=me, hpke_key=hpke_key, roster=roster)
    try:
        body = parse_body(unsealed.message_type, unsealed.body_json)
    except BodyError as exc:
        raise MalformedError(f"plain.body.{exc.field}: {exc.problem}") from exc
    return OpenedMessage(
        envelope, unsealed.message_type, body, unsealed.plaintext, unsealed.inner_signature
    )


class ReceiptScope(StrEnum):
    END_TO_END = "end_to_end"  # from the recipient: the message arrived where it was sent
    HOP = "hop"  # from a relay: it took the envelope on


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed statement that `sender` (the receiving node) got the envelope with `digest`."""

    id: MessageId  # the receipt's own id
    message_id: MessageId
    sender: NodeId  # the node that received the message and signs this receipt
    recipient: NodeId  # the node that sent the message
    received: int
    digest: bytes
    outcome: Outcome
    kid: str
    scope: ReceiptScope = ReceiptScope.END_TO_END
    reason: str | None = None
    path: tuple[NodeId, ...] = ()  # the relays the message came through, as the receiver saw
    checkpoint: str | None = None  # the receiver's latest signed audit checkpoint (C2SP note)
    raw: bytes = field(default=b"", repr=False, compare=False)
    signature: bytes = field(default=b"", repr=False, compare=False)

    def to_json(self) -> dict[str, Json]:
        value: dict[str, Json] = {
            "v": PROTOCOL_VERSION,
            "kind": str(MessageKind.RECEIPT),
            "id": self.id,
            "for": self.message_id,
            "from": self.sender,
            "to": self.recipient,
            "received": self.received,
            "digest": b64encode(self.digest),
            "outcome": str(self.outcome),
            "scope": str(self.scope),
            "alg": _ALG,
            "kid": self.kid,
        }
        if self.reason is not None:
            value["reason"] = self.reason
        if self.path:
            value["path"] = list(self.path)
        if self.checkpoint is not None:
            value["checkpoint"] = self.checkpoint
        return value


def make_receipt(
    *,
    message_id: MessageId,
    message_sender: NodeId,
    envelope_raw: bytes,
    me: NodeId,
    signing_key: SigningKey,
    now: int,
    random_bytes: bytes,
    outcome: Outcome,
    reason: str | None = None,
    scope: ReceiptScope = ReceiptScope.END_TO_END,
    path: tuple[NodeId, ...] = (),
    checkpoint: str | None = None,
) -> Receipt:
    """Sign a receipt for the envelope bytes exactly as received.

    `message_sender` is whom the receipt answers: the message's sender for an
    end-to-end receipt, the previous hop for a hop receipt.
    """
    if (outcome is Outcome.REJECTED) != (reason is not None):
        raise ValueError("a reason goes with a rejected outcome, and only with it")
    unsigned = Receipt(
        id=new_message_id(now, random_bytes),
        message_id=message_id,
        sender=me,
        recipient=message_sender,
        received=now,
        digest=sha256(envelope_raw),
        outcome=outcome,
        kid=signing_key.kid,
        scope=scope,
        reason=reason,
        path=path,
        checkpoint=checkpoint,
    )
    statement = unsigned.to_json()
    signature = signing_key.sign(_RECEIPT + canonical(statement))
    raw = canonical({"receipt": statement, "sig": b64encode(signature)})
    return Receipt(
        **{
            k: getattr(unsigned, k)
            for k in Receipt.__dataclass_fields__
            if k not in ("raw", "signature")
        },
        raw=raw,
        signature=signature,
    )


def verify_receipt(
    raw: bytes, *, roster: Roster, now: int, skew_ms: int = DEFAULT_SKEW_MS
) -> Receipt:
    """Parse and verify a receipt's form, signer and signature (fail closed).

    Raises OversizeError, MalformedError, UnsupportedVersionError,
    UnknownSignerError, BadSignatureError or ClockSkewError.
    """
    doc = Fields(parse_canonical(raw, limit=MAX_RECEIPT_BYTES, what="receipt"), "receipt")
    statement = doc.any("receipt")
    signature = doc.bytes("sig")
    doc.done()
    p = "receipt.receipt"
    f = Fields(statement, p)
    v = f.int("v")
    if v != PROTOCOL_VERSION:
        raise UnsupportedVersionError(f"{p}.v: protocol version {v} is not supported")
    if f.str("alg") != _ALG:
        raise UnsupportedVersionError(f"{p}.alg: only Ed25519 signatures are supported")
    if f.str("kind") != MessageKind.RECEIPT:
        raise MalformedError(f"{p}.kind: must be receipt")
    digest = f.bytes("digest")
    if len(digest) != 32:
        raise MalformedError(f"{p}.digest: must be a SHA-256 digest")
    outcome = _enum(f, "outcome", p, Outcome)
    reason = f.str("reason", max_len=500) if f.has("reason") else None
    path_value = f.any("path") if f.has("path") else []
    if (
        not isinstance(path_value, list)
        or len(path_value) > MAX_HOP_LIMIT
        or not all(is_node_id(n) for n in path_value)
    ):
        raise MalformedError(f"{p}.path: expected a list of at most {MAX_HOP_LIMIT} node ids")
    if (outcome is Outcome.REJECTED) != (reason is not None):
        raise MalformedError(f"{p}.reason: required with outcome rejected, and only then")
    receipt = Receipt(
        id=_message_id(f, "id", p),
        message_id=_message_id(f, "for", p),
        sender=_node_id(f, "from", p),
        recipient=_node_id(f, "to", p),
        received=f.int("received"),
        digest=digest,
        outcome=outcome,
        kid=f.str("kid", max_len=64),
        scope=_enum(f, "scope", p, ReceiptScope),
        reason=reason,
        path=tuple(NodeId(n) for n in path_value),
        checkpoint=f.str("checkpoint", max_len=MAX_CHECKPOINT_NOTE)
        if f.has("checkpoint")
        else None,
        raw=raw,
        signature=signature,
    )
    f.done()
    key = roster.verify_key(receipt.sender, receipt.kid)
    key.verify(signature, _RECEIPT + canonical_trusted(statement), what="receipt signature")
    if receipt.received > now + skew_ms:
        raise ClockSkewError(
            f"receipt time {receipt.received - now} ms ahead of our clock (allowed {skew_ms} ms)"
        )
    return receipt


def _checkpoint(f: Fields) -> str:
    return f.str("checkpoint", max_len=MAX_CHECKPOINT_NOTE)


def check_receipt_for(receipt: Receipt, envelope: Envelope) -> None:
    """Return None if `receipt` answers exactly `envelope` (AS4 non-repudiation of receipt)."""
    header = envelope.header
    check_receipt_matches(
        receipt,
        message_id=header.id,
        sender=header.sender,
        recipient=header.recipient,
        digest=envelope.digest,
    )


def check_receipt_matches(
    receipt: Receipt, *, message_id: str, sender: str, recipient: str, digest: bytes
) -> None:
    """Return None if `receipt` is for message `message_id` with exactly `digest`.

    Raises DigestMismatchError naming what differs.
    """
    if receipt.message_id != message_id:
        raise DigestMismatchError(f"receipt is for {receipt.message_id}, not {message_id}")
    if receipt.scope is ReceiptScope.END_TO_END and receipt.recipient != sender:
        raise DigestMismatchError(f"receipt is addressed to {receipt.recipient}, not {sender}")
    if receipt.scope is ReceiptScope.END_TO_END and receipt.sender != recipient:
        raise DigestMismatchError(
            f"end-to-end receipt signed by {receipt.sender}, not the recipient {recipient}"
        )
    if receipt.digest != digest:
        raise DigestMismatchError(
            f"receipt digest {b64encode(receipt.digest)} is not that of the envelope sent "
            f"({b64encode(digest)})"
        )


# A sent copy names the storage key it is sealed under: _SELF_TAG ‖ kid (16 bytes) ‖
# nonce ‖ ciphertext, the kid bound in with the message id. Copies from earlier versions
# are nonce ‖ ciphertext under a key derived from the HPKE key of the time.
_SELF_TAG: Final = b"cpn/sk1\n"
_KID_LEN: Final = 16  # base64url of 12 bytes


def seal_to_self(plaintext: bytes, message_id: str, key: StorageKey) -> bytes:
    """The composer's copy of a plaintext, sealed with its own storage key for its readers;
    the copy names that key."""
    kid = key.kid.encode()
    return _SELF_TAG + kid + key.seal(plaintext, _SELF + message_id.encode() + b"\n" + kid)


def open_from_self(sealed: bytes, message_id: str, keys: StorageKey | Keyring) -> bytes:
    """Inverse of `seal_to_self`, with the key the copy names; a copy from an earlier
    version (which names none) is tried with every storage key held, current first.

    Raises DecryptError when the key is not held or the copy was changed.
    """
    ring = list(keys.storage_keys()) if isinstance(keys, Keyring) else [keys]
    if sealed.startswith(_SELF_TAG) and len(sealed) > len(_SELF_TAG) + _KID_LEN + 12:
        kid = sealed[len(_SELF_TAG) : len(_SELF_TAG) + _KID_LEN]
        key = next((k for k in ring if k.kid.encode() == kid), None)
        if key is None:
            raise DecryptError(
                f"stored copy is sealed under storage key {kid.decode()!r}, not held"
            )
        context = _SELF + message_id.encode() + b"\n" + kid
        return key.open(sealed[len(_SELF_TAG) + _KID_LEN :], context)
    for key in ring:
        try:
            return key.open(sealed, _SELF + message_id.encode())
        except DecryptError:
            continue
    raise DecryptError("stored copy does not open with any storage key this node holds")


def stored_rkid(raw: bytes) -> str:
    """The recipient key id (`rkid`) in a stored envelope's header: which key opens it."""
    doc = Fields(parse_canonical(raw, limit=MAX_ENVELOPE_BYTES, what="envelope"), "envelope")
    return Header.from_json(doc.any("header")).rkid


def self_sealed_kid(sealed: bytes) -> str | None:
    """The storage key id a sent copy names; None for a copy from an earlier version."""
    if sealed.startswith(_SELF_TAG) and len(sealed) > len(_SELF_TAG) + _KID_LEN + 12:
        return sealed[len(_SELF_TAG) : len(_SELF_TAG) + _KID_LEN].decode("ascii", "replace")
    return None


def read_stored(raw: bytes, hpke_key: HpkePrivateKey | Keyring) -> tuple[MessageType, Json, bytes]:
    """Open an envelope from our own store (verified when it arrived) for a reader, with the
    key its header names (current or retired, when given a keyring).

    Signatures and times are not checked again here: keys rotate and messages
    age, and the store holds only what passed every check on arrival.
    Returns (type, body JSON, plaintext). Raises WrongRecipientError when the
    key is not held, DecryptError when it does not open.
    """
    doc = Fields(parse_canonical(raw, limit=MAX_ENVELOPE_BYTES, what="envelope"), "envelope")
    header = Header.from_json(doc.any("header"))
    sealed = b64decode(doc.any("sealed"), field="envelope.sealed")
    key = _key_for(header, hpke_key)
    plaintext = key.open(sealed, _seal_info(header.encoded(), header.rkid))
    return (*read_plaintext(plaintext), plaintext)


def read_plaintext(plaintext: bytes) -> tuple[MessageType, Json]:
    """The type and body JSON held in a plaintext (no signature check)."""
    inner = Fields(parse_canonical(plaintext, limit=MAX_BODY_BYTES * 2, what="plaintext"), "plain")
    type_name = inner.str("type")
    try:
        return MessageType(type_name), inner.any("body")
    except ValueError:
        raise MalformedError(f"plain.type: unknown message type {type_name!r}") from None
