"""Interop matrix, route-based: lockgate in route mode against a strongSwan peer
configured the route-based way, in both roles.

charon's child has 0.0.0.0/0 and ::/0 as both selectors, with `install_routes = no`
and a `fwmark` on charon's routing rule: kernel-libipsec routes the remote selectors
(everything) into `ipsec0` through table 220 whatever `install_routes` says, and the
mark keeps that table unused. The test routes lockgate's LAN into `ipsec0` by hand,
as an operator (or a routing daemon) would. lockgate's connection is `mode = "route"`
with `routes` for charon's LAN and inside addresses. Checked: both sides' SAs agree
and carry the 0/0 selectors, lockgate's interface has carrier exactly while the
CHILD SA is up, pings and a hashed transfer cross both ways over IPv4 and IPv6.
"""

from __future__ import annotations

import json
import re

import pytest
from interop_helpers import (
    Case,
    Interop,
    Pair,
    check_sa_agreement,
    installed_child,
    interop,
    wait_until,
)
from netns import SITE_A, SITE_B, Namespace, ping, tcp_transfer, wait_for_ping

pytestmark = [pytest.mark.netns, pytest.mark.interop]

ANY = ("0.0.0.0/0", "::/0")
ROUTED = Pair("vpc", ANY, ANY)
INTERFACE = "lg-vpc"  # lockgate's default: "lg-" + the connection name
# The inside /30 and /126: lockgate takes the first address, charon's ipsec0 the second.
INSIDE_LG, INSIDE6_LG = "198.51.100.253/30", "2001:db8:ff::1/126"
INSIDE_SWAN, INSIDE6_SWAN = "198.51.100.254/30", "2001:db8:ff::2/126"
TRANSFER = 1 << 20
SWAN_FWMARK = "0x4c47"


def route_case(lockgate_initiates: bool) -> Case:
    return Case(
        lockgate_initiates=lockgate_initiates,
        pairs=(ROUTED,),
        lockgate_extra={
            "mode": '"route"',
            "routes": json.dumps([SITE_B.subnet4, SITE_B.subnet6]),
            "inside_address": json.dumps(INSIDE_LG),
            "inside_address6": json.dumps(INSIDE6_LG),
        },
        swan_install_routes=False,
        # kernel-libipsec (5.9.8) installs its routes whatever install_routes says:
        # 0/0 in table 220 would swallow everything, the site's LAN included. Its rule
        # then only applies to marked packets, and the lab marks none.
        swan_charon=(f"plugins {{ kernel-netlink {{ fwmark = {SWAN_FWMARK} }} }}",),
    )


def carrier(ns: Namespace, ifname: str) -> bool:
    """The interface exists, is up and has carrier (what the kernel's routing needs).

    lockgate takes a route-mode interface down administratively without a CHILD SA,
    which clears both."""
    out = ns.ip("-br", "link", "show", "dev", ifname, check=False).stdout
    return bool(out) and "LOWER_UP" in out and "NO-CARRIER" not in out


def exists(ns: Namespace, ifname: str) -> bool:
    return bool(ns.ip("link", "show", "dev", ifname, check=False).stdout)


def routes_via(ns: Namespace, ifname: str, family: str = "-4") -> str:
    return ns.ip(family, "route", "show", "dev", ifname, check=False).stdout


def route_charon_side(world: Interop) -> None:
    """What the strongSwan operator adds: lockgate's LAN (and the inside /30) via ipsec0."""
    gw_b = world.topo.gw_b
    wait_until(lambda: exists(gw_b, "ipsec0"), "charon's ipsec0", timeout=10)
    gw_b.ip("link", "set", "dev", "ipsec0", "up")
    gw_b.ip("addr", "add", INSIDE_SWAN, "dev", "ipsec0")
    gw_b.ip("-6", "addr", "add", INSIDE6_SWAN, "dev", "ipsec0", "nodad")
    gw_b.ip("route", "add", SITE_A.subnet4, "dev", "ipsec0")
    gw_b.ip("-6", "route", "add", SITE_A.subnet6, "dev", "ipsec0")


def bring_up(world: Interop) -> None:
    """Start lockgate; the case's initiator brings the tunnel up; both sides see it."""
    daemon = world.start_lockgate()
    if not world.case.lockgate_initiates:
        # Waiting for charon: no CHILD SA yet, so the interface has no carrier.
        wait_until(lambda: exists(world.topo.gw_a, INTERFACE), "lockgate's interface")
        assert not carrier(world.topo.gw_a, INTERFACE)
        assert daemon.connection("vpc")["interface_up"] is False
        world.charon.initiate("vpc", ike="s2s")
    world.charon.wait_for_child("vpc", timeout=20)
    wait_until(lambda: bool(daemon.sas("vpc")), "lockgate's CHILD SA")


