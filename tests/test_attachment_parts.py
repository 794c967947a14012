"""Files split into parts and joined again (network/core/attachments.py): pure, with
hypothesis: any file, its parts in any order and some twice, joins to itself; a part
missing, changed or moved is named, never a wrong file given."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from network.core.attachments import (
    DEFAULT_LIMITS,
    PART_BYTES,
    AttachmentFile,
    AttachmentLimits,
    describe,
    file_name_problem,
    join_parts,
    parts_for,
    split,
)
from network.core.bodies import parse_body
from network.core.errors import BodyError
from network.core.records import b64encode
from network.samples import sample_body

sizes = st.integers(min_value=1, max_value=4 * PART_BYTES + 7)


def _signed(data: bytes) -> tuple[int, str, int]:
    return len(data), b64encode(hashlib.sha256(data).digest()), parts_for(len(data))


@settings(max_examples=60, deadline=None)
@given(size=sizes, order=st.randoms(use_true_random=False), twice=st.sets(st.integers(0, 4)))
def test_any_file_joins_from_its_parts_in_any_order(
    size: int, order: object, twice: set[int]
) -> None:
    data = bytes(i % 251 for i in range(size))
    parts = list(enumerate(split(data)))
    assert len(parts) == parts_for(size)
    assert all(len(chunk) <= PART_BYTES for _, chunk in parts)
    parts += [p for p in parts if p[0] in twice]  # the same part again, as a resend brings it
    order.shuffle(parts)  # type: ignore[attr-defined]
    found: dict[int, bytes] = {}
    for number, chunk in parts:
        found.setdefault(number, chunk)
    length, digest, count = _signed(data)
    assert join_parts(found, size=length, sha256=digest, count=count) == data


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=PART_BYTES + 1, max_value=3 * PART_BYTES), data=st.data())
def test_a_part_missing_changed_or_swapped_never_makes_a_file(
    size: int, data: st.DataObject
) -> None:
    original = bytes(i % 253 for i in range(size))
    length, digest, count = _signed(original)
    parts = dict(enumerate(split(original)))
    victim = data.draw(st.integers(0, count - 1))
    how = data.draw(st.sampled_from(["missing", "changed", "swapped"]))
    if how == "missing":
        del parts[victim]
        with pytest.raises(BodyError, match=f"part {victim} next"):
            join_parts(parts, size=length, sha256=digest, count=count)
        return
    if how == "changed":
        chunk = bytearray(parts[victim])
        chunk[data.draw(st.integers(0, len(chunk) - 1))] ^= 0x01
        parts[victim] = bytes(chunk)
    else:
        other = (victim + 1) % count
        parts[victim], parts[other] = parts[other], parts[victim]
    with pytest.raises(BodyError):
        join_parts(parts, size=length, sha256=digest, count=count)


def test_a_body_that_miscounts_its_parts_is_refused() -> None:
    described = describe([AttachmentFile("a.txt", "text/plain", b"x" * 100)], DEFAULT_LIMITS)[0]
    body = {"of": "0192f3a4-4444-7abc-8def-0123456789ab", "attachment": 0, "part": 0, "data": "eA"}
    assert parse_body("attachment_part", body)
    wrong = {**described, "parts": 2}
    request = sample_body("preservation", attachments=[wrong])
    with pytest.raises(
        BodyError, match=r"attachments\[0\]\.parts: a file of 100 bytes travels in 1"
    ):
        parse_body("preservation", request)


@pytest.mark.parametrize(
    "name", ["", " a.pdf", "a/b.pdf", "..", "a\\b", "a\x00.pdf", "x\u202etxt.exe", "é" * 200]
)
def test_a_file_name_that_is_not_plain_is_named(name: str) -> None:
    assert file_name_problem(name) is not None


def test_limits_apply_per_file_and_per_message() -> None:
    limits = AttachmentLimits(max_file=10, max_message=15)
    with pytest.raises(BodyError, match=r"attachments\[0\]\.size: 11 bytes"):
        describe([AttachmentFile("a.txt", "text/plain", b"x" * 11)], limits)
    files = [AttachmentFile(f"{i}.txt", "text/plain", b"x" * 8) for i in range(2)]
    with pytest.raises(BodyError, match="16 bytes in all"):
        describe(files, limits)
