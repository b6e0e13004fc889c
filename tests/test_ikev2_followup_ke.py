"""Additional key exchanges of CREATE_CHILD_SA in IKE_FOLLOWUP_KE (RFC 9370 §2.2.4):
CHILD SAs with hybrid PFS (created and rekeyed), IKE rekeys, their collisions and
errors, two lockgates in memory. The key schedules are computed a second time here
from the RFC's formulas, not with the production helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from daemon.childsa import entry_from_event
from ikev2.codec import KeyExchange as KePayload
from ikev2.codec import Message, Nonce, Notify, decode_header
from ikev2.constants import DhGroup, ExchangeType, NotifyType
from ikev2.crypto.dh import KeyExchange
from ikev2.crypto.keys import derive_child_keys, rekey_skeyseed
from ikev2.crypto.registry import ike_suite
from ikev2.events import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaInstalled,
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaRekeyed,
)
from ikev2.proposals import parse_ike_proposal
from ikev2.sa import IkeSa
from ikev2.sa_types import Datagram, IkeSaState
from ikev2.tasks import followup_ke
from testkit.ikev2_kdf import prf_plus_sha384, prf_sha384
from testkit.ikev2_pair import Pair, child, connection, mirrored

HYBRID_IKE = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
CLASSICAL_IKE = "aes256gcm16-prfsha384-x25519"
HYBRID_ESP = "aes256gcm16-x25519-ke1_mlkem768"
CLASSICAL_ESP = "aes256gcm16-x25519"
CREATE, FOLLOWUP = ExchangeType.CREATE_CHILD_SA, ExchangeType.IKE_FOLLOWUP_KE
SEEDS = [(b"side-a", b"side-b"), (b"a2", b"b2"), (b"a3", b"b3"), (b"a4", b"b4")]

# --- the RFC's formulas, a second time -----------------------------------------------------


_prf, _prf_plus = prf_sha384, prf_plus_sha384


def _keymat(sk_d: bytes, g_ir: bytes, ni: bytes, nr: bytes, extra: list[bytes]) -> bytes:
    """RFC 9370 §2.2.4: KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)), for
    aes256gcm16 two keys of 32 octets and a 4-octet salt each (RFC 4106 §8.1)."""
    return _prf_plus(sk_d, g_ir + ni + nr + b"".join(extra), 72)


def _rekeyed_ike_keys(
    sk_d: bytes, g_ir: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes, extra: list[bytes]
) -> dict[str, bytes]:
    """RFC 9370 §2.2.4: SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)), then
    RFC 7296 §2.14 with the new SPIs (aes256gcm16-prfsha384: no SK_a, SK_e of 36)."""
    seed = _prf(sk_d, g_ir + ni + nr + b"".join(extra))
    stream = _prf_plus(seed, ni + nr + spi_i + spi_r, 48 + 36 + 36 + 48 + 48)
    return {"sk_d": stream[:48], "sk_ei": stream[48:84], "sk_er": stream[84:120]}


def test_keymat_with_additional_key_exchanges_follows_the_rfc() -> None:
    suite = ike_suite(parse_ike_proposal(HYBRID_IKE))
    sk_d, ni, nr = b"\x0d" * 48, bytes(range(32)), bytes(range(200, 232))
    g_ir, sk1, sk2 = b"\x42" * 32, b"\x17" * 32, b"\x99" * 32
    encryption = suite.encryption
    keys = derive_child_keys(suite.prf, sk_d, ni, nr, encryption, None, g_ir, (sk1, sk2))
    stream = _keymat(sk_d, g_ir, ni, nr, [sk1, sk2])
    assert keys.encr_i_to_r == stream[:36] and keys.encr_r_to_i == stream[36:72]
    # The additional secrets follow the nonces: anywhere else the keys differ.
    assert _keymat(sk_d, g_ir + sk1 + sk2, ni, nr, []) != stream
    plain = derive_child_keys(suite.prf, sk_d, ni, nr, encryption, None, g_ir)
    assert plain.encr_i_to_r == _keymat(sk_d, g_ir, ni, nr, [])[:36] != keys.encr_i_to_r


def test_rekey_skeyseed_with_additional_key_exchanges_follows_the_rfc() -> None:
    prf = ike_suite(parse_ike_proposal(HYBRID_IKE)).prf
    sk_d, ni, nr = b"\x0d" * 48, bytes(range(32)), bytes(range(200, 232))
    g_ir, sk1 = b"\x42" * 32, b"\x17" * 32
    assert rekey_skeyseed(prf, sk_d, g_ir, ni, nr, (sk1,)) == _prf(sk_d, g_ir + ni + nr + sk1)
    assert rekey_skeyseed(prf, sk_d, g_ir, ni, nr) == _prf(sk_d, g_ir + ni + nr)


# --- two lockgates in memory ---------------------------------------------------------------


def up(
    esp: tuple[str, ...] = (HYBRID_ESP,),
    ike: tuple[str, ...] = (HYBRID_IKE,),
    seeds: tuple[bytes, bytes] = SEEDS[0],
    esp_b: tuple[str, ...] | None = None,
    fragment_size: int = 3000,
) -> Pair:
    """Established with `esp` and `ike`; by default large enough a fragment size that
    each message is one datagram, to read it off the wire."""
    conn = connection(
        ike_proposals=ike, children=(child(esp_proposals=esp),), fragment_size=fragment_size
    )
    conn_b = mirrored(conn, fragment_size=fragment_size)
    if esp_b is not None:
        (c,) = conn_b.children
        conn_b = dataclasses.replace(
            conn_b, children=(dataclasses.replace(c, esp_proposals=esp_b),)
        )
    pair = Pair.make(conn, conn_b, seeds=seeds)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("a", ChildSaInstalled) and pair.of("b", ChildSaInstalled)
    return pair


def inject(pair: Pair, sender: str, message: Message) -> None:
    """Seal `message` with the sender's keys and hand it to the other side over the
    addresses the sender last used."""
    sa = one(pair, sender)
    assert sa.sk is not None
    last = [s for s in pair.wire if s.sender == sender][-1].datagram
    pair.deliver(sender, Datagram(sa.sk.outbound.seal(message, sa.rng), last.local, last.remote))


def one(pair: Pair, name: str) -> IkeSa:
    (sa,) = [s for s in pair.side(name).ike_sas() if s.state is IkeSaState.ESTABLISHED]
    return sa


def opened(receiver: IkeSa, data: bytes) -> Message:
    """A message the peer of `receiver` sent, decrypted with `receiver`'s keys."""
    assert receiver.sk is not None
    return receiver.sk.inbound.open(data)


