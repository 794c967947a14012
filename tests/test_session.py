"""The link session in memory: two `LinkSession`s wired together, frames out of one into
the other, time passed in. No sockets, no tasks: every test runs in milliseconds."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from network.core.envelope import MAX_ENVELOPE_BYTES, MAX_HOP_LIMIT, MAX_RECEIPT_BYTES
from network.core.errors import MalformedError, OversizeError, PeerError
from network.core.protocol import (
    FRAME_ANNOUNCE,
    FRAME_AUTH,
    FRAME_CHECKPOINT,
    FRAME_COSIGNATURE,
    FRAME_ENVELOPE,
    FRAME_GIVE_BACK,
    FRAME_HELLO,
    FRAME_PAGE_END,
    FRAME_RECEIPT,
    FRAME_ROSTER,
    RETURN_PAGE,
    CheckpointOffer,
    GiveBack,
    HeldCheckpoint,
    HeldQuery,
    PageEnd,
    RestoreNote,
    Returned,
    WitnessAnswer,
    checkpoint_frame,
    envelope_frame,
    frame,
    give_back_frame,
    parse_checkpoint_offer,
    returned_frame,
)
from network.core.records import NodeId
from network.core.roster import MAX_ROSTER_BYTES
from network.core.routing import MAX_ANNOUNCEMENT_BYTES
from network.core.session import (
    AnnouncementReceived,
    CheckpointOffered,
    CosignatureReceived,
    EnvelopesReceived,
    Event,
    GiveBackAsked,
    HeldAnswered,
    HeldAsked,
    LinkSession,
    LinkSettings,
    Outgoing,
    PageReturned,
    ReceiptsReceived,
    Room,
    RosterReceived,
    Stall,
    rank_hint,
)

SMALL = LinkSettings(
    window=4, flash_reserve=2, batch=3, least_batch=1, max_queued_frames=50, receipt_timeout=10
)
PRIORITIES = ("flash", "urgent", "routine")


def envelope(message_id: str, priority: str = "routine") -> bytes:
    """Bytes shaped like a canonical envelope's start: enough for the rank hint and the id."""
    header = {"id": message_id, "priority": priority}
    return json.dumps({"header": header}, separators=(",", ":")).encode()


def outgoing(message_id: str, priority: str = "routine") -> Outgoing:
    return Outgoing(message_id, (), envelope(message_id, priority), PRIORITIES.index(priority))


def message_id_of(raw: bytes) -> str:
    found: str = json.loads(raw)["header"]["id"]
    return found


def receipt_for(raw: bytes) -> bytes:
    return b"receipt:" + message_id_of(raw).encode()


def pump(source: LinkSession, sink: LinkSession) -> int:
    """Every frame `source` has to send, into `sink`; how many."""
    frames = source.data_to_send()
    for data in frames:
        sink.receive_frame(data)
    return len(frames)


def answer_all(session: LinkSession) -> list[str]:
    """Handle every event as the use cases would (each envelope answered with a receipt
    naming it, each receipt settling its id); the ids of the envelopes taken, in order."""
    taken: list[str] = []
    while events := session.events_received():
        for event in events:
            if isinstance(event, EnvelopesReceived):
                raws = [raw for _, raw in event.envelopes]
                taken.extend(message_id_of(raw) for raw in raws)
                session.answer(event, [receipt_for(raw) for raw in raws])
            elif isinstance(event, ReceiptsReceived):
                session.receipts_settled(
                    [r.removeprefix(b"receipt:").decode() for r in event.receipts]
                )
    return taken


def pair(config: LinkSettings = SMALL) -> tuple[LinkSession, LinkSession]:
    return LinkSession(NodeId("FRA"), config), LinkSession(NodeId("DEU"), config)


# -- the window -----------------------------------------------------------------------------


