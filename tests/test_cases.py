"""A case through its steps, deadlines and escalation, preservations: real nodes, a real webhook."""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from network.samples import sample_body
from tests.harness import Network, cpn, rows, wait_for

pytestmark = pytest.mark.timeout(180)


class Webhook:
    """A real HTTP receiver on 127.0.0.1 that keeps every alert posted to it."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        received = self.alerts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cpn-alerts"

    def about(self, message_id: str, kind: str, node: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts
            if a["message_id"] == message_id and a["alert"] == kind and a["node"] == node
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


def fast_deadlines(url: str) -> str:
    """Flash deadlines of seconds, so that a test sees them pass."""
    return (
        "[deadlines.flash]\n"
        'receipt = "2s"\nacknowledgement = "3s"\nresponse = "60s"\nrepeat = "2s"\n'
        f'[alerts]\nwebhook = "{url}"\nwebhook_retries = 3\n'
    )


def in_days(days: int) -> str:
    return (datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=days)).isoformat()


def test_a_preservation_goes_through_receipt_acknowledgement_and_response(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    try:
        network.start("DEU", "FRA")
        request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_state("DEU", request, {"received"})
        status, taken = network.api(
            "DEU", "POST", f"/api/messages/{request}/ack", {"note": "On it"}
        )
        assert status == 202 and taken["type"] == "acknowledgement", taken
        network.wait_state("FRA", request, {"acknowledged"})
        status, again = network.api("DEU", "POST", f"/api/messages/{request}/ack")
        assert status == 400 and again["field"] == "id", again
        answer = {
            "status": "preserved",
            "preserved_until": in_days(90),
            "provider_reference": "EMS-LE-1",
            "note": "Preserved.",
        }
        status, replied = network.api("DEU", "POST", f"/api/messages/{request}/reply", answer)
        assert status == 202, replied
        network.wait_state("FRA", request, {"answered"})
        status, wrong = network.api(
            "DEU", "POST", f"/api/messages/{request}/reply", {"status": "refused"}
        )
        assert status == 400 and wrong["field"] == "refusal_ground", wrong
        status, sent = network.api("FRA", "GET", f"/api/messages/{request}")
        status_in, seen = network.api("DEU", "GET", f"/api/messages/{request}")
        case_ref = sample_body("preservation")["case_ref"]
        status_case, case = network.api("FRA", "GET", f"/api/messages?case={case_ref}")
    finally:
        network.close()

    # The case: the request, and on each side the replies threaded to it.
    assert status_case == 200 and [m["id"] for m in case["messages"]] == [request]
    assert sorted(m["type"] for m in sent["thread"]) == ["acknowledgement", "response"]
    assert all(m["in_reply_to"] == request for m in sent["thread"])

    assert status == 200 and status_in == 200
    steps = [entry["action"] for entry in sent["timeline"]]
    for step in ("composed", "sealed", "queued", "sent", "delivered", "acknowledged", "answered"):
        assert step in steps, steps
    assert steps.index("delivered") < steps.index("acknowledged") < steps.index("answered")
    assert sent["state"] == "answered" and sent["acknowledged_by"] == "officer-DEU"
    assert sent["preserved_until"] is not None
    received_steps = [entry["action"] for entry in seen["timeline"]]
    assert "acknowledged" in received_steps and "replied" in received_steps
    assert seen["state"] == "answered"


def flagged_overdue(network: Network, message_id: str) -> bool:
    """Whether FRA's alerts still list `message_id` as overdue for its acknowledgement."""
    status, alerts = network.api("FRA", "GET", "/api/alerts")
    assert status == 200
    flagged = [m for m in alerts["overdue"] if m["id"] == message_id]
    return bool(flagged) and "acknowledgement" in flagged[0]["overdue"]


