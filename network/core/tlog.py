"""Transparency-log math and formats for the tamper-evident audit log.

Pure code: bytes and text in; hashes, text and decisions out. No I/O, no clock
(cosignature times are passed in).

- Merkle trees as RFC 9162 §2.1 defines them (the RFC 6962 hashing): leaf hash
  SHA-256(0x00 ‖ data), node hash SHA-256(0x01 ‖ left ‖ right), the empty
  tree's root SHA-256(""). `root_hash` builds a tree level by level;
  `TreeBuilder` keeps only the O(log n) right edge, grown a block of leaves at
  a time, so a verifier streaming a million entries can check each stored
  checkpoint's root as it passes it.
- Inclusion and consistency proofs: generated from the leaf hashes as
  §2.1.3.1 and §2.1.4.1 define them (O(n)), verified with the §2.1.3.2 and
  §2.1.4.2 algorithms step by step.
- `MerkleLog`, the node's own log in memory: a hash pyramid (the leaf hashes,
  then the roots of the complete aligned subtrees of 2, 4, 8... leaves, each
  level one bytearray, about 64 bytes a leaf) that appends in amortized O(1)
  and gives the root, a leaf, an inclusion or a consistency proof for any
  size it has had in O(log n), equal to what the sequence functions give.
- Checkpoints (c2sp.org/tlog-checkpoint), signed notes with Ed25519
  signatures (c2sp.org/signed-note, signature type 0x01), verifier keys
  ("vkeys", `<name>+<hex key id>+<base64(type ‖ public key)>`), and timestamped
  Ed25519 cosignatures (c2sp.org/tlog-cosignature, cosignature/v1, type 0x04).

Verifying returns None (or what was verified) or raises: InclusionProofError,
ConsistencyProofError; MalformedError or OversizeError for text that is not a
well-formed note, checkpoint or vkey; UnknownSignerError when none of the
trusted keys signed; BadSignatureError when a trusted key's signature does not
verify. A caller's own mistake (an index outside the tree, a bad name to sign
with) is a ValueError.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import islice, takewhile
from typing import NamedTuple

from network.core.crypto import SigningKey, VerifyKey
from network.core.errors import (
    BadSignatureError,
    ConsistencyProofError,
    InclusionProofError,
    MalformedError,
    OversizeError,
    UnknownSignerError,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_CHECKPOINT_BYTES",
    "MAX_NOTE_BYTES",
    "MAX_NOTE_SIGNATURES",
    "MAX_TREE_SIZE",
    "Checkpoint",
    "MerkleLog",
    "SignatureType",
    "TreeBuilder",
    "consistency_proof",
    "cosign",
    "cosignature_message",
    "encode_vkey",
    "inclusion_proof",
    "key_hash",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "parse_vkey",
    "root_hash",
    "sign_note",
    "verify_consistency",
    "verify_cosignature",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# Tree sizes and cosignature timestamps are u64 on the wire; C2SP caps
# timestamps at 2^63 - 1 and Go's checkpoint parser caps sizes the same way.
_MAX_INT63 = 2**63 - 1
MAX_TREE_SIZE = _MAX_INT63
# Signed-note: verifiers SHOULD bound the signatures, MUST accept at least 16,
# and post-quantum ones approach 5 kB each. Go's note.Open stops at 100.
MAX_NOTE_SIGNATURES = 100
MAX_NOTE_BYTES = 256 * 1024
MAX_CHECKPOINT_BYTES = 8 * 1024

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

_ED25519_SIGNATURE_SIZE = 64
_ED25519_PUBLIC_SIZE = 32
_KEY_ID_SIZE = 4
_TIMESTAMP_SIZE = 8

_SIGNATURE_PREFIX = "— "  # em dash U+2014, space
_COSIGNATURE_HEADER = "cosignature/v1\n"

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")  # canonical: no sign, no leading zero
_HEX_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # C0 controls other than newline


class SignatureType(IntEnum):
    """Signature type bytes from c2sp.org/signed-note that this module speaks."""

    ED25519 = 0x01  # a log's signature over the note text
    COSIGNATURE_V1 = 0x04  # a witness's timestamped cosignature (c2sp.org/tlog-cosignature)


# -- Merkle tree hashing (RFC 9162 §2.1.1) -------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 ‖ d)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of these leaf hashes; SHA-256("") for none.

    Built level by level: pairing neighbours and carrying an odd last node up
    unchanged gives the same tree as RFC 9162's split at the largest power of
    two below n, with one list comprehension per level instead of a Python
    call per node. Raises ValueError if a leaf hash is not 32 bytes.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    if any(len(h) != HASH_SIZE for h in leaf_hashes):
        raise ValueError(f"leaf hashes are {HASH_SIZE} bytes")
    return _levels_root(leaf_hashes)


def _levels_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """`root_hash` of one or more leaf hashes already known to be 32 bytes each."""
    level = leaf_hashes
    while len(level) > 1:
        pairs = iter(level)  # zip(it, it) takes neighbours two by two and drops an odd last one
        parents = [
            _sha256(_NODE_PREFIX + a + b).digest() for a, b in zip(pairs, pairs, strict=False)
        ]
        if len(level) & 1:
            parents.append(level[-1])
        level = parents
    return level[0]


class TreeBuilder:
    """An append-only Merkle tree that keeps only its right edge.

    A tree of n leaves is a row of perfect subtrees, one per set bit of n,
    largest first; `_edge` holds their roots. Leaves are added in aligned
    blocks of 2^k (the largest that the size so far and the leaves at hand
    allow), each block's root hashed level by level in bulk (or read from a
    `MerkleLog` that already holds it: `extend_from`), then merged into the
    row like a binary carry. `root()` folds the row from the right, so the
    root at any size costs O(log n) and the memory is O(log n): a verifier
    streaming a million entries checks each stored checkpoint's root as it
    passes it.
    """

    __slots__ = ("_edge", "_size")

    def __init__(self) -> None:
        self._edge: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """How many leaves have been appended."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash (32 bytes; raises ValueError otherwise)."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hashes are {HASH_SIZE} bytes")
        self._add(leaf_hash, 0)

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """`append` each leaf hash in turn, a block of them at a time.

        A leaf hash that is not 32 bytes raises ValueError; the leaves before
        it stay appended, as they would one `append` at a time.
        """
        leaves = leaf_hashes if isinstance(leaf_hashes, Sequence) else list(leaf_hashes)
        bad = set(map(len, leaves)) - {HASH_SIZE}
        if bad:
            leaves = list(takewhile(lambda leaf: len(leaf) == HASH_SIZE, leaves))
        self._blocks(
            len(leaves), lambda start, height: _levels_root(leaves[start : start + (1 << height)])
        )
        if bad:
            raise ValueError(f"leaf hashes are {HASH_SIZE} bytes")

    def extend_from(self, log: MerkleLog, start: int, count: int) -> None:
        """Append leaves `start` to `start + count` of `log`, reading the roots of its
        complete subtrees instead of hashing them again.

        `log`'s leaf 0 must sit at position `self.size - start` of this tree, a
        multiple of the smallest power of two not below `log.size` (so that
        `log`'s aligned subtrees are this tree's). Raises ValueError otherwise,
        or if the leaves are not all in `log`.
        """
        base = self._size - start
        span = 1 << (log.size - 1).bit_length() if log.size else 1
        if start < 0 or count < 0 or start + count > log.size or base < 0 or base % span:
            raise ValueError(
                f"leaves {start}..{start + count} of a log of {log.size} cannot follow"
                f" a tree of {self._size}"
            )
        self._blocks(count, lambda offset, height: log._read(height, (start + offset) >> height))

    def _blocks(self, count: int, block_root: Callable[[int, int], bytes]) -> None:
        """Add `count` leaves as aligned perfect blocks, `block_root(offset, height)` of each."""
        position = 0
        while position < count:
            size = self._size
            aligned = (size & -size).bit_length() - 1 if size else 62
            height = min(aligned, (count - position).bit_length() - 1)
            self._add(block_root(position, height), height)
            position += 1 << height

    def _add(self, node: bytes, height: int) -> None:
        """Put the root of a perfect subtree of 2^height leaves after the tree, whose size is
        a multiple of 2^height: merge it with each equal neighbour, like a binary carry."""
        edge = self._edge
        carry = self._size >> height
        while carry & 1:  # each trailing 1 bit is a perfect subtree of node's size
            node = _sha256(_NODE_PREFIX + edge.pop() + node).digest()
            carry >>= 1
        edge.append(node)
        self._size += 1 << height

    def root(self) -> bytes:
        """The root hash of the tree as it stands (SHA-256("") when empty)."""
        edge = self._edge
        if not edge:
            return EMPTY_ROOT
        node = edge[-1]
        for left in reversed(edge[:-1]):
            node = _sha256(_NODE_PREFIX + left + node).digest()
        return node


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


