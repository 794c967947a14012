"""A peer connection's messages, taken as websockets parses them (`links._Messages`).

Real websockets connections on loopback, each end one of the link's own connection
classes; the peer's side sends as any websockets client does.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosedOK

from network.node.links import Data, _ClientLink, _runs, _ServerLink
from tests.harness import until

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def linked(max_queue: int = 16) -> AsyncIterator[tuple[_ClientLink, _ServerLink]]:
    """A dialled connection and the server's end of it."""
    accepted: asyncio.Future[_ServerLink] = asyncio.get_running_loop().create_future()

    async def handler(ws: _ServerLink) -> None:
        accepted.set_result(ws)
        await ws.wait_closed()

    async with serve(
        handler, "127.0.0.1", 0, create_connection=_ServerLink, max_queue=max_queue
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=_ClientLink) as client:
            assert isinstance(client, _ClientLink)
            yield client, await asyncio.wait_for(accepted, 5)


async def parsed(client: _ClientLink) -> None:
    """Everything `client` sent before has been parsed at the other end: its pong came back
    (frames are parsed in order)."""
    await asyncio.wait_for(await client.ping(), 5)


async def test_messages_wait_until_taken_then_go_in_order_each_as_it_is_parsed() -> None:
    async with linked() as (client, server):
        for message in (b"one", b"two", b"three"):
            await client.send(message)
        await parsed(client)
        assert await server.messages.next() == b"one"  # the signed handshake reads so

        taken: list[tuple[Data, asyncio.Task[object] | None]] = []
        reader = asyncio.create_task(
            server.messages.take_all(lambda data: taken.append((data, asyncio.current_task())))
        )
        await until(lambda: len(taken) == 2)
        assert [data for data, _ in taken] == [b"two", b"three"]  # those waiting, first

        await client.send(b"four")
        await until(lambda: len(taken) == 3)
        # In websockets' parsing callback, not in a task woken at the loop's next turn.
        assert taken[2] == (b"four", None)

        await client.close()
        with pytest.raises(ConnectionClosedOK):
            await asyncio.wait_for(reader, 5)


async def test_frames_sent_together_go_in_one_write_and_each_arrives_a_message() -> None:
    """A receiver's receipts for a batch of envelopes went in a write each (a TLS record,
    a system call, the sender woken), 32 for a full batch."""
    async with linked() as (client, server):
        calls: list[str] = []
        write, writelines = server.transport.write, server.transport.writelines

        def counted_write(data: bytes) -> None:  # asyncio's transport, its calls counted
            calls.append("write")
            write(data)

        def counted_writelines(chunks: list[bytes]) -> None:
            calls.append("writelines")
            writelines(chunks)  # Python 3.11's joins them and calls write once

        server.transport.write = counted_write  # type: ignore[method-assign]
        server.transport.writelines = counted_writelines  # type: ignore[method-assign]
        await server.send_frames([b"one", b"two", b"three"])
        server.transport.write, server.transport.writelines = write, writelines  # type: ignore[method-assign]
        await asyncio.wait_for(await server.ping(), 5)  # parsed: its pong came back

        assert [await client.messages.next() for _ in range(3)] == [b"one", b"two", b"three"]
        assert calls.count("writelines") == 1 and calls.count("write") <= 1, calls


@given(st.lists(st.binary(max_size=40)), st.integers(1, 64))
def test_runs_keep_the_frames_in_order_each_within_its_bound_or_alone(
    frames: list[bytes], at_most: int
) -> None:
    """A relay's hundreds of links each writing a whole batch at once took the simulation
    70 MiB past its usual peak: a link writes runs of at most 64 KiB."""
    runs = list(_runs(frames, at_most))
    assert [frame for run in runs for frame in run] == frames
    assert all(run for run in runs)
    assert all(len(run) == 1 or sum(map(len, run)) <= at_most for run in runs)
    # each run as long as it may be: the next frame would not have fitted
    assert all(sum(map(len, a)) + len(b[0]) > at_most for a, b in itertools.pairwise(runs))


async def test_what_the_take_raises_ends_the_taking_and_nothing_after_it_is_taken() -> None:
    class Refused(Exception):
        pass

    taken: list[Data] = []

    def take(data: Data) -> None:
        if data == b"bad":
            raise Refused("the session refuses it")
        taken.append(data)

    async with linked() as (client, server):
        reader = asyncio.create_task(server.messages.take_all(take))
        for message in (b"good", b"bad", b"after"):
            await client.send(message)
        with pytest.raises(Refused):
            await asyncio.wait_for(reader, 5)
        await client.send(b"later")
        await parsed(client)  # websockets reads on (the link's close frame is answered)
        assert taken == [b"good"]


async def test_nothing_is_taken_once_the_taking_is_cancelled() -> None:
    """The link's other task failed: its reader is cancelled with it, and what the peer
    sends meanwhile (until the close) must not reach a session whose link has ended."""
    taken: list[Data] = []
    async with linked() as (client, server):
        reader = asyncio.create_task(server.messages.take_all(taken.append))
        await client.send(b"before")
        await until(lambda: taken == [b"before"])
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await client.send(b"after")
        await parsed(client)
        assert taken == [b"before"]


async def test_a_fragmented_message_is_taken_whole_and_text_as_text() -> None:
    async with linked() as (client, server):
        await client.send([b"frag", b"men", b"ted"])  # three frames, one message
        await client.send("text")
        await parsed(client)
        assert await server.messages.next() == b"fragmented"
        assert await server.messages.next() == "text"  # the session refuses it as text


async def test_past_max_queue_waiting_the_socket_is_not_read_until_they_are_taken() -> None:
    async with linked(max_queue=4) as (client, server):
        for n in range(6):
            await client.send(bytes([n]))
        await until(lambda: not server.transport.is_reading())
        got = []
        while len(got) < 5:  # the socket stays unread while more than a quarter of 4 waits
            assert not server.transport.is_reading()
            got.append(await server.messages.next())
        assert server.transport.is_reading()
        got.append(await server.messages.next())
        assert got == [bytes([n]) for n in range(6)]


async def test_messages_waiting_at_the_close_are_given_before_the_close_is_raised() -> None:
    async with linked() as (client, server):
        await client.send(b"last words")
        await client.close()
        await server.wait_closed()
        assert await server.messages.next() == b"last words"
        with pytest.raises(ConnectionClosedOK):
            await server.messages.next()
