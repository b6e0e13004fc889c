"""The TUN device's MTU from the configuration and the path MTU."""

from __future__ import annotations

import ipaddress

from conf.load import loads_config
from daemon.childsa import inner_mtu
from daemon.mtu import path_mtu, proposal_suites, tun_mtu
from esp.suites import suite_by_name

CONFIG = """
[gateway]
addresses = ["2001:db8:100::1", "198.51.100.1"]
id = "gw-a.example.net"

[peers.cloud]
address = "198.51.100.2"
id = "198.51.100.2"
auth = "psk"
psk = "demo-only-not-a-secret-0123456789"

[connections.dc-cloud]
peer = "cloud"
local_subnets = ["192.0.2.0/24", "2001:db8:a::/64"]
remote_subnets = ["203.0.113.0/24"]
ike_proposals = ["aes256gcm16-prfsha384-x25519"]
esp_proposals = ["aes128gcm16", "aes256-sha512-x25519"]
start = "trap"
encap = "force"
child_lifetime = "1h"
"""


def test_proposal_suites_skip_key_exchange_and_esn_parts() -> None:
    suites = proposal_suites(("aes256gcm16-x25519", "aes256-sha256-modp2048-esn", "bogus"))
    assert [s.name for s in suites] == ["aes256gcm16", "aes256-sha256"]


def test_tun_mtu_fits_the_most_expensive_configured_suite_in_udp() -> None:
    config = loads_config(CONFIG)
    mtu = tun_mtu(config, {"198.51.100.2": 1500})
    cbc = inner_mtu(suite_by_name("aes256-sha512"), 1500, 4, udp_encap=True)
    gcm = inner_mtu(suite_by_name("aes128gcm16"), 1500, 4, udp_encap=True)
    assert mtu == min(cbc, gcm) == cbc
    # ESP of an inner packet of exactly that size fits 1500 with IPv4 and UDP headers.
    assert 20 + 8 + suite_by_name("aes256-sha512").esp_len(mtu) <= 1500
    assert 20 + 8 + suite_by_name("aes256-sha512").esp_len(mtu + 16) > 1500
    configured = loads_config(CONFIG.replace('id = "gw-a', 'mtu = 1300\nid = "gw-a'))
    assert tun_mtu(configured) == 1300


def test_path_mtu_of_an_unknown_peer_is_the_ethernet_default() -> None:
    assert path_mtu(None) == 1500
    # A documentation address with no route here: the kernel cannot tell, 1500 it is.
    value = path_mtu(str(ipaddress.ip_address("203.0.113.77")))
    assert 576 <= value <= 65535
