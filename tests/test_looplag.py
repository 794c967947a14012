"""network/node/looplag.py: how late the loop runs its timers, on a real event loop."""

from __future__ import annotations

import asyncio
import contextlib

from network.node.looplag import BOUNDS_S, LoopLag
from tests.harness import pause, until


def test_each_lateness_goes_to_the_first_bucket_whose_bound_holds_it() -> None:
    lag = LoopLag()
    for late_s in (0.0, 0.001, 0.0011, 0.05, 2.0):
        lag.observe(late_s)

    expected = [0] * (len(BOUNDS_S) + 1)
    for bucket in (0, BOUNDS_S.index(0.001), BOUNDS_S.index(0.002), BOUNDS_S.index(0.05)):
        expected[bucket] += 1  # a bound holds what equals it (Prometheus's `le`)
    expected[-1] += 1  # past the last bound
    assert lag.counts == expected
    assert abs(lag.total_s - 2.0521) < 1e-9


async def test_a_turn_that_holds_the_loop_is_counted_as_late() -> None:
    lag = LoopLag()
    watch = asyncio.create_task(lag.watch(every_s=0.01))
    await until(lambda: sum(lag.counts) >= 1)  # a timer ran, and the next is set
    assert lag.watching
    before, total_before = list(lag.counts), lag.total_s

    pause(0.06, "a turn that holds the loop for 60 ms: what the timers measure")
    await until(lambda: sum(lag.counts) > sum(before))

    # The timer set before the hold was due at most 10 ms into it: it ran 50 ms late.
    late = [after - was for after, was in zip(lag.counts, before, strict=True)]
    assert sum(late[BOUNDS_S.index(0.05) :]) >= 1
    assert lag.total_s - total_before >= 0.05
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch
    assert not lag.watching
