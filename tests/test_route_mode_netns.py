"""Route-based connections between `lockgate daemon`s in namespaces.

Each gateway's connection is an interface of its own (mode = "route", selectors
0.0.0.0/0 and ::/0) whose static `routes` send the far site into it. Checked: pings
and a hashed transfer both ways over IPv4 and IPv6 inside; the interface goes down
when DPD declares the peer dead and comes back with the tunnel; an active/standby
pair (metrics 100 and 200 to two gateway processes) moves traffic when the active
one's WAN link is cut and back when it returns; a policy-mode and a route-mode
connection in one daemon carry traffic side by side.
"""

from __future__ import annotations

import itertools
import re
import signal
import time
from collections.abc import Iterator

import pytest
from netns import Namespace, SiteToSite, ping, site_to_site, tcp_transfer, wait_for_ping

from testkit.daemon import PSK, Daemon, start_daemon, wait_until

pytestmark = pytest.mark.netns

# Fast liveness checks: 2 s of silence, then three tries 0.5 s apart (dead after ~3.5 s).
GATEWAY_TIMERS = 'retransmit_timeout = "0.5s"\nretransmit_tries = 2'

# The second WAN link is IPv6: the first link's IPv4 /24 (SiteToSite) takes the
# documentation block that a second IPv4 link would need.
WAN2_A4, WAN2_B4 = "2001:db8:102::1", "2001:db8:102::2"


def gateway(addresses: list[str], interface: str = "lgtest0") -> str:
    listed = ", ".join(f'"{a}"' for a in addresses)
    return f"""
[gateway]
addresses = [{listed}]
id = "{addresses[0]}"
interface = "{interface}"
{GATEWAY_TIMERS}
"""


def peer(name: str, address: str, ident: str | None = None) -> str:
    return f"""
[peers.{name}]
address = "{address}"
id = "{ident or address}"
psk = "{PSK}"
"""


def route_connection(
    name: str,
    peer_name: str,
    *,
    routes: list[str] | None,
    inside: str,
    inside6: str | None = None,
    start: str = "initiate",
    metric: int = 100,
    interface: str | None = None,
) -> str:
    lines = [
        f"[connections.{name}]",
        f'peer = "{peer_name}"',
        'mode = "route"',
        f"routes = [{', '.join(f'{r!r}' for r in routes)}]".replace("'", '"') if routes else "",
        f"route_metric = {metric}",
        f'inside_address = "{inside}"',
        'esp_proposals = ["aes128gcm16"]',
        f'start = "{start}"',
        'dpd_interval = "2s"',
    ]
    if inside6 is not None:
        lines.append(f'inside_address6 = "{inside6}"')
    if interface is not None:
        lines.append(f'interface = "{interface}"')
    return "\n".join(lines) + "\n"


def link_up(ns: Namespace, ifname: str) -> bool:
    """Whether `ifname` is administratively up in `ns`."""
    flags = ns.ip("-o", "link", "show", "dev", ifname).stdout
    return bool(re.search(r"<[^>]*\bUP\b", flags))


def routes_via(ns: Namespace, ifname: str, v6: bool = False) -> str:
    return ns.ip(*(["-6"] if v6 else []), "route", "show", "dev", ifname, check=False).stdout


def logs(*daemons: Daemon) -> str:
    return "\n".join(f"--- {d.config.name} ---\n{d.proc.log()[-4000:]}" for d in daemons)


@pytest.fixture
def topo() -> Iterator[SiteToSite]:
    with site_to_site() as topology:
        yield topology


def start_static_pair(topo: SiteToSite) -> tuple[Daemon, Daemon]:
    a_site, b_site = topo.site_a, topo.site_b
    b = start_daemon(
        topo,
        topo.gw_b,
        "gwB",
        gateway([topo.gw_b_wan4])
        + peer("a", topo.gw_a_wan4)
        + route_connection("vpc", "a", routes=[a_site.subnet4, a_site.subnet6],
                           inside="198.51.100.254/30", inside6="2001:db8:ff::2/126", start="wait"),
    )  # fmt: skip
    a = start_daemon(
        topo,
        topo.gw_a,
        "gwA",
        gateway([topo.gw_a_wan4])
        + peer("b", topo.gw_b_wan4)
        + route_connection("vpc", "b", routes=[b_site.subnet4, b_site.subnet6],
                           inside="198.51.100.253/30", inside6="2001:db8:ff::1/126"),
    )  # fmt: skip
    try:
        wait_until(lambda: bool(a.sas()) and bool(b.sas()), "the CHILD SA")
    except AssertionError:
        raise AssertionError(f"no tunnel:\n{logs(a, b)}") from None
    return a, b


