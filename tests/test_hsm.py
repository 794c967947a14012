"""A node whose signing key is in a PKCS#11 token (SoftHSM2, a real token) exchanges
messages with a node whose keys are files (issue 17, item 6)."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from network.core.errors import KeyFileError
from network.core.records import NodeId
from network.node.config import load_config
from network.node.hsm import Pkcs11Uri, open_signing_key
from network.node.keys import init_node_keys, load_node_keys
from network.node.runner import load_current_roster
from network.node.verify import verify_store
from network.samples import sample_body
from tests.harness import Network

pytestmark = pytest.mark.timeout(120)

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "20261203"


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A fresh SoftHSM2 token `cpn` for this module (the library reads its config once per
    process); the environment a node needs to use it, set here too."""
    root = tmp_path_factory.mktemp("softhsm")
    conf = root / "softhsm2.conf"
    (root / "tokens").mkdir()
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    env = {"SOFTHSM2_CONF": str(conf), "CPN_PKCS11_PIN": PIN}
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            "cpn",
            "--pin",
            PIN,
            "--so-pin",
            "87654321",
        ],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        timeout=30,
    )
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def uri(label: str) -> str:
    return f"pkcs11:token=cpn;object={label}?module-path={MODULE}"


def test_a_node_signing_in_the_token_exchanges_with_a_node_of_key_files(
    tmp_path: Path, token: dict[str, str]
) -> None:
    network = Network(tmp_path / "net", {"FRA": ["DEU"], "DEU": ["FRA"]})
    # FRA's keys again, its signing key made in the token: no signing.key on disk.
    shutil.rmtree(network.keys / "FRA")
    card = init_node_keys(
        network.keys / "FRA",
        NodeId("FRA"),
        url=network.cards[[c.id for c in network.cards].index("FRA")].url,
        now=datetime.datetime.now(datetime.UTC),
        signing_uri=uri("FRA-signing"),
    )
    network.cards = [card if c.id == "FRA" else c for c in network.cards]
    network.write_roster(network.cards, version=2)
    config = network.nodes["FRA"].config
    config.write_text(
        config.read_text().replace(
            'keeper = "../keys/authority/keeper.json"\n',
            f'keeper = "../keys/authority/keeper.json"\nsigning = "{uri("FRA-signing")}"\n',
        )
    )
    try:
        network.start("DEU")
        network.start("FRA", env=token)
        out = network.send("FRA", "DEU", "emergency", sample_body("emergency"))
        back = network.send("DEU", "FRA", "emergency", sample_body("emergency"))
        network.wait_state("FRA", out, {"delivered"})
        network.wait_state("DEU", back, {"delivered"})
        network.stop("FRA")
    finally:
        network.close()

    assert not (network.keys / "FRA" / "signing.key").exists()
    assert card.signing_key.kid == open_signing_key(uri("FRA-signing")).kid
    node_config = load_config(config)
    report = verify_store(
        network.nodes["FRA"].store, roster=load_current_roster(node_config), node_id="FRA"
    )
    assert report.ok and report.checkpoints >= 1  # checkpoints signed in the token verify


def test_the_token_key_is_found_by_its_label_and_the_pin_is_never_in_the_uri(
    tmp_path: Path, token: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys" / "FRA"  # its signing key: "FRA-signing" of the first test, or new
    now = datetime.datetime.now(datetime.UTC)
    init_node_keys(
        keys, NodeId("FRA"), url="wss://127.0.0.1:7000", now=now, signing_uri=uri("FRA-signing")
    )

    loaded = load_node_keys(keys, NodeId("FRA"), signing_uri=uri("FRA-signing"))
    signature = loaded.signing.sign(b"cpn")
    loaded.signing.verify_key().verify(signature, b"cpn")
    with pytest.raises(KeyFileError, match="pin-value"):
        Pkcs11Uri.parse(uri("x") + f"&pin-value={PIN}")
    with pytest.raises(KeyFileError, match="no one Ed25519 key"):
        open_signing_key(uri("nobody"))
    init_node_keys(
        tmp_path / "other",
        NodeId("FRA"),
        url="wss://127.0.0.1:7000",
        now=now,
        signing_uri=uri("other-signing"),
    )
    with pytest.raises(KeyFileError, match=r"card\.json does not match"):
        load_node_keys(keys, NodeId("FRA"), signing_uri=uri("other-signing"))
    monkeypatch.delenv("CPN_PKCS11_PIN")
    with pytest.raises(KeyFileError, match="CPN_PKCS11_PIN"):
        open_signing_key(uri("FRA-signing"))
