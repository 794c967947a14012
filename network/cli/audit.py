"""`cpn audit verify|export|proof`: the auditor's commands, on the store file itself (a
running node's included); the audit log's modules load only in the command run."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from network.cli._common import Subcommands
from network.node.config import NodeConfig, load_config
from network.node.keys import load_keeper_public

if TYPE_CHECKING:
    from network.node.auditfile import EntryFilter
    from network.node.verify import VerifyReport

__all__ = ["add_commands"]


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the whole store verifies, 1 naming the first problem."""
    from network.node.auditfile import read_witnessed
    from network.node.verify import load_roster_file, verify_store

    config = load_config(Path(args.config))
    keeper = load_keeper_public(config.keeper_path)
    roster = load_roster_file(config.roster_path, keeper)
    witnessed = []
    for source in args.witnessed:
        held = read_witnessed(Path(source), config.id)
        if not held:
            print(f"cpn: {source} holds no checkpoint of {config.id}'s log", file=sys.stderr)
        witnessed.extend(held)
    older = [load_roster_file(Path(p), keeper) for p in args.roster]
    report = verify_store(
        config.store_path,
        roster=roster,
        node_id=config.id,
        witnessed=witnessed,
        keeper=keeper,
        older_rosters=older,
        workers=max(1, args.workers),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _print_report(report: VerifyReport) -> None:
    print(
        f"{report.node} audit log: {report.entries} entries, {report.checkpoints} checkpoints"
        f" (latest at size {report.latest_checkpoint}), {report.cosignatures} cosignatures,"
        f" {report.envelopes} envelopes, {report.receipts} receipts,"
        f" {report.witnessed} witnessed checkpoints"
    )
    first = report.first
    if first is None:
        noted = f" ({len(report.warnings)} warnings below)" if report.warnings else ""
        print(f"verified: no entry, checkpoint, signature or receipt is wrong{noted}")
    else:
        print(f"FAILED: {first.message}")
        for problem in report.problems[1:]:
            print(f"  also: {problem.message}")
        hidden = report.problem_count - len(report.problems)
        if hidden > 0:
            print(f"  ... and {hidden} more")
    if report.deleted:
        rules = ", ".join(f"{count} under rule {rule}" for rule, count in report.deleted)
        print(
            f"contents deleted under retention rules: {rules} (each with its `deleted` entry;"
            " their digests, receipts and log entries verified as above)"
        )
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"assurance: {report.assurance}")
    if report.unproven:
        print(f"unproven: {report.unproven}")


def _time_arg(text: str) -> int:
    from network.node.clock import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_audit_export(args: argparse.Namespace) -> int:
    from network.node.auditfile import EntryFilter

    config = load_config(Path(args.config))
    if args.checkpoints and args.format != "csv":
        print(
            "cpn: error: --checkpoints goes with --format csv (JSONL carries them)", file=sys.stderr
        )
        return 2
    filters = EntryFilter(
        since=args.since,
        until=args.until,
        message=args.message,
        actor=args.actor,
        action=args.action,
    )
    # Files are written under a temporary name and renamed when complete: nothing is
    # left half-written under the real name.
    written = [Path(p) for p in (args.output, args.checkpoints) if p]
    try:
        count = _export(args, config, filters, written)
    except BaseException:
        for path in written:
            _tmp(path).unlink(missing_ok=True)
        raise
    for path in written:
        os.replace(_tmp(path), path)
    if args.output:
        print(f"exported {count} entries to {args.output}", file=sys.stderr)
    return 0


