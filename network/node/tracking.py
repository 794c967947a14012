"""What a message does to deadlines and to the request it answers, in the transaction that
stores it: shared by the officer's use cases and the inbound ones.

Each function takes the node's context and an open transaction; none commits.
"""

from __future__ import annotations

from typing import Any

from network.core.bodies import (
    INTERIM_ANSWERS,
    Acknowledgement,
    Body,
    FollowUp,
    FollowUpAction,
    MlaNotice,
    Preservation,
    Response,
)
from network.core.crypto import StorageKey
from network.core.deadlines import (
    DAY,
    Box,
    Due,
    Tracked,
    due_times,
    expects_reply,
    next_alert,
    preservation_period_problem,
    preserved_until_ms,
    reschedule,
)
from network.core.envelope import Header
from network.core.identifiers import match_keys
from network.core.lifecycle import TABLES, Event, State
from network.core.records import MessageType, Priority
from network.node.context import NodeContext
from network.node.store import AuditEntry, MessageRow, Tx

__all__ = [
    "ACTED",
    "act_on",
    "case_tag",
    "deadlines_for",
    "identifier_tags",
    "mla_announced",
    "refers_to",
    "track",
    "tracked",
]

ACTED = (State.ACKNOWLEDGED, State.ANSWERED)


def refers_to(typed: Body) -> str | None:
    """The message this one answers, extends or follows (threads a case)."""
    for name in ("in_reply_to", "extends", "follows", "of"):
        value = getattr(typed, name, None)
        if isinstance(value, str):
            return value
    return None


def tracked(row: MessageRow) -> Tracked:
    """A stored message as the deadline rules see it."""
    return Tracked(
        box=Box.OUT if row.box == Box.OUT else Box.IN,
        state=row.state,
        priority=Priority(row.priority),
        receipt_due=row.receipt_due,
        ack_due=row.ack_due,
        response_due=row.response_due,
        preserved_until=row.preserved_until,
        overdue=row.overdue,
        alert_at=row.alert_at,
    )


def case_tag(context: NodeContext, typed: Body) -> str | None:
    """The case a message belongs to, as a keyed digest of its `case_ref`."""
    case_ref = getattr(typed, "case_ref", None)
    return context.storage.tag(case_ref) if isinstance(case_ref, str) else None


def identifier_tags(storage: StorageKey, typed: Body) -> list[str]:
    """Keyed digests of the identifiers a preservation names, normalised as they are matched
    (network/core/identifiers.py): what a search for one finds it by."""
    if not isinstance(typed, Preservation):
        return []
    return [
        storage.tag(key)
        for identifier in typed.data.identifiers
        for key in match_keys(identifier.value, identifier.kind)
    ]


def deadlines_for(
    context: NodeContext, box: Box, header: Header, message_type: MessageType
) -> dict[str, Any]:
    """A new message's deadlines, and when the deadline watch first looks at it (an
    attachment's part has none: its message has them)."""
    if message_type is MessageType.ATTACHMENT_PART:
        return {"due": Due(None, None, None), "alert_at": None}
    due = due_times(
        context.deadlines,
        header.priority,
        header.created,
        box,
        reply=expects_reply(message_type),
    )
    state = State.QUEUED if box == "out" else State.RECEIVED
    tracking = Tracked(box, state, header.priority, *due)
    return {
        "due": due,
        "alert_at": next_alert(tracking, context.deadlines, context.clock(), False),
    }


def approved_deadlines(context: NodeContext, row: MessageRow, since: int) -> tuple[Due, int | None]:
    """A request approved (four eyes) at `since`: its deadlines count from then, and when
    the deadline watch first looks at it."""
    priority = Priority(row.priority)
    due = due_times(
        context.deadlines,
        priority,
        since,
        Box.OUT,
        reply=row.type is not None and expects_reply(row.type),
    )
    tracking = Tracked(Box.OUT, State.QUEUED, priority, *due)
    return due, next_alert(tracking, context.deadlines, context.clock(), False)


def track(context: NodeContext, tx: Tx, row: MessageRow) -> None:
    """After a state change: the overdue flags still standing, and the next look."""
    decision = reschedule(tracked(row), context.deadlines, context.clock())
    tx.alerts(row.id, decision.overdue, decision.alert_at)


