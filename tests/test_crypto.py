"""The primitives behind envelopes: HPKE seal and open, signatures, key PEMs, storage keys,
and key files encrypted under a passphrase (scrypt, AES-256-GCM) with the keyring.

One test per tamper case: each change to sealed or signed bytes is refused with the
project's own error, never a library's.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from network.core.crypto import (
    ENCRYPTED_LABEL,
    SCRYPT_N,
    HpkePrivateKey,
    HpkePublicKey,
    HpkeSuite,
    Keyring,
    Passphrase,
    SigningKey,
    StorageKey,
    VerifyKey,
    certificate_der_from_pem,
    check_certificate,
    generate_hpke_key,
    generate_signing_key,
    generate_storage_key,
    generate_tls_identity,
    hpke_key_from_pem,
    key_id,
    private_key_from_pem,
    rewrap_private_key,
    signing_key_from_pem,
    storage_key_file,
    storage_key_from_file,
)
from network.core.errors import BadSignatureError, DecryptError, KeyFileError, MalformedError

SUITES = list(HpkeSuite)
INFO = b"cpn/v1 header bytes"
PLAINTEXT = b'{"summary":"preserve the account"}'
# A small scrypt n keeps these fast; the format records n, so files load either way.
PASSPHRASE = Passphrase(b"correct horse battery staple", n=1 << 10, r=8, p=1)


@pytest.fixture(scope="module", params=SUITES, ids=[s.name for s in SUITES])
def hpke(request: pytest.FixtureRequest) -> HpkePrivateKey:
    suite: HpkeSuite = request.param
    return generate_hpke_key(suite)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- HPKE ------------------------------------------------------------------------------


def test_sealed_bytes_open_to_the_plaintext(hpke: HpkePrivateKey) -> None:
    sealed = hpke.public.seal(PLAINTEXT, INFO)

    assert hpke.open(sealed, INFO) == PLAINTEXT
    assert PLAINTEXT not in sealed


def test_each_seal_is_fresh(hpke: HpkePrivateKey) -> None:
    assert hpke.public.seal(PLAINTEXT, INFO) != hpke.public.seal(PLAINTEXT, INFO)


def test_the_public_key_round_trips_through_its_raw_bytes(hpke: HpkePrivateKey) -> None:
    again = HpkePublicKey(hpke.suite, hpke.public.public_raw)

    assert hpke.open(again.seal(PLAINTEXT, INFO), INFO) == PLAINTEXT
    assert again.kid == hpke.public.kid == key_id(hpke.public.public_raw)


Tamper = Callable[[bytes], bytes]
TAMPERS: dict[str, Tamper] = {
    "encapsulated key flipped": lambda sealed: flip(sealed, 0),
    "ciphertext flipped": lambda sealed: flip(sealed, len(sealed) - 20),
    "tag flipped": lambda sealed: flip(sealed, len(sealed) - 1),
    "truncated": lambda sealed: sealed[:-1],
    "extended": lambda sealed: sealed + b"\x00",
    "cut to the key": lambda sealed: sealed[:32],
    "empty": lambda sealed: b"",
}


@pytest.mark.parametrize("tamper", list(TAMPERS.values()), ids=list(TAMPERS))
def test_changed_sealed_bytes_do_not_open(hpke: HpkePrivateKey, tamper: Tamper) -> None:
    sealed = hpke.public.seal(PLAINTEXT, INFO)

    with pytest.raises(DecryptError):
        hpke.open(tamper(sealed), INFO)


def test_other_info_does_not_open(hpke: HpkePrivateKey) -> None:
    """The header is bound in as `info`: a body moved under another header stays shut."""
    sealed = hpke.public.seal(PLAINTEXT, INFO)

    with pytest.raises(DecryptError):
        hpke.open(sealed, INFO + b"!")


def test_another_recipients_key_does_not_open(hpke: HpkePrivateKey) -> None:
    sealed = hpke.public.seal(PLAINTEXT, INFO)

    with pytest.raises(DecryptError):
        generate_hpke_key(hpke.suite).open(sealed, INFO)


def test_the_other_suites_key_does_not_open(hpke: HpkePrivateKey) -> None:
    other = next(s for s in HpkeSuite if s is not hpke.suite)
    sealed = hpke.public.seal(PLAINTEXT, INFO)

    with pytest.raises(DecryptError):
        generate_hpke_key(other).open(sealed, INFO)


@pytest.mark.parametrize("suite", SUITES, ids=[s.name for s in SUITES])
@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x01" * 1000])
def test_a_public_key_of_the_wrong_size_is_refused(suite: HpkeSuite, raw: bytes) -> None:
    with pytest.raises(MalformedError, match="not an HPKE"):
        HpkePublicKey(suite, raw)


# -- signatures ------------------------------------------------------------------------


def test_a_signature_verifies_with_the_signers_key() -> None:
    key = generate_signing_key()

    assert key.verify_key().verify(key.sign(PLAINTEXT), PLAINTEXT) is None
    assert VerifyKey(key.public_raw).kid == key.kid


def test_a_flipped_signature_is_refused() -> None:
    key = generate_signing_key()

    with pytest.raises(BadSignatureError, match=key.kid):
        key.verify_key().verify(flip(key.sign(PLAINTEXT), 5), PLAINTEXT)


def test_changed_signed_bytes_are_refused() -> None:
    key = generate_signing_key()

    with pytest.raises(BadSignatureError):
        key.verify_key().verify(key.sign(PLAINTEXT), flip(PLAINTEXT, 3))


def test_another_signers_signature_is_refused() -> None:
    key, other = generate_signing_key(), generate_signing_key()

    with pytest.raises(BadSignatureError, match="the receipt's signature"):
        key.verify_key().verify(other.sign(PLAINTEXT), PLAINTEXT, what="the receipt's signature")


# RFC 8032, section 7.1, tests 1 and 2: (private seed, public key, message, signature).
RFC_8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC_8032)
def test_signatures_are_those_of_rfc_8032(
    seed: str, public: str, message: str, signature: str
) -> None:
    """Signing and verifying go through libsodium, the keys through cryptography: both
    are plain Ed25519, byte for byte."""
    key = SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed)))

    data = bytes.fromhex(message)

    assert key.public_raw.hex() == public
    assert key.sign(data).hex() == signature
    assert VerifyKey(bytes.fromhex(public)).verify(bytes.fromhex(signature), data) is None


@given(message=st.binary(max_size=300), seed=st.binary(min_size=32, max_size=32))
@settings(max_examples=50)
def test_our_signatures_are_those_of_the_cryptography_library(message: bytes, seed: bytes) -> None:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    signature = SigningKey(private).sign(message)

    assert signature == private.sign(message)
    private.public_key().verify(signature, message)  # raises if not


@pytest.mark.parametrize("size", [0, 63, 65])
def test_a_signature_of_the_wrong_size_is_refused(size: int) -> None:
    """Not read as a signature and the start of the data: its size is named."""
    key = generate_signing_key()
    signed = key.sign(PLAINTEXT) + PLAINTEXT

    with pytest.raises(BadSignatureError, match=f"is {size} bytes, not 64"):
        key.verify_key().verify(signed[:size], signed[size:])


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33])
def test_a_verify_key_of_the_wrong_size_is_refused(raw: bytes) -> None:
    with pytest.raises(MalformedError, match="not an Ed25519 public key"):
        VerifyKey(raw)


# -- key PEMs --------------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE], ids=["clear", "passphrase"])
def test_a_signing_key_round_trips_through_pem(passphrase: Passphrase | None) -> None:
    key = generate_signing_key()
    pem = key.to_pem(passphrase)

    again = signing_key_from_pem(pem, passphrase, "signing.key")

    assert again.public_raw == key.public_raw
    assert (b"ENCRYPTED" in pem) is (passphrase is not None)


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE], ids=["clear", "passphrase"])
def test_an_hpke_key_round_trips_through_its_pems(
    hpke: HpkePrivateKey, passphrase: Passphrase | None
) -> None:
    parts = hpke.part_pems(passphrase)
    mlkem = parts.get("hpke-mlkem768.key")

    again = hpke_key_from_pem(
        (parts["hpke-x25519.key"], "hpke-x25519.key"),
        (mlkem, "hpke-mlkem768.key") if mlkem is not None else None,
        passphrase,
    )

    assert again.suite is hpke.suite
    assert again.public.public_raw == hpke.public.public_raw
    assert again.open(hpke.public.seal(PLAINTEXT, INFO), INFO) == PLAINTEXT
    assert again.legacy_storage_key().tag("case") == hpke.legacy_storage_key().tag("case")


def test_a_protected_key_without_its_passphrase_is_refused() -> None:
    pem = generate_signing_key().to_pem(PASSPHRASE)

    with pytest.raises(KeyFileError, match=r"signing.key: .*CPN_KEY_PASSPHRASE"):
        signing_key_from_pem(pem, None, "signing.key")


def test_a_wrong_passphrase_is_refused() -> None:
    pem = generate_signing_key().to_pem(PASSPHRASE)

    with pytest.raises(KeyFileError, match=r"signing\.key: cannot load private key"):
        signing_key_from_pem(pem, Passphrase(b"wrong", n=1 << 10, r=8, p=1), "signing.key")


def test_a_damaged_pem_is_refused() -> None:
    pem = generate_signing_key().to_pem()

    with pytest.raises(KeyFileError, match=r"signing\.key"):
        signing_key_from_pem(pem[:40] + pem[60:], None, "signing.key")


def test_a_key_of_another_kind_is_refused() -> None:
    x25519_pem = generate_hpke_key(HpkeSuite.X25519).part_pems()["hpke-x25519.key"]
    signing_pem = generate_signing_key().to_pem()

    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        signing_key_from_pem(x25519_pem, None, "signing.key")
    with pytest.raises(KeyFileError, match="not an X25519 private key"):
        hpke_key_from_pem((signing_pem, "hpke-x25519.key"), None, None)
    with pytest.raises(KeyFileError, match="not an ML-KEM-768 private key"):
        hpke_key_from_pem((x25519_pem, "x"), (signing_pem, "hpke-mlkem768.key"), None)


# -- storage keys and certificates -----------------------------------------------------


def test_a_stored_copy_opens_only_in_its_context() -> None:
    storage = generate_storage_key()
    sealed = storage.seal(PLAINTEXT, b"message 1")

    assert storage.open(sealed, b"message 1") == PLAINTEXT
    with pytest.raises(DecryptError):
        storage.open(sealed, b"message 2")
    with pytest.raises(DecryptError):
        storage.open(flip(sealed, 14), b"message 1")
    with pytest.raises(DecryptError):
        generate_storage_key().open(sealed, b"message 1")


def test_tags_match_equal_texts_only() -> None:
    storage = generate_storage_key()

    assert storage.tag("FR-2026-001") == storage.tag("FR-2026-001")
    assert storage.tag("FR-2026-001") != storage.tag("FR-2026-002")
    assert "FR-2026" not in storage.tag("FR-2026-001")


@given(text=st.text(max_size=300))
def test_a_tag_is_the_hmac_the_stores_hold(text: str) -> None:
    """Tags are stored (identifiers, case references): the same key must give the same
    tag in every version. HMAC-SHA256 under a key derived from the storage key."""
    raw = bytes(range(32))
    tag_key = hashlib.sha256(b"cpn/v1 tag key\n" + raw).digest()

    assert StorageKey(raw).tag(text) == hmac.new(tag_key, text.encode(), "sha256").hexdigest()[:32]
    assert (
        StorageKey(raw).tag("FR-2026-001") == "081035ddf8f331c74afa257f16c07f08"
    )  # as stored before


def test_a_certificate_round_trips_from_pem_to_der() -> None:
    now = datetime.datetime.now(datetime.UTC)
    _key_pem, cert_pem, der = generate_tls_identity("FRA", now=now)

    assert certificate_der_from_pem(cert_pem, "tls.crt") == der
    assert check_certificate(der) is None


def test_a_damaged_certificate_is_refused() -> None:
    with pytest.raises(KeyFileError, match=r"tls\.crt: cannot load certificate"):
        certificate_der_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n", "tls.crt")
    with pytest.raises(MalformedError, match=r"not an X\.509 certificate"):
        check_certificate(b"\x30\x03\x02\x01\x00")


# -- key files encrypted under a passphrase (scrypt, AES-256-GCM), and the keyring ---------

# Unit tests stretch with a small n; the format records n, so files load either way.
FAST = {"n": 1 << 10, "r": 8, "p": 1}


def passphrase(secret: bytes = b"correct horse") -> Passphrase:
    return Passphrase(secret, **FAST)


def fields(pem: bytes) -> dict[str, object]:
    body = b"".join(pem.strip().splitlines()[1:-1])
    value: dict[str, object] = json.loads(base64.b64decode(body))
    return value


def with_fields(pem: bytes, **changes: object) -> bytes:
    doc = {**fields(pem), **changes}
    text = base64.b64encode(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    label = ENCRYPTED_LABEL.encode()
    return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, text, label)


def test_encrypted_key_file_round_trips_and_names_its_parameters() -> None:
    key = generate_signing_key()

    pem = key.to_pem(passphrase())
    loaded = signing_key_from_pem(pem, passphrase(), "signing.key")

    assert pem.startswith(b"-----BEGIN CPN ENCRYPTED PRIVATE KEY-----\n")
    assert loaded.kid == key.kid
    doc = fields(pem)
    assert doc["kdf"] == "scrypt" and doc["aead"] == "AES-256-GCM"
    assert (doc["n"], doc["r"], doc["p"]) == (1 << 10, 8, 1)
    assert doc["content"] == "pkcs8"


def test_default_parameters_are_the_measured_ones() -> None:
    pem = generate_signing_key().to_pem(Passphrase(b"pw", n=1 << 10))

    assert SCRYPT_N == 1 << 17
    assert fields(Passphrase(b"pw").seal(b"x", "pkcs8"))["n"] == 1 << 17
    assert fields(pem)["n"] == 1 << 10


def test_wrong_passphrase_is_named() -> None:
    pem = generate_signing_key().to_pem(passphrase())

    with pytest.raises(
        KeyFileError, match=r"signing\.key: cannot load private key: wrong passphrase"
    ):
        signing_key_from_pem(pem, passphrase(b"wrong"), "signing.key")


def test_missing_passphrase_is_named() -> None:
    pem = generate_signing_key().to_pem(passphrase())

    with pytest.raises(KeyFileError, match="set CPN_KEY_PASSPHRASE"):
        signing_key_from_pem(pem, None, "signing.key")


def test_changed_ciphertext_is_refused() -> None:
    pem = generate_signing_key().to_pem(passphrase())
    sealed = bytearray(base64.urlsafe_b64decode(str(fields(pem)["sealed"]) + "=="))
    sealed[5] ^= 1
    changed = base64.urlsafe_b64encode(bytes(sealed)).rstrip(b"=").decode()

    with pytest.raises(KeyFileError, match="the file has been changed"):
        private_key_from_pem(with_fields(pem, sealed=changed), passphrase(), "k")


def test_changed_content_kind_is_refused() -> None:
    pem = generate_signing_key().to_pem(passphrase())

    # Bound in the associated data: relabelling a key as a storage key cannot go unnoticed.
    with pytest.raises(KeyFileError, match="holds a storage-key, not a pkcs8"):
        private_key_from_pem(with_fields(pem, content="storage-key"), passphrase(), "k")
    relabelled = with_fields(
        storage_key_file(generate_storage_key(), passphrase()), content="pkcs8"
    )
    with pytest.raises(KeyFileError, match="the file has been changed"):
        private_key_from_pem(relabelled, passphrase(), "k")


def test_weakened_parameters_are_refused() -> None:
    pem = generate_signing_key().to_pem(passphrase())

    # A lowered n gives another stretched key: the check refuses it as the passphrase would.
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        private_key_from_pem(with_fields(pem, n=1 << 4), passphrase(), "k")


def test_parameters_out_of_bounds_are_refused_before_stretching() -> None:
    pem = generate_signing_key().to_pem(passphrase())

    with pytest.raises(KeyFileError, match="scrypt n=16777216 r=8 refused"):
        private_key_from_pem(with_fields(pem, n=1 << 24), passphrase(), "k")
    with pytest.raises(KeyFileError, match="scrypt n=1000"):
        private_key_from_pem(with_fields(pem, n=1000), passphrase(), "k")
    with pytest.raises(KeyFileError, match="unknown kdf or aead"):
        private_key_from_pem(with_fields(pem, kdf="pbkdf2"), passphrase(), "k")


def test_truncated_file_is_refused() -> None:
    pem = generate_signing_key().to_pem(passphrase())

    with pytest.raises(KeyFileError, match="truncated PEM"):
        private_key_from_pem(pem[:-30], passphrase(), "k")


def test_pbkdf2_files_of_earlier_versions_still_load_and_rewrap() -> None:
    raw = ed25519.Ed25519PrivateKey.generate()
    old = raw.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"correct horse"),
    )

    loaded = signing_key_from_pem(old, passphrase(), "signing.key")
    upgraded = rewrap_private_key(old, passphrase(), "signing.key")

    assert old.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert loaded.public_raw == raw.public_key().public_bytes_raw()
    assert upgraded.startswith(b"-----BEGIN CPN ENCRYPTED PRIVATE KEY-----")
    assert signing_key_from_pem(upgraded, passphrase(), "s").kid == loaded.kid


def test_clear_files_stay_clear_pkcs8() -> None:
    pem = generate_signing_key().to_pem(None)

    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert signing_key_from_pem(pem, None, "s").public_raw


def test_storage_key_file_round_trips_clear_and_encrypted() -> None:
    key = generate_storage_key()

    clear = storage_key_from_file(storage_key_file(key, None), None, "storage.key")
    sealed = storage_key_from_file(storage_key_file(key, passphrase()), passphrase(), "s")

    assert clear.kid == sealed.kid == key.kid
    with pytest.raises(KeyFileError, match="set CPN_KEY_PASSPHRASE"):
        storage_key_from_file(storage_key_file(key, passphrase()), None, "storage.key")


def test_one_passphrase_stretches_once_per_salt() -> None:
    writer = passphrase()
    pems = [generate_signing_key().to_pem(writer) for _ in range(3)]
    reader = passphrase()

    for pem in pems:
        signing_key_from_pem(pem, reader, "s")

    assert len({fields(p)["salt"] for p in pems}) == 1
    assert len({fields(p)["nonce"] for p in pems}) == 3
    assert len(reader._derived) == 1


def test_keyring_picks_the_hpke_key_by_kid() -> None:
    old, older, current = (generate_hpke_key(HpkeSuite.X25519) for _ in range(3))

    ring = Keyring(current, generate_storage_key(), [old, older])

    assert ring.hpke(current.public.kid) is current
    assert ring.hpke(old.public.kid) is old
    assert ring.hpke(older.public.kid) is older
    assert ring.hpke("unknown") is None
    assert set(ring.retired) == {old.public.kid, older.public.kid}


def test_keyring_holds_each_retired_keys_legacy_storage_key() -> None:
    old, current = generate_hpke_key(), generate_hpke_key()
    storage = generate_storage_key()

    ring = Keyring(current, storage, [old])

    legacy = old.legacy_storage_key()
    assert ring.storage_key(legacy.kid) is not None
    assert ring.storage_key(storage.kid) is storage
    assert next(ring.storage_keys()) is storage  # the current one is tried first
    assert {k.kid for k in ring.storage_keys()} == {
        storage.kid,
        legacy.kid,
        current.legacy_storage_key().kid,
    }
