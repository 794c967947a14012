"""A relay under load: FRA -> DEU -> KEN, FRA and KEN with no direct link.

    .venv/bin/python bench/relay.py [--messages 5000] [--concurrency 32] [--results FILE] [--quick]

Starts the three nodes as separate processes on 127.0.0.1 (real TLS, SQLite,
WebSockets; FRA dials DEU, DEU dials KEN), sends one message through to learn
the route, then posts the messages to FRA's HTTP API as fast as
`--concurrency` officers can (urgent preservation requests of ~2 KiB, sealed
to KEN: the relay cannot read them) and waits until FRA holds a verified
end-to-end receipt for every one.

Figures: the relay's rate, from its store (messages that reached `forwarded`,
which a relay records when the end-to-end receipt comes back through it,
from the first received to the last forwarded), and the end-to-end rate at
FRA (first composed to last delivered).

The relay's floor is measured in this same run, in one process, back to
back: what a relay must do per message at least, that is, verify the outer
signature (and times) of the envelope, commit it durably, sign a hop receipt
to the node it came from, and pass the end-to-end receipt back (verify it,
commit the message as forwarded: a second durable commit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, machine, record, scratch, table
from bench.throughput import commit, floor_db, floor_per_message, post_flat_out, wait_delivered
from network.core.envelope import (
    ReceiptScope,
    check_receipt_for,
    make_receipt,
    seal,
    verify_envelope,
    verify_receipt,
)
from network.core.records import MessageType, NodeId, Outcome, Priority
from network.node.config import load_config
from network.node.keys import load_node_keys
from network.node.runner import load_current_roster
from network.samples import sample_body
from tests.harness import Network, rows


def relay_floor_per_message(network: Network, rounds: int = 300) -> dict[str, float]:
    """Median seconds of each step a relay takes per message, in one process."""
    keys = {n: load_node_keys(network.keys / n, NodeId(n)) for n in ("FRA", "DEU", "KEN")}
    roster = load_current_roster(load_config(network.nodes["DEU"].config))
    now = int(time.time() * 1000)
    envelope = seal(
        sender=NodeId("FRA"),
        recipient=NodeId("KEN"),
        message_type=MessageType.PRESERVATION,
        body=sample_body("preservation"),
        priority=Priority.URGENT,
        now=now,
        random_bytes=os.urandom(10),
        signing_key=keys["FRA"].signing,
        recipient_key=roster.active_card("KEN").hpke_key,
    )
    end_to_end = make_receipt(
        message_id=envelope.header.id,
        message_sender=NodeId("FRA"),
        envelope_raw=envelope.raw,
        me=NodeId("KEN"),
        signing_key=keys["KEN"].signing,
        now=now,
        random_bytes=os.urandom(10),
        outcome=Outcome.ACCEPTED,
        path=(NodeId("DEU"),),
    )
    db = floor_db()
    steps: dict[str, list[float]] = {
        k: [] for k in ("verify_outer", "commit", "hop_receipt", "pass_back")
    }
    for index in range(rounds):
        t0 = time.perf_counter()
        verify_envelope(envelope.raw, roster=roster, now=now)
        t1 = time.perf_counter()
        commit(db, "INSERT INTO m VALUES (?, 'queued', ?)", (f"r{index}", envelope.raw))
        t2 = time.perf_counter()
        make_receipt(
            message_id=envelope.header.id,
            message_sender=NodeId("FRA"),  # a hop receipt goes to the node it came from
            envelope_raw=envelope.raw,
            me=NodeId("DEU"),
            signing_key=keys["DEU"].signing,
            now=now,
            random_bytes=os.urandom(10),
            outcome=Outcome.ACCEPTED,
            scope=ReceiptScope.HOP,
        )
        t3 = time.perf_counter()
        check_receipt_for(verify_receipt(end_to_end.raw, roster=roster, now=now), envelope)
        commit(db, "UPDATE m SET state = 'forwarded' WHERE id = ?", (f"r{index}",))
        t4 = time.perf_counter()
        for key, spent in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            steps[key].append(spent)
    db.close()
    return {key: statistics.median(values) for key, values in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--floor-rounds", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=900)
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.messages, args.floor_rounds = 200, 30

    network = Network(
        scratch("cpn-bench-relay-"),
        {"FRA": ["DEU"], "DEU": ["KEN"], "KEN": []},
    )
    fra, deu = network.nodes["FRA"], network.nodes["DEU"]
    try:
        for node_id in ("KEN", "DEU", "FRA"):
            network.start(node_id)
        # One message through first: FRA learns its route to KEN before the clock starts.
        first = network.send("FRA", "KEN", "preservation", sample_body("preservation"))
        network.wait_state("FRA", first, {"delivered"}, timeout=60)
        since = int(time.time() * 1000)
        asyncio.run(post_flat_out(network, args.messages, args.concurrency, to="KEN"))
        delivered = wait_delivered(fra.store, args.messages, since, args.timeout)
        relayed = rows(
            deu.store,
            "SELECT received, updated FROM messages"
            " WHERE box = 'relay' AND state = 'forwarded' AND created >= ?",
            (since,),
        )
        for node_id in ("FRA", "DEU", "KEN"):
            network.stop(node_id)
    finally:
        network.close()
    if len(relayed) != args.messages:
        raise SystemExit(f"{len(relayed)} of {args.messages} forwarded by the relay")
    relay_seconds = (max(u for _, u in relayed) - min(r for r, _ in relayed)) / 1000
    end_seconds = (max(u for _, _, u in delivered) - min(c for _, c, _ in delivered)) / 1000
    floor = relay_floor_per_message(network, args.floor_rounds)
    floor_rate = 1 / sum(floor.values())
    # End to end, the three nodes share this machine: the two ends' work as in
    # bench/throughput.py, and the relay's.
    ends = floor_per_message(network, args.floor_rounds)
    end_floor_rate = 1 / (sum(ends.values()) + sum(floor.values()))
    figures = [
        Figure(
            "relay",
            "relay: forwarded with end-to-end receipt back",
            "msg/s",
            len(relayed) / relay_seconds,
            floor_rate,
        ),
        Figure(
            "relay",
            "relay: delivered at the sender, end to end",
            "msg/s",
            len(delivered) / end_seconds,
            end_floor_rate,
        ),
    ]
    print(f"machine: {machine()}")
    print(
        f"{args.messages} urgent preservation requests FRA->DEU->KEN through FRA's API,"
        f" {args.concurrency} posting at once; the relay's floor is its own work,"
        f" the end-to-end floor that and the two ends' work of bench/throughput.py\n"
    )
    print(table(figures))
    print("\nrelay floor per message (median, one process, back to back):")
    for key, value in floor.items():
        print(f"  {key:<16} {value * 1e6:>8.0f} us")
    print(f"  {'total':<16} {sum(floor.values()) * 1e6:>8.0f} us")
    record(args.results, figures, quick=args.quick)


if __name__ == "__main__":
    main()
