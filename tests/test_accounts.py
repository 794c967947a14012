"""Accounts an administrator runs (issue 21, item 5): list, disable, enable, change a role,
and read each account's audit trail, by command and by the API; on a real node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from network.samples import sample_body
from tests.harness import Network, cpn

pytestmark = pytest.mark.timeout(180)


def test_an_administrator_disables_enables_and_changes_accounts(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    config = str(network.nodes["FRA"].config)
    made = cpn("user", "add", "chief", "--token", "--role", "admin", "--config", config)
    assert made.returncode == 0, made.stderr
    boss = made.stdout.strip().splitlines()[-1]
    try:
        network.start("FRA")
        network.send("FRA", "DEU", "locate", sample_body("locate"))  # the officer's own trail
        status, listed = network.api("FRA", "GET", "/api/users", token=boss)
        forbidden = network.api("FRA", "GET", "/api/users")[0]  # an officer's token
        off = network.api("FRA", "POST", "/api/users/officer-FRA", {"disabled": True}, token=boss)
        refused = network.api("FRA", "GET", "/api/me")[0]
        network.api("FRA", "POST", "/api/users/officer-FRA", {"disabled": False}, token=boss)
        back = network.api("FRA", "GET", "/api/me")
        network.api("FRA", "POST", "/api/users/officer-FRA", {"role": "auditor"}, token=boss)
        demoted = network.api("FRA", "GET", "/api/me")[1]
        self_off = network.api("FRA", "POST", "/api/users/chief", {"disabled": True}, token=boss)
        unknown = network.api("FRA", "POST", "/api/users/nobody", {"role": "admin"}, token=boss)
        # The command line, while the node runs: the next request with the token gets 401.
        by_command = cpn("user", "disable", "auditor-FRA", "--config", config)
        auditor_refused = network.api("FRA", "GET", "/api/me", token="auditor")[0]
        trail = network.api("FRA", "GET", "/api/users/officer-FRA/audit", token=boss)[1]
    finally:
        network.close()
    listing = cpn("user", "list", "--config", config, "--json")
    command_trail = cpn("user", "audit", "auditor-FRA", "--config", config)

    assert status == 200 and {u["name"] for u in listed["users"]} >= {"chief", "officer-FRA"}
    assert forbidden == 403
    assert off == (200, {**off[1], "disabled": True}) and refused == 401
    assert back[0] == 200 and back[1]["role"] == "officer"
    assert demoted["role"] == "auditor"
    assert self_off[0] == 400 and self_off[1]["field"] == "name"
    assert unknown[0] == 400 and unknown[1]["field"] == "name"
    assert by_command.returncode == 0 and "disabled" in by_command.stdout
    assert auditor_refused == 401
    actions = [e["action"] for e in trail["entries"]]
    assert actions.index("composed") < actions.index("account_disabled")
    assert actions[-3:] == ["account_disabled", "account_enabled", "role_changed"]
    (changed,) = [e for e in trail["entries"] if e["action"] == "role_changed"]
    assert changed["actor"] == "chief" and changed["detail"]["was"] == "officer"
    disabled = {u["name"]: u["disabled"] for u in json.loads(listing.stdout)}
    assert disabled["auditor-FRA"] is True and disabled["officer-FRA"] is False
    assert "account_disabled" in command_trail.stdout
