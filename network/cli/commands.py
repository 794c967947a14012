"""The `cpn` command (also `python -m network`).

Each subcommand parses its arguments, calls one function, and prints. Errors
end the command with a one-line message naming what is wrong, and nothing is
half-written. Exit status: 0 done; 1 refused by the node (`send`, `inbox`,
`show`, `ack`, `reply`: the node answered with an error) or, for `audit
verify`, a problem found; 2 a usage error or a local one (a draft missing a
field, a bad file or config); 3 the node's API cannot be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import getpass
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from network.cli.client import Client
from network.cli.drafts import (
    Assignment,
    apply,
    check_note,
    check_reply,
    check_request,
    parse_assignment,
    read_document,
)
from network.core.bodies import RefusalGround, ResponseStatus, body_to_json, parse_body
from network.core.crypto import HpkeSuite
from network.core.errors import (
    ApiError,
    BodyError,
    CpnError,
    KeyFileError,
    RosterError,
    UnreachableError,
)
from network.core.lifecycle import PRIORITY_RANK, State
from network.core.records import ROLES, MessageType, NodeId, Priority, is_node_id
from network.core.roster import MAX_ROSTER_BYTES, Card, Roster, build_roster, load_roster
from network.node.clock import now_ms
from network.node.config import NodeConfig, load_config
from network.node.keys import (
    count_needing,
    init_keeper,
    init_node_keys,
    load_keeper,
    load_keeper_public,
    load_node_keys,
    purge_retired,
    read_card,
    rotate_node_keys,
)

if TYPE_CHECKING:
    from network.node.auditfile import EntryFilter
    from network.node.store import UserRow
    from network.node.verify import VerifyReport

# The audit log, the store and the use cases load in the commands that use them, so
# that `cpn send` and the other officer commands start in a fraction of a second.

__all__ = ["main"]

T = TypeVar("T")

DAY_MS = 24 * 3600 * 1000
SUITES = {"hybrid": HpkeSuite.MLKEM768_X25519, "x25519": HpkeSuite.X25519}


def _run(job: Coroutine[Any, Any, T]) -> T:
    import asyncio  # loaded only by the commands that open a store

    return asyncio.run(job)


def _passphrase(ask: bool) -> bytes | None:
    """The key passphrase: prompted for with --passphrase, else CPN_KEY_PASSPHRASE, else none."""
    if ask:
        first = getpass.getpass("key passphrase: ")
        if first != getpass.getpass("again: "):
            raise KeyFileError("the two passphrases differ")
        return first.encode() or None
    value = os.environ.get("CPN_KEY_PASSPHRASE")
    return value.encode() if value else None


# -- keys --------------------------------------------------------------------


def _node_id_arg(text: str) -> NodeId:
    node_id = text.upper()
    if not is_node_id(node_id):
        raise KeyFileError(f"ID: {text!r} is not an ISO 3166-1 alpha-3 code")
    return NodeId(node_id)


def cmd_keys_init(args: argparse.Namespace) -> int:
    """Create a node's keys; refused when it has some (`cpn keys rotate` replaces them)."""
    node_id = _node_id_arg(args.id)
    url = args.url or f"wss://127.0.0.1:7000/{node_id}"
    card = init_node_keys(
        Path(args.dir) / node_id,
        node_id,
        url=url,
        name=args.name,
        suite=SUITES[args.suite],
        passphrase=_passphrase(args.passphrase),
        now=datetime.datetime.now(datetime.UTC),
    )
    print(json.dumps(card.to_json(), indent=2))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Rotate a node's keys (the old ones retired), or with --purge delete one retired key
    that no stored message needs. Audited in the node's store when --config names it."""
    node_id = _node_id_arg(args.id)
    config = load_config(Path(args.config)) if args.config else None
    if config is not None and config.id != node_id:
        raise KeyFileError(f"--config {args.config} is {config.id}'s, not {node_id}'s")
    if args.keys_dir is not None:
        key_dir = Path(args.keys_dir) / node_id
    else:
        key_dir = config.keys_dir if config is not None else Path("keys") / node_id
    passphrase = _passphrase(False)
    actor = f"admin:{getpass.getuser()}"
    if args.purge is not None:
        if config is None:
            raise KeyFileError("--purge needs --config: the store says which messages need a key")
        return _run(_purge(config, key_dir, args.purge, passphrase, actor))
    rotation = rotate_node_keys(
        key_dir, node_id, passphrase=passphrase, now=datetime.datetime.now(datetime.UTC)
    )
    card = rotation.card
    if config is not None:
        detail: dict[str, Any] = {
            "retired": rotation.retired,
            "hpke": card.hpke_key.kid,
            "signing": card.signing_key.kid,
            "tls_sha256": card.tls_sha256.hex(),
        }
        _run(_audit(config, actor, "keys_rotated", detail))
    print(json.dumps(card.to_json(), indent=2))
    print(
        f"{node_id}: new keys in {key_dir}; the old ones kept in {rotation.retired_dir}.\n"
        f"Send {key_dir / 'card.json'} (printed above) to the register keeper for a new roster"
        " version; restart the node once that roster is in place.",
        file=sys.stderr,
    )
    return 0


