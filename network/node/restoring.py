"""After a restore from a backup: explain the rollback, and get back what peers were told.

`cpn store restore` puts a verified backup in place and leaves a marker beside it. At
the next start the node opens a restore from the marker (`load`) and, until it has
explained it, offers no checkpoint: a witness holding a newer one would take the shorter
log for a silent rollback. Then (`explain`), once its dialled peers are linked or after
`wait` seconds, it asks its witnesses which checkpoint of its log each holds and appends
a `restored` entry naming the backup's tree size and root and the newest checkpoint a
witness held. Every checkpoint offered to a witness that held more carries that entry
with its inclusion proof (`Witnessing`), and the witness takes it as an explained
rollback, kept as such, not as a fork.

Every peer a message reached us through holds it with the end-to-end receipt we signed
(sender or relay alike), so each linked peer is asked (`G` frames, link version 2) for
every envelope to us it holds our accepted receipt for, from a margin before the
backup's newest entry on, a page at a time; what comes back (`B`) is checked and kept
under its original id and receipt (`Inbound.accept_returned`); what the backup held
already is passed over. When every peer has given back all, the restore is finished
(`restore_finished`); a peer that has not after `give_up_ms` (or cannot: a version-1
link) is named in a `restore_incomplete` alert.

The other way round, `give_back` answers a restored peer's ask from our store.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from network.core.protocol import RETURN_PAGE, GiveBack, PageEnd, Returned
from network.core.records import b64decode, b64encode
from network.node.alerts import AlertKind, node_alert
from network.node.context import NodeContext
from network.node.inbound import Inbound
from network.node.store import AuditEntry, RestoreRow
from network.node.witnessing import HeldStatus, Witnessing

__all__ = ["GIVE_UP_MS", "Restoring"]

GIVE_UP_MS = 10 * 60 * 1000  # a peer that has not given back by then is named in an alert

log = logging.getLogger("cpn.restore")


class Restoring:
    def __init__(
        self,
        context: NodeContext,
        inbound: Inbound,
        witnessing: Witnessing,
        *,
        wait: float = 30.0,
        give_up_ms: int = GIVE_UP_MS,
    ) -> None:
        self.context = context
        self.store = context.store
        self.inbound = inbound
        self.witnessing = witnessing
        self.wait = wait
        self.give_up_ms = give_up_ms
        self.open: RestoreRow | None = None
        self._explained_at: int | None = None
        self._alerted = False

    async def load(self, marker: Path) -> None:
        """Open the restore `cpn store restore` left word of, if any; the one still open."""
        if marker.exists():
            word = json.loads(marker.read_text())
            now = self.context.clock()
            held = await self.store.open_restore()
            if held is None or held.restored_at != int(word["restored_at"]):
                # (the same marker again: a crash came between the commit and the unlink)
                async with self.store.transaction(now) as tx:
                    tx.open_restore(
                        restored_at=int(word["restored_at"]),
                        backup_size=int(word["backup_size"]),
                        backup_root=b64decode(str(word["backup_root"]), field="backup_root"),
                        since=int(word["since"]),
                    )
            marker.unlink()
        self.open = await self.store.open_restore()
        if self.open is not None and self.open.explained is None:
            self.witnessing.unexplained_restore = True
            log.warning(
                "%s: restored from a backup of %d audit entries: explaining it to the witnesses",
                self.context.me,
                self.open.backup_size,
            )

    # -- explaining the rollback --------------------------------------------------------

    async def explain(self, linked: Callable[[], Iterable[str]], dialled: Iterable[str]) -> None:
        """Once the dialled peers are linked (or after `wait` s), ask the witnesses what they
        hold of our log, and append the `restored` entry that explains the rollback."""
        restore = self.open
        if restore is None or restore.explained is not None:
            return
        expected = set(dialled)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while not expected <= set(linked()) and loop.time() < deadline:
            await asyncio.sleep(0.2)
        replies = await self.witnessing.ask_witnesses()
        held = [r for r in replies if r.status is HeldStatus.HOLDS and r.size is not None]
        newest = max(held, key=lambda r: r.size or 0, default=None)
        detail = {
            "backup_size": restore.backup_size,
            "backup_root": b64encode(restore.backup_root),
            "since": restore.since,
            "restored_at": restore.restored_at,
            "witnessed_size": None if newest is None else newest.size,
            "witnessed_by": sorted(r.peer for r in held if r.size == (newest and newest.size)),
            "lost_entries": max(0, (newest.size or 0) - restore.backup_size) if newest else 0,
        }
        now = self.context.clock()
        async with self.store.transaction(now) as tx:
            tx.audit([AuditEntry(self.context.actor, "restored", None, detail)])
        index = await self.store.newest_entry("restored")
        assert index is not None
        async with self.store.transaction(now) as tx:
            tx.restore_explained(restore.id, index)
        self.open = await self.store.open_restore()
        self._explained_at = now
        await self.witnessing.explain_restore(restore.backup_size, index, self.context.clock())
        log.warning(
            "%s: restore explained in entry %d (backup %d entries, witnesses held %s)",
            self.context.me,
            index,
            restore.backup_size,
            detail["witnessed_size"],
        )

    # -- asking back --------------------------------------------------------------------

    def first_ask(self, peer: str) -> GiveBack | None:
        """What to ask a peer that just linked, if anything is still to come from it."""
        restore = self.open
        if restore is None or restore.explained is None:
            return None
        progress = restore.peers.get(peer)
        if progress is not None and progress.done:
            return None
        return GiveBack(restore.since, progress.after if progress else None)

    async def take_page(
        self, peer: str, items: tuple[Returned, ...], end: PageEnd
    ) -> GiveBack | None:
        """One page given back: kept; the next ask, or None when the peer has given all."""
        restore = self.open
        if restore is None:
            return None
        fresh = await self.inbound.accept_returned(peer, items)
        now = self.context.clock()
        async with self.store.transaction(now) as tx:
            tx.restore_page(restore.id, peer, end.next, len(items))
            if end.next is None:
                tx.restore_peer_done(restore.id, peer)
                tx.audit(
                    [
                        AuditEntry(
                            self.context.actor,
                            "given_back",
                            None,
                            {"peer": peer, "returned": self._returned(peer) + len(items)},
                        )
                    ]
                )
        log.info("%s: %s gave back %d (%d new)", self.context.me, peer, len(items), fresh)
        self.open = await self.store.open_restore()
        if end.next is not None:
            return GiveBack(restore.since, end.next)
        return None

    def _returned(self, peer: str) -> int:
        progress = self.open.peers.get(peer) if self.open else None
        return progress.returned if progress else 0

    async def review(self, dialled: Iterable[str], version_one: Iterable[str]) -> None:
        """Finish the restore when every peer has given back all; past `give_up_ms`, name
        in an alert (once) the peers that have not, or cannot."""
        restore = self.open
        if restore is None or restore.explained is None:
            return
        asked = restore.peers
        missing = sorted(
            {p for p in dialled if not (p in asked and asked[p].done)}
            | {p for p, progress in asked.items() if not progress.done}
        )
        now = self.context.clock()
        if not missing:
            async with self.store.transaction(now) as tx:
                tx.restore_finished(restore.id)
                tx.audit(
                    [
                        AuditEntry(
                            self.context.actor,
                            "restore_finished",
                            None,
                            {"returned": {p: asked[p].returned for p in sorted(asked)}},
                        )
                    ]
                )
            self.open = None
            log.info("%s: restore finished: every peer gave back what it holds", self.context.me)
            return
        started = self._explained_at or restore.restored_at
        if self._alerted or now - started < self.give_up_ms:
            return
        self._alerted = True
        old = sorted(set(version_one) & set(missing))
        detail = (
            f"restored from a backup of {restore.backup_size} audit entries; not given back yet"
            f" by {', '.join(missing)}"
            + (f" ({', '.join(old)} speak link version 1: cannot give back)" if old else "")
            + ": messages they passed to us since the backup may be missing; ask their"
            " operators (docs/OPERATIONS.md, section 6)"
        )
        log.error("%s: %s", self.context.me, detail)
        await self.context.audit(
            [AuditEntry(self.context.actor, "restore_incomplete", None, {"missing": missing})]
        )
        self.context.alerts.raise_(
            [node_alert(AlertKind.RESTORE_INCOMPLETE, node=self.context.me, detail=detail, now=now)]
        )


async def give_back(
    context: NodeContext, peer: str, ask: GiveBack
) -> tuple[list[Returned], PageEnd]:
    """A restored peer's ask: one page of the envelopes to it we hold its receipt for."""
    rows = await context.store.receipted_by(peer, ask.since, ask.after, RETURN_PAGE)
    items = [Returned(receipt, envelope) for _, envelope, receipt in rows]
    end = PageEnd(rows[-1][0] if len(rows) == RETURN_PAGE else None)
    # What a peer asks is recorded, within its budget: asks are cheap to send.
    entry = AuditEntry(
        f"node:{peer}",
        "give_back",
        None,
        {"since": ask.since, "after": ask.after, "count": len(items)},
    )
    await context.audit(context.refusal(f"give_back:{peer}", entry))
    return items, end
