"""conf: `[remote_access.NAME]` with `protocol = "ikev2"`: its own keys, the keys it
refuses, and the warnings about a server certificate the built-in clients refuse;
`lockgate user` stores the NT hash for such a server and says so."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest

from conf import ConfigError, parse_config
from conf.model import DEFAULT_RA_ESP_PROPOSALS, DEFAULT_RA_IKE_PROPOSALS
from conf.users import load_users
from daemon.cli import main
from ikev2.crypto.mschapv2 import nt_password_hash
from testkit.pki import Credential, Pki

S = "remote_access.laptops"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("ikev2ra")
    pki = Pki("laptops CA")
    out: dict[str, str] = {"dir": str(directory)}

    def credential(stem: str, cred: Credential) -> None:
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(cred.cert_pem)
        key.write_bytes(cred.key_pem)
        key.chmod(0o600)
        out[stem], out[f"{stem}_key"] = str(cert), str(key)

    credential("server", pki.issue("vpn.example.net", "ecdsa-p256"))
    credential("no_eku", pki.issue("vpn.example.net", "ecdsa-p256", eku=None))
    credential("ed25519", pki.issue("vpn.example.net", "ed25519"))
    credential("rsa1024", pki.issue("vpn.example.net", "rsa1024"))
    (directory / "ca.pem").write_bytes(pki.ca.cert_pem)
    out["ca"] = str(directory / "ca.pem")
    out["users"] = str(directory / "laptops.users")
    return out


def base(files: dict[str, str], cert: str = "server") -> dict[str, Any]:
    return {
        "gateway": {
            "addresses": ["198.51.100.1"],
            "id": "198.51.100.1",
            "certificate": files[cert],
            "private_key": files[f"{cert}_key"],
            "ca": [files["ca"]],
        },
        "remote_access": {
            "laptops": {
                "protocol": "ikev2",
                "client_pool": "198.51.100.128/25",
                "local_subnets": ["203.0.113.0/24"],
                "users": files["users"],
                "address": "vpn.example.net",
                "max_connections": 100,
            }
        },
    }


def config(files: dict[str, str], cert: str = "server", **server: Any) -> dict[str, Any]:
    data = copy.deepcopy(base(files, cert))
    table = data["remote_access"]["laptops"]
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


def test_an_ikev2_server_loads_with_the_strong_defaults(files: dict[str, str]) -> None:
    cfg = parse_config(config(files, dns=["203.0.113.53"], dns_domains=["Corp.Example.NET."]))
    [server] = cfg.remote_access.values()
    assert server.protocol == "ikev2" and server.auth == "password"
    assert server.ike_proposals == DEFAULT_RA_IKE_PROPOSALS
    assert server.esp_proposals == DEFAULT_RA_ESP_PROPOSALS
    assert server.dns_domains == ("corp.example.net",)
    assert cfg.warnings == ()
    weak = {"des", "3des", "md5", "modp1024", "sha1"}
    for proposal in DEFAULT_RA_IKE_PROPOSALS + DEFAULT_RA_ESP_PROPOSALS:
        assert not weak & set(proposal.split("-")), proposal


def test_ikev2_keys_and_auth_any(files: dict[str, str]) -> None:
    cfg = parse_config(
        config(
            files,
            auth="any",
            client_ca=files["ca"],
            client_pool6="2001:db8:c::/64",
            ike_proposals=["aes128gcm16-prfsha256-ecp256"],
            esp_proposals=["aes128gcm16"],
        )
    )
    server = cfg.remote_access["laptops"]
    assert server.auth == "any" and str(server.client_pool6) == "2001:db8:c::/64"
    assert server.ike_proposals == ("aes128gcm16-prfsha256-ecp256",)
    assert server.esp_proposals == ("aes128gcm16",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transport": "udp"}, f'{S}.transport: only for protocol = "ssl" servers'),
        ({"port": 4433}, f'{S}.port: only for protocol = "ssl" servers'),
        ({"ciphers": ["AES-256-GCM"]}, f'{S}.ciphers: only for protocol = "ssl" servers'),
        (
            {"ike_proposals": ["aes256-sha1-modp1024"]},
            f"{S}.ike_proposals[0]: unsupported algorithm 'sha1' (known, not implemented)",
        ),
        (
            {"esp_proposals": ["3des-sha256"]},
            f"{S}.esp_proposals[0]: unsupported algorithm '3des' (known, not implemented)",
        ),
        (
            {"dns_domains": ["not a domain"]},
            f"{S}.dns_domains[0]: 'not a domain' is not a DNS domain",
        ),
        (
            {"auth": "any"},
            f'{S}.client_ca: required with auth = "any" (the CAs of the clients)',
        ),
    ],
)
def test_each_ikev2_mistake_names_its_key(
    files: dict[str, str], changes: dict[str, Any], message: str
) -> None:
    assert problems(config(files, **changes)) == [message]


def test_ikev2_keys_are_refused_on_an_ssl_server(files: dict[str, str]) -> None:
    data = config(files, protocol="ssl", address=None, dns_domains=["corp.example.net"])
    assert f'{S}.dns_domains: only for protocol = "ssl" servers' not in problems(data)
    assert f'{S}.dns_domains: only for protocol = "ikev2" servers' in problems(data)


def test_one_ikev2_server_and_its_name_is_its_own(files: dict[str, str]) -> None:
    data = config(files)
    second = dict(data["remote_access"]["laptops"], client_pool="192.0.2.0/24")
    data["remote_access"]["phones"] = second
    assert problems(data) == [
        "remote_access.phones.protocol: a gateway runs one ikev2 server; "
        "remote_access.laptops is one"
    ]
    data = config(files)
    data["peers"] = {"laptops": {"address": "198.51.100.2", "psk": "test-psk-NOT-SECRET-0123"}}
    data["connections"] = {
        "net": {
            "peer": "laptops",
            "local_subnets": ["203.0.113.0/25"],
            "remote_subnets": ["192.0.2.0/24"],
        }
    }
    assert problems(data) == [
        f"{S}: an ikev2 server's name must differ from peers.laptops's (logs and status name both)"
    ]


def warnings(data: dict[str, Any]) -> list[str]:
    return [str(w) for w in parse_config(data).warnings]


def test_certificate_warnings_name_what_the_built_in_clients_miss(
    files: dict[str, str],
) -> None:
    cn = "'vpn.example.net'"
    assert warnings(config(files, cert="no_eku")) == [
        f"{S}.certificate: {cn}: no serverAuth extended key usage: Windows and macOS/iOS "
        "clients refuse it (add extendedKeyUsage = serverAuth)"
    ]
    assert warnings(config(files, address="gw.example.net")) == [
        f"{S}.certificate: {cn}: no subjectAltName dNSName 'gw.example.net', the name "
        "clients dial (address): Windows, macOS/iOS and strongSwan check the server's "
        "name against it"
    ]
    # Dialled by IP address: the SAN needs it as an IP address and, for Windows, again
    # as a dNSName (error 13801).
    assert warnings(config(files, address=None)) == [
        f"{S}.certificate: {cn}: no subjectAltName IP address 198.51.100.1, the address "
        "clients dial (address): clients check the server's name against it",
        f"{S}.certificate: {cn}: 198.51.100.1 is not repeated as a subjectAltName "
        "dNSName: Windows fails with error 13801 unless the dialled IP address is also "
        "a dNSName",
    ]
    assert warnings(config(files, cert="ed25519")) == [
        f"{S}.certificate: {cn}: an Ed25519 key: Windows and iOS accept only RSA and "
        "ECDSA server certificates"
    ]
    assert warnings(config(files, cert="rsa1024")) == [
        f"{S}.certificate: {cn}: an RSA key of 1024 bits: iOS and Windows need 2048 or more"
    ]


def test_an_ikev2_server_needs_a_certificate(files: dict[str, str]) -> None:
    data = config(files)
    del data["gateway"]["certificate"], data["gateway"]["private_key"], data["gateway"]["ca"]
    assert problems(data) == [
        f"{S}.certificate: an IKEv2 server needs a certificate: set certificate and "
        "private_key in [gateway] (or here)"
    ]


def test_user_add_stores_the_nt_hash_and_says_so(
    files: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = tmp_path / "lockgate.toml"
    conf.write_text(
        f"""[gateway]
