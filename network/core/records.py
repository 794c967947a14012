"""Ids, closed sets, canonical JSON and size-limited parsing: the vocabulary.

Canonical JSON is RFC 8785 (JCS) restricted as the design says: strings,
integers within ±(2^53-1), booleans, null, arrays and objects; no floats;
binary as base64url without padding; times as integer milliseconds since the
Unix epoch (UTC). Within that restriction and with ASCII keys, orjson's
sorted-key compact output is byte-for-byte JCS (tests/test_records.py proves
it against the `rfc8785` package with hypothesis) at a hundredth of the cost;
documents with non-ASCII keys fall back to `rfc8785`, because JCS sorts keys
by UTF-16 code units and orjson by UTF-8 bytes.

Parsing refuses what we would never produce: oversize input, invalid UTF-8,
duplicate keys, floats, NaN, out-of-range integers. `parse_canonical` also
insists that the bytes are exactly the canonical encoding of what they hold,
so a signature over them is a signature over one meaning.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import re
from enum import StrEnum
from typing import Any, Final, NewType

import orjson
import rfc8785

from network.core.errors import MalformedError, OversizeError

__all__ = [
    "DESK_ROLES",
    "MAX_JSON_DEPTH",
    "MAX_SAFE_INTEGER",
    "MESSAGE_ID_PATTERN",
    "PROTOCOL_VERSION",
    "ROLES",
    "Box",
    "Fields",
    "Json",
    "MessageId",
    "MessageKind",
    "MessageType",
    "NodeId",
    "Outcome",
    "Priority",
    "b64decode",
    "b64encode",
    "canonical",
    "canonical_object",
    "canonical_trusted",
    "check_json_value",
    "is_message_id",
    "is_node_id",
    "message_id_problem",
    "new_message_id",
    "parse_canonical",
    "parse_json",
]

PROTOCOL_VERSION = 1
MAX_SAFE_INTEGER = 2**53 - 1
# Our documents nest a few levels; a limit far below Python's stack keeps a deeply
# nested document from raising RecursionError instead of a refusal.
MAX_JSON_DEPTH = 64

# Values that canonical JSON may hold, as parsed: dict, list, str, int, bool, None.
Json = Any

NodeId = NewType("NodeId", str)
"""ISO 3166-1 alpha-3 code of a contact point, e.g. ``FRA``."""

MessageId = NewType("MessageId", str)
"""A UUIDv7 in its canonical text form: time-ordered, unique."""


ROLES = ("officer", "auditor", "admin", "approver")
# Who works the desk: an approver is an officer who may also approve another's request.
DESK_ROLES = frozenset({"officer", "approver"})
"""The roles of a node's users (DESIGN.md, "Who uses it")."""


class Priority(StrEnum):
    FLASH = "flash"  # life or safety at risk
    URGENT = "urgent"  # data may be lost within hours
    ROUTINE = "routine"


class Box(StrEnum):
    """Where a node keeps a message: its own outbound, its inbound, or relayed for others."""

    OUT = "out"
    IN = "in"
    RELAY = "relay"


class MessageKind(StrEnum):
    MESSAGE = "message"
    RECEIPT = "receipt"


class MessageType(StrEnum):
    PRESERVATION = "preservation"
    TRAFFIC_DISCLOSURE = "traffic_disclosure"
    MLA_NOTICE = "mla_notice"
    TECHNICAL_ADVICE = "technical_advice"
    LEGAL_INFORMATION = "legal_information"
    EVIDENCE = "evidence"
    LOCATE = "locate"
    EMERGENCY = "emergency"
    ACKNOWLEDGEMENT = "acknowledgement"
    RESPONSE = "response"
    FOLLOW_UP = "follow_up"
    # One part of a file a message carries (network/core/attachments.py): sent by the node
    # with that message, never composed by an officer.
    ATTACHMENT_PART = "attachment_part"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


def is_node_id(value: object) -> bool:
    """True for three upper-case ASCII letters (ISO 3166-1 alpha-3 shape)."""
    return (
        isinstance(value, str)
        and len(value) == 3
        and value.isascii()
        and value.isalpha()
        and value.isupper()
    )


# A UUIDv7 (RFC 9562 §5.7) in its canonical lower-case form: version 7, variant 10.
# Every id that crosses a boundary (a header, a receipt, a body's reference, a URL, a
# query) is held to it, so that nothing else (a spreadsheet formula, say) passes for one.
MESSAGE_ID_PATTERN: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
_MESSAGE_ID: Final = re.compile(MESSAGE_ID_PATTERN[1:-1])


def is_message_id(value: object) -> bool:
    """True for a UUIDv7 in canonical lower-case 8-4-4-4-12 form."""
    return isinstance(value, str) and _MESSAGE_ID.fullmatch(value) is not None


