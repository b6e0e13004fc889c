"""CREATE_CHILD_SA in memory: CHILD SA rekeying (with and without PFS), collisions,
additional CHILD SAs (RFC 7296 §1.3, §2.8, §2.8.1, §2.17)."""

from __future__ import annotations

import dataclasses

import pytest

from ikev2.codec import KeyExchange as KePayload
from ikev2.codec import Notify
from ikev2.config import ConnectionConfig
from ikev2.constants import ExchangeType, NotifyType, ProtocolId
from ikev2.events import ChildSaDeleted, ChildSaFailed, ChildSaInstalled, DeleteCause
from ikev2.ts import TrafficSelector
from testkit.ikev2_pair import Pair, child, connection, mirrored

CREATE = ExchangeType.CREATE_CHILD_SA


def up(conn: ConnectionConfig, peer: ConnectionConfig | None = None) -> Pair:
    pair = Pair.make(conn, peer)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("a", ChildSaInstalled) and pair.of("b", ChildSaInstalled)
    return pair


def with_esp(conn: ConnectionConfig, *esp: str) -> ConnectionConfig:
    return dataclasses.replace(
        conn, children=(dataclasses.replace(conn.children[0], esp_proposals=esp),)
    )


def check_crosswise(x: ChildSaInstalled, y: ChildSaInstalled) -> None:
    assert (x.spi_in, x.spi_out) == (y.spi_out, y.spi_in)
    assert x.encr_key_in == y.encr_key_out and x.encr_key_out == y.encr_key_in
    assert x.integ_key_in == y.integ_key_out and x.integ_key_out == y.integ_key_in


@pytest.mark.parametrize("rekeyer", ["a", "b"])
def test_rekey_make_before_break(rekeyer: str) -> None:
    pair = up(connection())
    old_a, old_b = pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0]
    own = old_a if rekeyer == "a" else old_b
    (sa,) = pair.side(rekeyer).ike_sas()
    sa.rekey_child(own.unique_id, pair.clock)
    pair.pump()

    new_a, new_b = pair.of("a", ChildSaInstalled)[1], pair.of("b", ChildSaInstalled)[1]
    check_crosswise(new_a, new_b)
    assert new_a.rekey_of == old_a.unique_id and new_b.rekey_of == old_b.unique_id
    # Whoever sent the CREATE_CHILD_SA request is the new SA's initiator (the daemon
    # switches outbound first on that side).
    assert new_a.initiator is (rekeyer == "a") and new_b.initiator is (rekeyer == "b")
    assert new_a.encr_key_in not in (old_a.encr_key_in, old_a.encr_key_out)
    assert new_a.local_ts == old_a.local_ts and new_a.remote_ts == old_a.remote_ts
    # The new SA is installed on both sides before the old one is removed.
    for name, old in (("a", old_a), ("b", old_b)):
        kinds = [type(e).__name__ for e in pair.events[name]]
        assert kinds[-2:] == ["ChildSaInstalled", "ChildSaDeleted"]
        (gone,) = pair.of(name, ChildSaDeleted)
        assert gone.unique_id == old.unique_id
    (gone,) = pair.of(rekeyer, ChildSaDeleted)
    assert gone.reason == "rekeyed" and gone.cause is DeleteCause.REKEYED
    # The exchange carried N(REKEY_SA) with the old SA's SPI as the peer knows it.
    (request,) = pair.requests(rekeyer, CREATE)
    opened = pair.side("b" if rekeyer == "a" else "a").ike_sas()[0]
    message = opened.sk.inbound.open(request.ike)  # type: ignore[union-attr]
    rekey = message.notify(NotifyType.REKEY_SA)
    assert rekey is not None and rekey.protocol == ProtocolId.ESP
    assert rekey.spi == own.spi_in.to_bytes(4, "big")
    assert message.get(KePayload) is None  # no PFS configured
    for ep in (pair.a, pair.b):
        assert len(ep.ike_sas()[0].children) == 1


