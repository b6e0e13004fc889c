"""Per-resource CHILD SAs (RFC 9611) and the worker rule `spi_in % resources`.

Two endpoints in memory: with `resources` above 1 on both, every exchange that
creates a CHILD SA carries SA_RESOURCE_INFO, the initiator asks for one CHILD SA per
worker with the negotiated selectors, and the peer's TS_MAX_QUEUE ends that quietly;
each inbound SPI falls in its worker, and a rekey keeps it there. With 1 nothing
changes on the wire. No network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

import pytest

from ikev2.codec import Message, Notify
from ikev2.constants import ExchangeType, NotifyType
from ikev2.endpoint import EndpointConfig
from ikev2.errors import LocalProtocolError, TemporaryFailure
from ikev2.events import ChildSaDeleted, ChildSaFailed, ChildSaInstalled
from ikev2.sa import IkeSa
from ikev2.sa_types import ChildSa
from ikev2.tasks.base import Exchange, TaskSa
from ikev2.tasks.child_rekey import REKEY_RETRY_AFTER, AnswerCreateChild, CreateChild
from ikev2.tasks.resources import inbound_spi
from testkit.ikev2_pair import Pair, child, connection, mirrored

AUTH = ExchangeType.IKE_AUTH
CREATE = ExchangeType.CREATE_CHILD_SA


def _up(a: int, b: int, **kw: object) -> Pair:
    conn = connection(**kw)  # type: ignore[arg-type]
    pair = Pair.make(
        conn,
        mirrored(conn),
        configs=(EndpointConfig(resources=a), EndpointConfig(resources=b)),
    )
    pair.a.initiate("conn", 0.0)
    pair.pump()
    return pair


def _only_sa(pair: Pair, side: str) -> IkeSa:
    (sa,) = pair.side(side).ike_sas()
    return sa


def _opened(pair: Pair, sender: str, exchange: int, *, request: bool) -> list[Message]:
    """The messages `sender` sent of one exchange type, decrypted by the receiver."""
    receiver = _only_sa(pair, "b" if sender == "a" else "a")
    assert receiver.sk is not None
    sent = pair.requests(sender, exchange) if request else pair.responses(sender, exchange)
    return [receiver.sk.inbound.open(s.ike) for s in sent]


def _resource_info(message: Message) -> list[Notify]:
    return [
        p
        for p in message.payloads
        if isinstance(p, Notify) and p.notify_type == NotifyType.SA_RESOURCE_INFO
    ]


def _installed(pair: Pair, side: str) -> list[ChildSaInstalled]:
    return pair.of(side, ChildSaInstalled)  # type: ignore[no-any-return]


def _live(pair: Pair, side: str) -> list[ChildSaInstalled]:
    gone = {e.unique_id for e in pair.of(side, ChildSaDeleted)}
    return [e for e in _installed(pair, side) if e.unique_id not in gone]


def test_two_workers_on_both_sides_make_one_child_sa_pair_per_worker() -> None:
    pair = _up(2, 2)
    for side in ("a", "b"):
        installed = _installed(pair, side)
        assert len(installed) == 2
        assert sorted(e.spi_in % 2 for e in installed) == [0, 1]
        assert all(e.per_resource for e in installed)
        assert all(e.rekey_of is None for e in installed)
        first, second = installed
        assert (first.local_ts, first.remote_ts) == (second.local_ts, second.remote_ts)
    # The pairs match: each of a's outbound SPIs is one of b's inbound ones.
    a, b = _installed(pair, "a"), _installed(pair, "b")
    assert {e.spi_out for e in a} == {e.spi_in for e in b}
    assert {e.spi_in for e in a} == {e.spi_out for e in b}
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)


def test_the_notify_is_on_the_wire_of_every_exchange_that_creates_one() -> None:
    pair = _up(2, 2)
    (auth_request,) = _opened(pair, "a", AUTH, request=True)
    (auth_response,) = _opened(pair, "b", AUTH, request=False)
    (create_request,) = _opened(pair, "a", CREATE, request=True)
    (create_response,) = _opened(pair, "b", CREATE, request=False)
    for message in (auth_request, auth_response, create_request, create_response):
        (notify,) = _resource_info(message)
        assert notify.data == b""  # the Resource Identifier is optional (RFC 9611)


def test_one_worker_sends_no_resource_info_and_keeps_one_child_sa() -> None:
    children = (child("one"), child("two", local="198.51.100.64/26", remote="203.0.113.64/26"))
    pair = _up(1, 1, children=children)
    installed = _installed(pair, "a") + _installed(pair, "b")
    assert sorted(e.child for e in installed) == ["one", "one", "two", "two"]
    assert not any(e.per_resource for e in installed)
    first = next(e for e in _installed(pair, "a") if e.child == "one")
    pair.a.rekey_child(first.unique_id, pair.clock)
    pair.pump()
    assert len(_installed(pair, "a")) == 3
    # IKE_AUTH, the second configuration's CREATE_CHILD_SA and a rekey: none says it.
    messages = _opened(pair, "a", AUTH, request=True) + _opened(pair, "b", AUTH, request=False)
    messages += _opened(pair, "a", CREATE, request=True)
    messages += _opened(pair, "b", CREATE, request=False)
    assert len(messages) == 6
    assert not any(_resource_info(m) for m in messages)


@pytest.mark.parametrize(("a", "b"), [(2, 1), (1, 2)])
def test_a_peer_without_resources_gets_one_child_sa_and_no_error(a: int, b: int) -> None:
    pair = _up(a, b)
    (ia,) = _installed(pair, "a")
    (ib,) = _installed(pair, "b")
    assert not ia.per_resource and not ib.per_resource
    assert not pair.requests("a", CREATE) and not pair.requests("b", CREATE)
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)
    # The side with one worker answers nothing of it, the other still uses worker 0.
    (auth_request,) = _opened(pair, "a", AUTH, request=True)
    (auth_response,) = _opened(pair, "b", AUTH, request=False)
    assert bool(_resource_info(auth_request)) is (a > 1)
    assert bool(_resource_info(auth_response)) is (b > 1)


def test_ts_max_queue_ends_the_group_quietly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ikev2")
    pair = _up(3, 2)
    assert len(_installed(pair, "a")) == 2
    assert len(_installed(pair, "b")) == 2
    assert sorted(e.spi_in % 3 for e in _installed(pair, "a")) == [0, 1]
    assert sorted(e.spi_in % 2 for e in _installed(pair, "b")) == [0, 1]
    # a asked for a third; b refused it with TS_MAX_QUEUE and nothing was retried.
    requests = _opened(pair, "a", CREATE, request=True)
    responses = _opened(pair, "b", CREATE, request=False)
    assert len(requests) == 2
    assert [n.notify_type for n in responses[-1].error_notifies()] == [NotifyType.TS_MAX_QUEUE]
    assert not pair.of("a", ChildSaFailed) and not pair.of("b", ChildSaFailed)
    assert "TS_MAX_QUEUE" in caplog.text and "2 of 3 workers" in caplog.text
    pair.advance(60.0)
    assert len(pair.requests("a", CREATE)) == 2


def _refuse_first_create_child(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """b answers the first CREATE_CHILD_SA with TEMPORARY_FAILURE (RFC 7296 §2.25),
    as it would while an IKE rekey is under way."""
    refused: list[bool] = []
    original = AnswerCreateChild._process

    def once(self: AnswerCreateChild, sa: TaskSa, message: Message) -> None:
        if not refused:
            refused.append(True)
            raise TemporaryFailure("busy for now")
        original(self, sa, message)

    monkeypatch.setattr(AnswerCreateChild, "_process", once)
    return refused


def test_a_temporary_failure_asks_for_the_sa_again_later(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ikev2")
    refused = _refuse_first_create_child(monkeypatch)
    pair = _up(2, 2)
    assert refused and len(_installed(pair, "a")) == 1  # short for now
    assert "TEMPORARY_FAILURE" in caplog.text and "1 of 2 workers" in caplog.text
    assert not pair.of("a", ChildSaFailed)
    pair.advance(REKEY_RETRY_AFTER * 1.5 + 1.0)  # the latest a randomised retry comes
    assert len(pair.requests("a", CREATE)) == 2
    for side in ("a", "b"):
        assert sorted(e.spi_in % 2 for e in _installed(pair, side)) == [0, 1]
    pair.advance(60.0)
    assert len(pair.requests("a", CREATE)) == 2  # complete: nothing more asked


def test_a_retry_pending_at_an_ike_rekey_goes_on_the_new_ike_sa(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _refuse_first_create_child(monkeypatch)
    pair = _up(2, 2)
    old = _only_sa(pair, "a")
    assert len(old.resource_retries) == 1
    old.rekey_ike(pair.clock)
    pair.pump()
    new = _only_sa(pair, "a")
    assert new is not old and new.resource_retries and not old.resource_retries
    pair.advance(REKEY_RETRY_AFTER * 1.5 + 1.0)
    assert sorted(e.spi_in % 2 for e in _live(pair, "a")) == [0, 1]
    assert len(new.children) == 2


def test_the_side_that_asks_stops_at_its_own_worker_count() -> None:
    pair = _up(2, 3)
    assert sorted(e.spi_in % 2 for e in _installed(pair, "a")) == [0, 1]
    # b's first SA took a random index of its 3, the second the lowest one left free.
    assert len({e.spi_in % 3 for e in _installed(pair, "b")}) == 2
    assert len(pair.requests("a", CREATE)) == 1 and not pair.requests("b", CREATE)
    assert not any(m.error_notifies() for m in _opened(pair, "b", CREATE, request=False))


def test_a_rekey_stays_in_its_worker() -> None:
    pair = _up(2, 2)
    for rekeyer in ("a", "b"):
        for old in list(_live(pair, rekeyer)):
            pair.side(rekeyer).rekey_child(old.unique_id, pair.clock)
            pair.pump()
            (new,) = [e for e in _installed(pair, rekeyer) if e.rekey_of == old.unique_id]
            assert new.spi_in % 2 == old.spi_in % 2
            assert new.per_resource
            (peer_new,) = [e for e in _installed(pair, "b" if rekeyer == "a" else "a")
                           if e.spi_out == new.spi_in]  # fmt: skip
            assert peer_new.per_resource
    for side in ("a", "b"):
        live = _live(pair, side)
        assert sorted(e.spi_in % 2 for e in live) == [0, 1]
    # A rekey does not say SA_RESOURCE_INFO again (it inherits it).
    requests = _opened(pair, "a", CREATE, request=True)
    rekeys = [m for m in requests if m.notify(NotifyType.REKEY_SA) is not None]
    assert len(rekeys) == 2 and not any(_resource_info(m) for m in rekeys)
    # b answered the group's second SA with it, and none of a's rekeys.
    answers = _opened(pair, "b", CREATE, request=False)
    assert [bool(_resource_info(m)) for m in answers] == [True, False, False]


def test_child_sas_rekey_on_their_own_timers_and_keep_their_worker() -> None:
    pair = _up(2, 2, children=(child(lifetime=600.0, rekey_margin=120.0),))
    before = {e.unique_id: e.spi_in % 2 for e in _installed(pair, "a")}
    pair.advance(600.0)
    rekeyed = [e for e in _installed(pair, "a") if e.rekey_of in before]
    assert {e.rekey_of for e in rekeyed} == set(before)
    assert all(e.spi_in % 2 == before[e.rekey_of] for e in rekeyed if e.rekey_of is not None)
    assert sorted(e.spi_in % 2 for e in _live(pair, "a")) == [0, 1]


def test_the_group_survives_an_ike_rekey() -> None:
    pair = _up(2, 2)
    (old,) = pair.a.ike_sas()
    pair.a.rekey_ike_sa(old.ike_sa_id, pair.clock)
    pair.pump()
    (new,) = pair.a.ike_sas()
    assert new.ike_sa_id != old.ike_sa_id
    assert all(c.per_resource for c in new.children.values())
    for c in list(new.children.values()):
        pair.a.rekey_child(c.unique_id, pair.clock)
        pair.pump()
    live = _live(pair, "a")
    assert sorted(e.spi_in % 2 for e in live) == [0, 1]
    assert all(e.per_resource and e.rekey_of is not None for e in live)
    # No further SA was asked for: the two of the group, then only rekeys.
    assert len([e for e in _installed(pair, "a") if e.rekey_of is None]) == 2


def test_the_group_with_additional_key_exchanges() -> None:
    # RFC 9370: each new SA of the group is made after its IKE_FOLLOWUP_KE.
    pfs = child(esp_proposals=("aes256gcm16-x25519-ke1_mlkem768",))
    pair = _up(2, 2, children=(pfs,))
    assert pair.requests("a", ExchangeType.IKE_FOLLOWUP_KE)
    for side in ("a", "b"):
        assert sorted(e.spi_in % 2 for e in _installed(pair, side)) == [0, 1]
        assert all(e.per_resource for e in _installed(pair, side))


def test_each_child_configuration_gets_its_own_group() -> None:
    children = (child("one"), child("two", local="198.51.100.64/26", remote="203.0.113.64/26"))
    pair = _up(2, 2, children=children)
    for side in ("a", "b"):
        by_name: dict[str, list[int]] = {}
        for e in _installed(pair, side):
            by_name.setdefault(e.child, []).append(e.spi_in % 2)
        assert {name: sorted(i) for name, i in by_name.items()} == {"one": [0, 1], "two": [0, 1]}


def test_a_request_beyond_our_workers_is_refused_with_ts_max_queue() -> None:
    pair = _up(2, 2)
    sa = _only_sa(pair, "a")
    (first, _) = sorted(sa.children.values(), key=lambda c: c.unique_id)
    # One more of the group, as a peer with more workers would ask: b has both.
    sa.request_resource_sa(first)  # nothing: a has one per worker already
    pair.pump()
    assert len(pair.requests("a", CREATE)) == 1
    sa.tm.queue(_another(first))
    sa.send_next(pair.clock)
    pair.pump()
    (*_, refusal) = _opened(pair, "b", CREATE, request=False)
    assert [n.notify_type for n in refusal.error_notifies()] == [NotifyType.TS_MAX_QUEUE]
    assert len(_installed(pair, "a")) == 2 and len(_installed(pair, "b")) == 2
    assert not pair.of("b", ChildSaFailed) and not pair.of("a", ChildSaFailed)


def _another(like: ChildSa) -> Exchange:
    """A request for one more CHILD SA of `like`'s group, whether or not we want one."""
    return Exchange(CREATE, [CreateChild(like.config, like=(like.local_ts, like.remote_ts))])


