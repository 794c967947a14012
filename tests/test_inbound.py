"""network.node.inbound: what peers send, refused or taken, over real stores with a passed clock.

Three nodes in one process (FRA, DEU, and USA, which relays between them or lies):
each test is one of the ways a peer can try to stop a node, fake a delivery, or get a
late resend refused, as issue 14 found them on the landed code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from network.core.attachments import AttachmentFile
from network.core.envelope import (
    Envelope,
    ReceiptScope,
    make_receipt,
    seal,
    verify_receipt,
    verify_signed,
)
from network.core.errors import BusyError
from network.core.lifecycle import State
from network.core.protocol import FRAME_COSIGNATURE, FRAME_RECEIPT, envelope_frame
from network.core.records import MessageType, NodeId, Outcome, Priority
from network.core.roster import Roster, build_roster, load_roster
from network.core.session import CheckpointOffered, LinkSession, LinkSettings, Room
from network.node.keys import NodeKeys, init_keeper, init_node_keys, load_keeper, load_node_keys
from network.node.links import Links, _ClientLink, _Link, _Marks, _Outbox, _outgoing
from network.node.officer import ROUND_SIZE, ROUNDS_AT_ONCE, SUBMITTING_AT_ONCE, WAITING_AT_MOST
from network.node.store import BATCH_MS, MessageRow, Store, _on_thread
from network.node.wiring import Node
from network.node.witnessing import Witnessing
from network.samples import sample_body
from tests.harness import rows, until

pytestmark = pytest.mark.timeout(60)

T0 = 1_795_000_000_000
IDS = ("FRA", "DEU", "USA")


@dataclass
class Clock:
    now: int = T0

    def __call__(self) -> int:
        return self.now


@dataclass
class Trio:
    nodes: dict[str, Node]
    keys: dict[str, NodeKeys]
    roster: Roster
    clock: Clock

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[Trio]:
    now = datetime.datetime.now(datetime.UTC)
    init_keeper(tmp_path / "authority")
    cards = [
        init_node_keys(tmp_path / i, NodeId(i), url=f"wss://127.0.0.1:{n + 1}", now=now)
        for n, i in enumerate(IDS)
    ]
    keeper = load_keeper(tmp_path / "authority")
    data = build_roster(cards, keeper=keeper, version=1, issued=T0 - 1, valid_until=T0 + 10**10)
    roster = load_roster(data, keeper=keeper.verify_key(), now=T0)
    clock = Clock()
    nodes, keys = {}, {}
    for node_id in IDS:
        store = await Store.open(tmp_path / f"{node_id}.sqlite")
        keys[node_id] = load_node_keys(tmp_path / node_id, NodeId(node_id))
        nodes[node_id] = Node.build(keys=keys[node_id], roster=roster, store=store, clock=clock)
    try:
        yield Trio(nodes, keys, roster, clock)
    finally:
        for node in nodes.values():
            await node.context.store.close()


async def queue(
    node: Node,
    to: str = "DEU",
    ttl_ms: int | None = None,
    priority: str = "urgent",
    *,
    message_type: str = "emergency",
    files: Sequence[AttachmentFile] = (),
) -> MessageRow:
    """What an officer of `node` sends to `to`, with `files`, as the row committed."""
    return await node.officers.submit(
        user="olivia",
        to=to,
        message_type=message_type,
        priority=priority,
        body=sample_body(message_type),
        ttl_ms=ttl_ms,
        files=files,
    )


async def submit(
    node: Node, to: str = "DEU", ttl_ms: int | None = None, priority: str = "urgent"
) -> Envelope:
    """What an officer of `node` sends to `to`, as the envelope that leaves."""
    row = await queue(node, to, ttl_ms, priority)
    stored = await node.context.store.message(row.id)
    assert stored is not None
    return verify_signed(stored.envelope, roster=node.context.roster)


async def state_of(node: Node, message_id: str) -> State:
    row = await node.context.store.message(message_id)
    assert row is not None
    return row.state


async def actions(node: Node, message_id: str) -> list[str]:
    return [e["action"] for e in await node.context.store.audit_for(message_id)]


def forge_receipt(
    trio: Trio, signer: str, *, for_: Envelope, to: str, outcome: Outcome, reason: str | None
) -> bytes:
    """An end-to-end receipt `signer` signs as it likes: it is in the roster, so it verifies."""
    return make_receipt(
        message_id=for_.header.id,
        message_sender=NodeId(to),
        envelope_raw=for_.raw,
        me=NodeId(signer),
        signing_key=trio.keys[signer].signing,
        now=trio.clock.now,
        random_bytes=os.urandom(10),
        outcome=outcome,
        reason=reason,
        scope=ReceiptScope.END_TO_END,
    ).raw


# -- finding 1: one signed receipt stopped a node ------------------------------------------


@pytest.mark.parametrize("reason", ["expired", "id_conflict", "anything"])
async def test_a_rejection_after_delivery_is_an_audited_no_op(trio: Trio, reason: str) -> None:
    sent = await submit(trio["FRA"])
    receipts = await trio["DEU"].inbound.accept_envelopes("FRA", [((), sent.raw)])
    await trio["FRA"].inbound.accept_receipts("DEU", receipts)
    assert await state_of(trio["FRA"], sent.header.id) is State.DELIVERED
    late = forge_receipt(trio, "DEU", for_=sent, to="FRA", outcome=Outcome.REJECTED, reason=reason)

    settled = await trio["FRA"].inbound.accept_receipts("DEU", [late])

    assert settled == [sent.header.id]
    assert await state_of(trio["FRA"], sent.header.id) is State.DELIVERED
    assert (await actions(trio["FRA"], sent.header.id))[-1] in ("refusal_ignored", "id_conflict")


async def test_receipts_for_one_message_are_taken_in_the_order_they_came(trio: Trio) -> None:
    """Receipt batches are taken beside each other. The later one, finding its sent marks
    committed, went ahead of the earlier one still waiting for them: a peer's acceptance
    then its rejection were taken the other way round, and the log said `rejected` then
    `delivered` instead of `refusal_ignored` (tests/test_hostile failed so in CI)."""
    fra, deu = trio["FRA"], trio["DEU"]
    sent = await submit(fra)
    (accepted,) = await deu.inbound.accept_envelopes("FRA", [((), sent.raw)])
    rejected = forge_receipt(
        trio, "DEU", for_=sent, to="FRA", outcome=Outcome.REJECTED, reason="expired"
    )
    parked, second_started = asyncio.Event(), asyncio.Event()

    async def marks_of_the_first(ids: Sequence[str]) -> list[str]:
        parked.set()
        await second_started.wait()  # committed just as the second batch comes
        return []

    async def second_batch() -> list[str]:
        second_started.set()
        return await fra.inbound.accept_receipts("DEU", [rejected])  # its marks committed

    first = asyncio.create_task(
        fra.inbound.accept_receipts("DEU", [accepted], sent_marked=marks_of_the_first)
    )
    await until(parked.is_set)
    await asyncio.gather(first, asyncio.create_task(second_batch()))

    assert await state_of(fra, sent.header.id) is State.DELIVERED
    taken = [a for a in await actions(fra, sent.header.id) if a != "receipt_received"]
    assert taken[-2:] == ["delivered", "refusal_ignored"]


async def test_a_rejection_of_an_expired_message_rejects_it(trio: Trio) -> None:
    sent = await submit(trio["FRA"], ttl_ms=60_000)
    trio.clock.now += 60_001
    await trio["FRA"].oversight.expire_due()
    late = forge_receipt(
        trio, "DEU", for_=sent, to="FRA", outcome=Outcome.REJECTED, reason="expired"
    )

    await trio["FRA"].inbound.accept_receipts("DEU", [late])

    assert await state_of(trio["FRA"], sent.header.id) is State.REJECTED


# -- finding 2: a relay suppressed a message and the sender saw `delivered` ----------------


def same_id_from(trio: Trio, sender: str, real: Envelope) -> Envelope:
    """`sender`'s own envelope to the same recipient under `real`'s id (the id is in the
    clear header: its time and random bits are all it takes to mint it again)."""
    value = int(real.header.id.replace("-", ""), 16)
    rand_a, rand_b = value >> 64 & 0xFFF, value & (2**62 - 1)
    envelope = seal(
        sender=NodeId(sender),
        recipient=real.header.recipient,
        message_type=MessageType.EMERGENCY,
        body=sample_body("emergency"),
        priority=Priority.URGENT,
        now=value >> 80,
        random_bytes=(rand_a << 68 | rand_b).to_bytes(10, "big"),
        signing_key=trio.keys[sender].signing,
        recipient_key=trio.roster.active_card(real.header.recipient).hpke_key,
    )
    assert envelope.header.id == real.header.id
    return envelope


async def test_a_relay_that_sends_its_own_envelope_under_a_real_id_is_caught_and_named(
    trio: Trio,
) -> None:
    real = await submit(trio["FRA"])  # FRA -> DEU, relayed by USA
    forged = same_id_from(trio, "USA", real)

    first = await trio["DEU"].inbound.accept_envelopes("USA", [((), forged.raw)])
    answer = await trio["DEU"].inbound.accept_envelopes("USA", [((NodeId("USA"),), real.raw)])
    await trio["FRA"].inbound.accept_receipts("USA", answer)

    assert verify_receipt(first[0], roster=trio.roster, now=trio.clock.now).outcome is (
        Outcome.ACCEPTED
    )
    receipt = verify_receipt(answer[0], roster=trio.roster, now=trio.clock.now)
    assert (receipt.outcome, receipt.reason) == (Outcome.REJECTED, "id_conflict")
    assert receipt.digest == real.digest  # it answers the real bytes, and refuses them
    assert await state_of(trio["FRA"], real.header.id) is State.REJECTED  # never "delivered"
    held = [
        e
        for e in await trio["DEU"].context.store.audit_for(real.header.id)
        if e["action"] == "id_conflict"
    ]
    assert held and held[0]["detail"]["from"] == "FRA" and held[0]["detail"]["held_from"] == "USA"
    for side in ("FRA", "DEU"):
        raised = [a for a in trio[side].context.alerts.recent() if a["alert"] == "id_conflict"]
        assert raised and raised[0]["message_id"] == real.header.id
    assert "id_conflict" in await actions(trio["FRA"], real.header.id)
    inbox = await trio["DEU"].context.store.messages(box="in", limit=10)
    assert [row.origin for row in inbox] == ["USA"]  # the real request was never taken


async def test_other_bytes_under_a_held_id_from_the_same_sender_are_a_conflict(
    trio: Trio,
) -> None:
    real = await submit(trio["FRA"])
    twin = same_id_from(trio, "FRA", real)  # FRA's own key, other bytes (HPKE is fresh)
    await trio["DEU"].inbound.accept_envelopes("FRA", [((), real.raw)])

    answer = await trio["DEU"].inbound.accept_envelopes("FRA", [((), twin.raw)])

    receipt = verify_receipt(answer[0], roster=trio.roster, now=trio.clock.now)
    assert (receipt.outcome, receipt.reason) == (Outcome.REJECTED, "id_conflict")


async def test_two_envelopes_under_one_id_in_one_batch_store_the_first_only(trio: Trio) -> None:
    real = await submit(trio["FRA"])
    forged = same_id_from(trio, "USA", real)

    answers = await trio["DEU"].inbound.accept_envelopes(
        "USA", [((), forged.raw), ((NodeId("USA"),), real.raw)]
    )

    outcomes = [verify_receipt(a, roster=trio.roster, now=trio.clock.now).outcome for a in answers]
    assert outcomes == [Outcome.ACCEPTED, Outcome.REJECTED]


# -- finding 4: anyone could mint end-to-end receipts to be held and passed on -------------


async def test_an_end_to_end_receipt_for_a_message_we_never_relayed_is_refused(
    trio: Trio,
) -> None:
    elsewhere = await submit(trio["DEU"], to="USA")  # a real message FRA never saw
    minted = forge_receipt(
        trio, "USA", for_=elsewhere, to="DEU", outcome=Outcome.ACCEPTED, reason=None
    )

    settled = await trio["FRA"].inbound.accept_receipts("USA", [minted])

    assert settled == []
    refused = await trio["FRA"].context.store.db.execute_fetchall(
        "SELECT detail FROM audit WHERE action = 'receipt_rejected'"
    )
    assert refused and "not a message we relayed" in str(refused[0][0])
    passed = await trio["FRA"].context.store.db.execute_fetchall(
        "SELECT COUNT(*) FROM audit WHERE action = 'receipt_passed_on'"
    )
    assert passed[0][0] == 0


# -- finding 8: the expiry check ran before deduplication ---------------------------------


async def test_a_late_resend_of_a_held_message_gets_its_original_receipt(trio: Trio) -> None:
    sent = await submit(trio["FRA"], ttl_ms=60_000)
    original = await trio["DEU"].inbound.accept_envelopes("FRA", [((), sent.raw)])
    trio.clock.now += 10 * 60_000  # long past its expiry: the receipt was lost, FRA resends

    again = await trio["DEU"].inbound.accept_envelopes("FRA", [((), sent.raw)])

    assert again == original  # byte for byte, not `rejected: expired`


# -- issue 18: a link's worker never waits on witnessing ------------------------------------


async def test_a_links_worker_goes_on_while_a_checkpoint_it_was_offered_waits_for_the_store(
    trio: Trio,
) -> None:
    """Witnessing a peer's checkpoint commits what it holds; at 90% load that waited up to
    120 ms for the store, and the receipts queued behind it on the link's worker waited as
    long (a flash message's p99). The worker hands it to the link's witnessing task and
    goes on; the cosignature is sent once the store takes it."""
    fra, deu = trio["FRA"], trio["DEU"]
    offering = Witnessing(deu.context)
    await offering.sign(trio.clock.now)
    offer = offering.offer_for("FRA")
    assert offer is not None
    witnessing = Witnessing(fra.context)
    await witnessing.load()
    links = Links(fra, trio.keys["FRA"], host="127.0.0.1", port=0, peers=(), witnessing=witnessing)
    session = LinkSession(NodeId("DEU"))
    # The worker's side of a link touches no socket: the writer task (not run here) does.
    link = _Link(NodeId("DEU"), None, NodeId("DEU"), T0, session)  # type: ignore[arg-type]
    store = fra.context.store
    witness = asyncio.create_task(links._witness(link))
    try:
        async with store.transaction(trio.clock.now):  # the store busy, as under load
            await asyncio.wait_for(links._handle(link, CheckpointOffered(offer)), 5)
            await until(lambda: store.queued_transactions == 1)  # the witnessing waits
            assert session.data_to_send() == []
        await until(lambda: link.to_write.is_set())
        (answer,) = session.data_to_send()
        assert answer.startswith(FRAME_COSIGNATURE)
    finally:
        witness.cancel()


async def test_a_flash_envelope_that_finds_the_worker_waiting_is_taken_as_its_frame_is_read(
    trio: Trio,
) -> None:
    """A frame is read in a callback, and the link's worker, waiting for events, took a
    flash batch at its next turn of the loop. A flash envelope is taken beside the worker
    whatever it is doing: its transaction is queued before the callback returns, and its
    receipt gets out (after the frames that waited for the writer: frames go in order);
    the worker finds nothing left to take."""
    fra = trio["FRA"]
    urgent, flash = await submit(fra), await submit(fra, priority="flash")
    store = trio["DEU"].context.store
    async with worker_at_deu(trio) as (links, link, reached):
        session = link.session
        links._received(link, envelope_frame((), urgent.raw))
        # Answered, the worker waits for its next event (nothing between the two).
        await until(lambda: session.unanswered == 0)
        async with store.transaction(trio.clock.now):  # the store busy, as under load
            links._received(link, envelope_frame((), flash.raw))
            assert store.queued_transactions == 1  # taken now, not at the worker's turn
        out = [await asyncio.wait_for(reached.get(), 5) for _ in range(2)]
        assert [receipt_for(data, trio) for data in out] == [urgent.header.id, flash.header.id]
        assert session.unanswered == 0
        assert not session.events_received()
        link.beside.check()


@contextlib.asynccontextmanager
async def peer_socket() -> AsyncIterator[tuple[_ClientLink, asyncio.Queue[bytes]]]:
    """A real WebSocket connection on the loopback, as a link's: its end here, and what
    reaches the other end (plain ws: what is written, not how it is encrypted, is tested)."""
    reached: asyncio.Queue[bytes] = asyncio.Queue()

    async def other_end(ws: ServerConnection) -> None:
        async for data in ws:
            assert isinstance(data, bytes)
            await reached.put(data)

    async with serve(other_end, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        async with connect(url, create_connection=_ClientLink, max_queue=16) as ws:
            assert isinstance(ws, _ClientLink)
            yield ws, reached


@contextlib.asynccontextmanager
async def worker_at_deu(trio: Trio) -> AsyncIterator[tuple[Links, _Link, asyncio.Queue[bytes]]]:
    """DEU's end of a link from FRA over `peer_socket`, its worker running and no writer:
    its links, the link, and what reaches FRA's end."""
    links = Links(trio["DEU"], trio.keys["DEU"], host="127.0.0.1", port=0, peers=())
    async with peer_socket() as (ws, reached):
        link = _Link(NodeId("FRA"), ws, NodeId("FRA"), T0, LinkSession(NodeId("FRA")))
        work = asyncio.create_task(links._work(link))
        try:
            yield links, link, reached
        finally:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)


