"""BGP over route-based tunnels, in namespaces: BIRD 2 on each gateway peers over the
tunnels' inside addresses; lockgate runs no BGP code.

    host A ── gateway A ══ WAN ══ gateway B ── host B
              BIRD AS 65001        BIRD AS 65002 (one BIRD, one or two lockgates)

The first test proves the BIRD helpers (`testkit.bird`) with a plain veth in place of
the tunnel, so a failure in the lockgate tests is about lockgate.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import signal
import time
from typing import Any

import pytest

from daemon.lab.netns import WAN_A4, WAN_B4, Process, SiteToSite, add_network
from testkit.bird import Bird, Session, bird_available, bird_config, run_bird
from testkit.daemon import PSK, Daemon, start_daemon, wait_until
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
LATE6_NET, LATE6_ADDR = "2001:db8:b:1::/64", "2001:db8:b:1::1"
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
        # tunnel interface going down does for BGP.
        start = time.monotonic()
        gw_a.ip("link", "set", "tun0", "down")
        bird_a.wait_route(SITE_B.subnet4, present=False, timeout=2.5)
        assert not bird_a.established("b1")
        print(f"plain veth: withdrawn {time.monotonic() - start:.2f}s after link down")
        bird_a.stop()
        bird_b.stop()
        assert kernel_route(gw_a, SITE_B.subnet4) == ""


# ---- BGP over lockgate's route-based tunnels ----------------------------------------

WAN_B4_SECOND = "198.51.100.3"
"""Gateway B's second address: the second lockgate process on B's side listens on it."""

# Fast dead peer detection: a liveness check after 2 s of silence, resent after 0.5 s
# and 0.9 s, so a peer that vanished is known dead within about 5 s.
FAST_DPD = 'dpd_interval = "2s"\n'
FAST_RETRANSMIT = "retransmit_timeout = 0.5\nretransmit_tries = 2\n"


@dataclasses.dataclass(frozen=True)
class Tunnel:
    """One route-mode connection as one end sees it."""

    name: str
    peer_address: str
    interface: str
    inside4: str
    inside6: str | None = None


def route_config(me: str, tun: str, tunnels: list[Tunnel], *, start: str) -> str:
    """A lockgate configuration with one route-mode connection per tunnel (and a peer
    each), no `routes`: BGP decides what enters them."""
    text = f"""
[gateway]
addresses = ["{me}"]
id = "{me}"
interface = "{tun}"
{FAST_RETRANSMIT}
"""
    for t in tunnels:
        inside6 = f'inside_address6 = "{t.inside6}"\n' if t.inside6 else ""
        text += f"""
[peers.{t.name}]
address = "{t.peer_address}"
id = "{t.peer_address}"
psk = "{PSK}"