def test_the_rekey_entry_point_replaces_an_additional_sa_in_its_worker() -> None:
    # What the daemon does when a worker died: rekey that worker's SAs, which keep it.
    pair = _up(2, 2)
    additional = next(e for e in _installed(pair, "a") if e.spi_in % 2 == 1)
    started = pair.a.rekey_connection("conn", pair.clock)
    assert started == 2
    pair.pump()
    (new,) = [e for e in _installed(pair, "a") if e.rekey_of == additional.unique_id]
    assert new.spi_in % 2 == 1 and new.per_resource
    pair.a.rekey_child(new.unique_id, pair.clock)
    pair.pump()
    (newer,) = [e for e in _installed(pair, "a") if e.rekey_of == new.unique_id]
    assert newer.spi_in % 2 == 1
    assert additional.unique_id in {e.unique_id for e in pair.of("a", ChildSaDeleted)}


def test_deleting_the_ike_sa_deletes_every_child_sa_of_the_group() -> None:
    pair = _up(2, 2)
    (sa,) = pair.a.ike_sas()
    pair.a.delete(sa.ike_sa_id, pair.clock)
    pair.pump()
    for side in ("a", "b"):
        deleted = {e.unique_id for e in pair.of(side, ChildSaDeleted)}
        assert deleted == {e.unique_id for e in _installed(pair, side)}


