"""Hostile peers against a real node: it refuses, records it, stays up, and its links carry on.

DEU is the node under attack, FRA its genuine peer; each test measures the
FRA -> DEU stream without an attack, then again while a hostile peer written
here (real TLS, real WebSockets) attacks DEU, and asserts that every message
is delivered and DEU stays up and linked (the two rates are printed: speed is
a benchmark's business, not a test's). USA is a contact point turned
hostile (its own keys, so it gets past the handshake); the thief holds FRA's
TLS certificate and key but not FRA's signing key.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from network.core.crypto import SigningKey, generate_signing_key, sha256
from network.core.envelope import MAX_RECEIPT_BYTES, make_receipt, seal
from network.core.protocol import (
    FRAME_CHECKPOINT,
    FRAME_ENVELOPE,
    FRAME_GIVE_BACK,
    FRAME_HELLO,
    FRAME_RECEIPT,
    LINK_VERSIONS,
    MAX_FRAME_BYTES,
    LinkHandshake,
    Role,
    envelope_frame,
    frame,
    split_envelope,
    split_frame,
)
from network.core.records import (
    MessageId,
    MessageType,
    NodeId,
    Outcome,
    Priority,
    b64encode,
    canonical,
)
from network.node.config import load_config
from network.node.context import REFUSALS_PER_MINUTE
from network.node.keys import load_node_keys
from network.node.links import MAX_PENDING_HANDSHAKES, PENDING_PER_ROSTER_HOST
from network.node.runner import load_current_roster
from network.samples import sample_body
from tests.faults.proxy import Proxy
from tests.harness import Network, pause_async, rows, wait_for
from tests.test_cases import in_days
from tests.test_node import client_context

pytestmark = pytest.mark.timeout(120)

STREAM = 20  # messages FRA -> DEU per measurement
HANDSHAKE_TIMEOUT = 2  # DEU's, shortened so that stalled handshakes time out within the test


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]}, extra_nodes=("USA",))
    deu = network.nodes["DEU"].config
    deu.write_text(
        deu.read_text().replace("[peer]\n", f"[peer]\nhandshake_timeout = {HANDSHAKE_TIMEOUT}\n")
    )
    try:
        network.start("DEU", "FRA")
        wait_for(lambda: linked(network, "FRA"), what="FRA linked to DEU")
        yield network
    finally:
        network.close()


# -- the genuine stream, and the measure of it -------------------------------------------


def linked(network: Network, peer: str) -> bool:
    status, answer = network.api("DEU", "GET", "/api/peers")
    return status == 200 and any(p["id"] == peer and p["linked"] for p in answer["peers"])


def stream(network: Network) -> float:
    """Send STREAM messages FRA -> DEU through FRA's API; the rate at which all were delivered."""
    start = time.monotonic()
    ids = {network.send("FRA", "DEU", "emergency", sample_body("emergency")) for _ in range(STREAM)}

    def delivered() -> bool:
        out = network.list("FRA", "out")
        return ids <= {m["id"] for m in out if m["state"] == "delivered"}

    wait_for(delivered, timeout=60, what=f"{STREAM} messages delivered")
    return STREAM / (time.monotonic() - start)


