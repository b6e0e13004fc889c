"""`lockgate user ...`, `lockgate profile` and check-config for remote-access servers."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from conf.model import RemoteAccessConfig
from conf.users import load_users, needs_nt_hash, verify_password
from daemon import remote_access_cli
from daemon.cli import _parser, main
from testkit.cli import run
from testkit.daemon import GOOD
from testkit.pki import Pki

PASSWORD = "correct-Horse-7"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki("office root CA")


def write_config(
    directory: Path,
    pki: Pki,
    *,
    connections: bool = True,
    server: str = "",
    intermediate: bool = False,
) -> Path:
    """A configuration with [remote_access.office] (and the GOOD connection)."""
    issuer = Pki("office issuing CA", parent=pki) if intermediate else pki
    cred = issuer.issue("vpn.example.net", key_usage=True)
    cert, key = directory / "server.pem", directory / "server.key"
    chain = cred.cert_pem + (issuer.ca.cert_pem if intermediate else b"")
    cert.write_bytes(chain)
    key.write_bytes(cred.key_pem)
    key.chmod(0o600)
    (directory / "ca.pem").write_bytes(pki.ca.cert_pem)
    (directory / "clients-ca.pem").write_bytes(pki.ca.cert_pem)
    text = (GOOD if connections else GOOD.split("[peers.cloud]")[0]).replace(
        'id = "198.51.100.1"\n',
        f'id = "198.51.100.1"\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
        f'ca = ["{directory / "ca.pem"}"]\n',
    )
    text += f"""
[remote_access.office]
client_pool = "198.51.100.128/25"
local_subnets = ["203.0.113.0/24"]
dns = ["203.0.113.53"]
address = "vpn.example.net"
max_connections = 50
{server or f'users = "{directory / "office.users"}"'}

