"""Peer links: the websockets server and clients, TLS with pinned certificates, delivery.

The one module that imports websockets. Each end trusts only the roster's
certificates (mutual TLS, TLS 1.3), then checks that the certificate the
other end presented is the one the roster pins for the id it claims, and
runs the signed handshake of `protocol` before any envelope flows.

One link per peer. Both ends may dial; when two links to the same peer come
up, the one dialled by the smaller id stays (both ends decide the same).
A link drains its outbox from the store on every (re)connect.

An established link is a thin adapter around the core's `LinkSession`, which
decides everything about frames, the window and stalls. Four tasks per link,
children of one TaskGroup: the reader gives every frame to the session as
websockets parses it (`_Messages`: it never waits), the writer writes what the
session has to send, the worker takes the session's events to the use cases
(`_handle`), and the feed gives the session what the outbox holds for this peer
(`_Outbox`), writing a flash batch itself while the writer is idle. Receipts and
flash envelopes are taken by tasks of their own beside the worker. The first to
fail ends the link, never the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection as WsConnection
from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, WebSocketException
from websockets.frames import DATA_OPCODES, CloseCode, Frame, Opcode
from websockets.protocol import Event as WsEvent
from websockets.protocol import State
from websockets.server import ServerProtocol

from network.core.admission import PendingHandshakes
from network.core.crypto import certificate_pem, sha256
from network.core.errors import CpnError, MalformedError, OversizeError, PeerError
from network.core.errors import LinkClosedError as _Closed
from network.core.errors import LinkStalledError as _Stalled
from network.core.lifecycle import PRIORITY_RANK
from network.core.protocol import (
    MAX_FRAME_BYTES,
    RESTORE_VERSION,
    CheckpointOffer,
    HandshakeError,
    HeldQuery,
    LinkHandshake,
    Role,
    backoff_delays,
)
from network.core.records import NodeId, Priority
from network.core.roster import Card, Roster
from network.core.session import (
    AnnouncementReceived,
    CheckpointOffered,
    CosignatureReceived,
    EnvelopesReceived,
    Event,
    GiveBackAsked,
    HeldAnswered,
    HeldAsked,
    LinkSession,
    LinkSettings,
    Outgoing,
    PageReturned,
    ReceiptsReceived,
    Room,
    RosterReceived,
    rank_hint,
)
from network.node.delivery import Delivery
from network.node.eager import start_now
from network.node.keys import NodeKeys, load_tls_chain
from network.node.restoring import Restoring, give_back
from network.node.scheduler import ROUTE_QUIET_MS, ROUTE_REFRESH_MS
from network.node.sockets import accepted, bound, inherited
from network.node.store import AuditEntry, MessageRow, StoreError
from network.node.wiring import Node
from network.node.witnessing import Witnessing

__all__ = ["LinkSettings", "Links"]

# Connections accepted whose handshakes (TLS, WebSocket, signed) have not finished
# (network.core.admission): far above what 193 peers redialling need. An address that is
# no roster host holds at most 8, and such addresses together at most half; the other
# half is kept for the contact points' own addresses, each of which holds at most 64.
MAX_PENDING_HANDSHAKES = 256
PENDING_PER_SOURCE = 8
PENDING_PER_ROSTER_HOST = 64
PENDING_RESERVED_FOR_ROSTER_HOSTS = 128
# Seconds a peer we cut off has to answer our close frame before its connection is dropped.
REFUSED_CLOSE_TIMEOUT = 1.0
# Witnessing events taken from a link's session and waiting their turn (a genuine peer has
# at most one checkpoint offer and one answer in hand at a time).
WITNESSING_QUEUED = 4

log = logging.getLogger("cpn.links")

Data = bytes | str


class _Messages:
    """The messages of one peer connection, taken as websockets parses them.

    websockets queues each message it parses and wakes the task awaiting `recv` at the
    loop's next turn. A loaded node's turn lasts 1 to 3 ms, and a flash message's way met
    one at each end (its envelope at the receiver, its receipt at the sender): at 90% load
    the receipt's frame took 1.6 ms at p50 and 7.2 at p99 to reach the sender's reader.
    Once a link takes them (`take_all`), each whole message goes to it in websockets'
    parsing callback itself. Until then (the signed handshake reads them with `next`),
    they wait here in order, and past `max_queue` the socket is not read meanwhile, as
    websockets' own queue bounds them.
    """

    __slots__ = (
        "_conn",
        "_failed",
        "_high",
        "_parts",
        "_paused",
        "_stopped",
        "_take",
        "_waiting",
        "_wake",
    )

    def __init__(self, conn: WsConnection, max_queue: int) -> None:
        self._conn = conn
        self._high = max_queue
        self._waiting: deque[Data] = deque()
        self._parts: list[Frame] = []  # a fragmented message's frames so far
        self._take: Callable[[Data], None] | None = None
        self._failed: Exception | None = None  # what `_take` raised: the link ends
        self._stopped = False  # the link ends, or ended: nothing more is taken
        self._wake: asyncio.Future[None] | None = None
        self._paused = False

    def frame(self, frame: Frame) -> None:
        """A data frame as parsed (websockets bounds a message's size, fragments included):
        a whole message is taken, or waits."""
        if self._stopped:
            return  # nothing after a message refused, nor once the link's reader is gone
        if not frame.fin:
            self._parts.append(frame)
            return
        frames, self._parts = [*self._parts, frame], []
        data = b"".join(part.data for part in frames)  # one frame: its bytes, not a copy
        # Links carry binary frames only: the session refuses text, whatever it holds.
        message = data.decode(errors="replace") if frames[0].opcode is Opcode.TEXT else data
        if self._take is None:
            self._waiting.append(message)
            if len(self._waiting) >= self._high:
                self._pause()
            self._wakeup()
            return
        try:
            self._take(message)
        except Exception as exc:  # raised to the link's reader: `take_all`
            self._failed = exc  # websockets reads on, for the close frame the link sends
            self._stopped = True
            self._wakeup()

    def lost(self) -> None:
        """The connection closed: whoever waits raises its ConnectionClosed."""
        self._wakeup()

    async def next(self) -> Data:
        """The next message; ConnectionClosed once none waits and the connection closed."""
        while not self._waiting:
            await self._wait()
        message = self._waiting.popleft()
        if self._paused and len(self._waiting) <= self._high // 4:
            self._resume()
        return message

    async def take_all(self, take: Callable[[Data], None]) -> NoReturn:
        """Give `take` every message, those waiting first, each as it is parsed: `take` runs
        in websockets' callback, so it never waits. Raises what `take` raised, or the
        connection's ConnectionClosed once it closes. Ended any way (cancelled with the
        link's other tasks too), nothing more is taken."""
        try:
            while self._waiting:
                take(self._waiting.popleft())
            self._take = take
            if self._paused:
                self._resume()
            while True:
                if self._failed is not None:
                    raise self._failed
                await self._wait()
        finally:
            self._stopped = True
            self._take = None

    async def _wait(self) -> None:
        if self._conn.protocol.state is State.CLOSED:
            raise self._conn.close_exc
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._conn.transport.pause_reading()

    def _resume(self) -> None:
        self._paused = False
        self._conn.transport.resume_reading()


# The frames a link writes in one call, at most (bytes): each run is framed and encrypted
# whole before it goes. Whole batches of 40 envelopes, joined, took the 193-node
# simulation's peak 70 MiB higher (its relays hold hundreds of links); runs of this size
# with `writelines`, 40 MiB.
WRITE_AT_MOST: Final = 64 * 1024


def _runs(frames: Sequence[bytes], at_most: int) -> Iterator[list[bytes]]:
    """`frames` in order, in runs of at most `at_most` bytes (a larger frame alone)."""
    run: list[bytes] = []
    size = 0
    for frame in frames:
        if run and size + len(frame) > at_most:
            yield run
            run, size = [], 0
        run.append(frame)
        size += len(frame)
    if run:
        yield run


_FOR = b'"for":"'  # where a receipt names the message it is for (canonical JSON)


def _for_flash(frame: Data, session: LinkSession) -> bool:
    """A receipt frame for a flash envelope this link has in flight: read where the
    canonical form puts its message id, to start its task at once (it is checked as
    every receipt is, later; a forged one gains nothing but an earlier check)."""
    if not isinstance(frame, bytes):
        return False
    at = frame.find(_FOR)
    if at < 0:
        return False
    start = at + len(_FOR)
    return session.flash_in_flight(frame[start : start + 36].decode("ascii", "replace"))


def _flash_batch(event: Event) -> bool:
    """A batch of flash envelopes (the session gives them in batches of their own)."""
    return (
        isinstance(event, EnvelopesReceived)
        and bool(event.envelopes)
        and rank_hint(event.envelopes[0][1]) == 0
    )


def _write_now(link: _Link) -> None:
    """The session's frames written at once, without waiting: a flash batch (`_look`),
    or its receipts, by whoever answered it. Handed to the writer, they waited for its
    turn of the loop (a flash envelope 0.6 ms at p50 and 3.7 at p99 at 90% load). Only
    while the writer is idle (frames go in order) and the socket takes them without
    waiting (neither a handler nor a flash message's committer waits on a send); else the
    writer takes them (`flush`)."""
    if link.writing.locked() or not link.ws.takes_now():
        link.flush()
        return
    try:
        link.ws.send_frames_now(link.session.data_to_send())
    except Exception:  # the connection is going: the writer's next send says so
        link.flush()


class _LinkConnection(WsConnection):
    """A connection whose data frames go to `messages` as parsed: websockets' client and
    server connections, each with this before it (`_ClientLink`, `_ServerLink`)."""

    def __init__(self, *args: Any, max_queue: int, **kwargs: Any) -> None:
        super().__init__(*args, max_queue=max_queue, **kwargs)
        self.messages = _Messages(self, max_queue)

    def process_event(self, event: WsEvent) -> None:
        if isinstance(event, Frame) and event.opcode in DATA_OPCODES:
            self.messages.frame(event)
        else:
            super().process_event(event)  # the opening handshake's request, control frames

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Each of `frames` a binary message, in order, written to the socket together."""
        async with self.send_context():
            for data in frames:
                self.protocol.send_binary(data)

    def takes_now(self) -> bool:
        """Whether frames written now go without waiting: the connection open and the
        socket's buffer below its high-water mark (websockets' flow control)."""
        return self.protocol.state is State.OPEN and not self.paused

    def send_frames_now(self, frames: Sequence[bytes]) -> None:
        """`send_frames` without waiting, while `takes_now`."""
        for data in frames:
            self.protocol.send_binary(data)
        self.send_data()

    def send_data(self) -> None:
        """websockets' own, but what is ready goes in one call (`writelines`: one system
        call for a batch of frames, not one each; a receiver's receipts for a batch of 32
        envelopes took 32, and woke the sender for each)."""
        data = self.protocol.data_to_send()
        end = data.index(b"") if b"" in data else len(data)  # b"": the end of the stream
        if end:
            self.transport.writelines(data[:end])
        if end < len(data):
            # As websockets does: half-close where the transport can (no TLS), else close.
            if self.transport.can_write_eof():
                with contextlib.suppress(Exception):  # uvloop may raise RuntimeError
                    self.transport.write_eof()
            else:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.messages.lost()


class _ClientLink(_LinkConnection, ClientConnection):
    """A dialled connection (`connect(create_connection=...)`)."""


class _ServerLink(_LinkConnection, ServerConnection):
    """An accepted connection (`_serve`)."""


Connection = _ClientLink | _ServerLink


@dataclass(eq=False)
class _Link:
    peer: NodeId
    ws: Connection
    dialler: NodeId
    since: int
    session: LinkSession
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the session holds frames to write. Whoever reads or handles an event never
    # waits on a send: two nodes each blocked sending to the other while neither reads
    # would deadlock. The session's window bounds what waits.
    to_write: asyncio.Event = field(default_factory=asyncio.Event)
    to_take: asyncio.Event = field(default_factory=asyncio.Event)  # frames wait as events
    # Held while frames are written: by the writer, or by the feed for a flash batch.
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    marks: _Marks | None = None  # set by the feed
    beside: _Beside = field(init=False)  # receipts, flash envelopes: `__post_init__`
    flashing: bool = False  # a flash batch is taken beside it (one at a time)
    receipts_due: bool = False  # a task to take the receipts waiting is on its way
    looking: bool = False  # the feed's look is under way (`Links._look`)
    # Witnessing events, taken in order by a task of their own (`Links._witness`); bounded,
    # so that a peer offering checkpoints faster than we cosign waits, as before, in the
    # session's queue (which refuses a flood).
    witnessing: asyncio.Queue[Event] = field(
        default_factory=lambda: asyncio.Queue(WITNESSING_QUEUED)
    )

    def __post_init__(self) -> None:
        self.beside = _Beside(self._beside_ended)

    def _beside_ended(self, failed: bool) -> None:
        if failed:
            self.to_take.set()  # the worker raises it

    def flush(self) -> None:
        """The session may hold frames to write: wake the writer."""
        self.to_write.set()


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
        settings: LinkSettings | None = None,
        on_roster: Callable[[Roster], Awaitable[None]] | None = None,
        witnessing: Witnessing | None = None,
        restoring: Restoring | None = None,
    ) -> None:
        self.node = node
        self.witnessing = witnessing
        self.restoring = restoring
        self.keys = keys
        self.on_roster = on_roster
        self.host = host
        self.port = port
        self.peers = peers
        self.settings = settings or LinkSettings()
        self.me = keys.node_id
        self.active: dict[NodeId, _Link] = {}
        self._wake: dict[NodeId, asyncio.Event] = {}
        self._links_changed = asyncio.Event()
        self._link_changes = 0  # links come and gone, ever: a burst ends when it stops
        self._my_cert = keys.card.tls_sha256
        self._server: Server | None = None
        self._listener: _Listener | None = None
        # The server's context is handed to the listener once; each connection it accepts
        # takes the trust of the roster held at that moment (`_RosterTrust`).
        self._server_ssl = _RosterTrust(self._ssl_context(server=True))
        self._client_ssl: dict[bytes, ssl.SSLContext] = {}  # by the certificate dialled
        if witnessing is not None:
            witnessing.attach(self._ask_held)

    # -- TLS ---------------------------------------------------------------------

    def _ssl_context(self, *, server: bool, anchors: str | None = None) -> ssl.SSLContext:
        """The server trusts every active contact point's certificate (anyone may dial
        us); a dialler, only `anchors`, the certificate of the peer it dials."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False  # peers are pinned by certificate, not by name
        context.verify_mode = ssl.CERT_REQUIRED  # the server requires a client certificate too
        context.load_verify_locations(cadata=anchors or _anchors(self.node.context.roster))
        load_tls_chain(context, self.keys)  # the key stays out of any file in clear
        return context

    def _client_context(self, card: Card) -> ssl.SSLContext:
        """A context trusting the one certificate of the peer we dial, kept until the
        roster changes. OpenSSL keeps ~4.6 KiB per trusted certificate: a context
        trusting the whole roster took 0.9 MiB, and a node may dial a handful."""
        context = self._client_ssl.get(card.tls_cert)
        if context is None:
            context = self._ssl_context(server=False, anchors=certificate_pem(card.tls_cert))
            self._client_ssl[card.tls_cert] = context
        return context

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
        """Bind the peer server (before the node says it is healthy), or serve on the
        socket handed down for it (socket activation, network.node.sockets)."""
        fd = inherited("peer")
        self._listener = _Listener.open(self.host, self.port) if fd is None else _Listener.adopt(fd)
        await self._know_roster_hosts()
        self._server = await _serve(self._accept, self._listener, self._server_ssl, self._options())

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

    async def _accept(self, ws: _ServerLink) -> None:
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
        await self._link(ws, handshake.peer, handshake.peer, handshake)

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
        context = self._client_context(card)
        async with connect(
            card.url, ssl=context, proxy=None, create_connection=_ClientLink, **self._options()
        ) as ws:
            assert isinstance(ws, _ClientLink)
            peer_cert = self._peer_cert(ws)
            handshake = self._handshake(Role.CLIENT, peer_cert, peer)
            try:
                await self._run_handshake(ws, handshake)
            except PeerError as exc:
                await ws.close(1008, exc.reason)
                raise
            await self._link(ws, peer, self.me, handshake)

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
                    for out in handshake.receive(await ws.messages.next()):
                        await ws.send(out)
        except TimeoutError:
            raise HandshakeError(
                f"no signed handshake within {limit}s", reason="handshake_timeout"
            ) from None

    async def _refused(self, ws: _ServerLink, remote: str, exc: PeerError) -> None:
        reason = exc.reason
        log.warning("%s: refused a link from %s: %s", self.me, remote, exc)
        await self._record_refusal(remote, "link_refused", exc)
        with contextlib.suppress(Exception):
            await ws.close(1008, reason[:100])

    async def _record_refusal(self, who: str, action: str, exc: Exception) -> None:
        reason = exc.reason if isinstance(exc, CpnError) else type(exc).__name__
        detail = {"remote": who, "reason": reason, "error": str(exc)[:500]}
        entry = AuditEntry(f"peer:{who}", action, None, detail)
        with contextlib.suppress(CpnError):  # a peer refused in a loop is counted, not logged
            await self.node.context.audit(self.node.context.refusal(who, entry))

    # -- an established link ---------------------------------------------------------

    async def _link(
        self, ws: Connection, peer: NodeId, dialler: NodeId, handshake: LinkHandshake
    ) -> None:
        peer_roster = handshake.peer_roster_version
        assert handshake.version is not None
        session = LinkSession(peer, self.settings, handshake.version)
        link = _Link(peer, ws, dialler, self.node.context.clock(), session)
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
                link.session.send_roster(self.node.context.roster.raw)
            for raw in self.node.delivery.announcements():
                link.session.send_announcement(raw)
            self._offer_checkpoint(link)
            self._ask_back(link)
            link.flush()
            self._link_changed(lost=False)
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
                self._link_changed(lost=True)
            link.closed.set()
            with contextlib.suppress(Exception):
                await ws.close()
            log.info("%s: link with %s closed: %s", self.me, peer, why)

    def _link_changed(self, *, lost: bool) -> None:
        self.node.delivery.links_changed(lost=lost)
        self._link_changes += 1
        self._links_changed.set()

    async def _announcer(self) -> None:
        """Tell every peer which links we have, once per burst of changes: once no link
        has come or gone for `announce_delay`, or at the latest after ten times that.

        Each version of our announcement crosses every link of the network and is
        verified by every node: at start, as a node's links come up one by one, a
        version per link was most of the work of a large network's first seconds."""
        delay = self.settings.announce_delay
        while True:
            await self._links_changed.wait()
            await after_burst(lambda: self._link_changes, delay, 10 * delay)
            self._links_changed.clear()
            announcement = self.node.delivery.announcement()
            self._broadcast(LinkSession.send_announcement, announcement.raw)

    async def _route_refresher(self) -> None:
        """Routes follow announcements once per burst: once none has brought news for
        `ROUTE_QUIET_MS`, and every `ROUTE_REFRESH_MS` while the burst lasts."""
        delivery = self.node.delivery
        while True:
            await delivery.routes_stale.wait()
            await after_burst(
                lambda: delivery.route_news, ROUTE_QUIET_MS / 1000, ROUTE_REFRESH_MS / 1000
            )
            delivery.refresh_routes(paused=True)

    def offer_checkpoint(self) -> None:
        """Offer our newest checkpoint to every linked peer, each with its own proof."""
        for link in list(self.active.values()):
            self._offer_checkpoint(link)

    def _offer_checkpoint(self, link: _Link) -> None:
        offer = self.witnessing.offer_for(link.peer) if self.witnessing is not None else None
        if offer is not None:
            self._send_checkpoint(link, offer)
            link.flush()

    @staticmethod
    def _send_checkpoint(link: _Link, offer: CheckpointOffer) -> None:
        # Explaining a restore takes version 2: a version-1 witness is offered nothing
        # until it speaks it (offered without the reason, it would take us for a fork).
        if offer.restored is None or link.session.version >= RESTORE_VERSION:
            link.session.send_checkpoint(offer)

    def ask_back(self) -> None:
        """After our restore is explained: ask every linked peer for what it holds of ours."""
        for link in list(self.active.values()):
            self._ask_back(link)

    def _ask_back(self, link: _Link) -> None:
        if self.restoring is None or link.session.version < RESTORE_VERSION:
            return
        if link.session.asking_back:
            return
        ask = self.restoring.first_ask(link.peer)
        if ask is not None:
            link.session.ask_back(ask)
            link.flush()

    def version_one(self) -> list[NodeId]:
        """The linked peers whose links speak version 1 (they cannot give back)."""
        return [p for p, link in self.active.items() if link.session.version < RESTORE_VERSION]

    def _ask_held(self, query: HeldQuery) -> list[NodeId]:
        """Ask every linked peer which checkpoint of our log it holds; the peers asked."""
        for link in list(self.active.values()):
            link.session.send_held_query(query)
            link.flush()
        return list(self.active)

    def _broadcast(
        self, send: Callable[[LinkSession, bytes], None], raw: bytes, *, but: str | None = None
    ) -> None:
        """`send(session, raw)` on every link but the one to `but`."""
        for peer, link in list(self.active.items()):
            if peer != but:
                send(link.session, raw)
                link.flush()

    async def adopt_roster(self, raw: bytes, source: str) -> Roster | None:
        """A roster from a peer or the operator: adopt it if newer, pass it on, act on it."""
        roster = await self.node.inbound.accept_roster(raw, source)
        if roster is None:
            return None
        # New contexts trusting exactly this roster's active contact points: a certificate
        # revoked or replaced no longer opens even a TLS connection.
        self._server_ssl.renew(self._ssl_context(server=True))
        self._client_ssl.clear()
        await self._know_roster_hosts()
        if self.on_roster is not None:
            await self.on_roster(roster)
        self._broadcast(LinkSession.send_roster, raw, but=source)
        for peer, link in list(self.active.items()):
            entry = roster.entries.get(peer)
            if entry is None or not entry.active:
                log.warning("%s: closing the link with %s: no longer in the roster", self.me, peer)
                await link.ws.close(1008, "revoked")
        return roster

    async def _know_roster_hosts(self) -> None:
        """Tell the listener the addresses of the roster's contact points (their card URLs'
        hosts, resolved): room among unfinished handshakes is kept for them."""
        if self._listener is None:
            return
        loop = asyncio.get_running_loop()
        hosts: set[str] = set()
        for entry in self.node.context.roster.entries.values():
            name = urlsplit(entry.card.url).hostname if entry.active else None
            if not name:
                continue
            try:
                found = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError as exc:  # that peer's unfinished handshakes count as a stranger's
                log.warning(
                    "%s: cannot resolve %s's host %s: %s", self.me, entry.card.id, name, exc
                )
                continue
            for *_, address in found:
                hosts.add(str(address[0]))
                hosts.add(f"::ffff:{address[0]}")  # as a dual-stack listener sees IPv4
        self._listener.pending.set_roster_hosts(hosts)

    async def _carry(self, link: _Link) -> str:
        """Run a link until one of its four tasks ends; says why it ended.

        A PeerError (what the peer sent) is audited and closes the link with
        1002; a stall or a closed connection ends it; a full disk (StoreError)
        is raised to `_link`; anything else is our bug, which is audited
        (`link_failed`) and closes this link with 1011, never the node.
        Whatever was in flight may go again at once, on another link or this
        one redialled.
        """
        ended: list[BaseException] = []
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(link), name=f"read {link.peer}")
                group.create_task(self._write(link), name=f"write {link.peer}")
                group.create_task(self._work(link), name=f"work {link.peer}")
                group.create_task(self._feed(link), name=f"feed {link.peer}")
                if self.witnessing is not None:
                    group.create_task(self._witness(link), name=f"witness {link.peer}")
                # Wait here until a task fails: the group's cancel must land in this body, or
                # Python 3.11 leaves this task's cancel count raised (fixed in 3.12).
                await asyncio.get_running_loop().create_future()
        except BaseExceptionGroup as failed:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None  # the node stops: that comes first
            ended = _leaves(failed)
        finally:
            with contextlib.suppress(Exception):
                await link.beside.drain()
            if link.marks is not None:  # before the release, or a late mark would undo it
                with contextlib.suppress(Exception):
                    await link.marks.settled()
            with contextlib.suppress(CpnError):
                await self.node.delivery.release(link.session.in_flight)
        why = "stopped"
        for exc in ended:
            if not isinstance(exc, _Closed):
                why = _describe(exc)
            elif why == "stopped":
                why = _describe(link.ws.close_exc) if link.ws.close_code else "closed"
            if isinstance(exc, PeerError):
                await self._record_refusal(link.peer, "link_protocol_error", exc)
                # A peer cut off for what it sent may never read our close frame (it is
                # still sending, and we stopped reading): wait briefly, then drop it.
                link.ws.close_timeout = REFUSED_CLOSE_TIMEOUT
                with contextlib.suppress(Exception):
                    await link.ws.close(1002, exc.reason[:100])
            elif isinstance(exc, StoreError):
                raise exc  # our disk: `_link` closes with 1011 and names the store's cause
            elif not isinstance(exc, _Closed | _Stalled):
                # Our bug, met while handling this peer's frames: it ends this link only
                # (the peer redials, with backoff), never the node. Audited as ours.
                log.error("%s: link with %s failed", self.me, link.peer, exc_info=exc)
                detail = {"peer": link.peer, "error": f"{type(exc).__name__}: {exc}"[:500]}
                with contextlib.suppress(CpnError):
                    await self.node.context.audit(
                        [AuditEntry(self.node.context.actor, "link_failed", None, detail)]
                    )
                with contextlib.suppress(Exception):
                    await link.ws.close(1011, "internal error")
        return why

    async def _read(self, link: _Link) -> None:
        """Give the session every frame as websockets parses it (`_Messages`): it refuses a
        peer past its window, or flooding. Nothing here waits on processing: a reader held
        up would stop websockets reading the socket, pongs included, and a busy link would
        be dropped as dead."""
        try:
            await link.ws.messages.take_all(lambda data: self._received(link, data))
        except ConnectionClosed as exc:
            fault = _peer_fault(exc)
            if fault is not None:
                raise fault from exc
        raise _Closed("the connection closed while reading")

    def _received(self, link: _Link, data: Data) -> None:
        """A frame to the session, for the worker; a flash envelope is taken beside it, at
        once, and receipts by a task of their own."""
        session = link.session
        receipts = session.receipts_waiting
        session.receive_frame(data)
        if session.receipts_waiting > receipts:
            self._take_waiting_receipts(link, flash=_for_flash(data, session))
        else:
            link.to_take.set()
        if session.flash_waiting:
            self._take_flash(link)

    def _take_waiting_receipts(self, link: _Link, *, flash: bool = False) -> None:
        """Receipts straight to a task that takes them, not through the worker: each task
        hop cost a loaded sender a turn of its loop, and at 90% load a flash receipt took
        1.6 ms at p50 (6.9 at p99) from its frame to its check. The frames that come in the
        same turn join the batch the task takes when it starts. A `flash` receipt's task
        starts at once (`start_now`), with what waits now: its turn was still 1.4 ms at
        p50 and 6 at p99 (thirty-first session). The others keep their batch: taken
        at once, each frame's receipts were a transaction of their own, and the sender's
        rate fell by an eighth (thirtieth session)."""
        if flash:
            link.beside.spawn(self._receipts_taker(link), now=True)
        elif not link.receipts_due:
            link.receipts_due = True
            link.beside.spawn(self._receipts_taker(link))

    async def _receipts_taker(self, link: _Link) -> None:
        link.receipts_due = False
        batch = link.session.take_receipts()
        if batch is not None:
            await self._take_receipts(link, batch.receipts)

    async def _write(self, link: _Link) -> None:
        """Write the session's frames, in order: the one task that waits on a send, with
        the feed when it writes a flash batch itself (`_write_flash`)."""
        while True:
            if not await self._write_waiting(link):
                link.to_write.clear()
                await link.to_write.wait()

    @staticmethod
    async def _write_waiting(link: _Link) -> bool:
        """Write the frames the session has to send, in order, under the link's lock;
        whether there were any."""
        try:
            async with link.writing:
                frames = link.session.data_to_send()
                for run in _runs(frames, WRITE_AT_MOST):
                    await link.ws.send_frames(run)
        except ConnectionClosed:
            raise _Closed("the connection closed while writing") from None
        return bool(frames)

    async def _work(self, link: _Link) -> None:
        """Take the session's events, in order, to the use cases."""
        while True:
            link.beside.check()
            events = link.session.events_received()
            if not events:
                link.to_take.clear()
                await link.to_take.wait()
            for event in events:
                await self._handle(link, event)
                if _flash_batch(event):
                    _write_now(link)
                else:
                    link.flush()

    async def _handle(self, link: _Link, event: Event) -> None:
        """One event to its use case: every call the receiving side makes into the node."""
        peer, session = link.peer, link.session
        match event:
            case EnvelopesReceived(envelopes):
                receipts = await self.node.inbound.accept_envelopes(peer, envelopes)
                session.answer(event, receipts)
            case ReceiptsReceived(receipts):
                # Taken beside the events after them: a batch of receipts waits for its
                # commit, and a flash receipt coming next need not wait behind it.
                link.beside.spawn(self._take_receipts(link, receipts))
            case AnnouncementReceived(raw):
                try:
                    news = self.node.delivery.accept_announcement(raw)
                except CpnError as exc:  # unknown or revoked node, bad signature: not passed on
                    log.info("%s: ignored an announcement from %s: %s", self.me, peer, exc)
                    return
                if news:
                    self._broadcast(LinkSession.send_announcement, raw, but=peer)
            case RosterReceived(raw):
                await self.adopt_roster(raw, peer)
            case CheckpointOffered() | CosignatureReceived() | HeldAsked() if (
                self.witnessing is not None
            ):
                await link.witnessing.put(event)  # beside the events after it: `_witness`
            case HeldAnswered(answer) if self.witnessing is not None:
                self.witnessing.take_held(peer, answer)
            case GiveBackAsked(ask):
                session.give_back(*await give_back(self.node.context, peer, ask))
            case PageReturned(items, end) if self.restoring is not None:
                following = None
                try:
                    following = await self.restoring.take_page(peer, items, end)
                finally:
                    if following is not None:
                        session.ask_back(following)
                    else:
                        session.page_taken()
            case _:  # witnessing frames to a node that does not witness
                raise PeerError(f"{type(event).__name__} after the handshake", reason="protocol")

    def _take_flash(self, link: _Link) -> None:
        """Flash envelopes taken beside the worker, as their frame is read: at 90% load a
        flash envelope waited up to 16 ms for the urgent batch under way; and one that found
        the worker waiting waited for its turn of the loop. Its task starts at once
        (`start_now`), not at the loop's next turn."""
        if link.flashing:
            return  # one batch at a time (a peer's window bounds what waits): it looks again
        batch = link.session.take_flash()
        if batch is not None:
            link.flashing = True
            link.beside.spawn(self._take_flash_batch(link, batch), now=True)

    async def _take_flash_batch(self, link: _Link, batch: EnvelopesReceived) -> None:
        try:
            receipts = await self.node.inbound.accept_envelopes(link.peer, batch.envelopes)
            link.session.answer(batch, receipts)
            _write_now(link)
        finally:
            link.flashing = False
        self._take_flash(link)  # what came meanwhile

    async def _witness(self, link: _Link) -> None:
        """Take the link's witnessing events, in order, beside its other events: each waits
        for a store transaction, and at 90% load receipts queued behind one on the link's
        worker waited up to 120 ms (a flash message's p99)."""
        witnessing, peer, session = self.witnessing, link.peer, link.session
        assert witnessing is not None
        while True:
            match await link.witnessing.get():
                case CheckpointOffered(offer):
                    verdict = await witnessing.witness(peer, offer)
                    if verdict is not None:
                        session.send_witness(verdict)
                case CosignatureReceived(answer):
                    again = await witnessing.take_answer(peer, answer)
                    if again is not None:
                        self._send_checkpoint(link, again)
                case HeldAsked(query):
                    session.send_held(await witnessing.answer_held(peer, query))
            link.flush()

    async def _take_receipts(self, link: _Link, receipts: tuple[bytes, ...]) -> None:
        marks = link.marks
        settled = await self.node.inbound.accept_receipts(
            link.peer, receipts, link.session.flash_in_flight, marks.take if marks else None
        )
        link.session.receipts_settled(settled)
        self.node.delivery.outbox_signal(link.peer).set()  # room for the feed
        link.flush()

    async def _feed(self, link: _Link) -> None:
        """Give the session what routes through this link, flash first, as its window allows.

        Wakes when something is queued for this link, when receipts free room,
        and every `poll_interval` for retries that came due. Ends the link when
        the oldest envelope in flight waits past `receipt_timeout`. A flash message's
        committer takes the feed's look itself (`_look_now`).
        """
        outbox = _Outbox(self.node.delivery, link.peer, self.settings)
        session = link.session
        marks = link.marks = _Marks(outbox)
        looks = self.node.delivery.looks
        looks[link.peer] = look_now = partial(self._look_now, link, outbox, marks)
        try:
            while True:
                marks.check()  # a mark that failed (a full disk) ends the link
                outbox.signal.clear()
                if await self._look(link, outbox, marks):
                    continue
                if session.stalled(time.monotonic()) is not None:
                    limit = self.settings.receipt_timeout
                    raise _Stalled(f"{link.peer} sent no receipt for {limit}s")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.poll_interval):
                        await outbox.signal.wait()
        finally:
            if looks.get(link.peer) == look_now:  # not a newer link's to that peer
                del looks[link.peer]

    async def _look(self, link: _Link, outbox: _Outbox, marks: _Marks) -> bool:
        """The feed's look: what goes now, given to the session and written (a flash batch
        at once, `_write_now`); whether a batch went. One look at a time: False at once
        while another is under way (the committer's wakes the feed as it ends)."""
        if link.looking:
            return False
        link.looking = True
        try:
            session = link.session
            receipts, batch = await outbox.take(session.room(), session.in_flight, time.monotonic())
            for receipt in receipts:
                session.send_receipt(receipt)
            link.flush()
            if not batch:
                return False
            session.send_envelopes(batch, time.monotonic())
            flash = any(item.rank == 0 for item in batch)
            if flash:
                _write_now(link)
            else:
                link.flush()
            marks.add([item.message_id for item in batch], flash)
            return True
        finally:
            link.looking = False

    async def _look_now(self, link: _Link, outbox: _Outbox, marks: _Marks) -> None:
        """The feed's look, taken by a flash message's committer (`Delivery.flash_out`)
        rather than at the feed's next turn of the loop: at 90% load that turn was 1.1 ms
        at p50 and 4.6 at p99 of a flash message's way. A failure (a full disk) is work
        beside the link's tasks failing (`_Beside.fail`): it ends the link. Its
        committer's task is not cancelled when the officer's client goes (aiohttp's
        default, which the API keeps); at the node's stop, what a look took from the
        scheduler is found by the next start's look through the outbox."""
        try:
            await self._look(link, outbox, marks)
        except Exception as exc:
            link.beside.fail(exc)
        finally:
            # The feed looks after it: its own look may have been refused meanwhile, with
            # room a receipt freed.
            outbox.signal.set()


