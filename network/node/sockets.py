"""Listening sockets: handed down by whoever started the node (systemd's socket
activation), and the connections the node's servers accept from them.

The protocol is sd_listen_fds(3)'s: `LISTEN_PID` names the process the sockets
are for (a child that inherited the variables by mistake must not take them);
`LISTEN_FDS` says how many, passed as file descriptors 3, 4, ...; and
`LISTEN_FDNAMES` names them, colon-separated (a .socket unit's
`FileDescriptorName=`). The node takes `peer` (its `[peer] listen`), `api`
(its `[api] listen`) and `metrics` (its `[metrics] listen`) and serves on them
instead of binding those addresses:
the sockets exist, and their ports are known, before the node starts, and stay
bound across its restarts. The variables are unset once read, as
sd_listen_fds(unset_environment=1) does, and the descriptors marked
close-on-exec, so that nothing the node starts inherits them.

The node's servers (the peer server, the API) accept their connections themselves
(`accepted`), to apply their bounds on what they hold to each: libuv's loop (uvloop)
accepts in C for a server of its own, giving them no place to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from typing import Final, TypeVar

from network.core.errors import ConfigError

__all__ = [
    "NAMES",
    "SD_LISTEN_FDS_START",
    "accepted",
    "bound",
    "inherited",
    "parse_listen_fds",
    "take_listen_fds",
]

log = logging.getLogger("cpn.sockets")

SD_LISTEN_FDS_START: Final = 3
NAMES: Final = ("peer", "api", "metrics")
_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_MAX_FDS: Final = 64  # far more than the node takes: a bound on what a count may claim


def parse_listen_fds(environ: Mapping[str, str], pid: int) -> dict[str, int]:
    """The descriptors, by name, that `environ` hands to process `pid`: {} when it hands
    none, or hands them to another process (`LISTEN_PID` is not `pid`).

    Pure: reads nothing else and changes nothing. Raises ConfigError, naming the
    variable, for a count or a pid that is not a number, names that do not match
    the count, and a name other than `peer`, `api` and `metrics`, or one given twice.
    """
    if "LISTEN_PID" not in environ or "LISTEN_FDS" not in environ:
        return {}
    try:
        listen_pid = int(environ["LISTEN_PID"])
    except ValueError:
        raise ConfigError(f"LISTEN_PID: not a process id: {environ['LISTEN_PID']!r}") from None
    if listen_pid != pid:
        return {}
    count_text = environ["LISTEN_FDS"]
    if not count_text.isdigit() or not 0 < int(count_text) <= _MAX_FDS:
        raise ConfigError(f"LISTEN_FDS: expected a count of 1..{_MAX_FDS}, got {count_text!r}")
    count = int(count_text)
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    if len(names) != count:
        raise ConfigError(
            f"LISTEN_FDNAMES: {count} sockets need {count} names"
            f" ({' or '.join(NAMES)}, colon-separated), got {environ.get('LISTEN_FDNAMES')!r}"
        )
    found: dict[str, int] = {}
    for index, name in enumerate(names):
        if name not in NAMES:
            raise ConfigError(f"LISTEN_FDNAMES: {name!r} is not one of {', '.join(NAMES)}")
        if name in found:
            raise ConfigError(f"LISTEN_FDNAMES: {name!r} is named twice")
        found[name] = SD_LISTEN_FDS_START + index
    return found


def take_listen_fds(environ: MutableMapping[str, str] | None = None) -> dict[str, int]:
    """The listening sockets handed to this process, by name, taken once: the variables
    are unset (whatever they held) and the descriptors made close-on-exec.

    Raises ConfigError as `parse_listen_fds` does, or when a descriptor is not a
    listening stream socket.
    """
    environ = os.environ if environ is None else environ
    try:
        found = parse_listen_fds(environ, os.getpid())
    finally:
        for variable in _VARIABLES:
            environ.pop(variable, None)
    for name, fd in found.items():
        try:
            os.set_inheritable(fd, False)
            probe = socket.socket(fileno=fd)  # family and type read from the descriptor
        except OSError as exc:
            raise ConfigError(f"LISTEN_FDS: descriptor {fd} ({name}): {exc.strerror}") from exc
        try:
            listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            stream = probe.type == socket.SOCK_STREAM
        finally:
            probe.detach()  # the descriptor stays open, for the server to adopt
        if not (listening and stream):
            raise ConfigError(f"LISTEN_FDS: descriptor {fd} ({name}) is not a listening socket")
    return found


_taken: dict[str, int] | None = None


def inherited(name: str) -> int | None:
    """The descriptor of the listening socket handed down for `name` (`peer` or `api`),
    or None when there is none: bind the configured address then. Each is given once
    (whoever adopts it owns it); the first call reads the environment for all.

    Raises ConfigError as `take_listen_fds` does.
    """
    global _taken
    if _taken is None:
        _taken = take_listen_fds()
    return _taken.pop(name, None)


S = TypeVar("S", bound=socket.socket)

ACCEPT_AT_ONCE: Final = 64
"""Connections `accepted` takes in one pass of the loop, at most: a flood's are not all
taken before anything else runs."""


def bound(host: str, port: int, make: Callable[[int, int, int], S]) -> S:
    """A listening socket on `host:port`, made by `make(family, type, proto)` (a socket
    class); closed again if it cannot bind or listen."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = make(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(socket.SOMAXCONN)
    except BaseException:
        listener.close()
        raise
    return listener


async def accepted(
    listener: socket.socket, server: str
) -> AsyncIterator[list[tuple[socket.socket, str]]]:
    """The connections `listener` accepts, each with its source address ("local" on a
    Unix socket), until the caller stops: every one waiting when it is ready, at most
    `ACCEPT_AT_ONCE` at a time, as asyncio's own server takes up to its backlog (taken one
    at a time, a connection waited a pass of the loop for each one before it). An accept
    that fails (out of descriptors, say) is logged and tried again a second later, as
    asyncio's own server does."""
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    while True:
        try:
            conn, address = await loop.sock_accept(listener)
        except OSError as exc:
            log.warning("%s: accept failed (%s); again in a second", server, exc)
            await asyncio.sleep(1)
            continue
        batch = [(conn, _source(address))]
        while len(batch) < ACCEPT_AT_ONCE:
            try:
                conn, address = listener.accept()
            except OSError:  # none waiting; or a failure the next `sock_accept` meets and logs
                break
            conn.setblocking(False)
            batch.append((conn, _source(address)))
        yield batch


def _source(address: object) -> str:
    # A TCP peer's address is (host, port, ...); a Unix socket's is a path, often ''.
    return str(address[0]) if isinstance(address, tuple) else "local"
