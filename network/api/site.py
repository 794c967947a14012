"""The HTTP API served beside a running node: what `run_node` enters and leaves."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from network.api.metrics import Metrics
from network.api.web import build_app, build_metrics_app
from network.node.config import NodeConfig
from network.node.runner import ApiSite
from network.node.sockets import inherited
from network.node.wiring import Node

__all__ = ["api_site"]


def api_site(config: NodeConfig) -> ApiSite:
    """Serve the node's API and console on `[api] listen` while the node runs, and its
    metrics on `[metrics] listen` (a listener of their own: they name every peer); or on
    the sockets handed down as `api` and `metrics` (socket activation)."""

    @asynccontextmanager
    async def serve(node: Node) -> AsyncIterator[None]:
        metrics = Metrics(node)
        api = web.AppRunner(
            build_app(node, login=config.login, metrics=metrics, oidc=config.oidc), access_log=None
        )
        runners = [api]
        await api.setup()
        try:
            await _site(api, "api", (config.api_host, config.api_port)).start()
            if config.metrics_listen is not None or inherited("metrics") is not None:
                scrape = web.AppRunner(build_metrics_app(metrics), access_log=None)
                runners.append(scrape)
                await scrape.setup()
                await _site(scrape, "metrics", config.metrics_listen).start()
            yield
        finally:
            for runner in reversed(runners):
                await runner.cleanup()

    return serve


def _site(runner: web.AppRunner, name: str, listen: tuple[str, int] | None) -> web.BaseSite:
    """The socket handed down as `name` (network.node.sockets), or `listen` bound."""
    fd = inherited(name)
    if fd is not None:
        return web.SockSite(runner, socket.socket(fileno=fd))
    assert listen is not None, f"no [{name}] listen and no socket handed down"
    return web.TCPSite(runner, *listen)