def under_attack(network: Network, attack: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Measure the stream, then measure it again while `attack` runs over and over."""
    baseline = stream(network)
    stop, begun = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    async def repeat() -> None:
        while not stop.is_set():
            await attack()
            begun.set()
            await pause_async(0.02, "the attacker's pace: leave the nodes some of the two cores")

    def run() -> None:
        try:
            asyncio.run(repeat())
        except BaseException as exc:  # the test asserts on it below
            failures.append(exc)

    attacker = threading.Thread(target=run)
    attacker.start()
    try:
        # The attack is under way before the stream starts.
        wait_for(lambda: begun.is_set() or failures, what="the first attack")
        attacked = stream(network)
    finally:
        stop.set()
        attacker.join(timeout=30)
    assert not failures, failures
    assert network.api("DEU", "GET", "/healthz", token=None)[0] == 200
    assert network.nodes["DEU"].process is not None
    assert network.nodes["DEU"].process.poll() is None
    assert linked(network, "FRA")
    # The genuine stream was delivered in full under attack (`stream` waits for every
    # message). Its rate against the baseline is a benchmark's figure, not asserted: on a
    # shared two-core machine it is noise (11 against 47 msg/s was seen with no defect).
    print(f"{attacked:.1f} msg/s under attack, {baseline:.1f} without")


def audited(network: Network, action: str) -> list[tuple[str, dict[str, Any]]]:
    entries = rows(
        network.nodes["DEU"].store, "SELECT actor, detail FROM audit WHERE action = ?", (action,)
    )
    return [(actor, json.loads(detail)) for actor, detail in entries]


# -- a hostile peer ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def hostile(
    network: Network,
    me: str = "USA",
    *,
    signing: SigningKey | None = None,
    sock: socket.socket | None = None,
    offer: dict[str, Any] | None = None,
) -> AsyncIterator[ClientConnection]:
    """A link to DEU as `me` (its certificate), the hello signed by `signing` (default: its
    key), over `sock` if given (connected to DEU's peer port), its hello changed by
    `offer` (a later version's fields, say)."""
    keys = load_node_keys(network.keys / me, NodeId(me))
    roster = load_current_roster(load_config(network.nodes[me].config))
    url = f"wss://127.0.0.1:{network.nodes['DEU'].peer_port}"
    context = client_context(network, me)
    options: dict[str, Any] = {"sock": sock, "server_hostname": "DEU"} if sock else {}
    async with connect(
        url, ssl=context, proxy=None, compression=None, max_size=None, **options
    ) as ws:
        der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        handshake = LinkHandshake(
            role=Role.CLIENT,
            me=NodeId(me),
            signing_key=signing or keys.signing,
            roster=roster,
            my_cert_sha256=keys.card.tls_sha256,
            peer_cert_sha256=sha256(der),
            nonce=os.urandom(32),
            expected_peer=NodeId("DEU"),
        )
        for out in handshake.start():
            if offer is not None:
                out = frame(FRAME_HELLO, canonical({**json.loads(out[1:]), **offer}))
            await ws.send(out)
        while not handshake.done:
            for out in handshake.receive(await asyncio.wait_for(ws.recv(), 10)):
                await ws.send(out)
        yield ws


async def next_frame(ws: ClientConnection, wanted: bytes) -> bytes:
    """The payload of the next frame of kind `wanted` DEU sends (those before it read)."""
    while True:
        kind, payload = split_frame(await asyncio.wait_for(ws.recv(), 10))
        if kind == wanted:
            return payload


async def receipts(ws: ClientConnection, count: int) -> list[bytes]:
    return [await next_frame(ws, FRAME_RECEIPT) for _ in range(count)]


async def closed_by_node(ws: ClientConnection) -> None:
    """Wait until DEU closes the link (reading what it sends meanwhile)."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)


def usa_to_deu(
    network: Network,
    created: int | None = None,
    message_type: MessageType = MessageType.TECHNICAL_ADVICE,
    body: dict[str, Any] | None = None,
    priority: Priority = Priority.ROUTINE,
) -> bytes:
    """An envelope USA seals to DEU (the sample body of `message_type` unless `body`)."""
    usa = load_node_keys(network.keys / "USA", NodeId("USA"))
    roster = load_current_roster(load_config(network.nodes["USA"].config))
    return seal(
        sender=NodeId("USA"),
        recipient=NodeId("DEU"),
        message_type=message_type,
        body=sample_body(message_type) if body is None else body,
        priority=priority,
        now=created or int(time.time() * 1000),
        random_bytes=os.urandom(10),
        signing_key=usa.signing,
        recipient_key=roster.active_card("DEU").hpke_key,
    ).raw


def resigned(network: Network, doc: dict[str, Any]) -> bytes:
    """An envelope document with its outer signature made again by USA over what it holds."""
    usa = load_node_keys(network.keys / "USA", NodeId("USA"))
    signed = canonical({"header": doc["header"], "sealed": doc["sealed"]})
    doc["sig"] = b64encode(usa.signing.sign(b"cpn/v1 outer\n" + signed))
    return canonical(doc)


def answered_by_usa(network: Network, response: bytes) -> dict[str, Any]:
    """USA's link takes the request DEU sends it, answers with `response`, and gives back
    DEU's receipt for that answer (its only one on this link)."""

    async def answer() -> bytes:
        async with hostile(network) as ws:  # DEU sends its request over this link
            await next_frame(ws, FRAME_ENVELOPE)
            await ws.send(envelope_frame([], response))
            [receipt] = await receipts(ws, 1)
            return receipt

    receipt: dict[str, Any] = orjson.loads(asyncio.run(answer()))["receipt"]
    return receipt


# -- the attacks ---------------------------------------------------------------------


def test_a_stolen_certificate_without_the_signing_key_is_refused(net: Network) -> None:
    # FRA's certificate and TLS key, stolen; FRA's signing key is not: the thief signs with its own.
    thief_key = generate_signing_key()

    async def attack() -> None:
        with pytest.raises(Exception) as refused:
            async with hostile(net, "FRA", signing=thief_key):
                pass
        assert "bad_signature" in str(refused.value) or "1008" in str(refused.value)

    under_attack(net, attack)

    refusals = audited(net, "link_refused")
    assert refusals and all(d["reason"] == "bad_signature" for _, d in refusals)
    assert all(actor == "peer:127.0.0.1" for actor, _ in refusals)


def test_a_dialler_reaching_another_contact_point_at_its_peers_address_stops_at_tls(
    tmp_path: Path,
) -> None:
    """FRA dials DEU, and the address DEU's card names leads to KEN (a contact point, its
    certificate in the roster): the dialler trusts only DEU's certificate, so the TLS
    handshake itself fails; no hello is signed or read. Before, a dialler trusted every
    contact point's certificate, and only the certificate pin after TLS refused."""
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": [], "KEN": []}, proxied=("DEU",))
    deu, ken = network.nodes["DEU"], network.nodes["KEN"]
    assert deu.proxy_socket is not None
    proxy = Proxy(deu.proxy_socket, ken.listen_port).start()
    try:
        network.start("KEN", "FRA")
        failed = wait_for(
            lambda: rows(
                network.nodes["FRA"].store, "SELECT last_error FROM peers WHERE id = 'DEU'"
            ),
            what="FRA's failed dial of DEU",
        )
    finally:
        proxy.close()
        network.close()

    assert "CERTIFICATE_VERIFY_FAILED" in str(failed[0][0]), failed


def test_forged_envelopes_are_refused_with_a_signed_rejection(net: Network) -> None:
    seen: dict[str, int] = {}

    async def attack() -> None:
        valid = orjson.loads(usa_to_deu(net))
        bad_signature = {**valid, "sig": b64encode(b"\x00" * 64)}
        unknown_signer = {**valid, "header": {**valid["header"], "from": "CHE"}}
        sealed = valid["sealed"]
        swap = "B" if sealed[40] != "B" else "C"
        tampered = {**valid, "sealed": sealed[:40] + swap + sealed[41:]}
        forgeries = [canonical(bad_signature), resigned(net, unknown_signer)]
        forgeries.append(resigned(net, tampered))
        async with hostile(net) as ws:
            for raw in forgeries:
                await ws.send(envelope_frame([], raw))
            for raw in await receipts(ws, len(forgeries)):
                statement = orjson.loads(raw)["receipt"]
                assert statement["outcome"] == "rejected"
                seen[statement["reason"]] = seen.get(statement["reason"], 0) + 1

    under_attack(net, attack)

    assert set(seen) == {"bad_signature", "unknown_signer", "decrypt_failed"}
    reasons = {d["reason"] for actor, d in audited(net, "rejected") if actor == "node:USA"}
    assert reasons == {"bad_signature", "unknown_signer", "decrypt_failed"}
    assert not [m for m in net.list("DEU", "in") if m["from"] != "FRA"]


def test_replayed_envelopes_get_the_original_receipt_byte_for_byte(net: Network) -> None:
    envelope = usa_to_deu(net)
    answers: list[bytes] = []

    async def attack() -> None:
        async with hostile(net) as ws:
            for _ in range(5):
                await ws.send(envelope_frame([], envelope))
            answers.extend(await receipts(ws, 5))

    under_attack(net, attack)

    first = orjson.loads(answers[0])["receipt"]
    assert first["outcome"] == "accepted"
    assert len(answers) >= 10 and set(answers) == {answers[0]}  # the stored original, every time
    assert len([m for m in net.list("DEU", "in") if m["from"] == "USA"]) == 1
    duplicates = [d for actor, d in audited(net, "duplicate") if actor == "node:USA"]
    assert len(duplicates) == len(answers) - 1
    assert all(d["original_receipt"] for d in duplicates)


def test_frames_over_the_size_limits_cut_the_link(net: Network) -> None:
    oversize = [
        FRAME_RECEIPT + b"x" * (MAX_RECEIPT_BYTES + 1),  # over its kind's limit
        FRAME_RECEIPT + b"x" * MAX_FRAME_BYTES,  # over the WebSocket limit: websockets cuts it
    ]
    sent = itertools.cycle(oversize)

    async def attack() -> None:
        async with hostile(net) as ws:
            await ws.send(next(sent))
            await closed_by_node(ws)

    under_attack(net, attack)

    cut = [d for actor, d in audited(net, "link_protocol_error") if actor == "peer:USA"]
    assert len(cut) >= 2 and {d["reason"] for d in cut} == {"oversize"}
    assert {"websocket" in d["error"].lower() for d in cut} == {True, False}


async def write_raw(ws: ClientConnection, data: bytes) -> None:
    """Bytes straight onto the TLS stream, under the WebSocket framing."""
    ws.transport.write(data)


GARBAGE: list[Callable[[ClientConnection], Coroutine[Any, Any, None]]] = [
    lambda ws: ws.send("a text frame"),
    lambda ws: ws.send(b"Z" + b"an unknown kind"),
    lambda ws: ws.send(FRAME_CHECKPOINT + b'{"note":'),  # JSON cut short
    lambda ws: write_raw(ws, b"\x8f\xff" + os.urandom(64)),  # not frames
]


def test_refusals_of_one_peer_are_audited_at_a_bounded_rate_and_the_rest_counted(
    net: Network,
) -> None:
    # Finding 5 of issue 14: each refused envelope was an audit entry, without bound.
    forged = orjson.loads(usa_to_deu(net))
    forgery = canonical({**forged, "sig": b64encode(b"\x00" * 64)})
    sent = 0

    async def attack() -> None:
        nonlocal sent
        async with hostile(net) as ws:
            while sent < 2 * REFUSALS_PER_MINUTE:
                for _ in range(20):  # within the window: each batch is answered
                    await ws.send(envelope_frame([], forgery))
                for raw in await receipts(ws, 20):
                    assert orjson.loads(raw)["receipt"]["reason"] == "bad_signature"
                sent += 20

    asyncio.run(attack())
    net.stop("DEU")

    rejected = [d for actor, d in audited(net, "rejected") if actor == "node:USA"]
    counted = [d for _, d in audited(net, "refusals_suppressed") if d["source"] == "USA"]
    assert len(rejected) == REFUSALS_PER_MINUTE  # every envelope got its signed rejection
    assert sum(d.get("suppressed", 0) for d in rejected) + sum(d["count"] for d in counted) == (
        sent - REFUSALS_PER_MINUTE
    )


def test_a_peer_offering_a_later_version_links_at_ours_and_is_answered(
    net: Network,
) -> None:
    # Issue 15: a node speaking a hypothetical later version (a field we do not know, a
    # frame kind we do not know) keeps working with this one, at this one's version.
    later = {"v": max(LINK_VERSIONS) + 1, "features": ["attachments"]}

    async def exchange() -> tuple[list[bytes], bool]:
        async with hostile(net, offer=later) as ws:
            await ws.send(envelope_frame([], usa_to_deu(net)))
            answered = await receipts(ws, 1)
            await ws.send(b"X" + b"a later version's frame kind, never sent at ours")
            await closed_by_node(ws)
            return answered, ws.close_code == 1002

    [receipt], cut = asyncio.run(exchange())

    assert orjson.loads(receipt)["receipt"]["outcome"] == "accepted"
    assert cut  # a frame of a later version on an earlier version's link is a protocol error
    assert [m for m in net.list("DEU", "in") if m["from"] == "USA"]


def test_malformed_and_garbage_frames_cut_the_link(net: Network) -> None:
    sent = itertools.cycle(GARBAGE)

    async def attack() -> None:
        async with hostile(net) as ws:
            await next(sent)(ws)
            await closed_by_node(ws)

    under_attack(net, attack)

    cut = [d for actor, d in audited(net, "link_protocol_error") if actor == "peer:USA"]
    assert len(cut) >= len(GARBAGE) and {d["reason"] for d in cut} == {"malformed"}
    assert any("not WebSocket frames" in d["error"] for d in cut)


def test_a_flood_of_envelopes_past_the_window_cuts_the_link(net: Network) -> None:
    envelope = usa_to_deu(net)

    async def attack() -> None:
        async with hostile(net) as ws:
            with contextlib.suppress(ConnectionClosed):
                for _ in range(2000):  # far past the window of 40 (+8 flash +32 batch)
                    await ws.send(envelope_frame([], envelope))
            await closed_by_node(ws)

    under_attack(net, attack)

    cut = [d for actor, d in audited(net, "link_protocol_error") if actor == "peer:USA"]
    assert cut and {d["reason"] for d in cut} <= {"window_exceeded", "flood"}


# -- connections that never finish their handshake ---------------------------------------


def open_fds(network: Network) -> int:
    process = network.nodes["DEU"].process
    assert process is not None
    return len(os.listdir(f"/proc/{process.pid}/fd"))


def closed(sock: socket.socket) -> bool:
    """True once the other end closed (or reset) the connection."""
    sock.setblocking(False)
    try:
        while sock.recv(1024):
            pass  # a TLS session ticket, say
        return True
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True


def test_connections_that_never_finish_the_handshake_are_bounded_and_timed_out(
    net: Network,
) -> None:
    port = net.nodes["DEU"].peer_port
    before = open_fds(net)
    baseline = stream(net)
    net.stop("FRA")  # FRA must connect anew while the node holds the stalled connections

    # Plain TCP that never starts TLS, many more than the node holds at once.
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    # TLS done, then nothing: neither the WebSocket upgrade nor the signed hello.
    context = client_context(net, "USA")
    tls = [
        context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="DEU")
        for _ in range(10)
    ]

    async def upgraded_then_silent() -> list[ClientConnection]:
        url = f"wss://127.0.0.1:{port}"
        return [await connect(url, ssl=context, proxy=None) for _ in range(10)]

    async def all_closed_by_node(links: list[ClientConnection]) -> None:
        await asyncio.gather(*(closed_by_node(ws) for ws in links))

    async def close(links: list[ClientConnection]) -> None:
        await asyncio.gather(*(ws.close() for ws in links))

    loop = asyncio.new_event_loop()
    hellos: list[ClientConnection] = []
    try:
        hellos = loop.run_until_complete(upgraded_then_silent())

        def held_now() -> int:
            return sum(not closed(s) for s in silent + tls) + len(hellos)

        def shed() -> list[int] | None:
            held = held_now()
            return [held] if held <= MAX_PENDING_HANDSHAKES + 5 else None

        # The node sheds what it will not hold at once, before any handshake times out.
        try:
            [held] = wait_for(shed, timeout=HANDSHAKE_TIMEOUT / 2, what="the excess shed")
        except AssertionError:
            held = held_now()  # the assertion below says how many
        fds_held = open_fds(net)
        net.start("FRA")
        wait_for(lambda: linked(net, "FRA"), what="FRA linked again despite the stalled ones")
        attacked = stream(net)
        # TLS, then upgrade, then hello: each times out.
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: all(closed(s) for s in silent + tls),
                timeout=HANDSHAKE_TIMEOUT * 2 + 1,
                what="every stalled connection timed out",
            )
        still_open = [s for s in silent + tls if not closed(s)]
        loop.run_until_complete(all_closed_by_node(hellos))
    finally:
        loop.run_until_complete(close(hellos))
        loop.close()
        for s in silent + tls:
            s.close()

    # All from 127.0.0.1, the harness's one roster host: it holds at most its own bound.
    assert held <= PENDING_PER_ROSTER_HOST + 5, f"the node held {held} unfinished handshakes"
    assert fds_held <= before + PENDING_PER_ROSTER_HOST + 20
    assert not still_open, f"{len(still_open)} stalled connections never timed out"
    print(f"{attacked:.1f} msg/s under attack, {baseline:.1f} without")  # a figure, not a test
    assert net.api("DEU", "GET", "/healthz", token=None)[0] == 200
    timeouts = [
        d for actor, d in audited(net, "link_refused") if d["reason"] == "handshake_timeout"
    ]
    assert len(timeouts) >= len(hellos)


# -- receipts a peer we sent to can sign (issue 14, finding 1) -----------------------------


def test_a_signed_rejection_after_delivery_is_an_audited_no_op_and_the_node_runs_on(
    net: Network,
) -> None:
    usa = load_node_keys(net.keys / "USA", NodeId("USA"))
    message_id = net.send("DEU", "USA", "emergency", sample_body("emergency"))

    async def receive_then_refuse() -> None:
        async with hostile(net) as ws:  # DEU sends what it holds for USA over this link
            _path, raw = split_envelope(await next_frame(ws, FRAME_ENVELOPE))
            for outcome, reason in ((Outcome.ACCEPTED, None), (Outcome.REJECTED, "expired")):
                receipt = make_receipt(
                    message_id=MessageId(message_id),
                    message_sender=NodeId("DEU"),
                    envelope_raw=raw,
                    me=NodeId("USA"),
                    signing_key=usa.signing,
                    now=int(time.time() * 1000),
                    random_bytes=os.urandom(10),
                    outcome=outcome,
                    reason=reason,
                )
                await ws.send(frame(FRAME_RECEIPT, receipt.raw))
            wait_until = time.monotonic() + 10
            while time.monotonic() < wait_until and "refusal_ignored" not in [
                a for (a,) in rows(net.nodes["DEU"].store, "SELECT action FROM audit")
            ]:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 0.2)

    asyncio.run(receive_then_refuse())

    assert net.api("DEU", "GET", "/healthz", token=None)[0] == 200
    process = net.nodes["DEU"].process
    assert process is not None and process.poll() is None  # the node runs on
    status, message = net.api("DEU", "GET", f"/api/messages/{message_id}")
    assert status == 200 and message["state"] == "delivered"
    assert [a for a, _ in audited(net, "refusal_ignored")] == ["node:DEU"]
    assert linked(net, "FRA")


