"""`cpn send`, `inbox`, `show`, `ack`, `reply`, `follow-up`: the officer's commands,
through a node's HTTP API. They load no store, audit log or use case, so that they start
in a fraction of a second; rich loads only to print a table."""

from __future__ import annotations

import argparse
import mimetypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from network.cli._common import Subcommands, print_json
from network.cli.client import Client
from network.cli.drafts import (
    Assignment,
    apply,
    check_follow_up,
    check_note,
    check_reply,
    check_request,
    parse_assignment,
    read_document,
)
from network.core.attachments import AttachmentFile
from network.core.bodies import (
    FollowUpAction,
    IdentifierKind,
    RefusalGround,
    ResponseStatus,
    body_to_json,
    parse_body,
)
from network.core.errors import BodyError, CpnError
from network.core.lifecycle import PRIORITY_RANK, State
from network.core.records import MessageType, Priority

__all__ = ["add_commands"]


def _client(args: argparse.Namespace) -> Client:
    """The node's API from --api/--token, else CPN_API/CPN_TOKEN (the flags win)."""
    api = args.api if args.api is not None else os.environ.get("CPN_API")
    token = args.token if args.token is not None else os.environ.get("CPN_TOKEN")
    if not api:
        raise CpnError("no node API: give --api URL or set CPN_API (e.g. http://127.0.0.1:8101)")
    if not token:
        raise CpnError("no token: set CPN_TOKEN or give --token")
    return Client(api, token)


def _assignment_arg(text: str) -> Assignment:
    try:
        return parse_assignment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _draft(
    source: str | None, assignments: Sequence[Assignment], into: str | None
) -> dict[str, Any]:
    """A draft from a file (or stdin), with the assignments applied to it (or its `into`)."""
    draft = read_document(source, sys.stdin.buffer) if source else {}
    target = draft
    if into is not None and assignments:
        target = draft.setdefault(into, {})
        if not isinstance(target, dict):
            raise BodyError(into, "must be an object")
    for assignment in assignments:
        apply(target, assignment)
    return draft


def cmd_send(args: argparse.Namespace) -> int:
    """Checked here as the node will check it, then sent: nothing leaves with a field wrong."""
    shortcuts = [
        Assignment(name, (name,), value)
        for name, value in (("case_ref", args.case_ref), ("summary", args.summary))
        if value is not None
    ]
    request = _draft(args.file, [*args.set, *shortcuts], into="body")
    to = args.to[0] if args.to and len(args.to) == 1 else args.to
    for key, value in (
        ("to", to),
        ("type", args.type),
        ("priority", args.priority),
        ("ttl_seconds", args.ttl),
    ):
        if value is not None:
            request[key] = value
    check_request(request)
    answer = _client(args).send(request, [_attached(path) for path in args.attach])
    if args.json:
        print_json(answer)
    else:
        for sent in answer.get("messages", [answer]):
            print(
                f"{sent['state']} {sent['id']}: {sent['type']} ({sent['priority']}) to {sent['to']}"
            )
    return 0


def _attached(path: str) -> AttachmentFile:
    """A file to attach: its name, its kind by its extension (the node checks the bytes
    are of that kind), its bytes."""
    file = Path(path)
    kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise CpnError(f"--attach {path}: {exc.strerror}") from None
    return AttachmentFile(file.name, kind, data)


def cmd_attachment(args: argparse.Namespace) -> int:
    """Save file INDEX of a message (checked against the SHA-256 its sender signed)."""
    name, data = _client(args).attachment(args.id.lower(), args.index)
    target = Path(args.output) if args.output else Path(name).name
    target = Path(target)
    if target.exists() and not args.output:
        raise CpnError(f"{target} exists: name another file with -o")
    target.write_bytes(data)
    print(f"{target}: {len(data)} bytes, as signed by its sender")
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    box = "out" if args.out else args.box
    answer = _client(args).messages(
        box=box, state=args.state, priority=args.priority, limit=args.limit, case=args.case
    )
    if args.json:
        print_json(answer)
        return 0
    from network.cli.views import print_messages  # rich loads only for a table

    messages = sorted(
        answer["messages"],
        key=lambda m: (PRIORITY_RANK.get(m["priority"], len(PRIORITY_RANK)), not m["overdue"]),
    )
    print_messages(messages, box)
    return 0


