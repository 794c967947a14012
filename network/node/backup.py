"""An online backup of a node's store: consistent, verified, described by a manifest.

`backup_store` copies the store while the node runs (SQLite's online backup API, in
one step: one read snapshot, so the copy is a state the store was in), checks the copy
as an auditor would (`verify_store`: every entry, checkpoint, signature and receipt),
and only then puts it in place, beside a manifest that says what it holds: its size and
SHA-256, the audit tree's size and root, the newest signed checkpoint. A copy that does
not verify is not kept.

The manifest is what a restore starts from: the tree size and root say exactly which
part of the log the backup holds, so that what peers were told afterwards can be asked
for again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from network.core.errors import StoreError
from network.core.records import Json, b64encode
from network.core.roster import Roster
from network.node.auditfile import snapshot, stored_tree
from network.node.verify import VerifyReport, verify_store

__all__ = [
    "RESTORE_MARGIN_MS",
    "Backup",
    "Restored",
    "backup_store",
    "restore_marker",
    "restore_store",
]

# Peers are asked back what they hold our receipts for from this long before the backup's
# newest entry: a message committed while the copy was taken is asked again, never missed
# (what the backup holds comes back as a duplicate and is dropped).
RESTORE_MARGIN_MS = 3600 * 1000


@dataclass(frozen=True, slots=True)
class Backup:
    path: Path
    manifest: dict[str, Json]
    report: VerifyReport


def _copy(source: Path, target: Path) -> None:
    """`source` copied into `target` at one moment, while others may write to it."""
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{source}: cannot open the store: {exc}") from exc
    try:
        dst = sqlite3.connect(target)
        try:
            src.execute("PRAGMA busy_timeout = 10000")
            src.backup(dst)  # all pages in one step: one consistent snapshot
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise StoreError(f"backup of {source} failed: {exc}") from exc
    finally:
        src.close()
    with open(target, "rb") as f:
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def backup_store(
    source: Path, out: Path, *, roster: Roster, node_id: str, now: int
) -> Backup | VerifyReport:
    """Copy, verify and describe; the Backup, or the report of a copy that did not verify
    (then nothing is left at `out`). Raises StoreError when the copy cannot be made."""
    if out.exists():
        raise StoreError(f"{out} exists: a backup never overwrites a file")
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a node's first backup
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _copy(source, partial)
        report = verify_store(partial, roster=roster, node_id=node_id)
        if not report.ok:
            return report
        with snapshot(partial) as db:
            tree = stored_tree(db)
            row = db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
            latest = row.fetchone()
            schema = int(db.execute("PRAGMA user_version").fetchone()[0])
            messages = int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        manifest: dict[str, Json] = {
            "node": node_id,
            "made": now,
            "file": out.name,
            "bytes": partial.stat().st_size,
            "sha256": _sha256(partial),
            "schema": schema,
            "messages": messages,
            "audit_size": tree.size,
            "audit_root": b64encode(tree.root()),
            "checkpoint_size": latest[0] if latest else 0,
            "checkpoint": latest[1] if latest else None,
            "verified": report.to_json(),
        }
        os.replace(partial, out)
        manifest_path = out.with_name(out.name + ".manifest.json")
        manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        return Backup(out, manifest, report)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()


@dataclass(frozen=True, slots=True)
class Restored:
    """A backup put in place: what it holds, and where the store it replaced went."""

    path: Path
    marker: dict[str, Json]
    report: VerifyReport
    replaced: Path | None


def restore_marker(store: Path) -> Path:
    """Where `cpn store restore` leaves word for the node that its store is a backup: the
    node opens a restore from it at its next start (then removes it)."""
    return store.with_name(store.name + ".restored.json")


def restore_store(
    backup: Path, target: Path, *, roster: Roster, node_id: str, now: int, replace: bool
) -> Restored | VerifyReport:
    """Put a verified copy of `backup` in place as the store at `target`, with the marker
    that makes the node explain the rollback and ask its peers back; the report of a
    backup that does not verify (then nothing changes). Run with the node stopped. A store
    already at `target` is kept beside it (`replace`), never overwritten."""
    if not backup.is_file():
        raise StoreError(f"{backup}: no such backup")
    if target.exists() and not replace:
        raise StoreError(
            f"{target} exists: stop the node and pass --replace to keep it aside and restore"
        )
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _copy(backup, partial)
        os.chmod(partial, 0o600)
        report = verify_store(partial, roster=roster, node_id=node_id)
        if not report.ok:
            return report
        with snapshot(partial) as db:
            tree = stored_tree(db)
            newest = db.execute("SELECT MAX(time) FROM audit").fetchone()[0]
        replaced = None
        if target.exists():
            replaced = target.with_name(f"{target.name}.replaced-{now}")
            os.replace(target, replaced)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    side = target.with_name(target.name + suffix)
                    os.replace(side, replaced.with_name(replaced.name + suffix))
        marker: dict[str, Json] = {
            "backup": str(backup),
            "restored_at": now,
            "backup_size": tree.size,
            "backup_root": b64encode(tree.root()),
            "since": max(0, int(newest or 0) - RESTORE_MARGIN_MS),
        }
        marker_path = restore_marker(target)
        marker_path.write_text(json.dumps(marker, indent=2) + "\n")
        os.chmod(marker_path, 0o600)
        os.replace(partial, target)
        return Restored(target, marker, report, replaced)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
