"""The wheel, installed into a fresh venv outside the repository, runs two nodes.

Exactly what an operator does (issue 17, item 1): build the wheel, `pip install` it,
`cpn node init` each node's data folder, have the register keeper sign a roster from
the cards (`cpn roster build`), run the nodes with `cpn node run`, and send a message
from one to the other through the API. No source tree on any path.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from network.samples import sample_body
from tests.harness import free_port, run, wait_for

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_builds_without_packaging_warnings(installed: tuple[Path, str]) -> None:
    _, log = installed
    lowered = log.lower()
    assert "would be ignored" not in lowered and "not in packages" not in lowered, log
    assert "deprecat" not in lowered, log


def test_an_installed_wheel_runs_two_nodes_from_their_data_folders(
    installed: tuple[Path, str], tmp_path: Path
) -> None:
    venv, _ = installed
    cpn = venv / "bin" / "cpn"
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "COLUMNS": "200",
    }
    where = run(
        venv / "bin" / "python",
        "-c",
        "import network; print(network.__file__)",
        cwd=tmp_path,
        env=env,
    )
    assert str(venv) in where and str(REPO) not in where  # the installed copy, not ours
    ports = {node: (free_port(), free_port(), free_port()) for node in ("FRA", "DEU")}
    for node, (peer, api, metrics) in ports.items():
        run(
            cpn,
            "node",
            "init",
            node,
            "--data",
            tmp_path / node,
            "--listen",
            f"127.0.0.1:{peer}",
            "--url",
            f"wss://127.0.0.1:{peer}",
            "--api-listen",
            f"127.0.0.1:{api}",
            "--metrics-listen",
            f"127.0.0.1:{metrics}",
            cwd=tmp_path,
            env=env,
        )
        assert oct((tmp_path / node / "keys" / node / "signing.key").stat().st_mode)[-3:] == "600"
        keeper_cards = tmp_path / "keeper" / "keys" / node
        keeper_cards.mkdir(parents=True)
        shutil.copy(tmp_path / node / "keys" / node / "card.json", keeper_cards / "card.json")
    # The register keeper signs the roster from the cards it was sent.
    run(cpn, "roster", "build", "--keys", tmp_path / "keeper" / "keys", cwd=tmp_path, env=env)
    for node in ports:
        shutil.copy(tmp_path / "keeper" / "keys" / "roster.json", tmp_path / node / "roster.json")
        shutil.copy(
            tmp_path / "keeper" / "keys" / "authority" / "keeper.json",
            tmp_path / node / "keeper.json",
        )
    fra_config = tmp_path / "FRA" / "node.toml"
    fra_config.write_text(fra_config.read_text().replace("peers = []", 'peers = ["DEU"]'))
    token = run(
        cpn,
        "user",
        "add",
        "olivia",
        "--token",  # a machine user: the script below calls the API with it
        "--role",
        "officer",
        "--config",
        fra_config,
        cwd=tmp_path,
        env=env,
    ).split()[-1]
    nodes = [
        subprocess.Popen(
            [cpn, "node", "run", tmp_path / node / "node.toml"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{node}.log").open("wb"),
        )
        for node in ports
    ]
    api = f"http://127.0.0.1:{ports['FRA'][1]}"

    def call(method: str, path: str, body: object = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(api + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except (urllib.error.URLError, ConnectionError) as error:
            code = error.code if isinstance(error, urllib.error.HTTPError) else 0
            return code, None

    try:
        wait_for(lambda: call("GET", "/api/peers")[0] == 200, what="FRA's API up")
        message = {"to": "DEU", "type": "emergency", "priority": "flash"}
        status, sent = call("POST", "/api/messages", {**message, "body": sample_body("emergency")})
        assert status == 202, sent
        assert isinstance(sent, dict)

        def delivered() -> bool:
            _status, listing = call("GET", "/api/messages?box=out")
            assert isinstance(listing, dict)
            return any(
                m["id"] == sent["id"] and m["state"] == "delivered" for m in listing["messages"]
            )

        wait_for(delivered, timeout=60, what="FRA's message delivered to DEU")
    finally:
        for process in nodes:
            process.send_signal(signal.SIGTERM)
        for process in nodes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert [p.returncode for p in nodes] == [0, 0]
    assert (tmp_path / "DEU" / "cpn.sqlite").exists()