def test_deleting_each_child_sa_of_the_group_asks_for_none_again() -> None:
    # `lockgate down` of one connection of a peer: a delete of each of its CHILD SAs.
    pair = _up(2, 2)
    for e in _installed(pair, "a"):
        pair.a.delete_child(e.unique_id, pair.clock)
    pair.pump()
    pair.advance(60.0)
    assert not _live(pair, "a") and not _live(pair, "b")
    assert len(pair.requests("a", CREATE)) == 1


def test_a_child_sa_the_peer_deletes_is_not_asked_for_again() -> None:
    pair = _up(2, 2)
    additional = next(e for e in _installed(pair, "b") if e.spi_in % 2 == 1)
    pair.b.delete_child(additional.unique_id, pair.clock)
    pair.pump()
    pair.advance(60.0)
    assert len(pair.requests("a", CREATE)) == 1
    assert sorted(e.spi_in % 2 for e in _live(pair, "a")) == [0]


def test_inbound_spis_fall_in_their_worker_for_many_resource_counts() -> None:
    for n in (2, 3, 4, 7, 16):
        pair = _up(n, n)
        for side in ("a", "b"):
            installed = _installed(pair, side)
            assert sorted(e.spi_in % n for e in installed) == list(range(n))
            assert all(255 < e.spi_in <= 0xFFFFFFFF for e in installed)
            assert len({e.spi_in for e in installed}) == n


