"""conf/examples for route-based tunnels with BGP: the lockgate pair (route-dc.toml,
route-cloud.toml) and the BIRD 2 configurations of the two ends (bird-*.conf) describe
the same tunnel, and BIRD accepts its files."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from conf.load import load_config
from testkit.bird import bird_available

EXAMPLES = Path(str(resources.files("conf") / "examples"))
SIDES = (("route-dc.toml", "bird-dc.conf"), ("route-cloud.toml", "bird-cloud.conf"))


def _toml(name: str) -> dict[str, Any]:
    with (EXAMPLES / name).open("rb") as f:
        return tomllib.load(f)


def _route_connection(name: str) -> dict[str, Any]:
    [conn] = _toml(name)["connections"].values()
    assert conn["mode"] == "route"
    return dict(conn)


def _bgp_sessions(name: str) -> list[tuple[str, str, str, str]]:
    """(local address, local AS, neighbor address, neighbor AS) of each BGP protocol."""
    text = (EXAMPLES / name).read_text()
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    locals_ = re.findall(r"^\s*local ([0-9a-f.:]+) as (\d+);", text, re.M)
    neighbors = re.findall(r"^\s*neighbor ([0-9a-f.:]+) as (\d+);", text, re.M)
    assert len(locals_) == len(neighbors) >= 2
    return [(la, las, na, nas) for (la, las), (na, nas) in zip(locals_, neighbors, strict=True)]


@pytest.mark.parametrize(("lockgate", "bird"), SIDES)
def test_bird_sessions_run_over_the_tunnel_inside_addresses(lockgate: str, bird: str) -> None:
    conn = _route_connection(lockgate)
    inside = {
        ipaddress.ip_interface(conn["inside_address"]),
        ipaddress.ip_interface(conn["inside_address6"]),
    }
    sessions = _bgp_sessions(bird)
    assert {ipaddress.ip_address(s[0]) for s in sessions} == {i.ip for i in inside}
    for local, _, neighbor, _ in sessions:
        [iface] = [i for i in inside if i.ip == ipaddress.ip_address(local)]
        # The neighbor is on the tunnel's own small subnet: a directly connected eBGP
        # peer, whose session ends as soon as the tunnel interface goes down.
        assert ipaddress.ip_address(neighbor) in iface.network
        assert neighbor != local


def test_the_two_ends_peer_with_each_other() -> None:
    dc, cloud = (_bgp_sessions(bird) for _, bird in SIDES)
    assert {(n, nas, la, las) for la, las, n, nas in dc} == set(cloud)
    assert {las for _, las, _, _ in dc}.isdisjoint({las for _, las, _, _ in cloud})  # eBGP


@pytest.mark.skipif(not bird_available(), reason="BIRD is not installed (bird2)")
@pytest.mark.parametrize("bird", [b for _, b in SIDES])
def test_bird_accepts_the_examples(bird: str) -> None:
    proc = subprocess.run(
        ["bird", "-p", "-c", str(EXAMPLES / bird)], capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("lockgate", "bird"), SIDES)
def test_examples_use_documentation_addresses_only(lockgate: str, bird: str) -> None:
    doc = [
        ipaddress.ip_network(n)
        for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
    ]
    for name in (lockgate, bird):
        text = (EXAMPLES / name).read_text()
        found = re.findall(r"[0-9a-f:.]+/\d+|\b\d+\.\d+\.\d+\.\d+\b|\b2001:db8[0-9a-f:]*", text)
        for word in found:
            net = ipaddress.ip_network(word, strict=False)
            if net.prefixlen == 0:
                continue  # the route-based selectors, 0.0.0.0/0 and ::/0
            assert any(net.subnet_of(d) for d in doc if d.version == net.version), (name, word)


def test_the_bgp_demo_runs_these_examples_in_its_lab() -> None:
    from daemon.demo import BGP_EXAMPLES, BIRD_EXAMPLES, check_matches_lab, read_site
    from daemon.lab.netns import SITE_A, SITE_B

    assert tuple(lockgate for lockgate, _ in SIDES) == BGP_EXAMPLES
    assert tuple(bird for _, bird in SIDES) == BIRD_EXAMPLES
    dc = read_site("dc", EXAMPLES / BGP_EXAMPLES[0])
    cloud = read_site("cloud", EXAMPLES / BGP_EXAMPLES[1])
    # Route mode has no subnets to read: the LANs are the lab's, which BIRD announces.
    assert dc.subnets == (SITE_A.subnet4, SITE_A.subnet6)
    assert cloud.subnets == (SITE_B.subnet4, SITE_B.subnet6)
    check_matches_lab(dc, cloud)


@pytest.mark.parametrize(("lockgate", "bird"), SIDES)
def test_route_examples_load(lockgate: str, bird: str) -> None:
    cfg = load_config(EXAMPLES / lockgate)
    [conn] = cfg.connections.values()
    assert conn.mode == "route" and conn.routes == ()  # BGP, not static routes
    raw = _route_connection(lockgate)
    assert conn.interface == raw["interface"]
    assert str(conn.inside_address) == raw["inside_address"]
    assert str(conn.inside_address6) == raw["inside_address6"]
    # The selectors default to everything: routing decides what enters the tunnel.
    assert {str(n) for n in conn.local_subnets} == {"0.0.0.0/0", "::/0"}
    assert {str(n) for n in conn.remote_subnets} == {"0.0.0.0/0", "::/0"}
