"""What every use case of one node shares: who we are, keys, roster, store, clock, randomness,
settings, the live events hub, and our checkpoint's standing.

Fixed for the node's run, but for the roster (a newer one is adopted by a method)
and the checkpoint standing (set by methods, read by receipts and the checkpoint timer).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from network.core.approval import NO_APPROVAL, ApprovalPolicy
from network.core.attachments import DEFAULT_LIMITS, AttachmentLimits
from network.core.budget import AuditBudget
from network.core.crypto import StorageKey, VerifyKey
from network.core.deadlines import DEFAULT_DEADLINES, Deadlines
from network.core.envelope import DEFAULT_SKEW_MS
from network.core.records import Json, NodeId
from network.core.roster import Roster
from network.node.events import Hub
from network.node.keys import NodeKeys
from network.node.store import AuditEntry, Store

if TYPE_CHECKING:
    from network.node.witnessing import WitnessReply

__all__ = ["MAX_RECENT_ALERTS", "AlertBoard", "CheckpointStanding", "NodeContext", "RosterHolder"]

MAX_RECENT_ALERTS = 200  # for the console; the audit log keeps them all
# Audit entries for refusals of what one source (a peer, an address) sent: this many a
# minute; the next one let through counts those held back. A peer sending garbage in a
# loop must not grow the log without bound; the first ones say what it did.
REFUSALS_PER_MINUTE = 60
MAX_REFUSAL_SOURCES = 4096

# Audit actions the console hears about live (network/events.py), by the kind of event.
_LIVE: dict[str, str] = {
    "received": "message",
    "receipt_received": "receipt",
    "hop_receipt": "receipt",
    "composed": "state",
    "delivered": "state",
    "rejected": "state",
    "acknowledged": "state",
    "answered": "state",
    "replied": "state",
    "withdrawn": "state",
    "released": "state",
    "information_given": "state",
    "proceed_asked": "state",
    "until_mla_decision": "state",
    "assigned": "state",
    "expired": "state",
    "overdue": "state",
}
_LIVE_DETAIL = ("from", "to", "type", "priority", "outcome", "deadline", "status")


class AlertBoard:
    """The alerts raised in this run: the console's recent ones, and those the webhook has
    yet to be given. Any use case raises (a deadline passed, an id conflict, a roster
    about to expire); the runner takes the new ones to post."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._recent: deque[dict[str, Json]] = deque(maxlen=MAX_RECENT_ALERTS)
        self._unposted: deque[dict[str, Json]] = deque(maxlen=MAX_RECENT_ALERTS)

    def raise_(self, records: Iterable[dict[str, Json]]) -> None:
        """Keep `records` for the console and the webhook, and tell live readers."""
        for record in records:
            self._recent.append(record)
            self._unposted.append(record)
            self._hub.publish({"kind": "alert", "id": record.get("message_id"), **record})

    def recent(self) -> list[dict[str, Json]]:
        """The alerts raised in this run, newest first (at most `MAX_RECENT_ALERTS`)."""
        return list(self._recent)[::-1]

    def take_unposted(self) -> list[dict[str, Json]]:
        """The alerts raised since the last call, oldest first, for the webhook."""
        taken = list(self._unposted)
        self._unposted.clear()
        return taken


class RosterHolder:
    """The roster this node holds now; a newer one replaces it through `adopt`."""

    def __init__(self, roster: Roster) -> None:
        self._roster = roster

    @property
    def roster(self) -> Roster:
        return self._roster

    def adopt(self, roster: Roster) -> None:
        self._roster = roster


