"""Retention and deletion (issue 20, item 6), on real nodes: a rule's contents go when it
lapses (envelope, sent copy, inbox line, identifier digests, overwritten on disk), the
receipts and the log stay and still verify, the deletion is audited, a legal hold keeps a
case, and evidence packages and `cpn audit verify` work across the deleted contents.

FRA asks DEU to preserve data; both nodes delete what was delivered or received three
seconds after its last change (a rule in days is the same rule, measured the same way).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from network.cli.client import Client
from network.core.attachments import AttachmentFile
from network.core.errors import ConfigError
from network.node.config import load_config
from network.samples import sample_body
from tests.harness import Network, cpn, rows, skewed, until, wait_for
from tests.test_audit_verify import copy_store
from tests.test_config import config_text, write
from tests.test_evidence import TOOL, standalone
from tests.test_inbound import Trio, queue, trio  # noqa: F401 - `trio` is a fixture

pytestmark = pytest.mark.timeout(240)

NOTES = b"Witness statement: the seller used the address seller77@example.net.\n" * 8
RULE = """
[retention.closed]
states = ["delivered", "received", "opened", "acknowledged", "answered"]
after = "3s"
"""


# -- the rules, as the config gives them ---------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "named"),
    [
        (
            '[retention.r]\nstates = ["sent"]\nafter = "1d"',
            "retention.r.states: sent is not allowed",
        ),
        ('[retention.r]\nstates = ["queued"]\nafter = "1d"', "retention.r.states: queued"),
        ('[retention.r]\nstates = ["answered"]', "retention.r.after: required"),
        ('[retention.r]\nstates = ["answerd"]\nafter = "1d"', "'answerd' is not one of"),
        ('[retention.r]\nstates = []\nafter = "1d"', "retention.r.states: name at least one"),
        (
            '[retention.r]\nstates = ["answered"]\ntypes = ["letter"]\nafter = "1d"',
            "retention.r.types: 'letter' is not one of",
        ),
        (
            '[retention.r]\nstates = ["answered"]\nafter = "1d"\nkeep = true',
            "retention.r.keep: unknown key",
        ),
        ('[retention.r]\nstates = ["answered"]\nafter = "0d"', "retention.r.after: must be more"),
        (
            '[retention.r]\nstates = ["answered"]\nafter = "40000d"',
            "retention.r.after: must be at most 36600 days",
        ),
        ('[retention."a b"]\nstates = ["answered"]\nafter = "1d"', "a rule's name is"),
    ],
)
def test_a_bad_rule_is_refused_by_name(tmp_path: Path, rules: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(".", r"\.")):
        load_config(write(tmp_path, config_text() + rules))


def test_rules_keep_their_order_and_years_are_allowed(tmp_path: Path) -> None:
    text = config_text() + (
        '[retention.mla]\nstates = ["answered"]\ntypes = ["mla_notice"]\nafter = "3650d"\n'
        '[retention.rest]\nstates = ["answered", "withdrawn"]\nboxes = ["in", "out", "relay"]\n'
        'after = "730d"\n'
    )
    config = load_config(write(tmp_path, text))

    assert [r.name for r in config.retention] == ["mla", "rest"]
    assert config.retention[0].after_ms == 3650 * 86_400_000
    assert {str(b) for b in config.retention[1].boxes} == {"in", "out", "relay"}


# -- on real nodes ---------------------------------------------------------------------


def _sealed_parts(store: Path, message_id: str) -> list[bytes]:
    """Slices of what a deletion must destroy: the envelope's sealed body, our sealed
    copy, the sealed inbox line (64 bytes of each, from the middle)."""
    found = rows(
        store,
        "SELECT envelope, self_sealed, listing"
        " FROM messages JOIN envelopes ON message_id = id WHERE id = ?",
        (message_id,),
    )
    envelope, copy, line = found[0]
    sealed = json.loads(bytes(envelope))["sealed"]
    text = sealed if isinstance(sealed, str) else json.dumps(sealed)
    parts = [text[len(text) // 2 : len(text) // 2 + 64].encode()]
    for blob in (copy, line):
        if blob is not None:
            blob = bytes(blob)
            parts.append(blob[len(blob) // 2 : len(blob) // 2 + 64])
    return parts


def _on_disk(store: Path) -> bytes:
    """Every byte of a store: the database and its WAL."""
    wal = store.with_name(store.name + "-wal")
    return store.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def _message(network: Network, node: str, message_id: str) -> dict[str, Any]:
    status, answer = network.api(node, "GET", f"/api/messages/{message_id}")
    assert status == 200, answer
    return answer


def _deleted(network: Network, node: str, message_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (m := _message(network, node, message_id))["deleted"] and m,
        timeout=30,
        what=f"{node}'s deletion of {message_id}",
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("retention")
    network = Network(tmp, {"FRA": ["DEU"], "DEU": []}, extra_config={"FRA": RULE, "DEU": RULE})
    fra, deu = network.nodes["FRA"].store, network.nodes["DEU"].store
    result: dict[str, Any] = {"network": network, "tmp": tmp}
    try:
        network.start("DEU", "FRA")
        # DEU holds case HOLD-7 before anything of it arrives.
        hold = {"case_ref": "HOLD-7", "reason": "proceedings in the Landgericht Berlin"}
        status, placed = network.api("DEU", "POST", "/api/holds", hold)
        assert status == 201, placed
        body = sample_body("preservation", case_ref="GONE-1")
        body["data"]["identifiers"] = [{"kind": "email", "value": "seller77@example.net"}]
        # It carries a file: its part goes with it.
        fra_api = Client(network.nodes["FRA"].api, network.nodes["FRA"].tokens["officer"])
        request = {"to": "DEU", "type": "preservation", "priority": "urgent", "body": body}
        gone = fra_api.send(request, [AttachmentFile("notes.txt", "text/plain", NOTES)])["id"]
        kept = network.send(
            "FRA", "DEU", "preservation", sample_body("preservation", case_ref="HOLD-7")
        )
        network.wait_state("DEU", gone, {"received"})
        network.wait_state("DEU", kept, {"received"})
        network.wait_state("FRA", gone, {"delivered"})
        part = wait_for(
            lambda: rows(deu, "SELECT id FROM messages WHERE in_reply_to = ?", (gone,)),
            what="the file's part at DEU",
        )[0][0]
        # Before it lapses: the body reads, the identifier is found.
        assert _message(network, "DEU", gone)["body"]["case_ref"] == "GONE-1"
        status, found = network.api("DEU", "GET", "/api/search?identifier=seller77@example.net")
        assert [m["id"] for m in found["messages"]] == [gone]
        result["parts"] = {
            node: _sealed_parts(store, gone) + _sealed_parts(store, part)
            for node, store in (("FRA", fra), ("DEU", deu))
        }
        result["deu_deleted"] = _deleted(network, "DEU", gone)
        result["fra_deleted"] = _deleted(network, "FRA", gone)
        status, found = network.api("DEU", "GET", "/api/search?identifier=seller77@example.net")
        result["found_after"] = found["messages"]
        # A request that arrives after the held one, under no hold: once DEU has deleted it,
        # a sweep has passed the held one's lapse too, and left it whole.
        after = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_state("DEU", after, {"received"})
        _deleted(network, "DEU", after)
        _deleted(network, "FRA", after)
        result["held"] = _message(network, "DEU", kept)
        result["fra_kept"] = _deleted(network, "FRA", kept)  # FRA holds no hold on it
        status, released = network.api(
            "DEU", "POST", "/api/holds/release", {**hold, "reason": "judgment final"}
        )
        assert status == 200, released
        result["released"] = _deleted(network, "DEU", kept)
        network.stop("FRA")
        network.stop("DEU")
    finally:
        network.close()
    result.update(gone=gone, kept=kept, fra=fra, deu=deu, part=part)
    return result


def test_lapsed_contents_go_and_what_proves_the_exchange_stays(run: dict[str, Any]) -> None:
    for side in ("deu_deleted", "fra_deleted"):
        message = run[side]
        assert message["deleted"]["rule"] == "closed"
        assert message["body"] is None and message["header"] is None
        assert message["receipts"], "the signed receipts stay"
        actions = [step["action"] for step in message["timeline"]]
        assert "deleted" in actions
    for node in ("FRA", "DEU"):
        store = run[node.lower()]
        envelope, copy, line, digest = rows(
            store,
            "SELECT envelope, self_sealed, listing, digest"
            " FROM messages JOIN envelopes ON message_id = id WHERE id = ?",
            (run["gone"],),
        )[0]
        assert (bytes(envelope), copy, line) == (b"", None, None)
        assert len(bytes(digest)) == 32
        assert rows(store, "SELECT 1 FROM identifiers WHERE message_id = ?", (run["gone"],)) == []
        (detail,) = rows(
            store,
            "SELECT detail FROM audit WHERE action = 'deleted' AND message_id = ?",
            (run["gone"],),
        )[0]
        entry = json.loads(detail)
        assert entry["rule"] == "closed" and entry["after"] == 3000
        assert "envelope" in entry["contents"] and "identifiers" in entry["contents"]
        # Its file's part went with it, under its rule, in the same transaction.
        ((envelope, deleted),) = rows(
            store,
            "SELECT envelope, deleted FROM messages JOIN envelopes ON message_id = id WHERE id = ?",
            (run["part"],),
        )
        assert (bytes(envelope), deleted) == (b"", "closed")
        (detail,) = rows(
            store,
            "SELECT detail FROM audit WHERE action = 'deleted' AND message_id = ?",
            (run["part"],),
        )[0]
        assert json.loads(detail)["of"] == run["gone"]


def test_the_deleted_bytes_are_gone_from_the_files(run: dict[str, Any]) -> None:
    """Not only unlinked from the row: overwritten in the database and out of the WAL."""
    for node in ("FRA", "DEU"):
        disk = _on_disk(run[node.lower()])
        for part in run["parts"][node]:
            assert len(part) == 64
            assert part not in disk, f"{node} still holds deleted bytes on disk"


def test_a_search_no_longer_finds_a_deleted_identifier(run: dict[str, Any]) -> None:
    assert run["found_after"] == []


def test_a_legal_hold_keeps_a_case_until_released(run: dict[str, Any]) -> None:
    assert run["held"]["deleted"] is None
    assert run["held"]["body"]["case_ref"] == "HOLD-7"
    assert run["fra_kept"]["deleted"]["rule"] == "closed"  # the hold was DEU's alone
    assert run["released"]["deleted"]["rule"] == "closed"
    placed = rows(run["deu"], "SELECT detail FROM audit WHERE action = 'hold_placed'")
    released = rows(run["deu"], "SELECT detail FROM audit WHERE action = 'hold_released'")
    assert json.loads(placed[0][0])["reason"] == "proceedings in the Landgericht Berlin"
    assert json.loads(released[0][0])["reason"] == "judgment final"
    assert "HOLD-7" not in placed[0][0]  # the case by its keyed digest, as messages hold it


def test_audit_verify_accounts_for_every_deletion(run: dict[str, Any]) -> None:
    network = run["network"]
    for node in ("FRA", "DEU"):
        done = cpn("audit", "verify", "--config", str(network.nodes[node].config))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "contents deleted under retention rules: 4 under rule closed" in done.stdout


def test_an_evidence_package_verifies_across_deleted_contents(
    run: dict[str, Any], tmp_path: Path
) -> None:
    network = run["network"]
    out = tmp_path / "gone.json"
    made = cpn(
        "evidence",
        "export",
        run["gone"],
        "--config",
        str(network.nodes["FRA"].config),
        "-o",
        str(out),
        "--body",
    )
    assert made.returncode == 0, made.stderr
    package = json.loads(out.read_text())
    (item,) = [m for m in package["messages"] if m["id"] == run["gone"]]
    assert "envelope" not in item and "plaintext" not in item
    assert item["deleted"]["rule"] == "closed"
    checked = cpn("evidence", "verify", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "were deleted under retention rule closed" in checked.stdout
    keeper = network.keys / "authority" / "keeper.json"
    pinned = standalone.b64url(json.loads(keeper.read_text())["public"], "keeper")
    facts = standalone.verify(out.read_bytes(), pinned)
    assert any("deleted under retention rule closed" in f for f in facts)

    # Without the log's deletion entry, neither verifier takes the package.
    stripped = json.loads(out.read_text())
    stripped["audit"]["entries"] = [
        e
        for e in stripped["audit"]["entries"]
        if json.loads(standalone.b64url(e["entry"], "e")).get("action") != "deleted"
    ]
    bad = tmp_path / "stripped.json"
    bad.write_text(json.dumps(stripped))
    refused = cpn("evidence", "verify", str(bad))
    assert refused.returncode == 1
    assert f"the log holds no deletion of message {run['gone']}" in refused.stdout + refused.stderr
    with pytest.raises(standalone.Failed, match="no deletion"):
        standalone.verify(bad.read_bytes(), pinned)

    # Another digest than the one the receipts name: refused by the receipts.
    other = json.loads(out.read_text())
    (forged,) = [m for m in other["messages"] if m["id"] == run["gone"]]
    forged["deleted"]["digest"] = forged["deleted"]["digest"][::-1]
    bad.write_text(json.dumps(other))
    assert cpn("evidence", "verify", str(bad)).returncode == 1
    with pytest.raises(standalone.Failed):
        standalone.verify(bad.read_bytes(), pinned)
    assert TOOL.exists()


def test_retention_run_deletes_on_a_stopped_nodes_store(tmp_path: Path) -> None:
    """`cpn retention run`: what the node does by itself, on its store, with the node down;
    a message whose rule has not lapsed, or that no rule covers, keeps its contents."""
    network = Network(
        tmp_path,
        {"FRA": ["DEU"], "DEU": []},
        extra_config={
            "DEU": '[retention.long]\nstates = ["received"]\ntypes = ["emergency"]\n'
            'after = "1d"\n[retention.later]\nstates = ["received"]\nafter = "1h"\n'
        },
    )
    try:
        network.start("DEU", "FRA")
        sent = network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        urgent = network.send("FRA", "DEU", "emergency", sample_body("emergency"))
        network.wait_state("DEU", sent, {"received"})
        network.wait_state("DEU", urgent, {"received"})
        network.stop("DEU")
    finally:
        network.close()
    config = str(network.nodes["DEU"].config)
    later = skewed("+2h")  # the second rule lapses while the node is down; the first does not
    done = cpn("retention", "run", "--config", config, env=later)
    assert done.returncode == 0, done.stderr
    assert "1 under rule later" in done.stdout
    store = network.nodes["DEU"].store
    state = dict(rows(store, "SELECT id, deleted FROM messages"))
    # The emergency is the first rule's (a day), though the second's hour is over.
    assert state == {sent: "later", urgent: None}
    again = cpn("retention", "run", "--config", config, env=later)
    assert "none lapsed" in again.stdout
    verified = cpn("audit", "verify", "--config", config, env=later)
    assert verified.returncode == 0, verified.stdout
    assert "1 under rule later" in verified.stdout

    # Whoever empties an envelope behind the node's back is named: the log has no deletion.
    copy = tmp_path / "tampered.sqlite"
    copy_store(store, copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE envelopes SET envelope = x'' WHERE message_id = ?", (urgent,))
    db.close()
    original = network.nodes["DEU"].config
    tampered = original.with_name("DEU-tampered.toml")
    tampered.write_text(
        re.sub(r'(?m)^path = ".*"$', f'path = "{copy}"', original.read_text(), count=1)
    )
    assert str(copy) in tampered.read_text()
    refused = cpn("audit", "verify", "--config", str(tampered))
    assert refused.returncode == 1
    assert f"message {urgent}: its envelope is gone, and the log records no deletion" in (
        refused.stdout
    )


async def test_a_message_deleted_as_it_is_read_shows_no_contents(
    trio: Trio,  # noqa: F811
) -> None:
    """A sweep that deletes a message's contents between the read of its row and the
    reading's transaction: the message shown is the one that transaction leaves, deleted,
    and so without its body (it showed the body it had opened, marked deleted)."""
    node = trio["FRA"]
    store = node.context.store
    row = await queue(node)
    officer = await node.officers.authenticate(await node.officers.add_user("olivia", "officer"))
    assert officer is not None
    async with store.transaction(trio.clock()) as sweep:  # the write lock, held
        reading = asyncio.create_task(node.reading.read_message(row.id, officer))
        await until(lambda: store._lock.waiting)  # it read the row, and waits to write
        sweep.delete_contents(row.id, "closed")
    shown = await asyncio.wait_for(reading, 5)
    assert shown is not None
    assert shown["deleted"] == {"rule": "closed", "at": trio.clock()}
    assert shown["body"] is None and shown["header"] is None
