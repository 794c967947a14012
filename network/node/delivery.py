"""The links' side of sending: which peers are linked, the routes our peers announce, the
outbox scheduler, the signals that wake each link's writer, and the store reads and
writes of sending (the next batch, marked sent, released).

The decisions are the scheduler's (`network.node.scheduler`, pure); this module
reads the rows it names from the store, sets the asyncio signals it asks for, and
commits what was sent.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from network.core.deadlines import Box
from network.core.envelope import Receipt
from network.core.lifecycle import PRIORITY_RANK, Event, State
from network.core.records import NodeId, Priority
from network.core.routing import (
    Announcement,
    RoutingTable,
    StaleAnnouncementError,
    make_announcement,
    verify_announcement,
)
from network.core.session import Room
from network.node.context import NodeContext
from network.node.scheduler import (
    Batch,
    Candidate,
    Scheduler,
    look_limit,
    max_rank_for,
    read_on,
)
from network.node.store import AuditEntry, MessageRow, Tx, Waiting

__all__ = ["Delivery", "Outgoing", "candidate"]

# Rows kept from their commit for their link's feed, which then sends them without reading
# them back; past this many (a link down, its news waiting) the oldest are read when taken.
# 256 took the 193-node simulation's peak 20 MiB higher than 64 (each row holds its 5 KiB
# envelope and stored copy).
KEPT_COMMITTED = 64
NO_RETRY = 2**63 - 1  # no message sent waits for a retry


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What a link should send now: receipts passing through, then these rows (flash
    first). `polled`: the link's poll was answered (retries due were looked for);
    `swept`: a look through the whole outbox was made for its sweep."""

    receipts: tuple[bytes, ...] = ()
    rows: tuple[MessageRow, ...] = ()
    polled: bool = False
    swept: bool = False


def candidate(row: MessageRow | Waiting) -> Candidate:
    """A stored message as the scheduler sees it: a relayed one has been through its
    origin and the nodes on its path (us included)."""
    been: frozenset[NodeId] = frozenset()
    if row.box == Box.RELAY:
        been = frozenset([*row.path, NodeId(row.origin or "")])
    rank = row.rank if isinstance(row, Waiting) else PRIORITY_RANK[row.priority]
    return Candidate(row.id, NodeId(row.peer), rank, been)


def _may_go(row: MessageRow, now: int) -> bool:
    """Still waiting to go (queued, or sent and due again), as read just now: a row chosen
    a moment earlier may have been sent by another look, or settled, since."""
    return row.state in (State.QUEUED, State.SENT) and row.retry_at <= now


