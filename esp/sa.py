"""One ESP Security Association: tunnel-mode encapsulation and decapsulation.

Wire format (RFC 4303 §2): SPI(4) | Sequence(4) | IV | ciphertext | ICV, where the
ciphertext covers inner packet | padding 1,2,3,... | Pad Length | Next Header.

The hot path builds each packet with a handful of precompiled `struct` calls and
one cipher call on a cipher object made once per SA. Bad input from the network
never raises: `decapsulate` returns a `DropReason`.
"""

from __future__ import annotations

import enum
import functools
import hmac
import os
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from esp.drops import DropReason
from esp.errors import EspConfigError
from esp.replay import NoReplayCheck, ReplayWindow
from esp.suites import ENCR_AES_GCM_16, ENCR_CHACHA20_POLY1305, ESP_HEADER_LEN, EspSuite

IPPROTO_IPIP = 4
"""Next Header of an inner IPv4 packet (tunnel mode)."""
IPPROTO_IPV6 = 41
"""Next Header of an inner IPv6 packet (tunnel mode)."""
IPPROTO_NONE = 59
"""Next Header of a dummy packet (RFC 4303 §2.6)."""
NH_PARTIAL_CSUM = 253
"""Next Header of an inner IPv4/IPv6 TCP segment whose checksum field holds only its
pseudo-header sum, for the receiver to complete: sent only on an SA whose two ends
agreed on it (`EspSA.partial_csum`), never otherwise.

Why the Next Header and not a padding pattern: both sit in the ESP trailer, which
the ICV covers (RFC 4303 §2.8, §3.3.2), so neither can be set or cleared on the way.
But padding is only there when the inner length leaves room for it (§2.4): an inner
packet of exactly the tunnel MTU has none, and those are most segments of a
super-packet. A marked padding would have to add octets beyond the path MTU. The
Next Header octet is always there and costs nothing. 253 is IANA's protocol number
for experimentation (RFC 3692, RFC 4727 §7.2); it is never a tunnel-mode Next Header,
so a receiver that did not agree drops it as today (BAD_NEXT_HEADER), and one that
did still checks that the inner packet is IPv4 or IPv6 (§2.6)."""

TUNNEL_NEXT_HEADERS = frozenset({IPPROTO_IPIP, IPPROTO_IPV6})
"""Next Header values a tunnel-mode SA delivers."""

_NEXT_HEADER_BY_VERSION = {4: IPPROTO_IPIP, 6: IPPROTO_IPV6}
_VERSION_BY_NEXT_HEADER = {IPPROTO_IPIP: 4, IPPROTO_IPV6: 6}

_SPI_SEQ = struct.Struct("!II")
# The AEAD explicit IV must be unique per key (RFC 4106 §3.1, RFC 7634 §2); it need
# not be unpredictable. With 32-bit sequence numbers ours is SPI | Sequence, the
# same 8 octets as the AAD (RFC 4106 §5): unique, since the counter never cycles
# (RFC 4303 §3.3.3) and the key is this SA's alone, and one object then serves as
# AAD, IV on the wire and the nonce's tail. With ESN the low 32 bits cycle, so
# there the IV is the 64-bit sequence number.
_SPI_SEQ_IV = struct.Struct("!IIQ")
# AEAD AAD with ESN: SPI | Seq high | Seq low (RFC 4106 §5, RFC 7634 §2.1).
_SPI_ESN = struct.Struct("!IQ")
_SEQ_HIGH = struct.Struct("!I")
# AEAD nonce with ESN: salt | explicit IV (the 64-bit sequence number).
_NONCE = struct.Struct("!IQ")

PARTS_PER_PACKET = 3
"""`EspSA.encapsulate_parts` gives each packet as this many octet strings."""

# Padding of length n is 1, 2, ..., n (RFC 4303 §2.4).
_PADDING = tuple(bytes(range(1, n + 1)) for n in range(256))
# Padding | Pad Length | Next Header for each pad length, by Next Header.
_TRAILERS = {
    nh: tuple(_PADDING[n] + bytes((n, nh)) for n in range(256))
    for nh in (IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_NONE, NH_PARTIAL_CSUM)
}
# The same, looked up by the first octet of the inner packet (its version nibble):
# one tuple index replaces "which IP version, which next header, which trailer".
_TRAILERS_BY_FIRST_OCTET: tuple[tuple[bytes, ...] | None, ...] = tuple(
    _TRAILERS[_NEXT_HEADER_BY_VERSION[octet >> 4]] if octet >> 4 in (4, 6) else None
    for octet in range(256)
)
# The same for a segment with a partial checksum: one Next Header for both versions.
_MARKED_BY_FIRST_OCTET: tuple[tuple[bytes, ...] | None, ...] = tuple(
    _TRAILERS[NH_PARTIAL_CSUM] if octet >> 4 in (4, 6) else None for octet in range(256)
)