def check_route_traffic(world: Interop) -> None:
    """Pings both ways and a hashed transfer each way, over IPv4 and IPv6 inside."""
    topo = world.topo
    before = {sa["unique_id"]: (sa["bytes_in"], sa["bytes_out"]) for sa in world.daemon.sas()}
    for host_a, host_b in ((SITE_A.host4, SITE_B.host4), (SITE_A.host6, SITE_B.host6)):
        wait_for_ping(topo.host_a, host_b, timeout=10)
        ping(topo.host_a, host_b, count=3)
        ping(topo.host_b, host_a, count=3)
        for src, dst, address, source in (
            (topo.host_a, topo.host_b, host_b, host_a),
            (topo.host_b, topo.host_a, host_a, host_b),
        ):
            result = tcp_transfer(src, dst, address, size=TRANSFER)
            assert result.received_sha256 == result.sent_sha256, address
            assert result.received_bytes == TRANSFER
            assert result.peer_address == source  # no NAT inside the tunnel
    # The inside addresses answer across the tunnel (what a BGP session would use).
    ping(topo.gw_a, INSIDE_SWAN.split("/")[0], count=2)
    ping(topo.gw_b, INSIDE6_LG.split("/")[0], count=2)
    [sa] = world.daemon.sas("vpc")
    old_in, old_out = before.get(sa["unique_id"], (0, 0))
    # Two versions, each a transfer both ways: at least 2 MB in each direction.
    assert sa["bytes_in"] - old_in >= 2 * TRANSFER and sa["bytes_out"] - old_out >= 2 * TRANSFER
    assert sa["drops"] == {}, sa
    child = installed_child(world.charon_ike(), "vpc")
    assert child.bytes_in >= 2 * TRANSFER and child.bytes_out >= 2 * TRANSFER, child.raw


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_route_based_strongswan_peer(initiates: bool) -> None:
    with interop(route_case(initiates)) as world:
        topo = world.topo
        route_charon_side(world)
        bring_up(world)
        # Both sides: one IKE SA, one CHILD SA with 0.0.0.0/0 and ::/0 both ways.
        ike = check_sa_agreement(world)
        child = installed_child(ike, "vpc")
        assert sorted(child.local_ts) == sorted(ANY) == sorted(child.remote_ts), child.raw
        [sa] = world.daemon.sas("vpc")
        assert sorted(sa["local_ts"]) == sorted(ANY) == sorted(sa["remote_ts"]), sa
        assert sa["interface"] == INTERFACE
        # lockgate's interface is up with its addresses and routes; charon's own
        # routes (table 220) are out of the way: its rule wants the mark.
        conn = world.daemon.connection("vpc")
        assert (conn["mode"], conn["interface"], conn["interface_up"]) == (
            "route",
            INTERFACE,
            True,
        )
        assert carrier(topo.gw_a, INTERFACE)
        wait_until(lambda: SITE_B.subnet6 in routes_via(topo.gw_a, INTERFACE, "-6"), "routes")
        assert SITE_B.subnet4 in routes_via(topo.gw_a, INTERFACE)
        assert INSIDE_LG in topo.gw_a.addresses(INTERFACE)
        assert INSIDE6_LG in topo.gw_a.addresses(INTERFACE)
        for family in ("-4", "-6"):
            rules = topo.gw_b.ip(family, "rule", "show").stdout
            assert re.search(rf"fwmark {SWAN_FWMARK} lookup 220\b", rules), rules
            assert "from all lookup 220" not in rules, rules

        check_route_traffic(world)
        assert carrier(topo.gw_a, INTERFACE)

        # charon closes the IKE SA: lockgate's CHILD SA goes, and its interface with it.
        assert world.charon.terminate(ike="s2s")
        wait_until(lambda: not world.daemon.sas("vpc"), "lockgate's CHILD SA to go")
        wait_until(lambda: not carrier(topo.gw_a, INTERFACE), "lockgate's interface down")
        assert world.daemon.connection("vpc")["interface_up"] is False
        assert routes_via(topo.gw_a, INTERFACE) == ""
        if initiates:
            # lockgate wants the connection up: it initiates again after its back-off,
            # and the interface comes back with its routes.
            wait_until(lambda: bool(world.daemon.sas("vpc")), "the CHILD SA again")
            wait_until(lambda: carrier(topo.gw_a, INTERFACE), "lockgate's interface up again")
            wait_for_ping(topo.host_a, SITE_B.host4, timeout=10)
            ping(topo.host_b, SITE_A.host6, count=2)
        else:
            # Waiting for charon: the interface stays down.
            assert not carrier(topo.gw_a, INTERFACE)
