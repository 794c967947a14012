"""The node's HTTP API (aiohttp): JSON in, JSON out, bearer tokens, roles per route.

Rules:
- Every route and the roles that may call it are declared once, in `ROUTES`.
  A route with roles (and any path under /api/, matched or not) needs
  `Authorization: Bearer TOKEN`; a route without roles is public and may not
  live under /api/.
- Handlers are thin: they parse, call one use case of `Service`, and answer.
- Every answer is JSON with `Cache-Control: no-store`, errors included:
  `{"error": "...", "field": "..."}`, where `field` names the request body
  field or query parameter that is wrong. Bad input is a 4xx, never a 500.
- Audited here, through `Service.audit`: a token's first use in a run (`login`),
  a refused token (`login_failed`), a
  role refused a route (`access_denied`) and a refused request from an
  authenticated user (`request_refused`): bad input from outside leaves a
  trace. A successful authentication is not audited on every request.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, LooseHeaders

from network.audit import MAX_PAGE, EntryFilter, list_entries, parse_time, verify_store
from network.errors import BodyError, CpnError, MalformedError, OversizeError
from network.lifecycle import State
from network.records import Priority, parse_json
from network.service import ROLES, Service, summary
from network.store import AuditEntry, StoreError, UserRow

__all__ = [
    "MAX_REQUEST_BYTES",
    "ROUTES",
    "SERVICE",
    "USER",
    "Route",
    "build_app",
]

log = logging.getLogger("cpn.web")

MAX_REQUEST_BYTES: Final = 256 * 1024
"""The largest request body accepted; larger ones get 413."""

MIN_TTL_SECONDS: Final = 60
MAX_TTL_SECONDS: Final = 30 * 24 * 3600
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 500

SERVICE: Final = web.AppKey("service", Service)
"""The node's use cases, set by `build_app`."""

USER: Final = web.RequestKey("user", UserRow)
"""The authenticated caller, set by the authentication middleware."""

_MESSAGE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_REQUIRED_KEYS: Final = ("to", "type", "priority", "body")
_OPTIONAL_KEYS: Final = ("ttl_seconds",)
_CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "box": ("in", "out"),
    "state": tuple(State),
    "priority": tuple(Priority),
}
_LIST_PARAMS: Final = (*_CHOICES, "limit", "case")


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
    """Compose and queue a message: 202 with its summary (`id`, `state`, ...)."""
    fields = await _json_object(request)
    unknown = sorted(set(fields) - {*_REQUIRED_KEYS, *_OPTIONAL_KEYS})
    if unknown:
        expected = ", ".join((*_REQUIRED_KEYS, *_OPTIONAL_KEYS))
        raise BodyError(unknown[0], f"unknown field (expected: {expected})")
    for key in _REQUIRED_KEYS:
        if key not in fields:
            raise BodyError(key, "missing")
    row = await request.app[SERVICE].submit(
        user=request[USER].name,
        to=fields["to"],
        message_type=fields["type"],
        priority=fields["priority"],
        body=fields["body"],
        ttl_ms=_ttl_ms(fields.get("ttl_seconds")),
    )
    return web.json_response(
        summary(row), status=202, headers={hdrs.LOCATION: f"/api/messages/{row.id}"}
    )


async def list_messages(request: web.Request) -> web.StreamResponse:
    """List messages, most urgent and newest first: `{"messages": [...]}`."""
    query = _query(request, _LIST_PARAMS)
    choices = {name: _choice(query, name, allowed) for name, allowed in _CHOICES.items()}
    case_ref = query.get("case")
    if case_ref is not None and not 0 < len(case_ref) <= 200:
        raise BodyError("case", "must be a case reference of 1 to 200 characters")
    messages = await request.app[SERVICE].list_messages(
        box=choices["box"],
        state=choices["state"],
        priority=choices["priority"],
        limit=_limit(query.get("limit")),
        case_ref=case_ref,
    )
    return web.json_response({"messages": messages})


async def get_message(request: web.Request) -> web.StreamResponse:
    """One message with its decrypted body, receipts and timeline; 404 if unknown."""
    message_id = _message_id(request)
    message = await request.app[SERVICE].read_message(message_id, request[USER])
    if message is None:
        raise _Refusal(404, f"no message {message_id}")
    return web.json_response(message)


def _message_id(request: web.Request) -> str:
    message_id = request.match_info["id"]
    if len(message_id) != 36 or not _MESSAGE_ID.fullmatch(message_id):
        raise BodyError("id", "must be a message id (a UUID: 36 characters, 8-4-4-4-12 hex)")
    return message_id.lower()


