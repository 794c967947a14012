"""The benchmarks' lean poster (bench/poster.py) against a real node's API: what it
posts is what the node stores, and it reads the node's answers, refusals included."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from bench.poster import Poster
from network.samples import sample_body
from tests.harness import Network, pause_async

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("poster"), {"FRA": ["DEU"], "DEU": ["FRA"]})
    try:
        network.start("FRA")
        yield network
    finally:
        network.close()


def request(summary: str) -> bytes:
    body = sample_body("preservation", summary=summary)
    return json.dumps(
        {"to": "DEU", "type": "preservation", "priority": "urgent", "body": body}
    ).encode()


def test_posts_reach_the_node_on_kept_alive_connections(fra: Network) -> None:
    node = fra.nodes["FRA"]

    async def post_all() -> tuple[list[tuple[int, bytes]], list[int]]:
        async with Poster(node.api, node.tokens["officer"]) as poster:
            first = [
                await poster.post("/api/messages", request(f"one by one {i}")) for i in range(3)
            ]
            in_turn = poster.opened
            together = await asyncio.gather(
                *(poster.post("/api/messages", request(f"at once {i}")) for i in range(4))
            )
            return [*first, *together], [in_turn, poster.opened]

    answers, opened = asyncio.run(post_all())

    assert [status for status, _ in answers] == [202] * 7
    ids = [json.loads(body)["id"] for _, body in answers]
    assert len(set(ids)) == 7
    for message_id in ids:  # each stored, with what was posted
        status, message = fra.api("FRA", "GET", f"/api/messages/{message_id}")
        assert status == 200 and message["to"] == "DEU" and message["priority"] == "urgent"
    # Three in turn on one connection, kept alive; four at once take it and three more.
    assert opened == [1, 4]


def test_a_post_says_whether_it_opened_a_connection(fra: Network) -> None:
    """What `bench/throughput.py` counts a flash request's wait on a new connection by."""
    node = fra.nodes["FRA"]

    async def post_all() -> list[bool]:
        async with Poster(node.api, node.tokens["officer"]) as poster:
            news = [(await poster.post_noting_new("/api/messages", request("first")))[2]]
            news.append((await poster.post_noting_new("/api/messages", request("second")))[2])
            together = await asyncio.gather(
                *(
                    poster.post_noting_new("/api/messages", request(f"at once {i}"))
                    for i in range(3)
                )
            )
            return [*news, *sorted(new for _, _, new in together)]

    # The second reuses the first's; of three at once, one takes it and two open their own.
    assert asyncio.run(post_all()) == [True, False, False, True, True]


def test_a_connection_idle_too_long_is_not_used_again(fra: Network) -> None:
    """The node closes a connection idle for `[api] connection_idle`: a request written on
    it as it does so meets the close. The poster opens another instead."""
    node = fra.nodes["FRA"]

    async def twice_with_a_pause() -> tuple[list[int], int]:
        async with Poster(node.api, node.tokens["officer"], reuse_idle_s=0.2) as poster:
            first, _ = await poster.post("/api/messages", request("before the pause"))
            await pause_async(0.3, "the connection idle past the poster's bound")
            second, _ = await poster.post("/api/messages", request("after the pause"))
            return [first, second], poster.opened

    assert asyncio.run(twice_with_a_pause()) == ([202, 202], 2)


def test_a_refusal_comes_back_with_its_status_and_reason(fra: Network) -> None:
    node = fra.nodes["FRA"]

    async def post(token: str, body: bytes) -> tuple[int, bytes]:
        async with Poster(node.api, token) as poster:
            return await poster.post("/api/messages", body)

    status, answer = asyncio.run(post("not-a-token", request("refused")))
    assert status == 401 and answer

    status, answer = asyncio.run(post(node.tokens["officer"], b'{"to": "DEU"}'))
    assert status == 400 and b"type" in answer


def test_a_post_after_a_refusal_goes_through(fra: Network) -> None:
    node = fra.nodes["FRA"]

    async def refused_then_accepted() -> list[int]:
        async with Poster(node.api, node.tokens["officer"]) as poster:
            refused, _ = await poster.post("/api/messages", b"{not json")
            accepted, _ = await poster.post("/api/messages", request("after a refusal"))
            return [refused, accepted]

    assert asyncio.run(refused_then_accepted()) == [400, 202]


def test_the_poster_speaks_plain_http_to_a_host_and_port() -> None:
    with pytest.raises(ValueError, match="plain HTTP"):
        Poster("https://127.0.0.1:1", "token")
