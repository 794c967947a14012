"""The HTTP API served beside a running node: what `run_node` enters and leaves."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from network.api.web import build_app
from network.node.config import NodeConfig
from network.node.runner import ApiSite
from network.node.sockets import inherited
from network.node.wiring import Node

__all__ = ["api_site"]


def api_site(config: NodeConfig) -> ApiSite:
    """Serve the node's API and console on `[api] listen` while the node runs, or on the
    socket handed down as `api` (socket activation)."""

    @asynccontextmanager
    async def serve(node: Node) -> AsyncIterator[None]:
        runner = web.AppRunner(build_app(node, login=config.login), access_log=None)
        await runner.setup()
        try:
            fd = inherited("api")  # socket activation (network.node.sockets), or bind
            site = (
                web.TCPSite(runner, config.api_host, config.api_port)
                if fd is None
                else web.SockSite(runner, socket.socket(fileno=fd))
            )
            await site.start()
            yield
        finally:
            await runner.cleanup()

    return serve
