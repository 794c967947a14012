"""No input from outside can end a node: a hypothesis state machine over three real nodes.

FRA, DEU and USA run their real use cases (network.node.wiring.Node) on real SQLite
files, in one process, on one clock the machine moves. Between them, what a link would
carry is put on a "wire" the machine delivers in any order, drops, duplicates and
replays; USA also lies: it signs receipts of every outcome and scope, for real and
for random ids, to anyone, and its own envelopes under ids it saw. Officers send,
acknowledge and reply; clocks jump past expiries; nodes restart.

After every step: no exception escaped a use case but a typed refusal (never a
LocalError such as IllegalTransition), every row moved only along its state table,
each store's audit log verifies, and no message reached an officer twice.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from network.core.crypto import HpkeSuite
from network.core.envelope import ReceiptScope, make_receipt, seal, verify_signed
from network.core.errors import CpnError, LocalError
from network.core.lifecycle import TABLES, State
from network.core.records import MessageId, MessageType, NodeId, Outcome, Priority
from network.core.roster import Roster, build_roster, load_roster
from network.node.keys import NodeKeys, init_keeper, init_node_keys, load_keeper, load_node_keys
from network.node.store import Store
from network.node.verify import verify_store
from network.node.wiring import Node
from network.samples import sample_body

pytestmark = pytest.mark.timeout(600)

IDS = ("FRA", "DEU", "USA")
HONEST = ("FRA", "DEU")
T0 = 1_795_000_000_000
REASONS = ("expired", "id_conflict", "bad_signature", "hop_limit", "whatever")
# Final and interim answers an officer gives an emergency (issue 19: an interim one keeps
# the request open), and the requester's follow-ups.
ANSWERS: dict[str, dict[str, str]] = {
    "completed": {"status": "completed", "note": "done"},
    "needs_info": {"status": "needs_info", "missing": "the time zone"},
    "transferred": {"status": "transferred", "transferred_to": "the prosecutor"},
}
FOLLOW_UPS = ("information", "proceed", "withdraw", "release")


@dataclass
class Keys:
    """Keys and a signed roster, made once: they are read-only across examples."""

    root: Path
    keys: dict[str, NodeKeys] = field(default_factory=dict)
    roster: Roster | None = None


_KEYS: Keys | None = None


def shared_keys() -> Keys:
    global _KEYS
    if _KEYS is None:
        root = Path(tempfile.mkdtemp(prefix="cpn-machine-keys-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)  # private keys, if test ones
        now = datetime.datetime.now(datetime.UTC)
        init_keeper(root / "authority")
        cards = [
            init_node_keys(
                root / i, NodeId(i), url=f"wss://127.0.0.1:{n + 1}", suite=HpkeSuite.X25519, now=now
            )
            for n, i in enumerate(IDS)
        ]
        keeper = load_keeper(root / "authority")
        data = build_roster(cards, keeper=keeper, version=1, issued=T0 - 1, valid_until=T0 + 10**12)
        _KEYS = Keys(root)
        _KEYS.roster = load_roster(data, keeper=keeper.verify_key(), now=T0)
        for i in IDS:
            _KEYS.keys[i] = load_node_keys(root / i, NodeId(i))
    return _KEYS


def reachable(box: str, old: State, new: State) -> bool:
    """Whether the table moves `old` to `new` in zero or more listed steps."""
    table = TABLES[box]  # type: ignore[index]
    seen, todo = {old}, [old]
    while todo:
        for after in table.get(todo.pop(), {}).values():
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return new in seen


class Nodes(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="cpn-machine-"))
        self.keys = shared_keys()
        self.now = T0
        self.nodes: dict[str, Node] = {}
        # What a link carries: (to, from, kind, payload); kind "env" ((path, raw)) or "rcpt".
        self.wire: list[tuple[str, str, str, Any]] = []
        self.seen_envelopes: list[tuple[str, tuple[NodeId, ...], bytes]] = []  # (to, path, raw)
        self.seen_receipts: list[tuple[str, str, bytes]] = []  # (to, from, raw)
        self.states: dict[tuple[str, str], tuple[str, State]] = {}
        self.withdrawn: set[str] = set()  # requests our officers withdrew or released

    # -- plumbing -----------------------------------------------------------------------

    def clock(self) -> int:
        return self.now

    def run(self, coro: Any) -> Any:
        """Run one use case; only a typed refusal that is not our bug may come out of it."""
        try:
            return self.loop.run_until_complete(coro)
        except LocalError:
            raise
        except CpnError:
            return None

    async def _open(self, node_id: str) -> Node:
        store = await Store.open(self.dir / f"{node_id}.sqlite", clock=self.clock)
        assert self.keys.roster is not None
        node = Node.build(
            keys=self.keys.keys[node_id],
            roster=self.keys.roster,
            store=store,
            clock=self.clock,
            retry_ms=30_000,
        )
        await node.delivery.start()
        return node

    def teardown(self) -> None:
        for node in self.nodes.values():
            self.loop.run_until_complete(node.context.store.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def rows(self, node_id: str) -> list[Any]:
        store = self.nodes[node_id].context.store
        return self.loop.run_until_complete(store.messages(limit=-1))

    # -- rules --------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        for node_id in IDS:
            self.nodes[node_id] = self.loop.run_until_complete(self._open(node_id))

    @rule(
        sender=st.sampled_from(HONEST),
        priority=st.sampled_from(["flash", "urgent", "routine"]),
        ttl=st.sampled_from([None, 60_000, 600_000]),
        via_usa=st.booleans(),
    )
    def officer_sends(self, sender: str, priority: str, ttl: int | None, via_usa: bool) -> None:
        to = "DEU" if sender == "FRA" else "FRA"
        row = self.run(
            self.nodes[sender].officers.submit(
                user="olivia",
                to=to,
                message_type="emergency",
                priority=priority,
                body=sample_body("emergency"),
                ttl_ms=ttl,
            )
        )
        if row is not None and via_usa:
            # Relayed: USA takes it on first (its hop receipt comes back to the sender).
            self.wire.append(("USA", sender, "env", ((), row.envelope)))

    @rule(node=st.sampled_from(IDS), data=st.data())
    def link_sends(self, node: str, data: st.DataObject) -> None:
        """What the links would write: some of the waiting rows, ours or relayed, each to
        its recipient."""
        waiting = [
            r
            for r in self.rows(node)
            if r.box in ("out", "relay") and r.state in (State.QUEUED, State.SENT)
        ]
        for row in data.draw(st.lists(st.sampled_from(waiting), unique=True)) if waiting else []:
            self.run(self.nodes[node].delivery.mark_sent(row.peer, [row.id]))
            path = tuple(row.path) if row.box == "relay" else ()
            self.wire.append((row.peer, node, "env", (path, row.envelope)))

    def deliver(self, index: int, *, keep: bool = False) -> None:
        to, sender, kind, payload = self.wire[index]
        if not keep:
            del self.wire[index]
        node = self.nodes[to]
        if kind == "env":
            path, raw = payload
            self.seen_envelopes.append((to, path, raw))
            receipts = self.run(node.inbound.accept_envelopes(sender, [(path, raw)])) or []
            for raw_receipt in receipts:
                self.wire.append((sender, to, "rcpt", raw_receipt))
        else:
            self.seen_receipts.append((to, sender, payload))
            self.run(node.inbound.accept_receipts(sender, [payload]))

    @precondition(lambda self: self.wire)
    @rule(data=st.data(), twice=st.booleans())
    def wire_delivers(self, data: st.DataObject, twice: bool) -> None:
        """One frame, any of those on the wire; maybe delivered again later (`twice`)."""
        self.deliver(data.draw(st.integers(0, len(self.wire) - 1)), keep=twice)

    @precondition(lambda self: self.wire)
    @rule(data=st.data())
    def wire_flushes(self, data: st.DataObject) -> None:
        """Everything on the wire, in an order drawn (what it answers goes on the wire)."""
        for _ in range(len(self.wire)):
            self.deliver(data.draw(st.integers(0, len(self.wire) - 1)))

    @precondition(lambda self: self.wire)
    @rule(data=st.data())
    def wire_drops(self, data: st.DataObject) -> None:
        del self.wire[data.draw(st.integers(0, len(self.wire) - 1))]

    @precondition(lambda self: self.seen_envelopes or self.seen_receipts)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """Something delivered before, delivered again later (its link is the same)."""
        if self.seen_envelopes and data.draw(st.booleans()):
            to, path, raw = data.draw(st.sampled_from(self.seen_envelopes))
            sender = path[-1] if path else verify_signed(raw, roster=self.keys.roster).header.sender  # type: ignore[arg-type]
            self.wire.append((to, sender, "env", (path, raw)))
        elif self.seen_receipts:
            to, sender, raw = data.draw(st.sampled_from(self.seen_receipts))
            self.wire.append((to, sender, "rcpt", raw))

    @precondition(lambda self: self.seen_envelopes)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(list(Outcome)),
        reason=st.sampled_from(REASONS),
        scope=st.sampled_from(list(ReceiptScope)),
        parties=st.sampled_from(["genuine", "any"]),
        random_id=st.booleans(),
    )
    def hostile_receipt(
        self,
        data: st.DataObject,
        outcome: Outcome,
        reason: str,
        scope: ReceiptScope,
        parties: str,
        random_id: bool,
    ) -> None:
        """A roster member signs what it likes: the genuine recipient changing its word
        later (`genuine`), or anyone for anyone; for a real id or one that exists nowhere."""
        _, _, raw = data.draw(st.sampled_from(self.seen_envelopes))
        header = verify_signed(raw, roster=self.keys.roster).header  # type: ignore[arg-type]
        if parties == "genuine":
            signer, to = str(header.recipient), str(header.sender)
        else:
            signer, to = data.draw(st.sampled_from(IDS)), data.draw(st.sampled_from(IDS))
        message_id = header.id
        if random_id:
            value = int.from_bytes(os.urandom(16), "big")
            hex_ = f"{(value & ~(0xF << 76) & ~(0x3 << 62)) | 0x7 << 76 | 0x2 << 62:032x}"
            message_id = MessageId(
                f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"
            )
        receipt = make_receipt(
            message_id=message_id,
            message_sender=NodeId(to),
            envelope_raw=raw,
            me=NodeId(signer),
            signing_key=self.keys.keys[signer].signing,
            now=self.now,
            random_bytes=os.urandom(10),
            outcome=outcome,
            reason=reason if outcome is Outcome.REJECTED else None,
            scope=scope,
        )
        # Sent to its addressee, or to someone else it means nothing to.
        target = to if data.draw(st.booleans()) else data.draw(st.sampled_from(IDS))
        self.wire.append((target, signer, "rcpt", receipt.raw))

    def settled_rows(self) -> list[tuple[str, Any]]:
        """(node, row) of the messages sent or relayed that a receipt could still move."""
        return [
            (node, row)
            for node in self.nodes
            for row in self.rows(node)
            if row.box in ("out", "relay") and row.state is not State.QUEUED
        ]

    @precondition(lambda self: self.seen_envelopes)
    @rule(
        data=st.data(),
        outcome=st.sampled_from([Outcome.REJECTED, Outcome.ACCEPTED, Outcome.DUPLICATE]),
        reason=st.sampled_from(REASONS),
    )
    def recipient_changes_its_word(
        self, data: st.DataObject, outcome: Outcome, reason: str
    ) -> None:
        """The genuine recipient signs a new end-to-end receipt for exactly the bytes we
        sent or relayed, in whatever state the message is now (delivered, acknowledged,
        answered, expired, forwarded...): honestly late (a rejection over two hops, an
        `expired` racing our own expiry) or on purpose. It arrives by the link the message
        went on."""
        settled = self.settled_rows()
        if not settled:
            return
        node, row = data.draw(st.sampled_from(settled))
        header = verify_signed(row.envelope, roster=self.keys.roster).header  # type: ignore[arg-type]
        recipient = str(header.recipient)
        receipt = make_receipt(
            message_id=header.id,
            message_sender=header.sender,
            envelope_raw=row.envelope,
            me=NodeId(recipient),
            signing_key=self.keys.keys[recipient].signing,
            now=self.now,
            random_bytes=os.urandom(10),
            outcome=outcome,
            reason=reason if outcome is Outcome.REJECTED else None,
        )
        self.run(self.nodes[node].inbound.accept_receipts(row.via or row.peer, [receipt.raw]))

    @precondition(lambda self: self.seen_envelopes)
    @rule(data=st.data())
    def usa_preempts(self, data: st.DataObject) -> None:
        """USA seals its own envelope under an id it saw and sends it to that recipient."""
        _, _, raw = data.draw(st.sampled_from(self.seen_envelopes))
        header = verify_signed(raw, roster=self.keys.roster).header  # type: ignore[arg-type]
        if header.recipient == "USA":
            return
        value = int(header.id.replace("-", ""), 16)
        assert self.keys.roster is not None
        forged = seal(
            sender=NodeId("USA"),
            recipient=header.recipient,
            message_type=MessageType.EMERGENCY,
            body=sample_body("emergency"),
            priority=Priority.URGENT,
            now=value >> 80,
            random_bytes=((value >> 64 & 0xFFF) << 68 | value & (2**62 - 1)).to_bytes(10, "big"),
            signing_key=self.keys.keys["USA"].signing,
            recipient_key=self.keys.roster.active_card(header.recipient).hpke_key,
            ttl_ms=30 * 86_400_000,
        )
        self.wire.append((header.recipient, "USA", "env", ((), forged.raw)))

    @rule(
        node=st.sampled_from(HONEST),
        data=st.data(),
        answer=st.sampled_from([None, *ANSWERS]),
    )
    def officer_answers(self, node: str, data: st.DataObject, answer: str | None) -> None:
        inbox = [r for r in self.rows(node) if r.box == "in" and r.type == "emergency"]
        if not inbox:
            return
        row = data.draw(st.sampled_from(inbox))
        if answer is not None:
            self.run(self.nodes[node].officers.reply(row.id, "oscar", ANSWERS[answer]))
        else:
            self.run(self.nodes[node].officers.acknowledge(row.id, "oscar"))

    @rule(node=st.sampled_from(HONEST), data=st.data(), action=st.sampled_from(FOLLOW_UPS))
    def officer_follows_up(self, node: str, data: st.DataObject, action: str) -> None:
        """The requester gives information, asks to proceed, withdraws or (refused for an
        emergency) releases, in whatever state its request is."""
        sent = [r for r in self.rows(node) if r.box == "out" and r.type == "emergency"]
        if not sent:
            return
        row = data.draw(st.sampled_from(sent))
        fields = {
            "action": action,
            "note": "n",
            **({"information": "i"} if action == "information" else {}),
        }
        if action in ("withdraw", "release"):
            self.withdrawn.add(row.id)  # asked for: if refused, nothing leaves to withdraw it
        self.run(self.nodes[node].officers.follow_up(row.id, "olivia", fields))

    @precondition(lambda self: self.seen_envelopes)
    @rule(data=st.data())
    def usa_withdraws_what_it_did_not_send(self, data: st.DataObject) -> None:
        """USA sends the recipient of an envelope it saw a withdrawal of that message."""
        _, _, raw = data.draw(st.sampled_from(self.seen_envelopes))
        header = verify_signed(raw, roster=self.keys.roster).header  # type: ignore[arg-type]
        if header.recipient == "USA":
            return
        assert self.keys.roster is not None
        forged = seal(
            sender=NodeId("USA"),
            recipient=header.recipient,
            message_type=MessageType.FOLLOW_UP,
            body={"follows": header.id, "action": "withdraw", "note": "not ours to say"},
            priority=Priority.URGENT,
            now=self.now,
            random_bytes=os.urandom(10),
            signing_key=self.keys.keys["USA"].signing,
            recipient_key=self.keys.roster.active_card(header.recipient).hpke_key,
        )
        self.wire.append((header.recipient, "USA", "env", ((), forged.raw)))

    @rule(ms=st.sampled_from([1_000, 61_000, 700_000]))
    def time_passes(self, ms: int) -> None:
        self.now += ms
        for node in self.nodes.values():
            self.run(node.oversight.expire_due())

    @rule(node=st.sampled_from(IDS))
    def restart(self, node: str) -> None:
        self.loop.run_until_complete(self.nodes[node].context.store.close())
        self.nodes[node] = self.loop.run_until_complete(self._open(node))

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def states_move_only_along_the_tables(self) -> None:
        for node in self.nodes:
            for row in self.rows(node):
                key = (node, row.id)
                before = self.states.get(key)
                if before is None:
                    entry = State.RECEIVED if row.box == "in" else State.QUEUED
                    assert reachable(row.box, entry, row.state), (node, row)
                else:
                    box, old = before
                    assert box == row.box, (node, row.id, box, row.box)
                    assert reachable(box, old, row.state), (node, row.id, old, row.state)
                self.states[key] = (row.box, row.state)

    @invariant()
    def a_withdrawn_request_has_no_clock_left(self) -> None:
        for node in self.nodes:
            for row in self.rows(node):
                if row.state is State.WITHDRAWN:
                    assert (row.alert_at, row.preserved_until, row.overdue) == (
                        None,
                        None,
                        frozenset(),
                    ), (node, row)

    @invariant()
    def only_the_requester_withdraws(self) -> None:
        """USA's withdrawals of messages FRA and DEU exchanged never take; of its own (an
        envelope it sealed under an id it saw), they may."""
        for node in HONEST:
            for row in self.rows(node):
                if row.box == "in" and row.state is State.WITHDRAWN and row.peer != "USA":
                    assert row.id in self.withdrawn, (node, row)

    @invariant()
    def nothing_reaches_an_officer_twice(self) -> None:
        for node in self.nodes:
            received = self.loop.run_until_complete(
                self.nodes[node].context.store.db.execute_fetchall(
                    "SELECT message_id, COUNT(*) FROM audit WHERE action = 'received'"
                    " GROUP BY message_id HAVING COUNT(*) > 1"
                )
            )
            assert list(received) == [], (node, received)

    @invariant()
    def every_audit_log_verifies(self) -> None:
        assert self.keys.roster is not None
        for node in self.nodes:
            report = verify_store(
                self.dir / f"{node}.sqlite", roster=self.keys.roster, node_id=node
            )
            assert report.ok, (node, report.first_problem)


Nodes.TestCase.settings = settings(
    max_examples=int(os.environ.get("CPN_MACHINE_EXAMPLES", "25")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_no_input_from_outside_can_end_a_node = Nodes.TestCase
