"""What duty officers and administrators do: compose and send, acknowledge, reply; users
and their tokens.

Each act is validated where it is composed (a BodyError names the field), sealed,
and committed with its audit entries before it returns; only then is the link
that should carry it woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from network.core.attachments import AttachmentFile, describe, split
from network.core.bodies import (
    REFERENCES,
    Acknowledgement,
    AttachmentPart,
    Body,
    FollowUp,
    MlaNotice,
    Response,
    check_response,
    follow_up_problem,
    parse_recipient,
    parse_request,
    reference_problem,
)
from network.core.crypto import HpkePublicKey
from network.core.deadlines import Box, Due, preservation_period_problem
from network.core.envelope import Envelope, Header, seal, seal_to_self
from network.core.errors import BodyError, BusyError, UnknownNodeError
from network.core.lifecycle import PRIORITY_RANK, Event, State
from network.core.records import DESK_ROLES, ROLES, MessageType, NodeId, Priority, b64encode
from network.node.context import NodeContext
from network.node.delivery import Delivery
from network.node.listing import seal_line
from network.node.scheduler import Candidate
from network.node.slices import Slices
from network.node.store import AuditEntry, MessageRow, Store, Tx, UserRow
from network.node.tracking import (
    ACTED,
    act_on,
    approved_deadlines,
    case_tag,
    deadlines_for,
    identifier_tags,
    mla_announced,
    refers_to,
)

__all__ = ["Officers", "hash_token", "issue_token", "revoke_token", "set_account"]


def hash_token(token: str) -> bytes:
    """Tokens are 256-bit random strings, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode()).digest()


async def issue_token(store: Store, name: str, role: str, *, actor: str, now: int) -> str:
    """Create or replace user `name` with a new token; only the token's hash is stored.

    Raises BodyError naming `role` or `name` if either is not acceptable.
    """
    if role not in ROLES:
        raise BodyError("role", f"must be one of: {', '.join(ROLES)}")
    if not name or len(name) > 100 or not name.isprintable():
        raise BodyError("name", "must be 1..100 printable characters")
    token = "cpn_" + secrets.token_urlsafe(32)
    async with store.transaction(now) as tx:
        tx.add_user(name, role, hash_token(token))
        tx.audit([AuditEntry(actor, "token_issued", detail={"user": name, "role": role})])
    return token


async def revoke_token(store: Store, name: str, *, actor: str, now: int) -> UserRow:
    """Remove user `name` and its token (the next request with it gets 401), audited.
    Raises BodyError naming `name` if there is no such user."""
    async with store.transaction(now) as tx:
        user = await tx.user(name)
        if user is None:
            raise BodyError("name", f"no user {name!r} (cpn user list shows who there is)")
        tx.remove_user(name)
        tx.audit([AuditEntry(actor, "token_revoked", detail={"user": name, "role": user.role})])
    return user


MAX_NOTE = 2000  # a handover note
PARTS_PER_STEP = 16  # attachment parts sealed between two turns of the event loop
PARTS_PER_COMMIT = 64  # attachment parts (about 9 MiB) committed in one transaction
# Routine and urgent submissions are sealed and stored in rounds (`Officers._in_round`):
# a round takes what waits, up to `ROUND_SIZE`, seals it back to back and stores each
# as its own use case, together, so that the whole way (one group commit, one frame, one
# batch at the receiver, its receipts) carries them as one batch. At most
# `ROUNDS_AT_ONCE` of each priority are under way, some sealed while others commit.
# What comes meanwhile waits, so a backlog makes rounds larger, not more. A flash
# submission goes at once. Bounded: at 90% load every request in flight was on the loop
# together and a group commit settled hundreds at once; one turn of the loop took tens
# of ms. 16 x 4 against 32 x 2, 8 x 8, 32 x 1 and 32 x 8: docs/PERFORMANCE.md.
ROUND_SIZE = 16
ROUNDS_AT_ONCE = 4
# Past this many routine or urgent submissions of a priority waiting for a round or a
# turn, the next is refused (BusyError: the API's 503 with Retry-After), before anything
# is sealed or stored: what waits is bounded, as everywhere input arrives. Unbounded, a
# sender offered more than it takes held thousands of requests, each answered seconds
# later, and every turn of its loop, a flash request's too, ran among them
# (docs/PERFORMANCE.md). A closed loop of 32 officers posting at once never reaches it.
WAITING_AT_MOST = 64
RETRY_AFTER_S = 1  # what a refused officer is told to wait
# A submission with files, or to several countries, is sealed in a turn of its own
# instead: at most this many of each priority at once (a routine one with large files
# holds its turn long: urgent never waits for it).
SUBMITTING_AT_ONCE = 8
MAX_RECIPIENTS = 50  # one request to several countries (a botnet case: ten, twenty)
# What answers or follows one Party's message goes to that Party alone.
_ONE_PARTY = frozenset({MessageType.ACKNOWLEDGEMENT, MessageType.RESPONSE, MessageType.FOLLOW_UP})


