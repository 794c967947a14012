"""deploy/: the systemd unit passes `systemd-analyze verify` with no warning and keeps its
exposure low, and a node under a service manager says it is ready and feeds its watchdog
(sd_notify, network/node/notify.py)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from network.core.errors import ConfigError
from network.node.config import load_config
from network.node.notify import Notifier
from network.samples import sample_body
from tests.harness import Network, wait_for

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "cpn-node@.service"


def instance(tmp_path: Path) -> Path:
    """The unit as an instance, its ExecStart pointing at this checkout's `cpn` (verify
    checks that the command exists)."""
    cpn = Path(sys.executable).parent / "cpn"
    unit = tmp_path / "cpn-node@FRA.service"
    unit.write_text(UNIT.read_text().replace("/opt/cpn/bin/cpn", str(cpn)))
    return unit


def test_every_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    cpn = Path(sys.executable).parent / "cpn"
    units = []
    for unit in sorted((REPO / "deploy").glob("*@.*")):  # the node, the backup and its timer
        instance = tmp_path / unit.name.replace("@.", "@FRA.")
        instance.write_text(unit.read_text().replace("/opt/cpn/bin/cpn", str(cpn)))
        units.append(str(instance))
    verified = subprocess.run(
        ["systemd-analyze", "verify", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert len(units) == 3
    assert verified.returncode == 0 and verified.stdout + verified.stderr == "", verified.stderr


def test_the_unit_exposure_is_low(tmp_path: Path) -> None:
    analysed = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(instance(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", analysed.stdout)

    assert found is not None, analysed.stdout + analysed.stderr
    print(f"systemd-analyze security: exposure {found.group(1)} (0 best, 10 worst)")
    assert float(found.group(1)) <= 2.0  # "OK" in systemd's words; docs quote the figure


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[socket.socket]:
    """A service manager's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def test_a_node_says_it_is_ready_feeds_its_watchdog_and_says_it_stops(
    tmp_path: Path, manager: socket.socket
) -> None:
    network = Network(tmp_path / "net", {"FRA": []})
    heard: list[str] = []

    def hear(state: str) -> bool:
        """Take what the node sent since; whether `state` is among all it sent."""
        with contextlib.suppress(TimeoutError):
            heard.extend(manager.recv(4096).decode().split("\n"))
        return state in heard

    try:
        environment = {"NOTIFY_SOCKET": manager.getsockname(), "WATCHDOG_USEC": "400000"}
        network.start("FRA", env=environment)
        wait_for(lambda: hear("READY=1"), what="READY=1")
        wait_for(
            lambda: hear("WATCHDOG=1") and heard.count("WATCHDOG=1") >= 3, what="the watchdog fed"
        )
        network.stop("FRA")
        wait_for(lambda: hear("STOPPING=1"), what="STOPPING=1")
    finally:
        network.close()

    assert heard.index("READY=1") < heard.index("WATCHDOG=1") < heard.index("STOPPING=1")


def test_the_notification_variables_are_read_once_and_checked() -> None:
    environ = {"NOTIFY_SOCKET": "@cpn-test", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}

    notifier = Notifier.from_environ(environ, pid=42)

    assert notifier is not None and notifier.watchdog_seconds == 30
    assert notifier.address == "\0cpn-test" and environ == {}  # nothing a child inherits
    notifier.close()
    other = Notifier.from_environ(
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "7"}, pid=42
    )
    assert other is not None and other.watchdog_seconds is None  # meant for another process
    other.close()
    assert Notifier.from_environ({}, pid=42) is None
    with pytest.raises(ConfigError, match="WATCHDOG_USEC"):
        Notifier.from_environ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"}, pid=42)
    with pytest.raises(ConfigError, match="NOTIFY_SOCKET"):
        Notifier.from_environ({"NOTIFY_SOCKET": "relative"}, pid=42)


def test_every_metric_the_alert_rules_and_the_dashboard_use_is_exported(tmp_path: Path) -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "cpn-rules.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((REPO / "deploy" / "grafana" / "cpn-dashboard.json").read_text())
    exprs = [rule["expr"] for rule in alerts]
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    # Counters are exported as NAME and scraped as NAME_total; histograms as NAME_bucket.
    used = {
        re.sub(r"_(total|bucket)$", "", name)
        for e in exprs
        for name in re.findall(r"\bcpn_[a-z_]+", e)
    }
    network = Network(tmp_path / "net", {"FRA": []})
    try:
        network.start("FRA")
        assert network.api("FRA", "GET", "/api/audit/verify", token="auditor")[0] == 200
        exported = set(re.findall(r"^# TYPE (cpn_[a-z_]+)", network.metrics("FRA"), re.MULTILINE))
    finally:
        network.close()

    assert {rule["alert"] for rule in alerts} >= {
        "CpnNodeDown",
        "CpnLinkDown",
        "CpnQueueGrowing",
        "CpnOverdue",
        "CpnCheckpointNotWitnessed",
        "CpnAuditVerifyFailed",
        "CpnDiskNearlyFull",
        "CpnRosterExpiring",
        "CpnCertificateExpiring",
        "CpnLoopLate",
    }
    exported = {name.removesuffix("_total") for name in exported}
    assert used and used <= exported, used - exported


def test_json_logs_are_one_object_per_line_without_bodies_or_tokens(tmp_path: Path) -> None:
    network = Network(tmp_path / "net", {"FRA": ["DEU"], "DEU": ["FRA"]})
    for node in ("FRA", "DEU"):
        config = network.nodes[node].config
        config.write_text(config.read_text() + '\n[log]\nformat = "json"\n')
    body = sample_body("emergency")
    try:
        network.start("DEU", "FRA")
        sent = network.send("FRA", "DEU", "emergency", body)
        network.wait_state("FRA", sent, {"delivered"})
        network.stop("FRA")
    finally:
        network.close()
    text = network.nodes["FRA"].log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]

    assert lines and all(
        set(line) >= {"time", "level", "logger", "node", "message"} for line in lines
    )
    assert {line["node"] for line in lines} == {"FRA"}
    assert any("linked with DEU" in line["message"] for line in lines)
    assert body["summary"] not in text and body["risk"] not in text
    assert not any(token in text for token in network.nodes["FRA"].tokens.values())


def test_an_unknown_log_format_is_refused_naming_the_key(tmp_path: Path) -> None:
    network = Network(tmp_path / "net", {"FRA": []})
    config = network.nodes["FRA"].config
    config.write_text(config.read_text() + '\n[log]\nformat = "xml"\n')

    with pytest.raises(ConfigError, match=r"log\.format"):
        load_config(config)
