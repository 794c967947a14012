"""The signed roster: only the pinned keeper, only forward, rotation and revocation."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from network.core.crypto import generate_signing_key
from network.core.errors import (
    MalformedError,
    RosterError,
    RosterExpiredError,
    RosterSignatureError,
    RosterStaleError,
    UnknownNodeError,
    UnknownSignerError,
)
from network.core.records import b64encode, canonical
from network.core.roster import NodeStatus, Roster, build_roster, load_roster, parse_card
from tests.conftest import DAY, NOW, Pki, make_node, sign_roster


def load(pki: Pki, data: bytes, held: Roster | None = None) -> Roster:
    return load_roster(data, keeper=pki.keeper.verify_key(), now=NOW, held=held)


def test_roster_lists_every_contact_point_with_its_keys(pki: Pki) -> None:
    roster = pki.roster

    assert sorted(roster.entries) == ["DEU", "FRA", "KEN", "USA"]
    fra = roster.active_card("FRA")
    assert fra.name == "France"
    assert fra.signing_key.kid == pki["FRA"].signing.kid
    assert fra.hpke_key.kid == pki["FRA"].hpke.public.kid
    assert roster.entry("FRA").status is NodeStatus.ACTIVE


def test_roster_signed_by_another_key_is_refused(pki: Pki) -> None:
    data = sign_roster(generate_signing_key(), pki.nodes)

    with pytest.raises(RosterSignatureError, match="not the pinned register keeper"):
        load(pki, data)


def test_roster_claiming_the_keepers_kid_with_another_key_is_refused(pki: Pki) -> None:
    doc = orjson.loads(sign_roster(pki.keeper, pki.nodes))
    forger = generate_signing_key()
    doc["sig"] = b64encode(forger.sign(b"cpn/v1 roster\n" + canonical(doc["roster"])))

    with pytest.raises(RosterSignatureError, match="does not verify"):
        load(pki, canonical(doc))


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["contact_points"][0].update(url="wss://203.0.113.9:443"),
        lambda r: r["contact_points"][1].update(status="revoked"),
        lambda r: r.update(valid_until=r["valid_until"] + DAY),
        lambda r: r["contact_points"].pop(),
    ],
)
def test_any_change_to_a_signed_roster_is_refused(pki: Pki, change: object) -> None:
    doc = orjson.loads(sign_roster(pki.keeper, pki.nodes))
    change(doc["roster"])  # type: ignore[operator]

    with pytest.raises(RosterSignatureError):
        load(pki, canonical(doc))


def test_older_roster_never_replaces_a_newer_one(pki: Pki) -> None:
    held = load(pki, sign_roster(pki.keeper, pki.nodes, version=5))

    with pytest.raises(RosterStaleError, match="version 4 is older than version 5"):
        load(pki, sign_roster(pki.keeper, pki.nodes, version=4), held=held)


def test_same_version_with_other_content_is_refused(pki: Pki) -> None:
    held = load(pki, sign_roster(pki.keeper, pki.nodes, version=5))

    with pytest.raises(RosterStaleError, match="a change needs a new version"):
        load(pki, sign_roster(pki.keeper, pki.nodes, version=5, revoked=("USA",)), held=held)


def test_same_roster_reloads_and_a_newer_one_replaces(pki: Pki) -> None:
    data = sign_roster(pki.keeper, pki.nodes, version=5)
    held = load(pki, data)

    assert load(pki, data, held=held).version == 5
    assert load(pki, sign_roster(pki.keeper, pki.nodes, version=6), held=held).version == 6


def test_expired_roster_is_refused(pki: Pki) -> None:
    data = sign_roster(pki.keeper, pki.nodes, issued=NOW - 10 * DAY, valid_until=NOW - DAY)

    with pytest.raises(RosterExpiredError, match="expired"):
        load(pki, data)


def test_roster_from_the_future_is_refused(pki: Pki) -> None:
    data = sign_roster(pki.keeper, pki.nodes, issued=NOW + DAY, valid_until=NOW + 10 * DAY)

    with pytest.raises(RosterExpiredError, match="not valid yet"):
        load(pki, data)


def test_key_rotation_takes_effect_with_the_new_version(pki: Pki) -> None:
    rotated = dict(pki.nodes)
    rotated["FRA"] = make_node("FRA")
    roster = load(pki, sign_roster(pki.keeper, rotated, version=2), held=pki.roster)

    with pytest.raises(UnknownSignerError, match="is not the key"):
        roster.verify_key("FRA", pki["FRA"].signing.kid)
    assert roster.verify_key("FRA", rotated["FRA"].signing.kid).kid == rotated["FRA"].signing.kid


def test_revoked_node_keeps_its_entry_but_not_its_voice(pki: Pki) -> None:
    roster = load(pki, sign_roster(pki.keeper, pki.nodes, version=2, revoked=("KEN",)))

    assert roster.entry("KEN").status is NodeStatus.REVOKED
    with pytest.raises(UnknownNodeError, match="revoked"):
        roster.active_card("KEN")
    with pytest.raises(UnknownSignerError, match="revoked"):
        roster.verify_key("KEN", pki["KEN"].signing.kid)


def test_unknown_node_is_named(pki: Pki) -> None:
    with pytest.raises(UnknownNodeError, match="CHE is not in roster version 1"):
        pki.roster.entry("CHE")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "malformed roster"),
        (b'{"roster":{},"sig":"AA"}', "roster.roster.v: required"),
        (b"[]", "expected an object"),
    ],
)
def test_malformed_roster_is_refused_with_the_reason(pki: Pki, data: bytes, message: str) -> None:
    with pytest.raises(RosterError, match=message):
        load(pki, data)


def test_build_refuses_duplicates_and_unknown_revocations(pki: Pki) -> None:
    cards = [n.card for n in pki.nodes.values()]
    with pytest.raises(RosterError, match="two cards for FRA"):
        build_roster(
            [*cards, pki["FRA"].card],
            keeper=pki.keeper,
            version=1,
            issued=NOW,
            valid_until=NOW + DAY,
        )
    with pytest.raises(RosterError, match="cannot revoke CHE"):
        build_roster(
            cards, keeper=pki.keeper, version=1, issued=NOW, valid_until=NOW + DAY, revoked=["CHE"]
        )


def test_a_card_carries_its_duty_desks_telephones_and_languages(pki: Pki) -> None:
    # Issue 19: the phone fallback. A card without them reads, and is written, as before.
    plain = pki["FRA"].card
    desk = dataclasses.replace(plain, phones=("+33 1 40 97 00 00",), languages=("fr", "en"))

    assert "phones" not in plain.to_json() and "languages" not in plain.to_json()
    assert parse_card(orjson.loads(orjson.dumps(desk.to_json()))) == desk
    assert parse_card(desk.to_json()).phones == ("+33 1 40 97 00 00",)
    signed = build_roster(
        [desk, pki["DEU"].card], keeper=pki.keeper, version=2, issued=NOW, valid_until=NOW + DAY
    )
    assert load(pki, signed).active_card("FRA").languages == ("fr", "en")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("phones", ["call the desk"], "card.phones[0]: must be a telephone number"),
        ("phones", [], "card.phones: must be an array of 1..5 strings"),
        ("phones", ["+33 1"] * 6, "card.phones: must be an array of 1..5 strings"),
        ("languages", ["français"], "card.languages[0]: must be a language tag"),
        ("languages", [7], "card.languages[0]: must be a string"),
    ],
)
def test_a_cards_telephones_and_languages_are_checked(
    pki: Pki, field: str, value: object, named: str
) -> None:
    card = {**pki["FRA"].card.to_json(), field: value}

    with pytest.raises(MalformedError) as refused:
        parse_card(card)

    assert str(refused.value).startswith(named)