def receipt_for(data: bytes, trio: Trio) -> str:
    assert data.startswith(FRAME_RECEIPT), data[:1]
    return verify_receipt(data[1:], roster=trio.roster, now=trio.clock.now).message_id


async def test_a_flash_batchs_receipt_is_written_by_whoever_answered_it_not_the_writer(
    trio: Trio,
) -> None:
    """A link's worker takes one batch of envelopes at a time; at 90% load a flash
    envelope arriving meanwhile waited up to 16 ms for the urgent batch under way. It is
    taken beside that batch as its frame is read, and its receipt goes first.

    Handed to the link's writer, a flash receipt waited for the writer's turn of the
    loop. Whoever answers a flash batch writes its receipt at once: the worker, or the task
    beside it. Here the writer never runs: only a flash batch's receipts get out, and only
    while no one else is writing (frames go in order)."""
    fra, deu = trio["FRA"], trio["DEU"]
    urgent, flash, later, last = (
        await submit(fra),
        await submit(fra, priority="flash"),
        await submit(fra, priority="flash"),
        await submit(fra, priority="flash"),
    )
    store = deu.context.store
    async with worker_at_deu(trio) as (links, link, reached):
        session = link.session
        # Beside the worker: a flash envelope comes while an urgent batch is checked.
        async with store.transaction(trio.clock.now):  # the store busy, as under load
            links._received(link, envelope_frame((), urgent.raw))
            await until(lambda: store.queued_transactions == 1)  # the urgent batch waits
            links._received(link, envelope_frame((), flash.raw))
            assert store.queued_transactions == 2  # taken beside it, as its frame was read
        assert receipt_for(await asyncio.wait_for(reached.get(), 5), trio) == flash.header.id
        await until(lambda: session.unanswered == 0)
        assert link.to_write.is_set()  # the urgent batch's receipt: the writer's
        # A flash envelope answered while the writer writes: its receipt waits for it.
        async with link.writing:  # as the writer: what it writes goes first
            links._received(link, envelope_frame((), later.raw))
            await until(lambda: session.unanswered == 0)
            assert link.to_write.is_set()
            await link.ws.send_frames([b"the writer's"])
        # With the writer idle, a flash receipt is written at once by whoever answered it,
        # after what waited for the writer.
        links._received(link, envelope_frame((), last.raw))
        out = [await asyncio.wait_for(reached.get(), 5) for _ in range(4)]
        assert out[0] == b"the writer's"
        ids = [receipt_for(data, trio) for data in out[1:]]
        assert ids == [urgent.header.id, later.header.id, last.header.id]
        link.beside.check()  # nothing taken beside the worker failed


