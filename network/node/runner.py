"""One node: config, keys, roster, store, and the task group that runs it all.

`run_node` runs until `stop` is set (SIGTERM or SIGINT in `cpn node run`),
then shuts down in order: the HTTP API stops taking requests, links close
with a close frame (messages without a receipt stay queued in the store and
go again on the next link), the store is closed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from network.core.crypto import sha256
from network.core.errors import CpnError, RosterError
from network.core.records import NodeId
from network.core.roster import MAX_ROSTER_BYTES, Roster, load_roster
from network.node import looplag
from network.node.alerts import WebhookSender
from network.node.backup import restore_marker
from network.node.clock import now_ms
from network.node.config import NodeConfig
from network.node.keys import load_configured_keys, load_keeper_public
from network.node.links import Links, LinkSettings
from network.node.notify import Notifier
from network.node.restoring import Restoring
from network.node.slices import Slices
from network.node.store import AuditEntry, Store, StoreError
from network.node.wiring import Node
from network.node.witnessing import CheckpointPolicy, Witnessing

__all__ = ["ApiSite", "NodeSettings", "run_node", "serve_until_signalled"]

log = logging.getLogger("cpn.node")


CHECKPOINT_LOOK_SECONDS = 0.25
RACY_NS = 2_000_000_000  # a roster file younger than this is compared by content


# The HTTP API, served while the node runs (network.api.site): the runner knows it only
# as something to enter and leave, so that the node layer never imports the web layer.
ApiSite = Callable[[Node], AbstractAsyncContextManager[object]]


@dataclass(frozen=True, slots=True)
class NodeSettings:
    links: LinkSettings = field(default_factory=LinkSettings)
    expiry_scan_interval: float = 5.0
    dial_after: asyncio.Event | None = None  # hold dialling until set (simulations)
    route_grace: float = 3.0  # after start, before a destination without a route is raised
    roster_poll_interval: float = 1.0
    checkpoints: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    deadline_scan_interval: float = 1.0
    # A batch's COMMIT on the loop's thread while the disk answers fast (store.CommitPlace):
    # for a process whose loop runs this node alone. With many nodes on one loop (the
    # network simulation), one node's COMMIT would hold up all the others.
    inline_commits: bool = False


def load_current_roster(config: NodeConfig, *, expired_ok: bool = False) -> Roster:
    """The roster in the node's roster file, verified (`expired_ok`: even past its end)."""
    keeper = load_keeper_public(config.keeper_path)
    try:
        data = config.roster_path.read_bytes()
    except OSError as exc:
        raise RosterError(f"{config.roster_path}: cannot read roster: {exc.strerror}") from exc
    if len(data) > MAX_ROSTER_BYTES:
        raise RosterError(f"{config.roster_path}: over {MAX_ROSTER_BYTES} bytes")
    return load_roster(data, keeper=keeper, now=now_ms(), expired_ok=expired_ok)


# The event loop a node serves on: libuv's (uvloop), not asyncio's own. A node's loop
# runs hundreds of callbacks, socket reads and writes for every message; in alternating
# runs libuv's took 9% off the sender's CPU a message and 11% off the receiver's, and
# flash p99 at 90% load was the same (docs/PERFORMANCE.md, sixteenth session).
new_event_loop = uvloop.new_event_loop

SWITCH_INTERVAL = 0.0005  # seconds (sys.setswitchinterval)
# Python's cycle collector scans the young objects every 700 allocations, several times
# for each message. In a process that runs one node: every 20,000, the older generations
# far more rarely, and what the node built at start (roster, keys, routes, modules) out
# of every scan once it serves (gc.freeze). Two alternating pairs at 90% load: 4 and 7%
# less CPU a message at the two ends.
GC_THRESHOLDS = (20_000, 50, 100)