async def _audit(config: NodeConfig, actor: str, action: str, detail: dict[str, Any]) -> None:
    from network.node.store import AuditEntry, Store

    store = await Store.open(config.store_path)
    try:
        async with store.transaction(now_ms()) as tx:
            tx.audit([AuditEntry(actor, action, detail=detail)])
    finally:
        await store.close()


async def _purge(
    config: NodeConfig, key_dir: Path, kid: str, passphrase: bytes | None, actor: str
) -> int:
    from network.node.store import AuditEntry, Store

    keys = load_node_keys(key_dir, config.id, passphrase)
    store = await Store.open(config.store_path)
    try:
        needing = await count_needing(store, keys.keyring, kid)
        if needing:
            async with store.transaction(now_ms()) as tx:
                detail: dict[str, Any] = {"kid": kid, "needed_by": needing}
                tx.audit([AuditEntry(actor, "key_purge_refused", detail=detail)])
            raise KeyFileError(
                f"retired key {kid} still opens {needing} stored message(s); not deleted"
            )
        # The entry commits before the files go: a purge is never unrecorded.
        async with store.transaction(now_ms()) as tx:
            tx.audit([AuditEntry(actor, "key_purged", detail={"kid": kid})])
        folder = purge_retired(key_dir, kid)
    finally:
        await store.close()
    print(f"{config.id}: retired key {kid} deleted ({folder}); no stored message needed it")
    return 0


# -- roster ------------------------------------------------------------------


def _cards_in(keys_dir: Path) -> list[Card]:
    cards = []
    for card_path in sorted(keys_dir.glob("*/card.json")):
        if is_node_id(card_path.parent.name):
            cards.append(read_card(card_path))
    return cards


def _held_roster(path: Path, keeper_public: Path) -> Roster | None:
    if not path.exists():
        return None
    keeper = load_keeper_public(keeper_public)
    return load_roster(path.read_bytes(), keeper=keeper, now=now_ms())


def build_roster_file(
    keys_dir: Path,
    out: Path,
    *,
    valid_days: int,
    revoke: Sequence[str] = (),
    passphrase: bytes | None = None,
) -> Roster:
    """Sign a new roster version from the cards under `keys_dir` and write it to `out`."""
    authority = keys_dir / "authority"
    if not (authority / "keeper.key").exists():
        init_keeper(authority, passphrase=passphrase)
        print(f"created the register keeper key in {authority}", file=sys.stderr)
    keeper = load_keeper(authority, passphrase)
    cards = _cards_in(keys_dir)
    if not cards:
        raise RosterError(f"no cards found under {keys_dir}/*/card.json (run cpn keys init ID)")
    held = _held_roster(out, authority / "keeper.json") if out.exists() else None
    revoked = set(revoke)
    if held is not None:
        revoked |= {i for i, e in held.entries.items() if not e.active}
    now = now_ms()
    data = build_roster(
        cards,
        keeper=keeper,
        version=(held.version + 1) if held else 1,
        issued=now,
        valid_until=now + valid_days * DAY_MS,
        revoked=sorted(revoked),
    )
    roster = load_roster(data, keeper=keeper.verify_key(), now=now, held=held)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return roster


def cmd_roster_build(args: argparse.Namespace) -> int:
    roster = build_roster_file(
        Path(args.keys),
        Path(args.out) if args.out else Path(args.keys) / "roster.json",
        valid_days=args.valid_days,
        revoke=[r.upper() for r in args.revoke],
        passphrase=_passphrase(False),
    )
    print(f"roster version {roster.version}: {len(roster.entries)} contact points, signed")
    return 0


