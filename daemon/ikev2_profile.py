"""Profiles of an IKEv2 remote-access server for the clients built into operating
systems: what `lockgate profile SERVER --user NAME --format FORMAT` prints.

- `mobileconfig`: a configuration profile for macOS and iOS (a property list with a
  `com.apple.vpn.managed` payload of VPNType IKEv2, and the CA as a
  `com.apple.security.root` payload);
- `sswan`: a profile for the strongSwan VPN Client for Android (its JSON import format);
- `windows`: a PowerShell script that creates the connection with `Add-VpnConnection`,
  selects the IPsec parameters with `Set-VpnConnectionIPsecConfiguration` and adds the
  split routes with `Add-VpnConnectionRoute`. It logs in with EAP-MSCHAPv2, with the
  computer's certificate (`auth = "certificate"`), or with `eap_tls` with the user's
  certificate in EAP-TLS (RFC 5216 inside IKEv2's EAP, RFC 7296 §2.16).

Each built-in client proposes exactly one set of algorithms, chosen in its profile. The
profile picks, among the server's proposals in the server's order, the first that the
client can be set to, so the client's one proposal is always one the server accepts.
The server proves itself with its certificate under the identity `address` (the name
clients dial), so every profile names `address` as the remote identity and carries the
root CA of the server's certificate. Stable identifiers (UUIDs derived from the server
and user names) make a re-issued profile replace the one installed before.
"""

from __future__ import annotations

import base64
import json
import plistlib
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from conf.model import Config, RemoteAccessConfig
from daemon.ovpn_profile import ProfileError, client_credential, server_anchor
from ikev2.codec.payloads import Proposal, Transform
from ikev2.constants import DhGroup, EncrId, IntegId, PrfId, TransformType
from ikev2.proposals import parse_esp_proposal, parse_ike_proposal

FORMATS = ("mobileconfig", "sswan", "windows")

# The namespace of every UUID a profile carries: uuid5(namespace, "server/user/part").
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://lockgate.invalid/remote-access")

_AES256 = 256
_HASH_OF_PRF = {
    PrfId.HMAC_SHA2_256: "SHA256",
    PrfId.HMAC_SHA2_384: "SHA384",
    PrfId.HMAC_SHA2_512: "SHA512",
}
_HASH_OF_INTEG = {
    IntegId.HMAC_SHA2_256_128: "SHA256",
    IntegId.HMAC_SHA2_384_192: "SHA384",
    IntegId.HMAC_SHA2_512_256: "SHA512",
}


@dataclass(frozen=True)
class Suite:
    """One choice of algorithms, the kind a built-in client proposes."""

    aead: bool
    """AES-256-GCM (16-octet ICV) if true, else AES-256-CBC with an HMAC."""
    hash: str | None
    """"SHA256", "SHA384" or "SHA512": the PRF for IKE (and the HMAC of a CBC IKE
    suite, which the clients tie to it); the HMAC of a CBC ESP suite; None for an
    AEAD ESP suite."""
    group: int
    """The key exchange group (IANA number); 0 for an ESP suite without PFS."""


_T = TypeVar("_T")


def _suites(proposal: Proposal, ike: bool) -> list[Suite]:
    """The suites of `proposal` that use AES-256 and SHA-2, in the proposal's order."""
    encrs = [
        t
        for t in proposal.transforms_of(TransformType.ENCR)
        if t.key_length == _AES256 and t.transform_id in (EncrId.AES_GCM_16, EncrId.AES_CBC)
    ]
    groups = [t.transform_id for t in proposal.transforms_of(TransformType.DH)] or [0]
    prfs = [_HASH_OF_PRF.get(PrfId(t.transform_id)) for t in _of(proposal, TransformType.PRF)]
    integs = [
        _HASH_OF_INTEG.get(IntegId(t.transform_id)) for t in _of(proposal, TransformType.INTEG)
    ]
    out: list[Suite] = []
    for encr in encrs:
        aead = encr.transform_id == EncrId.AES_GCM_16
        choices: list[str | None]
        if ike and aead:
            choices = [h for h in prfs if h]
        elif ike:
            # The clients derive the PRF from the integrity algorithm: both must agree.
            choices = [h for h in integs if h and h in prfs]
        elif aead:
            choices = [None]
        else:
            choices = [h for h in integs if h]
        out += [Suite(aead, h, g) for h in choices for g in groups]
    return out


def _of(proposal: Proposal, kind: TransformType) -> list[Transform]:
    return [t for t in proposal.transforms_of(kind) if t.transform_id != 0]


