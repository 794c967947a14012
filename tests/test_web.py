"""The HTTP API over a real node: keys, signed roster, SQLite store and a server on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from network.api.web import build_app
from network.core.records import NodeId
from network.core.roster import build_roster, load_roster
from network.node.context import REFUSALS_PER_MINUTE
from network.node.keys import init_keeper, init_node_keys, load_keeper, load_node_keys
from network.node.store import Store
from network.node.wiring import Node
from network.samples import sample_body

pytestmark = pytest.mark.timeout(60)

DAY_MS = 24 * 3600 * 1000
UNKNOWN_ID = "01a1f94a-eec0-75c3-9e17-b2d40f68a1e7"


@dataclass
class Api:
    client: TestClient[Any, Any]
    service: Node
    tokens: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def send(self, payload: Any, role: str = "officer") -> tuple[int, Any]:
        response = await self.client.post("/api/messages", json=payload, headers=self.auth(role))
        return response.status, await response.json()

    async def get(self, path: str, role: str = "officer") -> tuple[int, Any]:
        response = await self.client.get(path, headers=self.auth(role))
        return response.status, await response.json()

    async def audit_actions(self, action: str) -> list[tuple[str, dict[str, Any]]]:
        async with self.service.context.store.db.execute(
            "SELECT actor, detail FROM audit WHERE action = ? ORDER BY seq", (action,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [(actor, json.loads(detail)) for actor, detail in rows]


def preservation(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "to": "DEU",
        "type": "preservation",
        "priority": "urgent",
        "body": sample_body("preservation"),
    }
    payload.update(overrides)
    return payload


def without(value: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k != key}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    keeper_public = init_keeper(tmp_path / "keeper")
    now = datetime.now(UTC)
    cards = [
        init_node_keys(tmp_path / node_id, NodeId(node_id), url=f"wss://127.0.0.1:{port}", now=now)
        for node_id, port in (("FRA", 1), ("DEU", 2))
    ]
    now_ms = time.time_ns() // 1_000_000
    roster_bytes = build_roster(
        cards,
        keeper=load_keeper(tmp_path / "keeper"),
        version=1,
        issued=now_ms - DAY_MS,
        valid_until=now_ms + 365 * DAY_MS,
    )
    roster = load_roster(roster_bytes, keeper=keeper_public, now=now_ms)
    store = await Store.open(tmp_path / "fra.sqlite")
    try:
        service = Node.build(
            keys=load_node_keys(tmp_path / "FRA", NodeId("FRA")),
            roster=roster,
            store=store,
            clock=lambda: time.time_ns() // 1_000_000,
        )
        tokens = {
            "officer": await service.officers.add_user("olivia", "officer"),
            "auditor": await service.officers.add_user("arthur", "auditor"),
            "admin": await service.officers.add_user("ada", "admin"),
        }
        async with TestClient(TestServer(build_app(service), host="127.0.0.1")) as client:
            yield Api(client, service, tokens)
    finally:
        await store.close()


# -- sending and reading ------------------------------------------------------------


async def test_officer_sends_lists_and_reads_a_preservation(api: Api) -> None:
    body = sample_body("preservation")

    status, sent = await api.send(preservation(body=body))
    list_status, listed = await api.get("/api/messages?box=out")
    read_status, message = await api.get(f"/api/messages/{sent['id']}")

    assert status == 202
    assert sent["state"] == "queued"
    assert sent["to"] == "DEU"
    assert list_status == 200
    assert [m["id"] for m in listed["messages"]] == [sent["id"]]
    assert read_status == 200
    assert message["body"] == body
    assert message["type"] == "preservation"
    actions = [entry["action"] for entry in message["timeline"]]
    assert actions == ["composed", "sealed", "queued", "opened"]


async def test_responses_are_json_and_never_cached(api: Api) -> None:
    ok = await api.client.get("/healthz")
    refused = await api.client.get("/api/peers")
    missing = await api.client.get("/nowhere")

    for response in (ok, refused, missing):
        assert response.content_type == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
    assert missing.status == 404
    assert "error" in await missing.json()


async def test_send_accepts_a_ttl_and_sets_the_expiry(api: Api) -> None:
    status, sent = await api.send(preservation(ttl_seconds=3600))

    assert status == 202
    assert sent["expires"] - sent["created"] == 3600 * 1000


# -- refused input names the field ---------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (preservation(body=without(sample_body("preservation"), "offence")), "body.offence"),
        (preservation(body=sample_body("preservation", period_days=59)), "body.period_days"),
        (preservation(to="XXX"), "to"),
        (preservation(type="bogus"), "type"),
        (preservation(priority="whenever"), "priority"),
        (preservation(colour="blue"), "colour"),
        (without(preservation(), "priority"), "priority"),
        (preservation(ttl_seconds=59), "ttl_seconds"),
        (preservation(ttl_seconds=True), "ttl_seconds"),
    ],
    ids=[
        "missing-offence", "short-period", "unknown-node", "bad-type", "bad-priority",
        "unknown-key", "missing-key", "short-ttl", "bool-ttl",
    ],
)  # fmt: skip
async def test_send_refuses_bad_input_naming_the_field(
    api: Api, payload: dict[str, Any], field: str
) -> None:
    status, answer = await api.send(payload)

    assert status == 400
    assert answer["field"] == field
    assert answer["error"].startswith(f"{field}: ")
    assert await api.audit_actions("composed") == []


async def test_refused_input_is_audited_for_its_user(api: Api) -> None:
    await api.send(preservation(to="XXX"))

    refused = await api.audit_actions("request_refused")

    assert [(actor, detail["field"]) for actor, detail in refused] == [("olivia", "to")]


async def test_refused_input_from_someone_not_signed_in_is_audited_within_a_budget(
    api: Api,
) -> None:
    # Anyone who reaches the API can send a sign-in ceremony garbage, from any address:
    # the refusals are audited, all strangers' together within the node's refusal budget,
    # and those held back counted.
    for _ in range(REFUSALS_PER_MINUTE + 10):
        response = await api.client.post("/auth/enrol/begin", json={"code": "x" * 32})
        assert response.status == 400
        assert (await response.json())["field"] == "code"

    refused = await api.audit_actions("request_refused")

    assert len(refused) == REFUSALS_PER_MINUTE
    actor, detail = refused[0]
    assert actor == "anonymous"
    assert detail["remote"] == "127.0.0.1" and detail["field"] == "code"
    assert detail["path"] == "/auth/enrol/begin" and detail["status"] == 400
    assert api.service.context.refusals.held_back("anonymous") == 10


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"to": "DEU",', "request body is not valid JSON: "),
        (b'{"to": "DEU", "to": "USA"}', "duplicate key"),
        (b'{"ttl_seconds": 60.5}', "floats are not allowed"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b'"text"', "must be a JSON object"),
    ],
    ids=["truncated", "duplicate-key", "float", "array", "string"],
)
async def test_send_refuses_a_body_that_is_not_a_json_object(
    api: Api, data: bytes, problem: str
) -> None:
    response = await api.client.post(
        "/api/messages",
        data=data,
        headers={**api.auth("officer"), "Content-Type": "application/json"},
    )

    answer = await response.json()
    assert response.status == 400
    assert answer["field"] == "body"
    assert problem in answer["error"]


async def test_send_refuses_an_oversize_body_with_json(api: Api) -> None:
    data = json.dumps(preservation(padding="x" * 300 * 1024)).encode()

    response = await api.client.post(
        "/api/messages",
        data=data,
        headers={**api.auth("officer"), "Content-Type": "application/json"},
    )

    assert response.status == 413
    assert response.content_type == "application/json"
    assert "over the limit" in (await response.json())["error"]


# -- authentication and roles ---------------------------------------------------------

API_ROUTES = [
    ("POST", "/api/messages"),
    ("GET", "/api/messages"),
    ("GET", f"/api/messages/{UNKNOWN_ID}"),
    ("GET", "/api/peers"),
    ("GET", "/api/nowhere"),
]


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
async def test_api_routes_refuse_a_missing_token(api: Api, method: str, path: str) -> None:
    response = await api.client.request(method, path)

    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in await response.json()


@pytest.mark.parametrize("header", ["Basic b2xpdmlhOnB3", "Bearer", "Bearer a b"])
async def test_api_refuses_a_malformed_authorization_header(api: Api, header: str) -> None:
    response = await api.client.get("/api/peers", headers={"Authorization": header})

    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
async def test_api_routes_refuse_a_bad_token_and_audit_it(api: Api, method: str, path: str) -> None:
    response = await api.client.request(
        method, path, headers={"Authorization": "Bearer cpn_not-a-token"}
    )

    failed = await api.audit_actions("login_failed")
    assert response.status == 401
    assert "invalid_token" in response.headers["WWW-Authenticate"]
    assert failed == [("anonymous", {"remote": "127.0.0.1", "path": path})]


async def test_a_login_is_audited_once_not_on_every_request(api: Api) -> None:
    await api.get("/api/peers")
    async with api.service.context.store.db.execute("SELECT COUNT(*) FROM audit") as cursor:
        before = await cursor.fetchone()

    await api.get("/api/peers")

    async with api.service.context.store.db.execute("SELECT COUNT(*) FROM audit") as cursor:
        after = await cursor.fetchone()
    assert after == before
    logins = await api.audit_actions("login")
    assert len(logins) == 1 and logins[0][1]["role"] == "officer"


async def test_auditor_may_not_send_but_may_list(api: Api) -> None:
    send_status, refused = await api.send(preservation(), role="auditor")
    list_status, listed = await api.get("/api/messages", role="auditor")

    assert send_status == 403
    assert refused["error"] == "role auditor may not send messages"
    assert await api.audit_actions("access_denied") == [
        ("arthur", {"role": "auditor", "method": "POST", "path": "/api/messages"})
    ]
    assert await api.audit_actions("composed") == []
    assert list_status == 200
    assert listed == {"messages": []}


async def test_admin_may_list_peers_but_not_messages(api: Api) -> None:
    peers_status, _ = await api.get("/api/peers", role="admin")
    list_status, refused = await api.get("/api/messages", role="admin")

    assert peers_status == 200
    assert list_status == 403
    assert refused["error"] == "role admin may not list messages"


# -- health and peers --------------------------------------------------------------------


async def test_healthz_needs_no_token(api: Api) -> None:
    response = await api.client.get("/healthz")

    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "ok" and answer["node"] == "FRA" and answer["problems"] == []
    assert answer["roster"]["validity"] == "valid"


async def test_peers_lists_deu_unlinked_with_its_queue(api: Api) -> None:
    await api.send(preservation())

    status, answer = await api.get("/api/peers", role="auditor")

    assert status == 200
    assert answer["node"] == "FRA"
    [deu] = answer["peers"]
    assert deu["id"] == "DEU"
    assert deu["linked"] is False
    assert deu["queued"] == 1


# -- reading refusals -------------------------------------------------------------------


async def test_unknown_message_is_404(api: Api) -> None:
    status, answer = await api.get(f"/api/messages/{UNKNOWN_ID}")

    assert status == 404
    assert answer == {"error": f"no message {UNKNOWN_ID}"}


@pytest.mark.parametrize(
    "bad_id",
    [
        "42",
        "01a1f94a-eec0-75c3-9e17-b2d40f68a1eZ",
        "x" * 36,
        "6b1d2f8e-3f5c-4a43-9d7e-0c8f8f5b2a11",  # a UUIDv4
        "=hyperlink(%22http:%2F%2Fevil.xy%22)-a-b-c-d",  # a formula, 36 characters
    ],
)
async def test_bad_message_id_is_400(api: Api, bad_id: str) -> None:
    status, answer = await api.get(f"/api/messages/{bad_id}")

    assert status == 400
    assert answer["field"] == "id"


async def test_an_audit_filter_on_a_message_takes_only_a_message_id(api: Api) -> None:
    status, answer = await api.get("/api/audit?message=%3D1%2B1", role="auditor")

    assert status == 400
    assert answer["field"] == "message"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("box=sideways", "box"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("state=lost", "state"),
        ("priority=whenever", "priority"),
        ("box=in&box=out", "box"),
        ("colour=blue", "colour"),
    ],
)
async def test_bad_query_parameter_is_400_naming_it(api: Api, query: str, field: str) -> None:
    status, answer = await api.get(f"/api/messages?{query}")

    assert status == 400
    assert answer["field"] == field


async def test_list_filters_by_state_and_priority(api: Api) -> None:
    await api.send(preservation())
    await api.send(preservation(priority="routine"))

    _, urgent = await api.get("/api/messages?box=out&state=queued&priority=urgent&limit=10")
    _, inbox = await api.get("/api/messages?box=in")

    assert [m["priority"] for m in urgent["messages"]] == ["urgent"]
    assert inbox == {"messages": []}


async def test_wrong_method_is_405_json(api: Api) -> None:
    response = await api.client.delete("/api/peers", headers=api.auth("officer"))

    assert response.status == 405
    assert "DELETE" in (await response.json())["error"]


async def test_an_unexpected_failure_is_a_logged_json_500(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    await api.service.context.store.close()  # the fixture's second close is harmless

    response = await api.client.get("/api/peers", headers=api.auth("officer"))

    assert response.status == 500
    assert await response.json() == {"error": "internal error"}
    assert response.headers["Cache-Control"] == "no-store"
    assert "unhandled error in GET /api/peers" in caplog.text
