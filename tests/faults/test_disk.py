"""The store's disk full: the node refuses new work with a clear error and loses nothing.

The disk fills for real at the process edge: RLIMIT_FSIZE, lowered to 0 on
the running node (prlimit, no privileges needed for our own processes), makes
every write(2) that would put a byte in a file fail with EFBIG, as a full
disk fails them with ENOSPC: SQLite's commits, the WAL's growth, the log.
Raised again, the disk has room again.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from network.samples import sample_body
from tests.faults.checks import check_run, undelivered
from tests.harness import Network, rows, wait_for

pytestmark = pytest.mark.timeout(120)


def disk_full(network: Network, node_id: str, full: bool) -> None:
    process = network.nodes[node_id].process
    assert process is not None
    _, hard = resource.prlimit(process.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (0 if full else hard, hard))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]}, retry_seconds=2)
    try:
        network.start("FRA", wait=False)
        network.start("DEU")
        network.wait_healthy("FRA")
        yield network
    finally:
        network.close()


def post(network: Network, sender: str, to: str) -> tuple[int, dict[str, object]]:
    request = {"to": to, "type": "emergency", "priority": "urgent"}
    return network.api(
        sender, "POST", "/api/messages", {**request, "body": sample_body("emergency")}
    )


def test_a_full_disk_refuses_new_work_loses_nothing_and_carries_on_with_room(
    pair: Network,
) -> None:
    before = {pair.send("FRA", "DEU", "emergency", sample_body("emergency")) for _ in range(5)}
    before.add(pair.send("DEU", "FRA", "emergency", sample_body("emergency")))
    pair.wait_all("FRA", "out", 5, {"delivered"})
    pair.wait_all("DEU", "out", 1, {"delivered"})
    stored_before = rows(pair.nodes["DEU"].store, "SELECT id, state FROM messages ORDER BY id")

    disk_full(pair, "DEU", True)
    refused, answer = post(pair, "DEU", "FRA")  # DEU's officer: nothing can be queued
    during = {pair.send("FRA", "DEU", "emergency", sample_body("emergency")) for _ in range(10)}
    time.sleep(1.5)  # FRA offers them; DEU cannot keep them and closes the link
    wait_for(lambda: undelivered(pair, "FRA") == 10, what="FRA holding the ten")
    healthy = pair.api("DEU", "GET", "/healthz", token=None)[0]
    listed, inbox = pair.api("DEU", "GET", "/api/messages?box=in")  # reads still work
    stored_during = rows(pair.nodes["DEU"].store, "SELECT id, state FROM messages ORDER BY id")
    alive = pair.nodes["DEU"].process.poll()  # type: ignore[union-attr]
    held = {m["state"] for m in pair.list("FRA", "out") if m["id"] in during}

    disk_full(pair, "DEU", False)
    pair.wait_all("FRA", "out", 15, {"delivered"}, timeout=40)
    after = pair.send("DEU", "FRA", "emergency", sample_body("emergency"))
    pair.wait_state("DEU", after, {"delivered"})
    pair.stop("FRA")
    pair.stop("DEU")

    assert refused == 503 and answer["error"].startswith("the node's store is unavailable (")
    assert healthy == 200 and listed == 200 and len(inbox["messages"]) == 5
    assert stored_during == stored_before  # nothing half-written, nothing lost
    assert held <= {"queued", "sent"}
    assert alive is None, "DEU exited when its disk filled"
    assert "store_error" in pair.nodes["FRA"].log.read_text()  # DEU closed the link, saying why
    assert check_run(pair, ["FRA", "DEU"], before | during | {after}) == 17
