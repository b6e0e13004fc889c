"""Two lockgate IKE SAs in memory: establishment, failures, retransmission, Delete.

Fake clock, seeded randomness, a fake network that can drop datagrams; every test
checks what both sides report and, where the RFC fixes it, what went over the wire.
"""

from __future__ import annotations

import dataclasses

import pytest

from esp.udpencap import NON_ESP_MARKER
from ikev2.codec import KeyExchange as KePayload
from ikev2.codec import Notify, decode_header, decode_message
from ikev2.constants import DhGroup, ExchangeType, NotifyType
from ikev2.events import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaInstalled,
    DeleteCause,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from ikev2.sa_types import IkeSaState
from ikev2.ts import TrafficSelector
from testkit.ikev2_pair import (
    A_ADDR,
    A_NET,
    B_ADDR,
    B_NET,
    Pair,
    Sent,
    child,
    connection,
    deliver,
    establish,
    mirrored,
    on_wire,
)

INIT, AUTH, INFO = ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH, ExchangeType.INFORMATIONAL


def test_full_establishment_both_sides_agree() -> None:
    # encap "nat": raw ESP on port 500 between two lockgates (the default, "auto", moves
    # them to UDP: see test_two_lockgates_agree_on_esp_in_udp_by_vendor_id).
    pair = Pair.make(connection(encap="nat"))
    ia, ib = establish(pair)

    (ea,) = pair.of("a", IkeSaEstablished)
    (eb,) = pair.of("b", IkeSaEstablished)
    assert ea.initiator and not eb.initiator
    # a sent IKE_AUTH, which created the CHILD SA.
    assert ia.initiator and not ib.initiator
    assert (ea.spi_i, ea.spi_r) == (eb.spi_i, eb.spi_r)
    assert ea.suite == eb.suite == "aes256gcm16-prfsha384-x25519"
    assert (ea.local_id, ea.remote_id) == (A_ADDR, B_ADDR)
    assert (eb.local_id, eb.remote_id) == (B_ADDR, A_ADDR)
    # IKE SA first, then its CHILD SA, on each side.
    assert [type(e) for e in pair.events["a"]] == [IkeSaEstablished, ChildSaInstalled]
    assert [type(e) for e in pair.events["b"]] == [IkeSaEstablished, ChildSaInstalled]

    # The CHILD SA keys match crosswise: what one side sends with, the other receives with.
    assert (ia.spi_in, ia.spi_out) == (ib.spi_out, ib.spi_in)
    assert ia.encr_key_out == ib.encr_key_in and ia.encr_key_in == ib.encr_key_out
    assert ia.integ_key_out == ib.integ_key_in and ia.integ_key_in == ib.integ_key_out
    assert ia.encr_key_in != ia.encr_key_out
    # aes128gcm16: AES-GCM-16 (20), 128-bit key plus the 4-octet salt, no integrity.
    assert (ia.encr_id, ia.encr_key_bits, ia.integ_id, ia.esn) == (20, 128, 0, False)
    assert len(ia.encr_key_in) == 16 + 4 and ia.integ_key_in == b""
    assert ia.local_ts == ib.remote_ts == (TrafficSelector.from_network(A_NET),)
    assert ia.remote_ts == ib.local_ts == (TrafficSelector.from_network(B_NET),)
    assert not ia.udp_encap and ia.local == (A_ADDR, 500) and ia.remote == (B_ADDR, 500)
    assert 0 < ia.rekey_time < ia.lifetime == 3600.0
    # Keys never show in repr.
    assert ia.encr_key_in.hex() not in repr(ia)

    # Exactly four messages: IKE_SA_INIT and IKE_AUTH, request and response.
    assert [(s.sender, decode_header(s.ike).exchange_type) for s in pair.wire] == [
        ("a", INIT),
        ("b", INIT),
        ("a", AUTH),
        ("b", AUTH),
    ]
    for ep in (pair.a, pair.b):
        (sa,) = ep.ike_sas()
        assert sa.state is IkeSaState.ESTABLISHED
        assert ep.get_timer() is not None  # lifetimes are scheduled


def test_cbc_suite_and_two_children_proposals() -> None:
    conn = connection(
        ike_proposals=("aes256-sha256-modp2048",),
        children=(child(esp_proposals=("aes256-sha256",)),),
    )
    ia, ib = establish(Pair.make(conn))
    # AES-CBC (12) 256 with HMAC-SHA2-256-128 (12): 32-octet keys each way.
    assert (ia.encr_id, ia.encr_key_bits, ia.integ_id) == (12, 256, 12)
    assert len(ia.encr_key_in) == 32 and len(ia.integ_key_in) == 32
    assert ia.integ_key_out == ib.integ_key_in


