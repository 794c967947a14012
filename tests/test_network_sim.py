"""The network simulation, small: the benchmark's own code path on twelve nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(180)


def test_twelve_node_simulation_delivers_every_message() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "network_sim.py"),
            "--nodes",
            "12",
            "--workers",
            "2",
            "--hubs",
            "2",
            "--suite",
            "x25519",
            "--no-floor",
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "all delivered" in result.stdout
    assert "messages, every node to every other                     132" in result.stdout
