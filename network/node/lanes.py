"""Which work the event loop runs first: a flash message's, ahead of the rest.

asyncio runs ready callbacks in the order they were scheduled. Under load a turn of
the loop runs hundreds of them, and each step of a flash message (each await that
its task wakes from) waited for all those scheduled before it: at 90% load, ten or
so such steps on each node made most of a flash message's time.

A task works in a `Lane` (a context variable: the tasks it starts inherit it), and
`LaneLoop` runs a callback scheduled in a lane that is `ahead` before every other
waiting callback. The lane is an object, not a flag, so that it can be put ahead
while its tasks wait: a link's feed when a flash message is queued for it, the
holder of the store's write lock when a flash transaction waits for it (priority
inheritance). What a store thread hands back is scheduled in the context of the
task that asked (`network.node.store`), so a flash task's hops come back first too.
Only what is scheduled to run soon is reordered: I/O and timers keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["FLASH", "SLICE_S", "Lane", "LaneLoop", "Slices", "current", "enter", "working_in"]

# The longest a task runs on the loop between two looks at what else waits, when it
# works through a batch (`Slices`): a receiver's batch of 32 envelopes took 3 to 15 ms
# to check and open in one go, and a flash envelope that came meanwhile waited for it.
SLICE_S = 0.001


class Lane:
    """Work that goes ahead of the rest while `ahead` is set."""

    __slots__ = ("ahead",)

    def __init__(self, *, ahead: bool = False) -> None:
        self.ahead = ahead


FLASH = Lane(ahead=True)  # a flash message's work: always ahead

_LANE: contextvars.ContextVar[Lane | None] = contextvars.ContextVar("lane", default=None)


def current() -> Lane | None:
    """The lane the current task works in (None: the common one)."""
    return _LANE.get()


def enter(lane: Lane) -> None:
    """The current task works in `lane` from now on, and so do the tasks it starts."""
    _LANE.set(lane)


@contextlib.contextmanager
def working_in(lane: Lane | None) -> Iterator[None]:
    """The current task works in `lane` until the block ends (None: no change)."""
    if lane is None:
        yield
        return
    token = _LANE.set(lane)
    try:
        yield
    finally:
        _LANE.reset(token)


class Slices:
    """A batch's work on the loop in slices: `await slices.next()` between items lets the
    loop run what waits (I/O, a lane ahead) once the slice has run `SLICE_S`. Only on a
    `LaneLoop`: on another there is nothing to let ahead, and each turn is a pass through
    the whole queue (the network simulation runs 48 nodes on one loop)."""

    __slots__ = ("_since", "_sliced")

    def __init__(self) -> None:
        self._since = time.perf_counter()
        self._sliced = isinstance(asyncio.get_running_loop(), LaneLoop)

    async def next(self) -> None:
        if self._sliced and time.perf_counter() - self._since >= SLICE_S:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


class LaneLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, but a callback scheduled in a lane that is ahead goes before
    every other waiting callback (the latest of them first)."""

    def _call_soon(
        self, callback: Callable[..., Any], args: Any, context: contextvars.Context | None
    ) -> asyncio.Handle:
        # `call_soon` and `call_soon_threadsafe` both come here; with no context given,
        # the callback runs in the context of the code that scheduled it.
        lane = _LANE.get() if context is None else context.get(_LANE)
        if lane is None or not lane.ahead:
            return super()._call_soon(callback, args, context)  # type: ignore[misc,no-any-return]
        handle = asyncio.Handle(callback, args, self, context)
        # One append, so that a store thread scheduling here needs no lock beside the loop.
        self._ready.appendleft(handle)  # type: ignore[attr-defined]
        return handle
