"""Transparency-log math and formats: RFC 9162 trees and proofs, C2SP checkpoints,
signed notes and cosignatures.

Known answers come from transparency-dev/merkle (testonly/constants.go,
proof/verify_test.go), golang.org/x/mod/sumdb/note (note_test.go),
transparency-dev/formats (note/note_cosigv1_test.go) and the C2SP specs'
examples; properties are checked against a recursive transcription of the
RFC 9162 definitions.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from itertools import chain, repeat
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from network.core import tlog
from network.core.crypto import SigningKey, VerifyKey, generate_signing_key
from network.core.errors import (
    BadSignatureError,
    ConsistencyProofError,
    CpnError,
    InclusionProofError,
    MalformedError,
    OversizeError,
    PeerError,
    UnknownSignerError,
)
from network.core.tlog import (
    EMPTY_ROOT,
    MAX_CHECKPOINT_BYTES,
    MAX_NOTE_BYTES,
    MAX_TREE_SIZE,
    Checkpoint,
    MerkleLog,
    SignatureType,
    TreeBuilder,
    consistency_proof,
    cosign,
    cosignature_message,
    encode_vkey,
    inclusion_proof,
    key_hash,
    leaf_hash,
    node_hash,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_vkey,
    root_hash,
    sign_note,
    verify_consistency,
    verify_cosignature,
    verify_inclusion,
)

T = TypeVar("T")
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def h(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


# -- RFC 9162 known answers (transparency-dev/merkle) ----------------------------

LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]
LEAVES = [leaf_hash(data) for data in LEAF_INPUTS]

# testonly/constants.go RootHashes(): indexed by tree size, 0 through 8.
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

# proof/verify_test.go inclusionProofs. Go numbers leaves from 1; these are 0-based indices.
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]

# proof/verify_test.go consistencyProofs: (old size, new size, proof).
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


# -- RFC 9162 §2.1 definitions, transcribed recursively as the reference -------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(hashes: list[bytes]) -> bytes:
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = _k(len(hashes))
    return node_hash(ref_mth(hashes[:k]), ref_mth(hashes[k:]))


def ref_path(m: int, hashes: list[bytes]) -> list[bytes]:
    if len(hashes) == 1:
        return []
    k = _k(len(hashes))
    if m < k:
        return [*ref_path(m, hashes[:k]), ref_mth(hashes[k:])]
    return [*ref_path(m - k, hashes[k:]), ref_mth(hashes[:k])]


def ref_subproof(m: int, hashes: list[bytes], whole: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if whole else [ref_mth(hashes)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, hashes[:k], whole), ref_mth(hashes[k:])]
    return [*ref_subproof(m - k, hashes[k:], False), ref_mth(hashes[:k])]


def flip_bit(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


leaf_lists = st.lists(st.binary(max_size=6), min_size=1, max_size=70).map(
    lambda items: [leaf_hash(item) for item in items]
)


# -- hashing and roots -----------------------------------------------------------


def test_leaf_and_node_hashes_follow_rfc9162() -> None:
    assert leaf_hash(b"") == ROOTS[1]
    assert node_hash(LEAVES[0], LEAVES[1]) == ROOTS[2]
    assert ROOTS[0] == EMPTY_ROOT


@pytest.mark.parametrize("size", range(9))
def test_root_of_known_tree(size: int) -> None:
    assert root_hash(LEAVES[:size]) == ROOTS[size]


def test_tree_builder_gives_known_root_at_every_size() -> None:
    builder = TreeBuilder()
    roots = [builder.root()]
    for leaf in LEAVES:
        builder.append(leaf)
        roots.append(builder.root())
    assert roots == ROOTS
    assert builder.size == 8


@PROPERTY
@given(leaves=leaf_lists)
def test_root_hash_and_tree_builder_match_the_rfc_definition(leaves: list[bytes]) -> None:
    builder = TreeBuilder()
    for size in range(1, len(leaves) + 1):
        builder.append(leaves[size - 1])
        expected = ref_mth(leaves[:size])
        assert root_hash(leaves[:size]) == expected
        assert builder.root() == expected


def test_tree_builder_streams_a_larger_tree() -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(5000)]
    builder = TreeBuilder()
    checkpoints = [1, 2, 3, 1023, 1024, 1025, 4096, 4999, 5000]
    start = 0
    for size in checkpoints:
        builder.extend(leaves[start:size])
        start = size
        assert builder.size == size
        assert builder.root() == root_hash(leaves[:size])


def test_wrong_length_leaf_hashes_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        root_hash([LEAVES[0], b"short"])
    with pytest.raises(ValueError, match="32 bytes"):
        TreeBuilder().append(b"raw data, not a leaf hash")
    builder = TreeBuilder()
    with pytest.raises(ValueError, match="32 bytes"):
        builder.extend([LEAVES[0], b"short"])
    assert builder.size == 1
    assert builder.root() == ROOTS[1]


# -- inclusion proofs ------------------------------------------------------------


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_known_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    assert inclusion_proof(LEAVES, index, size) == proof
    verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])


def _inclusion_corruptions(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[int, int, list[bytes], bytes, bytes]]:
    """transparency-dev/merkle's corruptInclusionProof, as (index, size, proof, root, leaf)."""
    cases = [
        (index - 1, size, proof, root, leaf),
        (index + 1, size, proof, root, leaf),
        (index ^ 2, size, proof, root, leaf),
        (index, size * 2, proof, root, leaf),
        (index, size // 2, proof, root, leaf),
        (index, size, proof, root, leaf_hash(b"WrongLeaf")),
        (index, size, proof, EMPTY_ROOT, leaf),
        (index, size, proof, SOME_HASH, leaf),
        (index, size, [*proof, b""], root, leaf),
        (index, size, [*proof, root], root, leaf),
        (index, size, [b"", *proof], root, leaf),
        (index, size, [root, *proof], root, leaf),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 8]) + wrong[i][1:]
        cases.append((index, size, wrong, root, leaf))
    if proof:
        cases.append((index, size, proof[:-1], root, leaf))
    if len(proof) > 1:
        cases.append((index, size, [proof[0], SOME_HASH, *proof[1:]], root, leaf))
    return cases


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_corrupted_known_inclusion_proofs_fail(index: int, size: int, proof: list[bytes]) -> None:
    for case in _inclusion_corruptions(index, size, proof, ROOTS[size], LEAVES[index]):
        bad_index, bad_size, bad_proof, bad_root, bad_leaf = case
        with pytest.raises(InclusionProofError):
            verify_inclusion(bad_leaf, bad_index, bad_size, bad_proof, bad_root)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1)])