def _export(
    args: argparse.Namespace, config: NodeConfig, filters: EntryFilter, written: list[Path]
) -> int:
    from network.node.auditfile import export_entries

    with contextlib.ExitStack() as stack:
        files = {
            path: stack.enter_context(_tmp(path).open("w", encoding="utf-8", newline=""))
            for path in written
        }
        progress = None
        if args.output:
            progress = stack.enter_context(_progress_bar(f"exporting {config.id}'s audit log"))
        count = export_entries(
            config.store_path,
            files[Path(args.output)] if args.output else sys.stdout,
            args.format,
            filters=filters,
            checkpoints_out=files[Path(args.checkpoints)] if args.checkpoints else None,
            progress=progress,
        )
    return count


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def _progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (rich); yields the callback `export_entries` takes."""
    from rich.console import Console  # loaded only for an export to a file
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (what, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def cmd_audit_proof(args: argparse.Namespace) -> int:
    from network.node.auditfile import consistency_proof, inclusion_proof

    config = load_config(Path(args.config))
    try:
        if args.index is not None:
            proof = inclusion_proof(config.store_path, args.index, args.size)
        else:
            proof = consistency_proof(config.store_path, args.old_size, args.size)
    except ValueError as exc:
        print(f"cpn: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(proof, indent=2, ensure_ascii=False))
    return 0


def add_commands(commands: Subcommands) -> None:
    """`cpn audit verify|export|proof`."""
    audit = commands.add_parser(
        "audit", help="verify, export and prove the audit log (on the store file itself)"
    ).add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit.add_parser(
        "verify",
        help="recompute the tree and check every entry, checkpoint, signature and receipt",
        description="Exit 0 when everything holds, 1 naming the first bad entry and what is"
        " wrong, 2 when the store or config cannot be read. Works on a running node's store.",
    )
    verify.add_argument("--config", required=True, metavar="CONFIG")
    verify.add_argument(
        "--witnessed",
        action="append",
        default=[],
        metavar="FILE_OR_STORE",
        help="a witness's copy of this node's checkpoint: the peer's store file (the"
        " checkpoint it witnessed, and the newest one our receipts carried to it), or a text"
        " file holding a signed note (repeatable)",
    )
    verify.add_argument(
        "--roster",
        action="append",
        default=[],
        metavar="FILE",
        help="an older roster version (signed by the keeper), for signatures by keys rotated"
        " out since that the store does not hold (repeatable)",
    )
    verify.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes hashing the leaves of a large log (default: one per core)",
    )
    verify.add_argument("--json", action="store_true", help="the report as JSON")
    verify.set_defaults(func=cmd_audit_verify)
    export = audit.add_parser(
        "export",
        help="the entries with their leaf hashes, and the signed checkpoints",
        description="JSONL: one entry per line, then one line per signed checkpoint with its"
        " cosignatures. CSV: the entries only (checkpoints with --checkpoints). Hashes are"
        " standard base64. --since is inclusive, --until exclusive.",
    )
    export.add_argument("--config", required=True, metavar="CONFIG")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", metavar="FILE", help="write here (default: stdout)")
    export.add_argument(
        "--checkpoints", metavar="FILE", help="CSV: write the signed checkpoints here as JSONL"
    )
    export.add_argument("--since", type=_time_arg, metavar="TIME", help="RFC 3339 or ms")
    export.add_argument("--until", type=_time_arg, metavar="TIME", help="RFC 3339 or ms")
    export.add_argument("--message", metavar="ID", help="one message's entries")
    export.add_argument("--actor", metavar="ACTOR", help="e.g. node:FRA or a user name")
    export.add_argument("--action", metavar="ACTION", help="e.g. received")
    export.set_defaults(func=cmd_audit_export)
    proof = audit.add_parser(
        "proof",
        help="an inclusion or consistency proof (RFC 9162), as JSON",
        description="--size defaults to the newest signed checkpoint's size (the whole log"
        " when that does not cover what is asked).",
    )
    proof.add_argument("--config", required=True, metavar="CONFIG")
    which = proof.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, metavar="N", help="entry N (seq - 1) is in the tree")
    which.add_argument(
        "--old-size", type=int, metavar="M", help="the tree of M entries is a prefix"
    )
    proof.add_argument("--size", type=int, metavar="S", help="the tree size to prove against")
    proof.set_defaults(func=cmd_audit_proof)