_SEARCH_FLAGS: Final = ("identifier", "kind", "case", "country", "type", "box", "state", "since",
                        "until", "limit")  # fmt: skip


def cmd_search(args: argparse.Namespace) -> int:
    criteria = {k: str(getattr(args, k)) for k in _SEARCH_FLAGS if getattr(args, k) is not None}
    answer = _client(args).search(criteria)
    if args.json:
        print_json(answer)
        return 0
    for m in answer["messages"]:
        side = "from" if m["box"] == "in" else "to"
        print(
            f"{m['id']}  {m['type']:<18} {side} {m['peer']}  {m['state']:<12}"
            f" {m.get('case_ref', '')}  {m.get('summary', '')}"
        )
    if not answer["messages"]:
        print("nothing found")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    answer = _client(args).message(args.id.lower())
    if args.json:
        print_json(answer)
        return 0
    from network.cli.views import print_message

    print_message({**answer, "body": _in_field_order(answer.get("type"), answer.get("body"))})
    return 0


def _in_field_order(message_type: object, body: object) -> object:
    """The body with its fields in the order of the design (the node sends them sorted)."""
    if not isinstance(message_type, str):
        return body
    try:
        return body_to_json(parse_body(message_type, body))
    except BodyError:  # a body this version would not write: shown as it came
        return body


def cmd_ack(args: argparse.Namespace) -> int:
    message_id = args.id.lower()
    check_note(message_id, args.note)
    answer = _client(args).acknowledge(message_id, args.note)
    if args.json:
        print_json(answer)
    else:
        print(f"acknowledged {message_id}: acknowledgement {answer['id']} {answer['state']}")
    return 0


_REPLY_FIELDS: Final = (
    "status",
    "note",
    "case_ref",
    "preserved_until",
    "provider_reference",
    "refusal_ground",
    "missing",
    "held_in",
    "transferred_to",
    "expected_by",
)


