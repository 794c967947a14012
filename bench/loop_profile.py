"""Where each node's loop thread spends its time while two nodes run saturated.

    .venv/bin/python bench/loop_profile.py [--messages 20000] [--seconds 10]

FRA and DEU as in bench/throughput.py's phase 1 (32 officers posting flat out, FRA to
DEU). Once the posting has run a second, py-spy samples both nodes' threads for
`--seconds` (200 a second, native frames too), and each sample of a loop thread is
counted under the first of the kinds of work below that its stack shows: the store's
statements under the use case that wrote them, the signatures under sealing or checks.
Prints each kind's share of the loop thread's samples, and how busy the thread was
(samples taken while it ran, against the samples a busy thread would give).

py-spy attaches with ptrace: run it as root, or with kernel.yama.ptrace_scope = 0.
`--raw DIR` keeps py-spy's raw stacks (one file a node) for a closer look.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import machine, scratch
from bench.throughput import post_flat_out, wait_delivered
from tests.harness import Network

# (kind, frame marks): a sample goes to the first kind whose marks one of its frames has.
# A mark in brackets is a file (the frame is in it); any other, how the frame begins (its
# function: "seal (" is not "unseal (").
# The order decides where nested work counts: a signature under sealing is sealing, a
# store statement under taking a receipt is the store.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "sealing (HPKE, signature, the storage copy)",
        ("seal (network/core/envelope.py", "seal_to_self (network/core/envelope.py"),
    ),
    ("receipt checks (signature, canonical form)", ("verify_receipt (",)),
    (
        "envelope checks and opening, receipt signing",
        ("open_envelope (", "verify_signed (", "make_receipt ("),
    ),
    ("the store: rows, statements, COMMITs, reads", ("(network/node/store.py",)),
    (
        "request bodies: JSON and validation",
        ("parse_request (", "_fields_and_files (", "parse_json (", "parse_body ("),
    ),
    ("submissions: rounds, rows, audit entries (the rest)", ("(network/node/officer.py",)),
    ("envelopes and receipts taken (the rest)", ("(network/node/inbound.py",)),
    ("links: frames, outbox, sent marks", ("(network/node/links.py", "(websockets/")),
    ("HTTP: aiohttp and the API's handlers", ("(aiohttp/", "(network/api/")),
    ("sockets: the loop's poll, reads, writes", ("uv__io_poll", "uv__read", "uv__write")),
)
OTHER = "the rest (the loop, tasks, timers)"

# What ran, from a sample's innermost frame: (what, test on the stack's frames).
PRIMITIVES = "the primitives (native code under network/core/crypto.py)"
RAN: tuple[tuple[str, Callable[[list[str]], bool]], ...] = (
    (
        PRIMITIVES,
        lambda fs: ".py:" not in fs[-1] and any("(network/core/crypto.py" in f for f in fs),
    ),
    ("Python code (the project's and its libraries')", lambda fs: ".py:" in fs[-1]),
    ("SQLite", lambda fs: "(libsqlite3" in fs[-1]),
    ("libc: system calls, memory", lambda fs: "(libc.so" in fs[-1]),
)
NATIVE = "the interpreter, uvloop and other C extensions"
RATE = 200  # samples a second


def _shows(frames: list[str], marks: tuple[str, ...]) -> bool:
    return any((m in f) if m.startswith("(") else f.startswith(m) for f in frames for m in marks)


def split(
    raw: Path, thread: str = "MainThread"
) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """The samples of `thread` in py-spy's raw output, how many went to each kind of work,
    and how many to each kind of code that ran."""
    kinds: collections.Counter[str] = collections.Counter()
    ran: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if thread not in frames[0]:
            continue
        total += int(count)
        kind = next((name for name, marks in KINDS if _shows(frames, marks)), OTHER)
        kinds[kind] += int(count)
        ran[next((what for what, test in RAN if test(frames)), NATIVE)] += int(count)
    return total, kinds, ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="enough to outlast it")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("no py-spy: pip install -e '.[bench]'")
    root = scratch()
    raw_dir = args.raw or root
    raw_dir.mkdir(parents=True, exist_ok=True)
    network = Network(root, {"FRA": ["DEU"], "DEU": ["FRA"]})
    spies: list[subprocess.Popen[bytes]] = []

    def attach() -> None:  # once the posting has run a second
        for node in ("FRA", "DEU"):
            pid = network.nodes[node].process.pid  # type: ignore[union-attr]
            command = [spy, "record", "--native", "--threads", "--rate", str(RATE)]
            command += ["--duration", str(args.seconds), "--pid", str(pid), "--format", "raw"]
            command += ["--output", str(raw_dir / f"{node}.raw")]
            spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sys.stderr))

    try:
        network.start("FRA")
        network.start("DEU")
        timer = threading.Timer(1.0, attach)
        timer.start()
        started = time.monotonic()
        asyncio.run(post_flat_out(network, args.messages, 32))
        posted = time.monotonic() - started
        timer.join()
        for process in spies:
            if process.wait(timeout=args.seconds + 60) != 0:
                sys.exit(f"py-spy failed ({process.returncode}): is ptrace allowed?")
        wait_delivered(network.nodes["FRA"].store, args.messages, 0, 900)
        network.stop("DEU")
        network.stop("FRA")
    finally:
        network.close()

    print(machine())
    print(
        f"{args.messages} urgent requests FRA->DEU, 32 posting at once; each node's loop"
        f" thread sampled {args.seconds:.0f}s at {RATE}/s once the posting had run 1s"
    )
    if posted < 1 + args.seconds:
        print(f"the posting took {posted:.1f}s, less than the sampling: use more --messages")
    for node in ("FRA", "DEU"):
        total, kinds, ran = split(raw_dir / f"{node}.raw")
        busy = total / (RATE * args.seconds)
        print(f"\n{node}: {total} samples of its loop thread (running {busy:.0%} of the time)")
        for kind, count in kinds.most_common():
            print(f"  {count / total:6.1%}  {kind}")
        print("  what ran (the innermost frame):")
        for what, count in ran.most_common():
            print(f"  {count / total:6.1%}  {what}")
    if args.raw:
        print(f"\nraw stacks: {raw_dir}")


if __name__ == "__main__":
    main()