def _choose(
    server: RemoteAccessConfig,
    ike: bool,
    client: str,
    accepts: Callable[[Suite], _T | None],
) -> _T:
    """The first suite of the server's proposals (in its order) that `client` can be set
    to, as `accepts` renders it; a ProfileError naming the client if there is none."""
    texts = server.ike_proposals if ike else server.esp_proposals
    parse = parse_ike_proposal if ike else parse_esp_proposal
    for text in texts:
        for suite in _suites(parse(text), ike):
            rendered = accepts(suite)
            if rendered is not None:
                return rendered
    key = "ike_proposals" if ike else "esp_proposals"
    raise ProfileError(
        f"none of remote_access.{server.name}.{key} can be set on {client}: add one "
        "with AES-256 (GCM, or CBC with SHA-256/384) and a group it supports "
        f"({_CLIENT_GROUPS[client]})"
    )


_CLIENT_GROUPS = {
    "macOS and iOS": "ecp384, ecp256, ecp521 or modp2048",
    "Windows": "ecp384, ecp256 or modp2048",
}


def _uuid(server: RemoteAccessConfig, user: str, part: str) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{server.name}/{user}/{part}")).upper()


def _ca_der(config: Config, server: RemoteAccessConfig) -> bytes:
    pem = server_anchor(config, server)
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _certificate_login(server: RemoteAccessConfig, credential_given: bool) -> bool:
    """Whether the profile logs in with a certificate: always on a certificate server,
    on an `any` server when the user's certificate and key are given."""
    return server.auth == "certificate" or (server.auth == "any" and credential_given)


def render_ikev2_profile(
    config: Config,
    server: RemoteAccessConfig,
    fmt: str,
    *,
    user: str,
    client_cert: bytes | None = None,
    client_key: bytes | None = None,
    eap_tls: bool = False,
) -> str:
    """The profile text in format `fmt` (one of FORMATS) for `user`. A password never
    appears in a profile: the client asks for it. `eap_tls`: a Windows script whose
    connection logs in with the user's certificate in EAP-TLS."""
    if server.protocol != "ikev2":
        raise ProfileError(f"remote_access.{server.name} is not an ikev2 server")
    if eap_tls and fmt != "windows":
        raise ProfileError(
            f"--eap-tls is for --format windows (a {fmt} profile chooses its login itself)"
        )
    if eap_tls and server.auth == "password":
        raise ProfileError(
            f'remote_access.{server.name} has auth = "password": EAP-TLS logs in with a '
            'certificate, which needs auth = "certificate" or "any" (drop --eap-tls)'
        )
    given = client_cert is not None or client_key is not None
    if given and server.auth == "password":
        raise ProfileError(
            f'remote_access.{server.name} has auth = "password": users log in with a '
            "password, not a certificate (drop --cert and --key)"
        )
    if fmt == "mobileconfig":
        return _mobileconfig(config, server, user, client_cert, client_key)
    if given:
        where = {
            "sswan": "the strongSwan app takes it from Android's credential store: install "
            "the user's PKCS#12 file there and pick it in the profile",
            "windows": "Windows takes it from the computer's certificate store: import the "
            "user's PKCS#12 file into Cert:\\LocalMachine\\My",
        }[fmt]
        raise ProfileError(
            f"a {fmt} profile does not carry the user's certificate and key (drop --cert "
            f"and --key); {where}"
        )
    if fmt == "sswan":
        return _sswan(config, server, user)
    if fmt == "windows":
        return _windows(config, server, user, eap_tls)
    raise ProfileError(f"unknown profile format {fmt!r} (formats: {', '.join(FORMATS)})")


# --- macOS and iOS ---------------------------------------------------------------------

_APPLE_GROUPS = frozenset({DhGroup.MODP_2048, DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.ECP_521})
_APPLE_HASH = {"SHA256": "SHA2-256", "SHA384": "SHA2-384", "SHA512": "SHA2-512"}


def _apple_ike(suite: Suite) -> dict[str, Any] | None:
    if suite.group not in _APPLE_GROUPS or suite.hash is None:
        return None
    return {
        "EncryptionAlgorithm": "AES-256-GCM" if suite.aead else "AES-256",
        # With GCM the PRF follows from it (Apple derives the PRF from this key).
        "IntegrityAlgorithm": _APPLE_HASH[suite.hash],
        "DiffieHellmanGroup": suite.group,
    }


