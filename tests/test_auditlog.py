"""The audit entry's one encoding: RFC 8785 canonical JSON, and the fast paths that fill its
template (the store's `stored_entry`, the verifier's `RowHasher`) byte for byte."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from network.core import auditlog
from network.core.auditlog import (
    AuditEntry,
    HashedRows,
    RowHasher,
    checkpoint_origin,
    checkpoint_time,
    dated_checkpoint,
    entry_bytes,
    entry_leaf,
    stored_detail,
    stored_entry,
    stored_leaf,
    witness_name,
)
from network.core.errors import MalformedError
from network.core.records import MAX_SAFE_INTEGER, canonical
from network.core.tlog import Checkpoint, leaf_hash, parse_checkpoint
from network.node import store

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any text canonical JSON can hold: unicode of every plane, C0 and C1 controls, quotes and
# backslashes, but no lone surrogates (they are not Unicode scalar values).
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
details = st.dictionaries(texts, json_values, max_size=5)
times = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
entries = st.tuples(times, texts, texts, st.none() | texts, details)


def definition(
    time: int, actor: str, action: str, message_id: str | None, detail: dict[str, Any]
) -> bytes:
    """RFC 8785 of the whole entry object, by the reference library: what the leaf covers."""
    return rfc8785.dumps(
        {"action": action, "actor": actor, "detail": detail, "message": message_id, "time": time}
    )


def rows_of(
    items: list[tuple[int, str, str, str | None, dict[str, Any]]], first_seq: int = 1
) -> list[tuple[Any, ...]]:
    """Audit rows as the verifier's query gives them, each with its true stored leaf."""
    return [
        (seq, t, actor, action, mid, canonical(detail), entry_leaf(t, actor, action, mid, detail))
        for seq, (t, actor, action, mid, detail) in enumerate(items, start=first_seq)
    ]


# -- the definition ------------------------------------------------------------------


def test_an_entry_has_known_bytes_and_leaf() -> None:
    detail = {"to": "DEU", "attempt": 1, "é": ["\n", None, True]}

    data = entry_bytes(1_795_000_000_000, "node:FRA", "sent", "01a2-x", detail)

    assert data == (
        b'{"action":"sent","actor":"node:FRA","detail":{"attempt":1,"to":"DEU",'
        b'"\xc3\xa9":["\\n",null,true]},"message":"01a2-x","time":1795000000000}'
    )
    assert entry_leaf(1_795_000_000_000, "node:FRA", "sent", "01a2-x", detail) == (
        hashlib.sha256(b"\x00" + data).digest()
    )


@PROPERTY
@given(entries)
def test_entry_bytes_are_the_rfc8785_encoding_of_the_entry(
    entry: tuple[int, str, str, str | None, dict[str, Any]],
) -> None:
    assert entry_bytes(*entry) == definition(*entry)
    assert entry_leaf(*entry) == leaf_hash(definition(*entry))


@PROPERTY
@given(entries)
def test_what_the_store_keeps_is_the_canonical_detail_and_the_entrys_leaf(
    entry: tuple[int, str, str, str | None, dict[str, Any]],
) -> None:
    detail_json, leaf = stored_entry(*entry)
    time, actor, action, message_id, detail = entry

    assert detail_json == rfc8785.dumps(detail) == stored_detail(detail)
    assert leaf == leaf_hash(definition(*entry))
    assert stored_leaf(time, actor, action, message_id, detail_json) == leaf  # as at commit


@pytest.mark.parametrize("time", [MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1])
def test_a_time_canonical_json_cannot_hold_is_refused(time: int) -> None:
    with pytest.raises(MalformedError):
        entry_bytes(time, "a", "b", None, {})


@pytest.mark.parametrize(
    "entry",
    [
        (1, "\ud800", "sent", None),  # a lone surrogate in each string
        (1, "node:FRA", "se\udfffnt", None),
        (1, "node:FRA", "sent", "01a2-\ud800"),
    ],
)
def test_an_entry_with_a_lone_surrogate_is_refused(entry: tuple[int, str, str, str]) -> None:
    with pytest.raises(MalformedError, match="cannot encode as canonical JSON"):
        entry_bytes(*entry, {})


def test_the_names_entries_are_signed_under() -> None:
    assert checkpoint_origin("FRA") == "cpn/audit/FRA"
    assert witness_name("DEU") == "cpn/witness/DEU"


