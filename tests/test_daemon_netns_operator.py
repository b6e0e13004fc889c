"""Two `lockgate daemon`s in namespaces, as an operator runs them: a second daemon on
the same addresses is refused without touching the first, a reload that changes
a connection's own proposals moves its traffic to a new CHILD SA without a loss, and
one that adds a connection or widens one's subnets does so under the same IKE SA
without a loss either.

Each test builds its own site-to-site lab (names unique to this process) and bounds
every wait; the lab stops what it started by PID.
"""

from __future__ import annotations

import re
import sys
import time

import pytest
from netns import Process, SiteToSite, site_to_site, wait_for_ping

from testkit.daemon import Daemon, pair_configs, start_pair, wait_until

pytestmark = pytest.mark.netns


def _start_ping(topo: SiteToSite, count: int, interval: float, name: str) -> Process:
    return topo.host_a.spawn(
        ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1",
         topo.site_b.host4],
        name=name,
        stdout_pipe=True,
    )  # fmt: skip


def _ping_result(pinger: Process, timeout: float) -> tuple[int, int, str]:
    """(sent, received, ping's summary) once the pinger ends."""
    assert pinger.popen.stdout is not None
    pinger.popen.wait(timeout)
    out = pinger.popen.stdout.read().decode()
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert match, out
    return int(match.group(1)), int(match.group(2)), out


def test_a_second_daemon_on_the_same_addresses_is_refused_and_the_first_keeps_its_traffic(
) -> None:  # fmt: skip
    with site_to_site() as topo:
        a, _b = start_pair(topo, *pair_configs(topo))
        wait_for_ping(topo.host_a, topo.site_b.host4)
        route = topo.gw_a.ip("route", "show", "dev", "lgtest0").stdout
        assert topo.site_b.subnet4 in route
        pinger = _start_ping(topo, 300, 0.02, "ping-around-the-second-daemon")
        time.sleep(1.0)
        # The same file, another control socket and another interface name.
        text = a.config.read_text().replace('interface = "lgtest0"', 'interface = "lg1"')
        second_conf = topo.lab.tmpdir / "second.toml"
        second_conf.write_text(text)
        second_conf.chmod(0o600)
        cli = [sys.executable, "-m", "daemon.cli", "-s", str(topo.lab.tmpdir / "second.sock")]
        second = topo.gw_a.run(*cli, "daemon", "-c", str(second_conf), check=False, timeout=30)
        assert second.returncode == 1, second.stdout + second.stderr
        port_in_use = (
            f"cannot start: UDP port 500 on {topo.gw_a_wan4} is in use by another process: "
            "another lockgate or IKE daemon (charon, pluto, iked) is probably running"
        )
        assert port_in_use in second.stderr, second.stderr
        # Nothing of the second was left behind, and the first kept everything.
        assert topo.gw_a.ip("link", "show", "lg1", check=False).returncode != 0
        assert not (topo.lab.tmpdir / "second.sock").exists()
        # The same configuration started twice says the same.
        twice = topo.gw_a.run(*cli, "daemon", "-c", str(a.config), check=False, timeout=30)
        assert twice.returncode == 1 and port_in_use in twice.stderr, twice.stderr
        sent, received, out = _ping_result(pinger, 30)
        print(f"\nsecond daemon refused: {sent - received} of {sent} pings lost")
        assert sent == 300 and received == 300, out
        assert topo.site_b.subnet4 in topo.gw_a.ip("route", "show", "dev", "lgtest0").stdout
        assert [c["state"] for c in a.status()["connections"]] == ["up"]
        assert a.proc.alive()


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_an_esp_proposals_reload_under_ping_loses_nothing(side: str) -> None:
    # The side that reloads moves from aes128gcm16 to aes256gcm16; the other accepts
    # both. The change concerns the CHILD SA alone: a CREATE_CHILD_SA makes the new one
    # before the old one goes, under the same IKE SA.
    both = 'aes128gcm16", "aes256gcm16'
    with site_to_site() as topo:
        a_text, b_text = pair_configs(topo)
        if side == "initiator":
            b_text = b_text.replace('"aes128gcm16"', f'"{both}"')
        else:
            a_text = a_text.replace('"aes128gcm16"', f'"{both}"')
        a, b = start_pair(topo, a_text, b_text)
        wait_for_ping(topo.host_a, topo.site_b.host4)
        reloader = a if side == "initiator" else b
        [child_before] = reloader.sas()
        assert child_before["suite"] == "aes128gcm16"
        [ike_before] = reloader.status()["connections"][0]["ike_sas"]
        pinger = _start_ping(topo, 1000, 0.01, "ping-during-the-reload")
        time.sleep(2.0)
        reloader.config.write_text(
            reloader.config.read_text().replace('["aes128gcm16"]', '["aes256gcm16"]')
        )
        answer = reloader.command("reload")
        assert answer == "reloaded: peers 0 added, 1 changed, 0 removed, 0 unchanged", answer
        sent, received, out = _ping_result(pinger, 60)
        print(f"\nesp_proposals reload ({side}): {sent - received} of {sent} pings lost")
        assert sent == 1000 and received == 1000, (out, a.status()["drops"], b.status()["drops"])
        wait_until(lambda: len(a.sas()) == 1 and len(b.sas()) == 1, "the old CHILD SA to go")
        for daemon in (a, b):
            [child_after] = daemon.sas()
            assert child_after["suite"] == "aes256gcm16"
        [child_after] = reloader.sas()
        assert child_after["spi_in"] != child_before["spi_in"]
        # The same IKE SA: nothing was torn down.
        [ike_after] = reloader.status()["connections"][0]["ike_sas"]
        assert ike_after["id"] == ike_before["id"]


