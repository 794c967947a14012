"""Deadlines by priority, and what is overdue when. Pure: no I/O, no clock.

Rules:
- Times are integer milliseconds since the Unix epoch (UTC), passed in as `now`.
- Every deadline runs from the message's `created` time. The sender watches the
  receipt (its node), the acknowledgement and the response (the receiving
  officers); the receiver watches its own officers' acknowledgement and
  response, never a receipt: the node returns that at once.
- A deadline is overdue once `due <= now` while the state says it is unmet.
  An expired or rejected message is not escalated here: expiry and rejection
  are raised where they happen.
- A preservation answered `preserved` (or `partially_preserved`) is watched
  from `preserved_until - preservation_warning` until `preserved_until`, so
  that an extension or MLA notice goes out before the data is lost (Budapest
  Art. 29(7)), on both sides: the requester's, and the requested Party's, which
  holds the data. When the date passes, `preservation_lapsed` is raised once. An
  answered follow-up moves `preserved_until` to the date it gives; an MLA notice,
  and an answer that keeps the data until the MLA decision (Budapest 29(7)),
  leave no date to watch; a withdrawal or release clears it. An interim answer
  (more information needed, a risk notice, handed on) leaves the response
  deadline running; a hand-on's `expected_by` moves it to the end of that day.
- The watcher looks at a message at its `alert_at`: a deadline newly passed is
  flagged, audited and alerted at once; while any stays unmet the alert is
  repeated every `repeat` (the shortest among what is pending).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final, NamedTuple

from network.core.lifecycle import State
from network.core.records import Box, MessageType, Priority

__all__ = [
    "DAY",
    "DEFAULT_DEADLINES",
    "MIN_PRESERVATION_DAYS",
    "Box",
    "Deadlines",
    "Due",
    "Overdue",
    "PriorityDeadlines",
    "Review",
    "Tracked",
    "describe",
    "due_times",
    "expects_reply",
    "format_overdue",
    "next_alert",
    "parse_overdue",
    "pending",
    "preservation_period_problem",
    "preserved_until_ms",
    "reschedule",
    "review",
]

SECOND: Final = 1000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR


class Overdue(StrEnum):
    """What can be overdue; the values are the flags stored and shown."""

    RECEIPT = "receipt"
    ACKNOWLEDGEMENT = "acknowledgement"
    RESPONSE = "response"
    PRESERVATION_EXPIRING = "preservation_expiring"
    PRESERVATION_LAPSED = "preservation_lapsed"  # raised once, when the date has passed


@dataclass(frozen=True, slots=True)
class PriorityDeadlines:
    """Durations in ms from `created`, and how often an unmet one is alerted again."""

    receipt_ms: int
    ack_ms: int
    response_ms: int
    repeat_ms: int

    def __post_init__(self) -> None:
        if min(self.receipt_ms, self.ack_ms, self.response_ms, self.repeat_ms) <= 0:
            raise ValueError("deadlines and the repeat interval must be positive")


@dataclass(frozen=True, slots=True)
class Deadlines:
    """A node's deadlines: one set per priority, and the preservation warning."""

    per_priority: Mapping[Priority, PriorityDeadlines] = field(hash=False)
    preservation_warning_ms: int = 10 * DAY  # warn this long before `preserved_until`
    preservation_repeat_ms: int = DAY  # and again this often until someone acts

    def __post_init__(self) -> None:
        missing = [p.value for p in Priority if p not in self.per_priority]
        if missing:
            raise ValueError(f"deadlines missing for {', '.join(missing)}")
        if self.preservation_warning_ms <= 0 or self.preservation_repeat_ms <= 0:
            raise ValueError("the preservation warning and its repeat must be positive")
        object.__setattr__(self, "per_priority", MappingProxyType(dict(self.per_priority)))