def test_rekey_with_pfs_and_an_invalid_ke_retry() -> None:
    conn = with_esp(connection(), "aes128gcm16-x25519", "aes128gcm16-ecp256")
    peer = with_esp(mirrored(conn), "aes128gcm16-ecp256")
    pair = up(conn, peer)
    old = pair.of("a", ChildSaInstalled)[0]
    (sa,) = pair.a.ike_sas()
    sa.rekey_child(old.unique_id, pair.clock)
    pair.pump()
    first, retry = pair.requests("a", CREATE)
    sb = pair.b.ike_sas()[0]
    assert sb.sk is not None
    assert sb.sk.inbound.open(first.ike).get(KePayload).group == 31  # type: ignore[union-attr]
    assert sb.sk.inbound.open(retry.ike).get(KePayload).group == 19  # type: ignore[union-attr]
    answer = sa.sk.inbound.open(pair.responses("b", CREATE)[0].ike)  # type: ignore[union-attr]
    assert answer.payloads == (Notify(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x13"),)
    new_a, new_b = pair.of("a", ChildSaInstalled)[1], pair.of("b", ChildSaInstalled)[1]
    check_crosswise(new_a, new_b)
    assert new_a.rekey_of == old.unique_id
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)


def test_rekey_happens_on_its_own_before_the_lifetime_ends() -> None:
    conn = connection(children=(child(lifetime=600.0, rekey_margin=60.0),))
    pair = up(conn)
    pair.advance(560.0)
    installed = pair.of("a", ChildSaInstalled)
    assert len(installed) == 2 and installed[1].rekey_of == installed[0].unique_id
    pair.advance(600.0)  # and again for the new one, never a gap
    assert len(pair.of("a", ChildSaInstalled)) == 3
    assert len(pair.a.ike_sas()[0].children) == 1 and len(pair.b.ike_sas()[0].children) == 1
    assert all(g.reason in ("rekeyed", "deleted by peer") for g in pair.of("a", ChildSaDeleted))


def test_simultaneous_rekeys_leave_one_new_child_sa() -> None:
    pair = up(connection())
    old_a, old_b = pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0]
    pair.a.ike_sas()[0].rekey_child(old_a.unique_id, pair.clock)
    pair.b.ike_sas()[0].rekey_child(old_b.unique_id, pair.clock)
    pair.pump()
    # §2.8.1: two new pairs were made; the one with the lowest nonce was deleted again.
    assert len(pair.of("a", ChildSaInstalled)) == 3 and len(pair.of("b", ChildSaInstalled)) == 3
    (ca,) = pair.a.ike_sas()[0].children.values()
    (cb,) = pair.b.ike_sas()[0].children.values()
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert ca.unique_id != old_a.unique_id and cb.unique_id != old_b.unique_id
    assert len(pair.of("a", ChildSaDeleted)) == 2 and len(pair.of("b", ChildSaDeleted)) == 2


def test_additional_child_sas_follow_ike_auth() -> None:
    second = child(name="v6", local="2001:db8:a::/64", remote="2001:db8:b::/64")
    conn = connection(children=(child(), second))
    pair = up(conn)
    installed_a = pair.of("a", ChildSaInstalled)
    installed_b = pair.of("b", ChildSaInstalled)
    assert [e.child for e in installed_a] == ["net", "v6"]
    assert [e.child for e in installed_b] == ["net", "v6"]
    check_crosswise(installed_a[1], installed_b[1])
    assert installed_a[1].remote_ts == (TrafficSelector.from_network("2001:db8:b::/64"),)
    assert len(pair.requests("a", CREATE)) == 1


def test_deleting_a_child_sa_during_its_rekey_deletes_the_new_one_too() -> None:
    # The operator's `down` while our rekey of the SA is outstanding: the rekey's
    # answer still makes a new pair, which must go with the old one.
    pair = up(connection())
    old_a, old_b = pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0]
    (sa,) = pair.a.ike_sas()
    sa.rekey_child(old_a.unique_id, pair.clock)
    assert sa.tm.outstanding is not None  # the CREATE_CHILD_SA is on its way
    sa.delete_child(old_a.unique_id, pair.clock)
    pair.pump()
    new_a = pair.of("a", ChildSaInstalled)[1]
    new_b = pair.of("b", ChildSaInstalled)[1]
    assert new_a.rekey_of == old_a.unique_id and new_b.rekey_of == old_b.unique_id
    assert not sa.children and not pair.b.ike_sas()[0].children
    gone_a = {e.unique_id: e.reason for e in pair.of("a", ChildSaDeleted)}
    operator = "deleted by operator"
    assert gone_a == {old_a.unique_id: operator, new_a.unique_id: operator}
    assert {e.unique_id for e in pair.of("b", ChildSaDeleted)} == {
        old_b.unique_id,
        new_b.unique_id,
    }
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)