SITE6 = """
[connections.site6]
peer = "main"
local_subnets = ["{local}"]
remote_subnets = ["{remote}"]
esp_proposals = ["aes128gcm16"]
start = "{start}"
"""


def test_connections_added_and_widened_by_reload_under_ping_lose_nothing() -> None:
    # The IPv4 connection carries 203.0.113.0/25 (the far host is in it) under
    # ping -i 0.01. A reload on both sides adds an IPv6 connection: a CREATE_CHILD_SA
    # under the same IKE SA, the IPv4 one untouched. Another widens the IPv4
    # connection to /24: a new CHILD SA with the new selectors, then the old one
    # deleted. Neither loses an echo, and the IKE SA stays the same throughout.
    with site_to_site() as topo:
        a_text, b_text = pair_configs(topo)
        wide, narrow = '["203.0.113.0/24"]', '["203.0.113.0/25"]'
        a_text = a_text.replace(f"remote_subnets = {wide}", f"remote_subnets = {narrow}")
        b_text = b_text.replace(f"local_subnets = {wide}", f"local_subnets = {narrow}")
        a, b = start_pair(topo, a_text, b_text)
        wait_for_ping(topo.host_a, topo.site_b.host4)
        [ike_before] = a.status()["connections"][0]["ike_sas"]
        [site_before] = a.sas("site")

        def reload(daemon: Daemon, text: str) -> None:
            daemon.config.write_text(text)
            answer = daemon.command("reload")
            assert answer == "reloaded: peers 0 added, 1 changed, 0 removed, 0 unchanged"

        # 1. A second connection, on the waiting side first.
        pinger = _start_ping(topo, 500, 0.01, "ping-while-a-connection-is-added")
        time.sleep(1.0)
        b_site6 = SITE6.format(local=topo.site_b.subnet6, remote=topo.site_a.subnet6, start="wait")
        a_site6 = SITE6.format(
            local=topo.site_a.subnet6, remote=topo.site_b.subnet6, start="initiate"
        )
        reload(b, b_text + b_site6)
        reload(a, a_text + a_site6)
        sent, received, out = _ping_result(pinger, 60)
        print(f"\nconnection added: {sent - received} of {sent} pings on the first lost")
        assert sent == 500 and received == 500, (out, a.status()["drops"], b.status()["drops"])
        wait_until(lambda: len(a.sas("site6")) == 1, "the new connection's CHILD SA")
        wait_for_ping(topo.host_a, topo.site_b.host6)
        assert [sa["spi_in"] for sa in a.sas("site")] == [site_before["spi_in"]]

        # 2. The first connection's remote subnets widened, again the waiting side first.
        pinger = _start_ping(topo, 500, 0.01, "ping-while-the-selectors-widen")
        time.sleep(1.0)
        reload(
            b, (b_text + b_site6).replace(f"local_subnets = {narrow}", f"local_subnets = {wide}")
        )
        time.sleep(0.5)
        reload(
            a, (a_text + a_site6).replace(f"remote_subnets = {narrow}", f"remote_subnets = {wide}")
        )
        sent, received, out = _ping_result(pinger, 60)
        print(f"selectors widened: {sent - received} of {sent} pings lost")
        assert sent == 500 and received == 500, (out, a.status()["drops"], b.status()["drops"])
        wait_until(lambda: len(a.sas("site")) == 1 and len(b.sas("site")) == 1, "the old SA to go")
        for daemon in (a, b):
            [site_after] = daemon.sas("site")
            assert wide.strip('[]"') in site_after["remote_ts"] + site_after["local_ts"]
        # The same IKE SA on both sides: nothing was torn down.
        [ike_after] = a.status()["connections"][0]["ike_sas"]
        assert ike_after["id"] == ike_before["id"]
        assert len(b.status()["connections"][0]["ike_sas"]) == 1
        assert [c["state"] for c in a.status()["connections"]] == ["up", "up"]
