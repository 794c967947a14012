"""The use cases: submit, accept envelopes and receipts, read, list, expire, users.

The only module that turns decisions into writes. Each use case takes what
the edges parsed, calls the pure core (envelope, lifecycle), and commits the
change with its audit entries in one transaction. Receipts leave only after
the commit of what they acknowledge.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from network.core.bodies import Acknowledgement, Body, Response, parse_request
from network.core.crypto import VerifyKey
from network.core.deadlines import (
    DEFAULT_DEADLINES,
    Box,
    Deadlines,
    Tracked,
    describe,
    due_times,
    expects_reply,
    format_overdue,
    next_alert,
    preserved_until_ms,
    reschedule,
    review,
)
from network.core.envelope import (
    DEFAULT_SKEW_MS,
    MAX_ENVELOPE_BYTES,
    Envelope,
    Header,
    OpenedMessage,
    Receipt,
    ReceiptScope,
    check_receipt_matches,
    make_receipt,
    open_envelope,
    open_from_self,
    read_plaintext,
    read_stored,
    seal,
    seal_to_self,
    verify_envelope,
    verify_receipt,
)
from network.core.errors import (
    BodyError,
    CpnError,
    DigestMismatchError,
    HopLimitError,
    LoopError,
    NoSuchRecipientError,
    PeerError,
    RosterError,
    UnknownNodeError,
    UnknownReceiptError,
)
from network.core.lifecycle import PRIORITY_RANK, TABLES, Event, State
from network.core.records import (
    ROLES,
    Json,
    MessageType,
    NodeId,
    Outcome,
    Priority,
    b64encode,
    is_node_id,
    parse_canonical,
)
from network.core.roster import Roster, load_roster
from network.core.routing import (
    Announcement,
    RoutingTable,
    StaleAnnouncementError,
    make_announcement,
    verify_announcement,
)
from network.node.alerts import alert_kind, alert_record
from network.node.events import Hub
from network.node.keys import NodeKeys
from network.node.store import AuditEntry, MessageRow, ReceiptRow, Store, Tx, UserRow, Waiting

__all__ = ["ROLES", "Service", "hash_token", "issue_token", "summary"]

log = logging.getLogger("cpn.service")


def hash_token(token: str) -> bytes:
    """Tokens are 256-bit random strings, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode()).digest()


async def issue_token(store: Store, name: str, role: str, *, actor: str, now: int) -> str:
    """Create or replace user `name` with a new token; only the token's hash is stored."""
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
    receipt: Receipt | None = None
    audit: list[AuditEntry] = field(default_factory=list)


ROUTE_REFRESH_MS = 1000  # announcements come in bursts: routes follow at most this often
MAX_PENDING_RECEIPTS = 10_000  # per destination: receipts to pass on, in memory
MAX_NEWS = 100_000  # per link and priority: ids queued since it last looked, in memory


_ACTED = (State.ACKNOWLEDGED, State.ANSWERED)

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
    "expired": "state",
    "overdue": "state",
}
_LIVE_DETAIL = ("from", "to", "type", "priority", "outcome", "deadline", "status")
MAX_RECENT_ALERTS = 200  # for the console; the audit log keeps them all


def _refers_to(typed: Body) -> str | None:
    """The message this one answers, extends or follows (threads a case)."""
    for name in ("in_reply_to", "extends", "follows"):
        value = getattr(typed, name, None)
        if isinstance(value, str):
            return value
    return None


def _tracked(row: MessageRow) -> Tracked:
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


