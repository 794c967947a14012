"""Canonical JSON (RFC 8785), strict parsing, ids and base64url."""

from __future__ import annotations

import json
import uuid

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from network.core import records
from network.core.errors import MalformedError, OversizeError
from network.core.records import (
    MAX_JSON_DEPTH,
    MAX_SAFE_INTEGER,
    Fields,
    b64decode,
    b64encode,
    canonical,
    canonical_object,
    check_json_value,
    is_message_id,
    message_id_problem,
    new_message_id,
    parse_canonical,
    parse_json,
)

# RFC 8785 §3.2.2 and appendix examples, restricted to what we allow (no floats).
RFC8785_EXAMPLES = [
    (
        {
            "numbers": [333333333, 4.5e0 and 4, 0, 0],
            "string": "€$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
            "literals": [None, True, False],
        },
        b'{"literals":[null,true,false],"numbers":[333333333,4,0,0],'
        b'"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
    ),
    # §3.2.3: sorting by UTF-16 code units, where UTF-8 byte order differs.
    (
        {
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\U0001f600": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis",
        },
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With '
        'Diaeresis","\u20ac":"Euro Sign","\U0001f600":"Emoji: Grinning Face",'
        '"\ufb33":"Hebrew Letter Dalet With Dagesh"}'.encode(),
    ),
]


@pytest.mark.parametrize(("value", "expected"), RFC8785_EXAMPLES)
def test_rfc8785_examples(value: object, expected: bytes) -> None:
    assert canonical(value) == expected
    assert rfc8785.dumps(value) == expected


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=8), children, max_size=5
        )
    ),
    max_leaves=30,
)


@given(json_values)
def test_canonical_is_rfc8785(value: object) -> None:
    assert canonical(value) == rfc8785.dumps(value)


@given(json_values)
def test_canonical_round_trips_through_strict_parsers(value: object) -> None:
    data = canonical(value)
    assert parse_json(data, limit=1 << 20) == value
    assert parse_canonical(data, limit=1 << 20) == value


