"""One established link, sans I/O: frames in, events and frames out, the send window.

A `LinkSession` starts where `protocol.LinkHandshake` ends: both signatures
verified. It holds no socket, no task and no clock. The adapter feeds it the
frames the peer sent (`receive_frame`), takes the events they make
(`events_received`) and hands them to the use cases, tells it what to send
(`send_envelopes`, `send_receipt`, `answer`, ...) and writes out what
`data_to_send` returns. Times are seconds on the caller's monotonic clock,
passed in as `now`.

Rules:
- Frames after the handshake are E, R, N, S, C, K, Q and W. Any other kind, a text
  frame, a frame over its kind's limit, or a payload that does not parse,
  raises a `PeerError` (`malformed`, `oversize`, `protocol`) at once: the
  link is cut for it.
- The peer may hold at most `window + flash_reserve + batch` envelopes we
  have not answered with a receipt: its window, its flash reserve, and one
  batch we are still committing. One more raises `window_exceeded`.
- Frames received and not yet taken as events are bounded by
  `max_queued_frames` (far above what the windows allow, plus one
  announcement per contact point) and by `max_queued_bytes` (a full window of
  the largest envelopes, every announcement and a roster, twice over); one
  more raises `flood`. At most one roster waits: a newer frame replaces the
  one not yet taken (rosters supersede each other; the keeper's signature and
  version decide later). The adapter's reader never waits, so a fast peer is
  bounded by this, not by our memory.
- `events_received` gives, in order: the announcements, rosters, checkpoint
  offers, cosignatures and held-checkpoint questions and answers as they
  came, then every receipt in one event, then one batch of at most `batch`
  envelopes, flash first (a scheduling hint read from the clear header; the
  checks come later, in the use case).
  Envelopes beyond the batch wait for the next call.
- `take_flash` gives the flash envelopes waiting (at most `batch`) as a batch of
  their own, ahead of the frames that came before them, which keep their order: the
  adapter takes them beside a batch it is still checking.
- We keep at most `window + flash_reserve` envelopes in flight without a
  receipt. `room()` says how many may go in the next batch and whether only
  flash may: a look that finds the window full may still send flash, up to
  the reserve. A batch outside the room is our bug: `ValueError`.
- `stalled(now)` names the oldest envelope in flight once it has waited
  longer than `receipt_timeout`: the adapter drops the link and dials again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from network.core.errors import PeerError
from network.core.protocol import (
    FRAME_ANNOUNCE,
    FRAME_CHECKPOINT,
    FRAME_COSIGNATURE,
    FRAME_ENVELOPE,
    FRAME_GIVE_BACK,
    FRAME_HELD,
    FRAME_HELD_QUERY,
    FRAME_PAGE_END,
    FRAME_RECEIPT,
    FRAME_RETURNED,
    FRAME_ROSTER,
    FRAME_SINCE,
    RETURN_PAGE,
    CheckpointOffer,
    GiveBack,
    HeldCheckpoint,
    HeldQuery,
    PageEnd,
    Returned,
    WitnessAnswer,
    checkpoint_frame,
    envelope_frame,
    frame,
    give_back_frame,
    held_frame,
    held_query_frame,
    page_end_frame,
    parse_checkpoint_offer,
    parse_give_back,
    parse_held,
    parse_held_query,
    parse_page_end,
    parse_returned,
    parse_witness_answer,
    returned_frame,
    split_envelope,
    split_frame,
    witness_frame,
)
from network.core.records import NodeId

__all__ = [
    "AnnouncementReceived",
    "Carried",
    "CheckpointOffered",
    "CosignatureReceived",
    "EnvelopesReceived",
    "Event",
    "GiveBackAsked",
    "HeldAnswered",
    "HeldAsked",
    "LinkSession",
    "LinkSettings",
    "Outgoing",
    "PageReturned",
    "ReceiptsReceived",
    "Room",
    "RosterReceived",
    "Stall",
    "rank_hint",
]


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """How one node runs its links. Seconds throughout; None turns keepalive pings off."""

    window: int = 40  # envelopes in flight without a receipt, per link (flash aside)
    flash_reserve: int = 8  # more in flight for flash only, so a full window never holds it back
    # Once the window is busy, the others go when there is room for this many: one at a
    # time as receipts freed places, the receiver ran a transaction for each (at
    # saturation, seconds of latency: the silly window).
    least_batch: int = 8
    # Envelopes taken in one use case (flash waiting goes in a batch of its own). Smaller
    # batches let a flash envelope arriving meanwhile wait for fewer checks, but cost a
    # busy relay more transactions: 8 made the 193-node simulation slower.
    batch: int = 32
    max_queued_frames: int = 4096  # received, not yet taken as events
    max_queued_bytes: int = 24 * 1024 * 1024  # their payloads, envelopes not yet batched too
    handshake_timeout: float = 10.0
    receipt_timeout: float = 60.0
    ping_interval: float | None = 10.0  # None: no keepalive pings (the receipt timeout stays)
    ping_timeout: float | None = 20.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    poll_interval: float = 5.0  # for retries that come due; news wakes a link at once
    # A look through the whole outbox, the net for anything no event announced: news, a
    # route's change, a hop's refusal and a link coming up each make the look they need.
    # At a hub with a backlog it costs milliseconds (in the 193-node run, every 60 s cost
    # a worker 3 to 4 s of CPU).
    sweep_interval: float = 300.0
    # Our links' announcement goes once none has come or gone for this long (at most ten
    # times it): at a 193-node start, 0.2 s made 1.55 versions a node, each flooded to all.
    announce_delay: float = 1.0


# An envelope as it travels: the relays it came through, then its exact bytes.
Carried = tuple[tuple[NodeId, ...], bytes]


@dataclass(frozen=True, slots=True)
class EnvelopesReceived:
    """Envelopes to verify and commit together; `answer` them with their receipts."""

    envelopes: tuple[Carried, ...]


@dataclass(frozen=True, slots=True)
class ReceiptsReceived:
    """Receipts (hop or end to end), as their exact bytes."""

    receipts: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AnnouncementReceived:
    """A node's signed list of its live links (not yet verified)."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class RosterReceived:
    """A roster document (not yet verified: the register keeper's signature decides)."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class CheckpointOffered:
    """The peer's newest checkpoint, for us to witness."""

    offer: CheckpointOffer