def test_the_window_and_then_the_flash_reserve() -> None:
    fra, _ = pair()

    first = Room(6, 4)
    opening = fra.room()
    fra.send_envelopes([outgoing(f"m{i}") for i in range(4)], now=0.0)
    full = fra.room()
    with pytest.raises(ValueError, match="only flash"):
        fra.send_envelopes([outgoing("late")], now=0.0)
    fra.send_envelopes([outgoing("f1", "flash"), outgoing("f2", "flash")], now=0.0)
    reserve_used = fra.room()

    assert opening == first
    assert full == Room(2, 0)
    assert reserve_used == Room(0, 0)
    with pytest.raises(ValueError, match="room of 0"):
        fra.send_envelopes([outgoing("f3", "flash")], now=0.0)
    assert len(fra.in_flight) == SMALL.window + SMALL.flash_reserve


def test_the_reserve_is_for_flash_alone_even_while_the_window_has_room() -> None:
    # Before, a batch taken with the window nearly full could fill the reserve with urgent
    # envelopes (at 90% load it did), and a flash message then waited for a receipt.
    fra, _ = pair()
    fra.send_envelopes([outgoing("m0")], now=0.0)
    room = fra.room()

    with pytest.raises(ValueError, match="only flash may use the reserve"):
        fra.send_envelopes([outgoing(f"m{i}", "urgent") for i in range(1, 6)], now=0.0)
    fra.send_envelopes(
        [*(outgoing(f"m{i}", "urgent") for i in range(1, 4)), outgoing("f", "flash")], now=0.0
    )

    assert room == Room(5, 3)
    assert fra.room() == Room(1, 0)


def test_a_busy_window_takes_the_others_only_in_batches_worth_sending() -> None:
    # One or two at a time as receipts freed places, the receiver ran a transaction for
    # each: at saturation, seconds of latency (the silly window).
    settings = LinkSettings(window=8, flash_reserve=2, batch=8, least_batch=3)
    fra, deu = pair(settings)
    at_rest = fra.room()
    fra.send_envelopes([outgoing(f"m{i}") for i in range(5)], now=0.0)
    room_for_three = fra.room()
    fra.send_envelopes([outgoing("m5")], now=0.0)
    room_for_two = fra.room()
    pump(fra, deu)
    answer_all(deu)
    pump(deu, fra)
    answer_all(fra)

    assert at_rest == Room(10, 8)
    assert room_for_three == Room(5, 3)
    assert room_for_two == Room(4, 0)  # flash only, until room for three comes back
    assert fra.room() == Room(10, 8)
    assert pair(LinkSettings(window=2, least_batch=3))[0].room() == Room(10, 2)  # nothing held


def test_receipts_free_room_and_every_envelope_is_taken_once() -> None:
    fra, deu = pair()
    fra.send_envelopes([outgoing(f"m{i}") for i in range(4)], now=0.0)

    pump(fra, deu)
    taken = answer_all(deu)
    pump(deu, fra)
    answer_all(fra)

    assert taken == [f"m{i}" for i in range(4)]
    assert fra.in_flight == [] and fra.room() == Room(6, 4)
    assert deu.unanswered == 0


def test_an_id_in_flight_is_not_sent_again() -> None:
    fra, _ = pair()
    fra.send_envelopes([outgoing("m1")], now=0.0)

    with pytest.raises(ValueError, match="already in flight"):
        fra.send_envelopes([outgoing("m1")], now=1.0)
    with pytest.raises(ValueError, match="already in flight"):
        fra.send_envelopes([outgoing("m2"), outgoing("m2")], now=1.0)


def test_receipts_for_ids_this_link_did_not_send_are_ignored() -> None:
    fra, _ = pair()
    fra.send_envelopes([outgoing("m1"), outgoing("m2")], now=0.0)

    fra.receipts_settled(["elsewhere", "m1"])

    assert fra.in_flight == ["m2"]


# -- stalls ---------------------------------------------------------------------------------


