"""The whole HTTP API against its OpenAPI document, over two real node processes.

One network (FRA and DEU, linked) serves the module: the document's routes
without a token, the role matrix, bad input on every route, /metrics, and the
slowdown of repeated failed logins (from a loopback address of its own,
127.0.0.2, so it cannot throttle the other tests' requests from 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from network.api.web import LOGIN_AUDIT_LIMIT, MAX_REQUEST_BYTES, ROUTES, build_app
from network.core.records import MessageType, NodeId
from network.core.roster import load_roster
from network.node.keys import load_keeper_public, load_node_keys
from network.node.officer import issue_token
from network.node.store import Store
from network.node.wiring import Node
from network.samples import sample_body
from tests.harness import DrivenClock, Network, wait_for
from tests.test_cases import in_days

pytestmark = pytest.mark.timeout(90)

UNKNOWN_ID = "01a1f94a-eec0-75c3-9e17-b2d40f68a1e7"
ROLES = ("officer", "auditor", "admin")
# Short windows: the third refused token opens 1 s, then 2 s (the cap).
LOGIN_POLICY = "login_failures = 3\nlogin_penalty = 1\nlogin_penalty_max = 2\n"


class Api:
    """The module's network, and a client that can speak from another loopback address."""

    def __init__(self, net: Network, received: str) -> None:
        self.net = net
        self.received = received  # a preservation FRA sent and DEU received

    def call(
        self,
        node: str,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        token: str | None = None,
        source: str = "127.0.0.1",
    ) -> tuple[int, dict[str, str], bytes]:
        """One request: status, headers (lower-case names), body bytes. `token` is a role
        of the node's users or a literal token."""
        node_info = self.net.nodes[node]
        host, port = node_info.api.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(
            host, int(port), timeout=10, source_address=(source, 0)
        )
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {node_info.tokens.get(token, token)}"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            live = response.getheader("Content-Type", "").startswith("text/event-stream")
            data = response.read1(64) if live else response.read()  # a stream: its first bytes
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            connection.close()

    def json(
        self, node: str, method: str, path: str, value: Any = None, **kwargs: Any
    ) -> tuple[int, Any]:
        body = None if value is None else json.dumps(value).encode()
        status, _, data = self.call(node, method, path, body, **kwargs)
        return status, json.loads(data)

    def document(self) -> dict[str, Any]:
        status, document = self.json("FRA", "GET", "/api/openapi.json", token="auditor")
        assert status == 200, document
        return document


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> DrivenClock:
    """FRA's wall clock, which a test moves on: a penalty window's end is a step, not a
    wait."""
    return DrivenClock(tmp_path_factory.mktemp("clock") / "FRA.faketime")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, clock: DrivenClock) -> Iterator[Api]:
    net = Network(
        tmp_path_factory.mktemp("api"), {"FRA": ["DEU"], "DEU": ["FRA"]}, api_config=LOGIN_POLICY
    )
    try:
        for node in net.nodes.values():
            node.tokens["admin"] = asyncio.run(_admin_token(node.store, node.id))
        net.start("FRA", env=clock.env)
        net.start("DEU")
        message_id = net.send("FRA", "DEU", "preservation", sample_body("preservation"))
        net.wait_state("DEU", message_id, {"received"})
        yield Api(net, message_id)
    finally:
        net.close()


async def _admin_token(path: Path, node_id: str) -> str:
    store = await Store.open(path)
    try:
        now = int(time.time() * 1000)
        return await issue_token(store, f"admin-{node_id}", "admin", actor="test", now=now)
    finally:
        await store.close()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def concrete(path: str) -> str:
    for name, value in (("{id}", UNKNOWN_ID), ("{name}", "main.js"), ("{index}", "0")):
        path = path.replace(name, value)
    return path.replace("{passkey}", "AAAA")


# -- the document ---------------------------------------------------------------------


def test_document_is_valid_openapi_3_1_naming_every_route_and_no_other(api: Api) -> None:
    document = api.document()

    validate_openapi(document)
    assert document["openapi"].startswith("3.1")
    documented = {(method, path) for method, path, _ in operations(document)}
    assert documented == {(route.method, route.path) for route in ROUTES}


