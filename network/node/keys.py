"""A node's key directory and the register keeper's key, on disk.

    keys/<ID>/signing.key          Ed25519, PKCS#8, mode 0600
    keys/<ID>/hpke-mlkem768.key    ML-KEM-768 part of the hybrid HPKE key, 0600
    keys/<ID>/hpke-x25519.key      X25519 part (or the whole key with the X25519 suite), 0600
    keys/<ID>/tls.key, tls.crt     self-signed certificate for peer links (pinned by the roster)
    keys/<ID>/storage.key          seals the node's own copies of what it sent, 0600
    keys/<ID>/card.json            the public contact-point card
    keys/<ID>/retired/<kid>/       what a rotation replaced, by the retired HPKE key's id
                                   (the same files, storage.key aside): kept so that every
                                   stored message still opens; removed only by a purge
    keys/authority/keeper.key      the register keeper's Ed25519 key, 0600
    keys/authority/keeper.json     its public part, which nodes pin

With a passphrase (CPN_KEY_PASSPHRASE) every private file is encrypted, the TLS
key too (scrypt and AES-256-GCM: core.crypto); files encrypted by earlier
versions (PBKDF2) still load. A node whose keys predate `storage.key` seals
with the storage key derived from its HPKE key until a rotation writes the file.
Keys are never overwritten: `rotate_node_keys` retires them.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
import ssl
import stat
import tempfile
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from network.core.crypto import (
    HpkePrivateKey,
    HpkeSuite,
    Keyring,
    Passphrase,
    SigningKey,
    StorageKey,
    VerifyKey,
    certificate_der_from_pem,
    generate_hpke_key,
    generate_signing_key,
    generate_storage_key,
    generate_tls_identity,
    hpke_key_from_pem,
    rewrap_private_key,
    signing_key_from_pem,
    storage_key_file,
    storage_key_from_file,
    tls_key_for_ssl,
)
from network.core.envelope import open_from_self, self_sealed_kid, stored_rkid
from network.core.errors import KeyFileError, PeerError
from network.core.records import Fields, NodeId, b64encode, parse_json
from network.core.roster import Card, parse_card

if TYPE_CHECKING:
    from network.node.config import NodeConfig
    from network.node.store import Store

__all__ = [
    "NodeKeys",
    "Rotation",
    "count_needing",
    "country_name",
    "init_keeper",
    "init_node_keys",
    "load_configured_keys",
    "load_keeper",
    "load_keeper_public",
    "load_node_keys",
    "load_tls_chain",
    "purge_retired",
    "read_card",
    "rotate_node_keys",
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


def write_private_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write a secret file mode 0600, created that way (never world-readable for an instant).

    Refuses an existing file unless `replace`, which writes beside it and renames
    over it, so that the old contents or the new are there, never half of either.
    """
    if replace:
        staged = path.with_name(path.name + ".new")
        staged.unlink(missing_ok=True)
        write_private_file(staged, data)
        os.replace(staged, path)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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


def _passphrase(secret: bytes | None) -> Passphrase | None:
    return Passphrase(secret) if secret else None


def load_signing_key(path: Path, passphrase: Passphrase | None = None) -> SigningKey:
    return signing_key_from_pem(read_private_file(path), passphrase, str(path))


def load_hpke_key(key_dir: Path, passphrase: Passphrase | None = None) -> HpkePrivateKey:
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
    """A node's keys, loaded and checked against its card.

    `hpke` is the current HPKE key; `keyring` adds the retired ones and the
    storage keys. `tls_secret` is the TLS key as `load_tls_chain` gives it to
    `ssl`: encrypted PEM under a one-time password, and that password.
    """

    node_id: NodeId
    signing: SigningKey
    hpke: HpkePrivateKey
    tls_cert: Path
    tls_key: Path
    card: Card
    keyring: Keyring = field(repr=False)
    tls_secret: tuple[bytes, bytes] = field(repr=False)
    retired_signing: tuple[VerifyKey, ...] = ()  # from the retired cards, newest first


