"""The installed `cpn` command, run as a subprocess on real files."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.harness import free_port, wait_for

CPN = str(Path(sys.executable).parent / "cpn")
REPO = Path(__file__).resolve().parent.parent


def cpn(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [CPN, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A copy of the demo node configs, with a fresh keys folder beside them."""
    shutil.copytree(REPO / "nodes", tmp_path / "nodes")
    return tmp_path


def test_keys_init_prints_the_card_and_refuses_to_overwrite(tmp_path: Path) -> None:
    first = cpn("keys", "init", "fra", "--url", "wss://127.0.0.1:7101", cwd=tmp_path)

    card = json.loads(first.stdout)
    assert card["id"] == "FRA"
    assert card["name"] == "France"
    assert card["hpke_key"]["suite"].startswith("MLKEM768-X25519")
    again = cpn("keys", "init", "FRA", cwd=tmp_path, ok=False)
    assert again.returncode == 2
    assert "exists; use --force" in again.stderr


def test_keys_init_refuses_a_bad_id(tmp_path: Path) -> None:
    result = cpn("keys", "init", "FRANCE", cwd=tmp_path, ok=False)

    assert result.returncode == 2
    assert "not an ISO 3166-1 alpha-3 code" in result.stderr


def test_roster_build_show_and_revoke(tmp_path: Path) -> None:
    for node_id in ("FRA", "DEU"):
        cpn("keys", "init", node_id, "--suite", "x25519", cwd=tmp_path)

    built = cpn("roster", "build", cwd=tmp_path)
    shown = cpn("roster", "show", cwd=tmp_path)
    revoked = cpn("roster", "build", "--revoke", "DEU", cwd=tmp_path)
    shown_after = cpn("roster", "show", "--json", cwd=tmp_path)

    assert "roster version 1: 2 contact points" in built.stdout
    assert "created the register keeper key" in built.stderr
    assert "valid" in shown.stdout
    assert "FRA" in shown.stdout
    assert "X25519" in shown.stdout
    assert "roster version 2" in revoked.stdout
    doc = json.loads(shown_after.stdout)
    statuses = {e["id"]: e["status"] for e in doc["roster"]["contact_points"]}
    assert statuses == {"DEU": "revoked", "FRA": "active"}


def test_roster_show_names_the_failed_check(tmp_path: Path) -> None:
    cpn("keys", "init", "FRA", cwd=tmp_path)
    cpn("roster", "build", cwd=tmp_path)
    roster = tmp_path / "keys" / "roster.json"
    roster.write_bytes(roster.read_bytes().replace(b"France", b"Frankr"))

    result = cpn("roster", "show", cwd=tmp_path, ok=False)

    assert result.returncode == 2
    assert "roster signature does not verify" in result.stderr


def test_up_creates_keys_and_roster_once_and_resigns_after_rotation(demo: Path) -> None:
    first = cpn("up", "nodes", "--prepare-only", cwd=demo)
    second = cpn("up", "nodes", "--prepare-only", cwd=demo)
    cpn("keys", "init", "FRA", "--force", "--url", "wss://127.0.0.1:7101", cwd=demo)
    third = cpn("up", "--prepare-only", cwd=demo)

    assert first.stdout.count("created keys") == 5
    assert "signed roster version 1 with 5 contact points" in first.stdout
    assert "created keys" not in second.stdout
    assert "signed roster" not in second.stdout
    assert "signed roster version 2" in third.stdout
    for node_id in ("FRA", "DEU", "USA", "BRA", "KEN"):
        assert (demo / "keys" / node_id / "signing.key").stat().st_mode & 0o077 == 0


def test_up_names_the_broken_config(demo: Path) -> None:
    config = demo / "nodes" / "KEN.toml"
    config.write_text(config.read_text().replace("[api]", "[apx]"))

    result = cpn("up", "nodes", "--prepare-only", cwd=demo, ok=False)

    assert result.returncode == 2
    assert "KEN.toml: [api] table is missing" in result.stderr
    assert not (demo / "keys" / "FRA").exists()  # nothing half-made


def test_up_runs_every_node_until_interrupted(demo: Path) -> None:
    ports = {}
    for config in (demo / "nodes").glob("*.toml"):
        text = config.read_text()
        for old in re.findall(r'listen = "127\.0\.0\.1:(\d+)"', text):
            ports[old] = str(free_port())
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{ports[old]}")
        config.write_text(text)
    up = subprocess.Popen([CPN, "up", "nodes"], cwd=demo, stdout=subprocess.PIPE, text=True)
    try:
        api_ports = [p for old, p in ports.items() if old.startswith("81")]
        healthy: set[str] = set()

        def all_healthy() -> bool:
            for port in set(api_ports) - healthy:
                url = f"http://127.0.0.1:{port}/healthz"
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
                    healthy.add(port)
            return len(healthy) == len(api_ports)

        with contextlib.suppress(AssertionError):  # the assertion below says how many
            wait_for(all_healthy, timeout=60, what="every node healthy")
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
    output = up.stdout.read() if up.stdout else ""

    assert len(healthy) == 5
    assert code == 0
    assert output.count("token (shown once)") == 10
    assert "Ctrl-C stops it" in output
    left = subprocess.run(["pgrep", "-f", str(demo / "nodes")], capture_output=True, check=False)
    assert left.stdout == b""


def test_python_dash_m_network_is_cpn(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "network", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert "roster" in result.stdout
    assert "keys" in result.stdout
