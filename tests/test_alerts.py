"""Alert records, and webhook delivery against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from network import __version__
from network.core.deadlines import Overdue
from network.core.records import NodeId, Priority
from network.node.alerts import (
    AlertKind,
    WebhookSender,
    alert_kind,
    alert_record,
    rfc3339,
)
from tests.harness import refusing_port

NOW = 1_795_000_000_123  # 2026-11-18T11:06:40.123Z
SECRET_PATH = "/hooks/T0KEN-s3cret"


@dataclass
class Hook:
    """A webhook that answers each POST with the next status in `statuses`
    (the last one repeats); one that `hangs` never answers (its server's cleanup
    cancels the request)."""

    statuses: list[int]
    hangs: bool = False
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        if self.hangs:  # the sender's timeout is all that ends its wait
            await asyncio.Event().wait()
        status = self.statuses[min(len(self.bodies), len(self.statuses)) - 1]
        return web.Response(status=status, text="x" * 100_000 if status >= 300 else "ok")

    @property
    def attempts(self) -> int:
        return len(self.bodies)


@asynccontextmanager
async def serve(hook: Hook) -> AsyncIterator[str]:
    """`hook` on a real server at 127.0.0.1:<free port>; yields its URL."""
    app = web.Application()
    app.router.add_post(SECRET_PATH, hook.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}{SECRET_PATH}"
    finally:
        await runner.cleanup()


@dataclass
class Sleeps:
    """The sender's clock, driven: records the backoff delays asked for, and lets none pass."""

    asked: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


def record(kind: AlertKind = AlertKind.OVERDUE_ACKNOWLEDGEMENT) -> dict[str, object]:
    return alert_record(
        kind,
        node=NodeId("FRA"),
        message_id="01936f3e-8a4b-7c2d-9e1f-0a1b2c3d4e5f",
        box="out",
        priority=Priority.FLASH,
        peer=NodeId("DEU"),
        detail="not acknowledged by the receiving officers",
        now=NOW,
    )


def sender(
    url: str,
    sleeps: Callable[[float], Awaitable[None]],
    *,
    retries: int = 5,
    timeout: float = 10.0,
    base: float = 0.5,
    cap: float = 30.0,
) -> WebhookSender:
    return WebhookSender(
        url,
        retries=retries,
        timeout=timeout,
        base=base,
        cap=cap,
        rng=random.Random(7),
        sleep=sleeps,
    )


# --- the record ---------------------------------------------------------------------


def test_alert_record_has_the_agreed_fields() -> None:
    assert record() == {
        "alert": "overdue_acknowledgement",
        "message_id": "01936f3e-8a4b-7c2d-9e1f-0a1b2c3d4e5f",
        "box": "out",
        "priority": "flash",
        "peer": "DEU",
        "node": "FRA",
        "time": "2026-11-18T11:06:40.123Z",
        "detail": "not acknowledged by the receiving officers",
    }


def test_every_overdue_item_has_an_alert_kind() -> None:
    kinds = {alert_kind(item) for item in Overdue}

    # Every deadline has its kind; the others are raised by what peers send (id conflicts)
    # or about the node itself (its roster, its restore).
    others = {
        AlertKind.ID_CONFLICT,
        AlertKind.ROSTER_EXPIRING,
        AlertKind.ROSTER_EXPIRED,
        AlertKind.RESTORE_INCOMPLETE,
    }
    assert kinds == set(AlertKind) - others
    assert alert_kind(Overdue.RESPONSE) == "overdue_response"
    assert alert_kind(Overdue.PRESERVATION_EXPIRING) == "preservation_expiring"


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_795_000_000_000, "2026-11-18T11:06:40.000Z"),
        (1_795_000_000_999, "2026-11-18T11:06:40.999Z"),
    ],
)
def test_rfc3339_is_utc_with_milliseconds(ms: int, text: str) -> None:
    assert rfc3339(ms) == text


# --- the webhook ----------------------------------------------------------------------


async def test_delivered_once_after_two_failures() -> None:
    hook, sleeps = Hook([500, 500, 204]), Sleeps()

    async with serve(hook) as url, sender(url, sleeps, retries=5) as webhook:
        delivered = await webhook.post(record())

    assert delivered is True
    assert hook.attempts == 3
    assert json.loads(hook.bodies[-1]) == record()
    assert hook.headers[-1]["Content-Type"] == "application/json"
    assert hook.headers[-1]["User-Agent"] == f"cpn/{__version__}"
    assert len(sleeps.asked) == 2


async def test_backoff_is_full_jitter_under_a_growing_ceiling() -> None:
    hook, sleeps = Hook([503]), Sleeps()

    async with serve(hook) as url, sender(url, sleeps, retries=6, base=0.5, cap=3.0) as webhook:
        await webhook.post(record())

    ceilings = [0.5, 1.0, 2.0, 3.0, 3.0]
    assert len(sleeps.asked) == len(ceilings)
    assert all(0 <= d <= c for d, c in zip(sleeps.asked, ceilings, strict=True))


async def test_gives_up_after_retries_attempts_without_raising() -> None:
    hook, sleeps = Hook([500]), Sleeps()

    async with serve(hook) as url, sender(url, sleeps, retries=4) as webhook:
        delivered = await webhook.post(record())

    assert delivered is False
    assert hook.attempts == 4
    assert len(sleeps.asked) == 3  # none after the last attempt


@pytest.mark.parametrize("status", [301, 307, 400, 404, 429])
async def test_other_statuses_are_failures(status: int) -> None:
    hook, sleeps = Hook([status]), Sleeps()

    async with serve(hook) as url, sender(url, sleeps, retries=2) as webhook:
        delivered = await webhook.post(record())

    assert delivered is False
    assert hook.attempts == 2


async def test_connection_refused_returns_false() -> None:
    sleeps = Sleeps()

    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}/hook"
        async with sender(url, sleeps, retries=3) as webhook:
            delivered = await webhook.post(record())

    assert delivered is False
    assert len(sleeps.asked) == 2


async def test_timeout_is_honoured() -> None:
    hook, sleeps = Hook([204], hangs=True), Sleeps()

    async with serve(hook) as url, sender(url, sleeps, retries=2, timeout=0.2) as webhook:
        started = time.monotonic()
        delivered = await webhook.post(record())
        elapsed = time.monotonic() - started

    assert delivered is False
    assert hook.attempts == 2
    assert elapsed < 2.0


async def test_log_names_the_host_but_not_the_secret_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook, sleeps = Hook([500]), Sleeps()
    caplog.set_level(logging.INFO, logger="cpn.alerts")

    async with serve(hook) as url, sender(url, sleeps, retries=2) as webhook:
        await webhook.post(record())

    text = caplog.text
    assert "gave up" in text
    assert "HTTP 500" in text
    assert "127.0.0.1" in text
    assert "s3cret" not in text
    assert "x" * 300 not in text  # the answer's body is cut short


async def test_closed_sender_refuses_to_post() -> None:
    hook, sleeps = Hook([204]), Sleeps()

    async with serve(hook) as url:
        webhook = sender(url, sleeps)
        assert await webhook.post(record()) is True
        await webhook.aclose()

        with pytest.raises(RuntimeError, match="closed"):
            await webhook.post(record())

    assert hook.attempts == 1


def test_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WebhookSender("https://alerts.example/", retries=0)