def test_a_stall_is_the_oldest_in_flight_past_the_receipt_timeout() -> None:
    fra, _ = pair()
    fra.send_envelopes([outgoing("old")], now=100.0)
    fra.send_envelopes([outgoing("new")], now=105.0)

    at_limit = fra.stalled(110.0)
    past = fra.stalled(110.5)
    fra.receipts_settled(["old"])
    after_receipt = fra.stalled(110.5)

    assert at_limit is None  # "longer than" the timeout
    assert past == Stall("old", 100.0)
    assert after_receipt is None and fra.stalled(115.5) == Stall("new", 105.0)


def test_nothing_in_flight_never_stalls() -> None:
    fra, _ = pair()
    assert fra.stalled(1e9) is None


# -- what comes in --------------------------------------------------------------------------


def test_flash_first_among_the_envelopes_waiting_one_batch_at_a_time() -> None:
    """Flash waiting goes first and alone (its commit and receipt wait for no other
    envelope's checks); then the others, by rank, a batch (here 3) at a time."""
    _, deu = pair()
    order = [("r1", "routine"), ("u1", "urgent"), ("f1", "flash"), ("r2", "routine")]
    order += [("f2", "flash"), ("u2", "urgent"), ("r3", "routine")]
    for message_id, priority in order:
        deu.receive_frame(envelope_frame([], envelope(message_id, priority)))

    batches = [_batch(deu.events_received()) for _ in range(3)]

    assert [[message_id_of(raw) for _, raw in b.envelopes] for b in batches] == [
        ["f1", "f2"],
        ["u1", "u2", "r1"],
        ["r2", "r3"],
    ]
    assert deu.events_received() == []


def test_flash_that_arrives_while_a_batch_is_checked_is_taken_beside_it_ahead_of_frames() -> None:
    """Issue 18: at 90% load a flash envelope waited up to 16 ms for the urgent batch the
    node was checking. The node takes it beside that batch, ahead of the frames queued
    before it, which keep their order; its bytes no longer count."""
    _, deu = pair()
    deu.receive_frame(envelope_frame([], envelope("u1", "urgent")))
    under_way = _batch(deu.events_received())  # the node checks it
    assert deu.take_flash() is None and deu.flash_waiting == 0
    later = [("u2", "urgent"), ("f1", "flash"), ("r1", "routine"), ("f2", "flash")]
    deu.receive_frame(envelope_frame([], envelope("u2", "urgent")))
    deu.receive_frame(frame(FRAME_ANNOUNCE, b"announcement"))
    for message_id, priority in later[1:]:
        deu.receive_frame(envelope_frame([], envelope(message_id, priority)))
    assert deu.flash_waiting == 2

    beside = deu.take_flash()

    assert beside is not None
    assert [message_id_of(raw) for _, raw in beside.envelopes] == ["f1", "f2"]
    assert deu.flash_waiting == 0 and deu.take_flash() is None
    kept = sum(1 + len(envelope(i, p)) for i, p in later if p != "flash")
    assert deu.queued_bytes == kept + len(b"announcement")
    deu.answer(beside, [receipt_for(raw) for _, raw in beside.envelopes])
    deu.answer(under_way, [receipt_for(raw) for _, raw in under_way.envelopes])
    events = deu.events_received()
    assert events[0] == AnnouncementReceived(b"announcement")
    assert [message_id_of(raw) for _, raw in _batch(events).envelopes] == ["u2", "r1"]
    assert deu.queued_bytes == 0 and deu.unanswered == 2


def test_flash_beside_takes_at_most_a_batch_and_leaves_the_rest_for_the_next() -> None:
    _, deu = pair()
    for i in range(SMALL.batch + 1):
        deu.receive_frame(envelope_frame([], envelope(f"f{i}", "flash")))

    first, second = deu.take_flash(), deu.take_flash()

    assert first is not None and second is not None
    assert [message_id_of(raw) for _, raw in first.envelopes] == ["f0", "f1", "f2"]
    assert [message_id_of(raw) for _, raw in second.envelopes] == ["f3"]
    assert deu.take_flash() is None and deu.events_received() == []


