"""`lockgate profile SERVER --format mobileconfig|sswan|windows` for an ikev2 server."""

from __future__ import annotations

import base64
import json
import plistlib
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from daemon import ikev2_profile, remote_access_cli
from testkit.cli import run
from testkit.daemon import GOOD
from testkit.pki import Pki

PASSWORD = "correct-Horse-7"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki("office root CA")


def write_config(directory: Path, pki: Pki, server: str = "") -> Path:
    """A configuration with the ikev2 server [remote_access.laptops]; `server` adds
    keys (auth, proposals, ...) to it."""
    cred = pki.issue("vpn.example.net", key_usage=True)
    cert, key = directory / "server.pem", directory / "server.key"
    cert.write_bytes(cred.cert_pem)
    key.write_bytes(cred.key_pem)
    key.chmod(0o600)
    (directory / "clients-ca.pem").write_bytes(pki.ca.cert_pem)
    (directory / "ca.pem").write_bytes(pki.ca.cert_pem)
    text = GOOD.split("[peers.cloud]")[0].replace(
        'id = "198.51.100.1"\n',
        f'id = "198.51.100.1"\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
        f'ca = ["{directory / "ca.pem"}"]\n',
    )
    if "users =" not in server and 'auth = "certificate"' not in server:
        server += f'\nusers = "{directory / "laptops.users"}"'
    text += f"""
[remote_access.laptops]
protocol = "ikev2"
client_pool = "192.0.2.0/24"
max_connections = 50
local_subnets = ["203.0.113.0/24", "198.51.100.128/25"]
dns = ["203.0.113.53"]
dns_domains = ["corp.example.net"]
address = "vpn.example.net"
{server}
"""
    path = directory / "lockgate.toml"
    path.write_text(text)
    return path


