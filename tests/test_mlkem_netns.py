"""Two `lockgate daemon`s in namespaces with hybrid ML-KEM proposals (RFC 9370).

The IKE SA runs X25519 or ECP-384 in IKE_SA_INIT and ML-KEM-768 or -1024 in
IKE_INTERMEDIATE (in IKE fragments: the key does not fit 1,232 octets); both gateways
say "quantum-safe: yes" in `lockgate status`, traffic passes, and a CHILD SA rekey
with PFS and an IKE rekey under ping lose nothing and keep it quantum-safe: both run
ML-KEM again in an IKE_FOLLOWUP_KE exchange (RFC 9370 §2.2.4) when the proposal has it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from netns import SiteToSite, site_to_site, tcp_transfer, wait_for_ping

from testkit.daemon import pair_configs, start_pair, wait_until

pytestmark = pytest.mark.netns


@pytest.fixture
def topo() -> Iterator[SiteToSite]:
    with site_to_site() as topology:
        yield topology


@pytest.mark.parametrize(
    ("ike", "esp", "pfs"),
    [
        (
            "aes256gcm16-prfsha384-x25519-ke1_mlkem768",
            "aes256gcm16-x25519-ke1_mlkem768",
            "x25519+mlkem768",
        ),
        (
            "aes256gcm16-prfsha384-ecp384-ke1_mlkem1024",
            "aes256gcm16-ecp384-ke1_mlkem1024",
            "ecp384+mlkem1024",
        ),
    ],
    ids=["x25519-mlkem768", "ecp384-mlkem1024"],
)
def test_hybrid_tunnel_is_quantum_safe_through_rekeys(
    topo: SiteToSite, ike: str, esp: str, pfs: str
) -> None:
    extra = f'ike_proposals = ["{ike}"]'
    a, b = start_pair(topo, *pair_configs(topo, extra_a=extra, extra_b=extra, esp=esp))
    for daemon, ns in ((a, topo.gw_a), (b, topo.gw_b)):
        [conn] = daemon.status()["connections"]
        [sa] = conn["ike_sas"]
        assert sa["suite"] == ike and sa["quantum_safe"] is True, sa
        out = ns.run(sys.executable, "-m", "daemon.cli", "-s", daemon.socket, "status").stdout
        assert f"{ike}, quantum-safe: yes" in out
    log = a.proc.log()
    assert "additional key exchange 1 done" in log and "quantum-safe: yes" in log
    # The ML-KEM key (IKE_INTERMEDIATE, Message ID 1) went in IKE fragments (RFC 7383).
    assert "reassembled message ID 1 from" in b.proc.log()
    wait_for_ping(topo.host_a, topo.site_b.host4)
    tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host4, size=1024 * 1024)

    pinger = topo.host_a.spawn(
        ["ping", "-n", "-q", "-c", "40", "-i", "0.1", "-W", "1", topo.site_b.host4],
        name="ping-during-rekeys",
        stdout_pipe=True,
    )
    time.sleep(0.5)
    cli = [sys.executable, "-m", "daemon.cli", "-s", a.socket]
    child = topo.gw_a.run(*cli, "rekey", "site", timeout=30).stdout
    assert child.startswith("connection site: rekeyed, CHILD SA #"), child
    ike_out = topo.gw_a.run(*cli, "rekey", "--ike", "site", timeout=30).stdout
    assert ike_out.strip().endswith("replaces it"), ike_out
    assert pinger.popen.stdout is not None
    out = pinger.popen.stdout.read().decode()
    pinger.popen.wait(15)
    assert " 0% packet loss" in out, out
    wait_until(lambda: len(a.sas()) == 1 and len(b.sas()) == 1, "the old CHILD SA to go")
    [after] = a.status()["connections"][0]["ike_sas"]
    assert after["rekeyed_from"] is not None
    # The IKE rekey ran the hybrid proposal again (ML-KEM in IKE_FOLLOWUP_KE).
    assert after["suite"] == ike and after["quantum_safe"] is True, after
    # The rekeyed CHILD SA's PFS: the classical group and ML-KEM (ke1_ in its proposal).
    for daemon, ns in ((a, topo.gw_a), (b, topo.gw_b)):
        [sa] = daemon.sas()
        assert (sa["pfs"], sa["quantum_safe"]) == (pfs, True), sa
        out = ns.run(sys.executable, "-m", "daemon.cli", "-s", daemon.socket, "status").stdout
        assert f"PFS {pfs}, quantum-safe: yes" in out, out
    # One IKE_FOLLOWUP_KE each for the CHILD rekey and the IKE rekey, a asking, b answering.
    kem = ike.rpartition("_")[2]
    rounds = a.proc.log().count(f"additional key exchange 1 ({kem}) done")
    answered = b.proc.log().count(f"additional key exchange 1 ({kem}) of the peer's")
    assert (rounds, answered) == (2, 2), (rounds, answered)
    tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host4, size=256 * 1024)


def test_classical_tunnel_says_not_quantum_safe(topo: SiteToSite) -> None:
    a, _b = start_pair(topo, *pair_configs(topo))
    [conn] = a.status()["connections"]
    [ike] = conn["ike_sas"]
    assert ike["quantum_safe"] is False
    out = topo.gw_a.run(sys.executable, "-m", "daemon.cli", "-s", a.socket, "status").stdout
    assert "quantum-safe: no" in out
