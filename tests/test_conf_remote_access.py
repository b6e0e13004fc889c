"""conf: `[remote_access.NAME]` (point-to-cloud servers): every rule, by its key path."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import re
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from conf import ConfigError, loads_config, parse_config
from conf.model import DEFAULT_SSL_CIPHERS, GroupConfig, RemoteAccessConfig
from conf.users import User, save_users
from daemon.ovpn_profile import render_profile
from testkit.pki import Credential, Pki

S = "remote_access.office"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The server's credentials and the other files a server names, on disk."""
    directory = tmp_path_factory.mktemp("p2c")
    pki, clients = Pki(), Pki("clients CA")
    out: dict[str, str] = {}

    def credential(stem: str, cred: Credential) -> None:
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(cred.cert_pem)
        key.write_bytes(cred.key_pem)
        key.chmod(0o600)
        out[stem], out[f"{stem}_key"] = str(cert), str(key)

    credential("server", pki.issue("vpn.example.net", key_usage=True))
    credential("no_eku", pki.issue("vpn.example.net", eku=None, key_usage=True))
    credential("client_eku", pki.issue("vpn.example.net", eku="clientAuth", key_usage=True))
    credential("no_ku", pki.issue("vpn.example.net"))
    credential("other", pki.issue("other.example.net", key_usage=True))
    (directory / "clients-ca.pem").write_bytes(clients.ca.cert_pem)
    (directory / "eleven-cas.pem").write_bytes(
        b"".join(Pki(f"CA {i}").ca.cert_pem for i in range(11))
    )
    (directory / "not-pem.pem").write_text("hello\n")
    out["client_ca"] = str(directory / "clients-ca.pem")
    out["eleven_cas"] = str(directory / "eleven-cas.pem")
    out["not_pem"] = str(directory / "not-pem.pem")
    key_hex = secrets.token_hex(256)
    lines = [key_hex[i : i + 32] for i in range(0, len(key_hex), 32)]
    tls_crypt = directory / "tc.key"
    tls_crypt.write_text(
        "-----BEGIN OpenVPN Static key V1-----\n"
        + "\n".join(lines)
        + "\n-----END OpenVPN Static key V1-----\n"
    )
    tls_crypt.chmod(0o600)
    out["tls_crypt"] = str(tls_crypt)
    short = directory / "short.key"
    short.write_text(
        "-----BEGIN OpenVPN Static key V1-----\n00ff\n-----END OpenVPN Static key V1-----\n"
    )
    short.chmod(0o600)
    out["short_tls_crypt"] = str(short)
    out["users"] = str(directory / "office.users")
    out["dir"] = str(directory)
    return out


def base(files: dict[str, str]) -> dict[str, Any]:
    return {
        "gateway": {
            "addresses": ["198.51.100.1"],
            "id": "198.51.100.1",
            "certificate": files["server"],
            "private_key": files["server_key"],
        },
        "peers": {"dc1": {"address": "198.51.100.2", "psk": "test-psk-NOT-SECRET-0123456789"}},
        "connections": {
            "dc1-net": {
                "peer": "dc1",
                "local_subnets": ["203.0.113.0/25"],
                "remote_subnets": ["192.0.2.0/24"],
            }
        },
        "remote_access": {
            "office": {
                "protocol": "ssl",
                "client_pool": "198.51.100.128/25",
                "local_subnets": ["203.0.113.0/24"],
                "users": files["users"],
                "max_connections": 100,
            }
        },
    }


def config(files: dict[str, str], **server: Any) -> dict[str, Any]:
    """The base file with keys of remote_access.office changed (None deletes one)."""
    data = copy.deepcopy(base(files))
    table = data["remote_access"]["office"]
    for key, value in server.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return [str(p) for p in err.value.problems]


# --- the good cases ------------------------------------------------------------------


