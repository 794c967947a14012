"""network.core.admission: which unfinished handshakes a peer server holds."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from network.core.admission import PendingHandshakes

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
