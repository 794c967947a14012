"""Peer links: the websockets server and clients, TLS with pinned certificates, delivery.

The one module that imports websockets. Each end trusts only the roster's
certificates (mutual TLS, TLS 1.3), then checks that the certificate the
other end presented is the one the roster pins for the id it claims, and
runs the signed handshake of `protocol` before any envelope flows.

One link per peer. Both ends may dial; when two links to the same peer come
up, the one dialled by the smaller id stays (both ends decide the same).
A link drains its outbox from the store on every (re)connect, keeps at most
`window` envelopes in flight without a receipt, and is dropped (then
redialled) if the oldest waits longer than `receipt_timeout`. Incoming
frames go through a bounded queue, so a fast peer is slowed by TCP rather
than by our memory. Envelopes that arrive together are committed together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, WebSocketException
from websockets.frames import CloseCode

from network.core.crypto import certificate_pem, sha256
from network.core.errors import CpnError, MalformedError, OversizeError, PeerError
from network.core.protocol import (
    FRAME_ANNOUNCE,
    FRAME_CHECKPOINT,
    FRAME_COSIGNATURE,
    FRAME_ENVELOPE,
    FRAME_RECEIPT,
    FRAME_ROSTER,
    MAX_FRAME_BYTES,
    HandshakeError,
    LinkHandshake,
    Role,
    backoff_delays,
    checkpoint_frame,
    envelope_frame,
    frame,
    parse_checkpoint_offer,
    parse_witness_answer,
    split_envelope,
    split_frame,
    witness_frame,
)
from network.core.records import NodeId
from network.core.roster import Roster
from network.node.delivery import Room
from network.node.keys import NodeKeys
from network.node.scheduler import ROUTE_REFRESH_MS
from network.node.store import AuditEntry, StoreError
from network.node.wiring import Node
from network.node.witnessing import Witnessing

__all__ = ["LinkSettings", "Links"]

# Frames waiting to be processed on one link: far above what the windows allow
# (envelopes and receipts) plus one announcement per contact point.
MAX_QUEUED_FRAMES = 4096
# Connections accepted whose handshakes (TLS, WebSocket, signed) have not finished.
# Far above what 193 peers redialling need; a peer that holds more pushes its oldest out.
MAX_PENDING_HANDSHAKES = 128
# Seconds a peer we cut off has to answer our close frame before its connection is dropped.
REFUSED_CLOSE_TIMEOUT = 1.0

log = logging.getLogger("cpn.links")

Connection = ClientConnection | ServerConnection


@dataclass(frozen=True, slots=True)
class LinkSettings:
    window: int = 32  # envelopes in flight without a receipt, per link
    flash_reserve: int = 8  # more in flight for flash only, so a full window never holds it back
    batch: int = 32  # frames committed in one transaction
    handshake_timeout: float = 10.0
    receipt_timeout: float = 60.0
    ping_interval: float | None = 10.0  # None: no keepalive pings (the receipt timeout stays)
    ping_timeout: float | None = 20.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    poll_interval: float = 5.0  # for retries that come due; news wakes a link at once
    announce_delay: float = 0.2


@dataclass(eq=False)
class _Link:
    peer: NodeId
    ws: Connection
    dialler: NodeId
    since: int
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Frames to send, in order, by one sender task. Whoever reads never waits on a send:
    # two nodes each blocked sending to the other while neither reads would deadlock.
    # Bounded in practice by the peer's window (receipts) and our own (envelopes).
    outgoing: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)

    unanswered: int = 0  # envelopes received and not yet answered with a receipt

    def send(self, data: bytes) -> None:
        self.outgoing.put_nowait(data)


class Links:
    """The node's peer server and one dialler per configured peer."""

    def __init__(
        self,
        node: Node,
        keys: NodeKeys,
        *,
        host: str,
        port: int,
        peers: tuple[NodeId, ...],
        settings: LinkSettings = LinkSettings(),
        on_roster: Callable[[Roster], Awaitable[None]] | None = None,
        witnessing: Witnessing | None = None,
    ) -> None:
        self.node = node
        self.witnessing = witnessing
        self.keys = keys
        self.on_roster = on_roster
        self.host = host
        self.port = port
        self.peers = peers
        self.settings = settings
        self.me = keys.node_id
        self.active: dict[NodeId, _Link] = {}
        self._wake: dict[NodeId, asyncio.Event] = {}
        self._links_changed = asyncio.Event()
        self._my_cert = keys.card.tls_sha256
        self._server: Server | None = None
        self._listener: _Listener | None = None
        self._server_ssl = self._ssl_context(server=True)
        self._client_ssl = self._ssl_context(server=False)

    # -- TLS ---------------------------------------------------------------------

    def _ssl_context(self, *, server: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False  # peers are pinned by certificate, not by name
        context.verify_mode = ssl.CERT_REQUIRED  # the server requires a client certificate too
        context.load_verify_locations(cadata=self._anchors())
        context.load_cert_chain(self.keys.tls_cert, self.keys.tls_key)
        return context

    def _anchors(self) -> str:
        roster = self.node.context.roster
        return "".join(
            certificate_pem(e.card.tls_cert) for e in roster.entries.values() if e.active
        )

    @staticmethod
    def _peer_cert(ws: Connection) -> bytes:
        ssl_object = ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise PeerError("no TLS client certificate", reason="no_certificate")
        return sha256(der)

    def _options(self) -> dict[str, Any]:
        return {
            "compression": None,  # ciphertext does not compress; decompression is a bomb
            "max_size": MAX_FRAME_BYTES,
            "max_queue": self.settings.batch,
            "ping_interval": self.settings.ping_interval,
            "ping_timeout": self.settings.ping_timeout,
            "open_timeout": self.settings.handshake_timeout,
        }

    # -- running -----------------------------------------------------------------

    async def listen(self) -> None:
        """Bind the peer server (before the node says it is healthy)."""
        self._listener = _Listener.open(self.host, self.port, MAX_PENDING_HANDSHAKES)
        self._server = await serve(
            self._accept, sock=self._listener, ssl=self._server_ssl, **self._options()
        )

    async def run(self, dial_after: asyncio.Event | None = None) -> None:
        """Serve and dial until cancelled; closes every link with a close frame on the way out.

        `dial_after`: start dialling only once it is set (a simulation starting
        many nodes in one process lets them all finish starting first).
        """
        if self._server is None:
            await self.listen()
        assert self._server is not None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._server.serve_forever(), name="peer server")
                group.create_task(self._announcer(), name="announcer")
                group.create_task(self._route_refresher(), name="routes")
                if dial_after is not None:
                    await dial_after.wait()
                for peer in self.peers:
                    group.create_task(self._dial_forever(peer), name=f"dial {peer}")
        finally:
            self._server.close(close_connections=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, ws: ServerConnection) -> None:
        remote = ws.remote_address[0] if ws.remote_address else "?"
        try:
            peer_cert = self._peer_cert(ws)
            handshake = self._handshake(Role.SERVER, peer_cert, None)
            await self._run_handshake(ws, handshake)
        except PeerError as exc:
            await self._refused(ws, remote, exc)
            return
        except ConnectionClosed as exc:
            fault = _peer_fault(exc)
            if fault is not None:
                await self._refused(ws, remote, fault)
            return
        finally:
            assert self._listener is not None
            self._listener.settled(ws)
        assert handshake.peer is not None
        wake = self._wake.get(handshake.peer)
        if wake is not None:
            wake.set()  # any contact resets the dialler's backoff
        await self._link(ws, handshake.peer, handshake.peer, handshake.peer_roster_version)

    async def _dial_forever(self, peer: NodeId) -> None:
        delays = backoff_delays(base=self.settings.backoff_base, cap=self.settings.backoff_cap)
        wake = self._wake.setdefault(peer, asyncio.Event())
        while True:
            existing = self.active.get(peer)
            if existing is not None:
                await existing.closed.wait()
                delays = backoff_delays(
                    base=self.settings.backoff_base, cap=self.settings.backoff_cap
                )
                continue
            try:
                await self._dial(peer)
                delays = backoff_delays(
                    base=self.settings.backoff_base, cap=self.settings.backoff_cap
                )
                delay = self.settings.backoff_base  # the link ran and closed: dial again soon
            except (OSError, TimeoutError, WebSocketException, CpnError) as exc:
                delay = next(delays)
                log.info("%s: link to %s failed (%s); retry in %.1fs", self.me, peer, exc, delay)
                with contextlib.suppress(StoreError):  # a full disk: the dialler goes on
                    await self.node.delivery.peer_failure(
                        peer, self.node.context.clock() + int(delay * 1000), _describe(exc)
                    )
                if isinstance(exc, CpnError):
                    await self._record_refusal(peer, "link_refused", exc)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
            if wake.is_set():
                delays = backoff_delays(
                    base=self.settings.backoff_base, cap=self.settings.backoff_cap
                )

    async def _dial(self, peer: NodeId) -> None:
        card = self.node.context.roster.active_card(peer)
        async with connect(card.url, ssl=self._client_ssl, proxy=None, **self._options()) as ws:
            peer_cert = self._peer_cert(ws)
            handshake = self._handshake(Role.CLIENT, peer_cert, peer)
            try:
                await self._run_handshake(ws, handshake)
            except PeerError as exc:
                await ws.close(1008, exc.reason)
                raise
            await self._link(ws, peer, self.me, handshake.peer_roster_version)

    def _handshake(self, role: Role, peer_cert: bytes, peer: NodeId | None) -> LinkHandshake:
        return LinkHandshake(
            role=role,
            me=self.me,
            signing_key=self.keys.signing,
            roster=self.node.context.roster,
            my_cert_sha256=self._my_cert,
            peer_cert_sha256=peer_cert,
            nonce=os.urandom(32),
            expected_peer=peer,
        )

    async def _run_handshake(self, ws: Connection, handshake: LinkHandshake) -> None:
        limit = self.settings.handshake_timeout
        try:
            async with asyncio.timeout(limit):
                for out in handshake.start():
                    await ws.send(out)
                while not handshake.done:
                    for out in handshake.receive(await ws.recv()):
                        await ws.send(out)
        except TimeoutError:
            raise HandshakeError(
                f"no signed handshake within {limit}s", reason="handshake_timeout"
            ) from None

    async def _refused(self, ws: ServerConnection, remote: str, exc: PeerError) -> None:
        reason = exc.reason
        log.warning("%s: refused a link from %s: %s", self.me, remote, exc)
        await self._record_refusal(remote, "link_refused", exc)
        with contextlib.suppress(Exception):
            await ws.close(1008, reason[:100])

    async def _record_refusal(self, who: str, action: str, exc: Exception) -> None:
        reason = exc.reason if isinstance(exc, CpnError) else type(exc).__name__
        detail = {"remote": who, "reason": reason, "error": str(exc)[:500]}
        with contextlib.suppress(CpnError):
            await self.node.context.audit([AuditEntry(f"peer:{who}", action, None, detail)])

    # -- an established link ---------------------------------------------------------

    async def _link(self, ws: Connection, peer: NodeId, dialler: NodeId, peer_roster: int) -> None:
        link = _Link(peer, ws, dialler, self.node.context.clock())
        existing = self.active.get(peer)
        keep_dialler = min(self.me, peer)
        if existing is not None:
            if existing.dialler == keep_dialler:
                await ws.close(1000, "duplicate link")
                return
            await existing.ws.close(1000, "duplicate link")
        self.active[peer] = link
        self.node.delivery.link_up(peer, link.since)
        why = "stopped"
        try:  # from here on, however it ends, the link is no longer counted as active
            await self.node.delivery.peer_contact(peer)
            await self.node.context.audit(
                [AuditEntry(f"node:{self.me}", "link_up", None, {"peer": peer, "dialler": dialler})]
            )
            log.info("%s: linked with %s", self.me, peer)
            # What the new peer should know: the roster if ours is newer, every announcement.
            if self.node.context.roster.version > peer_roster:
                link.send(frame(FRAME_ROSTER, self.node.context.roster.raw))
            for raw in self.node.delivery.announcements():
                link.send(frame(FRAME_ANNOUNCE, raw))
            self._offer_checkpoint(link)
            self._links_changed.set()
            why = await self._carry(link)
        except ConnectionClosed as exc:
            why = _describe(exc)
        except StoreError as exc:
            # Our disk is full or read-only: take nothing we cannot keep. The peer keeps
            # its messages queued and dials again; the link comes back with the disk.
            why = str(exc)
            log.error("%s: closing the link with %s: %s", self.me, peer, exc)
            with contextlib.suppress(Exception):
                await ws.close(1011, exc.reason)
        finally:
            if self.active.get(peer) is link:
                del self.active[peer]
                self.node.delivery.link_down(peer)
                self._links_changed.set()
            link.closed.set()
            with contextlib.suppress(Exception):
                await ws.close()
            log.info("%s: link with %s closed: %s", self.me, peer, why)

    async def _announcer(self) -> None:
        """Tell every peer which links we have, once per burst of changes."""
        while True:
            await self._links_changed.wait()
            await asyncio.sleep(self.settings.announce_delay)  # let a burst of changes settle
            self._links_changed.clear()
            announcement = self.node.delivery.links_changed()
            self._broadcast(frame(FRAME_ANNOUNCE, announcement.raw))

    async def _route_refresher(self) -> None:
        """Routes follow announcements once per burst, not once per announcement."""
        while True:
            await self.node.delivery.routes_stale.wait()
            await asyncio.sleep(ROUTE_REFRESH_MS / 1000)
            self.node.delivery.refresh_routes()

    def offer_checkpoint(self) -> None:
        """Offer our newest checkpoint to every linked peer, each with its own proof."""
        for link in list(self.active.values()):
            self._offer_checkpoint(link)

    def _offer_checkpoint(self, link: _Link) -> None:
        offer = self.witnessing.offer_for(link.peer) if self.witnessing is not None else None
        if offer is not None:
            link.send(checkpoint_frame(offer))

    def _broadcast(self, data: bytes, *, but: NodeId | None = None) -> None:
        for peer, link in list(self.active.items()):
            if peer != but:
                link.send(data)

    async def adopt_roster(self, raw: bytes, source: str) -> Roster | None:
        """A roster from a peer or the operator: adopt it if newer, pass it on, act on it."""
        roster = await self.node.inbound.accept_roster(raw, source)
        if roster is None:
            return None
        anchors = self._anchors()
        for context in (self._server_ssl, self._client_ssl):
            context.load_verify_locations(cadata=anchors)  # new contact points' certificates
        if self.on_roster is not None:
            await self.on_roster(roster)
        self._broadcast(frame(FRAME_ROSTER, raw), but=NodeId(source))
        for peer, link in list(self.active.items()):
            entry = roster.entries.get(peer)
            if entry is None or not entry.active:
                log.warning("%s: closing the link with %s: no longer in the roster", self.me, peer)
                await link.ws.close(1008, "revoked")
        return roster

    async def _carry(self, link: _Link) -> str:
        """Run a link until one of its tasks ends; says why it ended."""
        inflight: dict[str, float] = {}
        # The reader never waits: a reader held up by slow processing would stop
        # websockets reading the socket, pongs included, and a busy link would be
        # dropped as dead. The queue is bounded by the peer's window instead (`_read`).
        incoming: asyncio.Queue[bytes] = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._send(link)),
            asyncio.create_task(self._read(link, incoming)),
            asyncio.create_task(self._process(link, incoming, inflight)),
            asyncio.create_task(self._write(link, inflight)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(CpnError):
                await self.node.delivery.release(list(inflight))
        why = "stopped"
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                why = _describe(result)
            elif result is None and why == "stopped":
                why = _describe(link.ws.close_exc) if link.ws.close_code else "closed"
            if isinstance(result, PeerError):
                await self._record_refusal(link.peer, "link_protocol_error", result)
                # A peer cut off for what it sent may never read our close frame (it is
                # still sending, and we stopped reading): wait briefly, then drop it.
                link.ws.close_timeout = REFUSED_CLOSE_TIMEOUT
                with contextlib.suppress(Exception):
                    await link.ws.close(1002, result.reason[:100])
            elif isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError | ConnectionClosed | _Stalled
            ):
                raise result
        return why

    async def _send(self, link: _Link) -> None:
        try:
            while True:
                await link.ws.send(await link.outgoing.get())
        except ConnectionClosed:
            return

    async def _read(self, link: _Link, incoming: asyncio.Queue[bytes]) -> None:
        """Take every frame at once; a peer past its window, or flooding, is cut off."""
        envelope_cap = self.settings.window + self.settings.flash_reserve + self.settings.batch
        try:
            async for message in link.ws:
                kind, _ = split_frame(message)  # refuse text, unknown kinds, oversize frames
                assert isinstance(message, bytes)
                if kind == FRAME_ENVELOPE:
                    link.unanswered += 1
                    if link.unanswered > envelope_cap:
                        raise PeerError(
                            f"{link.peer} sent {link.unanswered} envelopes without waiting for"
                            f" receipts (window {self.settings.window})",
                            reason="window_exceeded",
                        )
                if incoming.qsize() >= MAX_QUEUED_FRAMES:
                    raise PeerError(f"{link.peer} floods the link", reason="flood")
                incoming.put_nowait(message)
        except ConnectionClosed as exc:
            fault = _peer_fault(exc)
            if fault is not None:
                raise fault from exc

    async def _process(
        self,
        link: _Link,
        incoming: asyncio.Queue[bytes],
        inflight: dict[str, float],
    ) -> None:
        room = self.node.delivery.outbox_signal(link.peer)  # the writer also waits for room
        pending: list[tuple[tuple[NodeId, ...], bytes]] = []  # envelopes not yet handled
        while True:
            if not pending or not incoming.empty():
                frames = [] if pending else [await incoming.get()]
                while not incoming.empty():
                    frames.append(incoming.get_nowait())
                receipts = []
                for message in frames:
                    kind, payload = split_frame(message)
                    if kind == FRAME_ENVELOPE:
                        pending.append(split_envelope(payload))
                    elif kind == FRAME_RECEIPT:
                        receipts.append(payload)
                    elif kind == FRAME_ANNOUNCE:
                        await self._take_announcement(link.peer, payload)
                    elif kind == FRAME_ROSTER:
                        await self.adopt_roster(payload, link.peer)
                    elif kind == FRAME_CHECKPOINT and self.witnessing is not None:
                        offer = parse_checkpoint_offer(payload)
                        verdict = await self.witnessing.witness(link.peer, offer)
                        if verdict is not None:
                            link.send(witness_frame(verdict))
                    elif kind == FRAME_COSIGNATURE and self.witnessing is not None:
                        cosigned = parse_witness_answer(payload)
                        again = await self.witnessing.take_answer(link.peer, cosigned)
                        if again is not None:
                            link.send(checkpoint_frame(again))
                    else:
                        problem = f"{kind.decode()} frame after the handshake"
                        raise PeerError(problem, reason="protocol")
                if receipts:
                    for message_id in await self.node.inbound.accept_receipts(link.peer, receipts):
                        inflight.pop(message_id, None)
                    room.set()
            if pending:
                # Flash first (a scheduling hint read from the clear header; checks come later).
                pending.sort(key=lambda item: _rank_hint(item[1]))
                batch, pending = pending[: self.settings.batch], pending[self.settings.batch :]
                for answer in await self.node.inbound.accept_envelopes(link.peer, batch):
                    link.send(frame(FRAME_RECEIPT, answer))
                link.unanswered -= len(batch)

    async def _take_announcement(self, peer: NodeId, payload: bytes) -> None:
        try:
            news = self.node.delivery.accept_announcement(payload)
        except CpnError as exc:  # unknown or revoked node, bad signature: not passed on
            log.info("%s: ignored an announcement from %s: %s", self.me, peer, exc)
            return
        if news:
            self._broadcast(frame(FRAME_ANNOUNCE, payload), but=peer)

    async def _write(self, link: _Link, inflight: dict[str, float]) -> None:
        """Send what routes through this link, flash first, at most `window` without receipts.

        Wakes when something is queued for this link, when receipts free room,
        and every `poll_interval` for retries that came due.
        """
        signal = self.node.delivery.outbox_signal(link.peer)
        last_poll = 0.0
        while True:
            signal.clear()
            free = self.settings.window - len(inflight)
            reserve = free + self.settings.flash_reserve
            due = time.monotonic() - last_poll >= self.settings.poll_interval  # retries
            room = Room(max(free, reserve) if reserve > 0 else 0, free <= 0, due)
            outgoing = await self.node.delivery.next_batch(link.peer, room, list(inflight))
            for receipt in outgoing.receipts:
                link.send(frame(FRAME_RECEIPT, receipt))
            if outgoing.polled:
                last_poll = time.monotonic()
            rows = outgoing.rows
            if rows:
                for row in rows:
                    path = [NodeId(n) for n in json.loads(row.path)] if row.box == "relay" else []
                    link.send(envelope_frame(path, row.envelope))
                    inflight[row.id] = time.monotonic()
                await self.node.delivery.mark_sent(link.peer, [row.id for row in rows])
                continue
            limit = self.settings.receipt_timeout
            if inflight and time.monotonic() - min(inflight.values()) > limit:
                raise _Stalled(f"{link.peer} sent no receipt for {limit}s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval):
                    await signal.wait()


_FLASH_HINT = b'"priority":"flash"'
_URGENT_HINT = b'"priority":"urgent"'


def _rank_hint(envelope: bytes) -> int:
    """0 for flash, 1 for urgent, 2 otherwise, from where the canonical header puts it."""
    head = envelope[:600]
    return 0 if _FLASH_HINT in head else 1 if _URGENT_HINT in head else 2


_ANCHORS: dict[bytes, str] = {}


def _anchors(roster: Roster) -> str:
    """The PEM certificates of a roster's active contact points (made once per roster)."""
    pem = _ANCHORS.get(roster.digest)
    if pem is None:
        certs = [e.card.tls_cert for e in roster.entries.values() if e.active]
        pem = "".join(certificate_pem(der) for der in certs)
        if len(_ANCHORS) >= 4:
            _ANCHORS.clear()
        _ANCHORS[roster.digest] = pem
    return pem


class _Listener(socket.socket):
    """The peer server's listening socket: it holds at most `limit` accepted connections
    whose handshakes have not finished, and shuts the oldest when one more arrives.

    Each handshake has its own timeout (TLS, WebSocket upgrade, signed hello);
    this bounds how many a peer opening connections and never finishing them
    makes us hold in the meantime. Dropping the oldest, not refusing the
    newest, lets a genuine peer in while they wait.
    """

    limit = MAX_PENDING_HANDSHAKES

    @classmethod
    def open(cls, host: str, port: int, limit: int) -> _Listener:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = cls(family, kind, proto)
        listener.limit = limit
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(socket.SOMAXCONN)
        return listener

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pending: list[socket.socket] = []

    def accept(self) -> tuple[socket.socket, Any]:
        conn, address = super().accept()
        live = [s for s in self.pending if s.fileno() != -1]  # closed ones read -1
        while len(live) >= self.limit:
            with contextlib.suppress(OSError):
                live.pop(0).shutdown(socket.SHUT_RDWR)  # its transport sees EOF and closes
        self.pending = [*live, conn]
        return conn, address

    def settled(self, ws: Connection) -> None:
        """`ws` finished its handshake (or failed it): no longer pending."""
        sock = ws.transport.get_extra_info("socket")
        fileno = sock.fileno() if sock is not None else -1
        self.pending = [s for s in self.pending if s.fileno() not in (-1, fileno)]


class _Stalled(Exception):
    """A peer stopped answering with receipts: drop the link and dial again."""


def _peer_fault(closed: ConnectionClosed) -> PeerError | None:
    """What the peer did wrong when websockets closed the connection on us, if anything:
    a frame over `max_size`, or bytes that are not WebSocket frames."""
    code = closed.sent.code if closed.sent is not None else None
    if code == CloseCode.MESSAGE_TOO_BIG:
        return OversizeError(f"a WebSocket frame over the limit of {MAX_FRAME_BYTES} bytes")
    if code in (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA):
        return MalformedError(f"not WebSocket frames: {closed.sent}")
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidHandshake) and exc.__cause__ is not None:
        return f"{exc} ({exc.__cause__})"
    return str(exc) or type(exc).__name__
