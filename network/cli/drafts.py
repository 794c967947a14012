"""What an officer drafts for `cpn send` and `cpn reply`, read and checked before it is sent.

A draft is the JSON model of what the node's API takes: `{"to", "type",
"priority", "body"}` for a request, the response's fields for a reply. It
comes from a JSON or TOML file (or stdin), from assignments, or both (the
assignments apply on top of the file):

- `PATH=TEXT` sets a string, `PATH:=JSON` any JSON value (`period_days:=90`,
  `mla_intended:=true`, `data.categories:='["traffic"]'`);
- PATH names a field as the node's errors do: dotted, with `[N]` for an array
  item (`data.identifiers[0].kind`); missing objects and arrays are created,
  and `[N]` with N the array's length appends.

Checks run the code the node runs (`bodies.parse_request`, `bodies.parse_body`),
so a draft that passes here can be refused by the node only for what only the
node knows (its roster, the message replied to, the caller's role).
"""

from __future__ import annotations

import datetime
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from network.core.bodies import parse_body, parse_recipient, parse_request
from network.core.errors import BodyError, CpnError
from network.core.records import MessageType, parse_json

__all__ = [
    "MAX_DRAFT_BYTES",
    "Assignment",
    "apply",
    "check_note",
    "check_reply",
    "check_request",
    "parse_assignment",
    "read_document",
]

MAX_DRAFT_BYTES: Final = 256 * 1024
"""The largest draft file read: the node's limit on a request body."""

REQUEST_KEYS: Final = ("to", "type", "priority", "body")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SEGMENT = re.compile(rf"({_NAME})((?:\[[0-9]{{1,4}}\])*)")
_INDEX = re.compile(r"\[([0-9]+)\]")


@dataclass(frozen=True, slots=True)
class Assignment:
    """`PATH=TEXT` or `PATH:=JSON`, parsed: the path's steps and the value to set."""

    path: str
    steps: tuple[str | int, ...]
    value: Any


def parse_assignment(text: str) -> Assignment:
    """Parse `PATH=TEXT` or `PATH:=JSON`; raises ValueError saying what is wrong."""
    path, equals, value = text.partition("=")
    if not equals:
        raise ValueError(f"{text!r} is not PATH=TEXT or PATH:=JSON")
    raw_json = path.endswith(":")
    path = path.removesuffix(":")
    steps: list[str | int] = []
    for segment in path.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise ValueError(f"{path!r} is not a field path such as data.identifiers[0].kind")
        steps.append(match[1])
        steps.extend(int(index) for index in _INDEX.findall(match[2]))
    if not raw_json:
        return Assignment(path, tuple(steps), value)
    try:
        parsed = parse_json(value.encode(), limit=MAX_DRAFT_BYTES, what=f"the value of {path}")
    except CpnError as exc:
        raise ValueError(f"{exc} (use {path}=TEXT for a string)") from None
    return Assignment(path, tuple(steps), parsed)


def apply(document: dict[str, Any], assignment: Assignment) -> None:
    """Set the assignment's value in `document`, creating what lies on the way.

    Raises BodyError naming the path when it runs into a value of another kind.
    """
    container: Any = document
    steps = assignment.steps
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        fresh: Any = None if last else ([] if isinstance(steps[i + 1], int) else {})
        where = _path_text(steps[:i]) or "the document"
        if isinstance(step, str):
            if not isinstance(container, dict):
                raise BodyError(assignment.path, f"{where} is not an object")
            if last:
                container[step] = assignment.value
            else:
                container = container.setdefault(step, fresh)
        else:
            if not isinstance(container, list):
                raise BodyError(assignment.path, f"{where} is not an array")
            if step > len(container):
                raise BodyError(
                    assignment.path, f"{where} has {len(container)} items: [{step}] would skip some"
                )
            if step == len(container):
                container.append(fresh)
            if last:
                container[step] = assignment.value
            else:
                if container[step] is None:
                    container[step] = fresh
                container = container[step]


