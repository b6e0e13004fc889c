"""scapy's independent ESP implementation as the oracle, in both directions.

Every suite, IPv4 and IPv6 inner packets, with and without ESN, with and without
UDP encapsulation (RFC 3948). scapy checks neither padding nor replay; those have
their own tests in test_esp_sa.py.
"""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Packet, Raw

from esp.replay import ReplayWindow
from esp.sa import IPPROTO_IPIP, IPPROTO_IPV6, EspSA
from esp.suites import SUITES, EspSuite
from esp.udpencap import DatagramKind, classify, decapsulate_udp, encapsulate_udp

SPI = 0xC0FFEE01
# Far enough into ESN space that the high half is not zero and really matters,
# and two packets before the low half wraps to 0.
ESN_FIRST_SEQ = (7 << 32) + 0xFFFFFFFE

_SCAPY_CRYPT = {
    "aes128gcm16": "AES-GCM",
    "aes256gcm16": "AES-GCM",
    "chacha20poly1305": "CHACHA20-POLY1305",
}
_SCAPY_AUTH = {
    "sha256": "SHA2-256-128",
    "sha384": "SHA2-384-192",
    "sha512": "SHA2-512-256",
}


def _keys(suite: EspSuite, seed: int) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    return rng.randbytes(suite.encr_key_len), rng.randbytes(suite.integ_key_len)


def _scapy_sa(
    suite: EspSuite, encr: bytes, integ: bytes, esn: bool, udp: bool
) -> SecurityAssociation:
    if suite.is_aead:
        crypt, auth, auth_key = _SCAPY_CRYPT[suite.name], "NULL", None
    else:
        crypt, auth, auth_key = "AES-CBC", _SCAPY_AUTH[suite.hash_name or ""], integ
    return SecurityAssociation(
        ESP,
        spi=SPI,
        crypt_algo=crypt,
        crypt_key=encr,
        auth_algo=auth,
        auth_key=auth_key,
        tunnel_header=IP(src="198.51.100.1", dst="198.51.100.2"),
        nat_t_header=UDP(sport=4500, dport=4500) if udp else None,
        esn_en=esn,
        esn=0,
    )


def _inner_packets(version: int, seed: int, every_padding: bool) -> list[bytes]:
    """Inner packets of one IP version: payload lengths 0..15 walk through every
    padding length of every suite (block 16); a few lengths otherwise. One large
    packet either way."""
    rng = random.Random(seed)
    lengths = list(range(16)) if every_padding else [0, 7, 13]
    packets: list[Packet] = []
    for length in [*lengths, 1372]:
        payload = Raw(rng.randbytes(length))
        if version == 4:
            packets.append(IP(src="192.0.2.2", dst="203.0.113.2") / ICMP(seq=length) / payload)
        else:
            packets.append(
                IPv6(src="2001:db8:1::2", dst="2001:db8:2::2") / UDP(sport=5000, dport=53) / payload
            )
    return [bytes(p) for p in packets]


MATRIX = [
    pytest.param(
        name,
        version,
        esn,
        udp,
        id=f"{name}-v{version}-{'esn' if esn else 'seq32'}-{'udp' if udp else 'raw'}",
    )
    for name in SUITES
    for version in (4, 6)
    for esn in (False, True)
    for udp in (False, True)
]


def _esp_bytes(outer: Packet) -> bytes:
    return bytes(outer[ESP])


def _scapy_encrypt(
    oracle: SecurityAssociation, inner: bytes, seq: int, esn: bool, iv: bytes | None = None
) -> Packet:
    # scapy reads `seq_num or self.seq_num`, so a low half of 0 (after an ESN
    # wrap) must go through the attribute, not the argument.
    oracle.seq_num = seq & 0xFFFFFFFF
    return oracle.encrypt(
        IP(inner) if inner[0] >> 4 == 4 else IPv6(inner), iv=iv, esn_en=esn, esn=seq >> 32
    )


@pytest.mark.parametrize(("name", "version", "esn", "udp"), MATRIX)
def test_encapsulate_matches_scapy(name: str, version: int, esn: bool, udp: bool) -> None:
    suite = SUITES[name]
    encr, integ = _keys(suite, 1)
    first = ESN_FIRST_SEQ if esn else 1
    ours = EspSA(SPI, suite, encr, integ, esn=esn, first_seq=first)
    oracle = _scapy_sa(suite, encr, integ, esn, udp)
    inners = _inner_packets(version, 2, not (esn or udp))
    # The batch path (the one the data plane uses) for all but the last packet.
    packets = [*ours.encapsulate_batch(inners[:-1]), ours.encapsulate(inners[-1])]
    for i, (inner, packet) in enumerate(zip(inners, packets, strict=True)):
        seq = first + i
        assert isinstance(packet, bytes)
        wire = encapsulate_udp(packet) if udp else packet
        iv = packet[8 : 8 + suite.iv_len]
        # scapy, given the same sequence number and IV, must build the same octets.
        expected = _scapy_encrypt(oracle, inner, seq, esn, iv)
        assert packet == _esp_bytes(expected)
        if udp:
            assert wire == bytes(expected[UDP])
        # And scapy decrypts ours back to the inner packet.
        outer = IP(src="198.51.100.1", dst="198.51.100.2", proto=50) / ESP(packet)
        if udp:
            outer = IP(src="198.51.100.1", dst="198.51.100.2") / UDP(wire)
        assert bytes(oracle.decrypt(outer, esn_en=esn, esn=seq >> 32)) == inner


@pytest.mark.parametrize(("name", "version", "esn", "udp"), MATRIX)
def test_decapsulate_what_scapy_sends(name: str, version: int, esn: bool, udp: bool) -> None:
    suite = SUITES[name]
    encr, integ = _keys(suite, 3)
    first = ESN_FIRST_SEQ if esn else 1
    ours = EspSA(SPI, suite, encr, integ, esn=esn)
    # Inbound ESN needs the window near the sender's counter (RFC 4303 App. A2.2).
    ours.replay = ReplayWindow(1024, highest=first - 1)
    oracle = _scapy_sa(suite, encr, integ, esn, udp)
    expected_nh = IPPROTO_IPIP if version == 4 else IPPROTO_IPV6
    inners = _inner_packets(version, 4, not (esn or udp))
    received: list[bytes] = []
    for i, inner in enumerate(inners):
        seq = first + i
        outer = _scapy_encrypt(oracle, inner, seq, esn)
        if udp:
            parsed = decapsulate_udp(bytes(outer[UDP]))
            assert parsed is not None
            _sport, _dport, payload = parsed
            assert classify(payload) is DatagramKind.ESP
        else:
            payload = _esp_bytes(outer)
        assert ours.decapsulate(payload) == (inner, expected_nh)
        assert ours.replay.highest == seq
        received.append(payload)
    assert not ours.drops
    assert ours.packet_count == len(inners)
    # The batch path gives the same on the same packets.
    batch_sa = EspSA(SPI, suite, encr, integ, esn=esn)
    batch_sa.replay = ReplayWindow(1024, highest=first - 1)
    assert batch_sa.decapsulate_batch(received) == [(inner, expected_nh) for inner in inners]
