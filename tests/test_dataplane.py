"""Two data planes back to back in memory: no root, no sockets, no kernel.

Each test builds a matching pair of CHILD SAs from `ChildSaInstalled` events (as the
IKEv2 core would hand them over), links the two data planes with an in-memory wire
that frames ESP as the SA says (RFC 3948 UDP, or raw), and checks what comes out of
the far TUN side.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.childsa import ChildSaEntry, entry_from_event, inner_mtu
from daemon.dataplane import ICMP_ERRORS_PER_SECOND, UNKNOWN_SPI_REPORT_INTERVAL, DataPlane, Drop
from esp.drops import DropReason
from esp.sa import PARTS_PER_PACKET
from esp.suites import suite_by_name
from esp.udpencap import NAT_KEEPALIVE, decapsulate_udp, encapsulate_udp, frame_ike
from ikev2.events import Address, ChildSaInstalled
from ikev2.ts import TrafficSelector as IkeTs
from testkit.dataplane import (
    GW_A,
    GW_B,
    NET_A4,
    NET_B4,
    SUITES,
    echo_request,
    events,
    ipv4,
    ipv6,
)


@dataclass
class Side:
    """One gateway's output: what it put on the wire and what it wrote to TUN."""

    name: str
    wire: deque[tuple[str, bytes, Address, Address]] = field(default_factory=deque)
    tun_out: list[bytes] = field(default_factory=list)
    sent_frames: list[tuple[str, bytes]] = field(default_factory=list)

    def send(self, entry: ChildSaEntry, parts: list[bytes]) -> int:
        step = PARTS_PER_PACKET
        packets = [b"".join(parts[i : i + step]) for i in range(0, len(parts), step)]
        for esp in packets:
            if entry.udp_encap:
                frame = encapsulate_udp(esp, entry.local[1], entry.remote[1])
                self.wire.append(("udp", frame, entry.local, entry.remote))
            else:
                self.wire.append(("esp", esp, entry.local, entry.remote))
        return len(packets)

    def send_keepalive(self, local: Address, remote: Address) -> bool:
        self.wire.append(("udp", encapsulate_udp(NAT_KEEPALIVE), local, remote))
        return True

    def write_tun(
        self, packets: list[bytes], interface: str | None = None, partial: Sequence[int] = ()
    ) -> int:
        self.tun_out.extend(packets)
        return len(packets)


def deliver(src: Side, dst: DataPlane) -> int:
    """Move everything `src` sent into `dst`, as its sockets would read it."""
    moved = 0
    udp: list[tuple[bytes, Address, Address]] = []
    esp: list[bytes] = []
    while src.wire:
        kind, frame, local, remote = src.wire.popleft()
        src.sent_frames.append((kind, frame))
        if kind == "udp":
            parsed = decapsulate_udp(frame)
            assert parsed is not None
            udp.append((parsed[2], remote, local))
        else:
            esp.append(frame)
        moved += 1
    dst.from_udp(udp)
    dst.from_esp(esp)
    return moved


@dataclass
class Pair:
    a: DataPlane
    b: DataPlane
    side_a: Side
    side_b: Side
    entry_a: ChildSaEntry
    entry_b: ChildSaEntry

    def a_to_b(self, packets: list[bytes]) -> list[bytes]:
        start = len(self.side_b.tun_out)
        self.a.from_tun(packets)
        deliver(self.side_a, self.b)
        return self.side_b.tun_out[start:]

    def b_to_a(self, packets: list[bytes]) -> list[bytes]:
        start = len(self.side_a.tun_out)
        self.b.from_tun(packets)
        deliver(self.side_b, self.a)
        return self.side_a.tun_out[start:]


def make_pair(suite: str = "aes128gcm16", udp: bool = True, esn: bool = False) -> Pair:
    ev_a, ev_b = events(suite, udp, esn)
    side_a, side_b = Side("a"), Side("b")
    a, b = DataPlane(side_a), DataPlane(side_b)
    entry_a, entry_b = entry_from_event(ev_a), entry_from_event(ev_b)
    a.install(entry_a)
    b.install(entry_b)
    return Pair(a, b, side_a, side_b, entry_a, entry_b)


