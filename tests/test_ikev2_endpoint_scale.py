"""The endpoint's cost does not grow with the number of IKE SAs it holds.

Measured by what the endpoint does, never by wall time: `Endpoint.sas_visited` counts
the SAs it collected, and counters on `IkeSa` count how often its per-SA outputs were
asked for. Polling with nothing to do must visit none of a thousand SAs; a timer that
falls due visits only the SAs whose timers are due.
"""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ikev2.config import Identity
from ikev2.cookies import CookiePolicy
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint, EndpointConfig
from ikev2.sa import IkeSa
from ikev2.sa_types import IkeDropReason, IkeSaState
from testkit.ikev2_pair import (
    A_NET,
    B_ADDR,
    B_NET,
    Pair,
    child,
    connection,
    deliver,
    establish,
    on_wire,
)

COUNT = 1000
SPACING = 0.001
"""SA i is initiated at i * SPACING, so their retransmission timers are staggered."""
FIRST_WAIT = 4.0
"""The first retransmission of IKE_SA_INIT (RetransmitPolicy default)."""


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """How often any IkeSa was asked for its timer, datagrams or events."""
    counter: Counter[str] = Counter()
    for name in ("get_timer", "datagrams_to_send", "next_event", "handle_timer"):
        original: Callable[..., Any] = getattr(IkeSa, name)

        def counted(self: IkeSa, *args: Any, _f: Any = original, _n: str = name) -> Any:
            counter[_n] += 1
            return _f(self, *args)

        monkeypatch.setattr(IkeSa, name, counted)
    yield counter


def _thousand_initiated() -> Endpoint:
    """An endpoint with COUNT IKE SAs waiting for their IKE_SA_INIT answers."""
    endpoint = Endpoint([connection()], rng=DeterministicRandom(b"scale"))
    for i in range(COUNT):
        endpoint.initiate("conn", i * SPACING)
    assert len(endpoint.datagrams_to_send(COUNT * SPACING)) == COUNT
    assert endpoint.next_event() is None
    return endpoint


def test_idle_polling_visits_none_of_a_thousand_sas(calls: Counter[str]) -> None:
    endpoint = _thousand_initiated()
    assert len(endpoint.ike_sas()) == COUNT
    visited, before = endpoint.sas_visited, calls.copy()
    now = 2.0
    for _ in range(100):
        # What the daemon's service routine does on every datagram and timer.
        timer = endpoint.get_timer()
        assert timer == FIRST_WAIT  # SA 0's retransmission, the earliest of all
        endpoint.handle_timer(now)
        assert endpoint.datagrams_to_send(now) == []
        assert endpoint.next_event() is None
    assert endpoint.sas_visited == visited
    assert calls == before


def test_due_timers_visit_only_the_due_sas(calls: Counter[str]) -> None:
    endpoint = _thousand_initiated()
    visited = endpoint.sas_visited
    calls.clear()
    due = 5  # SAs 0..4 retransmit by this time; the other 995 are not due
    now = FIRST_WAIT + (due - 0.5) * SPACING
    endpoint.handle_timer(now)
    resent = endpoint.datagrams_to_send(now)
    assert len(resent) == due
    assert endpoint.sas_visited - visited == due
    assert calls["handle_timer"] == due
    # The next timer is SA 5's first retransmission; SA 0's second one waits longer.
    assert endpoint.get_timer() == pytest.approx(FIRST_WAIT + due * SPACING)


def test_timer_heap_agrees_with_every_sas_own_timer_through_rekeys() -> None:
    # The heap is only a cache of the SAs' own timers: after establishment, CHILD and
    # IKE rekeys (CHILD SAs move between IKE SAs) and a delete, it must still name
    # the earliest of them.
    conn = connection(dpd_interval=0.0)
    pair = Pair.make(conn)
    establish(pair)
    for side in (pair.a, pair.b):
        assert side.get_timer() == min(t for sa in side.ike_sas() if (t := sa.get_timer()))
    (sa_a,) = pair.a.ike_sas()
    pair.a.rekey_ike_sa(sa_a.ike_sa_id, pair.clock)
    pair.pump()
    (child,) = next(iter(pair.a.ike_sas())).children.values()
    pair.a.rekey_child(child.unique_id, pair.clock)
    pair.pump()
    for side in (pair.a, pair.b):
        timers = [t for sa in side.ike_sas() if (t := sa.get_timer()) is not None]
        assert timers and side.get_timer() == min(timers)
        # The CHILD SA index follows the CHILD SAs to the IKE SA that now holds them.
        for sa in side.ike_sas():
            for unique_id in sa.children:
                side.delete_child(unique_id, pair.clock)
    pair.pump()
    assert all(not sa.children for side in (pair.a, pair.b) for sa in side.ike_sas())


