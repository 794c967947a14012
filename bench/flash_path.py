"""Where a flash message waits at load, hop by hop: the split of its latency's tail.

    .venv/bin/python bench/flash_path.py [--messages 6000] [--share 0.9] [--seconds 10]
        [--flash-every 10] [--results FILE] [--quick]

FRA and DEU as in bench/throughput.py. Phase 1 saturates the pair (32 officers posting
urgent requests) for its rate; then an open-loop load at `--share` of it, one flash
request in `--flash-every`, the others urgent, as throughput.py's phase 2. Each node
runs with a probe (`PROBE`, a `sitecustomize` on its PYTHONPATH) that notes, on the
machine's monotonic clock, every frame its link session takes in or gives out with the
message ids in it, each message handed to the scheduler once committed, and each look
of a link's feed. Beside the audit entries both stores hold (whole milliseconds), each
flash message's way is split into the hops of `HOPS`, printed at p50, p90 and p99 with
its latency from composed to delivered.

The three stages throughput.py prints from the audit entries alone say which node a
flash message waited in; these say for what: a COMMIT, a task's turn, a loop busy with
other work (docs/PERFORMANCE.md, thirtieth session). The probe wraps four of the
project's functions by name, in the node processes only: if one is renamed, or frames no
longer show the ids, it notes nothing (Python reports a failing `sitecustomize` in the
node's log and goes on), and the run fails (tests/test_bench_quick.py runs it small).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, machine, record, scratch, table
from bench.throughput import (
    PAIR,
    first_audited,
    floor_per_message,
    latencies,
    offered_once,
    percentile,
    saturate,
)
from tests.harness import Network

# Runs in each process started with PYTHONPATH naming its folder; notes only in a node
# (`python -m network node run CONFIG`), into FLOW_PROBE/NODE.json when it exits.
PROBE = """
import os, sys
if os.environ.get("FLOW_PROBE") and {"node", "run"} <= set(sys.argv):
    import atexit, json, re, time
    config = next(a for a in sys.argv if a.endswith(".toml"))
    out = os.path.join(os.environ["FLOW_PROBE"], os.path.basename(config)[:-5] + ".json")
    events = []
    wall_minus_monotonic = time.time() - time.perf_counter()
    atexit.register(lambda: json.dump(
        {"offset": wall_minus_monotonic, "events": events}, open(out, "w")))
    sys.path.insert(0, os.getcwd())
    from network.core.session import LinkSession
    from network.node.delivery import Delivery
    ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
    clock = time.perf_counter

    def ids(frame):
        return [m.decode() for m in ID.findall(frame if isinstance(frame, bytes) else frame.encode())]

    receive_frame, data_to_send = LinkSession.receive_frame, LinkSession.data_to_send
    queued, next_batch = Delivery.queued, Delivery.next_batch

    def noting_receive_frame(self, data):
        events.append((clock(), "in", ids(data)))
        return receive_frame(self, data)

    def noting_data_to_send(self):
        frames = data_to_send(self)
        now = clock()
        events.extend((now, "out", ids(frame)) for frame in frames)
        return frames

    def noting_queued(self, message, committed=None):
        events.append((clock(), "handed", [message.id]))
        return queued(self, message, committed)

    async def noting_next_batch(self, *args, **kwargs):
        looked = clock()
        batch = await next_batch(self, *args, **kwargs)
        events.append((looked, "looked", [row.id for row in batch.rows]))
        return batch

    LinkSession.receive_frame, LinkSession.data_to_send = noting_receive_frame, noting_data_to_send
    Delivery.queued, Delivery.next_batch = noting_queued, noting_next_batch