async def run_node(
    config: NodeConfig,
    stop: asyncio.Event,
    settings: NodeSettings = NodeSettings(),
    ready: Callable[[Node], Awaitable[None]] | None = None,
    api: ApiSite | None = None,
) -> None:
    """Run one node until `stop` is set. Raises CpnError if it cannot start.

    `ready` is called with the node's use cases once it serves (for the
    simulation, which sends through the node's own use cases); `api` serves
    the HTTP API over them while the node runs.
    """
    keys = load_configured_keys(config)
    keeper = load_keeper_public(config.keeper_path)
    # An expired roster still starts the node, degraded and alerting (`review_roster`): it
    # can link to its peers, who bring the next version, and it loses nothing meanwhile.
    roster = load_current_roster(config, expired_ok=True)
    store = await Store.open(config.store_path, inline_commits=settings.inline_commits)
    try:
        kept = await store.latest_roster()
        if kept is not None:  # a newer roster than the file may have reached us by a peer
            with contextlib.suppress(RosterError):
                roster = load_roster(
                    kept, keeper=keeper, now=now_ms(), held=roster, expired_ok=True
                )
        roster.active_card(config.id)  # refuses to run a node the roster does not list as active
        if kept is None:  # the store keeps every roster it used, for auditors to check old keys
            async with store.transaction(now_ms()) as tx:
                tx.keep_roster(roster.version, roster.raw)
        node = Node.build(
            keys=keys,
            roster=roster,
            store=store,
            clock=now_ms,
            keeper=keeper,
            retry_ms=int(config.retry_seconds * 1000),
            deadlines=config.deadlines,
            retention=config.retention,
            attachments=config.attachments,
            approval=config.approval,
            origin=config.api_origin,
        )
        await node.delivery.start()
        roster_file = RosterFile(config.roster_path)
        witnessing = Witnessing(node.context, settings.checkpoints)
        await witnessing.load()
        restoring = Restoring(
            node.context,
            node.inbound,
            witnessing,
            wait=config.restore_wait_ms / 1000,
            give_up_ms=config.restore_give_up_ms,
        )
        await restoring.load(restore_marker(config.store_path))

        async def save_roster(adopted: Roster) -> None:
            roster_file.write(adopted.raw)

        links = Links(
            node,
            keys,
            host=config.peer_host,
            port=config.peer_port,
            peers=config.peers,
            settings=settings.links,
            on_roster=save_roster,
            witnessing=witnessing,
            restoring=restoring,
        )
        await links.listen()
        webhook = (
            WebhookSender(
                config.webhook_url,
                timeout=config.webhook_timeout,
                retries=config.webhook_retries,
            )
            if config.webhook_url
            else None
        )
        site = contextlib.AsyncExitStack()
        if api is not None:
            await site.enter_async_context(api(node))
        notifier = Notifier.from_environ()
        log.info(
            "%s: peer %s, api http://%s:%d",
            config.id,
            config.peer_url,
            config.api_host,
            config.api_port,
        )
        try:
            async with asyncio.TaskGroup() as group:
                link_task = group.create_task(links.run(settings.dial_after), name="links")
                scan_task = group.create_task(
                    _expiry_scan(node, settings.expiry_scan_interval, settings.route_grace),
                    name="expiry",
                )
                watch_task = group.create_task(
                    _watch_roster(roster_file, links, settings.roster_poll_interval), name="roster"
                )
                checkpoint_task = group.create_task(
                    _checkpoints(node, witnessing, links), name="checkpoints"
                )
                deadline_task = group.create_task(
                    _watch_deadlines(node, webhook, settings.deadline_scan_interval),
                    name="deadlines",
                )
                tasks = [link_task, scan_task, watch_task, checkpoint_task, deadline_task]
                if config.retention:
                    tasks.append(group.create_task(_retention(node), name="retention"))
                if restoring.open is not None:
                    tasks.append(
                        group.create_task(_restore(restoring, links, config.peers), name="restore")
                    )
                if notifier is not None:
                    notifier.send("READY=1", f"STATUS={config.id} serving")
                    if notifier.watchdog_seconds is not None:
                        tasks.append(group.create_task(_watchdog(node, notifier), name="watchdog"))
                if ready is not None:
                    await ready(node)
                await stop.wait()
                if notifier is not None:
                    notifier.send("STOPPING=1")
                for task in tasks:
                    task.cancel()
        finally:
            if notifier is not None:
                notifier.close()
            await site.aclose()
            if webhook is not None:
                await webhook.aclose()
            try:
                stopped = AuditEntry(node.context.actor, "node_stopped", None, {})
                await node.context.audit(
                    [*node.context.refusals_unreported(stopping=True), stopped]
                )
            except CpnError as exc:
                log.error("%s: could not audit the stop: %s", config.id, exc)
            try:
                if not witnessing.unexplained_restore:
                    await witnessing.sign(now_ms())  # the log's end, signed
            except CpnError as exc:
                log.error("%s: could not sign the final checkpoint: %s", config.id, exc)
    finally:
        await store.close()