def test_inbound_child_sa_is_reported_before_the_completing_message() -> None:
    pair = Pair.make(connection())
    pair.a.initiate("conn", 0.0)
    init = pair.a.datagrams_to_send(0.0)
    # IkeSa creation happened; no events yet on a. Drive the IKE_SA_INIT by hand.
    for d in init:
        deliver(pair.b, on_wire(d), d.remote, d.local, 0.0)
    for d in pair.b.datagrams_to_send(0.0):
        deliver(pair.a, on_wire(d), d.remote, d.local, 0.0)
    (auth_request,) = pair.a.datagrams_to_send(0.0)
    deliver(pair.b, on_wire(auth_request), auth_request.remote, auth_request.local, 0.0)
    # The responder's IKE_AUTH response is held until its ChildSaInstalled was taken.
    assert pair.b.datagrams_to_send(0.0) == []
    events = list(pair.b.events())
    assert [type(e) for e in events] == [IkeSaEstablished, ChildSaInstalled]
    (response,) = pair.b.datagrams_to_send(0.0)
    # On port 4500 (two lockgates choose ESP in UDP), a bare IKE message: the daemon
    # puts the non-ESP marker in front (tests/test_pump_offload.py).
    assert response.local == (B_ADDR, 4500)
    assert not response.data.startswith(NON_ESP_MARKER)
    assert decode_header(response.data).exchange_type == AUTH


def test_psk_mismatch_fails_on_both_sides() -> None:
    conn = connection()
    pair = Pair.make(conn, mirrored(conn, psk=b"another-psk"))
    pair.a.initiate("conn", 0.0)
    pair.pump()

    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "pre-shared key differs" in fb.reason
    (fa,) = pair.of("a", IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED
    assert "rejected our authentication" in fa.reason
    assert not pair.of("a", IkeSaEstablished) and not pair.of("b", IkeSaEstablished)
    assert pair.a.ike_sas() == [] and pair.b.ike_sas() == []
    # The responder told the initiator in its IKE_AUTH response (§2.21.2).
    (resp,) = pair.responses("b", AUTH)
    assert decode_header(resp.ike).response


def test_initiator_rejects_a_responder_with_the_wrong_identity() -> None:
    conn = connection(remote_id="gw.example.net")
    pair = Pair.make(conn, mirrored(conn))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fb,) = pair.of("b", IkeSaFailed)
    # b is configured as 198.51.100.2 but a asked for gw.example.net: no connection fits.
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "gw.example.net" in fb.reason
    assert pair.of("a", IkeSaFailed)


def test_no_ike_proposal_chosen() -> None:
    conn = connection(ike_proposals=("aes128-sha256-modp2048",))
    pair = Pair.make(conn, mirrored(conn, ike_proposals=("aes256gcm16-prfsha384-x25519",)))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert fb.reason == (
        "peer proposed only aes128-sha256-modp2048; we accept aes256gcm16-prfsha384-x25519"
    )
    (fa,) = pair.of("a", IkeSaFailed)
    assert fa.notify == NotifyType.NO_PROPOSAL_CHOSEN
    (resp,) = pair.responses("b", INIT)
    message = decode_message(resp.ike)
    assert message.payloads == (Notify(NotifyType.NO_PROPOSAL_CHOSEN),)
    assert message.spi_r == bytes(8)  # no state kept on the responder
    assert pair.a.ike_sas() == [] and pair.b.ike_sas() == []


def test_no_esp_proposal_chosen_fails_the_child_and_the_initiator_deletes() -> None:
    conn = connection(children=(child(esp_proposals=("aes256gcm16",)),))
    peer = mirrored(conn)
    peer = dataclasses.replace(
        peer, children=(dataclasses.replace(peer.children[0], esp_proposals=("aes128-sha256",)),)
    )
    pair = Pair.make(conn, peer)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    # IKE authenticated on both sides, CHILD SA refused (§1.2), IKE SA then deleted.
    assert pair.of("a", IkeSaEstablished) and pair.of("b", IkeSaEstablished)
    (ca,) = pair.of("a", ChildSaFailed)
    (cb,) = pair.of("b", ChildSaFailed)
    assert ca.notify == cb.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert cb.reason == "peer proposed only aes256gcm16; we accept aes128-sha256"
    assert not pair.of("a", ChildSaInstalled) and not pair.of("b", ChildSaInstalled)
    (da,) = pair.of("a", IkeSaDeleted)
    (db,) = pair.of("b", IkeSaDeleted)
    assert not da.by_peer and db.by_peer
    assert pair.a.ike_sas() == [] and pair.b.ike_sas() == []


