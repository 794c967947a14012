"""Clock skew between nodes, injected for real: the node's process runs under libfaketime.

libfaketime (Debian's `faketime` package, which .ci/run installs when it is
missing) moves what the process reads from the wall clock (`time.time_ns`,
and OpenSSL's certificate checks) by the offset given; the monotonic clock
is left alone, so that asyncio's timers run as they should. Within the
allowed skew (5 minutes) messages flow; beyond it they are refused with the
reason `clock_skew`, audited, and flow again once the clock is right.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from network.samples import sample_body
from tests.faults.checks import check_run
from tests.harness import Network, audited, rows, sends_beyond_links, skewed, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]}, retry_seconds=2)
    try:
        yield network
    finally:
        network.close()


def test_a_sender_clock_ahead_is_refused_beyond_the_allowed_skew_and_flows_once_right(
    pair: Network,
) -> None:
    pair.start("DEU")
    pair.start("FRA", env=skewed("+2m"))  # within the allowed 5 minutes
    within = pair.send("FRA", "DEU", "emergency", sample_body("emergency"))
    pair.wait_state("FRA", within, {"delivered"})
    pair.stop("FRA")

    pair.start("FRA", env=skewed("+10m"))
    beyond = pair.send("FRA", "DEU", "emergency", sample_body("emergency"))
    refused = pair.wait_state("FRA", beyond, {"rejected", "delivered"})
    status, shown = pair.api("FRA", "GET", f"/api/messages/{beyond}")
    pair.stop("FRA")

    pair.start("FRA")  # the clock set right
    after = pair.send("FRA", "DEU", "emergency", sample_body("emergency"))
    pair.wait_state("FRA", after, {"delivered"})
    pair.stop("FRA")
    pair.stop("DEU")

    assert refused["state"] == "rejected"
    assert status == 200 and shown["receipts"][0]["outcome"] == "rejected"
    assert shown["receipts"][0]["reason"] == "clock_skew"
    rejections = audited(pair, "DEU", "rejected")
    # Each arrival refused and audited: a message goes once on each link that comes up,
    # and two may come up at once as both ends dial at a start (`sends_beyond_links`).
    sends = rows(
        pair.nodes["FRA"].store,
        "SELECT COUNT(*) FROM audit WHERE action = 'sent' AND message_id = ?",
        (beyond,),
    )[0][0]
    assert 1 <= len(rejections) <= sends, (rejections, sends)
    assert sends_beyond_links(pair.nodes["FRA"].store, "DEU") == {}
    assert {r["reason"] for r in rejections} == {"clock_skew"}
    assert all("ahead of our clock" in str(r["error"]) for r in rejections)
    assert check_run(pair, ["FRA"], {within, after}, refused={beyond}) == 2


def test_a_receiver_clock_ahead_has_its_receipts_refused_until_it_is_right(pair: Network) -> None:
    pair.start("FRA")
    pair.start("DEU", env=skewed("+10m"))
    message_id = pair.send("FRA", "DEU", "emergency", sample_body("emergency"))
    wait_for(lambda: audited(pair, "FRA", "receipt_rejected"), what="the receipt refused")
    held = pair.wait_state("FRA", message_id, {"sent", "queued", "delivered"})
    pair.stop("DEU")

    # The clock set right: the message goes again; the receipt kept from then is 10 minutes
    # ahead, so DEU answers afresh (`duplicate`: it holds the message already).
    pair.start("DEU")
    pair.wait_state("FRA", message_id, {"delivered"}, timeout=30)
    pair.stop("FRA")
    pair.stop("DEU")

    assert held["state"] in {"sent", "queued"}
    refusals = audited(pair, "FRA", "receipt_rejected")
    assert {r["reason"] for r in refusals} == {"clock_skew"}
    receipts = rows(pair.nodes["FRA"].store, "SELECT outcome FROM receipts")
    assert receipts == [("duplicate",)]
    # DEU's first receipt carries its clock of then: valid, 10 minutes ahead.
    assert check_run(pair, ["FRA"], {message_id}, skew_ms=11 * 60_000) == 1
