"""The signed roster of contact points: cards, versions that only go forward, key lookup.

In the Convention the UN Secretary-General keeps the register of contact
points; here the register keeper's Ed25519 key signs each roster version.
A node pins that key, and accepts a roster only when

1. the keeper's pinned key signed it (over ``cpn/v1 roster\\n`` ‖ canonical roster),
2. it is within its validity period, and
3. its version is newer than the roster held (the same version is accepted
   only with the very same content: an older version never replaces a newer one).

Each entry is a contact point's public card: id, name, peer URL, Ed25519
signing key, HPKE sealing key, TLS certificate fingerprint, and a status
(`active` or `revoked`). Keys rotate and nodes are revoked through a new
version. Messages and peers are accepted only with keys the current roster
holds for an active entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from network.core.bodies import language_problem
from network.core.crypto import (
    HpkePublicKey,
    HpkeSuite,
    SigningKey,
    VerifyKey,
    check_certificate,
    sha256,
)
from network.core.errors import (
    BadSignatureError,
    MalformedError,
    PeerError,
    RosterError,
    RosterExpiredError,
    RosterSignatureError,
    RosterStaleError,
    UnknownNodeError,
    UnknownSignerError,
)
from network.core.records import (
    PROTOCOL_VERSION,
    Fields,
    Json,
    NodeId,
    b64encode,
    canonical,
    is_node_id,
    parse_json,
)

__all__ = [
    "MAX_ROSTER_BYTES",
    "ROSTER_WARNING_MS",
    "Card",
    "NodeStatus",
    "Roster",
    "RosterEntry",
    "RosterValidity",
    "build_roster",
    "load_roster",
    "parse_card",
    "phone_problem",
    "roster_validity",
]

MAX_ROSTER_BYTES = 4 * 1024 * 1024  # 193 cards with hybrid keys take ~400 KiB
ROSTER_CONTEXT = b"cpn/v1 roster\n"
# How long before its roster expires a node starts raising it: a week for the register
# keeper to sign and spread the next version.
ROSTER_WARNING_MS = 7 * 86_400_000


class RosterValidity(StrEnum):
    VALID = "valid"
    EXPIRING = "expiring"  # within ROSTER_WARNING_MS of its end
    EXPIRED = "expired"


class NodeStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Card:
    """A contact point's public card, as `cpn keys init` prints it."""

    id: NodeId
    name: str
    url: str
    signing_key: VerifyKey = field(compare=False)
    hpke_key: HpkePublicKey = field(compare=False)
    tls_cert: bytes  # DER; peers trust it and pin its SHA-256
    # The duty desk by telephone, when the network cannot reach it, and the languages it
    # works in: shown beside a peer that is unreachable (empty: not given).
    phones: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()

    @property
    def tls_sha256(self) -> bytes:
        return sha256(self.tls_cert)

    def to_json(self) -> dict[str, Json]:
        return {
            "id": self.id,
            "name": self.name,
            "url": self.url,
            "signing_key": {
                "alg": "Ed25519",
                "kid": self.signing_key.kid,
                "public": b64encode(self.signing_key.public_raw),
            },
            "hpke_key": {
                "suite": str(self.hpke_key.suite),
                "kid": self.hpke_key.kid,
                "public": b64encode(self.hpke_key.public_raw),
            },
            "tls_cert": b64encode(self.tls_cert),
            "tls_sha256": b64encode(self.tls_sha256),
            # Left out when not given, so that a card without them reads as it always has.
            **({"phones": list(self.phones)} if self.phones else {}),
            **({"languages": list(self.languages)} if self.languages else {}),
        }


def _parse_card(f: Fields, path: str) -> Card:
    node_id = f.str("id", max_len=3)
    if not is_node_id(node_id):
        raise MalformedError(f"{path}.id: {node_id!r} is not an ISO 3166-1 alpha-3 code")
    name = f.str("name")
    url = f.str("url", max_len=500)
    if not url.startswith("wss://"):
        raise MalformedError(f"{path}.url: peer URL must start with wss://")
    sk = Fields(f.any("signing_key"), f"{path}.signing_key")
    if sk.str("alg") != "Ed25519":
        raise MalformedError(f"{path}.signing_key.alg: only Ed25519 is supported")
    signing_key = VerifyKey(sk.bytes("public"))
    if sk.str("kid") != signing_key.kid:
        raise MalformedError(f"{path}.signing_key.kid: does not match the key")
    sk.done()
    hk = Fields(f.any("hpke_key"), f"{path}.hpke_key")
    suite_name = hk.str("suite")
    try:
        suite = HpkeSuite(suite_name)
    except ValueError as exc:
        raise MalformedError(f"{path}.hpke_key.suite: unknown suite {suite_name!r}") from exc
    hpke_key = HpkePublicKey(suite, hk.bytes("public"))
    if hk.str("kid") != hpke_key.kid:
        raise MalformedError(f"{path}.hpke_key.kid: does not match the key")
    hk.done()
    tls_cert = f.bytes("tls_cert")
    try:
        check_certificate(tls_cert)
    except MalformedError as exc:
        raise MalformedError(f"{path}.tls_cert: {exc}") from exc
    if f.bytes("tls_sha256") != sha256(tls_cert):
        raise MalformedError(f"{path}.tls_sha256: does not match tls_cert")
    phones = _strings(f, "phones", path, MAX_PHONES, phone_problem)
    languages = _strings(f, "languages", path, MAX_LANGUAGES, language_problem)
    return Card(NodeId(node_id), name, url, signing_key, hpke_key, tls_cert, phones, languages)


