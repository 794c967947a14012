"""Drafts for `cpn send` and `cpn reply`: files, assignments and the checks run before sending."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from network.cli.drafts import (
    MAX_DRAFT_BYTES,
    apply,
    check_note,
    check_reply,
    check_request,
    parse_assignment,
    read_document,
)
from network.core.errors import BodyError, CpnError
from network.samples import SAMPLE_REQUEST_ID, sample_body

NO_STDIN = io.BytesIO()


def drafted(*assignments: str, start: dict[str, Any] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = start if start is not None else {}
    for text in assignments:
        apply(document, parse_assignment(text))
    return document


def test_assignments_build_nested_objects_and_arrays() -> None:
    document = drafted(
        "case_ref=123",
        "period_days:=90",
        "mla_intended:=true",
        "data.identifiers[0].kind=url",
        "data.identifiers[0].value=https://shop.example/a=b",
        "data.identifiers[1].kind=email",
        'data.categories:=["traffic"]',
    )

    assert document == {
        "case_ref": "123",
        "period_days": 90,
        "mla_intended": True,
        "data": {
            "identifiers": [
                {"kind": "url", "value": "https://shop.example/a=b"},
                {"kind": "email"},
            ],
            "categories": ["traffic"],
        },
    }


def test_an_assignment_replaces_a_value_in_a_file() -> None:
    body = sample_body("preservation")

    document = drafted("data.identifiers[1].value=198.51.100.7", start=body)

    assert document["data"]["identifiers"][1]["value"] == "198.51.100.7"
    assert len(document["data"]["identifiers"]) == 4


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("case_ref", "is not PATH=TEXT or PATH:=JSON"),
        ("data..kind=x", "is not a field path"),
        ("data.identifiers[x]=x", "is not a field path"),
        ("period_days:=ninety", "not valid JSON"),
        ("period_days:=1.5", "floats are not allowed"),
    ],
)
def test_a_malformed_assignment_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_assignment(text)


@pytest.mark.parametrize(
    ("assignments", "field", "problem"),
    [
        (("a[1]=x",), "a[1]", "a has 0 items: [1] would skip some"),
        (("a=x", "a.b=y"), "a.b", "a is not an object"),
        (("a.b=x", "a[0]=y"), "a[0]", "a is not an array"),
    ],
)
def test_an_assignment_that_does_not_fit_names_its_path(
    assignments: tuple[str, ...], field: str, problem: str
) -> None:
    with pytest.raises(BodyError) as caught:
        drafted(*assignments)

    assert caught.value.field == field
    assert caught.value.problem == problem


def test_a_toml_file_becomes_the_json_model(tmp_path: Path) -> None:
    path = tmp_path / "request.toml"
    path.write_text(
        'to = "DEU"\n[body]\nmla_date = 2027-01-12\nat = 2026-11-20T14:03:00Z\nn = 90\n',
        encoding="utf-8",
    )

    document = read_document(str(path), NO_STDIN)

    assert document == {
        "to": "DEU",
        "body": {"mla_date": "2027-01-12", "at": "2026-11-20T14:03:00+00:00", "n": 90},
    }


def test_stdin_is_json_when_it_starts_with_a_brace_and_toml_otherwise() -> None:
    as_json = read_document("-", io.BytesIO(b' {"to": "DEU"}'))
    as_toml = read_document("-", io.BytesIO(b'to = "DEU"\n'))

    assert as_json == as_toml == {"to": "DEU"}


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("dup.json", b'{"to": "DEU", "to": "FRA"}', "duplicate key 'to'"),
        ("list.json", b"[1]", "must hold a JSON object"),
        ("bad.toml", b"to = ", "not valid TOML"),
        ("big.json", b" " * (MAX_DRAFT_BYTES + 1), "over the limit"),
        ("latin1.toml", b'to = "\xe9"', "not valid UTF-8"),
    ],
)
def test_a_bad_file_is_refused_naming_it(
    tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(CpnError, match=problem) as caught:
        read_document(str(path), NO_STDIN)

    assert name in str(caught.value)


def test_a_request_is_checked_as_the_node_checks_it() -> None:
    good = {"to": "DEU", "type": "emergency", "priority": "flash", "body": sample_body("emergency")}
    body = sample_body("emergency")
    del body["risk"]

    check_request(good)
    with pytest.raises(BodyError, match=r"^priority: missing$"):
        check_request({k: v for k, v in good.items() if k != "priority"})
    with pytest.raises(BodyError, match=r"^to: must be a contact point id"):
        check_request({**good, "to": "Germany"})
    with pytest.raises(BodyError, match=r"^body.risk: required field is missing$"):
        check_request({**good, "body": body})


def test_a_reply_and_a_note_are_checked_as_the_node_checks_them() -> None:
    check_reply(SAMPLE_REQUEST_ID, {"status": "refused", "refusal_ground": "sovereignty"})
    check_note(SAMPLE_REQUEST_ID, None)
    with pytest.raises(BodyError, match=r"^refusal_ground: not allowed when status is preserved"):
        check_reply(
            SAMPLE_REQUEST_ID,
            {"status": "preserved", "preserved_until": "2027-02-18", "refusal_ground": "security"},
        )
    with pytest.raises(BodyError, match=r"^in_reply_to: is the message replied to"):
        check_reply(SAMPLE_REQUEST_ID, {"status": "completed", "in_reply_to": SAMPLE_REQUEST_ID})
    with pytest.raises(BodyError, match=r"^ID: must be a message id"):
        check_reply("42", {"status": "completed"})
    with pytest.raises(BodyError, match=r"^note: must not be empty$"):
        check_note(SAMPLE_REQUEST_ID, "  ")


def test_a_request_to_several_countries_is_checked_for_each() -> None:
    request = {"type": "preservation", "priority": "urgent", "body": sample_body("preservation")}

    check_request({**request, "to": ["DEU", "IRL"]})
    with pytest.raises(BodyError) as refused:
        check_request({**request, "to": ["DEU", "irl"]})

    assert refused.value.field == "to[1]"
