"""Key files on disk: modes, passphrases, no silent overwrite, cards that match."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest

from network.core.crypto import HpkeSuite
from network.core.errors import KeyFileError
from network.core.records import NodeId
from network.node.keys import (
    init_keeper,
    init_node_keys,
    load_keeper,
    load_keeper_public,
    load_node_keys,
    read_card,
)

NOW = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)
PRIVATE = ("signing.key", "hpke-mlkem768.key", "hpke-x25519.key", "tls.key")


def init(key_dir: Path, **kwargs: object) -> object:
    return init_node_keys(key_dir, NodeId("FRA"), url="wss://127.0.0.1:7101", now=NOW, **kwargs)  # type: ignore[arg-type]


def test_init_writes_private_files_0600_and_a_matching_card(tmp_path: Path) -> None:
    key_dir = tmp_path / "FRA"

    card = init(key_dir)

    for name in PRIVATE:
        assert stat.S_IMODE((key_dir / name).stat().st_mode) == 0o600, name
    assert read_card(key_dir / "card.json") == card
    keys = load_node_keys(key_dir, NodeId("FRA"))
    assert keys.signing.kid == keys.card.signing_key.kid
    assert keys.hpke.suite is HpkeSuite.MLKEM768_X25519
    assert b"PRIVATE" not in (key_dir / "card.json").read_bytes()


def test_init_never_overwrites_and_points_to_rotate(tmp_path: Path) -> None:
    init(tmp_path / "FRA")
    before = (tmp_path / "FRA" / "signing.key").read_bytes()

    with pytest.raises(KeyFileError, match="cpn keys rotate FRA"):
        init(tmp_path / "FRA")

    assert (tmp_path / "FRA" / "signing.key").read_bytes() == before


def test_x25519_suite_is_selectable(tmp_path: Path) -> None:
    init(tmp_path / "FRA", suite=HpkeSuite.X25519)

    keys = load_node_keys(tmp_path / "FRA", NodeId("FRA"))

    assert keys.hpke.suite is HpkeSuite.X25519
    assert not (tmp_path / "FRA" / "hpke-mlkem768.key").exists()


def test_passphrase_protects_the_private_keys(tmp_path: Path) -> None:
    init(tmp_path / "FRA", passphrase=b"correct horse")

    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "FRA" / "signing.key").read_bytes()
    assert load_node_keys(tmp_path / "FRA", NodeId("FRA"), b"correct horse").node_id == "FRA"
    with pytest.raises(KeyFileError, match="CPN_KEY_PASSPHRASE"):
        load_node_keys(tmp_path / "FRA", NodeId("FRA"))
    with pytest.raises(KeyFileError, match=r"signing\.key: cannot load private key"):
        load_node_keys(tmp_path / "FRA", NodeId("FRA"), b"wrong")


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    init(tmp_path / "FRA")
    os.chmod(tmp_path / "FRA" / "signing.key", 0o644)

    with pytest.raises(KeyFileError, match=r"readable by others.*chmod 600"):
        load_node_keys(tmp_path / "FRA", NodeId("FRA"))


def test_damaged_key_file_is_named(tmp_path: Path) -> None:
    init(tmp_path / "FRA")
    (tmp_path / "FRA" / "hpke-x25519.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")

    with pytest.raises(KeyFileError, match=r"hpke-x25519\.key: cannot load private key"):
        load_node_keys(tmp_path / "FRA", NodeId("FRA"))


def test_card_that_does_not_match_the_keys_is_refused(tmp_path: Path) -> None:
    init(tmp_path / "FRA")
    init(tmp_path / "other")
    (tmp_path / "FRA" / "card.json").write_bytes((tmp_path / "other" / "card.json").read_bytes())

    with pytest.raises(KeyFileError, match="does not match the private keys"):
        load_node_keys(tmp_path / "FRA", NodeId("FRA"))


def test_damaged_card_names_the_field(tmp_path: Path) -> None:
    init(tmp_path / "FRA")
    card = tmp_path / "FRA" / "card.json"
    card.write_text(card.read_text().replace('"url": "wss://', '"url": "http://'))

    with pytest.raises(KeyFileError, match="url: peer URL must start with wss://"):
        read_card(card)


def test_keeper_key_and_its_pinned_public_part(tmp_path: Path) -> None:
    public = init_keeper(tmp_path / "authority")

    assert stat.S_IMODE((tmp_path / "authority" / "keeper.key").stat().st_mode) == 0o600
    assert load_keeper_public(tmp_path / "authority" / "keeper.json").kid == public.kid
    assert load_keeper(tmp_path / "authority").kid == public.kid
    with pytest.raises(KeyFileError, match="use --force"):
        init_keeper(tmp_path / "authority")