def test_strangers_connecting_from_many_addresses_never_push_out_a_contact_point(
    tmp_path: Path,
) -> None:
    # Issue 14, finding 6: each connection accepted past the bound shut the oldest
    # unfinished handshake, whoever's it was: plain TCP connects pushed genuine peers out.
    network = Network(tmp_path, {"DEU": []}, extra_nodes=("USA",))
    try:
        network.start("DEU")
        port = network.nodes["DEU"].peer_port
        # USA's connection, from its roster address, accepted and not yet through TLS.
        genuine = socket.create_connection(("127.0.0.1", port))
        strangers = []
        for i in range(2 * MAX_PENDING_HANDSHAKES):  # from 127.0.0.2 to .40: no roster host
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + i % 39}", 0))
            sock.connect(("127.0.0.1", port))
            strangers.append(sock)
        wait_for(
            lambda: sum(closed(s) for s in strangers) >= MAX_PENDING_HANDSHAKES,
            what="the node shedding strangers",
        )

        async def link_as_usa() -> None:
            async with hostile(network, sock=genuine):
                pass  # through TLS, the upgrade and the signed handshake

        asyncio.run(link_as_usa())  # raises if the node shut it
    finally:
        network.close()
        for sock in strangers:
            sock.close()


def test_a_peer_of_the_previous_release_links_at_version_1_and_is_answered(
    net: Network,
) -> None:
    # Issue 17, rolling upgrade: a node speaking only version 1 exchanges with this one at
    # version 1, and version 2's frames (here a restored node's ask) are not for its link.
    async def exchange() -> tuple[list[bytes], bool]:
        async with hostile(net, offer={"v": 1}) as ws:
            await ws.send(envelope_frame([], usa_to_deu(net)))
            answered = await receipts(ws, 1)
            await ws.send(frame(FRAME_GIVE_BACK, canonical({"after": None, "since": 0})))
            await closed_by_node(ws)
            return answered, ws.close_code == 1002

    [receipt], cut = asyncio.run(exchange())

    assert orjson.loads(receipt)["receipt"]["outcome"] == "accepted"
    assert cut
    assert [m for m in net.list("DEU", "in") if m["from"] == "USA"]