def test_an_unacknowledged_flash_message_escalates_to_the_webhook(
    tmp_path: Path, webhook: Webhook
) -> None:
    config = fast_deadlines(webhook.url)
    network = Network(
        tmp_path, {"FRA": ["DEU"], "DEU": []}, extra_config={"FRA": config, "DEU": config}
    )
    try:
        network.start("DEU", "FRA")
        request = network.send(
            "FRA", "DEU", "emergency", sample_body("emergency"), priority="flash"
        )
        # Both sides: FRA waits on DEU, and DEU's own officers have not acted.
        wait_for(
            lambda: len(webhook.about(request, "overdue_acknowledgement", "FRA")) >= 2,
            what="FRA's alert, repeated",
        )
        wait_for(
            lambda: webhook.about(request, "overdue_acknowledgement", "DEU"),
            what="DEU's alert to its own officers",
        )
        status, alerts = network.api("FRA", "GET", "/api/alerts")
        assert status == 200
        assert any(
            m["id"] == request and "acknowledgement" in m["overdue"] for m in alerts["overdue"]
        )
        status, _ = network.api("DEU", "POST", f"/api/messages/{request}/ack")
        assert status == 202
        network.wait_state("FRA", request, {"acknowledged"})
        wait_for(lambda: not flagged_overdue(network, request), what="the flag lifted")
        settled = len(webhook.about(request, "overdue_acknowledgement", "FRA"))
        # A witness on FRA's own clock: a second flash message nobody acknowledges. Its
        # first alert comes 3 s after it is sent, its repeat 2 s later: past two repeats
        # of the first message's, which must bring nothing more about the acknowledgement.
        witness = network.send(
            "FRA", "DEU", "emergency", sample_body("emergency"), priority="flash"
        )
        wait_for(
            lambda: len(webhook.about(witness, "overdue_acknowledgement", "FRA")) >= 2,
            what="two alerts about the witness",
        )
        assert len(webhook.about(request, "overdue_acknowledgement", "FRA")) == settled
        status, alerts = network.api("FRA", "GET", "/api/alerts")
        flagged = [m for m in alerts["overdue"] if m["id"] == request]
        assert not flagged or "acknowledgement" not in flagged[0]["overdue"]
        status, audit_seen = network.api("FRA", "GET", f"/api/messages/{request}", token="auditor")
    finally:
        network.close()

    actions = [entry["action"] for entry in audit_seen["timeline"]]
    assert "overdue" in actions and "escalated" in actions


def test_deadlines_fire_after_a_restart(tmp_path: Path, webhook: Webhook) -> None:
    config = fast_deadlines(webhook.url)
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []}, extra_config={"FRA": config})
    try:
        network.start("DEU", "FRA")
        request = network.send(
            "FRA", "DEU", "emergency", sample_body("emergency"), priority="flash"
        )
        network.stop("FRA")  # before the acknowledgement deadline
        assert not webhook.about(request, "overdue_acknowledgement", "FRA")
        query = "SELECT ack_due FROM messages WHERE id = ?"
        [(ack_due,)] = rows(network.nodes["FRA"].store, query, (request,))
        # The deadline passes while FRA is down (the wall clock's, as the node reads it).
        wait_for(lambda: time.time() * 1000 > ack_due + 500, what="the deadline passed")
        network.start("FRA")
        wait_for(
            lambda: webhook.about(request, "overdue_acknowledgement", "FRA"),
            what="the deadline to fire after the restart",
        )
    finally:
        network.close()