class _Outbox:
    """The use cases' side of one link's sending: every call the feed makes into the node.

    Which look through the store each wake takes is the scheduler's decision
    (network.node.scheduler); this keeps the link's poll timer (retries come due).
    """

    def __init__(self, delivery: Delivery, peer: NodeId, settings: LinkSettings) -> None:
        self.delivery = delivery
        self.peer = peer
        self.settings = settings
        self.signal = delivery.outbox_signal(peer)
        self._last_poll = -math.inf
        # A link's first turn looks through the whole outbox already, wide
        # (`Scheduler.link_up`): its first sweep is one interval on.
        self._last_sweep = time.monotonic()

    async def take(
        self, room: Room, exclude: list[str], now: float
    ) -> tuple[tuple[bytes, ...], list[Outgoing]]:
        """End-to-end receipts passing back through this link, and up to `room.count`
        envelopes to send now (flash only if the room says so)."""
        poll = now - self._last_poll >= self.settings.poll_interval  # retries
        sweep = now - self._last_sweep >= self.settings.sweep_interval
        batch = await self.delivery.next_batch(self.peer, room, exclude, poll=poll, sweep=sweep)
        if batch.polled:
            self._last_poll = now
        if batch.swept:
            self._last_sweep = now
        unique = {row.id: row for row in batch.rows}  # a message queued twice goes once
        return batch.receipts, [_outgoing(row) for row in unique.values()]

    async def sent(self, message_ids: list[str], flash: bool) -> None:
        """Written to the link: without a receipt they go again after the retry time."""
        await self.delivery.mark_sent(self.peer, message_ids, flash=flash)


