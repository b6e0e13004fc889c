"""Interop matrix, dead peers and big messages.

DPD: charon is killed (SIGKILL: no Delete); lockgate's liveness checks go unanswered,
it clears the SAs within its DPD timeout and, with `dpd_action = "restart"`,
establishes them again once charon is back.

Fragmentation: RSA-4096 certificates under an intermediate CA make IKE_AUTH far larger
than the fragment size (RFC 7383); it must complete in fragments, both ways.
"""

from __future__ import annotations

import re
import signal
import time

import pytest
from interop_helpers import Case, check_sa_agreement, check_traffic, interop, wait_until
from netns import ping

pytestmark = [pytest.mark.netns, pytest.mark.interop]

DPD_INTERVAL = 2.0
RETRANSMIT_TIMEOUT, RETRANSMIT_TRIES = 1.0, 2
# A liveness check is sent, retransmitted RETRANSMIT_TRIES times with waits growing by
# 1.8 (ikev2.task_manager.RetransmitPolicy), and given up after the last wait.
GIVE_UP = RETRANSMIT_TIMEOUT * (1.8 ** (RETRANSMIT_TRIES + 1) - 1) / 0.8
DPD_TIMEOUT = DPD_INTERVAL + GIVE_UP


@pytest.mark.slow
def test_dead_strongswan_is_cleared_and_restarted() -> None:
    case = Case(
        lockgate_extra={"dpd_interval": f'"{DPD_INTERVAL:g}s"', "dpd_action": '"restart"'},
        lockgate_gateway={
            "retransmit_timeout": f'"{RETRANSMIT_TIMEOUT:g}s"',
            "retransmit_tries": str(RETRANSMIT_TRIES),
        },
    )
    with interop(case) as world:
        topo = world.topo
        world.bring_up()
        check_traffic(world, size=1 << 20)
        assert world.charon.process is not None
        world.charon.process.signal(signal.SIGKILL)
        world.charon.process.popen.wait(5)
        killed = time.monotonic()

        wait_until(lambda: world.daemon.sas() == [], "lockgate to clear the SAs", DPD_TIMEOUT + 10)
        noticed = time.monotonic() - killed
        log = world.daemon.log()
        assert re.search(r"peer swan: IKE SA #1 deleted \(peer is dead", log), log[-3000:]
        # Not before the retransmissions gave up, and not after the DPD timeout (plus
        # the status poll and timer slack).
        assert GIVE_UP - 1 <= noticed <= DPD_TIMEOUT + 2, f"cleared after {noticed:.1f}s"
        assert "sending a liveness check" in log

        # charon is back with the same configuration: restart brings the tunnel up again.
        world.restart_charon()
        world.charon.wait_for_child("net4", timeout=30)
        wait_until(lambda: bool(world.daemon.sas("net4")), "lockgate's new CHILD SA", 30)
        [ike] = [i for i in world.charon.list_sas() if i.state == "ESTABLISHED"]
        assert not ike.initiator  # lockgate re-initiated
        ping(topo.host_a, topo.site_b.host4, count=3)
        check_sa_agreement(world)
        check_traffic(world, size=1 << 20)


@pytest.mark.slow
@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_rsa4096_chain_ike_auth_in_fragments(initiates: bool) -> None:
    case = Case(lockgate_initiates=initiates, auth="rsa4096", chain=True)
    with interop(case) as world:
        ike = world.bring_up()
        assert (ike.local_id, ike.remote_id) == ("gw-b.example.net", "gw-a.example.net")
        log = world.charon.logs()
        assert "reassembled fragmented IKE message" in log  # ours came in fragments
        assert "splitting IKE message" in log  # and charon had to split its own
        check_sa_agreement(world)
        check_traffic(world)
