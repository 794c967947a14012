"""The outbox scheduler, in memory: a routing table, links up and down, and `now` passed in."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from network.core.records import NodeId
from network.core.routing import Announcement, RoutingTable
from network.core.session import Room
from network.node import scheduler as scheduler_module
from network.node.scheduler import (
    ROUTE_REFRESH_MS,
    Candidate,
    Scheduler,
    look_limit,
    max_rank_for,
    read_on,
)

ME = NodeId("FRA")
BRA, DEU, KEN, USA = NodeId("BRA"), NodeId("DEU"), NodeId("KEN"), NodeId("USA")
T0 = 1_795_000_000_000
FLASH, URGENT, ROUTINE = 0, 1, 2


def scheduler(
    graph: Mapping[NodeId, Iterable[NodeId]], linked: Iterable[NodeId], now: int = T0
) -> Scheduler:
    """A scheduler at FRA, its links up, every other node announcing its own links."""
    routing = RoutingTable(ME)
    for seq, (node, links) in enumerate(graph.items(), 1):
        routing.accept(Announcement(node, seq, frozenset(links), b""))
    linked = list(linked)
    routing.set_linked(linked)
    made = Scheduler(routing)
    for peer in linked:
        made.link_up(peer, now)
    made.refresh_routes(now + ROUTE_REFRESH_MS)
    return made


# FRA - BRA - KEN and FRA - USA - KEN: two equal routes to KEN; DEU a leaf of FRA.
GRAPH = {BRA: {ME, KEN}, USA: {ME, KEN}, KEN: {BRA, USA}, DEU: {ME}}
LINKED = (BRA, DEU, USA)


def drained(made: Scheduler, peer: NodeId) -> None:
    """Let `peer`'s first look (and any flag standing) pass, finding nothing more."""
    while made.next_batch(peer, Room(10, 10), T0).look:
        made.looked(peer, 0, Room(10, 10))


def test_news_is_taken_by_id_flash_first_and_alone() -> None:
    made = scheduler(GRAPH, LINKED)
    drained(made, DEU)
    for message_id, rank in (("routine", ROUTINE), ("urgent", URGENT), ("flash", FLASH)):
        made.queued(Candidate(message_id, DEU, rank))

    first = made.next_batch(DEU, Room(10, 10), T0)
    then = made.next_batch(DEU, Room(10, 10), T0)

    # Flash alone: its rows are at hand (`Delivery`), and none read beside it holds it up.
    assert first.news == ("flash",) and first.flash_alone
    assert then.news == ("urgent", "routine") and not then.flash_alone
    assert not first.look and not then.look


def test_flash_news_goes_even_when_the_sweep_comes_due() -> None:
    made = scheduler(GRAPH, LINKED)
    drained(made, DEU)
    made.queued(Candidate("urgent", DEU, URGENT))
    made.queued(Candidate("flash", DEU, FLASH))

    swept = made.next_batch(DEU, Room(10, 10), T0, sweep=True)

    assert swept.news == ("flash",) and not swept.look


def test_never_more_than_the_room() -> None:
    made = scheduler(GRAPH, LINKED)
    for n in range(5):
        made.queued(Candidate(f"m{n}", DEU, ROUTINE))

    first = made.next_batch(DEU, Room(2, 2), T0)
    second = made.next_batch(DEU, Room(2, 2), T0)

    assert first.news == ("m0", "m1")
    assert second.news == ("m2", "m3")


def test_a_full_window_takes_only_flash() -> None:
    made = scheduler(GRAPH, LINKED)
    made.queued(Candidate("routine", DEU, ROUTINE))
    made.queued(Candidate("flash", DEU, FLASH))

    batch = made.next_batch(DEU, Room(5, 0), T0)

    assert batch.news == ("flash",)
    assert made.has_news(DEU)  # the routine one waits for room


def test_no_room_gives_nothing_but_receipts() -> None:
    made = scheduler(GRAPH, LINKED)
    made.queued(Candidate("m", DEU, ROUTINE))
    made.pass_on("r1", DEU, b"receipt", back=(DEU,))

    batch = made.next_batch(DEU, Room(0, 0), T0)

    assert batch.receipts == (b"receipt",) and batch.news == () and not batch.look
    assert made.has_news(DEU)


