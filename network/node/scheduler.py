"""The outbox scheduler: what each link should send next. Pure: no asyncio, no store, no clock.

The store is the queue (every link can always look through the whole outbox);
this is the memory that spares a busy link that look on every turn:

- news: per link and priority rank, the messages that became sendable over it
  since it last looked, taken by id (a hub has thousands waiting);
- dirty: links that should look through the whole outbox (routes or links
  changed, news overflowed);
- detours: links that should also look for messages whose better hops are on
  their path or refused them (a hop refused, the link came up or became a choice
  for a destination at all, a wide look filled its room);
- avoid: per message, the hops that refused it (a loop, the hop limit);
- passing receipts: end-to-end receipts going through us, each to go back along
  its message's path (to the nearest node on it that is linked: only those nodes
  hold the message, and any other refuses its receipt);
- linked: the peers linked now, and since when.

Each of these is set by the event that calls for the look, so a link's poll need only
look for retries that came due (`Delivery`); its rare sweep is a net, not a need
(tests/test_scheduler.py's state machine runs the feeds with no poll at all).

A relayed message never goes back to a node on its path or to its origin, nor
to a hop that refused it; among the rest, equal routes spread as
`network.core.routing` orders them. Every method that may give a link
something to send answers with the peers whose writers to wake; the caller
owns the wake-ups (asyncio) and the store.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from network.core.lifecycle import PRIORITY_RANK
from network.core.records import NodeId, Priority
from network.core.routing import RoutingTable
from network.core.session import Room

__all__ = [
    "MAX_NEWS",
    "MAX_PENDING_RECEIPTS",
    "ROUTE_QUIET_MS",
    "ROUTE_REFRESH_MS",
    "Batch",
    "Candidate",
    "Scheduler",
    "look_limit",
    "max_rank_for",
    "read_on",
]

ROUTE_REFRESH_MS = 1000  # announcements come in bursts: routes follow at most this often
ROUTE_QUIET_MS = 100  # ... or sooner, once a burst has paused this long
MAX_PENDING_RECEIPTS = 10_000  # per destination: receipts to pass on, in memory
MAX_NEWS = 100_000  # per link and priority: ids queued since it last looked, in memory
RANKS = len(PRIORITY_RANK)  # rank 0 is flash


@dataclass(frozen=True, slots=True)
class Candidate:
    """A message that may go, as far as routing it needs: its id, its destination, its
    priority rank, and the nodes it has been through (a relayed message's origin and path;
    nothing for ours)."""

    id: str
    destination: NodeId
    rank: int = 0
    been: frozenset[NodeId] = frozenset()


@dataclass(frozen=True, slots=True)
class Batch:
    """The answer to `next_batch`: receipts to pass on now; ids of news to read from the
    store (best first, each best sent over this link as routes stand); or a look through
    the whole outbox (`look`), wider with `detours`. `wake`: other links that were given
    something to send meanwhile (routes moved, news moved to them). `flash_alone`: the
    news are flash, and what fills the room after them must be flash too."""

    receipts: tuple[bytes, ...] = ()
    news: tuple[str, ...] = ()
    flash_alone: bool = False
    look: bool = False
    detours: bool = False
    wake: frozenset[NodeId] = frozenset()


class Scheduler:
    """One node's link scheduling, over its routing table."""

    def __init__(self, routing: RoutingTable) -> None:
        self.routing = routing
        self._linked: dict[NodeId, int] = {}  # peer -> linked since (ms)
        self._news: dict[NodeId, tuple[deque[Candidate], ...]] = {}
        self._dirty: set[NodeId] = set()
        self._detours: set[NodeId] = set()
        # The last look found less than it could take, of the ranks up to this one
        # (`max_rank_for`: a busy window's look says nothing of the others).
        self._drained: dict[NodeId, int] = {}
        self._avoid: OrderedDict[str, set[NodeId]] = OrderedDict()  # message -> hops refusing
        self._receipts = _ReceiptsBack()  # end-to-end receipts passing through
        self._passed: OrderedDict[str, None] = OrderedDict()  # receipt ids passed on
        self._routes_followed: Mapping[NodeId, tuple[NodeId, ...]] = {}
        self._routes_at = 0
        self._destinations: dict[
            tuple[NodeId, bool], tuple[Mapping[NodeId, tuple[NodeId, ...]], list[NodeId]]
        ] = {}

    # -- links ---------------------------------------------------------------------

    @property
    def linked(self) -> Mapping[NodeId, int]:
        """The peers linked now, and since when (ms); read only."""
        return self._linked

    def link_up(self, peer: NodeId, since: int) -> None:
        """A link to `peer` is up: its first turn looks through the whole outbox, wide (for
        what it is a later choice for, whatever the routes did meanwhile)."""
        self._linked[peer] = since
        self._drained.pop(peer, None)
        self._detours.add(peer)
        self._receipts.regroup(None, self._way_back)  # those that waited for a way back

    def link_down(self, peer: NodeId) -> None:
        """Its news is moot: the routes move to other links, which look through the outbox,
        wide: what it would have carried may now go only by a link that was already a choice
        for its destination, past a better hop on the message's path or refusing it."""
        self._linked.pop(peer, None)
        self._news.pop(peer, None)
        self._detours.update(self._linked)
        self._receipts.regroup(peer, self._way_back)

    # -- routes --------------------------------------------------------------------

    def refresh_routes(self, now: int, *, paused: bool = False) -> set[NodeId] | None:
        """Recompute routes after announcements changed, at most every `ROUTE_REFRESH_MS`,
        or at once when `paused`: the burst of announcements is over (`ROUTE_QUIET_MS`).

        None if they were not recomputed (not stale, or too soon); else the links that
        destinations moved to, now dirty (the others have nothing new).
        """
        if not self.routing.stale or (not paused and now - self._routes_at < ROUTE_REFRESH_MS):
            return None
        self._routes_at = now
        self.routing.refresh()
        return self._follow_routes()

    def _follow_routes(self) -> set[NodeId]:
        """The routes changed (announcements, our links, a revocation): the links that a
        destination's first hop moved to look through the outbox; those that became a
        choice at all for a destination look wide, for what their better hops cannot take
        (on its path, or refusing it). Returns those links, to wake."""
        routes = self.routing.reachable()
        before = self._routes_followed
        if routes is before:
            return set()
        self._routes_followed = routes
        moved: set[NodeId] = set()
        gained: set[NodeId] = set()
        for destination, hops in routes.items():
            had = before.get(destination, ())
            if hops[:1] != had[:1]:
                moved.update(hops[:1])
            if hops != had:
                gained.update(hop for hop in hops[1:] if hop not in had)
        self._dirty |= moved
        self._detours |= gained  # a wide look: `next_batch` looks for either
        return moved | gained

    def wake(self, destination: NodeId | None = None) -> set[NodeId]:
        """The link that now carries traffic for `destination` (every link if None) looks
        through the whole outbox; returns the links to wake."""
        hops = self.routing.next_hops(destination) if destination else ()
        peers = set(hops[:1] or self._linked)
        self._dirty |= peers
        return peers

    def first_hop(self, destination: NodeId) -> NodeId | None:
        hops = self.routing.next_hops(destination)
        return hops[0] if hops else None

    def next_hop(self, message: Candidate) -> NodeId | None:
        """The best live hop for a message: never back to a node it has been through (its
        sender and the relays on its path: no loops), nor one that refused it."""
        hops = self.routing.reachable().get(message.destination, ())
        avoid = self._avoid.get(message.id)
        for hop in hops:
            if hop in self._linked and hop not in message.been and not (avoid and hop in avoid):
                return hop
        return None

    def destinations(self, peer: NodeId, detours: bool) -> list[NodeId]:
        """Destinations routed through `peer` first (or at all, with `detours`); kept
        until the routes change, since a hub asks for them on every wake."""
        routes = self.routing.reachable()
        cached = self._destinations.get((peer, detours))
        if cached is not None and cached[0] is routes:
            return cached[1]
        if detours:
            found = [d for d, hops in routes.items() if peer in hops]
        else:
            found = [d for d, hops in routes.items() if hops and hops[0] == peer]
        self._destinations[(peer, detours)] = (routes, found)
        return found

    def choose(self, peer: NodeId, candidates: Iterable[Candidate], room: Room) -> list[str]:
        """Of `candidates` (in the order given), the ids of those best sent over the link to
        `peer` now, as many as `room` takes (`room.others` at most other than flash)."""
        chosen: list[str] = []
        others = 0
        for candidate in candidates:
            if len(chosen) >= room.count:
                break
            if candidate.rank != 0 and others >= room.others:
                continue  # a flash one after it may still go
            if self.next_hop(candidate) == peer:
                chosen.append(candidate.id)
                others += candidate.rank != 0
        return chosen

    # -- messages --------------------------------------------------------------------

    def queued(self, message: Candidate) -> NodeId | None:
        """A message may go now: news for the link of its best route; returns that link
        (to wake), or None if no route starts with a link."""
        hop = self.first_hop(message.destination)
        if hop is not None:
            self._news_for(hop, message)
        return hop

    def _news_for(self, peer: NodeId, message: Candidate) -> None:
        news = self._news.get(peer)
        if news is None:
            news = self._news[peer] = tuple(deque(maxlen=MAX_NEWS) for _ in range(RANKS))
        queue = news[message.rank]
        if len(queue) == MAX_NEWS:
            self._dirty.add(peer)  # the oldest falls out: a look through the outbox finds it
        queue.append(message)

    def has_news(self, peer: NodeId) -> bool:
        return any(self._news.get(peer, ()))

    def has_flash_news(self, peer: NodeId) -> bool:
        news = self._news.get(peer)
        return bool(news and news[PRIORITY_RANK[Priority.FLASH]])

    def hop_refused(self, message_id: str, hop: NodeId) -> None:
        """`hop` will not take the message: every link looks for another route, detours
        included, on its next turn."""
        self._avoid.setdefault(message_id, set()).add(hop)
        if len(self._avoid) > MAX_PENDING_RECEIPTS:
            self._avoid.popitem(last=False)
        self._dirty.update(self._linked)
        self._detours.update(self._linked)

    # -- receipts passing through ------------------------------------------------------

    def pass_on(
        self, receipt_id: str, recipient: NodeId, raw: bytes, back: tuple[NodeId, ...]
    ) -> tuple[bool, NodeId | None]:
        """Queue an end-to-end receipt for another node, once, to go `back` along its
        message's path: the nodes it came through, nearest first, its origin last. (False,
        None) if seen before; else True and the link that should take it now (to wake), if
        one of them is linked."""
        if receipt_id in self._passed:
            return False, None
        self._passed[receipt_id] = None
        if len(self._passed) > MAX_PENDING_RECEIPTS * 10:
            self._passed.popitem(last=False)
        hop = self._way_back(back)
        self._receipts.add(receipt_id, recipient, back, raw, hop)
        return True, hop

    @property
    def receipts_waiting(self) -> int:
        """End-to-end receipts waiting for a node on their way back to be linked."""
        return self._receipts.held

    @property
    def receipts_dropped(self) -> int:
        """Waiting receipts that fell out, the oldest first (`MAX_PENDING_RECEIPTS`)."""
        return self._receipts.dropped

    def _way_back(self, back: tuple[NodeId, ...]) -> NodeId | None:
        """The nearest node on a message's path that is linked now. Only those hold the
        message: any other refuses its receipt (anyone can sign receipts for ids that exist
        nowhere), so with none linked the receipt waits for one to be."""
        return next((hop for hop in back if hop in self._linked), None)

    def _receipts_for(self, peer: NodeId) -> tuple[bytes, ...]:
        """The receipts whose way back is the link to `peer` now."""
        return self._receipts.take(peer)

    # -- a link's turn -----------------------------------------------------------------

    def next_batch(self, peer: NodeId, room: Room, now: int, *, sweep: bool = False) -> Batch:
        """What the link to `peer` should send now, with `room` to send (how many, and
        whether only flash: its window is full and only the flash reserve is left).
        `sweep`: the link's sweep came due: it looks through the whole outbox, detours
        included, the net for anything no event announced.

        Routes follow announcements first (at most every `ROUTE_REFRESH_MS`). Receipts
        passing through go whenever the link turns. Then flash news alone, even on a sweep
        (its rows are at hand, and nothing read beside them holds them up); then news
        taken by id (not on a sweep), each still best sent over this link (one the routes
        moved goes to its new link's news; one with no live hop waits for a look); else a look
        through the whole outbox, on a sweep, after routes or links changed, or while the
        last look left rows behind. Never more than `room.count` ids; only flash with
        `room.flash_only`.
        """
        wake = self.refresh_routes(now) or set()
        wake |= self._follow_routes()  # our links or the roster moved them (no announcement)
        receipts = self._receipts_for(peer)
        if room.count <= 0:
            return Batch(receipts, wake=frozenset(wake))
        if self.has_flash_news(peer):
            news, moved = self.take_news(peer, Room(room.count, 0))
            wake |= moved
            if news:
                return Batch(receipts, news=news, flash_alone=True, wake=frozenset(wake))
        if not sweep and self.has_news(peer):
            news, moved = self.take_news(peer, room)
            wake |= moved
            if news:
                return Batch(receipts, news=news, wake=frozenset(wake))
        dirty = peer in self._dirty
        self._dirty.discard(peer)
        detours = peer in self._detours or sweep
        self._detours.discard(peer)
        # A busy window takes only flash: once a look found all the flash waiting, it looks
        # again only when something changes, not at every receipt that frees a place.
        look = dirty or detours or self._drained.get(peer, -1) < max_rank_for(room)
        return Batch(receipts, look=look, detours=detours, wake=frozenset(wake))

    def take_news(self, peer: NodeId, room: Room) -> tuple[tuple[str, ...], set[NodeId]]:
        """Up to `room.count` ids of news for `peer`, flash first (only flash with
        `room.flash_only`), each best sent over this link as the routes stand; and the
        links that news the routes moved went to (to wake). News with no live hop is
        dropped: a look through the outbox finds it when a route appears."""
        news = self._news.get(peer)
        chosen: list[str] = []
        moved: set[NodeId] = set()
        ranks = () if news is None else news[:1] if room.flash_only else news
        others = 0
        for queue in ranks:
            while queue and len(chosen) < room.count:
                if queue is not ranks[0] and others == room.others:
                    return tuple(chosen), moved  # the reserve is flash's alone
                message = queue.popleft()
                hop = self.next_hop(message)
                if hop == peer:
                    chosen.append(message.id)
                    others += message.rank != 0
                elif hop is not None:
                    self._news_for(hop, message)
                    moved.add(hop)
        return tuple(chosen), moved

    def looked(self, peer: NodeId, found: int, room: Room, *, detours: bool = False) -> None:
        """The look through the outbox for `peer` (wide, with `detours`) found `found`
        rows: while it fills the room, more may wait behind them, and the next turn looks
        again, as wide. A look for flash only (a busy window) says nothing of the others:
        the first turn with room for them looks."""
        takes = room.count if room.flash_only else room.others
        if found < takes:  # it took all it found, and none was left for lack of room
            self._drained[peer] = max_rank_for(room)
        else:
            self._drained.pop(peer, None)
            if detours:
                self._detours.add(peer)


