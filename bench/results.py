"""The figures a benchmark measured, written where `bench/report.py` reads them.

Each script prints its own table and, given `--results FILE`, appends its
figures to FILE as JSON lines (one object a line, so that scripts run one
after another add to the same file). A figure is the project's value, the
floor measured in the same run and their ratio, always "the share of the
floor reached": value / floor for a rate, floor / value for a time, so 100%
means as fast as the raw work alone, whichever way the unit runs.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Figure", "add_arguments", "machine", "read", "record", "scratch", "table"]


@dataclass(frozen=True)
class Figure:
    bench: str  # the script: "relay", "recovery", ...
    name: str
    unit: str  # "msg/s", "ms", "s", ...
    value: float
    floor: float | None = None  # None: no floor for this figure (a count, a memory size)
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if self.floor is None or not self.value or not self.floor:
            return None
        return self.value / self.floor if self.higher_is_better else self.floor / self.value


def scratch(prefix: str = "cpn-bench-") -> Path:
    """A fresh folder for a run's stores, keys and logs, removed when the script ends:
    a run of the 193-node simulation leaves 1.3 GB. `CPN_BENCH_KEEP=1` keeps it, and
    says where."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("CPN_BENCH_KEEP") == "1":
        atexit.register(print, f"kept: {path}", file=sys.stderr)
    else:
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def machine() -> str:
    """One line describing this machine, for a results file and docs/PERFORMANCE.md. The
    interpreter is named by its executable, links resolved (a venv's python is the one
    it was made from): two builds of one version differed by 8 to 9% in a node's CPU."""
    import cryptography

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {_processor()}, {_memory()},"
        f" Python {platform.python_version()} ({Path(sys.executable).resolve()}),"
        f" cryptography {cryptography.__version__},"
        f" SQLite {sqlite3.sqlite_version}"
    )


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown processor"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return "memory unknown"


def table(figures: list[Figure], *, markdown: bool = False) -> str:
    """The figures as a text table (or a Markdown one): name, unit, value, floor, ratio."""

    def number(x: float | None) -> str:
        if x is None:
            return ""
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"

    cells = [
        (
            f.name,
            f.unit,
            number(f.value),
            number(f.floor),
            "" if f.ratio is None else f"{f.ratio:.0%}",
        )
        for f in figures
    ]
    head = ("figure", "unit", "cpn", "floor", "ratio")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "| --- | --- | ---: | ---: | ---: |"]
        return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in cells)])
    width = max([len(head[0]), *(len(row[0]) for row in cells)])
    return "\n".join(
        f"{row[0]:<{width}} {row[1]:>6} {row[2]:>11} {row[3]:>11} {row[4]:>6}"
        for row in [head, *cells]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script takes: where to write, and a short run."""
    parser.add_argument("--results", type=Path, help="append the figures to this JSON-lines file")
    parser.add_argument(
        "--quick", action="store_true", help="small counts: a smoke run, not a measurement"
    )


def record(
    path: Path | None,
    figures: list[Figure],
    *,
    quick: bool = False,
    series: dict[str, Any] | None = None,
) -> None:
    """Append `figures` (and an optional named series, e.g. points to plot) to `path`."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "load": round(os.getloadavg()[0], 1),  # when the script ended: was the machine idle?
        "quick": quick,
    }
    with path.open("a", encoding="utf-8") as out:
        for figure in figures:
            line = {"kind": "figure", **asdict(figure), "ratio": figure.ratio, **stamp}
            out.write(json.dumps(line) + "\n")
        if series is not None:
            out.write(json.dumps({"kind": "series", **series, **stamp}) + "\n")


def read(path: Path) -> tuple[list[Figure], list[dict[str, Any]], list[dict[str, Any]]]:
    """The figures, the series and the raw figure lines (with their stamps) of a results file."""
    figures, series, lines = [], [], []
    for text in path.read_text(encoding="utf-8").splitlines():
        if not text.strip():
            continue
        line = json.loads(text)
        if line["kind"] == "series":
            series.append(line)
            continue
        lines.append(line)
        figures.append(
            Figure(
                bench=line["bench"],
                name=line["name"],
                unit=line["unit"],
                value=line["value"],
                floor=line["floor"],
                higher_is_better=line["higher_is_better"],
            )
        )
    return figures, series, lines
