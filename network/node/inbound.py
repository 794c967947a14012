"""What comes in over the links: envelopes, receipts, rosters; and the receipts we issue.

Each envelope is checked (form, signer, outer signature, hop limit), looked up
by id, then (if new) checked for its times, opened when it is for us, and
committed once (dedup under the store's lock) before its receipt is made: a
receipt leaves only after the commit of what it acknowledges.

Deduplication is on (origin, id) and the stored digest: the same bytes again get
the receipt they got the first time (a late resend included: dedup comes before
the time checks); other bytes, or another sender, under an id we hold are an
`id_conflict`, refused, audited and raised, never counted as delivery (a relay
that sent its own envelope under a real message's id first is named by the
signature on what it sent).

A receipt moves the message it answers; an end-to-end receipt for another node
is passed on only for a message we relayed. Refusals are audited, never raised
to the link.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from network.core.attachments import MAX_ATTACHMENTS, PART_BYTES, limits_problem
from network.core.bodies import (
    REFERENCES,
    Acknowledgement,
    AttachmentPart,
    FollowUp,
    MlaNotice,
    Response,
    check_priority,
    check_response,
    follow_up_problem,
    reference_problem,
)
from network.core.deadlines import Box
from network.core.envelope import (
    MAX_ENVELOPE_BYTES,
    Envelope,
    Header,
    OpenedMessage,
    Receipt,
    ReceiptScope,
    check_receipt_matches,
    check_times,
    make_receipt,
    open_envelope,
    verify_receipt,
    verify_signed,
)
from network.core.errors import (
    BodyError,
    CpnError,
    DigestMismatchError,
    HopLimitError,
    LoopError,
    MalformedError,
    NoSuchRecipientError,
    OversizeError,
    PeerError,
    RosterError,
    UnknownReceiptError,
)
from network.core.lifecycle import PRIORITY_RANK, Event, State
from network.core.protocol import Returned
from network.core.records import (
    Json,
    MessageId,
    NodeId,
    Outcome,
    Priority,
    b64encode,
    is_message_id,
    is_node_id,
    parse_canonical,
)
from network.core.roster import Roster, load_roster
from network.node.alerts import AlertKind, alert_record
from network.node.context import NodeContext
from network.node.delivery import Delivery, candidate
from network.node.listing import seal_line
from network.node.scheduler import Candidate
from network.node.slices import Slices
from network.node.store import AuditEntry, MessageRow, ReceiptRow, Tx
from network.node.tracking import (
    act_on,
    case_tag,
    deadlines_for,
    identifier_tags,
    mla_announced,
    refers_to,
)

__all__ = ["Inbound"]

log = logging.getLogger("cpn.service")  # the name operators filter on, kept

# The reason a receiver gives when it holds another envelope under the id it was sent.
ID_CONFLICT = "id_conflict"


@dataclass
class _Inbound:
    """One envelope from a link, as the checks leave it."""

    raw: bytes
    path: tuple[NodeId, ...]
    link: NodeId  # the peer it came from: the previous hop
    envelope: Envelope | None = None
    opened: OpenedMessage | None = None  # for us, checked and opened
    relay: bool = False  # for another node: to store and forward
    requeue: MessageRow | None = None  # a forwarded copy its sender asks for again
    alert: dict[str, Json] | None = None  # raised once the batch is committed
    stored: MessageRow | None = None  # its row, when we held it already
    receipt: Receipt | None = None
    audit: list[AuditEntry] = field(default_factory=list)


class Inbound:
    """One node's use cases for what its links bring."""

    def __init__(self, context: NodeContext, delivery: Delivery) -> None:
        self.context = context
        self.delivery = delivery
        self._last_contact: dict[str, int] = {}
        # Per message, the batch of receipts for it still being taken: a later receipt for
        # the same message waits for it. Batches go beside each other (a flash one first),
        # and one that found its sent marks committed could overtake one still waking:
        # a peer's acceptance then its rejection were taken the other way round.
        self._receipt_turns: dict[str, asyncio.Future[None]] = {}

    async def accept_envelopes(
        self, peer: str, frames: Sequence[tuple[tuple[NodeId, ...], bytes]]
    ) -> list[bytes]:
        """Verify and commit envelopes from a linked peer; return the receipts to send back.

        For us: opened, checked, committed, then a signed end-to-end receipt
        (`accepted`, `duplicate`, or `rejected` with the reason). For another
        node: the outer signature and times checked (the body stays sealed: we
        hold no key for it), committed to our outbox, then a signed hop receipt.
        Duplicates are decided under the store's lock, so a message is stored
        once however many links bring it. Refusals are audited.
        """
        now = self.context.clock()
        link = NodeId(peer)
        items = [_Inbound(raw, path, link) for path, raw in frames]
        slices = Slices()
        for item in items:
            self._verify_outer(item, now)
            await slices.next()
        flash = any(it.envelope and it.envelope.header.priority is Priority.FLASH for it in items)
        # Ids stored already are duplicates for sure: no need to open them again.
        stored = await self.context.store.known_ids(
            [it.envelope.header.id for it in items if it.envelope and it.receipt is None]
        )
        for item in items:
            if item.envelope is not None and item.receipt is None:
                self._open_inbound(item, now, stored)
                await slices.next()
        async with self.context.store.transaction(now, urgent=flash) as tx:
            fresh = [it.envelope.header.id for it in items if it.envelope and it.receipt is None]
            known = await tx.known_ids(fresh)  # their rows are read too
            issued: list[Receipt] = []  # in this batch, not yet readable from the store
            held: dict[str, tuple[NodeId | None, bytes]] = {}  # stored in this batch
            for item in items:
                if item.receipt is None and item.envelope is not None:
                    await self._take_inbound(tx, item, now, known, issued, held)
                if item.receipt is not None:
                    issued.append(item.receipt)
                    tx.insert_receipt(_receipt_row(item.receipt, "issued"))
                tx.audit(item.audit)
            self._contact(tx, peer)
        self.context.publish(entry for item in items for entry in item.audit)
        self.context.alerts.raise_(item.alert for item in items if item.alert is not None)
        for item in items:
            if item.envelope is None or not (item.relay or item.requeue is not None):
                continue
            if item.stored is not None:  # relayed before: its stored path is the one to keep
                self.delivery.queued(candidate(item.stored))
            else:
                header = item.envelope.header
                been = frozenset([*item.path, self.context.me, header.sender])
                rank = PRIORITY_RANK[header.priority]
                self.delivery.queued(Candidate(header.id, header.recipient, rank, been))
        return [item.receipt.raw for item in items if item.receipt is not None]

    def _verify_outer(self, item: _Inbound, now: int) -> None:
        """The checks anyone can make but the times: form, signer, outer signature, hop limit.
        (The times are checked only for ids we do not hold: `_open_inbound`.)"""
        try:
            envelope = verify_signed(item.raw, roster=self.context.roster)
            item.envelope = envelope
            header = envelope.header
            if header.sender == self.context.me or self.context.me in item.path:
                raise LoopError(
                    f"message {header.id} came back to {self.context.me}, where it has been"
                )
            if header.recipient != self.context.me:
                if len(item.path) + 1 >= header.hop_limit:
                    raise HopLimitError(
                        f"message {header.id} has come through {len(item.path)} relays;"
                        f" its hop limit is {header.hop_limit}"
                    )
                try:
                    self.context.roster.active_card(header.recipient)
                except CpnError as exc:
                    raise NoSuchRecipientError(
                        f"cannot relay to {header.recipient}: {exc}"
                    ) from None
                item.relay = True
        except PeerError as exc:
            self._refuse(item, exc, now)

    def _open_inbound(self, item: _Inbound, now: int, stored: set[str]) -> None:
        """Check the times of what we do not hold yet, and open what of it is for us (held
        ones get their original receipt, or are an id conflict: `_take_inbound`)."""
        assert item.envelope is not None
        if item.envelope.header.id in stored:
            return
        try:
            check_times(item.envelope.header, now=now, skew_ms=self.context.skew_ms)
            if item.relay:
                return
            item.opened = open_envelope(
                item.envelope,
                me=self.context.me,
                hpke_key=self.context.keys.keyring,
                roster=self.context.roster,
            )
        except PeerError as exc:
            self._refuse(item, exc, now)

    def _refuse(self, item: _Inbound, exc: PeerError, now: int) -> None:
        """Audit a refused envelope and answer `rejected` when its header can be read."""
        item.opened = None
        item.relay = False
        readable = item.envelope.header if item.envelope else _readable_header(item.raw)
        item.audit += self.context.refusal(
            item.link,
            AuditEntry(
                f"node:{item.link}",
                "rejected",
                readable.id if readable else None,
                {
                    "reason": exc.reason,
                    "error": str(exc)[:500],
                    "size": len(item.raw),
                    "digest": b64encode(hashlib.sha256(item.raw).digest()),
                },
            ),
        )
        log.warning("refused an envelope from %s: %s", item.link, exc)
        if readable is not None:
            item.receipt = self._receipt(readable, item, Outcome.REJECTED, exc.reason, now)

    async def _take_inbound(
        self,
        tx: Tx,
        item: _Inbound,
        now: int,
        known: set[str],
        issued: Sequence[Receipt],
        held: dict[str, tuple[NodeId | None, bytes]],
    ) -> None:
        """Store a verified envelope once; the same bytes again get their original receipt
        (or `duplicate`), other bytes under an id we hold are an id conflict. Under the
        store's lock (`held`: what this batch stored, not yet readable)."""
        assert item.envelope is not None
        envelope = item.envelope
        header = envelope.header
        link_actor = f"node:{item.link}"
        detail: dict[str, Any] = {"from": header.sender, "path": list(item.path)}
        if header.id in known:
            row = await tx.message(header.id)
            ours = (row.origin, row.digest) if row is not None else held.get(header.id)
            if ours is not None and ours != (header.sender, envelope.digest):
                self._conflict(item, ours, now)
                return
            # The same bytes again from the same peer get the receipt they got the first time
            # (AS4: never a new one); other bytes under a known id, or another link, `duplicate`.
            item.receipt = await self._original_receipt(tx, header, item, now, issued)
            detail["original_receipt"] = item.receipt is not None
            if item.receipt is None:
                item.receipt = self._receipt(header, item, Outcome.DUPLICATE, None, now)
            item.stored = row
            forwarded = (
                row is not None
                and row.box == "relay"
                and row.state is State.FORWARDED
                and row.deleted is None  # a copy deleted under retention is not sent again
            )
            if item.relay and row is not None and forwarded:
                # Its sender asks again: the end-to-end receipt was lost; pass it on again.
                item.requeue = row
                tx.transition(row, Event.REQUEUE)
                tx.requeue_now(row)
                detail["again"] = True
            item.audit.append(AuditEntry(link_actor, "duplicate", header.id, detail))
            return
        known.add(header.id)
        held[header.id] = (header.sender, envelope.digest)
        detail.update(priority=str(header.priority), digest=b64encode(envelope.digest))
        common = _columns(item, received=now)
        if item.relay:
            tx.insert_message(
                **common,
                box=Box.RELAY,
                peer=header.recipient,
                type=None,  # sealed: a relay cannot know
                state=State.QUEUED,
                path=(*item.path, self.context.me),
            )
            detail["to"] = header.recipient
            item.audit.append(AuditEntry(link_actor, "relay_accepted", header.id, detail))
        else:
            problem = await self._unlawful_answer(tx, item)
            if problem is not None:
                known.discard(header.id)
                del held[header.id]
                self._refuse(item, problem, now)
                return
            await self._store_for_us(tx, item, common, "received", detail)
        item.receipt = self._receipt(header, item, Outcome.ACCEPTED, None, now)

    async def _unlawful_answer(self, tx: Tx, item: _Inbound) -> PeerError | None:
        """What a well-formed message may not say: an emergency sent `routine`; a response
        to one of our requests that is not one of its lawful answers (a `preserved` to a
        `locate`); a reference to a message held here of the wrong kind, or exchanged with
        another Party (a withdrawal of what a third State asked of us); the release of a
        request that preserved nothing. Refused, so that no clock starts or stops on it."""
        assert item.opened is not None
        header = item.opened.envelope.header
        try:
            check_priority(item.opened.message_type, header.priority)
        except BodyError as exc:
            return MalformedError(f"header.{exc.field}: {exc.problem}")
        typed = item.opened.body
        for reference in REFERENCES.get(item.opened.message_type, ()):
            target = getattr(typed, reference.field, None)
            if target is None:
                continue
            row = await tx.message(target)
            found = None if row is None else (row.type, str(row.box), str(row.peer))
            problem = reference_problem(reference, found, header.sender, received=True)
            if problem is not None:
                return MalformedError(f"plain.body.{reference.field}: {problem}")
            if isinstance(typed, FollowUp) and row is not None:
                problem = follow_up_problem(typed.action, row.type)
                if problem is not None:
                    return MalformedError(f"plain.body.action: {problem}")
        sizes = [a.size for a in getattr(typed, "attachments", None) or ()]
        problem = limits_problem(sizes, self.context.attachments) if sizes else None
        if problem is not None:
            return OversizeError(f"plain.body.{problem} this node takes")
        if isinstance(typed, AttachmentPart):
            # A peer cannot fill our disk with parts: no more than the largest message takes.
            held = await tx.part_count(typed.of)
            most = MAX_ATTACHMENTS + self.context.attachments.max_message // PART_BYTES
            if held >= most:
                return OversizeError(f"plain.body.of: {held} parts of {typed.of} held already")
        if not isinstance(typed, Response):
            return None
        original = await tx.message(typed.in_reply_to)
        if original is None or original.box != "out" or original.type is None:
            return None
        try:
            check_response(original.type, typed)
        except BodyError as exc:
            return MalformedError(f"plain.body.{exc.field}: {exc.problem}")
        return None

    async def _store_for_us(
        self, tx: Tx, item: _Inbound, common: dict[str, Any], action: str, detail: dict[str, Any]
    ) -> None:
        """Keep an opened envelope for us in the inbox, with its deadlines, and move what it
        answers (`action`: `received`, or `recovered` after a restore)."""
        assert item.envelope is not None
        assert item.opened is not None
        header = item.envelope.header
        link_actor = f"node:{item.link}"
        typed = item.opened.body
        tx.insert_message(
            **common,
            box=Box.IN,
            peer=header.sender,
            type=item.opened.message_type,
            state=State.RECEIVED,
            path=item.path,
            case_ref=case_tag(self.context, typed),
            in_reply_to=refers_to(typed),
            **deadlines_for(self.context, Box.IN, header, item.opened.message_type),
            listing=seal_line(typed, header.id, self.context.storage),
            attachment=typed.attachment if isinstance(typed, AttachmentPart) else None,
        )
        tx.index_identifiers(header.id, identifier_tags(self.context.storage, typed))
        detail["type"] = str(item.opened.message_type)
        if isinstance(typed, AttachmentPart):
            detail["part_of"] = typed.of
        item.audit.append(AuditEntry(link_actor, action, header.id, detail))
        if isinstance(typed, Acknowledgement | Response | FollowUp):
            # What it answers is one of our requests; what it follows, one sent to us.
            target, box = (
                (typed.follows, "in") if isinstance(typed, FollowUp) else (typed.in_reply_to, "out")
            )
            original = await tx.message(target)
            if original is not None and original.box == box and original.peer == header.sender:
                item.audit += await act_on(
                    self.context, tx, original, typed, actor=link_actor, reply=header.id
                )
        if isinstance(typed, MlaNotice):
            item.audit += await mla_announced(
                self.context,
                tx,
                typed,
                box="in",
                peer=header.sender,
                actor=link_actor,
                notice=header.id,
            )
        if header.priority is not Priority.ROUTINE:
            self.context.checkpoints.urgent_message()

    async def accept_returned(self, peer: str, items: Sequence[Returned]) -> int:
        """What a peer gave back after our restore: envelopes to us, each with the receipt
        we had signed for it (our proof we took it). Each is checked (its signatures, that it
        is for us, that the receipt is ours, accepting exactly these bytes), opened and kept
        as it was first received (its receipt's time, that receipt as the one issued);
        one we hold is passed over. No new receipt: the sender holds the original. Returns
        how many were new; refusals are audited."""
        now = self.context.clock()
        link = NodeId(peer)
        taken: list[tuple[_Inbound, Receipt]] = []
        refused: list[AuditEntry] = []
        for returned in items:
            item = _Inbound(returned.envelope, (), link)
            try:
                item.envelope = envelope = verify_signed(item.raw, roster=self.context.roster)
                header = envelope.header
                receipt = verify_receipt(
                    returned.receipt,
                    roster=self.context.roster,
                    now=now,
                    skew_ms=self.context.skew_ms,
                )
                if header.recipient != self.context.me or receipt.sender != self.context.me:
                    raise UnknownReceiptError(
                        f"given back {header.id} to {header.recipient} with a receipt by"
                        f" {receipt.sender}: not ours"
                    )
                check_receipt_matches(
                    receipt,
                    message_id=header.id,
                    sender=header.sender,
                    recipient=self.context.me,
                    digest=envelope.digest,
                )
                if (
                    receipt.outcome is not Outcome.ACCEPTED
                    or receipt.scope is not ReceiptScope.END_TO_END
                ):
                    raise UnknownReceiptError(
                        f"given back {header.id} with a receipt that did not accept it"
                    )
                item.opened = open_envelope(
                    envelope,
                    me=self.context.me,
                    hpke_key=self.context.keys.keyring,
                    roster=self.context.roster,
                )
            except PeerError as exc:
                refused += self.context.refusal(
                    peer,
                    AuditEntry(
                        f"node:{peer}",
                        "returned_refused",
                        item.envelope.header.id if item.envelope else None,
                        {"reason": exc.reason, "error": str(exc)[:500]},
                    ),
                )
                log.warning("refused an envelope %s gave back: %s", peer, exc)
                continue
            taken.append((item, receipt))
        fresh = 0
        async with self.context.store.transaction(now) as tx:
            known = await tx.known_ids(
                [item.envelope.header.id for item, _ in taken if item.envelope]
            )
            for item, receipt in taken:
                assert item.envelope is not None
                header = item.envelope.header
                if header.id in known:
                    continue  # the backup held it, or another peer gave it back first
                known.add(header.id)
                fresh += 1
                common = _columns(item, received=receipt.received)
                detail: dict[str, Any] = {
                    "from": header.sender,
                    "given_back_by": peer,
                    "receipted": receipt.received,
                    "priority": str(header.priority),
                    "digest": b64encode(item.envelope.digest),
                }
                await self._store_for_us(tx, item, common, "recovered", detail)
                tx.insert_receipt(_receipt_row(receipt, "issued"))
                tx.audit(item.audit)
            tx.audit(refused)
        self.context.publish(entry for item, _ in taken for entry in item.audit)
        return fresh

    def _conflict(self, item: _Inbound, ours: tuple[NodeId | None, bytes], now: int) -> None:
        """Other bytes, or another sender, under an id we hold: refused (`id_conflict`),
        audited and raised; the message we hold stays as it is, and nothing is delivered."""
        assert item.envelope is not None
        header, digest = item.envelope.header, item.envelope.digest
        held_from = ours[0] or self.context.me  # no origin: a message of our own
        item.opened, item.relay = None, False
        item.audit.append(
            AuditEntry(
                f"node:{item.link}",
                "id_conflict",
                header.id,
                {
                    "from": header.sender,
                    "digest": b64encode(digest),
                    "held_from": held_from,
                    "held_digest": b64encode(ours[1]),
                    "path": list(item.path),
                },
            )
        )
        log.error(
            "%s: id conflict on %s: an envelope from %s (via %s) under the id of one from %s",
            self.context.me,
            header.id,
            header.sender,
            item.link,
            held_from,
        )
        item.receipt = self._receipt(header, item, Outcome.REJECTED, ID_CONFLICT, now)
        item.alert = alert_record(
            AlertKind.ID_CONFLICT,
            node=self.context.me,
            message_id=header.id,
            box="in",
            priority=header.priority,
            peer=header.sender,
            detail=(
                f"an envelope from {header.sender} (via {item.link}) under the id of one"
                f" from {held_from} we hold: refused, the one held kept"
            ),
            now=now,
        )

    async def _original_receipt(
        self, tx: Tx, header: Header, item: _Inbound, now: int, issued: Sequence[Receipt]
    ) -> Receipt | None:
        """The receipt we issued when these exact bytes first came over this link, if any
        (`issued`: those of the batch at hand, which the store does not show yet)."""
        assert item.envelope is not None
        addressee = header.sender if header.recipient == self.context.me else item.link
        candidates = [r for r in issued if r.message_id == header.id]
        for raw in await tx.issued_receipts(header.id):
            try:
                candidates.append(
                    verify_receipt(
                        raw, roster=self.context.roster, now=now, skew_ms=self.context.skew_ms
                    )
                )
            except CpnError:
                continue  # signed with a key rotated out since: answer afresh
        for receipt in candidates:
            accepted = receipt.outcome is Outcome.ACCEPTED
            if (
                accepted
                and receipt.recipient == addressee
                and receipt.digest == item.envelope.digest
            ):
                return receipt
        return None

    def _receipt(
        self,
        header: Header | _Addressed,
        item: _Inbound,
        outcome: Outcome,
        reason: str | None,
        now: int,
    ) -> Receipt:
        """End-to-end to the message's sender when it is for us; else a hop receipt."""
        for_us = header.recipient == self.context.me
        return make_receipt(
            message_id=header.id,
            message_sender=header.sender if for_us else item.link,
            envelope_raw=item.raw,
            me=self.context.me,
            signing_key=self.context.keys.signing,
            now=now,
            random_bytes=self.context.random_bytes(10),
            outcome=outcome,
            reason=reason,
            scope=ReceiptScope.END_TO_END if for_us else ReceiptScope.HOP,
            path=item.path if for_us else (),
            checkpoint=self.context.checkpoints.latest if for_us else None,
        )

    async def accept_receipts(
        self,
        peer: str,
        raws: Sequence[bytes],
        flash: Callable[[str], bool] = lambda _: False,
        sent_marked: Callable[[Sequence[str]], Awaitable[Sequence[str]]] | None = None,
    ) -> list[str]:
        """Verify receipts and move their messages; returns the ids no longer in flight.

        A hop receipt from the hop we sent to: it took the message on. An
        end-to-end receipt for us: the message is delivered. An end-to-end
        receipt for another node, for a message we relayed: our copy is
        forwarded, and the receipt goes on towards its recipient. `flash`: whether
        an id is a flash message (its receipt's transaction goes first); `sent_marked`:
        the link's sent marks of these ids, so that `sent` is in the log before the
        receipt: it waits for those being written (committed, or in the store's batch for
        a flash one), and returns those still waiting to be, which the receipts'
        transaction writes itself (one transaction for both, not two).
        """
        now = self.context.clock()
        checked: list[Receipt | PeerError] = []
        for raw in raws:
            try:
                checked.append(
                    verify_receipt(
                        raw, roster=self.context.roster, now=now, skew_ms=self.context.skew_ms
                    )
                )
            except PeerError as exc:
                checked.append(exc)
        # Before any wait: batches take their turns in the order they came.
        ids = {r.message_id for r in checked if isinstance(r, Receipt)}
        before = {self._receipt_turns[i] for i in ids if i in self._receipt_turns}
        turn = asyncio.get_running_loop().create_future()
        self._receipt_turns.update(dict.fromkeys(ids, turn))
        try:
            if before:
                await asyncio.wait(before)
            # A flash message's receipt goes first, in a transaction of its own: it waits
            # for its own sent mark only, not for those of the urgent messages beside it.
            first: list[Receipt | PeerError] = []
            rest: list[Receipt | PeerError] = []
            for result in checked:
                is_flash = isinstance(result, Receipt) and flash(result.message_id)
                (first if is_flash else rest).append(result)
            settled: list[str] = []
            for group, urgent in ((first, True), (rest, False)):
                if group:
                    settled += await self._take_receipts(peer, group, now, urgent, sent_marked)
            return settled
        finally:
            turn.set_result(None)
            for message_id in ids:
                if self._receipt_turns.get(message_id) is turn:
                    del self._receipt_turns[message_id]

    async def _take_receipts(
        self,
        peer: str,
        checked: list[Receipt | PeerError],
        now: int,
        urgent: bool,
        sent_marked: Callable[[Sequence[str]], Awaitable[Sequence[str]]] | None,
    ) -> list[str]:
        """`accept_receipts` for receipts checked, in one transaction (`urgent`: it goes
        first, and commits at once)."""
        settled: list[str] = []
        link_actor = f"node:{peer}"
        ids = [r.message_id for r in checked if isinstance(r, Receipt)]
        to_mark = [] if sent_marked is None else await sent_marked(ids)
        async with self.context.store.transaction(now, urgent=urgent) as tx:
            await tx.prefetch(ids, whole=False)
            entries = await self.delivery.write_marks(tx, peer, to_mark)
            for result in checked:
                try:
                    if isinstance(result, PeerError):
                        raise result
                    receipt = result
                    row = await tx.message(receipt.message_id, whole=False)
                    passing = (
                        receipt.scope is ReceiptScope.END_TO_END
                        and receipt.recipient != self.context.me
                    )
                    if passing and (row is None or row.box != "relay"):
                        # Only for a message we relayed (and so checked on its way, its
                        # sender in the roster): anyone can sign receipts for ids that
                        # exist nowhere, and we would hold and pass on each of them.
                        raise UnknownReceiptError(
                            f"receipt for {receipt.message_id} to {receipt.recipient}:"
                            " not a message we relayed"
                        )
                    if row is None or row.box == "in":
                        raise UnknownReceiptError(f"no sent message {receipt.message_id}")
                    if row.digest != receipt.digest:
                        raise DigestMismatchError(
                            f"receipt for {row.id} is for other bytes than those we sent"
                        )
                    if receipt.scope is ReceiptScope.HOP:
                        if receipt.recipient != self.context.me or receipt.sender != row.via:
                            raise DigestMismatchError(
                                f"hop receipt from {receipt.sender} to {receipt.recipient};"
                                f" we sent {row.id} to {row.via}"
                            )
                    else:  # end to end: ours (origin ''), or one we relayed
                        check_receipt_matches(
                            receipt,
                            message_id=row.id,
                            sender=row.origin or self.context.me,
                            recipient=row.peer,
                            digest=row.digest,
                        )
                except PeerError as exc:
                    detail = {"reason": exc.reason, "error": str(exc)[:500]}
                    entries += self.context.refusal(
                        peer, AuditEntry(link_actor, "receipt_rejected", None, detail)
                    )
                    log.warning("refused a receipt from %s: %s", peer, exc)
                    continue
                tx.insert_receipt(_receipt_row(receipt, "received"))
                tx.urgent |= row.priority is Priority.FLASH  # its sender waits: commit at once
                settled.append(row.id)
                made = await self._settle(tx, row, receipt, link_actor)
                if row.attachment is not None:  # a part: not news for the console
                    made = [
                        replace(e, detail={**(e.detail or {}), "part_of": row.in_reply_to})
                        for e in made
                    ]
                entries.extend(made)
            tx.audit(entries)
            self._contact(tx, peer)
        self.context.publish(entries)
        return settled

    async def _settle(
        self, tx: Tx, row: MessageRow, receipt: Receipt, link_actor: str
    ) -> list[AuditEntry]:
        detail: dict[str, Any] = {"outcome": str(receipt.outcome), "from": receipt.sender}
        if receipt.reason:
            detail["reason"] = receipt.reason
        if receipt.scope is ReceiptScope.HOP:
            if receipt.outcome is Outcome.REJECTED:
                # That hop will not take it (a loop, the hop limit): another route, at once.
                self.delivery.hop_refused(row.id, receipt.sender)
                tx.retry_now([row.id])
                return [AuditEntry(link_actor, "hop_refused", row.id, detail)]
            tx.hop_acked(row)
            tx.transition(row, Event.HOP_RECEIPT)  # a move in every state (PEER_EVENTS)
            return [AuditEntry(link_actor, "hop_receipt", row.id, detail)]
        detail["path"] = list(receipt.path)
        entries = [AuditEntry(link_actor, "receipt_received", row.id, detail)]
        event = Event.REFUSED if receipt.outcome is Outcome.REJECTED else Event.RECEIPT
        state = tx.transition(row, event)  # a move in every state: no-ops are audited below
        if receipt.reason == ID_CONFLICT and row.box == "out":
            entries.append(self._conflict_reported(row, receipt))
        if row.box == "relay":
            # Back along its path (... the node we had it from, then us), its origin (the
            # receipt's recipient, checked above) last.
            back = (*reversed(row.path[:-1]), receipt.recipient)
            if self.delivery.pass_on(receipt, back):
                detail = {"to": row.origin, "via": back[0]}
                entries.append(AuditEntry(self.context.actor, "receipt_passed_on", row.id, detail))
        elif state is not row.state or state is State.REJECTED:
            entries.append(AuditEntry(self.context.actor, str(state), row.id, {}))
        elif event is Event.REFUSED:  # a valid accepting receipt, or an officer's act, stands
            detail = {"state": str(state), "reason": receipt.reason, "from": receipt.sender}
            entries.append(AuditEntry(self.context.actor, "refusal_ignored", row.id, detail))
        return entries

    def _conflict_reported(self, row: MessageRow, receipt: Receipt) -> AuditEntry:
        """The recipient holds another envelope under our message's id: raised, since a relay
        on the way may have sent its own first (the recipient's audit log names it)."""
        now = self.context.clock()
        log.error("%s: %s refused %s as an id conflict", self.context.me, receipt.sender, row.id)
        self.context.alerts.raise_(
            [
                alert_record(
                    AlertKind.ID_CONFLICT,
                    node=self.context.me,
                    message_id=row.id,
                    box="out",
                    priority=row.priority,
                    peer=row.peer,
                    detail=(
                        f"{receipt.sender} holds another envelope under this message's id and"
                        f" refused ours: not delivered (path {', '.join(receipt.path) or 'direct'})"
                    ),
                    now=now,
                )
            ]
        )
        return AuditEntry(self.context.actor, "id_conflict", row.id, {"from": receipt.sender})

    # -- the roster ------------------------------------------------------------------

    async def accept_roster(self, raw: bytes, source: str) -> Roster | None:
        """Adopt a roster newer than ours, signed by the pinned keeper; None if not adopted.

        An older roster, or a version we hold with other content, or one the
        keeper did not sign, is refused and audited; the one we hold is kept.
        """
        held = self.context.roster
        try:
            if self.context.keeper is None:
                raise RosterError("this node has no pinned register keeper key")
            roster = load_roster(
                raw, keeper=self.context.keeper, now=self.context.clock(), held=held
            )
        except RosterError as exc:
            log.warning("refused a roster from %s: %s", source, exc)
            detail = {"reason": exc.reason, "error": str(exc)[:500], "held": held.version}
            actor = f"node:{source}" if is_node_id(source) else source
            await self.context.audit(
                self.context.refusal(source, AuditEntry(actor, "roster_refused", None, detail))
            )
            return None
        if roster.version == held.version:
            return None  # the one we hold
        revoked = sorted(
            node
            for node, entry in held.entries.items()
            if entry.active and (node not in roster.entries or not roster.entries[node].active)
        )
        async with self.context.store.transaction(self.context.clock()) as tx:
            tx.keep_roster(roster.version, raw)
            detail = {"from": held.version, "to": roster.version, "source": source}
            tx.audit(
                [
                    AuditEntry(
                        self.context.actor, "roster_changed", None, {**detail, "revoked": revoked}
                    )
                ]
            )
        self.context.rosters.adopt(roster)
        self.delivery.forget(revoked)
        self.delivery.wake()
        log.info("%s: roster version %d adopted (from %s)", self.context.me, roster.version, source)
        return roster

    def _contact(self, tx: Tx, peer: str) -> None:
        """Record contact from a peer, at most every few seconds (it is a write per batch)."""
        now = self.context.clock()
        if now - self._last_contact.get(peer, 0) >= 5_000:
            self._last_contact[peer] = now
            tx.peer_contact(peer)