async def test_a_flash_envelope_that_comes_while_a_flash_batch_is_taken_is_taken_after_it(
    trio: Trio,
) -> None:
    """Flash envelopes are taken beside the worker one batch at a time: one that comes
    while a flash batch is taken waits in the session, and that batch's task looks again
    as it ends. Without that look it waited for the worker, which here is held up by an
    urgent batch queued behind the store's holder (a flash use case), and went after it.
    The worker runs without a writer: only flash receipts get out."""
    fra, deu = trio["FRA"], trio["DEU"]
    urgent, first, second = (
        await submit(fra),
        await submit(fra, priority="flash"),
        await submit(fra, priority="flash"),
    )
    store = deu.context.store
    released = asyncio.Event()

    async def holder() -> None:  # a flash use case of the node's own, holding the store
        async with store.transaction(trio.clock.now, urgent=True):
            await released.wait()

    async with worker_at_deu(trio) as (links, link, reached):
        session = link.session
        holding: asyncio.Task[None] | None = None
        try:
            async with store.transaction(trio.clock.now):  # the store busy, as under load
                links._received(link, envelope_frame((), urgent.raw))
                await until(lambda: store.queued_transactions == 1)  # the worker waits on it
                links._received(link, envelope_frame((), first.raw))
                assert store.queued_transactions == 2  # the first flash batch, beside it
                holding = asyncio.create_task(holder())
                await until(lambda: store.queued_transactions == 3)  # before the urgent one
                links._received(link, envelope_frame((), second.raw))
                assert store.queued_transactions == 3  # one flash batch at a time
                assert session.flash_waiting
            assert receipt_for(await asyncio.wait_for(reached.get(), 5), trio) == first.header.id
            # The first batch's task took the second as it ended; the worker still waits.
            await until(lambda: not session.flash_waiting and store.queued_transactions == 2)
        finally:
            released.set()  # else the store, held, would not close
            if holding is not None:
                await holding
        # The second goes before the urgent batch; that one's receipt is the writer's.
        assert receipt_for(await asyncio.wait_for(reached.get(), 5), trio) == second.header.id
        await until(lambda: session.unanswered == 0)
        assert [receipt_for(data, trio) for data in session.data_to_send()] == [urgent.header.id]
        link.beside.check()