def load_tls_chain(context: ssl.SSLContext, keys: NodeKeys) -> None:
    """Give `context` the node's certificate and TLS key, the key never in clear on disk.

    `ssl` reads keys from files only: it gets the key encrypted under a one-time
    password, through an anonymous memory file (Linux) or else a private
    temporary file removed at once.
    """
    pem, password = keys.tls_secret
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("cpn-tls-key", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(pem)
            context.load_cert_chain(keys.tls_cert, f"/proc/self/fd/{fd}", password)
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile() as f:  # created mode 0600
        f.write(pem)
        f.flush()
        context.load_cert_chain(keys.tls_cert, f.name, password)


_PRIVATE_PARTS = ("signing.key", "hpke-x25519.key", "hpke-mlkem768.key", "tls.key")


def _write_key_set(
    key_dir: Path,
    node_id: NodeId,
    *,
    url: str,
    name: str,
    suite: HpkeSuite,
    passphrase: Passphrase | None,
    now: datetime.datetime,
    replace: bool,
    signing: SigningKey | None = None,
    phones: tuple[str, ...] = (),
    languages: tuple[str, ...] = (),
) -> Card:
    """New signing, HPKE and TLS keys and their card, written to `key_dir`; `signing`
    given: that key (in a hardware module), no signing.key."""
    in_token = signing is not None
    signing = signing or generate_signing_key()
    hpke = generate_hpke_key(suite)
    tls_key, tls_cert, tls_der = generate_tls_identity(node_id, now=now, passphrase=passphrase)
    files = dict(hpke.part_pems(passphrase))
    if not in_token:
        files["signing.key"] = signing.to_pem(passphrase)
    files["tls.key"] = tls_key
    for file_name, data in files.items():
        write_private_file(key_dir / file_name, data, replace=replace)
    if suite is HpkeSuite.X25519:
        (key_dir / "hpke-mlkem768.key").unlink(missing_ok=True)
    write_public_file(key_dir / "tls.crt", tls_cert)
    card = Card(
        id=node_id,
        name=name,
        url=url,
        signing_key=signing.verify_key(),
        hpke_key=hpke.public,
        tls_cert=tls_der,
        phones=phones,
        languages=languages,
    )
    # The card goes last: until it is written the keys do not match it, and loading says so.
    write_public_file(key_dir / "card.json", json.dumps(card.to_json(), indent=2).encode() + b"\n")
    return card


def _token_key(uri: str, *, generate: bool) -> SigningKey:
    from network.node.hsm import generate_in_token, open_signing_key  # python-pkcs11 only here

    return generate_in_token(uri) if generate else open_signing_key(uri)


def init_node_keys(
    key_dir: Path,
    node_id: NodeId,
    *,
    url: str,
    name: str | None = None,
    suite: HpkeSuite = HpkeSuite.MLKEM768_X25519,
    passphrase: bytes | None = None,
    now: datetime.datetime,
    signing_uri: str | None = None,
    phones: tuple[str, ...] = (),
    languages: tuple[str, ...] = (),
) -> Card:
    """Create a node's keys, storage key and card (with the duty desk's `phones` and
    `languages`, when given).

    Refuses (KeyFileError) when the node has keys: `rotate_node_keys` replaces
    them and keeps the old ones. With `signing_uri` the signing key is made (or found)
    in the hardware module it names, and no signing.key is written.
    """
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (key_dir / "signing.key").exists() or (key_dir / "card.json").exists():
        raise KeyFileError(
            f"{key_dir}/signing.key exists; `cpn keys rotate {node_id}` replaces the keys"
            " and keeps the old ones"
        )
    secret = _passphrase(passphrase)
    if not (key_dir / "storage.key").exists():
        write_private_file(
            key_dir / "storage.key", storage_key_file(generate_storage_key(), secret)
        )
    return _write_key_set(
        key_dir,
        node_id,
        url=url,
        name=name or country_name(node_id),
        suite=suite,
        passphrase=secret,
        now=now,
        replace=False,
        signing=None if signing_uri is None else _token_key(signing_uri, generate=True),
        phones=phones,
        languages=languages,
    )


@dataclass(frozen=True, slots=True)
class Rotation:
    """What `rotate_node_keys` did: the HPKE key id it retired, and the new card."""

    retired: str
    card: Card
    retired_dir: Path


def rotate_node_keys(
    key_dir: Path,
    node_id: NodeId,
    *,
    passphrase: bytes | None = None,
    now: datetime.datetime,
    url: str | None = None,
    suite: HpkeSuite | None = None,
) -> Rotation:
    """Retire a node's keys to `retired/<HPKE kid>/` and write new ones and a new card.

    The current keys are loaded first (so a wrong passphrase changes nothing),
    copied to the retired folder in the current file format, and only then
    replaced. The storage key stays (its sent copies and case tags with it); a
    node whose keys predate `storage.key` gets one holding the key it used so
    far. Raises KeyFileError.
    """
    keys = load_node_keys(key_dir, node_id, passphrase)
    secret = _passphrase(passphrase)
    # The same storage key, written (or rewritten) in the current format: a node from
    # before storage.key gets the key it used so far; a clear one is encrypted.
    storage = storage_key_file(keys.keyring.storage, secret)
    write_private_file(key_dir / "storage.key", storage, replace=True)
    old = keys.hpke.public.kid
    retired_dir = key_dir / "retired" / old
    retired_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for part in _PRIVATE_PARTS:
        source = key_dir / part
        if source.exists():
            # Re-encrypted in the current format (an earlier version's PBKDF2 file is upgraded).
            data = rewrap_private_key(read_private_file(source), secret, str(source))
            write_private_file(retired_dir / part, data, replace=True)
    for part in ("tls.crt", "card.json"):
        write_public_file(retired_dir / part, (key_dir / part).read_bytes())
    card = _write_key_set(
        key_dir,
        node_id,
        url=url or keys.card.url,
        name=keys.card.name,
        phones=keys.card.phones,
        languages=keys.card.languages,
        suite=suite or keys.hpke.suite,
        passphrase=secret,
        now=now,
        replace=True,
    )
    return Rotation(old, card, retired_dir)


def read_card(path: Path) -> Card:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read card: {exc.strerror}") from exc
    try:
        return parse_card(parse_json(data, limit=MAX_CARD_BYTES, what=str(path)), str(path))
    except PeerError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc


def load_configured_keys(config: NodeConfig) -> NodeKeys:
    """The keys of the node `config` describes, as the node itself loads them: its key
    folder, the passphrase from CPN_KEY_PASSPHRASE, the signing key in a hardware module
    when `[keys] signing` names one. Raises KeyFileError."""
    passphrase = os.environ.get("CPN_KEY_PASSPHRASE")
    return load_node_keys(
        config.keys_dir,
        config.id,
        passphrase.encode() if passphrase else None,
        signing_uri=config.signing_uri,
    )


def load_node_keys(
    key_dir: Path,
    node_id: NodeId,
    passphrase: bytes | None = None,
    *,
    signing_uri: str | None = None,
) -> NodeKeys:
    """Load a node's keys, the retired ones and the storage key, and check them against
    its card (and each retired key against its folder's name). Raises KeyFileError.

    `signing_uri` (`[keys] signing`, a pkcs11: URI) names a signing key held in a
    hardware module instead of `signing.key` (network/node/hsm.py)."""
    secret = _passphrase(passphrase)
    signing = (
        load_signing_key(key_dir / "signing.key", secret)
        if signing_uri is None
        else _token_key(signing_uri, generate=False)
    )
    hpke = load_hpke_key(key_dir, secret)
    card = read_card(key_dir / "card.json")
    if card.id != node_id:
        raise KeyFileError(f"{key_dir}/card.json is for {card.id}, not {node_id}")
    if card.signing_key.kid != signing.kid or card.hpke_key.kid != hpke.public.kid:
        raise KeyFileError(f"{key_dir}: card.json does not match the private keys")
    tls_cert = key_dir / "tls.crt"
    if load_tls_certificate(tls_cert) != card.tls_cert:
        raise KeyFileError(f"{tls_cert}: certificate does not match card.json")
    tls_key = key_dir / "tls.key"
    tls_secret = tls_key_for_ssl(read_private_file(tls_key), secret, str(tls_key))
    storage_path = key_dir / "storage.key"
    storage: StorageKey = (
        storage_key_from_file(read_private_file(storage_path), secret, str(storage_path))
        if storage_path.exists()
        else hpke.legacy_storage_key()
    )
    retired, signing_keys = [], []
    for folder in _retired_folders(key_dir):
        key = load_hpke_key(folder, secret)
        if key.public.kid != folder.name:
            raise KeyFileError(f"{folder}: holds HPKE key {key.public.kid}, not {folder.name}")
        retired.append(key)
        signing_keys.append(read_card(folder / "card.json").signing_key)
    keyring = Keyring(hpke, storage, retired)
    return NodeKeys(
        node_id,
        signing,
        hpke,
        tls_cert,
        tls_key,
        card,
        keyring,
        tls_secret,
        tuple(signing_keys),
    )


def _retired_folders(key_dir: Path) -> list[Path]:
    """The retired key folders, newest first (an untagged sent copy tries them in turn)."""
    root = key_dir / "retired"
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir()]
    return sorted(folders, key=lambda p: p.stat().st_mtime_ns, reverse=True)


