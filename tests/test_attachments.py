"""Attachments (issue 20, item 1), on real nodes: files sent with a request, named and hashed
in the signed body, carried in parts end to end (relayed by a node that cannot read them),
joined and checked by the recipient, downloaded by its officers (audited); a flash message
overtakes a file in flight; a broken link resumes where it stopped; bad files are refused
by name.

FRA sends to USA through DEU (FRA links only DEU, DEU links USA).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from network.cli.client import Client
from network.core.attachments import PART_BYTES, AttachmentFile
from network.core.errors import ApiError
from network.samples import sample_body
from tests.faults.proxy import Proxy
from tests.harness import Network, cpn, rows, wait_for

pytestmark = pytest.mark.timeout(300)

MARKER = b"CPN-ATTACHMENT-PLAINTEXT-MARKER-7f3a"


def _pdf(size: int) -> bytes:
    """A PDF-looking file of `size` bytes: the header, a marker, random filler."""
    head = b"%PDF-1.7\n" + MARKER + b"\n"
    return head + os.urandom(size - len(head))


def _client(network: Network, node: str, role: str = "officer") -> Client:
    return Client(network.nodes[node].api, network.nodes[node].tokens[role], timeout=60)


def _complete(network: Network, node: str, message_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status, message = network.api(node, "GET", f"/api/messages/{message_id}")
        if status == 404:
            return None  # not here yet: routes are learned, the relay passes it on
        assert status == 200, message
        files = message["attachments"]
        return message if files and all(f["complete"] for f in files) else None

    return wait_for(done, timeout=120, what=f"{node}'s copy of every part of {message_id}")


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, Proxy]]:
    """FRA, DEU and USA; DEU reaches USA through a proxy (`usa_link`)."""
    tmp = tmp_path_factory.mktemp("attachments")
    network = Network(
        tmp,
        {"FRA": ["DEU"], "DEU": ["USA"], "USA": []},
        extra_config={"FRA": "[attachments]\nmax_file_mib = 9\nmax_message_mib = 12\n"},
        proxied=("USA",),
    )
    usa = network.nodes["USA"]
    assert usa.proxy_socket is not None
    proxy = Proxy(usa.proxy_socket, usa.listen_port).start()
    try:
        network.start("USA", "DEU", "FRA")
        yield network, proxy
    finally:
        proxy.close()
        network.close()


@pytest.fixture(scope="module")
def network(relayed: tuple[Network, Proxy]) -> Network:
    return relayed[0]


@pytest.fixture
def usa_link(relayed: tuple[Network, Proxy]) -> Iterator[Proxy]:
    """The link from DEU to USA, to slow down; as fast as loopback again after the test."""
    proxy = relayed[1]
    yield proxy
    proxy.delay(0)


def test_files_travel_end_to_end_through_a_relay_that_cannot_read_them(
    network: Network, tmp_path: Path
) -> None:
    report = _pdf(3 * PART_BYTES + 1234)  # four parts, the last one short
    notes = "Procès-verbal d'audition — Kontoauszug für März\n".encode() * 20
    (tmp_path / "report.pdf").write_bytes(report)
    (tmp_path / "Procès-verbal.txt").write_bytes(notes)
    body = sample_body("preservation", case_ref="ATT-1")
    (tmp_path / "request.json").write_text(json.dumps({"body": body}))
    sent = cpn(
        "send",
        "--to",
        "USA",
        "--type",
        "preservation",
        "--priority",
        "urgent",
        "--file",
        str(tmp_path / "request.json"),
        "--attach",
        str(tmp_path / "report.pdf"),
        "--attach",
        str(tmp_path / "Procès-verbal.txt"),
        env=network.cli_env("FRA"),
    )
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.split()[1].rstrip(":")

    received = _complete(network, "USA", message_id)
    files = received["attachments"]
    assert [(f["name"], f["media_type"], f["size"], f["parts"]) for f in files] == [
        ("report.pdf", "application/pdf", len(report), 4),
        ("Procès-verbal.txt", "text/plain", len(notes), 1),
    ]
    # Named and hashed in the body the sender signed.
    signed = received["body"]["attachments"]
    assert signed[0]["sha256"] == files[0]["sha256"]
    # The officer's download: the very bytes, checked against the signed SHA-256.
    usa = _client(network, "USA")
    assert usa.attachment(message_id, 0) == ("report.pdf", report)
    assert usa.attachment(message_id, 1) == ("Procès-verbal.txt", notes)
    opened = rows(
        network.nodes["USA"].store,
        "SELECT actor, detail FROM audit WHERE action = 'attachment_opened' AND message_id = ?",
        (message_id,),
    )
    assert [json.loads(d)["name"] for _, d in opened] == ["report.pdf", "Procès-verbal.txt"]
    # The inbox shows the request, not its parts; the year's statistics count no part.
    status, inbox = network.api("USA", "GET", "/api/messages?box=in")
    assert status == 200
    assert [m["id"] for m in inbox["messages"]] == [message_id]
    year = datetime.datetime.fromtimestamp(received["created"] / 1000, datetime.UTC).year
    status, statistics = network.api("USA", "GET", f"/api/statistics?year={year}")
    assert status == 200 and "attachment_part" not in json.dumps(statistics)
    # The sender sees its parts signed for; it can read back what it sent.
    sender = _complete(network, "FRA", message_id)
    assert all(f["arrived"] == f["parts"] for f in sender["attachments"])
    assert _client(network, "FRA").attachment(message_id, 0)[1] == report
    # The relay held every part, sealed: nothing of the file in clear in its store.
    relayed = rows(
        network.nodes["DEU"].store, "SELECT COUNT(*), MIN(type) FROM messages WHERE box = 'relay'"
    )
    assert relayed[0] == (6, "")  # the request and its five parts, of a type it cannot know
    deu = network.nodes["DEU"].store
    disk = deu.read_bytes() + deu.with_name(deu.name + "-wal").read_bytes()
    assert MARKER not in disk and notes[:40] not in disk


def test_a_flash_message_overtakes_a_file_in_flight(network: Network, usa_link: Proxy) -> None:
    big = _pdf(8 * 1024 * 1024)  # 182 parts
    # A round trip of 0.6 s between DEU and USA for each window of parts: the file takes
    # seconds, so a flash message delivered after it would be the flash message waiting,
    # not loopback outrunning the test's look at it.
    usa_link.delay(0.3)
    fra = _client(network, "FRA")
    request = {
        "to": "USA",
        "type": "preservation",
        "priority": "routine",
        "body": sample_body("preservation", case_ref="ATT-BIG"),
    }
    with_file = fra.send(request, [AttachmentFile("disk-image.pdf", "application/pdf", big)])
    flash = network.send("FRA", "USA", "emergency", sample_body("emergency"), priority="flash")
    network.wait_state("FRA", flash, {"delivered"})
    store = network.nodes["FRA"].store
    parts_left = rows(
        store,
        "SELECT COUNT(*) FROM messages WHERE in_reply_to = ? AND attachment IS NOT NULL"
        " AND state NOT IN ('delivered')",
        (with_file["id"],),
    )[0][0]
    assert parts_left > 0, "the flash message waited for the whole file"
    usa_link.delay(0)
    _complete(network, "USA", with_file["id"])
    name, data = _client(network, "USA").attachment(with_file["id"], 0)
    assert name == "disk-image.pdf"
    assert hashlib.sha256(data).digest() == hashlib.sha256(big).digest()


def test_a_broken_link_resumes_where_it_stopped(network: Network, usa_link: Proxy) -> None:
    big = _pdf(6 * 1024 * 1024)  # 137 parts
    # 0.3 s each way between DEU and USA: a window of parts lands at USA, the next one a
    # round trip later, so USA stops with some of them held, never all. At loopback's
    # pace all 137 could land between two looks of the wait (CI, 2026-12-07).
    usa_link.delay(0.3)
    fra = _client(network, "FRA")
    request = {
        "to": "USA",
        "type": "preservation",
        "priority": "urgent",
        "body": sample_body("preservation", case_ref="ATT-BROKEN"),
    }
    sent = fra.send(request, [AttachmentFile("evidence.pdf", "application/pdf", big)])
    usa = network.nodes["USA"].store
    count = "SELECT COUNT(*) FROM messages WHERE in_reply_to = ? AND attachment IS NOT NULL"
    wait_for(lambda: rows(usa, count, (sent["id"],))[0][0] >= 20, what="some parts at USA")
    network.stop("USA")
    usa_link.delay(0)
    held = rows(usa, count, (sent["id"],))[0][0]
    assert 20 <= held < 137
    network.start("USA")
    _complete(network, "USA", sent["id"])
    assert _client(network, "USA").attachment(sent["id"], 0)[1] == big
    # What USA held before the break was not sent again: only what was in flight was.
    again = rows(
        usa,
        "SELECT COUNT(*) FROM audit WHERE action = 'duplicate' AND message_id IN"
        " (SELECT id FROM messages WHERE in_reply_to = ?)",
        (sent["id"],),
    )[0][0]
    assert again <= 64, f"{again} parts came twice: the transfer started over"


@pytest.mark.parametrize(
    ("files", "status", "field"),
    [
        (
            [AttachmentFile("x.pdf", "application/pdf", b"not a pdf")],
            400,
            "body.attachments[0].media_type",
        ),
        (
            [AttachmentFile("x.exe", "application/x-msdownload", b"MZ")],
            400,
            "body.attachments[0].media_type",
        ),
        ([AttachmentFile("../x.txt", "text/plain", b"hello")], 400, "body.attachments[0].name"),
        (
            [AttachmentFile("x.txt", "text/plain", b"\xff\xfe")],
            400,
            "body.attachments[0].media_type",
        ),
        ([AttachmentFile("x.txt", "text/plain", b"")], 400, "body.attachments[0].size"),
        (
            [AttachmentFile("big.pdf", "application/pdf", b"%PDF-" + bytes(10 * 1024 * 1024))],
            413,
            "attachments[0]",
        ),
    ],
)
def test_a_bad_file_is_refused_by_name_and_nothing_is_sent(
    network: Network, files: list[AttachmentFile], status: int, field: str
) -> None:
    fra = _client(network, "FRA")
    before = rows(network.nodes["FRA"].store, "SELECT COUNT(*) FROM messages")[0][0]
    request = {
        "to": "USA",
        "type": "preservation",
        "priority": "urgent",
        "body": sample_body("preservation"),
    }
    with pytest.raises(ApiError) as refused:
        fra.send(request, files)
    assert (refused.value.status, refused.value.field) == (status, field)
    assert rows(network.nodes["FRA"].store, "SELECT COUNT(*) FROM messages")[0][0] == before


def test_parts_are_the_nodes_to_send_and_attachments_the_nodes_to_name(network: Network) -> None:
    part = sample_body("attachment_part")
    status, answer = network.api(
        "FRA",
        "POST",
        "/api/messages",
        {"to": "USA", "type": "attachment_part", "priority": "routine", "body": part},
    )
    assert (status, answer["field"]) == (400, "type")
    forged = sample_body("preservation")
    forged["attachments"] = [
        {
            "name": "a.pdf",
            "media_type": "application/pdf",
            "size": 10,
            "sha256": "A" * 43,
            "parts": 1,
        }
    ]
    status, answer = network.api(
        "FRA",
        "POST",
        "/api/messages",
        {"to": "USA", "type": "preservation", "priority": "urgent", "body": forged},
    )
    assert (status, answer["field"]) == (400, "body.attachments")


def test_an_answer_carries_the_data_disclosed(network: Network, tmp_path: Path) -> None:
    """The requested Party answers with a file (the traffic data, as CSV): `cpn reply
    --attach`, through the relay, downloaded by the requester with `cpn attachment`."""
    request = network.send("FRA", "USA", "locate", sample_body("locate"))
    network.wait_state("USA", request, {"received"})
    table = "time,source,destination\n2026-11-19T14:03:00Z,203.0.113.45,198.51.100.7\n"
    (tmp_path / "traffic.csv").write_text(table)
    replied = cpn(
        "reply",
        request,
        "--status",
        "completed",
        "--note",
        "The path, as logged.",
        "--attach",
        str(tmp_path / "traffic.csv"),
        "--json",
        env=network.cli_env("USA"),
    )
    assert replied.returncode == 0, replied.stderr
    answer = json.loads(replied.stdout)["id"]
    _complete(network, "FRA", answer)
    saved = cpn(
        "attachment", answer, "0", "-o", str(tmp_path / "got.csv"), env=network.cli_env("FRA")
    )
    assert saved.returncode == 0, saved.stderr
    assert (tmp_path / "got.csv").read_text() == table
