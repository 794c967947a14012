"""Single sign-on (issue 21, item 3): OpenID Connect's authorization-code flow with PKCE
against a real provider started here (`oidc-provider-mock` from PyPI: Flask and authlib's
server, discovery, JWKS, signed ID tokens, nonces required), in real Chromium; and the ID
token's checks one by one, on tokens signed here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from playwright.sync_api import BrowserContext, expect

from network.api.oidc import authorization_url
from network.core.errors import ConfigError, SignInRefused
from network.core.oidc import OidcConfig, names_a_key_not_held, new_pending, person
from tests.harness import Network, free_port, rows, wait_for
from tests.test_console import browser  # noqa: F401 (the browser fixture)
from tests.test_console import context as context  # the page fixture

pytestmark = pytest.mark.timeout(180)

USERS = [
    {"sub": "alice-sub", "preferred_username": "alice", "groups": ["staff", "cpn-officers"]},
    {"sub": "mallory-sub", "preferred_username": "mallory", "groups": ["visitors"]},
]


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    port = free_port()
    claims = [arg for user in USERS for arg in ("--user-claims", json.dumps(user))]
    process = subprocess.Popen(
        [sys.executable, "-m", "oidc_provider_mock", "-p", str(port), "-n", "true", *claims],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    issuer = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                with urllib.request.urlopen(
                    f"{issuer}/.well-known/openid-configuration", timeout=2
                ):
                    return True
            except OSError:
                return False

        wait_for(up, timeout=30, what="the OpenID provider")
        yield issuer
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def network(provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    sso = (
        f'[auth.oidc]\nissuer = "{provider}"\nclient_id = "cpn-fra"\nclient_secret = "s3cret"\n'
        'role_claim = "groups"\nroles = { "cpn-officers" = "officer", "cpn-audit" = "auditor" }\n'
        'name = "Police SSO"\n'
    )
    network = Network(tmp_path_factory.mktemp("oidc"), {"FRA": []}, extra_config={"FRA": sso})
    try:
        network.start("FRA")
        yield network
    finally:
        network.close()


def localhost(network: Network) -> str:
    """FRA's console at localhost (its origin: where the provider sends people back)."""
    return network.nodes["FRA"].api.replace("127.0.0.1", "localhost")


def audited(network: Network, action: str) -> list[tuple[str, dict[str, Any]]]:
    found = rows(
        network.nodes["FRA"].store, "SELECT actor, detail FROM audit WHERE action = ?", (action,)
    )
    return [(actor, json.loads(detail)) for actor, detail in found]


def test_an_officer_signs_in_through_the_agency(network: Network, context: BrowserContext) -> None:
    page = context.new_page()
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/oauth2/authorize" in r.url else None)
    page.goto(localhost(network) + "/")
    page.click("#oidc-signin")
    page.click("button[value='alice-sub']")  # the provider's page: alice authorizes
    expect(page.locator("#who")).to_have_text("alice (officer)")
    # What the node asked of the provider: a code, with PKCE (S256) and a nonce.
    asked = parse_qs(urlsplit(sent[0]).query)
    assert asked["response_type"] == ["code"] and asked["code_challenge_method"] == ["S256"]
    assert len(asked["code_challenge"][0]) == 43 and asked["nonce"] and asked["state"]
    assert asked["redirect_uri"] == [localhost(network) + "/auth/oidc/callback"]
    created = [d for _, d in audited(network, "account_created")]
    assert created == [{"user": "alice", "role": "officer", "sub": "alice-sub"}]
    started = [d for a, d in audited(network, "session_started") if a == "alice"]
    assert [d["method"] for d in started] == ["oidc"]
    # A second sign-in finds her account; no second one is made.
    page.click("#signout")
    expect(page.locator("#top")).to_be_hidden()
    page.click("#oidc-signin")
    page.click("button[value='alice-sub']")
    expect(page.locator("#who")).to_have_text("alice (officer)")
    assert len(audited(network, "account_created")) == 1