async def test_a_flash_message_is_written_to_its_link_by_its_committer_not_the_feed(
    trio: Trio,
) -> None:
    """At 90% load a flash message waited for its link's feed to take its turn of the loop
    (1.1 ms at p50, 4.6 at p99). Its committer takes the feed's look itself: once the
    submission returns, its envelope is in flight and written. While the feed's own look
    is under way, the committer leaves it to the feed, which sends it next."""
    fra = trio.nodes["FRA"]
    fra.delivery.link_up("DEU", T0)
    fra.delivery.links_changed(lost=False)
    links = Links(fra, trio.keys["FRA"], host="127.0.0.1", port=0, peers=())
    session = LinkSession(NodeId("DEU"))
    async with peer_socket() as (ws, reached):
        link = _Link(NodeId("DEU"), ws, NodeId("DEU"), T0, session)
        feed = asyncio.create_task(links._feed(link))
        try:
            signal = fra.delivery.outbox_signal("DEU")
            await until(lambda: "DEU" in fra.delivery.looks and not signal.is_set())  # it waits
            flash = await queue(fra, priority="flash")
            assert session.in_flight == [flash.id]  # no turn of the loop taken since
            frame = await asyncio.wait_for(reached.get(), 5)
            assert flash.id.encode() in frame
            link.looking = True  # as while the feed's own look waits for the store
            second = await queue(fra, priority="flash")
            assert session.in_flight == [flash.id]
            link.looking = False
            signal.set()  # the look under way ends, and the feed looks again
            assert second.id.encode() in await asyncio.wait_for(reached.get(), 5)
            assert session.in_flight == [flash.id, second.id]
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
    assert "DEU" not in fra.delivery.looks  # the feed's end takes its look away