FAST_MAX_INNER = 16384
"""Inner packets up to this length take the batch calls' fast path (longer ones are
sealed by the careful loop): the size of the trailer tables below."""


@functools.lru_cache(maxsize=8)
def _trailers_by_length(align: int, marked: bool = False) -> tuple[list[bytes] | None, ...]:
    """For each first octet of an inner packet, its trailer (padding, Pad Length, Next
    Header) by inner length, for a suite aligning to `align` octets; None where the
    octet is not IPv4/IPv6. Two shared lists of FAST_MAX_INNER references (128 KiB
    each): one list index per packet replaces the version lookup and the pad-length
    arithmetic, which measured 2-3% of the AES-GCM send path at 1400 octets.
    With `marked`, the trailers carry `NH_PARTIAL_CSUM` instead."""
    by_version = {
        version: [
            _TRAILERS[NH_PARTIAL_CSUM if marked else nh][(-2 - length) % align]
            for length in range(FAST_MAX_INNER + 1)
        ]
        for version, nh in _NEXT_HEADER_BY_VERSION.items()
    }
    return tuple(by_version.get(octet >> 4) for octet in range(256))


_SEQ_MAX_32 = (1 << 32) - 1
# What the batch calls take as they are (anything else is listed first).
_SEQUENCE_TYPES = (list, tuple)
_SEQ_MAX_64 = (1 << 64) - 1
_NO_LIMIT = 1 << 64

DecapResult = tuple[bytes, int] | DropReason
"""Inner packet and its Next Header (4 or 41), or why it was dropped."""
EncapResult = bytes | DropReason
"""ESP packet from the SPI to the ICV, or why nothing was sent."""


