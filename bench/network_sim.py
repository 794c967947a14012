"""The whole network on one machine: 193 contact points, every one sending to every other.

    .venv/bin/python bench/network_sim.py [--nodes 193] [--workers 4] [--hubs 8]
        [--results FILE] [--quick]

Makes keys, a signed roster and a config for each UN member state (ISO
3166-1 alpha-3 ids), links them sparsely (a few regional hubs linked to each
other; each country linked to two hubs and its two neighbours), and runs them
in `--workers` processes, each running its share of nodes in one event loop;
every node keeps its own SQLite store, keys and TLS links on 127.0.0.1. Once
every node has a route to every other, each sends one `urgent` preservation
request to every other through its own use case (`Officers.submit`), and the
run waits for every end-to-end receipt to be back.

Reports: time until the last receipt, messages/s beside the floor (the
per-message crypto and durable commits of `bench/throughput.py`, spread over
the machine's cores), the CPU the workers took a message beside that floor's
(the run is bound by CPU: what a change to the work saves shows there, where the
time also counts whatever else the shared machine ran), the peak memory (sum of
the workers' peak RSS), and the longest path used.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import gc
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, machine, record, scratch
from bench.throughput import cpu_seconds, floor_per_message
from network.api.site import api_site
from network.core.crypto import HpkeSuite
from network.core.records import NodeId
from network.core.roster import build_roster
from network.node.config import load_config
from network.node.keys import init_keeper, init_node_keys, load_keeper
from network.node.links import LinkSettings
from network.node.runner import GC_THRESHOLDS, NodeSettings, new_event_loop, run_node
from network.node.wiring import Node
from network.node.witnessing import CheckpointPolicy
from network.samples import sample_body
from tests.harness import Network, free_port

MEMBER_STATES = Path(__file__).resolve().parent.parent / "network" / "data" / "un-member-states.csv"


def member_states() -> list[str]:
    with MEMBER_STATES.open(encoding="utf-8") as f:
        return sorted(row["alpha3"] for row in csv.DictReader(f))


def topology(ids: list[str], hubs: int, neighbours: int) -> dict[str, set[str]]:
    """Regional hubs in a full mesh; each country linked to two hubs and its neighbours."""
    size = len(ids)
    hub_ids = [ids[i * size // hubs] for i in range(hubs)]
    links: dict[str, set[str]] = {i: set() for i in ids}

    def link(a: str, b: str) -> None:
        if a != b:
            links[a].add(b)
            links[b].add(a)

    for a in hub_ids:
        for b in hub_ids:
            link(a, b)
    for index, node in enumerate(ids):
        region = index * hubs // size
        link(node, hub_ids[region])
        link(node, hub_ids[(region + 1) % hubs])
        for step in range(1, neighbours // 2 + 1):
            link(node, ids[(index + step) % size])
    return links


def prepare(root: Path, ids: list[str], links: dict[str, set[str]], suite: HpkeSuite) -> None:
    now = datetime.datetime.now(datetime.UTC)
    keys = root / "keys"
    init_keeper(keys / "authority")
    cards = []
    for node_id in ids:
        peer_port, api_port = free_port(), free_port()
        cards.append(
            init_node_keys(
                keys / node_id,
                NodeId(node_id),
                url=f"wss://127.0.0.1:{peer_port}",
                suite=suite,
                now=now,
            )
        )
        # Each link is dialled from one end only (the smaller id), to halve the handshakes.
        dial = sorted(p for p in links[node_id] if node_id < p)
        (root / "nodes").mkdir(exist_ok=True)
        (root / "nodes" / f"{node_id}.toml").write_text(
            f'id = "{node_id}"\n'
            f'[peer]\nlisten = "127.0.0.1:{peer_port}"\n'
            f'[api]\nlisten = "127.0.0.1:{api_port}"\n'
            f'[store]\npath = "../var/{node_id}.sqlite"\n'
            f'[keys]\ndir = "../keys/{node_id}"\nroster = "../keys/roster.json"\n'
            f'keeper = "../keys/authority/keeper.json"\n'
            f"[links]\npeers = {json.dumps(dial)}\n"
            f"[delivery]\nretry_seconds = 600\n"
        )
    now_ms = int(time.time() * 1000)
    data = build_roster(
        cards,
        keeper=load_keeper(keys / "authority"),
        version=1,
        issued=now_ms - 60_000,
        valid_until=now_ms + 86_400_000,
    )
    (keys / "roster.json").write_bytes(data)
    (root / "links.json").write_text(json.dumps({n: sorted(p) for n, p in links.items()}))


# -- a worker process: some of the nodes -------------------------------------------


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def worker(root: Path, ids: list[str], all_ids: list[str]) -> None:
    logging.basicConfig(
        filename=root / f"worker-{ids[0]}.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    services: dict[str, Node] = {}
    stop = asyncio.Event()
    dial = asyncio.Event()  # every node of every worker listens before anyone dials
    # One loop carries dozens of nodes here, and a loop that falls behind would
    # take its peers for dead: no keepalive pings between processes on one
    # machine (a dead process closes its sockets), and time for its pauses.
    links = LinkSettings(handshake_timeout=60, ping_interval=None, receipt_timeout=300)
    # Every message here is urgent: a checkpoint at most every 10 s per node while
    # traffic flows (1 s by default), or witnessing would outweigh the messages.
    checkpoints = CheckpointPolicy(urgent_delay_ms=60_000, every_entries=100_000)
    settings = NodeSettings(links=links, dial_after=dial, checkpoints=checkpoints)
    loop = asyncio.get_running_loop()

    async def ready(node: Node) -> None:
        services[node.context.me] = node

    configs = [load_config(root / "nodes" / f"{i}.toml") for i in ids]
    tasks = [
        asyncio.create_task(run_node(config, stop, settings, ready, api=api_site(config)))
        for config in configs
    ]
    try:
        while len(services) < len(ids):
            for task in tasks:
                if task.done():
                    task.result()  # a node that failed to start fails the run
            await asyncio.sleep(0.2)
        say("up", nodes=len(ids))
        if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "link":
            return
        dial.set()
        # Every link up and every route known, and the announcements settled: a link
        # coming up later would flood announcements through the run.
        degree = json.loads((root / "links.json").read_text())
        settled, known_at = 0, 0.0
        while settled < 3:
            missing = sum(len(degree[i]) - len(s.delivery.linked) for i, s in services.items())
            unrouted = sum(
                len(s.delivery.routing.reachable()) < len(all_ids) - 1 for s in services.values()
            )
            stale = sum(s.delivery.routing.stale for s in services.values())
            settled = settled + 1 if not (missing or unrouted or stale) else 0
            if settled == 1:
                known_at = time.time()  # the first look that found every route
            logging.info("waiting: %d links, %d nodes' routes, %d stale", missing, unrouted, stale)
            await asyncio.sleep(0.25 if settled == 0 else 1)
        gc.freeze()  # as `cpn node run` once it serves: what start built, out of every scan
        say("ready", nodes=len(ids), known_at=known_at)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return
        body = sample_body("preservation")
        cpu_at_go = cpu_seconds(os.getpid())  # all its threads, in and out of the kernel

        async def send_all(node_id: str) -> None:
            """One country's officers send to every other, one after another."""
            start = all_ids.index(node_id)
            for offset in range(1, len(all_ids)):
                to = all_ids[(start + offset) % len(all_ids)]
                await services[node_id].officers.submit(
                    user="sim", to=to, message_type="preservation", priority="urgent", body=body
                )

        # The countries send at the same time, each through its own store, while
        # the messages already sent travel.
        senders = [asyncio.create_task(send_all(node_id)) for node_id in ids]
        profile = os.environ.get("CPN_SIM_PROFILE")  # a file for one worker's profile
        if profile and all_ids[0] in ids:
            senders.append(asyncio.create_task(_profile(Path(profile), 60)))
        expected = len(ids) * (len(all_ids) - 1)

        async def each(query: str) -> list[tuple[int, ...]]:
            """One row of numbers per local node, from its own store (one read each, all
            at once: one after another, a look took a second in a busy loop, and the run's
            end was seen that much late)."""
            reads = (s.context.store.db.execute_fetchall(query) for s in services.values())
            found = await asyncio.gather(*reads)
            return [tuple(int(n or 0) for n in next(iter(rows))) for rows in found]

        counts = (
            "SELECT (SELECT COUNT(*) FROM messages WHERE box = 'out' AND state = 'delivered'),"
            " (SELECT COUNT(*) FROM messages WHERE box = 'out'),"
            " (SELECT COUNT(*) FROM messages WHERE box = 'in'),"
            " (SELECT COUNT(*) FROM messages WHERE box = 'relay' AND state = 'queued')"
        )
        while True:
            delivered, submitted, received, relaying = map(
                sum, zip(*await each(counts), strict=True)
            )
            for sender in senders:
                if sender.done():
                    sender.result()  # a refused submit fails the run
            say(
                "progress",
                delivered=delivered,
                submitted=submitted,
                received=received,
                relaying=relaying,
                expected=expected,
            )
            if delivered >= expected:
                break
            await asyncio.sleep(1)
        # When this worker's last receipt was seen back, on the machine's clock (CLOCK_MONOTONIC
        # is system-wide): the run's time ends there, not after the look at the paths below.
        all_back = time.monotonic()
        cpu = cpu_seconds(os.getpid()) - cpu_at_go
        query = "SELECT MAX(json_array_length(path)) FROM messages WHERE box = 'in'"
        longest = max(row[0] for row in await each(query))
        say("done", longest_relays=longest, all_back=all_back, cpu=cpu)
        await loop.run_in_executor(None, sys.stdin.readline)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _profile(path: Path, seconds: float) -> None:
    """Profile this worker's loop for `seconds` once sending starts."""
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await asyncio.sleep(seconds)
    finally:
        profiler.disable()
        profiler.dump_stats(path)