# --- packet builders ----------------------------------------------------------------


def udp_segment(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


# --- tests --------------------------------------------------------------------------


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("udp", [True, False], ids=["udp", "raw"])
def test_ping_both_ways_ipv4_and_ipv6(suite: str, udp: bool) -> None:
    pair = make_pair(suite, udp)
    request4 = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    reply4 = ipv4("203.0.113.10", "192.0.2.10", echo_request(1), proto=1)
    request6 = ipv6("2001:db8:a::10", "2001:db8:b::10", bytes([128, 0]) + bytes(62), 58)
    assert pair.a_to_b([request4, request6]) == [request4, request6]
    assert pair.b_to_a([reply4]) == [reply4]
    kinds = {kind for kind, _ in pair.side_a.sent_frames}
    assert kinds == ({"udp"} if udp else {"esp"})
    # The wire never carries the plaintext.
    assert all(request4[20:] not in frame for _, frame in pair.side_a.sent_frames)
    status = pair.a.status()["sas"][0]
    assert status["packets_out"] == 2 and status["packets_in"] == 1
    assert status["bytes_out"] == len(request4) + len(request6)
    assert status["suite"] == suite and status["encap"] == ("udp" if udp else "esp")


@pytest.mark.parametrize("udp", [True, False], ids=["udp", "raw"])
def test_multi_megabyte_transfer_arrives_intact(udp: bool) -> None:
    pair = make_pair("aes256gcm16", udp)
    data = os.urandom(4 * 1024 * 1024)
    chunk = 1200
    received = bytearray()
    batch: list[bytes] = []
    for seq, offset in enumerate(range(0, len(data), chunk)):
        piece = struct.pack("!I", seq) + data[offset : offset + chunk]
        if seq % 2:
            batch.append(ipv4("192.0.2.10", "203.0.113.10", udp_segment(40000, 5001, piece)))
        else:
            batch.append(ipv6("2001:db8:a::10", "2001:db8:b::10", udp_segment(40000, 5001, piece)))
        if len(batch) == 64:
            out = pair.a_to_b(batch)
            assert len(out) == len(batch)
            batch = []
    if batch:
        pair.a_to_b(batch)
    by_seq = {}
    for packet in pair.side_b.tun_out:
        header = 20 if packet[0] >> 4 == 4 else 40
        segment = packet[header + 8 :]
        by_seq[struct.unpack("!I", segment[:4])[0]] = segment[4:]
    for seq in range(len(by_seq)):
        received += by_seq[seq]
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
    assert pair.b.total_drops() == {}


def test_replayed_and_tampered_packets_are_dropped_and_counted() -> None:
    pair = make_pair("aes128gcm16", udp=False)
    packet = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    pair.a.from_tun([packet])
    _, frame, _, _ = pair.side_a.wire.popleft()
    pair.b.from_esp([frame])
    pair.b.from_esp([frame])  # replay
    tampered = bytearray(frame)
    tampered[-1] ^= 1
    tampered[4:8] = struct.pack("!I", 99)  # a fresh sequence number, so not a replay
    pair.b.from_esp([bytes(tampered)])
    pair.b.from_esp([b"\x00\x00\x00\x01" + bytes(40)])  # unknown SPI
    pair.b.from_esp([b"\x01\x02"])
    assert pair.side_b.tun_out == [packet]
    drops = pair.b.total_drops()
    assert drops == {"replay": 1, "icv_failure": 1, "no_sa": 1, "too_short": 1}
    assert pair.b.status()["sas"][0]["drops"] == {"icv_failure": 1, "replay": 1}


@pytest.mark.parametrize("esn", [False, True])
def test_replay_window_0_turns_the_replay_check_off(esn: bool) -> None:
    # replay_window = 0: the receiver does not check sequence numbers (RFC 4303 §3.4.3
    # leaves that to it; strongSwan's replay_window = 0 means the same). A replay that
    # authenticates is delivered, by the single and the batch path; a forgery is not.
    ev_a, ev_b = (replace(e, replay_window=0) for e in events(udp=False, esn=esn))
    side_a, side_b = Side("a"), Side("b")
    a, b = DataPlane(side_a), DataPlane(side_b)
    a.install(entry_from_event(ev_a))
    b.install(entry_from_event(ev_b))
    packet = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    a.from_tun([packet])
    _, frame, _, _ = side_a.wire.popleft()
    b.from_esp([frame])
    b.from_esp([frame])
    b.from_esp([frame, frame])
    tampered = bytearray(frame)
    tampered[-1] ^= 1
    b.from_esp([bytes(tampered)])
    assert side_b.tun_out == [packet] * 4
    assert b.total_drops() == {"icv_failure": 1}


def test_inbound_packet_outside_selectors_is_dropped() -> None:
    pair = make_pair()
    # B's SA encrypts anything it is handed; a hostile peer could send a packet
    # for an address it never negotiated. Bypass B's SPD to craft it.
    spoofed = ipv4("198.51.100.77", "192.0.2.10", echo_request(1), proto=1)
    sealed = pair.entry_b.outbound.encapsulate(spoofed)
    assert isinstance(sealed, bytes)
    pair.a.from_esp([sealed])
    assert pair.side_a.tun_out == []
    assert pair.a.total_drops() == {Drop.POLICY_MISMATCH.value: 1}


def test_outbound_without_policy_is_dropped_and_acquired() -> None:
    pair = make_pair()
    acquired: list[bytes] = []
    pair.a.on_acquire = acquired.append
    stray = ipv4("192.0.2.10", "198.51.100.99", echo_request(1), proto=1)
    pair.a.from_tun([stray, b"\x00garbage"])
    assert acquired == [stray]
    assert not pair.side_a.wire
    assert pair.a.total_drops() == {Drop.NO_POLICY.value: 1, Drop.MALFORMED.value: 1}


@pytest.mark.parametrize("udp", [True, False], ids=["udp", "raw"])
def test_oversized_df_packet_gets_icmp_fragmentation_needed(udp: bool) -> None:
    pair = make_pair("aes128gcm16", udp)
    mtu = pair.entry_a.mtu
    assert mtu == inner_mtu(suite_by_name("aes128gcm16"), 1500, 4, udp)
    fits = ipv4("192.0.2.10", "203.0.113.10", bytes(mtu - 20), proto=6)
    too_big = ipv4("192.0.2.10", "203.0.113.10", bytes(mtu - 19), proto=6)
    assert pair.a_to_b([fits, too_big]) == [fits]
    # The ESP packet carrying the largest inner packet fits the 1500-octet path.
    frame = pair.side_a.sent_frames[-1][1]
    outer = 20 + (8 if udp else 0) + len(frame) - (8 if udp else 0)
    assert outer <= 1500
    icmp = pair.side_a.tun_out[-1]
    assert icmp[9] == 1 and icmp[20:22] == bytes([3, 4])
    assert struct.unpack("!H", icmp[26:28])[0] == mtu
    assert icmp[16:20] == ipaddress.IPv4Address("192.0.2.10").packed
    assert pair.a.total_drops() == {Drop.TOO_BIG.value: 1}


def test_oversized_ipv6_packet_gets_packet_too_big() -> None:
    pair = make_pair("aes256-sha256", udp=True)
    big = ipv6("2001:db8:a::10", "2001:db8:b::10", bytes(1500), proto=17)
    assert pair.a_to_b([big]) == []
    icmp = pair.side_a.tun_out[-1]
    assert icmp[6] == 58 and icmp[40] == 2
    assert struct.unpack("!I", icmp[44:48])[0] == pair.entry_a.mtu


def test_oversized_packet_without_df_is_fragmented_inside_the_tunnel() -> None:
    pair = make_pair("aes128gcm16", udp=True)
    payload = os.urandom(3000)
    big = ipv4("192.0.2.10", "203.0.113.10", udp_segment(1, 2, payload), df=False)
    out = pair.a_to_b([big])
    assert len(out) == 3
    assert all(len(frag) <= pair.entry_a.mtu for frag in out)
    assert b"".join(frag[20:] for frag in out) == big[20:]
    assert pair.a.total_drops() == {}


def test_ike_and_keepalives_on_port_4500_are_told_apart() -> None:
    pair = make_pair()
    seen: list[tuple[bytes, Address, Address]] = []
    pair.b.on_ike = lambda msg, local, remote: seen.append((msg, local, remote))
    ike_message = bytes(range(28)) + b"payload"
    pair.b.from_udp(
        [
            (frame_ike(ike_message), (GW_B, 4500), (GW_A, 4500)),
            (NAT_KEEPALIVE, (GW_B, 4500), (GW_A, 4500)),
            (b"\x00\x00\x00\x00\x01", (GW_B, 4500), (GW_A, 4500)),
        ]
    )
    assert seen == [(ike_message, (GW_B, 4500), (GW_A, 4500))]
    assert pair.b.counters == {"ike_on_4500": 1, "keepalives_received": 1}
    assert pair.b.total_drops() == {Drop.INVALID_DATAGRAM.value: 1}
    pair.a.send_keepalive((GW_A, 4500), (GW_B, 4500))
    deliver(pair.side_a, pair.b)
    assert pair.b.counters["keepalives_received"] == 2


def test_rekey_keeps_old_sa_until_deleted_then_new_one_carries_traffic() -> None:
    pair = make_pair()
    new_a, new_b = (entry_from_event(ev) for ev in events("aes256gcm16", uid=2))
    # Make-before-break: the new inbound SAs exist before anyone sends on them.
    pair.a.install(new_a)
    pair.b.install(new_b)
    packet = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    assert pair.a_to_b([packet]) == [packet]
    assert pair.entry_a.outbound.packet_count == 1 and new_a.outbound.packet_count == 0
    # Packets still in flight on the old SA are accepted while it exists.
    pair.a.remove(pair.entry_a.unique_id)
    assert pair.a_to_b([packet]) == [packet]
    assert new_a.outbound.packet_count == 1 and new_b.inbound.packet_count == 1
    pair.b.remove(pair.entry_b.unique_id)
    assert [e.unique_id for e in pair.b.entries.values()] == [2]


def test_removed_sa_drops_inbound_and_keeps_its_counts() -> None:
    pair = make_pair(udp=False)
    packet = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    pair.a.from_tun([packet, packet])
    pair.b.from_esp([pair.side_a.wire.popleft()[1]])
    pair.b.from_esp([pair.side_a.wire[0][1]] * 2)  # second one is a replay
    assert pair.b.remove(1) is pair.entry_b
    assert pair.b.remove(1) is None
    pair.b.from_esp([pair.side_a.wire.popleft()[1]])
    assert pair.b.total_drops() == {"replay": 1, "no_sa": 1}
    assert pair.b.status()["sas"] == []


def test_icmp_too_big_errors_are_rate_limited() -> None:
    pair = make_pair()
    now = [1000.0]
    pair.a._clock = lambda: now[0]
    big = ipv4("192.0.2.10", "203.0.113.10", bytes(pair.entry_a.mtu), proto=6)
    pair.a.from_tun([big] * (ICMP_ERRORS_PER_SECOND + 20))
    assert len(pair.side_a.tun_out) == ICMP_ERRORS_PER_SECOND
    assert pair.a.counters["icmp_rate_limited"] == 20
    now[0] += 1.0
    pair.a.from_tun([big])
    assert len(pair.side_a.tun_out) == ICMP_ERRORS_PER_SECOND + 1
    assert pair.a.total_drops() == {Drop.TOO_BIG.value: ICMP_ERRORS_PER_SECOND + 21}


_PAIR = make_pair("aes128gcm16", udp=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=8), st.binary(min_size=4, max_size=4))
def test_random_input_on_every_path_is_only_counted(packets: list[bytes], spi: bytes) -> None:
    plane = _PAIR.b
    delivered = len(_PAIR.side_b.tun_out)
    live_spi = _PAIR.entry_b.spi_in.to_bytes(4, "big")
    # Random bytes, and random bytes behind a live SPI (so they reach the decryption).
    plane.from_esp(packets + [live_spi + p for p in packets] + [spi + p for p in packets])
    plane.from_udp([(p, (GW_B, 4500), (GW_A, 4500)) for p in packets])
    # Nothing forged got through to the TUN device, and nothing raised on the way.
    assert len(_PAIR.side_b.tun_out) == delivered
    plane.from_tun(packets)


