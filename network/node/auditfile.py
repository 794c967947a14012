"""The auditor's read-only view of a node's store file: list, export, prove.

Reads the SQLite file directly with the standard library, read-only
(`mode=ro`) and in one read transaction (`snapshot`), so it sees one
consistent snapshot whether the node is running (WAL) or stopped; rows are
streamed, never loaded all at once. Entries are encoded and hashed by
`network.core.auditlog`, and trees built by `network.core.tlog`: never a
second copy of them. (`network.node.verify` checks the same file.)

- `list_entries` pages through the entries matching an `EntryFilter`.
- `export_entries` writes the entries (JSONL or CSV) with their leaf hashes,
  and the signed checkpoints with their cosignatures, for anyone's own RFC 6962
  implementation. Hashes in exports and proofs are standard base64 with
  padding (RFC 4648 §4), as in C2SP checkpoints.
- `inclusion_proof` and `consistency_proof` prove an entry or an older tree
  against a tree size (by default the newest signed checkpoint's).
- `read_witnessed` reads the checkpoints of a node's log that a peer's store
  (or a note file) holds, for `verify_store` to check the log against.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from network.core.auditlog import checkpoint_origin, checkpoint_time
from network.core.errors import AuditReadError, CpnError
from network.core.tlog import HASH_SIZE, MerkleLog, parse_checkpoint
from network.node.clock import rfc3339

__all__ = [
    "BATCH",
    "MAX_PAGE",
    "AuditReadError",
    "EntryFilter",
    "Witnessed",
    "consistency_proof",
    "csv_cell",
    "export_entries",
    "has_table",
    "inclusion_proof",
    "list_entries",
    "read_witnessed",
    "snapshot",
    "stored_tree",
]

MAX_PAGE: Final = 1000
"""The most entries `list_entries` returns at once."""

BATCH: Final = 4096
"""Rows fetched at a time."""

_SQLITE_HEADER: Final = b"SQLite format 3\x00"


# -- reading a store file ---------------------------------------------------------


@contextlib.contextmanager
def snapshot(path: Path) -> Iterator[sqlite3.Connection]:
    """The store opened read-only, inside one read transaction: one consistent snapshot.

    Raises AuditReadError if the file is missing, not SQLite, or not a cpn
    store with the Merkle audit log (schema version 4 or later).
    """
    if not path.is_file():
        raise AuditReadError(f"{path}: no such store file")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise AuditReadError(f"{path}: cannot open the store: {exc}") from exc
    try:
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("BEGIN")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise AuditReadError(f"{path}: not a cpn store: {exc}") from exc
        if version < 4 or not {"audit", "checkpoints", "cosignatures"} <= tables:
            raise AuditReadError(
                f"{path}: schema version {version} has no Merkle audit log"
                " (start the node once to migrate it)"
            )
        yield db
    except sqlite3.DatabaseError as exc:
        raise AuditReadError(f"{path}: cannot read the store: {exc}") from exc
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        db.close()


def has_table(db: sqlite3.Connection, name: str) -> bool:
    """Whether the file has table `name` (an older schema may not)."""
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return found.fetchone() is not None


def messages_with_envelopes(db: sqlite3.Connection) -> str:
    """`messages` with each one's `envelope` and `self_sealed`, for a FROM clause: kept in
    `envelopes` since schema 15 (NULL for a row without its envelope), in the row before."""
    if not has_table(db, "envelopes"):
        return "messages"
    return "messages LEFT JOIN envelopes ON envelopes.message_id = messages.id"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- entries as records -------------------------------------------------------------

_ENTRY_COLUMNS: Final = "seq, time, actor, action, message_id, detail, leaf"


def _entry_record(row: Sequence[Any]) -> dict[str, Any]:
    """One audit row as JSON: seq, index, time (ms and RFC 3339), ..., leaf_hash (base64).

    `leaf_hash` is the hash stored with the entry (what the node's tree and
    checkpoints are built from); `verify_store` checks it is the entry's own.
    """
    seq, time, actor, action, message_id, detail, leaf = row
    try:
        parsed: Any = json.loads(detail)
    except (TypeError, ValueError):
        parsed = detail  # a damaged row is exported as it stands
    return {
        "seq": seq,
        "index": seq - 1,
        "time": time,
        "time_rfc3339": rfc3339(time) if isinstance(time, int) else None,
        "actor": actor,
        "action": action,
        "message_id": message_id,
        "detail": parsed,
        "leaf_hash": _b64(leaf) if isinstance(leaf, bytes) else None,
    }


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Which entries to read: `since` <= time < `until` (ms), and exact message, actor, action."""

    since: int | None = None
    until: int | None = None
    message: str | None = None
    actor: str | None = None
    action: str | None = None

    def where(self, after: int | None = None) -> tuple[str, list[Any]]:
        """The WHERE clause (possibly empty) and its parameters; `after`: seq > after."""
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("time >= ?", self.since),
            ("time < ?", self.until),
            ("message_id = ?", self.message),
            ("actor = ?", self.actor),
            ("action = ?", self.action),
            ("seq > ?", after),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def list_entries(
    path: Path, filters: EntryFilter = EntryFilter(), *, after: int = 0, limit: int = 100
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of entries in seq order after seq `after`, and the cursor for the next page.

    The cursor is the last seq returned when more entries match, else None.
    Raises ValueError for a limit outside 1..MAX_PAGE, AuditReadError for an
    unreadable store.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}")
    where, params = filters.where(after)
    with snapshot(path) as db:
        rows = db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM audit{where} ORDER BY seq LIMIT ?",  # noqa: S608
            (*params, limit + 1),
        ).fetchall()
    entries = [_entry_record(r) for r in rows[:limit]]
    return entries, (entries[-1]["seq"] if len(rows) > limit else None)