async def acknowledge_message(request: web.Request) -> web.StreamResponse:
    """Take a received request on: sends an `acknowledgement`; 202 with its summary."""
    message_id = _message_id(request)
    fields = await _json_object(request, empty_ok=True)
    unknown = sorted(set(fields) - {"note"})
    if unknown:
        raise BodyError(unknown[0], "unknown field (expected: note)")
    row = await request.app[SERVICE].acknowledge(message_id, request[USER].name, fields.get("note"))
    if row is None:
        raise _Refusal(404, f"no received message {message_id}")
    return web.json_response(summary(row), status=202)


async def reply_message(request: web.Request) -> web.StreamResponse:
    """Answer a received request: sends a `response` (`status`, `note`, and the fields
    its status needs); 202 with its summary."""
    message_id = _message_id(request)
    fields = await _json_object(request)
    row = await request.app[SERVICE].reply(message_id, request[USER].name, fields)
    if row is None:
        raise _Refusal(404, f"no received message {message_id}")
    return web.json_response(summary(row), status=202)


async def get_alerts(request: web.Request) -> web.StreamResponse:
    """What is overdue now, and the latest alerts raised."""
    service = request.app[SERVICE]
    return web.json_response(
        {"overdue": await service.overdue(), "alerts": list(service.recent_alerts)[::-1]}
    )


async def get_preservations(request: web.Request) -> web.StreamResponse:
    """Our preservation requests the other side preserved, soonest to lapse first."""
    return web.json_response({"preservations": await request.app[SERVICE].open_preservations()})


async def get_peers(request: web.Request) -> web.StreamResponse:
    """Each peer in the roster: linked or not, last seen, queued count."""
    service = request.app[SERVICE]
    return web.json_response({"node": service.me, "peers": await service.peers()})


_AUDIT_PARAMS: Final = ("since", "until", "message", "actor", "action", "limit", "after")


async def list_audit(request: web.Request) -> web.StreamResponse:
    """The audit log in seq order, a page at a time: `{"entries": [...], "next": seq | null}`.

    Filters: `since` (inclusive) and `until` (exclusive) as RFC 3339 or ms,
    `message`, `actor`, `action`; `limit` (1..1000) and the cursor `after` (a
    seq: the `next` of the page before). Each entry carries its leaf hash.
    """
    query = _query(request, _AUDIT_PARAMS)
    filters = EntryFilter(
        since=_time_param(query, "since"),
        until=_time_param(query, "until"),
        message=query.get("message"),
        actor=query.get("actor"),
        action=query.get("action"),
    )
    limit = _count_param(query, "limit", 1, MAX_PAGE, DEFAULT_LIMIT)
    after = _count_param(query, "after", 0, 2**53 - 1, 0)
    path = request.app[SERVICE].store.path
    entries, cursor = await asyncio.to_thread(list_entries, path, filters, after=after, limit=limit)
    return web.json_response({"entries": entries, "next": cursor})


async def verify_audit(request: web.Request) -> web.StreamResponse:
    """`cpn audit verify` on this node's store, in a thread: the report as JSON (`ok`, ...)."""
    service = request.app[SERVICE]
    report = await asyncio.to_thread(
        verify_store,
        service.store.path,
        roster=service.roster,
        node_id=service.me,
        keeper=service.keeper,
    )
    return web.json_response(report.to_json())


async def healthz(request: web.Request) -> web.StreamResponse:
    """Liveness, without authentication."""
    return web.json_response({"status": "ok", "node": request.app[SERVICE].me})


# -- the route table: the one place that says who may call what -------------------


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    roles: frozenset[str] | None  # None: public (never under /api/)
    does: str  # what the route does, for "role X may not <does>"


_OFFICER: Final = frozenset({"officer"})
_AUDITOR: Final = frozenset({"auditor"})
_READERS: Final = frozenset({"officer", "auditor"})
_ANY_ROLE: Final = frozenset(ROLES)

ROUTES: Final = (
    Route("POST", "/api/messages", post_message, _OFFICER, "send messages"),
    Route("GET", "/api/messages", list_messages, _READERS, "list messages"),
    Route("GET", "/api/messages/{id}", get_message, _READERS, "read messages"),
    Route("POST", "/api/messages/{id}/ack", acknowledge_message, _OFFICER, "acknowledge messages"),
    Route("POST", "/api/messages/{id}/reply", reply_message, _OFFICER, "reply to messages"),
    Route("GET", "/api/alerts", get_alerts, _READERS, "see alerts"),
    Route("GET", "/api/preservations", get_preservations, _READERS, "list preservations"),
    Route("GET", "/api/peers", get_peers, _ANY_ROLE, "list peers"),
    Route("GET", "/api/audit", list_audit, _AUDITOR, "read the audit log"),
    Route("GET", "/api/audit/verify", verify_audit, _AUDITOR, "verify the audit log"),
    Route("GET", "/healthz", healthz, None, "check liveness"),
)

