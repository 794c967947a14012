"""The node's HTTP API (aiohttp): JSON in, JSON out, bearer tokens, roles per route.

Rules:
- Every route and the roles that may call it are declared once, in `ROUTES`.
  A route with roles (and any path under /api/, matched or not) needs
  `Authorization: Bearer TOKEN`; a route without roles is public and may not
  live under /api/.
- Each route carries its `Doc` (parameters, request body, answer), from which
  `/api/openapi.json` is built: adding a route is adding one entry to `ROUTES`.
  Query parameters are checked against the route's declared `Param`s before its
  handler runs: an unknown, repeated or ill-formed one is a 400 naming it.
- Handlers are thin: they parse, call one use case of the `Node`, and answer.
- Every answer is JSON with `Cache-Control: no-store`, errors included:
  `{"error": "...", "field": "..."}`, where `field` names the request body
  field or query parameter that is wrong. Bad input is a 4xx, never a 500.
- The console (network/api/console/: HTML, ES modules, CSS; no build step) is
  served at `/` and `/console/...`, public; everything it fetches is under
  /api/ with the bearer token. Every answer carries a Content-Security-Policy
  allowing nothing but this origin (no inline script or style, no framing)
  and `X-Content-Type-Options: nosniff`.
- Live events (`GET /api/events`) are server-sent events fed by the node's
  hub (network/events.py), with a keepalive comment every KEEPALIVE_SECONDS.
- Audited here, through the node context's `audit`: a token's first use in a run
  (`login`), a refused token (`login_failed`, at most LOGIN_AUDIT_LIMIT a minute, the
  next one counting those held back), a penalty window opened for an address after
  repeated refused tokens (`login_throttled`, once per window; see `throttle`: a
  window holds back refused tokens only, never a valid one), a
  role refused a route (`access_denied`) and a refused request (`request_refused`;
  from an authenticated user, one refused for want of room, for a stalled body or
  for too many of the account's requests under way within the node's refusal budget
  for that user, the rest counted; from someone not signed in, all within one such
  budget, actor `anonymous`): bad input from outside leaves a trace. A successful
  authentication is not audited on every request.
- Counted for `/metrics` (see `metrics`; served by `build_metrics_app` on a
  listener of its own, never this one): every answer by method, route template
  and status; refused tokens; penalty windows.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import datetime
import functools
import io
import json
import logging
import math
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, NoReturn
from urllib.parse import quote

from aiohttp import BodyPartReader, StreamReader, hdrs, web
from aiohttp.typedefs import Handler, LooseHeaders

from network import __version__
from network.api.metrics import CONTENT_TYPE, Metrics
from network.api.oidc import SingleSignOn
from network.api.openapi import (
    ID_PARAM,
    INDEX_PARAM,
    Doc,
    Param,
    array_of,
    document,
    enum,
    integer,
    obj,
    ref,
    string,
)
from network.api.sessions import CSRF_HEADER, Sessions, cookie_name
from network.api.throttle import DEFAULT_LOGIN, LoginPolicy, LoginThrottle
from network.core.admission import OpenConnections
from network.core.attachments import MAX_ATTACHMENTS, AttachmentFile
from network.core.bodies import BODY_TYPES, IdentifierKind, describe_types, json_schemas
from network.core.budget import AuditBudget
from network.core.errors import (
    BodyError,
    BodyStalledError,
    BusyError,
    CpnError,
    LocalError,
    MalformedError,
    OversizeError,
    SignInRefused,
)
from network.core.lifecycle import State
from network.core.oidc import OidcConfig
from network.core.records import (
    DESK_ROLES,
    MESSAGE_ID_PATTERN,
    ROLES,
    Json,
    MessageType,
    Priority,
    message_id_problem,
    parse_json,
)
from network.core.roster import RosterValidity, roster_validity
from network.node.auditfile import (
    MAX_PAGE,
    EntryFilter,
    account_entries,
    export_entries,
    list_entries,
)
from network.node.clock import parse_time, rfc3339
from network.node.events import HubFullError
from network.node.officer import MAX_RECIPIENTS, issue_token, set_account
from network.node.reading import summary
from network.node.statistics import compute, read_year, to_csv_rows
from network.node.store import AuditEntry, StoreError, UserRow
from network.node.verify import verify_store
from network.node.wiring import Node

__all__ = [
    "MAX_REQUEST_BYTES",
    "METRICS",
    "NODE",
    "ROUTES",
    "THROTTLE",
    "USER",
    "Route",
    "build_app",
]

log = logging.getLogger("cpn.web")

MAX_REQUEST_BYTES: Final = 256 * 1024
"""The largest request body accepted; larger ones get 413."""

CONNECTIONS_AT_MOST: Final = 256
"""Connections the API's listener holds (`OpenConnections`): more than a country's
officers, their consoles and scripts open at once. With the metrics listener's 16, the
peer server's (a link per contact point, 192 at most, and 256 unfinished handshakes) and
the store's, within the 1,024 descriptors a process is given by default."""
METRICS_CONNECTIONS_AT_MOST: Final = 16
"""Connections the metrics listener holds: a scraper or two."""
ACCOUNT_REQUESTS_AT_MOST: Final = CONNECTIONS_AT_MOST - 32
"""Requests of one account under way at once; past it, 429 at once. A busy connection is
never closed to make room, so one account (a runaway script, a stolen token trickling its
bodies) could otherwise hold every connection: this keeps 32 for everyone else. Above
what the submissions' own bound holds (128 waiting or in rounds, the rest refused at
once)."""

KEEPALIVE_SECONDS: Final = 15.0
"""How often a live event stream carries a comment when nothing happens (proxies, dead peers)."""

EXPORT_CHUNK: Final = 256 * 1024

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

CONSOLE_DIR: Final = Path(__file__).resolve().parent / "console"
_CONSOLE_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

MIN_TTL_SECONDS: Final = 60
MAX_TTL_SECONDS: Final = 30 * 24 * 3600
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 500

NODE: Final = web.AppKey("node", Node)
"""The node's use cases, set by `build_app`."""

_LOGGED_IN: Final = web.AppKey("logged_in", set[str])
SESSIONS: Final = web.AppKey("sessions", Sessions)
SSO: Final[web.AppKey[SingleSignOn | None]] = web.AppKey("sso")
# The session a request came with (None: a bearer token's, a machine's).
SESSION_ID: Final = web.RequestKey("session_id", str)
"""Users whose token was used in this run (their first use is audited as a login)."""

METRICS: Final = web.AppKey("metrics", Metrics)
"""The node's Prometheus figures, counted by the middlewares and served at /metrics."""

THROTTLE: Final = web.AppKey("throttle", LoginThrottle)
"""Failed logins per remote address, and their penalty windows."""

LOGIN_AUDIT: Final = web.AppKey("login_audit", AuditBudget)
"""How many `login_failed` entries the log takes; the rest are counted in the next one."""
LOGIN_AUDIT_LIMIT: Final = 30
LOGIN_AUDIT_WINDOW_MS: Final = 60_000

_OPENAPI: Final = web.AppKey("openapi", dict[str, Any])

_UNDER_WAY: Final = web.AppKey("under_way", collections.Counter[str])
"""Requests under way per account (`ACCOUNT_REQUESTS_AT_MOST`)."""

CONNECTIONS: Final = web.AppKey("connections", OpenConnections[web.RequestHandler])
"""The connections the app's listener holds, each idle or busy (`api.site` accepts them)."""

USER: Final = web.RequestKey("user", UserRow)
"""The authenticated caller, set by the authentication middleware."""

QUERY: Final = web.RequestKey("query", dict[str, str])
"""The query parameters, checked against the route's `Param`s; empty ones left out."""

# RFC 6750 §2.1 b64token, bounded: anything else (bytes that are not UTF-8 included) is
# no token of ours.
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]{1,512}=*")
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# -- what the routes take: query parameters and request bodies ---------------------

LIST_QUERY: Final = (
    Param("box", enum(("in", "out")), "`in`: received; `out`: sent."),
    Param("state", enum(State), "Only messages in this state."),
    Param("priority", enum(Priority), "Only messages of this priority."),
    Param("limit", integer(1, MAX_LIMIT, default=DEFAULT_LIMIT), "At most this many."),
    Param("case", string(200), "A case reference (either side's): the messages of that case."),
)

AUDIT_QUERY: Final = (
    Param("since", string(40), "Entries at or after this time: RFC 3339, or ms since the epoch."),
    Param("until", string(40), "Entries before this time: RFC 3339, or ms since the epoch."),
    Param("message", string(36, pattern=MESSAGE_ID_PATTERN), "Entries about this message id."),
    Param("actor", string(200), "Entries by this actor (a user, or `node:ID`)."),
    Param("action", string(64), "Entries of this action (`composed`, `login_failed`, ...)."),
    Param("limit", integer(1, MAX_PAGE, default=DEFAULT_LIMIT), "At most this many."),
    Param("after", integer(0, 2**53 - 1, default=0), "The cursor: `next` of the page before."),
)

STATISTICS_QUERY: Final = (
    Param("year", integer(2000, 9999), "The year (UTC); this year by default."),
    Param("format", enum(("json", "csv")), "`csv`: a download of (direction, figure, key, value)."),
)

USER_PARAM: Final = Param("name", string(100), "An account's user name.")
OIDC_QUERY: Final = (
    Param("code", string(2000), "The provider's authorization code."),
    Param("state", string(200), "The sign-in this answers."),
    Param("error", string(200), "The provider's refusal."),
    Param("error_description", string(2000), "Why."),
    Param("iss", string(500), "The provider (RFC 9207)."),
    Param("session_state", string(500), "The provider's session (ignored)."),
)
PASSKEY_PARAM: Final = Param(
    "passkey", string(400, pattern="^[A-Za-z0-9_-]+$"), "A passkey's credential id (b64url)."
)

