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

from network.cli.commands import build_parser, joined_key_ids
from tests.harness import Network, free_port, rows, wait_for

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
    assert "cpn keys rotate FRA" in again.stderr


def test_keys_init_refuses_a_bad_id(tmp_path: Path) -> None:
    result = cpn("keys", "init", "FRANCE", cwd=tmp_path, ok=False)

    assert result.returncode == 2
    assert "not an ISO 3166-1 alpha-3 code" in result.stderr


def test_keys_rotate_then_purge_a_retired_key_no_message_needs(tmp_path: Path) -> None:
    first = json.loads(cpn("keys", "init", "FRA", "--suite", "x25519", cwd=tmp_path).stdout)
    config = tmp_path / "FRA.toml"
    config.write_text(
        'id = "FRA"\n[peer]\nlisten = "127.0.0.1:7101"\n[api]\nlisten = "127.0.0.1:8101"\n'
        '[store]\npath = "fra.sqlite"\n[keys]\ndir = "keys/FRA"\nroster = "keys/roster.json"\n'
        'keeper = "keys/authority/keeper.json"\n'
    )
    kid = first["hpke_key"]["kid"]

    without_store = cpn("keys", "rotate", "FRA", "--purge", kid, cwd=tmp_path, ok=False)
    rotated = cpn("keys", "rotate", "FRA", "--config", str(config), cwd=tmp_path)
    unknown = cpn(
        "keys", "rotate", "FRA", "--config", str(config), "--purge", "nope", cwd=tmp_path, ok=False
    )
    purged = cpn("keys", "rotate", "FRA", "--config", str(config), "--purge", kid, cwd=tmp_path)

    assert without_store.returncode == 2 and "--purge needs --config" in without_store.stderr
    assert json.loads(rotated.stdout)["hpke_key"]["kid"] != kid
    assert "register keeper" in rotated.stderr
    assert (
        unknown.returncode == 2
        and f"not a retired key of this node (retired: {kid})" in unknown.stderr
    )
    assert "no stored message needed it" in purged.stdout
    assert not (tmp_path / "keys" / "FRA" / "retired" / kid).exists()
    actions = rows(tmp_path / "fra.sqlite", "SELECT action, detail FROM audit")
    assert [a for a, _ in actions] == ["keys_rotated", "key_purged"]
    assert kid in actions[1][1]


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
    cpn("keys", "rotate", "FRA", cwd=demo)
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


def test_user_list_shows_names_and_revoke_cuts_a_token_off_at_once(tmp_path: Path) -> None:
    net = Network(tmp_path, {"FRA": []})
    try:
        net.start("FRA")
        config = str(net.nodes["FRA"].config)
        added = cpn(
            "user", "add", "bob", "--token", "--role", "officer", "--config", config, cwd=tmp_path
        )
        token = added.stdout.split()[-1]
        before = net.api("FRA", "GET", "/api/peers", token=token)[0]

        listed = cpn("user", "list", "--config", config, "--json", cwd=tmp_path)
        revoked = cpn("user", "revoke", "bob", "--config", config, cwd=tmp_path)
        after = net.api("FRA", "GET", "/api/peers", token=token)[0]
        again = cpn("user", "revoke", "bob", "--config", config, cwd=tmp_path, ok=False)
        listed_after = cpn("user", "list", "--config", config, cwd=tmp_path)
        entries = rows(
            net.nodes["FRA"].store, "SELECT actor, detail FROM audit WHERE action = 'token_revoked'"
        )
    finally:
        net.close()

    assert before == 200
    users = json.loads(listed.stdout)
    assert {(u["name"], u["role"]) for u in users} >= {("bob", "officer")}
    assert token not in listed.stdout and "token" not in listed.stdout
    assert "revoked officer bob" in revoked.stdout
    assert after == 401
    assert again.returncode == 2 and "name: no user 'bob'" in again.stderr
    assert "bob" not in listed_after.stdout
    assert len(entries) == 1 and json.loads(entries[0][1]) == {"user": "bob", "role": "officer"}
    assert entries[0][0].startswith("admin:")


def test_a_key_id_beginning_with_a_dash_is_taken_as_the_value() -> None:
    # A key id is base64url: one in 64 begins with "-", which argparse took for an option
    # (`cpn keys rotate FRA --purge -laKa4LzFbbjKTaV` failed: seen in CI, a flaky test).
    argv = ["keys", "rotate", "FRA", "--purge", "-laKa4LzFbbjKTaV"]

    args = build_parser().parse_args(joined_key_ids(argv))

    assert args.purge == "-laKa4LzFbbjKTaV" and args.id == "FRA"
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)  # what argparse alone does with it
