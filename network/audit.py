"""The audit log as a transparency log: what an entry hashes to, and the names it is signed under.

Each entry (time, actor, action, message id, detail) is a leaf of an RFC 6962
Merkle tree: its leaf hash is SHA-256(0x00 ‖ the canonical JSON of the
entry), and its position in the log is its index in the tree. The node signs
checkpoints of the tree in the C2SP `tlog-checkpoint` format under the origin
`cpn/audit/<ID>`; its peers cosign them (C2SP `tlog-cosignature`) under
`cpn/witness/<ID>`. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from network.records import Json, canonical
from network.tlog import leaf_hash

__all__ = ["checkpoint_origin", "entry_bytes", "entry_leaf", "witness_name"]


def checkpoint_origin(node: str) -> str:
    """The origin line (and signing key name) of `node`'s audit checkpoints."""
    return f"cpn/audit/{node}"


def witness_name(node: str) -> str:
    """The key name under which `node` cosigns its peers' checkpoints."""
    return f"cpn/witness/{node}"


def entry_bytes(
    time: int, actor: str, action: str, message_id: str | None, detail: Mapping[str, Json]
) -> bytes:
    """The canonical JSON of one entry: what its leaf hash covers."""
    return canonical(
        {
            "time": time,
            "actor": actor,
            "action": action,
            "message": message_id,
            "detail": dict(detail),
        }
    )


def entry_leaf(
    time: int, actor: str, action: str, message_id: str | None, detail: Mapping[str, Json]
) -> bytes:
    """The RFC 6962 leaf hash of one entry."""
    return leaf_hash(entry_bytes(time, actor, action, message_id, detail))
