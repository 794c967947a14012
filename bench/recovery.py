"""Recovery: how soon a node killed with a full outbox delivers again, and everything.

    .venv/bin/python bench/recovery.py [--messages 10000] [--kill-after 0.1] [--results FILE] [--quick]

FRA and DEU as separate processes on 127.0.0.1 (real TLS, SQLite,
WebSockets; each dials the other). DEU is killed (SIGKILL) and the messages
(urgent preservation requests of ~2 KiB) are posted to FRA's HTTP API: they
wait in FRA's outbox. Two scenarios follow, each timed from the restart:

- receiver restarts: DEU is started again; FRA drains its outbox to it.
- sender killed mid-stream: DEU is up and FRA is draining when FRA is killed
  (SIGKILL) after `--kill-after` of the messages are delivered; FRA is
  started again and finishes from its store.

Figures for each: the time from the restart to the first delivery (a
verified end-to-end receipt committed at FRA), the time until every message
is delivered, and the drain rate after the restart. After each run every
message must be in DEU's inbox exactly once and delivered at FRA.

The floor, measured in this same run: starting a Python process that imports
the node (`python -c "import network.node.runner"`) plus the per-message work of
`bench/throughput.py` that is left once a message is queued (open, receipt,
receipt verification, and two of the three durable commits: sealing and the
`queued` commit were done before the kill).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, machine, record, scratch, table
from bench.throughput import floor_per_message, post_flat_out, wait_delivered
from tests.harness import REPO, Network, rows, wait_for


def start_floor(rounds: int = 3) -> float:
    """Median seconds to start Python and import the node: the least a restart costs."""
    spent = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import network.node.runner"], cwd=REPO, check=True)
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


def delivered_count(network: Network) -> int:
    found = rows(
        network.nodes["FRA"].store,
        "SELECT COUNT(*) FROM messages WHERE box = 'out' AND state = 'delivered'",
    )
    return int(found[0][0])


def check_exactly_once(network: Network, count: int) -> None:
    """Every message delivered at FRA, and in DEU's inbox once (one row per id, none missing)."""
    sent = {i for (i,) in rows(network.nodes["FRA"].store, "SELECT id FROM messages")}
    got = [i for (i,) in rows(network.nodes["DEU"].store, "SELECT id FROM messages")]
    if len(sent) != count or sorted(got) != sorted(sent) or delivered_count(network) != count:
        raise SystemExit(
            f"lost or duplicated: {count} posted, {len(sent)} at FRA,"
            f" {len(got)} at DEU ({len(set(got))} distinct), {delivered_count(network)} delivered"
        )


def queue_with_receiver_down(network: Network, count: int, concurrency: int) -> None:
    network.start("FRA")
    network.start("DEU")
    network.kill("DEU")
    asyncio.run(post_flat_out(network, count, concurrency))


def timed_from(restart_ms: int, network: Network, count: int, timeout: float) -> list[int]:
    """The delivery times (ms) of the messages delivered since the restart, once all are."""
    found = wait_delivered(network.nodes["FRA"].store, count, 0, timeout)
    return sorted(updated for _, _, updated in found if updated >= restart_ms)


def receiver_restarts(
    root: Path, count: int, concurrency: int, retry_seconds: float, timeout: float
) -> list[int]:
    network = Network(root, {"FRA": ["DEU"], "DEU": ["FRA"]}, retry_seconds=retry_seconds)
    try:
        queue_with_receiver_down(network, count, concurrency)
        restart_ms = int(time.time() * 1000)
        network.start("DEU")
        times = timed_from(restart_ms, network, count, timeout)
        check_exactly_once(network, count)
    finally:
        network.close()
    return [t - restart_ms for t in times]


def sender_killed(
    root: Path,
    count: int,
    concurrency: int,
    kill_after: float,
    retry_seconds: float,
    timeout: float,
) -> list[int]:
    network = Network(root, {"FRA": ["DEU"], "DEU": ["FRA"]}, retry_seconds=retry_seconds)
    try:
        queue_with_receiver_down(network, count, concurrency)
        network.start("DEU")
        wait_for(
            lambda: delivered_count(network) >= max(1, int(count * kill_after)),
            timeout=timeout,
            what=f"{kill_after:.0%} delivered before the kill",
        )
        network.kill("FRA")
        restart_ms = int(time.time() * 1000)
        network.start("FRA")
        times = timed_from(restart_ms, network, count, timeout)
        check_exactly_once(network, count)
    finally:
        network.close()
    return [t - restart_ms for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kill-after", type=float, default=0.1, help="share delivered first")
    parser.add_argument(
        "--retry-seconds",
        type=float,
        default=60,
        help="the nodes' delivery.retry_seconds (60 by default, as a node's)",
    )
    parser.add_argument("--floor-rounds", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=1800)
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        # Enough that the sender is still sending when it is killed (200 all went before).
        args.messages, args.floor_rounds, args.retry_seconds = 1000, 30, 5

    start = start_floor()  # first, while no node runs
    root = scratch("cpn-bench-recovery-")
    scenarios = {
        "receiver restarts": receiver_restarts(
            root / "receiver", args.messages, args.concurrency, args.retry_seconds, args.timeout
        ),
        "sender killed mid-stream": sender_killed(
            root / "sender",
            args.messages,
            args.concurrency,
            args.kill_after,
            args.retry_seconds,
            args.timeout,
        ),
    }
    per_message = floor_per_message(Network(root / "floor", {"FRA": ["DEU"]}), args.floor_rounds)
    # Left after a message is queued: all but the seal and one of the three commits.
    left = sum(per_message.values()) - per_message["seal"] - per_message["commits"] / 3

    figures = []
    for name, times in scenarios.items():
        if not times:
            raise SystemExit(f"{name}: all delivered before the restart, nothing to time")
        drained = len(times)
        first, last = times[0] / 1000, times[-1] / 1000
        figures += [
            Figure("recovery", f"{name}: restart to first delivery", "s", first, start + left,
                   higher_is_better=False),
            Figure("recovery", f"{name}: restart to all {drained} delivered", "s", last,
                   start + drained * left, higher_is_better=False),
            Figure("recovery", f"{name}: drain rate after the restart", "msg/s",
                   drained / max(last - first, 1e-3), 1 / left),
        ]  # fmt: skip
    print(f"machine: {machine()}")
    print(
        f"{args.messages} urgent preservation requests queued at FRA for DEU while DEU was down;"
        f" every one delivered exactly once in both scenarios; retry_seconds {args.retry_seconds:g}"
    )
    print(
        f"floor: start and import {start:.2f} s, then {left * 1e6:.0f} us per message left to do\n"
    )
    print(table(figures))
    record(args.results, figures, quick=args.quick)


if __name__ == "__main__":
    main()
