"""What officers and auditors read: one message opened (and audited), its files, listings,
a case, the contact points and their links, open preservations, what is overdue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from network.core.attachments import join_parts
from network.core.bodies import AttachmentPart, IdentifierKind, parse_body
from network.core.deadlines import format_overdue
from network.core.envelope import open_from_self, read_plaintext, read_stored
from network.core.identifiers import match_keys
from network.core.lifecycle import Event, State
from network.core.records import DESK_ROLES, Json, MessageType, b64decode, parse_canonical
from network.node.context import NodeContext
from network.node.delivery import Delivery
from network.node.evidence import collect_package, opener_for, sign_package
from network.node.listing import open_line
from network.node.store import AuditEntry, MessageRow, UserRow

__all__ = ["Reading", "summary"]


class Reading:
    """One node's use cases for readers."""

    def __init__(self, context: NodeContext, delivery: Delivery) -> None:
        self.context = context
        self.delivery = delivery

    async def open_preservations(self) -> list[dict[str, Any]]:
        """Preservations with a date, asked for (`box` out) or granted (`box` in), soonest
        to lapse first."""
        return [summary(row) for row in await self.context.store.preserved_requests()]

    async def approvals(self) -> list[dict[str, Any]]:
        """Requests waiting for a second officer's approval (or sent at once, to approve
        after), oldest first, each with its listing line."""
        keyring = self.context.keys.keyring
        rows = await self.context.store.approvals()
        return [{**summary(r), **open_line(r.listing, r.id, keyring)} for r in rows]

    async def overdue(self) -> list[dict[str, Any]]:
        """Messages with a deadline passed and unmet, the most urgent first."""
        return [summary(row) for row in await self.context.store.overdue_messages(limit=500)]

    async def read_message(self, message_id: str, user: UserRow) -> dict[str, Any] | None:
        """One message for a reader: header, decrypted body, state, receipts, timeline.

        Opening is audited (who read which message when); an officer's first
        reading moves an inbound message to `opened`.
        """
        row = await self.context.store.message(message_id)
        if row is None:
            return None
        # Opened before the write lock is taken; shown only if the row the transaction
        # leaves still has its contents.
        opened = self._open(row) if row.deleted is None else None
        async with self.context.store.transaction(self.context.clock(), officer=True) as tx:
            current = await tx.message(row.id)
            assert current is not None
            # The first reading moves it; reading again is no change (and does not restart
            # the retention period, counted from its last change).
            if current.box == "in" and user.role in DESK_ROLES and current.state is State.RECEIVED:
                tx.transition(current, Event.OPEN)
            tx.audit([AuditEntry(user.name, "opened", row.id, {"role": user.role})])
            # The transaction keeps the row as it leaves it: no read after the commit.
            row = await tx.message(row.id) or current
        message_type: str | None = row.type
        body: Json = None
        header: Json = None
        # Else deleted under a retention rule, perhaps by a sweep since the first read: what
        # stays is shown.
        if row.deleted is None and opened is not None:
            message_type, body = opened
            stored = parse_canonical(row.envelope, limit=len(row.envelope), what="stored envelope")
            header = stored["header"]
        return {
            **summary(row),
            "type": str(message_type or ""),
            "header": header,
            "body": body,
            "receipts": [
                {
                    "direction": r.direction,
                    "signer": r.signer,
                    "outcome": r.outcome,
                    "reason": r.reason,
                    "time": r.time,
                    "receipt": parse_canonical(r.raw, limit=len(r.raw), what="receipt"),
                }
                for r in await self.context.store.receipts(row.id)
            ],
            "timeline": await self.context.store.audit_for(row.id),
            "thread": [summary(r) for r in await self.context.store.thread(row)],
            "attachments": await self._progress(row, body),
        }

    def _open(self, row: MessageRow) -> tuple[MessageType, Json]:
        """A stored message's type and body: a received envelope opened with our HPKE keys,
        a sent message's own copy with our storage keys."""
        keyring = self.context.keys.keyring
        if row.box == "in":
            message_type, body, _ = read_stored(row.envelope, keyring)
            return message_type, body
        assert row.self_sealed is not None
        return read_plaintext(open_from_self(row.self_sealed, row.id, keyring))

    async def _progress(self, row: MessageRow, body: Json) -> list[dict[str, Any]]:
        """The files a message names, each with how many of its parts are here (received) or
        signed for by the recipient (sent): counted from the index, no part opened."""
        named = body.get("attachments") if isinstance(body, dict) else None
        if not isinstance(named, list) or not named:
            return []
        counts = await self.context.store.part_counts(row.id)
        files = []
        for index, file in enumerate(named):
            held, signed = counts.get(index, (0, 0))
            arrived = held if row.box == "in" else signed
            files.append(
                {**file, "index": index, "arrived": arrived, "complete": arrived >= file["parts"]}
            )
        return files

    async def attachment(
        self, message_id: str, index: int, user: UserRow
    ) -> tuple[dict[str, Any], bytes] | None:
        """File `index` of a message sent or received here, joined from its parts and checked
        against the size and SHA-256 its signed body names; audited as a consultation
        (`attachment_opened`). None: no such message, or no such file. BodyError (`parts`,
        `size`, `sha256`) while parts are missing, or if they do not make the file."""
        row = await self.context.store.message(message_id)
        if row is None or row.box not in ("in", "out") or row.deleted is not None:
            return None
        _, body = self._open(row)
        named = body.get("attachments") if isinstance(body, dict) else None
        if not isinstance(named, list) or not 0 <= index < len(named):
            return None
        file: dict[str, Any] = named[index]
        parts = await self.context.store.parts(row.id, index)
        data = await asyncio.to_thread(self._join, row, index, file, parts)
        detail = {"role": user.role, "attachment": index, "name": file["name"]}
        detail["sha256"] = file["sha256"]
        await self.context.audit([AuditEntry(user.name, "attachment_opened", row.id, detail)])
        return file, data

    def _join(
        self, row: MessageRow, index: int, file: dict[str, Any], parts: Sequence[MessageRow]
    ) -> bytes:
        """The file from its parts (opened here, off the event loop): only parts of this file
        of this message, from its peer, count."""
        found: dict[int, bytes] = {}
        for part in parts:
            if part.peer != row.peer or part.box != row.box or part.deleted is not None:
                continue
            kind, body = self._open(part)
            typed = parse_body(kind, body)
            if isinstance(typed, AttachmentPart) and (typed.of, typed.attachment) == (
                row.id,
                index,
            ):
                found.setdefault(typed.part, b64decode(typed.data, field="data"))
        return join_parts(found, size=file["size"], sha256=file["sha256"], count=file["parts"])

    async def evidence(
        self, message_id: str, user: UserRow, *, body: bool
    ) -> dict[str, Any] | None:
        """The evidence package of a message sent or received here (with the opened bodies
        when `body`), signed by this node; its disclosure audited. None if no such message.
        """
        row = await self.context.store.message(message_id)
        if row is None or row.box not in ("in", "out") or self.context.keeper is None:
            return None
        keys = self.context.keys
        package = await asyncio.to_thread(
            collect_package,
            self.context.store.path,
            message_id,
            node_id=self.context.me,
            kid=keys.signing.kid,
            keeper=self.context.keeper,
            now=self.context.clock(),
            opener=opener_for(keys.keyring) if body else None,
        )
        signed = sign_package(package, keys.signing)  # here: the key may be in a token
        detail = {"role": user.role, "disclosed": body}
        await self.context.audit([AuditEntry(user.name, "evidence_exported", message_id, detail)])
        return signed

    async def search(
        self,
        user: UserRow,
        *,
        identifier: str | None = None,
        kind: IdentifierKind | None = None,
        case_ref: str | None = None,
        peer: str | None = None,
        message_type: str | None = None,
        box: str | None = None,
        state: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Messages sent or received here that match every criterion given: an identifier
        (by its keyed digest, normalised: network/core/identifiers.py), a case, a country,
        a type, a box, a state, a time span. Audited (`searched`): who searched for what,
        the identifier and the case by their keyed digests, not in clear."""
        storage = self.context.storage
        tags = [storage.tag(k) for k in match_keys(identifier, kind)] if identifier else []
        case = storage.tag(case_ref) if case_ref is not None else None
        rows: list[MessageRow] = []
        if not identifier or tags:  # else it cannot be one of that kind: nothing names it
            rows = await self.context.store.search(
                tags=tags,
                case=case,
                peer=peer,
                type=message_type,
                box=box,
                state=state,
                since=since,
                until=until,
                limit=limit,
            )
        criteria: dict[str, Any] = {
            "identifier": tags or (["(not an identifier of that kind)"] if identifier else None),
            "kind": kind,
            "case": case,
            "peer": peer,
            "type": message_type,
            "box": box,
            "state": state,
            "since": since,
            "until": until,
        }
        detail = {k: v for k, v in criteria.items() if v is not None}
        detail |= {"role": user.role, "found": len(rows)}
        await self.context.audit([AuditEntry(user.name, "searched", None, detail)])
        keyring = self.context.keys.keyring
        return [{**summary(r), **open_line(r.listing, r.id, keyring)} for r in rows]

    async def list_messages(
        self,
        *,
        box: str | None,
        state: str | None,
        priority: str | None,
        limit: int,
        case_ref: str | None = None,
    ) -> list[dict[str, Any]]:
        """A listing; with `case_ref`, the messages of that case (either side's reference).
        Requests carry their `case_ref` and `summary` line (network/node/listing.py)."""
        case = self.context.storage.tag(case_ref) if case_ref is not None else None
        rows = await self.context.store.messages(
            box=box, state=state, priority=priority, limit=limit, case=case
        )
        keyring = self.context.keys.keyring
        # Each request's listing line (network/node/listing.py): what the list reveals.
        return [{**summary(r), **open_line(r.listing, r.id, keyring)} for r in rows]

    async def peers(self) -> list[dict[str, Any]]:
        """Each contact point in the roster but us: linked or not, last seen, queued count."""
        stored = await self.context.store.peers()
        queued = await self.context.store.queued_counts()
        linked = self.delivery.linked
        result = []
        for node_id, entry in sorted(self.context.roster.entries.items()):
            if node_id == self.context.me:
                continue
            info = stored.get(node_id, {})
            result.append(
                {
                    "id": node_id,
                    "name": entry.card.name,
                    "status": str(entry.status),
                    # Whom to call when the link is down (from the card).
                    "phones": list(entry.card.phones),
                    "languages": list(entry.card.languages),
                    "linked": node_id in linked,
                    "linked_since": linked.get(node_id),
                    "last_seen": info.get("last_seen"),
                    "failures": info.get("failures", 0),
                    "last_error": info.get("last_error"),
                    "queued": queued.get(node_id, 0),
                }
            )
        return result


def summary(row: MessageRow) -> dict[str, Any]:
    """What a listing shows of a message (no body)."""
    return {
        "id": row.id,
        "box": row.box,
        "peer": row.peer,
        "from": row.peer if row.box == "in" else None,
        "to": row.peer if row.box == "out" else None,
        "type": row.type or "",  # '': relayed, its type unknown here
        "priority": row.priority,
        "state": str(row.state),
        "created": row.created,
        "expires": row.expires,
        "received": row.received,
        "updated": row.updated,
        "attempts": row.attempts,
        "composed_by": row.composed_by,
        "in_reply_to": row.in_reply_to,
        "acknowledged_by": row.acked_by,
        "overdue": [item for item in format_overdue(row.overdue).split(",") if item],
        "deadlines": {
            "receipt": row.receipt_due,
            "acknowledgement": row.ack_due,
            "response": row.response_due,
        },
        "preserved_until": row.preserved_until,
        # Kept until the decision on the MLA request, counted from then (sent, then received).
        "until_decision": row.until_decision,
        "assigned_to": row.assigned_to,  # who holds it at the desk
        # Four eyes: pending, approved, sent_back (None: not needed), and by whom.
        "approval": row.approval,
        "approved_by": row.approved_by,
        # The retention rule that deleted its contents, and when (None: kept).
        "deleted": (
            {"rule": row.deleted, "at": row.deleted_at} if row.deleted is not None else None
        ),
    }
