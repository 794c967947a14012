"""The HTTP API served beside a running node: what `run_node` enters and leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from network.api.metrics import Metrics
from network.api.web import CONNECTIONS, build_app, build_metrics_app
from network.core.errors import CpnError
from network.node.config import NodeConfig
from network.node.context import NodeContext
from network.node.runner import ApiSite
from network.node.sockets import accepted, bound, inherited
from network.node.store import AuditEntry
from network.node.wiring import Node

__all__ = ["api_site"]

log = logging.getLogger("cpn.web")


def api_site(config: NodeConfig) -> ApiSite:
    """Serve the node's API and console on `[api] listen` while the node runs, and its
    metrics on `[metrics] listen` (a listener of their own: they name every peer); or on
    the sockets handed down as `api` and `metrics` (socket activation).

    A connection with no request under way (a new one, one between requests, one whose
    request is still arriving) is closed after `[api] connection_idle` (aiohttp's
    keep-alive timeout, which runs from the connection's start); each listener holds at
    most what its app's `OpenConnections` allows (`_BoundedSite`)."""
    idle_s = config.login.connection_idle_ms / 1000

    @asynccontextmanager
    async def serve(node: Node) -> AsyncIterator[None]:
        metrics = Metrics(node)
        api = web.AppRunner(
            build_app(node, login=config.login, metrics=metrics, oidc=config.oidc),
            access_log=None,
            keepalive_timeout=idle_s,
        )
        runners = [api]
        await api.setup()
        try:
            api_listener = _listener("api", (config.api_host, config.api_port))
            await _BoundedSite(api, api_listener, node.context).start()
            if config.metrics_listen is not None or inherited("metrics") is not None:
                scrape = web.AppRunner(
                    build_metrics_app(metrics), access_log=None, keepalive_timeout=idle_s
                )
                runners.append(scrape)
                await scrape.setup()
                metrics_listener = _listener("metrics", config.metrics_listen)
                await _BoundedSite(scrape, metrics_listener, node.context).start()
            yield
        finally:
            for runner in reversed(runners):
                await runner.cleanup()

    return serve


def _listener(name: str, listen: tuple[str, int] | None) -> socket.socket:
    """The socket handed down as `name` (network.node.sockets), or `listen` bound."""
    fd = inherited(name)
    if fd is not None:
        return socket.socket(fileno=fd)
    assert listen is not None, f"no [{name}] listen and no socket handed down"
    return bound(*listen, socket.socket)


class _BoundedSite(web.BaseSite):
    """aiohttp's server on `listener`, each connection accepted here and held within its
    app's `OpenConnections`: one arriving when the listener holds its most closes an idle
    one (of the address holding the most), or is closed itself when every one is busy.

    Without it, anyone who could reach the port held a descriptor per connection that sent
    nothing, for aiohttp's hour of keep-alive: a thousand of them, and the node answered
    no request and could open no file or peer link. uvloop accepts in C for a server of
    its own, so the connections are accepted here (`accepted`) and handed to the loop."""

    def __init__(
        self, runner: web.AppRunner, listener: socket.socket, context: NodeContext
    ) -> None:
        super().__init__(runner)
        self._listener = listener
        self._app_runner = runner
        self._context = context
        self._accepts: asyncio.Task[None] | None = None
        self._shed_since_said = 0  # connections closed to make room, or turned away
        self._said_at = -math.inf

    @property
    def name(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        self._accepts = asyncio.get_running_loop().create_task(
            self._accept_forever(), name=f"{self.name} accepts"
        )
        self._accepts.add_done_callback(self._stopped_accepting)

    def _stopped_accepting(self, accepts: asyncio.Task[None]) -> None:
        """Accepting ends only with the site; if it ends otherwise, say so loudly."""
        if not accepts.cancelled() and (error := accepts.exception()) is not None:
            log.error("%s: no longer accepting connections", self.name, exc_info=error)

    async def stop(self) -> None:
        if self._accepts is not None:
            self._accepts.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepts
        self._listener.close()
        await super().stop()

    async def _accept_forever(self) -> None:
        server = self._app_runner.server
        assert server is not None
        held = self._app_runner.app[CONNECTIONS]
        async for batch in accepted(self._listener, self.name):
            for gone in [h for h in held if h.transport is None]:  # closed since
                held.left(gone)
            # This batch's connections, not served yet: a later one may make room by
            # closing an earlier one, which has no transport to close yet.
            serving: dict[web.RequestHandler, tuple[socket.socket, str]] = {}
            shed: list[AuditEntry] = []
            for conn, source in batch:
                handler = server()  # aiohttp's protocol for this connection
                serving[handler] = (conn, source)
                for shut in held.arrive(handler, source):
                    if shut in serving:
                        shut_conn, shut_from = serving.pop(shut)
                        shut_conn.close()
                    else:
                        peer = shut.transport and shut.transport.get_extra_info("peername")
                        shut_from = str(peer[0]) if isinstance(peer, tuple) else source
                        shut.force_close()  # idle: no request under way is cut
                    why = (
                        "turned away: every connection busy"
                        if shut is handler
                        else "idle, closed to make room"
                    )
                    shed += self._shed(shut_from, why, len(held))
            with contextlib.suppress(CpnError):  # the store's failure is its own to report
                await self._context.audit(shed)  # one transaction for the batch's
            # Each made at once: made one after the other, each waited a pass of the loop.
            await asyncio.gather(*(self._serve(h, conn) for h, (conn, _) in serving.items()))

    async def _serve(self, handler: web.RequestHandler, conn: socket.socket) -> None:
        """aiohttp's `handler` on the accepted `conn`."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: handler, conn)
        except OSError:
            self._app_runner.app[CONNECTIONS].left(handler)
            conn.close()

    def _shed(self, source: str, why: str, holding: int) -> list[AuditEntry]:
        """A connection from `source` shed: the entries to audit, within the node's refusal
        budget for this listener (a flood is what sheds them: 60 entries a minute, the rest
        counted); logged at most once a minute."""
        self._shed_since_said += 1
        now = time.monotonic()
        if now - self._said_at >= 60:
            log.warning(
                "%s: holding %d connections, the most it holds; %d closed to make room or"
                " turned away (the last from %s)",
                self.name,
                holding,
                self._shed_since_said,
                source,
            )
            self._shed_since_said, self._said_at = 0, now
        context = self._context
        detail = {"listener": self.name, "remote": source, "why": why}
        entry = AuditEntry(context.actor, "connection_shed", None, detail)
        return context.refusal(f"listener:{self.name}", entry)