class CheckpointStanding:
    """Our newest signed checkpoint (end-to-end receipts carry it), and whether a flash
    or urgent message came or went since (the next checkpoint comes sooner)."""

    def __init__(self) -> None:
        self.latest: str | None = None
        self.urgent_pending = False
        # Asks the linked peers which checkpoint of our log each holds (set by witnessing).
        self.ask_witnesses: Callable[[], Awaitable[list[WitnessReply]]] | None = None

    def asked_by(self, ask: Callable[[], Awaitable[list[WitnessReply]]]) -> None:
        """How to ask our witnesses what they hold of our log (`GET /api/audit/verify`)."""
        self.ask_witnesses = ask

    def urgent_message(self) -> None:
        self.urgent_pending = True

    def loaded(self, note: str) -> None:
        """Our newest checkpoint, as the store kept it from an earlier run."""
        self.latest = note

    def signed(self, note: str) -> None:
        """A new checkpoint is signed and committed: it covers what was urgent."""
        self.latest = note
        self.urgent_pending = False


@dataclass(frozen=True, slots=True)
class NodeContext:
    """One node's fixed parts, shared by its use cases."""

    keys: NodeKeys
    store: Store
    clock: Callable[[], int]
    rosters: RosterHolder
    storage: StorageKey  # seals our own copies and tags case references
    random_bytes: Callable[[int], bytes] = os.urandom
    skew_ms: int = DEFAULT_SKEW_MS
    retry_ms: int = 60_000
    keeper: VerifyKey | None = None  # the pinned register keeper key: rosters need it
    deadlines: Deadlines = DEFAULT_DEADLINES
    attachments: AttachmentLimits = DEFAULT_LIMITS  # the files this node sends and takes
    approval: ApprovalPolicy = NO_APPROVAL  # four eyes: the requests a second officer approves
    events: Hub = field(default_factory=Hub)  # live news for the console; fed after commits
    alerts: AlertBoard = field(init=False)  # what is raised: the console's and the webhook's
    checkpoints: CheckpointStanding = field(default_factory=CheckpointStanding)
    refusals: AuditBudget = field(
        default_factory=lambda: AuditBudget(
            REFUSALS_PER_MINUTE, 60_000, max_keys=MAX_REFUSAL_SOURCES
        )
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "alerts", AlertBoard(self.events))

    @property
    def me(self) -> NodeId:
        return self.keys.node_id

    @property
    def actor(self) -> str:
        """How the audit log names this node acting on its own."""
        return f"node:{self.me}"

    @property
    def roster(self) -> Roster:
        return self.rosters.roster

    async def audit(self, entries: Sequence[AuditEntry]) -> None:
        """Append `entries` to the audit log in a transaction of their own (none: no-op)."""
        if not entries:
            return
        async with self.store.transaction(self.clock()) as tx:
            tx.audit(entries)

    def refusal(self, source: str, entry: AuditEntry) -> list[AuditEntry]:
        """`entry`, a refusal of what `source` sent, as the entries to record: none when
        `source` is past its budget (`REFUSALS_PER_MINUTE`), else it with the count held
        back since its last one."""
        admitted = self.refusals.admit(source, entry, self.clock())
        return [] if admitted is None else [admitted]

    def refusals_unreported(self, *, stopping: bool = False) -> list[AuditEntry]:
        """What the refusal budget held back and no later entry reported, per source: for
        sources whose minute has ended (every source when `stopping`)."""
        now = None if stopping else self.clock()
        return [
            AuditEntry(self.actor, "refusals_suppressed", None, {"source": key, "count": count})
            for key, count in self.refusals.unreported(now)
        ]

    def publish(self, entries: Iterable[AuditEntry]) -> None:
        """Tell live readers what was just committed (no body, only what a listing shows)."""
        if not len(self.events):
            return
        now = self.clock()
        for entry in entries:
            kind = _LIVE.get(entry.action)
            if kind is None or entry.message_id is None:
                continue
            event: dict[str, Any] = {
                "kind": kind,
                "action": entry.action,
                "id": entry.message_id,
                "time": now,
            }
            detail = entry.detail or {}
            if "part_of" in detail:
                continue  # an attachment's part: its message says what readers need
            event.update((k, detail[k]) for k in _LIVE_DETAIL if k in detail)
            self.events.publish(event)
