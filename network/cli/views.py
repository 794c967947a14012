"""How `cpn inbox` and `cpn show` print messages in a terminal (rich tables).

Everything shown comes from the node's JSON answers and, through them, from
other countries' bodies: it is printed as plain text (never as rich markup),
with control characters (which could drive the terminal) replaced. Times are
UTC. Field paths in a body are written as the node's errors and `--set` write
them (`data.identifiers[0].kind`).
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["print_message", "print_messages"]

PRIORITY_STYLE: Final = {"flash": "bold red", "urgent": "yellow", "routine": ""}
OVERDUE_STYLE: Final = "bold red"
# C0 and C1 controls but newline and tab: escape sequences could rewrite the screen.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_PIPE_WIDTH: Final = 200  # output to a pipe or file: wide enough that rows stay whole


def _console() -> Console:
    wide = None if sys.stdout.isatty() else _PIPE_WIDTH
    return Console(highlight=False, emoji=False, markup=False, width=wide)


def _text(value: object, style: str = "") -> Text:
    """A value as plain, inert text."""
    if value is None:
        return Text("")
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    return Text(_CONTROL.sub("\N{REPLACEMENT CHARACTER}", value), style=style)


def when(ms: object) -> str:
    """ms since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC); '' for what is not a time."""
    if not isinstance(ms, int) or isinstance(ms, bool):
        return ""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _overdue(message: Mapping[str, Any]) -> Text:
    items = message.get("overdue") or []
    return _text("OVERDUE: " + ", ".join(map(str, items)), OVERDUE_STYLE) if items else Text("")


def _priority(message: Mapping[str, Any]) -> Text:
    value = str(message.get("priority", ""))
    return _text(value, PRIORITY_STYLE.get(value, ""))


def print_messages(messages: Sequence[Mapping[str, Any]], box_name: str) -> None:
    """A listing as a table, in the order given; overdue rows marked with `!`."""
    console = _console()
    received = box_name == "in"
    what = "received" if received else "sent"
    if not messages:
        console.print(f"no messages {what}")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("!", style=OVERDUE_STYLE)
    table.add_column("id", no_wrap=True)
    table.add_column("from" if received else "to")
    table.add_column("type")
    table.add_column("priority")
    table.add_column("state")
    table.add_column(f"{what} (UTC)", no_wrap=True)
    table.add_column("overdue")
    for message in messages:
        table.add_row(
            "!" if message.get("overdue") else "",
            _text(message.get("id")),
            _text(message.get("peer")),
            _text(message.get("type")),
            _priority(message),
            _text(message.get("state")),
            when(message.get("received") if received else message.get("created")),
            _overdue(message),
        )
    console.print(table)
    overdue = sum(1 for m in messages if m.get("overdue"))
    tail = f", {overdue} overdue" if overdue else ""
    console.print(f"{len(messages)} message{'s' * (len(messages) != 1)} {what}{tail}")


def print_message(message: Mapping[str, Any]) -> None:
    """One message as `GET /api/messages/{id}` gives it: facts, body, receipts, timeline, thread."""
    console = _console()
    received = message.get("box") == "in"
    title = Text.assemble(
        _text(f"{message.get('type')} ", "bold"),
        _text(f"{'from' if received else 'to'} {message.get('peer')}, "),
        _priority(message),
        _text(f"  {message.get('id')}"),
    )
    console.print(title)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    state = Text.assemble(_text(message.get("state")), " ", _overdue(message))
    facts.add_row("state", state)
    for label, key in (
        ("created", "created"),
        ("received", "received"),
        ("expires", "expires"),
        ("updated", "updated"),
    ):
        if message.get(key) is not None:
            facts.add_row(label, f"{when(message[key])} UTC")
    deadlines = message.get("deadlines") or {}
    due = [f"{name} {when(ms)}" for name, ms in deadlines.items() if ms is not None]
    if due:
        facts.add_row("deadlines", _text(", ".join(due) + " (UTC)"))
    for label, key in (
        ("composed by", "composed_by"),
        ("acknowledged by", "acknowledged_by"),
        ("in reply to", "in_reply_to"),
    ):
        if message.get(key) is not None:
            facts.add_row(label, _text(message[key]))
    if message.get("preserved_until") is not None:
        facts.add_row("preserved until", when(message["preserved_until"])[:10])
    if message.get("until_decision") is not None:
        since = when(message["until_decision"])[:10]
        facts.add_row("preserved until", f"the MLA decision (counted from {since})")
    if not received and message.get("attempts"):
        facts.add_row("attempts", _text(message["attempts"]))
    deleted = message.get("deleted")
    if isinstance(deleted, dict):
        facts.add_row(
            "contents deleted",
            _text(f"{when(deleted.get('at'))} UTC under retention rule {deleted.get('rule')}"),
        )
    console.print(facts)

    console.print()
    console.print(Text("body", style="bold underline"))
    body = Table.grid(padding=(0, 2))
    body.add_column(style="bold", no_wrap=True)
    body.add_column()
    for path, value in _flatten(message.get("body")):
        if not path.startswith("attachments"):
            body.add_row(_text(path), _text(value))
    console.print(body)
    files = message.get("attachments") or []
    if files:
        console.print()
        console.print(Text("attachments", style="bold underline"))
        for file in files:
            got = (
                "here"
                if file.get("complete")
                else f"{file.get('arrived')}/{file.get('parts')} parts"
            )
            console.print(
                _text(
                    f"[{file.get('index')}] {file.get('name')}  {file.get('media_type')}"
                    f"  {file.get('size')} bytes  sha256 {file.get('sha256')}  ({got})"
                )
            )

    _section(
        console,
        "receipts",
        ("direction", "signer", "outcome", "reason", "time (UTC)"),
        [
            (
                r.get("direction"),
                r.get("signer"),
                r.get("outcome"),
                r.get("reason"),
                when(r.get("time")),
            )
            for r in message.get("receipts") or []
        ],
    )
    _section(
        console,
        "timeline",
        ("time (UTC)", "actor", "action", "detail"),
        [
            (when(e.get("time")), e.get("actor"), e.get("action"), _detail(e.get("detail")))
            for e in message.get("timeline") or []
        ],
    )
    _section(
        console,
        "thread",
        ("id", "type", "from/to", "state", "created (UTC)"),
        [
            (
                m.get("id"),
                m.get("type"),
                f"{'from' if m.get('box') == 'in' else 'to'} {m.get('peer')}",
                m.get("state"),
                when(m.get("created")),
            )
            for m in message.get("thread") or []
        ],
    )


def _section(
    console: Console, title: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    console.print()
    if not rows:
        console.print(Text(f"{title}: none", style="bold"))
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_text(cell) for cell in row))
    console.print(table)


def _flatten(value: object, path: str = "") -> Iterator[tuple[str, object]]:
    """(path, scalar) for every leaf of a JSON value, paths as `a.b[0].c`."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from _flatten(item, f"{path}[{i}]")
    else:
        yield path, value


def _detail(detail: object) -> str:
    if not isinstance(detail, dict):
        return "" if detail is None else json.dumps(detail, ensure_ascii=False)
    return ", ".join(
        f"{key}={item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)}"
        for key, item in detail.items()
    )
