"""Group commit holds whatever the order: a hypothesis state machine over one real store.

Use cases of every kind (durable, lazy, an officer's, a flash message's) start in any
order on one loop; some hold the write lock until the machine lets them go, so that
others queue behind them; some fail at their write; some are cancelled wherever they
are (a link going down); some COMMITs are refused (SQLite's authorizer, on the writer's
own connection); another process holds the database's write lock for a while (`cpn user
add` beside the node); the store is closed and reopened.

Whenever the store is idle: no batch is left applied and not committed; a use case that
returned is stored, one that raised StoreError is not, and one cancelled may be either
(its batch's COMMIT goes on without it); each is stored whole or not at all; the audit
log has no gap, and its tree is that of the stored entries; and a use case that
returned before another started comes before it in the log.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from network.core.errors import StoreError
from network.core.tlog import root_hash
from network.node.store import AuditEntry, Store, _on_thread
from tests.harness import unread_errors, until

pytestmark = pytest.mark.timeout(600)

T0 = 1_795_000_000_000
KINDS: dict[str, dict[str, bool]] = {
    "durable": {},
    "lazy": {"durable": False},
    "officer": {"officer": True},
    "flash": {"officer": True, "urgent": True},
    "early": {"durable": False, "early": True},  # a flash message's sent mark
}


@dataclass
class Case:
    kind: str
    fails: bool  # its own write fails
    after: frozenset[str]  # the use cases that had returned when it started
    refusals_before: int  # COMMITs refused when it started
    outcome: str | None = None  # "returned", "refused" or "cancelled"


class GroupCommit(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # `unread_errors` walks every object the collector tracks. Frozen, what the suite
        # made before this example is not among them: in a whole run (two thousand tests
        # before this one) each walk took a tenth of a second, 80 s a test. Thawed again
        # in `teardown`, for the collector to take.
        gc.freeze()
        try:
            self.loop = asyncio.new_event_loop()
            self.dir = Path(tempfile.mkdtemp(prefix="cpn-store-machine-"))
            self.cases: dict[str, Case] = {}
            self.tasks: dict[str, asyncio.Task[None]] = {}
            self.gate = asyncio.Event()  # what a holding use case waits for, the lock held
            self.to_refuse = 0  # COMMITs still to refuse
            self.refused = 0  # COMMITs refused so far
            self.other: sqlite3.Connection | None = None  # another process's, holding the lock
            self.store = self.loop.run_until_complete(self._open())
        except BaseException:
            gc.unfreeze()
            raise

    inline_commits = False  # the COMMITs on the writer's thread, as the simulation's stores

    async def _open(self) -> Store:
        store = await Store.open(self.dir / "node.sqlite", inline_commits=self.inline_commits)
        await _on_thread(store.writer, lambda conn: conn.set_authorizer(self._authorize))
        return store

    def _authorize(self, action: int, arg1: Any, *_: Any) -> int:
        """On the writer's connection: refuse the next COMMIT when told to."""
        if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT" and self.to_refuse:
            self.to_refuse -= 1
            self.refused += 1
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def teardown(self) -> None:
        try:
            self._settle()
        finally:
            try:
                self.loop.run_until_complete(self.store.close())
                self.loop.close()
                shutil.rmtree(self.dir, ignore_errors=True)
            finally:
                gc.unfreeze()

    async def _use_case(self, name: str, holds: bool) -> None:
        case = self.cases[name]
        try:
            async with self.store.transaction(T0, **KINDS[case.kind]) as tx:
                if holds:
                    await self.gate.wait()
                tx.peer_contact(name)
                tx.audit([AuditEntry("machine", case.kind, None, {"name": name})])
                if case.fails:
                    tx._write("INSERT INTO no_such_table VALUES (?)", (name,))
        except StoreError:
            case.outcome = "refused"
        except asyncio.CancelledError:
            case.outcome = "cancelled"
            raise
        else:
            case.outcome = "returned"

    def _settle(self) -> None:
        """Let every use case end and the store go idle."""
        self.gate.set()
        self._other_lets_go()

        async def idle() -> None:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            store = self.store  # no batch open, and none committing
            await until(
                lambda: store._batch is None and not store.queued_transactions and store._lock.free,
                timeout=30,
            )

        self.loop.run_until_complete(asyncio.wait_for(idle(), timeout=60))
        for name, task in self.tasks.items():
            if task.cancelled():  # perhaps before it began
                self.cases[name].outcome = "cancelled"
        self.tasks.clear()
        self.gate = asyncio.Event()

    # -- rules ----------------------------------------------------------------------------

    @rule(kind=st.sampled_from(sorted(KINDS)), fails=st.booleans(), holds=st.booleans())
    def start(self, kind: str, fails: bool, holds: bool) -> None:
        name = f"c{len(self.cases)}"
        returned = frozenset(n for n, c in self.cases.items() if c.outcome == "returned")
        self.cases[name] = Case(kind, fails, returned, self.refused)
        self.tasks[name] = self.loop.create_task(self._use_case(name, holds))

    @rule(passes=st.integers(1, 6))
    def step(self, passes: int) -> None:
        """The loop runs a few passes: use cases take the lock, apply, commit."""
        for _ in range(passes):
            self.loop.call_soon(self.loop.stop)  # one pass: what is ready now, then stop
            self.loop.run_forever()

    @rule()
    def let_go(self) -> None:
        """Those holding the lock go on."""
        self.gate.set()
        self.gate = asyncio.Event()

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """A use case is cancelled wherever it is: queued, holding the lock, committing."""
        if self.tasks:  # drawn by name: which are still running depends on the threads
            self.tasks[data.draw(st.sampled_from(sorted(self.tasks)))].cancel()

    @rule()
    def other_process_holds_the_lock(self) -> None:
        if self.other is not None:
            return
        other = sqlite3.connect(self.dir / "node.sqlite", isolation_level=None, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # the store's writer holds it now
            other.close()
        else:
            self.other = other

    @rule()
    def other_process_lets_go(self) -> None:
        self._other_lets_go()

    def _other_lets_go(self) -> None:
        if self.other is not None:
            self.other.execute("COMMIT")
            self.other.close()
            self.other = None

    @rule()
    def refuse_a_commit(self) -> None:
        self.to_refuse += 1

    @rule()
    def settle(self) -> None:
        self._settle()
        self._check()

    @rule()
    def restart(self) -> None:
        self._settle()
        before = self._stored()
        root = self.store.audit_log.root()
        self.loop.run_until_complete(self.store.close())
        self.store = self.loop.run_until_complete(self._open())
        assert self._stored() == before
        assert self.store.audit_log.root() == root
        self._check()

    # -- what holds when idle ------------------------------------------------------------

    def _stored(self) -> tuple[set[str], list[tuple[int, str, bytes]]]:
        async def read() -> tuple[set[str], list[tuple[int, str, bytes]]]:
            peers = {row[0] for row in await self.store.db.execute_fetchall("SELECT id FROM peers")}
            entries = await self.store.db.execute_fetchall(
                "SELECT seq, detail, leaf FROM audit ORDER BY seq"
            )
            return peers, [(seq, json.loads(d)["name"], bytes(leaf)) for seq, d, leaf in entries]

        return self.loop.run_until_complete(read())

    def _check(self) -> None:
        # No outcome left with its error unread, for the loop to report when collected.
        assert unread_errors(self.loop) == []
        assert self.store._batch is None, "a batch left applied and not committed"
        commits = self.store.commits.counts
        if self.inline_commits and any(commits.values()):
            assert commits["loop"], commits  # the first COMMIT at least, the disk unmeasured
        else:
            assert not commits["loop"], commits
        peers, entries = self._stored()
        assert [seq for seq, _, _ in entries] == list(range(1, len(entries) + 1))
        assert self.store.audit_log.root() == root_hash([leaf for *_, leaf in entries])
        seq = {name: s for s, name, _ in entries}
        assert set(seq) == peers, "a use case stored in part"
        for name, case in self.cases.items():
            assert case.outcome is not None, name
            if case.kind == "early":
                # Its caller went on once it was applied: its own write failing, or a
                # COMMIT refused since it started, loses it, as a crash would.
                if case.outcome == "returned":
                    assert name in seq or self._lost(case), (name, case)
            elif case.outcome != "cancelled":
                assert (name in seq) == (case.outcome == "returned"), (name, case)
            if case.fails:
                assert name not in seq, (name, case)
            for earlier in case.after:
                if name in seq:
                    assert earlier in seq or self._lost(self.cases[earlier]), (earlier, name)
                    if earlier in seq:
                        assert seq[earlier] < seq[name], (earlier, "returned before", name)

    def _lost(self, case: Case) -> bool:
        """Whether an early use case may be lost (another kind returns once stored)."""
        return case.kind == "early" and (case.fails or self.refused > case.refusals_before)


GroupCommit.TestCase.settings = settings(
    max_examples=int(os.environ.get("CPN_MACHINE_EXAMPLES", "40")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_group_commit_holds_whatever_the_order = GroupCommit.TestCase


class GroupCommitOnTheLoop(GroupCommit):
    """The same, each COMMIT on the loop's thread while the disk answers fast, as a store
    of `cpn node run` commits: nothing can cancel a holder during its COMMIT there."""

    inline_commits = True


GroupCommitOnTheLoop.TestCase.settings = GroupCommit.TestCase.settings
test_group_commit_on_the_loop_holds_whatever_the_order = GroupCommitOnTheLoop.TestCase
