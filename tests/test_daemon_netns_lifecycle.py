"""Two `lockgate daemon`s in namespaces, over the rest of an SA's life:
certificate authentication from configuration, rekeys of the CHILD and the IKE SA on
request under a running ping, status after an IKE rekey, and dpd_action = "restart"
bringing a tunnel back after the peer daemon was killed and started again.

Each test builds its own site-to-site lab (names unique to this process), bounds
every wait, and the lab stops every process it started by PID and removes the
namespaces whatever happens.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import SiteToSite, ping, ping_every_one, site_to_site, wait_for_ping

from conf import loads_config
from conf.ike import ike_connections
from daemon.lab.netns import in_namespace
from ikev2.endpoint import Endpoint
from testkit.daemon import pair_configs, start_daemon, start_pair, wait_until
from testkit.pki import Pki

pytestmark = pytest.mark.netns


@pytest.fixture
def topo() -> Iterator[SiteToSite]:
    with site_to_site() as topology:
        yield topology


# --- certificates ----------------------------------------------------------------------


def _cert_config(
    topo: SiteToSite,
    tmp: Path,
    side: str,
    pki: Pki,
    me: str,
    peer: str,
    start: str,
    extra: str = "",
) -> str:
    """A configuration authenticating with a certificate of `pki` (auth = "pubkey")."""
    ours, theirs = ("a", "b") if side == "a" else ("b", "a")
    cred = pki.issue(f"gw-{ours}.example.net")
    (tmp / f"{ours}.crt").write_bytes(cred.cert_pem)
    key = tmp / f"{ours}.key"
    key.write_bytes(cred.key_pem)
    key.chmod(0o600)
    (tmp / "ca.crt").write_bytes(pki.ca.cert_pem)
    local = topo.site_a.subnet4 if side == "a" else topo.site_b.subnet4
    remote = topo.site_b.subnet4 if side == "a" else topo.site_a.subnet4
    return f"""
[gateway]
addresses = ["{me}"]
id = "gw-{ours}.example.net"
interface = "lgtest0"
certificate = "{tmp / f"{ours}.crt"}"
private_key = "{key}"
ca = ["{tmp / "ca.crt"}"]

[peers.main]
address = "{peer}"
id = "gw-{theirs}.example.net"
auth = "pubkey"

