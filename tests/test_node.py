"""Real nodes in their own processes on 127.0.0.1: TLS links, SQLite stores, delivery."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage

from network.core.crypto import sha256
from network.core.envelope import Envelope, seal, verify_receipt
from network.core.protocol import FRAME_RECEIPT, LinkHandshake, Role, envelope_frame, split_frame
from network.core.records import MessageType, NodeId, Outcome, Priority
from network.node.config import load_config
from network.node.keys import load_node_keys
from network.node.runner import load_current_roster
from network.samples import sample_body
from tests.harness import Network, rows, sends_beyond_links

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]})
    try:
        yield network
    finally:
        network.close()


def test_preservation_request_is_delivered_end_to_end(pair: Network) -> None:
    pair.start("FRA", "DEU")
    body = sample_body("preservation", summary="Operator of the Lyon ransomware panel")

    message_id = pair.send("FRA", "DEU", "preservation", body)
    delivered = pair.wait_state("FRA", message_id, {"delivered"})
    status, seen = pair.api("DEU", "GET", f"/api/messages/{message_id}")
    status_out, sent = pair.api("FRA", "GET", f"/api/messages/{message_id}")

    assert delivered["state"] == "delivered"
    assert status == 200 and seen["body"] == body and seen["type"] == "preservation"
    assert seen["state"] == "opened" and seen["header"]["from"] == "FRA"
    actions = [entry["action"] for entry in sent["timeline"]]
    sends = actions.count("sent")  # once per link it went on (`sends_beyond_links`)
    assert actions[:3] == ["composed", "sealed", "queued"] and sends >= 1
    assert actions[3 : 5 + sends] == [*["sent"] * sends, "receipt_received", "delivered"]
    assert status_out == 200 and sent["receipts"][0]["outcome"] == "accepted"
    assert (
        sent["receipts"][0]["receipt"]["receipt"]["digest"]
        == seen["receipts"][0]["receipt"]["receipt"]["digest"]
    )
    assert pair.stop("DEU") == 0  # SIGTERM: a clean stop
    assert pair.stop("FRA") == 0
    stopped = rows(pair.nodes["FRA"].store, "SELECT action FROM audit ORDER BY seq")
    assert stopped[-1] == ("node_stopped",) and ("link_up",) in stopped
    assert sends_beyond_links(pair.nodes["FRA"].store, "DEU") == {}
    received = "SELECT COUNT(*) FROM audit WHERE action = 'received' AND message_id = ?"
    assert rows(pair.nodes["DEU"].store, received, (message_id,)) == [(1,)]
    for node_id in ("DEU", "FRA"):
        for suffix in ("", "-wal", "-shm"):
            path = Path(str(pair.nodes[node_id].store) + suffix)
            if path.exists():
                data = path.read_bytes()
                assert b"Lyon ransomware" not in data, path
                assert body["case_ref"].encode() not in data, path


def send_routine(pair: Network) -> str:
    """A routine message FRA -> DEU (an emergency never goes routine)."""
    return pair.send("FRA", "DEU", "technical_advice", sample_body("technical_advice"), "routine")


def test_receiver_killed_mid_stream_loses_nothing_and_stores_nothing_twice(pair: Network) -> None:
    pair.start("FRA", "DEU")
    count = 80
    ids = []

    for index in range(count):
        ids.append(send_routine(pair))
        if index == 20:
            pair.kill("DEU")
    pair.start("DEU")
    pair.wait_all("FRA", "out", count, {"delivered"}, timeout=60)
    pair.stop("DEU")

    stored = rows(pair.nodes["DEU"].store, "SELECT id FROM messages WHERE box = 'in'")
    assert sorted(r[0] for r in stored) == sorted(ids)
    received = rows(pair.nodes["DEU"].store, "SELECT COUNT(*) FROM audit WHERE action = 'received'")
    assert received == [(count,)]


def test_sender_killed_with_queued_messages_resumes_after_restart(pair: Network) -> None:
    pair.start("FRA")
    ids = [pair.send("FRA", "DEU", "emergency", sample_body("emergency")) for _ in range(15)]
    assert {m["state"] for m in pair.list("FRA", "out")} == {"queued"}

    pair.kill("FRA")
    pair.start("DEU", "FRA")
    delivered = pair.wait_all("FRA", "out", len(ids), {"delivered"}, timeout=60)

    assert sorted(m["id"] for m in delivered) == sorted(ids)
    assert len(pair.list("DEU", "in")) == len(ids)


def test_messages_in_flight_when_the_sender_died_go_again_at_once_when_it_restarts(
    pair: Network,
) -> None:
    pair.start("FRA")
    ids = [pair.send("FRA", "DEU", "emergency", sample_body("emergency")) for _ in range(5)]
    pair.kill("FRA")
    # As a SIGKILL between sending and the receipt leaves them: sent, due again in an hour.
    store = pair.nodes["FRA"].store
    with sqlite3.connect(store) as db:
        db.execute(
            "UPDATE messages SET state = 'sent', attempts = 1, retry_at = ? WHERE box = 'out'",
            (int(time.time() * 1000) + 3_600_000,),
        )
    db.close()

    pair.start("DEU", "FRA")
    delivered = pair.wait_all("FRA", "out", len(ids), {"delivered"}, timeout=30)

    assert sorted(m["id"] for m in delivered) == sorted(ids)
    (started,) = rows(
        store, "SELECT detail FROM audit WHERE action = 'node_started' ORDER BY seq DESC LIMIT 1"
    )
    assert json.loads(started[0])["released"] == len(ids)


def test_flash_goes_before_routine(pair: Network) -> None:
    pair.start("FRA")
    routine = [send_routine(pair) for _ in range(5)]
    flash = pair.send("FRA", "DEU", "emergency", sample_body("emergency"), "flash")

    pair.start("DEU")
    pair.wait_all("FRA", "out", 6, {"delivered"})
    pair.stop("DEU")

    order = rows(pair.nodes["DEU"].store, "SELECT id FROM messages ORDER BY received, rowid")
    assert order[0][0] == flash
    assert {r[0] for r in order[1:]} == set(routine)


def test_unknown_recipient_and_bad_fields_are_refused_at_composition(pair: Network) -> None:
    pair.start("FRA")
    body = sample_body("preservation")
    del body["offence"]

    missing = pair.api(
        "FRA",
        "POST",
        "/api/messages",
        {"to": "DEU", "type": "preservation", "priority": "urgent", "body": body},
    )
    unknown = pair.api(
        "FRA",
        "POST",
        "/api/messages",
        {"to": "CHE", "type": "emergency", "priority": "urgent", "body": sample_body("emergency")},
    )

    assert missing[0] == 400 and missing[1]["field"] == "body.offence"
    assert unknown[0] == 400 and unknown[1]["field"] == "to"
    assert pair.list("FRA", "out") == []


# -- a peer speaking the protocol by hand ----------------------------------------------


def client_context(network: Network, node_id: str, cert_of: str | None = None) -> ssl.SSLContext:
    """The TLS context a node would use, optionally presenting another node's certificate."""
    keys = network.keys / (cert_of or node_id)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(
        cadata="".join((network.keys / n / "tls.crt").read_text() for n in network.nodes)
    )
    context.load_cert_chain(keys / "tls.crt", keys / "tls.key")
    return context


