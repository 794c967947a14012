"""A relay's link turns while end-to-end receipts wait for a way back that is cut.

    .venv/bin/python bench/receipts_back.py [--waiting 0,1000,10000] [--turns 2000]
        [--results FILE] [--quick]

A relay holds the end-to-end receipts it passes on until a node of their message's path
is linked (`Scheduler.pass_on`): a sender that went away after sending leaves them all
waiting. Meanwhile the relay's other links go on turning (`Scheduler.next_batch`, each
time one has something to send). This times one such turn of a link with nothing of its
own to send, with `--waiting` receipts held for the sender that is gone, spread over 50
recipients (the scheduler alone, in memory, as tests/test_scheduler.py builds it).

The floor, in the same run: the same turn with no receipt waiting. The ratio says how
much of a turn the waiting receipts cost: 100% is nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, machine, record, table
from network.core.records import NodeId
from network.core.routing import Announcement, RoutingTable
from network.core.session import Room
from network.node.scheduler import Scheduler

ME, DEU, KEN, USA = NodeId("FRA"), NodeId("DEU"), NodeId("KEN"), NodeId("USA")
T0 = 1_795_000_000_000


def a_turn_us(waiting: int, turns: int) -> float:
    """The median time of DEU's link's turn (µs) with `waiting` receipts held for USA."""
    routing = RoutingTable(ME)
    routing.accept(Announcement(USA, 1, frozenset({ME, KEN}), b""))
    routing.accept(Announcement(DEU, 2, frozenset({ME}), b""))
    routing.set_linked([DEU, USA])
    made = Scheduler(routing)
    made.link_up(DEU, T0)
    made.link_up(USA, T0)
    made.refresh_routes(T0 + 1000, paused=True)
    made.link_down(USA)  # the sender is gone: its receipts wait for it
    routing.set_linked([DEU])
    for n in range(waiting):
        recipient = NodeId(f"K{n % 50:02d}")
        made.pass_on(f"r{n}", recipient, b"x" * 600, back=(USA,))
    assert made.receipts_waiting == waiting
    spent = []
    for _ in range(turns):
        started = time.perf_counter()
        batch = made.next_batch(DEU, Room(64, 64), T0 + 2000)
        spent.append(time.perf_counter() - started)
        assert not batch.receipts
    return statistics.median(spent) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", default="1000,10000")
    parser.add_argument("--turns", type=int, default=2000)
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.waiting, args.turns = "1000", 200
    floor = a_turn_us(0, args.turns)
    figures = [
        Figure(
            "receipts_back",
            f"a link's turn, {int(count):,} receipts waiting for another",
            "us",
            a_turn_us(int(count), args.turns),
            floor,
            higher_is_better=False,
        )
        for count in args.waiting.split(",")
    ]
    print(machine())
    print(table(figures))
    record(args.results, figures, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
