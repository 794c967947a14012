"""Two real nodes under a burst: the pipeline (group commit, sent marks written behind the
link, receipts taken beside the link's next events) keeps every guarantee: each message's
log in its order, every receipt verified and kept, and a flash message ahead of the queue."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from network.samples import sample_body
from tests.harness import Network, rows, sends_beyond_links

pytestmark = pytest.mark.timeout(180)

BURST = 300


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]})
    try:
        network.start("FRA", "DEU")
        yield network
    finally:
        network.close()


async def burst(network: Network, count: int, priority: str) -> list[str]:
    """`count` requests posted to FRA at once (32 at a time); their ids, each 202 (durable)."""
    node = network.nodes["FRA"]
    headers = {"Authorization": f"Bearer {node.tokens['officer']}"}
    request = {"to": "DEU", "type": "preservation", "priority": priority}
    limit = asyncio.Semaphore(32)

    async def post(session: aiohttp.ClientSession) -> str:
        async with limit:
            body = {**request, "body": sample_body("preservation")}
            async with session.post(f"{node.api}/api/messages", json=body) as response:
                answer = await response.json()
                assert response.status == 202, answer
                return str(answer["id"])

    async with aiohttp.ClientSession(headers=headers) as session:
        return list(await asyncio.gather(*(post(session) for _ in range(count))))


def test_a_burst_keeps_each_messages_log_in_order_and_a_flash_goes_ahead(pair: Network) -> None:
    # The burst waits at FRA while DEU is down, so that the flash posted after it finds
    # it all queued: the link now keeps up with 32 clients posting, and leaves no queue.
    pair.stop("DEU")
    urgent = asyncio.run(burst(pair, BURST, "urgent"))
    (flash,) = asyncio.run(burst(pair, 1, "flash"))  # once the whole burst is queued
    pair.start("DEU")
    pair.wait_all("FRA", "out", BURST + 1, {"delivered"}, timeout=120)
    pair.stop("FRA")
    pair.stop("DEU")

    with sqlite3.connect(pair.nodes["FRA"].store) as db:
        log: dict[str, list[str]] = {}
        for message_id, action in db.execute(
            "SELECT message_id, action FROM audit WHERE message_id IS NOT NULL ORDER BY seq"
        ):
            log.setdefault(message_id, []).append(action)
        delivered = dict(
            db.execute("SELECT id, updated FROM messages WHERE box = 'out' AND state = 'delivered'")
        )
        receipts = {m for (m,) in db.execute("SELECT message_id FROM receipts")}
    for message_id in [*urgent, flash]:
        steps = [a for a in log[message_id] if a in ("queued", "sent", "receipt_received")]
        # Each was marked sent before its receipt was taken, whichever committed first. It
        # went once, or again on the link that replaced the one it went on (DEU dials as it
        # starts, and FRA may be dialling too): never twice on one link.
        sends = steps.count("sent")
        assert steps == ["queued", *["sent"] * sends, "receipt_received"], log[message_id]
        assert sends >= 1, log[message_id]
        assert log[message_id][-1] == "delivered"
    assert receipts >= {*urgent, flash}  # every verified receipt kept
    assert sends_beyond_links(pair.nodes["FRA"].store, "DEU") == {}
    received = "SELECT message_id, COUNT(*) FROM audit WHERE action = 'received' GROUP BY 1"
    assert dict(rows(pair.nodes["DEU"].store, received)) == dict.fromkeys([*urgent, flash], 1)
    # Queued behind the whole burst, delivered ahead of most of it.
    later = sum(delivered[m] > delivered[flash] for m in urgent)
    assert later >= BURST // 4, f"only {later} of {BURST} urgent delivered after the flash"