def test_a_new_link_looks_through_the_outbox_until_a_look_leaves_nothing_behind() -> None:
    made = scheduler(GRAPH, LINKED)

    first = made.next_batch(DEU, Room(10, 10), T0)
    made.looked(DEU, 10, Room(10, 10))  # it filled the room: more may wait
    second = made.next_batch(DEU, Room(10, 10), T0)
    made.looked(DEU, 3, Room(10, 10))
    third = made.next_batch(DEU, Room(10, 10), T0)

    assert first.look and second.look
    assert not third.look


def test_a_busy_window_looks_for_flash_once_until_something_changes() -> None:
    # A relay's window stays busy for long stretches: each receipt frees a place and
    # wakes the feed, and every one of those turns looked through the outbox for flash
    # that was not there (a tenth of the 193-node simulation's looks).
    made = scheduler(GRAPH, LINKED)
    busy = Room(8, 0)  # the flash reserve alone

    first = made.next_batch(DEU, busy, T0)
    made.looked(DEU, 0, busy)
    again = made.next_batch(DEU, busy, T0)
    with_room = made.next_batch(DEU, Room(10, 10), T0)  # the others were never looked for

    assert first.look and not again.look
    assert with_room.look


def test_a_flash_look_that_filled_its_room_looks_again() -> None:
    made = scheduler(GRAPH, LINKED)
    busy = Room(8, 0)

    made.next_batch(DEU, busy, T0)
    made.looked(DEU, 8, busy)  # more flash may wait behind those

    assert made.next_batch(DEU, busy, T0).look


def test_a_drained_link_with_a_busy_window_looks_when_something_changes() -> None:
    made = scheduler(GRAPH, LINKED)
    busy = Room(8, 0)
    drained(made, DEU)
    made.next_batch(DEU, busy, T0)
    assert not made.next_batch(DEU, busy, T0).look  # a full look found all the flash too

    swept = made.next_batch(DEU, busy, T0, sweep=True)  # the net for what no event announced
    made.looked(DEU, 0, busy)
    made.wake()  # a link went down, the roster changed: every link looks
    woken = made.next_batch(DEU, busy, T0)
    made.looked(DEU, 0, busy)
    made.link_down(DEU)
    made.link_up(DEU, T0)
    relinked = made.next_batch(DEU, busy, T0)

    assert swept.look and woken.look and relinked.look


def test_a_sweep_looks_wide_and_skips_the_news() -> None:
    made = scheduler(GRAPH, LINKED)
    drained(made, DEU)
    made.queued(Candidate("m", DEU, ROUTINE))

    batch = made.next_batch(DEU, Room(10, 10), T0, sweep=True)

    assert batch.look and batch.detours and batch.news == ()


def test_routes_that_move_make_the_new_first_hop_look() -> None:
    made = scheduler({DEU: {ME}}, [DEU])
    drained(made, DEU)
    made.routing.accept(Announcement(KEN, 1, frozenset({DEU}), b""))
    made.routing.accept(Announcement(DEU, 2, frozenset({ME, KEN}), b""))

    too_soon = made.refresh_routes(T0 + ROUTE_REFRESH_MS)  # the same instant as the last
    moved = made.refresh_routes(T0 + 3 * ROUTE_REFRESH_MS)
    batch = made.next_batch(DEU, Room(10, 10), T0 + 3 * ROUTE_REFRESH_MS)

    assert too_soon is None
    assert moved == {DEU}
    assert batch.look and not batch.detours


def test_routes_follow_at_once_when_the_burst_of_announcements_has_paused() -> None:
    """The link layer says when the burst is over: no waiting out `ROUTE_REFRESH_MS`."""
    made = scheduler({DEU: {ME}}, [DEU])
    made.refresh_routes(T0 + ROUTE_REFRESH_MS)
    made.routing.accept(Announcement(KEN, 1, frozenset({DEU}), b""))
    made.routing.accept(Announcement(DEU, 2, frozenset({ME, KEN}), b""))

    too_soon = made.refresh_routes(T0 + ROUTE_REFRESH_MS + 1)
    paused = made.refresh_routes(T0 + ROUTE_REFRESH_MS + 1, paused=True)
    again = made.refresh_routes(T0 + ROUTE_REFRESH_MS + 2, paused=True)

    assert too_soon is None
    assert paused == {DEU}
    assert made.routing.next_hops(KEN) == (DEU,)
    assert again is None  # nothing new since: not stale


