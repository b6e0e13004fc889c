"""Two `lockgate daemon`s in namespaces with a post-quantum preshared key (RFC 8784).

Both require the PPK: the tunnel comes up, carries a ping, and status says the IKE
SA uses it (`ppk_used`, "ppk: yes"); the PPK never reaches a log. After a CHILD and
an IKE rekey (keys derived from the mixed SK_d, RFC 8784 §3) traffic still flows and
the new IKE SA still says so. The lab stops
every process it started by PID and removes its namespaces whatever happens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from netns import SiteToSite, ping, site_to_site, wait_for_ping

from daemon.status import format_status
from testkit.daemon import PSK, pair_configs, start_pair, wait_until

pytestmark = pytest.mark.netns


@pytest.fixture
def topo() -> Iterator[SiteToSite]:
    with site_to_site() as topology:
        yield topology


def _with_ppk(text: str, path: str, required: bool) -> str:
    keys = f'ppk_id = "netns-ppk"\nppk_file = "{path}"\nppk_required = {str(required).lower()}'
    return text.replace(f'psk = "{PSK}"', f'psk = "{PSK}"\n{keys}', 1)


def test_two_daemons_with_a_required_ppk_pass_traffic_and_say_so(topo: SiteToSite) -> None:
    ppk = os.urandom(32).hex()
    path = topo.lab.tmpdir / "site.ppk"
    path.write_text(ppk + "\n")
    path.chmod(0o600)
    a_text, b_text = pair_configs(topo)
    a, b = start_pair(topo, _with_ppk(a_text, str(path), True), _with_ppk(b_text, str(path), True))
    wait_for_ping(topo.host_a, topo.site_b.host4)
    ping(topo.host_a, topo.site_b.host4)
    for daemon in (a, b):
        status = daemon.status()
        [conn] = status["connections"]
        [ike] = conn["ike_sas"]
        assert ike["ppk_used"] is True
        assert "ppk: yes" in format_status(status)
        log = daemon.proc.log()
        assert "ppk: yes" in log
        assert ppk not in log and ppk[:16] not in log


def test_rekeys_under_a_ppk_keep_it(topo: SiteToSite) -> None:
    path = topo.lab.tmpdir / "site.ppk"
    path.write_text(os.urandom(32).hex())
    path.chmod(0o600)
    a_text, b_text = pair_configs(topo)
    a, b = start_pair(topo, _with_ppk(a_text, str(path), True), _with_ppk(b_text, str(path), True))
    wait_for_ping(topo.host_a, topo.site_b.host4)
    [before] = a.status()["connections"][0]["ike_sas"]
    assert "rekeyed" in a.command("rekey", name="site")
    assert f"IKE SA #{before['id']} rekeyed" in a.command("rekey", name="site", ike=True)
    wait_until(lambda: len(a.sas()) == 1 and len(b.sas()) == 1, "the old CHILD SA to go")
    ping(topo.host_a, topo.site_b.host4)
    for daemon in (a, b):
        [ike] = daemon.status()["connections"][0]["ike_sas"]
        assert ike["rekeyed_from"] is not None and ike["ppk_used"] is True
