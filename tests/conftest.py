"""Shared fixtures: a small public-key infrastructure built in memory."""

from __future__ import annotations

import compileall
import datetime
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from network.core.crypto import (
    HpkePrivateKey,
    HpkeSuite,
    SigningKey,
    generate_hpke_key,
    generate_signing_key,
    generate_tls_identity,
)
from network.core.records import NodeId
from network.core.roster import Card, Roster, build_roster, load_roster
from network.node.keys import country_name
from tests.harness import REPO, run

NOW = 1_795_000_000_000  # 2026-11-18, ms since the epoch
DAY = 24 * 3600 * 1000


def pytest_sessionstart(session: pytest.Session) -> None:
    """The project's bytecode written before any node starts. The suite starts some 500
    processes (nodes, `cpn` commands); where PYTHONDONTWRITEBYTECODE is set (as on the
    machines here) none writes it, and each compiled the project again from source, about
    a third of its start (130 of 480 ms). compileall writes it whatever that says."""
    compileall.compile_dir(REPO / "network", quiet=1)


@dataclass
class Node:
    id: NodeId
    signing: SigningKey
    hpke: HpkePrivateKey
    card: Card


@dataclass
class Pki:
    keeper: SigningKey
    nodes: dict[str, Node]
    roster: Roster

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]


_TLS: dict[str, bytes] = {}


def tls_cert(node_id: str) -> bytes:
    """A real certificate (DER) per id, made once: generating EC keys is not free."""
    if node_id not in _TLS:
        _TLS[node_id] = generate_tls_identity(node_id, now=datetime.datetime.now(datetime.UTC))[2]
    return _TLS[node_id]


def make_node(node_id: str, suite: HpkeSuite = HpkeSuite.MLKEM768_X25519, port: int = 7000) -> Node:
    signing = generate_signing_key()
    hpke = generate_hpke_key(suite)
    card = Card(
        id=NodeId(node_id),
        name=country_name(node_id),
        url=f"wss://127.0.0.1:{port}",
        signing_key=signing.verify_key(),
        hpke_key=hpke.public,
        tls_cert=tls_cert(node_id),
    )
    return Node(NodeId(node_id), signing, hpke, card)


def sign_roster(
    keeper: SigningKey,
    nodes: dict[str, Node],
    *,
    version: int = 1,
    revoked: tuple[str, ...] = (),
    issued: int = NOW - DAY,
    valid_until: int = NOW + 365 * DAY,
) -> bytes:
    return build_roster(
        [n.card for n in nodes.values()],
        keeper=keeper,
        version=version,
        issued=issued,
        valid_until=valid_until,
        revoked=revoked,
    )


@pytest.fixture(scope="session")
def pki() -> Pki:
    """FRA, DEU and USA with the hybrid suite, KEN with X25519 alone; roster version 1."""
    keeper = generate_signing_key()
    nodes = {i: make_node(i) for i in ("FRA", "DEU", "USA")}
    nodes["KEN"] = make_node("KEN", HpkeSuite.X25519)
    data = sign_roster(keeper, nodes)
    roster = load_roster(data, keeper=keeper.verify_key(), now=NOW)
    return Pki(keeper, nodes, roster)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel built from the tracked sources, installed in a fresh venv; the build log.
    Once a run: tests/test_packaging.py and tests/test_operations.py share it (built for
    each, it took 16 s a time)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (t.decode() for t in tracked)):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    log = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-w",
        root / "dist",
        source,
        cwd=root,
        env=env,
    )
    [wheel] = (root / "dist").glob("cpn-*.whl")
    venv = root / "venv"
    run("python3.11", "-m", "venv", venv, cwd=root, env=env)
    run(venv / "bin" / "pip", "install", "--quiet", wheel, cwd=root, env=env)
    return venv, log