ACCOUNT_CHANGE: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"role": enum(ROLES), "disabled": {"type": "boolean"}},
    "additionalProperties": False,
}

SEARCH_QUERY: Final = (
    Param("identifier", string(2048), "An identifier (IP address, account, e-mail, URL, phone)."),
    Param("kind", enum(IdentifierKind), "What the identifier is; any kind it can be if absent."),
    Param("case", string(200), "A case reference (either side's)."),
    Param("country", string(3, pattern="^[A-Z]{3}$"), "The other contact point."),
    Param("type", enum(MessageType), "The message type."),
    Param("box", enum(("in", "out")), "`in`: received; `out`: sent."),
    Param("state", enum(State), "The state."),
    Param("since", string(40), "Created at or after: RFC 3339, or ms since the epoch."),
    Param("until", string(40), "Created before: RFC 3339, or ms since the epoch."),
    Param("limit", integer(1, MAX_LIMIT, default=DEFAULT_LIMIT), "At most this many."),
)

EVIDENCE_QUERY: Final = (
    Param("body", enum(("true", "false")), "`true`: disclose the opened bodies in the package."),
)

_FILTERS: Final = ("since", "until", "message", "actor", "action")

_EXPORT_TYPES: Final = {"jsonl": "application/jsonl", "csv": "text/csv; charset=utf-8"}

EXPORT_QUERY: Final = (
    Param("format", enum(tuple(_EXPORT_TYPES)), "`jsonl` (the default) or `csv`."),
    *(param for param in AUDIT_QUERY if param.name in _FILTERS),
)

CONSOLE_FILE: Final = Param("name", string(64), "A file of the console (script, style sheet).")

_BODIES: Final = json_schemas()

SUBMISSION: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "to": {
            "anyOf": [
                {"type": "string", "pattern": "^[A-Z]{3}$"},
                {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "minItems": 2,
                    "maxItems": MAX_RECIPIENTS,
                    "uniqueItems": True,
                },
            ],
            "description": "The recipient node; or several, for one request to each (a message"
            " of its own to each, sharing the body and its case reference).",
        },
        "type": enum(MessageType),
        "priority": enum(Priority),
        "body": {"type": "object", "description": "The body of its `type`."},
        "ttl_seconds": {
            "anyOf": [integer(MIN_TTL_SECONDS, MAX_TTL_SECONDS), {"type": "null"}],
            "description": "Lifetime before it expires undelivered; null: the priority's default.",
        },
    },
    "required": ["to", "type", "priority", "body"],
    "additionalProperties": False,
    "allOf": [  # the body's schema follows from its type
        {
            "if": {"properties": {"type": {"const": str(t)}}, "required": ["type"]},
            "then": {"properties": {"body": ref(cls.__name__)}},
        }
        for t, cls in BODY_TYPES.items()
    ],
}
"""POST /api/messages; `post_message` refuses fields this does not name."""

ACKNOWLEDGEMENT: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"note": _BODIES["Acknowledgement"]["properties"]["note"]},
    "additionalProperties": False,
}

REPLY: Final[dict[str, Any]] = {
    **_BODIES["Response"],
    "properties": {
        k: v for k, v in _BODIES["Response"]["properties"].items() if k != "in_reply_to"
    },
    "required": [k for k in _BODIES["Response"]["required"] if k != "in_reply_to"],
}
"""A `response` body without `in_reply_to`, which the route's `{id}` gives."""

FOLLOW_UP: Final[dict[str, Any]] = {
    **_BODIES["FollowUp"],
    "properties": {k: v for k, v in _BODIES["FollowUp"]["properties"].items() if k != "follows"},
    "required": [k for k in _BODIES["FollowUp"]["required"] if k != "follows"],
}
"""A `follow_up` body without `follows`, which the route's `{id}` gives."""


class _Refusal(Exception):
    """An error answer, raised below the error middleware that turns it into JSON."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        field: str | None = None,
        headers: LooseHeaders | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field
        self.headers = headers


# -- handlers ------------------------------------------------------------------


async def post_message(request: web.Request) -> web.StreamResponse:
    """Compose and queue a message: 202 with its summary (`id`, `state`, ...); to several
    recipients (`to` an array), one message to each: 202 with `{"messages": [...]}`. With
    files: multipart/form-data, the message's JSON in part `message`, each file in a part
    `attachment` (its filename and Content-Type name it)."""
    fields, files = await _fields_and_files(request)
    known = SUBMISSION["properties"]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise BodyError(unknown[0], f"unknown field (expected: {', '.join(known)})")
    for key in SUBMISSION["required"]:
        if key not in fields:
            raise BodyError(key, "missing")
    officers = request.app[NODE].officers
    common: dict[str, Any] = {
        "user": request[USER].name,
        "message_type": fields["type"],
        "priority": fields["priority"],
        "body": fields["body"],
        "ttl_ms": _ttl_ms(fields.get("ttl_seconds")),
        "files": files,
    }
    if isinstance(fields["to"], list):
        rows = await officers.submit_to_many(to=fields["to"], **common)
        return web.json_response({"messages": [summary(row) for row in rows]}, status=202)
    row = await officers.submit(to=fields["to"], **common)
    return web.json_response(
        summary(row), status=202, headers={hdrs.LOCATION: f"/api/messages/{row.id}"}
    )


async def _fields_and_files(request: web.Request) -> tuple[dict[str, Any], list[AttachmentFile]]:
    """A request's JSON object, and its files when it comes as multipart/form-data."""
    if request.content_type == "multipart/form-data":
        return await _multipart_submission(request)
    return await _json_object(request), []


async def _multipart_submission(
    request: web.Request,
) -> tuple[dict[str, Any], list[AttachmentFile]]:
    """A message with files: its JSON (part `message`, at most `MAX_REQUEST_BYTES`) and the
    files (parts `attachment`), each read no further than this node takes; 413 naming the
    file past a limit, 400 naming a part that is not one of these."""
    limits = request.app[NODE].context.attachments
    reader = await request.multipart()
    fields: dict[str, Any] | None = None
    files: list[AttachmentFile] = []
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise _Refusal(400, "nested multipart is not taken", field="body")
        if part.name == "message" and fields is None:
            data = await _read_part(part, MAX_REQUEST_BYTES, "message")
            try:
                value = parse_json(data, limit=MAX_REQUEST_BYTES, what="message part")
            except CpnError as exc:
                raise _Refusal(400, str(exc), field="message") from exc
            if not isinstance(value, dict):
                raise _Refusal(400, "the message part must be a JSON object", field="message")
            fields = value
        elif part.name == "attachment":
            where = f"attachments[{len(files)}]"
            if len(files) >= MAX_ATTACHMENTS:
                raise BodyError("attachments", f"at most {MAX_ATTACHMENTS} files per message")
            room = min(limits.max_file, limits.max_message - total)
            data = await _read_part(part, room, where)
            total += len(data)
            media_type = part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
            name = part.filename or ""
            files.append(AttachmentFile(name, media_type.split(";")[0].strip().lower(), data))
        else:
            raise _Refusal(400, f"unexpected part {part.name!r} (expected: message, attachment)")
    if fields is None:
        raise _Refusal(400, "the message part (its JSON) is missing", field="message")
    return fields, files


async def _read_part(part: BodyPartReader, limit: int, where: str) -> bytes:
    """A part's bytes, read in chunks and stopped one past `limit` (413 naming `where`)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, f"{where}: over the {limit} bytes this node takes", field=where)
        chunks.append(chunk)
    return b"".join(chunks)


async def get_attachment(request: web.Request) -> web.StreamResponse:
    """One file of a message, joined from its parts and checked against its signed size and
    SHA-256 (audited): always a download (`application/octet-stream`, `attachment`), never
    shown in the console's origin. 409 while parts are still missing."""
    message_id = _message_id(request)
    try:
        index = int(request.match_info["index"])
    except ValueError:
        raise _Refusal(404, "no such attachment") from None
    try:
        found = await request.app[NODE].reading.attachment(message_id, index, request[USER])
    except BodyError as exc:
        raise _Refusal(409, f"attachment {index}: {exc.problem}", field="attachment") from None
    if found is None:
        raise _Refusal(404, f"message {message_id} has no attachment {index} here")
    file, data = found
    return web.Response(
        body=data,
        headers={
            hdrs.CONTENT_TYPE: "application/octet-stream",
            hdrs.CONTENT_DISPOSITION: _download_as(file["name"]),
            "X-Media-Type": file["media_type"],
            "X-Content-SHA256": file["sha256"],
        },
    )


