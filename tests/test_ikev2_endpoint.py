"""The IKE endpoint: routing by SPI, port 4500 framing, half-open SAs, the asyncio driver."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from esp.udpencap import NAT_KEEPALIVE, NON_ESP_MARKER, DatagramKind, classify
from ikev2.codec import IkeHeader, Message, Nonce, Notify, decode_message, encode_message
from ikev2.codec import KeyExchange as KePayload
from ikev2.constants import ExchangeType, NotifyType
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint, EndpointConfig
from ikev2.events import ChildSaInstalled, Event, IkeSaDeleted, IkeSaEstablished
from ikev2.sa_types import Datagram
from testkit.ike_sockets import SocketDriver
from testkit.ikev2_pair import (
    A_ADDR,
    B_ADDR,
    Pair,
    connection,
    deliver,
    init_request,
    mirrored,
    on_wire,
)

INIT = ExchangeType.IKE_SA_INIT


def test_port_4500_marker_keepalive_and_esp() -> None:
    pair = Pair.make(connection(encap="force"))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("b", ChildSaInstalled)
    nat_b, nat_a = (B_ADDR, 4500), (A_ADDR, 4500)
    # A keepalive and an ESP packet (non-zero SPI) on 4500 are not IKE: no reaction.
    assert classify(NAT_KEEPALIVE) is DatagramKind.KEEPALIVE
    assert classify(b"\x00\x00\x10\x01" + bytes(40)) is DatagramKind.ESP
    deliver(pair.b, NAT_KEEPALIVE, nat_b, nat_a, 1.0)
    deliver(pair.b, b"\x00\x00\x10\x01" + bytes(40), nat_b, nat_a, 1.0)
    assert pair.b.datagrams_to_send(1.0) == [] and list(pair.b.events()) == []
    # An IKE message on 4500 without the marker is not IKE either (RFC 3948 §2.2).
    (sa_a,) = pair.a.ike_sas()
    sa_a.check_liveness(1.0)
    (request,) = pair.a.datagrams_to_send(1.0)
    # The endpoint gives the bare message; the daemon frames it (`Pump.send_datagram`).
    assert request.local == nat_a and not request.data.startswith(NON_ESP_MARKER)
    assert on_wire(request) == NON_ESP_MARKER + request.data
    assert classify(request.data) is DatagramKind.ESP
    deliver(pair.b, request.data, nat_b, nat_a, 1.0)
    assert pair.b.datagrams_to_send(1.0) == []
    # The daemon path: the bare message through receive_message is answered, from 4500.
    pair.b.receive_message(request.data, nat_b, nat_a, 1.0)
    (answer,) = pair.b.datagrams_to_send(1.0)
    assert answer.local == nat_b and on_wire(answer).startswith(NON_ESP_MARKER)
    deliver(pair.a, on_wire(answer), nat_a, nat_b, 1.0)
    assert sa_a.tm.outstanding is None


def test_unknown_spi_and_unmatched_peers_are_dropped_silently() -> None:
    b = Endpoint([mirrored(connection())], rng=DeterministicRandom(b"b"))
    header = IkeHeader(b"\x01" * 8, b"\x02" * 8, 0, ExchangeType.INFORMATIONAL, 1, 28, True, False)
    deliver(b, header.encode(), (B_ADDR, 500), (A_ADDR, 500), 0.0)
    # An IKE_SA_INIT from an address no connection accepts creates nothing.
    deliver(b, init_request(b"\x03" * 8), (B_ADDR, 500), ("198.51.100.77", 500), 0.0)
    # Nor one that arrives on an address that is not ours.
    deliver(b, init_request(b"\x04" * 8), ("198.51.100.3", 500), (A_ADDR, 500), 0.0)
    assert b.ike_sas() == [] and b.datagrams_to_send(0.0) == [] and b.next_event() is None


def test_retransmitted_ike_sa_init_is_answered_by_the_same_half_open_sa() -> None:
    b = Endpoint([mirrored(connection())], rng=DeterministicRandom(b"b"))
    request = init_request(b"\x05" * 8)
    deliver(b, request, (B_ADDR, 500), (A_ADDR, 500), 0.0)
    (first,) = b.datagrams_to_send(0.0)
    deliver(b, request, (B_ADDR, 500), (A_ADDR, 500), 1.0)
    (again,) = b.datagrams_to_send(1.0)
    assert again.data == first.data and len(b.ike_sas()) == 1


def test_half_open_sas_are_capped() -> None:
    b = Endpoint(
        [mirrored(connection())],
        rng=DeterministicRandom(b"b"),
        config=EndpointConfig(max_half_open=2),
    )
    for n in range(3):
        deliver(b, init_request(bytes([n + 1]) * 8), (B_ADDR, 500), (A_ADDR, 500), 0.0)
    assert len(b.ike_sas()) == 2 and len(b.datagrams_to_send(0.0)) == 2


def test_cookie_retry_repeats_the_request_with_the_cookie_first() -> None:
    # RFC 7296 §2.6: the retry carries N(COOKIE) first and the same SA, KE and nonce.
    a = Endpoint([connection()], rng=DeterministicRandom(b"a"))
    sa = a.initiate("conn", 0.0)
    (first,) = a.datagrams_to_send(0.0)
    request = decode_message(first.data)
    cookie = Notify(NotifyType.COOKIE, b"c" * 16)
    reply = Message(request.spi_i, bytes(8), INIT, 0, False, True, (cookie,))
    deliver(a, encode_message(reply), first.local, first.remote, 0.1)
    (retry,) = a.datagrams_to_send(0.1)
    again = decode_message(retry.data)
    assert again.payloads[0] == cookie
    assert again.payloads[1:] == request.payloads
    assert again.message_id == 0 and again.spi_i == request.spi_i
    assert sa.tm.get_timer() == 0.1 + 4.0  # a fresh back-off for the new request
    assert again.get(KePayload) == request.get(KePayload)
    assert again.get(Nonce) == request.get(Nonce)


def test_asyncio_driver_brings_two_endpoints_up_and_down() -> None:
    """Two drivers on one loop, their send callbacks wired to each other (no sockets)."""

    async def main() -> tuple[list[Event], list[Event]]:
        events: dict[str, list[Event]] = {"a": [], "b": []}
        drivers: dict[str, SocketDriver] = {}
        loop = asyncio.get_running_loop()

        def sender(name: str, other: str) -> object:
            def send(message: bytes, local: tuple[str, int], remote: tuple[str, int]) -> None:
                # Framed for the port as the daemon's pump frames it, and delivered
                # later, like a network: never re-enter the sender's driver.
                data = on_wire(Datagram(message, local, remote))
                loop.call_soon(drivers[other].datagram_received, data, remote, local)

            return send

        conn = connection()
        for name, other, config in (("a", "b", conn), ("b", "a", mirrored(conn))):
            endpoint = Endpoint([config], rng=DeterministicRandom(name.encode()))
            drivers[name] = SocketDriver(
                endpoint,
                sender(name, other),  # type: ignore[arg-type]
                events[name].append,
                loop=loop,
            )
        ike_sa_id = drivers["a"].initiate("conn")
        for _ in range(100):
            if any(isinstance(e, ChildSaInstalled) for e in events["a"]):
                break
            await asyncio.sleep(0.01)
        drivers["a"].delete(ike_sa_id)
        for _ in range(100):
            if any(isinstance(e, IkeSaDeleted) for e in events["b"]):
                break
            await asyncio.sleep(0.01)
        await drivers["a"].close(timeout=1.0)
        await drivers["b"].close(timeout=1.0)
        return events["a"], events["b"]

    events_a, events_b = asyncio.run(main())
    for events in (events_a, events_b):
        kinds = [type(e).__name__ for e in events]
        assert kinds[:2] == ["IkeSaEstablished", "ChildSaInstalled"]
        assert kinds[-1] == "IkeSaDeleted"
    assert any(isinstance(e, IkeSaEstablished) and e.initiator for e in events_a)


def _flows() -> tuple[list[bytes], Pair]:
    """The UDP payloads of an establishment with forced encapsulation, and the pair."""
    pair = Pair.make(connection(encap="force"))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    return [s.payload for s in pair.wire], pair


_RECORDED, _ = _flows()


@settings(max_examples=60, deadline=None)
@given(
    index=st.integers(0, len(_RECORDED) - 1),
    flips=st.lists(st.integers(0, 10_000), max_size=4),
    cut=st.integers(0, 2000),
    to_a=st.booleans(),
)
def test_mutated_datagrams_never_raise_and_leave_established_sas_alone(
    index: int, flips: list[int], cut: int, to_a: bool
) -> None:
    _, pair = _flows()
    data = bytearray(_RECORDED[index][: max(1, len(_RECORDED[index]) - cut % 64)])
    for bit in flips:
        data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
    target = pair.a if to_a else pair.b
    (sa,) = target.ike_sas()
    before = (sa.state, sa.tm.expected_request_id, sa.tm.next_request_id, dict(sa.children))
    for port in (500, 4500):
        local = (A_ADDR if to_a else B_ADDR, port)
        remote = (B_ADDR if to_a else A_ADDR, port)
        deliver(target, bytes(data), local, remote, 1.0)
    # Whatever was answered (a fresh half-open SA, a cached response), the established
    # IKE SA is untouched: same state, same Message IDs, same CHILD SAs.
    assert (sa.state, sa.tm.expected_request_id, sa.tm.next_request_id, dict(sa.children)) == before
    target.datagrams_to_send(1.0)
    list(target.events())


def test_cookie_demanded_above_the_half_open_threshold() -> None:
    from ikev2.cookies import CookiePolicy
    from ikev2.events import ChildSaInstalled as Installed

    conn = connection()
    b = Endpoint(
        [mirrored(conn)],
        rng=DeterministicRandom(b"b"),
        config=EndpointConfig(cookies=CookiePolicy(demand_above=0)),
    )
    pair = Pair(Endpoint([conn], rng=DeterministicRandom(b"a")), b)
    # One half-open SA already (a stray IKE_SA_INIT), so the next one needs a COOKIE.
    deliver(b, init_request(b"\x09" * 8), (B_ADDR, 500), (A_ADDR, 500), 0.0)
    b.datagrams_to_send(0.0)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    _, retry = pair.requests("a", INIT)[:2]
    demand = decode_message(pair.responses("b", INIT)[0].ike)
    assert [type(p) for p in demand.payloads] == [Notify]
    assert demand.payloads[0].notify_type == NotifyType.COOKIE  # type: ignore[attr-defined]
    assert demand.spi_r == bytes(8)
    assert decode_message(retry.ike).payloads[0] == demand.payloads[0]
    assert pair.of("a", Installed) and pair.of("b", Installed)
    # The COOKIE answer created no SA: only the stray one and the real one exist.
    assert len(b.ike_sas()) == 2