def test_inclusion_in_trees_too_small_fails(index: int, size: int) -> None:
    with pytest.raises(InclusionProofError):
        verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)


@PROPERTY
@given(leaves=leaf_lists, data=st.data())
def test_every_inclusion_proof_matches_the_rfc_and_verifies(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, len(leaves)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = inclusion_proof(leaves, index, size)
    assert proof == ref_path(index, leaves[:size])
    verify_inclusion(leaves[index], index, size, proof, root_hash(leaves[:size]))


@PROPERTY
@given(leaves=leaf_lists, data=st.data())
def test_any_flipped_bit_in_an_inclusion_check_fails(
    leaves: list[bytes], data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, len(leaves)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = inclusion_proof(leaves, index, size)
    root = root_hash(leaves[:size])
    bit = data.draw(st.integers(0, 255), label="bit")
    target = data.draw(st.integers(-2, len(proof) - 1), label="target")
    leaf = leaves[index]
    if target == -2:
        leaf = flip_bit(leaf, bit)
    elif target == -1:
        root = flip_bit(root, bit)
    else:
        proof = [*proof[:target], flip_bit(proof[target], bit), *proof[target + 1 :]]
    with pytest.raises(InclusionProofError):
        verify_inclusion(leaf, index, size, proof, root)


@PROPERTY
@given(leaves=leaf_lists, data=st.data())
def test_an_inclusion_proof_proves_nothing_else(leaves: list[bytes], data: st.DataObject) -> None:
    # Claiming another leaf or tree size, with that tree's true root and leaf,
    # succeeds only when the proof happens to be that claim's own proof.
    size = data.draw(st.integers(1, len(leaves)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = inclusion_proof(leaves, index, size)
    claimed_size = data.draw(st.integers(1, len(leaves)), label="claimed size")
    claimed_index = data.draw(st.integers(0, claimed_size - 1), label="claimed index")
    assume((claimed_index, claimed_size) != (index, size))
    honest = inclusion_proof(leaves, claimed_index, claimed_size)
    root = root_hash(leaves[:claimed_size])
    try:
        verify_inclusion(leaves[claimed_index], claimed_index, claimed_size, proof, root)
    except InclusionProofError:
        assert proof != honest
    else:
        assert proof == honest


def test_inclusion_proof_needs_a_leaf_in_the_tree() -> None:
    with pytest.raises(ValueError, match="no leaf"):
        inclusion_proof(LEAVES, 3, 3)
    with pytest.raises(ValueError, match="no leaf"):
        inclusion_proof(LEAVES, 0, 9)
    with pytest.raises(ValueError, match="no leaf"):
        inclusion_proof(LEAVES, -1, 4)


# -- consistency proofs ----------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_known_consistency_proofs(old: int, new: int, proof: list[bytes]) -> None:
    assert consistency_proof(LEAVES, old, new) == proof
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS[1:])
def test_corrupted_known_consistency_proofs_fail(old: int, new: int, proof: list[bytes]) -> None:
    old_root, new_root = ROOTS[old], ROOTS[new]
    cases = [  # transparency-dev/merkle's corruptConsistencyProof
        (old - 1, new, old_root, new_root, proof),
        (old + 1, new, old_root, new_root, proof),
        (old ^ 2, new, old_root, new_root, proof),
        (old, new * 2, old_root, new_root, proof),
        (old, new // 2, old_root, new_root, proof),
        (old, new, SOME_HASH, new_root, proof),
        (old, new, old_root, SOME_HASH, proof),
        (old, new, new_root, old_root, proof),
        (old, new, old_root, new_root, []),
        (old, new, old_root, new_root, [*proof, b""]),
        (old, new, old_root, new_root, [*proof, old_root]),
        (old, new, old_root, new_root, [*proof, new_root]),
        (old, new, old_root, new_root, [b"", *proof]),
        (old, new, old_root, new_root, [old_root, *proof]),
        (old, new, old_root, new_root, [new_root, *proof]),
        (old, new, old_root, new_root, [proof[0], *proof]),
        (old, new, old_root, new_root, proof[:-1]),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 16]) + wrong[i][1:]
        cases.append((old, new, old_root, new_root, wrong))
    for bad_old, bad_new, bad_old_root, bad_new_root, bad_proof in cases:
        with pytest.raises(ConsistencyProofError):
            verify_consistency(bad_old, bad_new, bad_old_root, bad_new_root, bad_proof)


def test_consistency_with_nothing_to_prove() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[5], [])
    verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])
    assert consistency_proof(LEAVES, 0, 5) == []
    assert consistency_proof(LEAVES, 5, 5) == []


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof"),
    [
        (5, 5, ROOTS[5], ROOTS[6], []),  # one size, two roots
        (5, 5, ROOTS[5], ROOTS[5], [EMPTY_ROOT]),  # nothing to prove, yet a proof
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (0, 5, SOME_HASH, ROOTS[5], []),  # an empty tree has one root only
        (0, 5, EMPTY_ROOT, ROOTS[5], [EMPTY_ROOT]),
        (2, 1, ROOTS[2], ROOTS[1], []),  # shrinking
        (1, 2, ROOTS[1], ROOTS[2], []),  # growing, without a proof
        (1, 2, ROOTS[1], b"short", [LEAVES[1]]),
    ],
)
def test_trivial_consistency_claims_that_fail(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    with pytest.raises(ConsistencyProofError):
        verify_consistency(old, new, old_root, new_root, proof)


@PROPERTY
@given(leaves=leaf_lists, data=st.data())
def test_every_consistency_proof_matches_the_rfc_and_verifies(
    leaves: list[bytes], data: st.DataObject
) -> None:
    new = data.draw(st.integers(1, len(leaves)), label="new")
    old = data.draw(st.integers(1, new), label="old")
    proof = consistency_proof(leaves, old, new)
    assert proof == ref_subproof(old, leaves[:new], True)
    verify_consistency(old, new, root_hash(leaves[:old]), root_hash(leaves[:new]), proof)


@PROPERTY
@given(leaves=leaf_lists, data=st.data())
def test_any_flipped_bit_in_a_consistency_check_fails(
    leaves: list[bytes], data: st.DataObject
) -> None:
    new = data.draw(st.integers(2, max(2, len(leaves))), label="new")
    assume(new <= len(leaves))
    old = data.draw(st.integers(1, new - 1), label="old")
    proof = consistency_proof(leaves, old, new)
    old_root, new_root = root_hash(leaves[:old]), root_hash(leaves[:new])
    bit = data.draw(st.integers(0, 255), label="bit")
    target = data.draw(st.integers(-2, len(proof) - 1), label="target")
    if target == -2:
        old_root = flip_bit(old_root, bit)
    elif target == -1:
        new_root = flip_bit(new_root, bit)
    else:
        proof = [*proof[:target], flip_bit(proof[target], bit), *proof[target + 1 :]]
    with pytest.raises(ConsistencyProofError):
        verify_consistency(old, new, old_root, new_root, proof)


@PROPERTY
@given(leaves=leaf_lists, data=st.data())
def test_a_consistency_proof_proves_nothing_else(leaves: list[bytes], data: st.DataObject) -> None:
    new = data.draw(st.integers(1, len(leaves)), label="new")
    old = data.draw(st.integers(1, new), label="old")
    proof = consistency_proof(leaves, old, new)
    claimed_new = data.draw(st.integers(1, len(leaves)), label="claimed new")
    claimed_old = data.draw(st.integers(0, claimed_new), label="claimed old")
    assume((claimed_old, claimed_new) != (old, new))
    honest = consistency_proof(leaves, claimed_old, claimed_new)
    old_root, new_root = root_hash(leaves[:claimed_old]), root_hash(leaves[:claimed_new])
    try:
        verify_consistency(claimed_old, claimed_new, old_root, new_root, proof)
    except ConsistencyProofError:
        assert proof != honest
    else:
        assert proof == honest


def test_consistency_proof_needs_sizes_in_order() -> None:
    with pytest.raises(ValueError, match="no proof"):
        consistency_proof(LEAVES, 5, 4)
    with pytest.raises(ValueError, match="no proof"):
        consistency_proof(LEAVES, 1, 9)


# -- the log's own tree: MerkleLog -----------------------------------------------


def numbered_leaves(count: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(count)]


def build_log(leaves: list[bytes], data: st.DataObject) -> MerkleLog:
    """A MerkleLog of `leaves`, taken in drawn runs, each by `append` or by `extend`."""
    log = MerkleLog()
    while log.size < len(leaves):
        run = leaves[log.size : log.size + data.draw(st.integers(1, 70), label="run")]
        if data.draw(st.booleans(), label="one by one"):
            for leaf in run:
                log.append(leaf)
        else:
            log.extend(iter(run))
    return log


class NodeHashCounter:
    """Stands in for tlog.node_hash, counting the calls made by each answer it runs."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, left: bytes, right: bytes) -> bytes:
        self.calls += 1
        return node_hash(left, right)

    def run(self, ask: Callable[[], T]) -> tuple[T, int]:
        self.calls = 0
        return ask(), self.calls


def test_merkle_log_gives_the_known_roots_and_leaves() -> None:
    log = MerkleLog()
    roots = [log.root()]
    sizes = []
    for leaf in LEAVES:
        sizes.append(log.append(leaf))
        roots.append(log.root())
    assert sizes == list(range(1, 9))
    assert roots == ROOTS
    assert [log.root(size) for size in range(9)] == ROOTS
    assert [log.leaf(index) for index in range(8)] == LEAVES


def test_an_empty_merkle_log_has_the_empty_root_and_nothing_to_prove() -> None:
    log = MerkleLog()
    assert (log.size, log.root(), log.root(0)) == (0, EMPTY_ROOT, EMPTY_ROOT)
    assert log.consistency_proof(0) == []


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_merkle_log_gives_the_known_inclusion_proofs(
    index: int, size: int, proof: list[bytes]
) -> None:
    whole, exact = MerkleLog(), MerkleLog()
    whole.extend(LEAVES)
    exact.extend(LEAVES[:size])
    assert whole.inclusion_proof(index, size) == proof
    assert exact.inclusion_proof(index) == proof


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_merkle_log_gives_the_known_consistency_proofs(
    old: int, new: int, proof: list[bytes]
) -> None:
    whole, exact = MerkleLog(), MerkleLog()
    whole.extend(LEAVES)
    exact.extend(LEAVES[:new])
    assert whole.consistency_proof(old, new) == proof
    assert exact.consistency_proof(old) == proof


def test_merkle_log_matches_the_sequence_functions_for_every_size_and_index() -> None:
    # Every tree up to 70 leaves (past 64, so a ragged right edge under a full
    # subtree of 64), every leaf and every older size, built one leaf at a time
    # and in one go.
    leaves = numbered_leaves(70)
    one_by_one, at_once = MerkleLog(), MerkleLog()
    for leaf in leaves:
        one_by_one.append(leaf)
    at_once.extend(leaves)
    for log in (one_by_one, at_once):
        for size in range(len(leaves) + 1):
            root = root_hash(leaves[:size])
            assert log.root(size) == root
            for index in range(size):
                proof = log.inclusion_proof(index, size)
                assert proof == inclusion_proof(leaves, index, size)
                verify_inclusion(leaves[index], index, size, proof, root)
            for old in range(size + 1):
                proof = log.consistency_proof(old, size)
                assert proof == consistency_proof(leaves, old, size)
                verify_consistency(old, size, root_hash(leaves[:old]), root, proof)


@settings(PROPERTY, max_examples=25)
@given(count=st.integers(1, 300), salt=st.binary(max_size=4), data=st.data())
def test_merkle_log_matches_the_sequence_functions_and_its_proofs_verify(
    count: int, salt: bytes, data: st.DataObject
) -> None:
    # Every size gets its root checked and proofs for a drawn leaf and older
    # size; the whole log, proofs for every leaf and every older size.
    leaves = numbered_leaves(count, salt)
    log = build_log(leaves, data)
    rng = data.draw(st.randoms(use_true_random=False), label="rng")
    roots = [root_hash(leaves[:size]) for size in range(count + 1)]
    assert log.size == count
    assert [log.root(size) for size in range(count + 1)] == roots
    assert [log.leaf(index) for index in range(count)] == leaves
    asked = [(size, rng.randrange(size), rng.randrange(size + 1)) for size in range(1, count)]
    asked += [(count, index, index) for index in range(count)]
    for size, index, old in [*asked, (count, 0, count)]:
        inclusion = log.inclusion_proof(index, size)
        assert inclusion == inclusion_proof(leaves, index, size)
        verify_inclusion(leaves[index], index, size, inclusion, roots[size])
        consistency = log.consistency_proof(old, size)
        assert consistency == consistency_proof(leaves, old, size)
        verify_consistency(old, size, roots[old], roots[size], consistency)


def test_a_large_merkle_log_answers_with_a_few_node_hashes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rebuilding a subtree of the tree of 100,000 would take up to 100,000
    # node hashes; the pyramid answers each question with one per set bit of
    # the size at most (and the proofs are the RFC's, so at most 17 hashes long).
    size, old, index = 100_000, 65_537, 12_345
    leaves = numbered_leaves(size)
    log = MerkleLog()
    log.extend(leaves)
    builder = TreeBuilder()
    builder.extend(leaves[:old])
    old_root = builder.root()
    builder.extend(leaves[old:])
    root = builder.root()
    counter = NodeHashCounter()
    monkeypatch.setattr(tlog, "node_hash", counter)

    root_answer, root_hashes = counter.run(log.root)
    old_root_answer, old_root_hashes = counter.run(lambda: log.root(old))
    inclusion, inclusion_hashes = counter.run(lambda: log.inclusion_proof(index))
    consistency, consistency_hashes = counter.run(lambda: log.consistency_proof(old))

    monkeypatch.undo()
    for hashes in (root_hashes, old_root_hashes, inclusion_hashes, consistency_hashes):
        assert 0 < hashes <= size.bit_length()
    assert (root_answer, old_root_answer) == (root, old_root)
    assert len(inclusion) == 17
    assert inclusion == inclusion_proof(leaves, index, size)
    verify_inclusion(leaves[index], index, size, inclusion, root)
    assert consistency == consistency_proof(leaves, old, size)
    verify_consistency(old, size, old_root, root, consistency)


@pytest.mark.parametrize(
    ("method", "args", "argument"),
    [
        ("leaf", (8,), "index"),
        ("leaf", (-1,), "index"),
        ("root", (9,), "size"),
        ("root", (-1,), "size"),
        ("inclusion_proof", (8,), "index"),
        ("inclusion_proof", (-1,), "index"),
        ("inclusion_proof", (3, 3), "index"),
        ("inclusion_proof", (0, 0), "index"),
        ("inclusion_proof", (0, 9), "size"),
        ("inclusion_proof", (0, -1), "size"),
        ("consistency_proof", (9,), "old_size"),
        ("consistency_proof", (5, 4), "old_size"),
        ("consistency_proof", (-1,), "old_size"),
        ("consistency_proof", (1, 9), "new_size"),
        ("consistency_proof", (0, -1), "new_size"),
    ],
)
def test_merkle_log_refuses_arguments_outside_the_log(
    method: str, args: tuple[int, ...], argument: str
) -> None:
    log = MerkleLog()
    log.extend(LEAVES)
    with pytest.raises(ValueError, match=rf"^{argument} ") as caught:
        getattr(log, method)(*args)
    assert not isinstance(caught.value, CpnError)  # the caller's mistake, not a peer's


def test_merkle_log_refuses_leaf_hashes_of_the_wrong_length() -> None:
    log = MerkleLog()
    with pytest.raises(ValueError, match="32 bytes"):
        log.append(b"raw data, not a leaf hash")
    with pytest.raises(ValueError, match="32 bytes"):
        log.extend([*LEAVES[:3], b"short", LEAVES[4]])
    assert (log.size, log.root()) == (3, ROOTS[3])  # as if appended one by one


def test_merkle_log_extend_keeps_what_came_before_a_bad_leaf_in_a_long_iterable() -> None:
    log = MerkleLog()
    with pytest.raises(ValueError, match="32 bytes"):
        log.extend(chain(repeat(LEAVES[0], 70_000), [b"short"], LEAVES))
    builder = TreeBuilder()
    builder.extend(repeat(LEAVES[0], 70_000))
    assert (log.size, log.root()) == (70_000, builder.root())
    assert log.append(LEAVES[1]) == 70_001


def test_merkle_log_lists_its_leaves() -> None:
    log = MerkleLog()
    log.extend(LEAVES[:5])
    assert log.leaves() == LEAVES[:5]
    assert MerkleLog().leaves() == []


# -- the tree builder fed in pieces, and from chunks' pyramids ------------------------


@settings(PROPERTY, max_examples=60)
@given(
    count=st.integers(0, 600),
    chunk_bits=st.integers(0, 7),
    salt=st.binary(max_size=4),
    data=st.data(),
)
def test_tree_builder_in_pieces_and_chunks_matches_the_sequence_functions(
    count: int, chunk_bits: int, salt: bytes, data: st.DataObject
) -> None:
    # The verifier's way: the log in aligned chunks of 2^k leaves; an intact chunk comes as
    # its own MerkleLog (a worker's) whose subtrees the builder reads, any other as leaves;
    # either is taken in drawn pieces, stopping at drawn sizes (checkpoints) to compare the
    # root with root_hash, and a MerkleLog of the whole log grown in the same pieces answers
    # proofs equal to the sequence functions' at those sizes.
    leaves = numbered_leaves(count, salt)
    chunk = 1 << chunk_bits
    builder, whole = TreeBuilder(), MerkleLog()
    stops = []
    for lo in range(0, count, chunk):
        part = leaves[lo : lo + chunk]
        pyramid: MerkleLog | None = None
        if data.draw(st.booleans(), label="from a pyramid"):
            pyramid = MerkleLog()
            pyramid.extend(part)
        start = 0
        while start < len(part):
            take = data.draw(st.integers(1, len(part) - start), label="piece")
            if pyramid is not None:
                builder.extend_from(pyramid, start, take)
            elif take == 1 and data.draw(st.booleans(), label="append"):
                builder.append(part[start])
            else:
                builder.extend(iter(part[start : start + take]))
            whole.extend(part[start : start + take])
            start += take
            stops.append(builder.size)
            assert builder.root() == root_hash(leaves[: builder.size]) == whole.root()
    assert builder.size == whole.size == count
    assert builder.root() == root_hash(leaves)
    rng = data.draw(st.randoms(use_true_random=False), label="rng")
    for size in stops:
        index, old = rng.randrange(size), rng.randrange(size + 1)
        assert whole.inclusion_proof(index, size) == inclusion_proof(leaves, index, size)
        assert whole.consistency_proof(old, size) == consistency_proof(leaves, old, size)


def test_tree_builder_reads_a_pyramid_only_where_its_subtrees_are_the_trees() -> None:
    pyramid = MerkleLog()
    pyramid.extend(LEAVES[:4])
    builder = TreeBuilder()
    builder.append(LEAVES[0])
    with pytest.raises(ValueError, match="cannot follow"):
        builder.extend_from(pyramid, 0, 4)  # it would start at position 1, not a multiple of 4
    with pytest.raises(ValueError, match="cannot follow"):
        builder.extend_from(pyramid, 1, 4)  # past the pyramid's leaves
    builder.extend_from(pyramid, 1, 3)
    assert (builder.size, builder.root()) == (4, ROOTS[4])


# -- checkpoints -----------------------------------------------------------------

# c2sp.org/tlog-checkpoint's example.
SPEC_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
SPEC_LOG_SIGNATURE = (
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/"
    "Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)
SPEC_WITNESS_SIGNATURE = (
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2"
    "oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
ROOT_B64 = base64.b64encode(ROOTS[8]).decode()
URLSAFE_ROOT_B64 = base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode()  # '-' and '_'


def test_spec_checkpoint_parses() -> None:
    checkpoint = parse_checkpoint(SPEC_CHECKPOINT)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert checkpoint.to_text() == SPEC_CHECKPOINT


origins = st.text(
    st.characters(exclude_categories=["Cs"], min_codepoint=0x20), min_size=1, max_size=40
)


@PROPERTY
@given(
    origin=origins,
    size=st.integers(0, MAX_TREE_SIZE),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(origins, max_size=3),
)
def test_checkpoint_round_trip(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert parse_checkpoint(checkpoint.to_text()) == checkpoint


def test_checkpoint_with_extension_lines() -> None:
    text = f"log.example/a\n8\n{ROOT_B64}\nfirst extension\nsecond\n"
    checkpoint = parse_checkpoint(text)
    assert checkpoint.extensions == ("first extension", "second")
    assert checkpoint.to_text() == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"log.example/a\n8\n{ROOT_B64}", "end with a newline"),
        ("log.example/a\n8\n", "needs origin"),
        (f"\n8\n{ROOT_B64}\n", "origin"),
        (f"log.example/a\n08\n{ROOT_B64}\n", "canonical decimal"),
        (f"log.example/a\n00\n{ROOT_B64}\n", "canonical decimal"),
        (f"log.example/a\n+8\n{ROOT_B64}\n", "canonical decimal"),
        (f"log.example/a\n-8\n{ROOT_B64}\n", "canonical decimal"),
        (f"log.example/a\n 8\n{ROOT_B64}\n", "canonical decimal"),
        (f"log.example/a\n1_000\n{ROOT_B64}\n", "canonical decimal"),
        (f"log.example/a\n\u0668\n{ROOT_B64}\n", "canonical decimal"),  # an Arabic-Indic 8
        (f"log.example/a\n0x8\n{ROOT_B64}\n", "canonical decimal"),
        (f"log.example/a\n\n{ROOT_B64}\n", "canonical decimal"),
        (f"log.example/a\n{2**63}\n{ROOT_B64}\n", "out of range"),
        (f"log.example/a\n{'9' * 20}\n{ROOT_B64}\n", "canonical decimal"),
        (f"log.example/a\n8\n{base64.b64encode(ROOTS[8][:31]).decode()}\n", "31 bytes"),
        (f"log.example/a\n8\n{base64.b64encode(ROOTS[8] + b'!').decode()}\n", "33 bytes"),
        (f"log.example/a\n8\n{ROOT_B64.rstrip('=')}\n", "not base64"),
        (f"log.example/a\n8\n{ROOT_B64[:-2]}B=\n", "canonical base64"),  # stray low bits
        (f"log.example/a\n8\n{URLSAFE_ROOT_B64}\n", "not base64"),
        (f"log.example/a\n8\n {ROOT_B64}\n", "not base64"),
        (f"log.example/a\n8\n{ROOT_B64}\n\n", "extension lines"),
        (f"log.example/a\n8\n{ROOT_B64}\n\nextension\n", "extension lines"),
        (f"log.example/\ta\n8\n{ROOT_B64}\n", "control character"),
        (f"log.example/a\r\n8\n{ROOT_B64}\n", "control character"),
        (f"log.example/\ud800\n8\n{ROOT_B64}\n", "UTF-8"),
    ],
)
def test_checkpoint_parse_refusals(text: str, problem: str) -> None:
    with pytest.raises(MalformedError, match=problem):
        parse_checkpoint(text)


def test_oversize_checkpoint_is_refused() -> None:
    text = f"log.example/a\n8\n{ROOT_B64}\n" + "x" * MAX_CHECKPOINT_BYTES + "\n"
    with pytest.raises(OversizeError):
        parse_checkpoint(text)


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("", 1, ROOTS[1], ()),
        ("log\nexample", 1, ROOTS[1], ()),
        ("log.example", -1, ROOTS[1], ()),
        ("log.example", 2**63, ROOTS[1], ()),
        ("log.example", 1, ROOTS[1][:16], ()),
        ("log.example", 1, ROOTS[1], ("",)),
        ("log.example", 1, ROOTS[1], ("two\nlines",)),
        ("log\x00example", 1, ROOTS[1], ()),
    ],
)
def test_checkpoint_fields_are_checked_when_built(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="checkpoint") as caught:
        Checkpoint(origin, size, root, extensions)
    assert not isinstance(caught.value, PeerError)  # our mistake, not a peer's


# -- signed notes: golang.org/x/mod/sumdb/note's vectors -------------------------

PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdn"
    "gotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnW"
    "Lox33WWd1RvMc+QQ=\n"
)
# transparency-dev/formats note_cosigv1_test.go: one ordinary vkey, one cosignature/v1 vkey.
TD_ED25519_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
TD_COSIGNATURE_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"


def peter_signing_key() -> SigningKey:
    # The Go skey is base64(0x01 ‖ 32-byte Ed25519 seed); Ed25519 signing is deterministic.
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]
    return SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def test_go_vkeys_parse() -> None:
    peter_name, peter = parse_vkey(PETER_VKEY)
    enoch_name, _ = parse_vkey(ENOCH_VKEY)
    assert (peter_name, enoch_name) == ("PeterNeumann", "EnochRoot")
    assert peter.public_raw == peter_signing_key().public_raw
    assert encode_vkey(peter_name, peter) == PETER_VKEY
    assert key_hash(peter_name, SignatureType.ED25519, peter.public_raw) == h("c74f20a3")


def test_go_note_signature_is_reproduced() -> None:
    note = sign_note(GO_TEXT, "PeterNeumann", peter_signing_key())
    assert note == GO_TEXT + "\n" + PETER_SIG


def test_go_note_opens_with_the_known_key_and_ignores_the_other() -> None:
    _, peter = parse_vkey(PETER_VKEY)
    text, signers = open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, {"PeterNeumann": peter})
    assert (text, signers) == (GO_TEXT, ["PeterNeumann"])


def test_go_note_opens_with_both_keys() -> None:
    verifiers = dict(parse_vkey(vkey) for vkey in (PETER_VKEY, ENOCH_VKEY))
    _, signers = open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, verifiers)
    assert signers == ["PeterNeumann", "EnochRoot"]


def test_go_note_without_a_known_key_fails() -> None:
    with pytest.raises(UnknownSignerError):
        open_note(GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG, {})


def test_go_note_with_a_bad_known_signature_fails() -> None:
    _, peter = parse_vkey(PETER_VKEY)
    mangled = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(BadSignatureError):
        open_note(GO_TEXT + "\n" + mangled, {"PeterNeumann": peter})


def test_go_note_with_repeated_signatures_opens() -> None:
    _, peter = parse_vkey(PETER_VKEY)
    note = GO_TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG
    assert open_note(note, {"PeterNeumann": peter}) == (GO_TEXT, ["PeterNeumann"])


@pytest.mark.parametrize(
    "note",
    [  # note_test.go badMsgs
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + "— Bad Name " + PETER_SIG.split(" ")[2],
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + PETER_SIG.replace("—", "-"),
        GO_TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann"),
        GO_TEXT + "\n" + PETER_SIG.replace("x08go/", "x08go_"),
        GO_TEXT + "\n" + "— PeterNeumann AAAA\n",  # a key id and no signature
        GO_TEXT + "\n" + PETER_SIG * 101,
        "\ud800" + GO_TEXT + "\n" + PETER_SIG,
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    _, peter = parse_vkey(PETER_VKEY)
    with pytest.raises(MalformedError):
        open_note(note, {"PeterNeumann": peter})


def test_oversize_note_is_refused() -> None:
    _, peter = parse_vkey(PETER_VKEY)
    note = "x" * MAX_NOTE_BYTES + "\n\n" + PETER_SIG
    with pytest.raises(OversizeError):
        open_note(note, {"PeterNeumann": peter})


def test_every_one_character_change_to_a_vkey_is_refused() -> None:
    # note_test.go TestNewVerifier: each byte incremented in turn.
    for i, ch in enumerate(PETER_VKEY):
        mangled = PETER_VKEY[:i] + chr(ord(ch) + 1) + PETER_VKEY[i + 1 :]
        with pytest.raises(MalformedError):
            parse_vkey(mangled)


@pytest.mark.parametrize(
    "vkey",
    [
        PETER_VKEY[:-1],
        PETER_VKEY + "=",
        "PeterNeumann+c74f20a3",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+ c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        # note_test.go: wrong length key and unknown algorithm, each with a matching key id
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        TD_COSIGNATURE_VKEY,  # a cosigner's key is not a log's
    ],
)
def test_bad_vkeys_are_refused(vkey: str) -> None:
    with pytest.raises(MalformedError):
        parse_vkey(vkey)


def test_vkeys_of_each_signature_type() -> None:
    name, key = parse_vkey(TD_ED25519_VKEY)
    assert name == "TEST"
    cosigner_name, cosigner = parse_vkey(TD_COSIGNATURE_VKEY, SignatureType.COSIGNATURE_V1)
    assert cosigner_name == "remora.n621.de"
    assert encode_vkey(cosigner_name, cosigner, SignatureType.COSIGNATURE_V1) == TD_COSIGNATURE_VKEY
    with pytest.raises(MalformedError):
        parse_vkey(TD_ED25519_VKEY, SignatureType.COSIGNATURE_V1)
    assert encode_vkey(name, key) == TD_ED25519_VKEY


# -- signed notes with our keys --------------------------------------------------

LOG_NAME = "audit.example/log"
LOG_KEY = generate_signing_key()
OTHER_KEY = generate_signing_key()
WITNESS_NAME = "witness.example/w1"
WITNESS_KEY = generate_signing_key()
CHECKPOINT = Checkpoint(LOG_NAME, 8, ROOTS[8])
LOG_VERIFIERS = {LOG_NAME: LOG_KEY.verify_key()}


def signature_lines(note: str) -> str:
    return note[note.rindex("\n\n") + 2 :]


def test_a_signed_checkpoint_opens() -> None:
    note = sign_note(CHECKPOINT.to_text(), LOG_NAME, LOG_KEY)
    assert open_note(note, LOG_VERIFIERS) == (CHECKPOINT.to_text(), [LOG_NAME])
    assert open_checkpoint(note, LOG_NAME, LOG_VERIFIERS) == CHECKPOINT


def test_an_extra_unknown_signature_is_ignored() -> None:
    note = sign_note(CHECKPOINT.to_text(), LOG_NAME, LOG_KEY)
    other = signature_lines(sign_note(CHECKPOINT.to_text(), "someone.else/k", OTHER_KEY))
    after = note + other
    before = note.replace("\n\n", "\n\n" + other)
    assert open_note(after, LOG_VERIFIERS) == (CHECKPOINT.to_text(), [LOG_NAME])
    assert open_note(before, LOG_VERIFIERS) == (CHECKPOINT.to_text(), [LOG_NAME])


def test_a_note_signed_only_by_unknown_keys_fails() -> None:
    note = sign_note(CHECKPOINT.to_text(), "someone.else/k", OTHER_KEY)
    with pytest.raises(UnknownSignerError):
        open_note(note, LOG_VERIFIERS)


def test_a_known_name_with_another_key_is_not_our_key() -> None:
    # Same name, other key, so another key id: C2SP says ignore it, leaving no known signature.
    note = sign_note(CHECKPOINT.to_text(), LOG_NAME, OTHER_KEY)
    with pytest.raises(UnknownSignerError):
        open_note(note, LOG_VERIFIERS)


def test_a_modified_body_fails() -> None:
    note = sign_note(CHECKPOINT.to_text(), LOG_NAME, LOG_KEY)
    with pytest.raises(BadSignatureError):
        open_note(note.replace("\n8\n", "\n9\n", 1), LOG_VERIFIERS)


@PROPERTY
@given(data=st.data())
def test_any_one_character_change_to_a_signed_note_fails(data: st.DataObject) -> None:
    note = sign_note(CHECKPOINT.to_text(), LOG_NAME, LOG_KEY)
    position = data.draw(st.integers(0, len(note) - 1), label="position")
    replacement = data.draw(st.characters(max_codepoint=0x2100), label="replacement")
    assume(replacement != note[position])
    changed = note[:position] + replacement + note[position + 1 :]
    with pytest.raises(PeerError):
        open_checkpoint(changed, LOG_NAME, LOG_VERIFIERS)


def test_open_checkpoint_checks_the_origin_and_the_body() -> None:
    note = sign_note(CHECKPOINT.to_text(), LOG_NAME, LOG_KEY)
    with pytest.raises(MalformedError) as caught:
        open_checkpoint(note, "another.example/log", LOG_VERIFIERS)
    assert caught.value.reason == "wrong_origin"
    not_a_checkpoint = sign_note("hello\n", LOG_NAME, LOG_KEY)
    with pytest.raises(MalformedError):
        open_checkpoint(not_a_checkpoint, LOG_NAME, LOG_VERIFIERS)


def test_the_spec_checkpoint_note_parses_but_has_no_known_signer() -> None:
    note = SPEC_CHECKPOINT + "\n" + SPEC_LOG_SIGNATURE + SPEC_WITNESS_SIGNATURE
    with pytest.raises(UnknownSignerError):
        open_note(note, LOG_VERIFIERS)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("no final newline", LOG_NAME),
        ("tab\there\n", LOG_NAME),
        ("fine\n", ""),
        ("fine\n", "has space"),
        ("fine\n", "has+plus"),
        ("fine\n", "no\u00a0break"),
    ],
)
def test_sign_note_refuses_what_it_cannot_sign(text: str, name: str) -> None:
    with pytest.raises(ValueError) as caught:
        sign_note(text, name, LOG_KEY)
    assert not isinstance(caught.value, CpnError)


# -- cosignatures ----------------------------------------------------------------


def test_cosignature_message_matches_the_spec_example() -> None:
    # c2sp.org/tlog-cosignature, "Ed25519 signed message".
    expected = (
        b"cosignature/v1\n"
        b"time 1679315147\n"
        b"example.com/behind-the-sofa\n"
        b"20852163\n"
        b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    assert cosignature_message(SPEC_CHECKPOINT, 1679315147) == expected


def test_the_spec_witness_signature_carries_the_spec_time() -> None:
    # The example line's blob is key id ‖ u64 time ‖ 64-byte signature, time 1679315147.
    blob = base64.b64decode(SPEC_WITNESS_SIGNATURE.split(" ")[2])
    assert len(blob) == 4 + 8 + 64
    assert int.from_bytes(blob[4:12], "big") == 1679315147


def cosigned_note(time_seconds: int = 1_795_000_000) -> str:
    note = sign_note(CHECKPOINT.to_text(), LOG_NAME, LOG_KEY)
    return note + cosign(CHECKPOINT, WITNESS_NAME, WITNESS_KEY, time_seconds)


def test_cosignature_round_trip() -> None:
    note = cosigned_note(1679315147)
    assert verify_cosignature(note, WITNESS_NAME, WITNESS_KEY.verify_key()) == 1679315147
    assert open_note(note, LOG_VERIFIERS)[1] == [LOG_NAME]  # the log still signs it


def test_cosignature_line_layout() -> None:
    line = cosign(CHECKPOINT, WITNESS_NAME, WITNESS_KEY, 1679315147)
    prefix, name, encoded = line.rstrip("\n").split(" ")
    blob = base64.b64decode(encoded)
    assert (prefix, name, len(blob)) == ("—", WITNESS_NAME, 76)
    id_input = WITNESS_NAME.encode() + b"\n\x04" + WITNESS_KEY.public_raw
    assert blob[:4] == hashlib.sha256(id_input).digest()[:4]
    assert blob[4:12] == (1679315147).to_bytes(8, "big")
    WITNESS_KEY.verify_key().verify(
        blob[12:], cosignature_message(CHECKPOINT.to_text(), 1679315147)
    )


def test_a_cosignature_is_not_a_log_signature() -> None:
    # Type 0x04 gives another key id, so even the same name and key do not open the note.
    note = CHECKPOINT.to_text() + "\n" + cosign(CHECKPOINT, LOG_NAME, LOG_KEY, 1)
    with pytest.raises(UnknownSignerError):
        open_note(note, LOG_VERIFIERS)


def test_an_absent_cosignature_fails() -> None:
    note = sign_note(CHECKPOINT.to_text(), LOG_NAME, LOG_KEY)
    with pytest.raises(UnknownSignerError):
        verify_cosignature(note, WITNESS_NAME, WITNESS_KEY.verify_key())


def test_a_cosignature_by_another_key_fails() -> None:
    with pytest.raises(UnknownSignerError):
        verify_cosignature(cosigned_note(), WITNESS_NAME, OTHER_KEY.verify_key())


def test_a_cosignature_over_another_body_fails() -> None:
    note = cosigned_note().replace("\n8\n", "\n9\n", 1)
    with pytest.raises(BadSignatureError):
        verify_cosignature(note, WITNESS_NAME, WITNESS_KEY.verify_key())


def test_a_cosignature_with_another_time_fails() -> None:
    note = cosigned_note(1000)
    encoded = signature_lines(note).splitlines()[1].split(" ")[2]
    blob = bytearray(base64.b64decode(encoded))
    blob[11] ^= 1  # time 1001
    retimed = note.replace(encoded, base64.b64encode(bytes(blob)).decode())
    with pytest.raises(BadSignatureError):
        verify_cosignature(retimed, WITNESS_NAME, WITNESS_KEY.verify_key())


def test_a_truncated_cosignature_fails() -> None:
    note = cosigned_note()
    encoded = signature_lines(note).splitlines()[1].split(" ")[2]
    short = base64.b64encode(base64.b64decode(encoded)[:-1]).decode()
    with pytest.raises(BadSignatureError):
        verify_cosignature(note.replace(encoded, short), WITNESS_NAME, WITNESS_KEY.verify_key())


@PROPERTY
@given(bit=st.integers(0, 76 * 8 - 1))
def test_any_flipped_bit_in_a_cosignature_fails(bit: int) -> None:
    note = cosigned_note()
    encoded = signature_lines(note).splitlines()[1].split(" ")[2]
    flipped = base64.b64encode(flip_bit(base64.b64decode(encoded), bit)).decode()
    with pytest.raises((BadSignatureError, UnknownSignerError)):
        verify_cosignature(note.replace(encoded, flipped), WITNESS_NAME, WITNESS_KEY.verify_key())


def test_a_cosignature_is_over_a_checkpoint() -> None:
    note = "not a checkpoint\n\n" + cosign(CHECKPOINT, WITNESS_NAME, WITNESS_KEY, 1)
    with pytest.raises(MalformedError):
        verify_cosignature(note, WITNESS_NAME, WITNESS_KEY.verify_key())


@pytest.mark.parametrize("time_seconds", [-1, 2**63])
def test_cosign_refuses_times_outside_the_range(time_seconds: int) -> None:
    with pytest.raises(ValueError, match="time"):
        cosign(CHECKPOINT, WITNESS_NAME, WITNESS_KEY, time_seconds)


def test_the_spec_cosigned_note_parses_but_has_no_cosigner_we_know() -> None:
    note = SPEC_CHECKPOINT + "\n" + SPEC_LOG_SIGNATURE + SPEC_WITNESS_SIGNATURE
    with pytest.raises(UnknownSignerError):
        verify_cosignature(note, "witness.example.com/w1", WITNESS_KEY.verify_key())


def test_verify_key_round_trips_through_a_vkey() -> None:
    vkey = encode_vkey(WITNESS_NAME, WITNESS_KEY.verify_key(), SignatureType.COSIGNATURE_V1)
    name, key = parse_vkey(vkey, SignatureType.COSIGNATURE_V1)
    assert name == WITNESS_NAME
    assert isinstance(key, VerifyKey)
    assert verify_cosignature(cosigned_note(7), name, key) == 7
