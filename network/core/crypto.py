"""Ed25519 signatures, HPKE sealing, key files and TLS certificates.

The one module that imports `cryptography` and `nacl`: a change of library or
suite is a change here.

- Signatures: Ed25519 (RFC 8032). `verify` returns None or raises. Keys are
  parsed, stored and exported by `cryptography`; signing and verifying go through
  libsodium (PyNaCl), whose Ed25519 takes half the time of OpenSSL's here (60 µs
  against 108 µs a verify, 27 against 38 a signature), and every envelope,
  receipt and announcement is verified at every node it reaches. The signatures
  are the same bytes (Ed25519 is deterministic).
- Sealing: HPKE base mode (RFC 9180), single shot. Default suite
  ML-KEM-768+X25519 hybrid KEM, HKDF-SHA256, AES-256-GCM; X25519 alone is
  selectable per node at key creation. The library has no `aad` argument, so
  callers bind their context through `info`.
- Key ids: base64url of the first 12 bytes of SHA-256 over the raw public key.
- Key files: PKCS#8 PEM without a passphrase (the demo). With one, our own
  `CPN ENCRYPTED PRIVATE KEY` PEM: scrypt (RFC 7914) stretches the passphrase,
  AES-256-GCM seals the PKCS#8 DER (or a storage key's bytes), and the label
  and every parameter are bound in as associated data. Files encrypted by
  earlier versions (PKCS#8 PEM under PBKDF2, what `BestAvailableEncryption`
  writes) still load. The files themselves are read and written in node.keys.
- Keyring: a node's current HPKE key, those it retired (by key id), and its
  storage keys (by key id): what opens every message it ever stored.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.x509.oid import NameOID
from nacl.bindings import crypto_sign, crypto_sign_BYTES, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError as _NaclBadSignature

from network.core.errors import (
    BadSignatureError,
    CpnError,
    DecryptError,
    KeyFileError,
    MalformedError,
)
from network.core.records import Fields, Json, b64encode, canonical, parse_json

__all__ = [
    "ENCRYPTED_LABEL",
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "HpkePrivateKey",
    "HpkePublicKey",
    "HpkeSuite",
    "Keyring",
    "Passphrase",
    "SigningKey",
    "StorageKey",
    "VerifyKey",
    "certificate_der_from_pem",
    "certificate_not_after",
    "certificate_pem",
    "check_certificate",
    "generate_hpke_key",
    "generate_signing_key",
    "generate_storage_key",
    "generate_tls_identity",
    "hpke_key_from_pem",
    "hpke_key_from_seeds",
    "is_encrypted_file",
    "key_id",
    "private_key_from_pem",
    "rewrap_private_key",
    "sha256",
    "signing_key_from_pem",
    "signing_key_from_seed",
    "storage_key_file",
    "storage_key_from_file",
    "tls_key_for_ssl",
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

    __slots__ = ("_key", "_secret", "kid", "public_raw")

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self.public_raw, self._secret = crypto_sign_seed_keypair(key.private_bytes_raw())
        self.kid = key_id(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        return crypto_sign(data, self._secret)[:crypto_sign_BYTES]

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.public_raw)

    def to_pem(self, passphrase: Passphrase | None = None) -> bytes:
        """The key file: clear PKCS#8 PEM, or ours encrypted under `passphrase`."""
        return _private_pem(self._key, passphrase)


class VerifyKey:
    """An Ed25519 public key, parsed once."""

    __slots__ = ("kid", "public_raw")

    def __init__(self, public_raw: bytes) -> None:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(public_raw)
        except ValueError as exc:
            raise MalformedError(f"not an Ed25519 public key: {exc}") from exc
        self.public_raw = public_raw
        self.kid = key_id(public_raw)

    def verify(self, signature: bytes, data: bytes, *, what: str = "signature") -> None:
        """Return None if `signature` is this key's over `data`; raise BadSignatureError."""
        if len(signature) != crypto_sign_BYTES:
            raise BadSignatureError(f"{what} is {len(signature)} bytes, not {crypto_sign_BYTES}")
        try:
            crypto_sign_open(signature + data, self.public_raw)
        except _NaclBadSignature as exc:
            raise BadSignatureError(f"{what} does not verify with key {self.kid}") from exc


def generate_signing_key() -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate())