DEFAULT_DEADLINES: Final = Deadlines(
    per_priority={
        # Life or safety at risk: a duty officer answers the phone within minutes.
        Priority.FLASH: PriorityDeadlines(
            receipt_ms=5 * MINUTE, ack_ms=15 * MINUTE, response_ms=4 * HOUR, repeat_ms=5 * MINUTE
        ),
        # Data may be lost within hours.
        Priority.URGENT: PriorityDeadlines(
            receipt_ms=30 * MINUTE, ack_ms=2 * HOUR, response_ms=DAY, repeat_ms=30 * MINUTE
        ),
        Priority.ROUTINE: PriorityDeadlines(
            receipt_ms=4 * HOUR, ack_ms=DAY, response_ms=10 * DAY, repeat_ms=4 * HOUR
        ),
    },
    preservation_warning_ms=10 * DAY,
    preservation_repeat_ms=DAY,
)


class Due(NamedTuple):
    """Due times in ms since the epoch; None where nothing is awaited."""

    receipt: int | None
    acknowledgement: int | None
    response: int | None


@dataclass(frozen=True, slots=True)
class Tracked:
    """What the deadline checks need to know of one message."""

    box: Box
    state: State
    priority: Priority
    receipt_due: int | None = None
    ack_due: int | None = None
    response_due: int | None = None
    preserved_until: int | None = None  # ms; set on a preservation answered `preserved`
    overdue: frozenset[Overdue] = frozenset()  # flagged (and audited) already
    alert_at: int | None = None  # when the watcher looks next


@dataclass(frozen=True, slots=True)
class Review:
    """What to do with a message now: the flags to store, the overdue items to
    audit (first time) and to alert, and when to look again (None: never)."""

    overdue: frozenset[Overdue]
    newly: tuple[Overdue, ...]
    alert: tuple[Overdue, ...]
    alert_at: int | None


# The states in which each deadline is still unmet (the `lifecycle` tables' names).
_UNMET: Final[dict[tuple[Box, Overdue], frozenset[State]]] = {
    (Box.OUT, Overdue.RECEIPT): frozenset({State.QUEUED, State.SENT}),
    (Box.OUT, Overdue.ACKNOWLEDGEMENT): frozenset({State.QUEUED, State.SENT, State.DELIVERED}),
    (Box.OUT, Overdue.RESPONSE): frozenset(
        {State.QUEUED, State.SENT, State.DELIVERED, State.ACKNOWLEDGED}
    ),
    (Box.IN, Overdue.ACKNOWLEDGEMENT): frozenset({State.RECEIVED, State.OPENED}),
    (Box.IN, Overdue.RESPONSE): frozenset({State.RECEIVED, State.OPENED, State.ACKNOWLEDGED}),
}

_NO_REPLY: Final = frozenset(
    {MessageType.ACKNOWLEDGEMENT, MessageType.RESPONSE, MessageType.FOLLOW_UP}
)


def expects_reply(message_type: MessageType) -> bool:
    """False for acknowledgements, responses and follow-ups: nobody acknowledges or answers
    those (what a follow-up asks is answered on the request it follows)."""
    return message_type not in _NO_REPLY


def due_times(
    deadlines: Deadlines, priority: Priority, created: int, box: Box, *, reply: bool = True
) -> Due:
    """The due times of a message created at `created`.

    Inbound messages have no receipt deadline (the node returns the receipt at
    once); with `reply=False` (see `expects_reply`) only the receipt is awaited.
    """
    d = deadlines.per_priority[priority]
    return Due(
        receipt=created + d.receipt_ms if box == Box.OUT else None,
        acknowledgement=created + d.ack_ms if reply else None,
        response=created + d.response_ms if reply else None,
    )


MIN_PRESERVATION_DAYS: Final = 60  # Budapest 29(7): "a period not less than sixty days"