def test_rekey_we_started_sends_on_the_new_sa_at_once() -> None:
    pair = make_pair()
    new_a, new_b = (entry_from_event(ev) for ev in events("aes256gcm16", uid=2))
    pair.b.install(new_b)  # the responder installs before it answers
    pair.a.install(new_a, preferred=True)  # the initiator, once the answer is in
    packet = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    assert pair.a_to_b([packet]) == [packet]
    assert new_a.outbound.packet_count == 1 and pair.entry_a.outbound.packet_count == 0
    # The responder still sends on the old SA, which the initiator still accepts.
    reply = ipv4("203.0.113.10", "192.0.2.10", echo_request(1), proto=1)
    assert pair.b_to_a([reply]) == [reply]
    assert pair.entry_b.outbound.packet_count == 1 and pair.entry_a.inbound.packet_count == 1


def test_removed_sa_lingers_inbound_only() -> None:
    pair = make_pair(udp=False)
    now = [50.0]
    pair.b._clock = lambda: now[0]
    request = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
    reply = ipv4("203.0.113.10", "192.0.2.10", echo_request(1), proto=1)
    pair.a.from_tun([request])  # in flight while B processes the peer's Delete
    assert pair.b.remove(1, linger=2.0) is pair.entry_b
    deliver(pair.side_a, pair.b)
    assert pair.side_b.tun_out == [request]  # still decrypted
    pair.b.from_tun([reply])
    assert not pair.side_b.wire  # but nothing is sent on it any more
    assert pair.b.status()["sas"] == []
    now[0] += 2.0
    assert pair.b.expire_lingering() == 1
    pair.a.from_tun([request])
    deliver(pair.side_a, pair.b)
    assert pair.side_b.tun_out == [request]
    assert pair.b.total_drops() == {"no_sa": 1, Drop.NO_POLICY.value: 1}