def signing_key_from_seed(seed: bytes) -> SigningKey:
    """The Ed25519 key of a 32-byte seed (RFC 8032): for test vectors, never for a node."""
    return SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


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
    """A recipient's HPKE public key. The hybrid key travels as ML-KEM-768 ‖ X25519.

    Checked when made, then kept as bytes: the library's ML-KEM key object takes 6 KiB,
    and a node holds one per contact point of the roster but seals to a few of them.
    The objects of the keys sealed to last are kept in `_hpke_public`'s cache, room for
    every member state's (1.5 MiB): with 64, a process sealing to all 192 others (the
    193-node simulation's workers) parsed a key for almost every message.
    """

    __slots__ = ("kid", "public_raw", "suite")

    def __init__(self, suite: HpkeSuite, public_raw: bytes) -> None:
        self.suite = suite
        self.public_raw = public_raw
        self.kid = key_id(public_raw)
        _hpke_public.__wrapped__(suite, public_raw)  # refuses a malformed key now, uncached

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        """HPKE base-mode single-shot seal: enc ‖ ciphertext."""
        return _SUITES[self.suite].encrypt(
            plaintext, _hpke_public(self.suite, self.public_raw), info=info
        )


@functools.lru_cache(maxsize=256)
def _hpke_public(suite: HpkeSuite, public_raw: bytes) -> _HpkePublic:
    """The library's object for a recipient's public key; MalformedError if it is not one."""
    try:
        if suite is HpkeSuite.MLKEM768_X25519:
            if len(public_raw) != MLKEM768_PUBLIC_SIZE + X25519_PUBLIC_SIZE:
                raise ValueError(f"hybrid public key must be {MLKEM768_PUBLIC_SIZE + 32} bytes")
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(public_raw[:MLKEM768_PUBLIC_SIZE]),
                x25519.X25519PublicKey.from_public_bytes(public_raw[MLKEM768_PUBLIC_SIZE:]),
            )
        return x25519.X25519PublicKey.from_public_bytes(public_raw)
    except ValueError as exc:
        raise MalformedError(f"not an HPKE {suite} public key: {exc}") from exc


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

    def legacy_storage_key(self) -> StorageKey:
        """The storage key earlier versions derived from this key's X25519 part.

        HKDF-SHA256 (RFC 5869) with a fixed label. Sent copies are now sealed
        under a storage key of their own (`storage.key`); this one still opens
        the copies sealed before, so a node keeps it for every HPKE key it retires.
        """
        secret = self._x25519.private_bytes_raw()
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"cpn/v1 storage")
        return StorageKey(derived.derive(secret))

    def part_pems(self, passphrase: Passphrase | None = None) -> dict[str, bytes]:
        """The key files this key is stored as: file name -> contents."""
        parts = {"hpke-x25519.key": _private_pem(self._x25519, passphrase)}
        if self._mlkem is not None:
            parts["hpke-mlkem768.key"] = _private_pem(self._mlkem, passphrase)
        return parts


class StorageKey:
    """AES-256-GCM for a node's own copies (what it sent), bound to a context string.

    `kid` names the key without revealing it, so that each copy can say which
    key it needs.
    """

    __slots__ = ("_aead", "_tag_inner", "_tag_outer", "kid", "raw")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KeyFileError(f"a storage key is 32 bytes, not {len(key)}")
        self.raw = key
        self.kid = key_id(b"cpn/v1 storage key id\n" + key)
        self._aead = AESGCM(key)
        tag_key = hashlib.sha256(b"cpn/v1 tag key\n" + key).digest()
        # HMAC-SHA256 (RFC 2104) under `tag_key`, its padded keys hashed once. Not
        # `hmac.digest`: it lets go of the GIL for every call, and a loop thread that
        # does so waits to take it back from the store threads (4x slower with 48 beside it).
        self._tag_inner = hashlib.sha256(bytes(b ^ 0x36 for b in tag_key.ljust(64, b"\0")))
        self._tag_outer = hashlib.sha256(bytes(b ^ 0x5C for b in tag_key.ljust(64, b"\0")))

    def tag(self, text: str) -> str:
        """A keyed digest of `text`: equal texts match, yet the store holds no clear text
        (a case reference threads a case without being readable at rest)."""
        inner = self._tag_inner.copy()
        inner.update(text.encode())
        outer = self._tag_outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:32]

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], context)
        except (InvalidTag, ValueError) as exc:
            raise DecryptError("stored copy does not open with this node's key") from exc


def generate_storage_key() -> StorageKey:
    """A fresh storage key: 32 random bytes, independent of every other key."""
    return StorageKey(os.urandom(32))