def nonce(message: Message) -> bytes:
    payload = message.get(Nonce)
    assert payload is not None
    return payload.data


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, bytes]]]:
    """Every shared secret an initiator-side KeyExchange computes: (method, secret)."""
    seen: list[tuple[int, bytes]] = []
    real = KeyExchange.shared_secret

    def spy(self: KeyExchange, peer: bytes) -> bytes:
        out = real(self, peer)
        seen.append((self.group.group, out))
        return out

    monkeypatch.setattr(KeyExchange, "shared_secret", spy)
    yield seen


def _rekey_child(pair: Pair, side: str) -> tuple[ChildSaInstalled, ChildSaInstalled]:
    (sa,) = pair.side(side).ike_sas()
    (old,) = sa.children
    before = {n: len(pair.of(n, ChildSaInstalled)) for n in ("a", "b")}
    pair.side(side).rekey_child(old, pair.clock)
    pair.pump()
    new_a = pair.of("a", ChildSaInstalled)[before["a"] :]
    new_b = pair.of("b", ChildSaInstalled)[before["b"] :]
    assert len(new_a) == len(new_b) == 1
    return new_a[0], new_b[0]


@pytest.mark.parametrize("side", ["a", "b"])
def test_child_rekey_runs_ml_kem_in_ike_followup_ke(
    side: str, secrets: list[tuple[int, bytes]]
) -> None:
    pair = up()
    other = "b" if side == "a" else "a"
    first = len(pair.wire)
    secrets.clear()
    new_a, new_b = _rekey_child(pair, side)
    # One CREATE_CHILD_SA, then one IKE_FOLLOWUP_KE, both started by `side`.
    wire = pair.wire[first:]
    kinds = [(s.sender, decode_header(s.ike).exchange_type, decode_header(s.ike).response)
             for s in wire]  # fmt: skip
    assert kinds[:4] == [
        (side, CREATE, False),
        (other, CREATE, True),
        (side, FOLLOWUP, False),
        (other, FOLLOWUP, True),
    ]
    for event in (new_a, new_b):
        assert event.pfs == "x25519+mlkem768" and event.quantum_safe
    assert (new_a.encr_key_out, new_a.encr_key_in) == (new_b.encr_key_in, new_b.encr_key_out)
    # KEYMAT from the wire's nonces, SK_d, and the initiator's two shared secrets.
    initiator, responder = one(pair, side), one(pair, other)
    request = opened(responder, wire[0].ike)
    response = opened(initiator, wire[1].ike)
    link = response.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    followup = opened(responder, wire[2].ike)
    echoed = followup.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    assert link is not None and echoed is not None and echoed.data == link.data
    last = opened(initiator, wire[3].ike)
    assert last.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE) is None  # the last one
    # Both sides compute the X25519 secret; the initiator decapsulates ML-KEM.
    by_method = dict(secrets)
    assert set(by_method) == {DhGroup.CURVE25519, DhGroup.ML_KEM_768}
    assert initiator.keys is not None
    g_ir, sk1 = by_method[DhGroup.CURVE25519], by_method[DhGroup.ML_KEM_768]
    stream = _keymat(initiator.keys.sk_d, g_ir, nonce(request), nonce(response), [sk1])
    mine = new_a if side == "a" else new_b
    assert (mine.encr_key_out, mine.encr_key_in) == (stream[:36], stream[36:72])
    # The initiator deleted the old CHILD SA: one pair left on each side.
    assert len(one(pair, "a").children) == len(one(pair, "b").children) == 1


