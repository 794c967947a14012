"""The audit entry: its record, the one definition of its bytes, and the names it is signed under.

Each entry (time, actor, action, message id, detail) is a leaf of an RFC 6962
Merkle tree (see `tlog`): its leaf hash is SHA-256(0x00 ‖ the RFC 8785
canonical JSON of `{"action", "actor", "detail", "message", "time"}`), and its
position in the log is its index in the tree (index = seq - 1). The node
signs checkpoints of the tree in the C2SP `tlog-checkpoint` format under the
origin `cpn/audit/<ID>`; its peers cosign them (C2SP `tlog-cosignature`)
under `cpn/witness/<ID>`. A checkpoint carries the time it was signed as its one
extension line, `time <ms since the epoch>` (`dated_checkpoint`,
`checkpoint_time`), so that its date is signed with its root: never earlier than
the last entry it covers. (Cosignatures cover the whole note, extension line
included; a witness vouches for the tree, its own cosignature time for when.)

Pure code. `entry_bytes` is the definition; `stored_entry` (what the store
writes) and `RowHasher` (the verifier's hot path, which formats the bytes from
the stored columns instead of parsing them) fill the same template, and
tests/test_auditlog.py proves byte equality with the definition for arbitrary
entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from network.core.errors import CpnError, MalformedError
from network.core.records import (
    MAX_SAFE_INTEGER,
    Fields,
    Json,
    canonical,
    canonical_trusted,
    parse_canonical,
)
from network.core.tlog import Checkpoint, leaf_hash

__all__ = [
    "AuditEntry",
    "HashedRows",
    "RestoredEntry",
    "RowHasher",
    "checkpoint_origin",
    "checkpoint_time",
    "dated_checkpoint",
    "entry_bytes",
    "entry_leaf",
    "parse_restored_entry",
    "stored_detail",
    "stored_entry",
    "stored_entry_bytes",
    "stored_leaf",
    "witness_name",
]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry as a use case writes it; the store gives it its time and seq."""

    actor: str  # a user name, or "node:FRA" for the node itself or a peer
    action: str
    message_id: str | None = None
    detail: dict[str, Json] | None = None


def checkpoint_origin(node: str) -> str:
    """The origin line (and signing key name) of `node`'s audit checkpoints."""
    return f"cpn/audit/{node}"


def witness_name(node: str) -> str:
    """The key name under which `node` cosigns its peers' checkpoints."""
    return f"cpn/witness/{node}"


_TIME_LINE: Final = "time "


def dated_checkpoint(origin: str, size: int, root: bytes, time: int) -> Checkpoint:
    """A checkpoint of `size` entries with `root`, dated `time` (ms) by its extension line.

    Raises ValueError for a time outside 0..2^53-1 (our bug: the store's clock gives it).
    """
    if not 0 <= time <= MAX_SAFE_INTEGER:
        raise ValueError(f"checkpoint time {time} outside 0..2^53-1")
    return Checkpoint(origin, size, root, (f"{_TIME_LINE}{time}",))


def checkpoint_time(checkpoint: Checkpoint) -> int | None:
    """The signed time (ms) of a checkpoint, None for one signed before checkpoints were
    dated (no extension line). Raises MalformedError for extension lines that are not
    one `time <decimal ms>` line."""
    lines = checkpoint.extensions
    if not lines:
        return None
    digits = lines[0].removeprefix(_TIME_LINE)
    if (
        len(lines) != 1
        or digits == lines[0]
        or not (digits.isascii() and digits.isdigit())
        or (len(digits) > 1 and digits[0] == "0")
        or int(digits) > MAX_SAFE_INTEGER
    ):
        raise MalformedError(f"checkpoint extension lines {list(lines)[:2]!r}: expected time <ms>")
    return int(digits)


# RFC 8785 §3.2.3 orders the members by name: action, actor, detail, message, time. Each
# member's value is its own canonical JSON, so the object's is this template filled in.
_ENTRY: Final = b'{"action":%b,"actor":%b,"detail":%b,"message":%b,"time":%b}'
# The same with `time` as "%d": the decimal digits canonical JSON gives an integer within
# ±(2^53-1), which is all the verifier's query lets through; and as a leaf's input.
_ENTRY_WITH_DIGITS: Final = _ENTRY.replace(b'"time":%b', b'"time":%d')
_LEAF_INPUT: Final = b"\x00" + _ENTRY_WITH_DIGITS