def test_a_queued_rekey_of_a_deleted_child_sa_is_never_sent() -> None:
    second = child(name="v6", local="2001:db8:a::/64", remote="2001:db8:b::/64")
    pair = up(connection(children=(child(), second)))
    net, v6 = pair.of("a", ChildSaInstalled)[:2]
    (sa,) = pair.a.ike_sas()
    sa.rekey_child(net.unique_id, pair.clock)  # outstanding
    sa.rekey_child(v6.unique_id, pair.clock)  # queued behind it
    sa.delete_child(v6.unique_id, pair.clock)
    assert not sa.children[v6.unique_id].rekeying
    pair.pump()
    # One CREATE_CHILD_SA of IKE_AUTH's follow-up, one rekey: none for v6.
    assert len(pair.requests("a", CREATE)) == 2
    (remaining,) = sa.children.values()
    assert remaining.config.name == "net" and remaining.unique_id != net.unique_id
    assert [e.unique_id for e in pair.of("a", ChildSaDeleted)] == [v6.unique_id, net.unique_id]
    assert len(pair.b.ike_sas()[0].children) == 1


def test_rekey_of_an_unknown_child_sa_is_refused() -> None:
    pair = up(connection())
    (sa,) = pair.a.ike_sas()
    (own,) = sa.children.values()
    sb = pair.b.ike_sas()[0]
    (peer_child,) = sb.children.values()
    # b forgets the pair (as if it had deleted it) and a asks to rekey it.
    del sb.children[peer_child.unique_id]
    sa.rekey_child(own.unique_id, pair.clock)
    pair.pump()
    (failed,) = pair.of("a", ChildSaFailed)
    assert failed.notify == NotifyType.CHILD_SA_NOT_FOUND
    assert not own.rekeying and own.unique_id in sa.children


def test_liveness_checks_after_silence_and_a_dead_peer() -> None:
    conn = connection(dpd_interval=10.0, retransmit_timeout=1.0, retransmit_tries=2)
    pair = up(conn, mirrored(conn, dpd_interval=0.0))
    pair.advance(9.0)
    assert pair.requests("a", ExchangeType.INFORMATIONAL) == []
    pair.advance(2.0)  # 10 s of silence: one empty INFORMATIONAL, answered
    (check,) = pair.requests("a", ExchangeType.INFORMATIONAL)
    assert check.time == pytest.approx(10.0)
    assert pair.a.ike_sas()[0].tm.outstanding is None
    # Other signs of life (ESP, reported by the daemon) postpone the next check.
    (sa,) = pair.a.ike_sas()
    pair.a.heard_from_peer(sa.ike_sa_id, 18.0)
    pair.advance(15.0)  # now 26: next check due at 28
    assert len(pair.requests("a", ExchangeType.INFORMATIONAL)) == 1
    # The peer dies: the next check goes unanswered and the IKE SA ends.
    pair.drop = lambda sent: sent.sender == "b"
    pair.advance(60.0)
    from ikev2.events import IkeSaDeleted

    (dead,) = pair.of("a", IkeSaDeleted)
    assert dead.reason.startswith("peer is dead") and not dead.by_peer
    assert dead.cause is DeleteCause.DEAD_PEER
    assert pair.a.ike_sas() == []


