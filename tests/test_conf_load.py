"""conf: every kind of mistake fails at load with its key path and reason."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import ipaddress
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conf import (
    ConfigError,
    ConnectionConfig,
    GatewayConfig,
    PeerConfig,
    Secret,
    load_config,
    loads_config,
    parse_config,
)
from conf.toml_tables import TomlTables
from ikev2.config import ConfigError as IkeConfigError

PSK = "test-psk-NOT-SECRET-0123456789"

BASE: dict[str, Any] = {
    "gateway": {"addresses": ["198.51.100.1"], "id": "198.51.100.1"},
    "peers": {"dc1": {"address": "198.51.100.2", "id": "198.51.100.2", "psk": PSK}},
    "connections": {
        "dc1-net": {
            "peer": "dc1",
            "local_subnets": ["192.0.2.0/24"],
            "remote_subnets": ["203.0.113.0/24"],
        }
    },
}


def config(**sections: Any) -> dict[str, Any]:
    """BASE with some tables merged in; a value of None deletes the key."""
    data = copy.deepcopy(BASE)

    def merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is None:
                into.pop(key, None)
            elif isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(data, sections)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return [str(p) for p in err.value.problems]


def conn(**changes: Any) -> dict[str, Any]:
    return {"connections": {"dc1-net": changes}}


# --- the good cases ------------------------------------------------------------------


def test_minimal_config_has_the_documented_defaults() -> None:
    cfg = parse_config(config())
    assert cfg.gateway.addresses == (ipaddress.ip_address("198.51.100.1"),)
    assert cfg.gateway.control_socket == Path("/run/lockgate/lockgate.sock")
    assert (cfg.gateway.ike_port, cfg.gateway.nat_port) == (500, 4500)
    c = cfg.connections["dc1-net"]
    assert c.ike_proposals == ("aes256gcm16-prfsha384-x25519",)
    assert c.esp_proposals == ("aes256gcm16",)
    # A connection we initiate is initiated again when DPD finds its peer dead.
    assert (c.start, c.encap, c.dpd_action) == ("initiate", "auto", "restart")
    assert (c.ike_lifetime, c.child_lifetime, c.rekey_margin) == (14400, 3600, 540)
    assert cfg.peers["dc1"].psk == Secret(PSK.encode())
    assert cfg.connections_of("dc1") == (c,)


def test_every_documented_key_is_accepted() -> None:
    cfg = parse_config(
        config(
            gateway={
                "control_socket": "/run/lockgate/a.sock",
                "ike_port": 1500,
                "nat_port": 14500,
                "interface": "vpn0",
                "mtu": 1400,
                "log_level": "debug",
                "cookie_threshold": 0,
                "max_half_open": 50,
                "retransmit_timeout": "2s",
                "retransmit_tries": 3,
            },
            connections={
                "dc1-net": {
                    "ike_proposals": ["aes256-sha256-modp2048", "chacha20poly1305-prfsha256-x448"],
                    "esp_proposals": ["aes128gcm16-x25519", "aes256-sha256-esn", "aes128-sha512"],
                    "start": "trap",
                    "ike_lifetime": "1d",
                    "child_lifetime": "15m",
                    "rekey_margin": 60,
                    "dpd_interval": "10s",
                    "dpd_action": "restart",
                    "encap": "force",
                    "replay_window": 0,
                    "life_bytes": 10**9,
                    "life_packets": 10**6,
                    "esn": True,
                    "fragmentation": False,
                    "fragment_size": 1400,
                }
            },
        )
    )
    c = cfg.connections["dc1-net"]
    assert (c.ike_lifetime, c.child_lifetime, c.rekey_margin, c.dpd_interval) == (
        86400,
        900,
        60,
        10,
    )
    assert c.esp_proposals[1] == "aes256-sha256-esn"
    assert cfg.gateway.mtu == 1400 and cfg.gateway.interface == "vpn0"
    assert (cfg.gateway.cookie_threshold, cfg.gateway.max_half_open) == (0, 50)
    assert (cfg.gateway.retransmit_timeout, cfg.gateway.retransmit_tries) == (2, 3)
    assert (c.life_bytes, c.life_packets, c.esn) == (10**9, 10**6, True)
    assert (c.fragmentation, c.fragment_size) == (False, 1400)


def test_part_two_settings_have_their_documented_defaults() -> None:
    cfg = parse_config(config())
    assert (cfg.gateway.cookie_threshold, cfg.gateway.max_half_open) == (32, 1000)
    c = cfg.connections["dc1-net"]
    assert (c.fragmentation, c.fragment_size, c.esn) == (True, 1232, False)
    assert (c.life_bytes, c.life_packets) == (0, 0)


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        (
            conn(fragmentation="yes"),
            "connections.dc1-net.fragmentation: expected true or false, got a string ('yes')",
        ),
        (
            conn(fragment_size=100),
            "connections.dc1-net.fragment_size: 100 is out of range 200..65000",
        ),
        (conn(esn=1), "connections.dc1-net.esn: expected true or false, got an integer (1)"),
        (
            conn(esn=True, esp_proposals=["aes256gcm16", "aes256gcm16-noesn"]),
            'connections.dc1-net.esp_proposals[1]: says "noesn" but esn = true',
        ),
        (
            {"gateway": {"cookie_threshold": -1}},
            "gateway.cookie_threshold: -1 is out of range 0..1000000",
        ),
        (
            {"gateway": {"cookie_threshold": 10, "max_half_open": 10}},
            "gateway.cookie_threshold: must be below max_half_open (10)",
        ),
        (
            {"gateway": {"max_half_open": 0}},
            "gateway.max_half_open: 0 is out of range 1..1000000",
        ),
        ({"gateway": {"retransmit_timeout": 0}}, "gateway.retransmit_timeout: must be positive"),
        (
            {"gateway": {"retransmit_tries": 50}},
            "gateway.retransmit_tries: 50 is out of range 0..20",
        ),
    ],
    ids=[
        "fragmentation",
        "fragment_size",
        "esn",
        "esn-vs-noesn",
        "cookie",
        "cookie-cap",
        "cap",
        "retransmit-timeout",
        "retransmit-tries",
    ],
)
def test_part_two_mistakes_name_the_key(sections: dict[str, Any], expected: str) -> None:
    assert problems(config(**sections)) == [expected]


def test_fragmentation_must_agree_between_connections_to_one_peer() -> None:
    second = {
        "peer": "dc1",
        "local_subnets": ["192.0.2.0/25"],
        "remote_subnets": ["198.51.100.128/25"],
        "fragmentation": False,
    }
    found = problems(config(connections={"two": second}))
    assert found == [
        "connections.two.fragmentation: differs from connections.dc1-net; connections to "
        "peer 'dc1' share one IKE SA, so fragmentation must be the same"
    ]


@pytest.mark.parametrize("name", ["dc.toml", "cloud.toml"])
def test_examples_load(name: str) -> None:
    path = Path(str(resources.files("conf") / "examples" / name))
    cfg = load_config(path)
    assert cfg.connections
    for c in cfg.connections.values():
        for net in (*c.local_subnets, *c.remote_subnets):
            assert any(net.subnet_of(doc) for doc in _DOC_NETS if doc.version == net.version)


_DOC_NETS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]


def test_examples_are_a_matching_pair() -> None:
    base = Path(str(resources.files("conf") / "examples"))
    dc, cloud = load_config(base / "dc.toml"), load_config(base / "cloud.toml")
    [dc_peer], [cloud_peer] = dc.peers.values(), cloud.peers.values()
    assert dc_peer.address in cloud.gateway.addresses and dc_peer.id == cloud.gateway.id
    assert cloud_peer.address in dc.gateway.addresses and cloud_peer.id == dc.gateway.id
    assert dc_peer.psk == cloud_peer.psk
    dc_pairs = {(c.local_subnets, c.remote_subnets) for c in dc.connections.values()}
    cloud_pairs = {(c.remote_subnets, c.local_subnets) for c in cloud.connections.values()}
    assert dc_pairs == cloud_pairs
    assert {c.start for c in dc.connections.values()} == {"initiate"}
    assert {c.start for c in cloud.connections.values()} == {"wait"}


# --- one expected message per kind of mistake --------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            conn(esp_proposals=["aes129gcm16"]),
            "connections.dc1-net.esp_proposals[0]: unknown algorithm 'aes129gcm16'",
        ),
        (
            conn(esp_proposals=["aes256gcm16", "aes256-md5"]),
            "connections.dc1-net.esp_proposals[1]: unsupported algorithm 'md5' (known, not "
            "implemented)",
        ),
        (
            conn(esp_proposals=["aes256"]),
            "connections.dc1-net.esp_proposals[0]: proposal 'aes256' needs an integrity algorithm",
        ),
        (
            conn(ike_proposals=["aes256gcm16-prfsha384"]),
            "connections.dc1-net.ike_proposals[0]: IKE proposal 'aes256gcm16-prfsha384' has no "
            "key exchange group",
        ),
        (
            conn(ike_proposals=["aes256gcm16-sha256-prfsha256-x25519"]),
            "connections.dc1-net.ike_proposals[0]: proposal 'aes256gcm16-sha256-prfsha256-x25519' "
            "combines an AEAD cipher with integrity",
        ),
        (
            conn(ike_proposals=["aes256gcm16-x25519"]),
            "connections.dc1-net.ike_proposals[0]: IKE proposal 'aes256gcm16-x25519' with an "
            "AEAD cipher needs a prf...",
        ),
        (conn(ike_proposals=[]), "connections.dc1-net.ike_proposals: must not be empty"),
        (
            conn(esp_proposals=["aes192-sha256"]),
            "connections.dc1-net.esp_proposals[0]: the ESP engine does not implement "
            "'aes192-sha256'",
        ),
        (
            conn(ike_proposals=["aes256-sha1-modp2048"]),
            "connections.dc1-net.ike_proposals[0]: unsupported algorithm 'sha1' (known, not "
            "implemented)",
        ),
        (
            conn(esp_proposals="aes256gcm16"),
            "connections.dc1-net.esp_proposals: expected a list, got a string ('aes256gcm16')",
        ),
        (
            {"gateway": {"adresses": ["198.51.100.1"]}},
            "gateway.adresses: unknown key (did you mean 'addresses'?)",
        ),
        ({"gatway": {}}, "gatway: unknown key (did you mean 'gateway'?)"),
        ({"gateway": {"id": None}}, "gateway.id: required key is missing"),
        ({"gateway": None}, "gateway: required section [gateway] is missing"),
        (
            {"gateway": {"ike_port": "500"}},
            "gateway.ike_port: expected an integer, got a string ('500')",
        ),
        (
            {"gateway": {"ike_port": True}},
            "gateway.ike_port: expected an integer, got a boolean (True)",
        ),
        ({"gateway": {"nat_port": 70000}}, "gateway.nat_port: 70000 is out of range 1..65535"),
        ({"gateway": {"nat_port": 500}}, "gateway.nat_port: must differ from ike_port"),
        ({"gateway": {"mtu": 1000}}, "gateway.mtu: 1000 is out of range 1280..65535"),
        (
            {"gateway": {"log_level": "verbose"}},
            'gateway.log_level: must be one of "debug", "info", "warning", "error", '
            "got a string ('verbose')",
        ),
        (
            {"gateway": {"addresses": ["198.51.100.1", "198.51.100.300"]}},
            "gateway.addresses[1]: not an IP address: '198.51.100.300'",
        ),
        (
            {"gateway": {"addresses": ["198.51.100.1", "198.51.100.1"]}},
            "gateway.addresses: lists an address twice",
        ),
        ({"gateway": {"id": ""}}, "gateway.id: must not be empty"),
        (
            {"gateway": {"control_socket": "lockgate.sock"}},
            "gateway.control_socket: 'lockgate.sock' must be an absolute path",
        ),
        (
            {"gateway": {"interface": "a-very-long-interface"}},
            "gateway.interface: 'a-very-long-interface' is not a valid interface name "
            "(1-15 letters, digits, '_.-')",
        ),
        (
            {"gateway": {"certificate": "/nonexistent/gw.crt", "private_key": None}},
            "gateway.certificate: '/nonexistent/gw.crt' does not exist or is not a file",
        ),
        (
            conn(local_subnets=["192.0.2.1/24"]),
            "connections.dc1-net.local_subnets[0]: '192.0.2.1/24' has host bits set "
            "(did you mean '192.0.2.0/24'?)",
        ),
        (
            conn(remote_subnets=["203.0.113.0/33"]),
            "connections.dc1-net.remote_subnets[0]: not a subnet: '203.0.113.0/33' "
            '(e.g. "192.0.2.0/24")',
        ),
        (
            conn(remote_subnets=["203.0.113.0/24", "203.0.113.0/24"]),
            "connections.dc1-net.remote_subnets: lists a subnet twice",
        ),
        (conn(peer="dc2"), "connections.dc1-net.peer: no peer named 'dc2' (peers: dc1)"),
        (conn(peer=None), "connections.dc1-net.peer: required key is missing"),
        (
            conn(start="now"),
            'connections.dc1-net.start: must be one of "initiate", "trap", "wait", '
            "got a string ('now')",
        ),
        (
            conn(encap="yes"),
            "connections.dc1-net.encap: must be one of "
            '"auto", "force", "nat", got a string (\'yes\')',
        ),
        (
            conn(child_lifetime="1 hour"),
            'connections.dc1-net.child_lifetime: expected a duration such as 30, "30s", '
            '"15m" or "4h", got a string (\'1 hour\')',
        ),
        (
            conn(dpd_interval=-1),
            "connections.dc1-net.dpd_interval: a duration must not be negative",
        ),
        (conn(child_lifetime=0), "connections.dc1-net.child_lifetime: must be positive"),
        (
            conn(ike_lifetime=float("inf")),
            "connections.dc1-net.ike_lifetime: inf is not a finite duration",
        ),
        (
            conn(child_lifetime="5m", rekey_margin="5m"),
            "connections.dc1-net.rekey_margin: 300s is not below child_lifetime (300s)",
        ),
        (
            conn(child_lifetime="5m"),
            "connections.dc1-net.child_lifetime: 300s must exceed rekey_margin (540s, the default)",
        ),
        (
            conn(replay_window=100000),
            "connections.dc1-net.replay_window: 100000 is out of range 0..65536",
        ),
        (
            conn(local_subnet=["192.0.2.0/24"]),
            "connections.dc1-net.local_subnet: unknown key (did you mean 'local_subnets'?)",
        ),
        (
            {"connections": {"bad name": {}}},
            "connections.bad name: a name must start with a letter or digit and use only "
            "letters, digits, '-', '_' and '.' (up to 64)",
        ),
        ({"peers": "dc1"}, "peers: expected a table ([peers]), got a string ('dc1')"),
        (
            {"peers": {"dc1": {"address": "dc1.example.net"}}},
            "peers.dc1.address: not an IP address: 'dc1.example.net'",
        ),
        ({"peers": {"dc1": {"address": None}}}, "peers.dc1.address: required key is missing"),
        (
            {"peers": {"dc1": {"address": "2001:db8::2"}}},
            "peers.dc1.address: an IPv6 peer, but gateway.addresses has no IPv6 address",
        ),
        (
            {"peers": {"dc1": {"address": "198.51.100.1"}}},
            "peers.dc1.address: is one of gateway.addresses (the peer cannot be us)",
        ),
        (
            {"peers": {"dc1": {"auth": "cert"}}},
            'peers.dc1.auth: must be one of "psk", "pubkey", got a string (\'cert\')',
        ),
        (
            {"peers": {"dc1": {"psk": None}}},
            'peers.dc1: auth is "psk" but neither psk nor psk_file is set',
        ),
        (
            {"peers": {"dc1": {"psk": "short"}}},
            "peers.dc1.psk: too short (5 characters); use at least 16 random characters "
            "(RFC 7296 §2.15)",
        ),
        (
            {"peers": {"dc1": {"auth": "pubkey"}}},
            'peers.dc1.psk: only used with auth = "psk"',
        ),
        (
            {"peers": {"dc1": {"auth": "pubkey", "psk": None}}},
            'peers.dc1.auth: "pubkey" needs gateway.certificate, gateway.private_key and '
            "gateway.ca",
        ),
        (
            {"peers": {"dc1": {"id": "CN=dc1, O"}}},
            "peers.dc1.id: not a distinguished name: 'CN=dc1, O'",
        ),
        (
            {"peers": {"dc1": {"address": "%any"}}, **conn(start="initiate")},
            'connections.dc1-net.start: "initiate" needs an address for peers.dc1 (it is %any)',
        ),
        ({"connections": None}, "connections: no connection is configured"),
    ],
)
def test_mistake_is_reported_with_key_path_and_reason(
    changes: dict[str, Any], message: str
) -> None:
    assert message in problems(config(**changes))


def test_connections_sharing_a_peer_must_agree_on_ike_settings() -> None:
    second = {
        "peer": "dc1",
        "local_subnets": ["2001:db8:a::/64"],
        "remote_subnets": ["2001:db8:b::/64"],
        "ike_proposals": ["aes128gcm16-prfsha256-ecp256"],
        "encap": "force",
    }
    found = problems(config(connections={"v6": second}))
    assert found == [
        "connections.v6.ike_proposals: differs from connections.dc1-net; connections to peer "
        "'dc1' share one IKE SA, so ike_proposals must be the same",
        "connections.v6.encap: differs from connections.dc1-net; connections to peer 'dc1' "
        "share one IKE SA, so encap must be the same",
    ]


def test_same_subnet_pair_twice_is_refused() -> None:
    twin = dict(BASE["connections"]["dc1-net"])
    found = problems(config(connections={"twin": twin}))
    assert found == [
        "connections.twin: same local_subnets and remote_subnets as connections.dc1-net"
    ]


def test_every_mistake_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            config(
                gateway={"ike_port": 0, "colour": "blue"},
                connections={"dc1-net": {"esp_proposals": ["nope"], "peer": "ghost"}},
            )
        )
    text = str(err.value)
    assert text.startswith("4 problems:\n")
    for line in (
        "gateway.ike_port: 0 is out of range 1..65535",
        "gateway.colour: unknown key",
        "connections.dc1-net.esp_proposals[0]: unknown algorithm 'nope'",
        "connections.dc1-net.peer: no peer named 'ghost' (peers: dc1)",
    ):
        assert f"  {line}" in text
    assert isinstance(err.value, IkeConfigError)
    assert ConfigError is IkeConfigError  # one class: conf raises the IKE core's


def test_any_peer_defaults_to_waiting() -> None:
    cfg = parse_config(config(peers={"dc1": {"address": "%any", "id": "dc1.example.net"}}))
    assert cfg.peers["dc1"].address is None
    assert cfg.connections["dc1-net"].start == "wait"


def test_peer_id_defaults_to_its_address() -> None:
    cfg = parse_config(config(peers={"dc1": {"id": None}}))
    assert cfg.peers["dc1"].id == "198.51.100.2"


# --- files: TOML, PSK files, certificates --------------------------------------------


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[gateway]\naddresses = 198.51.100.1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        load_config(tmp_path / "nope.toml")


def test_psk_file_owner_only_is_read(tmp_path: Path) -> None:
    key = tmp_path / "dc1.psk"
    key.write_text(PSK + "\n")
    key.chmod(0o600)
    cfg = parse_config(config(peers={"dc1": {"psk": None, "psk_file": str(key)}}))
    assert cfg.peers["dc1"].psk == Secret(PSK.encode())  # trailing newline stripped
    assert cfg.peers["dc1"].psk_file == key


@pytest.mark.parametrize(
    ("mode", "who"), [(0o644, "everyone"), (0o604, "everyone"), (0o640, "its group")]
)
def test_psk_file_readable_by_others_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    key = tmp_path / "dc1.psk"
    key.write_text(PSK)
    key.chmod(mode)
    assert problems(config(peers={"dc1": {"psk": None, "psk_file": str(key)}})) == [
        f"peers.dc1.psk_file: '{key}' is accessible by {who} (mode {mode:04o}); a secret "
        "file must be owner-only: chmod 600"
    ]


def test_a_reload_with_kept_tables_reads_the_files_again(tmp_path: Path) -> None:
    # The TOML text does not change, the PSK file does: the kept tables save parsing,
    # never the reading and checking of the files they name.
    key = tmp_path / "dc1.psk"
    key.write_text(PSK)
    key.chmod(0o600)
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\naddresses = ["198.51.100.1"]\nid = "198.51.100.1"\n\n'
        f'[peers.dc1]\naddress = "198.51.100.2"\npsk_file = "{key}"\n\n'
        '[connections.dc1-net]\npeer = "dc1"\nlocal_subnets = ["192.0.2.0/24"]\n'
        'remote_subnets = ["203.0.113.0/24"]\n'
    )
    path.chmod(0o600)
    tables = TomlTables()
    first = load_config(path, tables=tables)
    assert first == load_config(path)
    key.write_text(PSK + "-rotated")
    second = load_config(path, tables=tables)
    assert tables.reused == 3  # every table came from the first load...
    assert second.peers["dc1"].psk == Secret((PSK + "-rotated").encode())  # ...not the key
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_config(path, tables=tables)


def test_psk_and_psk_file_together_are_refused(tmp_path: Path) -> None:
    key = tmp_path / "dc1.psk"
    key.write_text(PSK)
    key.chmod(0o600)
    assert problems(config(peers={"dc1": {"psk_file": str(key)}})) == [
        "peers.dc1.psk_file: set psk or psk_file, not both"
    ]


def test_short_psk_file_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "dc1.psk"
    key.write_text("tiny\n")
    key.chmod(0o600)
    assert problems(config(peers={"dc1": {"psk": None, "psk_file": str(key)}})) == [
        f"peers.dc1.psk_file: '{key}' holds a key of 4 characters; use at least 16 (RFC 7296 §2.15)"
    ]


def _pem_cert(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pki(tmp_path: Path) -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "certificate": tmp_path / "gw.crt",
        "private_key": tmp_path / "gw.key",
        "ca": tmp_path / "ca.crt",
    }
    files["certificate"].write_bytes(_pem_cert(key, "gw.example.net"))
    files["private_key"].write_bytes(_pem_key(key))
    files["private_key"].chmod(0o600)
    files["ca"].write_bytes(_pem_cert(ec.generate_private_key(ec.SECP256R1()), "Test CA"))
    return {k: str(v) for k, v in files.items()}


def test_pubkey_with_certificates_loads(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    cfg = parse_config(
        config(
            gateway={**pki, "ca": [pki["ca"]], "id": "CN=gw.example.net"},
            peers={"dc1": {"auth": "pubkey", "psk": None, "id": "CN=dc1.example.net"}},
        )
    )
    assert cfg.peers["dc1"].auth == "pubkey" and cfg.peers["dc1"].psk is None
    assert cfg.gateway.ca == (Path(pki["ca"]),)


def test_own_identity_not_in_the_certificate_is_refused_with_pubkey(tmp_path: Path) -> None:
    # The certificate names CN=gw.example.net and has no subjectAltName: an address
    # identity cannot be proven with it, a peer would refuse us at IKE_AUTH.
    pki = _pki(tmp_path)
    gateway = {**pki, "ca": [pki["ca"]], "id": "198.51.100.1"}
    pubkey = {"auth": "pubkey", "psk": None}
    assert problems(config(gateway=gateway, peers={"dc1": pubkey})) == [
        "gateway.id: '198.51.100.1' is not in our certificate (gateway.certificate "
        "'gw.example.net', auth = \"pubkey\" for peers.dc1): ID not in certificate "
        "subjectAltName [] of gw.example.net"
    ]
    # A peer's own local_id is what it checks; gateway.id is then not used with it.
    mine = {**pubkey, "local_id": "gw2.example.net"}
    assert problems(config(gateway=gateway, peers={"dc1": mine})) == [
        "peers.dc1.local_id: 'gw2.example.net' is not in our certificate (gateway.certificate "
        "'gw.example.net', auth = \"pubkey\" for peers.dc1): ID not in certificate "
        "subjectAltName [] of gw.example.net"
    ]
    named = {**pubkey, "local_id": "CN=gw.example.net"}
    assert parse_config(config(gateway=gateway, peers={"dc1": named})).peers["dc1"].local_id
    # With a PSK the certificate proves nothing: no such check.
    assert parse_config(config(gateway=gateway)).gateway.id == "198.51.100.1"


def test_key_not_matching_certificate_is_refused(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    other = tmp_path / "other.key"
    other.write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    other.chmod(0o600)
    found = problems(config(gateway={**pki, "ca": [pki["ca"]], "private_key": str(other)}))
    assert found == ["gateway.private_key: does not match the public key of gateway.certificate"]


def test_readable_private_key_and_garbage_files_are_refused(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    Path(pki["private_key"]).chmod(0o644)
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    found = problems(config(gateway={**pki, "ca": [pki["ca"], str(garbage)]}))
    assert found == [
        f"gateway.private_key: '{pki['private_key']}' is accessible by everyone (mode 0644); "
        "a secret file must be owner-only: chmod 600",
    ]
    Path(pki["private_key"]).chmod(0o600)
    found = problems(config(gateway={**pki, "ca": [pki["ca"], str(garbage)]}))
    assert found == [f"gateway.ca[1]: '{garbage}' is not a PEM X.509 certificate"]


def test_certificate_without_key_is_refused(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    found = problems(config(gateway={"certificate": pki["certificate"]}))
    assert found == ["gateway.private_key: certificate and private_key must be set together"]


# --- secrets stay secret ----------------------------------------------------------------


def test_secrets_are_not_in_repr_or_errors() -> None:
    cfg = loads_config(
        f"""
        [gateway]
        addresses = ["198.51.100.1"]
        id = "198.51.100.1"
        [peers.dc1]
        address = "198.51.100.2"
        psk = "{PSK}"
        [connections.dc1-net]
        peer = "dc1"
        local_subnets = ["192.0.2.0/24"]
        remote_subnets = ["203.0.113.0/24"]
        """
    )
    peer = cfg.peers["dc1"]
    for text in (repr(cfg), str(cfg), repr(peer), str(peer.psk), f"{peer.psk!r}"):
        assert PSK not in text
    assert peer.psk is not None and peer.psk.reveal() == PSK.encode()
    with pytest.raises(ConfigError) as err:
        parse_config(config(peers={"dc1": {"psk": PSK[:10]}}))
    assert PSK[:10] not in str(err.value)


def test_secret_equality_is_by_value() -> None:
    assert Secret(b"a" * 20) == Secret(b"a" * 20)
    assert Secret(b"a" * 20) != Secret(b"b" * 20)
    assert Secret(b"a" * 20) != b"a" * 20


# --- robustness ---------------------------------------------------------------------------

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    section=st.sampled_from(["gateway", "peers", "connections"]),
    key=st.sampled_from(["addresses", "id", "ike_port", "mtu", "dc1", "dc1-net", "psk", "ca", "x"]),
    value=_VALUES,
)
def test_any_shape_of_bad_input_raises_only_config_error(
    section: str, key: str, value: Any
) -> None:
    data = config()
    data[section] = copy.deepcopy(data[section])
    if value is None:
        data[section].pop(key, None)
    else:
        data[section][key] = value
    try:
        parse_config(data)
    except ConfigError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)


# --- documentation agrees with the loader -----------------------------------------------

_COMMENTED_KEY = re.compile(r"^# ([a-z_]+) = (.+?)(?:\s+#.*)?$")
# Keys whose example values name files that do not exist here, or exclude another key.
_NEEDS_FILES = {"certificate", "private_key", "ca", "psk_file"}


def test_every_key_commented_in_the_example_is_a_real_key() -> None:
    path = Path(str(resources.files("conf") / "examples" / "dc.toml"))
    lines, uncommented = [], []
    for line in path.read_text().splitlines():
        m = _COMMENTED_KEY.match(line)
        if m and m.group(1) not in _NEEDS_FILES:
            uncommented.append(m.group(1))
            line = f"{m.group(1)} = {m.group(2)}"
        lines.append(line)
    assert {"cookie_threshold", "life_bytes", "esn", "fragment_size", "dpd_action"} <= set(
        uncommented
    )
    cfg = loads_config("\n".join(lines))
    conn = cfg.connections["cloud-net"]
    assert (conn.life_bytes, conn.esn, conn.fragmentation) == (0, False, True)


def test_readme_configuration_table_names_every_key() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    # The first column of each row: one or more `key` names.
    names = {
        name
        for cell in re.findall(r"^\|([^|]*)\|", table, re.M)
        for name in re.findall(r"`([a-z_0-9]+)`", cell)
    }
    assert {"addresses", "dpd_action"} <= names  # the table is there
    fields = {
        f.name
        for model in (GatewayConfig, PeerConfig, ConnectionConfig)
        for f in dataclasses.fields(model)
    } - {"name", "ppk"}  # ppk: the key read from `ppk_file`, not a key of its own
    assert fields - names == set(), "keys missing from the README table"


# --- rough edges an operator hit: refused with the key, or warned ----------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            conn(local_subnets=["192.0.2.0/24"], remote_subnets=["2001:db8:b::/64"]),
            "connections.dc1-net.remote_subnets: IPv6 only, while local_subnets are IPv4 "
            "only: selectors pair per address family, so nothing could flow",
        ),
        (
            conn(child_lifetime="99999999999999999999d"),
            "connections.dc1-net.child_lifetime: '99999999999999999999d' is longer than "
            "the limit of 365 days",
        ),
        (
            conn(dpd_interval=366 * 86400),
            "connections.dc1-net.dpd_interval: 31622400 is longer than the limit of 365 days",
        ),
    ],
)
def test_rough_edges_are_refused_with_the_key(changes: dict[str, Any], message: str) -> None:
    assert message in problems(config(**changes))


def test_both_families_on_both_sides_pair_and_a_year_is_allowed() -> None:
    cfg = parse_config(
        config(
            **conn(
                local_subnets=["192.0.2.0/24", "2001:db8:a::/64"],
                remote_subnets=["203.0.113.0/24", "2001:db8:b::/64"],
                ike_lifetime="365d",
            )
        )
    )
    assert cfg.connections["dc1-net"].ike_lifetime == 365 * 86400
    assert cfg.warnings == ()


def test_a_family_on_one_side_only_is_warned_about() -> None:
    cfg = parse_config(config(**conn(local_subnets=["192.0.2.0/24", "2001:db8:a::/64"])))
    assert [str(w) for w in cfg.warnings] == [
        "connections.dc1-net.local_subnets: IPv6 subnets have no IPv6 partner in "
        "remote_subnets (selectors pair per address family): no IPv6 traffic will flow"
    ]


def test_an_any_peer_with_the_default_start_is_warned_about() -> None:
    cfg = parse_config(config(peers={"dc1": {"address": "%any"}}))
    assert cfg.connections["dc1-net"].start == "wait"
    assert [str(w) for w in cfg.warnings] == [
        'connections.dc1-net.start: runs as "wait": peers.dc1 has address = "%any", '
        "so only it can initiate"
    ]


def test_overlapping_connections_to_one_peer_are_warned_about() -> None:
    narrower = {
        "peer": "dc1",
        "local_subnets": ["192.0.2.0/25"],
        "remote_subnets": ["203.0.113.0/24"],
    }
    cfg = parse_config(config(connections={"narrow": narrower}))
    assert [str(w) for w in cfg.warnings] == [
        "connections.narrow.local_subnets: 192.0.2.0/25 overlaps 192.0.2.0/24 of "
        "connections.dc1-net towards the same peer and overlapping remote subnets "
        "(203.0.113.0/24, 203.0.113.0/24): the more specific policy takes the overlap"
    ]
    # Disjoint remote sides do not overlap, and neither do other peers' connections.
    elsewhere = dict(narrower, remote_subnets=["198.51.100.128/25"])
    assert parse_config(config(connections={"narrow": elsewhere})).warnings == ()


@pytest.mark.parametrize(
    ("starts", "address", "expected"),
    [
        (("initiate",), "198.51.100.2", "restart"),
        (("wait",), "198.51.100.2", "clear"),
        (("trap",), "198.51.100.2", "trap"),
        (("trap", "wait"), "198.51.100.2", "clear"),
        (("wait", "initiate"), "198.51.100.2", "restart"),
        ((None,), "%any", "clear"),  # a %any peer's connections can only wait
    ],
)
def test_dpd_action_default_follows_what_the_peers_connections_want(
    starts: tuple[str | None, ...], address: str, expected: str
) -> None:
    connections: dict[str, Any] = {"dc1-net": None}
    for i, start in enumerate(starts):
        body = {
            "peer": "dc1",
            "local_subnets": [f"192.0.2.{64 * i}/26"],
            "remote_subnets": ["203.0.113.0/24"],
        }
        if start is not None:
            body["start"] = start
        connections[f"c{i}"] = body
    cfg = parse_config(config(peers={"dc1": {"address": address}}, connections=connections))
    assert {c.dpd_action for c in cfg.connections.values()} == {expected}


def test_an_explicit_dpd_action_applies_to_the_peers_other_connections() -> None:
    second = {
        "peer": "dc1",
        "local_subnets": ["192.0.2.0/24"],
        "remote_subnets": ["198.51.100.128/25"],
    }
    cfg = parse_config(config(connections={"dc1-net": {"dpd_action": "clear"}, "second": second}))
    assert cfg.connections["second"].dpd_action == "clear"
    found = problems(
        config(
            connections={
                "dc1-net": {"dpd_action": "clear"},
                "second": dict(second, dpd_action="trap"),
            }
        )
    )
    assert found == [
        "connections.second.dpd_action: differs from connections.dc1-net; connections to "
        "peer 'dc1' share one IKE SA, so dpd_action must be the same"
    ]


def test_workers_default_to_one_and_take_a_count_or_auto() -> None:
    assert parse_config(config()).gateway.workers == 1
    assert parse_config(config(gateway={"workers": 2})).gateway.workers == 2
    cores = len(os.sched_getaffinity(0))
    assert parse_config(config(gateway={"workers": "auto"})).gateway.workers == min(cores, 16)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "gateway.workers: 0 is out of range 1..16"),
        (17, "gateway.workers: 17 is out of range 1..16"),
        ("4", "gateway.workers: expected an integer or \"auto\", got a string ('4')"),
        (True, "gateway.workers: expected an integer, got a boolean (True)"),
    ],
)
def test_workers_mistakes_name_the_key(value: Any, expected: str) -> None:
    assert problems(config(gateway={"workers": value})) == [expected]


def test_workers_refuse_route_mode_connections() -> None:
    route = {
        "peer": "dc1",
        "mode": "route",
        "interface": "vti-dc1",
        "inside_address": "203.0.113.1/30",
    }
    found = problems(config(gateway={"workers": 2}, connections={"dc1-net": None, "r": route}))
    assert found == [
        "gateway.workers: 2 workers do not serve route-mode connections yet (connections.r has "
        'mode = "route"); use workers = 1'
    ]