# -- issue 18: submissions in bounded rounds, and flash never waits its turn -------------

# Routine or urgent submissions sealed or storing at once: the first, alone, goes as a
# round of its own, and the others' rounds take the rest.
UNDER_WAY = 1 + ROUND_SIZE * (ROUNDS_AT_ONCE - 1)


async def test_submissions_past_the_rounds_wait_and_a_flash_one_goes_at_once(
    trio: Trio,
) -> None:
    """At 90% load every request in flight was sealed and stored at once: a group commit
    settled hundreds together, one turn of the loop took tens of ms, and a flash message
    waited for every turn it needed. Past `ROUNDS_AT_ONCE` rounds of `ROUND_SIZE`,
    routine and urgent submissions wait before any work; a flash one goes at once, and
    first."""
    fra = trio["FRA"]
    store = fra.context.store
    async with store.transaction(trio.clock.now):  # the store busy, as under load
        urgent = [asyncio.create_task(submit(fra)) for _ in range(UNDER_WAY + 2)]
        await until(lambda: store.queued_transactions == UNDER_WAY)
        flash = asyncio.create_task(submit(fra, priority="flash"))
        await until(lambda: store.queued_transactions == UNDER_WAY + 1)
        assert not any(task.done() for task in [*urgent, flash])
    flash_id = (await flash).header.id
    urgent_ids = [(await task).header.id for task in urgent]
    queued = "SELECT seq FROM audit WHERE message_id = ? AND action = 'queued'"
    urgent_at = [rows(store.path, queued, (i,))[0][0] for i in urgent_ids]
    assert rows(store.path, queued, (flash_id,))[0][0] < min(urgent_at)


async def test_an_urgent_submission_never_waits_for_routine_ones_filling_every_round(
    trio: Trio,
) -> None:
    """Routine submissions fill their rounds (a backlog of them, as from a bulk import):
    urgent ones have rounds of their own."""
    fra = trio["FRA"]
    store = fra.context.store
    async with store.transaction(trio.clock.now):
        routine = [
            asyncio.create_task(queue(fra, priority="routine", message_type="preservation"))
            for _ in range(UNDER_WAY + 1)
        ]
        await until(lambda: store.queued_transactions == UNDER_WAY)
        urgent = asyncio.create_task(submit(fra))
        await until(lambda: store.queued_transactions == UNDER_WAY + 1)
    await asyncio.gather(urgent, *routine)


async def test_routine_submissions_never_wait_for_ones_with_files_holding_every_turn(
    trio: Trio,
) -> None:
    """A routine message with large files holds its place long (its parts sealed and
    committed in steps): it takes one of `SUBMITTING_AT_ONCE` turns of its own, and
    routine submissions without files still go in rounds beside it."""
    fra = trio["FRA"]
    store = fra.context.store
    files = [AttachmentFile("log.txt", "text/plain", b"x" * 1000)]
    async with store.transaction(trio.clock.now):
        with_files = [
            asyncio.create_task(
                queue(fra, priority="routine", message_type="preservation", files=files)
            )
            for _ in range(SUBMITTING_AT_ONCE + 1)
        ]
        await until(lambda: store.queued_transactions == SUBMITTING_AT_ONCE)
        routine = asyncio.create_task(queue(fra, priority="routine", message_type="preservation"))
        await until(lambda: store.queued_transactions == SUBMITTING_AT_ONCE + 1)
    await asyncio.gather(routine, *with_files)


async def outbox(node: Node) -> int:
    (count,) = rows(node.context.store.path, "SELECT COUNT(*) FROM messages WHERE box = 'out'")[0]
    return int(count)


async def test_past_the_submissions_a_sender_holds_waiting_the_next_is_refused_and_nothing_lost(
    trio: Trio,
) -> None:
    """Offered more than it seals, a sender held every request until its turn: thousands,
    each answered seconds later, its loop turning among them. Past `WAITING_AT_MOST`
    urgent ones waiting for a round, the next is refused at once (BusyError: the API's
    503), before anything is sealed or stored; flash, and the other priority, still go;
    what was taken is stored."""
    fra = trio["FRA"]
    store = fra.context.store
    async with store.transaction(trio.clock.now):  # the store busy: the rounds wait
        under_way = [asyncio.create_task(submit(fra)) for _ in range(UNDER_WAY)]
        await until(lambda: store.queued_transactions == UNDER_WAY)
        waiting = [asyncio.create_task(submit(fra)) for _ in range(WAITING_AT_MOST)]
        refused = asyncio.create_task(submit(fra))  # runs after them, in the same pass
        await until(refused.done)  # at once, not held
        with pytest.raises(BusyError, match=f"{WAITING_AT_MOST} urgent submissions waiting"):
            refused.result()
        flash = asyncio.create_task(submit(fra, priority="flash"))
        routine = asyncio.create_task(queue(fra, priority="routine", message_type="preservation"))
        await until(lambda: store.queued_transactions == UNDER_WAY + 2)
        assert not any(task.done() for task in [*under_way, *waiting, flash, routine])
    taken = await asyncio.gather(*under_way, *waiting, flash, routine)
    assert await outbox(fra) == len(taken) == UNDER_WAY + WAITING_AT_MOST + 2
    await submit(fra)  # room again


async def test_a_submission_whose_officer_left_no_longer_counts_as_waiting(trio: Trio) -> None:
    """An officer who stops waiting (the request dropped) frees its place at once: a flood
    of abandoned requests does not refuse the officers still there."""
    fra = trio["FRA"]
    store = fra.context.store
    async with store.transaction(trio.clock.now):
        under_way = [asyncio.create_task(submit(fra)) for _ in range(UNDER_WAY)]
        await until(lambda: store.queued_transactions == UNDER_WAY)
        waiting = [asyncio.create_task(submit(fra)) for _ in range(WAITING_AT_MOST)]
        full = asyncio.create_task(submit(fra))
        await until(full.done)
        assert isinstance(full.exception(), BusyError)
        waiting[0].cancel()
        await until(waiting[0].done)
        again = asyncio.create_task(submit(fra))
    taken = await asyncio.gather(*under_way, *waiting[1:], again)
    assert await outbox(fra) == len(taken) == UNDER_WAY + WAITING_AT_MOST