def preservation_period_problem(request: MessageType, date: str, now: int) -> str | None:
    """Why `date`, given as `preserved_until` in answer to `request` at `now` (ms), is not
    one a requested Party may give (None: it may): never in the past, and for a first
    preservation not under the 60 days of Budapest 29(7) (a continuation after an MLA
    notice runs until the decision, so any later date stands)."""
    until = preserved_until_ms(date)
    today = now - now % DAY
    if until <= today:
        return f"{date} is not after today: a preservation cannot end in the past"
    if request is MessageType.PRESERVATION and until < today + MIN_PRESERVATION_DAYS * DAY:
        earliest = datetime.datetime.fromtimestamp(
            (today + MIN_PRESERVATION_DAYS * DAY) / SECOND, datetime.UTC
        ).date()
        return (
            f"{date} is under the {MIN_PRESERVATION_DAYS} days of Budapest 29(7): on or"
            f" after {earliest.isoformat()}"
        )
    return None


def preserved_until_ms(date: str) -> int:
    """The start (00:00 UTC) of a `preserved_until` full-date such as ``2027-02-18``:
    the earliest reading of the date, so the warning never comes late.
    Raises ValueError for anything but YYYY-MM-DD."""
    day = datetime.date.fromisoformat(date)
    if day.isoformat() != date:
        raise ValueError(f"expected YYYY-MM-DD, got {date!r}")
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    return int(start.timestamp()) * SECOND


def _watched(tracked: Tracked, deadlines: Deadlines, now: int) -> dict[Overdue, int]:
    """Each deadline still unmet, with the time it becomes overdue."""
    watched: dict[Overdue, int] = {}
    dues = (
        (Overdue.RECEIPT, tracked.receipt_due),
        (Overdue.ACKNOWLEDGEMENT, tracked.ack_due),
        (Overdue.RESPONSE, tracked.response_due),
    )
    for item, due in dues:
        unmet = _UNMET.get((tracked.box, item), frozenset())
        if due is not None and tracked.state in unmet:
            watched[item] = due
    until = tracked.preserved_until
    if until is not None and now < until:
        watched[Overdue.PRESERVATION_EXPIRING] = until - deadlines.preservation_warning_ms
    elif until is not None:
        watched[Overdue.PRESERVATION_LAPSED] = until
    return watched


def pending(tracked: Tracked, deadlines: Deadlines, now: int) -> list[Overdue]:
    """The deadlines passed and still unmet at `now`, in `Overdue` order
    (`deadlines` sets the preservation warning window)."""
    watched = _watched(tracked, deadlines, now)
    return [item for item in Overdue if item in watched and watched[item] <= now]


def _repeat(tracked: Tracked, deadlines: Deadlines, items: Iterable[Overdue]) -> int:
    every = deadlines.per_priority[tracked.priority].repeat_ms
    return min(
        deadlines.preservation_repeat_ms if item is Overdue.PRESERVATION_EXPIRING else every
        for item in items
    )


def next_alert(tracked: Tracked, deadlines: Deadlines, now: int, alerted: bool) -> int | None:
    """When the watcher should look at this message next: never before `now`,
    None when nothing is left to watch. The earliest of
    - each unmet deadline still to come, and the end of a preservation warning
      window under way (to lift its flag);
    - while something is pending: with `alerted` (everything pending was alerted
      at `now`), `now` + the repeat; without, `now` if a passed deadline is not
      flagged yet or no repeat is scheduled, else the repeat already scheduled.
    """
    watched = _watched(tracked, deadlines, now)
    # A lapse is alerted once: flagged, it asks for no further look.
    passed = [
        item
        for item, due in watched.items()
        if due <= now and not (item is Overdue.PRESERVATION_LAPSED and item in tracked.overdue)
    ]
    times = [due for due in watched.values() if due > now]
    if Overdue.PRESERVATION_EXPIRING in passed and tracked.preserved_until is not None:
        times.append(tracked.preserved_until)  # to lift the flag when the window closes
    repeating = [item for item in passed if item is not Overdue.PRESERVATION_LAPSED]
    if passed:
        if alerted:
            if repeating:
                times.append(now + _repeat(tracked, deadlines, repeating))
        elif not set(passed) <= tracked.overdue or tracked.alert_at is None:
            times.append(now)
        else:
            times.append(max(now, tracked.alert_at))
    return min(times, default=None)