def _format_time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def cmd_roster_show(args: argparse.Namespace) -> int:
    path = Path(args.roster)
    keeper = load_keeper_public(Path(args.keeper))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RosterError(f"{path}: cannot read roster: {exc.strerror}") from exc
    if len(data) > MAX_ROSTER_BYTES:
        raise RosterError(f"{path}: over {MAX_ROSTER_BYTES} bytes")
    roster = load_roster(data, keeper=keeper, now=now_ms())
    if args.json:
        print(json.dumps(roster.to_json(), indent=2))
        return 0
    print(f"roster version {roster.version}, signed by register keeper {roster.keeper_kid}: valid")
    print(f"issued {_format_time(roster.issued)}, valid until {_format_time(roster.valid_until)}")
    print(f"{'id':<4} {'status':<8} {'name':<28} {'peer url':<28} {'signing kid':<17} hpke suite")
    for node_id, entry in sorted(roster.entries.items()):
        card = entry.card
        suite = card.hpke_key.suite.value.split("/")[0]
        print(
            f"{node_id:<4} {entry.status.value:<8} {card.name[:28]:<28} {card.url[:28]:<28} "
            f"{card.signing_key.kid:<17} {suite}"
        )
    return 0


# -- up ----------------------------------------------------------------------


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
    passphrase = _passphrase(False)
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
            held = _held_roster(roster_path, keys_root / "authority" / "keeper.json")
        except (RosterError, KeyFileError) as exc:
            print(f"roster {roster_path} not usable ({exc}); signing a new one", file=sys.stderr)
    cards = {c.id: c.to_json() for c in _cards_in(keys_root)}
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
        users = _run(_demo_users(config))
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
            f"{config.id}: console http://{config.api_host}:{config.api_port}/"
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


def cmd_node_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from network.api.site import api_site  # aiohttp and websockets load only here
    from network.node.runner import serve_until_signalled

    config = load_config(Path(args.config))
    serve_until_signalled(config, api_site(config))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from network.node.officer import issue_token
    from network.node.store import Store

    config = load_config(Path(args.config))

    async def add() -> str:
        store = await Store.open(config.store_path)
        try:
            return await issue_token(
                store, args.name, args.role, actor=f"admin:{getpass.getuser()}", now=now_ms()
            )
        finally:
            await store.close()

    token = _run(add())
    print(f"{args.role} {args.name} on {config.id}; token (shown once, stored hashed):")
    print(token)
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    """Who may use the API: name, role, since when (tokens are stored hashed, never shown)."""
    from network.node.store import Store

    config = load_config(Path(args.config))

    async def read() -> list[UserRow]:
        store = await Store.open(config.store_path)
        try:
            return await store.users()
        finally:
            await store.close()

    users = _run(read())
    if args.json:
        _print_json([{"name": u.name, "role": u.role, "created": u.created} for u in users])
        return 0
    for user in users:
        print(f"{user.name}\t{user.role}\tsince {_format_time(user.created)}")
    if not users:
        print(f"no users on {config.id} (cpn user add NAME --role ROLE)")
    return 0


def cmd_user_revoke(args: argparse.Namespace) -> int:
    """Remove a user and its token: a running node answers the next request with it 401."""
    from network.node.officer import revoke_token
    from network.node.store import Store

    config = load_config(Path(args.config))

    async def revoke() -> UserRow:
        store = await Store.open(config.store_path)
        try:
            actor = f"admin:{getpass.getuser()}"
            return await revoke_token(store, args.name, actor=actor, now=now_ms())
        finally:
            await store.close()

    user = _run(revoke())
    print(f"revoked {user.role} {user.name} on {config.id}: its token no longer works")
    return 0


