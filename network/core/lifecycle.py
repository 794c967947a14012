"""Message states, as tables. Pure: no I/O.

Rules:
- A state changes only through a listed (state, event) pair; anything else
  raises IllegalTransition, which is our bug, never the peer's.
- The sender's message is `queued` once committed to the outbox, `sent` once
  written to a link, `delivered` only on a valid end-to-end receipt for the
  exact bytes sent. A receipt that arrives late still moves an `expired`
  message to `delivered` (the data did arrive). `rejected` is final but a
  later accepting receipt for the same bytes is still believed.
- The receiver's message is `received` once committed (before its receipt
  is sent), `opened` once an officer read it.
- A relay's copy is `queued` once committed (before its hop receipt), `sent`
  once written to the next hop, `forwarded` once the next hop took it on (its
  hop receipt, or the recipient's end-to-end receipt). A forwarded copy goes
  `queued` again when its sender sends it again (the end-to-end receipt was lost).
- `acknowledged` and `answered` follow the officers' acts on either side.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from network.core.errors import IllegalTransition
from network.core.records import Box, Priority

__all__ = [
    "INBOUND",
    "OUTBOUND",
    "PRIORITY_RANK",
    "RELAY",
    "TABLES",
    "Event",
    "IllegalTransition",
    "State",
    "next_state",
]


class State(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    ANSWERED = "answered"
    EXPIRED = "expired"
    REJECTED = "rejected"
    RECEIVED = "received"
    OPENED = "opened"
    FORWARDED = "forwarded"


class Event(StrEnum):
    SEND = "send"  # written to a link
    RESEND = "resend"  # written again (reconnect, no receipt yet)
    RECEIPT = "receipt"  # a valid accepted or duplicate end-to-end receipt
    REFUSED = "refused"  # a valid rejected receipt
    EXPIRE = "expire"
    HOP_RECEIPT = "hop_receipt"  # a relay took it on
    REQUEUE = "requeue"  # the sender asks again for a relayed copy already forwarded
    OPEN = "open"
    ACKNOWLEDGE = "acknowledge"
    ANSWER = "answer"


S, E = State, Event

OUTBOUND: Final[dict[State, dict[Event, State]]] = {
    S.QUEUED: {E.SEND: S.SENT, E.EXPIRE: S.EXPIRED, E.RECEIPT: S.DELIVERED, E.REFUSED: S.REJECTED},
    S.SENT: {
        E.RESEND: S.SENT,
        E.HOP_RECEIPT: S.SENT,
        E.RECEIPT: S.DELIVERED,
        E.REFUSED: S.REJECTED,
        E.EXPIRE: S.EXPIRED,
        # The answer can overtake the receipt on another route: it did arrive.
        E.ACKNOWLEDGE: S.ACKNOWLEDGED,
        E.ANSWER: S.ANSWERED,
    },
    S.DELIVERED: {E.RECEIPT: S.DELIVERED, E.ACKNOWLEDGE: S.ACKNOWLEDGED, E.ANSWER: S.ANSWERED},
    S.ACKNOWLEDGED: {E.RECEIPT: S.ACKNOWLEDGED, E.ANSWER: S.ANSWERED},
    S.ANSWERED: {E.RECEIPT: S.ANSWERED, E.ANSWER: S.ANSWERED},
    S.EXPIRED: {E.RECEIPT: S.DELIVERED, E.EXPIRE: S.EXPIRED},
    S.REJECTED: {E.RECEIPT: S.DELIVERED, E.REFUSED: S.REJECTED},
}

RELAY: Final[dict[State, dict[Event, State]]] = {
    S.QUEUED: {
        E.SEND: S.SENT,
        E.EXPIRE: S.EXPIRED,
        E.HOP_RECEIPT: S.FORWARDED,
        E.RECEIPT: S.FORWARDED,
        E.REQUEUE: S.QUEUED,
    },
    S.SENT: {
        E.RESEND: S.SENT,
        E.HOP_RECEIPT: S.FORWARDED,
        E.RECEIPT: S.FORWARDED,
        E.REFUSED: S.REJECTED,
        E.EXPIRE: S.EXPIRED,
        E.REQUEUE: S.SENT,
    },
    S.FORWARDED: {E.HOP_RECEIPT: S.FORWARDED, E.RECEIPT: S.FORWARDED, E.REQUEUE: S.QUEUED},
    S.EXPIRED: {E.RECEIPT: S.FORWARDED, E.EXPIRE: S.EXPIRED, E.HOP_RECEIPT: S.FORWARDED},
    S.REJECTED: {E.RECEIPT: S.FORWARDED, E.REFUSED: S.REJECTED, E.REQUEUE: S.REJECTED},
}

INBOUND: Final[dict[State, dict[Event, State]]] = {
    S.RECEIVED: {E.OPEN: S.OPENED, E.ACKNOWLEDGE: S.ACKNOWLEDGED, E.ANSWER: S.ANSWERED},
    S.OPENED: {E.OPEN: S.OPENED, E.ACKNOWLEDGE: S.ACKNOWLEDGED, E.ANSWER: S.ANSWERED},
    S.ACKNOWLEDGED: {E.OPEN: S.ACKNOWLEDGED, E.ANSWER: S.ANSWERED},
    S.ANSWERED: {E.OPEN: S.ANSWERED, E.ANSWER: S.ANSWERED},
}

TABLES: Final[dict[Box, dict[State, dict[Event, State]]]] = {
    Box.OUT: OUTBOUND,
    Box.IN: INBOUND,
    Box.RELAY: RELAY,
}

PRIORITY_RANK: Final = {Priority.FLASH: 0, Priority.URGENT: 1, Priority.ROUTINE: 2}


def next_state(table: dict[State, dict[Event, State]], state: State, event: Event) -> State:
    """The state after `event`; raises IllegalTransition when the table has no such move."""
    try:
        return table[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None
