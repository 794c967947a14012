"""The network simulation, small: the benchmark's own code path on twelve nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(180)


def test_twelve_node_simulation_delivers_every_message(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
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
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "all delivered" in result.stdout
    assert "messages, every node to every other                     132" in result.stdout
    # The figures bench/report.py reads: no floor without --floor, so no ratio.
    written = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(f["unit"], f["floor"], f["ratio"]) for f in written] == [
        ("s", None, None),
        ("msg/s", None, None),
        ("ms", None, None),  # the workers' CPU a message
        ("MiB", None, None),
        ("s", None, None),  # every route known, from linking
    ]
    assert all(f["bench"] == "network_sim" and f["value"] > 0 for f in written)
    report = subprocess.run(
        [sys.executable, str(REPO / "bench" / "report.py"), str(results)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    table = [line.split() for line in report.stdout.splitlines() if line.startswith("12 nodes")]
    # each with its value, no floor
    assert [row[-2] for row in table] == ["s", "msg/s", "ms", "MiB", "s"]