addresses = ["198.51.100.1"]
id = "198.51.100.1"
certificate = "{files["server"]}"
private_key = "{files["server_key"]}"

[remote_access.laptops]
protocol = "ikev2"
client_pool = "198.51.100.128/25"
local_subnets = ["203.0.113.0/24"]
users = "{tmp_path / "laptops.users"}"
address = "vpn.example.net"
max_connections = 100
"""
    )

    def run(*argv: str) -> tuple[int, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        code = main(list(argv))
        captured = capsys.readouterr()
        assert captured.err == ""
        return code, captured.out

    code, out = run("user", "add", "laptops", "alice", "--password-stdin", "-c", str(conf))
    note = (
        "the NT hash (MD4) of the password is stored too: EAP-MSCHAPv2 needs it; "
        "protect the users file like a password list"
    )
    assert (code, out) == (0, f"user alice added to laptops\n{note}\n")
    alice = load_users(tmp_path / "laptops.users")["alice"]
    assert alice.nt_hash == nt_password_hash(PASSWORD) and alice.password is not None
    monkeypatch.setattr("sys.stdin", io.StringIO("another fine password 42\n"))
    assert main(["user", "passwd", "laptops", "alice", "--password-stdin", "-c", str(conf)]) == 0
    assert capsys.readouterr().out == f"password of alice changed on laptops\n{note}\n"
    alice = load_users(tmp_path / "laptops.users")["alice"]
    assert alice.nt_hash == nt_password_hash("another fine password 42")


def test_workers_are_refused_beside_an_ikev2_server(files: dict[str, str]) -> None:
    data = config(files)
    data["gateway"]["workers"] = 2
    assert problems(data) == [
        "gateway.workers: 2 workers do not serve ikev2 remote access yet "
        "(remote_access.laptops); use workers = 1"
    ]