def test_a_server_has_the_documented_defaults(files: dict[str, str]) -> None:
    cfg = parse_config(config(files))
    [server] = cfg.remote_access.values()
    assert server.name == "office" and server.protocol == "ssl"
    assert (server.transport, server.port) == ("tcp", 443)
    assert server.ciphers == DEFAULT_SSL_CIPHERS
    assert server.client_pool == ipaddress.IPv4Network("198.51.100.128/25")
    assert server.client_pool6 is None and server.dns == ()
    assert server.auth == "password" and server.client_ca is None
    assert server.users == Path(files["users"])
    assert server.address == "198.51.100.1"  # gateway.addresses[0]
    assert (server.max_connections, server.connections_per_user) == (100, 5)
    assert server.certificate == Path(files["server"])
    assert server.private_key == Path(files["server_key"])
    assert server.tls_crypt_key is None and server.client_to_client is False
    assert dict(server.groups) == {}
    assert cfg.warnings == ()


def test_every_key_is_read(files: dict[str, str]) -> None:
    data = config(
        files,
        transport="udp",
        ciphers=["aes-128-gcm", "CHACHA20-POLY1305"],
        client_pool6="2001:db8:c::/64",
        local_subnets=["203.0.113.0/24", "2001:db8:b::/64"],
        dns=["203.0.113.53", "2001:db8:b::53"],
        address="vpn.example.net",
        max_connections=20,
        connections_per_user=2,
        certificate=files["other"],
        private_key=files["other_key"],
        tls_crypt_key=files["tls_crypt"],
        client_to_client=True,
        groups={
            "engineering": {"destinations": ["203.0.113.0/25"]},
            "sales": {"destinations": ["203.0.113.128/26", "2001:db8:b::/80"]},
        },
    )
    loaded = parse_config(data)
    server = loaded.remote_access["office"]
    # Served (pushed with ifconfig-ipv6): nothing to warn about.
    assert loaded.warnings == ()
    assert (server.transport, server.port) == ("udp", 1194)
    assert server.ciphers == ("AES-128-GCM", "CHACHA20-POLY1305")
    assert server.client_pool6 == ipaddress.IPv6Network("2001:db8:c::/64")
    assert [str(a) for a in server.dns] == ["203.0.113.53", "2001:db8:b::53"]
    assert server.address == "vpn.example.net"
    assert (server.max_connections, server.connections_per_user) == (20, 2)
    assert server.certificate == Path(files["other"])
    assert server.tls_crypt_key == Path(files["tls_crypt"])
    assert server.client_to_client is True
    assert list(server.groups) == ["engineering", "sales"]
    assert [str(d) for d in server.groups["sales"].destinations] == [
        "203.0.113.128/26",
        "2001:db8:b::/80",
    ]


def test_certificate_auth_needs_no_users_file(files: dict[str, str]) -> None:
    data = config(files, auth="certificate", client_ca=files["client_ca"], users=None)
    server = parse_config(data).remote_access["office"]
    assert server.auth == "certificate" and server.users is None
    assert server.client_ca == Path(files["client_ca"])


def test_servers_keep_file_order_and_may_stand_alone(files: dict[str, str]) -> None:
    data = config(files)
    second = {
        **data["remote_access"]["office"],
        "client_pool": "198.51.100.64/26",
        "max_connections": 60,
        "port": 8443,
    }
    data["remote_access"] = {"zeta": second, "office": data["remote_access"]["office"]}
    del data["connections"], data["peers"]
    cfg = parse_config(data)
    assert list(cfg.remote_access) == ["zeta", "office"]
    assert dict(cfg.connections) == {}


def test_a_file_with_neither_connections_nor_servers_is_refused(files: dict[str, str]) -> None:
    data = config(files)
    del data["connections"], data["peers"], data["remote_access"]
    assert problems(data) == ["connections: no connection is configured"]


def test_an_empty_dns_list_means_none(files: dict[str, str]) -> None:
    assert parse_config(config(files, dns=[])).remote_access["office"].dns == ()


def test_a_group_destination_outside_local_subnets_is_warned_about(files: dict[str, str]) -> None:
    data = config(files, groups={"ops": {"destinations": ["192.0.2.0/24"]}})
    assert [str(w) for w in parse_config(data).warnings] == [
        f"{S}.groups.ops.destinations: 192.0.2.0/24 is outside local_subnets: clients "
        "get no route to it"
    ]


