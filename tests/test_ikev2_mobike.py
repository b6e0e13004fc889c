"""MOBIKE as responder (RFC 4555), two endpoints in memory.

Endpoint `a` plays the client with the tasks of `testkit.mobike`; `b` is the lockgate
responder under test.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from ikev2.codec import Message, Notify, encode_message
from ikev2.config import ConnectionConfig
from ikev2.constants import ExchangeType, NotifyType
from ikev2.events import ChildSaDeleted, IkeSaAddressChanged, IkeSaEstablished
from ikev2.sa import IkeSa
from ikev2.sa_types import IkeSaState
from ikev2.tasks import Exchange
from ikev2.tasks.ike_natd import natd_hash
from testkit.ikev2_pair import A_ADDR, B_ADDR, Pair, connection, mirrored
from testkit.mobike import COOKIE, OfferMobike, Update, move, offer_mobike

INFO = ExchangeType.INFORMATIONAL
NEW_A = "198.51.100.7"


def nat_mode() -> tuple[ConnectionConfig, ConnectionConfig]:
    # encap = "nat": raw ESP unless a NAT is detected, so the NAT state shows.
    conn = connection(encap="nat")
    return conn, mirrored(conn, encap="nat", remote_address=None)


def mobike_pair(*, offer: bool = True, responder_mobike: bool = True) -> tuple[Pair, OfferMobike]:
    conn_a, conn_b = nat_mode()
    pair = Pair.make(conn_a, dataclasses.replace(conn_b, mobike=responder_mobike))
    pair.a.initiate("conn", pair.clock)
    (sa_a,) = pair.a.ike_sas()
    offer_task = offer_mobike(sa_a) if offer else OfferMobike()
    pair.pump()
    assert pair.of("b", IkeSaEstablished)
    return pair, offer_task


def sas(pair: Pair) -> tuple[IkeSa, IkeSa]:
    (sa_a,) = pair.a.ike_sas()
    (sa_b,) = pair.b.ike_sas()
    return sa_a, sa_b


def move_a(pair: Pair, task: Update, address: str = NEW_A) -> None:
    """The client's address changed: its next request leaves from `address`."""
    move(sas(pair)[0], address, task, pair.clock)
    pair.pump()


def test_mobike_supported_is_answered_when_offered_and_enabled() -> None:
    pair, offer = mobike_pair()
    _, sa_b = sas(pair)
    assert offer.answered and sa_b.mobike


def test_mobike_is_not_announced_unasked_or_when_disabled() -> None:
    pair, offer = mobike_pair(offer=False)
    assert not sas(pair)[1].mobike
    pair, offer = mobike_pair(responder_mobike=False)
    assert not offer.answered and not sas(pair)[1].mobike


def test_update_sa_addresses_moves_the_ike_sa_and_echoes_cookie2() -> None:
    pair, _ = mobike_pair()
    _, sa_b = sas(pair)
    old_remote = sa_b.remote
    spis, children = (sa_b.spi_i, sa_b.spi_r), dict(sa_b.children)
    assert not sa_b.udp_encap
    update = Update()
    move_a(pair, update)
    (moved,) = pair.of("b", IkeSaAddressChanged)
    assert moved.ike_sa_id == sa_b.ike_sa_id and moved.mobike
    assert moved.old_remote == old_remote and moved.remote == (NEW_A, old_remote[1])
    assert sa_b.remote == (NEW_A, old_remote[1]) and not moved.udp_encap
    # Same IKE SA, same CHILD SAs (no rekey, nothing deleted).
    assert (sa_b.spi_i, sa_b.spi_r) == spis and sa_b.children == children
    assert not pair.of("b", ChildSaDeleted) and sa_b.state is IkeSaState.ESTABLISHED
    # The answer went to the new address, with COOKIE2 copied and our NAT-D.
    response = update.response
    assert response is not None
    assert pair.wire[-1].datagram.remote == sa_b.remote
    cookie = response.notify(NotifyType.COOKIE2)
    assert cookie is not None and cookie.data == COOKIE
    ours = response.notify(NotifyType.NAT_DETECTION_SOURCE_IP)
    assert ours is not None and ours.data == natd_hash(sa_b.spi_i, sa_b.spi_r, sa_b.local)
    # Later requests from the responder go to the new address too.
    sa_b.check_liveness(pair.clock)
    pair.pump()
    assert pair.wire[-2].sender == "b" and pair.wire[-2].datagram.remote == sa_b.remote


def test_nat_detected_in_the_update_switches_udp_encapsulation_on_and_off() -> None:
    pair, _ = mobike_pair()
    _, sa_b = sas(pair)
    # NAT-D names a private source the request did not come from: a NAT before the client.
    move_a(pair, Update(claim_source=("192.0.2.99", 4500)))
    (moved,) = pair.of("b", IkeSaAddressChanged)
    assert sa_b.nat_remote and sa_b.udp_encap and moved.udp_encap and moved.nat_remote
    assert "NAT" in moved.udp_encap_reason
    # Back on a path without a NAT: raw ESP again.
    move_a(pair, Update(), address=A_ADDR)
    last = pair.of("b", IkeSaAddressChanged)[-1]
    assert not sa_b.nat_remote and not sa_b.udp_encap and not last.udp_encap
    assert last.remote[0] == A_ADDR


