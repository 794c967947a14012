"""The console in a real browser: Debian's Chromium driven by Playwright, against real nodes.

FRA and DEU run as processes (tests/harness.py) with real TLS links; the
console is what each node serves at `/`. With CPN_SCREENSHOTS=DIR set, the
tests save the main pages as PNGs there (docs/screenshots/ in the README).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from network.api.web import SECURITY_HEADERS
from network.core.bodies import describe_types
from network.node.evidence import verify_package
from network.node.keys import load_keeper_public
from network.samples import sample_body
from tests.harness import Network, cpn, rows, wait_for
from tests.test_cases import in_days

pytestmark = pytest.mark.timeout(90)

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; Playwright's own download does not work here
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = os.environ.get("CPN_SCREENSHOTS")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    net = Network(tmp_path_factory.mktemp("console"), {"FRA": ["DEU"], "DEU": []})
    try:
        net.start("DEU", "FRA")
        wait_for(
            lambda: all(p["linked"] for p in net.api("FRA", "GET", "/api/peers")[1]["peers"]),
            what="FRA linked to DEU",
        )
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # A missing browser fails the tests (never skips them): .ci/run installs it.
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    yield context
    context.close()


class Console:
    """One signed-in tab, collecting script errors and CSP violations."""

    def __init__(self, context: BrowserContext, network: Network, node: str, role: str) -> None:
        self.errors: list[str] = []
        self.page: Page = context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )
        self.page.goto(network.nodes[node].api + "/")
        expect(self.page.locator("#token")).to_be_visible()
        if role == "officer" and node == "FRA":
            snap(self.page, "signin")
        self.page.fill("#token", network.nodes[node].tokens[role])
        self.page.click("form.signin button[type=submit]")
        expect(self.page.locator("#who")).to_have_text(f"{role}-{node} ({role})")
        if role != "admin":  # an administrator follows no message's live events
            expect(self.page.locator("#live")).to_have_text("live")

    def field(self, path: str) -> Any:
        return self.page.locator(f'[data-path="{path}"]')

    def error_for(self, path: str) -> Any:
        return self.page.locator(f'[data-error-for="{path}"]')

    def state(self) -> Any:
        return self.page.locator('[data-fact="State"]')

    def check_clean(self) -> None:
        """No script error, no CSP violation, no failed load but the 400s the test provoked."""
        provoked = "the server responded with a status of 400"
        assert [e for e in self.errors if provoked not in e] == [], self.errors


def snap(page: Page, name: str) -> None:
    """A screenshot of the page for the README, when CPN_SCREENSHOTS names a directory."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def fill_preservation(console: Console, body: dict[str, Any]) -> None:
    """Fill the preservation form as an officer would, from a JSON body."""
    fill = console.page.fill
    for path in ("case_ref", "language", "summary", "offence", "facts", "necessity", "custodian"):
        fill(f'[data-path="body.{path}"]', body[path])
    for name in ("organisation", "unit", "officer", "phone", "email", "time_zone"):
        fill(f'[data-path="body.authority.{name}"]', body["authority"][name])
    for name in ("confidential", "do_not_notify_subject", "use_limited_to_investigation"):
        console.field(f"body.handling.{name}").select_option("true")
    console.field("body.status").select_option(body["status"])
    fill('[data-path="body.data.description"]', body["data"]["description"])
    first, second = body["data"]["identifiers"][:2]
    console.page.click("text=Add identifiers")
    for index, identifier in enumerate((first, second)):
        prefix = f"body.data.identifiers[{index}]"
        console.field(f"{prefix}.kind").select_option(identifier["kind"])
        fill(f'[data-path="{prefix}.value"]', identifier["value"])
        if "timestamp" in identifier:
            fill(f'[data-path="{prefix}.timestamp"]', identifier["timestamp"])
    for category in body["data"]["categories"]:
        console.page.check(f'[data-path="body.data.categories:{category}"]')
    console.field("body.mla_intended").select_option("true")
    fill('[data-path="body.period_days"]', str(body["period_days"]))


