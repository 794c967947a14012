"""The link protocol, sans I/O: frames and the signed handshake, fed bytes in memory."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable

import pytest

from network.core.errors import (
    HandshakeError,
    MalformedError,
    OversizeError,
    PeerError,
    UnknownNodeError,
)
from network.core.protocol import (
    FRAME_AUTH,
    FRAME_ENVELOPE,
    FRAME_HELLO,
    FRAME_RECEIPT,
    LINK_VERSIONS,
    MAX_FRAME_BYTES,
    CheckpointOffer,
    HeldCheckpoint,
    HeldQuery,
    LinkHandshake,
    Role,
    WitnessAnswer,
    backoff_delays,
    checkpoint_frame,
    envelope_frame,
    frame,
    held_frame,
    held_query_frame,
    parse_checkpoint_offer,
    parse_held,
    parse_held_query,
    parse_witness_answer,
    split_envelope,
    split_frame,
    witness_frame,
)
from network.core.records import PROTOCOL_VERSION, NodeId, b64encode, canonical
from network.core.roster import Roster, load_roster
from tests.conftest import NOW, Pki, sign_roster

# -- frames --------------------------------------------------------------------------


def test_a_frame_splits_into_its_kind_and_payload() -> None:
    assert split_frame(frame(FRAME_RECEIPT, b"receipt bytes")) == (FRAME_RECEIPT, b"receipt bytes")


def test_a_text_frame_is_refused() -> None:
    with pytest.raises(MalformedError, match="text frame"):
        split_frame("Hhello")


@pytest.mark.parametrize("data", [b"", b"Zpayload", b"\x00"])
def test_an_unknown_frame_kind_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedError, match="unknown frame kind"):
        split_frame(data)


def test_a_frame_over_its_kinds_limit_is_refused() -> None:
    with pytest.raises(OversizeError, match="H frame"):
        split_frame(frame(FRAME_HELLO, b"x" * 1025))
    assert len(frame(FRAME_ENVELOPE, b"x" * (MAX_FRAME_BYTES - 1))) == MAX_FRAME_BYTES


def test_an_envelope_frame_carries_its_path_and_the_exact_bytes() -> None:
    path = (NodeId("FRA"), NodeId("DEU"))
    kind, payload = split_frame(envelope_frame(path, b'{"exact":"bytes"}'))
    assert kind == FRAME_ENVELOPE
    assert split_envelope(payload) == (path, b'{"exact":"bytes"}')
    assert split_envelope(envelope_frame((), b"e")[1:]) == ((), b"e")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty envelope frame"),
        (bytes([200]) + b"FRA", "claims 200 relays"),
        (b"\x01\xff\xfe\xfd{}", "not ASCII"),
        (b"\x01fra{}", "not a list of node ids"),
        (b"\x02FRA", "not a list of node ids"),  # cut short: fewer ids than claimed
    ],
)
def test_a_damaged_envelope_path_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(MalformedError, match=message):
        split_envelope(payload)


def test_witnessing_frames_round_trip_and_refuse_what_is_wrong() -> None:
    offer = CheckpointOffer("cpn/audit/FRA\n3\nAAAA\n", 2, (b"\x01" * 32, b"\x02" * 32))
    _, payload = split_frame(checkpoint_frame(offer))
    assert parse_checkpoint_offer(payload) == offer
    for answer in (WitnessAnswer(3, cosignature="— x y\n"), WitnessAnswer(3, need_from=2)):
        _, payload = split_frame(witness_frame(answer))
        assert parse_witness_answer(payload) == answer
    with pytest.raises(MalformedError, match="exactly one"):
        parse_witness_answer(b'{"size":3}')
    with pytest.raises(MalformedError, match="32 bytes"):
        parse_checkpoint_offer(b'{"from":1,"note":"n","proof":["AAAA"]}')


def test_held_checkpoint_frames_round_trip_and_refuse_what_is_wrong() -> None:
    nonce = bytes(range(16))
    _, payload = split_frame(held_query_frame(HeldQuery(nonce)))
    assert parse_held_query(payload) == HeldQuery(nonce)
    for answer in (
        HeldCheckpoint(nonce, "cpn/audit/FRA\n3\nAAAA\n", "— x y\n"),
        HeldCheckpoint(nonce),
    ):
        _, payload = split_frame(held_frame(answer))
        assert parse_held(payload) == answer
    short = b64encode(nonce[:8]).encode()
    with pytest.raises(MalformedError, match="16 bytes"):
        parse_held_query(b'{"nonce":"' + short + b'"}')
    with pytest.raises(MalformedError, match="or neither"):
        parse_held(canonical({"cosignature": None, "nonce": b64encode(nonce), "note": "n"}))
    with pytest.raises(MalformedError, match="unknown field"):
        parse_held_query(canonical({"nonce": b64encode(nonce), "size": 3}))


# -- the handshake ---------------------------------------------------------------------


def side(
    pki: Pki,
    role: Role,
    me: str,
    peer: str,
    *,
    roster: Roster | None = None,
    nonce: bytes | None = None,
    peer_cert: bytes | None = None,
) -> LinkHandshake:
    """One end of a link from `me` to `peer`, as the websockets adapter builds it after TLS."""
    roster = roster or pki.roster
    return LinkHandshake(
        role=role,
        me=NodeId(me),
        signing_key=pki[me].signing,
        roster=roster,
        my_cert_sha256=pki[me].card.tls_sha256,
        peer_cert_sha256=peer_cert if peer_cert is not None else pki[peer].card.tls_sha256,
        nonce=nonce or os.urandom(32),
        expected_peer=NodeId(peer) if role is Role.CLIENT else None,
    )


def hello(me: str, to: str, /, **changes: object) -> bytes:
    """A client hello, with some of its fields changed."""
    fields: dict[str, object] = {
        "v": PROTOCOL_VERSION,
        "node": me,
        "to": to,
        "nonce": b64encode(os.urandom(32)),
        "roster": 1,
    }
    fields.update(changes)
    return frame(FRAME_HELLO, canonical(fields))  # type: ignore[arg-type]


def test_a_handshake_authenticates_both_ends(pki: Pki) -> None:
    client = side(pki, Role.CLIENT, "FRA", "DEU")
    server = side(pki, Role.SERVER, "DEU", "FRA")

    client_hello = client.start()
    assert server.start() == []  # the client speaks first
    [server_hello] = server.receive(client_hello[0])
    [client_auth] = client.receive(server_hello)
    assert not server.done
    [server_auth] = server.receive(client_auth)
    assert client.receive(server_auth) == []

    assert client.done and server.done
    assert (client.peer, server.peer) == ("DEU", "FRA")
    assert client.peer_roster_version == server.peer_roster_version == pki.roster.version


def test_a_frame_after_the_handshake_is_refused(pki: Pki) -> None:
    client = side(pki, Role.CLIENT, "FRA", "DEU")
    server = side(pki, Role.SERVER, "DEU", "FRA")
    [server_hello] = server.receive(client.start()[0])
    [client_auth] = client.receive(server_hello)
    [server_auth] = server.receive(client_auth)
    client.receive(server_auth)

    with pytest.raises(HandshakeError, match="already complete"):
        client.receive(server_auth)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"v": 0}, "speaks up to version 0"),
        ({"to": "USA"}, "meant to reach USA"),
        ({"node": "fr"}, "not a node id"),
        ({"nonce": b64encode(b"short")}, "32 bytes"),
    ],
)
def test_a_hello_that_is_wrong_is_refused(
    pki: Pki, changes: dict[str, object], message: str
) -> None:
    server = side(pki, Role.SERVER, "DEU", "FRA")

    with pytest.raises(HandshakeError, match=message):
        server.receive(hello("FRA", "DEU", **changes))


def test_a_client_offering_a_later_version_gets_ours_and_the_link_speaks_it(pki: Pki) -> None:
    client = side(pki, Role.CLIENT, "FRA", "DEU")
    server = side(pki, Role.SERVER, "DEU", "FRA")
    offered = json.loads(client.start()[0][1:])
    # A version after ours, with a field we do not know: ignored, not refused.
    newest = max(LINK_VERSIONS)
    later = frame(FRAME_HELLO, canonical({**offered, "v": newest + 1, "features": ["attach"]}))

    [server_hello] = server.receive(later)
    [client_auth] = client.receive(server_hello)
    [server_auth] = server.receive(client_auth)
    client.receive(server_auth)

    assert json.loads(server_hello[1:])["v"] == newest
    assert client.done and server.done and client.version == server.version == newest


def test_a_server_choosing_a_version_the_client_did_not_offer_is_refused(pki: Pki) -> None:
    client = side(pki, Role.CLIENT, "FRA", "DEU")
    client.start()
    chosen = hello("DEU", "FRA", v=max(LINK_VERSIONS) + 1)

    with pytest.raises(HandshakeError, match="chose version") as refused:
        client.receive(chosen)
    assert refused.value.reason == "unsupported_version"


def test_the_version_agreed_is_signed_so_a_downgrade_breaks_the_signatures(pki: Pki) -> None:
    client = side(pki, Role.CLIENT, "FRA", "DEU")
    server = side(pki, Role.SERVER, "DEU", "FRA")
    [server_hello] = server.receive(client.start()[0])
    [client_auth] = client.receive(server_hello)
    assert server.version == max(LINK_VERSIONS)
    server.version = PROTOCOL_VERSION  # a downgrade, as if someone had changed the hellos

    with pytest.raises(HandshakeError) as refused:
        server.receive(client_auth)
    assert refused.value.reason == "bad_signature"


def test_a_hello_with_an_unknown_field_is_refused(pki: Pki) -> None:
    server = side(pki, Role.SERVER, "DEU", "FRA")

    with pytest.raises(MalformedError):
        server.receive(hello("FRA", "DEU", extra=1))


def test_our_own_nonce_reflected_is_refused(pki: Pki) -> None:
    nonce = os.urandom(32)
    server = side(pki, Role.SERVER, "DEU", "FRA", nonce=nonce)

    with pytest.raises(HandshakeError, match="own nonce reflected"):
        server.receive(hello("FRA", "DEU", nonce=b64encode(nonce)))


def test_another_node_answering_the_dialled_one_is_refused(pki: Pki) -> None:
    client = side(pki, Role.CLIENT, "FRA", "DEU")
    client.start()

    with pytest.raises(HandshakeError, match="dialled DEU but USA answered"):
        client.receive(hello("USA", "FRA"))


def test_a_certificate_other_than_the_pinned_one_is_refused(pki: Pki) -> None:
    server = side(pki, Role.SERVER, "DEU", "FRA", peer_cert=pki["USA"].card.tls_sha256)

    with pytest.raises(HandshakeError, match="not the one the roster pins"):
        server.receive(hello("FRA", "DEU"))


def test_a_node_revoked_in_the_roster_is_refused(pki: Pki) -> None:
    data = sign_roster(pki.keeper, pki.nodes, version=2, revoked=("FRA",))
    roster = load_roster(data, keeper=pki.keeper.verify_key(), now=NOW)
    server = side(pki, Role.SERVER, "DEU", "FRA", roster=roster)

    with pytest.raises(UnknownNodeError, match="revoked"):
        server.receive(hello("FRA", "DEU"))


def test_a_signature_by_another_key_is_refused(pki: Pki) -> None:
    client = side(pki, Role.CLIENT, "FRA", "DEU")
    server = side(pki, Role.SERVER, "DEU", "FRA")
    [server_hello] = server.receive(client.start()[0])
    client.receive(server_hello)
    forged = frame(FRAME_AUTH, canonical({"sig": b64encode(pki["USA"].signing.sign(b"x"))}))

    with pytest.raises(HandshakeError) as caught:
        server.receive(forged)
    assert caught.value.reason == "bad_signature"


def test_a_signature_from_another_session_is_refused(pki: Pki) -> None:
    """The transcript binds both nonces: an auth frame replayed into a new session fails."""
    client = side(pki, Role.CLIENT, "FRA", "DEU")
    server = side(pki, Role.SERVER, "DEU", "FRA")
    [server_hello] = server.receive(client.start()[0])
    [client_auth] = client.receive(server_hello)
    replay_target = side(pki, Role.SERVER, "DEU", "FRA")
    replay_target.receive(hello("FRA", "DEU"))

    with pytest.raises(HandshakeError) as caught:
        replay_target.receive(client_auth)
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "data",
    [frame(FRAME_AUTH, b'{"sig":"AAAA"}'), frame(FRAME_RECEIPT, b"r"), frame(FRAME_ENVELOPE, b"")],
)
def test_a_frame_out_of_turn_is_refused(pki: Pki, data: bytes) -> None:
    server = side(pki, Role.SERVER, "DEU", "FRA")

    with pytest.raises(HandshakeError, match="unexpected"):
        server.receive(data)


def test_a_second_hello_is_refused(pki: Pki) -> None:
    server = side(pki, Role.SERVER, "DEU", "FRA")
    server.receive(hello("FRA", "DEU"))

    with pytest.raises(HandshakeError, match="unexpected H frame"):
        server.receive(hello("FRA", "DEU"))


def test_a_large_handshake_frame_is_refused(pki: Pki) -> None:
    server = side(pki, Role.SERVER, "DEU", "FRA")

    with pytest.raises(PeerError):
        server.receive(frame(FRAME_HELLO, b" " * 1025))


def test_a_client_must_know_whom_it_dialled(pki: Pki) -> None:
    with pytest.raises(ValueError, match="knows which peer"):
        LinkHandshake(
            role=Role.CLIENT,
            me=NodeId("FRA"),
            signing_key=pki["FRA"].signing,
            roster=pki.roster,
            my_cert_sha256=pki["FRA"].card.tls_sha256,
            peer_cert_sha256=pki["DEU"].card.tls_sha256,
            nonce=os.urandom(32),
        )


# -- backoff ---------------------------------------------------------------------------


def take(delays: Callable[[], float], n: int) -> list[float]:
    return [delays() for _ in range(n)]


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    delays = backoff_delays(base=0.5, cap=8.0, rng=random.Random(7))

    drawn = take(lambda: next(delays), 200)

    for attempt, delay in enumerate(drawn):
        assert 0.0 <= delay <= min(8.0, 0.5 * 2**attempt)
    assert max(drawn[10:]) > 4.0  # the cap is reached, not just respected


def test_backoff_goes_on_forever_without_overflow() -> None:
    delays = backoff_delays(base=1.0, cap=60.0, rng=random.Random(1))

    assert all(0.0 <= next(delays) <= 60.0 for _ in range(2000))
