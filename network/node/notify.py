"""sd_notify(3): tell the service manager the node is up, and feed its watchdog.

Under systemd (`Type=notify`, `WatchdogSec=`), `NOTIFY_SOCKET` names a Unix datagram
socket (a leading `@` means the abstract namespace) and `WATCHDOG_USEC` the watchdog
period. The node sends `READY=1` once its listeners are bound and its store open,
`WATCHDOG=1` at half the period while its store answers a read in time (a node
whose disk hangs stops feeding it, and systemd restarts it), and `STOPPING=1` on
the way out. Without `NOTIFY_SOCKET` nothing is sent. The variables are unset once
read, as sd_notify(unset_environment=1) does, so that nothing the node starts
inherits them.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import MutableMapping

from network.core.errors import ConfigError

__all__ = ["Notifier"]

_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """The service manager's notification socket, and the watchdog period if it set one."""

    def __init__(self, address: str, watchdog_seconds: float | None) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_seconds = watchdog_seconds
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] = os.environ, pid: int | None = None
    ) -> Notifier | None:
        """The notifier the environment describes (None: not started by a service manager);
        the variables are taken out of `environ`. Raises ConfigError naming a bad one."""
        values = {name: environ.pop(name, None) for name in _VARIABLES}
        address = values["NOTIFY_SOCKET"]
        if not address:
            return None
        if not address.startswith(("/", "@")):
            raise ConfigError(f"NOTIFY_SOCKET: expected a path or @abstract name, got {address!r}")
        watchdog = None
        usec, for_pid = values["WATCHDOG_USEC"], values["WATCHDOG_PID"]
        if usec and (not for_pid or for_pid == str(os.getpid() if pid is None else pid)):
            if not usec.isdigit() or int(usec) == 0:
                raise ConfigError(f"WATCHDOG_USEC: expected microseconds, got {usec!r}")
            watchdog = int(usec) / 1_000_000
        return cls(address, watchdog)

    def send(self, *states: str) -> None:
        """`states` (e.g. READY=1) in one datagram; a manager that went away is not our
        failure (the node goes on)."""
        with contextlib.suppress(OSError):
            self._socket.sendto("\n".join(states).encode(), self.address)

    def close(self) -> None:
        self._socket.close()