def test_canonical_object_joins_members_in_key_order() -> None:
    members = {"type": canonical("x"), "body": canonical({"b": 1, "a": [2]}), "header": b"{}"}
    assert canonical_object(members) == canonical(
        {"type": "x", "body": {"b": 1, "a": [2]}, "header": {}}
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "floats are not allowed"),
        (MAX_SAFE_INTEGER + 1, "outside"),
        ({"a": [1, {"b": float("nan")}]}, r"a\[1\]\.b: floats"),
        ({1: "x"}, "not a string"),
        ({"a": {1, 2}}, "set is not a JSON value"),
    ],
)
def test_canonical_refuses_values_outside_the_model(value: object, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        canonical(value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a":1,"a":2}', "duplicate key 'a'"),
        (b'{"a":1.0}', "floats are not allowed"),
        (b'{"a":NaN}', "NaN is not allowed"),
        (b'{"a":9007199254740992}', "outside"),
        (b'{"a":', "not valid JSON"),
        (b'\xff{"a":1}', "not valid UTF-8"),
        (b'\xef\xbb\xbf{"a":1}', "not valid JSON: Unexpected UTF-8 BOM"),  # as json.loads says
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_parse_json_refuses_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        parse_json(data, limit=1 << 20)


def test_parse_json_refuses_oversize_input_before_parsing() -> None:
    with pytest.raises(OversizeError, match="over the limit of 10"):
        parse_json(b'{"a":"' + b"x" * 20 + b'"}', limit=10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"b":1,"a":2}', "not in canonical form"),
        (b'{"a": 1}', "not in canonical form"),
        (b'{"a":"\\u0041"}', "not in canonical form"),
        (b'{"a":1,"a":1}', "duplicate key"),
        (b'{"a":1e0}', "floats"),
    ],
)
def test_parse_canonical_refuses_other_encodings(data: bytes, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        parse_canonical(data, limit=1000)


@given(st.binary(max_size=64))
def test_base64url_round_trip(data: bytes) -> None:
    text = b64encode(data)
    assert "=" not in text
    assert b64decode(text) == data


@pytest.mark.parametrize("text", ["AA==", "A", "AB", "a+b/", "é", 12])
def test_base64url_refuses_non_canonical_text(text: object) -> None:
    with pytest.raises(MalformedError):
        b64decode(text, field="sig")


def test_new_message_id_is_a_time_ordered_uuid7() -> None:
    first = new_message_id(1_700_000_000_000, bytes(10))
    second = new_message_id(1_700_000_000_001, bytes(10))
    parsed = uuid.UUID(first)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == first
    assert first < second
    assert int(first.replace("-", "")[:12], 16) == 1_700_000_000_000


def test_fields_names_the_missing_the_ill_typed_and_the_unknown() -> None:
    f = Fields(json.loads('{"a": "x", "n": true, "extra": 1}'), "doc")
    assert f.str("a") == "x"
    with pytest.raises(MalformedError, match=r"doc\.n: expected an integer, got a boolean"):
        f.int("n")
    with pytest.raises(MalformedError, match=r"doc\.missing: required field is missing"):
        f.str("missing")
    with pytest.raises(MalformedError, match=r"doc\.extra: unknown field"):
        f.done()


@pytest.mark.parametrize("depth", [65, 1000, 5000])
def test_deeply_nested_documents_are_refused_not_a_recursion_error(depth: int) -> None:
    data = b"[" * depth + b"1" + b"]" * depth

    for parse in (parse_json, parse_canonical):
        with pytest.raises(MalformedError):
            parse(data, limit=len(data))


# -- message ids: UUIDv7 at every boundary (issue 14: `=hyperlink(...)` passed for an id) ------

NOT_IDS = [
    '=hyperlink("http://evil.xy")-a-b-c-d',  # 36 characters, four dashes
    "01890a5d-ac96-4774-8a6b-123456789abc".upper(),  # capitals
    "01890a5d-ac96-4774-0a6b-123456789abc",  # variant 0
    "01890a5d-ac96-4774-8a6b-123456789abc"[:-1] + "g",  # not hex
    "01890a5d-ac96-4774-8a6b-123456789abc"[:-1],  # short
    "6b1d2f8e-3f5c-4a43-9d7e-0c8f8f5b2a11",  # a UUIDv4
    "01890a5dac964774-8a6b-123456789abc-abcd",  # dashes moved
    " 01890a5d-ac96-7774-8a6b-123456789ab",  # leading space
    "",
    None,
    12,
]


@pytest.mark.parametrize("value", NOT_IDS)
def test_only_a_canonical_uuid7_is_a_message_id(value: object) -> None:
    assert not is_message_id(value)
    assert message_id_problem(value) is not None


@given(st.integers(0, 2**48 - 1), st.binary(min_size=10, max_size=10))
def test_every_new_message_id_is_a_message_id(now: int, random: bytes) -> None:
    assert is_message_id(new_message_id(now, random))
    assert message_id_problem(new_message_id(now, random)) is None


# Values in and out of the model: floats, integers past ±(2^53-1), non-ASCII keys, and
# nesting past the depth limit, so that both walks meet every kind of refusal.
_ANY_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=40,
)


@given(_ANY_VALUE, st.integers(min_value=0, max_value=MAX_JSON_DEPTH + 1))
def test_the_fast_walk_decides_as_the_named_walk(value: object, depth: int) -> None:
    """check_json_value walks without naming paths and names one only to refuse: the
    verdict (ASCII keys or not, refused or not, and the path named) is the named walk's."""
    try:
        expected: object = records._check_named(value, "", depth)
    except MalformedError as exc:
        expected = str(exc)
    try:
        found: object = check_json_value(value, "", depth)
    except MalformedError as exc:
        found = str(exc)
    assert found == expected