async def speak_as(
    network: Network, me: str, peer: str, envelopes: list[bytes], *, signing_of: Path | None = None
) -> list[bytes]:
    """Dial `peer` as `me` with the project's own protocol code; send envelopes, return receipts."""
    keys = load_node_keys(network.keys / me, NodeId(me))
    signing = (
        load_node_keys(signing_of, NodeId(signing_of.name)).signing if signing_of else keys.signing
    )
    roster = load_current_roster(load_config(network.nodes[me].config))
    url = f"wss://127.0.0.1:{network.nodes[peer].peer_port}"
    async with connect(url, ssl=client_context(network, me), proxy=None, compression=None) as ws:
        der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        handshake = LinkHandshake(
            role=Role.CLIENT,
            me=NodeId(me),
            signing_key=signing,
            roster=roster,
            my_cert_sha256=keys.card.tls_sha256,
            peer_cert_sha256=sha256(der),
            nonce=os.urandom(32),
            expected_peer=NodeId(peer),
        )
        for out in handshake.start():
            await ws.send(out)
        while not handshake.done:
            for out in handshake.receive(await ws.recv()):
                await ws.send(out)
        for raw in envelopes:
            await ws.send(envelope_frame([], raw))
        receipts = []
        while len(receipts) < len(envelopes):
            kind, payload = split_frame(await asyncio.wait_for(ws.recv(), 10))
            if kind == FRAME_RECEIPT:
                receipts.append(payload)
        return receipts


