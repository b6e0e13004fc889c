"""IKE fragmentation (RFC 7383): split a protected message into SKF messages and back.

A large IKE_AUTH (certificate chains) does not fit one UDP datagram without IP
fragmentation, which NATs and firewalls often drop. RFC 7383 splits the plaintext of
the SK payload (the inner payload chain) into chunks and protects each chunk in its
own message with an Encrypted Fragment payload (SKF, type 53, §2.5)::

    IKE header (Next Payload = 53) | SKF generic header | Fragment Number (2) |
    Total Fragments (2) | IV | encrypted (chunk | Padding | Pad Length) | ICV

Each fragment is protected like an SK payload (RFC 7296 §3.14) with the IKE SA's
keys; for the AEADs the associated data runs from the IKE header through the Total
Fragments field (§2.5). Only the first fragment's Next Payload names the first inner
payload; the others carry 0.

``ikev2.crypto.sk.SkCipher`` protects whole SK payloads, so this module has a small
adapter (:func:`seal_fragment`, :func:`open_fragment`) that uses the same cipher
objects and keys (``SkCipher.encryption``/``integrity`` and their keys) for SKF.

How the state machine is meant to call it, once both sides sent
IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT (§2.3)::

    # sending: one datagram, or fragments when it would exceed the configured size
    datagrams = seal_for_size(message, sk.outbound, rng, max_len, fragmentation=True)

    # receiving: SKF messages go through the reassembler of that IKE SA
    if is_fragmented(data):
        message = reassembler.receive(data, sk.inbound, now)   # None until complete
    else:
        message = sk.inbound.open(data)
    # ...and reassembler.expire(now) from the SA's timer (next_timeout()).

Route SKF datagrams with :func:`is_fragmented` *before* ``ikev2.codec.decode_message``:
the codec does not know payload 53 and would read fragment 1's encrypted body as the
inner payload its Next Payload names, and fail with InvalidSyntax.

Errors: :class:`~ikev2.errors.IntegrityCheckFailed` for a tampered fragment (drop it
silently, RFC 7383 §2.6), :class:`~ikev2.errors.InvalidSyntax` for a malformed one,
:class:`FragmentLimitExceeded` when a peer exceeds the reassembly limits. None of them
is answered with a notify.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ikev2.codec.message import (
    IkeHeader,
    Message,
    decode_header,
    decode_payloads,
    encode_payloads,
    generic_header,
)
from ikev2.constants import GENERIC_PAYLOAD_HEADER_LEN, IKE_HEADER_LEN, PayloadType
from ikev2.crypto.rng import RandomSource
from ikev2.crypto.sk import SkCipher
from ikev2.errors import InvalidSyntax, LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

_FRAGMENT_FIELDS_LEN = 4  # Fragment Number and Total Fragments, 2 octets each
_SKF_PREFIX = IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN + _FRAGMENT_FIELDS_LEN
_MAX_FRAGMENTS = 0xFFFF


class FragmentLimitExceeded(RemoteProtocolError):
    """The peer's fragments exceed our reassembly limits; they are dropped unanswered."""


@dataclass(frozen=True, slots=True)
class FragmentLimits:
    """Bounds on what a peer can make us buffer while reassembling (RFC 7383 §2.6)."""

    max_fragments: int = 64
    """Largest Total Fragments we accept for one message."""
    max_message_len: int = 64 * 1024
    """Largest reassembled inner payload chain, in octets."""
    max_pending: int = 4
    """Messages being reassembled at the same time (per IKE SA)."""
    timeout: float = 30.0
    """Seconds after its first fragment an incomplete message is dropped."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_fragments <= _MAX_FRAGMENTS:
            raise LocalProtocolError("max_fragments must be 1..65535")
        if self.max_message_len < 1 or self.max_pending < 1 or self.timeout <= 0:
            raise LocalProtocolError("fragment limits must be positive")


@dataclass(frozen=True, slots=True)
class Fragment:
    """One verified and decrypted SKF message."""

    header: IkeHeader
    """Its IKE header (authenticated with the fragment)."""
    number: int
    """Fragment Number, 1..total."""
    total: int
    """Total Fragments."""
    first_payload: int
    """Next Payload of the SKF header: the first inner payload's type in fragment 1."""
    chunk: bytes
    """This fragment's piece of the inner payload chain."""


def _icv_len(cipher: SkCipher) -> int:
    if cipher.integrity is not None:
        return cipher.integrity.icv_len
    return cipher.encryption.icv_len