MAX_PHONES = 5
MAX_LANGUAGES = 10
_PHONE = re.compile(r"\+?[0-9][0-9 ().-]{3,38}[0-9]")


def phone_problem(value: str) -> str | None:
    """Why `value` is not a telephone number a duty officer can dial (None: it is)."""
    if _PHONE.fullmatch(value):
        return None
    return (
        "must be a telephone number: digits, spaces, ( ) . - and a leading +,"
        " such as +33 1 40 97 00 00"
    )


def _strings(
    f: Fields, key: str, path: str, most: int, problem: Callable[[str], str | None]
) -> tuple[str, ...]:
    """An optional array of at most `most` checked strings (absent: empty)."""
    if not f.has(key):
        return ()
    items = f.any(key)
    if not isinstance(items, list) or not items or len(items) > most:
        raise MalformedError(f"{path}.{key}: must be an array of 1..{most} strings")
    for i, item in enumerate(items):
        wrong = problem(item) if isinstance(item, str) else "must be a string"
        if wrong is not None:
            raise MalformedError(f"{path}.{key}[{i}]: {wrong}")
    return tuple(str(item) for item in items)


def parse_card(value: Json, path: str = "card") -> Card:
    """A card from its JSON; raises MalformedError naming the bad field."""
    f = Fields(value, path)
    card = _parse_card(f, path)
    f.done()
    return card


@dataclass(frozen=True, slots=True)
class RosterEntry:
    card: Card
    status: NodeStatus

    @property
    def active(self) -> bool:
        return self.status is NodeStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class Roster:
    """A verified roster version. `raw` is the signed document exactly as loaded."""

    version: int
    issued: int
    valid_until: int
    keeper_kid: str
    entries: Mapping[NodeId, RosterEntry]
    raw: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def entry(self, node_id: str) -> RosterEntry:
        """The entry for `node_id`, active or revoked; UnknownNodeError if absent."""
        try:
            return self.entries[NodeId(node_id)]
        except KeyError:
            raise UnknownNodeError(f"{node_id} is not in roster version {self.version}") from None

    def active_card(self, node_id: str) -> Card:
        """The card of an active contact point; UnknownNodeError if absent or revoked."""
        entry = self.entry(node_id)
        if not entry.active:
            raise UnknownNodeError(
                f"{node_id} is revoked in roster version {self.version}", reason="revoked_node"
            )
        return entry.card

    def verify_key(self, node_id: str, kid: str) -> VerifyKey:
        """The signing key a peer claims to use, if the roster holds it for an active node."""
        entry = self.entries.get(NodeId(node_id))
        if entry is None:
            raise UnknownSignerError(f"signer {node_id} is not in roster version {self.version}")
        if not entry.active:
            raise UnknownSignerError(
                f"signer {node_id} is revoked in roster version {self.version}",
                reason="revoked_signer",
            )
        key = entry.card.signing_key
        if key.kid != kid:
            raise UnknownSignerError(
                f"signer {node_id} key {kid} is not the key roster version {self.version} "
                f"holds ({key.kid})"
            )
        return key

    def to_json(self) -> dict[str, Json]:
        value = parse_json(self.raw, limit=MAX_ROSTER_BYTES, what="roster")
        assert isinstance(value, dict)
        return value


def build_roster(
    cards: Iterable[Card],
    *,
    keeper: SigningKey,
    version: int,
    issued: int,
    valid_until: int,
    revoked: Iterable[str] = (),
) -> bytes:
    """Sign a roster version; returns the document's canonical bytes."""
    revoked_ids = set(revoked)
    by_id: dict[str, Card] = {}
    for card in cards:
        if card.id in by_id:
            raise RosterError(f"two cards for {card.id}")
        by_id[card.id] = card
    unknown = revoked_ids - set(by_id)
    if unknown:
        raise RosterError(f"cannot revoke {', '.join(sorted(unknown))}: no card for it")
    if valid_until <= issued:
        raise RosterError("valid_until must be after issued")
    entries: list[Json] = []
    for node_id in sorted(by_id):
        item = by_id[node_id].to_json()
        item["status"] = str(NodeStatus.REVOKED if node_id in revoked_ids else NodeStatus.ACTIVE)
        entries.append(item)
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "version": version,
        "issued": issued,
        "valid_until": valid_until,
        "keeper": {"alg": "Ed25519", "kid": keeper.kid},
        "contact_points": entries,
    }
    signature = keeper.sign(ROSTER_CONTEXT + canonical(body))
    return canonical({"roster": body, "sig": b64encode(signature)})