def _apple_esp(suite: Suite) -> dict[str, Any] | None:
    if suite.group and suite.group not in _APPLE_GROUPS:
        return None
    params: dict[str, Any] = {"EncryptionAlgorithm": "AES-256-GCM" if suite.aead else "AES-256"}
    if suite.hash is not None:
        params["IntegrityAlgorithm"] = _APPLE_HASH[suite.hash]
    if suite.group:
        params["DiffieHellmanGroup"] = suite.group
    return params


def _mobileconfig(
    config: Config,
    server: RemoteAccessConfig,
    user: str,
    client_cert: bytes | None,
    client_key: bytes | None,
) -> str:
    apple = "macOS and iOS"
    ike = _choose(server, True, apple, _apple_ike)
    child = _choose(server, False, apple, _apple_esp)
    certificate = _certificate_login(server, client_cert is not None)
    payloads: list[dict[str, Any]] = [
        {
            "PayloadType": "com.apple.security.root",
            "PayloadVersion": 1,
            "PayloadIdentifier": f"lockgate.{server.name}.{user}.ca",
            "PayloadUUID": _uuid(server, user, "ca"),
            "PayloadDisplayName": f"lockgate {server.name} CA",
            "PayloadCertificateFileName": f"{server.name}-ca.cer",
            "PayloadContent": _ca_der(config, server),
        }
    ]
    ikev2: dict[str, Any] = {
        "RemoteAddress": server.address,
        "RemoteIdentifier": server.address,
        "LocalIdentifier": user,
        "IKESecurityAssociationParameters": ike,
        "ChildSecurityAssociationParameters": child,
        "EnablePFS": int("DiffieHellmanGroup" in child),
        # The server sends local_subnets as INTERNAL_IP4_SUBNET (RFC 7296 §3.15.1);
        # with this key set, the client routes only those into the tunnel.
        "UseConfigurationAttributeInternalIPSubnet": 1,
        "DeadPeerDetectionRate": "Medium",
    }
    issuer = _issuer_cn(server)
    if issuer is not None:
        ikev2["ServerCertificateIssuerCommonName"] = issuer
    if certificate:
        if client_cert is None or client_key is None:
            raise ProfileError(
                f'remote_access.{server.name} has auth = "certificate": a .mobileconfig '
                "carries the user's certificate and key as a PKCS#12 payload, so give "
                "them (--cert FILE --key FILE)"
            )
        p12, password = _pkcs12(user, client_cert, client_key)
        payloads.append(
            {
                "PayloadType": "com.apple.security.pkcs12",
                "PayloadVersion": 1,
                "PayloadIdentifier": f"lockgate.{server.name}.{user}.identity",
                "PayloadUUID": _uuid(server, user, "identity"),
                "PayloadDisplayName": f"{user} ({server.name})",
                "PayloadCertificateFileName": f"{user}.p12",
                "PayloadContent": p12,
                "Password": password,
            }
        )
        ikev2.update(
            AuthenticationMethod="Certificate",
            CertificateType=_certificate_type(client_cert),
            PayloadCertificateUUID=_uuid(server, user, "identity"),
            ExtendedAuthEnabled=0,
        )
    else:
        # EAP-MSCHAPv2: no IKE authentication of the client, EAP in IKE_AUTH (§2.16).
        ikev2.update(AuthenticationMethod="None", ExtendedAuthEnabled=1, AuthName=user)
    payloads.append(
        {
            "PayloadType": "com.apple.vpn.managed",
            "PayloadVersion": 1,
            "PayloadIdentifier": f"lockgate.{server.name}.{user}.vpn",
            "PayloadUUID": _uuid(server, user, "vpn"),
            "PayloadDisplayName": f"VPN {server.name}",
            "UserDefinedName": f"{server.name} ({server.address})",
            "VPNType": "IKEv2",
            "IKEv2": ikev2,
            # Split tunnel: only the pushed subnets go through the tunnel (macOS).
            "IPv4": {"OverridePrimary": 0},
            "IncludeAllNetworks": False,
            "OnDemandEnabled": 0,
        }
    )
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"lockgate.{server.name}.{user}",
        "PayloadUUID": _uuid(server, user, "profile"),
        "PayloadDisplayName": f"lockgate VPN {server.name} ({user})",
        "PayloadDescription": f"IKEv2 VPN to {server.address} for {user}",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": payloads,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=False).decode("utf-8")


def _issuer_cn(server: RemoteAccessConfig) -> str | None:
    """The CN of the issuer of the server's certificate (the leaf's issuer, which is an
    intermediate CA when the chain has one): macOS and iOS check it when set."""
    if server.certificate is None:
        return None
    leaf = x509.load_pem_x509_certificates(server.certificate.read_bytes())[0]
    names = leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _certificate_type(cert_pem: bytes) -> str:
    """The profile's CertificateType: the client signs with this key type (RFC 7427)."""
    public = x509.load_pem_x509_certificates(cert_pem)[0].public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"ECDSA{public.curve.key_size}"
    return "RSA"