def test_a_link_that_becomes_a_later_choice_looks_wide_for_what_its_better_hops_cannot_take() -> (
    None
):
    """A relayed message whose only live hop is on its path waits, its news dropped. When
    the routes make another link a later choice for it (here an announcement; a link
    coming up looks wide on its first turn anyway), that link's look must be wide: a look
    for what it is the first choice for would never find it (only the poll's wide look
    did, every 5 s, at a tenth of a hub's CPU)."""
    made = scheduler({BRA: {ME, KEN}, USA: {ME}, KEN: {BRA}}, [BRA, USA])
    drained(made, BRA)
    drained(made, USA)
    made.queued(Candidate("relayed", KEN, URGENT, frozenset({BRA})))  # it came from BRA
    waits = made.next_batch(BRA, Room(10, 10), T0)

    made.routing.accept(Announcement(USA, 10, frozenset({ME, KEN}), b""))
    made.routing.accept(Announcement(KEN, 10, frozenset({BRA, USA}), b""))
    moved = made.refresh_routes(T0 + 5 * ROUTE_REFRESH_MS)
    batch = made.next_batch(USA, Room(10, 10), T0 + 5 * ROUTE_REFRESH_MS)

    assert waits.news == () and not waits.look  # nowhere to go: BRA is where it came from
    assert made.routing.next_hops(KEN) == (BRA, USA)  # USA is a later choice
    assert moved is not None and USA in moved  # woken
    assert batch.look and batch.detours and KEN in made.destinations(USA, batch.detours)


def test_a_wide_look_that_filled_its_room_looks_wide_again() -> None:
    made = scheduler(GRAPH, LINKED)
    made.hop_refused("m", DEU)  # every link looks wide
    wide = made.next_batch(USA, Room(2, 2), T0)
    made.looked(USA, 2, Room(2, 2), detours=True)  # more may wait behind those

    again = made.next_batch(USA, Room(2, 2), T0)

    assert wide.look and wide.detours
    assert again.look and again.detours


def test_a_relayed_message_never_goes_back_along_its_path() -> None:
    made = scheduler(GRAPH, LINKED)
    hops = made.routing.next_hops(KEN)
    came_from = hops[0]

    made.queued(Candidate("relayed", KEN, URGENT, frozenset({came_from, ME})))
    taken = {peer: made.next_batch(peer, Room(10, 10), T0).news for peer in (BRA, USA)}

    assert set(hops) == {BRA, USA}
    assert taken[came_from] == ()
    assert taken[hops[1]] == ("relayed",)


def test_a_hop_that_refused_a_message_is_not_chosen_again_and_every_link_looks_wide() -> None:
    made = scheduler(GRAPH, LINKED)
    for peer in LINKED:
        drained(made, peer)
    best, second = made.routing.next_hops(KEN)
    message = Candidate("m", KEN, ROUTINE)

    before = made.next_hop(message)
    made.hop_refused("m", best)
    after = made.next_hop(message)
    batch = made.next_batch(DEU, Room(10, 10), T0)

    assert (before, after) == (best, second)
    assert batch.look and batch.detours


def test_news_the_routes_moved_goes_to_the_new_link_and_wakes_it() -> None:
    made = scheduler(GRAPH, LINKED)
    best, second = made.routing.next_hops(KEN)
    made.queued(Candidate("m", KEN, ROUTINE))
    made.hop_refused("m", best)

    at_best = made.next_batch(best, Room(10, 10), T0)
    at_second = made.next_batch(second, Room(10, 10), T0)

    assert at_best.news == () and second in at_best.wake
    assert at_second.news == ("m",)


def test_equal_routes_spread_as_the_routing_table_orders_them() -> None:
    made = scheduler(GRAPH, LINKED)
    destinations = [NodeId(f"K{n:02d}") for n in range(20)]
    for node in destinations:
        made.routing.accept(Announcement(node, 1, frozenset({BRA, USA}), b""))
    made.routing.accept(Announcement(BRA, 9, frozenset({ME, KEN, *destinations}), b""))
    made.routing.accept(Announcement(USA, 9, frozenset({ME, KEN, *destinations}), b""))
    made.refresh_routes(T0 + 5 * ROUTE_REFRESH_MS)

    chosen = {d: made.next_hop(Candidate(f"to {d}", d)) for d in destinations}

    assert chosen == {d: made.routing.next_hops(d)[0] for d in destinations}
    assert set(chosen.values()) == {BRA, USA}


