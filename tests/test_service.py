"""The use cases over a real SQLite store, with the clock passed in."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from network.core.attachments import PART_BYTES, AttachmentFile
from network.core.errors import BodyError
from network.core.lifecycle import State
from network.core.records import NodeId
from network.core.roster import build_roster, load_roster
from network.core.tlog import root_hash
from network.node.keys import init_keeper, init_node_keys, load_keeper, load_node_keys
from network.node.store import AuditEntry, Store
from network.node.wiring import Node
from network.samples import sample_body
from tests.harness import until

pytestmark = pytest.mark.timeout(60)

T0 = 1_795_000_000_000


@dataclass
class Clock:
    now: int = T0

    def __call__(self) -> int:
        return self.now


@dataclass
class Pair:
    fra: Node
    deu: Node
    clock: Clock


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    now = datetime.datetime.now(datetime.UTC)
    init_keeper(tmp_path / "authority")
    cards = [
        init_node_keys(tmp_path / i, NodeId(i), url=f"wss://127.0.0.1:{p}", now=now)
        for i, p in (("FRA", 1), ("DEU", 2))
    ]
    keeper = load_keeper(tmp_path / "authority")
    data = build_roster(cards, keeper=keeper, version=1, issued=T0 - 1, valid_until=T0 + 10**10)
    roster = load_roster(data, keeper=keeper.verify_key(), now=T0)
    clock = Clock()
    services = []
    for node_id in ("FRA", "DEU"):
        store = await Store.open(tmp_path / f"{node_id}.sqlite")
        keys = load_node_keys(tmp_path / node_id, NodeId(node_id))
        services.append(Node.build(keys=keys, roster=roster, store=store, clock=clock))
    try:
        yield Pair(services[0], services[1], clock)
    finally:
        for service in services:
            await service.context.store.close()


async def submit(service: Node, ttl_ms: int | None = None) -> str:
    row = await service.officers.submit(
        user="olivia",
        to="DEU",
        message_type="emergency",
        priority="urgent",
        body=sample_body("emergency"),
        ttl_ms=ttl_ms,
    )
    return row.id


async def test_expired_message_is_raised_and_a_late_receipt_still_delivers(pair: Pair) -> None:
    message_id = await submit(pair.fra, ttl_ms=60_000)
    sent = await pair.fra.context.store.message(message_id)
    assert sent is not None

    pair.clock.now += 60_001
    expired = await pair.fra.oversight.expire_due()
    row = await pair.fra.context.store.message(message_id)
    assert expired == [message_id] and row is not None and row.state is State.EXPIRED

    pair.clock.now = T0 + 1000  # the receiver got it in time; its receipt comes late
    receipts = await pair.deu.inbound.accept_envelopes("FRA", [((), sent.envelope)])
    pair.clock.now = T0 + 120_000
    settled = await pair.fra.inbound.accept_receipts("DEU", receipts)

    row = await pair.fra.context.store.message(message_id)
    assert settled == [message_id] and row is not None and row.state is State.DELIVERED
    actions = [e["action"] for e in await pair.fra.context.store.audit_for(message_id)]
    assert actions == ["composed", "sealed", "queued", "expired", "receipt_received", "delivered"]


async def test_receiver_refuses_an_expired_envelope_with_a_signed_rejection(pair: Pair) -> None:
    message_id = await submit(pair.fra, ttl_ms=60_000)
    sent = await pair.fra.context.store.message(message_id)
    assert sent is not None
    pair.clock.now += 60_001

    receipts = await pair.deu.inbound.accept_envelopes("FRA", [((), sent.envelope)])
    await pair.fra.inbound.accept_receipts("DEU", receipts)

    assert await pair.deu.context.store.message(message_id) is None
    row = await pair.fra.context.store.message(message_id)
    assert row is not None and row.state is State.REJECTED
    stored = await pair.fra.context.store.receipts(message_id)
    assert stored[0].outcome == "rejected" and stored[0].reason == "expired"
    rejected = [
        e for e in await pair.deu.context.store.audit_for(message_id) if e["action"] == "rejected"
    ]
    assert rejected and rejected[0]["detail"]["reason"] == "expired"


async def test_garbage_from_a_peer_is_audited_and_gets_no_receipt(pair: Pair) -> None:
    receipts = await pair.deu.inbound.accept_envelopes(
        "FRA", [((), b"{not json"), ((), b"\x00" * 10)]
    )

    assert receipts == []
    async with pair.deu.context.store.db.execute(
        "SELECT actor, detail FROM audit WHERE action = 'rejected'"
    ) as cursor:
        rows = await cursor.fetchall()
    assert len(rows) == 2 and rows[0][0] == "node:FRA" and "malformed" in rows[0][1]


async def test_receipt_for_other_bytes_changes_nothing(pair: Pair) -> None:
    first = await submit(pair.fra)
    second = await submit(pair.fra)
    sent = await pair.fra.context.store.message(second)
    assert sent is not None
    receipts = await pair.deu.inbound.accept_envelopes("FRA", [((), sent.envelope)])
    forged = receipts[0].replace(second.encode(), first.encode())

    settled = await pair.fra.inbound.accept_receipts("DEU", [forged])

    assert settled == []
    row = await pair.fra.context.store.message(first)
    assert row is not None and row.state is State.QUEUED


async def test_submit_names_the_bad_field_and_stores_nothing(pair: Pair) -> None:
    body = sample_body("preservation", period_days=30)

    with pytest.raises(BodyError) as refused:
        await pair.fra.officers.submit(
            user="olivia", to="DEU", message_type="preservation", priority="urgent", body=body
        )

    assert refused.value.field == "body.period_days"
    assert await pair.fra.context.store.messages(box="out") == []


async def test_a_transaction_cancelled_midway_leaves_the_store_usable(pair: Pair) -> None:
    store = pair.fra.context.store
    entered = asyncio.Event()
    never = asyncio.Event()  # holds the transaction open until it is cancelled

    async def interrupted() -> None:
        async with store.transaction(T0) as tx:
            tx.audit([AuditEntry("test", "half_done")])
            entered.set()
            await never.wait()

    # Cancelled while it waits for the write lock (held here), then twice inside the body.
    async with store.transaction(T0):
        task = asyncio.create_task(interrupted())
        await until(lambda: store.queued_transactions > 0)  # the task runs up to the lock
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert store.queued_transactions == 0
    for _ in range(2):
        entered.clear()
        task = asyncio.create_task(interrupted())
        await entered.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    message_id = await submit(pair.fra)
    assert (await pair.fra.context.store.message(message_id)) is not None
    async with store.db.execute("SELECT COUNT(*) FROM audit WHERE action = 'half_done'") as cursor:
        assert await cursor.fetchone() == (0,)


async def test_the_tree_is_the_stored_log_under_concurrent_transactions_and_another_writer(
    pair: Pair,
) -> None:
    """Commits are queued and awaited after the lock is free, and a transaction may catch
    up entries whose callers have not seen their commit yet: none is in the tree twice."""
    store = pair.fra.context.store
    other = await Store.open(store.path)  # a second writer, as `cpn user add` beside a node

    async def ours(n: int) -> None:
        async with store.transaction(T0 + n) as tx:
            if n % 3 == 0:
                await tx.audit_size()  # a read first, as a checkpoint does
            tx.audit([AuditEntry("test", "ours", None, {"n": n})])

    async def theirs(n: int) -> None:
        async with other.transaction(T0 + n) as tx:
            tx.audit([AuditEntry("cli", "theirs", None, {"n": n})])

    try:
        await asyncio.gather(*(ours(n) for n in range(90)), *(theirs(n) for n in range(30)))
        for _ in range(3):
            await submit(pair.fra)
    finally:
        await other.close()
    async with store.transaction(T0) as tx:
        size = await tx.audit_size()

    async with store.db.execute("SELECT seq, leaf FROM audit ORDER BY seq") as cursor:
        stored = list(await cursor.fetchall())
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
    assert size == store.audit_log.size == len(stored) == 90 + 30 + 3 * 3
    assert store.audit_log.root() == root_hash([bytes(leaf) for _, leaf in stored])


async def test_a_files_parts_expire_with_their_message_and_are_not_raised_again(
    pair: Pair,
) -> None:
    """A request whose link stays down expires, and its file's parts with it: the request is
    raised once; its parts are recorded (`part_of`), not raised nor shown to the console."""
    data = b"%PDF-1.7\n" + bytes(3 * PART_BYTES)  # four parts
    row = await pair.fra.officers.submit(
        user="olivia",
        to="DEU",
        message_type="preservation",
        priority="urgent",
        body=sample_body("preservation"),
        ttl_ms=60_000,
        files=[AttachmentFile("order.pdf", "application/pdf", data)],
    )
    heard = pair.fra.context.events.subscribe()
    pair.clock.now += 60_001
    expired = await pair.fra.oversight.expire_due()

    assert len(expired) == 5  # the request and its four parts
    entries = [
        e["detail"]
        for e in await pair.fra.context.store.audit_for(row.id)
        if e["action"] == "expired"
    ]
    assert entries == [{"raised": "log"}]
    parts = await pair.fra.context.store.parts(row.id, 0)
    assert {p.state for p in parts} == {State.EXPIRED}
    for part in parts:
        (detail,) = [
            e["detail"]
            for e in await pair.fra.context.store.audit_for(part.id)
            if e["action"] == "expired"
        ]
        assert detail == {"part_of": row.id}
    events = []
    while (event := await heard.next(0.01)) not in (None, False):
        events.append(event)
    assert [e["id"] for e in events if e.get("action") == "expired"] == [row.id]
    heard.close()