async def test_past_the_submissions_with_files_a_sender_holds_waiting_the_next_is_refused(
    trio: Trio,
) -> None:
    """The same bound for those that wait for one of `SUBMITTING_AT_ONCE` turns (with
    files, each holding its files while it waits)."""
    fra = trio["FRA"]
    store = fra.context.store
    files = [AttachmentFile("log.txt", "text/plain", b"x" * 1000)]

    def with_files() -> asyncio.Task[MessageRow]:
        return asyncio.create_task(queue(fra, message_type="preservation", files=files))

    async with store.transaction(trio.clock.now):
        turns = [with_files() for _ in range(SUBMITTING_AT_ONCE)]
        await until(lambda: store.queued_transactions == SUBMITTING_AT_ONCE)
        waiting = [with_files() for _ in range(WAITING_AT_MOST)]
        refused = with_files()
        await until(refused.done)
        with pytest.raises(BusyError, match=f"{WAITING_AT_MOST} urgent submissions waiting"):
            refused.result()
        without = asyncio.create_task(submit(fra))  # in a round: not behind the turns
        await until(lambda: store.queued_transactions == SUBMITTING_AT_ONCE + 1)
    taken = await asyncio.gather(*turns, *waiting)
    assert len({row.id for row in taken}) == SUBMITTING_AT_ONCE + WAITING_AT_MOST
    await without
    await queue(fra, message_type="preservation", files=files)  # room again


async def test_a_backlog_of_submissions_is_stored_in_one_commit(trio: Trio) -> None:
    """Submissions that waited took a turn each, `SUBMITTING_AT_ONCE` at once, and went
    to the store wave after wave: a backlog made a message no cheaper. A round takes
    what waits: a backlog the rounds hold is stored in one group commit, and its
    messages go on together (one frame, one batch at the receiver, their receipts).

    A batch commits before its queue is empty only once `BATCH_MS` old: on a loaded
    machine, where the use cases' writes take longer than that, the backlog takes a
    COMMIT more for each `BATCH_MS` (one run in twelve here), never sooner."""
    fra = trio["FRA"]
    store = fra.context.store
    commits: list[float] = []  # when each began

    def traced(statement: str) -> None:
        if statement == "COMMIT":
            commits.append(time.monotonic())

    await _on_thread(store.writer, lambda conn: conn.set_trace_callback(traced))
    async with store.transaction(trio.clock.now):
        backlog = [asyncio.create_task(submit(fra)) for _ in range(UNDER_WAY)]
        await until(lambda: store.queued_transactions == UNDER_WAY)
        commits.clear()
        released = time.monotonic()
    await asyncio.gather(*backlog)
    gaps_ms = [(b - a) * 1000 for a, b in zip([released, *commits], commits[:-1], strict=False)]
    assert commits and all(gap >= BATCH_MS for gap in gaps_ms), gaps_ms


# -- issue 18: a flash message's sent mark does not wait behind the stream's marks ----------


def marks_to_deu(node: Node) -> _Marks:
    """The sent marks of `node`'s link to DEU, without the link (no feed, no poll)."""
    return _Marks(_Outbox(node.delivery, NodeId("DEU"), LinkSettings(poll_interval=60)))


async def sent_seq(node: Node, message_id: str) -> int:
    """Where the `sent` entry of `message_id` is in `node`'s log."""
    (seq,) = [
        e["seq"] for e in await node.context.store.audit_for(message_id) if e["action"] == "sent"
    ]
    return int(seq)


async def test_a_flash_envelopes_sent_mark_goes_before_the_streams_marks_queued_earlier(
    trio: Trio,
) -> None:
    """A link marks what it sent behind its writing, batch after batch; a flash message's
    receipt waits for its mark. That mark goes at once, in a transaction that goes first
    (done once in the store's batch), not after the stream's mark under way: at 90% load
    the wait for the urgent marks ahead was a flash message's p99 (117 ms of it)."""
    fra = trio["FRA"]
    urgent = [(await submit(fra)).header.id for _ in range(3)]
    flash = (await submit(fra, priority="flash")).header
    marks = marks_to_deu(fra)
    store = fra.context.store
    async with store.transaction(trio.clock.now):  # the store busy, as under load
        marks.add(urgent, flash=False)
        await until(lambda: store.queued_transactions == 1)  # the stream's mark waits
        marks.add([flash.id], flash=True)
        await until(lambda: store.queued_transactions == 2)
    await marks.settled([flash.id])
    await marks.settled()  # the stream's mark committed, and so the flash one before it
    assert await state_of(fra, flash.id) is State.SENT
    urgent_at = [await sent_seq(fra, message_id) for message_id in urgent]
    assert await sent_seq(fra, flash.id) < min(urgent_at)


async def test_a_receipt_that_finds_its_sent_mark_waiting_writes_it_in_its_own_transaction(
    trio: Trio,
) -> None:
    """A link's sent marks wait a moment (`MARKS_HOLD_S`) before they are written; a
    receipt that comes meanwhile takes its messages' marks and writes them itself: `sent`
    and the receipt in one COMMIT (there were two), `sent` first, and the mark not
    written a second time by the link."""
    fra, deu = trio["FRA"], trio["DEU"]
    sent = await submit(fra)
    message_id = sent.header.id
    (receipt,) = await deu.inbound.accept_envelopes("FRA", [((), sent.raw)])
    marks = marks_to_deu(fra)
    counts = fra.context.store.commits.counts
    before = sum(counts.values())

    marks.add([message_id], flash=False)  # written to the link: its mark waits
    assert await marks.take([]) == []
    settled = await fra.inbound.accept_receipts("DEU", [receipt], sent_marked=marks.take)
    assert settled == [message_id]
    assert sum(counts.values()) == before + 1
    await marks.settled()  # the link has nothing left to mark
    assert sum(counts.values()) == before + 1
    marks.check()

    assert await state_of(fra, message_id) is State.DELIVERED
    taken = await actions(fra, message_id)
    assert taken[-3:] == ["sent", "receipt_received", "delivered"]
    assert taken.count("sent") == 1