class RosterFile:
    """The node's roster file: the operator drops a new version here; adopted ones land here."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._stamp()
        self._digest = self._read_digest()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _read_digest(self) -> bytes | None:
        try:
            return sha256(self.path.read_bytes())
        except OSError:
            return None

    def changed(self) -> bytes | None:
        stamp = self._stamp()
        if stamp is None:
            return None
        # Two writes within one clock tick leave the same stamp (git's "racy" files):
        # while the file is that fresh, its content decides.
        fresh = time.time_ns() - stamp[0] < RACY_NS
        if stamp == self._seen and not fresh:
            return None
        self._seen = stamp
        data = self.path.read_bytes()
        digest = sha256(data)
        if digest == self._digest:
            return None
        self._digest = digest
        return data if len(data) <= MAX_ROSTER_BYTES else None

    def write(self, data: bytes) -> None:
        """Keep an adopted roster in the file, unless it holds it already or the operator
        wrote another since we last read it (theirs is read on the next look)."""
        current = self._read_digest()
        if current != self._digest or current == sha256(data):
            return
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        self._seen = self._stamp()
        self._digest = sha256(data)


@contextlib.contextmanager
def _store_may_fail(task: str) -> Iterator[None]:
    """A full or read-only disk fails this round of a background task, not the node:
    the API answers 503 meanwhile, and the task tries again on its next round."""
    try:
        yield
    except StoreError as exc:
        log.error("%s: %s", task, exc)


async def _watch_roster(roster_file: RosterFile, links: Links, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        data = roster_file.changed()
        if data is not None:
            with _store_may_fail("roster"):
                await links.adopt_roster(data, "file")


async def _watchdog(node: Node, notifier: Notifier) -> None:
    """Feed the service manager's watchdog at half its period while the store answers a
    read within that half: a node whose disk hangs is restarted, not left silent."""
    assert notifier.watchdog_seconds is not None
    half = notifier.watchdog_seconds / 2
    while True:
        try:
            async with asyncio.timeout(half):
                await node.context.store.latest_checkpoint()
        except (TimeoutError, CpnError) as exc:
            log.error("%s: store not answering (%s): the watchdog is not fed", node.context.me, exc)
        else:
            notifier.send("WATCHDOG=1")
        await asyncio.sleep(half)


RESTORE_REVIEW_SECONDS = 1.0


async def _restore(restoring: Restoring, links: Links, dialled: Sequence[NodeId]) -> None:
    """Explain the restore, ask every linked peer back, and review until it is finished."""
    await restoring.explain(lambda: list(links.active), dialled)
    links.offer_checkpoint()
    links.ask_back()
    while restoring.open is not None:
        await asyncio.sleep(RESTORE_REVIEW_SECONDS)
        await restoring.review(dialled, links.version_one())
        links.ask_back()  # peers that linked meanwhile


async def _checkpoints(node: Node, witnessing: Witnessing, links: Links) -> None:
    """Sign a checkpoint when one is due and offer it to the witnesses (our peers)."""
    while True:
        await asyncio.sleep(CHECKPOINT_LOOK_SECONDS)
        now = now_ms()
        if witnessing.due(now, urgent=node.context.checkpoints.urgent_pending):
            with _store_may_fail("checkpoint"):
                await witnessing.sign(now)  # covers what was urgent
                links.offer_checkpoint()


async def _watch_deadlines(node: Node, webhook: WebhookSender | None, interval: float) -> None:
    """Raise what is overdue: the console (oversight keeps it), the log and the webhook.

    The webhook posts run beside the scan (a slow receiver is retried, never waited on),
    as children of this watcher: when the node stops, the posts still trying stop with it.
    """
    async with asyncio.TaskGroup() as posting:
        while True:
            with _store_may_fail("deadlines"):
                await node.oversight.review_roster()
                await node.oversight.review_deadlines()
                # Refusals held back by the budget, once their minute is over.
                await node.context.audit(node.context.refusals_unreported())
            # What any use case raised meanwhile: deadlines, id conflicts, the roster.
            for alert in node.context.alerts.take_unposted():
                log.warning("ALERT %s: %s", alert["alert"], json.dumps(alert, sort_keys=True))
                if webhook is not None:
                    posting.create_task(webhook.post(alert), name="webhook")
            await asyncio.sleep(interval)


async def _retention(node: Node) -> None:
    """Delete what the retention rules say must go: at start (a restored backup may bring
    back what was deleted since), then every `sweep_interval` seconds."""
    while True:
        with _store_may_fail("retention"):
            deleted = await node.retention.sweep()
            if deleted:
                log.info("retention: contents deleted %s", deleted)
        await asyncio.sleep(node.retention.sweep_interval)


async def _expiry_scan(node: Node, interval: float, grace: float) -> None:
    """Deadlines are checked by a periodic scan, not only when a message is taken."""
    started = time.monotonic()
    while True:
        with _store_may_fail("expiry"):
            await node.oversight.expire_due()
            if time.monotonic() - started > grace:  # routes take a moment to be learned
                await node.oversight.raise_unroutable()
        await asyncio.sleep(interval)


def serve_until_signalled(config: NodeConfig, api: ApiSite | None) -> None:
    """`cpn node run`: run the node (and its API) until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        links = LinkSettings(handshake_timeout=config.handshake_timeout)

        async def serving(node: Node) -> None:
            gc.freeze()

        settings = NodeSettings(links=links, inline_commits=True)
        lag = asyncio.create_task(looplag.PROCESS.watch(), name="loop lag")  # its loop alone
        try:
            await run_node(config, stop, settings, ready=serving, api=api)
        finally:
            lag.cancel()

    # The store's statements run on threads of their own (aiosqlite), and each hop back
    # to the loop needs the GIL. Python hands the GIL to a waiting thread only every
    # switch interval (5 ms by default): with the loop busy, every store hop waited up to
    # that long, three or four times on a message's way. 0.5 ms: the hop waits at most so.
    # (Here, for a process that runs one node: with dozens of nodes and their threads in
    # one process, as the network simulation runs them, the switching costs more.)
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLDS)
    Slices.on = True  # its loop runs this node alone
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
