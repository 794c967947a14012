"""`cpn up`: prepare the demo network (keys, keeper key, signed roster, demo users) from
the node configs in a folder, and run one node process per config until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import signal
import subprocess
import sys
import time
from pathlib import Path

from network.cli._common import Subcommands, key_passphrase, run_async
from network.cli.admin import build_roster_file, cards_in, held_roster
from network.core.errors import CpnError, KeyFileError, RosterError
from network.core.roster import Roster
from network.node.clock import now_ms
from network.node.config import NodeConfig, load_config
from network.node.keys import init_node_keys

__all__ = ["add_commands", "prepare_network"]


def prepare_network(nodes_dir: Path) -> tuple[list[NodeConfig], Roster]:
    """Create whatever is missing for every node config: keys, keeper key, signed roster.

    The roster is re-signed (as a new version) when a card is missing from it
    or differs from it, so `cpn up` after `cpn keys rotate` puts the new keys in it.
    """
    configs = [load_config(p) for p in sorted(nodes_dir.glob("*.toml"))]
    if not configs:
        raise CpnError(f"no node configs in {nodes_dir}/*.toml")
    roster_paths = {c.roster_path.resolve() for c in configs}
    if len(roster_paths) != 1:
        raise CpnError(f"node configs in {nodes_dir} name different rosters")
    roster_path = roster_paths.pop()
    keys_dirs = {c.keys_dir.resolve().parent for c in configs}
    if len(keys_dirs) != 1:
        raise CpnError(f"node configs in {nodes_dir} keep keys in different folders")
    keys_root = keys_dirs.pop()
    passphrase = key_passphrase(False)
    now = datetime.datetime.now(datetime.UTC)
    for config in configs:
        if not (config.keys_dir / "signing.key").exists():
            init_node_keys(
                config.keys_dir, config.id, url=config.peer_url, passphrase=passphrase, now=now
            )
            print(f"{config.id}: created keys in {config.keys_dir}")
    held = None
    if roster_path.exists():
        try:
            held = held_roster(roster_path, keys_root / "authority" / "keeper.json")
        except (RosterError, KeyFileError) as exc:
            print(f"roster {roster_path} not usable ({exc}); signing a new one", file=sys.stderr)
    cards = {c.id: c.to_json() for c in cards_in(keys_root)}
    current = {} if held is None else {i: e.card.to_json() for i, e in held.entries.items()}
    if held is None or any(current.get(i) != card for i, card in cards.items()):
        roster = build_roster_file(keys_root, roster_path, valid_days=365, passphrase=passphrase)
        print(f"signed roster version {roster.version} with {len(roster.entries)} contact points")
    else:
        roster = held
    return configs, roster


async def _demo_users(config: NodeConfig) -> list[tuple[str, str, str]]:
    """One officer and one auditor for a node whose store has no users yet: (name, role, token)."""
    from network.node.officer import issue_token
    from network.node.store import Store

    store = await Store.open(config.store_path)
    try:
        if await store.user_count():
            return []
        actor = f"node:{config.id}"
        now = now_ms()
        made = []
        for name, role in (
            (f"officer-{config.id.lower()}", "officer"),
            (f"auditor-{config.id.lower()}", "auditor"),
        ):
            made.append((name, role, await issue_token(store, name, role, actor=actor, now=now)))
        return made
    finally:
        await store.close()


def cmd_up(args: argparse.Namespace) -> int:
    configs, roster = prepare_network(Path(args.nodes_dir))
    print(f"roster version {roster.version} holds {', '.join(sorted(roster.entries))}")
    for config in configs:
        users = run_async(_demo_users(config))
        for name, role, token in users:
            print(f"{config.id}: {role} {name} token (shown once): {token}")
    if args.prepare_only:
        return 0
    children = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "network", "node", "run", str(c.path)],
            preexec_fn=_die_with_parent,
        )
        for c in configs
    ]
    for config in configs:
        print(
            f"{config.id}: console {config.api_origin}/"
            f"  API http://{config.api_host}:{config.api_port}/api/  peer {config.peer_url}"
        )
    print("the demo network is running; Ctrl-C stops it", flush=True)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while not stopping:
        if any(child.poll() is not None for child in children):
            print("cpn: a node stopped; stopping the others", file=sys.stderr)
            status = 1
            break
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    return status


def _die_with_parent() -> None:
    """Linux: a node started by `cpn up` gets SIGTERM if `cpn up` itself dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def add_commands(commands: Subcommands) -> None:
    """`cpn up`."""
    up = commands.add_parser("up", help="prepare and run the demo network")
    up.add_argument("nodes_dir", nargs="?", default="nodes", metavar="NODES_DIR")
    up.add_argument(
        "--prepare-only", action="store_true", help="create what is missing, run nothing"
    )
    up.set_defaults(func=cmd_up)
