"""The OpenAPI 3.1 document of the HTTP API, built from the route table (`web.ROUTES`).

Rules:
- Every route carries a `Doc`: its query and path parameters, request body and
  success answer. The document is built from the routes and nothing else, so a
  route is documented the moment it exists; its roles go in `x-roles`.
- Parameters are declared once, as `Param`s: the server checks every request's
  query against them (`Param.problem`), so the document says what is enforced.
- Message bodies' schemas come from `bodies.json_schemas`, derived from the same
  type hints that validate them.
- What every route may answer besides success is added here, not per route:
  400 (an unknown or bad query parameter, a bad path parameter or body), 401 and
  403 and 429 and 503 (authenticated routes), 408 (public routes: not answered within
  `[api] connection_idle`; routes taking a body: nothing of it arrived for that long),
  404 (routes with path parameters), 413 (routes taking a body); each as `Error`,
  `{"error", "field"?}`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

from network.core.bodies import json_schemas
from network.core.deadlines import Overdue
from network.core.lifecycle import State
from network.core.records import MESSAGE_ID_PATTERN, MessageType, Priority

__all__ = [
    "ID_PARAM",
    "OPENAPI_VERSION",
    "Doc",
    "Param",
    "array_of",
    "document",
    "enum",
    "integer",
    "obj",
    "ref",
    "string",
]

OPENAPI_VERSION: Final = "3.1.0"
_REF: Final = "#/components/schemas/"

Schema = Mapping[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"{_REF}{name}"}


def string(max_length: int = 200, *, pattern: str | None = None, **more: Any) -> Schema:
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": max_length, **more}
    if pattern is not None:
        schema["pattern"] = pattern
    return schema


def integer(low: int, high: int, **more: Any) -> Schema:
    return {"type": "integer", "minimum": low, "maximum": high, **more}


def enum(values: Iterable[str] | type[StrEnum]) -> Schema:
    return {"type": "string", "enum": [str(v) for v in values]}


def array_of(item: Schema) -> Schema:
    return {"type": "array", "items": item}


def obj(required: Mapping[str, Schema], optional: Mapping[str, Schema] | None = None) -> Schema:
    """An object with these properties (`optional` may be absent); others allowed."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


@dataclass(frozen=True, slots=True)
class Param:
    """A query or path parameter: its name, the JSON Schema of its value, what it means.

    The schema uses the keywords `problem` checks: `enum`, `type: integer` with
    `minimum`/`maximum`, `maxLength`, `pattern`.
    """

    name: str
    schema: Schema
    description: str

    def problem(self, value: str) -> str | None:
        """What is wrong with `value` (a query string value), or None."""
        schema = self.schema
        if "enum" in schema:
            allowed = schema["enum"]
            return None if value in allowed else f"must be one of: {', '.join(allowed)}"
        if schema.get("type") == "integer":
            low, high = schema["minimum"], schema["maximum"]
            digits = value.isascii() and value.isdigit() and len(value) <= 16
            if digits and low <= int(value) <= high:
                return None
            return f"must be an integer from {low} to {high}"
        if len(value) > schema.get("maxLength", 200):
            return f"must be at most {schema.get('maxLength', 200)} characters"
        pattern = schema.get("pattern")
        if pattern is not None and not re.fullmatch(pattern.strip("^$"), value):
            return f"must match {pattern}"
        return None


ID_PARAM: Final = Param(
    "id",
    string(
        36,
        pattern=MESSAGE_ID_PATTERN,
        minLength=36,
    ),
    "The message id (a UUIDv7).",
)


INDEX_PARAM: Final = Param(
    "index",
    integer(0, 19),
    "The file's place in the message's `attachments`, from 0.",
)


@dataclass(frozen=True, slots=True)
class Doc:
    """What the document says of one route beyond its method, path, roles and purpose."""

    answer: Schema  # the success answer's schema
    status: int = 200  # the success status
    query: tuple[Param, ...] = ()
    path: tuple[Param, ...] = ()
    body: Schema | None = None  # the request body's schema
    body_required: bool = True
    media_type: str = "application/json"  # of the success answer (text/html, text/event-stream)


