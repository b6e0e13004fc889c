"""The endpoint's cost does not grow with the number of IKE SAs it holds.

Measured by what the endpoint does, never by wall time: `Endpoint.sas_visited` counts
the SAs it collected, and counters on `IkeSa` count how often its per-SA outputs were
asked for. Polling with nothing to do must visit none of a thousand SAs; a timer that
falls due visits only the SAs whose timers are due.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_ikev2_sa import establish
from test_ikev2_sa_pair import Pair, connection

from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint
from ikev2.sa import IkeSa

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
    # Memory per SA: what only IKE_AUTH needed is dropped once it is over.
    pair = Pair.make(connection())
    establish(pair)
    for side in (pair.a, pair.b):
        (sa,) = side.ike_sas()
        assert sa.init_request == b"" and sa.init_response == b"" and sa.ke is None
        assert sa.keys is not None and sa.sk is not None  # what the SA still needs


def test_ike_sa_init_finds_its_connection_among_hundreds_by_peer_address() -> None:
    # A hub with one connection per peer address, and a %any one after them: an
    # IKE_SA_INIT picks the connection of its source address (looked up, not scanned),
    # an unknown address only the %any one.
    hub = "2001:db8:2::1"
    peers = [f"2001:db8:1::{k + 1:x}" for k in range(300)]
    configs = [connection(local=hub, remote=p, name=f"c{k}") for k, p in enumerate(peers)]
    configs.append(connection(local=hub, remote=None, name="any"))
    b = Endpoint(configs, rng=DeterministicRandom(b"hub"))
    for k in (0, 150, 299):
        a = Endpoint([connection(local=peers[k], remote=hub)], rng=DeterministicRandom(b"p"))
        a.initiate("conn", 0.0)
        (request,) = a.datagrams_to_send(0.0)
        b.receive_datagram(request.data, request.remote, request.local, 0.0)
        sa = b.ike_sas()[-1]
        assert sa.config.name == f"c{k}"
        assert [c.name for c in sa.candidates] == [f"c{k}", "any"]
    stranger = Endpoint(
        [connection(local="2001:db8:3::1", remote=hub)], rng=DeterministicRandom(b"s")
    )
    stranger.initiate("conn", 0.0)
    (request,) = stranger.datagrams_to_send(0.0)
    b.receive_datagram(request.data, request.remote, request.local, 0.0)
    assert [c.name for c in b.ike_sas()[-1].candidates] == ["any"]
    # A reload re-indexes: the same address now belongs to another connection name.
    b.set_connections([connection(local=hub, remote=peers[0], name="renamed")])
    a = Endpoint([connection(local=peers[0], remote=hub)], rng=DeterministicRandom(b"q"))
    a.initiate("conn", 0.0)
    (request,) = a.datagrams_to_send(0.0)
    b.receive_datagram(request.data, request.remote, request.local, 0.0)
    assert b.ike_sas()[-1].config.name == "renamed"