class _Beside:
    """Work taken beside a link's own tasks, each in a task of its own; the first failure
    (a full disk) is kept, `check` raises it, and it ends the link. Beside the worker:
    receipt batches, so that it goes on to the next event (a flash receipt among them)
    while a batch waits for its commit, and flash envelopes, whatever it is doing. Beside
    the feed: its sent marks (`_Marks`). A failure in work beside them that ran in
    another's task (a flash message's committer taking the feed's look) is kept the same
    way (`fail`)."""

    def __init__(self, ended: Callable[[bool], None]) -> None:
        self.running: set[asyncio.Future[None]] = set()
        self.failed: BaseException | None = None
        self._ended = ended  # told, as each task ends, whether it failed

    def spawn(self, work: Coroutine[Any, Any, None], *, now: bool = False) -> asyncio.Future[None]:
        """`work` in a task of its own; `now`: run at once up to its first wait
        (`start_now`), not at the loop's next turn."""
        task = start_now(work) if now else asyncio.create_task(work)
        self.running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[None]) -> None:
        self.running.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.fail(error)
        else:
            self._ended(False)

    def fail(self, error: BaseException) -> None:
        """Work beside the link's tasks failed: the first failure is kept for `check`."""
        if self.failed is None:
            self.failed = error
        self._ended(True)

    def check(self) -> None:
        if self.failed is not None:
            raise self.failed

    async def drain(self) -> None:
        """Until every batch is taken (at the link's end: before what is in flight goes
        again)."""
        while self.running:
            await asyncio.wait(set(self.running))


