"""tls-crypt: the control channel wrapped with a pre-shared static key.

draft-openvpntech-openvpn-wire-protocol, "Control channel encryption (tls-crypt)";
OpenVPN tls_crypt.c. A wrapped packet is

    opcode|key id (1) | session id (8) | packet id (4) | time (4) | tag (32) | ciphertext

where tag = HMAC-SHA256(Ka, everything before the tag || plaintext) and the
ciphertext is AES-256-CTR(Ke, IV = the tag's first 16 octets, plaintext); the
plaintext is the rest of the plain control packet after the session id. The static
key file holds two 128-octet halves; the server sends with the first and receives
with the second (OpenVPN's KEY_DIRECTION_NORMAL for a TLS server).
"""

from __future__ import annotations

import hmac
import re
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ovpn.packet import SESSION_ID_LEN, PacketError

STATIC_KEY_LEN = 256
TAG_LEN = 32
HEADER_LEN = 1 + SESSION_ID_LEN + 8
"""opcode|key id, session id, and the 64-bit replay packet id (id, then time)."""

_PEM = re.compile(
    r"-----BEGIN OpenVPN Static key V1-----(.*?)-----END OpenVPN Static key V1-----", re.S
)


def parse_static_key(text: str) -> bytes:
    """The 256 octets of an OpenVPN static key file (`openvpn --genkey tls-crypt`)."""
    match = _PEM.search(text)
    if match is None:
        raise ValueError("no OpenVPN Static key V1 block")
    try:
        key = bytes.fromhex("".join(match.group(1).split()))
    except ValueError:
        raise ValueError("static key is not hexadecimal") from None
    if len(key) != STATIC_KEY_LEN:
        raise ValueError(f"static key has {len(key)} octets, not {STATIC_KEY_LEN}")
    return key


class TlsCrypt:
    """Wraps and unwraps control packets for one side (server or client)."""

    def __init__(self, static_key: bytes, *, server: bool = True) -> None:
        if len(static_key) != STATIC_KEY_LEN:
            raise ValueError("tls-crypt needs a 256-octet static key")
        first, second = static_key[:128], static_key[128:]
        out, into = (first, second) if server else (second, first)
        # Each half: 64 octets of cipher key, then 64 of HMAC key; both use 32.
        self._out_cipher, self._out_hmac = out[:32], out[64:96]
        self._in_cipher, self._in_hmac = into[:32], into[64:96]

    def wrap(self, plain: bytes, packet_id: int, timestamp: int) -> bytes:
        """The tls-crypt form of encoded control packet `plain`."""
        if len(plain) < 1 + SESSION_ID_LEN:
            raise PacketError("control packet shorter than its header")
        header = plain[: 1 + SESSION_ID_LEN] + struct.pack("!II", packet_id, timestamp)
        body = plain[1 + SESSION_ID_LEN :]
        tag = hmac.digest(self._out_hmac, header + body, "sha256")
        return header + tag + _ctr(self._out_cipher, tag[:16], body)

    def unwrap(self, wire: bytes) -> tuple[bytes, int]:
        """(the plain control packet, its 64-bit replay id: time << 32 | packet id).

        PacketError when it is short or its tag does not verify."""
        if len(wire) < HEADER_LEN + TAG_LEN:
            raise PacketError("tls-crypt packet too short")
        header, tag = wire[:HEADER_LEN], wire[HEADER_LEN : HEADER_LEN + TAG_LEN]
        body = _ctr(self._in_cipher, tag[:16], wire[HEADER_LEN + TAG_LEN :])
        expected = hmac.digest(self._in_hmac, header + body, "sha256")
        if not hmac.compare_digest(expected, tag):
            raise PacketError("tls-crypt tag does not verify")
        packet_id, timestamp = struct.unpack_from("!II", header, 1 + SESSION_ID_LEN)
        return header[: 1 + SESSION_ID_LEN] + body, (timestamp << 32) | packet_id


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()