def max_chunk_len(cipher: SkCipher, max_len: int) -> int:
    """Largest chunk of inner payloads whose SKF message fits in ``max_len`` octets."""
    room = max_len - _SKF_PREFIX - cipher.encryption.iv_len - _icv_len(cipher)
    block = cipher.encryption.block_len
    # The plaintext is chunk | padding | Pad Length, a whole number of blocks.
    chunk = (room // block) * block - 1
    if chunk < 1:
        raise LocalProtocolError(f"fragment size {max_len} leaves no room for data")
    return chunk


def seal_fragment(
    cipher: SkCipher,
    message: Message,
    number: int,
    total: int,
    first_payload: int,
    chunk: bytes,
    rng: RandomSource,
) -> bytes:
    """Protect one chunk as the SKF message ``number`` of ``total`` (RFC 7383 §2.5)."""
    if not 1 <= number <= total <= _MAX_FRAGMENTS:
        raise LocalProtocolError(f"fragment {number} of {total} is out of range")
    encryption = cipher.encryption
    pad_len = -(len(chunk) + 1) % encryption.block_len
    padded = chunk + bytes(pad_len) + bytes([pad_len])
    body_len = _FRAGMENT_FIELDS_LEN + encryption.iv_len + len(padded) + _icv_len(cipher)
    header = message.header(PayloadType.SKF, IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN + body_len)
    next_payload = first_payload if number == 1 else PayloadType.NONE
    aad = (
        header.encode()
        + generic_header(next_payload, body_len)
        + number.to_bytes(2, "big")
        + total.to_bytes(2, "big")
    )
    iv = rng.token_bytes(encryption.iv_len)
    sealed = encryption.seal(cipher.encryption_key, iv, padded, aad)
    signed = aad + iv + sealed
    if cipher.integrity is None:
        return signed
    return signed + cipher.integrity.compute(cipher.integrity_key, signed)


def fragment_message(
    message: Message, cipher: SkCipher, rng: RandomSource, max_len: int
) -> list[bytes]:
    """The SKF messages of ``message`` (``encrypted=True``), each at most ``max_len``.

    ``max_len`` counts the IKE message from its header to the ICV: leave room for the
    IP and UDP headers and, on port 4500, the non-ESP marker.
    """
    if not message.encrypted:
        raise LocalProtocolError("only messages protected by SK are fragmented (RFC 7383 §2.5)")
    first, inner = encode_payloads(message.payloads)
    size = max_chunk_len(cipher, max_len)
    chunks = [inner[i : i + size] for i in range(0, len(inner), size)] or [b""]
    if len(chunks) > _MAX_FRAGMENTS:
        raise LocalProtocolError(f"message needs {len(chunks)} fragments, more than 65535")
    total = len(chunks)
    return [
        seal_fragment(cipher, message, number, total, first, chunk, rng)
        for number, chunk in enumerate(chunks, start=1)
    ]


def seal_for_size(
    message: Message,
    cipher: SkCipher,
    rng: RandomSource,
    max_len: int,
    *,
    fragmentation: bool,
) -> list[bytes]:
    """One SK message, or SKF fragments if it is longer than ``max_len`` and both
    sides support fragmentation (RFC 7383 §2.5.1). IKE_SA_INIT is never fragmented."""
    whole = cipher.seal(message, rng)
    if not fragmentation or len(whole) <= max_len:
        return [whole]
    fragments = fragment_message(message, cipher, rng, max_len)
    log.debug(
        "message ID %d of %d octets sent as %d fragments",
        message.message_id,
        len(whole),
        len(fragments),
    )
    return fragments


def is_fragmented(data: bytes) -> bool:
    """Whether a received IKE message (without non-ESP marker) starts with SKF."""
    return len(data) >= IKE_HEADER_LEN and data[16] == PayloadType.SKF


def open_fragment(cipher: SkCipher, data: bytes) -> Fragment:
    """Verify and decrypt one SKF message.

    Raises :class:`IntegrityCheckFailed` (drop silently) or :class:`InvalidSyntax`.
    """
    header = decode_header(data)
    if header.next_payload != PayloadType.SKF:
        raise InvalidSyntax("message is not an IKE fragment (no SKF payload)")
    if len(data) < _SKF_PREFIX:
        raise InvalidSyntax("IKE fragment shorter than its SKF header")
    next_payload = data[IKE_HEADER_LEN]
    payload_len = int.from_bytes(data[IKE_HEADER_LEN + 2 : IKE_HEADER_LEN + 4], "big")
    if payload_len != len(data) - IKE_HEADER_LEN:
        # §2.5: the SKF payload is the only payload of a fragment message.
        raise InvalidSyntax("SKF payload length does not match the message")
    number = int.from_bytes(data[IKE_HEADER_LEN + 4 : IKE_HEADER_LEN + 6], "big")
    total = int.from_bytes(data[IKE_HEADER_LEN + 6 : _SKF_PREFIX], "big")
    if not 1 <= number <= total:
        raise InvalidSyntax(f"fragment number {number} of {total} is invalid")
    encryption = cipher.encryption
    iv_len, icv_len = encryption.iv_len, _icv_len(cipher)
    if len(data) < _SKF_PREFIX + iv_len + icv_len + 1:
        raise InvalidSyntax("SKF payload too short for IV, Pad Length and ICV")
    aad = data[:_SKF_PREFIX]
    iv = data[_SKF_PREFIX : _SKF_PREFIX + iv_len]
    if cipher.integrity is not None:
        # As for SK (RFC 7296 §3.14): the ICV covers the whole message, checked first.
        cipher.integrity.verify(cipher.integrity_key, data[:-icv_len], data[-icv_len:])
        ciphertext = data[_SKF_PREFIX + iv_len : -icv_len]
        if len(ciphertext) % encryption.block_len:
            raise InvalidSyntax("SKF ciphertext is not a whole number of blocks")
    else:
        ciphertext = data[_SKF_PREFIX + iv_len :]
    padded = encryption.open(cipher.encryption_key, iv, ciphertext, aad)
    pad_len = padded[-1]
    if pad_len + 1 > len(padded):
        raise InvalidSyntax("SKF Pad Length longer than the plaintext")
    chunk = padded[: len(padded) - pad_len - 1]
    first = next_payload if number == 1 else PayloadType.NONE
    return Fragment(header, number, total, first, chunk)


@dataclass(slots=True)
class _Pending:
    """Fragments of one message received so far."""

    header: IkeHeader
    total: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    first_payload: int = PayloadType.NONE
    size: int = 0


_DEFAULT_LIMITS = FragmentLimits()


class Reassembler:
    """Collects the fragments of an IKE SA's incoming messages (RFC 7383 §2.6).

    Messages are told apart by Message ID and the Response flag (our requests and the
    peer's share the ID space only within one direction). Fragments are verified before
    they are stored, so a forged one cannot push out genuine ones.
    """

    __slots__ = ("_pending", "limits")  # one per IKE SA: no per-object dict

    def __init__(self, limits: FragmentLimits | None = None) -> None:
        self.limits = limits or _DEFAULT_LIMITS  # frozen: every SA can share one
        self._pending: dict[tuple[int, bool], _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def next_timeout(self) -> float | None:
        """When the oldest incomplete message will be dropped, or ``None``."""
        if not self._pending:
            return None
        return min(p.started for p in self._pending.values()) + self.limits.timeout

    def expire(self, now: float) -> None:
        """Drop incomplete messages whose first fragment is older than the timeout."""
        for key, pending in list(self._pending.items()):
            if now >= pending.started + self.limits.timeout:
                log.info(
                    "dropping incomplete fragmented message ID %d (%d of %d fragments)",
                    key[0],
                    len(pending.chunks),
                    pending.total,
                )
                del self._pending[key]

    def receive(self, data: bytes, cipher: SkCipher, now: float) -> Message | None:
        """Take one SKF message; return the whole message once every fragment is in.

        The returned :class:`Message` has ``encrypted=True`` and the inner payloads,
        as ``SkCipher.open`` would give for an unfragmented message.
        """
        self.expire(now)
        fragment = open_fragment(cipher, data)
        limits = self.limits
        if fragment.total > limits.max_fragments:
            raise FragmentLimitExceeded(
                f"peer split a message into {fragment.total} fragments; "
                f"we accept at most {limits.max_fragments}"
            )
        key = (fragment.header.message_id, fragment.header.response)
        pending = self._pending.get(key)
        if pending is not None and fragment.header.exchange_type != pending.header.exchange_type:
            raise InvalidSyntax("fragments of one message ID carry different exchange types")
        if pending is not None and fragment.total != pending.total:
            if fragment.total < pending.total:
                # RFC 7383 §2.5.2, §2.6: a smaller Total Fragments is stale; keep what we have.
                log.debug("ignoring fragment of a stale fragmentation of ID %d", key[0])
                return None
            # RFC 7383 §2.5.2, §2.6: the sender re-fragmented (smaller fragments); start over.
            del self._pending[key]
            pending = None
        if pending is None:
            if len(self._pending) >= limits.max_pending:
                raise FragmentLimitExceeded(
                    f"already reassembling {len(self._pending)} messages; fragment dropped"
                )
            pending = _Pending(fragment.header, fragment.total, now)
            self._pending[key] = pending
        if fragment.number in pending.chunks:
            return None  # a retransmitted fragment: nothing new
        if pending.size + len(fragment.chunk) > limits.max_message_len:
            del self._pending[key]
            raise FragmentLimitExceeded(
                f"fragmented message ID {key[0]} exceeds {limits.max_message_len} octets"
            )
        pending.chunks[fragment.number] = fragment.chunk
        pending.size += len(fragment.chunk)
        if fragment.number == 1:
            pending.first_payload = fragment.first_payload
        if len(pending.chunks) < pending.total:
            return None
        del self._pending[key]
        inner = b"".join(pending.chunks[n] for n in range(1, pending.total + 1))
        header = pending.header
        payloads = decode_payloads(pending.first_payload, inner, inner=True)
        log.debug(
            "reassembled message ID %d from %d fragments (%d octets)",
            header.message_id,
            pending.total,
            len(inner),
        )
        return header.message(payloads, encrypted=True, plaintext=inner)
