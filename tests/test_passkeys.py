"""Passkeys (issue 21, item 1), in real Chromium with its virtual authenticator (Chrome
DevTools Protocol, WebAuthn domain) against a real node: `cpn user add` prints a one-time
enrolment link; the person registers a passkey there and is signed in; they sign in with
it after; they add another on a second device; an administrator revokes one, which signs
in no more. Every step audited; a forged or replayed response is refused and counted.

The console is opened at http://localhost:PORT (the node listens on 127.0.0.1 only):
WebAuthn takes no IP address as a relying party, and browsers treat localhost as secure.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.harness import Network, cpn, rows
from tests.test_console import browser  # noqa: F401 (the browser fixture)
from tests.test_console import context as context  # the page fixture

pytestmark = pytest.mark.timeout(180)

AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("passkeys"), {"FRA": [], "DEU": ["FRA"]})
    network.add_user("FRA", "admin-FRA", "admin", key="admin")
    try:
        network.start("FRA")
        yield network
    finally:
        network.close()


def enrolment_link(network: Network, name: str, role: str = "officer") -> str:
    made = cpn("user", "add", name, "--role", role, "--config", str(network.nodes["FRA"].config))
    assert made.returncode == 0, made.stderr
    link = made.stdout.split()[-1]
    port = network.nodes["FRA"].api.rsplit(":", 1)[1]
    assert re.fullmatch(rf"http://localhost:{port}/#/enrol/[A-Za-z0-9_-]{{32}}", link), link
    return link


def authenticator(page: Page, context: BrowserContext) -> tuple[Any, str]:
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    found = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
    return cdp, found["authenticatorId"]


def audited(network: Network, action: str) -> list[tuple[str, dict[str, Any]]]:
    found = rows(
        network.nodes["FRA"].store, "SELECT actor, detail FROM audit WHERE action = ?", (action,)
    )
    return [(actor, json.loads(detail)) for actor, detail in found]


def post(network: Network, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    node = network.nodes["FRA"]
    request = urllib.request.Request(node.api + path, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {node.tokens[token]}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_a_person_enrols_signs_in_adds_a_passkey_and_loses_one(
    network: Network, context: BrowserContext
) -> None:
    link = enrolment_link(network, "alice")
    page = context.new_page()
    cdp, first = authenticator(page, context)
    page.goto(link)
    page.fill("#passkey-label", "office laptop")
    page.click("text=Register a passkey")
    expect(page.locator("#who")).to_have_text("alice (officer)")
    assert page.evaluate("document.cookie") == ""
    started = [d for a, d in audited(network, "session_started") if a == "alice"]
    assert [d["method"] for d in started] == ["passkey"]
    registered = [d for a, d in audited(network, "passkey_registered") if a == "alice"]
    assert registered[0]["label"] == "office laptop" and registered[0]["enrolment"] is True

    # The link works once.
    second_tab = context.new_page()
    second_tab.goto(link)
    second_tab.click("text=Register a passkey")
    expect(second_tab.locator(".signin [role=alert]")).to_contain_text("unknown, used or expired")
    second_tab.close()

    # Signed out, she signs in with the passkey alone: no name, no token.
    sign_in_again(page)

    # A second device: the first goes away, a security key comes; she adds it signed in.
    cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": first})
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {**AUTHENTICATOR, "transport": "usb"}})
    page.click("#nav >> text=Passkeys")
    page.fill("#new-passkey-label", "security key")
    page.click("button:has-text('Add a passkey')")
    expect(page.locator("table.passkeys tbody tr")).to_have_count(2)
    sign_in_again(page)  # with the security key: the laptop is gone

    # The administrator revokes the security key (lost): it signs in no more.
    status, listed = urllib_get(network, "/api/users/alice/passkeys", "admin")
    assert status == 200
    key = next(k for k in listed["passkeys"] if k["label"] == "security key")
    assert key["last_used"] is not None
    status, _ = post(network, f"/api/users/alice/passkeys/{key['id']}/revoke", {}, "admin")
    assert status == 200
    assert any(d["passkey"] == key["id"] for _, d in audited(network, "passkey_revoked"))
    page.click("#signout")
    expect(page.locator("#top")).to_be_hidden()
    page.click("#passkey-signin")
    expect(page.locator(".signin [role=alert]")).to_contain_text("not registered here")
    assert any(d.get("method") == "passkey" for _, d in audited(network, "login_failed"))


def sign_in_again(page: Page) -> None:
    """Sign out, then in with a passkey alone (no name, no token)."""
    page.click("#signout")
    expect(page.locator("#top")).to_be_hidden()
    page.click("#passkey-signin")
    expect(page.locator("#top")).to_be_visible()
    expect(page.locator("#who")).to_have_text("alice (officer)")


def urllib_get(network: Network, path: str, token: str) -> tuple[int, Any]:
    node = network.nodes["FRA"]
    request = urllib.request.Request(node.api + path)
    request.add_header("Authorization", f"Bearer {node.tokens[token]}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def test_a_forged_or_replayed_sign_in_is_refused(network: Network) -> None:
    status, begun = post(network, "/auth/passkey/begin", {})
    assert status == 200 and begun["options"]["publicKey"]["challenge"]
    forged = {
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {"clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA"},
    }
    status, refused = post(
        network, "/auth/passkey/finish", {"ceremony": begun["ceremony"], "credential": forged}
    )
    assert status == 401 and refused["field"] == "credential"
    # That ceremony is spent: the same again is refused, before any credential is looked at.
    status, refused = post(
        network, "/auth/passkey/finish", {"ceremony": begun["ceremony"], "credential": forged}
    )
    assert status == 401 and refused["field"] == "ceremony"
    status, refused = post(network, "/auth/enrol/begin", {"code": "x" * 32})
    assert status == 400 and refused["field"] == "code"


def test_machines_keep_tokens_and_a_person_has_none(network: Network) -> None:
    enrolment_link(network, "bob")
    listed = cpn("user", "list", "--config", str(network.nodes["FRA"].config), "--json")
    assert listed.returncode == 0
    assert any(u["name"] == "bob" for u in json.loads(listed.stdout))
    status, _ = post(network, "/api/session", {}, "admin")  # a token still signs in
    assert status == 201


def test_one_address_starting_sign_ins_in_a_loop_pushes_out_only_its_own(
    network: Network,
) -> None:
    """Sign-ins begun and not finished are kept per address (the newest 20 of each): a
    flood from one address cannot push out another's before it finishes."""
    api = urlsplit(network.nodes["FRA"].api)

    def begin(source: str) -> str:
        connection = http.client.HTTPConnection(
            api.hostname, api.port, timeout=10, source_address=(source, 0)
        )
        connection.request("POST", "/auth/passkey/begin", body=b"{}",
                           headers={"Content-Type": "application/json"})  # fmt: skip
        answer = json.loads(connection.getresponse().read())
        connection.close()
        return str(answer["ceremony"])

    theirs = begin("127.0.0.2")  # another officer, at another desk (still loopback)
    flood = [begin("127.0.0.1") for _ in range(30)]
    forged = {"id": "AAAA", "rawId": "AAAA", "type": "public-key",
              "response": {"clientDataJSON": "e30", "authenticatorData": "AAAA",
                           "signature": "AAAA"}}  # fmt: skip
    # The flood's first are gone; the other address's sign-in is still there to finish.
    status, refused = post(
        network, "/auth/passkey/finish", {"ceremony": flood[0], "credential": forged}
    )
    assert (status, refused["field"]) == (401, "ceremony")
    status, refused = post(
        network, "/auth/passkey/finish", {"ceremony": flood[-1], "credential": forged}
    )
    assert (status, refused["field"]) == (401, "credential")
    status, refused = post(
        network, "/auth/passkey/finish", {"ceremony": theirs, "credential": forged}
    )
    assert (status, refused["field"]) == (401, "credential")
