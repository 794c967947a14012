"""`cpn store backup`: an online copy under load, verified, with its manifest."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from network.core.records import b64encode
from network.core.tlog import root_hash
from network.samples import sample_body
from tests.harness import Network, wait_for
from tests.test_cli import CPN

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": ["FRA"]})
    try:
        network.start("DEU", "FRA")
        yield network
    finally:
        network.close()


def backup(network: Network, out: Path) -> subprocess.CompletedProcess[str]:
    config = str(network.nodes["DEU"].config)
    return subprocess.run(
        [CPN, "store", "backup", str(out), "--config", config],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_backup_taken_under_load_verifies_and_its_manifest_names_its_log(
    net: Network, tmp_path: Path
) -> None:
    sent: list[str] = []
    stop = threading.Event()

    def load() -> None:  # FRA keeps sending to DEU while the backup is taken
        while not stop.is_set() and len(sent) < 300:
            sent.append(net.send("FRA", "DEU", "emergency", sample_body("emergency")))

    sender = threading.Thread(target=load)
    sender.start()
    try:
        wait_for(lambda: len(sent) >= 20, what="the load under way")
        out = tmp_path / "DEU-backup.sqlite"
        made = backup(net, out)
        during = len(sent)
    finally:
        stop.set()
        sender.join(timeout=60)

    assert made.returncode == 0, made.stderr
    manifest = json.loads((tmp_path / "DEU-backup.sqlite.manifest.json").read_text())
    assert manifest["node"] == "DEU" and manifest["verified"]["ok"] is True
    assert 0 < manifest["messages"] <= during and manifest["audit_size"] > 0
    # The backup's log is a prefix of the live log: the live tree at that size has its root.
    live = sqlite3.connect(f"{net.nodes['DEU'].store.resolve().as_uri()}?mode=ro", uri=True)
    try:
        leaves = [leaf for (leaf,) in live.execute("SELECT leaf FROM audit ORDER BY seq")]
    finally:
        live.close()
    assert len(leaves) >= manifest["audit_size"]
    assert b64encode(root_hash(leaves[: manifest["audit_size"]])) == manifest["audit_root"]
    assert not list(tmp_path.glob("*.partial"))


def test_a_backup_never_overwrites_a_file(net: Network, tmp_path: Path) -> None:
    out = tmp_path / "taken.sqlite"
    out.write_bytes(b"last night's backup")

    refused = backup(net, out)

    assert refused.returncode == 2 and "exists" in refused.stderr
    assert out.read_bytes() == b"last night's backup"
