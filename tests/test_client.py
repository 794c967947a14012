"""`cpn send`, `inbox`, `show`, `ack`, `reply`: the installed command against two running nodes.

FRA and DEU run once for the module (real processes, TLS, SQLite); each test
sends its own messages. DEU's flash acknowledgement deadline is one second, so
that its inbox has overdue items to mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from network.samples import sample_body
from tests.harness import Network, refusing_port, rows, wait_for
from tests.test_cases import in_days

pytestmark = pytest.mark.timeout(90)

CPN = str(Path(sys.executable).parent / "cpn")

REQUEST_TOML = """\
to = "DEU"
type = "preservation"
priority = "flash"

[body]
case_ref = "OFAC-2026-TOML-1"
language = "en"
summary = "Ransomware operator's mailbox, hosted in Germany."
status = "new"
offence = "Extortion and unauthorised access (Code pénal, Art. 312-1 and 323-1)."
facts = "Ransom notes sent to three hospitals named this mailbox."
necessity = "The provider deletes login records after 30 days."
mla_intended = true
period_days = 90

[body.authority]
organisation = "Police nationale, OFAC"
officer = "Commandante Claire Martin"
phone = "+33 1 99 00 42 17"
email = "permanence-24-7@ofac.interieur.example"
time_zone = "Europe/Paris"

[body.handling]
confidential = true
do_not_notify_subject = true
use_limited_to_investigation = true

[body.data]
description = "Subscriber data and login history of the mailbox."
categories = ["subscriber", "traffic"]

[[body.data.identifiers]]
kind = "email"
value = "payme@locked-files.example"

