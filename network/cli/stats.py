"""`cpn stats --year Y`: the yearly statistics a Party reports on its use of the network,
from a node's store (read-only; a running node's included): a table, `--json`, or `--csv`."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
from pathlib import Path

from network.cli._common import Subcommands

__all__ = ["add_commands"]


def cmd_stats(args: argparse.Namespace) -> int:
    from network.node.config import load_config
    from network.node.statistics import compute, read_year, to_csv_rows

    config = load_config(Path(args.config))
    stats = compute(read_year(config.store_path, args.year), year=args.year, node=config.id)
    if args.json:
        print(json.dumps(stats, indent=2))
    elif args.csv:
        out = sys.stdout if args.csv == "-" else open(args.csv, "w", newline="")  # noqa: SIM115
        try:
            writer = csv.writer(out)
            writer.writerow(("direction", "figure", "key", "value"))
            writer.writerows(to_csv_rows(stats))
        finally:
            if out is not sys.stdout:
                out.close()
    else:
        for direction, figure, key, value in to_csv_rows(stats):
            print(f"{direction:9} {figure:22} {key:24} {value}")
    return 0


def add_commands(commands: Subcommands) -> None:
    """`cpn stats`."""
    stats = commands.add_parser(
        "stats",
        help="the year's statistics: requests by type, country and priority, times, outcomes",
        description="Requests sent and received in the year (UTC) by type, country and"
        " priority; median and 90th-percentile times to receipt, acknowledgement and final"
        " answer; preservation outcomes, refusals by ground, extensions, MLA notices. Read"
        " from the store, no body opened.",
    )
    stats.add_argument("--config", required=True, metavar="CONFIG")
    stats.add_argument(
        "--year", type=int, default=datetime.datetime.now(datetime.UTC).year, metavar="YEAR"
    )
    shape = stats.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", metavar="FILE", help="write CSV to FILE (- for standard output)")
    stats.set_defaults(func=cmd_stats)
