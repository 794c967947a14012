"""Node config files: what they resolve to, and refusals that name the file and the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from network.core.errors import ConfigError
from network.node.config import MAX_CONFIG_BYTES, load_config, parse_listen

REPO = Path(__file__).resolve().parent.parent

TABLES = {
    "peer": 'listen = "127.0.0.1:7101"',
    "api": 'listen = "127.0.0.1:8101"',
    "store": 'path = "s.sqlite"',
    "keys": 'dir = "k"\nroster = "r.json"\nkeeper = "keeper.json"',
}


def config_text(top: str = 'id = "FRA"', **tables: str | None) -> str:
    """A valid config, with top-level lines `top` and tables replaced (None: left out)."""
    chosen: dict[str, str | None] = {**TABLES, **tables}
    body = "".join(f"[{name}]\n{text}\n" for name, text in chosen.items() if text is not None)
    return f"{top}\n{body}"


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "FRA.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_config_paths_resolve_beside_the_file() -> None:
    config = load_config(REPO / "nodes" / "FRA.toml")

    assert config.id == "FRA"
    assert config.keys_dir == REPO / "keys" / "FRA"
    assert config.peer_url == "wss://127.0.0.1:7101"
    assert config.peers == ("DEU", "USA")


def test_a_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, config_text()))

    assert (config.peer_host, config.peer_port) == ("127.0.0.1", 7101)
    assert (config.api_host, config.api_port) == ("127.0.0.1", 8101)
    assert config.peer_url == "wss://127.0.0.1:7101"
    assert config.store_path == tmp_path / "s.sqlite"
    assert config.peers == ()
    assert config.retry_seconds == 60.0
    assert config.handshake_timeout == 10.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:7101", ("::1", 7101)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_listen_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value, "peer.listen") == expected


# (config text, the field the refusal names, what it says)
REFUSALS = [
    (config_text('id = "FR"'), "id", "ISO 3166-1 alpha-3"),
    (config_text("id = 7"), "id", "ISO 3166-1 alpha-3"),
    (config_text(peer=None), "[peer]", "table is missing"),
    (config_text(api=None), "[api]", "table is missing"),
    (config_text(store=None), "[store]", "table is missing"),
    (config_text(keys=None), "[keys]", "table is missing"),
    (config_text(peer='listen = "nohost"'), "peer.listen", "host:port"),
    (config_text(peer='listen = "127.0.0.1:65536"'), "peer.listen", "0..65535"),
    (config_text(peer="listen = 7101"), "peer.listen", "host:port"),
    (
        config_text(peer='listen = "127.0.0.1:1"\nurl = "ws://a:1"'),
        "peer.url",
        "must start with wss://",
    ),
    (
        config_text(peer='listen = "127.0.0.1:1"\nhandshake_timeout = 0'),
        "peer.handshake_timeout",
        "more than 0",
    ),
    (
        config_text(peer='listen = "127.0.0.1:1"\nhandshake_timeout = 121'),
        "peer.handshake_timeout",
        "at most 120",
    ),
    (
        config_text(peer='listen = "127.0.0.1:1"\nhandshake_timeout = true'),
        "peer.handshake_timeout",
        "expected seconds",
    ),
    (config_text(api='listen = ":8101"'), "api.listen", "host:port"),
    (config_text(api='listen = "127.0.0.1:1"\nport = 2'), "api.port", "unknown key"),
    (config_text(store="path = 5"), "store.path", "required string"),
    (config_text(store='path = ""'), "store.path", "required string"),
    (config_text(keys='dir = "k"\nroster = "r"'), "keys.keeper", "required string"),
    (config_text(keys='roster = "r"\nkeeper = "p"'), "keys.dir", "required string"),
    (config_text(keys='dir = "k"\nkeeper = "p"'), "keys.roster", "required string"),
    (config_text('id = "FRA"\nlinks = 1'), "links", "expected a table"),
    (config_text(links='peers = ["de"]'), "links.peers", "alpha-3"),
    (config_text(links='peers = "DEU"'), "links.peers", "alpha-3"),
    (config_text(links='peers = ["FRA"]'), "links.peers", "cannot link to itself"),
    (config_text(delivery="retry_seconds = 0"), "delivery.retry_seconds", "1..86400"),
    (config_text(delivery="retry_seconds = 86401"), "delivery.retry_seconds", "1..86400"),
    (config_text(delivery='retry_seconds = "60"'), "delivery.retry_seconds", "1..86400"),
    (config_text('id = "FRA"\ndelivery = 1'), "delivery.retry_seconds", "1..86400"),
    (config_text('id = "FRA"\nbogus = 1'), "bogus", "unknown key"),
]


@pytest.mark.parametrize(("text", "field", "problem"), REFUSALS)
def test_a_refusal_names_the_file_and_the_field(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError, match=re.escape(f"{path}: {field}")) as caught:
        load_config(path)

    assert problem in str(caught.value)
    assert caught.value.reason == "bad_config"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("id = ", "not valid TOML"),
        (b'id = "FRA"\n\xff\xfe', "not valid TOML"),
        ("#" * (MAX_CONFIG_BYTES + 1), f"config is over {MAX_CONFIG_BYTES} bytes"),
    ],
)
def test_a_file_that_is_not_a_config_is_named(
    tmp_path: Path, content: str | bytes, problem: str
) -> None:
    path = write(tmp_path, content)

    with pytest.raises(ConfigError, match=re.escape(f"{path}: {problem}")):
        load_config(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read config")):
        load_config(path)
