"""The sealed, doubly signed envelope and the signed receipt: round trips and every refusal."""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from network.core.attachments import MAX_PARTS, PART_BYTES
from network.core.bodies import Preservation, body_to_json, parse_body
from network.core.crypto import (
    HpkeSuite,
    Keyring,
    SigningKey,
    generate_hpke_key,
    generate_storage_key,
    sha256,
)
from network.core.envelope import (
    DEFAULT_SKEW_MS,
    MAX_ENVELOPE_BYTES,
    Envelope,
    check_receipt_for,
    make_receipt,
    open_envelope,
    open_from_self,
    read_stored,
    seal,
    seal_to_self,
    self_sealed_kid,
    verify_envelope,
    verify_receipt,
)
from network.core.errors import (
    BadSignatureError,
    BodyError,
    ClockSkewError,
    DecryptError,
    DigestMismatchError,
    ExpiredError,
    MalformedError,
    OversizeError,
    PeerError,
    UnknownSignerError,
    UnsupportedVersionError,
    WrongRecipientError,
)
from network.core.records import (
    MessageType,
    NodeId,
    Outcome,
    Priority,
    b64decode,
    b64encode,
    canonical,
    canonical_object,
)
from network.core.roster import load_roster
from network.samples import sample_body
from tests.conftest import NOW, Pki, make_node, sign_roster


def send(pki: Pki, sender: str = "FRA", recipient: str = "DEU", **kwargs: Any) -> Envelope:
    message_type = kwargs.pop("message_type", MessageType.PRESERVATION)
    kwargs.setdefault("body", sample_body(message_type))
    kwargs.setdefault("signing_key", pki[sender].signing)
    return seal(
        sender=NodeId(sender),
        recipient=NodeId(recipient),
        message_type=message_type,
        priority=kwargs.pop("priority", Priority.URGENT),
        now=kwargs.pop("now", NOW),
        random_bytes=os.urandom(10),
        recipient_key=pki.roster.active_card(recipient).hpke_key,
        **kwargs,
    )


def receive(pki: Pki, raw: bytes, me: str = "DEU", now: int = NOW) -> Any:
    envelope = verify_envelope(raw, roster=pki.roster, now=now)
    return open_envelope(envelope, me=NodeId(me), hpke_key=pki[me].hpke, roster=pki.roster)


def reassemble(doc: dict[str, Any], key: SigningKey) -> bytes:
    """What a forger with `key` does: re-sign the outer layer over whatever header and seal."""
    outer = {"header": canonical(doc["header"]), "sealed": canonical(doc["sealed"])}
    sig = key.sign(b"cpn/v1 outer\n" + canonical_object(outer))
    return canonical({"header": doc["header"], "sealed": doc["sealed"], "sig": b64encode(sig)})


def reseal(
    pki: Pki, envelope: Envelope, plaintext: dict[str, Any], recipient: str = "DEU"
) -> bytes:
    """Seal a chosen plaintext under an envelope's header, as its sender could."""
    header = envelope.header
    info = b"cpn/v1 seal\n1\n" + header.rkid.encode() + b"\n" + sha256(header.encoded())
    sealed = pki.roster.active_card(recipient).hpke_key.seal(canonical(plaintext), info)
    doc = orjson.loads(envelope.raw)
    doc["sealed"] = b64encode(sealed)
    return reassemble(doc, pki[header.sender].signing)


# -- round trips -------------------------------------------------------------


@pytest.mark.parametrize("message_type", list(MessageType))
def test_every_message_type_round_trips(pki: Pki, message_type: MessageType) -> None:
    body = sample_body(message_type)

    envelope = send(pki, message_type=message_type, body=body)
    opened = receive(pki, envelope.raw)

    assert opened.message_type is message_type
    assert body_to_json(opened.body) == body
    assert opened.header == envelope.header
    assert opened.envelope.digest == sha256(envelope.raw)


def test_typed_body_and_x25519_suite_round_trip(pki: Pki) -> None:
    body = Preservation  # the class, to show the typed path is taken
    typed = receive(pki, send(pki).raw).body
    assert isinstance(typed, body)

    envelope = send(pki, recipient="KEN", body=typed)
    opened = receive(pki, envelope.raw, me="KEN")

    assert envelope.header.suite.value.startswith("X25519/")
    assert opened.body == typed


