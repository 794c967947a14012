"""How late the event loop runs what is due: the wait a flash message has at each step.

A flash message goes first at every stage, but each stage still waits for the loop to
finish the turn it is in (docs/PERFORMANCE.md: at 90% load a sender's turns ran 6 ms
late at p99). A timer due every `EVERY_S` measures it: how late each one ran is counted
in the buckets of `BOUNDS_S`, which the metrics serve as `cpn_loop_lag_seconds`.

On only in `cpn node run`, where the loop runs one node: `PROCESS.watching` says so. The
network simulation runs many nodes on one loop and would pay a timer for each.
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Final

__all__ = ["BOUNDS_S", "EVERY_S", "PROCESS", "LoopLag"]

EVERY_S: Final = 0.05
# Upper bounds (seconds, inclusive, as Prometheus's `le`); one more bucket past the last.
# Fine below 20 ms, where a flash message's budget is spent (its aim: 20 ms end to end).
BOUNDS_S: Final = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


class LoopLag:
    """How late the loop's timers ran: a count per bucket of `BOUNDS_S`, and the sum."""

    __slots__ = ("counts", "total_s", "watching")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS_S) + 1)
        self.total_s = 0.0
        self.watching = False

    def observe(self, late_s: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS_S, late_s)] += 1
        self.total_s += late_s

    async def watch(self, every_s: float = EVERY_S) -> None:
        """Until cancelled: a timer every `every_s`, and how late each ran."""
        loop = asyncio.get_running_loop()
        self.watching = True
        try:
            while True:
                due = loop.time() + every_s
                await asyncio.sleep(every_s)
                self.observe(max(0.0, loop.time() - due))
        finally:
            self.watching = False


PROCESS: Final = LoopLag()  # this process's loop (`cpn node run`)