# How long a link's sent marks (but a flash batch's) wait to be written: a receipt that
# comes meanwhile writes them in its own transaction (`_Marks.take`). Under load most
# receipts are back within it; a mark is a transaction that needs no fsync.
MARKS_HOLD_S: Final = 0.1


class _Marks:
    """One link's sent marks, written behind the feed: it sends on without waiting for
    them (a flash envelope queued meanwhile would wait), and what it sent within
    `MARKS_HOLD_S`, or while one mark commits, goes in the next, together. A receipt
    that comes meanwhile writes the marks of its messages still waiting in its own
    transaction (`take`): one transaction where there were two, and one change of each
    row. One whose mark is being written waits for it, so that `sent` is in the log
    before `receipt_received`. A batch with a flash envelope is marked at once, in a
    transaction of its own that goes first: its receipt, which waits for the mark, must
    not wait behind the stream's marks too (at 90% load that wait was a flash message's
    p99). That mark is done once in the store's batch (`Store.transaction`'s `early`):
    the receipt's transaction, after it, commits it."""

    def __init__(self, outbox: _Outbox) -> None:
        self.outbox = outbox
        self.pending: dict[str, None] = {}  # sent, the mark not yet begun (in order)
        self.unmarked: set[str] = set()  # sent, the mark not yet committed
        self.stream: asyncio.Future[None] | None = None  # marking `pending`, batch after batch
        self.tasks = _Beside(lambda failed: self._next_round())  # the stream, flash marks
        # Done at the end of each mark: what waits for some ids looks again then (under a
        # steady stream the marking task itself never ends).
        self.round: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.hurry = asyncio.Event()  # the link ends: mark what waits now

    def add(self, message_ids: list[str], flash: bool) -> None:
        self.unmarked.update(message_ids)
        if flash:
            self.tasks.spawn(self._mark(message_ids, flash=True))
            return
        self.pending.update(dict.fromkeys(message_ids))
        if self.stream is None or self.stream.done():
            self.check()
            self.stream = self.tasks.spawn(self._mark_pending())

    def _next_round(self) -> None:
        done, self.round = self.round, asyncio.get_running_loop().create_future()
        done.set_result(None)

    async def _mark_pending(self) -> None:
        while self.pending:
            if not self.hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.hurry.wait(), MARKS_HOLD_S)
            ids, self.pending = list(self.pending), {}
            if ids:  # else receipts took them all
                await self._mark(ids, flash=False)

    async def _mark(self, ids: list[str], *, flash: bool) -> None:
        await self.outbox.sent(ids, flash)
        self.unmarked.difference_update(ids)
        self._next_round()

    def check(self) -> None:
        """Raise what a mark raised."""
        self.tasks.check()

    async def take(self, message_ids: Sequence[str]) -> list[str]:
        """For a receipts' transaction: those of `message_ids` whose marks wait to be
        begun, which it writes itself (they are no longer this link's to write), once
        the marks of the others being written are committed."""
        # Each id once: a hop's and an end-to-end receipt for one message may come together.
        taken = [i for i in dict.fromkeys(message_ids) if i in self.pending]
        for message_id in taken:
            del self.pending[message_id]
        self.unmarked.difference_update(taken)
        await self.settled(message_ids)
        return taken

    async def settled(self, message_ids: Sequence[str] | None = None) -> None:
        """Once these (None: all sent so far, at once) are marked; raises what a mark
        raised."""
        if message_ids is None:
            self.hurry.set()
        wanted = set(self.unmarked if message_ids is None else message_ids)
        while self.tasks.failed is None and self.tasks.running and wanted & self.unmarked:
            await asyncio.wait((self.round,))
        self.check()


