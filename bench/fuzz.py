"""The fuzz properties of tests/test_fuzz.py with a much larger budget.

    python bench/fuzz.py                      # 20,000 inputs per property
    python bench/fuzz.py --examples 100000 --only envelope roster
    python bench/fuzz.py --seed 7             # another sequence of inputs

Each property feeds a parser that meets untrusted input (link frames, the
handshake, envelopes, sealed bodies, receipts, the roster, announcements, the
node config) random bytes and mutations of valid documents; any exception
but a CpnError is a failure, printed with the input that caused it. Exits
non-zero if any property failed. Hypothesis drives it (atheris does not
install on this Python).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_fuzz import PROPERTIES, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="inputs per property")
    parser.add_argument("--only", nargs="+", choices=list(PROPERTIES), help="these properties")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh random seed")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed {seed} (--seed {seed} runs the same inputs again)")
    failed = []
    print(f"{'property':<14} {'inputs':>8} {'seconds':>8} {'inputs/s':>9}  result")
    for name in args.only or list(PROPERTIES):
        start = time.perf_counter()
        try:
            run(name, args.examples, seed=seed)
            result = "ok"
        except Exception:
            traceback.print_exc()
            failed.append(name)
            result = "FAILED"
        seconds = time.perf_counter() - start
        rate = args.examples / seconds
        print(f"{name:<14} {args.examples:>8} {seconds:>8.1f} {rate:>9.0f}  {result}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
