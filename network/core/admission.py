"""Which connections a server holds when more arrive than it will hold.

Anyone who can reach a listening port can open connections and send nothing, each
costing the node a file descriptor and memory; past the process's limit on
descriptors, nothing more opens: no peer links, no API, no file. A genuine peer or
officer must still get in. Two servers, two policies.

`PendingHandshakes`, the peer server's: a connection accepted and not yet through its
handshakes (TLS, WebSocket upgrade, signed hello) is held until its timeout. So:

- at most `limit` are held in all; one more shuts one already held, never refuses the
  newest outright while it can take a stranger's place;
- at most `per_source` from one address that is not a roster host: a flood from one
  address pushes out only its own;
- addresses that are not roster hosts hold at most `limit - reserved` together: the
  rest is kept for the contact points' own addresses (the hosts of their card URLs);
- when room must be made, the oldest of the stranger address holding the most goes
  first; only when no stranger holds any does a roster host lose its oldest, and a
  roster host holds at most `per_roster_host`.

`OpenConnections`, the HTTP API's: every connection is held, idle (new, between
requests, or with a request still arriving) or busy (a request being handled). At most
`limit` in all; one more arriving at the limit closes the oldest idle connection of the
address holding the most idle ones, and is turned away only when every one is busy. A
request being handled is never cut to make room; an idle connection closed is one its
client opens again.

Sans I/O: connections are opaque keys; the server shuts what `arrive` names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["OpenConnections", "PendingHandshakes"]

K = TypeVar("K", bound=Hashable)


class PendingHandshakes(Generic[K]):
    """The connections held whose handshakes have not finished, by source address."""

    def __init__(
        self,
        *,
        limit: int,
        per_source: int,
        per_roster_host: int,
        reserved: int,
        roster_hosts: Iterable[str] = (),
    ) -> None:
        if not 0 <= reserved < limit or per_source < 1 or per_roster_host < 1:
            raise ValueError("need 0 <= reserved < limit and positive per-source bounds")
        self.limit = limit
        self.per_source = per_source
        self.per_roster_host = per_roster_host
        self.reserved = reserved
        self.roster_hosts = frozenset(roster_hosts)
        self._held: OrderedDict[K, str] = OrderedDict()  # oldest first -> source
        self._by_source: dict[str, OrderedDict[K, None]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._held))

    def __contains__(self, conn: object) -> bool:
        return conn in self._held

    def held_from(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    @property
    def held_from_strangers(self) -> int:
        return sum(len(c) for s, c in self._by_source.items() if s not in self.roster_hosts)

    def set_roster_hosts(self, hosts: Iterable[str]) -> None:
        """The addresses of the contact points in the roster now held."""
        self.roster_hosts = frozenset(hosts)

    def arrive(self, conn: K, source: str) -> list[K]:
        """Hold `conn` from `source`; returns the connections to shut to make room (it may
        be `conn` itself, when only roster hosts hold slots and it is a stranger's)."""
        evict: list[K] = []
        host = source in self.roster_hosts
        own = self._by_source.get(source)
        if own is not None and len(own) >= (self.per_roster_host if host else self.per_source):
            evict.append(next(iter(own)))
        elif len(self._held) >= self.limit or (
            not host and self.held_from_strangers >= self.limit - self.reserved
        ):
            victim = self._victim(host)
            if victim is None:
                return [conn]  # a stranger, and roster hosts hold every slot
            evict.append(victim)
        for old in evict:
            self.settle(old)
        self._held[conn] = source
        self._by_source.setdefault(source, OrderedDict())[conn] = None
        return evict

    def settle(self, conn: K) -> None:
        """`conn` finished its handshakes, failed them, or was shut: no longer held."""
        source = self._held.pop(conn, None)
        if source is None:
            return
        own = self._by_source[source]
        del own[conn]
        if not own:
            del self._by_source[source]

    def _victim(self, for_roster_host: bool) -> K | None:
        """The oldest connection of the stranger address holding the most; for a roster
        host when no stranger holds any, the oldest of the roster host holding the most."""
        strangers = [s for s in self._by_source if s not in self.roster_hosts]
        pool = strangers or (list(self._by_source) if for_roster_host else [])
        if not pool:
            return None
        # The most held; between equals, the one whose oldest came first.
        order = {conn: i for i, conn in enumerate(self._held)}
        source = max(pool, key=lambda s: (len(self._by_source[s]), -order[self._first(s)]))
        return self._first(source)

    def _first(self, source: str) -> K:
        return next(iter(self._by_source[source]))


class OpenConnections(Generic[K]):
    """The connections an HTTP server holds, by source address, each idle or busy."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("need a positive limit")
        self.limit = limit
        self._source: dict[K, str] = {}  # every connection held -> its source
        self._idle: dict[str, OrderedDict[K, None]] = {}  # by source, oldest idle first

    def __len__(self) -> int:
        return len(self._source)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._source))

    def __contains__(self, conn: object) -> bool:
        return conn in self._source

    @property
    def idle(self) -> int:
        return sum(len(own) for own in self._idle.values())

    def arrive(self, conn: K, source: str) -> list[K]:
        """Hold `conn` from `source`, idle; returns the connections to close to make room:
        an idle one held, or `conn` itself when every one held is busy."""
        evict: list[K] = []
        if len(self._source) >= self.limit:
            if not self._idle:
                return [conn]
            # The address holding the most idle connections loses its oldest.
            own = max(self._idle.values(), key=lambda idle: len(idle))
            victim = next(iter(own))
            self.left(victim)
            evict.append(victim)
        self._source[conn] = source
        self._idle.setdefault(source, OrderedDict())[conn] = None
        return evict

    def busy(self, conn: K) -> None:
        """A request on `conn` is being handled: it is not closed to make room."""
        source = self._source.get(conn)
        if source is None:
            return
        own = self._idle.get(source)
        if own is not None and conn in own:
            del own[conn]
            if not own:
                del self._idle[source]

    def done(self, conn: K) -> None:
        """`conn`'s request is answered: idle again, the newest of its address."""
        source = self._source.get(conn)
        if source is not None:
            self._idle.setdefault(source, OrderedDict())[conn] = None

    def left(self, conn: K) -> None:
        """`conn` is closed: no longer held."""
        self.busy(conn)
        self._source.pop(conn, None)