def test_child_rekey_with_followups_in_fragments() -> None:
    pair = up(fragment_size=1232)
    first = len(pair.wire)
    new_a, new_b = _rekey_child(pair, "a")
    assert new_a.quantum_safe and new_a.encr_key_out == new_b.encr_key_in
    followups = pair.requests("a", FOLLOWUP) + pair.responses("b", FOLLOWUP)
    assert len(followups) >= 3  # the ML-KEM key and ciphertext in RFC 7383 fragments
    assert all(len(s.ike) <= 1232 for s in pair.wire[first:])


def test_create_child_sa_with_hybrid_pfs() -> None:
    conn = connection(
        ike_proposals=(HYBRID_IKE,),
        children=(
            child(esp_proposals=(HYBRID_ESP,)),
            child("second", remote="203.0.113.64/26", start="wait", esp_proposals=(HYBRID_ESP,)),
        ),
    )
    pair = Pair.make(conn)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    sa = one(pair, "a")
    sa.create_child(conn.children[1], pair.clock)
    pair.pump()
    second = [e for e in pair.of("a", ChildSaInstalled) if e.child == "second"]
    theirs = [e for e in pair.of("b", ChildSaInstalled) if e.child == "second"]
    assert len(second) == len(theirs) == 1
    assert second[0].pfs == "x25519+mlkem768" and theirs[0].quantum_safe
    assert second[0].encr_key_out == theirs[0].encr_key_in
    assert len({decode_header(s.ike).message_id for s in pair.requests("a", FOLLOWUP)}) == 1
    # IKE_AUTH's CHILD SA has no key exchange of its own (RFC 7296 §1.2).
    first = [e for e in pair.of("a", ChildSaInstalled) if e.child == "net"]
    assert first[0].pfs == "" and not first[0].quantum_safe


