"""Interop: a reload that changes only a connection's ESP proposals, with strongSwan as
the peer. lockgate moves the connection to a new CHILD SA with CREATE_CHILD_SA before
the old one goes (RFC 7296 §2.8), under the same IKE SA, while `ping -i 0.01` runs
through the tunnel: not one echo may be lost. charon accepts both proposals.
"""

from __future__ import annotations

import re
import time

import pytest
from interop_helpers import Case, installed_child, interop, wait_until
from netns import wait_for_ping

pytestmark = [pytest.mark.netns, pytest.mark.interop]

PINGS = 1000  # 10 s at 0.01 s

RELOAD = Case(lockgate_initiates=True, esp="aes128gcm16", swan_esp="aes128gcm16,aes256gcm16")


def test_an_esp_proposals_reload_loses_no_ping_with_strongswan() -> None:
    with interop(RELOAD) as world:
        topo = world.topo
        ike_before = world.bring_up()
        daemon = world.daemon
        wait_for_ping(topo.host_a, topo.site_b.host4)
        [child_before] = daemon.sas("net4")
        assert child_before["suite"] == "aes128gcm16"
        [lockgate_ike] = daemon.connection("net4")["ike_sas"]
        pinger = topo.host_a.spawn(
            ["ping", "-n", "-q", "-c", str(PINGS), "-i", "0.01", "-W", "2", topo.site_b.host4],
            name="ping-across-the-reload",
            stdout_pipe=True,
        )
        time.sleep(2.0)
        daemon.config.write_text(
            daemon.config.read_text().replace('["aes128gcm16"]', '["aes256gcm16"]')
        )
        answer = daemon.command("reload")
        assert answer == "reloaded: peers 0 added, 1 changed, 0 removed, 0 unchanged", answer
        assert pinger.popen.stdout is not None
        pinger.popen.wait(60)
        out = pinger.popen.stdout.read().decode()
        match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert match, out
        sent, received = int(match.group(1)), int(match.group(2))
        print(f"\nesp_proposals reload against strongSwan: {sent - received} of {sent} lost")
        assert sent == PINGS and received == PINGS, out

        wait_until(lambda: len(daemon.sas("net4")) == 1, "the old CHILD SA to go")
        [child_after] = daemon.sas("net4")
        assert child_after["suite"] == "aes256gcm16"
        assert child_after["spi_in"] != child_before["spi_in"]
        ike = world.charon_ike()
        child = installed_child(ike, "net4")
        assert (child.encr_alg, child.encr_keysize) == ("AES_GCM_16", "256"), child.raw
        assert (int(child.spi_in, 16), int(child.spi_out, 16)) == (
            int(child_after["spi_out"], 16),
            int(child_after["spi_in"], 16),
        )
        # The same IKE SA on both sides: nothing was torn down.
        assert ike.raw["uniqueid"] == ike_before.raw["uniqueid"]
        [lockgate_ike_after] = daemon.connection("net4")["ike_sas"]
        assert lockgate_ike_after["id"] == lockgate_ike["id"]
        assert "Traceback" not in daemon.log()