class DocumentedRoute(Protocol):
    """What `document` reads of a route (`web.Route`)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def roles(self) -> frozenset[str] | None: ...
    @property
    def does(self) -> str: ...
    @property
    def doc(self) -> Doc: ...
    @property
    def handler(self) -> Any: ...


# -- schemas of the answers -----------------------------------------------------

_MS: Final = {"type": "integer", "description": "ms since the Unix epoch"}
_NULL_MS: Final = {"type": ["integer", "null"], "description": "ms since the Unix epoch"}
_NULL_STR: Final = {"type": ["string", "null"]}
_NODE_ID: Final = {"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 3166-1 alpha-3"}

SCHEMAS: Final[dict[str, Any]] = {
    "Error": obj(
        {"error": {"type": "string", "description": "what is wrong"}},
        {"field": {"type": "string", "description": "the body field or parameter at fault"}},
    ),
    "MessageSummary": obj(
        {
            "id": {"type": "string", "format": "uuid"},
            "box": enum(("in", "out", "relay")),
            "peer": _NODE_ID,
            "from": {"anyOf": [_NODE_ID, {"type": "null"}]},
            "to": {"anyOf": [_NODE_ID, {"type": "null"}]},
            "type": enum(MessageType),
            "priority": enum(Priority),
            "state": enum(State),
            "created": _MS,
            "expires": _MS,
            "received": _NULL_MS,
            "updated": _MS,
            "attempts": {"type": "integer"},
            "composed_by": _NULL_STR,
            "in_reply_to": _NULL_STR,
            "acknowledged_by": _NULL_STR,
            "overdue": array_of(enum(Overdue)),
            "deadlines": obj(
                {"receipt": _NULL_MS, "acknowledgement": _NULL_MS, "response": _NULL_MS}
            ),
            "preserved_until": _NULL_MS,
            "until_decision": _NULL_MS,
            "assigned_to": _NULL_STR,
            "approval": {
                "anyOf": [enum(("pending", "approved", "sent_back")), {"type": "null"}],
                "description": "four eyes: a second officer's approval (null: not needed)",
            },
            "approved_by": _NULL_STR,
            "deleted": {
                "anyOf": [obj({"rule": {"type": "string"}, "at": _MS}), {"type": "null"}],
                "description": "the retention rule that deleted its contents, and when",
            },
        }
    ),
    "Message": {
        "allOf": [
            ref("MessageSummary"),
            obj(
                {
                    "header": {
                        "type": ["object", "null"],
                        "description": "the signed envelope header (null: contents deleted)",
                    },
                    "body": {
                        "type": ["object", "null"],
                        "description": "the decrypted body of its type (null: contents deleted)",
                    },
                    "receipts": array_of({"type": "object"}),
                    "timeline": array_of({"type": "object", "description": "its audit entries"}),
                    "thread": array_of(ref("MessageSummary")),
                }
            ),
        ]
    },
    "Peer": obj(
        {
            "id": _NODE_ID,
            "name": {"type": "string"},
            "status": {"type": "string"},
            "linked": {"type": "boolean"},
            "linked_since": _NULL_MS,
            "last_seen": _NULL_MS,
            "failures": {"type": "integer"},
            "last_error": _NULL_STR,
            "queued": {"type": "integer"},
            "phones": array_of({"type": "string"}),
            "languages": array_of({"type": "string"}),
        }
    ),
    "AuditEntry": obj(
        {
            "seq": {"type": "integer", "minimum": 1},
            "index": {"type": "integer", "minimum": 0, "description": "its leaf index"},
            "time": _MS,
            "time_rfc3339": _NULL_STR,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "message_id": _NULL_STR,
            "detail": {"type": "object"},
            "leaf_hash": {"type": "string", "description": "its RFC 6962 leaf hash, base64"},
        }
    ),
}

_STATUS_TEXT: Final = {
    400: "Bad input: the error names the field or parameter",
    401: "No token, or an invalid or revoked one",
    403: "The caller's role may not do this",
    404: "No such message",
    408: (
        "Not answered within `[api] connection_idle` (a request from someone not signed in),"
        " or nothing of its body arrived for that long"
    ),
    413: "The request body is over the size limit",
    429: (
        "Too many failed logins from this address, or too many requests of this account"
        " under way: retry after `Retry-After` seconds"
    ),
    503: (
        "The node cannot take this now (its store is unavailable, or too many submissions"
        " wait to be sealed); nothing was changed: retry after `Retry-After` seconds"
    ),
}


# -- the document -------------------------------------------------------------


def document(
    routes: Iterable[DocumentedRoute], *, title: str, version: str, description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`; raises ValueError for an undocumented
    path parameter (a route's `{name}` needs a `Param` in its doc)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, **json_schemas(_REF)},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A user's API token (`cpn user add`).",
                }
            },
        },
    }


def _operation(route: DocumentedRoute) -> dict[str, Any]:
    doc = route.doc
    names = re.findall(r"{(\w+)}", route.path)
    if sorted(names) != sorted(p.name for p in doc.path):
        raise ValueError(f"{route.method} {route.path}: path parameters {names} need a Param each")
    description = " ".join((route.handler.__doc__ or "").split())
    operation: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.does[0].upper() + route.does[1:],
        "description": description,
        "parameters": [
            *(_parameter(p, "path") for p in doc.path),
            *(_parameter(p, "query") for p in doc.query),
        ],
    }
    if doc.body is not None:
        operation["requestBody"] = {
            "required": doc.body_required,
            "content": {"application/json": {"schema": doc.body}},
        }
    operation["responses"] = _responses(route)
    if route.roles is None:
        operation["security"] = []
    else:
        operation["security"] = [{"bearer": []}]
        operation["x-roles"] = sorted(route.roles)
    return operation


def _parameter(param: Param, where: str) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": where,
        "required": where == "path",
        "description": param.description,
        "schema": param.schema,
    }


def _responses(route: DocumentedRoute) -> dict[str, Any]:
    doc = route.doc
    statuses = {400}
    if route.roles is not None:
        statuses |= {401, 403, 429, 503}
    else:
        statuses.add(408)
    if doc.path:
        statuses.add(404)
    if doc.body is not None:
        statuses |= {408, 413}
    error = {"application/json": {"schema": ref("Error")}}
    responses: dict[str, Any] = {
        str(doc.status): {
            "description": "Success",
            "content": {doc.media_type: {"schema": doc.answer}},
        }
    }
    for status in sorted(statuses):
        responses[str(status)] = {"description": _STATUS_TEXT[status], "content": error}
    return responses
