"""The node's periodic duties: deadlines reviewed and escalated, messages past their expiry
raised, destinations without a route raised, the roster's end raised before and when it
comes; and the recent alerts the console shows.

Deadlines live in the store, so they fire after a restart as before it.
"""

from __future__ import annotations

import logging

from network.core.deadlines import Box, describe, review
from network.core.lifecycle import Event, State
from network.core.records import Json, NodeId
from network.core.roster import ROSTER_WARNING_MS, RosterValidity, roster_validity
from network.node.alerts import AlertKind, alert_kind, alert_record, node_alert, rfc3339
from network.node.context import NodeContext
from network.node.delivery import Delivery
from network.node.store import AuditEntry
from network.node.tracking import tracked

__all__ = ["Oversight"]

log = logging.getLogger("cpn.service")  # the name operators filter on, kept


class Oversight:
    """One node's periodic use cases."""

    def __init__(self, context: NodeContext, delivery: Delivery) -> None:
        self.context = context
        self.delivery = delivery
        self._unroutable: set[str] = set()
        self._roster_told: tuple[int, RosterValidity] | None = None

    def recent_alerts(self) -> list[dict[str, Json]]:
        """The alerts raised in this run, newest first (the context's board keeps them)."""
        return self.context.alerts.recent()

    async def review_deadlines(self, limit: int = 200) -> list[dict[str, Json]]:
        """Flag, audit and return the alerts due now; the next look is kept with each message.

        Deadlines live in the store, so they fire after a restart as before it.
        """
        now = self.context.clock()
        found = await self.context.store.alerts_due(now, limit)
        if not found:
            return []
        alerts: list[dict[str, Json]] = []
        async with self.context.store.transaction(now) as tx:
            await tx.prefetch(found)  # one read, not one per message
            entries: list[AuditEntry] = []
            for message_id in found:
                row = await tx.message(message_id)
                if row is None:
                    continue
                tracking = tracked(row)
                decision = review(tracking, self.context.deadlines, now)
                tx.alerts(row.id, decision.overdue, decision.alert_at)
                for item in decision.newly:
                    entries.append(
                        AuditEntry(self.context.actor, "overdue", row.id, {"deadline": str(item)})
                    )
                for item in decision.alert:
                    record = alert_record(
                        alert_kind(item),
                        node=self.context.me,
                        message_id=row.id,
                        box=tracking.box,
                        priority=tracking.priority,
                        peer=NodeId(row.peer),
                        detail=describe(item, tracking, now),
                        now=now,
                        peer_phones=self._phones(row.peer) if tracking.box == Box.OUT else (),
                    )
                    alerts.append(record)
                    entries.append(
                        AuditEntry(
                            self.context.actor, "escalated", row.id, {"alert": record["alert"]}
                        )
                    )
            tx.audit(entries)
        self.context.publish(entries)
        self.context.alerts.raise_(alerts)
        return alerts

    def _phones(self, peer: str) -> tuple[str, ...]:
        """The peer's duty desk by telephone, from its roster card (empty: none given)."""
        entry = self.context.roster.entries.get(NodeId(peer))
        return entry.card.phones if entry is not None else ()

    async def expire_due(self) -> list[str]:
        """Mark queued or sent messages past their expiry as expired, and raise them."""
        now = self.context.clock()
        due = await self.context.store.due_to_expire(now)
        if not due:
            return []
        async with self.context.store.transaction(now) as tx:
            await tx.prefetch([row.id for row in due])  # one read, not one per message
            expired = []
            entries = []
            for row in due:
                current = await tx.message(row.id)
                if current is None or current.state not in (State.QUEUED, State.SENT):
                    continue
                tx.transition(current, Event.EXPIRE)
                expired.append(current.id)
                detail: dict[str, Json] = {"raised": "log"}
                if current.attachment is not None:
                    # A file's part expires with its message, which says so: not raised again.
                    detail = {"part_of": current.in_reply_to}
                else:
                    log.error(
                        "message %s to %s expired undelivered after %d attempts",
                        current.id,
                        current.peer,
                        current.attempts,
                    )
                entries.append(AuditEntry(self.context.actor, "expired", current.id, detail))
            tx.audit(entries)
        self.context.publish(entries)
        return expired

    async def raise_unroutable(self) -> list[str]:
        """Queued messages with no route at all: raised once each (log and audit), kept queued.

        They go as soon as a route appears; nothing is dropped.
        """
        destinations = await self.context.store.queued_counts(not_taken_on=True)
        stranded = sorted(d for d in destinations if not self.delivery.has_route(d))
        fresh = [d for d in stranded if d not in self._unroutable]
        self._unroutable = set(stranded)
        if fresh:
            for destination in fresh:
                log.error(
                    "%s: no route to %s; %d message(s) stay queued until one appears",
                    self.context.me,
                    destination,
                    destinations[destination],
                )
            await self.context.audit(
                [
                    AuditEntry(
                        self.context.actor, "no_route", None, {"to": d, "queued": destinations[d]}
                    )
                    for d in fresh
                ]
            )
        return fresh

    async def review_roster(self) -> RosterValidity:
        """Raise the roster's end once per version and standing (in each run): an alert and
        an audit entry a week before (`roster_expiring`) and when it passes
        (`roster_expired`: the node runs on, degraded, with the newest roster it has,
        until the register keeper's next version reaches it)."""
        roster, now = self.context.roster, self.context.clock()
        validity = roster_validity(roster, now, ROSTER_WARNING_MS)
        told, self._roster_told = self._roster_told, (roster.version, validity)
        if validity is RosterValidity.VALID or told == self._roster_told:
            return validity
        until = rfc3339(roster.valid_until)
        if validity is RosterValidity.EXPIRED:
            kind = AlertKind.ROSTER_EXPIRED
            detail = (
                f"roster version {roster.version} expired at {until}: this node runs degraded"
                " with it until the register keeper's next version arrives"
            )
            log.error("%s: %s", self.context.me, detail)
        else:
            kind = AlertKind.ROSTER_EXPIRING
            detail = f"roster version {roster.version} expires at {until}: ask the register keeper"
            log.warning("%s: %s", self.context.me, detail)
        facts = {"version": roster.version, "valid_until": roster.valid_until}
        await self.context.audit([AuditEntry(self.context.actor, str(kind), None, facts)])
        self.context.alerts.raise_([node_alert(kind, node=self.context.me, detail=detail, now=now)])
        return validity
