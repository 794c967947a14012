"""The node's Ed25519 signing key in a hardware module, through PKCS#11 (python-pkcs11).

Named by an RFC 7512 URI: `pkcs11:token=LABEL;object=LABEL` with the query attributes
`module-path` (the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so) and
`pin-source` (`file:/etc/cpn/FRA.pin`); without `pin-source` the PIN is read from the
environment variable CPN_PKCS11_PIN. The PIN itself is never accepted in the URI or the
config. The private key never leaves the module: the node asks it for each signature
(envelopes, receipts, checkpoints, cosignatures, the link handshake, announcements).

Only the signing key can live there today: PKCS#11 (3.1) has no ML-KEM, and the
X25519 HPKE and TLS keys are used by libraries that take them as files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from network.core.crypto import SigningKey, key_id
from network.core.errors import KeyFileError

__all__ = ["Pkcs11SigningKey", "Pkcs11Uri", "generate_in_token", "open_signing_key"]

ED25519_OID = "1.3.101.112"
PIN_VARIABLE = "CPN_PKCS11_PIN"


@dataclass(frozen=True, slots=True)
class Pkcs11Uri:
    token: str
    label: str
    module: str
    pin_file: Path | None

    @classmethod
    def parse(cls, uri: str) -> Pkcs11Uri:
        """The parts of `uri`; KeyFileError names what is missing or not allowed."""
        if not uri.startswith("pkcs11:"):
            raise KeyFileError(f"signing key {uri!r}: expected a pkcs11: URI (RFC 7512)")
        path, _, query = uri[len("pkcs11:") :].partition("?")
        attributes = {}
        for part in filter(None, path.split(";")):
            name, _, value = part.partition("=")
            attributes[name] = unquote(value)
        options = {k: v[-1] for k, v in parse_qs(query).items()}
        if "pin-value" in options:
            raise KeyFileError(
                "pkcs11 URI: pin-value is refused: use pin-source or " + PIN_VARIABLE
            )
        for needed in ("token", "object"):
            if not attributes.get(needed):
                raise KeyFileError(f"pkcs11 URI: `{needed}=` is required")
        module = options.get("module-path")
        if not module:
            raise KeyFileError("pkcs11 URI: `?module-path=` (the PKCS#11 library) is required")
        source = options.get("pin-source")
        if source is not None and not source.startswith("file:"):
            raise KeyFileError("pkcs11 URI: pin-source must be file:PATH")
        pin_file = Path(source[len("file:") :]) if source else None
        return cls(attributes["token"], attributes["object"], module, pin_file)

    def pin(self) -> str:
        if self.pin_file is not None:
            try:
                return self.pin_file.read_text().strip()
            except OSError as exc:
                raise KeyFileError(f"{self.pin_file}: cannot read the PIN: {exc.strerror}") from exc
        pin = os.environ.get(PIN_VARIABLE)
        if not pin:
            raise KeyFileError(f"the token PIN: set {PIN_VARIABLE} or pin-source=file:PATH")
        return pin


class Pkcs11SigningKey(SigningKey):
    """A SigningKey whose private half stays in the token: each signature is asked of it."""

    __slots__ = ("_private", "_session")

    def __init__(self, session: Any, private: Any, public_raw: bytes) -> None:
        # Not SigningKey.__init__: there is no private key object on our side.
        self._session = session
        self._private = private
        self.public_raw = public_raw
        self.kid = key_id(public_raw)

    def sign(self, data: bytes) -> bytes:
        signature: bytes = self._private.sign(data, mechanism=Mechanism.EDDSA)
        return signature

    def to_pem(self, passphrase: object = None) -> bytes:
        raise KeyFileError("the signing key lives in the token: there is no file to write")


def _session(uri: Pkcs11Uri) -> Any:
    pin = uri.pin()
    try:
        token = pkcs11.lib(uri.module).get_token(token_label=uri.token)
        try:
            return token.open(user_pin=pin, rw=True)
        except pkcs11.UserAlreadyLoggedIn:  # PKCS#11 logs in per application, not session
            return token.open(rw=True)
    except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
        raise KeyFileError(f"pkcs11 token {uri.token!r} ({uri.module}): {exc!r}") from exc


def _public_raw(public: Any) -> bytes:
    point = bytes(public[Attribute.EC_POINT])
    # CKA_EC_POINT holds the DER OCTET STRING of the 32-byte key (some modules give it bare).
    return point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point


def open_signing_key(uri: str) -> Pkcs11SigningKey:
    """The token's Ed25519 key named by `uri`; KeyFileError says what is wrong."""
    parts = Pkcs11Uri.parse(uri)
    session = _session(parts)
    try:
        private = session.get_key(
            object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC_EDWARDS, label=parts.label
        )
        public = session.get_key(
            object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC_EDWARDS, label=parts.label
        )
    except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned) as exc:
        session.close()
        raise KeyFileError(
            f"pkcs11 token {parts.token!r}: no one Ed25519 key {parts.label!r}"
        ) from exc
    return Pkcs11SigningKey(session, private, _public_raw(public))


def generate_in_token(uri: str) -> Pkcs11SigningKey:
    """A new Ed25519 key pair generated inside the token (never extractable), or the one
    already there under that label."""
    parts = Pkcs11Uri.parse(uri)
    session = _session(parts)
    try:
        session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=parts.label)
    except pkcs11.NoSuchKey:
        params = session.create_domain_parameters(
            KeyType.EC_EDWARDS,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)},
            local=True,
        )
        params.generate_keypair(
            store=True,
            label=parts.label,
            private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True},
        )
    finally:
        session.close()
    return open_signing_key(uri)
