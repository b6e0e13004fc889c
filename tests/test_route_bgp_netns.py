"""BGP over route-based tunnels, in namespaces: BIRD 2 on each gateway peers over the
tunnels' inside addresses; lockgate runs no BGP code.

    host A ── gateway A ══ WAN ══ gateway B ── host B
              BIRD AS 65001        BIRD AS 65002 (one BIRD, one or two lockgates)

The first test proves the BIRD helpers (`testkit.bird`) with a plain veth in place of
the tunnel, so a failure in the lockgate tests is about lockgate.
"""

from __future__ import annotations

import time

import pytest

from daemon.lab.netns import add_network
from testkit.bird import Session, bird_available, bird_config, run_bird
from tests.netns import SITE_A, SITE_B, Lab, Namespace, build_site_to_site, ping, wait_for_ping

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(not bird_available(), reason="BIRD is not installed (bird2)"),
]

AS_A, AS_B = 65001, 65002
# The inside addresses of the tunnels: a /30 (and a /126) per tunnel.
IN_A1, IN_B1 = "198.51.100.253", "198.51.100.254"
IN_A2, IN_B2 = "198.51.100.249", "198.51.100.250"
IN6_A1, IN6_B1 = "2001:db8:ff::1", "2001:db8:ff::2"
# A network that appears at site B later (on a veth pair inside gateway B).
LATE_NET, LATE_ADDR = "203.0.113.128/25", "203.0.113.129"
ROUTER_ID_A, ROUTER_ID_B = "198.51.100.1", "198.51.100.2"


def kernel_route(ns: Namespace, prefix: str, *, family: str = "-4") -> str:
    """The kernel's route for ``prefix`` in ``ns`` ("" if none): what forwarding uses."""
    return ns.ip(family, "route", "show", prefix).stdout.strip()


def wait_kernel_route(
    ns: Namespace, prefix: str, *, present: bool = True, family: str = "-4", timeout: float = 20
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        route = kernel_route(ns, prefix, family=family)
        if bool(route) == present:
            return route
        if time.monotonic() > deadline:
            state = "no route" if present else f"still {route!r}"
            raise AssertionError(f"{ns.name}: {state} for {prefix} after {timeout}s")
        time.sleep(0.1)


def add_late_network(gw: Namespace) -> None:
    """A new network at site B (no `dummy` module here: a veth pair in the gateway)."""
    add_network(gw, "net1", [f"{LATE_ADDR}/25"])


# ---- the helpers, with a plain veth where the tunnel will be -----------------------


def test_bird_helpers_over_a_plain_veth() -> None:
    with Lab() as lab:
        topo = build_site_to_site(lab)
        gw_a, gw_b = topo.gw_a, topo.gw_b
        lab.veth(gw_a, "tun0", gw_b, "tun0")
        gw_a.ip("addr", "add", f"{IN_A1}/30", "dev", "tun0")
        gw_b.ip("addr", "add", f"{IN_B1}/30", "dev", "tun0")
        bird_a = run_bird(
            gw_a,
            lab.tmpdir,
            "bird-a",
            bird_config(ROUTER_ID_A, ["lan0"], [Session("b1", IN_A1, AS_A, IN_B1, AS_B)]),
        )
        bird_b = run_bird(
            gw_b,
            lab.tmpdir,
            "bird-b",
            bird_config(ROUTER_ID_B, ["lan0", "net*"], [Session("a1", IN_B1, AS_B, IN_A1, AS_A)]),
        )
        seconds = bird_a.wait_established("b1")
        bird_b.wait_established("a1")
        print(f"plain veth: BGP Established after {seconds:.1f}s")
        bird_a.wait_route(SITE_B.subnet4)
        bird_b.wait_route(SITE_A.subnet4)
        [best] = [r for r in bird_a.learned()[SITE_B.subnet4] if r.best]
        assert best.protocol == "b1" and best.via and IN_B1 in best.via[0]
        assert "proto bird" in wait_kernel_route(gw_a, SITE_B.subnet4)
        wait_for_ping(topo.host_a, SITE_B.host4)
        ping(topo.host_a, SITE_B.host4, count=5, interval=0.1)

        add_late_network(gw_b)
        bird_a.wait_route(LATE_NET)
        wait_kernel_route(gw_a, LATE_NET)
        ping(topo.host_a, LATE_ADDR, count=3, interval=0.1)
        gw_b.ip("link", "del", "net1")
        bird_a.wait_route(LATE_NET, present=False)
        wait_kernel_route(gw_a, LATE_NET, present=False)

        # The link going down ends the session at once (no hold timer): what the
        # tunnel interface's carrier does for BGP.
        start = time.monotonic()
        gw_a.ip("link", "set", "tun0", "down")
        bird_a.wait_route(SITE_B.subnet4, present=False, timeout=2.5)
        assert not bird_a.established("b1")
        print(f"plain veth: withdrawn {time.monotonic() - start:.2f}s after link down")
        bird_a.stop()
        bird_b.stop()
        assert kernel_route(gw_a, SITE_B.subnet4) == ""