async def act_on(
    context: NodeContext, tx: Tx, original: MessageRow, typed: Body, *, actor: str, reply: str
) -> list[AuditEntry]:
    """An acknowledgement, a response or a follow-up moves the request it speaks of, on
    either side (`reply`: its id)."""
    current = await tx.message(original.id) or original
    if isinstance(typed, FollowUp):
        return await _followed_up(context, tx, current, typed, actor=actor, reply=reply)
    detail: dict[str, Any] = {"reply": reply}
    preserved = current.preserved_until
    moves = TABLES[current.box].get(current.state, {})
    if isinstance(typed, Acknowledgement):
        if moves.get(Event.ACKNOWLEDGE, current.state) is current.state:
            return []  # acknowledged or answered already, or expired unread: no step back
        tx.acted(current, Event.ACKNOWLEDGE, acked_by=typed.officer)
        detail["officer"] = typed.officer
        action = "acknowledged"
    else:
        assert isinstance(typed, Response)
        # An interim answer takes the request on; only a final one answers it.
        event = Event.ACKNOWLEDGE if typed.status in INTERIM_ANSWERS else Event.ANSWER
        if moves.get(event, current.state) is not current.state:
            tx.acted(current, event)
        detail["status"] = str(typed.status)
        if typed.refusal_ground is not None:  # counted in the yearly statistics
            detail["refusal_ground"] = str(typed.refusal_ground)
        action = "replied" if current.box == "in" else "answered"
        if typed.expected_by is not None:
            # Handed on (35(2)(b)): the final answer is due by the end of the day given.
            detail["expected_by"] = typed.expected_by
            tx.response_due(current.id, preserved_until_ms(typed.expected_by) + DAY)
        if typed.preserved_until is not None or typed.mla_received_on is not None:
            # The date belongs to the first request: an extension or an MLA notice
            # answered moves it there (and only there, so that one warning goes out).
            # Both sides keep it: the requester's clock, and ours when we hold the data.
            # Until the MLA decision (29(7)) there is no date, and nothing to warn of.
            until, decision = None, None
            if typed.preserved_until is not None:
                detail["preserved_until"] = typed.preserved_until
                until = preserved_until_ms(typed.preserved_until)
                # A peer's date under the 60 days of 29(7), or past, is kept (it is what the
                # data's holder says) and recorded for the requesting officers to take up.
                request_type = current.type
                if current.box == "out" and request_type is not None:
                    short = preservation_period_problem(
                        request_type, typed.preserved_until, context.clock()
                    )
                    if short is not None:
                        detail["period_problem"] = short
            if typed.mla_received_on is not None:
                detail["until_mla_decision"] = True
                detail["mla_received_on"] = typed.mla_received_on
                decision = preserved_until_ms(typed.mla_received_on)
            first = await tx.message(current.in_reply_to or current.id)
            if first is not None and first.box == current.box:
                tx.preserved(first.id, until, decision=decision)
                if first.id != current.id:
                    track(context, tx, first._replace(preserved_until=until))
                else:
                    preserved = until
    row = await tx.message(current.id) or current
    track(context, tx, row._replace(preserved_until=preserved))
    return [AuditEntry(actor, action, current.id, detail)]


async def mla_announced(
    context: NodeContext, tx: Tx, typed: MlaNotice, *, box: str, peer: str, actor: str, notice: str
) -> list[AuditEntry]:
    """An MLA notice, sent or received: the preservation it follows is kept until the
    decision on the MLA request (Budapest 29(7)), on both sides, with no date to warn of,
    counted provisionally from the day the request was sent; the requested Party's answer
    to the notice says from when it received it, or gives a date again. The notice's own
    response deadline stands guard meanwhile."""
    first = await tx.message(typed.follows)
    if first is None or first.box != box or first.peer != peer:
        return []
    if first.type is not MessageType.PRESERVATION or first.state is State.WITHDRAWN:
        return []
    since = preserved_until_ms(typed.mla_date)
    tx.preserved(first.id, None, decision=since)
    track(context, tx, first._replace(preserved_until=None, until_decision=since))
    detail: dict[str, Any] = {"notice": notice, "mla_date": typed.mla_date}
    if first.preserved_until is not None:
        detail["preserved_until_was"] = first.preserved_until
    return [AuditEntry(actor, "until_mla_decision", first.id, detail)]


_FOLLOW_UP_ACTIONS: dict[FollowUpAction, str] = {
    FollowUpAction.INFORMATION: "information_given",
    FollowUpAction.PROCEED: "proceed_asked",
    FollowUpAction.WITHDRAW: "withdrawn",
    FollowUpAction.RELEASE: "released",
}


async def _followed_up(
    context: NodeContext, tx: Tx, current: MessageRow, typed: FollowUp, *, actor: str, reply: str
) -> list[AuditEntry]:
    """The requester's follow-up, on either side. Information and `proceed` leave the request
    where it is, its deadlines running; a withdrawal or a release ends it (`withdrawn`: no
    deadline, no preservation clock, here and on the first request of its chain)."""
    detail: dict[str, Any] = {"follow_up": reply, "action": str(typed.action)}
    if typed.action in (FollowUpAction.WITHDRAW, FollowUpAction.RELEASE):
        detail["was"] = str(current.state)
        if current.state is not State.WITHDRAWN:
            tx.transition(current, Event.WITHDRAW)
        first = await tx.message(current.in_reply_to or current.id)
        chain = {current.id: current}
        if first is not None and first.box == current.box:
            chain[first.id] = first
        for row in chain.values():
            fresh = await tx.message(row.id) or row
            if fresh.preserved_until is not None or fresh.until_decision is not None:
                detail["preserved_until_was"] = fresh.preserved_until
                if fresh.until_decision is not None:
                    detail["until_decision_was"] = fresh.until_decision
                tx.preserved(fresh.id, None)
            track(context, tx, fresh._replace(preserved_until=None))
    return [AuditEntry(actor, _FOLLOW_UP_ACTIONS[typed.action], current.id, detail)]