def test_classical_esp_peer_gets_classical_pfs_without_followups() -> None:
    pair = up(esp=(HYBRID_ESP, CLASSICAL_ESP), esp_b=(CLASSICAL_ESP,))
    new_a, new_b = _rekey_child(pair, "a")
    assert new_a.pfs == new_b.pfs == "x25519"
    assert not new_a.quantum_safe
    assert not pair.requests("a", FOLLOWUP)


@pytest.mark.parametrize("side", ["a", "b"])
def test_ike_rekey_runs_ml_kem_in_ike_followup_ke(
    side: str, secrets: list[tuple[int, bytes]]
) -> None:
    pair = up(esp=(CLASSICAL_ESP,))
    other = "b" if side == "a" else "a"
    old_i, old_r = one(pair, side), one(pair, other)
    assert old_i.keys is not None
    old_sk_d = old_i.keys.sk_d
    first = len(pair.wire)
    secrets.clear()
    pair.side(side).rekey_ike_sa(old_i.ike_sa_id, pair.clock)
    pair.pump()
    for name in ("a", "b"):
        (rekeyed,) = pair.of(name, IkeSaRekeyed)
        assert rekeyed.suite == HYBRID_IKE
        assert not pair.of(name, IkeSaDeleted) and not pair.of(name, ChildSaDeleted)
    new_i, new_r = one(pair, side), one(pair, other)
    assert new_i.quantum_safe and new_r.quantum_safe
    assert len(new_i.children) == 1 and new_i.initiator
    wire = pair.wire[first:]
    request, response = opened(old_r, wire[0].ike), opened(old_i, wire[1].ike)
    assert decode_header(wire[2].ike).exchange_type == FOLLOWUP
    by_method = dict(secrets)
    g_ir, sk1 = by_method[DhGroup.CURVE25519], by_method[DhGroup.ML_KEM_768]
    ni, nr = nonce(request), nonce(response)
    expected = _rekeyed_ike_keys(old_sk_d, g_ir, ni, nr, new_i.spi_i, new_i.spi_r, [sk1])
    for keys in (new_i.keys, new_r.keys):
        assert keys is not None
        assert (keys.sk_d, keys.sk_ei, keys.sk_er) == tuple(expected.values())
    # The new IKE SA carries traffic: a liveness check and a CHILD rekey through it.
    _rekey_child(pair, "a")


def cross(pair: Pair, sa_a: IkeSa, sa_b: IkeSa) -> tuple[str, str]:
    """Both sides' CREATE_CHILD_SA requests cross; each is answered, then both answers
    arrive. Returns (winner, loser): the loser's exchange had the lowest nonce (§2.8)."""
    (req_a,), (req_b,) = pair.take("a"), pair.take("b")
    pair.deliver("a", req_a)
    pair.deliver("b", req_b)
    (resp_b,), (resp_a,) = pair.take("b"), pair.take("a")
    lowest_a = min(nonce(opened(sa_b, req_a.data)), nonce(opened(sa_a, resp_b.data)))
    lowest_b = min(nonce(opened(sa_a, req_b.data)), nonce(opened(sa_b, resp_a.data)))
    pair.deliver("b", resp_b)
    pair.deliver("a", resp_a)
    pair.pump()
    return ("b", "a") if lowest_a < lowest_b else ("a", "b")