def _columns(item: _Inbound, *, received: int) -> dict[str, Any]:
    """The columns of a stored message that come from its envelope, received at `received`
    (now, or the time of the receipt we had signed for one given back after a restore)."""
    assert item.envelope is not None
    header = item.envelope.header
    return {
        "id": header.id,
        "origin": header.sender,
        "priority": str(header.priority),
        "priority_rank": PRIORITY_RANK[header.priority],
        "created": header.created,
        "expires": header.expires,
        "received": received,
        "envelope": item.raw,
        "digest": item.envelope.digest,
    }


def _receipt_row(receipt: Receipt, direction: str) -> ReceiptRow:
    return ReceiptRow(
        id=receipt.id,
        message_id=receipt.message_id,
        direction=direction,
        signer=receipt.sender,
        scope=str(receipt.scope),
        outcome=str(receipt.outcome),
        reason=receipt.reason,
        time=receipt.received,
        raw=receipt.raw,
    )


@dataclass(frozen=True, slots=True)
class _Addressed:
    """What a rejected receipt needs of a header we cannot take: its id and its two ends."""

    id: MessageId
    sender: NodeId
    recipient: NodeId


def _readable_header(raw: bytes) -> Header | _Addressed | None:
    """The header of a refused envelope, if it can be read at all (for a rejected receipt).

    A header we cannot take (another protocol version, a field out of range) is still
    answered when its id and its two ends have their form: the sender learns why
    (`unsupported_version`, ...) instead of resending until its message expires."""
    try:
        value = parse_canonical(raw, limit=MAX_ENVELOPE_BYTES, what="envelope")
    except CpnError:
        return None
    header = value.get("header") if isinstance(value, dict) else None
    try:
        return Header.from_json(header)
    except CpnError:
        pass
    if not isinstance(header, dict):
        return None
    message_id, sender, recipient = header.get("id"), header.get("from"), header.get("to")
    if is_message_id(message_id) and is_node_id(sender) and is_node_id(recipient):
        return _Addressed(MessageId(str(message_id)), NodeId(str(sender)), NodeId(str(recipient)))
    return None