def _download_as(name: str) -> str:
    """Content-Disposition for a download named `name` (RFC 6266): an ASCII fallback, and
    the name itself in UTF-8 (names are plain: bodies refuse quotes, slashes, controls)."""
    fallback = "".join(c if c.isascii() and c.isprintable() else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def list_messages(request: web.Request) -> web.StreamResponse:
    """List messages, most urgent and newest first: `{"messages": [...]}`."""
    query = request[QUERY]
    messages = await request.app[NODE].reading.list_messages(
        box=query.get("box"),
        state=query.get("state"),
        priority=query.get("priority"),
        limit=int(query.get("limit", DEFAULT_LIMIT)),
        case_ref=query.get("case"),
    )
    return web.json_response({"messages": messages})


async def get_message(request: web.Request) -> web.StreamResponse:
    """One message with its decrypted body, receipts and timeline; 404 if unknown."""
    message_id = _message_id(request)
    message = await request.app[NODE].reading.read_message(message_id, request[USER])
    if message is None:
        raise _Refusal(404, f"no message {message_id}")
    return web.json_response(message)


@contextmanager
def _fields_as_given() -> Iterator[None]:
    """An acknowledgement's, reply's or follow-up's fields are given as they are, not under
    `body`: its BodyError names them so (`status`, not `body.status`), and `in_reply_to`
    or `follows` as the message `id` it was given as."""
    try:
        yield
    except BodyError as exc:
        if not exc.field.startswith("body."):
            raise
        field = exc.field.removeprefix("body.")
        named = "id" if field in ("in_reply_to", "follows") else field
        raise BodyError(named, exc.problem) from None


def _message_id(request: web.Request) -> str:
    message_id = request.match_info["id"].lower()  # a UUID read aloud may come in capitals
    problem = message_id_problem(message_id)
    if problem is not None:
        raise BodyError("id", problem)
    return message_id


async def acknowledge_message(request: web.Request) -> web.StreamResponse:
    """Take a received request on: sends an `acknowledgement`; 202 with its summary."""
    message_id = _message_id(request)
    fields = await _json_object(request, empty_ok=True)
    unknown = sorted(set(fields) - {"note"})
    if unknown:
        raise BodyError(unknown[0], "unknown field (expected: note)")
    with _fields_as_given():
        row = await request.app[NODE].officers.acknowledge(
            message_id, request[USER].name, fields.get("note")
        )
    if row is None:
        raise _Refusal(404, f"no received message {message_id}")
    return web.json_response(summary(row), status=202)


async def reply_message(request: web.Request) -> web.StreamResponse:
    """Answer a received request: sends a `response` (`status`, `note`, and the fields
    its status needs); 202 with its summary."""
    message_id = _message_id(request)
    fields, files = await _fields_and_files(request)
    with _fields_as_given():
        row = await request.app[NODE].officers.reply(message_id, request[USER].name, fields, files)
    if row is None:
        raise _Refusal(404, f"no received message {message_id}")
    return web.json_response(summary(row), status=202)


async def assign_message(request: web.Request) -> web.StreamResponse:
    """Take a received request (no `to`), or assign it to another officer (`to`), with a
    handover `note`: 200 with its summary, `assigned_to` the officer who holds it."""
    message_id = _message_id(request)
    fields = await _json_object(request, empty_ok=True)
    unknown = sorted(set(fields) - {"to", "note"})
    if unknown:
        raise BodyError(unknown[0], "unknown field (expected: to, note)")
    row = await request.app[NODE].officers.assign(
        message_id, request[USER].name, to=fields.get("to"), note=fields.get("note")
    )
    if row is None:
        raise _Refusal(404, f"no received message {message_id}")
    return web.json_response(summary(row))


async def list_approvals(request: web.Request) -> web.StreamResponse:
    """Requests waiting for a second officer's approval: `{"messages": [...]}`."""
    return web.json_response({"messages": await request.app[NODE].reading.approvals()})


async def approve_message(request: web.Request) -> web.StreamResponse:
    """Approve a request held for four eyes (`{"note"?}`): it goes now; 200 with its summary."""
    message_id = _message_id(request)
    fields = await _json_object(request, empty_ok=True)
    _only(fields, ("note",))
    row = await request.app[NODE].officers.approve(
        message_id, request[USER], note=fields.get("note")
    )
    if row is None:
        raise _Refusal(404, f"no sent message {message_id}")
    return web.json_response(summary(row))


async def send_back_message(request: web.Request) -> web.StreamResponse:
    """Send a request held for four eyes back to its composer (`{"reason"}`): it never
    leaves; 200 with its summary."""
    message_id = _message_id(request)
    fields = await _json_object(request, empty_ok=True)
    _only(fields, ("reason",))
    row = await request.app[NODE].officers.send_back(
        message_id, request[USER], fields.get("reason")
    )
    if row is None:
        raise _Refusal(404, f"no sent message {message_id}")
    return web.json_response(summary(row))


APPROVAL_NOTE: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"note": {"type": "string", "maxLength": 2000}},
    "additionalProperties": False,
}
SENDING_BACK: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"reason": {"type": "string", "maxLength": 2000}},
    "required": ["reason"],
    "additionalProperties": False,
}


async def list_holds(request: web.Request) -> web.StreamResponse:
    """The legal holds: each case (by its keyed digest), why, by whom, since when."""
    return web.json_response({"holds": await request.app[NODE].retention.holds()})


async def place_hold(request: web.Request) -> web.StreamResponse:
    """Stop retention deleting a case's messages: `{"case_ref", "reason"}`; audited."""
    fields = await _json_object(request)
    _only(fields, ("case_ref", "reason"))
    hold = await request.app[NODE].retention.place_hold(
        fields.get("case_ref"), fields.get("reason"), request[USER].name
    )
    return web.json_response(hold, status=201)


async def release_hold(request: web.Request) -> web.StreamResponse:
    """End a case's legal hold: `{"case_ref", "reason"}`; 404 if it has none; audited."""
    fields = await _json_object(request)
    _only(fields, ("case_ref", "reason"))
    if not await request.app[NODE].retention.release_hold(
        fields.get("case_ref"), fields.get("reason"), request[USER].name
    ):
        raise _Refusal(404, "no legal hold on that case")
    return web.json_response({"released": True})


def _only(fields: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise BodyError(unknown[0], f"unknown field (expected: {', '.join(known)})")


HOLD: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "case_ref": {
            "type": "string",
            "description": "The case reference, as the requests give it.",
        },
        "reason": {"type": "string", "maxLength": 1000, "description": "Why (audited)."},
    },
    "required": ["case_ref", "reason"],
    "additionalProperties": False,
}


ASSIGNMENT: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "to": {"type": "string", "description": "The officer who takes it over; you if absent."},
        "note": {"type": "string", "maxLength": 2000, "description": "The handover note."},
    },
    "additionalProperties": False,
}


async def follow_up_message(request: web.Request) -> web.StreamResponse:
    """Follow up a request we sent (`action`: information, proceed, withdraw, release; with
    `information` or the `note` it needs): sends a `follow_up`; 202 with its summary."""
    message_id = _message_id(request)
    fields, files = await _fields_and_files(request)
    with _fields_as_given():
        row = await request.app[NODE].officers.follow_up(
            message_id, request[USER].name, fields, files
        )
    if row is None:
        raise _Refusal(404, f"no sent message {message_id}")
    return web.json_response(summary(row), status=202)


async def search_messages(request: web.Request) -> web.StreamResponse:
    """Find earlier requests, in both boxes, by identifier, case, country, type, state and
    time; at least one criterion. Audited. `{"messages": [...]}`, newest first."""
    query = request[QUERY]
    criteria = ("identifier", "case", "country", "type", "box", "state", "since", "until")
    if not any(name in query for name in criteria):
        raise BodyError("identifier", f"give at least one of: {', '.join(criteria)}")
    kind = query.get("kind")
    messages = await request.app[NODE].reading.search(
        request[USER],
        identifier=query.get("identifier"),
        kind=IdentifierKind(kind) if kind else None,
        case_ref=query.get("case"),
        peer=query.get("country"),
        message_type=query.get("type"),
        box=query.get("box"),
        state=query.get("state"),
        since=_time_param(query, "since"),
        until=_time_param(query, "until"),
        limit=int(query.get("limit", DEFAULT_LIMIT)),
    )
    return web.json_response({"messages": messages})


async def message_evidence(request: web.Request) -> web.StreamResponse:
    """The message's evidence package (docs/PROTOCOL.md section 14), as a download; with
    `body=true` the opened bodies are disclosed in it. Audited as a disclosure."""
    message_id = _message_id(request)
    body = request[QUERY].get("body", "false") == "true"
    node = request.app[NODE]
    package = await node.reading.evidence(message_id, request[USER], body=body)
    if package is None:
        raise _Refusal(404, f"no message {message_id} sent or received here")
    return web.json_response(
        package,
        headers={
            hdrs.CONTENT_DISPOSITION: f'attachment; filename="cpn-evidence-{message_id}.json"',
            hdrs.CACHE_CONTROL: "no-store",
        },
    )


async def get_statistics(request: web.Request) -> web.StreamResponse:
    """The year's statistics (network/node/statistics.py), as JSON or a CSV download."""
    context = request.app[NODE].context
    year = int(request[QUERY].get("year", _this_year(context.clock())))
    requests = await asyncio.to_thread(read_year, context.store.path, year)
    stats = compute(requests, year=year, node=context.me)
    if request[QUERY].get("format") != "csv":
        return web.json_response(stats)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(("direction", "figure", "key", "value"))
    writer.writerows(to_csv_rows(stats))
    name = f"cpn-statistics-{context.me}-{year}.csv"
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={
            hdrs.CONTENT_DISPOSITION: f'attachment; filename="{name}"',
            hdrs.CACHE_CONTROL: "no-store",
        },
    )


def _this_year(now_ms: int) -> int:
    return datetime.datetime.fromtimestamp(now_ms / 1000, datetime.UTC).year


async def list_users(request: web.Request) -> web.StreamResponse:
    """The node's accounts: name, role, since when, disabled (never their tokens)."""
    users = await request.app[NODE].context.store.users()
    return web.json_response({"users": [_account(u) for u in users]})


async def change_user(request: web.Request) -> web.StreamResponse:
    """Change an account: `{"role"?, "disabled"?}`; audited. 200 with the account."""
    fields = await _json_object(request)
    unknown = sorted(set(fields) - {"role", "disabled"})
    if unknown:
        raise BodyError(unknown[0], "unknown field (expected: role, disabled)")
    disabled = fields.get("disabled")
    if disabled is not None and not isinstance(disabled, bool):
        raise BodyError("disabled", "must be true or false")
    role = fields.get("role")
    if role is not None and not isinstance(role, str):
        raise BodyError("role", f"must be one of: {', '.join(ROLES)}")
    name = request.match_info["name"]
    if name == request[USER].name and (disabled or (role is not None and role != "admin")):
        raise BodyError("name", "an administrator cannot disable or demote themselves")
    context = request.app[NODE].context
    user = await set_account(
        context.store, name, role=role, disabled=disabled, actor=request[USER].name,
        now=context.clock(),
    )  # fmt: skip
    if user.disabled and request.app[SESSIONS].end_user(name):
        # Its console sessions, and their live streams, end now.
        detail = {"why": "account disabled", "by": request[USER].name}
        await context.audit([AuditEntry(name, "session_ended", detail=detail)])
    return web.json_response(_account(user))