def _path_text(steps: tuple[str | int, ...]) -> str:
    text = ""
    for step in steps:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def read_document(source: str, stdin: BinaryIO) -> dict[str, Any]:
    """A JSON or TOML object from the file `source`, or from `stdin` when it is `-`.

    A `.toml` file is TOML, a `.json` one JSON; otherwise (stdin too) a text
    starting with `{` is JSON, anything else TOML. TOML dates and times become
    RFC 3339 strings. Raises CpnError naming the file and what is wrong.
    """
    name = "stdin" if source == "-" else source
    try:
        if source == "-":
            data = stdin.read(MAX_DRAFT_BYTES + 1)
        else:
            with Path(source).open("rb") as file:
                data = file.read(MAX_DRAFT_BYTES + 1)
    except OSError as exc:
        raise CpnError(f"{name}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_DRAFT_BYTES:
        raise CpnError(f"{name}: over the limit of {MAX_DRAFT_BYTES} bytes")
    suffix = Path(source).suffix.lower() if source != "-" else ""
    is_json = suffix == ".json" or (suffix != ".toml" and data.lstrip()[:1] == b"{")
    if is_json:
        value = parse_json(data, limit=MAX_DRAFT_BYTES, what=name)
        if not isinstance(value, dict):
            raise CpnError(f"{name}: must hold a JSON object")
        return value
    try:
        document: dict[str, Any] = _from_toml(tomllib.loads(data.decode("utf-8")))
        return document
    except UnicodeDecodeError as exc:
        raise CpnError(f"{name}: not valid UTF-8: {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CpnError(f"{name}: not valid TOML ({exc}) nor JSON") from None


def _from_toml(value: Any) -> Any:
    """TOML's values as the JSON model: dates and times as RFC 3339 text."""
    if isinstance(value, dict):
        return {key: _from_toml(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_toml(item) for item in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


def check_request(request: Mapping[str, Any]) -> None:
    """Check a request to send as the node will; raises BodyError naming the field."""
    for key in REQUEST_KEYS:
        if key not in request:
            raise BodyError(key, "missing")
    recipients = request["to"] if isinstance(request["to"], list) else [request["to"]]
    for i, recipient in enumerate(recipients):
        try:
            if i == 0:  # the body, checked once for every recipient
                parse_request(recipient, request["type"], request["priority"], request["body"])
            else:
                parse_recipient(recipient)
        except BodyError as exc:
            if exc.field != "to" or len(recipients) == 1:
                raise
            raise BodyError(f"to[{i}]", exc.problem) from None


def check_reply(message_id: str, fields: Mapping[str, Any]) -> None:
    """Check a reply's fields as the node will (a `response` to `message_id`)."""
    if "in_reply_to" in fields:
        raise BodyError("in_reply_to", "is the message replied to; leave it out")
    _check_answer(MessageType.RESPONSE, {"in_reply_to": message_id, **fields})


def check_follow_up(message_id: str, fields: Mapping[str, Any]) -> None:
    """Check a follow-up's fields as the node will (a `follow_up` of `message_id`)."""
    if "follows" in fields:
        raise BodyError("follows", "is the request followed up; leave it out")
    _check_answer(MessageType.FOLLOW_UP, {"follows": message_id, **fields})


def check_note(message_id: str, note: str | None) -> None:
    """Check an acknowledgement's note as the node will; the node adds the officer's name."""
    body = {"in_reply_to": message_id, "officer": "(the node fills this in)"}
    _check_answer(MessageType.ACKNOWLEDGEMENT, body if note is None else {**body, "note": note})


def _check_answer(message_type: MessageType, body: dict[str, Any]) -> None:
    try:
        parse_body(message_type, body)
    except BodyError as exc:
        if exc.field in ("in_reply_to", "follows"):  # the ID argument, not a draft's field
            raise BodyError("ID", exc.problem) from None
        raise
