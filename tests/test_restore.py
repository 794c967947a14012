"""`cpn store restore`: a node that lost its disk gets back from its peers every message
they were told it received after the backup, and its witness takes the explained rollback.

DEU dials FRA; USA reaches DEU only through FRA. DEU receives 200 messages, is backed
up, receives 300 more (FRA's own and USA's, relayed by FRA), loses its disk and is
restored from the backup: afterwards it holds all 500, once each, under their ids and
with the receipts it had signed; its audit log verifies; FRA, its witness, recorded an
explained rollback (`log_restored`), not a fork, and cosigns DEU's log again.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from network.core.auditlog import checkpoint_origin, dated_checkpoint, entry_bytes
from network.core.protocol import CheckpointOffer, RestoreNote, checkpoint_frame
from network.core.records import NodeId
from network.core.tlog import inclusion_proof, leaf_hash, root_hash, sign_note
from network.node.keys import load_node_keys
from network.samples import sample_body
from tests.harness import Network, rows, wait_for
from tests.test_cli import CPN
from tests.test_hostile import hostile

pytestmark = pytest.mark.timeout(300)


def cpn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CPN, *args], capture_output=True, text=True, timeout=120, check=False)


def inbox(store: Path) -> list[str]:
    return [str(r[0]) for r in rows(store, "SELECT id FROM messages WHERE box = 'in'")]


def send_many(net: Network, count: int) -> list[str]:
    """`count` messages to DEU, alternately from FRA and (relayed by FRA) from USA."""
    body = sample_body("emergency")
    return [net.send("FRA" if i % 2 else "USA", "DEU", "emergency", body) for i in range(count)]


def test_a_restored_node_gets_back_all_it_receipted_and_its_witness_takes_the_rollback(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path, {"DEU": ["FRA"], "USA": ["FRA"], "FRA": []})
    deu = net.nodes["DEU"]
    fra_store = net.nodes["FRA"].store
    config = str(deu.config)
    try:
        net.start("FRA", "DEU", "USA")
        before = send_many(net, 200)
        wait_for(lambda: set(before) <= set(inbox(deu.store)), 60, what="the first 200 in")
        backup = tmp_path / "DEU-backup.sqlite"
        made = cpn("store", "backup", str(backup), "--config", config)
        assert made.returncode == 0, made.stderr
        manifest = json.loads(Path(f"{backup}.manifest.json").read_text())

        after = send_many(net, 300)
        for sender in ("FRA", "USA"):
            net.wait_all(sender, "out", 250, {"delivered"}, timeout=120)

        def witnessed() -> int:
            found = rows(fra_store, "SELECT size FROM witnessed WHERE node = 'DEU'")
            return int(found[0][0]) if found else 0

        # FRA has cosigned DEU's log well past the backup: a silent rollback would show.
        wait_for(lambda: witnessed() > manifest["audit_size"] + 250, 60, what="FRA witnessing")
        held_before = witnessed()

        net.kill("DEU")  # the disk dies
        for suffix in ("", "-wal", "-shm"):
            Path(f"{deu.store}{suffix}").unlink(missing_ok=True)
        restored = cpn("store", "restore", str(backup), "--config", config)
        assert restored.returncode == 0, restored.stderr
        assert set(inbox(deu.store)) == set(before)  # the backup, nothing more

        net.start("DEU")
        everything = set(before) | set(after)
        wait_for(lambda: set(inbox(deu.store)) >= everything, 90, what="all 500 back in DEU")
        wait_for(
            lambda: rows(deu.store, "SELECT 1 FROM audit WHERE action = 'restore_finished'"),
            60,
            what="the restore finished",
        )
        wait_for(
            lambda: rows(fra_store, "SELECT 1 FROM audit WHERE action = 'log_restored'"),
            60,
            what="FRA taking the explained rollback",
        )
        net.stop("DEU")

        ids = inbox(deu.store)
        assert len(ids) == len(set(ids)) == 500 and set(ids) == everything
        recovered = rows(deu.store, "SELECT message_id FROM audit WHERE action = 'recovered'")
        assert {r[0] for r in recovered} == set(after)  # each once, none of the backup's
        # Each recovered message keeps the receipt DEU had signed: no second one was made.
        receipts = rows(
            deu.store,
            "SELECT message_id, COUNT(*) FROM receipts WHERE direction = 'issued'"
            " GROUP BY message_id",
        )
        assert {m for m, _ in receipts} >= set(after) and all(n == 1 for _, n in receipts)
        [(detail,)] = rows(deu.store, "SELECT detail FROM audit WHERE action = 'restored'")
        said = json.loads(detail)
        assert said["backup_size"] == manifest["audit_size"]
        assert said["witnessed_size"] >= held_before and said["witnessed_by"] == ["FRA"]

        assert not rows(fra_store, "SELECT 1 FROM inconsistencies WHERE node = 'DEU'")
        [(held_note, entry)] = rows(fra_store, "SELECT held, entry FROM rollbacks")
        assert json.loads(entry)["action"] == "restored"
        assert int(held_note.split("\n")[1]) >= held_before  # the checkpoint the restore undid
        # What FRA holds now is a checkpoint DEU signed after the restore, past its entry.
        [(size, root)] = rows(fra_store, "SELECT size, root FROM witnessed WHERE node = 'DEU'")
        [(index,)] = rows(deu.store, "SELECT seq - 1 FROM audit WHERE action = 'restored'")
        assert size > index
        assert rows(deu.store, "SELECT root FROM checkpoints WHERE size = ?", (size,)) == [(root,)]

        verified = cpn("audit", "verify", "--config", config)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        net.close()


def test_restore_refuses_to_overwrite_a_store_in_place(tmp_path: Path) -> None:
    net = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    deu = net.nodes["DEU"]
    try:
        net.start("DEU")
        backup = tmp_path / "DEU-backup.sqlite"
        assert cpn("store", "backup", str(backup), "--config", str(deu.config)).returncode == 0
        net.stop("DEU")
        kept = deu.store.read_bytes()

        refused = cpn("store", "restore", str(backup), "--config", str(deu.config))
        replaced = cpn("store", "restore", str(backup), "--config", str(deu.config), "--replace")

        assert refused.returncode == 2 and "--replace" in refused.stderr
        assert replaced.returncode == 0, replaced.stderr
        [aside] = list(deu.store.parent.glob(f"{deu.store.name}.replaced-*[0-9]"))
        assert aside.read_bytes() == kept
    finally:
        net.close()


def test_a_peer_that_has_not_given_back_is_named_in_an_alert_until_it_does(
    tmp_path: Path,
) -> None:
    restore = '[restore]\nwait = "2s"\ngive_up = "3s"\n'
    net = Network(
        tmp_path, {"DEU": ["FRA", "USA"], "FRA": [], "USA": []}, extra_config={"DEU": restore}
    )
    deu = net.nodes["DEU"]
    config = str(deu.config)
    body = sample_body("emergency")
    try:
        net.start("FRA", "USA", "DEU")
        backup = tmp_path / "DEU-backup.sqlite"
        assert cpn("store", "backup", str(backup), "--config", config).returncode == 0
        from_fra = [net.send("FRA", "DEU", "emergency", body) for _ in range(5)]
        from_usa = [net.send("USA", "DEU", "emergency", body) for _ in range(5)]
        for sender in ("FRA", "USA"):
            net.wait_all(sender, "out", 5, {"delivered"})
        net.kill("DEU")
        net.stop("USA")  # down while DEU comes back
        restored = cpn("store", "restore", str(backup), "--config", config, "--replace")
        assert restored.returncode == 0, restored.stderr

        net.start("DEU")
        wait_for(lambda: set(inbox(deu.store)) >= set(from_fra), 30, what="FRA's given back")

        def incomplete() -> list[dict[str, object]]:
            status, answer = net.api("DEU", "GET", "/api/alerts")
            assert status == 200
            return [a for a in answer["alerts"] if a["alert"] == "restore_incomplete"]

        [alert] = wait_for(incomplete, 30, what="the restore_incomplete alert")
        assert "USA" in str(alert["detail"]) and "FRA" not in str(alert["detail"])
        assert not set(from_usa) & set(inbox(deu.store))
        assert not rows(deu.store, "SELECT 1 FROM audit WHERE action = 'restore_finished'")

        net.start("USA")  # it comes back: it gives back, and the restore is finished
        wait_for(lambda: set(inbox(deu.store)) >= set(from_usa), 30, what="USA's given back")
        wait_for(
            lambda: rows(deu.store, "SELECT 1 FROM audit WHERE action = 'restore_finished'"),
            30,
            what="the restore finished",
        )
    finally:
        net.close()


def test_a_witness_takes_only_a_restore_the_checkpoint_proves_and_the_node_signed(
    tmp_path: Path,
) -> None:
    """USA, linked to DEU at version 2, shows DEU checkpoints of its own log: a log of 10,
    then logs of 3 "restored from 1" with explanations that do not hold (an entry not in
    the checkpoint, another node's entry, a restore no earlier than what DEU holds) and
    finally one that does. Each bad one is a fork; the good one an explained rollback."""
    net = Network(tmp_path, {"DEU": []}, extra_nodes=("USA",))
    deu = net.nodes["DEU"].store
    usa = load_node_keys(net.keys / "USA", NodeId("USA"))
    origin = checkpoint_origin("USA")
    now = int(time.time() * 1000)

    def entry(action: str, actor: str = "node:USA", **detail: int) -> bytes:
        return entry_bytes(now, actor, action, None, detail)

    def offer(entries: list[bytes], restored: RestoreNote | None = None) -> bytes:
        leaves = [leaf_hash(e) for e in entries]
        checkpoint = dated_checkpoint(origin, len(leaves), root_hash(leaves), now)
        note = sign_note(checkpoint.to_text(), origin, usa.signing)
        return checkpoint_frame(CheckpointOffer(note, 0, (), restored))

    def explained(entries: list[bytes], index: int, proof_of: int | None = None) -> bytes:
        leaves = [leaf_hash(e) for e in entries]
        proof = inclusion_proof(leaves, index if proof_of is None else proof_of, len(leaves))
        return offer(entries, RestoreNote(entries[index], index, tuple(proof)))

    first = [entry("link_up", peer=i) for i in range(10)]
    good = [first[0], entry("node_started"), entry("restored", backup_size=1)]
    wrong_proof = explained(good, 2, proof_of=1)
    others = explained([*good[:2], entry("restored", "node:FRA", backup_size=1)], 2)
    too_late = explained([*good[:2], entry("restored", backup_size=10)], 2)

    def witnessed() -> list[tuple[object, ...]]:
        return rows(deu, "SELECT size FROM witnessed WHERE node = 'USA'")

    def problems() -> list[str]:
        found = rows(deu, "SELECT problem FROM inconsistencies WHERE node = 'USA' ORDER BY id")
        return [str(p) for (p,) in found]

    async def show() -> None:
        async with hostile(net, "USA") as ws:
            await ws.send(offer(first))
            await asyncio.to_thread(wait_for, lambda: witnessed() == [(10,)], 10)
            for count, shown in enumerate((wrong_proof, others, too_late), start=1):
                await ws.send(shown)
                await asyncio.to_thread(wait_for, lambda c=count: len(problems()) == c, 10)
            await ws.send(explained(good, 2))
            await asyncio.to_thread(wait_for, lambda: witnessed() == [(3,)], 10)

    try:
        net.start("DEU")
        asyncio.run(show())
    finally:
        net.close()

    proof, actor, late = problems()
    assert proof.startswith("restored: the entry is not in the checkpoint (inclusion proof")
    assert actor == "restored: entry: node:FRA restored, not node:USA restored"
    assert late == "truncated: size 3 after 10"  # no restore explains a log cut below it
    assert witnessed() == [(3,)]
    [(detail,)] = rows(deu, "SELECT detail FROM audit WHERE action = 'log_restored'")
    assert json.loads(detail) == {"node": "USA", "held_size": 10, "backup_size": 1, "entry": 2}