# -- the coordinator ---------------------------------------------------------------


def peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=193)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--hubs", type=int, default=8)
    parser.add_argument("--neighbours", type=int, default=2)
    parser.add_argument("--suite", choices=["hybrid", "x25519"], default="hybrid")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:  # the size of tests/test_network_sim.py
        args.nodes, args.workers, args.hubs, args.suite, args.timeout = 12, 2, 2, "x25519", 300
    ids = member_states()[: args.nodes]
    if args.worker:
        gc.set_threshold(*GC_THRESHOLDS)  # the collector as in `cpn node run`
        with asyncio.Runner(loop_factory=new_event_loop) as runner:  # as `cpn node run`'s
            runner.run(worker(Path(args.root), args.ids.split(","), ids))
        return

    suite = HpkeSuite.MLKEM768_X25519 if args.suite == "hybrid" else HpkeSuite.X25519
    root = scratch("cpn-sim-")
    links = topology(ids, min(args.hubs, len(ids)), args.neighbours)
    started = time.monotonic()
    prepare(root, ids, links, suite)
    prepared = time.monotonic() - started
    # Spread the hubs over the workers first: they carry most of the relaying.
    hub_ids = [i for i in ids if len(links[i]) > 2 + args.neighbours]
    others = [i for i in ids if i not in hub_ids]
    order = hub_ids + others
    shares = [order[i :: args.workers] for i in range(args.workers)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--root",
                str(root),
                "--ids",
                ",".join(share),
                "--nodes",
                str(args.nodes),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for share in shares
        if share
    ]
    try:
        events = [_read_event(w) for w in workers]
        assert all(e["event"] == "up" for e in events), events
        started_up = time.monotonic() - started - prepared
        linked_at = time.time()
        _tell(workers, "link")
        events = [_read_event(w) for w in workers]
        assert all(e["event"] == "ready" for e in events), events
        converged = time.monotonic() - started - prepared - started_up
        routes_known = max(e["known_at"] for e in events) - linked_at
        go = time.monotonic()
        _tell(workers, "go")
        longest, all_back, cpu = 0, go, 0.0
        pending = set(range(len(workers)))
        progress: list[dict[str, Any]] = [{} for _ in workers]  # each worker's last report

        def total(count: str) -> int:  # delivered, submitted, relaying (waiting), received
            return sum(report.get(count, 0) for report in progress)

        expected = len(ids) * (len(ids) - 1)
        last_print = 0.0
        while pending:
            if time.monotonic() - go > args.timeout:
                raise SystemExit(f"timed out: {total('delivered')} of {expected} delivered")
            for index in list(pending):
                event = _read_event(workers[index])
                if event["event"] == "progress":
                    progress[index] = event
                elif event["event"] == "done":
                    longest = max(longest, event["longest_relays"])
                    all_back = max(all_back, event["all_back"])
                    cpu += event["cpu"]
                    pending.discard(index)
            if time.monotonic() - last_print > 10:
                last_print = time.monotonic()
                print(
                    f"  {time.monotonic() - go:6.0f}s  {total('delivered'):>6} of {expected}"
                    f" delivered ({total('submitted')} submitted, {total('relaying')} waiting at"
                    f" relays, {total('received')} received)",
                    flush=True,
                )
        elapsed = all_back - go
        peak = sum(peak_rss_mib(w.pid) for w in workers)
        _tell(workers, "stop")
        for w in workers:
            w.wait(timeout=120)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()

    link_count = sum(len(p) for p in links.values()) // 2
    rate = expected / elapsed
    print(f"machine: {machine()}")
    print(
        f"{len(ids)} nodes in {len(workers)} processes, {link_count} links ({args.hubs} hubs), suite {suite}"
    )
    print(
        f"keys, roster and configs made in {prepared:.0f}s; nodes up in {started_up:.0f}s;"
        f" every node's route to every other known {routes_known:.1f}s after they began to"
        f" link (settled, checked three times, at {converged:.0f}s)\n"
    )
    print(f"{'figure':<48} {'cpn':>10} {'floor':>10} {'ratio':>7}")
    print(f"{'messages, every node to every other':<48} {expected:>10}")
    print(f"{'time until every end-to-end receipt is back (s)':<48} {elapsed:>10.0f}")
    name = f"{len(ids)} nodes, every one to every other"
    # The CPU the workers took a message, from "go" to their last receipt: the run is bound
    # by CPU, and its time also counts what else the shared machine ran meanwhile.
    cpu_ms = cpu / expected * 1000
    floor_rate = floor_ms = None
    if args.floor:
        floor = sum(floor_per_message(Network(scratch(), {"FRA": ["DEU"], "DEU": []})).values())
        floor_rate = (os.cpu_count() or 1) / floor
        floor_ms = floor * 1000
        print(
            f"{'delivered with end-to-end receipts (msg/s)':<48} {rate:>10.0f} {floor_rate:>10.0f} {rate / floor_rate:>7.0%}"
        )
        print(
            f"{'CPU a message, all workers (ms)':<48} {cpu_ms:>10.2f} {floor_ms:>10.2f} {floor_ms / cpu_ms:>7.0%}"
        )
    else:
        print(f"{'delivered with end-to-end receipts (msg/s)':<48} {rate:>10.0f}")
        print(f"{'CPU a message, all workers (ms)':<48} {cpu_ms:>10.2f}")
    print(f"{'peak memory, all workers (MiB)':<48} {peak:>10.0f}")
    print(f"{'longest path used (relays between the two ends)':<48} {longest:>10}")
    print("all delivered")
    figures = [
        Figure("network_sim", f"{name}: until every receipt is back", "s", elapsed),
        Figure("network_sim", f"{name}: delivered with receipts", "msg/s", rate, floor_rate),
        Figure("network_sim", f"{name}: CPU a message, all workers", "ms", cpu_ms, floor_ms, False),
        Figure("network_sim", f"{name}: peak memory, all workers", "MiB", peak),
        Figure("network_sim", f"{name}: every route known, from linking", "s", routes_known),
    ]
    record(args.results, figures, quick=args.quick)


def _tell(workers: list[subprocess.Popen[str]], word: str) -> None:
    for worker_process in workers:
        assert worker_process.stdin is not None
        worker_process.stdin.write(word + "\n")
        worker_process.stdin.flush()


def _read_event(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"a worker stopped (exit {process.wait()})")
    event: dict[str, Any] = json.loads(line)
    return event


if __name__ == "__main__":
    main()
