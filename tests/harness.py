"""A real network for tests: node processes on 127.0.0.1 with real TLS, SQLite and sockets.

`Network(tmp_path, links={...})` makes keys, the keeper, a signed roster,
node configs and one officer and one auditor per node; then `start`, `stop`
(SIGTERM), `kill` (SIGKILL) and `api` drive the nodes as a user would. Every
process it starts is killed in `close`.

Ports are never guessed: the harness binds each node's peer and API sockets
to 127.0.0.1:0 itself, reads their ports for the roster and the configs, and
hands the sockets to the node as systemd would (socket activation,
network/node/sockets.py). It holds them for the network's life, so a node
restarts on the same ports with no moment in which another socket can take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from network.core.crypto import HpkeSuite
from network.core.records import NodeId
from network.core.roster import build_roster
from network.node.keys import init_keeper, init_node_keys, load_keeper
from network.node.officer import issue_token
from network.node.store import Store

REPO = Path(__file__).resolve().parent.parent


_handed_out: set[int] = set()

# Runs in the child between fork and the node: puts the inherited sockets at 3, 4, ...
# and says so in the environment, with the pid the node will have (exec keeps it).
_ACTIVATE = """
import fcntl, os, sys
fds, names, command = [int(f) for f in sys.argv[1].split(",")], sys.argv[2], sys.argv[3:]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4, ...
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names, LISTEN_PID=str(os.getpid()))
os.execv(command[0], command)
"""


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, so that nothing else takes it
    while the test runs, and not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield port_of(sock)


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 on a port the kernel chose."""
    sock = socket.create_server(("127.0.0.1", 0))
    return sock


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def activated(command: list[str], sockets: dict[str, socket.socket]) -> tuple[list[str], list[int]]:
    """`command` run with `sockets` handed down by name, as systemd's socket activation does:
    the argv to run and the descriptors to pass (`subprocess.Popen(pass_fds=...)`)."""
    fds = [sock.fileno() for sock in sockets.values()]
    shim = [sys.executable, "-c", _ACTIVATE, ",".join(map(str, fds)), ":".join(sockets)]
    return [*shim, *command], fds


T = TypeVar("T")


