"""Retention: when a message's contents must go (issue 20, item 6).

Data-protection law (EU LED Art. 4(1)(e) and 5, and its equivalents) wants
personal data deleted once it is no longer needed. A node's `[retention.NAME]`
rules say, per box, message type and state, how long after its last change a
message's contents are kept; the first rule that matches a message, in the
order the config lists them, is the one that applies (a message no rule
matches is kept).

What goes is what can be read: the envelope's bytes (the sealed body, as sent
or received), our own sealed copy of what we sent, the sealed inbox line, the
keyed digests of the identifiers it names, and its attachments. What stays is
what proves the exchange without revealing it: the row (parties, type, times,
state), the envelope's SHA-256, every signed receipt (which names that digest),
and the audit log, to which the deletion is one more entry. A legal hold on a
case stops deletion for its messages until released.

Only states a message cannot leave by itself are allowed in a rule: a queued or
sent message still needs its envelope to go, and deleting it would lose it.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from network.core.errors import ConfigError
from network.core.lifecycle import State
from network.core.records import Box, MessageType

__all__ = [
    "CONTENTS",
    "KEPT_STATES",
    "RetentionRule",
    "rule_for",
]

# A message in one of these still needs its envelope: it may be sent, or sent again.
KEPT_STATES: Final = frozenset({State.QUEUED, State.SENT, State.AWAITING_APPROVAL})

# What a deletion destroys, as its audit entry names it.
CONTENTS: Final = ("envelope", "sent_copy", "inbox_line", "identifiers", "attachments")

# The boxes a rule covers when it names none: what was sent and received here. A relay
# holds only bytes it cannot read, kept until delivered; a rule may name "relay" too.
DEFAULT_BOXES: Final = frozenset({Box.IN, Box.OUT})


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """Delete the contents of messages in `boxes`, of `types` (None: any), in one of
    `states`, `after_ms` after their last change."""

    name: str
    states: frozenset[State]
    after_ms: int
    types: frozenset[MessageType] | None = None
    boxes: frozenset[Box] = DEFAULT_BOXES

    @classmethod
    def parse(cls, name: str, table: object, where: str, after_ms: int) -> RetentionRule:
        """The rule `[retention.NAME]` (its `after` already parsed by the caller, who knows
        durations); raises ConfigError naming the key that is wrong."""
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        extra = sorted(set(table) - {"states", "types", "boxes", "after"})
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: unknown key")
        states = frozenset(_members(State, table.get("states"), f"{where}.states"))
        if not states:
            raise ConfigError(f"{where}.states: name at least one state")
        kept = sorted(states & KEPT_STATES)
        if kept:
            raise ConfigError(
                f"{where}.states: {kept[0]} is not allowed: a {kept[0]} message still needs"
                " its envelope to be delivered"
            )
        types = None
        if "types" in table:
            types = frozenset(_members(MessageType, table["types"], f"{where}.types"))
            if not types:
                raise ConfigError(f"{where}.types: name at least one type, or leave it out")
        boxes = DEFAULT_BOXES
        if "boxes" in table:
            boxes = frozenset(_members(Box, table["boxes"], f"{where}.boxes"))
            if not boxes:
                raise ConfigError(f"{where}.boxes: name at least one box, or leave it out")
        return cls(name, states, after_ms, types, boxes)

    def matches(self, box: Box, message_type: MessageType | None, state: State) -> bool:
        return (
            box in self.boxes
            and state in self.states
            and (self.types is None or message_type in self.types)
        )


def rule_for(
    rules: Sequence[RetentionRule],
    box: Box,
    message_type: MessageType | None,
    state: State,
) -> RetentionRule | None:
    """The rule that governs a message: the first that matches it (None: kept)."""
    return next((r for r in rules if r.matches(box, message_type, state)), None)


E = TypeVar("E", State, MessageType, Box)


def _members(kind: type[E], value: object, where: str) -> Iterable[E]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of names")
    known = {m.value: m for m in kind}
    for item in value:
        if item not in known:
            raise ConfigError(f"{where}: {item!r} is not one of {', '.join(sorted(known))}")
        yield known[item]