class Service:
    """One node's use cases, over its keys, roster and store."""

    def __init__(
        self,
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
    ) -> None:
        self.me = keys.node_id
        self.deadlines = deadlines
        self.keys = keys
        self.roster = roster
        self.store = store
        self.clock = clock
        self.random_bytes = random_bytes
        self.skew_ms = skew_ms
        self.actor = f"node:{self.me}"
        self._storage = keys.keyring.storage
        self.retry_ms = retry_ms
        self.keeper = keeper  # the pinned register keeper key: new rosters need its signature
        self._outbox_signals: dict[str, asyncio.Event] = {}
        self.linked: dict[str, int] = {}  # peer -> linked since (ms), kept by the link layer
        self.routing = RoutingTable(self.me)
        self._announce_seq = 0
        # End-to-end receipts passing through: recipient -> (preferred next hop, bytes).
        self._pending_receipts: dict[NodeId, deque[tuple[str | None, bytes]]] = {}
        self._passed: OrderedDict[str, None] = OrderedDict()  # receipt ids passed on
        self._avoid: OrderedDict[str, set[str]] = OrderedDict()  # message -> hops that refused
        self._unroutable: set[str] = set()
        self._dirty: set[str] = set()  # links that should look through the whole outbox
        # Ids that became sendable over each link since it last looked, by priority rank: a
        # link takes these by id instead of sorting all that waits (thousands at a hub).
        self._news: dict[str, tuple[deque[str], ...]] = {}
        self._detours: set[str] = set()  # links that should look for detours at once
        self._last_contact: dict[str, int] = {}
        self._routes_at = 0
        self.urgent_pending = False  # a flash or urgent message since the last checkpoint
        self.latest_checkpoint: str | None = None  # our newest signed one; receipts carry it
        self.logged_in: set[str] = set()  # users whose token was used in this run
        self.recent_alerts: deque[dict[str, Json]] = deque(maxlen=MAX_RECENT_ALERTS)
        self.events = Hub()  # live news for the console; fed after each commit
        self._first_hops: dict[NodeId, NodeId] = {}
        self._destinations_cache: dict[
            tuple[str, bool], tuple[Mapping[NodeId, tuple[NodeId, ...]], list[NodeId]]
        ] = {}
        # Set when announcements changed the routes; the link layer refreshes them soon.
        self.routes_stale = asyncio.Event()

    # -- signals for the link layer ----------------------------------------------

    def outbox_signal(self, peer: str) -> asyncio.Event:
        """Set whenever something may have become sendable over the link to `peer`."""
        return self._outbox_signals.setdefault(peer, asyncio.Event())

    def refresh_routes(self) -> None:
        """Recompute routes after announcements changed, at most every `ROUTE_REFRESH_MS`."""
        if not self.routing.stale:
            self.routes_stale.clear()
            return
        now = self.clock()
        if now - self._routes_at >= ROUTE_REFRESH_MS:
            self._routes_at = now
            self.routing.refresh()
            self.routes_stale.clear()
            # Wake only the links that destinations moved to: the others have nothing new.
            first = {d: hops[0] for d, hops in self.routing.reachable().items() if hops}
            moved = {hop for d, hop in first.items() if self._first_hops.get(d) != hop}
            self._first_hops = first
            for peer in moved:
                self._dirty.add(peer)
                self.outbox_signal(peer).set()

    def wake(self, destination: str | None = None) -> None:
        """Wake the link that now carries traffic for `destination` (all links if None)."""
        self.refresh_routes()
        hops = self.routing.next_hops(NodeId(destination)) if destination else ()
        for peer in hops[:1] or list(self.linked):
            self._dirty.add(peer)
            self.outbox_signal(peer).set()

    def _queued(self, destination: str, message_id: str, rank: int) -> None:
        """A message for `destination` may go now: news for the link of its best route."""
        hop = self._first_hop(destination)
        if hop is not None:
            self._news_for(hop, message_id, rank)

    def _news_for(self, peer: str, message_id: str, rank: int) -> None:
        news = self._news.get(peer)
        if news is None:
            news = self._news[peer] = tuple(deque(maxlen=MAX_NEWS) for _ in PRIORITY_RANK)
        if len(news[rank]) == MAX_NEWS:
            self._dirty.add(peer)  # the oldest falls out: a look through the outbox finds it
        news[rank].append(message_id)
        self.outbox_signal(peer).set()

    def has_news(self, peer: str) -> bool:
        return any(self._news.get(peer, ()))

    def link_closed(self, peer: str) -> None:
        """Its news is moot: the routes move to other links, which look through the outbox."""
        self._news.pop(peer, None)

    def take_dirty(self, peer: str) -> bool:
        """Whether something may have been queued for the link to `peer` since it last looked."""
        if peer in self._dirty:
            self._dirty.discard(peer)
            return True
        return False

    def take_detours(self, peer: str) -> bool:
        """Whether a hop refused something since the link to `peer` last looked wide."""
        if peer in self._detours:
            self._detours.discard(peer)
            return True
        return False

    # -- routing -----------------------------------------------------------------

    def links_changed(self) -> Announcement:
        """Our live links changed: recompute routes and sign a new announcement."""
        self.routing.set_linked(NodeId(p) for p in self.linked)
        self.wake()
        self._announce_seq = max(self._announce_seq + 1, self.clock())
        return make_announcement(
            self.me, self._announce_seq, self.routing.linked, self.keys.signing
        )

    def accept_announcement(self, raw: bytes) -> bool:
        """Take a peer's flooded announcement; True when it is news to pass on."""
        if self.routing.seen(raw):
            return False  # floods bring each announcement once per link: copies cost nothing
        try:
            announcement = verify_announcement(raw, self.roster, self.routing.announcements)
        except StaleAnnouncementError:
            self.routing.remember(raw)
            return False  # older than the one we have
        self.routing.remember(raw)
        if announcement.node == self.me:
            return False
        if not self.routing.accept(announcement):
            return False
        self.routes_stale.set()
        return True

    def announcements(self) -> list[bytes]:
        return [a.raw for a in self.routing.announcements.values()]

    def _first_hop(self, destination: str) -> NodeId | None:
        hops = self.routing.next_hops(NodeId(destination))
        return hops[0] if hops else None

    def take_receipts_for(self, peer: str) -> list[bytes]:
        """End-to-end receipts passing through us that should now go over the link to `peer`.

        A receipt goes back the way its message came (to the node we had it
        from) while that link is up; otherwise by the best route to its recipient.
        """
        taken: list[bytes] = []
        for destination, queue in self._pending_receipts.items():
            if not queue:
                continue
            first_hop = self._first_hop(destination)
            keep: deque[tuple[str | None, bytes]] = deque(maxlen=MAX_PENDING_RECEIPTS)
            for prefer, raw in queue:
                by_path = prefer == peer and peer in self.linked
                by_route = (prefer is None or prefer not in self.linked) and first_hop == peer
                if by_path or by_route:
                    taken.append(raw)
                else:
                    keep.append((prefer, raw))
            self._pending_receipts[destination] = keep
        return taken

    def _pass_on(self, receipt: Receipt, prefer: str | None) -> bool:
        """Queue an end-to-end receipt for another node, once; False if seen before."""
        if receipt.id in self._passed:
            return False
        self._passed[receipt.id] = None
        if len(self._passed) > MAX_PENDING_RECEIPTS * 10:
            self._passed.popitem(last=False)
        queue = self._pending_receipts.setdefault(
            receipt.recipient, deque(maxlen=MAX_PENDING_RECEIPTS)
        )
        queue.append((prefer, receipt.raw))
        # The link's writer passes receipts on each time it wakes: no look through the outbox.
        hop = prefer if prefer is not None and prefer in self.linked else None
        hop = hop or self._first_hop(receipt.recipient)
        if hop is not None:
            self.outbox_signal(hop).set()
        return True

    # -- users -------------------------------------------------------------------

    async def add_user(self, name: str, role: str) -> str:
        """Create or replace a user; returns the token, shown once and stored hashed."""
        return await issue_token(self.store, name, role, actor=self.actor, now=self.clock())

    async def authenticate(self, token: str) -> UserRow | None:
        return await self.store.user_by_token_hash(hash_token(token))

    def _publish(self, entries: Iterable[AuditEntry]) -> None:
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
            event.update((k, detail[k]) for k in _LIVE_DETAIL if k in detail)
            self.events.publish(event)

    async def audit(self, entries: Sequence[AuditEntry]) -> None:
        async with self.store.transaction(self.clock()) as tx:
            tx.audit(entries)

    # -- submit ------------------------------------------------------------------

    async def submit(
        self,
        *,
        user: str,
        to: object,
        message_type: object,
        priority: object,
        body: object,
        ttl_ms: int | None = None,
    ) -> MessageRow:
        """Validate, seal and queue a message; committed before this returns.

        Raises BodyError naming the field (`to`, `type`, `priority`, `body.<field>`).
        """
        node, kind, urgency, typed = parse_request(to, message_type, priority, body)
        if node == self.me:
            raise BodyError("to", f"cannot send to this node ({self.me}) itself")
        try:
            card = self.roster.active_card(node)
        except UnknownNodeError as exc:
            raise BodyError("to", str(exc)) from None
        answered = await self._answered(typed, node)
        now = self.clock()
        try:
            envelope = seal(
                sender=self.me,
                recipient=node,
                message_type=kind,
                body=typed,
                priority=urgency,
                now=now,
                random_bytes=self.random_bytes(10),
                signing_key=self.keys.signing,
                recipient_key=card.hpke_key,
                ttl_ms=ttl_ms,
            )
        except BodyError as exc:
            raise BodyError(f"body.{exc.field}" if exc.field else "body", exc.problem) from None
        header = envelope.header
        assert envelope.plaintext is not None
        self_sealed = seal_to_self(envelope.plaintext, header.id, self._storage)
        detail: dict[str, Any] = {"to": node, "type": str(kind), "priority": str(urgency)}
        async with self.store.transaction(now, officer=True) as tx:
            row = tx.insert_message(
                id=header.id,
                box=Box.OUT,
                peer=node,
                type=kind,
                priority=urgency,
                priority_rank=PRIORITY_RANK[header.priority],
                state=State.QUEUED,
                created=header.created,
                expires=header.expires,
                envelope=envelope.raw,
                digest=envelope.digest,
                self_sealed=self_sealed,
                composed_by=user,
                case_ref=self._case_tag(typed),
                in_reply_to=_refers_to(typed),
                **self._deadlines_for(Box.OUT, header, kind),
            )
            acted = []
            if answered is not None:
                acted = await self._act_on(tx, answered, typed, actor=user, reply=header.id)
            composed = AuditEntry(user, "composed", header.id, detail)
            tx.audit(
                [
                    *acted,
                    composed,
                    AuditEntry(
                        self.actor,
                        "sealed",
                        header.id,
                        {"digest": b64encode(envelope.digest), "suite": str(header.suite)},
                    ),
                    AuditEntry(self.actor, "queued", header.id, {"to": node}),
                ]
            )
        self._publish([*acted, composed])
        self._queued(node, header.id, PRIORITY_RANK[header.priority])
        self.urgent_pending |= header.priority is not Priority.ROUTINE
        return row

    def _case_tag(self, typed: Body) -> str | None:
        """The case a message belongs to, as a keyed digest of its `case_ref`."""
        case_ref = getattr(typed, "case_ref", None)
        return self._storage.tag(case_ref) if isinstance(case_ref, str) else None

    def _deadlines_for(self, box: Box, header: Header, message_type: MessageType) -> dict[str, Any]:
        """A new message's deadlines, and when the deadline watch first looks at it."""
        due = due_times(
            self.deadlines,
            header.priority,
            header.created,
            box,
            reply=expects_reply(message_type),
        )
        state = State.QUEUED if box == "out" else State.RECEIVED
        tracked = Tracked(box, state, header.priority, *due)
        return {"due": due, "alert_at": next_alert(tracked, self.deadlines, self.clock(), False)}

    async def _track(self, tx: Tx, row: MessageRow) -> None:
        """After a state change: the overdue flags still standing, and the next look."""
        decision = reschedule(_tracked(row), self.deadlines, self.clock())
        tx.alerts(row.id, decision.overdue, decision.alert_at)

    async def _answered(self, typed: Body, to: NodeId) -> MessageRow | None:
        """The received request an acknowledgement or response answers; BodyError if none."""
        if not isinstance(typed, Acknowledgement | Response):
            return None
        original = await self.store.message(typed.in_reply_to)
        if original is None or original.box != "in" or original.peer != to:
            raise BodyError("body.in_reply_to", f"is not a message received from {to}")
        if isinstance(typed, Acknowledgement) and original.state in _ACTED:
            raise BodyError("body.in_reply_to", f"that message is already {original.state}")
        return original

    async def _act_on(
        self, tx: Tx, original: MessageRow, typed: Body, *, actor: str, reply: str
    ) -> list[AuditEntry]:
        """An acknowledgement or a response moves the request it answers, on either side."""
        current = await tx.message(original.id) or original
        detail: dict[str, Any] = {"reply": reply}
        preserved = current.preserved_until
        event = Event.ACKNOWLEDGE if isinstance(typed, Acknowledgement) else Event.ANSWER
        if event not in TABLES[current.box].get(current.state, {}):
            return []  # already answered, or expired unread: the state does not go back
        if isinstance(typed, Acknowledgement):
            tx.acted(current, Event.ACKNOWLEDGE, acked_by=typed.officer)
            detail["officer"] = typed.officer
            action = "acknowledged"
        else:
            assert isinstance(typed, Response)
            tx.acted(current, Event.ANSWER)
            detail["status"] = str(typed.status)
            action = "replied" if current.box == "in" else "answered"
            if typed.preserved_until is not None and current.box == "out":
                detail["preserved_until"] = typed.preserved_until
                # The date belongs to the first request: an extension or an MLA notice
                # answered moves it there (and only there, so that one warning goes out).
                first = await tx.message(current.in_reply_to or current.id)
                if first is not None and first.box == "out":
                    until = preserved_until_ms(typed.preserved_until)
                    tx.preserved(first.id, until)
                    if first.id != current.id:
                        await self._track(tx, replace(first, preserved_until=until))
                    else:
                        preserved = until
        row = await tx.message(current.id) or current
        await self._track(tx, replace(row, preserved_until=preserved))
        return [AuditEntry(actor, action, current.id, detail)]

    # -- the link layer's use cases ------------------------------------------------

    async def outbox(
        self,
        peer: str,
        limit: int,
        exclude: Sequence[str] = (),
        *,
        flash_only: bool = False,
        detours: bool = True,
    ) -> list[MessageRow]:
        """Ours and relayed messages whose best route now starts with the link to `peer`.

        With `detours`, also those for which `peer` is a later choice (their
        better hops are on their path or refused them): a wider and dearer look,
        which the link takes when it polls, not on every wake.
        """
        self.refresh_routes()
        routes = self.routing.reachable()
        destinations = self._destinations(peer, routes, detours)
        max_rank = PRIORITY_RANK[Priority.FLASH] if flash_only else max(PRIORITY_RANK.values())
        # In-flight messages wait for their retry time, so `exclude` rarely takes a row.
        fetch = (3 if detours else 1) * (limit + len(exclude))
        now = self.clock()
        waiting = await self.store.waiting(destinations, fetch, now, max_rank)
        skip = set(exclude)
        chosen = []
        for row in waiting:
            if row.id not in skip and self._next_hop(row, routes.get(NodeId(row.peer), ())) == peer:
                chosen.append(row.id)
                if len(chosen) == limit:
                    break
        return [row for row in await self.store.messages_by_id(chosen) if _may_go(row, now)]

    async def take_news(
        self, peer: str, limit: int, exclude: Sequence[str] = (), *, flash_only: bool = False
    ) -> list[MessageRow]:
        """Up to `limit` of the messages queued for the link to `peer` since it last looked,
        flash first, each still waiting and still best sent over this link (one that the
        routes moved since goes to its new link's news)."""
        news = self._news.get(peer)
        chosen: list[MessageRow] = []
        skip = set(exclude)
        ranks = () if news is None else news[:1] if flash_only else news
        while news and len(chosen) < limit:
            ids: list[str] = []
            for queue in ranks:
                while queue and len(ids) < limit - len(chosen):
                    ids.append(queue.popleft())
            if not ids:
                break
            self.refresh_routes()
            routes = self.routing.reachable()
            now = self.clock()
            for row in await self.store.messages_by_id(ids):
                if row.id in skip or row.box not in ("out", "relay") or not _may_go(row, now):
                    continue  # sent already (by a look through the outbox), or settled
                hop = self._next_hop(row, routes.get(NodeId(row.peer), ()))
                if hop == peer:
                    chosen.append(row)
                elif hop is not None:
                    self._news_for(hop, row.id, PRIORITY_RANK[Priority(row.priority)])
        return chosen

    def _destinations(
        self, peer: str, routes: Mapping[NodeId, tuple[NodeId, ...]], detours: bool
    ) -> list[NodeId]:
        """Destinations routed through `peer` first (or at all, with `detours`); kept
        until the routes change, since a hub asks for them on every wake."""
        cached = self._destinations_cache.get((peer, detours))
        if cached is not None and cached[0] is routes:
            return cached[1]
        if detours:
            found = [d for d, hops in routes.items() if peer in hops]
        else:
            found = [d for d, hops in routes.items() if hops and hops[0] == peer]
        self._destinations_cache[(peer, detours)] = (routes, found)
        return found

    def _next_hop(self, row: MessageRow | Waiting, hops: Sequence[NodeId]) -> NodeId | None:
        """The best live hop for a message: never back to a node it has been through
        (its sender and the relays on its path: no loops), nor one that refused it."""
        banned = set(self._avoid.get(row.id, ()))
        if row.box == "relay":
            banned.update(row.path)
            banned.add(row.origin or "")
        for hop in hops:
            if hop not in banned and hop in self.linked:
                return hop
        return None

    async def mark_sent(self, peer: str, ids: Sequence[str]) -> None:
        """Written to the link to `peer`; without a receipt they go again after `retry_ms`."""
        now = self.clock()
        async with self.store.transaction(now, durable=False) as tx:
            await tx.prefetch(ids)
            entries = []
            for message_id in ids:
                row = await tx.message(message_id)
                if row is None or row.state not in (State.QUEUED, State.SENT):
                    continue  # a receipt or the expiry scan got there first
                event = Event.SEND if row.state is State.QUEUED else Event.RESEND
                tx.sent(row, event, NodeId(peer), now + self.retry_ms)
                detail = {"to": peer, "attempt": row.attempts + 1}
                action = "sent" if row.box == "out" else "forwarded_to"
                entries.append(AuditEntry(self.actor, action, message_id, detail))
            tx.audit(entries)

    async def start(self) -> None:
        """Audit the start; what was in flight when the node last stopped goes again at once."""
        async with self.store.transaction(self.clock()) as tx:
            released = await tx.release_in_flight()
            detail = {"roster": self.roster.version, "released": released}
            tx.audit([AuditEntry(self.actor, "node_started", None, detail)])

    async def release(self, ids: Sequence[str]) -> None:
        """A link went down with these in flight and no receipt: they may go again at once."""
        if ids:
            async with self.store.transaction(self.clock(), durable=False) as tx:
                tx.retry_now(ids)
            self.wake()

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
        now = self.clock()
        link = NodeId(peer)
        items = [_Inbound(raw, path, link) for path, raw in frames]
        for item in items:
            self._verify_outer(item, now)
        # Ids stored already are duplicates for sure: no need to open them again.
        stored = await self.store.known_ids(
            [it.envelope.header.id for it in items if it.envelope and it.receipt is None]
        )
        for item in items:
            if item.envelope is not None and item.receipt is None:
                self._open_inbound(item, now, stored)
        async with self.store.transaction(now) as tx:
            fresh = [it.envelope.header.id for it in items if it.envelope and it.receipt is None]
            known = await tx.known_ids(fresh)  # their rows are read too
            issued: list[Receipt] = []  # in this batch, not yet readable from the store
            for item in items:
                if item.receipt is None and item.envelope is not None:
                    await self._take_inbound(tx, item, now, known, issued)
                if item.receipt is not None:
                    issued.append(item.receipt)
                    tx.insert_receipt(_receipt_row(item.receipt, "issued"))
                tx.audit(item.audit)
            self._contact(tx, peer)
        self._publish(entry for item in items for entry in item.audit)
        for item in items:
            if (item.relay or item.requeue is not None) and item.envelope is not None:
                header = item.envelope.header
                self._queued(header.recipient, header.id, PRIORITY_RANK[header.priority])
        return [item.receipt.raw for item in items if item.receipt is not None]

    def _verify_outer(self, item: _Inbound, now: int) -> None:
        """The checks anyone can make: form, signer, outer signature, times, hop limit."""
        try:
            envelope = verify_envelope(item.raw, roster=self.roster, now=now, skew_ms=self.skew_ms)
            item.envelope = envelope
            header = envelope.header
            if header.sender == self.me or self.me in item.path:
                raise LoopError(f"message {header.id} came back to {self.me}, where it has been")
            if header.recipient != self.me:
                if len(item.path) + 1 >= header.hop_limit:
                    raise HopLimitError(
                        f"message {header.id} has come through {len(item.path)} relays;"
                        f" its hop limit is {header.hop_limit}"
                    )
                try:
                    self.roster.active_card(header.recipient)
                except CpnError as exc:
                    raise NoSuchRecipientError(
                        f"cannot relay to {header.recipient}: {exc}"
                    ) from None
                item.relay = True
        except PeerError as exc:
            self._refuse(item, exc, now)

    def _open_inbound(self, item: _Inbound, now: int, stored: set[str]) -> None:
        """Open what is for us and not stored yet (stored ones are answered `duplicate`)."""
        assert item.envelope is not None
        if item.relay or item.envelope.header.id in stored:
            return
        try:
            item.opened = open_envelope(
                item.envelope, me=self.me, hpke_key=self.keys.keyring, roster=self.roster
            )
        except PeerError as exc:
            self._refuse(item, exc, now)

    def _refuse(self, item: _Inbound, exc: PeerError, now: int) -> None:
        """Audit a refused envelope and answer `rejected` when its header can be read."""
        item.opened = None
        item.relay = False
        readable = item.envelope.header if item.envelope else _readable_header(item.raw)
        item.audit.append(
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
            )
        )
        log.warning("refused an envelope from %s: %s", item.link, exc)
        if readable is not None:
            item.receipt = self._receipt(readable, item, Outcome.REJECTED, exc.reason, now)

    async def _take_inbound(
        self, tx: Tx, item: _Inbound, now: int, known: set[str], issued: Sequence[Receipt]
    ) -> None:
        """Store a verified envelope once, or answer `duplicate`; under the store's lock."""
        assert item.envelope is not None
        envelope = item.envelope
        header = envelope.header
        link_actor = f"node:{item.link}"
        detail: dict[str, Any] = {"from": header.sender, "path": list(item.path)}
        if header.id in known:
            # The same bytes again from the same peer get the receipt they got the first time
            # (AS4: never a new one); other bytes under a known id, or another link, `duplicate`.
            item.receipt = await self._original_receipt(tx, header, item, now, issued)
            detail["original_receipt"] = item.receipt is not None
            if item.receipt is None:
                item.receipt = self._receipt(header, item, Outcome.DUPLICATE, None, now)
            row = await tx.message(header.id)
            forwarded = row is not None and row.box == "relay" and row.state is State.FORWARDED
            if item.relay and row is not None and forwarded:
                # Its sender asks again: the end-to-end receipt was lost; pass it on again.
                item.requeue = row
                tx.transition(row, Event.REQUEUE)
                tx.requeue_now(row)
                detail["again"] = True
            item.audit.append(AuditEntry(link_actor, "duplicate", header.id, detail))
            return
        known.add(header.id)
        detail.update(priority=str(header.priority), digest=b64encode(envelope.digest))
        common: dict[str, Any] = {
            "id": header.id,
            "origin": header.sender,
            "priority": str(header.priority),
            "priority_rank": PRIORITY_RANK[header.priority],
            "created": header.created,
            "expires": header.expires,
            "received": now,
            "envelope": item.raw,
            "digest": envelope.digest,
        }
        if item.relay:
            tx.insert_message(
                **common,
                box=Box.RELAY,
                peer=header.recipient,
                type=None,  # sealed: a relay cannot know
                state=State.QUEUED,
                path=(*item.path, self.me),
            )
            detail["to"] = header.recipient
            item.audit.append(AuditEntry(link_actor, "relay_accepted", header.id, detail))
        else:
            assert item.opened is not None
            typed = item.opened.body
            tx.insert_message(
                **common,
                box=Box.IN,
                peer=header.sender,
                type=item.opened.message_type,
                state=State.RECEIVED,
                path=item.path,
                case_ref=self._case_tag(typed),
                in_reply_to=_refers_to(typed),
                **self._deadlines_for(Box.IN, header, item.opened.message_type),
            )
            detail["type"] = str(item.opened.message_type)
            item.audit.append(AuditEntry(link_actor, "received", header.id, detail))
            if isinstance(typed, Acknowledgement | Response):
                original = await tx.message(typed.in_reply_to)
                if (
                    original is not None
                    and original.box == "out"
                    and original.peer == header.sender
                ):
                    item.audit += await self._act_on(
                        tx, original, typed, actor=link_actor, reply=header.id
                    )
            self.urgent_pending |= header.priority is not Priority.ROUTINE
        item.receipt = self._receipt(header, item, Outcome.ACCEPTED, None, now)

    async def _original_receipt(
        self, tx: Tx, header: Header, item: _Inbound, now: int, issued: Sequence[Receipt]
    ) -> Receipt | None:
        """The receipt we issued when these exact bytes first came over this link, if any
        (`issued`: those of the batch at hand, which the store does not show yet)."""
        assert item.envelope is not None
        addressee = header.sender if header.recipient == self.me else item.link
        candidates = [r for r in issued if r.message_id == header.id]
        for raw in await tx.issued_receipts(header.id):
            try:
                candidates.append(
                    verify_receipt(raw, roster=self.roster, now=now, skew_ms=self.skew_ms)
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
        self, header: Header, item: _Inbound, outcome: Outcome, reason: str | None, now: int
    ) -> Receipt:
        """End-to-end to the message's sender when it is for us; else a hop receipt."""
        for_us = header.recipient == self.me
        return make_receipt(
            message_id=header.id,
            message_sender=header.sender if for_us else item.link,
            envelope_raw=item.raw,
            me=self.me,
            signing_key=self.keys.signing,
            now=now,
            random_bytes=self.random_bytes(10),
            outcome=outcome,
            reason=reason,
            scope=ReceiptScope.END_TO_END if for_us else ReceiptScope.HOP,
            path=item.path if for_us else (),
            checkpoint=self.latest_checkpoint if for_us else None,
        )

    async def accept_receipts(self, peer: str, raws: Sequence[bytes]) -> list[str]:
        """Verify receipts and move their messages; returns the ids no longer in flight.

        A hop receipt from the hop we sent to: it took the message on. An
        end-to-end receipt for us: the message is delivered. An end-to-end
        receipt for another node, for a message we relayed: our copy is
        forwarded, and the receipt goes on towards its recipient.
        """
        now = self.clock()
        settled: list[str] = []
        link_actor = f"node:{peer}"
        checked: list[Receipt | PeerError] = []
        for raw in raws:
            try:
                checked.append(
                    verify_receipt(raw, roster=self.roster, now=now, skew_ms=self.skew_ms)
                )
            except PeerError as exc:
                checked.append(exc)
        async with self.store.transaction(now) as tx:
            await tx.prefetch([r.message_id for r in checked if isinstance(r, Receipt)])
            entries: list[AuditEntry] = []
            for result in checked:
                try:
                    if isinstance(result, PeerError):
                        raise result
                    receipt = result
                    row = await tx.message(receipt.message_id)
                    passing = (
                        receipt.scope is ReceiptScope.END_TO_END and receipt.recipient != self.me
                    )
                    if passing and (row is None or row.box != "relay"):
                        # Coming back by another way than the message went: pass it on.
                        if self._pass_on(receipt, None):
                            entries.append(
                                AuditEntry(
                                    link_actor,
                                    "receipt_passed_on",
                                    receipt.message_id,
                                    {"to": receipt.recipient, "from": receipt.sender},
                                )
                            )
                        continue
                    if row is None or row.box == "in":
                        raise UnknownReceiptError(f"no sent message {receipt.message_id}")
                    if row.digest != receipt.digest:
                        raise DigestMismatchError(
                            f"receipt for {row.id} is for other bytes than those we sent"
                        )
                    if receipt.scope is ReceiptScope.HOP:
                        if receipt.recipient != self.me or receipt.sender != row.via:
                            raise DigestMismatchError(
                                f"hop receipt from {receipt.sender} to {receipt.recipient};"
                                f" we sent {row.id} to {row.via}"
                            )
                    else:  # end to end: ours (origin ''), or one we relayed
                        check_receipt_matches(
                            receipt,
                            message_id=row.id,
                            sender=row.origin or self.me,
                            recipient=row.peer,
                            digest=row.digest,
                        )
                except PeerError as exc:
                    entries.append(
                        AuditEntry(
                            link_actor,
                            "receipt_rejected",
                            None,
                            {"reason": exc.reason, "error": str(exc)[:500]},
                        )
                    )
                    log.warning("refused a receipt from %s: %s", peer, exc)
                    continue
                tx.insert_receipt(_receipt_row(receipt, "received"))
                settled.append(row.id)
                entries.extend(await self._settle(tx, row, receipt, link_actor))
            tx.audit(entries)
            self._contact(tx, peer)
        self._publish(entries)
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
                avoid = self._avoid.setdefault(row.id, set())
                avoid.add(receipt.sender)
                if len(self._avoid) > MAX_PENDING_RECEIPTS:
                    self._avoid.popitem(last=False)
                tx.retry_now([row.id])
                self._dirty.update(self.linked)
                self._detours.update(self.linked)
                return [AuditEntry(link_actor, "hop_refused", row.id, detail)]
            tx.hop_acked(row)
            if row.state in (State.QUEUED, State.SENT):
                tx.transition(row, Event.HOP_RECEIPT)
            return [AuditEntry(link_actor, "hop_receipt", row.id, detail)]
        detail["path"] = list(receipt.path)
        entries = [AuditEntry(link_actor, "receipt_received", row.id, detail)]
        event = Event.REFUSED if receipt.outcome is Outcome.REJECTED else Event.RECEIPT
        state = tx.transition(row, event)
        if row.box == "relay":
            relays = row.path  # ... the node we had it from, then us
            back = relays[-2] if len(relays) >= 2 else row.origin
            if self._pass_on(receipt, back):
                detail = {"to": row.origin, "via": back}
                entries.append(AuditEntry(self.actor, "receipt_passed_on", row.id, detail))
        elif state is not row.state or event is Event.REFUSED:
            entries.append(AuditEntry(self.actor, str(state), row.id, {}))
        return entries

    # -- the roster ------------------------------------------------------------------

    async def accept_roster(self, raw: bytes, source: str) -> Roster | None:
        """Adopt a roster newer than ours, signed by the pinned keeper; None if not adopted.

        An older roster, or a version we hold with other content, or one the
        keeper did not sign, is refused and audited; the one we hold is kept.
        """
        held = self.roster
        try:
            if self.keeper is None:
                raise RosterError("this node has no pinned register keeper key")
            roster = load_roster(raw, keeper=self.keeper, now=self.clock(), held=held)
        except RosterError as exc:
            log.warning("refused a roster from %s: %s", source, exc)
            await self.audit(
                [
                    AuditEntry(
                        f"node:{source}" if is_node_id(source) else source,
                        "roster_refused",
                        None,
                        {"reason": exc.reason, "error": str(exc)[:500], "held": held.version},
                    )
                ]
            )
            return None
        if roster.version == held.version:
            return None  # the one we hold
        revoked = sorted(
            node
            for node, entry in held.entries.items()
            if entry.active and (node not in roster.entries or not roster.entries[node].active)
        )
        async with self.store.transaction(self.clock()) as tx:
            tx.keep_roster(roster.version, raw)
            detail = {"from": held.version, "to": roster.version, "source": source}
            tx.audit(
                [AuditEntry(self.actor, "roster_changed", None, {**detail, "revoked": revoked})]
            )
        self.roster = roster
        for node in revoked:
            self.routing.forget(NodeId(node))
        self.wake()
        log.info("%s: roster version %d adopted (from %s)", self.me, roster.version, source)
        return roster

    def _contact(self, tx: Tx, peer: str) -> None:
        """Record contact from a peer, at most every few seconds (it is a write per batch)."""
        now = self.clock()
        if now - self._last_contact.get(peer, 0) >= 5_000:
            self._last_contact[peer] = now
            tx.peer_contact(peer)

    async def peer_contact(self, peer: str) -> None:
        async with self.store.transaction(self.clock()) as tx:
            tx.peer_contact(peer)

    async def peer_failure(self, peer: str, retry_at: int, error: str) -> None:
        async with self.store.transaction(self.clock()) as tx:
            tx.peer_failure(peer, retry_at, error)

    # -- officers' acts -----------------------------------------------------------

    async def acknowledge(
        self, message_id: str, user: str, note: object = None
    ) -> MessageRow | None:
        """An officer takes a received request on: an `acknowledgement` goes to its sender.

        None if there is no such received message; BodyError if it cannot be acknowledged.
        """
        row = await self.store.message(message_id)
        if row is None or row.box != "in":
            return None
        body: dict[str, Any] = {"in_reply_to": message_id, "officer": user}
        if note is not None:
            body["note"] = note
        with _fields_as_given():
            return await self.submit(
                user=user,
                to=row.peer,
                message_type="acknowledgement",
                priority=row.priority,
                body=body,
            )

    async def reply(self, message_id: str, user: str, fields: dict[str, Any]) -> MessageRow | None:
        """An officer answers a received request: a `response` goes to its sender."""
        row = await self.store.message(message_id)
        if row is None or row.box != "in":
            return None
        if "in_reply_to" in fields:
            raise BodyError("in_reply_to", "is the message replied to; leave it out")
        with _fields_as_given():
            return await self.submit(
                user=user,
                to=row.peer,
                message_type="response",
                priority=row.priority,
                body={"in_reply_to": message_id, **fields},
            )

    async def open_preservations(self) -> list[dict[str, Any]]:
        """Our preservation requests the other side preserved, soonest to lapse first."""
        return [summary(row) for row in await self.store.preserved_requests()]

    async def overdue(self) -> list[dict[str, Any]]:
        """Messages with a deadline passed and unmet, the most urgent first."""
        return [summary(row) for row in await self.store.overdue_messages(limit=500)]

    # -- periodic ------------------------------------------------------------------

    async def review_deadlines(self, limit: int = 200) -> list[dict[str, Json]]:
        """Flag, audit and return the alerts due now; the next look is kept with each message.

        Deadlines live in the store, so they fire after a restart as before it.
        """
        now = self.clock()
        found = await self.store.alerts_due(now, limit)
        if not found:
            return []
        alerts: list[dict[str, Json]] = []
        async with self.store.transaction(now) as tx:
            await tx.prefetch(found)  # one read, not one per message
            entries: list[AuditEntry] = []
            for message_id in found:
                row = await tx.message(message_id)
                if row is None:
                    continue
                tracked = _tracked(row)
                decision = review(tracked, self.deadlines, now)
                tx.alerts(row.id, decision.overdue, decision.alert_at)
                for item in decision.newly:
                    entries.append(
                        AuditEntry(self.actor, "overdue", row.id, {"deadline": str(item)})
                    )
                for item in decision.alert:
                    record = alert_record(
                        alert_kind(item),
                        node=self.me,
                        message_id=row.id,
                        box=tracked.box,
                        priority=tracked.priority,
                        peer=NodeId(row.peer),
                        detail=describe(item, tracked, now),
                        now=now,
                    )
                    alerts.append(record)
                    entries.append(
                        AuditEntry(self.actor, "escalated", row.id, {"alert": record["alert"]})
                    )
            tx.audit(entries)
        self.recent_alerts.extend(alerts)
        self._publish(entries)
        for record in alerts:
            self.events.publish({"kind": "alert", "id": record["message_id"], **record})
        return alerts

    async def expire_due(self) -> list[str]:
        """Mark queued or sent messages past their expiry as expired, and raise them."""
        now = self.clock()
        due = await self.store.due_to_expire(now)
        if not due:
            return []
        async with self.store.transaction(now) as tx:
            await tx.prefetch([row.id for row in due])  # one read, not one per message
            expired = []
            for row in due:
                current = await tx.message(row.id)
                if current is None or current.state not in (State.QUEUED, State.SENT):
                    continue
                tx.transition(current, Event.EXPIRE)
                expired.append(current.id)
                log.error(
                    "message %s to %s expired undelivered after %d attempts",
                    current.id,
                    current.peer,
                    current.attempts,
                )
            entries = [AuditEntry(self.actor, "expired", i, {"raised": "log"}) for i in expired]
            tx.audit(entries)
        self._publish(entries)
        return expired

    async def raise_unroutable(self) -> list[str]:
        """Queued messages with no route at all: raised once each (log and audit), kept queued.

        They go as soon as a route appears; nothing is dropped.
        """
        destinations = await self.store.queued_counts(not_taken_on=True)
        stranded = sorted(d for d in destinations if not self.routing.next_hops(NodeId(d)))
        fresh = [d for d in stranded if d not in self._unroutable]
        self._unroutable = set(stranded)
        if fresh:
            for destination in fresh:
                log.error(
                    "%s: no route to %s; %d message(s) stay queued until one appears",
                    self.me,
                    destination,
                    destinations[destination],
                )
            await self.audit(
                [
                    AuditEntry(self.actor, "no_route", None, {"to": d, "queued": destinations[d]})
                    for d in fresh
                ]
            )
        return fresh

    # -- reading -------------------------------------------------------------------

    async def read_message(self, message_id: str, user: UserRow) -> dict[str, Any] | None:
        """One message for a reader: header, decrypted body, state, receipts, timeline.

        Opening is audited (who read which message when); an officer's first
        reading moves an inbound message to `opened`.
        """
        row = await self.store.message(message_id)
        if row is None:
            return None
        if row.box == "in":
            message_type, body, _ = read_stored(row.envelope, self.keys.keyring)
        else:
            assert row.self_sealed is not None
            plaintext = open_from_self(row.self_sealed, row.id, self.keys.keyring)
            message_type, body = read_plaintext(plaintext)
        async with self.store.transaction(self.clock(), officer=True) as tx:
            current = await tx.message(row.id)
            assert current is not None
            if current.box == "in" and user.role == "officer":
                tx.transition(current, Event.OPEN)
            tx.audit([AuditEntry(user.name, "opened", row.id, {"role": user.role})])
        row = await self.store.message(message_id)
        assert row is not None
        header = parse_canonical(row.envelope, limit=len(row.envelope), what="stored envelope")
        return {
            **summary(row),
            "type": str(message_type),
            "header": header["header"],
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
                for r in await self.store.receipts(row.id)
            ],
            "timeline": await self.store.audit_for(row.id),
            "thread": [summary(r) for r in await self.store.thread(row)],
        }

    async def list_messages(
        self,
        *,
        box: str | None,
        state: str | None,
        priority: str | None,
        limit: int,
        case_ref: str | None = None,
    ) -> list[dict[str, Any]]:
        """A listing; with `case_ref`, the messages of that case (either side's reference)."""
        case = self._storage.tag(case_ref) if case_ref is not None else None
        rows = await self.store.messages(
            box=box, state=state, priority=priority, limit=limit, case=case
        )
        return [summary(r) for r in rows]

    async def peers(self) -> list[dict[str, Any]]:
        """Each contact point in the roster but us: linked or not, last seen, queued count."""
        stored = await self.store.peers()
        queued = await self.store.queued_counts()
        result = []
        for node_id, entry in sorted(self.roster.entries.items()):
            if node_id == self.me:
                continue
            info = stored.get(node_id, {})
            result.append(
                {
                    "id": node_id,
                    "name": entry.card.name,
                    "status": str(entry.status),
                    "linked": node_id in self.linked,
                    "linked_since": self.linked.get(node_id),
                    "last_seen": info.get("last_seen"),
                    "failures": info.get("failures", 0),
                    "last_error": info.get("last_error"),
                    "queued": queued.get(node_id, 0),
                }
            )
        return result


@contextmanager
def _fields_as_given() -> Iterator[None]:
    """An acknowledgement's or reply's fields are given as they are, not under `body`:
    its BodyError names them so (`status`, not `body.status`), and `in_reply_to` as
    the message `id` it was given as."""
    try:
        yield
    except BodyError as exc:
        if not exc.field.startswith("body."):
            raise
        field = exc.field.removeprefix("body.")
        raise BodyError("id" if field == "in_reply_to" else field, exc.problem) from None


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
    }


def _may_go(row: MessageRow, now: int) -> bool:
    """Still waiting to go (queued, or sent and due again), as read just now: a row chosen
    a moment earlier may have been sent by another look, or settled, since."""
    return row.state in (State.QUEUED, State.SENT) and row.retry_at <= now


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


def _readable_header(raw: bytes) -> Header | None:
    """The header of a refused envelope, if it can be read at all (for a rejected receipt)."""
    try:
        value = parse_canonical(raw, limit=MAX_ENVELOPE_BYTES, what="envelope")
        return Header.from_json(value["header"]) if isinstance(value, dict) else None
    except (CpnError, KeyError):
        return None