def test_a_forged_update_moves_nothing() -> None:
    pair, _ = mobike_pair()
    sa_a, sa_b = sas(pair)
    before = sa_b.remote
    sa_a.local = (NEW_A, sa_a.local[1])
    sa_a.queue_exchange(Exchange(INFO, [Update()]), pair.clock)
    (datagram,) = pair.take("a")
    forged = bytearray(datagram.data)
    forged[-1] ^= 1  # the ICV no longer verifies
    pair.deliver("a", datagram._replace(data=bytes(forged)))
    pair.take("b")
    assert sa_b.remote == before and not pair.of("b", IkeSaAddressChanged)
    # An unprotected one with the right SPIs is no better.
    plain = Message(
        spi_i=sa_b.spi_i,
        spi_r=sa_b.spi_r,
        exchange_type=INFO,
        message_id=sa_b.tm.expected_request_id,
        initiator=True,
        response=False,
        payloads=(Notify(NotifyType.UPDATE_SA_ADDRESSES),),
        encrypted=False,
    )
    pair.deliver("a", datagram._replace(data=encode_message(plain)))
    assert sa_b.remote == before and not pair.of("b", IkeSaAddressChanged)
    assert sa_b.state is IkeSaState.ESTABLISHED


def test_update_without_mobike_negotiated_is_ignored_but_answered() -> None:
    pair, _ = mobike_pair(offer=False)
    _, sa_b = sas(pair)
    before = sa_b.remote
    update = Update()
    move_a(pair, update)
    assert sa_b.remote == before and not pair.of("b", IkeSaAddressChanged)
    assert update.response is not None  # answered all the same


def test_no_nats_allowed_through_a_nat_is_refused() -> None:
    pair, _ = mobike_pair()
    _, sa_b = sas(pair)
    before = sa_b.remote
    # The client names addresses other than those the request arrives with.
    claimed = (
        ipaddress.ip_address("192.0.2.99").packed
        + ipaddress.ip_address(B_ADDR).packed
        + (500).to_bytes(2, "big") * 2
    )
    update = Update(no_nats=claimed)
    move_a(pair, update)
    assert sa_b.remote == before and not pair.of("b", IkeSaAddressChanged)
    assert update.response is not None
    assert update.response.notify(NotifyType.UNEXPECTED_NAT_DETECTED) is not None
    assert sa_b.state is IkeSaState.ESTABLISHED


def test_no_nats_allowed_without_a_nat_moves_the_sa() -> None:
    pair, _ = mobike_pair()
    sa_a, sa_b = sas(pair)
    port_a, port_b = sa_a.local[1], sa_b.local[1]
    honest = (
        ipaddress.ip_address(NEW_A).packed
        + ipaddress.ip_address(B_ADDR).packed
        + port_a.to_bytes(2, "big")
        + port_b.to_bytes(2, "big")
    )
    move_a(pair, Update(no_nats=honest))
    assert sa_b.remote == (NEW_A, port_a)


def test_with_mobike_other_messages_from_a_new_address_move_nothing() -> None:
    # RFC 4555 §3.5: only UPDATE_SA_ADDRESSES moves the SA, even behind a NAT.
    pair, _ = mobike_pair()
    sa_a, sa_b = sas(pair)
    move_a(pair, Update(claim_source=("192.0.2.99", 4500)))
    assert sa_b.udp_encap
    moved = len(pair.of("b", IkeSaAddressChanged))
    sa_a.local = ("198.51.100.8", sa_a.local[1])
    sa_a.check_liveness(pair.clock)
    pair.pump()
    assert len(pair.of("b", IkeSaAddressChanged)) == moved
    assert sa_b.remote[0] == NEW_A
    # The answer still goes back where the request came from (RFC 7296 §2.11): that is
    # how strongSwan probes a new path before it sends UPDATE_SA_ADDRESSES.
    (answer,) = [s.datagram for s in pair.responses("b", INFO)][-1:]
    assert answer.remote == ("198.51.100.8", sa_a.local[1])
    assert sa_a.tm.outstanding is None


def test_nat_d_without_an_update_is_answered_and_moves_nothing() -> None:
    # RFC 4555 §3.8: how an initiator behind a NAT notices that its mapping changed.
    pair, _ = mobike_pair()
    sa_a, sa_b = sas(pair)
    before = sa_b.remote
    probe = Update(update=False)
    move_a(pair, probe)
    assert sa_b.remote == before and not pair.of("b", IkeSaAddressChanged)
    assert probe.response is not None
    ours = probe.response.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    # Our destination hash names where the probe came from, not the SA's address.
    assert ours is not None
    assert ours.data == natd_hash(sa_b.spi_i, sa_b.spi_r, (NEW_A, sa_a.local[1]))


def test_an_ike_rekey_keeps_mobike() -> None:
    pair, _ = mobike_pair()
    _, sa_b = sas(pair)
    sa_b.rekey_ike(pair.clock)
    pair.pump()
    (new_b,) = pair.b.ike_sas()
    assert new_b is not sa_b and new_b.mobike
    update = Update()
    move_a(pair, update)
    assert new_b.remote[0] == NEW_A and update.response is not None
