"""Rekey collisions and loss during rekeys, in memory (RFC 7296 §2.8.1, §2.8.2, §2.25).

Both peers rekey the same SA at once: of the two new SAs, the one whose exchange had
the lowest nonce is deleted by its creator and the other takes over. The tests read
the nonces off the wire to know which side must win, and check that both ends agree,
whatever order the messages arrive in and when some are lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ikev2.codec import Delete, Message, Nonce, SecurityAssociation, decode_header
from ikev2.constants import ExchangeType, NotifyType, ProtocolId
from ikev2.events import (
    ChildSaDeleted,
    ChildSaFailed,
    ChildSaInstalled,
    IkeSaDeleted,
    IkeSaRekeyed,
)
from ikev2.sa import IkeSa
from ikev2.sa_types import Datagram, IkeSaState
from testkit.ikev2_pair import Pair, connection

CREATE, INFO = ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL
SEEDS = [(b"side-a", b"side-b"), (b"a2", b"b2"), (b"a3", b"b3"), (b"a4", b"b4")]


def up(seeds: tuple[bytes, bytes] = SEEDS[0], **kw: object) -> Pair:
    pair = Pair.make(connection(**kw), seeds=seeds)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("a", ChildSaInstalled) and pair.of("b", ChildSaInstalled)
    return pair


def opened(sa: IkeSa, d: Datagram) -> Message:
    """Decrypt a message of `sa`'s peer (the endpoint's bare IKE message)."""
    assert sa.sk is not None
    return sa.sk.inbound.open(d.data)


def nonce(message: Message) -> bytes:
    payload = message.get(Nonce)
    assert payload is not None
    return payload.data


def new_spi(message: Message) -> bytes:
    sa = message.get(SecurityAssociation)
    assert sa is not None
    return sa.proposals[0].spi


@dataclass
class Crossing:
    """Both sides' IKE rekey requests, taken off the wire before delivery."""

    pair: Pair
    old_a: IkeSa
    old_b: IkeSa
    req_a: Datagram
    req_b: Datagram