# -- answers that do not answer the request (issue 19) --------------------------------------


def test_an_answer_no_request_of_its_kind_may_have_is_refused_and_starts_no_clock(
    net: Network,
) -> None:
    # A `preserved` to a `locate` was accepted: the request counted as answered and a
    # preservation clock started for data nobody was asked to preserve.
    locate = net.send("DEU", "USA", "locate", sample_body("locate"))
    answer = {"in_reply_to": locate, "status": "preserved", "preserved_until": "2027-06-30"}
    response = usa_to_deu(
        net, message_type=MessageType.RESPONSE, body=answer, priority=Priority.URGENT
    )

    receipt = answered_by_usa(net, response)

    assert receipt["for"] == orjson.loads(response)["header"]["id"]
    assert receipt["outcome"] == "rejected" and receipt["reason"] == "malformed"
    status, message = net.api("DEU", "GET", f"/api/messages/{locate}")
    assert status == 200 and message["state"] != "answered"
    assert not net.api("DEU", "GET", "/api/preservations")[1]["preservations"]
    refusals = [str(d) for _, d in audited(net, "rejected")]
    assert any("preserved does not answer a locate request" in d for d in refusals), refusals


def test_an_emergency_sent_routine_is_refused_at_receipt(net: Network) -> None:
    # Issue 19: an emergency is never routine; the API refused it, the receiver did not.
    async def send() -> bytes:
        async with hostile(net) as ws:
            await ws.send(envelope_frame([], usa_to_deu(net, message_type=MessageType.EMERGENCY)))
            [receipt] = await receipts(ws, 1)
            return receipt

    receipt = orjson.loads(asyncio.run(send()))["receipt"]

    assert receipt["outcome"] == "rejected" and receipt["reason"] == "malformed"
    assert not [m for m in net.list("DEU", "in") if m["from"] == "USA"]
    refusals = [str(d) for _, d in audited(net, "rejected")]
    assert any("never routine" in d for d in refusals), refusals