def test_a_preservation_request_goes_live_from_fra_to_deu_and_back(
    network: Network, context: BrowserContext
) -> None:
    body = sample_body("preservation")
    for message_type, priority in (("evidence", "routine"), ("locate", "urgent")):
        earlier = network.send("FRA", "DEU", message_type, sample_body(message_type), priority)
        network.wait_state("FRA", earlier, {"delivered"})
    deu = Console(context, network, "DEU", "officer")
    expect(deu.page.locator("table.messages tbody tr")).to_have_count(2)
    fra = Console(context, network, "FRA", "officer")
    deu.page.evaluate("window.stayed = true")  # gone if the page reloads

    # FRA composes: the form checks every Art. 42 element before anything is sent.
    fra.page.click("#nav >> text=Compose")
    fra.field("to").select_option("DEU")
    fra.field("type").select_option("preservation")
    fra.field("priority").select_option("flash")
    fra.page.click("text=Check and send")
    summary = fra.page.locator(".form-errors")
    for missing in ("body.offence", "body.facts", "body.necessity", "body.period_days"):
        expect(summary).to_contain_text(missing)
        expect(fra.error_for(missing)).to_have_text("required field is missing")
    expect(fra.error_for("body.data.identifiers[0].kind")).to_have_text("required field is missing")
    assert len(network.list("FRA", "out")) == 2  # nothing was sent
    fill_preservation(fra, body)
    fra.field("body.period_days").fill("30")
    fra.page.click("text=Check and send")
    expect(fra.error_for("body.period_days")).to_have_text("must be at least 60")
    # What only the node checks comes back named, and shows beside its field.
    fra.field("body.period_days").fill("90")
    fra.field("body.authority.email").fill("not an address")
    fra.page.click("text=Check and send")
    expect(fra.error_for("body.authority.email")).to_contain_text("must be an e-mail address")
    snap(fra.page, "compose")  # the node's refusal beside the field it names
    fra.field("body.authority.email").fill(body["authority"]["email"])
    fra.page.click("text=Check and send")
    sent_at = time.monotonic()

    # DEU's inbox shows it live, without a reload, with the flash banner and its sound.
    rows = deu.page.locator("table.messages tbody tr")
    expect(rows).to_have_count(3, timeout=2000)
    arrived = time.monotonic() - sent_at
    row = rows.first  # the most urgent first
    expect(row).to_contain_text("acknowledgement by")  # the deadline it waits on
    expect(rows.nth(1)).to_contain_text("urgent")
    expect(rows.nth(2)).to_contain_text("routine")
    expect(row).to_contain_text("Preservation")
    expect(row).to_contain_text("flash")
    expect(deu.page.locator("#banner")).to_be_visible()
    expect(deu.page.locator("#banner")).to_contain_text("FLASH")
    expect(deu.page.locator("#banner")).to_have_attribute("data-sound", "played")
    assert deu.page.evaluate("window.stayed") is True
    assert arrived < 2.0
    snap(deu.page, "inbox")

    # DEU reads it, acknowledges and answers `preserved`.
    row.click()
    expect(deu.page.locator("section.body")).to_contain_text(body["case_ref"])
    # The duty officer takes it: the desk sees who holds it (issue 20).
    deu.page.click("section.desk >> text=Take it")
    expect(deu.page.locator('section.desk [data-fact="Held by"]')).to_have_text(
        "Held by officer-DEU."
    )
    deu.page.click("form button:has-text('Acknowledge')")
    expect(deu.state()).to_have_text("acknowledged")
    expect(deu.page.locator("#ack-note")).to_have_count(0)  # the actions follow the state
    deu.field("body.status").select_option("preserved")
    expect(deu.field("body.refusal_ground")).to_be_hidden()
    deu.page.click("text=Send the reply")
    expect(deu.error_for("body.preserved_until")).to_contain_text("required when status is")
    deu.field("body.preserved_until").fill(in_days(90))  # Budapest 29(7): 60 days at least
    deu.field("body.provider_reference").fill("EMS-LE-2026-55810")
    deu.field("body.note").fill("All three categories preserved.")
    deu.page.click("text=Send the reply")
    expect(deu.state()).to_have_text("answered")

    # FRA's message page follows both, live.
    expect(fra.state()).to_have_text("answered", timeout=10_000)
    timeline = fra.page.locator("ol.timeline")
    for step in ("queued", "sent", "delivered", "acknowledged", "answered"):
        expect(timeline.locator(f'li[data-action="{step}"]')).to_have_count(1)
    thread = fra.page.locator("ul.thread")
    expect(thread).to_contain_text("Acknowledgement")
    expect(thread).to_contain_text("Response")
    expect(fra.page.locator('[data-fact="Preserved until"]')).to_have_text(in_days(90))
    snap(fra.page, "message")
    fra.page.click("#nav >> text=Preservations")
    expect(fra.page.locator("main table")).to_contain_text(in_days(90))
    expect(fra.page.locator("#banner")).to_be_hidden()  # answers to a flash request: no alarm

    # The case is closed otherwise: FRA releases the data (issue 19), DEU's page follows.
    fra.page.click("main table a")
    fra.field("body.action").select_option("withdraw")
    fra.page.click("text=Send the follow-up")
    expect(fra.error_for("body.note")).to_contain_text("required")
    fra.field("body.action").select_option("release")
    fra.field("body.note").fill("The suspect was identified otherwise.")
    fra.page.click("text=Send the follow-up")
    expect(fra.state()).to_have_text("withdrawn")
    expect(fra.page.locator("form.follow-up")).to_have_count(0)
    expect(deu.state()).to_have_text("withdrawn", timeout=10_000)
    expect(deu.page.locator("form.reply")).to_have_count(0)
    fra.check_clean()
    deu.check_clean()


