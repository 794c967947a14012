"""bench/loop_profile.py's split of py-spy's raw stacks: each sample of the loop thread to
the first kind of work its stack shows, and to what ran in its innermost frame."""

from __future__ import annotations

from pathlib import Path

from bench.loop_profile import NATIVE, OTHER, PRIMITIVES, split

LOOP = "thread (15112): MainThread;Runner.run (asyncio/runners.py:118);uv_run (core.c:464)"
SEALING = "sealing (HPKE, signature, the storage copy)"
CHECKS = "envelope checks and opening, receipt signing"
STORE = "the store: rows, statements, COMMITs, reads"


def test_each_sample_goes_to_the_first_kind_its_stack_shows(tmp_path: Path) -> None:
    raw = tmp_path / "FRA.raw"
    stacks = [
        # A signature under sealing, itself under a submission: sealing, and a primitive.
        (
            "Officers._round (network/node/officer.py:341);seal (network/core/envelope.py:300)"
            ";SigningKey.sign (network/core/crypto.py:120);crypto_sign (_sodium.abi3.so)",
            5,
        ),
        # Opening is not sealing, though its name ends so.
        (
            "Inbound.accept_envelopes (network/node/inbound.py:170)"
            ";open_envelope (network/core/envelope.py:500)"
            ";unseal (network/core/envelope.py:444)",
            3,
        ),
        # A statement under taking a receipt: the store; SQLite ran.
        (
            "Inbound._take_receipts (network/node/inbound.py:681)"
            ";Tx._apply (network/node/store.py:829);sqlite3VdbeExec (libsqlite3.so.0.8.6)",
            2,
        ),
        # Nothing the kinds name, in the interpreter's own code.
        ("Handle__run (loop.c:100)", 1),
    ]
    lines = [f"{LOOP};{stack} {count}" for stack, count in stacks]
    lines.append("thread (15113): Thread-1 (_connection_worker_thread);work (x.py:1) 7")
    raw.write_text("\n".join(lines) + "\n")

    total, kinds, ran = split(raw)

    assert total == 11  # the other thread's 7 are not the loop's
    assert kinds == {SEALING: 5, CHECKS: 3, STORE: 2, OTHER: 1}
    assert ran == {
        PRIMITIVES: 5,
        "Python code (the project's and its libraries')": 3,
        "SQLite": 2,
        NATIVE: 1,
    }