# -- follow-ups: only the requester speaks of its own request (issue 19) --------------------


def test_a_withdrawal_of_another_partys_request_is_refused_and_moves_nothing(
    net: Network,
) -> None:
    # USA names a request DEU received from FRA: were it believed, any Party could withdraw
    # (and so stop the deadlines of, and release the data for) another Party's request.
    request = net.send("FRA", "DEU", "preservation", sample_body("preservation"))
    net.wait_state("DEU", request, {"received"})
    withdrawal = {"follows": request, "action": "withdraw", "note": "No longer needed."}
    forged = usa_to_deu(net, message_type=MessageType.FOLLOW_UP, body=withdrawal)
    # A follow-up of a request not held here (it may arrive later) is kept, and moves nothing.
    later = {"follows": "0192f3a4-1111-7abc-8def-0123456789ab", "action": "proceed"}
    unknown = usa_to_deu(net, message_type=MessageType.FOLLOW_UP, body=later)

    async def send() -> list[bytes]:
        async with hostile(net) as ws:
            await ws.send(envelope_frame([], forged))
            await ws.send(envelope_frame([], unknown))
            return await receipts(ws, 2)

    first, second = (orjson.loads(r)["receipt"] for r in asyncio.run(send()))

    assert first["for"] == orjson.loads(forged)["header"]["id"]
    assert first["outcome"] == "rejected" and first["reason"] == "malformed"
    assert second["outcome"] == "accepted"
    status, message = net.api("DEU", "GET", f"/api/messages/{request}")
    assert status == 200 and message["state"] == "opened"  # by this read; not withdrawn
    refusals = [str(d) for _, d in audited(net, "rejected")]
    assert any("plain.body.follows" in d and "exchanged with FRA" in d for d in refusals), refusals
    assert not audited(net, "withdrawn")