[connections.site]
peer = "main"
local_subnets = ["{local}"]
remote_subnets = ["{remote}"]
esp_proposals = ["aes128gcm16"]
start = "{start}"
{extra}
"""


def test_two_daemons_authenticate_with_ecdsa_certificates(topo: SiteToSite) -> None:
    pki = Pki(key_type="ecdsa-p256")
    tmp = topo.lab.tmpdir
    a_text = _cert_config(topo, tmp, "a", pki, topo.gw_a_wan4, topo.gw_b_wan4, "initiate")
    b_text = _cert_config(topo, tmp, "b", pki, topo.gw_b_wan4, topo.gw_a_wan4, "wait")
    a, b = start_pair(topo, a_text, b_text)
    wait_for_ping(topo.host_a, topo.site_b.host4)
    ping(topo.host_a, topo.site_b.host4)
    [conn_a] = a.status()["connections"]
    [conn_b] = b.status()["connections"]
    # Each side proved the identity in its certificate's subjectAltName.
    assert conn_a["ike_sas"][0]["remote_id"] == "gw-b.example.net"
    assert conn_b["ike_sas"][0]["remote_id"] == "gw-a.example.net"
    assert "BEGIN" not in a.proc.log() and "PRIVATE" not in a.proc.log()


def test_certificate_from_another_ca_is_refused(topo: SiteToSite) -> None:
    pki, stranger = Pki(key_type="ecdsa-p256"), Pki("stranger CA", key_type="ecdsa-p256")
    tmp_a, tmp_b = topo.lab.tmpdir / "a", topo.lab.tmpdir / "b"
    tmp_a.mkdir()
    tmp_b.mkdir()
    a_text = _cert_config(topo, tmp_a, "a", stranger, topo.gw_a_wan4, topo.gw_b_wan4, "initiate")
    b_text = _cert_config(topo, tmp_b, "b", pki, topo.gw_b_wan4, topo.gw_a_wan4, "wait")
    b = start_daemon(topo, topo.gw_b, "gwB", b_text)
    a = start_daemon(topo, topo.gw_a, "gwA", a_text)
    wait_until(lambda: bool(a.status()["connections"][0]["last_error"]), "A's failure", 15)
    assert a.sas() == [] and b.sas() == []
    reason = b.status()["connections"][0]["last_error"] or b.proc.log()
    assert "CA" in reason or "certificate" in reason, reason


def test_certificate_chain_travels_in_ike_fragments(topo: SiteToSite) -> None:
    # RSA certificates make IKE_AUTH longer than a 576-octet fragment_size, so both
    # IKE_AUTH messages go as RFC 7383 fragments between the two daemons.
    pki = Pki(key_type="rsa2048")
    tmp, small = topo.lab.tmpdir, "fragment_size = 576"
    a_text = _cert_config(topo, tmp, "a", pki, topo.gw_a_wan4, topo.gw_b_wan4, "initiate", small)
    b_text = _cert_config(topo, tmp, "b", pki, topo.gw_b_wan4, topo.gw_a_wan4, "wait", small)
    a, b = start_pair(topo, a_text, b_text)
    for daemon in (a, b):
        log = daemon.proc.log()
        assert re.search(r"message ID 1 of \d+ octets sent as \d+ fragments", log), log[-2000:]
        assert re.search(r"reassembled message ID 1 from \d+ fragments", log), log[-2000:]
    wait_for_ping(topo.host_a, topo.site_b.host4)


# --- COOKIEs, ESN, volume limits -------------------------------------------------------


def _leave_half_open(topo: SiteToSite, a_text: str) -> None:
    """Send B one genuine IKE_SA_INIT from A's address that is never followed up, so B
    holds a half-open IKE SA (until its half-open timeout)."""
    with in_namespace(topo.gw_a.name):
        endpoint = Endpoint(ike_connections(loads_config(a_text)))
        now = time.monotonic()
        endpoint.initiate("main", now)
        [(payload, _local, _remote)] = endpoint.datagrams_to_send(now)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((topo.gw_a_wan4, 0))
            sock.sendto(payload, (topo.gw_b_wan4, 500))


def test_responder_demanding_cookies_still_lets_the_tunnel_up(topo: SiteToSite) -> None:
    a_text, b_text = pair_configs(topo, extra_a="esn = true", extra_b="esn = true")
    # cookie_threshold = 0: with any IKE SA half open, an IKE_SA_INIT must first come
    # back with B's COOKIE (RFC 7296 §2.6).
    b_text = b_text.replace('interface = "lgtest0"', 'interface = "lgtest0"\ncookie_threshold = 0')
    b = start_daemon(topo, topo.gw_b, "gwB", b_text)
    _leave_half_open(topo, a_text)
    wait_until(lambda: "IKE proposal" in b.proc.log(), "B to answer the lone IKE_SA_INIT", 5)
    a = start_daemon(topo, topo.gw_a, "gwA", a_text)
    wait_until(lambda: bool(a.sas()) and bool(b.sas()), "the CHILD SA", timeout=20)
    assert "1 IKE SAs half open: asking 198.51.100.1:500 for a COOKIE" in b.proc.log()
    assert "peer demands a cookie" in a.proc.log()
    # esn = true on both sides: the CHILD SA uses 64-bit sequence numbers.
    assert [sa["esn"] for sa in a.sas()] == [True] and [sa["esn"] for sa in b.sas()] == [True]
    wait_for_ping(topo.host_a, topo.site_b.host4)
    ping(topo.host_a, topo.site_b.host4)


def test_packet_limit_rekeys_before_the_hard_limit_without_loss(topo: SiteToSite) -> None:
    # life_packets is a hard limit; at 90% of it the daemon rekeys, so at 100 pings a
    # second the new SA carries the traffic before the old one would have to stop.
    a_text, b_text = pair_configs(topo, extra_a="life_packets = 500")
    a, _b = start_pair(topo, a_text, b_text)
    wait_for_ping(topo.host_a, topo.site_b.host4)
    [before] = a.sas()
    lost, summary = ping_every_one(
        topo.host_a, topo.site_b.host4, count=600, interval=0.01, deadline=30
    )
    assert lost == [], (lost, summary, a.status()["drops"])
    wait_until(lambda: len(a.sas()) == 1, "the replaced CHILD SA to go", timeout=10)
    [after] = a.sas()
    assert after["unique_id"] != before["unique_id"]
    log = a.proc.log()
    assert f"CHILD SA #{before['unique_id']} due for rekeying (volume)" in log, log[-2000:]
    assert "used up its volume" not in log
    assert after["packets_out"] < 500


# --- rekeys on request -----------------------------------------------------------------


def test_rekey_child_and_ike_under_ping_lose_nothing(topo: SiteToSite) -> None:
    a, b = start_pair(topo, *pair_configs(topo))
    wait_for_ping(topo.host_a, topo.site_b.host4)
    [child_before] = a.sas()
    [ike_before] = a.status()["connections"][0]["ike_sas"]
    pinger = topo.host_a.spawn(
        ["ping", "-n", "-q", "-c", "50", "-i", "0.1", "-W", "1", topo.site_b.host4],
        name="ping-during-rekeys",
        stdout_pipe=True,
    )
    time.sleep(0.5)
    cli = [sys.executable, "-m", "daemon.cli", "-s", a.socket]
    child = topo.gw_a.run(*cli, "rekey", "site", timeout=30).stdout
    assert child.startswith("connection site: rekeyed, CHILD SA #"), child
    time.sleep(0.5)
    ike = topo.gw_a.run(*cli, "rekey", "--ike", "site", timeout=30).stdout
    assert ike.startswith(f"peer main: IKE SA #{ike_before['id']} rekeyed, #"), ike
    assert ike.strip().endswith("replaces it"), ike
    assert pinger.popen.stdout is not None
    out = pinger.popen.stdout.read().decode()
    pinger.popen.wait(15)
    # Make-before-break for both: not one echo lost while the keys changed.
    assert " 0% packet loss" in out, (out, a.status()["drops"], b.status()["drops"])

    # Status after the IKE rekey: one IKE SA on each side, the new one, saying which
    # it replaced; the CHILD SA moved to it untouched.
    wait_until(lambda: len(a.sas()) == 1 and len(b.sas()) == 1, "the old CHILD SA to go")
    [ike_after] = a.status()["connections"][0]["ike_sas"]
    [ike_b] = b.status()["connections"][0]["ike_sas"]
    assert ike_after["id"] != ike_before["id"]
    assert ike_after["rekeyed_from"] == ike_before["id"]
    assert (ike_after["spi_i"], ike_after["spi_r"]) != (ike_before["spi_i"], ike_before["spi_r"])
    assert (ike_b["spi_i"], ike_b["spi_r"]) == (ike_after["spi_i"], ike_after["spi_r"])
    assert ike_b["rekeyed_from"] is not None
    [child_after] = a.sas()
    assert child_after["spi_in"] != child_before["spi_in"]  # the CHILD rekey
    text = topo.gw_a.run(*cli, "status").stdout
    assert f"rekeyed from #{ike_before['id']}" in text
    # The tunnel still works under the new IKE SA, and it can be rekeyed again.
    ping(topo.host_a, topo.site_b.host4)
    again = a.command("rekey", name="site", ike=True)
    assert f"IKE SA #{ike_after['id']} rekeyed" in again
    # The peer may rekey too: A, the responder of that exchange, follows it.
    [ike_mid] = a.status()["connections"][0]["ike_sas"]
    assert "rekeyed" in b.command("rekey", name="site", ike=True)
    wait_until(
        lambda: a.status()["connections"][0]["ike_sas"][0]["rekeyed_from"] == ike_mid["id"],
        "A to show the IKE SA B's rekey made",
        timeout=10,
    )
    [ike_last] = a.status()["connections"][0]["ike_sas"]
    assert ike_last["initiator"] is False  # B started the exchange that made it
    ping(topo.host_a, topo.site_b.host4)


# --- dead peer detection -----------------------------------------------------------------

# Fast liveness checks: a check after 1 s of silence, resent after 0.5 s and 0.9 s,
# so a dead peer is known within about 4 s.
FAST_DPD = """
dpd_interval = 1
dpd_action = "restart"
"""
FAST_RETRANSMIT = 'interface = "lgtest0"\nretransmit_timeout = 0.5\nretransmit_tries = 2'


def test_dpd_restart_brings_the_tunnel_back_after_the_peer_restarts(topo: SiteToSite) -> None:
    a_text, b_text = pair_configs(topo, extra_a=FAST_DPD)
    a_text = a_text.replace('interface = "lgtest0"', FAST_RETRANSMIT)
    a, b = start_pair(topo, a_text, b_text)
    wait_for_ping(topo.host_a, topo.site_b.host4)
    [before] = a.sas()
    # The peer daemon dies without a word (no Delete).
    b.proc.signal(signal.SIGKILL)
    b.proc.stop()
    wait_until(lambda: a.sas() == [], "A to find the peer dead", timeout=20)
    log = a.proc.log()
    assert "peer is dead" in log and "dpd_action restart" in log, log[-2000:]
    # A keeps trying with back-off while nobody answers ...
    wait_until(lambda: "retrying in" in a.proc.log(), "A to schedule a retry", timeout=15)
    [conn] = a.status()["connections"]
    assert conn["state"] in ("connecting", "waiting to retry")
    # ... and the tunnel is back once the peer is.
    b2 = start_daemon(topo, topo.gw_b, "gwB2", b_text)
    wait_until(lambda: bool(a.sas()) and bool(b2.sas()), "the restarted tunnel", timeout=40)
    [after] = a.sas()
    assert after["spi_in"] != before["spi_in"]
    wait_for_ping(topo.host_a, topo.site_b.host4)
    ping(topo.host_a, topo.site_b.host4)


def test_dpd_trap_re_arms_and_traffic_brings_the_tunnel_back(topo: SiteToSite) -> None:
    a_text, b_text = pair_configs(topo, extra_a=FAST_DPD.replace('"restart"', '"trap"'))
    a_text = a_text.replace('interface = "lgtest0"', FAST_RETRANSMIT)
    a, b = start_pair(topo, a_text, b_text)
    wait_for_ping(topo.host_a, topo.site_b.host4)
    b.proc.signal(signal.SIGKILL)
    b.proc.stop()
    wait_until(lambda: a.sas() == [], "A to find the peer dead", timeout=20)
    assert "dpd_action trap" in a.proc.log()
    [conn] = a.status()["connections"]
    assert conn["state"] == "trap (on traffic)"
    # The remote subnet is routed into the TUN again, without an SA: a trap.
    assert topo.site_b.subnet4 in topo.gw_a.ip("route", "show", "dev", "lgtest0").stdout
    time.sleep(2.0)
    assert a.sas() == [] and "initiating IKE SA" not in a.proc.log().split("dpd_action trap")[1]
    b2 = start_daemon(topo, topo.gw_b, "gwB2", b_text)
    # The first packet for the far site starts the tunnel again.
    wait_for_ping(topo.host_a, topo.site_b.host4, timeout=20)
    assert len(a.sas()) == 1 and len(b2.sas()) == 1
    ping(topo.host_a, topo.site_b.host4)