async def after_burst(changes: Callable[[], int], quiet: float, at_most: float) -> None:
    """Return once `changes()` has stood still for `quiet` seconds, or after `at_most`:
    a burst of changes is followed once when it pauses, and regularly while it lasts."""
    waited = 0.0
    while waited < at_most:
        seen = changes()
        await asyncio.sleep(min(quiet, at_most - waited))
        waited += quiet
        if changes() == seen:
            return


def _outgoing(row: MessageRow) -> Outgoing:
    path = row.path if row.box == "relay" else ()
    return Outgoing(row.id, path, row.envelope, PRIORITY_RANK[Priority(row.priority)])


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in a group and its nested groups, in order."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


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


class _RosterTrust(ssl.SSLContext):
    """The peer server's TLS context, whose connections each use the newest context given.

    asyncio keeps the context a server was started with and calls its `wrap_bio` for
    every connection; an OpenSSL trust store can only grow. So the server holds this
    one, and each connection is wrapped by `current`, renewed with every roster: a
    revoked certificate stops opening connections without restarting the listener
    (whose socket may have come from systemd).
    """

    current: ssl.SSLContext

    def __new__(cls, current: ssl.SSLContext) -> _RosterTrust:
        trust = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        trust.current = current
        return trust

    def renew(self, current: ssl.SSLContext) -> None:
        self.current = current

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        return self.current.wrap_bio(*args, **kwargs)


