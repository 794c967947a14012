"""docs/OPERATIONS.md, run: every command of its `sh` blocks, in order, on this machine.

The runbook cannot rot: each line is run as written, with the machine's folders moved
under a temporary one (/var/lib/cpn, /var/backups/cpn, /srv/keeper, /etc, /opt/cpn: the
last a venv holding the freshly built wheel), ports moved to free loopback ports, and
the few commands that need a service manager or root done the way they would be done:
`systemctl enable --now|start|restart cpn-node@ID` runs the unit's ExecStart (`cpn node
run`) as a child (`stop` ends it), `systemctl enable --now cpn-backup@ID.timer` runs the
backup unit's command once, `curl` is an HTTP request, `useradd` writes the temporary
/etc (`--prefix`), and `install -o cpn -g cpn` makes the folders for the test's own user.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.harness import free_port, wait_for

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent
RUNBOOK = REPO / "docs" / "OPERATIONS.md"
MOVED = ("/var/lib/cpn", "/var/backups/cpn", "/srv/keeper", "/etc/systemd/system", "/opt/cpn")


def commands() -> list[str]:
    """Every line of the runbook's `sh` blocks, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", RUNBOOK.read_text(), re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


class Machine:
    """The temporary machine the runbook is run on."""

    def __init__(self, root: Path, venv: Path) -> None:
        self.root = root
        self.venv = venv
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.peer_port = free_port()
        self.env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(root),
            "COLUMNS": "200",
        }
        (root / "etc" / "systemd" / "system").mkdir(parents=True)  # as on any systemd machine
        for name in ("passwd", "group", "shadow", "gshadow"):
            (root / "etc" / name).touch()
        # What section 2 installs from: the wheel and the unit files, in the working folder.
        for unit in (REPO / "deploy").glob("*@.*"):
            shutil.copy(unit, root / unit.name)
        [wheel] = (venv.parent / "dist").glob("cpn-*.whl")
        shutil.copy(wheel, root / "cpn-0.1.0-py3-none-any.whl")

    def path(self, text: str) -> str:
        for folder in MOVED:
            target = self.venv if folder == "/opt/cpn" else self.root / folder.lstrip("/")
            text = text.replace(folder, str(target))
        return text.replace("0.0.0.0:7000", f"127.0.0.1:{self.peer_port}").replace(
            "127.0.0.1:8100", f"127.0.0.1:{self.api_port}"
        )

    def run(self, line: str) -> str:
        words = shlex.split(self.path(line))
        if words[0] == "useradd":
            words[1:1] = ["--prefix", str(self.root)]
        if words[0] == "install":  # the folders for this test's user, not the cpn user
            kept: list[str] = []
            skip = False
            for word in words:
                if skip or word in ("-o", "-g"):
                    skip = not skip
                    continue
                kept.append(word)
            words = kept
        done = subprocess.run(
            words,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        if words[:3] == ["cpn", "node", "init"]:  # loopback ports this test owns
            config = Path(words[words.index("--data") + 1]) / "node.toml"
            config.write_text(
                config.read_text()
                .replace("127.0.0.1:8100", f"127.0.0.1:{self.api_port}")
                .replace("127.0.0.1:9100", f"127.0.0.1:{self.metrics_port}")
            )
        return done.stdout

    def systemctl(self, line: str) -> None:
        words = shlex.split(line)
        unit = words[-1]
        template = re.sub(r"@[A-Z]{3}\.", "@.", unit if "." in unit else unit + ".service")
        assert (self.root / "etc" / "systemd" / "system" / template).exists(), template
        node = re.search(r"@([A-Z]{3})", unit)
        assert node is not None
        if unit.startswith("cpn-backup@"):  # the timer's job, once
            out = self.path(f"/var/backups/cpn/{node[1]}/{node[1]}-nightly.sqlite")
            self.run(f"cpn store backup {out} --config /var/lib/cpn/{node[1]}/node.toml")
            return
        if words[1] in ("restart", "stop"):
            self.stop(node[1])
        if words[1] != "stop":
            self.start(node[1])

    def start(self, node: str) -> None:
        config = self.path(f"/var/lib/cpn/{node}/node.toml")
        self.nodes[node] = subprocess.Popen(
            [str(self.venv / "bin" / "cpn"), "node", "run", config],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / f"{node}.log").open("ab"),
        )

    def stop(self, node: str) -> None:
        process = self.nodes.pop(node)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0

    def curl(self, line: str) -> None:
        url = self.path(shlex.split(line)[-1])

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.status == 200 and b'"status": "ok"' in response.read()
            except OSError:
                return False

        wait_for(answers, what=url)


def test_every_command_of_the_runbook_runs(
    installed: tuple[Path, str],
    tmp_path: Path,
) -> None:
    venv, _ = installed
    machine = Machine(tmp_path, venv)
    lines = commands()
    try:
        for line in lines:
            if line.startswith("systemctl "):
                machine.systemctl(line)
            elif line.startswith("curl "):
                machine.curl(line)
            elif line.startswith("python3.11 -m venv"):
                assert (venv / "bin" / "python").exists()  # made by the fixture, from this line
            else:
                machine.run(line)
    finally:
        for node in list(machine.nodes):
            machine.stop(node)

    assert len(lines) >= 25 and all(
        line.split()[0]
        in {"useradd", "python3.11", "install", "cpn", "mkdir", "cp", "systemctl", "curl"}
        or "/bin/" in line.split()[0]
        for line in lines
    )
    assert list((tmp_path / "var" / "backups" / "cpn" / "FRA").glob("*.manifest.json"))
    assert list((tmp_path / "var" / "lib" / "cpn" / "FRA").glob("*.replaced-*"))  # restored
    assert "cpn:x:" in (tmp_path / "etc" / "passwd").read_text()
