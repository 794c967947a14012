"""What the `cpn` command modules share: the subparsers they add to, running a coroutine,
the key passphrase, and printing JSON and times."""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
from collections.abc import Coroutine
from typing import Any, TypeAlias, TypeVar

from network.core.errors import KeyFileError

__all__ = ["Subcommands", "format_time", "key_passphrase", "print_json", "run_async"]

T = TypeVar("T")

# What `add_subparsers` returns: each command module adds its commands to it.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def run_async(job: Coroutine[Any, Any, T]) -> T:
    """Run `job` to its end in a new event loop and return its result (or raise its error)."""
    import asyncio  # loaded only by the commands that open a store

    return asyncio.run(job)


def key_passphrase(ask: bool) -> bytes | None:
    """The key passphrase: prompted for with --passphrase, else CPN_KEY_PASSPHRASE, else none.

    Raises KeyFileError when the two prompted entries differ.
    """
    if ask:
        first = getpass.getpass("key passphrase: ")
        if first != getpass.getpass("again: "):
            raise KeyFileError("the two passphrases differ")
        return first.encode() or None
    value = os.environ.get("CPN_KEY_PASSPHRASE")
    return value.encode() if value else None


def print_json(answer: object) -> None:
    """Print `answer` as indented JSON, non-ASCII text as it is."""
    print(json.dumps(answer, indent=2, ensure_ascii=False))


def format_time(ms: int) -> str:
    """`ms` (Unix milliseconds) as a UTC minute, e.g. 2025-01-31 09:30 UTC."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
