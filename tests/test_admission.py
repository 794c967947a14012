"""network.core.admission: which connections a server holds when more arrive than it will hold."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from network.core.admission import OpenConnections, PendingHandshakes

HOST = "192.0.2.1"  # a contact point's address (in the roster)


def slots(**bounds: int) -> PendingHandshakes[int]:
    settings = {"limit": 8, "per_source": 2, "per_roster_host": 4, "reserved": 4, **bounds}
    return PendingHandshakes(roster_hosts={HOST}, **settings)


def test_a_stranger_flooding_from_one_address_pushes_out_only_its_own() -> None:
    pending = slots()
    pending.arrive(1, HOST)
    pending.arrive(2, "198.51.100.7")

    shut = [pending.arrive(conn, "203.0.113.9") for conn in range(10, 20)]

    assert shut[:2] == [[], []] and shut[2:] == [[c] for c in range(10, 18)]
    assert list(pending) == [1, 2, 18, 19]  # the flood's two newest, and the others


def test_strangers_together_never_take_the_room_kept_for_roster_hosts() -> None:
    pending = slots()
    addresses = (f"203.0.113.{i}" for i in itertools.count())
    for conn in range(100):
        pending.arrive(conn, next(addresses))

    assert pending.held_from_strangers == 8 - 4
    assert pending.arrive(1000, HOST) == []  # the room kept is there
    assert [pending.arrive(1000 + i, HOST) for i in range(1, 4)] == [[], [], []]
    assert len(pending) == 8


def test_a_roster_host_is_never_pushed_out_by_strangers() -> None:
    # Issue 14, finding 6: any plain TCP connect pushed out the oldest, a genuine peer's.
    pending = slots()
    pending.arrive(1, HOST)
    for conn in range(10, 1000):
        pending.arrive(conn, f"203.0.113.{conn % 200}")

    assert next(iter(pending)) == 1 and pending.held_from(HOST) == 1
    assert pending.held_from_strangers == 8 - 4 and len(pending) == 5


def test_a_stranger_arriving_when_roster_hosts_hold_every_slot_is_the_one_shut() -> None:
    pending = slots(per_roster_host=8)
    for conn in range(8):
        pending.arrive(conn, HOST)

    assert pending.arrive(99, "203.0.113.9") == [99]
    assert 99 not in pending and len(pending) == 8


def test_room_is_made_from_the_stranger_holding_the_most_oldest_first() -> None:
    pending = slots(limit=6, reserved=1, per_source=3)
    for conn, source in [(1, "a"), (2, "b"), (3, "b"), (4, "c"), (5, "b")]:
        pending.arrive(conn, source)

    assert pending.arrive(6, "d") == [2]  # b holds three: its oldest goes


def test_settled_connections_free_their_slot() -> None:
    pending = slots()
    pending.arrive(1, "203.0.113.9")
    pending.arrive(2, "203.0.113.9")
    pending.settle(1)
    pending.settle(1)  # twice is harmless

    assert pending.arrive(3, "203.0.113.9") == []
    assert list(pending) == [2, 3]


def test_bounds_that_cannot_hold_are_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        slots(reserved=8)


@given(
    st.lists(
        st.tuples(st.sampled_from([HOST, "h2", "s1", "s2", "s3"]), st.booleans()), max_size=200
    )
)
def test_any_arrivals_and_settles_keep_every_bound(steps: list[tuple[str, bool]]) -> None:
    pending = PendingHandshakes[int](
        limit=6, per_source=2, per_roster_host=3, reserved=3, roster_hosts={HOST, "h2"}
    )
    sources: dict[int, str] = {}
    for conn, (source, settle_oldest) in enumerate(steps):
        before = list(pending)
        host_held = {c for c in before if sources[c] in (HOST, "h2")}
        sources[conn] = source
        shut = pending.arrive(conn, source)
        if settle_oldest and before:
            pending.settle(before[0])
        assert len(pending) <= 6
        assert pending.held_from_strangers <= 6 - 3
        for s in ("s1", "s2", "s3"):
            assert pending.held_from(s) <= 2
        assert pending.held_from(HOST) <= 3 and pending.held_from("h2") <= 3
        if source not in (HOST, "h2"):  # a stranger never pushes out a roster host's
            assert not set(shut) & host_held


# -- the HTTP API's open connections -------------------------------------------------------


def test_a_flood_of_idle_connections_makes_room_from_itself_for_a_new_client() -> None:
    held = OpenConnections[int](limit=4)
    assert [held.arrive(conn, "203.0.113.9") for conn in range(4)] == [[], [], [], []]

    assert held.arrive(10, "198.51.100.7") == [0]  # the flood's oldest goes
    assert held.arrive(11, "203.0.113.9") == [1]  # the flood pushes out only its own
    assert list(held) == [2, 3, 10, 11] and held.idle == 4


def test_a_busy_connection_is_never_closed_to_make_room() -> None:
    held = OpenConnections[int](limit=3)
    for conn in range(3):
        held.arrive(conn, "203.0.113.9")
    held.busy(0)
    held.busy(1)

    assert held.arrive(3, "198.51.100.7") == [2]
    held.busy(3)
    assert held.arrive(4, "198.51.100.7") == [4]  # all busy: the newcomer is turned away
    assert list(held) == [0, 1, 3]


def test_a_connection_answered_is_idle_again_and_the_newest_of_its_address() -> None:
    held = OpenConnections[int](limit=3)
    for conn in range(3):
        held.arrive(conn, "203.0.113.9")
    held.busy(0)
    held.done(0)  # answered after 1 and 2 arrived

    assert [held.arrive(conn, "203.0.113.9") for conn in (3, 4, 5)] == [[1], [2], [0]]


def test_connections_that_left_free_their_place_and_unknown_ones_are_ignored() -> None:
    held = OpenConnections[int](limit=2)
    held.arrive(1, "203.0.113.9")
    held.arrive(2, "203.0.113.9")
    held.left(1)
    held.left(1)  # twice is harmless
    held.busy(99)  # a connection it never held (a server without this bound)
    held.done(99)

    assert held.arrive(3, "203.0.113.9") == []
    assert list(held) == [2, 3] and 99 not in held


def test_a_limit_that_holds_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        OpenConnections[int](limit=0)


class ServerConnections(RuleBasedStateMachine):
    """Connections from a few addresses arrive, turn busy, are answered and leave, in any
    order; a plain model says which the server must hold and which it may close."""

    LIMIT = 5

    def __init__(self) -> None:
        super().__init__()
        self.held = OpenConnections[int](limit=self.LIMIT)
        self.source: dict[int, str] = {}
        self.busy: set[int] = set()
        self.idle_since: dict[int, int] = {}  # idle connection -> when it became idle
        self.clock = 0
        self.next_conn = 0

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    @rule(source=st.sampled_from(["a", "b", "c"]))
    def arrive(self, source: str) -> None:
        conn = self.next_conn
        self.next_conn += 1
        idle_by_source: dict[str, list[int]] = {}
        for c in sorted(self.idle_since, key=self.idle_since.__getitem__):
            idle_by_source.setdefault(self.source[c], []).append(c)
        full = len(self.source) >= self.LIMIT

        closed = self.held.arrive(conn, source)

        if not full:
            assert closed == []
        elif not idle_by_source:
            assert closed == [conn]  # every one busy: turned away, none cut
            return
        else:
            most = max(len(own) for own in idle_by_source.values())
            oldest_of_the_most = {own[0] for own in idle_by_source.values() if len(own) == most}
            assert len(closed) == 1 and closed[0] in oldest_of_the_most
            victim = closed[0]
            del self.source[victim], self.idle_since[victim]
        self.source[conn] = source
        self.idle_since[conn] = self._tick()

    @precondition(lambda self: bool(self.idle_since))
    @rule(data=st.data())
    def request_begins(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.idle_since)))
        self.held.busy(conn)
        del self.idle_since[conn]
        self.busy.add(conn)

    @precondition(lambda self: bool(self.busy))
    @rule(data=st.data())
    def request_answered(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.busy)))
        self.held.done(conn)
        self.busy.discard(conn)
        self.idle_since[conn] = self._tick()

    @precondition(lambda self: bool(self.source))
    @rule(data=st.data())
    def closes(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.source)))
        self.held.left(conn)
        del self.source[conn]
        self.busy.discard(conn)
        self.idle_since.pop(conn, None)

    @invariant()
    def holds_what_the_model_holds(self) -> None:
        assert sorted(self.held) == sorted(self.source)
        assert len(self.held) <= self.LIMIT
        assert self.held.idle == len(self.idle_since)


ServerConnections.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_server_connections = ServerConnections.TestCase