def review(tracked: Tracked, deadlines: Deadlines, now: int) -> Review:
    """The watcher's decision at `now`: flag, audit and alert what is due.

    Everything pending is alerted when a deadline newly passed or the scheduled
    repeat has come; `newly` are the items flagged for the first time (audit them).
    """
    passed = pending(tracked, deadlines, now)
    newly = tuple(item for item in passed if item not in tracked.overdue)
    repeat_due = tracked.alert_at is None or tracked.alert_at <= now
    alerting = [i for i in passed if i is not Overdue.PRESERVATION_LAPSED or i in newly]
    alert = tuple(alerting) if alerting and (newly or repeat_due) else ()
    return Review(
        overdue=frozenset(passed),
        newly=newly,
        alert=alert,
        alert_at=next_alert(tracked, deadlines, now, alerted=bool(alert)),
    )


def reschedule(tracked: Tracked, deadlines: Deadlines, now: int) -> Review:
    """After a state change (acknowledged, answered, receipt, follow-up sent):
    the flags still standing and when to look next. Nothing is audited or
    alerted here; a deadline newly passed is left to the watcher, due at once."""
    passed = set(pending(tracked, deadlines, now))
    return Review(
        overdue=tracked.overdue & passed,
        newly=(),
        alert=(),
        alert_at=next_alert(tracked, deadlines, now, alerted=False),
    )


def format_overdue(items: Iterable[Overdue]) -> str:
    """The stored form of a set of flags: their values in `Overdue` order, comma-separated."""
    chosen = set(items)
    if not chosen:
        return ""  # most rows: every message's write goes through here
    return ",".join(item.value for item in Overdue if item in chosen)


def parse_overdue(text: str) -> frozenset[Overdue]:
    """Inverse of `format_overdue`; raises ValueError for an unknown flag."""
    return frozenset(Overdue(part) for part in text.split(",") if part)


def _span(ms: int) -> str:
    days, rest = divmod(max(ms, 0) // MINUTE, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if minutes or not parts:
        parts.append(f"{minutes} min")
    return " ".join(parts)


def _clock(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms // SECOND, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


_WHAT: Final[dict[tuple[Box, Overdue], str]] = {
    (Box.OUT, Overdue.RECEIPT): "no receipt from the receiving node",
    (Box.OUT, Overdue.ACKNOWLEDGEMENT): "not acknowledged by the receiving officers",
    (Box.OUT, Overdue.RESPONSE): "no response from the receiving officers",
    (Box.IN, Overdue.ACKNOWLEDGEMENT): "not acknowledged by our officers",
    (Box.IN, Overdue.RESPONSE): "not answered by our officers",
}


def describe(item: Overdue, tracked: Tracked, now: int) -> str:
    """One line for officers saying what is overdue, since when or until when."""
    if item is Overdue.PRESERVATION_EXPIRING:
        until = tracked.preserved_until or now
        if tracked.box == Box.IN:
            return (
                f"the preservation we granted ends {_clock(until)} ({_span(until - now)}"
                " left): the data may be released then unless the requester extends it"
            )
        return (
            f"data preserved until {_clock(until)} ({_span(until - now)} left):"
            " send an extension or the MLA notice before then"
        )
    if item is Overdue.PRESERVATION_LAPSED:
        until = tracked.preserved_until or now
        if tracked.box == Box.IN:
            return f"the preservation we granted ended {_clock(until)}: the data may be released"
        return (
            f"the preservation ended {_clock(until)}, {_span(now - until)} ago: the data may"
            " be gone; send a new preservation request if it is still needed"
        )
    due = {
        Overdue.RECEIPT: tracked.receipt_due,
        Overdue.ACKNOWLEDGEMENT: tracked.ack_due,
        Overdue.RESPONSE: tracked.response_due,
    }[item]
    what = _WHAT.get((tracked.box, item), f"{item.value} overdue")
    if due is None:
        return what
    return f"{what}: due {_clock(due)}, {_span(now - due)} overdue"
