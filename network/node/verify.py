"""`verify_store`: a node's store file checked against itself, the roster and its witnesses.

Reads the file read-only, on one snapshot (`network.node.auditfile`), and
recomputes every leaf from its columns (`network.core.auditlog`) and the tree
from those leaves (`network.core.tlog`): see `verify_store` for the list of
checks. The report (`VerifyReport`) lists the problems first-bad-entry first
and counts them all; on a large log the leaves are hashed by worker
processes, a chunk at a time, while this one builds the tree.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import contextlib
import hashlib
import heapq
import itertools
import json
import multiprocessing
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from network.core.auditlog import (
    HashedRows,
    RowHasher,
    checkpoint_origin,
    checkpoint_time,
    entry_leaf,
    witness_name,
)
from network.core.crypto import VerifyKey, sha256
from network.core.envelope import verify_envelope, verify_receipt
from network.core.errors import (
    BadSignatureError,
    CpnError,
    PeerError,
    RosterError,
    UnknownSignerError,
)
from network.core.records import (
    MAX_SAFE_INTEGER,
    Json,
    NodeId,
    b64decode,
    canonical,
    parse_json,
)
from network.core.roster import MAX_ROSTER_BYTES, NodeStatus, Roster, RosterEntry, load_roster
from network.core.tlog import (
    HASH_SIZE,
    Checkpoint,
    MerkleLog,
    TreeBuilder,
    open_checkpoint,
    verify_cosignature,
)
from network.node.auditfile import (
    BATCH,
    Witnessed,
    has_table,
    messages_with_envelopes,
    snapshot,
)
from network.node.clock import rfc3339

__all__ = [
    "MAX_PROBLEMS",
    "PARALLEL_CHUNK",
    "Assurance",
    "Problem",
    "ProblemKind",
    "VerifyReport",
    "load_roster_file",
    "verify_store",
]

MAX_PROBLEMS: Final = 1000
"""The most problems a report lists (it counts them all)."""

PARALLEL_CHUNK: Final = 65_536
"""Rows a worker process hashes at a time; a log of fewer is hashed without workers."""
_MAX_REORDER_SCAN: Final = 100_000  # mismatched leaves looked for among all stored ones


# -- verification: the report ---------------------------------------------------------


class ProblemKind(StrEnum):
    """What `verify_store` found wrong (the `kind` of a problem in its JSON)."""

    EDITED = "edited"  # an entry's columns no longer hash to its leaf
    DELETED = "deleted"  # a seq missing from 1..n, or a signed checkpoint row gone
    REORDERED = "reordered"  # an entry holds the content whose leaf another seq stores
    CHANGED = "changed"  # the tree's root at a checkpoint's size is not the signed one
    TRUNCATED = "truncated"  # the log is shorter than what was signed or written
    BAD_SIGNATURE = "bad_signature"  # a checkpoint, cosignature, envelope or receipt
    MALFORMED = "malformed"  # a stored envelope or receipt that does not parse
    MISMATCH = "mismatch"  # a stored column disagrees with the signed bytes it came from
    INCONSISTENT = "inconsistent"  # a witness holds a checkpoint this log contradicts
    BACKWARDS = "backwards"  # an entry (or checkpoint) dated before the entry it follows


class Assurance(StrEnum):
    """What stands behind a report that found nothing wrong (`assurance` in its JSON)."""

    # A witness's own copy of this log (its store, a note, or its answer over the link)
    # was checked: a rewrite up to its size, or a truncation before it, would have shown.
    WITNESSED = "witnessed"
    # Only what the store holds was checked: whoever holds the database and the node key
    # can rewrite what no witness cosigned and delete the end of the log undetected.
    SELF_SIGNED = "self-signed only"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    message: str
    seq: int | None = None  # the (first) audit entry concerned
    message_id: str | None = None  # the message whose envelope or receipt is concerned
    order: tuple[int, int] = field(default=(0, 0), compare=False, repr=False)

    def to_json(self) -> dict[str, Json]:
        return {
            "kind": str(self.kind),
            "seq": self.seq,
            "message_id": self.message_id,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `verify_store` checked, and what it found. `ok` when no problem."""

    node: str
    entries: int
    checkpoints: int
    cosignatures: int
    envelopes: int
    receipts: int
    witnessed: int  # checkpoints of this log held by witnesses, checked
    problems: tuple[Problem, ...]
    problem_count: int  # all problems found (`problems` lists at most MAX_PROBLEMS)
    warnings: tuple[str, ...]
    latest_checkpoint: int  # the largest signed tree size (0: none)
    assurance: Assurance = Assurance.SELF_SIGNED
    witnessed_size: int = 0  # the largest size a witness vouches for (held or cosigned)
    unproven: str | None = None  # what could not be checked, said plainly (None: nothing)
    # Messages whose contents a retention rule deleted, by rule: each with its `deleted`
    # entry in the log naming the digest its receipts name.
    deleted: tuple[tuple[str, int], ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing was found wrong (what stands behind it: `assurance`, `unproven`)."""
        return self.problem_count == 0

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_json(self) -> dict[str, Json]:
        first = self.first
        return {
            "ok": self.ok,
            "node": self.node,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "cosignatures": self.cosignatures,
            "envelopes": self.envelopes,
            "receipts": self.receipts,
            "witnessed": self.witnessed,
            "first_problem": None if first is None else first.to_json(),
            "problems": [p.to_json() for p in self.problems],
            "problem_count": self.problem_count,
            "warnings": list(self.warnings),
            "assurance": str(self.assurance),
            "witnessed_size": self.witnessed_size,
            "unproven": self.unproven,
            "deleted": {rule: count for rule, count in self.deleted},
        }


# -- verification: keys over roster versions -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    node: str
    key: VerifyKey
    version: int  # the newest roster version known to hold it
    current: bool  # held for an active node by the current roster


class _Keys:
    """Signing keys by (node, kid) over every roster version known, the current one first."""

    def __init__(self, rosters: Sequence[Roster]) -> None:
        ordered = sorted(rosters, key=lambda r: r.version, reverse=True)
        self.current = ordered[0]
        self._by_kid: dict[tuple[str, str], _Key] = {}
        self._by_node: dict[str, list[_Key]] = {}
        self._rosters: dict[tuple[str, str], Roster] = {}
        for roster in ordered:
            for node_id, entry in roster.entries.items():
                key = entry.card.signing_key
                if (node_id, key.kid) in self._by_kid:
                    continue
                current = roster is self.current and entry.active
                found = _Key(node_id, key, roster.version, current)
                self._by_kid[node_id, key.kid] = found
                self._by_node.setdefault(node_id, []).append(found)
                # A roster holding only this node's card, active: verify_envelope and
                # verify_receipt check a key the current roster no longer vouches for.
                self._rosters[node_id, key.kid] = Roster(
                    roster.version,
                    roster.issued,
                    roster.valid_until,
                    roster.keeper_kid,
                    {NodeId(node_id): RosterEntry(entry.card, NodeStatus.ACTIVE)},
                    roster.raw,
                    roster.digest,
                )

    def find(self, node: str, kid: str) -> _Key | None:
        return self._by_kid.get((node, kid))

    def of(self, node: str) -> list[_Key]:
        return self._by_node.get(node, [])

    def roster_for(self, found: _Key) -> Roster:
        return self.current if found.current else self._rosters[found.node, found.key.kid]


def _stored_rosters(db: sqlite3.Connection, keeper: VerifyKey) -> list[Roster]:
    """The roster versions the node adopted, each checked against the keeper's signature.

    Validity periods are not checked: an audit looks at the past.
    """
    found = []
    for (raw,) in db.execute("SELECT raw FROM rosters ORDER BY version"):
        try:
            found.append(roster_as_issued(bytes(raw), keeper))
        except (CpnError, TypeError):
            continue  # not one the keeper signed: it vouches for nothing
    return found


def roster_as_issued(data: bytes, keeper: VerifyKey) -> Roster:
    """A roster checked as of its own issue time (the keeper's signature decides)."""
    value = parse_json(data, limit=MAX_ROSTER_BYTES, what="roster")
    try:
        issued = int(value["roster"]["issued"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RosterError("roster.roster.issued: missing") from exc
    return load_roster(data, keeper=keeper, now=issued)


def load_roster_file(path: Path, keeper: VerifyKey) -> Roster:
    """A roster file checked against the keeper's signature, whatever its validity period.

    Raises RosterError saying what is wrong.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RosterError(f"{path}: cannot read roster: {exc.strerror}") from exc
    try:
        return roster_as_issued(data, keeper)
    except RosterError as exc:
        raise RosterError(f"{path}: {exc}") from exc
    except PeerError as exc:
        raise RosterError(f"{path}: not a roster: {exc}") from exc


# -- verification: the log walk (pure: rows in, problems and roots out) --------------------


@dataclass(slots=True)
class _Signed:
    """A stored checkpoint as read: its row, and its checkpoint if the signature holds."""

    size: int
    time: int  # the time signed in its note (the stored one for a note that has none)
    checkpoint: Checkpoint | None


class _Walk:
    """Recompute the leaves of audit rows in seq order, grow the tree, and meet the targets.

    Targets are tree sizes where the root matters: each stored checkpoint (its
    signed root must be the tree's) and each witnessed size (recorded).
    """

    def __init__(
        self,
        checkpoints: Iterator[_Signed],
        witnessed_sizes: Iterable[int],
        problems: _Problems,
        refetch: Callable[[int], Sequence[Any]],
    ) -> None:
        self.builder = TreeBuilder()
        self._refetch = refetch  # an audit row by seq, its columns as stored
        self.expected = 1  # the next seq
        self.problems = problems
        self.mismatched: dict[int, tuple[bytes, object]] = {}  # seq -> (recomputed, stored)
        # Tree positions (1-based, in order) where an entry has a problem of its own: a root
        # that fails after one of them is its consequence, not news.
        self._problem_positions: list[int] = []
        self.roots: dict[int, bytes] = {}
        self._wanted = sorted(set(witnessed_sizes), reverse=True)
        self._checkpoints = checkpoints
        self._next_checkpoint: _Signed | None = next(checkpoints, None)
        self.checked_checkpoints = 0
        self.matched_size = 0  # the largest checkpoint size whose root held
        self.latest: _Signed | None = None  # the largest checkpoint seen
        self.beyond: list[_Signed] = []  # checkpoints larger than the log
        self._changed = False  # a root failed since the last one that held
        self._hasher = RowHasher()
        self._slow_paths = 0
        self._last_time: int | None = None  # the time of the last entry taken that had one
        # Entries before this seq were timed by a version that took the time before the
        # write lock (the store's `audit_times`): their order in time is not checked.
        self.monotonic_from = 1
        self.unordered = 0  # such entries found out of order, reported as a warning

    def rows(self, batch: Sequence[Sequence[Any]]) -> None:
        """Take rows in seq order (as _WALK_QUERY selects them)."""
        self.take(self._hasher.hash(batch))

    def take(self, hashed: HashedRows, chunk: MerkleLog | None = None) -> None:
        """Take rows hashed by a `RowHasher` (here or in a worker), in seq order; `chunk`: the
        tree of an intact worker's chunk, which then holds the leaves instead of `hashed`."""
        self._times(hashed)
        base = self.builder.size
        if chunk is not None and hashed.first == base + 1 == self.expected:
            # an intact chunk at its place in the tree: its subtrees are the tree's
            assert hashed.last is not None
            self.expected = hashed.last + 1
            self._grow(
                hashed.last - base,
                lambda start, count: self.builder.extend_from(chunk, start, count),
            )
            return
        leaves = hashed.leaves if chunk is None else chunk.leaves()
        if hashed.first is not None and hashed.first != self.expected:
            self._gap(self.expected, hashed.first, base + 1)
        for index, first, seq in hashed.gaps:
            self._gap(first, seq, base + index + 1)
        for index, seq, stored in hashed.mismatches:
            leaves[index] = self._mismatch(seq, base + index + 1, leaves[index], stored)
        if hashed.last is not None:
            self.expected = hashed.last + 1
        self._grow(
            len(leaves), lambda start, count: self.builder.extend(leaves[start : start + count])
        )

    def _times(self, hashed: HashedRows) -> None:
        """Entry times never go backwards in seq order (the store times entries at commit)."""
        backwards = hashed.backwards
        if hashed.first_time is not None and self._last_time is not None:
            seq, time = hashed.first_time
            if time < self._last_time:
                backwards = [(seq, time, self._last_time), *backwards]
        for seq, time, before in backwards:
            if seq < self.monotonic_from:
                self.unordered += 1
                continue
            self.problems.add(
                ProblemKind.BACKWARDS,
                f"entry {seq} goes back in time: dated {_when(time)}, before the entry ahead"
                f" of it ({_when(before)})",
                seq=seq,
                order=(seq, 0),
            )
        if hashed.last_time is not None:
            self._last_time = hashed.last_time

    def _gap(self, first: int, seq: int, position: int) -> None:
        last = seq - 1
        what = f"entry {first}" if first == last else f"entries {first} to {last}"
        self.problems.add(
            ProblemKind.DELETED,
            f"{what} deleted: seq jumps from {first - 1} to {seq}",
            seq=first,
            order=(first, 0),
        )
        self._problem_positions.append(position)

    def _mismatch(self, seq: int, position: int, fast: bytes, stored: object) -> bytes:
        """The leaf a row whose fast-path hash differs from its stored one really has.

        The row is read again and hashed by the definition (`entry_leaf`), to say
        what is wrong with it; past MAX_PROBLEMS such rows, a fast-path leaf is
        taken as it is (a log rewritten wholesale is not read twice).
        """
        if fast and self._slow_paths >= MAX_PROBLEMS:
            self._problem_positions.append(position)
            self._edited(seq, fast, stored)
            return fast
        self._slow_paths += 1
        row = self._refetch(seq)
        _, time, actor, action, message_id, detail, stored = row
        problem: str | None = None
        try:
            text = bytes(detail)
            parsed = parse_json(text, limit=len(text) + 1, what="detail")
            if not isinstance(parsed, dict):
                problem = "its detail is not a JSON object"
            elif canonical(parsed) != text:
                problem = "its detail is not canonical JSON"
            leaf = entry_leaf(time, actor, action, message_id, parsed)
        except (CpnError, TypeError, ValueError) as exc:
            problem = f"it cannot be hashed ({exc})"
            leaf = hashlib.sha256(b"\x00" + repr(tuple(row)).encode()).digest()
        if leaf == stored and problem is None:
            return leaf  # columns of unexpected types that the definition still hashes
        if problem is None and (not isinstance(stored, bytes) or len(stored) != HASH_SIZE):
            problem = "its stored leaf hash is missing or not 32 bytes"
        self._problem_positions.append(position)
        if problem is not None:
            self.problems.add(
                ProblemKind.EDITED, f"entry {seq} edited: {problem}", seq=seq, order=(seq, 0)
            )
        else:
            self._edited(seq, leaf, stored)
        return leaf

    def _edited(self, seq: int, leaf: bytes, stored: object) -> None:
        """An entry whose columns hash to `leaf`, not to its `stored` one: named in `classify`."""
        if len(self.mismatched) < _MAX_REORDER_SCAN:
            self.mismatched[seq] = (leaf, stored)
        else:
            self.problems.add(
                ProblemKind.EDITED,
                f"entry {seq} edited: its columns do not hash to its stored leaf",
                seq=seq,
                order=(seq, 0),
            )

    def _grow(self, count: int, extend: Callable[[int, int], None]) -> None:
        """Grow the tree by `count` leaves, `extend(start, count)` adding some, stopping at
        each target size to meet it."""
        position = 0
        while True:
            self._meet_targets()
            if position == count:
                return
            target = self._next_target()
            take = count - position
            if target is not None:
                take = min(take, target - self.builder.size)
            extend(position, take)
            position += take

    def _next_target(self) -> int | None:
        sizes = [s for s in (self._wanted[-1] if self._wanted else None,) if s is not None]
        if self._next_checkpoint is not None:
            sizes.append(self._next_checkpoint.size)
        return min(sizes) if sizes else None

    def _meet_targets(self) -> None:
        size = self.builder.size
        while self._wanted and self._wanted[-1] <= size:
            if self._wanted.pop() == size:
                self.roots[size] = self.builder.root()
        while self._next_checkpoint is not None and self._next_checkpoint.size <= size:
            self._check(self._next_checkpoint)
            self._next_checkpoint = next(self._checkpoints, None)

    def _check(self, signed: _Signed) -> None:
        self.checked_checkpoints += 1
        self.latest = signed
        if signed.checkpoint is None:
            return  # its signature failed: reported, and its root vouches for nothing
        if signed.size != self.builder.size:
            return  # pragma: no cover - targets are met in order
        if self.builder.root() == signed.checkpoint.root:
            self.matched_size = signed.size
            self._changed = False
            return
        positions = self._problem_positions
        explained = bisect.bisect_right(positions, signed.size) > bisect.bisect_right(
            positions, self.matched_size
        )
        if not self._changed and not explained:
            low, high = self.matched_size, signed.size
            self.problems.add(
                ProblemKind.CHANGED,
                f"entries between checkpoint sizes {low} and {high} changed: the tree of"
                f" {high} entries does not have the root signed at {_when(signed.time)}",
                seq=low + 1,
                order=(low + 1, 1),
            )
        self._changed = True

    def finish(self) -> None:
        """Meet the targets beyond the log: they are what it no longer holds."""
        self._meet_targets()
        while self._next_checkpoint is not None:
            self.checked_checkpoints += 1
            self.beyond.append(self._next_checkpoint)
            self.latest = self._next_checkpoint
            self._next_checkpoint = next(self._checkpoints, None)

    def classify(self, stored_leaves: Callable[[], Iterator[tuple[int, object]]]) -> None:
        """Name each mismatched entry: reordered if its content is another seq's, else edited."""
        if not self.mismatched:
            return
        by_stored = {stored: seq for seq, (_, stored) in self.mismatched.items()}
        partner = {
            seq: by_stored[leaf]
            for seq, (leaf, _) in self.mismatched.items()
            if by_stored.get(leaf, seq) != seq
        }
        unmatched = {leaf: seq for seq, (leaf, _) in self.mismatched.items() if seq not in partner}
        if unmatched:  # content moved from a row that is itself intact: one more pass
            for other, stored in stored_leaves():
                moved = unmatched.get(stored) if isinstance(stored, bytes) else None
                if moved is not None and moved != other:
                    partner[moved] = other
        named: set[int] = set()
        for seq in sorted(self.mismatched):
            if seq in named:
                continue
            found = partner.get(seq)
            if found is None:
                self.problems.add(
                    ProblemKind.EDITED,
                    f"entry {seq} edited: its columns do not hash to its stored leaf",
                    seq=seq,
                    order=(seq, 0),
                )
                continue
            named.add(seq)
            other = found
            if partner.get(other) == seq:
                named.add(other)
            low, high = sorted((seq, other))
            self.problems.add(
                ProblemKind.REORDERED,
                f"entries {low} and {high} reordered: entry {seq} holds the content"
                f" that entry {other}'s leaf was hashed from",
                seq=seq,
                order=(seq, 0),
            )


def _when(ms: object) -> str:
    return (rfc3339(ms) if isinstance(ms, int) else None) or f"time {ms!r}"


class _Problems:
    """The problems found, keeping the MAX_PROBLEMS that come first (and counting them all)."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[int, int], int, Problem]] = []  # max-heap by order
        self.count = 0

    def add(
        self,
        kind: ProblemKind,
        message: str,
        *,
        seq: int | None = None,
        message_id: str | None = None,
        order: tuple[int, int],
    ) -> None:
        self.count += 1
        key = (-order[0], -order[1])  # ties keep the order they were found in
        item = (key, self.count, Problem(kind, message, seq, message_id, order))
        if len(self._heap) < MAX_PROBLEMS:
            heapq.heappush(self._heap, item)
        elif item[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, item)

    def first(self) -> tuple[Problem, ...]:
        return tuple(p for _, _, p in sorted(self._heap, key=lambda i: (i[2].order, i[1])))


# -- verification: the store -------------------------------------------------------

_AFTER_LOG: Final = 1 << 62  # orders problems outside the log after every entry's


def _monotonic_from(db: sqlite3.Connection) -> int:
    """The seq from which entry times must never go back (1: all of them; a store from
    before schema 7, not yet migrated: none of them)."""
    if not has_table(db, "audit_times"):
        return MAX_SAFE_INTEGER
    row = db.execute("SELECT monotonic_from FROM audit_times").fetchone()
    return int(row[0]) if row else 1


def verify_store(
    path: Path,
    *,
    roster: Roster,
    node_id: str,
    witnessed: Iterable[Witnessed] = (),
    keeper: VerifyKey | None = None,
    older_rosters: Iterable[Roster] = (),
    workers: int = 1,
    chunk: int = PARALLEL_CHUNK,
) -> VerifyReport:
    """Verify a node's store file against itself, the roster and what witnesses hold.

    Checks, on one read-only snapshot:
    - the audit rows: seq 1..n with no gap (a gap: "entry N deleted"), each
      row's leaf recomputed from its columns and compared with the stored one
      ("edited", or "reordered" when it is the leaf another seq stores); the
      tree is built from the recomputed leaves;
    - every stored checkpoint: signed by `node_id`'s key under origin
      cpn/audit/<ID>, its size and root columns those of its note, its root
      the tree's at its size ("entries between checkpoint sizes a and b
      changed"); a log shorter than a checkpoint or than the entries the store
      ever numbered is "truncated";
    - every cosignature, against the witness's roster key and the note at its
      size;
    - every stored envelope (outer signature, by its sender) and receipt
      (signature, by its signer), and that receipts name the digest of the
      envelope stored; a key that the current roster no longer holds is
      checked with the roster version that held it, and reported as a warning;
    - each `witnessed` checkpoint (a peer's copy of this node's checkpoint):
      signed by this node, no larger than the log, and with the tree's root at
      its size ("inconsistent" otherwise: the log was rolled back or rewritten);
    - the checkpoints of other nodes this node holds as their witness.

    `keeper` (the pinned register keeper key) lets the roster versions held in
    the store vouch for keys rotated out since; `older_rosters` (verified by the
    caller) do the same. A signature by a key that no roster known holds is
    not checked, and said so in a warning: it is not taken as forged. Problems come first-bad-entry
    first. With `workers` > 1, a log of more than `chunk` entries has its
    leaves hashed by that many processes, `chunk` rows at a time. Raises
    AuditReadError for a file that is not a readable store.
    """
    problems = _Problems()
    warnings: list[str] = []
    origin = checkpoint_origin(node_id)
    witnessed = list(witnessed)
    with snapshot(path) as db:
        rosters = [roster, *older_rosters]
        if keeper is not None and has_table(db, "rosters"):
            rosters.extend(_stored_rosters(db, keeper))
        keys = _Keys(rosters)
        own_keys = keys.of(node_id)
        if not own_keys:
            raise RosterError(f"{node_id} is in no roster known: its signatures cannot be checked")
        walk = _Walk(
            _signed_checkpoints(db, origin, own_keys, problems, warnings),
            _witnessed_sizes(witnessed, origin, own_keys),
            problems,
            lambda seq: _refetch(db, seq),
        )
        walk.monotonic_from = _monotonic_from(db)
        _walk_audit(db, walk, path, workers, chunk)
        walk.finish()
        if walk.unordered:
            warnings.append(
                f"{walk.unordered} of the entries before {walk.monotonic_from}, written by an"
                " earlier version that timed entries before taking the write lock, are dated a"
                " moment before the entry ahead of them: their order in time is not checked"
            )
        entries = walk.builder.size
        walk.classify(lambda: _stored_leaves(db))
        _check_length(db, walk, problems)
        signed_size = walk.latest.size if walk.latest is not None else 0
        if signed_size < entries:
            warnings.append(
                f"entries {signed_size + 1} to {entries} are not yet covered by a signed"
                " checkpoint (a running node signs one within a minute, and one on stopping):"
                " they can be checked only against themselves"
            )
        witnessed_count, held = _check_witnessed(
            witnessed, origin, own_keys, walk, problems, warnings
        )
        cosignatures, cosigned = _check_cosignatures(db, keys, walk, problems, warnings)
        signers: Counter[tuple[str, str, int, bool]] = Counter()
        deleted: Counter[str] = Counter()
        envelopes = _check_envelopes(db, keys, problems, signers, deleted)
        _check_messages_kept(db, problems)
        receipts = _check_receipts(db, keys, problems, signers)
        _check_held(db, keys, problems, warnings)
    warnings.extend(_signer_warnings(signers, keys))
    assurance = Assurance.WITNESSED if held is not None else Assurance.SELF_SIGNED
    vouched = max(held or 0, cosigned)
    return VerifyReport(
        node=node_id,
        entries=entries,
        checkpoints=walk.checked_checkpoints,
        cosignatures=cosignatures,
        envelopes=envelopes,
        receipts=receipts,
        witnessed=witnessed_count,
        problems=problems.first(),
        problem_count=problems.count,
        warnings=tuple(warnings),
        latest_checkpoint=signed_size,
        assurance=assurance,
        witnessed_size=vouched,
        unproven=_unproven(assurance, vouched, entries),
        deleted=tuple(sorted(deleted.items())),
    )


def _unproven(assurance: Assurance, vouched: int, entries: int) -> str | None:
    """What a report could not check, in words an auditor acts on."""
    after = f"entries after size {vouched}" if vouched else "every entry"
    if assurance is Assurance.SELF_SIGNED:
        return (
            f"{after} (the newest checkpoint a witness cosigned) could have been rewritten,"
            " and the end of the log deleted with its checkpoints, by whoever holds the"
            " database and the node key, and nothing here would show it: no witness's own"
            " copy was checked (cpn audit verify --witnessed PEER_STORE, or GET"
            " /api/audit/verify, which asks the linked peers)"
        )
    if vouched < entries:
        return (
            f"{after} (the newest checkpoint a witness holds or cosigned) are proven by the"
            " node's own signature only, until a witness cosigns a checkpoint covering them"
        )
    return None


# What the walk reads: the columns as stored, but `time` only when canonical JSON can hold it
# (an integer within ±(2^53-1)), so that the hot path's "%d" never meets anything else.
_WALK_QUERY: Final = (
    "SELECT seq, CASE WHEN typeof(time) = 'integer' AND time BETWEEN -9007199254740991"
    " AND 9007199254740991 THEN time END, actor, action, message_id, CAST(detail AS BLOB), leaf"
    " FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq"
)
# The same rows with the text columns as bytes, for the few a text decode refuses.
_RAW_QUERY: Final = (
    "SELECT seq, time, CAST(actor AS BLOB), CAST(action AS BLOB), CAST(message_id AS BLOB),"
    " CAST(detail AS BLOB), leaf, typeof(actor), typeof(action), typeof(message_id)"
    " FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
)


def _walk_audit(db: sqlite3.Connection, walk: _Walk, path: Path, workers: int, chunk: int) -> None:
    """Feed every audit row to the walk, in seq order.

    On a large log the leaves are hashed by `workers` processes, a chunk of
    seqs each, while this one builds the tree. A worker reads the file on its
    own connection, outside this snapshot: the rows it reads are bounded by the
    snapshot's last seq, and the log is append-only, so they are the snapshot's
    (a row that differs is read again here, on the snapshot, before it is named).
    """
    last = db.execute("SELECT max(seq) FROM audit").fetchone()[0]
    if last is None:
        return
    chunk = 1 << (max(chunk, 2).bit_length() - 1)  # aligned chunks are subtrees of the tree
    chunks = [(lo, min(lo + chunk, last)) for lo in range(0, last, chunk)]
    if workers < 2 or len(chunks) < 2:
        _walk_rows(db, walk, last)
        return
    uri = f"{path.resolve().as_uri()}?mode=ro"
    # A fork starts at once and shares the parent's pages; in a process with other threads
    # (one may hold a lock the child needs) the workers start from scratch instead.
    single = threading.active_count() == 1
    context = multiprocessing.get_context("fork" if single else "spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: collections.deque[tuple[int, concurrent.futures.Future[_Chunk | None]]]
        pending = collections.deque()
        queue = iter(chunks)
        for _ in range(workers * 2):  # a bounded window: results are taken in seq order
            for lo, hi in itertools.islice(queue, 1):
                pending.append((hi, pool.submit(_hash_chunk, uri, lo, hi)))
        while pending:
            hi, future = pending.popleft()
            done = future.result()
            for lo_next, hi_next in itertools.islice(queue, 1):
                pending.append((hi_next, pool.submit(_hash_chunk, uri, lo_next, hi_next)))
            if done is None:  # text that is not UTF-8: this chunk the slow way, here
                _walk_rows(db, walk, hi)
            else:
                walk.take(done.rows, done.tree)


@dataclass(slots=True)
class _Chunk:
    """A worker's chunk of rows: hashed, and if intact, their tree (which then holds the
    leaves: `rows.leaves` is left empty, so that they cross between processes once)."""

    rows: HashedRows
    tree: MerkleLog | None


def _hash_chunk(uri: str, after: int, upto: int) -> _Chunk | None:
    """In a worker: the leaves of the audit rows after..upto, or None if one is not UTF-8."""
    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        hasher = RowHasher()
        hashed = HashedRows([])
        cursor = db.execute(_WALK_QUERY, (after, upto))
        while batch := cursor.fetchmany(BATCH):
            hasher.hash(batch, hashed)
        if hashed.gaps or hashed.mismatches:  # the walk rehashes or renumbers some leaves
            return _Chunk(hashed, None)
        tree = MerkleLog()
        tree.extend(hashed.leaves)
        hashed.leaves = []
        return _Chunk(hashed, tree)
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()


def _walk_rows(db: sqlite3.Connection, walk: _Walk, upto: int) -> None:
    """Feed the audit rows up to seq `upto` to the walk, a batch at a time."""
    while True:
        cursor = db.execute(_WALK_QUERY, (walk.expected - 1, upto))
        try:
            while batch := cursor.fetchmany(BATCH):
                walk.rows(batch)
            return
        except sqlite3.OperationalError:  # text that is not UTF-8: read those rows as bytes
            query = (walk.expected - 1, upto, 256)
            raw = [_typed(row) for row in db.execute(_RAW_QUERY, query)]
            for row in raw:  # as _WALK_QUERY has it: a time canonical JSON cannot hold is None
                if type(row[1]) is not int or abs(row[1]) > MAX_SAFE_INTEGER:
                    row[1] = None
            walk.rows(raw)


def _refetch(db: sqlite3.Connection, seq: int) -> Sequence[Any]:
    """An audit row as stored (text columns that are not UTF-8 come as bytes)."""
    return _typed(db.execute(_RAW_QUERY, (seq - 1, seq, 1)).fetchone())


def _typed(row: Sequence[Any]) -> list[Any]:
    """A _RAW_QUERY row with each text column decoded, where it decodes, and numbers as such."""
    values = list(row[:7])
    for column, kind in zip((2, 3, 4), row[7:], strict=True):
        if kind == "text":
            with contextlib.suppress(UnicodeDecodeError):
                values[column] = values[column].decode("utf-8")
        elif kind == "null":
            values[column] = None
        elif kind in ("integer", "real"):
            values[column] = (int if kind == "integer" else float)(values[column].decode())
    return values


def _stored_leaves(db: sqlite3.Connection) -> Iterator[tuple[int, object]]:
    cursor = db.execute("SELECT seq, leaf FROM audit ORDER BY seq")
    while batch := cursor.fetchmany(BATCH * 4):
        yield from batch


def _open_own(note: str, origin: str, own_keys: Sequence[_Key]) -> tuple[Checkpoint, _Key]:
    """The checkpoint in a note signed by one of this node's keys, and which.

    Raises BadSignatureError, MalformedError or OversizeError; UnknownSignerError
    when no key of this node signed it.
    """
    unknown = "no roster known holds a key for it"
    for found in own_keys:
        try:
            return open_checkpoint(note, origin, {origin: found.key}), found
        except UnknownSignerError as exc:
            unknown = str(exc)
    raise UnknownSignerError(f"not signed by any key the rosters hold for {origin} ({unknown})")


_ROSTER_HINT: Final = "(give the roster version that held the key: cpn audit verify --roster)"


def _signed_checkpoints(
    db: sqlite3.Connection,
    origin: str,
    own_keys: Sequence[_Key],
    problems: _Problems,
    warnings: list[str],
) -> Iterator[_Signed]:
    """The stored checkpoints in size order, each with its note's signature checked, and its
    signed time: the stored one, never before the entry at its size nor the checkpoint
    before it."""
    old_keys: Counter[int] = Counter()
    unknown = 0
    undated = 0
    last: tuple[int, int] | None = None  # (size, signed time) of the last dated checkpoint
    cursor = db.execute(
        "SELECT c.size, c.root, c.time, c.note, a.time FROM checkpoints c"
        " LEFT JOIN audit a ON a.seq = c.size ORDER BY c.size"
    )
    while batch := cursor.fetchmany(256):
        for size, root, time, note, entry_time in batch:
            checkpoint: Checkpoint | None = None
            try:
                checkpoint, found = _open_own(str(note), origin, own_keys)
                signed = checkpoint_time(checkpoint)
            except UnknownSignerError:
                unknown += 1
            except CpnError as exc:
                problems.add(
                    ProblemKind.BAD_SIGNATURE,
                    f"the checkpoint at size {size} (stored as of {_when(time)}) does not"
                    f" verify: {exc}",
                    order=(size, 2),
                )
                checkpoint = None
            else:
                if not found.current:
                    old_keys[found.version] += 1
                where = f"the checkpoint at size {size}"
                if signed is None:
                    undated += 1
                else:
                    where = f"{where} (signed {_when(signed)})"
                    _check_dated(problems, where, size, signed, time, entry_time, last)
                    last = (size, signed)
                    time = signed
                if checkpoint.size != size or checkpoint.root != root:
                    problems.add(
                        ProblemKind.MISMATCH,
                        f"{where}: its stored size and root are not those of its signed note"
                        f" (size {checkpoint.size})",
                        order=(min(size, checkpoint.size), 2),
                    )
                    checkpoint = None if checkpoint.size != size else checkpoint
            yield _Signed(size, time, checkpoint)
    if undated:
        warnings.append(
            f"{undated} checkpoint(s) signed before checkpoints carried their time: their"
            " stored time is not signed, and says nothing"
        )
    for version, count in sorted(old_keys.items()):
        warnings.append(
            f"{count} checkpoint(s) signed with the key of {origin} that roster version"
            f" {version} held, not the current one (the key was rotated)"
        )
    if unknown:
        warnings.append(
            f"{unknown} checkpoint(s) signed with a key of {origin} that no roster known holds:"
            f" not checked, so they protect nothing here {_ROSTER_HINT}"
        )


def _check_dated(
    problems: _Problems,
    where: str,
    size: int,
    signed: int,
    stored: object,
    entry_time: object,
    last: tuple[int, int] | None,
) -> None:
    """A checkpoint's signed time: the stored one, after the entry it ends at and the
    checkpoint before it (the store dates both under the write lock)."""
    if stored != signed:
        problems.add(
            ProblemKind.MISMATCH,
            f"{where}: its stored time {stored!r} is not its signed time {signed}",
            order=(size, 2),
        )
    if type(entry_time) is int and entry_time > signed:
        problems.add(
            ProblemKind.BACKWARDS,
            f"{where} is dated before entry {size}, the last it covers ({_when(entry_time)})",
            seq=size,
            order=(size, 2),
        )
    if last is not None and last[1] > signed:
        problems.add(
            ProblemKind.BACKWARDS,
            f"{where} is dated before the checkpoint at size {last[0]} ({_when(last[1])})",
            order=(size, 2),
        )


def _witnessed_sizes(
    witnessed: Sequence[Witnessed], origin: str, own_keys: Sequence[_Key]
) -> list[int]:
    sizes = []
    for item in witnessed:
        with contextlib.suppress(CpnError):
            sizes.append(_open_own(item.note, origin, own_keys)[0].size)
    return sizes


def _check_length(db: sqlite3.Connection, walk: _Walk, problems: _Problems) -> None:
    """Truncation: checkpoints beyond the log, or seqs numbered beyond it."""
    entries = walk.builder.size
    if walk.beyond:
        largest = walk.beyond[-1]
        problems.add(
            ProblemKind.TRUNCATED,
            f"truncated: the log has {entries} entries, the checkpoint signed at"
            f" {_when(largest.time)} covers {largest.size}",
            seq=entries + 1,
            order=(entries + 1, 0),
        )
        return
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit'").fetchone()
    numbered = row[0] if row else None
    last_seq = walk.expected - 1
    if isinstance(numbered, int) and numbered > last_seq:
        problems.add(
            ProblemKind.TRUNCATED,
            f"truncated: the log ends at entry {last_seq}, but the store numbered entries up to"
            f" {numbered} (entries {last_seq + 1} to {numbered} were deleted)",
            seq=last_seq + 1,
            order=(entries + 1, 0),
        )


def _check_witnessed(
    witnessed: Sequence[Witnessed],
    origin: str,
    own_keys: Sequence[_Key],
    walk: _Walk,
    problems: _Problems,
    warnings: list[str],
) -> tuple[int, int | None]:
    """(how many were given, the largest size among those that hold: None if none held)."""
    entries = walk.builder.size
    held: int | None = None
    for item in witnessed:
        try:
            checkpoint, _ = _open_own(item.note, origin, own_keys)
        except UnknownSignerError:
            warnings.append(
                f"the checkpoint witness {item.source} holds is signed with a key of {origin}"
                f" that no roster known holds: not checked {_ROSTER_HINT}"
            )
            continue
        except CpnError as exc:
            problems.add(
                ProblemKind.BAD_SIGNATURE,
                f"the checkpoint witness {item.source} holds is not this log's: {exc}",
                order=(_AFTER_LOG, 0),
            )
            continue
        size = checkpoint.size
        if size > entries:
            problems.add(
                ProblemKind.INCONSISTENT,
                f"rolled back: witness {item.source} holds size {size} signed by {origin},"
                f" the log has {entries} entries",
                seq=entries + 1,
                order=(entries + 1, 0),
            )
        elif walk.roots.get(size) != checkpoint.root:
            problems.add(
                ProblemKind.INCONSISTENT,
                f"rolled back/rewritten: witness {item.source} holds size {size} with another"
                " root than this log's",
                seq=None,
                order=(size, 1),
            )
        else:
            held = max(held or 0, size)
    return len(witnessed), held


def _check_cosignatures(
    db: sqlite3.Connection, keys: _Keys, walk: _Walk, problems: _Problems, warnings: list[str]
) -> tuple[int, int]:
    """(how many cosignatures, the largest size one that verifies covers within the log)."""
    count = 0
    cosigned = 0
    old: Counter[tuple[str, int]] = Counter()
    unknown: Counter[str] = Counter()
    entries = walk.builder.size
    cursor = db.execute(
        "SELECT c.size, c.witness, c.time, c.line, k.note FROM cosignatures c"
        " LEFT JOIN checkpoints k ON k.size = c.size ORDER BY c.size, c.witness"
    )
    while batch := cursor.fetchmany(256):
        for size, witness, time, line, note in batch:
            count += 1
            where = f"the cosignature by {witness} of size {size}"
            if note is None:
                if size > entries:
                    problems.add(
                        ProblemKind.TRUNCATED,
                        f"truncated: the log has {entries} entries, {witness} cosigned a"
                        f" checkpoint of size {size} at"
                        f" {_when(time * 1000 if isinstance(time, int) else time)}",
                        seq=entries + 1,
                        order=(entries + 1, 0),
                    )
                else:
                    problems.add(
                        ProblemKind.DELETED,
                        f"the checkpoint at size {size} is deleted; {witness}'s cosignature"
                        " of it remains",
                        order=(size, 2),
                    )
                continue
            verified = _cosigned_by(str(note) + str(line), witness, keys)
            if isinstance(verified, UnknownSignerError):
                unknown[witness] += 1
                continue
            if isinstance(verified, CpnError):
                problems.add(
                    ProblemKind.BAD_SIGNATURE,
                    f"{where} does not verify: {verified}",
                    order=(size, 3),
                )
                continue
            when, found = verified
            if size <= walk.matched_size:  # its root held: the witness vouches for it
                cosigned = max(cosigned, size)
            if when != time:
                problems.add(
                    ProblemKind.MISMATCH,
                    f"{where}: its stored time {time} is not its signed time {when}",
                    order=(size, 3),
                )
            if not found.current:
                old[witness, found.version] += 1
    for (witness, version), n in sorted(old.items()):
        warnings.append(
            f"{n} cosignature(s) by {witness} with the key roster version {version} held,"
            " not the current one (the key was rotated)"
        )
    for witness, n in sorted(unknown.items()):
        warnings.append(
            f"{n} cosignature(s) by {witness} with a key that no roster known holds:"
            f" not checked {_ROSTER_HINT}"
        )
    return count, cosigned


def _cosigned_by(note: str, witness: str, keys: _Keys) -> tuple[int, _Key] | CpnError:
    """(time, key) of the witness's cosignature on `note`, or the error saying why not.

    UnknownSignerError: by no key of the witness that a roster known holds.
    """
    error: CpnError = UnknownSignerError(f"{witness} holds no key in any roster known")
    for found in keys.of(witness):
        try:
            return verify_cosignature(note, witness_name(witness), found.key), found
        except UnknownSignerError as exc:
            error = exc
        except CpnError as exc:
            return exc
    return error


def _header_hint(raw: bytes, section: str) -> tuple[str, str, int] | None:
    """(signer, kid, time) from untrusted JSON: only to pick the key and clock to check with."""
    try:
        value = json.loads(raw)[section]
        signer, kid = value["from"], value["kid"]
        time = value["created" if section == "header" else "received"]
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(signer, str) and isinstance(kid, str) and type(time) is int:
        return signer, kid, time
    return None


def _check_envelopes(
    db: sqlite3.Connection,
    keys: _Keys,
    problems: _Problems,
    signers: Counter[tuple[str, str, int, bool]],
    deleted: Counter[str],
) -> int:
    """Each stored envelope's signature and digest; an empty one (its contents deleted under
    a retention rule) must have its `deleted` entry in the log, naming the stored digest."""
    count = 0
    deletions = _deletions(db)
    source = messages_with_envelopes(db)
    cursor = db.execute(
        f"SELECT messages.rowid, id, envelope, digest FROM {source} ORDER BY messages.rowid"  # noqa: S608
    )
    while batch := cursor.fetchmany(64):
        for rowid, message_id, envelope, digest in batch:
            order = (_AFTER_LOG, rowid)
            if envelope is None:
                problems.add(
                    ProblemKind.MISMATCH,
                    f"message {message_id}: the store holds no envelope for it",
                    message_id=message_id,
                    order=order,
                )
                continue
            raw = envelope if isinstance(envelope, bytes) else str(envelope).encode()
            if not raw:
                recorded = deletions.get(message_id)
                if recorded is None:
                    problems.add(
                        ProblemKind.MISMATCH,
                        f"message {message_id}: its envelope is gone, and the log records no"
                        " deletion of it",
                        message_id=message_id,
                        order=order,
                    )
                elif recorded[1] != digest:
                    problems.add(
                        ProblemKind.MISMATCH,
                        f"message {message_id}: the log's deletion of it names another digest"
                        " than the one stored",
                        message_id=message_id,
                        order=order,
                    )
                else:
                    deleted[recorded[0]] += 1
                continue
            count += 1
            hint = _header_hint(raw, "header")
            roster = _roster_for(keys, hint, signers)
            checked = None
            try:
                if roster is not None:
                    checked = verify_envelope(raw, roster=roster, now=hint[2] if hint else 0)
            except CpnError as exc:
                _refused(problems, exc, f"the envelope of message {message_id}", message_id, order)
            if sha256(raw) != digest:
                problems.add(
                    ProblemKind.MISMATCH,
                    f"message {message_id}: the stored digest is not the envelope's",
                    message_id=message_id,
                    order=order,
                )
            if checked is not None and checked.header.id != message_id:
                problems.add(
                    ProblemKind.MISMATCH,
                    f"message {message_id} holds the envelope of message {checked.header.id}",
                    message_id=message_id,
                    order=order,
                )
    return count


def _check_messages_kept(db: sqlite3.Connection, problems: _Problems) -> None:
    """No message's row is ever deleted (retention empties its envelope): an envelope kept
    for a message the store does not list, or a message the log records stored (an entry
    written with its row) that the store does not list, was taken out of it."""
    if has_table(db, "envelopes"):
        orphans = db.execute(
            "SELECT rowid, message_id FROM envelopes"
            " WHERE message_id NOT IN (SELECT id FROM messages) ORDER BY rowid"
        )
        for rowid, message_id in orphans:
            problems.add(
                ProblemKind.MISMATCH,
                f"message {message_id}: the store holds its envelope but no such message",
                message_id=message_id,
                order=(_AFTER_LOG, _AFTER_LOG + rowid),  # after the messages' own problems
            )
    lost = db.execute(
        "SELECT message_id, MIN(seq) FROM audit"
        " WHERE action IN ('queued', 'received', 'relay_accepted', 'recovered')"
        " AND message_id NOT IN (SELECT id FROM messages) GROUP BY message_id ORDER BY 2"
    )
    for message_id, seq in lost:
        problems.add(
            ProblemKind.MISMATCH,
            f"message {message_id}: the log records it stored (entry {seq}), and the store"
            " does not list it",
            seq=seq,
            message_id=message_id,
            order=(_AFTER_LOG + 3, seq),
        )


def _deletions(db: sqlite3.Connection) -> dict[str, tuple[str, bytes | None]]:
    """The log's `deleted` entries: message id -> (rule, the digest it names)."""
    found: dict[str, tuple[str, bytes | None]] = {}
    for message_id, detail in db.execute(
        "SELECT message_id, detail FROM audit WHERE action = 'deleted' ORDER BY seq"
    ):
        try:
            value = json.loads(detail)
            found[str(message_id)] = (str(value["rule"]), b64decode(value["digest"]))
        except (ValueError, KeyError, TypeError, CpnError):
            found[str(message_id)] = ("(unreadable entry)", None)
    return found


def _refused(
    problems: _Problems, exc: CpnError, what: str, message_id: str, order: tuple[int, int]
) -> None:
    """A stored envelope or receipt that fails its check: a bad signature, or damage."""
    bad = isinstance(exc, BadSignatureError)
    problems.add(
        ProblemKind.BAD_SIGNATURE if bad else ProblemKind.MALFORMED,
        f"{what} {'does not verify' if bad else 'is damaged'}: {exc}",
        message_id=message_id,
        order=order,
    )


def _roster_for(
    keys: _Keys,
    hint: tuple[str, str, int] | None,
    signers: Counter[tuple[str, str, int, bool]],
) -> Roster | None:
    """The roster to check a signature by `hint`'s signer with; None: no roster holds the key.

    Signatures by keys the current roster does not hold for an active node are
    counted in `signers` for the warnings.
    """
    if hint is None:
        return keys.current  # the parse itself will say what is wrong
    signer, kid, _ = hint
    found = keys.find(signer, kid)
    if found is None:
        signers[signer, kid, 0, False] += 1
        return None
    if not found.current:
        signers[signer, kid, found.version, True] += 1
    return keys.roster_for(found)


def _check_receipts(
    db: sqlite3.Connection,
    keys: _Keys,
    problems: _Problems,
    signers: Counter[tuple[str, str, int, bool]],
) -> int:
    count = 0
    cursor = db.execute(
        "SELECT r.rowid, r.id, r.message_id, r.outcome, r.raw, m.digest FROM receipts r"
        " LEFT JOIN messages m ON m.id = r.message_id ORDER BY r.rowid"
    )
    while batch := cursor.fetchmany(256):
        for rowid, receipt_id, message_id, outcome, raw, digest in batch:
            count += 1
            order = (_AFTER_LOG + 1, rowid)
            data = bytes(raw) if isinstance(raw, bytes) else str(raw).encode()
            hint = _header_hint(data, "receipt")
            roster = _roster_for(keys, hint, signers)
            if roster is None:
                continue
            try:
                receipt = verify_receipt(data, roster=roster, now=hint[2] if hint else 0)
            except CpnError as exc:
                what = f"receipt {receipt_id} for message {message_id}"
                _refused(problems, exc, what, message_id, order)
                continue
            if receipt.message_id != message_id:
                problems.add(
                    ProblemKind.MISMATCH,
                    f"receipt {receipt_id} is stored for message {message_id}"
                    f" but signed for {receipt.message_id}",
                    message_id=message_id,
                    order=order,
                )
            elif digest is not None and outcome == "accepted" and receipt.digest != digest:
                problems.add(
                    ProblemKind.MISMATCH,
                    f"message {message_id}: receipt {receipt_id} signed by {receipt.sender}"
                    " names other envelope bytes than those stored",
                    message_id=message_id,
                    order=order,
                )
    return count


def _check_held(
    db: sqlite3.Connection, keys: _Keys, problems: _Problems, warnings: list[str]
) -> None:
    """The checkpoints of other nodes this node keeps as their witness, and their proofs."""
    if has_table(db, "witnessed"):
        for node, size, root, note in db.execute(
            "SELECT node, size, root, note FROM witnessed ORDER BY node"
        ):
            origin = checkpoint_origin(node)
            try:
                checkpoint, _ = _open_own(str(note), origin, keys.of(node))
            except UnknownSignerError:
                warnings.append(
                    f"the checkpoint of {node} held as its witness is signed with a key that no"
                    f" roster known holds: not checked {_ROSTER_HINT}"
                )
                continue
            except CpnError as exc:
                problems.add(
                    ProblemKind.BAD_SIGNATURE,
                    f"the checkpoint of {node} held as its witness does not verify: {exc}",
                    order=(_AFTER_LOG + 2, 0),
                )
                continue
            if (checkpoint.size, checkpoint.root) != (size, root):
                problems.add(
                    ProblemKind.MISMATCH,
                    f"the checkpoint of {node} held as its witness: its stored size and root"
                    " are not those of its note",
                    order=(_AFTER_LOG + 2, 0),
                )
    if has_table(db, "inconsistencies"):
        for node, problem, detected in db.execute(
            "SELECT node, problem, detected FROM inconsistencies ORDER BY id"
        ):
            warnings.append(
                f"this store holds proof that {node}'s audit log is inconsistent"
                f" (detected {_when(detected)}): {problem}"
            )


def _signer_warnings(signers: Counter[tuple[str, str, int, bool]], keys: _Keys) -> list[str]:
    current = keys.current.version
    out = []
    for (signer, kid, version, checked), n in sorted(signers.items()):
        if checked:
            out.append(
                f"{n} envelope(s) or receipt(s) signed by {signer} with key {kid}, which roster"
                f" version {version} holds but the current roster (version {current}) does not"
                " hold for an active node: checked with version"
                f" {version}"
            )
        else:
            out.append(
                f"{n} envelope(s) or receipt(s) signed by {signer} with key {kid}, which no"
                f" roster known holds: signature not checked {_ROSTER_HINT}"
            )
    return out