def account_entries(path: Path, name: str, limit: int = 1000) -> list[dict[str, Any]]:
    """The audit trail of account `name`: the entries it made (as actor) and those made
    about it (`detail.user`: issued, revoked, disabled, its role changed), oldest first."""
    with snapshot(path) as db:
        query = (
            f"SELECT {_ENTRY_COLUMNS} FROM audit WHERE actor = ?"  # noqa: S608
            " OR (action IN ('token_issued', 'token_revoked', 'account_disabled',"
            " 'account_enabled', 'role_changed') AND json_extract(detail, '$.user') = ?)"
            " ORDER BY seq LIMIT ?"
        )
        return [_entry_record(row) for row in db.execute(query, (name, name, limit))]


def _cosignatures_by_size(db: sqlite3.Connection) -> dict[int, list[tuple[str, int, str]]]:
    found: dict[int, list[tuple[str, int, str]]] = {}
    for size, witness, time, line in db.execute(
        "SELECT size, witness, time, line FROM cosignatures ORDER BY size, witness"
    ):
        found.setdefault(size, []).append((witness, time, line))
    return found


def _checkpoint_records(db: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """Each stored checkpoint: size, root, time, its signed note and its cosignature lines.

    `time` is the one the note's `time` line carries (`time_signed`: true), which
    the note's signature covers; for a note from before checkpoints were dated,
    the stored column (`time_signed`: false: nothing vouches for it). The note is
    read here, not verified: `verify_store` checks it. `cosigned_note` is the
    note with every cosignature line appended: the C2SP form a witness-aware
    verifier reads in one go.
    """
    cosignatures = _cosignatures_by_size(db)
    cursor = db.execute("SELECT size, root, time, note FROM checkpoints ORDER BY size")
    while batch := cursor.fetchmany(BATCH):
        for size, root, stored_time, note in batch:
            lines = cosignatures.get(size, [])
            signed = _signed_time(note)
            time = stored_time if signed is None else signed
            yield {
                "type": "checkpoint",
                "size": size,
                "root": _b64(root) if isinstance(root, bytes) else None,
                "time": time,
                "time_rfc3339": rfc3339(time) if isinstance(time, int) else None,
                "time_signed": signed is not None,
                "note": note,
                "cosignatures": [{"witness": w, "time": t, "line": line} for w, t, line in lines],
                "cosigned_note": note + "".join(line for _, _, line in lines),
            }


def _signed_time(note: object) -> int | None:
    """The time line of a checkpoint note, unverified (None: none, or not a checkpoint)."""
    if not isinstance(note, str):
        return None
    try:
        return checkpoint_time(parse_checkpoint(note.split("\n\n", 1)[0] + "\n"))
    except CpnError:
        return None


_CSV_FIELDS: Final = (
    "seq",
    "index",
    "time",
    "time_rfc3339",
    "actor",
    "action",
    "message_id",
    "detail",
    "leaf_hash",
)


# A spreadsheet takes a cell starting with one of these as a formula (CSV injection,
# OWASP): such a cell is written with a leading apostrophe, and so is a cell that starts
# with an apostrophe, so that dropping one leading apostrophe always gives the value back.
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r", "'")


# The columns whose text comes from outside (user names, peers' words); the rest are
# numbers, times and hashes we computed.
_CSV_TEXT: Final = frozenset({"actor", "action", "message_id", "detail"})


def csv_cell(value: object) -> object:
    """`value` as a CSV cell no spreadsheet runs: a text starting like a formula gets `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def export_entries(
    path: Path,
    out: IO[str],
    format: str = "jsonl",
    *,
    filters: EntryFilter = EntryFilter(),
    checkpoints_out: IO[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the matching entries to `out`; return how many.

    JSONL: one object per line, `{"type": "entry", seq, index, time,
    time_rfc3339, actor, action, message_id, detail, leaf_hash}`, then one
    `{"type": "checkpoint", size, root, time, time_rfc3339, time_signed, note,
    cosignatures, cosigned_note}` per signed checkpoint (all of them, whatever
    the filters). CSV: the entry columns only, with `detail` as its canonical
    JSON text, and every actor, action, message id or detail cell that a spreadsheet
    would run as a formula (starting with =, +, -, @, a tab or a carriage return; or
    with an apostrophe) written with a leading apostrophe (drop it to recompute the
    leaf); the checkpoints go to
    `checkpoints_out` as JSONL when given.
    Hashes are standard base64. `progress(done, total)` is called after each
    batch. Raises ValueError for an unknown format, AuditReadError for an
    unreadable store.
    """
    if format not in ("jsonl", "csv"):
        raise ValueError(f"format must be jsonl or csv, not {format!r}")
    where, params = filters.where()
    with snapshot(path) as db:
        total = int(db.execute(f"SELECT COUNT(*) FROM audit{where}", params).fetchone()[0])  # noqa: S608
        # RFC 4180's CRLF: then a CR or LF inside a cell gets the cell quoted (with "\n"
        # alone a CR went out bare and broke the row).
        writer = csv.writer(out, lineterminator="\r\n") if format == "csv" else None
        if writer is not None:
            writer.writerow(_CSV_FIELDS)
        done = 0
        cursor = db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM audit{where} ORDER BY seq",  # noqa: S608
            params,
        )
        while batch := cursor.fetchmany(BATCH):
            for row in batch:
                record = _entry_record(row)
                if writer is not None:
                    record["detail"] = row[5]
                    writer.writerow(
                        [
                            csv_cell(record[name]) if name in _CSV_TEXT else record[name]
                            for name in _CSV_FIELDS
                        ]
                    )
                else:
                    out.write(_json_line({"type": "entry", **record}))
            done += len(batch)
            if progress is not None:
                progress(done, total)
        trailer = out if writer is None else checkpoints_out
        if trailer is not None:
            for checkpoint in _checkpoint_records(db):
                trailer.write(_json_line(checkpoint))
    return done


