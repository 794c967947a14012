"""The primitives behind envelopes: HPKE seal and open, signatures, key PEMs, storage keys.

One test per tamper case: each change to sealed or signed bytes is refused with the
project's own error, never a library's.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest

from network.core.crypto import (
    HpkePrivateKey,
    HpkePublicKey,
    HpkeSuite,
    VerifyKey,
    certificate_der_from_pem,
    check_certificate,
    generate_hpke_key,
    generate_signing_key,
    generate_tls_identity,
    hpke_key_from_pem,
    key_id,
    signing_key_from_pem,
)
from network.core.errors import BadSignatureError, DecryptError, KeyFileError, MalformedError

SUITES = list(HpkeSuite)
INFO = b"cpn/v1 header bytes"
PLAINTEXT = b'{"summary":"preserve the account"}'
PASSPHRASE = b"correct horse battery staple"


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


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33])
def test_a_verify_key_of_the_wrong_size_is_refused(raw: bytes) -> None:
    with pytest.raises(MalformedError, match="not an Ed25519 public key"):
        VerifyKey(raw)


# -- key PEMs --------------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE], ids=["clear", "passphrase"])
def test_a_signing_key_round_trips_through_pem(passphrase: bytes | None) -> None:
    key = generate_signing_key()
    pem = key.to_pem(passphrase)

    again = signing_key_from_pem(pem, passphrase, "signing.key")

    assert again.public_raw == key.public_raw
    assert (b"ENCRYPTED" in pem) is (passphrase is not None)


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE], ids=["clear", "passphrase"])
def test_an_hpke_key_round_trips_through_its_pems(
    hpke: HpkePrivateKey, passphrase: bytes | None
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
    assert again.storage_key().tag("case") == hpke.storage_key().tag("case")


def test_a_protected_key_without_its_passphrase_is_refused() -> None:
    pem = generate_signing_key().to_pem(PASSPHRASE)

    with pytest.raises(KeyFileError, match=r"signing.key: .*CPN_KEY_PASSPHRASE"):
        signing_key_from_pem(pem, None, "signing.key")


def test_a_wrong_passphrase_is_refused() -> None:
    pem = generate_signing_key().to_pem(PASSPHRASE)

    with pytest.raises(KeyFileError, match=r"signing\.key: cannot load private key"):
        signing_key_from_pem(pem, b"wrong", "signing.key")


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
    storage = generate_hpke_key(HpkeSuite.X25519).storage_key()
    sealed = storage.seal(PLAINTEXT, b"message 1")

    assert storage.open(sealed, b"message 1") == PLAINTEXT
    with pytest.raises(DecryptError):
        storage.open(sealed, b"message 2")
    with pytest.raises(DecryptError):
        storage.open(flip(sealed, 14), b"message 1")
    with pytest.raises(DecryptError):
        generate_hpke_key(HpkeSuite.X25519).storage_key().open(sealed, b"message 1")


def test_tags_match_equal_texts_only() -> None:
    storage = generate_hpke_key(HpkeSuite.X25519).storage_key()

    assert storage.tag("FR-2026-001") == storage.tag("FR-2026-001")
    assert storage.tag("FR-2026-001") != storage.tag("FR-2026-002")
    assert "FR-2026" not in storage.tag("FR-2026-001")


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
