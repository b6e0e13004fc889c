"""Fixtures the fuzz targets run against: IKE endpoints in memory, SK and ESP sealing.

Everything is deterministic (seeded randomness, a fake clock) so a finding replays.
The raw sealing helpers protect octets that the codec would refuse to encode
(a bad payload chain, an impossible Pad Length, fragment 0 of 0), so the parsers
behind the integrity check see hostile input that *authenticates*: a peer that holds
the keys, or a bug in the peer.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from esp.sa import EspSA
from esp.suites import ENCR_AES_GCM_16, ENCR_CHACHA20_POLY1305, SUITES, EspSuite
from ikev2.codec import IkeHeader, decode_header
from ikev2.config import ChildConfig, ConnectionConfig, EncapMode, Identity, PostQuantumKey
from ikev2.constants import PayloadType
from ikev2.cookies import CookiePolicy
from ikev2.crypto.algorithms import ENCRYPTIONS, INTEGRITIES
from ikev2.crypto.rng import DeterministicRandom
from ikev2.crypto.sk import SkCipher
from ikev2.endpoint import Endpoint, EndpointConfig
from ikev2.sa import IkeSa
from ikev2.ts import TrafficSelector
from testkit.ikev2_pair import deliver, on_wire

A_ADDR = "198.51.100.1"
B_ADDR = "198.51.100.2"
A_NET = "192.0.2.0/24"
B_NET = "203.0.113.0/26"
PSK = b"fuzz-psk-not-a-secret"
FUZZ_PPK = PostQuantumKey(b"fuzz-ppk", b"fuzz-ppk-not-a-secret-32-octets!")
"""A PPK both sides hold, not required: IKE_AUTH carries PPK_IDENTITY and NO_PPK_AUTH."""

Address = tuple[str, int]


# --- IKE ----------------------------------------------------------------------------------


def connection(
    local: str,
    remote: str,
    local_net: str,
    remote_net: str,
    fragment_size: int = 400,
    encap: EncapMode = "nat",
    ike_proposals: tuple[str, ...] = (),
    ppk: PostQuantumKey | None = None,
    esp_proposals: tuple[str, ...] = (),
) -> ConnectionConfig:
    """A PSK connection with one CHILD SA; 200-octet fragments split every IKE_AUTH.
    ``ike_proposals`` and ``esp_proposals`` replace the default ones (e.g. hybrid
    ML-KEM proposals)."""
    child = ChildConfig(
        "net",
        (TrafficSelector.from_network(local_net),),
        (TrafficSelector.from_network(remote_net),),
    )
    if esp_proposals:
        child = dataclasses.replace(child, esp_proposals=esp_proposals)
    conn = ConnectionConfig(
        name="conn",
        local_addresses=(local,),
        remote_address=remote,
        local_id=Identity.parse(local),
        remote_id=Identity.parse(remote),
        children=(child,),
        psk=PSK,
        ppk=ppk,
        fragment_size=fragment_size,
        # Most targets inject on port 500 without the non-ESP marker: "nat" keeps IKE
        # there (with "auto", the default, two lockgates move to port 4500).
        encap=encap,
    )
    return dataclasses.replace(conn, ike_proposals=ike_proposals) if ike_proposals else conn


def endpoint_config() -> EndpointConfig:
    """Small limits, so a fuzz run reaches them quickly."""
    return EndpointConfig(max_half_open=16, cookies=CookiePolicy(demand_above=8))


class Pair:
    """Endpoints ``a`` (initiator) and ``b`` over a wire we control.

    ``pump`` moves datagrams until nothing moves; ``hold`` keeps what a side sends
    for the caller instead of delivering it.
    """

    def __init__(
        self,
        seed: str = "fuzz",
        fragment_size: int = 400,
        encap: EncapMode = "nat",
        ike_proposals: tuple[str, ...] = (),
        ppk: PostQuantumKey | None = None,
        esp_proposals: tuple[str, ...] = (),
    ) -> None:
        self.clock = 0.0
        proposals = {"ike_proposals": ike_proposals, "esp_proposals": esp_proposals}
        self.a = Endpoint(
            [connection(A_ADDR, B_ADDR, A_NET, B_NET, fragment_size, encap, ppk=ppk, **proposals)],
            rng=DeterministicRandom(f"{seed}-a"),
            config=endpoint_config(),
        )
        self.b = Endpoint(
            [connection(B_ADDR, A_ADDR, B_NET, A_NET, fragment_size, encap, ppk=ppk, **proposals)],
            rng=DeterministicRandom(f"{seed}-b"),
            config=endpoint_config(),
        )
        self.recorded: list[bytes] = []
        """Every IKE message (without marker) that went over the wire."""

    def pump(self, hold: Callable[[str, bytes], bool] | None = None) -> list[tuple[str, bytes]]:
        """Deliver until quiet; returns the held datagrams as (sender, IKE message)."""
        held: list[tuple[str, bytes]] = []
        for _ in range(50):
            moved = False
            for name, src, dst in (("a", self.a, self.b), ("b", self.b, self.a)):
                list(src.events())
                for d in src.datagrams_to_send(self.clock):
                    moved = True
                    ike = d.data
                    self.recorded.append(ike)
                    if hold is not None and hold(name, ike):
                        held.append((name, ike))
                        continue
                    deliver(dst, on_wire(d), d.remote, d.local, self.clock)
            if not moved:
                return held
        raise RuntimeError("the endpoints never stopped talking")

    def sa(self, side: str) -> IkeSa:
        """The side's oldest IKE SA (stray half-open or rekeyed ones come later)."""
        return min((self.a if side == "a" else self.b).ike_sas(), key=lambda sa: sa.ike_sa_id)


