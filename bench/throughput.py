"""Two nodes, one stream: delivered-with-verified-receipt rate and latency, beside the floor.

    .venv/bin/python bench/throughput.py [--messages 10000] [--concurrency 32]
        [--loads 0.25,0.5,0.75,0.9] [--paced-seconds 30] [--flash-every 10]
        [--runs 1] [--results FILE] [--quick]

Starts FRA and DEU as separate processes on 127.0.0.1 (real TLS, SQLite,
WebSockets). Phase 1 posts the messages to FRA's HTTP API as fast as
`--concurrency` officers can (urgent preservation requests of ~2 KiB) and
waits until FRA holds a verified end-to-end receipt for every one: the
saturated rate. The posting (bench/poster.py: requests built once, on kept-alive
connections) runs on the same cores as the nodes, and takes as little of them as it
can. Phase 2 offers an open-loop load at each share of that rate
in `--loads` (one `flash` every N, the others urgent) and takes the latency
percentiles at each: the points of docs/latency-vs-load.png. Latency is
composed (the header's `created`) to delivered (the sender's state change on
the verified receipt), both on this machine's clock. Beside it, at each load: the
rate the sender composed at while the load was offered (below the offered rate it
fell behind, and requests waited for a turn to seal, which the latency from
composition does not count), each priority's POST-to-202 p99 (which does), the
flash requests' on a connection opened for them (the node accepts it first), how many
urgent requests the sender refused with 503 (past the submissions it holds waiting:
offered more than it takes, it says so at once; flash is never refused), the CPU
a message took in each process, and how late each node's loop ran its timers at p99
(`cpn_loop_lag_seconds`, a bucket's bound): the wait each step of a message, flash
too, has for the turn under way.

`--runs N` runs phase 1 N times, each on a pair of its own with the raw floor measured
right after it, and prints each run's ratio and the medians (phase 2 follows the last,
its loads shares of the runs' median rate); and it offers phase 2's last load (the
aim's 90%) N times on that pair, one after another, and prints each run's flash p99 and
their median: on a shared machine the same code's rate moves by a tenth from one minute
to the next, a 30 s run's flash p99 by a quarter (a COMMIT that meets the disk's slow
moment holds a loop), and one run is one moment of it.

Two floors are measured in this same run. The raw floor is the primitives alone
(`raw_floor_per_message`: HPKE, four Ed25519 operations, a WebSocket frame each way, a
share of a 100-row group commit): how close the project is to what the machine can do.
The project-code floor is the project's own calls, in one process, back to back: the
same seal+sign, verify+open, receipt sign and receipt verify calls, and the
same three durable SQLite commits a message needs at least (queued at the
sender, received at the receiver, delivered at the sender), with
synchronous=FULL as the node uses. The latency floor is that work for one
message, back to back (no queue, no network).

Beside each load a probe process (`PROBE`) measures the machine's own delays: how late a
thread wakes from a 1 ms sleep, and how long a 4 KiB write and fsync take where the stores
are. A flash message passes three durable commits and a dozen wake-ups in two busy
processes: these are the part of its latency that is the machine's, not the project's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families

from bench.poster import Poster
from bench.results import Figure, add_arguments, machine, record, scratch, table
from network.core.envelope import (
    check_receipt_for,
    make_receipt,
    open_envelope,
    seal,
    verify_envelope,
    verify_receipt,
)
from network.core.records import MessageType, NodeId, Outcome, Priority
from network.node.config import load_config
from network.node.keys import load_node_keys
from network.node.runner import load_current_roster
from network.samples import sample_body
from tests.harness import Network

PAIR = {"FRA": ["DEU"], "DEU": ["FRA"]}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def floor_db() -> sqlite3.Connection:
    """A bare SQLite file set up as the node's store is (WAL, an fsync per commit)."""
    db = sqlite3.connect(scratch() / "floor.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE m (id TEXT PRIMARY KEY, state TEXT, envelope BLOB)")
    return db


def commit(db: sqlite3.Connection, statement: str, params: tuple[object, ...]) -> None:
    """One durable transaction of one statement: what a step of a message costs at least."""
    db.execute("BEGIN IMMEDIATE")
    db.execute(statement, params)
    db.execute("COMMIT")


