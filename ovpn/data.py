"""The data channel: P_DATA_V2 packets sealed with an AEAD cipher.

Layout (draft-openvpntech-openvpn-wire-protocol, "AEAD packet format"; OpenVPN's
crypto.c `openvpn_encrypt_aead`):

    opcode|key id (1) | peer id (3) | packet id (4) | tag (16) | ciphertext

The 12-octet nonce is the packet id followed by the first 8 octets of the direction's
HMAC key ("implicit IV"); the associated data is the 4-octet header and the packet
id. The tag sits before the ciphertext, unlike the AEAD libraries' output.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ovpn.keys import DataKeyMaterial
from ovpn.packet import DATA_V2_HEADER_LEN, data_v2_header
from ovpn.replay import ReplayWindow

TAG_LEN = 16
PACKET_ID_LEN = 4
IMPLICIT_IV_LEN = 8
OVERHEAD = DATA_V2_HEADER_LEN + PACKET_ID_LEN + TAG_LEN
MAX_PACKET_ID = 0xFFFFFFFF

PING_MAGIC = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")
"""The keepalive payload (OpenVPN ping.c); it never reaches the TUN."""
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")
"""Prefix of an OCC message in the data channel (occ.c); OCC_EXIT follows it as 6."""
OCC_EXIT = 6

_Aead = AESGCM | ChaCha20Poly1305


@dataclass(frozen=True)
class CipherSpec:
    name: str
    key_len: int
    factory: Callable[[bytes], _Aead]


CIPHERS: dict[str, CipherSpec] = {
    "AES-128-GCM": CipherSpec("AES-128-GCM", 16, AESGCM),
    "AES-256-GCM": CipherSpec("AES-256-GCM", 32, AESGCM),
    "CHACHA20-POLY1305": CipherSpec("CHACHA20-POLY1305", 32, ChaCha20Poly1305),
}
"""The data ciphers this server speaks, by OpenVPN's names."""


class DataDrop(Exception):
    """A data packet that must be dropped; `reason` names the drop counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DataChannelKey:
    """One key generation (key id) of one session: both directions, AEADs built once.

    `server` picks the directions: a server seals with the server-to-client keys.
    """

    def __init__(
        self,
        cipher: str,
        material: DataKeyMaterial,
        *,
        key_id: int,
        server: bool = True,
        replay_window: int = 256,
    ) -> None:
        spec = CIPHERS.get(cipher.upper())
        if spec is None:
            raise ValueError(f"unknown data cipher {cipher!r}")
        self.cipher = spec.name
        self.key_id = key_id
        if server:
            out_key, out_iv = material.s2c_cipher, material.s2c_hmac
            in_key, in_iv = material.c2s_cipher, material.c2s_hmac
        else:
            out_key, out_iv = material.c2s_cipher, material.c2s_hmac
            in_key, in_iv = material.s2c_cipher, material.s2c_hmac
        self._seal = spec.factory(out_key[: spec.key_len])
        self._open = spec.factory(in_key[: spec.key_len])
        self._out_iv = out_iv[:IMPLICIT_IV_LEN]
        self._in_iv = in_iv[:IMPLICIT_IV_LEN]
        self._next_packet_id = 1
        self._header_peer = -1
        self._header = b""
        self.replay = ReplayWindow(replay_window)
        self.packets_in = 0
        self.packets_out = 0

    @property
    def exhausted(self) -> bool:
        """The 32-bit packet id space is used up: the key must be renegotiated."""
        return self._next_packet_id > MAX_PACKET_ID

    def seal(self, payload: bytes, peer_id: int) -> bytes:
        """A P_DATA_V2 packet carrying `payload`."""
        if self.exhausted:
            raise DataDrop("packet_id_exhausted")
        pid = struct.pack("!I", self._next_packet_id)
        self._next_packet_id += 1
        if peer_id != self._header_peer:  # the same for every packet of a session
            self._header, self._header_peer = data_v2_header(self.key_id, peer_id), peer_id
        header = self._header
        sealed = self._seal.encrypt(pid + self._out_iv, payload, header + pid)
        self.packets_out += 1
        return header + pid + sealed[-TAG_LEN:] + sealed[:-TAG_LEN]

    def open(self, packet: bytes) -> bytes:
        """The payload of P_DATA_V2 `packet`, or DataDrop saying why not."""
        if len(packet) < OVERHEAD:
            raise DataDrop("data_truncated")
        pid_bytes = packet[DATA_V2_HEADER_LEN : DATA_V2_HEADER_LEN + PACKET_ID_LEN]
        (packet_id,) = struct.unpack("!I", pid_bytes)
        if not self.replay.check(packet_id):
            raise DataDrop("data_replay")
        tag_at = DATA_V2_HEADER_LEN + PACKET_ID_LEN
        tag = packet[tag_at : tag_at + TAG_LEN]
        try:
            payload = self._open.decrypt(
                pid_bytes + self._in_iv, packet[tag_at + TAG_LEN :] + tag, packet[:tag_at]
            )
        except InvalidTag:
            raise DataDrop("data_auth_failed") from None
        self.replay.commit(packet_id)
        self.packets_in += 1
        return payload
