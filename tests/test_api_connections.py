"""The API's listener holds what its officers need, whatever a stranger opens.

Real node processes. Anyone who can reach the API's port can open connections and send
nothing, or half a request; before, each was held for aiohttp's hour of keep-alive, and
a thousand of them left the node out of file descriptors: it answered no request, not
even /healthz. Now a listener holds at most `CONNECTIONS_AT_MOST`, making room from the
idle ones of the address holding the most, and closes a connection with no request
under way after `[api] connection_idle`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pathlib
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import aiohttp
import pytest

from network.api.web import ACCOUNT_REQUESTS_AT_MOST, CONNECTIONS_AT_MOST
from network.node.context import REFUSALS_PER_MINUTE
from network.samples import sample_body
from tests.harness import Network, pause, rows, wait_for

pytestmark = pytest.mark.timeout(120)

DESCRIPTORS = 1024  # FRA's limit, as systemd gives a service by default
FLOOD = DESCRIPTORS + 100
IDLE_S = 2


def _descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


@contextmanager
def _network(tmp: pathlib.Path, api_config: str = "") -> Iterator[Network]:
    # This process holds the flood's sockets: room for them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 1024
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    network = Network(tmp, {"FRA": ["DEU"], "DEU": ["FRA"]}, api_config=api_config)
    try:
        network.start("DEU")
        network.start("FRA", preexec_fn=_descriptors)
        yield network
    finally:
        network.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def network(tmp_path: pathlib.Path) -> Iterator[Network]:
    """FRA and DEU, FRA with the default `connection_idle` (30 s): longer than a flood
    takes to open, so that what bounds it is the most a listener holds."""
    with _network(tmp_path) as network:
        yield network


@pytest.fixture
def quick_to_close(tmp_path: pathlib.Path) -> Iterator[Network]:
    with _network(tmp_path, f'connection_idle = "{IDLE_S}s"\n') as network:
        yield network


def _address(network: Network, node_id: str) -> tuple[str, int]:
    host, port = network.nodes[node_id].api.removeprefix("http://").split(":")
    return host, int(port)


def _flood(network: Network, stack: ExitStack) -> list[socket.socket]:
    """`FLOOD` connections to FRA's API: a third send nothing, a third half a request
    line, a third a request whose headers never end."""
    starts = [b"", b"GET /healthz HT", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"]
    opened = []
    for index in range(FLOOD):
        sock = stack.enter_context(socket.create_connection(_address(network, "FRA"), timeout=5))
        if starts[index % 3]:
            sock.sendall(starts[index % 3])
        opened.append(sock)
    return opened


def _descriptors_of(network: Network, node_id: str) -> int:
    process = network.nodes[node_id].process
    assert process is not None
    return len(os.listdir(f"/proc/{process.pid}/fd"))


def _message(priority: str = "urgent") -> dict[str, object]:
    return {
        "to": "DEU",
        "type": "preservation",
        "priority": priority,
        "body": sample_body("preservation"),
    }


def test_a_flood_of_connections_that_send_nothing_leaves_the_api_and_the_links_working(
    network: Network,
) -> None:
    with ExitStack() as stack:
        flood = _flood(network, stack)

        assert network.api("FRA", "GET", "/healthz", token=None)[0] == 200
        status, answer = network.api("FRA", "POST", "/api/messages", _message())
        assert status == 202, answer
        # Its link to DEU still works: the message is delivered, its receipt back.
        wait_for(
            lambda: (
                rows(
                    network.nodes["FRA"].store,
                    "SELECT state FROM messages WHERE id = ?",
                    (answer["id"],),
                )
                == [("delivered",)]
            ),
            30,
            what="delivered while the flood's connections are open",
        )
        # What FRA holds is bounded, far within its descriptors; the flood's oldest were
        # closed to make room (the server's end: a read sees the end of the stream).
        assert _descriptors_of(network, "FRA") < CONNECTIONS_AT_MOST + 100
        flood[0].settimeout(10)
        assert flood[0].recv(1) == b""
        # Audited within the refusal budget: a flood does not grow the log without bound.
        shed = "SELECT detail FROM audit WHERE action = 'connection_shed'"
        wait_for(
            lambda: len(rows(network.nodes["FRA"].store, shed)) == REFUSALS_PER_MINUTE,
            30,
            what="the budget's entries for the connections shed",
        )
        details = [json.loads(detail) for (detail,) in rows(network.nodes["FRA"].store, shed)]
        assert {(d["remote"], d["why"]) for d in details} == {
            ("127.0.0.1", "idle, closed to make room")
        }


def test_a_request_under_way_is_never_cut_to_make_room(network: Network) -> None:
    node = network.nodes["FRA"]
    headers = {"Authorization": f"Bearer {node.tokens['officer']}"}

    async def follow_through_a_flood() -> list[str]:
        seen: list[str] = []
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{node.api}/api/events", headers=headers) as stream,
        ):
            assert stream.status == 200
            with ExitStack() as stack:
                await asyncio.to_thread(_flood, network, stack)
                async with session.post(
                    f"{node.api}/api/messages", json=_message("flash"), headers=headers
                ) as posted:
                    assert posted.status == 202
                    message_id = (await posted.json())["id"]
                # The stream, opened before the flood, still carries the news.
                async with asyncio.timeout(30):
                    async for line in stream.content:
                        if line.startswith(b"data:"):
                            event = json.loads(line[5:])
                            seen.append(event.get("id"))
                            if event.get("id") == message_id:
                                return seen
        raise AssertionError(f"the stream ended; it carried {seen}")

    assert asyncio.run(follow_through_a_flood())


def test_a_connection_with_no_request_under_way_is_closed_after_connection_idle(
    quick_to_close: Network,
) -> None:
    network = quick_to_close
    with ExitStack() as stack:
        silent, half = (
            stack.enter_context(socket.create_connection(_address(network, "FRA"), timeout=30))
            for _ in range(2)
        )
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers that never end
        opened = time.monotonic()

        assert silent.recv(1) == b"" and half.recv(1) == b""  # closed by the server
        assert time.monotonic() - opened >= IDLE_S * 0.9

    # A kept-alive connection that asks in time is answered, and kept.
    kept = http.client.HTTPConnection(*_address(network, "FRA"), timeout=30)
    try:
        statuses, held = [], None
        for _ in range(3):
            kept.request("GET", "/healthz")
            response = kept.getresponse()
            statuses.append(response.status)
            response.read()
            held = held or kept.sock
        assert statuses == [200, 200, 200]
        assert held is not None and kept.sock is held  # one connection for the three
    finally:
        kept.close()


def test_a_request_trickled_in_by_someone_not_signed_in_is_cut_after_connection_idle(
    quick_to_close: Network,
) -> None:
    # Busy, a connection is never closed to make room: a passkey sign-in whose body never ends
    # would hold one for as long as its sender liked, and enough of them, the listener.
    with socket.create_connection(_address(quick_to_close, "FRA"), timeout=30) as trickle:
        trickle.sendall(
            b"POST /auth/passkey/finish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"ceremony": "'
        )
        opened = time.monotonic()

        answer = trickle.recv(65536)

        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"not answered within 2 s" in answer
        assert time.monotonic() - opened >= IDLE_S * 0.9


def _read_to_close(sock: socket.socket) -> bytes:
    """All a connection answers, until the server closes it (socket.timeout if it never)."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


