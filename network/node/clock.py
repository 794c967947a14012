"""The wall clock, in milliseconds since the Unix epoch: every time cpn keeps, and its text.

The one place the edges (the node, the command line) read it; the protocol
and the use cases are handed a clock instead, so tests can set the time.
`rfc3339` and `parse_time` turn such times into RFC 3339 text and back.
"""

from __future__ import annotations

import datetime
import time

__all__ = ["now_ms", "parse_time", "rfc3339"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def rfc3339(ms: int) -> str | None:
    """`ms` since the epoch as RFC 3339 UTC with milliseconds; None if out of range."""
    try:
        moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
            milliseconds=ms
        )
    except (OverflowError, TypeError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from digits (ms) or an RFC 3339 / ISO 8601 time.

    A time without an offset is taken as UTC; a bare date is its midnight UTC.
    Raises ValueError saying what it expected.
    """
    value = text.strip()
    if value.isascii() and value.isdigit() and len(value) <= 16:
        return int(value)
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is not a time: expected milliseconds since the epoch or RFC 3339"
            " (2026-11-18T09:30:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (moment - epoch) // datetime.timedelta(milliseconds=1)