def _json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"


# -- proofs -------------------------------------------------------------------------


def stored_tree(db: sqlite3.Connection) -> MerkleLog:
    """The tree of the stored leaf hashes (the one the node signs), streamed in."""
    tree = MerkleLog()
    cursor = db.execute("SELECT seq, leaf FROM audit ORDER BY seq")
    while batch := cursor.fetchmany(BATCH * 4):
        for expected, (seq, leaf) in enumerate(batch, start=tree.size + 1):
            if seq != expected or not isinstance(leaf, bytes) or len(leaf) != HASH_SIZE:
                raise AuditReadError(
                    f"entry {expected} is missing or has no leaf hash: run cpn audit verify"
                )
        tree.extend(row[1] for row in batch)
    return tree


def _checkpoint_at(db: sqlite3.Connection, size: int) -> str | None:
    """The cosigned note of the checkpoint at `size`, if the node signed one."""
    row = db.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
    if row is None:
        return None
    lines = db.execute(
        "SELECT line FROM cosignatures WHERE size = ? ORDER BY witness", (size,)
    ).fetchall()
    return str(row[0]) + "".join(str(line) for (line,) in lines)


def _default_size(db: sqlite3.Connection, tree: MerkleLog, at_least: int) -> int:
    """The newest signed checkpoint's size if it is at least `at_least`, else the whole log."""
    row = db.execute("SELECT MAX(size) FROM checkpoints").fetchone()
    latest = row[0] if row else None
    if isinstance(latest, int) and at_least <= latest <= tree.size:
        return latest
    return tree.size