class Keyring:
    """What opens everything a node ever stored: its current HPKE key, the HPKE keys it
    retired (by key id: an envelope's `rkid` picks one), its storage key for sent
    copies, and the storage keys earlier versions derived from each HPKE key."""

    __slots__ = ("_hpke", "_storage", "current", "storage")

    def __init__(
        self,
        current: HpkePrivateKey,
        storage: StorageKey,
        retired: Iterable[HpkePrivateKey] = (),
    ) -> None:
        self.current = current
        self.storage = storage
        self._hpke = {k.public.kid: k for k in retired}
        self._hpke[current.public.kid] = current
        self._storage = {storage.kid: storage}
        for key in (current, *retired):
            legacy = key.legacy_storage_key()
            self._storage.setdefault(legacy.kid, legacy)

    def hpke(self, kid: str) -> HpkePrivateKey | None:
        """The HPKE private key with public key id `kid`, current or retired; None if gone."""
        return self._hpke.get(kid)

    @property
    def retired(self) -> dict[str, HpkePrivateKey]:
        """The retired HPKE keys by key id."""
        return {k: v for k, v in self._hpke.items() if v is not self.current}

    def storage_key(self, kid: str) -> StorageKey | None:
        """The storage key with id `kid` (current or a legacy derivation); None if not held."""
        return self._storage.get(kid)

    def storage_keys(self) -> Iterator[StorageKey]:
        """Every storage key held, the current one first: what an untagged copy is tried with."""
        yield self.storage
        for key in self._storage.values():
            if key is not self.storage:
                yield key


def hpke_key_from_seeds(
    suite: HpkeSuite, x25519_raw: bytes, mlkem_seed: bytes | None = None
) -> HpkePrivateKey:
    """The HPKE key of a raw X25519 private key and, for the hybrid suite, a 64-byte
    ML-KEM-768 seed (FIPS 203 d ‖ z): for test vectors, never for a node."""
    x = x25519.X25519PrivateKey.from_private_bytes(x25519_raw)
    m = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed) if mlkem_seed is not None else None
    return HpkePrivateKey(suite, x, m)


def generate_hpke_key(suite: HpkeSuite = HpkeSuite.MLKEM768_X25519) -> HpkePrivateKey:
    mlkem_key = mlkem.MLKEM768PrivateKey.generate() if suite is HpkeSuite.MLKEM768_X25519 else None
    return HpkePrivateKey(suite, x25519.X25519PrivateKey.generate(), mlkem_key)


# -- key files encrypted under a passphrase ------------------------------------------
#
#   -----BEGIN CPN ENCRYPTED PRIVATE KEY-----
#   base64 of canonical JSON (RFC 8785): {"aead": "AES-256-GCM", "check", "content",
#     "kdf": "scrypt", "n", "nonce", "p", "r", "salt", "sealed", "v": 1}
#   -----END CPN ENCRYPTED PRIVATE KEY-----
#
# scrypt(passphrase, salt, n, r, p) gives 64 bytes: the AES-256-GCM key, then `check`
# (its first 16 bytes are stored) which tells a wrong passphrase from a changed file.
# The associated data is the label and every member but `sealed`, so that no parameter
# can be changed unnoticed. `content` is `pkcs8` (a private key's PKCS#8 DER) or
# `storage-key` (32 bytes).

# Measured on the project machine (2 shared cores): n = 2^17, r = 8, p = 1 takes 0.45 s
# and 128 MiB; 2^16 took 0.22 s, 2^18 0.89 s.
SCRYPT_N: Final = 1 << 17
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
ENCRYPTED_LABEL: Final = "CPN ENCRYPTED PRIVATE KEY"
_STORAGE_LABEL: Final = "CPN STORAGE KEY"
_PKCS8: Final = "pkcs8"
_STORAGE: Final = "storage-key"
_MAX_SCRYPT_MEMORY: Final = 1 << 30  # 128 * n * r bytes; a file asking more is refused
_MAX_KEY_FILE: Final = 64 * 1024


