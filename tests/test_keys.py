"""Key files on disk: modes, passphrases, no silent overwrite, cards that match."""

from __future__ import annotations

import datetime
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from network.core.crypto import HpkeSuite
from network.core.envelope import open_from_self
from network.core.errors import KeyFileError
from network.core.records import NodeId
from network.node.keys import (
    init_keeper,
    init_node_keys,
    load_keeper,
    load_keeper_public,
    load_node_keys,
    load_tls_chain,
    read_card,
    rotate_node_keys,
)
from network.samples import sample_body
from tests.harness import Network, rows

CPN = str(Path(sys.executable).parent / "cpn")

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


# -- passphrases, the TLS key, the storage key ----------------------------------


def test_passphrase_encrypts_every_private_file_tls_key_included(tmp_path: Path) -> None:
    init(tmp_path / "FRA", passphrase=b"correct horse")

    for name in (*PRIVATE, "storage.key"):
        data = (tmp_path / "FRA" / name).read_bytes()
        assert data.startswith(b"-----BEGIN CPN ENCRYPTED PRIVATE KEY-----"), name
    keys = load_node_keys(tmp_path / "FRA", NodeId("FRA"), b"correct horse")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_tls_chain(context, keys)  # ssl takes the key without it being written in clear
    assert not list(tmp_path.glob("**/*.pem"))


def test_storage_key_is_its_own_and_survives_rotation(tmp_path: Path) -> None:
    init(tmp_path / "FRA")
    before = load_node_keys(tmp_path / "FRA", NodeId("FRA"))

    rotate_node_keys(tmp_path / "FRA", NodeId("FRA"), now=NOW)
    after = load_node_keys(tmp_path / "FRA", NodeId("FRA"))

    assert before.keyring.storage.kid != before.hpke.legacy_storage_key().kid
    assert after.keyring.storage.kid == before.keyring.storage.kid
    assert after.hpke.public.kid != before.hpke.public.kid


# -- rotation ----------------------------------------------------------------------


def test_rotation_retires_the_old_keys_and_the_keyring_holds_them(tmp_path: Path) -> None:
    key_dir = tmp_path / "FRA"
    first = init(key_dir)
    old = load_node_keys(key_dir, NodeId("FRA"))

    rotation = rotate_node_keys(key_dir, NodeId("FRA"), now=NOW)
    second = rotate_node_keys(key_dir, NodeId("FRA"), now=NOW)
    keys = load_node_keys(key_dir, NodeId("FRA"))

    assert rotation.retired == old.hpke.public.kid
    assert rotation.card.signing_key.kid != first.signing_key.kid  # type: ignore[attr-defined]
    assert rotation.card.tls_cert != first.tls_cert  # type: ignore[attr-defined]
    assert keys.card == second.card == read_card(key_dir / "card.json")
    assert set(keys.keyring.retired) == {rotation.retired, second.retired}
    retired = key_dir / "retired" / rotation.retired
    for name in PRIVATE:
        assert stat.S_IMODE((retired / name).stat().st_mode) == 0o600, name
    assert read_card(retired / "card.json") == first


def test_rotation_with_a_wrong_passphrase_changes_nothing(tmp_path: Path) -> None:
    init(tmp_path / "FRA", passphrase=b"correct horse")
    before = {p.name: p.read_bytes() for p in (tmp_path / "FRA").iterdir()}

    with pytest.raises(KeyFileError, match="wrong passphrase"):
        rotate_node_keys(tmp_path / "FRA", NodeId("FRA"), passphrase=b"wrong", now=NOW)

    assert {p.name: p.read_bytes() for p in (tmp_path / "FRA").iterdir()} == before


def test_rotation_upgrades_a_node_from_before_storage_keys_and_scrypt(tmp_path: Path) -> None:
    """A key folder as earlier versions wrote it: PBKDF2 PEMs, a clear TLS key, and sent
    copies sealed under the key derived from the HPKE key."""
    key_dir = tmp_path / "FRA"
    init(key_dir)
    (key_dir / "storage.key").unlink()
    for name in ("signing.key", "hpke-x25519.key", "hpke-mlkem768.key"):
        key = serialization.load_pem_private_key((key_dir / name).read_bytes(), None)
        pbkdf2 = serialization.BestAvailableEncryption(b"correct horse")
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, pbkdf2
        )  # type: ignore[union-attr]
        (key_dir / name).write_bytes(pem)
    old = load_node_keys(key_dir, NodeId("FRA"), b"correct horse")
    legacy = old.hpke.legacy_storage_key()
    copy = legacy.seal(b"sent before", b"cpn/v1 self\nm1")  # the earlier untagged format

    rotation = rotate_node_keys(key_dir, NodeId("FRA"), passphrase=b"correct horse", now=NOW)
    keys = load_node_keys(key_dir, NodeId("FRA"), b"correct horse")

    assert keys.keyring.storage.kid == legacy.kid  # case tags and old copies stay valid
    assert open_from_self(copy, "m1", keys.keyring) == b"sent before"
    assert keys.keyring.hpke(rotation.retired) is not None
    for name in ("signing.key", "hpke-x25519.key", "tls.key"):
        data = (key_dir / "retired" / rotation.retired / name).read_bytes()
        assert data.startswith(b"-----BEGIN CPN ENCRYPTED PRIVATE KEY-----"), name


