"""The data channel (P_DATA_V2 with AEAD) and its replay window."""

from __future__ import annotations

import contextlib
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from ovpn.data import CIPHERS, PING_MAGIC, DataChannelKey, DataDrop
from ovpn.keys import DataKeyMaterial
from ovpn.replay import ReplayWindow

MATERIAL = DataKeyMaterial.from_bytes(bytes(range(256)))


def _pair(cipher: str) -> tuple[DataChannelKey, DataChannelKey]:
    return (
        DataChannelKey(cipher, MATERIAL, key_id=1, server=True),
        DataChannelKey(cipher, MATERIAL, key_id=1, server=False),
    )


@pytest.mark.parametrize("cipher", sorted(CIPHERS))
def test_round_trip_both_directions(cipher: str) -> None:
    server, client = _pair(cipher)
    assert client.open(server.seal(b"to the client", peer_id=5)) == b"to the client"
    assert server.open(client.seal(PING_MAGIC, peer_id=5)) == PING_MAGIC


@pytest.mark.parametrize(
    ("cipher", "aead", "key_len"),
    [
        ("AES-128-GCM", AESGCM, 16),
        ("AES-256-GCM", AESGCM, 32),
        ("CHACHA20-POLY1305", ChaCha20Poly1305, 32),
    ],
)
def test_layout_as_openvpn_builds_it(cipher: str, aead: type, key_len: int) -> None:
    # OpenVPN crypto.c openvpn_encrypt_aead: nonce = packet id || first 8 octets of the
    # direction's HMAC key; AD = the 4-octet header and the packet id; the tag goes
    # between the packet id and the ciphertext.
    server, _ = _pair(cipher)
    wire = server.seal(b"payload", peer_id=0x010203)
    header, pid = wire[:4], wire[4:8]
    assert header == bytes([(9 << 3) | 1, 1, 2, 3])
    assert pid == struct.pack("!I", 1)
    expected = aead(MATERIAL.s2c_cipher[:key_len]).encrypt(
        pid + MATERIAL.s2c_hmac[:8], b"payload", header + pid
    )
    assert wire[8:24] == expected[-16:]
    assert wire[24:] == expected[:-16]


def test_replay_truncation_and_tampering_are_dropped() -> None:
    server, client = _pair("AES-256-GCM")
    first = client.seal(b"one", peer_id=0)
    second = client.seal(b"two", peer_id=0)
    assert server.open(second) == b"two"
    assert server.open(first) == b"one"  # reordered, inside the window
    for packet, reason in [
        (first, "data_replay"),
        (first[:20], "data_truncated"),
        (client.seal(b"three", 0)[:-1] + b"\0", "data_auth_failed"),
    ]:
        with pytest.raises(DataDrop) as info:
            server.open(packet)
        assert info.value.reason == reason
    # A forged packet did not move the window: the real third packet still opens.
    fourth = client.seal(b"four", peer_id=0)
    assert server.open(fourth) == b"four"


def test_header_is_authenticated() -> None:
    server, client = _pair("CHACHA20-POLY1305")
    wire = bytearray(client.seal(b"x", peer_id=7))
    wire[3] ^= 1  # another peer id
    with pytest.raises(DataDrop):
        server.open(bytes(wire))


@given(st.binary(max_size=64))
def test_garbage_raises_only_data_drop(data: bytes) -> None:
    server, _ = _pair("AES-128-GCM")
    with contextlib.suppress(DataDrop):
        server.open(data)


# ReplayWindow: (packet id, check result), committing every accepted id.
REPLAY_CASES = {
    "fresh ids in order": [(1, True), (2, True), (3, True)],
    "a repeat is refused": [(1, True), (1, False)],
    "zero is never valid": [(0, False)],
    "reordering inside the window": [(5, True), (3, True), (4, True), (3, False)],
    "too old for the window": [(10, True), (6, True), (5, False)],
}


@pytest.mark.parametrize("steps", REPLAY_CASES.values(), ids=REPLAY_CASES.keys())
def test_replay_window(steps: list[tuple[int, bool]]) -> None:
    window = ReplayWindow(size=5)
    for pid, ok in steps:
        assert window.check(pid) is ok, pid
        if ok:
            window.commit(pid)


@given(st.lists(st.integers(1, 200), max_size=60))
def test_replay_window_matches_a_model(ids: list[int]) -> None:
    window = ReplayWindow(size=16)
    seen: set[int] = set()
    highest = 0
    for pid in ids:
        expected = pid not in seen and pid > highest - 16
        assert window.check(pid) is expected
        if expected:
            window.commit(pid)
            seen.add(pid)
            highest = max(highest, pid)