async def user_audit(request: web.Request) -> web.StreamResponse:
    """An account's audit trail: what it did, and what was done to it."""
    path = request.app[NODE].context.store.path
    entries = await asyncio.to_thread(account_entries, path, request.match_info["name"])
    return web.json_response({"entries": entries})


def _account(user: UserRow) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "created": user.created,
        "disabled": user.disabled,
    }


async def get_alerts(request: web.Request) -> web.StreamResponse:
    """What is overdue now, and the latest alerts raised."""
    node = request.app[NODE]
    return web.json_response(
        {"overdue": await node.reading.overdue(), "alerts": node.oversight.recent_alerts()}
    )


async def get_preservations(request: web.Request) -> web.StreamResponse:
    """Our preservation requests the other side preserved, soonest to lapse first."""
    return web.json_response(
        {"preservations": await request.app[NODE].reading.open_preservations()}
    )


async def get_peers(request: web.Request) -> web.StreamResponse:
    """Each peer in the roster: linked or not, last seen, queued count."""
    node = request.app[NODE]
    return web.json_response({"node": node.context.me, "peers": await node.reading.peers()})


async def list_audit(request: web.Request) -> web.StreamResponse:
    """The audit log in seq order, a page at a time: `{"entries": [...], "next": seq | null}`.

    Filters: `since` (inclusive) and `until` (exclusive) as RFC 3339 or ms,
    `message`, `actor`, `action`; `limit` (1..1000) and the cursor `after` (a
    seq: the `next` of the page before). Each entry carries its leaf hash.
    """
    query = request[QUERY]
    filters = _audit_filters(query)
    limit = int(query.get("limit", DEFAULT_LIMIT))
    after = int(query.get("after", 0))
    path = request.app[NODE].context.store.path
    entries, cursor = await asyncio.to_thread(list_entries, path, filters, after=after, limit=limit)
    return web.json_response({"entries": entries, "next": cursor})


def _audit_filters(query: Mapping[str, str]) -> EntryFilter:
    return EntryFilter(
        since=_time_param(query, "since"),
        until=_time_param(query, "until"),
        message=query.get("message"),
        actor=query.get("actor"),
        action=query.get("action"),
    )


async def export_audit(request: web.Request) -> web.StreamResponse:
    """`cpn audit export` as a download: `format` jsonl (default) or csv, and the log's filters.

    The export is written in a thread to a temporary file (the store is read
    as a snapshot), then streamed; the export itself is audited.
    """
    query = request[QUERY]
    format = query.get("format", "jsonl")
    filters = _audit_filters(query)
    context = request.app[NODE].context
    with tempfile.TemporaryFile() as spool:
        count = await asyncio.to_thread(_export_to, spool, context.store.path, format, filters)
        detail: dict[str, Any] = {"format": format, "entries": count}
        detail.update((name, query[name]) for name in _FILTERS if name in query)
        user = request[USER].name
        await context.audit([AuditEntry(actor=user, action="audit_exported", detail=detail)])
        stamp = (rfc3339(context.clock()) or "").replace(":", "").replace("-", "")[:15]
        response = web.StreamResponse(
            headers={
                hdrs.CONTENT_TYPE: _EXPORT_TYPES[format],
                hdrs.CONTENT_DISPOSITION: (
                    f'attachment; filename="cpn-audit-{context.me}-{stamp}Z.{format}"'
                ),
                hdrs.CACHE_CONTROL: "no-store",
            }
        )
        response.content_length = spool.seek(0, io.SEEK_END)
        spool.seek(0)
        await response.prepare(request)
        while chunk := await asyncio.to_thread(spool.read, EXPORT_CHUNK):
            await response.write(chunk)
        await response.write_eof()
    return response


def _export_to(spool: IO[bytes], path: Path, format: str, filters: EntryFilter) -> int:
    text = io.TextIOWrapper(spool, encoding="utf-8", newline="")
    try:
        return export_entries(path, text, format, filters=filters)
    finally:
        text.flush()
        text.detach()  # the spool stays open for the answer


async def get_me(request: web.Request) -> web.StreamResponse:
    """Who the token is: `{"user", "role", "node"}`."""
    user = request[USER]
    return web.json_response(
        {"user": user.name, "role": user.role, "node": request.app[NODE].context.me}
    )


async def open_session(request: web.Request) -> web.StreamResponse:
    """A person signs in to the console with their token: a session, held in an HttpOnly,
    SameSite=Strict cookie (Secure over TLS); 201 with who they are and the CSRF token the
    page sends with every change. Audited."""
    return await _session_started(request, request[USER], "token")


async def _session_started(
    request: web.Request, user: UserRow, method: str, *, then: str | None = None
) -> web.Response:
    """A session for `user`, who proved who they are by `method` (token, passkey, oidc):
    the cookie, and the answer the console keeps (who, and the CSRF token), or a redirect
    to `then` (back from the provider). Audited."""
    context = request.app[NODE].context
    session_id, ended = request.app[SESSIONS].open(user.name, method, context.clock())
    detail: dict[str, Json] = {"method": method, "remote": request.remote}
    entries = [AuditEntry(user.name, "session_started", detail=detail)]
    entries += [AuditEntry(s.user, "session_ended", detail={"why": "too many"}) for s in ended]
    await context.audit(entries)
    if then is None:
        answer = web.json_response(_session_answer(request, user, session_id), status=201)
    else:
        answer = web.Response(status=302, headers={hdrs.LOCATION: then})
    answer.set_cookie(
        cookie_name(context.me),
        session_id,
        max_age=request.app[SESSIONS].max_ms // 1000,
        path="/",
        secure=_over_tls(request),
        httponly=True,
        samesite="Strict",
    )
    return answer


async def sign_in_methods(request: web.Request) -> web.StreamResponse:
    """How people sign in here: passkeys always; the agency's single sign-on if set up."""
    sso = request.app[SSO]
    return web.json_response({"passkey": True, "oidc": sso.config.name if sso else None})


async def oidc_start(request: web.Request) -> web.StreamResponse:
    """Single sign-on, first step: to the agency's provider (authorization code, PKCE), this
    browser bound to the sign-in by a cookie (SameSite=Lax: it must come back from there)."""
    sso = request.app[SSO]
    if sso is None:
        raise _Refusal(404, "this node has no single sign-on ([auth.oidc])")
    try:
        url, state = await sso.start(_callback(request), request.remote or "")
    except SignInRefused as exc:
        raise _Refusal(502, str(exc)) from None
    answer = web.Response(status=302, headers={hdrs.LOCATION: url})
    answer.set_cookie(
        _sso_cookie(request), state, max_age=600, path="/auth/oidc/",
        secure=_over_tls(request), httponly=True, samesite="Lax",
    )  # fmt: skip
    return answer


