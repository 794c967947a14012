"""Single sign-on (issue 21, item 3): OpenID Connect's authorization-code flow with PKCE,
the parts that are rules and not I/O.

A node with `[auth.oidc]` sends officers to their agency's provider; the provider sends
them back with a code; the node exchanges it (with the PKCE verifier only it holds) for
an ID token, and takes the person only if that token is signed by a key the provider
publishes, issued by that provider, for this node (`aud`, and `azp` when present), not
expired, and carries the nonce this browser's sign-in began with. Their role is mapped
from a claim (`role_claim`, a string or a list of strings) through `roles`; a person
none of whose values maps to a role is refused. Validation: joserfc (JOSE, by the
authlib authors); the flow's HTTP steps are the node's (network/api/oidc.py).
Pure: no I/O, no clock (the time is passed in).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from network.core.errors import ConfigError, SignInRefused
from network.core.records import ROLES

__all__ = [
    "OidcConfig",
    "Pending",
    "names_a_key_not_held",
    "new_pending",
    "person",
    "pkce_challenge",
]

SIGNING_ALGORITHMS: Final = ["RS256", "PS256", "ES256", "EdDSA"]  # never "none", never HMAC
LEEWAY_S: Final = 60  # clock difference taken on exp and iat


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """`[auth.oidc]`: the provider, this node as its client, and how roles are read."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    role_claim: str = "groups"
    roles: Mapping[str, str] = field(default_factory=dict)  # claim value -> cpn role
    name_claim: str = "preferred_username"
    name: str = "single sign-on"  # what the console's button says
    scopes: str = "openid profile email"

    @classmethod
    def parse(cls, table: object, where: str) -> OidcConfig:
        """The `[auth.oidc]` table; ConfigError naming the key that is wrong."""
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        known = {
            "issuer", "client_id", "client_secret", "role_claim", "roles", "name_claim",
            "name", "scopes",
        }  # fmt: skip
        extra = sorted(set(table) - known)
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: unknown key")
        text = {}
        for key in ("issuer", "client_id", "client_secret"):
            value = table.get(key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}.{key}: required")
            text[key] = value
        loopback = ("http://127.0.0.1:", "http://localhost:", "http://127.0.0.1/")
        if not text["issuer"].startswith(("https://", *loopback)):
            raise ConfigError(f"{where}.issuer: must be https:// (http only on loopback)")
        roles = table.get("roles")
        if not isinstance(roles, dict) or not roles:
            raise ConfigError(
                f'{where}.roles: map claim values to roles, e.g. {{cpn-officers = "officer"}}'
            )
        for value, role in roles.items():
            if role not in ROLES:
                raise ConfigError(
                    f"{where}.roles.{value}: {role!r} is not one of {', '.join(ROLES)}"
                )
        optional = {}
        for key in ("role_claim", "name_claim", "name", "scopes"):
            if key in table:
                if not isinstance(table[key], str) or not table[key]:
                    raise ConfigError(f"{where}.{key}: expected text")
                optional[key] = table[key]
        if "openid" not in optional.get("scopes", "openid").split():
            raise ConfigError(f"{where}.scopes: must include openid")
        return cls(
            issuer=text["issuer"].rstrip("/"),
            client_id=text["client_id"],
            client_secret=text["client_secret"],
            roles=dict(roles),
            **optional,
        )


@dataclass(frozen=True, slots=True)
class Pending:
    """A sign-in sent to the provider: what its answer must match."""

    state: str
    nonce: str
    verifier: str  # PKCE (RFC 7636): only this node knows it


def pkce_challenge(verifier: str) -> str:
    """The PKCE challenge of `verifier` (RFC 7636, S256)."""
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_pending() -> Pending:
    """A new sign-in's state, nonce and PKCE verifier (random, 192 to 384 bits)."""
    return Pending(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48))


def names_a_key_not_held(id_token: str, jwks: Mapping[str, Any]) -> bool:
    """Whether the token's header names a key (`kid`) that `jwks` does not hold: the
    provider rotated its keys since they were fetched."""
    try:
        header = json.loads(base64.urlsafe_b64decode(id_token.split(".")[0] + "=="))
    except ValueError:
        return False
    kid = header.get("kid") if isinstance(header, dict) else None
    held = {k.get("kid") for k in jwks.get("keys", []) if isinstance(k, dict)}
    return isinstance(kid, str) and kid not in held


def person(
    config: OidcConfig, id_token: str, jwks: Mapping[str, Any], nonce: str, now_s: int
) -> tuple[str, str, dict[str, Any]]:
    """The name and role of the person an ID token signs in, and its claims; SignInRefused
    saying which check failed (signature, issuer, audience, time, nonce, name, role)."""
    # Imported here: joserfc takes some 25 ms to import, and every node and `cpn` command
    # reads this module's config, while only a sign-in through the agency checks a token.
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    try:
        keys = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
        token = jwt.decode(id_token, keys, algorithms=SIGNING_ALGORITHMS)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise SignInRefused(f"the ID token does not verify: {exc}") from None
    claims = dict(token.claims)
    registry = jwt.JWTClaimsRegistry(
        now=now_s,
        leeway=LEEWAY_S,
        iss={"essential": True, "value": config.issuer},
        aud={"essential": True, "value": config.client_id},
        exp={"essential": True},
        sub={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise SignInRefused(f"the ID token is not for this sign-in: {exc}") from None
    azp = claims.get("azp")
    if azp is not None and azp != config.client_id:
        raise SignInRefused(f"the ID token was issued to {azp!r}, not this node")
    name = claims.get(config.name_claim, claims.get("sub"))
    if not isinstance(name, str) or not 0 < len(name) <= 100 or not name.isprintable():
        raise SignInRefused(f"the ID token's {config.name_claim} is not a user name")
    values = claims.get(config.role_claim)
    values = [values] if isinstance(values, str) else values
    if not isinstance(values, list):
        raise SignInRefused(f"the ID token has no {config.role_claim} claim to take a role from")
    roles = [config.roles[v] for v in values if isinstance(v, str) and v in config.roles]
    if not roles:
        raise SignInRefused(f"{name}: no {config.role_claim} value gives a role on this node")
    return name, roles[0], claims
