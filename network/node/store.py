"""The node's store: one SQLite file (WAL), through aiosqlite. The store is the queue.

- Schema versions migrate forward on open (`MIGRATIONS`); a file from a newer
  cpn is refused rather than guessed at.
- Every change and the audit entries recording it commit in one transaction
  (`transaction()`), so a crash can never separate them. A transaction's writes
  are buffered (plain methods of `Tx`) and run in the order issued.
- Group commit: the use cases waiting for the write lock go in turn, each in a
  savepoint of the writer's one open SQLite transaction, and commit together;
  each caller returns once the COMMIT holding its work is on disk.
- Two connections, each with a thread of its own: the writer, and a query-only
  reader for everything outside transactions, which sees only what is committed.
  A transaction's statements run on the event loop's thread, under the write
  lock; only what waits (the COMMIT's fsync, another process's lock) goes to
  the writer's thread. Short reads (by key, or on an index with a LIMIT) go
  through a third, query-only connection on the loop's thread (`Store._glance`).
  The WAL is copied into the database on the reader's thread, beside the
  writer, and in a COMMIT only past a backstop (`CheckpointPace`).
- Rows come out typed (`MessageRow`: enums, node ids, the path as a tuple) and
  go in as the same text older files hold: decoded once on read, encoded once
  on write, here and nowhere else.
- Envelopes are kept exactly as sent and as received; the body stays sealed
  at rest (outbound bodies are also sealed to the node's own key, so that its
  officers can read what they sent).
- `synchronous=FULL`: a commit is on disk before a receipt says so.
- Audit entries get their seq and their time when written, under the write lock
  (both the store's and SQLite's, which other processes take too): the time
  is the store's clock then, never earlier than the last entry's, so times
  never go backwards in seq order (a clock stepped back repeats the last time
  until it catches up). `cpn audit verify` checks that they do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from asyncio import Future
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar, cast

import aiosqlite

from network.core.auditlog import (
    AuditEntry,
    entry_leaf,
    stored_detail,
    stored_entry_bytes,
    stored_leaf,
)
from network.core.deadlines import Due, Overdue, format_overdue, parse_overdue
from network.core.errors import LocalError, StoreError
from network.core.lifecycle import TABLES, Event, State, next_state
from network.core.records import Box, MessageType, NodeId, Priority, b64encode, canonical
from network.core.retention import RetentionRule
from network.core.tlog import MerkleLog
from network.node.clock import now_ms

__all__ = [
    "AuditEntry",
    "CommitPlace",
    "MessageRow",
    "ReceiptRow",
    "RestorePeer",
    "RestoreRow",
    "Store",
    "StoreError",
    "Tx",
    "UserRow",
    "Waiting",
]

SCHEMA_VERSION = 16

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        box TEXT NOT NULL CHECK (box IN ('out', 'in')),
        peer TEXT NOT NULL,             -- recipient of an outbound message, sender of an inbound
        type TEXT NOT NULL,
        priority TEXT NOT NULL,
        priority_rank INTEGER NOT NULL, -- 0 flash, 1 urgent, 2 routine: the outbox order
        state TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        received INTEGER,
        updated INTEGER NOT NULL,
        envelope BLOB NOT NULL,         -- exactly as sent / as received
        digest BLOB NOT NULL,
        self_sealed BLOB,               -- outbound: the plaintext sealed to our own key
        composed_by TEXT,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX messages_outbox ON messages (peer, priority_rank, created)
        WHERE box = 'out' AND state IN ('queued', 'sent');
    CREATE INDEX messages_list ON messages (box, created);
    CREATE INDEX messages_expiry ON messages (expires) WHERE state IN ('queued', 'sent');
    CREATE TABLE receipts (
        id TEXT PRIMARY KEY,
        message_id TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('issued', 'received')),
        signer TEXT NOT NULL,
        scope TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        time INTEGER NOT NULL,
        raw BLOB NOT NULL
    );
    CREATE INDEX receipts_message ON receipts (message_id);
    CREATE TABLE peers (
        id TEXT PRIMARY KEY,
        failures INTEGER NOT NULL DEFAULT 0,
        retry_at INTEGER NOT NULL DEFAULT 0,
        last_seen INTEGER,
        last_error TEXT
    );
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        token_hash BLOB NOT NULL UNIQUE,
        created INTEGER NOT NULL
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        message_id TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_message ON audit (message_id);
    """,
    # 2: relaying. Relayed envelopes are messages of box 'relay' (peer: the final
    # recipient); `via` is the hop last tried, `retry_at` when a message without an
    # end-to-end receipt may go again, `hop_acked` whether the hop took it on;
    # `path` the relays an inbound message came through. Accepted rosters are kept.
    2: """
    CREATE TABLE messages_v2 (
        id TEXT PRIMARY KEY,
        box TEXT NOT NULL CHECK (box IN ('out', 'in', 'relay')),
        peer TEXT NOT NULL,
        origin TEXT NOT NULL DEFAULT '',
        type TEXT NOT NULL,
        priority TEXT NOT NULL,
        priority_rank INTEGER NOT NULL,
        state TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        received INTEGER,
        updated INTEGER NOT NULL,
        envelope BLOB NOT NULL,
        digest BLOB NOT NULL,
        self_sealed BLOB,
        composed_by TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        via TEXT,
        retry_at INTEGER NOT NULL DEFAULT 0,
        hop_acked INTEGER NOT NULL DEFAULT 0,
        path TEXT NOT NULL DEFAULT '[]'
    );
    INSERT INTO messages_v2 (id, box, peer, type, priority, priority_rank, state, created,
        expires, received, updated, envelope, digest, self_sealed, composed_by, attempts)
        SELECT id, box, peer, type, priority, priority_rank, state, created, expires, received,
        updated, envelope, digest, self_sealed, composed_by, attempts FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v2 RENAME TO messages;
    CREATE INDEX messages_outbox ON messages (peer, priority_rank, created)
        WHERE box IN ('out', 'relay') AND state IN ('queued', 'sent');
    CREATE INDEX messages_list ON messages (box, created);
    CREATE INDEX messages_expiry ON messages (expires) WHERE state IN ('queued', 'sent');
    UPDATE messages SET origin = CASE box WHEN 'in' THEN peer ELSE '' END;
    CREATE TABLE rosters (
        version INTEGER PRIMARY KEY,
        raw BLOB NOT NULL,
        accepted INTEGER NOT NULL
    );
    """,
    # 3: the outbox index covers what the outbox and the queue counts read, so that
    # a relay holding thousands of messages in flight never reads their rows (whose
    # envelopes span overflow pages) to find the few that are due.
    3: """
    DROP INDEX messages_outbox;
    CREATE INDEX messages_outbox
        ON messages (peer, retry_at, priority_rank, created, hop_acked, box, state)
        WHERE box IN ('out', 'relay') AND state IN ('queued', 'sent');
    """,
    # 4: the audit log as a Merkle tree (each entry's leaf hash; the node's signed
    # checkpoints and its witnesses' cosignatures; the checkpoints peers showed us and
    # any two of them that no history explains), threads, deadlines and preservations.
    4: """
    ALTER TABLE audit ADD COLUMN leaf BLOB;
    CREATE INDEX audit_time ON audit (time);
    CREATE TABLE checkpoints (
        size INTEGER PRIMARY KEY,
        root BLOB NOT NULL,
        time INTEGER NOT NULL,
        note TEXT NOT NULL              -- C2SP tlog-checkpoint signed note
    );
    CREATE TABLE cosignatures (
        size INTEGER NOT NULL,
        witness TEXT NOT NULL,
        time INTEGER NOT NULL,
        line TEXT NOT NULL,             -- C2SP tlog-cosignature line
        PRIMARY KEY (size, witness)
    );
    CREATE TABLE witnessed (
        node TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        root BLOB NOT NULL,
        note TEXT NOT NULL,
        received INTEGER NOT NULL
    );
    CREATE TABLE inconsistencies (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        held TEXT NOT NULL,             -- the checkpoint we held
        shown TEXT NOT NULL,            -- the one that contradicts it
        problem TEXT NOT NULL,
        detected INTEGER NOT NULL
    );
    ALTER TABLE messages ADD COLUMN case_ref TEXT;
    ALTER TABLE messages ADD COLUMN in_reply_to TEXT;
    ALTER TABLE messages ADD COLUMN acked_by TEXT;
    ALTER TABLE messages ADD COLUMN receipt_due INTEGER;
    ALTER TABLE messages ADD COLUMN ack_due INTEGER;
    ALTER TABLE messages ADD COLUMN response_due INTEGER;
    ALTER TABLE messages ADD COLUMN preserved_until INTEGER;
    ALTER TABLE messages ADD COLUMN overdue TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN alert_at INTEGER;
    CREATE INDEX messages_alerts ON messages (alert_at) WHERE alert_at IS NOT NULL;
    CREATE INDEX messages_thread ON messages (in_reply_to) WHERE in_reply_to IS NOT NULL;
    """,
    # 5: the envelopes last in each row. A row spills its envelope into overflow pages;
    # a column stored after it is read by walking them, one a state change reads
    # before it is not (measured: the outbox of a busy relay took twice as long).
    5: """
    CREATE TABLE messages_v5 (
        id TEXT PRIMARY KEY,
        box TEXT NOT NULL CHECK (box IN ('out', 'in', 'relay')),
        peer TEXT NOT NULL,
        origin TEXT NOT NULL DEFAULT '',
        type TEXT NOT NULL,
        priority TEXT NOT NULL,
        priority_rank INTEGER NOT NULL,
        state TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL,
        received INTEGER,
        updated INTEGER NOT NULL,
        composed_by TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        via TEXT,
        retry_at INTEGER NOT NULL DEFAULT 0,
        hop_acked INTEGER NOT NULL DEFAULT 0,
        path TEXT NOT NULL DEFAULT '[]',
        case_ref TEXT,
        in_reply_to TEXT,
        acked_by TEXT,
        receipt_due INTEGER,
        ack_due INTEGER,
        response_due INTEGER,
        preserved_until INTEGER,
        overdue TEXT NOT NULL DEFAULT '',
        alert_at INTEGER,
        digest BLOB NOT NULL,
        envelope BLOB NOT NULL,         -- exactly as sent / as received
        self_sealed BLOB                -- outbound: the plaintext sealed to our own key
    );
    INSERT INTO messages_v5 (id, box, peer, origin, type, priority, priority_rank, state,
        created, expires, received, updated, composed_by, attempts, via, retry_at, hop_acked,
        path, case_ref, in_reply_to, acked_by, receipt_due, ack_due, response_due,
        preserved_until, overdue, alert_at, digest, envelope, self_sealed)
        SELECT id, box, peer, origin, type, priority, priority_rank, state,
        created, expires, received, updated, composed_by, attempts, via, retry_at, hop_acked,
        path, case_ref, in_reply_to, acked_by, receipt_due, ack_due, response_due,
        preserved_until, overdue, alert_at, digest, envelope, self_sealed FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v5 RENAME TO messages;
    CREATE INDEX messages_outbox
        ON messages (peer, retry_at, priority_rank, created, hop_acked, box, state)
        WHERE box IN ('out', 'relay') AND state IN ('queued', 'sent');
    CREATE INDEX messages_list ON messages (box, created);
    CREATE INDEX messages_expiry ON messages (expires) WHERE state IN ('queued', 'sent');
    CREATE INDEX messages_alerts ON messages (alert_at) WHERE alert_at IS NOT NULL;
    CREATE INDEX messages_thread ON messages (in_reply_to) WHERE in_reply_to IS NOT NULL;
    """,
    # 6: what /metrics counts at every scrape, read from small indexes rather than by a
    # walk through every row (the overdue one also serves the overdue listing).
    6: """
    CREATE INDEX messages_states ON messages (box, state);
    CREATE INDEX messages_overdue ON messages (priority_rank, created) WHERE overdue != '';
    """,
    7: """
    -- Entries from this seq on are timed at commit, under the write lock: their times never
    -- go back, and verify holds them to it. Earlier versions timed an entry before taking
    -- the lock, so two of their entries may be a millisecond out of order.
    CREATE TABLE audit_times (monotonic_from INTEGER NOT NULL);
    INSERT INTO audit_times (monotonic_from) SELECT COALESCE(MAX(seq), 0) + 1 FROM audit;
    """,
    # 8: restore without loss. `cpn store restore` opens a restore (the backup's tree size and
    # root, and from when to ask peers again); the node explains it in its log (`explained`:
    # the index of its `restored` entry) and asks each peer back (`restore_peers`: how far).
    # As a witness, the checkpoints of a peer's log superseded by its explained restore.
    8: """
    CREATE TABLE restores (
        id INTEGER PRIMARY KEY,
        restored_at INTEGER NOT NULL,
        backup_size INTEGER NOT NULL,
        backup_root BLOB NOT NULL,
        since INTEGER NOT NULL,
        explained INTEGER,
        finished INTEGER
    );
    CREATE TABLE restore_peers (
        restore INTEGER NOT NULL,
        peer TEXT NOT NULL,
        after TEXT,
        returned INTEGER NOT NULL DEFAULT 0,
        done INTEGER,
        PRIMARY KEY (restore, peer)
    );
    CREATE TABLE rollbacks (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        held TEXT NOT NULL,             -- the checkpoint we held, which the restore undid
        shown TEXT NOT NULL,            -- the checkpoint that carried the explanation
        entry BLOB NOT NULL,            -- the node's signed `restored` entry
        detected INTEGER NOT NULL
    );
    """,
    # 9: a preservation kept until the decision on the MLA request (Budapest 29(7)), with no
    # date: counted from the day that request was sent, then from the day the requested
    # Party received it (ms, 00:00 UTC of the day).
    9: """
    ALTER TABLE messages ADD COLUMN until_decision INTEGER;
    """,
    # 10: work shared within the desk: the officer who holds a received request (taken, or
    # assigned and handed over at a shift change; each step audited).
    10: """
    ALTER TABLE messages ADD COLUMN assigned_to TEXT;
    """,
    # 11: the line an inbox shows of a request (its case reference and its summary's first
    # line), sealed under the storage key like a sent copy: no body text in clear.
    11: """
    ALTER TABLE messages ADD COLUMN listing BLOB;
    """,
    # 12: "have we seen this identifier before?": a keyed digest of each identifier a
    # request names (network/core/identifiers.py), never the identifier itself.
    12: """
    CREATE TABLE identifiers (
        tag TEXT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (tag, message_id)
    ) WITHOUT ROWID;
    """,
    # 13: accounts an administrator runs: a disabled user's token is refused until enabled.
    13: """
    ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    """,
    # 14: four eyes (network/core/approval.py): a request's approval (pending, approved,
    # sent_back; NULL: none needed) and who gave it. Attachments (network/core/attachments.py):
    # a part's file (its index in the message's `attachments`; the message is `in_reply_to`),
    # so that progress is counted without opening parts. Retention (network/core/retention.py):
    # a message whose contents a rule deleted keeps its row, digest and receipts, with the rule
    # and when (`deleted`, `deleted_at`); its envelope is empty. Cases under a legal hold (by
    # the case reference's keyed digest, as `messages.case_ref` holds it) keep theirs.
    # People's passkeys (network/node/passkeys.py), and their one-time enrolment codes.
    14: """
    ALTER TABLE messages ADD COLUMN approval TEXT;
    ALTER TABLE messages ADD COLUMN approved_by TEXT;
    CREATE INDEX messages_approval ON messages (approval) WHERE approval = 'pending';
    ALTER TABLE messages ADD COLUMN attachment INTEGER;
    CREATE INDEX messages_parts ON messages (in_reply_to, attachment)
        WHERE attachment IS NOT NULL;
    ALTER TABLE messages ADD COLUMN deleted TEXT;
    ALTER TABLE messages ADD COLUMN deleted_at INTEGER;
    CREATE INDEX messages_retention ON messages (state, updated) WHERE deleted IS NULL;
    CREATE TABLE passkeys (
        credential_id BLOB PRIMARY KEY,
        user TEXT NOT NULL,
        credential BLOB NOT NULL,       -- its public key and id (WebAuthn attested data)
        sign_count INTEGER NOT NULL DEFAULT 0,
        label TEXT NOT NULL,
        created INTEGER NOT NULL,
        last_used INTEGER
    );
    CREATE INDEX passkeys_user ON passkeys (user);
    CREATE TABLE enrolments (
        code_hash BLOB PRIMARY KEY,     -- SHA-256 of the one-time code in the link
        user TEXT NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE TABLE holds (
        case_ref TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        placed_by TEXT NOT NULL,
        placed INTEGER NOT NULL
    );
    """,
    # 15: a message's envelope and its sealed copy in a table of their own, written once.
    # SQLite rewrites a row whole on every UPDATE, overflow pages and all: each state change
    # rewrote some 5 KiB of envelope with the few bytes that changed (bench/store_writes.py),
    # and the columns added since 5 sat after it. The rows of both tables stay in step: one
    # transaction inserts both, and `cpn audit verify` reports a message without its envelope.
    15: """
    CREATE TABLE envelopes (
        message_id TEXT PRIMARY KEY,
        envelope BLOB NOT NULL,         -- exactly as sent / as received
        self_sealed BLOB                -- outbound: the plaintext sealed to our own key
    );
    INSERT INTO envelopes (message_id, envelope, self_sealed)
        SELECT id, envelope, self_sealed FROM messages ORDER BY rowid;
    ALTER TABLE messages DROP COLUMN envelope;
    ALTER TABLE messages DROP COLUMN self_sealed;
    """,
    # 16: the retention index without the messages no rule may delete (`KEPT_STATES`), which
    # are the ones that change: a message's every step while queued or sent moved its entry
    # (its `updated`), two pages more in the WAL at each (bench/store_writes.py).
    16: """
    DROP INDEX messages_retention;
    CREATE INDEX messages_retention ON messages (state, updated)
        WHERE deleted IS NULL AND state NOT IN ('queued', 'sent', 'awaiting_approval');
    """,
}

