"""The benchmarks that build a store file by hand, run small (`--quick`): each writes rows
the way the store would, so a new check of the verifier or a schema change can leave them
building a store the node would never write (bench/audit.py did, from 88cd7d7 on, and
`make bench` failed while the suite passed). And bench/flash_path.py, whose probe wraps
the project's functions by name in the nodes it starts: a rename would leave it failing
while the suite passed. The others run in `make bench QUICK=1`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script", ["audit.py", "store_writes.py", "search.py", "flash_path.py"])
def test_the_benchmark_runs_small(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "floor" in done.stdout  # it printed its figures beside their floor
