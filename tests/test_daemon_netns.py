"""Two `lockgate daemon`s in namespaces: the whole product, IKE included.

site A host ── gateway A ══ WAN ══ gateway B ── site B host, each gateway running the
daemon from a generated configuration with its own control socket. Checked: ping and
a hashed TCP transfer, IPv4 and IPv6 inner, raw ESP (`encap = "nat"`) and ESP in UDP
(the default between two lockgates, forced, and behind a NAT); SIGHUP with a changed
and an unchanged connection; SIGTERM sends a Delete, removes routes and the TUN device,
exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netns import SiteToSite, ping, site_to_site, tcp_transfer, wait_for_ping

from daemon.control import ControlClientError
from testkit.daemon import PSK, Daemon, config, start_daemon, wait_until

pytestmark = pytest.mark.netns


@dataclass
class Pair:
    topo: SiteToSite
    a: Daemon
    b: Daemon


@pytest.fixture
def make_pair() -> Iterator[Callable[..., Pair]]:
    """Build a topology and start a responder on B, then an initiator on A."""
    stack: list[Any] = []

    def build(
        *,
        nat: bool = False,
        encap: str = "auto",
        v6: bool = True,
        esp: str = "aes128gcm16",
        start_a: str = "initiate",
        env_a: dict[str, str] | None = None,
        outer6: bool = False,
    ) -> Pair:
        ctx = site_to_site(nat=nat)
        topo = ctx.__enter__()
        stack.append(ctx)
        a_nets = [topo.site_a.subnet4] + ([topo.site_a.subnet6] if v6 else [])
        b_nets = [topo.site_b.subnet4] + ([topo.site_b.subnet6] if v6 else [])
        wan_a, wan_b = (
            (topo.gw_a_wan6, topo.gw_b_wan6) if outer6 else (topo.gw_a_wan4, topo.gw_b_wan4)
        )
        public_a = topo.gw_a_public6 if outer6 else topo.gw_a_public4
        b = start_daemon(
            topo,
            topo.gw_b,
            "gwB",
            config(me=wan_b, peer=public_a, local=b_nets, remote=a_nets,
                   start="wait", encap=encap, esp=esp),
        )  # fmt: skip
        a = start_daemon(
            topo,
            topo.gw_a,
            "gwA",
            # Behind the NAT, A's identity is the address B sees it come from.
            config(me=wan_a, my_id=public_a, peer=wan_b,
                   local=a_nets, remote=b_nets, start=start_a, encap=encap, esp=esp),
            env=env_a,
        )  # fmt: skip
        if start_a != "initiate":
            return Pair(topo, a, b)
        try:
            wait_until(lambda: bool(a.sas()) and bool(b.sas()), "the CHILD SA")
        except AssertionError:
            raise AssertionError(
                f"no tunnel:\n--- A ---\n{a.proc.log()[-3000:]}\n--- B ---\n{b.proc.log()[-3000:]}"
            ) from None
        return Pair(topo, a, b)

    yield build
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("nat", "encap", "framing", "outer6"),
    [
        (False, "nat", "esp", False),
        (False, "auto", "udp", False),
        (False, "force", "udp", False),
        (True, "auto", "udp", False),
        (True, "nat", "udp", False),
        (False, "nat", "esp", True),
        (False, "force", "udp", True),
    ],
    ids=[
        "raw-esp",
        "udp-two-lockgates",
        "udp-forced",
        "udp-behind-nat",
        "udp-behind-nat-with-encap-nat",
        "raw-esp-over-ipv6",
        "udp-over-ipv6",
    ],
)
def test_ping_and_transfer_ipv4_and_ipv6(
    make_pair: Callable[..., Pair], nat: bool, encap: str, framing: str, outer6: bool
) -> None:
    pair = make_pair(nat=nat, encap=encap, outer6=outer6)
    topo = pair.topo
    [sa_a] = pair.a.sas()
    assert sa_a["encap"] == framing
    assert sa_a["suite"] == "aes128gcm16"
    # The status says why ESP is in UDP, if it is.
    [ike_a] = pair.a.status()["connections"][0]["ike_sas"]
    assert bool(ike_a["udp_encap"]) == (framing == "udp")
    if framing == "udp" and not nat and encap == "auto":
        assert ike_a["udp_encap"] == 'the peer is a lockgate (encap = "auto")'
    wait_for_ping(topo.host_a, topo.site_b.host6)
    ping(topo.host_a, topo.site_b.host4)
    ping(topo.host_b, topo.site_a.host4)
    ping(topo.host_a, topo.site_b.host6)
    result = tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host4, size=4 << 20)
    assert result.received_sha256 == result.sent_sha256
    assert result.peer_address == topo.site_a.host4  # no NAT inside the tunnel
    result6 = tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host6, size=1 << 20)
    assert result6.received_sha256 == result6.sent_sha256
    [sa_a] = pair.a.sas()
    [sa_b] = pair.b.sas()
    assert sa_a["spi_out"] == sa_b["spi_in"] and sa_a["spi_in"] == sa_b["spi_out"]
    assert sa_a["bytes_out"] >= 5 << 20 and sa_b["bytes_in"] == sa_a["bytes_out"]
    assert sa_a["drops"] == {} and sa_b["drops"] == {}


def test_sighup_changes_only_the_changed_peer(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(v6=False)
    topo, a = pair.topo, pair.a
    [before] = a.sas()
    # Add a second peer that nobody answers (start = wait, so it stays idle).
    idle_peer = """