def test_receipts_are_taken_ahead_of_the_frames_around_them_which_keep_their_order() -> None:
    """Issue 18: a loaded sender's flash receipt waited a turn of its loop for the worker,
    then another for the task the worker started. The node takes receipts straight away;
    the other frames stay, in order, for the worker; the bytes taken no longer count."""
    _, deu = pair()
    deu.receive_frame(frame(FRAME_RECEIPT, b"r1"))
    deu.receive_frame(envelope_frame([], envelope("m1")))
    deu.receive_frame(frame(FRAME_ANNOUNCE, b"announcement"))
    deu.receive_frame(frame(FRAME_RECEIPT, b"r2"))
    assert deu.receipts_waiting == 2

    taken = deu.take_receipts()

    assert taken == ReceiptsReceived((b"r1", b"r2"))
    assert deu.receipts_waiting == 0 and deu.take_receipts() is None
    assert deu.queued_bytes == 1 + len(envelope("m1")) + len(b"announcement")
    events = deu.events_received()
    assert events[0] == AnnouncementReceived(b"announcement")
    assert [message_id_of(raw) for _, raw in _batch(events).envelopes] == ["m1"]
    assert not any(isinstance(e, ReceiptsReceived) for e in events)
    assert deu.queued_bytes == 0


def test_receipts_the_worker_took_are_not_waiting_any_more() -> None:
    _, deu = pair()
    deu.receive_frame(frame(FRAME_RECEIPT, b"r1"))

    assert deu.events_received() == [ReceiptsReceived((b"r1",))]
    assert deu.receipts_waiting == 0 and deu.take_receipts() is None


def _batch(events: list[Event]) -> EnvelopesReceived:
    batches = [e for e in events if isinstance(e, EnvelopesReceived)]
    assert len(batches) == 1
    return batches[0]


def test_events_come_in_order_then_the_receipts_together_then_one_batch() -> None:
    _, deu = pair()
    offer = CheckpointOffer("a note", 0, (b"\x01" * 32,))
    answer = WitnessAnswer(7, need_from=3)
    relayed = (NodeId("USA"), NodeId("KEN"))
    frames = [
        frame(FRAME_RECEIPT, b"r1"),
        envelope_frame(relayed, envelope("m1")),
        frame(FRAME_ANNOUNCE, b"announcement"),
        frame(FRAME_RECEIPT, b"r2"),
        frame(FRAME_ROSTER, b"roster"),
    ]
    fra = LinkSession(NodeId("FRA"), SMALL)
    fra.send_checkpoint(offer)
    fra.send_witness(answer)
    fra.send_held_query(HeldQuery(b"q" * 16))
    fra.send_held(HeldCheckpoint(b"q" * 16))
    frames += fra.data_to_send()
    for data in frames:
        deu.receive_frame(data)

    events = deu.events_received()

    assert events == [
        AnnouncementReceived(b"announcement"),
        RosterReceived(b"roster"),
        CheckpointOffered(offer),
        CosignatureReceived(answer),
        HeldAsked(HeldQuery(b"q" * 16)),
        HeldAnswered(HeldCheckpoint(b"q" * 16)),
        ReceiptsReceived((b"r1", b"r2")),
        EnvelopesReceived(((relayed, envelope("m1")),)),
    ]


def test_what_one_session_sends_the_other_reads_each_frame_once_in_order() -> None:
    fra, deu = pair()
    fra.send_announcement(b"a1")
    fra.send_roster(b"s1")
    fra.send_receipt(b"r1")
    fra.send_announcement(b"a2")

    count = pump(fra, deu)

    assert count == 4 and fra.data_to_send() == []
    assert deu.events_received() == [
        AnnouncementReceived(b"a1"),
        RosterReceived(b"s1"),
        AnnouncementReceived(b"a2"),
        ReceiptsReceived((b"r1",)),
    ]


