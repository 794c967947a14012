"""Message states, as tables. Pure: no I/O.

Rules:
- A state changes only through a listed (state, event) pair; anything else
  raises IllegalTransition, which is our bug, never the peer's: every event a
  peer can cause (`PEER_EVENTS`) is listed in every outbound and relay state,
  most of them as no-ops that the use cases audit.
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
- `acknowledged` and `answered` follow the officers' acts on either side; an
  interim answer (`bodies.INTERIM_ANSWERS`: more information needed, a risk
  notice, handed on) is an acknowledgement, so the response is still awaited.
- `withdrawn` follows the requester's withdrawal or release (a `follow_up`), on
  either side and from any state of a request: it is final, and what arrives
  after it (a late receipt, an answer crossing the withdrawal) changes nothing.
- Four eyes: a request the node's policy holds is `awaiting_approval` until a
  second officer approves it (`queued`: it goes, its deadlines start) or sends
  it back (`sent_back`, final: it never leaves).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from network.core.errors import IllegalTransition
from network.core.records import Box, Priority

__all__ = [
    "INBOUND",
    "OUTBOUND",
    "PEER_EVENTS",
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
    WITHDRAWN = "withdrawn"
    # Four eyes: composed, held until a second officer approves it (then `queued`) or sends
    # it back (final: it never leaves; the officer composes it again).
    AWAITING_APPROVAL = "awaiting_approval"
    SENT_BACK = "sent_back"


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
    WITHDRAW = "withdraw"  # the requester withdrew the request, or released the preservation
    APPROVE = "approve"  # a second officer approved a request held for it
    SEND_BACK = "send_back"  # ... or sent it back, with a reason


S, E = State, Event

# Held for approval, or sent back: never sent, so what a peer says of it (a forged receipt
# or answer, since no peer has seen its id) changes nothing, and is audited.
_NEVER_SENT: Final = (E.RECEIPT, E.REFUSED, E.HOP_RECEIPT, E.ACKNOWLEDGE, E.ANSWER)

OUTBOUND: Final[dict[State, dict[Event, State]]] = {
    S.AWAITING_APPROVAL: {
        **dict.fromkeys(_NEVER_SENT, S.AWAITING_APPROVAL),
        E.APPROVE: S.QUEUED,
        E.SEND_BACK: S.SENT_BACK,
        E.WITHDRAW: S.WITHDRAWN,
    },
    S.SENT_BACK: {**dict.fromkeys(_NEVER_SENT, S.SENT_BACK), E.WITHDRAW: S.WITHDRAWN},
    S.QUEUED: {
        E.SEND: S.SENT,
        E.EXPIRE: S.EXPIRED,
        E.RECEIPT: S.DELIVERED,
        E.REFUSED: S.REJECTED,
        # Sent before a crash that lost the record of it: a hop took it.
        E.HOP_RECEIPT: S.SENT,
        # The answer can overtake the receipt (and our record that it went): it arrived.
        E.ACKNOWLEDGE: S.ACKNOWLEDGED,
        E.ANSWER: S.ANSWERED,
        E.WITHDRAW: S.WITHDRAWN,
    },
    S.SENT: {
        E.RESEND: S.SENT,
        E.HOP_RECEIPT: S.SENT,
        E.RECEIPT: S.DELIVERED,
        E.REFUSED: S.REJECTED,
        E.EXPIRE: S.EXPIRED,
        E.ACKNOWLEDGE: S.ACKNOWLEDGED,
        E.ANSWER: S.ANSWERED,
        E.WITHDRAW: S.WITHDRAWN,
    },
    # A refusal after a valid accepting receipt changes nothing: that receipt proves
    # the exact bytes arrived (the refusal is audited, and may be a late or forged one).
    S.DELIVERED: {
        E.RECEIPT: S.DELIVERED,
        E.REFUSED: S.DELIVERED,
        E.HOP_RECEIPT: S.DELIVERED,
        E.ACKNOWLEDGE: S.ACKNOWLEDGED,
        E.ANSWER: S.ANSWERED,
        E.WITHDRAW: S.WITHDRAWN,
    },
    S.ACKNOWLEDGED: {
        E.RECEIPT: S.ACKNOWLEDGED,
        E.REFUSED: S.ACKNOWLEDGED,
        E.HOP_RECEIPT: S.ACKNOWLEDGED,
        E.ACKNOWLEDGE: S.ACKNOWLEDGED,
        E.ANSWER: S.ANSWERED,
        E.WITHDRAW: S.WITHDRAWN,
    },
    S.ANSWERED: {
        E.RECEIPT: S.ANSWERED,
        E.REFUSED: S.ANSWERED,
        E.HOP_RECEIPT: S.ANSWERED,
        E.ACKNOWLEDGE: S.ANSWERED,
        E.ANSWER: S.ANSWERED,
        E.WITHDRAW: S.WITHDRAWN,
    },
    # Expired here, refused there (the recipient found it expired too): refused says more.
    S.EXPIRED: {
        E.RECEIPT: S.DELIVERED,
        E.EXPIRE: S.EXPIRED,
        E.REFUSED: S.REJECTED,
        E.HOP_RECEIPT: S.EXPIRED,
        E.ACKNOWLEDGE: S.ACKNOWLEDGED,
        E.ANSWER: S.ANSWERED,
        E.WITHDRAW: S.WITHDRAWN,
    },
    S.REJECTED: {
        E.RECEIPT: S.DELIVERED,
        E.REFUSED: S.REJECTED,
        E.HOP_RECEIPT: S.REJECTED,
        E.ACKNOWLEDGE: S.ACKNOWLEDGED,
        E.ANSWER: S.ANSWERED,
        E.WITHDRAW: S.WITHDRAWN,
    },
    # Withdrawn by our officers: final. A receipt, an acknowledgement or an answer that
    # crossed the withdrawal is audited; the request stays withdrawn.
    S.WITHDRAWN: {
        E.SEND: S.WITHDRAWN,
        E.RESEND: S.WITHDRAWN,
        E.RECEIPT: S.WITHDRAWN,
        E.REFUSED: S.WITHDRAWN,
        E.HOP_RECEIPT: S.WITHDRAWN,
        E.EXPIRE: S.WITHDRAWN,
        E.ACKNOWLEDGE: S.WITHDRAWN,
        E.ANSWER: S.WITHDRAWN,
        E.WITHDRAW: S.WITHDRAWN,
    },
}

RELAY: Final[dict[State, dict[Event, State]]] = {
    S.QUEUED: {
        E.SEND: S.SENT,
        E.EXPIRE: S.EXPIRED,
        E.HOP_RECEIPT: S.FORWARDED,
        E.RECEIPT: S.FORWARDED,
        E.REFUSED: S.REJECTED,
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
    # Taken on by the next hop: the recipient's refusal, passing back, is passed on.
    S.FORWARDED: {
        E.HOP_RECEIPT: S.FORWARDED,
        E.RECEIPT: S.FORWARDED,
        E.REFUSED: S.FORWARDED,
        E.REQUEUE: S.QUEUED,
    },
    S.EXPIRED: {
        E.RECEIPT: S.FORWARDED,
        E.EXPIRE: S.EXPIRED,
        E.HOP_RECEIPT: S.FORWARDED,
        E.REFUSED: S.REJECTED,
        E.REQUEUE: S.EXPIRED,  # past its expiry: not sent again, whoever asks
    },
    S.REJECTED: {
        E.RECEIPT: S.FORWARDED,
        E.REFUSED: S.REJECTED,
        E.HOP_RECEIPT: S.REJECTED,
        E.REQUEUE: S.REJECTED,
    },
}

_W = {E.WITHDRAW: S.WITHDRAWN}
INBOUND: Final[dict[State, dict[Event, State]]] = {
    S.RECEIVED: {E.OPEN: S.OPENED, E.ACKNOWLEDGE: S.ACKNOWLEDGED, E.ANSWER: S.ANSWERED, **_W},
    S.OPENED: {E.OPEN: S.OPENED, E.ACKNOWLEDGE: S.ACKNOWLEDGED, E.ANSWER: S.ANSWERED, **_W},
    S.ACKNOWLEDGED: {E.OPEN: S.ACKNOWLEDGED, E.ANSWER: S.ANSWERED, **_W},
    S.ANSWERED: {E.OPEN: S.ANSWERED, E.ANSWER: S.ANSWERED, **_W},
    # Withdrawn by its sender: still readable; our officers may still answer it (to say
    # the data was let go), and it stays withdrawn.
    S.WITHDRAWN: {E.OPEN: S.WITHDRAWN, E.ANSWER: S.WITHDRAWN, **_W},
}

# What a peer's frames can cause: a receipt (hop or end to end, any outcome), a sender
# asking again for a relayed copy, the other side's acknowledgement or response, its
# withdrawal of a request it sent us. Each is
# a move in EVERY state of the outbound and relay tables (an unchanged state is an
# audited no-op), so that no input from outside can raise IllegalTransition.
PEER_EVENTS: Final[dict[Box, frozenset[Event]]] = {
    Box.OUT: frozenset({E.RECEIPT, E.REFUSED, E.HOP_RECEIPT, E.ACKNOWLEDGE, E.ANSWER}),
    Box.RELAY: frozenset({E.RECEIPT, E.REFUSED, E.HOP_RECEIPT, E.REQUEUE}),
    Box.IN: frozenset({E.WITHDRAW}),
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
