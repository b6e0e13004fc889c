"""conf -> IKE core settings: one IKE connection per peer, one CHILD SA per connection."""

from __future__ import annotations

import ipaddress
import time
from importlib import resources
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conf import ConfigError, load_config, loads_config
from conf.ike import endpoint_config, ike_connection, ike_connections
from daemon.lab.pki import Credential, Pki
from ikev2.codec.payloads import Certificate
from ikev2.config import Identity, IdKind
from ikev2.constants import CertEncoding
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


def test_part_two_settings_reach_the_core() -> None:
    cfg = loads_config(
        _config(
            """
    life_bytes = 1000000
    life_packets = 5000
    esn = true
    fragmentation = false
    fragment_size = 600
    """
        )
        .replace(
            "nat_port = 14500",
            "nat_port = 14500\n    retransmit_timeout = 1\n    retransmit_tries = 2",
        )
        .replace('"aes256-sha256-modp2048"', '"aes256-sha256-modp2048-esn"')
    )
    [ike] = ike_connections(cfg)
    assert (ike.fragmentation, ike.fragment_size) == (False, 600)
    assert (ike.retransmit_timeout, ike.retransmit_tries) == (1, 2)
    [child] = ike.children
    # esn = true adds "esn" where a proposal does not say it already.
    assert child.esp_proposals == ("chacha20poly1305-esn", "aes256-sha256-modp2048-esn")
    assert (child.life_bytes, child.life_packets) == (1000000, 5000)


def test_endpoint_settings_come_from_the_gateway_section() -> None:
    cfg = loads_config(
        _config().replace(
            "nat_port = 14500", "nat_port = 14500\n    cookie_threshold = 5\n    max_half_open = 40"
        )
    )
    endpoint = endpoint_config(cfg)
    assert (endpoint.ike_port, endpoint.nat_port) == (1500, 14500)
    assert endpoint.max_half_open == 40
    assert endpoint.cookies.demand_above == 5
    assert not endpoint.cookies.required(5) and endpoint.cookies.required(6)


def _write_pki(tmp_path: Path) -> tuple[Pki, Credential]:
    pki = Pki(key_type="ecdsa-p256")
    gw = pki.issue("gw-a.example.net")
    (tmp_path / "gw.crt").write_bytes(gw.cert_pem)
    key = tmp_path / "gw.key"
    key.write_bytes(gw.key_pem)
    key.chmod(0o600)
    (tmp_path / "ca.crt").write_bytes(pki.ca.cert_pem)
    return pki, gw


def _pubkey_config(tmp_path: Path) -> str:
    return f"""
    [gateway]
    addresses = ["198.51.100.1"]
    id = "gw-a.example.net"
    certificate = "{tmp_path / "gw.crt"}"
    private_key = "{tmp_path / "gw.key"}"
    ca = ["{tmp_path / "ca.crt"}"]
    [peers.b]
    address = "198.51.100.2"
    id = "gw-b.example.net"
    auth = "pubkey"
    [connections.one]
    peer = "b"
    local_subnets = ["192.0.2.0/24"]
    remote_subnets = ["203.0.113.0/24"]
    """


def test_pubkey_peer_gets_credentials_and_trust_anchors(tmp_path: Path) -> None:
    pki, gw = _write_pki(tmp_path)
    [ike] = ike_connections(loads_config(_pubkey_config(tmp_path)))
    assert ike.auth == "pubkey" and ike.psk is None
    assert ike.credentials is not None and ike.trust_anchors is not None
    assert ike.credentials.certificate == x509.load_pem_x509_certificate(gw.cert_pem)
    assert ike.trust_anchors.certificates == (x509.load_pem_x509_certificate(pki.ca.cert_pem),)
    # The peer's certificate from the same CA validates against these anchors.
    peer = pki.issue("gw-b.example.net")
    peer_cert = x509.load_pem_x509_certificate(peer.cert_pem)
    payload = Certificate(
        CertEncoding.X509_SIGNATURE, peer_cert.public_bytes(serialization.Encoding.DER)
    )
    assert ike.remote_id is not None
    validated = ike.trust_anchors.validate([payload], ike.remote_id, time.time())
    assert validated.certificate == peer_cert
    assert "PRIVATE KEY" not in repr(ike)


def test_unchanged_certificate_files_give_an_equal_connection(tmp_path: Path) -> None:
    # A reload compares the old and new IKE connections: the same files must compare
    # equal (private key objects alone never do), changed ones must not.
    _write_pki(tmp_path)
    first = ike_connections(loads_config(_pubkey_config(tmp_path)))
    again = ike_connections(loads_config(_pubkey_config(tmp_path)))
    assert first == again
    _write_pki(tmp_path)  # a new key and certificate in the same files
    renewed = ike_connections(loads_config(_pubkey_config(tmp_path)))
    assert renewed != first


def test_certificate_file_gone_after_loading_names_the_key(tmp_path: Path) -> None:
    _write_pki(tmp_path)
    cfg = loads_config(_pubkey_config(tmp_path))
    (tmp_path / "gw.crt").write_text("not a certificate any more")
    with pytest.raises(ConfigError, match=r"gateway\.private_key: .*certificate"):
        ike_connections(cfg)
