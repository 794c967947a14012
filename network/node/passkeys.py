"""Passkeys (issue 21, item 1): officers sign in as people, with WebAuthn, through `fido2`.

`cpn user add NAME --role R` makes a person's account with no token and prints a
one-time enrolment link (valid a day); the person opens it in the console and registers
a passkey (the device's own, or a security key). From then on they sign in with it;
they may register more once signed in; an administrator lists and revokes them. Each
ceremony's challenge is kept here for five minutes, once: a response to another
ceremony, to none, or twice, is refused. A passkey's signature counter must grow (a
cloned authenticator shows itself by going back). Only the credential's public key and
id are stored; enrolment codes as their SHA-256.

The relying party is the console's origin (`[api] origin`, by default
http://localhost:PORT, which browsers treat as a secure context): only that origin's
responses are taken.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from fido2.server import Fido2Server
from fido2.webauthn import (
    AttestedCredentialData,
    AuthenticationResponse,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from network.core.errors import BodyError
from network.core.records import Json, b64encode
from network.node.context import NodeContext
from network.node.store import AuditEntry, Store, UserRow

__all__ = ["ENROLMENT_MS", "Passkeys", "enrol"]

ENROLMENT_MS: Final = 24 * 3_600_000  # an enrolment link is good for a day
CEREMONY_MS: Final = 5 * 60_000  # a registration or sign-in has five minutes
MAX_CEREMONIES: Final = 10_000  # started and not finished; the oldest go first
# Started and not finished from one address: its oldest go first, so that one address
# starting sign-ins in a loop cannot push others' out before they finish.
MAX_PER_ADDRESS: Final = 20
MAX_LABEL = 100


@dataclass(frozen=True, slots=True)
class _Ceremony:
    state: Any  # fido2's state: the challenge and what was required
    user: str | None  # registration: for whom
    started: float  # time.monotonic()
    address: str  # where it was asked from


async def enrol(store: Store, name: str, role: str, *, actor: str, now: int) -> str:
    """A person's account `name` (no token: they sign in with a passkey) and its one-time
    enrolment code; audited as `enrolment_issued`. BodyError naming `name` or `role`."""
    from network.node.officer import issue_token  # the account, with a token no one holds

    await issue_token(store, name, role, actor=actor, now=now)
    code = secrets.token_urlsafe(24)
    async with store.transaction(now) as tx:
        tx.add_enrolment(_digest(code), name, now + ENROLMENT_MS)
        tx.audit([AuditEntry(actor, "enrolment_issued", detail={"user": name, "role": role})])
    return code


class Passkeys:
    """WebAuthn registration and sign-in for one node's console."""

    def __init__(self, context: NodeContext, origin: str) -> None:
        self.context = context
        self.origin = origin
        rp_id = urlsplit(origin).hostname or "localhost"
        self.server = Fido2Server(
            PublicKeyCredentialRpEntity(id=rp_id, name=f"cpn {context.me}"),
            verify_origin=lambda given: given == origin,
        )
        self._ceremonies: OrderedDict[str, _Ceremony] = OrderedDict()

    # -- registration ------------------------------------------------------------------

    async def enrolment_user(self, code: object) -> UserRow:
        """The person an enrolment code is for, if it is good; BodyError naming `code`."""
        if not isinstance(code, str) or not 16 <= len(code) <= 64:
            raise BodyError("code", "not an enrolment code")
        found = await self.context.store.enrolment(_digest(code), self.context.clock())
        if found is None:
            raise BodyError("code", "this enrolment link is unknown, used or expired: ask again")
        user = await self.context.store.user(found)
        if user is None or user.disabled:
            raise BodyError("code", "this account may not sign in")
        return user

    async def register_begin(self, user: UserRow, address: str = "") -> tuple[str, dict[str, Any]]:
        """Options for the browser to create a passkey for `user` (not one it has), and the
        ceremony's id."""
        held = [
            AttestedCredentialData(raw)
            for raw in await self.context.store.passkey_credentials(user.name)
        ]
        options, state = self.server.register_begin(
            PublicKeyCredentialUserEntity(
                id=hashlib.sha256(user.name.encode()).digest()[:16],
                name=user.name,
                display_name=f"{user.name} ({user.role}, {self.context.me})",
            ),
            credentials=held,
            resident_key_requirement=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        return self._start(state, user.name, address), dict(options)

    async def register_finish(
        self,
        ceremony: object,
        response: object,
        label: object,
        *,
        code: str | None = None,
        user: str | None = None,
    ) -> UserRow:
        """Keep the passkey the browser created in `ceremony` (consuming `code`, at
        enrolment; for `user`, the person signed in, when adding one); audited as
        `passkey_registered`. BodyError naming what is wrong."""
        started = self._take(ceremony)
        if started.user is None or (user is not None and started.user != user):
            raise BodyError("ceremony", "not a registration of yours")
        if not isinstance(response, Mapping):
            raise BodyError("credential", "must be the credential, as toJSON() gives it")
        name = "passkey" if label is None else label
        if not isinstance(name, str) or not 0 < len(name) <= MAX_LABEL:
            raise BodyError("label", f"1 to {MAX_LABEL} characters")
        try:
            registration = RegistrationResponse.from_dict(response)
            auth_data = self.server.register_complete(started.state, registration)
        except (ValueError, KeyError, TypeError) as exc:
            raise BodyError("credential", f"refused: {exc}") from None
        credential = auth_data.credential_data
        assert credential is not None
        now = self.context.clock()
        store = self.context.store
        async with store.transaction(now, officer=True) as tx:
            if code is not None and not await tx.take_enrolment(_digest(code), started.user, now):
                raise BodyError("code", "this enrolment link was used meanwhile")
            tx.add_passkey(credential.credential_id, started.user, bytes(credential), name)
            detail: dict[str, Json] = {
                "passkey": b64encode(credential.credential_id),
                "label": name,
                "enrolment": code is not None,
            }
            tx.audit([AuditEntry(started.user, "passkey_registered", detail=detail)])
        account = await store.user(started.user)
        assert account is not None
        return account

    # -- sign-in -----------------------------------------------------------------------

    def sign_in_begin(self, address: str = "") -> tuple[str, dict[str, Any]]:
        """Options for the browser to sign in with any passkey of this node (discoverable:
        no name typed), and the ceremony's id."""
        options, state = self.server.authenticate_begin(
            user_verification=UserVerificationRequirement.REQUIRED
        )
        return self._start(state, None, address), dict(options)

    async def sign_in_finish(self, ceremony: object, response: object) -> UserRow:
        """The person whose passkey signed this ceremony's challenge; BodyError naming what
        is wrong (the HTTP layer audits and counts the failure)."""
        started = self._take(ceremony)
        if started.user is not None:
            raise BodyError("ceremony", "not a sign-in")
        if not isinstance(response, Mapping):
            raise BodyError("credential", "must be the credential, as toJSON() gives it")
        try:
            assertion = AuthenticationResponse.from_dict(response)
        except (ValueError, KeyError, TypeError) as exc:
            raise BodyError("credential", f"refused: {exc}") from None
        found = await self.context.store.passkey(assertion.raw_id)
        if found is None:
            raise BodyError("credential", "this passkey is not registered here (or was revoked)")
        name, credential, count = found
        try:
            self.server.authenticate_complete(
                started.state, [AttestedCredentialData(credential)], assertion
            )
        except ValueError as exc:
            raise BodyError("credential", f"refused: {exc}") from None
        counter = assertion.response.authenticator_data.counter
        if (count or counter) and counter <= count:
            raise BodyError("credential", "its counter went back: a copied authenticator?")
        user = await self.context.store.user(name)
        if user is None or user.disabled:
            raise BodyError("credential", "this account may not sign in")
        async with self.context.store.transaction(self.context.clock()) as tx:
            tx.passkey_used(assertion.raw_id, counter)
        return user

    # -- accounts ----------------------------------------------------------------------

    async def of(self, name: str) -> list[dict[str, Any]]:
        """User `name`'s passkeys: id, label, when registered and last used."""
        return await self.context.store.passkey_list(name)

    async def revoke(self, name: str, passkey: str, *, actor: str) -> bool:
        """Revoke passkey `passkey` (its id, b64url) of user `name`; audited. False if the
        user has no such passkey."""
        for item in await self.context.store.passkey_list(name):
            if item["id"] == passkey:
                async with self.context.store.transaction(self.context.clock()) as tx:
                    tx.remove_passkey(item["raw_id"])
                    detail = {"user": name, "passkey": passkey, "label": item["label"]}
                    tx.audit([AuditEntry(actor, "passkey_revoked", detail=detail)])
                return True
        return False

    # -- ceremonies --------------------------------------------------------------------

    def _start(self, state: Any, user: str | None, address: str) -> str:
        ceremony = secrets.token_urlsafe(18)
        mine = [k for k, c in self._ceremonies.items() if c.address == address]
        for key in mine[: max(0, len(mine) - MAX_PER_ADDRESS + 1)]:
            del self._ceremonies[key]
        self._ceremonies[ceremony] = _Ceremony(state, user, time.monotonic(), address)
        while len(self._ceremonies) > MAX_CEREMONIES:
            self._ceremonies.popitem(last=False)
        return ceremony

    def _take(self, ceremony: object) -> _Ceremony:
        """The ceremony `ceremony`, once, within its five minutes."""
        found = self._ceremonies.pop(ceremony, None) if isinstance(ceremony, str) else None
        if found is None or time.monotonic() - found.started > CEREMONY_MS / 1000:
            raise BodyError("ceremony", "unknown, finished or expired: start again")
        return found


def _digest(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()
