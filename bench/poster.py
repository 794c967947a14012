"""Officers posting to a node's API at a benchmark's rate, for little of the machine's CPU.

The benchmarks run the load beside the nodes, on the same cores. aiohttp's client took
180 to 250 us of CPU a request: 8% of a message's CPU over the three processes, taken
from the nodes. An officer's browser is not on the node's machine, so the load should cost
the machine as little as it can (what wrk does): each request is built once, as bytes,
and goes on a kept-alive HTTP/1.1 connection; only the status and the length of each
answer are read. The node does all its work as for any client.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

__all__ = ["Poster"]

_HEAD_LIMIT = 64 * 1024  # an answer's headers, at most
# A connection idle this long is not used again. The node closes one with no request
# under way after `[api] connection_idle` (30 s by default); a request written as it does
# meets the close (a 30 s paced phase failed once with "the node closed the connection").
REUSE_IDLE_S = 10.0


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one request at a time, its answer's status and body."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._status = 0
        self._length = -1  # the body's length once the head is read
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    @property
    def usable(self) -> bool:
        """Open, and not closing (the node may close one after a refusal)."""
        return self.transport is not None and not self.transport.is_closing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError(f"the node closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._length < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _HEAD_LIMIT:
                    self._fail("an answer's head longer than 64 KiB")
                return
            self._head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        if self._length >= 0 and len(self._buffer) >= self._length:
            body = bytes(self._buffer[: self._length])
            del self._buffer[: self._length]
            self._length = -1
            if self._answer is not None and not self._answer.done():
                self._answer.set_result((self._status, body))

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self._status = int(lines[0].split(b" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                self._length = int(value)
                return
        self._fail(f"an answer ({lines[0].decode(errors='replace')}) without Content-Length")

    def _fail(self, why: str) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._answer


class Poster:
    """POST requests to one API, as one officer (a bearer token), over a pool of
    kept-alive connections: as many as requests in flight at once, reused."""

    def __init__(self, api: str, token: str, *, reuse_idle_s: float = REUSE_IDLE_S) -> None:
        parts = urlsplit(api)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"{api}: the poster speaks plain HTTP to a host and port")
        self._host, self._port = parts.hostname, parts.port
        self._token = token
        self._reuse_idle_s = reuse_idle_s
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []
        self._built: dict[tuple[str, bytes], bytes] = {}

    def _request(self, path: str, body: bytes) -> bytes:
        """The request's bytes, built once for each path and body."""
        key = (path, body)
        if key not in self._built:
            head = (
                f"POST {path} HTTP/1.1\r\n"
                f"Host: {self._host}:{self._port}\r\n"
                f"Authorization: Bearer {self._token}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            self._built[key] = head.encode() + body
        return self._built[key]

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        status, answer, _ = await self.post_noting_new(path, body)
        return status, answer

    async def post_noting_new(self, path: str, body: bytes) -> tuple[int, bytes, bool]:
        """`post`, and whether it opened a connection for it (none was idle): the node
        has that connection to accept before it reads the request."""
        request = self._request(path, body)
        reused = self._reusable()
        connection = reused or await self._connect()
        try:
            status, answer = await connection.exchange(request)
        except BaseException:
            if connection.transport is not None:
                connection.transport.close()
            raise
        if connection.usable:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        return status, answer, reused is None

    def _reusable(self) -> _Connection | None:
        """An idle connection still usable, if any: open, and not idle long enough for the
        node to be closing it."""
        too_old = time.monotonic() - self._reuse_idle_s
        while self._idle:
            connection = self._idle.pop()
            if connection.usable and connection.idle_since >= too_old:
                return connection
            if connection.transport is not None:
                connection.transport.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, self._host, self._port)
        self._all.append(connection)
        return connection

    @property
    def opened(self) -> int:
        """How many connections this poster has opened."""
        return len(self._all)

    async def close(self) -> None:
        for connection in self._all:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()
        self._all.clear()
        await asyncio.sleep(0)  # the transports' close callbacks

    async def __aenter__(self) -> Poster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
