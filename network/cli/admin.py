"""`cpn keys`, `roster`, `user` and `node`: the administrator's commands, run on the
node's host with its key files, config and store."""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from network.cli._common import (
    Subcommands,
    format_time,
    key_passphrase,
    print_json,
    run_async,
)
from network.core.bodies import language_problem
from network.core.crypto import HpkeSuite
from network.core.errors import KeyFileError, RosterError
from network.core.records import ROLES, NodeId, is_node_id
from network.core.roster import (
    MAX_ROSTER_BYTES,
    Card,
    Roster,
    build_roster,
    load_roster,
    phone_problem,
)
from network.node.clock import now_ms
from network.node.config import NodeConfig, load_config
from network.node.keys import (
    count_needing,
    init_keeper,
    init_node_keys,
    load_configured_keys,
    load_keeper,
    load_keeper_public,
    load_node_keys,
    purge_retired,
    read_card,
    rotate_node_keys,
)

if TYPE_CHECKING:
    from network.node.store import UserRow

# The store and the use cases load in the commands that use them (see commands.py).

__all__ = [
    "add_key_commands",
    "add_node_commands",
    "build_roster_file",
    "cards_in",
    "held_roster",
    "record_in_store",
]

DAY_MS = 24 * 3600 * 1000
SUITES = {"hybrid": HpkeSuite.MLKEM768_X25519, "x25519": HpkeSuite.X25519}


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
    phones, languages = _desk(args)
    card = init_node_keys(
        Path(args.dir) / node_id,
        node_id,
        url=url,
        name=args.name,
        suite=SUITES[args.suite],
        passphrase=key_passphrase(args.passphrase),
        now=datetime.datetime.now(datetime.UTC),
        signing_uri=args.signing,
        phones=phones,
        languages=languages,
    )
    print(json.dumps(card.to_json(), indent=2))
    return 0