def test_answering_a_batch_lets_the_peer_send_as_many_more() -> None:
    _, deu = pair()
    cap = deu.unanswered_cap
    for i in range(cap):
        deu.receive_frame(envelope_frame([], envelope(f"m{i}")))

    answered = answer_all(deu)
    for i in range(cap):
        deu.receive_frame(envelope_frame([], envelope(f"n{i}")))

    assert len(answered) == cap and deu.unanswered == cap
    assert len(deu.data_to_send()) == cap  # one receipt each


def test_the_rank_hint_reads_the_priority_from_the_header() -> None:
    assert [rank_hint(envelope("m", p)) for p in PRIORITIES] == [0, 1, 2]
    assert rank_hint(b"x" * 600 + b'"priority":"flash"') == 2  # past where the header puts it


# -- refusals: one test per reason ------------------------------------------------------------


def test_more_envelopes_than_window_reserve_and_batch_unanswered_is_window_exceeded() -> None:
    _, deu = pair()
    for i in range(deu.unanswered_cap):
        deu.receive_frame(envelope_frame([], envelope(f"m{i}")))

    with pytest.raises(PeerError) as refused:
        deu.receive_frame(envelope_frame([], envelope("one more")))

    assert refused.value.reason == "window_exceeded"
    assert deu.unanswered_cap == SMALL.window + SMALL.flash_reserve + SMALL.batch


def test_more_frames_queued_than_the_bound_is_a_flood() -> None:
    _, deu = pair()
    for i in range(SMALL.max_queued_frames):
        deu.receive_frame(frame(FRAME_RECEIPT, b"r%d" % i))

    with pytest.raises(PeerError) as refused:
        deu.receive_frame(frame(FRAME_RECEIPT, b"one more"))

    assert refused.value.reason == "flood"


def test_frames_taken_as_events_no_longer_count_towards_the_flood() -> None:
    _, deu = pair()
    for i in range(SMALL.max_queued_frames):
        deu.receive_frame(frame(FRAME_ANNOUNCE, b"a%d" % i))

    deu.events_received()
    deu.receive_frame(frame(FRAME_ANNOUNCE, b"later"))

    assert deu.events_received() == [AnnouncementReceived(b"later")]


def test_the_bytes_queued_are_bounded_not_only_the_frames() -> None:
    # Finding 5 of issue 14: 3,500 announcements of 8 KiB (28 MiB) were all held, under
    # the bound of 4,096 frames. The byte budget (24 MiB) cuts the link first.
    deu = LinkSession(NodeId("USA"))
    announcement = frame(FRAME_ANNOUNCE, b"a" * MAX_ANNOUNCEMENT_BYTES)

    def flood() -> None:
        for _ in range(3500):
            deu.receive_frame(announcement)

    with pytest.raises(PeerError) as refused:
        flood()

    assert refused.value.reason == "flood"
    assert "bytes waiting" in str(refused.value)
    assert deu.queued_bytes <= LinkSettings().max_queued_bytes + MAX_ANNOUNCEMENT_BYTES


def test_the_default_byte_budget_holds_what_a_genuine_peer_may_send_at_once() -> None:
    # A full window of the largest envelopes, an announcement from every member state, a
    # receipt for each envelope and the largest roster: never a flood.
    settings = LinkSettings()
    deu = LinkSession(NodeId("FRA"), settings)
    largest = b"x" * (MAX_ENVELOPE_BYTES - 1 - 3 * MAX_HOP_LIMIT)
    for _ in range(deu.unanswered_cap):
        deu.receive_frame(envelope_frame(["USA"] * MAX_HOP_LIMIT, largest))
    for _ in range(193):
        deu.receive_frame(frame(FRAME_ANNOUNCE, b"a" * MAX_ANNOUNCEMENT_BYTES))
        deu.receive_frame(frame(FRAME_RECEIPT, b"r" * MAX_RECEIPT_BYTES))
    deu.receive_frame(frame(FRAME_ROSTER, b"{" * MAX_ROSTER_BYTES))

    assert deu.queued_bytes < settings.max_queued_bytes


