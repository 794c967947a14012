"""The long fault run: hundreds of SIGKILLs at random moments, then the same checks as the tests.

    .venv/bin/python bench/faults.py [--runs 300] [--per-network 25] [--seed 1]

Runs `tests.faults.kills.kill_stream` (FRA sends to DEU directly and to KEN
through DEU while an officer posts without pause; one node at a time is
killed with SIGKILL and restarted) on fresh networks of `--per-network`
kills each until `--runs` kills are done, and after each network checks
what the tests check: each message delivered exactly once, each receipt
valid, `cpn audit verify` clean on every store. A failure prints its seed;
`CPN_FAULT_SEED=<seed> pytest tests/faults/test_kills.py` replays the draw.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.checks import check_run
from tests.faults.kills import VICTIMS, kill_network, kill_stream


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="kills in all (default 300)")
    parser.add_argument("--per-network", type=int, default=25, help="kills per network")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first network")
    args = parser.parse_args()
    started = time.monotonic()
    done = delivered = networks = 0
    seed = args.seed
    while done < args.runs:
        kills = min(args.per_network, args.runs - done)
        with tempfile.TemporaryDirectory(prefix="cpn-faults-") as folder:
            network = kill_network(Path(folder))
            try:
                run = kill_stream(network, seed=seed, kills=kills)
                for node_id in VICTIMS:
                    network.stop(node_id)
                count = check_run(network, ["FRA"], run.accepted)
            except AssertionError as failure:
                print(f"FAILED at seed {seed}: {failure}", file=sys.stderr)
                return 1
            finally:
                network.close()
        done += kills
        delivered += count
        networks += 1
        print(f"{run}: {count} delivered exactly once, receipts valid, audit clean", flush=True)
        seed += 1
    minutes = (time.monotonic() - started) / 60
    print(
        f"{done} kills on {networks} networks, {delivered} messages delivered exactly once,"
        f" in {minutes:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