def test_resources_must_be_positive() -> None:
    with pytest.raises(LocalProtocolError, match="resources"):
        EndpointConfig(resources=0)


@dataclass
class _Scripted:
    """Just what `inbound_spi` reads of an IKE SA, with random octets the test picks."""

    resources: int
    draws: list[int]
    spis_in_use: set[int] = field(default_factory=set)
    children: dict[int, ChildSa] = field(default_factory=dict)

    @property
    def rng(self) -> _Scripted:
        return self

    def token_bytes(self, n: int) -> bytes:
        return self.draws.pop(0).to_bytes(n, "big")


def test_a_spi_for_a_worker_is_never_reserved_nor_one_in_use() -> None:
    config = child()
    # The first SA: its index drawn first (8: worker 0 of 4); then 5 gives 4
    # (reserved), 0x1235 gives 0x1234 (in use), then 0x5678.
    fake = _Scripted(4, [8, 5, 0x1235, 0x5679, 0x9999], spis_in_use={0x1234})
    assert int.from_bytes(inbound_spi(cast(TaskSa, fake), config), "big") == 0x5678
    assert fake.draws == [0x9999]
    # Worker 2 of 3 (0 and 1 taken): the top draw would pass 2**32 - 1, so it steps down.
    taken = {i: SimpleNamespace(config=config, deleting=False, spi_in=300 + i, local_ts=(),
                                remote_ts=()) for i in range(2)}  # fmt: skip
    fake = _Scripted(3, [0xFFFFFFFF], children=cast(dict[int, ChildSa], taken))
    assert int.from_bytes(inbound_spi(cast(TaskSa, fake), config), "big") == 0xFFFFFFFE


def test_the_endpoint_knows_every_inbound_spi_in_use() -> None:
    pair = _up(2, 2)
    for side in ("a", "b"):
        (sa,) = pair.side(side).ike_sas()
        assert sa.spis_in_use == {e.spi_in for e in _installed(pair, side)}
    (sa,) = pair.a.ike_sas()
    pair.a.delete(sa.ike_sa_id, pair.clock)
    pair.pump()
    assert not sa.spis_in_use


def test_the_first_sa_of_a_configuration_takes_a_drawn_worker() -> None:
    # Peers that stay at one SA must not all land on worker 0: the first SA's index
    # is drawn (7 % 4 = 3), its SPI then drawn in that worker's class.
    fake = _Scripted(4, [7, 0x10000], spis_in_use=set())
    assert int.from_bytes(inbound_spi(cast(TaskSa, fake), child()), "big") % 4 == 3
