"""A node's key directory and the register keeper's key, on disk.

    keys/<ID>/signing.key          Ed25519, PKCS#8 PEM, mode 0600
    keys/<ID>/hpke-mlkem768.key    ML-KEM-768 part of the hybrid HPKE key, 0600
    keys/<ID>/hpke-x25519.key      X25519 part (or the whole key with the X25519 suite), 0600
    keys/<ID>/tls.key, tls.crt     self-signed certificate for peer links (pinned by the roster)
    keys/<ID>/card.json            the public contact-point card
    keys/authority/keeper.key      the register keeper's Ed25519 key, 0600
    keys/authority/keeper.json     its public part, which nodes pin

Private files may be encrypted with a passphrase (CPN_KEY_PASSPHRASE).
Nothing is overwritten without `force`.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import stat
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from network.core.crypto import (
    HpkePrivateKey,
    HpkeSuite,
    SigningKey,
    VerifyKey,
    certificate_der_from_pem,
    generate_hpke_key,
    generate_signing_key,
    generate_tls_identity,
    hpke_key_from_pem,
    signing_key_from_pem,
)
from network.core.errors import KeyFileError, PeerError
from network.core.records import Fields, NodeId, b64encode, parse_json
from network.core.roster import Card, parse_card

__all__ = [
    "NodeKeys",
    "country_name",
    "init_keeper",
    "init_node_keys",
    "load_keeper",
    "load_keeper_public",
    "load_node_keys",
    "read_card",
]

MAX_CARD_BYTES = 16 * 1024


@cache
def _country_names() -> dict[str, str]:
    text = resources.files("network").joinpath("data/un-member-states.csv").read_text("utf-8")
    return {row["alpha3"]: row["name"] for row in csv.DictReader(text.splitlines())}


def country_name(node_id: str) -> str:
    """The UN member state's name for an alpha-3 code, or the code itself."""
    return _country_names().get(node_id, node_id)


# -- files -------------------------------------------------------------------


def write_private_file(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write a secret file mode 0600, created that way (never world-readable for an instant)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; use --force to overwrite it") from exc
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def write_public_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_private_file(path: Path) -> bytes:
    """A private key file's bytes; refused when missing or readable by others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path}: key file not found") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: private key readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    return path.read_bytes()


def load_signing_key(path: Path, passphrase: bytes | None = None) -> SigningKey:
    return signing_key_from_pem(read_private_file(path), passphrase, str(path))


def load_hpke_key(key_dir: Path, passphrase: bytes | None = None) -> HpkePrivateKey:
    x_path, m_path = key_dir / "hpke-x25519.key", key_dir / "hpke-mlkem768.key"
    mlkem = (read_private_file(m_path), str(m_path)) if m_path.exists() else None
    return hpke_key_from_pem((read_private_file(x_path), str(x_path)), mlkem, passphrase)


def load_tls_certificate(cert_path: Path) -> bytes:
    """The DER form of a PEM certificate file: what the roster carries."""
    try:
        pem = cert_path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{cert_path}: cannot load certificate: {exc}") from exc
    return certificate_der_from_pem(pem, str(cert_path))


@dataclass(frozen=True, slots=True)
class NodeKeys:
    node_id: NodeId
    signing: SigningKey
    hpke: HpkePrivateKey
    tls_cert: Path
    tls_key: Path
    card: Card


def init_node_keys(
    key_dir: Path,
    node_id: NodeId,
    *,
    url: str,
    name: str | None = None,
    suite: HpkeSuite = HpkeSuite.MLKEM768_X25519,
    passphrase: bytes | None = None,
    force: bool = False,
    now: datetime.datetime,
) -> Card:
    """Create a node's keys and card; refuses to overwrite unless `force`."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not force and (key_dir / "signing.key").exists():
        raise KeyFileError(f"{key_dir}/signing.key exists; use --force to replace the keys")
    signing = generate_signing_key()
    hpke = generate_hpke_key(suite)
    tls_key, tls_cert, tls_der = generate_tls_identity(node_id, now=now, passphrase=None)
    write_private_file(key_dir / "signing.key", signing.to_pem(passphrase), force=force)
    for file_name, pem in hpke.part_pems(passphrase).items():
        write_private_file(key_dir / file_name, pem, force=force)
    if suite is HpkeSuite.X25519 and (key_dir / "hpke-mlkem768.key").exists():
        (key_dir / "hpke-mlkem768.key").unlink()
    # The TLS key stays unencrypted: the TLS stack loads it without a prompt. Still 0600.
    write_private_file(key_dir / "tls.key", tls_key, force=force)
    write_public_file(key_dir / "tls.crt", tls_cert)
    card = Card(
        id=node_id,
        name=name or country_name(node_id),
        url=url,
        signing_key=signing.verify_key(),
        hpke_key=hpke.public,
        tls_cert=tls_der,
    )
    write_public_file(key_dir / "card.json", json.dumps(card.to_json(), indent=2).encode() + b"\n")
    return card


def read_card(path: Path) -> Card:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read card: {exc.strerror}") from exc
    try:
        return parse_card(parse_json(data, limit=MAX_CARD_BYTES, what=str(path)), str(path))
    except PeerError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc


def load_node_keys(key_dir: Path, node_id: NodeId, passphrase: bytes | None = None) -> NodeKeys:
    """Load a node's keys and check they match its card."""
    signing = load_signing_key(key_dir / "signing.key", passphrase)
    hpke = load_hpke_key(key_dir, passphrase)
    card = read_card(key_dir / "card.json")
    if card.id != node_id:
        raise KeyFileError(f"{key_dir}/card.json is for {card.id}, not {node_id}")
    if card.signing_key.kid != signing.kid or card.hpke_key.kid != hpke.public.kid:
        raise KeyFileError(f"{key_dir}: card.json does not match the private keys")
    tls_cert = key_dir / "tls.crt"
    if load_tls_certificate(tls_cert) != card.tls_cert:
        raise KeyFileError(f"{tls_cert}: certificate does not match card.json")
    return NodeKeys(node_id, signing, hpke, tls_cert, key_dir / "tls.key", card)


def init_keeper(
    key_dir: Path, *, passphrase: bytes | None = None, force: bool = False
) -> VerifyKey:
    """Create the register keeper's key (keeper.key) and its pinned public part (keeper.json)."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keeper = generate_signing_key()
    write_private_file(key_dir / "keeper.key", keeper.to_pem(passphrase), force=force)
    public = {"alg": "Ed25519", "kid": keeper.kid, "public": b64encode(keeper.public_raw)}
    write_public_file(key_dir / "keeper.json", json.dumps(public, indent=2).encode() + b"\n")
    return keeper.verify_key()


def load_keeper(key_dir: Path, passphrase: bytes | None = None) -> SigningKey:
    return load_signing_key(key_dir / "keeper.key", passphrase)


def load_keeper_public(path: Path) -> VerifyKey:
    """The pinned register keeper key; KeyFileError says what is wrong with the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read keeper key: {exc.strerror}") from exc
    try:
        f = Fields(parse_json(data, limit=MAX_CARD_BYTES, what=str(path)), str(path))
        if f.str("alg") != "Ed25519":
            raise KeyFileError(f"{path}: alg: only Ed25519 is supported")
        key = VerifyKey(f.bytes("public"))
        kid = f.str("kid")
        f.done()
    except PeerError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc
    if kid != key.kid:
        raise KeyFileError(f"{path}: kid does not match the key")
    return key
