"""A node offered more submissions than it seals refuses the excess at once, over HTTP.

A real node process; the test holds its store's write lock from this process (as
`cpn user add` beside it would, for longer), so that its rounds wait and the
submissions behind them pile up, as on a sender offered more than it takes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator, Sequence

import aiohttp
import pytest

from network.node.context import REFUSALS_PER_MINUTE
from network.node.officer import ROUND_SIZE, ROUNDS_AT_ONCE, WAITING_AT_MOST
from network.samples import sample_body
from tests.harness import Network, rows

pytestmark = pytest.mark.timeout(120)

# At most this many urgent submissions are taken while the rounds wait: every round's
# members, and those waiting for a round.
HELD = ROUND_SIZE * ROUNDS_AT_ONCE + WAITING_AT_MOST
# A refusal within the refusal budget waits for its audit entry, and so for the lock this
# test holds; those past it are answered at once: `BEYOND` of them, and the test knows
# that every refusal the bound guarantees has been made.
BEYOND = 20
POSTED = HELD + REFUSALS_PER_MINUTE + BEYOND
OFFICER = "officer-FRA"  # the harness's officer at FRA


@pytest.fixture
def fra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("busy"), {"FRA": ["DEU"], "DEU": ["FRA"]})
    try:
        network.start("FRA")
        yield network
    finally:
        network.close()


def request(priority: str) -> bytes:
    body = sample_body("preservation")
    return json.dumps(
        {"to": "DEU", "type": "preservation", "priority": priority, "body": body}
    ).encode()


Answer = tuple[int, dict[str, str], dict[str, str]]  # status, headers, JSON


async def post_while_the_store_is_held(
    network: Network, answered_held: Sequence[bytes] = (), posted_held: Sequence[bytes] = ()
) -> list[Answer]:
    """`POSTED` urgent submissions and one flash, all at once, while this process holds
    FRA's write lock; the lock is let go once `BEYOND` refusals are answered. With
    `answered_held` or `posted_held` (requests), what waits is filled up again and each is
    posted then: the first must be answered before the lock is let go. Their answers come
    last, in that order."""
    node = network.nodes["FRA"]
    headers = {"Authorization": f"Bearer {node.tokens['officer']}"}
    refused = asyncio.Event()
    refusals = 0

    async def post(session: aiohttp.ClientSession, data: bytes) -> Answer:
        nonlocal refusals
        async with session.post(f"{node.api}/api/messages", data=data, headers=headers) as response:
            answer = (response.status, dict(response.headers), await response.json())
        if response.status == 503:
            refusals += 1
            if refusals >= BEYOND:
                refused.set()
        return answer

    holder = sqlite3.connect(node.store, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            posts = [asyncio.create_task(post(session, request("urgent"))) for _ in range(POSTED)]
            posts.append(asyncio.create_task(post(session, request("flash"))))
            await asyncio.wait_for(refused.wait(), 30)
            answered: list[Answer] = []
            if answered_held or posted_held:  # rounds that began late took members: refill
                more = [
                    asyncio.create_task(post(session, request("urgent")))
                    for _ in range(WAITING_AT_MOST)
                ]
                await asyncio.wait(more, return_when=asyncio.FIRST_COMPLETED)  # one refused
                late = [asyncio.create_task(post(session, data)) for data in posted_held]
                answered = [await asyncio.wait_for(post(session, d), 30) for d in answered_held]
                posts += more + late
            holder.execute("ROLLBACK")
            return [*(await asyncio.gather(*posts)), *answered]
    finally:
        holder.close()


def test_submissions_past_what_a_node_holds_waiting_are_refused_with_503_and_nothing_lost(
    fra: Network,
) -> None:
    """Past `WAITING_AT_MOST` urgent submissions waiting for a round, the next is answered
    503 with `Retry-After`, before anything is sealed or stored; each accepted one is
    stored, the flash one among them, and the refusals are audited within the node's
    refusal budget, the rest counted (when the node stops, at the latest)."""
    assert fra.api("FRA", "GET", "/api/messages")[0] == 200  # the token's login, audited
    answers = asyncio.run(post_while_the_store_is_held(fra))

    accepted = [body["id"] for status, _, body in answers if status == 202]
    refused = [(given, body) for status, given, body in answers if status == 503]
    assert len(accepted) + len(refused) == POSTED + 1, [a[0] for a in answers]
    assert len(refused) >= POSTED - HELD
    assert answers[-1][0] == 202, answers[-1]  # flash: never refused for want of room
    for headers, body in refused:
        assert headers["Retry-After"] == "1"
        assert f"{WAITING_AT_MOST} urgent submissions waiting" in body["error"]
        assert "nothing was stored" in body["error"]
    stored = rows(fra.nodes["FRA"].store, "SELECT id FROM messages WHERE box = 'out'")
    assert sorted(i for (i,) in stored) == sorted(accepted)
    entries = rows(
        fra.nodes["FRA"].store,
        "SELECT actor, detail FROM audit WHERE action = 'request_refused'",
    )
    assert len(entries) == min(len(refused), REFUSALS_PER_MINUTE)
    for actor, detail in entries:
        assert actor == OFFICER and json.loads(detail)["status"] == 503
    assert fra.api("FRA", "POST", "/api/messages", json.loads(request("urgent")))[0] == 202
    fra.stop("FRA")
    (detail,) = rows(
        fra.nodes["FRA"].store, "SELECT detail FROM audit WHERE action = 'refusals_suppressed'"
    )[0]
    assert json.loads(detail) == {
        "source": f"user:{OFFICER}",
        "count": len(refused) - REFUSALS_PER_MINUTE,
    }


def test_a_sender_with_no_room_refuses_before_it_checks_the_body_but_never_a_flash_one(
    fra: Network,
) -> None:
    """With no room for another urgent submission, one is refused (503) at once, before its
    body is checked: a sender offered more than it takes spent its thread checking requests
    it then refused. A flash request is checked as ever, and its field named (400), as is
    a priority that is none."""
    invalid = {"to": "DEU", "type": "preservation", "priority": "urgent", "body": {}}
    checked = [{**invalid, "priority": p} for p in ("flash", "bogus", ["urgent"], None)]
    answers = asyncio.run(
        post_while_the_store_is_held(
            fra, [json.dumps(invalid).encode()], [json.dumps(c).encode() for c in checked]
        )
    )

    status, headers, body = answers[-1]  # the invalid urgent one, answered with the lock held
    assert status == 503, body
    assert headers["Retry-After"] == "1"
    assert f"{WAITING_AT_MOST} urgent submissions waiting" in body["error"]
    flash, *no_priority = answers[-1 - len(checked) : -1]
    assert flash[0] == 400 and flash[2]["field"] == "body.case_ref", flash
    for status, _, body in no_priority:  # not a priority: named, whatever waits
        assert status == 400 and body["field"] == "priority", body
