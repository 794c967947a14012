"""What the store writes for a message's life at the sender, beside the bytes it must write.

    .venv/bin/python bench/store_writes.py [--messages 2000] [--batch 32]
        [--envelope 3500] [--sealed 1300] [--results FILE] [--quick]

The real store (`network.node.store.Store`, WAL, synchronous=FULL) on a scratch file
takes the three use cases a sent message costs it: queued (its row, envelope and
sealed copy, and its audit entry), sent (the link's mark) and delivered (the
receipt), `--batch` use cases at once as under load. The WAL grows by what each
commits (its automatic checkpoints are off for the run, so none resets it). The
floor is a bare SQLite file on the same disk, same settings and batches, holding
the same bytes the way the least writing would: the envelope and its sealed copy
written once in a table of their own, the state moving in a narrow row. For each
stage: KiB of WAL a message, the floor's, and the floor's share of ours.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, machine, record, scratch, table
from network.core.lifecycle import PRIORITY_RANK, Event, State
from network.core.records import Box, MessageType, NodeId, Priority
from network.node.store import AuditEntry, Store, _on_thread

T0 = 1_795_000_000_000
DEU = NodeId("DEU")
STAGES = ("queued", "sent", "delivered")


def _wal(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def ours(path: Path, messages: int, batch: int, envelope: int, sealed: int) -> list[float]:
    """KiB of WAL a message for each stage, through the store's use cases."""
    store = await Store.open(path)
    await _on_thread(store.writer, lambda conn: conn.execute("PRAGMA wal_autocheckpoint = 0"))
    ids = [f"m{n:07d}" for n in range(messages)]

    async def queued(message_id: str) -> None:
        async with store.transaction(T0) as tx:
            await tx.known_ids([message_id])
            tx.insert_message(
                id=message_id,
                box=Box.OUT,
                peer=DEU,
                type=MessageType.PRESERVATION,
                priority=Priority.URGENT,
                priority_rank=PRIORITY_RANK[Priority.URGENT],
                state=State.QUEUED,
                created=T0,
                expires=T0 + 86_400_000,
                envelope=os.urandom(envelope),
                digest=os.urandom(32),
                self_sealed=os.urandom(sealed),
                composed_by="olivia",
            )
            tx.audit([AuditEntry("olivia", "composed", message_id, {"to": DEU})])

    async def sent(group: list[str]) -> None:  # one mark for what the link wrote at once
        async with store.transaction(T0, durable=False) as tx:
            await tx.prefetch(group)
            for message_id in group:
                row = await tx.message(message_id)
                assert row is not None
                tx.sent(row, Event.SEND, DEU, T0 + 30_000)
            tx.audit([AuditEntry("olivia", "sent", m, {"to": DEU}) for m in group])

    async def delivered(message_id: str) -> None:
        async with store.transaction(T0) as tx:
            row = await tx.message(message_id)
            assert row is not None
            tx.transition(row, Event.RECEIPT)
            tx.audit([AuditEntry("node:DEU", "delivered", message_id, {"from": DEU})])

    sizes = []
    try:
        for stage in STAGES:
            before = _wal(path)
            for start in range(0, messages, batch):
                group = ids[start : start + batch]
                if stage == "sent":
                    await sent(group)
                else:
                    work = queued if stage == "queued" else delivered
                    await asyncio.gather(*(work(m) for m in group))
            sizes.append((_wal(path) - before) / messages / 1024)
    finally:
        await store.close()
    return sizes


def floor(path: Path, messages: int, batch: int, envelope: int, sealed: int) -> list[float]:
    """The same stages on a bare file: the blobs written once, the state in a narrow row."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE blobs (id TEXT PRIMARY KEY, envelope BLOB, sealed BLOB)")
    conn.execute("CREATE TABLE states (id TEXT PRIMARY KEY, state TEXT, updated INTEGER)")
    conn.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, id TEXT, action TEXT)")
    ids = [f"m{n:07d}" for n in range(messages)]
    sizes = []
    for stage in STAGES:
        before = _wal(path)
        for start in range(0, messages, batch):
            group = ids[start : start + batch]
            conn.execute("BEGIN IMMEDIATE")
            if stage == "queued":
                conn.executemany(
                    "INSERT INTO blobs VALUES (?, ?, ?)",
                    [(m, os.urandom(envelope), os.urandom(sealed)) for m in group],
                )
                conn.executemany(
                    "INSERT INTO states VALUES (?, 'queued', 0)", [(m,) for m in group]
                )
            else:
                conn.executemany(
                    "UPDATE states SET state = ?, updated = updated + 1 WHERE id = ?",
                    [(stage, m) for m in group],
                )
            conn.executemany(
                "INSERT INTO log (id, action) VALUES (?, ?)", [(m, stage) for m in group]
            )
            conn.execute("COMMIT")
        sizes.append((_wal(path) - before) / messages / 1024)
    conn.close()
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32, help="use cases committed at once")
    parser.add_argument("--envelope", type=int, default=3500, help="bytes (a sample request's)")
    parser.add_argument("--sealed", type=int, default=1300, help="bytes of its sealed copy")
    add_arguments(parser)
    args = parser.parse_args()
    messages = 200 if args.quick else args.messages
    folder = scratch()
    started = time.perf_counter()
    kib = asyncio.run(
        ours(folder / "node.sqlite", messages, args.batch, args.envelope, args.sealed)
    )
    least = floor(folder / "floor.sqlite", messages, args.batch, args.envelope, args.sealed)
    figures = [
        Figure("store_writes", f"WAL a message, {stage}", "KiB", value, low, higher_is_better=False)
        for stage, value, low in zip(STAGES, kib, least, strict=True)
    ]
    figures.append(
        Figure("store_writes", "WAL a message, in all", "KiB", sum(kib), sum(least), False)
    )
    print(f"machine: {machine()}")
    print(
        f"{messages} messages in batches of {args.batch}; envelope {args.envelope} bytes,"
        f" sealed copy {args.sealed}; {time.perf_counter() - started:.1f} s"
    )
    print(table(figures))
    record(args.results, figures, quick=args.quick)


if __name__ == "__main__":
    main()