async def oidc_callback(request: web.Request) -> web.StreamResponse:
    """Back from the provider: the code exchanged, the ID token checked, the person's account
    made or brought up to the role the provider gives, and a session; or the console's
    sign-in page saying why not (audited, and counted against the address)."""
    sso = request.app[SSO]
    if sso is None:
        raise _Refusal(404, "this node has no single sign-on ([auth.oidc])")
    context = request.app[NODE].context
    throttle, address = request.app[THROTTLE], request.remote or "unknown"
    now = context.clock()
    state, code = request.query.get("state", ""), request.query.get("code", "")
    try:
        if throttle.blocked(address, now) is not None:
            raise SignInRefused(f"too many failed sign-ins from {address}: wait, then again")
        if not state or request.cookies.get(_sso_cookie(request)) != state:
            raise SignInRefused("this sign-in was not begun in this browser")
        if not code:
            refused = request.query.get("error_description") or request.query.get("error")
            raise SignInRefused(f"the provider refused: {refused or 'no code'}")
        name, role, claims = await sso.finish(state, code, _callback(request), now // 1000)
        user = await _provisioned(request, name, role, claims)
    except SignInRefused as exc:
        throttle.failed(address, now)
        detail = {"remote": request.remote, "method": "oidc", "why": str(exc)[:300]}
        await context.audit([AuditEntry("anonymous", "login_failed", detail=detail)])
        answer = web.Response(
            status=302, headers={hdrs.LOCATION: f"/#/signin-refused/{quote(str(exc)[:300])}"}
        )
        answer.del_cookie(_sso_cookie(request), path="/auth/oidc/")
        return answer
    throttle.succeeded(address)
    answer = await _session_started(request, user, "oidc", then="/#/signed-in")
    answer.del_cookie(_sso_cookie(request), path="/auth/oidc/")
    return answer


async def _provisioned(
    request: web.Request, name: str, role: str, claims: dict[str, Any]
) -> UserRow:
    """The local account of a person the provider signed in: made at first sign-in, given
    the role the provider's claim maps to; refused if disabled here. Audited."""
    context = request.app[NODE].context
    store, now = context.store, context.clock()
    user = await store.user(name)
    sso = request.app[SSO]
    actor = f"oidc:{sso.config.issuer if sso else ''}"
    if user is None:
        await issue_token(store, name, role, actor=actor, now=now)  # a token no one holds
        detail = {"user": name, "role": role, "sub": str(claims.get("sub"))[:200]}
        await context.audit([AuditEntry(actor, "account_created", detail=detail)])
        user = await store.user(name)
        assert user is not None
    elif user.disabled:
        raise SignInRefused(f"{name}: this account is disabled on this node")
    elif user.role != role:
        user = await set_account(store, name, role=role, actor=actor, now=now)
    return user


def _over_tls(request: web.Request) -> bool:
    """Whether the console is reached over TLS: this request came so, or the console's
    origin is https (TLS ended by a proxy in front of the node): then cookies are Secure."""
    return request.secure or request.app[NODE].passkeys.origin.startswith("https://")


def _callback(request: web.Request) -> str:
    """Where the provider sends people back: this node's console origin."""
    return f"{request.app[NODE].passkeys.origin}/auth/oidc/callback"


def _sso_cookie(request: web.Request) -> str:
    return f"cpn_oidc_{request.app[NODE].context.me}"


async def enrol_begin(request: web.Request) -> web.StreamResponse:
    """An enrolment link opened: the options for the browser to create the person's first
    passkey (`{"code"}`, the link's one-time code)."""
    fields = await _json_object(request)
    _only(fields, ("code",))
    passkeys = request.app[NODE].passkeys
    user = await passkeys.enrolment_user(fields.get("code"))
    ceremony, options = await passkeys.register_begin(user, request.remote or "")
    return web.json_response({"ceremony": ceremony, "options": options, "user": user.name})


async def enrol_finish(request: web.Request) -> web.StreamResponse:
    """The passkey created (`{"code", "ceremony", "credential", "label"?}`): kept, the code
    used up, and the person signed in (201, the session's cookie)."""
    fields = await _json_object(request)
    _only(fields, ("code", "ceremony", "credential", "label"))
    passkeys = request.app[NODE].passkeys
    await passkeys.enrolment_user(fields.get("code"))  # still good
    user = await passkeys.register_finish(
        fields.get("ceremony"), fields.get("credential"), fields.get("label"), code=fields["code"]
    )
    return await _session_started(request, user, "passkey")


async def passkey_begin(request: web.Request) -> web.StreamResponse:
    """Sign-in with a passkey, first step: the options (a challenge) for the browser."""
    ceremony, options = request.app[NODE].passkeys.sign_in_begin(request.remote or "")
    return web.json_response({"ceremony": ceremony, "options": options})


async def passkey_finish(request: web.Request) -> web.StreamResponse:
    """Sign-in with a passkey (`{"ceremony", "credential"}`): 201 and the session's cookie.
    A refused one is audited and counted against the address, as a refused token is."""
    fields = await _json_object(request)
    _only(fields, ("ceremony", "credential"))
    throttle, address = request.app[THROTTLE], request.remote or "unknown"
    now = request.app[NODE].context.clock()
    wait = throttle.blocked(address, now)
    if wait is not None:
        seconds = math.ceil(wait / 1000)
        raise _Refusal(429, f"too many failed sign-ins from {address}: try again in {seconds} s")
    try:
        user = await request.app[NODE].passkeys.sign_in_finish(
            fields.get("ceremony"), fields.get("credential")
        )
    except BodyError as exc:
        throttle.failed(address, now)
        detail = {"remote": request.remote, "method": "passkey", "why": exc.problem[:200]}
        await request.app[NODE].context.audit(
            [AuditEntry("anonymous", "login_failed", detail=detail)]
        )
        raise _Refusal(401, f"sign-in refused: {exc.problem}", field=exc.field) from None
    throttle.succeeded(address)
    return await _session_started(request, user, "passkey")


async def add_passkey_begin(request: web.Request) -> web.StreamResponse:
    """A signed-in person registers another passkey (a second device, a security key)."""
    ceremony, options = await request.app[NODE].passkeys.register_begin(
        request[USER], request.remote or ""
    )
    return web.json_response({"ceremony": ceremony, "options": options})


async def add_passkey_finish(request: web.Request) -> web.StreamResponse:
    """The other passkey created (`{"ceremony", "credential", "label"?}`): kept; audited."""
    fields = await _json_object(request)
    _only(fields, ("ceremony", "credential", "label"))
    passkeys = request.app[NODE].passkeys
    user = await passkeys.register_finish(
        fields.get("ceremony"),
        fields.get("credential"),
        fields.get("label"),
        user=request[USER].name,
    )
    return web.json_response({"passkeys": _public(await passkeys.of(user.name))}, status=201)


async def my_passkeys(request: web.Request) -> web.StreamResponse:
    """The signed-in person's passkeys."""
    passkeys = await request.app[NODE].passkeys.of(request[USER].name)
    return web.json_response({"passkeys": _public(passkeys)})


async def user_passkeys(request: web.Request) -> web.StreamResponse:
    """An account's passkeys (administrators)."""
    passkeys = await request.app[NODE].passkeys.of(request.match_info["name"])
    return web.json_response({"passkeys": _public(passkeys)})


async def revoke_passkey(request: web.Request) -> web.StreamResponse:
    """Revoke one passkey of an account (a lost device): it signs in no more; audited."""
    name, passkey = request.match_info["name"], request.match_info["passkey"]
    if not await request.app[NODE].passkeys.revoke(name, passkey, actor=request[USER].name):
        raise _Refusal(404, f"{name} has no passkey {passkey}")
    return web.json_response({"revoked": passkey})


def _public(passkeys: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in p.items() if k != "raw_id"} for p in passkeys]


async def get_session(request: web.Request) -> web.StreamResponse:
    """The console's session: who, and its CSRF token (a reloaded page asks again); 404 for
    a call made with a token (a machine's: it has none)."""
    session_id = request.get(SESSION_ID)
    if session_id is None:
        raise _Refusal(404, "no session: this call came with a token")
    return web.json_response(_session_answer(request, request[USER], session_id))


async def end_session(request: web.Request) -> web.StreamResponse:
    """Sign out: the session ends on the node (its cookie opens nothing after), audited."""
    session_id = request.get(SESSION_ID)
    if session_id is None:
        raise _Refusal(404, "no session: this call came with a token")
    request.app[SESSIONS].end(session_id)
    user = request[USER]
    await request.app[NODE].context.audit(
        [AuditEntry(user.name, "session_ended", detail={"why": "signed out"})]
    )
    answer = web.json_response({"ended": True})
    answer.del_cookie(cookie_name(request.app[NODE].context.me), path="/")
    return answer


def _session_answer(request: web.Request, user: UserRow, session_id: str) -> dict[str, Any]:
    sessions = request.app[SESSIONS]
    return {
        "user": user.name,
        "role": user.role,
        "node": request.app[NODE].context.me,
        "csrf": sessions.csrf_token(session_id),
        "idle_seconds": sessions.idle_ms // 1000,
    }


async def get_types(request: web.Request) -> web.StreamResponse:
    """Every message type's body as `parse_body` checks it: the console builds its forms from it."""
    return web.json_response({"types": _described_types()})


@functools.cache
def _described_types() -> dict[str, Any]:
    return describe_types()


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `event: <kind>` and `data: <JSON>` as things happen.

    Ends with `event: dropped` when this reader fell too far behind (or the
    node stops): the reader reconnects and reloads. 503 when too many read.
    """
    try:
        subscription = request.app[NODE].context.events.subscribe()
    except HubFullError as exc:
        raise _Refusal(503, str(exc)) from None
    response = web.StreamResponse(
        headers={hdrs.CONTENT_TYPE: "text/event-stream", hdrs.CACHE_CONTROL: "no-store"}
    )
    # A console's stream lasts as long as its session: it ends when the session does (signed
    # out, idle, past its limit, the account disabled), and the page's next call says so.
    session_id, sessions = request.get(SESSION_ID), request.app[SESSIONS]
    wait = (
        KEEPALIVE_SECONDS if session_id is None else min(KEEPALIVE_SECONDS, sessions.idle_ms / 2000)
    )
    clock = request.app[NODE].context.clock
    try:
        await response.prepare(request)
        await response.write(b": live\n\n")
        while True:
            event = await subscription.next(wait)
            if session_id is not None and not sessions.alive(session_id, clock()):
                await response.write(b"event: ended\ndata: {}\n\n")
                break
            if event is None:
                await response.write(b"event: dropped\ndata: {}\n\n")
                break
            if event is False:
                await response.write(b": keepalive\n\n")
                continue
            assert isinstance(event, dict)
            data = json.dumps(event, separators=(",", ":"))
            await response.write(f"event: {event['kind']}\ndata: {data}\n\n".encode())
    except ConnectionResetError:
        pass  # the reader went away
    finally:
        subscription.close()
    return response


async def console_page(request: web.Request) -> web.StreamResponse:
    """The console's page (public: it holds no data; it asks for a token)."""
    return _console_file("index.html")


async def console_asset(request: web.Request) -> web.StreamResponse:
    """The console's scripts and style sheet."""
    return _console_file(request.match_info["name"])


def _console_file(name: str) -> web.Response:
    found = _console_files().get(name)
    if found is None:
        raise _Refusal(404, f"no such console file: {name[:100]}")
    body, content_type = found
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


@functools.cache
def _console_files() -> dict[str, tuple[bytes, str]]:
    """The console's files, read once: only these names are ever served."""
    return {
        path.name: (path.read_bytes(), _CONSOLE_TYPES[path.suffix])
        for path in sorted(CONSOLE_DIR.iterdir())
        if path.suffix in _CONSOLE_TYPES
    }


async def verify_audit(request: web.Request) -> web.StreamResponse:
    """`cpn audit verify` on this node's store, in a thread, checked against what each linked
    peer says it holds of our log: the report as JSON (`ok`, `assurance`, ...), with
    `witnesses`, each peer's answer (or that it gave none in time)."""
    context = request.app[NODE].context
    ask = context.checkpoints.ask_witnesses
    replies = await ask() if ask is not None else []
    held = [reply.witnessed for reply in replies if reply.witnessed is not None]
    report = await asyncio.to_thread(
        verify_store,
        context.store.path,
        roster=context.roster,
        node_id=context.me,
        keeper=context.keeper,
        witnessed=held,
    )
    request.app[METRICS].verified(report.ok, context.clock())
    return web.json_response({**report.to_json(), "witnesses": [r.to_json() for r in replies]})