def entry_bytes(
    time: int, actor: str, action: str, message_id: str | None, detail: Mapping[str, Json]
) -> bytes:
    """The canonical JSON of one entry: what its leaf hash covers.

    Raises MalformedError for a value canonical JSON cannot hold (an integer
    beyond ±(2^53-1), a float, a lone surrogate), TypeError for a detail that
    is not a mapping.
    """
    return _entry_json(time, actor, action, message_id, canonical(dict(detail)))


def _entry_json(
    time: int, actor: str, action: str, message_id: str | None, detail_json: bytes
) -> bytes:
    # Strings and an integer in range need none of the walk `canonical` makes for a
    # container: six entries a message at a sender, 0.37 against 0.93 µs each. Anything
    # else, or a lone surrogate (orjson's TypeError), takes `canonical`, which names it.
    if (
        type(action) is str
        and type(actor) is str
        and (message_id is None or type(message_id) is str)
        and type(time) is int
        and -MAX_SAFE_INTEGER <= time <= MAX_SAFE_INTEGER
    ):
        try:
            return _ENTRY_WITH_DIGITS % (
                canonical_trusted(action),
                canonical_trusted(actor),
                detail_json,
                canonical_trusted(message_id),
                time,
            )
        except TypeError:
            pass
    return _ENTRY % (
        canonical(action),
        canonical(actor),
        detail_json,
        canonical(message_id),
        canonical(time),
    )


def entry_leaf(
    time: int, actor: str, action: str, message_id: str | None, detail: Mapping[str, Json]
) -> bytes:
    """The RFC 6962 leaf hash of one entry; raises what `entry_bytes` raises."""
    return leaf_hash(entry_bytes(time, actor, action, message_id, detail))


def stored_entry(
    time: int, actor: str, action: str, message_id: str | None, detail: Mapping[str, Json]
) -> tuple[bytes, bytes]:
    """(the detail's canonical JSON, the entry's leaf hash): what the store keeps of an
    entry, the detail encoded once for both. Raises what `entry_bytes` raises."""
    detail_json = stored_detail(detail)
    return detail_json, stored_leaf(time, actor, action, message_id, detail_json)


def stored_detail(detail: Mapping[str, Json]) -> bytes:
    """The detail's canonical JSON, as the store keeps it. Raises MalformedError for a value
    canonical JSON cannot hold, TypeError for a detail that is not a mapping."""
    return canonical(dict(detail))


def stored_entry_bytes(
    time: int, actor: str, action: str, message_id: str | None, detail_json: bytes
) -> bytes:
    """The canonical bytes of an entry whose detail is already `stored_detail`'s bytes."""
    return _entry_json(time, actor, action, message_id, detail_json)


def stored_leaf(
    time: int, actor: str, action: str, message_id: str | None, detail_json: bytes
) -> bytes:
    """The leaf hash of an entry whose detail is already `stored_detail`'s bytes: the store
    encodes the detail when the entry is written and hashes it when its time is known (at
    commit). Raises MalformedError for a time canonical JSON cannot hold."""
    return leaf_hash(_entry_json(time, actor, action, message_id, detail_json))


# -- the verifier's hot path -----------------------------------------------------------

_NO_TIME: Final = -(1 << 63)  # before every time a row can hold (the walk passes ±(2^53-1))


@dataclass(slots=True)
class HashedRows:
    """Rows hashed by `RowHasher`: their leaves, and where they were not as expected.

    `gaps` holds (index, first missing seq, seq found) where seqs jump inside the
    rows; `mismatches` holds (index, seq, stored leaf) where the recomputed leaf
    (b"" if it could not be) is not the stored one; `backwards` holds (seq, time,
    the time before it) where an entry's time is earlier than the one before it
    among these rows. `first` and `last` are the first and last seq (None for no
    rows); `first_time` is (seq, time) of the first row with a time, `last_time`
    the last time (rows whose time is None are passed over).
    """

    leaves: list[bytes]
    first: int | None = None
    last: int | None = None
    gaps: list[tuple[int, int, int]] = field(default_factory=list)
    mismatches: list[tuple[int, int, object]] = field(default_factory=list)
    backwards: list[tuple[int, int, int]] = field(default_factory=list)
    first_time: tuple[int, int] | None = None
    last_time: int | None = None


