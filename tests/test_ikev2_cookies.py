"""COOKIEs of RFC 7296 §2.6: stateless check, secret rotation with grace, threshold."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

import pytest

from ikev2.codec import (
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    SecurityAssociation,
    decode_message,
)
from ikev2.codec.message import encode_message
from ikev2.constants import ExchangeType, NotifyType
from ikev2.cookies import COOKIE_LEN, CookieJar, CookiePolicy, InvalidCookie, cookie_response
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint, EndpointConfig
from ikev2.errors import InvalidSyntax, LocalProtocolError
from testkit.ikev2_pair import connection, deliver, mirrored, on_wire

NI = bytes(range(32))
SPI_I = bytes.fromhex("0123456789abcdef")
IP_I = "198.51.100.7"


def jar(now: float = 0.0, **policy: Any) -> CookieJar:
    return CookieJar(CookiePolicy(**policy), DeterministicRandom("cookies"), now)


def init_request(cookie: bytes | None = None, nonce: bytes = NI) -> Message:
    payloads: list[Payload] = []
    if cookie is not None:
        payloads.append(Notify(NotifyType.COOKIE, cookie))  # §2.6: the COOKIE goes first
    payloads += [SecurityAssociation(()), KeyExchange(31, bytes(32)), Nonce(nonce)]
    return Message(
        spi_i=SPI_I,
        spi_r=bytes(8),
        exchange_type=ExchangeType.IKE_SA_INIT,
        message_id=0,
        initiator=True,
        response=False,
        payloads=tuple(payloads),
    )


def test_cookie_layout_is_version_then_sha256_of_ni_ipi_spii_secret() -> None:
    rng = DeterministicRandom("layout")
    secret = DeterministicRandom("layout").token_bytes(32)
    cookies = CookieJar(CookiePolicy(), rng, 0.0)
    cookie = cookies.make(NI, IP_I, SPI_I, 1.0)
    assert len(cookie) == COOKIE_LEN == 36
    assert cookie[:4] == bytes(4)  # first secret is version 0
    packed_ip = bytes([198, 51, 100, 7])
    assert cookie[4:] == hashlib.sha256(NI + packed_ip + SPI_I + secret).digest()


def test_stateless_verify_accepts_own_cookie_from_any_jar_state() -> None:
    cookies = jar()
    cookie = cookies.make(NI, IP_I, SPI_I, 5.0)
    # Nothing is stored per initiator: many other cookies in between change nothing.
    for n in range(50):
        cookies.make(bytes([n]) * 16, "203.0.113.1", SPI_I, 6.0)
    cookies.verify(cookie, NI, IP_I, SPI_I, 7.0)
    # The address may be given as packed octets, text or ipaddress object alike.
    cookies.verify(cookie, NI, bytes([198, 51, 100, 7]), SPI_I, 7.0)


@pytest.mark.parametrize(
    ("nonce", "ip", "spi"),
    [
        (bytes(32), IP_I, SPI_I),
        (NI, "198.51.100.8", SPI_I),
        (NI, IP_I, bytes(8)),
    ],
    ids=["other-nonce", "other-address", "other-spi"],
)
def test_cookie_bound_to_nonce_address_and_spi(nonce: bytes, ip: str, spi: bytes) -> None:
    cookies = jar()
    cookie = cookies.make(NI, IP_I, SPI_I, 0.0)
    with pytest.raises(InvalidCookie, match="does not match"):
        cookies.verify(cookie, nonce, ip, spi, 0.0)


def test_wrong_cookies_rejected() -> None:
    cookies = jar()
    good = cookies.make(NI, IP_I, SPI_I, 0.0)
    flipped = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(InvalidCookie, match="does not match"):
        cookies.verify(flipped, NI, IP_I, SPI_I, 0.0)
    with pytest.raises(InvalidCookie, match="octets"):
        cookies.verify(good[:-1], NI, IP_I, SPI_I, 0.0)
    with pytest.raises(InvalidCookie, match="unknown secret version 7"):
        cookies.verify((7).to_bytes(4, "big") + good[4:], NI, IP_I, SPI_I, 0.0)
    # Another responder (other secret) made this one.
    other = CookieJar(CookiePolicy(), DeterministicRandom("other"), 0.0)
    with pytest.raises(InvalidCookie):
        cookies.verify(other.make(NI, IP_I, SPI_I, 0.0), NI, IP_I, SPI_I, 0.0)


def test_rotation_keeps_previous_secret_for_grace_only() -> None:
    cookies = jar(rotate_interval=100.0, grace=10.0)
    old = cookies.make(NI, IP_I, SPI_I, 50.0)
    assert cookies.next_rotation() == 100.0
    new = cookies.make(NI, IP_I, SPI_I, 100.0)  # rotation due: version 1
    assert new[:4] == (1).to_bytes(4, "big")
    assert new != old
    cookies.verify(old, NI, IP_I, SPI_I, 109.9)  # within grace
    cookies.verify(new, NI, IP_I, SPI_I, 109.9)
    with pytest.raises(InvalidCookie, match="retired secret version 0"):
        cookies.verify(old, NI, IP_I, SPI_I, 110.0)
    cookies.verify(new, NI, IP_I, SPI_I, 150.0)
    # Second rotation: version 0 is gone entirely, version 1 now in its grace.
    newest = cookies.make(NI, IP_I, SPI_I, 200.0)
    assert newest[:4] == (2).to_bytes(4, "big")
    with pytest.raises(InvalidCookie, match="unknown secret version 0"):
        cookies.verify(old, NI, IP_I, SPI_I, 200.0)
    cookies.verify(new, NI, IP_I, SPI_I, 205.0)


def test_grace_counts_from_due_time_after_idle_period() -> None:
    cookies = jar(rotate_interval=100.0, grace=10.0)
    old = cookies.make(NI, IP_I, SPI_I, 0.0)
    # Idle until long after the rotation was due: the old secret's grace is over.
    with pytest.raises(InvalidCookie, match="retired"):
        cookies.verify(old, NI, IP_I, SPI_I, 500.0)


def test_policy_threshold_and_validation() -> None:
    policy = CookiePolicy(demand_above=3)
    assert [policy.required(n) for n in range(6)] == [False, False, False, False, True, True]
    assert CookiePolicy(demand_above=0).required(1)
    assert not CookiePolicy(demand_above=0).required(0)
    with pytest.raises(LocalProtocolError):
        CookiePolicy(demand_above=-1)
    with pytest.raises(LocalProtocolError):
        CookiePolicy(rotate_interval=0)
    with pytest.raises(LocalProtocolError):
        CookiePolicy(rotate_interval=10, grace=11)


def test_check_request_below_threshold_lets_everything_through() -> None:
    cookies = jar(demand_above=2)
    assert cookies.check_request(init_request(), IP_I, half_open=2, now=0.0) is None
    # Even a bogus cookie is ignored while cookies are not demanded.
    bogus = init_request(cookie=bytes(COOKIE_LEN))
    assert cookies.check_request(bogus, IP_I, half_open=0, now=0.0) is None


def test_check_request_demands_then_accepts_echoed_cookie() -> None:
    cookies = jar(demand_above=2)
    first = init_request()
    demand = cookies.check_request(first, IP_I, half_open=3, now=1.0)
    assert demand is not None
    # The response is an IKE_SA_INIT response with only N(COOKIE), SPIr zero.
    wire = decode_message(encode_message(demand))
    assert wire.exchange_type == ExchangeType.IKE_SA_INIT
    assert wire.response and not wire.initiator
    assert wire.spi_i == SPI_I and wire.spi_r == bytes(8) and wire.message_id == 0
    assert len(wire.payloads) == 1
    notify = wire.notify(NotifyType.COOKIE)
    assert notify is not None and len(notify.data) == COOKIE_LEN
    # The initiator repeats its request with the cookie first: accepted.
    retry = init_request(cookie=notify.data)
    assert cookies.check_request(retry, IP_I, half_open=3, now=2.0) is None
    # The same cookie from another address is answered with a fresh demand.
    again = cookies.check_request(retry, "203.0.113.5", half_open=3, now=2.0)
    assert again is not None
    fresh = again.notify(NotifyType.COOKIE)
    assert fresh is not None and fresh.data != notify.data


def test_a_flood_of_wrong_cookies_writes_no_log_line_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Wrong COOKIEs cost an attacker nothing: each gets a fresh demand, and no line
    # above DEBUG (the endpoint counts and logs the demands, throttled).
    cookies = jar(demand_above=0)
    with caplog.at_level(logging.INFO, logger="ikev2.cookies"):
        for i in range(200):
            forged = bytes(2) + i.to_bytes(2, "big") + bytes(28)
            assert cookies.check_request(init_request(cookie=forged), IP_I, 1, now=1.0) is not None
    assert not [r for r in caplog.records if r.name == "ikev2.cookies"]


def test_check_request_needs_nonce() -> None:
    cookies = jar(demand_above=0)
    request = dataclasses.replace(init_request(), payloads=(SecurityAssociation(()),))
    with pytest.raises(InvalidSyntax):
        cookies.check_request(request, IP_I, half_open=1, now=0.0)


def test_cookie_response_copies_spis() -> None:
    response = cookie_response(init_request(), b"\x01" * 8)
    assert response.spi_i == SPI_I
    assert response.payloads == (Notify(NotifyType.COOKIE, b"\x01" * 8),)


def test_secret_never_in_repr() -> None:
    rng = DeterministicRandom("repr")
    secret = DeterministicRandom("repr").token_bytes(32)
    cookies = CookieJar(CookiePolicy(), rng, 0.0)
    assert secret.hex() not in repr(cookies.__dict__)
    assert repr(secret) not in repr(cookies.__dict__)


def test_lockgate_initiator_retries_with_our_cookie_and_passes() -> None:
    # The IKE core's initiator (ikev2.tasks.ike_init) echoes the COOKIE first (§2.6);
    # the retried request must pass the jar that made it.
    initiator = Endpoint([connection()], rng=DeterministicRandom(b"cookie-initiator"))
    initiator.initiate("conn", 0.0)
    [first] = initiator.datagrams_to_send(0.0)
    request = decode_message(first.data)
    source_ip = first.local[0]
    cookies = jar(demand_above=0)
    demand = cookies.check_request(request, source_ip, half_open=1, now=0.0)
    assert demand is not None
    deliver(initiator, encode_message(demand), first.local, first.remote, 0.0)
    [second] = initiator.datagrams_to_send(0.0)
    retry = decode_message(second.data)
    notify = demand.notify(NotifyType.COOKIE)
    assert notify is not None
    assert retry.payloads[0] == Notify(NotifyType.COOKIE, notify.data)
    assert retry.spi_i == request.spi_i
    assert cookies.check_request(retry, source_ip, half_open=1, now=1.0) is None


def test_threshold_zero_lets_the_first_request_through_and_asks_the_next() -> None:
    # demand_above = 0 (gateway.cookie_threshold = 0) means "as soon as one IKE SA is
    # half open", not "always": a quiet responder answers the first IKE_SA_INIT in full.
    responder = Endpoint(
        [mirrored(connection())],
        rng=DeterministicRandom(b"cookie-responder"),
        config=EndpointConfig(cookies=CookiePolicy(demand_above=0)),
    )
    answers = []
    for n in range(2):  # two initiators (two SPIs) at the peer's address
        initiator = Endpoint([connection()], rng=DeterministicRandom(bytes([n])))
        initiator.initiate("conn", 0.0)
        [request] = initiator.datagrams_to_send(0.0)
        deliver(responder, on_wire(request), request.remote, request.local, 0.0)
        [answer] = responder.datagrams_to_send(0.0)
        answers.append(decode_message(answer.data))
    first, second = answers
    assert first.get(Nonce) is not None and first.notify(NotifyType.COOKIE) is None
    assert [type(p) for p in second.payloads] == [Notify]
    assert second.notify(NotifyType.COOKIE) is not None
    assert len(responder.ike_sas()) == 1  # the COOKIE answer kept no state