# How long a closing handshake may take, WebSocket's and then TLS's (websockets' `serve`
# gives both its `close_timeout`, 10 s by default; the loop's own TLS default is 30 s).
_CLOSE_TIMEOUT = 10.0


def _serve(
    handler: Callable[[_ServerLink], Awaitable[None]],
    listener: _Listener,
    context: ssl.SSLContext,
    options: dict[str, Any],
) -> Server:
    """websockets' server over TLS on `listener`, each connection accepted through its
    bounds (`_Listener.accept`).

    `websockets.asyncio.server.serve` hands its socket to the loop's `create_server`, and
    libuv's loop (uvloop, which `cpn node run` serves on) accepts in C without calling the
    socket's `accept`: the bounds would be bypassed. So connections are accepted here with
    `loop.sock_accept` (which calls it), wrapped in TLS by `loop.connect_accepted_socket`,
    and each given to a websockets `ServerConnection` whose life is `serve`'s own: the
    opening handshake within `open_timeout`, then `handler`.
    """
    open_timeout = options["open_timeout"]

    def connection() -> _ServerLink:
        protocol = ServerProtocol(max_size=options["max_size"])  # no extensions: no compression
        return _ServerLink(
            protocol,
            server,
            ping_interval=options["ping_interval"],
            ping_timeout=options["ping_timeout"],
            close_timeout=_CLOSE_TIMEOUT,
            max_queue=options["max_queue"],
        )

    async def life(ws: _ServerLink) -> None:
        try:
            async with asyncio.timeout(open_timeout):
                await ws.handshake()
            if ws.protocol.state is not State.OPEN or not server.is_serving():
                ws.transport.abort()  # failed, or opened as the server's close began
                return
            server.all_connections.add(ws)
            ws.start_keepalive()
            try:
                async with ws:
                    await handler(ws)
            except Exception:
                ws.logger.error("connection handler failed", exc_info=True)
            finally:
                server.all_connections.discard(ws)
        except Exception:
            ws.transport.abort()  # the opening handshake timed out or failed
        finally:
            server.handler_tasks.discard(asyncio.current_task())

    async def accepting() -> _Accepting:
        return _Accepting(listener, connection, context, open_timeout)

    server = Server(accepting, life)  # type: ignore[arg-type]
    return server