def test_an_existing_users_file_is_checked(files: dict[str, str], tmp_path: Path) -> None:
    users = tmp_path / "office.users"
    save_users(users, {"alice": User("alice", password="scrypt$1$2$3$AA==$AA==")})
    assert parse_config(config(files, users=str(users))).remote_access["office"].users == users
    users.chmod(0o644)
    [found] = problems(config(files, users=str(users)))
    assert found.startswith(f"{S}.users: the users file holds password hashes")


# --- one message per mistake ---------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"protocol": "ikev2", "transport": "udp"},
            f'{S}.transport: only for protocol = "ssl" servers',
        ),
        (
            {"protocol": "l2tp"},
            f'{S}.protocol: must be one of "ssl", "ikev2", got a string (\'l2tp\')',
        ),
        (
            {"transport": "sctp"},
            f'{S}.transport: must be one of "tcp", "udp", got a string (\'sctp\')',
        ),
        ({"port": 0}, f"{S}.port: 0 is out of range 1..65535"),
        ({"port": 65536}, f"{S}.port: 65536 is out of range 1..65535"),
        ({"ciphers": []}, f"{S}.ciphers: must not be empty"),
        (
            {"ciphers": ["AES-256-GCM", "BF-CBC"]},
            f"{S}.ciphers[1]: unknown cipher 'BF-CBC' (known: AES-128-GCM, AES-256-GCM, "
            "CHACHA20-POLY1305)",
        ),
        ({"ciphers": ["AES-256-GCM", "aes-256-gcm"]}, f"{S}.ciphers[1]: lists AES-256-GCM twice"),
        ({"client_pool": None}, f"{S}.client_pool: required key is missing"),
        (
            {"client_pool": "2001:db8:c::/64"},
            f"{S}.client_pool: '2001:db8:c::/64' is not an IPv4 network",
        ),
        (
            {"client_pool": "198.51.100.129/25"},
            f"{S}.client_pool: '198.51.100.129/25' has host bits set "
            "(did you mean '198.51.100.128/25'?)",
        ),
        (
            {"client_pool": "198.51.100.128/31", "max_connections": 1},
            f"{S}.client_pool: 198.51.100.128/31 is smaller than a /30 (the server, one client, "
            "network, broadcast)",
        ),
        (
            {"client_pool": "198.51.100.128/28"},
            f"{S}.client_pool: a pool smaller than max_connections: 198.51.100.128/28 has 13 "
            "client addresses (the server takes 198.51.100.129), max_connections is 100",
        ),
        (
            {"client_pool": "198.51.100.128/25", "max_connections": 126},
            f"{S}.client_pool: a pool smaller than max_connections: 198.51.100.128/25 has 125 "
            "client addresses (the server takes 198.51.100.129), max_connections is 126",
        ),
        (
            {"client_pool6": "198.51.100.64/26"},
            f"{S}.client_pool6: '198.51.100.64/26' is not an IPv6 network",
        ),
        (
            {"client_pool6": "2001:db8:c::/122"},
            f"{S}.client_pool6: a pool smaller than max_connections: 2001:db8:c::/122 has 62 "
            "client addresses (the server takes 2001:db8:c::1), max_connections is 100",
        ),
        (
            {"client_pool": "203.0.113.0/24"},
            f"{S}.client_pool: 203.0.113.0/24 overlaps local_subnets 203.0.113.0/24",
        ),
        (
            {
                "client_pool6": "2001:db8:b::/64",
                "local_subnets": ["203.0.113.0/24", "2001:db8:b::/48"],
            },
            f"{S}.client_pool6: 2001:db8:b::/64 overlaps local_subnets 2001:db8:b::/48",
        ),
        ({"local_subnets": None}, f"{S}.local_subnets: required key is missing"),
        ({"local_subnets": []}, f"{S}.local_subnets: must not be empty"),
        (
            {"local_subnets": [f"203.0.113.{8 * i}/29" for i in range(21)]},
            f"{S}.local_subnets: lists 21 subnets; a server pushes at most 20",
        ),
        ({"local_subnets": ["203.0.113.0/24"] * 2}, f"{S}.local_subnets: lists a subnet twice"),
        (
            {"local_subnets": ["nowhere"]},
            f"{S}.local_subnets[0]: not a subnet: 'nowhere' (e.g. \"192.0.2.0/24\")",
        ),
        (
            {"dns": ["203.0.113.53", "203.0.113.54", "203.0.113.55"]},
            f"{S}.dns: lists 3 servers; at most 2 are pushed",
        ),
        ({"dns": ["dns.example.net"]}, f"{S}.dns[0]: not an IP address: 'dns.example.net'"),
        (
            {"auth": "psk"},
            f'{S}.auth: must be one of "password", "certificate", "any", got a string (\'psk\')',
        ),
        (
            {"auth": "any"},
            f'{S}.auth: "any" is only for ikev2 servers; use "password" or "certificate"',
        ),
        (
            {"auth": "certificate"},
            f'{S}.client_ca: required with auth = "certificate" (the CAs of the clients)',
        ),
        (
            {"users": None},
            f'{S}.users: required with auth = "password" (the file `lockgate user` writes)',
        ),
        ({"users": "office.users"}, f"{S}.users: 'office.users' must be an absolute path"),
        (
            {"address": "vpn example net"},
            f"{S}.address: 'vpn example net' is neither an IP address nor a DNS name",
        ),
        ({"max_connections": 0}, f"{S}.max_connections: 0 is out of range 1..500"),
        ({"max_connections": 501}, f"{S}.max_connections: 501 is out of range 1..500"),
        ({"connections_per_user": 0}, f"{S}.connections_per_user: 0 is out of range 1..5"),
        ({"connections_per_user": 6}, f"{S}.connections_per_user: 6 is out of range 1..5"),
        (
            {"client_to_client": "yes"},
            f"{S}.client_to_client: expected true or false, got a string ('yes')",
        ),
        (
            {"tls_crypt_key": "/nonexistent/tc.key"},
            f"{S}.tls_crypt_key: '/nonexistent/tc.key' does not exist or is not a file",
        ),
        ({"portt": 443}, f"{S}.portt: unknown key (did you mean 'port'?)"),
        ({"groups": {"ops": {}}}, f"{S}.groups.ops.destinations: required key is missing"),
        (
            {"groups": {"ops": {"destinations": []}}},
            f"{S}.groups.ops.destinations: must not be empty",
        ),
        (
            {"groups": {"ops": {"destinations": [f"203.0.113.{i * 16}/28" for i in range(11)]}}},
            f"{S}.groups.ops.destinations: lists 11 prefixes; a group has at most 10",
        ),
        (
            {"groups": {"ops": {"destinations": ["203.0.113.0/28", "203.0.113.0/28"]}}},
            f"{S}.groups.ops.destinations: lists a prefix twice",
        ),
        (
            {"groups": {"ops": {"destinations": ["203.0.113.0/28"], "members": ["alice"]}}},
            f"{S}.groups.ops.members: unknown key",
        ),
        (
            {"groups": {"ops": ["203.0.113.0/28"]}},
            f"{S}.groups.ops: expected a table ([{S}.groups.ops]), got a list",
        ),
        (
            {"groups": {"bad name": {"destinations": ["203.0.113.0/28"]}}},
            f"{S}.groups.bad name: a name must start with a letter or digit and use only "
            "letters, digits, '-', '_' and '.' (up to 64)",
        ),
    ],
)
def test_each_mistake_names_its_key(
    files: dict[str, str], changes: dict[str, Any], message: str
) -> None:
    assert problems(config(files, **changes)) == [message]


