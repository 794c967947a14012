"""The peer server's own life (`links._serve`): what websockets' `Server` reads of it."""

from __future__ import annotations

import ssl

import pytest
from websockets.asyncio.server import ServerConnection

from network.node.links import _Listener, _serve

pytestmark = pytest.mark.timeout(30)

OPTIONS = {"open_timeout": 5, "max_size": 2**20, "ping_interval": None, "ping_timeout": None}


async def test_a_closing_peer_server_stops_serving_at_once() -> None:
    """websockets answers an opening handshake 503 once its server is not serving, and its
    close closes only the connections open when it began. A node stopped while a peer's
    handshake finished took the link, which outlived the server's close: the node's stop
    hung (tests/test_pipeline.py, once in a full run). Not serving from `close()` on, as
    asyncio's own server."""

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("no connection is made here")

    listener = _Listener.open("127.0.0.1", 0)
    server = await _serve(
        handler, listener, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), {**OPTIONS, "max_queue": 16}
    )
    assert server.is_serving()

    server.server.close()  # what websockets' close does first, before its first wait

    assert not server.is_serving()
    server.close()
    await server.wait_closed()