def test_cached_flows_follow_spd_changes() -> None:
    # The outbound flow cache must never outlive the policy it remembered.
    pair = make_pair()
    packet = ipv4("192.0.2.10", "203.0.113.10", udp_segment(1000, 2000, b"data"))
    assert pair.a_to_b([packet]) == [packet]
    new_a, new_b = (entry_from_event(ev) for ev in events(uid=2))
    pair.b.install(new_b)
    pair.a.install(new_a, preferred=True)
    assert pair.a_to_b([packet]) == [packet]
    assert new_a.outbound.packet_count == 1 and pair.entry_a.outbound.packet_count == 1
    pair.a.remove(new_a.unique_id)
    assert pair.a_to_b([packet]) == [packet]
    assert pair.entry_a.outbound.packet_count == 2
    pair.a.remove(pair.entry_a.unique_id)
    acquired: list[bytes] = []
    pair.a.on_acquire = acquired.append
    pair.a.from_tun([packet])
    assert acquired == [packet]


def test_inbound_selector_check_per_flow_even_when_cached() -> None:
    pair = make_pair()
    good = ipv4("203.0.113.10", "192.0.2.10", udp_segment(53, 4000, b"ok"))
    assert pair.b_to_a([good, good]) == [good, good]
    # Same ports, an address outside the selectors: a different flow, refused.
    spoofed = ipv4("198.51.100.77", "192.0.2.10", udp_segment(53, 4000, b"no"))
    sealed = pair.entry_b.outbound.encapsulate(spoofed)
    assert isinstance(sealed, bytes)
    pair.a.from_esp([sealed])
    assert pair.side_a.tun_out == [good, good]
    assert pair.a.total_drops() == {Drop.POLICY_MISMATCH.value: 1}