def test_file_keys_are_checked(files: dict[str, str]) -> None:
    def found(**changes: Any) -> list[str]:
        return problems(config(files, **changes))

    certificate_auth = {"auth": "certificate", "users": None}
    assert found(**certificate_auth, client_ca=files["not_pem"]) == [
        f"{S}.client_ca: '{files['not_pem']}' is not a PEM file of X.509 certificates"
    ]
    assert found(**certificate_auth, client_ca=files["eleven_cas"]) == [
        f"{S}.client_ca: '{files['eleven_cas']}' holds 11 certificates; at most 10 CAs"
    ]
    assert found(client_ca=files["client_ca"]) == [
        f'{S}.client_ca: only used with auth = "certificate"'
    ]
    assert found(tls_crypt_key=files["short_tls_crypt"]) == [
        f"{S}.tls_crypt_key: '{files['short_tls_crypt']}' is not an OpenVPN tls-crypt key: "
        "static key has 2 octets, not 256"
    ]
    assert found(tls_crypt_key=files["server_key"]) == [
        f"{S}.tls_crypt_key: '{files['server_key']}' is not an OpenVPN tls-crypt key: "
        "no OpenVPN Static key V1 block"
    ]
    Path(files["tls_crypt"]).chmod(0o640)
    try:
        [message] = found(tls_crypt_key=files["tls_crypt"])
    finally:
        Path(files["tls_crypt"]).chmod(0o600)
    assert message.startswith(f"{S}.tls_crypt_key: ") and "chmod 600" in message


