"""Checkpoints of our audit log, and witnessing our peers' (the use cases; links carry the frames).

- We sign a C2SP checkpoint of our audit tree (every `every_entries` entries,
  every `every_ms` when the log grew, and soon after a flash or urgent
  message), commit it durably (so every entry it covers is on disk), and
  offer it to each peer with a consistency proof from the size that peer last
  cosigned.
- A peer's checkpoint is checked against the one we hold for it: same origin,
  its signature under its roster key, never smaller, and an extension of ours
  by the proof. Then we keep it and cosign it. A checkpoint that contradicts
  the one held is kept beside it, signed by the same key: portable proof that
  the peer rewrote or truncated its log. It is audited and logged as an error.
- Asked (`ask_witnesses`, for `GET /api/audit/verify`), each linked peer says
  which checkpoint of our log it holds, cosigned again as it answers; the
  answers are checked (our signature, its cosignature) and handed to the
  verifier, which checks our store against them: a log rewritten, or cut
  after its last checkpoint, shows against a witness's newer checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from network.core.auditlog import (
    RestoredEntry,
    checkpoint_origin,
    checkpoint_time,
    dated_checkpoint,
    parse_restored_entry,
    witness_name,
)
from network.core.errors import ConsistencyProofError, CpnError, PeerError, UnknownSignerError
from network.core.protocol import (
    HELD_NONCE_BYTES,
    CheckpointOffer,
    HeldCheckpoint,
    HeldQuery,
    RestoreNote,
    WitnessAnswer,
)
from network.core.records import Json, NodeId
from network.core.tlog import (
    Checkpoint,
    cosign,
    leaf_hash,
    open_checkpoint,
    parse_checkpoint,
    sign_note,
    verify_consistency,
    verify_cosignature,
    verify_inclusion,
)
from network.node.auditfile import Witnessed
from network.node.clock import rfc3339
from network.node.context import NodeContext
from network.node.store import AuditEntry

__all__ = ["CheckpointPolicy", "HeldStatus", "WitnessReply", "Witnessing"]

WITNESS_ANSWER_SECONDS = 5.0  # how long `ask_witnesses` waits for the linked peers

log = logging.getLogger("cpn.witnessing")


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    every_entries: int = 1000
    every_ms: int = 60_000
    urgent_delay_ms: int = 1000  # after a flash or urgent message: soon, and once per burst


class HeldStatus(StrEnum):
    """What a linked peer said when asked which checkpoint of our log it holds."""

    HOLDS = "holds"  # a checkpoint we signed, which it cosigned as it answered
    HOLDS_NONE = "holds none"  # it never witnessed our log
    NO_ANSWER = "no answer"  # not in time (or the link closed meanwhile)
    REFUSED = "refused"  # what it sent is not our checkpoint, or not its cosignature


@dataclass(frozen=True, slots=True)
class WitnessReply:
    """One linked peer's answer: its status, and for HOLDS the checkpoint's size, note (with
    the peer's cosignature line) and the time it cosigned (s); `problem` for REFUSED."""

    peer: str
    status: HeldStatus
    size: int | None = None
    note: str | None = None
    cosigned_at: int | None = None
    problem: str | None = None

    @property
    def witnessed(self) -> Witnessed | None:
        """The checkpoint for `verify_store` to check the log against (None: nothing held)."""
        if self.status is not HeldStatus.HOLDS or self.note is None:
            return None
        return Witnessed(self.peer, self.note)

    def to_json(self) -> dict[str, Json]:
        return {
            "peer": self.peer,
            "status": str(self.status),
            "size": self.size,
            "cosigned_at": None if self.cosigned_at is None else rfc3339(self.cosigned_at * 1000),
            "problem": self.problem,
            "note": self.note,
        }


# Sends a question to every linked peer; returns the peers asked (`Links` provides it).
AskPeers = Callable[[HeldQuery], Sequence[NodeId]]


@dataclass(frozen=True, slots=True)
class _Signed:
    checkpoint: Checkpoint
    note: str


@dataclass(frozen=True, slots=True)
class _Explained:
    """Our newest restore, explained: the backup's tree size, our `restored` entry's index
    and its canonical bytes."""

    backup_size: int
    index: int
    entry: bytes


class Witnessing:
    def __init__(self, context: NodeContext, policy: CheckpointPolicy | None = None) -> None:
        self.context = context
        self.store = context.store
        self.policy = policy or CheckpointPolicy()
        self.origin = checkpoint_origin(context.me)
        self.latest: _Signed | None = None
        self._cosigned: dict[str, int] = {}  # peer -> largest size it cosigned
        self._signed_at = 0
        self._ask: AskPeers | None = None
        self._asked: dict[bytes, dict[str, asyncio.Future[WitnessReply]]] = {}  # nonce -> peer
        # After a restore: the backup's tree size with our `restored` entry (its index and
        # bytes), and whether a restore waits to be explained (no checkpoint is offered
        # until it is).
        self.explained: _Explained | None = None
        self.unexplained_restore = False
        context.checkpoints.asked_by(self.ask_witnesses)  # what `GET /api/audit/verify` calls

    def attach(self, ask: AskPeers) -> None:
        """How to reach the linked peers (the links, once they exist)."""
        self._ask = ask

    async def load(self) -> None:
        """Our newest checkpoint and what each witness last cosigned, from the store."""
        note = await self.store.latest_checkpoint()
        if note is not None:
            self.latest = _Signed(self._open_own(note), note)
            self.context.checkpoints.loaded(note)
        self._cosigned.update(await self.store.cosigned_sizes())
        explained = await self.store.restore_explained()
        if explained is not None:
            self.explained = await self._explained(*explained)

    def _open_own(self, note: str) -> Checkpoint:
        # After a key rotation our newest checkpoint is signed by a key we retired.
        keys = self.context.keys
        *first, last = (keys.signing.verify_key(), *keys.retired_signing)
        for key in first:
            with contextlib.suppress(UnknownSignerError):
                return open_checkpoint(note, self.origin, {self.origin: key})
        return open_checkpoint(note, self.origin, {self.origin: last})

    # -- our own checkpoints --------------------------------------------------------

    def due(self, now: int, urgent: bool) -> bool:
        """Whether the log has grown enough, or long enough ago, to sign a checkpoint now."""
        if self.unexplained_restore:
            return False  # a witness would take it for a silent rollback
        size = self.store.audit_log.size
        signed = self.latest.checkpoint.size if self.latest else 0
        if size <= signed:
            return False
        if size - signed >= self.policy.every_entries:
            return True
        waited = now - self._signed_at
        return waited >= self.policy.every_ms or (urgent and waited >= self.policy.urgent_delay_ms)

    async def sign(self, now: int) -> Checkpoint:
        """Sign a checkpoint of the whole log, dated in the note (never before its last
        entry), and commit it durably before anyone sees it."""
        log_tree = self.store.audit_log
        async with self.store.transaction(now) as tx:
            # In a write transaction: no entry can join between the size, the root and the time.
            size = await tx.audit_size()
            time = await tx.entry_time()
            if self.latest is not None:
                # Never dated before the checkpoint before it, as verify checks: a clock
                # stepped back (or that ran ahead before a restart) waits for it.
                time = max(time, checkpoint_time(self.latest.checkpoint) or 0)
            checkpoint = dated_checkpoint(self.origin, size, log_tree.root(size), time)
            note = sign_note(checkpoint.to_text(), self.origin, self.context.keys.signing)
            tx.checkpoint(checkpoint.size, checkpoint.root, note, time=time)
        self.latest = _Signed(checkpoint, note)
        self.context.checkpoints.signed(note)
        self._signed_at = now
        return checkpoint

    def offer_for(self, peer: str) -> CheckpointOffer | None:
        """Our newest checkpoint for `peer`, proven consistent with what it last cosigned."""
        if self.latest is None or self.unexplained_restore:
            return None
        cosigned = self._cosigned.get(peer, 0)
        if self.explained is not None and cosigned <= self.explained.index:
            # It may hold what our restore undid: every offer says why, until it has
            # cosigned past our `restored` entry (none before a checkpoint covers it).
            return self._restored_offer(self.latest)
        return self._offer(self.latest, cosigned)

    def _offer(self, signed: _Signed, proof_from: int) -> CheckpointOffer | None:
        size = signed.checkpoint.size
        if proof_from > size:
            return None  # the witness holds more of our log than we do: it will say so
        proof = self.store.audit_log.consistency_proof(proof_from, size) if proof_from else []
        return CheckpointOffer(signed.note, proof_from, tuple(proof))

    async def take_answer(self, peer: str, answer: WitnessAnswer) -> CheckpointOffer | None:
        """A witness's answer: keep its cosignature, or offer the proof it asked for."""
        if answer.need_from is not None:
            if self.latest is not None and self.explained is not None:
                explained = self.explained
                ours = answer.need_from > explained.index and await self.store.checkpoint_note(
                    answer.need_from
                )
                if answer.need_from > explained.backup_size and not ours:
                    # It holds what our restore undid (no checkpoint we signed since): show
                    # it the entry that says so.
                    return self._restored_offer(self.latest)
            if self.latest is None or answer.need_from > self.latest.checkpoint.size:
                log.error(
                    "%s holds our log at size %d, larger than ours: our log was rolled back",
                    peer,
                    answer.need_from,
                )
                return None
            return self._offer(self.latest, answer.need_from)
        assert answer.cosignature is not None
        note = await self.store.checkpoint_note(answer.size)
        if note is None:
            raise PeerError(f"cosignature for size {answer.size}, which we never signed")
        key = self.context.roster.active_card(peer).signing_key
        when = verify_cosignature(note + answer.cosignature, witness_name(peer), key)
        async with self.store.transaction(self.context.clock(), durable=False) as tx:
            tx.cosignature(answer.size, peer, when, answer.cosignature)
        self._cosigned[peer] = max(self._cosigned.get(peer, 0), answer.size)
        return None

    def _restored_offer(self, signed: _Signed) -> CheckpointOffer | None:
        """`signed` with the entry that explains our restore (None: it does not cover it)."""
        explained = self.explained
        assert explained is not None
        if signed.checkpoint.size <= explained.index:
            return None
        proof = self.store.audit_log.inclusion_proof(explained.index, signed.checkpoint.size)
        note = RestoreNote(explained.entry, explained.index, tuple(proof))
        return CheckpointOffer(signed.note, 0, (), note)

    async def explain_restore(self, backup_size: int, index: int, now: int) -> None:
        """Our `restored` entry is committed: sign a checkpoint that covers it, and offer
        again, with the explanation to whoever may hold what the restore undid."""
        self.explained = await self._explained(backup_size, index)
        self.unexplained_restore = False
        await self.sign(now)

    async def _explained(self, backup_size: int, index: int) -> _Explained | None:
        """Our restore as explained by entry `index` (None: the store lacks that entry)."""
        entry = await self.store.entry_bytes_at(index)
        return None if entry is None else _Explained(backup_size, index, entry)

    # -- asking our witnesses what they hold ---------------------------------------------

    async def ask_witnesses(self, timeout: float = WITNESS_ANSWER_SECONDS) -> list[WitnessReply]:
        """Ask every linked peer which checkpoint of our log it holds; what each said, in
        peer order, within `timeout` seconds (a peer that did not answer: NO_ANSWER)."""
        if self._ask is None:
            return []
        nonce = self.context.random_bytes(HELD_NONCE_BYTES)
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[WitnessReply]] = {}
        self._asked[nonce] = waiting
        try:
            for peer in self._ask(HeldQuery(nonce)):  # only queued: no answer can come yet
                waiting[peer] = loop.create_future()
            if waiting:
                await asyncio.wait(waiting.values(), timeout=timeout)
        finally:
            del self._asked[nonce]
        return [
            future.result() if future.done() else WitnessReply(peer, HeldStatus.NO_ANSWER)
            for peer, future in sorted(waiting.items())
        ]

    def take_held(self, peer: str, answer: HeldCheckpoint) -> None:
        """A peer's answer to our question: checked, and given to whoever asked. An answer
        to no question still open (late, or never asked) is dropped."""
        future = self._asked.get(answer.nonce, {}).get(peer)
        if future is None or future.done():
            return
        future.set_result(self._check_held(peer, answer))

    def _check_held(self, peer: str, answer: HeldCheckpoint) -> WitnessReply:
        if answer.note is None or answer.cosignature is None:
            return WitnessReply(peer, HeldStatus.HOLDS_NONE)
        try:
            checkpoint = self._open_own(answer.note)
            key = self.context.roster.active_card(peer).signing_key
            when = verify_cosignature(answer.note + answer.cosignature, witness_name(peer), key)
        except CpnError as exc:
            log.error("%s's answer about our log does not hold: %s", peer, exc)
            return WitnessReply(peer, HeldStatus.REFUSED, problem=str(exc))
        note = answer.note + answer.cosignature
        return WitnessReply(peer, HeldStatus.HOLDS, checkpoint.size, note, when)

    async def answer_held(self, peer: NodeId, query: HeldQuery) -> HeldCheckpoint:
        """As `peer`'s witness: the newest checkpoint of its log we hold, cosigned now."""
        held = await self.store.witnessed(peer)
        if held is None:
            return HeldCheckpoint(query.nonce)
        note = held[2]
        try:  # we checked its signature when we took it; its text is what we cosign
            checkpoint = parse_checkpoint(note.split("\n\n", 1)[0] + "\n")
        except CpnError as exc:  # our own store damaged: say nothing rather than end the link
            log.error("the checkpoint of %s we hold does not parse: %s", peer, exc)
            return HeldCheckpoint(query.nonce)
        now = self.context.clock()
        line = cosign(
            checkpoint, witness_name(self.context.me), self.context.keys.signing, now // 1000
        )
        return HeldCheckpoint(query.nonce, note, line)

    # -- witnessing our peers ---------------------------------------------------------

    async def witness(self, peer: NodeId, offer: CheckpointOffer) -> WitnessAnswer | None:
        """Check a peer's checkpoint against the one we hold; cosign it if it extends it.

        Raises PeerError for a checkpoint that is not the peer's (bad origin or
        signature); returns None, after keeping the proof, for one that
        contradicts what we hold.
        """
        origin = checkpoint_origin(peer)
        key = self.context.roster.active_card(peer).signing_key
        try:
            checkpoint = open_checkpoint(offer.note, origin, {origin: key})
        except CpnError as exc:
            raise PeerError(f"{peer}'s checkpoint: {exc}", reason=exc.reason) from exc
        held = await self.store.witnessed(peer)
        now = self.context.clock()
        if held is not None and offer.restored is not None and offer.proof_from != held[0]:
            rollback = self._explained_rollback(peer, checkpoint, offer.restored, held[0])
            if isinstance(rollback, str):
                await self._inconsistent(peer, held[2], offer.note, rollback, now)
                return None
            if rollback is not None:
                await self._rolled_back(peer, held[2], offer, held[0], rollback, now)
                held = None  # what it held is superseded, with the explanation kept
        if held is not None:
            held_size, held_root, held_note = held
            problem = None
            if checkpoint.size < held_size:
                problem = f"truncated: size {checkpoint.size} after {held_size}"
            elif checkpoint.size == held_size and checkpoint.root != held_root:
                problem = f"rewritten: another root at size {held_size}"
            elif checkpoint.size > held_size:
                if offer.proof_from != held_size:
                    return WitnessAnswer(checkpoint.size, need_from=held_size)
                try:
                    verify_consistency(
                        held_size, checkpoint.size, held_root, checkpoint.root, list(offer.proof)
                    )
                except ConsistencyProofError as exc:
                    problem = (
                        f"rewritten: size {checkpoint.size} does not extend {held_size} ({exc})"
                    )
            if problem is not None:
                await self._inconsistent(peer, held_note, offer.note, problem, now)
                return None
        # Not fsync'd: a crash may forget the newest, and the one before still holds.
        async with self.store.transaction(now, durable=False) as tx:
            tx.witnessed(peer, checkpoint.size, checkpoint.root, offer.note)
        line = cosign(
            checkpoint, witness_name(self.context.me), self.context.keys.signing, now // 1000
        )
        return WitnessAnswer(checkpoint.size, cosignature=line)

    def _explained_rollback(
        self, peer: str, checkpoint: Checkpoint, restored: RestoreNote, held_size: int
    ) -> RestoredEntry | str | None:
        """Whether `restored` explains why `checkpoint` does not extend the size we hold:
        the entry when it does; None when it need not (we hold no more than the backup:
        the usual proof applies); the problem when the explanation does not hold."""
        try:
            entry = parse_restored_entry(restored.entry, peer)
        except CpnError as exc:
            return f"restored: {exc}"
        if held_size <= entry.backup_size:
            return None
        if not entry.backup_size <= restored.index < checkpoint.size:
            return (
                f"restored: entry {restored.index} is not after the backup"
                f" ({entry.backup_size} entries) within {checkpoint.size}"
            )
        try:
            verify_inclusion(
                leaf_hash(restored.entry),
                restored.index,
                checkpoint.size,
                list(restored.proof),
                checkpoint.root,
            )
        except CpnError as exc:
            return f"restored: the entry is not in the checkpoint ({exc})"
        return entry

    async def _rolled_back(
        self,
        peer: str,
        held: str,
        offer: CheckpointOffer,
        held_size: int,
        entry: RestoredEntry,
        now: int,
    ) -> None:
        assert offer.restored is not None
        log.warning(
            "%s restored its audit log from a backup of %d entries (we held %d): explained",
            peer,
            entry.backup_size,
            held_size,
        )
        async with self.store.transaction(now) as tx:
            tx.rollback(peer, held, offer.note, offer.restored.entry)
            tx.audit(
                [
                    AuditEntry(
                        f"node:{self.context.me}",
                        "log_restored",
                        None,
                        {
                            "node": peer,
                            "held_size": held_size,
                            "backup_size": entry.backup_size,
                            "entry": offer.restored.index,
                        },
                    )
                ]
            )

    async def _inconsistent(self, peer: str, held: str, shown: str, problem: str, now: int) -> None:
        log.error("%s's audit log is inconsistent with its checkpoints: %s", peer, problem)
        async with self.store.transaction(now) as tx:
            tx.inconsistency(peer, held, shown, problem)
            tx.audit(
                [
                    AuditEntry(
                        f"node:{self.context.me}",
                        "log_inconsistent",
                        None,
                        {"node": peer, "problem": problem},
                    )
                ]
            )
