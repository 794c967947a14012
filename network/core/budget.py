"""How many audit entries of one kind a source may cause: bounded, and nothing uncounted.

What arrives from outside is recorded in the audit log, but a flood of refusals (bad
tokens from rotating addresses, garbage from a peer) must not grow the log without
bound. An `AuditBudget` lets `limit` entries through per `window_ms` for each key (a
peer, or one key for a whole kind); what it holds back it counts, and the next entry
it lets through carries that count, so the log says how much was suppressed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from network.core.auditlog import AuditEntry

__all__ = ["AuditBudget"]


@dataclass(slots=True)
class _Window:
    start: int  # ms
    used: int
    held_back: int  # since the last entry let through


class AuditBudget:
    """Per-key fixed windows of `limit` entries each `window_ms`; at most `max_keys` keys
    are remembered (the least recently used is forgotten, with its held-back count)."""

    def __init__(self, limit: int, window_ms: int, *, max_keys: int = 1024) -> None:
        if limit < 1 or window_ms < 1 or max_keys < 1:
            raise ValueError("limit, window_ms and max_keys must be positive")
        self.limit = limit
        self.window_ms = window_ms
        self.max_keys = max_keys
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def take(self, key: str, now: int) -> int | None:
        """None: hold this entry back (it is counted). Otherwise let it through, and the
        number of entries held back for `key` since the last one let through (to record)."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(now, 0, 0)
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
        self._windows.move_to_end(key)
        if now - window.start >= self.window_ms or now < window.start:
            window.start, window.used = now, 0
        if window.used >= self.limit:
            window.held_back += 1
            return None
        window.used += 1
        held_back, window.held_back = window.held_back, 0
        return held_back

    def admit(self, key: str, entry: AuditEntry, now: int) -> AuditEntry | None:
        """`entry` to record, with `suppressed` (how many were held back for `key` since the
        last one let through) when there were any; None to hold it back."""
        held_back = self.take(key, now)
        if not held_back:
            return None if held_back is None else entry
        return replace(entry, detail={**(entry.detail or {}), "suppressed": held_back})

    def unreported(self, now: int | None = None) -> list[tuple[str, int]]:
        """(key, count) for the entries held back and not yet reported, of keys whose window
        has ended by `now` (of every key when `now` is None, as when the node stops); those
        counts start again from 0. A source that stops sending is still accounted for."""
        found = []
        for key, window in self._windows.items():
            ended = now is None or now - window.start >= self.window_ms or now < window.start
            if window.held_back and ended:
                found.append((key, window.held_back))
                window.held_back = 0
        return found

    def held_back(self, key: str) -> int:
        """Entries held back for `key` and not yet reported."""
        window = self._windows.get(key)
        return 0 if window is None else window.held_back
