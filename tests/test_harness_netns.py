"""The namespace harness itself: topology, routing, NAT, traffic checks and cleanup."""

from __future__ import annotations

import os

import pytest
from netns import (
    NAT_IN4,
    HarnessError,
    Lab,
    namespace_exists,
    ping,
    site_to_site,
    tcp_transfer,
)

pytestmark = pytest.mark.netns


def test_site_to_site_routes_only_through_a_tunnel_and_cleans_up() -> None:
    with site_to_site() as topo:
        names = [ns.name for ns in (topo.host_a, topo.gw_a, topo.gw_b, topo.host_b)]
        assert all(str(os.getpid()) in name for name in names)
        ping(topo.host_a, topo.site_a.gateway4)
        ping(topo.host_a, topo.site_a.gateway6)
        ping(topo.gw_a, topo.gw_b_wan4)
        ping(topo.gw_a, topo.gw_b_wan6)
        # Without a tunnel, the far site is unreachable: nothing leaks in the clear.
        with pytest.raises(HarnessError, match=r"ping 203\.0\.113\.10 "):
            ping(topo.host_a, topo.site_b.host4, count=1, deadline=1)
        topo.route_in_clear()
        ping(topo.host_a, topo.site_b.host4)
        ping(topo.host_a, topo.site_b.host6)
        result = tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host6, size=2 * 1024 * 1024)
        assert result.received_bytes == 2 * 1024 * 1024
        assert result.sent_sha256 == result.received_sha256
        assert result.peer_address == topo.site_a.host6
    assert not any(namespace_exists(name) for name in names)


def test_nat_router_masquerades_gateway_a() -> None:
    with site_to_site(nat=True) as topo:
        assert topo.nat is not None
        ping(topo.gw_a, NAT_IN4)
        ping(topo.gw_a, topo.gw_b_wan4)
        result = tcp_transfer(topo.gw_a, topo.gw_b, topo.gw_b_wan4, size=1024 * 1024)
        # Gateway B sees the router's outside address, not gateway A's own.
        assert topo.gw_a_wan4 != topo.gw_a_public4
        assert result.peer_address == topo.gw_a_public4
        result6 = tcp_transfer(topo.gw_a, topo.gw_b, topo.gw_b_wan6, size=256 * 1024)
        assert result6.peer_address == topo.gw_a_public6
        nat_name = topo.nat.name
    assert not namespace_exists(nat_name)


def test_processes_are_stopped_by_pid_even_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        ns = lab.namespace("proc")
        sleeper = ns.spawn(["sleep", "300"])
        # SIGTERM ignored: the lab must escalate to SIGKILL of the process group.
        stubborn = ns.spawn(["sh", "-c", "trap '' TERM; sleep 300"])
        pids = (sleeper.pid, stubborn.pid)
        raise RuntimeError("boom")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not namespace_exists(ns.name)


def test_keyboard_interrupt_still_cleans_up() -> None:
    with pytest.raises(KeyboardInterrupt), site_to_site() as topo:
        sleeper = topo.gw_a.spawn(["sleep", "300"])
        names = [ns.name for ns in topo.lab.namespaces]
        raise KeyboardInterrupt
    with pytest.raises(ProcessLookupError):
        os.kill(sleeper.pid, 0)
    assert not any(namespace_exists(name) for name in names)


def test_tcp_transfer_fails_when_nothing_arrives() -> None:
    with Lab() as lab:
        a, b = lab.namespace("a"), lab.namespace("b")
        lab.veth(a, "v0", b, "v0")
        a.ip("addr", "add", "192.0.2.1/24", "dev", "v0")
        b.ip("addr", "add", "192.0.2.2/24", "dev", "v0")
        ok = tcp_transfer(a, b, "192.0.2.2", size=64 * 1024, port=5202, timeout=5)
        assert ok.peer_address == "192.0.2.1"
        # Nobody answers at .3: the helper must raise, not report success.
        with pytest.raises(HarnessError):
            tcp_transfer(a, b, "192.0.2.3", size=64 * 1024, port=5202, timeout=3)