def test_a_person_the_claim_gives_no_role_is_refused(
    network: Network, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(localhost(network) + "/")
    page.click("#oidc-signin")
    page.click("button[value='mallory-sub']")
    expect(page.locator(".signin [role=alert]")).to_contain_text(
        "mallory: no groups value gives a role"
    )
    assert any(d.get("method") == "oidc" for _, d in audited(network, "login_failed"))
    assert rows(network.nodes["FRA"].store, "SELECT 1 FROM users WHERE name = 'mallory'") == []


def test_an_answer_this_browser_did_not_ask_for_is_refused(network: Network) -> None:
    url = f"{network.nodes['FRA'].api}/auth/oidc/callback?state=forged&code=stolen"
    request = urllib.request.Request(url)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(request, timeout=10)
    except urllib.error.HTTPError as error:
        location = error.headers["Location"]
    assert location.startswith("/#/signin-refused/")
    assert "not%20begun%20in%20this%20browser" in location


# -- the ID token's checks, one by one -------------------------------------------------

CONFIG = OidcConfig(
    issuer="https://idp.example",
    client_id="cpn-fra",
    client_secret="x",
    roles={"cpn-officers": "officer"},
)
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
JWKS = KeySet([KEY]).as_dict()
NOW = 1_800_000_000


def token(**changes: Any) -> str:
    claims = {
        "iss": "https://idp.example",
        "aud": "cpn-fra",
        "sub": "s1",
        "exp": NOW + 300,
        "iat": NOW,
        "nonce": "n1",
        "preferred_username": "alice",
        "groups": ["cpn-officers"],
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, KEY)


def test_a_good_id_token_names_its_person_and_role() -> None:
    name, role, claims = person(CONFIG, token(), JWKS, "n1", NOW)
    assert (name, role, claims["sub"]) == ("alice", "officer", "s1")


@pytest.mark.parametrize(
    ("changes", "nonce", "named"),
    [
        ({"nonce": "replayed"}, "n1", "nonce"),
        ({"aud": "another-client"}, "n1", "aud"),
        ({"iss": "https://evil.example"}, "n1", "iss"),
        ({"exp": NOW - 3600}, "n1", "exp"),
        ({"nonce": None}, "n1", "nonce"),
        ({"azp": "another-client"}, "n1", "issued to 'another-client'"),
        ({"groups": ["visitors"]}, "n1", "no groups value gives a role"),
        ({"groups": None}, "n1", "no groups claim"),
        ({"preferred_username": "a\nb"}, "n1", "not a user name"),
    ],
)
def test_an_id_token_that_is_not_for_this_sign_in_is_refused(
    changes: dict[str, Any], nonce: str, named: str
) -> None:
    with pytest.raises(SignInRefused, match=named):
        person(CONFIG, token(**changes), JWKS, nonce, NOW)


def test_a_token_signed_by_another_key_or_unsigned_is_refused() -> None:
    other = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    forged = jwt.encode({"alg": "RS256", "kid": "k1"}, {"iss": "https://idp.example"}, other)
    with pytest.raises(SignInRefused, match="does not verify"):
        person(CONFIG, forged, JWKS, "n1", NOW)
    _, payload, _ = token().split(".")
    none = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(SignInRefused, match="does not verify"):
        person(CONFIG, f"{none}.{payload}.", JWKS, "n1", NOW)


def test_the_authorization_request_carries_pkce_and_a_nonce() -> None:
    pending = new_pending()
    url = authorization_url(
        CONFIG, "https://idp.example/authorize", "https://cpn.example/cb", pending
    )
    query = parse_qs(urlsplit(url).query)
    expected = base64.urlsafe_b64encode(hashlib.sha256(pending.verifier.encode()).digest())
    assert query["code_challenge"] == [expected.rstrip(b"=").decode()]
    assert query["state"] == [pending.state] and query["nonce"] == [pending.nonce]
    assert pending.verifier not in url


@pytest.mark.parametrize(
    ("table", "named"),
    [
        (
            {
                "issuer": "http://idp.example",
                "client_id": "c",
                "client_secret": "s",
                "roles": {"a": "officer"},
            },
            "https://",
        ),
        (
            {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s", "roles": {}},
            "roles",
        ),
        (
            {
                "issuer": "https://idp.example",
                "client_id": "c",
                "client_secret": "s",
                "roles": {"a": "boss"},
            },
            "roles.a",
        ),
        (
            {"issuer": "https://idp.example", "client_id": "c", "roles": {"a": "officer"}},
            "client_secret",
        ),
    ],
)
def test_a_bad_sso_config_is_refused_by_name(table: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        OidcConfig.parse(table, "auth.oidc")


def test_a_token_naming_a_key_not_held_asks_for_the_keys_again() -> None:
    """The provider rotated its keys: a token names one the node has not fetched yet."""
    assert not names_a_key_not_held(token(), JWKS)
    rotated = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    fresh = jwt.encode({"alg": "RS256", "kid": "k2"}, {"iss": "https://idp.example"}, rotated)
    assert names_a_key_not_held(fresh, JWKS)