# -- Proofs (RFC 9162 §2.1.3, §2.1.4) ------------------------------------------


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, tree_size: int) -> list[bytes]:
    """PATH(index, D[tree_size]) from the first `tree_size` leaf hashes (§2.1.3.1).

    Hashes are listed from the leaf's sibling up to the root's child. O(n).
    Raises ValueError unless 0 <= index < tree_size <= len(leaf_hashes).
    """
    if not 0 <= index < tree_size <= len(leaf_hashes):
        raise ValueError(f"no leaf {index} in a tree of {tree_size} (of {len(leaf_hashes)})")
    path: list[bytes] = []
    start, end = 0, tree_size
    while end - start > 1:  # PATH(m, D[n]) for n > 1, walked from the top
        mid = start + _split(end - start)
        if index < mid:
            path.append(root_hash(leaf_hashes[mid:end]))
            end = mid
        else:
            path.append(root_hash(leaf_hashes[start:mid]))
            start = mid
    path.reverse()  # the RFC lists the deepest sibling first
    return path


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) from the first `new_size` leaf hashes (§2.1.4.1).

    Empty when old_size is 0 or equals new_size: there is nothing to prove.
    O(n). Raises ValueError unless 0 <= old_size <= new_size <= len(leaf_hashes).
    """
    if not 0 <= old_size <= new_size <= len(leaf_hashes):
        raise ValueError(f"no proof from {old_size} to {new_size} (of {len(leaf_hashes)})")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    m, start, end = old_size, 0, new_size
    whole_old_tree = True  # the RFC's b: D[m] is the old tree itself, known to the verifier
    while m != end - start:  # SUBPROOF(m, D[start:end], b), walked from the top
        k = _split(end - start)
        if m <= k:
            proof.append(root_hash(leaf_hashes[start + k : end]))
            end = start + k
        else:
            proof.append(root_hash(leaf_hashes[start : start + k]))
            start += k
            m -= k
            whole_old_tree = False
    if not whole_old_tree:
        proof.append(root_hash(leaf_hashes[start:end]))
    proof.reverse()  # the RFC lists the deepest subtree first
    return proof


# -- The log's own tree: a hash pyramid --------------------------------------------

_EXTEND_CHUNK = 1 << 16  # leaves `MerkleLog.extend` takes from its iterable at a time


class MerkleLog:
    """An append-only Merkle tree over leaf hashes that answers for every size it has had.

    Stored as a hash pyramid: level 0 holds the leaf hashes, level k the roots
    of the complete, aligned subtrees of 2^k leaves (entry i of level k is the
    node hash of entries 2i and 2i+1 of level k-1), each level one bytearray
    of 32-byte hashes, so n leaves take about 64n bytes. A pair is hashed as
    soon as it is complete: one node hash per leaf, amortized.

    Every node of the tree of s <= size leaves (RFC 9162 §2.1.1's split at
    the largest power of two below the width) is either such a complete
    subtree, read from the pyramid, or on that tree's right edge: the tree is
    a row of complete subtrees, one per set bit of s, largest first (as in
    `TreeBuilder`), and the ragged nodes are the row's suffixes. A root or a
    proof folds that row once (popcount(s) - 1 node hashes) and reads the
    rest: O(log n) work whatever the size. Roots and proofs equal what
    `root_hash`, `inclusion_proof` and `consistency_proof` give for the same
    leaves. Sizes and indices outside the log raise ValueError naming the
    argument.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels = [bytearray()]  # invariant: level k holds size >> k hashes
        self._size = 0

    @property
    def size(self) -> int:
        """How many leaves have been appended."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash (32 bytes; raises ValueError otherwise); return the new size."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hashes are {HASH_SIZE} bytes")
        self._levels[0] += leaf_hash
        self._size += 1
        self._hash_up()
        return self._size

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """`append` each leaf hash in turn, hashing each level's new pairs in bulk.

        A leaf hash that is not 32 bytes raises ValueError; the leaves before
        it stay appended, as they would one `append` at a time.
        """
        leaves = iter(leaf_hashes)
        while chunk := list(islice(leaves, _EXTEND_CHUNK)):
            bad = set(map(len, chunk)) != {HASH_SIZE}
            if bad:
                chunk = list(takewhile(lambda leaf: len(leaf) == HASH_SIZE, chunk))
            self._levels[0] += b"".join(chunk)
            self._size += len(chunk)
            self._hash_up()
            if bad:
                raise ValueError(f"leaf hashes are {HASH_SIZE} bytes")

    def _hash_up(self) -> None:
        """Hash every complete pair that has no parent yet, from the leaves up."""
        levels = self._levels
        pair = 2 * HASH_SIZE
        for k in range(self._size.bit_length() - 1):
            below = levels[k]
            if k + 1 == len(levels):
                levels.append(bytearray())
            above = levels[k + 1]
            done, pairs = len(above) // HASH_SIZE, len(below) // pair
            if done == pairs:
                return  # no new node here, so none above either
            # Entries 2i and 2i+1 of a level are one 64-byte slice: left ‖ right.
            above += b"".join(
                [
                    _sha256(_NODE_PREFIX + below[i : i + pair]).digest()
                    for i in range(done * pair, pairs * pair, pair)
                ]
            )

    def _read(self, level: int, index: int) -> bytes:
        """Entry `index` of `level`: the root of leaves [index << level, (index + 1) << level)."""
        offset = index * HASH_SIZE
        return bytes(self._levels[level][offset : offset + HASH_SIZE])

    def _right_edge(self, size: int) -> dict[int, bytes]:
        """MTH(D[start:size]) for each start on the right edge of the tree of `size` (> 0) leaves.

        The tree's complete subtrees are taken from the right (the smallest,
        the lowest set bit of size, first) and folded with node_hash, which
        gives every suffix of the row on the way: popcount(size) - 1 hashes.
        """
        edge: dict[int, bytes] = {}
        node = b""
        end = size
        for level in range(size.bit_length()):
            if size >> level & 1:
                start = end - (1 << level)  # size with its bits up to `level` cleared
                subtree = self._read(level, start >> level)
                node = node_hash(subtree, node) if node else subtree
                edge[start] = node
                end = start
        return edge

    def _subtree(self, start: int, end: int, edge: dict[int, bytes]) -> bytes:
        """MTH(D[start:end]) for a node [start, end) of the tree whose right edge is `edge`."""
        width = end - start
        if width & (width - 1):  # not a power of two: a ragged node, so on the right edge
            return edge[start]
        level = width.bit_length() - 1
        return self._read(level, start >> level)  # nodes of width 2^k start at multiples of it

    def _check_size(self, size: int | None, name: str) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise ValueError(f"{name} {size} is outside the log's sizes 0..{self._size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH(D[size]): the root of the first `size` leaves (default all), SHA-256("") for none.

        Raises ValueError unless 0 <= size <= self.size.
        """
        size = self._check_size(size, "size")
        return self._right_edge(size)[0] if size else EMPTY_ROOT

    def leaf(self, index: int) -> bytes:
        """Leaf hash `index`. Raises ValueError unless 0 <= index < self.size."""
        if not 0 <= index < self._size:
            raise ValueError(f"index {index} is outside the log's leaves 0..{self._size - 1}")
        return self._read(0, index)

    def leaves(self) -> list[bytes]:
        """Every leaf hash, in order."""
        level = bytes(self._levels[0])
        return [level[i : i + HASH_SIZE] for i in range(0, len(level), HASH_SIZE)]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) (§2.1.3.1), as the module's `inclusion_proof` lists it.

        `size` defaults to the whole log. Raises ValueError unless
        0 <= size <= self.size and 0 <= index < size.
        """
        size = self._check_size(size, "size")
        if not 0 <= index < size:
            raise ValueError(f"index {index} is outside the tree of size {size}")
        edge = self._right_edge(size)
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:  # the same walk as inclusion_proof, reading instead of hashing
            mid = start + _split(end - start)
            if index < mid:
                path.append(self._subtree(mid, end, edge))
                end = mid
            else:
                path.append(self._subtree(start, mid, edge))
                start = mid
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[new_size]) (§2.1.4.1), as the module's `consistency_proof` lists it.

        `new_size` defaults to the whole log; the proof is empty when old_size
        is 0 or new_size. Raises ValueError unless
        0 <= old_size <= new_size <= self.size.
        """
        new_size = self._check_size(new_size, "new_size")
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old_size {old_size} is outside 0..{new_size} (new_size)")
        if old_size in (0, new_size):
            return []
        edge = self._right_edge(new_size)
        proof: list[bytes] = []
        m, start, end = old_size, 0, new_size
        whole_old_tree = True
        while m != end - start:  # the same walk as consistency_proof, reading instead of hashing
            k = _split(end - start)
            if m <= k:
                proof.append(self._subtree(start + k, end, edge))
                end = start + k
            else:
                proof.append(self._subtree(start, start + k, edge))
                start += k
                m -= k
                whole_old_tree = False
        if not whole_old_tree:
            proof.append(self._subtree(start, end, edge))
        proof.reverse()
        return proof