def test_header_carries_what_relays_need(pki: Pki) -> None:
    envelope = send(pki, priority=Priority.FLASH)

    header = orjson.loads(envelope.raw)["header"]

    assert header["from"] == "FRA"
    assert header["to"] == "DEU"
    assert header["priority"] == "flash"
    assert header["kind"] == "message"
    assert header["v"] == 1
    assert header["alg"] == "Ed25519"
    assert header["created"] == NOW < header["expires"]
    assert header["hop_limit"] == 8
    assert header["kid"] == pki["FRA"].signing.kid
    assert header["rkid"] == pki["DEU"].hpke.public.kid


def test_sealed_bytes_never_hold_the_plaintext(pki: Pki) -> None:
    body = sample_body("preservation", summary="Ransomware operator account, Lyon case")

    envelope = send(pki, body=body)

    for text in ("Ransomware operator account", body["case_ref"], body["offence"]):
        assert text.encode() not in envelope.raw
        assert text.encode() not in envelope.sealed
        assert text.encode() not in base64.b64encode(envelope.raw)


def test_auditor_can_check_inner_signature_from_the_plaintext(pki: Pki) -> None:
    opened = receive(pki, send(pki).raw)
    plain = orjson.loads(opened.plaintext)
    signed = canonical_object(
        {
            "body": canonical(plain["body"]),
            "header": opened.header.encoded(),
            "type": canonical(plain["type"]),
        }
    )

    pki["FRA"].card.signing_key.verify(
        base64.urlsafe_b64decode(plain["sig"] + "=="), b"cpn/v1 inner\n" + signed
    )


# -- refused before anything is signed ---------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"offence": None}, "offence"),
        ({"period_days": 59}, "period_days"),
    ],
)
def test_invalid_body_is_refused_before_signing(
    pki: Pki, change: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**sample_body("preservation"), **change}.items() if v is not None}

    with pytest.raises(BodyError) as refused:
        send(pki, body=body)

    assert refused.value.field == field


def test_body_of_another_type_is_refused(pki: Pki) -> None:
    typed = receive(pki, send(pki).raw).body

    with pytest.raises(BodyError, match="not a emergency"):
        send(pki, message_type=MessageType.EMERGENCY, body=typed)


# -- each refusal with its own error -----------------------------------------


def test_unknown_signer_is_refused(pki: Pki) -> None:
    stranger = make_node("FRA")  # claims to be FRA with a key the roster does not hold
    envelope = send(pki, signing_key=stranger.signing)

    with pytest.raises(UnknownSignerError, match="not the key roster version 1 holds"):
        verify_envelope(envelope.raw, roster=pki.roster, now=NOW)


def test_sender_missing_from_roster_is_refused(pki: Pki) -> None:
    doc = orjson.loads(send(pki).raw)
    doc["header"]["from"] = "CHE"
    raw = reassemble(doc, pki["FRA"].signing)

    with pytest.raises(UnknownSignerError, match="CHE is not in roster"):
        verify_envelope(raw, roster=pki.roster, now=NOW)


def test_revoked_sender_is_refused(pki: Pki) -> None:
    revoked = load_roster(
        sign_roster(pki.keeper, pki.nodes, version=2, revoked=("FRA",)),
        keeper=pki.keeper.verify_key(),
        now=NOW,
    )

    with pytest.raises(UnknownSignerError, match="revoked") as refused:
        verify_envelope(send(pki).raw, roster=revoked, now=NOW)
    assert refused.value.reason == "revoked_signer"


def test_wrongly_signing_sender_is_refused(pki: Pki) -> None:
    doc = orjson.loads(send(pki).raw)
    forged = reassemble(doc, make_node("FRA").signing)  # right kid in header, wrong key

    with pytest.raises(BadSignatureError, match="outer signature"):
        verify_envelope(forged, roster=pki.roster, now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [("priority", "flash"), ("to", "USA"), ("expires", NOW + 1), ("hop_limit", 9), ("id", None)],
)
def test_any_header_change_is_refused(pki: Pki, field: str, value: Any) -> None:
    envelope = send(pki)
    doc = orjson.loads(envelope.raw)
    doc["header"][field] = value if value is not None else send(pki).header.id

    with pytest.raises(BadSignatureError):
        verify_envelope(canonical(doc), roster=pki.roster, now=NOW)


