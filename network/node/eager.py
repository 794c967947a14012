"""A coroutine run at once, up to its first wait, and then as a task.

A task made in a callback (a frame just read) runs at the loop's next turn, after all
that was ready before it: at 90% load a turn of the sender's loop took 1 to 5 ms, and a
flash receipt's task waited for one (docs/PERFORMANCE.md, thirty-first session). Run at
once, a step that needs no wait (a check, a transaction whose lock is free and whose
COMMIT runs on the loop) is done before the callback returns. What Python 3.12 gives as
eager tasks (`asyncio.eager_task_factory`); the node runs on 3.11.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["start_now"]

T = TypeVar("T")


def start_now(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """`coro` run now until it first waits, then as a task; its outcome, as a task's: a
    result, an exception, or cancelled."""
    loop = asyncio.get_running_loop()
    try:
        waited = coro.send(None)
    except StopIteration as done:
        finished: asyncio.Future[T] = loop.create_future()
        finished.set_result(done.value)
        return finished
    except asyncio.CancelledError:
        finished = loop.create_future()
        finished.cancel()
        return finished
    except Exception as exc:
        finished = loop.create_future()
        finished.set_exception(exc)
        return finished
    return loop.create_task(_Started(coro, waited))


class _Started(Coroutine[Any, Any, T]):
    """A coroutine already started, as a task drives it: the task's first step is given
    what it first waited for, and every later one goes to it. Even a cancellation before
    that first step reaches the coroutine where it waits (and, as a task does, cancels
    what it waited for), so that its `finally` runs then (a lock it took is let go), not
    when the collector finds it."""

    __slots__ = ("_coro", "_fresh", "_waited")

    def __init__(self, coro: Coroutine[Any, Any, T], waited: Any) -> None:
        self._coro = coro
        self._waited = waited  # a future it awaits, or None: a bare yield
        self._fresh = True

    def send(self, value: Any) -> Any:
        if self._fresh:
            self._fresh = False
            return self._waited
        return self._coro.send(value)

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: BaseException | object = None,
        tb: TracebackType | None = None,
    ) -> Any:
        if self._fresh:
            self._fresh = False
            if isinstance(self._waited, asyncio.Future):
                self._waited.cancel()  # as a task cancels the future it waits for
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # type: ignore[arg-type]

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()
