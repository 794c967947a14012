"""Slices (network.node.slices): a batch's work on the loop in pieces, so that a flash
message that arrives meanwhile gets in. Each test runs the loop `cpn node run` serves on."""

from __future__ import annotations

import asyncio
import time

import pytest

from network.node.runner import new_event_loop
from network.node.slices import Slices


def busy(seconds: float) -> None:
    """Work on the loop's thread (not a wait): it holds the loop for `seconds`."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def batch_and_flash() -> list[str]:
    """A batch of 40 items of 0.5 ms each, and a flash task that the batch's seventh item
    wakes (as a flash frame read meanwhile would): which finished first."""
    finished: list[str] = []

    async def batch(woken: asyncio.Event) -> None:
        slices = Slices()
        for item in range(40):
            busy(0.0005)  # checking and opening one envelope
            if item == 6:
                woken.set()
            await slices.next()
        finished.append("batch")

    async def flash(started: asyncio.Event, woken: asyncio.Event) -> None:
        started.set()
        await woken.wait()
        finished.append("flash")

    async def scenario() -> None:
        started, woken = asyncio.Event(), asyncio.Event()
        waiting = asyncio.create_task(flash(started, woken))
        await started.wait()
        await asyncio.gather(batch(woken), waiting)

    loop = new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    return finished


def test_a_batch_worked_through_in_slices_lets_a_flash_task_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A receiver's batch of envelopes took 3 to 15 ms in one go; a flash envelope that came
    meanwhile waited for all of it. In slices, it waits for one or two."""
    monkeypatch.setattr(Slices, "on", True)  # as `cpn node run` sets it

    assert batch_and_flash() == ["flash", "batch"]


def test_off_a_batch_runs_in_one_go() -> None:
    """Off (many nodes on one loop: the network simulation), the flash task waits for the
    whole batch: what the test above would see without the slices."""
    assert Slices.on is False

    assert batch_and_flash() == ["batch", "flash"]