def established(
    seed: str = "fuzz",
    fragment_size: int = 400,
    encap: EncapMode = "nat",
    ike_proposals: tuple[str, ...] = (),
    esp_proposals: tuple[str, ...] = (),
) -> Pair:
    """A pair with one IKE SA and its CHILD SA up on both sides."""
    pair = Pair(
        seed, fragment_size, encap, ike_proposals=ike_proposals, esp_proposals=esp_proposals
    )
    pair.a.initiate("conn", 0.0)
    pair.pump()
    return pair


HYBRID_PROPOSAL = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
"""The hybrid proposal of the IKE_INTERMEDIATE targets (RFC 9370)."""


def half_open_intermediate(seed: str = "fuzz") -> Pair:
    """IKE_SA_INIT done with :data:`HYBRID_PROPOSAL`; a's first IKE_INTERMEDIATE
    request held back, so b waits for Message ID 1 under the IKE_SA_INIT keys."""
    pair = Pair(seed, ike_proposals=(HYBRID_PROPOSAL,))
    pair.a.initiate("conn", 0.0)
    pair.pump(hold=lambda sender, ike: decode_header(ike).exchange_type == 43)
    return pair


HYBRID_ESP_PROPOSAL = "aes256gcm16-x25519-ke1_mlkem768"
"""The ESP proposal of the IKE_FOLLOWUP_KE target: PFS with ML-KEM (RFC 9370 §2.2.4)."""


def waiting_followup(seed: str = "fuzz") -> tuple[Pair, bytes]:
    """Established with :data:`HYBRID_ESP_PROPOSAL` (4000-octet fragments: none); a
    rekeys its CHILD SA and b answered with N(ADDITIONAL_KEY_EXCHANGE); a's
    IKE_FOLLOWUP_KE is held back, so b waits for it. Returns the pair and the link."""
    pair = Pair(seed, fragment_size=4000, esp_proposals=(HYBRID_ESP_PROPOSAL,))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    sa_a = pair.sa("a")
    pair.a.rekey_child(next(iter(sa_a.children)), pair.clock)
    pair.pump(hold=lambda sender, ike: decode_header(ike).exchange_type == 44)
    (link,) = pair.sa("b").followups
    return pair, link


def is_auth_request(sender: str, ike: bytes) -> bool:
    header = decode_header(ike)
    return sender == "a" and header.exchange_type == 35 and not header.response


def is_auth_response(sender: str, ike: bytes) -> bool:
    header = decode_header(ike)
    return sender == "b" and header.exchange_type == 35 and header.response


# --- raw SK and SKF sealing (RFC 7296 §3.14, RFC 7383 §2.5) -------------------------------


def sk_ciphers() -> dict[str, SkCipher]:
    """One SK cipher per kind: AES-GCM, ChaCha20-Poly1305, AES-CBC with HMAC."""
    out: dict[str, SkCipher] = {}
    for name, (encr, integ) in {
        "aes256gcm16": ((20, 256), None),
        "chacha20poly1305": ((28, None), None),
        "aes128-sha256": ((12, 128), 12),
        "aes256-sha512": ((12, 256), 14),
    }.items():
        encryption = ENCRYPTIONS[encr]
        integrity = INTEGRITIES[integ] if integ is not None else None
        key = bytes(range(encryption.key_material_len))
        ikey = bytes(range(100, 100 + integrity.key_len)) if integrity is not None else b""
        out[name] = SkCipher(encryption, key, integrity, ikey)
    return out


def _protect(cipher: SkCipher, aad: bytes, iv: bytes, padded: bytes) -> bytes:
    encryption = cipher.encryption
    if cipher.integrity is None:
        return aad + iv + encryption.seal(cipher.encryption_key, iv, padded, aad)
    if len(padded) % encryption.block_len:
        padded += bytes(-len(padded) % encryption.block_len)
    signed = aad + iv + encryption.seal(cipher.encryption_key, iv, padded, aad)
    return signed + cipher.integrity.compute(cipher.integrity_key, signed)


def _icv_len(cipher: SkCipher) -> int:
    return cipher.integrity.icv_len if cipher.integrity is not None else cipher.encryption.icv_len