def _pkcs12(user: str, cert_pem: bytes, key_pem: bytes) -> tuple[bytes, str]:
    """The user's certificate and key as PKCS#12, checked to belong together and to
    name the user in subjectAltName: the client sends `user` as its IKE identity, and
    the server accepts a certificate only if it names that identity (RFC 4945 §3.1).

    The container uses the PKCS#12 algorithms every macOS and iOS version imports
    (PBE with SHA-1 and 3DES, HMAC-SHA-1). Its random password travels in the same
    profile, so the profile file itself is what must be kept secret, as a .ovpn with
    a key is."""
    chain_pem, key_pem = client_credential(cert_pem, key_pem)
    chain = x509.load_pem_x509_certificates(chain_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    try:
        san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [n.lower() for n in san.get_values_for_type(x509.RFC822Name)]
    except x509.ExtensionNotFound:
        names = []
    if user.lower() not in names:
        raise ProfileError(
            f"--cert has no subjectAltName {user!r}: macOS and iOS send the user name as "
            "their IKE identity, and the server accepts a certificate only if its "
            "subjectAltName (a dNSName or email address) names that identity"
        )
    password = secrets.token_urlsafe(18)
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(50000)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())  # noqa: S303 (see the docstring)
        .build(password.encode())
    )
    blob = pkcs12.serialize_key_and_certificates(
        user.encode(),
        key,  # type: ignore[arg-type]
        chain[0],
        chain[1:] or None,
        encryption,
    )
    return blob, password


# --- the strongSwan app on Android -------------------------------------------------------


def _sswan(config: Config, server: RemoteAccessConfig, user: str) -> str:
    """The app's import format: a JSON object (its `uuid` replaces an imported profile
    of the same UUID). The app negotiates strongSwan's syntax directly, so it gets the
    server's first IKE and ESP proposals as they are written."""
    certificate = server.auth == "certificate"
    profile: dict[str, Any] = {
        "uuid": _uuid(server, user, "sswan").lower(),
        "name": f"{server.name} ({user})",
        "type": "ikev2-cert" if certificate else "ikev2-eap",
        "remote": {
            "addr": server.address,
            "id": server.address,
            "cert": base64.b64encode(_ca_der(config, server)).decode("ascii"),
        },
        # Certificate login: without local.id the app sends the certificate's subject
        # DN, whose CN names the user on the server.
        "local": {} if certificate else {"eap_id": user},
        "ike-proposal": server.ike_proposals[0],
        "esp-proposal": server.esp_proposals[0],
        "split-tunneling": {"subnets": [str(net) for net in server.local_subnets]},
    }
    return json.dumps(profile, indent=2) + "\n"


# --- Windows -----------------------------------------------------------------------------

_WINDOWS_GROUPS: Mapping[int, tuple[str, str]] = {
    # DH group: (-DHGroup, -PfsGroup)
    DhGroup.MODP_2048: ("Group14", "PFS2048"),
    DhGroup.ECP_256: ("ECP256", "ECP256"),
    DhGroup.ECP_384: ("ECP384", "ECP384"),
}


@dataclass(frozen=True)
class _WindowsIke:
    encryption: str
    integrity: str
    dh: str


@dataclass(frozen=True)
class _WindowsEsp:
    cipher: str
    authentication: str
    pfs: str


def _windows_ike(suite: Suite) -> _WindowsIke | None:
    if suite.group not in _WINDOWS_GROUPS or suite.hash not in ("SHA256", "SHA384"):
        return None
    encryption = "GCMAES256" if suite.aead else "AES256"
    return _WindowsIke(encryption, suite.hash, _WINDOWS_GROUPS[suite.group][0])


def _windows_esp(suite: Suite) -> _WindowsEsp | None:
    if suite.group and suite.group not in _WINDOWS_GROUPS:
        return None
    pfs = _WINDOWS_GROUPS[suite.group][1] if suite.group else "None"
    if suite.aead:
        return _WindowsEsp("GCMAES256", "GCMAES256", pfs)
    if suite.hash != "SHA256":
        return None  # Windows offers only HMAC-SHA-256-128 of the SHA-2 family in ESP
    return _WindowsEsp("AES256", "SHA256128", pfs)


def _ps(text: str) -> str:
    """A PowerShell single-quoted string literal."""
    return "'" + text.replace("'", "''") + "'"


