"""IKE_AUTH with certificates in memory (RFC 7427 signatures, RFC 4945 checks).

Two lockgate IKE SAs with a throwaway PKI (tests/strongswan.py's `Pki`): ECDSA, RSA
and Ed25519 keys, an intermediate CA, and the failures an operator must be told
about clearly: an unknown CA and an identity the certificate does not name.
"""

from __future__ import annotations

import dataclasses

import pytest
from strongswan import Credential, Pki

from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.config import ConnectionConfig, Identity
from ikev2.constants import NotifyType
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint
from ikev2.events import ChildSaInstalled, IkeSaEstablished, IkeSaFailed
from ikev2.fragments import is_fragmented
from testkit.ikev2_pair import Pair, connection, mirrored, on_wire

A_NAME, B_NAME = "gw-a.example.net", "gw-b.example.net"


def _with_certs(
    conn: ConnectionConfig,
    own: Credential,
    local: str,
    remote: str,
    ca: Pki,
    issuer: Pki | None = None,
) -> ConnectionConfig:
    # Our certificate file holds our certificate and the intermediates above it.
    intermediates = b"".join(issuer.chain()[:-1]) if issuer is not None else b""
    return dataclasses.replace(
        conn,
        auth="pubkey",
        psk=None,
        local_id=Identity.parse(local),
        remote_id=Identity.parse(remote),
        credentials=LocalCredentials.from_pem(own.cert_pem + intermediates, own.key_pem),
        trust_anchors=TrustAnchors.from_pem(ca.chain()[-1]),
    )


def _pair(a: ConnectionConfig, b: ConnectionConfig) -> Pair:
    # Certificate validity needs calendar time; the fake clock is only for timers.
    return Pair(
        Endpoint([a], rng=DeterministicRandom(b"a")),
        Endpoint([b], rng=DeterministicRandom(b"b")),
    )


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "rsa2048", "ed25519"])
def test_certificate_authentication(key_type: str) -> None:
    pki = Pki(key_type=key_type)
    sub = Pki("lockgate intermediate", key_type=key_type, parent=pki)
    base = connection()
    a = _with_certs(base, sub.issue(A_NAME), A_NAME, B_NAME, pki, issuer=sub)
    b = _with_certs(mirrored(base), pki.issue(B_NAME), B_NAME, A_NAME, pki)
    pair = _pair(a, b)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (ea,) = pair.of("a", IkeSaEstablished)
    (eb,) = pair.of("b", IkeSaEstablished)
    assert (ea.remote_id, eb.remote_id) == (B_NAME, A_NAME)
    ia, ib = pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0]
    assert ia.encr_key_out == ib.encr_key_in


def test_unknown_ca_fails_on_both_sides() -> None:
    pki, stranger = Pki(), Pki("some other CA")
    base = connection()
    a = _with_certs(base, stranger.issue(A_NAME), A_NAME, B_NAME, pki)
    b = _with_certs(mirrored(base), pki.issue(B_NAME), B_NAME, A_NAME, pki)
    pair = _pair(a, b)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "unknown CA" in fb.reason and "some other CA" in fb.reason
    (fa,) = pair.of("a", IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED


def test_identity_not_in_the_certificate_is_refused_by_the_initiator() -> None:
    pki = Pki()
    base = connection()
    a = _with_certs(base, pki.issue(A_NAME), A_NAME, B_NAME, pki)
    # b claims B_NAME but holds a certificate for another name.
    b = _with_certs(mirrored(base), pki.issue("elsewhere.example.net"), B_NAME, A_NAME, pki)
    pair = _pair(a, b)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fa,) = pair.of("a", IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED
    assert B_NAME in fa.reason and "elsewhere.example.net" in fa.reason
    # b was told (§2.21.2) and dropped its side too.
    assert pair.of("b", IkeSaEstablished)
    assert pair.b.ike_sas() == [] and pair.a.ike_sas() == []


def test_psk_peer_against_a_certificate_connection() -> None:
    pki = Pki()
    base = connection()
    b = _with_certs(mirrored(base), pki.issue(B_NAME), B_NAME, A_NAME, pki)
    a = dataclasses.replace(base, local_id=Identity.parse(A_NAME), remote_id=Identity.parse(B_NAME))
    pair = _pair(a, b)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.reason == (
        f"peer {A_NAME} authenticates with SHARED_KEY_MIC (2); we expect "
        "DIGITAL_SIGNATURE (14), a certificate signature (RFC 7427)"
    )
    assert pair.of("a", IkeSaFailed)


def test_certificate_peer_against_a_psk_connection_names_both_methods() -> None:
    # The other way round: the same wording, each method by name and number.
    pki = Pki()
    base = connection()
    a = _with_certs(base, pki.issue(A_NAME), A_NAME, B_NAME, pki)
    b = dataclasses.replace(
        mirrored(base), local_id=Identity.parse(B_NAME), remote_id=Identity.parse(A_NAME)
    )
    pair = _pair(a, b)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert fb.reason == (
        f"peer {A_NAME} authenticates with DIGITAL_SIGNATURE (14); we expect "
        "SHARED_KEY_MIC (2), a pre-shared key"
    )
    assert pair.of("a", IkeSaFailed)


def test_ike_fragments_on_the_nat_port_fit_fragment_size_with_the_marker() -> None:
    # Two lockgates move to port 4500 for IKE_AUTH (ESP in UDP), where each IKE message
    # rides behind the 4-octet non-ESP marker (RFC 3948 §2.2): the UDP payload is what
    # must fit fragment_size (1232: an IPv6 minimum MTU of 1280 less the IP and UDP
    # headers, RFC 7383 §2.5.1), so a fragment is 4 octets shorter there.
    pki = Pki(key_type="rsa4096")
    sub = Pki("lockgate intermediate", key_type="rsa4096", parent=pki)
    base = connection()
    a = _with_certs(base, sub.issue(A_NAME), A_NAME, B_NAME, pki, issuer=sub)
    b = _with_certs(mirrored(base), pki.issue(B_NAME), B_NAME, A_NAME, pki)
    pair = _pair(a, b)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("a", IkeSaEstablished) and pair.of("b", IkeSaEstablished)
    on_nat_port = [s for s in pair.wire if s.datagram.local[1] == 4500]
    fragments = [s for s in on_nat_port if is_fragmented(s.ike)]
    assert len(fragments) >= 4, "the certificate chain should need fragments"
    sizes = [len(on_wire(s.datagram)) for s in on_nat_port]
    assert max(sizes) <= a.fragment_size, sizes
    assert max(len(on_wire(s.datagram)) for s in fragments) > a.fragment_size - 64