# -- audit -------------------------------------------------------------------


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the whole store verifies, 1 naming the first problem."""
    from network.node.auditfile import read_witnessed
    from network.node.verify import load_roster_file, verify_store

    config = load_config(Path(args.config))
    keeper = load_keeper_public(config.keeper_path)
    roster = load_roster_file(config.roster_path, keeper)
    witnessed = []
    for source in args.witnessed:
        held = read_witnessed(Path(source), config.id)
        if not held:
            print(f"cpn: {source} holds no checkpoint of {config.id}'s log", file=sys.stderr)
        witnessed.extend(held)
    older = [load_roster_file(Path(p), keeper) for p in args.roster]
    report = verify_store(
        config.store_path,
        roster=roster,
        node_id=config.id,
        witnessed=witnessed,
        keeper=keeper,
        older_rosters=older,
        workers=max(1, args.workers),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _print_report(report: VerifyReport) -> None:
    print(
        f"{report.node} audit log: {report.entries} entries, {report.checkpoints} checkpoints"
        f" (latest at size {report.latest_checkpoint}), {report.cosignatures} cosignatures,"
        f" {report.envelopes} envelopes, {report.receipts} receipts,"
        f" {report.witnessed} witnessed checkpoints"
    )
    first = report.first
    if first is None:
        noted = f" ({len(report.warnings)} warnings below)" if report.warnings else ""
        print(f"verified: no entry, checkpoint, signature or receipt is wrong{noted}")
    else:
        print(f"FAILED: {first.message}")
        for problem in report.problems[1:]:
            print(f"  also: {problem.message}")
        hidden = report.problem_count - len(report.problems)
        if hidden > 0:
            print(f"  ... and {hidden} more")
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"assurance: {report.assurance}")
    if report.unproven:
        print(f"unproven: {report.unproven}")


def _time_arg(text: str) -> int:
    from network.node.clock import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_audit_export(args: argparse.Namespace) -> int:
    from network.node.auditfile import EntryFilter

    config = load_config(Path(args.config))
    if args.checkpoints and args.format != "csv":
        print(
            "cpn: error: --checkpoints goes with --format csv (JSONL carries them)", file=sys.stderr
        )
        return 2
    filters = EntryFilter(
        since=args.since,
        until=args.until,
        message=args.message,
        actor=args.actor,
        action=args.action,
    )
    # Files are written under a temporary name and renamed when complete: nothing is
    # left half-written under the real name.
    written = [Path(p) for p in (args.output, args.checkpoints) if p]
    try:
        count = _export(args, config, filters, written)
    except BaseException:
        for path in written:
            _tmp(path).unlink(missing_ok=True)
        raise
    for path in written:
        os.replace(_tmp(path), path)
    if args.output:
        print(f"exported {count} entries to {args.output}", file=sys.stderr)
    return 0


def _export(
    args: argparse.Namespace, config: NodeConfig, filters: EntryFilter, written: list[Path]
) -> int:
    from network.node.auditfile import export_entries

    with contextlib.ExitStack() as stack:
        files = {
            path: stack.enter_context(_tmp(path).open("w", encoding="utf-8", newline=""))
            for path in written
        }
        progress = None
        if args.output:
            progress = stack.enter_context(_progress_bar(f"exporting {config.id}'s audit log"))
        count = export_entries(
            config.store_path,
            files[Path(args.output)] if args.output else sys.stdout,
            args.format,
            filters=filters,
            checkpoints_out=files[Path(args.checkpoints)] if args.checkpoints else None,
            progress=progress,
        )
    return count


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def _progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (rich); yields the callback `export_entries` takes."""
    from rich.console import Console  # loaded only for an export to a file
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (what, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def cmd_audit_proof(args: argparse.Namespace) -> int:
    from network.node.auditfile import consistency_proof, inclusion_proof

    config = load_config(Path(args.config))
    try:
        if args.index is not None:
            proof = inclusion_proof(config.store_path, args.index, args.size)
        else:
            proof = consistency_proof(config.store_path, args.old_size, args.size)
    except ValueError as exc:
        print(f"cpn: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(proof, indent=2, ensure_ascii=False))
    return 0


# -- officer work, through a node's HTTP API -------------------------------------


def _client(args: argparse.Namespace) -> Client:
    """The node's API from --api/--token, else CPN_API/CPN_TOKEN (the flags win)."""
    api = args.api if args.api is not None else os.environ.get("CPN_API")
    token = args.token if args.token is not None else os.environ.get("CPN_TOKEN")
    if not api:
        raise CpnError("no node API: give --api URL or set CPN_API (e.g. http://127.0.0.1:8101)")
    if not token:
        raise CpnError("no token: set CPN_TOKEN or give --token")
    return Client(api, token)


def _print_json(answer: object) -> None:
    print(json.dumps(answer, indent=2, ensure_ascii=False))


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
    for key, value in (
        ("to", args.to),
        ("type", args.type),
        ("priority", args.priority),
        ("ttl_seconds", args.ttl),
    ):
        if value is not None:
            request[key] = value
    check_request(request)
    answer = _client(args).send(request)
    if args.json:
        _print_json(answer)
    else:
        print(
            f"{answer['state']} {answer['id']}: {answer['type']} ({answer['priority']})"
            f" to {answer['to']}"
        )
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    box = "out" if args.out else args.box
    answer = _client(args).messages(
        box=box, state=args.state, priority=args.priority, limit=args.limit, case=args.case
    )
    if args.json:
        _print_json(answer)
        return 0
    from network.cli.views import print_messages  # rich loads only for a table

    messages = sorted(
        answer["messages"],
        key=lambda m: (PRIORITY_RANK.get(m["priority"], len(PRIORITY_RANK)), not m["overdue"]),
    )
    print_messages(messages, box)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    answer = _client(args).message(args.id.lower())
    if args.json:
        _print_json(answer)
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
        _print_json(answer)
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
)


def cmd_reply(args: argparse.Namespace) -> int:
    message_id = args.id.lower()
    flags = [
        Assignment(name, (name,), getattr(args, name))
        for name in _REPLY_FIELDS
        if getattr(args, name) is not None
    ]
    fields = _draft(args.file, [*args.set, *flags], into=None)
    check_reply(message_id, fields)
    answer = _client(args).reply(message_id, fields)
    if args.json:
        _print_json(answer)
    else:
        print(
            f"answered {message_id} ({fields['status']}): response {answer['id']} {answer['state']}"
        )
    return 0


def _add_officer_commands(commands: Any) -> None:
    """`cpn send`, `inbox`, `show`, `ack`, `reply`: officer work through a node's API."""
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
    assign = {
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
    send.add_argument("--to", type=str.upper, metavar="ID", help="the contact point, e.g. DEU")
    send.add_argument("--type", choices=tuple(MessageType), help="the message type")
    send.add_argument("--priority", choices=tuple(Priority))
    send.add_argument("--ttl", type=int, metavar="SECONDS", help="expiry (default: by priority)")
    send.add_argument("--case-ref", metavar="TEXT", help="your case reference (body.case_ref)")
    send.add_argument("--summary", metavar="TEXT", help="body.summary")
    send.add_argument("--set", **assign, help="set a body field (repeatable)")
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
        " partially_preserved need --preserved-until; refused needs --refusal-ground;"
        " needs_info needs --missing. " + exits,
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
    reply.add_argument("--set", **assign, help="set any field of the response (repeatable)")
    reply.set_defaults(func=cmd_reply)


# -- parser ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpn",
        description="cpn: the 24/7 contact-point network (UN Convention against Cybercrime)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="node keys").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    init = keys.add_parser("init", help="create a node's keys and print its contact-point card")
    init.add_argument("id", metavar="ID", help="ISO 3166-1 alpha-3 code, e.g. FRA")
    init.add_argument("--dir", default="keys", help="keys folder (default: keys)")
    init.add_argument("--url", help="peer URL other nodes reach this node at (wss://host:port)")
    init.add_argument("--name", help="contact point name (default: the UN member state's name)")
    init.add_argument("--suite", choices=sorted(SUITES), default="hybrid", help="HPKE suite")
    init.add_argument("--passphrase", action="store_true", help="encrypt the private keys")
    init.set_defaults(func=cmd_keys_init)
    rotate = keys.add_parser(
        "rotate",
        help="new keys and card for a node; the old ones retired (kept) so every message opens",
    )
    rotate.add_argument("id", metavar="ID", help="ISO 3166-1 alpha-3 code, e.g. FRA")
    rotate.add_argument(
        "--keys-dir", help="keys folder (default: the --config's, else keys)", default=None
    )
    rotate.add_argument("--config", help="the node's config: its store records the rotation")
    rotate.add_argument(
        "--purge",
        metavar="KID",
        help="instead, delete retired key KID, refused while a stored message needs it",
    )
    rotate.set_defaults(func=cmd_keys_rotate)

    roster = commands.add_parser("roster", help="the signed roster").add_subparsers(
        dest="roster_command", required=True, metavar="COMMAND"
    )
    build = roster.add_parser("build", help="sign a new roster version from keys/*/card.json")
    build.add_argument("--keys", default="keys", help="keys folder (default: keys)")
    build.add_argument("--out", help="roster file (default: KEYS/roster.json)")
    build.add_argument("--valid-days", type=int, default=365)
    build.add_argument("--revoke", action="append", default=[], metavar="ID")
    build.set_defaults(func=cmd_roster_build)
    show = roster.add_parser("show", help="verify a roster and print it")
    show.add_argument("roster", nargs="?", default="keys/roster.json")
    show.add_argument("--keeper", default="keys/authority/keeper.json", help="pinned keeper key")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_roster_show)

    up = commands.add_parser("up", help="prepare and run the demo network")
    up.add_argument("nodes_dir", nargs="?", default="nodes", metavar="NODES_DIR")
    up.add_argument(
        "--prepare-only", action="store_true", help="create what is missing, run nothing"
    )
    up.set_defaults(func=cmd_up)

    node = commands.add_parser("node", help="run a node").add_subparsers(
        dest="node_command", required=True, metavar="COMMAND"
    )
    run = node.add_parser("run", help="run one node until SIGTERM or SIGINT")
    run.add_argument("config", metavar="CONFIG", help="node config, e.g. nodes/FRA.toml")
    run.set_defaults(func=cmd_node_run)

    user = commands.add_parser("user", help="API users").add_subparsers(
        dest="user_command", required=True, metavar="COMMAND"
    )
    add = user.add_parser("add", help="create a user and print its token once")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--config", required=True, metavar="CONFIG")
    add.set_defaults(func=cmd_user_add)
    listing = user.add_parser("list", help="who may use the API (names and roles, no tokens)")
    listing.add_argument("--config", required=True, metavar="CONFIG")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_user_list)
    revoke = user.add_parser("revoke", help="remove a user: its token gets 401 at once")
    revoke.add_argument("name")
    revoke.add_argument("--config", required=True, metavar="CONFIG")
    revoke.set_defaults(func=cmd_user_revoke)

    audit = commands.add_parser(
        "audit", help="verify, export and prove the audit log (on the store file itself)"
    ).add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit.add_parser(
        "verify",
        help="recompute the tree and check every entry, checkpoint, signature and receipt",
        description="Exit 0 when everything holds, 1 naming the first bad entry and what is"
        " wrong, 2 when the store or config cannot be read. Works on a running node's store.",
    )
    verify.add_argument("--config", required=True, metavar="CONFIG")
    verify.add_argument(
        "--witnessed",
        action="append",
        default=[],
        metavar="FILE_OR_STORE",
        help="a witness's copy of this node's checkpoint: the peer's store file (the"
        " checkpoint it witnessed, and the newest one our receipts carried to it), or a text"
        " file holding a signed note (repeatable)",
    )
    verify.add_argument(
        "--roster",
        action="append",
        default=[],
        metavar="FILE",
        help="an older roster version (signed by the keeper), for signatures by keys rotated"
        " out since that the store does not hold (repeatable)",
    )
    verify.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes hashing the leaves of a large log (default: one per core)",
    )
    verify.add_argument("--json", action="store_true", help="the report as JSON")
    verify.set_defaults(func=cmd_audit_verify)
    export = audit.add_parser(
        "export",
        help="the entries with their leaf hashes, and the signed checkpoints",
        description="JSONL: one entry per line, then one line per signed checkpoint with its"
        " cosignatures. CSV: the entries only (checkpoints with --checkpoints). Hashes are"
        " standard base64. --since is inclusive, --until exclusive.",
    )
    export.add_argument("--config", required=True, metavar="CONFIG")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", metavar="FILE", help="write here (default: stdout)")
    export.add_argument(
        "--checkpoints", metavar="FILE", help="CSV: write the signed checkpoints here as JSONL"
    )
    export.add_argument("--since", type=_time_arg, metavar="TIME", help="RFC 3339 or ms")
    export.add_argument("--until", type=_time_arg, metavar="TIME", help="RFC 3339 or ms")
    export.add_argument("--message", metavar="ID", help="one message's entries")
    export.add_argument("--actor", metavar="ACTOR", help="e.g. node:FRA or a user name")
    export.add_argument("--action", metavar="ACTION", help="e.g. received")
    export.set_defaults(func=cmd_audit_export)
    proof = audit.add_parser(
        "proof",
        help="an inclusion or consistency proof (RFC 9162), as JSON",
        description="--size defaults to the newest signed checkpoint's size (the whole log"
        " when that does not cover what is asked).",
    )
    proof.add_argument("--config", required=True, metavar="CONFIG")
    which = proof.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, metavar="N", help="entry N (seq - 1) is in the tree")
    which.add_argument(
        "--old-size", type=int, metavar="M", help="the tree of M entries is a prefix"
    )
    proof.add_argument("--size", type=int, metavar="S", help="the tree size to prove against")
    proof.set_defaults(func=cmd_audit_proof)
    _add_officer_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ApiError as exc:
        print(f"cpn: error: {exc}", file=sys.stderr)
        return 1
    except UnreachableError as exc:
        print(f"cpn: error: {exc}", file=sys.stderr)
        return 3
    except CpnError as exc:
        print(f"cpn: error: {exc}", file=sys.stderr)
        return 2
    return result