def test_a_receipt_goes_back_the_way_its_message_came_while_that_link_is_up() -> None:
    made = scheduler(GRAPH, LINKED)
    first, _ = made.pass_on("r1", KEN, b"back via USA", back=(USA, KEN))
    again, _ = made.pass_on("r1", KEN, b"back via USA", back=(USA, KEN))

    at_bra = made.next_batch(BRA, Room(10, 10), T0)
    at_usa = made.next_batch(USA, Room(10, 10), T0)

    assert first and not again  # passed on once
    assert at_bra.receipts == ()
    assert at_usa.receipts == (b"back via USA",)


def test_a_receipt_whose_link_back_is_down_goes_to_the_next_node_on_its_path() -> None:
    made = scheduler(GRAPH, LINKED)
    made.link_down(USA)  # KEN -> DEU -> USA -> us: DEU holds the message too

    _, wake = made.pass_on("r1", KEN, b"receipt", back=(USA, DEU, KEN))
    at_bra = made.next_batch(BRA, Room(10, 10), T0)  # the best route to KEN, off the path
    at_deu = made.next_batch(DEU, Room(10, 10), T0)

    assert wake == DEU
    assert at_bra.receipts == ()
    assert at_deu.receipts == (b"receipt",)


def test_a_receipt_with_no_node_of_its_path_linked_waits_for_one() -> None:
    made = scheduler(GRAPH, LINKED)
    made.link_down(USA)

    _, wake = made.pass_on("r1", KEN, b"receipt", back=(USA, KEN))
    waiting = [made.next_batch(peer, Room(10, 10), T0).receipts for peer in (BRA, DEU)]
    made.link_up(USA, T0)
    at_usa = made.next_batch(USA, Room(10, 10), T0)

    assert wake is None and waiting == [(), ()]  # BRA, the best route to KEN, would refuse it
    assert at_usa.receipts == (b"receipt",)


def test_receipts_past_the_most_kept_for_one_recipient_drop_the_oldest_and_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler_module, "MAX_PENDING_RECEIPTS", 2)
    made = scheduler(GRAPH, LINKED)
    made.link_down(USA)

    for n in range(3):
        made.pass_on(f"r{n}", KEN, b"receipt %d" % n, back=(USA, KEN))
    waiting = made.receipts_waiting
    made.link_up(USA, T0)
    at_usa = made.next_batch(USA, Room(10, 10), T0)

    assert (waiting, made.receipts_dropped) == (2, 1)
    assert at_usa.receipts == (b"receipt 1", b"receipt 2")
    assert made.receipts_waiting == 0


def test_a_link_that_goes_down_loses_its_news() -> None:
    made = scheduler(GRAPH, LINKED)
    made.queued(Candidate("m", DEU, ROUTINE))

    made.link_down(DEU)

    assert not made.has_news(DEU)
    assert DEU not in made.linked


def test_destinations_through_a_peer_first_or_at_all() -> None:
    made = scheduler(GRAPH, LINKED)
    best, second = made.routing.next_hops(KEN)

    assert KEN in made.destinations(best, detours=False)
    assert KEN not in made.destinations(second, detours=False)
    assert KEN in made.destinations(second, detours=True)


def test_choose_keeps_the_order_given_and_the_limit() -> None:
    made = scheduler(GRAPH, LINKED)
    candidates = [Candidate(f"m{n}", DEU) for n in range(5)] + [Candidate("k", KEN)]

    chosen = made.choose(DEU, candidates, Room(3, 3))

    assert chosen == ["m0", "m1", "m2"]


def test_choose_leaves_the_flash_reserve_to_flash() -> None:
    made = scheduler(GRAPH, LINKED)
    candidates = [Candidate(f"u{n}", DEU, URGENT) for n in range(4)] + [Candidate("f", DEU, FLASH)]

    chosen = made.choose(DEU, candidates, Room(4, 2))

    assert chosen == ["u0", "u1", "f"]


def test_the_scheduler_is_pure() -> None:
    """No asyncio, no store, no clock: it takes `now` and answers with decisions."""
    tree = ast.parse(Path(scheduler_module.__file__).read_text())
    imported = {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }

    assert imported <= {"__future__", "collections", "collections.abc", "dataclasses"} | {
        "network.core.lifecycle",
        "network.core.records",
        "network.core.routing",
        "network.core.session",
    }


# -- properties ------------------------------------------------------------------------