def test_static_routes_carry_ipv4_and_ipv6_both_ways(topo: SiteToSite) -> None:
    a, b = start_static_pair(topo)
    [sa] = a.sas()
    assert sa["local_ts"] == ["0.0.0.0/0", "::/0"] and sa["remote_ts"] == ["0.0.0.0/0", "::/0"]
    assert sa["interface"] == "lg-vpc"
    [conn] = a.status()["connections"]
    assert (conn["mode"], conn["interface"], conn["interface_up"]) == ("route", "lg-vpc", True)
    wait_until(lambda: topo.site_b.subnet6 in routes_via(topo.gw_a, "lg-vpc", v6=True), "routes")
    assert "metric 100" in routes_via(topo.gw_a, "lg-vpc")
    assert "198.51.100.253/30" in topo.gw_a.addresses("lg-vpc")
    assert "2001:db8:ff::1/126" in topo.gw_a.addresses("lg-vpc")
    # Nothing of the tunnel goes through the gateway's own TUN.
    assert routes_via(topo.gw_a, "lgtest0") == ""
    wait_for_ping(topo.host_a, topo.site_b.host4)
    ping(topo.host_a, topo.site_b.host4)
    ping(topo.host_b, topo.site_a.host4)
    wait_for_ping(topo.host_a, topo.site_b.host6)
    ping(topo.host_b, topo.site_a.host6)
    # The inside addresses answer across the tunnel (what BGP peers over).
    ping(topo.gw_a, "198.51.100.254")
    ping(topo.gw_a, "2001:db8:ff::2")
    for src, dst, far in (
        (topo.host_a, topo.host_b, topo.site_b),
        (topo.host_b, topo.host_a, topo.site_a),
    ):
        for address in (far.host4, far.host6):
            result = tcp_transfer(src, dst, address, size=5 << 20)
            assert result.received_sha256 == result.sent_sha256, address
    [sa_a] = a.sas()
    [sa_b] = b.sas()
    assert sa_a["bytes_out"] >= 10 << 20 and sa_b["bytes_out"] >= 10 << 20
    assert sa_a["drops"] == {} and sa_b["drops"] == {}


def test_the_interface_follows_the_tunnel_through_a_dead_peer(topo: SiteToSite) -> None:
    a, b = start_static_pair(topo)
    wait_until(lambda: link_up(topo.gw_a, "lg-vpc"), "A's interface up")
    wait_for_ping(topo.host_a, topo.site_b.host4)
    assert topo.site_b.subnet4 in routes_via(topo.gw_a, "lg-vpc")
    b.proc.signal(signal.SIGKILL)
    killed = time.monotonic()
    # DPD: 2 s of silence, then three unanswered checks: the interface goes down and
    # the kernel drops its routes.
    wait_until(lambda: not link_up(topo.gw_a, "lg-vpc"), "A's interface down", timeout=15)
    down_after = time.monotonic() - killed
    assert routes_via(topo.gw_a, "lg-vpc") == ""
    [conn] = a.status()["connections"]
    assert conn["interface_up"] is False
    # The peer is back: A restarts (dpd_action "restart"), and the interface comes up
    # with its addresses and routes.
    text = b.config.read_text()
    b2 = start_daemon(topo, topo.gw_b, "gwB2", text)
    wait_until(lambda: bool(a.sas()) and bool(b2.sas()), "the new CHILD SA", timeout=30)
    wait_until(lambda: link_up(topo.gw_a, "lg-vpc"), "A's interface up again")
    wait_until(lambda: topo.site_b.subnet6 in routes_via(topo.gw_a, "lg-vpc", v6=True), "routes")
    assert "2001:db8:ff::1/126" in topo.gw_a.addresses("lg-vpc")
    wait_for_ping(topo.host_a, topo.site_b.host4)
    ping(topo.host_a, topo.site_b.host6)
    print(f"interface down {down_after:.1f} s after the peer was killed")


def test_a_rekey_keeps_the_interface_up(topo: SiteToSite) -> None:
    a, _b = start_static_pair(topo)
    wait_until(lambda: link_up(topo.gw_a, "lg-vpc"), "A's interface up")
    [before] = a.sas()
    pinger = topo.host_a.spawn(
        ["ping", "-i", "0.05", "-c", "80", "-W", "1", topo.site_b.host4], stdout_pipe=True
    )
    a.command("rekey", name="vpc")
    wait_until(lambda: [sa["spi_in"] for sa in a.sas()] not in ([], [before["spi_in"]]), "rekey")
    assert link_up(topo.gw_a, "lg-vpc")
    out = pinger.popen.communicate(timeout=20)[0].decode()
    received = int(re.search(r"(\d+) received", out).group(1))  # type: ignore[union-attr]
    assert received >= 78, out