class RowHasher:
    """Audit rows to leaf hashes, formatting the leaf input from the stored columns (the
    detail is stored canonical) instead of parsing and re-encoding it.

    A row is (seq, time, actor, action, message_id, detail, stored leaf): `time`
    an integer within ±(2^53-1) or None, `detail` the stored canonical JSON as
    bytes. A row whose columns are not of those types gets the leaf b"" and is
    listed as a mismatch, for the caller to hash by the definition (`entry_leaf`).
    Times are compared as they pass: the store never lets them go backwards.
    """

    def __init__(self) -> None:
        self._encoded: dict[str, bytes] = {}  # actors and actions repeat: encoded once
        self._last_id: tuple[object, bytes] = (None, b"null")  # as do message ids, in a row

    def hash(self, batch: Sequence[Sequence[Any]], out: HashedRows | None = None) -> HashedRows:
        """Hash `batch` into `out` (a new `HashedRows` if None), after the rows it holds."""
        out = HashedRows([]) if out is None else out
        leaves = out.leaves
        append = leaves.append
        encoded = self._encoded
        digest = hashlib.sha256
        template = _LEAF_INPUT
        last_id, last_quoted = self._last_id
        expected = None if out.last is None else out.last + 1
        if out.first_time is None:
            out.first_time = next(((r[0], r[1]) for r in batch if r[1] is not None), None)
        previous = _NO_TIME if out.last_time is None else out.last_time
        for row in batch:
            seq, time, actor, action, message_id, detail, stored = row
            if seq != expected and expected is not None:
                out.gaps.append((len(leaves), expected, seq))
            expected = seq + 1
            if time is not None:
                if time < previous:
                    out.backwards.append((seq, time, previous))
                previous = time
            try:
                a = encoded.get(action) or self._encode(action)
                b = encoded.get(actor) or self._encode(actor)
                if message_id == last_id and type(message_id) is str:
                    m = last_quoted
                elif message_id is None:
                    m = b"null"
                else:
                    m = self._encode(message_id, cache=False)
                    last_id, last_quoted = message_id, m
                leaf = digest(template % (a, b, detail, m, time)).digest()
            except (TypeError, ValueError, CpnError):
                leaf = b""
            if leaf != stored:
                out.mismatches.append((len(leaves), seq, stored))
            append(leaf)
        self._last_id = (last_id, last_quoted)
        if previous != _NO_TIME:
            out.last_time = previous
        if batch:
            out.first = batch[0][0] if out.first is None else out.first
            out.last = batch[-1][0]
        return out

    def _encode(self, text: object, *, cache: bool = True) -> bytes:
        """A string column as canonical JSON (RFC 8785 §3.2.2.2); TypeError for another type."""
        if type(text) is not str:
            raise TypeError("not a string")
        value = canonical_trusted(text)
        if cache and len(self._encoded) < 4096:
            self._encoded[text] = value
        return value


# -- the entry in which a node explains that its log was restored from a backup -----------


@dataclass(frozen=True, slots=True)
class RestoredEntry:
    """What a `restored` entry says: the log was put back to its first `backup_size`
    entries; what came after, up to the newest checkpoint a witness held, was lost."""

    backup_size: int
    time: int


def parse_restored_entry(raw: bytes, node: str) -> RestoredEntry:
    """The `restored` entry of `node`'s log, from its canonical bytes; MalformedError when
    it is not one (another action, another actor, no backup size)."""
    f = Fields(parse_canonical(raw, limit=16 * 1024, what="restored entry"), "entry")
    action = f.str("action", max_len=64)
    actor = f.str("actor", max_len=64)
    detail = Fields(f.any("detail"), "entry.detail")
    f.any("message")
    time = f.int("time")
    f.done()
    if action != "restored" or actor != f"node:{node}":
        raise MalformedError(f"entry: {actor} {action}, not node:{node} restored")
    return RestoredEntry(detail.int("backup_size", low=0), time)