def _desk(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The duty desk's telephone numbers and languages for the card, checked as the roster
    checks them (KeyFileError naming the flag)."""
    for flag, values, problem in (
        ("--phone", args.phone, phone_problem),
        ("--language", args.language, language_problem),
    ):
        for value in values:
            wrong = problem(value)
            if wrong is not None:
                raise KeyFileError(f"{flag} {value!r}: {wrong}")
    return tuple(args.phone), tuple(args.language)


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
    passphrase = key_passphrase(False)
    actor = f"admin:{getpass.getuser()}"
    if config is not None and config.signing_uri is not None and args.purge is None:
        raise KeyFileError(
            f"{config.path}: the signing key is in a hardware module ([keys] signing): rotate"
            " it there, then the other keys with a new card (not supported by this command yet)"
        )
    if args.purge is not None:
        if config is None:
            raise KeyFileError("--purge needs --config: the store says which messages need a key")
        return run_async(_purge(config, key_dir, args.purge, passphrase, actor))
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
        run_async(record_in_store(config, actor, "keys_rotated", detail))
    print(json.dumps(card.to_json(), indent=2))
    print(
        f"{node_id}: new keys in {key_dir}; the old ones kept in {rotation.retired_dir}.\n"
        f"Send {key_dir / 'card.json'} (printed above) to the register keeper for a new roster"
        " version; restart the node once that roster is in place.",
        file=sys.stderr,
    )
    return 0


async def record_in_store(
    config: NodeConfig, actor: str, action: str, detail: dict[str, Any]
) -> None:
    """One audit entry in the node's store, by an administrator's command."""
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


def cards_in(keys_dir: Path) -> list[Card]:
    """The cards under `keys_dir`/ID/card.json, by ID; raises KeyFileError for a bad one."""
    cards = []
    for card_path in sorted(keys_dir.glob("*/card.json")):
        if is_node_id(card_path.parent.name):
            cards.append(read_card(card_path))
    return cards


def held_roster(path: Path, keeper_public: Path) -> Roster | None:
    """The roster at `path` checked against the keeper's key, or None when there is none;
    raises RosterError or KeyFileError when it does not verify."""
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
    cards = cards_in(keys_dir)
    if not cards:
        raise RosterError(f"no cards found under {keys_dir}/*/card.json (run cpn keys init ID)")
    held = held_roster(out, authority / "keeper.json") if out.exists() else None
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
        passphrase=key_passphrase(False),
    )
    print(f"roster version {roster.version}: {len(roster.entries)} contact points, signed")
    return 0


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
    print(f"issued {format_time(roster.issued)}, valid until {format_time(roster.valid_until)}")
    print(f"{'id':<4} {'status':<8} {'name':<28} {'peer url':<28} {'signing kid':<17} hpke suite")
    for node_id, entry in sorted(roster.entries.items()):
        card = entry.card
        suite = card.hpke_key.suite.value.split("/")[0]
        print(
            f"{node_id:<4} {entry.status.value:<8} {card.name[:28]:<28} {card.url[:28]:<28} "
            f"{card.signing_key.kid:<17} {suite}"
        )
    return 0


# A production node's config, written by `cpn node init` (paths relative to this file).
NODE_TEMPLATE = """\
# cpn node {id}: written by `cpn node init` on {date}. Paths are relative to this file.
id = "{id}"

[peer]
# Where the other contact points reach this node (the URL on its card): open it to them.
listen = "{peer_listen}"
url = "{url}"

[api]
# Officers' console and API: on loopback, behind the agency's reverse proxy (TLS there).
listen = "{api_listen}"

[metrics]
# Prometheus scrapes here; never exposed beyond the host.
listen = "{metrics_listen}"

[log]
# One JSON object per line (journald, a log pipeline); "text" for people.
format = "json"

[store]
path = "cpn.sqlite"

[keys]
dir = "keys/{id}"
# Put the register keeper's public key and the roster it signs here (both from the keeper).
keeper = "keeper.json"
roster = "roster.json"

[links]
# The contact points this node dials (the others may dial it).
peers = []
"""


def cmd_node_init(args: argparse.Namespace) -> int:
    """A node's data folder: keys, and a config with production defaults; prints the card."""
    from network.node.config import parse_listen

    node_id = _node_id_arg(args.id)
    data = Path(args.data)
    config_path = data / "node.toml"
    if config_path.exists():
        raise KeyFileError(f"{config_path} exists: this folder holds a node already")
    peer_host, peer_port = parse_listen(args.listen, "--listen")
    url = args.url or f"wss://{socket.getfqdn()}:{peer_port}"
    if not url.startswith("wss://"):
        raise KeyFileError(f"--url: must start with wss://, got {url!r}")
    phones, languages = _desk(args)
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)  # keys, store and config: the node's user only
    card = init_node_keys(
        data / "keys" / node_id,
        node_id,
        url=url,
        name=args.name,
        suite=SUITES[args.suite],
        passphrase=key_passphrase(args.passphrase),
        now=datetime.datetime.now(datetime.UTC),
        phones=phones,
        languages=languages,
    )
    text = NODE_TEMPLATE.format(
        id=node_id,
        date=datetime.datetime.now(datetime.UTC).date().isoformat(),
        peer_listen=f"{peer_host}:{peer_port}",
        url=url,
        api_listen=args.api_listen,
        metrics_listen=args.metrics_listen,
    )
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    load_config(config_path)  # what we wrote must load
    print(json.dumps(card.to_json(), indent=2))
    print(
        f"{node_id}: keys in {data / 'keys' / node_id}, config {config_path}.\n"
        f"Send {data / 'keys' / node_id / 'card.json'} (printed above) to the register keeper;"
        f" put the keeper's public key in {data / 'keeper.json'} and the roster it signs in"
        f" {data / 'roster.json'}, name the peers to dial in [links], then:"
        f" cpn node run {config_path}",
        file=sys.stderr,
    )
    return 0


def cmd_store_backup(args: argparse.Namespace) -> int:
    """An online, verified copy of the node's store, with its manifest."""
    from network.node.backup import Backup, backup_store
    from network.node.runner import load_current_roster

    config = load_config(Path(args.config))
    roster = load_current_roster(config, expired_ok=True)
    result = backup_store(
        config.store_path, Path(args.out), roster=roster, node_id=config.id, now=now_ms()
    )
    if not isinstance(result, Backup):
        problem = result.first.to_json() if result.first else ""
        print(f"cpn: error: the copy does not verify, nothing kept: {problem}", file=sys.stderr)
        return 1
    m = result.manifest
    print(
        f"{result.path}: {m['bytes']} bytes, {m['messages']} messages, audit log of"
        f" {m['audit_size']} entries (root {m['audit_root']}), newest checkpoint at"
        f" {m['checkpoint_size']}; verified. Manifest: {result.path}.manifest.json"
    )
    return 0


