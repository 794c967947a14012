"""The implementation against the checked-in protocol vectors (tests/vectors/*.json).

The files are the reference: each test rebuilds what it can from the recorded inputs
and compares byte for byte, opens and verifies what it cannot rebuild (HPKE output),
and checks that every negative vector is refused with its recorded reason. A change
that alters the wire fails here; `make vectors` writes new files for review.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from network.core.auditlog import dated_checkpoint, entry_bytes, witness_name
from network.core.bodies import BODY_TYPES, json_schemas
from network.core.crypto import (
    HpkeSuite,
    VerifyKey,
    hpke_key_from_seeds,
    key_id,
    sha256,
    signing_key_from_seed,
)
from network.core.envelope import (
    ReceiptScope,
    check_receipt_matches,
    make_receipt,
    open_envelope,
    seal,
    verify_envelope,
    verify_receipt,
)
from network.core.errors import CpnError
from network.core.protocol import LinkHandshake, Role, envelope_frame, split_envelope, split_frame
from network.core.records import (
    MessageType,
    NodeId,
    Outcome,
    Priority,
    b64decode,
    b64encode,
    canonical,
    is_message_id,
    new_message_id,
    parse_canonical,
)
from network.core.roster import load_roster
from network.core.routing import make_announcement, verify_announcement
from network.core.tlog import (
    consistency_proof,
    cosign,
    cosignature_message,
    inclusion_proof,
    leaf_hash,
    open_checkpoint,
    parse_checkpoint,
    root_hash,
    sign_note,
    verify_consistency,
    verify_cosignature,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors"


def vectors(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return loaded


KEYS = vectors("keys.json")["keys"]
ROSTER_VECTORS = vectors("roster.json")
NOW: int = ROSTER_VECTORS["now"]


def signing(name: str) -> Any:
    return signing_key_from_seed(b64decode(KEYS[f"{name} signing"]["ed25519_seed"]))


def hpke(name: str, suite: str) -> Any:
    item = KEYS[f"{name} hpke {suite}"]
    mlkem = b64decode(item["mlkem768_seed"]) if "mlkem768_seed" in item else None
    return hpke_key_from_seeds(HpkeSuite(suite), b64decode(item["x25519_private"]), mlkem)


def roster() -> Any:
    keeper = signing_key_from_seed(b64decode(ROSTER_VECTORS["keeper_seed"]))
    return load_roster(ROSTER_VECTORS["document"].encode(), keeper=keeper.verify_key(), now=NOW)


def reason(run: Any) -> str:
    try:
        run()
    except CpnError as exc:
        return exc.reason
    raise AssertionError("accepted")


# -- canonical JSON, ids, keys ---------------------------------------------------------------


@pytest.mark.parametrize("case", vectors("canonical.json")["valid"], ids=lambda c: c["input"][:30])
def test_canonical_json(case: dict[str, str]) -> None:
    expected = case["canonical"].encode()
    assert canonical(json.loads(case["input"])) == expected
    assert parse_canonical(expected, limit=1 << 20) == json.loads(case["input"])


@pytest.mark.parametrize(
    "case", vectors("canonical.json")["invalid"], ids=lambda c: c["error_contains"]
)
def test_what_is_not_canonical_json_is_refused(case: dict[str, str]) -> None:
    with pytest.raises(CpnError) as refused:
        parse_canonical(case["input"].encode(), limit=1 << 20)

    assert refused.value.reason == case["reason"]
    assert case["error_contains"] in str(refused.value)


def test_message_ids() -> None:
    ids = vectors("ids.json")
    for case in ids["valid"]:
        made = new_message_id(case["unix_ms"], bytes.fromhex(case["random_hex"]))
        assert made == case["id"] and is_message_id(made)
    assert not any(is_message_id(text) for text in ids["invalid"])


def test_keys_and_key_ids() -> None:
    for name, item in KEYS.items():
        if "ed25519_seed" in item:
            key = signing_key_from_seed(b64decode(item["ed25519_seed"]))
            public = key.public_raw
        else:
            public = hpke(name.split()[0], item["suite"]).public.public_raw
        assert b64encode(public) == item["public"], name
        assert key_id(public) == item["kid"], name


# -- the roster ------------------------------------------------------------------------------


def test_the_roster_document_and_its_signature() -> None:
    keeper = signing_key_from_seed(b64decode(ROSTER_VECTORS["keeper_seed"]))
    body = json.loads(ROSTER_VECTORS["body"])
    signature_input = b"cpn/v1 roster\n" + canonical(body)
    document = canonical({"roster": body, "sig": b64encode(keeper.sign(signature_input))})

    assert signature_input == ROSTER_VECTORS["signature_input"].encode()
    assert document == ROSTER_VECTORS["document"].encode()
    assert keeper.kid == ROSTER_VECTORS["keeper_kid"]
    assert roster().version == body["version"]
    for card in body["contact_points"]:
        der = b64decode(ROSTER_VECTORS["tls_certificates"][card["id"]])
        assert card["tls_cert"] == b64encode(der)
        assert card["tls_sha256"] == b64encode(sha256(der))


# -- envelopes ---------------------------------------------------------------------------


ENVELOPES = vectors("envelope.json")


@pytest.mark.parametrize("suite", list(ENVELOPES["cases"]))
def test_an_envelope_byte_for_byte(suite: str) -> None:
    case = ENVELOPES["cases"][suite]
    inputs = case["inputs"]
    sender = signing_key_from_seed(b64decode(inputs["sender_signing_seed"]))
    recipient = hpke("DEU", suite)
    made = seal(
        sender=NodeId(inputs["sender"]),
        recipient=NodeId(inputs["recipient"]),
        message_type=MessageType(inputs["type"]),
        body=inputs["body"],
        priority=Priority(inputs["priority"]),
        now=inputs["now"],
        random_bytes=bytes.fromhex(inputs["id_random_hex"]),
        signing_key=sender,
        recipient_key=recipient.public,
        ttl_ms=inputs["ttl_ms"],
        hop_limit=inputs["hop_limit"],
    )
    header = case["header"].encode()

    # What is deterministic is rebuilt exactly: the header, the inner signature, the plaintext.
    assert made.header.encoded() == header
    assert made.plaintext == case["plaintext"].encode()
    inner_input = case["inner_signature_input"].encode()
    plain = json.loads(case["plaintext"])
    assert inner_input == b"cpn/v1 inner\n" + canonical(
        {"body": plain["body"], "header": json.loads(header), "type": plain["type"]}
    )
    assert b64encode(sender.sign(inner_input)) == case["inner_signature"] == plain["sig"]
    # HPKE info: "cpn/v1 seal\n" ‖ version ‖ "\n" ‖ rkid ‖ "\n" ‖ SHA-256(header).
    info = b"cpn/v1 seal\n1\n" + made.header.rkid.encode() + b"\n" + sha256(header)
    assert b64encode(info) == case["hpke_info"] and case["hpke_aad"] == ""
    # The recorded HPKE output opens with the recipient's key and that info.
    sealed = b64decode(case["sealed"])
    assert recipient.open(sealed, info) == case["plaintext"].encode()
    assert len(sealed) == case["hpke_enc_length"] + len(case["plaintext"].encode()) + 16
    assert sealed == b64decode(case["hpke_enc"]) + b64decode(case["hpke_ciphertext"])
    assert len(b64decode(case["hpke_enc"])) == case["hpke_enc_length"]
    # The outer signature over the recorded sealed text; the envelope; its digest.
    outer_input = b"cpn/v1 outer\n" + canonical(
        {"header": json.loads(header), "sealed": case["sealed"]}
    )
    assert outer_input == case["outer_signature_input"].encode()
    assert b64encode(sender.sign(outer_input)) == case["outer_signature"]
    raw = case["envelope"].encode()
    assert raw == canonical(
        {"header": json.loads(header), "sealed": case["sealed"], "sig": case["outer_signature"]}
    )
    assert b64encode(sha256(raw)) == case["digest"]
    opened = open_envelope(
        verify_envelope(raw, roster=roster(), now=NOW),
        me=NodeId("DEU"),
        hpke_key=recipient,
        roster=roster(),
    )
    assert opened.plaintext == case["plaintext"].encode()


@pytest.mark.parametrize("case", ENVELOPES["negative"], ids=lambda c: c["description"])
def test_each_refused_envelope_with_its_reason(case: dict[str, Any]) -> None:
    raw = b64decode(case["envelope"])
    key = hpke("DEU", str(HpkeSuite.MLKEM768_X25519))

    def relay() -> Any:
        return verify_envelope(raw, roster=roster(), now=case["now"])

    def recipient() -> None:
        open_envelope(relay(), me=NodeId("DEU"), hpke_key=key, roster=roster())

    if case["check"] == "relay":
        assert reason(relay) == case["reason"]
    else:
        relay()  # a relay passes it on: only the recipient can tell
        assert reason(recipient) == case["reason"]


# -- receipts ----------------------------------------------------------------------------


RECEIPTS = vectors("receipt.json")
HYBRID = ENVELOPES["cases"][str(HpkeSuite.MLKEM768_X25519)]


@pytest.mark.parametrize("case", RECEIPTS["cases"], ids=lambda c: f"{c['outcome']} {c['scope']}")
def test_a_receipt_byte_for_byte(case: dict[str, Any]) -> None:
    raw = HYBRID["envelope"].encode()
    scope = ReceiptScope(case["scope"])
    made = make_receipt(
        message_id=json.loads(raw)["header"]["id"],
        message_sender=NodeId("FRA"),
        envelope_raw=raw,
        me=NodeId("DEU"),
        signing_key=signing("DEU"),
        now=case["received"],
        random_bytes=bytes.fromhex(case["id_random_hex"]),
        outcome=Outcome(case["outcome"]),
        reason=case["reason"],
        scope=scope,
        path=(NodeId("USA"),) if scope is ReceiptScope.END_TO_END else (),
    )

    assert canonical(made.to_json()) == case["statement"].encode()
    assert (b"cpn/v1 receipt\n" + canonical(made.to_json())).decode() == case["signature_input"]
    assert made.raw == case["receipt"].encode()
    assert b64encode(made.signature) == case["signature"]
    assert verify_receipt(made.raw, roster=roster(), now=NOW + 40).digest == sha256(raw)


@pytest.mark.parametrize("case", RECEIPTS["negative"], ids=lambda c: c["description"])
def test_each_refused_receipt_with_its_reason(case: dict[str, Any]) -> None:
    raw = case["receipt"].encode()
    envelope = HYBRID["envelope"].encode()

    def verify() -> Any:
        return verify_receipt(raw, roster=roster(), now=NOW)

    def match() -> None:
        check_receipt_matches(
            verify(),
            message_id=json.loads(envelope)["header"]["id"],
            sender="FRA",
            recipient="DEU",
            digest=sha256(envelope),
        )

    assert reason(verify if case["check"] == "verify" else match) == case["reason"]


# -- the link --------------------------------------------------------------------------------


HANDSHAKE = vectors("handshake.json")


def handshake_side(role: Role) -> LinkHandshake:
    me, peer = ("FRA", "DEU") if role is Role.CLIENT else ("DEU", "FRA")
    certs = {
        "FRA": b64decode(HANDSHAKE["client_cert_sha256"]),
        "DEU": b64decode(HANDSHAKE["server_cert_sha256"]),
    }
    nonce = HANDSHAKE["client_nonce" if role is Role.CLIENT else "server_nonce"]
    return LinkHandshake(
        role=role,
        me=NodeId(me),
        signing_key=signing(me),
        roster=roster(),
        my_cert_sha256=certs[me],
        peer_cert_sha256=certs[peer],
        nonce=b64decode(nonce),
        expected_peer=NodeId(peer) if role is Role.CLIENT else None,
    )


def test_the_handshake_frame_by_frame() -> None:
    client, server = handshake_side(Role.CLIENT), handshake_side(Role.SERVER)
    frames = [(f["from"], f["frame"].encode()) for f in HANDSHAKE["frames"]]

    assert client.start() == [frames[0][1]]
    for index, (sender, data) in enumerate(frames):
        receiver = server if sender == "client" else client
        answers = receiver.receive(data)
        following = [d for _, d in frames[index + 1 : index + 1 + len(answers)]]
        assert answers == following
        if not answers:
            break
    assert client.done and server.done
    for role, frame_index in (("client", 2), ("server", 3)):
        signature = b64decode(json.loads(frames[frame_index][1][1:])["sig"])
        signed = HANDSHAKE[f"{role}_signature_input"].encode()
        VerifyKey(signing("FRA" if role == "client" else "DEU").public_raw).verify(
            signature, signed
        )


def test_a_later_version_offered_is_answered_with_ours() -> None:
    case = HANDSHAKE["later_version"]

    answer = handshake_side(Role.SERVER).receive(case["client_hello"].encode())

    assert answer == [case["server_hello"].encode()]


@pytest.mark.parametrize("name", list(HANDSHAKE["negative_hellos_to_server"]))
def test_each_refused_hello_with_its_reason(name: str) -> None:
    case = HANDSHAKE["negative_hellos_to_server"][name]
    server = handshake_side(Role.SERVER)

    assert reason(lambda: server.receive(case["frame"].encode())) == case["reason"]


def test_frames_and_their_limits() -> None:
    frames = vectors("frames.json")
    sample = frames["envelope_frame"]
    data = bytes.fromhex(sample["frame_hex"])
    path = tuple(NodeId(n) for n in sample["path"])

    assert envelope_frame(path, sample["envelope"].encode()) == data
    assert split_envelope(split_frame(data)[1]) == (path, sample["envelope"].encode())
    for kind, limit in frames["limits"].items():
        split_frame(kind.encode() + b"x" * limit)
        assert reason(lambda k=kind, n=limit: split_frame(k.encode() + b"x" * (n + 1))) == (
            "oversize"
        )
    assert reason(lambda: split_frame(b"Z")) == "malformed"
    assert reason(lambda: split_frame("E")) == "malformed"


def test_an_announcement() -> None:
    case = vectors("announcement.json")
    made = make_announcement(NodeId("USA"), 7, [NodeId("DEU"), NodeId("FRA")], signing("USA"))

    assert made.raw == case["announcement"].encode()
    body = canonical(json.loads(made.raw)["announce"])
    assert b"cpn/v1 announce\n" + body == case["signature_input"].encode()
    assert verify_announcement(made.raw, roster()).links == {"DEU", "FRA"}


# -- the audit log ---------------------------------------------------------------------------


def test_audit_leaves_root_checkpoint_and_cosignature() -> None:
    case = vectors("audit.json")
    leaves = []
    for item in case["entries"]:
        data = entry_bytes(
            item["time"], item["actor"], item["action"], item["message"], item["detail"]
        )
        assert data == item["entry"].encode()
        leaves.append(leaf_hash(data))
        assert b64encode(leaves[-1]) == item["leaf_hash"]
    root = root_hash(leaves)
    assert b64encode(root) == case["root"]
    checkpoint = dated_checkpoint("cpn/audit/FRA", len(leaves), root, NOW + 3)
    assert checkpoint.to_text() == case["checkpoint"]
    fra = signing("FRA")
    opened = open_checkpoint(
        case["signed_note"], "cpn/audit/FRA", {"cpn/audit/FRA": fra.verify_key()}
    )
    assert opened.root == root
    time_seconds = case["cosignature_time"]
    assert (
        cosignature_message(case["checkpoint"], time_seconds)
        == case["cosignature_message"].encode()
    )
    line = cosign(checkpoint, witness_name("DEU"), signing("DEU"), time_seconds)
    assert line == case["cosignature_line"]
    note = case["signed_note"] + line
    deu = signing("DEU").verify_key()
    assert verify_cosignature(note, witness_name("DEU"), deu) == time_seconds


def test_the_body_schemas() -> None:
    case = vectors("bodies.json")

    assert case["schemas"] == json_schemas("#/schemas/")
    assert case["types"] == {str(t): cls.__name__ for t, cls in BODY_TYPES.items()}


@pytest.mark.parametrize("case", ROSTER_VECTORS["negative"], ids=lambda c: c["description"])
def test_each_refused_roster_with_its_reason(case: dict[str, Any]) -> None:
    keeper = signing_key_from_seed(b64decode(ROSTER_VECTORS["keeper_seed"]))
    held = roster() if case["held_version"] is not None else None

    refused = reason(
        lambda: load_roster(
            case["document"].encode(), keeper=keeper.verify_key(), now=NOW, held=held
        )
    )

    assert refused == case["reason"]


@pytest.mark.parametrize(
    "case", vectors("announcement.json")["negative"], ids=lambda c: c["description"]
)
def test_each_refused_announcement_with_its_reason(case: dict[str, Any]) -> None:
    held = {}
    if case["held_seq"] is not None:
        raw = vectors("announcement.json")["announcement"].encode()
        announced = verify_announcement(raw, roster())
        assert announced.seq == case["held_seq"]
        held = {announced.node: announced}

    refused = reason(lambda: verify_announcement(case["announcement"].encode(), roster(), held))

    assert refused == case["reason"]


def test_audit_proofs_and_their_refusals() -> None:
    case = vectors("audit.json")
    leaves = [b64decode(item["leaf_hash"]) for item in case["entries"]]
    root = b64decode(case["root"])
    inclusion = case["proofs"]["inclusion"]
    proof = [b64decode(h) for h in inclusion["proof"]]
    assert proof == inclusion_proof(leaves, inclusion["index"], inclusion["tree_size"])
    verify_inclusion(
        leaves[inclusion["index"]], inclusion["index"], inclusion["tree_size"], proof, root
    )
    consistency = case["proofs"]["consistency"]
    hashes = [b64decode(h) for h in consistency["proof"]]
    assert hashes == consistency_proof(leaves, consistency["old_size"], consistency["new_size"])
    old_root = b64decode(consistency["old_root"])
    verify_consistency(consistency["old_size"], consistency["new_size"], old_root, root, hashes)
    negative = case["negative"]
    assert (
        reason(lambda: verify_inclusion(leaves[1], 0, inclusion["tree_size"], proof, root))
        == negative["inclusion proof for another index"]
    )
    changed = [b"\x00" * 32]
    assert (
        reason(lambda: verify_consistency(2, 3, old_root, root, changed))
        == negative["consistency proof with a hash changed"]
    )
    fra, usa, deu = signing("FRA"), signing("USA"), signing("DEU")
    checkpoint = parse_checkpoint(case["checkpoint"])
    forged = sign_note(checkpoint.to_text(), "cpn/audit/FRA", usa)
    assert (
        reason(
            lambda: open_checkpoint(forged, "cpn/audit/FRA", {"cpn/audit/FRA": fra.verify_key()})
        )
        == negative["checkpoint signed by another key"]
    )
    cosigned = case["signed_note"] + case["cosignature_line"]
    assert (
        reason(lambda: verify_cosignature(cosigned, witness_name("DEU"), usa.verify_key()))
        == negative["cosignature by another witness key"]
    )
    assert (
        verify_cosignature(cosigned, witness_name("DEU"), deu.verify_key())
        == case["cosignature_time"]
    )
