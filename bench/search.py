"""Search: "have we seen this identifier before?" among 100,000 messages (issue 20, item 4).

    .venv/bin/python bench/search.py [--messages 100000] [--results FILE] [--quick]

A store (real SQLite, WAL, synchronous=FULL) is filled through the store's own write
path with `--messages` received preservation requests, each naming three identifiers
(keyed digests, as the node keeps them). Then one identifier is searched for, again and
again, through `Store.search` (the query GET /api/search runs, on the store's thread).

The floor, measured in this same run on the same file: the same lookup as one raw
SQLite query on its own connection (the index probe and the rows it finds), without the
store's thread hop or row decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, record, table
from network.core.crypto import generate_storage_key
from network.core.identifiers import match_keys
from network.core.lifecycle import PRIORITY_RANK, State
from network.core.records import Box, MessageType, NodeId, Priority
from network.node.store import Store

BATCH = 2000


def identifier(n: int) -> str:
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


async def fill(path: Path, count: int, tag: object) -> None:
    store = await Store.open(path)
    try:
        for start in range(0, count, BATCH):
            async with store.transaction(0) as tx:
                for n in range(start, min(start + BATCH, count)):
                    message_id = f"0192f3a4-{n // 65536:04x}-7abc-8def-{n:012x}"
                    tx.insert_message(
                        id=message_id,
                        box=Box.IN,
                        peer=NodeId("DEU"),
                        type=MessageType.PRESERVATION,
                        priority=Priority.URGENT,
                        priority_rank=PRIORITY_RANK[Priority.URGENT],
                        state=State.RECEIVED,
                        created=1_790_000_000_000 + n,
                        expires=1_790_000_000_000 + n + 86_400_000,
                        envelope=b"{}",
                        digest=bytes(32),
                    )
                    keys = [
                        *match_keys(identifier(n), None),
                        f"email:user{n}@example.org",
                        f"account:acct-{n}",
                    ]
                    tx.index_identifiers(message_id, [tag(k) for k in keys])  # type: ignore[operator]
    finally:
        await store.close()


async def store_search(path: Path, tags: list[str], rounds: int) -> list[float]:
    store = await Store.open(path)
    try:
        spent = []
        for _ in range(rounds):
            started = time.perf_counter()
            found = await store.search(tags=tags, limit=100)
            spent.append(time.perf_counter() - started)
            assert len(found) == 1, found
        return spent
    finally:
        await store.close()


def raw_search(path: Path, tags: list[str], rounds: int) -> list[float]:
    conn = sqlite3.connect(path)
    try:
        marks = ",".join("?" * len(tags))
        query = (
            "SELECT m.* FROM messages m WHERE m.id IN"
            f" (SELECT message_id FROM identifiers WHERE tag IN ({marks}))"
        )
        spent = []
        for _ in range(rounds):
            started = time.perf_counter()
            rows = conn.execute(query, tags).fetchall()
            spent.append(time.perf_counter() - started)
            assert len(rows) == 1
        return spent
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=200)
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds = 5_000, 50
    key = generate_storage_key()
    with tempfile.TemporaryDirectory(prefix="cpn-bench-search-") as tmp:
        path = Path(tmp) / "store.sqlite"
        started = time.perf_counter()
        asyncio.run(fill(path, args.messages, key.tag))
        filled = time.perf_counter() - started
        wanted = [key.tag(k) for k in match_keys(identifier(args.messages * 3 // 4), None)]
        ours = statistics.median(asyncio.run(store_search(path, wanted, args.rounds))) * 1e6
        floor = statistics.median(raw_search(path, wanted, args.rounds)) * 1e6
    figures = [
        Figure(
            "search",
            f"find one identifier among {args.messages:,} messages",
            "µs",
            ours,
            floor,
            higher_is_better=False,
        ),
        Figure(
            "search",
            f"fill the store ({args.messages:,} messages, 3 identifiers each)",
            "s",
            filled,
        ),
    ]
    print(table(figures))
    record(args.results, figures, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