def inclusion_proof(path: Path, index: int, size: int | None = None) -> dict[str, Any]:
    """An RFC 9162 inclusion proof of entry `index` (seq - 1) in the tree of `size` leaves.

    `size` defaults to the newest signed checkpoint's size when it covers the
    entry, else the whole log. Returns JSON: index, seq, size, the entry,
    leaf_hash, root, proof (hashes from the leaf's sibling up, base64) and
    `checkpoint`: the cosigned note at that size, or None if none was signed.
    Raises ValueError for an index or size outside the log.
    """
    with snapshot(path) as db:
        tree = stored_tree(db)
        if not 0 <= index < tree.size:
            raise ValueError(f"index {index} is outside the log's entries 0..{tree.size - 1}")
        tree_size = _default_size(db, tree, index + 1) if size is None else size
        if not index < tree_size <= tree.size:
            raise ValueError(f"size {tree_size} must be within {index + 1}..{tree.size}")
        query = f"SELECT {_ENTRY_COLUMNS} FROM audit WHERE seq = ?"  # noqa: S608
        row = db.execute(query, (index + 1,)).fetchone()
        return {
            "index": index,
            "seq": index + 1,
            "size": tree_size,
            "entry": _entry_record(row),
            "leaf_hash": _b64(tree.leaf(index)),
            "root": _b64(tree.root(tree_size)),
            "proof": [_b64(h) for h in tree.inclusion_proof(index, tree_size)],
            "checkpoint": _checkpoint_at(db, tree_size),
        }


def consistency_proof(path: Path, old_size: int, new_size: int | None = None) -> dict[str, Any]:
    """An RFC 9162 consistency proof that the tree of `new_size` extends the one of `old_size`.

    `new_size` defaults as `inclusion_proof`'s size does. Returns JSON:
    old_size, new_size, old_root, new_root, proof (base64) and the cosigned
    checkpoint notes at both sizes (None where none was signed). Raises
    ValueError for sizes outside the log.
    """
    with snapshot(path) as db:
        tree = stored_tree(db)
        target = _default_size(db, tree, old_size) if new_size is None else new_size
        if not 0 <= old_size <= target <= tree.size:
            raise ValueError(
                f"sizes must satisfy 0 <= old size ({old_size}) <= size ({target})"
                f" <= {tree.size} (the log)"
            )
        return {
            "old_size": old_size,
            "new_size": target,
            "old_root": _b64(tree.root(old_size)),
            "new_root": _b64(tree.root(target)),
            "proof": [_b64(h) for h in tree.consistency_proof(old_size, target)],
            "old_checkpoint": _checkpoint_at(db, old_size),
            "new_checkpoint": _checkpoint_at(db, target),
        }


# -- this log's checkpoints as its witnesses hold them ------------------------------------


@dataclass(frozen=True, slots=True)
class Witnessed:
    """A checkpoint of this node's log as a witness holds it: who (`source`) and the note."""

    source: str
    note: str


def read_witnessed(path: Path, node_id: str) -> list[Witnessed]:
    """The checkpoints of `node_id`'s log held in `path`: a peer's store, or a note file.

    From a store: its `witnessed` row for `node_id` and the largest checkpoint
    that receipts signed by `node_id` carried to it (none if it holds none),
    named after the store's own node. From a text file: the signed note it
    holds, named after the file. Raises AuditReadError if it is neither.
    """
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise AuditReadError(f"{path}: cannot read: {exc.strerror}") from exc
    if head == _SQLITE_HEADER:
        with snapshot(path) as db:
            owner = _store_owner(db) or path.name
            rows = db.execute("SELECT note FROM witnessed WHERE node = ?", (node_id,)).fetchall()
            found = [Witnessed(owner, str(note)) for (note,) in rows]
            carried = _carried_checkpoint(db, node_id)
            if carried is not None:
                found.append(Witnessed(f"{owner} (in a receipt from {node_id})", carried))
        return found
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditReadError(f"{path}: neither a store nor a signed checkpoint note") from exc
    return [Witnessed(path.name, text)]


def _carried_checkpoint(db: sqlite3.Connection, node_id: str) -> str | None:
    """The largest checkpoint note that receipts signed by `node_id` carried into this store.

    Read, not verified: `verify_store` checks the note's own signature.
    """
    best: tuple[int, str] | None = None
    cursor = db.execute(
        "SELECT raw FROM receipts WHERE signer = ? AND direction = 'received'", (node_id,)
    )
    for (raw,) in cursor:
        try:
            note = json.loads(raw)["receipt"]["checkpoint"]
            size = int(note.split("\n", 2)[1])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue
        if best is None or size > best[0]:
            best = (size, note)
    return None if best is None else best[1]


def _store_owner(db: sqlite3.Connection) -> str | None:
    """Whose store this is, from the origin of its own checkpoints."""
    row = db.execute("SELECT note FROM checkpoints LIMIT 1").fetchone()
    prefix = checkpoint_origin("")
    if row and isinstance(row[0], str) and row[0].startswith(prefix):
        return row[0][len(prefix) :].split("\n", 1)[0] or None
    return None
