"""Lanes: a flash message's work ahead of the rest on a node's event loop
(network.node.lanes), through the store's hops and its write lock too.

Each test runs its own `LaneLoop`, the loop `cpn node run` serves on, with real stores in
a temporary folder where it needs one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from network.node import lanes
from network.node.lanes import FLASH, Lane, LaneLoop, Slices, working_in
from network.node.store import Store, _on_thread, _queued_on_thread
from tests.harness import until

T = TypeVar("T")
T0 = 1_760_000_000_000


def on_lane_loop(scenario: Callable[[], Awaitable[T]]) -> T:
    loop = LaneLoop()
    try:
        return loop.run_until_complete(scenario())
    finally:
        loop.close()


def busy(seconds: float) -> None:
    """Work on the loop's thread (not a wait): it holds the loop for `seconds`."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_callback_scheduled_in_a_lane_ahead_runs_before_those_waiting() -> None:
    order: list[object] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        lane = Lane()
        for n in range(3):
            loop.call_soon(order.append, n)
        with working_in(lane):
            loop.call_soon(order.append, "lane, not ahead")
            lane.ahead = True
            loop.call_soon(order.append, "lane, ahead")
        with working_in(FLASH):
            loop.call_soon(order.append, "flash")
        loop.call_soon(order.append, 3)
        await until(lambda: len(order) == 7)

    on_lane_loop(scenario)

    assert order == ["flash", "lane, ahead", 0, 1, 2, "lane, not ahead", 3]


def test_a_task_in_the_flash_lane_takes_every_step_before_the_others_waiting() -> None:
    order: list[str] = []

    async def plain(n: int) -> None:
        for _ in range(3):
            await asyncio.sleep(0)  # a step: its place in the loop's queue is what is tested
        order.append(f"plain {n}")

    async def flash() -> None:
        with working_in(FLASH):
            for _ in range(3):
                await asyncio.sleep(0)  # each step would go behind all 20 on asyncio's loop
            order.append("flash")

    async def scenario() -> None:
        tasks = [asyncio.create_task(plain(n)) for n in range(20)]
        tasks.append(asyncio.create_task(flash()))
        await asyncio.gather(*tasks)

    on_lane_loop(scenario)

    assert order[0] == "flash" and len(order) == 21


def test_the_lane_is_the_tasks_and_ends_with_the_block() -> None:
    async def scenario() -> tuple[Lane | None, Lane | None, Lane | None]:
        with working_in(FLASH):
            inside = lanes.current()
            started = await asyncio.create_task(_current())  # a task started here inherits it
        return inside, started, lanes.current()

    inside, started, after = on_lane_loop(scenario)

    assert inside is FLASH and started is FLASH and after is None


async def _current() -> Lane | None:
    return lanes.current()


def test_a_batch_worked_through_in_slices_lets_a_flash_task_in() -> None:
    """A receiver's batch of envelopes took 3 to 15 ms in one go; a flash envelope that came
    meanwhile waited for all of it. In slices, it waits for one."""
    finished: dict[str, float] = {}

    async def batch() -> None:
        slices = Slices()
        for _ in range(40):
            busy(0.0005)  # checking and opening one envelope
            await slices.next()
        finished["batch"] = time.perf_counter()

    async def flash(started: asyncio.Event, woken: asyncio.Event) -> None:
        with working_in(FLASH):
            started.set()
            await woken.wait()
            finished["flash"] = time.perf_counter()

    async def scenario() -> None:
        started, woken = asyncio.Event(), asyncio.Event()
        waiting = asyncio.create_task(flash(started, woken))
        await started.wait()
        asyncio.get_running_loop().call_later(0.003, woken.set)  # 3 ms into a 20 ms batch
        await asyncio.gather(batch(), waiting)

    on_lane_loop(scenario)

    assert finished["flash"] < finished["batch"]


def test_a_store_hop_of_a_task_in_a_lane_ahead_comes_back_ahead(tmp_path: Path) -> None:
    """aiosqlite hands a result back behind every callback already waiting; a flash task's
    comes back before them (`store._queued_on_thread`)."""
    order: list[object] = []

    async def scenario() -> None:
        store = await Store.open(tmp_path / "node.sqlite")
        loop = asyncio.get_running_loop()
        try:
            begun, go, handed_back = threading.Event(), threading.Event(), threading.Event()

            def read(conn: Any) -> object:
                begun.set()
                assert go.wait(10)  # ends once the 50 callbacks wait on the loop
                return conn.execute("SELECT COUNT(*) FROM messages").fetchone()

            async def flash() -> None:
                with working_in(FLASH):
                    await _on_thread(store.db, read)
                order.append("flash")

            task = asyncio.create_task(flash())
            await until(begun.is_set)  # its read is on the reader's thread
            for n in range(50):
                loop.call_soon(order.append, n)
            go.set()
            # The reader's thread takes its work in order: once this runs, the read has
            # been handed back to the loop, which stayed busy here meanwhile.
            after = _queued_on_thread(store.db, lambda _: handed_back.set())
            assert handed_back.wait(10)
            await task
            await after
        finally:
            await store.close()

    on_lane_loop(scenario)

    assert order[0] == "flash" and order[1:] == list(range(50))


def test_a_flash_transaction_puts_the_holder_of_the_write_lock_ahead(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        store = await Store.open(tmp_path / "node.sqlite")
        try:
            held, go = asyncio.Event(), asyncio.Event()

            async def holder() -> None:
                async with store.transaction(T0):
                    seen["holder"] = lanes.current()
                    seen["ahead before"] = seen["holder"].ahead
                    held.set()
                    await go.wait()

            async def urgent() -> None:
                async with store.transaction(T0, officer=True):
                    pass

            async def flash() -> None:
                async with store.transaction(T0, urgent=True):
                    seen["flash"] = lanes.current()

            first = asyncio.create_task(holder())
            await held.wait()
            others = asyncio.create_task(urgent())
            await until(lambda: store.queued_transactions == 1)
            seen["ahead for an officer"] = seen["holder"].ahead
            flashing = asyncio.create_task(flash())
            await until(lambda: store.queued_transactions == 2)
            seen["ahead for flash"] = seen["holder"].ahead
            go.set()
            await asyncio.gather(first, others, flashing)
            seen["after"] = lanes.current()
        finally:
            await store.close()

    on_lane_loop(scenario)

    assert seen["ahead before"] is False and seen["ahead for an officer"] is False
    assert seen["ahead for flash"] is True
    assert seen["flash"].ahead and seen["after"] is None
