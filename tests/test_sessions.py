"""Console sessions (issue 21, item 2), on a real node: a sign-in gives an HttpOnly,
SameSite=Strict cookie bound to its person; every change made with it needs the session's
CSRF token; sign-out ends it on the node; it ends after its idle time and at its limit; a
disabled account's session ends at once; every step is audited. Bearer tokens, for
machines, work as before.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, expect

from network.samples import sample_body
from tests.harness import DrivenClock, Network, rows
from tests.test_console import Console, browser  # noqa: F401 (the browser fixture)
from tests.test_console import context as context  # the page fixture

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> DrivenClock:
    """FRA's wall clock, which the tests move on: a session's idle time and limit pass as
    steps, not waits."""
    return DrivenClock(tmp_path_factory.mktemp("clock") / "FRA.faketime")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory, clock: DrivenClock) -> Any:
    network = Network(
        tmp_path_factory.mktemp("sessions"),
        {"FRA": ["DEU"], "DEU": []},
        api_config='session_idle = "3s"\nsession_max = "8s"\n',
    )
    network.add_user("FRA", "admin-FRA", "admin", key="admin")
    try:
        network.start("DEU")
        network.start("FRA", env=clock.env)
        yield network
    finally:
        network.close()


def call(
    network: Network,
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    csrf: str | None = None,
    token: str | None = None,
    body: Any = None,
) -> tuple[int, dict[str, str], Any]:
    """One request to FRA's API, with a session cookie, a CSRF header or a token."""
    node = network.nodes["FRA"]
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(node.api + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if cookie is not None:
        request.add_header("Cookie", f"cpn_session_FRA={cookie}")
    if csrf is not None:
        request.add_header("X-CSRF-Token", csrf)
    if token is not None:
        request.add_header("Authorization", f"Bearer {node.tokens.get(token, token)}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


def sign_in(network: Network, role: str = "officer") -> tuple[str, str, dict[str, str]]:
    status, headers, answer = call(network, "POST", "/api/session", token=role)
    assert status == 201, answer
    jar = SimpleCookie(headers["Set-Cookie"])
    return jar["cpn_session_FRA"].value, answer["csrf"], headers


def audited(network: Network, action: str) -> list[tuple[str, dict[str, Any]]]:
    found = rows(
        network.nodes["FRA"].store, "SELECT actor, detail FROM audit WHERE action = ?", (action,)
    )
    return [(actor, json.loads(detail)) for actor, detail in found]


def test_a_sign_in_gives_a_cookie_no_script_can_read_or_send_elsewhere(network: Network) -> None:
    cookie, csrf, headers = sign_in(network)
    attributes = headers["Set-Cookie"].lower()
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # this API is plain HTTP on loopback: Secure over TLS
    status, _, me = call(network, "GET", "/api/session", cookie=cookie)
    assert status == 200 and (me["user"], me["role"], me["csrf"]) == (
        "officer-FRA",
        "officer",
        csrf,
    )
    assert any(d["method"] == "token" for a, d in audited(network, "session_started"))


def test_a_change_made_with_the_cookie_needs_the_csrf_token(network: Network) -> None:
    cookie, csrf, _ = sign_in(network)
    request = {"to": "DEU", "type": "locate", "priority": "urgent", "body": sample_body("locate")}
    status, _, refused = call(network, "POST", "/api/messages", cookie=cookie, body=request)
    assert status == 403 and "X-CSRF-Token" in refused["error"]
    status, _, refused = call(
        network, "POST", "/api/messages", cookie=cookie, csrf="forged", body=request
    )
    assert status == 403
    assert len(audited(network, "csrf_refused")) >= 2
    status, _, sent = call(network, "POST", "/api/messages", cookie=cookie, csrf=csrf, body=request)
    assert status == 202, sent
    assert sent["composed_by"] == "officer-FRA"  # bound to its person
    # Another session's token does not do.
    _, other_csrf, _ = sign_in(network)
    status, _, _ = call(
        network, "POST", "/api/messages", cookie=cookie, csrf=other_csrf, body=request
    )
    assert status == 403


def test_sign_out_ends_the_session_on_the_node(network: Network) -> None:
    cookie, csrf, _ = sign_in(network)
    status, headers, _ = call(network, "DELETE", "/api/session", cookie=cookie, csrf=csrf)
    assert status == 200
    assert 'cpn_session_FRA=""' in headers["Set-Cookie"] or "Max-Age=0" in headers["Set-Cookie"]
    # The cookie kept (a copy taken before) opens nothing now.
    status, _, _ = call(network, "GET", "/api/session", cookie=cookie)
    assert status == 401
    assert any(d["why"] == "signed out" for _, d in audited(network, "session_ended"))


def test_a_session_ends_when_idle_and_at_its_limit(network: Network, clock: DrivenClock) -> None:
    cookie, _, _ = sign_in(network)
    clock.advance(4)  # longer than the idle time (3 s)
    status, _, answer = call(network, "GET", "/api/session", cookie=cookie)
    assert status == 401 and "expired" in answer["error"]
    cookie, _, _ = sign_in(network)
    statuses = []
    for _ in range(8):  # busy, never idle: its limit (8 s) still ends it
        clock.advance(1)  # a request a second, under the idle time
        statuses.append(call(network, "GET", "/api/messages?box=in", cookie=cookie)[0])
    # The eighth comes 8 s and the requests' own milliseconds after sign-in: past the limit.
    assert statuses == [200] * 7 + [401]
    reasons = {d["why"] for _, d in audited(network, "session_expired")}
    assert reasons == {"idle", "limit"}


def test_a_disabled_accounts_session_ends_at_once(network: Network) -> None:
    cookie, _, _ = sign_in(network, "auditor")
    status, _, _ = call(
        network, "POST", "/api/users/auditor-FRA", token="admin", body={"disabled": True}
    )
    assert status == 200
    status, _, answer = call(network, "GET", "/api/session", cookie=cookie)
    assert status == 401, answer
    ended = [d for a, d in audited(network, "session_ended") if a == "auditor-FRA"]
    assert ended[-1] == {"why": "account disabled", "by": "admin-FRA"}
    call(network, "POST", "/api/users/auditor-FRA", token="admin", body={"disabled": False})
    status, _, _ = call(network, "GET", "/api/session", cookie=cookie)
    assert status == 401  # enabled again, but that session is over: sign in again


def test_a_live_stream_ends_with_its_session(network: Network, clock: DrivenClock) -> None:
    """The console's live events stop when its session ends (idle here): a stream is no
    request, and keeps no idle session open."""
    cookie, _, _ = sign_in(network)
    request = urllib.request.Request(network.nodes["FRA"].api + "/api/events")
    request.add_header("Cookie", f"cpn_session_FRA={cookie}")
    with urllib.request.urlopen(request, timeout=20) as stream:
        assert stream.readline() == b": live\n"
        clock.advance(4)  # the session idles past its 3 s while only the stream is open
        received = stream.read()  # until the node ends it
    assert b"event: ended" in received
    status, _, _ = call(network, "GET", "/api/session", cookie=cookie)
    assert status == 401


def test_machines_keep_their_bearer_tokens(network: Network) -> None:
    status, _, answer = call(network, "GET", "/api/messages?box=in", token="officer")
    assert status == 200
    status, _, answer = call(network, "GET", "/api/session", token="officer")
    assert status == 404 and "token" in answer["error"]


def test_behind_a_tls_proxy_the_cookie_is_secure(tmp_path: Any) -> None:
    """TLS ended by a proxy in front of the node: the node sees plain HTTP, but its console's
    origin is https, so the session's cookie is Secure (never sent in clear). (It comes
    before the browser's test: that holds an event loop, which a new network cannot share.)"""
    network = Network(tmp_path, {"FRA": []}, api_config='origin = "https://cpn.fra.example"\n')
    try:
        network.start("FRA")
        status, headers, _ = call(network, "POST", "/api/session", token="officer")
    finally:
        network.close()
    assert status == 201
    assert "secure" in headers["Set-Cookie"].lower()


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A node with the default idle time (15 min) for the browser: a page's steps under a
    loaded machine may be seconds apart, which the module's 3 s would count as idle. Made
    before the browser (asked for first), whose event loop a new network cannot share."""
    network = Network(tmp_path_factory.mktemp("desk"), {"FRA": []})
    try:
        network.start("FRA")
        yield network
    finally:
        network.close()


def test_the_console_signs_in_with_a_session_and_out(
    desk: Network, context: BrowserContext
) -> None:
    network = desk
    console = Console(context, network, "FRA", "officer")
    assert console.page.evaluate("document.cookie") == ""  # HttpOnly: no script sees it
    assert console.page.evaluate("JSON.stringify(sessionStorage)").find("cpn_") == -1
    console.page.reload()  # the session survives a reload, without the token
    expect(console.page.locator("#who")).to_have_text("officer-FRA (officer)")
    cookie = next(c["value"] for c in context.cookies() if c["name"] == "cpn_session_FRA")
    console.page.click("#signout")
    expect(console.page.locator("#token")).to_be_visible()
    status, _, _ = call(network, "GET", "/api/session", cookie=cookie)
    assert status == 401