@pytest.mark.parametrize(
    "message_id",
    ['=hyperlink("http://evil.xy")-a-b-c-d', "6b1d2f8e-3f5c-4a43-9d7e-0c8f8f5b2a11"],
)
def test_a_header_id_that_is_not_a_uuid7_is_refused(pki: Pki, message_id: str) -> None:
    # Signed by its sender, so only the id's form is wrong: a formula or a UUIDv4.
    doc = orjson.loads(send(pki).raw)
    doc["header"]["id"] = message_id

    with pytest.raises(MalformedError, match=r"header\.id: must be a message id"):
        verify_envelope(reassemble(doc, pki["FRA"].signing), roster=pki.roster, now=NOW)


def test_header_change_resigned_by_sender_still_fails_to_open(pki: Pki) -> None:
    # The seal binds the header: even the sender's own re-signature cannot move a body.
    doc = orjson.loads(send(pki).raw)
    doc["header"]["priority"] = "flash"

    with pytest.raises(DecryptError):
        receive(pki, reassemble(doc, pki["FRA"].signing))


def test_ciphertext_change_is_refused(pki: Pki) -> None:
    envelope = send(pki)
    doc = orjson.loads(envelope.raw)
    sealed = bytearray(envelope.sealed)
    sealed[-1] ^= 1
    doc["sealed"] = b64encode(bytes(sealed))

    with pytest.raises(BadSignatureError):
        verify_envelope(canonical(doc), roster=pki.roster, now=NOW)
    with pytest.raises(DecryptError):
        receive(pki, reassemble(doc, pki["FRA"].signing))


def test_signature_change_is_refused(pki: Pki) -> None:
    doc = orjson.loads(send(pki).raw)
    sig = bytearray(base64.urlsafe_b64decode(doc["sig"] + "=="))
    sig[0] ^= 0x80
    doc["sig"] = b64encode(bytes(sig))

    with pytest.raises(BadSignatureError):
        verify_envelope(canonical(doc), roster=pki.roster, now=NOW)


def test_inner_signature_by_another_key_is_refused(pki: Pki) -> None:
    envelope = send(pki)
    plain = orjson.loads(receive(pki, envelope.raw).plaintext)
    plain["sig"] = b64encode(make_node("FRA").signing.sign(b"anything"))

    with pytest.raises(BadSignatureError, match="inner signature"):
        receive(pki, reseal(pki, envelope, plain))


def test_body_changed_under_a_valid_outer_signature_is_refused(pki: Pki) -> None:
    envelope = send(pki)
    plain = orjson.loads(receive(pki, envelope.raw).plaintext)
    plain["body"]["period_days"] = 365

    with pytest.raises(BadSignatureError, match="inner signature"):
        receive(pki, reseal(pki, envelope, plain))


def test_wrong_recipient_is_refused(pki: Pki) -> None:
    envelope = verify_envelope(send(pki).raw, roster=pki.roster, now=NOW)

    with pytest.raises(WrongRecipientError, match="is for DEU, not USA"):
        open_envelope(envelope, me=NodeId("USA"), hpke_key=pki["USA"].hpke, roster=pki.roster)


def test_expired_message_is_refused(pki: Pki) -> None:
    envelope = send(pki, ttl_ms=60_000)

    with pytest.raises(ExpiredError, match="expired"):
        verify_envelope(envelope.raw, roster=pki.roster, now=NOW + 60_001)


def test_timestamp_beyond_clock_skew_is_refused(pki: Pki) -> None:
    envelope = send(pki, now=NOW + DEFAULT_SKEW_MS + 1)

    with pytest.raises(ClockSkewError, match="ahead of our clock"):
        verify_envelope(envelope.raw, roster=pki.roster, now=NOW)


def test_timestamp_within_clock_skew_is_accepted(pki: Pki) -> None:
    envelope = send(pki, now=NOW + DEFAULT_SKEW_MS)

    assert verify_envelope(envelope.raw, roster=pki.roster, now=NOW).header == envelope.header


def test_unknown_protocol_version_is_refused(pki: Pki) -> None:
    doc = orjson.loads(send(pki).raw)
    doc["header"]["v"] = 2

    with pytest.raises(UnsupportedVersionError, match="protocol version 2"):
        verify_envelope(reassemble(doc, pki["FRA"].signing), roster=pki.roster, now=NOW)


def test_oversize_envelope_is_refused_before_parsing(pki: Pki) -> None:
    with pytest.raises(OversizeError, match="over the limit"):
        verify_envelope(b"{" + b" " * MAX_ENVELOPE_BYTES + b"}", roster=pki.roster, now=NOW)


