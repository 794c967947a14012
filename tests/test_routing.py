"""Announcements and routes, in memory."""

from __future__ import annotations

import pytest

from bench.network_sim import member_states
from network.core.crypto import HpkeSuite, generate_signing_key
from network.core.errors import BadSignatureError, MalformedError, UnknownNodeError
from network.core.records import NodeId
from network.core.roster import load_roster
from network.core.routing import RoutingTable, make_announcement, verify_announcement
from tests.conftest import NOW, Pki, make_node, sign_roster


def table_for(pki: Pki, me: str, links: dict[str, list[str]]) -> RoutingTable:
    table = RoutingTable(NodeId(me))
    for seq, (node, peers) in enumerate(links.items(), start=1):
        if node != me:
            ids = [NodeId(p) for p in peers]
            announcement = make_announcement(NodeId(node), seq, ids, pki[node].signing)
            table.accept(verify_announcement(announcement.raw, pki.roster))
    table.set_linked(NodeId(p) for p in links[me])
    return table


def test_announcement_round_trip_and_refusals(pki: Pki) -> None:
    announcement = make_announcement(NodeId("FRA"), 5, [NodeId("DEU")], pki["FRA"].signing)

    assert verify_announcement(announcement.raw, pki.roster).links == {"DEU"}
    forged = make_announcement(NodeId("FRA"), 6, [NodeId("KEN")], pki["DEU"].signing)
    with pytest.raises(BadSignatureError):
        verify_announcement(forged.raw, pki.roster)
    with pytest.raises(MalformedError):
        verify_announcement(announcement.raw.replace(b'"seq":5', b'"seq":5.0'), pki.roster)
    with pytest.raises(UnknownNodeError):
        verify_announcement(
            make_announcement(NodeId("CHE"), 1, [], pki["FRA"].signing).raw, pki.roster
        )


def test_older_announcement_does_not_replace_a_newer_one(pki: Pki) -> None:
    table = RoutingTable(NodeId("USA"))
    newer = make_announcement(NodeId("FRA"), 9, [NodeId("DEU")], pki["FRA"].signing)
    older = make_announcement(NodeId("FRA"), 3, [NodeId("KEN")], pki["FRA"].signing)

    assert table.accept(newer)
    assert not table.accept(older)
    assert table.announcements[NodeId("FRA")].links == {"DEU"}


def test_routes_go_around_a_ring_best_first(pki: Pki) -> None:
    ring = {
        "FRA": ["DEU", "USA"],
        "DEU": ["FRA", "KEN"],
        "KEN": ["DEU", "USA"],
        "USA": ["KEN", "FRA"],
    }

    table = table_for(pki, "FRA", ring)

    assert table.next_hops(NodeId("DEU")) == ("DEU", "USA")
    assert set(table.next_hops(NodeId("KEN"))) == {"DEU", "USA"}  # two hops either way
    assert table.next_hops(NodeId("USA")) == ("USA", "DEU")


def test_one_sided_claims_carry_no_traffic(pki: Pki) -> None:
    links = {"FRA": ["DEU"], "DEU": ["FRA", "KEN"], "KEN": []}

    table = table_for(pki, "FRA", links)

    assert table.next_hops(NodeId("KEN")) == ()
    assert table.next_hops(NodeId("DEU")) == ("DEU",)


def test_no_route_through_ourselves_and_none_when_unlinked(pki: Pki) -> None:
    line = {"DEU": ["FRA"], "FRA": ["DEU", "KEN"], "KEN": ["FRA"]}

    table = table_for(pki, "FRA", line)
    table.set_linked([])

    assert table.next_hops(NodeId("KEN")) == ()
    table.set_linked([NodeId("KEN")])
    assert table.next_hops(NodeId("DEU")) == ()  # KEN only reaches DEU through FRA


def test_equal_routes_spread_over_the_hubs_the_same_way_on_every_node() -> None:
    """Two hubs reach each of 40 countries in two hops: each hub is first for about
    half of them (not the lowest id for all), and every node breaks the ties alike."""
    codes = member_states()
    hubs, countries = codes[:2], codes[2:42]
    senders = codes[42:44]
    keeper = generate_signing_key()
    nodes = {i: make_node(i, HpkeSuite.X25519) for i in [*hubs, *countries, *senders]}
    roster = load_roster(sign_roster(keeper, nodes), keeper=keeper.verify_key(), now=NOW)
    keys = Pki(keeper, nodes, roster)
    links = {**{h: countries + senders for h in hubs}, **{c: hubs for c in countries + senders}}

    first, second = (table_for(keys, sender, links) for sender in senders)

    chosen = [first.next_hops(NodeId(c))[0] for c in countries]
    assert 12 <= chosen.count(hubs[0]) <= 28
    assert chosen == [second.next_hops(NodeId(c))[0] for c in countries]
