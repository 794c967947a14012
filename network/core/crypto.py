"""Ed25519 signatures, HPKE sealing, key files and TLS certificates.

The one module that imports `cryptography`: a change of library or suite is a
change here.

- Signatures: Ed25519 (RFC 8032). `verify` returns None or raises.
- Sealing: HPKE base mode (RFC 9180), single shot. Default suite
  ML-KEM-768+X25519 hybrid KEM, HKDF-SHA256, AES-256-GCM; X25519 alone is
  selectable per node at key creation. The library has no `aad` argument, so
  callers bind their context through `info`.
- Key ids: base64url of the first 12 bytes of SHA-256 over the raw public key.
- Key files: PKCS#8 PEM, optionally encrypted with a passphrase, written mode
  0600 and never overwritten unless asked; loading refuses files that other
  users can read.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from network.core.errors import BadSignatureError, DecryptError, KeyFileError, MalformedError
from network.core.records import b64encode

__all__ = [
    "HpkePrivateKey",
    "HpkePublicKey",
    "HpkeSuite",
    "SigningKey",
    "StorageKey",
    "VerifyKey",
    "certificate_der_from_pem",
    "certificate_pem",
    "check_certificate",
    "generate_hpke_key",
    "generate_signing_key",
    "generate_tls_identity",
    "hpke_key_from_pem",
    "key_id",
    "private_key_from_pem",
    "sha256",
    "signing_key_from_pem",
]

MLKEM768_PUBLIC_SIZE = 1184
X25519_PUBLIC_SIZE = 32


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def key_id(public_raw: bytes) -> str:
    """Short, stable id of a public key: base64url(SHA-256(raw)[:12])."""
    return b64encode(sha256(public_raw)[:12])


class SigningKey:
    """An Ed25519 private key."""

    __slots__ = ("_key", "kid", "public_raw")

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self.public_raw = key.public_key().public_bytes_raw()
        self.kid = key_id(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.public_raw)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(passphrase)
        )


class VerifyKey:
    """An Ed25519 public key, parsed once."""

    __slots__ = ("_key", "kid", "public_raw")

    def __init__(self, public_raw: bytes) -> None:
        try:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(public_raw)
        except ValueError as exc:
            raise MalformedError(f"not an Ed25519 public key: {exc}") from exc
        self.public_raw = public_raw
        self.kid = key_id(public_raw)

    def verify(self, signature: bytes, data: bytes, *, what: str = "signature") -> None:
        """Return None if `signature` is this key's over `data`; raise BadSignatureError."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature as exc:
            raise BadSignatureError(f"{what} does not verify with key {self.kid}") from exc


def generate_signing_key() -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate())


class HpkeSuite(StrEnum):
    """HPKE suites (RFC 9180) a node's sealing key may use."""

    MLKEM768_X25519 = "MLKEM768-X25519/HKDF-SHA256/AES-256-GCM"
    X25519 = "X25519/HKDF-SHA256/AES-256-GCM"


_SUITES = {
    HpkeSuite.MLKEM768_X25519: hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
    ),
    HpkeSuite.X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}

_HpkePublic = hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey
_HpkePrivate = hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey


class HpkePublicKey:
    """A recipient's HPKE public key. The hybrid key travels as ML-KEM-768 ‖ X25519."""

    __slots__ = ("_key", "kid", "public_raw", "suite")

    def __init__(self, suite: HpkeSuite, public_raw: bytes) -> None:
        self.suite = suite
        self.public_raw = public_raw
        self.kid = key_id(public_raw)
        try:
            if suite is HpkeSuite.MLKEM768_X25519:
                if len(public_raw) != MLKEM768_PUBLIC_SIZE + X25519_PUBLIC_SIZE:
                    raise ValueError(f"hybrid public key must be {MLKEM768_PUBLIC_SIZE + 32} bytes")
                self._key: _HpkePublic = hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(public_raw[:MLKEM768_PUBLIC_SIZE]),
                    x25519.X25519PublicKey.from_public_bytes(public_raw[MLKEM768_PUBLIC_SIZE:]),
                )
            else:
                self._key = x25519.X25519PublicKey.from_public_bytes(public_raw)
        except ValueError as exc:
            raise MalformedError(f"not an HPKE {suite} public key: {exc}") from exc

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        """HPKE base-mode single-shot seal: enc ‖ ciphertext."""
        return _SUITES[self.suite].encrypt(plaintext, self._key, info=info)