def test_oversize_body_is_refused_at_composition(pki: Pki) -> None:
    body = sample_body("preservation")
    body["data"]["identifiers"] = body["data"]["identifiers"] * 100
    body["facts"] = "x" * 20000
    body["summary"] = "y" * 20000
    body["necessity"] = "z" * 20000
    body["data"]["description"] = "w" * 20000

    with pytest.raises(BodyError) as refused:
        send(pki, body=body)
    assert refused.value.field in {"body", "data.identifiers"}


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (b"not json", MalformedError, "not valid JSON"),
        (b"[]", MalformedError, "expected an object"),
        (b'{"header":{}}', MalformedError, "required field is missing"),
        (b'{"header":{"v":1},"header":{"v":1}}', MalformedError, "duplicate key"),
    ],
)
def test_malformed_envelope_is_refused(pki: Pki, raw: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        verify_envelope(raw, roster=pki.roster, now=NOW)


def test_extra_field_is_refused(pki: Pki) -> None:
    doc = orjson.loads(send(pki).raw)
    doc["header"]["note"] = "hi"

    with pytest.raises(MalformedError, match=r"header\.note: unknown field"):
        verify_envelope(reassemble(doc, pki["FRA"].signing), roster=pki.roster, now=NOW)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_of_an_envelope_is_refused(pki: Pki, data: st.DataObject) -> None:
    raw = send(pki, message_type=MessageType.EMERGENCY).raw
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != raw[index]), label="value")
    changed = raw[:index] + bytes([value]) + raw[index + 1 :]

    with pytest.raises(PeerError):
        receive(pki, changed)


# -- receipts ----------------------------------------------------------------


def receipt_for(
    pki: Pki, envelope: Envelope, outcome: Outcome = Outcome.ACCEPTED, **kw: Any
) -> Any:
    return make_receipt(
        message_id=envelope.header.id,
        message_sender=envelope.header.sender,
        envelope_raw=envelope.raw,
        me=envelope.header.recipient,
        signing_key=pki[envelope.header.recipient].signing,
        now=NOW,
        random_bytes=os.urandom(10),
        outcome=outcome,
        **kw,
    )


@pytest.mark.parametrize("outcome", list(Outcome))
def test_receipt_round_trip(pki: Pki, outcome: Outcome) -> None:
    envelope = send(pki)
    reason = "bad_signature" if outcome is Outcome.REJECTED else None

    receipt = verify_receipt(
        receipt_for(pki, envelope, outcome, reason=reason).raw, roster=pki.roster, now=NOW
    )

    check_receipt_for(receipt, envelope)
    assert receipt.outcome is outcome
    assert receipt.reason == reason
    assert receipt.sender == "DEU"
    assert receipt.recipient == "FRA"
    assert receipt.digest == sha256(envelope.raw)


def test_receipt_for_other_bytes_is_refused(pki: Pki) -> None:
    envelope = send(pki)
    other = send(pki)
    receipt = verify_receipt(receipt_for(pki, other).raw, roster=pki.roster, now=NOW)

    with pytest.raises(DigestMismatchError):
        check_receipt_for(receipt, envelope)


def test_receipt_with_same_id_but_other_digest_is_refused(pki: Pki) -> None:
    envelope = send(pki)
    doc = orjson.loads(receipt_for(pki, envelope).raw)
    doc["receipt"]["digest"] = b64encode(sha256(b"other bytes"))
    sig = pki["DEU"].signing.sign(b"cpn/v1 receipt\n" + canonical(doc["receipt"]))
    doc["sig"] = b64encode(sig)

    receipt = verify_receipt(canonical(doc), roster=pki.roster, now=NOW)
    with pytest.raises(DigestMismatchError, match="not that of the envelope sent"):
        check_receipt_for(receipt, envelope)


def test_receipt_signed_by_a_third_node_is_refused_as_end_to_end(pki: Pki) -> None:
    envelope = send(pki)
    forged = make_receipt(
        message_id=envelope.header.id,
        message_sender=envelope.header.sender,
        envelope_raw=envelope.raw,
        me=NodeId("USA"),
        signing_key=pki["USA"].signing,
        now=NOW,
        random_bytes=os.urandom(10),
        outcome=Outcome.ACCEPTED,
    )

    receipt = verify_receipt(forged.raw, roster=pki.roster, now=NOW)
    with pytest.raises(DigestMismatchError, match="not the recipient DEU"):
        check_receipt_for(receipt, envelope)


