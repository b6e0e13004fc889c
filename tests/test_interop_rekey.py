"""Interop matrix, lifetimes: lifetimes of seconds make CHILD SAs and the IKE
SA rekey over and over while `ping -i 0.01` runs through the tunnel; not one echo may
be lost (make-before-break, RFC 7296 §2.8 and §1.3.2). Once lockgate drives every
rekey (its lifetimes are short, charon's long), once charon does.
"""

from __future__ import annotations

import re

import pytest
from interop_helpers import Case, interop
from netns import wait_for_ping

pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.slow]

PINGS = 2000  # 20 s at 0.01 s
MIN_REKEYS = 3

LOCKGATE_REKEYS = Case(
    lockgate_initiates=True,
    lockgate_extra={"child_lifetime": '"6s"', "ike_lifetime": '"9s"', "rekey_margin": '"3s"'},
)
# Explicit hard lifetimes and jitter: charon's defaults (hard = soft + 10%, jitter the
# whole 10%) let a lifetime of seconds expire before its rekey finished.
STRONGSWAN_REKEYS = Case(
    lockgate_initiates=False,
    swan_conn={"rekey_time": "6s", "over_time": "10s", "extra": {"rand_time": "1s"}},
    swan_child={"rekey_time": "4s", "life_time": "12s", "extra": {"rand_time": "1s"}},
)


@pytest.mark.parametrize(
    "case", [LOCKGATE_REKEYS, STRONGSWAN_REKEYS], ids=["lockgate-rekeys", "strongswan-rekeys"]
)
def test_no_ping_lost_across_rekeys(case: Case) -> None:
    with interop(case) as world:
        topo = world.topo
        world.bring_up()
        wait_for_ping(topo.host_a, topo.site_b.host4)
        pinger = topo.host_a.spawn(
            ["ping", "-n", "-q", "-c", str(PINGS), "-i", "0.01", "-W", "2", topo.site_b.host4],
            name="ping-across-rekeys",
            stdout_pipe=True,
        )
        assert pinger.popen.stdout is not None
        out = pinger.popen.stdout.read().decode()
        pinger.popen.wait(10)
        log = world.daemon.log()

        assert f"{PINGS} packets transmitted, {PINGS} received" in out, out
        assert " 0% packet loss" in out, out
        child_rekeys = re.findall(r"connection net4: CHILD SA #\d+ installed \(rekeys #\d+\)", log)
        ike_rekeys = re.findall(r"peer swan: IKE SA #\d+ rekeyed, #\d+ replaces it", log)
        assert len(child_rekeys) >= MIN_REKEYS, child_rekeys
        assert len(ike_rekeys) >= MIN_REKEYS, ike_rekeys
        # Each rekey was started by the side whose lifetimes are short.
        ours_child = log.count(": rekeying CHILD SA net4")
        ours_ike = log.count(": rekeying the IKE SA")
        theirs_ike = log.count(": peer rekeys the IKE SA")
        if case is LOCKGATE_REKEYS:
            assert ours_child >= MIN_REKEYS and ours_ike >= MIN_REKEYS and theirs_ike == 0
        else:
            assert ours_child == 0 and ours_ike == 0 and theirs_ike >= MIN_REKEYS
        assert "Traceback" not in log
        world.charon.wait_for_child("net4")
        assert world.daemon.sas("net4")


# strongSwan as the responder rekeys the CHILD SA every 6 s with PFS (ecp256) and the
# IKE SA every 10 s; lockgate initiated the IKE SA and its own lifetimes are long, so
# every rekey is strongSwan's and lockgate answers it. The CHILD SA's hard lifetime is
# explicit: swanctl's default, rekey_time * 110 / 100 in whole seconds, is 6 s for 6 s,
# and a CHILD SA whose hard lifetime equals its soft one is never rekeyed; charon then
# deletes it at expiry and negotiates a fresh one afterwards ("scheduling CHILD_SA
# recreate after hard expire"), a gap in its own data plane that loses pings with any
# peer, a second charon as much as lockgate.
RESPONDER_REKEYS = Case(
    lockgate_initiates=True,
    esp="aes128gcm16-ecp256",
    swan_conn={"rekey_time": "10s"},
    swan_child={"rekey_time": "6s", "life_time": "8s", "extra": {"rand_time": "0s"}},
)
SLOW_PINGS = 300  # 30 s at 0.1 s


def test_no_ping_lost_when_the_responder_rekeys_with_pfs() -> None:
    with interop(RESPONDER_REKEYS) as world:
        topo = world.topo
        world.bring_up()
        wait_for_ping(topo.host_a, topo.site_b.host4)
        pinger = topo.host_a.spawn(
            ["ping", "-n", "-q", "-c", str(SLOW_PINGS), "-i", "0.1", "-W", "2",
             topo.site_b.host4],
            name="ping-across-responder-rekeys",
            stdout_pipe=True,
        )  # fmt: skip
        assert pinger.popen.stdout is not None
        out = pinger.popen.stdout.read().decode()
        pinger.popen.wait(10)
        log = world.daemon.log()

        assert f"{SLOW_PINGS} packets transmitted, {SLOW_PINGS} received" in out, out
        assert " 0% packet loss" in out, out
        child_rekeys = re.findall(r"connection net4: CHILD SA #\d+ installed \(rekeys #\d+\)", log)
        theirs_ike = log.count(": peer rekeys the IKE SA")
        assert len(child_rekeys) >= 3, child_rekeys
        # Each CHILD SA after the first replaced its predecessor by a rekey, none
        # followed an expiry.
        assert len(re.findall(r"connection net4: CHILD SA #\d+ installed:", log)) == 1
        assert theirs_ike >= 2, theirs_ike
        assert log.count(": rekeying CHILD SA net4") == 0
        assert "Traceback" not in log
        world.charon.wait_for_child("net4")
        assert world.daemon.sas("net4")