async def test_receipts_that_name_one_message_twice_take_its_waiting_mark_once(trio: Trio) -> None:
    """A relayed message's hop receipt and end-to-end receipt may come back in one batch:
    the id twice. Its mark is taken once (a second removal failed, and ended the link)."""
    fra = trio["FRA"]
    message_id = (await submit(fra)).header.id
    marks = marks_to_deu(fra)
    marks.add([message_id], flash=False)

    assert await marks.take([message_id, message_id]) == [message_id]
    assert await marks.take([message_id]) == []
    await marks.settled()
    marks.check()
    assert "sent" not in await actions(fra, message_id)  # the taker writes it, not the link


async def test_a_flash_receipt_is_taken_without_waiting_for_the_marks_of_urgent_ones_beside_it(
    trio: Trio,
) -> None:
    """Receipts come in batches, a flash one among urgent ones. Each receipt waits for its
    message's sent mark; the flash one is taken in a transaction of its own that waits
    for its own mark only (the urgent marks may be behind a busy store)."""
    fra, deu = trio["FRA"], trio["DEU"]
    sent = await submit(fra)
    flash = await submit(fra, priority="flash")
    receipts = await deu.inbound.accept_envelopes("FRA", [((), sent.raw), ((), flash.raw)])
    for message_id in (sent.header.id, flash.header.id):
        await fra.delivery.mark_sent("DEU", [message_id])
    urgent_marked = asyncio.Event()  # the urgent message's mark, still to commit

    async def sent_marked(ids: Sequence[str]) -> list[str]:
        if sent.header.id in ids:
            await urgent_marked.wait()
        return []

    taking = asyncio.create_task(
        fra.inbound.accept_receipts(
            "DEU", receipts, flash=lambda i: i == flash.header.id, sent_marked=sent_marked
        )
    )
    try:
        query = "SELECT state FROM messages WHERE id = ?"
        path = fra.context.store.path
        await until(lambda: rows(path, query, (flash.header.id,)) == [("delivered",)])
        assert await state_of(fra, sent.header.id) is State.SENT
    finally:
        urgent_marked.set()
    assert sorted(await taking) == sorted([flash.header.id, sent.header.id])
    assert await state_of(fra, sent.header.id) is State.DELIVERED


async def test_a_flash_receipt_is_taken_as_its_frame_is_read_not_a_turn_later(
    trio: Trio,
) -> None:
    """A receipt's frame is read in a callback, and the task that takes the receipts
    waiting ran a turn of the loop later: at 90% load 1.4 ms at p50 and 6 at p99 for a
    flash receipt. A flash receipt's task starts at once, before the callback returns,
    with what waits then; an urgent one's waits for its turn, so that the receipts read
    meanwhile go in its batch."""
    fra, deu = trio["FRA"], trio["DEU"]
    sent, flash = await submit(fra), await submit(fra, priority="flash")
    urgent_receipt, flash_receipt = await deu.inbound.accept_envelopes(
        "FRA", [((), sent.raw), ((), flash.raw)]
    )
    for message_id in (sent.header.id, flash.header.id):
        await fra.delivery.mark_sent("DEU", [message_id])
    links = Links(fra, trio.keys["FRA"], host="127.0.0.1", port=0, peers=())
    session = LinkSession(NodeId("DEU"))
    in_flight = [await fra.context.store.message(i) for i in (sent.header.id, flash.header.id)]
    session.send_envelopes([_outgoing(row) for row in in_flight if row], time.monotonic())
    # The receipts' side of a link touches no socket.
    link = _Link(NodeId("DEU"), None, NodeId("DEU"), T0, session)  # type: ignore[arg-type]

    links._received(link, FRAME_RECEIPT + urgent_receipt)
    assert session.receipts_waiting == 1  # its task comes at its turn
    links._received(link, FRAME_RECEIPT + flash_receipt)
    assert session.receipts_waiting == 0  # taken now, with the one before it

    await link.beside.drain()
    link.beside.check()
    assert await state_of(fra, flash.header.id) is State.DELIVERED
    assert await state_of(fra, sent.header.id) is State.DELIVERED


async def test_a_poll_takes_the_news_and_looks_only_for_retries_that_came_due(
    trio: Trio,
) -> None:
    """A poll looked through the whole outbox, detours included, every 5 s on every link:
    in the 193-node run, a tenth of the CPU, for rows the news carried already. It looks
    now only for messages sent whose retry time has passed."""
    fra = trio.nodes["FRA"]
    fra.delivery.link_up("DEU", T0)
    fra.delivery.links_changed(lost=False)
    await fra.delivery.next_batch("DEU", Room(10, 10))  # the link's first look: nothing yet
    queued = [(await queue(fra)).id for _ in range(3)]

    polled = await fra.delivery.next_batch("DEU", Room(10, 10), poll=True)
    news_left = fra.delivery.scheduler.has_news(NodeId("DEU"))
    await fra.delivery.mark_sent("DEU", [row.id for row in polled.rows])
    not_yet = await fra.delivery.next_batch("DEU", Room(10, 10), poll=True)
    trio.clock.now += fra.context.retry_ms
    due = await fra.delivery.next_batch("DEU", Room(10, 10), poll=True)

    assert [row.id for row in polled.rows] == queued
    assert not news_left  # taken as news, not found by a look that left the news behind
    assert not_yet.rows == ()
    assert sorted(row.id for row in due.rows) == sorted(queued)


