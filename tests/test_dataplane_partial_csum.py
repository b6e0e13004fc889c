"""Partial TCP checksums between two lockgates, through two data planes and the ESP
engine, in memory: the segments of a kernel super-packet leave with the kernel's
pseudo-header sum and arrive marked for the TUN writer, everything else arrives as
before, a tampered packet fails the ICV, and TSO is wanted on a TUN only while
every CHILD SA it sends into has the agreement."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from daemon.childsa import entry_from_event
from daemon.dataplane import DataPlane
from daemon.offload import TUN_OFFLOADS, OffloadMode, offload_mode
from daemon.pump import Pump
from testkit.dataplane import Wire, events, ipv4, tcp_super_frame
from tun import MemoryTun, Offload, memory_tun_pair
from tun.vnet import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    PLAIN_HEADER,
    VNET_HDR_LEN,
    VnetHeader,
    complete_partial_tcp,
    split_frame,
    split_frame_partial,
)


@dataclass
class Gateways:
    a: DataPlane
    b: DataPlane
    wire_a: Wire
    wire_b: Wire

    def a_to_b(self) -> list[tuple[bytes, bool]]:
        """Deliver what A sent to B: each packet B wrote, and whether it was marked."""
        self.wire_b.written.clear()
        self.b.from_esp(self.wire_a.esp)
        self.wire_a.esp = []
        out = []
        for packets, _, partial in self.wire_b.written:
            out += [(p, i in partial) for i, p in enumerate(packets)]
        return out


def gateways(*, a_agrees: bool = True, b_agrees: bool = True) -> Gateways:
    ev_a, ev_b = events("aes128gcm16", udp=True, partial_csum=True)
    wire_a, wire_b = Wire(), Wire()
    a, b = DataPlane(wire_a), DataPlane(wire_b)
    entry_a, entry_b = entry_from_event(ev_a), entry_from_event(ev_b)
    # What each side took from IKE_SA_INIT: the sender's outbound choice and the
    # receiver's inbound one are each side's own.
    entry_a.partial_csum = a_agrees
    entry_b.partial_csum = entry_b.inbound.partial_csum = b_agrees
    a.install(entry_a)
    b.install(entry_b)
    return Gateways(a, b, wire_a, wire_b)


def test_kernel_segments_arrive_marked_with_the_kernels_pseudo_header_sum() -> None:
    gw = gateways()
    frame = tcp_super_frame(5500)
    segments, partial = split_frame_partial(frame)
    assert partial
    gw.a.from_tun_segments(segments, partial)
    arrived = gw.a_to_b()
    assert arrived == [(s, True) for s in segments]
    # Completed by the receiving kernel, they are the segments cut the slow way.
    assert [complete_partial_tcp(p) for p, _ in arrived] == split_frame(frame)
    assert gw.a.counters["partial_segments_sent"] == len(segments) == 6
    assert gw.b.counters["partial_segments_received"] == len(segments)


def test_single_packets_and_full_segments_arrive_unmarked_in_order() -> None:
    gw = gateways()
    ack = ipv4("192.0.2.10", "203.0.113.10", bytes(20), proto=6)
    full = split_frame(tcp_super_frame(2500))
    gw.a.from_tun([ack])
    gw.a.from_tun_segments(full)
    segments, _ = split_frame_partial(tcp_super_frame(2500))
    gw.a.from_tun_segments(segments, True)
    gw.a.from_tun([ack])
    arrived = gw.a_to_b()
    expected = [(ack, False), *((s, False) for s in full), *((s, True) for s in segments)]
    assert arrived == [*expected, (ack, False)]


def test_a_peer_without_the_agreement_gets_full_checksums() -> None:
    gw = gateways(a_agrees=False, b_agrees=False)
    frame = tcp_super_frame(3000, v6=True)
    segments, partial = split_frame_partial(frame)
    assert partial
    gw.a.from_tun_segments(segments, partial)
    assert gw.a_to_b() == [(s, False) for s in split_frame(frame)]
    assert gw.a.counters["partial_segments_sent"] == 0


def test_the_first_super_packet_of_a_flow_finds_its_sa_without_a_cached_lookup() -> None:
    gw = gateways()
    assert not gw.a._outbound_cache
    segments, _ = split_frame_partial(tcp_super_frame(2100))
    gw.a.from_tun_segments(segments, True)
    assert [marked for _, marked in gw.a_to_b()] == [True] * 3


def test_a_tampered_marked_packet_fails_the_icv_and_is_not_written() -> None:
    gw = gateways()
    segments, _ = split_frame_partial(tcp_super_frame(3000))
    gw.a.from_tun_segments(segments, True)
    victim = bytearray(gw.wire_a.esp[1])
    victim[-17] ^= 0x01  # the Next Header, under the ICV
    gw.wire_a.esp[1] = bytes(victim)
    arrived = gw.a_to_b()
    assert arrived == [(segments[0], True), (segments[2], True)]
    assert gw.b.total_drops()["icv_failure"] == 1


def test_a_receiver_that_did_not_agree_drops_marked_packets() -> None:
    gw = gateways(a_agrees=True, b_agrees=False)
    segments, _ = split_frame_partial(tcp_super_frame(3000))
    gw.a.from_tun_segments(segments, True)
    assert gw.a_to_b() == []
    assert gw.b.total_drops()["bad_next_header"] == len(segments)


def test_tso_is_wanted_only_while_every_sa_of_a_tun_agrees() -> None:
    plane = DataPlane(Wire())
    told: list[tuple[str | None, bool]] = []
    plane.on_tso = lambda interface, on: told.append((interface, on))
    agreed_a, _ = events(uid=1, partial_csum=True)
    plain_a, _ = events(uid=2)
    agreed = entry_from_event(agreed_a)
    plain = entry_from_event(plain_a)
    plane.install(agreed)
    assert told == [(None, True)] and plane.tso_wanted(None)
    plane.install(plain)
    assert told[-1] == (None, False) and not plane.tso_wanted(None)
    plane.remove(plain.unique_id)
    assert told[-1] == (None, True)
    plane.remove(agreed.unique_id)
    assert told[-1] == (None, False) and len(told) == 4
    # A route-mode TUN is its own: its SAs do not count for the gateway's TUN.
    routed = entry_from_event(events(uid=3, partial_csum=True)[0])
    routed.interface = "lgroute0"
    plane.install(routed)
    assert told[-1] == ("lgroute0", True) and not plane.tso_wanted(None)


# ---- the pump's side: TUN writes and the TSO switch ------------------------------------


@pytest.fixture
def tuns() -> Iterator[tuple[MemoryTun, MemoryTun]]:
    near, far = memory_tun_pair("lgpartial")
    try:
        yield near, far
    finally:
        near.close()
        far.close()


def test_marked_segments_are_written_for_the_kernel_to_complete(
    tuns: tuple[MemoryTun, MemoryTun],
) -> None:
    near, far = tuns
    near.vnet_hdr = True  # type: ignore[attr-defined]
    pump = Pump(near)
    segments, _ = split_frame_partial(tcp_super_frame(2200))
    other = ipv4("192.0.2.10", "203.0.113.10", bytes(20), proto=6)
    # A flow's marked segments coalesce into one super-packet; a marked segment
    # alone goes with F_NEEDS_CSUM at the TCP checksum; an unmarked one as today.
    packets = [*segments, segments[0], other]
    assert pump.write_tun(packets, partial=[0, 1, 2, 3]) == 5
    merged, alone, plain = far.read_batch()
    header = VnetHeader.decode(merged)
    assert (header.flags, header.gso_type, header.gso_size) == (F_NEEDS_CSUM, GSO_TCPV4, 1000)
    assert VnetHeader.decode(alone) == VnetHeader(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16)
    assert alone[VNET_HDR_LEN:] == segments[0]
    assert plain == PLAIN_HEADER + other


def test_a_tun_without_virtio_net_headers_gets_the_checksums_computed(
    tuns: tuple[MemoryTun, MemoryTun],
) -> None:
    near, far = tuns
    pump = Pump(near)
    frame = tcp_super_frame(2200)
    segments, _ = split_frame_partial(frame)
    assert pump.write_tun([*segments], partial=[0, 1, 2]) == 3
    assert far.read_batch() == split_frame(frame)


class OffloadRecorder:
    """A TUN device stand-in that records TUNSETOFFLOAD calls."""

    name = "lgrec0"
    vnet_hdr = True

    def __init__(self) -> None:
        self.calls: list[Offload] = []

    def set_offload(self, offload: Offload) -> None:
        self.calls.append(offload)


@pytest.mark.parametrize("auto", [True, False], ids=["tso-auto", "fixed"])
def test_the_pump_switches_tso_as_the_data_plane_asks_only_in_auto_mode(auto: bool) -> None:
    device = OffloadRecorder()
    pump = Pump(device)  # type: ignore[arg-type]
    pump.tso_auto = auto
    entry = entry_from_event(events(partial_csum=True)[0])
    pump.plane.install(entry)
    pump.plane.remove(entry.unique_id)
    assert device.calls == ([TUN_OFFLOADS, Offload(0)] if auto else [])


@pytest.mark.parametrize("agreed", [True, False], ids=["agreed", "not-agreed"])
def test_route_mode_tuns_send_and_write_marked_segments(agreed: bool) -> None:
    ev_a, ev_b = events(partial_csum=agreed)
    wire_a, wire_b = Wire(), Wire()
    a, b = DataPlane(wire_a), DataPlane(wire_b)
    entry_a, entry_b = entry_from_event(ev_a), entry_from_event(ev_b)
    entry_a.interface, entry_b.interface = "lgroute0", "lgroute1"
    a.install(entry_a)
    b.install(entry_b)
    frame = tcp_super_frame(2500)
    segments, _ = split_frame_partial(frame)
    a.from_route_tun("lgroute0", segments, True)
    b.from_esp(wire_a.esp)
    ((written, interface, partial),) = wire_b.written
    assert interface == "lgroute1"
    if agreed:
        assert written == segments and partial == [0, 1, 2]
    else:
        assert written == split_frame(frame) and partial == []


def test_route_mode_segments_outside_the_selectors_are_dropped() -> None:
    ev_a, _ = events(partial_csum=True)
    wire = Wire()
    plane = DataPlane(wire)
    entry = entry_from_event(ev_a)
    entry.interface = "lgroute0"
    plane.install(entry)
    segments, _ = split_frame_partial(tcp_super_frame(2500, src="198.51.100.77"))
    plane.from_route_tun("lgroute0", segments, True)
    assert wire.esp == [] and entry.drops["no_policy"] == len(segments) == 3


def test_a_reads_super_packets_leave_in_one_send_per_sa_in_order() -> None:
    gw = gateways()
    first, _ = split_frame_partial(tcp_super_frame(3000))
    second, _ = split_frame_partial(tcp_super_frame(2000, v6=True))
    ack = ipv4("192.0.2.10", "203.0.113.10", bytes(20), proto=6)
    gw.a.hold_sends()
    gw.a.from_tun_segments(first, True)
    gw.a.from_tun([ack])
    gw.a.from_tun_segments(second, True)
    assert len(gw.wire_a.sent) == 0
    gw.a.release_sends()
    assert len(gw.wire_a.sent) == 1
    assert gw.a_to_b() == [*((s, True) for s in first), (ack, False), *((s, True) for s in second)]
    # Without a hold, each call sends at once.
    gw.a.from_tun([ack])
    assert len(gw.wire_a.sent) == 2


def _partial_single(src: str = "192.0.2.10", size: int = 300, df: bool = True) -> bytes:
    """A single TCP segment as the kernel hands it over with F_NEEDS_CSUM (its field
    holding the pseudo-header sum), taken from a one-segment super-packet frame."""
    frame = tcp_super_frame(size, src=src, mss=max(size, 1))
    (packet,), partial = split_frame_partial(frame)
    assert partial
    if not df:
        packet = packet[:6] + b"\x00" + packet[7:10] + b"\x00\x00" + packet[12:]
    return packet


@pytest.mark.parametrize("agreed", [True, False], ids=["agreed", "not-agreed"])
def test_single_kernel_segments_of_several_flows_go_marked_only_to_an_agreeing_peer(
    agreed: bool,
) -> None:
    gw = gateways(a_agrees=agreed, b_agrees=agreed)
    singles = [_partial_single("192.0.2.10"), _partial_single("192.0.2.11", 40)]
    gw.a.from_tun(singles, True)
    arrived = gw.a_to_b()
    if agreed:
        assert arrived == [(p, True) for p in singles]
    else:
        assert arrived == [(complete_partial_tcp(p), False) for p in singles]


def test_an_oversized_partial_segment_is_completed_before_it_is_fragmented() -> None:
    gw = gateways()
    big = _partial_single(size=gw.a.entries[1].mtu, df=False)
    gw.a.from_tun([big], True)
    arrived = gw.a_to_b()
    # Two unmarked fragments of the completed segment (RFC 4301 §8.1).
    assert len(arrived) == 2 and not any(marked for _, marked in arrived)
    first, second = (p for p, _ in arrived)
    whole = first[:2] + big[2:20] + first[20:] + second[20:]
    assert complete_partial_tcp(big)[20:] == whole[20:]


def test_the_pump_gathers_single_packets_in_runs_by_kind_in_order(
    tuns: tuple[MemoryTun, MemoryTun],
) -> None:
    near, far = tuns
    near.vnet_hdr = True  # type: ignore[attr-defined]
    pump = Pump(near)
    seen: list[tuple[str, bool, int]] = []
    pump.plane.from_tun = lambda p, partial: seen.append(("run", partial, len(p)))  # type: ignore[method-assign]
    pump.plane.from_tun_segments = lambda p, partial: seen.append(("tso", partial, len(p)))  # type: ignore[method-assign]
    ack = _partial_single(size=1)
    kernel = VnetHeader(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16).encode()
    plain = ipv4("192.0.2.10", "203.0.113.10", bytes(30), proto=17)
    for frame in (
        kernel + ack,
        kernel + ack,
        PLAIN_HEADER + plain,
        tcp_super_frame(2500),
        kernel + ack,
    ):
        far.write(frame)
    pump._read_tun()
    assert seen == [("run", True, 2), ("run", False, 1), ("tso", True, 3), ("run", True, 1)]


def test_tso_for_lockgate_peers_is_a_mode_of_its_own_not_the_default() -> None:
    assert offload_mode({"LOCKGATE_OFFLOAD": "tso-lockgate"}) is OffloadMode.TSO_LOCKGATE
    assert offload_mode({}) is OffloadMode.NO_TSO
