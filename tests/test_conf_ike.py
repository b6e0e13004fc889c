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
from ikev2.codec import decode_header
from ikev2.codec.payloads import Certificate
from ikev2.config import Identity, IdKind
from ikev2.constants import CertEncoding, ExchangeType, NotifyType
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint
from ikev2.events import Event, IkeSaDeleted, IkeSaEstablished
from ikev2.ts import TrafficSelector
from testkit.ikev2_pair import deliver, on_wire
from testkit.pki import Credential, Pki

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


# --- per-peer identities and INITIAL_CONTACT -------------------------------------------

_A, _B = "198.51.100.1", "198.51.100.2"


def _two_peers_to_one_gateway(p1_extra: str = "", p0_extra: str = "") -> str:
    """Gateway A with two peer sections that both reach gateway B."""
    sections = [f'[gateway]\naddresses = ["{_A}"]\nid = "gw-a.example.net"\n']
    for i, extra in enumerate((p0_extra, p1_extra)):
        sections.append(
            f'[peers.p{i}]\naddress = "{_B}"\nid = "{_B}"\npsk = "{PSK}"\n{extra}\n'
            f'[connections.c{i}]\npeer = "p{i}"\nlocal_subnets = ["192.0.2.{i}/32"]\n'
            f'remote_subnets = ["203.0.113.{i}/32"]\nstart = "wait"\n'
        )
    return "\n".join(sections)


_RESPONDER = f"""
[gateway]
addresses = ["{_B}"]
id = "{_B}"
[peers.any]
address = "%any"
psk = "{PSK}"
[connections.net]
peer = "any"
local_subnets = ["203.0.113.0/24"]
remote_subnets = ["192.0.2.0/24"]
start = "wait"
"""


def _bring_up_both(initiator_toml: str) -> tuple[list[Event], list[bytes], Endpoint]:
    """A initiates p0, then p1 once p0 is up; returns B's events, A's IKE_AUTH requests
    as sent, and B."""
    a = Endpoint(ike_connections(loads_config(initiator_toml)), rng=DeterministicRandom(b"a"))
    b = Endpoint(ike_connections(loads_config(_RESPONDER)), rng=DeterministicRandom(b"b"))
    events_b: list[Event] = []
    auth_requests: list[bytes] = []

    def pump(now: float) -> None:
        for _ in range(20):
            moved = False
            list(a.events())
            for d in a.datagrams_to_send(now):
                # Two lockgates move to port 4500 after IKE_SA_INIT (ike_natd), where
                # IKE messages follow the 4-octet non-ESP marker (RFC 3948 §2.2) on the
                # wire (`on_wire`); the endpoint gives the bare message.
                message = d.data
                header = decode_header(message)
                if header.exchange_type == ExchangeType.IKE_AUTH and not header.response:
                    auth_requests.append(message)
                deliver(b, on_wire(d), d.remote, d.local, now)
                moved = True
            events_b.extend(b.events())
            for d in b.datagrams_to_send(now):
                deliver(a, on_wire(d), d.remote, d.local, now)
                moved = True
            if not moved:
                return

    a.initiate("p0", 0.0)
    pump(0.0)
    a.initiate("p1", 1.0)
    pump(1.0)
    return events_b, auth_requests, b


def _initial_contacts(b: Endpoint, requests: list[bytes]) -> list[bool]:
    """Which IKE_AUTH requests carried INITIAL_CONTACT, opened with B's keys."""
    by_spi = {sa.spi_i: sa for sa in b.ike_sas()}
    out = []
    for data in requests:
        sa = by_spi[decode_header(data).spi_i]
        assert sa.sk is not None
        out.append(sa.sk.inbound.open(data).notify(NotifyType.INITIAL_CONTACT) is not None)
    return out


def test_peer_local_id_defaults_to_gateway_id_and_can_be_set_per_peer() -> None:
    toml = _two_peers_to_one_gateway(p1_extra='local_id = "i1.bench.example"')
    cfg = loads_config(toml)
    assert cfg.peers["p0"].local_id is None and cfg.peers["p1"].local_id == "i1.bench.example"
    p0, p1 = ike_connections(cfg)
    assert p0.local_id == Identity.parse("gw-a.example.net")
    assert p1.local_id == Identity.parse("i1.bench.example")


def test_bad_local_id_and_initial_contact_are_reported_with_their_key() -> None:
    toml = _two_peers_to_one_gateway(p1_extra='local_id = ""\ninitial_contact = "yes"')
    with pytest.raises(ConfigError) as info:
        loads_config(toml)
    text = str(info.value)
    assert "peers.p1.local_id" in text and "peers.p1.initial_contact" in text


def test_per_peer_identities_reach_the_wire_and_the_gateway_keeps_both_ike_sas() -> None:
    toml = _two_peers_to_one_gateway(p1_extra='local_id = "i1.bench.example"')
    events_b, requests, b = _bring_up_both(toml)
    ids = [e.remote_id for e in events_b if isinstance(e, IkeSaEstablished)]
    assert ids == ["gw-a.example.net", "i1.bench.example"]  # IDi as B authenticated it
    # Two identities: each IKE SA is the only one between its pair of identities, so
    # each says INITIAL_CONTACT, and B drops neither (RFC 7296 §2.4).
    assert _initial_contacts(b, requests) == [True, True]
    assert not [e for e in events_b if isinstance(e, IkeSaDeleted)]
    assert len(b.ike_sas()) == 2


def test_one_identity_to_one_gateway_sends_initial_contact_only_once() -> None:
    # Two peer sections, one identity: the second IKE SA must not carry INITIAL_CONTACT,
    # or B would drop the first (what the setup-rate benchmark ran into).
    events_b, requests, b = _bring_up_both(_two_peers_to_one_gateway())
    assert _initial_contacts(b, requests) == [True, False]
    assert not [e for e in events_b if isinstance(e, IkeSaDeleted)]
    assert len(b.ike_sas()) == 2


def test_initial_contact_false_never_sends_it() -> None:
    toml = _two_peers_to_one_gateway(
        p0_extra="initial_contact = false", p1_extra='local_id = "i1.bench.example"'
    )
    cfg = loads_config(toml)
    assert ike_connections(cfg)[0].initial_contact is False
    assert ike_connections(cfg)[1].initial_contact is True
    _, requests, b = _bring_up_both(toml)
    assert _initial_contacts(b, requests) == [False, True]
