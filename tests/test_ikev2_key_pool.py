"""Key pairs made ahead of need (ikev2.crypto.key_pool, Endpoint.prepare_keys)."""

from __future__ import annotations

import dataclasses

from ikev2.codec import KeyExchange as KePayload
from ikev2.codec import decode_message
from ikev2.constants import DhGroup, ExchangeType
from ikev2.crypto.key_pool import KeyPool
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint
from ikev2.events import ChildSaInstalled, IkeSaEstablished
from testkit.ikev2_pair import Pair, connection, mirrored

X25519, ECP256 = DhGroup.CURVE25519, DhGroup.ECP_256


def test_fill_keeps_a_bounded_stock_of_the_wanted_groups() -> None:
    pool = KeyPool(DeterministicRandom(b"pool"), per_group=3)
    assert pool.fill(10) == 0  # nothing wanted, nothing made
    pool.want([X25519, ECP256, 9999])  # an unknown group is not wanted
    assert pool.missing() == 6
    assert pool.fill(4) == 2
    assert (pool.stock(X25519), pool.stock(ECP256)) == (2, 2)  # the emptiest first
    assert pool.fill(100) == 0
    assert (pool.stock(X25519), pool.stock(ECP256), pool.stock(9999)) == (3, 3, 0)
    pool.want([ECP256])  # x25519 no longer wanted: its pairs go
    assert (pool.stock(X25519), pool.stock(ECP256), pool.missing()) == (0, 3, 0)


def test_a_pair_is_handed_out_once_from_the_stock_then_made_on_demand() -> None:
    pool = KeyPool(DeterministicRandom(b"pool"), per_group=4)
    pool.want([X25519])
    pool.fill(4)
    taken = [pool.take(X25519) for _ in range(6)]  # four from the stock, two made now
    assert pool.stock(X25519) == 0
    assert len({id(k) for k in taken}) == len({k.public_bytes for k in taken}) == 6
    assert all(k.group.group == X25519 for k in taken)
    # A group that is not stocked is made on demand, and works.
    ecp = pool.take(ECP256)
    assert ecp.group.group == ECP256
    assert ecp.shared_secret(pool.take(ECP256).public_bytes)


def test_without_prepare_keys_the_seeded_exchange_is_unchanged() -> None:
    # The pool makes nothing unless told the daemon is idle, so a seeded endpoint
    # draws every key from its source in the same order as before the pool existed.
    def first_request(prepare: bool) -> bytes:
        a = Endpoint([connection()], rng=DeterministicRandom(b"same-seed"))
        if prepare:
            a.prepare_keys(2)
        a.initiate("conn", 0.0)
        (datagram,) = a.datagrams_to_send(0.0)
        return datagram.data

    assert first_request(False) == first_request(False)
    assert first_request(True) != first_request(False)


def test_prepared_pairs_serve_both_sides_of_a_setup() -> None:
    conn = connection(
        ike_proposals=("aes256gcm16-prfsha384-ecp256", "aes128gcm16-prfsha256-x25519")
    )
    pair = Pair.make(conn, mirrored(conn))
    assert pair.a.prepare_keys(1000) == 0 and pair.b.prepare_keys(1000) == 0
    # The first IKE proposal's group is stocked: ecp256, not x25519.
    keys_a = pair.a._keys
    stocked = keys_a.stock(ECP256)
    assert stocked > 0 and keys_a.stock(X25519) == 0
    pair.a.initiate("conn", 0.0)
    (request,) = pair.take("a")
    # The KE payload carries a public value made ahead: one pair left the stock.
    assert keys_a.stock(ECP256) == stocked - 1 and keys_a.missing() == 1
    ke = decode_message(request.data).get(KePayload)
    assert ke is not None and ke.group == ECP256
    assert decode_message(request.data).exchange_type == ExchangeType.IKE_SA_INIT
    pair.deliver("a", request)
    pair.pump()
    assert pair.of("a", IkeSaEstablished) and pair.of("b", IkeSaEstablished)
    assert pair.of("a", ChildSaInstalled) and pair.of("b", ChildSaInstalled)
    assert pair.b._keys.missing() == 1  # the responder's pair came from its stock too


def test_a_reload_stocks_the_groups_of_the_new_connections() -> None:
    conn = connection()
    ep = Endpoint([conn], rng=DeterministicRandom(b"reload"))
    ep.prepare_keys(1000)
    assert ep._keys.stock(X25519) > 0
    ep.set_connections([dataclasses.replace(conn, ike_proposals=("aes256gcm16-prfsha384-ecp256",))])
    assert ep._keys.stock(X25519) == 0 and ep._keys.missing() > 0
    assert ep.prepare_keys(1000) == 0 and ep._keys.stock(ECP256) > 0