async def test_a_look_stops_reading_once_its_room_for_other_than_flash_is_full(
    trio: Trio,
) -> None:
    """Urgent messages queued while a link was down: its first look takes what its room
    for other than flash holds. Rows come flash first, so past them nothing more can fill
    the flash reserve: the look read on (each read four times the last) to the end of the
    backlog, on every turn, for room it could never fill (42 to 73 ms a turn with 10,000
    queued, and draining them the square of that)."""
    fra = trio.nodes["FRA"]
    queued = [(await queue(fra)).id for _ in range(60)]
    fra.delivery.link_up("DEU", T0)
    fra.delivery.links_changed(lost=False)
    statements: list[str] = []
    fra.context.store._glancer.set_trace_callback(statements.append)
    first = await fra.delivery.next_batch("DEU", Room(18, 10))  # a window of 10, 8 for flash
    fra.context.store._glancer.set_trace_callback(None)

    assert [row.id for row in first.rows] == queued[:10]
    reads = [s for s in statements if "INDEXED BY messages_outbox" in s and "LIMIT" in s]
    assert len(reads) == 1, reads


async def test_a_retry_with_no_live_hop_costs_a_link_one_look_not_one_a_poll(
    trio: Trio,
) -> None:
    """A message sent whose retry time passed while no hop can take it: every poll of every
    link asked the store for the earliest retry and looked again, for as long as it lasted.
    Each link now looks once for each retry that comes due, and then at its next one."""
    fra = trio.nodes["FRA"]
    for peer in ("DEU", "USA"):
        fra.delivery.link_up(peer, T0)
    fra.delivery.links_changed(lost=False)
    for peer in ("DEU", "USA"):
        await fra.delivery.next_batch(peer, Room(10, 10))  # each link's first look
    stuck = await queue(fra, to="USA")
    sent = await fra.delivery.next_batch("USA", Room(10, 10))
    await fra.delivery.mark_sent("USA", [row.id for row in sent.rows])
    fra.delivery.link_down("USA")
    fra.delivery.links_changed(lost=True)
    trio.clock.now += fra.context.retry_ms  # due again, and no hop for it
    first = await fra.delivery.next_batch("DEU", Room(10, 10), poll=True)  # looks: in vain
    statements: list[str] = []
    fra.context.store._glancer.set_trace_callback(statements.append)
    for _ in range(5):
        trio.clock.now += 5_000
        polled = await fra.delivery.next_batch("DEU", Room(10, 10), poll=True)
        assert polled.rows == ()
    fra.context.store._glancer.set_trace_callback(None)
    later = await queue(fra)  # to DEU: sent, then due in its turn
    sent = await fra.delivery.next_batch("DEU", Room(10, 10))
    await fra.delivery.mark_sent("DEU", [row.id for row in sent.rows])
    trio.clock.now += fra.context.retry_ms
    due = await fra.delivery.next_batch("DEU", Room(10, 10), poll=True)
    fra.delivery.link_up("USA", trio.clock.now)
    fra.delivery.links_changed(lost=False)
    back = await fra.delivery.next_batch("USA", Room(10, 10))

    assert first.rows == ()
    assert len(statements) <= 1, statements  # when the next retry comes: asked once
    assert [row.id for row in due.rows] == [later.id]
    assert [row.id for row in back.rows] == [stuck.id]


async def test_flash_news_goes_before_the_retries_a_poll_finds(trio: Trio) -> None:
    fra = trio.nodes["FRA"]
    fra.delivery.link_up("DEU", T0)
    fra.delivery.links_changed(lost=False)
    await fra.delivery.next_batch("DEU", Room(10, 10))  # the link's first look: nothing yet
    urgent = [(await queue(fra)).id for _ in range(2)]
    sent = await fra.delivery.next_batch("DEU", Room(10, 10))
    await fra.delivery.mark_sent("DEU", [row.id for row in sent.rows])
    trio.clock.now += fra.context.retry_ms  # both due again
    flash = await queue(fra, priority="flash")

    first = await fra.delivery.next_batch("DEU", Room(10, 10), poll=True)
    then = await fra.delivery.next_batch("DEU", Room(10, 10), poll=True)

    assert [row.id for row in first.rows] == [flash.id] and not first.polled
    assert sorted(row.id for row in then.rows) == sorted(urgent) and then.polled


@pytest.mark.parametrize(
    ("priority", "message_type"),
    [("flash", "emergency"), ("urgent", "emergency"), ("routine", "preservation")],
)
async def test_a_message_goes_to_its_link_as_committed_without_a_read(
    trio: Trio, priority: str, message_type: str
) -> None:
    """Every priority: reading each row back for its feed took about 1.4% of a loaded
    sender's loop (docs/PERFORMANCE.md, twenty-seventh session)."""
    fra = trio.nodes["FRA"]
    fra.delivery.link_up("DEU", T0)
    fra.delivery.links_changed(lost=False)
    await fra.delivery.next_batch("DEU", Room(10, 10))  # the link's first look: nothing yet
    queued = await queue(fra, priority=priority, message_type=message_type)
    statements: list[str] = []
    fra.context.store._glancer.set_trace_callback(statements.append)
    try:
        taken = await fra.delivery.next_batch("DEU", Room(10, 10))
    finally:
        fra.context.store._glancer.set_trace_callback(None)

    stored = await fra.context.store.message(queued.id)
    assert [row.id for row in taken.rows] == [queued.id]
    assert stored is not None and taken.rows[0].envelope == stored.envelope
    assert not [s for s in statements if "FROM messages" in s], statements


async def test_a_flash_message_goes_to_its_link_as_committed_not_read_back(trio: Trio) -> None:
    """At 90% load the feed's read of a flash row waited up to 15 ms behind the other reads
    on the store's reader thread; the row kept from its commit goes without one."""
    fra = trio.nodes["FRA"]
    fra.delivery.link_up("DEU", T0)
    fra.delivery.links_changed(lost=False)
    release = threading.Event()
    reader_busy = asyncio.ensure_future(
        _on_thread(fra.context.store.db, lambda _: release.wait(30))
    )
    try:
        flash = await queue(fra, priority="flash")
        taken = await asyncio.wait_for(fra.delivery.next_batch("DEU", Room(10, 10)), 5)
    finally:
        release.set()
        await reader_busy

    stored = await fra.context.store.message(flash.id)
    assert [row.id for row in taken.rows] == [flash.id]
    assert stored is not None and taken.rows[0].envelope == stored.envelope
