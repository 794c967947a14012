"""The API's listener, in this process over a real node's app: how it takes connections.

A loaded node's loop runs every callback that is ready in each of its passes (a few
milliseconds each at 90% of its saturated rate). The listener took one connection a
pass, so a connection waited behind every one opened before it: in `bench/throughput.py`
at 90% load a flash request on a new connection waited 100 ms to 1.3 s to be read,
against 3 ms on a kept-alive one (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from contextlib import ExitStack

import pytest
from aiohttp import web

from network.api.site import _BoundedSite
from network.api.web import CONNECTIONS, build_app
from network.core.admission import OpenConnections
from network.node.sockets import ACCEPT_AT_ONCE, bound
from network.node.wiring import Node
from tests.test_web import Api, api  # noqa: F401 (the fixture: a real node in this process)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node(api: Api) -> Node:  # noqa: F811 (the fixture imported above)
    return api.service


async def _each_pass_until(ready: Callable[[], bool]) -> None:
    """Ask `ready` once a pass of the loop (a callback scheduling itself again as it
    runs) until it says yes; at most 30 s."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def look() -> None:
        if ready():
            done.set_result(None)
        else:
            loop.call_soon(look)

    loop.call_soon(look)
    await asyncio.wait_for(done, 30)


@pytest.mark.parametrize("waiting", [40, ACCEPT_AT_ONCE + 10])
async def test_every_connection_waiting_is_taken_in_one_pass_of_the_loop(
    node: Node, waiting: int
) -> None:
    """Connections opened before the listener's loop could look (their requests written)
    are all held after one pass, `ACCEPT_AT_ONCE` at a time, and every one answered."""
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    held = runner.app[CONNECTIONS]
    loop = asyncio.get_running_loop()
    with ExitStack() as stack:
        listener = stack.enter_context(bound("127.0.0.1", 0, socket.socket))
        site = _BoundedSite(runner, listener, node.context)
        clients = []
        for _ in range(waiting):  # the kernel completes each handshake: none accepted yet
            client = stack.enter_context(socket.create_connection(listener.getsockname()[:2]))
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: fra\r\n\r\n")
            client.setblocking(False)
            clients.append(client)
        sizes: list[int] = []  # connections held, after each pass of the loop

        def all_held() -> bool:
            sizes.append(len(held))
            return sizes[-1] == waiting

        try:
            await site.start()
            await _each_pass_until(all_held)
            answers = [await asyncio.wait_for(loop.sock_recv(c, 4096), 30) for c in clients]
        finally:
            await runner.cleanup()

    taken = [after - before for before, after in zip([0, *sizes], sizes, strict=False)]
    assert max(taken) == min(waiting, ACCEPT_AT_ONCE), taken  # all at once, within the bound
    assert len(sizes) <= 4 * -(-waiting // ACCEPT_AT_ONCE), taken  # a few passes a batch
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)


async def test_room_made_within_one_take_closes_a_connection_not_yet_served(node: Node) -> None:
    """A listener holding at most 8 takes 20 waiting connections (all idle, from one
    address) at once: each past the eighth closes the oldest idle one, which may be one
    taken in the same batch with no transport yet. Exactly 12 are closed, each audited, 8
    held."""
    app = build_app(node)
    app[CONNECTIONS] = held = OpenConnections(8)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with ExitStack() as stack:
        listener = stack.enter_context(bound("127.0.0.1", 0, socket.socket))
        site = _BoundedSite(runner, listener, node.context)
        clients = []
        for _ in range(20):
            client = stack.enter_context(socket.create_connection(listener.getsockname()[:2]))
            client.setblocking(False)
            clients.append(client)

        try:
            await site.start()
            await _each_pass_until(
                lambda: len(held) == 8 and all(h.transport is not None for h in held)
            )
            # Closed before the rest were served: each one's end of the stream is here.
            shut = [_closed(client) for client in clients]
            open_held = [
                h for h in held if h.transport is not None and not h.transport.is_closing()
            ]
        finally:
            await runner.cleanup()
    query = "SELECT detail FROM audit WHERE action = 'connection_shed'"
    async with node.context.store.db.execute(query) as cursor:
        audited = [json.loads(detail)["why"] for (detail,) in await cursor.fetchall()]

    assert shut.count(True) == 12, shut
    assert len(held) == len(open_held) == 8
    assert audited == ["idle, closed to make room"] * 12  # within the budget: each one


def _closed(client: socket.socket) -> bool:
    """Whether the other end closed `client` (non-blocking): its end of stream is here."""
    try:
        return client.recv(1) == b""
    except BlockingIOError:
        return False