class _Accepting:
    """What websockets' `Server` needs of an asyncio server: accepts on `listener` until
    closed, each connection handed to the loop for TLS, then to `connection()`."""

    def __init__(
        self,
        listener: _Listener,
        connection: Callable[[], _ServerLink],
        context: ssl.SSLContext,
        handshake_timeout: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        self._connection = connection
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._opening: set[asyncio.Task[None]] = set()
        self._closed = False
        self.sockets = (listener,)
        self._accepts = self._loop.create_task(self._accept_forever(), name="peer accepts")

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        # False from `close()` on, as asyncio's server: websockets answers an opening
        # handshake 503 once it is, and closes only the connections open when its close
        # began. (Read from the accepting task, it stayed true until the task had run
        # its cancellation: a peer's link that opened then outlived the node's stop.)
        return not self._closed

    async def start_serving(self) -> None:
        pass  # serving from the start

    def close(self) -> None:
        self._closed = True
        self._accepts.cancel()
        for opening in self._opening:
            opening.cancel()
        self._listener.close()

    async def wait_closed(self) -> None:
        await asyncio.wait([self._accepts, *self._opening])

    async def _accept_forever(self) -> None:
        async for batch in accepted(self._listener, "peer server"):
            for conn, _ in batch:
                if conn not in self._listener.pending:  # shut at once: no room for its source
                    conn.close()
                    continue
                opening = self._loop.create_task(self._open(conn))
                self._opening.add(opening)
                opening.add_done_callback(self._opening.discard)

    async def _open(self, conn: socket.socket) -> None:
        # A failed or timed-out TLS handshake closes the connection (the loop owns it now).
        with contextlib.suppress(OSError, TimeoutError):
            await self._loop.connect_accepted_socket(
                self._connection,
                conn,
                ssl=self._context,
                ssl_handshake_timeout=self._handshake_timeout,
                ssl_shutdown_timeout=_CLOSE_TIMEOUT,
            )


class _Listener(socket.socket):
    """The peer server's listening socket: it holds the accepted connections whose
    handshakes have not finished within the bounds of `PendingHandshakes`, and shuts the
    ones it names to make room (their transports see EOF and close).

    Each handshake has its own timeout (TLS, WebSocket upgrade, signed hello); this
    bounds how many a stranger opening connections and never finishing them makes us
    hold meanwhile, and keeps it from pushing out the contact points' own.
    """

    @classmethod
    def open(cls, host: str, port: int) -> _Listener:
        return bound(host, port, cls)

    @classmethod
    def adopt(cls, fd: int) -> _Listener:
        """The listening socket `fd`, bound and listening already (socket activation)."""
        return cls(-1, -1, -1, fd)  # family and type read from the descriptor

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pending: PendingHandshakes[socket.socket] = PendingHandshakes(
            limit=MAX_PENDING_HANDSHAKES,
            per_source=PENDING_PER_SOURCE,
            per_roster_host=PENDING_PER_ROSTER_HOST,
            reserved=PENDING_RESERVED_FOR_ROSTER_HOSTS,
        )

    def accept(self) -> tuple[socket.socket, Any]:
        conn, address = super().accept()
        for closed in [s for s in self.pending if s.fileno() == -1]:  # closed ones read -1
            self.pending.settle(closed)
        for shut in self.pending.arrive(conn, str(address[0])):
            self.pending.settle(shut)  # `conn` itself, when only roster hosts hold slots
            with contextlib.suppress(OSError):
                shut.shutdown(socket.SHUT_RDWR)
        return conn, address

    def settled(self, ws: Connection) -> None:
        """`ws` finished its handshake (or failed it): no longer pending."""
        sock = ws.transport.get_extra_info("socket")
        fileno = sock.fileno() if sock is not None else -1
        for held in self.pending:
            if held.fileno() in (-1, fileno):
                self.pending.settle(held)


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
