"""The yearly statistics a Party reports on its use of the 24/7 network (issue 20, item 7).

Read from the node's store, read-only (`read_year`), and computed by a pure function
(`compute`) over what the store keeps in clear: each message's type, peer, priority and
creation time, the end-to-end receipts, and the audit entries of acknowledgements and
answers (with the answer's status and refusal ground). No body is opened.

What is counted, for requests created in the year (UTC), sent and received apart:

- requests by type, by country and by priority (acknowledgements, responses and
  follow-ups are not requests);
- times from creation to the end-to-end receipt (sent only: the receiver returns it at
  once), to the acknowledgement (the first one, or the first answer), and to the final
  answer (an interim one, such as needs_info, does not end the wait); median and 90th
  percentile, by the nearest-rank method, with how many there were;
- the outcome of each preservation request answered (its last final answer), refusals
  by ground; extensions (a preservation continuing one to the same Party) and MLA notices.
"""

from __future__ import annotations

import datetime
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from network.core.bodies import INTERIM_ANSWERS, ResponseStatus
from network.core.records import MessageType
from network.node.auditfile import snapshot

__all__ = ["Answer", "Request", "compute", "read_year", "to_csv_rows"]

_NOT_REQUESTS: Final = frozenset({"acknowledgement", "response", "follow_up", "attachment_part"})
_INTERIM: Final = frozenset(str(s) for s in INTERIM_ANSWERS)


@dataclass(frozen=True, slots=True)
class Answer:
    """An acknowledgement (`status` None) or an answer, as the audit log recorded it."""

    time: int
    status: str | None = None
    refusal_ground: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """A request sent (`box` out) or received (`box` in), with what followed it."""

    id: str
    box: str
    peer: str
    type: str
    priority: str
    created: int
    receipt: int | None = None  # the first accepting end-to-end receipt (sent requests)
    answers: tuple[Answer, ...] = field(default=())
    extends_preservation: bool = False


def _year_bounds(year: int) -> tuple[int, int]:
    start = datetime.datetime(year, 1, 1, tzinfo=datetime.UTC)
    end = datetime.datetime(year + 1, 1, 1, tzinfo=datetime.UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def read_year(path: Path, year: int) -> list[Request]:
    """The requests created in `year` (UTC) in the store at `path`, with their receipts
    and the acknowledgements and answers the audit log recorded."""
    low, high = _year_bounds(year)
    with snapshot(path) as db:
        rows = db.execute(
            "SELECT m.id, m.box, m.peer, m.type, m.priority, m.created, t.type FROM messages m"
            " LEFT JOIN messages t ON t.id = m.in_reply_to"
            " WHERE m.box IN ('in', 'out') AND m.created >= ? AND m.created < ?"
            " ORDER BY m.created",
            (low, high),
        ).fetchall()
        requests = [r for r in rows if r[3] and r[3] not in _NOT_REQUESTS]
        ids = [r[0] for r in requests]
        receipts: dict[str, int] = {}
        answers: dict[str, list[Answer]] = {}
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            for message_id, time in db.execute(
                f"SELECT message_id, MIN(time) FROM receipts WHERE message_id IN ({marks})"  # noqa: S608
                " AND direction = 'received' AND scope = 'end_to_end' AND outcome != 'rejected'"
                " GROUP BY message_id",
                chunk,
            ):
                receipts[message_id] = time
            for message_id, time, action, detail in db.execute(
                f"SELECT message_id, time, action, detail FROM audit WHERE message_id IN ({marks})"  # noqa: S608
                " AND action IN ('acknowledged', 'answered', 'replied') ORDER BY seq",
                chunk,
            ):
                parsed = _detail(detail)
                status = parsed.get("status") if action != "acknowledged" else None
                ground = parsed.get("refusal_ground")
                answers.setdefault(message_id, []).append(
                    Answer(
                        time,
                        status if isinstance(status, str) else None,
                        ground if isinstance(ground, str) else None,
                    )
                )
    return [
        Request(
            id=message_id,
            box=box,
            peer=peer,
            type=kind,
            priority=priority,
            created=created,
            receipt=receipts.get(message_id),
            answers=tuple(answers.get(message_id, ())),
            extends_preservation=kind == "preservation" and target == "preservation",
        )
        for message_id, box, peer, kind, priority, created, target in requests
    ]


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _detail(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _percentile(values: Sequence[int], share: float) -> int | None:
    """The nearest-rank percentile of `values` (None for none)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _times(values: Sequence[int]) -> dict[str, int | None]:
    return {
        "count": len(values),
        "median_ms": _percentile(values, 0.5),
        "p90_ms": _percentile(values, 0.9),
    }


def compute(requests: Sequence[Request], *, year: int, node: str) -> dict[str, Any]:
    """The year's statistics as JSON (see the module's docstring)."""
    return {
        "year": year,
        "node": node,
        "sent": _side([r for r in requests if r.box == "out"], with_receipt=True),
        "received": _side([r for r in requests if r.box == "in"], with_receipt=False),
    }


def _side(requests: Sequence[Request], *, with_receipt: bool) -> dict[str, Any]:
    to_receipt: list[int] = []
    to_ack: list[int] = []
    to_answer: list[int] = []
    outcomes: Counter[str] = Counter()
    grounds: Counter[str] = Counter()
    for r in requests:
        if with_receipt and r.receipt is not None:
            to_receipt.append(r.receipt - r.created)
        if r.answers:
            to_ack.append(r.answers[0].time - r.created)
        final = [a for a in r.answers if a.status is not None and a.status not in _INTERIM]
        if final:
            to_answer.append(final[0].time - r.created)
        if r.type == MessageType.PRESERVATION and final:
            last = final[-1]
            outcomes[last.status or ""] += 1
            if last.status == ResponseStatus.REFUSED and last.refusal_ground:
                grounds[last.refusal_ground] += 1
    times = {"acknowledgement": _times(to_ack), "response": _times(to_answer)}
    if with_receipt:
        times = {"receipt": _times(to_receipt), **times}
    return {
        "requests": len(requests),
        "by_type": dict(sorted(Counter(r.type for r in requests).items())),
        "by_country": dict(sorted(Counter(r.peer for r in requests).items())),
        "by_priority": dict(sorted(Counter(r.priority for r in requests).items())),
        "times": times,
        "preservation_outcomes": dict(sorted(outcomes.items())),
        "refusals_by_ground": dict(sorted(grounds.items())),
        "extensions": sum(r.extends_preservation for r in requests),
        "mla_notices": sum(r.type == MessageType.MLA_NOTICE for r in requests),
    }


def to_csv_rows(stats: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The statistics as (direction, figure, key, value) rows, for a spreadsheet."""
    rows: list[tuple[str, str, str, str]] = []
    for side in ("sent", "received"):
        data = stats[side]
        rows.append((side, "requests", "", str(data["requests"])))
        for figure in ("by_type", "by_country", "by_priority", "preservation_outcomes",
                       "refusals_by_ground"):  # fmt: skip
            rows.extend((side, figure, key, str(value)) for key, value in data[figure].items())
        for step, values in data["times"].items():
            for measure in ("count", "median_ms", "p90_ms"):
                value = values[measure]
                rows.append((side, f"time_to_{step}", measure, "" if value is None else str(value)))
        rows.append((side, "extensions", "", str(data["extensions"])))
        rows.append((side, "mla_notices", "", str(data["mla_notices"])))
    return rows