def test_unsigned_or_wrongly_signed_receipt_is_refused(pki: Pki) -> None:
    doc = orjson.loads(receipt_for(pki, send(pki)).raw)
    doc["sig"] = b64encode(pki["USA"].signing.sign(b"cpn/v1 receipt\n" + canonical(doc["receipt"])))

    with pytest.raises(BadSignatureError, match="receipt signature"):
        verify_receipt(canonical(doc), roster=pki.roster, now=NOW)
    del doc["sig"]
    with pytest.raises(MalformedError, match="sig: required"):
        verify_receipt(canonical(doc), roster=pki.roster, now=NOW)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_of_a_receipt_is_refused(pki: Pki, data: st.DataObject) -> None:
    envelope = send(pki, message_type=MessageType.EMERGENCY)
    raw = receipt_for(pki, envelope).raw
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != raw[index]), label="value")
    changed = raw[:index] + bytes([value]) + raw[index + 1 :]

    with pytest.raises(PeerError):
        check_receipt_for(verify_receipt(changed, roster=pki.roster, now=NOW), envelope)


# -- keys that rotated: the keyring and sent copies -------------------------------


def test_keyring_opens_with_the_key_the_header_names(pki: Pki) -> None:
    raw = send(pki).raw  # sealed to DEU's key of the time
    old = pki["DEU"].hpke
    ring = Keyring(generate_hpke_key(), generate_storage_key(), [old])
    envelope = verify_envelope(raw, roster=pki.roster, now=NOW)

    opened = open_envelope(envelope, me=NodeId("DEU"), hpke_key=ring, roster=pki.roster)
    message_type, body, _ = read_stored(raw, ring)

    assert opened.body == parse_body(MessageType.PRESERVATION, body)
    assert message_type is MessageType.PRESERVATION


def test_keyring_without_the_named_key_is_refused_naming_it(pki: Pki) -> None:
    raw = send(pki).raw
    ring = Keyring(generate_hpke_key(), generate_storage_key())
    envelope = verify_envelope(raw, roster=pki.roster, now=NOW)
    rkid = pki["DEU"].hpke.public.kid

    with pytest.raises(WrongRecipientError, match=f"sealed to key {rkid}"):
        open_envelope(envelope, me=NodeId("DEU"), hpke_key=ring, roster=pki.roster)
    with pytest.raises(WrongRecipientError, match=f"sealed to key {rkid}"):
        read_stored(raw, ring)


def test_sent_copy_names_its_storage_key_and_opens_after_rotation() -> None:
    storage = generate_storage_key()
    copy = seal_to_self(b"plain", "m1", storage)
    ring = Keyring(generate_hpke_key(HpkeSuite.X25519), storage, [generate_hpke_key()])

    assert self_sealed_kid(copy) == storage.kid
    assert open_from_self(copy, "m1", ring) == b"plain"
    with pytest.raises(DecryptError):
        open_from_self(copy, "m2", ring)  # bound to its message id
    other = Keyring(generate_hpke_key(HpkeSuite.X25519), generate_storage_key())
    with pytest.raises(DecryptError, match=f"storage key '{storage.kid}', not held"):
        open_from_self(copy, "m1", other)


def test_sent_copy_of_an_earlier_version_opens_with_a_retired_keys_derivation() -> None:
    old = generate_hpke_key()
    # What earlier versions stored: nonce ‖ ciphertext under the key derived from the HPKE key.
    copy = old.legacy_storage_key().seal(b"plain", b"cpn/v1 self\nm1")
    ring = Keyring(generate_hpke_key(), generate_storage_key(), [old])

    assert self_sealed_kid(copy) is None
    assert open_from_self(copy, "m1", ring) == b"plain"
    with pytest.raises(DecryptError, match="any storage key"):
        open_from_self(copy, "m1", Keyring(generate_hpke_key(), generate_storage_key()))


def test_a_full_attachment_part_fits_an_envelope_under_both_suites(pki: Pki) -> None:
    """A part of `PART_BYTES` (the largest) seals under the envelope's limit, ML-KEM
    (DEU) and X25519 (KEN) alike: files never need a frame larger than any message's."""
    data = os.urandom(PART_BYTES)
    body = {
        "of": "0192f3a4-3333-7abc-8def-0123456789ab",
        "attachment": 19,
        "part": MAX_PARTS - 1,
        "data": b64encode(data),
    }
    for recipient in ("DEU", "KEN"):
        envelope = send(
            pki, recipient=recipient, message_type=MessageType.ATTACHMENT_PART, body=body
        )
        assert len(envelope.raw) <= MAX_ENVELOPE_BYTES
        opened = receive(pki, envelope.raw, me=recipient)
        assert b64decode(opened.body.data, field="data") == data