def test_ts_unacceptable() -> None:
    conn = connection()
    peer = mirrored(conn)
    peer = dataclasses.replace(
        peer, children=(child(local="198.51.100.128/25", remote="192.0.2.0/24"),)
    )
    pair = Pair.make(conn, peer)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (ca,) = pair.of("a", ChildSaFailed)
    (cb,) = pair.of("b", ChildSaFailed)
    assert ca.notify == cb.notify == NotifyType.TS_UNACCEPTABLE
    assert "match no CHILD SA" in cb.reason
    assert pair.of("a", IkeSaDeleted)


def test_ts_narrowing_to_the_responders_subnet() -> None:
    # a proposes 203.0.113.0/24 as remote; b only offers its /26: a gets the /26 back.
    conn = connection(children=(child(remote="203.0.113.0/24"),))
    peer = mirrored(conn)
    peer = dataclasses.replace(peer, children=(child(local=B_NET, remote=A_NET),))
    ia, ib = establish(Pair.make(conn, peer))
    assert ia.remote_ts == ib.local_ts == (TrafficSelector.from_network(B_NET),)


def test_invalid_ke_payload_retry() -> None:
    conn = connection(
        ike_proposals=("aes256gcm16-prfsha384-x25519", "aes256gcm16-prfsha384-ecp256")
    )
    peer = mirrored(conn, ike_proposals=("aes256gcm16-prfsha384-ecp256",))
    pair = Pair.make(conn, peer)
    ia, ib = establish(pair)
    assert ia.encr_key_out == ib.encr_key_in

    first, retry = pair.requests("a", INIT)
    assert decode_message(first.ike).get(KePayload).group == DhGroup.CURVE25519  # type: ignore[union-attr]
    retried = decode_message(retry.ike)
    assert retried.message_id == 0 and retried.spi_i == decode_header(first.ike).spi_i
    assert retried.get(KePayload).group == DhGroup.ECP_256  # type: ignore[union-attr]
    invalid_ke = decode_message(pair.responses("b", INIT)[0].ike)
    # §1.2: the notify data is the group the responder wants, as two octets.
    assert invalid_ke.payloads == (Notify(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x13"),)
    (eb,) = pair.of("b", IkeSaEstablished)
    assert eb.suite == "aes256gcm16-prfsha384-ecp256"
    assert not pair.of("b", IkeSaFailed)  # asking for another group is not a failure


def test_retransmission_with_loss_and_answer_from_cache() -> None:
    pair = Pair.make(connection())
    lost: list[Sent] = []

    def drop_first_auth_response(sent: Sent) -> bool:
        header = decode_header(sent.ike)
        if sent.sender == "b" and header.exchange_type == AUTH and not lost:
            lost.append(sent)
            return True
        return False

    pair.drop = drop_first_auth_response
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("b", ChildSaInstalled) and not pair.of("a", ChildSaInstalled)
    assert pair.a.get_timer() == pytest.approx(4.0)  # first retransmission after 4 s

    pair.advance(4.0)
    first, again = pair.requests("a", AUTH)
    assert again.datagram.data == first.datagram.data  # retransmitted unchanged (§2.1)
    assert again.time == pytest.approx(4.0)
    r1, r2 = pair.responses("b", AUTH)
    assert r1.dropped and not r2.dropped
    assert r2.datagram.data == r1.datagram.data  # answered from the cache, not re-run
    assert len(pair.of("b", ChildSaInstalled)) == 1 and len(pair.of("b", IkeSaEstablished)) == 1
    ia, ib = pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0]
    assert ia.encr_key_out == ib.encr_key_in


def test_duplicate_request_is_answered_from_cache_without_new_events() -> None:
    pair = Pair.make(connection())
    establish(pair)
    (auth,) = pair.requests("a", AUTH)
    (answer,) = pair.responses("b", AUTH)
    before = list(pair.events["b"])
    d = auth.datagram
    deliver(pair.b, on_wire(d), d.remote, d.local, pair.clock)
    (again,) = pair.b.datagrams_to_send(pair.clock)
    assert again.data == answer.datagram.data
    assert list(pair.b.events()) == [] and pair.events["b"] == before


def test_give_up_after_the_retransmission_limit() -> None:
    conn = connection(retransmit_timeout=2.0, retransmit_tries=3, retransmit_base=2.0)
    pair = Pair.make(conn)
    pair.drop = lambda sent: sent.sender == "a"
    pair.a.initiate("conn", 0.0)
    pair.pump()
    pair.advance(100.0)
    sends = pair.requests("a", INIT)
    # Sent at 0, then retransmitted after 2, 4, 8 s; given up 16 s after the last.
    assert [s.time for s in sends] == [0.0, 2.0, 6.0, 14.0]
    (failed,) = pair.of("a", IkeSaFailed)
    assert "did not answer" in failed.reason and "3 retransmissions" in failed.reason
    assert pair.a.ike_sas() == [] and pair.a.get_timer() is None


def test_established_sa_gives_up_on_a_dead_peer() -> None:
    pair = Pair.make(connection(retransmit_timeout=1.0, retransmit_tries=2))
    establish(pair)
    pair.drop = lambda sent: True  # the peer is gone
    (sa,) = pair.a.ike_sas()
    pair.a.delete_child(pair.of("a", ChildSaInstalled)[0].unique_id, pair.clock)
    pair.advance(60.0)
    (deleted,) = pair.of("a", IkeSaDeleted)
    assert "did not answer" in deleted.reason and not deleted.by_peer
    assert [type(e) for e in pair.events["a"][-2:]] == [ChildSaDeleted, IkeSaDeleted]
    assert sa.state is IkeSaState.DELETED


@pytest.mark.parametrize("deleter", ["a", "b"])
def test_delete_ike_sa_both_ways(deleter: str) -> None:
    pair = Pair.make(connection())
    ia, _ = establish(pair)
    ep = pair.side(deleter)
    (sa,) = ep.ike_sas()
    ep.delete(sa.ike_sa_id, pair.clock)
    pair.pump()
    other = "b" if deleter == "a" else "a"
    for name, by_peer in ((deleter, False), (other, True)):
        child_gone, ike_gone = pair.events[name][-2:]
        assert isinstance(child_gone, ChildSaDeleted)
        assert child_gone.spi_in in (ia.spi_in, ia.spi_out)
        assert isinstance(ike_gone, IkeSaDeleted) and ike_gone.by_peer is by_peer
        cause = DeleteCause.PEER_DELETED if by_peer else DeleteCause.LOCAL
        assert ike_gone.cause is cause and child_gone.cause is DeleteCause.IKE_SA_DELETED
    assert pair.a.ike_sas() == [] and pair.b.ike_sas() == []
    (request,) = pair.requests(deleter, INFO)
    (response,) = pair.responses(other, INFO)
    # Both protected; the response to Delete(IKE) is empty (§1.4.1).
    assert decode_header(request.ike).next_payload == 46
    assert decode_header(response.ike).exchange_type == INFO


@pytest.mark.parametrize("deleter", ["a", "b"])
def test_delete_child_sa_both_ways(deleter: str) -> None:
    pair = Pair.make(connection())
    establish(pair)
    ep = pair.side(deleter)
    own = pair.of(deleter, ChildSaInstalled)[0]
    ep.delete_child(own.unique_id, pair.clock)
    pair.pump()
    (gone_a,) = pair.of("a", ChildSaDeleted)
    (gone_b,) = pair.of("b", ChildSaDeleted)
    assert (gone_a.spi_in, gone_a.spi_out) == (gone_b.spi_out, gone_b.spi_in)
    assert gone_b.reason in ("deleted by peer", "deleted by operator")
    assert gone_b.cause in (DeleteCause.PEER_DELETED, DeleteCause.LOCAL)
    assert pair.of(deleter, ChildSaDeleted)[0].cause is DeleteCause.LOCAL
    # The IKE SA lives on.
    assert not pair.of("a", IkeSaDeleted) and not pair.of("b", IkeSaDeleted)
    assert [sa.state for sa in pair.a.ike_sas()] == [IkeSaState.ESTABLISHED]


def test_forced_encapsulation_moves_to_4500_with_marker() -> None:
    conn = connection(encap="force")
    pair = Pair.make(conn)
    ia, ib = establish(pair)
    assert ia.udp_encap and ib.udp_encap
    assert ia.local == (A_ADDR, 4500) and ia.remote == (B_ADDR, 4500)
    assert ib.local == (B_ADDR, 4500) and ib.remote == (A_ADDR, 4500)
    (auth,) = pair.requests("a", AUTH)
    assert auth.datagram.local == (A_ADDR, 4500)
    # The endpoint gives the bare message; on the wire it is behind the marker.
    assert decode_header(auth.datagram.data).exchange_type == AUTH
    assert auth.payload == NON_ESP_MARKER + auth.datagram.data
    (eb,) = pair.of("b", IkeSaEstablished)
    assert eb.nat_remote and not eb.nat_local  # b believes a is behind a NAT
    (init,) = pair.requests("a", INIT)
    assert init.datagram.local == (A_ADDR, 500)
    assert not init.payload.startswith(NON_ESP_MARKER)


def test_real_nat_is_detected_and_kept_alive() -> None:
    conn = connection()
    # Behind a NAT a's address is not known in advance: b accepts it from %any.
    pair = Pair.make(conn, mirrored(conn, remote_address=None), nat=True)
    ia, ib = establish(pair)
    (ea,) = pair.of("a", IkeSaEstablished)
    (eb,) = pair.of("b", IkeSaEstablished)
    assert ea.nat_local and not ea.nat_remote
    assert eb.nat_remote and not eb.nat_local
    assert ia.udp_encap and ib.udp_encap
    # b answers the NAT's address and mapped NAT-T port.
    assert ib.remote == ("203.0.113.99", 34500)
    from ikev2.events import NatKeepaliveDue

    pair.advance(21.0)
    (keepalive,) = pair.of("a", NatKeepaliveDue)
    assert keepalive.local == (A_ADDR, 4500) and keepalive.remote == (B_ADDR, 4500)
    assert not pair.of("b", NatKeepaliveDue)  # only the side behind the NAT sends them


def test_a_moved_nat_mapping_is_followed_and_reported_once() -> None:
    from ikev2.events import IkeSaAddressChanged

    conn = connection()
    pair = Pair.make(conn, mirrored(conn, remote_address=None), nat=True)
    _, ib = establish(pair)
    assert not pair.of("a", IkeSaAddressChanged) and not pair.of("b", IkeSaAddressChanged)
    # The NAT forgets the mapping and picks another port; a's next request shows it.
    pair.nat_offset = 31000
    pair.a.ike_sas()[0].check_liveness(pair.clock)
    pair.pump()
    (moved,) = pair.of("b", IkeSaAddressChanged)
    assert moved.ike_sa_id == ib.ike_sa_id and moved.connection == "conn"
    assert moved.old_remote == ("203.0.113.99", 34500)
    assert moved.remote == ("203.0.113.99", 35500)
    assert moved.old_local == moved.local == (B_ADDR, 4500)
    assert pair.b.ike_sas()[0].remote == moved.remote
    # The answer reached a through the new mapping, and nothing moves again.
    assert pair.a.ike_sas()[0].tm.outstanding is None
    pair.a.ike_sas()[0].check_liveness(pair.clock)
    pair.pump()
    assert len(pair.of("b", IkeSaAddressChanged)) == 1
    assert not pair.of("a", IkeSaAddressChanged)


def test_liveness_check_and_unhandled_notify_get_empty_responses() -> None:
    from ikev2.tasks import Exchange, NotifyOnly

    pair = Pair.make(connection())
    establish(pair)
    (sb,) = pair.b.ike_sas()
    # Like strongSwan's MOBIKE update right after IKE_AUTH, then an empty liveness check.
    mobike = Notify(NotifyType.ADDITIONAL_IP4_ADDRESS, b"\xcb\x00q\x01")
    sb.queue_exchange(Exchange(INFO, [NotifyOnly(mobike)]), pair.clock)
    sb.check_liveness(pair.clock)
    pair.pump()
    responses = pair.responses("a", INFO)
    assert len(responses) == 2
    (sa_a,) = pair.a.ike_sas()
    for resp in responses:
        opened = sb.sk.inbound.open(resp.ike)  # type: ignore[union-attr]
        assert opened.payloads == ()
    assert sa_a.state is IkeSaState.ESTABLISHED and sb.state is IkeSaState.ESTABLISHED
    assert sb.tm.outstanding is None and sb.tm.next_request_id == 2


def test_garbage_and_forged_messages_change_nothing() -> None:
    pair = Pair.make(connection())
    pair.a.initiate("conn", 0.0)
    (init,) = pair.a.datagrams_to_send(0.0)
    deliver(pair.b, on_wire(init), init.remote, init.local, 0.0)
    (init_resp,) = pair.b.datagrams_to_send(0.0)
    deliver(pair.a, on_wire(init_resp), init_resp.remote, init_resp.local, 0.0)
    (auth,) = pair.a.datagrams_to_send(0.0)
    wire = on_wire(auth)
    # Random bytes, a truncated message and a bit-flipped IKE_AUTH are all dropped.
    for bad in (
        b"\x01\x02",
        b"\xff" * 40,
        wire[:-5],
        wire[:-1] + bytes([wire[-1] ^ 1]),
    ):
        deliver(pair.b, bad, auth.remote, auth.local, 0.0)
    assert pair.b.datagrams_to_send(0.0) == [] and list(pair.b.events()) == []
    (sb,) = pair.b.ike_sas()
    assert sb.state is IkeSaState.HALF_OPEN and sb.tm.expected_request_id == 1
    # The genuine request still works afterwards.
    deliver(pair.b, wire, auth.remote, auth.local, 0.0)
    assert [type(e) for e in pair.b.events()] == [IkeSaEstablished, ChildSaInstalled]


def test_half_open_responder_sa_expires() -> None:
    pair = Pair.make(connection())
    pair.drop = lambda sent: sent.sender == "a" and decode_header(sent.ike).exchange_type == AUTH
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert len(pair.b.ike_sas()) == 1
    pair.advance(31.0)
    assert pair.b.ike_sas() == []
    (failed,) = pair.of("b", IkeSaFailed)
    assert "did not complete IKE_AUTH" in failed.reason


def test_child_lifetime_expiry_deletes_the_child() -> None:
    # No rekey margin: the lifetime ends before anyone rekeys.
    conn = connection(children=(child(lifetime=100.0, rekey_margin=0.0),))
    peer = mirrored(conn)
    peer = dataclasses.replace(
        peer, children=(dataclasses.replace(peer.children[0], lifetime=1000.0),)
    )
    pair = Pair.make(conn, peer)
    establish(pair)
    pair.advance(99.0)
    assert not pair.of("a", ChildSaDeleted)
    pair.advance(2.0)
    (gone_a,) = pair.of("a", ChildSaDeleted)
    (gone_b,) = pair.of("b", ChildSaDeleted)
    assert (gone_a.reason, gone_b.reason) == ("lifetime expired", "deleted by peer")
    assert (gone_a.cause, gone_b.cause) == (DeleteCause.EXPIRED, DeleteCause.PEER_DELETED)


def test_crossing_child_deletes_remove_each_pair_once() -> None:
    conn = connection(children=(child(lifetime=100.0, rekey_margin=0.0),))
    pair = Pair.make(conn)
    establish(pair)
    pair.advance(101.0)  # both ends expire the CHILD SA at the same moment (§1.4.1)
    assert len(pair.of("a", ChildSaDeleted)) == 1 and len(pair.of("b", ChildSaDeleted)) == 1
    assert [sa.state for sa in pair.a.ike_sas()] == [IkeSaState.ESTABLISHED]


def test_responder_picks_the_connection_by_identity() -> None:
    from ikev2.config import Identity
    from ikev2.crypto.rng import DeterministicRandom
    from ikev2.endpoint import Endpoint

    conn_a = connection(local=A_ADDR, remote=B_ADDR)
    # b has two %any connections; only the second accepts a's identity.
    other = dataclasses.replace(
        mirrored(conn_a), name="other", remote_address=None, remote_id=Identity.parse("x.example")
    )
    right = dataclasses.replace(mirrored(conn_a), name="right", remote_address=None)
    b = Endpoint([other, right], rng=DeterministicRandom(b"b"))
    pair = Pair(Endpoint([conn_a], rng=DeterministicRandom(b"a")), b)
    establish(pair)
    (eb,) = pair.of("b", IkeSaEstablished)
    assert eb.connection == "right"


def test_crossing_ike_deletes_end_both_sides_once() -> None:
    pair = Pair.make(connection())
    establish(pair)
    for ep in (pair.a, pair.b):
        (sa,) = ep.ike_sas()
        ep.delete(sa.ike_sa_id, pair.clock)
    pair.pump()
    pair.advance(120.0)
    for name in ("a", "b"):
        assert len(pair.of(name, IkeSaDeleted)) == 1
        assert len(pair.of(name, ChildSaDeleted)) == 1
    assert pair.a.ike_sas() == [] and pair.b.ike_sas() == []


def test_ipv6_outside_and_inside() -> None:
    conn = connection(
        local="2001:db8:100::1",
        remote="2001:db8:100::2",
        children=(child(local="2001:db8:a::/64", remote="2001:db8:b::/64"),),
    )
    ia, ib = establish(Pair.make(conn))
    # Two lockgates with encap "auto": ESP in UDP, IKE on port 4500.
    assert ia.local == ("2001:db8:100::1", 4500) and ib.remote == ("2001:db8:100::1", 4500)
    assert ia.udp_encap and ib.udp_encap
    assert ia.remote_ts == (TrafficSelector.from_network("2001:db8:b::/64"),)
    assert ia.encr_key_out == ib.encr_key_in


def test_a_malformed_ike_rekey_is_refused_without_harm() -> None:
    # An IKE rekey request without KE (§1.3.2 requires one) is answered INVALID_SYNTAX.
    from ikev2.codec import Nonce, Payload
    from ikev2.proposals import parse_ike_proposal, sa_payload
    from ikev2.tasks import Exchange, Task

    class AskForIkeRekeyWithoutKe(Task):
        def build_request(self, sa: object, out: list[Payload]) -> None:
            proposal = parse_ike_proposal("aes256gcm16-prfsha384-x25519")
            out += [sa_payload([proposal], b"\x01" * 8), Nonce(b"n" * 32)]

    pair = Pair.make(connection())
    establish(pair)
    (sb,) = pair.b.ike_sas()
    sb.queue_exchange(
        Exchange(ExchangeType.CREATE_CHILD_SA, [AskForIkeRekeyWithoutKe()]), pair.clock
    )
    pair.pump()
    (answer,) = pair.responses("a", ExchangeType.CREATE_CHILD_SA)
    opened = sb.sk.inbound.open(answer.ike)  # type: ignore[union-attr]
    assert opened.payloads == (Notify(NotifyType.INVALID_SYNTAX),)
    (sa,) = pair.a.ike_sas()
    assert sa.state is IkeSaState.ESTABLISHED and len(sa.children) == 1
    assert not pair.of("a", IkeSaDeleted) and not pair.of("a", IkeSaFailed)


def test_initial_contact_replaces_the_stale_ike_sa_of_a_restarted_peer() -> None:
    from ikev2.crypto.rng import DeterministicRandom
    from ikev2.endpoint import Endpoint

    conn = connection()
    pair = Pair.make(conn)
    _, old_b = establish(pair)
    # a restarts: a new endpoint, no memory of the old SAs, initiates again.
    pair.a = Endpoint([conn], rng=DeterministicRandom(b"side-a-rebooted"))
    pair.events["b"].clear()
    pair.a.initiate("conn", pair.clock)
    pair.pump()
    kinds = [type(e) for e in pair.events["b"]]
    # The stale pair is reported gone before the new one is installed.
    assert kinds == [ChildSaDeleted, IkeSaDeleted, IkeSaEstablished, ChildSaInstalled]
    gone = pair.events["b"][0]
    assert isinstance(gone, ChildSaDeleted) and gone.spi_in == old_b.spi_in
    assert gone.cause is DeleteCause.IKE_SA_DELETED
    deleted = pair.events["b"][1]
    assert isinstance(deleted, IkeSaDeleted) and "INITIAL_CONTACT" in deleted.reason
    assert deleted.cause is DeleteCause.PEER_RESTARTED
    assert len(pair.b.ike_sas()) == 1


@pytest.mark.parametrize(
    ("id_a", "id_b"),
    [
        ("gwa.example.net", "gwb.example.net"),
        ("admin@a.example.net", "admin@b.example.net"),
        ("C=CH, O=Example, CN=gwa.example.net", "C=CH, O=Example, CN=gwb.example.net"),
        ("2001:db8:100::1", "2001:db8:100::2"),
    ],
)
def test_identities_of_every_kind(id_a: str, id_b: str) -> None:
    from ikev2.config import Identity

    conn = dataclasses.replace(
        connection(), local_id=Identity.parse(id_a), remote_id=Identity.parse(id_b)
    )
    peer = dataclasses.replace(
        mirrored(conn), local_id=Identity.parse(id_b), remote_id=Identity.parse(id_a)
    )
    pair = Pair.make(conn, peer)
    establish(pair)
    (ea,) = pair.of("a", IkeSaEstablished)
    (eb,) = pair.of("b", IkeSaEstablished)
    assert (ea.local_id, ea.remote_id) == (id_a, id_b)
    assert (eb.local_id, eb.remote_id) == (id_b, id_a)


def test_unknown_critical_payload_in_an_authenticated_request_is_answered() -> None:
    # RFC 7296 §2.5: the request is rejected with UNSUPPORTED_CRITICAL_PAYLOAD, whose
    # data is the one-octet payload type; the IKE SA stays as it was.
    from ikev2.codec import Payload, UnknownPayload
    from ikev2.tasks import Exchange, Task

    class SendUnknownCritical(Task):
        def build_request(self, sa: object, out: list[Payload]) -> None:
            out.append(UnknownPayload(200, b"future", critical=True))

    pair = Pair.make(connection())
    establish(pair)
    (sb,) = pair.b.ike_sas()
    sb.queue_exchange(Exchange(INFO, [SendUnknownCritical()]), pair.clock)
    pair.pump()
    (answer,) = pair.responses("a", INFO)
    opened = sb.sk.inbound.open(answer.ike)  # type: ignore[union-attr]
    assert opened.payloads == (Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([200])),)
    assert sb.tm.outstanding is None  # b's request was answered
    (sa,) = pair.a.ike_sas()
    assert sa.state is IkeSaState.ESTABLISHED and len(sa.children) == 1
    assert not pair.of("a", IkeSaDeleted) and not pair.of("b", IkeSaDeleted)
    # The same bytes with a broken ICV come from nobody we know: no answer at all.
    (request,) = pair.requests("b", INFO)
    forged = request.ike[:-1] + bytes([request.ike[-1] ^ 1])
    header = decode_header(forged)
    sa.receive_message(forged, header, (A_ADDR, 500), (B_ADDR, 500), pair.clock)
    assert sa.datagrams_to_send(pair.clock) == []