def test_the_server_certificate_must_suit_the_openvpn_client(files: dict[str, str]) -> None:
    def found(stem: str) -> list[str]:
        return problems(config(files, certificate=files[stem], private_key=files[f"{stem}_key"]))

    cn = "vpn.example.net"  # as ikev2.certs.describe names a certificate
    no_eku = (
        f"{S}.certificate: '{cn}' has no serverAuth extended key usage; the OpenVPN "
        "client's `remote-cert-tls server` refuses it"
    )
    assert found("no_eku") == [no_eku]
    assert found("client_eku") == [no_eku]
    assert found("no_ku") == [
        f"{S}.certificate: '{cn}' has no keyUsage extension; the OpenVPN client's "
        "`remote-cert-tls server` requires one (digitalSignature, keyEncipherment)"
    ]
    # The gateway's certificate, the default, is held to the same rules.
    data = config(files)
    data["gateway"].update(certificate=files["no_ku"], private_key=files["no_ku_key"])
    [message] = problems(data)
    assert message.startswith(f"{S}.certificate: '{cn}' (gateway.certificate, the default)")


def test_the_server_needs_a_certificate_and_its_key(files: dict[str, str]) -> None:
    data = config(files)
    del data["gateway"]["certificate"], data["gateway"]["private_key"]
    assert problems(data) == [
        f"{S}.certificate: an SSL server needs a certificate: set certificate and "
        "private_key here or in [gateway]"
    ]
    assert problems(config(files, certificate=files["other"])) == [
        f"{S}.private_key: certificate and private_key must be set together"
    ]
    mismatched = config(files, certificate=files["other"], private_key=files["server_key"])
    assert problems(mismatched) == [
        f"{S}.private_key: does not match the public key of the server's certificate"
    ]
    Path(files["other_key"]).chmod(0o644)
    try:
        [message] = problems(
            config(files, certificate=files["other"], private_key=files["other_key"])
        )
    finally:
        Path(files["other_key"]).chmod(0o600)
    assert message.startswith(f"{S}.private_key: ") and "chmod 600" in message


# --- rules between servers, and with the connections ---------------------------------


def two_servers(files: dict[str, str], **second: Any) -> dict[str, Any]:
    data = config(files)
    office = data["remote_access"]["office"]
    data["remote_access"]["home"] = {
        **office,
        "client_pool": "198.51.100.64/26",
        "max_connections": 60,
        "port": 8443,
        **second,
    }
    return data


def test_two_servers_on_one_transport_and_port_are_refused(files: dict[str, str]) -> None:
    assert problems(two_servers(files, port=443)) == [
        "remote_access.home.port: tcp port 443 is taken by remote_access.office (both "
        "listen on gateway.addresses)"
    ]
    # The same number on the other transport is another socket.
    parse_config(two_servers(files, port=443, transport="udp"))