def test_envelopes_count_until_they_are_in_a_batch_and_taken_frames_free_their_bytes() -> None:
    _, deu = pair()
    raws = [envelope(f"m{i}") for i in range(SMALL.batch + 2)]
    for raw in raws:
        deu.receive_frame(envelope_frame([], raw))
    deu.receive_frame(frame(FRAME_ANNOUNCE, b"announcement"))

    deu.events_received()  # one batch of SMALL.batch; two envelopes wait for the next

    assert deu.queued_bytes == sum(1 + len(raw) for raw in raws[SMALL.batch :])
    deu.events_received()
    assert deu.queued_bytes == 0


def test_one_roster_waits_at_most_a_newer_one_takes_its_place() -> None:
    # Finding 5 of issue 14: every roster frame (up to 4 MiB each) waited for its turn.
    _, deu = pair()
    deu.receive_frame(frame(FRAME_ANNOUNCE, b"before"))
    for version in range(1, 11):
        deu.receive_frame(frame(FRAME_ROSTER, b"roster %d" % version + b" " * 1_000_000))
    deu.receive_frame(frame(FRAME_ANNOUNCE, b"after"))

    assert deu.queued_bytes == len(b"before") + len(b"roster 10") + 1_000_000 + len(b"after")
    events = deu.events_received()

    assert [type(e) for e in events] == [AnnouncementReceived, RosterReceived, AnnouncementReceived]
    assert isinstance(events[1], RosterReceived)
    assert events[1].raw.startswith(b"roster 10 ")
    assert deu.queued_bytes == 0
    deu.receive_frame(frame(FRAME_ROSTER, b"roster 11"))  # the one taken is being handled
    assert deu.events_received() == [RosterReceived(b"roster 11")]


@pytest.mark.parametrize("kind", [FRAME_HELLO, FRAME_AUTH])
def test_a_handshake_frame_after_the_handshake_is_a_protocol_error(kind: bytes) -> None:
    _, deu = pair()

    with pytest.raises(PeerError) as refused:
        deu.receive_frame(frame(kind, b"{}"))

    assert refused.value.reason == "protocol"


def test_a_frame_over_its_kinds_limit_is_oversize() -> None:
    _, deu = pair()

    with pytest.raises(OversizeError) as refused:
        deu.receive_frame(frame(FRAME_RECEIPT, b"x" * (MAX_RECEIPT_BYTES + 1)))

    assert refused.value.reason == "oversize"