def test_a_preservation_near_its_end_warns_and_an_answered_extension_moves_the_date(
    tmp_path: Path, webhook: Webhook
) -> None:
    # Warned 70 days ahead, so that the shortest lawful preservation (60 days, Budapest
    # 29(7)) is near its end at once.
    config = f'[alerts]\nwebhook = "{webhook.url}"\n[deadlines]\npreservation_warning = "70d"\n'
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []}, extra_config={"FRA": config})
    try:
        network.start("DEU", "FRA")
        request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_state("DEU", request, {"received"})
        soon = {"status": "preserved", "preserved_until": in_days(61), "note": "Preserved."}
        status, _ = network.api("DEU", "POST", f"/api/messages/{request}/reply", soon)
        assert status == 202
        wait_for(
            lambda: webhook.about(request, "preservation_expiring", "FRA"),
            what="the warning before the preservation lapses",
        )
        status, listed = network.api("FRA", "GET", "/api/preservations")
        assert [p["id"] for p in listed["preservations"]] == [request]
        before = listed["preservations"][0]["preserved_until"]
        # The requested side, which holds the data, keeps the same clock (issue 19).
        held = network.api("DEU", "GET", "/api/preservations")[1]["preservations"]
        assert [(p["id"], p["preserved_until"]) for p in held] == [(request, before)]

        extension = sample_body("preservation", status="extension", extends=request)
        extension_id = network.send("FRA", "DEU", "preservation", extension)
        network.wait_state("DEU", extension_id, {"received"})
        later = {"status": "preserved", "preserved_until": in_days(180), "note": "Extended."}
        status, _ = network.api("DEU", "POST", f"/api/messages/{extension_id}/reply", later)
        assert status == 202
        network.wait_state("FRA", extension_id, {"answered"})
        status, listed = network.api("FRA", "GET", "/api/preservations")
    finally:
        network.close()

    (moved,) = listed["preservations"]
    assert moved["id"] == request and moved["preserved_until"] > before
    assert moved["preserved_until"] - before >= 100 * 86_400_000


# -- the request's legal life: no dead ends (issue 19) -------------------------------------


def steps(message: dict[str, Any]) -> list[str]:
    return [entry["action"] for entry in message["timeline"]]


def test_more_information_keeps_the_deadlines_running_until_a_final_answer(
    tmp_path: Path,
) -> None:
    # A needs_info answer counted as the answer: the request was `answered` and every
    # deadline stopped, with nothing the requester could send to supply what was missing.
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    try:
        network.start("DEU", "FRA")
        request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_state("DEU", request, {"received"})
        asked = {"status": "needs_info", "missing": "The IP address's time zone."}
        assert network.api("DEU", "POST", f"/api/messages/{request}/reply", asked)[0] == 202
        network.wait_state("FRA", request, {"acknowledged"})
        # A release is only for preserved data; a follow-up of another's request is refused.
        status, wrong = network.api(
            "FRA", "POST", f"/api/messages/{request}/follow-up", {"action": "withdraw"}
        )
        assert status == 400 and wrong["field"] == "note", wrong
        given = {"action": "information", "information": "UTC: the log is in UTC."}
        status, sent = network.api("FRA", "POST", f"/api/messages/{request}/follow-up", given)
        assert status == 202 and sent["type"] == "follow_up", sent
        network.wait_state("FRA", sent["id"], {"delivered"})
        _, waiting_in = network.api("DEU", "GET", f"/api/messages/{request}")
        _, waiting_out = network.api("FRA", "GET", f"/api/messages/{request}")
        done = {"status": "preserved", "preserved_until": in_days(90)}
        assert network.api("DEU", "POST", f"/api/messages/{request}/reply", done)[0] == 202
        network.wait_state("FRA", request, {"answered"})
        _, answered = network.api("FRA", "GET", f"/api/messages/{request}")
    finally:
        network.close()

    # Between the two answers the request is open on both sides, its response still due.
    for side in (waiting_in, waiting_out):
        assert side["state"] == "acknowledged", side["state"]
        assert side["deadlines"]["response"] is not None
        assert "information_given" in steps(side), steps(side)
    assert [m["type"] for m in waiting_in["thread"]].count("follow_up") == 1
    assert answered["state"] == "answered" and answered["preserved_until"] is not None


