"""EAP-TLS (RFC 5216 with TLS 1.2, RFC 9190 with TLS 1.3) in memory.

The server method (`ikev2.eap_tls.EapTlsServer`) against our client method, whose TLS
is OpenSSL through pyOpenSSL, and then a whole IKE login (RFC 7296 §2.16) of our
initiator at our responder. Covered: both TLS versions with small fragments (ACKed one
by one, RFC 5216 §2.1.5), the same MSK on both sides, the user named by the
certificate's CN, the TLS 1.3 success indication before EAP-Success (RFC 9190 §2.5), an
untrusted or missing client certificate and a closed gate refused with EAP-Failure,
malformed EAP-TLS packets (bad flags, lying lengths, garbage) refused as protocol
errors and nothing else, and auth "any" switching from MSCHAPv2 to EAP-TLS on the
client's Nak.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from collections.abc import Callable
from typing import Never

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.codec import Eap
from ikev2.codec.eap import (
    EapIdentity,
    EapNak,
    EapTls,
    EapTlsFlag,
    EapType,
    eap_data,
    eap_payload,
    encode_eap_data,
)
from ikev2.config import ConnectionConfig, Identity, RemoteAccess, RemoteAccessClient
from ikev2.constants import EapCode, NotifyType
from ikev2.crypto.mschapv2 import nt_password_hash
from ikev2.crypto.rng import DeterministicRandom
from ikev2.eap_mschapv2 import EapCause, EapFailed, EapServer
from ikev2.eap_tls import (
    MAX_ROUNDS,
    MAX_TLS_MESSAGE,
    EapMethodChoice,
    EapTlsClient,
    EapTlsServer,
)
from ikev2.events import IkeSaEstablished, IkeSaFailed
from testkit.ikev2_pair import A_ADDR, B_ADDR, child, ra_client, ra_login
from testkit.pki import Pki

SERVER_NAME = "vpn.example.net"
LOCAL_SUBNET = "203.0.113.0/24"
VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


@dataclasses.dataclass
class Lab:
    pki: Pki
    server: LocalCredentials
    anchors: TrustAnchors

    def user(self, name: str, pki: Pki | None = None) -> LocalCredentials:
        cred = (pki or self.pki).issue_client(name)
        return LocalCredentials.from_pem(cred.cert_pem, cred.key_pem)


@pytest.fixture(scope="module")
def lab() -> Lab:
    pki = Pki()
    cred = pki.issue(SERVER_NAME)
    return Lab(
        pki,
        LocalCredentials.from_pem(cred.cert_pem, cred.key_pem),
        TrustAnchors.from_pem(pki.ca.cert_pem),
    )


def _server(lab: Lab, gate: Callable[[str], str | None] | None = None, **kw: int) -> EapTlsServer:
    return EapTlsServer(DeterministicRandom(b"s"), lab.server, lab.anchors, time.time, gate, **kw)


def _run(
    server: EapTlsServer | EapMethodChoice, client: EapTlsClient
) -> tuple[list[Eap], list[Eap]]:
    """Both sides to the end: the server's packets and the client's."""
    sent, answered = [server.start()], []
    while True:
        answer = client.process(sent[-1])
        if answer is None:
            return sent, answered
        answered.append(answer)
        sent.append(server.process(answer))


def _tls(packets: list[Eap]) -> list[EapTls]:
    out = []
    for p in packets:
        if p.code in (EapCode.REQUEST, EapCode.RESPONSE):
            data = eap_data(p)
            if isinstance(data, EapTls):
                out.append(data)
    return out


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_login_with_small_fragments_agrees_on_the_msk(lab: Lab, version: str) -> None:
    server = _server(lab, fragment_size=100)
    client = EapTlsClient(
        "alice@corp.example.net",
        lab.user("alice"),
        lab.anchors,
        fragment_size=64,
        max_version=VERSIONS[version],
    )
    sent, answered = _run(server, client)
    assert sent[-1].code == EapCode.SUCCESS and server.done and client.succeeded
    assert server.version == client.version == version
    assert server.msk is not None and len(server.msk) == 64 and server.msk == client.msk
    # The certificate names the user, not the EAP identity.
    assert server.identity == "alice" and server.eap_identity == "alice@corp.example.net"
    requests, responses = _tls(sent), _tls(answered)
    assert requests[0].flags == EapTlsFlag.START and not requests[0].data
    # Fragmented both ways: the first fragment of a message says its whole length,
    # none is larger than the size, and each fragment with M is ACKed.
    for packets, size in ((requests, 100), (responses, 64)):
        assert any(p.flags & EapTlsFlag.MORE for p in packets)
        assert all(len(p.data) <= size for p in packets)
        firsts = [p for p in packets if p.tls_length is not None]
        assert firsts and all(p.tls_length >= len(p.data) for p in firsts)
    acks = sum(1 for p in responses if not p.data and not p.flags)
    assert acks >= sum(1 for p in requests if p.flags & EapTlsFlag.MORE)


def test_a_second_login_has_another_msk(lab: Lab) -> None:
    msks = []
    for _ in range(2):
        server = _server(lab)
        _run(server, EapTlsClient("alice", lab.user("alice"), lab.anchors))
        msks.append(server.msk)
    assert None not in msks and msks[0] != msks[1]


def test_tls13_success_indication_comes_before_the_eap_success(lab: Lab) -> None:
    server = _server(lab)
    client = EapTlsClient("alice", lab.user("alice"), lab.anchors)
    packet = server.start()
    while True:
        answer = client.process(packet)
        assert answer is not None
        if client.msk is not None:
            break
        packet = server.process(answer)
    # The client has its key once the indication came (RFC 9190 §2.5), its answer is
    # the ACK, and only that ACK brings the EAP-Success.
    assert client.msk is not None and client.version == "TLSv1.3"
    assert not server.done and server.msk == client.msk
    assert eap_data(answer) == EapTls()
    assert server.process(answer).code == EapCode.SUCCESS and server.done


def test_an_untrusted_client_certificate_is_refused_with_eap_failure(lab: Lab) -> None:
    other = Pki("some other CA")
    server = _server(lab)
    client = EapTlsClient("mallory", lab.user("mallory", other), lab.anchors)
    with pytest.raises(EapFailed) as caught:
        _run(server, client)
    assert caught.value.cause is EapCause.CERTIFICATE
    # OpenSSL refuses the chain in the handshake (it knows only our client CAs).
    assert "of EAP identity 'mallory' is signed by an unknown CA" in str(caught.value)
    assert caught.value.eap is not None and caught.value.eap.code == EapCode.FAILURE
    assert server.msk is None and not server.done


def test_a_client_without_a_certificate_is_refused(lab: Lab) -> None:
    server = _server(lab)
    client = EapTlsClient("nobody", lab.user("nobody"), lab.anchors)
    # A client context without a certificate: OpenSSL sends an empty Certificate.
    client._conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD))
    client._conn.set_connect_state()
    with pytest.raises(EapFailed) as caught:
        _run(server, client)
    assert caught.value.cause is EapCause.TLS


def test_a_closed_gate_refuses_the_user_the_certificate_names(lab: Lab) -> None:
    asked: list[str] = []

    def gate(user: str) -> str | None:
        asked.append(user)
        return "too many sessions"

    server = _server(lab, gate)
    with pytest.raises(EapFailed) as caught:
        _run(server, EapTlsClient("whoever", lab.user("alice"), lab.anchors))
    assert asked == ["alice"]
    assert caught.value.cause is EapCause.REFUSED
    assert caught.value.refusal == "too many sessions"


def test_a_client_that_naks_eap_tls_is_refused(lab: Lab) -> None:
    server = _server(lab)
    start = server.process(eap_payload(EapCode.RESPONSE, server.identifier, EapIdentity(b"alice")))
    assert eap_data(start) == EapTls(EapTlsFlag.START)
    with pytest.raises(EapFailed) as caught:
        server.process(eap_payload(EapCode.RESPONSE, start.identifier, EapNak((26,))))
    assert caught.value.cause is EapCause.REFUSED_TLS


def _after_start(lab: Lab) -> tuple[EapTlsServer, int]:
    server = _server(lab)
    start = server.process(eap_payload(EapCode.RESPONSE, server.identifier, EapIdentity(b"alice")))
    return server, start.identifier


def _raw(identifier: int, type_data: bytes) -> Eap:
    return Eap(EapCode.RESPONSE, identifier, type_data)


@pytest.mark.parametrize(
    ("type_data", "words"),
    [
        (bytes([13, 0x20]), "EAP-TLS flags 0x20"),  # S in a response
        (bytes([13, 0x40]) + b"\x16" * 10, "without a TLS Message Length"),  # M, no L
        (bytes([13, 0x80, 0, 0, 0, 5]) + b"\x16" * 20, "more than the 5 announced"),
        (bytes([13, 0x80, 0, 0, 0, 40]) + b"\x16" * 20, "said 40"),
        (bytes([13, 0xC0, 0xFF, 0xFF, 0xFF, 0xFF]) + b"\x16", f"exceeds {MAX_TLS_MESSAGE}"),
        (bytes([13, 0xC0, 0, 0, 0, 9]), "empty fragment"),
        (bytes([13, 0x80, 0, 0]), "EAP response"),  # the length field cut short
        (bytes([13]), "EAP response"),  # no flags
        (bytes([13, 0]), "empty EAP-TLS response"),
        (bytes([4, 1, 2]), "expected an EAP-TLS response, got EapOther"),
    ],
)
def test_malformed_eap_tls_is_a_protocol_error(lab: Lab, type_data: bytes, words: str) -> None:
    server, identifier = _after_start(lab)
    with pytest.raises(EapFailed) as caught:
        server.process(_raw(identifier, type_data))
    assert caught.value.cause is EapCause.PROTOCOL
    assert words in str(caught.value)


def test_a_length_that_changes_between_fragments_is_refused(lab: Lab) -> None:
    server, identifier = _after_start(lab)
    ack = server.process(_raw(identifier, bytes([13, 0xC0, 0, 0, 0, 30]) + b"\x16" * 10))
    assert eap_data(ack) == EapTls()
    with pytest.raises(EapFailed, match="changed from 30 to 31"):
        server.process(_raw(ack.identifier, bytes([13, 0xC0, 0, 0, 0, 31]) + b"\x16" * 10))


def test_garbage_instead_of_tls_fails_the_handshake(lab: Lab) -> None:
    server, identifier = _after_start(lab)
    with pytest.raises(EapFailed) as caught:
        server.process(_raw(identifier, bytes([13, 0]) + b"GET / HTTP/1.0\r\n\r\n"))
    assert caught.value.cause is EapCause.TLS


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=6), st.booleans())
def test_random_eap_tls_responses_only_ever_fail_the_login(
    lab: Lab, bodies: list[bytes], tls_type: bool
) -> None:
    server, identifier = _after_start(lab)
    for body in bodies:
        packet = _raw(identifier, (bytes([EapType.TLS]) if tls_type else b"") + body)
        try:
            reply = server.process(packet)
        except EapFailed as exc:
            assert exc.eap is not None and exc.eap.code == EapCode.FAILURE
            return
        identifier = reply.identifier


@pytest.mark.parametrize(
    "packet",
    [
        EapTls(EapTlsFlag.START),
        EapTls(),
        EapTls(EapTlsFlag.MORE, 3000, b"\x16\x03\x03"),
        EapTls(0, 5, b"abcde"),
        EapTls(0, None, b"abcde"),
    ],
)
def test_eap_tls_packets_encode_and_decode(packet: EapTls) -> None:
    for code in (EapCode.REQUEST, EapCode.RESPONSE):
        wire = encode_eap_data(code, packet)
        assert wire[0] == EapType.TLS
        assert eap_data(Eap(code, 1, wire)) == packet


# --- a whole IKE login ----------------------------------------------------------------

PASSWORDS = {"bob": nt_password_hash("correct horse battery")}


def _ike_server(lab: Lab, client_auth: str) -> ConnectionConfig:
    return ConnectionConfig(
        name="laptops",
        local_addresses=(B_ADDR,),
        remote_address=None,
        local_id=Identity.parse(SERVER_NAME),
        remote_id=None,
        children=(child("laptops", local=LOCAL_SUBNET, remote="0.0.0.0/0"),),
        auth="pubkey",
        credentials=lab.server,
        trust_anchors=lab.anchors,
        remote_access=RemoteAccess(client_auth=client_auth, nt_hash=PASSWORDS.get),  # type: ignore[arg-type]
    )


def _ike_client(lab: Lab, cert: LocalCredentials) -> ConnectionConfig:
    return ra_client(
        SERVER_NAME,
        LOCAL_SUBNET,
        lab.anchors,
        RemoteAccessClient("alice@corp", eap_tls=cert, request_ip4=False),
    )


_ike_login = ra_login


class _NoCallbacks:
    """pyOpenSSL's cffi handle, refusing `ffi.callback` as a process under
    MemoryDenyWriteExecute does (a callback needs writable, executable memory)."""

    def __init__(self, ffi: object) -> None:
        self._ffi = ffi

    def callback(self, *_args: object, **_kw: object) -> Never:
        raise MemoryError("Cannot allocate write+execute memory for ffi.callback()")

    def __getattr__(self, name: str) -> object:
        return getattr(self._ffi, name)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_logins_need_no_ffi_callback(
    lab: Lab, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The systemd unit's MemoryDenyWriteExecute=yes makes every ffi.callback fail
    # (pyOpenSSL's set_verify with a Python callback, info or ALPN callbacks, ...).
    monkeypatch.setattr(SSL, "_ffi", _NoCallbacks(SSL._ffi))
    with pytest.raises(MemoryError):
        SSL.Context(SSL.TLS_SERVER_METHOD).set_verify(SSL.VERIFY_PEER, lambda *_: True)
    server = _server(lab)
    client = EapTlsClient("alice", lab.user("alice"), lab.anchors, max_version=VERSIONS[version])
    sent, _ = _run(server, client)
    assert sent[-1].code == EapCode.SUCCESS and server.msk == client.msk
    assert server.version == version and server.identity == "alice"
    untrusted = EapTlsClient("mallory", lab.user("mallory", Pki("some other CA")), lab.anchors)
    with pytest.raises(EapFailed) as caught:
        _run(_server(lab), untrusted)
    assert caught.value.cause is EapCause.CERTIFICATE


@pytest.mark.parametrize("client_auth", ["pubkey", "any"])
def test_ike_login_with_eap_tls(lab: Lab, client_auth: str) -> None:
    pair = _ike_login(_ike_client(lab, lab.user("alice")), _ike_server(lab, client_auth))
    (eb,) = pair.of("b", IkeSaEstablished)
    assert pair.of("a", IkeSaEstablished)
    assert eb.eap_identity == "alice" and eb.remote_id == A_ADDR


def test_ike_login_with_an_untrusted_certificate_is_refused(lab: Lab) -> None:
    mallory = lab.user("mallory", Pki("some other CA"))
    pair = _ike_login(_ike_client(lab, mallory), _ike_server(lab, "pubkey"))
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "client certificate refused" in fb.reason and "unknown CA" in fb.reason
    (fa,) = pair.of("a", IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED
    assert not pair.of("b", IkeSaEstablished)


def test_password_only_server_refuses_an_eap_tls_client(lab: Lab) -> None:
    pair = _ike_login(_ike_client(lab, lab.user("alice")), _ike_server(lab, "eap"))
    (fb,) = pair.of("b", IkeSaFailed)
    assert "not MS-CHAPv2" in fb.reason and fb.refusal == EapCause.REFUSED_METHOD.value


def test_method_choice_keeps_mschapv2_for_a_password_client(lab: Lab) -> None:
    from ikev2.eap_mschapv2 import EapClient

    choice = EapMethodChoice(
        EapServer(DeterministicRandom(b"s"), PASSWORDS.get), lambda: _server(lab)
    )
    client = EapClient(DeterministicRandom(b"c"), "bob", PASSWORDS["bob"])
    packet = choice.start()
    while (answer := client.process(packet)) is not None:
        packet = choice.process(answer)
    assert choice.done and choice.method == "EAP-MSCHAPv2" and choice.msk == client.msk


def _p_hash(digest: str, secret: bytes, seed: bytes, size: int) -> bytes:
    """P_hash of the TLS 1.2 PRF (RFC 5246 §5)."""
    out, a = b"", seed
    while len(out) < size:
        a = hmac.new(secret, a, digest).digest()
        out += hmac.new(secret, a + seed, digest).digest()
    return out[:size]


def test_tls12_msk_is_rfc5216s_prf_of_the_master_secret(lab: Lab) -> None:
    server = _server(lab)
    client = EapTlsClient("alice", lab.user("alice"), lab.anchors, max_version=SSL.TLS1_2_VERSION)
    _run(server, client)
    conn = server._conn
    master, client_random, server_random = (
        conn.master_key(),
        conn.client_random(),
        conn.server_random(),
    )
    assert master and client_random and server_random
    cipher = conn.get_cipher_name() or ""
    digest = "sha384" if cipher.endswith("SHA384") else "sha256"
    # RFC 5216 §2.3: Key_Material = TLS-PRF-128(master_secret, "client EAP encryption",
    # client.random || server.random); MSK = Key_Material(0, 63).
    key_material = _p_hash(
        digest, master, b"client EAP encryption" + client_random + server_random, 128
    )
    assert server.msk == key_material[:64] == client.msk


def test_a_client_that_never_finishes_is_cut_off(lab: Lab) -> None:
    server, identifier = _after_start(lab)
    # One octet at a time of a flight that announces the maximum: ACKed until the
    # round limit, then refused, long before the reassembly limit.
    first = bytes([13, 0xC0]) + MAX_TLS_MESSAGE.to_bytes(4, "big") + b"\x16"
    reply = server.process(_raw(identifier, first))
    with pytest.raises(EapFailed, match=f"no result after {MAX_ROUNDS} rounds"):
        for _ in range(MAX_ROUNDS):
            assert eap_data(reply) == EapTls()
            reply = server.process(_raw(reply.identifier, bytes([13, 0x40]) + b"\x16"))
