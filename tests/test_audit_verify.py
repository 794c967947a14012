"""`cpn audit verify`, `export` and `proof`, and the audit API, on the stores of real nodes.

FRA and DEU (linked directly) exchange a few urgent messages, so that FRA signs
checkpoints and DEU witnesses and cosigns them; the nodes stop, and every test
then works on its own copy of FRA's store, tampered with as an intruder with
sqlite3 would, and runs the command as a user would (`python -m network audit ...`).
The export and proofs are checked with a minimal RFC 6962 implementation
written here, independent of network.core.tlog.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import itertools
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from network.core.auditlog import checkpoint_origin, dated_checkpoint
from network.core.crypto import generate_signing_key
from network.core.records import NodeId
from network.core.roster import Card, build_roster
from network.core.tlog import Checkpoint, sign_note, verify_consistency
from network.node.config import load_config
from network.node.keys import load_keeper_public, load_node_keys
from network.node.store import AuditEntry, Store
from network.node.verify import load_roster_file, verify_store
from network.samples import sample_body
from tests.harness import Network, cpn, rows, wait_for

pytestmark = pytest.mark.timeout(300)


def copy_store(source: Path, target: Path) -> Path:
    """A consistent copy of a store, running or not (SQLite's backup API)."""
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return target


# -- an independent, minimal RFC 6962 ----------------------------------------------


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle tree hash, straight from its definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def root_from_path(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root an inclusion path leads to."""
    fn, sn, r = index, size - 1, leaf
    for p in path:
        assert sn != 0
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    assert sn == 0
    return r


def entry_leaf(entry: dict[str, Any]) -> bytes:
    """SHA-256(0x00 ‖ canonical {action, actor, detail, message, time}) (ASCII keys, no floats)."""
    canonical = json.dumps(
        {
            "action": entry["action"],
            "actor": entry["actor"],
            "detail": entry["detail"],
            "message": entry["message_id"],
            "time": entry["time"],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(b"\x00" + canonical.encode()).digest()


def open_note(note: str, public: bytes) -> tuple[int, bytes]:
    """(size, root) of a C2SP checkpoint note whose Ed25519 signature by `public` verifies."""
    text, _, signatures = note.rpartition("\n\n")
    text += "\n"
    origin = text.split("\n")[0]
    line = next(s for s in signatures.splitlines() if s.startswith(f"— {origin} "))
    blob = base64.b64decode(line.split(" ")[2])
    Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], text.encode())
    _, size, root = text.split("\n")[:3]
    return int(size), base64.b64decode(root)


# -- the network ----------------------------------------------------------------------


@dataclass
class Run:
    network: Network
    fra: Path  # FRA's store, nodes stopped
    deu: Path  # DEU's store
    early: Path  # a copy of FRA's store from before DEU witnessed its newest checkpoint
    witnessed_size: int  # the size of FRA's log that DEU holds
    sent: list[str]  # FRA's messages to DEU
    api: dict[str, tuple[int, Any]]  # answers of the audit API while FRA ran
    live_verify: subprocess.CompletedProcess[str]  # cpn audit verify on the running FRA
    live_export: subprocess.CompletedProcess[str]  # cpn audit export on the running FRA
    tmp: Path

    def config(self, store: Path, name: str) -> Path:
        """A copy of FRA's config (beside it, so its relative key paths hold) using `store`."""
        original = self.network.nodes["FRA"].config
        text = original.read_text().replace('path = "../var/FRA.sqlite"', f'path = "{store}"')
        assert str(store) in text
        path = original.with_name(f"FRA-{name}.toml")
        path.write_text(text)
        return path

    def tampered(self, name: str, tamper: Callable[[sqlite3.Connection], None]) -> Path:
        store = copy_store(self.fra, self.tmp / f"{name}.sqlite")
        with sqlite3.connect(store) as db:
            tamper(db)
        db.close()
        return self.config(store, name)

    def verify(self, config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
        done = cpn("audit", "verify", "--config", str(config), "--json", *extra)
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout)


def largest_witnessed(deu: Path) -> int:
    found = rows(deu, "SELECT size FROM witnessed WHERE node = 'FRA'")
    return int(found[0][0]) if found else 0


def audit_size(store: Path) -> int:
    return int(rows(store, "SELECT COUNT(*) FROM audit")[0][0])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("audit")
    network = Network(tmp, {"FRA": ["DEU"], "DEU": []})
    fra, deu = network.nodes["FRA"].store, network.nodes["DEU"].store
    try:
        network.start("FRA", "DEU")
        sent = [network.send("FRA", "DEU", "preservation", sample_body("preservation"))]
        network.wait_state("FRA", sent[0], {"delivered"})
        wait_for(lambda: largest_witnessed(deu) > 0, what="DEU witnessing FRA's checkpoint")
        wait_for(
            lambda: rows(fra, "SELECT 1 FROM cosignatures WHERE witness = 'DEU'"),
            what="DEU's cosignature reaching FRA",
        )
        early = copy_store(fra, tmp / "early.sqlite")
        early_size = audit_size(early)

        for _ in range(2):
            sent.append(network.send("FRA", "DEU", "preservation", sample_body("preservation")))
        back = network.send("DEU", "FRA", "emergency", sample_body("emergency"))
        for message_id in sent:
            network.wait_state("FRA", message_id, {"delivered"})
        network.wait_state("DEU", back, {"delivered"})
        wait_for(
            lambda: largest_witnessed(deu) > early_size,
            what="DEU witnessing a newer checkpoint of FRA",
        )
        newest = largest_witnessed(deu)
        wait_for(
            lambda: rows(fra, "SELECT 1 FROM cosignatures WHERE size = ?", (newest,)),
            what="DEU's newest cosignature reaching FRA",
        )

        live_verify = cpn("audit", "verify", "--config", str(network.nodes["FRA"].config))
        live_export = cpn("audit", "export", "--config", str(network.nodes["FRA"].config))
        first_page = network.api("FRA", "GET", "/api/audit?limit=5", token="auditor")
        after = first_page[1]["next"] if first_page[0] == 200 else 0
        api = {
            "first_page": first_page,
            "second_page": network.api(
                "FRA", "GET", f"/api/audit?limit=5&after={after}", token="auditor"
            ),
            "one_message": network.api(
                "FRA", "GET", f"/api/audit?message={sent[0]}&limit=1000", token="auditor"
            ),
            "since_future": network.api(
                "FRA", "GET", "/api/audit?since=2999-01-01T00:00:00Z", token="auditor"
            ),
            "bad_since": network.api("FRA", "GET", "/api/audit?since=yesterday", token="auditor"),
            "too_many": network.api("FRA", "GET", "/api/audit?limit=1001", token="auditor"),
            "verify": network.api("FRA", "GET", "/api/audit/verify", token="auditor"),
            "officer": network.api("FRA", "GET", "/api/audit", token="officer"),
            "officer_verify": network.api("FRA", "GET", "/api/audit/verify", token="officer"),
            "anonymous": network.api("FRA", "GET", "/api/audit", token=None),
        }
        network.stop("DEU")
        network.stop("FRA")
    finally:
        network.close()
    witnessed_size = largest_witnessed(deu)
    return Run(network, fra, deu, early, witnessed_size, sent, api, live_verify, live_export, tmp)


def checkpoint_sizes(store: Path) -> list[int]:
    return [int(r[0]) for r in rows(store, "SELECT size FROM checkpoints ORDER BY size")]


def seq_of(store: Path, action: str, message_id: str) -> int:
    found = rows(
        store, "SELECT seq FROM audit WHERE action = ? AND message_id = ?", (action, message_id)
    )
    return int(found[0][0])


# -- verify ---------------------------------------------------------------------------


def test_an_untouched_store_verifies_stopped_and_running(run: Run) -> None:
    config = run.config(run.fra, "untouched")

    done = cpn("audit", "verify", "--config", str(config))
    code, report = run.verify(config)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified" in done.stdout
    assert run.live_verify.returncode == 0, run.live_verify.stdout + run.live_verify.stderr
    assert run.live_export.returncode == 0, run.live_export.stderr
    live = [json.loads(line) for line in run.live_export.stdout.splitlines()]
    assert live[0]["type"] == "entry" and live[-1]["type"] == "checkpoint"
    assert code == 0 and report["ok"] and report["first_problem"] is None
    assert report["entries"] == audit_size(run.fra)
    assert report["checkpoints"] == len(checkpoint_sizes(run.fra)) >= 2
    assert report["latest_checkpoint"] == report["entries"]  # signed on stop
    assert report["cosignatures"] >= 2
    assert report["envelopes"] == 4 and report["receipts"] >= 4


def test_an_edited_entry_is_named(run: Run) -> None:
    seq = seq_of(run.fra, "composed", run.sent[1])

    def edit(db: sqlite3.Connection) -> None:
        db.execute('UPDATE audit SET detail = \'{"to":"USA"}\' WHERE seq = ?', (seq,))

    config = run.tampered("edited", edit)
    done = cpn("audit", "verify", "--config", str(config))
    code, report = run.verify(config)

    assert done.returncode == 1
    assert f"entry {seq} edited" in done.stdout
    assert code == 1
    assert report["first_problem"]["kind"] == "edited"
    assert report["first_problem"]["seq"] == seq


def test_an_edit_with_its_leaf_recomputed_is_caught_by_the_checkpoint(run: Run) -> None:
    seq = seq_of(run.fra, "composed", run.sent[1])

    def edit_and_rehash(db: sqlite3.Connection) -> None:
        time_, actor, action, message_id = db.execute(
            "SELECT time, actor, action, message_id FROM audit WHERE seq = ?", (seq,)
        ).fetchone()
        detail = {"to": "USA"}
        forged = entry_leaf(
            {
                "time": time_,
                "actor": actor,
                "action": action,
                "message_id": message_id,
                "detail": detail,
            }
        )
        db.execute(
            "UPDATE audit SET detail = ?, leaf = ? WHERE seq = ?",
            (json.dumps(detail, separators=(",", ":")), forged, seq),
        )

    code, report = run.verify(run.tampered("rehashed", edit_and_rehash))

    problem = report["first_problem"]
    low = max(s for s in [0, *checkpoint_sizes(run.fra)] if s < seq)
    high = min(s for s in checkpoint_sizes(run.fra) if s >= seq)
    assert code == 1
    assert problem["kind"] == "changed"
    assert f"between checkpoint sizes {low} and {high} changed" in problem["message"]


def test_a_deleted_entry_is_named(run: Run) -> None:
    seq = seq_of(run.fra, "sealed", run.sent[0])

    code, report = run.verify(
        run.tampered("deleted", lambda db: db.execute("DELETE FROM audit WHERE seq = ?", (seq,)))
    )

    assert code == 1
    assert report["first_problem"]["kind"] == "deleted"
    assert report["first_problem"]["seq"] == seq
    assert f"entry {seq} deleted" in report["first_problem"]["message"]


def test_two_swapped_entries_are_named_reordered(run: Run) -> None:
    first = seq_of(run.fra, "composed", run.sent[2])
    second = seq_of(run.fra, "queued", run.sent[2])
    columns = "time, actor, action, message_id, detail"

    def swap(db: sqlite3.Connection) -> None:
        a = db.execute(f"SELECT {columns} FROM audit WHERE seq = ?", (first,)).fetchone()
        b = db.execute(f"SELECT {columns} FROM audit WHERE seq = ?", (second,)).fetchone()
        update = "UPDATE audit SET time=?, actor=?, action=?, message_id=?, detail=? WHERE seq=?"
        db.execute(update, (*b, first))
        db.execute(update, (*a, second))

    code, report = run.verify(run.tampered("swapped", swap))

    assert code == 1
    assert report["first_problem"]["kind"] == "reordered"
    assert f"entries {first} and {second} reordered" in report["first_problem"]["message"]


def test_a_truncated_tail_is_named(run: Run) -> None:
    sizes = checkpoint_sizes(run.fra)
    last = sizes[-1]
    # The log ends between two checkpoints: the latest pair with an entry to spare between
    # them (the checkpoint signed on stopping may follow the one before by a single entry).
    before = next(a for a, b in reversed(list(itertools.pairwise(sizes))) if b - a >= 2)
    cut_between = before + 1
    cut_before = sizes[0] - 1  # ... or before the first one

    between = run.tampered(
        "cut-between", lambda db: db.execute("DELETE FROM audit WHERE seq > ?", (cut_between,))
    )
    earlier = run.tampered(
        "cut-before", lambda db: db.execute("DELETE FROM audit WHERE seq > ?", (cut_before,))
    )

    def cut_with_checkpoints(db: sqlite3.Connection) -> None:  # the careful intruder
        db.execute("DELETE FROM audit WHERE seq > ?", (before,))
        db.execute("DELETE FROM checkpoints WHERE size > ?", (before,))
        db.execute("DELETE FROM cosignatures WHERE size > ?", (before,))

    careful = run.tampered("cut-careful", cut_with_checkpoints)

    for config, length in ((between, cut_between), (earlier, cut_before), (careful, before)):
        code, report = run.verify(config)
        problem = report["first_problem"]
        assert code == 1, config
        assert problem["kind"] == "truncated", problem
        assert f"{length} entries" in problem["message"] or f"entry {length}," in problem["message"]
    assert f"covers {last}" in run.verify(between)[1]["first_problem"]["message"]


def test_an_entry_dated_before_the_one_ahead_of_it_is_named(run: Run) -> None:
    """An intruder moves an entry back in time and rehashes it, past the checkpoints it
    kept: only the time order gives it away (the store times entries at commit)."""
    entries = audit_size(run.fra)
    seq = (entries - 1) // 8 * 8 + 1  # the first of an aligned chunk: a worker's boundary
    assert seq > 1

    def backdate(db: sqlite3.Connection) -> None:
        (earlier,) = db.execute("SELECT time FROM audit WHERE seq = ?", (seq - 1,)).fetchone()
        columns = "time, actor, action, message_id, detail"
        row = db.execute(f"SELECT {columns} FROM audit WHERE seq = ?", (seq,)).fetchone()
        entry = dict(zip(("time", "actor", "action", "message_id", "detail"), row, strict=True))
        entry.update(time=earlier - 60_000, detail=json.loads(entry["detail"]))
        db.execute(
            "UPDATE audit SET time = ?, leaf = ? WHERE seq = ?",
            (entry["time"], entry_leaf(entry), seq),
        )
        db.execute("DELETE FROM checkpoints WHERE size >= ?", (seq,))
        db.execute("DELETE FROM cosignatures WHERE size >= ?", (seq,))

    config = run.tampered("backdated", backdate)
    done = cpn("audit", "verify", "--config", str(config))
    code, report = run.verify(config)
    store = load_config(config)
    keeper = load_keeper_public(store.keeper_path)
    roster = load_roster_file(store.roster_path, keeper)
    parallel = verify_store(
        store.store_path, roster=roster, node_id="FRA", keeper=keeper, workers=2, chunk=8
    )

    assert done.returncode == 1
    assert f"entry {seq} goes back in time" in done.stdout
    assert code == 1
    assert [(p["kind"], p["seq"]) for p in report["problems"]] == [("backwards", seq)]
    assert parallel.to_json()["problems"] == report["problems"]


def test_a_checkpoint_time_is_signed_and_checked(run: Run) -> None:
    """The time a checkpoint was signed is in its note: the stored column cannot be moved,
    and a note dated before the entries it covers (signed with the node key) is named."""
    sizes = checkpoint_sizes(run.fra)
    size = sizes[-1]
    keys = load_node_keys(run.network.keys / "FRA", NodeId("FRA"))
    origin = checkpoint_origin("FRA")

    def move_stored_time(db: sqlite3.Connection) -> None:
        db.execute("UPDATE checkpoints SET time = time - 3600000 WHERE size = ?", (size,))

    def predate(db: sqlite3.Connection) -> None:
        (root,) = db.execute("SELECT root FROM checkpoints WHERE size = ?", (size,)).fetchone()
        (first,) = db.execute("SELECT time FROM audit WHERE seq = 1").fetchone()
        early = dated_checkpoint(origin, size, root, first - 1)
        forged = sign_note(early.to_text(), origin, keys.signing)
        db.execute(
            "UPDATE checkpoints SET note = ?, time = ? WHERE size = ?", (forged, first - 1, size)
        )
        db.execute("DELETE FROM cosignatures WHERE size = ?", (size,))

    moved_code, moved = run.verify(run.tampered("checkpoint-time", move_stored_time))
    early_code, early = run.verify(run.tampered("checkpoint-predated", predate))

    notes = [r[0] for r in rows(run.fra, "SELECT note FROM checkpoints")]
    assert all(note.split("\n")[3].startswith("time ") for note in notes)
    assert moved_code == 1
    assert moved["first_problem"]["kind"] == "mismatch"
    assert "is not its signed time" in moved["first_problem"]["message"]
    assert early_code == 1
    kinds = {(p["kind"], p["seq"]) for p in early["problems"]}
    assert ("backwards", size) in kinds, early["problems"]
    assert any(
        f"dated before the checkpoint at size {sizes[-2]}" in p["message"]
        for p in early["problems"]
    )


def test_a_tampered_checkpoint_or_cosignature_is_a_bad_signature(run: Run) -> None:
    size = checkpoint_sizes(run.fra)[0]

    def change_root(db: sqlite3.Connection) -> None:
        (note,) = db.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        origin, size_line, root, rest = note.split("\n", 3)
        forged_root = base64.b64encode(hashlib.sha256(root.encode()).digest()).decode()
        forged = "\n".join((origin, size_line, forged_root, rest))
        db.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (forged, size))

    def flip_cosignature(db: sqlite3.Connection) -> None:
        size_, line = db.execute("SELECT size, line FROM cosignatures LIMIT 1").fetchone()
        head, blob = line.rstrip("\n").rsplit(" ", 1)
        raw = bytearray(base64.b64decode(blob))
        raw[-1] ^= 1  # the last byte of the Ed25519 signature
        forged = f"{head} {base64.b64encode(bytes(raw)).decode()}\n"
        db.execute("UPDATE cosignatures SET line = ? WHERE size = ?", (forged, size_))

    code, report = run.verify(run.tampered("checkpoint", change_root))
    cosigned_code, cosigned = run.verify(run.tampered("cosignature", flip_cosignature))

    assert code == 1
    assert report["first_problem"]["kind"] == "bad_signature"
    assert f"checkpoint at size {size}" in report["first_problem"]["message"]
    assert cosigned_code == 1
    assert cosigned["first_problem"]["kind"] == "bad_signature"
    assert "cosignature by DEU" in cosigned["first_problem"]["message"]


def test_a_flipped_byte_in_a_stored_envelope_names_the_message(run: Run) -> None:
    message_id = run.sent[1]

    def flip(db: sqlite3.Connection) -> None:
        query = "SELECT envelope FROM envelopes WHERE message_id = ?"
        (raw,) = db.execute(query, (message_id,)).fetchone()
        doc = json.loads(raw)
        middle = len(doc["sealed"]) // 2
        swapped = "B" if doc["sealed"][middle] == "A" else "A"
        sealed = doc["sealed"][:middle] + swapped + doc["sealed"][middle + 1 :]
        forged = bytes(raw).replace(doc["sealed"].encode(), sealed.encode())
        assert len(forged) == len(raw) and forged != raw
        db.execute("UPDATE envelopes SET envelope = ? WHERE message_id = ?", (forged, message_id))

    code, report = run.verify(run.tampered("envelope", flip))

    assert code == 1
    assert report["first_problem"]["kind"] == "bad_signature"
    assert report["first_problem"]["message_id"] == message_id
    assert message_id in report["first_problem"]["message"]


def test_a_message_whose_envelope_row_is_gone_is_named(run: Run) -> None:
    message_id = run.sent[1]

    def drop(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM envelopes WHERE message_id = ?", (message_id,))

    code, report = run.verify(run.tampered("no-envelope", drop))

    assert code == 1
    assert report["first_problem"]["kind"] == "mismatch"
    assert report["first_problem"]["message_id"] == message_id
    assert "holds no envelope" in report["first_problem"]["message"]


ROW_GONE = "DELETE FROM messages WHERE id = ?"
ENVELOPE_GONE = "DELETE FROM envelopes WHERE message_id = ?"


@pytest.mark.parametrize(
    ("deletes", "said"),
    [
        # Its row deleted (by hand, or by a bug): its envelope, in a table of its own, stays.
        ((ROW_GONE,), "holds its envelope but no such message"),
        # Its row and its envelope both deleted: the log, which cannot be changed unseen,
        # still records it stored.
        ((ROW_GONE, ENVELOPE_GONE), "the store does not list it"),
    ],
    ids=["its-row", "whole"],
)
def test_a_message_taken_out_of_the_store_is_named(
    run: Run, deletes: tuple[str, ...], said: str
) -> None:
    message_id = run.sent[1]

    def drop(db: sqlite3.Connection) -> None:
        for statement in deletes:
            db.execute(statement, (message_id,))

    code, report = run.verify(run.tampered(f"taken-out-{len(deletes)}", drop))

    assert code == 1
    problems = [p for p in report["problems"] if p["message_id"] == message_id]
    assert problems and problems[0]["kind"] == "mismatch"
    assert said in problems[0]["message"]


def test_a_missing_store_is_an_error_not_a_verdict(run: Run) -> None:
    config = run.config(run.tmp / "nowhere.sqlite", "missing")
    not_a_store = run.tmp / "not-a-store.sqlite"
    not_a_store.write_bytes(b"not sqlite at all" * 100)

    missing = cpn("audit", "verify", "--config", str(config))
    damaged = cpn("audit", "verify", "--config", str(run.config(not_a_store, "damaged")))

    assert missing.returncode == 2 and "no such store file" in missing.stderr
    assert damaged.returncode == 2 and "not a cpn store" in damaged.stderr


def test_signatures_by_a_rotated_key_are_warnings_not_failures(run: Run) -> None:
    """DEU's key rotated in roster version 2: what it signed before is not forged."""
    cards = {c.id: c for c in run.network.cards}
    deu = cards["DEU"]
    rotated = Card(
        deu.id, deu.name, deu.url, generate_signing_key().verify_key(), deu.hpke_key, deu.tls_cert
    )
    now = int(time.time() * 1000)
    version_2 = run.tmp / "roster-v2.json"
    version_2.write_bytes(
        build_roster(
            [cards["FRA"], rotated],
            keeper=run.network.keeper,
            version=2,
            issued=now - 60_000,
            valid_until=now + 86_400_000,
        )
    )
    config = run.config(run.fra, "rotated")
    text = config.read_text().replace('roster = "../keys/roster.json"', f'roster = "{version_2}"')
    config.write_text(text)

    code, report = run.verify(config)
    with_old_code, with_old = run.verify(config, "--roster", str(run.network.keys / "roster.json"))

    # The store keeps every roster its node used: version 1 vouches for the old key.
    assert code == 0, report
    assert any("roster version 1 held" in w for w in report["warnings"]), report["warnings"]
    assert not [w for w in report["warnings"] if "no roster known holds" in w]
    assert with_old_code == 0, with_old
    assert any("checked with version 1" in w for w in with_old["warnings"]), with_old["warnings"]
    assert not [w for w in with_old["warnings"] if "no roster known holds" in w]


# -- witnesses ----------------------------------------------------------------------


def test_the_checkpoint_deu_holds_checks_out_and_exposes_a_rollback(run: Run) -> None:
    (note,) = rows(run.deu, "SELECT note FROM witnessed WHERE node = 'FRA'")[0]
    note_file = run.tmp / "deu-holds.txt"
    note_file.write_text(note)
    fra = run.config(run.fra, "witnessed")
    rolled_back = run.config(run.early, "rolled-back")

    code, report = run.verify(fra, "--witnessed", str(run.deu))
    file_code, from_file = run.verify(fra, "--witnessed", str(note_file))
    back_code, back = run.verify(rolled_back, "--witnessed", str(run.deu))
    alone_code, _ = run.verify(rolled_back)  # the copy is self-consistent on its own
    human = cpn("audit", "verify", "--config", str(rolled_back), "--witnessed", str(run.deu))

    assert code == 0 and report["witnessed"] == 2, report  # its row, and a receipt from FRA
    assert file_code == 0 and from_file["witnessed"] == 1
    assert alone_code == 0
    assert back_code == 1
    assert back["first_problem"]["kind"] == "inconsistent"
    assert f"witness DEU holds size {run.witnessed_size}" in back["first_problem"]["message"]
    assert "rolled back" in back["first_problem"]["message"]
    assert human.returncode == 1 and "witness DEU" in human.stdout


def test_verify_says_plainly_what_it_could_not_check_without_witnesses(run: Run) -> None:
    """`ok` means nothing was found wrong; `assurance` and `unproven` say what stands
    behind it: without a witness's own copy, a log cut at its end with its checkpoints
    (and SQLite's counter) by whoever holds the database and the node key verifies."""
    fra = run.config(run.fra, "assurance")
    cut = max(s for s in checkpoint_sizes(run.fra) if s < run.witnessed_size)

    def cut_everything(db: sqlite3.Connection) -> None:  # the most careful intruder
        db.execute("DELETE FROM audit WHERE seq > ?", (cut,))
        db.execute("DELETE FROM checkpoints WHERE size > ?", (cut,))
        db.execute("DELETE FROM cosignatures WHERE size > ?", (cut,))
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'audit'", (cut,))

    careful = run.tampered("cut-everything", cut_everything)
    human = cpn("audit", "verify", "--config", str(fra))
    code, alone = run.verify(fra)
    witnessed_code, witnessed = run.verify(fra, "--witnessed", str(run.deu))
    cut_code, cut_alone = run.verify(careful)
    caught_code, caught = run.verify(careful, "--witnessed", str(run.deu))

    assert human.returncode == 0
    assert "assurance: self-signed only" in human.stdout
    assert "unproven: " in human.stdout and "--witnessed" in human.stdout
    assert code == 0 and alone["ok"] and alone["assurance"] == "self-signed only"
    assert "node key" in alone["unproven"] and "/api/audit/verify" in alone["unproven"]
    assert witnessed_code == 0 and witnessed["assurance"] == "witnessed"
    assert witnessed["witnessed_size"] >= run.witnessed_size
    assert cut_code == 0 and cut_alone["assurance"] == "self-signed only"  # as it must: said
    assert caught_code == 1 and caught["first_problem"]["kind"] == "inconsistent"
    assert f"witness DEU holds size {run.witnessed_size}" in caught["first_problem"]["message"]


def test_a_rewritten_history_contradicts_the_witness(run: Run) -> None:
    """The early copy grown with other entries past the witnessed size, signed with FRA's key."""
    forked = copy_store(run.early, run.tmp / "forked.sqlite")
    keys = load_node_keys(run.network.keys / "FRA", NodeId("FRA"))
    origin = checkpoint_origin("FRA")

    async def rewrite() -> None:
        store = await Store.open(forked)
        try:
            while store.audit_log.size < run.witnessed_size + 2:
                async with store.transaction(int(time.time() * 1000)) as tx:
                    tx.audit([AuditEntry("node:FRA", "forged", None, {"n": 1})])
            async with store.transaction(int(time.time() * 1000)) as tx:
                checkpoint = Checkpoint(origin, store.audit_log.size, store.audit_log.root())
                note = sign_note(checkpoint.to_text(), origin, keys.signing)
                tx.checkpoint(checkpoint.size, checkpoint.root, note)
        finally:
            await store.close()

    asyncio.run(rewrite())
    config = run.config(forked, "forked")

    alone_code, _ = run.verify(config)
    code, report = run.verify(config, "--witnessed", str(run.deu))

    assert alone_code == 0  # signed by FRA's own key, consistent with itself
    assert code == 1
    assert report["first_problem"]["kind"] == "inconsistent"
    messages = [p["message"] for p in report["problems"]]
    assert f"witness DEU holds size {run.witnessed_size} with another root" in "\n".join(messages)


# -- export and proofs ------------------------------------------------------------------


def fra_public_key(run: Run) -> bytes:
    card = next(c for c in run.network.cards if c.id == "FRA")
    return card.signing_key.public_raw


def test_the_jsonl_export_lets_an_outsider_recompute_the_signed_root(run: Run) -> None:
    config = run.config(run.fra, "export")
    out = run.tmp / "fra.jsonl"

    done = cpn(
        "audit", "export", "--config", str(config), "--format", "jsonl", "--output", str(out)
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]

    assert done.returncode == 0, done.stderr
    entries = [r for r in records if r["type"] == "entry"]
    checkpoints = [r for r in records if r["type"] == "checkpoint"]
    assert [e["seq"] for e in entries] == list(range(1, audit_size(run.fra) + 1))
    assert all(e["index"] == e["seq"] - 1 for e in entries)
    leaves = [base64.b64decode(e["leaf_hash"]) for e in entries]
    assert all(entry_leaf(e) == leaf for e, leaf in zip(entries, leaves, strict=True))
    assert records[-1] is checkpoints[-1]
    for checkpoint in checkpoints:
        size, root = open_note(checkpoint["note"], fra_public_key(run))
        assert size == checkpoint["size"]
        assert checkpoint["time_signed"] is True
        assert checkpoint["note"].split("\n")[3] == f"time {checkpoint['time']}"
        assert mth(leaves[:size]) == root == base64.b64decode(checkpoint["root"])
    assert checkpoints[-1]["size"] == len(entries)
    assert any(c["cosignatures"] for c in checkpoints)
    assert entries[0]["time_rfc3339"].endswith("Z")


def test_the_csv_export_holds_every_entry_and_filters_work(run: Run) -> None:
    config = run.config(run.fra, "csv")
    out, checkpoints_out = run.tmp / "fra.csv", run.tmp / "fra-checkpoints.jsonl"

    done = cpn(
        "audit",
        "export",
        "--config",
        str(config),
        "--format",
        "csv",
        "--output",
        str(out),
        "--checkpoints",
        str(checkpoints_out),
    )
    filtered = cpn(
        "audit", "export", "--config", str(config), "--message", run.sent[0], "--action", "sealed"
    )

    assert done.returncode == 0, done.stderr
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(table) == audit_size(run.fra)
    leaves = [base64.b64decode(row["leaf_hash"]) for row in table]
    for row, leaf in zip(table, leaves, strict=True):
        entry = {**row, "time": int(row["time"]), "detail": json.loads(row["detail"])}
        entry["message_id"] = row["message_id"] or None
        assert entry_leaf(entry) == leaf
    last = json.loads(checkpoints_out.read_text().splitlines()[-1])
    assert mth(leaves) == base64.b64decode(last["root"])
    assert filtered.returncode == 0, filtered.stderr
    only = [json.loads(line) for line in filtered.stdout.splitlines()]
    selected = [r for r in only if r["type"] == "entry"]
    assert [(r["action"], r["message_id"]) for r in selected] == [("sealed", run.sent[0])]


def test_an_inclusion_proof_verifies_independently(run: Run) -> None:
    config = run.config(run.fra, "proof")
    seq = seq_of(run.fra, "composed", run.sent[0])

    done = cpn("audit", "proof", "--config", str(config), "--index", str(seq - 1))
    consistency = cpn("audit", "proof", "--config", str(config), "--old-size", "3")
    outside = cpn("audit", "proof", "--config", str(config), "--index", "100000")

    assert done.returncode == 0, done.stderr
    proof = json.loads(done.stdout)
    size, root = open_note(proof["checkpoint"], fra_public_key(run))
    assert proof["size"] == size == audit_size(run.fra)
    leaf = base64.b64decode(proof["leaf_hash"])
    assert leaf == entry_leaf(proof["entry"])
    path = [base64.b64decode(h) for h in proof["proof"]]
    assert root_from_path(leaf, seq - 1, size, path) == root
    assert consistency.returncode == 0, consistency.stderr
    steps = json.loads(consistency.stdout)
    verify_consistency(
        3,
        steps["new_size"],
        base64.b64decode(steps["old_root"]),
        base64.b64decode(steps["new_root"]),
        [base64.b64decode(h) for h in steps["proof"]],
    )
    assert outside.returncode == 2 and "outside" in outside.stderr


# -- the API ----------------------------------------------------------------------------


def test_the_auditor_reads_and_verifies_through_the_api_and_an_officer_may_not(run: Run) -> None:
    status, page = run.api["first_page"]
    second_status, second = run.api["second_page"]
    one_status, one = run.api["one_message"]
    verify_status, report = run.api["verify"]

    assert status == 200 and [e["seq"] for e in page["entries"]] == [1, 2, 3, 4, 5]
    assert page["next"] == 5 and page["entries"][0]["leaf_hash"]
    assert second_status == 200 and [e["seq"] for e in second["entries"]] == [6, 7, 8, 9, 10]
    assert one_status == 200 and one["next"] is None
    assert {e["message_id"] for e in one["entries"]} == {run.sent[0]}
    assert {"composed", "sealed", "queued", "sent"} <= {e["action"] for e in one["entries"]}
    assert run.api["since_future"] == (200, {"entries": [], "next": None})
    assert run.api["bad_since"][0] == 400 and run.api["bad_since"][1]["field"] == "since"
    assert run.api["too_many"][0] == 400 and run.api["too_many"][1]["field"] == "limit"
    assert verify_status == 200 and report["ok"] is True, report
    assert report["checkpoints"] >= 1 and report["envelopes"] >= 1
    assert run.api["officer"][0] == 403
    assert run.api["officer"][1]["error"] == "role officer may not read the audit log"
    assert run.api["officer_verify"][0] == 403
    assert run.api["anonymous"][0] == 401


def test_worker_processes_find_what_one_process_finds(run: Run) -> None:
    """The leaves hashed in parallel chunks give the report the serial walk gives, problems too."""
    sizes = checkpoint_sizes(run.fra)
    deleted = seq_of(run.fra, "sealed", run.sent[0])
    edited = seq_of(run.fra, "composed", run.sent[1])
    not_utf8 = seq_of(run.fra, "queued", run.sent[2])

    def tamper(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM audit WHERE seq = ?", (deleted,))
        db.execute('UPDATE audit SET detail = \'{"to":"USA"}\' WHERE seq = ?', (edited,))
        db.execute("UPDATE audit SET actor = CAST(X'ff00' AS TEXT) WHERE seq = ?", (not_utf8,))

    config = load_config(run.tampered("parallel", tamper))
    keeper = load_keeper_public(config.keeper_path)
    roster = load_roster_file(config.roster_path, keeper)
    untouched = copy_store(run.fra, run.tmp / "parallel-untouched.sqlite")
    entries = audit_size(untouched)
    chunk = max(8, entries // 7)  # several chunks, and a deleted or edited entry inside some

    def verify(store: Path, workers: int) -> dict[str, Any]:
        report = verify_store(
            store, roster=roster, node_id="FRA", keeper=keeper, workers=workers, chunk=chunk
        )
        return report.to_json()

    serial, parallel = verify(config.store_path, 1), verify(config.store_path, 2)
    clean_serial, clean_parallel = verify(untouched, 1), verify(untouched, 2)
    other_thread = threading.Event()  # as in a node: workers are spawned, not forked
    waiting = threading.Thread(target=other_thread.wait)
    waiting.start()
    try:
        spawned = verify(config.store_path, 2)
    finally:
        other_thread.set()
        waiting.join()

    assert parallel == serial
    assert spawned == serial
    assert clean_parallel == clean_serial
    assert clean_parallel["ok"] is True and clean_parallel["entries"] == entries
    assert sizes and clean_parallel["checkpoints"] == len(sizes)
    named = {(p["kind"], p["seq"]) for p in parallel["problems"]}
    assert {("deleted", deleted), ("edited", edited), ("edited", not_utf8)} <= named


def test_worker_processes_name_a_row_they_cannot_encode_as_one_process_does(run: Run) -> None:
    """A row the fast path cannot encode (a time beyond ±(2^53-1)) has no leaf of its own
    in a worker's chunk: the walk hashes it again, and the tree keeps its size."""
    beyond = seq_of(run.fra, "queued", run.sent[1])

    def tamper(db: sqlite3.Connection) -> None:
        db.execute("UPDATE audit SET time = ? WHERE seq = ?", (2**60, beyond))

    config = load_config(run.tampered("parallel-time", tamper))
    keeper = load_keeper_public(config.keeper_path)
    roster = load_roster_file(config.roster_path, keeper)
    entries = audit_size(config.store_path)

    def verify(workers: int) -> dict[str, Any]:
        report = verify_store(
            config.store_path,
            roster=roster,
            node_id="FRA",
            keeper=keeper,
            workers=workers,
            chunk=max(8, entries // 7),
        )
        return report.to_json()

    serial, parallel = verify(1), verify(2)

    assert parallel == serial
    assert parallel["entries"] == entries
    assert [(p["kind"], p["seq"]) for p in parallel["problems"]] == [("edited", beyond)]