def test_a_request_handed_on_is_due_when_the_answer_is_expected(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    try:
        network.start("DEU", "FRA")
        request = network.send("FRA", "DEU", "evidence", sample_body("evidence"))
        network.wait_state("DEU", request, {"received"})
        status, missing = network.api(
            "DEU", "POST", f"/api/messages/{request}/reply", {"status": "transferred"}
        )
        assert status == 400 and missing["field"] == "transferred_to", missing
        handed = {
            "status": "transferred",
            "transferred_to": "Staatsanwaltschaft Köln, ZAC NRW",
            "expected_by": in_days(14),
        }
        assert network.api("DEU", "POST", f"/api/messages/{request}/reply", handed)[0] == 202
        network.wait_state("FRA", request, {"acknowledged"})
        _, held = network.api("DEU", "GET", f"/api/messages/{request}")
        _, asked = network.api("FRA", "GET", f"/api/messages/{request}")
    finally:
        network.close()

    end_of_day = (
        int(datetime.datetime.fromisoformat(in_days(15)).replace(tzinfo=datetime.UTC).timestamp())
        * 1000
    )
    for side in (held, asked):
        assert side["state"] == "acknowledged"  # not answered: a final answer is owed
        assert side["deadlines"]["response"] == end_of_day
        replies = [e for e in side["timeline"] if e["action"] in ("replied", "answered")]
        assert replies[-1]["detail"]["expected_by"] == in_days(14), replies


def test_a_released_preservation_stops_both_clocks(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    try:
        network.start("DEU", "FRA")
        request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        locate = network.send("FRA", "DEU", "locate", sample_body("locate"))
        network.wait_state("DEU", request, {"received"})
        done = {"status": "preserved", "preserved_until": in_days(90)}
        assert network.api("DEU", "POST", f"/api/messages/{request}/reply", done)[0] == 202
        network.wait_state("FRA", request, {"answered"})
        status, wrong = network.api(
            "FRA", "POST", f"/api/messages/{locate}/follow-up", {"action": "release"}
        )
        assert status == 400 and wrong["field"] == "action", wrong
        release = {"action": "release", "note": "The suspect was identified otherwise."}
        status, sent = network.api("FRA", "POST", f"/api/messages/{request}/follow-up", release)
        assert status == 202, sent
        network.wait_state("DEU", request, {"withdrawn"})
        status, again = network.api("FRA", "POST", f"/api/messages/{request}/follow-up", release)
        assert status == 400 and again["field"] == "action", again
        out = network.api("FRA", "GET", f"/api/messages/{request}")[1]
        held = network.api("DEU", "GET", f"/api/messages/{request}")[1]
        lists = [network.api(n, "GET", "/api/preservations")[1] for n in ("FRA", "DEU")]
    finally:
        network.close()

    for side in (out, held):
        assert side["state"] == "withdrawn" and side["preserved_until"] is None
        (released,) = [e for e in side["timeline"] if e["action"] == "released"]
        assert released["detail"]["was"] == "answered"
    assert [listed["preservations"] for listed in lists] == [[], []]


def test_once_the_mla_request_is_received_the_data_is_kept_until_the_decision(
    tmp_path: Path, webhook: Webhook
) -> None:
    # Issue 19: a preservation could only run to a date, so the requester was warned every
    # day to extend what Budapest 29(7) keeps "pending a decision on that request".
    config = f'[alerts]\nwebhook = "{webhook.url}"\n[deadlines]\npreservation_warning = "70d"\n'
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []}, extra_config={"FRA": config})
    try:
        network.start("DEU", "FRA")
        request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_state("DEU", request, {"received"})
        undecided = {
            "status": "preserved",
            "until_mla_decision": True,
            "mla_received_on": in_days(0),
        }
        status, early = network.api("DEU", "POST", f"/api/messages/{request}/reply", undecided)
        assert status == 400 and early["field"] == "until_mla_decision", early
        soon = {"status": "preserved", "preserved_until": in_days(61)}
        assert network.api("DEU", "POST", f"/api/messages/{request}/reply", soon)[0] == 202
        wait_for(
            lambda: webhook.about(request, "preservation_expiring", "FRA"),
            what="the warning before the preservation lapses",
        )
        notice = network.send(
            "FRA", "DEU", "mla_notice", sample_body("mla_notice", follows=request)
        )
        network.wait_state("DEU", notice, {"received"})
        # The notice moves both clocks to "until the decision", counted from the day the
        # MLA request was sent until the requested Party says when it received it.
        announced = [network.api(n, "GET", f"/api/messages/{request}")[1] for n in ("FRA", "DEU")]
        assert network.api("DEU", "POST", f"/api/messages/{notice}/reply", undecided)[0] == 202
        network.wait_state("FRA", notice, {"answered"})
        asked = network.api("FRA", "GET", f"/api/messages/{request}")[1]
        held = network.api("DEU", "GET", f"/api/messages/{request}")[1]
        lists = [network.api(n, "GET", "/api/preservations")[1] for n in ("FRA", "DEU")]
    finally:
        network.close()

    received_on = int(
        datetime.datetime.fromisoformat(in_days(0)).replace(tzinfo=datetime.UTC).timestamp()
    )
    for side in (asked, held):
        assert side["preserved_until"] is None
        assert side["until_decision"] == received_on * 1000
        assert "preservation_expiring" not in side["overdue"]  # nothing left to warn of
    for listed in lists:
        assert [p["id"] for p in listed["preservations"]] == [request]
    sent_on = datetime.datetime.fromisoformat(sample_body("mla_notice")["mla_date"])
    for side in announced:
        assert side["preserved_until"] is None and "preservation_expiring" not in side["overdue"]
        assert (
            side["until_decision"] == int(sent_on.replace(tzinfo=datetime.UTC).timestamp()) * 1000
        )
        assert "until_mla_decision" in steps(side), steps(side)