_BY_HANDLER: Final[dict[Handler, Route]] = {route.handler: route for route in ROUTES}


def build_app(service: Service) -> web.Application:
    """The node's HTTP API over `service`; the caller runs it (runner and site apart)."""
    app = web.Application(
        client_max_size=MAX_REQUEST_BYTES, middlewares=[_answer_errors, _authenticate]
    )
    app[SERVICE] = service
    for route in ROUTES:
        if route.roles is None and route.path.startswith("/api/"):
            raise ValueError(f"{route.path}: routes under /api/ must declare their roles")
        app.router.add_route(route.method, route.path, route.handler)
    return app


# -- middlewares -------------------------------------------------------------------


@web.middleware
async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every outcome into JSON with `Cache-Control: no-store`; nothing leaks as text."""
    try:
        response = await handler(request)
    except _Refusal as exc:
        response = await _refused(request, exc)
    except BodyError as exc:
        response = await _refused(request, _Refusal(400, str(exc), field=exc.field or None))
    except StoreError as exc:
        log.exception("store failure in %s %s", request.method, request.path)
        # The cause (SQLite's words: disk I/O error, disk full, read-only), not the path.
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        response = _error(
            503, f"the node's store is unavailable{cause}; try again", headers={"Retry-After": "5"}
        )
    except CpnError as exc:
        response = await _refused(request, _Refusal(400, str(exc)))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = await _refused(request, _from_http_exception(request, exc))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = _error(500, "internal error")
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return response


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the bearer token and the caller's role against the route's declaration."""
    route = _BY_HANDLER.get(request.match_info.route.handler)
    public = route is not None and route.roles is None
    if public or (route is None and not request.path.startswith("/api/")):
        return await handler(request)
    service = request.app[SERVICE]
    token = _bearer_token(request.headers.get(hdrs.AUTHORIZATION))
    user = await service.authenticate(token)
    if user is None:
        detail = {"remote": request.remote, "path": request.path[:200]}
        await service.audit([AuditEntry(actor="anonymous", action="login_failed", detail=detail)])
        raise _Refusal(
            401,
            "invalid or revoked token",
            headers={hdrs.WWW_AUTHENTICATE: 'Bearer error="invalid_token"'},
        )
    request[USER] = user
    if user.name not in service.logged_in:
        # A token's first use in this run is its login (per request would flood the log).
        service.logged_in.add(user.name)
        detail = {"role": user.role, "remote": request.remote}
        await service.audit([AuditEntry(actor=user.name, action="login", detail=detail)])
    if route is not None and route.roles is not None and user.role not in route.roles:
        detail = {"role": user.role, "method": request.method, "path": request.path[:200]}
        await service.audit([AuditEntry(actor=user.name, action="access_denied", detail=detail)])
        raise _Refusal(403, f"role {user.role} may not {route.does}")
    return await handler(request)


# -- helpers -----------------------------------------------------------------------


def _bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer TOKEN` header (RFC 6750 §2.1)."""
    challenge = {hdrs.WWW_AUTHENTICATE: "Bearer"}
    if header is None:
        raise _Refusal(401, "missing Authorization: Bearer TOKEN header", headers=challenge)
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
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


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and all known; empty values count as absent."""
    values: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            raise BodyError(name, f"unknown query parameter (expected: {', '.join(allowed)})")
        if name in values:
            raise BodyError(name, "given more than once")
        values[name] = value
    return {name: value for name, value in values.items() if value}


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is not None and value not in allowed:
        raise BodyError(name, f"must be one of: {', '.join(allowed)}")
    return value


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit() and len(value) <= 4) or not (
        1 <= int(value) <= MAX_LIMIT
    ):
        raise BodyError("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(value)


def _time_param(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise BodyError(name, str(exc)) from None


def _count_param(query: Mapping[str, str], name: str, low: int, high: int, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 16) or not (
        low <= int(value) <= high
    ):
        raise BodyError(name, f"must be an integer from {low} to {high}")
    return int(value)


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
    """The JSON answer to a refusal; a refused request from a known user is audited."""
    user = request.get(USER)
    if user is not None and refusal.status in (400, 413):
        detail: dict[str, Any] = {
            "method": request.method,
            "path": request.path[:200],
            "status": refusal.status,
            "error": refusal.error[:500],
        }
        if refusal.field:
            detail["field"] = refusal.field[:200]
        try:
            await request.app[SERVICE].audit(
                [AuditEntry(actor=user.name, action="request_refused", detail=detail)]
            )
        except Exception:  # the refusal must still be answered, as JSON
            log.exception("could not audit a refused request from %s", user.name)
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