def _two_tunnels(topo: SiteToSite) -> tuple[Daemon, Daemon, Daemon]:
    """A with an active (metric 100) and a standby (200) connection to two lockgate
    processes on B's side, each on its own WAN link and address."""
    lab = topo.lab
    lab.veth(topo.gw_a, "wan1", topo.gw_b, "wan1")
    topo.gw_a.ip("-6", "addr", "add", f"{WAN2_A4}/64", "dev", "wan1", "nodad")
    topo.gw_b.ip("-6", "addr", "add", f"{WAN2_B4}/64", "dev", "wan1", "nodad")
    a_site, b_site = topo.site_a, topo.site_b
    a_nets, b_nets = [a_site.subnet4, a_site.subnet6], [b_site.subnet4, b_site.subnet6]
    b1 = start_daemon(
        topo, topo.gw_b, "gwB1",
        gateway([topo.gw_b_wan4], "lgb1tun")
        + peer("a", topo.gw_a_wan4)
        + route_connection("active", "a", routes=a_nets, inside="198.51.100.254/30",
                           start="wait", metric=100, interface="lg-b1"),
    )  # fmt: skip
    b2 = start_daemon(
        topo, topo.gw_b, "gwB2",
        gateway([WAN2_B4], "lgb2tun")
        + peer("a", WAN2_A4, topo.gw_a_wan4)
        + route_connection("standby", "a", routes=a_nets, inside="198.51.100.250/30",
                           start="wait", metric=200, interface="lg-b2"),
    )  # fmt: skip
    a = start_daemon(
        topo, topo.gw_a, "gwA",
        gateway([topo.gw_a_wan4, WAN2_A4])
        + peer("b1", topo.gw_b_wan4)
        + peer("b2", WAN2_B4)
        + route_connection("active", "b1", routes=b_nets, inside="198.51.100.253/30", metric=100)
        + route_connection("standby", "b2", routes=b_nets, inside="198.51.100.249/30", metric=200),
    )  # fmt: skip
    try:
        wait_until(lambda: len(a.sas()) == 2 and b1.sas() and b2.sas(), "both tunnels")
    except AssertionError:
        raise AssertionError(f"no tunnels:\n{logs(a, b1, b2)}") from None
    return a, b1, b2


def _received_seqs(output: str) -> list[int]:
    return [int(m) for m in re.findall(r"icmp_seq=(\d+)", output)]


def _largest_gap(seqs: list[int], interval: float) -> float:
    """The longest run of lost pings, in seconds."""
    gaps = [b - a - 1 for a, b in itertools.pairwise(seqs)]
    return max(gaps, default=0) * interval


def test_active_standby_with_static_routes_fails_over_and_back(topo: SiteToSite) -> None:
    a, b1, b2 = _two_tunnels(topo)
    wait_until(lambda: link_up(topo.gw_a, "lg-active") and link_up(topo.gw_a, "lg-standby"), "up")
    wait_for_ping(topo.host_a, topo.site_b.host4)
    by_name = {sa["connection"]: sa for sa in a.sas()}
    ping(topo.host_a, topo.site_b.host4, count=5)
    moved = {sa["connection"]: sa["packets_out"] for sa in a.sas()}
    # The pings take the metric 100; the standby carries at most the kernel's own
    # odd packet.
    assert moved["active"] >= by_name["active"]["packets_out"] + 5
    assert moved["standby"] <= by_name["standby"]["packets_out"] + 2
    interval = 0.1
    pinger = topo.host_a.spawn(
        ["ping", "-i", str(interval), "-c", "400", "-W", "1", topo.site_b.host4],
        stdout_pipe=True,
    )
    time.sleep(2)
    topo.gw_b.ip("link", "set", "wan0", "down")  # the active peer's WAN link
    cut = time.monotonic()
    wait_until(lambda: not link_up(topo.gw_a, "lg-active"), "the active interface down", timeout=15)
    failed_over = time.monotonic() - cut
    time.sleep(3)
    standby_now = {sa["connection"]: sa["packets_out"] for sa in a.sas()}["standby"]
    assert standby_now >= moved["standby"] + 20, "traffic did not move to the standby tunnel"
    topo.gw_b.ip("link", "set", "wan0", "up")
    back = time.monotonic()
    wait_until(lambda: link_up(topo.gw_a, "lg-active"), "the active interface up again", timeout=40)
    back_after = time.monotonic() - back
    time.sleep(2)
    before = {sa["connection"]: sa["packets_out"] for sa in a.sas()}
    ping(topo.host_a, topo.site_b.host4, count=5)
    after = {sa["connection"]: sa["packets_out"] for sa in a.sas()}
    assert after["active"] >= before["active"] + 5, "traffic did not move back"
    assert after["standby"] <= before["standby"] + 2
    pinger.signal(signal.SIGINT)
    out = pinger.popen.communicate(timeout=20)[0].decode()
    seqs = _received_seqs(out)
    gap = _largest_gap(seqs, interval)
    print(f"failover: active interface down {failed_over:.1f} s after the cut, largest ping "
          f"gap {gap:.1f} s; back up {back_after:.1f} s after the link returned")  # fmt: skip
    assert gap <= 10.0, out[-2000:]
    assert b1.proc.alive() and b2.proc.alive()