def _windows(config: Config, server: RemoteAccessConfig, user: str, eap_tls: bool) -> str:
    ike = _choose(server, True, "Windows", _windows_ike)
    esp = _choose(server, False, "Windows", _windows_esp)
    certificate = server.auth == "certificate"
    ca = base64.b64encode(_ca_der(config, server)).decode("ascii")
    ca_lines = [ca[i : i + 64] for i in range(0, len(ca), 64)]
    add = [
        "Add-VpnConnection -Name $Name -ServerAddress $Server -TunnelType Ikev2",
        "-EncryptionLevel Required -SplitTunneling -AllUserConnection -Force",
    ]
    if eap_tls:
        # EAP-TLS (RFC 5216) in IKE_AUTH (RFC 7296 §2.16): the user's own certificate,
        # from the user's store; the server names the user by its CN.
        add.append("-AuthenticationMethod Eap -EapConfigXmlStream $Eap.EapConfigXmlStream")
    elif certificate:
        # IKEv2 certificate authentication (RFC 7427) with a certificate of the
        # computer's store; the server names the user by its CN.
        add.append("-AuthenticationMethod MachineCertificate")
    else:
        add.append("-AuthenticationMethod Eap -EapConfigXmlStream $Eap.EapConfigXmlStream")
        add.append("-RememberCredential")
    if server.dns_domains:
        add.append(f"-DnsSuffix {_ps(server.dns_domains[0])}")
    lines = [
        f"# Windows VPN connection to lockgate remote-access server {server.name} for user {user}",
        "# Run it once in an elevated PowerShell:",
        f"#   powershell -ExecutionPolicy Bypass -File {server.name}.ps1",
        "#Requires -RunAsAdministrator",
        "$ErrorActionPreference = 'Stop'",
        f"$Name = {_ps(f'{server.name} ({server.address})')}",
        f"$Server = {_ps(server.address)}",
        "",
        "# The CA of the server's certificate, into the computer's Trusted Root store.",
        "$CaBase64 = @'",
        *ca_lines,
        "'@",
        f"$CaFile = Join-Path $env:TEMP {_ps(f'lockgate-{server.name}-ca.cer')}",
        "[IO.File]::WriteAllBytes($CaFile, [Convert]::FromBase64String(($CaBase64 -replace "
        "'\\s', '')))",
        "Import-Certificate -FilePath $CaFile -CertStoreLocation Cert:\\LocalMachine\\Root "
        "| Out-Null",
        "Remove-Item $CaFile",
        "",
        "# Replace a connection of the same name made by an earlier version of this script.",
        "if (Get-VpnConnection -Name $Name -AllUserConnection -ErrorAction SilentlyContinue) {",
        "    Remove-VpnConnection -Name $Name -AllUserConnection -Force",
        "}",
    ]
    if eap_tls:
        lines += [
            f"# EAP-TLS with the user's certificate (CN = {user}) and key, imported into",
            "# the user's Personal store: Import-PfxCertificate -CertStoreLocation",
            "# Cert:\\CurrentUser\\My FILE.p12. Windows checks the server's certificate",
            "# against the CA above.",
            "$Eap = New-EapConfiguration -Tls -UserCertificate -VerifyServerIdentity",
        ]
    elif certificate:
        lines += [
            "# The user's certificate (CN = the user name) and key must be in the",
            "# computer's Personal store: Import-PfxCertificate -CertStoreLocation",
            "# Cert:\\LocalMachine\\My FILE.p12",
        ]
    else:
        lines += [
            f"# EAP-MSCHAPv2; Windows asks for the user name ({user}) and password.",
            "$Eap = New-EapConfiguration",
        ]
    lines += [
        " ".join(add),
        "# Without this, Windows proposes only modp1024, which the server refuses.",
        "Set-VpnConnectionIPsecConfiguration -ConnectionName $Name"
        f" -AuthenticationTransformConstants {esp.authentication}"
        f" -CipherTransformConstants {esp.cipher}"
        f" -EncryptionMethod {ike.encryption}"
        f" -IntegrityCheckMethod {ike.integrity}"
        f" -DHGroup {ike.dh}"
        f" -PfsGroup {esp.pfs}"
        " -AllUserConnection -Force",
        "# Split tunnel: only the server's local subnets go through the VPN.",
    ]
    lines += [
        f"Add-VpnConnectionRoute -ConnectionName $Name -DestinationPrefix {net} -AllUserConnection"
        for net in server.local_subnets
    ]
    lines.append('Write-Host "VPN connection $Name created."')
    return "\n".join(lines) + "\n"