def rows(path: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a node's store, read as an auditor would: read-only, beside a running node."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(query, params).fetchall()


def audited(
    network: Network, node_id: str, action: str, message_id: str | None = None
) -> list[dict[str, Any]]:
    """The details of `node_id`'s audit entries of `action` (of `message_id` only, if
    given), in the log's order."""
    query = "SELECT detail FROM audit WHERE action = ?"
    params: tuple[object, ...] = (action,)
    if message_id is not None:
        query, params = query + " AND message_id = ?", (action, message_id)
    found = rows(network.nodes[node_id].store, query + " ORDER BY seq", params)
    return [json.loads(detail) for (detail,) in found]


def sends_beyond_links(path: Path, peer: str) -> dict[str, tuple[int, int]]:
    """Messages a node sent to `peer` more times than links to `peer` came up before their
    last send: {id: (sends, links)}. Both ends dial at start, and of two links that come up
    at once the one the smaller id dialled stays; what went on the other goes again on the
    one kept (the receiver stores it once). So a message may go once per link, never twice
    on one."""
    links = 0
    sends: dict[str, tuple[int, int]] = {}
    for action, message_id, detail in rows(
        path, "SELECT action, message_id, detail FROM audit ORDER BY seq"
    ):
        if action == "link_up" and json.loads(detail).get("peer") == peer:
            links += 1
        elif action == "sent" and json.loads(detail).get("to") == peer:
            sends[message_id] = (sends.get(message_id, (0, 0))[0] + 1, links)
    return {m: (sent, up) for m, (sent, up) in sends.items() if sent > up}


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 30.0,
    what: str = "condition",
    *,
    poll: float = 0.2,
) -> T:
    """Poll `check` every `poll` seconds until it returns something true, and return that;
    AssertionError naming `what` after `timeout` seconds. The suite's one way to wait for
    something to happen: a node runs in another process, and tells us only through its API,
    its store and its log."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def cpn(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m network ARGS` as a user runs it, from the repository: its output as text.
    `env` adds to the environment (CPN_API and CPN_TOKEN, a clock moved by `skewed`)."""
    return subprocess.run(
        [sys.executable, "-m", "network", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    """A command that must succeed (the test fails with its output otherwise): its output."""
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


# Debian's multiarch path (x86_64-linux-gnu, aarch64-linux-gnu, ...): .ci/run installs it.
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


def skewed(offset: str) -> dict[str, str]:
    """The environment that runs a process with its wall clock moved by `offset` ("+10m")."""
    assert LIBFAKETIME is not None, "libfaketime is missing: apt-get install -y faketime"
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


class DrivenClock:
    """A node's wall clock that the test moves forward (libfaketime reading its offset from
    a file at every call): time passing is then a step the test takes, not a wait."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        path.write_text("+0\n")

    @property
    def env(self) -> dict[str, str]:
        """The environment to start the node with (`Network.start(..., env=...)`)."""
        env = skewed("+0")
        del env["FAKETIME"]
        return {**env, "FAKETIME_TIMESTAMP_FILE": str(self.path)}

    def advance(self, seconds: int) -> None:
        self.offset += seconds
        self.path.write_text(f"+{self.offset}\n")


def pause(seconds: float, why: str) -> None:
    """Let `seconds` pass on purpose, because time passing is the thing under test or the
    fault injected (an attacker's pace, a flapping link, a kill at a random moment): never
    to wait for something to happen (that is `wait_for`). `why` says which, for the reader."""
    time.sleep(seconds)


def unread_errors(loop: asyncio.AbstractEventLoop) -> list[asyncio.Future[Any]]:
    """`loop`'s futures holding an error no one has read: asyncio reports each as "Future
    exception was never retrieved" whenever it is collected, at no set time."""
    return [
        f
        for f in gc.get_objects()
        if isinstance(f, asyncio.Future) and f.get_loop() is loop and f._log_traceback
    ]


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Let the other tasks of this event loop run until `condition()` holds: a yield per
    look, not a delay (`wait_for` is for other processes). AssertionError past `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError("timed out waiting for the other tasks")
        await asyncio.sleep(0)


async def pause_async(seconds: float, why: str) -> None:
    """`pause` inside an event loop (a slow server, a proxy's delay, a link going down)."""
    await asyncio.sleep(seconds)


def free_port() -> int:
    """A free port below the ephemeral range (32768+), where outgoing connections take theirs:
    a port picked there could be taken by a dialling socket before its node listens.

    A guess, which something else may take before it is bound: only for a port that must
    be named before anything can bind it (the demo configs `cpn up` reads and binds
    itself). Everywhere else bind port 0 and read the port (`listening_socket`)."""
    while True:
        port = random.randrange(20_000, 32_000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


@dataclass
class Node:
    id: str
    config: Path
    store: Path
    api: str
    peer_port: int  # where the roster says it is
    log: Path
    listen_port: int = 0  # where it listens, if not there (a proxy sits on `peer_port`)
    metrics: str = ""  # the URL of its metrics listener
    tokens: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    # The listening sockets handed to the node at each start (peer, api, metrics), and the one
    # a proxy serves on when the node is `proxied`; the harness holds them open throughout.
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    proxy_socket: socket.socket | None = None


class Network:
    def __init__(
        self,
        root: Path,
        links: dict[str, list[str]],
        *,
        suite: HpkeSuite = HpkeSuite.X25519,
        extra_nodes: tuple[str, ...] = (),
        retry_seconds: float = 60,
        own_rosters: bool = False,
        extra_config: dict[str, str] | None = None,
        api_config: str = "",
        proxied: tuple[str, ...] = (),
        desks: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        """`own_rosters`: each node reads its own copy of the roster (to watch one spread);
        `extra_config`: TOML appended to a node's config (deadlines, alerts);
        `api_config`: TOML lines added to every node's [api] table;
        `proxied`: nodes that listen on a port of their own while the roster points
        their peers at `peer_port`, where a test puts a proxy (tests/faults/proxy.py);
        `desks`: a node's duty telephone numbers, on its card (with the language en)."""
        self.root = root
        self.keys = root / "keys"
        self.nodes: dict[str, Node] = {}
        now = datetime.datetime.now(datetime.UTC)
        init_keeper(self.keys / "authority")
        ids = sorted(set(links) | {p for peers in links.values() for p in peers} | set(extra_nodes))
        cards = []
        for node_id in ids:
            sockets = {n: listening_socket() for n in ("peer", "api", "metrics")}
            proxy_socket = listening_socket() if node_id in proxied else None
            listen_port, api_port = port_of(sockets["peer"]), port_of(sockets["api"])
            metrics_port = port_of(sockets["metrics"])
            peer_port = port_of(proxy_socket) if proxy_socket is not None else listen_port
            cards.append(
                init_node_keys(
                    self.keys / node_id,
                    NodeId(node_id),
                    url=f"wss://127.0.0.1:{peer_port}",
                    suite=suite,
                    now=now,
                    phones=(desks or {}).get(node_id, ()),
                    languages=("en",) if node_id in (desks or {}) else (),
                )
            )
            config = root / "nodes" / f"{node_id}.toml"
            config.parent.mkdir(exist_ok=True)
            roster = f"../var/{node_id}-roster.json" if own_rosters else "../keys/roster.json"
            config.write_text(
                f'id = "{node_id}"\n'
                f'[peer]\nlisten = "127.0.0.1:{listen_port}"\n'
                f'url = "wss://127.0.0.1:{peer_port}"\n'
                f'[api]\nlisten = "127.0.0.1:{api_port}"\n{api_config}'
                f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
                f'[store]\npath = "../var/{node_id}.sqlite"\n'
                f'[keys]\ndir = "../keys/{node_id}"\nroster = "{roster}"\n'
                f'keeper = "../keys/authority/keeper.json"\n'
                f"[links]\npeers = {json.dumps(links.get(node_id, []))}\n"
                f"[delivery]\nretry_seconds = {retry_seconds}\n"
                + (extra_config or {}).get(node_id, "")
            )
            self.nodes[node_id] = Node(
                node_id,
                config,
                root / "var" / f"{node_id}.sqlite",
                f"http://127.0.0.1:{api_port}",
                peer_port,
                root / "var" / f"{node_id}.log",
                listen_port,
                metrics=f"http://127.0.0.1:{metrics_port}",
                sockets=sockets,
                proxy_socket=proxy_socket,
            )
        self.keeper = load_keeper(self.keys / "authority")
        self.cards = cards
        self.own_rosters = own_rosters
        (root / "var").mkdir(exist_ok=True)
        self.write_roster(cards, version=1)
        for node in self.nodes.values():
            node.tokens = asyncio.run(self._users(node))

    def write_roster(
        self,
        cards: list[Any],
        *,
        version: int,
        revoked: tuple[str, ...] = (),
        only: str | None = None,
        valid_for_ms: int = 90 * 86_400_000,
    ) -> bytes:
        """Sign a roster valid from a minute ago for `valid_for_ms` (negative: expired);
        write it where every node (or only node `only`) reads it."""
        now = int(time.time() * 1000)
        data = build_roster(
            cards,
            keeper=self.keeper,
            version=version,
            issued=now - 60_000 + min(0, valid_for_ms),
            valid_until=now + valid_for_ms,
            revoked=revoked,
        )
        if not self.own_rosters:
            (self.keys / "roster.json").write_bytes(data)
            return data
        for node_id in self.nodes if only is None else [only]:
            self.roster_path(node_id).write_bytes(data)
        return data

    def roster_path(self, node_id: str) -> Path:
        if self.own_rosters:
            return self.root / "var" / f"{node_id}-roster.json"
        return self.keys / "roster.json"

    @staticmethod
    async def _users(node: Node) -> dict[str, str]:
        store = await Store.open(node.store)
        try:
            now = int(time.time() * 1000)
            return {
                role: await issue_token(store, f"{role}-{node.id}", role, actor="test", now=now)
                for role in ("officer", "auditor")
            }
        finally:
            await store.close()

    # -- processes ---------------------------------------------------------------

    def start(
        self,
        *node_ids: str,
        wait: bool = True,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        """Start the nodes all at once, then (`wait`) wait for each to be healthy: each
        listens from the start (its sockets are made here and passed on), so the order in
        which they come up does not matter, and a start is mostly its imports, which run
        side by side. `env` adds to the nodes' environment (LD_PRELOAD, FAKETIME);
        `preexec_fn` runs in each child before it executes (setrlimit)."""
        for node_id in node_ids:
            node = self.nodes[node_id]
            node.log.parent.mkdir(exist_ok=True)
            log = node.log.open("ab")
            command, fds = activated(
                [sys.executable, "-m", "network", "node", "run", str(node.config)], node.sockets
            )
            node.process = subprocess.Popen(
                command,
                pass_fds=fds,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                preexec_fn=preexec_fn,
            )
            log.close()
        if wait:
            for node_id in node_ids:
                self.wait_healthy(node_id)

    def wait_healthy(self, node_id: str, timeout: float = 20.0) -> None:
        node = self.nodes[node_id]

        def healthy() -> bool:
            if node.process is not None and node.process.poll() is not None:
                raise AssertionError(f"{node_id} exited: {node.log.read_text()[-3000:]}")
            try:
                return self.api(node_id, "GET", "/healthz", token=None)[0] == 200
            except OSError:
                return False

        try:
            wait_for(healthy, timeout, what=f"{node_id} healthy", poll=0.05)
        except AssertionError as exc:
            if "exited" in str(exc):
                raise
            raise AssertionError(
                f"{node_id} not healthy after {timeout}s: {node.log.read_text()[-3000:]}"
            ) from None

    def stop(self, node_id: str, timeout: float = 20.0) -> int:
        node = self.nodes[node_id]
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        code = node.process.wait(timeout=timeout)
        node.process = None
        return code

    def kill(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert node.process is not None
        node.process.kill()
        node.process.wait(timeout=10)
        node.process = None

    def close(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait(timeout=10)
            node.process = None
            for sock in [*node.sockets.values(), node.proxy_socket]:
                if sock is not None:
                    sock.close()

    # -- the API -----------------------------------------------------------------

    def api(
        self,
        node_id: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "officer",
    ) -> tuple[int, Any]:
        node = self.nodes[node_id]
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(node.api + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {node.tokens.get(token, token)}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def metrics(self, node_id: str) -> str:
        """What the node's metrics listener (loopback, no token) answers: Prometheus text."""
        with urllib.request.urlopen(self.nodes[node_id].metrics + "/metrics", timeout=10) as page:
            return str(page.read().decode())

    def metric_families(self, node_id: str) -> dict[str, Metric]:
        """The node's metrics, parsed: each family by name."""
        return {f.name: f for f in text_string_to_metric_families(self.metrics(node_id))}

    def add_user(self, node_id: str, name: str, role: str, *, key: str | None = None) -> str:
        """A machine user `name` added with `cpn user add --token`, as an administrator does;
        its token, kept as `tokens[key or name]` for `api(..., token=...)`."""
        added = cpn(
            "user", "add", name, "--token", "--role", role,
            "--config", str(self.nodes[node_id].config),
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        token = added.stdout.split()[-1]
        self.nodes[node_id].tokens[key or name] = token
        return token

    def cli_env(self, node_id: str, token: str = "officer") -> dict[str, str]:
        """The environment an officer's commands read the node from (`cpn(..., env=...)`)."""
        node = self.nodes[node_id]
        return {"CPN_API": node.api, "CPN_TOKEN": node.tokens.get(token, token)}

    def send(
        self, sender: str, to: str, message_type: str, body: Any, priority: str = "urgent"
    ) -> str:
        status, answer = self.api(
            sender,
            "POST",
            "/api/messages",
            {"to": to, "type": message_type, "priority": priority, "body": body},
        )
        assert status == 202, answer
        message_id: str = answer["id"]
        return message_id

    def wait_state(
        self, node_id: str, message_id: str, states: set[str], timeout: float = 20.0
    ) -> dict[str, Any]:
        """Poll the listing (reading the message itself would audit an `opened` each time)."""
        seen: Any = None

        def reached() -> dict[str, Any] | None:
            nonlocal seen
            for box in ("out", "in"):
                for message in self.list(node_id, box):
                    if message["id"] == message_id:
                        seen = message
                        if message["state"] in states:
                            return message
            return None

        try:
            return wait_for(reached, timeout, poll=0.1)
        except AssertionError:
            raise AssertionError(
                f"{message_id} on {node_id} never reached {states}: {seen}"
            ) from None

    def wait_all(
        self, node_id: str, box: str, count: int, states: set[str], timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []

        def reached() -> list[dict[str, Any]] | None:
            nonlocal messages
            messages = self.list(node_id, box)
            if len(messages) >= count and all(m["state"] in states for m in messages):
                return messages
            return None

        try:
            return wait_for(reached, timeout)
        except AssertionError:
            states_seen = sorted({m["state"] for m in messages})
            raise AssertionError(
                f"{node_id} {box}: {len(messages)} messages, states {states_seen}"
            ) from None

    def list(self, node_id: str, box: str, limit: int = 500) -> list[dict[str, Any]]:
        status, answer = self.api(node_id, "GET", f"/api/messages?box={box}&limit={limit}")
        assert status == 200, answer
        messages: list[dict[str, Any]] = answer["messages"]
        return messages
