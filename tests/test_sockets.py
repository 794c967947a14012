"""Socket activation: the environment parsed as sd_listen_fds(3) does, and sockets taken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from network.core.errors import ConfigError
from network.node.sockets import SD_LISTEN_FDS_START, parse_listen_fds
from tests.harness import activated, listening_socket, port_of

PID = 4242


def environ(**values: str) -> dict[str, str]:
    return {"PATH": "/usr/bin", **values}


def test_no_variables_hand_nothing() -> None:
    assert parse_listen_fds(environ(), PID) == {}


def test_sockets_for_another_process_are_not_ours() -> None:
    """A child that inherited the variables must not take its parent's sockets."""
    env = environ(LISTEN_PID=str(PID + 1), LISTEN_FDS="2", LISTEN_FDNAMES="peer:api")

    assert parse_listen_fds(env, PID) == {}


def test_names_map_to_descriptors_from_3_in_order() -> None:
    env = environ(LISTEN_PID=str(PID), LISTEN_FDS="2", LISTEN_FDNAMES="api:peer")

    assert parse_listen_fds(env, PID) == {"api": SD_LISTEN_FDS_START, "peer": 4}


def test_one_socket_is_enough() -> None:
    env = environ(LISTEN_PID=str(PID), LISTEN_FDS="1", LISTEN_FDNAMES="peer")

    assert parse_listen_fds(env, PID) == {"peer": 3}


@pytest.mark.parametrize(
    ("values", "variable", "problem"),
    [
        ({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, "LISTEN_PID", "not a process id"),
        ({"LISTEN_FDS": "two", "LISTEN_FDNAMES": "peer"}, "LISTEN_FDS", "a count"),
        ({"LISTEN_FDS": "0", "LISTEN_FDNAMES": ""}, "LISTEN_FDS", "a count"),
        ({"LISTEN_FDS": "-1", "LISTEN_FDNAMES": "peer"}, "LISTEN_FDS", "a count"),
        ({"LISTEN_FDS": "65", "LISTEN_FDNAMES": "peer"}, "LISTEN_FDS", "a count"),
        ({"LISTEN_FDS": "2"}, "LISTEN_FDNAMES", "2 sockets need 2 names"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "peer"}, "LISTEN_FDNAMES", "need 2 names"),
        ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}, "LISTEN_FDNAMES", "'web' is not one of"),
        ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "api:api"}, "LISTEN_FDNAMES", "named twice"),
    ],
)
def test_a_malformed_environment_is_refused_naming_the_variable(
    values: dict[str, str], variable: str, problem: str
) -> None:
    env = environ(**{"LISTEN_PID": str(PID), **values})

    with pytest.raises(ConfigError, match=f"^{variable}: ") as caught:
        parse_listen_fds(env, PID)
    assert problem in str(caught.value)


# A child that takes what it was handed and says what it found.
_TAKE = """
import json, os, socket, sys
from network.core.errors import ConfigError
from network.node.sockets import inherited
try:
    fds = {name: inherited(name) for name in ("peer", "api")}
except ConfigError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
def port(fd):
    sock = socket.socket(fileno=fd)
    try:
        return sock.getsockname()[1]
    finally:
        sock.detach()
print(json.dumps({
    "ports": {n: fd and port(fd) for n, fd in fds.items()},
    "inheritable": [os.get_inheritable(fd) for fd in fds.values() if fd is not None],
    "again": inherited("peer"),
    "left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}))
"""


def take_in_child(sockets: dict[str, socket.socket]) -> dict[str, object]:
    command, fds = activated([sys.executable, "-c", _TAKE], sockets)
    result = subprocess.run(
        command,
        pass_fds=fds,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    found: dict[str, object] = json.loads(result.stdout)
    return found


def test_a_process_takes_the_sockets_handed_to_it_once() -> None:
    with listening_socket() as peer, listening_socket() as api:
        found = take_in_child({"peer": peer, "api": api})

        assert found["ports"] == {"peer": port_of(peer), "api": port_of(api)}
    assert found["inheritable"] == [False, False]  # nothing the node starts inherits them
    assert found["again"] is None  # whoever adopted it owns it
    assert found["left"] == []  # the variables are unset once read


def test_a_socket_that_does_not_listen_is_refused() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        found = take_in_child({"peer": bound})

    assert "is not a listening socket" in str(found["error"])