class LifetimeState(enum.Enum):
    """Where an SA stands against its lifetime; the IKE side polls this to rekey."""

    OK = "ok"
    SOFT = "soft"
    """A soft limit passed: start a rekey (RFC 4301 §4.4.2.1)."""
    HARD = "hard"
    """A hard limit or the sequence space is used up: the SA processes nothing more."""


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Byte and packet limits of one SA (None: no limit).

    Bytes count inner packet octets, the data the SA protected. Time limits are
    the IKE side's job: it owns the clock.
    """

    soft_bytes: int | None = None
    """Past this many bytes the SA reports SOFT."""
    hard_bytes: int | None = None
    """A packet that would take the SA past this many bytes is dropped."""
    soft_packets: int | None = None
    """Past this many packets the SA reports SOFT."""
    hard_packets: int | None = None
    """After this many packets the SA drops everything."""

    def __post_init__(self) -> None:
        for name in ("soft_bytes", "hard_bytes", "soft_packets", "hard_packets"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise EspConfigError(f"lifetime {name} must not be negative, got {value}")


@functools.lru_cache(maxsize=64)
def _nh_rules_for(next_headers: frozenset[int]) -> tuple[int, ...]:
    # One 256-entry table (2 KiB) per set of Next Header values, shared by every SA.
    return tuple(
        _VERSION_BY_NEXT_HEADER.get(nh, 0) if nh in next_headers else -1 for nh in range(256)
    )


class EspSA:
    """One unidirectional ESP SA in tunnel mode.

    The same class serves both directions: an outbound SA calls `encapsulate`, an
    inbound one `decapsulate`, and the counters and lifetime apply to whichever
    is used. Keys are KEYMAT slices (RFC 7296 §2.17), salt last for AEAD.
    """

    __slots__ = (
        "_aead",
        "_aes",
        "_align",
        "_bytes",
        "_hard_bytes",
        "_hard_packets",
        "_hash",
        "_icv_len",
        "_integ_key",
        "_min_len",
        "_next_headers",
        "_nh_rules",
        "_packets",
        "_salt",
        "_salt_int",
        "_seq",
        "_seq_max",
        "_seq_soft",
        "_soft_bytes",
        "_soft_packets",
        "_tunnel",
        "drops",
        "esn",
        "lifetime",
        "partial_csum",
        "replay",
        "spi",
        "suite",
    )

    def __init__(
        self,
        spi: int,
        suite: EspSuite,
        encr_key: bytes,
        integ_key: bytes = b"",
        *,
        esn: bool = False,
        replay_window: int = 1024,
        lifetime: Lifetime | None = None,
        first_seq: int = 1,
        next_headers: frozenset[int] = TUNNEL_NEXT_HEADERS,
    ) -> None:
        """Build the SA and its cipher objects.

        `first_seq` is the sequence number of the first outbound packet (1 per
        RFC 4303 §3.3.3; tests start near the end of the space). Raises
        `EspConfigError` for wrong key lengths or an SPI outside 256..2^32-1
        (RFC 4303 §2.1 reserves 1-255, and 0 is never on the wire).
        `replay_window` 0 turns the inbound replay check off (`NoReplayCheck`).
        `next_headers` lists the Next Header values `decapsulate` delivers; the
        default is tunnel mode. Others (transport-mode protocols such as 1 or 17)
        are passed through unchecked; inner packets of 4/41 must match that IP
        version.
        """
        if IPPROTO_NONE in next_headers:
            raise EspConfigError("next header 59 marks dummy packets; it is never delivered")
        if not 256 <= spi <= _SEQ_MAX_32:
            raise EspConfigError(f"SPI {spi:#x} is reserved or not 32-bit")
        if len(encr_key) != suite.encr_key_len:
            raise EspConfigError(
                f"{suite.name} needs a {suite.encr_key_len}-octet encryption key, "
                f"got {len(encr_key)}"
            )
        if len(integ_key) != suite.integ_key_len:
            raise EspConfigError(
                f"{suite.name} needs a {suite.integ_key_len}-octet integrity key, "
                f"got {len(integ_key)}"
            )
        self.spi = spi
        """SPI carried by every packet of this SA."""
        self.suite = suite
        """Cipher suite."""
        self.esn = esn
        """64-bit Extended Sequence Numbers (RFC 4303 §2.2.1)."""
        self.lifetime = lifetime if lifetime is not None else Lifetime()
        """Soft and hard byte/packet limits."""
        self.replay = ReplayWindow(replay_window) if replay_window else NoReplayCheck()
        """Inbound anti-replay window (unused on an outbound SA)."""
        self.drops: Counter[DropReason] = Counter()
        """Packets refused, per reason."""
        self.partial_csum = False
        """Inbound: deliver packets marked `NH_PARTIAL_CSUM` (both ends of the IKE SA
        agreed on it), with that Next Header; else they are BAD_NEXT_HEADER."""

        self._seq_max = _SEQ_MAX_64 if esn else _SEQ_MAX_32
        if not 1 <= first_seq <= self._seq_max + 1:
            raise EspConfigError(f"first sequence number {first_seq} out of range")
        # Next outbound sequence number; past _seq_max means exhausted.
        self._seq = first_seq
        # Report SOFT once 15/16 of the sequence space is used, so IKE rekeys well
        # before the counter runs out (RFC 4303 §3.3.3 forbids cycling it).
        self._seq_soft = self._seq_max - (self._seq_max >> 4)
        self._packets = 0
        self._bytes = 0
        life = self.lifetime
        self._soft_bytes = _NO_LIMIT if life.soft_bytes is None else life.soft_bytes
        self._hard_bytes = _NO_LIMIT if life.hard_bytes is None else life.hard_bytes
        self._soft_packets = _NO_LIMIT if life.soft_packets is None else life.soft_packets
        self._hard_packets = _NO_LIMIT if life.hard_packets is None else life.hard_packets

        self._next_headers = next_headers
        self._tunnel = next_headers == TUNNEL_NEXT_HEADERS
        # Per Next Header value: the inner IP version it requires (4, 6), 0 to
        # deliver unchecked, -1 to refuse. One tuple index per packet.
        self._nh_rules = _nh_rules_for(next_headers)
        if suite.align & (suite.align - 1):
            raise EspConfigError(f"{suite.name}: alignment {suite.align} is not a power of two")
        self._align = suite.align
        self._icv_len = suite.icv_len
        # Smallest packet: header, IV, one encrypted unit holding the trailer, ICV.
        self._min_len = ESP_HEADER_LEN + suite.iv_len + max(suite.align, 2) + suite.icv_len
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._aes: algorithms.AES | None = None
        self._salt = b""
        self._salt_int = 0
        self._integ_key = bytes(integ_key)
        self._hash = suite.hash_name or ""
        if suite.encr_id == ENCR_AES_GCM_16:
            self._aead = AESGCM(bytes(encr_key[:-4]))
        elif suite.encr_id == ENCR_CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(bytes(encr_key[:-4]))
        else:
            self._aes = algorithms.AES(bytes(encr_key))
        if self._aead is not None:
            self._salt = bytes(encr_key[-4:])
            self._salt_int = int.from_bytes(self._salt, "big")

    def __repr__(self) -> str:
        # Never show keys.
        return f"EspSA(spi={self.spi:#010x}, suite={self.suite.name}, esn={self.esn})"

    # ---- counters and lifetime -------------------------------------------------

    @property
    def packet_count(self) -> int:
        """Inner packets sent (outbound) or delivered (inbound)."""
        return self._packets

    @property
    def byte_count(self) -> int:
        """Inner packet octets sent or delivered."""
        return self._bytes

    @property
    def next_seq(self) -> int:
        """Sequence number the next outbound packet will carry (64-bit with ESN)."""
        return self._seq

    @property
    def seq_exhausted(self) -> bool:
        """True once the outbound counter cannot go on without wrapping."""
        return self._seq > self._seq_max

    def lifetime_state(self) -> LifetimeState:
        """OK, SOFT (rekey now) or HARD (replace: this SA is done)."""
        if (
            self._seq > self._seq_max
            or self._packets >= self._hard_packets
            or self._bytes >= self._hard_bytes
        ):
            return LifetimeState.HARD
        if (
            self._packets >= self._soft_packets
            or self._bytes >= self._soft_bytes
            or self._seq > self._seq_soft
        ):
            return LifetimeState.SOFT
        return LifetimeState.OK

    def mirror(self, packets: int, octets: int, next_seq: int) -> None:
        """Take the counters of the copy of this SA that another process runs (a
        data-plane worker), so lifetimes, liveness and status read them here. Counters
        only go up: a late report never takes one back. This copy must not seal:
        its sequence number is the worker's (RFC 4303 §3.3.3)."""
        self._packets = max(self._packets, packets)
        self._bytes = max(self._bytes, octets)
        self._seq = max(self._seq, next_seq)

    def _drop(self, reason: DropReason) -> DropReason:
        self.drops[reason] += 1
        return reason

    # ---- outbound --------------------------------------------------------------

    def encapsulate(self, inner: bytes, next_header: int | None = None) -> EncapResult:
        """ESP packet (SPI through ICV) carrying one inner IPv4/IPv6 packet.

        `next_header` defaults to 4 or 41 from the inner IP version; pass 59 to
        send a dummy packet. Returns a `DropReason` when the SA must not send
        (sequence space or hard lifetime used up) or the input is not IP.
        """
        n = len(inner)
        if next_header is None:
            trailers = _TRAILERS_BY_FIRST_OCTET[inner[0]] if n else None
            if trailers is None:
                return self._drop(DropReason.BAD_INNER_PACKET)
        else:
            trailers = _TRAILERS.get(next_header) or tuple(
                _PADDING[p] + bytes((p, next_header)) for p in range(self._align)
            )
        refused = self._refuse_outbound(n)
        if refused is not None:
            return self._drop(refused)
        seq = self._seq
        self._seq = seq + 1
        self._packets += 1
        self._bytes += n
        plaintext = inner + trailers[-(n + 2) % self._align]
        if self._aead is None:
            return self._encapsulate_cbc(seq, plaintext)
        return self._seal_aead(seq, plaintext)

    def _seal_aead(self, seq: int, plaintext: bytes) -> bytes:
        # One AEAD packet; the IV choice is explained at _SPI_SEQ_IV.
        aead = self._aead
        if aead is None:
            raise EspConfigError(f"{self.suite.name} is not an AEAD suite")
        if self.esn:
            header = _SPI_SEQ_IV.pack(self.spi, seq & _SEQ_MAX_32, seq)
            aad = _SPI_ESN.pack(self.spi, seq)
            return header + aead.encrypt(_NONCE.pack(self._salt_int, seq), plaintext, aad)
        aad = _SPI_SEQ.pack(self.spi, seq)
        return aad + aad + aead.encrypt(self._salt + aad, plaintext, aad)

    def _refuse_outbound(self, n: int) -> DropReason | None:
        if self._seq > self._seq_max:
            # RFC 4303 §3.3.3: the counter MUST NOT cycle; a new SA is needed.
            return DropReason.SEQ_EXHAUSTED
        if self._packets >= self._hard_packets or self._bytes + n > self._hard_bytes:
            return DropReason.LIFETIME_EXPIRED
        return None

    def encapsulate_batch(self, inners: Iterable[bytes]) -> list[EncapResult]:
        """`encapsulate` for each packet, in order: the same octets, faster.

        For AEAD suites with 32-bit sequence numbers, when the whole batch fits
        the sequence space and the lifetime (the common case), one comprehension
        seals it checking nothing per packet but the IP version, which fails by
        exception and hands the batch to the careful loop.
        """
        batch = inners if isinstance(inners, _SEQUENCE_TYPES) else list(inners)
        count = len(batch)
        aead = self._fast_cipher(count)
        if aead is not None:
            encrypt = aead.encrypt
            trailers = _trailers_by_length(self._align)
            salt, start = self._salt, self._seq
            try:
                # SPI | Sequence twice: as itself and as the IV (see _SPI_SEQ_IV).
                packets: list[EncapResult] = [
                    aad + aad + encrypt(salt + aad, inner + trailers[inner[0]][len(inner)], aad)
                    for aad, inner in zip(self._aads(start, count), batch, strict=True)
                ]
            except (TypeError, IndexError):
                pass  # not IPv4/IPv6: the careful loop says which
            else:
                if self._fast_commit(batch):
                    return packets
        return self._encapsulate_slow(batch)

    def _encapsulate_slow(self, batch: Sequence[bytes], partial: bool = False) -> list[EncapResult]:
        # Where the fast path does not run or gave up: one packet at a time (CBC),
        # or the careful loop (AEAD). Shared by both batch calls, so a batch the
        # fast path refused is not sealed by it a second time.
        if self._aead is None:
            encapsulate = self.encapsulate
            if partial:
                return [
                    encapsulate(inner, NH_PARTIAL_CSUM)
                    if inner and _MARKED_BY_FIRST_OCTET[inner[0]] is not None
                    else self._drop(DropReason.BAD_INNER_PACKET)
                    for inner in batch
                ]
            return [encapsulate(inner) for inner in batch]
        results: list[EncapResult] = []
        self._encapsulate_checked(batch, results, partial)
        return results

    def encapsulate_parts(self, inners: Iterable[bytes], *, partial: bool = False) -> list[bytes]:
        """The ESP packets of `encapsulate_batch`, as gather parts for `sendmsg`.

        Returns `PARTS_PER_PACKET` octet strings per packet, in order; each
        group's concatenation is the octets `encapsulate_batch` gives for it. For
        AEAD suites they are SPI | Sequence, the IV and the ciphertext with its
        ICV, so the ciphertext is never copied into a whole packet: the kernel
        gathers the parts (many packets per UDP GSO `sendmsg`, which cuts by
        length and not by part). Otherwise the first is the whole packet and the
        others are empty. A refused packet has no parts; it is counted in
        `drops` as in `encapsulate_batch`.

        With `partial` every packet is marked `NH_PARTIAL_CSUM` (TCP segments that
        carry only their pseudo-header sum; only for a peer that agreed on it).
        """
        batch = inners if isinstance(inners, _SEQUENCE_TYPES) else list(inners)
        count = len(batch)
        aead = self._fast_cipher(count)
        if aead is not None:
            encrypt = aead.encrypt
            trailers = _trailers_by_length(self._align, partial)
            salt = self._salt
            aads = self._aads(self._seq, count)
            try:
                bodies = [
                    encrypt(salt + aad, inner + trailers[inner[0]][len(inner)], aad)
                    for aad, inner in zip(aads, batch, strict=True)
                ]
            except (TypeError, IndexError):
                pass  # not IPv4/IPv6: the careful loop says which
            else:
                if self._fast_commit(batch):
                    # Slice assignment interleaves in C (measured cheaper than
                    # chain/zip); the IV is the AAD object itself.
                    parts = [b""] * (PARTS_PER_PACKET * count)
                    parts[0::3] = aads
                    parts[1::3] = aads
                    parts[2::3] = bodies
                    return parts
        parts = []
        for packet in self._encapsulate_slow(batch, partial):
            if isinstance(packet, bytes):
                if self._aead is not None:
                    parts += (packet[:8], packet[8:16], packet[16:])
                else:
                    parts += (packet, b"", b"")
        return parts

    # The fast path of both batch calls runs for an AEAD suite with 32-bit
    # sequence numbers when the whole batch fits the sequence space and the
    # packet limit (checked before sealing) and the byte limit (checked after,
    # before anything is counted or returned). A packet that is not IPv4/IPv6
    # (empty, or a first octet with no trailer: None) or longer than FAST_MAX_INNER
    # raises and nothing counts either: the careful loop then starts over with the
    # same sequence numbers,
    # and what was sealed never leaves. Every operation in those comprehensions
    # costs: they are what the benchmark's target is about.

    def _aads(self, start: int, count: int) -> list[bytes]:
        # SPI | Sequence for `count` packets from `start`, packed by map (no bytecode
        # per packet).
        return list(map(_SPI_SEQ.pack, repeat(self.spi, count), range(start, start + count)))

    def _fast_cipher(self, count: int) -> AESGCM | ChaCha20Poly1305 | None:
        # The cipher, if the fast path may seal `count` packets.
        start = self._seq
        if self.esn or start + count - 1 > min(
            self._seq_max, start + self._hard_packets - self._packets - 1
        ):
            return None
        return self._aead

    def _fast_commit(self, batch: Sequence[bytes]) -> bool:
        # Count a sealed batch, unless it would pass the hard byte limit.
        total = sum(map(len, batch))
        if self._bytes + total > self._hard_bytes:
            return False
        count = len(batch)
        self._seq += count
        self._packets += count
        self._bytes += total
        return True

    def _encapsulate_checked(
        self, batch: Sequence[bytes], results: list[EncapResult], partial: bool = False
    ) -> None:
        # The careful loop: every limit per packet, ESN, refusals.
        append = results.append
        seal = self._seal_aead
        by_octet = _MARKED_BY_FIRST_OCTET if partial else _TRAILERS_BY_FIRST_OCTET
        align = self._align
        seq, sent_bytes = self._seq, self._bytes
        # Sending is fine while seq stays at or below `stop`: that folds the
        # sequence space and the hard packet limit into one comparison.
        stop = min(self._seq_max, seq + self._hard_packets - self._packets - 1)
        hard_bytes = self._hard_bytes
        start = seq
        for inner in batch:
            n = len(inner)
            trailers = by_octet[inner[0]] if n else None
            if trailers is None or seq > stop or sent_bytes + n > hard_bytes:
                # Rare: settle the counters and let the one-packet path say why.
                self._packets += seq - start
                self._seq, self._bytes = seq, sent_bytes
                marked = partial and trailers is not None
                append(self.encapsulate(inner, NH_PARTIAL_CSUM if marked else None))
                seq = start = self._seq
                sent_bytes = self._bytes
                continue
            append(seal(seq, inner + trailers[-(n + 2) % align]))
            seq += 1
            sent_bytes += n
        self._packets += seq - start
        self._seq, self._bytes = seq, sent_bytes

    def _cbc_key(self) -> algorithms.AES:
        if self._aes is None:  # only CBC suites reach here; __init__ sets it for them
            raise EspConfigError(f"{self.suite.name} has no CBC key")
        return self._aes

    def _encapsulate_cbc(self, seq: int, plaintext: bytes) -> bytes:
        # RFC 3602 §3: the CBC IV must be unpredictable, so it is random per packet.
        iv = os.urandom(16)
        encryptor = Cipher(self._cbc_key(), modes.CBC(iv)).encryptor()
        body = (
            _SPI_SEQ.pack(self.spi, seq & _SEQ_MAX_32)
            + iv
            + encryptor.update(plaintext)
            + encryptor.finalize()
        )
        # With ESN the high half is authenticated but not sent (RFC 4303 §2.2.1).
        mac_input = body + _SEQ_HIGH.pack(seq >> 32) if self.esn else body
        return body + hmac.digest(self._integ_key, mac_input, self._hash)[: self._icv_len]

    # ---- inbound ---------------------------------------------------------------

    def decapsulate(self, packet: bytes) -> DecapResult:
        """Inner packet and Next Header from an ESP packet (SPI through ICV).

        `packet` may be any bytes-like object (bytes, bytearray, memoryview).

        Order per RFC 4303 §3.4: replay check, then ICV, then the window commit,
        then padding and Next Header. Any input gives a result, never an exception.
        """
        n = len(packet)
        if n < self._min_len:
            return self._drop(DropReason.TOO_SHORT)
        spi, seq_low = _SPI_SEQ.unpack_from(packet)
        if spi != self.spi:
            return self._drop(DropReason.NO_SA)
        replay = self.replay
        seq = replay.infer_seq(seq_low) if self.esn else seq_low
        if not replay.check(seq):
            return self._drop(DropReason.REPLAY)
        if self._packets >= self._hard_packets or self._bytes >= self._hard_bytes:
            return self._drop(DropReason.LIFETIME_EXPIRED)
        aead = self._aead
        if aead is not None:
            aad = _SPI_ESN.pack(spi, seq) if self.esn else packet[:8]
            try:
                plaintext = aead.decrypt(self._salt + packet[8:16], packet[16:], aad)
            except InvalidTag:
                return self._drop(DropReason.ICV_FAILURE)
        else:
            decrypted = self._decapsulate_cbc(packet, seq)
            if isinstance(decrypted, DropReason):
                return self._drop(decrypted)
            plaintext = decrypted
        # RFC 4303 §3.4.3: the window moves only for authenticated packets.
        replay.commit(seq)
        end = len(plaintext) - 2
        padlen = plaintext[end]
        inner_len = end - padlen
        # endswith with bounds compares in place: no slice is copied.
        if inner_len < 0 or not plaintext.endswith(_PADDING[padlen], 0, end):
            return self._drop(DropReason.BAD_PADDING)
        next_header = plaintext[end + 1]
        if next_header == IPPROTO_NONE:
            return self._drop(DropReason.DUMMY_PACKET)
        version = self._nh_rules[next_header]
        if next_header == NH_PARTIAL_CSUM and self.partial_csum and self._tunnel:
            version = plaintext[0] >> 4 if inner_len and plaintext[0] >> 4 in (4, 6) else -1
        if version < 0 or (version and (inner_len == 0 or plaintext[0] >> 4 != version)):
            return self._drop(DropReason.BAD_NEXT_HEADER)
        if self._bytes + inner_len > self._hard_bytes:
            return self._drop(DropReason.LIFETIME_EXPIRED)
        self._packets += 1
        self._bytes += inner_len
        return plaintext[:inner_len], next_header

    def _decapsulate_cbc(self, packet: bytes, seq: int) -> bytes | DropReason:
        icv_len = self._icv_len
        body_end = len(packet) - icv_len
        if (body_end - 24) % 16:
            return DropReason.BAD_LENGTH
        body = packet[:body_end]
        if self.esn:
            # The high half is authenticated after the payload (RFC 4303 §2.2.1);
            # update() rather than + so any buffer type works.
            mac = hmac.new(self._integ_key, body, self._hash)
            mac.update(_SEQ_HIGH.pack(seq >> 32))
            expected = mac.digest()[:icv_len]
        else:
            expected = hmac.digest(self._integ_key, body, self._hash)[:icv_len]
        if not hmac.compare_digest(expected, packet[body_end:]):
            return DropReason.ICV_FAILURE
        decryptor = Cipher(self._cbc_key(), modes.CBC(packet[8:24])).decryptor()
        return decryptor.update(packet[24:body_end]) + decryptor.finalize()

    def decapsulate_batch(self, packets: Iterable[bytes]) -> list[DecapResult]:
        """`decapsulate` for each packet, in order: the same results, faster.

        For AEAD suites a loop takes the path of a good tunnel-mode packet with
        the counters in locals and drops bad tags itself (one decryption per
        forgery); replays are refused before any decryption. Any other packet
        that leaves that path (short, unknown SPI, padding, next header, limits)
        is handed, before anything was committed for it, to `decapsulate`, which
        says why.
        """
        aead = self._aead
        if aead is None:
            decapsulate = self.decapsulate
            return [decapsulate(packet) for packet in packets]
        batch = packets if isinstance(packets, _SEQUENCE_TYPES) else list(packets)
        # The common case, checked for the whole batch at C speed: tunnel mode,
        # 32-bit sequence numbers, no packet too short, and the batch fits the packet
        # and byte limits (an inner packet is shorter than its ESP packet).
        if (
            not self.esn
            and self._tunnel
            and batch
            and min(map(len, batch)) >= self._min_len
            and self._packets + len(batch) <= self._hard_packets
            and self._bytes + sum(map(len, batch)) <= self._hard_bytes
        ):
            return self._decapsulate_runs(batch, aead)
        return self._decapsulate_checked(batch, aead)

    def _decapsulate_runs(
        self, batch: Sequence[bytes], aead: AESGCM | ChaCha20Poly1305
    ) -> list[DecapResult]:
        # The lean loop of `decapsulate_batch`, for a batch that fits the limits.
        # A packet takes it when its number is the one after the highest so far:
        # new by RFC 4303 §3.4.3 without a window lookup. The window learns each
        # run of such numbers in one `commit_run`, after all their ICVs verified
        # and before anything else reads it. Any other packet (a gap, reordering,
        # a replay, another SPI, a bad tag, padding or next header) settles the
        # run and goes to `decapsulate`, which checks it from the start.
        results: list[DecapResult] = []
        append = results.append
        decrypt = aead.decrypt
        unpack = _SPI_SEQ.unpack_from
        replay = self.replay
        trailers = _TRAILERS_BY_FIRST_OCTET
        partial, marked = self.partial_csum, _TRAILERS[NH_PARTIAL_CSUM]
        my_spi, salt = self.spi, self._salt
        received = self._bytes
        first = expected = replay.highest + 1
        for packet in batch:
            spi, seq = unpack(packet)
            if seq == expected and spi == my_spi:
                try:
                    # Bytes slices, though they copy: `cryptography` 50 takes any
                    # other buffer (a memoryview slice, or the output buffer of
                    # decrypt_into) by a slower path, measured costlier than the
                    # copy at 64 and at 1400 octets.
                    plaintext = decrypt(salt + packet[8:16], packet[16:], packet[:8])
                    # One comparison checks the padding (RFC 4303 §2.4), Pad Length
                    # and Next Header against the inner IP version (§2.6): the
                    # trailer a good packet of this version and pad length ends
                    # with. A first octet that is not IPv4/IPv6 has no trailers
                    # (TypeError); an empty inner packet starts with its padding
                    # or Pad Length (0-3, not IP). The plaintext holds the
                    # trailer: the packet is at least _min_len long.
                    padlen = plaintext[-2]
                    good = plaintext.endswith(trailers[plaintext[0]][padlen])  # type: ignore[index]
                except InvalidTag:
                    # A forgery: dropped here, so it never costs a second decryption.
                    append(self._drop(DropReason.ICV_FAILURE))
                    continue
                except TypeError:
                    good = False
                if not good and partial and plaintext.endswith(marked[padlen]):
                    # A marked segment (NH_PARTIAL_CSUM): IPv4 or IPv6 inside.
                    good = trailers[plaintext[0]] is not None
                if good:
                    expected = seq + 1
                    inner_len = len(plaintext) - 2 - padlen
                    received += inner_len
                    append((plaintext[:inner_len], plaintext[-1]))
                    continue
            # Off the path: settle the run and the counters, let `decapsulate`
            # decide (a gap or reordering costs one window lookup more).
            if expected > first:
                replay.commit_run(first, expected - 1)
            self._packets += expected - first
            self._bytes = received
            append(self.decapsulate(packet))
            received = self._bytes
            first = expected = replay.highest + 1
        if expected > first:
            replay.commit_run(first, expected - 1)
        self._packets += expected - first
        self._bytes = received
        return results

    def _decapsulate_checked(
        self, batch: Sequence[bytes], aead: AESGCM | ChaCha20Poly1305
    ) -> list[DecapResult]:
        # The careful loop of `decapsulate_batch`: ESN, limits, short packets.
        results: list[DecapResult] = []
        append = results.append
        decrypt = aead.decrypt
        unpack = _SPI_SEQ.unpack_from
        replay = self.replay
        check, commit, infer = replay.check, replay.commit, replay.infer_seq
        # Packets mostly arrive in order: a number above the highest needs no
        # window lookup. Only this loop moves the window until it calls out.
        highest = replay.highest
        in_order_limit = _SEQ_MAX_64 if self.esn else _SEQ_MAX_32
        esn_aad = _SPI_ESN.pack if self.esn else None
        rules, padding = self._nh_rules, _PADDING
        partial = self.partial_csum and self._tunnel
        my_spi, salt, min_len = self.spi, self._salt, self._min_len
        hard_bytes = self._hard_bytes
        count, received = self._packets, self._bytes
        hard_packets = self._hard_packets
        for packet in batch:
            if len(packet) >= min_len and count < hard_packets and received < hard_bytes:
                spi, seq = unpack(packet)
                if esn_aad is not None:
                    seq = infer(seq)
                if spi == my_spi:
                    # Replays and forgeries are what an attacker sends: drop them
                    # here, so they never cost a second decryption.
                    if not (highest < seq <= in_order_limit or check(seq)):
                        append(self._drop(DropReason.REPLAY))
                        continue
                    try:
                        plaintext = decrypt(
                            salt + packet[8:16],
                            packet[16:],
                            packet[:8] if esn_aad is None else esn_aad(spi, seq),
                        )
                    except InvalidTag:
                        append(self._drop(DropReason.ICV_FAILURE))
                        continue
                    end = len(plaintext) - 2
                    padlen = plaintext[end]
                    inner_len = end - padlen
                    next_header = plaintext[end + 1]
                    version = rules[next_header]
                    if next_header == NH_PARTIAL_CSUM and partial:
                        version = plaintext[0] >> 4 if plaintext[0] >> 4 in (4, 6) else -1
                    if (
                        inner_len > 0
                        and version > 0
                        and plaintext[0] >> 4 == version
                        and plaintext.endswith(padding[padlen], 0, end)
                        and received + inner_len <= hard_bytes
                    ):
                        commit(seq)
                        if seq > highest:
                            highest = seq
                        count += 1
                        received += inner_len
                        append((plaintext[:inner_len], next_header))
                        continue
            # Off the good path: settle the counters and let `decapsulate` decide.
            self._packets, self._bytes = count, received
            append(self.decapsulate(packet))
            count, received, highest = self._packets, self._bytes, replay.highest
        self._packets, self._bytes = count, received
        return results
