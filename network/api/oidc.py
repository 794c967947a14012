"""Single sign-on's HTTP side (issue 21, item 3): the node as an OpenID Connect client.

The provider's metadata comes from its discovery document (its `issuer` must be the one
configured, exactly); its signing keys from its `jwks_uri` (fetched again once when a
token names a key not held: providers rotate). A sign-in begun here is kept ten minutes,
by its `state`, and taken once. The token request authenticates this node with its
client secret (HTTP Basic, RFC 6749 2.3.1) and proves the sign-in is the one begun here
with the PKCE verifier. What the answer must be is network/core/oidc.py's.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp

from network.core.errors import SignInRefused
from network.core.oidc import (
    OidcConfig,
    Pending,
    names_a_key_not_held,
    new_pending,
    person,
    pkce_challenge,
)

__all__ = ["SingleSignOn", "authorization_url"]

PENDING_S: Final = 600.0  # a sign-in at the provider: ten minutes
MAX_PENDING: Final = 10_000
MAX_PER_ADDRESS: Final = 20  # one address's oldest go first: it cannot push others' out
DISCOVERY_S: Final = 3_600.0  # metadata and keys kept an hour
MAX_ANSWER: Final = 1024 * 1024
TIMEOUT: Final = aiohttp.ClientTimeout(total=10)


class SingleSignOn:
    """One node's client of its agency's OpenID Connect provider."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._pending: OrderedDict[str, tuple[Pending, float, str]] = OrderedDict()
        self._metadata: tuple[dict[str, Any], float] | None = None
        self._keys: dict[str, Any] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def start(self, redirect_uri: str, address: str = "") -> tuple[str, str]:
        """The provider's URL for a new sign-in (asked from `address`), and its `state`."""
        metadata = await self._discover()
        pending = new_pending()
        url = authorization_url(
            self.config, str(metadata["authorization_endpoint"]), redirect_uri, pending
        )
        mine = [k for k, (_, _, a) in self._pending.items() if a == address]
        for key in mine[: max(0, len(mine) - MAX_PER_ADDRESS + 1)]:
            del self._pending[key]
        self._pending[pending.state] = (pending, time.monotonic(), address)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        return url, pending.state

    async def finish(
        self, state: str, code: str, redirect_uri: str, now_s: int
    ) -> tuple[str, str, dict[str, Any]]:
        """The name, role and claims of the person the provider sends back; SignInRefused
        saying why not (a sign-in not begun here, or past its time; the provider's refusal;
        an ID token that does not hold)."""
        found = self._pending.pop(state, None)
        if found is None or time.monotonic() - found[1] > PENDING_S:
            raise SignInRefused("this sign-in was not begun here, or took too long: start again")
        pending = found[0]
        metadata = await self._discover()
        answer = await self._post(
            str(metadata["token_endpoint"]),
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": pending.verifier,
            },
        )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise SignInRefused("the provider's answer holds no ID token")
        keys = await self._jwks(metadata)
        if names_a_key_not_held(id_token, keys):  # the provider rotated: fetch them once more
            self._keys = None
            keys = await self._jwks(metadata)
        return person(self.config, id_token, keys, pending.nonce, now_s)

    # -- the provider --------------------------------------------------------------

    async def _discover(self) -> dict[str, Any]:
        if self._metadata is not None and time.monotonic() - self._metadata[1] < DISCOVERY_S:
            return self._metadata[0]
        url = f"{self.config.issuer}/.well-known/openid-configuration"
        metadata = await self._get(url)
        if metadata.get("issuer") != self.config.issuer:
            raise SignInRefused(
                f"the provider at {url} says it is {metadata.get('issuer')!r}, not"
                f" {self.config.issuer!r}"
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(metadata.get(key), str):
                raise SignInRefused(f"the provider's metadata has no {key}")
        self._metadata = (metadata, time.monotonic())
        return metadata

    async def _jwks(self, metadata: dict[str, Any]) -> dict[str, Any]:
        if self._keys is None:
            self._keys = await self._get(str(metadata["jwks_uri"]))
        return self._keys

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._http

    async def _get(self, url: str) -> dict[str, Any]:
        try:
            async with self._session().get(url) as response:
                return await _json(response, url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SignInRefused(f"cannot reach the provider ({url}): {exc}") from None

    async def _post(self, url: str, form: dict[str, str]) -> dict[str, Any]:
        auth = aiohttp.BasicAuth(self.config.client_id, self.config.client_secret)
        try:
            async with self._session().post(url, data=form, auth=auth) as response:
                return await _json(response, url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SignInRefused(f"cannot reach the provider ({url}): {exc}") from None


def authorization_url(
    config: OidcConfig, endpoint: str, redirect_uri: str, pending: Pending
) -> str:
    """The provider's authorization URL for `pending` (code flow, PKCE S256, a nonce)."""
    query = urlencode(
        {
            "response_type": "code",
            "client_id": config.client_id,
            "redirect_uri": redirect_uri,
            "scope": config.scopes,
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": pkce_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
    )
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


async def _json(response: aiohttp.ClientResponse, url: str) -> dict[str, Any]:
    data = await response.content.read(MAX_ANSWER + 1)
    if len(data) > MAX_ANSWER:
        raise SignInRefused(f"{url}: the provider's answer is over {MAX_ANSWER} bytes")
    try:
        value = json.loads(data)
    except ValueError:
        raise SignInRefused(
            f"{url}: the provider's answer ({response.status}) is not JSON"
        ) from None
    if response.status != 200:
        error = None
        if isinstance(value, dict):
            error = value.get("error_description") or value.get("error")
        raise SignInRefused(f"the provider refused ({response.status}): {error or 'no reason'}")
    if not isinstance(value, dict):
        raise SignInRefused(f"{url}: the provider's answer is not a JSON object")
    return value