[remote_access.office.groups.engineering]
destinations = ["203.0.113.0/25"]
"""
    path = directory / "lockgate.toml"
    path.write_text(text)
    return path


@pytest.fixture
def conf(tmp_path: Path, pki: Pki) -> Path:
    return write_config(tmp_path, pki)


def test_check_config_lists_the_servers(
    conf: Path, tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert out == f"{conf}: OK (1 connection(s): dc-cloud; 1 remote-access server(s): office)\n"
    (tmp_path / "alone").mkdir()
    alone = write_config(tmp_path / "alone", pki, connections=False)
    assert main(["check-config", str(alone)]) == 0
    assert (
        "OK (0 connection(s): none; 1 remote-access server(s): office)" in capsys.readouterr().out
    )


def test_user_add_list_passwd_del(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    users = tmp_path / "office.users"
    code, out, err = run(
        capsys, monkeypatch, "user", "add", "office", "alice", "--group", "engineering",
        "--static-ip", "198.51.100.150", "--password-stdin", "-c", str(conf), stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out == "user alice added to office (group engineering, static IP 198.51.100.150)\n"
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    alice = load_users(users)["alice"]
    assert verify_password(alice, PASSWORD) and alice.nt_hash is None
    assert PASSWORD not in users.read_text()

    # Prompted twice without --password-stdin.
    typed = iter(["Other-pass-9", "Other-pass-9"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    code, out, _ = run(capsys, monkeypatch, "user", "add", "office", "bob", "-c", str(conf))
    assert (code, out) == (0, "user bob added to office\n")

    code, out, _ = run(capsys, monkeypatch, "user", "list", "office", "-c", str(conf))
    assert out == (
        "office: 2 user(s)\n"
        "  alice, group engineering, static IP 198.51.100.150, password\n"
        "  bob, password\n"
    )
    code, out, _ = run(capsys, monkeypatch, "user", "list", "office", "--json", "-c", str(conf))
    assert json.loads(out) == [
        {"name": "alice", "group": "engineering", "static_ip": "198.51.100.150", "password": True},
        {"name": "bob", "group": None, "static_ip": None, "password": True},
    ]
    assert "scrypt" not in out

    code, out, _ = run(
        capsys, monkeypatch, "user", "passwd", "office", "alice", "--password-stdin",
        "-c", str(conf), stdin="New-secret-42\n",
    )  # fmt: skip
    assert (code, out) == (0, "password of alice changed on office\n")
    assert verify_password(load_users(users)["alice"], "New-secret-42")
    assert load_users(users)["alice"].static_ip is not None  # the rest is kept

    code, out, _ = run(capsys, monkeypatch, "user", "del", "office", "bob", "-c", str(conf))
    assert (code, out) == (0, "user bob deleted from office\n")
    assert list(load_users(users)) == ["alice"]


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (
            ["user", "add", "home", "carol"],
            "",
            "lockgate user add: no remote-access server named 'home' (servers: office)",
        ),
        (
            ["user", "add", "office", "alice", "--password-stdin"],
            PASSWORD,
            "lockgate user add: user 'alice' already exists on office",
        ),
        (
            ["user", "del", "office", "carol"],
            "",
            "lockgate user del: no user 'carol' on office",
        ),
        (
            ["user", "passwd", "office", "carol", "--password-stdin"],
            PASSWORD,
            "lockgate user passwd: no user 'carol' on office",
        ),
        (
            ["user", "add", "office", "carol", "--group", "sales", "--password-stdin"],
            PASSWORD,
            "lockgate user add: no group 'sales' in remote_access.office (groups: engineering)",
        ),
        (
            ["user", "add", "office", "carol", "--static-ip", "198.51.100.5", "--password-stdin"],
            PASSWORD,
            "lockgate user add: --static-ip 198.51.100.5 is outside the client pool "
            "(198.51.100.128/25)",
        ),
        (
            ["user", "add", "office", "carol", "--static-ip", "198.51.100.129", "--password-stdin"],
            PASSWORD,
            "lockgate user add: --static-ip 198.51.100.129 is the server's own address in "
            "198.51.100.128/25",
        ),
        (
            ["user", "add", "office", "carol", "--static-ip", "198.51.100.255", "--password-stdin"],
            PASSWORD,
            "lockgate user add: --static-ip 198.51.100.255 is not a host address of "
            "198.51.100.128/25",
        ),
        (
            ["user", "add", "office", "carol", "--static-ip", "198.51.100.150", "--password-stdin"],
            PASSWORD,
            "lockgate user add: --static-ip 198.51.100.150 is already alice's",
        ),
        (
            ["user", "add", "office", "carol", "--password-stdin"],
            "short",
            "lockgate user add: a password has 8 to 32 characters; nothing changed",
        ),
        (
            ["user", "add", "office", "carol", "--password-stdin"],
            "carol",
            "lockgate user add: a password has 8 to 32 characters; nothing changed",
        ),
        (
            ["user", "add", "office", "Carol1234", "--password-stdin"],
            "carol1234",
            "lockgate user add: the password must not be the user name; nothing changed",
        ),
        (
            ["user", "add", "office", "carol!", "--password-stdin"],
            PASSWORD,
            "lockgate user add: 'carol!' is not a valid user name",
        ),
        (
            ["profile", "office", "--cert", "/x.pem", "--key", "/x.key"],
            "",
            'lockgate profile: remote_access.office has auth = "password": users log in '
            "with a password, not a certificate (drop --cert and --key)",
        ),
        (
            ["profile", "office", "--user", "carol"],
            "",
            "lockgate profile: no user 'carol' on office",
        ),
    ],
)
def test_refusals_say_why_and_change_nothing(
    conf: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    stdin: str,
    message: str,
) -> None:
    run(
        capsys, monkeypatch, "user", "add", "office", "alice", "--static-ip", "198.51.100.150",
        "--password-stdin", "-c", str(conf), stdin=PASSWORD,
    )  # fmt: skip
    before = (tmp_path / "office.users").read_bytes()
    code, out, err = run(capsys, monkeypatch, *argv, "-c", str(conf), stdin=stdin)
    assert (code, out) == (1, "")
    assert err.startswith(message), err
    assert (tmp_path / "office.users").read_bytes() == before
    assert PASSWORD not in err


def test_mismatched_prompts_change_nothing(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    typed = iter(["Other-pass-9", "Other-pass-8"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    code, _, err = run(capsys, monkeypatch, "user", "add", "office", "bob", "-c", str(conf))
    assert code == 1 and err == "lockgate user add: the passwords differ; nothing changed\n"
    assert not (tmp_path / "office.users").exists()


def test_a_bad_configuration_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(
        capsys, monkeypatch, "user", "list", "office", "-c", str(tmp_path / "absent.toml")
    )
    assert code == 1 and err.startswith("lockgate user list: ") and "cannot read" in err


def test_the_default_configuration_path() -> None:
    args = _parser().parse_args(["user", "list", "office"])
    assert args.config == remote_access_cli.DEFAULT_CONFIG == "/etc/lockgate/lockgate.toml"
    args = _parser().parse_args(["profile", "office"])
    assert args.config == "/etc/lockgate/lockgate.toml"


# --- profiles ------------------------------------------------------------------------


def directives(profile: str) -> tuple[list[str], dict[str, str]]:
    """The profile's directive lines (no comments) and its inline blocks by tag."""
    lines: list[str] = []
    blocks: dict[str, str] = {}
    tag: str | None = None
    body: list[str] = []
    for line in profile.splitlines():
        if tag is not None:
            if line == f"</{tag}>":
                blocks[tag], tag, body = "\n".join(body) + "\n", None, []
            else:
                body.append(line)
        elif line.startswith("<") and line.endswith(">"):
            tag = line[1:-1]
        elif line and not line.startswith("#"):
            lines.append(line)
    assert tag is None, "an inline block is not closed"
    return lines, blocks