async def test_document_names_exactly_the_routes_the_app_serves(api: Api, tmp_path: Path) -> None:
    keys = api.net.keys
    roster = load_roster(
        (keys / "roster.json").read_bytes(),
        keeper=load_keeper_public(keys / "authority" / "keeper.json"),
        now=int(time.time() * 1000),
    )
    store = await Store.open(tmp_path / "fra.sqlite")
    try:
        service = Node.build(
            keys=load_node_keys(keys / "FRA", NodeId("FRA")),
            roster=roster,
            store=store,
            clock=lambda: int(time.time() * 1000),
        )
        app = build_app(service)
    finally:
        await store.close()

    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None  # HEAD: aiohttp's, per GET
    }
    documented = {(method, path) for method, path, _ in operations(api.document())}
    assert served == documented


def test_document_gives_each_route_its_roles_and_security(api: Api) -> None:
    document = api.document()

    by_route = {(r.method, r.path): r for r in ROUTES}
    for method, path, operation in operations(document):
        route = by_route[(method, path)]
        if route.roles is None:
            assert operation["security"] == [] and "x-roles" not in operation, path
        else:
            assert operation["security"] == [{"bearer": []}], path
            assert operation["x-roles"] == sorted(route.roles), path
            assert {"400", "401", "403", "429"} <= set(operation["responses"]), path
        if "requestBody" in operation:
            assert "413" in operation["responses"], path
        if "{id}" in path:
            assert "404" in operation["responses"], path