def test_an_auditor_filters_the_log_verifies_it_and_downloads_an_export(
    network: Network, context: BrowserContext, tmp_path: Path
) -> None:
    network.send("FRA", "DEU", "evidence", sample_body("evidence"), priority="routine")
    auditor = Console(context, network, "FRA", "auditor")
    page = auditor.page
    expect(page.locator("main h1")).to_have_text("Audit log")

    page.fill("#filter-since", "yesterday")
    page.click("text=Filter")
    expect(auditor.error_for("since")).to_contain_text("is not a time")
    page.fill("#filter-since", "")
    page.fill("#filter-action", "composed")
    page.click("text=Filter")
    expect(auditor.error_for("since")).to_have_text("")
    actions = page.locator("table.audit tbody td:nth-child(4)")
    expect(actions.first).to_have_text("composed")
    assert set(actions.all_inner_texts()) == {"composed"}
    composed = actions.count()

    page.click("text=Run the verification")
    expect(page.locator("[data-ok]")).to_have_attribute("data-ok", "true", timeout=20_000)
    expect(page.locator(".verdict")).to_contain_text("every check passed")
    snap(page, "audit")

    with page.expect_download() as download_info:
        page.click("text=Download the export")
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.name.startswith("cpn-audit-FRA-") and saved.suffix == ".jsonl"
    records = [json.loads(line) for line in saved.read_text().splitlines()]
    entries = [r for r in records if r["type"] == "entry"]
    assert len(entries) == composed
    assert all(e["action"] == "composed" and len(e["leaf_hash"]) == 44 for e in entries)

    page.select_option("#export-format", "csv")
    with page.expect_download() as download_info:
        page.click("text=Download the export")
    csv_text = Path(download_info.value.path()).read_text()
    assert csv_text.splitlines()[0].startswith("seq,index,time,time_rfc3339,actor,action")
    assert len(csv_text.splitlines()) == composed + 1
    auditor.check_clean()


def test_an_auditor_downloads_a_messages_evidence_package(
    network: Network, context: BrowserContext, tmp_path: Path
) -> None:
    # Issue 16: the message page offers auditors the package, which verifies offline.
    request = network.send("FRA", "DEU", "locate", sample_body("locate"), priority="urgent")
    network.wait_state("FRA", request, {"delivered"})
    auditor = Console(context, network, "FRA", "auditor")
    auditor.page.evaluate(f"location.hash = '#/message/{request}'")
    auditor.page.check("#evidence-bodies")
    with auditor.page.expect_download() as download_info:
        auditor.page.click("text=Download evidence package")
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    keeper = load_keeper_public(network.keys / "authority" / "keeper.json")

    facts = [f.statement for f in verify_package(saved.read_bytes(), keeper=keeper)]

    assert saved.name == f"cpn-evidence-{request}.json"
    assert any(f"signed message {request} to DEU" in f for f in facts)
    assert any("disclosed body" in f for f in facts)
    audited = rows(
        network.nodes["FRA"].store,
        "SELECT actor, detail FROM audit WHERE action = 'evidence_exported' AND message_id = ?",
        (request,),
    )
    assert [(actor, json.loads(d)["disclosed"]) for actor, d in audited] == [("auditor-FRA", True)]
    # The case it belongs to, every message of it (issue 20: one request, several countries).
    auditor.page.click('[data-fact="Case"] a')
    expect(auditor.page.locator(f'table.case tr[data-id="{request}"]')).to_have_count(1)
    auditor.check_clean()


