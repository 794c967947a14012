"""A synchronous client of a node's HTTP API, for `cpn send`, `inbox`, `show`, `ack`, `reply`.

Rules:
- One method per route an officer uses; each returns the node's JSON answer as
  it is (a dict), so `--json` can print exactly what the node said.
- A refusal (any 3xx, 4xx or 5xx) raises `ApiError` with the status and the
  field the node named; no answer at all raises `UnreachableError`.
- The token goes only into the `Authorization` header of requests to the
  configured URL: never into a message, never along a redirect (redirects are
  not followed: the API has none).
- Answers are read up to MAX_ANSWER_BYTES.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import secrets
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Final

from network.core.attachments import MAX_FILE_BYTES, AttachmentFile
from network.core.errors import ApiError, CpnError, UnreachableError
from network.core.records import b64encode

__all__ = ["MAX_ANSWER_BYTES", "Client"]

MAX_ANSWER_BYTES: Final = 16 * 1024 * 1024
"""The largest answer read: a listing of 500 messages is well under 1 MiB."""

DEFAULT_TIMEOUT: Final = 30.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Answer a redirect as the refusal it is, instead of following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """The API of the node at `api` (such as http://127.0.0.1:8101), called with `token`."""

    def __init__(self, api: str, token: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Raises CpnError naming `--api` or `--token` when either cannot be used."""
        parts = urllib.parse.urlsplit(api)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CpnError(f"--api: {api!r} is not an http:// or https:// URL of a node")
        if parts.username or parts.password:
            raise CpnError("--api: the URL must not carry a user name or password")
        # Printable ASCII without spaces: anything else could not travel in a header.
        if not token or not all("!" <= c <= "~" for c in token):
            raise CpnError("--token: must be printable ASCII without spaces")
        self.api = api.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirects)

    def __repr__(self) -> str:  # never the token
        return f"Client({self.api!r})"

    # -- the routes ------------------------------------------------------------------

    def send(
        self, request: Mapping[str, Any], files: Sequence[AttachmentFile] = ()
    ) -> dict[str, Any]:
        """POST /api/messages: the new message's summary (`id`, `state`, ...); with `files`,
        as multipart/form-data (the message's JSON, then each file)."""
        return self._post("/api/messages", request, files)

    def _post(
        self, path: str, fields: Mapping[str, Any], files: Sequence[AttachmentFile]
    ) -> dict[str, Any]:
        """POST `fields` as JSON, or with `files` as multipart/form-data (part `message`)."""
        if not files:
            return self._call("POST", path, fields)
        boundary = secrets.token_hex(16)
        return self._call(
            "POST",
            path,
            raw=_multipart(boundary, fields, files),
            content_type=f"multipart/form-data; boundary={boundary}",
        )

    def attachment(self, message_id: str, index: int) -> tuple[str, bytes]:
        """GET /api/messages/{id}/attachments/{index}: the file's name and bytes, checked
        by the node against the size and SHA-256 its sender signed (and again here)."""
        path = f"/api/messages/{_segment(message_id)}/attachments/{index}"
        request = urllib.request.Request(self.api + path, method="GET")  # noqa: S310
        _, headers, data = self._send(request, MAX_FILE_BYTES)
        name = _filename(headers.get("Content-Disposition", ""))
        digest = headers.get("X-Content-SHA256", "")
        if b64encode(hashlib.sha256(data).digest()) != digest:
            raise ApiError(200, "the file received is not the one its sender signed for")
        return name, data

    def messages(
        self,
        *,
        box: str = "in",
        state: str | None = None,
        priority: str | None = None,
        limit: int | None = None,
        case: str | None = None,
    ) -> dict[str, Any]:
        """GET /api/messages: `{"messages": [...]}`, most urgent and newest first."""
        query = {"box": box, "state": state, "priority": priority, "limit": limit, "case": case}
        given = {name: str(value) for name, value in query.items() if value is not None}
        return self._call("GET", f"/api/messages?{urllib.parse.urlencode(given)}")

    def search(self, criteria: dict[str, str]) -> dict[str, Any]:
        """GET /api/search: `{"messages": [...]}`, newest first (the search is audited)."""
        return self._call("GET", f"/api/search?{urllib.parse.urlencode(criteria)}")

    def message(self, message_id: str) -> dict[str, Any]:
        """GET /api/messages/{id}: header, decrypted body, state, receipts, timeline, thread."""
        return self._call("GET", f"/api/messages/{_segment(message_id)}")

    def acknowledge(self, message_id: str, note: str | None = None) -> dict[str, Any]:
        """POST /api/messages/{id}/ack: the summary of the `acknowledgement` sent."""
        body = {} if note is None else {"note": note}
        return self._call("POST", f"/api/messages/{_segment(message_id)}/ack", body)

    def reply(
        self, message_id: str, fields: Mapping[str, Any], files: Sequence[AttachmentFile] = ()
    ) -> dict[str, Any]:
        """POST /api/messages/{id}/reply: the summary of the `response` sent."""
        return self._post(f"/api/messages/{_segment(message_id)}/reply", fields, files)

    def assign(self, message_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """POST /api/messages/{id}/assign: the message's summary, `assigned_to` its holder."""
        return self._call("POST", f"/api/messages/{_segment(message_id)}/assign", fields)

    def follow_up(
        self, message_id: str, fields: Mapping[str, Any], files: Sequence[AttachmentFile] = ()
    ) -> dict[str, Any]:
        """POST /api/messages/{id}/follow-up: the summary of the `follow_up` sent."""
        return self._post(f"/api/messages/{_segment(message_id)}/follow-up", fields, files)

    def approvals(self) -> dict[str, Any]:
        """GET /api/approvals: `{"messages": [...]}`, the requests waiting for approval."""
        return self._call("GET", "/api/approvals")

    def decide(self, message_id: str, action: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """POST /api/messages/{id}/approve or /send-back: the request's summary."""
        return self._call("POST", f"/api/messages/{_segment(message_id)}/{action}", fields)

    def holds(self) -> dict[str, Any]:
        """GET /api/holds: the legal holds."""
        return self._call("GET", "/api/holds")

    def hold(self, action: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """POST /api/holds (`place`) or /api/holds/release (`release`)."""
        return self._call(
            "POST", "/api/holds" if action == "place" else "/api/holds/release", fields
        )

    # -- the wire --------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        data = raw if body is None else json.dumps(body, ensure_ascii=False).encode()
        # The scheme was checked to be http or https in __init__.
        request = urllib.request.Request(self.api + path, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        status, _, raw = self._send(request, MAX_ANSWER_BYTES)
        answer = _json(status, raw)
        if answer is None:
            raise ApiError(status, f"the answer is not JSON: is {self.api} a cpn node's API?")
        return answer

    def _send(
        self, request: urllib.request.Request, limit: int
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """`request`, with the token: the status, headers and body (at most `limit` bytes)
        of a success; ApiError for a refusal, UnreachableError when there is no answer."""
        request.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return response.status, response.headers, _read(response, limit)
        except urllib.error.HTTPError as exc:
            with exc:
                raise _refusal(exc.code, _read(exc), exc.headers.get("Location")) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> UnreachableError:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused (is the node running? check --api or CPN_API)"
        elif isinstance(reason, TimeoutError | socket.timeout):
            why = f"no answer within {self._timeout:g} s"
        elif isinstance(reason, socket.gaierror):
            why = f"unknown host ({reason.strerror})"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror
        else:
            why = str(reason) or type(reason).__name__
        return UnreachableError(f"cannot reach the node at {self.api}: {why}")


def _multipart(boundary: str, request: Mapping[str, Any], files: Sequence[AttachmentFile]) -> bytes:
    """multipart/form-data (RFC 7578): part `message` (the JSON), then a part `attachment`
    per file, its name as RFC 5987 `filename*` (UTF-8) beside an ASCII `filename`."""
    out = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\n'
        "Content-Type: application/json\r\n\r\n".encode(),
        json.dumps(request, ensure_ascii=False).encode(),
        b"\r\n",
    ]
    for file in files:
        fallback = "".join(
            c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in file.name
        )
        encoded = urllib.parse.quote(file.name, safe="")
        out += [
            f'--{boundary}\r\nContent-Disposition: form-data; name="attachment";'
            f" filename=\"{fallback}\"; filename*=UTF-8''{encoded}\r\n"
            f"Content-Type: {file.media_type}\r\n\r\n".encode(),
            file.data,
            b"\r\n",
        ]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def _filename(disposition: str) -> str:
    """The name a Content-Disposition gives (its UTF-8 `filename*` first)."""
    found = re.search(r"filename\*=UTF-8''([^;]+)", disposition)
    if found:
        return urllib.parse.unquote(found[1])
    found = re.search(r'filename="([^"]*)"', disposition)
    return found[1] if found else "attachment"


def _segment(message_id: str) -> str:
    """A message id as one path segment: the node checks its shape, this keeps it one segment."""
    return urllib.parse.quote(message_id, safe="")


def _read(response: Any, limit: int = MAX_ANSWER_BYTES) -> bytes:
    data: bytes = response.read(limit + 1)
    if len(data) > limit:
        raise ApiError(response.status, f"the answer is over {limit} bytes")
    return data


def _json(status: int, raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _refusal(status: int, raw: bytes, location: str | None) -> ApiError:
    """The error the node answered with, in words a duty officer can act on."""
    answer = _json(status, raw) or {}
    error = answer.get("error")
    field = answer.get("field")
    message = error if isinstance(error, str) and error else f"HTTP {status}"
    field = field if isinstance(field, str) and field else None
    if status == 401:
        message = f"the node refused the token ({message}): check --token or CPN_TOKEN"
    elif status == 403:
        message = f"the node refused: {message} (HTTP 403)"
    elif 300 <= status < 400:
        message = f"the node answered with a redirect (HTTP {status} to {location}): check --api"
    elif field is not None and not message.startswith(f"{field}:"):
        message = f"{field}: {message}"
    return ApiError(status, message, field=field)
