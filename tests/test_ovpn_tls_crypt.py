"""tls-crypt: wrapping round trips, forgeries refused, the static key file format."""

from __future__ import annotations

import contextlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from ovpn.packet import ControlPacket, Opcode, PacketError
from ovpn.tls_crypt import TlsCrypt, parse_static_key

KEY = bytes(range(256))
SERVER = TlsCrypt(KEY, server=True)
CLIENT = TlsCrypt(KEY, server=False)


@given(st.binary(min_size=9, max_size=200), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_round_trip_both_ways(plain: bytes, pid: int, timestamp: int) -> None:
    assert CLIENT.unwrap(SERVER.wrap(plain, pid, timestamp)) == (plain, timestamp << 32 | pid)
    assert SERVER.unwrap(CLIENT.wrap(plain, pid, timestamp))[0] == plain


def test_layout_as_openvpn_builds_it() -> None:
    # OpenVPN tls_crypt.c tls_crypt_wrap: the header, then HMAC-SHA256 over header and
    # plaintext, then AES-256-CTR with the tag's first 16 octets as IV. The server
    # sends with the key file's first half (cipher key at 0, HMAC key at 64).
    plain = ControlPacket(Opcode.CONTROL_V1, 0, b"\x01" * 8, packet_id=3, payload=b"tls").encode()
    wire = SERVER.wrap(plain, 5, 7)
    header = plain[:9] + bytes.fromhex("0000000500000007")
    tag = hmac.digest(KEY[64:96], header + plain[9:], "sha256")
    body = Cipher(algorithms.AES(KEY[:32]), modes.CTR(tag[:16])).encryptor().update(plain[9:])
    assert wire == header + tag + body


def test_forgeries_are_refused() -> None:
    wire = SERVER.wrap(b"\x20" + b"\x01" * 8 + b"\x00" + bytes(4), 1, 1)
    for bad in (
        wire[:-1] + bytes([wire[-1] ^ 1]),  # ciphertext
        wire[:12] + bytes([wire[12] ^ 1]) + wire[13:],  # replay id in the header
        wire[:40],  # truncated
    ):
        with pytest.raises(PacketError):
            CLIENT.unwrap(bad)
    with pytest.raises(PacketError):
        SERVER.unwrap(wire)  # our own packet reflected back: the other direction's key


@given(st.binary(max_size=120))
def test_garbage_raises_only_packet_error(data: bytes) -> None:
    with contextlib.suppress(PacketError):
        SERVER.unwrap(data)


def test_static_key_file() -> None:
    hex_lines = "\n".join(KEY[i : i + 16].hex() for i in range(0, 256, 16))
    text = (
        "#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n"
        f"{hex_lines}\n-----END OpenVPN Static key V1-----\n"
    )
    assert parse_static_key(text) == KEY
    for bad in ("", text.replace(hex_lines[:2], "zz"), text.replace(hex_lines[-32:], "")):
        with pytest.raises(ValueError):
            parse_static_key(bad)
