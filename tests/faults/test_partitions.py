"""The link cut, delayed and flapping through a TCP proxy: messages wait, then all arrive once."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from network.samples import sample_body
from tests.faults.checks import check_run
from tests.faults.proxy import FlapSchedule, Proxy
from tests.harness import Network, pause, rows, wait_for

pytestmark = pytest.mark.timeout(120)

SEED = int(os.environ.get("CPN_FAULT_SEED", "11"))


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Network, Proxy]]:
    """FRA dials DEU through the proxy (the roster points FRA at it); DEU does not dial."""
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []}, proxied=("DEU",), retry_seconds=5)
    deu = network.nodes["DEU"]
    assert deu.proxy_socket is not None
    proxy = Proxy(deu.proxy_socket, deu.listen_port).start()
    try:
        network.start("FRA", wait=False)
        network.start("DEU")
        network.wait_healthy("FRA")
        yield network, proxy
    finally:
        proxy.close()
        network.close()


def linked(network: Network) -> bool:
    status, answer = network.api("FRA", "GET", "/api/peers")
    return status == 200 and any(p["id"] == "DEU" and p["linked"] for p in answer["peers"])


def send(network: Network, count: int) -> set[str]:
    return {
        network.send("FRA", "DEU", "emergency", sample_body("emergency"), "urgent")
        for _ in range(count)
    }


def test_a_partition_holds_messages_back_and_healing_delivers_each_once(
    proxied: tuple[Network, Proxy],
) -> None:
    network, proxy = proxied
    before = send(network, 5)
    network.wait_all("FRA", "out", 5, {"delivered"}, timeout=30)

    proxy.partition()
    wait_for(lambda: not linked(network), timeout=10, what="FRA to see the link down")
    during = send(network, 20)
    wait_for(  # FRA redials and is refused meanwhile
        lambda: (
            proxy.refused >= 1
            and rows(network.nodes["FRA"].store, "SELECT 1 FROM peers WHERE failures > 0")
        ),
        what="FRA's redial refused by the partition",
    )
    held = {m["id"]: m["state"] for m in network.list("FRA", "out") if m["id"] in during}
    inbox_during = len(network.list("DEU", "in"))
    proxy.heal()
    network.wait_all("FRA", "out", 25, {"delivered"}, timeout=40)
    network.stop("FRA")
    network.stop("DEU")

    assert set(held.values()) <= {"queued", "sent"} and len(held) == 20
    assert inbox_during == 5
    assert proxy.refused >= 1 and proxy.partitions == 1
    failures = rows(network.nodes["FRA"].store, "SELECT failures, last_error FROM peers")
    assert failures, "FRA recorded no failed dial"
    assert check_run(network, ["FRA"], before | during) == 25


def test_a_flapping_slow_link_delivers_a_stream_exactly_once(
    proxied: tuple[Network, Proxy],
) -> None:
    network, proxy = proxied
    proxy.delay(0.05)
    proxy.flap(FlapSchedule(SEED, up=(0.3, 1.2), down=(0.1, 0.6)))
    sent: set[str] = set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sent |= send(network, 3)
        pause(0.05, "an officer's pace: a stream over the flapping link, not one burst")
    proxy.heal()
    network.wait_all("FRA", "out", len(sent), {"delivered"}, timeout=60)
    network.stop("FRA")
    network.stop("DEU")

    assert proxy.partitions >= 3, f"seed {SEED}: the link went down {proxy.partitions} times"
    assert check_run(network, ["FRA"], sent) == len(sent)