@pytest.mark.parametrize("seeds", SEEDS)
def test_crossing_child_rekeys_only_the_winner_runs_followups(seeds: tuple[bytes, bytes]) -> None:
    pair = up(seeds=seeds)
    sa_a, sa_b = one(pair, "a"), one(pair, "b")
    (old_a,), (old_b,) = list(sa_a.children), list(sa_b.children)
    pair.a.rekey_child(old_a, pair.clock)
    pair.b.rekey_child(old_b, pair.clock)
    winner, loser = cross(pair, sa_a, sa_b)
    # RFC 9370 §2.2.4: the exchange with the lowest nonce stops before IKE_FOLLOWUP_KE.
    assert len(pair.requests(winner, FOLLOWUP)) == 1
    assert not pair.requests(loser, FOLLOWUP)
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)
    # One new pair on each side, the same one; the old one is gone.
    (new_a,) = one(pair, "a").children.values()
    (new_b,) = one(pair, "b").children.values()
    assert (new_a.spi_in, new_a.spi_out) == (new_b.spi_out, new_b.spi_in)
    assert old_a not in one(pair, "a").children
    # The loser's answered CREATE_CHILD_SA is forgotten with the SA it rekeyed.
    assert not sa_a.followups and not sa_b.followups
    pair.advance(followup_ke.FOLLOWUP_TIMEOUT + 1)
    assert len(one(pair, "a").children) == 1


def test_both_outcomes_of_crossing_child_rekeys_are_covered() -> None:
    winners = set()
    for seeds in SEEDS:
        pair = up(seeds=seeds)
        sa_a, sa_b = one(pair, "a"), one(pair, "b")
        pair.a.rekey_child(next(iter(sa_a.children)), pair.clock)
        pair.b.rekey_child(next(iter(sa_b.children)), pair.clock)
        (req_a,), (req_b,) = pair.take("a"), pair.take("b")
        pair.deliver("a", req_a)
        pair.deliver("b", req_b)
        pair.pump()
        winners |= {s for s in "ab" if pair.requests(s, FOLLOWUP)}
    assert winners == {"a", "b"}


@pytest.mark.parametrize("seeds", SEEDS)
def test_crossing_ike_rekeys_only_the_winner_runs_followups(seeds: tuple[bytes, bytes]) -> None:
    pair = up(esp=(CLASSICAL_ESP,), seeds=seeds)
    old_a, old_b = one(pair, "a"), one(pair, "b")
    ids = (next(iter(old_a.children)), next(iter(old_b.children)))
    pair.a.rekey_ike_sa(old_a.ike_sa_id, pair.clock)
    pair.b.rekey_ike_sa(old_b.ike_sa_id, pair.clock)
    winner, loser = cross(pair, old_a, old_b)
    assert len(pair.requests(winner, FOLLOWUP)) == 1
    assert not pair.requests(loser, FOLLOWUP)
    new_a, new_b = one(pair, "a"), one(pair, "b")
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
    assert new_a.initiator is (winner == "a")
    assert list(new_a.children) == [ids[0]] and list(new_b.children) == [ids[1]]
    for name in ("a", "b"):
        (rekeyed,) = pair.of(name, IkeSaRekeyed)
        assert rekeyed.new_ike_sa_id == one(pair, name).ike_sa_id
        assert not pair.of(name, IkeSaDeleted) and not pair.of(name, ChildSaDeleted)
    assert old_a.state is old_b.state is IkeSaState.DELETED
    # Nothing is left to settle: after the responder's timeout, still one IKE SA each.
    pair.advance(followup_ke.FOLLOWUP_TIMEOUT + 1)
    assert len(pair.a.ike_sas()) == len(pair.b.ike_sas()) == 1


def answered_rekey() -> tuple[Pair, IkeSa, IkeSa, int, Datagram]:
    """a rekeys its CHILD SA; b answered, its response (with the link) held back."""
    pair = up()
    sa_a, sa_b = one(pair, "a"), one(pair, "b")
    (old_a,) = list(sa_a.children)
    pair.a.rekey_child(old_a, pair.clock)
    (req_a,) = pair.take("a")
    pair.deliver("a", req_a)
    (resp_b,) = pair.take("b")
    return pair, sa_a, sa_b, old_a, resp_b