@dataclass(frozen=True, slots=True)
class CosignatureReceived:
    """The peer's answer, as our witness, to a checkpoint we offered."""

    answer: WitnessAnswer


@dataclass(frozen=True, slots=True)
class HeldAsked:
    """The peer asks us, its witness, for the newest checkpoint of its log we hold."""

    query: HeldQuery


@dataclass(frozen=True, slots=True)
class HeldAnswered:
    """The peer, our witness, answers what it holds of our log (not yet verified)."""

    answer: HeldCheckpoint


@dataclass(frozen=True, slots=True)
class GiveBackAsked:
    """The peer, restored from a backup, asks for what it had receipted (version 2)."""

    ask: GiveBack


@dataclass(frozen=True, slots=True)
class PageReturned:
    """One page of what we asked back: the envelopes with our receipts, and where to go on."""

    items: tuple[Returned, ...]
    end: PageEnd


Event = (
    EnvelopesReceived
    | ReceiptsReceived
    | AnnouncementReceived
    | RosterReceived
    | CheckpointOffered
    | CosignatureReceived
    | HeldAsked
    | HeldAnswered
    | GiveBackAsked
    | PageReturned
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An envelope to send: its message id, the relays so far, its bytes, its priority rank
    (0 flash, 1 urgent, 2 routine: `lifecycle.PRIORITY_RANK`)."""

    message_id: str
    path: tuple[NodeId, ...]
    envelope: bytes
    rank: int


@dataclass(frozen=True, slots=True)
class Room:
    """How many envelopes the next batch may hold (`count`), and how many of them may be
    other than flash (`others`: the window's room, if worth a batch; the reserve is
    flash's alone)."""

    count: int
    others: int

    @property
    def flash_only(self) -> bool:
        return self.others <= 0


@dataclass(frozen=True, slots=True)
class Stall:
    """The oldest envelope in flight, sent at `since`, has waited past the receipt timeout."""

    message_id: str
    since: float


_FLASH_HINT = b'"priority":"flash"'
_URGENT_HINT = b'"priority":"urgent"'


def rank_hint(envelope: bytes) -> int:
    """0 for flash, 1 for urgent, 2 otherwise, from where the canonical header puts it."""
    head = envelope[:600]
    return 0 if _FLASH_HINT in head else 1 if _URGENT_HINT in head else 2


# A frame received, parsed, with its kind and payload size: an envelope waits for its batch,
# the rest are events.
_Item = (
    Carried
    | bytes
    | CheckpointOffer
    | WitnessAnswer
    | HeldQuery
    | HeldCheckpoint
    | GiveBack
    | PageReturned
)
_Queued = tuple[bytes, _Item, int]


def _frame_size(carried: Carried) -> int:
    """The payload size of the E frame that brought `carried` (`protocol.split_envelope`)."""
    path, envelope = carried
    return 1 + 3 * len(path) + len(envelope)


class LinkSession:
    """One established link with `peer`: what came in, what goes out, what is in flight."""

    def __init__(
        self, peer: NodeId, settings: LinkSettings = LinkSettings(), version: int = 1
    ) -> None:
        self.peer = peer
        self.settings = settings
        self.version = version  # the link version agreed in the handshake
        self._asking_back = False  # a G frame sent, its page not yet ended
        self._page_in_hand = False  # a page ended, not yet taken by the node (`page_taken`)
        self._returned: list[Returned] = []  # the page coming back
        self.unanswered = 0  # envelopes received and not yet answered with a receipt
        self._queued: deque[_Queued] = deque()  # frames received, not yet taken as events
        self._pending: list[Carried] = []  # envelopes taken, not yet in a batch
        self.flash_waiting = 0  # flash envelopes in `_queued` and `_pending`: `take_flash`
        self.receipts_waiting = 0  # receipt frames in `_queued`: `take_receipts`
        self.queued_bytes = 0  # payload bytes in `_queued` and `_pending`
        self._roster: bytes | None = None  # the newest roster frame not yet taken
        self._outgoing: list[bytes] = []
        self._in_flight: dict[str, float] = {}  # message id -> when it was sent
        self._flash_in_flight: set[str] = set()  # their receipts go first at our end too

    # -- frames in ---------------------------------------------------------------------

    @property
    def unanswered_cap(self) -> int:
        """The most envelopes the peer may hold unanswered before it is cut off."""
        s = self.settings
        return s.window + s.flash_reserve + s.batch

    def receive_frame(self, data: bytes | str) -> None:
        """Take one frame from the peer. Raises PeerError (`malformed`, `oversize`,
        `protocol`, `window_exceeded`, `flood`) when the link must be cut for it."""
        kind, payload = split_frame(data)  # refuses text, unknown kinds, oversize frames
        if FRAME_SINCE.get(kind, 1) > self.version:
            raise PeerError(
                f"{kind.decode()} frame on a version-{self.version} link", reason="protocol"
            )
        if kind in (FRAME_RETURNED, FRAME_PAGE_END):
            if not self._asking_back:
                raise PeerError(f"{kind.decode()} frame never asked for", reason="protocol")
            if kind == FRAME_RETURNED and len(self._returned) >= RETURN_PAGE:
                raise PeerError(
                    f"{self.peer} gave back more than {RETURN_PAGE} in one page", reason="protocol"
                )
        if kind == FRAME_ENVELOPE:
            self.unanswered += 1
            if self.unanswered > self.unanswered_cap:
                raise PeerError(
                    f"{self.peer} sent {self.unanswered} envelopes without waiting for"
                    f" receipts (window {self.settings.window})",
                    reason="window_exceeded",
                )
        if kind == FRAME_ROSTER and self._roster is not None:
            self.queued_bytes += len(payload) - len(self._roster)
            self._roster = payload  # in the place of the one still waiting
            self._check_flood()
            return
        if len(self._queued) >= self.settings.max_queued_frames:
            raise PeerError(
                f"{self.peer} floods the link: {len(self._queued)} frames waiting", reason="flood"
            )
        self.queued_bytes += len(payload)
        self._check_flood()
        item: _Item
        if kind == FRAME_RETURNED:
            self._returned.append(parse_returned(payload))
            return  # counted in `queued_bytes` until its page ends
        if kind == FRAME_PAGE_END:
            page, self._returned = tuple(self._returned), []
            self._asking_back = False
            self._page_in_hand = True
            item = PageReturned(page, parse_page_end(payload))
            size = len(payload) + sum(len(r.receipt) + len(r.envelope) + 2 for r in page)
            self._queued.append((kind, item, size))
            return
        if kind == FRAME_GIVE_BACK:
            item = parse_give_back(payload)
        elif kind == FRAME_ENVELOPE:
            item = split_envelope(payload)
            if rank_hint(item[1]) == 0:
                self.flash_waiting += 1
        elif kind == FRAME_ROSTER:
            self._roster = item = payload
        elif kind in (FRAME_RECEIPT, FRAME_ANNOUNCE):
            item = payload
            self.receipts_waiting += kind == FRAME_RECEIPT
        elif kind == FRAME_CHECKPOINT:
            item = parse_checkpoint_offer(payload, self.version)
        elif kind == FRAME_COSIGNATURE:
            item = parse_witness_answer(payload)
        elif kind == FRAME_HELD_QUERY:
            item = parse_held_query(payload)
        elif kind == FRAME_HELD:
            item = parse_held(payload)
        else:
            raise PeerError(f"{kind.decode()} frame after the handshake", reason="protocol")
        self._queued.append((kind, item, len(payload)))

    def _check_flood(self) -> None:
        if self.queued_bytes > self.settings.max_queued_bytes:
            raise PeerError(
                f"{self.peer} floods the link: {self.queued_bytes} bytes waiting,"
                f" over {self.settings.max_queued_bytes}",
                reason="flood",
            )

    def events_received(self) -> list[Event]:
        """What the frames received so far ask of us, in the order of the module's rules.

        Empty when nothing waits. Every envelope batch given must be `answer`ed.
        """
        events: list[Event] = []
        receipts: list[bytes] = []
        while self._queued:
            kind, item, size = self._queued.popleft()
            if kind == FRAME_ENVELOPE:
                assert isinstance(item, tuple)
                self._pending.append(item)
                continue  # its bytes count until it is in a batch
            if kind == FRAME_ROSTER:
                assert self._roster is not None
                item, self._roster = self._roster, None  # the newest that came meanwhile
                size = len(item)
            self.queued_bytes -= size
            if kind == FRAME_RECEIPT:
                assert isinstance(item, bytes)
                receipts.append(item)
                self.receipts_waiting -= 1
            elif kind == FRAME_ANNOUNCE:
                assert isinstance(item, bytes)
                events.append(AnnouncementReceived(item))
            elif kind == FRAME_ROSTER:
                assert isinstance(item, bytes)
                events.append(RosterReceived(item))
            elif isinstance(item, CheckpointOffer):
                events.append(CheckpointOffered(item))
            elif isinstance(item, HeldQuery):
                events.append(HeldAsked(item))
            elif isinstance(item, HeldCheckpoint):
                events.append(HeldAnswered(item))
            elif isinstance(item, GiveBack):
                events.append(GiveBackAsked(item))
            elif isinstance(item, PageReturned):
                events.append(item)
            else:
                assert isinstance(item, WitnessAnswer)
                events.append(CosignatureReceived(item))
        if receipts:
            events.append(ReceiptsReceived(tuple(receipts)))
        if self._pending:
            # Flash first; a stable sort keeps arrival order within a rank. Flash waiting
            # goes alone, so that its commit and receipt wait for no other envelope's work.
            self._pending.sort(key=lambda carried: rank_hint(carried[1]))
            size = self.settings.batch
            flash = next(
                (i for i, carried in enumerate(self._pending) if rank_hint(carried[1])),
                len(self._pending),  # all flash
            )  # how many lead the sorted list
            if flash:
                size = min(size, flash)
                self.flash_waiting -= size
            batch, self._pending = self._pending[:size], self._pending[size:]
            self.queued_bytes -= sum(_frame_size(carried) for carried in batch)
            events.append(EnvelopesReceived(tuple(batch)))
        return events

    def take_receipts(self) -> ReceiptsReceived | None:
        """The receipts received and not yet taken, ahead of the frames around them (the
        node takes receipts beside its other events, as `events_received` gives them);
        None when none waits."""
        if not self.receipts_waiting:
            return None
        receipts: list[bytes] = []
        queued: deque[_Queued] = deque()
        for entry in self._queued:
            kind, item, size = entry
            if kind == FRAME_RECEIPT:
                assert isinstance(item, bytes)
                receipts.append(item)
                self.queued_bytes -= size
            else:
                queued.append(entry)
        self._queued = queued
        self.receipts_waiting = 0
        return ReceiptsReceived(tuple(receipts))

    def take_flash(self) -> EnvelopesReceived | None:
        """The flash envelopes received and not yet in a batch, as a batch of their own (at
        most `batch`), ahead of the frames that came before them: the node takes them
        beside a batch it is still checking. None when no flash envelope waits. Like every
        batch, it must be `answer`ed."""
        if not self.flash_waiting:
            return None
        size = self.settings.batch
        batch: list[Carried] = []
        pending: list[Carried] = []
        for carried in self._pending:
            taken = len(batch) < size and rank_hint(carried[1]) == 0
            (batch if taken else pending).append(carried)
        queued: deque[_Queued] = deque()
        for entry in self._queued:
            kind, item, _ = entry
            if kind == FRAME_ENVELOPE and len(batch) < size:
                assert isinstance(item, tuple)
                if rank_hint(item[1]) == 0:
                    batch.append(item)
                    continue
            queued.append(entry)
        self._pending, self._queued = pending, queued
        self.flash_waiting -= len(batch)
        self.queued_bytes -= sum(_frame_size(carried) for carried in batch)
        return EnvelopesReceived(tuple(batch))

    def answer(self, batch: EnvelopesReceived, receipts: Sequence[bytes]) -> None:
        """The batch is committed: send its receipts; the peer may send that many more."""
        for receipt in receipts:
            self._outgoing.append(frame(FRAME_RECEIPT, receipt))
        self.unanswered -= len(batch.envelopes)

    # -- frames out --------------------------------------------------------------------

    def send_envelopes(self, batch: Sequence[Outgoing], now: float) -> None:
        """Send a batch taken against one `room()`; each is in flight from `now`.

        Raises ValueError (our bug, not the peer's) for a batch larger than the
        room, a non-flash envelope when the room is flash only, or an id
        already in flight.
        """
        room = self.room()
        if len(batch) > room.count:
            raise ValueError(f"{len(batch)} envelopes for a room of {room.count}")
        others = sum(1 for item in batch if item.rank != 0)
        if others > room.others:
            raise ValueError(
                f"{others} envelopes other than flash for a window with room for"
                f" {room.others}: only flash may use the reserve"
            )
        ids = [item.message_id for item in batch]
        if len(set(ids)) != len(ids) or any(i in self._in_flight for i in ids):
            raise ValueError("an envelope already in flight")
        for item in batch:
            self._outgoing.append(envelope_frame(item.path, item.envelope))
            self._in_flight[item.message_id] = now
            if item.rank == 0:
                self._flash_in_flight.add(item.message_id)

    def send_receipt(self, raw: bytes) -> None:
        """A receipt passed on (an end-to-end receipt on its way back)."""
        self._outgoing.append(frame(FRAME_RECEIPT, raw))

    def send_announcement(self, raw: bytes) -> None:
        self._outgoing.append(frame(FRAME_ANNOUNCE, raw))

    def send_roster(self, raw: bytes) -> None:
        self._outgoing.append(frame(FRAME_ROSTER, raw))

    def send_checkpoint(self, offer: CheckpointOffer) -> None:
        self._outgoing.append(checkpoint_frame(offer))

    def send_witness(self, answer: WitnessAnswer) -> None:
        self._outgoing.append(witness_frame(answer))

    def send_held_query(self, query: HeldQuery) -> None:
        self._outgoing.append(held_query_frame(query))

    def send_held(self, answer: HeldCheckpoint) -> None:
        self._outgoing.append(held_frame(answer))

    def ask_back(self, ask: GiveBack) -> None:
        """Ask a page of what the peer holds our receipts for (version 2 links only); the
        next page is asked once the one in hand is taken."""
        assert self.version >= 2
        assert not self._asking_back
        self._asking_back = True
        self._page_in_hand = False
        self._outgoing.append(give_back_frame(ask))

    def page_taken(self) -> None:
        """The page in hand is kept, and no next page is to be asked."""
        self._page_in_hand = False

    @property
    def asking_back(self) -> bool:
        """A page asked and not yet in, or in and not yet taken: no other ask now."""
        return self._asking_back or self._page_in_hand

    def give_back(self, items: Sequence[Returned], end: PageEnd) -> None:
        """One page of what the peer asked back, then its end."""
        assert len(items) <= RETURN_PAGE
        self._outgoing.extend(returned_frame(item) for item in items)
        self._outgoing.append(page_end_frame(end))

    def data_to_send(self) -> list[bytes]:
        """The frames to write, in order, each once; empty when none wait."""
        out, self._outgoing = self._outgoing, []
        return out

    # -- the window --------------------------------------------------------------------

    @property
    def in_flight(self) -> list[str]:
        """Ids of the envelopes sent and not yet settled by a receipt, oldest first."""
        return list(self._in_flight)

    def room(self) -> Room:
        """How many envelopes may go now: up to `window + flash_reserve` in flight, of which
        at most `window` other than flash (the reserve is flash's alone), and those only
        once there is room for `least_batch` of them (or nothing is in flight)."""
        s = self.settings
        held = len(self._in_flight)
        others = s.window - held
        if others < s.least_batch and held:
            others = 0
        return Room(max(0, s.window + s.flash_reserve - held), max(0, others))

    def receipts_settled(self, message_ids: Sequence[str]) -> None:
        """These are no longer in flight (ids this link did not send are ignored)."""
        for message_id in message_ids:
            self._in_flight.pop(message_id, None)
            self._flash_in_flight.discard(message_id)

    def flash_in_flight(self, message_id: str) -> bool:
        """Whether `message_id` is a flash envelope this link sent and awaits a receipt for."""
        return message_id in self._flash_in_flight

    def stalled(self, now: float) -> Stall | None:
        """The oldest envelope in flight, if it has waited longer than `receipt_timeout`."""
        if not self._in_flight:
            return None
        message_id, since = min(self._in_flight.items(), key=lambda item: item[1])
        if now - since > self.settings.receipt_timeout:
            return Stall(message_id, since)
        return None