def roster_validity(
    roster: Roster, now: int, warning_ms: int = ROSTER_WARNING_MS
) -> RosterValidity:
    """Whether `roster` is still valid at `now`, or about to expire, or expired."""
    if now > roster.valid_until:
        return RosterValidity.EXPIRED
    if now > roster.valid_until - warning_ms:
        return RosterValidity.EXPIRING
    return RosterValidity.VALID


def load_roster(
    data: bytes,
    *,
    keeper: VerifyKey,
    now: int,
    held: Roster | None = None,
    skew_ms: int = 300_000,
    expired_ok: bool = False,
) -> Roster:
    """Verify a roster document and return it, or raise saying which check failed.

    RosterSignatureError: not the pinned keeper's signature (or anything changed);
    RosterExpiredError: outside [issued - skew, valid_until] (past valid_until is
    accepted with `expired_ok`: a node starting with the newest roster it has, run
    degraded, rather than not at all);
    RosterStaleError: not newer than `held`;
    RosterError: malformed.
    """
    cache_key = sha256(data) + keeper.public_raw
    cached = _VERIFIED.get(cache_key)
    if cached is not None:  # the same bytes under the same keeper verified before
        return _check_roster_use(cached, now=now, held=held, skew_ms=skew_ms, expired_ok=expired_ok)
    try:
        doc = Fields(parse_json(data, limit=MAX_ROSTER_BYTES, what="roster"), "roster")
        body_value = doc.any("roster")
        signature = doc.bytes("sig")
        doc.done()
        body = Fields(body_value, "roster.roster")
        v = body.int("v")
        if v != PROTOCOL_VERSION:
            raise RosterError(f"roster protocol version {v} is not supported")
        keeper_ref = Fields(body.any("keeper"), "roster.keeper")
        if keeper_ref.str("alg") != "Ed25519":
            raise RosterSignatureError("roster.keeper.alg: only Ed25519 is supported")
        keeper_kid = keeper_ref.str("kid")
        keeper_ref.done()
        if keeper_kid != keeper.kid:
            raise RosterSignatureError(
                f"roster is signed by key {keeper_kid}, not the pinned register keeper {keeper.kid}"
            )
        try:
            keeper.verify(
                signature, ROSTER_CONTEXT + canonical(body_value), what="roster signature"
            )
        except BadSignatureError as exc:
            raise RosterSignatureError(f"{exc} (the roster was changed or forged)") from exc
        version = body.int("version", low=1)
        issued = body.int("issued")
        valid_until = body.int("valid_until")
        items = body.any("contact_points")
        body.done()
        if not isinstance(items, list):
            raise MalformedError("roster.contact_points: expected an array")
        entries: dict[NodeId, RosterEntry] = {}
        for index, item in enumerate(items):
            path = f"roster.contact_points[{index}]"
            f = Fields(item, path)
            card = _parse_card(f, path)
            status_name = f.str("status")
            f.done()
            try:
                status = NodeStatus(status_name)
            except ValueError as exc:
                raise MalformedError(f"{path}.status: unknown status {status_name!r}") from exc
            if card.id in entries:
                raise MalformedError(f"{path}.id: {card.id} listed twice")
            entries[card.id] = RosterEntry(card, status)
    except RosterError:
        raise
    except PeerError as exc:
        raise RosterError(f"malformed roster: {exc}") from exc
    digest = sha256(ROSTER_CONTEXT + canonical(body_value))
    roster = Roster(version, issued, valid_until, keeper_kid, entries, data, digest)
    if len(_VERIFIED) >= 8:
        _VERIFIED.clear()
    _VERIFIED[cache_key] = roster  # a simulation's nodes in one process share one roster
    return _check_roster_use(roster, now=now, held=held, skew_ms=skew_ms, expired_ok=expired_ok)


# Rosters whose signature and form were verified: sha256(bytes) + keeper key -> Roster.
_VERIFIED: dict[bytes, Roster] = {}


def _check_roster_use(
    roster: Roster, *, now: int, held: Roster | None, skew_ms: int, expired_ok: bool
) -> Roster:
    """The checks that depend on the moment and on the roster held, not on the bytes."""
    version = roster.version
    if now < roster.issued - skew_ms:
        raise RosterExpiredError(f"roster version {version} is not valid yet (issued in future)")
    if now > roster.valid_until and not expired_ok:
        raise RosterExpiredError(f"roster version {version} expired")
    if held is not None:
        if version < held.version:
            raise RosterStaleError(
                f"roster version {version} is older than version {held.version} held"
            )
        if version == held.version and roster.digest != held.digest:
            raise RosterStaleError(
                f"roster version {version} differs from the version {held.version} held; "
                "a change needs a new version"
            )
    return roster