def max_rank_for(room: Room) -> int:
    """The largest priority rank (0 flash, 2 routine) a look with `room` takes: flash's
    alone in a busy window."""
    return PRIORITY_RANK[Priority.FLASH] if room.flash_only else RANKS - 1


def read_on(room: Room, chosen: int, others: int, last_rank: int) -> bool:
    """Whether a look through the outbox that has read rows up to one of `last_rank`, and
    chosen `chosen` of them (`others` not flash), may find more for its room further on.
    Rows come flash first: past the flash ones, a room full for others takes no more. (A
    backlog of urgent rows read whole on every look, for the flash reserve it never
    fills, cost a link's turn 39 ms with 10,000 queued, and draining them the square.)"""
    return chosen < room.count and (others < room.others or last_rank == 0)


def look_limit(room: Room, detours: bool, in_flight: int = 0) -> int:
    """How many rows a look through the outbox reads: what the room takes, and what is
    in flight (it rarely takes a row: in-flight messages wait for their retry time);
    three times that for a wide look, where many rows are best sent over other links."""
    return (3 if detours else 1) * (room.count + in_flight)


class _ReceiptsBack:
    """End-to-end receipts passing through, each held under the link that takes it back
    now (None while no node of its message's path is linked), so that a link's turn takes
    its own at once however many wait for others: a relay cut off from a sender held them
    all in one list per recipient, which every turn of every link walked (2.7 ms a turn
    with 10,000 waiting, against 2 µs: bench/receipts_back.py). At most
    `MAX_PENDING_RECEIPTS` for one recipient, the oldest dropped: a node that sends
    through us and stays away cannot crowd out another's."""

    __slots__ = ("_by_link", "_count", "_link_of", "_order", "dropped")

    def __init__(self) -> None:
        # link (None: none yet) -> receipt id -> (recipient, the way back, bytes), in order
        self._by_link: dict[NodeId | None, dict[str, tuple[NodeId, tuple[NodeId, ...], bytes]]]
        self._by_link = {}
        self._link_of: dict[str, NodeId | None] = {}  # each receipt held: its link
        self._order: dict[NodeId, deque[str]] = {}  # per recipient, ids as they came (some gone)
        self._count: dict[NodeId, int] = {}  # per recipient, the receipts held
        self.dropped = 0

    @property
    def held(self) -> int:
        return len(self._link_of)

    def add(
        self,
        receipt_id: str,
        recipient: NodeId,
        back: tuple[NodeId, ...],
        raw: bytes,
        link: NodeId | None,
    ) -> None:
        if receipt_id in self._link_of:
            return  # held already: back again after its id fell out of those passed on
        self._by_link.setdefault(link, {})[receipt_id] = (recipient, back, raw)
        self._link_of[receipt_id] = link
        order = self._order.setdefault(recipient, deque())
        order.append(receipt_id)
        count = self._count[recipient] = self._count.get(recipient, 0) + 1
        if count > MAX_PENDING_RECEIPTS:
            # Its sender has it when it sends again (the receiver answers with it).
            while (oldest := order.popleft()) not in self._link_of:
                pass  # gone back already
            del self._by_link[self._link_of.pop(oldest)][oldest]
            self._count[recipient] -= 1
            self.dropped += 1
        elif len(order) > 2 * count + 64:  # the ids of receipts gone back, cleared now and then
            self._order[recipient] = deque(i for i in order if i in self._link_of)

    def take(self, link: NodeId) -> tuple[bytes, ...]:
        """The receipts held for `link`, no longer held."""
        held = self._by_link.pop(link, None)
        if not held:
            return ()
        for receipt_id, (recipient, _, _) in held.items():
            del self._link_of[receipt_id]
            if count := self._count[recipient] - 1:
                self._count[recipient] = count
            else:
                del self._count[recipient], self._order[recipient]
        return tuple(raw for _, _, raw in held.values())

    def regroup(
        self, link: NodeId | None, way_back: Callable[[tuple[NodeId, ...]], NodeId | None]
    ) -> None:
        """Those held under `link` (gone down; or None: another came up) held again under
        the link `way_back` gives each now."""
        held = self._by_link.pop(link, None)
        for receipt_id, item in (held or {}).items():
            now = way_back(item[1])
            self._by_link.setdefault(now, {})[receipt_id] = item
            self._link_of[receipt_id] = now
