"""The node's Prometheus metrics (`GET /metrics`), in the app's own registry.

prometheus-client is imported here only. Two kinds of figure:
- counted as things happen, by the web layer: HTTP requests by method, route
  template and status (never the raw path: unmatched paths share one label, so
  nobody can grow the series by asking for made-up URLs), failed logins, and
  penalty windows opened;
- read at scrape time: messages by box and state, queued messages per
  destination, overdue messages (each one aggregate over a small index), links
  up (memory), audit log size (memory), the latest checkpoint's size and the largest a
  witness cosigned, when the roster and our TLS certificate expire, the free space
  where the store lives, the outcome of the last audit verification, and (`cpn node
  run`) how late the event loop ran its timers (memory: network/node/looplag.py). They are
  read at most once per `min_interval` seconds; scrapes in between get the same
  figures, so a flood of scrapes on this public endpoint costs the store nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from network.core.crypto import certificate_not_after
from network.core.lifecycle import State
from network.node import looplag
from network.node.wiring import Node

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST.split(";")[0]  # text/plain; the charset goes apart
MIN_INTERVAL_SECONDS: Final = 1.0
_BOXES: Final = ("in", "out", "relay")


@dataclass(slots=True)
class _Figures:
    """What the store said at the last reading."""

    messages: dict[tuple[str, str], int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    overdue: int = 0
    checkpoint_size: int = 0
    cosigned_size: int = 0
    store_free_bytes: int = 0
    store_bytes: int = 0


class Metrics:
    """One node's figures, and their rendering in the Prometheus text format."""

    def __init__(
        self,
        node: Node,
        *,
        min_interval: float = MIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "cpn_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.failed_logins = Counter(
            "cpn_login_failures", "Requests with a refused token", registry=self.registry
        )
        self.throttled = Counter(
            "cpn_login_throttled",
            "Penalty windows opened for an address after repeated failed logins",
            registry=self.registry,
        )
        self._store = node.context.store
        self._read_at: float | None = None
        self._min_interval = min_interval
        self._clock = clock
        self._collector = _StoreCollector(node)
        self.registry.register(self._collector)

    def verified(self, ok: bool, when_ms: int) -> None:
        """An audit verification ran (`GET /api/audit/verify`): alert on a failed or stale one."""
        self._collector.verified = (ok, when_ms)

    async def render(self) -> bytes:
        """The text exposition of every figure, reading the store if its figures are stale."""
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._min_interval:
            store = self._store
            self._collector.figures = _Figures(
                messages=await store.message_counts(),
                queued=await store.queued_counts(),
                overdue=await store.overdue_count(),
                checkpoint_size=await store.checkpoint_size(),
                cosigned_size=await store.cosigned_size(),
                **_disk(store.path),
            )
            self._read_at = now
        return generate_latest(self.registry)


