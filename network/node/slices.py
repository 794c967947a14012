"""A batch's work on the event loop in slices, so that what arrives meanwhile gets in.

A round of submissions sealed back to back (16 seals) and a receiver's batch of 32
envelopes checked and opened took 3 to 15 ms each in one go on the loop; a flash message
that arrived meanwhile (a request, a frame) waited for all of it. `await slices.next()`
between items gives the loop a turn once the slice has run `SLICE_S`: what is ready
runs, then the batch goes on.

On only where it is turned on (`cpn node run`: one node, its loop its own). With many
nodes on one loop, as the network simulation runs them, each turn is a pass through all
their queues, and slicing slowed it.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

__all__ = ["SLICE_S", "Slices"]

# The longest a batch runs on the loop between two turns.
SLICE_S = 0.001


class Slices:
    """`await slices.next()` between a batch's items: a turn of the loop once `SLICE_S`
    has run since the last (nothing while `Slices.on` is false)."""

    on: ClassVar[bool] = False  # set by `cpn node run` for its process

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def next(self) -> None:
        if Slices.on and time.perf_counter() - self._since >= SLICE_S:
            await asyncio.sleep(0)
            self._since = time.perf_counter()