[connections.{t.name}]
peer = "{t.name}"
mode = "route"
interface = "{t.interface}"
inside_address = "{t.inside4}"
{inside6}esp_proposals = ["aes128gcm16"]
start = "{start}"
{FAST_DPD}"""
    return text


def connection(daemon: Daemon, name: str) -> dict[str, Any]:
    [conn] = [c for c in daemon.status()["connections"] if c["name"] == name]
    return dict(conn)


def wait_tunnels(daemon: Daemon, *names: str, timeout: float = 20) -> None:
    wait_until(
        lambda: all(daemon.sas(n) for n in names), f"CHILD SAs of {', '.join(names)}", timeout
    )


def link_up(ns: Namespace, ifname: str) -> bool:
    """The interface exists, is up and has carrier (what routing and BIRD look at)."""
    out = ns.ip("-br", "link", "show", "dev", ifname, check=False).stdout
    return bool(out) and "LOWER_UP" in out and "NO-CARRIER" not in out


def ping_log(ns: Namespace, dest: str, *, count: int, interval: float) -> Process:
    """Start `ping -D` in ``ns`` (one timestamped line per reply), a lab process."""
    deadline = int(count * interval) + 20
    return ns.spawn(
        ["ping", "-n", "-D", "-i", str(interval), "-c", str(count), "-w", str(deadline), dest],
        name="ping",
        stdout_pipe=True,
    )


_REPLY = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)")


def reply_gap(output: str) -> tuple[float, int, int]:
    """(the longest time between two replies in seconds, replies, last icmp_seq)."""
    stamps = [(float(m[1]), int(m[2])) for m in map(_REPLY.match, output.splitlines()) if m]
    assert stamps, output[-2000:]
    gap = max((b[0] - a[0] for a, b in itertools.pairwise(stamps)), default=0.0)
    return gap, len(stamps), stamps[-1][1]


def _bgp_pair(topo: SiteToSite, *, hold: int = 3) -> tuple[Daemon, Daemon, Bird, Bird]:
    """One tunnel A-B in route mode, BIRD on both gateways peering over it (IPv4 and
    IPv6 sessions), Established."""
    lab = topo.lab
    b = start_daemon(
        topo,
        topo.gw_b,
        "b",
        route_config(
            WAN_B4,
            "lgtest0",
            [Tunnel("a", WAN_A4, "lg-a", f"{IN_B1}/30", f"{IN6_B1}/126")],
            start="wait",
        ),
    )
    a = start_daemon(
        topo,
        topo.gw_a,
        "a",
        route_config(
            WAN_A4,
            "lgtest0",
            [Tunnel("b", WAN_B4, "lg-b", f"{IN_A1}/30", f"{IN6_A1}/126")],
            start="initiate",
        ),
    )
    wait_tunnels(a, "b")
    wait_tunnels(b, "a")
    sessions_a = [
        Session("b4", IN_A1, AS_A, IN_B1, AS_B),
        Session("b6", IN6_A1, AS_A, IN6_B1, AS_B),
    ]
    sessions_b = [
        Session("a4", IN_B1, AS_B, IN_A1, AS_A),
        Session("a6", IN6_B1, AS_B, IN6_A1, AS_A),
    ]
    bird_a = run_bird(
        topo.gw_a, lab.tmpdir, "bird-a", bird_config(ROUTER_ID_A, ["lan0"], sessions_a, hold=hold)
    )
    bird_b = run_bird(
        topo.gw_b,
        lab.tmpdir,
        "bird-b",
        bird_config(ROUTER_ID_B, ["lan0", "net*"], sessions_b, hold=hold),
    )
    bird_a.wait_established("b4", "b6")
    bird_b.wait_established("a4", "a6")
    return a, b, bird_a, bird_b


def test_bgp_over_the_tunnel_learns_the_far_lan_and_networks_that_appear_later() -> None:
    with Lab() as lab:
        topo = build_site_to_site(lab)
        # A long hold time: whatever ends the sessions quickly below is the interface.
        a, b, bird_a, bird_b = _bgp_pair(topo, hold=30)
        assert connection(a, "b")["mode"] == "route"
        assert connection(a, "b")["interface"] == "lg-b"
        for bird, prefix, hop in (
            (bird_a, SITE_B.subnet4, "lg-b"),
            (bird_a, SITE_B.subnet6, "lg-b"),
            (bird_b, SITE_A.subnet4, "lg-a"),
            (bird_b, SITE_A.subnet6, "lg-a"),
        ):
            bird.wait_route(prefix)
            family = "-6" if ":" in prefix else "-4"
            route = wait_kernel_route(bird.ns, prefix, family=family)
            assert f"dev {hop}" in route and "proto bird" in route, route
        print("A learned:", {p: r[0].via for p, r in bird_a.learned().items()})
        for host, dest in (
            (topo.host_a, SITE_B.host4),
            (topo.host_a, SITE_B.host6),
            (topo.host_b, SITE_A.host4),
        ):
            wait_for_ping(host, dest)
            ping(host, dest, count=5, interval=0.1)

        # A network appears at B: A's hosts reach it with no lockgate change (the
        # selectors are 0.0.0.0/0 and ::/0), and withdrawing it removes it at A.
        add_network(topo.gw_b, "net1", [f"{LATE_ADDR}/25", f"{LATE6_ADDR}/64"])
        for prefix in (LATE_NET, LATE6_NET):
            seconds = bird_a.wait_route(prefix)
            print(f"A learned {prefix} after {seconds:.1f}s")
        wait_kernel_route(topo.gw_a, LATE_NET)
        ping(topo.host_a, LATE_ADDR, count=3, interval=0.1)
        ping(topo.host_a, LATE6_ADDR, count=3, interval=0.1)
        topo.gw_b.ip("link", "del", "net1")
        bird_a.wait_route(LATE_NET, present=False)
        bird_a.wait_route(LATE6_NET, present=False)
        wait_kernel_route(topo.gw_a, LATE_NET, present=False)
        assert ping(topo.host_a, LATE_ADDR, count=1, deadline=1, check=False).returncode != 0

        # The tunnel goes down (B's daemon stops and deletes its SAs): lg-b goes
        # down, and BIRD withdraws at once, well within the 30 s hold time.
        start = time.monotonic()
        b.proc.stop()
        bird_a.wait_route(SITE_B.subnet4, present=False, timeout=5)
        seconds = time.monotonic() - start
        print(f"A withdrew {SITE_B.subnet4} {seconds:.2f}s after B's daemon stopped")
        assert not link_up(topo.gw_a, "lg-b")
        assert not bird_a.established("b4")
        wait_kernel_route(topo.gw_a, SITE_B.subnet4, present=False, timeout=2)


def test_active_active_tunnels_fail_over_when_a_gateway_dies() -> None:
    """A has two route-mode connections, to two lockgate processes on B's side (two
    addresses of gateway B); BIRD on both sides peers over both tunnels and prefers
    the first (local preference 200 over 100). B's first lockgate is SIGKILLed under
    a 100/s ping: the pings move to the second tunnel."""
    with Lab() as lab:
        topo = build_site_to_site(lab)
        topo.gw_b.ip("addr", "add", f"{WAN_B4_SECOND}/24", "dev", "wan0")
        b1 = start_daemon(
            topo,
            topo.gw_b,
            "b1",
            route_config(
                WAN_B4, "lgtest1", [Tunnel("a", WAN_A4, "lg-a1", f"{IN_B1}/30")], start="wait"
            ),
        )
        start_daemon(
            topo,
            topo.gw_b,
            "b2",
            route_config(
                WAN_B4_SECOND,
                "lgtest2",
                [Tunnel("a", WAN_A4, "lg-a2", f"{IN_B2}/30")],
                start="wait",
            ),
        )
        a = start_daemon(
            topo,
            topo.gw_a,
            "a",
            route_config(
                WAN_A4,
                "lgtest0",
                [
                    Tunnel("b1", WAN_B4, "lg-b1", f"{IN_A1}/30"),
                    Tunnel("b2", WAN_B4_SECOND, "lg-b2", f"{IN_A2}/30"),
                ],
                start="initiate",
            ),
        )
        wait_tunnels(a, "b1", "b2")
        bird_a = run_bird(
            topo.gw_a,
            lab.tmpdir,
            "bird-a",
            bird_config(
                ROUTER_ID_A,
                ["lan0"],
                [
                    Session("b1", IN_A1, AS_A, IN_B1, AS_B, local_pref=200),
                    Session("b2", IN_A2, AS_A, IN_B2, AS_B, local_pref=100),
                ],
            ),
        )
        bird_b = run_bird(
            topo.gw_b,
            lab.tmpdir,
            "bird-b",
            bird_config(
                ROUTER_ID_B,
                ["lan0"],
                [
                    Session("a1", IN_B1, AS_B, IN_A1, AS_A, local_pref=200),
                    Session("a2", IN_B2, AS_B, IN_A2, AS_A, local_pref=100),
                ],
            ),
        )
        bird_a.wait_established("b1", "b2")
        bird_b.wait_established("a1", "a2")
        bird_a.wait_route(SITE_B.subnet4, via=("b1", "b2"))
        # Both tunnels carry the route; the first is the best.
        routes = bird_a.learned()[SITE_B.subnet4]
        assert {r.protocol for r in routes} == {"b1", "b2"}, routes
        assert routes[0].protocol == "b1" and routes[0].best
        assert "dev lg-b1" in wait_kernel_route(topo.gw_a, SITE_B.subnet4)
        wait_for_ping(topo.host_a, SITE_B.host4)

        # 100 pings a second for 15 s; B's first gateway dies 3 s in, without a word.
        pinger = ping_log(topo.host_a, SITE_B.host4, count=1500, interval=0.01)
        time.sleep(3)
        killed = time.monotonic()
        b1.proc.signal(signal.SIGKILL)
        wait_until(
            lambda: "dev lg-b2" in kernel_route(topo.gw_a, SITE_B.subnet4),
            "A to route into the second tunnel",
            timeout=10,
        )
        moved = time.monotonic() - killed
        out, _ = pinger.popen.communicate(timeout=40)
        # ping -c with -w: exit status 0 once all 1500 replies came back in time.
        assert pinger.popen.returncode == 0, out.decode()[-1000:]
        gap, replies, last_seq = reply_gap(out.decode())
        down = connection(a, "b1").get("interface_up")
        print(
            f"active/active: route moved to lg-b2 {moved:.2f}s after SIGKILL; longest gap "
            f"between replies {gap:.2f}s; {replies} replies to {last_seq} requests; "
            f"lg-b1 up: {down}"
        )
        assert gap < 10, f"failover gap {gap:.2f}s"
        assert not bird_a.established("b1") and bird_a.established("b2")
        ping(topo.host_a, SITE_B.host4, count=5, interval=0.1)
        # DPD (2 s) then finds the first peer dead and takes its interface down.
        wait_until(lambda: not link_up(topo.gw_a, "lg-b1"), "lg-b1 to go down", timeout=15)