class _StoreCollector(Collector):
    """The scrape-time figures, from the last reading and from the node's memory."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.figures = _Figures()
        self.verified: tuple[bool, int] | None = None  # the last audit verification
        self.certificate_expiry = certificate_not_after(node.context.keys.card.tls_cert) / 1000

    def describe(self) -> list[Metric]:
        return []  # nothing to check against other collectors' names at registration

    def collect(self) -> Iterator[Metric]:
        context, linked, figures = self.node.context, self.node.delivery.linked, self.figures
        info = GaugeMetricFamily("cpn_node", "This node (value 1)", labels=["node"])
        info.add_metric([context.me], 1)
        yield info
        messages = GaugeMetricFamily(
            "cpn_messages", "Messages in the store, by box and state", labels=["box", "state"]
        )
        for box in _BOXES:  # every pair, zeros too: a series that vanishes is hard to alert on
            for state in State:
                messages.add_metric([box, state.value], figures.messages.get((box, state), 0))
        yield messages
        peers = sorted(node for node in context.roster.entries if node != context.me)
        queued = GaugeMetricFamily(
            "cpn_queued_messages",
            "Messages waiting to go (ours or relayed), by destination",
            labels=["peer"],
        )
        for peer in sorted({*peers, *figures.queued}):
            queued.add_metric([peer], figures.queued.get(peer, 0))
        yield queued
        link = GaugeMetricFamily("cpn_link_up", "1 while a peer link is up", labels=["peer"])
        for peer in peers:
            link.add_metric([peer], 1 if peer in linked else 0)
        yield link
        yield GaugeMetricFamily("cpn_links_up", "Peer links up", value=len(linked))
        scheduler = self.node.delivery.scheduler
        yield GaugeMetricFamily(
            "cpn_receipts_passing",
            "End-to-end receipts for other nodes waiting here for a node on their message's"
            " path to be linked (in memory)",
            value=scheduler.receipts_waiting,
        )
        yield CounterMetricFamily(
            "cpn_receipts_passing_dropped",
            "Receipts for other nodes dropped, the oldest first, past the most kept for one"
            " recipient: each sender has its receipt when it sends again",
            value=scheduler.receipts_dropped,
        )
        yield GaugeMetricFamily(
            "cpn_overdue_messages",
            "Messages with a deadline passed and unmet",
            value=figures.overdue,
        )
        yield GaugeMetricFamily(
            "cpn_audit_entries", "Entries in the audit log", value=context.store.audit_log.size
        )
        yield GaugeMetricFamily(
            "cpn_checkpoint_size",
            "Tree size of the latest signed audit checkpoint (0 before the first)",
            value=figures.checkpoint_size,
        )
        yield GaugeMetricFamily(
            "cpn_checkpoint_cosigned_size",
            "The largest tree size of our log a witness cosigned (0 before the first)",
            value=figures.cosigned_size,
        )
        yield GaugeMetricFamily(
            "cpn_roster_version", "Version of the roster held", value=context.roster.version
        )
        yield GaugeMetricFamily(
            "cpn_roster_valid_until_seconds",
            "When the roster held expires (Unix seconds)",
            value=context.roster.valid_until / 1000,
        )
        yield GaugeMetricFamily(
            "cpn_tls_certificate_expiry_seconds",
            "When this node's TLS certificate expires (Unix seconds)",
            value=self.certificate_expiry,
        )
        yield GaugeMetricFamily(
            "cpn_store_free_bytes",
            "Free space on the file system of the store (for the node's user)",
            value=figures.store_free_bytes,
        )
        yield GaugeMetricFamily(
            "cpn_store_bytes", "Size of the store file and its WAL", value=figures.store_bytes
        )
        commits = context.store.commits
        places = CounterMetricFamily(
            "cpn_store_commits",
            "Store COMMITs, by where they ran: on the event loop while the disk answers"
            " fast, on the writer's thread while it is slow",
            labels=["place"],
        )
        for place, count in commits.counts.items():
            places.add_metric([place], count)
        yield places
        yield GaugeMetricFamily(
            "cpn_store_commit_seconds",
            "How long the store's recent COMMITs took, on average (each new one weighs 1/8)",
            value=commits.average_ms / 1000,
        )
        lag = looplag.PROCESS
        if lag.watching:  # `cpn node run`: its loop runs this node alone
            bounds = [repr(bound) for bound in looplag.BOUNDS_S] + ["+Inf"]
            buckets = list(zip(bounds, itertools.accumulate(lag.counts), strict=True))
            yield HistogramMetricFamily(
                "cpn_loop_lag_seconds",
                f"How late the event loop ran a timer due every {looplag.EVERY_S:g} s: the"
                " wait of each step of a message, flash too, for the turn under way",
                buckets=buckets,
                sum_value=lag.total_s,
            )
        if self.verified is not None:  # absent until a verification ran: `absent()` alerts
            ok, when = self.verified
            yield GaugeMetricFamily(
                "cpn_audit_verify_ok",
                "1 if the last audit verification found nothing wrong",
                value=1 if ok else 0,
            )
            yield GaugeMetricFamily(
                "cpn_audit_verify_time_seconds",
                "When the last audit verification ran (Unix seconds)",
                value=when / 1000,
            )


def _disk(path: os.PathLike[str]) -> dict[str, int]:
    """Free space where the store lives, and the store's own size (file and WAL)."""
    try:
        stats = os.statvfs(os.path.dirname(os.fspath(path)) or ".")
        free = stats.f_bavail * stats.f_frsize
    except OSError:
        free = 0
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            size += os.stat(os.fspath(path) + suffix).st_size
    return {"store_free_bytes": free, "store_bytes": size}
