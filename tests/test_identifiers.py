"""Identifiers matched in one form (issue 20, item 4): pure normalisation, by hand and by
hypothesis."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from network.core.bodies import IdentifierKind
from network.core.identifiers import match_keys, normalise

K = IdentifierKind


@pytest.mark.parametrize(
    ("kind", "one", "other"),
    [
        (K.IP_ADDRESS, "2001:DB8:4F2A:0:0:0:0:17", "2001:db8:4f2a::17"),
        (K.IP_ADDRESS, " 203.0.113.45 ", "203.0.113.45"),
        (K.EMAIL, "Contact@Bonnes-Affaires.example", "contact@bonnes-affaires.example"),
        (K.URL, "HTTPS://Shop.Example/commande/", "https://shop.example/commande"),
        (K.URL, "shop.example/commande", "http://shop.example/commande"),
        (K.PHONE, "+33 1 40-97-00-00", "0033140970000"),
        (K.DOMAIN, "Shop.Example.", "shop.example"),
        (K.ACCOUNT, "  Jean.Dupont  ", "jean.dupont"),
    ],
)
def test_the_same_identifier_written_two_ways_matches(kind: K, one: str, other: str) -> None:
    assert normalise(kind, one) == normalise(kind, other) is not None


def test_what_cannot_be_an_identifier_of_a_kind_is_not_one() -> None:
    assert normalise(K.IP_ADDRESS, "not an address") is None
    assert normalise(K.EMAIL, "no at sign") is None
    assert normalise(K.PHONE, "12") is None
    # Without a kind, a value is matched as every kind it can be.
    keys = match_keys("203.0.113.45")
    assert "ip_address:203.0.113.45" in keys and not any(k.startswith("email:") for k in keys)


@given(st.ip_addresses())
def test_every_ip_address_matches_however_written(address: ipaddress._BaseAddress) -> None:
    exploded = address.exploded.upper()

    assert normalise(K.IP_ADDRESS, exploded) == normalise(K.IP_ADDRESS, str(address))


@given(kind=st.sampled_from(list(K)), value=st.text(min_size=1, max_size=60))
def test_normalising_twice_changes_nothing(kind: K, value: str) -> None:
    once = normalise(kind, value)
    if once is not None and kind is not K.URL:  # a URL gains its scheme once
        assert normalise(kind, once) == once