def _fields(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """An answer's fields from --file, then --set, then the flags named `names`."""
    flags = [
        Assignment(name, (name,), getattr(args, name))
        for name in names
        if getattr(args, name) is not None
    ]
    return _draft(args.file, [*args.set, *flags], into=None)


def cmd_reply(args: argparse.Namespace) -> int:
    message_id = args.id.lower()
    fields = _fields(args, _REPLY_FIELDS)
    check_reply(message_id, fields)
    answer = _client(args).reply(message_id, fields, [_attached(f) for f in args.attach])
    if args.json:
        print_json(answer)
    else:
        print(
            f"answered {message_id} ({fields['status']}): response {answer['id']} {answer['state']}"
        )
    return 0


_FOLLOW_UP_FIELDS: Final = ("action", "information", "note", "case_ref")


def cmd_follow_up(args: argparse.Namespace) -> int:
    message_id = args.id.lower()
    fields = _fields(args, _FOLLOW_UP_FIELDS)
    check_follow_up(message_id, fields)
    answer = _client(args).follow_up(message_id, fields, [_attached(f) for f in args.attach])
    if args.json:
        print_json(answer)
    else:
        print(
            f"followed up {message_id} ({fields['action']}): follow_up {answer['id']}"
            f" {answer['state']}"
        )
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    message_id = args.id.lower()
    fields = {k: v for k, v in (("to", args.to), ("note", args.note)) if v is not None}
    answer = _client(args).assign(message_id, fields)
    if args.json:
        print_json(answer)
    else:
        print(f"{message_id} is held by {answer['assigned_to']}")
    return 0


def cmd_approvals(args: argparse.Namespace) -> int:
    answer = _client(args).approvals()
    if args.json:
        print_json(answer)
        return 0
    for m in answer["messages"]:
        held = "waits" if m["state"] == "awaiting_approval" else f"went ({m['state']})"
        print(
            f"{m['id']}  {m['type']:<18} to {m['peer']}  {m['priority']:<7} {held},"
            f" composed by {m['composed_by']}  {m.get('case_ref', '')}"
        )
    if not answer["messages"]:
        print("nothing waits for approval")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    fields = {} if args.note is None else {"note": args.note}
    answer = _client(args).decide(args.id.lower(), "approve", fields)
    if args.json:
        print_json(answer)
    else:
        print(f"{answer['id']} approved by {answer['approved_by']}: {answer['state']}")
    return 0


def cmd_send_back(args: argparse.Namespace) -> int:
    answer = _client(args).decide(args.id.lower(), "send-back", {"reason": args.reason})
    if args.json:
        print_json(answer)
    else:
        print(f"{answer['id']} sent back to {answer['composed_by']}: it will not leave")
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    from network.cli.views import when

    client = _client(args)
    if args.action == "list":
        answer = client.holds()
        if args.json:
            print_json(answer)
        for hold in [] if args.json else answer["holds"]:
            print(
                f"{hold['case_tag']}  since {when(hold['placed'])} UTC by {hold['placed_by']}:"
                f" {hold['reason']}"
            )
        if not args.json and not answer["holds"]:
            print("no legal hold")
        return 0
    if args.case is None or args.reason is None:
        raise SystemExit(f"cpn hold {args.action}: CASE and --reason are required")
    answer = client.hold(args.action, {"case_ref": args.case, "reason": args.reason})
    if args.json:
        print_json(answer)
    elif args.action == "place":
        print(f"case {args.case} is under a legal hold: retention deletes none of it")
    else:
        print(f"case {args.case}: legal hold released; its retention rules apply again")
    return 0


def add_commands(commands: Subcommands) -> None:
    """`cpn send`, `inbox`, `show`, `ack`, `reply`, `follow-up`: officer work, by the API."""
    node = argparse.ArgumentParser(add_help=False)
    where = node.add_argument_group("the node")
    where.add_argument(
        "--api",
        metavar="URL",
        help="the node's API, e.g. http://127.0.0.1:8101 (default: $CPN_API)",
    )
    where.add_argument(
        "--token",
        help="an officer's API token (default: $CPN_TOKEN, which is better: arguments show in ps)",
    )
    where.add_argument("--json", action="store_true", help="print the node's JSON answer as it is")
    exits = (
        "Exit status: 0 done, 1 refused by the node, 2 usage error or a field wrong here"
        " (nothing sent), 3 the node cannot be reached."
    )
    assign: dict[str, Any] = {
        "action": "append",
        "default": [],
        "type": _assignment_arg,
        "metavar": "PATH=TEXT|PATH:=JSON",
    }

    send = commands.add_parser(
        "send",
        parents=[node],
        help="send a request (checked here first: nothing leaves with a field wrong)",
        description="Send a request: from a JSON or TOML file ({to, type, priority, body}),"
        " from flags, or a file with flags on top. --set PATH=TEXT sets a body field to a"
        " string, --set PATH:=JSON to any JSON value; PATH is dotted, with [N] for array items"
        " (data.identifiers[0].kind). " + exits,
    )
    send.add_argument("--file", metavar="PATH", help="the request as JSON or TOML; - for stdin")
    send.add_argument(
        "--to",
        type=str.upper,
        action="append",
        metavar="ID",
        help="the contact point, e.g. DEU; repeat it to send the request to several, one"
        " message each sharing the case reference",
    )
    send.add_argument("--type", choices=tuple(MessageType), help="the message type")
    send.add_argument("--priority", choices=tuple(Priority))
    send.add_argument("--ttl", type=int, metavar="SECONDS", help="expiry (default: by priority)")
    send.add_argument("--case-ref", metavar="TEXT", help="your case reference (body.case_ref)")
    send.add_argument("--summary", metavar="TEXT", help="body.summary")
    send.add_argument("--set", **assign, help="set a body field (repeatable)")
    send.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="FILE",
        help="attach a file (PDF, PNG, JPEG, GIF, WebP, text, CSV; repeatable): sealed end to"
        " end, named and hashed in the signed body",
    )
    send.set_defaults(func=cmd_send)

    inbox = commands.add_parser(
        "inbox",
        parents=[node],
        help="received messages, most urgent first, overdue marked",
        description="The messages received (or, with --out, sent), most urgent first and"
        " overdue ones first within a priority. " + exits,
    )
    inbox.add_argument("--box", choices=("in", "out"), default="in")
    inbox.add_argument("--out", action="store_true", help="the messages sent (--box out)")
    inbox.add_argument("--state", choices=tuple(State))
    inbox.add_argument("--priority", choices=tuple(Priority))
    inbox.add_argument("--limit", type=int, metavar="N", help="at most N (1 to 500; default 100)")
    inbox.add_argument("--case", metavar="CASE_REF", help="the messages of one case")
    inbox.set_defaults(func=cmd_inbox)

    show = commands.add_parser(
        "show",
        parents=[node],
        help="one message: header, state, body, receipts, timeline, thread",
        description="One message, its body decrypted; reading it is audited, and an"
        " officer's first reading marks a received message opened. " + exits,
    )
    show.add_argument("id", metavar="ID")
    show.set_defaults(func=cmd_show)

    attachment = commands.add_parser(
        "attachment",
        parents=[node],
        help="save a file a message carries (audited)",
        description="Saves file INDEX (from 0, as cpn show lists them) of a message, once all"
        " its parts are here, checked against the size and SHA-256 its sender signed."
        " Downloading it is audited. " + exits,
    )
    attachment.add_argument("id", metavar="ID")
    attachment.add_argument("index", type=int, metavar="INDEX")
    attachment.add_argument("-o", "--output", metavar="FILE", help="(default: its own name)")
    attachment.set_defaults(func=cmd_attachment)

    ack = commands.add_parser(
        "ack",
        parents=[node],
        help="acknowledge a received request (sends an acknowledgement)",
        description="Take a received request on: an acknowledgement goes to its sender. " + exits,
    )
    ack.add_argument("id", metavar="ID")
    ack.add_argument("--note", metavar="TEXT")
    ack.set_defaults(func=cmd_ack)

    reply = commands.add_parser(
        "reply",
        parents=[node],
        help="answer a received request (sends a response)",
        description="Answer a received request: a response goes to its sender. Its fields"
        " come from flags, --set, or a JSON or TOML --file. preserved and"
        " partially_preserved need --preserved-until, and partially_preserved what was kept"
        " (--set preserved.identifiers:='[...]' --set preserved.categories:='[...]');"
        " refused needs --refusal-ground; partially_completed a --note saying what was done;"
        " needs_info needs --missing; held_elsewhere needs --held-in; transferred needs"
        " --transferred-to; risk_notice and conditions_not_met need a --note saying the"
        " risk or the condition. needs_info, risk_notice, transferred and awaiting_order"
        " are interim: the request stays open, its response deadline running (moved to"
        " --expected-by when given). " + exits,
    )
    reply.add_argument("id", metavar="ID")
    reply.add_argument("--file", metavar="PATH", help="the fields as JSON or TOML; - for stdin")
    reply.add_argument("--status", choices=tuple(ResponseStatus))
    reply.add_argument("--note", metavar="TEXT")
    reply.add_argument("--case-ref", metavar="TEXT", help="your own case reference")
    reply.add_argument("--preserved-until", metavar="YYYY-MM-DD")
    reply.add_argument("--provider-reference", metavar="TEXT")
    reply.add_argument("--refusal-ground", choices=tuple(RefusalGround))
    reply.add_argument("--missing", metavar="TEXT", help="what is missing (needs_info)")
    reply.add_argument(
        "--held-in", metavar="ISO3", help="the State where the data is held (held_elsewhere)"
    )
    reply.add_argument(
        "--transferred-to", metavar="TEXT", help="the competent authority (transferred)"
    )
    reply.add_argument(
        "--expected-by",
        metavar="YYYY-MM-DD",
        help="when a final answer can be expected (transferred, awaiting_order)",
    )
    reply.add_argument("--set", **assign, help="set any field of the response (repeatable)")
    reply.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="FILE",
        help="attach a file (repeatable), as cpn send --attach does",
    )
    reply.set_defaults(func=cmd_reply)

    follow = commands.add_parser(
        "follow-up",
        parents=[node],
        help="follow up a request you sent (information, proceed, withdraw, release)",
        description="Follow up a request this node sent: give the information a needs_info"
        " answer asked for (--action information --information TEXT), ask for execution"
        " despite a risk notice (proceed), withdraw the request (withdraw, with a --note"
        " saying why), or release a preservation no longer needed (release). " + exits,
    )
    follow.add_argument("id", metavar="ID")
    follow.add_argument("--file", metavar="PATH", help="the fields as JSON or TOML; - for stdin")
    follow.add_argument("--action", choices=tuple(FollowUpAction))
    follow.add_argument("--information", metavar="TEXT", help="what was asked for (information)")
    follow.add_argument("--note", metavar="TEXT", help="why (required to withdraw)")
    follow.add_argument("--case-ref", metavar="TEXT", help="your case reference")
    follow.add_argument("--set", **assign, help="set any field of the follow-up (repeatable)")
    follow.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="FILE",
        help="attach a file (repeatable), as cpn send --attach does",
    )
    follow.set_defaults(func=cmd_follow_up)

    search = commands.add_parser(
        "search",
        parents=[node],
        help="find earlier requests: by identifier, case, country, type, state, time",
        description="Have we seen this identifier before? Searches both boxes; an identifier"
        " is matched however it is written (2001:DB8::1, 2001:db8:0:0:0:0:0:1). The search"
        " is audited. " + exits,
    )
    search.add_argument("--identifier", metavar="VALUE")
    search.add_argument("--kind", choices=tuple(IdentifierKind))
    search.add_argument("--case", metavar="REF")
    search.add_argument("--country", type=str.upper, metavar="ID")
    search.add_argument("--type", choices=tuple(MessageType))
    search.add_argument("--box", choices=("in", "out"))
    search.add_argument("--state", choices=tuple(State))
    search.add_argument("--since", metavar="TIME")
    search.add_argument("--until", metavar="TIME")
    search.add_argument("--limit", type=int)
    search.set_defaults(func=cmd_search)

    take = commands.add_parser(
        "assign",
        parents=[node],
        help="take a received request, or hand it to another officer (audited)",
        description="Without --to, you take the request; with --to, the officer named holds"
        " it from now on (a shift change: say what is under way in --note). " + exits,
    )
    take.add_argument("id", metavar="ID")
    take.add_argument("--to", metavar="USER", help="the officer who takes it over")
    take.add_argument("--note", metavar="TEXT", help="the handover note")
    take.set_defaults(func=cmd_assign)

    approvals = commands.add_parser(
        "approvals",
        parents=[node],
        help="requests waiting for a second officer's approval (four eyes)",
        description="The requests this node holds until an approver approves them (and flash"
        " ones that went at once, to approve after), oldest first. " + exits,
    )
    approvals.set_defaults(func=cmd_approvals)
    approve = commands.add_parser(
        "approve",
        parents=[node],
        help="approve a request another officer composed: it goes now (audited)",
        description="Four eyes: with the approver role, approve a request another officer"
        " composed; it is sent now and its deadlines start. " + exits,
    )
    approve.add_argument("id", metavar="ID")
    approve.add_argument("--note", metavar="TEXT", help="what was checked")
    approve.set_defaults(func=cmd_approve)
    back = commands.add_parser(
        "send-back",
        parents=[node],
        help="send a held request back to its composer: it never leaves (audited)",
        description="Four eyes: with the approver role, refuse a held request, saying why;"
        " it is never sent, and its officer composes it again. " + exits,
    )
    back.add_argument("id", metavar="ID")
    back.add_argument("--reason", required=True, metavar="TEXT", help="why it goes back")
    back.set_defaults(func=cmd_send_back)

    hold = commands.add_parser(
        "hold",
        parents=[node],
        help="legal holds: stop retention deleting a case's messages (audited)",
        description="place: no message of the case (nor what answers it) has its contents"
        " deleted by a retention rule until the hold is released; list: the holds, each case"
        " by its keyed digest. " + exits,
    )
    hold.add_argument("action", choices=("list", "place", "release"))
    hold.add_argument("case", metavar="CASE", nargs="?", help="the case reference")
    hold.add_argument("--reason", metavar="TEXT", help="why (required to place or release)")
    hold.set_defaults(func=cmd_hold)
