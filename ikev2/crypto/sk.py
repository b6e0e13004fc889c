"""Sealing and opening the SK payload (RFC 7296 §3.14, RFC 5282, RFC 7634 §3).

Layout of the SK payload body: IV | ciphertext | ICV, where the plaintext is the inner
payloads | Padding | Pad Length.

* CBC + HMAC: the ICV is the truncated HMAC (SK_a) of the whole message from the IKE
  header up to the end of the ciphertext; it is checked with ``hmac.compare_digest``
  *before* decrypting (§3.14).
* AEAD (AES-GCM, ChaCha20-Poly1305): nonce = salt | IV, the associated data is the
  message from the IKE header through the SK generic header (RFC 5282 §5.1), and the
  16-octet tag is the ICV.

We pad AEAD plaintext with nothing and CBC plaintext with zero octets up to the block
(the RFC lets the sender choose, §3.14); received padding is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from ikev2.codec.message import (
    IkeHeader,
    Message,
    decode_header,
    decode_payloads,
    encode_payloads,
    generic_header,
)
from ikev2.codec.payloads import Encrypted
from ikev2.constants import GENERIC_PAYLOAD_HEADER_LEN, IKE_HEADER_LEN, PayloadType
from ikev2.crypto.algorithms import Encryption, Integrity
from ikev2.crypto.keys import IkeKeys
from ikev2.crypto.registry import IkeSuite
from ikev2.crypto.rng import RandomSource
from ikev2.errors import InvalidSyntax, LocalProtocolError


@dataclass(frozen=True, slots=True, repr=False)
class SkCipher:
    """Protection of the SK payloads of one direction of an IKE SA."""

    encryption: Encryption
    """Cipher of the SK payload."""
    encryption_key: bytes
    """SK_e of this direction (with the salt for AEAD)."""
    integrity: Integrity | None
    """Integrity algorithm (``None`` for AEAD)."""
    integrity_key: bytes
    """SK_a of this direction (empty for AEAD)."""

    def __repr__(self) -> str:
        return f"SkCipher({self.encryption.name})"

    @property
    def _icv_len(self) -> int:
        if self.integrity is not None:
            return self.integrity.icv_len
        return self.encryption.icv_len

    def overhead(self, plaintext_len: int) -> int:
        """Octets the SK payload adds around ``plaintext_len`` octets of inner payloads."""
        return GENERIC_PAYLOAD_HEADER_LEN + len(self._pad(plaintext_len)) + self._fixed_overhead

    @property
    def _fixed_overhead(self) -> int:
        return self.encryption.iv_len + self._icv_len

    def _pad(self, plaintext_len: int) -> bytes:
        block = self.encryption.block_len
        pad_len = -(plaintext_len + 1) % block
        return bytes(pad_len) + bytes([pad_len])

    def seal(self, message: Message, rng: RandomSource) -> bytes:
        """Encode ``message`` (``encrypted=True``) with its payloads inside an SK payload.

        The IV comes from ``rng``: random for CBC (RFC 3602 §2.4), and for the AEADs 8
        random octets per message, which stay unique for any realistic message count
        under one key (RFC 5282 §3 allows any unique value).
        """
        if not message.encrypted:
            raise LocalProtocolError("seal() takes a message with encrypted=True")
        first, inner = encode_payloads(message.payloads)
        padded = inner + self._pad(len(inner))
        body_len = len(padded) + self._fixed_overhead
        length = IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN + body_len
        aad = message.encode_header(PayloadType.SK, length) + generic_header(first, body_len)
        iv = rng.token_bytes(self.encryption.iv_len)
        sealed = self.encryption.seal(self.encryption_key, iv, padded, aad)
        if self.integrity is None:
            return aad + iv + sealed
        signed = aad + iv + sealed
        return signed + self.integrity.compute(self.integrity_key, signed)

    def open(self, data: bytes, header: IkeHeader | None = None) -> Message:
        """Verify and decrypt a received message whose last payload is SK.

        Returns the message with ``encrypted=True`` and the inner payloads (payloads
        before the SK payload, which RFC 7296 allows but nobody sends, are refused).
        Raises :class:`IntegrityCheckFailed` (drop silently) or :class:`InvalidSyntax`.
        ``header`` is ``decode_header(data)`` when the caller has it already.
        """
        if header is None:
            header = decode_header(data)
        if header.next_payload != PayloadType.SK:
            raise InvalidSyntax("message is not protected by an SK payload")
        outer = decode_payloads(header.next_payload, data[IKE_HEADER_LEN:])
        sk = outer[0]
        if len(outer) != 1 or not isinstance(sk, Encrypted):
            raise InvalidSyntax("message is not protected by an SK payload")
        iv_len, icv_len = self.encryption.iv_len, self._icv_len
        if len(sk.body) < iv_len + icv_len + 1:
            raise InvalidSyntax("SK payload too short for IV, Pad Length and ICV")
        aad = data[: len(data) - len(sk.body)]
        iv = sk.body[:iv_len]
        if self.integrity is not None:
            ciphertext = sk.body[iv_len:-icv_len]
            # RFC 7296 §3.14: check the ICV over the whole message first.
            self.integrity.verify(self.integrity_key, data[:-icv_len], data[-icv_len:])
            if len(ciphertext) % self.encryption.block_len:
                raise InvalidSyntax("SK ciphertext is not a whole number of blocks")
        else:
            ciphertext = sk.body[iv_len:]
        padded = self.encryption.open(self.encryption_key, iv, ciphertext, aad)
        pad_len = padded[-1]
        if pad_len + 1 > len(padded):
            raise InvalidSyntax("SK Pad Length longer than the plaintext")
        inner = padded[: len(padded) - pad_len - 1]
        try:
            payloads = decode_payloads(sk.first_payload, inner, inner=True)
        except InvalidSyntax as exc:
            exc.authenticated = True  # the ICV or tag verified: the peer sent this
            raise
        return header.message(payloads, encrypted=True, plaintext=inner)


@dataclass(frozen=True, slots=True, repr=False)
class SkCipherPair:
    """The two directions of an IKE SA's SK protection, from our point of view."""

    outbound: SkCipher
    """Protects what we send."""
    inbound: SkCipher
    """Checks and decrypts what we receive."""

    def __repr__(self) -> str:
        return f"SkCipherPair({self.outbound.encryption.name})"

    @classmethod
    def for_ike_sa(cls, suite: IkeSuite, keys: IkeKeys, original_initiator: bool) -> SkCipherPair:
        """SK_ei/SK_ai protect the original initiator's messages (I flag set, §2.14)."""
        from_i = SkCipher(suite.encryption, keys.sk_ei, suite.integrity, keys.sk_ai)
        from_r = SkCipher(suite.encryption, keys.sk_er, suite.integrity, keys.sk_ar)
        if original_initiator:
            return cls(outbound=from_i, inbound=from_r)
        return cls(outbound=from_r, inbound=from_i)
