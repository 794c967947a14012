"""One node's use cases, built over one shared context.

`Node` holds the parts and nothing else (no logic, no state of its own): each
caller takes the part it uses (the links `delivery` and `inbound`, the HTTP API
`officers`, `reading` and `oversight`, the runner all of them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from network.core.approval import NO_APPROVAL, ApprovalPolicy
from network.core.attachments import DEFAULT_LIMITS, AttachmentLimits
from network.core.crypto import VerifyKey
from network.core.deadlines import DEFAULT_DEADLINES, Deadlines
from network.core.envelope import DEFAULT_SKEW_MS
from network.core.retention import RetentionRule
from network.core.roster import Roster
from network.node.context import NodeContext, RosterHolder
from network.node.delivery import Delivery
from network.node.inbound import Inbound
from network.node.keys import NodeKeys
from network.node.officer import Officers
from network.node.oversight import Oversight
from network.node.passkeys import Passkeys
from network.node.reading import Reading
from network.node.retention import Retention
from network.node.store import Store

__all__ = ["Node"]


@dataclass(frozen=True, slots=True)
class Node:
    """The parts of one node at run time."""

    context: NodeContext
    delivery: Delivery  # links, routes, the outbox scheduler
    inbound: Inbound  # envelopes, receipts and rosters from the links
    officers: Officers  # composing, acknowledging, replying; users
    reading: Reading  # messages, cases, peers for readers
    oversight: Oversight  # deadlines, expiry, unroutable destinations
    retention: Retention  # deleting lapsed contents; legal holds
    passkeys: Passkeys  # people's sign-in to the console (WebAuthn)

    @classmethod
    def build(
        cls,
        *,
        keys: NodeKeys,
        roster: Roster,
        store: Store,
        clock: Callable[[], int],
        random_bytes: Callable[[int], bytes] = os.urandom,
        skew_ms: int = DEFAULT_SKEW_MS,
        retry_ms: int = 60_000,
        keeper: VerifyKey | None = None,
        deadlines: Deadlines = DEFAULT_DEADLINES,
        retention: Sequence[RetentionRule] = (),
        attachments: AttachmentLimits = DEFAULT_LIMITS,
        approval: ApprovalPolicy = NO_APPROVAL,
        origin: str = "http://localhost:8101",
    ) -> Node:
        """Wire a node's use cases over `store`, holding `roster` until a newer one comes."""
        context = NodeContext(
            keys=keys,
            store=store,
            clock=clock,
            rosters=RosterHolder(roster),
            storage=keys.keyring.storage,
            random_bytes=random_bytes,
            skew_ms=skew_ms,
            retry_ms=retry_ms,
            keeper=keeper,
            deadlines=deadlines,
            attachments=attachments,
            approval=approval,
        )
        delivery = Delivery(context)
        return cls(
            context=context,
            delivery=delivery,
            inbound=Inbound(context, delivery),
            officers=Officers(context, delivery),
            reading=Reading(context, delivery),
            oversight=Oversight(context, delivery),
            retention=Retention(context, retention),
            passkeys=Passkeys(context, origin),
        )
