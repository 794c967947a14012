"""Four eyes (issue 21, item 4), on real nodes: where the node's config says so, a request
composed by one officer waits in `awaiting_approval` (not sent, no deadline running) until
a second officer with the `approver` role approves it, or sends it back with a reason; a
flash request goes at once and is approved afterwards; the composer cannot approve their
own; every step is audited, in the timeline and in the evidence package.

FRA requires approval of preservations (and of flash ones, after sending); DEU does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, expect

from network.cli.client import Client
from network.core.attachments import AttachmentFile
from network.core.errors import ApiError, ConfigError
from network.core.records import b64decode
from network.node.config import load_config
from network.samples import sample_body
from tests.harness import Network, cpn, rows, wait_for
from tests.test_config import config_text, write
from tests.test_console import Console, browser  # noqa: F401 (the browser fixture)
from tests.test_console import context as context  # the page fixture

pytestmark = pytest.mark.timeout(240)

APPROVAL = '[approval]\ntypes = ["preservation", "emergency"]\nflash = "after"\n'


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[approval]\ntypes = ["response"]', "approval.types: 'response' is not a request"),
        ('[approval]\ntypes = ["preservation"]\nflash = "never"', "approval.flash"),
        ("[approval]\ntypes = []", "approval.types: name at least one"),
        ('[approval]\nkinds = ["preservation"]', "approval.kinds: unknown key"),
    ],
)
def test_a_bad_approval_policy_is_refused_by_name(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(write(tmp_path, config_text() + text))


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("approval")
    network = Network(tmp, {"FRA": ["DEU"], "DEU": []}, extra_config={"FRA": APPROVAL})
    for name in ("approver-FRA", "second-FRA"):
        network.add_user("FRA", name, "approver")
    network.nodes["FRA"].tokens["approver"] = network.nodes["FRA"].tokens["approver-FRA"]
    try:
        network.start("DEU", "FRA")
        yield network
    finally:
        network.close()


def _message(network: Network, node: str, message_id: str, token: str = "officer") -> Any:
    status, message = network.api(node, "GET", f"/api/messages/{message_id}", token=token)
    assert status == 200, message
    return message


def test_a_request_waits_for_a_second_officer_then_goes(network: Network) -> None:
    request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    held = _message(network, "FRA", request)
    assert (held["state"], held["approval"]) == ("awaiting_approval", "pending")
    assert held["deadlines"] == {"receipt": None, "acknowledgement": None, "response": None}
    status, listed = network.api("FRA", "GET", "/api/approvals", token="approver-FRA")
    assert status == 200 and request in [m["id"] for m in listed["messages"]]
    # Nothing left: DEU has not heard of it.
    assert network.api("DEU", "GET", f"/api/messages/{request}")[0] == 404

    # The officer who composed it, or an officer without the role, cannot approve it.
    status, refused = network.api("FRA", "POST", f"/api/messages/{request}/approve", {})
    assert status == 403, refused
    status, approved = network.api(
        "FRA",
        "POST",
        f"/api/messages/{request}/approve",
        {"note": "Checked: Art. 29 met."},
        token="approver-FRA",
    )
    assert status == 200, approved
    assert approved["approval"] == "approved" and approved["approved_by"] == "approver-FRA"
    network.wait_state("FRA", request, {"delivered"})
    delivered = _message(network, "FRA", request)
    assert delivered["deadlines"]["acknowledgement"] is not None  # running from approval
    steps = [s["action"] for s in delivered["timeline"]]
    assert steps.index("awaiting_approval") < steps.index("approved") < steps.index("queued")
    approved_entry = next(s for s in delivered["timeline"] if s["action"] == "approved")
    assert approved_entry["actor"] == "approver-FRA"
    assert approved_entry["detail"]["composed_by"] == "officer-FRA"
    # Approving twice is refused by name.
    status, again = network.api(
        "FRA", "POST", f"/api/messages/{request}/approve", {}, token="approver-FRA"
    )
    assert (status, again.get("field")) == (400, "approval")


def test_the_composer_cannot_approve_their_own(network: Network) -> None:
    token = network.nodes["FRA"].tokens["second-FRA"]  # an approver composing
    status, sent = network.api(
        "FRA",
        "POST",
        "/api/messages",
        {
            "to": "DEU",
            "type": "preservation",
            "priority": "urgent",
            "body": sample_body("preservation"),
        },
        token=token,
    )
    assert status == 202, sent
    status, refused = network.api(
        "FRA", "POST", f"/api/messages/{sent['id']}/approve", {}, token="second-FRA"
    )
    assert (status, refused["field"]) == (400, "approver")
    assert "composed it" in refused["error"]
    status, approved = network.api(
        "FRA", "POST", f"/api/messages/{sent['id']}/approve", {}, token="approver-FRA"
    )
    assert status == 200, approved


def test_a_request_sent_back_never_leaves(network: Network) -> None:
    request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    status, refused = network.api(
        "FRA", "POST", f"/api/messages/{request}/send-back", {}, token="approver-FRA"
    )
    assert (status, refused["field"]) == (400, "reason")
    status, back = network.api(
        "FRA",
        "POST",
        f"/api/messages/{request}/send-back",
        {"reason": "The period is not justified: say why 90 days."},
        token="approver-FRA",
    )
    assert status == 200, back
    assert (back["state"], back["approval"]) == ("sent_back", "sent_back")
    entry = rows(
        network.nodes["FRA"].store,
        "SELECT actor, detail FROM audit WHERE action = 'sent_back' AND message_id = ?",
        (request,),
    )
    assert entry[0][0] == "approver-FRA"
    assert json.loads(entry[0][1])["reason"].startswith("The period")
    status, late = network.api(
        "FRA", "POST", f"/api/messages/{request}/approve", {}, token="approver-FRA"
    )
    assert (status, late["field"]) == (400, "approval")
    assert network.api("DEU", "GET", f"/api/messages/{request}")[0] == 404


def test_a_flash_request_goes_at_once_and_is_approved_after(network: Network) -> None:
    emergency = network.send("FRA", "DEU", "emergency", sample_body("emergency"), priority="flash")
    network.wait_state("FRA", emergency, {"delivered"})
    sent = _message(network, "FRA", emergency)
    assert sent["approval"] == "pending"
    # Sending back what already went is refused: a follow-up withdraws it.
    status, refused = network.api(
        "FRA",
        "POST",
        f"/api/messages/{emergency}/send-back",
        {"reason": "x"},
        token="approver-FRA",
    )
    assert (status, refused["field"]) == (400, "approval")
    assert "follow it up" in refused["error"]
    status, approved = network.api(
        "FRA", "POST", f"/api/messages/{emergency}/approve", {}, token="approver-FRA"
    )
    assert status == 200 and approved["approval"] == "approved"
    assert approved["state"] == "delivered"  # approving moved nothing
    detail = rows(
        network.nodes["FRA"].store,
        "SELECT detail FROM audit WHERE action = 'approved' AND message_id = ?",
        (emergency,),
    )
    assert json.loads(detail[0][0])["after_sending"] is True


def test_what_needs_no_approval_goes_as_before(network: Network) -> None:
    advice = network.send("FRA", "DEU", "technical_advice", sample_body("technical_advice"))
    network.wait_state("FRA", advice, {"delivered"})
    assert _message(network, "FRA", advice)["approval"] is None
    mirror = network.send("DEU", "FRA", "preservation", sample_body("preservation"))
    network.wait_state("DEU", mirror, {"delivered"})  # DEU requires none


def test_the_approval_is_in_the_evidence_package(network: Network, tmp_path: Path) -> None:
    request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    status, _ = network.api(
        "FRA", "POST", f"/api/messages/{request}/approve", {}, token="approver-FRA"
    )
    assert status == 200
    network.wait_state("FRA", request, {"delivered"})

    def proven() -> dict[str, Any] | None:  # once a signed checkpoint covers the entries
        status, package = network.api(
            "FRA", "GET", f"/api/messages/{request}/evidence", token="auditor"
        )
        assert status == 200, package
        entries = package["audit"]["entries"]
        actions = [json.loads(b64decode(e["entry"]))["action"] for e in entries]
        return package if "approved" in actions else None

    package = wait_for(proven, timeout=90, what="a checkpoint covering the approval", poll=1)
    (tmp_path / "p.json").write_text(json.dumps(package))
    checked = cpn("evidence", "verify", str(tmp_path / "p.json"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "'approved' by approver-FRA" in checked.stdout


def test_an_approver_works_from_the_command_line(network: Network) -> None:
    first = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    second = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    env = network.cli_env("FRA", "approver-FRA")
    listed = cpn("approvals", env=env)
    approved = cpn("approve", first, "--note", "Checked.", env=env)
    back = cpn("send-back", second, "--reason", "Name the provider.", env=env)
    again = cpn("approve", second, env=env)
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout and second in listed.stdout and "officer-FRA" in listed.stdout
    assert approved.returncode == 0 and "approved by approver-FRA" in approved.stdout
    assert back.returncode == 0 and "sent back to officer-FRA" in back.stdout
    assert again.returncode != 0 and "sent back already" in again.stderr
    network.wait_state("FRA", first, {"delivered"})


def test_an_approver_approves_in_the_console(network: Network, context: BrowserContext) -> None:
    request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    approver = Console(context, network, "FRA", "approver")
    approver.page.click("#nav >> text=Approvals")
    row = approver.page.locator(f'table.approvals tr[data-id="{request}"]')
    expect(row).to_contain_text("awaiting_approval")
    row.click()
    expect(approver.page.locator(".card.approval")).to_contain_text("Composed by officer-FRA")
    approver.page.fill("#approval-text", "Checked against Art. 29.")
    approver.page.click(".card.approval button.primary")
    expect(approver.state()).not_to_have_text("awaiting_approval")
    network.wait_state("FRA", request, {"delivered"})
    timeline = approver.page.locator('[data-action="approved"]')
    expect(timeline).to_contain_text("approver-FRA")
    # The officer who composed one sees it held, and no Approve button.
    held = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    officer = Console(context, network, "FRA", "officer")
    officer.page.evaluate(f"location.hash = '#/message/{held}'")
    expect(officer.state()).to_contain_text("awaiting_approval")
    expect(officer.page.locator(".card.approval")).to_have_count(0)
    approver.check_clean()
    officer.check_clean()


def test_a_held_requests_files_wait_with_it_and_go_with_it(network: Network) -> None:
    fra = Client(network.nodes["FRA"].api, network.nodes["FRA"].tokens["officer"])
    order = b"%PDF-1.7\n" + bytes(100_000)  # three parts
    request = {
        "to": "DEU",
        "type": "preservation",
        "priority": "urgent",
        "body": sample_body("preservation"),
    }
    sent = fra.send(request, [AttachmentFile("order.pdf", "application/pdf", order)])
    states = rows(
        network.nodes["FRA"].store,
        "SELECT DISTINCT state FROM messages WHERE in_reply_to = ? AND attachment IS NOT NULL",
        (sent["id"],),
    )
    assert states == [("awaiting_approval",)]
    status, _ = network.api(
        "FRA", "POST", f"/api/messages/{sent['id']}/approve", {}, token="approver-FRA"
    )
    assert status == 200
    deu = Client(network.nodes["DEU"].api, network.nodes["DEU"].tokens["officer"])

    def joined() -> bytes | None:
        try:
            return deu.attachment(sent["id"], 0)[1]
        except ApiError:
            return None  # not here yet (404), or its parts on their way (409)

    assert wait_for(joined, what="the file at DEU") == order