@dataclass(frozen=True, slots=True)
class _Draft:
    """A message checked and sealed, not yet committed."""

    user: str
    node: NodeId
    kind: MessageType
    typed: Body
    envelope: Envelope
    self_sealed: bytes
    answered: MessageRow | None
    parts: tuple[_Draft, ...] = ()  # its attachments' parts, sealed to the same recipient
    attachment: int | None = None  # a part: which file of its message it carries


# A submission waiting for its round: how to seal it, and where its stored row goes.
_Submission = tuple[Callable[[], Awaitable[_Draft]], "asyncio.Future[MessageRow]"]


async def set_account(
    store: Store,
    name: str,
    *,
    role: str | None = None,
    disabled: bool | None = None,
    actor: str,
    now: int,
) -> UserRow:
    """Change account `name`: its role, or disable (enable) its token; audited as
    role_changed, account_disabled or account_enabled, with what it was. Returns the
    account as it now is. Raises BodyError naming `name` or `role`."""
    if role is not None and role not in ROLES:
        raise BodyError("role", f"must be one of: {', '.join(ROLES)}")
    async with store.transaction(now) as tx:
        user = await tx.user(name)
        if user is None:
            raise BodyError("name", f"no user {name!r} (cpn user list shows who there is)")
        entries = []
        if role is not None and role != user.role:
            entries.append(
                AuditEntry(
                    actor, "role_changed", detail={"user": name, "role": role, "was": user.role}
                )
            )
        if disabled is not None and disabled != user.disabled:
            action = "account_disabled" if disabled else "account_enabled"
            entries.append(AuditEntry(actor, action, detail={"user": name, "role": user.role}))
        if not entries:
            raise BodyError("name", f"{name} is that already")
        tx.set_user(name, role=role, disabled=disabled)
        tx.audit(entries)
    return UserRow(
        name,
        role if role is not None else user.role,
        user.created,
        disabled if disabled is not None else user.disabled,
    )


def _refuse_past_bound(urgency: Priority, waiting: int) -> None:
    """BusyError when `waiting` submissions of `urgency` already wait (`WAITING_AT_MOST`)."""
    if waiting >= WAITING_AT_MOST:
        raise BusyError(
            f"this node has {waiting} {urgency} submissions waiting to be sealed, the most it"
            f" holds: nothing was stored; try again in {RETRY_AFTER_S} s",
            retry_after_s=RETRY_AFTER_S,
        )


def _outbound(tx: Tx, draft: _Draft, state: State, **more: Any) -> MessageRow:
    """A sealed message in the outbox, in `state`, with the columns `more` names."""
    header = draft.envelope.header
    return tx.insert_message(
        id=header.id,
        box=Box.OUT,
        peer=draft.node,
        type=draft.kind,
        priority=header.priority,
        priority_rank=PRIORITY_RANK[header.priority],
        state=state,
        created=header.created,
        expires=header.expires,
        envelope=draft.envelope.raw,
        digest=draft.envelope.digest,
        self_sealed=draft.self_sealed,
        composed_by=draft.user,
        **more,
    )


