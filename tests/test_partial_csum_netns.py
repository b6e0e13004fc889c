"""Partial TCP checksums inside ESP, end to end in namespaces.

Two `lockgate daemon`s agree on it in IKE_SA_INIT: gateway A's TUN then hands over
TSO super-packets, their segments leave with the kernel's pseudo-header sum, and
gateway B's kernel completes them. A hashed 20 MB TCP transfer must arrive intact,
with the segments counted on both sides. With strongSwan as the peer nothing of it
happens: no agreement, TSO stays off, full checksums. Both run with
`LOCKGATE_OFFLOAD=tso-lockgate`, the mode that turns TSO on for lockgate peers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from interop_helpers import Case, check_traffic, interop
from netns import SiteToSite, ping, site_to_site, tcp_transfer, wait_for_ping

from testkit.daemon import Daemon, config, start_daemon, wait_until

pytestmark = pytest.mark.netns

SIZE = 20 << 20


def _lockgates(topo: SiteToSite) -> tuple[Daemon, Daemon]:
    a_nets = [topo.site_a.subnet4, topo.site_a.subnet6]
    b_nets = [topo.site_b.subnet4, topo.site_b.subnet6]
    b = start_daemon(
        topo,
        topo.gw_b,
        "gwB",
        config(me=topo.gw_b_wan4, peer=topo.gw_a_wan4, local=b_nets, remote=a_nets,
               start="wait"),
    )  # fmt: skip
    a = start_daemon(
        topo,
        topo.gw_a,
        "gwA",
        config(me=topo.gw_a_wan4, peer=topo.gw_b_wan4, local=a_nets, remote=b_nets,
               start="initiate"),
    )  # fmt: skip
    try:
        wait_until(lambda: bool(a.sas()) and bool(b.sas()), "the CHILD SA")
    except AssertionError:
        raise AssertionError(
            f"no tunnel:\n--- A ---\n{a.proc.log()[-3000:]}\n--- B ---\n{b.proc.log()[-3000:]}"
        ) from None
    return a, b


@pytest.fixture
def topo() -> Iterator[SiteToSite]:
    with site_to_site() as built:
        yield built


def test_two_lockgates_carry_a_transfer_with_partial_checksums(
    topo: SiteToSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCKGATE_OFFLOAD", "tso-lockgate")  # the daemons inherit it
    a, b = _lockgates(topo)
    [sa_a] = a.sas()
    [sa_b] = b.sas()
    assert sa_a["partial_csum"] and sa_b["partial_csum"]
    assert "TSO on lgtest0 on" in a.proc.log()
    wait_for_ping(topo.host_a, topo.site_b.host6)
    ping(topo.host_a, topo.site_b.host4)
    result = tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host4, size=SIZE, timeout=120)
    assert result.received_sha256 == result.sent_sha256
    assert result.received_bytes == SIZE
    back = tcp_transfer(topo.host_b, topo.host_a, topo.site_a.host6, size=4 << 20, timeout=60)
    assert back.received_sha256 == back.sent_sha256
    sent = a.status()["counters"]
    received = b.status()["counters"]
    assert sent.get("tso_frames_read", 0) > 0
    assert sent.get("partial_segments_sent", 0) > 0
    assert received.get("partial_segments_received", 0) > 0
    # The way back (IPv6 inner) took the same path from B to A.
    assert b.status()["counters"].get("partial_segments_sent", 0) > 0
    for daemon in (a, b):
        [sa] = daemon.sas()
        assert sa["drops"] == {}, sa
        drops = daemon.status()["drops"]
        assert drops.get("malformed", 0) == 0 and drops.get("bad_next_header", 0) == 0
    assert "Traceback" not in a.proc.log() + b.proc.log()


@pytest.mark.interop
def test_with_strongswan_as_the_peer_it_stays_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCKGATE_OFFLOAD", "tso-lockgate")  # lockgate inherits it
    with interop(Case()) as world:
        world.bring_up()
        daemon = world.daemon
        [sa] = daemon.sas()
        assert sa["partial_csum"] is False
        check_traffic(world, size=8 << 20)
        counters = daemon.status()["counters"]
        assert counters.get("tso_frames_read", 0) == 0
        assert counters.get("partial_segments_sent", 0) == 0
        assert counters.get("partial_segments_received", 0) == 0
        assert "TSO on" not in daemon.log()