async def healthz(request: web.Request) -> web.StreamResponse:
    """Liveness, without authentication: 200 while the node runs, `degraded` (still 200: a
    restart would not help) with the problems an operator must act on."""
    context = request.app[NODE].context
    roster = context.roster
    validity = roster_validity(roster, context.clock())
    problems = []
    if validity is RosterValidity.EXPIRED:
        problems.append(f"roster version {roster.version} expired at {rfc3339(roster.valid_until)}")
    return web.json_response(
        {
            "status": "degraded" if problems else "ok",
            "node": context.me,
            "roster": {
                "version": roster.version,
                "valid_until": rfc3339(roster.valid_until),
                "validity": str(validity),
            },
            "problems": problems,
        }
    )


async def get_openapi(request: web.Request) -> web.StreamResponse:
    """This API's OpenAPI 3.1 document, built from its route table."""
    return web.json_response(request.app[_OPENAPI])


async def get_metrics(request: web.Request) -> web.StreamResponse:
    """The node's figures in the Prometheus text format, without authentication."""
    text = await request.app[METRICS].render()
    return web.Response(body=text, content_type=CONTENT_TYPE, charset="utf-8")


# -- the route table: the one place that says who may call what -------------------


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    roles: frozenset[str] | None  # None: public (never under /api/)
    does: str  # what the route does, for "role X may not <does>" and its summary
    doc: Doc  # its parameters, body and answer, for the check and the document


_OFFICER: Final = DESK_ROLES  # an approver works the desk too
_APPROVER: Final = frozenset({"approver"})
_AUDITOR: Final = frozenset({"auditor"})
_READERS: Final = DESK_ROLES | {"auditor"}
_ADMIN_ONLY: Final = frozenset({"admin"})
_HOLDERS: Final = DESK_ROLES | {"admin"}  # a case's officer, or the node's admin
_ANY_ROLE: Final = frozenset(ROLES)

_SUMMARY: Final = ref("MessageSummary")
_SUMMARIES: Final = array_of(_SUMMARY)

ROUTES: Final = (
    Route(
        "POST", "/api/messages", post_message, _OFFICER, "send messages",
        Doc({"anyOf": [_SUMMARY, obj({"messages": _SUMMARIES})]}, status=202, body=SUBMISSION),
    ),
    Route(
        "GET", "/api/messages", list_messages, _READERS, "list messages",
        Doc(obj({"messages": _SUMMARIES}), query=LIST_QUERY),
    ),
    Route(
        "GET", "/api/messages/{id}", get_message, _READERS, "read messages",
        Doc(ref("Message"), path=(ID_PARAM,)),
    ),
    Route(
        "POST", "/api/messages/{id}/ack", acknowledge_message, _OFFICER, "acknowledge messages",
        Doc(_SUMMARY, status=202, path=(ID_PARAM,), body=ACKNOWLEDGEMENT, body_required=False),
    ),
    Route(
        "POST", "/api/messages/{id}/reply", reply_message, _OFFICER, "reply to messages",
        Doc(_SUMMARY, status=202, path=(ID_PARAM,), body=REPLY),
    ),
    Route(
        "POST", "/api/messages/{id}/follow-up", follow_up_message, _OFFICER,
        "follow up requests", Doc(_SUMMARY, status=202, path=(ID_PARAM,), body=FOLLOW_UP),
    ),
    Route(
        "GET", "/api/messages/{id}/evidence", message_evidence, _AUDITOR,
        "export evidence packages",
        Doc(
            {"type": "object", "description": "an evidence package (PROTOCOL section 14)"},
            path=(ID_PARAM,), query=EVIDENCE_QUERY,
        ),
    ),
    Route(
        "POST", "/api/messages/{id}/assign", assign_message, _OFFICER, "assign messages",
        Doc(_SUMMARY, path=(ID_PARAM,), body=ASSIGNMENT, body_required=False),
    ),
    Route(
        "GET", "/api/messages/{id}/attachments/{index}", get_attachment, _READERS,
        "download attachments",
        Doc(
            {"type": "string", "format": "binary", "description": "the file"},
            path=(ID_PARAM, INDEX_PARAM), media_type="application/octet-stream",
        ),
    ),
    Route(
        "GET", "/auth/methods", sign_in_methods, None, "say how to sign in",
        Doc(obj({"passkey": {"type": "boolean"}, "oidc": {"type": ["string", "null"]}})),
    ),
    Route(
        "GET", "/auth/oidc/start", oidc_start, None, "sign in with the agency",
        Doc({"type": "string"}, status=302),
    ),
    Route(
        "GET", "/auth/oidc/callback", oidc_callback, None, "come back from the agency",
        Doc({"type": "string"}, status=302, query=OIDC_QUERY),
    ),
    Route(
        "POST", "/auth/enrol/begin", enrol_begin, None, "begin an enrolment",
        Doc(obj({"ceremony": {"type": "string"}, "options": {"type": "object"}})),
    ),
    Route(
        "POST", "/auth/enrol/finish", enrol_finish, None, "register a first passkey",
        Doc(obj({"user": {"type": "string"}, "csrf": {"type": "string"}}), status=201),
    ),
    Route(
        "POST", "/auth/passkey/begin", passkey_begin, None, "begin a passkey sign-in",
        Doc(obj({"ceremony": {"type": "string"}, "options": {"type": "object"}})),
    ),
    Route(
        "POST", "/auth/passkey/finish", passkey_finish, None, "sign in with a passkey",
        Doc(obj({"user": {"type": "string"}, "csrf": {"type": "string"}}), status=201),
    ),
    Route(
        "GET", "/api/passkeys", my_passkeys, _ANY_ROLE, "list their passkeys",
        Doc(obj({"passkeys": array_of({"type": "object"})})),
    ),
    Route(
        "POST", "/api/passkeys/begin", add_passkey_begin, _ANY_ROLE, "add a passkey",
        Doc(obj({"ceremony": {"type": "string"}, "options": {"type": "object"}})),
    ),
    Route(
        "POST", "/api/passkeys/finish", add_passkey_finish, _ANY_ROLE, "add a passkey",
        Doc(obj({"passkeys": array_of({"type": "object"})}), status=201),
    ),
    Route(
        "GET", "/api/users/{name}/passkeys", user_passkeys, _ADMIN_ONLY, "list accounts' passkeys",
        Doc(obj({"passkeys": array_of({"type": "object"})}), path=(USER_PARAM,)),
    ),
    Route(
        "POST", "/api/users/{name}/passkeys/{passkey}/revoke", revoke_passkey, _ADMIN_ONLY,
        "revoke passkeys",
        Doc(obj({"revoked": {"type": "string"}}), path=(USER_PARAM, PASSKEY_PARAM)),
    ),
    Route(
        "POST", "/api/session", open_session, _ANY_ROLE, "sign in to the console",
        Doc(obj({"user": {"type": "string"}, "csrf": {"type": "string"}}), status=201),
    ),
    Route(
        "GET", "/api/session", get_session, _ANY_ROLE, "see their session",
        Doc(obj({"user": {"type": "string"}, "csrf": {"type": "string"}})),
    ),
    Route(
        "DELETE", "/api/session", end_session, _ANY_ROLE, "sign out",
        Doc(obj({"ended": {"type": "boolean"}})),
    ),
    Route(
        "GET", "/api/approvals", list_approvals, _OFFICER, "list approvals",
        Doc(obj({"messages": _SUMMARIES})),
    ),
    Route(
        "POST", "/api/messages/{id}/approve", approve_message, _APPROVER, "approve requests",
        Doc(_SUMMARY, path=(ID_PARAM,), body=APPROVAL_NOTE, body_required=False),
    ),
    Route(
        "POST", "/api/messages/{id}/send-back", send_back_message, _APPROVER,
        "send requests back",
        Doc(_SUMMARY, path=(ID_PARAM,), body=SENDING_BACK),
    ),
    Route(
        "GET", "/api/holds", list_holds, _ANY_ROLE, "list legal holds",
        Doc(obj({"holds": array_of({"type": "object"})})),
    ),
    Route(
        "POST", "/api/holds", place_hold, _HOLDERS, "place legal holds",
        Doc({"type": "object"}, status=201, body=HOLD),
    ),
    Route(
        "POST", "/api/holds/release", release_hold, _HOLDERS, "release legal holds",
        Doc(obj({"released": {"type": "boolean"}}), body=HOLD),
    ),
    Route(
        "GET", "/api/search", search_messages, _READERS, "search messages",
        Doc(obj({"messages": _SUMMARIES}), query=SEARCH_QUERY),
    ),
    Route(
        "GET", "/api/users", list_users, _ADMIN_ONLY, "list accounts",
        Doc(obj({"users": array_of({"type": "object"})})),
    ),
    Route(
        "POST", "/api/users/{name}", change_user, _ADMIN_ONLY, "change accounts",
        Doc({"type": "object"}, path=(USER_PARAM,), body=ACCOUNT_CHANGE),
    ),
    Route(
        "GET", "/api/users/{name}/audit", user_audit, _ADMIN_ONLY, "read accounts' trails",
        Doc(obj({"entries": array_of({"type": "object"})}), path=(USER_PARAM,)),
    ),
    Route(
        "GET", "/api/statistics", get_statistics, _READERS, "read the statistics",
        Doc({"type": "object", "description": "the year's statistics"}, query=STATISTICS_QUERY),
    ),
    Route(
        "GET", "/api/alerts", get_alerts, _READERS, "see alerts",
        Doc(obj({"overdue": _SUMMARIES, "alerts": array_of({"type": "object"})})),
    ),
    Route(
        "GET", "/api/preservations", get_preservations, _READERS, "list preservations",
        Doc(obj({"preservations": _SUMMARIES})),
    ),
    Route(
        "GET", "/api/peers", get_peers, _ANY_ROLE, "list peers",
        Doc(obj({"node": {"type": "string"}, "peers": array_of(ref("Peer"))})),
    ),
    Route(
        "GET", "/api/audit", list_audit, _AUDITOR, "read the audit log",
        Doc(
            obj({"entries": array_of(ref("AuditEntry")), "next": {"type": ["integer", "null"]}}),
            query=AUDIT_QUERY,
        ),
    ),
    Route(
        "GET", "/api/audit/verify", verify_audit, _AUDITOR, "verify the audit log",
        Doc(
            obj(
                {
                    "ok": {"type": "boolean"},
                    "first_problem": {"type": ["object", "null"]},
                    "assurance": enum(("witnessed", "self-signed only")),
                    "unproven": {"type": ["string", "null"]},
                    "witnesses": {"type": "array", "items": {"type": "object"}},
                }
            )
        ),
    ),
    Route(
        "GET", "/api/openapi.json", get_openapi, _ANY_ROLE, "read the API description",
        Doc({"type": "object", "description": "An OpenAPI 3.1 document"}),
    ),
    Route(
        "GET", "/healthz", healthz, None, "check liveness",
        Doc(
            obj(
                {
                    "status": enum(("ok", "degraded")),
                    "node": {"type": "string"},
                    "roster": obj(
                        {
                            "version": {"type": "integer"},
                            "valid_until": {"type": "string", "format": "date-time"},
                            "validity": enum(RosterValidity),
                        }
                    ),
                    "problems": array_of({"type": "string"}),
                }
            )
        ),
    ),
    Route(
        "GET", "/api/audit/export", export_audit, _AUDITOR, "export the audit log",
        Doc({"type": "string"}, query=EXPORT_QUERY, media_type="application/jsonl"),
    ),
    Route(
        "GET", "/api/me", get_me, _ANY_ROLE, "say who they are",
        Doc(obj({"user": {"type": "string"}, "role": enum(ROLES), "node": {"type": "string"}})),
    ),
    Route(
        "GET", "/api/types", get_types, _OFFICER, "read the message types",
        Doc(obj({"types": {"type": "object"}})),
    ),
    Route(
        "GET", "/api/events", stream_events, _READERS, "follow live events",
        Doc({"type": "string"}, media_type="text/event-stream"),
    ),
    Route(
        "GET", "/", console_page, None, "open the console",
        Doc({"type": "string"}, media_type="text/html"),
    ),
    Route(
        "GET", "/console/{name}", console_asset, None, "load the console",
        Doc({"type": "string"}, path=(CONSOLE_FILE,), media_type="text/plain"),
    ),
)  # fmt: skip

