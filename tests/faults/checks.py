"""What must hold after every fault run, read from the nodes' own stores.

- exactly once: every message in a sender's outbox is `delivered` (or later),
  its recipient holds it once, and recorded its arrival (`received`) once;
  nothing arrived that no outbox sent;
- every receipt either side holds verifies (network.core.envelope.verify_receipt),
  and each delivered message has an end-to-end receipt for the bytes it sent;
- `cpn audit verify` is clean on every node's store.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

from network.core.envelope import DEFAULT_SKEW_MS, verify_receipt
from network.core.records import Outcome
from network.node.config import load_config
from network.node.runner import load_current_roster
from tests.harness import REPO, Network, rows

__all__ = ["audit_clean", "check_run", "exactly_once", "receipts_valid", "undelivered"]

DELIVERED = ("delivered", "acknowledged", "answered")
CPN = (sys.executable, "-m", "network")


def undelivered(network: Network, sender: str) -> int:
    """Messages in `sender`'s outbox not yet delivered (read beside the running node)."""
    marks = ",".join("?" * len(DELIVERED))
    found = rows(
        network.nodes[sender].store,
        f"SELECT COUNT(*) FROM messages WHERE box = 'out' AND state NOT IN ({marks})",
        DELIVERED,
    )
    return int(found[0][0])


def exactly_once(
    network: Network, senders: list[str], accepted: set[str], refused: frozenset[str] = frozenset()
) -> int:
    """Raise AssertionError unless each outbox message arrived exactly once; the count.

    `accepted`: ids the API answered 202 for: each must be in the outbox
    (more may be, posted as the sender was killed, before its answer);
    `refused`: ids the recipient must have refused (`rejected`, in no inbox).
    """
    sent: dict[str, str] = {}  # message id -> recipient
    rejected: set[str] = set()
    for sender in senders:
        for message_id, peer, state in rows(
            network.nodes[sender].store, "SELECT id, peer, state FROM messages WHERE box = 'out'"
        ):
            if message_id in refused:
                assert state == "rejected", f"{sender}: {message_id} to {peer} is {state}"
                rejected.add(message_id)
                continue
            assert state in DELIVERED, f"{sender}: {message_id} to {peer} is {state}"
            sent[message_id] = peer
    missing = accepted - set(sent)
    assert not missing, f"answered 202 but not in an outbox: {sorted(missing)[:5]}"
    assert rejected == refused, f"not in an outbox: {sorted(refused - rejected)[:5]}"
    for node_id, node in network.nodes.items():
        inbox = {
            message_id: origin
            for message_id, origin in rows(
                node.store, "SELECT id, peer FROM messages WHERE box = 'in'"
            )
        }
        expected = {m for m, peer in sent.items() if peer == node_id}
        assert set(inbox) == expected, (
            f"{node_id}: lost {sorted(expected - set(inbox))[:5]},"
            f" unexpected {sorted(set(inbox) - expected)[:5]}"
        )
        arrivals = Counter(
            message_id
            for (message_id,) in rows(
                node.store, "SELECT message_id FROM audit WHERE action = 'received'"
            )
        )
        twice = [m for m, n in arrivals.items() if n != 1 or m not in inbox]
        assert not twice, f"{node_id}: received more than once: {twice[:5]}"
        assert len(arrivals) == len(inbox)
    return len(sent)


def receipts_valid(network: Network, skew_ms: int = DEFAULT_SKEW_MS) -> int:
    """Verify every receipt every node holds; each delivered message has one for its bytes.

    `skew_ms`: how far ahead a receipt's time may be (more, where a test moved a node's clock).
    """
    now = time.time_ns() // 1_000_000
    count = 0
    for node_id, node in network.nodes.items():
        roster = load_current_roster(load_config(node.config))
        for raw, message_id in rows(node.store, "SELECT raw, message_id FROM receipts"):
            receipt = verify_receipt(bytes(raw), roster=roster, now=now, skew_ms=skew_ms)
            assert receipt.message_id == message_id, f"{node_id}: receipt filed under another id"
            count += 1
        marks = ",".join("?" * len(DELIVERED))
        for message_id, digest in rows(
            node.store,
            f"SELECT id, digest FROM messages WHERE box = 'out' AND state IN ({marks})",
            DELIVERED,
        ):
            proofs = [
                verify_receipt(bytes(raw), roster=roster, now=now, skew_ms=skew_ms)
                for (raw,) in rows(
                    node.store,
                    "SELECT raw FROM receipts WHERE message_id = ? AND direction = 'received'"
                    " AND scope = 'end_to_end'",
                    (message_id,),
                )
            ]
            assert any(
                p.digest == bytes(digest) and p.outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE)
                for p in proofs
            ), f"{node_id}: {message_id} delivered without a receipt for its bytes"
    return count


def audit_clean(network: Network) -> None:
    """`cpn audit verify` on every node's store exits 0 (the nodes' checks run side by side)."""
    checks = {
        node_id: subprocess.Popen(
            [*CPN, "audit", "verify", "--config", str(node.config), "--workers", "1"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node_id, node in network.nodes.items()
    }
    for node_id, check in checks.items():
        output, _ = check.communicate(timeout=60)
        assert check.returncode == 0, f"{node_id}: cpn audit verify: {output}"


def check_run(
    network: Network,
    senders: list[str],
    accepted: set[str],
    refused: set[str] | frozenset[str] = frozenset(),
    skew_ms: int = DEFAULT_SKEW_MS,
) -> int:
    """All three checks; the number of messages delivered."""
    delivered = exactly_once(network, senders, accepted, frozenset(refused))
    receipts_valid(network, skew_ms)
    audit_clean(network)
    return delivered