class HpkePrivateKey:
    """A node's HPKE private key, with the parts it is stored as."""

    __slots__ = ("_key", "_mlkem", "_x25519", "public", "suite")

    def __init__(
        self,
        suite: HpkeSuite,
        x25519_key: x25519.X25519PrivateKey,
        mlkem_key: mlkem.MLKEM768PrivateKey | None = None,
    ) -> None:
        self.suite = suite
        self._x25519 = x25519_key
        self._mlkem = mlkem_key
        x_pub = x25519_key.public_key().public_bytes_raw()
        if suite is HpkeSuite.MLKEM768_X25519:
            if mlkem_key is None:
                raise KeyFileError("the hybrid HPKE suite needs an ML-KEM-768 key")
            self._key: _HpkePrivate = hpke.MLKEM768X25519PrivateKey(mlkem_key, x25519_key)
            public_raw = mlkem_key.public_key().public_bytes_raw() + x_pub
        else:
            self._key = x25519_key
            public_raw = x_pub
        self.public = HpkePublicKey(suite, public_raw)

    def open(self, sealed: bytes, info: bytes) -> bytes:
        """Inverse of `HpkePublicKey.seal`; raises DecryptError on any change."""
        try:
            return _SUITES[self.suite].decrypt(sealed, self._key, info=info)
        except (InvalidTag, ValueError) as exc:
            raise DecryptError(
                "sealed body does not open with our key (changed or not ours)"
            ) from exc

    def storage_key(self) -> StorageKey:
        """A symmetric key for this node's own data at rest, derived from its X25519 part.

        HKDF-SHA256 (RFC 5869) with a fixed label: the same key files give the
        same storage key, and it is never written anywhere.
        """
        secret = self._x25519.private_bytes_raw()
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"cpn/v1 storage")
        return StorageKey(derived.derive(secret))

    def part_pems(self, passphrase: bytes | None = None) -> dict[str, bytes]:
        """The PEM files this key is stored as: file name -> contents."""
        enc = _encryption(passphrase)
        pkcs8 = serialization.PrivateFormat.PKCS8
        pem = serialization.Encoding.PEM
        parts = {"hpke-x25519.key": self._x25519.private_bytes(pem, pkcs8, enc)}
        if self._mlkem is not None:
            parts["hpke-mlkem768.key"] = self._mlkem.private_bytes(pem, pkcs8, enc)
        return parts


class StorageKey:
    """AES-256-GCM for a node's own copies (what it sent), bound to a context string."""

    __slots__ = ("_aead", "_tag_key")

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._tag_key = hashlib.sha256(b"cpn/v1 tag key\n" + key).digest()

    def tag(self, text: str) -> str:
        """A keyed digest of `text`: equal texts match, yet the store holds no clear text
        (a case reference threads a case without being readable at rest)."""
        return hmac.new(self._tag_key, text.encode(), hashlib.sha256).hexdigest()[:32]

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], context)
        except (InvalidTag, ValueError) as exc:
            raise DecryptError("stored copy does not open with this node's key") from exc


def generate_hpke_key(suite: HpkeSuite = HpkeSuite.MLKEM768_X25519) -> HpkePrivateKey:
    mlkem_key = mlkem.MLKEM768PrivateKey.generate() if suite is HpkeSuite.MLKEM768_X25519 else None
    return HpkePrivateKey(suite, x25519.X25519PrivateKey.generate(), mlkem_key)


def _encryption(passphrase: bytes | None) -> serialization.KeySerializationEncryption:
    if passphrase:
        return serialization.BestAvailableEncryption(passphrase)
    return serialization.NoEncryption()


# -- key files' contents (the files themselves are read and written in node.keys) ----


def private_key_from_pem(data: bytes, passphrase: bytes | None, source: str) -> object:
    """A private key from PEM bytes; KeyFileError naming `source` and what failed."""
    try:
        return serialization.load_pem_private_key(data, passphrase or None)
    except TypeError as exc:
        raise KeyFileError(f"{source}: {exc} (set CPN_KEY_PASSPHRASE)") from exc
    except ValueError as exc:
        raise KeyFileError(f"{source}: cannot load private key: {exc}") from exc


def signing_key_from_pem(data: bytes, passphrase: bytes | None, source: str) -> SigningKey:
    key = private_key_from_pem(data, passphrase, source)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{source}: not an Ed25519 private key")
    return SigningKey(key)


def hpke_key_from_pem(
    x25519_pem: tuple[bytes, str],
    mlkem_pem: tuple[bytes, str] | None,
    passphrase: bytes | None,
) -> HpkePrivateKey:
    """The HPKE private key from its X25519 part and, for the hybrid suite, its ML-KEM part
    (each PEM bytes with the name of where they came from)."""
    x_key = private_key_from_pem(x25519_pem[0], passphrase, x25519_pem[1])
    if not isinstance(x_key, x25519.X25519PrivateKey):
        raise KeyFileError(f"{x25519_pem[1]}: not an X25519 private key")
    if mlkem_pem is None:
        return HpkePrivateKey(HpkeSuite.X25519, x_key)
    m_key = private_key_from_pem(mlkem_pem[0], passphrase, mlkem_pem[1])
    if not isinstance(m_key, mlkem.MLKEM768PrivateKey):
        raise KeyFileError(f"{mlkem_pem[1]}: not an ML-KEM-768 private key")
    return HpkePrivateKey(HpkeSuite.MLKEM768_X25519, x_key, m_key)


# -- TLS ---------------------------------------------------------------------


def generate_tls_identity(
    node_id: str, *, now: datetime.datetime, days: int = 825, passphrase: bytes | None = None
) -> tuple[bytes, bytes, bytes]:
    """A self-signed ECDSA P-256 certificate for a node's peer links.

    The roster carries it and peers pin it, so no CA is involved.
    Returns (key PEM, certificate PEM, certificate DER).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cpn node {node_id}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(f"{node_id.lower()}.cpn.invalid"), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(passphrase)
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    return key_pem, cert_pem, cert.public_bytes(serialization.Encoding.DER)


def certificate_der_from_pem(pem: bytes, source: str) -> bytes:
    """The DER form of a PEM certificate: what the roster carries."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise KeyFileError(f"{source}: cannot load certificate: {exc}") from exc
    return cert.public_bytes(serialization.Encoding.DER)


def check_certificate(der: bytes) -> None:
    """Raise MalformedError unless `der` is an X.509 certificate."""
    try:
        x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise MalformedError(f"not an X.509 certificate: {exc}") from exc


def certificate_pem(der: bytes) -> str:
    """PEM text of a DER certificate, as ssl's `cadata` takes it."""
    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