_STALLED_BODIES = {
    "json": ("application/json", b'{"to": "DEU", "type": "preservation", "body": {"'),
    "multipart": (
        "multipart/form-data; boundary=b0",
        b'--b0\r\nContent-Disposition: form-data; name="attachment"; filename="a.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 300,
    ),
}


@pytest.mark.parametrize("form", sorted(_STALLED_BODIES))
def test_an_officers_upload_that_stops_arriving_is_cut_after_connection_idle(
    quick_to_close: Network, form: str
) -> None:
    # A laptop put to sleep mid-upload: busy, its connection is never closed to make room,
    # and TCP would give up on it only hours later. Nothing of it is stored.
    network = quick_to_close
    node = network.nodes["FRA"]
    content_type, started = _STALLED_BODIES[form]
    with socket.create_connection(_address(network, "FRA"), timeout=30) as upload:
        upload.sendall(
            f"POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Authorization: Bearer {node.tokens['officer']}\r\nContent-Length: 100000\r\n"
            "\r\n".encode()
            + started
        )
        opened = time.monotonic()

        answer = _read_to_close(upload)  # and the connection closed after it

    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    error = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert error == {
        "error": f"the request's body stopped arriving: nothing of it for {IDLE_S} s",
        "field": "body",
    }
    assert time.monotonic() - opened >= IDLE_S * 0.9
    assert rows(node.store, "SELECT count(*) FROM messages") == [(0,)]
    refused = rows(node.store, "SELECT actor, detail FROM audit WHERE action = 'request_refused'")
    assert [(actor, json.loads(detail)["status"]) for actor, detail in refused] == [
        ("officer-FRA", 408)
    ]