def test_retired_folder_holding_another_key_is_refused(tmp_path: Path) -> None:
    init(tmp_path / "FRA")
    rotation = rotate_node_keys(tmp_path / "FRA", NodeId("FRA"), now=NOW)
    retired = tmp_path / "FRA" / "retired"
    (retired / rotation.retired).rename(retired / "someone-else")

    with pytest.raises(KeyFileError, match=f"holds HPKE key {rotation.retired}, not someone-else"):
        load_node_keys(tmp_path / "FRA", NodeId("FRA"))


# -- end to end: two real nodes, rotated twice -------------------------------------


def cpn(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [CPN, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.timeout(300)
def test_rotating_twice_keeps_every_message_in_both_boxes_readable(tmp_path: Path) -> None:
    net = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]}, suite=HpkeSuite.MLKEM768_X25519)
    sent: dict[str, tuple[str, str, dict[str, object]]] = {}  # id -> (sender, recipient, body)

    def exchange(round_: int) -> None:
        for sender, recipient in (("FRA", "DEU"), ("DEU", "FRA")):
            body = sample_body("technical_advice", summary=f"round {round_} from {sender}")
            message_id = net.send(sender, recipient, "technical_advice", body)
            sent[message_id] = (sender, recipient, body)
        for message_id, (sender, _, _) in sent.items():
            net.wait_state(sender, message_id, {"delivered"})

    try:
        net.start("FRA", "DEU")
        exchange(0)
        for round_ in (1, 2):
            net.stop("FRA")
            net.stop("DEU")
            config = str(net.nodes["FRA"].config)
            cpn("keys", "rotate", "FRA", "--config", config, cwd=tmp_path)
            cards = [read_card(net.keys / n / "card.json") for n in ("DEU", "FRA")]
            net.write_roster(cards, version=1 + round_)
            net.start("FRA", "DEU")
            exchange(round_)

        for message_id, (sender, recipient, body) in sent.items():
            for node_id in (sender, recipient):
                status, seen = net.api(node_id, "GET", f"/api/messages/{message_id}")
                assert status == 200, (node_id, seen)
                assert seen["body"] == body, (node_id, message_id)
        case_ref = sample_body("technical_advice")["case_ref"]
        status, case = net.api("FRA", "GET", f"/api/messages?box=out&case={case_ref}")
        assert status == 200 and len(case["messages"]) == 3  # case tags survive rotation
    finally:
        net.close()
    first = next(c for c in net.cards if c.id == "FRA").hpke_key.kid
    refused = cpn(
        "keys", "rotate", "FRA", "--config", config, "--purge", first, cwd=tmp_path, ok=False
    )
    assert refused.returncode == 2
    assert f"retired key {first} still opens 1 stored message(s)" in refused.stderr
    assert (net.keys / "FRA" / "retired" / first).is_dir()
    actions = rows(net.nodes["FRA"].store, "SELECT action FROM audit WHERE actor LIKE 'admin:%'")
    assert actions == [("keys_rotated",), ("keys_rotated",), ("key_purge_refused",)]


@pytest.mark.timeout(180)
def test_node_with_encrypted_keys_links_and_reads_after_rotating_to_a_passphrase(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]})
    secret = {"CPN_KEY_PASSPHRASE": "correct horse"}
    try:
        net.start("FRA", "DEU")
        before = net.send("DEU", "FRA", "emergency", sample_body("emergency"))
        net.wait_state("DEU", before, {"delivered"})
        net.stop("FRA")
        # The demo's clear files load with a passphrase set; the rotation encrypts them all.
        rotate_node_keys(net.keys / "FRA", NodeId("FRA"), passphrase=b"correct horse", now=NOW)
        cards = [read_card(net.keys / n / "card.json") for n in ("DEU", "FRA")]
        net.write_roster(cards, version=2)
        net.stop("DEU")
        net.start("FRA", env=secret)
        net.start("DEU")

        after = net.send("DEU", "FRA", "emergency", sample_body("emergency"))
        net.wait_state("DEU", after, {"delivered"})
        statuses = [net.api("FRA", "GET", f"/api/messages/{m}")[0] for m in (before, after)]
    finally:
        net.close()

    assert statuses == [200, 200]
    for name in ("signing.key", "hpke-x25519.key", "tls.key", "storage.key"):  # X25519 suite
        assert (net.keys / "FRA" / name).read_bytes().startswith(b"-----BEGIN CPN ENCRYPTED")
