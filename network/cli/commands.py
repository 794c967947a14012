"""The `cpn` command (also `python -m network`).

Each subcommand parses its arguments, calls one function, and prints. Errors
end the command with a one-line message naming what is wrong, and nothing is
half-written. Exit status: 0 done; 1 refused by the node (`send`, `inbox`,
`show`, `ack`, `reply`: the node answered with an error) or, for `audit
verify`, a problem found; 2 a usage error or a local one (a draft missing a
field, a bad file or config); 3 the node's API cannot be reached.

The commands live by who uses them: `admin` (keys, roster, node, user), `demo` (up),
`audit` (audit), `officer` (send, inbox, show, ack, reply); each adds its own subparsers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from network.cli import admin, audit, conformance, demo, evidence, officer, stats
from network.core.errors import ApiError, CpnError, UnreachableError

# The audit log, the store and the use cases load in the commands that use them, so
# that `cpn send` and the other officer commands start in a fraction of a second.

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `cpn` parser with every command; each parsed command's `func` runs it."""
    parser = argparse.ArgumentParser(
        prog="cpn",
        description="cpn: the 24/7 contact-point network (UN Convention against Cybercrime)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In this order, which is the order `cpn --help` lists them in.
    admin.add_key_commands(commands)  # keys, roster
    demo.add_commands(commands)  # up
    admin.add_node_commands(commands)  # node, user
    audit.add_commands(commands)  # audit
    evidence.add_commands(commands)  # evidence
    stats.add_commands(commands)  # stats
    officer.add_commands(commands)  # send, inbox, show, ack, reply
    conformance.add_commands(commands)  # conformance
    return parser


# Options whose value is a key id: base64url, so it may begin with "-", which argparse
# would take for an option ("--purge -laKa4..."). Their next argument is always the value.
KEY_ID_OPTIONS = ("--purge",)


def joined_key_ids(argv: Sequence[str]) -> list[str]:
    """`argv` with each key-id option and its value written as one `--option=value`."""
    out: list[str] = []
    pending: str | None = None
    for arg in argv:
        if pending is not None:
            out.append(f"{pending}={arg}")
            pending = None
        elif arg in KEY_ID_OPTIONS:
            pending = arg
        else:
            out.append(arg)
    if pending is not None:
        out.append(pending)  # no value: argparse says so
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `cpn` command; returns its exit status (argparse exits 2 on a usage error)."""
    args = build_parser().parse_args(joined_key_ids(sys.argv[1:] if argv is None else argv))
    try:
        result: int = args.func(args)
    except ApiError as exc:
        print(f"cpn: error: {exc}", file=sys.stderr)
        return 1
    except UnreachableError as exc:
        print(f"cpn: error: {exc}", file=sys.stderr)
        return 3
    except CpnError as exc:
        print(f"cpn: error: {exc}", file=sys.stderr)
        return 2
    return result