def test_an_upload_that_keeps_arriving_however_slowly_is_taken(quick_to_close: Network) -> None:
    network = quick_to_close
    node = network.nodes["FRA"]
    body = json.dumps(_message()).encode()
    pieces = [body[i : i + len(body) // 4 + 1] for i in range(0, len(body), len(body) // 4 + 1)]
    with socket.create_connection(_address(network, "FRA"), timeout=30) as upload:
        upload.sendall(
            "POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {node.tokens['officer']}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        opened = time.monotonic()
        for piece in pieces:
            pause(IDLE_S * 0.6, "an upload over a poor link: a piece every 1.2 s, never 2 s apart")
            upload.sendall(piece)
        answer = _read_to_close(upload)

    assert time.monotonic() - opened > IDLE_S * 2  # longer than a body may stop arriving
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
    assert rows(node.store, "SELECT count(*) FROM messages") == [(1,)]


def _held_submission(token: str) -> bytes:
    """A submission's head, its body of 1,000 bytes to follow once asked for."""
    return (
        "POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 1000\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()


def test_when_every_connection_is_busy_the_newcomer_is_turned_away_and_none_cut(
    network: Network,
) -> None:
    node = network.nodes["FRA"]
    # Two officers: one account may have at most `ACCOUNT_REQUESTS_AT_MOST` under way.
    heads = [
        _held_submission(node.tokens["officer"]),
        _held_submission(network.add_user("FRA", "second-officer", "officer")),
    ]
    started = b'{"to": "DEU", '
    with ExitStack() as stack:
        # Officers' submissions whose bodies are still arriving: each connection busy.
        # The node asks for each body ("100 Continue") as its handling begins, in the
        # same step as it marks the connection busy, and before it accepts another.
        busy = []
        for index in range(CONNECTIONS_AT_MOST):
            sock = stack.enter_context(
                socket.create_connection(_address(network, "FRA"), timeout=10)
            )
            sock.sendall(heads[index % 2])
            assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(started)
            busy.append(sock)
        shed = "SELECT detail FROM audit WHERE action = 'connection_shed'"
        newcomer = stack.enter_context(
            socket.create_connection(_address(network, "FRA"), timeout=10)
        )
        assert newcomer.recv(1) == b""  # closed at once, not after connection_idle
        wait_for(lambda: rows(node.store, shed), 10, what="the newcomer's entry")
        (detail,) = [json.loads(d) for (d,) in rows(node.store, shed)]
        assert detail["why"] == "turned away: every connection busy"

        # None of the busy ones was cut: each still takes the rest of its body.
        for sock in (busy[0], busy[-1]):
            sock.sendall(b" " * (1000 - len(started)))
            assert sock.recv(65536).startswith(b"HTTP/1.1 400")  # its body was not JSON
    # Once they go, there is room again.
    wait_for(
        lambda: network.api("FRA", "GET", "/healthz", token=None)[0] == 200,
        20,
        what="room once the busy connections closed",
    )


def test_one_account_holds_at_most_its_share_of_the_connections(network: Network) -> None:
    # Busy, a connection is never closed to make room: one account (a runaway script, a
    # stolen token trickling its bodies) could hold them all. It is refused at once past
    # its share, and everyone else keeps the rest.
    node = network.nodes["FRA"]
    head = _held_submission(node.tokens["officer"])
    with ExitStack() as stack:
        held = []
        for _ in range(ACCOUNT_REQUESTS_AT_MOST):
            sock = stack.enter_context(
                socket.create_connection(_address(network, "FRA"), timeout=10)
            )
            sock.sendall(head)
            assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b'{"to": "DEU", ')
            held.append(sock)

        def refused() -> dict[str, str] | None:
            status, answer = network.api("FRA", "GET", "/api/peers")
            return answer if status == 429 else None

        answer = wait_for(refused, timeout=20, what="the account's next request refused")
        assert f"{ACCOUNT_REQUESTS_AT_MOST} requests of account officer-FRA" in answer["error"]
        assert network.api("FRA", "GET", "/api/peers", token="auditor")[0] == 200

        # One of them ends (a body that is not JSON: 400), and the account is answered again.
        rest = b"x" * (1000 - len(b'{"to": "DEU", '))
        held[0].sendall(rest)
        assert held[0].recv(65536).startswith(b"HTTP/1.1 400")
        wait_for(
            lambda: network.api("FRA", "GET", "/api/peers")[0] == 200,
            timeout=20,
            what="the account answered again",
        )
    refused = rows(node.store, "SELECT actor, detail FROM audit WHERE action = 'request_refused'")
    assert ("officer-FRA", 429) in [(actor, json.loads(d)["status"]) for actor, d in refused]


def test_the_api_is_served_on_a_unix_socket_handed_down(tmp_path: pathlib.Path) -> None:
    # A reverse proxy beside the node may reach it through a Unix socket that systemd
    # hands down; its connections have no address ("local").
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]})
    path = tmp_path / "api.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(path))
    unix.listen()
    node = network.nodes["FRA"]
    node.sockets["api"].close()
    node.sockets["api"] = unix
    try:
        network.start("FRA", wait=False)

        def healthz() -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(5)
                client.connect(str(path))
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return client.recv(65536)

        wait_for(lambda: healthz().startswith(b"HTTP/1.1 200"), 20, what="FRA healthy")
        assert b'"node": "FRA"' in healthz()
    finally:
        network.close()
