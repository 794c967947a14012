"""Node configuration: one TOML file per node (`nodes/FRA.toml`).

Relative paths in a config resolve against the directory holding the file,
so a node runs the same from any working directory. Every refusal is a
ConfigError naming the file and the key.

    id = "FRA"
    [peer]
    listen = "127.0.0.1:7101"        # url defaults to wss://<listen>
    [api]
    listen = "127.0.0.1:8101"
    [store]
    path = "../var/FRA.sqlite"
    [keys]
    dir = "../keys/FRA"
    roster = "../keys/roster.json"
    keeper = "../keys/authority/keeper.json"
    [links]
    peers = ["DEU", "USA"]
    [delivery]
    retry_seconds = 60               # no end-to-end receipt by then: send again
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from network.errors import ConfigError
from network.records import NodeId, is_node_id

__all__ = ["NodeConfig", "load_config", "parse_listen"]

MAX_CONFIG_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class NodeConfig:
    path: Path
    id: NodeId
    peer_host: str
    peer_port: int
    peer_url: str
    api_host: str
    api_port: int
    store_path: Path
    keys_dir: Path
    roster_path: Path
    keeper_path: Path
    peers: tuple[NodeId, ...]
    retry_seconds: float = 60.0  # a message without an end-to-end receipt goes again after this


def parse_listen(value: object, where: str) -> tuple[str, int]:
    """`host:port` on loopback or any interface; refuses anything else with the key named."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f'{where}: expected "host:port", got {value!r}')
    host, _, port_text = value.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f'{where}: expected "host:port" with a port 0..65535, got {value!r}')
    return host.strip("[]"), int(port_text)


def _table(doc: dict[str, Any], key: str, file: Path) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: [{key}] table is missing")
    return value


def _str(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: required string is missing or empty")
    return value


def load_config(path: Path) -> NodeConfig:
    """Read and check a node config file; raises ConfigError saying what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config is over {MAX_CONFIG_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    base = path.parent
    node_id = doc.get("id")
    if not isinstance(node_id, str) or not is_node_id(node_id):
        raise ConfigError(f"{path}: id: expected an ISO 3166-1 alpha-3 code, got {node_id!r}")
    peer = _table(doc, "peer", path)
    peer_host, peer_port = parse_listen(peer.get("listen"), f"{path}: peer.listen")
    peer_url = peer.get("url", f"wss://{peer_host}:{peer_port}")
    if not isinstance(peer_url, str) or not peer_url.startswith("wss://"):
        raise ConfigError(f"{path}: peer.url: must start with wss://, got {peer_url!r}")
    api = _table(doc, "api", path)
    api_host, api_port = parse_listen(api.get("listen"), f"{path}: api.listen")
    store = _table(doc, "store", path)
    keys = _table(doc, "keys", path)
    links = doc.get("links", {})
    if not isinstance(links, dict):
        raise ConfigError(f"{path}: links: expected a table")
    peers = links.get("peers", [])
    if not isinstance(peers, list) or not all(is_node_id(p) for p in peers):
        raise ConfigError(f"{path}: links.peers: expected a list of alpha-3 codes, got {peers!r}")
    if node_id in peers:
        raise ConfigError(f"{path}: links.peers: a node cannot link to itself")
    delivery = doc.get("delivery", {})
    retry = delivery.get("retry_seconds", 60) if isinstance(delivery, dict) else None
    if isinstance(retry, bool) or not isinstance(retry, int | float) or not 1 <= retry <= 86_400:
        raise ConfigError(f"{path}: delivery.retry_seconds: expected 1..86400 seconds")
    known = {"id", "peer", "api", "store", "keys", "links", "delivery"}
    extra = sorted(set(doc) - known)
    if extra:
        raise ConfigError(f"{path}: {extra[0]}: unknown key")
    where = f"{path}: "

    def resolve(value: str) -> Path:
        return Path(os.path.normpath(base / value))

    return NodeConfig(
        path=path,
        id=NodeId(node_id),
        peer_host=peer_host,
        peer_port=peer_port,
        peer_url=peer_url,
        api_host=api_host,
        api_port=api_port,
        store_path=resolve(_str(store, "path", where + "store")),
        keys_dir=resolve(_str(keys, "dir", where + "keys")),
        roster_path=resolve(_str(keys, "roster", where + "keys")),
        keeper_path=resolve(_str(keys, "keeper", where + "keys")),
        peers=tuple(NodeId(p) for p in peers),
        retry_seconds=float(retry),
    )