class Passphrase:
    """A key-file passphrase, stretched with scrypt once per salt and parameters.

    The files one instance writes share its salt (each has its own nonce), so
    writing or loading a node's key set costs one derivation, not one per file.
    """

    __slots__ = ("_derived", "_salt", "n", "p", "r", "secret")

    def __init__(
        self,
        secret: bytes,
        *,
        n: int = SCRYPT_N,
        r: int = SCRYPT_R,
        p: int = SCRYPT_P,
        salt: bytes | None = None,
    ) -> None:
        if not secret:
            raise KeyFileError("the key passphrase is empty")
        self.secret = secret
        self.n, self.r, self.p = n, r, p
        self._salt = salt if salt is not None else os.urandom(16)
        self._derived: dict[tuple[bytes, int, int, int], bytes] = {}

    def _stretch(self, salt: bytes, n: int, r: int, p: int) -> bytes:
        known = self._derived.get((salt, n, r, p))
        if known is None:
            known = Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(self.secret)
            self._derived[(salt, n, r, p)] = known
        return known

    def seal(self, content: bytes, kind: str) -> bytes:
        """`content` in our encrypted key file format (PEM bytes)."""
        stretched = self._stretch(self._salt, self.n, self.r, self.p)
        nonce = os.urandom(12)
        params: dict[str, Json] = {
            "v": 1,
            "kdf": "scrypt",
            "n": self.n,
            "r": self.r,
            "p": self.p,
            "salt": b64encode(self._salt),
            "check": b64encode(stretched[32:48]),
            "aead": "AES-256-GCM",
            "nonce": b64encode(nonce),
            "content": kind,
        }
        sealed = AESGCM(stretched[:32]).encrypt(nonce, content, _file_aad(params))
        return _pem(ENCRYPTED_LABEL, canonical({**params, "sealed": b64encode(sealed)}))

    def open(self, data: bytes, source: str, kind: str) -> bytes:
        """The content of one of our encrypted key files.

        Raises KeyFileError naming `source`: a wrong passphrase, a changed file,
        parameters out of bounds, or content of another kind.
        """
        doc = _pem_body(data, ENCRYPTED_LABEL, source)
        if doc is None:
            raise KeyFileError(f"{source}: not a {ENCRYPTED_LABEL} file")
        try:
            f = Fields(parse_json(doc, limit=_MAX_KEY_FILE, what=source), source)
            n, r, p = f.int("n", low=2, high=1 << 24), f.int("r", low=1), f.int("p", low=1)
            params: dict[str, Json] = {
                "v": f.int("v", low=1, high=1),
                "kdf": f.str("kdf"),
                "n": n,
                "r": r,
                "p": p,
                "salt": f.str("salt"),
                "check": f.str("check"),
                "aead": f.str("aead"),
                "nonce": f.str("nonce"),
                "content": f.str("content"),
            }
            salt, check, nonce = (f.bytes(k) for k in ("salt", "check", "nonce"))
            sealed = f.bytes("sealed")
            f.done()
        except CpnError as exc:
            raise KeyFileError(f"{source}: cannot load private key: {exc}") from exc
        if params["kdf"] != "scrypt" or params["aead"] != "AES-256-GCM" or len(nonce) != 12:
            raise KeyFileError(f"{source}: cannot load private key: unknown kdf or aead")
        if n & (n - 1) or 128 * n * r > _MAX_SCRYPT_MEMORY or p > 16:
            raise KeyFileError(f"{source}: cannot load private key: scrypt n={n} r={r} refused")
        if params["content"] != kind:
            raise KeyFileError(f"{source}: holds a {params['content']}, not a {kind}")
        stretched = self._stretch(salt, n, r, p)
        if not hmac.compare_digest(stretched[32:48], check):
            raise KeyFileError(f"{source}: cannot load private key: wrong passphrase")
        try:
            return AESGCM(stretched[:32]).decrypt(nonce, sealed, _file_aad(params))
        except InvalidTag as exc:
            raise KeyFileError(
                f"{source}: cannot load private key: the file has been changed"
            ) from exc


def _file_aad(params: dict[str, Json]) -> bytes:
    return b"%s\n" % ENCRYPTED_LABEL.encode() + canonical(params)


def _pem(label: str, der: bytes) -> bytes:
    text = base64.encodebytes(der).replace(b"\n", b"")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (
        label.encode(),
        b"\n".join(lines),
        label.encode(),
    )


def _pem_body(data: bytes, label: str, source: str) -> bytes | None:
    """The bytes inside a PEM block with `label`; None if the data is not one."""
    begin, end = b"-----BEGIN %s-----" % label.encode(), b"-----END %s-----" % label.encode()
    text = data.strip()
    if not text.startswith(begin):
        return None
    if not text.endswith(end):
        raise KeyFileError(f"{source}: cannot load private key: truncated PEM")
    try:
        return base64.b64decode(b"".join(text[len(begin) : -len(end)].split()), validate=True)
    except binascii.Error as exc:
        raise KeyFileError(f"{source}: cannot load private key: bad base64: {exc}") from exc


def is_encrypted_file(data: bytes) -> bool:
    """Whether a key file is encrypted (ours, or an earlier version's PBKDF2 PEM)."""
    return data.lstrip().startswith(
        (b"-----BEGIN CPN ENCRYPTED PRIVATE KEY-----", b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    )


_Private = (
    ed25519.Ed25519PrivateKey
    | x25519.X25519PrivateKey
    | mlkem.MLKEM768PrivateKey
    | ec.EllipticCurvePrivateKey
)


def _private_pem(key: _Private, passphrase: Passphrase | None) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    if passphrase is None:
        return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, pkcs8, serialization.NoEncryption())
    return passphrase.seal(der, _PKCS8)


