"""The message state tables, checked directly: every move, the ends, and the rules above them."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from network.core.errors import IllegalTransition, LocalError
from network.core.lifecycle import (
    INBOUND,
    OUTBOUND,
    PEER_EVENTS,
    PRIORITY_RANK,
    RELAY,
    TABLES,
    Event,
    State,
    next_state,
)
from network.core.records import Box, Priority

Table = dict[State, dict[Event, State]]

S, E = State, Event

# Where a message starts in each table: committed to the outbox, or received.
ENTRY = {"out": S.QUEUED, "in": S.RECEIVED, "relay": S.QUEUED}
# ... and where else: a request held for a second officer's approval (four eyes).
ENTRIES = {**{box: {state} for box, state in ENTRY.items()}, "out": {S.QUEUED, S.AWAITING_APPROVAL}}

# States no event leaves (every move from them comes back to them).
TERMINAL = {"out": {S.WITHDRAWN}, "in": {S.WITHDRAWN}, "relay": set()}

ALL_MOVES = [(box, state, event) for box in TABLES for state in State for event in Event]


@pytest.mark.parametrize(("box", "state", "event"), ALL_MOVES)
def test_every_move_is_in_the_table_or_illegal(box: str, state: State, event: Event) -> None:
    table = TABLES[box]
    if event in table.get(state, {}):
        assert next_state(table, state, event) is table[state][event]
        return
    with pytest.raises(IllegalTransition) as caught:
        next_state(table, state, event)
    assert (caught.value.state, caught.value.event) == (state, event)
    assert isinstance(caught.value, LocalError)


@pytest.mark.parametrize("box", list(TABLES))
def test_every_move_leads_to_a_state_of_the_same_table(box: str) -> None:
    table = TABLES[box]
    for moves in table.values():
        assert set(moves.values()) <= set(table)


@pytest.mark.parametrize("box", list(TABLES))
def test_every_state_can_be_reached_from_the_entry(box: str) -> None:
    table = TABLES[box]
    seen, todo = set(ENTRIES[box]), list(ENTRIES[box])
    while todo:
        for after in table[todo.pop()].values():
            if after not in seen:
                seen.add(after)
                todo.append(after)
    assert seen == set(table)


@pytest.mark.parametrize("box", list(TABLES))
def test_terminal_states(box: str) -> None:
    table = TABLES[box]
    terminal = {s for s, moves in table.items() if set(moves.values()) <= {s}}
    assert terminal == TERMINAL[box]


def test_the_tables_are_the_three_boxes() -> None:
    assert TABLES == {"out": OUTBOUND, "in": INBOUND, "relay": RELAY}


@given(events=st.lists(st.sampled_from(list(Event))))
def test_a_request_held_for_approval_leaves_only_by_an_approval(events: list[Event]) -> None:
    """Four eyes: nothing a peer says (a forged receipt, an answer to an id it cannot have
    seen) moves a held request; only an approval queues it, and once sent back it never
    goes."""
    states = walk(OUTBOUND, S.AWAITING_APPROVAL, events)
    for event, (before, after) in zip(events, itertools.pairwise(states), strict=True):
        if before is S.AWAITING_APPROVAL and after is not before:
            assert (event, after) in {
                (E.APPROVE, S.QUEUED),
                (E.SEND_BACK, S.SENT_BACK),
                (E.WITHDRAW, S.WITHDRAWN),
            }
        if before is S.SENT_BACK:
            assert after in (S.SENT_BACK, S.WITHDRAWN)  # never sent, whatever comes


def test_a_sent_message_is_delivered_only_by_an_end_to_end_receipt() -> None:
    into_delivered = {
        event
        for before, moves in OUTBOUND.items()
        for event, after in moves.items()
        if after is S.DELIVERED and before is not S.DELIVERED
    }
    assert into_delivered == {E.RECEIPT}
    assert next_state(OUTBOUND, S.SENT, E.HOP_RECEIPT) is S.SENT  # a relay's is not enough


@pytest.mark.parametrize("state", [S.EXPIRED, S.REJECTED])
def test_a_late_receipt_is_still_believed(state: State) -> None:
    assert next_state(OUTBOUND, state, E.RECEIPT) is S.DELIVERED


def test_a_forwarded_copy_is_queued_again_when_its_sender_asks() -> None:
    assert next_state(RELAY, S.FORWARDED, E.REQUEUE) is S.QUEUED


def test_an_opened_message_is_never_unopened() -> None:
    for state, moves in INBOUND.items():
        assert S.RECEIVED not in moves.values(), state


def test_flash_ranks_first() -> None:
    assert set(PRIORITY_RANK) == set(Priority)
    assert sorted(PRIORITY_RANK, key=PRIORITY_RANK.__getitem__) == [
        Priority.FLASH,
        Priority.URGENT,
        Priority.ROUTINE,
    ]


# -- properties: any sequence of events ------------------------------------------------

OFFICER_STEPS = [S.ACKNOWLEDGED, S.ANSWERED, S.WITHDRAWN]


def walk(table: Table, start: State, events: list[Event]) -> list[State]:
    """The states a message passes through; an illegal event changes nothing."""
    states = [start]
    for event in events:
        try:
            states.append(next_state(table, states[-1], event))
        except IllegalTransition:
            states.append(states[-1])
    return states


@given(box=st.sampled_from(list(TABLES)), events=st.lists(st.sampled_from(list(Event))))
def test_any_sequence_stays_in_the_table(box: str, events: list[Event]) -> None:
    states = walk(TABLES[box], ENTRY[box], events)
    assert set(states) <= set(TABLES[box])


@given(box=st.sampled_from(["out", "in"]), events=st.lists(st.sampled_from(list(Event))))
def test_an_officers_act_is_never_undone(box: str, events: list[Event]) -> None:
    states = walk(TABLES[box], ENTRY[box], events)
    for before, after in itertools.pairwise(states):
        if before in OFFICER_STEPS:
            assert after in OFFICER_STEPS
            assert OFFICER_STEPS.index(after) >= OFFICER_STEPS.index(before)


@given(events=st.lists(st.sampled_from(list(Event))))
def test_an_answered_message_stays_answered_until_withdrawn(events: list[Event]) -> None:
    for table in (OUTBOUND, INBOUND):
        states = walk(table, S.ANSWERED, events)
        ended = states.index(S.WITHDRAWN) if S.WITHDRAWN in states else len(states)
        assert set(states[:ended]) == {S.ANSWERED}
        assert set(states[ended:]) <= {S.WITHDRAWN}


@pytest.mark.parametrize(
    ("box", "state"), [(box, state) for box in ("out", "in") for state in TABLES[box]]
)
def test_a_request_can_be_withdrawn_in_any_state_and_stays_withdrawn(
    box: str, state: State
) -> None:
    table = TABLES[box]

    assert next_state(table, state, E.WITHDRAW) is S.WITHDRAWN
    assert set(table[S.WITHDRAWN].values()) == {S.WITHDRAWN}


@given(events=st.lists(st.sampled_from(list(Event))))
def test_only_a_requeue_takes_a_forwarded_copy_back(events: list[Event]) -> None:
    states = walk(RELAY, S.FORWARDED, events)
    for (before, after), event in zip(itertools.pairwise(states), events, strict=True):
        if before is S.FORWARDED and after is not S.FORWARDED:
            assert event is E.REQUEUE


# -- no input from a peer can raise IllegalTransition (issue 14, finding 1) ------------


@pytest.mark.parametrize(
    ("box", "state", "event"),
    [(box, state, event) for box in TABLES for state in TABLES[box] for event in PEER_EVENTS[box]],
)
def test_every_event_a_peer_can_cause_is_a_move_in_every_state(
    box: Box, state: State, event: Event
) -> None:
    after = next_state(TABLES[box], state, event)

    assert after in TABLES[box]


@pytest.mark.parametrize("state", [S.DELIVERED, S.ACKNOWLEDGED, S.ANSWERED])
def test_a_refusal_after_delivery_changes_nothing(state: State) -> None:
    assert next_state(OUTBOUND, state, E.REFUSED) is state


def test_a_refusal_of_an_expired_message_says_more_than_the_expiry() -> None:
    assert next_state(OUTBOUND, S.EXPIRED, E.REFUSED) is S.REJECTED
    assert next_state(RELAY, S.EXPIRED, E.REFUSED) is S.REJECTED