@pytest.mark.parametrize("rekeyer", ["a", "b"])
def test_ike_sa_rekey_moves_the_child_sas(rekeyer: str) -> None:
    from ikev2.events import IkeSaDeleted, IkeSaRekeyed
    from ikev2.sa_types import IkeSaState

    pair = up(connection())
    old_a, old_b = pair.a.ike_sas()[0], pair.b.ike_sas()[0]
    child_a = pair.of("a", ChildSaInstalled)[0]
    old = old_a if rekeyer == "a" else old_b
    pair.side(rekeyer).rekey_ike_sa(old.ike_sa_id, pair.clock)
    pair.pump()

    (ra,) = pair.of("a", IkeSaRekeyed)
    (rb,) = pair.of("b", IkeSaRekeyed)
    assert (ra.ike_sa_id, rb.ike_sa_id) == (old_a.ike_sa_id, old_b.ike_sa_id)
    assert (ra.spi_i, ra.spi_r) == (rb.spi_i, rb.spi_r)
    assert ra.spi_i != int.from_bytes(old_a.spi_i, "big")
    (new_a,) = pair.a.ike_sas()
    (new_b,) = pair.b.ike_sas()
    assert new_a.ike_sa_id == ra.new_ike_sa_id and new_b.ike_sa_id == rb.new_ike_sa_id
    # §2.18: whoever asked is the new IKE SA's initiator; Message IDs start again.
    assert new_a.initiator is (rekeyer == "a") and new_b.initiator is (rekeyer == "b")
    assert new_a.state is IkeSaState.ESTABLISHED and new_a.tm.next_request_id == 0
    assert old_a.state is IkeSaState.DELETED and old_b.state is IkeSaState.DELETED
    assert list(new_a.children) == [child_a.unique_id]
    assert not pair.of("a", IkeSaDeleted) and not pair.of("b", IkeSaDeleted)
    assert not pair.of("a", ChildSaDeleted) and not pair.of("b", ChildSaDeleted)

    # The new IKE SA works: a liveness check and then a CHILD SA delete go through it.
    new_a.check_liveness(pair.clock)
    pair.pump()
    assert new_a.tm.next_request_id == 1 and new_a.tm.outstanding is None
    pair.a.delete_child(child_a.unique_id, pair.clock)
    pair.pump()
    (gone,) = pair.of("b", ChildSaDeleted)
    assert gone.ike_sa_id == new_b.ike_sa_id


def test_ike_sa_rekeys_on_its_own_before_its_lifetime_ends() -> None:
    from ikev2.events import IkeSaDeleted, IkeSaRekeyed

    conn = connection(ike_lifetime=600.0, rekey_margin=60.0)
    pair = up(conn, mirrored(conn, ike_lifetime=1200.0, rekey_margin=60.0))
    pair.advance(1150.0)
    # Rekeyed at 520..540 s, and the new one 520..540 s after that; never expired.
    assert len(pair.of("a", IkeSaRekeyed)) == 2
    assert not pair.of("a", IkeSaDeleted) and not pair.of("b", IkeSaDeleted)
    assert len(pair.a.ike_sas()) == 1 and len(pair.b.ike_sas()) == 1
    assert len(pair.a.ike_sas()[0].children) == 1


def test_fragmented_ike_auth_with_a_lost_fragment() -> None:
    from ikev2.codec import decode_header

    conn = connection(fragment_size=200, retransmit_timeout=2.0)
    pair = Pair.make(conn)
    lost: list[int] = []

    def lose_second_fragment(sent: object) -> bool:
        data = sent.ike  # type: ignore[attr-defined]
        header = decode_header(data)
        skf = header.exchange_type == ExchangeType.IKE_AUTH and data[16] == 53
        # Fragment Number follows the SKF generic header (RFC 7383 §2.5).
        if skf and not lost and int.from_bytes(data[32:34], "big") == 2:
            lost.append(1)
            return True
        return False

    pair.drop = lose_second_fragment
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert not pair.of("b", ChildSaInstalled)  # one fragment missing: nothing yet
    pair.advance(2.5)  # the whole request is retransmitted
    ia, ib = pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0]
    check_crosswise(ia, ib)
    requests = pair.requests("a", ExchangeType.IKE_AUTH)
    assert len(requests) >= 4 and all(len(s.ike) <= 200 for s in requests)
    assert all(s.ike[16] == 53 for s in requests)  # every part is an SKF message
    assert lost


def test_no_fragments_unless_both_sides_support_them() -> None:
    conn = connection(fragment_size=200)
    pair = Pair.make(conn, mirrored(conn, fragmentation=False))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("a", ChildSaInstalled)
    (auth,) = pair.requests("a", ExchangeType.IKE_AUTH)
    assert len(auth.ike) > 200 and auth.ike[16] == 46  # one SK message


def test_byte_and_packet_limits_rekey_then_delete() -> None:
    pair = up(connection())
    first = pair.of("a", ChildSaInstalled)[0]
    pair.a.child_limit_reached(first.unique_id, pair.clock, hard=False)
    pair.pump()
    second = pair.of("a", ChildSaInstalled)[1]
    assert second.rekey_of == first.unique_id
    pair.a.child_limit_reached(second.unique_id, pair.clock, hard=True)
    pair.pump()
    gone = pair.of("a", ChildSaDeleted)[-1]
    assert gone.unique_id == second.unique_id and gone.reason == "byte or packet limit reached"
    assert gone.cause is DeleteCause.LIMIT_REACHED
    assert pair.b.ike_sas()[0].children == {}