def test_sample_bodies_of_every_type_match_the_documented_submission(api: Api) -> None:
    document = api.document()
    registry: Registry[Any] = Registry().with_resource(
        "urn:cpn", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    submission = document["paths"]["/api/messages"]["post"]["requestBody"]["content"]
    schema = {**submission["application/json"]["schema"]}
    schema["allOf"] = [
        json.loads(json.dumps(rule).replace('"#/components', '"urn:cpn#/components'))
        for rule in schema["allOf"]
    ]
    validator = Draft202012Validator(schema, registry=registry)

    for message_type in MessageType:
        good = {"to": "DEU", "type": message_type, "priority": "routine"}
        good["body"] = sample_body(message_type)
        bad = {**good, "body": {**good["body"], "colour": "blue"}}
        assert list(validator.iter_errors(good)) == [], message_type
        assert list(validator.iter_errors(bad)) != [], message_type
    assert list(validator.iter_errors({"to": "DEU", "type": "preservation"})) != []


# -- authentication and roles -----------------------------------------------------------


def test_every_documented_route_without_a_token_is_401_or_public(api: Api) -> None:
    document = api.document()

    wrong = []
    for method, path, operation in operations(document):
        body = b"{}" if method == "POST" else None
        status, headers, data = api.call("FRA", method, concrete(path), body)
        if operation["security"] == []:
            # A sign-in step (/auth/...) is public, and refuses an empty request by name (or
            # says the node has no single sign-on).
            signing_in = path.startswith("/auth/") and status in (400, 401, 404)
            if signing_in:
                answer = json.loads(data)
                signing_in = bool(answer.get("field")) or "single sign-on" in answer["error"]
            if status != 200 and not signing_in:
                wrong.append((method, path, status))
        elif (
            status != 401
            or "error" not in json.loads(data)
            or not headers.get("www-authenticate", "").startswith("Bearer")
        ):
            wrong.append((method, path, status))
    assert wrong == []


@pytest.mark.parametrize("token", ["\xff\xfe\xed", "cpn_" + "a" * 600, "cpn_a\tb", "cpn_é"])
def test_a_token_that_cannot_be_ours_is_401(api: Api, token: str) -> None:
    status, headers, data = api.call("FRA", "GET", "/api/peers", token=token)

    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert json.loads(data) == {"error": "Authorization header must be 'Bearer TOKEN'"}


def test_role_matrix_holds_on_every_documented_route(api: Api) -> None:
    document = api.document()

    wrong = []
    for method, path, operation in operations(document):
        for role in ROLES:
            body = b"{}" if method == "POST" else None
            status, _, data = api.call("FRA", method, concrete(path), body, token=role)
            answer = data.decode()
            allowed = operation["security"] == [] or role in operation["x-roles"]
            served = status != 405 and "no such endpoint" not in answer
            # A sign-in step answers a bad ceremony 401 whoever calls it: it takes no token.
            refused_sign_in = path.startswith("/auth/") and status == 401
            if (
                not served
                or (status == 403) == allowed
                or status == 500
                or (status == 401 and not refused_sign_in)
            ):
                wrong.append((method, path, role, status, answer[:100]))
    assert wrong == []


# -- bad input ------------------------------------------------------------------------


def _bad_inputs(received: str) -> list[tuple[str, str, str, Any, int, str]]:
    """(node, method, path, body (bytes as is, else JSON), status, field)."""
    send = {"to": "DEU", "type": "preservation", "priority": "urgent"}
    send["body"] = sample_body("preservation")
    notice = {"to": "DEU", "type": "mla_notice", "priority": "urgent"}
    notice["body"] = sample_body("mla_notice", follows=received)
    ack, reply = f"/api/messages/{received}/ack", f"/api/messages/{received}/reply"
    oversize = b'{"note": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    return [
        ("FRA", "POST", "/api/messages", b'{"to": "DEU",', 400, "body"),
        ("FRA", "POST", "/api/messages", b"[1, 2]", 400, "body"),
        ("FRA", "POST", "/api/messages", b"", 400, "body"),
        ("FRA", "POST", "/api/messages", {**send, "to": 276}, 400, "to"),
        ("FRA", "POST", "/api/messages", {**send, "priority": ["urgent"]}, 400, "priority"),
        ("FRA", "POST", "/api/messages", {**send, "type": "emergency", "priority": "routine"},
         400, "priority"),
        ("FRA", "POST", "/api/messages", {**send, "body": "preserve it"}, 400, "body"),
        ("FRA", "POST", "/api/messages", {**send, "ttl_seconds": "3600"}, 400, "ttl_seconds"),
        ("FRA", "POST", "/api/messages", {**send, "colour": "blue"}, 400, "colour"),
        ("FRA", "POST", "/api/messages", oversize, 413, "body"),
        # What a request names must exist here, of the right kind, with the same Party
        # (issue 19: `follows` was never checked).
        ("FRA", "POST", "/api/messages", {**notice, "body": sample_body("mla_notice")}, 400,
         "body.follows"),  # a message nobody holds
        ("DEU", "POST", "/api/messages", {**notice, "to": "FRA"}, 400, "body.follows"),  # received
        ("FRA", "POST", "/api/messages", {**send, "body": sample_body(
            "preservation", status="extension", extends=received, follows=received)}, 400,
         "body.follows"),  # a preservation, not a disclosure received
        ("DEU", "POST", ack, b"{note", 400, "body"),
        ("DEU", "POST", ack, {"note": 5}, 400, "note"),
        ("DEU", "POST", ack, {"note": "ok", "officer": "mallory"}, 400, "officer"),
        ("DEU", "POST", ack, oversize, 413, "body"),
        ("DEU", "POST", reply, b'"preserved"', 400, "body"),
        ("DEU", "POST", reply, {"status": "maybe"}, 400, "status"),
        ("DEU", "POST", reply, {"status": "preserved"}, 400, "preserved_until"),
        ("DEU", "POST", reply, {"status": "completed", "note": ["x"]}, 400, "note"),
        ("DEU", "POST", reply, {"status": "completed"}, 400, "status"),  # not for a preservation
        ("DEU", "POST", reply, {"status": "preserved", "preserved_until": in_days(-1)}, 400,
         "preserved_until"),  # in the past
        ("DEU", "POST", reply, {"status": "preserved", "preserved_until": in_days(59)}, 400,
         "preserved_until"),  # under Budapest 29(7)'s 60 days
        ("DEU", "POST", reply, {"status": "needs_info", "in_reply_to": ""}, 400, "in_reply_to"),
        ("DEU", "POST", reply, {"status": "completed", "colour": "blue"}, 400, "colour"),
        ("DEU", "POST", reply, oversize, 413, "body"),
        ("FRA", "GET", "/api/messages/not-a-message-id", None, 400, "id"),
        ("FRA", "GET", "/api/messages?limit=ten", None, 400, "limit"),
        ("FRA", "GET", "/api/messages?box=sideways", None, 400, "box"),
        ("FRA", "GET", "/api/messages?colour=blue", None, 400, "colour"),
        ("FRA", "GET", "/api/alerts?box=in", None, 400, "box"),
        ("FRA", "GET", "/api/preservations?limit=1", None, 400, "limit"),
        ("FRA", "GET", "/api/peers?all=1", None, 400, "all"),
        ("FRA", "GET", "/api/openapi.json?v=2", None, 400, "v"),
        ("FRA", "GET", "/healthz?verbose=1", None, 400, "verbose"),
    ]  # fmt: skip


