"""The link cut, delayed and flapping through a TCP proxy: messages wait, then all arrive once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from network.samples import sample_body
from tests.faults.checks import check_run
from tests.faults.proxy import FlapSchedule, Proxy
from tests.harness import Network, audited, pause, rows, wait_for

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
        network.start("FRA", "DEU")
        yield network, proxy
    finally:
        proxy.close()
        network.close()


def linked(network: Network) -> bool:
    return peer_linked(network, "FRA", "DEU")


def peer_linked(network: Network, node_id: str, peer: str) -> bool:
    status, answer = network.api(node_id, "GET", "/api/peers")
    return status == 200 and any(p["id"] == peer and p["linked"] for p in answer["peers"])


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


def receipts_passing(network: Network, node_id: str) -> float:
    """The node's end-to-end receipts for others waiting for their way back (/metrics)."""
    (sample,) = network.metric_families(node_id)["cpn_receipts_passing"].samples
    return sample.value


def test_an_end_to_end_receipt_whose_way_back_is_cut_waits_for_it(tmp_path: Path) -> None:
    """FRA -> DEU -> KEN, with USA linked to FRA and DEU but off the message's path. The
    link FRA - DEU is cut before KEN's receipt comes back to DEU: DEU keeps it for FRA,
    where once it sent it by its best route to FRA, to USA, which never held the message
    and refused it (FRA then had it only when it sent again, minutes on)."""
    links = {"FRA": ["DEU", "USA"], "DEU": ["KEN", "USA"], "USA": [], "KEN": []}
    network = Network(tmp_path, links, proxied=("DEU",), retry_seconds=600)
    deu = network.nodes["DEU"]
    assert deu.proxy_socket is not None
    to_deu = Proxy(deu.proxy_socket, deu.listen_port).start()  # FRA's link to DEU alone
    try:
        network.start("KEN", "USA", "DEU", "FRA")
        for node_id, peer in (("FRA", "DEU"), ("FRA", "USA"), ("DEU", "KEN"), ("DEU", "USA")):
            wait_for(
                lambda n=node_id, p=peer: peer_linked(network, n, p), what=f"{node_id} - {peer}"
            )
        first = network.send("FRA", "KEN", "preservation", sample_body("preservation"))
        network.wait_state("FRA", first, {"delivered"})  # FRA's route to KEN is known
        ken = network.nodes["KEN"].process
        assert ken is not None
        ken.send_signal(signal.SIGSTOP)  # its link stays up; what DEU sends it waits

        message_id = network.send("FRA", "KEN", "preservation", sample_body("preservation"))
        wait_for(lambda: audited(network, "FRA", "hop_receipt", message_id), what="DEU took it")
        to_deu.partition()
        wait_for(lambda: not peer_linked(network, "DEU", "FRA"), what="DEU to see FRA gone")
        ken.send_signal(signal.SIGCONT)
        wait_for(
            lambda: audited(network, "DEU", "receipt_passed_on", message_id),
            what="KEN's receipt at DEU",
        )
        pause(3, "the cut lasts: DEU's routes to FRA move to USA meanwhile")
        waiting = receipts_passing(network, "DEU")
        to_deu.heal()
        network.wait_state("FRA", message_id, {"delivered"}, timeout=30)
        network.stop("FRA")

        refused_at_usa = rows(
            network.nodes["USA"].store, "SELECT detail FROM audit WHERE action = 'receipt_rejected'"
        )
        assert refused_at_usa == []
        sends = audited(network, "FRA", "sent", message_id)
        assert len(sends) == 1, sends  # delivered by KEN's first receipt, not a resend's
        passed = audited(network, "DEU", "receipt_passed_on", message_id)
        assert passed == [{"to": "FRA", "via": "FRA"}]
        assert waiting == 1  # what an operator sees meanwhile
        assert receipts_passing(network, "DEU") == 0
    finally:
        to_deu.close()
        network.close()
