"""One table of every figure the benchmarks wrote, and the plot of latency against load.

    .venv/bin/python bench/report.py RESULTS [--plot docs/latency-vs-load.png]
        [--append docs/PERFORMANCE.md]

RESULTS is the JSON-lines file the scripts wrote with `--results` (see
bench/results.py). Prints every figure beside its floor and their ratio (the
share of the floor reached: 100% is as fast as the raw work alone). With
`--plot`, draws flash and urgent latency (p50, p99) against the offered load
from bench/throughput.py's series (matplotlib: `pip install -e '.[bench]'`).
With `--append`, adds the table, the machine and the date to a Markdown file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results import read, table


def plot(series: dict[str, Any], path: Path) -> None:
    """Latency percentiles against offered load, one line per priority and percentile."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = sorted(series["points"], key=lambda p: p["offered"])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for priority, marker, color in (("flash", "o", "tab:red"), ("urgent", "s", "tab:blue")):
        for percentile, line in (("p50", "-"), ("p99", "--")):
            key = f"{priority}_{percentile}"
            shown = [p for p in points if key in p]
            ax.plot(
                [p["offered"] for p in shown],
                [p[key] for p in shown],
                marker + line,
                color=color,
                label=f"{priority} {percentile}",
            )
    ax.axvline(series["saturated"], color="grey", linestyle=":", label="saturated (phase 1)")
    ax.axhline(20, color="tab:red", linestyle=":", alpha=0.6, label="flash aim: p99 under 20 ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (messages/s, FRA -> DEU)")
    ax.set_ylabel("composed to delivered with receipt (ms)")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_title(
        f"Two nodes: latency against load\n({series['messages']:,} messages to saturate,"
        f" {series['paced_seconds']:g} s at each load; {series['time'][:10]})",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--plot", type=Path, help="write the latency-against-load PNG here")
    parser.add_argument("--append", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()

    figures, series, lines = read(args.results)
    if not figures:
        raise SystemExit(f"{args.results}: no figures")
    machines = sorted({line["machine"] for line in lines})
    quick = any(line["quick"] for line in lines)
    when = f"{lines[0]['time']} to {lines[-1]['time']}"
    loads = sorted(line.get("load", 0.0) for line in lines)
    load = f"load average {loads[0]:.1f} to {loads[-1]:.1f} as the scripts ended"
    print(f"\nevery figure, {when}{' (--quick: a smoke run, not a measurement)' if quick else ''}")
    for described in machines:
        print(f"machine: {described}")
    print(load)
    print("ratio: the share of the floor reached (rate / floor, or floor / time)\n")
    print(table(figures))
    latency = [s for s in series if s["name"] == "latency_vs_load"]
    if args.plot and latency:
        plot(latency[-1], args.plot)
        print(f"\nplot: {args.plot}")
    if args.append:
        with args.append.open("a", encoding="utf-8") as out:
            out.write(
                f"\n### `make bench`, {when}{' (quick)' if quick else ''}\n\n"
                + "".join(f"Machine: {m}; {load}.\n" for m in machines)
                + "\n"
                + table(figures, markdown=True)
                + "\n"
            )
        print(f"appended to {args.append}")


if __name__ == "__main__":
    main()