def cmd_store_reindex(args: argparse.Namespace) -> int:
    """Listing lines and identifier digests for requests stored before they were kept."""
    from network.node.listing import reindex
    from network.node.store import Store

    config = load_config(Path(args.config))
    keys = load_configured_keys(config)

    async def run() -> dict[str, int]:
        store = await Store.open(config.store_path)
        try:
            return await reindex(store, keys, actor=f"admin:{getpass.getuser()}", now=now_ms())
        finally:
            await store.close()

    counts = run_async(run())
    print(
        f"{config.id}: {counts['requests']} requests read, {counts['lines']} listing lines"
        f" made, {counts['identifiers']} identifier digests indexed"
        + (f", {counts['unreadable']} not readable (key purged)" if counts["unreadable"] else "")
    )
    return 0


def cmd_retention_run(args: argparse.Namespace) -> int:
    """Delete now what the node's retention rules say must go (as the node does itself)."""
    from network.node.runner import load_current_roster
    from network.node.store import Store
    from network.node.wiring import Node

    config = load_config(Path(args.config))
    if not config.retention:
        print(f"{config.id}: no [retention] rule in {config.path}: nothing is ever deleted")
        return 0
    keys = load_configured_keys(config)
    roster = load_current_roster(config, expired_ok=True)

    async def run() -> dict[str, int]:
        store = await Store.open(config.store_path)
        try:
            node = Node.build(
                keys=keys, roster=roster, store=store, clock=now_ms, retention=config.retention
            )
            return await node.retention.sweep()
        finally:
            await store.close()

    deleted = run_async(run())
    done = ", ".join(f"{n} under rule {rule}" for rule, n in deleted.items()) or "none lapsed"
    print(f"{config.id}: contents deleted: {done}")
    return 0


def cmd_store_restore(args: argparse.Namespace) -> int:
    """A verified backup put in place; the node explains the rollback and asks back."""
    from network.node.backup import Restored, restore_store
    from network.node.runner import load_current_roster

    config = load_config(Path(args.config))
    roster = load_current_roster(config, expired_ok=True)
    result = restore_store(
        Path(args.backup),
        config.store_path,
        roster=roster,
        node_id=config.id,
        now=now_ms(),
        replace=args.replace,
    )
    if not isinstance(result, Restored):
        problem = result.first.to_json() if result.first else ""
        print(
            f"cpn: error: the backup does not verify, nothing changed: {problem}", file=sys.stderr
        )
        return 1
    m = result.marker
    if result.replaced is not None:
        print(f"the store that was in place is kept as {result.replaced}")
    print(
        f"{result.path}: restored from {args.backup}, audit log of {m['backup_size']} entries;"
        " verified. At its next start the node records the restore in its log and asks its"
        " peers for every message it receipted since the backup."
    )
    return 0


def cmd_node_run(args: argparse.Namespace) -> int:
    from network.api.site import api_site  # aiohttp and websockets load only here
    from network.node.logs import configure_logging
    from network.node.runner import serve_until_signalled

    config = load_config(Path(args.config))
    configure_logging(config.log_format, config.id)
    serve_until_signalled(config, api_site(config))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from network.node.officer import issue_token
    from network.node.passkeys import ENROLMENT_MS, enrol
    from network.node.store import Store

    config = load_config(Path(args.config))
    actor = f"admin:{getpass.getuser()}"

    async def add() -> str:
        store = await Store.open(config.store_path)
        try:
            if args.token:
                return await issue_token(store, args.name, args.role, actor=actor, now=now_ms())
            return await enrol(store, args.name, args.role, actor=actor, now=now_ms())
        finally:
            await store.close()

    secret = run_async(add())
    if args.token:
        print(f"{args.role} {args.name} on {config.id}; token (shown once, stored hashed):")
        print(secret)
        return 0
    hours = ENROLMENT_MS // 3_600_000
    print(
        f"{args.role} {args.name} on {config.id}: send this link to them; it registers their"
        f" passkey, once, within {hours} hours:"
    )
    print(f"{config.api_origin}/#/enrol/{secret}")
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

    users = run_async(read())
    if args.json:
        print_json(
            [
                {"name": u.name, "role": u.role, "created": u.created, "disabled": u.disabled}
                for u in users
            ]
        )
        return 0
    for user in users:
        off = "\tdisabled" if user.disabled else ""
        print(f"{user.name}\t{user.role}\tsince {format_time(user.created)}{off}")
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

    user = run_async(revoke())
    print(f"revoked {user.role} {user.name} on {config.id}: its token no longer works")
    return 0