def _check_hash(
    value: bytes, what: str, error: type[InclusionProofError | ConsistencyProofError]
) -> None:
    if len(value) != HASH_SIZE:
        raise error(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Return None if `proof` shows leaf `index` of the tree with `root` is `leaf_hash`.

    RFC 9162 §2.1.3.2. Raises InclusionProofError otherwise.
    """
    _check_hash(leaf_hash, "leaf hash", InclusionProofError)
    _check_hash(root, "root hash", InclusionProofError)
    for node in proof:
        _check_hash(node, "a proof hash", InclusionProofError)
    # 1. leaf_index must be below tree_size.
    if not 0 <= index < tree_size:
        raise InclusionProofError(f"leaf {index} is outside a tree of {tree_size}")
    # 2. fn = leaf_index, sn = tree_size - 1. 3. r = hash.
    fn, sn = index, tree_size - 1
    r = leaf_hash
    # 4. For each p in the inclusion path:
    for p in proof:
        # a. sn == 0: the path is longer than the tree is deep.
        if sn == 0:
            raise InclusionProofError("inclusion proof is longer than the path to the root")
        # b. LSB(fn) set, or fn == sn: p is a left sibling.
        if fn & 1 or fn == sn:
            r = _sha256(_NODE_PREFIX + p + r).digest()
            # ii. If LSB(fn) is not set (fn is on the right border), shift until it is
            # or fn is 0: levels where the node has no right sibling add no hash.
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(_NODE_PREFIX + r + p).digest()
        # c.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 and r the root.
    if sn != 0:
        raise InclusionProofError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise InclusionProofError(f"leaf {index} is not in the tree of {tree_size} with that root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Return None if `proof` shows the tree (new_size, new_root) extends (old_size, old_root).

    RFC 9162 §2.1.4.2 for 0 < old_size < new_size. The cases the RFC leaves
    out have nothing to prove: equal sizes need equal roots, and an empty old
    tree needs the empty root; either way the proof must be empty.
    Raises ConsistencyProofError otherwise.
    """
    _check_hash(old_root, "old root hash", ConsistencyProofError)
    _check_hash(new_root, "new root hash", ConsistencyProofError)
    for node in proof:
        _check_hash(node, "a proof hash", ConsistencyProofError)
    if not 0 <= old_size <= new_size:
        raise ConsistencyProofError(f"a tree of {new_size} cannot extend one of {old_size}")
    if old_size in (0, new_size):
        if proof:
            raise ConsistencyProofError(f"the proof from {old_size} to {new_size} must be empty")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ConsistencyProofError("an empty tree's root is SHA-256 of nothing")
        if old_size == new_size and old_root != new_root:
            raise ConsistencyProofError(f"two different roots for a tree of {new_size}")
        return
    # 1. An empty path proves nothing.
    if not proof:
        raise ConsistencyProofError(f"empty consistency proof from {old_size} to {new_size}")
    # 2. If first is an exact power of 2, prepend first_hash.
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. Right-shift both while LSB(fn) is set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first hash.
    fr = sr = path[0]
    # 6. For each subsequent c:
    for c in path[1:]:
        # a.
        if sn == 0:
            raise ConsistencyProofError("consistency proof is longer than the trees are deep")
        # b. c is a left sibling of both paths...
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE_PREFIX + c + fr).digest()
            sr = _sha256(_NODE_PREFIX + c + sr).digest()
            while fn and not fn & 1:  # iii., as in verify_inclusion
                fn >>= 1
                sn >>= 1
        else:  # ...or a right sibling that only the new tree has.
            sr = _sha256(_NODE_PREFIX + sr + c).digest()
        # c.
        fn >>= 1
        sn >>= 1
    # 7. fr is the old root, sr the new root, and sn is 0.
    if sn != 0:
        raise ConsistencyProofError("consistency proof is shorter than the trees are deep")
    if fr != old_root:
        raise ConsistencyProofError(f"the proof does not lead to the old root of {old_size}")
    if sr != new_root:
        raise ConsistencyProofError(f"the tree of {new_size} does not extend the one of {old_size}")