def message_id_problem(value: object) -> str | None:
    """None for a message id, else what is wrong with it (for a refusal naming the field)."""
    if is_message_id(value):
        return None
    return "must be a message id: a UUIDv7 in lower-case 8-4-4-4-12 hex form"


def new_message_id(now_ms: int, random_bytes: bytes) -> MessageId:
    """A UUIDv7 (RFC 9562 §5.7) from a millisecond time and 10 random bytes."""
    if len(random_bytes) < 10:
        raise ValueError("new_message_id needs 10 random bytes")
    rand = int.from_bytes(random_bytes[:10], "big")
    rand_a = rand >> 68 & 0xFFF
    rand_b = rand & (2**62 - 1)
    value = (now_ms & (2**48 - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return MessageId(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")


def b64encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 §5), as binary travels in JSON."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64_TO_STD = bytes.maketrans(b"-_", b"+/")
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64decode(text: object, *, field: str = "value") -> bytes:
    """Inverse of `b64encode`; refuses padding, other alphabets and non-canonical tails."""
    if not isinstance(text, str) or not text.isascii():
        raise MalformedError(f"{field}: expected a base64url string")
    tail = len(text) % 4
    if tail == 1:
        raise MalformedError(f"{field}: not valid base64url (truncated)")
    raw = text.encode("ascii")
    if b"+" in raw or b"/" in raw or b"=" in raw:
        raise MalformedError(f"{field}: not base64url without padding (RFC 4648 §5)")
    try:
        data = binascii.a2b_base64(
            raw.translate(_B64_TO_STD) + b"=" * (-len(raw) % 4), strict_mode=True
        )
    except binascii.Error as exc:
        raise MalformedError(f"{field}: not valid base64url") from exc
    # RFC 4648 §3.5: the bits a final partial group leaves over must be zero,
    # or two texts would decode to the same bytes.
    if tail and _B64_ALPHABET.index(text[-1]) & (0b1111 if tail == 2 else 0b11):
        raise MalformedError(f"{field}: not canonical base64url (stray bits)")
    return data


def _fits(value: Json, depth: int) -> bool | None:
    """`check_json_value` without naming paths (each message's every value is walked; only
    a refusal needs its path): whether all keys are ASCII, or None if anything is wrong.
    A loop over a stack of containers, not a call per value: strings, most of a body's
    values, are taken where they stand."""
    if depth > MAX_JSON_DEPTH:
        return None
    ascii_keys = True
    stack: list[tuple[Json, int]] = [(value, depth)]
    while stack:
        item, level = stack.pop()
        kind = type(item)
        if kind is str or item is None or item is True or item is False:
            continue
        if kind is dict or kind is list:
            if level >= MAX_JSON_DEPTH and item:
                return None  # its members would be nested too deep
            if kind is dict:
                for key in item:
                    if type(key) is not str:
                        return None
                    if ascii_keys and not key.isascii():
                        ascii_keys = False
                members = item.values()
            else:
                members = item
            for member in members:
                if type(member) is not str:
                    stack.append((member, level + 1))
            continue
        if kind is int and -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
            continue
        return None  # a float, an int out of range, a subclass, anything else: named below
    return ascii_keys


def check_json_value(value: Json, path: str = "", depth: int = 0) -> bool:
    """Check that `value` fits the restricted JSON model; return True if all keys are ASCII.

    Raises MalformedError naming the path of the first value that does not fit
    (nesting deeper than MAX_JSON_DEPTH included).
    """
    fits = _fits(value, depth)
    return _check_named(value, path, depth) if fits is None else fits  # that one raises


def _check_named(value: Json, path: str, depth: int) -> bool:
    if depth > MAX_JSON_DEPTH:
        raise MalformedError(f"{path or 'value'}: nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or value is True or value is False or isinstance(value, str):
        return True
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise MalformedError(f"{path or 'value'}: integer outside ±(2^53-1)")
        return True
    if isinstance(value, dict):
        ascii_keys = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedError(f"{path or 'value'}: object key {key!r} is not a string")
            ascii_keys &= key.isascii()
            ascii_keys &= _check_named(item, f"{path}.{key}" if path else key, depth + 1)
        return ascii_keys
    if isinstance(value, list):
        ascii_keys = True
        for index, item in enumerate(value):
            ascii_keys &= _check_named(item, f"{path}[{index}]", depth + 1)
        return ascii_keys
    if isinstance(value, float):
        raise MalformedError(f"{path or 'value'}: floats are not allowed")
    raise MalformedError(f"{path or 'value'}: {type(value).__name__} is not a JSON value")


def canonical(value: Json) -> bytes:
    """The RFC 8785 encoding of `value` (restricted model; see module docstring)."""
    ascii_keys = check_json_value(value)
    try:
        if ascii_keys:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        return rfc8785.dumps(value)
    except (orjson.JSONEncodeError, rfc8785.CanonicalizationError, UnicodeError) as exc:
        # Lone surrogates in a str are the only way left to get here.
        raise MalformedError(f"cannot encode as canonical JSON: {exc}") from exc


def canonical_trusted(value: Json) -> bytes:
    """`canonical` for values our own code built from checked records or parsed input.

    Skips the walk that `canonical` makes: the caller promises ASCII keys,
    no floats and integers within ±(2^53-1), as typed bodies and headers guarantee.
    """
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _refuse_duplicates(pairs: list[tuple[str, Json]]) -> dict[str, Json]:
    result: dict[str, Json] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _refuse_float(text: str) -> Json:
    raise MalformedError(f"floats are not allowed ({text})")


def _refuse_constant(text: str) -> Json:
    raise MalformedError(f"{text} is not allowed")


# One decoder for every parse: `json.loads` with hooks builds a decoder and its scanner on
# each call: 0.8% of a loaded sender's loop (py-spy; every request's body).
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_refuse_duplicates,
    parse_float=_refuse_float,
    parse_constant=_refuse_constant,
)


def parse_json(data: bytes, *, limit: int, what: str = "document") -> Json:
    """Parse untrusted JSON bytes of at most `limit` bytes into the restricted model.

    Raises OversizeError or MalformedError saying what is wrong.
    """
    if len(data) > limit:
        raise OversizeError(f"{what} is {len(data)} bytes, over the limit of {limit}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"{what} is not valid UTF-8: {exc.reason}") from exc
    try:
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except MalformedError as exc:
        raise MalformedError(f"{what}: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise MalformedError(f"{what} is not valid JSON: {exc}") from exc
    try:
        check_json_value(value)
    except MalformedError as exc:
        raise MalformedError(f"{what}: {exc}") from exc
    return value


def parse_canonical(data: bytes, *, limit: int, what: str = "document") -> Json:
    """Parse bytes that must be exactly the canonical encoding of their value.

    The fast path parses with orjson and compares the re-encoding byte for
    byte; on a mismatch the slow path finds the precise reason to report.
    """
    if len(data) > limit:
        raise OversizeError(f"{what} is {len(data)} bytes, over the limit of {limit}")
    try:
        value = orjson.loads(data)
        if canonical(value) == data:
            return value
    except (orjson.JSONDecodeError, MalformedError):
        pass
    value = parse_json(data, limit=limit, what=what)
    if canonical(value) != data:
        raise MalformedError(f"{what} is not in canonical form (RFC 8785)")
    return value  # pragma: no cover - orjson and json disagree on validity


def canonical_object(members: dict[str, bytes]) -> bytes:
    """Join already-canonical member values into a canonical object.

    For the hot path: each value is encoded once and reused in every signed
    structure that holds it. Keys must be plain ASCII identifiers (ours).
    """
    return b"{" + b",".join(b'"%s":%s' % (k.encode(), members[k]) for k in sorted(members)) + b"}"


class Fields:
    """Typed access to the members of an untrusted JSON object, naming what is wrong.

    `Fields(value, "header")` refuses non-objects; each getter refuses a missing
    or ill-typed member with MalformedError("header.created: ..."); `done()`
    refuses members nobody asked for.
    """

    __slots__ = ("_obj", "_path", "_seen")

    def __init__(self, value: Json, path: str) -> None:
        if not isinstance(value, dict):
            raise MalformedError(f"{path}: expected an object, got {_kind(value)}")
        self._obj: dict[str, Json] = value
        self._path = path
        self._seen: set[str] = set()

    def _get(self, key: str) -> Json:
        self._seen.add(key)
        if key not in self._obj:
            raise MalformedError(f"{self._path}.{key}: required field is missing")
        return self._obj[key]

    def has(self, key: builtins.str) -> bool:
        return key in self._obj

    def str(self, key: builtins.str, *, max_len: builtins.int = 200) -> builtins.str:
        value = self._get(key)
        if not isinstance(value, str):
            raise MalformedError(f"{self._path}.{key}: expected a string, got {_kind(value)}")
        if not value or len(value) > max_len:
            raise MalformedError(f"{self._path}.{key}: length must be 1..{max_len}")
        return value

    def int(
        self, key: builtins.str, *, low: builtins.int = 0, high: builtins.int = MAX_SAFE_INTEGER
    ) -> builtins.int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise MalformedError(f"{self._path}.{key}: expected an integer, got {_kind(value)}")
        if not low <= value <= high:
            raise MalformedError(f"{self._path}.{key}: must be within {low}..{high}")
        return value

    def bytes(self, key: builtins.str) -> builtins.bytes:
        return b64decode(self._get(key), field=f"{self._path}.{key}")

    def any(self, key: builtins.str) -> Json:
        return self._get(key)

    def done(self) -> None:
        extra = sorted(set(self._obj) - self._seen)
        if extra:
            raise MalformedError(f"{self._path}.{extra[0]}: unknown field")


def _kind(value: Json) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        type(None): "null",
    }.get(type(value), type(value).__name__)