[peers.spare]
address = "198.51.100.99"
psk = "spare-psk-NOT-SECRET-0123456789"

[connections.spare-net]
peer = "spare"
local_subnets = ["192.0.2.0/25"]
remote_subnets = ["198.51.100.128/25"]
start = "wait"
"""
    original = a.config.read_text()
    a.config.write_text(original + idle_peer)
    a.proc.signal(signal.SIGHUP)
    wait_until(lambda: "spare-net" in {c["name"] for c in a.status()["connections"]}, "reload")
    [after] = a.sas()
    assert after["spi_in"] == before["spi_in"], "an unchanged connection was renegotiated"
    ping(topo.host_a, topo.site_b.host4)
    # Now change the live connection's ESP proposal on both sides: it is renegotiated.
    b_text = pair.b.config.read_text().replace("aes128gcm16", "aes256gcm16")
    pair.b.config.write_text(b_text)
    assert "1 changed" in pair.b.command("reload")
    a.config.write_text(original.replace("aes128gcm16", "aes256gcm16") + idle_peer)
    answer = a.command("reload")
    assert "1 changed" in answer and "1 unchanged" in answer, answer
    wait_until(
        lambda: (
            [sa["suite"] for sa in a.sas()] == ["aes256gcm16"]
            and [sa["suite"] for sa in pair.b.sas()] == ["aes256gcm16"]
        ),
        "the renegotiated CHILD SA",
        timeout=30,
    )
    [renewed] = a.sas()
    assert renewed["spi_in"] != before["spi_in"]
    wait_for_ping(topo.host_a, topo.site_b.host4)
    ping(topo.host_a, topo.site_b.host4)


def test_sigterm_sends_delete_and_removes_routes_and_tun(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair()
    topo, a, b = pair.topo, pair.a, pair.b
    # Routes are added on the netlink thread just after the SA is installed.
    wait_until(
        lambda: (
            topo.site_b.subnet4 in topo.gw_a.ip("route", "show", "dev", "lgtest0").stdout
            and topo.site_b.subnet6 in topo.gw_a.ip("-6", "route", "show", "dev", "lgtest0").stdout
        ),
        "A's routes to site B",
        timeout=5,
    )
    rc = a.proc.stop(timeout=10)
    assert rc == 0, a.proc.log()[-2000:]
    # The peer got our Delete: its SAs are gone without waiting for DPD.
    wait_until(lambda: b.sas() == [], "B to remove its SAs after A's Delete", timeout=5)
    assert "deleted by peer" in b.proc.log().lower() or "by peer" in b.proc.log().lower()
    link = topo.gw_a.ip("link", "show", "lgtest0", check=False)
    assert link.returncode != 0, "the TUN device is still there"
    assert topo.site_b.subnet4 not in topo.gw_a.ip("route", "show").stdout
    assert topo.site_b.subnet6 not in topo.gw_a.ip("-6", "route", "show").stdout
    assert not Path(a.socket).exists()
    # B's routes went with its SAs; only a trap would keep them.
    assert topo.site_a.subnet4 not in topo.gw_b.ip("route", "show").stdout


def test_control_commands_down_up_and_status_text(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(v6=False)
    a, b = pair.a, pair.b
    assert "deleted" in a.command("down", name="site")
    wait_until(lambda: a.sas() == [] and b.sas() == [], "both sides to drop the SA", timeout=10)
    [conn] = a.status()["connections"]
    assert conn["state"] == "down"
    assert a.command("up", name="site") == "connection site is up"
    assert len(a.sas()) == 1
    wait_for_ping(pair.topo.host_a, pair.topo.site_b.host4)
    out = pair.topo.gw_a.run(sys.executable, "-m", "daemon.cli", "-s", a.socket, "status").stdout
    assert "site: up" in out and "CHILD SAs (1):" in out
    with pytest.raises(ControlClientError, match="no connection named 'nope'"):
        a.command("up", name="nope")


def test_trap_connection_comes_up_on_first_packet(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(v6=False, start_a="trap")
    topo, a = pair.topo, pair.a
    time.sleep(1.0)
    assert a.sas() == [], "a trap connection must wait for traffic"
    [conn] = a.status()["connections"]
    assert conn["state"] == "trap (on traffic)"
    # The trap route sends the first packet into the TUN, which starts IKE.
    assert topo.site_b.subnet4 in topo.gw_a.ip("route", "show", "dev", "lgtest0").stdout
    wait_for_ping(topo.host_a, topo.site_b.host4, timeout=15)
    assert len(a.sas()) == 1
    ping(topo.host_a, topo.site_b.host4)


def test_systemd_notify_and_journal_log_format(make_pair: Callable[..., Pair]) -> None:
    notify_path = f"/tmp/lockgate-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(10)
        try:
            env = {
                **os.environ,
                "NOTIFY_SOCKET": notify_path,
                "INVOCATION_ID": "lockgate-test",
                "WATCHDOG_USEC": "1000000",
            }
            pair = make_pair(v6=False, env_a=env)
            ready = notify.recv(4096).decode()
            assert "READY=1" in ready and "STATUS=" in ready
            seen = [notify.recv(4096).decode() for _ in range(4)]
            assert "WATCHDOG=1" in seen, seen
            assert pair.a.proc.stop(timeout=10) == 0
            messages = []
            while not any("STOPPING=1" in m for m in messages):
                messages.append(notify.recv(4096).decode())
            # The last status a stopped unit shows says so, not "deleting SAs".
            while "STATUS=stopped" not in messages[-1]:
                messages.append(notify.recv(4096).decode())
        finally:
            os.unlink(notify_path)
    log_lines = [line for line in pair.a.proc.log().splitlines() if line.strip()]
    # Journald style: a syslog priority prefix and no timestamp of our own.
    assert all(line.startswith("<") for line in log_lines[:20]), log_lines[:5]
    assert any(line.startswith("<6>daemon.gateway: ") for line in log_lines)
    assert not any(line[3:7].isdigit() and line[7] == "-" for line in log_lines[:20])
    assert PSK not in pair.a.proc.log()


def test_rekey_on_request_keeps_traffic_flowing(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(v6=False)
    topo, a, b = pair.topo, pair.a, pair.b
    [before] = a.sas()
    wait_for_ping(topo.host_a, topo.site_b.host4)
    pinger = topo.host_a.spawn(
        ["ping", "-n", "-q", "-c", "30", "-i", "0.1", "-W", "1", topo.site_b.host4],
        name="ping-during-rekey",
        stdout_pipe=True,
    )
    time.sleep(0.5)
    answer = a.command("rekey", name="site")
    assert answer.startswith("connection site: rekeyed, CHILD SA #"), answer
    wait_until(lambda: len(a.sas()) == 1 and len(b.sas()) == 1, "the old CHILD SA to go")
    [after] = a.sas()
    assert after["spi_in"] != before["spi_in"] and after["unique_id"] != before["unique_id"]
    assert pinger.popen.stdout is not None
    out = pinger.popen.stdout.read().decode()
    pinger.popen.wait(10)
    # Make-before-break: not one echo lost while the keys changed.
    assert " 0% packet loss" in out, (out, a.status()["drops"], b.status()["drops"])
    # We started the rekey, so we sent on the new SA at once; the peer waited.
    assert "#2 (in " in a.proc.log() and "sends at once" in a.proc.log()
    assert "sends at once" not in b.proc.log()
    ping(topo.host_a, topo.site_b.host4)