def test_rekey_request_during_followups_gets_temporary_failure() -> None:
    # a's rekey completes its CREATE_CHILD_SA; its IKE_FOLLOWUP_KE is held back.
    pair, sa_a, sa_b, old_a, resp_b = answered_rekey()
    (old_b,) = list(sa_b.children)
    pair.deliver("b", resp_b)
    (followup_a,) = pair.take("a")
    assert decode_header(followup_a.data).exchange_type == FOLLOWUP
    # b's rekey of the same SA, delayed on the way, arrives now (RFC 9370 §2.2.4).
    pair.b.rekey_child(old_b, pair.clock)
    (req_b,) = pair.take("b")
    pair.deliver("b", req_b)
    (refusal,) = pair.take("a")
    answer = opened(sa_b, refusal.data)
    assert [n.notify_type for n in answer.error_notifies()] == [NotifyType.TEMPORARY_FAILURE]
    pair.deliver("a", followup_a)
    pair.deliver("b", refusal)
    pair.pump()
    # a's rekey made the new pair; b's refused rekey is no failure (a's took over).
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)
    (new_a,) = sa_a.children.values()
    (new_b,) = sa_b.children.values()
    assert (new_a.spi_in, new_a.spi_out) == (new_b.spi_out, new_b.spi_in)
    assert new_a.unique_id != old_a


def test_unknown_link_gets_state_not_found() -> None:
    pair = up()
    sa_a, sa_b = one(pair, "a"), one(pair, "b")
    assert sa_a.sk is not None
    ek = KeyExchange.generate(DhGroup.ML_KEM_768, sa_a.rng).public_bytes
    request = Message(
        sa_a.spi_i,
        sa_a.spi_r,
        FOLLOWUP,
        sa_a.tm.next_request_id,
        True,
        False,
        (KePayload(DhGroup.ML_KEM_768, ek), Notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, b"nolink")),
        encrypted=True,
    )
    inject(pair, "a", request)
    (reply,) = pair.take("b")
    answer = opened(sa_a, reply.data)
    assert [n.notify_type for n in answer.error_notifies()] == [NotifyType.STATE_NOT_FOUND]
    assert sa_b.state is IkeSaState.ESTABLISHED and len(sa_b.children) == 1


def test_responder_forgets_a_series_and_the_initiator_abandons_cleanly() -> None:
    pair, sa_a, sa_b, old_a, resp_b = answered_rekey()
    assert sa_b.followups  # b waits for the IKE_FOLLOWUP_KE
    # The IKE_FOLLOWUP_KE is late beyond the responder's patience (§2.2.4).
    pair.clock += followup_ke.FOLLOWUP_TIMEOUT + 1
    pair.b.handle_timer(pair.clock)
    assert not sa_b.followups
    pair.deliver("b", resp_b)
    pair.pump()
    (reply,) = pair.responses("b", FOLLOWUP)
    answer = opened(sa_a, reply.ike)
    assert [n.notify_type for n in answer.error_notifies()] == [NotifyType.STATE_NOT_FOUND]
    # No new CHILD SA on either side; the old one stays, the IKE SA too.
    (failed,) = pair.of("a", ChildSaFailed)
    assert failed.notify == NotifyType.STATE_NOT_FOUND
    assert list(sa_a.children) == [old_a] and len(sa_b.children) == 1
    assert sa_a.state is sa_b.state is IkeSaState.ESTABLISHED
    assert not pair.of("a", IkeSaFailed) and not pair.of("a", IkeSaDeleted)
    # The rekey is tried again later and succeeds.
    pair.advance(followup_ke.FOLLOWUP_TIMEOUT)
    (new,) = sa_a.children
    assert new != old_a
    assert len(sa_b.children) == 1


def test_bad_ml_kem_key_in_a_followup_ends_only_that_exchange() -> None:
    pair, sa_a, sa_b, _, resp_b = answered_rekey()
    pair.deliver("b", resp_b)
    (followup_a,) = pair.take("a")
    message = opened(sa_b, followup_a.data)
    ke = message.get(KePayload)
    link = message.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    assert ke is not None and link is not None
    assert sa_a.sk is not None
    bad = Message(
        message.spi_i,
        message.spi_r,
        FOLLOWUP,
        message.message_id,
        True,
        False,
        (KePayload(ke.group, ke.data[:-1]), link),
        encrypted=True,
    )
    inject(pair, "a", bad)
    (reply,) = pair.take("b")
    answer = opened(sa_a, reply.data)
    assert [n.notify_type for n in answer.error_notifies()] == [NotifyType.INVALID_SYNTAX]
    assert not sa_b.followups and len(sa_b.children) == 1
    assert sa_b.state is IkeSaState.ESTABLISHED