# What the retention index holds (migration 16), word for word: SQLite uses a partial index
# only for a query whose WHERE holds each of the index's terms.
RETAINED: Final = "deleted IS NULL AND state NOT IN ('queued', 'sent', 'awaiting_approval')"


_NO_DEADLINES: Final = Due(None, None, None)

T = TypeVar("T")
log = logging.getLogger("cpn.store")


@dataclass(frozen=True, slots=True)
class RestorePeer:
    after: str | None  # the last id it gave back (None: none yet)
    returned: int  # envelopes it gave back so far
    done: bool


@dataclass(frozen=True, slots=True)
class RestoreRow:
    """A restore from a backup, open until every peer has given back what it holds."""

    id: int
    restored_at: int
    backup_size: int
    backup_root: bytes
    since: int  # ask back what was receipted from then on
    explained: int | None  # the index of our `restored` entry, once appended
    peers: dict[str, RestorePeer]


class MessageRow(NamedTuple):
    """One message as the store holds it, decoded: closed sets as enums, the path as a tuple.

    A NamedTuple, not a frozen dataclass: a message's life reads and changes its row a dozen
    times on the loop, and a frozen dataclass of this width takes ten times as long to build
    (3.8 µs against 0.36; `_replace` 1.4 µs against `dataclasses.replace`'s 8)."""

    id: str
    box: Box
    peer: NodeId  # the recipient of an outbound or relayed message, the sender of an inbound
    type: MessageType | None  # None: relayed, whose body a relay cannot read
    priority: Priority
    state: State
    created: int
    expires: int
    received: int | None
    updated: int
    envelope: bytes
    digest: bytes
    self_sealed: bytes | None
    composed_by: str | None
    attempts: int
    origin: NodeId | None  # who composed it: the sender of an inbound or relayed one; None: ours
    via: NodeId | None  # the hop it was last sent to
    retry_at: int  # when it may go again without an end-to-end receipt
    hop_acked: bool  # the hop it was last sent to took it on
    path: tuple[NodeId, ...]  # the relays it came through (inbound), or has been through
    case_ref: str | None = None  # the composing side's case reference (threads a case)
    in_reply_to: str | None = None  # the request an acknowledgement or response answers
    acked_by: str | None = None  # who acknowledged it (the officer, or the other side's)
    receipt_due: int | None = None
    ack_due: int | None = None
    response_due: int | None = None
    preserved_until: int | None = None  # a preservation: when the preserved data may go
    overdue: frozenset[Overdue] = frozenset()  # the deadlines passed and unmet
    alert_at: int | None = None  # when the deadline scan looks at it next
    # Preserved until the decision on the MLA request, counted from then: the day it was sent
    # (the MLA notice), then the day the requested Party says it received it.
    until_decision: int | None = None
    assigned_to: str | None = None  # the officer who holds it (received requests)
    listing: bytes | None = None  # `listing.seal_line`'s output
    deleted: str | None = None  # the retention rule that deleted its contents (envelope empty)
    deleted_at: int | None = None
    attachment: int | None = None  # an attachment part: which file of `in_reply_to` it carries
    approval: str | None = None  # four eyes: pending, approved, sent_back (None: not needed)
    approved_by: str | None = None  # the approver (or who sent it back)


class Waiting(NamedTuple):
    """A message that may go now, as far as routing it needs (`MessageRow`'s fields)."""

    id: str
    peer: NodeId
    box: Box
    origin: NodeId | None
    path: tuple[NodeId, ...]
    rank: int  # its priority's (`lifecycle.PRIORITY_RANK`)


@dataclass(frozen=True, slots=True)
class ReceiptRow:
    id: str
    message_id: str
    direction: str
    signer: str
    scope: str
    outcome: str
    reason: str | None
    time: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class UserRow:
    name: str
    role: str
    created: int
    disabled: bool = False


# A message is read whole, `_MESSAGE_COLUMNS` (`MessageRow`'s fields) from `_MESSAGES`; it
# is written to its two tables apart: the envelope's once, the row's as it changes.
_MESSAGE_COLUMNS = ", ".join(MessageRow._fields)
# The same, from `messages` alone: a row without its envelope and stored copy (`Tx.prefetch`).
_BARE_COLUMNS = ", ".join(
    {"envelope": "x'' AS envelope", "self_sealed": "NULL AS self_sealed"}.get(name, name)
    for name in MessageRow._fields
)
_MESSAGES = "messages CROSS JOIN envelopes ON envelopes.message_id = messages.id"
_ENVELOPE_COLUMNS: Final = frozenset({"envelope", "self_sealed"})
_ROW_COLUMNS = [name for name in MessageRow._fields if name not in _ENVELOPE_COLUMNS]
_INSERT_ROW = (
    f"INSERT OR IGNORE INTO messages ({', '.join(_ROW_COLUMNS)}, priority_rank)"
    f" VALUES ({', '.join('?' * (len(_ROW_COLUMNS) + 1))})"
)
_INSERT_ENVELOPE = (
    "INSERT OR IGNORE INTO envelopes (message_id, envelope, self_sealed) VALUES (?, ?, ?)"
)

# Text to member by lookup: rows are decoded on every send, and a dict is cheaper than
# an enum's constructor. Members hash as their values, so either finds its member.
_BOXES: Final[dict[str, Box]] = {b.value: b for b in Box}
_PRIORITIES: Final[dict[str, Priority]] = {p.value: p for p in Priority}
_STATES: Final[dict[str, State]] = {s.value: s for s in State}
_TYPES: Final[dict[str, MessageType | None]] = {"": None, **{t.value: t for t in MessageType}}


@lru_cache(maxsize=4096)
def _decode_path(text: str) -> tuple[NodeId, ...]:
    """A stored path (a JSON list of node ids) as a tuple; most are empty. Cached: a hub
    reads the same few paths (an origin and the hubs before it) on row after row of
    every look through its outbox."""
    if text == "[]":
        return ()
    return cast("tuple[NodeId, ...]", tuple(json.loads(text)))  # NodeId is str at run time


def _encode_path(path: Sequence[NodeId]) -> str:
    """`_decode_path` reversed, in the form the store has always held (json.dumps)."""
    return json.dumps(list(path))


def _message(row: Sequence[Any]) -> MessageRow:
    """A row read in `_MESSAGE_COLUMNS` order, decoded."""
    values = list(row)
    values[1] = _BOXES[values[1]]
    values[3] = _TYPES[values[3]]
    values[4] = _PRIORITIES[values[4]]
    values[5] = _STATES[values[5]]
    values[15] = values[15] or None
    values[18] = bool(values[18])
    values[19] = _decode_path(values[19])
    values[27] = parse_overdue(values[27]) if values[27] else frozenset()
    return MessageRow._make(values)


def _stored(row: MessageRow) -> dict[str, Any]:
    """A row's values by column, as SQLite keeps them (`_message` reversed)."""
    values = row._asdict()
    values["box"] = row.box.value
    values["type"] = "" if row.type is None else row.type.value
    values["priority"] = row.priority.value
    values["state"] = row.state.value
    values["origin"] = row.origin or ""
    values["hop_acked"] = int(row.hop_acked)
    values["path"] = _encode_path(row.path)
    values["overdue"] = format_overdue(row.overdue)
    return values


def _waiting(row: Sequence[Any]) -> Waiting:
    """A row of `id, peer, box, origin, path, priority_rank`, decoded."""
    id_, peer, box, origin, path, rank = row
    return Waiting(id_, peer, _BOXES[box], origin or None, _decode_path(path), rank)


def _lapsed_query(rule: RetentionRule, earlier: Sequence[RetentionRule]) -> tuple[str, list[str]]:
    """`Store.lapsed`'s read for `rule` (the `earlier` rules govern what they match, lapsed
    or not), and its parameters after the time: messages it matches, none of a case under
    a legal hold, nor what answers or follows a request of one."""
    held = (
        "(case_ref IS NULL OR case_ref NOT IN (SELECT case_ref FROM holds))"
        " AND (in_reply_to IS NULL OR in_reply_to NOT IN"
        " (SELECT m.id FROM messages m JOIN holds h ON h.case_ref = m.case_ref))"
        # Not while a part of its files has yet to go: the part needs its envelope.
        " AND NOT EXISTS (SELECT 1 FROM messages p WHERE p.in_reply_to = messages.id"
        " AND p.attachment IS NOT NULL AND p.state IN ('queued', 'sent'))"
    )
    match, params = _rule_clause(rule)
    clauses, values = [match], list(params)
    for other_rule in earlier:
        other, more = _rule_clause(other_rule)
        clauses.append(f"NOT {other}")
        values.extend(more)
    query = (
        f"SELECT {_MESSAGE_COLUMNS} FROM {_MESSAGES} WHERE {RETAINED}"
        f" AND updated <= ? AND {' AND '.join(clauses)} AND {held}"
        " ORDER BY updated LIMIT ?"
    )
    return query, values