class Delivery:
    """One node's links, routes and outbox, as the link layer and the use cases see them."""

    def __init__(self, context: NodeContext) -> None:
        self.context = context
        self.routing = RoutingTable(context.me)
        self.scheduler = Scheduler(self.routing)
        self._announce_seq = 0
        self._signals: dict[NodeId, asyncio.Event] = {}
        # Messages just committed, as committed: their link's feed sends them without reading
        # them back. At 90% load a flash row's read waited up to 15 ms behind the others;
        # saturated, reading every row back took about 1.4% of the sender's loop.
        self._committed: OrderedDict[str, MessageRow] = OrderedDict()
        # Set when announcements changed the routes; the link layer refreshes them soon.
        self.routes_stale = asyncio.Event()
        self.route_news = 0  # announcements that changed something, ever: bursts end when it stops
        # Per link: the retries due up to this time were looked for (ms; a row left then was
        # no hop's, or another link's), and none comes due after that before the next (ms;
        # absent: ask the store). A retry that cannot go costs each link one look, not one
        # a poll for as long as it waits.
        self._retries_looked: dict[NodeId, int] = {}
        self._next_retry: dict[NodeId, int] = {}
        # Per link up: its feed's look, which a flash message's committer takes at once
        # (`flash_out`), set by the link layer. At 90% load the feed's own turn of the
        # loop was 1.1 ms at p50 and 4.6 at p99 of a flash message's way.
        self.looks: dict[NodeId, Callable[[], Awaitable[None]]] = {}

    # -- signals -----------------------------------------------------------------------

    def outbox_signal(self, peer: str) -> asyncio.Event:
        """Set whenever something may have become sendable over the link to `peer`."""
        return self._signals.setdefault(NodeId(peer), asyncio.Event())

    def _wake(self, peers: Iterable[NodeId]) -> None:
        for peer in peers:
            self.outbox_signal(peer).set()

    def _routes_followed(self) -> None:
        if not self.routing.stale:
            self.routes_stale.clear()

    def refresh_routes(self, *, paused: bool = False) -> None:
        """Recompute routes after announcements changed, at most every `ROUTE_REFRESH_MS`
        or once their burst has `paused`; wake only the links that destinations moved to."""
        self._wake(self.scheduler.refresh_routes(self.context.clock(), paused=paused) or ())
        self._routes_followed()

    def wake(self, destination: str | None = None) -> None:
        """Wake the link that now carries traffic for `destination` (all links if None)."""
        self.refresh_routes()
        self._wake(self.scheduler.wake(NodeId(destination) if destination else None))

    # -- links and routes -------------------------------------------------------------

    @property
    def linked(self) -> Mapping[NodeId, int]:
        """The peers linked now, and since when (ms)."""
        return self.scheduler.linked

    def link_up(self, peer: str, since: int) -> None:
        self.scheduler.link_up(NodeId(peer), since)

    def link_down(self, peer: str) -> None:
        self.scheduler.link_down(NodeId(peer))
        self._retries_looked.pop(NodeId(peer), None)
        self._next_retry.pop(NodeId(peer), None)

    def links_changed(self, *, lost: bool) -> None:
        """Our live links changed: routes follow at once (a link that is up is used at
        once, one that is down never), whenever the announcement of them goes. A link
        `lost` sends every other link to look through the outbox for what it carried; a
        new one looks through it on its first turn (`Scheduler.link_up`) for what is now
        best sent its way, and the others need not look: at a network's start, every
        link looking at every link come up was seconds of work."""
        self.routing.set_linked(self.linked)
        if lost:
            self.wake()

    def announcement(self) -> Announcement:
        """A new signed announcement of our live links, to flood."""
        self._announce_seq = max(self._announce_seq + 1, self.context.clock())
        return make_announcement(
            self.context.me, self._announce_seq, self.routing.linked, self.context.keys.signing
        )

    def accept_announcement(self, raw: bytes) -> bool:
        """Take a peer's flooded announcement; True when it is news to pass on.

        Raises CpnError when it is not signed by an active contact point.
        """
        if self.routing.seen(raw):
            return False  # floods bring each announcement once per link: copies cost nothing
        try:
            announcement = verify_announcement(raw, self.context.roster, self.routing.announcements)
        except StaleAnnouncementError:
            self.routing.remember(raw)
            return False  # older than the one we have
        self.routing.remember(raw)
        if announcement.node == self.context.me:
            return False
        if not self.routing.accept(announcement):
            return False
        self.route_news += 1
        self.routes_stale.set()
        return True

    def announcements(self) -> list[bytes]:
        return [a.raw for a in self.routing.announcements.values()]

    def forget(self, nodes: Iterable[str]) -> None:
        """These nodes were revoked: their announcements no longer route anything."""
        for node in nodes:
            self.routing.forget(NodeId(node))

    def has_route(self, destination: str) -> bool:
        return bool(self.routing.next_hops(NodeId(destination)))

    # -- what the use cases queue -------------------------------------------------------

    def queued(self, message: Candidate, committed: MessageRow | None = None) -> NodeId | None:
        """A message may go now: news for the link of its best route, which is returned
        (None: no route yet). `committed`: its row as just committed (kept: its feed need
        not read it back)."""
        hop = self.scheduler.queued(message)
        if hop is not None:
            if committed is not None:
                self._committed[committed.id] = committed
                if len(self._committed) > KEPT_COMMITTED:
                    self._committed.popitem(last=False)  # read back, if it is news yet
            self.outbox_signal(hop).set()
        return hop

    async def flash_out(self, hops: Iterable[NodeId]) -> None:
        """Flash messages just queued for these links: each link's look, taken now by
        their committer rather than at its feed's next turn."""
        for hop in hops:
            look = self.looks.get(hop)
            if look is not None:
                await look()

    def pass_on(self, receipt: Receipt, back: tuple[NodeId, ...]) -> bool:
        """Queue an end-to-end receipt for another node, once, to go `back` along its
        message's path (nearest first); False if seen before.

        The link's writer passes receipts on each time it wakes: no look through the outbox.
        """
        fresh, hop = self.scheduler.pass_on(receipt.id, receipt.recipient, receipt.raw, back)
        if hop is not None:
            self.outbox_signal(hop).set()
        return fresh

    def hop_refused(self, message_id: str, hop: NodeId) -> None:
        """That hop will not take it (a loop, the hop limit): another route, at once."""
        self.scheduler.hop_refused(message_id, hop)

    # -- a link's turn ----------------------------------------------------------------

    async def next_batch(
        self,
        peer: str,
        room: Room,
        exclude: Sequence[str] = (),
        *,
        poll: bool = False,
        sweep: bool = False,
    ) -> Outgoing:
        """What the link to `peer` should send now (`exclude`: what it has in flight;
        `poll`: its poll timer came due, for retries; `sweep`: its sweep came due, a look
        through the whole outbox for anything no event announced).

        Retries come due first, on a poll; then news, read by id; failing that, when the
        scheduler asks for it, a look through the whole outbox. Each row returned is still
        waiting to go as read now.
        """
        link = NodeId(peer)
        flash_waits = self.scheduler.has_flash_news(link)  # it goes first: the poll waits a turn
        if poll and room.count > 0 and not flash_waits and await self._retries_due(link):
            now = self.context.clock()
            since = self._retries_looked.get(link, 0)
            retried = await self._look(link, room, exclude, detours=True, retries=since + 1)
            if retried:  # the feed comes back at once for the news and the receipts
                return Outgoing(rows=tuple(retried), polled=True)
            if not room.flash_only:  # room for each priority, and none due now is this link's
                self._retries_looked[link] = now
                self._next_retry.pop(link, None)
        batch = self._turn(link, room, sweep)
        receipts = batch.receipts
        skip = set(exclude)
        rows: list[MessageRow] = []
        news = batch.news
        while news:
            now = self.context.clock()
            for row in await self._rows(news):
                if row.id in skip or row.box not in ("out", "relay") or not _may_go(row, now):
                    continue  # sent already (by a look through the outbox), or settled
                rows.append(row)
            if len(rows) >= room.count or not self.scheduler.has_news(link):
                break
            self.refresh_routes()
            taken = sum(row.priority is not Priority.FLASH for row in rows)
            more = Room(room.count - len(rows), 0 if batch.flash_alone else room.others - taken)
            news, moved = self.scheduler.take_news(link, more)
            self._wake(moved)
        polled = poll and room.count > 0 and not flash_waits
        if rows:
            return Outgoing(receipts, tuple(rows), polled=polled)
        if batch.news:  # all gone since they were queued: the scheduler says whether to look
            batch = self._turn(link, room, sweep)
            receipts += batch.receipts
        if not batch.look:
            return Outgoing(receipts, polled=polled)
        found = await self._look(link, room, exclude, batch.detours)
        self.scheduler.looked(link, len(found), room, detours=batch.detours)
        # A busy window's look took flash alone: the sweep waits for room for the others.
        return Outgoing(receipts, tuple(found), polled=polled, swept=sweep and not room.flash_only)

    async def _retries_due(self, link: NodeId) -> bool:
        """Whether a message sent without its end-to-end receipt may be due to go again
        over `link`, since it last looked: known from the last time the store was asked and
        the marks since, so that a poll costs a query only once a retry time has passed."""
        now = self.context.clock()
        due = self._next_retry.get(link)
        if due is None or due <= now:
            earliest = await self.context.store.earliest_retry(
                after=self._retries_looked.get(link, 0)
            )
            due = self._next_retry[link] = NO_RETRY if earliest is None else earliest
        return due <= now

    async def _rows(self, ids: Sequence[str]) -> list[MessageRow]:
        """The rows of `ids`: as just committed where kept, the others read now.

        A row kept from its commit is as good as one read back: no lock is held between
        the read and the send either, and what happens to it meanwhile (a receipt, the
        expiry scan) is checked when it is marked sent."""
        kept = [row for i in ids if (row := self._committed.pop(i, None)) is not None]
        if len(kept) == len(ids):
            return kept
        taken = {row.id for row in kept}
        return kept + await self.context.store.messages_by_id([i for i in ids if i not in taken])

    def _turn(self, peer: NodeId, room: Room, sweep: bool) -> Batch:
        batch = self.scheduler.next_batch(peer, room, self.context.clock(), sweep=sweep)
        self._wake(batch.wake)
        self._routes_followed()
        return batch

    async def _look(
        self,
        peer: NodeId,
        room: Room,
        exclude: Sequence[str],
        detours: bool,
        *,
        retries: int = 0,
    ) -> list[MessageRow]:
        """Ours and relayed messages whose best route now starts with the link to `peer`.

        With `detours`, also those for which `peer` is a later choice (their better hops
        are on their path or refused them): a wider and dearer look, which the link takes
        when a hop refused or routes gave it new destinations, and on a sweep. With
        `retries` (ms), only messages sent whose retry time is from then to now.

        It reads on past rows best sent over other links until the room is full or the
        outbox has no more: what is left behind is never there for this link.
        """
        destinations = self.scheduler.destinations(peer, detours)
        max_rank = max_rank_for(room)
        fetch = look_limit(room, detours, len(exclude))
        skip = set(exclude)
        while True:
            now = self.context.clock()
            waiting = await self.context.store.waiting(
                destinations, fetch, now, max_rank, retries=retries
            )
            chosen = self.scheduler.choose(
                peer, (candidate(row) for row in waiting if row.id not in skip), room
            )
            if len(waiting) < fetch:
                break  # the outbox has no more (most looks end here)
            picked = set(chosen)
            others = sum(row.rank != 0 for row in waiting if row.id in picked)
            last_rank = waiting[-1].rank if waiting else 0
            if not read_on(room, len(chosen), others, last_rank):
                break
            fetch *= 4  # rows for other links filled the read: read further
        for message_id in chosen:
            self._committed.pop(message_id, None)  # read now: the kept row is behind it
        return [row for row in await self.context.store.messages_by_id(chosen) if _may_go(row, now)]

    async def mark_sent(self, peer: str, ids: Sequence[str], *, flash: bool = False) -> None:
        """Written to the link to `peer`; without a receipt they go again after `retry_ms`.
        `flash`: one of them is (its receipt will wait for this mark: it goes first, and
        returns once in the store's batch, which its receipt's commit, or the next, then
        commits: `early`). Other marks queue with the links' work: at a relay they are
        many, and as officers' transactions they held back the envelopes the relay had
        to take."""
        async with self.context.store.transaction(
            self.context.clock(), durable=False, early=flash
        ) as tx:
            await tx.prefetch(ids, whole=False)
            tx.audit(await self.write_marks(tx, peer, ids))

    async def write_marks(self, tx: Tx, peer: str, ids: Sequence[str]) -> list[AuditEntry]:
        """In `tx`: these were written to the link to `peer` (`mark_sent`'s writes, or a
        receipt's transaction writing the marks it found still waiting); their entries,
        for the caller to audit before what follows in its transaction."""
        context = self.context
        retry_at = tx.now + context.retry_ms
        entries = []
        for message_id in ids:
            row = await tx.message(message_id, whole=False)
            if row is None or row.state not in (State.QUEUED, State.SENT):
                continue  # a receipt or the expiry scan got there first
            event = Event.SEND if row.state is State.QUEUED else Event.RESEND
            tx.sent(row, event, NodeId(peer), retry_at)
            detail = {"to": peer, "attempt": row.attempts + 1}
            action = "sent" if row.box == "out" else "forwarded_to"
            entries.append(AuditEntry(context.actor, action, message_id, detail))
        if entries:  # each link's next retry comes no later than theirs
            for link, due in self._next_retry.items():
                self._next_retry[link] = min(due, retry_at)
        return entries

    async def start(self) -> None:
        """Audit the start; what was in flight when the node last stopped goes again at once."""
        context = self.context
        async with context.store.transaction(context.clock()) as tx:
            released = await tx.release_in_flight()
            detail = {"roster": context.roster.version, "released": released}
            tx.audit([AuditEntry(context.actor, "node_started", None, detail)])

    async def release(self, ids: Sequence[str]) -> None:
        """A link went down with these in flight and no receipt: they may go again at once."""
        if ids:
            async with self.context.store.transaction(self.context.clock(), durable=False) as tx:
                tx.retry_now(ids)
            self.wake()

    async def peer_contact(self, peer: str) -> None:
        async with self.context.store.transaction(self.context.clock()) as tx:
            tx.peer_contact(peer)

    async def peer_failure(self, peer: str, retry_at: int, error: str) -> None:
        async with self.context.store.transaction(self.context.clock()) as tx:
            tx.peer_failure(peer, retry_at, error)