def test_the_years_statistics_show_as_charts_and_download_as_csv(
    network: Network, context: BrowserContext, tmp_path: Path
) -> None:
    # Issue 20, item 7: the figures a Party reports, in the console.
    network.send("FRA", "DEU", "evidence", sample_body("evidence"), priority="routine")
    auditor = Console(context, network, "FRA", "auditor")
    auditor.page.click("#nav >> text=Statistics")
    answers = ("acknowledgement", "response", "follow_up")
    sent = len([m for m in network.list("FRA", "out") if m["type"] not in answers])

    totals = auditor.page.locator("[data-totals]")
    expect(totals).to_contain_text(f"FRA, {in_days(0)[:4]}:")
    figure = auditor.page.locator('[data-figure="Requests by type"] svg.chart')
    expect(figure.locator("rect.sent").first).to_be_visible()
    expect(auditor.page.locator('[data-time="sent-receipt"]')).to_be_visible()
    with auditor.page.expect_download() as download_info:
        auditor.page.click("text=Download CSV")
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    csv_text = saved.read_text()

    assert saved.name.startswith("cpn-statistics-FRA-")
    assert f"sent,requests,,{sent}" in csv_text.splitlines()
    snap(auditor.page, "statistics")
    auditor.check_clean()


def test_an_identifier_seen_before_is_found_written_otherwise(
    network: Network, context: BrowserContext
) -> None:
    # Issue 20, item 4: the first question of every shift.
    request = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
    network.wait_state("DEU", request, {"received"})
    officer = Console(context, network, "DEU", "officer")
    officer.page.click("#nav >> text=Search")
    officer.page.fill("#search-identifier", "2001:DB8:4F2A:0:0:0:0:17")
    officer.page.click("form button:has-text('Search')")

    expect(officer.page.locator(f'table.found tr[data-id="{request}"]')).to_have_count(1)
    expect(officer.page.locator("[role=status]")).to_contain_text("recorded in the audit log")
    officer.check_clean()


def test_an_administrator_runs_the_accounts(network: Network, context: BrowserContext) -> None:
    # Issue 21, item 5: disable, enable, and each account's audit trail, in the console.
    made = cpn("user", "add", "admin-FRA", "--token", "--role", "admin", "--config",
               str(network.nodes["FRA"].config))  # fmt: skip
    assert made.returncode == 0, made.stderr
    network.nodes["FRA"].tokens["admin"] = made.stdout.strip().splitlines()[-1]
    admin = Console(context, network, "FRA", "admin")
    admin.page.click("#nav >> text=Accounts")
    row = admin.page.locator('tr[data-user="auditor-FRA"]')

    row.locator("button:has-text('Disable')").click()
    expect(row).to_contain_text("disabled")
    assert network.api("FRA", "GET", "/api/me", token="auditor")[0] == 401
    row.locator("button:has-text('Enable')").click()
    expect(row).to_contain_text("enabled")
    row.locator("button:has-text('Audit trail')").click()

    trail = admin.page.locator("table.trail")
    expect(trail).to_contain_text("account_disabled")
    expect(trail).to_contain_text("account_enabled")
    assert network.api("FRA", "GET", "/api/me", token="auditor")[0] == 200
    admin.check_clean()


