"""Live events for the console: a small publish/subscribe hub inside one node.

Rules:
- `publish` never blocks and never fails: each subscriber has a bounded
  queue, and one that is full (a slow or dead reader) is dropped, so that no
  reader can hold the node back. A dropped subscriber reads its queue's end
  and then `None`; the console reconnects and reloads what it shows.
- At most `max_subscribers` at once; `subscribe` raises HubFullError past that.
- `close` (the node stops) ends every subscription the same way.
- Events are small JSON objects naming what happened (`kind`: message,
  receipt, state, alert) and the message concerned; never a body.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from network.core.errors import HubFullError

__all__ = ["MAX_QUEUED", "MAX_SUBSCRIBERS", "Hub", "HubFullError", "Subscription"]

MAX_QUEUED: Final = 256
"""Events a subscriber may have waiting before it is dropped."""

MAX_SUBSCRIBERS: Final = 100

Event = dict[str, Any]


class Subscription:
    """One reader's queue. `next` yields events, then `None` once dropped or closed."""

    def __init__(self, hub: Hub, size: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=size)
        self.dropped = False

    def _offer(self, event: Event) -> bool:
        """Queue `event`; False (and this subscription ended) if the queue is full."""
        try:
            self._queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            self._end()
            return False

    def _end(self) -> None:
        # What is still queued is stale for a reader that must reload anyway: replace it
        # with the end mark, which then always fits.
        self.dropped = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self, timeout: float) -> Event | bool | None:
        """The next event; `None` once ended; False when `timeout` seconds pass without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return False

    def close(self) -> None:
        """Stop receiving (the reader went away)."""
        self._hub._subscribers.discard(self)


class Hub:
    def __init__(
        self, *, max_queued: int = MAX_QUEUED, max_subscribers: int = MAX_SUBSCRIBERS
    ) -> None:
        self._subscribers: set[Subscription] = set()
        self._max_queued = max_queued
        self._max_subscribers = max_subscribers
        self.closed = False

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        """A new subscription. Raises HubFullError at `max_subscribers`, or once closed."""
        if self.closed:
            raise HubFullError("the node is stopping")
        if len(self._subscribers) >= self._max_subscribers:
            raise HubFullError(f"too many live event readers (at most {self._max_subscribers})")
        subscription = Subscription(self, self._max_queued)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, event: Event) -> None:
        """Offer `event` to every subscriber; drop those whose queue is full."""
        for subscription in list(self._subscribers):
            if not subscription._offer(event):
                self._subscribers.discard(subscription)

    def close(self) -> None:
        """End every subscription; no new ones."""
        self.closed = True
        for subscription in self._subscribers:
            subscription._end()
        self._subscribers.clear()