def cmd_user_set(args: argparse.Namespace) -> int:
    """`cpn user disable|enable NAME` and `cpn user role NAME ROLE`, audited."""
    from network.node.officer import set_account
    from network.node.store import Store

    config = load_config(Path(args.config))
    changes: dict[str, dict[str, Any]] = {
        "disable": {"disabled": True},
        "enable": {"disabled": False},
        "role": {"role": getattr(args, "role", None)},
    }
    change = changes[args.user_command]

    async def apply_change() -> UserRow:
        store = await Store.open(config.store_path)
        try:
            actor = f"admin:{getpass.getuser()}"
            return await set_account(store, args.name, actor=actor, now=now_ms(), **change)
        finally:
            await store.close()

    user = run_async(apply_change())
    state = "disabled: its token is refused" if user.disabled else "enabled"
    print(f"{user.name} on {config.id}: {user.role}, {state}")
    return 0


def cmd_user_audit(args: argparse.Namespace) -> int:
    """The audit trail of one account: what it did, and what was done to it."""
    from network.node.auditfile import account_entries

    config = load_config(Path(args.config))
    entries = account_entries(config.store_path, args.name)
    if args.json:
        print_json(entries)
        return 0
    for entry in entries:
        print(
            f"{entry['time_rfc3339']}  {entry['actor']:<24} {entry['action']:<18} {entry['detail']}"
        )
    if not entries:
        print(f"nothing in {config.id}'s audit log by or about {args.name}")
    return 0


# -- parsers -----------------------------------------------------------------


def add_key_commands(commands: Subcommands) -> None:
    """`cpn keys init|rotate` and `cpn roster build|show`."""
    keys = commands.add_parser("keys", help="node keys").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    init = keys.add_parser("init", help="create a node's keys and print its contact-point card")
    init.add_argument("id", metavar="ID", help="ISO 3166-1 alpha-3 code, e.g. FRA")
    init.add_argument("--dir", default="keys", help="keys folder (default: keys)")
    init.add_argument("--url", help="peer URL other nodes reach this node at (wss://host:port)")
    _key_set_arguments(init)
    init.add_argument(
        "--signing",
        metavar="PKCS11_URI",
        help="the signing key in a hardware module: made there (or found) and never written"
        " to a file, e.g. 'pkcs11:token=cpn;object=FRA-signing?module-path=/usr/lib/softhsm/"
        "libsofthsm2.so' (PIN: CPN_PKCS11_PIN or pin-source=file:PATH); the config then"
        " names it: [keys] signing = ...",
    )
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


def _key_set_arguments(parser: argparse.ArgumentParser) -> None:
    """What a new key set may be given: `cpn keys init` and `cpn node init`."""
    parser.add_argument("--name", help="contact point name (default: the UN member state's name)")
    parser.add_argument("--suite", choices=sorted(SUITES), default="hybrid", help="HPKE suite")
    parser.add_argument("--passphrase", action="store_true", help="encrypt the private keys")
    parser.add_argument(
        "--phone",
        action="append",
        default=[],
        metavar="NUMBER",
        help="the duty desk's telephone, for when the network cannot reach it (repeatable)",
    )
    parser.add_argument(
        "--language",
        action="append",
        default=[],
        metavar="TAG",
        help="a language the duty desk works in, such as en or fr (repeatable)",
    )