def _udp_4000_only(event: ChildSaInstalled, a_side: bool) -> ChildSaInstalled:
    """The event with selectors for UDP to or from port 4000 on B's side only."""
    ours, theirs = (NET_A4, NET_B4) if a_side else (NET_B4, NET_A4)
    local = IkeTs.from_network(ours, 17) if a_side else IkeTs.from_network(ours, 17, (4000, 4000))
    remote = (
        IkeTs.from_network(theirs, 17, (4000, 4000)) if a_side else IkeTs.from_network(theirs, 17)
    )
    return replace(event, local_ts=(local,), remote_ts=(remote,))


def _fragment_of(packet: bytes) -> bytes:
    """A non-first fragment whose first payload octets equal ``packet``'s ports."""
    header = bytearray(packet[:20])
    header[6:8] = (0x2000 | 100).to_bytes(2, "big")  # MF, offset 800 octets
    return bytes(header) + packet[20:]


def test_each_packet_of_a_batch_goes_to_its_own_flows_sa() -> None:
    # A second SA covers only UDP to port 4000. In one batch, packets that share
    # addresses and ports with the previous one but not the protocol, or that are
    # fragments (no ports), must still get their own SA, not the previous one's.
    pair = make_pair()
    narrow_a, _ = (
        entry_from_event(_udp_4000_only(ev, i == 0)) for i, ev in enumerate(events(uid=2))
    )
    pair.a.install(narrow_a)
    udp = ipv4("192.0.2.10", "203.0.113.10", udp_segment(5000, 4000, b"u" * 40))
    tcp = ipv4("192.0.2.10", "203.0.113.10", udp_segment(5000, 4000, b"t" * 40), proto=6)
    batch = [udp, tcp, udp, _fragment_of(udp), udp, udp]
    pair.a.from_tun(batch)
    assert narrow_a.outbound.packet_count == 4
    assert pair.entry_a.outbound.packet_count == 2