def test_a_password_profile(
    conf: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run(
        capsys, monkeypatch, "user", "add", "office", "alice", "--password-stdin",
        "-c", str(conf), stdin=PASSWORD,
    )  # fmt: skip
    code, out, err = run(
        capsys, monkeypatch, "profile", "office", "--user", "alice", "-c", str(conf)
    )
    assert (code, err) == (0, "")
    assert out.startswith(
        "# OpenVPN profile of lockgate remote-access server office for user alice\n"
    )
    lines, blocks = directives(out)
    assert lines == [
        "client",
        "dev tun",
        "proto tcp-client",
        "remote vpn.example.net 443",
        "nobind",
        "remote-cert-tls server",
        "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
        "auth SHA256",
        "reneg-sec 0",
        "verb 3",
        "auth-user-pass",
    ]
    assert list(blocks) == ["ca"]
    assert x509.load_pem_x509_certificate(blocks["ca"].encode()) == x509.load_pem_x509_certificate(
        pki.ca.cert_pem
    )
    assert PASSWORD not in out and "scrypt" not in out


def test_a_udp_certificate_profile_with_tls_crypt(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "tc.key"
    key_file.write_text(
        "-----BEGIN OpenVPN Static key V1-----\n"
        + "\n".join(["0123456789abcdef" * 2] * 16)
        + "\n-----END OpenVPN Static key V1-----\n"
    )
    key_file.chmod(0o600)
    conf = write_config(
        tmp_path,
        pki,
        intermediate=True,
        server=f'auth = "certificate"\nclient_ca = "{tmp_path / "clients-ca.pem"}"\n'
        f'transport = "udp"\nciphers = ["CHACHA20-POLY1305", "AES-128-GCM"]\n'
        f'tls_crypt_key = "{key_file}"\n',
    )
    client = pki.issue_client("alice")
    (tmp_path / "alice.pem").write_bytes(client.cert_pem)
    (tmp_path / "alice.key").write_bytes(client.key_pem)
    code, out, err = run(capsys, monkeypatch, "profile", "office", "-c", str(conf))
    assert code == 1 and "give the user's certificate and key (--cert FILE --key FILE)" in err
    code, out, err = run(
        capsys, monkeypatch, "profile", "office", "--cert", str(tmp_path / "alice.pem"),
        "--key", str(tmp_path / "alice.key"), "-c", str(conf),
    )  # fmt: skip
    assert (code, err) == (0, "")
    lines, blocks = directives(out)
    assert "proto udp" in lines and "remote vpn.example.net 1194" in lines
    assert "data-ciphers CHACHA20-POLY1305:AES-128-GCM" in lines
    assert "explicit-exit-notify 1" in lines and "auth-user-pass" not in lines
    assert list(blocks) == ["ca", "cert", "key", "tls-crypt"]
    # The root, not the intermediate that the server's chain file carries.
    assert (
        x509.load_pem_x509_certificate(blocks["ca"].encode()).subject
        == x509.load_pem_x509_certificate(pki.ca.cert_pem).subject
    )
    assert blocks["cert"].encode() == client.cert_pem
    assert blocks["key"].encode() == client.key_pem
    assert blocks["tls-crypt"] == key_file.read_text()

    other = pki.issue_client("bob")
    (tmp_path / "bob.key").write_bytes(other.key_pem)
    code, _, err = run(
        capsys, monkeypatch, "profile", "office", "--cert", str(tmp_path / "alice.pem"),
        "--key", str(tmp_path / "bob.key"), "-c", str(conf),
    )  # fmt: skip
    assert code == 1 and "--key is not the private key of --cert" in err


def test_certificate_auth_users_have_no_password(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    users = tmp_path / "office.users"
    conf = write_config(
        tmp_path,
        pki,
        server=f'auth = "certificate"\nclient_ca = "{tmp_path / "clients-ca.pem"}"\n'
        f'users = "{users}"\n',
    )
    code, out, _ = run(capsys, monkeypatch, "user", "add", "office", "alice", "-c", str(conf))
    assert (code, out) == (0, "user alice added to office (certificate login (CN = user name))\n")
    assert load_users(users)["alice"].password is None
    code, _, err = run(
        capsys, monkeypatch, "user", "passwd", "office", "alice", "--password-stdin",
        "-c", str(conf), stdin=PASSWORD,
    )  # fmt: skip
    assert code == 1 and "its users have no password" in err


def test_nt_hashes_are_decided_by_protocol_and_auth() -> None:
    ssl = RemoteAccessConfig(
        "office", "ssl", ipaddress.IPv4Network("198.51.100.128/25"), (), None, "x"
    )
    assert not needs_nt_hash(ssl)
    assert needs_nt_hash(dataclasses.replace(ssl, protocol="ikev2"))
    assert needs_nt_hash(dataclasses.replace(ssl, protocol="ikev2", auth="any"))
    assert not needs_nt_hash(dataclasses.replace(ssl, protocol="ikev2", auth="certificate"))
