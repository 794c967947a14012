"""Repeated failed logins, slowed down per remote address (pure: the caller passes `now`).

Rules:
- A refused token is a failure of its remote address; an accepted one forgets the
  address. Requests without a token are not login attempts and count for nothing.
- The `policy.failures`-th consecutive failure opens a penalty window of
  `policy.penalty_ms`; each failure after it (once the window has passed) opens
  one twice as long as the last, at most `policy.max_penalty_ms`. Inside a
  window every request from the address is refused (429) without its token
  being looked at, so a window costs an attacker time, not us a database read,
  and attempts inside it count for nothing.
- At most `policy.max_addresses` addresses are remembered: the one failed longest
  ago goes first; one quiet for `policy.forget_ms` (and not in a window) is forgotten.

The caller audits `login_throttled` when `failed` opens a window: once per window,
never per refused request, so an attacker cannot flood the log.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from network.node.config import DEFAULT_LOGIN, LoginPolicy

__all__ = ["DEFAULT_LOGIN", "LoginPolicy", "LoginThrottle"]


@dataclass(slots=True)
class _Address:
    failures: int
    last: int  # ms of the latest failure
    blocked_until: int


class LoginThrottle:
    """Consecutive failed logins per remote address, and the penalty windows they earn."""

    def __init__(self, policy: LoginPolicy) -> None:
        self.policy = policy
        self._addresses: OrderedDict[str, _Address] = OrderedDict()  # oldest failure first

    def __len__(self) -> int:
        return len(self._addresses)

    def blocked(self, address: str, now: int) -> int | None:
        """Milliseconds left in `address`'s penalty window, or None if it may try."""
        record = self._addresses.get(address)
        if record is None or now >= record.blocked_until:
            return None
        return record.blocked_until - now

    def failed(self, address: str, now: int) -> int | None:
        """Count a refused token; the length (ms) of the window this failure opens, if any."""
        self._forget_stale(now)
        record = self._addresses.pop(address, None)
        if record is None:
            record = _Address(failures=0, last=now, blocked_until=now)
            while len(self._addresses) >= self.policy.max_addresses:
                self._addresses.popitem(last=False)
        record.failures += 1
        record.last = now
        self._addresses[address] = record  # to the end: the newest failure
        beyond = record.failures - self.policy.failures
        if beyond < 0:
            return None
        # Doubling from the first window on; the shift is capped so it stays small.
        window = min(self.policy.penalty_ms << min(beyond, 32), self.policy.max_penalty_ms)
        record.blocked_until = now + window
        return window

    def succeeded(self, address: str) -> None:
        """An accepted token: the address starts afresh."""
        self._addresses.pop(address, None)

    def _forget_stale(self, now: int) -> None:
        while self._addresses:
            record = next(iter(self._addresses.values()))
            if now - record.last < self.policy.forget_ms or now < record.blocked_until:
                return
            self._addresses.popitem(last=False)
