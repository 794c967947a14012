"""network.node.eager: a coroutine started at once behaves as the task it becomes.

Each program is run twice on a real event loop, once by `start_now` and once as a task
(`asyncio.ensure_future`); what it did, in order, and how it ended must be the same, and
`start_now` must have run its steps up to its first wait before it returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from network.node.eager import start_now
from tests.harness import until

pytestmark = pytest.mark.timeout(60)

# A program's steps: wait for a future the test sets (a result or an error), a bare yield
# (as `asyncio.sleep(0)`), a step of work, or an end (return, raise).
STEPS = st.lists(st.sampled_from(["future", "failing", "yield", "work"]), max_size=6)
ENDS = st.sampled_from(["return", "raise"])


class Boom(Exception):
    pass


def program(
    steps: list[str], end: str, trace: list[str], futures: list[asyncio.Future[int]]
) -> Coroutine[Any, Any, str]:
    async def run() -> str:
        for i, step in enumerate(steps):
            trace.append(f"step {i}")
            if step in ("future", "failing"):
                future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                futures.append(future)
                try:
                    trace.append(f"got {await future}")
                except Boom:
                    trace.append("caught")
                except asyncio.CancelledError:
                    trace.append("cancelled where it waited")
                    raise
            elif step == "yield":
                await asyncio.sleep(0)
        if end == "raise":
            raise Boom("the end")
        return "done"

    return run()


async def drive(
    start: Callable[[Coroutine[Any, Any, str]], asyncio.Future[str]],
    steps: list[str],
    end: str,
    cancel_at: int | None,
) -> tuple[list[str], str]:
    """Run `steps` started by `start`, settling from outside each future the program waits
    for, once it waits for it; cancel it at its `cancel_at`th wait instead, if given."""
    trace: list[str] = []
    futures: list[asyncio.Future[int]] = []
    outcome = start(program(steps, end, trace, futures))
    trace.append("started")
    kinds = [step for step in steps if step in ("future", "failing")]
    for index, kind in enumerate(kinds):
        await until(lambda n=index: outcome.done() or len(futures) > n)
        if outcome.done():
            break
        if index == cancel_at:
            outcome.cancel()
            break
        if kind == "future":
            futures[index].set_result(index)
        else:
            futures[index].set_exception(Boom("failing"))
    await until(outcome.done)
    if outcome.cancelled():
        return trace, "cancelled"
    if (error := outcome.exception()) is not None:
        return trace, f"raised {error}"
    return trace, f"returned {outcome.result()}"


def steps_taken(trace: list[str]) -> list[str]:
    """What the program did, in order, without where it was started."""
    return [entry for entry in trace if entry != "started"]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(steps=STEPS, end=ENDS, cancel_at=st.none() | st.integers(0, 3))
def test_a_coroutine_started_now_does_what_its_task_would(
    steps: list[str], end: str, cancel_at: int | None
) -> None:
    async def both() -> None:
        eager = await drive(start_now, steps, end, cancel_at)
        task = await drive(asyncio.ensure_future, steps, end, cancel_at)
        assert eager[1] == task[1]  # how it ended
        assert steps_taken(eager[0]) == steps_taken(task[0])
        # The eager one ran its steps up to its first wait before `start_now` returned.
        first_wait = next(
            (i for i, step in enumerate(steps) if step in ("future", "failing", "yield")),
            None,
        )
        assert eager[0].index("started") == (len(steps) if first_wait is None else first_wait + 1)
        assert task[0][0] == "started"

    asyncio.run(both())


def test_a_lock_taken_before_the_first_wait_is_let_go_when_cancelled_before_its_task_ran() -> None:
    """Cancelled before its task's first step, the coroutine is told where it waits: what
    it holds is let go then, as a task's would be, not when the collector finds it."""

    async def main() -> None:
        lock = asyncio.Lock()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def holds() -> None:
            async with lock:
                await never

        started = start_now(holds())
        assert lock.locked()
        started.cancel()
        await asyncio.gather(started, return_exceptions=True)
        assert started.cancelled() and not lock.locked() and never.cancelled()

    asyncio.run(main())