def floor_per_message(network: Network, rounds: int = 300) -> dict[str, float]:
    """Median seconds of each primitive step a delivered message needs, in one process."""
    fra = load_node_keys(network.keys / "FRA", NodeId("FRA"))
    deu = load_node_keys(network.keys / "DEU", NodeId("DEU"))
    roster = load_current_roster(load_config(network.nodes["FRA"].config))
    body = sample_body("preservation")
    db = floor_db()
    steps: dict[str, list[float]] = {
        k: [] for k in ("seal", "open", "receipt", "verify_receipt", "commits")
    }
    for index in range(rounds):
        now = int(time.time() * 1000)
        t0 = time.perf_counter()
        envelope = seal(
            sender=NodeId("FRA"),
            recipient=NodeId("DEU"),
            message_type=MessageType.PRESERVATION,
            body=body,
            priority=Priority.URGENT,
            now=now,
            random_bytes=os.urandom(10),
            signing_key=fra.signing,
            recipient_key=roster.active_card("DEU").hpke_key,
        )
        t1 = time.perf_counter()
        opened = open_envelope(
            verify_envelope(envelope.raw, roster=roster, now=now),
            me=NodeId("DEU"),
            hpke_key=deu.hpke,
            roster=roster,
        )
        t2 = time.perf_counter()
        receipt = make_receipt(
            message_id=opened.header.id,
            message_sender=opened.header.sender,
            envelope_raw=envelope.raw,
            me=NodeId("DEU"),
            signing_key=deu.signing,
            now=now,
            random_bytes=os.urandom(10),
            outcome=Outcome.ACCEPTED,
        )
        t3 = time.perf_counter()
        check_receipt_for(verify_receipt(receipt.raw, roster=roster, now=now), envelope)
        t4 = time.perf_counter()
        for statement, params in (
            ("INSERT INTO m VALUES (?, 'queued', ?)", (f"o{index}", envelope.raw)),
            ("INSERT INTO m VALUES (?, 'received', ?)", (f"i{index}", envelope.raw)),
            ("UPDATE m SET state = 'delivered' WHERE id = ?", (f"o{index}",)),
        ):
            commit(db, statement, params)
        t5 = time.perf_counter()
        for key, spent in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            steps[key].append(spent)
    db.close()
    return {key: statistics.median(values) for key, values in steps.items()}


GROUP = 100  # rows per durable transaction in the raw floor's group commit


def raw_primitives() -> tuple[Any, Any, Any, Any, Any]:
    """The raw floor's keys, no project code: an HPKE ML-KEM-768+X25519 suite and key pair
    (cryptography), an Ed25519 key pair (libsodium, the fastest Ed25519 on this machine and
    the one the nodes use): (suite, private, public, Ed25519 public, Ed25519 secret)."""
    from cryptography.hazmat.primitives import hpke
    from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
    from nacl.bindings import crypto_sign_keypair

    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    private = hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    )
    signing_public, signing_secret = crypto_sign_keypair()
    return suite, private, private.public_key(), signing_public, signing_secret