def test_policy_and_route_connections_in_one_daemon(topo: SiteToSite) -> None:
    """A's policy connection carries site A <-> site B through its TUN and the SPD;
    its route connection (to a second lockgate on B's side) carries a third network,
    a loopback prefix of B, through its own interface, from A's inside address (B's
    side answers it over its interface's connected route: both B processes share one
    namespace, so site A can be routed only one way there)."""
    lab = topo.lab
    lab.veth(topo.gw_a, "wan1", topo.gw_b, "wan1")
    topo.gw_a.ip("-6", "addr", "add", f"{WAN2_A4}/64", "dev", "wan1", "nodad")
    topo.gw_b.ip("-6", "addr", "add", f"{WAN2_B4}/64", "dev", "wan1", "nodad")
    topo.gw_b.ip("addr", "add", "198.51.100.225/28", "dev", "lo")
    a_site, b_site = topo.site_a, topo.site_b
    policy_b = f"""
[connections.site]
peer = "a"
local_subnets = ["{b_site.subnet4}"]
remote_subnets = ["{a_site.subnet4}"]
esp_proposals = ["aes128gcm16"]
start = "wait"
"""
    policy_a = f"""
[connections.site]
peer = "b1"
local_subnets = ["{a_site.subnet4}"]
remote_subnets = ["{b_site.subnet4}"]
esp_proposals = ["aes128gcm16"]
"""
    b1_text = gateway([topo.gw_b_wan4], "lgb1tun") + peer("a", topo.gw_a_wan4) + policy_b
    b1 = start_daemon(topo, topo.gw_b, "gwB1", b1_text)
    b2 = start_daemon(
        topo, topo.gw_b, "gwB2",
        gateway([WAN2_B4], "lgb2tun") + peer("a", WAN2_A4, topo.gw_a_wan4)
        + route_connection("vpc", "a", routes=None, inside="198.51.100.250/30",
                           start="wait", interface="lg-b2"),
    )  # fmt: skip
    a = start_daemon(
        topo, topo.gw_a, "gwA",
        gateway([topo.gw_a_wan4, WAN2_A4])
        + peer("b1", topo.gw_b_wan4) + peer("b2", WAN2_B4) + policy_a
        + route_connection("vpc", "b2", routes=["198.51.100.224/28"], inside="198.51.100.249/30"),
    )  # fmt: skip
    try:
        wait_until(lambda: len(a.sas()) == 2 and b1.sas() and b2.sas(), "both tunnels")
    except AssertionError:
        raise AssertionError(f"no tunnels:\n{logs(a, b1, b2)}") from None
    modes = {c["name"]: (c["mode"], c["interface"]) for c in a.status()["connections"]}
    assert modes == {"site": ("policy", "lgtest0"), "vpc": ("route", "lg-vpc")}
    wait_for_ping(topo.host_a, b_site.host4)
    wait_for_ping(topo.gw_a, "198.51.100.225")
    for src, dst, address in (
        (topo.host_a, topo.host_b, b_site.host4),
        (topo.gw_a, topo.gw_b, "198.51.100.225"),
    ):
        result = tcp_transfer(src, dst, address, size=1 << 20)
        assert result.received_sha256 == result.sent_sha256, address
    counts = {sa["connection"]: sa["packets_out"] for sa in a.sas()}
    assert counts["site"] > 100 and counts["vpc"] > 100
