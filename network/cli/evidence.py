"""`cpn evidence export|verify|report`: the evidence package of one message, made from a node's
store and keys, and checked offline by anyone (network/node/evidence.py)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from network.cli._common import Subcommands, run_async
from network.core.errors import EvidenceError

__all__ = ["add_commands"]


def cmd_evidence_export(args: argparse.Namespace) -> int:
    from network.cli.admin import record_in_store
    from network.node.clock import now_ms
    from network.node.config import load_config
    from network.node.evidence import export_package, opener_for
    from network.node.keys import load_configured_keys, load_keeper_public, write_private_file

    config = load_config(Path(args.config))
    keys = load_configured_keys(config)

    message_id = args.id.lower()
    package = export_package(
        config.store_path,
        message_id,
        node_id=config.id,
        signing=keys.signing,
        keeper=load_keeper_public(config.keeper_path),
        now=now_ms(),
        opener=opener_for(keys.keyring) if args.body else None,
    )
    data = json.dumps(package, indent=1, ensure_ascii=False).encode() + b"\n"
    # Bodies disclosed are case data: the file is kept as private as a key.
    write_private_file(Path(args.output), data, replace=args.force)
    detail = {"file": str(args.output), "disclosed": bool(args.body)}
    run_async(
        record_in_store(
            config,
            f"admin:{getpass.getuser()}",
            "evidence_exported",
            detail | {"message": message_id},
        )
    )
    print(f"{args.output}: evidence package of {message_id} ({len(data)} bytes)")
    return 0


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from network.node.evidence import verify_package
    from network.node.keys import load_keeper_public

    keeper = load_keeper_public(Path(args.keeper)) if args.keeper else None
    try:
        facts = verify_package(Path(args.file).read_bytes(), keeper=keeper)
    except EvidenceError as exc:
        print(f"NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"fact": f.statement, "rests_on": f.rests_on} for f in facts], indent=2))
    else:
        for fact in facts:
            print(f"- {fact.statement}  [{fact.rests_on}]")
        print("VERIFIED")
    return 0


def cmd_evidence_report(args: argparse.Namespace) -> int:
    from network.node.evidence import verify_package
    from network.node.evidence_report import render_report
    from network.node.keys import load_keeper_public

    keeper = load_keeper_public(Path(args.keeper)) if args.keeper else None
    raw = Path(args.file).read_bytes()
    try:
        facts = verify_package(raw, keeper=keeper)
    except EvidenceError as exc:
        print(f"NOT VERIFIED: {exc}; no report written", file=sys.stderr)
        return 1
    Path(args.output).write_text(render_report(raw, facts, pinned=keeper is not None))
    print(f"{args.output}: the report of {len(facts)} verified facts")
    return 0


def add_commands(commands: Subcommands) -> None:
    """`cpn evidence export|verify|report`."""
    evidence = commands.add_parser(
        "evidence", help="a message's evidence package: export it, verify one offline"
    ).add_subparsers(dest="evidence_command", required=True, metavar="COMMAND")
    export = evidence.add_parser(
        "export",
        help="write a message's evidence package (envelopes, receipts, audit proofs, rosters)",
        description="Writes one JSON document holding everything that proves a message's"
        " exchange, signed by this node; audited as a disclosure. The bodies are left out"
        " unless --body is given.",
    )
    export.add_argument("id", metavar="MESSAGE_ID")
    export.add_argument("--config", required=True, metavar="CONFIG")
    export.add_argument("-o", "--output", required=True, metavar="FILE")
    export.add_argument("--body", action="store_true", help="disclose the opened bodies")
    export.add_argument("--force", action="store_true", help="replace FILE if it exists")
    export.set_defaults(func=cmd_evidence_export)
    verify = evidence.add_parser(
        "verify",
        help="check an evidence package offline and say what it proves",
        description="Needs only the package (and, better, the register keeper's key, pinned"
        " with --keeper). Exit 0 and the facts it proves; 1 naming the first thing that"
        " fails.",
    )
    verify.add_argument("file", metavar="FILE")
    verify.add_argument("--keeper", metavar="KEEPER_JSON", help="the keeper's public key file")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_evidence_verify)
    report = evidence.add_parser(
        "report",
        help="write a verified package as a printable HTML report (timeline, parties, facts)",
        description="Verifies the package first, as verify does, and writes nothing if it"
        " does not verify. The report is one HTML file with no script and no external"
        " resource, for A4 paper or PDF from a browser.",
    )
    report.add_argument("file", metavar="FILE")
    report.add_argument("-o", "--output", required=True, metavar="REPORT_HTML")
    report.add_argument("--keeper", metavar="KEEPER_JSON", help="the keeper's public key file")
    report.set_defaults(func=cmd_evidence_report)