def test_each_inbound_packet_of_a_batch_gets_its_own_selector_verdict() -> None:
    pair = make_pair()
    ev_a, ev_b = events(uid=2)
    narrow_a = entry_from_event(_udp_4000_only(ev_a, True))
    narrow_b = entry_from_event(_udp_4000_only(ev_b, False))
    pair.a.install(narrow_a)
    good = ipv4("203.0.113.10", "192.0.2.10", udp_segment(4000, 5000, b"g" * 40))
    tcp = ipv4("203.0.113.10", "192.0.2.10", udp_segment(4000, 5000, b"t" * 40), proto=6)
    # B's SA seals whatever it is handed: the peer decides what goes into it.
    inners = [good, tcp, good, _fragment_of(good), good, good]
    sealed = [narrow_b.outbound.encapsulate(p) for p in inners]
    assert all(isinstance(p, bytes) for p in sealed)
    pair.a.from_esp(sealed)  # type: ignore[arg-type]
    assert pair.side_a.tun_out == [good] * 4
    assert narrow_a.all_drops() == {Drop.POLICY_MISMATCH.value: 2}


def test_esp_of_an_unknown_spi_is_reported_once_per_remote_per_interval() -> None:
    """A peer that still sends on SAs we lost (we restarted) is reported to the IKE
    endpoint (RFC 7296 §2.21.4, INVALID_SPI); a flood of them costs a lookup each."""
    pair = make_pair()
    now = [100.0]
    plane = DataPlane(pair.side_b, clock=lambda: now[0])
    plane.install(pair.entry_b)
    reported: list[tuple[int, Address, Address]] = []
    plane.on_unknown_spi = lambda spi, local, remote: reported.append((spi, local, remote))
    pair.a.from_tun([ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)])
    known = decapsulate_udp(pair.side_a.wire.popleft()[1])
    assert known is not None
    stray = (0xDEAD0001).to_bytes(4, "big") + bytes(40)
    here, there, other = (GW_B, 4500), (GW_A, 4500), ("198.51.100.9", 4500)
    plane.from_udp([(known[2], here, there)] + [(stray, here, there)] * 50)
    plane.from_udp([(stray, here, other)])
    assert reported == [(0xDEAD0001, here, there), (0xDEAD0001, here, other)]
    assert plane.total_drops()[DropReason.NO_SA.value] == 51
    assert len(pair.side_b.tun_out) == 1
    now[0] += 2 * UNKNOWN_SPI_REPORT_INTERVAL
    plane.from_esp([stray], lambda packet: (here, there))
    plane.from_esp([stray])  # no origin: counted, not reported
    assert reported[2:] == [(0xDEAD0001, here, there)]
    assert plane.counters["unknown_spi_reported"] == 3
    assert plane.total_drops()[DropReason.NO_SA.value] == 53