def test_a_replay_gets_the_original_receipt_and_other_bytes_under_its_id_an_id_conflict(
    pair: Network,
) -> None:
    pair.start("DEU")
    fra = load_node_keys(pair.keys / "FRA", NodeId("FRA"))
    roster = load_current_roster(load_config(pair.nodes["FRA"].config))
    created, random_bytes = int(time.time() * 1000), os.urandom(10)

    def sealed() -> Envelope:  # the same id each time; HPKE makes the bytes differ
        return seal(
            sender=NodeId("FRA"),
            recipient=NodeId("DEU"),
            message_type=MessageType.EMERGENCY,
            body=sample_body("emergency"),
            priority=Priority.FLASH,
            now=created,
            random_bytes=random_bytes,
            signing_key=fra.signing,
            recipient_key=roster.active_card("DEU").hpke_key,
        )

    envelope, forged_twin = sealed(), sealed()
    assert envelope.header.id == forged_twin.header.id and envelope.raw != forged_twin.raw

    first = asyncio.run(speak_as(pair, "FRA", "DEU", [envelope.raw, envelope.raw]))
    again = asyncio.run(speak_as(pair, "FRA", "DEU", [envelope.raw]))
    twin = asyncio.run(speak_as(pair, "FRA", "DEU", [forged_twin.raw]))

    now = int(time.time() * 1000)
    original = verify_receipt(first[0], roster=roster, now=now)
    assert original.outcome is Outcome.ACCEPTED and original.digest == envelope.digest
    assert first[1] == first[0] and again == [first[0]]  # byte for byte: the stored original
    answer = verify_receipt(twin[0], roster=roster, now=now)
    # Other bytes under an id DEU holds are never a delivery (issue 14): refused, and audited.
    assert answer.outcome is Outcome.REJECTED and answer.reason == "id_conflict"
    assert answer.digest == forged_twin.digest
    assert len(pair.list("DEU", "in")) == 1
    duplicates = rows(
        pair.nodes["DEU"].store, "SELECT detail FROM audit WHERE action = 'duplicate' ORDER BY seq"
    )
    assert [json.loads(d)["original_receipt"] for (d,) in duplicates] == [True, True]
    conflicts = rows(
        pair.nodes["DEU"].store, "SELECT detail FROM audit WHERE action = 'id_conflict'"
    )
    assert [json.loads(d)["held_from"] for (d,) in conflicts] == ["FRA"]


def test_peer_signing_with_a_key_the_roster_does_not_hold_is_refused(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": [], "DEU": []}, extra_nodes=("USA",))
    try:
        network.start("DEU")
        # USA's certificate (stolen), FRA's signing key: the roster pins another key for USA.
        with pytest.raises(Exception) as refused:
            asyncio.run(speak_as(network, "USA", "DEU", [], signing_of=network.keys / "FRA"))
        status, peers = network.api("DEU", "GET", "/api/peers")
        network.stop("DEU")
    finally:
        network.close()

    assert status == 200
    assert "1008" in str(refused.value) or "bad_signature" in str(refused.value)
    assert not any(p["linked"] for p in peers["peers"])
    refusals = rows(
        network.nodes["DEU"].store, "SELECT actor, detail FROM audit WHERE action = 'link_refused'"
    )
    assert refusals and "bad_signature" in str(refusals[0][1])


def test_peer_with_a_certificate_outside_the_roster_is_cut_off_by_tls(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": [], "DEU": []})
    outsider = Network(tmp_path / "outsider", {"FRA": []})  # same id, keys no roster holds
    try:
        network.start("DEU")
        context = client_context(outsider, "FRA")
        context.load_verify_locations(cadata=(network.keys / "DEU" / "tls.crt").read_text())
        url = f"wss://127.0.0.1:{network.nodes['DEU'].peer_port}"

        async def dial() -> None:
            async with connect(url, ssl=context, proxy=None, open_timeout=5):
                pass

        with pytest.raises((InvalidMessage, OSError, ssl.SSLError)):
            asyncio.run(dial())
        status, peers = network.api("DEU", "GET", "/api/peers")
    finally:
        network.close()

    assert status == 200 and not any(p["linked"] for p in peers["peers"])
