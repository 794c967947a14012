"""network.core.bodies: the round trip for every type, one test per refusal, and properties."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from network.core.bodies import (
    BODY_TYPES,
    INTERIM_ANSWERS,
    MAX_ITEMS,
    MAX_LINE,
    MAX_TEXT,
    REFERENCES,
    FollowUpAction,
    Identifier,
    IdentifierKind,
    Preservation,
    RefusalGround,
    Response,
    ResponseStatus,
    body_to_json,
    body_type,
    check_answer,
    check_response,
    follow_up_problem,
    parse_body,
    reference_problem,
)
from network.core.errors import BodyError
from network.core.records import MessageId, MessageType, canonical
from network.samples import SAMPLE_REQUEST_ID, sample_body


def refusal(message_type: MessageType | str, body: object) -> BodyError:
    with pytest.raises(BodyError) as info:
        parse_body(message_type, body)
    return info.value


def preservation_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = sample_body(MessageType.PRESERVATION)["data"]
    data.update(overrides)
    return data


# --- Valid bodies ---


@pytest.mark.parametrize("message_type", list(MessageType))
def test_round_trip(message_type: MessageType) -> None:
    body = parse_body(message_type, sample_body(message_type))

    again = parse_body(message_type, body_to_json(body))

    assert again == body
    assert body_to_json(body) == sample_body(message_type)
    assert body_type(body) is message_type
    assert type(body) is BODY_TYPES[message_type]


def test_body_types_cover_every_message_type() -> None:
    assert set(BODY_TYPES) == set(MessageType)


def test_parse_builds_typed_records() -> None:
    body = parse_body("preservation", sample_body("preservation"))

    assert isinstance(body, Preservation)
    assert body.period_days == 90
    assert body.authority.second_contact is not None
    assert body.data.identifiers[1] == Identifier(
        kind=IdentifierKind.IP_ADDRESS,
        value="203.0.113.45",
        timestamp="2026-11-20T14:03:00Z",
        time_zone="UTC",
    )
    assert isinstance(body.data.identifiers, tuple)


def test_to_json_omits_none_and_gives_json_strings() -> None:
    body = parse_body("preservation", sample_body("preservation", custodian=None))

    result = body_to_json(body)

    assert "custodian" not in result
    assert "extends" not in result
    assert isinstance(result["status"], str)  # a StrEnum member is a str
    assert json.dumps(result["data"]["categories"]) == '["subscriber", "traffic", "content"]'
    assert type(result["data"]["identifiers"]) is list
    assert canonical(result) == rfc8785.dumps(json.loads(json.dumps(result)))


def test_optional_fields_may_be_absent() -> None:
    authority = sample_body("preservation")["authority"]
    for key in ("unit", "office_hours", "reply_channel", "second_contact"):
        del authority[key]

    body = parse_body("preservation", sample_body("preservation", authority=authority))

    assert isinstance(body, Preservation)
    assert body.authority.unit is None


def test_extension_with_extends_is_accepted() -> None:
    body = parse_body(
        "preservation", sample_body("preservation", status="extension", extends=SAMPLE_REQUEST_ID)
    )

    assert isinstance(body, Preservation)
    assert body.extends == SAMPLE_REQUEST_ID


def test_refused_with_ground_is_accepted() -> None:
    body = parse_body(
        "response",
        {"in_reply_to": SAMPLE_REQUEST_ID, "status": "refused", "refusal_ground": "sovereignty"},
    )

    assert isinstance(body, Response)
    assert body.status is ResponseStatus.REFUSED


# --- Refusals, one per reason ---


def test_missing_offence() -> None:
    body = sample_body("preservation")
    del body["offence"]

    error = refusal("preservation", body)

    assert (error.field, error.problem) == ("offence", "required field is missing")


def test_period_below_sixty_days() -> None:
    error = refusal("preservation", sample_body("preservation", period_days=59))

    assert (error.field, error.problem) == ("period_days", "must be at least 60")


def test_period_above_a_year() -> None:
    error = refusal("preservation", sample_body("preservation", period_days=366))

    assert (error.field, error.problem) == ("period_days", "must be at most 365")


def test_period_as_string() -> None:
    error = refusal("preservation", sample_body("preservation", period_days="90"))

    assert (error.field, error.problem) == ("period_days", "must be an integer, got string")


def test_bool_where_int_expected() -> None:
    error = refusal("preservation", sample_body("preservation", period_days=True))

    assert (error.field, error.problem) == ("period_days", "must be an integer, got boolean")


def test_int_where_bool_expected() -> None:
    error = refusal("preservation", sample_body("preservation", mla_intended=1))

    assert (error.field, error.problem) == ("mla_intended", "must be a boolean, got integer")


def test_null_for_required_field() -> None:
    error = refusal("preservation", sample_body("preservation", offence=None))

    assert (error.field, error.problem) == ("offence", "must be a string, got null")


def test_unknown_field() -> None:
    error = refusal("preservation", sample_body("preservation", priority="flash"))

    assert (error.field, error.problem) == ("priority", "unknown field")


def test_unknown_nested_field() -> None:
    authority = sample_body("preservation")["authority"] | {"fax": "+33 1 99 00 42 19"}

    error = refusal("preservation", sample_body("preservation", authority=authority))

    assert (error.field, error.problem) == ("authority.fax", "unknown field")


def test_unknown_type() -> None:
    error = refusal("subpoena", sample_body("preservation"))

    assert error.field == "type"
    assert "preservation" in error.problem


def test_enum_value_outside_the_set() -> None:
    error = refusal("preservation", sample_body("preservation", status="renewal"))

    assert (error.field, error.problem) == ("status", "must be one of: new, extension")


def test_extension_without_extends() -> None:
    error = refusal("preservation", sample_body("preservation", status="extension"))

    assert (error.field, error.problem) == ("extends", "required when status is extension")


def test_new_with_extends() -> None:
    error = refusal("preservation", sample_body("preservation", extends=SAMPLE_REQUEST_ID))

    assert (error.field, error.problem) == ("extends", "not allowed when status is new")


@pytest.mark.parametrize(
    "message_id",
    ["not-a-uuid", SAMPLE_REQUEST_ID.upper(), SAMPLE_REQUEST_ID.replace("-", ""), ""],
)
def test_bad_message_id(message_id: str) -> None:
    error = refusal("mla_notice", sample_body("mla_notice", follows=message_id))

    assert error.field == "follows"


def test_ip_identifier_without_timestamp() -> None:
    identifiers = [
        {"kind": "email", "value": "a@b.example"},
        {"kind": "ip_address", "value": "1.2.3.4"},
    ]

    error = refusal(
        "preservation",
        sample_body("preservation", data=preservation_data(identifiers=identifiers)),
    )

    assert error.field == "data.identifiers[1].timestamp"
    assert error.problem.startswith("required for an IP address")


@pytest.mark.parametrize(
    "timestamp", ["2026-11-20T14:03:00", "2026-11-20 14:03:00Z", "2026-13-20T14:03:00Z"]
)
def test_bad_timestamp(timestamp: str) -> None:
    identifiers = [{"kind": "url", "value": "https://x.example/", "timestamp": timestamp}]

    error = refusal(
        "preservation",
        sample_body("preservation", data=preservation_data(identifiers=identifiers)),
    )

    assert error.field == "data.identifiers[0].timestamp"


def test_nested_path_is_reported() -> None:
    identifiers = [
        {"kind": "ip_address", "value": "203.0.113.300", "timestamp": "2026-11-20T14:03:00Z"}
    ]

    error = refusal(
        "preservation",
        sample_body("preservation", data=preservation_data(identifiers=identifiers)),
    )

    assert (error.field, error.problem) == (
        "data.identifiers[0].value",
        "must be an IP address when kind is ip_address",
    )


@pytest.mark.parametrize(
    "email", ["ofac.interieur.example", "a@b@c.example", "@b.example", "a@", "a b@c.example"]
)
def test_bad_email(email: str) -> None:
    authority = sample_body("preservation")["authority"] | {"email": email}

    error = refusal("preservation", sample_body("preservation", authority=authority))

    assert error.field == "authority.email"
    assert error.problem.startswith("must be an e-mail address")


def test_bad_email_in_second_contact() -> None:
    authority = sample_body("preservation")["authority"]
    authority["second_contact"]["email"] = "nobody"

    error = refusal("preservation", sample_body("preservation", authority=authority))

    assert error.field == "authority.second_contact.email"


@pytest.mark.parametrize(
    ("time_zone", "problem"),
    [
        ("Europe Paris", "must be an IANA time zone name"),
        ("+01:00", "must be an IANA time zone name"),
        ("", "must not be empty"),
        # Shaped like a zone, and accepted until the tz database was asked (issue 19).
        ("Mars/Olympus", "Mars/Olympus is not in the IANA time zone database"),
        ("Europe/Pariss", "not in the IANA time zone database"),
    ],
)
def test_bad_time_zone(time_zone: str, problem: str) -> None:
    authority = sample_body("preservation")["authority"] | {"time_zone": time_zone}

    error = refusal("preservation", sample_body("preservation", authority=authority))

    assert error.field == "authority.time_zone" and problem in error.problem


@pytest.mark.parametrize("time_zone", ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires"])
def test_iana_time_zones_are_taken(time_zone: str) -> None:
    authority = sample_body("preservation")["authority"] | {"time_zone": time_zone}

    parse_body("preservation", sample_body("preservation", authority=authority))


@pytest.mark.parametrize(
    "mla_date", ["12/01/2027", "2027-02-30", "2027-1-12", "2027-01-12T00:00:00Z"]
)
def test_bad_date(mla_date: str) -> None:
    error = refusal("mla_notice", sample_body("mla_notice", mla_date=mla_date))

    assert error.field == "mla_date"
    assert error.problem.startswith("must be a date as YYYY-MM-DD")


def test_preserved_without_preserved_until() -> None:
    body = sample_body("response")
    del body["preserved_until"]

    error = refusal("response", body)

    assert (error.field, error.problem) == (
        "preserved_until",
        "required when status is preserved (or, answering an MLA notice, until_mla_decision"
        " with mla_received_on)",
    )


def test_refused_without_refusal_ground() -> None:
    body = {"in_reply_to": SAMPLE_REQUEST_ID, "status": "refused"}

    error = refusal("response", body)

    assert (error.field, error.problem) == ("refusal_ground", "required when status is refused")


def test_refusal_ground_on_preserved() -> None:
    error = refusal("response", sample_body("response", refusal_ground="security"))

    assert (error.field, error.problem) == (
        "refusal_ground",
        "not allowed when status is preserved",
    )


def test_preserved_until_on_not_possible() -> None:
    body = sample_body("response", status="not_possible")
    del body["provider_reference"]

    error = refusal("response", body)

    assert (error.field, error.problem) == (
        "preserved_until",
        "not allowed when status is not_possible",
    )


def test_needs_info_without_missing() -> None:
    body = {"in_reply_to": SAMPLE_REQUEST_ID, "status": "needs_info"}

    error = refusal("response", body)

    assert (error.field, error.problem) == ("missing", "required when status is needs_info")


def test_too_long_line() -> None:
    error = refusal("preservation", sample_body("preservation", case_ref="x" * (MAX_LINE + 1)))

    assert (error.field, error.problem) == (
        "case_ref",
        "must be at most 200 bytes in UTF-8, got 201",
    )


def test_too_long_text() -> None:
    error = refusal("preservation", sample_body("preservation", summary="x" * (MAX_TEXT + 1)))

    assert (error.field, error.problem) == (
        "summary",
        "must be at most 20000 bytes in UTF-8, got 20001",
    )


def test_text_limits_count_bytes_as_the_body_cap_does() -> None:
    # Issue 19: limits counted characters, so Cyrillic text met the body's 64 KiB cap (in
    # bytes) long before its field's limit, and the refusal named no field.
    fits = "д" * (MAX_TEXT // 2)  # two bytes each
    parse_body("preservation", sample_body("preservation", facts=fits))

    error = refusal("preservation", sample_body("preservation", facts=fits + "д"))

    assert (error.field, error.problem) == (
        "facts",
        f"must be at most {MAX_TEXT} bytes in UTF-8, got {MAX_TEXT + 2} ({MAX_TEXT // 2 + 1}"
        " characters)",
    )
    line = refusal("preservation", sample_body("preservation", case_ref="案" * 67))
    assert (line.field, line.problem) == (
        "case_ref",
        "must be at most 200 bytes in UTF-8, got 201 (67 characters)",
    )


def test_blank_string() -> None:
    error = refusal("preservation", sample_body("preservation", necessity=" \n\t "))

    assert (error.field, error.problem) == ("necessity", "must not be empty")


def test_line_break_in_a_line() -> None:
    error = refusal("preservation", sample_body("preservation", case_ref="OFAC\n2026"))

    assert (error.field, error.problem) == (
        "case_ref",
        "must not contain line breaks, control characters or bidirectional formatting characters",
    )


@pytest.mark.parametrize("mark", ["\u202e", "\u202a", "\u2066", "\u2069"])
def test_bidirectional_formatting_in_a_line_is_refused(mark: str) -> None:
    # Issue 19: "FR-2026-\u202e4200" shows as another reference than the one sent.
    error = refusal("preservation", sample_body("preservation", case_ref=f"FR-2026-{mark}4200"))

    assert error.field == "case_ref" and "bidirectional" in error.problem


def test_a_preservation_request_states_that_mla_will_follow() -> None:
    # Issue 19: Budapest 29(2)(f); `mla_intended: false` was accepted.
    error = refusal("preservation", sample_body("preservation", mla_intended=False))

    assert error.field == "mla_intended" and "29(2)(f)" in error.problem


def test_newline_allowed_in_text() -> None:
    body = parse_body("preservation", sample_body("preservation", facts="One.\nTwo.\n\tThree."))

    assert isinstance(body, Preservation)


def test_lone_surrogate() -> None:
    error = refusal("preservation", sample_body("preservation", facts="broken \ud800 text"))

    assert error.field == "facts"


def test_too_many_list_items() -> None:
    providers = [f"Provider {i}" for i in range(MAX_ITEMS + 1)]

    error = refusal("traffic_disclosure", sample_body("traffic_disclosure", providers=providers))

    assert (error.field, error.problem) == ("providers", "must have at most 100 items, got 101")


def test_empty_list() -> None:
    error = refusal(
        "preservation", sample_body("preservation", data=preservation_data(categories=[]))
    )

    assert (error.field, error.problem) == ("data.categories", "must have at least 1 item")


def test_repeated_category() -> None:
    categories = ["subscriber", "traffic", "subscriber"]

    error = refusal(
        "preservation", sample_body("preservation", data=preservation_data(categories=categories))
    )

    assert (error.field, error.problem) == ("data.categories[2]", "repeats subscriber")


def test_list_item_of_wrong_kind() -> None:
    error = refusal("traffic_disclosure", sample_body("traffic_disclosure", providers=["A", 7]))

    assert (error.field, error.problem) == ("providers[1]", "must be a string, got integer")


@pytest.mark.parametrize(
    ("value", "kind"), [([], "array"), ("preserve", "string"), (None, "null"), (3, "integer")]
)
def test_non_dict_body(value: object, kind: str) -> None:
    error = refusal("preservation", value)

    assert (error.field, error.problem) == ("", f"must be an object, got {kind}")


def test_nested_record_not_an_object() -> None:
    error = refusal("preservation", sample_body("preservation", handling=[True, True, True]))

    assert (error.field, error.problem) == ("handling", "must be an object, got array")


def test_direct_construction_checks_cross_field_rules() -> None:
    with pytest.raises(BodyError) as info:
        Response(in_reply_to=MessageId(SAMPLE_REQUEST_ID), status=ResponseStatus.NEEDS_INFO)

    assert info.value.field == "missing"


# --- Properties ---


def required_fields(message_type: MessageType) -> list[str]:
    return [
        field.name
        for field in dataclasses.fields(BODY_TYPES[message_type])
        if field.default is dataclasses.MISSING
    ]


def key_paths(value: object, path: str = "") -> list[str]:
    """The dotted path of every object member in a JSON value, nested ones included."""
    paths: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            step = f"{path}.{key}" if path else key
            paths.append(step)
            paths.extend(key_paths(item, step))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths.extend(key_paths(item, f"{path}[{index}]"))
    return paths


@given(data=st.data())
def test_removing_a_required_top_level_field_names_it(data: st.DataObject) -> None:
    message_type = data.draw(st.sampled_from(list(MessageType)))
    name = data.draw(st.sampled_from(required_fields(message_type)))
    body = sample_body(message_type)
    del body[name]

    error = refusal(message_type, body)

    assert error.field == name
    assert error.problem == "required field is missing"


def remove(body: dict[str, Any], dotted: str) -> None:
    """Delete the member at a dotted path such as `data.identifiers[1].timestamp`."""
    target: Any = body
    *parents, last = dotted.replace("[", ".[").split(".")
    for step in parents:
        target = target[int(step[1:-1])] if step.startswith("[") else target[step]
    del target[last]


@given(data=st.data())
def test_removing_any_field_anywhere_parses_or_names_it(data: st.DataObject) -> None:
    message_type = data.draw(st.sampled_from(list(MessageType)))
    body = sample_body(message_type)
    dotted = data.draw(st.sampled_from(key_paths(body)))
    remove(body, dotted)

    named: str | None
    try:
        parsed = parse_body(message_type, body)
    except BodyError as error:
        named = error.field
    else:
        named = None
        assert parse_body(message_type, body_to_json(parsed)) == parsed

    assert named in (None, dotted)


@pytest.mark.parametrize("request_type", list(MessageType))
@pytest.mark.parametrize("status", list(ResponseStatus))
def test_each_request_has_its_own_lawful_answers(
    request_type: MessageType, status: ResponseStatus
) -> None:
    lawful = {
        MessageType.PRESERVATION: {
            "preserved", "partially_preserved", "not_possible", "refused", "risk_notice",
            "needs_info", "held_elsewhere", "conditions_not_met", "transferred",
            "awaiting_order",
        },
        MessageType.MLA_NOTICE: {"preserved", "not_possible", "needs_info", "completed"},
        MessageType.ACKNOWLEDGEMENT: set(),
        MessageType.RESPONSE: set(),
        MessageType.FOLLOW_UP: set(),
        MessageType.ATTACHMENT_PART: set(),
    }.get(
        request_type,
        {"completed", "not_possible", "refused", "needs_info", "held_elsewhere",
         "conditions_not_met", "transferred", "awaiting_order", "partially_completed"},
    )  # fmt: skip

    if status in lawful:
        check_answer(request_type, status)
    else:
        with pytest.raises(BodyError, match=f"status: {status} does not answer") as refused:
            check_answer(request_type, status)
        assert refused.value.field == "status"


@pytest.mark.parametrize(
    ("status", "note", "cited"),
    [
        # Budapest 29(6): a bare "risk_notice" left the requester nothing to decide on.
        ("risk_notice", "The provider notifies its users of requests.", "Budapest 29(6)"),
        ("conditions_not_met", "We cannot keep the subject from being told.", "28(3)"),
    ],
)
def test_an_answer_the_requester_must_decide_on_says_why(
    status: str, note: str, cited: str
) -> None:
    bare = {"in_reply_to": SAMPLE_REQUEST_ID, "status": status}

    error = refusal("response", bare)
    parse_body("response", {**bare, "note": note})

    assert error.field == "note" and cited in error.problem


def test_dual_criminality_is_a_ground_of_refusal() -> None:
    body = {"in_reply_to": SAMPLE_REQUEST_ID, "status": "refused"}

    typed = parse_body("response", {**body, "refusal_ground": "dual_criminality"})

    assert typed.refusal_ground is RefusalGround.DUAL_CRIMINALITY  # type: ignore[attr-defined]


def test_data_held_in_another_state_names_it() -> None:
    body = {"in_reply_to": SAMPLE_REQUEST_ID, "status": "held_elsewhere"}

    missing = refusal("response", body)
    bad = refusal("response", {**body, "held_in": "irl"})
    stray = refusal("response", {**body, "status": "completed", "held_in": "IRL"})
    typed = parse_body("response", {**body, "held_in": "IRL"})

    assert (missing.field, bad.field, stray.field) == ("held_in",) * 3
    assert "ISO 3166-1 alpha-3" in bad.problem and "not allowed" in stray.problem
    assert typed.held_in == "IRL"  # type: ignore[attr-defined]


def test_what_a_reference_may_name() -> None:
    extends, follows = REFERENCES[MessageType.PRESERVATION]
    [notice] = REFERENCES[MessageType.MLA_NOTICE]
    asked = (MessageType.PRESERVATION, "out", "DEU")

    assert reference_problem(extends, asked, "DEU") is None
    assert reference_problem(notice, asked, "DEU") is None
    assert "not a message this node holds" in str(reference_problem(notice, None, "DEU"))
    assert "sent to IRL; it was sent to DEU" in str(reference_problem(notice, asked, "IRL"))
    assert "received here" in str(reference_problem(follows, asked, "IRL"))
    # A disclosure received from DEU may be followed by a preservation sent to another State.
    disclosed = (MessageType.TRAFFIC_DISCLOSURE, "in", "DEU")
    assert reference_problem(follows, disclosed, "IRL") is None


def test_what_a_peers_reference_may_name() -> None:
    # Issue 19: references were checked on what our officers send, never on what peers
    # send. Seen from here, the preservation FRA's MLA notice follows is one FRA sent us.
    [notice] = REFERENCES[MessageType.MLA_NOTICE]
    [follow_up] = REFERENCES[MessageType.FOLLOW_UP]
    _, follows = REFERENCES[MessageType.PRESERVATION]
    from_fra = (MessageType.PRESERVATION, "in", "FRA")

    assert reference_problem(notice, from_fra, "FRA", received=True) is None
    assert reference_problem(follow_up, from_fra, "FRA", received=True) is None
    # Not held here (it may come later): not ours to judge, and nothing is lost.
    assert reference_problem(follow_up, None, "FRA", received=True) is None
    # Between the peer and a third State: not ours to judge either.
    assert reference_problem(follows, None, "FRA", received=True) is None
    wrong_party = reference_problem(follow_up, from_fra, "USA", received=True)
    assert "sent by USA; it was exchanged with FRA" in str(wrong_party)
    ours = reference_problem(notice, (MessageType.PRESERVATION, "out", "FRA"), "FRA", received=True)
    assert "must name a preservation sent by FRA here" in str(ours)


def test_a_follow_up_says_what_it_brings() -> None:
    body = {"follows": SAMPLE_REQUEST_ID, "action": "withdraw"}

    reasonless = refusal("follow_up", body)
    empty = refusal("follow_up", {**body, "action": "information"})
    stray = refusal("follow_up", {**body, "note": "Closed.", "information": "The IP is v6."})

    assert (reasonless.field, empty.field, stray.field) == ("note", "information", "information")
    assert "the reason" in reasonless.problem and "not allowed" in stray.problem
    assert follow_up_problem(FollowUpAction.RELEASE, MessageType.PRESERVATION) is None
    assert follow_up_problem(FollowUpAction.RELEASE, MessageType.MLA_NOTICE) is None
    assert "withdrawn" in str(follow_up_problem(FollowUpAction.RELEASE, MessageType.LOCATE))
    assert follow_up_problem(FollowUpAction.WITHDRAW, MessageType.LOCATE) is None


def test_a_preservation_until_the_mla_decision_has_no_date_but_the_day_of_receipt() -> None:
    # Issue 19: 29(7) keeps the data "pending a decision on that request", from its receipt
    # by the requested Party; only a date could be given.
    body = {"in_reply_to": SAMPLE_REQUEST_ID, "status": "preserved", "until_mla_decision": True}

    undated = refusal("response", body)
    typed = parse_body("response", {**body, "mla_received_on": "2027-01-05"})
    both = refusal(
        "response", {**body, "mla_received_on": "2027-01-05", "preserved_until": "2027-09-01"}
    )
    false = refusal("response", {**body, "until_mla_decision": False})
    stray = refusal("response", {**body, "status": "partially_preserved"})

    assert undated.field == "mla_received_on" and "29(7)" in undated.problem
    assert both.field == "preserved_until" and false.field == "until_mla_decision"
    assert stray.field == "until_mla_decision"
    check_response(MessageType.MLA_NOTICE, typed)  # type: ignore[arg-type]
    with pytest.raises(BodyError, match="answers an mla_notice only") as refused:
        check_response(MessageType.PRESERVATION, typed)  # type: ignore[arg-type]
    assert refused.value.field == "until_mla_decision"


def test_a_partial_answer_says_what_was_done() -> None:
    # Issue 19: a partial preservation named nothing of what was kept, and the other
    # requests had no partial answer at all.
    body = {"in_reply_to": SAMPLE_REQUEST_ID, "status": "partially_preserved"}
    dated = {**body, "preserved_until": "2027-03-01"}
    kept = {"identifiers": ["203.0.113.45"], "categories": ["subscriber", "traffic"]}

    unnamed = refusal("response", dated)
    typed = parse_body("response", {**dated, "preserved": kept})
    stray = refusal("response", {**body, "status": "completed", "preserved": kept})
    empty = refusal("response", {**dated, "preserved": {**kept, "categories": []}})
    untold = refusal("response", {**body, "status": "partially_completed"})

    assert unnamed.field == "preserved" and "identifiers and categories" in unnamed.problem
    assert typed.preserved.categories == ("subscriber", "traffic")  # type: ignore[attr-defined]
    assert stray.field == "preserved" and empty.field == "preserved.categories"
    assert untold.field == "note" and "what was done" in untold.problem


def test_a_request_handed_on_names_the_authority() -> None:
    body = {"in_reply_to": SAMPLE_REQUEST_ID, "status": "transferred"}

    missing = refusal("response", body)
    typed = parse_body(
        "response", {**body, "transferred_to": "Parquet de Paris", "expected_by": "2027-01-10"}
    )
    stray = refusal("response", {**body, "status": "completed", "expected_by": "2027-01-10"})
    waiting = parse_body("response", {**body, "status": "awaiting_order"})

    assert missing.field == "transferred_to" and stray.field == "expected_by"
    assert typed.expected_by == "2027-01-10"  # type: ignore[attr-defined]
    assert waiting.status in INTERIM_ANSWERS and typed.status in INTERIM_ANSWERS  # type: ignore[attr-defined]


def test_the_t_cy_templates_other_fields() -> None:
    # Issue 19: investigative and requested authorities, the offence's legal provision, the
    # provider as a record, the data's period, and the original beside its translation.
    body = sample_body(
        "preservation",
        investigative_authority="Parquet de Paris, section J3 (cybercriminalité)",
        requested_authority="Garda National Cyber Crime Bureau",
        legal_provision="Code pénal, art. 323-1 (accès frauduleux)",
        provider={"name": "Example Mail Services Ltd", "service": "e-mail", "country": "IRL"},
        original={"language": "fr", "text": "Demande de conservation rapide des données."},
        confirms={"called_at": "2026-12-03T02:55:00Z", "spoke_to": "Sgt. Byrne, GNCCB desk"},
    )
    body["data"]["period"] = {"start": "2026-10-01T00:00:00Z", "end": "2026-11-20T00:00:00+01:00"}

    typed = parse_body("preservation", body)
    assert parse_body("preservation", body_to_json(typed)) == typed

    backwards = {**body, "data": {**body["data"], "period": {**body["data"]["period"]}}}
    backwards["data"]["period"]["end"] = "2026-09-30T23:00:00-02:00"  # 2026-10-01T01:00Z
    backwards["data"]["period"]["start"] = "2026-10-01T01:00:00Z"
    error = refusal("preservation", backwards)
    assert (error.field, error.problem) == (
        "data.period.end",
        "must be after start (2026-10-01T01:00:00Z)",
    )
    country = refusal("preservation", {**body, "provider": {"name": "X", "country": "Ireland"}})
    assert country.field == "provider.country"
    call = refusal("preservation", {**body, "confirms": {"called_at": "last night"}})
    assert call.field == "confirms.called_at"
    same = refusal("preservation", {**body, "original": {"language": "en", "text": "Same."}})
    assert same.field == "original.language" and "the body's language" in same.problem


def test_a_preserved_answer_may_say_what_the_provider_did() -> None:
    # Issue 19: when the provider was served and until when it keeps the data.
    body = {
        "in_reply_to": SAMPLE_REQUEST_ID,
        "status": "preserved",
        "preserved_until": "2027-03-01",
        "provider_reference": "EMS-LE-2026-55810",
        "provider_served_at": "2026-12-03T04:10:00Z",
        "provider_keeps_until": "2027-03-15",
    }

    typed = parse_body("response", body)
    stray = refusal("response", {**body, "status": "not_possible", "preserved_until": None})
    bad = refusal("response", {**body, "provider_served_at": "this morning"})

    assert typed.provider_keeps_until == "2027-03-15"  # type: ignore[attr-defined]
    assert stray.field in ("provider_reference", "provider_served_at", "provider_keeps_until")
    assert "not allowed" in stray.problem
    assert bad.field == "provider_served_at"