# -- Text shared by checkpoints, notes and vkeys ----------------------------------


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Standard base64 with padding, canonical (re-encodes to the same text)."""
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedError(f"{what} is not base64: {exc}") from exc
    if _b64encode(raw) != text:
        raise MalformedError(f"{what} is not canonical base64")
    return raw


def _too_long(text: str, limit: int) -> bool:
    """Over `limit` bytes of UTF-8 (counting characters first spares encoding a huge text)."""
    return len(text) > limit or len(text.encode("utf-8", "replace")) > limit


def _text_problem(text: str) -> str | None:
    """Why signed-note text is unusable: not UTF-8, or a control character other than newline."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text is not valid UTF-8"
    control = _CONTROL.search(text)
    if control:
        return f"control character U+{ord(control.group()):04X} in text"
    return None


# -- Checkpoints (c2sp.org/tlog-checkpoint) --------------------------------------


def _checkpoint_problem(
    origin: str, size: int, root: bytes, extensions: Sequence[str]
) -> str | None:
    if not origin or "\n" in origin:
        return "origin must be one non-empty line"
    if not 0 <= size <= MAX_TREE_SIZE:
        return f"tree size {size} out of range"
    if len(root) != HASH_SIZE:
        return f"root hash is {len(root)} bytes, not {HASH_SIZE}"
    if any(not line or "\n" in line for line in extensions):
        return "extension lines must be non-empty single lines"
    return _text_problem("\n".join((origin, *extensions)))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin line, tree size and root hash, plus opaque extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = _checkpoint_problem(self.origin, self.size, self.root, self.extensions)
        if problem:
            raise ValueError(f"checkpoint: {problem}")

    def to_text(self) -> str:
        """The note text: origin, decimal size, base64 root and extensions, one per line."""
        lines = (self.origin, str(self.size), _b64encode(self.root), *self.extensions)
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """The checkpoint a note text holds, parsed strictly; raises MalformedError or OversizeError."""
    if _too_long(text, MAX_CHECKPOINT_BYTES):
        raise OversizeError(f"checkpoint over {MAX_CHECKPOINT_BYTES} bytes")
    if not text.endswith("\n"):
        raise MalformedError("checkpoint must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedError("checkpoint needs origin, tree size and root hash lines")
    origin, size_text, root_text, *extensions = lines
    if not _DECIMAL.fullmatch(size_text):
        raise MalformedError(f"tree size {size_text[:40]!r} is not a canonical decimal")
    size = int(size_text)
    root = _b64decode(root_text, "root hash")
    problem = _checkpoint_problem(origin, size, root, extensions)
    if problem:
        raise MalformedError(f"checkpoint: {problem}")
    return Checkpoint(origin, size, root, tuple(extensions))


# -- Signed notes (c2sp.org/signed-note) -----------------------------------------


def key_hash(name: str, signature_type: SignatureType, public_raw: bytes) -> bytes:
    """The 4-byte key id: SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]."""
    data = name.encode("utf-8") + b"\n" + bytes([signature_type]) + public_raw
    return _sha256(data).digest()[:_KEY_ID_SIZE]


def _is_key_name(name: str) -> bool:
    """Non-empty, no Unicode spaces, no '+', no control characters."""
    return (
        bool(name)
        and "+" not in name
        and not any(ch.isspace() or ch < " " for ch in name)
        and _text_problem(name) is None
    )


class _SignatureLine(NamedTuple):
    name: str
    key_id: bytes
    signature: bytes  # what follows the key id


def _split_note(note: str) -> tuple[str, list[_SignatureLine]]:
    """Split a signed note into its text and signature lines, checking only their form."""
    if _too_long(note, MAX_NOTE_BYTES):
        raise OversizeError(f"signed note over {MAX_NOTE_BYTES} bytes")
    problem = _text_problem(note)
    if problem:
        raise MalformedError(f"signed note: {problem}")
    # The text is separated from the signatures by the last blank line.
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedError("signed note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise MalformedError("signed note must end with a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_NOTE_SIGNATURES:
        raise MalformedError(f"signed note has over {MAX_NOTE_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(_SIGNATURE_PREFIX):
            raise MalformedError("signature lines start with an em dash and a space")
        name, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
        if not _is_key_name(name):
            raise MalformedError(f"bad key name {name[:80]!r} in a signature line")
        raw = _b64decode(encoded, f"signature by {name}")
        if len(raw) <= _KEY_ID_SIZE:
            raise MalformedError(f"signature by {name} is too short")
        signatures.append(_SignatureLine(name, raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:]))
    return text, signatures


def _signature_line(name: str, key_id: bytes, signature: bytes) -> str:
    return f"{_SIGNATURE_PREFIX}{name} {_b64encode(key_id + signature)}\n"


def _check_signing(text: str, name: str) -> None:
    if not _is_key_name(name):
        raise ValueError(f"key name {name!r}: non-empty, no spaces, no '+'")
    if not text.endswith("\n"):
        raise ValueError("note text must end with a newline")
    problem = _text_problem(text)
    if problem:
        raise ValueError(f"note text: {problem}")


def sign_note(text: str, name: str, key: SigningKey) -> str:
    """`text`, a blank line and one Ed25519 signature line by `name`: a signed note.

    Raises ValueError if the text does not end with a newline, holds control
    characters, or the name is not a key name.
    """
    _check_signing(text, name)
    signature = key.sign(text.encode("utf-8"))
    key_id = key_hash(name, SignatureType.ED25519, key.public_raw)
    return text + "\n" + _signature_line(name, key_id, signature)


def open_note(note: str, verifiers: Mapping[str, VerifyKey]) -> tuple[str, list[str]]:
    """The note's text and the names of the trusted keys that signed it, in order.

    `verifiers` maps key names to Ed25519 keys. As signed-note requires,
    signatures whose (name, key id) match no trusted key are ignored, and
    every signature from a trusted key must verify. Raises MalformedError or
    OversizeError for a malformed note, BadSignatureError if a trusted key's
    signature fails, UnknownSignerError if no trusted key signed at all.
    """
    text, signatures = _split_note(note)
    signed = text.encode("utf-8")
    key_ids = {
        name: key_hash(name, SignatureType.ED25519, key.public_raw)
        for name, key in verifiers.items()
    }
    signers: list[str] = []
    for line in signatures:
        if key_ids.get(line.name) != line.key_id:
            continue  # someone else's key (or another type of signature): not ours to judge
        verifiers[line.name].verify(line.signature, signed, what=f"note signature by {line.name}")
        if line.name not in signers:
            signers.append(line.name)
    if not signers:
        trusted = ", ".join(sorted(verifiers)) or "none"
        raise UnknownSignerError(f"note is not signed by a trusted key (trusted: {trusted})")
    return text, signers


def open_checkpoint(note: str, origin: str, verifiers: Mapping[str, VerifyKey]) -> Checkpoint:
    """The checkpoint in a signed note from the log `origin`, signed by a trusted key.

    Raises what `open_note` and `parse_checkpoint` raise, and MalformedError
    (reason "wrong_origin") for another log's checkpoint.
    """
    text, _ = open_note(note, verifiers)
    checkpoint = parse_checkpoint(text)
    if checkpoint.origin != origin:
        raise MalformedError(
            f"checkpoint is from {checkpoint.origin[:80]!r}, not {origin!r}", reason="wrong_origin"
        )
    return checkpoint


# -- Verifier keys ---------------------------------------------------------------


def encode_vkey(
    name: str, key: VerifyKey, signature_type: SignatureType = SignatureType.ED25519
) -> str:
    """`<name>+<hex key id>+<base64(type ‖ public key)>`, as Go's note.NewVerifier reads it."""
    if not _is_key_name(name):
        raise ValueError(f"key name {name!r}: non-empty, no spaces, no '+'")
    key_id = key_hash(name, signature_type, key.public_raw)
    return f"{name}+{key_id.hex()}+{_b64encode(bytes([signature_type]) + key.public_raw)}"


def parse_vkey(
    vkey: str, signature_type: SignatureType = SignatureType.ED25519
) -> tuple[str, VerifyKey]:
    """The name and Ed25519 key of a vkey of the given signature type.

    Raises MalformedError if the vkey is not in that form, is of another
    type, or its key id does not match its name and key.
    """
    name, _, rest = vkey.partition("+")
    hex_id, _, encoded = rest.partition("+")
    if not _is_key_name(name) or not _HEX_KEY_ID.fullmatch(hex_id):
        raise MalformedError("vkey is not <name>+<8 hex digits>+<base64 key>")
    raw = _b64decode(encoded, "vkey key")
    if len(raw) != 1 + _ED25519_PUBLIC_SIZE or raw[0] != signature_type:
        raise MalformedError(f"vkey is not an Ed25519 key of signature type {signature_type:#04x}")
    if bytes.fromhex(hex_id) != key_hash(name, signature_type, raw[1:]):
        raise MalformedError(f"vkey key id {hex_id} does not match its name and key")
    return name, VerifyKey(raw[1:])


# -- Cosignatures (c2sp.org/tlog-cosignature) ------------------------------------


def cosignature_message(checkpoint_text: str, time_seconds: int) -> bytes:
    """What an Ed25519 cosignature/v1 signs: header, time line, then the checkpoint text."""
    return f"{_COSIGNATURE_HEADER}time {time_seconds}\n{checkpoint_text}".encode()


def cosign(checkpoint: Checkpoint, name: str, key: SigningKey, time_seconds: int) -> str:
    """A cosignature/v1 line by `name` over `checkpoint` at `time_seconds`.

    Append it to the log's signed note. The blob is key id (type 0x04) ‖
    timestamp (u64 big-endian) ‖ Ed25519 signature. Raises ValueError for a
    bad name or a time outside 0..2^63-1.
    """
    if not 0 <= time_seconds <= _MAX_INT63:
        raise ValueError(f"cosignature time {time_seconds} outside 0..2^63-1")
    text = checkpoint.to_text()
    _check_signing(text, name)
    signature = key.sign(cosignature_message(text, time_seconds))
    key_id = key_hash(name, SignatureType.COSIGNATURE_V1, key.public_raw)
    return _signature_line(name, key_id, time_seconds.to_bytes(_TIMESTAMP_SIZE, "big") + signature)


def verify_cosignature(note: str, name: str, key: VerifyKey) -> int:
    """The time (Unix seconds) at which cosigner `name` with `key` cosigned the note's checkpoint.

    Checks only the cosignature, not the log's own signature (use
    `open_note` for that). Raises MalformedError or OversizeError for a
    malformed note or a text that is not a checkpoint, UnknownSignerError if
    this cosigner's line is absent, BadSignatureError if it does not verify.
    """
    text, signatures = _split_note(note)
    parse_checkpoint(text)  # a cosignature vouches for a checkpoint, nothing else
    key_id = key_hash(name, SignatureType.COSIGNATURE_V1, key.public_raw)
    times = []
    for line in signatures:
        if line.name != name or line.key_id != key_id:
            continue
        blob = line.signature
        if len(blob) != _TIMESTAMP_SIZE + _ED25519_SIGNATURE_SIZE:
            raise BadSignatureError(f"cosignature by {name} is {len(blob)} bytes, not 72")
        time_seconds = int.from_bytes(blob[:_TIMESTAMP_SIZE], "big")
        if time_seconds > _MAX_INT63:
            raise BadSignatureError(f"cosignature by {name} has a time over 2^63-1")
        message = cosignature_message(text, time_seconds)
        key.verify(blob[_TIMESTAMP_SIZE:], message, what=f"cosignature by {name}")
        times.append(time_seconds)
    if not times:
        raise UnknownSignerError(f"no cosignature by {name} with this key")
    return times[0]