def test_an_unreachable_peers_duty_desk_is_named_with_its_telephone(
    tmp_path: Path, webhook: Webhook
) -> None:
    # Issue 19: when the network cannot reach a contact point, the officer calls; the
    # number was nowhere in cpn (not on the card, the alert or the console).
    config = fast_deadlines(webhook.url)
    network = Network(
        tmp_path,
        {"FRA": ["DEU"], "DEU": []},
        extra_config={"FRA": config},
        desks={"DEU": ("+49 611 55-15037", "+49 611 55-0")},
    )
    try:
        network.start("FRA")  # DEU never comes up
        request = network.send("FRA", "DEU", "emergency", sample_body("emergency"), "flash")
        wait_for(
            lambda: webhook.about(request, "overdue_receipt", "FRA"),
            what="the alert that DEU has not received it",
        )
        status, peers = network.api("FRA", "GET", "/api/peers")
    finally:
        network.close()

    (alert,) = webhook.about(request, "overdue_receipt", "FRA")[:1]
    assert alert["peer_phones"] == ["+49 611 55-15037", "+49 611 55-0"]
    (deu,) = [p for p in peers["peers"] if p["id"] == "DEU"]
    assert status == 200 and not deu["linked"]
    assert (deu["phones"], deu["languages"]) == (["+49 611 55-15037", "+49 611 55-0"], ["en"])


# -- one request to several countries (issue 20, item 2) -----------------------------------