@pytest.fixture
def conf(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    path = write_config(tmp_path, pki)
    code, _, err = run(
        capsys, monkeypatch, "user", "add", "laptops", "alice", "--password-stdin",
        "-c", str(path), stdin=PASSWORD,
    )  # fmt: skip
    assert (code, err) == (0, "")
    return path


def profile(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, conf: Path, *argv: str
) -> str:
    code, out, err = run(capsys, monkeypatch, "profile", "laptops", *argv, "-c", str(conf))
    assert (code, err) == (0, "")
    return out


def ca_der(pki: Pki) -> bytes:
    cert = x509.load_pem_x509_certificate(pki.ca.cert_pem)
    return cert.public_bytes(serialization.Encoding.DER)


def payload(plist: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [p for p in plist["PayloadContent"] if p["PayloadType"] == kind]
    return found


def test_the_formats_are_the_clis() -> None:
    assert remote_access_cli.PROFILE_FORMATS == ikev2_profile.FORMATS


def test_a_mobileconfig_for_a_password_user(
    conf: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = profile(capsys, monkeypatch, conf, "--user", "alice", "--format", "mobileconfig")
    plist = plistlib.loads(out.encode())
    assert plist["PayloadType"] == "Configuration"
    root = payload(plist, "com.apple.security.root")
    assert root["PayloadContent"] == ca_der(pki)
    vpn = payload(plist, "com.apple.vpn.managed")
    assert vpn["VPNType"] == "IKEv2"
    assert vpn["IncludeAllNetworks"] is False and vpn["OnDemandEnabled"] == 0
    assert vpn["IPv4"] == {"OverridePrimary": 0}
    ikev2 = vpn["IKEv2"]
    assert ikev2["RemoteAddress"] == ikev2["RemoteIdentifier"] == "vpn.example.net"
    assert ikev2["LocalIdentifier"] == ikev2["AuthName"] == "alice"
    assert ikev2["AuthenticationMethod"] == "None" and ikev2["ExtendedAuthEnabled"] == 1
    assert "AuthPassword" not in ikev2 and PASSWORD not in out
    assert ikev2["UseConfigurationAttributeInternalIPSubnet"] == 1
    assert ikev2["ServerCertificateIssuerCommonName"] == "office root CA"
    # The defaults' first proposals: aes256gcm16-prfsha384-ecp384, aes256gcm16.
    assert ikev2["IKESecurityAssociationParameters"] == {
        "EncryptionAlgorithm": "AES-256-GCM",
        "IntegrityAlgorithm": "SHA2-384",
        "DiffieHellmanGroup": 20,
    }
    assert ikev2["ChildSecurityAssociationParameters"] == {"EncryptionAlgorithm": "AES-256-GCM"}
    assert ikev2["EnablePFS"] == 0
    # Stable UUIDs: a profile issued again replaces the installed one; another user's
    # profile is another.
    again = plistlib.loads(
        profile(capsys, monkeypatch, conf, "--user", "alice", "--format", "mobileconfig").encode()
    )
    assert again["PayloadUUID"] == plist["PayloadUUID"]
    assert [p["PayloadUUID"] for p in again["PayloadContent"]] == [
        p["PayloadUUID"] for p in plist["PayloadContent"]
    ]
    run(
        capsys, monkeypatch, "user", "add", "laptops", "bob", "--password-stdin",
        "-c", str(conf), stdin=PASSWORD,
    )  # fmt: skip
    bob = plistlib.loads(
        profile(capsys, monkeypatch, conf, "--user", "bob", "--format", "mobileconfig").encode()
    )
    assert bob["PayloadUUID"] != plist["PayloadUUID"]
    assert len({p["PayloadUUID"] for p in plist["PayloadContent"]}) == 2


def test_an_sswan_profile(
    conf: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = profile(capsys, monkeypatch, conf, "--user", "alice", "--format", "sswan")
    data = json.loads(out)
    assert data["type"] == "ikev2-eap" and data["name"] == "laptops (alice)"
    assert re.fullmatch(r"[0-9a-f-]{36}", data["uuid"])
    assert data["remote"]["addr"] == data["remote"]["id"] == "vpn.example.net"
    assert base64.b64decode(data["remote"]["cert"]) == ca_der(pki)
    assert data["local"] == {"eap_id": "alice"}
    assert data["ike-proposal"] == "aes256gcm16-prfsha384-ecp384"
    assert data["esp-proposal"] == "aes256gcm16"
    assert data["split-tunneling"] == {"subnets": ["203.0.113.0/24", "198.51.100.128/25"]}
    assert (
        json.loads(profile(capsys, monkeypatch, conf, "--user", "alice", "--format", "sswan"))[
            "uuid"
        ]
        == data["uuid"]
    )


def test_a_windows_script(
    conf: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = profile(capsys, monkeypatch, conf, "--user", "alice", "--format", "windows")
    lines = out.splitlines()
    assert "#Requires -RunAsAdministrator" in lines
    assert "$Server = 'vpn.example.net'" in lines
    (add,) = [line for line in lines if line.startswith("Add-VpnConnection ")]
    for part in (
        "-ServerAddress $Server",
        "-TunnelType Ikev2",
        "-AuthenticationMethod Eap -EapConfigXmlStream $Eap.EapConfigXmlStream",
        "-EncryptionLevel Required",
        "-SplitTunneling",
        "-DnsSuffix 'corp.example.net'",
    ):
        assert part in add
    assert "$Eap = New-EapConfiguration" in lines
    assert (
        "Set-VpnConnectionIPsecConfiguration -ConnectionName $Name "
        "-AuthenticationTransformConstants GCMAES256 -CipherTransformConstants GCMAES256 "
        "-EncryptionMethod GCMAES256 -IntegrityCheckMethod SHA384 -DHGroup ECP384 "
        "-PfsGroup None -AllUserConnection -Force"
    ) in lines
    routes = [line for line in lines if line.startswith("Add-VpnConnectionRoute ")]
    assert routes == [
        f"Add-VpnConnectionRoute -ConnectionName $Name -DestinationPrefix {net} -AllUserConnection"
        for net in ("203.0.113.0/24", "198.51.100.128/25")
    ]
    assert (
        "Import-Certificate -FilePath $CaFile -CertStoreLocation Cert:\\LocalMachine\\Root "
        "| Out-Null"
    ) in lines
    start, end = lines.index("$CaBase64 = @'"), lines.index("'@")
    assert base64.b64decode("".join(lines[start + 1 : end])) == ca_der(pki)


def test_proposals_map_from_the_servers_configuration(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # x25519 first: neither Apple's nor Windows' groups; each client gets the first
    # proposal it can be set to, the strongSwan app the first as written.
    conf = write_config(
        tmp_path,
        pki,
        'ike_proposals = ["aes256gcm16-prfsha256-x25519", "aes256-sha256-ecp256", '
        '"aes256-sha384-modp2048"]\n'
        'esp_proposals = ["aes256gcm16-x25519", "aes256-sha384-modp2048", '
        '"aes256-sha256-ecp256"]',
    )
    run(
        capsys, monkeypatch, "user", "add", "laptops", "alice", "--password-stdin",
        "-c", str(conf), stdin=PASSWORD,
    )  # fmt: skip
    ikev2 = payload(
        plistlib.loads(
            profile(
                capsys, monkeypatch, conf, "--user", "alice", "--format", "mobileconfig"
            ).encode()
        ),
        "com.apple.vpn.managed",
    )["IKEv2"]
    assert ikev2["IKESecurityAssociationParameters"] == {
        "EncryptionAlgorithm": "AES-256",
        "IntegrityAlgorithm": "SHA2-256",
        "DiffieHellmanGroup": 19,
    }
    assert ikev2["ChildSecurityAssociationParameters"] == {
        "EncryptionAlgorithm": "AES-256",
        "IntegrityAlgorithm": "SHA2-384",
        "DiffieHellmanGroup": 14,
    }
    assert ikev2["EnablePFS"] == 1
    windows = profile(capsys, monkeypatch, conf, "--user", "alice", "--format", "windows")
    # Windows has no SHA-384 HMAC for ESP: the third ESP proposal.
    assert (
        "-AuthenticationTransformConstants SHA256128 -CipherTransformConstants AES256 "
        "-EncryptionMethod AES256 -IntegrityCheckMethod SHA256 -DHGroup ECP256 "
        "-PfsGroup ECP256 "
    ) in windows
    sswan = json.loads(profile(capsys, monkeypatch, conf, "--user", "alice", "--format", "sswan"))
    assert sswan["ike-proposal"] == "aes256gcm16-prfsha256-x25519"
    assert sswan["esp-proposal"] == "aes256gcm16-x25519"

    only = write_config(tmp_path, pki, 'ike_proposals = ["aes256gcm16-prfsha384-x25519"]')
    code, _, err = run(
        capsys, monkeypatch, "profile", "laptops", "--user", "alice", "--format", "windows",
        "-c", str(only),
    )  # fmt: skip
    assert code == 1
    assert "none of remote_access.laptops.ike_proposals can be set on Windows" in err


def test_a_certificate_server(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = write_config(
        tmp_path, pki, f'auth = "certificate"\nclient_ca = "{tmp_path / "clients-ca.pem"}"'
    )
    code, _, err = run(
        capsys, monkeypatch, "profile", "laptops", "--user", "carol", "--format",
        "mobileconfig", "-c", str(conf),
    )  # fmt: skip
    assert code == 1 and "give them (--cert FILE --key FILE)" in err
    # Apple clients send the user name as identity: the certificate must name it.
    plain = pki.issue_client("carol")
    (tmp_path / "plain.pem").write_bytes(plain.cert_pem)
    (tmp_path / "plain.key").write_bytes(plain.key_pem)
    code, _, err = run(
        capsys, monkeypatch, "profile", "laptops", "--user", "carol", "--format",
        "mobileconfig", "--cert", str(tmp_path / "plain.pem"), "--key",
        str(tmp_path / "plain.key"), "-c", str(conf),
    )  # fmt: skip
    assert code == 1 and "--cert has no subjectAltName 'carol'" in err
    named = pki.issue("carol")
    (tmp_path / "carol.pem").write_bytes(named.cert_pem)
    (tmp_path / "carol.key").write_bytes(named.key_pem)
    out = profile(
        capsys, monkeypatch, conf, "--user", "carol", "--format", "mobileconfig",
        "--cert", str(tmp_path / "carol.pem"), "--key", str(tmp_path / "carol.key"),
    )  # fmt: skip
    plist = plistlib.loads(out.encode())
    identity = payload(plist, "com.apple.security.pkcs12")
    key, cert, _ = pkcs12.load_key_and_certificates(
        identity["PayloadContent"], identity["Password"].encode()
    )
    assert cert is not None and cert == x509.load_pem_x509_certificate(named.cert_pem)
    assert (
        key is not None
        and key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        == named.key_pem
    )
    ikev2 = payload(plist, "com.apple.vpn.managed")["IKEv2"]
    assert ikev2["AuthenticationMethod"] == "Certificate"
    assert ikev2["PayloadCertificateUUID"] == identity["PayloadUUID"]
    assert ikev2["CertificateType"] == "ECDSA256" and ikev2["ExtendedAuthEnabled"] == 0
    assert ikev2["LocalIdentifier"] == "carol" and "AuthName" not in ikev2

    sswan = json.loads(profile(capsys, monkeypatch, conf, "--user", "carol", "--format", "sswan"))
    assert sswan["type"] == "ikev2-cert" and sswan["local"] == {}
    windows = profile(capsys, monkeypatch, conf, "--user", "carol", "--format", "windows")
    assert "-AuthenticationMethod MachineCertificate" in windows
    assert "New-EapConfiguration" not in windows
    code, _, err = run(
        capsys, monkeypatch, "profile", "laptops", "--user", "carol", "--format", "sswan",
        "--cert", str(tmp_path / "carol.pem"), "--key", str(tmp_path / "carol.key"),
        "-c", str(conf),
    )  # fmt: skip
    assert code == 1 and "a sswan profile does not carry the user's certificate" in err


@pytest.mark.parametrize("auth", ["certificate", "any"])
def test_a_windows_script_for_eap_tls_with_the_users_certificate(
    auth: str, tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    conf = write_config(
        tmp_path, pki, f'auth = "{auth}"\nclient_ca = "{tmp_path / "clients-ca.pem"}"'
    )
    if auth == "any":
        code, _, err = run(
            capsys, monkeypatch, "user", "add", "laptops", "carol", "--password-stdin",
            "-c", str(conf), stdin=PASSWORD,
        )  # fmt: skip
        assert (code, err) == (0, "")
    plain = profile(capsys, monkeypatch, conf, "--user", "carol", "--format", "windows")
    out = profile(capsys, monkeypatch, conf, "--user", "carol", "--format", "windows", "--eap-tls")
    lines = out.splitlines()
    (add,) = [line for line in lines if line.startswith("Add-VpnConnection ")]
    assert "-AuthenticationMethod Eap -EapConfigXmlStream $Eap.EapConfigXmlStream" in add
    assert "MachineCertificate" not in out and "-RememberCredential" not in add
    # EAP-TLS with a certificate of the user's store, the server checked against the CA.
    (eap,) = [line for line in lines if line.startswith("$Eap = New-EapConfiguration")]
    assert eap == "$Eap = New-EapConfiguration -Tls -UserCertificate -VerifyServerIdentity"
    assert lines.index(eap) < lines.index(add)
    assert any("Cert:\\CurrentUser\\My" in line and line.startswith("#") for line in lines)
    # The rest of the script is the one without --eap-tls: the CA, proposals, routes.
    same = [x for x in plain.splitlines() if not x.startswith(("#", "$Eap", "Add-VpnConnection "))]
    assert same == [
        x for x in lines if not x.startswith(("#", "$Eap", "Add-VpnConnection "))
    ] and any(x.startswith("Add-VpnConnectionRoute ") for x in same)
    # Without the flag: the computer's certificate, or on an any server a password.
    if auth == "certificate":
        assert "-AuthenticationMethod MachineCertificate" in plain and "-Tls" not in plain
    else:
        assert "$Eap = New-EapConfiguration" in plain.splitlines() and "-Tls" not in plain


def test_eap_tls_is_refused_where_it_does_not_apply(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def refused(*argv: str, config: Path = conf) -> str:
        code, out, err = run(capsys, monkeypatch, "profile", "laptops", *argv, "-c", str(config))
        assert (code, out) == (1, "")
        return err

    # `conf` is a password server.
    assert 'auth = "password": EAP-TLS logs in with a certificate' in refused(
        "--user", "alice", "--format", "windows", "--eap-tls"
    )
    for fmt in ("mobileconfig", "sswan"):
        assert "--eap-tls is for --format windows" in refused(
            "--user", "alice", "--format", fmt, "--eap-tls"
        )
    ssl = tmp_path / "ssl.toml"
    ssl.write_text(
        conf.read_text()
        .replace('protocol = "ikev2"\n', "")
        .replace('dns_domains = ["corp.example.net"]\n', "")
    )
    assert "is an SSL server: --eap-tls is for an ikev2 server's windows profile" in refused(
        "--user", "alice", "--eap-tls", config=ssl
    )


def test_refusals(
    conf: Path, tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def refused(*argv: str) -> str:
        code, out, err = run(capsys, monkeypatch, "profile", *argv)
        assert (code, out) == (1, "")
        return err

    c = ("-c", str(conf))
    assert "is an ikev2 server: choose --format mobileconfig|sswan|windows" in refused(
        "laptops", "--user", "alice", *c
    )
    assert "give --user NAME" in refused("laptops", "--format", "sswan", *c)
    assert "no user 'mallory' on laptops" in refused(
        "laptops", "--user", "mallory", "--format", "windows", *c
    )
    named = pki.issue("alice")
    (tmp_path / "a.pem").write_bytes(named.cert_pem)
    (tmp_path / "a.key").write_bytes(named.key_pem)
    assert "drop --cert and --key" in refused(
        "laptops", "--user", "alice", "--format", "mobileconfig",
        "--cert", str(tmp_path / "a.pem"), "--key", str(tmp_path / "a.key"), *c,
    )  # fmt: skip
    # An SSL server takes only its .ovpn, which stays as it was.
    ssl = tmp_path / "ssl.toml"
    ssl.write_text(
        conf.read_text()
        .replace('protocol = "ikev2"\n', "")
        .replace('dns_domains = ["corp.example.net"]\n', "")
    )
    for fmt in ikev2_profile.FORMATS:
        assert f"is an SSL server: its profile is an .ovpn (drop --format {fmt}" in refused(
            "laptops", "--user", "alice", "--format", fmt, "-c", str(ssl)
        )