def test_connection_index_counts_ike_sas_without_a_scan() -> None:
    endpoint = _thousand_initiated()
    assert endpoint.ike_sa_count("conn") == COUNT
    assert endpoint.ike_sa_count("other") == 0
    first = endpoint.ike_sas_of("conn")[0]
    endpoint.delete(first.ike_sa_id, 3.0)
    assert endpoint.ike_sa_count("conn") == COUNT - 1
    assert endpoint.delete_connection("conn", 3.0) == COUNT - 1
    assert endpoint.ike_sa_count("conn") == 0 and endpoint.get_timer() is None


def test_established_sas_keep_no_ike_sa_init_messages_or_private_key() -> None:
    # Memory per SA: what only IKE_AUTH needed is dropped once it is over (RFC 7296
    # §2.15: the IKE_SA_INIT messages, nonces and SK_pi/SK_pr sign the AUTH payloads).
    pair = Pair.make(connection())
    establish(pair)
    for side in (pair.a, pair.b):
        (sa,) = side.ike_sas()
        assert sa.init_request == b"" and sa.init_response == b"" and sa.ke is None
        assert sa.nonce_i == b"" and sa.nonce_r == b"" and sa.cookie == b""
        assert sa.keys is not None and sa.keys.sk_pi == b"" and sa.keys.sk_pr == b""
        assert sa.keys.sk_d and sa.sk is not None  # what the SA still needs
        assert not hasattr(sa, "__dict__")  # slots: no per-SA dict
    # What stays is enough for the SA's later life: a retransmitted IKE_AUTH request
    # answered from the cached response (§2.1), a CHILD SA rekey and an IKE rekey.
    (auth_request,) = [s for s in pair.wire if s.sender == "a"][-1:]
    deliver(
        pair.b,
        auth_request.payload,
        auth_request.datagram.remote,
        auth_request.datagram.local,
        pair.clock,
    )
    assert len(pair.b.datagrams_to_send(pair.clock)) == 1
    assert pair.b.drops == {IkeDropReason.RETRANSMIT_ANSWERED: 1}
    (sa_a,) = pair.a.ike_sas()
    (old_child,) = sa_a.children.values()
    pair.a.rekey_child(old_child.unique_id, pair.clock)
    pair.pump()
    (new_child,) = next(iter(pair.a.ike_sas())).children.values()
    assert new_child.unique_id != old_child.unique_id
    pair.a.rekey_ike_sa(sa_a.ike_sa_id, pair.clock)
    pair.pump()
    pair.advance(60.0)
    (new_a,) = pair.a.ike_sas()
    assert new_a.ike_sa_id != sa_a.ike_sa_id and new_a.state is IkeSaState.ESTABLISHED
    assert list(new_a.children) == [new_child.unique_id]


def test_memory_per_responder_sa_stays_small() -> None:
    # A generous bound on what one responder IKE SA + CHILD SA keeps in the IKE core
    # (about 5-6 KiB measured here; 9 KiB before slots and the post-AUTH trimming): it
    # catches a per-SA object growing a dict or a deque back, or a message kept.
    count = 200
    responder = dataclasses.replace(
        connection(local=B_ADDR, remote=None, children=(child(local=B_NET, remote=A_NET),)),
        remote_id=None,  # any identity
    )
    initiators = [
        dataclasses.replace(connection(name=f"p{i}"), local_id=Identity.parse(f"i{i}.example"))
        for i in range(count)
    ]
    a = Endpoint(initiators, rng=DeterministicRandom(b"mem-a"))
    b = Endpoint(
        [responder],
        rng=DeterministicRandom(b"mem-b"),
        config=EndpointConfig(max_half_open=10 * count, cookies=CookiePolicy(10 * count)),
    )
    for i in range(count):
        a.initiate(f"p{i}", 0.0)
    gc.collect()
    tracemalloc.start()  # A's SAs, made above, are not traced
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(4):  # IKE_SA_INIT and IKE_AUTH, both ways, and a spare round
            for d in a.datagrams_to_send(0.0):
                deliver(b, on_wire(d), d.remote, d.local, 0.0)
            for d in b.datagrams_to_send(0.0):
                deliver(a, on_wire(d), d.remote, d.local, 0.0)
            list(a.events())
            list(b.events())
        assert sum(len(sa.children) for sa in b.ike_sas()) == count
        del a, d  # what A allocated meanwhile goes with it: the rest is B's
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / count < 8 * 1024
