"""The wall clock, in milliseconds since the Unix epoch: every time cpn keeps.

The one place the edges (the node, the command line) read it; the protocol
and the use cases are handed a clock instead, so tests can set the time.
"""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000