def add_node_commands(commands: Subcommands) -> None:
    """`cpn node init|run`, `cpn store backup` and `cpn user add|list|revoke`."""
    node = commands.add_parser("node", help="run a node").add_subparsers(
        dest="node_command", required=True, metavar="COMMAND"
    )
    init = node.add_parser(
        "init",
        help="create a node's data folder: keys, a production config, the card to send",
        description="Creates DATA/keys/ID (the keys, mode 0600) and DATA/node.toml (the peer"
        " port on every interface, the API and metrics on loopback, the store in DATA), and"
        " prints the card for the register keeper. Refused when DATA/node.toml exists.",
    )
    init.add_argument("id", metavar="ID", help="ISO 3166-1 alpha-3 code, e.g. FRA")
    init.add_argument("--data", required=True, metavar="DIR", help="the node's data folder")
    init.add_argument("--url", help="the peer URL others reach it at (default: wss://FQDN:PORT)")
    init.add_argument("--listen", default="0.0.0.0:7000", help="peer port (default: %(default)s)")
    init.add_argument("--api-listen", default="127.0.0.1:8100", help="(default: %(default)s)")
    init.add_argument("--metrics-listen", default="127.0.0.1:9100", help="(default: %(default)s)")
    _key_set_arguments(init)
    init.set_defaults(func=cmd_node_init)
    run = node.add_parser("run", help="run one node until SIGTERM or SIGINT")
    run.add_argument("config", metavar="CONFIG", help="node config, e.g. nodes/FRA.toml")
    run.set_defaults(func=cmd_node_run)

    retention = commands.add_parser("retention", help="the node's retention rules").add_subparsers(
        dest="retention_command", required=True, metavar="COMMAND"
    )
    sweep = retention.add_parser(
        "run",
        help="delete now the contents whose retention rule has lapsed",
        description="What a running node does by itself: each message a [retention.NAME] rule"
        " has lapsed for (and no legal hold keeps) loses its envelope, sent copy, inbox line"
        " and identifier digests; its row, digest, receipts and log entries stay, and each"
        " deletion is audited. Safe while the node runs.",
    )
    sweep.add_argument("--config", required=True, metavar="CONFIG")
    sweep.set_defaults(func=cmd_retention_run)

    store = commands.add_parser("store", help="the node's store").add_subparsers(
        dest="store_command", required=True, metavar="COMMAND"
    )
    reindex = store.add_parser(
        "reindex",
        help="list lines and search digests for requests stored before an upgrade kept them",
        description="Opens each request the store holds with the node's keys and gives it the"
        " listing line and identifier digests this version keeps (a migration holds no key)."
        " Safe to run again, and while the node runs. Audited.",
    )
    reindex.add_argument("--config", required=True, metavar="CONFIG")
    reindex.set_defaults(func=cmd_store_reindex)
    backup = store.add_parser(
        "backup",
        help="an online copy of the store, verified, with a manifest",
        description="Copies the store while the node runs (one consistent snapshot), verifies"
        " the copy as `cpn audit verify` would, and keeps it only if it verifies, beside"
        " OUT.manifest.json (size, SHA-256, audit tree size and root, newest checkpoint)."
        " Exit 0 when kept, 1 when the copy did not verify, 2 when it could not be made.",
    )
    backup.add_argument("out", metavar="OUT", help="the backup file (never overwritten)")
    backup.add_argument("--config", required=True, metavar="CONFIG")
    backup.set_defaults(func=cmd_store_backup)
    restore = store.add_parser(
        "restore",
        help="put a backup in place; the node then gets back from its peers what came after",
        description="Verifies BACKUP, puts it in place as the node's store (with the node"
        " stopped) and leaves word for the node: at its next start it appends a signed"
        " `restored` entry (so its witnesses see an explained rollback), asks each peer for"
        " every message it receipted since the backup, and alerts on what it cannot get"
        " back. Exit 0 when restored, 1 when the backup does not verify, 2 on any other"
        " error (a store in place without --replace, say).",
    )
    restore.add_argument("backup", metavar="BACKUP", help="a file made by `cpn store backup`")
    restore.add_argument("--config", required=True, metavar="CONFIG")
    restore.add_argument(
        "--replace",
        action="store_true",
        help="keep the store in place aside (as STORE.replaced-TIME) instead of refusing",
    )
    restore.set_defaults(func=cmd_store_restore)

    user = commands.add_parser("user", help="API users").add_subparsers(
        dest="user_command", required=True, metavar="COMMAND"
    )
    add = user.add_parser(
        "add",
        help="create a person's account and print its passkey enrolment link (--token: a"
        " machine's, and its token)",
        description="A person signs in with a passkey: this prints a one-time link (a day) to"
        " the console, where they register it. With --token, the account is a machine's"
        " (a script, monitoring): its bearer token is printed once, stored hashed.",
    )
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--token", action="store_true", help="a machine user: print a token")
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
    for name, text in (
        ("disable", "refuse a user's token until enabled again (audited)"),
        ("enable", "accept a disabled user's token again (audited)"),
    ):
        change = user.add_parser(name, help=text)
        change.add_argument("name")
        change.add_argument("--config", required=True, metavar="CONFIG")
        change.set_defaults(func=cmd_user_set)
    role = user.add_parser("role", help="change a user's role (audited)")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    role.add_argument("--config", required=True, metavar="CONFIG")
    role.set_defaults(func=cmd_user_set)
    trail = user.add_parser("audit", help="an account's audit trail: what it did, what was done")
    trail.add_argument("name")
    trail.add_argument("--config", required=True, metavar="CONFIG")
    trail.add_argument("--json", action="store_true")
    trail.set_defaults(func=cmd_user_audit)
