"""A remote-access login in memory: our initiator as the client of our responder, with
EAP-MSCHAPv2 (RFC 7296 §2.16, RFC 2759) and configuration payloads (§3.15).

The server signs with its certificate and checks the user through a callback (EAP
identity -> NT hash); addresses come from an allocator callback. Covered: a login that
gets an address, DNS, domains and subnets, with the CHILD SA narrowed to the address;
a wrong password and an unknown user, refused with EAP-Failure and
AUTHENTICATION_FAILED and told apart in the server's reason; a full pool
(INTERNAL_ADDRESS_FAILURE, the IKE SA stands); the AUTH keyed with the MSK checked on
both sides; a client that sends AUTH to an EAP-only server.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from strongswan import Pki

from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.codec import Authentication, Configuration, Eap, Message
from ikev2.codec.eap import EapIdentity, EapNak, eap_payload
from ikev2.config import (
    ConnectionConfig,
    Identity,
    RemoteAccessClient,
)
from ikev2.constants import AuthMethod, EapCode, ExchangeType, NotifyType
from ikev2.crypto.rng import DeterministicRandom
from ikev2.eap_mschapv2 import EapCause, EapClient, EapFailed, EapServer
from ikev2.events import (
    ChildSaFailed,
    ChildSaInstalled,
    IkeSaEstablished,
    IkeSaFailed,
    VirtualIpAssigned,
)
from ikev2.sa_data import IkeSaData
from ikev2.ts import TrafficSelector
from testkit.eap_login import LOCAL_SUBNET, SERVER_NAME, USERS, Pool, eap_client, eap_server
from testkit.ikev2_pair import A_ADDR, Pair, ra_login
from testkit.pki import Credential

_login = ra_login


def _auth_requests(pair: Pair) -> int:
    return len(pair.requests("a", ExchangeType.IKE_AUTH))


def test_login_gets_an_address_dns_domains_and_subnets() -> None:
    pki, pool = Pki(), Pool()
    pair = _login(eap_client(pki), eap_server(pki, pool))
    (ea,) = pair.of("a", IkeSaEstablished)
    (eb,) = pair.of("b", IkeSaEstablished)
    assert eb.eap_identity == "alice" and eb.remote_id == A_ADDR
    assert ea.remote_id == SERVER_NAME
    # IKE_AUTH #1 (IDs, no AUTH), Identity, MS-CHAPv2 Response, Success, final AUTH.
    assert _auth_requests(pair) == 5
    (given,) = pair.of("b", VirtualIpAssigned)
    (got,) = pair.of("a", VirtualIpAssigned)
    assert given.user == "alice" and given.addresses == ("192.0.2.2/29",)
    assert got.addresses == given.addresses
    # The client has no IPv6 address: only the IPv4 DNS server and subnet.
    assert got.dns == ("203.0.113.53",)
    assert got.dns_domains == ("corp.example.net", "lab.example.net")
    assert got.subnets == (LOCAL_SUBNET,)
    assert pool.calls == [("alice", eb.ike_sa_id, 4)]
    (ia,) = pair.of("a", ChildSaInstalled)
    (ib,) = pair.of("b", ChildSaInstalled)
    # The server narrowed the client's side to its virtual address.
    virtual = TrafficSelector.from_network("192.0.2.2/32")
    assert ib.remote_ts == (virtual,) and ia.local_ts == (virtual,)
    assert ib.local_ts == ia.remote_ts == (TrafficSelector.from_network(LOCAL_SUBNET),)
    assert ia.encr_key_out == ib.encr_key_in and ib.encr_key_out == ia.encr_key_in


def test_login_with_ipv6_too() -> None:
    pki, pool = Pki(), Pool(network6="2001:db8:c::/64")
    pair = _login(eap_client(pki, request_ip6=True), eap_server(pki, pool))
    (got,) = pair.of("a", VirtualIpAssigned)
    assert got.addresses == ("192.0.2.2/29", "2001:db8:c::7/64")
    assert got.dns == ("203.0.113.53", "2001:db8::53")
    assert got.subnets == (LOCAL_SUBNET, "2001:db8:1::/64")


def test_the_final_auth_is_keyed_with_the_msk_on_both_sides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pki = Pki()
    sent = _tap(monkeypatch)
    pair = _login(eap_client(pki), eap_server(pki, Pool()))
    assert pair.of("a", IkeSaEstablished) and pair.of("b", IkeSaEstablished)
    auth = [m for m in sent if m.exchange_type == ExchangeType.IKE_AUTH]
    requests = [m for m in auth if not m.response]
    responses = [m for m in auth if m.response]
    assert len(requests) == len(responses) == 5
    # §2.16: no AUTH from the client until the last request; the server signs in its
    # first response; the last pair both carry a MIC keyed with the MSK.
    assert [m.get(Authentication) is None for m in requests] == [True] * 4 + [False]
    first, last = responses[0].get(Authentication), responses[-1].get(Authentication)
    assert first is not None and first.method == AuthMethod.DIGITAL_SIGNATURE
    assert last is not None and last.method == AuthMethod.SHARED_KEY_MIC
    final = requests[-1].get(Authentication)
    assert final is not None and final.method == AuthMethod.SHARED_KEY_MIC
    # Every EAP round is one exchange: Identity, Challenge, Success, EAP-Success.
    codes = [m.get(Eap) for m in responses[:4]]
    assert [e.code for e in codes if e is not None] == [1, 1, 1, EapCode.SUCCESS]
    # The CHILD SA and CP travel in the first request and the last response only.
    assert requests[0].get(Configuration) is not None and responses[-1].get(Configuration)
    assert all(m.get(Configuration) is None for m in requests[1:] + responses[:-1])


def test_tampered_msk_auth_is_refused() -> None:
    # A client whose MSK-keyed AUTH is wrong (its own NT hash differs from the one
    # its MS-CHAPv2 response used cannot happen; so corrupt the AUTH itself).
    from ikev2.tasks import ike_auth

    pki = Pki()
    original = ike_auth.IkeAuth._msk_auth

    def corrupt(self: ike_auth.IkeAuth, sa: object, key: bytes, ident: object) -> Authentication:
        auth = original(self, sa, key, ident)  # type: ignore[arg-type]
        if getattr(sa, "initiator", False):
            return Authentication(AuthMethod.SHARED_KEY_MIC, bytes(len(auth.data)))
        return auth

    ike_auth.IkeAuth._msk_auth = corrupt  # type: ignore[method-assign]
    try:
        pair = _login(eap_client(pki), eap_server(pki, Pool()))
    finally:
        ike_auth.IkeAuth._msk_auth = original  # type: ignore[method-assign]
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "MSK" in fb.reason and fb.user == "alice"
    assert pair.of("a", IkeSaFailed)
    assert not pair.of("b", IkeSaEstablished)


@pytest.mark.parametrize(
    ("user", "password", "cause"),
    [
        ("alice", "wrong horse battery", "wrong password"),
        ("mallory", "anything at all", "unknown user"),
    ],
)
def test_refused_login_sends_eap_failure_and_authentication_failed(
    user: str, password: str, cause: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki, pool = Pki(), Pool()
    sent = _tap(monkeypatch)
    pair = _login(eap_client(pki, user, password), eap_server(pki, pool))
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert cause in fb.reason and fb.user == user
    (fa,) = pair.of("a", IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED
    assert not pair.of("b", IkeSaEstablished) and not pool.calls
    assert pair.a.ike_sas() == [] and pair.b.ike_sas() == []
    # The last response: EAP-Failure then N(AUTHENTICATION_FAILED); the same for both
    # causes, so a client cannot tell whether the user exists.
    last = [m for m in sent if m.response and m.exchange_type == ExchangeType.IKE_AUTH][-1]
    assert [type(p).__name__ for p in last.payloads] == ["Eap", "Notify"]
    eap = last.payloads[0]
    assert isinstance(eap, Eap) and eap.code == EapCode.FAILURE


def _tap(monkeypatch: pytest.MonkeyPatch) -> list[Message]:
    """Every message any IKE SA encodes, in the clear."""
    seen: list[Message] = []
    original = IkeSaData._encode

    def encode(self: IkeSaData, message: Message) -> tuple[bytes, ...]:
        seen.append(message)
        return original(self, message)

    monkeypatch.setattr(IkeSaData, "_encode", encode)
    return seen


def test_full_pool_refuses_the_child_sa_with_internal_address_failure() -> None:
    pki = Pki()
    pool = Pool("192.0.2.0/30")  # one address to give: .1 is the server's
    server = eap_server(pki, pool)
    pair = _login(eap_client(pki), server)
    assert pair.of("b", VirtualIpAssigned)
    second = _login(eap_client(pki), server)
    (fb,) = second.of("b", ChildSaFailed)
    assert fb.notify == NotifyType.INTERNAL_ADDRESS_FAILURE
    assert "pool is exhausted" in fb.reason
    (fa,) = second.of("a", ChildSaFailed)
    assert fa.notify == NotifyType.INTERNAL_ADDRESS_FAILURE
    # §3.15.4: the IKE SA was established; a client without its CHILD SA deletes it.
    assert second.of("b", IkeSaEstablished) and not second.of("b", VirtualIpAssigned)
    assert not second.of("b", ChildSaInstalled)


def test_certificate_client_is_refused_by_an_eap_only_server() -> None:
    pki = Pki()
    cred = pki.issue("laptop.example.net")
    client = dataclasses.replace(
        eap_client(pki),
        local_id=Identity.parse("laptop.example.net"),
        credentials=LocalCredentials.from_pem(cred.cert_pem, cred.key_pem),
        ra_client=RemoteAccessClient(),
    )
    pair = _login(client, eap_server(pki, Pool()))
    (fb,) = pair.of("b", IkeSaFailed)
    assert "EAP-MSCHAPv2 logins only" in fb.reason
    assert pair.of("a", IkeSaFailed)


def _certificate_client(pki: Pki, cred: Credential, ident: str) -> ConnectionConfig:
    return dataclasses.replace(
        eap_client(pki),
        local_id=Identity.parse(ident),
        credentials=LocalCredentials.from_pem(cred.cert_pem, cred.key_pem),
        ra_client=RemoteAccessClient(),
    )


def _certificate_server(pki: Pki, pool: Pool, **ra: object) -> ConnectionConfig:
    server = eap_server(pki, pool, **ra)
    assert server.remote_access is not None
    return dataclasses.replace(
        server,
        trust_anchors=TrustAnchors.from_pem(pki.chain()[-1]),
        remote_access=dataclasses.replace(server.remote_access, client_auth="pubkey"),
    )


@pytest.mark.parametrize("as_dn", [True, False])
def test_a_certificate_clients_user_is_the_cn_whatever_its_idi(as_dn: bool) -> None:
    # RFC 7427 signature; the IDi may be the subject DN or a SAN, the user is the CN.
    pki, pool = Pki(), Pool()
    cred = pki.issue("laptop.example.net", cn="carol")
    ident = cred.dn if as_dn else "laptop.example.net"
    gated: list[tuple[str, str, bool]] = []

    def gate(user: str, address: str, initial_contact: bool, ike_sa_id: int) -> str | None:
        gated.append((user, address, initial_contact))
        return None

    pair = _login(_certificate_client(pki, cred, ident), _certificate_server(pki, pool, gate=gate))
    (eb,) = pair.of("b", IkeSaEstablished)
    assert eb.eap_identity == "carol" and eb.remote_id == ident
    # The client's first IKE SA with us carries INITIAL_CONTACT (§2.4): the gate hears it.
    assert gated == [("carol", A_ADDR, True)]
    assert [user for user, _, _ in pool.calls] == ["carol"]
    assert pair.of("a", ChildSaInstalled)


def test_a_certificate_without_a_common_name_is_refused() -> None:
    pki = Pki()
    cred = pki.issue("laptop.example.net", cn="")
    pair = _login(
        _certificate_client(pki, cred, "laptop.example.net"), _certificate_server(pki, Pool())
    )
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.refusal == "certificate without a common name", fb
    assert not pair.of("b", IkeSaEstablished) and pair.of("a", IkeSaFailed)


def test_a_certificate_login_the_gate_refuses_fails_with_its_reason() -> None:
    pki = Pki()
    cred = pki.issue_client("carol")
    server = _certificate_server(pki, Pool(), gate=lambda *_: "too many sessions")
    pair = _login(_certificate_client(pki, cred, cred.dn), server)
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.refusal == "too many sessions" and fb.user == "carol"
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert pair.of("a", IkeSaFailed) and not pair.of("b", IkeSaEstablished)


def test_no_auth_without_remote_access_is_refused() -> None:
    pki = Pki()
    server = dataclasses.replace(
        eap_server(pki, Pool()),
        remote_access=None,
        trust_anchors=TrustAnchors.from_pem(pki.chain()[-1]),
    )
    pair = _login(eap_client(pki), server)
    (fb,) = pair.of("b", IkeSaFailed)
    assert "sent no AUTH" in fb.reason


def test_eap_server_refuses_a_nak_a_wrong_identifier_and_an_empty_identity() -> None:
    def server() -> EapServer:
        return EapServer(DeterministicRandom(b"s"), USERS.get)

    s = server()
    request = s.start()
    with pytest.raises(EapFailed) as nak:
        s.process(eap_payload(EapCode.RESPONSE, request.identifier, EapNak((13,))))
    assert nak.value.cause is EapCause.REFUSED_METHOD
    assert nak.value.eap is not None and nak.value.eap.code == EapCode.FAILURE
    s = server()
    request = s.start()
    with pytest.raises(EapFailed) as wrong_id:
        s.process(eap_payload(EapCode.RESPONSE, request.identifier ^ 1, EapIdentity(b"alice")))
    assert wrong_id.value.cause is EapCause.PROTOCOL
    s = server()
    request = s.start()
    with pytest.raises(EapFailed) as empty:
        s.process(eap_payload(EapCode.RESPONSE, request.identifier, EapIdentity(b"")))
    assert empty.value.cause is EapCause.PROTOCOL


def test_eap_client_and_server_agree_on_the_msk() -> None:
    client = EapClient(DeterministicRandom(b"c"), "CORP\\alice", USERS["alice"])
    # A Windows-style "DOMAIN\user" identity: the user check sees it whole, the
    # challenge hash without the domain (RFC 2759 §8.2).
    server_users = {"CORP\\alice": USERS["alice"]}
    server = EapServer(DeterministicRandom(b"s"), server_users.get)
    packet: Eap | None = server.start()
    while packet is not None and not server.done:
        answer = client.process(packet)
        assert answer is not None
        packet = server.process(answer)
    assert packet is not None and packet.code == EapCode.SUCCESS
    assert client.process(packet) is None and client.succeeded
    assert server.msk is not None and server.msk == client.msk and server.identity == "CORP\\alice"


def test_refusals_carry_their_words_and_the_client_address() -> None:
    pki, pool = Pki(), Pool()
    pair = _login(eap_client(pki, "alice", "wrong horse battery"), eap_server(pki, pool))
    (fb,) = pair.of("b", IkeSaFailed)
    assert (fb.refusal, fb.user, fb.remote[0]) == ("wrong password", "alice", A_ADDR)
    pair = _login(eap_client(pki, "mallory"), eap_server(pki, pool))
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.refusal == "unknown user"


def test_a_closed_gate_refuses_before_the_password_is_checked() -> None:
    pki, pool = Pki(), Pool()
    asked: list[tuple[str, str, bool]] = []
    looked_up: list[str] = []

    def gate(user: str, address: str, initial_contact: bool, ike_sa_id: int) -> str | None:
        asked.append((user, address, initial_contact))
        return "rate limited"

    def lookup(user: str) -> bytes | None:
        looked_up.append(user)
        return USERS.get(user)

    pair = _login(eap_client(pki), eap_server(pki, pool, gate=gate, nt_hash=lookup))
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.refusal == "rate limited" and fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert asked == [("alice", A_ADDR, True)] and looked_up == []
    (fa,) = pair.of("a", IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED


def test_a_users_reach_narrows_our_side_and_nothing_refuses_the_child_sa() -> None:
    pki, pool = Pki(), Pool()
    reach = {"alice": (ipaddress.ip_network("203.0.113.0/26"),)}
    server = eap_server(pki, pool, reach=lambda user: reach.get(user, ()))
    pair = _login(eap_client(pki), server)
    (ib,) = pair.of("b", ChildSaInstalled)
    (ia,) = pair.of("a", ChildSaInstalled)
    narrowed = (TrafficSelector.from_network("203.0.113.0/26"),)
    assert ib.local_ts == ia.remote_ts == narrowed
    reach["alice"] = ()
    pair = _login(eap_client(pki), server)
    (fb,) = pair.of("b", ChildSaFailed)
    assert fb.notify == NotifyType.TS_UNACCEPTABLE and not pair.of("b", ChildSaInstalled)


def test_the_server_starts_no_child_rekey_towards_a_client_behind_a_nat() -> None:
    pki, pool = Pki(), Pool()
    pair = _login(eap_client(pki), eap_server(pki, pool))
    (sa,) = pair.b.ike_sas()
    (child_sa,) = sa.children.values()
    assert child_sa.rekey_at < child_sa.expire_at  # no NAT: the server may rekey
    sa.nat_remote = True
    from ikev2.tasks.child_create import _rekey_time

    assert _rekey_time(sa, child_sa.config) == child_sa.config.lifetime