def test_a_udp_server_keeps_off_the_ike_ports(files: dict[str, str]) -> None:
    assert problems(config(files, transport="udp", port=4500)) == [
        f"{S}.port: udp port 4500 is gateway.nat_port"
    ]


def test_pools_must_not_overlap(files: dict[str, str]) -> None:
    assert problems(two_servers(files, client_pool="198.51.100.0/24", max_connections=100)) == [
        "remote_access.home.client_pool: 198.51.100.0/24 overlaps remote_access.office's pool "
        "198.51.100.128/25"
    ]
    assert problems(config(files, client_pool="192.0.2.0/24")) == [
        f"{S}.client_pool: 192.0.2.0/24 overlaps connections.dc1-net.remote_subnets 192.0.2.0/24"
    ]


def three_servers(files: dict[str, str], last: int) -> dict[str, Any]:
    """office (100 clients), home (200) and lab (`last`): no /24 of the documentation
    ranges holds 401 clients, so three servers reach the limit. Without the
    connection, 192.0.2.0/24 is free for home; lab serves an IPv6 subnet so that
    203.0.113.0/24 is free for its pool."""
    data = two_servers(files, max_connections=200, client_pool="192.0.2.0/24")
    del data["connections"], data["peers"]
    data["remote_access"]["lab"] = {
        **data["remote_access"]["office"],
        "client_pool": "203.0.113.0/24",
        "local_subnets": ["2001:db8:b::/64"],
        "max_connections": last,
        "port": 8444,
    }
    return data


def test_the_gateway_serves_at_most_500_clients(files: dict[str, str]) -> None:
    assert problems(three_servers(files, last=201)) == [
        "remote_access.lab.max_connections: the servers' max_connections add up to 501 "
        "(100 + 200 + 201); a gateway serves at most 500 clients"
    ]
    parse_config(three_servers(files, last=200))


# --- the example -----------------------------------------------------------------------


def test_the_office_example_loads(tmp_path: Path) -> None:
    """conf/examples/office.toml, with the files it names made here."""
    example = Path(str(resources.files("conf") / "examples" / "office.toml"))
    pki = Pki()
    server = pki.issue("vpn.example.net", key_usage=True)
    made = {
        "/etc/lockgate/vpn.pem": server.cert_pem,
        "/etc/lockgate/vpn.key": server.key_pem,
        "/etc/lockgate/ca.pem": pki.ca.cert_pem,
    }
    text = example.read_text()
    for name, content in made.items():
        local = tmp_path / Path(name).name
        local.write_bytes(content)
        local.chmod(0o600)
        assert f'"{name}"' in text
        text = text.replace(f'"{name}"', f'"{local}"')
    text = text.replace("/etc/lockgate/office.users", str(tmp_path / "office.users"))
    cfg = loads_config(text)
    office = cfg.remote_access["office"]
    assert (office.transport, office.port, office.auth) == ("tcp", 443, "password")
    assert list(office.groups) == ["engineering", "sales"]
    assert cfg.warnings == () and dict(cfg.connections) == {}
    assert render_profile(cfg, office).count("<ca>") == 1


def test_readme_remote_access_table_names_every_key() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Point-to-cloud (remote access)", 1)[1].split("\n## ", 1)[0]
    names = {
        name
        for cell in re.findall(r"^\|([^|]*)\|", section, re.M)
        for name in re.findall(r"`([a-z_0-9]+)`", cell)
    }
    fields = {
        f.name for model in (RemoteAccessConfig, GroupConfig) for f in dataclasses.fields(model)
    } - {"name", "groups"}
    assert fields - names == set(), "keys missing from the README table"


def test_a_key_usage_without_digital_signature_is_refused(
    files: dict[str, str], tmp_path: Path
) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vpn.example.net")])
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "ke.pem", tmp_path / "ke.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    data = config(files, certificate=str(cert_file), private_key=str(key_file))
    assert problems(data) == [
        f"{S}.certificate: 'vpn.example.net' has keyUsage without digitalSignature; "
        "the TLS handshake signs with the server's key, so clients would refuse it"
    ]