def test_markup_in_a_body_shows_as_text(network: Network, context: BrowserContext) -> None:
    image = '<img src=x onerror="window.pwned=1">'
    script = "<script>window.pwned=2</script>"
    body = sample_body("technical_advice", case_ref=image, summary=script, request=image + script)
    message_id = network.send("FRA", "DEU", "technical_advice", body, priority="urgent")
    network.wait_state("FRA", message_id, {"delivered"})

    for node in ("FRA", "DEU"):
        console = Console(context, network, node, "officer")
        console.page.goto(f"{network.nodes[node].api}/#/message/{message_id}")
        shown = console.page.locator("section.body")
        expect(shown).to_contain_text(image)
        expect(shown).to_contain_text(script)
        assert console.page.locator("main img, main script").count() == 0
        assert console.page.evaluate("window.pwned") is None
        # The inbox's listing line too (issue 20): the case reference and summary as text.
        console.page.goto(f"{network.nodes[node].api}/#/{'outbox' if node == 'FRA' else 'inbox'}")
        expect(console.page.locator(f'[data-case="{message_id}"]')).to_have_text(image)
        assert console.page.locator("main img, main script").count() == 0
        assert console.page.evaluate("window.pwned") is None
        console.check_clean()


def test_the_console_is_served_with_a_strict_policy(network: Network) -> None:
    api = network.nodes["FRA"].api
    for path, kind in (("/", "text/html"), ("/console/main.js", "text/javascript")):
        with urllib.request.urlopen(api + path, timeout=10) as response:
            page = response.read().decode()
            headers = response.headers
        assert headers["Content-Type"].startswith(kind)
        for name, value in SECURITY_HEADERS.items():
            assert headers[name] == value
        assert "innerHTML" not in page and "<style" not in page and "style=" not in page
    for path in ("/console/nothing.js", "/console/%2e%2e%2fweb.py", "/console/__init__.py"):
        status, missing = network.api("FRA", "GET", path, token=None)
        assert status == 404 and "no such console file" in missing["error"]
    status, me = network.api("FRA", "GET", "/api/me", token="auditor")
    assert (status, me) == (200, {"user": "auditor-FRA", "role": "auditor", "node": "FRA"})
    status, types = network.api("FRA", "GET", "/api/types")
    assert status == 200 and types["types"] == describe_types()
    assert network.api("FRA", "GET", "/api/types", token="auditor")[0] == 403
    assert network.api("FRA", "GET", "/api/events", token=None)[0] == 401


def test_an_officer_attaches_files_and_the_other_side_downloads_them(
    network: Network, context: BrowserContext, tmp_path: Path
) -> None:
    # Issue 20: files go with the request, sealed end to end; the other side downloads them.
    order = b"%PDF-1.7\n" + os.urandom(120_000)  # three parts
    (tmp_path / "Ordonnance de gel.pdf").write_bytes(order)
    (tmp_path / "notes.txt").write_text("Seen at 14:03 UTC.\n")
    fra = Console(context, network, "FRA", "officer")
    fra.page.click("#nav >> text=Compose")
    fra.field("to").select_option("DEU")
    fra.field("type").select_option("preservation")
    fra.field("priority").select_option("urgent")
    fill_preservation(fra, sample_body("preservation", case_ref="ATT-CONSOLE"))
    fra.page.set_input_files(
        "#compose-files", [str(tmp_path / "Ordonnance de gel.pdf"), str(tmp_path / "notes.txt")]
    )
    fra.page.click("text=Check and send")
    expect(fra.page.locator(".card.files tr[data-file]")).to_have_count(2)
    message_id = fra.page.url.rsplit("/", 1)[1]

    def complete() -> bool:  # its parts come after it
        status, message = network.api("DEU", "GET", f"/api/messages/{message_id}")
        return status == 200 and all(f["complete"] for f in message["attachments"])

    wait_for(complete, what="the files' parts at DEU")
    deu = Console(context, network, "DEU", "officer")
    deu.page.evaluate(f"location.hash = '#/message/{message_id}'")
    first = deu.page.locator('.card.files tr[data-file="0"]')
    expect(first).to_contain_text("Ordonnance de gel.pdf")
    expect(first).to_contain_text("here")
    with deu.page.expect_download() as download_info:
        first.locator("button").click()
    saved = tmp_path / "downloaded.pdf"
    download_info.value.save_as(saved)
    assert download_info.value.suggested_filename == "Ordonnance de gel.pdf"
    assert saved.read_bytes() == order
    audited = rows(
        network.nodes["DEU"].store,
        "SELECT actor FROM audit WHERE action = 'attachment_opened' AND message_id = ?",
        (message_id,),
    )
    assert audited == [("officer-DEU",)]
    fra.check_clean()
    deu.check_clean()