def test_the_store_hands_out_the_one_entry_record() -> None:
    assert store.AuditEntry is AuditEntry
    assert AuditEntry("node:FRA", "queued") == AuditEntry("node:FRA", "queued", None, None)


# -- the verifier's fast path ----------------------------------------------------------


@PROPERTY
@given(
    pool=st.lists(entries, min_size=1, max_size=6),
    picks=st.lists(st.integers(0, 5), min_size=1, max_size=30),
    cut=st.integers(0, 30),
)
def test_the_row_hasher_gives_the_definitions_leaves(
    pool: list[tuple[int, str, str, str | None, dict[str, Any]]], picks: list[int], cut: int
) -> None:
    # Entries drawn from a small pool repeat actors, actions and message ids, as a log does,
    # so the hasher's caches are used; the rows come in two batches into one result.
    items = [pool[i % len(pool)] for i in picks]
    rows = rows_of(items, first_seq=7)
    hasher = RowHasher()

    hashed = hasher.hash(rows[:cut])
    hasher.hash(rows[cut:], hashed)

    assert hashed.leaves == [leaf_hash(definition(*item)) for item in items]
    assert (hashed.first, hashed.last) == (7, 6 + len(items))
    assert (hashed.gaps, hashed.mismatches) == ([], [])


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (1, None),  # a time canonical JSON cannot hold, as the verifier's query gives it
        (2, 3),  # an actor that is not text
        (3, b"sent"),  # an action that is not text
        (4, 12),  # a message id that is not text
        (5, "{}"),  # a detail that is not bytes
    ],
)
def test_a_row_of_unexpected_types_is_a_mismatch_without_a_leaf(column: int, value: object) -> None:
    row = list(rows_of([(1, "node:FRA", "sent", "m", {})])[0])
    row[column] = value

    hashed = RowHasher().hash([row])

    assert hashed.leaves == [b""]
    assert hashed.mismatches == [(0, 1, row[6])]


def test_the_row_hasher_notes_gaps_and_leaves_that_are_not_the_stored_ones() -> None:
    rows = rows_of([(1, "a", "b", None, {"n": n}) for n in range(5)])
    rows[1] = (*rows[1][:6], b"\x00" * 32)  # a stored leaf that is not this row's
    del rows[3]  # seq 4 deleted

    hashed = RowHasher().hash(rows)

    assert hashed.gaps == [(3, 4, 5)]
    assert hashed.mismatches == [(1, 2, b"\x00" * 32)]
    assert hashed.leaves[1] == entry_leaf(1, "a", "b", None, {"n": 1})


def test_the_row_hasher_counts_a_gap_across_batches() -> None:
    rows = rows_of([(1, "a", "b", None, {}) for _ in range(4)])
    hasher = RowHasher()
    hashed = hasher.hash(rows[:2])

    hasher.hash(rows[3:], hashed)

    assert hashed.gaps == [(2, 3, 4)]
    assert isinstance(hashed, HashedRows)


def test_the_module_exports_what_it_defines() -> None:
    assert set(auditlog.__all__) <= set(dir(auditlog))


def test_a_checkpoint_carries_its_time_in_its_one_extension_line() -> None:
    checkpoint = dated_checkpoint("cpn/audit/FRA", 3, bytes(32), 1_795_000_000_123)

    assert checkpoint.to_text().split("\n")[3] == "time 1795000000123"
    assert checkpoint_time(parse_checkpoint(checkpoint.to_text())) == 1_795_000_000_123
    assert checkpoint_time(Checkpoint("cpn/audit/FRA", 3, bytes(32))) is None  # from before


@pytest.mark.parametrize(
    "lines",
    [("time",), ("time x",), ("time 01",), ("time -1",), ("time 1", "time 2"), ("when 1",)],
)
def test_a_checkpoint_time_line_not_as_written_is_refused(lines: tuple[str, ...]) -> None:
    with pytest.raises(MalformedError):
        checkpoint_time(Checkpoint("cpn/audit/FRA", 3, bytes(32), lines))


def test_a_checkpoint_time_outside_what_json_holds_is_our_bug() -> None:
    with pytest.raises(ValueError, match="outside"):
        dated_checkpoint("cpn/audit/FRA", 3, bytes(32), MAX_SAFE_INTEGER + 1)
