"""Link announcements and routes. Pure: no I/O.

Each node announces the peers it is linked to right now, in a signed,
versioned statement (`seq` only grows; a node's newer announcement replaces
its older one). Announcements flood: a node passes on every announcement
newer than the one it holds, to every peer but the one it came from, and
hands all it holds to a peer that just linked.

Routes: the graph has an edge between two nodes when each announces the
other (a one-sided claim does not carry traffic), plus this node's own live
links. For each destination the candidate next hops are this node's linked
peers, ordered by their distance to the destination in the graph without
this node (so a route never comes back through us); equally near peers in
an order of their own for each destination (a hash of the two ids), so
that traffic spreads over equal hubs instead of all going to the one with
the lowest id, and every node orders the same destination the same way. A message
goes to the first candidate that is up and has not failed it; when none is
left it stays queued until a route appears.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from network.core.crypto import SigningKey
from network.core.errors import MalformedError, StaleAnnouncementError
from network.core.records import (
    PROTOCOL_VERSION,
    Fields,
    NodeId,
    b64encode,
    canonical,
    is_node_id,
    parse_canonical,
)
from network.core.roster import Roster

__all__ = [
    "MAX_ANNOUNCEMENT_BYTES",
    "Announcement",
    "RoutingTable",
    "StaleAnnouncementError",
    "make_announcement",
    "verify_announcement",
]

MAX_ANNOUNCEMENT_BYTES: Final = 8 * 1024
MAX_SEEN_ANNOUNCEMENTS: Final = 4096  # copies recognised without parsing (a few per node)
_CONTEXT: Final = b"cpn/v1 announce\n"


@dataclass(frozen=True, slots=True)
class Announcement:
    node: NodeId
    seq: int
    links: frozenset[NodeId]
    raw: bytes = field(repr=False, compare=False)


def make_announcement(
    node: NodeId, seq: int, links: Iterable[NodeId], key: SigningKey
) -> Announcement:
    listed = sorted(set(links))
    body = {"v": PROTOCOL_VERSION, "node": node, "seq": seq, "links": listed}
    signature = key.sign(_CONTEXT + canonical(body))
    raw = canonical({"announce": body, "sig": b64encode(signature)})
    return Announcement(node, seq, frozenset(listed), raw)


def verify_announcement(
    raw: bytes, roster: Roster, held: Mapping[NodeId, Announcement] | None = None
) -> Announcement:
    """Parse and verify an announcement against the roster; PeerError says why not.

    With `held`, one no newer than the held one raises StaleAnnouncementError
    before its signature is checked: floods bring many copies of each.
    """
    doc = Fields(parse_canonical(raw, limit=MAX_ANNOUNCEMENT_BYTES, what="announcement"), "doc")
    body = doc.any("announce")
    signature = doc.bytes("sig")
    doc.done()
    f = Fields(body, "announce")
    if f.int("v") != PROTOCOL_VERSION:
        raise MalformedError("announce.v: unsupported protocol version")
    node = f.str("node", max_len=3)
    seq = f.int("seq")
    links = f.any("links")
    f.done()
    if not is_node_id(node):
        raise MalformedError(f"announce.node: {node!r} is not a node id")
    if not isinstance(links, list) or len(links) > 1000 or not all(is_node_id(n) for n in links):
        raise MalformedError("announce.links: expected a list of node ids")
    known = held.get(NodeId(node)) if held is not None else None
    if known is not None and known.seq >= seq:
        raise StaleAnnouncementError(f"{node}'s announcement {seq} is not newer than {known.seq}")
    key = roster.active_card(node).signing_key
    key.verify(signature, _CONTEXT + canonical(body), what=f"{node}'s announcement")
    return Announcement(NodeId(node), seq, frozenset(NodeId(n) for n in links), raw)


class RoutingTable:
    """What this node knows of the network's links, and the next hops it implies."""

    def __init__(self, me: NodeId) -> None:
        self.me = me
        self.announcements: dict[NodeId, Announcement] = {}
        self._routes: dict[NodeId, tuple[NodeId, ...]] | None = None
        self._linked: frozenset[NodeId] = frozenset()
        self.stale = False  # announcements changed since the routes were computed
        self._seen: OrderedDict[bytes, None] = OrderedDict()  # announcements already checked

    def accept(self, announcement: Announcement) -> bool:
        """Keep `announcement` if newer than the one held; True when it changed something.

        Routes follow at the next `refresh` (floods bring announcements in bursts;
        the caller decides how often to pay for the computation).
        """
        held = self.announcements.get(announcement.node)
        if held is not None and held.seq >= announcement.seq:
            return False
        self.announcements[announcement.node] = announcement
        self.stale = True
        return True

    def seen(self, raw: bytes) -> bool:
        """Whether these exact bytes were checked already (a flooded copy)."""
        return raw in self._seen

    def remember(self, raw: bytes) -> None:
        self._seen[raw] = None
        if len(self._seen) > MAX_SEEN_ANNOUNCEMENTS:
            self._seen.popitem(last=False)

    def forget(self, node: NodeId) -> None:
        """Drop a node's announcement (it was revoked); routes change at once."""
        if self.announcements.pop(node, None) is not None:
            self._routes = None

    def set_linked(self, linked: Iterable[NodeId]) -> None:
        """Our own live links: routes change at once (a link that is down is never used)."""
        linked = frozenset(linked)
        if linked != self._linked:
            self._linked = linked
            self._routes = None

    def refresh(self) -> None:
        """Recompute the routes if announcements changed since the last time."""
        if self.stale:
            self._routes = None

    @property
    def linked(self) -> frozenset[NodeId]:
        return self._linked

    def next_hops(self, destination: NodeId) -> tuple[NodeId, ...]:
        """The linked peers that can reach `destination`, best first (may be empty)."""
        if self._routes is None:
            self._routes = self._compute()
        return self._routes.get(destination, ())

    def reachable(self) -> Mapping[NodeId, tuple[NodeId, ...]]:
        if self._routes is None:
            self._routes = self._compute()
        return self._routes

    def _compute(self) -> dict[NodeId, tuple[NodeId, ...]]:
        """Every destination's linked peers, nearest first, never through us.

        One breadth-first search from all linked peers at once: each node carries
        a bit set of the peers that have reached it, so a hub with fifty links
        pays for one search, not fifty.
        """
        self.stale = False
        graph = self._graph()
        peers = sorted(self._linked)
        seen: dict[NodeId, int] = {}
        ranked: dict[NodeId, list[int]] = {}  # per destination, the peers reaching it per level
        frontier = {peer: 1 << index for index, peer in enumerate(peers)}
        while frontier:
            for node, arrived in frontier.items():
                seen[node] = seen.get(node, 0) | arrived
                ranked.setdefault(node, []).append(arrived)
            reached: dict[NodeId, int] = {}
            for node, arrived in frontier.items():
                for other in graph.get(node, ()):
                    if other != self.me:
                        new = arrived & ~seen.get(other, 0)
                        if new:
                            reached[other] = reached.get(other, 0) | new
            frontier = reached
        return {
            destination: tuple(
                peer for level in levels for peer in _spread(destination, peers, _bits(level))
            )
            for destination, levels in ranked.items()
            if destination != self.me
        }

    def _graph(self) -> dict[NodeId, set[NodeId]]:
        claims = {node: a.links for node, a in self.announcements.items()}
        graph: dict[NodeId, set[NodeId]] = {node: set() for node in claims}
        for node, links in claims.items():
            for other in links:
                if node in claims.get(other, frozenset()):
                    graph[node].add(other)
                    graph.setdefault(other, set()).add(node)
        graph.setdefault(self.me, set())
        for peer in self._linked:
            graph[self.me].add(peer)
            graph.setdefault(peer, set()).add(self.me)
        return graph


def _spread(destination: NodeId, peers: list[NodeId], indexes: list[int]) -> list[NodeId]:
    """Equally near peers in the order of a hash of (destination, peer): fixed for each
    destination, and different from one destination to the next."""
    if len(indexes) == 1:
        return [peers[indexes[0]]]
    tied = [peers[i] for i in indexes]
    return sorted(tied, key=lambda peer: zlib.crc32(f"{destination}>{peer}".encode()))


def _bits(mask: int) -> list[int]:
    """The positions of the set bits of `mask`, lowest first."""
    positions = []
    while mask:
        low = mask & -mask
        positions.append(low.bit_length() - 1)
        mask ^= low
    return positions