_BY_HANDLER: Final[dict[Handler, Route]] = {route.handler: route for route in ROUTES}


def build_app(
    node: Node,
    *,
    login: LoginPolicy = DEFAULT_LOGIN,
    metrics: Metrics | None = None,
    oidc: OidcConfig | None = None,
) -> web.Application:
    """The node's HTTP API over `node`'s use cases; the caller runs it (runner and site apart).

    `login`: when repeated failed logins from an address are slowed down; `metrics`: the
    figures this app counts into, which `build_metrics_app` serves on a listener of its own.
    """
    app = web.Application(
        client_max_size=MAX_REQUEST_BYTES,
        middlewares=[
            _held_busy,
            _body_keeps_arriving,
            _count_requests,
            _answer_errors,
            _authenticate,
            _check_query,
        ],
    )
    app[CONNECTIONS] = OpenConnections(CONNECTIONS_AT_MOST)
    app[NODE] = node
    app[_LOGGED_IN] = set()
    app[_UNDER_WAY] = collections.Counter()
    app.on_response_prepare.append(_secure_headers)
    app.on_shutdown.append(_end_live_events)
    app[METRICS] = metrics if metrics is not None else Metrics(node)
    app[THROTTLE] = LoginThrottle(login)
    app[SESSIONS] = Sessions(idle_ms=login.session_idle_ms, max_ms=login.session_max_ms)
    app[SSO] = SingleSignOn(oidc) if oidc is not None else None
    app.on_cleanup.append(_close_sso)
    app[LOGIN_AUDIT] = AuditBudget(LOGIN_AUDIT_LIMIT, LOGIN_AUDIT_WINDOW_MS, max_keys=1)
    for route in ROUTES:
        if route.roles is None and route.path.startswith("/api/"):
            raise ValueError(f"{route.path}: routes under /api/ must declare their roles")
        app.router.add_route(route.method, route.path, route.handler)
    described = _api_document()
    app[_OPENAPI] = {
        **described,
        "info": {**described["info"], "title": f"cpn node {node.context.me}"},
    }
    return app


@functools.cache
def _api_document() -> dict[str, Any]:
    """The API's description, made once per process: ~180 KiB that every node of a
    simulation shares, each with its own title."""
    return document(
        ROUTES,
        title="cpn node",
        version=__version__,
        description="The HTTP API of a node of the 24/7 contact-point network.",
    )


async def _close_sso(app: web.Application) -> None:
    sso = app[SSO]
    if sso is not None:
        await sso.close()


def build_metrics_app(metrics: Metrics) -> web.Application:
    """`GET /metrics` alone, for a listener of its own (`[metrics] listen`, loopback by
    default): the figures name every peer and queue, so the console's listener never has them.
    """
    app = web.Application(
        client_max_size=1024, middlewares=[_held_busy, _answer_errors, _check_query]
    )
    app[CONNECTIONS] = OpenConnections(METRICS_CONNECTIONS_AT_MOST)
    app.on_response_prepare.append(_secure_headers)
    app[METRICS] = metrics
    app.router.add_get("/metrics", get_metrics)
    return app


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


async def _end_live_events(app: web.Application) -> None:
    """The node stops: end the event streams, or shutting down would wait for them."""
    app[NODE].context.events.close()


# -- middlewares -------------------------------------------------------------------