MALFORMED: dict[str, bytes | str] = {
    "text frame": "a text frame",
    "unknown kind": b"Z" + b"an unknown kind",
    "empty frame": b"",
    "empty envelope": FRAME_ENVELOPE,
    "path over the hop limit": FRAME_ENVELOPE + b"\xff" + b"FRA" * 3,
    "path not ids": FRAME_ENVELOPE + b"\x01" + b"f!a" + envelope("m"),
    "checkpoint cut short": FRAME_CHECKPOINT + b'{"note":',
    "cosignature with both answers": FRAME_COSIGNATURE
    + b'{"cosignature":"line","need_from":1,"size":2}',
    "held? with a short nonce": b'Q{"nonce":"AAAA"}',
    "held with a note and no cosignature": b'W{"cosignature":null,"nonce":"'
    + b"A" * 22
    + b'==","note":"n"}',
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_frame_that_does_not_parse_is_malformed(data: bytes | str) -> None:
    _, deu = pair()

    with pytest.raises(MalformedError) as refused:
        deu.receive_frame(data)

    assert refused.value.reason == "malformed"


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_any_bytes_are_refused_as_a_peer_error_or_taken(data: bytes) -> None:
    _, deu = pair()
    try:
        deu.receive_frame(data)
    except PeerError:
        return
    deu.events_received()  # whatever was taken makes events without raising


# -- random interleavings ---------------------------------------------------------------------


class TwoSessions(RuleBasedStateMachine):
    """FRA sends envelopes to DEU over a wire that delivers in order but at any pace; DEU
    answers batches at any moment, FRA takes the receipts at any moment."""

    def __init__(self) -> None:
        super().__init__()
        self.fra, self.deu = pair(
            LinkSettings(window=5, flash_reserve=2, batch=3, least_batch=2, receipt_timeout=10)
        )
        self.now = 0.0
        self.count = 0
        self.sent: list[str] = []
        self.flash: dict[str, bool] = {}  # each id sent: whether it is flash
        self.sent_at: dict[str, float] = {}
        self.taken: list[str] = []
        self.to_deu: list[bytes] = []
        self.to_fra: list[bytes] = []

    @rule(size=st.integers(1, 8), priorities=st.lists(st.sampled_from(PRIORITIES), min_size=8))
    def fra_sends(self, size: int, priorities: list[str]) -> None:
        room = self.fra.room()
        batch = []
        others = 0
        for priority in priorities[: min(size, room.count)]:
            self.count += 1
            if priority != "flash" and others == room.others:
                priority = "flash"  # the reserve is flash's alone
            others += priority != "flash"
            batch.append(outgoing(f"m{self.count}", priority))
        self.fra.send_envelopes(batch, self.now)
        self.sent += [item.message_id for item in batch]
        self.flash.update((item.message_id, item.rank == 0) for item in batch)
        self.sent_at.update((item.message_id, self.now) for item in batch)
        self.to_deu += self.fra.data_to_send()

    @rule(count=st.integers(1, 10))
    def wire_to_deu(self, count: int) -> None:
        for data in self.to_deu[:count]:
            self.deu.receive_frame(data)
        del self.to_deu[:count]

    @rule()
    def deu_answers_one_turn(self) -> None:
        for event in self.deu.events_received():
            assert isinstance(event, EnvelopesReceived)
            ranks = [rank_hint(raw) for _, raw in event.envelopes]
            assert ranks == sorted(ranks) and len(ranks) <= 3  # flash first, one batch
            raws = [raw for _, raw in event.envelopes]
            self.taken += [message_id_of(raw) for raw in raws]
            self.deu.answer(event, [receipt_for(raw) for raw in raws])
        self.to_fra += self.deu.data_to_send()

    @rule()
    def deu_takes_flash_beside(self) -> None:
        batch = self.deu.take_flash()
        if batch is None:
            return
        raws = [raw for _, raw in batch.envelopes]
        assert {rank_hint(raw) for raw in raws} == {0} and len(raws) <= 3
        self.taken += [message_id_of(raw) for raw in raws]
        self.deu.answer(batch, [receipt_for(raw) for raw in raws])
        self.to_fra += self.deu.data_to_send()

    @rule(count=st.integers(1, 10))
    def wire_to_fra(self, count: int) -> None:
        for data in self.to_fra[:count]:
            self.fra.receive_frame(data)
        del self.to_fra[:count]

    @rule()
    def fra_takes_receipts(self) -> None:
        answer_all(self.fra)

    @rule()
    def fra_takes_receipts_beside(self) -> None:
        taken = self.fra.take_receipts()
        if taken is not None:
            self.fra.receipts_settled(
                [r.removeprefix(b"receipt:").decode() for r in taken.receipts]
            )

    @rule(seconds=st.floats(0, 5))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def within_the_window(self) -> None:
        assert len(self.fra.in_flight) <= 5 + 2
        assert 0 <= self.deu.unanswered <= self.deu.unanswered_cap

    @invariant()
    def flash_waiting_is_the_flash_received_and_not_taken(self) -> None:
        on_wire = {message_id_of(data[2 + 3 * data[1] :]) for data in self.to_deu}
        waiting = set(self.sent) - on_wire - set(self.taken)
        assert self.deu.flash_waiting == sum(self.flash[i] for i in waiting)

    @invariant()
    def receipts_waiting_are_the_receipts_received_and_not_taken(self) -> None:
        on_wire = {data.removeprefix(FRAME_RECEIPT + b"receipt:").decode() for data in self.to_fra}
        received = set(self.taken) - on_wire  # each envelope taken was answered at once
        assert self.fra.receipts_waiting == len(received & set(self.fra.in_flight))

    @invariant()
    def nothing_taken_twice_nor_unsent(self) -> None:
        assert len(set(self.taken)) == len(self.taken)
        assert set(self.taken) <= set(self.sent)

    @invariant()
    def in_flight_until_its_receipt_arrives(self) -> None:
        assert set(self.fra.in_flight) <= set(self.sent)
        stall = self.fra.stalled(self.now)
        oldest = min((self.sent_at[i] for i in self.fra.in_flight), default=None)
        if stall is not None:
            assert stall.since == oldest and self.now - stall.since > 10
        elif oldest is not None:
            assert self.now - oldest <= 10

    def teardown(self) -> None:
        # Once the wires are drained and every event handled, everything sent was taken
        # exactly once and every receipt came back.
        for _ in range(100):
            self.wire_to_deu(len(self.to_deu))
            self.deu_takes_flash_beside()
            self.deu_answers_one_turn()
            self.wire_to_fra(len(self.to_fra))
            self.fra_takes_receipts()
        assert sorted(self.taken) == sorted(self.sent)
        assert self.fra.in_flight == [] and self.deu.unanswered == 0


TwoSessions.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, suppress_health_check=[HealthCheck.too_slow]
)
test_two_sessions = TwoSessions.TestCase


