"""A TCP proxy on loopback that cuts, delays and flaps the link between two nodes.

The roster points a node's peers at the proxy (`Network(proxied=...)`); the
proxy forwards each connection to where the node really listens. The bytes
are TLS, so the proxy works on connections and on time, never on content:

- `partition()`: every open connection is reset (RST, as a dropped route
  looks to TCP once it gives up) and new ones are refused until `heal()`;
- `delay(seconds)`: every chunk is held that long in each direction, in order;
- `flap(...)`: partitions and heals on a schedule drawn from a seeded random
  generator, so a failing run names its seed.

Reordering is not offered: bytes reordered inside one TLS stream are only
corruption (TLS refuses them and the link is redialled, which `partition`
already covers), and the link protocol keeps one connection per peer, so no
two connections race each other's messages.

`Proxy` runs its own event loop in a thread, so that a synchronous test can
drive it between calls to the nodes' HTTP APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tests.harness import pause_async

__all__ = ["FlapSchedule", "Proxy"]

T = TypeVar("T")

CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class FlapSchedule:
    """Alternating up and down periods, each drawn uniformly from its range, from `seed`."""

    seed: int
    up: tuple[float, float] = (0.3, 1.5)
    down: tuple[float, float] = (0.1, 1.0)

    def periods(self) -> list[tuple[float, float]]:
        """(up, down) pairs, enough for ten minutes: the same ones for the same seed."""
        rng = random.Random(self.seed)
        return [(rng.uniform(*self.up), rng.uniform(*self.down)) for _ in range(1000)]


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ended: int = 0  # directions that saw their end of stream

    def reset(self) -> None:
        """Close both sides with RST (SO_LINGER 0), as a connection torn by the network."""
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class Proxy:
    """Forward what `listening` accepts to 127.0.0.1:`target_port`, with faults on demand.

    `listening` is a socket already listening (the harness bound it to port 0 before the
    roster named its port); the proxy serves on it and closes it with itself."""

    def __init__(self, listening: socket.socket, target_port: int) -> None:
        self.listening = listening
        self.target_port = target_port
        self.up = True
        self.latency = 0.0
        self.accepted = 0  # connections forwarded
        self.refused = 0  # connections refused while partitioned
        self.partitions = 0  # times the link went down
        self._pipes: set[_Pipe] = set()
        self._flapping: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # -- driven from the test's thread -----------------------------------------------

    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def partition(self) -> None:
        self._call(self._partition())

    def heal(self) -> None:
        self._call(self._heal())

    def delay(self, seconds: float) -> None:
        """Hold every chunk `seconds` before passing it on (0: no delay)."""
        self.latency = seconds

    def flap(self, schedule: FlapSchedule) -> None:
        """Go down and up by `schedule` until `heal()` (which leaves the link up)."""
        self._call(self._start_flapping(schedule))

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    # -- in the proxy's loop -----------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, sock=self.listening)

    async def _close(self) -> None:
        await self._stop_flapping()
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.reset()
        self._pipes.clear()

    async def _partition(self) -> None:
        await self._stop_flapping()
        self._down()

    async def _heal(self) -> None:
        await self._stop_flapping()
        self.up = True

    def _down(self) -> None:
        if self.up:
            self.partitions += 1
        self.up = False
        for pipe in list(self._pipes):
            pipe.reset()
        self._pipes.clear()

    async def _start_flapping(self, schedule: FlapSchedule) -> None:
        await self._stop_flapping()
        self._flapping = asyncio.create_task(self._flap(schedule))

    async def _stop_flapping(self) -> None:
        if self._flapping is not None:
            self._flapping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flapping
            self._flapping = None

    async def _flap(self, schedule: FlapSchedule) -> None:
        for up, down in schedule.periods():
            self.up = True
            await pause_async(up, "the link up, for a period drawn from the seed")
            self._down()
            await pause_async(down, "the link down, for a period drawn from the seed")
        self.up = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.refused += 1
            _Pipe(writer, writer).reset()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the node is down: refuse as it would
            _Pipe(writer, writer).reset()
            return
        if not self.up:  # partitioned while connecting
            _Pipe(writer, upstream).reset()
            return
        self.accepted += 1
        pipe = _Pipe(writer, upstream)
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(self._pump(reader, upstream, pipe)),
            asyncio.create_task(self._pump(upstream_reader, writer, pipe)),
        ]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: _Pipe
    ) -> None:
        """Copy one direction; with a delay, each chunk leaves `latency` after it came, in order.

        A bounded queue between reading and writing keeps TCP's back-pressure."""
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)
        sender = asyncio.create_task(self._release(held, writer))
        try:
            while chunk := await reader.read(CHUNK):
                await held.put((time.monotonic() + self.latency, chunk))
            await held.put((time.monotonic() + self.latency, b""))  # then pass the EOF on
            await sender
            pipe.ended += 1
        except OSError:
            pass
        finally:
            sender.cancel()
            if pipe.ended in (0, 2) or not reader.at_eof():  # broken, or both ends done
                self._pipes.discard(pipe)
                pipe.reset()

    @staticmethod
    async def _release(
        held: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, chunk = await held.get()
            wait = due - time.monotonic()
            if wait > 0:
                await pause_async(wait, "the proxy's latency")
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()