def test_esn_is_negotiated_and_handed_over() -> None:
    conn = with_esp(connection(), "aes128gcm16-esn")
    both = up(conn)
    ia, ib = both.of("a", ChildSaInstalled)[0], both.of("b", ChildSaInstalled)[0]
    assert ia.esn and ib.esn
    # One side insists on ESN, the other refuses it: no common proposal.
    pair = Pair.make(conn, with_esp(mirrored(conn), "aes128gcm16-noesn"))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("b", ChildSaFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_lost_rekey_response_is_recovered_without_a_second_child_sa() -> None:
    pair = up(connection(retransmit_timeout=1.0))
    old = pair.of("a", ChildSaInstalled)[0]
    dropped: list[bool] = []

    def drop_first_create_response(sent: object) -> bool:
        from ikev2.codec import decode_header

        header = decode_header(sent.ike)  # type: ignore[attr-defined]
        if header.exchange_type == CREATE and header.response and not dropped:
            dropped.append(True)
            return True
        return False

    pair.drop = drop_first_create_response
    pair.a.ike_sas()[0].rekey_child(old.unique_id, pair.clock)
    pair.pump()
    assert len(pair.of("b", ChildSaInstalled)) == 2 and len(pair.of("a", ChildSaInstalled)) == 1
    pair.advance(1.5)  # a retransmits; b answers from its cache, installs nothing more
    assert len(pair.of("b", ChildSaInstalled)) == 2 and len(pair.of("a", ChildSaInstalled)) == 2
    check_crosswise(pair.of("a", ChildSaInstalled)[1], pair.of("b", ChildSaInstalled)[1])
    assert len(pair.a.ike_sas()[0].children) == 1 and len(pair.b.ike_sas()[0].children) == 1


def test_fragments_both_ways_and_a_lost_response_fragment() -> None:
    # RFC 7383: both sides fragment their IKE_AUTH message; a lost fragment of the
    # response makes a retransmit its request, and b resends the whole cached response.
    from ikev2.codec import decode_header

    conn = connection(fragment_size=200, retransmit_timeout=2.0)
    pair = Pair.make(conn, mirrored(conn, fragment_size=200))
    lost: list[int] = []

    def lose_a_response_fragment(sent: object) -> bool:
        data = sent.ike  # type: ignore[attr-defined]
        header = decode_header(data)
        if header.exchange_type == ExchangeType.IKE_AUTH and header.response and not lost:
            lost.append(1)
            return True
        return False

    pair.drop = lose_a_response_fragment
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("b", ChildSaInstalled) and not pair.of("a", ChildSaInstalled)
    pair.advance(2.5)
    check_crosswise(pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0])
    assert len(pair.of("b", ChildSaInstalled)) == 1  # answered from the cache
    responses = pair.responses("b", ExchangeType.IKE_AUTH)
    assert len(responses) >= 4 and all(len(s.ike) <= 200 and s.ike[16] == 53 for s in responses)
    assert lost


def test_ike_rekey_with_an_invalid_ke_retry() -> None:
    # §1.3.2/§1.2: the responder wants another group for the new IKE SA; the requester
    # tries again with it in a new exchange, and the new IKE SA uses it.
    from ikev2.events import IkeSaRekeyed

    both = ("aes256gcm16-prfsha384-x25519", "aes256gcm16-prfsha384-ecp384")
    pair = up(connection(ike_proposals=both))
    (sb,) = pair.b.ike_sas()
    sb.config = dataclasses.replace(sb.config, ike_proposals=(both[1],))  # b reloaded
    (sa,) = pair.a.ike_sas()
    pair.a.rekey_ike_sa(sa.ike_sa_id, pair.clock)
    pair.pump()
    first, retry = pair.requests("a", CREATE)
    assert sb.sk is not None
    assert sb.sk.inbound.open(first.ike).get(KePayload).group == 31  # type: ignore[union-attr]
    assert sb.sk.inbound.open(retry.ike).get(KePayload).group == 20  # type: ignore[union-attr]
    (ra,) = pair.of("a", IkeSaRekeyed)
    (rb,) = pair.of("b", IkeSaRekeyed)
    assert ra.suite == rb.suite == "aes256gcm16-prfsha384-ecp384"
    (new_a,), (new_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
    assert len(new_a.children) == 1 and len(new_b.children) == 1