def storage_key_file(key: StorageKey, passphrase: Passphrase | None) -> bytes:
    """The contents of `storage.key`: clear PEM, or ours encrypted under `passphrase`."""
    if passphrase is None:
        return _pem(_STORAGE_LABEL, key.raw)
    return passphrase.seal(key.raw, _STORAGE)


def storage_key_from_file(data: bytes, passphrase: Passphrase | None, source: str) -> StorageKey:
    """The storage key in `storage.key`; KeyFileError naming `source` and what failed."""
    clear = _pem_body(data, _STORAGE_LABEL, source)
    if clear is not None:
        return StorageKey(clear)
    if passphrase is None:
        raise KeyFileError(f"{source}: encrypted with a passphrase (set CPN_KEY_PASSPHRASE)")
    return StorageKey(passphrase.open(data, source, _STORAGE))


# -- key files' contents (the files themselves are read and written in node.keys) ----


def private_key_from_pem(data: bytes, passphrase: Passphrase | None, source: str) -> object:
    """A private key from a key file: clear PKCS#8 PEM, ours encrypted, or an earlier
    version's PBKDF2-encrypted PEM. KeyFileError naming `source` and what failed."""
    if data.lstrip().startswith(b"-----BEGIN %s-----" % ENCRYPTED_LABEL.encode()):
        if passphrase is None:
            raise KeyFileError(f"{source}: encrypted with a passphrase (set CPN_KEY_PASSPHRASE)")
        der = passphrase.open(data, source, _PKCS8)
        try:
            return serialization.load_der_private_key(der, None)
        except ValueError as exc:
            raise KeyFileError(f"{source}: cannot load private key: {exc}") from exc
    # A clear file loads with a passphrase set: earlier versions left the TLS key clear,
    # and an operator upgrading must not be locked out (a rotation encrypts it).
    secret = passphrase.secret if passphrase and is_encrypted_file(data) else None
    try:
        return serialization.load_pem_private_key(data, secret)
    except TypeError as exc:
        raise KeyFileError(f"{source}: {exc} (set CPN_KEY_PASSPHRASE)") from exc
    except ValueError as exc:
        raise KeyFileError(f"{source}: cannot load private key: {exc}") from exc


def signing_key_from_pem(data: bytes, passphrase: Passphrase | None, source: str) -> SigningKey:
    key = private_key_from_pem(data, passphrase, source)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{source}: not an Ed25519 private key")
    return SigningKey(key)


def hpke_key_from_pem(
    x25519_pem: tuple[bytes, str],
    mlkem_pem: tuple[bytes, str] | None,
    passphrase: Passphrase | None,
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
    node_id: str, *, now: datetime.datetime, days: int = 825, passphrase: Passphrase | None = None
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
    key_pem = _private_pem(key, passphrase)
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


def certificate_not_after(der: bytes) -> int:
    """When the certificate `der` stops being valid (ms since the epoch)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise MalformedError(f"not an X.509 certificate: {exc}") from exc
    return int(cert.not_valid_after_utc.timestamp() * 1000)


def certificate_pem(der: bytes) -> str:
    """PEM text of a DER certificate, as ssl's `cadata` takes it."""
    cert = x509.load_der_x509_certificate(der)
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def tls_key_for_ssl(data: bytes, passphrase: Passphrase | None, source: str) -> tuple[bytes, bytes]:
    """The TLS key file's key as `ssl` can load it without it ever being in clear on disk:
    a standard encrypted PKCS#8 PEM under a fresh one-time password, and that password.

    Raises KeyFileError naming `source`.
    """
    key = private_key_from_pem(data, passphrase, source)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{source}: not an ECDSA private key")
    password = b64encode(os.urandom(24)).encode()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    return pem, password


def rewrap_private_key(data: bytes, passphrase: Passphrase | None, source: str) -> bytes:
    """A private key file in the current format: ours encrypted under `passphrase`, or
    clear PKCS#8 PEM without one. Takes any file `private_key_from_pem` loads (with the
    same passphrase). Raises KeyFileError naming `source`."""
    key = private_key_from_pem(data, passphrase, source)
    if not isinstance(key, _Private):
        raise KeyFileError(f"{source}: not a key type cpn uses")
    return _private_pem(key, passphrase)