def test_one_request_goes_to_several_countries_each_tracked_on_its_own(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": ["DEU", "USA"], "DEU": [], "USA": []})
    try:
        network.start("DEU", "USA", "FRA")
        body = sample_body("preservation")
        submit = {"type": "preservation", "priority": "urgent", "body": body}
        refusals = {
            field: network.api("FRA", "POST", "/api/messages", {**submit, "to": to})[1]
            for field, to in (
                ("to[1]", ["DEU", "DEU"]),
                ("to[1]", ["DEU", "CHE"]),
                ("to[0]", ["FRA", "DEU"]),
                ("to", ["DEU"]),
            )
        }
        nothing_yet = network.list("FRA", "out")
        status, sent = network.api("FRA", "POST", "/api/messages", {**submit, "to": ["DEU", "USA"]})
        assert status == 202, sent
        ids = {m["to"]: m["id"] for m in sent["messages"]}
        for node, message_id in ids.items():
            network.wait_state(node, message_id, {"received"})
        answer = {"status": "preserved", "preserved_until": in_days(90)}
        assert network.api("DEU", "POST", f"/api/messages/{ids['DEU']}/reply", answer)[0] == 202
        network.wait_state("FRA", ids["DEU"], {"answered"})
        _, case = network.api("FRA", "GET", f"/api/messages?case={body['case_ref']}")
        _, composed = network.api("FRA", "GET", f"/api/messages/{ids['USA']}")
    finally:
        network.close()

    for field, refused in refusals.items():
        assert refused["field"] == field, refused
    assert nothing_yet == []  # a refused one sends to none
    assert sorted(ids) == ["DEU", "USA"] and len(set(ids.values())) == 2
    states = {m["to"]: m["state"] for m in case["messages"]}
    assert states["DEU"] == "answered" and states["USA"] in ("delivered", "sent")
    (entry,) = [e for e in composed["timeline"] if e["action"] == "composed"]
    assert entry["detail"]["with"] == [ids["DEU"]]


# -- work shared within the desk (issue 20, item 3) -------------------------------------------


def test_a_received_request_is_taken_handed_over_and_the_inbox_shows_who_holds_it(
    tmp_path: Path,
) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    night = cpn("user", "add", "night-officer", "--token", "--role", "officer", "--config",
                str(network.nodes["DEU"].config))  # fmt: skip
    assert night.returncode == 0, night.stderr
    try:
        network.start("DEU", "FRA")
        request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_state("DEU", request, {"received"})
        path = f"/api/messages/{request}/assign"
        status, taken = network.api("DEU", "POST", path, {})
        again = network.api("DEU", "POST", path, {})[1]
        nobody = network.api("DEU", "POST", path, {"to": "night-shift"})[1]
        auditor = network.api("DEU", "POST", path, {"to": "auditor-DEU"})[1]
        sent_side = network.api("FRA", "POST", path, {})[0]
        handover = {"to": "night-officer", "note": "Provider called at 02:10; awaiting its fax."}
        handed = network.api("DEU", "POST", path, handover)[1]
        listed = network.api("DEU", "GET", "/api/messages?box=in")[1]["messages"]
        _, seen = network.api("DEU", "GET", f"/api/messages/{request}")
    finally:
        network.close()

    assert status == 200 and taken["assigned_to"] == "officer-DEU"
    assert again["field"] == "to" and "holds it already" in again["error"]
    assert nobody["field"] == "to" and "not an officer of this node" in nobody["error"]
    assert auditor["field"] == "to"
    assert sent_side == 404  # only what this node received is worked at its desk
    assert handed["assigned_to"] == "night-officer"
    assert [m["assigned_to"] for m in listed if m["id"] == request] == ["night-officer"]
    first, second = [e for e in seen["timeline"] if e["action"] == "assigned"]
    assert first["actor"] == "officer-DEU" and first["detail"] == {"to": "officer-DEU", "was": None}
    assert second["detail"] == {"to": "night-officer", "was": "officer-DEU", **handover}


def test_the_inbox_lists_each_requests_case_and_summary_line_and_the_store_keeps_them_sealed(
    tmp_path: Path,
) -> None:
    # Issue 20, item 5: triage without opening every request (an audited consultation).
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    case_ref = "PN-CYBER-2026-77123"
    summary = "Ransomware on a hospital; the leak site is hosted in Germany.\nMore below."
    try:
        network.start("DEU", "FRA")
        body = sample_body("preservation", case_ref=case_ref, summary=summary)
        request = network.send("FRA", "DEU", "preservation", body)
        network.wait_state("DEU", request, {"received"})
        inbox = network.api("DEU", "GET", "/api/messages?box=in")[1]["messages"]
        outbox = network.api("FRA", "GET", "/api/messages?box=out")[1]["messages"]
        network.stop("DEU")
        network.stop("FRA")
    finally:
        network.close()

    for listed in (inbox, outbox):
        (line,) = [m for m in listed if m["id"] == request]
        assert line["case_ref"] == case_ref
        assert line["summary"] == "Ransomware on a hospital; the leak site is hosted in Germany."
    opened = rows(network.nodes["DEU"].store, "SELECT 1 FROM audit WHERE action = 'opened'")
    assert opened == []  # listing is not a consultation of the body
    for node in ("DEU", "FRA"):
        store = network.nodes[node].store
        stored = b"".join(p.read_bytes() for p in store.parent.glob(store.name + "*"))
        assert case_ref.encode() not in stored and b"leak site" not in stored


# -- finding earlier requests (issue 20, item 4) ------------------------------------------------


def test_have_we_seen_this_identifier_before(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    try:
        network.start("DEU", "FRA")
        request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        other = network.send("FRA", "DEU", "locate", sample_body("locate"))
        for message_id in (request, other):
            network.wait_state("DEU", message_id, {"received"})
        # Written otherwise than in the request: the exploded IPv6 address, in capitals.
        found = network.api("DEU", "GET", "/api/search?identifier=2001:DB8:4F2A:0:0:0:0:17")[1]
        typed = network.api("DEU", "GET", "/api/search?identifier=203.0.113.45&kind=email")[1]
        sent = network.api(
            "FRA", "GET", "/api/search?identifier=Contact@Bonnes-Affaires-Hightech.example&box=out"
        )[1]
        by_type = network.api("DEU", "GET", "/api/search?type=locate&country=FRA")[1]
        never = network.api("DEU", "GET", "/api/search?identifier=198.51.100.7")[1]
        status, empty = network.api("DEU", "GET", "/api/search")
        network.stop("DEU")
    finally:
        network.close()

    assert [m["id"] for m in found["messages"]] == [request], (found, typed, sent, by_type)
    assert found["messages"][0]["case_ref"] == sample_body("preservation")["case_ref"]
    assert typed["messages"] == []  # not an e-mail address
    assert [m["id"] for m in sent["messages"]] == [request]
    assert [m["id"] for m in by_type["messages"]] == [other]
    assert never["messages"] == []
    assert status == 400 and empty["field"] == "identifier"
    searches = rows(
        network.nodes["DEU"].store, "SELECT actor, detail FROM audit WHERE action = 'searched'"
    )
    assert [actor for actor, _ in searches] == ["officer-DEU"] * 4
    first = json.loads(searches[0][1])
    assert first["found"] == 1 and len(first["identifier"]) >= 1
    store = network.nodes["DEU"].store
    stored = b"".join(p.read_bytes() for p in store.parent.glob(store.name + "*"))
    assert b"2001:db8:4f2a" not in stored and b"203.0.113.45" not in stored  # digests only


def test_requests_stored_before_the_upgrade_are_reindexed(tmp_path: Path) -> None:
    # Stored by a version before listing lines and identifier digests (schemas 11, 12): a
    # migration holds no key, so `cpn store reindex` gives them what this version keeps.
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    deu = network.nodes["DEU"]
    try:
        network.start("DEU", "FRA")
        request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_state("DEU", request, {"received"})
        network.stop("DEU")
        with sqlite3.connect(deu.store) as db:  # as the older version left it
            db.execute("DELETE FROM identifiers")
            db.execute("UPDATE messages SET listing = NULL")
        db.close()
        network.start("DEU")
        before = network.api("DEU", "GET", "/api/search?identifier=203.0.113.45")[1]
        made = cpn("store", "reindex", "--config", str(deu.config))
        after = network.api("DEU", "GET", "/api/search?identifier=203.0.113.45")[1]
        again = cpn("store", "reindex", "--config", str(deu.config))
    finally:
        network.close()

    assert before["messages"] == []
    assert made.returncode == 0 and "1 listing lines made" in made.stdout, made.stderr
    (found,) = after["messages"]
    assert found["id"] == request and found["case_ref"] == sample_body("preservation")["case_ref"]
    assert again.returncode == 0 and "0 listing lines made" in again.stdout  # idempotent
    audited = rows(deu.store, "SELECT actor FROM audit WHERE action = 'reindexed'")
    assert len(audited) == 2