def frame_round_trip(payload: bytes) -> None:
    """`payload` framed as a masked WebSocket binary frame and parsed back (websockets' own
    framing, in memory): one frame's share of the floor."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    wire = Frame(Opcode.BINARY, payload).serialize(mask=True, extensions=[])
    reader = StreamReader()
    reader.feed_data(wire)
    parser = Frame.parse(reader.read_exact, mask=True, extensions=[])
    with contextlib.suppress(StopIteration):
        while True:
            next(parser)


def raw_message(
    primitives: tuple[Any, Any, Any, Any, Any], plaintext: bytes, envelope: bytes
) -> tuple[float, float, float]:
    """Seconds one message's raw work takes, step by step, no project code: HPKE seal and
    open of `plaintext`; sign and verify `envelope`, then a receipt; a WebSocket frame of
    `envelope` out and one of a receipt back."""
    from nacl.bindings import crypto_sign, crypto_sign_open

    suite, private, public, signing_public, signing_secret = primitives
    t0 = time.perf_counter()
    sealed = suite.encrypt(plaintext, public, info=b"cpn")
    suite.decrypt(sealed, private, info=b"cpn")
    t1 = time.perf_counter()
    for data in (envelope, b"receipt"):
        signature = crypto_sign(data, signing_secret)[:64]
        crypto_sign_open(signature + data, signing_public)
    t2 = time.perf_counter()
    for payload in (envelope, b"r" * 600):  # the envelope out, the receipt back
        frame_round_trip(payload)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def raw_floor_per_message(rounds: int = 300) -> dict[str, float]:
    """Median seconds per message of the raw primitives alone, no project code: HPKE
    ML-KEM-768+X25519 seal and open of a plaintext the size of ours, 4 Ed25519 operations
    (sign and verify the envelope, sign and verify the receipt), a WebSocket frame each way
    (websockets' own framing, in memory), and a 1/GROUP share of a durable SQLite commit of
    GROUP rows (WAL, synchronous=FULL) for each of the 3 writes a message needs."""
    primitives = raw_primitives()
    plaintext = os.urandom(2_400)  # a ~2 KiB body with its signature and type, as sealed
    envelope = os.urandom(3_700)  # what the envelope frame carries
    db = floor_db()
    steps: dict[str, list[float]] = {k: [] for k in ("hpke", "ed25519", "frames", "commits")}
    for index in range(rounds):
        hpke, ed25519, frames = raw_message(primitives, plaintext, envelope)
        t3 = time.perf_counter()
        if index % GROUP == 0:  # one durable commit of GROUP messages' 3 writes each
            db.execute("BEGIN IMMEDIATE")
            for row in range(GROUP):
                db.execute("INSERT INTO m VALUES (?, 'queued', ?)", (f"r{index}-{row}", envelope))
                db.execute("INSERT INTO m VALUES (?, 'received', ?)", (f"s{index}-{row}", envelope))
                db.execute("UPDATE m SET state = 'delivered' WHERE id = ?", (f"r{index}-{row}",))
            db.execute("COMMIT")
            steps["commits"].append((time.perf_counter() - t3) / GROUP)
        steps["hpke"].append(hpke)
        steps["ed25519"].append(ed25519)
        steps["frames"].append(frames)
    db.close()
    return {key: statistics.median(values) for key, values in steps.items()}


# The machine's own delays at each load, measured beside the nodes by a process that does
# no project work: how late a thread wakes from a 1 ms sleep (the scheduler, with every
# core busy), and how long a 4 KiB write and fsync take in the stores' file system (the
# disk, with both stores committing). A flash message passes three durable commits and
# a dozen wake-ups on its way: these bound what its latency can be at that load.
PROBE = """
import json, os, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
wakes, syncs = [], []
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
block = os.urandom(4096)
end = time.monotonic() + seconds
while time.monotonic() < end:
    t = time.perf_counter()
    time.sleep(0.001)
    wakes.append((time.perf_counter() - t - 0.001) * 1000)
    if len(wakes) % 10 == 0:
        t = time.perf_counter()
        os.write(fd, block)
        os.fsync(fd)
        syncs.append((time.perf_counter() - t) * 1000)
os.close(fd)
print(json.dumps({"wake": wakes, "fsync": syncs}))
"""


def start_probe(root: Path, seconds: float) -> subprocess.Popen[str]:
    """The probe process (`PROBE`) for `seconds`, its file beside the stores."""
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, str(root / "probe.bin"), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def probe_results(probe: subprocess.Popen[str]) -> dict[str, list[float]]:
    out, _ = probe.communicate(timeout=60)
    result: dict[str, list[float]] = json.loads(out)
    return result


def request_body(priority: str, to: str = "DEU") -> bytes:
    """A posted request's JSON, built once for each priority and addressee."""
    return json.dumps(
        {"to": to, "type": "preservation", "priority": priority, "body": BODY}
    ).encode()


async def post(poster: Poster, body: bytes) -> None:
    status, answer = await poster.post("/api/messages", body)
    if status != 202:
        raise RuntimeError(f"POST answered {status}: {answer.decode(errors='replace')}")


def poster_for(network: Network) -> Poster:
    """FRA's officer, posting as the nodes' load (`bench/poster.py`: cheap on the CPU)."""
    return Poster(network.nodes["FRA"].api, network.nodes["FRA"].tokens["officer"])


async def post_flat_out(network: Network, count: int, concurrency: int, to: str = "DEU") -> None:
    """Closed loop: `concurrency` officers at FRA posting urgent requests back to back."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    body = request_body("urgent", to)

    async def worker(poster: Poster) -> None:
        while not queue.empty():
            queue.get_nowait()
            await post(poster, body)

    async with poster_for(network) as poster:
        await asyncio.gather(*(worker(poster) for _ in range(concurrency)))


async def post_paced(
    network: Network, rate: float, seconds: float, flash_every: int
) -> tuple[dict[str, list[float]], int, list[float]]:
    """Open loop: urgent requests at a steady `rate`, one flash every `flash_every`; per
    priority, the milliseconds from each POST to its 202 (the officer's wait, which
    includes a wait for a turn to seal that the latency from composition does not), how
    many urgent ones were refused with 503 (the sender past what it holds waiting), and
    the flash ones' waits among them that went on a connection opened for them (no
    connection was idle: the node had it to accept first)."""
    count = int(rate * seconds)
    bodies = {priority: request_body(priority) for priority in ("flash", "urgent")}
    answered: dict[str, list[float]] = {"flash": [], "urgent": []}
    refused = 0
    flash_on_new: list[float] = []

    closed = {"flash": 0, "urgent": 0}

    async def timed(poster: Poster, priority: str) -> None:
        nonlocal refused
        started = time.perf_counter()
        try:
            status, answer, new = await poster.post_noting_new("/api/messages", bodies[priority])
        except ConnectionError:
            # The node holds at most 256 connections: past that it closes an idle one (the
            # poster may be writing to it) or, every one busy, the new one. A refusal like a
            # 503, said below rather than ending the run.
            closed[priority] += 1
            return
        if status == 503 and priority == "urgent":
            refused += 1
            return
        if status != 202:
            raise RuntimeError(f"POST answered {status}: {answer.decode(errors='replace')}")
        waited = (time.perf_counter() - started) * 1000
        answered[priority].append(waited)
        if new and priority == "flash":
            flash_on_new.append(waited)

    async with poster_for(network) as poster:
        tasks = []
        start = time.monotonic()
        for index in range(count):
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            priority = "flash" if index % flash_every == 0 else "urgent"
            tasks.append(asyncio.create_task(timed(poster, priority)))
        await asyncio.gather(*tasks)
    if any(closed.values()):
        print(
            f"at {rate:,.0f} msg/s the node closed the connection of {sum(closed.values())}"
            f" requests ({closed['flash']} flash) before answering: every one it holds"
            " busy, or an idle one closed to make room"
        )
    return answered, refused, flash_on_new


BODY = sample_body("preservation")


def delivered(store: Path, since: int = 0) -> list[tuple[str, int, int]]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return db.execute(
            "SELECT priority, created, updated FROM messages"
            " WHERE box = 'out' AND state = 'delivered' AND created >= ?",
            (since,),
        ).fetchall()


def wait_delivered(
    store: Path, count: int, since: int, timeout: float
) -> list[tuple[str, int, int]]:
    deadline = time.monotonic() + timeout
    rows: list[tuple[str, int, int]] = []
    while time.monotonic() < deadline:
        rows = delivered(store, since)
        if len(rows) >= count:
            return rows
        time.sleep(0.5)
    raise SystemExit(f"only {len(rows)} of {count} delivered in {timeout}s")


def loop_late(network: Network, node: str) -> dict[float, float]:
    """The node's `cpn_loop_lag_seconds` so far: timers counted by bucket bound (s)."""
    return {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(network.metrics(node))
        if family.name == "cpn_loop_lag_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    }


def late_p99(before: dict[float, float], after: dict[float, float]) -> str:
    """The bound under which 99% of the timers between two readings ran (a bucket's)."""
    counts = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(math.inf, 0.0)
    bound = next((b for b, n in counts.items() if total and n >= 0.99 * total), None)
    return "-" if bound is None else "over 1 s" if bound == math.inf else f"{bound * 1e3:g} ms"


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User and system CPU time a process has used so far (/proc/PID/stat), or one of its
    threads (/proc/PID/task/TID/stat; a process's first thread, its loop's, is TID PID)."""
    stat = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> int:
    """How many times a process's threads have given up their core so far, waiting
    (voluntary: a sleep, a lock, the disk) or pre-empted (/proc/PID/task/*/status)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
    return total


# A message's way, in the audit entries both stores hold (times are when each entry was
# written, on this machine's clock): (stage, from, to), each (node, action); "created" is
# the envelope's own time.
STAGES = (
    ("sender: API, seal and store", ("FRA", "created"), ("FRA", "queued")),
    ("outbox, link and receiver's checks", ("FRA", "queued"), ("DEU", "received")),
    (
        "receiver's commit, receipt back, sender's checks",
        ("DEU", "received"),
        ("FRA", "receipt_received"),
    ),
)


def first_audited(db: sqlite3.Connection, action: str, since: int) -> dict[str, int]:
    """When each message since `since` (ms) was first audited with `action`; "created":
    when its envelope was made (its outbox row's own time)."""
    if action == "created":
        query = "SELECT id, created FROM messages WHERE box = 'out' AND created >= ?"
        return dict(db.execute(query, (since,)))
    query = (
        "SELECT message_id, MIN(time) FROM audit WHERE action = ? AND time >= ? GROUP BY message_id"
    )
    return dict(db.execute(query, (action, since)))


def stage_times(stores: dict[str, Path], since: int) -> dict[str, dict[str, list[float]]]:
    """Per priority, per stage of `STAGES`, the milliseconds each message spent there."""
    marks: dict[tuple[str, str], dict[str, int]] = {}
    priorities: dict[str, str] = {}
    for node, store in stores.items():
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
            for action in {a for _, *ends in STAGES for n, a in ends if n == node}:
                marks[(node, action)] = first_audited(db, action, since)
            if node == "FRA":
                query = "SELECT id, priority FROM messages WHERE box = 'out' AND created >= ?"
                priorities = dict(db.execute(query, (since,)))
    found: dict[str, dict[str, list[float]]] = {}
    for message_id, priority in priorities.items():
        spans = []
        for name, start, end in STAGES:
            begun, ended = marks[start].get(message_id), marks[end].get(message_id)
            if begun is None or ended is None:
                break
            spans.append((name, float(ended - begun)))
        else:
            for name, spent in spans:
                found.setdefault(priority, {}).setdefault(name, []).append(spent)
    return found


def latencies(rows: list[tuple[str, int, int]], priority: str) -> list[float]:
    return [float(updated - created) for p, created, updated in rows if p == priority]


def offered_once(
    network: Network, rate: float, seconds: float, flash_every: int, timeout: float
) -> tuple[int, list[tuple[str, int, int]], int]:
    """The paced load (`post_paced`) at `rate` for `seconds`, on a pair whose load before
    has drained, until FRA holds a receipt for every message it accepted: when it began
    (ms), the rows FRA delivered, and how many urgent requests it refused."""
    since = int(time.time() * 1000)
    answered, refused, _ = asyncio.run(post_paced(network, rate, seconds, flash_every))
    count = sum(map(len, answered.values()))
    return since, wait_delivered(network.nodes["FRA"].store, count, since, timeout), refused


def flash_p99_again(network: Network, rate: float, args: argparse.Namespace) -> float:
    """The paced load at `rate` once more (as in phase 2, without its probe and counters),
    once the one before has drained: its flash messages' latency at p99 (ms)."""
    _, rows, _ = offered_once(network, rate, args.paced_seconds, args.flash_every, args.timeout)
    values = latencies(rows, "flash")
    return percentile(values, 0.99) if values else math.nan  # a short run may offer none


@dataclass
class Saturated:
    """Phase 1 on a running FRA and DEU: the delivered rate, each message's latency, and
    what each process spent (CPU seconds, context switches, how late its timers ran)."""

    latency: list[float]  # ms, composed to delivered, one a message
    posted: float  # s, the posting alone
    spanned: float  # s, first composed to last delivered
    cpu: dict[str, float]  # node: all its threads
    loop_cpu: dict[str, float]  # node: its loop's thread
    switches: dict[str, float]
    late: dict[str, str]
    client_cpu: float  # this process, posting

    @property
    def rate(self) -> float:
        """msg/s delivered, first composed to last delivered."""
        return len(self.latency) / self.spanned


def saturate(network: Network, messages: int, concurrency: int, timeout: float) -> Saturated:
    """Phase 1: `concurrency` officers post `messages` to FRA as fast as they can, until FRA
    holds a verified receipt for every one."""
    store = network.nodes["FRA"].store
    pids = {node: network.nodes[node].process.pid for node in ("FRA", "DEU")}  # type: ignore[union-attr]
    cpu_before = {node: cpu_seconds(pid) for node, pid in pids.items()}
    loop_before = {node: cpu_seconds(pid, pid) for node, pid in pids.items()}
    switches_before = {node: context_switches(pid) for node, pid in pids.items()}
    late_before = {node: loop_late(network, node) for node in pids}
    client_before = time.process_time()
    started = time.monotonic()
    asyncio.run(post_flat_out(network, messages, concurrency))
    posted = time.monotonic() - started
    client_cpu = time.process_time() - client_before
    rows = wait_delivered(store, messages, 0, timeout)
    first = min(created for _, created, _ in rows)
    last = max(updated for _, _, updated in rows)
    return Saturated(
        latency=[float(updated - created) for _, created, updated in rows],
        posted=posted,
        spanned=(last - first) / 1000,
        cpu={node: cpu_seconds(pid) - cpu_before[node] for node, pid in pids.items()},
        loop_cpu={node: cpu_seconds(pid, pid) - loop_before[node] for node, pid in pids.items()},
        switches={
            node: context_switches(pid) - switches_before[node] for node, pid in pids.items()
        },
        late={node: late_p99(late_before[node], loop_late(network, node)) for node in pids},
        client_cpu=client_cpu,
    )


def saturated_alone(args: argparse.Namespace) -> tuple[float, float]:
    """Phase 1 on a pair of its own, then the raw floor at once: (rate, raw floor's rate).
    The runs before the last of `--runs`: the machine's pace drifts within minutes, so
    each rate is put beside a floor measured right after it."""
    network = Network(scratch(), PAIR)
    try:
        network.start("FRA")
        network.start("DEU")
        rate = saturate(network, args.messages, args.concurrency, args.timeout).rate
        network.stop("DEU")
        network.stop("FRA")
    finally:
        network.close()
    return rate, 1 / sum(raw_floor_per_message(max(args.floor_rounds, GROUP)).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--loads", default="0.25,0.5,0.75,0.9", help="shares of phase 1's rate, comma-separated"
    )
    parser.add_argument("--paced-seconds", type=float, default=30, help="at each load")
    parser.add_argument("--flash-every", type=int, default=10)
    parser.add_argument(
        "--paced-base",
        type=float,
        help="msg/s the loads are shares of (default: phase 1's rate), to compare code at"
        " the same offered rates",
    )
    parser.add_argument("--floor-rounds", type=int, default=300)
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="phase 1 this many times, each on a pair of its own beside its own raw floor;"
        " the median rate and floor printed too (phase 2 after the last, at shares of the"
        " median rate, its last load this many times: the median flash p99 printed too)",
    )
    parser.add_argument("--timeout", type=float, default=900)
    add_arguments(parser)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1")
    if args.quick:
        args.messages, args.paced_seconds, args.floor_rounds = 300, 4, 30
        args.loads = "0.5,0.9"
    loads = [float(share) for share in args.loads.split(",")]

    earlier = [saturated_alone(args) for _ in range(args.runs - 1)]
    root = scratch()
    network = Network(root, PAIR)
    store = network.nodes["FRA"].store
    paced: list[tuple[float, float, list[tuple[str, int, int]]]] = []  # share, rate, rows
    answered: dict[float, dict[str, list[float]]] = {}  # share: POST to 202, per priority
    refused: dict[float, int] = {}  # share: urgent requests refused (503)
    flash_on_new: dict[float, list[float]] = {}  # share: flash POST to 202, new connections
    paced_cpu: dict[float, dict[str, float]] = {}  # share: CPU seconds a message, per process
    paced_switches: dict[float, dict[str, float]] = {}  # share: context switches a message
    probes: dict[float, dict[str, list[float]]] = {}  # share: the machine's delays meanwhile
    paced_late: dict[float, dict[str, str]] = {}  # share: each loop's timers late, p99 at most
    try:
        network.start("FRA")
        network.start("DEU")
        pids = {node: network.nodes[node].process.pid for node in ("FRA", "DEU")}  # type: ignore[union-attr]
        phase1 = saturate(network, args.messages, args.concurrency, args.timeout)
        rate = phase1.rate

        # Loads are shares of phase 1's rate (the median of `--runs`: one fast minute's rate
        # would make "90%" a load past what the sender takes in the next), or of
        # --paced-base: code compared at the same offered rates, whatever each saturates at.
        saturated = statistics.median([*(r for r, _ in earlier), rate])
        base = args.paced_base or saturated
        for share in loads:  # each load once the one before has drained
            since = int(time.time() * 1000)
            cpu_at = {node: cpu_seconds(pid) for node, pid in pids.items()}
            switches_at = {node: context_switches(pid) for node, pid in pids.items()}
            late_at = {node: loop_late(network, node) for node in pids}
            client_at = time.process_time()
            probe = start_probe(root, args.paced_seconds)
            answered[share], refused[share], flash_on_new[share] = asyncio.run(
                post_paced(network, base * share, args.paced_seconds, args.flash_every)
            )
            posting_cpu = time.process_time() - client_at  # as in phase 1: the posting alone
            count = sum(map(len, answered[share].values()))
            probes[share] = probe_results(probe)
            paced.append((share, base * share, wait_delivered(store, count, since, args.timeout)))
            paced_cpu[share] = {
                **{node: (cpu_seconds(pid) - cpu_at[node]) / count for node, pid in pids.items()},
                "client": posting_cpu / count,
            }
            paced_switches[share] = {
                node: (context_switches(pid) - switches_at[node]) / count
                for node, pid in pids.items()
            }
            paced_late[share] = {
                node: late_p99(late_at[node], loop_late(network, node)) for node in pids
            }
        stages = stage_times({n: network.nodes[n].store for n in ("FRA", "DEU")}, since)
        last_share, last_rate, _ = paced[-1]
        flash_again = [flash_p99_again(network, last_rate, args) for _ in range(args.runs - 1)]
        network.stop("DEU")
        network.stop("FRA")
    finally:
        network.close()
    floor = floor_per_message(network, args.floor_rounds)
    floor_seconds = sum(floor.values())
    floor_rate, floor_ms = 1 / floor_seconds, floor_seconds * 1000
    raw = raw_floor_per_message(max(args.floor_rounds, GROUP))
    raw_rate = 1 / sum(raw.values())
    runs = [*earlier, (rate, raw_rate)]

    figures = [
        Figure(
            "throughput",
            "two nodes: delivered with verified receipt (raw primitives' floor)",
            "msg/s",
            rate,
            raw_rate,
        ),
        Figure(
            "throughput",
            "two nodes: delivered with verified receipt (project code's floor)",
            "msg/s",
            rate,
            floor_rate,
        ),
        Figure(
            "throughput", "phase 1 latency p50, saturated", "ms", statistics.median(phase1.latency)
        ),
        Figure(
            "throughput", "phase 1 latency p99, saturated", "ms", percentile(phase1.latency, 0.99)
        ),
    ]
    if len(runs) > 1:  # the aim's figure as a median: one run is one moment of the machine
        figures.insert(
            1,
            Figure(
                "throughput",
                f"two nodes, median of {len(runs)} runs (each beside its own raw floor)",
                "msg/s",
                saturated,
                statistics.median(f for _, f in runs),
            ),
        )
    points = []
    for share, offered, paced_rows in paced:
        point: dict[str, float] = {"share": share, "offered": offered}
        for priority in ("flash", "urgent"):
            values = latencies(paced_rows, priority)
            if not values:  # a short run may offer no flash at all
                continue
            point[f"{priority}_p50"] = statistics.median(values)
            point[f"{priority}_p99"] = percentile(values, 0.99)
            for name in ("p50", "p99"):
                figures.append(
                    Figure(
                        "throughput",
                        f"{priority} latency {name} at {share:.0%} load ({offered:.0f} msg/s)",
                        "ms",
                        point[f"{priority}_{name}"],
                        floor_ms,
                        higher_is_better=False,
                    )
                )
        points.append(point)
    # The aim's flash figure as a median too: a 30 s run's p99 is a few stalls of a loop.
    flash_runs = [
        p for p in (points[-1].get("flash_p99", math.nan), *flash_again) if not math.isnan(p)
    ]
    if len(flash_runs) > 1:
        figures.append(
            Figure(
                "throughput",
                f"flash latency p99 at {last_share:.0%} load, median of {len(flash_runs)} runs"
                f" ({last_rate:.0f} msg/s)",
                "ms",
                statistics.median(flash_runs),
                floor_ms,
                higher_is_better=False,
            )
        )
    for share, offered, paced_rows in paced:
        # Composed while the load was offered: below the offered rate, the sender fell
        # behind, and requests waited for a turn to seal (in the POST's wait, not in the
        # latency from composition).
        posting_ends = min(created for _, created, _ in paced_rows) + args.paced_seconds * 1000
        composed = sum(1 for _, created, _ in paced_rows if created <= posting_ends)
        figures.append(
            Figure(
                "throughput",
                f"sender composed while posting at {share:.0%} load (offered {offered:.0f} msg/s)",
                "msg/s",
                composed / args.paced_seconds,
                offered,
            )
        )
        figures.append(
            Figure(
                "throughput",
                f"urgent refused (503) at {share:.0%} load ({offered:.0f} msg/s)",
                "msg/s",
                refused[share] / args.paced_seconds,
                higher_is_better=False,
            )
        )
        waits_by_kind = {
            **{f"{priority} POST to 202": waits for priority, waits in answered[share].items()},
            "flash POST to 202 on a new connection": flash_on_new[share],
        }
        for kind, waits in waits_by_kind.items():
            if waits:
                figures.append(
                    Figure(
                        "throughput",
                        f"{kind}, p99, at {share:.0%} load ({offered:.0f} msg/s)",
                        "ms",
                        percentile(waits, 0.99),
                        higher_is_better=False,
                    )
                )
    for share, offered, _ in paced:
        for what, label in (("wake", "a wake-up's delay"), ("fsync", "a 4 KiB write and fsync")):
            values = probes[share][what]
            for name, fraction in (("p50", 0.5), ("p99", 0.99)):
                figures.append(
                    Figure(
                        "throughput",
                        f"machine: {label}, {name}, at {share:.0%} load ({offered:.0f} msg/s)",
                        "ms",
                        percentile(values, fraction),
                        higher_is_better=False,
                    )
                )

    print(f"machine: {machine()}")
    print(
        f"phase 1: {args.messages} urgent preservation requests FRA->DEU through the API, {args.concurrency} posting at once"
    )
    print(
        f"  posting took {phase1.posted:.1f}s; first composed to last delivered"
        f" {phase1.spanned:.1f}s"
    )
    if len(runs) > 1:
        print(f"  {len(runs)} runs, each on a pair of its own, the last one's figures below:")
        for index, (run_rate, floor_of) in enumerate(runs, 1):
            print(
                f"    run {index}: {run_rate:,.0f} msg/s, {run_rate / floor_of:.0%} of {floor_of:,.0f}"
            )
    phase1_named = "phase 1 rate" if len(runs) == 1 else f"the runs' median, {saturated:,.0f} msg/s"
    print(
        f"phase 2: at {', '.join(f'{s:.0%}' for s in loads)} of"
        f" {f'{base:.0f} msg/s (--paced-base)' if args.paced_base else phase1_named},"
        f" {args.paced_seconds:.0f}s each, one flash in {args.flash_every}"
    )
    if len(flash_runs) > 1:
        print(
            f"  the {last_share:.0%} load {len(flash_runs)} times, one after another: flash p99"
            f" {', '.join(f'{p:.0f}' for p in flash_runs)} ms"
        )
    print(f"latency floor: one message's work back to back, {floor_ms:.1f} ms\n")
    print(table(figures))
    print(
        f"\nCPU per message in phase 1 (user and system, all threads), {len(phase1.cpu)} processes:"
    )
    for node, seconds in phase1.cpu.items():
        # A node's loop runs on one thread: busy near 100%, it is what bounds the rate.
        loop_seconds = phase1.loop_cpu[node]
        print(
            f"  {node:<16} {seconds / args.messages * 1e6:>8.0f} us  (its loop's thread"
            f" {loop_seconds / args.messages * 1e6:.0f} us: busy"
            f" {loop_seconds / phase1.spanned:.0%} of first composed to last"
            f" delivered; {phase1.switches[node] / args.messages:.1f} context switches a"
            f" message; its timers late {phase1.late[node]} at p99)"
        )
    print(
        f"  {'client':<16} {phase1.client_cpu / args.messages * 1e6:>8.0f} us  (this script posting)"
    )
    print(
        "CPU per message at each load in phase 2 (the same: the nodes' from posting to the"
        " last delivered, the client's while posting):"
    )
    for share, spent in paced_cpu.items():
        each = ", ".join(f"{name} {seconds * 1e6:.0f} us" for name, seconds in spent.items())
        switched = ", ".join(f"{n} {c:.1f}" for n, c in paced_switches[share].items())
        lated = ", ".join(f"{n} {p99}" for n, p99 in paced_late[share].items())
        print(
            f"  {share:>4.0%}  {each}; context switches a message: {switched};"
            f" the loops' timers late at p99: {lated}"
        )
    print(
        f"\nwhere the time goes at {loads[-1]:.0%} load (ms, p50 / p99; from the audit entries' times):"
    )
    for priority in ("flash", "urgent"):
        for name, values in stages.get(priority, {}).items():
            print(
                f"  {priority:<7} {name:<52} {statistics.median(values):>6.0f} / {percentile(values, 0.99):>5.0f}"
            )
    print("\nfloor per message (median, one process, back to back):")
    for key, value in floor.items():
        print(f"  {key:<16} {value * 1e6:>8.0f} us")
    print(f"  {'total':<16} {floor_seconds * 1e6:>8.0f} us")
    print("\nraw floor per message (median: the primitives alone, no project code):")
    for key, value in raw.items():
        print(f"  {key:<16} {value * 1e6:>8.0f} us")
    print(f"  {'total':<16} {sum(raw.values()) * 1e6:>8.0f} us")
    record(
        args.results,
        figures,
        quick=args.quick,
        series={
            "name": "latency_vs_load",
            "saturated": saturated,
            "messages": args.messages,
            "paced_seconds": args.paced_seconds,
            "points": points,
        },
    )


if __name__ == "__main__":
    main()