# -- giving back to a restored node (link version 2) ---------------------------------------


def test_a_restored_node_asks_back_page_by_page_and_takes_each_page_as_one_event() -> None:
    restored, peer = LinkSession(NodeId("DEU"), SMALL, 2), LinkSession(NodeId("FRA"), SMALL, 2)
    restored.ask_back(GiveBack(since=1_000))
    for data in restored.data_to_send():
        peer.receive_frame(data)
    [asked] = peer.events_received()
    assert asked == GiveBackAsked(GiveBack(1_000, None))

    items = [Returned(b"receipt %d" % i, envelope(f"m{i}")) for i in range(3)]
    peer.give_back(items, PageEnd("m2"))
    for data in peer.data_to_send():
        restored.receive_frame(data)

    assert restored.events_received() == [PageReturned(tuple(items), PageEnd("m2"))]
    assert restored.queued_bytes == 0
    # Until the node has kept the page, no other ask goes (the next comes from its cursor).
    assert restored.asking_back
    restored.ask_back(GiveBack(since=1_000, after="m2"))
    assert restored.asking_back and restored.data_to_send() == [
        give_back_frame(GiveBack(1_000, "m2"))
    ]


@pytest.mark.parametrize(
    ("version", "asked", "frames", "problem"),
    [
        (1, False, [frame(FRAME_GIVE_BACK, b'{"after":null,"since":0}')], "version-1 link"),
        (2, False, [frame(FRAME_PAGE_END, b'{"next":null}')], "never asked for"),
        (2, False, [returned_frame(Returned(b"r", b"e"))], "never asked for"),
        (2, True, [returned_frame(Returned(b"r", b"e"))] * (RETURN_PAGE + 1), "more than"),
    ],
)
def test_give_back_frames_out_of_turn_or_version_cut_the_link(
    version: int, asked: bool, frames: list[bytes], problem: str
) -> None:
    session = LinkSession(NodeId("DEU"), SMALL, version)
    if asked:
        session.ask_back(GiveBack(0))

    *first, last = frames
    for data in first:
        session.receive_frame(data)
    with pytest.raises(PeerError, match=problem) as cut:
        session.receive_frame(last)
    assert cut.value.reason == "protocol"


def test_a_checkpoint_carries_its_restore_explanation_only_from_version_2() -> None:
    note = RestoreNote(b'{"action":"restored"}', 5, (b"\x01" * 32,))
    offer = CheckpointOffer("a note\n", 0, (), note)
    payload = checkpoint_frame(offer)[1:]

    assert parse_checkpoint_offer(payload, 2) == offer
    with pytest.raises(MalformedError, match="restored: unknown field"):
        parse_checkpoint_offer(payload, 1)
