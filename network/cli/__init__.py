"""The `cpn` commands, the HTTP client and its views."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The `cpn` command (and `python -m network`); loads the commands only when run."""
    from network.cli.commands import main as run

    return run(argv)