NODES = [NodeId(n) for n in ("BRA", "DEU", "KEN", "USA", "IND", "JPN")]
edges = st.sets(st.tuples(st.sampled_from([ME, *NODES]), st.sampled_from(NODES)), max_size=15)
messages = st.lists(
    st.tuples(
        st.sampled_from(NODES),  # destination
        st.sampled_from((FLASH, URGENT, ROUTINE)),
        st.sets(st.sampled_from(NODES), max_size=3),  # been through
        st.sets(st.sampled_from(NODES), max_size=2),  # hops that refused it
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    edges=edges,
    messages=messages,
    room=st.integers(min_value=0, max_value=12),
    others=st.integers(min_value=0, max_value=12),
    turns=st.lists(st.sampled_from(NODES), min_size=1, max_size=8),
)
def test_a_batch_never_breaks_the_rules(
    edges: set[tuple[NodeId, NodeId]],
    messages: list[tuple[NodeId, int, set[NodeId], set[NodeId]]],
    room: int,
    others: int,
    turns: list[NodeId],
) -> None:
    graph: dict[NodeId, set[NodeId]] = {node: set() for node in NODES}
    for a, b in edges:
        if a != b:
            graph.setdefault(a, set()).add(b)
            graph[b].add(a)
    linked = sorted(graph.pop(ME, set()))
    made = scheduler(graph, linked)
    sent: dict[str, tuple[int, frozenset[NodeId], set[NodeId]]] = {}
    made_candidates: dict[str, Candidate] = {}
    for n, (destination, rank, been, refused) in enumerate(messages):
        message_id = f"m{n:02d}"
        for hop in refused:
            made.hop_refused(message_id, hop)
        made_candidates[message_id] = Candidate(message_id, destination, rank, frozenset(been))
        made.queued(made_candidates[message_id])
        sent[message_id] = (rank, frozenset(been), refused)

    for peer in turns:
        batch = made.next_batch(peer, Room(room, min(others, room)), T0)

        ranks = [sent[i][0] for i in batch.news]
        assert len(batch.news) <= room
        assert ranks == sorted(ranks)  # flash before urgent before routine
        assert sum(rank != FLASH for rank in ranks) <= others  # the reserve is flash's alone
        assert FLASH not in ranks or set(ranks) == {FLASH}  # flash goes alone
        looked = made.choose(peer, (made_candidates[i] for i in sorted(sent)), Room(room, others))
        assert len(looked) <= room
        assert sum(made_candidates[i].rank != FLASH for i in looked) <= others
        for message_id in (*batch.news, *looked):
            _, been, refused = sent[message_id]
            assert peer not in been and peer not in refused
            assert peer in made.linked


# -- liveness: nothing sendable is left behind without a poll --------------------------


PEERS = [BRA, DEU, KEN, USA]


class FeedsWithoutPolls(RuleBasedStateMachine):
    """The scheduler beside a model of the store's outbox and of each link's feed
    (`Delivery.next_batch`: news by id, else a look through the outbox as far as its
    limit), with links coming and going, routes moving, hops refusing. No link ever
    polls: once every link has had its turns, every message with a live hop it may take
    has gone. A poll is for retries that come due, not for news that was lost."""

    def __init__(self) -> None:
        super().__init__()
        self.routing = RoutingTable(ME)
        for seq, (node, links) in enumerate(GRAPH.items(), 1):  # two routes to KEN
            self.routing.accept(Announcement(node, seq, frozenset(links), b""))
        self.made = Scheduler(self.routing)
        self.outbox: dict[str, Candidate] = {}
        self.seq = len(GRAPH)
        self.now = T0

    @rule(node=st.sampled_from(PEERS), links=st.sets(st.sampled_from([ME, *PEERS]), max_size=3))
    def announce(self, node: NodeId, links: set[NodeId]) -> None:
        self.seq += 1
        self.routing.accept(Announcement(node, self.seq, frozenset(links - {node}), b""))

    @rule(peer=st.sampled_from(PEERS), up=st.booleans())
    def link(self, peer: NodeId, up: bool) -> None:
        if up == (peer in self.made.linked):
            return
        if up:  # as `Links`: the session is up, then our links change (`links_changed`)
            self.made.link_up(peer, self.now)
            self.routing.set_linked(self.made.linked)
        else:
            self.made.link_down(peer)
            self.routing.set_linked(self.made.linked)
            self.made.wake()  # a link lost: every other looks for what it carried

    @rule(
        destination=st.sampled_from(PEERS),
        rank=st.sampled_from((FLASH, URGENT, ROUTINE)),
        been=st.sets(st.sampled_from(PEERS), max_size=2),
    )
    def queue(self, destination: NodeId, rank: int, been: set[NodeId]) -> None:
        self.seq += 1  # ids as unique as announcement numbers
        message = Candidate(f"m{self.seq:03d}", destination, rank, frozenset(been))
        self.outbox[message.id] = message
        self.made.queued(message)

    @rule(data=st.data(), hop=st.sampled_from(PEERS))
    def refuse(self, data: st.DataObject, hop: NodeId) -> None:
        if self.outbox:
            message_id = data.draw(st.sampled_from(sorted(self.outbox)))
            self.made.hop_refused(message_id, hop)

    @rule(paused=st.booleans())
    def routes_follow(self, paused: bool) -> None:
        self.now += ROUTE_REFRESH_MS // 2
        self.made.refresh_routes(self.now, paused=paused)

    @rule(
        peer=st.sampled_from(PEERS),
        room=st.integers(min_value=1, max_value=4),
        reserve=st.integers(min_value=0, max_value=2),
    )
    def turn(self, peer: NodeId, room: int, reserve: int) -> None:
        """A turn with `room` for any, and `reserve` more for flash alone (as a window)."""
        if peer in self.made.linked:
            self._turn(peer, Room(room + reserve, room))

    def _turn(self, peer: NodeId, room: Room) -> bool:
        """One turn of `peer`'s feed; whether it sent, looked or woke another link."""
        batch = self.made.next_batch(peer, room, self.now)
        if batch.news:
            taken = [i for i in batch.news if i in self.outbox]
        elif batch.look:  # as `Delivery._look`: on past rows for other links, if any
            wanted = set(self.made.destinations(peer, batch.detours))
            rank = max_rank_for(room)
            waiting = sorted(
                (m for m in self.outbox.values() if m.destination in wanted and m.rank <= rank),
                key=lambda m: (m.rank, m.id),
            )
            fetch = look_limit(room, batch.detours)
            while True:
                read = waiting[:fetch]
                taken = self.made.choose(peer, read, room)
                others = sum(self.outbox[i].rank != 0 for i in taken)
                last_rank = read[-1].rank if read else 0
                if len(waiting) <= fetch or not read_on(room, len(taken), others, last_rank):
                    break
                fetch *= 4
            self.made.looked(peer, len(taken), room, detours=batch.detours)
        else:
            return bool(batch.wake)  # the links woken take their turns
        for message_id in taken:
            message = self.outbox.pop(message_id)
            assert peer not in message.been
        return True

    @rule()
    def every_link_turns_until_nothing_is_left_to_send(self) -> None:
        for _ in range(200):
            self.now += ROUTE_REFRESH_MS
            if not any([self._turn(peer, Room(2, 2)) for peer in sorted(self.made.linked)]):
                break
        stranded = {i: self.made.next_hop(m) for i, m in self.outbox.items()}
        assert {i: hop for i, hop in stranded.items() if hop is not None} == {}


test_feeds_without_polls_leave_nothing_sendable_behind = FeedsWithoutPolls.TestCase
test_feeds_without_polls_leave_nothing_sendable_behind.settings = settings(
    max_examples=2000, stateful_step_count=25, deadline=None
)


def test_a_message_left_only_a_link_already_a_choice_goes_when_its_better_link_is_lost() -> None:
    """The state machine's find, kept: a flash message for USA that has been through KEN
    is news for USA; USA's link is lost, and of the routes left (KEN first, then BRA) only
    BRA may take it. BRA was already a choice for USA, so nothing but the lost link tells
    it to look past the first hops."""
    machine = FeedsWithoutPolls()
    machine.link(peer=BRA, up=True)
    machine.every_link_turns_until_nothing_is_left_to_send()
    machine.link(peer=KEN, up=True)
    machine.link(peer=USA, up=True)
    machine.queue(been={KEN}, destination=USA, rank=FLASH)
    machine.link(peer=USA, up=False)

    machine.every_link_turns_until_nothing_is_left_to_send()

    assert machine.outbox == {}
    machine.teardown()


def test_a_receipt_back_again_while_still_held_is_held_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ids passed on are kept ten times the bound: a receipt that waits long enough
    falls out of them, and comes again when its sender sends again. Held twice, it broke
    its recipient's count: the next receipt for it was dropped in its place."""
    monkeypatch.setattr(scheduler_module, "MAX_PENDING_RECEIPTS", 1)
    made = scheduler(GRAPH, LINKED)
    made.link_down(USA)
    made.pass_on("r0", KEN, b"receipt 0", back=(USA, KEN))
    for n in range(1, 12):  # others, each for a recipient of its own: r0's id falls out
        made.pass_on(f"r{n}", NodeId(f"K{n:02d}"), b"other", back=(USA,))
    again, _ = made.pass_on("r0", KEN, b"receipt 0", back=(USA, KEN))
    made.pass_on("r12", KEN, b"receipt 12", back=(USA, KEN))  # KEN's newest: r0 drops
    made.link_up(USA, T0)
    at_usa = made.next_batch(USA, Room(20, 20), T0).receipts

    assert again  # not known any more, so taken as new ...
    assert at_usa.count(b"receipt 0") == 0 and b"receipt 12" in at_usa  # ... and held once
    assert (made.receipts_waiting, made.receipts_dropped) == (0, 1)


class ReceiptsGoBack(RuleBasedStateMachine):
    """End-to-end receipts passing through, with links coming and going and at most
    `KEPT` kept for one recipient, beside a model of what is held: each goes, once, to a
    link that is up and on its message's way back; once every link has had its turn,
    none is left that a link up could take; past the bound, a recipient's oldest is
    dropped, counted, and never sent."""

    KEPT = 3

    def __init__(self) -> None:
        super().__init__()
        self.bound = scheduler_module.MAX_PENDING_RECEIPTS
        scheduler_module.MAX_PENDING_RECEIPTS = self.KEPT
        self.made = scheduler({}, ())
        self.held: dict[str, tuple[NodeId, tuple[NodeId, ...]]] = {}  # id -> recipient, back
        self.gone: set[str] = set()  # sent or dropped
        self.dropped = 0
        self.seq = 0

    def teardown(self) -> None:
        scheduler_module.MAX_PENDING_RECEIPTS = self.bound

    @rule(peer=st.sampled_from(PEERS), up=st.booleans())
    def link(self, peer: NodeId, up: bool) -> None:
        if up == (peer in self.made.linked):
            return
        if up:
            self.made.link_up(peer, T0)
        else:
            self.made.link_down(peer)

    @rule(
        recipient=st.sampled_from([KEN, USA]),
        relays=st.lists(st.sampled_from([BRA, DEU]), max_size=2, unique=True),
    )
    def pass_on(self, recipient: NodeId, relays: list[NodeId]) -> None:
        self.seq += 1
        receipt_id = f"r{self.seq:03d}"
        back = (*relays, recipient)
        new, link = self.made.pass_on(receipt_id, recipient, receipt_id.encode(), back)
        assert new
        assert link == next((hop for hop in back if hop in self.made.linked), None)
        self.held[receipt_id] = (recipient, back)
        mine = [i for i, (r, _) in self.held.items() if r == recipient]
        if len(mine) > self.KEPT:  # the oldest of its recipient goes
            del self.held[mine[0]]
            self.gone.add(mine[0])
            self.dropped += 1

    @rule(peer=st.sampled_from(PEERS))
    def turn(self, peer: NodeId) -> None:
        if peer in self.made.linked:
            self._take(peer)

    def _take(self, peer: NodeId) -> None:
        for raw in self.made.next_batch(peer, Room(10, 10), T0).receipts:
            receipt_id = raw.decode()
            assert receipt_id not in self.gone, f"{receipt_id} sent twice, or after its drop"
            assert peer in self.held[receipt_id][1], f"{peer} is not on {receipt_id}'s way back"
            del self.held[receipt_id]
            self.gone.add(receipt_id)

    @rule()
    def every_link_turns(self) -> None:
        for peer in sorted(self.made.linked):
            self._take(peer)
        stuck = {i: back for i, (_, back) in self.held.items() if set(back) & set(self.made.linked)}
        assert stuck == {}

    @invariant()
    def counts(self) -> None:
        assert (self.made.receipts_waiting, self.made.receipts_dropped) == (
            len(self.held),
            self.dropped,
        )


test_receipts_go_back_once_by_a_link_on_their_way = ReceiptsGoBack.TestCase
test_receipts_go_back_once_by_a_link_on_their_way.settings = settings(
    max_examples=1000, stateful_step_count=40, deadline=None
)
