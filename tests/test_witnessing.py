"""Checkpoints of each node's audit log, witnessed by its peers, with real nodes."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from network.core.auditlog import checkpoint_origin, witness_name
from network.core.crypto import VerifyKey
from network.core.tlog import open_checkpoint, verify_cosignature
from network.samples import sample_body
from tests.harness import Network, rows, wait_for

pytestmark = pytest.mark.timeout(180)


def signing_key(network: Network, node_id: str) -> VerifyKey:
    card = next(c for c in network.cards if c.id == node_id)
    return card.signing_key


def test_checkpoints_are_signed_and_cosigned_by_the_peer(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    try:
        network.start("DEU", "FRA")
        fra, deu = network.nodes["FRA"].store, network.nodes["DEU"].store
        # A receipt carries the latest checkpoint its signer holds: DEU's first, once signed.
        wait_for(lambda: rows(deu, "SELECT 1 FROM checkpoints"), what="DEU's first checkpoint")
        message_id = network.send(
            "FRA", "DEU", "preservation", sample_body("preservation"), priority="flash"
        )
        network.wait_state("FRA", message_id, {"delivered"})  # DEU's receipt is kept
        wait_for(
            lambda: rows(fra, "SELECT 1 FROM cosignatures WHERE witness = 'DEU'"),
            what="DEU's cosignature of FRA's checkpoint",
        )
        wait_for(
            lambda: rows(deu, "SELECT 1 FROM cosignatures WHERE witness = 'FRA'"),
            what="FRA's cosignature of DEU's checkpoint",
        )
    finally:
        network.close()

    origin = checkpoint_origin("FRA")
    size, note, line = rows(
        fra,
        "SELECT c.size, c.note, s.line FROM checkpoints c JOIN cosignatures s USING (size)"
        " ORDER BY c.size DESC LIMIT 1",
    )[0]
    checkpoint = open_checkpoint(str(note), origin, {origin: signing_key(network, "FRA")})
    assert checkpoint.size == size > 0
    when = verify_cosignature(
        str(note) + str(line), witness_name("DEU"), signing_key(network, "DEU")
    )
    assert abs(when - time.time()) < 300
    # Receipts carry the receiver's latest checkpoint, under its signature.
    (raw,) = rows(fra, "SELECT raw FROM receipts WHERE signer = 'DEU' AND scope = 'end_to_end'")[0]
    carried = json.loads(bytes(raw))["receipt"]["checkpoint"]  # type: ignore[arg-type]
    deu_origin = checkpoint_origin("DEU")
    deu_key = signing_key(network, "DEU")
    assert open_checkpoint(carried, deu_origin, {deu_origin: deu_key}).size >= 1
    held = rows(deu, "SELECT size FROM witnessed WHERE node = 'FRA'")
    assert held and int(held[0][0]) >= 1  # type: ignore[call-overload]


def test_a_node_whose_log_was_rolled_back_is_caught_by_its_witness(tmp_path: Path) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    fra, deu = network.nodes["FRA"].store, network.nodes["DEU"].store
    try:
        network.start("DEU", "FRA")
        network.stop("FRA")
        earlier = tmp_path / "FRA-earlier.sqlite"
        shutil.copy(fra, earlier)  # the intruder's copy, taken before what they will hide
        network.start("FRA")
        for _ in range(3):
            network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_all("FRA", "out", 3, {"delivered"})

        def witnessed_size() -> int:
            found = rows(deu, "SELECT size FROM witnessed WHERE node = 'FRA'")
            return int(found[0][0]) if found else 0  # type: ignore[call-overload]

        hidden = len(rows(earlier, "SELECT seq FROM audit")) + 3
        wait_for(lambda: witnessed_size() > hidden, what="DEU to witness what FRA will hide")
        network.stop("FRA")
        for suffix in ("", "-wal", "-shm"):
            Path(str(fra) + suffix).unlink(missing_ok=True)
        shutil.copy(earlier, fra)  # FRA's log rolled back
        network.start("FRA")
        wait_for(
            lambda: rows(deu, "SELECT 1 FROM inconsistencies WHERE node = 'FRA'"),
            what="DEU to catch FRA's rolled-back log",
        )
    finally:
        network.close()

    held, shown, problem = rows(
        deu, "SELECT held, shown, problem FROM inconsistencies WHERE node = 'FRA'"
    )[0]
    assert "truncated" in str(problem) or "rewritten" in str(problem)
    origin = checkpoint_origin("FRA")
    key = {origin: signing_key(network, "FRA")}
    # Both checkpoints are FRA's own signed statements: portable proof of the rollback.
    first, second = (
        open_checkpoint(str(held), origin, key),
        open_checkpoint(str(shown), origin, key),
    )
    assert first != second
    audited = rows(deu, "SELECT detail FROM audit WHERE action = 'log_inconsistent'")
    assert audited and "FRA" in str(audited[0][0])


def test_an_entry_written_by_another_process_joins_the_running_nodes_log(
    tmp_path: Path,
) -> None:
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    fra = network.nodes["FRA"]
    try:
        network.start("DEU", "FRA")
        added = subprocess.run(
            [
                sys.executable,
                "-m",
                "network",
                "user",
                "add",
                "night-duty",
                "--role",
                "officer",
                "--config",
                str(fra.config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert added.returncode == 0, added.stderr
        network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_all("FRA", "out", 1, {"delivered"})
        network.stop("FRA")
        verified = subprocess.run(
            [sys.executable, "-m", "network", "audit", "verify", "--config", str(fra.config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        network.close()

    seqs = [int(r[0]) for r in rows(fra.store, "SELECT seq FROM audit ORDER BY seq")]  # type: ignore[call-overload]
    assert seqs == list(range(1, len(seqs) + 1))
    actions = [r[0] for r in rows(fra.store, "SELECT action FROM audit ORDER BY seq")]
    assert "token_issued" in actions and actions.index("token_issued") < actions.index("composed")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_api_asks_the_witness_and_catches_a_log_cut_after_its_last_checkpoint(
    tmp_path: Path,
) -> None:
    """FRA's log is cut, while FRA is stopped, back to a checkpoint DEU cosigned, with the
    newer checkpoints, their cosignatures and SQLite's counter: the store is consistent with
    itself. Restarted, FRA asks DEU over the link what it holds, and DEU's newer cosigned
    checkpoint names the truncation; the same answer, saved to a file, does it offline."""
    network = Network(tmp_path, {"FRA": ["DEU"], "DEU": []})
    fra, deu = network.nodes["FRA"], network.nodes["DEU"].store

    def witnessed_size() -> int:
        found = rows(deu, "SELECT size FROM witnessed WHERE node = 'FRA'")
        return int(found[0][0]) if found else 0  # type: ignore[call-overload]

    def deu_answered() -> dict[str, object] | None:
        status, report = network.api("FRA", "GET", "/api/audit/verify", token="auditor")
        assert status == 200, report
        replies = report["witnesses"]
        return report if [r["status"] for r in replies] == ["holds"] else None

    try:
        network.start("DEU", "FRA")
        network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        wait_for(lambda: witnessed_size() > 0, what="DEU witnessing FRA's first checkpoint")
        cut = witnessed_size()
        for _ in range(2):
            network.send("FRA", "DEU", "preservation", sample_body("preservation"))
        network.wait_all("FRA", "out", 3, {"delivered"})
        wait_for(lambda: witnessed_size() > cut + 2, what="DEU witnessing a newer checkpoint")
        held = witnessed_size()
        before = wait_for(deu_answered, what="DEU's answer about FRA's log")
        network.stop("FRA")

        with sqlite3.connect(fra.store) as db:  # the intruder, with the database and the key
            db.execute("DELETE FROM audit WHERE seq > ?", (cut,))
            db.execute("DELETE FROM checkpoints WHERE size > ?", (cut,))
            db.execute("DELETE FROM cosignatures WHERE size > ?", (cut,))
            db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'audit'", (cut,))
        db.close()
        network.start("FRA")
        after = wait_for(deu_answered, what="DEU's answer about FRA's cut log")
        (reply,) = after["witnesses"]  # type: ignore[index]
        note_file = tmp_path / "deu-answer.txt"
        note_file.write_text(reply["note"])
        network.stop("FRA")
        alone = cpn_verify(fra.config)
        offline = cpn_verify(fra.config, "--witnessed", str(note_file))
    finally:
        network.close()

    assert before["ok"] is True and before["assurance"] == "witnessed", before
    assert after["ok"] is False
    problem = after["first_problem"]
    assert problem["kind"] == "inconsistent", after  # type: ignore[index]
    assert f"witness DEU holds size {held}" in problem["message"]  # type: ignore[index]
    assert reply["peer"] == "DEU" and reply["size"] == held and reply["cosigned_at"]
    assert alone.returncode == 0, alone.stdout  # the cut store is consistent with itself ...
    assert "assurance: self-signed only" in alone.stdout  # ... and says what that is worth
    assert offline.returncode == 1, offline.stdout
    assert f"witness deu-answer.txt holds size {held}" in offline.stdout


def cpn_verify(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "network", "audit", "verify", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