def _rule_clause(rule: RetentionRule) -> tuple[str, list[str]]:
    """The SQL condition (and its parameters) for the messages `rule` matches, time aside."""
    params = [b.value for b in rule.boxes] + [s.value for s in rule.states]
    clause = (  # an attachment's parts go with their message, under its rule
        f"(attachment IS NULL AND box IN ({','.join('?' * len(rule.boxes))})"
        f" AND state IN ({','.join('?' * len(rule.states))})"
    )
    if rule.types is not None:
        clause += f" AND type IN ({','.join('?' * len(rule.types))})"
        params.extend(t.value for t in rule.types)
    return clause + ")", params


# The reads below are plain functions on the connection, run on its thread (`_on_thread`),
# so that a transaction can make them with its BEGIN in the same hop.


def _fetch_messages(
    conn: sqlite3.Connection, ids: Sequence[str], *, whole: bool = True
) -> dict[str, MessageRow]:
    """The rows of `ids` found; not `whole`: without their envelopes (`Tx.prefetch`)."""
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    source = f"{_MESSAGE_COLUMNS} FROM {_MESSAGES}" if whole else f"{_BARE_COLUMNS} FROM messages"
    rows = conn.execute(f"SELECT {source} WHERE id IN ({marks})", tuple(ids)).fetchall()
    return {row[0]: _message(row) for row in rows}


_Receipts = dict[str, list[bytes]]  # message id -> raw receipts


def _issued_receipts(conn: sqlite3.Connection, ids: Sequence[str]) -> _Receipts:
    """The receipts we signed accepting each of `ids`, oldest first (one query)."""
    found: _Receipts = {i: [] for i in ids}
    if ids:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            "SELECT message_id, raw FROM receipts WHERE direction = 'issued'"
            f" AND outcome = 'accepted' AND message_id IN ({marks}) ORDER BY time",
            tuple(ids),
        )
        for message_id, raw in rows:
            found[message_id].append(bytes(raw))
    return found


def _fetch_user(conn: sqlite3.Connection, name: str) -> UserRow | None:
    """User `name` (disabled or not), or None."""
    query = "SELECT name, role, created, disabled FROM users WHERE name = ?"
    row = conn.execute(query, (name,)).fetchone()
    return None if row is None else UserRow(str(row[0]), str(row[1]), int(row[2]), bool(row[3]))


def _equal(pairs: Iterable[tuple[str, object]]) -> tuple[list[str], list[Any]]:
    """`column = ?` for each pair whose value is given, and those values."""
    given = [(column, value) for column, value in pairs if value is not None]
    return [f"{column} = ?" for column, _ in given], [value for _, value in given]


def _known_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    marks = ",".join("?" * len(ids))
    rows = conn.execute(f"SELECT id FROM messages WHERE id IN ({marks})", tuple(ids))
    return {row[0] for row in rows}


def _entries_after(conn: sqlite3.Connection, size: int, path: Path) -> list[bytes]:
    """The leaves of the audit entries after the first `size`: those other processes
    (`cpn user add` beside a running node) committed since the tree last grew."""
    rows = conn.execute("SELECT seq, leaf FROM audit WHERE seq > ? ORDER BY seq", (size,))
    leaves: list[bytes] = []
    for seq, leaf in rows:
        if seq != size + len(leaves) + 1 or leaf is None:
            raise StoreError(f"{path}: audit entry {seq} is not where the log ends")
        leaves.append(bytes(leaf))
    return leaves


