"""conf -> IKE core settings: one IKE connection per peer, one CHILD SA per connection."""

from __future__ import annotations

import ipaddress
from importlib import resources
from pathlib import Path

import pytest

from conf import ConfigError, load_config, loads_config
from conf.ike import ike_connection, ike_connections
from ikev2.config import Identity, IdKind
from ikev2.ts import TrafficSelector

PSK = "test-psk-NOT-SECRET-0123456789"


def test_example_becomes_one_ike_sa_with_two_children() -> None:
    path = Path(str(resources.files("conf") / "examples" / "dc.toml"))
    [ike] = ike_connections(load_config(path))
    assert ike.name == "cloud"
    assert ike.local_addresses == ("198.51.100.1",) and ike.remote_address == "198.51.100.2"
    assert ike.local_id == Identity.parse("198.51.100.1")
    assert ike.remote_id == Identity(IdKind.IPV4, ipaddress.ip_address("198.51.100.2").packed)
    assert ike.auth == "psk" and ike.psk == b"lockgate-example-psk-NOT-SECRET-change-me"
    assert ike.ike_proposals == ("aes256gcm16-prfsha384-x25519",)
    assert [c.name for c in ike.children] == ["cloud-net", "cloud-net-v6"]
    v4, v6 = ike.children
    assert v4.local_ts == (TrafficSelector.from_network("192.0.2.0/24"),)
    assert v4.remote_ts == (TrafficSelector.from_network("203.0.113.0/24"),)
    assert v6.local_ts == (TrafficSelector.from_network("2001:db8:a::/64"),)
    assert (v4.lifetime, v4.rekey_margin, v4.start) == (3600, 540, "initiate")
    assert v4.esp_proposals == ("aes256gcm16",)
    assert "lockgate-example-psk" not in repr(ike)


def _config(extra: str = "", peer_address: str = "2001:db8:100::2") -> str:
    return f"""
    [gateway]
    addresses = ["198.51.100.1", "2001:db8:100::1"]
    id = "gw-a.example.net"
    ike_port = 1500
    nat_port = 14500
    [peers.b]
    address = "{peer_address}"
    id = "gw-b.example.net"
    psk = "{PSK}"
    [peers.idle]
    address = "198.51.100.9"
    psk = "{PSK}"
    [connections.one]
    peer = "b"
    local_subnets = ["192.0.2.0/25", "192.0.2.128/25"]
    remote_subnets = ["203.0.113.0/24"]
    ike_proposals = ["aes128gcm16-prfsha256-ecp256"]
    esp_proposals = ["chacha20poly1305", "aes256-sha256-modp2048"]
    ike_lifetime = "2h"
    child_lifetime = "20m"
    rekey_margin = "2m"
    dpd_interval = 5
    dpd_action = "restart"
    encap = "force"
    replay_window = 512
    start = "trap"
    {extra}
    """


def test_every_setting_reaches_the_core() -> None:
    [ike] = ike_connections(loads_config(_config()))
    # Only peers with connections get an IKE connection ("idle" has none).
    assert ike.name == "b"
    # The peer is IPv6: initiate from our IPv6 address.
    assert ike.local_addresses == ("2001:db8:100::1", "198.51.100.1")
    assert ike.local_id == Identity(IdKind.FQDN, b"gw-a.example.net")
    assert (ike.ike_port, ike.nat_port) == (1500, 14500)
    assert (ike.ike_lifetime, ike.rekey_margin) == (7200, 120)
    assert (ike.dpd_interval, ike.dpd_action, ike.encap) == (5, "restart", "force")
    [child] = ike.children
    assert len(child.local_ts) == 2
    assert child.esp_proposals == ("chacha20poly1305", "aes256-sha256-modp2048")
    assert (child.lifetime, child.rekey_margin, child.replay_window, child.start) == (
        1200,
        120,
        512,
        "trap",
    )


def test_any_peer_is_responder_only() -> None:
    cfg = loads_config(_config(peer_address="%any").replace('start = "trap"', ""))
    [ike] = ike_connections(cfg)
    assert ike.remote_address is None and ike.is_responder_only
    assert ike.children[0].start == "wait"
    assert ike.local_addresses == ("198.51.100.1", "2001:db8:100::1")


def test_peer_without_connections_is_refused_when_asked_for() -> None:
    cfg = loads_config(_config())
    with pytest.raises(ConfigError, match=r"peers\.idle: no connection uses this peer"):
        ike_connection(cfg, cfg.peers["idle"])