def cross_ike_rekeys(pair: Pair) -> Crossing:
    (old_a,), (old_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    pair.a.rekey_ike_sa(old_a.ike_sa_id, pair.clock)
    pair.b.rekey_ike_sa(old_b.ike_sa_id, pair.clock)
    (req_a,), (req_b,) = pair.take("a"), pair.take("b")
    return Crossing(pair, old_a, old_b, req_a, req_b)


def check_one_shared_ike_sa(pair: Pair, child_ids: tuple[int, int]) -> tuple[IkeSa, IkeSa]:
    """One established IKE SA per side, the same one, with the original CHILD SAs."""
    (sa_a,), (sa_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    assert sa_a.state is sa_b.state is IkeSaState.ESTABLISHED
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    assert sa_a.initiator != sa_b.initiator
    assert list(sa_a.children) == [child_ids[0]] and list(sa_b.children) == [child_ids[1]]
    for name, sa in (("a", sa_a), ("b", sa_b)):
        (rekeyed,) = pair.of(name, IkeSaRekeyed)
        assert rekeyed.new_ike_sa_id == sa.ike_sa_id
        assert rekeyed.spi_i == int.from_bytes(sa.spi_i, "big")
        # Nothing was torn down: no IKE SA and no CHILD SA is reported gone.
        assert not pair.of(name, IkeSaDeleted) and not pair.of(name, ChildSaDeleted)
    # The survivor works: a liveness check goes through it.
    sa_a.check_liveness(pair.clock)
    pair.pump()
    assert sa_a.tm.outstanding is None and sa_b.tm.expected_request_id >= 1
    return sa_a, sa_b


def sa_linger(pair: Pair) -> float:
    """How long a replaced or redundant IKE SA waits for its Delete (our give-up time)."""
    return pair.a.ike_sas()[0].tm.policy.give_up_after


def child_ids(pair: Pair) -> tuple[int, int]:
    return pair.of("a", ChildSaInstalled)[0].unique_id, pair.of("b", ChildSaInstalled)[0].unique_id


def info_requests(pair: Pair, sender: str) -> list[bytes]:
    """SPIi of every INFORMATIONAL request `sender` sent (only Deletes, before any check)."""
    out = []
    for sent in pair.wire:
        header = decode_header(sent.ike)
        if sent.sender == sender and header.exchange_type == INFO and not header.response:
            out.append(header.spi_i)
    return out


@pytest.mark.parametrize("seeds", SEEDS)
def test_crossing_ike_rekeys_keep_the_new_sa_without_the_lowest_nonce(
    seeds: tuple[bytes, bytes],
) -> None:
    pair = up(seeds)
    ids = child_ids(pair)
    c = cross_ike_rekeys(pair)
    # Each side answers the other's request as usual (§2.25.2), then both complete.
    pair.deliver("a", c.req_a)
    pair.deliver("b", c.req_b)
    (resp_from_b,), (resp_from_a,) = pair.take("b"), pair.take("a")
    msg_req_a, msg_req_b = opened(c.old_b, c.req_a), opened(c.old_a, c.req_b)
    msg_resp_b, msg_resp_a = opened(c.old_a, resp_from_b), opened(c.old_b, resp_from_a)
    assert not msg_resp_a.error_notifies() and not msg_resp_b.error_notifies()
    lowest_a = min(nonce(msg_req_a), nonce(msg_resp_b))  # a's exchange
    lowest_b = min(nonce(msg_req_b), nonce(msg_resp_a))  # b's exchange
    winner = "b" if lowest_a < lowest_b else "a"
    winning_spi = new_spi(msg_req_a if winner == "a" else msg_req_b)
    losing_spi = new_spi(msg_req_b if winner == "a" else msg_req_a)
    pair.deliver("b", resp_from_b)
    pair.deliver("a", resp_from_a)
    pair.pump()

    # The loser's creator deleted the loser; the winner's creator deleted the old SA.
    loser = "b" if winner == "a" else "a"
    assert info_requests(pair, loser) == [losing_spi]
    assert info_requests(pair, winner) == [c.old_a.spi_i]
    assert c.old_a.state is c.old_b.state is IkeSaState.DELETED
    sa_a, _ = check_one_shared_ike_sa(pair, ids)
    assert sa_a.spi_i == winning_spi
    assert sa_a.initiator is (winner == "a")


def test_both_outcomes_of_the_nonce_comparison_are_covered() -> None:
    """The seeds above make each side win at least once (else the test proves little)."""
    winners = set()
    for seeds in SEEDS:
        pair = up(seeds)
        c = cross_ike_rekeys(pair)
        pair.deliver("a", c.req_a)
        pair.deliver("b", c.req_b)
        pair.pump()
        (sa_a,) = pair.a.ike_sas()
        winners.add("a" if sa_a.initiator else "b")
    assert winners == {"a", "b"}


@pytest.mark.parametrize("delete_first", [True, False])
def test_crossing_ike_rekey_seen_by_one_side_only(delete_first: bool) -> None:
    pair = up()
    ids = child_ids(pair)
    c = cross_ike_rekeys(pair)
    # b answers a's request while its own is out; a completes before it sees b's.
    pair.deliver("a", c.req_a)
    (resp,) = pair.take("b")
    pair.deliver("b", resp)
    (delete_old,) = pair.take("a")
    pair.deliver("b", c.req_b)
    (refusal,) = pair.take("a")
    # §2.8.2: a, which rekeyed already, refuses with TEMPORARY_FAILURE.
    (notify,) = opened(c.old_b, refusal).error_notifies()
    assert notify.notify_type == NotifyType.TEMPORARY_FAILURE
    # b learns from either message that a's new SA is the only one.
    for d in (delete_old, refusal) if delete_first else (refusal, delete_old):
        pair.deliver("a", d)
    pair.pump()
    sa_a, _ = check_one_shared_ike_sa(pair, ids)
    assert sa_a.initiator and sa_a.spi_i == new_spi(opened(c.old_b, c.req_a))
    assert not pair.of("b", ChildSaFailed)


def test_winner_deletes_the_old_sa_before_the_loser_gets_its_response() -> None:
    """Reordered: the loser hears the old SA's Delete before its own rekey's response.

    It then adopts the winner's SA; the redundant SA that only the winner knows ends on
    its own after a while, silently.
    """
    pair = up()
    ids = child_ids(pair)
    c = cross_ike_rekeys(pair)
    pair.deliver("a", c.req_a)
    pair.deliver("b", c.req_b)
    (resp_from_b,), (resp_from_a,) = pair.take("b"), pair.take("a")
    lowest_a = min(nonce(opened(c.old_b, c.req_a)), nonce(opened(c.old_a, resp_from_b)))
    lowest_b = min(nonce(opened(c.old_a, c.req_b)), nonce(opened(c.old_b, resp_from_a)))
    winner, loser = ("a", "b") if lowest_a > lowest_b else ("b", "a")
    to_winner, to_loser = (
        (resp_from_b, resp_from_a) if winner == "a" else (resp_from_a, resp_from_b)
    )
    pair.deliver(loser, to_winner)
    (delete_old,) = pair.take(winner)
    loser_old = c.old_a if loser == "a" else c.old_b
    assert Delete(ProtocolId.IKE) in opened(loser_old, delete_old).payloads
    pair.deliver(winner, delete_old)  # overtakes the response to the loser's request
    pair.pump()
    pair.deliver(winner, to_loser)  # late: its IKE SA is gone, so it is dropped
    pair.pump()
    assert len(pair.side(winner).ike_sas()) == 2  # the redundant one waits for a Delete
    # That never comes: it goes quietly once the peer could not retransmit any more.
    pair.advance(sa_linger(pair) + 1.0)
    check_one_shared_ike_sa(pair, ids)
    (sa,) = pair.side(winner).ike_sas()
    assert sa.initiator


def test_lost_ike_rekey_request_and_response_are_retransmitted() -> None:
    pair = up(retransmit_timeout=1.0)
    ids = child_ids(pair)
    lost: list[str] = []

    def lose_first_of_each(sent: object) -> bool:
        header = decode_header(sent.ike)  # type: ignore[attr-defined]
        kind = f"{header.exchange_type}:{header.response}"
        if header.exchange_type in (CREATE, INFO) and kind not in lost:
            lost.append(kind)
            return True
        return False

    pair.drop = lose_first_of_each
    (old_a,) = pair.a.ike_sas()
    pair.a.rekey_ike_sa(old_a.ike_sa_id, pair.clock)
    pair.pump()
    # b forgets the old SA once it answered the Delete, so a retransmitted Delete goes
    # unanswered: a's old SA ends quietly when it gives up (or its linger time ends).
    pair.advance(60.0)
    # The request, its response, the Delete and the Delete's response were each lost once.
    assert sorted(lost) == sorted(f"{t}:{r}" for t in (CREATE, INFO) for r in (False, True))
    check_one_shared_ike_sa(pair, ids)
    # b answered the retransmitted request from its cache: one new IKE SA only.
    assert len(pair.of("b", IkeSaRekeyed)) == 1


def test_ike_rekey_crossing_a_child_rekey_is_refused_then_both_succeed() -> None:
    """§2.25.1-2: neither is done during the other; TEMPORARY_FAILURE, later retries."""
    pair = up()
    (sa_a,), (sa_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    pair.a.rekey_ike_sa(sa_a.ike_sa_id, pair.clock)
    (child_b,) = sa_b.children
    sa_b.rekey_child(child_b, pair.clock)
    pair.pump()
    refusals = [e for name in "ab" for e in pair.of(name, ChildSaFailed)]
    assert [e.notify for e in refusals] == [NotifyType.TEMPORARY_FAILURE]
    assert not pair.of("a", IkeSaRekeyed)
    pair.advance(200.0)
    (new_a,), (new_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
    assert new_a.spi_i != sa_a.spi_i
    (ca,), (cb,) = new_a.children.values(), new_b.children.values()
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert ca.unique_id != child_ids(pair)[0]  # the CHILD SA was rekeyed too
    assert not pair.of("a", IkeSaDeleted) and not pair.of("b", IkeSaDeleted)


def test_ike_rekey_during_a_child_delete_is_refused() -> None:
    pair = up()
    (sa_a,), (sa_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    (child_a,) = sa_a.children
    sa_a.delete_child(child_a, pair.clock)
    pair.b.rekey_ike_sa(sa_b.ike_sa_id, pair.clock)
    (delete,), (rekey,) = pair.take("a"), pair.take("b")
    pair.deliver("b", rekey)  # reaches a while its Delete is on the wire
    (refusal,) = pair.take("a")
    (notify,) = opened(sa_b, refusal).error_notifies()
    assert notify.notify_type == NotifyType.TEMPORARY_FAILURE
    pair.deliver("a", delete)
    pair.pump()
    assert sa_a.children == {} and sa_b.children == {}
    assert pair.a.ike_sas() == [sa_a] and not pair.of("b", IkeSaRekeyed)


def test_child_rekey_on_a_rekeyed_ike_sa_gets_temporary_failure() -> None:
    pair = up()
    c = cross_ike_rekeys(pair)
    pair.deliver("a", c.req_a)
    (resp,) = pair.take("b")
    pair.deliver("b", resp)
    pair.take("a")  # a's Delete of the old SA, held back
    # b's own rekey request is answered TEMPORARY_FAILURE by the REKEYED old SA.
    assert c.old_a.state is IkeSaState.REKEYED
    pair.deliver("b", c.req_b)
    (refusal,) = pair.take("a")
    (notify,) = opened(c.old_b, refusal).error_notifies()
    assert notify.notify_type == NotifyType.TEMPORARY_FAILURE


def test_crossing_child_rekeys_with_a_lost_response_converge() -> None:
    pair = up(retransmit_timeout=1.0)
    old_a, old_b = pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0]
    dropped: list[bool] = []

    def drop_first_response_to_a(sent: object) -> bool:
        header = decode_header(sent.ike)  # type: ignore[attr-defined]
        if header.exchange_type == CREATE and header.response and not dropped:
            dropped.append(True)
            return True
        return False

    pair.drop = drop_first_response_to_a
    pair.a.ike_sas()[0].rekey_child(old_a.unique_id, pair.clock)
    pair.b.ike_sas()[0].rekey_child(old_b.unique_id, pair.clock)
    pair.pump()
    pair.advance(5.0)
    assert dropped
    (ca,) = pair.a.ike_sas()[0].children.values()
    (cb,) = pair.b.ike_sas()[0].children.values()
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert ca.unique_id != old_a.unique_id and cb.unique_id != old_b.unique_id
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)
    # Every CHILD SA installed on one side but not kept was deleted again on that side.
    for name in "ab":
        installed = {e.unique_id for e in pair.of(name, ChildSaInstalled)}
        deleted = {e.unique_id for e in pair.of(name, ChildSaDeleted)}
        kept = set(pair.side(name).ike_sas()[0].children)
        assert installed - deleted == kept


def test_crossing_child_rekey_seen_by_one_side_only() -> None:
    """b completes its CHILD rekey before it sees a's: a's gets TEMPORARY_FAILURE (§2.25.1).

    That is no failure for a: b's new pair is the only one and b deletes the old.
    """
    pair = up()
    old_a, old_b = pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0]
    (sa_a,), (sa_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    sa_a.rekey_child(old_a.unique_id, pair.clock)
    sa_b.rekey_child(old_b.unique_id, pair.clock)
    (req_a,), (req_b,) = pair.take("a"), pair.take("b")
    pair.deliver("b", req_b)
    (resp,) = pair.take("a")
    pair.deliver("a", resp)
    (delete_old,) = pair.take("b")
    pair.deliver("a", req_a)
    (refusal,) = pair.take("b")
    (notify,) = opened(sa_a, refusal).error_notifies()
    assert notify.notify_type == NotifyType.TEMPORARY_FAILURE
    pair.deliver("b", refusal)
    pair.deliver("b", delete_old)
    pair.pump()
    (ca,), (cb,) = sa_a.children.values(), sa_b.children.values()
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert cb.unique_id == pair.of("b", ChildSaInstalled)[1].unique_id  # b's new pair
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)
    assert not ca.rekeying and sa_a.get_timer() is not None


def test_child_rekey_crossing_the_peers_delete_of_it_is_forgotten() -> None:
    """§2.25.1: b deletes the CHILD SA that a rekeys: TEMPORARY_FAILURE, no failure event."""
    pair = up()
    old_a, old_b = pair.of("a", ChildSaInstalled)[0], pair.of("b", ChildSaInstalled)[0]
    (sa_a,), (sa_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    sa_a.rekey_child(old_a.unique_id, pair.clock)
    sa_b.delete_child(old_b.unique_id, pair.clock)
    (rekey,), (delete,) = pair.take("a"), pair.take("b")
    pair.deliver("b", delete)  # a answers the Delete as usual while its rekey is out
    pair.deliver("a", rekey)  # b is deleting that SA: TEMPORARY_FAILURE
    (refusal,) = pair.take("b")
    (notify,) = opened(sa_a, refusal).error_notifies()
    assert notify.notify_type == NotifyType.TEMPORARY_FAILURE
    pair.pump()
    pair.deliver("b", refusal)
    pair.pump()
    assert sa_a.children == {} and sa_b.children == {}
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)
    assert [e.unique_id for e in pair.of("a", ChildSaDeleted)] == [old_a.unique_id]


@pytest.mark.parametrize("seed", range(12))
def test_rekeys_converge_under_random_loss_and_reordering(seed: int) -> None:
    """Both sides rekey the IKE SA and the CHILD SA at once while the network drops
    and reorders messages (seeded): afterwards both agree on one IKE SA and one pair."""
    import random

    rnd = random.Random(seed)
    pair = up((b"a%d" % seed, b"b%d" % seed), retransmit_timeout=1.0, retransmit_tries=6)
    for name in "ab":
        ep = pair.side(name)
        (sa,) = ep.ike_sas()
        (child,) = sa.children
        if rnd.random() < 0.5:
            ep.rekey_ike_sa(sa.ike_sa_id, pair.clock)
            sa.rekey_child(child, pair.clock)
        else:
            sa.rekey_child(child, pair.clock)
            ep.rekey_ike_sa(sa.ike_sa_id, pair.clock)
    in_flight: list[tuple[str, Datagram]] = []
    for _ in range(400):
        for name in "ab":
            # A sixth of the datagrams of the first 20 s are lost.
            sent = pair.take(name)
            in_flight += [(name, d) for d in sent if pair.clock > 20 or rnd.random() > 1 / 6]
        rnd.shuffle(in_flight)
        keep = []
        for sender, d in in_flight:
            if rnd.random() < 0.5:
                pair.deliver(sender, d)
            else:
                keep.append((sender, d))  # later, maybe after newer ones
        in_flight = keep
        if not in_flight:
            timers = [t for ep in (pair.a, pair.b) if (t := ep.get_timer()) is not None]
            pair.clock = max(pair.clock, min(timers)) if timers else pair.clock
            for ep in (pair.a, pair.b):
                ep.handle_timer(pair.clock)
        if pair.clock > 300:
            break
    pair.drop = None
    pair.pump()
    pair.advance(60.0)  # backstops: lingering and redundant SAs end
    (sa_a,), (sa_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    assert sa_a.state is sa_b.state is IkeSaState.ESTABLISHED
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    (ca,), (cb,) = sa_a.children.values(), sa_b.children.values()
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert not pair.of("a", IkeSaDeleted) and not pair.of("b", IkeSaDeleted)


def test_requests_on_a_new_ike_sa_wait_until_the_peer_has_it() -> None:
    """We answered the peer's IKE rekey but the answer was lost: our next request waits
    (the peer would drop it, not knowing the SPIs) until the peer shows it has the SA."""
    pair = up(retransmit_timeout=1.0)
    (old_a,), (old_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    pair.b.rekey_ike_sa(old_b.ike_sa_id, pair.clock)
    (request,) = pair.take("b")
    pair.deliver("b", request)
    (lost_answer,) = pair.take("a")  # never delivered
    del lost_answer
    new_a = old_a.rekeyed_into
    assert new_a is not None and new_a.unconfirmed_until is not None
    (child,) = new_a.children
    new_a.rekey_child(child, pair.clock)
    assert pair.take("a") == []  # held back
    pair.advance(5.0)  # b retransmits (after 4 s), gets the cached answer, deletes the old SA
    assert new_a.unconfirmed_until is None
    installed = pair.of("a", ChildSaInstalled)
    assert len(installed) == 2 and installed[1].rekey_of == child
    assert new_a.state is IkeSaState.ESTABLISHED and len(pair.b.ike_sas()) == 1


def test_ike_rekey_crossing_the_peers_ike_delete() -> None:
    """§2.25.2: a rekey of an IKE SA being closed gets TEMPORARY_FAILURE; the rekeying
    side answers the Delete as usual and forgets its rekey. Both end the IKE SA once."""
    pair = up()
    (sa_a,), (sa_b,) = pair.a.ike_sas(), pair.b.ike_sas()
    pair.a.delete(sa_a.ike_sa_id, pair.clock)
    pair.b.rekey_ike_sa(sa_b.ike_sa_id, pair.clock)
    (delete,), (rekey,) = pair.take("a"), pair.take("b")
    pair.deliver("b", rekey)
    (refusal,) = pair.take("a")
    (notify,) = opened(sa_b, refusal).error_notifies()
    assert notify.notify_type == NotifyType.TEMPORARY_FAILURE
    pair.deliver("a", delete)
    pair.deliver("a", refusal)
    pair.pump()
    for name in "ab":
        (gone,) = pair.of(name, IkeSaDeleted)
        assert gone.by_peer is (name == "b")
        assert not pair.of(name, IkeSaRekeyed) and pair.side(name).ike_sas() == []