def _header(template: IkeHeader, next_payload: int, length: int) -> bytes:
    flags = (0x08 if template.initiator else 0) | (0x20 if template.response else 0)
    return (
        template.spi_i
        + template.spi_r
        + bytes([next_payload, template.version, template.exchange_type, flags])
        + struct.pack("!II", template.message_id, length)
    )


def seal_raw(
    cipher: SkCipher, template: IkeHeader, first: int, inner: bytes, pad: int | None = None
) -> bytes:
    """An SK message around arbitrary inner octets; ``pad`` overrides the Pad Length."""
    block = cipher.encryption.block_len
    pad_len = -(len(inner) + 1) % block
    padded = inner + bytes(pad_len) + bytes([pad_len if pad is None else pad & 0xFF])
    if cipher.integrity is not None and len(padded) % block:
        padded += bytes(-len(padded) % block)
    body_len = cipher.encryption.iv_len + len(padded) + _icv_len(cipher)
    aad = _header(template, PayloadType.SK, 28 + 4 + body_len) + bytes([first & 0xFF, 0])
    aad += (4 + body_len).to_bytes(2, "big")
    iv = os.urandom(cipher.encryption.iv_len)
    return _protect(cipher, aad, iv, padded)


def seal_raw_fragment(
    cipher: SkCipher,
    template: IkeHeader,
    first: int,
    number: int,
    total: int,
    chunk: bytes,
) -> bytes:
    """An SKF message (any Fragment Number and Total Fragments) around ``chunk``."""
    block = cipher.encryption.block_len
    pad_len = -(len(chunk) + 1) % block
    padded = chunk + bytes(pad_len) + bytes([pad_len])
    body_len = 4 + cipher.encryption.iv_len + len(padded) + _icv_len(cipher)
    aad = _header(template, PayloadType.SKF, 28 + 4 + body_len) + bytes([first & 0xFF, 0])
    aad += (4 + body_len).to_bytes(2, "big") + struct.pack("!HH", number & 0xFFFF, total & 0xFFFF)
    iv = os.urandom(cipher.encryption.iv_len)
    return _protect(cipher, aad, iv, padded)


# --- ESP ----------------------------------------------------------------------------------

ESP_SPI = 0x1000_0001


@dataclass(frozen=True)
class EspKeys:
    """Keys of one ESP SA, so a test can build packets the SA authenticates."""

    suite: EspSuite
    encr_key: bytes
    integ_key: bytes
    esn: bool

    def inbound(self) -> EspSA:
        return EspSA(
            ESP_SPI, self.suite, self.encr_key, self.integ_key, esn=self.esn, replay_window=64
        )

    def outbound(self, first_seq: int = 1) -> EspSA:
        return EspSA(
            ESP_SPI, self.suite, self.encr_key, self.integ_key, esn=self.esn, first_seq=first_seq
        )

    def seal(self, seq: int, plaintext: bytes, spi: int = ESP_SPI) -> bytes:
        """An ESP packet around arbitrary plaintext (inner | padding | trailer)."""
        suite = self.suite
        header = struct.pack("!II", spi & 0xFFFFFFFF, seq & 0xFFFFFFFF)
        if suite.encr_id in (ENCR_AES_GCM_16, ENCR_CHACHA20_POLY1305):
            cls = AESGCM if suite.encr_id == ENCR_AES_GCM_16 else ChaCha20Poly1305
            iv = struct.pack("!Q", seq & (1 << 64) - 1)
            aad = struct.pack("!IQ", spi, seq) if self.esn else header
            sealed = cls(self.encr_key[:-4]).encrypt(self.encr_key[-4:] + iv, plaintext, aad)
            return header + iv + sealed
        plaintext += bytes(-len(plaintext) % 16)
        iv = os.urandom(16)
        enc = Cipher(algorithms.AES(self.encr_key), modes.CBC(iv)).encryptor()
        body = header + iv + enc.update(plaintext) + enc.finalize()
        mac_input = body + struct.pack("!I", seq >> 32) if self.esn else body
        assert suite.hash_name is not None
        icv = hmac.digest(self.integ_key, mac_input, suite.hash_name)[: suite.icv_len]
        return body + icv


def esp_keys() -> list[EspKeys]:
    """Every ESP suite, without and with ESN."""
    out = []
    for suite in SUITES.values():
        for esn in (False, True):
            encr = bytes((i * 7 + 1) & 0xFF for i in range(suite.encr_key_len))
            integ = bytes((i * 11 + 3) & 0xFF for i in range(suite.integ_key_len))
            out.append(EspKeys(suite, encr, integ, esn))
    return out


def ipv4_packet(src: str, dst: str, payload: bytes, proto: int = 17) -> bytes:
    """A minimal IPv4 packet (checksum left zero: nothing here checks it)."""
    total = 20 + len(payload)
    return (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            total,
            0,
            0x4000,
            64,
            proto,
            0,
            ipaddress.IPv4Address(src).packed,
            ipaddress.IPv4Address(dst).packed,
        )
        + payload
    )
