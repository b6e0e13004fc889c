"""Why the ESP engine refused a packet: one typed reason per cause, for counters."""

from __future__ import annotations

import enum


class DropReason(enum.Enum):
    """A packet the engine did not pass on, and why.

    The data plane counts these per SA; none of them is an exception.
    """

    NO_SA = "no_sa"
    """The SPI does not belong to this SA (or to any SA, at the SAD level)."""
    TOO_SHORT = "too_short"
    """Shorter than SPI, sequence number, IV, one trailer and the ICV."""
    BAD_LENGTH = "bad_length"
    """Ciphertext is not a multiple of the cipher block (RFC 4303 §2.4)."""
    REPLAY = "replay"
    """Sequence number seen before or left of the window (RFC 4303 §3.4.3)."""
    ICV_FAILURE = "icv_failure"
    """Integrity check or AEAD tag did not verify (RFC 4303 §3.4.4)."""
    BAD_PADDING = "bad_padding"
    """Padding is not 1, 2, 3, ... or longer than the payload (RFC 4303 §2.4)."""
    DUMMY_PACKET = "dummy_packet"
    """Next header 59: a traffic-flow-confidentiality dummy, discarded (RFC 4303 §2.6)."""
    BAD_NEXT_HEADER = "bad_next_header"
    """Next header is not 4/41 (tunnel mode) or disagrees with the inner IP version."""
    BAD_INNER_PACKET = "bad_inner_packet"
    """Outbound: the inner packet is not IPv4 or IPv6."""
    SEQ_EXHAUSTED = "seq_exhausted"
    """Outbound: the sequence counter would wrap; the SA must be replaced (RFC 4303 §3.3.3)."""
    LIFETIME_EXPIRED = "lifetime_expired"
    """The SA reached its hard byte or packet lifetime (RFC 4301 §4.4.2.1)."""
