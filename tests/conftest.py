"""Shared fixtures: a small public-key infrastructure built in memory."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import pytest

from network.core.crypto import (
    HpkePrivateKey,
    HpkeSuite,
    SigningKey,
    generate_hpke_key,
    generate_signing_key,
    generate_tls_identity,
)
from network.core.records import NodeId
from network.core.roster import Card, Roster, build_roster, load_roster
from network.node.keys import country_name

NOW = 1_795_000_000_000  # 2026-11-18, ms since the epoch
DAY = 24 * 3600 * 1000


@dataclass
class Node:
    id: NodeId
    signing: SigningKey
    hpke: HpkePrivateKey
    card: Card


@dataclass
class Pki:
    keeper: SigningKey
    nodes: dict[str, Node]
    roster: Roster

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]


_TLS: dict[str, bytes] = {}


def tls_cert(node_id: str) -> bytes:
    """A real certificate (DER) per id, made once: generating EC keys is not free."""
    if node_id not in _TLS:
        _TLS[node_id] = generate_tls_identity(node_id, now=datetime.datetime.now(datetime.UTC))[2]
    return _TLS[node_id]


def make_node(node_id: str, suite: HpkeSuite = HpkeSuite.MLKEM768_X25519, port: int = 7000) -> Node:
    signing = generate_signing_key()
    hpke = generate_hpke_key(suite)
    card = Card(
        id=NodeId(node_id),
        name=country_name(node_id),
        url=f"wss://127.0.0.1:{port}",
        signing_key=signing.verify_key(),
        hpke_key=hpke.public,
        tls_cert=tls_cert(node_id),
    )
    return Node(NodeId(node_id), signing, hpke, card)


def sign_roster(
    keeper: SigningKey,
    nodes: dict[str, Node],
    *,
    version: int = 1,
    revoked: tuple[str, ...] = (),
    issued: int = NOW - DAY,
    valid_until: int = NOW + 365 * DAY,
) -> bytes:
    return build_roster(
        [n.card for n in nodes.values()],
        keeper=keeper,
        version=version,
        issued=issued,
        valid_until=valid_until,
        revoked=revoked,
    )


@pytest.fixture(scope="session")
def pki() -> Pki:
    """FRA, DEU and USA with the hybrid suite, KEN with X25519 alone; roster version 1."""
    keeper = generate_signing_key()
    nodes = {i: make_node(i) for i in ("FRA", "DEU", "USA")}
    nodes["KEN"] = make_node("KEN", HpkeSuite.X25519)
    data = sign_roster(keeper, nodes)
    roster = load_roster(data, keeper=keeper.verify_key(), now=NOW)
    return Pki(keeper, nodes, roster)