def test_unknown_critical_payload_in_ike_sa_init_is_answered_without_state() -> None:
    from ikev2.codec import Message, UnknownPayload, encode_message
    from ikev2.sa_types import Datagram

    pair = Pair.make(connection())
    pair.a.initiate("conn", 0.0)
    (init,) = pair.a.datagrams_to_send(0.0)
    message = decode_message(init.data)
    bad = Message(
        spi_i=message.spi_i,
        spi_r=message.spi_r,
        exchange_type=INIT,
        message_id=0,
        initiator=True,
        response=False,
        payloads=(*message.payloads, UnknownPayload(201, b"x", critical=True)),
        encrypted=False,
    )
    pair.wire.append(Sent("a", Datagram(encode_message(bad), init.local, init.remote), False, 0))
    deliver(pair.b, encode_message(bad), init.remote, init.local, 0.0)
    (answer,) = pair.b.datagrams_to_send(0.0)
    reply = decode_message(answer.data)
    assert reply.response and reply.spi_r == bytes(8)
    assert reply.payloads == (Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([201])),)
    assert pair.b.ike_sas() == [] and list(pair.b.events()) == []


def test_ike_sa_hard_expiry_deletes_it_with_its_child_sas() -> None:
    # No rekey margin: rekeying is due exactly when the SA expires, and expiry wins.
    conn = connection(ike_lifetime=100.0, rekey_margin=0.0)
    pair = Pair.make(conn, mirrored(conn, ike_lifetime=1000.0, rekey_margin=0.0))
    establish(pair)
    pair.advance(99.0)
    assert not pair.of("a", IkeSaDeleted)
    pair.advance(2.0)
    (da,) = pair.of("a", IkeSaDeleted)
    (db,) = pair.of("b", IkeSaDeleted)
    assert da.reason == "IKE SA lifetime expired" and not da.by_peer
    assert db.by_peer
    assert (da.cause, db.cause) == (DeleteCause.EXPIRED, DeleteCause.PEER_DELETED)
    assert len(pair.of("a", ChildSaDeleted)) == 1 and len(pair.of("b", ChildSaDeleted)) == 1
    assert pair.a.ike_sas() == [] and pair.b.ike_sas() == []
    delete = pair.requests("a", INFO)[-1]  # after the liveness checks
    assert delete.time == pytest.approx(100.0)