def _audit_bad_inputs() -> list[tuple[str, str, str, Any, int, str]]:
    return [
        ("FRA", "GET", "/api/audit?since=yesterday", None, 400, "since"),
        ("FRA", "GET", "/api/audit?after=-1", None, 400, "after"),
        ("FRA", "GET", "/api/audit?limit=100000", None, 400, "limit"),
        ("FRA", "GET", "/api/audit?action=" + "x" * 100, None, 400, "action"),
        ("FRA", "GET", "/api/audit/verify?deep=1", None, 400, "deep"),
    ]


@pytest.mark.parametrize("role", ["officer", "auditor"])
def test_bad_input_on_every_route_is_400_or_413_naming_the_field(api: Api, role: str) -> None:
    cases = _bad_inputs(api.received) if role == "officer" else _audit_bad_inputs()

    wrong = []
    for node, method, path, body, status, field in cases:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        got, headers, raw = api.call(node, method, path, data, token=role)
        answer = json.loads(raw)
        if (got, answer.get("field")) != (status, field) or headers["content-type"] != (
            "application/json; charset=utf-8"
        ):
            wrong.append((method, path, got, answer))
    assert wrong == []


def test_a_refused_acknowledgement_left_the_message_as_it_was(api: Api) -> None:
    status, message = api.json("DEU", "GET", "/api/messages?box=in&limit=500", token="auditor")

    [received] = [m for m in message["messages"] if m["id"] == api.received]
    assert status == 200
    assert received["state"] in ("received", "opened")
    assert received["acknowledged_by"] is None


# -- metrics ------------------------------------------------------------------------


def _scrape(api: Api, node: str, path: str = "/metrics") -> tuple[int, dict[str, str], bytes]:
    """A request to the node's metrics listener (not its API's)."""
    host, port = api.net.nodes[node].metrics.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _metrics(api: Api, node: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, data = _scrape(api, node)
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(data.decode())
        for sample in family.samples
    }


def test_metrics_need_no_token_and_show_a_sent_message(api: Api) -> None:
    def delivered() -> Any:
        found = _metrics(api, "FRA")
        return found if found[("cpn_messages", (("box", "out"), ("state", "delivered")))] else None

    figures = wait_for(delivered, timeout=20, what="a delivered message in FRA's metrics")

    assert figures[("cpn_node", (("node", "FRA"),))] == 1
    assert figures[("cpn_links_up", ())] == 1
    assert figures[("cpn_receipts_passing", ())] == 0  # none passes through an end
    assert figures[("cpn_receipts_passing_dropped_total", ())] == 0
    assert figures[("cpn_link_up", (("peer", "DEU"),))] == 1
    assert figures[("cpn_queued_messages", (("peer", "DEU"),))] == 0
    assert figures[("cpn_audit_entries", ())] > 5
    assert ("cpn_checkpoint_size", ()) in figures
    assert ("cpn_overdue_messages", ()) in figures
    sent = (("method", "POST"), ("route", "/api/messages"), ("status", "202"))
    assert figures[("cpn_http_requests_total", sent)] >= 1
    assert ("cpn_login_failures_total", ()) in figures
    assert figures[("cpn_loop_lag_seconds_count", ())] >= 1  # `cpn node run` times its loop
    deu = _metrics(api, "DEU")
    assert (
        deu[("cpn_messages", (("box", "in"), ("state", "received")))]
        + deu[("cpn_messages", (("box", "in"), ("state", "opened")))]
        >= 1
    )


def test_metrics_are_served_on_their_own_listener_never_the_consoles(api: Api) -> None:
    on_api, _, _ = api.call("FRA", "GET", "/metrics")
    with_query, _, answer = _scrape(api, "FRA", "/metrics?name=cpn")
    elsewhere, _, _ = _scrape(api, "FRA", "/api/peers")

    assert on_api == 404
    assert with_query == 400
    assert json.loads(answer)["field"] == "name"
    assert elsewhere == 404


