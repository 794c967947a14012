"""`cpn conformance URL`: run the protocol's conformance cases against a node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from network.cli._common import Subcommands, run_async
from network.core.records import NodeId, is_node_id

__all__ = ["add_commands"]


def cmd_conformance(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from network.node.clock import now_ms
    from network.node.config import load_config
    from network.node.conformance import CaseResult, run_conformance
    from network.node.keys import load_configured_keys
    from network.node.runner import load_current_roster

    if not is_node_id(args.peer):
        print(f"cpn: error: --peer: {args.peer!r} is not a node id", file=sys.stderr)
        return 2
    config = load_config(Path(args.config))
    keys = load_configured_keys(config)
    roster = load_current_roster(config)
    console = Console(highlight=False)

    def report(result: CaseResult) -> None:
        mark = "[green]PASS[/green]" if result.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {result.name}: {result.detail}")

    results = run_async(
        run_conformance(
            args.url,
            keys=keys,
            roster=roster,
            target=NodeId(args.peer),
            clock=now_ms,
            report=None if args.quiet else report,
        )
    )
    table = Table(title=f"cpn conformance: {args.peer} at {args.url}, as {config.id}")
    for column in ("", "case", "requirement (docs/PROTOCOL.md)", "what happened"):
        table.add_column(column)
    for result in results:
        mark = "[green]PASS[/green]" if result.ok else "[red]FAIL[/red]"
        table.add_row(mark, result.name, result.requirement, result.detail)
    console.print(table)
    failed = [r.name for r in results if not r.ok]
    console.print(
        f"{len(results) - len(failed)} of {len(results)} passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def add_commands(commands: Subcommands) -> None:
    """`cpn conformance`."""
    conformance = commands.add_parser(
        "conformance",
        help="drive a node from outside, as a peer, through the protocol's MUST cases",
        description="Connects to URL (the node's peer port, wss://HOST:PORT) as the node of"
        " --config (a contact point in the roster of the node under test; it must not be"
        " running meanwhile) and runs each case of docs/PROTOCOL.md it can check from outside:"
        " the handshake, refused hellos and frames, receipts, dedup, id conflicts and each"
        " refusal reason. Exit 0 when every case passes, 1 naming those that fail.",
    )
    conformance.add_argument("url", metavar="URL")
    conformance.add_argument("--config", required=True, metavar="CONFIG")
    conformance.add_argument("--peer", required=True, metavar="ID", help="the node under test")
    conformance.add_argument("--quiet", action="store_true", help="only the table")
    conformance.set_defaults(func=cmd_conformance)
