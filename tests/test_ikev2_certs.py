"""X.509 for IKE_AUTH (ikev2.certs): the golden ECDSA scenario, and a throwaway PKI.

The PKI is built here with ``cryptography`` (RSA, ECDSA and Ed25519 roots,
intermediates and end entities) so each failure (wrong ID, expired, unknown CA,
missing key usage, ...) is one certificate away from a valid chain.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ikev2.certs import (
    MAX_PEER_CERTIFICATES,
    CredentialError,
    HashAlgorithm,
    LocalCredentials,
    PrivateKey,
    TrustAnchors,
    choose_signature_hash,
    identity_mismatch,
    parse_signature_hashes,
    requested_authorities,
    signature_hashes_notify,
    spki_sha1,
)
from ikev2.codec import (
    Authentication,
    Certificate,
    CertificateRequest,
    IdI,
    IdR,
    decode_message,
)
from ikev2.config import Identity
from ikev2.constants import CertEncoding, IdType, NotifyType
from ikev2.crypto.auth import signed_octets, split_signature_auth, verify_signature_auth
from ikev2.errors import AuthenticationFailed, InvalidSyntax, LocalProtocolError
from testkit.golden import derived_ike_keys, h, ike_sa_init, load, opened_messages

SCENARIO = "04-ecdsa-aes256gcm16-prfsha384-ecp384"
CERTS = Path(__file__).parent / "vectors" / SCENARIO / "certs"
UTC = datetime.UTC
NOW = datetime.datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)


# --- A throwaway PKI --------------------------------------------------------------------

_KEYS: dict[str, list[PrivateKey]] = {}
_RSA_USES: list[int] = []


def new_key(kind: str) -> PrivateKey:
    """Fresh keys, but RSA ones come from a small cache: 2048-bit generation is slow."""
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa384":
        return ec.generate_private_key(ec.SECP384R1())
    pool = _KEYS.setdefault(kind, [])
    _RSA_USES.append(1)
    if len(pool) < 4:
        pool.append(rsa.generate_private_key(65537, 2048))
        return pool[-1]
    return pool[len(_RSA_USES) % len(pool)]


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    def payload(self) -> Certificate:
        return Certificate(
            CertEncoding.X509_SIGNATURE, self.cert.public_bytes(serialization.Encoding.DER)
        )

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(
    cn: str,
    issuer: Issued | None = None,
    *,
    kind: str = "ecdsa",
    ca: bool = False,
    path_length: int | None = None,
    san: tuple[x509.GeneralName, ...] = (),
    usage: x509.KeyUsage | None = None,
    before: datetime.datetime = NOW - 30 * DAY,
    after: datetime.datetime = NOW + 365 * DAY,
    basic_constraints: bool = True,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    key: PrivateKey | None = None,
) -> Issued:
    key = key or new_key(kind)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(issuer.cert.subject if issuer else name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
    )
    if basic_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    for value, critical in extra:
        builder = builder.add_extension(value, critical=critical)
    signer = issuer.key if issuer else key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Issued(builder.sign(signer, algorithm), key)


def key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


GWB_SAN = (x509.DNSName("gwb.example.net"),)


def fqdn(text: str) -> Identity:
    return Identity.parse(text)


# --- The golden vectors' ECDSA P-384 scenario -------------------------------------------


def golden_anchors() -> TrustAnchors:
    return TrustAnchors.from_files([CERTS / "ca.pem"])


def golden_cert(host: str) -> Certificate:
    cert = x509.load_pem_x509_certificate((CERTS / f"{host}.pem").read_bytes())
    return Certificate(CertEncoding.X509_SIGNATURE, cert.public_bytes(serialization.Encoding.DER))


@pytest.mark.parametrize("host", ["gwa.example.net", "gwb.example.net"])
def test_golden_certificates_validate_with_their_identity(host: str) -> None:
    peer = golden_anchors().validate([golden_cert(host)], fqdn(host), NOW)
    assert peer.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == host
    assert [c.subject.rfc4514_string() for c in peer.chain][-1].startswith("CN=vec test CA")
    assert isinstance(peer.public_key, ec.EllipticCurvePublicKey)
    assert peer.public_key.curve.name == "secp384r1"


def test_golden_certificate_with_the_other_gateways_id_fails() -> None:
    with pytest.raises(AuthenticationFailed) as err:
        golden_anchors().validate([golden_cert("gwb.example.net")], fqdn("gwa.example.net"), NOW)
    assert str(err.value) == (
        "peer ID gwa.example.net not in certificate subjectAltName [DNS:gwb.example.net] "
        "of gwb.example.net"
    )
    assert err.value.notify == NotifyType.AUTHENTICATION_FAILED


def test_golden_capture_certs_validate_and_their_auth_verifies() -> None:
    # The CERT payloads strongSwan sent in IKE_AUTH, then the AUTH they must verify.
    keys = load(SCENARIO, "keys.json")
    suite, ike_keys = derived_ike_keys(keys)[0]
    sa = keys["ike_sas"][0]
    request_frame, response_frame = ike_sa_init(SCENARIO)
    auth_messages = [m for r, _, m in opened_messages(SCENARIO) if r["exchange"] == "IKE_AUTH"]
    request = next(m for m in auth_messages if not m.response)
    response = next(m for m in auth_messages if m.response)
    anchors = golden_anchors()
    idi, idr = request.get(IdI), response.get(IdR)
    assert idi is not None and idr is not None
    for message, ident, octets in (
        (
            request,
            idi,
            signed_octets(request_frame.data, h(sa["Nr"]), suite.prf, ike_keys.sk_pi, idi.id_prime),
        ),
        (
            response,
            idr,
            signed_octets(
                response_frame.data, h(sa["Ni"]), suite.prf, ike_keys.sk_pr, idr.id_prime
            ),
        ),
    ):
        identity = Identity.from_wire(ident.id_type, ident.data)
        peer = anchors.validate(message.get_all(Certificate), identity, NOW)
        auth = message.get(Authentication)
        assert auth is not None
        assert verify_signature_auth(peer.public_key, octets, auth.data).name == "ecdsa-with-sha384"
    # strongSwan's CERTREQ names our CA exactly as ours does: SHA-1 of its SPKI.
    captured = request.get_all(CertificateRequest)
    assert requested_authorities(captured) == {spki_sha1(anchors.certificates[0])}
    assert anchors.certreq() == captured[0]


def test_golden_ike_sa_init_signature_hashes() -> None:
    request = decode_message(ike_sa_init(SCENARIO)[0].data)
    notify = request.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    assert notify is not None
    hashes_ = parse_signature_hashes(notify.data)
    assert HashAlgorithm.SHA2_384 in hashes_
    key = serialization.load_pem_private_key(
        (CERTS / "gwa.example.net.key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    # P-384 signs with SHA-384, as strongSwan did in the capture.
    assert choose_signature_hash(key, hashes_) == HashAlgorithm.SHA2_384


def test_golden_credentials_load_and_sign_what_the_peer_verifies() -> None:
    ours = LocalCredentials.from_files(
        CERTS / "gwa.example.net.pem", CERTS / "gwa.example.net.key.pem"
    )
    assert "PRIVATE" not in repr(ours) and "gwa.example.net" in repr(ours)
    auth = ours.sign(b"signed octets", (2, 3, 4))
    assert split_signature_auth(auth)[0].name == "ecdsa-with-sha384"
    peer = golden_anchors().validate(ours.cert_payloads(), fqdn("gwa.example.net"), NOW)
    verify_signature_auth(peer.public_key, b"signed octets", auth)


# --- A generated PKI: every key type, every identity type --------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
def test_chain_with_intermediates_in_any_order(kind: str) -> None:
    root = issue("Root CA", kind=kind, ca=True, usage=key_usage(cert_sign=True))
    mid1 = issue("Mid CA 1", root, kind=kind, ca=True, path_length=1)
    mid2 = issue("Mid CA 2", mid1, kind=kind, ca=True, path_length=0)
    leaf = issue(
        "gwb.example.net",
        mid2,
        kind=kind,
        san=(
            x509.DNSName("GWB.example.net"),
            x509.IPAddress(ipaddress.ip_address("2001:db8::2")),
            x509.IPAddress(ipaddress.ip_address("198.51.100.2")),
            x509.RFC822Name("vpn@example.net"),
        ),
        usage=key_usage(digital_signature=True),
    )
    anchors = TrustAnchors.from_pem(root.pem())
    payloads = [leaf.payload(), mid1.payload(), mid2.payload()]  # mids out of order
    for text in ("gwb.example.net", "2001:db8::2", "198.51.100.2", "VPN@example.net"):
        peer = anchors.validate(payloads, Identity.parse(text), NOW)
        assert [c.subject for c in peer.chain] == [
            name(n) for n in ("gwb.example.net", "Mid CA 2", "Mid CA 1", "Root CA")
        ]
    dn = Identity(Identity.parse("CN=x").kind, leaf.cert.subject.public_bytes())
    anchors.validate(payloads, dn, NOW)
    # Our side of the same PKI: sign, and the validated key verifies it.
    ours = LocalCredentials.from_pem(leaf.pem() + mid2.pem() + mid1.pem(), leaf.key_pem())
    assert [p.data for p in ours.cert_payloads()] == [
        p.data for p in (leaf.payload(), mid2.payload(), mid1.payload())
    ]
    auth = ours.sign(b"octets", None)
    scheme = verify_signature_auth(peer.public_key, b"octets", auth)
    assert scheme.key_kind == {"rsa": "rsa", "ecdsa": "ecdsa", "ed25519": "ed25519"}[kind]
    with pytest.raises(AuthenticationFailed):
        verify_signature_auth(peer.public_key, b"other octets", auth)


def test_wrong_ip_and_dn_identities() -> None:
    root = issue("Root CA", ca=True)
    leaf = issue("gwb.example.net", root, san=(x509.DNSName("gwb.example.net"),))
    anchors = TrustAnchors.from_pem(root.pem())
    with pytest.raises(
        AuthenticationFailed,
        match=re.escape(
            "peer ID 198.51.100.9 not in certificate subjectAltName [DNS:gwb.example.net]"
        ),
    ):
        anchors.validate([leaf.payload()], Identity.parse("198.51.100.9"), NOW)
    with pytest.raises(
        AuthenticationFailed, match=re.escape("is not the certificate subject 'CN=gwb.example.net'")
    ):
        anchors.validate([leaf.payload()], Identity.parse("CN=gwa.example.net"), NOW)
    key_id = Identity(Identity.parse("@#0a0b").kind, b"\x0a\x0b")
    assert key_id.id_type == IdType.ID_KEY_ID
    with pytest.raises(AuthenticationFailed, match="cannot be matched"):
        anchors.validate([leaf.payload()], key_id, NOW)


def test_identity_mismatch_is_the_check_validate_uses() -> None:
    # The public helper (the configuration checks our own certificate with it) says
    # None for every identity the certificate names, and why not for the others.
    root = issue("Root CA", ca=True)
    leaf = issue(
        "gwb.example.net",
        root,
        san=(
            x509.DNSName("gwb.example.net"),
            x509.IPAddress(ipaddress.ip_address("2001:db8::2")),
            x509.RFC822Name("vpn@example.net"),
        ),
    )
    for named in ("gwb.example.net", "GWB.example.net.", "2001:db8::2", "vpn@example.net"):
        assert identity_mismatch(leaf.cert, Identity.parse(named)) is None, named
    assert identity_mismatch(leaf.cert, Identity.parse("CN=gwb.example.net")) is None
    listed = "[DNS:gwb.example.net, IP:2001:db8::2, email:vpn@example.net]"
    assert identity_mismatch(leaf.cert, Identity.parse("198.51.100.9")) == (
        f"not in certificate subjectAltName {listed} of gwb.example.net"
    )
    assert identity_mismatch(leaf.cert, Identity.parse("CN=gwa.example.net")) == (
        "is not the certificate subject 'CN=gwb.example.net'"
    )
    # The peer's validation gives the same reason, after "peer ID ...".
    anchors = TrustAnchors.from_pem(root.pem())
    with pytest.raises(AuthenticationFailed) as failed:
        anchors.validate([leaf.payload()], Identity.parse("198.51.100.9"), NOW)
    assert str(failed.value) == (
        f"peer ID 198.51.100.9 not in certificate subjectAltName {listed} of gwb.example.net"
    )


def test_expired_and_not_yet_valid() -> None:
    root = issue("Root CA", ca=True, before=NOW - 500 * DAY)
    old = issue(
        "gwb.example.net",
        root,
        san=GWB_SAN,
        before=NOW - 400 * DAY,
        after=datetime.datetime(2027, 1, 2, tzinfo=UTC),
    )
    anchors = TrustAnchors.from_pem(root.pem())
    with pytest.raises(AuthenticationFailed) as err:
        anchors.validate([old.payload()], fqdn("gwb.example.net"), NOW)
    assert str(err.value) == "certificate of gwb.example.net expired on 2027-01-02 00:00:00 UTC"
    # The same certificate was fine before it expired (time given as POSIX seconds).
    anchors.validate(
        [old.payload()],
        fqdn("gwb.example.net"),
        datetime.datetime(2027, 1, 1, tzinfo=UTC).timestamp(),
    )
    future = issue("gwb.example.net", root, san=GWB_SAN, before=NOW + DAY)
    with pytest.raises(
        AuthenticationFailed, match=re.escape("gwb.example.net is not valid before")
    ):
        anchors.validate([future.payload()], fqdn("gwb.example.net"), NOW)
    expired_root = issue("Old Root", ca=True, after=NOW - DAY, before=NOW - 100 * DAY)
    leaf = issue("gwb.example.net", expired_root, san=GWB_SAN)
    with pytest.raises(AuthenticationFailed, match="CA certificate Old Root expired"):
        TrustAnchors.from_pem(expired_root.pem()).validate(
            [leaf.payload()], fqdn("gwb.example.net"), NOW
        )
    with pytest.raises(LocalProtocolError, match="timezone-aware"):
        anchors.validate([old.payload()], fqdn("gwb.example.net"), datetime.datetime(2027, 1, 1))


def test_unknown_ca() -> None:
    ours = issue("Our CA", ca=True)
    other = issue("Other CA", ca=True)
    leaf = issue("gwb.example.net", other, san=GWB_SAN)
    anchors = TrustAnchors.from_pem(ours.pem())
    with pytest.raises(AuthenticationFailed) as err:
        anchors.validate([leaf.payload()], fqdn("gwb.example.net"), NOW)
    assert (
        str(err.value) == "certificate of gwb.example.net is signed by an unknown CA 'CN=Other CA'"
    )
    # The peer sending the other CA along does not make it trusted.
    with pytest.raises(AuthenticationFailed, match="chains to an unknown CA 'CN=Other CA'"):
        anchors.validate([leaf.payload(), other.payload()], fqdn("gwb.example.net"), NOW)


def test_impostor_ca_with_our_ca_name_is_unknown() -> None:
    ours = issue("Our CA", ca=True)
    impostor = issue("Our CA", ca=True)  # same DN, another key
    leaf = issue("gwb.example.net", impostor, san=GWB_SAN)
    with pytest.raises(AuthenticationFailed, match="signed by an unknown CA 'CN=Our CA'"):
        TrustAnchors.from_pem(ours.pem()).validate([leaf.payload()], fqdn("gwb.example.net"), NOW)


def test_missing_intermediate_is_an_unknown_ca() -> None:
    root = issue("Root CA", ca=True)
    mid = issue("Mid CA", root, ca=True)
    leaf = issue("gwb.example.net", mid, san=GWB_SAN)
    anchors = TrustAnchors.from_pem(root.pem())
    with pytest.raises(AuthenticationFailed, match="signed by an unknown CA 'CN=Mid CA'"):
        anchors.validate([leaf.payload()], fqdn("gwb.example.net"), NOW)
    # Trusting the intermediate itself is enough (a configured CA may be a sub-CA).
    TrustAnchors.from_pem(mid.pem()).validate([leaf.payload()], fqdn("gwb.example.net"), NOW)


def test_key_usage_without_digital_signature() -> None:
    root = issue("Root CA", ca=True)
    leaf = issue("gwb.example.net", root, san=GWB_SAN, usage=key_usage(cert_sign=True))
    with pytest.raises(AuthenticationFailed) as err:
        TrustAnchors.from_pem(root.pem()).validate([leaf.payload()], fqdn("gwb.example.net"), NOW)
    assert str(err.value) == "certificate of gwb.example.net lacks key usage digitalSignature"


def test_ca_constraints_on_intermediates() -> None:
    root = issue("Root CA", ca=True, path_length=0)
    not_ca = issue("Not A CA", root, ca=False)
    leaf = issue("gwb.example.net", not_ca, san=GWB_SAN)
    anchors = TrustAnchors.from_pem(root.pem())
    with pytest.raises(AuthenticationFailed, match="Not A CA is not a CA"):
        anchors.validate([leaf.payload(), not_ca.payload()], fqdn("gwb.example.net"), NOW)
    no_bc = issue("No BC", root, basic_constraints=False)
    leaf2 = issue("gwb.example.net", no_bc, san=GWB_SAN)
    with pytest.raises(AuthenticationFailed, match="No BC is not a CA"):
        anchors.validate([leaf2.payload(), no_bc.payload()], fqdn("gwb.example.net"), NOW)
    # Root allows no intermediate CA below it (pathLenConstraint 0).
    mid = issue("Mid CA", root, ca=True)
    leaf3 = issue("gwb.example.net", mid, san=GWB_SAN)
    with pytest.raises(
        AuthenticationFailed, match="allows 0 intermediate CAs below it, the chain has 1"
    ):
        anchors.validate([leaf3.payload(), mid.payload()], fqdn("gwb.example.net"), NOW)
    no_sign = issue("No Sign CA", ca=True, usage=key_usage(digital_signature=True))
    leaf4 = issue("gwb.example.net", no_sign, san=GWB_SAN)
    with pytest.raises(AuthenticationFailed, match="lacks key usage keyCertSign"):
        TrustAnchors.from_pem(no_sign.pem()).validate(
            [leaf4.payload()], fqdn("gwb.example.net"), NOW
        )


def test_unknown_critical_extension_rejected_noncritical_ignored() -> None:
    root = issue("Root CA", ca=True)
    oid = ObjectIdentifier("1.3.6.1.4.1.55555.1")
    anchors = TrustAnchors.from_pem(root.pem())
    ok = issue(
        "gwb.example.net",
        root,
        san=GWB_SAN,
        extra=((x509.UnrecognizedExtension(oid, b"\x05\x00"), False),),
    )
    anchors.validate([ok.payload()], fqdn("gwb.example.net"), NOW)
    bad = issue(
        "gwb.example.net",
        root,
        san=GWB_SAN,
        extra=((x509.UnrecognizedExtension(oid, b"\x05\x00"), True),),
    )
    with pytest.raises(
        AuthenticationFailed, match=re.escape("unsupported critical extension 1.3.6.1.4.1.55555.1")
    ):
        anchors.validate([bad.payload()], fqdn("gwb.example.net"), NOW)


def test_bad_cert_payloads() -> None:
    root = issue("Root CA", ca=True)
    leaf = issue("gwb.example.net", root, san=GWB_SAN)
    anchors = TrustAnchors.from_pem(root.pem())
    gwb = fqdn("gwb.example.net")
    with pytest.raises(AuthenticationFailed, match=re.escape("no X.509 certificate")):
        anchors.validate([], gwb, NOW)
    with pytest.raises(AuthenticationFailed, match="malformed"):
        anchors.validate(
            [Certificate(CertEncoding.X509_SIGNATURE, b"\x30\x03\x02\x01\x01")], gwb, NOW
        )
    with pytest.raises(AuthenticationFailed, match=re.escape("no X.509 certificate")):
        anchors.validate([Certificate(CertEncoding.HASH_URL_X509_CERT, b"x" * 24)], gwb, NOW)
    with pytest.raises(AuthenticationFailed, match=f"at most {MAX_PEER_CERTIFICATES}"):
        anchors.validate([leaf.payload()] * (MAX_PEER_CERTIFICATES + 1), gwb, NOW)
    # Other encodings before the X.509 one are skipped.
    anchors.validate(
        [Certificate(CertEncoding.HASH_URL_X509_CERT, b"x" * 24), leaf.payload()], gwb, NOW
    )


# --- CERTREQ, hashes, loading -----------------------------------------------------------


def test_certreq_names_each_anchor_by_spki_sha1() -> None:
    a, b = issue("CA A", ca=True), issue("CA B", ca=True, kind="ed25519")
    anchors = TrustAnchors.from_pem(a.pem() + b.pem())
    request = anchors.certreq()
    assert request.encoding == CertEncoding.X509_SIGNATURE
    spki = a.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert request.authorities[:20] == hashlib.sha1(spki).digest()
    assert requested_authorities([request]) == {spki_sha1(a.cert), spki_sha1(b.cert)}
    assert requested_authorities([CertificateRequest(CertEncoding.PGP, b"123")]) == frozenset()
    with pytest.raises(InvalidSyntax):
        requested_authorities([CertificateRequest(CertEncoding.X509_SIGNATURE, b"x" * 21)])


def test_signature_hash_choice() -> None:
    notify = signature_hashes_notify()
    assert notify.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS
    assert notify.data == bytes.fromhex("0002000300040005")
    assert parse_signature_hashes(notify.data) == (2, 3, 4, 5)
    with pytest.raises(InvalidSyntax):
        parse_signature_hashes(b"\x00\x02\x00")
    p256 = ec.generate_private_key(ec.SECP256R1())
    p521 = ec.generate_private_key(ec.SECP521R1())
    edkey = ed25519.Ed25519PrivateKey.generate()
    assert choose_signature_hash(p256, (2, 3, 4, 5)) == HashAlgorithm.SHA2_256
    assert choose_signature_hash(p521, (2, 3, 4)) == HashAlgorithm.SHA2_512
    assert choose_signature_hash(p521, (2,)) == HashAlgorithm.SHA2_256
    assert choose_signature_hash(new_key("rsa"), (4, 3)) == HashAlgorithm.SHA2_384
    assert choose_signature_hash(edkey, (2, 5)) == HashAlgorithm.IDENTITY
    assert choose_signature_hash(p256, None) == HashAlgorithm.SHA2_256
    with pytest.raises(CredentialError, match="Ed25519"):
        choose_signature_hash(edkey, (2, 3, 4))
    with pytest.raises(CredentialError):
        choose_signature_hash(p256, (1,))  # SHA-1 only: refused
    # The chosen hash is the one in the AUTH's AlgorithmIdentifier.
    root = issue("Root CA", ca=True)
    leaf = issue("gw", root, key=p521)
    auth = LocalCredentials(leaf.cert, (), p521).sign(b"o", (2, 4))
    assert split_signature_auth(auth)[0].name == "ecdsa-with-sha512"


def test_credential_errors(tmp_path: Path) -> None:
    root = issue("Root CA", ca=True)
    leaf = issue("gw", root)
    other = issue("gw2", root)
    with pytest.raises(CredentialError, match="does not belong"):
        LocalCredentials(leaf.cert, (), other.key)
    with pytest.raises(CredentialError, match="does not belong"):
        LocalCredentials.from_pem(leaf.pem(), other.key_pem())
    x_key = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CredentialError, match="not supported"):
        LocalCredentials.from_pem(leaf.pem(), x_key)
    with pytest.raises(CredentialError, match="cannot be loaded"):
        LocalCredentials.from_pem(leaf.pem(), b"garbage")
    with pytest.raises(CredentialError, match="not a PEM"):
        LocalCredentials.from_pem(b"garbage", leaf.key_pem())
    with pytest.raises(CredentialError, match="cannot read"):
        LocalCredentials.from_files(tmp_path / "missing.pem", tmp_path / "missing.key")
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(root.pem() + issue("CA 2", ca=True).pem())
    assert len(TrustAnchors.from_files([bundle]).certificates) == 2
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a certificate")
    with pytest.raises(CredentialError, match=re.escape("bad.pem")):
        TrustAnchors.from_files([bad])
    with pytest.raises(CredentialError, match="no CA certificate"):
        TrustAnchors(())