def test_metrics_label_unknown_paths_as_one_series(api: Api) -> None:
    for n in range(3):
        api.call("FRA", "GET", f"/made-up-{n}")

    figures = _metrics(api, "FRA")

    routes = {
        dict(labels)["route"] for name, labels in figures if name == "cpn_http_requests_total"
    }
    assert "unmatched" in routes
    assert not any(route.startswith("/made-up") for route in routes)


# -- failed logins ------------------------------------------------------------------


def _throttled_entries(api: Api) -> list[dict[str, Any]]:
    status, answer = api.json("FRA", "GET", "/api/audit?action=login_throttled", token="auditor")
    assert status == 200
    return [e["detail"] for e in answer["entries"] if e["detail"]["remote"] == "127.0.0.2"]


def test_repeated_failed_logins_are_slowed_down_audited_and_forgiven(
    api: Api, clock: DrivenClock
) -> None:
    def attempt(token: str) -> tuple[int, str | None]:
        status, headers, _ = api.call("FRA", "GET", "/api/peers", token=token, source="127.0.0.2")
        return status, headers.get("retry-after")

    first = [attempt("cpn_wrong") for _ in range(3)]
    inside = [attempt("cpn_wrong"), attempt("officer"), attempt("cpn_wrong")]
    elsewhere, _ = api.json("FRA", "GET", "/api/peers", token="officer")  # from 127.0.0.1
    audited_once = _throttled_entries(api)

    def once_let_in(token: str) -> tuple[int, str | None] | None:
        """The first answer past the penalty window (answers inside it count for nothing)."""
        answer = attempt(token)
        return answer if answer[0] != 429 else None

    doubled = wait_for(lambda: once_let_in("cpn_wrong"), what="the first window to end")
    capped = wait_for(lambda: once_let_in("cpn_wrong"), what="the doubled window to end")
    inside_capped = attempt("officer")  # a valid token is let in, but forgives nothing
    clock.advance(2)  # the capped window (2 s) runs out on FRA's clock
    forgiven = attempt("officer")
    afresh = attempt("cpn_wrong")

    assert first == [(401, None), (401, None), (401, "1")]
    # Inside the window a refused token waits; a valid one from the same address never does.
    assert inside == [(429, "1"), (200, None), (429, "1")]
    assert elsewhere == 200
    assert audited_once == [{"remote": "127.0.0.2", "seconds": 1}]
    assert doubled == (401, "2")
    assert capped == (401, "2")
    assert inside_capped == (200, None)
    assert forgiven == (200, None)
    assert afresh == (401, None)
    assert [e["seconds"] for e in _throttled_entries(api)] == [1, 2, 2]
    figures = _metrics(api, "FRA")
    assert figures[("cpn_login_throttled_total", ())] >= 3
    assert figures[("cpn_login_failures_total", ())] >= 6  # a 429 checks no token


def test_refused_tokens_from_rotating_addresses_do_not_grow_the_log_without_bound(
    api: Api,
) -> None:
    sources = [f"127.0.1.{n}" for n in range(1, 41)]  # one refused token each: no window

    answers = [
        api.call("FRA", "GET", "/api/peers", token="cpn_wrong", source=s)[0] for s in sources
    ]

    assert answers == [401] * len(sources)
    status, found = api.json("FRA", "GET", "/api/audit?action=login_failed", token="auditor")
    assert status == 200
    from_these = [e for e in found["entries"] if e["detail"]["remote"] in sources]
    assert 0 < len(from_these) <= LOGIN_AUDIT_LIMIT < len(sources)
    assert _metrics(api, "FRA")[("cpn_login_failures_total", ())] >= len(sources)


def test_an_mla_notice_and_an_extension_name_the_preservation_they_continue(api: Api) -> None:
    notice = sample_body("mla_notice", follows=api.received)
    extension = sample_body("preservation", status="extension", extends=api.received)

    for message_type, body in (("mla_notice", notice), ("preservation", extension)):
        api.net.send("FRA", "DEU", message_type, body)  # 202: a preservation sent to DEU
