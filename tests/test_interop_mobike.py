"""MOBIKE (RFC 4555) with a site-to-site peer: charon initiates with `mobike = yes`,
lockgate answers MOBIKE_SUPPORTED, and when gateway B's WAN address changes, charon's
UPDATE_SA_ADDRESSES moves the same IKE SA to the new address and the tunnel carries on.
"""

from __future__ import annotations

import pytest
from interop_helpers import Case, interop, wait_until
from netns import wait_for_ping

pytestmark = [pytest.mark.netns, pytest.mark.interop]

NEW_B = "198.51.100.9"


def test_a_site_to_site_peer_that_moves_keeps_its_ike_sa() -> None:
    # charon may use any local address, so it can move; lockgate only responds.
    case = Case(lockgate_initiates=False, swan_conn={"mobike": True, "local_addrs": "%any"})
    with interop(case) as world:
        ike = world.bring_up()
        topo = world.topo
        wait_for_ping(topo.host_b, topo.site_a.host4)
        (before,) = world.daemon.status()["connections"][0]["ike_sas"]
        assert before["remote"] == f"{topo.gw_b_wan4}[4500]"
        # Gateway B gets a second address; the first goes (promoted, not flushed).
        topo.gw_b.sysctl("net.ipv4.conf.wan0.promote_secondaries", 1)
        topo.gw_b.ip("addr", "add", f"{NEW_B}/24", "dev", "wan0")
        topo.gw_b.ip("addr", "del", f"{topo.gw_b_wan4}/24", "dev", "wan0")

        def moved() -> bool:
            ikes = world.daemon.status()["connections"][0]["ike_sas"]
            return [i["remote"] for i in ikes] == [f"{NEW_B}[4500]"]

        wait_until(moved, "lockgate's IKE SA to follow gateway B")
        (after,) = world.daemon.status()["connections"][0]["ike_sas"]
        assert (after["id"], after["spi_i"], after["spi_r"]) == (
            before["id"],
            before["spi_i"],
            before["spi_r"],
        )
        now = world.charon_ike()
        assert now.raw["uniqueid"] == ike.raw["uniqueid"] and now.local_host == NEW_B
        assert "IKE SA #" in world.daemon.log() and f"to {NEW_B}[4500] (MOBIKE)" in (
            world.daemon.log()
        )
        wait_for_ping(topo.host_b, topo.site_a.host4)