def _last_time(conn: sqlite3.Connection) -> int:
    """The time of the log's last entry (0 for none, or for a time that is not an integer:
    a damaged row is the verifier's to name, not a reason to stop writing)."""
    row = conn.execute("SELECT time FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return row[0] if row is not None and type(row[0]) is int else 0


async def _on_thread(db: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run `work(conn)` on the connection's own thread, in one hop, and return its result.

    Promises (each pinned by a test in tests/test_store.py): `work` runs on the
    thread aiosqlite runs its statements on, with the very connection they use,
    in the order queued with them; what `work` raises is raised here; on a
    closed connection this raises ValueError.

    Why: aiosqlite makes each statement a hop between the event loop and that
    thread, and with dozens of nodes in one process (the network simulation)
    the hops, not SQLite, were the cost; a transaction's reads, writes and
    COMMIT each go as one function instead. aiosqlite has no public call for
    this: `_queued_on_thread` does what its own `_execute` does.
    """
    return await _queued_on_thread(db, work)


def _queued_on_thread(
    db: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]
) -> Future[T]:
    """`work` queued for the connection's thread now; the future of its result.

    As aiosqlite's own `_execute` does, without a coroutine around it: `_running` and
    `_connection` (whether it is open), `_tx` (its queue of (future, function): given no
    future, its thread runs the function, which settles ours) and `_conn` (the sqlite3
    connection) are aiosqlite's private parts,
    and this is the one place that touches them; an aiosqlite upgrade that breaks them
    breaks the tests `_on_thread` names."""
    if not db._running or not db._connection:
        raise ValueError("Connection closed")
    loop = asyncio.get_running_loop()
    future: Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = work(db._conn)
        except BaseException as exc:  # as aiosqlite's thread does: the caller raises it
            loop.call_soon_threadsafe(aiosqlite.core.set_exception, future, exc)
        else:
            loop.call_soon_threadsafe(aiosqlite.core.set_result, future, result)

    db._tx.put_nowait((None, run))
    return future


async def _to_its_end(future: Future[T]) -> bool:
    """Wait for `future` to be done, whatever cancels the caller meanwhile; whether
    something did (the caller then raises CancelledError once it has used the outcome)."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def _wakes_without_preempting(conn: sqlite3.Connection) -> None:
    """Run on a connection's thread: on Linux, its scheduling policy becomes SCHED_BATCH.

    The loop wakes a store thread at every hop (a COMMIT, a read). Woken as an ordinary
    thread, it could preempt the loop on its core at once, only to wait for the GIL the
    loop holds; a batch thread runs at its next turn instead, with the same share of the
    CPU. Where the policy is missing or refused, the thread stays as it was."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


_INSERT_AUDIT: Final = (
    "INSERT INTO audit (seq, time, actor, action, message_id, detail, leaf)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class Tx:
    """The writes of one use case's transaction. Only the store hands these out.

    Writes are buffered by plain methods; when the use case ends they join its
    batch, and are applied inside a savepoint before the next statement: the
    next use case's first read, or the batch's COMMIT. A write that fails undoes
    this use case's writes and no one else's. They run
    in the order issued (consecutive uses of one statement go as one
    `executemany`), so an UPDATE never overtakes the INSERT of its row; the
    audit entries go first (no statement reads them).

    A read joins the writer's open SQLite transaction (BEGIN IMMEDIATE when
    there is none) after the writes of the use cases before it, on the loop's
    thread (`Store._begun`). It sees the rows this use case changed (`message`),
    not its other writes. Only what reads is `async`. The COMMIT is the store's,
    for a whole batch (`Store.transaction`).
    """

    def __init__(self, store: Store, now: int, batch: _Batch) -> None:
        self.now = now
        self._store = store
        self._batch = batch
        # (statement, rows) in the order issued; a statement issued again at once joins its run.
        self._writes: list[tuple[str, list[tuple[Any, ...]]]] = []
        # audit entries (actor, action, message id, detail JSON), numbered and timed when applied
        self._entries: list[tuple[str, str, str | None, bytes]] = []
        self._rows: dict[str, MessageRow | None] = {}
        self._bare: set[str] = set()  # rows in `_rows` read without their envelopes
        self._issued: _Receipts = {}  # as stored before this transaction
        self._audit_size: int | None = None
        self._secure_delete = False  # overwrite the pages this transaction frees
        self.urgent = False  # set by a use case that finds a flash message in its work

    # -- applied under the write lock, before the batch's next statement -----------------

    def _apply(self, conn: sqlite3.Connection) -> None:
        """Write everything, in a savepoint of the batch's transaction (no COMMIT)."""
        batch = self._batch
        # Under the write lock: no entry can join between these and ours. The batch's
        # own entries so far are in the table (this connection sees them), not the tree.
        # Another process's entries are looked for once a batch: its transaction holds the
        # write lock from its BEGIN IMMEDIATE to its COMMIT, so none can come after that.
        base = self._store.audit_log.size + len(batch.leaves)
        if not batch.others_read:
            others = _entries_after(conn, base, self._store.path)
            batch.leaves.extend(others)
            batch.others_read = True
            base += len(others)
        leaves: list[bytes] = []  # this use case's entries, in order
        entry_time = None
        conn.execute("SAVEPOINT use_case")
        try:
            if self._entries:
                entry_time = self._entry_time(conn)
                numbered = []
                for i, (actor, action, message_id, detail) in enumerate(self._entries, 1):
                    leaf = stored_leaf(entry_time, actor, action, message_id, detail)
                    leaves.append(leaf)
                    numbered.append(
                        (base + i, entry_time, actor, action, message_id, detail.decode(), leaf)
                    )
                conn.executemany(_INSERT_AUDIT, numbered)
            if self._secure_delete:
                conn.execute("PRAGMA secure_delete = ON")
            for statement, rows in self._writes:
                conn.executemany(statement, rows)
            conn.execute("RELEASE use_case")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK TO use_case")
                conn.execute("RELEASE use_case")
            raise
        finally:
            if self._secure_delete:
                conn.execute("PRAGMA secure_delete = OFF")
        batch.leaves.extend(leaves)
        if entry_time is not None:
            batch.last_time = entry_time

    def _entry_time(self, conn: sqlite3.Connection) -> int:
        """The time for entries written now (under the write lock): the clock, never
        earlier than the last entry's (read once a batch, then the batch's own)."""
        if self._batch.last_time is None:
            self._batch.last_time = _last_time(conn)
        return max(self._store.clock(), self._batch.last_time)

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """A read under the transaction's lock, on the loop's thread once the batch's
        transaction is begun: what the use cases before it wrote is applied first."""
        conn = await self._store._begun(self._batch)
        self._batch.apply(conn)
        return query(conn)

    # -- reads (async: the batch's transaction may have to be begun on the thread) --------

    async def audit_size(self) -> int:
        """The log's size before this transaction's entries, counting entries another
        process (`cpn user add` beside a running node) committed meanwhile. The batch
        so far commits first: what is counted is in the tree, and what a checkpoint of
        that size signs is on disk."""
        if self._audit_size is None:
            await self._store._flush()
            self._batch = self._store._begin_batch(self._batch.durable)
            log_tree = self._store.audit_log
            size = log_tree.size
            others = await self._read(lambda conn: _entries_after(conn, size, self._store.path))
            log_tree.extend(others)
            self._audit_size = log_tree.size
        return self._audit_size

    async def entry_time(self) -> int:
        """The time an entry committed now would carry, read under the transaction's lock:
        the store's clock, never earlier than the last entry's (what a checkpoint signed in
        this transaction is dated)."""
        return await self._read(self._entry_time)

    async def known_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` the store holds, read under the transaction's lock so that dedup
        is exact. Their rows, and the receipts we issued for those found (a batch sent
        again after a reconnect is all duplicates), are read in the same hop and kept
        for the `message` and `issued_receipts` calls that follow."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self._rows]
        if wanted:

            def work(conn: sqlite3.Connection) -> tuple[dict[str, MessageRow], _Receipts]:
                rows = _fetch_messages(conn, wanted)
                return rows, _issued_receipts(conn, list(rows))

            found, issued = await self._read(work)
            for i in wanted:
                self._rows[i] = found.get(i)
            self._issued.update(issued)
        return {i for i in ids if self._rows[i] is not None}

    async def issued_receipts(self, message_id: str) -> list[bytes]:
        """The receipts we signed for `message_id` that accepted it, oldest first, as stored
        before this transaction (not those it inserts)."""
        if message_id not in self._issued:
            self._issued.update(await self._read(partial(_issued_receipts, ids=[message_id])))
        return list(self._issued[message_id])

    async def user(self, name: str) -> UserRow | None:
        """User `name`, read under the transaction's lock."""
        return await self._read(partial(_fetch_user, name=name))

    async def prefetch(self, ids: Sequence[str], *, whole: bool = True) -> None:
        """Read the rows of `ids` in one query, for the `message` calls that follow.

        Not `whole`: without the envelope and its stored copy (`envelope` empty,
        `self_sealed` None), for a use case that only moves its messages (a sent mark, a
        receipt) and hands no row on: reading those 5 KiB a message twice took 2 to 4% of
        a loaded sender's loop (docs/PERFORMANCE.md, twenty-seventh session). Its
        `message` calls then say `whole=False` too."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self._rows]
        if not wanted:
            return
        found = await self._read(partial(_fetch_messages, ids=wanted, whole=whole))
        for i in wanted:
            self._rows[i] = found.get(i)
        if whole:
            self._bare.difference_update(wanted)
        else:
            self._bare.update(wanted)

    async def message(self, message_id: str, *, whole: bool = True) -> MessageRow | None:
        """The row of `message_id` as this transaction left it (None: no such message).
        Raises LocalError for a row read without its envelope when `whole` asks for it."""
        if message_id not in self._rows:
            await self.prefetch([message_id], whole=whole)
        elif whole and message_id in self._bare:
            raise LocalError(f"{message_id}: its row was read without its envelope")
        return self._rows[message_id]

    async def release_in_flight(self) -> int:
        """At start: no link outlives its process, so every message sent without any
        receipt may go again at once (not at its retry time); returns how many."""
        where = "box IN ('out', 'relay') AND state = 'sent' AND hop_acked = 0 AND retry_at > 0"
        query = f"SELECT COUNT(*) FROM messages WHERE {where}"
        (count,) = await self._read(lambda conn: conn.execute(query).fetchone())
        self._write(f"UPDATE messages SET retry_at = 0 WHERE {where}", ())
        self._rows.clear()
        return int(count)

    # -- writes (plain: they are buffered until the commit) --------------------------------

    def _write(self, statement: str, params: tuple[Any, ...]) -> None:
        if self._writes and self._writes[-1][0] == statement:
            self._writes[-1][1].append(params)
        else:
            self._writes.append((statement, [params]))

    def audit(self, entries: Iterable[AuditEntry]) -> None:
        """Append entries to the log; each is a leaf of the Merkle tree at position seq - 1
        (numbered and timed at commit, after any entries other processes added).

        Raises MalformedError for a detail canonical JSON cannot hold, here rather than
        at commit."""
        for e in entries:
            detail = stored_detail(e.detail or {})
            self._entries.append((e.actor, e.action, e.message_id, detail))

    def checkpoint(self, size: int, root: bytes, note: str, *, time: int | None = None) -> None:
        """Our signed checkpoint `note` of `size` entries; `time`: the one it is dated in
        the note (the transaction's `now` for a note without one)."""
        self._write(
            "INSERT OR IGNORE INTO checkpoints (size, root, time, note) VALUES (?, ?, ?, ?)",
            (size, root, self.now if time is None else time, note),
        )

    def cosignature(self, size: int, witness: str, time: int, line: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO cosignatures (size, witness, time, line) VALUES (?, ?, ?, ?)",
            (size, witness, time, line),
        )

    def witnessed(self, node: str, size: int, root: bytes, note: str) -> None:
        """The newest checkpoint `node` showed us, consistent with the one held before."""
        self._write(
            "INSERT OR REPLACE INTO witnessed (node, size, root, note, received)"
            " VALUES (?, ?, ?, ?, ?)",
            (node, size, root, note, self.now),
        )

    def inconsistency(self, node: str, held: str, shown: str, problem: str) -> None:
        """Two signed checkpoints of `node`'s log that no honest history explains: proof."""
        self._write(
            "INSERT INTO inconsistencies (node, held, shown, problem, detected)"
            " VALUES (?, ?, ?, ?, ?)",
            (node, held, shown, problem, self.now),
        )

    def rollback(self, node: str, held: str, shown: str, entry: bytes) -> None:
        """`node` explained, in a signed entry, why its log no longer extends the one held."""
        self._write(
            "INSERT INTO rollbacks (node, held, shown, entry, detected) VALUES (?, ?, ?, ?, ?)",
            (node, held, shown, entry, self.now),
        )

    def open_restore(
        self, *, restored_at: int, backup_size: int, backup_root: bytes, since: int
    ) -> None:
        """A backup was put in place (`cpn store restore`): a restore to explain and finish."""
        self._write(
            "INSERT INTO restores (restored_at, backup_size, backup_root, since)"
            " VALUES (?, ?, ?, ?)",
            (restored_at, backup_size, backup_root, since),
        )

    def restore_explained(self, restore: int, index: int) -> None:
        self._write("UPDATE restores SET explained = ? WHERE id = ?", (index, restore))

    def restore_page(self, restore: int, peer: str, after: str | None, returned: int) -> None:
        """How far `peer` has given back (None: from the start), and how many so far."""
        self._write(
            "INSERT INTO restore_peers (restore, peer, after, returned) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (restore, peer) DO UPDATE SET after = excluded.after,"
            " returned = restore_peers.returned + excluded.returned",
            (restore, peer, after, returned),
        )

    def restore_peer_done(self, restore: int, peer: str) -> None:
        self._write(
            "UPDATE restore_peers SET done = ? WHERE restore = ? AND peer = ?",
            (self.now, restore, peer),
        )

    def restore_finished(self, restore: int) -> None:
        self._write("UPDATE restores SET finished = ? WHERE id = ?", (self.now, restore))

    def insert_message(
        self,
        *,
        id: str,
        box: Box,
        peer: NodeId,
        type: MessageType | None,
        priority: Priority,
        priority_rank: int,
        state: State,
        created: int,
        expires: int,
        envelope: bytes,
        digest: bytes,
        received: int | None = None,
        self_sealed: bytes | None = None,
        composed_by: str | None = None,
        origin: NodeId | None = None,
        path: Sequence[NodeId] = (),
        case_ref: str | None = None,
        in_reply_to: str | None = None,
        due: Due = _NO_DEADLINES,
        alert_at: int | None = None,
        listing: bytes | None = None,
        attachment: int | None = None,
        approval: str | None = None,
    ) -> MessageRow:
        """Insert a message (the caller has checked, in this transaction, that its id is
        new); the row as stored. KeyError for a box, type or priority not in its set."""
        row = MessageRow(
            id=id,
            box=_BOXES[box],  # members or their values alike: the row holds members
            peer=peer,
            type=None if type is None else _TYPES[type],
            priority=_PRIORITIES[priority],
            state=state,
            created=created,
            expires=expires,
            received=received,
            updated=self.now,
            envelope=envelope,
            digest=digest,
            self_sealed=self_sealed,
            composed_by=composed_by,
            attempts=0,
            origin=origin or None,
            via=None,
            retry_at=0,
            hop_acked=False,
            path=tuple(path),
            case_ref=case_ref,
            in_reply_to=in_reply_to,
            receipt_due=due.receipt,
            ack_due=due.acknowledgement,
            response_due=due.response,
            alert_at=alert_at,
            listing=listing,
            attachment=attachment,
            approval=approval,
        )
        values = _stored(row)
        self._write(_INSERT_ROW, (*(values[name] for name in _ROW_COLUMNS), priority_rank))
        self._write(_INSERT_ENVELOPE, (id, envelope, self_sealed))
        self._rows[id] = row
        return row

    def transition(self, message: MessageRow, event: Event) -> State:
        """Move a message by the lifecycle table; returns the new state.
        IllegalTransition if the table has no such move (nothing is written)."""
        state = next_state(TABLES[message.box], message.state, event)
        self._write(
            "UPDATE messages SET state = ?, updated = ? WHERE id = ?",
            (state.value, self.now, message.id),
        )
        self._rows[message.id] = message._replace(state=state, updated=self.now)
        return state

    def acted(self, message: MessageRow, event: Event, *, acked_by: str | None = None) -> State:
        """An acknowledgement or an answer, on either side: the state moves; who did it is kept."""
        state = self.transition(message, event)
        if acked_by is not None:
            self._write("UPDATE messages SET acked_by = ? WHERE id = ?", (acked_by, message.id))
            self._rows[message.id] = message._replace(state=state, acked_by=acked_by)
        return state

    def sent(self, message: MessageRow, event: Event, via: NodeId, retry_at: int) -> State:
        """Written to the link to `via` (`event`: the caller's lifecycle event for it, a send
        or a resend); may go again at `retry_at` without a receipt. Returns the new state;
        IllegalTransition if the table has no such move (nothing is written)."""
        state = next_state(TABLES[message.box], message.state, event)
        self._write(
            "UPDATE messages SET state = ?, updated = ?, attempts = attempts + 1, via = ?,"
            " retry_at = ?, hop_acked = 0 WHERE id = ?",
            (state.value, self.now, via, retry_at, message.id),
        )
        self._rows[message.id] = message._replace(
            state=state,
            updated=self.now,
            attempts=message.attempts + 1,
            via=via,
            retry_at=retry_at,
            hop_acked=False,
        )
        return state

    def hop_acked(self, message: MessageRow) -> None:
        """The hop it was last sent to took it on."""
        self._write("UPDATE messages SET hop_acked = 1 WHERE id = ?", (message.id,))
        current = self._rows.get(message.id) or message
        self._rows[message.id] = current._replace(hop_acked=True)

    def preserved(self, message_id: str, until: int | None, *, decision: int | None = None) -> None:
        """The data is preserved until `until` (the requested Party says so), or until the
        decision on the MLA request it received at `decision` (`until` None), or no longer
        (both None: the requester withdrew or released it)."""
        self._write(
            "UPDATE messages SET preserved_until = ?, until_decision = ?, updated = ? WHERE id = ?",
            (until, decision, self.now, message_id),
        )
        self._rows.pop(message_id, None)

    def set_listing(self, message_id: str, listing: bytes) -> None:
        """A message's sealed listing line (one stored before lines were kept)."""
        self._write("UPDATE messages SET listing = ? WHERE id = ?", (listing, message_id))
        self._rows.pop(message_id, None)

    def index_identifiers(self, message_id: str, tags: Iterable[str]) -> None:
        """The keyed digests of the identifiers a message names, for searches."""
        for tag in dict.fromkeys(tags):
            self._write(
                "INSERT OR IGNORE INTO identifiers (tag, message_id) VALUES (?, ?)",
                (tag, message_id),
            )

    def delete_contents(self, message_id: str, rule: str) -> None:
        """Destroy what can be read of a message (retention): its envelope's bytes, our
        sealed copy, its inbox line and its identifiers' digests; the row, its digest and
        receipts stay. Freed pages are overwritten at commit (secure_delete)."""
        self._secure_delete = True
        self._write(
            "UPDATE messages SET listing = NULL, deleted = ?, deleted_at = ? WHERE id = ?",
            (rule, self.now, message_id),
        )
        self._write(
            "UPDATE envelopes SET envelope = x'', self_sealed = NULL WHERE message_id = ?",
            (message_id,),
        )
        self._write("DELETE FROM identifiers WHERE message_id = ?", (message_id,))
        self._rows.pop(message_id, None)

    async def part_count(self, message_id: str) -> int:
        """How many attachment parts of `message_id` the store holds."""
        query = "SELECT COUNT(*) FROM messages WHERE in_reply_to = ? AND attachment IS NOT NULL"
        found = await self._read(lambda conn: conn.execute(query, (message_id,)).fetchone())
        return int(found[0])

    async def parts_kept(self, message_id: str) -> list[tuple[str, bytes]]:
        """(id, digest) of the attachment parts of `message_id` whose contents are kept."""
        query = (
            "SELECT id, digest FROM messages WHERE in_reply_to = ? AND attachment IS NOT NULL"
            " AND deleted IS NULL"
        )
        found = await self._read(lambda conn: conn.execute(query, (message_id,)).fetchall())
        return [(str(i), bytes(d)) for i, d in found]

    def add_enrolment(self, code_hash: bytes, user: str, expires: int) -> None:
        self._write(
            "INSERT INTO enrolments (code_hash, user, expires) VALUES (?, ?, ?)",
            (code_hash, user, expires),
        )

    async def take_enrolment(self, code_hash: bytes, user: str, now: int) -> bool:
        """Use up enrolment `code_hash` of `user`, if it is still good (once)."""
        query = "SELECT 1 FROM enrolments WHERE code_hash = ? AND user = ? AND expires > ?"
        found = await self._read(
            lambda conn: conn.execute(query, (code_hash, user, now)).fetchone()
        )
        self._write("DELETE FROM enrolments WHERE code_hash = ?", (code_hash,))
        return found is not None

    def add_passkey(self, credential_id: bytes, user: str, credential: bytes, label: str) -> None:
        self._write(
            "INSERT INTO passkeys (credential_id, user, credential, label, created)"
            " VALUES (?, ?, ?, ?, ?)",
            (credential_id, user, credential, label, self.now),
        )

    def passkey_used(self, credential_id: bytes, sign_count: int) -> None:
        self._write(
            "UPDATE passkeys SET sign_count = ?, last_used = ? WHERE credential_id = ?",
            (sign_count, self.now, credential_id),
        )

    def remove_passkey(self, credential_id: bytes) -> None:
        self._write("DELETE FROM passkeys WHERE credential_id = ?", (credential_id,))

    def place_hold(self, case_tag: str, reason: str, by: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO holds (case_ref, reason, placed_by, placed)"
            " VALUES (?, ?, ?, ?)",
            (case_tag, reason, by, self.now),
        )

    def release_hold(self, case_tag: str) -> None:
        self._write("DELETE FROM holds WHERE case_ref = ?", (case_tag,))

    def approval(self, message: MessageRow, approval: str, by: str) -> None:
        """A request's four-eyes decision (`approved`, `sent_back`) and who made it."""
        self._write(
            "UPDATE messages SET approval = ?, approved_by = ? WHERE id = ?",
            (approval, by, message.id),
        )
        self._rows[message.id] = message._replace(approval=approval, approved_by=by)

    def parts_follow(self, message_id: str, state: State) -> None:
        """The parts of a message's files held with it (four eyes) move as it moves."""
        self._write(
            "UPDATE messages SET state = ?, updated = ? WHERE in_reply_to = ?"
            " AND attachment IS NOT NULL AND state = 'awaiting_approval'",
            (state.value, self.now, message_id),
        )

    def schedule(self, message: MessageRow, due: Due, alert_at: int | None) -> None:
        """A message's deadlines, from now on (an approved request's start at approval)."""
        self._write(
            "UPDATE messages SET receipt_due = ?, ack_due = ?, response_due = ?, alert_at = ?"
            " WHERE id = ?",
            (due.receipt, due.acknowledgement, due.response, alert_at, message.id),
        )
        self._rows[message.id] = message._replace(
            receipt_due=due.receipt,
            ack_due=due.acknowledgement,
            response_due=due.response,
            alert_at=alert_at,
        )

    def assign(self, message_id: str, officer: str) -> None:
        """`officer` holds the message from now on."""
        self._write(
            "UPDATE messages SET assigned_to = ?, updated = ? WHERE id = ?",
            (officer, self.now, message_id),
        )
        self._rows.pop(message_id, None)

    def response_due(self, message_id: str, due: int) -> None:
        """The final answer is now due at `due` (the request was handed on)."""
        self._write(
            "UPDATE messages SET response_due = ?, updated = ? WHERE id = ?",
            (due, self.now, message_id),
        )
        self._rows.pop(message_id, None)

    def alerts(self, message_id: str, overdue: Iterable[Overdue], alert_at: int | None) -> None:
        """Which deadlines are passed and unmet, and when to look again (None: never)."""
        self._write(
            "UPDATE messages SET overdue = ?, alert_at = ? WHERE id = ?",
            (format_overdue(overdue), alert_at, message_id),
        )
        self._rows.pop(message_id, None)

    def retry_now(self, message_ids: Sequence[str]) -> None:
        """Make messages sent without any receipt eligible at once (their link went down)."""
        for i in message_ids:
            self._write(
                "UPDATE messages SET retry_at = 0 WHERE id = ? AND hop_acked = 0"
                " AND state IN ('queued', 'sent')",
                (i,),
            )
            self._rows.pop(i, None)

    def requeue_now(self, message: MessageRow) -> None:
        """A forwarded copy to send again at once (its sender asked again)."""
        self._write("UPDATE messages SET retry_at = 0, hop_acked = 0 WHERE id = ?", (message.id,))
        current = self._rows.get(message.id) or message
        self._rows[message.id] = current._replace(retry_at=0, hop_acked=False)

    def keep_roster(self, version: int, raw: bytes) -> None:
        """An accepted roster, kept (a version kept already stays as it was)."""
        self._write(
            "INSERT OR IGNORE INTO rosters (version, raw, accepted) VALUES (?, ?, ?)",
            (version, raw, self.now),
        )

    def insert_receipt(self, row: ReceiptRow) -> None:
        """A receipt we issued or received (one already kept under its id stays)."""
        self._write(
            "INSERT OR IGNORE INTO receipts (id, message_id, direction, signer, scope, outcome,"
            " reason, time, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.message_id,
                row.direction,
                row.signer,
                row.scope,
                row.outcome,
                row.reason,
                row.time,
                row.raw,
            ),
        )

    def peer_contact(self, peer: str) -> None:
        """Any contact from a peer resets its backoff (Matrix's lesson)."""
        self._write(
            "INSERT INTO peers (id, failures, retry_at, last_seen) VALUES (?, 0, 0, ?)"
            " ON CONFLICT (id) DO UPDATE SET failures = 0, retry_at = 0,"
            " last_seen = excluded.last_seen, last_error = NULL",
            (peer, self.now),
        )

    def peer_failure(self, peer: str, retry_at: int, error: str) -> None:
        """A failed contact: one more failure, the next try at `retry_at`, the error kept."""
        self._write(
            "INSERT INTO peers (id, failures, retry_at, last_error) VALUES (?, 1, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET failures = failures + 1, retry_at = excluded.retry_at,"
            " last_error = excluded.last_error",
            (peer, retry_at, error[:500]),
        )

    def add_user(self, name: str, role: str, token_hash: bytes) -> None:
        """A user and the hash of their token (an existing user's role and token replaced)."""
        self._write(
            "INSERT INTO users (name, role, token_hash, created) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET role = excluded.role,"
            " token_hash = excluded.token_hash, created = excluded.created",
            (name, role, token_hash, self.now),
        )

    def set_user(self, name: str, *, role: str | None = None, disabled: bool | None = None) -> None:
        """Change a user's role, or disable (enable) their token."""
        if role is not None:
            self._write("UPDATE users SET role = ? WHERE name = ?", (role, name))
        if disabled is not None:
            self._write("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))

    def remove_user(self, name: str) -> None:
        """Drop user `name` and so its token: the next request with it gets 401."""
        self._write("DELETE FROM users WHERE name = ?", (name,))


class _WriteLock:
    """One write transaction at a time: a flash message's first, then an officer's.

    At a busy relay dozens of links queue transactions; a duty officer's
    submit waits for the one under way, not for all of those queued before
    it, and a flash message (`urgent`) waits for nothing else queued. Among
    equals, first come, first served. Officers' turns never starve the
    links for long: after `OFFICERS_IN_A_ROW` of them, a waiting link's turn
    comes (under a flood of submits, the links still send and take receipts,
    or nothing submitted would ever be delivered).

    The lock is handed to the next waiter when freed, and that waiter runs at the loop's
    next turn. A flash message's transaction that comes meanwhile takes it at once; the
    waiter keeps its turn and takes the lock when that one ends. At 90% load the lock was
    being handed on nearly every time a flash transaction came, and the hand-over was a
    turn of a loaded sender's loop: 1 ms at p50, 6 at p99. Taken so, it counts as an
    officer's turn, as when handed to it: the links keep their share of turns.
    """

    OFFICERS_IN_A_ROW: Final = 4

    def __init__(self, on_free: Callable[[], None] = lambda: None) -> None:
        self._held = False
        self._handed: Future[None] | None = None  # the waiter whose turn it is
        # flash, officers, the others
        self._queues: tuple[deque[Future[None]], ...] = (deque(), deque(), deque())
        self._on_free = on_free  # called whenever the lock is freed with no one to take it
        self._officers_in_a_row = 0

    async def acquire(self, first: bool, urgent: bool = False) -> None:
        """Wait for the lock: `urgent` (a flash message's) before every other waiter,
        `first` (an officer's) before the links'."""
        if not self._held and (urgent or (self._handed is None and not self.waiting)):
            if self.waiting:  # ahead of others: a turn taken, as if handed to it
                self._officers_in_a_row += 1
            self._held = True
            return
        queue = self._queues[0 if urgent else 1 if first else 2]
        waiter: Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        while True:
            try:
                await waiter
            except asyncio.CancelledError:
                if self._handed is waiter:  # its turn came just as it was cancelled
                    self._handed = None
                    if not self._held:
                        self._hand_on()
                else:
                    with contextlib.suppress(ValueError):
                        queue.remove(waiter)
                raise
            if not self._held:
                self._handed = None
                self._held = True
                return
            # A flash message's transaction took the lock meanwhile: the turn stays ours.
            waiter = self._handed = asyncio.get_running_loop().create_future()

    def release(self) -> None:
        """Free the lock for the waiter whose turn it is, or the next one, if any."""
        self._held = False
        if self._handed is None:
            self._hand_on()
        elif not self._handed.done():
            self._handed.set_result(None)  # it waited again behind a flash transaction

    def _hand_on(self) -> None:
        flash, officers, others = self._queues
        if self._officers_in_a_row >= self.OFFICERS_IN_A_ROW and others:
            order = (flash, others, officers)
        else:
            order = (flash, officers, others)
        for queue in order:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    self._handed = waiter
                    in_a_row = self._officers_in_a_row
                    self._officers_in_a_row = 0 if queue is others else in_a_row + 1
                    return
        self._officers_in_a_row = 0
        self._on_free()

    @property
    def free(self) -> bool:
        """Neither held nor handed to a waiter."""
        return not self._held and self._handed is None

    @property
    def waiting(self) -> int:
        """How many transactions wait for the one under way (the one whose turn it is
        included)."""
        return sum(len(queue) for queue in self._queues) + (self._handed is not None)

    @asynccontextmanager
    async def held(self, *, first: bool = False) -> AsyncIterator[None]:
        await self.acquire(first)
        try:
            yield
        finally:
            self.release()


# SQLite's own page cache per connection (its default is 2 MiB). Pages it drops come
# back from the OS's cache of the file for a read call; the writer keeps enough for the
# B-tree pages a group of use cases touches. At 2 MiB each, the caches of 193 nodes'
# two connections were a fifth of the simulation's memory.
WRITER_CACHE_KIB = 1024
READER_CACHE_KIB = 256
GLANCER_CACHE_KIB = 128
# SQLite's temporary files (a use case's savepoint journal past 64 KiB, transient indices)
# in memory: on disk each was created, unlinked and closed in /var/tmp, and in the
# simulation those calls were 5% of the machine's CPU (perf, strace). What they hold is
# what a use case touches, which the writer's cache holds too.
TEMP_IN_MEMORY = "PRAGMA temp_store = MEMORY"
# How long a statement waits for another process's lock (`cpn user add` beside the node).
# The writer's connection waits so only on its thread (`_waiting_for_locks`): its
# statements on the loop's thread fail at once instead, and a BEGIN that does goes to
# the thread. (Set around each BEGIN on the loop, it cost two statements more a batch.)
BUSY_TIMEOUT_MS: Final = 5000


@contextlib.contextmanager
def _waiting_for_locks(conn: sqlite3.Connection) -> Iterator[None]:
    """On the writer's thread: its statements in the block wait `BUSY_TIMEOUT_MS` for
    another process's lock."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        yield
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        found = await db.execute_fetchall("PRAGMA user_version")
        row = next(iter(found), None)
        version = int(row[0]) if row else 0
    except aiosqlite.DatabaseError as exc:
        raise StoreError(f"{path}: not a cpn store: {exc}") from exc
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} is newer than this cpn ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[target]):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {target}")
            await db.execute("COMMIT")
        except BaseException as exc:
            await db.execute("ROLLBACK")
            if not isinstance(exc, sqlite3.Error):
                raise
            # SQLite's words (a full disk, a file another program changed, an SQLite too old
            # for the statement), and where the file was left: whole, at the step before.
            raise StoreError(
                f"{path}: could not migrate from schema version {target - 1} to {target}"
                f" (SQLite {sqlite3.sqlite_version}; this cpn needs {_SQLITE_NEEDED}): {exc};"
                f" the file is left whole at version {target - 1}"
            ) from exc


_SQLITE_NEEDED: Final = "3.35 or later"  # ALTER TABLE ... DROP COLUMN (schema 15)


# A batch commits once no use case waits for the lock, or once it is this old or this big:
# under load, waiters gather while a COMMIT is on disk, and the next batch takes them all.
BATCH_MS: Final = 5
BATCH_USE_CASES: Final = 256

# Where a batch's COMMIT runs. On the writer's thread it costs two hops: the thread, which
# never preempts the loop (`_wakes_without_preempting`), waits for a core, and its outcome
# waits for the loop's next turn. At 90% load that made the sender's COMMIT 1.2 ms at the
# median and 8 to 11 ms at p99, against 0.35 and 3 ms on the loop's own thread, and a flash
# message waits for the COMMIT under way (docs/PERFORMANCE.md, twentieth session). On the
# loop, the loop waits for the disk instead: worth it while the disk answers fast. So a
# store opened with `inline_commits` (`cpn node run`: one node, its loop its own) commits
# on the loop while its recent COMMITs took at most this long on average, and on the
# thread while they take longer (a slow or failing disk: the loop serves meanwhile).
INLINE_COMMIT_MS: Final = 2.0


class CommitPlace:
    """Where the next COMMIT runs (`on_loop`), from how long the recent durable ones took:
    an average that weighs each new one an eighth, so one slow COMMIT (a checkpoint) moves
    it little and a disk that stays slow moves it past `INLINE_COMMIT_MS` within a few. A
    lazy COMMIT (`durable=False`) does not wait for the disk, and does not count: between
    two slow durable ones, a few quick lazy ones would bring the COMMITs back to the loop."""

    __slots__ = ("allowed", "average_ms", "counts")

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.average_ms = 0.0
        self.counts = {"loop": 0, "thread": 0}  # COMMITs run in each place (metrics)

    @property
    def on_loop(self) -> bool:
        return self.allowed and self.average_ms <= INLINE_COMMIT_MS

    def took(self, place: str, ms: float | None) -> None:
        """A COMMIT ran in `place`; a durable one took `ms` on its own (the hops not
        counted), a lazy one gives None."""
        self.counts[place] += 1
        if ms is not None:
            self.average_ms += (ms - self.average_ms) / 8


class _Batch:
    """The use cases since the writer's last COMMIT: they commit together (group commit),
    each caller awaiting the COMMIT that holds its work. A use case's writes are applied
    before the batch's next statement (another's read, or the COMMIT). A batch is all
    durable or all not (SQLite sets `synchronous` between transactions)."""

    def __init__(self, durable: bool) -> None:
        self.durable = durable
        self.started = time.monotonic()
        self.urgent = False  # a flash message's use case is in it: commit at its end
        # On the loop: use cases ended (their writes to apply), each with its waiter.
        self.pending: list[tuple[Tx, Future[None]]] = []
        # Under the lock, as applied:
        self.applied: list[tuple[Future[None], BaseException | None]] = []  # waiter, error
        self.leaves: list[bytes] = []  # entries past the tree's size, in order
        self.begun = False  # the writer's transaction is open
        # Read once under the lock (`Tx._apply`): other processes' entries, and the time
        # of the log's last entry (then that of the batch's own last).
        self.others_read = False
        self.last_time: int | None = None

    def joined(self, tx: Tx) -> Future[None]:
        waiter: Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((tx, waiter))
        return waiter

    def due(self) -> bool:
        return (
            self.urgent
            or len(self.pending) + len(self.applied) >= BATCH_USE_CASES
            or time.monotonic() - self.started >= BATCH_MS / 1000
        )

    def begin(self, conn: sqlite3.Connection, *, wait: bool) -> None:
        """BEGIN IMMEDIATE. `wait`: on the writer's thread, for as long as another process
        (`cpn user add` beside the node) holds the write lock; else it fails at once
        (sqlite3.OperationalError) rather than stop the loop it runs on."""
        if not self.durable:
            conn.execute("PRAGMA synchronous = NORMAL")  # back to FULL at its COMMIT
        try:
            if wait:
                with _waiting_for_locks(conn):
                    conn.execute("BEGIN IMMEDIATE")
            else:
                conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.end(conn, "ROLLBACK")
            raise
        self.begun = True

    def end(self, conn: sqlite3.Connection, statement: str) -> None:
        """COMMIT (where `CommitPlace` says: it waits for the disk) or ROLLBACK; on a COMMIT
        that fails, ROLLBACK. `synchronous` back to FULL either way."""
        try:
            if conn.in_transaction:
                conn.execute(statement)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        finally:
            if not self.durable:
                conn.execute("PRAGMA synchronous = FULL")

    def apply(self, conn: sqlite3.Connection) -> None:
        """Once begun, on the loop's thread: apply the use cases ended since, each in its
        savepoint. One that fails, whatever the cause (SQLite's, or an audit log another
        process left with a gap), is kept with its error for its caller: an error let out
        of here would drop the use cases after it, their callers waiting forever."""
        pending, self.pending = self.pending, []
        for tx, waiter in pending:
            try:
                tx._apply(conn)
            except Exception as exc:
                self.applied.append((waiter, exc))
            else:
                self.applied.append((waiter, None))


def _looked_at(waiter: Future[None]) -> None:
    """An early use case's outcome, which its caller does not wait for: a failure loses
    its change, as a crash would (it is not durable), and is logged."""
    if not waiter.cancelled() and (error := waiter.exception()) is not None:
        log.warning("an early write was lost: %s", error)


def _given_up(waiter: Future[None]) -> None:
    """A use case's outcome that its caller will not await: cancelled if still to come, its
    error retrieved if set, so that the loop does not report it as lost (a link went down
    while its BEGIN waited for another process, then the batch's COMMIT failed)."""
    if not waiter.done():
        waiter.cancel()
    elif not waiter.cancelled():
        waiter.exception()


def _timed_commit(batch: _Batch, conn: sqlite3.Connection) -> float:
    """`batch`'s COMMIT on `conn` (on the loop's thread or the writer's: `CommitPlace`),
    and how long it took (ms)."""
    started = time.perf_counter()
    batch.end(conn, "COMMIT")
    return (time.perf_counter() - started) * 1000


# The WAL is copied into the database (a checkpoint) on the reader's thread, beside the
# writer: SQLite's automatic checkpoint runs in the COMMIT that takes the WAL past 1,000
# pages, on the loop, about one in 25 under load, and took 2.9 ms at the median against
# 0.4 for the others (docs/PERFORMANCE.md, twenty-fourth session). One starts after a
# COMMIT once about as many pages have come as SQLite's would wait for (`CheckpointPace`),
# unless one is under way. The writer's own runs past `WAL_BACKSTOP_PAGES`: should those
# fall behind (a reader's thread held up), and because the WAL starts again from its
# first page only once all of it is copied, which under steady writes only a checkpoint
# in a COMMIT sees (nothing is appended during it); it copies only what came since the
# reader's last.
CHECKPOINT_PAGES: Final = 1000  # SQLite's own default
CHECKPOINT_EVERY_S: Final = (0.05, 5.0)  # the bounds of the time between two
WAL_BACKSTOP_PAGES: Final = 4000


class CheckpointPace:
    """When the next checkpoint is due: about `CHECKPOINT_PAGES` after the last one began,
    at the pace the WAL took pages until then. Only a checkpoint tells how many pages the
    WAL holds (SQLite gives Python no hook on its growth), so each one sets the time to the
    next: a busy node's come every tenth of a second or so, a quiet one's every few
    seconds, neither more often than SQLite's own would have."""

    __slots__ = ("began", "every_s", "pages")

    def __init__(self, now: float) -> None:
        self.began = now
        self.every_s = CHECKPOINT_EVERY_S[0]
        self.pages = 0  # what the WAL held at the last checkpoint

    def due(self, now: float) -> bool:
        return now - self.began >= self.every_s

    def begin(self, now: float) -> float:
        """A checkpoint begins `now`: the time since the last one began."""
        since, self.began = now - self.began, now
        return since

    def measured(self, since: float, pages: int) -> None:
        """A checkpoint found `pages` in the WAL, `since` seconds after the last one began
        (-1: it could not look, another checkpoint under way). The WAL starts again from
        its first page only once all of it is copied: while writes come as a checkpoint
        copies, it holds the pages copied before too, and only what it gained since the
        last look is new."""
        if pages < 0:
            return
        added = pages - self.pages if pages >= self.pages else pages
        self.pages = pages
        lowest, highest = CHECKPOINT_EVERY_S
        every = since * CHECKPOINT_PAGES / added if added else highest
        self.every_s = min(max(every, lowest), highest)

    def failed(self) -> None:
        """A checkpoint failed (a full disk: the WAL reuses its pages for COMMITs while the
        database cannot grow): the next one comes as late as any, and so does its log."""
        self.every_s = CHECKPOINT_EVERY_S[1]


def _checkpoint(conn: sqlite3.Connection) -> int:
    """Copy what it can of the WAL into the database, waiting for no one (PASSIVE); how
    many pages the WAL held (-1 if another checkpoint was under way)."""
    # Its row read to the end: a statement left running would hold its snapshot.
    ((busy, pages, _),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return -1 if busy else int(pages)


def _settle(waiter: Future[None], error: BaseException | None) -> None:
    """Tell a use case's caller how its COMMIT went (unless it stopped waiting)."""
    if waiter.done():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


class Store:
    """One node's SQLite file, through two connections, each with a thread of its own:
    `writer` for the transactions (`transaction()`), `db` for reads, which see only
    what is committed (WAL lets them run beside a COMMIT that waits for the disk);
    and a third on the loop's thread for short reads: by key, or on an index with a
    LIMIT (`_glance`)."""

    def __init__(
        self,
        writer: aiosqlite.Connection,
        writing: sqlite3.Connection,
        reader: aiosqlite.Connection,
        glancer: sqlite3.Connection,
        path: Path,
        clock: Callable[[], int] = now_ms,
        inline_commits: bool = False,
    ) -> None:
        self.writer = writer
        self._writing = writing  # the writer's own connection, for the loop's thread (`_begun`)
        self.db = reader
        self._glancer = glancer  # short reads of what is committed, on the loop (`_glance`)
        self.path = path
        self.clock = clock  # audit entry times, read when written (ms since the epoch)
        self._lock = _WriteLock(on_free=self._commit_left_over)
        self._batch: _Batch | None = None  # applied, not yet committed
        self._committer: asyncio.Task[None] | None = None
        self.audit_log = MerkleLog()  # the committed audit entries' leaf hashes, as a Merkle tree
        self.commits = CommitPlace(inline_commits)
        self._checkpointing: Future[int] | None = None  # on the reader's thread
        self._checkpoint_pace = CheckpointPace(time.monotonic())

    @classmethod
    async def open(
        cls, path: Path, *, clock: Callable[[], int] = now_ms, inline_commits: bool = False
    ) -> Store:
        """Open (creating if needed) and migrate; StoreError says what is wrong.

        `clock` (ms since the epoch) gives audit entries their time at commit.
        `inline_commits`: a batch's COMMIT may run on the loop's thread (`CommitPlace`), for
        a process whose loop runs this node alone."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Used from the loop's thread too, never at once with its own (`Store._begun`).
            writer = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
        except Exception as exc:  # aiosqlite re-raises sqlite3 errors from its thread
            raise StoreError(f"{path}: cannot open store: {exc}") from exc
        reader: aiosqlite.Connection | None = None
        glancer: sqlite3.Connection | None = None
        try:
            await _migrate(writer, path)
            await writer.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            await writer.execute(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}")
            await writer.execute(TEMP_IN_MEMORY)
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute("PRAGMA query_only = ON")
            await reader.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
            await reader.execute(TEMP_IN_MEMORY)
            writing = await _on_thread(writer, lambda conn: conn)
            for connection in (writer, reader):
                await _on_thread(connection, _wakes_without_preempting)
            # timeout=0: a read that would wait for a lock goes to the reader's thread.
            glancer = sqlite3.connect(path, isolation_level=None, timeout=0)
            glancer.execute("PRAGMA query_only = ON")
            glancer.execute(f"PRAGMA cache_size = -{GLANCER_CACHE_KIB}")
            glancer.execute(TEMP_IN_MEMORY)
            store = cls(writer, writing, reader, glancer, path, clock, inline_commits)
            await store._load_audit_log()
            await writer.execute("PRAGMA busy_timeout = 0")  # `_waiting_for_locks`
        except BaseException:
            await writer.close()
            if reader is not None:
                await reader.close()
            if glancer is not None:
                glancer.close()
            raise
        return store

    async def _load_audit_log(self) -> None:
        """The tree of the stored entries (leaf hashes filled in for entries from before v4)."""
        missing = await self.writer.execute_fetchall(
            "SELECT seq, time, actor, action, message_id, detail FROM audit WHERE leaf IS NULL"
        )
        if missing:
            updates = []
            for seq, time, actor, action, message_id, detail in missing:
                parsed = json.loads(detail)
                leaf = entry_leaf(time, actor, action, message_id, parsed)
                updates.append((canonical(parsed).decode(), leaf, seq))

            def fill(conn: sqlite3.Connection) -> None:  # one hop, however many entries
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("UPDATE audit SET detail = ?, leaf = ? WHERE seq = ?", updates)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise

            await _on_thread(self.writer, fill)
        async with self.db.execute("SELECT leaf FROM audit ORDER BY seq") as cursor:
            while batch := await cursor.fetchmany(10_000):
                self.audit_log.extend(bytes(row[0]) for row in batch)

    @property
    def queued_transactions(self) -> int:
        """How many transactions wait for the write lock (a busy relay's links queue up)."""
        return self._lock.waiting

    async def close(self) -> None:
        async with self._lock.held():
            await self._flush()
            await self._checkpoint_over()
            await self.writer.close()
            await self.db.close()
            self._glancer.close()

    async def _glance(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """A short read of what is committed, on the loop's thread: a read on the reader's
        thread cost two wake-ups and the GIL handed back and forth for each of its
        statements, for a lookup that takes SQLite microseconds. A read that would
        wait for a lock (a WAL being reset) goes to the reader's thread instead."""
        try:
            return read(self._glancer)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
        return await _on_thread(self.db, read)

    @asynccontextmanager
    async def transaction(
        self,
        now: int,
        *,
        durable: bool = True,
        officer: bool = False,
        urgent: bool = False,
        early: bool = False,
    ) -> AsyncIterator[Tx]:
        """One use case's write transaction: everything in it commits together, or nothing
        does; it returns once committed (raising StoreError if the COMMIT failed).

        Group commit: use cases take the write lock in turn, each applies its writes to
        the writer's open transaction, and the batch commits once no one waits for the
        lock, the use cases ready on the loop having had their turn (or once it is
        `BATCH_MS` old or `BATCH_USE_CASES` big, or holds a flash one); every caller in it
        waits for that COMMIT. `durable=False` allows a batch without the fsync for
        changes a crash may lose harmlessly (a `sent` mark: the message goes again and is
        deduplicated); the next durable commit makes them durable too (WAL). `officer`:
        an officer waits on it, so it goes before the links' queued transactions.
        `urgent`: a flash message waits on it, so it goes before every other queued
        transaction and its batch commits at its end. `early` (with `durable=False`): it
        goes first too, but its caller goes on once its writes are in the batch, ahead
        of every use case after it, and the batch is left to the next holder to commit
        (or, if none waits, to a commit of its own once the lock is free): a flash
        message's sent mark, which its receipt's transaction, waiting for it, commits
        (as `urgent`, each flash message cost the sender a COMMIT more, which kept a
        loaded sender's batches small: docs/PERFORMANCE.md). A COMMIT that fails loses
        it, as a crash would, and logs it. `now` dates the rows it writes; its audit
        entries are timed when applied.
        """
        if early and durable:
            raise ValueError("an early transaction is not awaited to its COMMIT: durable=False")
        await self._lock.acquire(officer, urgent or early)
        committed: Future[None] | None = None
        try:
            if self._batch is not None and durable and not self._batch.durable:
                await self._flush()  # a durable use case never waits on a lazy COMMIT
            tx = Tx(self, now, self._batch or self._begin_batch(durable))
            try:
                yield tx
                if tx._writes or tx._entries or tx._secure_delete:
                    tx._batch.urgent |= urgent or tx.urgent
                    committed = tx._batch.joined(tx)
            except (sqlite3.OperationalError, sqlite3.IntegrityError) as exc:
                raise StoreError(f"{self.path}: read failed, nothing stored: {exc}") from exc
        finally:
            try:
                batch = self._batch
                # An early use case leaves its batch to the next holder (or, if none
                # waits, to a commit of its own once the lock is free).
                left = early and batch is not None and not batch.due()
                if not left and (
                    batch is not None
                    and batch.pending
                    and self._lock.waiting == 0
                    and not batch.due()
                ):
                    # The use cases ready on the loop now take their turns first and join.
                    await asyncio.sleep(0)
                if (
                    not left
                    and self._batch is not None
                    and (self._lock.waiting == 0 or self._batch.due())
                ):
                    await self._flush()
            except BaseException:
                if committed is not None:
                    _given_up(committed)  # its caller stops here, cancelled or failing
                raise
            finally:
                self._lock.release()
        if committed is not None:
            if early:
                committed.add_done_callback(_looked_at)
            else:
                await committed

    def _begin_batch(self, durable: bool) -> _Batch:
        self._batch = _Batch(durable)
        return self._batch

    async def _begun(self, batch: _Batch) -> sqlite3.Connection:
        """The writer's connection, for the lock's holder on the loop's thread, with
        `batch`'s transaction begun.

        Why on the loop's thread: each statement on the writer's thread gave up the GIL
        and waited up to the switch interval to take it back from a busy loop, and a hop
        there cost two wake-ups; a flash message's transactions waited for all of it
        (docs/PERFORMANCE.md, sixth session). Only what waits goes to the thread: a BEGIN
        that another process's write lock holds up, and the COMMIT (the disk) unless it
        runs on the loop (`CommitPlace`). Never at once: the thread runs only hops the
        lock's holder awaits."""
        if await self._begin(batch):
            raise asyncio.CancelledError  # once begun: the batch is left to the lock's next holder
        return self._writing

    async def _begin(self, batch: _Batch) -> bool:
        """Begin `batch`'s transaction if it is not yet; whether the caller was cancelled
        while the BEGIN waited on the thread (it is then begun, or failed, all the same)."""
        if batch.begun:
            return False
        try:
            batch.begin(self._writing, wait=False)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
        else:
            return False
        # another process writes: wait for it on the thread
        begin = _queued_on_thread(self.writer, partial(batch.begin, wait=True))
        cancelled = await _to_its_end(begin)
        if begin.exception() is not None and cancelled:
            raise asyncio.CancelledError  # nothing begun: the cancellation is what goes on
        begin.result()
        return cancelled

    async def _flush(self) -> None:
        """COMMIT the batch (under the lock): its entries join the tree, its callers go on.

        The COMMIT's outcome is every caller's: a holder cancelled while its BEGIN or
        COMMIT is on the thread (a link going down) goes on all the same, tells the others
        what it was, and only then is cancelled. Whatever fails, no transaction is left
        open for the next BEGIN to fail on."""
        batch, self._batch = self._batch, None
        cancelled = False
        if batch is not None and (batch.begun or batch.pending):
            try:
                cancelled = await self._begin(batch)
                batch.apply(self._writing)
                if self.commits.on_loop:
                    place, took = "loop", _timed_commit(batch, self._writing)
                else:
                    commit = _queued_on_thread(self.writer, partial(_timed_commit, batch))
                    cancelled |= await _to_its_end(commit)
                    place, took = "thread", commit.result()
                self.commits.took(place, took if batch.durable else None)
            except BaseException as exc:
                if self._writing.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        batch.end(self._writing, "ROLLBACK")
                failed = self._write_failed(exc)
                for _, waiter in batch.pending:
                    _settle(waiter, failed)
                for waiter, _ in batch.applied:
                    _settle(waiter, failed)
                if not isinstance(exc, sqlite3.Error):
                    raise
            else:
                # Only what is committed joins the tree.
                self.audit_log.extend(batch.leaves)
                for waiter, error in batch.applied:
                    _settle(waiter, error and self._write_failed(error))
                self._checkpoint_soon()
        if cancelled:
            raise asyncio.CancelledError

    def _checkpoint_soon(self) -> None:
        """A checkpoint queued on the reader's thread if one is due (`CheckpointPace`) and
        none is under way."""
        now = time.monotonic()
        if (
            self._checkpointing is None or self._checkpointing.done()
        ) and self._checkpoint_pace.due(now):
            try:
                checkpoint = _queued_on_thread(self.db, _checkpoint)
            except ValueError:  # the reader closed: the writer's own checkpoints go on
                return
            since = self._checkpoint_pace.begin(now)
            checkpoint.add_done_callback(partial(self._checkpoint_ended, since))
            self._checkpointing = checkpoint

    async def _checkpoint_over(self) -> None:
        """Once the reader's checkpoint under way, if any, has ended (its outcome is
        `_checkpoint_ended`'s). Under the write lock, none is queued meanwhile."""
        if self._checkpointing is not None:
            await asyncio.wait([self._checkpointing])

    def _checkpoint_ended(self, since: float, checkpoint: Future[int]) -> None:
        """A checkpoint's outcome, which no one awaits: the pace of the next, or a failure,
        which leaves the pages in the WAL for the next (or the writer's own) to copy, and
        is logged."""
        if checkpoint.cancelled():
            return
        if (error := checkpoint.exception()) is not None:
            log.warning("a checkpoint of the WAL failed: %s", error)
            self._checkpoint_pace.failed()
        else:
            self._checkpoint_pace.measured(since, checkpoint.result())

    def _write_failed(self, cause: BaseException) -> StoreError:
        """What a use case's caller gets for SQLite's `cause` (which the API names)."""
        failed = StoreError(f"{self.path}: write failed, nothing stored: {cause}")
        failed.__cause__ = cause
        return failed

    def _commit_left_over(self) -> None:
        """The lock was freed with a batch applied and not committed (an early use case
        left it, or its next holder was cancelled as it was handed the lock): commit it
        now."""
        if self._batch is not None and (self._committer is None or self._committer.done()):

            async def commit() -> None:
                async with self._lock.held():
                    if self._batch is not None:
                        await self._flush()

            self._committer = asyncio.get_running_loop().create_task(commit())

    async def known_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` the store already holds (one query for a batch)."""
        return await self._glance(partial(_known_ids, ids=ids))

    async def search(
        self,
        *,
        tags: Sequence[str] = (),
        case: str | None = None,
        peer: str | None = None,
        type: str | None = None,
        box: str | None = None,
        state: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
    ) -> list[MessageRow]:
        """Messages sent or received here that name one of the identifier `tags` (when
        given) and match every other criterion, newest first."""
        clauses: list[str] = ["box IN ('in', 'out')", "attachment IS NULL"]
        params: list[Any] = []
        source = f"FROM {_MESSAGES}"
        if tags:
            # The identifier's few rows first (CROSS JOIN keeps that order), each message
            # found by its key: never a walk through the whole box by date.
            marks = ",".join("?" * len(tags))
            source = f"FROM identifiers CROSS JOIN {_MESSAGES}"
            clauses.append(f"tag IN ({marks}) AND id = identifiers.message_id")
            params.extend(tags)
        equal, values = _equal(
            (("case_ref", case), ("peer", peer), ("type", type), ("box", box), ("state", state))
        )
        clauses.extend(equal)
        params.extend(values)
        if since is not None:
            clauses.append("created >= ?")
            params.append(since)
        if until is not None:
            clauses.append("created < ?")
            params.append(until)
        query = (
            f"SELECT DISTINCT {_MESSAGE_COLUMNS} {source} WHERE {' AND '.join(clauses)}"
            " ORDER BY created DESC LIMIT ?"
        )
        return [_message(r) for r in await self.db.execute_fetchall(query, (*params, limit))]

    async def lapsed(
        self, rules: Sequence[RetentionRule], now: int, limit: int = 200
    ) -> list[tuple[MessageRow, RetentionRule]]:
        """Messages whose contents a retention rule says must go by `now`, each with the rule
        that governs it (the first of `rules` that matches it), oldest change first; none
        of a case under a legal hold, nor what answers or follows a request of one."""
        found: list[tuple[MessageRow, RetentionRule]] = []
        for i, rule in enumerate(rules):
            query, values = _lapsed_query(rule, rules[:i])
            rows = await self.db.execute_fetchall(
                query, (now - rule.after_ms, *values, limit - len(found))
            )
            found.extend((_message(r), rule) for r in rows)
            if len(found) >= limit:
                break
        return found

    async def approvals(self) -> list[MessageRow]:
        """Requests waiting for a second officer (or sent at once, to approve after), oldest
        first."""
        return await self._select("WHERE approval = 'pending' ORDER BY created LIMIT 500")

    async def enrolment(self, code_hash: bytes, now: int) -> str | None:
        """The user a still-good enrolment code is for, or None."""
        found = await self.db.execute_fetchall(
            "SELECT user FROM enrolments WHERE code_hash = ? AND expires > ?", (code_hash, now)
        )
        return next((str(row[0]) for row in found), None)

    async def passkey_credentials(self, user: str) -> list[bytes]:
        found = await self.db.execute_fetchall(
            "SELECT credential FROM passkeys WHERE user = ?", (user,)
        )
        return [bytes(row[0]) for row in found]

    async def passkey(self, credential_id: bytes) -> tuple[str, bytes, int] | None:
        """(user, credential, signature counter) of passkey `credential_id`, or None."""
        found = await self.db.execute_fetchall(
            "SELECT user, credential, sign_count FROM passkeys WHERE credential_id = ?",
            (credential_id,),
        )
        return next(((str(u), bytes(c), int(n)) for u, c, n in found), None)

    async def passkey_list(self, user: str) -> list[dict[str, Any]]:
        found = await self.db.execute_fetchall(
            "SELECT credential_id, label, created, last_used FROM passkeys WHERE user = ?"
            " ORDER BY created",
            (user,),
        )
        return [
            {
                "id": b64encode(bytes(i)),
                "raw_id": bytes(i),
                "label": str(label),
                "created": created,
                "last_used": used,
            }
            for i, label, created, used in found
        ]

    async def holds(self) -> list[dict[str, Any]]:
        rows = await self.db.execute_fetchall(
            "SELECT case_ref, reason, placed_by, placed FROM holds ORDER BY placed"
        )
        return [{"case_tag": c, "reason": r, "placed_by": b, "placed": t} for c, r, b, t in rows]

    async def truncate_wal(self) -> None:
        """Copy the WAL into the database and empty it: after a deletion, the old pages'
        copies in the WAL go too (best effort: a reader holding them defers it)."""
        async with self._lock.held():
            await self._flush()
            await self._checkpoint_over()  # it would hold the checkpointer's lock

            def checkpoint(conn: sqlite3.Connection) -> None:
                with _waiting_for_locks(conn):  # for readers to leave the old pages
                    # Its row read to the end: a statement left running would hold up the
                    # next COMMIT (aiosqlite's thread keeps the last result it handed back).
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

            await _on_thread(self.writer, checkpoint)

    async def messages_by_id(self, ids: Sequence[str]) -> list[MessageRow]:
        """The rows of `ids` the store holds, in the order of `ids` (one query)."""
        found = await self._glance(partial(_fetch_messages, ids=ids))
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    # -- reads -----------------------------------------------------------------

    async def _select(self, clauses: str, params: Sequence[Any] = ()) -> list[MessageRow]:
        """The rows `SELECT ... FROM _MESSAGES {clauses}` finds, decoded."""
        query = f"SELECT {_MESSAGE_COLUMNS} FROM {_MESSAGES} {clauses}"
        return [_message(r) for r in await self.db.execute_fetchall(query, params)]

    async def message(self, message_id: str) -> MessageRow | None:
        found = await _on_thread(self.db, partial(_fetch_messages, ids=[message_id]))
        return found.get(message_id)

    async def messages(
        self,
        *,
        box: str | None = None,
        state: str | None = None,
        priority: str | None = None,
        limit: int = 100,
        before: str | None = None,
        case: str | None = None,
        parts: bool = False,
    ) -> list[MessageRow]:
        """Newest first, by urgency within the inbox listing order of the caller; the parts
        of attachments only with `parts`."""
        clauses, params = _equal(
            (("box", box), ("state", state), ("priority", priority), ("case_ref", case))
        )
        if not parts:
            clauses.append("attachment IS NULL")
        if before is not None:
            clauses.append("id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._select(
            f"{where} ORDER BY priority_rank, created DESC LIMIT ?", (*params, limit)
        )

    async def thread(self, row: MessageRow) -> list[MessageRow]:
        """The messages that answer, extend or follow `row`, and the one it answers."""
        return await self._select(
            "WHERE (in_reply_to = ? AND attachment IS NULL) OR id = ? ORDER BY created",
            (row.id, row.in_reply_to or ""),
        )

    async def parts(self, message_id: str, attachment: int) -> list[MessageRow]:
        """The parts of file `attachment` of `message_id` held here (any order)."""
        return await self._select(
            "WHERE in_reply_to = ? AND attachment = ?", (message_id, attachment)
        )

    async def part_counts(self, message_id: str) -> dict[int, tuple[int, int]]:
        """Per file of `message_id`: the parts held here, and those the recipient has
        signed for (what we sent) -- read from the index, no part opened."""
        rows = await self.db.execute_fetchall(
            "SELECT attachment, COUNT(*), SUM(state IN ('delivered', 'acknowledged',"
            " 'answered')) FROM messages WHERE in_reply_to = ? AND attachment IS NOT NULL"
            " GROUP BY attachment",
            (message_id,),
        )
        return {int(a): (int(n), int(d or 0)) for a, n, d in rows}

    async def waiting(
        self,
        destinations: Sequence[str],
        limit: int,
        now: int,
        max_rank: int = 2,
        *,
        retries: int = 0,
    ) -> list[Waiting]:
        """What may go now to any of `destinations`, ours and relayed: by priority, oldest
        first; with `retries` (ms), only messages sent whose retry time is from then to now
        (not those queued, whose retry time is 0). Only what routing needs is read: a hub looks
        through thousands of rows to send a few, whose whole rows it then reads by id. On
        the loop's thread (`_glance`): on the reader's, every look of every link's feed
        cost a hop, and a hub's links look all the time."""
        if not destinations:
            return []
        marks = ",".join("?" * len(destinations))
        # Chosen on the index alone; the columns read come before the envelope in a row.
        query = (
            "SELECT id, peer, box, origin, path, priority_rank FROM messages WHERE rowid IN ("
            " SELECT rowid FROM messages INDEXED BY messages_outbox"
            f" WHERE peer IN ({marks}) AND box IN ('out', 'relay') AND state IN ('queued', 'sent')"
            " AND retry_at BETWEEN ? AND ? AND priority_rank <= ?"
            " ORDER BY priority_rank, created LIMIT ?)"
            " ORDER BY priority_rank, created"
        )
        params = (*destinations, retries, now, max_rank, limit)
        rows = await self._glance(lambda conn: conn.execute(query, params).fetchall())
        return [_waiting(r) for r in rows]

    async def earliest_retry(self, after: int = 0) -> int | None:
        """When the first message sent without its end-to-end receipt may go again, of
        those whose retry time is past `after` (ms; None: none waits). Only `Tx.sent` sets a
        retry time; a queued message's is 0."""
        query = (
            "SELECT MIN(retry_at) FROM messages INDEXED BY messages_outbox"
            " WHERE box IN ('out', 'relay') AND state IN ('queued', 'sent') AND retry_at > ?"
        )
        ((earliest,),) = await self._glance(lambda conn: conn.execute(query, (after,)).fetchall())
        return None if earliest is None else int(earliest)

    async def preserved_requests(self) -> list[MessageRow]:
        """Preservations open: those we asked for (box out) and those we granted (box in, the
        data held here), soonest to lapse first, then those kept until an MLA decision."""
        return await self._select(
            "WHERE box IN ('out', 'in') AND type = 'preservation' AND in_reply_to IS NULL"
            " AND (preserved_until IS NOT NULL OR until_decision IS NOT NULL)"
            " ORDER BY preserved_until IS NULL, preserved_until, until_decision"
        )

    async def overdue_messages(self, limit: int) -> list[MessageRow]:
        """Messages with a deadline passed and unmet, the most urgent first."""
        return await self._select(
            "WHERE overdue != '' ORDER BY priority_rank, created LIMIT ?", (limit,)
        )

    async def alerts_due(self, now: int, limit: int) -> list[str]:
        """Ids of the messages whose deadline scan is due at `now`, the earliest first."""
        rows = await self.db.execute_fetchall(
            "SELECT id FROM messages WHERE alert_at IS NOT NULL AND alert_at <= ?"
            " ORDER BY alert_at LIMIT ?",
            (now, limit),
        )
        return [str(r[0]) for r in rows]

    async def latest_checkpoint(self) -> str | None:
        """Our newest signed checkpoint note."""
        rows = await self.db.execute_fetchall(
            "SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1"
        )
        return next((str(r[0]) for r in rows), None)

    async def checkpoint_note(self, size: int) -> str | None:
        """The checkpoint note we signed at `size`, if we did."""
        rows = await self.db.execute_fetchall(
            "SELECT note FROM checkpoints WHERE size = ?", (size,)
        )
        return next((str(r[0]) for r in rows), None)

    async def cosigned_sizes(self) -> dict[str, int]:
        """The largest size each witness cosigned."""
        rows = await self.db.execute_fetchall(
            "SELECT witness, MAX(size) FROM cosignatures GROUP BY witness"
        )
        return {str(witness): int(size) for witness, size in rows}

    async def witnessed(self, node: str) -> tuple[int, bytes, str] | None:
        """The checkpoint of `node` we hold as its witness: (size, root, note)."""
        rows = await self.db.execute_fetchall(
            "SELECT size, root, note FROM witnessed WHERE node = ?", (node,)
        )
        return next(((int(r[0]), bytes(r[1]), str(r[2])) for r in rows), None)

    async def open_restore(self) -> RestoreRow | None:
        """The restore not yet finished, if any, with how far each peer has given back."""
        rows = await self.db.execute_fetchall(
            "SELECT id, restored_at, backup_size, backup_root, since, explained FROM restores"
            " WHERE finished IS NULL ORDER BY id DESC LIMIT 1"
        )
        row = next(iter(rows), None)
        if row is None:
            return None
        peers = await self.db.execute_fetchall(
            "SELECT peer, after, returned, done FROM restore_peers WHERE restore = ?", (row[0],)
        )
        return RestoreRow(
            id=int(row[0]),
            restored_at=int(row[1]),
            backup_size=int(row[2]),
            backup_root=bytes(row[3]),
            since=int(row[4]),
            explained=None if row[5] is None else int(row[5]),
            peers={
                str(p): RestorePeer(None if a is None else str(a), int(n), d is not None)
                for p, a, n, d in peers
            },
        )

    async def restore_explained(self) -> tuple[int, int] | None:
        """(backup size, index of the `restored` entry) of the newest restore we explained."""
        rows = await self.db.execute_fetchall(
            "SELECT backup_size, explained FROM restores WHERE explained IS NOT NULL"
            " ORDER BY id DESC LIMIT 1"
        )
        return next(((int(r[0]), int(r[1])) for r in rows), None)

    async def entry_bytes_at(self, index: int) -> bytes | None:
        """The canonical bytes of audit entry `index` (its leaf's input), if it exists."""
        rows = await self.db.execute_fetchall(
            "SELECT time, actor, action, message_id, detail FROM audit WHERE seq = ?",
            (index + 1,),
        )
        row = next(iter(rows), None)
        if row is None:
            return None
        time, actor, action, message_id, detail = row
        detail_json = detail.encode() if isinstance(detail, str) else bytes(detail)
        return stored_entry_bytes(int(time), str(actor), str(action), message_id, detail_json)

    async def newest_entry(self, action: str) -> int | None:
        """The index of the newest audit entry of `action`."""
        rows = await self.db.execute_fetchall(
            "SELECT MAX(seq) FROM audit WHERE action = ?", (action,)
        )
        found = next(iter(rows))[0]
        return None if found is None else int(found) - 1

    async def receipted_by(
        self, recipient: str, since: int, after: str | None, limit: int
    ) -> list[tuple[str, bytes, bytes]]:
        """(id, envelope, receipt) of what we sent or relayed to `recipient` and hold its
        accepted end-to-end receipt for, dated at or after `since`, in id order after
        `after`: what a restored `recipient` asks back."""
        rows = await self.db.execute_fetchall(
            "SELECT m.id, e.envelope, r.raw FROM messages m"
            " JOIN envelopes e ON e.message_id = m.id JOIN receipts r"
            " ON r.id = (SELECT id FROM receipts WHERE message_id = m.id"
            " AND direction = 'received' AND signer = ? AND scope = 'end_to_end'"
            " AND outcome = 'accepted' ORDER BY time LIMIT 1)"
            " WHERE m.box IN ('out', 'relay') AND m.peer = ? AND m.id > ? AND r.time >= ?"
            " AND m.deleted IS NULL"
            " ORDER BY m.id LIMIT ?",
            (recipient, recipient, after or "", since, limit),
        )
        return [(str(i), bytes(e), bytes(r)) for i, e, r in rows]

    async def latest_roster(self) -> bytes | None:
        found = await self.db.execute_fetchall(
            "SELECT raw FROM rosters ORDER BY version DESC LIMIT 1"
        )
        row = next(iter(found), None)
        return None if row is None else bytes(row[0])

    async def queued_counts(self, *, not_taken_on: bool = False) -> dict[str, int]:
        """Messages waiting to go (ours or relayed) by destination; with `not_taken_on`,
        only those no hop has taken on yet."""
        rows = await self.db.execute_fetchall(
            "SELECT peer, COUNT(*) FROM messages INDEXED BY messages_outbox"
            " WHERE box IN ('out', 'relay') AND state IN ('queued', 'sent')"
            f"{' AND hop_acked = 0' if not_taken_on else ''}"
            " GROUP BY peer"
        )
        return {peer: count for peer, count in rows}

    async def message_counts(self) -> dict[tuple[str, str], int]:
        """How many messages there are by (box, state): a walk of a small index."""
        rows = await self.db.execute_fetchall(
            "SELECT box, state, COUNT(*) FROM messages INDEXED BY messages_states"
            " GROUP BY box, state"
        )
        return {(box, state): count for box, state, count in rows}

    async def overdue_count(self) -> int:
        """How many messages have a deadline passed and unmet (a partial index)."""
        rows = await self.db.execute_fetchall(
            "SELECT COUNT(*) FROM messages INDEXED BY messages_overdue WHERE overdue != ''"
        )
        return int(next(iter(rows))[0])

    async def checkpoint_size(self) -> int:
        """The tree size of the latest checkpoint we signed; 0 before the first."""
        rows = await self.db.execute_fetchall("SELECT MAX(size) FROM checkpoints")
        return int(next(iter(rows))[0] or 0)

    async def cosigned_size(self) -> int:
        """The largest tree size of ours a witness cosigned; 0 before the first."""
        rows = await self.db.execute_fetchall("SELECT MAX(size) FROM cosignatures")
        return int(next(iter(rows))[0] or 0)

    async def due_to_expire(self, now: int, limit: int = 500) -> list[MessageRow]:
        """Messages still waiting to go whose expiry is before `now` (at most `limit`)."""
        return await self._select(
            "WHERE state IN ('queued', 'sent') AND expires < ? LIMIT ?", (now, limit)
        )

    async def receipts(self, message_id: str) -> list[ReceiptRow]:
        rows = await self.db.execute_fetchall(
            "SELECT id, message_id, direction, signer, scope, outcome, reason, time, raw"
            " FROM receipts WHERE message_id = ? ORDER BY time, id",
            (message_id,),
        )
        return [ReceiptRow(*r) for r in rows]

    async def audit_for(self, message_id: str) -> list[dict[str, Any]]:
        rows = await self.db.execute_fetchall(
            "SELECT seq, time, actor, action, detail FROM audit WHERE message_id = ? ORDER BY seq",
            (message_id,),
        )
        return [
            {"seq": s, "time": t, "actor": a, "action": act, "detail": json.loads(d)}
            for s, t, a, act, d in rows
        ]

    async def peers(self) -> dict[str, dict[str, Any]]:
        rows = await self.db.execute_fetchall(
            "SELECT id, failures, retry_at, last_seen, last_error FROM peers"
        )
        return {
            r[0]: {"failures": r[1], "retry_at": r[2], "last_seen": r[3], "last_error": r[4]}
            for r in rows
        }

    async def users(self) -> list[UserRow]:
        """Who may use the API, by name (never their token hashes)."""
        rows = await self.db.execute_fetchall(
            "SELECT name, role, created, disabled FROM users ORDER BY name"
        )
        return [UserRow(str(r[0]), str(r[1]), int(r[2]), bool(r[3])) for r in rows]

    async def user_count(self) -> int:
        found = await self.db.execute_fetchall("SELECT COUNT(*) FROM users")
        row = next(iter(found), None)
        return int(row[0]) if row else 0

    async def user(self, name: str) -> UserRow | None:
        """User `name` (disabled or not), or None."""
        return await _on_thread(self.db, partial(_fetch_user, name=name))

    async def user_by_token_hash(self, token_hash: bytes) -> UserRow | None:
        query = "SELECT name, role, created FROM users WHERE token_hash = ? AND disabled = 0"
        row = await self._glance(lambda conn: conn.execute(query, (token_hash,)).fetchone())
        return None if row is None else UserRow(*row)


def _statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
