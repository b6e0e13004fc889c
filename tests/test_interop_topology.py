"""Interop matrix, topologies: a NAT router in front of lockgate, IPv6 outside
and inside, IPv4 in IPv6, two CHILD SAs under one IKE SA, and traffic selectors that
lockgate narrows when strongSwan offers wider ones. Every case carries real traffic.
"""

from __future__ import annotations

import time

import pytest
from interop_helpers import (
    DUAL,
    V4,
    V6,
    Case,
    Pair,
    check_sa_agreement,
    check_traffic,
    installed_child,
    interop,
)
from netns import ping

pytestmark = [pytest.mark.netns, pytest.mark.interop]

DIRECTIONS = pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])


@pytest.mark.slow
def test_behind_a_nat_keepalives_hold_the_mapping() -> None:
    # The router forgets an idle UDP mapping after 24 s; lockgate's keepalives (every
    # 20 s, RFC 3948 §4) must refresh it. charon's own keepalives and both sides' DPD
    # are off, so nothing else crosses the router while the tunnel idles.
    case = Case(
        nat=True,
        nat_udp_timeout=24,
        lockgate_extra={"dpd_interval": "0"},
        swan_charon=("keep_alive = 0",),
    )
    with interop(case) as world:
        topo = world.topo
        ike = world.bring_up()
        # charon sees A's public (router) address and a real NAT on lockgate's side.
        assert ike.remote_host == topo.gw_a_public4 and ike.nat_remote, ike.raw
        assert ike.local_port == "4500"
        [conn] = world.daemon.status()["connections"]
        [ike_entry] = conn["ike_sas"]
        assert ike_entry["nat"] and ike_entry["local"] == f"{topo.gw_a_wan4}[4500]"
        assert "we are behind a NAT" in world.daemon.log()
        check_sa_agreement(world)
        check_traffic(world)

        time.sleep(30)  # idle: longer than the router's UDP timeout
        counters = world.daemon.status()["counters"]
        assert counters.get("keepalives_sent", 0) >= 1, counters
        # charon → lockgate needs the router's mapping: it still exists.
        ping(topo.host_b, topo.site_a.host4, count=3)
        ping(topo.host_a, topo.site_b.host4, count=3)
        assert installed_child(world.charon_ike(), "net4").packets_in > 0


@pytest.mark.parametrize(
    ("outer", "pair"),
    [(6, DUAL), (4, V6)],
    ids=["ipv4+ipv6-in-ipv6", "ipv6-in-ipv4"],
)
@DIRECTIONS
def test_ipv6(outer: int, pair: Pair, initiates: bool) -> None:
    case = Case(lockgate_initiates=initiates, outer=outer, pairs=(pair,))
    with interop(case) as world:
        ike = world.bring_up()
        if outer == 6:
            assert (
                ike.remote_host == world.topo.gw_a_wan6 and ike.local_host == world.topo.gw_b_wan6
            )
        child = installed_child(ike, pair.name)
        assert child.local_ts == list(pair.b_nets) and child.remote_ts == list(pair.a_nets)
        check_sa_agreement(world)
        check_traffic(world)


@DIRECTIONS
def test_two_child_sas_under_one_ike_sa(initiates: bool) -> None:
    case = Case(lockgate_initiates=initiates, pairs=(V4, V6))
    with interop(case) as world:
        ike = world.bring_up()
        assert sorted(c.name for c in ike.children) == ["net4", "net6"]
        conns = world.daemon.status()["connections"]
        ike_ids = {entry["id"] for conn in conns for entry in conn["ike_sas"]}
        assert len(ike_ids) == 1, conns  # one IKE SA carries both
        sas = world.daemon.sas()
        assert sorted(sa["connection"] for sa in sas) == ["net4", "net6"]
        assert len({sa["spi_in"] for sa in sas}) == 2
        check_sa_agreement(world)
        check_traffic(world)


NARROW = Pair("net4", ("192.0.2.0/25",), ("203.0.113.0/25",))


@DIRECTIONS
def test_wider_selectors_from_strongswan_are_narrowed(initiates: bool) -> None:
    # charon's net4 covers both /24s; lockgate allows only the lower /25 of each, where
    # the hosts (.10) live. The CHILD SA gets the intersection (RFC 7296 §2.9).
    case = Case(lockgate_initiates=initiates, pairs=(NARROW,), swan_pairs=(V4,))
    with interop(case) as world:
        ike = world.bring_up()
        child = installed_child(ike, "net4")
        assert child.local_ts == ["203.0.113.0/25"] and child.remote_ts == ["192.0.2.0/25"]
        [sa] = world.daemon.sas("net4")
        assert sa["local_ts"] == ["192.0.2.0/25"] and sa["remote_ts"] == ["203.0.113.0/25"]
        check_sa_agreement(world)
        check_traffic(world)