"""

# What the probe notes (`PROBE`): a frame "in" and "out" with the ids in it, a message
# "handed" to the scheduler once committed, the ids a link's feed "looked" at.
NOTED = ("in", "out", "handed", "looked")

# A flash message's way: (hop, from, to), each (node, point). A point is an audit entry's
# action ("created": the envelope's own time) or one of `NOTED`: its envelope's frame goes
# "out" of FRA and "in" at DEU, its receipt's the other way.
HOPS: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    ("composed to queued (FRA: API, seal, statements)", ("FRA", "created"), ("FRA", "queued")),
    (
        "queued to handed over (FRA's COMMIT, its caller's turn)",
        ("FRA", "queued"),
        ("FRA", "handed"),
    ),
    (
        "handed over to the link's look (its committer's, else the feed's turn)",
        ("FRA", "handed"),
        ("FRA", "looked"),
    ),
    ("the link's look to its frame written", ("FRA", "looked"), ("FRA", "out")),
    ("frame written to DEU's read of it (DEU's loop)", ("FRA", "out"), ("DEU", "in")),
    (
        "read to received (DEU: flash task's turn, checks, opening)",
        ("DEU", "in"),
        ("DEU", "received"),
    ),
    (
        "received to receipt written (DEU's COMMIT, its caller's turn)",
        ("DEU", "received"),
        ("DEU", "out"),
    ),
    ("receipt written to FRA's read of it (FRA's loop)", ("DEU", "out"), ("FRA", "in")),
    (
        "read to receipt_received (FRA: receipts task's turn, check)",
        ("FRA", "in"),
        ("FRA", "receipt_received"),
    ),
)


def first_seen(
    events: Iterable[tuple[float, str, list[str]]], offset: float
) -> dict[str, dict[str, float]]:
    """Per point the probe notes, when each message id was first in it (wall-clock ms)."""
    seen: dict[str, dict[str, float]] = {}
    for at, point, ids in events:
        for message_id in ids:
            seen.setdefault(point, {}).setdefault(message_id, (at + offset) * 1000)
    return seen


def hop_times(
    points: Mapping[tuple[str, str], Mapping[str, float]], message_ids: Iterable[str]
) -> dict[str, list[float]]:
    """Per hop of `HOPS`, the milliseconds each message spent there; a message missing a
    point (not yet delivered, a frame the probe did not see) counts in none."""
    found: dict[str, list[float]] = {name: [] for name, _, _ in HOPS}
    for message_id in message_ids:
        spans = []
        for name, start, end in HOPS:
            begun, ended = (
                points.get(start, {}).get(message_id),
                points.get(end, {}).get(message_id),
            )
            if begun is None or ended is None:
                break
            spans.append((name, ended - begun))
        else:
            for name, span in spans:
                found[name].append(span)
    return found


def audit_points(store: Path, node: str, since: int) -> dict[tuple[str, str], dict[str, int]]:
    """The audit entries' times `HOPS` names at `node` (each message's first), and for FRA
    its envelopes' own."""
    actions = {point for _, *ends in HOPS for n, point in ends if n == node} - set(NOTED)
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return {(node, action): first_audited(db, action, since) for action in actions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000, help="phase 1, for the rate")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--share", type=float, default=0.9, help="of phase 1's rate")
    parser.add_argument("--seconds", type=float, default=10, help="of the paced load")
    parser.add_argument("--flash-every", type=int, default=10)
    parser.add_argument("--floor-rounds", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=600)
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.messages, args.seconds, args.floor_rounds = 300, 3, 30

    root = scratch()
    probe = root / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    noted = root / "noted"
    noted.mkdir()
    env = {"PYTHONPATH": str(probe), "FLOW_PROBE": str(noted)}
    network = Network(root, PAIR)
    try:
        network.start("FRA", env=env)
        network.start("DEU", env=env)
        rate = saturate(network, args.messages, args.concurrency, args.timeout).rate
        offered = rate * args.share
        since, rows, refused = offered_once(
            network, offered, args.seconds, args.flash_every, args.timeout
        )
        network.stop("DEU")
        network.stop("FRA")  # each node's probe writes what it noted as it exits
        points: dict[tuple[str, str], Mapping[str, float]] = {}
        for node in ("FRA", "DEU"):
            points.update(audit_points(network.nodes[node].store, node, since))
            written = json.loads((noted / f"{node}.json").read_text())
            for point, seen in first_seen(written["events"], written["offset"]).items():
                points[(node, point)] = seen
        with sqlite3.connect(f"file:{network.nodes['FRA'].store}?mode=ro", uri=True) as db:
            query = (
                "SELECT id FROM messages WHERE box = 'out' AND priority = 'flash' AND created >= ?"
            )
            flash_ids = [message_id for (message_id,) in db.execute(query, (since,))]
    finally:
        network.close()

    # The latency floor, as throughput.py's: one message's work back to back, no queue.
    floor_ms = sum(floor_per_message(network, args.floor_rounds).values()) * 1000
    spent = hop_times(points, flash_ids)
    whole = latencies(rows, "flash")
    matched = len(next(iter(spent.values())))
    if not matched:  # the probe saw none whole: frames or functions not as it knows them
        sys.exit(f"none of {len(whole)} flash messages delivered was seen at every point")
    figures = [
        Figure(
            "flash_path",
            f"flash latency p99 at {args.share:.0%} load ({offered:.0f} msg/s)",
            "ms",
            percentile(whole, 0.99),
            floor_ms,
            higher_is_better=False,
        )
    ]
    print(f"machine: {machine()}")
    print(
        f"phase 1: {args.messages} urgent requests, {args.concurrency} posting at once:"
        f" {rate:,.0f} msg/s; then {args.seconds:.0f}s at {args.share:.0%} of it"
        f" ({offered:,.0f} msg/s), one flash in {args.flash_every};"
        f" {refused / args.seconds:,.0f} urgent refused a second"
    )
    print(f"flash messages: {len(whole)} delivered, {matched} with every point of their way\n")
    print(f"{'hop (ms)':<66} {'p50':>6} {'p90':>6} {'p99':>6}")
    for name, values in [*spent.items(), ("composed to delivered", whole)]:
        quantiles = (statistics.median(values), percentile(values, 0.9), percentile(values, 0.99))
        print(f"{name:<66}" + "".join(f" {q:>6.1f}" for q in quantiles))
    print()
    print(table(figures))
    record(args.results, figures, quick=args.quick)


if __name__ == "__main__":
    main()
