"""Envelope rates beside the raw primitive floor measured in the same run.

    .venv/bin/python bench/envelope.py [--rounds 31] [--batch 100] [--suite hybrid|x25519]
        [--results FILE] [--quick]

For each figure: the envelope's rate (operations/s, median of the rounds),
the floor (the same HPKE and Ed25519 calls alone, on the same plaintext
size, interleaved with the envelope rounds so that machine noise hits both),
and their ratio. The floor of seal+sign is one HPKE seal and two Ed25519
signatures; of open+verify, one HPKE open and two Ed25519 verifications.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import Figure, add_arguments, machine, record
from network.core.bodies import parse_body
from network.core.crypto import (
    HpkeSuite,
    generate_signing_key,
)
from network.core.envelope import Envelope, open_envelope, seal, unseal, verify_envelope
from network.core.records import MessageType, NodeId, Priority, canonical
from network.core.roster import build_roster, load_roster
from network.samples import sample_body
from tests.conftest import make_node

NOW = 1_795_000_000_000


def rate(fn: Callable[[], object], batch: int) -> float:
    start = time.perf_counter()
    for _ in range(batch):
        fn()
    return batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--suite", choices=["hybrid", "x25519"], default="hybrid")
    add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batch = 3, 20
    suite = HpkeSuite.MLKEM768_X25519 if args.suite == "hybrid" else HpkeSuite.X25519

    keeper = generate_signing_key()
    nodes = {"FRA": make_node("FRA"), "DEU": make_node("DEU", suite)}
    roster = load_roster(
        build_roster(
            [n.card for n in nodes.values()],
            keeper=keeper,
            version=1,
            issued=NOW - 1000,
            valid_until=NOW + 10**10,
        ),
        keeper=keeper.verify_key(),
        now=NOW,
    )
    fra, deu = nodes["FRA"], nodes["DEU"]
    body_json = sample_body(MessageType.PRESERVATION)
    body = parse_body(MessageType.PRESERVATION, body_json)
    recipient_key = roster.active_card("DEU").hpke_key

    def sealing(of: object) -> Callable[[], Envelope]:
        return lambda: seal(
            sender=NodeId("FRA"),
            recipient=NodeId("DEU"),
            message_type=MessageType.PRESERVATION,
            body=of,
            priority=Priority.URGENT,
            now=NOW,
            random_bytes=os.urandom(10),
            signing_key=fra.signing,
            recipient_key=recipient_key,
        )

    seal_typed, compose_json = sealing(body), sealing(body_json)
    raw = seal_typed().raw

    def open_verify() -> object:
        checked = verify_envelope(raw, roster=roster, now=NOW)
        return open_envelope(checked, me=NodeId("DEU"), hpke_key=deu.hpke, roster=roster)

    def open_verify_envelope() -> object:
        checked = verify_envelope(raw, roster=roster, now=NOW)
        return unseal(checked, me=NodeId("DEU"), hpke_key=deu.hpke, roster=roster)

    # The floor: the same primitive calls on inputs of the same sizes, nothing else.
    opened = open_verify()
    plaintext = opened.plaintext  # type: ignore[attr-defined]
    info = b"x" * 46
    sealed = recipient_key.seal(plaintext, info)
    signed = b"x" * (len(raw) - 90)
    sig = fra.signing.sign(signed)
    verify_key = fra.signing.verify_key()

    def floor_seal() -> object:
        recipient_key.seal(plaintext, info)
        fra.signing.sign(plaintext)
        return fra.signing.sign(signed)

    def floor_open() -> object:
        verify_key.verify(sig, signed)
        deu.hpke.open(sealed, info)
        return verify_key.verify(sig, signed)

    pairs = {
        "seal+sign (typed body)": (seal_typed, floor_seal),
        "seal+sign, JSON body validated first": (compose_json, floor_seal),
        "open+verify (both signatures)": (open_verify_envelope, floor_open),
        "open+verify, body validated and typed": (open_verify, floor_open),
    }
    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pairs}
    for _ in range(args.rounds):
        for name, (project, floor) in pairs.items():
            results[name][0].append(rate(project, args.batch))
            results[name][1].append(rate(floor, args.batch))

    print(f"machine: {machine()}")
    print(f"suite: {suite}; body {len(canonical(body_json))} B canonical; envelope {len(raw)} B")
    print(f"median of {args.rounds} rounds x {args.batch} operations, interleaved\n")
    print(f"{'figure':<44} {'cpn /s':>9} {'floor /s':>9} {'ratio':>7}")
    figures = []
    for name, (ours, floors) in results.items():
        mine, base = statistics.median(ours), statistics.median(floors)
        # The ratio is the median of each round's ratio: both sides of a round ran
        # back to back, so machine drift cancels out.
        ratio = statistics.median(o / f for o, f in zip(ours, floors, strict=True))
        print(f"{name:<44} {mine:>9.0f} {base:>9.0f} {ratio:>7.0%}")
        # Recorded with the floor that gives this ratio against the median rate.
        figures.append(Figure("envelope", f"envelope: {name}", "op/s", mine, mine / ratio))
    record(args.results, figures, quick=args.quick)


if __name__ == "__main__":
    main()
