"""Key method 2 and the data-channel keys from OpenVPN's PRF.

Once TLS is up, each side sends one key-method-2 message inside it: random material,
an options string, the client's username and password, and the client's peer-info
(draft-openvpntech-openvpn-wire-protocol, "Key method 2"). The data-channel keys
come from the TLS 1.0 PRF (RFC 2246 §5) over that material and both session ids.

Python's `ssl` has no keying-material exporter (RFC 5705), so the newer `tls-ekm`
derivation is never offered: the server does not push `key-derivation tls-ekm` or
`protocol-flags tls-ekm`, and clients then use the PRF.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, field

KEY_METHOD_2 = 2
PRE_MASTER_LEN = 48
RANDOM_LEN = 32
DATA_KEY_MATERIAL_LEN = 256
"""Two directions of (64 octets of cipher key, 64 of HMAC key / implicit IV)."""

# IV_PROTO bits (peer-info), the ones a server looks at.
IV_PROTO_DATA_V2 = 1 << 1
IV_PROTO_REQUEST_PUSH = 1 << 2
IV_PROTO_TLS_KEY_EXPORT = 1 << 3
IV_PROTO_CC_EXIT_NOTIFY = 1 << 7


class KeyMethodError(ValueError):
    """A key-method-2 message that is short or malformed."""


# --- RFC 2246 §5: the TLS 1.0 PRF --------------------------------------------------


def _p_hash(name: str, secret: bytes, seed: bytes, length: int) -> bytes:
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.new(secret, a, name).digest()
        out += hmac.new(secret, a + seed, name).digest()
    return bytes(out[:length])


def tls1_prf(secret: bytes, label_and_seed: bytes, length: int) -> bytes:
    """PRF = P_MD5(S1, seed) XOR P_SHA1(S2, seed), S1 and S2 the two (overlapping when
    odd) halves of the secret (RFC 2246 §5)."""
    half = (len(secret) + 1) // 2
    md5 = _p_hash("md5", secret[:half], label_and_seed, length)
    sha1 = _p_hash("sha1", secret[len(secret) - half :], label_and_seed, length)
    return bytes(x ^ y for x, y in zip(md5, sha1, strict=True))


# --- The key-method-2 message ------------------------------------------------------


@dataclass(frozen=True)
class KeyMethod2:
    """One side's key-method-2 message. Only the client's carries `pre_master`."""

    random1: bytes
    random2: bytes
    pre_master: bytes | None = None
    options: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    peer_info: str = ""

    def encode(self) -> bytes:
        out = bytearray(struct.pack("!IB", 0, KEY_METHOD_2))
        if self.pre_master is not None:
            out += _exact(self.pre_master, PRE_MASTER_LEN, "pre-master")
        out += _exact(self.random1, RANDOM_LEN, "random1")
        out += _exact(self.random2, RANDOM_LEN, "random2")
        for text in (self.options, self.username, self.password, self.peer_info):
            out += _encode_string(text)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes, *, from_client: bool) -> KeyMethod2:
        if len(data) < 5 or data[:4] != b"\0\0\0\0":
            raise KeyMethodError("key method message must start with four zero octets")
        if data[4] & 0x0F != KEY_METHOD_2:
            raise KeyMethodError(f"key method {data[4] & 0x0F}, only 2 is supported")
        pos = 5
        pre_master = None
        if from_client:
            pre_master, pos = _take(data, pos, PRE_MASTER_LEN)
        random1, pos = _take(data, pos, RANDOM_LEN)
        random2, pos = _take(data, pos, RANDOM_LEN)
        options, pos = _decode_string(data, pos)
        if options is None:
            raise KeyMethodError("options string missing")
        # Username, password and peer-info may each be missing from the end.
        username, pos = _decode_string(data, pos)
        password, pos = _decode_string(data, pos)
        peer_info, pos = _decode_string(data, pos)
        return cls(
            random1,
            random2,
            pre_master,
            options,
            username or "",
            password or "",
            peer_info or "",
        )


def _exact(value: bytes, length: int, what: str) -> bytes:
    if len(value) != length:
        raise KeyMethodError(f"{what} must be {length} octets")
    return value


def _take(data: bytes, pos: int, length: int) -> tuple[bytes, int]:
    if len(data) < pos + length:
        raise KeyMethodError("key method message truncated")
    return data[pos : pos + length], pos + length


def _encode_string(text: str) -> bytes:
    # A 16-bit length that counts the terminating NUL; an empty string is length 0.
    if not text:
        return b"\0\0"
    raw = text.encode() + b"\0"
    if len(raw) > 0xFFFF:
        raise KeyMethodError("string too long for key method 2")
    return struct.pack("!H", len(raw)) + raw


def _decode_string(data: bytes, pos: int) -> tuple[str | None, int]:
    if pos == len(data):
        return None, pos
    if len(data) < pos + 2:
        raise KeyMethodError("string length truncated")
    (length,) = struct.unpack_from("!H", data, pos)
    raw, pos = _take(data, pos + 2, length)
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace"), pos


def parse_peer_info(text: str) -> dict[str, str]:
    """The client's peer-info (`VAR=VALUE` lines) as a dict; later lines win."""
    out: dict[str, str] = {}
    for line in text.split("\n"):
        name, sep, value = line.partition("=")
        if sep and name:
            out[name.strip()] = value.strip()
    return out


def iv_proto(peer_info: dict[str, str]) -> int:
    try:
        return max(0, int(peer_info.get("IV_PROTO", "0")))
    except ValueError:
        return 0


# --- Data-channel keys --------------------------------------------------------------


@dataclass(frozen=True)
class DataKeyMaterial:
    """The 256 octets of key material, split by direction (client to server first)."""

    c2s_cipher: bytes = field(repr=False)
    c2s_hmac: bytes = field(repr=False)
    s2c_cipher: bytes = field(repr=False)
    s2c_hmac: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, block: bytes) -> DataKeyMaterial:
        if len(block) != DATA_KEY_MATERIAL_LEN:
            raise KeyMethodError("data key material must be 256 octets")
        return cls(block[0:64], block[64:128], block[128:192], block[192:256])


def derive_data_keys(
    client: KeyMethod2, server: KeyMethod2, client_sid: bytes, server_sid: bytes
) -> DataKeyMaterial:
    """OpenVPN's PRF derivation: a 48-octet master secret from the client's
    pre-master and both random1, then 256 octets from the master, both random2 and
    both session ids."""
    if client.pre_master is None:
        raise KeyMethodError("the client's message carries the pre-master secret")
    master = tls1_prf(
        client.pre_master,
        b"OpenVPN master secret" + client.random1 + server.random1,
        48,
    )
    block = tls1_prf(
        master,
        b"OpenVPN key expansion" + client.random2 + server.random2 + client_sid + server_sid,
        DATA_KEY_MATERIAL_LEN,
    )
    return DataKeyMaterial.from_bytes(block)


def client_ciphers(peer_info: dict[str, str]) -> list[str]:
    """The data ciphers a client offers: IV_CIPHERS, or AES-GCM when it says only IV_NCP=2."""
    if "IV_CIPHERS" in peer_info:
        return [c.strip().upper() for c in peer_info["IV_CIPHERS"].split(":") if c.strip()]
    if peer_info.get("IV_NCP", "") >= "2":
        return ["AES-256-GCM", "AES-128-GCM"]
    return []


def negotiate_cipher(server_preference: list[str], peer_info: dict[str, str]) -> str | None:
    """The server's most preferred cipher that the client also offers."""
    offered = set(client_ciphers(peer_info))
    return next((c for c in server_preference if c.upper() in offered), None)