def test_the_data_plane_entry_and_its_status_carry_the_pfs() -> None:
    pair = up()
    new_a, _ = _rekey_child(pair, "a")
    entry = entry_from_event(new_a)
    assert (entry.pfs, entry.quantum_safe) == ("x25519+mlkem768", True)
    status = entry.status(0.0)
    assert (status["pfs"], status["quantum_safe"]) == ("x25519+mlkem768", True)


def test_ike_rekey_request_during_our_ike_followups_gets_temporary_failure() -> None:
    pair = up(esp=(CLASSICAL_ESP,))
    sa_a, sa_b = one(pair, "a"), one(pair, "b")
    # a's IKE rekey completes its CREATE_CHILD_SA; its IKE_FOLLOWUP_KE is held back.
    pair.a.rekey_ike_sa(sa_a.ike_sa_id, pair.clock)
    (req_a,) = pair.take("a")
    pair.deliver("a", req_a)
    (resp_b,) = pair.take("b")
    pair.deliver("b", resp_b)
    (followup_a,) = pair.take("a")
    assert decode_header(followup_a.data).exchange_type == FOLLOWUP
    # b's IKE rekey request, held up on the way, arrives now (RFC 9370 §2.2.4).
    pair.b.rekey_ike_sa(sa_b.ike_sa_id, pair.clock)
    (req_b,) = pair.take("b")
    pair.deliver("b", req_b)
    (refusal,) = pair.take("a")
    answer = opened(sa_b, refusal.data)
    assert [n.notify_type for n in answer.error_notifies()] == [NotifyType.TEMPORARY_FAILURE]
    pair.deliver("a", followup_a)
    pair.deliver("b", refusal)
    pair.pump()
    # a's rekey made the one new IKE SA; b's refused one is no failure.
    new_a, new_b = one(pair, "a"), one(pair, "b")
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r) and new_a.initiator
    assert new_a.suite is not None and new_a.quantum_safe
    assert len(pair.a.ike_sas()) == len(pair.b.ike_sas()) == 1
    assert not pair.of("a", IkeSaDeleted) and not pair.of("b", IkeSaDeleted)


def test_ike_rekey_whose_responder_forgot_it_is_tried_again() -> None:
    pair = up(esp=(CLASSICAL_ESP,))
    sa_a, sa_b = one(pair, "a"), one(pair, "b")
    pair.a.rekey_ike_sa(sa_a.ike_sa_id, pair.clock)
    (req_a,) = pair.take("a")
    pair.deliver("a", req_a)
    (resp_b,) = pair.take("b")
    pair.clock += followup_ke.FOLLOWUP_TIMEOUT + 1
    pair.b.handle_timer(pair.clock)
    assert not sa_b.followups
    pair.deliver("b", resp_b)
    pair.pump()
    # STATE_NOT_FOUND: no new IKE SA; both keep the old one, which works.
    assert pair.a.ike_sas() == [sa_a] and pair.b.ike_sas() == [sa_b]
    assert sa_a.state is sa_b.state is IkeSaState.ESTABLISHED
    assert not pair.of("a", IkeSaRekeyed) and not pair.of("b", IkeSaRekeyed)
    assert sa_a.ike_rekey_at is not None and not sa_a.ike_rekeying
    # It is tried again (§2.25: not at once) and then succeeds.
    pair.advance(sa_a.ike_rekey_at - pair.clock + 1)
    (rekeyed,) = pair.of("a", IkeSaRekeyed)
    assert rekeyed.suite == HYBRID_IKE
    assert one(pair, "a").quantum_safe and len(one(pair, "a").children) == 1
