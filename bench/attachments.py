"""A file sent between two nodes, end to end, beside the floor of the raw primitives.

    .venv/bin/python bench/attachments.py [--mib 25] [--runs 3] [--results FILE] [--quick]

Starts FRA and DEU as separate processes on 127.0.0.1 (real TLS, SQLite, WebSockets,
ML-KEM-768+X25519) and, `--runs` times, has FRA's officer post a request with one PDF
of `--mib` MiB (multipart, as `cpn send --attach` does) and DEU's officer download it
once every part is there. It times: the upload (until the 202: every part sealed and
durable), the delivery (until FRA holds DEU's signed receipt for every part), and the
download (the parts opened, joined and checked against the signed SHA-256).

The floor is the raw primitives for the same parts, in this run, no project code: per
part, HPKE seal and open of a part's plaintext, 4 Ed25519 operations over its envelope
(sign and verify it, sign and verify its receipt), a WebSocket frame each way, and the 3
durable SQLite writes a message needs, in commits of 64 parts (as the node commits
them). Medians of the runs; the ratio is the share of the floor reached.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, machine, record, table
from bench.throughput import floor_db, raw_message, raw_primitives
from network.cli.client import Client
from network.core.attachments import PART_BYTES, AttachmentFile, parts_for
from network.core.crypto import HpkeSuite
from network.samples import sample_body
from tests.harness import Network, rows, wait_for

COMMIT = 64  # parts a node commits in one transaction


def raw_floor(parts: int) -> dict[str, float]:
    """Seconds for `parts` parts of the raw work alone (see the module's docstring)."""
    primitives = raw_primitives()
    plaintext = os.urandom(PART_BYTES * 4 // 3 + 600)  # the part in base64url, its JSON
    envelope = os.urandom(len(plaintext) * 4 // 3 + 1_500)  # sealed, in base64url
    db = floor_db()
    took = {"hpke": 0.0, "ed25519": 0.0, "frames": 0.0, "commits": 0.0}
    for index in range(parts):
        hpke, ed25519, frames = raw_message(primitives, plaintext, envelope)
        t3 = time.perf_counter()
        if index % COMMIT == 0:
            for state in ("queued", "received"):
                db.execute("BEGIN IMMEDIATE")
                for row in range(min(COMMIT, parts - index)):
                    db.execute(
                        "INSERT INTO m VALUES (?, ?, ?)",
                        (f"{state}{index}-{row}", state, envelope),
                    )
                db.execute("COMMIT")
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE m SET state = 'delivered' WHERE state = 'queued'")
            db.execute("COMMIT")
        took["hpke"] += hpke
        took["ed25519"] += ed25519
        took["frames"] += frames
        took["commits"] += time.perf_counter() - t3
    db.close()
    return took


def _all_signed_for(store: Path, message_id: str, parts: int) -> bool:
    """Whether the recipient has signed for every part of `message_id`, as the sender holds."""
    query = (
        "SELECT COUNT(*) FROM messages WHERE in_reply_to = ? AND attachment IS NOT NULL"
        " AND state = 'delivered'"
    )
    return int(rows(store, query, (message_id,))[0][0]) == parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=25)
    parser.add_argument("--runs", type=int, default=3)
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.mib, args.runs = 2, 1
    size = args.mib * 1024 * 1024
    parts = parts_for(size)
    timings: dict[str, list[float]] = {"upload": [], "delivery": [], "download": []}
    with tempfile.TemporaryDirectory(prefix="cpn-bench-attachments-") as tmp:
        network = Network(Path(tmp), {"FRA": ["DEU"], "DEU": []}, suite=HpkeSuite.MLKEM768_X25519)
        try:
            network.start("DEU")
            network.start("FRA")
            fra = Client(
                network.nodes["FRA"].api, network.nodes["FRA"].tokens["officer"], timeout=600
            )
            deu = Client(
                network.nodes["DEU"].api, network.nodes["DEU"].tokens["officer"], timeout=600
            )
            for run in range(args.runs):
                data = b"%PDF-1.7\n" + os.urandom(size - 9)
                request = {
                    "to": "DEU",
                    "type": "preservation",
                    "priority": "urgent",
                    "body": sample_body("preservation", case_ref=f"BENCH-{run}"),
                }
                started = time.perf_counter()
                sent = fra.send(request, [AttachmentFile("image.pdf", "application/pdf", data)])
                uploaded = time.perf_counter()
                wait_for(
                    functools.partial(
                        _all_signed_for, network.nodes["FRA"].store, sent["id"], parts
                    ),
                    timeout=900,
                    what="every part signed for",
                    poll=0.05,
                )
                delivered = time.perf_counter()
                name, got = deu.attachment(sent["id"], 0)
                downloaded = time.perf_counter()
                assert got == data
                assert name == "image.pdf"
                timings["upload"].append(uploaded - started)
                timings["delivery"].append(delivered - started)
                timings["download"].append(downloaded - delivered)
        finally:
            network.close()
    floor = raw_floor(parts)
    whole = sum(floor.values())
    median = {k: statistics.median(v) for k, v in timings.items()}
    figures = [
        Figure(
            "attachments",
            f"{args.mib} MiB file, posted to delivered with every part's receipt ({parts} parts)",
            "s",
            median["delivery"],
            whole,
            higher_is_better=False,
        ),
        Figure(
            "attachments",
            f"{args.mib} MiB file, upload until 202 (sealed, durable)",
            "s",
            median["upload"],
        ),
        Figure(
            "attachments",
            f"{args.mib} MiB file, download (parts opened, joined, SHA-256 checked)",
            "s",
            median["download"],
            floor["hpke"] / 2,  # the HPKE opens alone
            higher_is_better=False,
        ),
        Figure(
            "attachments",
            "delivered throughput",
            "MiB/s",
            args.mib / median["delivery"],
            args.mib / whole,
        ),
    ]
    print(machine())
    print("floor per part: " + ", ".join(f"{k} {v / parts * 1e6:.0f} µs" for k, v in floor.items()))
    print(table(figures))
    record(args.results, figures, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