def test_a_part_of_another_partys_message_is_refused(net: Network) -> None:
    """A file's part names its message: USA cannot slip bytes into a file FRA sent DEU (or
    into a message of a kind that carries none); a part of a message not here is kept."""
    request = net.send("FRA", "DEU", "preservation", sample_body("preservation"))
    net.wait_state("DEU", request, {"received", "opened"})
    part = {"of": request, "attachment": 0, "part": 0, "data": "JVBERi0xLjQK"}
    forged = usa_to_deu(net, message_type=MessageType.ATTACHMENT_PART, body=part)
    later = {**part, "of": "0192f3a4-2222-7abc-8def-0123456789ab"}
    unknown = usa_to_deu(net, message_type=MessageType.ATTACHMENT_PART, body=later)

    async def send() -> list[bytes]:
        async with hostile(net) as ws:
            await ws.send(envelope_frame([], forged))
            await ws.send(envelope_frame([], unknown))
            return await receipts(ws, 2)

    first, second = (orjson.loads(r)["receipt"] for r in asyncio.run(send()))

    assert (first["outcome"], first["reason"]) == ("rejected", "malformed")
    assert second["outcome"] == "accepted"
    refusals = [str(d) for _, d in audited(net, "rejected")]
    assert any("plain.body.of" in d and "exchanged with FRA" in d for d in refusals), refusals
    held = rows(
        net.nodes["DEU"].store,
        "SELECT COUNT(*) FROM messages WHERE in_reply_to = ? AND attachment IS NOT NULL",
        (request,),
    )
    assert held == [(0,)]