def test_ike_and_child_rekey_times_are_randomised_below_the_margin() -> None:
    # strongSwan's rule: rekey up to a third of the margin before lifetime - margin.
    conn = connection(
        ike_lifetime=3600.0, rekey_margin=300.0, children=(child(lifetime=1200, rekey_margin=120),)
    )
    times = []
    for seed in (b"1", b"2", b"3"):
        pair = Pair.make(conn, seeds=(seed, b"peer"))
        ia, _ = establish(pair)
        (sa,) = pair.a.ike_sas()
        assert sa.ike_rekey_at is not None
        assert 3600 - 400 <= sa.ike_rekey_at <= 3600 - 300
        assert 1200 - 160 <= ia.rekey_time <= 1200 - 120
        times.append((sa.ike_rekey_at, ia.rekey_time))
    assert len(set(times)) == 3


def test_initial_contact_only_when_we_hold_no_other_ike_sa_with_the_peer() -> None:
    pair = Pair.make(connection())
    establish(pair)
    pair.a.initiate("conn", pair.clock)  # a second IKE SA for the same connection
    pair.pump()
    first, second = pair.requests("a", AUTH)
    sa_b = {sa.ike_sa_id: sa for sa in pair.b.ike_sas()}
    assert len(sa_b) == 2 and len(pair.a.ike_sas()) == 2
    opened = []
    for request in (first, second):
        header = decode_header(request.ike)
        (sa,) = [s for s in sa_b.values() if s.spi_i == header.spi_i]
        assert sa.sk is not None
        opened.append(sa.sk.inbound.open(request.ike))
    assert opened[0].notify(NotifyType.INITIAL_CONTACT) is not None
    assert opened[1].notify(NotifyType.INITIAL_CONTACT) is None
    assert not pair.of("b", IkeSaDeleted)  # b kept the first IKE SA


def test_child_hard_expiry_stops_the_child_at_once_even_if_the_peer_is_silent() -> None:
    conn = connection(children=(child(lifetime=100.0, rekey_margin=0.0),), dpd_interval=0.0)
    pair = Pair.make(conn, mirrored(conn, dpd_interval=0.0))
    ia, _ = establish(pair)
    pair.drop = lambda sent: sent.sender == "b"  # the peer no longer answers
    pair.advance(100.5)
    (gone,) = pair.of("a", ChildSaDeleted)
    assert gone.unique_id == ia.unique_id and gone.reason == "lifetime expired"
    assert gone.cause is DeleteCause.EXPIRED
    # The Delete still went out (and is retransmitted), after the event.
    delete = pair.requests("a", INFO)[0]
    assert delete.time == pytest.approx(100.0)
    kinds = [type(e) for e in pair.events["a"]]
    assert kinds[-1] is ChildSaDeleted and pair.a.ike_sas()[0].children == {}