[[body.data.identifiers]]
kind = "ip_address"
value = "203.0.113.45"
timestamp = 2026-11-20T14:03:00Z
"""


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    fast = '[deadlines.flash]\nreceipt = "1s"\nacknowledgement = "1s"\nresponse = "1h"\n'
    net = Network(
        tmp_path_factory.mktemp("cli"), {"FRA": ["DEU"], "DEU": []}, extra_config={"DEU": fast}
    )
    try:
        net.start("DEU", "FRA")
        yield net
    finally:
        net.close()


def cpn(
    network: Network,
    node: str,
    *args: str,
    role: str = "officer",
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`cpn ARGS` as the officer of `node` (CPN_API and CPN_TOKEN set), from the tmp folder."""
    variables = {
        **os.environ,
        "CPN_API": network.nodes[node].api,
        "CPN_TOKEN": network.nodes[node].tokens[role],
        **(env or {}),
    }
    return subprocess.run(
        [CPN, *args],
        cwd=network.root,
        env=variables,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert not result.stderr, result.stderr
    return result.stdout


def sent_id(stdout: str) -> str:
    """The id in `queued ID: TYPE (PRIORITY) to PEER`."""
    assert stdout.startswith("queued "), stdout
    return stdout.split()[1].rstrip(":")


def outbox_size(network: Network, node: str) -> int:
    count: int = rows(network.nodes[node].store, "SELECT COUNT(*) FROM messages WHERE box='out'")[
        0
    ][0]
    return count


def request(**overrides: Any) -> dict[str, Any]:
    return {
        "to": "DEU",
        "type": "preservation",
        "priority": "urgent",
        "body": sample_body("preservation"),
        **overrides,
    }


def as_assignments(value: Any, path: str = "") -> list[str]:
    """`--set` arguments that rebuild `value`: strings as PATH=TEXT, the rest as PATH:=JSON."""
    if isinstance(value, dict):
        return [
            arg
            for key, item in value.items()
            for arg in as_assignments(item, f"{path}.{key}" if path else key)
        ]
    if isinstance(value, list):
        return [arg for i, item in enumerate(value) for arg in as_assignments(item, f"{path}[{i}]")]
    if isinstance(value, str):
        return ["--set", f"{path}={value}"]
    return ["--set", f"{path}:={json.dumps(value)}"]


def test_send_from_a_json_file_shows_in_the_receivers_inbox(network: Network) -> None:
    draft = network.root / "request.json"
    draft.write_text(json.dumps(request(body=sample_body("preservation", case_ref="JSON-1"))))

    message_id = sent_id(ok(cpn(network, "FRA", "send", "--file", str(draft))))

    network.wait_state("DEU", message_id, {"received"})
    table = ok(cpn(network, "DEU", "inbox"))
    line = next(line for line in table.splitlines() if message_id in line)
    assert "FRA" in line and "preservation" in line and "urgent" in line and "received" in line
    listing = json.loads(ok(cpn(network, "DEU", "inbox", "--json")))
    (found,) = (m for m in listing["messages"] if m["id"] == message_id)
    assert found["from"] == "FRA" and found["state"] == "received"


def test_send_from_a_toml_file_and_from_stdin(network: Network) -> None:
    draft = network.root / "request.toml"
    draft.write_text(REQUEST_TOML, encoding="utf-8")

    from_file = sent_id(ok(cpn(network, "FRA", "send", "--file", str(draft))))
    from_stdin = sent_id(
        ok(cpn(network, "FRA", "send", "--file", "-", "--case-ref", "TOML-2", stdin=REQUEST_TOML))
    )

    shown = json.loads(ok(cpn(network, "FRA", "show", from_file, "--json")))
    assert shown["priority"] == "flash" and shown["to"] == "DEU"
    assert shown["body"]["data"]["identifiers"][1]["timestamp"] == "2026-11-20T14:03:00+00:00"
    assert shown["body"]["period_days"] == 90 and shown["body"]["mla_intended"] is True
    again = json.loads(ok(cpn(network, "FRA", "show", from_stdin, "--json")))
    assert again["body"]["case_ref"] == "TOML-2"


def test_send_from_flags(network: Network) -> None:
    body = sample_body("preservation")

    result = cpn(
        network,
        "FRA",
        "send",
        "--to",
        "deu",
        "--type",
        "preservation",
        "--priority",
        "routine",
        *as_assignments(body),
        "--case-ref",
        "FLAGS-1",
    )

    shown = json.loads(ok(cpn(network, "FRA", "show", sent_id(ok(result)), "--json")))
    assert shown["to"] == "DEU" and shown["priority"] == "routine"
    assert shown["body"] == {**body, "case_ref": "FLAGS-1"}


def test_a_missing_or_wrong_field_fails_before_sending(network: Network) -> None:
    before = outbox_size(network, "FRA")
    body = sample_body("preservation")
    del body["offence"]
    draft = network.root / "incomplete.json"
    draft.write_text(json.dumps(request(body=body)))

    missing = cpn(network, "FRA", "send", "--file", str(draft))
    wrong = cpn(
        network,
        "FRA",
        "send",
        "--file",
        str(draft),
        "--set",
        "offence=Fraud",
        "--set",
        "period_days=90",
    )
    no_recipient = cpn(
        network, "FRA", "send", "--type", "emergency", "--priority", "flash", "--set", "risk=x"
    )
    unreadable = cpn(network, "FRA", "send", "--file", str(network.root / "nowhere.json"))

    assert missing.returncode == 2
    assert missing.stderr.strip() == "cpn: error: body.offence: required field is missing"
    assert wrong.returncode == 2
    assert "body.period_days: must be an integer, got string" in wrong.stderr
    assert no_recipient.returncode == 2 and "cpn: error: to: missing" in no_recipient.stderr
    assert unreadable.returncode == 2 and "nowhere.json: cannot read" in unreadable.stderr
    assert not missing.stdout and not wrong.stdout
    assert outbox_size(network, "FRA") == before


def test_show_ack_and_reply_until_the_sender_sees_it_answered(network: Network) -> None:
    message_id = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    network.wait_state("DEU", message_id, {"received"})
    deu_outbox = outbox_size(network, "DEU")

    shown = ok(cpn(network, "DEU", "show", message_id))
    incomplete = cpn(network, "DEU", "reply", message_id, "--status", "preserved")
    until = in_days(90)  # at least the 60 days of Budapest 29(7)
    acked = ok(cpn(network, "DEU", "ack", message_id, "--note", "Taken on"))
    replied = ok(
        cpn(
            network,
            "DEU",
            "reply",
            message_id,
            "--status",
            "preserved",
            "--preserved-until",
            until,
            "--provider-reference",
            "EMS-LE-2026-55810",
            "--note",
            "All three categories preserved.",
        )
    )

    assert "preservation from FRA, urgent" in shown
    assert "case_ref" in shown and "OFAC-2026-004317" in shown  # the body, decrypted
    assert "data.identifiers[1].value" in shown and "203.0.113.45" in shown
    assert "opened" in shown  # the state, now that an officer has read it
    timeline = shown[shown.index("timeline") :]
    assert "received" in timeline and "digest=" in timeline and "role=officer" in timeline
    assert incomplete.returncode == 2
    assert "cpn: error: preserved_until: required when status is preserved" in incomplete.stderr
    assert acked.startswith(f"acknowledged {message_id}: acknowledgement ")
    assert replied.startswith(f"answered {message_id} (preserved): response ")
    assert outbox_size(network, "DEU") == deu_outbox + 2  # the reply refused here never left
    network.wait_state("FRA", message_id, {"answered"})
    on_fra = ok(cpn(network, "FRA", "show", message_id))
    assert on_fra.splitlines()[1].split() == ["state", "answered"]
    assert f"preserved until  {until}" in on_fra
    assert "acknowledgement" in on_fra and "response" in on_fra  # the thread
    detail = json.loads(ok(cpn(network, "FRA", "show", message_id, "--json")))
    assert detail["state"] == "answered" and detail["preserved_until"] is not None
    assert {m["type"] for m in detail["thread"]} == {"acknowledgement", "response"}


def test_inbox_marks_overdue_and_lists_what_was_sent(network: Network) -> None:
    late = network.send("FRA", "DEU", "emergency", sample_body("emergency"), priority="flash")
    wait_for(
        lambda: any(m["id"] == late and m["overdue"] for m in network.list("DEU", "in")),
        what="DEU's flash acknowledgement deadline to pass",
    )

    inbox = ok(cpn(network, "DEU", "inbox", "--priority", "flash"))
    sent = ok(cpn(network, "FRA", "inbox", "--out", "--limit", "5"))
    sent_json = json.loads(ok(cpn(network, "FRA", "inbox", "--box", "out", "--json")))

    line = next(line for line in inbox.splitlines() if late in line)
    assert line.lstrip().startswith("!") and "OVERDUE: acknowledgement" in line
    assert "urgent" not in inbox and "routine" not in inbox
    assert "overdue" in inbox.splitlines()[-1]
    assert late in sent and "to " in sent.splitlines()[0] + sent.splitlines()[1]
    assert all(m["box"] == "out" for m in sent_json["messages"])


def test_tokens_and_unreachable_nodes_get_clear_errors(network: Network) -> None:
    message_id = network.send("FRA", "DEU", "technical_advice", sample_body("technical_advice"))
    wrong_token = "cpn_this-is-not-a-token"

    refused = cpn(network, "DEU", "inbox", env={"CPN_TOKEN": wrong_token})
    flag_wins = cpn(
        network,
        "DEU",
        "inbox",
        "--token",
        network.nodes["DEU"].tokens["officer"],
        env={"CPN_TOKEN": wrong_token},
    )
    auditor = cpn(network, "DEU", "ack", message_id, role="auditor")
    with refusing_port() as port:
        unused = f"http://127.0.0.1:{port}"
        unreachable = cpn(network, "DEU", "inbox", "--api", unused)
    no_token = cpn(network, "DEU", "inbox", env={"CPN_TOKEN": ""})
    unknown = cpn(network, "DEU", "show", "01a1f94a-eec0-75c3-9e17-b2d40f68a1e7")

    assert refused.returncode == 1
    assert refused.stderr.startswith("cpn: error: the node refused the token")
    assert "CPN_TOKEN" in refused.stderr
    assert wrong_token not in refused.stderr + refused.stdout
    assert flag_wins.returncode == 0, flag_wins.stderr
    assert auditor.returncode == 1
    assert "role auditor may not acknowledge messages (HTTP 403)" in auditor.stderr
    assert unreachable.returncode == 3
    assert (
        unreachable.stderr == f"cpn: error: cannot reach the node at {unused}: connection"
        " refused (is the node running? check --api or CPN_API)\n"
    )
    assert no_token.returncode == 2 and "no token" in no_token.stderr
    assert unknown.returncode == 1 and "no message 01a1f94a" in unknown.stderr


def test_a_reply_says_where_the_data_is_held_or_what_cannot_be_done(network: Network) -> None:
    # Issue 19: `not_possible` covered everything; the data held in another State, and
    # conditions the requested Party cannot meet, are answers of their own.
    elsewhere = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    locate = network.send("FRA", "DEU", "locate", sample_body("locate"))
    for message_id in (elsewhere, locate):
        network.wait_state("DEU", message_id, {"received"})

    no_state = cpn(network, "DEU", "reply", elsewhere, "--status", "held_elsewhere")
    held = ok(
        cpn(network, "DEU", "reply", elsewhere, "--status", "held_elsewhere", "--held-in", "IRL")
    )
    unmet = cpn(network, "DEU", "reply", locate, "--status", "conditions_not_met")
    said = ok(
        cpn(network, "DEU", "reply", locate, "--status", "conditions_not_met",
            "--note", "We cannot keep the subject from being told.")
    )  # fmt: skip

    assert no_state.returncode == 2 and "held_in: required when status is held_elsewhere" in (
        no_state.stderr
    )
    assert unmet.returncode == 2 and "note: required when status is risk_notice or" in (
        unmet.stderr
    )
    assert held.startswith(f"answered {elsewhere} (held_elsewhere)")
    assert said.startswith(f"answered {locate} (conditions_not_met)")
    for message_id in (elsewhere, locate):
        network.wait_state("FRA", message_id, {"answered"})


def test_a_request_handed_on_then_withdrawn_from_the_command_line(network: Network) -> None:
    # Issue 19: hand-on (35(2)(b)) is an interim answer; the requester can withdraw.
    request = network.send("FRA", "DEU", "evidence", sample_body("evidence"))
    network.wait_state("DEU", request, {"received"})

    nameless = cpn(network, "DEU", "reply", request, "--status", "transferred")
    handed = ok(
        cpn(network, "DEU", "reply", request, "--status", "transferred",
            "--transferred-to", "Staatsanwaltschaft Köln", "--expected-by", "2099-01-10")
    )  # fmt: skip
    network.wait_state("FRA", request, {"acknowledged"})
    reasonless = cpn(network, "FRA", "follow-up", request, "--action", "withdraw")
    withdrawn = ok(
        cpn(network, "FRA", "follow-up", request, "--action", "withdraw",
            "--note", "The suspect was arrested; the evidence is no longer needed.")
    )  # fmt: skip
    network.wait_state("DEU", request, {"withdrawn"})

    assert nameless.returncode == 2 and "transferred_to: required when status is transferred" in (
        nameless.stderr
    )
    assert handed.startswith(f"answered {request} (transferred)")
    assert reasonless.returncode == 2 and "note: required when action is withdraw" in (
        reasonless.stderr
    )
    assert withdrawn.startswith(f"followed up {request} (withdraw): follow_up ")
    assert network.api("FRA", "GET", f"/api/messages/{request}")[1]["state"] == "withdrawn"


def test_a_request_to_several_countries_names_the_recipient_that_is_wrong(
    network: Network,
) -> None:
    # Issue 20: `--to` repeated sends one message to each; a bad one is named, and nothing goes.
    before = outbox_size(network, "FRA")
    args = ["send", "--type", "preservation", "--priority", "urgent"]
    body = as_assignments(sample_body("preservation"))

    local = cpn(network, "FRA", *args, "--to", "DEU", "--to", "X1", *body)
    twice = cpn(network, "FRA", *args, "--to", "DEU", "--to", "deu", *body)

    assert local.returncode == 2 and "to[1]: must be a contact point id" in local.stderr
    assert twice.returncode == 1 and "to[1]: DEU is named twice" in twice.stderr
    assert outbox_size(network, "FRA") == before


def test_a_request_is_taken_from_the_command_line(network: Network) -> None:
    request = network.send("FRA", "DEU", "locate", sample_body("locate"))
    network.wait_state("DEU", request, {"received"})

    taken = ok(cpn(network, "DEU", "assign", request))
    nobody = cpn(network, "DEU", "assign", request, "--to", "nobody", "--note", "over to you")

    assert taken.strip() == f"{request} is held by officer-DEU"
    assert nobody.returncode == 1 and "to: 'nobody' is not an officer of this node" in nobody.stderr


def test_have_we_seen_it_before_from_the_command_line(network: Network) -> None:
    body = sample_body("preservation", case_ref="SEARCH-CLI-1")
    request = network.send("FRA", "DEU", "preservation", body)
    network.wait_state("DEU", request, {"received"})

    found = ok(cpn(network, "DEU", "search", "--identifier", "2001:0DB8:4F2A::0017"))
    typed = ok(cpn(network, "DEU", "search", "--case", "SEARCH-CLI-1", "--json"))

    assert request in found and "SEARCH-CLI-1" in found
    assert [m["id"] for m in json.loads(typed)["messages"]] == [request]