async def count_needing(store: Store, keyring: Keyring, kid: str) -> int:
    """How many stored messages need retired HPKE key `kid` (or the storage key earlier
    versions derived from it) to open: what a purge of that key would make unreadable.

    Raises KeyFileError when `kid` is not a retired key.
    """
    key = keyring.hpke(kid)
    if key is None or key is keyring.current:
        retired = ", ".join(sorted(keyring.retired)) or "none"
        raise KeyFileError(f"{kid} is not a retired key of this node (retired: {retired})")
    legacy = key.legacy_storage_key()
    needing = 0
    # LIMIT -1 is SQLite's "no limit": every message, whatever its state.
    for row in await store.messages(box="in", limit=-1, parts=True):
        if row.deleted is None:  # deleted contents (retention) need no key
            needing += stored_rkid(row.envelope) == kid
    if legacy.kid == keyring.storage.kid:
        return needing  # storage.key holds that very key: the sent copies do not need it
    for row in await store.messages(box="out", limit=-1, parts=True):
        if row.self_sealed is None:
            continue
        named = self_sealed_kid(row.self_sealed)
        if named is not None:
            needing += named == legacy.kid
            continue
        try:
            open_from_self(row.self_sealed, row.id, legacy)
            needing += 1
        except PeerError:
            pass
    return needing


def purge_retired(key_dir: Path, kid: str) -> Path:
    """Delete retired key folder `kid` (the caller has checked no message needs it)."""
    folder = key_dir / "retired" / kid
    if not folder.is_dir() or folder.parent.resolve() != (key_dir / "retired").resolve():
        raise KeyFileError(f"{folder}: no such retired key")
    shutil.rmtree(folder)
    return folder


def init_keeper(
    key_dir: Path, *, passphrase: bytes | None = None, force: bool = False
) -> VerifyKey:
    """Create the register keeper's key (keeper.key) and its pinned public part (keeper.json);
    an existing key is replaced only with `force`."""
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keeper = generate_signing_key()
    pem = keeper.to_pem(_passphrase(passphrase))
    write_private_file(key_dir / "keeper.key", pem, replace=force)
    public = {"alg": "Ed25519", "kid": keeper.kid, "public": b64encode(keeper.public_raw)}
    write_public_file(key_dir / "keeper.json", json.dumps(public, indent=2).encode() + b"\n")
    return keeper.verify_key()


def load_keeper(key_dir: Path, passphrase: bytes | None = None) -> SigningKey:
    return load_signing_key(key_dir / "keeper.key", _passphrase(passphrase))


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
