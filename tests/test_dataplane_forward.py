"""Forward entries: a data-plane worker's hand-off of packets for a CHILD SA that
another worker holds (the multi-queue TUN gives any worker any flow)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from daemon.childsa import entry_from_event, forward_entry
from daemon.dataplane import DataPlane, Drop
from ikev2.ts import TrafficSelector as IkeTs
from testkit.dataplane import Wire, echo_request, events, ipv4


class Recorder(Wire):
    """A transport that keeps what it is given, and a hand-off that does too."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[tuple[int, list[bytes], bool]] = []
        self.refuse_handoff = False

    def handoff(self, owner: int, packets: list[bytes], partial: bool) -> int:
        if self.refuse_handoff:
            return 0
        self.handed.append((owner, list(packets), partial))
        return len(packets)


def _plane() -> tuple[DataPlane, Recorder]:
    out = Recorder()
    plane = DataPlane(out)
    plane.handoff = out.handoff
    return plane, out


PACKET = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)


def test_forward_entry_hands_packets_to_its_owner_unsealed() -> None:
    plane, out = _plane()
    a, _ = events()
    entry = forward_entry(a, owner=3)
    plane.install_forward(entry)
    plane.from_tun([PACKET, PACKET])
    assert out.handed == [(3, [PACKET, PACKET], False)]
    assert out.sent == []
    assert entry.outbound.packet_count == 0
    assert plane.counters["handed_off"] == 2
    # Its SPI is not ours to open: the kernel steers its ESP to the owner.
    assert plane.sad.lookup(a.spi_in) is None


def test_forward_entry_holds_no_key_and_cannot_seal() -> None:
    a, _ = events()
    entry = forward_entry(a, owner=1)
    assert entry.outbound.encapsulate_parts([PACKET]) == []
    assert entry.mtu == entry_from_event(a).mtu


@pytest.mark.parametrize("own_first", [True, False])
def test_own_sa_beats_a_forward_entry_with_the_same_selectors(own_first: bool) -> None:
    plane, out = _plane()
    a, _ = events(uid=1)
    other, _ = events(uid=2)
    own = entry_from_event(a)
    forward = forward_entry(other, owner=1)
    if own_first:
        plane.install(own)
        plane.install_forward(forward)
    else:
        plane.install_forward(forward)
        plane.install(own)
    plane.from_tun([PACKET])
    assert out.sent == [(1, 1)]
    assert out.handed == []
    # Without the own SA, the forward entry takes the traffic.
    plane.remove(1)
    plane.from_tun([PACKET])
    assert out.handed == [(1, [PACKET], False)]


def test_a_narrower_forward_entry_beats_a_wider_own_sa() -> None:
    plane, out = _plane()
    wide, _ = events(uid=1)
    wide = replace(wide, remote_ts=(IkeTs.from_network("203.0.113.0/24"),))
    narrow, _ = events(uid=2)
    narrow = replace(narrow, remote_ts=(IkeTs.from_network("203.0.113.0/28"),))
    plane.install(entry_from_event(wide))
    plane.install_forward(forward_entry(narrow, owner=0))
    plane.from_tun([PACKET, ipv4("192.0.2.10", "203.0.113.99", echo_request(2), proto=1)])
    assert [owner for owner, _, _ in out.handed] == [0]
    assert out.sent == [(1, 1)]


def test_handed_over_packets_are_sealed_by_the_owner_and_never_go_round() -> None:
    plane, out = _plane()
    a, _ = events(uid=1)
    plane.install(entry_from_event(a))
    plane.from_handoff([PACKET])
    assert out.sent == [(1, 1)]
    plane.remove(1)
    other, _ = events(uid=2)
    plane.install_forward(forward_entry(other, owner=2))
    plane.from_handoff([PACKET])
    assert out.handed == []
    assert plane.drops[Drop.HANDOFF_FAILED.value] == 1


def test_a_refused_handoff_is_counted() -> None:
    plane, out = _plane()
    a, _ = events()
    plane.install_forward(forward_entry(a, owner=1))
    out.refuse_handoff = True
    plane.from_tun([PACKET])
    assert plane.drops[Drop.HANDOFF_FAILED.value] == 1


def test_removing_a_forward_entry_stops_the_handoff() -> None:
    plane, out = _plane()
    a, _ = events()
    plane.install_forward(forward_entry(a, owner=1))
    removed = plane.remove(a.unique_id)
    assert removed is not None and removed.forward_to == 1
    assert plane.forwards == {}
    plane.from_tun([PACKET])
    assert out.handed == []
    assert plane.drops[Drop.NO_POLICY.value] == 1


def test_install_forward_refuses_an_entry_without_owner() -> None:
    plane, _ = _plane()
    a, _ = events()
    with pytest.raises(ValueError, match="owner"):
        plane.install_forward(entry_from_event(a))
