"""Retention at run time: deleting what a rule says must go, and legal holds.

The rules are network/core/retention.py's. The node sweeps at start and then every
`sweep_interval` (the runner); `cpn retention run` sweeps a stopped node's store
the same way. Each message's contents go in a transaction with their `deleted`
audit entry (the rule, its period, the envelope's digest, what was destroyed), in
batches, with SQLite's secure_delete on so that the freed pages are overwritten,
and the WAL is emptied after. A restore from a backup taken before a deletion
brings the contents back; the next sweep deletes them again, since the rule and
the message's last change are the same.

A legal hold names a case (its reference, kept as the same keyed digest the
messages carry) and stops deletion for its messages and what answers them until
it is released; both are audited with who and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from network.core.errors import BodyError
from network.core.records import b64encode
from network.core.retention import CONTENTS, RetentionRule, rule_for
from network.node.context import NodeContext
from network.node.store import AuditEntry

__all__ = ["SWEEP_SECONDS", "Retention"]

SWEEP_SECONDS: Final = 300.0  # how often a running node looks for lapsed contents
BATCH: Final = 200  # messages per transaction
MAX_REASON_BYTES: Final = 1000
MAX_CASE_REF_BYTES: Final = 256


class Retention:
    """Deleting lapsed contents under the node's rules, and the legal holds that stop it."""

    def __init__(self, context: NodeContext, rules: Sequence[RetentionRule]) -> None:
        self.context = context
        self.rules = tuple(rules)
        # Within a tenth of the shortest period, and at most `SWEEP_SECONDS`, after it lapses.
        shortest = min((r.after_ms for r in self.rules), default=0) / 10_000
        self.sweep_interval = max(1.0, min(SWEEP_SECONDS, shortest))

    async def sweep(self) -> dict[str, int]:
        """Delete the contents of every message whose rule has lapsed (not under a hold);
        how many under each rule."""
        deleted: dict[str, int] = {}
        if not self.rules:
            return deleted
        store = self.context.store
        while lapsed := await store.lapsed(self.rules, self.context.clock(), BATCH):
            done = 0
            async with store.transaction(self.context.clock()) as tx:
                for found, rule in lapsed:
                    row = await tx.message(found.id)
                    # Changed since it was read (a late answer moved it): not this rule's now.
                    if row is None or row.deleted is not None:
                        continue
                    if rule_for(self.rules, row.box, row.type, row.state) is not rule:
                        continue
                    if row.updated > tx.now - rule.after_ms:
                        continue
                    tx.delete_contents(row.id, rule.name)
                    detail = {
                        "rule": rule.name,
                        "after": rule.after_ms,
                        "state": str(row.state),
                        "digest": b64encode(row.digest),
                        "contents": list(CONTENTS),
                    }
                    entries = [AuditEntry(self.context.actor, "deleted", row.id, detail)]
                    # Its attachments' parts go with it, each named by the digest it had.
                    for part, digest in await tx.parts_kept(row.id):
                        tx.delete_contents(part, rule.name)
                        detail = {"rule": rule.name, "of": row.id, "digest": b64encode(digest)}
                        entries.append(AuditEntry(self.context.actor, "deleted", part, detail))
                    tx.audit(entries)
                    deleted[rule.name] = deleted.get(rule.name, 0) + 1
                    done += 1
            if done == 0:
                break  # every one changed under us: the next sweep sees them afresh
        if deleted:
            await store.truncate_wal()
        return deleted

    async def holds(self) -> list[dict[str, Any]]:
        return await self.context.store.holds()

    async def place_hold(self, case_ref: object, reason: object, user: str) -> dict[str, Any]:
        """Stop deletion for case `case_ref` until released; audited as `hold_placed`."""
        tag, reason = self._checked(case_ref, reason)
        async with self.context.store.transaction(self.context.clock(), officer=True) as tx:
            tx.place_hold(tag, reason, user)
            detail = {"case": tag, "reason": reason}
            tx.audit([AuditEntry(user, "hold_placed", None, detail)])
        return {"case_tag": tag, "reason": reason, "placed_by": user}

    async def release_hold(self, case_ref: object, reason: object, user: str) -> bool:
        """End the hold on `case_ref` (False: there was none); audited as `hold_released`."""
        tag, reason = self._checked(case_ref, reason)
        held = {h["case_tag"] for h in await self.context.store.holds()}
        if tag not in held:
            return False
        async with self.context.store.transaction(self.context.clock(), officer=True) as tx:
            tx.release_hold(tag)
            detail = {"case": tag, "reason": reason}
            tx.audit([AuditEntry(user, "hold_released", None, detail)])
        return True

    def _checked(self, case_ref: object, reason: object) -> tuple[str, str]:
        """The case's keyed digest and the reason; BodyError naming the field."""
        if not isinstance(case_ref, str) or not case_ref.strip():
            raise BodyError("case_ref", "required: the case reference the hold is for")
        if len(case_ref.encode()) > MAX_CASE_REF_BYTES:
            raise BodyError("case_ref", f"at most {MAX_CASE_REF_BYTES} bytes of UTF-8")
        if not isinstance(reason, str) or not reason.strip():
            raise BodyError("reason", "required: why the hold is placed or released")
        if len(reason.encode()) > MAX_REASON_BYTES:
            raise BodyError("reason", f"at most {MAX_REASON_BYTES} bytes of UTF-8")
        return self.context.storage.tag(case_ref), reason.strip()
