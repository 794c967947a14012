"""Alerts: one JSON record per overdue item, and its delivery to a webhook.

Rules:
- The console, the log and the webhook carry the same record, built by
  `alert_record`; it names the message, never its body.
- `WebhookSender.post` POSTs the record as JSON and treats 2xx as delivered.
  Any other status, a refused connection or a timeout is tried again with
  exponential backoff and full jitter, up to `retries` attempts in all. It
  never raises for a failed delivery: it logs it and returns False.
- Redirects are not followed; at most `MAX_RESPONSE_BYTES` of an answer are read.
- The webhook URL's path and query may hold a secret token: logs name only the
  scheme, host and port.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from enum import StrEnum
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from network import __version__
from network.core.deadlines import Overdue
from network.core.protocol import backoff_delays
from network.core.records import Json, NodeId, Priority, canonical

__all__ = [
    "MAX_RESPONSE_BYTES",
    "USER_AGENT",
    "AlertKind",
    "WebhookSender",
    "alert_kind",
    "alert_record",
    "node_alert",
    "rfc3339",
]

log = logging.getLogger("cpn.alerts")

USER_AGENT: Final = f"cpn/{__version__}"
MAX_RESPONSE_BYTES: Final = 4096
"""The most of a webhook's answer read (for the log); the rest is dropped."""


class AlertKind(StrEnum):
    OVERDUE_RECEIPT = "overdue_receipt"
    OVERDUE_ACKNOWLEDGEMENT = "overdue_acknowledgement"
    OVERDUE_RESPONSE = "overdue_response"
    PRESERVATION_EXPIRING = "preservation_expiring"
    PRESERVATION_LAPSED = "preservation_lapsed"
    # Two envelopes under one message id: the second refused, never delivered (a relay
    # that forged its own envelope under a real message's id is named by its signature).
    ID_CONFLICT = "id_conflict"
    # About the node itself, not a message (`node_alert`).
    ROSTER_EXPIRING = "roster_expiring"
    ROSTER_EXPIRED = "roster_expired"
    # Restored from a backup, and some peer has not given back what came after it.
    RESTORE_INCOMPLETE = "restore_incomplete"


_KINDS: Final = {
    Overdue.RECEIPT: AlertKind.OVERDUE_RECEIPT,
    Overdue.ACKNOWLEDGEMENT: AlertKind.OVERDUE_ACKNOWLEDGEMENT,
    Overdue.RESPONSE: AlertKind.OVERDUE_RESPONSE,
    Overdue.PRESERVATION_EXPIRING: AlertKind.PRESERVATION_EXPIRING,
    Overdue.PRESERVATION_LAPSED: AlertKind.PRESERVATION_LAPSED,
}


def alert_kind(item: Overdue) -> AlertKind:
    """The alert raised for an overdue item."""
    return _KINDS[item]


def rfc3339(ms: int) -> str:
    """A time in ms since the epoch as RFC 3339 UTC with milliseconds."""
    seconds, millis = divmod(ms, 1000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def alert_record(
    kind: AlertKind,
    *,
    node: NodeId,
    message_id: str,
    box: str,
    priority: Priority,
    peer: NodeId,
    detail: str,
    now: int,
    peer_phones: Sequence[str] = (),
) -> dict[str, Json]:
    """The alert as JSON: what is overdue, on which message, with which country.

    `box` is "out" (we wait on `peer`) or "in" (`peer` waits on us). `peer_phones`, the
    peer's duty desk by telephone (its roster card), is there when its card gives them:
    an officer whose message is not getting through calls.
    """
    record: dict[str, Json] = {
        "alert": kind.value,
        "message_id": message_id,
        "box": box,
        "priority": priority.value,
        "peer": peer,
        "node": node,
        "time": rfc3339(now),
        "detail": detail,
    }
    if peer_phones:
        record["peer_phones"] = list(peer_phones)
    return record


def node_alert(kind: AlertKind, *, node: NodeId, detail: str, now: int) -> dict[str, Json]:
    """An alert about the node itself (its roster): the record of `alert_record`, without
    a message, a box, a priority or a peer."""
    return {
        "alert": kind.value,
        "message_id": None,
        "box": None,
        "priority": None,
        "peer": None,
        "node": node,
        "time": rfc3339(now),
        "detail": detail,
    }


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class WebhookSender:
    """POSTs alerts to one webhook. Use as `async with` or call `aclose()`.

    `base` and `cap` (seconds) shape the backoff between attempts; `rng` and
    `sleep` may be replaced by tests to shrink or observe the delays.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        retries: int = 5,
        base: float = 0.5,
        cap: float = 30.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if retries < 1:
            raise ValueError("retries counts attempts in all: at least 1")
        self.url = url
        self.origin = _origin(url)
        self.timeout = timeout
        self.retries = retries
        self._base = base
        self._cap = cap
        self._rng = rng
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session; the sender posts no more."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this WebhookSender is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": USER_AGENT},
                connector=aiohttp.TCPConnector(limit=4),
            )
        return self._session

    async def post(self, alert: Mapping[str, Json]) -> bool:
        """Deliver one alert; True once the webhook answered 2xx, False when every
        attempt failed (logged). Raises RuntimeError only when closed."""
        session = self._open()
        data = canonical(dict(alert))
        delays = backoff_delays(base=self._base, cap=self._cap, rng=self._rng)
        what = f"alert {alert.get('alert')} for {alert.get('message_id')}"
        for attempt in range(1, self.retries + 1):
            problem = await self._attempt(session, data)
            if problem is None:
                log.info("webhook %s took %s", self.origin, what)
                return True
            if attempt == self.retries:
                log.error(
                    "webhook %s: gave up on %s after %d attempts: %s",
                    self.origin,
                    what,
                    attempt,
                    problem,
                )
                return False
            delay = next(delays)
            log.warning(
                "webhook %s: attempt %d of %d for %s failed (%s); again in %.1f s",
                self.origin,
                attempt,
                self.retries,
                what,
                problem,
                delay,
            )
            await self._sleep(delay)
        return False  # unreachable: the loop returns on its last attempt

    async def _attempt(self, session: aiohttp.ClientSession, data: bytes) -> str | None:
        """One POST; None when delivered, else what went wrong."""
        try:
            async with session.post(
                self.url,
                data=data,
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
            ) as response:
                if 200 <= response.status < 300:
                    return None
                text = await response.content.read(MAX_RESPONSE_BYTES)
                snippet = text[:200].decode("utf-8", "replace")
                return f"HTTP {response.status} {snippet!r}"
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {self._redact(str(exc))}"

    def _redact(self, text: str) -> str:
        """`text` without the URL's path and query (a token may hide there)."""
        parts = urlsplit(self.url)
        secret = parts.path + (f"?{parts.query}" if parts.query else "")
        return text.replace(secret, "/…") if secret.strip("/") else text
