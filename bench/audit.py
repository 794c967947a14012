"""Audit log: `verify_store` rate on a large store beside the floor, and the cost of appending.

    .venv/bin/python bench/audit.py [--entries 1000000] [--checkpoint-every 1000] [--appends 300]
        [--results FILE] [--quick]

Builds a store of N entries the fast way (the schema from `Store.open`, then
rows written directly with sqlite3 `executemany`, each leaf from
`auditlog.entry_leaf`; a signed checkpoint every K entries), then times
`verify_store` on it. Its messages' contents are deleted under a retention rule, as a
store's old messages' are (the row and an empty envelope kept, a `deleted` entry in the
log): the verifier checks the log and each deletion, no envelope signatures.

The floor is measured in the same run, on the same file: one pass of sqlite
row iteration over the same columns (fetchmany, as the verifier reads), plus
SHA-256 of the same leaf input bytes (0x00 ‖ canonical entry, built before the
clock starts; timed on up to 100,000 of them and scaled), so the ratio says
how much of the verifier's time is its own. The verifier also builds the tree
(one node hash per entry) and checks each checkpoint's root and signature,
which the floor leaves out. `verify_store` is timed in one process and with
its worker processes (one per core); the floor of the latter is the one-core
floor times the cores, as if the raw work split perfectly. CPU time counts the
workers' too.

Append cost: entries appended through `Store.transaction` + `tx.audit` (one
or 100 per transaction), beside a bare sqlite3 INSERT of the same rows (leaf
hash included) in transactions of the same size; durable (synchronous=FULL,
an fsync per commit, as the node commits) and without the fsync
(synchronous=NORMAL), where the CPU cost of the store's path shows.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, machine, record
from network.core.auditlog import checkpoint_origin, entry_bytes, entry_leaf
from network.core.crypto import (
    HpkeSuite,
    generate_hpke_key,
    generate_signing_key,
    generate_tls_identity,
)
from network.core.records import NodeId, b64encode, canonical
from network.core.roster import Card, Roster, build_roster, load_roster
from network.core.tlog import Checkpoint, TreeBuilder, sign_note
from network.node.store import AuditEntry, Store
from network.node.verify import verify_store

NOW = 1_795_000_000_000
RULE = "closed"  # the retention rule the `deleted` entries name
ACTIONS = (
    ("officer-fra", "composed", {"to": "DEU", "type": "preservation", "priority": "urgent"}),
    ("node:FRA", "sealed", {"digest": "", "suite": "X25519/HKDF-SHA256/AES-256-GCM"}),
    ("node:FRA", "queued", {"to": "DEU"}),
    ("node:FRA", "sent", {"to": "DEU", "attempt": 1}),
    ("node:DEU", "receipt_received", {"from": "DEU", "outcome": "accepted", "path": []}),
    ("node:FRA", "delivered", {"by": "DEU"}),
    # Its contents deleted under a retention rule: the store keeps the row and an empty
    # envelope, so the verifier checks the log, not envelope signatures.
    ("node:FRA", "deleted", {"rule": RULE, "state": "delivered", "digest": ""}),
)


def _digest(message_id: str) -> bytes:
    return hashlib.sha256(message_id.encode()).digest()


def entries(count: int) -> list[tuple[int, str, str, str | None, str]]:
    """`count` entries shaped like a node's: seven steps per message, ~100-byte details."""
    rows = []
    message_id = ""
    for i in range(count):
        actor, action, detail = ACTIONS[i % len(ACTIONS)]
        if i % len(ACTIONS) == 0:
            message_id = f"01a2{i:08x}-0000-7000-8000-{i:012x}"
        if action in ("sealed", "deleted"):
            detail = {**detail, "digest": b64encode(_digest(message_id))}
        rows.append((NOW + i // 10, actor, action, message_id, canonical(detail).decode()))
    return rows


def create_schema(path: Path) -> None:
    async def schema() -> None:
        store = await Store.open(path)
        await store.close()

    asyncio.run(schema())


def build_store(path: Path, count: int, every: int) -> Roster:
    """Write the store file; return the roster holding its node's key."""
    create_schema(path)
    keeper = generate_signing_key()
    signing = generate_signing_key()
    card = Card(
        NodeId("FRA"),
        "France",
        "wss://127.0.0.1:7000",
        signing.verify_key(),
        generate_hpke_key(HpkeSuite.X25519).public,
        generate_tls_identity("FRA", now=datetime.datetime.now(datetime.UTC))[2],
    )
    data = build_roster(
        [card], keeper=keeper, version=1, issued=NOW - 1000, valid_until=NOW + 10**12
    )
    roster = load_roster(data, keeper=keeper.verify_key(), now=NOW)
    origin = checkpoint_origin("FRA")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    tree = TreeBuilder()
    rows = []
    checkpoints = []
    log = entries(count)
    for seq, (t, actor, action, message_id, detail) in enumerate(log, start=1):
        leaf = entry_leaf(t, actor, action, message_id, json.loads(detail))
        rows.append((seq, t, actor, action, message_id, detail, leaf))
        tree.append(leaf)
        if seq % every == 0 or seq == count:
            checkpoint = Checkpoint(origin, seq, tree.root())
            note = sign_note(checkpoint.to_text(), origin, signing)
            checkpoints.append((seq, checkpoint.root, t, note))
        if len(rows) == 50_000:
            db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            rows.clear()
    db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.executemany("INSERT INTO checkpoints VALUES (?, ?, ?, ?)", checkpoints)
    # Each message the log records queued keeps its row (the verifier names one that is
    # gone), with the digest its entries give, and an envelope emptied by retention.
    queued = [(t, m) for t, _, action, m, _ in log if action == "queued" and m]
    db.executemany(
        "INSERT INTO messages (id, box, peer, type, priority, priority_rank, state, created,"
        " expires, updated, digest, deleted, deleted_at) VALUES (?, 'out', 'DEU',"
        " 'preservation', 'urgent', 1, 'delivered', ?, ?, ?, ?, ?, ?)",
        [(m, t, t + 86_400_000, t, _digest(m), RULE, t) for t, m in queued],
    )
    db.executemany("INSERT INTO envelopes VALUES (?, x'', NULL)", [(m,) for _, m in queued])
    db.execute("COMMIT")
    db.close()
    return roster


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the verifier's workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Clock:
    """Wall time and CPU time, together: on a shared machine the CPU time is what a run
    costs, whatever else the cores are doing."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = cpu_seconds()

    def elapsed(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def floor_seconds(path: Path, entries: int, sample: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the floor: iterate all rows, and SHA-256 of every leaf's input.

    The hashing is timed on `sample` inputs built beforehand and scaled to `entries`.
    """
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    clock = Clock()
    cursor = db.execute(
        "SELECT seq, time, actor, action, message_id, CAST(detail AS BLOB), leaf"
        " FROM audit ORDER BY seq"
    )
    while batch := cursor.fetchmany(4096):
        for _row in batch:
            pass
    iterate = clock.elapsed()
    inputs = []
    for t, actor, action, message_id, detail in db.execute(
        "SELECT time, actor, action, message_id, detail FROM audit ORDER BY seq LIMIT ?",
        (sample,),
    ):
        inputs.append(b"\x00" + entry_bytes(t, actor, action, message_id, json.loads(detail)))
    db.close()
    sha = hashlib.sha256
    clock = Clock()
    for data in inputs:
        sha(data).digest()
    hashing = clock.elapsed()
    scale = entries / len(inputs)
    return iterate[0] + hashing[0] * scale, iterate[1] + hashing[1] * scale


def append_costs(root: Path, count: int, rounds: int) -> list[tuple[str, float, float]]:
    """(case, µs per entry through the store, µs per entry bare), medians of interleaved rounds.

    Each case commits `count` transactions of 1 entry, or `count` / 10 of 100 entries, durable
    (synchronous=FULL: an fsync per commit, as the node commits) or not
    (synchronous=NORMAL in WAL: no fsync, so the CPU cost shows).
    """
    detail = {"to": "DEU", "attempt": 1}

    def transactions(batch: int) -> int:
        return count if batch == 1 else max(1, count // 10)

    entry = AuditEntry("node:FRA", "sent", "01a2c3d4-0000-7000-8000-000000000000", detail)
    text = canonical(detail).decode()

    async def through_store(path: Path, batch: int, durable: bool) -> float:
        store = await Store.open(path)
        try:
            started = time.perf_counter()
            for i in range(transactions(batch)):
                async with store.transaction(NOW + i, durable=durable) as tx:
                    tx.audit([entry] * batch)
            return (time.perf_counter() - started) / (transactions(batch) * batch)
        finally:
            await store.close()

    def bare(path: Path, batch: int, durable: bool) -> float:
        create_schema(path)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        seq = 0
        started = time.perf_counter()
        for i in range(transactions(batch)):
            db.execute("BEGIN IMMEDIATE")
            rows = []
            for _ in range(batch):
                seq += 1
                leaf = entry_leaf(NOW + i, "node:FRA", "sent", entry.message_id, detail)
                rows.append((seq, NOW + i, "node:FRA", "sent", entry.message_id, text, leaf))
            db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        db.close()
        return elapsed / (transactions(batch) * batch)

    results = []
    for durable in (True, False):
        for batch in (1, 100):
            ours, floors = [], []
            for r in range(rounds):
                name = f"{batch}-{durable}-{r}"
                ours.append(asyncio.run(through_store(root / f"s{name}.sqlite", batch, durable)))
                floors.append(bare(root / f"b{name}.sqlite", batch, durable))
            case = f"{batch} per transaction, {'durable' if durable else 'no fsync'}"
            results.append((case, statistics.median(ours) * 1e6, statistics.median(floors) * 1e6))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--appends", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.entries, args.appends, args.rounds = 20_000, 20, 1
    with tempfile.TemporaryDirectory(prefix="cpn-bench-audit-") as tmp:
        root = Path(tmp)
        path = root / "FRA.sqlite"
        started = time.perf_counter()
        roster = build_store(path, args.entries, args.checkpoint_every)
        built = time.perf_counter() - started
        size_mb = path.stat().st_size / 1e6
        cores = os.cpu_count() or 1
        figures = ("one", "all", "cpu")
        rates: dict[str, list[float]] = {
            k: [] for k in (*figures, *(f"{f} floor" for f in figures))
        }
        report = None
        for _ in range(args.rounds):  # interleaved: machine drift hits both sides alike
            clock = Clock()
            report = verify_store(path, roster=roster, node_id="FRA", workers=1)
            one = clock.elapsed()[0]
            clock = Clock()
            report = verify_store(path, roster=roster, node_id="FRA", workers=cores)
            wall, cpu = clock.elapsed()
            floor_wall, floor_cpu = floor_seconds(path, args.entries, min(args.entries, 100_000))
            for name, seconds in (
                ("one", one),
                ("one floor", floor_wall),
                ("all", wall),
                ("all floor", floor_wall / cores),  # the one-core floor, scaled perfectly
                ("cpu", cpu),
                ("cpu floor", floor_cpu),
            ):
                rates[name].append(args.entries / seconds)
        assert report is not None
        assert report.ok, report
        costs = append_costs(root, args.appends, args.rounds)
    print(f"machine: {machine()}")
    print(
        f"store: {args.entries} entries, a checkpoint every {args.checkpoint_every}"
        f" ({report.checkpoints} checkpoints), {size_mb:.0f} MB, built in {built:.1f} s"
    )
    print(f"median of {args.rounds} rounds, verifier and floor back to back\n")
    print(f"{'figure':<72} {'cpn':>11} {'floor':>11} {'ratio':>6}")
    figures = []
    for label, key in (
        ("wall clock, 1 process", "one"),
        (f"wall clock, {cores} worker processes (floor: {cores} x 1 core)", "all"),
        ("per CPU second (all processes)", "cpu"),
    ):
        ours, floor = statistics.median(rates[key]), statistics.median(rates[f"{key} floor"])
        ratio = statistics.median(
            o / f for o, f in zip(rates[key], rates[f"{key} floor"], strict=True)
        )
        print(
            f"{'verify_store, entries/s, ' + label:<72} {ours:>11,.0f} {floor:>11,.0f} {ratio:>6.0%}"
        )
        figures.append(Figure("audit", f"audit verify, {label}", "entry/s", ours, ours / ratio))
    print("\nappend cost, µs per entry: Store.transaction + tx.audit vs bare sqlite3 INSERT")
    print(f"{'case':<58} {'cpn':>11} {'bare':>11} {'ratio':>6}")
    for case, ours_us, bare_us in costs:
        print(f"{case:<58} {ours_us:>11.1f} {bare_us:>11.1f} {bare_us / ours_us:>6.0%}")
        figures.append(
            Figure("audit", f"audit append, {case}", "µs", ours_us, bare_us, higher_is_better=False)
        )
    record(args.results, figures, quick=args.quick)


if __name__ == "__main__":
    main()
