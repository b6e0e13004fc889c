"""Two `lockgate daemon`s in namespaces with a post-quantum preshared key (RFC 8784).

Both require the PPK: the tunnel comes up, carries a ping, and status says the IKE
SA uses it (`ppk_used`, "ppk: yes"); the PPK never reaches a log. The lab stops
every process it started by PID and removes its namespaces whatever happens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from netns import SiteToSite, ping, site_to_site, wait_for_ping

from daemon.status import format_status
from testkit.daemon import PSK, pair_configs, start_pair

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
