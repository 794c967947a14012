"""`cpn conformance`: the protocol's cases driven from outside against a real node."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Network, rows
from tests.test_cli import CPN

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    # USA is in the roster and never runs: the runner speaks as USA.
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]}, extra_nodes=("USA",))
    try:
        network.start("DEU")
        yield network
    finally:
        network.close()


def conformance(network: Network, url: str, peer: str) -> subprocess.CompletedProcess[str]:
    config = str(network.nodes["USA"].config)
    return subprocess.run(
        [CPN, "conformance", url, "--config", config, "--peer", peer, "--quiet"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=network.root,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_our_node_passes_every_case(net: Network) -> None:
    run = conformance(net, f"wss://127.0.0.1:{net.nodes['DEU'].peer_port}", "DEU")

    assert run.returncode == 0, run.stdout + run.stderr
    assert "17 of 17 passed" in run.stdout
    assert "FAIL" not in run.stdout
    # The node recorded what the runner sent from outside.
    actions = {a for (a,) in rows(net.nodes["DEU"].store, "SELECT action FROM audit")}
    assert {"received", "id_conflict", "rejected", "link_protocol_error"} <= actions


def test_a_node_that_is_not_the_one_named_fails_and_the_runner_says_where(net: Network) -> None:
    net.start("FRA")
    # FRA's port, while the runner expects DEU: the node is not the one it claims to test.
    run = conformance(net, f"wss://127.0.0.1:{net.nodes['FRA'].peer_port}", "DEU")

    assert run.returncode == 1
    assert "FAIL" in run.stdout and "handshake" in run.stdout
