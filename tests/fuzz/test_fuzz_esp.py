"""Fuzz sample for ESP decapsulation (every suite, with and without ESN), the port-4500
demultiplexer and the data plane's inbound path.

Valid packets of each suite are mutated (SPI, sequence number, IV, ciphertext, ICV,
length); other packets carry authenticated garbage (bad padding, Next Header, inner
packet) so the checks after the ICV see it too.
"""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esp.udpencap import DatagramKind, classify
from testkit.fuzz.mutate import Mutation
from testkit.fuzz.strategies import mutations
from testkit.fuzz.targets import DataPlaneTarget, EspBatchTarget, EspTarget
from testkit.fuzz.world import EspKeys, esp_keys, ipv4_packet

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KEYS = esp_keys()
KEY_IDS = st.integers(0, len(KEYS) - 1)

inner_packets = st.one_of(
    st.builds(
        ipv4_packet,
        st.sampled_from(["203.0.113.1", "198.51.100.9"]),
        st.sampled_from(["192.0.2.1", "192.0.2.200"]),
        st.binary(max_size=64),
        st.sampled_from([1, 6, 17, 50, 58]),
    ),
    st.binary(max_size=80),
)


@functools.cache
def single(index: int) -> EspTarget:
    return EspTarget(KEYS[index])


def _mutated_packet(keys: EspKeys, inner: bytes, seq: int, mutation: Mutation) -> bytes:
    out = keys.outbound(first_seq=seq)
    packet = out.encapsulate(inner) if inner[:1] and inner[0] >> 4 in (4, 6) else None
    if not isinstance(packet, bytes):
        packet = out.encapsulate(inner, next_header=59)
    assert isinstance(packet, bytes)
    return mutation.apply(packet)


@FUZZ
@given(KEY_IDS, inner_packets, st.integers(1, 2**32 - 1), mutations)
def test_mutated_packets_of_every_suite_give_a_drop_reason_or_a_packet(
    index: int, inner: bytes, seq: int, mutation: Mutation
) -> None:
    target = single(index)
    target.run(b"\x01" + _mutated_packet(target.keys, inner, seq, mutation))


@FUZZ
@given(KEY_IDS, st.integers(0, 2**32 - 1), st.binary(max_size=96))
def test_authenticated_garbage_plaintext_gives_a_drop_reason_or_a_packet(
    index: int, seq: int, plaintext: bytes
) -> None:
    single(index).run(b"\x00" + seq.to_bytes(4, "big") + plaintext)


@FUZZ
@given(KEY_IDS, st.binary(max_size=120))
def test_random_octets_give_a_drop_reason(index: int, data: bytes) -> None:
    single(index).run(b"\x01" + data)


@settings(FUZZ, max_examples=60)
@given(
    KEY_IDS,
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 40), inner_packets, mutations),
        min_size=1,
        max_size=10,
    ),
)
def test_batch_decapsulation_matches_one_by_one(
    index: int, packets: list[tuple[bool, int, bytes, Mutation]]
) -> None:
    keys = KEYS[index]
    parts = []
    for sealed, seq, inner, mutation in packets:
        if sealed:
            parts.append(b"\x00" + seq.to_bytes(4, "big") + inner + b"\x00\x04")
        else:
            parts.append(b"\x01" + _mutated_packet(keys, inner, seq + 1, mutation))
    EspBatchTarget(keys).run(b"ESP!".join(parts))


@FUZZ
@given(st.binary(max_size=64))
def test_port_4500_classification_follows_rfc_3948(payload: bytes) -> None:
    kind = classify(payload)
    if payload == b"\xff":
        assert kind is DatagramKind.KEEPALIVE
    elif payload[:4] == bytes(4):
        assert kind is (DatagramKind.IKE if len(payload) >= 32 else DatagramKind.INVALID)
    elif len(payload) >= 8:
        assert kind is DatagramKind.ESP
    else:
        assert kind is DatagramKind.INVALID


@functools.cache
def plane() -> DataPlaneTarget:
    return DataPlaneTarget()


@FUZZ
@given(st.integers(0, 3), st.integers(0, 2**32 - 1), inner_packets, mutations)
def test_data_plane_counts_every_datagram_once(
    mode: int, seq: int, inner: bytes, mutation: Mutation
) -> None:
    target = plane()
    if mode & 1:
        target.run(bytes([mode]) + _mutated_packet(target.keys, inner or b"\x45", 1, mutation))
    else:
        target.run(bytes([mode]) + seq.to_bytes(4, "big") + inner)