@web.middleware
async def _held_busy(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A connection whose request is being handled is not closed to make room for another
    (`OpenConnections`); it is idle again once its answer is written (aiohttp's task for
    the request, this one, ends then)."""
    held, conn = request.app[CONNECTIONS], request.protocol
    held.busy(conn)
    task = asyncio.current_task()
    assert task is not None
    task.add_done_callback(lambda _: held.done(conn))
    return await handler(request)


@web.middleware
async def _body_keeps_arriving(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A body from which nothing arrives for `[api] connection_idle` is cut: the read
    waiting for it raises `BodyStalledError` (408), and the connection is closed once that
    is answered. Busy, its connection is never closed to make room for another, and an
    officer's laptop put to sleep mid-upload would hold it until TCP gave up, hours later."""
    content = request.content
    if content.is_eof():  # no body, or all of it here
        return await handler(request)
    watch = _BodyWatch(content, request.app[THROTTLE].policy.connection_idle_ms / 1000)
    try:
        return await handler(request)
    finally:
        watch.stop()


class _BodyWatch:
    """Looks at a body every `idle_s`: when nothing of it came since the last look (so
    for at least `idle_s`, at most twice that), its reader is given `BodyStalledError`."""

    def __init__(self, content: StreamReader, idle_s: float) -> None:
        self._content, self._idle_s = content, idle_s
        self._seen = content.total_bytes
        self._timer = asyncio.get_running_loop().call_later(idle_s, self._look)

    def _look(self) -> None:
        content = self._content
        if content.is_eof() or content.exception() is not None:
            return
        if content.total_bytes == self._seen:
            content.set_exception(
                BodyStalledError(
                    f"the request's body stopped arriving: nothing of it for {self._idle_s:g} s"
                )
            )
            return
        self._seen = content.total_bytes
        self._timer = asyncio.get_running_loop().call_later(self._idle_s, self._look)

    def stop(self) -> None:
        self._timer.cancel()


@web.middleware
async def _count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by method, route template and status (see `metrics`)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # what `_answer_errors` lets through (no errors)
        _count(request, exc.status)
        raise
    _count(request, response.status)
    return response


def _count(request: web.Request, status: int) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    request.app[METRICS].requests.labels(method, route, str(status)).inc()


@web.middleware
async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every outcome into JSON with `Cache-Control: no-store`; nothing leaks as text."""
    try:
        response = await handler(request)
    except _Refusal as exc:
        response = await _refused(request, exc)
    except BodyError as exc:
        response = await _refused(request, _Refusal(400, str(exc), field=exc.field or None))
    except BodyStalledError as exc:
        response = await _refused(request, _Refusal(408, str(exc), field="body"))
    except BusyError as exc:
        headers = {hdrs.RETRY_AFTER: str(exc.retry_after_s)}
        response = await _refused(request, _Refusal(503, str(exc), headers=headers))
    except StoreError as exc:
        log.exception("store failure in %s %s", request.method, request.path)
        # The cause (SQLite's words: disk I/O error, disk full, read-only), not the path.
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        response = _error(
            503, f"the node's store is unavailable{cause}; try again", headers={"Retry-After": "5"}
        )
    except LocalError:  # our bug, not the client's: as any other failure of ours
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = _error(500, "internal error")
    except CpnError as exc:
        response = await _refused(request, _Refusal(400, str(exc)))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = await _refused(request, _from_http_exception(request, exc))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = _error(500, "internal error")
    if not response.prepared:  # a stream (events, an export) set its own
        response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return response


async def _in_time(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request from someone not signed in, answered within `[api] connection_idle`: its
    connection is busy while it is handled, and never closed to make room for another, so
    a body trickled in byte by byte would hold it for as long as the sender liked."""
    limit_s = request.app[THROTTLE].policy.connection_idle_ms / 1000
    deadline = asyncio.timeout(limit_s)
    try:
        async with deadline:
            return await handler(request)
    except TimeoutError:
        if not deadline.expired():
            raise  # the handler's own (a sign-in provider's, say)
        raise _Refusal(408, f"the request was not answered within {limit_s:g} s") from None


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the bearer token and the caller's role against the route's declaration."""
    route = _BY_HANDLER.get(request.match_info.route.handler)
    public = route is not None and route.roles is None
    if public or (route is None and not request.path.startswith("/api/")):
        return await _in_time(request, handler)
    node = request.app[NODE]
    throttle, address = request.app[THROTTLE], request.remote or "unknown"
    now = node.context.clock()
    cookie = request.cookies.get(cookie_name(node.context.me))
    if request.headers.get(hdrs.AUTHORIZATION) is None and cookie is not None:
        user = await _session_user(request, cookie, now)
        request[SESSION_ID] = cookie
    else:
        token = _bearer_token(request.headers.get(hdrs.AUTHORIZATION))
        user = await node.officers.authenticate(token)
    wait = throttle.blocked(address, now)
    if user is None and wait is not None:
        # A valid token is never held back: behind a proxy one address is every officer's.
        seconds = math.ceil(wait / 1000)
        raise _Refusal(
            429,
            f"too many failed logins from {address}: try again in {seconds} s",
            headers={hdrs.RETRY_AFTER: str(seconds)},
        )
    if user is None:
        await _login_failed(request, address, now)
    if wait is None:  # a success inside a window forgives nothing: it may be someone else
        throttle.succeeded(address)
    request[USER] = user
    logged_in = request.app[_LOGGED_IN]
    if user.name not in logged_in and SESSION_ID not in request:
        # A token's first use in this run is its login (per request would flood the log).
        logged_in.add(user.name)
        detail = {"role": user.role, "remote": request.remote}
        await node.context.audit([AuditEntry(actor=user.name, action="login", detail=detail)])
    if route is not None and route.roles is not None and user.role not in route.roles:
        detail = {"role": user.role, "method": request.method, "path": request.path[:200]}
        await node.context.audit(
            [AuditEntry(actor=user.name, action="access_denied", detail=detail)]
        )
        raise _Refusal(403, f"role {user.role} may not {route.does}")
    under_way = request.app[_UNDER_WAY]
    if under_way[user.name] >= ACCOUNT_REQUESTS_AT_MOST:
        raise _Refusal(
            429,
            f"{ACCOUNT_REQUESTS_AT_MOST} requests of account {user.name} are under way"
            " already, the most one account may have; try again when one has ended",
            headers={hdrs.RETRY_AFTER: "1"},
        )
    under_way[user.name] += 1
    try:
        return await handler(request)
    finally:
        under_way[user.name] -= 1
        if not under_way[user.name]:
            del under_way[user.name]


@web.middleware
async def _check_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse query parameters the route does not declare, or values its `Param`s refuse."""
    route = _BY_HANDLER.get(request.match_info.route.handler)
    params = {p.name: p for p in route.doc.query} if route is not None else {}
    values: dict[str, str] = {}
    for name, value in request.query.items():
        param = params.get(name)
        if param is None:
            expected = f"expected: {', '.join(params)}" if params else "it takes none"
            raise BodyError(name[:100], f"unknown query parameter ({expected})")
        if name in values:
            raise BodyError(name, "given more than once")
        values[name] = value
        if value and (problem := param.problem(value)):
            raise BodyError(name, problem)
    request[QUERY] = {name: value for name, value in values.items() if value}
    return await handler(request)


# -- helpers -----------------------------------------------------------------------


async def _session_user(request: web.Request, session_id: str, now: int) -> UserRow | None:
    """The person a session cookie is for, if it is open and they may still sign in: the
    user is read again (disabled or removed: the session ends). A request that changes
    something must carry the session's CSRF token. None: no such session."""
    sessions, context = request.app[SESSIONS], request.app[NODE].context
    session, over = sessions.find(session_id, now)
    if session is None:
        return None
    if over is not None:
        detail = {"why": "idle" if now - session.seen > sessions.idle_ms else "limit"}
        await context.audit([AuditEntry(session.user, "session_expired", detail=detail)])
        raise _Refusal(401, "your session has expired: sign in again")
    user = await context.store.user(session.user)
    if user is None or user.disabled:
        sessions.end_user(session.user)
        detail = {"why": "account disabled or removed"}
        await context.audit([AuditEntry(session.user, "session_ended", detail=detail)])
        raise _Refusal(401, "this account may no longer sign in")
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD) and not sessions.csrf_ok(
        session_id, request.headers.get(CSRF_HEADER)
    ):
        refused: dict[str, Json] = {
            "method": request.method,
            "path": request.path[:200],
            "remote": request.remote,
        }
        await context.audit([AuditEntry(user.name, "csrf_refused", detail=refused)])
        raise _Refusal(403, f"missing or wrong {CSRF_HEADER}: reload the console")
    return user


async def _login_failed(request: web.Request, address: str, now: int) -> NoReturn:
    """A refused token: audited, counted, and maybe the start of a penalty window. Raises
    the 401."""
    context, metrics, budget = (
        request.app[NODE].context,
        request.app[METRICS],
        request.app[LOGIN_AUDIT],
    )
    metrics.failed_logins.inc()
    entries = []
    detail = {"remote": request.remote, "path": request.path[:200]}
    failed = budget.admit("login", AuditEntry("anonymous", "login_failed", None, detail), now)
    if failed is not None:  # rotating addresses must not grow the log without bound
        entries.append(failed)
    headers = {hdrs.WWW_AUTHENTICATE: 'Bearer error="invalid_token"'}
    window = request.app[THROTTLE].failed(address, now)
    if window is not None:  # audited once per window, not per refused request
        metrics.throttled.inc()
        seconds = math.ceil(window / 1000)
        headers[hdrs.RETRY_AFTER] = str(seconds)
        entries.append(
            AuditEntry(
                actor="anonymous",
                action="login_throttled",
                detail={"remote": request.remote, "seconds": seconds},
            )
        )
    if entries:
        await context.audit(entries)
    raise _Refusal(401, "invalid or revoked token", headers=headers)


def _bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer TOKEN` header (RFC 6750 §2.1)."""
    challenge = {hdrs.WWW_AUTHENTICATE: "Bearer"}
    if header is None:
        raise _Refusal(401, "missing Authorization: Bearer TOKEN header", headers=challenge)
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _B64TOKEN.fullmatch(token):
        raise _Refusal(401, "Authorization header must be 'Bearer TOKEN'", headers=challenge)
    return token


async def _json_object(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request body as a JSON object; 413 past the size limit, 400 if not an object.

    With `empty_ok`, no body at all reads as `{}`.
    """
    data = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    if empty_ok and not data.strip():
        return {}
    try:
        value = parse_json(data, limit=MAX_REQUEST_BYTES, what="request body")
    except OversizeError as exc:
        raise _Refusal(413, str(exc), field="body") from exc
    except MalformedError as exc:
        raise _Refusal(400, str(exc), field="body") from exc
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else f"a {type(value).__name__}"
        raise _Refusal(400, f"request body must be a JSON object, not {kind}", field="body")
    return value


def _ttl_ms(value: object) -> int | None:
    """`ttl_seconds` in milliseconds; None (absent or null) means the priority's default."""
    if value is None:
        return None
    if type(value) is not int or not MIN_TTL_SECONDS <= value <= MAX_TTL_SECONDS:
        raise BodyError(
            "ttl_seconds", f"must be an integer from {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}"
        )
    return value * 1000


def _time_param(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise BodyError(name, str(exc)) from None


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> _Refusal:
    """aiohttp's own refusals (no route, wrong method, body too large), as JSON."""
    if exc.status == 404:
        return _Refusal(404, f"no such endpoint: {request.path[:200]}")
    if exc.status == 405:
        allow = exc.headers.get(hdrs.ALLOW, "")
        return _Refusal(
            405,
            f"method {request.method} not allowed on {request.path[:200]} (allowed: {allow})",
            headers={hdrs.ALLOW: allow},
        )
    if exc.status == 413:
        return _Refusal(
            413, f"request body is over the limit of {MAX_REQUEST_BYTES} bytes", field="body"
        )
    return _Refusal(exc.status, exc.reason)


async def _refused(request: web.Request, refusal: _Refusal) -> web.Response:
    """The JSON answer to a refusal. A refused request is audited: from a known user (one
    refused for want of room, for a stalled body or past `ACCOUNT_REQUESTS_AT_MOST`, at
    most `REFUSALS_PER_MINUTE` a minute per user, the rest counted: under a flood, an entry
    each would add to the load it was refused for), and from someone not signed in (a
    sign-in ceremony's body, a query, a body too large or too slow: all of them in one
    such budget, since anyone can send them from any address)."""
    node = request.app.get(NODE)  # None: the metrics listener, on the loopback
    user = request.get(USER)
    # A stranger's 429 is a penalty window's, audited once a window (`login_throttled`).
    audited = (400, 408, 413, 503) if user is None else (400, 408, 413, 429, 503)
    if node is not None and refusal.status in audited:
        detail: dict[str, Any] = {
            "method": request.method,
            "path": request.path[:200],
            "status": refusal.status,
            "error": refusal.error[:500],
            "remote": request.remote,  # which client: an account may have several
        }
        if refusal.field:
            detail["field"] = refusal.field[:200]
        context = node.context
        if user is None:
            refused = AuditEntry(actor="anonymous", action="request_refused", detail=detail)
            entries = context.refusal("anonymous", refused)
        else:
            entries = [AuditEntry(actor=user.name, action="request_refused", detail=detail)]
            if refusal.status in (408, 429, 503):  # what a flood, or a failing network, repeats
                entries = context.refusal(f"user:{user.name}", entries[0])
        try:
            if entries:
                await context.audit(entries)
        except Exception:  # the refusal must still be answered, as JSON
            log.exception("could not audit a refused request from %s", entries[0].actor)
    return _error(refusal.status, refusal.error, field=refusal.field, headers=refusal.headers)


def _error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers: LooseHeaders | None = None,
) -> web.Response:
    payload = {"error": message} if field is None else {"error": message, "field": field}
    return web.json_response(payload, status=status, headers=headers)