def test_a_preservation_kept_until_a_decision_nobody_asked_for_is_refused(net: Network) -> None:
    # 29(7) keeps data until the MLA decision once the MLA request is received: answering
    # a preservation so (no MLA notice yet) would leave the requester with no date at all.
    request = net.send("DEU", "USA", "preservation", sample_body("preservation"))
    answer = {
        "in_reply_to": request,
        "status": "preserved",
        "until_mla_decision": True,
        "mla_received_on": "2026-12-01",
    }
    response = usa_to_deu(
        net, message_type=MessageType.RESPONSE, body=answer, priority=Priority.URGENT
    )

    receipt = answered_by_usa(net, response)

    assert receipt["outcome"] == "rejected" and receipt["reason"] == "malformed"
    status, message = net.api("DEU", "GET", f"/api/messages/{request}")
    assert status == 200 and message["until_decision"] is None
    refusals = [str(d) for _, d in audited(net, "rejected")]
    assert any("until_mla_decision: answers an mla_notice only" in d for d in refusals), refusals


def test_a_preservation_shorter_than_the_law_asks_is_kept_and_flagged(net: Network) -> None:
    # Issue 19: a peer's preserved_until under the 60 days of 29(7) was taken silently.
    # It is what the data's holder says, so it is kept (and its clock runs), and the
    # requesting officers see why it falls short.
    request = net.send("DEU", "USA", "preservation", sample_body("preservation"))
    answer = {"in_reply_to": request, "status": "preserved", "preserved_until": in_days(10)}
    response = usa_to_deu(
        net, message_type=MessageType.RESPONSE, body=answer, priority=Priority.URGENT
    )

    receipt = answered_by_usa(net, response)

    assert receipt["outcome"] == "accepted"
    status, message = net.api("DEU", "GET", f"/api/messages/{request}")
    assert status == 200 and message["state"] == "answered"
    assert message["preserved_until"] is not None
    (answered,) = [d for _, d in audited(net, "answered")]
    assert "under the 60 days of Budapest 29(7)" in answered["period_problem"]