class Officers:
    """One node's use cases for its officers and administrators."""

    def __init__(self, context: NodeContext, delivery: Delivery) -> None:
        self.context = context
        self.delivery = delivery
        self._submitting = {
            Priority.URGENT: asyncio.Semaphore(SUBMITTING_AT_ONCE),
            Priority.ROUTINE: asyncio.Semaphore(SUBMITTING_AT_ONCE),
        }
        self._turns_waiting = dict.fromkeys(self._submitting, 0)
        # Per priority, the submissions waiting for a round, and how many rounds are
        # under way (`_in_round`).
        self._waiting: dict[Priority, deque[_Submission]] = {}
        self._rounds: dict[Priority, int] = {}
        self._round_tasks: set[asyncio.Task[None]] = set()  # asyncio holds tasks weakly

    async def add_user(self, name: str, role: str) -> str:
        """Create or replace a user; returns the token, shown once and stored hashed."""
        context = self.context
        return await issue_token(
            context.store, name, role, actor=context.actor, now=context.clock()
        )

    async def authenticate(self, token: str) -> UserRow | None:
        """The user holding `token`, or None."""
        return await self.context.store.user_by_token_hash(hash_token(token))

    async def submit(
        self,
        *,
        user: str,
        to: object,
        message_type: object,
        priority: object,
        body: object,
        ttl_ms: int | None = None,
        files: Sequence[AttachmentFile] = (),
    ) -> MessageRow:
        """Validate, seal and queue a message, with `files` attached; committed before this
        returns.

        Raises BodyError naming the field (`to`, `type`, `priority`, `body.<field>`).
        """
        if not files:
            self._refuse_when_full(priority)
        body = self._with_files(body, files)
        node, kind, urgency, typed = parse_request(to, message_type, priority, body)
        sealing = partial(self._sealed, user, node, kind, urgency, typed, ttl_ms, files)
        if urgency is not Priority.FLASH and not files:
            return await self._in_round(urgency, sealing)
        async with self._turn(urgency):
            return (await self._queue([await sealing()]))[0]

    def _refuse_when_full(self, priority: object) -> None:
        """BusyError at once when `priority` names a priority whose submissions waiting for a
        round are at the bound, before the body is checked: at 90% of its saturated rate a
        sender refused a third of the requests it was offered, and checking their bodies
        took a twentieth of its thread (docs/PERFORMANCE.md). A flash submission never
        waits for a round, so it is never refused here."""
        if isinstance(priority, str):
            # The keys are a StrEnum's members: the name given finds its own.
            waiting = self._waiting.get(priority)  # type: ignore[call-overload]
            if waiting is not None:
                _refuse_past_bound(Priority(priority), len(waiting))

    async def _in_round(
        self, urgency: Priority, sealing: Callable[[], Awaitable[_Draft]]
    ) -> MessageRow:
        """`sealing`'s message, sealed and stored in a round (`ROUND_SIZE`): its own use
        case, with its own audit entries and errors, committed before this returns.

        With no round under way there is nothing to gather it with: it goes at once, in
        this task, as a round of its own (a round's task cost a sequential sender, the
        simulation's countries, several passes of the loop a message). Past the bound of
        what waits, `submit` refused it already (`_refuse_when_full`)."""
        if not self._rounds.get(urgency):
            self._rounds[urgency] = 1
            try:
                return (await self._queue([await sealing()]))[0]
            finally:
                self._rounds[urgency] -= 1
                self._start_rounds(urgency)
        waiting = self._waiting.setdefault(urgency, deque())
        stored: asyncio.Future[MessageRow] = asyncio.get_running_loop().create_future()
        waiting.append((sealing, stored))
        self._start_rounds(urgency)
        try:
            return await stored
        except asyncio.CancelledError:  # its officer left: no longer counted as waiting
            with contextlib.suppress(ValueError):  # a round took it already
                waiting.remove((sealing, stored))
            raise

    def _start_rounds(self, urgency: Priority) -> None:
        """Start a round for what waits, if fewer than `ROUNDS_AT_ONCE` are under way. It
        takes its members when it first runs: all that came in the same pass of the loop."""
        waiting = self._waiting.get(urgency)
        if not waiting or self._rounds.get(urgency, 0) >= ROUNDS_AT_ONCE:
            return
        self._rounds[urgency] = self._rounds.get(urgency, 0) + 1
        task = asyncio.get_running_loop().create_task(self._round(urgency))
        self._round_tasks.add(task)
        task.add_done_callback(partial(self._round_done, urgency))

    def _round_done(self, urgency: Priority, task: asyncio.Task[None]) -> None:
        self._round_tasks.discard(task)
        self._rounds[urgency] -= 1
        if not task.cancelled():  # cancelled: the node stops
            self._start_rounds(urgency)

    async def _round(self, urgency: Priority) -> None:
        """Seal up to `ROUND_SIZE` waiting submissions back to back, letting what arrives
        meanwhile in between them (`Slices`), then store each in its own use case, all at
        once (the store commits them together). A submission whose officer stopped
        waiting before it was sealed is not sealed."""
        waiting = self._waiting[urgency]
        members = [waiting.popleft() for _ in range(min(ROUND_SIZE, len(waiting)))]
        try:
            sealed = []
            slices = Slices()
            for sealing, stored in members:
                if stored.done():
                    continue
                try:
                    sealed.append((await sealing(), stored))
                except Exception as exc:
                    if not stored.done():
                        stored.set_exception(exc)
                await slices.next()
            queued = await asyncio.gather(
                *(self._queue([draft]) for draft, _ in sealed), return_exceptions=True
            )
            for (_, stored), rows in zip(sealed, queued, strict=True):
                if stored.done():
                    continue
                if isinstance(rows, BaseException):
                    stored.set_exception(rows)
                else:
                    stored.set_result(rows[0])
        finally:
            for _, stored in members:  # the round itself was cancelled: the node stops
                stored.cancel()

    @contextlib.asynccontextmanager
    async def _turn(self, urgency: Priority) -> AsyncIterator[None]:
        """A turn to seal and store: at most `SUBMITTING_AT_ONCE` of each priority at
        once, but a flash one goes at once. BusyError past `WAITING_AT_MOST` waiting."""
        turns = self._submitting.get(urgency)
        if turns is None:
            yield
            return
        if turns.locked():
            _refuse_past_bound(urgency, self._turns_waiting[urgency])
        self._turns_waiting[urgency] += 1
        try:
            await turns.acquire()
        finally:
            self._turns_waiting[urgency] -= 1
        try:
            yield
        finally:
            turns.release()

    def _with_files(self, body: object, files: Sequence[AttachmentFile]) -> object:
        """`body` with its `attachments` named from `files` (size, SHA-256, parts): what the
        inner signature covers. BodyError naming `body.attachments[i].<field>`."""
        if not isinstance(body, dict):
            return body
        if "attachments" in body:
            raise BodyError(
                "body.attachments",
                "named by the node from the files attached (cpn send --attach, the console's"
                " Attach), not written in the body",
            )
        if not files:
            return body
        try:
            described = describe(files, self.context.attachments)
        except BodyError as exc:
            raise BodyError(f"body.{exc.field}", exc.problem) from None
        return {**body, "attachments": described}

    async def submit_to_many(
        self,
        *,
        user: str,
        to: Sequence[object],
        message_type: object,
        priority: object,
        body: object,
        ttl_ms: int | None = None,
        files: Sequence[AttachmentFile] = (),
    ) -> list[MessageRow]:
        """One request composed once, sent to each of `to` as a message of its own (its own
        id, receipts, state and deadlines), all sharing the body and so its case reference
        and files: every recipient checked before any is sealed, all committed in one
        transaction.

        Raises BodyError naming the field (`to[i]` for a recipient).
        """
        if not 2 <= len(to) <= MAX_RECIPIENTS:
            raise BodyError("to", f"must name 2 to {MAX_RECIPIENTS} contact points")
        body = self._with_files(body, files)

        def named(i: int, exc: BodyError) -> BodyError:
            return BodyError(f"to[{i}]" if exc.field == "to" else exc.field, exc.problem)

        try:  # the body, checked and typed once for every recipient
            _, kind, urgency, typed = parse_request(to[0], message_type, priority, body)
            if kind in _ONE_PARTY:
                raise BodyError("type", f"a {kind} goes to the one Party it answers or follows")
            if any(getattr(typed, ref.field, None) for ref in REFERENCES.get(kind, ())):
                raise BodyError("to", "a request that names another message goes to its Party")
        except BodyError as exc:
            raise named(0, exc) from None
        drafts = []
        async with self._turn(urgency):
            for i, recipient in enumerate(to):
                if recipient in to[:i]:
                    raise BodyError(f"to[{i}]", f"{recipient} is named twice")
                try:
                    node = parse_recipient(recipient)
                    drafts.append(
                        await self._sealed(user, node, kind, urgency, typed, ttl_ms, files)
                    )
                except BodyError as exc:
                    raise named(i, exc) from None
            return await self._queue(drafts)

    async def _sealed(
        self,
        user: str,
        node: NodeId,
        kind: MessageType,
        urgency: Priority,
        typed: Body,
        ttl_ms: int | None,
        files: Sequence[AttachmentFile] = (),
    ) -> _Draft:
        """A message checked (recipient, references, what it answers) and sealed to `node`,
        with the parts of `files` (its body names them) sealed to it too."""
        if node == self.context.me:
            raise BodyError("to", f"cannot send to this node ({self.context.me}) itself")
        try:
            card = self.context.roster.active_card(node)
        except UnknownNodeError as exc:
            raise BodyError("to", str(exc)) from None
        await self._check_references(kind, typed, node)
        answered = await self._answered(typed, node)
        try:
            envelope = seal(
                sender=self.context.me,
                recipient=node,
                message_type=kind,
                body=typed,
                priority=urgency,
                now=self.context.clock(),
                random_bytes=self.context.random_bytes(10),
                signing_key=self.context.keys.signing,
                recipient_key=card.hpke_key,
                ttl_ms=ttl_ms,
            )
        except BodyError as exc:
            raise BodyError(f"body.{exc.field}" if exc.field else "body", exc.problem) from None
        assert envelope.plaintext is not None
        self_sealed = seal_to_self(envelope.plaintext, envelope.header.id, self.context.storage)
        parts = await self._parts(user, node, card.hpke_key, envelope.header, files)
        return _Draft(user, node, kind, typed, envelope, self_sealed, answered, parts)

    async def _parts(
        self,
        user: str,
        node: NodeId,
        key: HpkePublicKey,
        header: Header,
        files: Sequence[AttachmentFile],
    ) -> tuple[_Draft, ...]:
        """Each file's parts as messages of their own, sealed to `node`: routine (flash and
        urgent traffic goes first), expiring with their message. The loop serves links and
        readers between every few parts (the signing key may be in a hardware module, so the
        sealing stays on the loop, in steps)."""
        drafts = []
        now = self.context.clock()
        for index, file in enumerate(files):
            for number, data in enumerate(split(file.data)):
                if number % PARTS_PER_STEP == PARTS_PER_STEP - 1:
                    await asyncio.sleep(0)
                typed = AttachmentPart(
                    of=header.id, attachment=index, part=number, data=b64encode(data)
                )
                envelope = seal(
                    sender=self.context.me,
                    recipient=node,
                    message_type=MessageType.ATTACHMENT_PART,
                    body=typed,
                    priority=Priority.ROUTINE,
                    now=now,
                    random_bytes=self.context.random_bytes(10),
                    signing_key=self.context.keys.signing,
                    recipient_key=key,
                    ttl_ms=max(1, header.expires - now),
                )
                assert envelope.plaintext is not None
                copy = seal_to_self(envelope.plaintext, envelope.header.id, self.context.storage)
                drafts.append(
                    _Draft(
                        user,
                        node,
                        MessageType.ATTACHMENT_PART,
                        typed,
                        envelope,
                        copy,
                        None,
                        attachment=index,
                    )
                )
        return tuple(drafts)

    async def _queue(self, drafts: Sequence[_Draft]) -> list[MessageRow]:
        """Commit sealed messages to the outbox with their audit entries, in one transaction,
        then wake the links that carry them (a flash message's link takes its look at once,
        in this task: `Delivery.flash_out`).

        Their files' parts go first, `PARTS_PER_COMMIT` to a transaction, so that no
        commit holds the store for long (a flash message arriving meanwhile is stored
        between two); the messages then go together, last: once one is queued, all its
        parts are. A crash between leaves parts of no message, which its recipient keeps
        and never joins."""
        approval = self.context.approval
        held = {
            d.envelope.header.id
            for d in drafts
            if approval.holds(d.kind, d.envelope.header.priority)
        }
        parts = [(draft.envelope.header.id, part) for draft in drafts for part in draft.parts]
        for start in range(0, len(parts), PARTS_PER_COMMIT):
            async with self.context.store.transaction(self.context.clock()) as tx:
                for of, part in parts[start : start + PARTS_PER_COMMIT]:
                    self._queue_part(tx, part, of, held=of in held)
        rows: list[MessageRow] = []
        published: list[AuditEntry] = []
        flash = any(d.envelope.header.priority is Priority.FLASH for d in drafts)
        async with self.context.store.transaction(
            self.context.clock(), officer=True, urgent=flash
        ) as tx:
            for draft in drafts:
                header, node, typed, user = (
                    draft.envelope.header,
                    draft.node,
                    draft.typed,
                    draft.user,
                )
                waits = header.id in held  # four eyes: no deadline runs until it goes
                due = (
                    {"due": Due(None, None, None), "alert_at": None}
                    if waits
                    else deadlines_for(self.context, Box.OUT, header, draft.kind)
                )
                rows.append(
                    _outbound(
                        tx,
                        draft,
                        State.AWAITING_APPROVAL if waits else State.QUEUED,
                        case_ref=case_tag(self.context, typed),
                        in_reply_to=refers_to(typed),
                        **due,
                        listing=seal_line(typed, header.id, self.context.storage),
                        approval="pending" if approval.wants(draft.kind) else None,
                    )
                )
                tx.index_identifiers(header.id, identifier_tags(self.context.storage, typed))
                acted = []
                if draft.answered is not None:
                    acted = await act_on(
                        self.context, tx, draft.answered, typed, actor=user, reply=header.id
                    )
                if isinstance(typed, MlaNotice):
                    acted += await mla_announced(
                        self.context, tx, typed, box="out", peer=node, actor=user, notice=header.id
                    )
                detail: dict[str, Any] = {
                    "to": node,
                    "type": str(draft.kind),
                    "priority": str(header.priority),
                }
                if len(drafts) > 1:
                    detail["with"] = [d.envelope.header.id for d in drafts if d is not draft]
                if draft.parts:
                    detail["parts"] = len(draft.parts)
                composed = AuditEntry(user, "composed", header.id, detail)
                digest = {
                    "digest": b64encode(draft.envelope.digest),
                    "suite": str(header.suite),
                }
                if waits:
                    step = AuditEntry(user, "awaiting_approval", header.id, {"to": node})
                else:
                    step = AuditEntry(self.context.actor, "queued", header.id, {"to": node})
                    if approval.wants(draft.kind):  # a flash request: approved after it went
                        detail["approval"] = "after_sending"
                tx.audit(
                    [
                        *acted,
                        composed,
                        AuditEntry(self.context.actor, "sealed", header.id, digest),
                        step,
                    ]
                )
                published += [*acted, composed]
        self.context.publish(published)
        flash_hops = self._wake([d for d in drafts if d.envelope.header.id not in held], rows)
        await self.delivery.flash_out(flash_hops)
        return rows

    def _wake(self, drafts: Sequence[_Draft], rows: Sequence[MessageRow]) -> set[NodeId]:
        """Tell the links that carry them that these messages (`rows`, as committed) and
        their parts are queued; the links of the flash ones."""
        committed = {row.id: row for row in rows}
        flash_hops: set[NodeId] = set()
        for draft in drafts:
            for sent in (draft, *draft.parts):
                header = sent.envelope.header
                hop = self.delivery.queued(
                    Candidate(header.id, sent.node, PRIORITY_RANK[header.priority]),
                    committed.get(header.id),
                )
                if hop is not None and header.priority is Priority.FLASH:
                    flash_hops.add(hop)
        if any(d.envelope.header.priority is not Priority.ROUTINE for d in drafts):
            self.context.checkpoints.urgent_message()
        return flash_hops

    def _queue_part(self, tx: Tx, part: _Draft, of: str, *, held: bool = False) -> None:
        """An attachment's part in the outbox, behind its message: no deadline of its own (its
        message has them), one `sealed` entry naming its digest."""
        header = part.envelope.header
        _outbound(
            tx,
            part,
            State.AWAITING_APPROVAL if held else State.QUEUED,
            in_reply_to=of,
            attachment=part.attachment,
        )
        detail = {
            "part_of": of,
            "attachment": part.attachment,
            "digest": b64encode(part.envelope.digest),
        }
        tx.audit([AuditEntry(self.context.actor, "sealed", header.id, detail)])

    async def _check_references(self, kind: MessageType, typed: Body, to: NodeId) -> None:
        """The messages a request names (`extends`, `follows`) exist here and are of the
        kind, box and peer its type allows (`bodies.REFERENCES`); BodyError naming it."""
        for reference in REFERENCES.get(kind, ()):
            target = getattr(typed, reference.field, None)
            if target is None:
                continue
            row = await self.context.store.message(target)
            found = None if row is None else (row.type, str(row.box), str(row.peer))
            problem = reference_problem(reference, found, to)
            if problem is not None:
                raise BodyError(f"body.{reference.field}", problem)

    async def _answered(self, typed: Body, to: NodeId) -> MessageRow | None:
        """The request an acknowledgement or response answers (received), or a follow-up
        speaks of (sent: `_check_references` checks it is); BodyError if none."""
        if isinstance(typed, FollowUp):
            request = await self.context.store.message(typed.follows)
            if request is None or request.box != "out":
                return None  # _check_references names the field
            problem = follow_up_problem(typed.action, request.type)
            if problem is None and request.state is State.WITHDRAWN:
                problem = "that request is withdrawn already"
            if problem is not None:
                raise BodyError("body.action", problem)
            return request
        if not isinstance(typed, Acknowledgement | Response):
            return None
        original = await self.context.store.message(typed.in_reply_to)
        if original is None or original.box != "in" or original.peer != to:
            raise BodyError("body.in_reply_to", f"is not a message received from {to}")
        if isinstance(typed, Acknowledgement) and original.state in (*ACTED, State.WITHDRAWN):
            raise BodyError("body.in_reply_to", f"that message is already {original.state}")
        if isinstance(typed, Response) and original.type is not None:
            try:
                check_response(original.type, typed)
            except BodyError as exc:
                raise BodyError(f"body.{exc.field}", exc.problem) from None
            if typed.preserved_until is not None:
                problem = preservation_period_problem(
                    original.type, typed.preserved_until, self.context.clock()
                )
                if problem is not None:
                    raise BodyError("body.preserved_until", problem)
        return original

    async def acknowledge(
        self, message_id: str, user: str, note: object = None
    ) -> MessageRow | None:
        """An officer takes a received request on: an `acknowledgement` goes to its sender.

        None if there is no such received message; BodyError if it cannot be acknowledged
        (naming the field as `submit` does: `body.in_reply_to`, `body.note`).
        """
        row = await self.context.store.message(message_id)
        if row is None or row.box != "in":
            return None
        body: dict[str, Any] = {"in_reply_to": message_id, "officer": user}
        if note is not None:
            body["note"] = note
        return await self.submit(
            user=user,
            to=row.peer,
            message_type="acknowledgement",
            priority=row.priority,
            body=body,
        )

    async def reply(
        self,
        message_id: str,
        user: str,
        fields: dict[str, Any],
        files: Sequence[AttachmentFile] = (),
    ) -> MessageRow | None:
        """An officer answers a received request: a `response` goes to its sender.

        None if there is no such received message; BodyError naming the field as `submit`
        does (`body.status`) if the fields do not make a response.
        """
        row = await self.context.store.message(message_id)
        if row is None or row.box != "in":
            return None
        if "in_reply_to" in fields:
            raise BodyError("in_reply_to", "is the message replied to; leave it out")
        return await self.submit(
            user=user,
            to=row.peer,
            message_type="response",
            priority=row.priority,
            body={"in_reply_to": message_id, **fields},
            files=files,
        )

    async def follow_up(
        self,
        message_id: str,
        user: str,
        fields: dict[str, Any],
        files: Sequence[AttachmentFile] = (),
    ) -> MessageRow | None:
        """An officer follows up a request we sent: information asked for, proceed despite a
        risk notice, withdraw, release (a `follow_up` goes to its recipient, at its priority).

        None if there is no such sent message; BodyError naming the field as `submit` does.
        """
        row = await self.context.store.message(message_id)
        if row is None or row.box != "out":
            return None
        if "follows" in fields:
            raise BodyError("follows", "is the request followed up; leave it out")
        if row.state in (State.AWAITING_APPROVAL, State.SENT_BACK):
            raise BodyError("follows", f"it was never sent ({row.state}): nothing to follow up")
        return await self.submit(
            user=user,
            to=row.peer,
            message_type="follow_up",
            priority=row.priority,
            body={"follows": message_id, **fields},
            files=files,
        )

    async def approve(
        self, message_id: str, user: UserRow, note: object = None
    ) -> MessageRow | None:
        """Four eyes: a second officer (role `approver`, not its composer) approves a request
        held for it: it goes now, and its deadlines count from now (one sent at once, a
        flash, is approved after). Audited as `approved`. None if there is no such sent
        message; BodyError naming `approval` (nothing to approve), `approver` or `note`."""
        if note is not None and (not isinstance(note, str) or not 0 < len(note) <= MAX_NOTE):
            raise BodyError("note", f"must be text of 1 to {MAX_NOTE} characters")
        parts: list[tuple[str, bytes]] = []
        async with self.context.store.transaction(self.context.clock(), officer=True) as tx:
            row = await tx.message(message_id)
            if row is None or row.box != "out":
                return None
            self._check_approver(row, user)
            detail: dict[str, Any] = {"composed_by": row.composed_by}
            if note is not None:
                detail["note"] = note
            entries = [AuditEntry(user.name, "approved", row.id, detail)]
            if row.state is State.AWAITING_APPROVAL:
                if row.expires <= tx.now:
                    raise BodyError(
                        "approval",
                        "it expired while it waited: compose it again (its expiry is signed)",
                    )
                tx.transition(row, Event.APPROVE)
                tx.parts_follow(row.id, State.QUEUED)
                parts = await tx.parts_kept(row.id)
                current = await tx.message(row.id) or row
                tx.schedule(current, *approved_deadlines(self.context, current, tx.now))
                entries.append(AuditEntry(self.context.actor, "queued", row.id, {"to": row.peer}))
            else:
                detail["after_sending"] = True
            tx.approval(await tx.message(row.id) or row, "approved", user.name)
            tx.audit(entries)
            row = await tx.message(row.id) or row
        self.context.publish(entries)
        if row.state is State.QUEUED:
            self.delivery.queued(Candidate(row.id, row.peer, PRIORITY_RANK[row.priority]))
            for part, _ in parts:
                self.delivery.queued(Candidate(part, row.peer, PRIORITY_RANK[Priority.ROUTINE]))
            if row.priority is not Priority.ROUTINE:
                self.context.checkpoints.urgent_message()
        return row

    async def send_back(self, message_id: str, user: UserRow, reason: object) -> MessageRow | None:
        """Four eyes: a second officer sends a held request back to its composer, with the
        reason: it never leaves (the officer composes it again). Audited as `sent_back`.
        None if there is no such sent message; BodyError naming `reason`, `approval` or
        `approver`."""
        if not isinstance(reason, str) or not 0 < len(reason.strip()) <= MAX_NOTE:
            raise BodyError("reason", f"required: why it goes back, 1 to {MAX_NOTE} characters")
        async with self.context.store.transaction(self.context.clock(), officer=True) as tx:
            row = await tx.message(message_id)
            if row is None or row.box != "out":
                return None
            self._check_approver(row, user)
            if row.state is not State.AWAITING_APPROVAL:
                raise BodyError(
                    "approval",
                    "it went at once (a flash request): approve it, or follow it up to withdraw it",
                )
            tx.transition(row, Event.SEND_BACK)
            tx.parts_follow(row.id, State.SENT_BACK)
            tx.approval(await tx.message(row.id) or row, "sent_back", user.name)
            detail = {"composed_by": row.composed_by, "reason": reason.strip()}
            entry = AuditEntry(user.name, "sent_back", row.id, detail)
            tx.audit([entry])
            row = await tx.message(row.id) or row
        self.context.publish([entry])
        return row

    @staticmethod
    def _check_approver(row: MessageRow, user: UserRow) -> None:
        """Four eyes need two: an approver, who did not compose it; something to approve."""
        if row.approval != "pending":
            done = {"approved": "approved already", "sent_back": "sent back already"}
            raise BodyError("approval", done.get(row.approval or "", "needs no approval"))
        if user.role != "approver":
            raise BodyError("approver", "only an officer with the approver role approves")
        if row.composed_by == user.name:
            raise BodyError(
                "approver", "the officer who composed it cannot approve it: four eyes need two"
            )

    async def assign(
        self, message_id: str, user: str, *, to: object = None, note: object = None
    ) -> MessageRow | None:
        """A received request taken by `user` (`to` None), or assigned to officer `to`, with
        a handover `note` at a shift change; audited with who held it before. None if there
        is no such received message; BodyError naming `to` or `note`."""
        if to is not None and not isinstance(to, str):
            raise BodyError("to", "must be an officer's user name")
        if note is not None and (not isinstance(note, str) or not 0 < len(note) <= MAX_NOTE):
            raise BodyError("note", f"must be text of 1 to {MAX_NOTE} characters")
        officer = to if to is not None else user
        async with self.context.store.transaction(self.context.clock(), officer=True) as tx:
            row = await tx.message(message_id)
            if row is None or row.box != "in":
                return None
            holder = await tx.user(officer)
            if holder is None or holder.role not in DESK_ROLES:
                raise BodyError("to", f"{officer!r} is not an officer of this node")
            if row.assigned_to == officer:
                raise BodyError("to", f"{officer} holds it already")
            detail: dict[str, Any] = {"to": officer, "was": row.assigned_to}
            if note is not None:
                detail["note"] = note
            tx.assign(row.id, officer)
            entry = AuditEntry(user, "assigned", row.id, detail)
            tx.audit([entry])
        row = row._replace(assigned_to=officer, updated=self.context.clock())
        self.context.publish([entry])
        return row
